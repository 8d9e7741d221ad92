//! Records to arrow rows: where each column's value comes from, the type rules, and the refusals.
//!
//! A record (an [`Event`] whose body is one JSON object) becomes one row. Each column is filled
//! from a top-level field of the JSON (`from`, by default the column's name) or from the record's
//! metadata (`value`). The body is parsed once per record and only the fields some column reads
//! are kept. A value that does not fit its column, a null or missing value in a non-nullable
//! column, or a body that is not one JSON object refuses the whole record, with a reason that names
//! the column; nothing here panics on record contents.
//!
//! Decimal and nested (array, map, struct) columns are filled from the JSON tree read by
//! [`json_tree`](super::json_tree), which keeps numbers as written so that decimals are exact; a
//! table without such columns keeps the faster path that reads only the fields it needs.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate};
use deltalake::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use deltalake::arrow::datatypes::{DataType as ArrowType, SchemaRef};
use deltalake::arrow::record_batch::RecordBatch;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::constraints::Constraint;
use super::json_tree::{self, Node};
use super::nested::{self, Mismatch};
use crate::config::{ColumnType, ColumnValue, DeltaSinkConfig};
use crate::connectors::delta::config::{Derive, ExtraFields, SchemaMode};
use crate::event::{Event, Position};
use crate::json::fields::FieldFinder;
use crate::json::scan::{self, Scanned};
use crate::json::timestamp::rfc3339_micros;
use crate::sink::RefusalKind;

/// Converts records into arrow rows for one table.
#[derive(Debug)]
pub(super) struct RowConverter {
    columns: Vec<ColumnSpec>,
    /// The distinct top-level JSON fields the columns read, in first-use order.
    fields: Vec<String>,
    /// The table's arrow schema (same columns, same order).
    schema: SchemaRef,
    /// Some column read from the JSON needs the whole tree (decimal or nested).
    tree: bool,
    /// The names of the columns and of the fields they read: a field of one of these names
    /// (compared as Delta compares column names, ignoring case) is not new.
    other_names: Vec<String>,
    schema_mode: SchemaMode,
    extra_fields: ExtraFields,
    /// The table's CHECK constraints, checked on every row.
    constraints: Vec<Constraint>,
    /// The columns' types, in order, for the constraints.
    types: Vec<ColumnType>,
}

/// What [`BatchBuilder::push`] did with a record.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Pushed {
    /// Added as a row; it has no field that no column reads.
    Row,
    /// Added as a row without its fields that no column reads (`extra_fields = "ignore"`).
    Ignored,
    /// Not added: it has these new non-null fields, which `schema = "evolve"` adds as columns
    /// first.
    Evolve(Vec<String>),
}

#[derive(Debug)]
struct ColumnSpec {
    name: String,
    data_type: ColumnType,
    nullable: bool,
    source: Source,
    derive: Option<Derive>,
    /// No later column reads the same field.
    last_reader: bool,
    /// A struct sits inside the column's type: its values may carry members it has no field for.
    nests_struct: bool,
}

