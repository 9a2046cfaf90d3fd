//! [`RoomProducer`]: the one way any service puts a [`RoomRecord`] on the
//! room topic.
//!
//! It stamps the record with its partition's incarnation, sends it to the
//! partition the layout gives its room (never where librdkafka's own view of
//! the partition count would put it) and reports success only on the
//! broker's acknowledgement. While the topic is missing or unusable it
//! refuses at once with the reason, rather than acknowledging a record no
//! subscriber would get.

use std::future::Future;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use crate::config::KafkaConfig;
use crate::position::{KafkaOffset, Position};
use crate::record::RoomRecord;
use crate::stream::{self, LayoutWatch};

/// Why a record was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// The topic cannot take records now; the text says why.
    #[error("the room topic is not usable: {0}")]
    Unavailable(String),
    /// The local queue is full: the broker is slow or away.
    #[error("too many records are waiting for the broker")]
    QueueFull,
    /// The broker did not acknowledge in time, or refused.
    #[error("the broker did not acknowledge the record: {0}")]
    Kafka(KafkaError),
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: KafkaOffset,
    /// Its position, by the layout the producer used.
    pub position: Option<Position>,
}

/// Produces room records; cheap to clone.
#[derive(Clone)]
pub struct RoomProducer {
    producer: FutureProducer,
    topic: String,
    layout: LayoutWatch,
}

impl std::fmt::Debug for RoomProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomProducer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl RoomProducer {
    /// A producer for `config.topic` that follows `layout`. It connects
    /// lazily, so this succeeds while the broker is down.
    pub fn new(config: &KafkaConfig, layout: LayoutWatch) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: crate::kafka::producer_config(config).create()?,
            topic: config.topic.clone(),
            layout,
        })
    }

    /// The layout this producer follows.
    pub fn layout(&self) -> &LayoutWatch {
        &self.layout
    }

    /// Queues `record` and returns the acknowledgement to wait for. Fails at
    /// once when the topic is not usable or the local queue is full.
    pub fn enqueue(
        &self,
        mut record: RoomRecord,
    ) -> Result<impl Future<Output = Result<Delivered, ProduceError>> + Send + 'static, ProduceError>
    {
        let state = self.layout.state();
        let layout = match state.layout() {
            Some(l) => l,
            None => {
                return Err(ProduceError::Unavailable(
                    state.problem().unwrap_or_default().to_owned(),
                ))
            }
        };
        let partition = stream::stamp(layout, &mut record);
        let base = layout.base(partition);
        let key = record.key();
        let payload = record.encode();
        let sent = self.producer.send_result(
            FutureRecord::to(&self.topic)
                .partition(partition)
                .key(&key)
                .payload(&payload),
        );
        let delivery = match sent {
            Ok(d) => d,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                return Err(ProduceError::QueueFull)
            }
            Err((err, _)) => return Err(ProduceError::Kafka(err)),
        };
        Ok(async move {
            match delivery.await {
                Ok(Ok(d)) => Ok(Delivered {
                    partition: d.partition,
                    offset: KafkaOffset(d.offset),
                    position: base.map(|b| b.position(KafkaOffset(d.offset))),
                }),
                Ok(Err((err, _))) => Err(ProduceError::Kafka(err)),
                Err(_) => Err(ProduceError::Kafka(KafkaError::Canceled)),
            }
        })
    }

    /// Produces `record` and returns once the broker has acknowledged it.
    pub async fn send(&self, record: RoomRecord) -> Result<Delivered, ProduceError> {
        self.enqueue(record)?.await
    }

    /// Waits for queued records to be delivered, at most `timeout`.
    pub fn flush(&self, timeout: Duration) {
        if let Err(err) = self.producer.flush(Timeout::After(timeout)) {
            tracing::warn!(%err, "producer flush incomplete");
        }
    }
}
