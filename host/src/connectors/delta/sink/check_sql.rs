//! The SQL of CHECK constraints: a parser and an evaluator for the expressions tables carry,
//! as Databricks and Fabric users write them (Spark SQL) and as delta-rs stores them.
//!
//! The grammar: `OR`, `AND`, `NOT` and parentheses; comparisons (`=`, `==`, `!=`, `<>`, `<`,
//! `<=`, `>`, `>=`, `<=>`) between columns, literals and arithmetic (`+ - * / %`, unary `-`);
//! `[NOT] IN (...)`, `[NOT] BETWEEN ... AND ...`, `[NOT] LIKE`, `IS [NOT] NULL`; nested fields
//! (`seat.row`, `get_field(seat, 'row')`); literals: numbers (exact decimals, `1e3` a double,
//! Spark's `L`/`S`/`Y`/`D`/`F`/`BD` suffixes), strings, `TRUE`/`FALSE`/`NULL`, `DATE '...'`,
//! `TIMESTAMP '...'`, `TIMESTAMP_NTZ '...'`; casts (`CAST(x AS type)`, `x::type`,
//! `arrow_cast(x, 'type')`); and the functions `length`, `char_length`, `lower`, `upper`,
//! `trim`, `abs`, `coalesce`. Anything else is a [`ParseError`], which refuses the start.
//!
//! Evaluation follows SQL's three-valued logic; as in Delta, a row keeps a constraint only when
//! it evaluates to true (null breaks it). Text compared with a date, timestamp or number is read
//! as one, as Spark does; timestamps without a zone are read as UTC.

use std::borrow::Cow;
use std::cmp::Ordering;

use chrono::{DateTime, NaiveDate, NaiveDateTime};

use super::convert::Cell;
use super::nested;
use crate::config::ColumnType;

/// Why an expression is beyond the grammar.
pub(super) type ParseError = String;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Expr {
    Literal(Value<'static>),
    /// A column (index among the sink's columns) and the struct fields below it.
    Column(usize, Vec<usize>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare(Box<Expr>, Cmp, Box<Expr>),
    Arith(Box<Expr>, Arith, Box<Expr>),
    Negate(Box<Expr>),
    IsNull(Box<Expr>, bool),
    In(Box<Expr>, Vec<Expr>, bool),
    Between(Box<Expr>, Box<Expr>, Box<Expr>, bool),
    Like(Box<Expr>, Box<Expr>, bool),
    Cast(Box<Expr>, Target),
    Call(Func, Vec<Expr>),
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `<=>`: equal, nulls included.
    NullSafeEq,
}

/// An arithmetic operator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// A function of the grammar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Func {
    Length,
    Lower,
    Upper,
    Trim,
    Abs,
    Coalesce,
}

/// What a cast converts to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Target {
    /// An integral type: the value truncated toward zero.
    Integer,
    Decimal(u8, u8),
    Double,
    Text,
    Boolean,
    Date,
    Timestamp,
}

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value<'a> {
    Null,
    Bool(bool),
    /// An exact number: unscaled value and scale (integers have scale 0).
    Decimal(i128, u8),
    Float(f64),
    Text(Cow<'a, str>),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01T00:00:00 (UTC for zoned timestamps).
    Timestamp(i64),
    /// A value of a type the grammar does not compare (binary, array, map): only `IS NULL`.
    Opaque,
}

/// Parses `sql` against the sink's `columns` (name and type, in order).
pub(super) fn parse(sql: &str, columns: &[(String, ColumnType)]) -> Result<Expr, ParseError> {
    let tokens = tokenize(sql)?;
    let mut parser = Parser {
        tokens,
        at: 0,
        columns,
    };
    let expr = parser.or()?;
    match parser.peek() {
        None => Ok(expr),
        Some(token) => Err(format!("unexpected {}", token.shown())),
    }
}

/// Whether `cells` (one row, in column order; `types` their columns' types) make `expr` true.
pub(super) fn holds(expr: &Expr, cells: &[Cell<'_>], types: &[ColumnType]) -> bool {
    matches!(eval(expr, cells, types), Value::Bool(true))
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    /// A `` `quoted` `` identifier.
    Quoted(String),
    Number(String),
    Text(String),
    Symbol(&'static str),
}

impl Token {
    fn shown(&self) -> String {
        match self {
            Token::Word(w) => format!("`{w}`"),
            Token::Quoted(w) => format!("`{w}`"),
            Token::Number(n) => format!("`{n}`"),
            Token::Text(t) => format!("'{t}'"),
            Token::Symbol(s) => format!("`{s}`"),
        }
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(word))
    }
}

const SYMBOLS: &[&str] = &[
    "<=>", "::", "==", "!=", "<>", "<=", ">=", "=", "<", ">", "+", "-", "*", "/", "%", "(", ")",
    ",", ".", "!",
];

fn tokenize(sql: &str) -> Result<Vec<Token>, ParseError> {
    let mut tokens = Vec::new();
    let mut rest = sql;
    loop {
        rest = rest.trim_start();
        let Some(c) = rest.chars().next() else {
            return Ok(tokens);
        };
        if c == '\'' || c == '"' {
            let (text, after) = quoted(rest, c)?;
            tokens.push(Token::Text(text));
            rest = after;
        } else if c == '`' {
            let (name, after) = quoted(rest, '`')?;
            tokens.push(Token::Quoted(name));
            rest = after;
        } else if c.is_ascii_digit()
            || c == '.' && rest[1..].starts_with(|d: char| d.is_ascii_digit())
        {
            let end = number_end(rest);
            tokens.push(Token::Number(rest[..end].to_owned()));
            rest = &rest[end..];
        } else if c.is_alphabetic() || c == '_' {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            tokens.push(Token::Word(rest[..end].to_owned()));
            rest = &rest[end..];
        } else if let Some(symbol) = SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
            tokens.push(Token::Symbol(symbol));
            rest = &rest[symbol.len()..];
        } else {
            return Err(format!("unexpected `{c}`"));
        }
    }
}