/// A column's value before conversion: a scalar read by the fast path or metadata, or a part of
/// the JSON tree.
#[derive(Clone)]
enum Input<'a> {
    Json(Json<'a>),
    Node(Node<'a>),
}

impl<'a> Input<'a> {
    fn is_null(&self) -> bool {
        matches!(self, Input::Json(Json::Null) | Input::Node(Node::Null))
    }

    fn into_json(self) -> Json<'a> {
        match self {
            Input::Json(json) => json,
            Input::Node(node) => nested::node_json(&node),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Source {
    /// Index into [`RowConverter::fields`].
    Field(usize),
    Meta(ColumnValue),
}

impl RowConverter {
    /// Checks the column definitions of `config` and prepares the conversion into `schema` (the
    /// table's arrow schema, whose columns must be `config.columns` in order).
    pub(super) fn new(config: &DeltaSinkConfig, schema: SchemaRef) -> Result<Self, String> {
        validate(config)?;
        let mut fields: Vec<String> = Vec::new();
        let mut columns = Vec::with_capacity(config.columns.len());
        let mut tree = false;
        for column in &config.columns {
            let source = match column.value {
                Some(value) => Source::Meta(value),
                None => {
                    let field = column.from.as_deref().unwrap_or(&column.name);
                    let index = match fields.iter().position(|f| f == field) {
                        Some(index) => index,
                        None => {
                            fields.push(field.to_owned());
                            fields.len() - 1
                        }
                    };
                    tree |= column.data_type.needs_tree();
                    Source::Field(index)
                }
            };
            columns.push(ColumnSpec {
                name: column.name.clone(),
                data_type: column.data_type.clone(),
                nullable: column.nullable,
                source,
                derive: column.derive,
                last_reader: true,
                nests_struct: column.value.is_none() && nested::has_struct(&column.data_type),
            });
        }
        for index in 0..columns.len() {
            let source = columns[index].source;
            if let Source::Field(field) = source {
                columns[index].last_reader = !columns[index + 1..]
                    .iter()
                    .any(|c| matches!(c.source, Source::Field(f) if f == field));
            }
        }
        if schema.fields().len() != columns.len() {
            return Err(format!(
                "the table has {} columns but the configuration lists {}",
                schema.fields().len(),
                columns.len()
            ));
        }
        let other_names = config
            .columns
            .iter()
            .map(|c| c.name.clone())
            .chain(fields.iter().cloned())
            .collect();
        Ok(RowConverter {
            columns,
            fields,
            schema,
            tree,
            other_names,
            schema_mode: config.schema,
            extra_fields: config.extra_fields,
            constraints: Vec::new(),
            types: config.columns.iter().map(|c| c.data_type.clone()).collect(),
        })
    }

    /// The converter refusing rows that break one of `constraints`.
    pub(super) fn with_constraints(mut self, constraints: Vec<Constraint>) -> Self {
        self.constraints = constraints;
        self
    }

    /// An empty batch of rows.
    pub(super) fn batch(&self, capacity: usize) -> BatchBuilder<'_> {
        let builders = self
            .columns
            .iter()
            .zip(self.schema.fields().iter())
            .map(|(column, field)| {
                ColumnBuilder::new(&column.data_type, field.data_type(), capacity)
            })
            .collect();
        BatchBuilder {
            converter: self,
            finder: FieldFinder::new(&self.fields),
            builders,
            positions: Vec::with_capacity(capacity),
            spare: Row::default(),
        }
    }

    /// The cells of one record into `row.cells` and its new fields into `row.extras` (`row`
    /// empty before), or why it is refused.
    fn cells<'a>(
        &self,
        record: &'a Event,
        ingestion_time: i64,
        finder: &mut FieldFinder<'_>,
        row: &mut Row<'a>,
    ) -> Result<(), (RefusalKind, String)> {
        let Row {
            values,
            cells,
            extras,
        } = row;
        self.field_values(&record.body, finder, values, extras)
            .map_err(|reason| (RefusalKind::Malformed, reason))?;
        self.nested_extras(values, extras);
        for column in &self.columns {
            let value = match column.source {
                // The last column reading a field takes its value; earlier ones copy it.
                Source::Field(index) if column.last_reader => {
                    values.get_mut(index).and_then(Option::take)
                }
                Source::Field(index) => values.get(index).cloned().flatten(),
                Source::Meta(ColumnValue::IngestionTime) => {
                    Some(Input::Json(Json::Int(ingestion_time)))
                }
                Source::Meta(ColumnValue::EventTime) => {
                    record.event_time.map(|t| Input::Json(Json::Int(t)))
                }
                Source::Meta(ColumnValue::Partition) => {
                    Some(Input::Json(Json::UInt(u64::from(record.partition))))
                }
                Source::Meta(ColumnValue::Position) => {
                    Some(Input::Json(Json::UInt(record.position)))
                }
                Source::Meta(ColumnValue::PluginVersion) => crate::stage::labelled_version(record)
                    .map(|version| Input::Json(Json::Text(Cow::Borrowed(version)))),
                Source::Meta(ColumnValue::PluginVersions) => crate::stage::labelled_lineage(record)
                    .map(|lineage| Input::Json(Json::Text(Cow::Borrowed(lineage)))),
            };
            cells.push(
                self.cell(column, value)
                    .map_err(|reason| (RefusalKind::Schema, reason))?,
            );
        }
        for constraint in &self.constraints {
            constraint
                .check(cells, &self.types)
                .map_err(|reason| (RefusalKind::Schema, reason))?;
        }
        Ok(())
    }

    /// Adds to `extras` the members inside the values of struct-typed columns that their types
    /// have no field for (`seat.zone`), which `schema` and `extra_fields` treat as new fields.
    fn nested_extras(&self, values: &[Option<Input<'_>>], extras: &mut Vec<String>) {
        for column in self.columns.iter().filter(|c| c.nests_struct) {
            if let Source::Field(index) = column.source
                && let Some(Some(Input::Node(node))) = values.get(index)
            {
                let mut path = self.fields[index].clone();
                nested::new_members(&column.data_type, node, &mut path, extras);
            }
        }
    }

    /// Whether `key`, a top-level field no column reads, is new to the table.
    fn is_new(&self, key: &str) -> bool {
        !self.other_names.iter().any(|n| n.eq_ignore_ascii_case(key))
    }

    /// The values of the fields the columns read into `values`, in [`RowConverter::fields`]
    /// order, and the names of the record's other non-null top-level fields that are new to the
    /// table into `extras` (both empty before).
    fn field_values<'a>(
        &self,
        body: &'a [u8],
        finder: &mut FieldFinder<'_>,
        values: &mut Vec<Option<Input<'a>>>,
        extras: &mut Vec<String>,
    ) -> Result<(), String> {
        if self.fields.is_empty() {
            return Ok(());
        }
        values.resize(self.fields.len(), None);
        if !self.tree {
            if !scan_fields_and_extras(body, finder, values, extras) {
                let (found, others) = extract_fields_and_extras(body, &self.fields)?;
                values.clear();
                values.extend(found.into_iter().map(|v| v.map(Input::Json)));
                *extras = others;
            }
            extras.retain(|key| self.is_new(key));
            return Ok(());
        }
        let text = std::str::from_utf8(body).map_err(|e| format!("malformed JSON: {e}"))?;
        let Node::Object(members) =
            json_tree::parse(text).map_err(|e| format!("malformed JSON: {e}"))?
        else {
            return Err("malformed JSON: expected a JSON object".to_owned());
        };
        for (key, value) in members {
            match self.fields.iter().position(|f| *f == key) {
                Some(index) => values[index] = Some(Input::Node(value)),
                None if value != Node::Null && self.is_new(&key) => {
                    extras.push(key.into_owned());
                }
                None => {}
            }
        }
        Ok(())
    }

    fn cell<'a>(&self, column: &ColumnSpec, value: Option<Input<'a>>) -> Result<Cell<'a>, String> {
        let value = match value {
            Some(v) if v.is_null() && column.nullable => return Ok(Cell::Null),
            None if column.nullable => return Ok(Cell::Null),
            Some(v) if v.is_null() => {
                return Err(format!(
                    "column `{}` is not nullable, but {} is null",
                    column.name,
                    self.origin(column)
                ));
            }
            None => {
                return Err(format!(
                    "column `{}` is not nullable, but the record has no {}",
                    column.name,
                    self.origin(column)
                ));
            }
            Some(value) => value,
        };
        if let (Input::Node(node), true) = (&value, column.data_type.needs_tree()) {
            return nested::convert_node(&column.data_type, node)
                .map_err(|mismatch| mismatch.reason(&column.name));
        }
        let value = match column.derive {
            Some(derive) => derived(derive, &value.into_json()).ok_or_else(|| {
                format!(
                    "column `{}` is derived from a timestamp (RFC 3339 text or epoch milliseconds), found {}",
                    column.name,
                    self.origin(column)
                )
            })?,
            None => value.into_json(),
        };
        convert_ref(&column.data_type, value).map_err(|found| {
            Mismatch::new(expectation(&column.data_type), found).reason(&column.name)
        })
    }

    /// Where a column's value comes from, for reasons.
    fn origin(&self, column: &ColumnSpec) -> String {
        match column.source {
            Source::Field(index) => format!(
                "field `{}`",
                self.fields.get(index).map_or("?", String::as_str)
            ),
            Source::Meta(ColumnValue::IngestionTime) => "ingestion time".to_owned(),
            Source::Meta(ColumnValue::EventTime) => "event time".to_owned(),
            Source::Meta(ColumnValue::Partition) => "partition".to_owned(),
            Source::Meta(ColumnValue::Position) => "position".to_owned(),
            Source::Meta(ColumnValue::PluginVersion) => "plugin version".to_owned(),
            Source::Meta(ColumnValue::PluginVersions) => "plugin versions".to_owned(),
        }
    }
}

