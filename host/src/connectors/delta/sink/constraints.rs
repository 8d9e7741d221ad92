//! Tables written by other engines: the writer features the sink can append under, and the
//! table's CHECK constraints, evaluated on every row.
//!
//! Without DataFusion there is no SQL engine here, so constraints are read by a small SQL
//! expression grammar ([`check_sql`]) that covers what Spark users write and delta-rs stores. A
//! constraint outside it refuses the start, naming it, rather than being ignored. As in Delta
//! (Spark and delta-rs alike), a row whose constraint evaluates to null breaks it.

use deltalake::kernel::StructTypeExt as _;

use super::check_sql::{self, Expr};
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

/// A CHECK constraint or invariant of the table.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Constraint {
    /// What it is, for reasons: ``check constraint `name` `` or ``invariant on `column` ``.
    name: String,
    sql: String,
    expr: Expr,
}

/// The table's CHECK constraints (`delta.constraints.<name>` properties) and invariants (a
/// column's `delta.invariants`), read against `columns` (the sink's columns, in order), or the
/// first one this writer cannot evaluate.
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
        let expr = check_sql::parse(sql, columns).map_err(|why| {
            format!(
                "check constraint `{name}` (`{sql}`) is beyond what this writer evaluates: {why}"
            )
        })?;
        constraints.push(Constraint {
            name: format!("check constraint `{name}`"),
            sql: sql.clone(),
            expr,
        });
    }
    // Invariants (writer version 2): an expression in a column's `delta.invariants` metadata.
    let mut invariants = snapshot
        .schema()
        .get_invariants()
        .map_err(|e| format!("cannot read the table's invariants: {e}"))?;
    invariants.sort_by(|a, b| a.field_name.cmp(&b.field_name));
    for invariant in invariants {
        let (path, sql) = (&invariant.field_name, &invariant.invariant_sql);
        let expr = check_sql::parse(sql, columns).map_err(|why| {
            format!(
                "the invariant on `{path}` (`{sql}`) is beyond what this writer evaluates: {why}"
            )
        })?;
        constraints.push(Constraint {
            name: format!("invariant on `{path}`"),
            sql: sql.clone(),
            expr,
        });
    }
    Ok(constraints)
}

impl Constraint {
    /// Why `cells` (one row, in column order, with the columns' types) break this constraint,
    /// if they do.
    pub(super) fn check(&self, cells: &[Cell<'_>], types: &[ColumnType]) -> Result<(), String> {
        if check_sql::holds(&self.expr, cells, types) {
            Ok(())
        } else {
            Err(format!(
                "the row breaks the table's {} ({})",
                self.name, self.sql
            ))
        }
    }
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
            name: "check constraint `c`".to_owned(),
            sql: sql.to_owned(),
            expr: check_sql::parse(sql, &columns()).expect("parses"),
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
        // Once beyond this writer, now evaluated (see `check_sql`).
        assert!(holds("id > 0 OR id < -5", &row(-6, None, "a")));
        assert!(holds("abs(id) > 0", &row(-6, None, "a")));
        for beyond in ["regexp_like(kind, 'a')", "nope > 1", "id > 'x"] {
            assert!(check_sql::parse(beyond, &columns()).is_err(), "{beyond}");
        }
    }
}
