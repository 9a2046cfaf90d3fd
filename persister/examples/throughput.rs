//! Measures the persister against the local PostgreSQL and broker.
//!
//! Throughput: pre-produces N records to a fresh topic (16 partitions by
//! default), then times one persister draining them into a fresh database:
//!
//! ```text
//! set -a; . .dev/env; set +a
//! cargo run --release -p confab-persister --example throughput -- throughput 200000 16
//! ```
//!
//! Latency: produces at a steady rate while the persister runs, then reports
//! percentiles of publish-to-visible time, from the record's `ts_ms` (taken by
//! the producer before the broker acks) to the row's `persisted_at` (the start
//! of the transaction that made it visible to REST history), and the same from
//! the moment the producer got the broker's ack:
//!
//! ```text
//! cargo run --release -p confab-persister --example throughput -- latency 2000 20 16
//! ```
//!
//! Each run leaves a `confab_bench_*` database behind for inspection.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use confab_common::config::{Env, KafkaConfig};
use confab_common::record::{RoomRecord, UserRef};
use confab_persister::{Config, Persister};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ROOMS: usize = 1000;

fn record(rooms: &[Uuid], i: usize) -> RoomRecord {
    let user = UserRef {
        id: Uuid::from_u128(i as u128 % 97 + 1),
        username: format!("user{}", i % 97),
    };
    let data = format!(r#"{{"text":"benchmark message number {i} with some padding text"}}"#);
    RoomRecord::message(
        rooms[i % rooms.len()],
        user,
        RawValue::from_string(data).expect("valid JSON"),
    )
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    rec: &RoomRecord,
) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
    let key = rec.key();
    let payload = rec.encode();
    let mut r = FutureRecord::to(topic).key(&key).payload(&payload);
    loop {
        match producer.send_result(r) {
            Ok(delivery) => return Ok(delivery),
            Err((err, back)) => {
                if !matches!(
                    err.rdkafka_error_code(),
                    Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                ) {
                    bail!("produce failed: {err}");
                }
                r = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

async fn fresh_database() -> anyhow::Result<String> {
    let admin_url = std::env::var("DATABASE_URL").context("DATABASE_URL is not set")?;
    let name = format!("confab_bench_{}", Uuid::new_v4().simple());
    let admin = confab_common::db::connect(&admin_url).await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let url = confab_common::db::with_database(&admin_url, &name);
    let mut client = confab_common::db::connect(&url).await?;
    confab_common::db::migrate(&mut client).await?;
    Ok(url)
}

async fn fresh_topic(partitions: i32) -> anyhow::Result<KafkaConfig> {
    let mut kafka = KafkaConfig::from_env(&Env::process())?;
    kafka.topic = format!("confab.bench.{}", Uuid::new_v4().simple());
    // With its geneses, as `confab-admin create-topic` makes it: a persister
    // waits for the topic's layout before it stores anything.
    confab_common::testing::create_topic(&kafka, partitions).await;
    Ok(kafka)
}

fn persister_config(kafka: &KafkaConfig, url: &str) -> anyhow::Result<Config> {
    let mut config = Config::from_env(&Env::process())?;
    config.kafka = kafka.clone();
    config.database_url = url.to_owned();
    config.group = format!("confab-bench-{}", Uuid::new_v4().simple());
    Ok(config)
}

async fn throughput(n: usize, partitions: i32) -> anyhow::Result<()> {
    let kafka = fresh_topic(partitions).await?;
    let url = fresh_database().await?;
    let rooms: Vec<Uuid> = (0..ROOMS).map(|_| Uuid::new_v4()).collect();

    let mut pc = confab_common::kafka::producer_config(&kafka);
    pc.set("linger.ms", "20")
        .set("queue.buffering.max.messages", "200000");
    let producer: FutureProducer = pc.create()?;
    let started = Instant::now();
    for i in 0..n {
        // The final flush waits for every ack.
        drop(send(&producer, &kafka.topic, &record(&rooms, i)).await?);
    }
    producer.flush(Duration::from_secs(120))?;
    println!(
        "produced {n} records to {partitions} partitions in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let config = persister_config(&kafka, &url)?;
    let batch_size = config.batch_size;
    let persister = Persister::new(config);
    let stats = persister.stats();
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let started = Instant::now();
    let task = tokio::spawn(persister.run(listener, shutdown.clone()));

    let mut first: Option<(Instant, u64)> = None;
    loop {
        let done = stats.records_persisted();
        if first.is_none() && done > 0 {
            first = Some((Instant::now(), done));
        }
        if done >= n as u64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("only {done} of {n} records persisted after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = started.elapsed();
    let (first_at, first_n) = first.expect("records were persisted");
    let steady = first_at.elapsed();
    let batches = stats.batches();
    shutdown.cancel();
    task.await??;

    let client = confab_common::db::connect(&url).await?;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM messages", &[])
        .await?
        .get(0);
    if rows != n as i64 {
        bail!("messages holds {rows} rows, expected {n}");
    }
    println!(
        "persisted {n} records in {:.2}s including group join: {:.0} records/s",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64()
    );
    println!(
        "from the first stored batch on: {:.0} records/s ({batches} batches, batch size {batch_size})",
        (n as u64 - first_n) as f64 / steady.as_secs_f64()
    );
    Ok(())
}

async fn latency(rate: u64, seconds: u64, partitions: i32) -> anyhow::Result<()> {
    let kafka = fresh_topic(partitions).await?;
    let url = fresh_database().await?;
    let rooms: Vec<Uuid> = (0..ROOMS).map(|_| Uuid::new_v4()).collect();

    let persister = Persister::new(persister_config(&kafka, &url)?);
    let stats = persister.stats();
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let task = tokio::spawn(persister.run(listener, shutdown.clone()));
    // Let the group settle before measuring.
    while stats.assigned_partitions().len() != partitions as usize {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let producer: FutureProducer = confab_common::kafka::producer_config(&kafka).create()?;
    let n = (rate * seconds) as usize;
    let tick = Duration::from_secs_f64(1.0 / rate as f64);
    let started = tokio::time::Instant::now();
    let acks = std::sync::Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    for i in 0..n {
        tokio::time::sleep_until(started + tick * i as u32).await;
        let rec = record(&rooms, i);
        let delivery = send(&producer, &kafka.topic, &rec).await?;
        let (acks, id) = (acks.clone(), rec.id);
        tokio::spawn(async move {
            if let Ok(Ok(_)) = delivery.await {
                let at = confab_common::clock::now_ms();
                acks.lock().unwrap().push((id, at));
            }
        });
    }
    producer.flush(Duration::from_secs(60))?;
    while stats.records_persisted() < n as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    task.await??;

    let client = confab_common::db::connect(&url).await?;
    let row = client
        .query_one(
            "SELECT count(*),
                    percentile_cont(ARRAY[0.5, 0.9, 0.99, 0.999]) WITHIN GROUP (ORDER BY lag),
                    max(lag)
             FROM (SELECT extract(epoch FROM persisted_at - created_at)::float8 * 1000 AS lag
                   FROM messages) t",
            &[],
        )
        .await?;
    let count: i64 = row.get(0);
    let p: Vec<f64> = row.get(1);
    let max: f64 = row.get(2);
    println!(
        "{count} records at {rate}/s for {seconds}s over {partitions} partitions: publish-to-visible ms p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
        p[0], p[1], p[2], p[3], max
    );

    // The same from the broker's ack on, which leaves out the broker's
    // own produce latency.
    let persisted: std::collections::HashMap<Uuid, i64> = client
        .query(
            "SELECT id, (extract(epoch FROM persisted_at) * 1000)::int8 FROM messages",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut lags: Vec<i64> = acks
        .lock()
        .unwrap()
        .iter()
        .filter_map(|(id, ack)| persisted.get(id).map(|at| at - ack))
        .collect();
    lags.sort_unstable();
    if !lags.is_empty() {
        let q = |f: f64| lags[((lags.len() - 1) as f64 * f) as usize];
        println!(
            "ack-to-visible ms over {} records: p50 {} p90 {} p99 {} p99.9 {} max {} (negative: visible before the ack arrived)",
            lags.len(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            lags[lags.len() - 1]
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    confab_common::telemetry::init_tracing(&confab_common::config::LogConfig::from_env(
        &Env::process(),
    )?);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| -> anyhow::Result<u64> {
        args.get(i)
            .map(|s| s.parse().context("arguments are numbers"))
            .unwrap_or(Ok(default))
    };
    match args.first().map(String::as_str) {
        None | Some("throughput") => throughput(arg(1, 200_000)? as usize, arg(2, 16)? as i32).await,
        Some("latency") => latency(arg(1, 2000)?, arg(2, 20)?, arg(3, 16)? as i32).await,
        Some(other) => bail!("unknown mode {other}: use throughput [records] [partitions] or latency [rate] [seconds] [partitions]"),
    }
}
