//! Stream Analytics' `LAG(x) OVER (PARTITION BY key LIMIT DURATION(unit, n))`, over keyed state.
//!
//! Weir has no SQL: a plugin keeps each key's latest value in its keyed state, and [`Lag`] says
//! whether that value is the "previous event" LAG would return for the event at hand, then keeps
//! the newest one. The value stored is the plugin's own type (anything [`Timed`]), so a plugin's
//! state layout is its own.
//!
//! # The boundary
//!
//! Stream Analytics gives an event looked back at by `LIMIT DURATION(d)` a lifetime of `d` from
//! its own time: an event at `t0` is visible to the events in `[t0, t0 + d)`. So for an event at
//! `t`, the previous event counts when `t − d < t0 ≤ t`, that is when it is **less than `d`**
//! older; one exactly `d` older has expired. It is the same rule as ASA's sliding window
//! `(t − d, t]`, whose documentation works it through: an event at 34 s leaves a 5-second window
//! at 39 s (see the README's *Windows* and `tests/golden/windows/asa_doc_sliding`). The LAG page
//! itself does not say what happens exactly at `d`: [`Bound::Inclusive`] (`0 ≤ t − t0 ≤ d`) is
//! there for rules that promised to count it.
//!
//! # Expiry
//!
//! Each key is stored with a time-to-live of the limit ([`Context::put_with_ttl`]): once the
//! partition's watermark has passed a stored value's write by more than the limit, no event to
//! come can count it, and the host removes the key from the state and its checkpoints. A state
//! of a million devices then holds only those heard from within the limit.
//!
//! ```
//! use weir_sdk::lag::{Lag, Timed};
//! # use weir_sdk::prelude::*;
//!
//! #[derive(Clone, Copy, Serialize, Deserialize)]
//! struct Last { temperature: f64, time: i64 }
//! impl Timed for Last {
//!     fn time(&self) -> i64 { self.time }
//! }
//!
//! /// `Temperature - LAG(Temperature) OVER (PARTITION BY DeviceId LIMIT DURATION(minute, 5))`.
//! fn delta(ctx: &mut Context, device: &str, temperature: f64, time: i64) -> Result<Option<f64>> {
//!     let lag = Lag::limit_duration(5 * 60_000);
//!     let step = lag.step(ctx, device, Last { temperature, time })?;
//!     Ok(step.previous.map(|last| temperature - last.temperature))
//! }
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Context, Result};

/// A value kept per key, with the event time it belongs to (milliseconds since the Unix epoch).
pub trait Timed {
    /// The event time of the value.
    fn time(&self) -> i64;
}

/// Whether a previous event exactly the limit older still counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Stream Analytics': it counts when less than the limit older, `t − d < t0 ≤ t`.
    StreamAnalytics,
    /// Also exactly the limit older, `t − d ≤ t0 ≤ t`.
    Inclusive,
}

/// `LAG ... LIMIT DURATION`: how far back the previous event of a key may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lag {
    limit: i64,
    bound: Bound,
}

/// What [`Lag::step`] found and did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step<T> {
    /// The key's previous value, when it is within the limit of the event at hand (LAG's
    /// result; `None` is LAG's `NULL`).
    pub previous: Option<T>,
    /// Whether the event's value became the key's latest. An event older than the stored one
    /// (out of order) is looked back from, but does not replace it.
    pub stored: bool,
}

impl Lag {
    /// A look-back of `limit_millis` with Stream Analytics' boundary.
    pub const fn limit_duration(limit_millis: i64) -> Lag {
        Lag {
            limit: limit_millis,
            bound: Bound::StreamAnalytics,
        }
    }

    /// The same look-back, counting a previous event exactly the limit older too.
    pub const fn inclusive(self) -> Lag {
        Lag {
            limit: self.limit,
            bound: Bound::Inclusive,
        }
    }

    /// The boundary in use.
    pub const fn bound(&self) -> Bound {
        self.bound
    }

    /// Whether a previous event at `previous` counts for the event at `now`: not later than it,
    /// and within the limit as [`Bound`] says.
    pub fn counts(&self, previous: i64, now: i64) -> bool {
        let Some(age) = now.checked_sub(previous) else {
            return false;
        };
        match self.bound {
            Bound::StreamAnalytics => (0..self.limit).contains(&age),
            Bound::Inclusive => (0..=self.limit).contains(&age),
        }
    }

