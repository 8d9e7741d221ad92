//! The ownership plan: from the claims in the store, what this process owns and the time, which
//! claims to renew, which partitions were taken, and which to claim or steal. Pure code: records
//! in, actions out; [`super::OwnershipManager`] writes the claims and starts and stops workers.
//! Its random choices come from a function it is given, so that a test can fix them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::checkpoint::Ownership;
use crate::event::PartitionId;

/// What to do with the claims this process holds.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Renewal {
    /// Partitions whose claim another process has written over (or that has gone): stop them.
    pub(super) taken: Vec<PartitionId>,
    /// The claims to write again, each at the version it was left at.
    pub(super) renew: Vec<Ownership>,
}

/// Which of `held` (the claims as this process last wrote them, one per partition, in partition
/// order) are still this `owner`'s in `records`, and their renewals.
pub(super) fn renewal(owner: &str, records: &[Ownership], held: &[Ownership]) -> Renewal {
    let by_partition = by_partition(records);
    let (kept, taken): (Vec<&Ownership>, Vec<&Ownership>) = held.iter().partition(|claim| {
        by_partition
            .get(&claim.partition)
            .is_some_and(|r| r.owner == owner)
    });
    Renewal {
        taken: taken.into_iter().map(|claim| claim.partition).collect(),
        renew: kept
            .into_iter()
            .map(|claim| Ownership {
                partition: claim.partition,
                owner: owner.to_owned(),
                last_modified: 0,
                version: by_partition
                    .get(&claim.partition)
                    .and_then(|r| r.version.clone())
                    .or_else(|| claim.version.clone()),
            })
            .collect(),
    }
}

/// What the balancing looks at.
#[derive(Debug)]
pub(super) struct View<'a> {
    /// This process's owner id.
    pub(super) owner: &'a str,
    /// The pipeline's partitions.
    pub(super) partitions: u32,
    /// The claims in the store.
    pub(super) records: &'a [Ownership],
    /// The partitions this process owns (after its renewals).
    pub(super) owned: &'a BTreeSet<PartitionId>,
    /// Partitions read to their end here: never claimed again.
    pub(super) ended: &'a BTreeSet<PartitionId>,
    /// Partitions another reader took, not to be claimed again yet.
    pub(super) paused: &'a BTreeSet<PartitionId>,
    /// Now, in milliseconds since the epoch.
    pub(super) now: i64,
    /// How long a claim lives without renewal, in milliseconds.
    pub(super) expiry_ms: i64,
}

/// The claims to write to move towards an even share: `partitions / owners`, one more for as many
/// owners as the division leaves over. Below its share this process claims partitions nobody
/// owns (never claimed, released, or expired), in random order, and when none are left steals,
/// at random, from the most loaded owner above its share (or at it, while this process is below
/// the minimum). `random` gives the random numbers.
pub(super) fn claims(view: &View<'_>, random: &mut dyn FnMut() -> u64) -> Vec<Ownership> {
    let by_partition = by_partition(view.records);
    let mut others = other_owners(view);
    let share = Share::of(view.partitions, others.len() as u32 + 1);
    let mine = view.owned.len() as u32;
    let mut need = share.target(mine, &others) as usize;
    if need == 0 {
        return Vec::new();
    }
    let claim = |partition: PartitionId| Ownership {
        partition,
        owner: view.owner.to_owned(),
        last_modified: 0,
        version: by_partition.get(&partition).and_then(|r| r.version.clone()),
    };
    let mut free: Vec<PartitionId> = (0..view.partitions)
        .filter(|p| {
            !view.owned.contains(p)
                && !view.ended.contains(p)
                && !view.paused.contains(p)
                && by_partition
                    .get(p)
                    .is_none_or(|r| !r.is_active(view.now, view.expiry_ms))
        })
        .collect();
    shuffle(&mut free, random);
    let mut claims: Vec<Ownership> = free.into_iter().take(need).map(claim).collect();
    need -= claims.len();
    // Nothing free left: take from the owners above their share (or at it, while this process is
    // below the minimum).
    while need > 0 {
        let limit = if (mine + claims.len() as u32) < share.min {
            share.min
        } else {
            share.max
        };
        let Some((_, partitions)) = others
            .iter_mut()
            .filter(|(_, partitions)| partitions.len() as u32 > limit)
            .max_by_key(|(_, partitions)| partitions.len())
        else {
            break;
        };
        let index = (random() % partitions.len() as u64) as usize;
        let partition = partitions.swap_remove(index);
        if view.ended.contains(&partition) || view.paused.contains(&partition) {
            continue;
        }
        claims.push(claim(partition));
        need -= 1;
    }
    claims
}

/// The record of each partition (the last, if the store listed one twice).
fn by_partition(records: &[Ownership]) -> HashMap<PartitionId, &Ownership> {
    records.iter().map(|r| (r.partition, r)).collect()
}

/// The live owners other than this process, with the partitions each holds (that this process
/// does not think it owns), in the order the store listed them.
fn other_owners<'a>(view: &View<'a>) -> BTreeMap<&'a str, Vec<PartitionId>> {
    let mut others: BTreeMap<&str, Vec<PartitionId>> = BTreeMap::new();
    for record in view.records {
        if record.owner != view.owner
            && record.is_active(view.now, view.expiry_ms)
            && !view.owned.contains(&record.partition)
        {
            others
                .entry(record.owner.as_str())
                .or_default()
                .push(record.partition);
        }
    }
    others
}

/// An even share of the partitions between the live owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Share {
    /// What every owner gets at least.
    min: u32,
    /// How many owners get one more.
    extra: u32,
    /// What an owner gets at most.
    max: u32,
}

impl Share {
    fn of(partitions: u32, owners: u32) -> Share {
        let min = partitions / owners;
        let extra = partitions % owners;
        Share {
            min,
            extra,
            max: min + u32::from(extra > 0),
        }
    }

    /// How many partitions an owner holding `mine` should add: up to the minimum, or one more
    /// while fewer other owners than the division leaves over hold more than the minimum.
    fn target(self, mine: u32, others: &BTreeMap<&str, Vec<PartitionId>>) -> u32 {
        let others_above_min = others
            .values()
            .filter(|p| p.len() as u32 > self.min)
            .count() as u32;
        let target = if mine < self.min {
            self.min
        } else if self.extra > 0 && mine == self.min && others_above_min < self.extra {
            self.min + 1
        } else {
            mine
        };
        target.saturating_sub(mine)
    }
}

/// Fisher–Yates with the given random numbers: spreads competing processes over different free
/// partitions.
fn shuffle(items: &mut [PartitionId], random: &mut dyn FnMut() -> u64) {
    for i in (1..items.len()).rev() {
        let j = (random() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

/// xorshift64: the manager's random numbers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Xorshift(pub(super) u64);

impl Xorshift {
    /// The next number.
    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
