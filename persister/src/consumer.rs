//! The consumer loop, the writer task and the offsets they share.
//!
//! # How records flow
//!
//! The consumer loop reads records and queues them in `pending`. A batch
//! closes at `batch_size` records or once its oldest record has waited
//! `batch_time`; it goes through a channel of capacity one to the writer task,
//! so at most two batches are ahead of the loop: one being written and one
//! waiting. The writer stores a batch (retrying with backoff until it
//! succeeds), then records, per partition, the offset one past the batch's
//! last record as *stored*. The loop commits stored offsets to Kafka. Offsets
//! are never committed before the rows are in PostgreSQL, and the writer
//! stores batches in the order they were read, so a committed offset never
//! passes a record that is not stored.
//!
//! # Backpressure and database outages
//!
//! When `pending` reaches four batches the loop stops calling `recv()`;
//! librdkafka's queue fills and fetching stops by itself. If that lasts more
//! than a second (PostgreSQL is down or very slow) the loop pauses every
//! assigned partition and calls `recv()` again, so that the consumer stays in
//! the group and serves rebalances. It resumes once `pending` is down to one
//! batch; librdkafka then fetches again from the last record it handed out
//! (and `gap` catches a broker that skips records there).
//!
//! # Rebalances (eager protocol)
//!
//! When partitions are revoked, librdkafka calls `pre_rebalance` inside
//! `recv()`. There the persister synchronously commits the stored offsets of
//! the revoked partitions, then forgets them. Records of those partitions that
//! are not yet stored are not committed by this instance afterwards: records
//! still in `pending` are dropped, and a batch already handed to the writer is
//! stored but its offsets are not committed (commits only cover assigned
//! partitions). The new owner starts at the committed offset and reads those
//! records again; storing a record twice is a no-op thanks to the key
//! `(room_id, stream_offset)`, so the table has neither gaps nor duplicates.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::batch::{self, Batch, Body, Entry};
use crate::config::{Config, Crash};
use crate::gap::{Tracker, Verdict};
use crate::metrics::{self as m, kind};
use crate::store::{self, Store};
use crate::PersisterError;

/// How often the writer checks the database while it has nothing to write.
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// How often the loop retries commits that failed.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Offsets per partition, shared by the loop, the writer and the rebalance
/// callbacks.
#[derive(Debug, Default)]
struct Offsets {
    /// Partitions this instance owns now.
    assigned: BTreeSet<i32>,
    /// The offset one past the last stored record, per partition.
    stored: BTreeMap<i32, i64>,
    /// The offset last committed by this instance, per partition.
    committed: BTreeMap<i32, i64>,
    /// Partitions revoked since the loop last looked, whose pending records
    /// must be dropped.
    revoked: BTreeSet<i32>,
    /// Partitions assigned since the loop last looked, with the committed
    /// offset reading starts from (`None`: the group has none).
    starts: Vec<(i32, Option<i64>)>,
    /// A rebalance happened since the loop last looked.
    rebalanced: bool,
    /// The sequence number of the next batch whose offsets may be marked
    /// stored.
    next_seq: u64,
    /// Batches stored out of order, waiting for earlier ones.
    finished: BTreeMap<u64, BTreeMap<i32, i64>>,
}

/// What changed in a rebalance, for the loop.
#[derive(Debug, Default)]
pub(crate) struct Rebalanced {
    revoked: BTreeSet<i32>,
    starts: Vec<(i32, Option<i64>)>,
}

/// State shared by the parts of one persister instance.
#[derive(Debug)]
pub(crate) struct Shared {
    topic: String,
    offsets: Mutex<Offsets>,
    /// Woken when the writer has stored a batch or a commit failed, so that
    /// the loop commits.
    commit_wanted: Notify,
    db_up: AtomicBool,
    /// The high watermark per partition from the last fetch responses
    /// (librdkafka statistics). Unlike tansu's ListOffsets, it is exact.
    high: Mutex<BTreeMap<i32, i64>>,
    persisted: AtomicU64,
    /// Batches committed in PostgreSQL, for the crash test hook.
    db_commits: AtomicU64,
    poison: AtomicU64,
    batches: AtomicU64,
}

