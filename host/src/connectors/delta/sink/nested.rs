//! Decimal and nested values: from the JSON tree to cells (with the path of a value that does not
//! fit), and from cells to arrow arrays of the table's own arrow types.

use std::borrow::Cow;
use std::sync::Arc;

use deltalake::arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
    Int8Array, Int16Array, Int32Array, Int64Array, ListArray, MapArray, StringArray, StructArray,
    TimestampMicrosecondArray,
};
use deltalake::arrow::buffer::{NullBuffer, OffsetBuffer};
use deltalake::arrow::datatypes::{DataType as ArrowType, TimeUnit};

use super::convert::{Cell, Json, convert_ref, expectation};
use super::json_tree::Node;
use crate::config::ColumnType;
use crate::connectors::delta::config::StructMember;

/// A step from a column's value into a nested one.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Index(usize),
    Field(String),
    Key(String),
}

/// A value that does not fit its type, and where it sits in the column's value.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Mismatch {
    /// Innermost step first.
    path: Vec<Step>,
    expected: Cow<'static, str>,
    found: String,
}

impl Mismatch {
    pub(super) fn new(expected: Cow<'static, str>, found: String) -> Self {
        Mismatch {
            path: Vec::new(),
            expected,
            found,
        }
    }

    fn at(mut self, step: Step) -> Self {
        self.path.push(step);
        self
    }

    /// The refusal's reason: names the column and, inside it, the value's path.
    pub(super) fn reason(&self, column: &str) -> String {
        if self.path.is_empty() {
            return format!(
                "column `{column}` expects {}, found {}",
                self.expected, self.found
            );
        }
        let mut path = column.to_owned();
        for step in self.path.iter().rev() {
            match step {
                Step::Index(i) => path.push_str(&format!("[{i}]")),
                Step::Field(name) => path.push_str(&format!(".{name}")),
                Step::Key(key) => {
                    path.push_str(&format!("[{}]", serde_json::Value::from(key.as_str())))
                }
            }
        }
        format!(
            "column `{column}` at `{path}` expects {}, found {}",
            self.expected, self.found
        )
    }
}

/// A JSON tree value as the scalar conversions see it (containers only named).
pub(super) fn node_json<'a>(node: &Node<'a>) -> Json<'a> {
    match node {
        Node::Null => Json::Null,
        Node::Bool(b) => Json::Bool(*b),
        Node::Number(text) => number_json(text),
        Node::Text(text) => Json::Text(text.clone()),
        Node::Array(_) => Json::Array,
        Node::Object(_) => Json::Object,
    }
}

/// A number's text as serde_json would have read it.
fn number_json(text: &str) -> Json<'static> {
    if !text.contains(['.', 'e', 'E']) {
        if let Ok(n) = text.parse::<i64>() {
            return Json::Int(n);
        }
        if let Ok(n) = text.parse::<u64>() {
            return Json::UInt(n);
        }
    }
    text.parse::<f64>().map_or(Json::Null, Json::Float)
}

/// How a node shows in a reason.
fn shown(node: &Node<'_>) -> String {
    match node {
        Node::Number(text) => (*text).to_owned(),
        other => node_json(other).to_string(),
    }
}