/// The text of a quoted token at the start of `text` and what follows it: a doubled quote or a
/// backslash escapes (backslashes only in strings, as in Spark).
fn quoted(text: &str, quote: char) -> Result<(String, &str), ParseError> {
    let mut out = String::new();
    let mut chars = text.char_indices().skip(1).peekable();
    while let Some((at, c)) = chars.next() {
        if c == quote {
            if chars.peek().is_some_and(|(_, next)| *next == quote) {
                chars.next();
                out.push(quote);
                continue;
            }
            return Ok((out, &text[at + c.len_utf8()..]));
        }
        if c == '\\' && quote != '`' {
            match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, escaped)) => out.push(escaped),
                None => break,
            }
            continue;
        }
        out.push(c);
    }
    Err("an unterminated quote".to_owned())
}

/// The length of the number at the start of `text`, with its exponent and Spark type suffix.
fn number_end(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut end = 0;
    while end < bytes.len() && (bytes[end].is_ascii_digit() || bytes[end] == b'.') {
        end += 1;
    }
    if end < bytes.len() && matches!(bytes[end], b'e' | b'E') {
        let mut exp = end + 1;
        if exp < bytes.len() && matches!(bytes[exp], b'+' | b'-') {
            exp += 1;
        }
        if exp < bytes.len() && bytes[exp].is_ascii_digit() {
            end = exp;
            while end < bytes.len() && bytes[end].is_ascii_digit() {
                end += 1;
            }
        }
    }
    let suffix = text[end..]
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(text.len() - end);
    if ["l", "s", "y", "d", "f", "bd"]
        .contains(&text[end..end + suffix].to_ascii_lowercase().as_str())
    {
        end += suffix;
    }
    end
}

