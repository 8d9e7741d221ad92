//! The probation verdict: given the rollback policy and what a new version did so far, keep
//! watching it, let it pass, or roll it back, and why. Pure code: tallies in, a verdict out; the
//! slot ([`super::PluginSlot::record`]) logs, counts and activates.

use std::fmt;

use super::{CallTally, RollbackPolicy};

/// What a probation comes to after the events counted so far.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Within the limits, with fewer than `probation_events` events seen: keep watching.
    Probing,
    /// Within the limits over its first `probation_events` events: the version stays.
    Passed,
    /// Beyond a limit: the version is rolled back.
    Failed(Failure),
}

/// Which limit a version on probation went beyond. `Display` gives the reason the slot logs and
/// records with the automatic rollback.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    /// Too many traps (`max_trap_ratio`).
    Traps {
        /// The tallies so far.
        so_far: CallTally,
        /// The policy's `max_trap_ratio`.
        limit: f64,
        /// The policy's `probation_events`.
        of: u64,
    },
    /// Too many traps and rejections together (`max_error_ratio`).
    Errors {
        /// The tallies so far.
        so_far: CallTally,
        /// The policy's `max_error_ratio`.
        limit: f64,
        /// The policy's `probation_events`.
        of: u64,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Traps { so_far, limit, of } => write!(
                f,
                "trapped on {} of its first {} events, above the limit of {} of {} (max_trap_ratio)",
                so_far.trapped, so_far.events, limit, of
            ),
            Failure::Errors { so_far, limit, of } => write!(
                f,
                "failed (rejected {}, trapped {}) on {} of its first {} events, above the limit of {} of {} (max_error_ratio)",
                so_far.rejected,
                so_far.trapped,
                so_far.trapped + so_far.rejected,
                so_far.events,
                limit,
                of
            ),
        }
    }
}