/// Converts a non-null `node` to `data_type`, recursively.
pub(super) fn convert_node(
    data_type: &ColumnType,
    node: &Node<'_>,
) -> Result<Cell<'static>, Mismatch> {
    let mismatch = || Mismatch::new(expectation(data_type), shown(node));
    match (data_type, node) {
        (ColumnType::Decimal { precision, scale }, Node::Number(text)) => {
            decimal(text, *precision, *scale)
                .map(Cell::Decimal)
                .map_err(|why| {
                    Mismatch::new(expectation(data_type), format!("{} ({why})", shown(node)))
                })
        }
        (ColumnType::Decimal { precision, scale }, Node::Text(text)) => {
            decimal(text, *precision, *scale)
                .map(Cell::Decimal)
                .map_err(|why| {
                    Mismatch::new(expectation(data_type), format!("{} ({why})", shown(node)))
                })
        }
        (ColumnType::Array(element), Node::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(index, item)| nullable(element, item).map_err(|m| m.at(Step::Index(index))))
            .collect::<Result<_, _>>()
            .map(Cell::List),
        (ColumnType::Map(key_type, value_type), Node::Object(members)) => members
            .iter()
            .map(|(key, value)| {
                let at = || Step::Key(key.clone().into_owned());
                let key_cell = map_key(key_type, key).map_err(|m| m.at(at()))?;
                let value_cell = nullable(value_type, value).map_err(|m| m.at(at()))?;
                Ok((key_cell, value_cell))
            })
            .collect::<Result<_, _>>()
            .map(Cell::Map),
        (ColumnType::Struct(fields), Node::Object(members)) => fields
            .iter()
            .map(|field| {
                let at = || Step::Field(field.name.clone());
                match Node::member(members, &field.name) {
                    None | Some(Node::Null) if field.nullable => Ok(Cell::Null),
                    None => Err(Mismatch::new(
                        Cow::Owned(format!("a non-null {}", field.data_type)),
                        "no such field".to_owned(),
                    )
                    .at(at())),
                    Some(Node::Null) => Err(Mismatch::new(
                        Cow::Owned(format!("a non-null {}", field.data_type)),
                        "null".to_owned(),
                    )
                    .at(at())),
                    Some(value) => convert_node(&field.data_type, value).map_err(|m| m.at(at())),
                }
            })
            .collect::<Result<_, _>>()
            .map(Cell::Struct),
        (
            ColumnType::Decimal { .. }
            | ColumnType::Array(_)
            | ColumnType::Map(..)
            | ColumnType::Struct(_),
            _,
        ) => Err(mismatch()),
        (scalar, node) => convert_ref(scalar, node_json(node))
            .map(Cell::into_owned)
            .map_err(|found| Mismatch::new(expectation(scalar), found)),
    }
}

/// A value where null is allowed (array elements, map values).
fn nullable(data_type: &ColumnType, node: &Node<'_>) -> Result<Cell<'static>, Mismatch> {
    match node {
        Node::Null => Ok(Cell::Null),
        node => convert_node(data_type, node),
    }
}

/// A map key, from the JSON object's key text (numbers in text for numeric key types).
fn map_key(key_type: &ColumnType, key: &str) -> Result<Cell<'static>, Mismatch> {
    let node = match key_type {
        ColumnType::String
        | ColumnType::Binary
        | ColumnType::Date
        | ColumnType::Timestamp
        | ColumnType::TimestampNtz => Node::Text(Cow::Borrowed(key)),
        ColumnType::Decimal { .. } => Node::Text(Cow::Borrowed(key)),
        _ => match super::json_tree::parse(key) {
            Ok(Node::Number(text)) => Node::Number(text),
            Ok(Node::Bool(b)) => Node::Bool(b),
            _ => Node::Text(Cow::Borrowed(key)),
        },
    };
    convert_node(key_type, &node).map(Cell::into_owned)
}

/// The type `schema = "evolve"` gives a new field, from its first non-null value: text is a
/// `string`, a number with a point or an exponent a `double`, other numbers `long`, objects
/// structs of their non-null members, arrays of their first non-null element's type (`string`
/// when there is none). `None` for null and for objects with no non-null member.
pub(super) fn infer_type(node: &Node<'_>) -> Option<ColumnType> {
    Some(match node {
        Node::Null => return None,
        Node::Bool(_) => ColumnType::Boolean,
        Node::Number(text) if text.contains(['.', 'e', 'E']) => ColumnType::Double,
        Node::Number(_) => ColumnType::Long,
        Node::Text(_) => ColumnType::String,
        Node::Array(items) => ColumnType::Array(Box::new(
            items
                .iter()
                .find_map(infer_type)
                .unwrap_or(ColumnType::String),
        )),
        Node::Object(members) => {
            let mut fields: Vec<crate::connectors::delta::config::StructMember> = Vec::new();
            for (name, value) in members {
                if fields.iter().any(|f| f.name.eq_ignore_ascii_case(name)) {
                    continue;
                }
                if let Some(data_type) = infer_type(value) {
                    fields.push(crate::connectors::delta::config::StructMember {
                        name: name.clone().into_owned(),
                        data_type,
                        nullable: true,
                    });
                }
            }
            if fields.is_empty() {
                return None;
            }
            ColumnType::Struct(fields)
        }
    })
}