impl Shared {
    pub(crate) fn new(topic: String) -> Self {
        Self {
            topic,
            offsets: Mutex::default(),
            commit_wanted: Notify::new(),
            db_up: AtomicBool::new(false),
            high: Mutex::default(),
            persisted: AtomicU64::new(0),
            db_commits: AtomicU64::new(0),
            poison: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        }
    }

    fn offsets(&self) -> std::sync::MutexGuard<'_, Offsets> {
        self.offsets.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn db_up(&self) -> bool {
        self.db_up.load(Ordering::Relaxed)
    }

    fn set_db_up(&self, up: bool) {
        let was = self.db_up.swap(up, Ordering::Relaxed);
        gauge!(m::DATABASE_UP).set(if up { 1.0 } else { 0.0 });
        if was != up {
            if up {
                tracing::info!("database is up");
            } else {
                tracing::warn!("database is down");
            }
        }
    }

    pub(crate) fn persisted(&self) -> u64 {
        self.persisted.load(Ordering::Relaxed)
    }

    pub(crate) fn poison(&self) -> u64 {
        self.poison.load(Ordering::Relaxed)
    }

    pub(crate) fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }

    pub(crate) fn assigned(&self) -> Vec<i32> {
        self.offsets().assigned.iter().copied().collect()
    }

    /// Records that batch `seq` is stored. Its offsets count as stored once
    /// every earlier batch is stored too, so that a committed offset never
    /// passes a record still being written by another writer.
    fn mark_stored(&self, seq: u64, next_offsets: BTreeMap<i32, i64>) {
        let mut guard = self.offsets();
        let o = &mut *guard;
        o.finished.insert(seq, next_offsets);
        while let Some(offsets) = o.finished.remove(&o.next_seq) {
            o.next_seq += 1;
            for (p, next) in offsets {
                let stored = o.stored.entry(p).or_insert(next);
                *stored = (*stored).max(next);
            }
        }
        drop(guard);
        self.commit_wanted.notify_one();
    }

    /// Stored offsets of `partitions` not yet committed by this instance.
    fn uncommitted(&self, partitions: Option<&[i32]>) -> Vec<(i32, i64)> {
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

    fn tpl(&self, list: &[(i32, i64)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::with_capacity(list.len());
        for &(p, next) in list {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(next))
                .expect("an absolute offset is valid");
        }
        tpl
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }

    /// What changed since the last call, if a rebalance happened.
    fn take_rebalance(&self) -> Option<Rebalanced> {
        let mut o = self.offsets();
        if !o.rebalanced {
            return None;
        }
        o.rebalanced = false;
        Some(Rebalanced {
            revoked: std::mem::take(&mut o.revoked),
            starts: std::mem::take(&mut o.starts),
        })
    }

    fn high(&self, partition: i32) -> Option<i64> {
        self.high
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&partition)
            .copied()
    }
}

/// Commits `list` and records it as committed. Returns false on error.
fn commit<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    shared: &Shared,
    list: &[(i32, i64)],
    mode: CommitMode,
) -> bool {
    if list.is_empty() {
        return true;
    }
    match consumer.commit(&shared.tpl(list), mode) {
        Ok(()) => {
            tracing::debug!(offsets = ?list, ?mode, "offsets committed");
            counter!(m::COMMITS).increment(1);
            shared.mark_committed(list);
            true
        }
        Err(err) => {
            counter!(m::ERRORS, "kind" => kind::KAFKA_COMMIT).increment(1);
            tracing::warn!(error = %err, offsets = ?list, "offset commit failed");
            false
        }
    }
}

/// The librdkafka callbacks.
pub(crate) struct Ctx {
    pub(crate) shared: Arc<Shared>,
}

