//! Reading a local Delta table as reference rows: the current version's data files, read with the
//! Parquet reader, each row as a JSON object. Partition columns come from the files' Hive-style
//! directories (`column=value`), as text.

use std::path::{Path, PathBuf};

use deltalake::arrow::json::ArrayWriter;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Every row of the Delta table at `path` as a JSON object; blocking (it runs its own small
/// runtime to open the table).
pub(super) fn rows_as_json(path: &Path) -> Result<Vec<String>, String> {
    let files = data_files(path)?;
    let mut rows = Vec::new();
    for file in files {
        let partition_values = partition_values(path, &file);
        let reader = std::fs::File::open(&file)
            .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
        let batches = ParquetRecordBatchReaderBuilder::try_new(reader)
            .and_then(|builder| builder.build())
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let mut writer = ArrayWriter::new(Vec::new());
        for batch in batches {
            let batch = batch.map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            writer
                .write(&batch)
                .map_err(|e| format!("cannot convert {}: {e}", file.display()))?;
        }
        writer
            .finish()
            .map_err(|e| format!("cannot convert {}: {e}", file.display()))?;
        let bytes = writer.into_inner();
        if bytes.is_empty() {
            continue;
        }
        let objects: Vec<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_slice(&bytes).map_err(|e| format!("cannot convert rows: {e}"))?;
        for mut object in objects {
            for (column, value) in &partition_values {
                object.insert(column.clone(), serde_json::Value::String(value.clone()));
            }
            rows.push(serde_json::Value::Object(object).to_string());
        }
    }
    Ok(rows)
}

/// The data files of the table's current version.
fn data_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    let location =
        std::fs::canonicalize(path).map_err(|e| format!("cannot open the table directory: {e}"))?;
    let url = deltalake::ensure_table_uri(location.to_string_lossy())
        .map_err(|e| format!("not a table location: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime to read the table: {e}"))?;
    let table = std::thread::scope(|scope| {
        scope
            .spawn(|| runtime.block_on(deltalake::open_table(url)))
            .join()
            .map_err(|_| "the table reader panicked".to_owned())
    })?
    .map_err(|e| format!("cannot open the Delta table: {e}"))?;
    let uris = table
        .get_file_uris()
        .map_err(|e| format!("cannot list the table's files: {e}"))?;
    uris.map(|uri| {
        let local = uri.strip_prefix("file://").unwrap_or(&uri);
        Ok(PathBuf::from(percent_decode(local)))
    })
    .collect()
}

/// `column=value` directories between the table's root and `file`.
fn partition_values(root: &Path, file: &Path) -> Vec<(String, String)> {
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let Ok(relative) = file.strip_prefix(&root) else {
        return Vec::new();
    };
    relative
        .parent()
        .into_iter()
        .flat_map(Path::components)
        .filter_map(|c| c.as_os_str().to_str())
        .filter_map(|segment| segment.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
