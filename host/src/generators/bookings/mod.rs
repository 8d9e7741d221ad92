//! The booking platform simulator: bookings of cinema, concert and theatre seats, and the payments
//! of those orders, in one source partitioned by `OrderId`.
//!
//! Bookings are `{OrderId, CustomerId, EventName, EventType, VenueId, Venue, Seats: [{SeatId,
//! Price}], Timestamp}`; payments `{PaymentId, OrderId, Method, Amount, Status, Timestamp}` with
//! `Status` `Succeeded` or `Failed`. Each event carries the property `stream` (`bookings` or
//! `payments`), as it would coming from two Event Hubs. Some orders are never paid, some are paid
//! after the payment deadline, some payments fail (see [`model`]). Everything is a pure function of
//! the seed and the order number, and positions follow the stream's order, so a restart after a
//! crash regenerates exactly the events after the oldest checkpoint.

pub mod config;
mod model;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::{Instant, MissedTickBehavior};

use crate::checkpoint::CheckpointStore;
use crate::config::BookingsSourceConfig;
use crate::event::{Event, Position, now_millis, partition_for_key};
use crate::source::{Dispatcher, PartitionReader, PartitionStart, Source, SourceError};
use model::Model;

/// How often a paced simulator sends the slots that have come due.
const PACING_TICK: Duration = Duration::from_millis(10);

/// The event time of the first booking: the configured `start_time`; else the one saved for this
/// source in the checkpoint store; else now (to the whole second), saved there so that a restart
/// replays the same event times.
pub async fn resolve_start_time(
    name: &str,
    config: &BookingsSourceConfig,
    checkpoints: &dyn CheckpointStore,
) -> Result<i64, String> {
    if let Some(text) = &config.start_time {
        return chrono::DateTime::parse_from_rfc3339(text.trim())
            .map(|t| t.timestamp_millis())
            .map_err(|e| format!("start_time `{text}` is not an RFC 3339 timestamp: {e}"));
    }
    let key = format!("bookings-{name}-start-time");
    let saved = checkpoints
        .load_meta(&key)
        .await
        .map_err(|e| format!("cannot read the saved start time: {e}"))?;
    if let Some(saved) = saved {
        return saved.trim().parse::<i64>().map_err(|e| {
            format!("the start time saved under `{key}` is `{saved}`, not epoch milliseconds: {e}")
        });
    }
    let now = now_millis().div_euclid(1000) * 1000;
    checkpoints
        .save_meta(&key, &now.to_string())
        .await
        .map_err(|e| format!("cannot save the start time: {e}"))?;
    Ok(now)
}

/// The booking platform.
#[derive(Debug)]
pub struct BookingsSource {
    name: String,
    config: BookingsSourceConfig,
    model: Arc<Model>,
}

impl BookingsSource {
    /// A simulator whose first booking is at `start_time` (epoch milliseconds).
    pub fn new(name: &str, config: BookingsSourceConfig, start_time: i64) -> Self {
        let millis = |d: crate::config::ConfigDuration| {
            i64::try_from(d.get().as_millis())
                .unwrap_or(i64::MAX)
                .max(1)
        };
        let model = Model {
            seed: config.seed,
            start_time,
            interval: millis(config.booking_interval),
            deadline: millis(config.payment_deadline),
            missing_ratio: config.missing_payment_ratio,
            late_ratio: config.late_payment_ratio,
            failed_ratio: config.failed_payment_ratio,
        };
        BookingsSource {
            name: name.to_owned(),
            config,
            model: Arc::new(model),
        }
    }
}

#[async_trait]
impl Source for BookingsSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn partition_count(&self) -> u32 {
        self.config.partitions
    }

    async fn open(
        &self,
        starts: Vec<PartitionStart>,
    ) -> Result<Vec<Box<dyn PartitionReader>>, SourceError> {
        let (dispatcher, readers) = Dispatcher::new(&self.name, self.config.partitions, &starts)?;
        let producer = Producer {
            model: Arc::clone(&self.model),
            rate: self.config.rate,
            max_orders: self.config.max_orders,
            after: dispatcher.resume_from(),
            partitions: self.config.partitions,
            dispatcher,
        };
        tokio::spawn(producer.run());
        Ok(readers)
    }
}

/// The task generating slots into the dispatcher.
struct Producer {
    model: Arc<Model>,
    rate: u32,
    max_orders: Option<u64>,
    /// Positions up to this one are already covered by every partition's checkpoint.
    after: Option<Position>,
    partitions: u32,
    dispatcher: Dispatcher,
}

impl Producer {
    async fn run(self) {
        let width = self.model.slot_width();
        let mut slot = self.after.map_or(0, |p| p / width);
        // The last slot that still carries a payment of the last order.
        let end = self.max_orders.map_or(u64::MAX, |orders| {
            orders.saturating_add(self.model.max_slots_late())
        });
        if self.rate == 0 {
            while slot < end {
                if !self.emit(slot).await {
                    return;
                }
                slot += 1;
            }
            return;
        }
        let rate = u64::from(self.rate);
        let mut ticks = tokio::time::interval(PACING_TICK);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let started = Instant::now();
        let mut paced: u64 = 0;
        while slot < end {
            ticks.tick().await;
            if self.dispatcher.is_closed() {
                return;
            }
            let due =
                u64::try_from(started.elapsed().as_nanos() * u128::from(rate) / 1_000_000_000)
                    .unwrap_or(u64::MAX);
            paced = paced.max(due.saturating_sub(rate));
            while paced < due && slot < end {
                if !self.emit(slot).await {
                    return;
                }
                paced += 1;
                slot += 1;
            }
        }
    }