struct Parser<'c> {
    tokens: Vec<Token>,
    at: usize,
    columns: &'c [(String, ColumnType)],
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Result<Token, ParseError> {
        let token = self
            .tokens
            .get(self.at)
            .cloned()
            .ok_or_else(|| "an incomplete expression".to_owned())?;
        self.at += 1;
        Ok(token)
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let found = self.peek().is_some_and(|t| t.is_word(word));
        if found {
            self.at += 1;
        }
        found
    }

    fn eat_symbol(&mut self, symbol: &str) -> bool {
        let found = matches!(self.peek(), Some(Token::Symbol(s)) if *s == symbol);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect_symbol(&mut self, symbol: &str) -> Result<(), ParseError> {
        if self.eat_symbol(symbol) {
            return Ok(());
        }
        match self.peek() {
            Some(token) => Err(format!("expected `{symbol}`, found {}", token.shown())),
            None => Err(format!("expected `{symbol}` at the end")),
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and()?;
        while self.eat_word("or") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.not()?;
        while self.eat_word("and") {
            left = Expr::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, ParseError> {
        if self.eat_word("not") || self.eat_symbol("!") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expr, ParseError> {
        let left = self.additive()?;
        if self.eat_word("is") {
            let negated = self.eat_word("not");
            if !self.eat_word("null") {
                return Err("only `IS [NOT] NULL`".to_owned());
            }
            return Ok(Expr::IsNull(Box::new(left), !negated));
        }
        let negated = self.eat_word("not");
        if self.eat_word("in") {
            self.expect_symbol("(")?;
            let mut items = vec![self.additive()?];
            while self.eat_symbol(",") {
                items.push(self.additive()?);
            }
            self.expect_symbol(")")?;
            return Ok(Expr::In(Box::new(left), items, negated));
        }
        if self.eat_word("between") {
            let low = self.additive()?;
            if !self.eat_word("and") {
                return Err("`BETWEEN` without `AND`".to_owned());
            }
            let high = self.additive()?;
            return Ok(Expr::Between(
                Box::new(left),
                Box::new(low),
                Box::new(high),
                negated,
            ));
        }
        if self.eat_word("like") {
            let pattern = self.additive()?;
            return Ok(Expr::Like(Box::new(left), Box::new(pattern), negated));
        }
        if negated {
            return Err("`NOT` where `IN`, `BETWEEN` or `LIKE` was expected".to_owned());
        }
        let cmp = match self.peek() {
            Some(Token::Symbol("=" | "==")) => Cmp::Eq,
            Some(Token::Symbol("!=" | "<>")) => Cmp::Ne,
            Some(Token::Symbol("<")) => Cmp::Lt,
            Some(Token::Symbol("<=")) => Cmp::Le,
            Some(Token::Symbol(">")) => Cmp::Gt,
            Some(Token::Symbol(">=")) => Cmp::Ge,
            Some(Token::Symbol("<=>")) => Cmp::NullSafeEq,
            _ => return Ok(left),
        };
        self.at += 1;
        let right = self.additive()?;
        Ok(Expr::Compare(Box::new(left), cmp, Box::new(right)))
    }

    fn additive(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.multiplicative()?;
        loop {
            let op = if self.eat_symbol("+") {
                Arith::Add
            } else if self.eat_symbol("-") {
                Arith::Sub
            } else {
                return Ok(left);
            };
            left = Expr::Arith(Box::new(left), op, Box::new(self.multiplicative()?));
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        loop {
            let op = if self.eat_symbol("*") {
                Arith::Mul
            } else if self.eat_symbol("/") {
                Arith::Div
            } else if self.eat_symbol("%") {
                Arith::Rem
            } else {
                return Ok(left);
            };
            left = Expr::Arith(Box::new(left), op, Box::new(self.unary()?));
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.eat_symbol("-") {
            return Ok(Expr::Negate(Box::new(self.unary()?)));
        }
        if self.eat_symbol("+") {
            return self.unary();
        }
        let mut expr = self.primary()?;
        while self.eat_symbol("::") {
            expr = Expr::Cast(Box::new(expr), self.type_name()?);
        }
        Ok(expr)
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        match self.next()? {
            Token::Number(text) => number_literal(&text).map(Expr::Literal),
            Token::Text(text) => Ok(Expr::Literal(Value::Text(Cow::Owned(text)))),
            Token::Symbol("(") => {
                let expr = self.or()?;
                self.expect_symbol(")")?;
                Ok(expr)
            }
            Token::Quoted(name) => self.column(name),
            Token::Word(word) => self.word(word),
            Token::Symbol(symbol) => Err(format!("unexpected `{symbol}`")),
        }
    }

    /// A keyword literal, a typed literal, a function call or a column.
    fn word(&mut self, word: String) -> Result<Expr, ParseError> {
        let lower = word.to_ascii_lowercase();
        match lower.as_str() {
            "true" => return Ok(Expr::Literal(Value::Bool(true))),
            "false" => return Ok(Expr::Literal(Value::Bool(false))),
            "null" => return Ok(Expr::Literal(Value::Null)),
            "date" | "timestamp" | "timestamp_ntz" | "timestamp_ltz"
                if matches!(self.peek(), Some(Token::Text(_))) =>
            {
                let target = if lower == "date" {
                    Target::Date
                } else {
                    Target::Timestamp
                };
                let Token::Text(text) = self.next()? else {
                    return Err("a typed literal without its text".to_owned());
                };
                let value = cast(Value::Text(Cow::Owned(text.clone())), target);
                if value == Value::Null {
                    return Err(format!("{word} '{text}' is not a valid {lower}"));
                }
                return Ok(Expr::Literal(value));
            }
            _ => {}
        }
        if !self.eat_symbol("(") {
            return self.column(word);
        }
        match lower.as_str() {
            "cast" => {
                let expr = self.or()?;
                if !self.eat_word("as") {
                    return Err("`CAST` without `AS`".to_owned());
                }
                let target = self.type_name()?;
                self.expect_symbol(")")?;
                Ok(Expr::Cast(Box::new(expr), target))
            }
            "arrow_cast" => {
                let expr = self.or()?;
                self.expect_symbol(",")?;
                let Token::Text(arrow) = self.next()? else {
                    return Err("`arrow_cast` takes its type as text".to_owned());
                };
                self.expect_symbol(")")?;
                Ok(Expr::Cast(Box::new(expr), arrow_target(&arrow)?))
            }
            "get_field" => {
                let Expr::Column(index, mut path) = self.or()? else {
                    return Err("`get_field` of something other than a column".to_owned());
                };
                self.expect_symbol(",")?;
                let Token::Text(name) = self.next()? else {
                    return Err("`get_field` takes the field's name as text".to_owned());
                };
                self.expect_symbol(")")?;
                let data_type = self.type_at(index, &path)?;
                path.push(field_index(data_type, &name)?);
                Ok(Expr::Column(index, path))
            }
            _ => {
                let func = match lower.as_str() {
                    "length" | "char_length" | "character_length" | "len" => Func::Length,
                    "lower" | "lcase" => Func::Lower,
                    "upper" | "ucase" => Func::Upper,
                    "trim" => Func::Trim,
                    "abs" => Func::Abs,
                    "coalesce" => Func::Coalesce,
                    _ => return Err(format!("the function `{word}`")),
                };
                let mut args = vec![self.or()?];
                while self.eat_symbol(",") {
                    args.push(self.or()?);
                }
                self.expect_symbol(")")?;
                if func != Func::Coalesce && args.len() != 1 {
                    return Err(format!("`{word}` takes one argument"));
                }
                Ok(Expr::Call(func, args))
            }
        }
    }

    /// A column and the struct fields named after it (`seat.row`).
    fn column(&mut self, name: String) -> Result<Expr, ParseError> {
        let index = self
            .columns
            .iter()
            .position(|(c, _)| c.eq_ignore_ascii_case(&name))
            .ok_or_else(|| format!("`{name}` is not a column"))?;
        let mut path = Vec::new();
        while self.eat_symbol(".") {
            let field = match self.next()? {
                Token::Word(w) | Token::Quoted(w) => w,
                other => return Err(format!("unexpected {} after `.`", other.shown())),
            };
            let data_type = self.type_at(index, &path)?;
            path.push(field_index(data_type, &field)?);
        }
        Ok(Expr::Column(index, path))
    }

    fn type_at(&self, index: usize, path: &[usize]) -> Result<&ColumnType, ParseError> {
        let mut data_type = &self.columns[index].1;
        for step in path {
            data_type = match data_type {
                ColumnType::Struct(fields) => &fields[*step].data_type,
                _ => return Err("a field of something other than a struct".to_owned()),
            };
        }
        Ok(data_type)
    }

    /// A type name as `CAST` and `::` spell it: `decimal(10, 2)`, `bigint`, `date`, ...
    fn type_name(&mut self) -> Result<Target, ParseError> {
        let Token::Word(name) = self.next()? else {
            return Err("a cast without a type".to_owned());
        };
        let mut arguments = Vec::new();
        if self.eat_symbol("(") {
            loop {
                match self.next()? {
                    Token::Number(n) => {
                        arguments.push(n.parse::<u8>().map_err(|_| format!("`{n}` in a type"))?)
                    }
                    other => return Err(format!("unexpected {} in a type", other.shown())),
                }
                if !self.eat_symbol(",") {
                    break;
                }
            }
            self.expect_symbol(")")?;
        }
        sql_target(&name.to_ascii_lowercase(), &arguments)
    }
}

fn sql_target(name: &str, arguments: &[u8]) -> Result<Target, ParseError> {
    Ok(match (name, arguments) {
        ("int" | "integer" | "bigint" | "long" | "smallint" | "short" | "tinyint" | "byte", []) => {
            Target::Integer
        }
        ("decimal" | "dec" | "numeric", []) => Target::Decimal(10, 0),
        ("decimal" | "dec" | "numeric", [p]) => Target::Decimal(*p, 0),
        ("decimal" | "dec" | "numeric", [p, s]) if s <= p && *p <= 38 => Target::Decimal(*p, *s),
        ("double" | "float" | "real", []) => Target::Double,
        ("string" | "varchar" | "char" | "text", _) => Target::Text,
        ("boolean" | "bool", []) => Target::Boolean,
        ("date", []) => Target::Date,
        ("timestamp" | "timestamp_ntz" | "timestamp_ltz", []) => Target::Timestamp,
        _ => return Err(format!("the type `{name}`")),
    })
}

/// The target of an arrow type's spelling (`Timestamp(Microsecond, Some("UTC"))`, `Date32`,
/// `Decimal128(10, 2)`, `Int64`, `Utf8`, ...).
fn arrow_target(arrow: &str) -> Result<Target, ParseError> {
    let name: String = arrow.chars().take_while(|c| c.is_alphanumeric()).collect();
    Ok(match name.as_str() {
        "Timestamp" => Target::Timestamp,
        "Date32" | "Date64" => Target::Date,
        "Int8" | "Int16" | "Int32" | "Int64" | "UInt8" | "UInt16" | "UInt32" | "UInt64" => {
            Target::Integer
        }
        "Float16" | "Float32" | "Float64" => Target::Double,
        "Utf8" | "LargeUtf8" | "Utf8View" => Target::Text,
        "Boolean" => Target::Boolean,
        "Decimal128" | "Decimal256" => {
            let inner = arrow
                .trim_start_matches(name.as_str())
                .trim_matches(|c| c == '(' || c == ')');
            let parts: Vec<u8> = inner
                .split(',')
                .map(|p| p.trim().parse::<u8>())
                .collect::<Result<_, _>>()
                .map_err(|_| format!("the arrow type `{arrow}`"))?;
            sql_target("decimal", &parts)?
        }
        _ => return Err(format!("the arrow type `{arrow}`")),
    })
}

fn field_index(data_type: &ColumnType, name: &str) -> Result<usize, ParseError> {
    let ColumnType::Struct(fields) = data_type else {
        return Err(format!("`.{name}` of a {data_type}, which is not a struct"));
    };
    fields
        .iter()
        .position(|f| f.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| format!("the struct has no field `{name}`"))
}

fn number_literal(text: &str) -> Result<Value<'static>, ParseError> {
    let lower = text.to_ascii_lowercase();
    let bad = || format!("`{text}` is not a number");
    let (digits, suffix) = match lower.find(|c: char| c.is_ascii_alphabetic() && c != 'e') {
        Some(at) => lower.split_at(at),
        None => (lower.as_str(), ""),
    };
    let float = matches!(suffix, "d" | "f") || suffix.is_empty() && digits.contains('e');
    if float {
        return digits.parse::<f64>().map(Value::Float).map_err(|_| bad());
    }
    let scale = digits.split_once('.').map_or(0, |(_, f)| f.len());
    let scale = u8::try_from(scale)
        .ok()
        .filter(|s| *s <= 38)
        .ok_or_else(bad)?;
    let unscaled = nested::decimal(digits, 38, scale).map_err(|_| bad())?;
    Ok(Value::Decimal(unscaled, scale))
}

fn eval<'a>(expr: &'a Expr, cells: &'a [Cell<'_>], types: &[ColumnType]) -> Value<'a> {
    match expr {
        Expr::Literal(value) => value.clone(),
        Expr::Column(index, path) => column_value(cells, types, *index, path),
        Expr::Not(inner) => match eval(inner, cells, types) {
            Value::Bool(b) => Value::Bool(!b),
            _ => Value::Null,
        },
        Expr::And(left, right) => match (eval(left, cells, types), eval(right, cells, types)) {
            (Value::Bool(false), _) | (_, Value::Bool(false)) => Value::Bool(false),
            (Value::Bool(true), Value::Bool(true)) => Value::Bool(true),
            _ => Value::Null,
        },
        Expr::Or(left, right) => match (eval(left, cells, types), eval(right, cells, types)) {
            (Value::Bool(true), _) | (_, Value::Bool(true)) => Value::Bool(true),
            (Value::Bool(false), Value::Bool(false)) => Value::Bool(false),
            _ => Value::Null,
        },
        Expr::Compare(left, cmp, right) => {
            compare(&eval(left, cells, types), *cmp, &eval(right, cells, types))
        }
        Expr::Arith(left, op, right) => {
            arithmetic(eval(left, cells, types), *op, eval(right, cells, types))
        }
        Expr::Negate(inner) => {
            arithmetic(Value::Decimal(0, 0), Arith::Sub, eval(inner, cells, types))
        }
        Expr::IsNull(inner, null) => {
            Value::Bool((eval(inner, cells, types) == Value::Null) == *null)
        }
        Expr::In(value, items, negated) => {
            let value = eval(value, cells, types);
            let mut outcome = Value::Bool(false);
            for item in items {
                match compare(&value, Cmp::Eq, &eval(item, cells, types)) {
                    Value::Bool(true) => {
                        outcome = Value::Bool(true);
                        break;
                    }
                    Value::Bool(false) => {}
                    _ => outcome = Value::Null,
                }
            }
            negate_if(outcome, *negated)
        }
        Expr::Between(value, low, high, negated) => {
            let value = eval(value, cells, types);
            let above = compare(&value, Cmp::Ge, &eval(low, cells, types));
            let below = compare(&value, Cmp::Le, &eval(high, cells, types));
            let within = match (above, below) {
                (Value::Bool(false), _) | (_, Value::Bool(false)) => Value::Bool(false),
                (Value::Bool(true), Value::Bool(true)) => Value::Bool(true),
                _ => Value::Null,
            };
            negate_if(within, *negated)
        }
        Expr::Like(value, pattern, negated) => {
            match (eval(value, cells, types), eval(pattern, cells, types)) {
                (Value::Text(text), Value::Text(pattern)) => {
                    let chars: Vec<char> = text.chars().collect();
                    let pattern: Vec<char> = pattern.chars().collect();
                    negate_if(Value::Bool(like(&chars, &pattern)), *negated)
                }
                _ => Value::Null,
            }
        }
        Expr::Cast(inner, target) => cast(eval(inner, cells, types), *target),
        Expr::Call(func, args) => call(*func, args, cells, types),
    }
}

fn negate_if(value: Value<'_>, negated: bool) -> Value<'_> {
    match value {
        Value::Bool(b) => Value::Bool(b != negated),
        other => other,
    }
}

fn column_value<'a>(
    cells: &'a [Cell<'_>],
    types: &[ColumnType],
    index: usize,
    path: &[usize],
) -> Value<'a> {
    let (Some(mut cell), Some(mut data_type)) = (cells.get(index), types.get(index)) else {
        return Value::Null;
    };
    for step in path {
        match (cell, data_type) {
            (Cell::Struct(fields), ColumnType::Struct(members)) => {
                match (fields.get(*step), members.get(*step)) {
                    (Some(c), Some(m)) => {
                        cell = c;
                        data_type = &m.data_type;
                    }
                    _ => return Value::Null,
                }
            }
            _ => return Value::Null,
        }
    }
    match (cell, data_type) {
        (Cell::Null, _) => Value::Null,
        (Cell::Text(text), _) => Value::Text(Cow::Borrowed(text.as_ref())),
        (Cell::Long(v), _) => Value::Decimal(i128::from(*v), 0),
        (Cell::Integer(v), _) => Value::Decimal(i128::from(*v), 0),
        (Cell::Short(v), _) => Value::Decimal(i128::from(*v), 0),
        (Cell::Byte(v), _) => Value::Decimal(i128::from(*v), 0),
        (Cell::Double(v), _) => Value::Float(*v),
        (Cell::Float(v), _) => Value::Float(f64::from(*v)),
        (Cell::Boolean(v), _) => Value::Bool(*v),
        (Cell::Decimal(v), ColumnType::Decimal { scale, .. }) => Value::Decimal(*v, *scale),
        (Cell::Micros(v), _) => Value::Timestamp(*v),
        (Cell::Days(v), _) => Value::Date(*v),
        _ => Value::Opaque,
    }
}

