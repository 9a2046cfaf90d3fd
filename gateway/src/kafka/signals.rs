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
//! presence, and whoever notices writes the tombstones of its keys. An
//! instance that reads a tombstone for one of its own live subscriptions
//! (written by another that took it for gone) announces it again.
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
    writer: tokio::task::JoinHandle<()>,
    reader: tokio::task::JoinHandle<()>,
}

impl Signals {
    /// Waits for both tasks after `stop` was cancelled (the writer flushes
    /// its last records, this instance's heartbeat tombstone among them).
    pub(crate) async fn stopped(self) {
        let _ = self.writer.await;
        let _ = self.reader.await;
    }
}

/// Starts the writer (this instance's subscriptions, heartbeats and typing)
/// and the reader (everyone's) for `config.topic`'s presence topic, and
/// makes the hub announce its subscribers through them. Both stop with
/// `stop`, which the caller cancels once every connection has ended.
pub(crate) async fn start(
    config: &KafkaConfig,
    hub: Arc<Hub>,
    stop: CancellationToken,
) -> Result<Signals, confab_common::kafka::KafkaError> {
    let topic = topic_of(&config.topic);
    confab_common::kafka::ensure_presence_topic(config, &topic).await?;
    let me = Uuid::new_v4();
    let mut pc = confab_common::kafka::producer_config(config);
    // Presence is best effort, and must not wait behind room records.
    pc.set("acks", "1").set("enable.idempotence", "false");
    let producer: FutureProducer = pc.create()?;
    let mut cc = confab_common::kafka::consumer_config(config, None);
    cc.set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer = cc.create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let (tx, rx) = mpsc::unbounded_channel();
    hub.set_presence_sink(tx.clone());
    let writer = Writer {
        producer: producer.clone(),
        topic: topic.clone(),
        me,
        typed: HashMap::new(),
    };
    let writer = tokio::spawn(writer.run(rx, stop.clone()));
    let reader = Reader {
        producer,
        topic,
        me,
        hub,
        tx,
        seen: HashMap::new(),
        typed: HashMap::new(),
    };
    let reader = tokio::spawn(reader.run(consumer, stop));
    tracing::info!(gateway = %me, "presence across gateways started");
    Ok(Signals { writer, reader })
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

/// Passes on at most one typing signal per (room, user) every
/// [`TYPING_EVERY`]; returns whether this one may go.
fn typing_allowed(typed: &mut HashMap<(Uuid, Uuid), Instant>, room: Uuid, user: Uuid) -> bool {
    let now = Instant::now();
    if typed.len() > 100_000 {
        typed.retain(|_, at| now.duration_since(*at) < TYPING_EVERY);
    }
    match typed.get(&(room, user)) {
        Some(at) if now.duration_since(*at) < TYPING_EVERY => false,
        _ => {
            typed.insert((room, user), now);
            true
        }
    }
}

/// At most one typing signal per user and room this often (CONTRACT §8).
const TYPING_EVERY: Duration = Duration::from_secs(2);

struct Writer {
    producer: FutureProducer,
    topic: String,
    me: Uuid,
    typed: HashMap<(Uuid, Uuid), Instant>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Local>, stop: CancellationToken) {
        let mut beat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                ev = rx.recv() => match ev {
                    Some(ev) => self.handle(ev),
                    None => break,
                },
                _ = beat.tick() => {
                    let v = serde_json::to_vec(&Beat { ts_ms: confab_common::clock::now_ms() })
                        .unwrap_or_default();
                    send(&self.producer, &self.topic, &format!("h/{}", self.me), Some(&v));
                }
            }
        }
        // Stopping: the connections have ended, and their leaves are queued.
        while let Ok(ev) = rx.try_recv() {
            self.handle(ev);
        }
        send(&self.producer, &self.topic, &format!("h/{}", self.me), None);
        let producer = self.producer;
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
    }

    fn handle(&mut self, ev: Local) {
        let me = self.me;
        match ev {
            Local::Join {
                room,
                client,
                user,
                info,
            } => {
                let Some(info) = std::str::from_utf8(&info)
                    .ok()
                    .and_then(|s| RawValue::from_string(s.to_owned()).ok())
                else {
                    return;
                };
                let v = serde_json::to_vec(&SubValue { user, info: &info }).unwrap_or_default();
                send(
                    &self.producer,
                    &self.topic,
                    &format!("p/{me}/{room}/{client}"),
                    Some(&v),
                );
            }
            Local::Leave { room, client } => {
                send(
                    &self.producer,
                    &self.topic,
                    &format!("p/{me}/{room}/{client}"),
                    None,
                );
            }
            Local::Typing {
                room,
                user,
                username,
            } => {
                if typing_allowed(&mut self.typed, room, user) {
                    let t = Typing {
                        user,
                        username,
                        ts_ms: confab_common::clock::now_ms(),
                    };
                    let v = serde_json::to_vec(&t).unwrap_or_default();
                    send(
                        &self.producer,
                        &self.topic,
                        &format!("t/{room}/{user}"),
                        Some(&v),
                    );
                }
            }
        }
    }
}

