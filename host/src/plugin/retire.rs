//! Frees replaced plugin instances away from the partition workers.
//!
//! Dropping an instance unmaps its linear memory and sandbox, which takes the kernel a while
//! (page freeing, TLB shootdowns on the other cores). At a hot swap that would land in the first
//! batch on the new version; handing the instance to one background thread keeps it off the
//! worker's path.

use std::sync::OnceLock;
use std::sync::mpsc::{self, Sender};

/// Something to drop later.
type Retired = Box<dyn Send>;

/// The background thread's inbox (none when the thread could not be started).
static RETIRED: OnceLock<Option<Sender<Retired>>> = OnceLock::new();

/// Drops `value` on the background thread, or here when that thread is not running.
pub fn retire<T: Send + 'static>(value: T) {
    let inbox = RETIRED.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Retired>();
        let spawned = std::thread::Builder::new()
            .name("weir-retire".to_owned())
            .spawn(move || {
                // Each received value is dropped at the end of its iteration.
                for retired in receiver {
                    drop(retired);
                }
            });
        match spawned {
            Ok(_) => Some(sender),
            Err(err) => {
                tracing::warn!(error = %err, "cannot start the instance-freeing thread: replaced plugin instances are freed by their workers");
                None
            }
        }
    });
    let value: Retired = Box::new(value);
    if let Some(sender) = inbox {
        // A send fails only when the thread is gone; the value then comes back and drops here.
        let _ = sender.send(value);
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