fn call<'a>(
    func: Func,
    args: &'a [Expr],
    cells: &'a [Cell<'_>],
    types: &[ColumnType],
) -> Value<'a> {
    if func == Func::Coalesce {
        return args
            .iter()
            .map(|a| eval(a, cells, types))
            .find(|v| *v != Value::Null)
            .unwrap_or(Value::Null);
    }
    let Some(arg) = args.first() else {
        return Value::Null;
    };
    match (func, eval(arg, cells, types)) {
        (_, Value::Null) => Value::Null,
        (Func::Length, Value::Text(t)) => Value::Decimal(t.chars().count() as i128, 0),
        (Func::Lower, Value::Text(t)) => Value::Text(Cow::Owned(t.to_lowercase())),
        (Func::Upper, Value::Text(t)) => Value::Text(Cow::Owned(t.to_uppercase())),
        (Func::Trim, Value::Text(t)) => Value::Text(Cow::Owned(t.trim().to_owned())),
        (Func::Abs, Value::Decimal(v, s)) => Value::Decimal(v.abs(), s),
        (Func::Abs, Value::Float(v)) => Value::Float(v.abs()),
        _ => Value::Null,
    }
}

/// `%` any run of characters, `_` one character, `\` escapes the next.
fn like(text: &[char], pattern: &[char]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some(('%', rest)) => (0..=text.len()).any(|skip| like(&text[skip..], rest)),
        Some(('_', rest)) => !text.is_empty() && like(&text[1..], rest),
        Some(('\\', [escaped, rest @ ..])) => {
            text.first() == Some(escaped) && like(&text[1..], rest)
        }
        Some((c, rest)) => text.first() == Some(c) && like(&text[1..], rest),
    }
}