/// Refuses column definitions that cannot work, before anything is created.
pub(super) fn validate(config: &DeltaSinkConfig) -> Result<(), String> {
    if config.columns.is_empty() {
        return Err("no columns are configured".to_owned());
    }
    if config.max_buffered_rows == 0 {
        return Err("`max_buffered_rows` must be at least 1".to_owned());
    }
    if config.row_group_rows == Some(0) {
        return Err("`row_group_rows` must be at least 1".to_owned());
    }
    let mut names = HashSet::new();
    for column in &config.columns {
        if column.name.is_empty() {
            return Err("a column has an empty name".to_owned());
        }
        if !names.insert(column.name.as_str()) {
            return Err(format!("column `{}` is listed twice", column.name));
        }
        if let (Some(from), Some(value)) = (&column.from, column.value) {
            return Err(format!(
                "column `{}` sets both `from = \"{from}\"` and `value = \"{}\"`: set one",
                column.name,
                value_name(value)
            ));
        }
        if let Some(value) = column.value {
            let allowed: Vec<ColumnType> = match value {
                ColumnValue::IngestionTime | ColumnValue::EventTime => vec![
                    ColumnType::Timestamp,
                    ColumnType::TimestampNtz,
                    ColumnType::Date,
                    ColumnType::Long,
                ],
                ColumnValue::Partition => vec![ColumnType::Integer, ColumnType::Long],
                ColumnValue::Position => vec![ColumnType::Long],
                ColumnValue::PluginVersion | ColumnValue::PluginVersions => {
                    vec![ColumnType::String]
                }
            };
            // A derived column holds the part of the timestamp, checked below.
            if column.derive.is_none() && !allowed.contains(&column.data_type) {
                let allowed: Vec<String> = allowed.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "column `{}` takes `value = \"{}\"`, which fits type {}, not {}",
                    column.name,
                    value_name(value),
                    allowed.join(" or "),
                    column.data_type
                ));
            }
        }
        validate_derive(column.derive, &column.name, &column.data_type)?;
    }
    let mut partitions = HashSet::new();
    for partition in &config.partition_by {
        if !names.contains(partition.as_str()) {
            return Err(format!(
                "`partition_by` names `{partition}`, which is not one of the columns"
            ));
        }
        if !partitions.insert(partition.as_str()) {
            return Err(format!("`partition_by` names `{partition}` twice"));
        }
        if let Some(column) = config.columns.iter().find(|c| &c.name == partition)
            && (column.data_type.needs_tree()
                && !matches!(column.data_type, ColumnType::Decimal { .. })
                || column.data_type == ColumnType::Binary)
        {
            return Err(format!(
                "`partition_by` names `{partition}`, a {} column: partition columns must be of a simple type",
                column.data_type
            ));
        }
    }
    if partitions.len() == names.len() {
        return Err(
            "every column is a partition column: at least one column must hold data".to_owned(),
        );
    }
    Ok(())
}

/// A derived column's type must hold what it derives.
fn validate_derive(
    derive: Option<Derive>,
    name: &str,
    data_type: &ColumnType,
) -> Result<(), String> {
    let (wanted, spelled) = match derive {
        None => return Ok(()),
        Some(Derive::Date) => (ColumnType::Date, "date"),
        Some(Derive::Hour) => (ColumnType::Integer, "hour"),
    };
    if *data_type != wanted {
        return Err(format!(
            "column `{name}` has `derive = \"{spelled}\"`, which fits type {wanted}, not {data_type}"
        ));
    }
    Ok(())
}

