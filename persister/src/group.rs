//! Membership of the consumer group: the librdkafka callbacks that keep the
//! ledger in step with rebalances, and the lag gauge.
//!
//! # Rebalances (eager protocol)
//!
//! When partitions are revoked, librdkafka calls `pre_rebalance` inside
//! `recv()`. There the stored offsets of the revoked partitions are committed
//! synchronously, then forgotten. Records of those partitions that are not
//! yet stored are not committed by this instance afterwards: the reader drops
//! those still pending, and a batch already handed to a writer is stored but
//! its offsets are not committed (commits only cover owned partitions). The
//! new owner starts at the committed offset and reads those records again;
//! storing a record twice is a no-op (the key is the record id), so the table
//! has neither gaps nor duplicates.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::{self as m, kind};
use crate::state::Shared;

/// The librdkafka callbacks.
pub(crate) struct Ctx {
    shared: Arc<Shared>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        counter!(m::ERRORS, "kind" => kind::KAFKA_CLIENT).increment(1);
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let ledger = &self.shared.ledger;
                let parts = ledger.partitions(tpl);
                // Commit what is stored for the partitions we are losing; the
                // new owner starts from there.
                let list = ledger.uncommitted(Some(&parts));
                let ok = ledger.commit(consumer, &list, CommitMode::Sync);
                ledger.revoke(&parts);
                tracing::info!(partitions = ?parts, committed = ?list, commit_ok = ok, "partitions revoked");
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(err) => {
                counter!(m::ERRORS, "kind" => kind::KAFKA_CLIENT).increment(1);
                tracing::warn!(error = %err, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = self.shared.ledger.partitions(tpl);
            self.shared.ledger.assign(&parts);
            tracing::info!(partitions = ?parts, "partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        tracing::debug!(?result, ?offsets, "commit callback");
        if let Err(err) = result {
            counter!(m::ERRORS, "kind" => kind::KAFKA_COMMIT).increment(1);
            tracing::warn!(error = %err, "offset commit failed, will retry");
            self.shared.ledger.commit_failed(offsets);
        }
    }
}

pub(crate) type Kafka = StreamConsumer<Ctx>;

/// Joins the group (lazily: the broker may be down).
pub(crate) fn join(config: &Config, shared: Arc<Shared>) -> KafkaResult<Kafka> {
    let mut c = confab_common::kafka::consumer_config(&config.kafka, Some(&config.group));
    c.set(
        "session.timeout.ms",
        config.session_timeout.as_millis().to_string(),
    );
    let consumer: Kafka = c.create_with_context(Ctx { shared })?;
    consumer.subscribe(&[&config.kafka.topic])?;
    Ok(consumer)
}

/// Measures consumer lag per owned partition every `every`, until
/// `shutdown`.
pub(crate) async fn measure_lag(
    consumer: Arc<Kafka>,
    shared: Arc<Shared>,
    topic: String,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut reported: BTreeSet<i32> = BTreeSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let parts = shared.ledger.assigned();
        let (c, t) = (consumer.clone(), topic.clone());
        let lags = tokio::task::spawn_blocking(move || lag_of(&c, &t, &parts)).await;
        match lags {
            Ok(Ok(lags)) => {
                let now: BTreeSet<i32> = lags.iter().map(|(p, _)| *p).collect();
                for p in reported.difference(&now) {
                    gauge!(m::LAG, "partition" => p.to_string()).set(0.0);
                }
                for (p, lag) in lags {
                    gauge!(m::LAG, "partition" => p.to_string()).set(lag as f64);
                }
                reported = now;
            }
            Ok(Err(err)) => {
                counter!(m::ERRORS, "kind" => kind::LAG).increment(1);
                tracing::debug!(error = %err, "measuring consumer lag failed");
            }
            Err(err) => tracing::warn!(error = %err, "lag task failed"),
        }
    }
}

/// Lag per partition: the high watermark minus the group's committed offset.
fn lag_of(consumer: &Kafka, topic: &str, parts: &[i32]) -> KafkaResult<Vec<(i32, i64)>> {
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    let timeout = Duration::from_secs(2);
    let mut tpl = TopicPartitionList::with_capacity(parts.len());
    for &p in parts {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    let mut lags = Vec::with_capacity(parts.len());
    for &p in parts {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => low,
        };
        lags.push((p, (high - done).max(0)));
    }
    Ok(lags)
}