fn compare(left: &Value<'_>, cmp: Cmp, right: &Value<'_>) -> Value<'static> {
    if cmp == Cmp::NullSafeEq {
        return Value::Bool(match (left, right) {
            (Value::Null, Value::Null) => true,
            (Value::Null, _) | (_, Value::Null) => false,
            _ => order(left, right) == Some(Ordering::Equal),
        });
    }
    let Some(ordering) = order(left, right) else {
        return Value::Null;
    };
    Value::Bool(match cmp {
        Cmp::Eq | Cmp::NullSafeEq => ordering == Ordering::Equal,
        Cmp::Ne => ordering != Ordering::Equal,
        Cmp::Lt => ordering == Ordering::Less,
        Cmp::Le => ordering != Ordering::Greater,
        Cmp::Gt => ordering == Ordering::Greater,
        Cmp::Ge => ordering != Ordering::Less,
    })
}

/// How two values order, text read as the other side's type; `None` for nulls and values of
/// types that do not compare.
fn order(left: &Value<'_>, right: &Value<'_>) -> Option<Ordering> {
    match (left, right) {
        (Value::Text(a), Value::Text(b)) => Some(a.as_ref().cmp(b.as_ref())),
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
        (Value::Date(a), Value::Date(b)) => Some(a.cmp(b)),
        (Value::Timestamp(a), Value::Timestamp(b)) => Some(a.cmp(b)),
        (Value::Date(d), Value::Timestamp(_)) => {
            order(&Value::Timestamp(i64::from(*d) * 86_400_000_000), right)
        }
        (Value::Timestamp(_), Value::Date(d)) => {
            order(left, &Value::Timestamp(i64::from(*d) * 86_400_000_000))
        }
        (Value::Decimal(a, sa), Value::Decimal(b, sb)) => Some(match align(*a, *sa, *b, *sb) {
            Some((a, b, _)) => a.cmp(&b),
            None => to_f64(left)?.partial_cmp(&to_f64(right)?)?,
        }),
        (Value::Float(_) | Value::Decimal(..), Value::Float(_) | Value::Decimal(..)) => {
            to_f64(left)?.partial_cmp(&to_f64(right)?)
        }
        (Value::Text(_), other) => order(&cast(left.clone(), target_of(other)?), right),
        (other, Value::Text(_)) => order(left, &cast(right.clone(), target_of(other)?)),
        _ => None,
    }
}

