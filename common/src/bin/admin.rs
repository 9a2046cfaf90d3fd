//! `confab-admin`: one-shot setup tasks for deployments and `ops/dev`.
//!
//! - `confab-admin migrate` applies the SQL migrations to `DATABASE_URL`.
//! - `confab-admin create-topic [TOPIC] [PARTITIONS]` creates the room topic
//!   on `KAFKA_BROKERS` unless it exists (defaults: `CONFAB_KAFKA_TOPIC`,
//!   `CONFAB_KAFKA_PARTITIONS` or 16), with the cluster's replication, waits
//!   until every partition's leader answers for it, and writes the geneses of
//!   partitions that lack one. When `DATABASE_URL` is set, new bases start
//!   above every position already in `messages`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use confab_common::config::{exit_on_error, Env, KafkaConfig, LogConfig};
use confab_common::position::Position;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let env = Env::process();
    confab_common::telemetry::init_tracing(&exit_on_error(LogConfig::from_env(&env)));
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("migrate") => migrate(&env).await,
        Some("create-topic") => create_topic(&env, &args[1..]).await,
        _ => bail!("usage: confab-admin migrate | create-topic [TOPIC] [PARTITIONS]"),
    }
}

async fn migrate(env: &Env) -> anyhow::Result<()> {
    let url = exit_on_error(env.required("DATABASE_URL"));
    let mut client = confab_common::db::connect(&url)
        .await
        .context("connecting to DATABASE_URL")?;
    let applied = confab_common::db::migrate(&mut client)
        .await
        .context("applying migrations")?;
    tracing::info!(applied = applied.len(), "migrations up to date");
    Ok(())
}

async fn create_topic(env: &Env, args: &[String]) -> anyhow::Result<()> {
    let config = exit_on_error(KafkaConfig::from_env(env));
    let topic = args
        .first()
        .cloned()
        .unwrap_or_else(|| config.topic.clone());
    let partitions: i32 = match args.get(1) {
        Some(p) => p.parse().context("PARTITIONS must be a number")?,
        None => exit_on_error(env.parse_or("CONFAB_KAFKA_PARTITIONS", 16)),
    };
    let hint = match env.get("DATABASE_URL") {
        Some(url) => highest_position(&url).await?,
        None => Position::ZERO,
    };
    let config = KafkaConfig { topic, ..config };
    let mut last_err = None;
    // The broker may still be starting; retry for a while.
    for _ in 0..60 {
        match confab_common::kafka::ensure_topic(&config, &config.topic, partitions).await {
            Ok(()) => {
                wait_for_leaders(&config.brokers, &config.topic).await?;
                let layout = confab_common::stream::write_geneses(&config, hint)
                    .await
                    .context("writing the geneses")?;
                tracing::info!(topic = %config.topic, partitions = layout.partitions, "topic ready");
                return Ok(());
            }
            Err(err) => {
                last_err = Some(err);
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
    Err(last_err.expect("loop ran")).context("creating the topic")
}

/// The highest position stored in `messages`, so that new bases start above it.
async fn highest_position(url: &str) -> anyhow::Result<Position> {
    let client = confab_common::db::connect(url)
        .await
        .context("connecting to DATABASE_URL")?;
    let row = client
        .query_one("SELECT coalesce(max(stream_offset), 0) FROM messages", &[])
        .await
        .context("reading the highest stored position (run `confab-admin migrate` first)")?;
    Ok(Position::from_db(row.get(0)))
}

/// Waits until every partition of `topic` has a leader that answers a
/// ListOffsets for it: on a cluster of several nodes, a topic just created (or
/// a cluster just started) takes a moment, and clients that start meanwhile
/// get NotLeaderForPartition.
async fn wait_for_leaders(brokers: &str, topic: &str) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating a Kafka client")?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match not_ready(&consumer, &topic) {
                None => return Ok(()),
                Some(why) if Instant::now() >= deadline => {
                    bail!("topic {topic} is not ready after 30 s: {why}")
                }
                Some(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    })
    .await
    .context("waiting for the topic's leaders")?
}

/// Why `topic` is not ready yet, if it is not.
fn not_ready(consumer: &BaseConsumer, topic: &str) -> Option<String> {
    let timeout = Duration::from_secs(5);
    let metadata = match consumer.fetch_metadata(Some(topic), timeout) {
        Ok(metadata) => metadata,
        Err(err) => return Some(err.to_string()),
    };
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Some("not in the metadata".to_owned());
    };
    if let Some(err) = t.error() {
        return Some(format!("{err:?}"));
    }
    if t.partitions().is_empty() {
        return Some("no partitions".to_owned());
    }
    t.partitions().iter().find_map(|p| {
        consumer
            .fetch_watermarks(topic, p.id(), timeout)
            .err()
            .map(|err| format!("partition {}: {err}", p.id()))
    })
}
