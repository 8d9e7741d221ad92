//! Tables written by other engines: the writer features the sink can append under, and the
//! table's CHECK constraints, evaluated on every row.
//!
//! Without DataFusion there is no SQL engine here, so constraints are read in a small form that
//! covers what tables usually carry: comparisons of a column with a literal and `IS [NOT] NULL`,
//! joined by `AND`. A constraint outside it refuses the start, naming it, rather than being
//! ignored. As in Delta (Spark and delta-rs alike), a comparison with a null breaks the
//! constraint.

use super::convert::Cell;
use crate::config::ColumnType;

/// Writer features an append of this sink respects: the others refuse the start, named.
const APPENDABLE: &[&str] = &[
    "appendOnly",
    "invariants",
    "checkConstraints",
    "changeDataFeed",
    "deletionVectors",
    "timestampNtz",
    "domainMetadata",
    "vacuumProtocolCheck",
    "typeWidening",
    "typeWidening-preview",
    // A variant column itself is refused by the column types.
    "variantType",
];

/// The table's writer features this sink cannot append under, named.
pub(super) fn unsupported_features(table: &deltalake::DeltaTable) -> Result<Vec<String>, String> {
    let snapshot = table
        .snapshot()
        .map_err(|e| format!("cannot read the table: {e}"))?;
    let protocol = snapshot.protocol();
    let mut unsupported: Vec<String> = protocol
        .writer_features()
        .unwrap_or_default()
        .iter()
        .map(|f| f.as_ref().to_owned())
        .filter(|f| !APPENDABLE.contains(&f.as_str()))
        .collect();
    // Before table features (writer version < 7), features came with the version.
    let configuration = snapshot.metadata().configuration();
    if configuration
        .get("delta.columnMapping.mode")
        .is_some_and(|mode| mode != "none")
        && !unsupported.iter().any(|f| f == "columnMapping")
    {
        unsupported.push("columnMapping".to_owned());
    }
    for field in snapshot.schema().fields() {
        let metadata = field.metadata();
        if metadata.contains_key("delta.generationExpression")
            && !unsupported.iter().any(|f| f == "generatedColumns")
        {
            unsupported.push("generatedColumns".to_owned());
        }
        if metadata.contains_key("delta.identity.start")
            && !unsupported.iter().any(|f| f == "identityColumns")
        {
            unsupported.push("identityColumns".to_owned());
        }
    }
    Ok(unsupported)
}

/// Whether the table declares CHECK constraints or invariants (the features delta-rs refuses to
/// commit under without DataFusion).
pub(super) fn has_checks(table: &deltalake::DeltaTable) -> bool {
    table.snapshot().is_ok_and(|snapshot| {
        let protocol = snapshot.protocol();
        protocol
            .writer_features()
            .unwrap_or_default()
            .iter()
            .any(|f| ["checkConstraints", "invariants"].contains(&f.as_ref()))
            || (2..7).contains(&protocol.min_writer_version())
                && snapshot
                    .metadata()
                    .configuration()
                    .keys()
                    .any(|k| k.starts_with("delta.constraints."))
    })
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A literal of a constraint.
#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Number(f64),
    Text(String),
}

/// One conjunct of a constraint.
#[derive(Debug, Clone, PartialEq)]
enum Term {
    Compare {
        column: usize,
        op: Op,
        literal: Literal,
    },
    IsNull(usize, bool),
}

/// A CHECK constraint of the table.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Constraint {
    name: String,
    sql: String,
    terms: Vec<Term>,
}

/// The table's CHECK constraints (`delta.constraints.<name>` properties), read against `columns`
/// (the sink's columns, in order), or the first one this writer cannot evaluate.
pub(super) fn read(
    table: &deltalake::DeltaTable,
    columns: &[(String, ColumnType)],
) -> Result<Vec<Constraint>, String> {
    let snapshot = table
        .snapshot()
        .map_err(|e| format!("cannot read the table: {e}"))?;
    let mut constraints = Vec::new();
    let mut properties: Vec<(&String, &String)> =
        snapshot.metadata().configuration().iter().collect();
    properties.sort();
    for (key, sql) in properties {
        let Some(name) = key.strip_prefix("delta.constraints.") else {
            continue;
        };
        let terms = parse(sql, columns).map_err(|why| {
            format!(
                "check constraint `{name}` (`{sql}`) is beyond what this writer evaluates: {why}"
            )
        })?;
        constraints.push(Constraint {
            name: name.to_owned(),
            sql: sql.clone(),
            terms,
        });
    }
    Ok(constraints)
}

