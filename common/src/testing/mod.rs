//! Helpers for integration tests against the real PostgreSQL and broker.
//!
//! Tests read `DATABASE_URL` and `KAFKA_BROKERS` from the environment; the
//! README's test command (`ops/test`) starts both and sets them. Each test gets
//! its own database and topic, so tests run in parallel without sharing state.

use crate::config::KafkaConfig;

mod cluster;
pub mod ws;
pub use cluster::{KafkaCluster, PartitionState, Signal};

/// The address of a service the tests need, or a panic that says how to get it.
pub fn require_env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!("{key} is not set: run the tests through `ops/test`, which starts PostgreSQL and the broker")
    })
}

/// A fresh, migrated database. It is not dropped, so a failing test leaves it
/// to inspect; `ops/test` drops old `confab_test_*` databases at start.
#[derive(Debug, Clone)]
pub struct TestDb {
    /// A URL for the new database.
    pub url: String,
    pub name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let admin_url = require_env("DATABASE_URL");
        let name = format!("confab_test_{}", uuid::Uuid::new_v4().simple());
        let admin = crate::db::connect(&admin_url)
            .await
            .expect("connect to DATABASE_URL");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = crate::db::with_database(&admin_url, &name);
        let mut client = crate::db::connect(&url).await.expect("connect to test db");
        crate::db::migrate(&mut client).await.expect("migrate");
        Self { url, name }
    }
}

/// Kafka settings for a fresh topic with `partitions` partitions and their
/// geneses, on `KAFKA_BROKERS`.
pub async fn test_topic(partitions: i32) -> KafkaConfig {
    test_topic_on(&require_env("KAFKA_BROKERS"), partitions).await
}

/// [`test_topic`] on the cluster at `brokers`.
pub async fn test_topic_on(brokers: &str, partitions: i32) -> KafkaConfig {
    let config = KafkaConfig {
        brokers: brokers.to_owned(),
        topic: format!("confab.test.{}", uuid::Uuid::new_v4().simple()),
        fetch_wait_max_ms: 100,
        message_timeout_ms: 30_000,
        linger_ms: 0,
    };
    create_topic(&config, partitions).await;
    config
}

/// Creates `config.topic` with its geneses, as `confab-admin create-topic` does.
pub async fn create_topic(config: &KafkaConfig, partitions: i32) {
    crate::kafka::ensure_topic(config, &config.topic, partitions)
        .await
        .expect("create test topic");
    crate::stream::write_geneses(config, crate::position::Position::ZERO)
        .await
        .expect("write geneses");
}

/// A JWT secret for tests; services refuse it outside an injected `Env`.
pub use crate::config::TEST_JWT_SECRET;