/// The part of the timestamp `value` holds that `derive` names, as the JSON its column converts.
fn derived(derive: Derive, value: &Json<'_>) -> Option<Json<'static>> {
    let micros = timestamp_micros(value)?;
    let at = DateTime::from_timestamp_micros(micros)?;
    Some(match derive {
        Derive::Date => Json::Int(micros.div_euclid(1000)),
        Derive::Hour => Json::Int(i64::from(chrono::Timelike::hour(&at))),
    })
}

fn value_name(value: ColumnValue) -> &'static str {
    match value {
        ColumnValue::IngestionTime => "ingestion_time",
        ColumnValue::EventTime => "event_time",
        ColumnValue::Partition => "partition",
        ColumnValue::Position => "position",
        ColumnValue::PluginVersion => "plugin_version",
        ColumnValue::PluginVersions => "plugin_versions",
    }
}

/// What a column of `data_type` takes, for reasons.
pub(super) fn expectation(data_type: &ColumnType) -> Cow<'static, str> {
    Cow::Borrowed(match data_type {
        ColumnType::String => "a string",
        ColumnType::Long => "a long",
        ColumnType::Integer => "an integer",
        ColumnType::Short => "a short (-32768 to 32767)",
        ColumnType::Byte => "a byte (-128 to 127)",
        ColumnType::Double => "a double",
        ColumnType::Float => "a float",
        ColumnType::Boolean => "a boolean",
        ColumnType::Binary => "binary data (base64 text)",
        ColumnType::Timestamp => "a timestamp (RFC 3339 text or epoch milliseconds)",
        ColumnType::TimestampNtz => {
            "a timestamp_ntz (YYYY-MM-DDTHH:MM:SS[.ffffff] text without a zone, or epoch milliseconds)"
        }
        ColumnType::Date => "a date (YYYY-MM-DD, RFC 3339 text or epoch milliseconds)",
        ColumnType::Decimal { .. } | ColumnType::Array(_) | ColumnType::Map(..) => {
            return Cow::Owned(format!("a {data_type}"));
        }
        ColumnType::Struct(_) => return Cow::Owned(format!("a {data_type} (a JSON object)")),
    })
}

/// One converted value.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell<'a> {
    Null,
    Text(Cow<'a, str>),
    Long(i64),
    Integer(i32),
    Double(f64),
    Boolean(bool),
    /// Microseconds since the Unix epoch, UTC.
    Micros(i64),
    /// Days since 1970-01-01.
    Days(i32),
    Short(i16),
    Byte(i8),
    Float(f32),
    Binary(Vec<u8>),
    /// The unscaled value of a decimal (its column's type carries the scale).
    Decimal(i128),
    /// An array's elements.
    List(Vec<Cell<'a>>),
    /// A map's entries.
    Map(Vec<(Cell<'a>, Cell<'a>)>),
    /// A struct's fields, in the type's order.
    Struct(Vec<Cell<'a>>),
}

impl Cell<'_> {
    /// The same value, owning its text.
    pub(super) fn into_owned(self) -> Cell<'static> {
        match self {
            Cell::Null => Cell::Null,
            Cell::Text(text) => Cell::Text(Cow::Owned(text.into_owned())),
            Cell::Long(v) => Cell::Long(v),
            Cell::Integer(v) => Cell::Integer(v),
            Cell::Double(v) => Cell::Double(v),
            Cell::Boolean(v) => Cell::Boolean(v),
            Cell::Micros(v) => Cell::Micros(v),
            Cell::Days(v) => Cell::Days(v),
            Cell::Short(v) => Cell::Short(v),
            Cell::Byte(v) => Cell::Byte(v),
            Cell::Float(v) => Cell::Float(v),
            Cell::Binary(v) => Cell::Binary(v),
            Cell::Decimal(v) => Cell::Decimal(v),
            Cell::List(items) => Cell::List(items.into_iter().map(Cell::into_owned).collect()),
            Cell::Map(entries) => Cell::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
            ),
            Cell::Struct(fields) => {
                Cell::Struct(fields.into_iter().map(Cell::into_owned).collect())
            }
        }
    }
}

/// Converts a non-null JSON value to `data_type`; the error describes what was found.
#[cfg(test)]
pub(super) fn convert(data_type: ColumnType, value: Json<'_>) -> Result<Cell<'_>, String> {
    convert_ref(&data_type, value)
}

/// [`convert`] of a borrowed type. Decimal and nested types take the JSON tree
/// ([`nested::convert_node`]); a scalar found for them is refused.
pub(super) fn convert_ref<'a>(data_type: &ColumnType, value: Json<'a>) -> Result<Cell<'a>, String> {
    let cell = match (data_type, &value) {
        (ColumnType::String, Json::Text(_)) => match value {
            Json::Text(text) => return Ok(Cell::Text(text)),
            _ => None,
        },
        (ColumnType::String, _) => None,
        (ColumnType::Long, value) => whole_number(value).map(Cell::Long),
        (ColumnType::Integer, value) => whole_number(value)
            .and_then(|n| i32::try_from(n).ok())
            .map(Cell::Integer),
        (ColumnType::Double, Json::Int(n)) => Some(Cell::Double(*n as f64)),
        (ColumnType::Double, Json::UInt(n)) => Some(Cell::Double(*n as f64)),
        (ColumnType::Double, Json::Float(n)) => Some(Cell::Double(*n)),
        (ColumnType::Double, _) => None,
        (ColumnType::Boolean, Json::Bool(b)) => Some(Cell::Boolean(*b)),
        (ColumnType::Boolean, _) => None,
        (ColumnType::Timestamp, value) => timestamp_micros(value).map(Cell::Micros),
        (ColumnType::Date, value) => date_days(value).map(Cell::Days),
        (ColumnType::Short, value) => whole_number(value)
            .and_then(|n| i16::try_from(n).ok())
            .map(Cell::Short),
        (ColumnType::Byte, value) => whole_number(value)
            .and_then(|n| i8::try_from(n).ok())
            .map(Cell::Byte),
        (ColumnType::Float, value) => float32(value).map(Cell::Float),
        (ColumnType::Binary, Json::Text(text)) => nested::base64(text).map(Cell::Binary),
        (ColumnType::Binary, _) => None,
        (ColumnType::TimestampNtz, value) => timestamp_ntz_micros(value).map(Cell::Micros),
        (ColumnType::Decimal { precision, scale }, Json::Text(text)) => {
            return nested::decimal(text, *precision, *scale)
                .map(Cell::Decimal)
                .map_err(|why| format!("{value} ({why})"));
        }
        (
            ColumnType::Decimal { .. }
            | ColumnType::Array(_)
            | ColumnType::Map(..)
            | ColumnType::Struct(_),
            _,
        ) => None,
    };
    cell.ok_or_else(|| value.to_string())
}

