//! Column types of a Delta table, spelled as Spark SQL's DDL spells them (`decimal(10,2)`,
//! `array<struct<seat_no:string,price:decimal(10,2)>>`, `map<string,long>`), which data engineers
//! already write. Parsing is pure and knows nothing of arrow or the Delta kernel.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer};

/// The widest decimal Delta allows.
pub const MAX_DECIMAL_PRECISION: u8 = 38;

/// The type of a Delta column (or of a field nested in one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnType {
    /// UTF-8 text (`string`).
    String,
    /// 64-bit signed integer (`long`, `bigint`).
    Long,
    /// 32-bit signed integer (`integer`, `int`).
    Integer,
    /// 16-bit signed integer (`short`, `smallint`).
    Short,
    /// 8-bit signed integer (`byte`, `tinyint`).
    Byte,
    /// 64-bit float (`double`).
    Double,
    /// 32-bit float (`float`, `real`).
    Float,
    /// Boolean (`boolean`).
    Boolean,
    /// Bytes, from base64 text (`binary`).
    Binary,
    /// Instant with microsecond precision, UTC (from RFC 3339 text or epoch milliseconds).
    Timestamp,
    /// Wall-clock date and time without a time zone, microsecond precision (`timestamp_ntz`,
    /// from `YYYY-MM-DDTHH:MM:SS[.ffffff]` text or epoch milliseconds).
    TimestampNtz,
    /// Calendar date (from `YYYY-MM-DD`, or the UTC date of a timestamp).
    Date,
    /// Exact decimal number with `precision` digits, `scale` of them after the point
    /// (`decimal(p,s)`; `decimal` alone is `decimal(10,0)`, as in Spark).
    Decimal {
        /// Total digits, 1 to 38.
        precision: u8,
        /// Digits after the point, at most `precision`.
        scale: u8,
    },
    /// A list of elements (`array<T>`), from a JSON array; elements may be null.
    Array(Box<ColumnType>),
    /// Keys to values (`map<K,V>`), from a JSON object; values may be null.
    Map(Box<ColumnType>, Box<ColumnType>),
    /// Named fields (`struct<a:T,b:U>`), from a JSON object.
    Struct(Vec<StructMember>),
}

/// One field of a `struct<...>` type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructMember {
    /// Field name (also the JSON key it is read from).
    pub name: String,
    /// Field type.
    pub data_type: ColumnType,
    /// False when spelled `name:type NOT NULL`.
    pub nullable: bool,
}

impl ColumnType {
    /// Whether values of this type are built from the JSON tree rather than a scalar (nested
    /// types and decimals, whose digits must be read as written).
    pub fn needs_tree(&self) -> bool {
        matches!(
            self,
            ColumnType::Decimal { .. }
                | ColumnType::Array(_)
                | ColumnType::Map(..)
                | ColumnType::Struct(_)
        )
    }

    /// Parses a Spark SQL DDL type spelling.
    pub fn parse(text: &str) -> Result<ColumnType, String> {
        let mut parser = Parser { text, at: 0 };
        let parsed = parser.data_type()?;
        parser.skip_space();
        if parser.at < text.len() {
            return Err(parser.fail("the end of the type"));
        }
        Ok(parsed)
    }
}

impl fmt::Display for ColumnType {
    /// The type as the configuration spells it (lower case, Delta's names).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ColumnType::String => f.write_str("string"),
            ColumnType::Long => f.write_str("long"),
            ColumnType::Integer => f.write_str("integer"),
            ColumnType::Short => f.write_str("short"),
            ColumnType::Byte => f.write_str("byte"),
            ColumnType::Double => f.write_str("double"),
            ColumnType::Float => f.write_str("float"),
            ColumnType::Boolean => f.write_str("boolean"),
            ColumnType::Binary => f.write_str("binary"),
            ColumnType::Timestamp => f.write_str("timestamp"),
            ColumnType::TimestampNtz => f.write_str("timestamp_ntz"),
            ColumnType::Date => f.write_str("date"),
            ColumnType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            ColumnType::Array(element) => write!(f, "array<{element}>"),
            ColumnType::Map(key, value) => write!(f, "map<{key},{value}>"),
            ColumnType::Struct(members) => {
                f.write_str("struct<")?;
                for (index, member) in members.iter().enumerate() {
                    if index > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}:{}", member.name, member.data_type)?;
                    if !member.nullable {
                        f.write_str(" not null")?;
                    }
                }
                f.write_str(">")
            }
        }
    }
}

