//! The gateway's Kafka side: a consumer of every partition (no group split)
//! feeding the [`Hub`], and the producer for publications.
//!
//! At start each partition is read from `max(low, high - prefill)`, so a fresh
//! instance already holds the recent past of every room and can answer
//! recovery for it. [`Consumer::caught_up`] turns true once the start-time
//! high watermarks are reached.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use confab_common::config::KafkaConfig;
use confab_common::record::RoomRecord;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::metrics as m;

/// A Kafka failure at start.
#[derive(Debug, thiserror::Error)]
pub enum KafkaStartError {
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topic {0} has no partitions")]
    NoTopic(String),
    #[error("cancelled")]
    Cancelled,
}

/// Creates the idempotent producer.
pub fn producer(config: &KafkaConfig) -> Result<FutureProducer, rdkafka::error::KafkaError> {
    confab_common::kafka::producer_config(config).create()
}

fn consumer(config: &KafkaConfig) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
    let mut c = confab_common::kafka::consumer_config(config, None);
    c.set("auto.offset.reset", "earliest");
    c.create()
}

/// Waits until the topic exists and returns its partition count.
pub async fn discover_partitions(
    config: &KafkaConfig,
    shutdown: &CancellationToken,
) -> Result<usize, KafkaStartError> {
    let probe = Arc::new(consumer(config)?);
    let mut warned = false;
    loop {
        let c = Arc::clone(&probe);
        let topic = config.topic.clone();
        let found = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(Some(&topic), Duration::from_secs(5))
                .ok()
                .and_then(|md| {
                    md.topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .map(|t| t.partitions().len())
                })
                .unwrap_or(0)
        })
        .await
        .unwrap_or(0);
        if found > 0 {
            return Ok(found);
        }
        if !warned {
            tracing::warn!(topic = %config.topic, "waiting for the room topic to exist");
            warned = true;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Err(KafkaStartError::Cancelled),
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The running consumer.
pub struct Consumer {
    /// False while the broker does not answer watermark queries (checked
    /// every 5 s), for `/healthz`.
    pub broker_up: Arc<AtomicBool>,
    /// True once the start-time high watermarks are reached.
    pub caught_up: watch::Receiver<bool>,
    /// The consumer task; it ends when shutdown is cancelled.
    pub task: tokio::task::JoinHandle<()>,
}

/// Assigns every partition from its prefill start and spawns the read loop
/// and the lag reporter.
pub async fn start_consumer(
    config: &KafkaConfig,
    hub: Arc<Hub>,
    prefill: i64,
    shutdown: CancellationToken,
) -> Result<Consumer, KafkaStartError> {
    let consumer = Arc::new(consumer(config)?);
    let partitions = hub.partitions().len();
    let topic = config.topic.clone();
    let c = Arc::clone(&consumer);
    let t = topic.clone();
    let marks = tokio::task::spawn_blocking(move || {
        (0..partitions)
            .map(|p| c.fetch_watermarks(&t, p as i32, Duration::from_secs(10)))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|_| KafkaStartError::Cancelled)??;

    let mut tpl = TopicPartitionList::new();
    let mut targets = Vec::with_capacity(partitions);
    for (p, (low, high)) in marks.iter().copied().enumerate() {
        let start = low.max(high - prefill).max(0);
        hub.init_partition(p, start, high);
        tpl.add_partition_offset(&topic, p as i32, Offset::Offset(start))?;
        targets.push(high);
        tracing::debug!(partition = p, start, high, "partition assigned");
    }
    consumer.assign(&tpl)?;

    let (tx, rx) = watch::channel(false);
    let done = |hub: &Hub, targets: &[i64]| {
        hub.partitions()
            .iter()
            .zip(targets)
            .all(|(p, &t)| p.top.load(Ordering::Acquire) + 1 >= t)
    };
    if done(&hub, &targets) {
        let _ = tx.send(true);
    }

    let broker_up = Arc::new(AtomicBool::new(true));
    tokio::spawn(report_lag(
        Arc::clone(&consumer),
        topic.clone(),
        Arc::clone(&hub),
        Arc::clone(&broker_up),
        shutdown.clone(),
    ));

    let task = tokio::spawn(async move {
        let mut caught_up = *tx.borrow();
        loop {
            let msg = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                msg = consumer.recv() => msg,
            };
            let msg = match msg {
                Ok(msg) => msg,
                Err(err) => {
                    tracing::warn!(%err, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let partition = msg.partition() as usize;
            let offset = msg.offset();
            metrics::counter!(m::RECORDS_CONSUMED).increment(1);
            match msg.payload().map(RoomRecord::decode) {
                Some(Ok(record)) => hub.deliver(partition, offset, &record),
                Some(Err(err)) => {
                    metrics::counter!(m::BAD_RECORDS).increment(1);
                    tracing::warn!(%err, partition, offset, "skipping undecodable record");
                    hub.skip(partition, offset);
                }
                None => hub.skip(partition, offset),
            }
            if !caught_up && done(&hub, &targets) {
                caught_up = true;
                let _ = tx.send(true);
                tracing::info!("consumer caught up with the topic");
            }
        }
    });
    Ok(Consumer {
        broker_up,
        caught_up: rx,
        task,
    })
}

/// Every 5 s, reads the high watermarks and publishes the lag gauge.
async fn report_lag(
    consumer: Arc<StreamConsumer>,
    topic: String,
    hub: Arc<Hub>,
    broker_up: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let c = Arc::clone(&consumer);
        let t = topic.clone();
        let n = hub.partitions().len();
        let Ok(marks) = tokio::task::spawn_blocking(move || {
            (0..n)
                .map(|p| {
                    c.fetch_watermarks(&t, p as i32, Duration::from_secs(5))
                        .ok()
                })
                .collect::<Vec<_>>()
        })
        .await
        else {
            continue;
        };
        let up = marks.iter().all(Option::is_some);
        if broker_up.swap(up, Ordering::AcqRel) != up {
            if up {
                tracing::info!("broker reachable again");
            } else {
                tracing::warn!("broker not answering watermark queries");
            }
        }
        let mut lag = 0i64;
        for (p, mark) in marks.into_iter().enumerate() {
            if let Some((_, high)) = mark {
                let state = &hub.partitions()[p];
                state.high.fetch_max(high, Ordering::AcqRel);
                lag += (high - (state.top.load(Ordering::Acquire) + 1)).max(0);
            }
        }
        metrics::gauge!(m::CONSUMER_LAG).set(lag as f64);
    }
}