/// An integral number: integers, and floats without a fraction, within the i64 range.
fn whole_number(value: &Json<'_>) -> Option<i64> {
    match *value {
        Json::Int(n) => Some(n),
        Json::UInt(n) => i64::try_from(n).ok(),
        Json::Float(f)
            if f.fract() == 0.0
                && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) =>
        {
            Some(f as i64)
        }
        _ => None,
    }
}

/// Epoch milliseconds (a number, fractions allowed) as microseconds.
fn millis_to_micros(value: &Json<'_>) -> Option<i64> {
    match *value {
        Json::Int(ms) => ms.checked_mul(1000),
        Json::UInt(ms) => i64::try_from(ms).ok()?.checked_mul(1000),
        Json::Float(ms) => {
            let micros = (ms * 1000.0).round();
            (micros.is_finite()
                && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&micros))
            .then_some(micros as i64)
        }
        _ => None,
    }
}

/// A timestamp from RFC 3339 text or epoch milliseconds, as UTC microseconds.
fn timestamp_micros(value: &Json<'_>) -> Option<i64> {
    match value {
        Json::Text(text) => rfc3339_micros(text.trim()).or_else(|| {
            DateTime::parse_from_rfc3339(text.trim())
                .ok()
                .map(|t| t.timestamp_micros())
        }),
        _ => millis_to_micros(value),
    }
}

/// A number as a finite 32-bit float (refused when beyond its range).
fn float32(value: &Json<'_>) -> Option<f32> {
    let wide = match *value {
        Json::Int(n) => n as f64,
        Json::UInt(n) => n as f64,
        Json::Float(n) => n,
        _ => return None,
    };
    let narrow = wide as f32;
    narrow.is_finite().then_some(narrow)
}

/// A wall-clock time without a zone, as microseconds since 1970-01-01T00:00:00: from
/// `YYYY-MM-DDTHH:MM:SS[.f]` (or with a space) text, or epoch milliseconds read as UTC.
fn timestamp_ntz_micros(value: &Json<'_>) -> Option<i64> {
    match value {
        Json::Text(text) => {
            let text = text.trim();
            ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                .iter()
                .find_map(|format| chrono::NaiveDateTime::parse_from_str(text, format).ok())
                .map(|t| t.and_utc().timestamp_micros())
        }
        _ => millis_to_micros(value),
    }
}

/// A date from `YYYY-MM-DD`, or the UTC date of RFC 3339 text or epoch milliseconds.
fn date_days(value: &Json<'_>) -> Option<i32> {
    let date = match value {
        // The common RFC 3339 form, which is no plain date.
        Json::Text(text) if let Some(micros) = rfc3339_micros(text.trim()) => {
            return i32::try_from(micros.div_euclid(86_400_000_000)).ok();
        }
        Json::Text(text) => {
            let text = text.trim();
            match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
                Ok(date) => date,
                Err(_) => DateTime::parse_from_rfc3339(text)
                    .ok()?
                    .to_utc()
                    .date_naive(),
            }
        }
        _ => DateTime::from_timestamp_micros(millis_to_micros(value)?)?.date_naive(),
    };
    i32::try_from(date.signed_duration_since(NaiveDate::default()).num_days()).ok()
}

/// Rows being gathered into one arrow batch.
pub(super) struct BatchBuilder<'c> {
    converter: &'c RowConverter,
    /// Finds the fields the columns read in each record's body.
    finder: FieldFinder<'c>,
    builders: Vec<ColumnBuilder>,
    positions: Vec<Position>,
    /// The buffers of the last row, kept for the next one.
    spare: Row<'static>,
}

/// One record's conversion: the values of the fields the columns read, the row's cells and the
/// record's new fields. A batch reuses one row's buffers for the next, so that a row allocates
/// nothing of its own.
#[derive(Default)]
struct Row<'a> {
    values: Vec<Option<Input<'a>>>,
    cells: Vec<Cell<'a>>,
    extras: Vec<String>,
}

impl Row<'_> {
    /// The same buffers, emptied, for a record that lives for `'b`.
    fn reuse<'b>(self) -> Row<'b> {
        let mut extras = self.extras;
        extras.clear();
        Row {
            values: emptied(self.values),
            cells: emptied(self.cells),
            extras,
        }
    }
}

/// `spare`'s allocation as an empty vector of another element type: collected in place from an
/// iterator that yields nothing, which keeps the allocation when the two types have one layout
/// (here they differ only in a lifetime).
fn emptied<A, B>(mut spare: Vec<A>) -> Vec<B> {
    spare.clear();
    spare.into_iter().filter_map(|_| None).collect()
}

