//! Kafka client settings shared by every producer and consumer.
//!
//! librdkafka is the one bundled by rdkafka (Debian's is too old for tansu).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

/// A Kafka setup problem.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error(transparent)]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

fn base(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        // Recover quickly after a broker restart.
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "1000")
        .set("topic.metadata.refresh.interval.ms", "10000");
    c
}

/// A producer that never reports success for a record the broker has not
/// stored: idempotent, `acks=all`, bounded by `message.timeout.ms`. Records
/// are keyed by room and partitioned with murmur2, as Java clients do.
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = base(config);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", config.message_timeout_ms.to_string())
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "1")
        .set("compression.type", "none");
    c
}

/// A consumer. With a `group`, offsets are committed by hand only (the
/// persister); without one, the caller assigns partitions itself (the gateway).
pub fn consumer_config(config: &KafkaConfig, group: Option<&str>) -> ClientConfig {
    let mut c = base(config);
    c.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", config.fetch_wait_max_ms.to_string())
        .set("enable.partition.eof", "false");
    match group {
        Some(g) => {
            c.set("group.id", g).set("auto.offset.reset", "earliest");
        }
        None => {
            // librdkafka wants a group id even for manual assignment; it is
            // never used to commit.
            c.set(
                "group.id",
                format!("confab-unused-{}", uuid::Uuid::new_v4()),
            );
        }
    }
    c
}

/// Creates `topic` with `partitions` partitions unless it exists.
pub async fn ensure_topic(
    config: &KafkaConfig,
    topic: &str,
    partitions: i32,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = base(config).create()?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1)); // the cluster default
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics([&new], &opts).await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(KafkaError::CreateTopic { topic, code }),
        }
    }
    Ok(())
}
