//! Opening the table: created with the configured schema when absent, checked against it when
//! present.

use deltalake::DeltaTable;
use deltalake::arrow::datatypes::SchemaRef;
use deltalake::kernel::{ArrayType, DataType, MapType, StructField, StructType};
use deltalake::protocol::SaveMode;
use deltalake::writer::RecordBatchWriter;

use std::borrow::Cow;

use super::json_tree::Node;
use super::location::Location;
use super::nested;
use crate::config::{ColumnType, DeltaColumn, DeltaSinkConfig};
use crate::connectors::delta::config::{SchemaMode, StructMember};
use crate::sink::SinkErrorKind;

/// The Delta type of a configured column type.
pub(super) fn delta_type(data_type: &ColumnType) -> Result<DataType, String> {
    Ok(match data_type {
        ColumnType::String => DataType::STRING,
        ColumnType::Long => DataType::LONG,
        ColumnType::Integer => DataType::INTEGER,
        ColumnType::Short => DataType::SHORT,
        ColumnType::Byte => DataType::BYTE,
        ColumnType::Double => DataType::DOUBLE,
        ColumnType::Float => DataType::FLOAT,
        ColumnType::Boolean => DataType::BOOLEAN,
        ColumnType::Binary => DataType::BINARY,
        ColumnType::Timestamp => DataType::TIMESTAMP,
        ColumnType::TimestampNtz => DataType::TIMESTAMP_NTZ,
        ColumnType::Date => DataType::DATE,
        ColumnType::Decimal { precision, scale } => {
            DataType::decimal(*precision, *scale).map_err(|e| format!("type {data_type}: {e}"))?
        }
        // Spark's DDL makes array elements and map values nullable.
        ColumnType::Array(element) => ArrayType::new(delta_type(element)?, true).into(),
        ColumnType::Map(key, value) => {
            MapType::new(delta_type(key)?, delta_type(value)?, true).into()
        }
        ColumnType::Struct(members) => {
            let fields = members
                .iter()
                .map(|m| {
                    Ok(StructField::new(
                        m.name.clone(),
                        delta_type(&m.data_type)?,
                        m.nullable,
                    ))
                })
                .collect::<Result<Vec<_>, String>>()?;
            StructType::try_new(fields)
                .map_err(|e| format!("type {data_type}: {e}"))?
                .into()
        }
    })
}

/// The configured column type of a Delta type (the reverse of [`delta_type`]), or why the sink
/// cannot write it.
pub(super) fn column_type(data_type: &DataType) -> Result<ColumnType, String> {
    use deltalake::kernel::PrimitiveType as P;
    Ok(match data_type {
        DataType::Primitive(primitive) => match primitive {
            P::String => ColumnType::String,
            P::Long => ColumnType::Long,
            P::Integer => ColumnType::Integer,
            P::Short => ColumnType::Short,
            P::Byte => ColumnType::Byte,
            P::Double => ColumnType::Double,
            P::Float => ColumnType::Float,
            P::Boolean => ColumnType::Boolean,
            P::Binary => ColumnType::Binary,
            P::Timestamp => ColumnType::Timestamp,
            P::TimestampNtz => ColumnType::TimestampNtz,
            P::Date => ColumnType::Date,
            P::Decimal(decimal) => ColumnType::Decimal {
                precision: decimal.precision(),
                scale: decimal.scale(),
            },
            other => return Err(format!("type {other} is not one the sink writes")),
        },
        DataType::Array(array) => ColumnType::Array(Box::new(column_type(array.element_type())?)),
        DataType::Map(map) => ColumnType::Map(
            Box::new(column_type(map.key_type())?),
            Box::new(column_type(map.value_type())?),
        ),
        DataType::Struct(fields) => ColumnType::Struct(
            fields
                .fields()
                .map(|f| {
                    Ok(StructMember {
                        name: f.name().clone(),
                        data_type: column_type(f.data_type())?,
                        nullable: f.is_nullable(),
                    })
                })
                .collect::<Result<_, String>>()?,
        ),
        other => return Err(format!("type {other} is not one the sink writes")),
    })
}

