//! Instances of a new version made ready before the workers switch to it.
//!
//! A new instance's first batch costs more than a steady one: instantiation, then the first
//! touch of every page of linear memory the batch needs (about 0.6 ms for the anomaly rule on the
//! machines we measured). At a hot swap that would land in the first batch on the new version.
//! So when a slot activates a version from the watcher or the admin API, it first asks each of the
//! stage's [`Standby`]s (one per partition worker) to instantiate it and run it once on a recent
//! batch of that worker, on the loading thread (see `plugin::loading`). The worker takes the ready
//! instance at its next batch boundary and runs its first batch on warm memory.
//!
//! The rehearsal's output is thrown away. It runs on a throwaway copy of the worker's state
//! (taken with the sample batch when the state is small, else on empty state), and the instance's
//! state cache starts again at its first real call (the `check-cache` import), so nothing of it
//! can reach an output or the state.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::bindings::EventBatch;
use super::retire::retire;
use super::{InstanceSettings, KeyedState, Plugin, PluginInstance};

/// Something that makes instances of a version ready before the workers run it.
pub trait Prepare<P>: Send + Sync {
    /// Makes an instance of `plugin` ready (called off the hot path, before the activation).
    /// False when the version failed (it trapped or ran out of time on the rehearsal batch): the
    /// slot then asks no other worker to rehearse it, so that a version that loops costs the
    /// activation one call deadline, not one per partition.
    fn prepare(&self, plugin: &Arc<P>) -> bool;
}

/// How often a worker renews the batch its new instances rehearse on.
const SAMPLE_EVERY: Duration = Duration::from_secs(30);

/// Most keys, and bytes of keys and values, of a state the worker copies for the rehearsal.
const SAMPLE_STATE_KEYS: usize = 4_096;
const SAMPLE_STATE_BYTES: usize = 1 << 20;

/// One partition worker's ready instance of the next version, and the batch to rehearse on.
pub struct Standby {
    base: Arc<InstanceSettings>,
    sample: Mutex<Option<(EventBatch, KeyedState)>>,
    ready: Mutex<Option<PluginInstance>>,
}

impl std::fmt::Debug for Standby {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standby")
            .field("scope", &self.base.scope)
            .finish_non_exhaustive()
    }
}

/// When a worker last handed its standby a sample, to renew it now and then at little cost.
#[derive(Debug, Default)]
pub struct SampleClock {
    taken: Option<(Instant, usize)>,
}

impl SampleClock {
    /// Whether a batch of `events` events should become the new sample: the first batch, a
    /// larger one than the sample, or any once the sample is `SAMPLE_EVERY` (30 s) old.
    pub fn due(&mut self, events: usize) -> bool {
        let due = match self.taken {
            None => events > 0,
            Some((at, size)) => events > size || at.elapsed() >= SAMPLE_EVERY,
        };
        if due {
            self.taken = Some((Instant::now(), events));
        }
        due
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // What the mutexes guard is replaced whole: a panic elsewhere cannot leave it half-written.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Standby {
    /// A standby for a worker whose instances run with `base` (scope and limits; the plugin name
    /// and version are each version's).
    pub fn new(base: Arc<InstanceSettings>) -> Arc<Self> {
        Arc::new(Standby {
            base,
            sample: Mutex::new(None),
            ready: Mutex::new(None),
        })
    }

    /// Keeps a copy of `batch`, and of `state` when it is small, for the next version to rehearse
    /// on (see [`SampleClock`] for how often the worker does this).
    pub fn keep_sample(&self, batch: &EventBatch, state: &KeyedState) {
        // A small state is copied too: the rehearsal then takes the paths a real batch takes (the
        // state is there), and the instance's cache and heap grow to their real size before its
        // first real batch. The copy is made on the worker's thread, so a larger state is not
        // copied (at most [`SAMPLE_STATE_KEYS`] keys and [`SAMPLE_STATE_BYTES`] cost the worker
        // a few tenths of a millisecond every [`SAMPLE_EVERY`]); the rehearsal then runs on
        // empty state.
        // The sizes only for a state that may be copied: summing them visits every key.
        let small = state.len() <= SAMPLE_STATE_KEYS && {
            let (_, key_bytes, value_bytes) = state.committed_sizes();
            key_bytes + value_bytes <= SAMPLE_STATE_BYTES
        };
        let state = if small {
            state.detached_copy()
        } else {
            KeyedState::default()
        };
        *lock(&self.sample) = Some((batch.clone(), state));
    }

    /// The ready instance of `plugin`, if there is one.
    pub fn take(&self, plugin: &Arc<Plugin>) -> Option<PluginInstance> {
        let mut ready = lock(&self.ready);
        if ready
            .as_ref()
            .is_some_and(|instance| Arc::ptr_eq(instance.plugin(), plugin))
        {
            ready.take()
        } else {
            None
        }
    }
}

impl Prepare<Plugin> for Standby {
    fn prepare(&self, plugin: &Arc<Plugin>) -> bool {
        let settings = self.base.for_plugin(plugin);
        let mut instance =
            match PluginInstance::new(plugin.clone(), settings, KeyedState::default()) {
                Ok(instance) => instance,
                // The worker will instantiate it itself, and meet the same error there.
                Err(_) => return false,
            };
        let sample = lock(&self.sample).clone();
        if let Some((sample, state)) = sample
            && let Err(error) = instance.rehearse(&sample, state)
        {
            tracing::debug!(
                pipeline = %self.base.scope.pipeline, stage = %self.base.scope.stage,
                partition = self.base.scope.partition, version = %plugin.version(),
                reason = %error.kind,
                "the new version failed its rehearsal batch; the workers will instantiate it at their first batch"
            );
            return false;
        }
        let replaced = lock(&self.ready).replace(instance);
        if let Some(replaced) = replaced {
            retire(replaced);
        }
        true
    }
}
