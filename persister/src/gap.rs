//! Checks that every partition is read without holes, and rewinds when the
//! broker skipped records.
//!
//! Why: tansu (0.6) answers a fetch that starts in the middle of a record
//! batch with the *next* batch, silently skipping the rest of the batch the
//! offset is in, and with nothing at all if that batch is the last one. A
//! consumer starts mid-batch whenever it resumes from a committed offset
//! (restart, rebalance) or from its own position (after a pause). Without a
//! check, those records would never be stored.
//!
//! The check relies on offsets being dense, which holds for our topic: its
//! producers are idempotent but not transactional, and it is not compacted.
//! A record whose offset is past the one expected means the broker skipped
//! some; the partition is then rewound to an earlier offset, further back each
//! time (8, 32, 128, ... before the expected offset) until a fetch starts at or
//! before the expected record, and records before it are dropped as already
//! handled. A partition that stays behind the broker's high watermark without
//! progress is rewound the same way. If even offset 0 does not bring the
//! expected record back, the hole is real and is accepted (with a warning), so
//! a broker with true gaps (transactions, compaction) cannot wedge the loop.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// How far before the expected offset the first rewind goes. Going too far
/// back costs little (those records are dropped on arrival); too little costs
/// a round trip per step.
const FIRST_STEP: i64 = 8;
/// How much further back each following rewind goes.
const STEP_GROWTH: i64 = 4;

/// What to do with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It is the next one: keep it.
    Accept,
    /// It was already handled (read again after a rewind): drop it.
    Skip,
    /// Records before it were skipped: drop it and seek the partition here.
    Rewind(i64),
    /// A real hole (the broker has no such offsets): keep it.
    AcceptGap { from: i64 },
}

#[derive(Debug)]
struct Part {
    /// The offset of the next record to keep; `None` until known.
    expected: Option<i64>,
    /// How far before `expected` the next rewind goes.
    step: i64,
    /// The last rewind went to offset 0.
    at_floor: bool,
    /// The last time a record was kept or the partition was (re)positioned.
    progress: Instant,
}

/// Per-partition read positions.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    parts: HashMap<i32, Part>,
}

impl Tracker {
    /// A partition was assigned and will be read from `start` (its committed
    /// offset; `None` when the group has none and reading starts at the
    /// beginning).
    pub(crate) fn assign(&mut self, partition: i32, start: Option<i64>, now: Instant) {
        self.parts.insert(
            partition,
            Part {
                expected: start,
                step: FIRST_STEP,
                at_floor: false,
                progress: now,
            },
        );
    }

    pub(crate) fn revoke(&mut self, partition: i32) {
        self.parts.remove(&partition);
    }

    /// Reading was paused; a stall is not the broker's fault meanwhile.
    pub(crate) fn touch_all(&mut self, now: Instant) {
        for part in self.parts.values_mut() {
            part.progress = now;
        }
    }

    /// Judges a record at `offset` of `partition`.
    pub(crate) fn on_record(&mut self, partition: i32, offset: i64, now: Instant) -> Verdict {
        let part = self.parts.entry(partition).or_insert(Part {
            expected: None,
            step: FIRST_STEP,
            at_floor: false,
            progress: now,
        });
        let expected = match part.expected {
            None => offset,
            Some(e) => e,
        };
        if offset < expected {
            return Verdict::Skip;
        }
        if offset == expected {
            part.expected = Some(offset + 1);
            part.step = FIRST_STEP;
            part.at_floor = false;
            part.progress = now;
            return Verdict::Accept;
        }
        if part.at_floor {
            part.expected = Some(offset + 1);
            part.step = FIRST_STEP;
            part.at_floor = false;
            part.progress = now;
            return Verdict::AcceptGap { from: expected };
        }
        Verdict::Rewind(Self::rewind(part, expected, now))
    }

    fn rewind(part: &mut Part, expected: i64, now: Instant) -> i64 {
        let target = (expected - part.step).max(0);
        part.step = part.step.saturating_mul(STEP_GROWTH);
        part.at_floor = target == 0;
        part.progress = now;
        target
    }