/// The cast that makes text comparable with `value`.
fn target_of(value: &Value<'_>) -> Option<Target> {
    Some(match value {
        Value::Date(_) => Target::Date,
        Value::Timestamp(_) => Target::Timestamp,
        Value::Decimal(..) | Value::Float(_) => Target::Double,
        Value::Bool(_) => Target::Boolean,
        _ => return None,
    })
}

/// Two decimals at one scale, or `None` on overflow.
fn align(a: i128, sa: u8, b: i128, sb: u8) -> Option<(i128, i128, u8)> {
    let scale = sa.max(sb);
    let up = |v: i128, s: u8| v.checked_mul(10i128.checked_pow(u32::from(scale - s))?);
    Some((up(a, sa)?, up(b, sb)?, scale))
}

fn to_f64(value: &Value<'_>) -> Option<f64> {
    match *value {
        Value::Decimal(v, s) => Some(v as f64 / 10f64.powi(i32::from(s))),
        Value::Float(v) => Some(v),
        _ => None,
    }
}

fn arithmetic(left: Value<'_>, op: Arith, right: Value<'_>) -> Value<'static> {
    let exact = match (&left, &right) {
        (Value::Decimal(a, sa), Value::Decimal(b, sb)) => match op {
            Arith::Add | Arith::Sub | Arith::Rem => {
                align(*a, *sa, *b, *sb).and_then(|(a, b, s)| {
                    let v = match op {
                        Arith::Add => a.checked_add(b),
                        Arith::Sub => a.checked_sub(b),
                        _ => a.checked_rem(b),
                    }?;
                    Some(Value::Decimal(v, s))
                })
            }
            Arith::Mul => a
                .checked_mul(*b)
                .zip(sa.checked_add(*sb).filter(|s| *s <= 38))
                .map(|(v, s)| Value::Decimal(v, s)),
            Arith::Div => None,
        },
        _ => None,
    };
    if let Some(value) = exact {
        return value;
    }
    let (Some(a), Some(b)) = (to_f64(&left), to_f64(&right)) else {
        return Value::Null;
    };
    let v = match op {
        Arith::Add => a + b,
        Arith::Sub => a - b,
        Arith::Mul => a * b,
        // As in Spark, division by zero is null.
        Arith::Div | Arith::Rem if b == 0.0 => return Value::Null,
        Arith::Div => a / b,
        Arith::Rem => a % b,
    };
    Value::Float(v)
}

