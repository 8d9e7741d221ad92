//! Watching the plugins directory: a stage's plugin file that changes is loaded as a new version.
//!
//! The watcher polls each stage's plugin file (its size, modification time and inode) every
//! `poll` interval; polling works the same on every file system, including network mounts and
//! container volumes where change notifications are unreliable, and costs one `stat` per file.
//! A change is acted on only once the file has stayed the same for `settle`, so a file being
//! written is not read half way; the best way to install a version is still to write it under
//! another name in the same directory and rename it into place (atomic). Should a pause in a
//! slow writer make the watcher read a partial file anyway, the partial component fails to
//! compile or to validate and is refused with the reason, the running version keeps running,
//! and the completed file is picked up when it settles.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::registry::PluginRegistry;
use super::slot::{Offered, VersionOrigin};

/// What identifies a file's content cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

pub(crate) fn fingerprint(path: &std::path::Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Fingerprint {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

#[derive(Debug)]
struct Watched {
    /// The content last acted on (or present at start).
    handled: Option<Fingerprint>,
    /// The content seen at the last poll, and since when.
    seen: Option<(Fingerprint, Instant)>,
}

/// Polls the registry's plugin files until the task is aborted; each settled change is offered to
/// the slots of that file as a new version.
pub async fn watch(registry: PluginRegistry, poll: Duration, settle: Duration) {
    let mut files: HashMap<PathBuf, Watched> = HashMap::new();
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for path in registry.files() {
            let now = Instant::now();
            let current = fingerprint(&path);
            let watched = files.entry(path.clone()).or_insert_with(|| Watched {
                // What the slots loaded: the file as it was just before it was read at start
                // (it may have been replaced since, before this first look).
                handled: registry.fingerprint_at_load(&path).unwrap_or(current),
                seen: None,
            });
            let Some(current) = current else {
                continue; // Removed or being replaced: wait for it to come back.
            };
            if watched.handled == Some(current) {
                watched.seen = None;
                continue;
            }
            match watched.seen {
                Some((seen, since)) if seen == current => {
                    if now.duration_since(since) < settle {
                        continue;
                    }
                }
                _ => {
                    watched.seen = Some((current, now));
                    continue;
                }
            }
            watched.handled = Some(current);
            watched.seen = None;
            let slots = registry.by_file(&path);
            let read_path = path.clone();
            let outcome = super::loading::run_load(move || {
                let bytes = std::fs::read(&read_path)?;
                let mut results = Vec::new();
                for slot in slots {
                    let result = slot.offer(bytes.clone(), VersionOrigin::File);
                    results.push((slot.pipeline().to_owned(), slot.stage().to_owned(), result));
                }
                Ok::<_, std::io::Error>(results)
            })
            .await;
            match outcome {
                Ok(Ok(results)) => {
                    for (pipeline, stage, result) in results {
                        match result {
                            Ok(Offered::Activated { version }) => tracing::info!(
                                pipeline = %pipeline, stage = %stage, version = %version.version,
                                file = %path.display(), "new plugin file loaded"
                            ),
                            Ok(Offered::AlreadyActive { .. }) => {}
                            // The slot has logged the refusal with its reason.
                            Err(_) => {}
                        }
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read the changed plugin file")
                }
                Err(e) => tracing::error!(error = %e, "plugin loading task failed"),
            }
        }
    }
}
