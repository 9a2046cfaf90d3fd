//! The gateway's Kafka side: a consumer of every partition of the topic's
//! layout (no group split) feeding the [`Hub`].
//!
//! At start each partition is read from `max(low, high - prefill)`, so a fresh
//! instance already holds the recent past of every room and can answer
//! recovery for it. [`Consumer::caught_up`] turns true once the start-time
//! high watermarks are reached.
//!
//! Positions come from the partition's incarnation (see
//! [`confab_common::stream`]). The loop starts a partition over, from the
//! start of its log and with empty windows, when its incarnation changes: the
//! layout watcher says so, a record's stamp disagrees and a check confirms
//! it, a genesis of a new incarnation arrives, or offsets go back (the topic
//! was created again).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use confab_common::config::KafkaConfig;
use confab_common::position::{Base, KafkaOffset};
use confab_common::record::TopicRecord;
use confab_common::stream::{Layout, LayoutWatch};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::metrics as m;

/// How soon a disagreeing stamp may trigger another layout check.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

fn consumer(config: &KafkaConfig) -> Result<StreamConsumer, rdkafka::error::KafkaError> {
    let mut c = confab_common::kafka::consumer_config(config, None);
    c.set("auto.offset.reset", "earliest");
    c.create()
}

/// The running consumer.
pub(crate) struct Consumer {
    /// False while the broker does not answer watermark queries (checked
    /// every 5 s), for `/healthz`.
    pub(crate) broker_up: Arc<AtomicBool>,
    /// True once the start-time high watermarks are reached.
    pub(crate) caught_up: watch::Receiver<bool>,
    /// The consumer task; it ends when shutdown is cancelled.
    pub(crate) task: tokio::task::JoinHandle<()>,
}

/// Where the loop is in one partition.
#[derive(Debug, Clone, Copy)]
struct Reading {
    base: Base,
    /// The last Kafka offset processed, or -1.
    last: i64,
}

struct Loop {
    consumer: Arc<StreamConsumer>,
    topic: String,
    hub: Arc<Hub>,
    layout: LayoutWatch,
    reading: Vec<Reading>,
}

impl Loop {
    /// Starts `partition` over in incarnation `base`, from its first record.
    fn restart(&mut self, partition: usize, base: Base) {
        let old = self.reading[partition].base;
        tracing::warn!(partition, old = old.0, new = base.0, epoch = %base.epoch(),
            "partition incarnation changed: reading it again from its start");
        metrics::counter!(m::INCARNATION_CHANGES).increment(1);
        self.reading[partition] = Reading { base, last: -1 };
        self.hub
            .init_partition(partition, base, base.floor(), base.floor());
        if let Err(err) = self.consumer.seek(
            &self.topic,
            partition as i32,
            Offset::Beginning,
            Duration::from_secs(5),
        ) {
            tracing::warn!(%err, partition, "seek to the partition start failed");
        }
    }

    /// Restarts every partition whose incarnation `layout` says changed.
    fn follow(&mut self, layout: &Layout) {
        for p in 0..self.reading.len() {
            if let Some(base) = layout.base(p as i32) {
                if base != self.reading[p].base {
                    self.restart(p, base);
                }
            }
        }
    }

    /// Checks the layout (at once when `force`) and follows it. Returns
    /// whether `partition` was restarted.
    async fn check(&mut self, partition: usize, force: bool) -> bool {
        let state = if force {
            self.layout.refresh().await
        } else {
            self.layout.refresh_unless_recent(RECHECK_AFTER).await
        };
        let before = self.reading[partition].base;
        if let Some(layout) = state.layout() {
            let layout = Arc::clone(layout);
            self.follow(&layout);
        }
        self.reading[partition].base != before
    }

