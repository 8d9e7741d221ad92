//! A small CSV reader for reference tables: a header row, fields separated by commas, optionally
//! quoted with `"` (a quote inside a quoted field is written `""`), rows ending in `\n` or `\r\n`.

/// The rows of `text` as JSON objects (header names as keys, every value as text).
pub(super) fn rows_as_json(text: &str) -> Result<Vec<String>, String> {
    let mut records = parse(text)?.into_iter();
    let Some(header) = records.next() else {
        return Err("the file is empty: expected a header row".to_owned());
    };
    let mut rows = Vec::new();
    for (index, record) in records.enumerate() {
        if record.len() == 1 && record[0].is_empty() {
            continue;
        }
        if record.len() != header.len() {
            return Err(format!(
                "row {} has {} fields, the header {}",
                index + 2,
                record.len(),
                header.len()
            ));
        }
        let object: serde_json::Map<String, serde_json::Value> = header
            .iter()
            .cloned()
            .zip(record.into_iter().map(serde_json::Value::String))
            .collect();
        rows.push(serde_json::Value::Object(object).to_string());
    }
    Ok(rows)
}

fn parse(text: &str) -> Result<Vec<Vec<String>>, String> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut line = 1;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                line += 1;
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err(format!(
            "a quoted field opened before line {line} is never closed"
        ));
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_commas_and_line_ends() {
        let rows = rows_as_json("Id,Name\r\n1,\"Globe, \"\"The\"\"\"\n2,Odeon\n\n").expect("csv");
        assert_eq!(
            rows,
            [
                r#"{"Id":"1","Name":"Globe, \"The\""}"#,
                r#"{"Id":"2","Name":"Odeon"}"#
            ]
        );
        assert!(rows_as_json("Id,Name\n1\n").is_err());
        assert!(rows_as_json("Id\n\"open\n").is_err());
        assert!(rows_as_json("").is_err());
    }
}
