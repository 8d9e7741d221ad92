//! Where new plugin versions are loaded: a thread of their own, at a lower scheduling priority
//! than the partition workers.
//!
//! Loading a version (compiling it, validating it, making an instance ready for each worker and
//! rehearsing it on a recent batch) takes a core for about half a second. On a machine with as
//! many busy workers as cores, that thread competes with them; at the default priority the
//! kernel gave it whole time slices, and a worker's batch then waited several milliseconds. At
//! nice 10 a worker that wakes takes the core back at once, and the load still gets the cores
//! the workers leave idle. Loads are rare, so a thread per load costs nothing that matters, and
//! its lowered priority dies with it (a pooled thread would keep it for unrelated work).

use std::thread::JoinHandle;

/// Why a load could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum LoadThreadError {
    /// No thread could be started.
    #[error("cannot start a plugin loading thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The load panicked.
    #[error("the plugin loading thread panicked")]
    Panicked,
}

/// How much lower than the workers a loading thread runs (a nice value, on Linux).
const LOAD_NICENESS: i32 = 10;

/// Starts `load` on a thread of its own at a lower priority.
pub fn spawn_load<T: Send + 'static>(
    load: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, LoadThreadError> {
    std::thread::Builder::new()
        .name("weir-plugin-load".into())
        .spawn(move || {
            lower_this_thread();
            load()
        })
        .map_err(LoadThreadError::Spawn)
}

/// Runs `load` on a thread of its own at a lower priority, and waits for it without holding up
/// the async runtime.
pub async fn run_load<T: Send + 'static>(
    load: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LoadThreadError> {
    let (done, result) = tokio::sync::oneshot::channel();
    spawn_load(move || {
        // The receiver is gone only when the caller stopped waiting; the result is not needed.
        let _ = done.send(load());
    })?;
    result.await.map_err(|_| LoadThreadError::Panicked)
}

#[cfg(target_os = "linux")]
fn lower_this_thread() {
    // On Linux the nice value belongs to the thread, so this lowers this thread only.
    if let Err(error) = rustix::process::nice(LOAD_NICENESS) {
        tracing::debug!(%error, "cannot lower the plugin loading thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_thread() {
    // Elsewhere nice() applies to the whole process: the load runs at the workers' priority.
    let _ = LOAD_NICENESS;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_load_returns_its_result_and_a_panicking_one_an_error() {
        let value = run_load(|| 6 * 7).await.expect("the load ran");
        assert_eq!(value, 42);
        let panicked = run_load(|| -> u32 { panic!("a load that fails") }).await;
        assert!(matches!(panicked, Err(LoadThreadError::Panicked)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_load_runs_at_a_lower_priority_than_its_caller() {
        let caller = rustix::process::nice(0).expect("read own nice value");
        let load = spawn_load(|| rustix::process::nice(0).expect("read nice value"))
            .expect("spawn")
            .join()
            .expect("join");
        assert_eq!(load, (caller + LOAD_NICENESS).min(19));
        assert_eq!(
            rustix::process::nice(0).expect("read own nice value"),
            caller,
            "the caller's priority is unchanged"
        );
    }
}