    /// Sends slot `slot`: its booking, then the payments due in it. False once nobody reads.
    async fn emit(&self, slot: u64) -> bool {
        let model = &self.model;
        let width = model.slot_width();
        let orders = self.max_orders.unwrap_or(u64::MAX);
        if slot < orders {
            let body = model.booking_body(slot);
            if !self
                .send(
                    slot,
                    slot.saturating_mul(width),
                    body,
                    "bookings",
                    model.booking_time(slot),
                )
                .await
            {
                return false;
            }
        }
        for late in 1..=model.max_slots_late() {
            let Some(order) = slot.checked_sub(late) else {
                break;
            };
            if order >= orders {
                continue;
            }
            let Some(payment) = model.payment(order) else {
                continue;
            };
            if payment.slots_late != late {
                continue;
            }
            let body = model.payment_body(order, &payment);
            let time = model.booking_time(order) + payment.delay;
            if !self
                .send(
                    order,
                    slot.saturating_mul(width) + late,
                    body,
                    "payments",
                    time,
                )
                .await
            {
                return false;
            }
        }
        true
    }

    /// Sends one event of order `order` at `position`; false once every reader is gone.
    async fn send(
        &self,
        order: u64,
        position: Position,
        body: String,
        stream: &str,
        time: i64,
    ) -> bool {
        if self.after.is_some_and(|after| position <= after) {
            return true;
        }
        let key = Model::order_id(order);
        let event = Event {
            partition: partition_for_key(key.as_bytes(), self.partitions),
            position,
            key: Some(Bytes::from(key)),
            event_time: Some(time),
            enqueued_time: now_millis(),
            properties: vec![("stream".to_owned(), stream.to_owned())],
            body: Bytes::from(body),
        };
        self.dispatcher.send(event).await || !self.dispatcher.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;
    use crate::source::ReadOutcome;

    fn config(max_orders: u64) -> BookingsSourceConfig {
        BookingsSourceConfig {
            partitions: 3,
            rate: 0,
            max_orders: Some(max_orders),
            seed: 11,
            start_time: None,
            booking_interval: ConfigDuration::from_millis(1_000),
            payment_deadline: ConfigDuration::from_millis(120_000),
            missing_payment_ratio: 0.1,
            late_payment_ratio: 0.1,
            failed_payment_ratio: 0.1,
        }
    }

    async fn read_all(source: &BookingsSource, after: Option<u64>) -> Vec<Event> {
        let starts = (0..3)
            .map(|partition| PartitionStart { partition, after })
            .collect();
        let mut readers = source.open(starts).await.expect("open");
        let mut events = Vec::new();
        for reader in &mut readers {
            loop {
                match reader
                    .next_batch(500, Duration::from_secs(10))
                    .await
                    .expect("read")
                {
                    ReadOutcome::Events(batch) => events.extend(batch),
                    ReadOutcome::Idle => panic!("the simulator idled before its end"),
                    ReadOutcome::End => break,
                }
            }
        }
        events.sort_by_key(|e| e.position);
        events
    }

    #[tokio::test]
    async fn every_order_is_booked_once_and_paid_at_most_once_in_its_partition() {
        let source = BookingsSource::new("b", config(500), 1_800_000_000_000);
        let events = read_all(&source, None).await;
        let mut bookings = std::collections::BTreeMap::new();
        let mut payments = std::collections::BTreeMap::new();
        for event in &events {
            let body: serde_json::Value = serde_json::from_slice(&event.body).expect("json");
            let order = body["OrderId"].as_str().expect("order").to_owned();
            assert_eq!(
                event.partition,
                partition_for_key(order.as_bytes(), 3),
                "an order's events share a partition"
            );
            let stream = &event.properties[0].1;
            let seen = if stream == "bookings" {
                &mut bookings
            } else {
                &mut payments
            };
            assert!(
                seen.insert(order, event.clone()).is_none(),
                "once per stream"
            );
        }
        assert_eq!(bookings.len(), 500);
        assert!(
            (400..480).contains(&payments.len()),
            "{} payments",
            payments.len()
        );
        for (order, payment) in &payments {
            let booking = &bookings[order];
            assert!(payment.position > booking.position, "paid after booked");
            assert!(payment.event_time > booking.event_time);
        }
        // A restart after a checkpoint regenerates exactly the tail.
        let middle = events[events.len() / 2].position;
        let tail = read_all(&source, Some(middle)).await;
        let expected: Vec<_> = events
            .iter()
            .filter(|e| e.position > middle)
            .map(|e| (e.position, e.body.clone()))
            .collect();
        assert_eq!(
            tail.iter()
                .map(|e| (e.position, e.body.clone()))
                .collect::<Vec<_>>(),
            expected
        );
    }
}
