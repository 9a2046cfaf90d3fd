//! Presence and typing across gateways, through the presence topic.
//!
//! Every gateway instance has a random id for its lifetime. It writes to the
//! compacted topic `<room topic>.presence`:
//! - `p/<gateway>/<room>/<client>`: one of its subscriptions (the value is
//!   the subscriber's user and info), or a tombstone when it ends;
//! - `h/<gateway>`: a heartbeat every [`HEARTBEAT`], and a tombstone when the
//!   instance stops cleanly;
//! - `t/<room>/<user>`: a typing signal, which is never stored anywhere else.
//!
//! Every instance reads the whole topic from its start (compaction keeps it
//! at the live subscriptions) and keeps, per room, the subscribers of the
//! others ([`Hub::remote_join`]), so `presence`, `presence_stats`, join and
//! leave cover every instance. An instance whose heartbeat has not been read
//! for [`EXPIRE`] is gone (killed, or cut off): its subscribers leave
//! presence, and whoever notices writes the tombstones of its keys.
//!
//! Why this and not another mechanism: Kafka is already the one thing every
//! gateway shares; a compacted topic gives a new instance the current state
//! without asking anyone, and keeps presence out of the room stream (which
//! is history, persisted and recovered). No Redis is needed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use confab_common::config::KafkaConfig;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::hub::Hub;
use crate::metrics as m;

/// How often an instance says it is alive.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long an instance may be silent before it counts as gone.
pub(crate) const EXPIRE: Duration = Duration::from_secs(8);
/// How old a typing signal may be when it is read (clock skew included).
const TYPING_MAX_AGE_MS: i64 = 5_000;

/// The presence topic of a room topic.
pub(crate) fn topic_of(room_topic: &str) -> String {
    format!("{room_topic}.presence")
}

/// What the hub tells the presence writer about this instance's own
/// subscribers.
#[derive(Debug)]
pub(crate) enum Local {
    Join {
        room: Uuid,
        client: String,
        user: Uuid,
        info: Bytes,
    },
    Leave {
        room: Uuid,
        client: String,
    },
    /// A member asked to tell the room they are typing.
    Typing {
        room: Uuid,
        user: Uuid,
        username: String,
    },
}

#[derive(Serialize, Deserialize)]
struct SubValue<'a> {
    user: Uuid,
    #[serde(borrow)]
    info: &'a RawValue,
}

#[derive(Serialize, Deserialize)]
struct Beat {
    ts_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct Typing {
    user: Uuid,
    username: String,
    ts_ms: i64,
}

/// The presence side of one instance, running.
pub(crate) struct Signals {
    pub(crate) tx: mpsc::UnboundedSender<Local>,
    pub(crate) writer: tokio::task::JoinHandle<()>,
    pub(crate) reader: tokio::task::JoinHandle<()>,
}

/// Starts the writer (this instance's subscriptions, heartbeats and typing)
/// and the reader (everyone's) for `config.topic`'s presence topic.
pub(crate) async fn start(
    config: &KafkaConfig,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) -> Result<Signals, rdkafka::error::KafkaError> {
    let topic = topic_of(&config.topic);
    confab_common::kafka::ensure_presence_topic(config, &topic)
        .await
        .map_err(|e| match e {
            confab_common::kafka::KafkaError::Client(k) => k,
            other => {
                tracing::warn!(%other, "cannot create the presence topic");
                rdkafka::error::KafkaError::Canceled
            }
        })?;
    let me = Uuid::new_v4();
    let mut pc = confab_common::kafka::producer_config(config);
    // Presence is best effort and must not queue behind room records.
    pc.set("acks", "1").set("enable.idempotence", "false");
    let producer: FutureProducer = pc.create()?;
    let mut cc = confab_common::kafka::consumer_config(config, None);
    cc.set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer = cc.create()?;
    let partitions = {
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        md.topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(1, |t| t.partitions().len().max(1))
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write(
        producer.clone(),
        topic.clone(),
        me,
        rx,
        shutdown.clone(),
    ));
    let reader = tokio::spawn(read(consumer, producer, topic, me, hub, shutdown));
    tracing::info!(gateway = %me, "presence across gateways started");
    Ok(Signals { tx, writer, reader })
}

fn send(producer: &FutureProducer, topic: &str, key: &str, value: Option<&[u8]>) {
    let mut r: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
    if let Some(v) = value {
        r = r.payload(v);
    }
    // Fire and forget: nobody waits for presence.
    if let Err((err, _)) = producer.send_result(r) {
        metrics::counter!(m::PRESENCE_DROPPED).increment(1);
        tracing::debug!(%err, "presence record dropped");
    }
}

async fn write(
    producer: FutureProducer,
    topic: String,
    me: Uuid,
    mut rx: mpsc::UnboundedReceiver<Local>,
    shutdown: CancellationToken,
) {
    let mut beat = tokio::time::interval(HEARTBEAT);
    let hb_key = format!("h/{me}");
    // Typing passed on, per (room, user), at most one per 2 s.
    let mut typed: HashMap<(Uuid, Uuid), Instant> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            ev = rx.recv() => match ev {
                None => break,
                Some(Local::Join { room, client, user, info }) => {
                    let key = format!("p/{me}/{room}/{client}");
                    let info = std::str::from_utf8(&info).ok().and_then(|s| RawValue::from_string(s.to_owned()).ok());
                    if let Some(info) = info {
                        let v = serde_json::to_vec(&SubValue { user, info: &info }).unwrap_or_default();
                        send(&producer, &topic, &key, Some(&v));
                    }
                }
                Some(Local::Leave { room, client }) => {
                    send(&producer, &topic, &format!("p/{me}/{room}/{client}"), None);
                }
                Some(Local::Typing { room, user, username }) => {
                    let now = Instant::now();
                    let last = typed.entry((room, user)).or_insert(now - Duration::from_secs(60));
                    if now.duration_since(*last) >= Duration::from_secs(2) {
                        *last = now;
                        let v = serde_json::to_vec(&Typing { user, username, ts_ms: confab_common::clock::now_ms() }).unwrap_or_default();
                        send(&producer, &topic, &format!("t/{room}/{user}"), Some(&v));
                    }
                    if typed.len() > 100_000 {
                        typed.retain(|_, t| now.duration_since(*t) < Duration::from_secs(2));
                    }
                }
            },
            _ = beat.tick(), if !shutdown.is_cancelled() => {
                let v = serde_json::to_vec(&Beat { ts_ms: confab_common::clock::now_ms() }).unwrap_or_default();
                send(&producer, &topic, &hb_key, Some(&v));
            }
        }
    }
    // Every sender is gone: the instance is stopping and its subscribers have
    // left. Say so, and wait for it to be written.
    send(&producer, &topic, &hb_key, None);
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
}