/// Whether a struct sits somewhere inside `data_type` (only then can a value carry members the
/// type has no field for).
pub(super) fn has_struct(data_type: &ColumnType) -> bool {
    match data_type {
        ColumnType::Struct(_) => true,
        ColumnType::Array(element) => has_struct(element),
        ColumnType::Map(key, value) => has_struct(key) || has_struct(value),
        _ => false,
    }
}

/// The struct field of `fields` that a JSON member `name` fills: the one of that exact name, else
/// one differing only in case (Delta compares names ignoring case, so such a member is not new).
fn field_for<'f>(fields: &'f [StructMember], name: &str) -> Option<&'f StructMember> {
    fields
        .iter()
        .find(|f| f.name == name)
        .or_else(|| fields.iter().find(|f| f.name.eq_ignore_ascii_case(name)))
}

/// Appends to `found` the paths of the non-null members of `node` that the structs inside
/// `data_type` have no field for, each once: `seat.zone`, `seats[].price` (a member of an array's
/// element), `prices{}.currency` (of a map's value). `path` is the value's own path.
pub(super) fn new_members(
    data_type: &ColumnType,
    node: &Node<'_>,
    path: &mut String,
    found: &mut Vec<String>,
) {
    let len = path.len();
    match (data_type, node) {
        (ColumnType::Struct(fields), Node::Object(members)) => {
            for (name, value) in members {
                path.push('.');
                path.push_str(name);
                match field_for(fields, name) {
                    Some(field) => new_members(&field.data_type, value, path, found),
                    // A member with no type to give it (null, `{}`) is not new.
                    None if infer_type(value).is_some() && !found.contains(path) => {
                        found.push(path.clone());
                    }
                    None => {}
                }
                path.truncate(len);
            }
        }
        (ColumnType::Array(element), Node::Array(items)) if has_struct(element) => {
            path.push_str("[]");
            for item in items {
                new_members(element, item, path, found);
            }
            path.truncate(len);
        }
        (ColumnType::Map(_, value_type), Node::Object(members)) if has_struct(value_type) => {
            path.push_str("{}");
            for (_, value) in members {
                new_members(value_type, value, path, found);
            }
            path.truncate(len);
        }
        _ => {}
    }
}

/// `data_type` with the new members of `node` (see [`new_members`]) added to its structs as
/// nullable fields after the existing ones, their types inferred ([`infer_type`]), as Spark's
/// `mergeSchema` adds them.
pub(super) fn with_new_members(data_type: &ColumnType, node: &Node<'_>) -> ColumnType {
    match (data_type, node) {
        (ColumnType::Struct(fields), Node::Object(members)) => {
            let mut merged = fields.clone();
            for (name, value) in members {
                match merged.iter().position(|f| f.name == *name).or_else(|| {
                    merged
                        .iter()
                        .position(|f| f.name.eq_ignore_ascii_case(name))
                }) {
                    Some(index) => {
                        merged[index].data_type = with_new_members(&merged[index].data_type, value);
                    }
                    None => {
                        if let Some(data_type) = infer_type(value) {
                            merged.push(StructMember {
                                name: name.clone().into_owned(),
                                data_type,
                                nullable: true,
                            });
                        }
                    }
                }
            }
            ColumnType::Struct(merged)
        }
        (ColumnType::Array(element), Node::Array(items)) => ColumnType::Array(Box::new(
            items
                .iter()
                .fold((**element).clone(), |t, item| with_new_members(&t, item)),
        )),
        (ColumnType::Map(key, value_type), Node::Object(members)) => ColumnType::Map(
            key.clone(),
            Box::new(
                members
                    .iter()
                    .fold((**value_type).clone(), |t, (_, v)| with_new_members(&t, v)),
            ),
        ),
        (other, _) => other.clone(),
    }
}