    /// The key's previous value if it counts for `current`, then `current` kept as the key's
    /// latest unless the stored one is newer.
    pub fn step<T>(&self, ctx: &mut Context, key: &str, current: T) -> Result<Step<T>>
    where
        T: Timed + Serialize + DeserializeOwned + Clone,
    {
        let stored: Option<T> = ctx.get(key)?;
        let now = current.time();
        let replace = stored.as_ref().is_none_or(|last| last.time() <= now);
        let previous = stored.filter(|last| self.counts(last.time(), now));
        if replace {
            // Once the watermark is past the limit, the stored value counts for no event to come
            // (no event earlier than the watermark reaches the stage): the host may forget it.
            let ttl = std::time::Duration::from_millis(u64::try_from(self.limit).unwrap_or(0));
            if ttl.is_zero() {
                ctx.put(key, &current)?;
            } else {
                ctx.put_with_ttl(key, &current, ttl)?;
            }
        }
        Ok(Step {
            previous,
            stored: replace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;

    #[test]
    fn stream_analytics_counts_a_previous_event_less_than_the_limit_older() {
        let lag = Lag::limit_duration(5 * MINUTE);
        assert_eq!(lag.bound(), Bound::StreamAnalytics);
        let t = 1_000 * MINUTE;
        assert!(lag.counts(t - 5 * MINUTE + 1, t));
        assert!(
            !lag.counts(t - 5 * MINUTE, t),
            "exactly the limit older: expired"
        );
        assert!(lag.counts(t, t), "the same time: counts (arrival order)");
        assert!(!lag.counts(t + 1, t), "a later event is no previous one");
    }

    #[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Last {
        value: f64,
        time: i64,
    }

    impl Timed for Last {
        fn time(&self) -> i64 {
            self.time
        }
    }

    /// Emits `{"Prev": LAG(value) OVER (PARTITION BY key LIMIT DURATION(minute, 1))}`.
    fn lag_of(event: &crate::Event, ctx: &mut Context) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct Input {
            key: String,
            value: f64,
        }
        let input: Input = event.json()?;
        let current = Last {
            value: input.value,
            time: event.time(),
        };
        let step = Lag::limit_duration(MINUTE).step(ctx, &input.key, current)?;
        ctx.emit(
            "lag",
            &serde_json::json!({ "Prev": step.previous.map(|p| p.value), "Stored": step.stored }),
        )
    }

    #[test]
    fn step_looks_back_within_the_limit_and_keeps_the_newest() {
        use crate::testing::{Harness, TestEvent};
        let mut harness = Harness::new(lag_of);
        let mut run = |value: f64, time: i64| {
            let body = serde_json::json!({ "key": "k", "value": value });
            let outcome = harness.run_event(TestEvent::json(&body).at(time));
            outcome.json("lag")[0].clone()
        };
        assert_eq!(
            run(1.0, 0)["Prev"],
            serde_json::Value::Null,
            "nothing before"
        );
        assert_eq!(run(2.0, MINUTE - 1)["Prev"], 1.0);
        // Exactly a minute after the stored 2.0: expired.
        assert_eq!(run(3.0, 2 * MINUTE - 1)["Prev"], serde_json::Value::Null);
        // Out of order: looks back from its own time (nothing earlier is stored)...
        let late = run(9.0, MINUTE);
        assert_eq!(late["Prev"], serde_json::Value::Null);
        assert_eq!(late["Stored"], false);
        // ...and does not replace the newest.
        assert_eq!(run(4.0, 2 * MINUTE)["Prev"], 3.0);
        assert_eq!(
            harness.state_ttl("k"),
            Some(std::time::Duration::from_millis(MINUTE as u64)),
            "kept no longer than the limit"
        );
    }

    #[test]
    fn inclusive_also_counts_exactly_the_limit() {
        let lag = Lag::limit_duration(5 * MINUTE).inclusive();
        let t = 1_000 * MINUTE;
        assert!(lag.counts(t - 5 * MINUTE, t));
        assert!(!lag.counts(t - 5 * MINUTE - 1, t));
        assert!(!lag.counts(i64::MAX, i64::MIN), "no overflow");
    }
}