/// `config` with the columns (and, if not configured, the partitioning) of the existing table,
/// for a sink configured without `columns`; for `schema = "evolve"`, the configured columns
/// followed by those the table gained since (a table that does not exist yet is created as
/// configured).
pub(super) async fn columns_from_table(
    config: &DeltaSinkConfig,
    location: &Location,
) -> Result<DeltaSinkConfig, (SinkErrorKind, String)> {
    let unavailable = |reason: String| (SinkErrorKind::Unavailable, reason);
    let at = location.display();
    let mut table = location.table().await.map_err(unavailable)?;
    let exists = table
        .verify_deltatable_existence()
        .await
        .map_err(|e| unavailable(format!("cannot read the table at {at}: {e}")))?;
    let evolving = config.schema == SchemaMode::Evolve && !config.columns.is_empty();
    if !exists && evolving {
        return Ok(config.clone());
    }
    if !exists {
        return Err((
            SinkErrorKind::Misconfigured,
            format!(
                "no `columns` are configured and there is no table at {at} to take them from: list the columns so that the sink can create it"
            ),
        ));
    }
    table
        .load()
        .await
        .map_err(|e| unavailable(format!("cannot load the table at {at}: {e}")))?;
    let snapshot = table
        .snapshot()
        .map_err(|e| unavailable(format!("cannot read the table at {at}: {e}")))?;
    let mut resolved = config.clone();
    let table_columns: Vec<DeltaColumn> = snapshot
        .schema()
        .fields()
        .filter(|field| !config.columns.iter().any(|c| c.name == *field.name()))
        .map(|field| {
            let data_type = column_type(field.data_type()).map_err(|why| {
                (
                    SinkErrorKind::Misconfigured,
                    format!("column `{}` of the table at {at}: {why}", field.name()),
                )
            })?;
            Ok(DeltaColumn {
                name: field.name().clone(),
                data_type,
                from: None,
                value: None,
                derive: None,
                nullable: field.is_nullable(),
            })
        })
        .collect::<Result<_, _>>()?;
    resolved.columns.extend(table_columns);
    if evolving {
        take_extended_types(&mut resolved, snapshot.schema().fields());
    }
    if resolved.partition_by.is_empty() && !evolving {
        resolved.partition_by = snapshot.metadata().partition_columns().to_vec();
    }
    Ok(resolved)
}

/// `config` followed by the columns of `table` it does not list, each filled from the field of
/// its name.
pub(super) fn with_table_columns(
    config: &DeltaSinkConfig,
    table: &DeltaTable,
) -> Result<DeltaSinkConfig, String> {
    let snapshot = table
        .snapshot()
        .map_err(|e| format!("cannot read the table's schema: {e}"))?;
    let mut resolved = config.clone();
    take_extended_types(&mut resolved, snapshot.schema().fields());
    for field in snapshot.schema().fields() {
        if config.columns.iter().any(|c| c.name == *field.name()) {
            continue;
        }
        resolved.columns.push(DeltaColumn {
            name: field.name().clone(),
            data_type: column_type(field.data_type())
                .map_err(|why| format!("column `{}`: {why}", field.name()))?,
            from: None,
            value: None,
            derive: None,
            nullable: field.is_nullable(),
        });
    }
    Ok(resolved)
}

/// Gives each column of `config` whose struct type the table's column of its name extends with
/// nested fields (added by an evolution) the table's type.
fn take_extended_types<'f>(
    config: &mut DeltaSinkConfig,
    fields: impl Iterator<Item = &'f StructField>,
) {
    for field in fields {
        let Some(column) = config.columns.iter_mut().find(|c| c.name == *field.name()) else {
            continue;
        };
        if let Ok(table_type) = column_type(field.data_type())
            && table_type != column.data_type
            && nested::extends(&table_type, &column.data_type)
        {
            column.data_type = table_type;
        }
    }
}

/// What a metadata commit adds to the table of `config` for a record with the top-level
/// `members`: its new non-null top-level fields as nullable columns, and the columns whose
/// struct types gain its new nested members (the whole column with the members added, which
/// Delta merges into the table's schema). Also the added paths with their types, for the log.
pub(super) fn evolution(
    config: &DeltaSinkConfig,
    members: &[(Cow<'_, str>, Node<'_>)],
) -> Result<(Vec<StructField>, Vec<String>), String> {
    let mut fields: Vec<StructField> = Vec::new();
    let mut added = Vec::new();
    for column in config.columns.iter().filter(|c| c.value.is_none()) {
        let from = column.from.as_deref().unwrap_or(&column.name);
        let Some(node) = Node::member(members, from) else {
            continue;
        };
        let mut paths = Vec::new();
        nested::new_members(&column.data_type, node, &mut from.to_owned(), &mut paths);
        if paths.is_empty() {
            continue;
        }
        let merged = nested::with_new_members(&column.data_type, node);
        fields.push(StructField::new(
            column.name.clone(),
            delta_type(&merged)?,
            column.nullable,
        ));
        added.extend(paths);
    }
    let known = |name: &str| {
        config.columns.iter().any(|c| {
            c.name.eq_ignore_ascii_case(name)
                || c.value.is_none() && c.from.as_deref().is_some_and(|f| f == name)
        })
    };
    for (name, value) in members {
        if known(name) || fields.iter().any(|f| f.name().eq_ignore_ascii_case(name)) {
            continue;
        }
        let Some(data_type) = nested::infer_type(value) else {
            continue;
        };
        added.push(format!("{name}: {data_type}"));
        fields.push(StructField::new(
            name.clone().into_owned(),
            delta_type(&data_type)?,
            true,
        ));
    }
    Ok((fields, added))
}

