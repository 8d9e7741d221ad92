//! JSON Lines files: a file replayed (or followed) as a source, and one file per pipeline
//! partition as an exactly-once sink.

pub mod config;
pub mod sink;
pub mod source;

/// Whether an I/O failure on a configured path is the configuration's (a path that is not there,
/// or that weir may not read or write) rather than the storage's.
fn misconfigured(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
    )
}