impl ClientContext for Ctx {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.shared.topic) else {
            return;
        };
        let mut high = self.shared.high.lock().unwrap_or_else(|e| e.into_inner());
        for (&p, part) in &topic.partitions {
            if p >= 0 && part.hi_offset >= 0 {
                high.insert(p, part.hi_offset);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        counter!(m::ERRORS, "kind" => kind::KAFKA_CLIENT).increment(1);
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts = self.shared.partitions(tpl);
                // Commit what is stored for the partitions we are losing; the
                // new owner starts from there.
                let list = self.shared.uncommitted(Some(&parts));
                let ok = commit(consumer, &self.shared, &list, CommitMode::Sync);
                let mut o = self.shared.offsets();
                for p in &parts {
                    o.assigned.remove(p);
                    o.stored.remove(p);
                    o.committed.remove(p);
                    o.revoked.insert(*p);
                }
                o.rebalanced = true;
                drop(o);
                tracing::info!(partitions = ?parts, committed = ?list, commit_ok = ok, "partitions revoked");
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(err) => {
                counter!(m::ERRORS, "kind" => kind::KAFKA_CLIENT).increment(1);
                tracing::warn!(error = %err, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = self.shared.partitions(tpl);
            // Where reading starts, so that the loop can tell when the broker
            // skips records (see `gap`).
            let committed = consumer
                .committed_offsets((*tpl).clone(), Duration::from_secs(5))
                .map_err(|err| tracing::warn!(error = %err, "cannot read committed offsets"))
                .ok();
            let mut o = self.shared.offsets();
            for p in &parts {
                o.assigned.insert(*p);
                o.stored.remove(p);
                o.committed.remove(p);
                let start = committed.as_ref().and_then(|c| {
                    match c.find_partition(&self.shared.topic, *p).map(|e| e.offset()) {
                        Some(Offset::Offset(off)) => Some(off),
                        _ => None,
                    }
                });
                o.starts.push((*p, start));
            }
            o.rebalanced = true;
            drop(o);
            tracing::info!(partitions = ?parts, "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        tracing::debug!(?result, ?offsets, "commit callback");
        if let Err(err) = result {
            counter!(m::ERRORS, "kind" => kind::KAFKA_COMMIT).increment(1);
            tracing::warn!(error = %err, "offset commit failed, will retry");
            // Forget the failed commits so that the loop sends them again.
            let mut o = self.shared.offsets();
            for e in offsets.elements_for_topic(&self.shared.topic) {
                if let Offset::Offset(off) = e.offset() {
                    if o.committed.get(&e.partition()) == Some(&off) {
                        o.committed.remove(&e.partition());
                    }
                }
            }
            drop(o);
            self.shared.commit_wanted.notify_one();
        }
    }
}

pub(crate) type Kafka = StreamConsumer<Ctx>;

/// Why the writers stopped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WriterExit {
    /// Their channel closed: every batch they got is stored.
    Done,
    /// The crash test hook fired.
    Crashed,
    /// A writer panicked.
    Panicked(String),
}

/// Runs `n` writers, each with its own connection, taking batches from one
/// channel. Returns when all are done, or as soon as one crashes.
pub(crate) async fn write_batches(
    n: usize,
    config: WriterConfig,
    batches: mpsc::Receiver<Batch>,
    shared: Arc<Shared>,
) -> WriterExit {
    let batches = Arc::new(tokio::sync::Mutex::new(batches));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..n.max(1) {
        let store = Store::new(config.database_url.clone(), shared.topic.clone());
        writers.spawn(write(
            store,
            batches.clone(),
            shared.clone(),
            config.clone(),
        ));
    }
    while let Some(exit) = writers.join_next().await {
        let exit = match exit {
            Ok(WriterExit::Done) => continue,
            Ok(exit) => exit,
            Err(err) => WriterExit::Panicked(err.to_string()),
        };
        writers.abort_all();
        return exit;
    }
    WriterExit::Done
}

/// What the writers need to know.
#[derive(Debug, Clone)]
pub(crate) struct WriterConfig {
    pub(crate) database_url: String,
    pub(crate) retry_max: Duration,
    pub(crate) crash: Option<Crash>,
}

/// One writer: stores batches, each until it succeeds.
async fn write(
    mut store: Store,
    batches: Arc<tokio::sync::Mutex<mpsc::Receiver<Batch>>>,
    shared: Arc<Shared>,
    config: WriterConfig,
) -> WriterExit {
    let (retry_max, crash) = (config.retry_max, config.crash);
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let next = async { batches.lock().await.recv().await };
        let batch = tokio::select! {
            biased;
            batch = next => match batch {
                Some(batch) => batch,
                None => return WriterExit::Done,
            },
            _ = ping.tick() => {
                let result = store.ping().await;
                if let Err(err) = &result {
                    counter!(m::ERRORS, "kind" => kind::DATABASE).increment(1);
                    tracing::debug!(error = %err, "database ping failed");
                }
                shared.set_db_up(result.is_ok());
                continue;
            }
        };
        let (stored, took) = store::store_with_retry(&mut store, &batch, retry_max, |_| {
            counter!(m::ERRORS, "kind" => kind::DATABASE).increment(1);
            shared.set_db_up(false);
        })
        .await;
        shared.set_db_up(true);
        ping.reset();

        let db_commits = shared.db_commits.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(crash) = crash {
            if db_commits == crash.after {
                tracing::error!(
                    db_commits,
                    "test hook: crashing after the database commit, before the offset commit"
                );
                if crash.abort {
                    std::process::abort();
                }
                return WriterExit::Crashed;
            }
        }

        let good = batch.rows.len() as u64;
        histogram!(m::BATCH_SIZE).record(batch.len() as f64);
        histogram!(m::INSERT_SECONDS).record(took.as_secs_f64());
        counter!(m::PERSISTED).increment(good - stored.refused);
        counter!(m::DUPLICATES).increment(good - stored.refused - stored.inserted);
        if stored.refused > 0 {
            counter!(m::POISON).increment(stored.refused);
            shared.poison.fetch_add(stored.refused, Ordering::Relaxed);
        }
        let now = confab_common::record::now_ms();
        let latency = histogram!(m::PUBLISH_TO_PERSIST);
        for &ts in &batch.ts_ms {
            latency.record((now - ts).max(0) as f64 / 1000.0);
        }
        shared
            .persisted
            .fetch_add(good - stored.refused, Ordering::Relaxed);
        shared.batches.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            records = batch.len(),
            inserted = stored.inserted,
            ?took,
            "batch stored"
        );
        shared.mark_stored(batch.seq, batch.next_offsets);
    }
}