/// Opens the table at `location`, creating it if absent; returns it loaded, with its arrow schema.
/// An existing table whose columns differ from the configured ones is `Misconfigured`; every
/// other failure is the storage's (`Unavailable`).
pub(super) async fn open_or_create(
    name: &str,
    config: &DeltaSinkConfig,
    location: &Location,
) -> Result<(DeltaTable, SchemaRef), (SinkErrorKind, String)> {
    let unavailable = |reason: String| (SinkErrorKind::Unavailable, reason);
    let at = location.display();
    let mut table = location.table().await.map_err(unavailable)?;
    let exists = table
        .verify_deltatable_existence()
        .await
        .map_err(|e| unavailable(format!("cannot read the table at {at}: {e}")))?;
    if !exists {
        let columns = config
            .columns
            .iter()
            .map(|c| {
                Ok(StructField::new(
                    c.name.clone(),
                    delta_type(&c.data_type)?,
                    c.nullable,
                ))
            })
            .collect::<Result<Vec<StructField>, String>>()
            .map_err(|e| (SinkErrorKind::Misconfigured, e))?;
        // `Ignore`: a table another process created meanwhile is kept, and checked below.
        table = table
            .create()
            .with_table_name(name)
            .with_columns(columns)
            .with_partition_columns(config.partition_by.clone())
            .with_configuration(
                config
                    .table_properties
                    .iter()
                    .map(|(key, value)| (key.clone(), Some(value.clone()))),
            )
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(|e| unavailable(format!("cannot create the table at {at}: {e}")))?;
        if table.version() == Some(0) {
            location.sync_commit(0).await.map_err(unavailable)?;
            tracing::info!(sink = %name, table = %at, "created the Delta table");
        }
    }
    table
        .load()
        .await
        .map_err(|e| unavailable(format!("cannot load the table at {at}: {e}")))?;
    check_schema(config, &table).map_err(|difference| {
        (
            SinkErrorKind::Misconfigured,
            format!(
                "the existing table at {at} does not match the configured columns: {difference}"
            ),
        )
    })?;
    let unsupported = super::constraints::unsupported_features(&table).map_err(unavailable)?;
    if !unsupported.is_empty() {
        let named: Vec<String> = unsupported.iter().map(|f| format!("`{f}`")).collect();
        return Err((
            SinkErrorKind::Misconfigured,
            format!(
                "the table at {at} uses writer features this sink cannot append under: {}",
                named.join(", ")
            ),
        ));
    }
    let writer = RecordBatchWriter::for_table(&table)
        .map_err(|e| unavailable(format!("cannot write to the table at {at}: {e}")))?;
    Ok((table, writer.arrow_schema()))
}

/// Every difference between the table's schema and the configured columns, joined with `; `.
pub(super) fn check_schema(config: &DeltaSinkConfig, table: &DeltaTable) -> Result<(), String> {
    let snapshot = table
        .snapshot()
        .map_err(|e| format!("cannot read its schema: {e}"))?;
    let schema = snapshot.schema();
    let fields: Vec<&StructField> = schema.fields().collect();
    let mut differences = column_differences(config, &fields);
    let partitions = snapshot.metadata().partition_columns();
    if partitions != config.partition_by.as_slice() {
        let show = |names: &[String]| {
            format!(
                "[{}]",
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        differences.push(format!(
            "the table is partitioned by {} but the configuration has `partition_by = {}`",
            show(partitions),
            show(&config.partition_by)
        ));
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(differences.join("; "))
    }
}

/// The differences between the table's columns `fields` and the configured ones: missing, extra,
/// retyped, nullability, order.
fn column_differences(config: &DeltaSinkConfig, fields: &[&StructField]) -> Vec<String> {
    let list = |fields: &[&StructField]| {
        fields
            .iter()
            .map(|f| format!("`{}`", f.name()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut differences = Vec::new();
    for (index, column) in config.columns.iter().enumerate() {
        let Some(field) = fields.iter().find(|f| f.name() == &column.name) else {
            differences.push(match fields.get(index) {
                Some(field) => format!(
                    "the table has no column `{}` (column {} of the table is `{}`)",
                    column.name,
                    index + 1,
                    field.name()
                ),
                None => format!(
                    "the table has no column `{}` (its columns are {})",
                    column.name,
                    list(fields)
                ),
            });
            continue;
        };
        // Compared as column types: nested fields' metadata (comments, invariants) is not type.
        if column_type(field.data_type()).as_ref() != Ok(&column.data_type) {
            differences.push(format!(
                "column `{}` is {} in the table but {} in the configuration",
                column.name,
                field.data_type(),
                column.data_type
            ));
        }
        if !field.is_nullable() && column.nullable {
            differences.push(format!(
                "column `{}` is not nullable in the table but nullable in the configuration (set `nullable = false`)",
                column.name
            ));
        }
    }
    for field in fields {
        if !config.columns.iter().any(|c| c.name == *field.name()) {
            differences.push(format!(
                "the table has a column `{}` that the configuration does not list",
                field.name()
            ));
        }
    }
    let same_names = fields.len() == config.columns.len()
        && fields
            .iter()
            .all(|f| config.columns.iter().any(|c| c.name == *f.name()));
    if same_names
        && let Some((index, (field, column))) = fields
            .iter()
            .zip(&config.columns)
            .enumerate()
            .find(|(_, (f, c))| *f.name() != c.name)
    {
        differences.push(format!(
            "column {} is `{}` in the table but `{}` in the configuration (the columns are in a different order: {})",
            index + 1,
            field.name(),
            column.name,
            list(fields)
        ));
    }
    differences
}
