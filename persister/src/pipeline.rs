//! The loop that ties the reader, the writers and the ledger together.
//!
//! # How records flow
//!
//! The loop reads records into the reader's lanes. A lane's batch closes at
//! `batch_size` records or once its oldest record has waited `batch_time`,
//! and goes to that lane's writer (one batch stored, one waiting at most).
//! The writer stores it (retrying with backoff until it succeeds), then marks
//! the batch's offsets stored in the ledger; the loop commits stored offsets
//! to Kafka. Offsets are never committed before the rows are in PostgreSQL.
//!
//! # Backpressure and database outages
//!
//! When the lanes hold four batches' worth of records the loop stops calling
//! `recv()`; librdkafka's queue fills and fetching stops by itself. If that
//! lasts more than a second (PostgreSQL is down or very slow) the loop pauses
//! every owned partition and calls `recv()` again, so that the consumer stays
//! in the group and serves rebalances. It resumes once the lanes are down to
//! one batch.

use std::sync::Arc;
use std::time::Duration;

use confab_common::stream::LayoutWatch;
use metrics::counter;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::batch::Batch;
use crate::config::Config;
use crate::group::Kafka;
use crate::metrics::{self as m, kind};
use crate::reader::Reader;
use crate::state::Shared;
use crate::writers::{self, Lanes, WriterConfig, WriterExit};
use crate::PersisterError;

/// How often the loop retries commits that failed.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// How often the loop looks at backpressure.
const PAUSE_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How long the loop may stop reading because writes fall behind before it
/// pauses the partitions (and polls again, to stay in the group).
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// The error for a writer that stopped while the loop still ran.
fn writer_stopped(exit: Result<WriterExit, tokio::task::JoinError>) -> PersisterError {
    match exit {
        Ok(WriterExit::Crashed) => PersisterError::InjectedCrash,
        Ok(WriterExit::Done) => PersisterError::WriterStopped("its channel closed".into()),
        Ok(WriterExit::Panicked(err)) => PersisterError::WriterStopped(err),
        Err(err) => PersisterError::WriterStopped(err.to_string()),
    }
}

/// Hands every ready lane's batch to its writer if the writer has room.
/// Returns false when a writer is gone.
fn hand_over(reader: &mut Reader, lanes: &Lanes, config: &Config) -> bool {
    for (i, pending) in reader.lanes.iter_mut().enumerate() {
        let ready = pending.len() >= config.batch_size
            || pending
                .front()
                .is_some_and(|(t, _)| t.elapsed() >= config.batch_time);
        if !ready {
            continue;
        }
        match lanes.inboxes[i].try_reserve() {
            Ok(permit) => {
                let n = pending.len().min(config.batch_size);
                permit.send(Batch::build(pending.drain(..n).map(|(_, e)| e)));
            }
            Err(TrySendError::Full(())) => {}
            Err(TrySendError::Closed(())) => return false,
        }
    }
    true
}

/// When the next lane closes its batch by age. Lanes already due wait for
/// their writer instead (`Lanes::taken`).
fn next_deadline(reader: &Reader, config: &Config) -> Option<Instant> {
    let now = Instant::now();
    reader
        .lanes
        .iter()
        .filter(|l| l.len() < config.batch_size)
        .filter_map(|l| l.front().map(|(t, _)| *t + config.batch_time))
        .filter(|d| *d > now)
        .min()
}

/// The consumer loop. Returns when `shutdown` is cancelled (after storing
/// and committing what it read, within the grace period) or when a writer
/// stops on its own.
pub(crate) async fn run(
    consumer: Arc<Kafka>,
    shared: Arc<Shared>,
    layout: LayoutWatch,
    config: &Config,
    shutdown: CancellationToken,
) -> Result<(), PersisterError> {
    let high_water = config.batch_size.saturating_mul(4);
    // Since when the lanes have been at the high-water mark.
    let mut full_since: Option<Instant> = None;
    let (lanes, mut writers) = writers::spawn(
        config.writers,
        WriterConfig {
            database_url: config.database_url.clone(),
            topic: config.kafka.topic.clone(),
            retry_max: config.retry_max,
            crash: config.crash_after_db_commits,
        },
        shared.clone(),
    );
    let mut changes = layout.subscribe();
    let mut reader = Reader::new(
        consumer.clone(),
        shared.clone(),
        config.kafka.topic.clone(),
        layout,
        config.writers,
    );
    let ledger = &shared.ledger;
    let mut commit_tick = tokio::time::interval(COMMIT_INTERVAL);
    commit_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut pause_tick = tokio::time::interval(PAUSE_CHECK_INTERVAL);
    pause_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        reader.apply_rebalance();
        if !hand_over(&mut reader, &lanes, config) {
            return Err(writer_stopped((&mut writers).await));
        }
        let pending = reader.pending();
        if pending < high_water {
            full_since = None;
        }
        if reader.paused && pending <= config.batch_size {
            reader.set_paused(false);
        }
        let deadline = next_deadline(&reader, config);

        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            exit = &mut writers => return Err(writer_stopped(exit)),
            () = ledger.commit_wanted.notified() => {
                ledger.commit(&*consumer, &ledger.uncommitted(None), CommitMode::Async);
            }
            () = lanes.taken.notified() => {}
            () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
            _ = commit_tick.tick() => {
                ledger.commit(&*consumer, &ledger.uncommitted(None), CommitMode::Async);
            }
            _ = pause_tick.tick() => {
                if full_since.is_some_and(|t| t.elapsed() >= PAUSE_AFTER) && !reader.paused {
                    reader.set_paused(true);
                }
            }
            r = changes.changed() => {
                if r.is_ok() {
                    let layout = changes.borrow_and_update().layout().cloned();
                    if let Some(layout) = layout {
                        reader.follow(&layout);
                    }
                }
            }
            msg = consumer.recv(), if full_since.is_none() || reader.paused => match msg {
                Ok(msg) => {
                    // Callbacks run inside recv(): apply a rebalance before
                    // adding a record of the new assignment.
                    reader.apply_rebalance();
                    let (p, offset) = (msg.partition(), msg.offset());
                    if let Some(force) = reader.on_record(p, offset, msg.key(), msg.payload(), false) {
                        let (key, payload) = (msg.key().map(<[u8]>::to_vec), msg.payload().map(<[u8]>::to_vec));
                        drop(msg);
                        if !reader.check(p, force).await {
                            reader.on_record(p, offset, key.as_deref(), payload.as_deref(), true);
                        }
                    }
                    if full_since.is_none() && reader.pending() >= high_water {
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

    // Shutdown: read nothing more, store what was read, commit, leave.
    tracing::info!(
        pending = reader.pending(),
        "stopping: storing what was read and committing"
    );
    let batch_size = config.batch_size;
    let drain = async {
        for (i, pending) in reader.lanes.iter_mut().enumerate() {
            while !pending.is_empty() {
                let n = pending.len().min(batch_size);
                let batch = Batch::build(pending.drain(..n).map(|(_, e)| e));
                if lanes.inboxes[i].send(batch).await.is_err() {
                    break;
                }
            }
        }
        drop(lanes);
        (&mut writers).await
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
            writers.abort();
            tracing::warn!(grace = ?config.shutdown_grace, "grace period over: records not yet stored will be read again by the next owner");
            false
        }
    };
    if crashed {
        return Err(PersisterError::InjectedCrash);
    }
    ledger.commit(&*consumer, &ledger.uncommitted(None), CommitMode::Sync);
    consumer.unsubscribe();
    Ok(())
}
