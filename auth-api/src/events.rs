//! Membership events to Kafka.
//!
//! Creating a room (the owner's join), joining and leaving each produce one
//! [`RoomRecord`] to the room topic, keyed by room id, so the event is ordered
//! with the room's chat messages, persisted by the persister and fanned out by
//! the gateway.
//!
//! # Order of the database write and the produce
//!
//! Each membership change runs as: open a transaction, write the membership
//! row (which also locks it against a concurrent change of the same member),
//! produce the record and wait for the broker's acknowledgement, then commit.
//!
//! - If the broker does not acknowledge (down, timeout), the transaction rolls
//!   back and the caller gets 503: no state change without its event.
//! - If the commit fails after the acknowledgement, the event is already in
//!   the stream, so a compensating record (the opposite event) is produced,
//!   best effort, and the caller gets an error. Only a crash in exactly that
//!   moment can leave an event without its state change, never the reverse.
//! - The REST call answers only after the acknowledgement and the commit.

use std::time::Duration;

use confab_common::config::KafkaConfig;
use confab_common::record::RoomRecord;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::error::ApiError;

/// Produces room records and waits for their delivery reports.
#[derive(Clone)]
pub struct Events {
    producer: FutureProducer,
    /// The room topic (`CONFAB_KAFKA_TOPIC`).
    topic: String,
    /// How long a record may wait in the local queue when it is full.
    queue_timeout: Duration,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Events {
    /// Creates the producer. It connects lazily, so this succeeds while the
    /// broker is down.
    pub fn new(config: &KafkaConfig) -> Result<Self, rdkafka::error::KafkaError> {
        let producer: FutureProducer = confab_common::kafka::producer_config(config).create()?;
        Ok(Self {
            producer,
            topic: config.topic.clone(),
            queue_timeout: Duration::from_millis(u64::from(config.message_timeout_ms)),
        })
    }

    /// Produces `record` and returns once the broker has acknowledged it,
    /// with its partition and offset.
    pub async fn publish(&self, record: &RoomRecord) -> Result<(i32, i64), ApiError> {
        let key = record.key();
        let payload = record.encode();
        let started = std::time::Instant::now();
        let result = self
            .producer
            .send(
                FutureRecord::to(&self.topic).key(&key).payload(&payload),
                Timeout::After(self.queue_timeout),
            )
            .await;
        metrics::histogram!("confab_api_produce_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((err, _)) => {
                metrics::counter!("confab_api_produce_errors_total").increment(1);
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
        if let Err(err) = self.producer.flush(Timeout::After(timeout)) {
            tracing::warn!(%err, "producer flush incomplete at shutdown");
        }
    }
}