/// How often the loop looks for partitions the broker left behind.
const STALL_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How long the loop may stop reading because writes fall behind before it
/// pauses the partitions (and polls again, to stay in the group).
const PAUSE_AFTER: Duration = Duration::from_secs(1);
/// How long a partition may stay behind the high watermark without progress
/// before it is rewound.
const STALL_AFTER: Duration = Duration::from_secs(1);

/// The reading half of the loop: records read but not yet handed to the
/// writer, and the read positions.
struct Reader {
    consumer: Arc<Kafka>,
    shared: Arc<Shared>,
    /// Records read, oldest first, with the time each arrived.
    pending: VecDeque<(Instant, Entry)>,
    /// Whether the assigned partitions are paused.
    paused: bool,
    tracker: Tracker,
}

impl Reader {
    /// Applies a rebalance the callbacks recorded: drops unstored records of
    /// revoked partitions and learns where assigned ones start.
    fn apply_rebalance(&mut self) {
        let Some(news) = self.shared.take_rebalance() else {
            return;
        };
        if !news.revoked.is_empty() {
            let before = self.pending.len();
            self.pending
                .retain(|(_, e)| !news.revoked.contains(&e.partition));
            tracing::debug!(
                dropped = before - self.pending.len(),
                "dropped unstored records of revoked partitions"
            );
            for p in &news.revoked {
                self.tracker.revoke(*p);
            }
        }
        let now = Instant::now();
        for (p, start) in news.starts {
            self.tracker.assign(p, start, now);
        }
        if self.paused {
            // A new assignment starts unpaused.
            self.set_paused(true);
        }
    }

