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