async fn read(
    consumer: StreamConsumer,
    producer: FutureProducer,
    topic: String,
    me: Uuid,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) {
    // When each other instance was last heard of.
    let mut seen: HashMap<Uuid, Instant> = HashMap::new();
    // Typing passed on, per (room, user), at most one per 2 s.
    let mut typed: HashMap<(Uuid, Uuid), Instant> = HashMap::new();
    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        let msg = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            _ = check.tick() => {
                let now = Instant::now();
                let gone: Vec<Uuid> = seen
                    .iter()
                    .filter(|(_, t)| now.duration_since(**t) > EXPIRE)
                    .map(|(g, _)| *g)
                    .collect();
                for g in gone {
                    seen.remove(&g);
                    let removed = hub.remote_gone(g);
                    tracing::info!(gateway = %g, subscribers = removed.len(), "gateway gone from presence");
                    for (room, client) in removed {
                        send(&producer, &topic, &format!("p/{g}/{room}/{client}"), None);
                    }
                    send(&producer, &topic, &format!("h/{g}"), None);
                }
                continue;
            }
            msg = consumer.recv() => msg,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(err) => {
                tracing::debug!(%err, "presence consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Some(key) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) else {
            continue;
        };
        let mut parts = key.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("h"), Some(g), None, None) => {
                let Ok(g) = g.parse::<Uuid>() else { continue };
                if g == me {
                    continue;
                }
                if msg.payload().is_some() {
                    seen.insert(g, Instant::now());
                } else if seen.remove(&g).is_some() {
                    hub.remote_gone(g);
                }
            }
            (Some("p"), Some(g), Some(room), Some(client)) => {
                let (Ok(g), Ok(room)) = (g.parse::<Uuid>(), room.parse::<Uuid>()) else {
                    continue;
                };
                if g == me {
                    continue;
                }
                match msg
                    .payload()
                    .map(serde_json::from_slice::<SubValue<'_>>)
                {
                    Some(Ok(v)) => {
                        // A subscription of an instance not heard of yet: it
                        // has EXPIRE to show a heartbeat.
                        seen.entry(g).or_insert_with(Instant::now);
                        let info = Bytes::copy_from_slice(v.info.get().as_bytes());
                        hub.remote_join(room, g, client, v.user, info);
                    }
                    Some(Err(_)) => {}
                    None => hub.remote_leave(room, g, client),
                }
            }
            (Some("t"), Some(room), Some(_), None) => {
                let Ok(room) = room.parse::<Uuid>() else { continue };
                let Some(Ok(t)) = msg.payload().map(serde_json::from_slice::<Typing>) else {
                    continue;
                };
                let now_ms = confab_common::clock::now_ms();
                if (now_ms - t.ts_ms).abs() > TYPING_MAX_AGE_MS {
                    continue;
                }
                let now = Instant::now();
                let last = typed.entry((room, t.user)).or_insert(now - Duration::from_secs(60));
                if now.duration_since(*last) < Duration::from_secs(2) {
                    continue;
                }
                *last = now;
                hub.typing(room, t.user, &t.username);
                if typed.len() > 100_000 {
                    typed.retain(|_, at| now.duration_since(*at) < Duration::from_secs(2));
                }
            }
            _ => {}
        }
    }
}
