//! The pipeline watermark: the minimum of the watermarks of the partitions this process runs,
//! leaving out the idle ones.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::event::PartitionId;

/// The watermarks of one pipeline's partition workers in this process.
///
/// Workers register when they start and unregister (their [`WatermarkHandle`] is dropped) when
/// they stop, so partitions that a process gains or loses at runtime come and go here too.
#[derive(Debug, Default)]
pub struct PipelineWatermarks {
    partitions: Mutex<BTreeMap<PartitionId, PartitionWatermark>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PartitionWatermark {
    watermark: Option<i64>,
    idle: bool,
}

impl PipelineWatermarks {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(PipelineWatermarks::default())
    }

    /// Registers `partition`, which holds the pipeline watermark back until it publishes one or
    /// becomes idle.
    pub fn register(self: &Arc<Self>, partition: PartitionId) -> WatermarkHandle {
        self.lock().insert(partition, PartitionWatermark::default());
        WatermarkHandle {
            registry: Arc::clone(self),
            partition,
        }
    }

    /// The pipeline watermark: the minimum over the partitions that are not idle (`None` while
    /// one of them has no watermark yet); when every partition is idle, none holds it back and it
    /// is the maximum of theirs.
    pub fn current(&self) -> Option<i64> {
        let partitions = self.lock();
        let mut active = partitions.values().filter(|p| !p.idle).peekable();
        if active.peek().is_some() {
            let mut lowest: Option<i64> = None;
            for partition in active {
                let watermark = partition.watermark?;
                lowest = Some(lowest.map_or(watermark, |l| l.min(watermark)));
            }
            lowest
        } else {
            partitions.values().filter_map(|p| p.watermark).max()
        }
    }

    /// Whether every registered partition is idle (and at least one is registered).
    pub fn every_idle(&self) -> bool {
        let partitions = self.lock();
        !partitions.is_empty() && partitions.values().all(|p| p.idle)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<PartitionId, PartitionWatermark>> {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One partition's entry in its pipeline's [`PipelineWatermarks`]; dropping it unregisters it.
#[derive(Debug)]
pub struct WatermarkHandle {
    registry: Arc<PipelineWatermarks>,
    partition: PartitionId,
}

impl WatermarkHandle {
    /// Publishes the partition's watermark and whether it is idle.
    pub fn publish(&self, watermark: Option<i64>, idle: bool) {
        self.registry
            .lock()
            .insert(self.partition, PartitionWatermark { watermark, idle });
    }

    /// Whether every partition of the pipeline in this process is idle.
    pub fn every_partition_idle(&self) -> bool {
        self.registry.every_idle()
    }

    /// The pipeline watermark (see [`PipelineWatermarks::current`]).
    pub fn pipeline_watermark(&self) -> Option<i64> {
        self.registry.current()
    }
}

impl Drop for WatermarkHandle {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_over_active_partitions_and_idle_ones_do_not_hold_it_back() {
        let registry = PipelineWatermarks::new();
        let a = registry.register(0);
        let b = registry.register(1);
        assert_eq!(registry.current(), None, "nobody has a watermark yet");
        a.publish(Some(100), false);
        assert_eq!(registry.current(), None, "partition 1 holds it back");
        b.publish(Some(40), false);
        assert_eq!(registry.current(), Some(40));
        b.publish(Some(40), true);
        assert_eq!(
            registry.current(),
            Some(100),
            "an idle partition is left out"
        );
        assert!(!registry.every_idle(), "partition 0 is busy");
        a.publish(Some(120), true);
        assert_eq!(
            registry.current(),
            Some(120),
            "all idle: the newest watermark"
        );
        assert!(registry.every_idle());
        let c = registry.register(2);
        assert!(!registry.every_idle(), "a new partition is not idle");
        assert_eq!(registry.current(), None, "a new partition holds it back");
        drop(c);
        drop(b);
        a.publish(Some(130), false);
        assert_eq!(a.pipeline_watermark(), Some(130));
    }
}
