//! The offsets ledger: which partitions this instance owns and, per
//! partition, the offset one past the last stored record and the one last
//! committed.
//!
//! **Invariant:** an offset is committed only once every record below it in
//! its partition is stored. Writers mark a partition's offsets stored in
//! order (one lane writes a partition, one batch at a time), and commits only
//! cover partitions this instance owns now.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use metrics::counter;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Notify;

use crate::metrics::{self as m, kind};

#[derive(Debug, Default)]
struct Offsets {
    /// Partitions this instance owns now.
    assigned: BTreeSet<i32>,
    /// The offset one past the last stored record, per partition.
    stored: BTreeMap<i32, i64>,
    /// The offset last committed by this instance, per partition.
    committed: BTreeMap<i32, i64>,
    /// Partitions revoked since the reader last looked.
    revoked: BTreeSet<i32>,
    /// Partitions assigned since the reader last looked.
    added: BTreeSet<i32>,
    /// A rebalance happened since the reader last looked.
    rebalanced: bool,
}

/// What changed in a rebalance, for the reader.
#[derive(Debug, Default)]
pub(crate) struct Rebalanced {
    pub(crate) revoked: BTreeSet<i32>,
    pub(crate) added: BTreeSet<i32>,
}

/// The offsets of one instance, shared by the reader, the writers and the
/// rebalance callbacks.
#[derive(Debug)]
pub(crate) struct Ledger {
    topic: String,
    offsets: Mutex<Offsets>,
    /// Woken when offsets were stored or a commit failed, so that the loop
    /// commits.
    pub(crate) commit_wanted: Notify,
}

impl Ledger {
    pub(crate) fn new(topic: String) -> Self {
        Self {
            topic,
            offsets: Mutex::default(),
            commit_wanted: Notify::new(),
        }
    }

    fn offsets(&self) -> MutexGuard<'_, Offsets> {
        self.offsets.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn assigned(&self) -> Vec<i32> {
        self.offsets().assigned.iter().copied().collect()
    }

    /// `partitions` are ours now; their offsets start afresh.
    pub(crate) fn assign(&self, partitions: &[i32]) {
        let mut o = self.offsets();
        for &p in partitions {
            o.assigned.insert(p);
            o.stored.remove(&p);
            o.committed.remove(&p);
            o.added.insert(p);
            o.revoked.remove(&p);
        }
        o.rebalanced = true;
    }

    /// `partitions` are no longer ours.
    pub(crate) fn revoke(&self, partitions: &[i32]) {
        let mut o = self.offsets();
        for &p in partitions {
            o.assigned.remove(&p);
            o.stored.remove(&p);
            o.committed.remove(&p);
            o.revoked.insert(p);
            o.added.remove(&p);
        }
        o.rebalanced = true;
    }

    /// What changed since the last call, if a rebalance happened.
    pub(crate) fn take_rebalance(&self) -> Option<Rebalanced> {
        let mut o = self.offsets();
        if !o.rebalanced {
            return None;
        }
        o.rebalanced = false;
        Some(Rebalanced {
            revoked: std::mem::take(&mut o.revoked),
            added: std::mem::take(&mut o.added),
        })
    }

    /// Records that every record below `next` is stored, per partition.
    pub(crate) fn mark_stored(&self, next: &BTreeMap<i32, i64>) {
        let mut o = self.offsets();
        for (&p, &n) in next {
            if o.assigned.contains(&p) {
                let stored = o.stored.entry(p).or_insert(n);
                *stored = (*stored).max(n);
            }
        }
        drop(o);
        self.commit_wanted.notify_one();
    }

    /// Stored offsets not yet committed, of `partitions` or of every owned one.
    pub(crate) fn uncommitted(&self, partitions: Option<&[i32]>) -> Vec<(i32, i64)> {
        let o = self.offsets();
        o.stored
            .iter()
            .filter(|(p, _)| match partitions {
                Some(ps) => ps.contains(p),
                None => o.assigned.contains(p),
            })
            .filter(|(p, next)| o.committed.get(p).is_none_or(|c| c < next))
            .map(|(&p, &next)| (p, next))
            .collect()
    }

    fn mark_committed(&self, list: &[(i32, i64)]) {
        let mut o = self.offsets();
        for &(p, next) in list {
            if o.assigned.contains(&p) {
                o.committed.insert(p, next);
            }
        }
    }

    /// Forgets commits that failed, so that the loop sends them again.
    pub(crate) fn commit_failed(&self, offsets: &TopicPartitionList) {
        let mut o = self.offsets();
        for e in offsets.elements_for_topic(&self.topic) {
            if let Offset::Offset(off) = e.offset() {
                if o.committed.get(&e.partition()) == Some(&off) {
                    o.committed.remove(&e.partition());
                }
            }
        }
        drop(o);
        self.commit_wanted.notify_one();
    }

    fn tpl(&self, list: &[(i32, i64)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::with_capacity(list.len());
        for &(p, next) in list {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(next))
                .expect("an absolute offset is valid");
        }
        tpl
    }

    /// The partitions of `tpl` in the room topic.
    pub(crate) fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    /// Commits `list` and records it as committed. Returns false on error.
    pub(crate) fn commit<C: ConsumerContext>(
        &self,
        consumer: &impl Consumer<C>,
        list: &[(i32, i64)],
        mode: CommitMode,
    ) -> bool {
        if list.is_empty() {
            return true;
        }
        match consumer.commit(&self.tpl(list), mode) {
            Ok(()) => {
                tracing::debug!(offsets = ?list, ?mode, "offsets committed");
                counter!(m::COMMITS).increment(1);
                self.mark_committed(list);
                true
            }
            Err(err) => {
                counter!(m::ERRORS, "kind" => kind::KAFKA_COMMIT).increment(1);
                tracing::warn!(error = %err, offsets = ?list, "offset commit failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_owned_partitions_are_committed() {
        let ledger = Ledger::new("t".into());
        ledger.assign(&[0, 1]);
        ledger.mark_stored(&BTreeMap::from([(0, 20), (1, 5)]));
        assert_eq!(ledger.uncommitted(None), vec![(0, 20), (1, 5)]);
        ledger.mark_committed(&[(0, 20), (1, 5)]);
        assert!(ledger.uncommitted(None).is_empty());
        ledger.mark_stored(&BTreeMap::from([(1, 9)]));
        assert_eq!(ledger.uncommitted(None), vec![(1, 9)]);
        // Unassigned partitions are never committed by this instance.
        ledger.mark_stored(&BTreeMap::from([(7, 3)]));
        assert_eq!(ledger.uncommitted(None), vec![(1, 9)]);
        // A stored offset never goes back.
        ledger.mark_stored(&BTreeMap::from([(1, 6)]));
        assert_eq!(ledger.uncommitted(None), vec![(1, 9)]);
        ledger.revoke(&[1]);
        assert!(ledger.uncommitted(None).is_empty());
        let r = ledger.take_rebalance().unwrap();
        assert_eq!(r.revoked, BTreeSet::from([1]));
        assert_eq!(r.added, BTreeSet::from([0]));
        assert!(ledger.take_rebalance().is_none());
    }
}