    /// Partitions that have made no progress for `stall` although the broker
    /// has records past the expected offset (`high` gives the high watermark
    /// per partition, as last seen in fetch responses). Returns where to
    /// rewind each.
    pub(crate) fn stalled(
        &mut self,
        high: impl Fn(i32) -> Option<i64>,
        stall: Duration,
        now: Instant,
    ) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (&p, part) in &mut self.parts {
            let Some(expected) = part.expected else {
                continue;
            };
            let Some(high) = high(p) else { continue };
            // Right after a rewind, a partition that stays silent is likely
            // still before its batch: look again sooner.
            let limit = if part.step > FIRST_STEP {
                stall / 4
            } else {
                stall
            };
            if high > expected && now.duration_since(part.progress) >= limit {
                if part.at_floor {
                    // Even offset 0 did not help; start over rather than
                    // give up on records the broker says it has.
                    part.step = FIRST_STEP;
                }
                out.push((p, Self::rewind(part, expected, now)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dense_records_are_accepted_and_repeats_skipped() {
        let now = Instant::now();
        let mut t = Tracker::default();
        t.assign(0, Some(10), now);
        assert_eq!(t.on_record(0, 10, now), Verdict::Accept);
        assert_eq!(t.on_record(0, 11, now), Verdict::Accept);
        assert_eq!(t.on_record(0, 5, now), Verdict::Skip);
        assert_eq!(t.on_record(0, 11, now), Verdict::Skip);
        assert_eq!(t.on_record(0, 12, now), Verdict::Accept);
        // Unknown start: the first record sets it.
        t.assign(1, None, now);
        assert_eq!(t.on_record(1, 40, now), Verdict::Accept);
        assert_eq!(t.on_record(1, 41, now), Verdict::Accept);
    }

    #[test]
    fn a_skip_rewinds_further_each_time_until_the_record_comes_back() {
        let now = Instant::now();
        let mut t = Tracker::default();
        t.assign(0, Some(500), now);
        // The broker skipped 500..599 (a fetch from mid-batch).
        assert_eq!(t.on_record(0, 600, now), Verdict::Rewind(492));
        assert_eq!(t.on_record(0, 600, now), Verdict::Rewind(468));
        assert_eq!(t.on_record(0, 600, now), Verdict::Rewind(372));
        // Now the fetch starts at the batch holding 500.
        assert_eq!(t.on_record(0, 400, now), Verdict::Skip);
        assert_eq!(t.on_record(0, 499, now), Verdict::Skip);
        assert_eq!(t.on_record(0, 500, now), Verdict::Accept);
        // The next skip starts over with a small step.
        assert_eq!(t.on_record(0, 560, now), Verdict::Rewind(493));
    }

    #[test]
    fn a_hole_that_survives_offset_zero_is_accepted() {
        let now = Instant::now();
        let mut t = Tracker::default();
        t.assign(0, Some(20), now);
        assert_eq!(t.on_record(0, 27, now), Verdict::Rewind(12));
        assert_eq!(t.on_record(0, 27, now), Verdict::Rewind(0));
        assert_eq!(t.on_record(0, 27, now), Verdict::AcceptGap { from: 20 });
        assert_eq!(t.on_record(0, 28, now), Verdict::Accept);
    }

    #[test]
    fn a_stalled_partition_behind_the_high_watermark_is_rewound() {
        let start = Instant::now();
        let mut t = Tracker::default();
        t.assign(0, Some(30), start);
        t.assign(1, Some(8), start);
        let high = |p| Some(if p == 0 { 40 } else { 8 });
        let stall = Duration::from_secs(2);
        assert!(t.stalled(high, stall, start).is_empty());
        let later = start + stall;
        // Partition 1 is caught up; partition 0 is stuck behind 40.
        assert_eq!(t.stalled(high, stall, later), vec![(0, 22)]);
        // Not again until a shorter period passes, as a rewind is under way.
        assert!(t.stalled(high, stall, later).is_empty());
        assert_eq!(t.stalled(high, stall, later + stall / 4), vec![(0, 0)]);
        t.revoke(0);
        assert!(t.stalled(high, stall, later + stall * 3).is_empty());
    }
}
