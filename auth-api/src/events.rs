//! Membership events to Kafka.
//!
//! Creating a room (the owner's join), joining and leaving each produce one
//! [`RoomRecord`] to the room topic, keyed by room id, so the event is ordered
//! with the room's chat messages, persisted by the persister and fanned out by
//! the gateway.
//!
//! # How a membership change runs
//!
//! No pooled database connection is held while the broker is waited for, so a
//! slow or dead broker cannot starve login, history or any other route of
//! connections ([`crate::membership::publish_then_apply`]):
//!
//! 1. Cheap checks on a short-lived connection (the room exists, the rules
//!    admit the caller, the caller is a user), released before anything else.
//! 2. The member's lock: one async lock per (room, user) in this process.
//! 3. Under the lock, the membership is read again; if a concurrent call
//!    already made the change, this one answers as a no-op.
//! 4. Unless the broker is known to be down (then 503 at once, see below),
//!    the record is produced and its acknowledgement awaited, holding nothing
//!    but the lock.
//! 5. Only after the acknowledgement, one short transaction writes the
//!    change (`INSERT ... ON CONFLICT DO NOTHING`, or `DELETE`).
//!
//! Steps 4 and 5 run in their own task, so a caller that goes away (client
//! disconnect, request timeout) cannot stop the change between the
//! acknowledgement and the write. Such a caller may have been answered 503
//! `timeout` for a change that was then made; repeating a join or a leave is
//! safe (a no-op join, a 409 leave).
//!
//! # Guarantees, and how each is kept
//!
//! - **A membership REST call succeeds only after its event is acknowledged.**
//!   The write (step 5) happens only after the acknowledgement, and the answer
//!   only after the write.
//! - **No state change without its event.** The database is changed only in
//!   step 5, after the acknowledgement. If the broker does not acknowledge
//!   (down, timeout), nothing was written and the caller gets 503
//!   `broker_unavailable`. If the write fails after the acknowledgement, the
//!   opposite record is produced (best effort) so the stream matches the
//!   database again, and the caller gets an error. Only a crash in exactly
//!   that moment can leave an event without its state change, never the
//!   reverse.
//! - **Concurrent joins of the same user produce one event.** The member's
//!   lock (step 2) lets one change of a (room, user) run at a time, and the
//!   re-read under it (step 3) turns every later one into a no-op, so one
//!   `member_joined` is produced. The same lock orders a join and a leave of
//!   one member, so their events are in the order of their writes. The lock
//!   is per process: with several auth-api instances two concurrent joins of
//!   one user on different instances can each produce an event (the
//!   database still holds one membership, by its primary key). Like the rate
//!   limiter, this assumes one auth-api instance.
//!
//! # When the broker is down
//!
//! A failed produce marks the broker down for `CONFAB_API_BROKER_RETRY_MS`;
//! meanwhile membership changes answer 503 at once instead of each waiting
//! for `CONFAB_KAFKA_MESSAGE_TIMEOUT_MS`. Then one change is let through as a
//! probe; its acknowledgement marks the broker up again. Routes that do not
//! produce (login, history, lists) never wait for the broker.

use std::time::Duration;

use confab_common::config::KafkaConfig;
use confab_common::producer::{ProduceError, RoomProducer};
use confab_common::record::RoomRecord;
use confab_common::stream::LayoutWatch;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// How often the topic's layout is checked while the service runs.
const LAYOUT_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Produces room records and waits for their delivery reports.
#[derive(Clone, Debug)]
pub struct Events {
    producer: RoomProducer,
}

impl Events {
    /// Creates the producer. It connects lazily, so this succeeds while the
    /// broker is down.
    pub fn new(config: &KafkaConfig) -> Result<Self, rdkafka::error::KafkaError> {
        let layout = LayoutWatch::new(config)?;
        Ok(Self {
            producer: RoomProducer::new(config, layout)?,
        })
    }

    /// Keeps the topic's layout current until `shutdown`.
    pub fn watch(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        self.producer
            .layout()
            .spawn(LAYOUT_CHECK_INTERVAL, shutdown)
    }

    /// Produces `record` and returns once the broker has acknowledged it,
    /// with its partition and Kafka offset.
    pub async fn publish(&self, record: &RoomRecord) -> Result<(i32, i64), ApiError> {
        let layout = self.producer.layout();
        if layout.layout().is_none() {
            // Not loaded yet (or the topic was missing): look now.
            layout.refresh_unless_recent(Duration::from_secs(1)).await;
        }
        let started = std::time::Instant::now();
        let result = self.producer.send(record.clone()).await;
        metrics::histogram!("confab_api_produce_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(delivered) => Ok((delivered.partition, delivered.offset.0)),
            Err(err) => {
                metrics::counter!("confab_api_produce_errors_total").increment(1);
                if let ProduceError::Unavailable(why) = &err {
                    tracing::warn!(problem = %why, "room topic not usable");
                }
                Err(ApiError::Broker(err.to_string()))
            }
        }
    }

    /// Produces a compensating record after a failed commit; errors are only
    /// logged, as the caller already reports a failure.
    pub async fn compensate(&self, record: RoomRecord) {
        if let Err(err) = self.publish(&record).await {
            tracing::error!(room_id = %record.room_id, kind = record.kind.as_str(), %err,
                "compensating membership record could not be produced");
        }
    }

    /// Waits for queued records to be delivered, at most `timeout`.
    pub fn flush(&self, timeout: Duration) {
        self.producer.flush(timeout);
    }
}