fn parse(sql: &str, columns: &[(String, ColumnType)]) -> Result<Vec<Term>, String> {
    let tokens = tokenize(sql)?;
    let mut terms = Vec::new();
    for conjunct in tokens.split(|t| t.eq_ignore_ascii_case("and")) {
        terms.push(term(conjunct, columns)?);
    }
    Ok(terms)
}

fn column_index(name: &str, columns: &[(String, ColumnType)]) -> Result<usize, String> {
    let name = name.trim_matches('`');
    columns
        .iter()
        .position(|(c, _)| c.eq_ignore_ascii_case(name))
        .ok_or_else(|| format!("`{name}` is not a column"))
}

fn term(tokens: &[String], columns: &[(String, ColumnType)]) -> Result<Term, String> {
    let lower: Vec<String> = tokens.iter().map(|t| t.to_ascii_lowercase()).collect();
    let words: Vec<&str> = lower.iter().map(String::as_str).collect();
    match words.as_slice() {
        [_, "is", "not", "null"] => Ok(Term::IsNull(column_index(&tokens[0], columns)?, false)),
        [_, "is", "null"] => Ok(Term::IsNull(column_index(&tokens[0], columns)?, true)),
        [_, op, _] | [_, op, _, _] => {
            let op = match *op {
                "=" | "==" => Op::Eq,
                "!=" | "<>" => Op::Ne,
                "<" => Op::Lt,
                "<=" => Op::Le,
                ">" => Op::Gt,
                ">=" => Op::Ge,
                other => return Err(format!("operator `{other}`")),
            };
            // `'0'::decimal(10, 2)`, as delta-rs stores `price > 0`.
            let cast_to_number = words.get(3).is_some_and(|cast| {
                let cast = cast.trim_start_matches("::");
                [
                    "decimal", "int", "integer", "bigint", "long", "smallint", "short", "tinyint",
                    "byte", "double", "float", "real",
                ]
                .iter()
                .any(|t| cast.starts_with(t))
            });
            if words.get(3).is_some_and(|cast| !cast.starts_with("::")) {
                return Err(format!("`{}`", tokens[3]));
            }
            let quoted = tokens[2]
                .strip_prefix('\'')
                .and_then(|t| t.strip_suffix('\''));
            let literal = if let Some(text) = quoted.filter(|_| !cast_to_number) {
                Literal::Text(text.to_owned())
            } else if let Some(text) = quoted {
                Literal::Number(
                    text.trim()
                        .parse()
                        .map_err(|_| format!("`{}` is not a number", tokens[2]))?,
                )
            } else {
                Literal::Number(
                    tokens[2]
                        .parse()
                        .map_err(|_| format!("`{}` is not a literal", tokens[2]))?,
                )
            };
            Ok(Term::Compare {
                column: column_index(&tokens[0], columns)?,
                op,
                literal,
            })
        }
        _ => Err("only `column <op> literal` and `column IS [NOT] NULL`, joined by AND".to_owned()),
    }
}

fn tokenize(sql: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut chars = sql.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            let mut text = String::from(chars.next().unwrap_or('\''));
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some(c) => text.push(c),
                    None => return Err("an unterminated string".to_owned()),
                }
            }
            text.push('\'');
            tokens.push(text);
        } else if c == ':' {
            // A cast: `::type` or `::type(p, s)`, one token.
            let mut cast = String::new();
            while let Some(&c) = chars
                .peek()
                .filter(|c| **c == ':' || c.is_alphanumeric() || **c == '_')
            {
                cast.push(c);
                chars.next();
            }
            if chars.peek() == Some(&'(') {
                for c in chars.by_ref() {
                    cast.push(c);
                    if c == ')' {
                        break;
                    }
                }
            }
            tokens.push(cast);
        } else if "<>=!".contains(c) {
            let mut op = String::new();
            while let Some(&c) = chars.peek().filter(|c| "<>=!".contains(**c)) {
                op.push(c);
                chars.next();
            }
            tokens.push(op);
        } else if c.is_alphanumeric() || "_.`-+".contains(c) {
            let mut word = String::new();
            while let Some(&c) = chars
                .peek()
                .filter(|c| c.is_alphanumeric() || "_.`-+".contains(**c))
            {
                word.push(c);
                chars.next();
            }
            tokens.push(word);
        } else {
            return Err(format!("`{c}`"));
        }
    }
    Ok(tokens)
}