/// Whether `wider` is `narrower` with fields added after the existing ones of its structs (as a
/// nested evolution leaves a column's type).
pub(super) fn extends(wider: &ColumnType, narrower: &ColumnType) -> bool {
    match (wider, narrower) {
        (ColumnType::Struct(w), ColumnType::Struct(n)) => {
            n.len() <= w.len()
                && n.iter().zip(w).all(|(n, w)| {
                    n.name == w.name
                        && n.nullable == w.nullable
                        && extends(&w.data_type, &n.data_type)
                })
                && w[n.len()..].iter().all(|f| f.nullable)
        }
        (ColumnType::Array(w), ColumnType::Array(n)) => extends(w, n),
        (ColumnType::Map(wk, wv), ColumnType::Map(nk, nv)) => wk == nk && extends(wv, nv),
        (w, n) => w == n,
    }
}

/// The unscaled value of decimal text (a JSON number or string: sign, digits, point, exponent)
/// at `scale`, read digit by digit, never through a float. Digits beyond the scale that are not
/// zeros are refused rather than rounded: money is not rounded silently.
pub(super) fn decimal(text: &str, precision: u8, scale: u8) -> Result<i128, String> {
    let bad = || "not a decimal number".to_owned();
    let text = text.trim();
    let (negative, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => {
            let exponent: i64 = body[at + 1..].parse().map_err(|_| bad())?;
            (&body[..at], exponent)
        }
        None => (body, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let joined: Vec<u8> = whole
        .bytes()
        .chain(fraction.bytes())
        .map(|b| b - b'0')
        .collect();
    let mut digits: &[u8] = &joined;
    // The value is digits × 10^(point − digits.len()).
    let mut point = i64::try_from(whole.len())
        .map_err(|_| bad())?
        .saturating_add(exponent);
    while let [0, rest @ ..] = digits {
        digits = rest;
        point -= 1;
    }
    while let [rest @ .., 0] = digits {
        digits = rest;
    }
    if digits.is_empty() {
        return Ok(0);
    }
    let len = i64::try_from(digits.len()).map_err(|_| bad())?;
    let after_point = (len - point).max(0);
    if after_point > i64::from(scale) {
        return Err(format!(
            "{after_point} digits after the point, at most {scale} fit"
        ));
    }
    let before_point = point.max(0);
    let room = i64::from(precision - scale);
    if before_point > room {
        return Err(format!(
            "{before_point} digits before the point, at most {room} fit"
        ));
    }
    let mut unscaled: i128 = 0;
    for digit in digits {
        unscaled = unscaled * 10 + i128::from(*digit);
    }
    // Both bounds above keep the result within `precision` (≤ 38) digits: no overflow.
    for _ in 0..(i64::from(scale) - (len - point)) {
        unscaled *= 10;
    }
    Ok(if negative { -unscaled } else { unscaled })
}

/// Standard base64 (padding optional) to bytes.
pub(super) fn base64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    let unpadded = text
        .strip_suffix("==")
        .or_else(|| text.strip_suffix('='))
        .unwrap_or(text);
    if unpadded.len() % 4 == 1 {
        return None;
    }
    let mut bytes = Vec::with_capacity(unpadded.len() * 3 / 4);
    let mut bits: u32 = 0;
    let mut held = 0;
    for c in unpadded.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        held += 6;
        if held >= 8 {
            held -= 8;
            bytes.push(((bits >> held) & 0xff) as u8);
        }
    }
    Some(bytes)
}

