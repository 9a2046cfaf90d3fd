//! The reading half of the pipeline: records from Kafka become entries with
//! their stream positions, queued per lane until a batch closes.
//!
//! Positions come from the partition's incarnation ([`confab_common::stream`]).
//! A partition is read again from the start of its log when its incarnation
//! changes: the layout watcher says so, a genesis of another incarnation
//! arrives, a record's stamp disagrees and a check confirms it, or offsets go
//! back (the topic was created again). Its pending records are dropped
//! first, so no row is ever stored with a position of the wrong incarnation.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use confab_common::position::{Base, KafkaOffset};
use confab_common::record::TopicRecord;
use confab_common::stream::{Layout, LayoutWatch};
use metrics::{counter, gauge};
use rdkafka::consumer::Consumer;
use rdkafka::Offset;
use tokio::time::Instant;

use crate::batch::{self, Body, Entry};
use crate::group::Kafka;
use crate::metrics::{self as m, kind};
use crate::state::Shared;
use crate::writers::lane_of;

/// How soon a disagreeing stamp may trigger another layout check.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// Where the reader is in one owned partition.
#[derive(Debug, Clone, Copy)]
struct Reading {
    base: Option<Base>,
    /// The last Kafka offset read, or -1.
    last: i64,
}

pub(crate) struct Reader {
    consumer: Arc<Kafka>,
    shared: Arc<Shared>,
    topic: String,
    layout: LayoutWatch,
    /// Records read, oldest first, with the time each arrived, per lane.
    pub(crate) lanes: Vec<VecDeque<(Instant, Entry)>>,
    /// Whether the owned partitions are paused.
    pub(crate) paused: bool,
    reading: BTreeMap<i32, Reading>,
}

impl Reader {
    pub(crate) fn new(
        consumer: Arc<Kafka>,
        shared: Arc<Shared>,
        topic: String,
        layout: LayoutWatch,
        lanes: usize,
    ) -> Self {
        Self {
            consumer,
            shared,
            topic,
            layout,
            lanes: (0..lanes.max(1)).map(|_| VecDeque::new()).collect(),
            paused: false,
            reading: BTreeMap::new(),
        }
    }

    /// Records waiting in every lane.
    pub(crate) fn pending(&self) -> usize {
        self.lanes.iter().map(VecDeque::len).sum()
    }

    fn drop_pending(&mut self, partition: i32) -> usize {
        let n = self.lanes.len();
        let lane = &mut self.lanes[lane_of(partition, n)];
        let before = lane.len();
        lane.retain(|(_, e)| e.partition != partition);
        before - lane.len()
    }

    /// Applies a rebalance the callbacks recorded: drops unstored records of
    /// revoked partitions and learns the incarnation of assigned ones.
    pub(crate) fn apply_rebalance(&mut self) {
        let Some(news) = self.shared.ledger.take_rebalance() else {
            return;
        };
        for &p in &news.revoked {
            let dropped = self.drop_pending(p);
            self.reading.remove(&p);
            tracing::debug!(
                partition = p,
                dropped,
                "dropped unstored records of a revoked partition"
            );
        }
        let layout = self.layout.layout();
        for &p in &news.added {
            let base = layout.as_ref().and_then(|l| l.base(p));
            self.reading.insert(p, Reading { base, last: -1 });
        }
        if self.paused {
            // A new assignment starts unpaused.
            self.set_paused(true);
        }
    }

    /// Starts `partition` over in incarnation `base`, from its first record.
    fn restart(&mut self, partition: i32, base: Option<Base>) {
        let dropped = self.drop_pending(partition);
        tracing::warn!(
            partition,
            ?base,
            dropped,
            "partition incarnation changed: reading it again from its start"
        );
        counter!(m::INCARNATION_CHANGES).increment(1);
        self.reading.insert(partition, Reading { base, last: -1 });
        if let Err(err) = self.consumer.seek(
            &self.topic,
            partition,
            Offset::Beginning,
            Duration::from_secs(5),
        ) {
            counter!(m::ERRORS, "kind" => kind::SEEK).increment(1);
            tracing::warn!(partition, error = %err, "seek to the partition start failed");
        }
    }

    /// Restarts every owned partition whose incarnation `layout` says changed.
    pub(crate) fn follow(&mut self, layout: &Layout) {
        let changed: Vec<(i32, Option<Base>)> = self
            .reading
            .iter()
            .filter_map(|(&p, r)| {
                let base = layout.base(p);
                (base.is_some() && base != r.base).then_some((p, base))
            })
            .collect();
        for (p, base) in changed {
            self.restart(p, base);
        }
    }

    /// Checks the layout (at once when `force`) and follows it. Returns
    /// whether `partition` was restarted.
    pub(crate) async fn check(&mut self, partition: i32, force: bool) -> bool {
        let state = if force {
            self.layout.refresh().await
        } else {
            self.layout.refresh_unless_recent(RECHECK_AFTER).await
        };
        let before = self.reading.get(&partition).map(|r| r.base);
        if let Some(layout) = state.layout() {
            let layout = Arc::clone(layout);
            self.follow(&layout);
        }
        self.reading.get(&partition).map(|r| r.base) != before
    }

    /// Reads one record into its lane. Returns `Some(force)` instead when the
    /// layout must be checked first (`checked` is false).
    pub(crate) fn on_record(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        checked: bool,
    ) -> Option<bool> {
        let Some(reading) = self.reading.get(&partition).copied() else {
            // Not ours (a record fetched before a revoke took effect).
            return None;
        };
        if offset <= reading.last {
            // Offsets went back without a seek of ours: the log may have been
            // replaced. Otherwise a record already read.
            return (!checked).then_some(true);
        }
        let decoded = payload.map(|b| TopicRecord::decode(key, b));
        if !checked {
            match &decoded {
                Some(Ok(TopicRecord::Genesis(g))) if Some(Base(g.base)) != reading.base => {
                    return Some(true)
                }
                Some(Ok(TopicRecord::Room(r)))
                    if r.base.is_some_and(|b| Some(Base(b)) != reading.base) =>
                {
                    return Some(false)
                }
                _ => {}
            }
        }
        let position = reading.base.map(|b| b.position(KafkaOffset(offset)));
        let entry = batch::entry(partition, offset, position, key, payload, decoded);
        if let Body::Dead(dead) = &entry.body {
            counter!(m::POISON).increment(1);
            self.shared.count_poison(1);
            tracing::warn!(partition, offset, error = %dead.error, "poison record, storing it as a dead letter");
        }
        if let Some(r) = self.reading.get_mut(&partition) {
            r.last = offset;
        }
        let lanes = self.lanes.len();
        self.lanes[lane_of(partition, lanes)].push_back((Instant::now(), entry));
        None
    }

    /// Pauses or resumes every owned partition.
    pub(crate) fn set_paused(&mut self, paused: bool) {
        let consumer = &self.consumer;
        let result = consumer.assignment().and_then(|tpl| {
            if paused {
                consumer.pause(&tpl)
            } else {
                consumer.resume(&tpl)
            }
        });
        self.paused = paused;
        gauge!(m::PAUSED).set(if paused { 1.0 } else { 0.0 });
        match result {
            Ok(()) => tracing::debug!(paused, "consumption paused or resumed"),
            Err(err) => {
                counter!(m::ERRORS, "kind" => kind::PAUSE).increment(1);
                tracing::warn!(error = %err, paused, "pausing or resuming partitions failed");
            }
        }
    }
}