impl BatchBuilder<'_> {
    /// Adds `record` as a row, or returns why it is refused (the batch is then unchanged). A
    /// record with new fields is added without them, refused, or left out for the table to
    /// evolve first, as configured.
    pub(super) fn push(
        &mut self,
        record: &Event,
        ingestion_time: i64,
    ) -> Result<Pushed, (RefusalKind, String)> {
        self.push_with(record, ingestion_time, true)
    }

    /// Adds `record` as a row without its new fields, whatever the configuration says of them
    /// (for a record whose new fields an evolution could give no type).
    pub(super) fn push_without_new(
        &mut self,
        record: &Event,
        ingestion_time: i64,
    ) -> Result<Pushed, (RefusalKind, String)> {
        self.push_with(record, ingestion_time, false)
    }

    /// [`BatchBuilder::push`] (`as_configured`) or [`BatchBuilder::push_without_new`], with the
    /// buffers the last row left.
    fn push_with(
        &mut self,
        record: &Event,
        ingestion_time: i64,
        as_configured: bool,
    ) -> Result<Pushed, (RefusalKind, String)> {
        let mut row = std::mem::take(&mut self.spare).reuse();
        let pushed = self.push_row(record, ingestion_time, as_configured, &mut row);
        self.spare = row.reuse();
        pushed
    }

    /// [`BatchBuilder::push_with`] with the buffers of `row`.
    fn push_row<'a>(
        &mut self,
        record: &'a Event,
        ingestion_time: i64,
        as_configured: bool,
        row: &mut Row<'a>,
    ) -> Result<Pushed, (RefusalKind, String)> {
        self.converter
            .cells(record, ingestion_time, &mut self.finder, row)?;
        let extras = &mut row.extras;
        let pushed = match (
            extras.is_empty(),
            as_configured,
            self.converter.schema_mode,
            self.converter.extra_fields,
        ) {
            (true, _, _, _) => Pushed::Row,
            (false, false, _, _) => Pushed::Ignored,
            (false, true, SchemaMode::Evolve, _) => {
                extras.dedup();
                return Ok(Pushed::Evolve(std::mem::take(extras)));
            }
            (false, true, SchemaMode::Fixed, ExtraFields::Refuse) => {
                let names: Vec<String> = extras.iter().map(|n| format!("`{n}`")).collect();
                return Err((
                    RefusalKind::Schema,
                    format!(
                        "the record has fields the table has no column for: {} (`extra_fields = \"refuse\"`)",
                        names.join(", ")
                    ),
                ));
            }
            (false, true, SchemaMode::Fixed, ExtraFields::Ignore) => Pushed::Ignored,
        };
        for (builder, cell) in self.builders.iter_mut().zip(row.cells.drain(..)) {
            builder.append(cell);
        }
        self.positions.push(record.position);
        Ok(pushed)
    }

    /// Number of rows so far.
    pub(super) fn len(&self) -> usize {
        self.positions.len()
    }

    /// The batch and the position of each row.
    pub(super) fn finish(self) -> Result<(RecordBatch, Vec<Position>), String> {
        let arrays: Vec<ArrayRef> = self
            .builders
            .into_iter()
            .map(ColumnBuilder::finish)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("cannot assemble an arrow batch: {e}"))?;
        let batch = RecordBatch::try_new(Arc::clone(&self.converter.schema), arrays)
            .map_err(|e| format!("cannot assemble an arrow batch: {e}"))?;
        Ok((batch, self.positions))
    }
}