/// Builds the arrow array of `data_type` holding `cells` (cells of another kind than the type's
/// are nulls; the conversions never produce them).
pub(super) fn build_array(
    data_type: &ArrowType,
    cells: Vec<Cell<'static>>,
) -> Result<ArrayRef, String> {
    let arrow = |e: deltalake::arrow::error::ArrowError| e.to_string();
    macro_rules! scalars {
        ($array:ty, $variant:ident) => {
            Arc::new(<$array>::from_iter(cells.into_iter().map(|c| match c {
                Cell::$variant(v) => Some(v),
                _ => None,
            }))) as ArrayRef
        };
    }
    Ok(match data_type {
        ArrowType::Utf8 => Arc::new(StringArray::from_iter(cells.into_iter().map(|c| match c {
            Cell::Text(v) => Some(v.into_owned()),
            _ => None,
        }))),
        ArrowType::Int64 => scalars!(Int64Array, Long),
        ArrowType::Int32 => scalars!(Int32Array, Integer),
        ArrowType::Int16 => scalars!(Int16Array, Short),
        ArrowType::Int8 => scalars!(Int8Array, Byte),
        ArrowType::Float64 => scalars!(Float64Array, Double),
        ArrowType::Float32 => scalars!(Float32Array, Float),
        ArrowType::Boolean => scalars!(BooleanArray, Boolean),
        ArrowType::Date32 => scalars!(Date32Array, Days),
        ArrowType::Binary => Arc::new(BinaryArray::from_iter(cells.into_iter().map(|c| match c {
            Cell::Binary(v) => Some(v),
            _ => None,
        }))),
        ArrowType::Timestamp(TimeUnit::Microsecond, zone) => Arc::new(
            TimestampMicrosecondArray::from_iter(cells.into_iter().map(|c| match c {
                Cell::Micros(v) => Some(v),
                _ => None,
            }))
            .with_timezone_opt(zone.clone()),
        ),
        ArrowType::Decimal128(precision, scale) => Arc::new(
            Decimal128Array::from_iter(cells.into_iter().map(|c| match c {
                Cell::Decimal(v) => Some(v),
                _ => None,
            }))
            .with_precision_and_scale(*precision, *scale)
            .map_err(arrow)?,
        ),
        ArrowType::List(field) => {
            let (lengths, nulls, items) = flatten(cells, |c| match c {
                Cell::List(items) => Some(items),
                _ => None,
            });
            let values = build_array(field.data_type(), items)?;
            Arc::new(
                ListArray::try_new(
                    Arc::clone(field),
                    OffsetBuffer::from_lengths(lengths),
                    values,
                    nulls,
                )
                .map_err(arrow)?,
            )
        }
        ArrowType::Map(field, ordered) => {
            let ArrowType::Struct(entry_fields) = field.data_type() else {
                return Err(format!(
                    "a map's entries are not a struct: {}",
                    field.data_type()
                ));
            };
            let (lengths, nulls, entries) = flatten(cells, |c| match c {
                Cell::Map(entries) => Some(entries),
                _ => None,
            });
            let (keys, values): (Vec<Cell<'static>>, Vec<Cell<'static>>) =
                entries.into_iter().unzip();
            let [key_field, value_field] = &entry_fields.iter().collect::<Vec<_>>()[..] else {
                return Err("a map's entries do not have two fields".to_owned());
            };
            let entries = StructArray::try_new(
                entry_fields.clone(),
                vec![
                    build_array(key_field.data_type(), keys)?,
                    build_array(value_field.data_type(), values)?,
                ],
                None,
            )
            .map_err(arrow)?;
            Arc::new(
                MapArray::try_new(
                    Arc::clone(field),
                    OffsetBuffer::from_lengths(lengths),
                    entries,
                    nulls,
                    *ordered,
                )
                .map_err(arrow)?,
            )
        }
        ArrowType::Struct(fields) => {
            let valid: Vec<bool> = cells.iter().map(|c| matches!(c, Cell::Struct(_))).collect();
            let mut columns: Vec<Vec<Cell<'static>>> =
                vec![Vec::with_capacity(cells.len()); fields.len()];
            for cell in cells {
                match cell {
                    Cell::Struct(values) => {
                        for (column, value) in columns.iter_mut().zip(values) {
                            column.push(value);
                        }
                    }
                    _ => columns
                        .iter_mut()
                        .for_each(|column| column.push(Cell::Null)),
                }
            }
            let arrays = fields
                .iter()
                .zip(columns)
                .map(|(field, column)| build_array(field.data_type(), column))
                .collect::<Result<Vec<_>, _>>()?;
            let nulls = valid.contains(&false).then(|| NullBuffer::from(valid));
            Arc::new(StructArray::try_new(fields.clone(), arrays, nulls).map_err(arrow)?)
        }
        other => return Err(format!("arrow type {other} is not supported")),
    })
}

