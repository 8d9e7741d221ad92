//! Frees replaced plugin instances away from the partition workers (and does the little other
//! work they must not wait for, in order, on the same thread).
//!
//! Dropping an instance unmaps its linear memory and sandbox, which takes the kernel a while
//! (page freeing, TLB shootdowns on the other cores). At a hot swap that would land in the first
//! batch on the new version; handing the instance to one background thread keeps it off the
//! worker's path.

use std::sync::OnceLock;
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

/// Something to do later (drop a value, or write a record), and when at the earliest.
type Job = (Option<Instant>, Box<dyn FnOnce() + Send>);

/// How long a replaced instance waits before it is freed: unmapping its memory interrupts the
/// other cores (TLB shootdown), and right after a swap one of them runs the new version's first
/// batch.
const FREE_AFTER: Duration = Duration::from_millis(20);

/// The background thread's inbox (none when the thread could not be started).
static JOBS: OnceLock<Option<Sender<Job>>> = OnceLock::new();

/// Drops `value` on the background thread, or here when that thread is not running.
pub fn retire<T: Send + 'static>(value: T) {
    send((
        Some(Instant::now() + FREE_AFTER),
        Box::new(move || drop(value)),
    ));
}

/// Runs `job` on the background thread, after the jobs handed over before it (or here when that
/// thread is not running). For work a partition worker must not wait for.
pub fn later(job: impl FnOnce() + Send + 'static) {
    send((None, Box::new(job)));
}

fn send(job: Job) {
    let inbox = JOBS.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("weir-retire".to_owned())
            .spawn(move || {
                for (not_before, job) in receiver {
                    if let Some(wait) = not_before.and_then(|t| t.checked_duration_since(Instant::now())) {
                        std::thread::sleep(wait);
                    }
                    job();
                }
            });
        match spawned {
            Ok(_) => Some(sender),
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the background thread: replaced plugin instances are freed by their workers");
                None
            }
        }
    });
    match inbox {
        // A send fails only when the thread is gone; the job then comes back: run it here.
        Some(sender) => {
            if let Err(returned) = sender.send(job) {
                (returned.0.1)();
            }
        }
        None => (job.1)(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn retired_values_are_dropped_on_another_thread() {
        struct Witness(Arc<std::sync::Mutex<Option<std::thread::ThreadId>>>);
        impl Drop for Witness {
            fn drop(&mut self) {
                if let Ok(mut dropped_on) = self.0.lock() {
                    *dropped_on = Some(std::thread::current().id());
                }
            }
        }
        let dropped_on = Arc::new(std::sync::Mutex::new(None));
        retire(Witness(dropped_on.clone()));
        let started = Instant::now();
        let thread = loop {
            if let Some(thread) = *dropped_on.lock().expect("lock") {
                break thread;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "never dropped");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_ne!(thread, std::thread::current().id());
    }
}