enum ColumnBuilder {
    Text(StringBuilder),
    Long(Int64Builder),
    Integer(Int32Builder),
    Double(Float64Builder),
    Boolean(BooleanBuilder),
    Micros(TimestampMicrosecondBuilder),
    Days(Date32Builder),
    /// Every other type: cells kept until the batch is assembled by [`nested::build_array`].
    Cells(Vec<Cell<'static>>, ArrowType),
}

impl ColumnBuilder {
    fn new(data_type: &ColumnType, arrow_type: &ArrowType, capacity: usize) -> Self {
        match data_type {
            ColumnType::String => {
                ColumnBuilder::Text(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            ColumnType::Long => ColumnBuilder::Long(Int64Builder::with_capacity(capacity)),
            ColumnType::Integer => ColumnBuilder::Integer(Int32Builder::with_capacity(capacity)),
            ColumnType::Double => ColumnBuilder::Double(Float64Builder::with_capacity(capacity)),
            ColumnType::Boolean => ColumnBuilder::Boolean(BooleanBuilder::with_capacity(capacity)),
            // The table's type carries the time zone ("UTC").
            ColumnType::Timestamp => ColumnBuilder::Micros(
                TimestampMicrosecondBuilder::with_capacity(capacity)
                    .with_data_type(arrow_type.clone()),
            ),
            ColumnType::Date => ColumnBuilder::Days(Date32Builder::with_capacity(capacity)),
            _ => ColumnBuilder::Cells(Vec::with_capacity(capacity), arrow_type.clone()),
        }
    }

    /// Appends a cell; cells come from [`convert`] for this column's type, so any other kind of
    /// cell can only be `Null`.
    fn append(&mut self, cell: Cell<'_>) {
        match (self, cell) {
            (ColumnBuilder::Text(b), Cell::Text(v)) => b.append_value(v),
            (ColumnBuilder::Long(b), Cell::Long(v)) => b.append_value(v),
            (ColumnBuilder::Integer(b), Cell::Integer(v)) => b.append_value(v),
            (ColumnBuilder::Double(b), Cell::Double(v)) => b.append_value(v),
            (ColumnBuilder::Boolean(b), Cell::Boolean(v)) => b.append_value(v),
            (ColumnBuilder::Micros(b), Cell::Micros(v)) => b.append_value(v),
            (ColumnBuilder::Days(b), Cell::Days(v)) => b.append_value(v),
            (ColumnBuilder::Cells(cells, _), cell) => cells.push(cell.into_owned()),
            (ColumnBuilder::Text(b), _) => b.append_null(),
            (ColumnBuilder::Long(b), _) => b.append_null(),
            (ColumnBuilder::Integer(b), _) => b.append_null(),
            (ColumnBuilder::Double(b), _) => b.append_null(),
            (ColumnBuilder::Boolean(b), _) => b.append_null(),
            (ColumnBuilder::Micros(b), _) => b.append_null(),
            (ColumnBuilder::Days(b), _) => b.append_null(),
        }
    }

    fn finish(self) -> Result<ArrayRef, String> {
        Ok(match self {
            ColumnBuilder::Text(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Long(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Integer(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Double(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Boolean(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Micros(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Days(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Cells(cells, data_type) => nested::build_array(&data_type, cells)?,
        })
    }
}

/// A JSON value found at a top-level field, borrowed from the body where it can be.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Json<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(Cow<'a, str>),
    Array,
    Object,
}

impl fmt::Display for Json<'_> {
    /// The value as a reason shows it: JSON text, strings shortened, containers named.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Int(n) => write!(f, "{n}"),
            Json::UInt(n) => write!(f, "{n}"),
            Json::Float(n) => write!(f, "{}", serde_json::Value::from(*n)),
            Json::Text(text) => {
                const LIMIT: usize = 64;
                let shown: Cow<'_, str> = if text.chars().count() > LIMIT {
                    Cow::Owned(format!("{}…", text.chars().take(LIMIT).collect::<String>()))
                } else {
                    Cow::Borrowed(text)
                };
                write!(f, "{}", serde_json::Value::String(shown.into_owned()))
            }
            Json::Array => f.write_str("an array"),
            Json::Object => f.write_str("an object"),
        }
    }
}

/// [`extract_fields_and_extras`] by one fast pass ([`scan`]) into `values` (one `None` per field
/// before) and `extras` (empty before), with the same answer; `false` when the body is left to
/// serde_json (an escape in a string, a number out of range, malformed JSON), whose answer or
/// error then counts.
fn scan_fields_and_extras<'a>(
    body: &'a [u8],
    finder: &mut FieldFinder<'_>,
    values: &mut [Option<Input<'a>>],
    extras: &mut Vec<String>,
) -> bool {
    finder.object();
    let mut numbers_read = true;
    let plain = scan::members(body, |key, value| {
        let value = match value {
            Scanned::Text(text) => Json::Text(Cow::Borrowed(text)),
            // serde_json reads the number (integer or not, its range) exactly as in a body; the
            // common short forms are read here the same way without a deserializer.
            Scanned::Number(text) => match plain_number(text) {
                Some(number) => number,
                None => match serde_json::from_slice::<Json<'_>>(text) {
                    Ok(number) => number,
                    Err(_) => {
                        numbers_read = false;
                        Json::Null
                    }
                },
            },
            Scanned::Bool(b) => Json::Bool(b),
            Scanned::Null => Json::Null,
            Scanned::Array => Json::Array,
            Scanned::Object => Json::Object,
        };
        match finder.find(key) {
            Some(index) => {
                if let Some(slot) = values.get_mut(index) {
                    *slot = Some(Input::Json(value));
                }
            }
            None if value != Json::Null => extras.push(key.to_owned()),
            None => {}
        }
    });
    plain && numbers_read
}

/// Powers of ten that an `f64` holds exactly.
const EXACT_POWERS_OF_TEN: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// A number the scanner found (JSON grammar already checked), read as serde_json reads it, for
/// the plain forms only: an optional minus, at most 15 digits, an optional fraction, no exponent.
/// An integer is `UInt` (`Int` when negative); a fraction is its digits divided by a power of
/// ten, both exact in an `f64`, so the one division rounds correctly, which is what serde_json's
/// own reading gives for them. `None` (serde_json decides) for anything else, `-0` included
/// (serde_json reads it as a float).
fn plain_number(text: &[u8]) -> Option<Json<'static>> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    let mut significand: u64 = 0;
    let mut count = 0usize;
    let mut fraction_digits: Option<usize> = None;
    for &byte in digits {
        match byte {
            b'0'..=b'9' => {
                count += 1;
                if count > 15 {
                    return None;
                }
                significand = significand * 10 + u64::from(byte - b'0');
                if let Some(after_point) = fraction_digits.as_mut() {
                    *after_point += 1;
                }
            }
            b'.' if fraction_digits.is_none() => fraction_digits = Some(0),
            _ => return None,
        }
    }
    if count == 0 {
        return None;
    }
    match fraction_digits {
        None if !negative => Some(Json::UInt(significand)),
        None if significand == 0 => None,
        // At most 15 digits: within the i64 range.
        None => Some(Json::Int(-(significand as i64))),
        Some(after_point) => {
            let magnitude = significand as f64 / *EXACT_POWERS_OF_TEN.get(after_point)?;
            Some(Json::Float(if negative { -magnitude } else { magnitude }))
        }
    }
}

/// The values of the top-level `fields` of the JSON object `body` (`None` where absent), or why
/// `body` is not one well-formed JSON object.
#[allow(clippy::type_complexity)]
pub(super) fn extract_fields_and_extras<'a>(
    body: &'a [u8],
    fields: &[String],
) -> Result<(Vec<Option<Json<'a>>>, Vec<String>), String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let values = FieldsSeed { fields }
        .deserialize(&mut deserializer)
        .map_err(|e| format!("malformed JSON: {e}"))?;
    deserializer
        .end()
        .map_err(|e| format!("malformed JSON: {e}"))?;
    Ok(values)
}

struct FieldsSeed<'f> {
    fields: &'f [String],
}

impl<'de> DeserializeSeed<'de> for FieldsSeed<'_> {
    type Value = (Vec<Option<Json<'de>>>, Vec<String>);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed<'_> {
    type Value = (Vec<Option<Json<'de>>>, Vec<String>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = vec![None; self.fields.len()];
        let mut extras = Vec::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match self.fields.iter().position(|f| *f == key) {
                Some(index) => values[index] = Some(map.next_value::<Json<'de>>()?),
                // Containers are skipped inside `Json`'s own visitor.
                None => {
                    if map.next_value::<Json<'de>>()? != Json::Null {
                        extras.push(key.into_owned());
                    }
                }
            }
        }
        Ok((values, extras))
    }
}

/// An object key, borrowed unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> de::Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct JsonVisitor;
        impl<'de> Visitor<'de> for JsonVisitor {
            type Value = Json<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Json::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Json::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Json::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Json::UInt(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Json::Float(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Json::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Json::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Json::Text(Cow::Owned(v)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Json::Array)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Json::Object)
            }
        }
        deserializer.deserialize_any(JsonVisitor)
    }
}

