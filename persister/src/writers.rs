//! The writers: one per lane, each with its own PostgreSQL connection.
//!
//! A partition always goes to the same lane (`partition % lanes`), and a
//! lane stores one batch at a time, in the order the reader closed them.
//! So within a partition (and therefore within a room) rows become visible
//! in offset order: REST history never shows a message before an older one
//! of its room, and a client paging back from the newest page skips nothing.
//! Lanes run in parallel, which keeps the throughput of several connections.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, histogram};
use tokio::sync::{mpsc, Notify};
use tokio::time::MissedTickBehavior;

use crate::batch::Batch;
use crate::config::Crash;
use crate::metrics::{self as m, kind};
use crate::state::Shared;
use crate::store::{self, Store};

/// How often a writer checks the database while it has nothing to write.
const PING_INTERVAL: Duration = Duration::from_secs(1);

/// Why the writers stopped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WriterExit {
    /// Their channels closed: every batch they got is stored.
    Done,
    /// The crash test hook fired.
    Crashed,
    /// A writer panicked.
    Panicked(String),
}

/// What the writers need to know.
#[derive(Debug, Clone)]
pub(crate) struct WriterConfig {
    pub(crate) database_url: String,
    pub(crate) topic: String,
    pub(crate) retry_max: Duration,
    pub(crate) crash: Option<Crash>,
}

/// The lanes' inboxes, and a notice each time a writer takes a batch.
pub(crate) struct Lanes {
    pub(crate) inboxes: Vec<mpsc::Sender<Batch>>,
    pub(crate) taken: Arc<Notify>,
}

/// The lane of `partition` among `lanes`.
pub(crate) fn lane_of(partition: i32, lanes: usize) -> usize {
    partition.unsigned_abs() as usize % lanes.max(1)
}

/// Starts `n` writers. The join handle ends when all are done, or as soon as
/// one crashes.
pub(crate) fn spawn(
    n: usize,
    config: WriterConfig,
    shared: Arc<Shared>,
) -> (Lanes, tokio::task::JoinHandle<WriterExit>) {
    let taken = Arc::new(Notify::new());
    let mut inboxes = Vec::with_capacity(n.max(1));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..n.max(1) {
        // One batch waiting while one is written.
        let (tx, rx) = mpsc::channel(1);
        inboxes.push(tx);
        let store = Store::new(config.database_url.clone(), config.topic.clone());
        writers.spawn(write(
            store,
            rx,
            Arc::clone(&taken),
            shared.clone(),
            config.clone(),
        ));
    }
    let all = tokio::spawn(async move {
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
    });
    (Lanes { inboxes, taken }, all)
}

/// One writer: stores its lane's batches, each until it succeeds.
async fn write(
    mut store: Store,
    mut inbox: mpsc::Receiver<Batch>,
    taken: Arc<Notify>,
    shared: Arc<Shared>,
    config: WriterConfig,
) -> WriterExit {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let batch = tokio::select! {
            biased;
            batch = inbox.recv() => match batch {
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
        taken.notify_one();
        let (stored, took) = store::store_with_retry(&mut store, &batch, config.retry_max, |_| {
            counter!(m::ERRORS, "kind" => kind::DATABASE).increment(1);
            shared.set_db_up(false);
        })
        .await;
        shared.set_db_up(true);
        ping.reset();

        let db_commits = shared.db_commits.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(crash) = config.crash {
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

        let good = (batch.rows.len() + batch.changes.len()) as u64;
        histogram!(m::BATCH_SIZE).record(batch.len() as f64);
        histogram!(m::INSERT_SECONDS).record(took.as_secs_f64());
        counter!(m::PERSISTED).increment(good - stored.refused);
        counter!(m::DUPLICATES).increment(good - stored.refused - stored.inserted);
        if stored.refused > 0 {
            counter!(m::POISON).increment(stored.refused);
            shared.count_poison(stored.refused);
        }
        let now = confab_common::clock::now_ms();
        let latency = histogram!(m::PUBLISH_TO_PERSIST);
        for &ts in &batch.ts_ms {
            latency.record((now - ts).max(0) as f64 / 1000.0);
        }
        shared.count_stored(good - stored.refused);
        tracing::debug!(
            records = batch.len(),
            inserted = stored.inserted,
            ?took,
            "batch stored"
        );
        shared.ledger.mark_stored(&batch.next_offsets);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_partition_always_has_the_same_lane() {
        for p in 0..64 {
            assert_eq!(super::lane_of(p, 4), super::lane_of(p, 4));
            assert!(super::lane_of(p, 4) < 4);
        }
        assert_eq!(super::lane_of(5, 1), 0);
        assert_eq!(super::lane_of(5, 0), 0);
    }
}