struct Reader {
    producer: FutureProducer,
    topic: String,
    me: Uuid,
    hub: Arc<Hub>,
    /// To announce again a subscription another instance tombstoned.
    tx: mpsc::UnboundedSender<Local>,
    /// When each other instance was last heard of.
    seen: HashMap<Uuid, Instant>,
    typed: HashMap<(Uuid, Uuid), Instant>,
}

impl Reader {
    async fn run(mut self, consumer: StreamConsumer, stop: CancellationToken) {
        let mut check = tokio::time::interval(Duration::from_secs(1));
        loop {
            let msg = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                _ = check.tick() => {
                    self.expire();
                    continue;
                }
                msg = consumer.recv() => msg,
            };
            match msg {
                Ok(msg) => {
                    if let Some(key) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) {
                        self.record(key, msg.payload());
                    }
                }
                Err(err) => {
                    tracing::debug!(%err, "presence consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Instances silent for [`EXPIRE`] are gone: their subscribers leave
    /// presence, and their keys get tombstones.
    fn expire(&mut self) {
        let now = Instant::now();
        let gone: Vec<Uuid> = self
            .seen
            .iter()
            .filter(|(_, t)| now.duration_since(**t) > EXPIRE)
            .map(|(g, _)| *g)
            .collect();
        for g in gone {
            self.seen.remove(&g);
            let removed = self.hub.remote_gone(g);
            tracing::info!(gateway = %g, subscribers = removed.len(), "gateway gone from presence");
            for (room, client) in removed {
                send(
                    &self.producer,
                    &self.topic,
                    &format!("p/{g}/{room}/{client}"),
                    None,
                );
            }
            send(&self.producer, &self.topic, &format!("h/{g}"), None);
        }
        metrics::gauge!(m::REMOTE_GATEWAYS).set(self.seen.len() as f64);
    }

    fn record(&mut self, key: &str, payload: Option<&[u8]>) {
        let mut parts = key.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("h"), Some(g), None, None) => {
                let Ok(g) = g.parse::<Uuid>() else { return };
                if g == self.me {
                    return;
                }
                if payload.is_some() {
                    self.seen.insert(g, Instant::now());
                } else if self.seen.remove(&g).is_some() {
                    self.hub.remote_gone(g);
                }
            }
            (Some("p"), Some(g), Some(room), Some(client)) => {
                let (Ok(g), Ok(room)) = (g.parse::<Uuid>(), room.parse::<Uuid>()) else {
                    return;
                };
                if g == self.me {
                    // Another instance took this one for gone and removed a
                    // subscription that is still here: announce it again.
                    if payload.is_none() {
                        if let Some((user, info)) = self.hub.local_subscriber(room, client) {
                            let client = client.to_owned();
                            let _ = self.tx.send(Local::Join {
                                room,
                                client,
                                user,
                                info,
                            });
                        }
                    }
                    return;
                }
                match payload.map(serde_json::from_slice::<SubValue<'_>>) {
                    Some(Ok(v)) => {
                        // An instance not heard of yet has EXPIRE to show a
                        // heartbeat.
                        self.seen.entry(g).or_insert_with(Instant::now);
                        let info = Bytes::copy_from_slice(v.info.get().as_bytes());
                        self.hub.remote_join(room, g, client, v.user, info);
                    }
                    Some(Err(_)) => {}
                    None => self.hub.remote_leave(room, g, client),
                }
            }
            (Some("t"), Some(room), Some(_), None) => {
                let Ok(room) = room.parse::<Uuid>() else {
                    return;
                };
                let Some(Ok(t)) = payload.map(serde_json::from_slice::<Typing>) else {
                    return;
                };
                // Old signals (read at start, or late) are not news.
                if (confab_common::clock::now_ms() - t.ts_ms).abs() > TYPING_MAX_AGE_MS {
                    return;
                }
                if typing_allowed(&mut self.typed, room, t.user) {
                    self.hub.typing(room, t.user, &t.username);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_passes_one_per_user_and_room_every_two_seconds() {
        let mut typed = HashMap::new();
        let (room, other_room, user) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        assert!(typing_allowed(&mut typed, room, user));
        assert!(!typing_allowed(&mut typed, room, user), "within 2 s");
        assert!(typing_allowed(&mut typed, other_room, user), "another room");
        assert!(
            typing_allowed(&mut typed, room, Uuid::new_v4()),
            "another user"
        );
        typed.insert((room, user), Instant::now() - TYPING_EVERY);
        assert!(typing_allowed(&mut typed, room, user), "2 s later");
    }
}