/// `value` cast to `target`, null where it does not convert (as Spark's non-ANSI casts do).
fn cast(value: Value<'_>, target: Target) -> Value<'static> {
    match (value, target) {
        (Value::Null, _) => Value::Null,
        (Value::Text(t), Target::Text) => Value::Text(Cow::Owned(t.into_owned())),
        (Value::Text(t), Target::Boolean) => match t.trim().to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::Null,
        },
        (Value::Text(t), Target::Date) => date(t.trim()).map_or(Value::Null, Value::Date),
        (Value::Text(t), Target::Timestamp) => {
            timestamp(t.trim()).map_or(Value::Null, Value::Timestamp)
        }
        (Value::Text(t), Target::Double) => t.trim().parse().map_or(Value::Null, Value::Float),
        (Value::Text(t), Target::Decimal(p, s)) => {
            nested::decimal(&t, p, s).map_or(Value::Null, |v| Value::Decimal(v, s))
        }
        (Value::Text(t), Target::Integer) => {
            number_literal(t.trim()).map_or(Value::Null, |v| cast(v, Target::Integer))
        }
        (Value::Decimal(v, s), Target::Integer) => Value::Decimal(v / 10i128.pow(u32::from(s)), 0),
        (Value::Float(v), Target::Integer) if v.is_finite() => Value::Decimal(v.trunc() as i128, 0),
        (Value::Decimal(v, s), Target::Decimal(p, scale)) => rescale(v, s, p, scale),
        (Value::Float(v), Target::Decimal(p, scale)) => {
            nested::decimal(&format!("{:.*}", usize::from(scale), v), p, scale)
                .map_or(Value::Null, |v| Value::Decimal(v, scale))
        }
        (value @ (Value::Decimal(..) | Value::Float(_)), Target::Double) => {
            to_f64(&value).map_or(Value::Null, Value::Float)
        }
        (Value::Date(d), Target::Timestamp) => Value::Timestamp(i64::from(d) * 86_400_000_000),
        (Value::Timestamp(t), Target::Date) => {
            i32::try_from(t.div_euclid(86_400_000_000)).map_or(Value::Null, Value::Date)
        }
        (Value::Bool(b), Target::Boolean) => Value::Bool(b),
        (Value::Bool(b), Target::Integer) => Value::Decimal(i128::from(b), 0),
        (value @ (Value::Date(_) | Value::Timestamp(_)), Target::Date | Target::Timestamp) => {
            value_static(value)
        }
        (value, Target::Text) => match value {
            Value::Decimal(v, s) => Value::Text(Cow::Owned(decimal_text(v, s))),
            Value::Float(v) => Value::Text(Cow::Owned(v.to_string())),
            Value::Bool(b) => Value::Text(Cow::Owned(b.to_string())),
            _ => Value::Null,
        },
        _ => Value::Null,
    }
}

fn value_static(value: Value<'_>) -> Value<'static> {
    match value {
        Value::Text(t) => Value::Text(Cow::Owned(t.into_owned())),
        Value::Null => Value::Null,
        Value::Bool(b) => Value::Bool(b),
        Value::Decimal(v, s) => Value::Decimal(v, s),
        Value::Float(v) => Value::Float(v),
        Value::Date(d) => Value::Date(d),
        Value::Timestamp(t) => Value::Timestamp(t),
        Value::Opaque => Value::Opaque,
    }
}

/// A decimal at another scale (rounded half up), null when it does not fit the precision.
fn rescale(v: i128, s: u8, precision: u8, scale: u8) -> Value<'static> {
    let rescaled = if scale >= s {
        10i128
            .checked_pow(u32::from(scale - s))
            .and_then(|f| v.checked_mul(f))
    } else {
        let f = 10i128.pow(u32::from(s - scale));
        let half = if v < 0 { -f / 2 } else { f / 2 };
        v.checked_add(half).map(|v| v / f)
    };
    match rescaled {
        Some(v) if v.unsigned_abs() < 10u128.pow(u32::from(precision)) => Value::Decimal(v, scale),
        _ => Value::Null,
    }
}

fn decimal_text(v: i128, s: u8) -> String {
    if s == 0 {
        return v.to_string();
    }
    let digits = format!("{:0>width$}", v.unsigned_abs(), width = usize::from(s) + 1);
    let (whole, fraction) = digits.split_at(digits.len() - usize::from(s));
    format!("{}{whole}.{fraction}", if v < 0 { "-" } else { "" })
}

fn date(text: &str) -> Option<i32> {
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .or_else(|| {
            timestamp(text).and_then(|t| Some(DateTime::from_timestamp_micros(t)?.date_naive()))
        })?;
    i32::try_from(date.signed_duration_since(NaiveDate::default()).num_days()).ok()
}