#[cfg(test)]
mod scan_tests {
    use super::*;

    /// The fast pass's answer as a value: the fields' values and the extras, or `None` when it
    /// leaves the body to serde_json.
    #[allow(clippy::type_complexity)]
    fn fast<'a>(body: &'a [u8], fields: &[String]) -> Option<(Vec<Option<Json<'a>>>, Vec<String>)> {
        let mut values = vec![None; fields.len()];
        let mut extras = Vec::new();
        scan_fields_and_extras(
            body,
            &mut FieldFinder::new(fields),
            &mut values,
            &mut extras,
        )
        .then(|| {
            let values = values
                .into_iter()
                .map(|v| v.map(Input::into_json))
                .collect();
            (values, extras)
        })
    }

    #[test]
    fn a_rows_buffers_are_reused_for_the_next_row() {
        let mut row: Row<'static> = Row::default();
        row.cells.reserve(12);
        row.values.reserve(12);
        let (cells, values) = (row.cells.as_ptr(), row.values.as_ptr());
        let body = br#"{"a":1}"#.to_vec();
        let mut next = row.reuse();
        next.cells.push(Cell::Text(Cow::Borrowed(
            std::str::from_utf8(&body).expect("text"),
        )));
        let again: Row<'static> = next.reuse();
        assert!(again.cells.is_empty() && again.cells.capacity() >= 12);
        assert_eq!(again.cells.as_ptr(), cells);
        assert_eq!(again.values.as_ptr(), values);
    }

    proptest::proptest! {
        /// Whatever the fast pass answers, serde_json answers the same (fields, extras, order).
        #[test]
        fn the_fast_pass_reads_fields_and_extras_as_serde_json_does(
            body in r#"\{("[a-d]{1,2}":([0-9.eE+\-]{1,6}|"[a-c\\]{0,3}"|null|true|\[[0-9,]{0,5}\]|\{\}),?){0,5}\}"#,
        ) {
            let fields = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
            if let Some(fast) = fast(body.as_bytes(), &fields) {
                let slow = extract_fields_and_extras(body.as_bytes(), &fields);
                proptest::prop_assert_eq!(Ok(fast), slow);
            }
        }
    }

    proptest::proptest! {
        /// The plain numbers read without a deserializer are read as serde_json reads them.
        #[test]
        fn plain_numbers_are_read_as_serde_json_reads_them(
            text in r"-?(0|[1-9][0-9]{0,16})(\.[0-9]{1,17})?",
        ) {
            let slow = serde_json::from_slice::<Json<'_>>(text.as_bytes()).ok();
            if let Some(fast) = plain_number(text.as_bytes()) {
                proptest::prop_assert_eq!(Some(fast), slow);
            }
        }
    }

    #[test]
    fn plain_numbers_cover_the_telemetry_forms_and_leave_the_rest() {
        for text in [
            "21.5",
            "-3.25",
            "45",
            "-7",
            "0",
            "0.1",
            "1013.25",
            "99.999999",
        ] {
            let fast = plain_number(text.as_bytes());
            assert!(fast.is_some(), "{text}");
            assert_eq!(
                fast,
                serde_json::from_slice::<Json<'_>>(text.as_bytes()).ok()
            );
        }
        for text in [
            "-0",
            "1e5",
            "1.5E-3",
            "1234567890123456",
            "0.1234567890123456",
        ] {
            assert_eq!(plain_number(text.as_bytes()), None, "{text}");
        }
    }

    #[test]
    fn the_fast_pass_reads_a_telemetry_event() {
        let body = br#"{"DeviceId":"device-1","Temperature":21.5,"Humidity":45,"Big":1e400,"Extra":{"x":1}}"#;
        let fields = vec!["DeviceId".to_owned(), "Humidity".to_owned()];
        // A number out of range is serde_json's to refuse.
        assert_eq!(fast(body, &fields), None);
        assert!(extract_fields_and_extras(body, &fields).is_err());
        let body = br#"{"DeviceId":"device-1","Temperature":21.5,"Humidity":45,"Gone":null}"#;
        let (values, extras) = fast(body, &fields).expect("plain");
        assert_eq!(
            values,
            [
                Some(Json::Text(Cow::Borrowed("device-1"))),
                Some(Json::UInt(45))
            ]
        );
        assert_eq!(extras, ["Temperature"]);
    }
}