    fn on_record(
        &mut self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) {
        match self.tracker.on_record(partition, offset, Instant::now()) {
            Verdict::Accept => {}
            Verdict::Skip => return,
            Verdict::Rewind(to) => {
                tracing::debug!(
                    partition,
                    offset,
                    rewind_to = to,
                    "the broker skipped records, rewinding"
                );
                self.seek(partition, to);
                return;
            }
            Verdict::AcceptGap { from } => {
                tracing::warn!(
                    partition,
                    from,
                    to = offset,
                    "offsets missing from the partition, carrying on"
                );
            }
        }
        let entry = batch::decode(partition, offset, key, payload);
        if let Body::Dead(dead) = &entry.body {
            counter!(m::POISON).increment(1);
            self.shared.poison.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(partition, offset, error = %dead.error, "poison record, storing it as a dead letter");
        }
        self.pending.push_back((Instant::now(), entry));
    }

    /// Rewinds partitions the broker left behind its high watermark. `full`:
    /// the loop is not reading because it has enough records queued.
    fn check_stalls(&mut self, full: bool) {
        if self.paused || full {
            // Not the broker's fault.
            self.tracker.touch_all(Instant::now());
            return;
        }
        let shared = &self.shared;
        let stalled = self
            .tracker
            .stalled(|p| shared.high(p), STALL_AFTER, Instant::now());
        for (p, to) in stalled {
            tracing::debug!(
                partition = p,
                rewind_to = to,
                "partition stalled behind the high watermark, rewinding"
            );
            self.seek(p, to);
        }
    }

    fn seek(&self, partition: i32, offset: i64) {
        counter!(m::REWINDS).increment(1);
        if let Err(err) = self.consumer.seek(
            &self.shared.topic,
            partition,
            Offset::Offset(offset),
            Duration::from_secs(1),
        ) {
            counter!(m::ERRORS, "kind" => kind::SEEK).increment(1);
            tracing::warn!(partition, offset, error = %err, "seek failed");
        }
    }

    /// Pauses or resumes every assigned partition.
    fn set_paused(&mut self, paused: bool) {
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
        if !paused {
            self.tracker.touch_all(Instant::now());
        }
        match result {
            Ok(()) => tracing::debug!(paused, "consumption paused or resumed"),
            Err(err) => {
                counter!(m::ERRORS, "kind" => kind::PAUSE).increment(1);
                tracing::warn!(error = %err, paused, "pausing or resuming partitions failed");
            }
        }
    }
}

/// The error for a writer that stopped while the loop still ran.
fn writer_stopped(exit: Result<WriterExit, tokio::task::JoinError>) -> PersisterError {
    match exit {
        Ok(WriterExit::Crashed) => PersisterError::InjectedCrash,
        Ok(WriterExit::Done) => PersisterError::WriterStopped("its channel closed".into()),
        Ok(WriterExit::Panicked(err)) => PersisterError::WriterStopped(err),
        Err(err) => PersisterError::WriterStopped(err.to_string()),
    }
}