    /// Processes one record. Returns `Some(force)` instead when the layout
    /// must be checked first (`checked` is false): offsets went back, or the
    /// record names another incarnation than the one being read.
    fn on_message(
        &mut self,
        p: usize,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        checked: bool,
    ) -> Option<bool> {
        if p >= self.reading.len() {
            return None;
        }
        if offset <= self.reading[p].last {
            // Offsets went back without a seek of ours: the log may have been
            // replaced. Otherwise it is a record already processed.
            return (!checked).then_some(true);
        }
        let record = match payload.map(|b| TopicRecord::decode(key, b)) {
            Some(Ok(r)) => r,
            Some(Err(err)) => {
                metrics::counter!(m::BAD_RECORDS).increment(1);
                tracing::warn!(%err, partition = p, offset, "skipping undecodable record");
                self.skip(p, offset);
                return None;
            }
            None => {
                self.skip(p, offset);
                return None;
            }
        };
        let base = self.reading[p].base;
        match record {
            TopicRecord::Genesis(g) => {
                if !checked && g.base != base.0 {
                    return Some(true);
                }
                self.skip(p, offset);
            }
            TopicRecord::Room(record) => {
                if !checked && record.base.is_some_and(|b| b != base.0) {
                    return Some(false);
                }
                self.reading[p].last = offset;
                let position = base.position(KafkaOffset(offset));
                self.layout.note_position(position);
                self.hub.deliver(p, position, &record);
            }
        }
        None
    }

    fn skip(&mut self, p: usize, offset: i64) {
        let r = &mut self.reading[p];
        r.last = offset;
        self.hub.skip(p, r.base.position(KafkaOffset(offset)));
    }
}

/// Assigns every partition of `layout` from its prefill start and spawns the
/// read loop and the lag reporter.
pub(crate) async fn start_consumer(
    config: &KafkaConfig,
    hub: Arc<Hub>,
    layout: LayoutWatch,
    prefill: i64,
    shutdown: CancellationToken,
) -> Result<Consumer, rdkafka::error::KafkaError> {
    let consumer = Arc::new(consumer(config)?);
    let current = layout
        .layout()
        .expect("the layout is ready before the consumer starts");
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
    .map_err(|_| rdkafka::error::KafkaError::Canceled)??;

    let mut tpl = TopicPartitionList::new();
    let mut targets = Vec::with_capacity(partitions);
    let mut reading = Vec::with_capacity(partitions);
    for (p, (low, high)) in marks.iter().copied().enumerate() {
        let base = current
            .base(p as i32)
            .expect("the hub has the layout's partitions");
        let start = low.max(high - prefill).max(0);
        hub.init_partition(
            p,
            base,
            base.before(KafkaOffset(start)),
            base.before(KafkaOffset(high)),
        );
        tpl.add_partition_offset(&topic, p as i32, Offset::Offset(start))?;
        targets.push(high);
        reading.push(Reading {
            base,
            last: start - 1,
        });
        tracing::debug!(
            partition = p,
            start,
            high,
            base = base.0,
            "partition assigned"
        );
    }
    consumer.assign(&tpl)?;

    let (tx, rx) = watch::channel(false);
    let done = |reading: &[Reading], targets: &[i64]| {
        reading.iter().zip(targets).all(|(r, &t)| r.last + 1 >= t)
    };
    if done(&reading, &targets) {
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

    let mut changes = layout.subscribe();
    let mut lp = Loop {
        consumer: Arc::clone(&consumer),
        topic,
        hub,
        layout,
        reading,
    };
    let task = tokio::spawn(async move {
        let mut caught_up = *tx.borrow();
        loop {
            let msg = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                r = changes.changed() => {
                    if r.is_err() {
                        break;
                    }
                    let layout = changes.borrow_and_update().layout().cloned();
                    if let Some(layout) = layout {
                        lp.follow(&layout);
                    }
                    continue;
                }
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
            metrics::counter!(m::RECORDS_CONSUMED).increment(1);
            let (p, offset) = (msg.partition() as usize, msg.offset());
            if let Some(force) = lp.on_message(p, offset, msg.key(), msg.payload(), false) {
                // Rare: copy the record, check the layout, then carry on
                // unless the partition was started over.
                let (key, payload) = (
                    msg.key().map(<[u8]>::to_vec),
                    msg.payload().map(<[u8]>::to_vec),
                );
                drop(msg);
                if !lp.check(p, force).await {
                    lp.on_message(p, offset, key.as_deref(), payload.as_deref(), true);
                }
            }
            if !caught_up && done(&lp.reading, &targets) {
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
        let mut lag = 0u64;
        for (p, mark) in marks.into_iter().enumerate() {
            if let Some((_, high)) = mark {
                let state = &hub.partitions()[p];
                let end = state.base().before(KafkaOffset(high));
                state.high.fetch_max(end.0, Ordering::AcqRel);
                lag += end.0.saturating_sub(state.top.load(Ordering::Acquire));
            }
        }
        metrics::gauge!(m::CONSUMER_LAG).set(lag as f64);
    }
}