impl<'de> Deserialize<'de> for ColumnType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ColumnType::parse(&text)
            .map_err(|reason| de::Error::custom(format!("invalid type `{text}`: {reason}")))
    }
}

/// A recursive-descent reader of one type spelling.
struct Parser<'t> {
    text: &'t str,
    at: usize,
}

impl<'t> Parser<'t> {
    fn rest(&self) -> &'t str {
        self.text.get(self.at..).unwrap_or("")
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.at = self.text.len() - trimmed.len();
    }

    fn fail(&self, expected: &str) -> String {
        match self.rest().chars().next() {
            None => format!("expected {expected} at the end"),
            Some(_) => format!(
                "expected {expected} at character {}, found `{}`",
                self.at + 1,
                self.rest()
            ),
        }
    }

    /// Consumes `token` (after spaces) if it comes next.
    fn eat(&mut self, token: char) -> bool {
        self.skip_space();
        if self.rest().starts_with(token) {
            self.at += token.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: char) -> Result<(), String> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.fail(&format!("`{token}`")))
        }
    }

    /// A name: letters, digits and `_`, or anything between backquotes.
    fn name(&mut self) -> Result<String, String> {
        self.skip_space();
        let rest = self.rest();
        if let Some(quoted) = rest.strip_prefix('`') {
            let end = quoted
                .find('`')
                .ok_or_else(|| "a backquoted name is not closed".to_owned())?;
            let name = quoted[..end].to_owned();
            self.at += end + 2;
            return Ok(name);
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            return Err(self.fail("a name"));
        }
        let name = rest[..end].to_owned();
        self.at += end;
        Ok(name)
    }

    fn number(&mut self) -> Result<u8, String> {
        self.skip_space();
        let rest = self.rest();
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let value = rest[..end]
            .parse::<u8>()
            .map_err(|_| self.fail("a number from 0 to 38"))?;
        self.at += end;
        Ok(value)
    }

    fn data_type(&mut self) -> Result<ColumnType, String> {
        let start = self.at;
        let word = self.name()?;
        let parsed = match word.to_ascii_lowercase().as_str() {
            "string" => ColumnType::String,
            "long" | "bigint" => ColumnType::Long,
            "integer" | "int" => ColumnType::Integer,
            "short" | "smallint" => ColumnType::Short,
            "byte" | "tinyint" => ColumnType::Byte,
            "double" => ColumnType::Double,
            "float" | "real" => ColumnType::Float,
            "boolean" => ColumnType::Boolean,
            "binary" => ColumnType::Binary,
            "timestamp" | "timestamp_ltz" => ColumnType::Timestamp,
            "timestamp_ntz" => ColumnType::TimestampNtz,
            "date" => ColumnType::Date,
            "decimal" | "dec" | "numeric" => self.decimal()?,
            "array" => {
                self.expect('<')?;
                let element = self.data_type()?;
                self.expect('>')?;
                ColumnType::Array(Box::new(element))
            }
            "map" => {
                self.expect('<')?;
                let key = self.data_type()?;
                self.expect(',')?;
                let value = self.data_type()?;
                self.expect('>')?;
                ColumnType::Map(Box::new(key), Box::new(value))
            }
            "struct" => self.struct_members()?,
            _ => {
                self.at = start;
                self.skip_space();
                return Err(format!(
                    "unknown type `{word}` (known: string, long, integer, short, byte, double, float, boolean, binary, timestamp, timestamp_ntz, date, decimal(p,s), array<T>, map<K,V>, struct<name:T,...>)"
                ));
            }
        };
        Ok(parsed)
    }

    fn decimal(&mut self) -> Result<ColumnType, String> {
        if !self.eat('(') {
            return Ok(ColumnType::Decimal {
                precision: 10,
                scale: 0,
            });
        }
        let precision = self.number()?;
        let scale = if self.eat(',') { self.number()? } else { 0 };
        self.expect(')')?;
        if !(1..=MAX_DECIMAL_PRECISION).contains(&precision) {
            return Err(format!(
                "decimal precision {precision} is outside 1 to {MAX_DECIMAL_PRECISION}"
            ));
        }
        if scale > precision {
            return Err(format!(
                "decimal scale {scale} is larger than its precision {precision}"
            ));
        }
        Ok(ColumnType::Decimal { precision, scale })
    }

    fn struct_members(&mut self) -> Result<ColumnType, String> {
        self.expect('<')?;
        let mut members: Vec<StructMember> = Vec::new();
        if self.eat('>') {
            return Err("a struct needs at least one field".to_owned());
        }
        loop {
            let name = self.name()?;
            if members.iter().any(|m| m.name == name) {
                return Err(format!("struct field `{name}` is defined twice"));
            }
            // Spark accepts both `name:type` and `name type`.
            self.eat(':');
            let data_type = self.data_type()?;
            let nullable = !self.not_null();
            members.push(StructMember {
                name,
                data_type,
                nullable,
            });
            if self.eat('>') {
                return Ok(ColumnType::Struct(members));
            }
            self.expect(',')?;
        }
    }

    /// Consumes a `NOT NULL` after a struct field's type, if there is one.
    fn not_null(&mut self) -> bool {
        let saved = self.at;
        let mut words = || self.name().map(|w| w.to_ascii_lowercase());
        if words().as_deref() == Ok("not") && words().as_deref() == Ok("null") {
            return true;
        }
        self.at = saved;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ColumnType {
        ColumnType::parse(text).unwrap_or_else(|e| panic!("`{text}`: {e}"))
    }

    #[test]
    fn parses_spark_ddl_spellings() {
        assert_eq!(parse("string"), ColumnType::String);
        assert_eq!(parse("BIGINT"), ColumnType::Long);
        assert_eq!(parse("int"), ColumnType::Integer);
        assert_eq!(parse("smallint"), ColumnType::Short);
        assert_eq!(parse("tinyint"), ColumnType::Byte);
        assert_eq!(parse("real"), ColumnType::Float);
        assert_eq!(parse("timestamp_ntz"), ColumnType::TimestampNtz);
        assert_eq!(
            parse("decimal(10, 2)"),
            ColumnType::Decimal {
                precision: 10,
                scale: 2
            }
        );
        assert_eq!(
            parse("DECIMAL"),
            ColumnType::Decimal {
                precision: 10,
                scale: 0
            }
        );
        let seats = parse("array<struct<seat_no:string,price:decimal(10,2)>>");
        assert_eq!(
            seats.to_string(),
            "array<struct<seat_no:string,price:decimal(10,2)>>"
        );
        assert_eq!(
            parse("map<string, long>"),
            ColumnType::Map(Box::new(ColumnType::String), Box::new(ColumnType::Long))
        );
        assert_eq!(
            parse("STRUCT<`a b`: INT NOT NULL, c STRING>").to_string(),
            "struct<a b:integer not null,c:string>"
        );
        assert_eq!(
            parse("array<array<map<string,array<int>>>>").to_string(),
            "array<array<map<string,array<integer>>>>"
        );
    }

    #[test]
    fn refuses_bad_spellings_saying_where() {
        let err = |text: &str| ColumnType::parse(text).expect_err(text);
        assert!(err("decimall(10,2)").starts_with("unknown type `decimall`"));
        assert_eq!(
            err("decimal(39,2)"),
            "decimal precision 39 is outside 1 to 38"
        );
        assert_eq!(
            err("decimal(4,5)"),
            "decimal scale 5 is larger than its precision 4"
        );
        assert_eq!(err("array<string"), "expected `>` at the end");
        assert_eq!(
            err("map<string>"),
            "expected `,` at character 11, found `>`"
        );
        assert_eq!(
            err("struct<a:int,a:string>"),
            "struct field `a` is defined twice"
        );
        assert_eq!(
            err("string extra"),
            "expected the end of the type at character 8, found `extra`"
        );
    }
}