/// The consumer loop. Returns when `shutdown` is cancelled (after storing
/// and committing what it read, within the grace period) or when the writer
/// stops on its own.
pub(crate) async fn consume(
    consumer: Arc<Kafka>,
    shared: Arc<Shared>,
    config: &Config,
    shutdown: CancellationToken,
) -> Result<(), PersisterError> {
    let batch_size = config.batch_size;
    let high_water = batch_size.saturating_mul(4);
    // Since when `pending` has been at the high-water mark. Reading simply
    // stops for a short while (librdkafka's queue fills and fetching stops
    // on its own); only a long stall pauses the partitions, which makes the
    // consumer fetch again from its position when it resumes.
    let mut full_since: Option<Instant> = None;
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(config.writers);
    let mut writer: JoinHandle<WriterExit> = tokio::spawn(write_batches(
        config.writers,
        WriterConfig {
            database_url: config.database_url.clone(),
            retry_max: config.retry_max,
            crash: config.crash_after_db_commits,
        },
        batch_rx,
        shared.clone(),
    ));
    let mut next_seq = 0u64;
    let mut seal = |entries: Vec<Entry>| {
        let mut batch = Batch::build(entries);
        batch.seq = next_seq;
        next_seq += 1;
        batch
    };
    let mut reader = Reader {
        consumer: consumer.clone(),
        shared: shared.clone(),
        pending: VecDeque::new(),
        paused: false,
        tracker: Tracker::default(),
    };
    let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
    commit_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stall_tick = tokio::time::interval(STALL_CHECK_INTERVAL);
    stall_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        reader.apply_rebalance();
        let pending = &reader.pending;
        let ready = pending.len() >= batch_size
            || pending
                .front()
                .is_some_and(|(t, _)| t.elapsed() >= config.batch_time);
        let deadline = pending.front().map(|(t, _)| *t + config.batch_time);

        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            exit = &mut writer => return Err(writer_stopped(exit)),
            () = shared.commit_wanted.notified() => {
                commit(&*consumer, &shared, &shared.uncommitted(None), CommitMode::Async);
            }
            permit = batch_tx.reserve(), if ready => {
                let Ok(permit) = permit else {
                    // The writer stopped; its exit says why.
                    return Err(writer_stopped((&mut writer).await));
                };
                let n = reader.pending.len().min(batch_size);
                permit.send(seal(reader.pending.drain(..n).map(|(_, e)| e).collect()));
                if reader.pending.len() < high_water {
                    full_since = None;
                }
                if reader.paused && reader.pending.len() <= batch_size {
                    reader.set_paused(false);
                }
            }
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if !ready && deadline.is_some() => {}
            _ = commit_tick.tick() => {
                commit(&*consumer, &shared, &shared.uncommitted(None), CommitMode::Async);
            }
            _ = stall_tick.tick() => {
                let full = full_since.is_some();
                if full_since.is_some_and(|t| t.elapsed() >= PAUSE_AFTER) && !reader.paused {
                    reader.set_paused(true);
                }
                reader.check_stalls(full);
            }
            msg = consumer.recv(), if full_since.is_none() || reader.paused => match msg {
                Ok(msg) => {
                    // Callbacks run inside recv(): apply a rebalance before
                    // adding a record of the new assignment.
                    reader.apply_rebalance();
                    reader.on_record(msg.partition(), msg.offset(), msg.key(), msg.payload());
                    if full_since.is_none() && reader.pending.len() >= high_water {
                        full_since = Some(Instant::now());
                    }
                }
                Err(err) => {
                    counter!(m::ERRORS, "kind" => kind::KAFKA_RECEIVE).increment(1);
                    tracing::warn!(error = %err, "kafka receive failed, carrying on");
                }
            },
        }
    }
    reader.apply_rebalance();
    let mut pending = reader.pending;

    // Shutdown: read nothing more, store what was read, commit, leave.
    tracing::info!(
        pending = pending.len(),
        "stopping: storing what was read and committing"
    );
    let drain = async {
        while !pending.is_empty() {
            let n = pending.len().min(batch_size);
            let batch = seal(pending.drain(..n).map(|(_, e)| e).collect());
            if batch_tx.send(batch).await.is_err() {
                break;
            }
        }
        drop(batch_tx);
        (&mut writer).await
    };
    let crashed = match tokio::time::timeout(config.shutdown_grace, drain).await {
        Ok(Ok(WriterExit::Crashed)) => true,
        Ok(Ok(WriterExit::Done)) => false,
        Ok(Ok(WriterExit::Panicked(err))) => {
            tracing::error!(error = %err, "writer task failed");
            false
        }
        Ok(Err(err)) => {
            tracing::error!(error = %err, "writer task failed");
            false
        }
        Err(_) => {
            writer.abort();
            tracing::warn!(grace = ?config.shutdown_grace, "grace period over: records not yet stored will be read again by the next owner");
            false
        }
    };
    if crashed {
        return Err(PersisterError::InjectedCrash);
    }
    commit(
        &*consumer,
        &shared,
        &shared.uncommitted(None),
        CommitMode::Sync,
    );
    consumer.unsubscribe();
    Ok(())
}