/// The verdict on a version that did `so_far` (summed over all partitions) since its swap.
///
/// The ratios are taken of the whole window (`probation_events`), not of the events seen so far:
/// a version fails as soon as its failures exceed the share of the window the policy allows, and
/// the first failures of a probation do not fail it by themselves.
pub(crate) fn verdict(policy: &RollbackPolicy, so_far: CallTally) -> Verdict {
    let window = policy.probation_events.max(1) as f64;
    let failures = so_far.trapped + so_far.rejected;
    if so_far.trapped as f64 > policy.max_trap_ratio * window {
        Verdict::Failed(Failure::Traps {
            so_far,
            limit: policy.max_trap_ratio,
            of: policy.probation_events,
        })
    } else if failures as f64 > policy.max_error_ratio * window {
        Verdict::Failed(Failure::Errors {
            so_far,
            limit: policy.max_error_ratio,
            of: policy.probation_events,
        })
    } else if so_far.events >= policy.probation_events {
        Verdict::Passed
    } else {
        Verdict::Probing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a row expects.
    #[derive(Debug, PartialEq)]
    enum Expect {
        Probing,
        Passed,
        Traps,
        Errors,
    }

    fn policy(events: u64, trap: f64, error: f64) -> RollbackPolicy {
        RollbackPolicy {
            probation_events: events,
            max_trap_ratio: trap,
            max_error_ratio: error,
        }
    }

    fn tally(events: u64, rejected: u64, trapped: u64) -> CallTally {
        CallTally {
            events,
            rejected,
            trapped,
        }
    }

    #[test]
    fn verdicts() {
        // The default policy: 1000 events, 5 % traps (50), 50 % failures (500).
        let default = RollbackPolicy::default();
        let rows: &[(&str, RollbackPolicy, CallTally, Expect)] = &[
            ("nothing seen yet", default, tally(0, 0, 0), Expect::Probing),
            (
                "clean, inside the window",
                default,
                tally(999, 0, 0),
                Expect::Probing,
            ),
            (
                "clean, at the window",
                default,
                tally(1000, 0, 0),
                Expect::Passed,
            ),
            (
                "clean, past the window",
                default,
                tally(1500, 0, 0),
                Expect::Passed,
            ),
            // Traps: the limit is a share of the whole window, so 50 traps are allowed even
            // within the first 50 events.
            (
                "traps at the limit",
                default,
                tally(50, 0, 50),
                Expect::Probing,
            ),
            (
                "traps one over the limit",
                default,
                tally(51, 0, 51),
                Expect::Traps,
            ),
            (
                "traps under the limit, window done",
                default,
                tally(1000, 0, 49),
                Expect::Passed,
            ),
            (
                "traps at the limit, window done",
                default,
                tally(1000, 0, 50),
                Expect::Passed,
            ),
            (
                "traps over the limit after the window",
                default,
                tally(1200, 0, 51),
                Expect::Traps,
            ),
            // Failures: rejections and traps together.
            (
                "rejections at the limit",
                default,
                tally(600, 500, 0),
                Expect::Probing,
            ),
            (
                "rejections one over the limit",
                default,
                tally(600, 501, 0),
                Expect::Errors,
            ),
            (
                "rejections and traps at the limit",
                default,
                tally(1000, 450, 50),
                Expect::Passed,
            ),
            (
                "rejections and traps one over",
                default,
                tally(1000, 451, 50),
                Expect::Errors,
            ),
            (
                "rejections under the limit, window done",
                default,
                tally(1000, 499, 0),
                Expect::Passed,
            ),
            // Too many traps is told before too many failures.
            (
                "both limits passed",
                default,
                tally(1000, 900, 100),
                Expect::Traps,
            ),
            // A window of 0 events: passed at once unless something failed; the ratios then
            // apply to a window of 1.
            (
                "empty window, nothing seen",
                policy(0, 0.05, 0.5),
                tally(0, 0, 0),
                Expect::Passed,
            ),
            (
                "empty window, one trap",
                policy(0, 0.05, 0.5),
                tally(1, 0, 1),
                Expect::Traps,
            ),
            (
                "empty window, one rejection",
                policy(0, 0.05, 0.5),
                tally(1, 1, 0),
                Expect::Errors,
            ),
            // Ratios of 0 tolerate nothing; ratios of 1 tolerate everything.
            (
                "no tolerance, one rejection",
                policy(10, 0.0, 0.0),
                tally(1, 1, 0),
                Expect::Errors,
            ),
            (
                "no tolerance, one trap",
                policy(10, 0.0, 0.0),
                tally(1, 0, 1),
                Expect::Traps,
            ),
            (
                "full tolerance, all trap",
                policy(10, 1.0, 1.0),
                tally(10, 0, 10),
                Expect::Passed,
            ),
            // A small window: 10 events, 20 % traps (2), 30 % failures (3).
            (
                "small window, traps at the limit",
                policy(10, 0.2, 0.3),
                tally(4, 0, 2),
                Expect::Probing,
            ),
            (
                "small window, traps over",
                policy(10, 0.2, 0.3),
                tally(4, 0, 3),
                Expect::Traps,
            ),
            (
                "small window, failures at the limit",
                policy(10, 0.2, 0.3),
                tally(9, 2, 1),
                Expect::Probing,
            ),
            (
                "small window, failures over",
                policy(10, 0.2, 0.3),
                tally(9, 2, 2),
                Expect::Errors,
            ),
            (
                "small window, done",
                policy(10, 0.2, 0.3),
                tally(10, 1, 2),
                Expect::Passed,
            ),
        ];
        for (name, policy, so_far, expect) in rows {
            let got = match verdict(policy, *so_far) {
                Verdict::Probing => Expect::Probing,
                Verdict::Passed => Expect::Passed,
                Verdict::Failed(Failure::Traps { .. }) => Expect::Traps,
                Verdict::Failed(Failure::Errors { .. }) => Expect::Errors,
            };
            assert_eq!(&got, expect, "{name}: {so_far:?} under {policy:?}");
        }
    }

    #[test]
    fn failure_reasons_read_as_before() {
        let policy = RollbackPolicy::default();
        let Verdict::Failed(traps) = verdict(&policy, tally(60, 0, 51)) else {
            panic!("51 traps fail the default policy");
        };
        assert_eq!(
            traps.to_string(),
            "trapped on 51 of its first 60 events, above the limit of 0.05 of 1000 (max_trap_ratio)"
        );
        let Verdict::Failed(errors) = verdict(&policy, tally(700, 480, 30)) else {
            panic!("510 failures fail the default policy");
        };
        assert_eq!(
            errors.to_string(),
            "failed (rejected 480, trapped 30) on 510 of its first 700 events, above the limit of 0.5 of 1000 (max_error_ratio)"
        );
    }
}
