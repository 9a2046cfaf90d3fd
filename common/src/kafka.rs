//! Kafka client settings shared by every producer and consumer, and topic
//! creation.
//!
//! librdkafka is the one bundled by rdkafka. The settings aim at low latency
//! on a long-polling broker: producers send at once (`linger.ms`, default 0)
//! and wait for every in-sync replica (`acks=all`, idempotent); consumers are
//! answered as soon as one byte is there (`fetch.min.bytes=1`) and idle
//! fetches wait `fetch.wait.max.ms` on the broker.

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
        .set("topic.metadata.refresh.interval.ms", "10000")
        // TCP_NODELAY: librdkafka leaves Nagle on by default, which holds a
        // small produce request back until the previous one's reply.
        .set("socket.nagle.disable", "true");
    c
}

/// A producer that never reports success for a record the broker has not
/// stored: idempotent, `acks=all`, bounded by `message.timeout.ms`. Room
/// records name their partition (see [`crate::stream`]); records without one
/// are partitioned with murmur2 of the key, which picks the same partition.
pub fn producer_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = base(config);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", config.message_timeout_ms.to_string())
        .set("partitioner", "murmur2_random")
        .set("linger.ms", config.linger_ms.to_string())
        .set("compression.type", "none")
        // Never create the room topic by producing to it: a topic created
        // that way has the broker's default partitions and no geneses.
        .set("allow.auto.create.topics", "false");
    c
}

/// A consumer. With a `group`, offsets are committed by hand only (the
/// persister); without one, the caller assigns partitions itself (the gateway).
pub fn consumer_config(config: &KafkaConfig, group: Option<&str>) -> ClientConfig {
    let mut c = base(config);
    c.set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", config.fetch_wait_max_ms.to_string())
        .set("fetch.min.bytes", "1")
        .set("allow.auto.create.topics", "false")
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

/// Creates `topic` with `partitions` partitions unless it exists, with the
/// cluster's default replication (so a three-node cluster replicates it three
/// times, with its `min.insync.replicas`). Geneses are written separately
/// ([`crate::stream::write_geneses`]).
pub async fn ensure_topic(
    config: &KafkaConfig,
    topic: &str,
    partitions: i32,
) -> Result<(), KafkaError> {
    create_unless_exists(
        config,
        NewTopic::new(topic, partitions, TopicReplication::Fixed(-1)),
    )
    .await
}

async fn create_unless_exists(config: &KafkaConfig, new: NewTopic<'_>) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = base(config).create()?;
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

/// Creates the gateways' presence topic unless it exists: one partition (its
/// records are few and every gateway reads all of them), compacted, so a
/// gateway that starts reads only the live keys, and tombstones kept for a
/// minute so that a reader that catches up sees them.
pub async fn ensure_presence_topic(config: &KafkaConfig, topic: &str) -> Result<(), KafkaError> {
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "60000")
        .set("min.cleanable.dirty.ratio", "0.1")
        .set("delete.retention.ms", "60000");
    create_unless_exists(config, new).await
}
