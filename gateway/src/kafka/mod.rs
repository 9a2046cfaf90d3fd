//! The gateway's Kafka side: the consumer that feeds the hub
//! ([`consumer`]), the [`Publisher`] the session produces through, and
//! presence and typing across instances ([`signals`]).
//!
//! The session only knows the [`Publisher`] trait, so its tests run with no
//! broker; [`KafkaPublisher`] is the real one, over
//! [`confab_common::producer::RoomProducer`].

mod consumer;
pub(crate) mod signals;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use confab_common::producer::{ProduceError, RoomProducer};
use confab_common::record::RoomRecord;

pub(crate) use consumer::start_consumer;

/// The broker's acknowledgement of one record, to wait for.
pub(crate) type Ack = Pin<Box<dyn Future<Output = Result<(), ProduceError>> + Send>>;

/// Puts records on the room topic.
pub(crate) trait Publisher: Send + Sync + 'static {
    /// Queues `record`; the returned future resolves on the broker's
    /// acknowledgement. Fails at once when the record cannot be queued.
    fn publish(&self, record: RoomRecord) -> Result<Ack, ProduceError>;

    /// Why publishing is refused now, if it is.
    fn problem(&self) -> Option<String>;

    /// Waits for queued records, at most `timeout` (at shutdown).
    fn flush(&self, timeout: Duration);
}

/// The real publisher: the room topic, through the topic's layout.
pub(crate) struct KafkaPublisher {
    producer: RoomProducer,
    /// The partitions this instance reads.
    partitions: usize,
}

impl KafkaPublisher {
    pub(crate) fn new(producer: RoomProducer, partitions: usize) -> Self {
        Self {
            producer,
            partitions,
        }
    }
}

impl Publisher for KafkaPublisher {
    fn publish(&self, record: RoomRecord) -> Result<Ack, ProduceError> {
        let ack = self.producer.enqueue(record)?;
        Ok(Box::pin(async move { ack.await.map(|_| ()) }))
    }

    /// The topic is not usable, or its layout no longer matches the
    /// partitions this instance reads (it was created again with another
    /// partition count): acknowledging then would acknowledge what no
    /// subscriber of this instance gets.
    fn problem(&self) -> Option<String> {
        let state = self.producer.layout().state();
        match state.layout() {
            None => Some(state.problem().unwrap_or_default().to_owned()),
            Some(l) if l.partitions as usize != self.partitions => Some(format!(
                "the room topic's layout changed from {} to {} partitions; restart this gateway",
                self.partitions, l.partitions
            )),
            Some(_) => None,
        }
    }

    fn flush(&self, timeout: Duration) {
        self.producer.flush(timeout);
    }
}