/// Splits container cells into their lengths, their validity and all their items in order.
fn flatten<T>(
    cells: Vec<Cell<'static>>,
    items_of: impl Fn(Cell<'static>) -> Option<Vec<T>>,
) -> (Vec<usize>, Option<NullBuffer>, Vec<T>) {
    let mut lengths = Vec::with_capacity(cells.len());
    let mut valid = Vec::with_capacity(cells.len());
    let mut all = Vec::new();
    for cell in cells {
        match items_of(cell) {
            Some(items) => {
                lengths.push(items.len());
                valid.push(true);
                all.extend(items);
            }
            None => {
                lengths.push(0);
                valid.push(false);
            }
        }
    }
    let nulls = valid.contains(&false).then(|| NullBuffer::from(valid));
    (lengths, nulls, all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact_and_refused_when_they_do_not_fit() {
        assert_eq!(decimal("19.99", 10, 2), Ok(1999));
        assert_eq!(decimal("-0.5", 10, 2), Ok(-50));
        assert_eq!(decimal("12", 10, 2), Ok(1200));
        assert_eq!(decimal("1.500", 10, 2), Ok(150));
        assert_eq!(decimal("1.5e2", 10, 2), Ok(15000));
        assert_eq!(decimal("25e-2", 10, 2), Ok(25));
        assert_eq!(decimal("0", 10, 2), Ok(0));
        assert_eq!(decimal("00.000", 10, 2), Ok(0));
        assert_eq!(
            decimal("12345678901234567890123456789.123456789", 38, 9),
            Ok(12_345_678_901_234_567_890_123_456_789_123_456_789)
        );
        assert_eq!(
            decimal("99999999999999999999999999999999999999", 38, 0),
            Ok(99_999_999_999_999_999_999_999_999_999_999_999_999)
        );
        assert_eq!(
            decimal("123456789.5", 10, 2),
            Err("9 digits before the point, at most 8 fit".to_owned())
        );
        assert_eq!(
            decimal("1.005", 10, 2),
            Err("3 digits after the point, at most 2 fit".to_owned())
        );
        assert_eq!(
            decimal("1e40", 38, 0),
            Err("41 digits before the point, at most 38 fit".to_owned())
        );
        for bad in ["", "-", ".", "1.2.3", "abc", "1e", "0x10", "1 000"] {
            assert!(decimal(bad, 10, 2).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn base64_decodes_standard_text() {
        assert_eq!(base64("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(base64("aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(base64(""), Some(Vec::new()));
        assert_eq!(base64("AAEC/w=="), Some(vec![0, 1, 2, 255]));
        assert_eq!(base64("a"), None);
        assert_eq!(base64("a*bc"), None);
    }

    #[test]
    fn nested_mismatches_name_the_path() {
        let seats =
            ColumnType::parse("array<struct<seat_no:string,price:decimal(10,2)>>").expect("a type");
        let tree = super::super::json_tree::parse(
            r#"[{"seat_no":"1A","price":"19.99"},{"seat_no":"1B","price":123456789.5}]"#,
        )
        .expect("JSON");
        let err = convert_node(&seats, &tree).expect_err("too large");
        assert_eq!(
            err.reason("seats"),
            "column `seats` at `seats[1].price` expects a decimal(10,2), found 123456789.5 (9 digits before the point, at most 8 fit)"
        );
        let tree = super::super::json_tree::parse(r#"[{"seat_no":7}]"#).expect("JSON");
        assert_eq!(
            convert_node(&seats, &tree)
                .expect_err("wrong type")
                .reason("seats"),
            "column `seats` at `seats[0].seat_no` expects a string, found 7"
        );
        let map = ColumnType::parse("map<string,long>").expect("a type");
        let tree = super::super::json_tree::parse(r#"{"a":1,"b":"x"}"#).expect("JSON");
        assert_eq!(
            convert_node(&map, &tree)
                .expect_err("wrong value")
                .reason("m"),
            r#"column `m` at `m["b"]` expects a long, found "x""#
        );
    }
}