/// A timestamp in RFC 3339 or `YYYY-MM-DD[ T]HH:MM:SS[.f]` (UTC) or a date (its midnight), as
/// microseconds.
fn timestamp(text: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_micros());
    }
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
    .map(|t| t.and_utc().timestamp_micros())
    .or_else(|| {
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc().timestamp_micros())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::delta::config::StructMember;

    fn columns() -> Vec<(String, ColumnType)> {
        let seat = ColumnType::Struct(vec![
            StructMember {
                name: "no".to_owned(),
                data_type: ColumnType::String,
                nullable: true,
            },
            StructMember {
                name: "row".to_owned(),
                data_type: ColumnType::Long,
                nullable: true,
            },
        ]);
        vec![
            ("id".to_owned(), ColumnType::Long),
            (
                "price".to_owned(),
                ColumnType::Decimal {
                    precision: 10,
                    scale: 2,
                },
            ),
            ("qty".to_owned(), ColumnType::Integer),
            ("kind".to_owned(), ColumnType::String),
            ("day".to_owned(), ColumnType::Date),
            ("at".to_owned(), ColumnType::Timestamp),
            ("lo".to_owned(), ColumnType::Double),
            ("hi".to_owned(), ColumnType::Double),
            ("seat".to_owned(), seat),
        ]
    }

    /// A row: id 7, price 19.99, qty 3, kind "adult", day 2026-05-01, at 2026-05-01T10:00Z,
    /// lo 1.5, hi 2.5, seat {no: "4C", row: 4}; `edit` changes it.
    fn row(edit: impl FnOnce(&mut Vec<Cell<'static>>)) -> Vec<Cell<'static>> {
        let day = NaiveDate::from_ymd_opt(2026, 5, 1)
            .expect("date")
            .signed_duration_since(NaiveDate::default())
            .num_days() as i32;
        let mut cells = vec![
            Cell::Long(7),
            Cell::Decimal(1999),
            Cell::Integer(3),
            Cell::Text(Cow::Borrowed("adult")),
            Cell::Days(day),
            Cell::Micros(i64::from(day) * 86_400_000_000 + 10 * 3_600_000_000),
            Cell::Double(1.5),
            Cell::Double(2.5),
            Cell::Struct(vec![Cell::Text(Cow::Borrowed("4C")), Cell::Long(4)]),
        ];
        edit(&mut cells);
        cells
    }

    fn check(sql: &str, cells: &[Cell<'_>]) -> bool {
        let columns = columns();
        let expr = parse(sql, &columns).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let types: Vec<ColumnType> = columns.into_iter().map(|(_, t)| t).collect();
        holds(&expr, cells, &types)
    }

    #[test]
    fn evaluates_what_spark_users_write() {
        let plain = row(|_| {});
        for sql in [
            "price > 0",
            "price >= 19.99 AND price < 20",
            "price * qty < 100",
            "price * qty = 59.97",
            "(qty + 1) * 2 = 8 AND qty - 4 < 0 AND qty / 2 = 1.5 AND qty % 2 = 1",
            "-qty = -3",
            "lo < hi",
            "lo + 1 <= hi",
            "NOT (lo > hi)",
            "kind IN ('adult', 'child')",
            "qty NOT IN (1, 2)",
            "qty BETWEEN 1 AND 10",
            "qty NOT BETWEEN 4 AND 10",
            "day >= '2020-01-01'",
            "day >= DATE '2020-01-01' AND day < DATE'2027-01-01'",
            "at > TIMESTAMP '2026-05-01 09:59:59'",
            "at < '2026-05-01T10:00:01Z'",
            "at >= day",
            "seat.row > 0 AND seat.`no` = '4C'",
            "kind LIKE 'ad%' AND kind LIKE '_dult' AND kind NOT LIKE 'c%'",
            "length(kind) > 0 AND upper(kind) = 'ADULT' AND lower('A') = 'a'",
            "abs(-qty) = 3 AND coalesce(NULL, qty) = 3",
            "CAST(qty AS BIGINT) > -5 AND CAST('12.5' AS DECIMAL(4,1)) = 12.5",
            "id = 7L AND lo = 1.5D AND price < 20BD AND 1e1 = 10",
            "kind = \"adult\" AND kind != 'it''s'",
            "id IS NOT NULL AND `id` <=> 7",
            "kind = 'child' OR qty = 3",
            "true",
        ] {
            assert!(check(sql, &plain), "{sql}");
        }
        for sql in [
            "price > 20",
            "qty BETWEEN 4 AND 10",
            "kind IN ('child')",
            "day < '2020-01-01'",
            "seat.row > 4",
            "kind LIKE 'c%'",
            "NOT (lo < hi)",
            "lo > hi OR qty > 3",
        ] {
            assert!(!check(sql, &plain), "{sql}");
        }
    }

    #[test]
    fn null_breaks_a_constraint_unless_the_logic_decides_without_it() {
        let null_price = row(|cells| cells[1] = Cell::Null);
        assert!(!check("price > 0", &null_price), "null is not true");
        assert!(!check("NOT (price > 0)", &null_price));
        assert!(check("price > 0 OR price IS NULL", &null_price));
        assert!(!check("price > 0 AND qty = 3", &null_price));
        assert!(
            !check("qty IN (1, NULL)", &null_price),
            "not found, and null"
        );
        assert!(check("qty IN (3, NULL)", &null_price));
        assert!(check("price <=> NULL", &null_price));
        let null_seat = row(|cells| cells[8] = Cell::Null);
        assert!(check("seat IS NULL OR seat.row > 0", &null_seat));
        assert!(!check("seat.row > 0", &null_seat));
        assert!(
            !check("qty / 0 > 1", &null_seat),
            "division by zero is null"
        );
    }

    #[test]
    fn reads_what_delta_rs_stores() {
        let plain = row(|_| {});
        for sql in [
            "price > '0'::decimal(10, 2)",
            "price * qty < '100000'::decimal(21, 2) AND (kind = 'a' OR kind = 'adult' OR kind IS NULL)",
            "day >= '2020-01-01'::date",
            "at > arrow_cast('2020-01-01T00:00:00.000000', 'Timestamp(Microsecond, Some(\"UTC\"))')",
            "get_field(seat, 'row') > 0 OR seat IS NULL",
            "qty != 1 AND qty != 2",
            "price >= arrow_cast('1.5', 'Decimal128(10, 2)')",
        ] {
            assert!(check(sql, &plain), "{sql}");
        }
    }

    #[test]
    fn refuses_what_is_beyond_the_grammar() {
        for (sql, why) in [
            ("nope > 1", "`nope` is not a column"),
            ("regexp_like(kind, 'a')", "the function `regexp_like`"),
            ("kind > 'x", "an unterminated quote"),
            ("qty >", "an incomplete expression"),
            ("qty > 1 1", "unexpected `1`"),
            ("seat.zone > 1", "the struct has no field `zone`"),
            ("kind.x = 1", "`.x` of a string, which is not a struct"),
            ("qty IS TRUE", "only `IS [NOT] NULL`"),
            ("CAST(qty AS map)", "the type `map`"),
            ("qty ~ 1", "unexpected `~`"),
        ] {
            assert_eq!(
                parse(sql, &columns()).map(|_| ()),
                Err(why.to_owned()),
                "{sql}"
            );
        }
    }

    #[test]
    fn decimals_are_compared_exactly() {
        let cents = row(|cells| cells[1] = Cell::Decimal(1));
        assert!(check("price = 0.01", &cents));
        assert!(check("price > 0.009999999999999999999", &cents));
        assert!(!check("price >= 0.010000000000000000001", &cents));
        assert_eq!(decimal_text(-5, 2), "-0.05");
        assert_eq!(rescale(1999, 2, 4, 1), Value::Decimal(200, 1));
    }
}