/// Measures consumer lag per assigned partition every `every`, until
/// `shutdown`.
pub(crate) async fn measure_lag(
    consumer: Arc<Kafka>,
    shared: Arc<Shared>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reported: BTreeSet<i32> = BTreeSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let parts = shared.assigned();
        let (c, s) = (consumer.clone(), shared.clone());
        let lags = tokio::task::spawn_blocking(move || lag_of(&c, &s, &parts)).await;
        match lags {
            Ok(Ok(lags)) => {
                let now: BTreeSet<i32> = lags.iter().map(|(p, _)| *p).collect();
                for p in reported.difference(&now) {
                    gauge!(m::LAG, "partition" => p.to_string()).set(0.0);
                }
                for (p, lag) in lags {
                    gauge!(m::LAG, "partition" => p.to_string()).set(lag as f64);
                }
                reported = now;
            }
            Ok(Err(err)) => {
                counter!(m::ERRORS, "kind" => kind::LAG).increment(1);
                tracing::debug!(error = %err, "measuring consumer lag failed");
            }
            Err(err) => tracing::warn!(error = %err, "lag task failed"),
        }
    }
}

/// Lag per partition: the end of the partition minus the group's committed
/// offset. The end is the largest of the broker's high watermark, the one in
/// the last fetch response and this consumer's position, because tansu answers ListOffsets(latest) with one
/// past the *first* offset of the last record batch rather than one past its
/// last record; the position corrects that once the consumer has caught up.
fn lag_of(consumer: &Kafka, shared: &Shared, parts: &[i32]) -> KafkaResult<Vec<(i32, i64)>> {
    let topic = shared.topic.as_str();
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    let timeout = Duration::from_secs(2);
    let mut tpl = TopicPartitionList::with_capacity(parts.len());
    for &p in parts {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let position = consumer.position()?;
    let offset_of =
        |list: &TopicPartitionList, p: i32| match list.find_partition(topic, p).map(|e| e.offset())
        {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        };
    let mut lags = Vec::with_capacity(parts.len());
    for &p in parts {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        let end = high
            .max(offset_of(&position, p).unwrap_or(high))
            .max(shared.high(p).unwrap_or(high));
        let done = offset_of(&committed, p).unwrap_or(low);
        lags.push((p, (end - done).max(0)));
    }
    Ok(lags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_count_as_stored_only_in_batch_order() {
        let shared = Shared::new("t".into());
        shared.offsets().assigned.extend([0, 1]);
        // Batch 1 finishes before batch 0.
        shared.mark_stored(1, BTreeMap::from([(0, 20), (1, 5)]));
        assert!(shared.uncommitted(None).is_empty());
        shared.mark_stored(0, BTreeMap::from([(0, 10)]));
        assert_eq!(shared.uncommitted(None), vec![(0, 20), (1, 5)]);
        shared.mark_committed(&[(0, 20), (1, 5)]);
        assert!(shared.uncommitted(None).is_empty());
        shared.mark_stored(2, BTreeMap::from([(1, 9)]));
        assert_eq!(shared.uncommitted(None), vec![(1, 9)]);
        // Unassigned partitions are never committed by this instance.
        shared.mark_stored(3, BTreeMap::from([(7, 3)]));
        assert_eq!(shared.uncommitted(None), vec![(1, 9)]);
    }
}
