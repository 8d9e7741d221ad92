//! The booking platform simulator: bookings of cinema, concert and theatre seats, and the payments
//! of those orders, in one source partitioned by `OrderId`.
//!
//! Bookings are `{OrderId, CustomerId, EventName, EventType, VenueId, Venue, Seats: [{SeatId,
//! Price}], Timestamp}`; payments `{PaymentId, OrderId, Method, Amount, Status, Timestamp}` with
//! `Status` `Succeeded` or `Failed`. Each event carries the property `stream` (`bookings` or
//! `payments`), as it would coming from two Event Hubs. Some orders are never paid, some are paid
//! after the payment deadline, some payments fail (see `model`). Everything is a pure function of
//! the seed and the order number, and positions follow the stream's order, so a restart after a
//! crash regenerates exactly the events after the oldest checkpoint.

pub mod config;
mod model;

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::checkpoint::CheckpointStore;
use crate::config::BookingsSourceConfig;
use crate::event::{Event, Position, now_millis, partition_for_key};
use crate::generators::pacing::{self, GeneratorSource, Output, Steps};
use crate::source::SourceErrorKind;
use config::BookingsStream;
use model::Model;

/// The event time of the first booking: the configured `start_time`; else the one saved for this
/// source in the checkpoint store; else now (to the whole second), saved there so that a restart
/// replays the same event times.
pub async fn resolve_start_time(
    name: &str,
    config: &BookingsSourceConfig,
    checkpoints: &dyn CheckpointStore,
) -> Result<i64, (SourceErrorKind, String)> {
    let key = format!("bookings-{name}-start-time");
    let start = pacing::resolve_start_time(&key, config.start_time.as_deref(), checkpoints).await?;
    Ok(start.millis)
}

/// The booking platform.
pub type BookingsSource = GeneratorSource<Model>;

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
            stream: config.stream,
        };
        GeneratorSource {
            name: name.to_owned(),
            partitions: config.partitions,
            rate: config.rate,
            limit: config.max_orders,
            model: Arc::new(model),
        }
    }
}

impl Steps for Model {
    fn steps(&self, after: Option<Position>, limit: Option<u64>) -> Range<u64> {
        let width = self.slot_width();
        let first = after.map_or(0, |p| p / width);
        // The last slot that still carries a payment of the last order.
        let end = limit.map_or(u64::MAX, |orders| {
            orders.saturating_add(self.max_slots_late())
        });
        first..end
    }

    /// Sends slot `slot`: its booking, then the payments due in it. False once nobody reads.
    async fn emit(&self, slot: u64, limit: Option<u64>, out: &Output) -> bool {
        let model = self;
        let width = model.slot_width();
        let orders = limit.unwrap_or(u64::MAX);
        if slot < orders {
            let body = model.booking_body(slot);
            if !send(
                out,
                model.stream,
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
            if !send(
                out,
                model.stream,
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
}

/// Sends one event of order `order` at `position`; false once every reader is gone.
async fn send(
    out: &Output,
    carries: BookingsStream,
    order: u64,
    position: Position,
    body: String,
    stream: &str,
    time: i64,
) -> bool {
    if !out.wanted(position) || !carries.carries(stream) {
        return true;
    }
    let key = Model::order_id(order);
    let event = Event {
        partition: partition_for_key(key.as_bytes(), out.partitions()),
        source: crate::event::no_source(),
        position,
        key: Some(Bytes::from(key)),
        event_time: Some(time),
        enqueued_time: now_millis(),
        properties: vec![("stream".to_owned(), stream.to_owned())],
        body: Bytes::from(body),
    };
    out.send(event).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::ConfigDuration;
    use crate::source::{PartitionStart, ReadOutcome, Source};

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
            stream: BookingsStream::Both,
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
                    ReadOutcome::Undecodable { .. } => {
                        panic!("this source never has undecodable data")
                    }
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

    #[tokio::test]
    async fn two_sources_with_one_seed_are_the_platforms_two_streams() {
        let both = read_all(
            &BookingsSource::new("b", config(200), 1_800_000_000_000),
            None,
        )
        .await;
        let only = |stream| {
            BookingsSource::new(
                "s",
                BookingsSourceConfig {
                    stream,
                    ..config(200)
                },
                1_800_000_000_000,
            )
        };
        let bookings = read_all(&only(BookingsStream::Bookings), None).await;
        let payments = read_all(&only(BookingsStream::Payments), None).await;
        assert!(bookings.iter().all(|e| e.properties[0].1 == "bookings"));
        assert!(payments.iter().all(|e| e.properties[0].1 == "payments"));
        let mut split: Vec<_> = bookings
            .iter()
            .chain(&payments)
            .map(|e| (e.partition, e.position, e.body.clone()))
            .collect();
        split.sort_by_key(|(_, position, _)| *position);
        let whole: Vec<_> = both
            .iter()
            .map(|e| (e.partition, e.position, e.body.clone()))
            .collect();
        assert_eq!(split, whole, "the same events, in the same partitions");
    }
}
