//! `confab-admin`: one-shot setup tasks for deployments and `ops/dev`.
//!
//! - `confab-admin migrate` applies the SQL migrations to `DATABASE_URL`.
//! - `confab-admin create-topic [TOPIC] [PARTITIONS]` creates the room topic
//!   on `KAFKA_BROKERS` unless it exists (defaults: `CONFAB_KAFKA_TOPIC`,
//!   `CONFAB_KAFKA_PARTITIONS` or 16).

use anyhow::{bail, Context};
use confab_common::config::{exit_on_error, Env, KafkaConfig, LogConfig};

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
    let mut last_err = None;
    // The broker may still be starting; retry for a while.
    for _ in 0..30 {
        match confab_common::kafka::ensure_topic(&config, &topic, partitions).await {
            Ok(()) => {
                tracing::info!(%topic, partitions, "topic ready");
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