impl Constraint {
    /// Why `cells` (one row, in column order, with the columns' types) break this constraint,
    /// if they do.
    pub(super) fn check(&self, cells: &[Cell<'_>], types: &[ColumnType]) -> Result<(), String> {
        let holds = self.terms.iter().all(|term| match term {
            Term::IsNull(column, null) => {
                matches!(cells.get(*column), Some(Cell::Null) | None) == *null
            }
            Term::Compare {
                column,
                op,
                literal,
            } => compare(cells.get(*column), types.get(*column), *op, literal),
        });
        if holds {
            Ok(())
        } else {
            Err(format!(
                "the row breaks the table's check constraint `{}` ({})",
                self.name, self.sql
            ))
        }
    }
}

/// Whether `cell op literal` holds; a null (or an incomparable value) does not, as in Delta.
fn compare(
    cell: Option<&Cell<'_>>,
    data_type: Option<&ColumnType>,
    op: Op,
    literal: &Literal,
) -> bool {
    use std::cmp::Ordering;
    let ordering = match (cell, literal) {
        (Some(Cell::Text(text)), Literal::Text(wanted)) => Some(text.as_ref().cmp(wanted.as_str())),
        (Some(cell), Literal::Number(wanted)) => {
            number(cell, data_type).and_then(|value| value.partial_cmp(wanted))
        }
        _ => None,
    };
    let Some(ordering) = ordering else {
        return false;
    };
    match op {
        Op::Eq => ordering == Ordering::Equal,
        Op::Ne => ordering != Ordering::Equal,
        Op::Lt => ordering == Ordering::Less,
        Op::Le => ordering != Ordering::Greater,
        Op::Gt => ordering == Ordering::Greater,
        Op::Ge => ordering != Ordering::Less,
    }
}

fn number(cell: &Cell<'_>, data_type: Option<&ColumnType>) -> Option<f64> {
    Some(match *cell {
        Cell::Long(v) => v as f64,
        Cell::Integer(v) => f64::from(v),
        Cell::Short(v) => f64::from(v),
        Cell::Byte(v) => f64::from(v),
        Cell::Double(v) => v,
        Cell::Float(v) => f64::from(v),
        Cell::Decimal(v) => match data_type {
            Some(ColumnType::Decimal { scale, .. }) => v as f64 / 10f64.powi(i32::from(*scale)),
            _ => return None,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn columns() -> Vec<(String, ColumnType)> {
        vec![
            ("id".to_owned(), ColumnType::Long),
            (
                "price".to_owned(),
                ColumnType::Decimal {
                    precision: 10,
                    scale: 2,
                },
            ),
            ("kind".to_owned(), ColumnType::String),
        ]
    }

    fn holds(sql: &str, cells: &[Cell<'_>]) -> bool {
        let constraint = Constraint {
            name: "c".to_owned(),
            sql: sql.to_owned(),
            terms: parse(sql, &columns()).expect("parses"),
        };
        let types: Vec<ColumnType> = columns().into_iter().map(|(_, t)| t).collect();
        constraint.check(cells, &types).is_ok()
    }

    #[test]
    fn evaluates_comparisons_null_tests_and_casts() {
        let row = |id: i64, price: Option<i128>, kind: &'static str| {
            vec![
                Cell::Long(id),
                price.map_or(Cell::Null, Cell::Decimal),
                Cell::Text(Cow::Borrowed(kind)),
            ]
        };
        assert!(holds("price > '0'::decimal(10, 2)", &row(1, Some(1), "a")));
        assert!(!holds("price > '0'::decimal(10, 2)", &row(1, Some(0), "a")));
        assert!(
            !holds("price > 0", &row(1, None, "a")),
            "null breaks it, as in Delta"
        );
        assert!(holds("id >= 0 AND id < 10", &row(9, None, "a")));
        assert!(!holds("id >= 0 and id < 10", &row(10, None, "a")));
        assert!(holds("kind != 'x' AND price IS NULL", &row(1, None, "a")));
        assert!(!holds("kind = 'x'", &row(1, None, "a")));
        assert!(holds("`id` IS NOT NULL", &row(1, None, "a")));
        for beyond in ["id > 0 OR id < -5", "abs(id) > 0", "nope > 1", "id > 'x"] {
            assert!(parse(beyond, &columns()).is_err(), "{beyond}");
        }
    }
}
