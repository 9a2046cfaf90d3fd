//! Rooms: who is subscribed on this instance, the recovery window, fan-out.
//!
//! Every record the Kafka consumer reads goes through [`Hub::deliver`]: under
//! its room's shard lock the publication is appended to the room's window and
//! its push bytes, encoded once, are handed to each subscriber's bounded queue.
//! A subscribe takes the same lock, so its reply position and the pushes that
//! follow it never overlap or leave a gap.
//!
//! Positions: a room lives in one partition, and a publication's offset is its
//! stream position there ([`confab_common::position`]); the hub only ever sees
//! positions, never Kafka offsets. A subscriber's position may be any position
//! of that partition (they have gaps because rooms share partitions). The
//! window of a room holds every publication of the room with a position above
//! its floor: the larger of "where this instance started reading the
//! partition" and "the newest publication evicted from the window". The epoch
//! is the partition's incarnation; when it changes, the rooms of that
//! partition start over.
//!
//! Presence covers every gateway: the hub tells the presence writer
//! ([`crate::kafka::signals`]) about its own subscribers, and keeps, per
//! room, the subscribers other instances announce ([`Hub::remote_join`]).
//! Join and leave pushes go only to subscribers that asked for them
//! (`join_leave` in subscribe), as in Centrifugo.
//!
//! Memory: a window is bounded in entries, age, and bytes, per room
//! ([`HubConfig::history_bytes_per_room`]) and across all rooms
//! ([`HubConfig::history_bytes_total`]). Evicting moves the room's floor, so
//! recovery never claims what was dropped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use confab_common::position::{Base, Position};
use confab_common::record::{RecordKind, RoomRecord};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::kafka::signals::Local;
use crate::metrics as m;
use crate::protocol::{self, unsubscribe_codes, Disconnect};

/// What the hub sends to a connection, in stream order.
#[derive(Debug)]
pub enum Outbound {
    /// Bytes to write as they are (a push).
    Push(Bytes),
    /// The server removed a subscription (the user left the room). Boxed:
    /// this rare variant would otherwise double every queue slot.
    Unsubscribed(Box<Unsubscribed>),
}

// Every connection's queue allocates its slots in blocks of 32: keep a slot
// the size of a push.
const _: () = assert!(std::mem::size_of::<Outbound>() == std::mem::size_of::<Bytes>());

/// Subscription `sub_id` to `room` is over; `push` tells the client.
#[derive(Debug)]
pub struct Unsubscribed {
    pub room: Uuid,
    pub sub_id: u64,
    pub push: Bytes,
}

/// A connection as the hub sees it.
#[derive(Debug)]
pub struct Peer {
    /// The client id given in the connect reply.
    pub client: String,
    pub user: Uuid,
    pub username: String,
    /// `{"user":..,"client":..,"conn_info":..}` for presence, join and leave.
    pub info: Bytes,
    /// The connection's bounded send queue.
    pub queue: mpsc::Sender<Outbound>,
    /// Cancelled to disconnect the connection from outside its task.
    pub kill: CancellationToken,
    /// The disconnect code chosen by whoever cancelled `kill` first.
    kill_code: AtomicU32,
}

impl Peer {
    pub fn new(
        client: String,
        user: Uuid,
        username: String,
        queue: mpsc::Sender<Outbound>,
        kill: CancellationToken,
    ) -> Self {
        let info = protocol::encode_client_info(&user.to_string(), &client, &username);
        Self {
            client,
            user,
            username,
            info,
            queue,
            kill,
            kill_code: AtomicU32::new(0),
        }
    }

    /// Disconnects the connection with `d` (the first caller's code wins).
    pub fn kill(&self, d: Disconnect) {
        let _ = self.kill_code.compare_exchange(
            0,
            u32::from(d.code),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.kill.cancel();
    }

    /// The code passed to [`Peer::kill`].
    pub fn kill_code(&self) -> u16 {
        self.kill_code.load(Ordering::Acquire) as u16
    }

    /// Queues `msg`; a full queue disconnects the slow consumer.
    fn offer(&self, msg: Outbound) -> bool {
        match self.queue.try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                if !self.kill.is_cancelled() {
                    metrics::counter!(m::SLOW_CONSUMER_DISCONNECTS).increment(1);
                }
                metrics::counter!(m::SEND_QUEUE_DROPS).increment(1);
                self.kill(Disconnect::SLOW);
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

/// One stored publication.
#[derive(Debug, Clone)]
pub struct Entry {
    pub offset: u64,
    pub ts_ms: i64,
    /// The encoded publication, shared by pushes and replies.
    pub publication: Bytes,
}

struct Sub {
    peer: Arc<Peer>,
    /// Positions up to this one were already delivered (by recovery on a
    /// gateway that had read further); they are not pushed again.
    skip_until: u64,
    /// Whether it asked for join and leave pushes.
    join_leave: bool,
}

/// A subscriber on another gateway instance, as it announced itself.
struct Remote {
    user: Uuid,
    info: Bytes,
}

struct Room {
    channel: Arc<str>,
    partition: usize,
    window: VecDeque<Entry>,
    /// The newest position evicted from the window, or 0.
    evicted: u64,
    subs: HashMap<u64, Sub>,
    /// Subscribers of other instances: (instance, client id).
    remote: HashMap<(Uuid, String), Remote>,
    /// Users whose latest membership record is `member_left`.
    departed: HashSet<Uuid>,
    /// Bytes of the publications in `window`.
    bytes: usize,
}

/// Per-partition progress of this instance's consumer, in positions.
#[derive(Debug)]
pub struct PartitionState {
    /// The incarnation's base; its epoch is what clients see.
    base: AtomicU64,
    /// The last position processed, or `floor` before any.
    pub top: AtomicU64,
    /// Every record after this position has been (or will be) processed:
    /// the position before the one this instance started reading at.
    pub floor: AtomicU64,
    /// The position of the broker's last record, as last seen.
    pub high: AtomicU64,
}

impl PartitionState {
    fn new() -> Self {
        Self {
            base: AtomicU64::new(0),
            top: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            high: AtomicU64::new(0),
        }
    }

    /// The incarnation this instance reads.
    pub fn base(&self) -> Base {
        Base(self.base.load(Ordering::Acquire))
    }

    fn epoch(&self) -> String {
        self.base().epoch()
    }
}

/// Settings for windows.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub partitions: usize,
    /// Publications kept per room.
    pub history_size: usize,
    /// Publications older than this are dropped from windows (0 = never).
    pub history_ttl_ms: i64,
    /// Publication bytes kept per room.
    pub history_bytes_per_room: usize,
    /// Publication bytes kept across every room of this instance.
    pub history_bytes_total: usize,
}

impl HubConfig {
    /// Windows of `history_size` entries with the default byte caps.
    pub fn with_size(partitions: usize, history_size: usize) -> Self {
        Self {
            partitions,
            history_size,
            history_ttl_ms: 0,
            history_bytes_per_room: 2 << 20,
            history_bytes_total: 512 << 20,
        }
    }
}

/// The result of a subscribe.
#[derive(Debug)]
pub struct Subscribed {
    pub sub_id: u64,
    pub offset: u64,
    pub epoch: String,
    pub was_recovering: bool,
    pub recovered: bool,
    pub publications: Vec<Bytes>,
}

/// The result of a history query.
#[derive(Debug)]
pub struct History {
    pub publications: Vec<Bytes>,
    pub offset: u64,
    pub epoch: String,
}

const SHARDS: usize = 64;

/// The most publication bytes one subscribe or history reply carries
/// (centrifuge-python's websockets refuses frames over 1 MiB).
pub const MAX_REPLY_PUBLICATION_BYTES: usize = 512 * 1024;

/// Keeps items while their total size stays within the reply budget.
fn within_budget(items: impl Iterator<Item = Bytes>) -> Vec<Bytes> {
    let mut total = 0;
    items
        .take_while(|b| {
            total += b.len();
            total <= MAX_REPLY_PUBLICATION_BYTES
        })
        .collect()
}

/// All rooms of this instance.
pub struct Hub {
    shards: Vec<Mutex<HashMap<Uuid, Room>>>,
    partitions: Vec<PartitionState>,
    config: HubConfig,
    next_sub: AtomicU64,
    /// Bytes held by every window.
    window_bytes: AtomicUsize,
    /// Where this instance's own subscribers are announced to the others
    /// (unset: a single instance, or tests).
    presence: OnceLock<tokio::sync::mpsc::UnboundedSender<Local>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    confab_common::clock::now_ms()
}

impl Room {
    fn new(room: Uuid, partition: usize) -> Self {
        Self {
            channel: confab_common::room_channel(room).into(),
            partition,
            window: VecDeque::new(),
            evicted: 0,
            subs: HashMap::new(),
            remote: HashMap::new(),
            departed: HashSet::new(),
            bytes: 0,
        }
    }

    /// Drops the oldest entry; returns its size.
    fn pop(&mut self) -> Option<usize> {
        let e = self.window.pop_front()?;
        self.evicted = self.evicted.max(e.offset);
        self.bytes -= e.publication.len();
        Some(e.publication.len())
    }

    /// Drops entries beyond the count, age and byte caps; returns the bytes
    /// freed.
    fn expire(&mut self, config: &HubConfig, now: i64) -> usize {
        let ttl_ms = config.history_ttl_ms;
        let mut freed = 0;
        while self.window.len() > config.history_size
            || self.bytes > config.history_bytes_per_room
            || (ttl_ms > 0 && self.window.front().is_some_and(|e| e.ts_ms < now - ttl_ms))
        {
            match self.pop() {
                Some(n) => freed += n,
                None => break,
            }
        }
        freed
    }

    fn clear(&mut self) -> usize {
        let freed = self.bytes;
        self.window.clear();
        self.bytes = 0;
        self.evicted = 0;
        freed
    }

    fn last(&self) -> u64 {
        self.window.back().map_or(0, |e| e.offset)
    }

    /// Sends a join or leave push to the subscribers that asked for them.
    fn announce(&self, bytes: &Bytes) {
        for sub in self.subs.values().filter(|s| s.join_leave) {
            sub.peer.offer(Outbound::Push(bytes.clone()));
        }
    }
}

impl Hub {
    pub fn new(config: HubConfig) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            partitions: (0..config.partitions.max(1))
                .map(|_| PartitionState::new())
                .collect(),
            config,
            next_sub: AtomicU64::new(1),
            window_bytes: AtomicUsize::new(0),
            presence: OnceLock::new(),
        }
    }

    /// Announces this instance's subscribers to the others through `tx`
    /// from now on.
    pub(crate) fn set_presence_sink(&self, tx: tokio::sync::mpsc::UnboundedSender<Local>) {
        let _ = self.presence.set(tx);
    }

    fn tell(&self, event: Local) {
        if let Some(tx) = self.presence.get() {
            let _ = tx.send(event);
        }
    }

    /// Bytes held by every window of this instance.
    pub fn window_bytes(&self) -> usize {
        self.window_bytes.load(Ordering::Acquire)
    }

    fn freed(&self, n: usize) {
        if n > 0 {
            self.window_bytes.fetch_sub(n, Ordering::AcqRel);
        }
    }

    pub fn partitions(&self) -> &[PartitionState] {
        &self.partitions
    }

    /// Sets the incarnation of `partition` and where this instance starts
    /// reading it: every position above `floor` will be processed, and the
    /// broker holds records up to `high`. When the incarnation changes, the
    /// windows of the partition's rooms are emptied: their positions belong
    /// to the old incarnation, and its epoch no longer recovers.
    pub fn init_partition(&self, partition: usize, base: Base, floor: Position, high: Position) {
        let Some(p) = self.partitions.get(partition) else {
            return;
        };
        let old = p.base.swap(base.0, Ordering::AcqRel);
        p.floor.store(floor.0, Ordering::Release);
        p.top.store(floor.0, Ordering::Release);
        p.high.store(high.0, Ordering::Release);
        if old != 0 && old != base.0 {
            for shard in &self.shards {
                let mut rooms = shard.lock().unwrap_or_else(|e| e.into_inner());
                for room in rooms.values_mut().filter(|r| r.partition == partition) {
                    let freed = room.clear();
                    self.freed(freed);
                }
            }
        }
    }

    fn shard(&self, room: Uuid) -> MutexGuard<'_, HashMap<Uuid, Room>> {
        let idx = (room.as_u128() as usize) % SHARDS;
        // A poisoned shard only means a panic elsewhere; the data is still
        // consistent enough to keep serving.
        self.shards[idx].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `room_id`'s room in its shard, created if new.
    fn room_entry<'a>(&self, rooms: &'a mut HashMap<Uuid, Room>, room_id: Uuid) -> &'a mut Room {
        let partition = self.partition_of(room_id);
        rooms
            .entry(room_id)
            .or_insert_with(|| Room::new(room_id, partition))
    }

    /// [`Self::room_entry`], with its window trimmed to the caps (entries,
    /// age, bytes).
    fn trimmed_room<'a>(&self, rooms: &'a mut HashMap<Uuid, Room>, room_id: Uuid) -> &'a mut Room {
        let room = self.room_entry(rooms, room_id);
        let freed = room.expire(&self.config, now_ms());
        self.freed(freed);
        room
    }

    fn partition_of(&self, room: Uuid) -> usize {
        confab_common::stream::room_partition(room, self.partitions.len() as u32) as usize
    }

    /// Processes one record read at `position` of `partition`: stores it in
    /// the room's window and pushes it to every subscriber.
    pub fn deliver(&self, partition: usize, position: Position, record: &RoomRecord) {
        let now = now_ms();
        let offset = position.0;
        let info =
            protocol::encode_client_info(&record.user.id.to_string(), "", &record.user.username);
        let publication =
            protocol::encode_publication(record.data.get(), &info, offset, &record.id);
        {
            let mut shard = self.shard(record.room_id);
            let room = shard
                .entry(record.room_id)
                .or_insert_with(|| Room::new(record.room_id, partition));
            room.partition = partition;
            let push = protocol::encode_pub_push(&room.channel, &publication);
            let size = publication.len();
            room.bytes += size;
            room.window.push_back(Entry {
                offset,
                ts_ms: record.ts_ms,
                publication,
            });
            let total = self.window_bytes.fetch_add(size, Ordering::AcqRel) + size;
            let mut freed = room.expire(&self.config, now);
            // Over the instance's total: the room that grew gives back its
            // oldest entries until the total fits (its floor moves with them).
            while total - freed > self.config.history_bytes_total {
                match room.pop() {
                    Some(n) => freed += n,
                    None => break,
                }
            }
            self.freed(freed);
            let mut delivered = 0u64;
            for sub in room.subs.values() {
                if offset <= sub.skip_until {
                    continue;
                }
                if sub.peer.offer(Outbound::Push(push.clone())) {
                    delivered += 1;
                }
            }
            if delivered > 0 {
                metrics::counter!(m::MESSAGES_DELIVERED).increment(delivered);
                let lag = (now - record.ts_ms).max(0) as f64 / 1000.0;
                metrics::histogram!(m::PUBLISH_TO_DELIVER).record(lag);
            }
            match record.kind {
                RecordKind::MemberLeft => {
                    room.departed.insert(record.user.id);
                    self.remove_user(record.room_id, room, record.user.id);
                }
                RecordKind::MemberJoined => {
                    room.departed.remove(&record.user.id);
                }
                _ => {}
            }
        }
        self.skip(partition, position);
    }

    /// Notes that `position` of `partition` was read but held no record for
    /// clients.
    pub fn skip(&self, partition: usize, position: Position) {
        if let Some(p) = self.partitions.get(partition) {
            p.top.fetch_max(position.0, Ordering::AcqRel);
            p.high.fetch_max(position.0, Ordering::AcqRel);
        }
    }

    /// Unsubscribes every subscription of `user` (it left the room).
    fn remove_user(&self, room_id: Uuid, room: &mut Room, user: Uuid) {
        let ids: Vec<u64> = room
            .subs
            .iter()
            .filter(|(_, s)| s.peer.user == user)
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return;
        }
        let push = protocol::encode_unsubscribe_push(
            &room.channel,
            unsubscribe_codes::SERVER,
            "member left",
        );
        for id in ids {
            if let Some(sub) = room.subs.remove(&id) {
                metrics::gauge!(m::SUBSCRIPTIONS).decrement(1.0);
                sub.peer
                    .offer(Outbound::Unsubscribed(Box::new(Unsubscribed {
                        room: room_id,
                        sub_id: id,
                        push: push.clone(),
                    })));
                room.announce(&protocol::encode_leave_push(&room.channel, &sub.peer.info));
                self.tell(Local::Leave {
                    room: room_id,
                    client: sub.peer.client.clone(),
                });
            }
        }
    }

    /// Adds a subscriber to `room`, recovering from `recover` (offset and
    /// epoch) when asked. Join pushes go to the subscribers that asked for
    /// them (`join_leave`), this one included, after its reply.
    pub fn subscribe(
        &self,
        room_id: Uuid,
        peer: &Arc<Peer>,
        recover: Option<(u64, &str)>,
        join_leave: bool,
    ) -> Subscribed {
        let mut shard = self.shard(room_id);
        let room = self.trimmed_room(&mut shard, room_id);
        let part = &self.partitions[room.partition];
        let top = part.top.load(Ordering::Acquire);
        let mut position = top.max(room.last());
        let mut skip_until = 0;
        let epoch = part.epoch();
        let mut out = Subscribed {
            sub_id: self.next_sub.fetch_add(1, Ordering::Relaxed),
            offset: 0,
            epoch: epoch.clone(),
            was_recovering: false,
            recovered: false,
            publications: Vec::new(),
        };
        if let Some((offset, recover_epoch)) = recover {
            out.was_recovering = true;
            let since = offset;
            let floor = part.floor.load(Ordering::Acquire).max(room.evicted);
            let epoch_ok = recover_epoch.is_empty() || recover_epoch == epoch;
            if epoch_ok && since >= floor {
                if since <= position {
                    let missed: Vec<Bytes> = room
                        .window
                        .iter()
                        .filter(|e| e.offset > since)
                        .map(|e| e.publication.clone())
                        .collect();
                    // A reply too large for clients' frame limits is not
                    // sent; the client falls back to REST history instead.
                    if missed.iter().map(Bytes::len).sum::<usize>() <= MAX_REPLY_PUBLICATION_BYTES {
                        out.publications = missed;
                        out.recovered = true;
                    }
                } else if since <= part.high.load(Ordering::Acquire) {
                    // Another instance has read further: the client already
                    // has everything up to `since`; push only what follows.
                    out.recovered = true;
                    skip_until = since;
                    position = since;
                }
            }
        }
        out.offset = position;
        room.subs.insert(
            out.sub_id,
            Sub {
                peer: Arc::clone(peer),
                skip_until,
                join_leave,
            },
        );
        metrics::gauge!(m::SUBSCRIPTIONS).increment(1.0);
        room.announce(&protocol::encode_join_push(&room.channel, &peer.info));
        self.tell(Local::Join {
            room: room_id,
            client: peer.client.clone(),
            user: peer.user,
            info: peer.info.clone(),
        });
        out
    }

    /// Whether `user`'s latest membership record in the room is
    /// `member_left` (left, kicked or banned): until a `member_joined`
    /// follows, no subscription token admits them and none of their
    /// connections publishes there, whenever the token was issued.
    pub fn has_left(&self, room_id: Uuid, user: Uuid) -> bool {
        let shard = self.shard(room_id);
        shard
            .get(&room_id)
            .is_some_and(|r| r.departed.contains(&user))
    }

    /// Forgets rooms with no subscribers whose newest publication is older
    /// than `idle_ms`, to bound memory. Their partition's floor moves past
    /// their last offset, so positions older than that are no longer
    /// recoverable (they were idle for `idle_ms` anyway). Returns how many
    /// rooms were dropped.
    pub fn sweep(&self, idle_ms: i64) -> usize {
        let now = now_ms();
        let mut dropped = 0;
        for shard in &self.shards {
            let mut rooms = shard.lock().unwrap_or_else(|e| e.into_inner());
            rooms.retain(|_, room| {
                let newest = room.window.back().map_or(i64::MIN, |e| e.ts_ms);
                let idle = room.subs.is_empty() && room.remote.is_empty() && newest < now - idle_ms;
                if idle {
                    let last = room.last().max(room.evicted);
                    if let Some(p) = self.partitions.get(room.partition) {
                        p.floor.fetch_max(last, Ordering::AcqRel);
                    }
                    self.freed(room.bytes);
                    dropped += 1;
                }
                !idle
            });
        }
        dropped
    }

    /// Rooms held in memory.
    pub fn rooms(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Removes subscription `sub_id`; leave pushes go to the others.
    pub fn unsubscribe(&self, room_id: Uuid, sub_id: u64) -> bool {
        let mut shard = self.shard(room_id);
        let Some(room) = shard.get_mut(&room_id) else {
            return false;
        };
        let Some(sub) = room.subs.remove(&sub_id) else {
            return false;
        };
        metrics::gauge!(m::SUBSCRIPTIONS).decrement(1.0);
        room.announce(&protocol::encode_leave_push(&room.channel, &sub.peer.info));
        self.tell(Local::Leave {
            room: room_id,
            client: sub.peer.client.clone(),
        });
        true
    }

    /// The room's connected subscribers on every instance: (client id, info).
    pub fn presence(&self, room_id: Uuid) -> Vec<(String, Bytes)> {
        let shard = self.shard(room_id);
        shard.get(&room_id).map_or_else(Vec::new, |room| {
            room.subs
                .values()
                .map(|s| (s.peer.client.clone(), s.peer.info.clone()))
                .chain(
                    room.remote
                        .iter()
                        .map(|((_, client), r)| (client.clone(), r.info.clone())),
                )
                .collect()
        })
    }

    /// (clients, distinct users) subscribed to the room on every instance.
    pub fn presence_stats(&self, room_id: Uuid) -> (usize, usize) {
        let shard = self.shard(room_id);
        shard.get(&room_id).map_or((0, 0), |room| {
            let mut users: Vec<Uuid> = room
                .subs
                .values()
                .map(|s| s.peer.user)
                .chain(room.remote.values().map(|r| r.user))
                .collect();
            let clients = users.len();
            users.sort_unstable();
            users.dedup();
            (clients, users.len())
        })
    }

    /// A subscriber of instance `gateway` joined `room_id`.
    pub(crate) fn remote_join(
        &self,
        room_id: Uuid,
        gateway: Uuid,
        client: &str,
        user: Uuid,
        info: Bytes,
    ) {
        let mut shard = self.shard(room_id);
        let room = self.room_entry(&mut shard, room_id);
        let remote = Remote {
            user,
            info: info.clone(),
        };
        // A repeated announcement (after a tombstone race) is not a new join.
        if room
            .remote
            .insert((gateway, client.to_owned()), remote)
            .is_none()
        {
            room.announce(&protocol::encode_join_push(&room.channel, &info));
        }
    }

    /// This instance's subscriber `client` of `room_id`, if it still is:
    /// (user, info).
    pub(crate) fn local_subscriber(&self, room_id: Uuid, client: &str) -> Option<(Uuid, Bytes)> {
        let shard = self.shard(room_id);
        shard.get(&room_id).and_then(|room| {
            room.subs
                .values()
                .find(|s| s.peer.client == client)
                .map(|s| (s.peer.user, s.peer.info.clone()))
        })
    }

    /// A subscriber of instance `gateway` left `room_id`.
    pub(crate) fn remote_leave(&self, room_id: Uuid, gateway: Uuid, client: &str) {
        let mut shard = self.shard(room_id);
        let Some(room) = shard.get_mut(&room_id) else {
            return;
        };
        if let Some(r) = room.remote.remove(&(gateway, client.to_owned())) {
            room.announce(&protocol::encode_leave_push(&room.channel, &r.info));
        }
    }

    /// Instance `gateway` is gone: its subscribers leave every room. Returns
    /// them, (room, client id).
    pub(crate) fn remote_gone(&self, gateway: Uuid) -> Vec<(Uuid, String)> {
        let mut gone = Vec::new();
        for shard in &self.shards {
            let mut rooms = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (id, room) in rooms.iter_mut() {
                let keys: Vec<(Uuid, String)> = room
                    .remote
                    .keys()
                    .filter(|(g, _)| *g == gateway)
                    .cloned()
                    .collect();
                for key in keys {
                    if let Some(r) = room.remote.remove(&key) {
                        room.announce(&protocol::encode_leave_push(&room.channel, &r.info));
                        gone.push((*id, key.1));
                    }
                }
            }
        }
        gone
    }

    /// Asks that the room's subscribers on every instance be told that
    /// `user` is typing (through the presence topic when there is one).
    pub(crate) fn typing_request(&self, room_id: Uuid, user: Uuid, username: &str) {
        match self.presence.get() {
            Some(tx) => {
                let _ = tx.send(Local::Typing {
                    room: room_id,
                    user,
                    username: username.to_owned(),
                });
            }
            None => self.typing(room_id, user, username),
        }
    }

    /// Tells this instance's subscribers of the room, except `user`'s own
    /// connections, that `user` is typing: a publication with no offset,
    /// never stored.
    pub(crate) fn typing(&self, room_id: Uuid, user: Uuid, username: &str) {
        let shard = self.shard(room_id);
        let Some(room) = shard.get(&room_id) else {
            return;
        };
        let push = protocol::encode_typing_push(&room.channel, &user.to_string(), username);
        for sub in room.subs.values().filter(|s| s.peer.user != user) {
            sub.peer.offer(Outbound::Push(push.clone()));
        }
    }

    /// The current position of a room (what a subscribe reply would say).
    pub fn position(&self, room_id: Uuid) -> u64 {
        let partition = self.partition_of(room_id);
        let shard = self.shard(room_id);
        let last = shard.get(&room_id).map_or(0, Room::last);
        let p = shard.get(&room_id).map_or(partition, |r| r.partition);
        self.partitions[p].top.load(Ordering::Acquire).max(last)
    }

    /// History from the window, with the reference server's semantics:
    /// `limit` 0 returns only the position, a negative limit everything;
    /// `since` returns what follows it (or, with `reverse`, what precedes
    /// it, newest first). A `since` older than the window, or from another
    /// epoch, is error 112.
    pub fn history(
        &self,
        room_id: Uuid,
        limit: i32,
        since: Option<(u64, &str)>,
        reverse: bool,
    ) -> Result<History, protocol::ProtoError> {
        let mut shard = self.shard(room_id);
        let room = self.trimmed_room(&mut shard, room_id);
        let part = &self.partitions[room.partition];
        let position = part.top.load(Ordering::Acquire).max(room.last());
        let epoch = part.epoch();
        let take = if limit < 0 {
            usize::MAX
        } else {
            limit as usize
        };
        let publications: Vec<Bytes> = match since {
            None => {
                if reverse {
                    room.window
                        .iter()
                        .rev()
                        .take(take)
                        .map(|e| e.publication.clone())
                        .collect()
                } else {
                    room.window
                        .iter()
                        .take(take)
                        .map(|e| e.publication.clone())
                        .collect()
                }
            }
            Some((since, since_epoch)) => {
                if !since_epoch.is_empty() && since_epoch != epoch {
                    return Err(protocol::ProtoError::UNRECOVERABLE_POSITION);
                }
                let floor = part.floor.load(Ordering::Acquire).max(room.evicted);
                if reverse {
                    room.window
                        .iter()
                        .rev()
                        .filter(|e| e.offset < since)
                        .take(take)
                        .map(|e| e.publication.clone())
                        .collect()
                } else {
                    if since < floor {
                        return Err(protocol::ProtoError::UNRECOVERABLE_POSITION);
                    }
                    room.window
                        .iter()
                        .filter(|e| e.offset > since)
                        .take(take)
                        .map(|e| e.publication.clone())
                        .collect()
                }
            }
        };
        let publications = within_budget(publications.into_iter());
        Ok(History {
            publications,
            offset: position,
            epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_common::position::KafkaOffset;
    use confab_common::record::UserRef;
    use serde_json::value::RawValue;

    /// The incarnation the tests read.
    const B: Base = Base(1_000);

    /// The position of Kafka offset `kafka`, as clients see it.
    fn w(kafka: i64) -> u64 {
        B.position(KafkaOffset(kafka)).0
    }

    /// The Kafka offset of a position.
    fn from_wire(position: u64) -> i64 {
        B.offset(Position(position)).unwrap().0
    }

    fn at(kafka: i64) -> Position {
        Position(w(kafka))
    }

    fn hub(size: usize) -> Hub {
        let h = Hub::new(HubConfig::with_size(1, size));
        h.init_partition(0, B, B.floor(), B.floor());
        h
    }

    fn record(room: Uuid, user: Uuid, kind: RecordKind, text: &str) -> RoomRecord {
        let u = UserRef {
            id: user,
            username: "u".into(),
        };
        match kind {
            RecordKind::Message => RoomRecord::message(
                room,
                u,
                RawValue::from_string(format!("{{\"text\":\"{text}\"}}")).unwrap(),
            ),
            k => RoomRecord::member_event(room, u, k),
        }
    }

    fn peer(user: Uuid, cap: usize) -> (Arc<Peer>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(cap);
        (
            Arc::new(Peer::new(
                Uuid::new_v4().to_string(),
                user,
                "u".into(),
                tx,
                CancellationToken::new(),
            )),
            rx,
        )
    }

    fn drain(rx: &mut mpsc::Receiver<Outbound>) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while let Ok(m) = rx.try_recv() {
            let b = match m {
                Outbound::Push(b) => b,
                Outbound::Unsubscribed(u) => u.push,
            };
            out.push(serde_json::from_slice(&b).unwrap());
        }
        out
    }

    #[test]
    fn subscribe_position_and_pushes_have_no_gap_or_duplicate() {
        let h = hub(100);
        let room = Uuid::new_v4();
        let other = Uuid::new_v4();
        h.deliver(
            0,
            at(0),
            &record(room, Uuid::new_v4(), RecordKind::Message, "a"),
        );
        h.deliver(
            0,
            at(1),
            &record(other, Uuid::new_v4(), RecordKind::Message, "b"),
        );
        let (p, mut rx) = peer(Uuid::new_v4(), 16);
        let s = h.subscribe(room, &p, None, true);
        assert_eq!(s.offset, w(1), "position is the partition top");
        assert_eq!(s.epoch, B.epoch().as_str());
        h.deliver(
            0,
            at(2),
            &record(room, Uuid::new_v4(), RecordKind::Message, "c"),
        );
        let got = drain(&mut rx);
        assert!(got[0]["push"]["join"].is_object());
        assert_eq!(got[1]["push"]["pub"]["offset"], w(2));
        assert_eq!(got[1]["push"]["pub"]["data"]["text"], "c");
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn recovery_returns_exactly_the_missed_publications() {
        let h = hub(3);
        let room = Uuid::new_v4();
        for o in 0..6 {
            h.deliver(
                0,
                at(o),
                &record(room, Uuid::new_v4(), RecordKind::Message, &o.to_string()),
            );
        }
        let (p, _rx) = peer(Uuid::new_v4(), 16);
        // Window holds 3,4,5; evicted up to 2.
        let s = h.subscribe(room, &p, Some((w(2), B.epoch().as_str())), true);
        assert!(s.recovered && s.was_recovering);
        let offs: Vec<i64> = s
            .publications
            .iter()
            .map(|b| {
                serde_json::from_slice::<serde_json::Value>(b).unwrap()["offset"]
                    .as_u64()
                    .map(from_wire)
                    .unwrap()
            })
            .collect();
        assert_eq!(offs, vec![3, 4, 5]);
        assert_eq!(s.offset, w(5));
        let s = h.subscribe(room, &p, Some((w(1), B.epoch().as_str())), true);
        assert!(
            !s.recovered && s.publications.is_empty(),
            "outside the window"
        );
        let s = h.subscribe(room, &p, Some((w(4), "other")), true);
        assert!(!s.recovered, "epoch mismatch");
        let s = h.subscribe(room, &p, Some((w(5), B.epoch().as_str())), true);
        assert!(s.recovered && s.publications.is_empty());
    }

    #[test]
    fn a_new_incarnation_empties_windows_and_changes_the_epoch() {
        let h = hub(10);
        let room = Uuid::new_v4();
        for o in 0..3 {
            h.deliver(
                0,
                at(o),
                &record(room, Uuid::new_v4(), RecordKind::Message, "old"),
            );
        }
        let old_epoch = B.epoch();
        let (p, _rx) = peer(Uuid::new_v4(), 16);
        let s = h.subscribe(room, &p, Some((w(0), old_epoch.as_str())), true);
        assert!(s.recovered && s.publications.len() == 2);
        assert!(h.unsubscribe(room, s.sub_id));

        // The topic was created again: offsets start at 0 on a higher base.
        let new = Base(1_000_000);
        h.init_partition(0, new, new.floor(), new.floor());
        let s = h.subscribe(room, &p, Some((w(2), old_epoch.as_str())), true);
        assert!(!s.recovered, "an old epoch never recovers");
        assert!(s.publications.is_empty());
        assert_eq!(s.epoch, new.epoch());
        assert_ne!(s.epoch, old_epoch);
        assert_eq!(s.offset, new.floor().0, "positions only go up");
        assert!(h
            .history(room, -1, None, false)
            .unwrap()
            .publications
            .is_empty());
        h.deliver(
            0,
            new.position(KafkaOffset(0)),
            &record(room, Uuid::new_v4(), RecordKind::Message, "new"),
        );
        let hist = h.history(room, -1, None, false).unwrap();
        assert_eq!(hist.publications.len(), 1);
        assert_eq!(hist.offset, new.position(KafkaOffset(0)).0);
        assert!(hist.offset > w(2));
    }

    #[test]
    fn recovery_ahead_of_this_instance_skips_what_the_client_has() {
        let h = hub(10);
        h.partitions[0].high.store(w(9), Ordering::Release);
        let room = Uuid::new_v4();
        h.deliver(
            0,
            at(3),
            &record(room, Uuid::new_v4(), RecordKind::Message, "x"),
        );
        let (p, mut rx) = peer(Uuid::new_v4(), 16);
        let s = h.subscribe(room, &p, Some((w(6), B.epoch().as_str())), true);
        assert!(s.recovered);
        assert_eq!(s.offset, w(6));
        h.deliver(
            0,
            at(5),
            &record(room, Uuid::new_v4(), RecordKind::Message, "old"),
        );
        h.deliver(
            0,
            at(7),
            &record(room, Uuid::new_v4(), RecordKind::Message, "new"),
        );
        let got = drain(&mut rx);
        let offs: Vec<_> = got
            .iter()
            .filter_map(|v| v["push"]["pub"]["offset"].as_u64().map(from_wire))
            .collect();
        assert_eq!(offs, vec![7]);
        // Beyond the broker's end: not recoverable.
        let s = h.subscribe(room, &p, Some((w(50), B.epoch().as_str())), true);
        assert!(!s.recovered);
    }

    #[test]
    fn member_left_unsubscribes_that_user_only() {
        let h = hub(10);
        let room = Uuid::new_v4();
        let leaver = Uuid::new_v4();
        let (a, mut arx) = peer(leaver, 16);
        let (b, mut brx) = peer(Uuid::new_v4(), 16);
        let sa = h.subscribe(room, &a, None, true);
        h.subscribe(room, &b, None, true);
        drain(&mut arx);
        drain(&mut brx);
        h.deliver(0, at(0), &record(room, leaver, RecordKind::MemberLeft, ""));
        let mut got_unsub = false;
        while let Ok(m) = arx.try_recv() {
            if let Outbound::Unsubscribed(u) = m {
                let Unsubscribed {
                    sub_id,
                    push,
                    room: r,
                } = *u;
                assert_eq!(sub_id, sa.sub_id);
                assert_eq!(r, room);
                let v: serde_json::Value = serde_json::from_slice(&push).unwrap();
                assert_eq!(v["push"]["unsubscribe"]["code"], 2000);
                got_unsub = true;
            }
        }
        assert!(got_unsub);
        let got = drain(&mut brx);
        assert_eq!(got[0]["push"]["pub"]["data"]["type"], "member_left");
        assert!(got[1]["push"]["leave"].is_object());
        assert_eq!(h.presence_stats(room), (1, 1));
        assert!(!h.unsubscribe(room, sa.sub_id));
        assert!(h.has_left(room, leaver), "no token admits them any more");
        h.deliver(
            0,
            at(1),
            &record(room, leaver, RecordKind::MemberJoined, ""),
        );
        assert!(!h.has_left(room, leaver), "rejoined");
    }

    #[test]
    fn full_queue_disconnects_only_the_slow_consumer() {
        let h = hub(10);
        let room = Uuid::new_v4();
        let (slow, _srx) = peer(Uuid::new_v4(), 2);
        let (fast, mut frx) = peer(Uuid::new_v4(), 64);
        h.subscribe(room, &slow, None, true);
        h.subscribe(room, &fast, None, true);
        for o in 0..5 {
            h.deliver(
                0,
                at(o),
                &record(room, Uuid::new_v4(), RecordKind::Message, "m"),
            );
        }
        assert!(slow.kill.is_cancelled());
        assert_eq!(slow.kill_code(), Disconnect::SLOW.code);
        assert!(!fast.kill.is_cancelled());
        let pubs = drain(&mut frx)
            .into_iter()
            .filter(|v| v["push"]["pub"].is_object())
            .count();
        assert_eq!(pubs, 5);
    }

    #[test]
    fn history_semantics() {
        let h = hub(5);
        let room = Uuid::new_v4();
        for o in [1, 4, 6, 9] {
            h.deliver(
                0,
                at(o),
                &record(room, Uuid::new_v4(), RecordKind::Message, "m"),
            );
        }
        let offs = |r: History| -> Vec<i64> {
            r.publications
                .iter()
                .map(|b| {
                    serde_json::from_slice::<serde_json::Value>(b).unwrap()["offset"]
                        .as_u64()
                        .map(from_wire)
                        .unwrap()
                })
                .collect()
        };
        assert!(offs(h.history(room, 0, None, false).unwrap()).is_empty());
        assert_eq!(h.history(room, 0, None, false).unwrap().offset, w(9));
        assert_eq!(
            offs(h.history(room, -1, None, false).unwrap()),
            vec![1, 4, 6, 9]
        );
        assert_eq!(offs(h.history(room, 2, None, false).unwrap()), vec![1, 4]);
        assert_eq!(offs(h.history(room, 2, None, true).unwrap()), vec![9, 6]);
        assert_eq!(
            offs(
                h.history(room, 10, Some((w(4), B.epoch().as_str())), false)
                    .unwrap()
            ),
            vec![6, 9]
        );
        assert_eq!(
            offs(h.history(room, 10, Some((w(6), "")), true).unwrap()),
            vec![4, 1]
        );
        assert!(h.history(room, 10, Some((w(4), "bad")), false).is_err());
        let fresh = hub(1);
        fresh.init_partition(0, B, at(9), at(9));
        assert!(fresh
            .history(room, 10, Some((w(3), B.epoch().as_str())), false)
            .is_err());
    }

    #[test]
    fn sweeping_idle_rooms_keeps_recovery_honest() {
        let h = hub(10);
        let idle = Uuid::new_v4();
        let busy = Uuid::new_v4();
        let (p, _rx) = peer(Uuid::new_v4(), 16);
        h.subscribe(busy, &p, None, true);
        for (o, room) in [(0, idle), (1, busy), (2, idle)] {
            let mut r = record(room, Uuid::new_v4(), RecordKind::Message, "m");
            if room == idle {
                r.ts_ms -= 10_000;
            }
            h.deliver(0, at(o), &r);
        }
        assert_eq!(h.sweep(5_000), 1);
        assert_eq!(h.rooms(), 1);
        // The idle room is gone: recovering from before its last record must
        // not claim success with nothing; from after it, it may.
        let (q, _qrx) = peer(Uuid::new_v4(), 16);
        assert!(
            !h.subscribe(idle, &q, Some((w(1), B.epoch().as_str())), true)
                .recovered
        );
        let r = h.subscribe(idle, &q, Some((w(2), B.epoch().as_str())), true);
        assert!(r.recovered && r.publications.is_empty());
    }

    #[test]
    fn replies_stay_within_the_byte_budget() {
        let h = hub(1000);
        let room = Uuid::new_v4();
        let big = "x".repeat(15_000);
        for o in 0..60 {
            h.deliver(
                0,
                at(o),
                &record(room, Uuid::new_v4(), RecordKind::Message, &big),
            );
        }
        let (p, _rx) = peer(Uuid::new_v4(), 16);
        let r = h.subscribe(room, &p, Some((w(0), B.epoch().as_str())), true);
        assert!(
            !r.recovered,
            "59 x 15 KB is over the budget: fall back to REST"
        );
        let r = h.subscribe(room, &p, Some((w(50), B.epoch().as_str())), true);
        assert!(r.recovered && r.publications.len() == 9);
        let hist = h.history(room, -1, None, false).unwrap();
        let total: usize = hist.publications.iter().map(Bytes::len).sum();
        assert!(total <= MAX_REPLY_PUBLICATION_BYTES && hist.publications.len() > 30);
    }

    #[test]
    fn windows_are_capped_in_bytes_per_room_and_in_total() {
        let mut config = HubConfig::with_size(1, 1000);
        config.history_bytes_per_room = 50_000;
        config.history_bytes_total = 120_000;
        let h = Hub::new(config);
        h.init_partition(0, B, B.floor(), B.floor());
        let big = "x".repeat(10_000);
        let rooms: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        let mut o = 0;
        for _ in 0..10 {
            for &room in &rooms {
                h.deliver(
                    0,
                    at(o),
                    &record(room, Uuid::new_v4(), RecordKind::Message, &big),
                );
                o += 1;
                assert!(h.window_bytes() <= 120_000, "{}", h.window_bytes());
            }
        }
        for &room in &rooms {
            let held: usize = h
                .history(room, -1, None, false)
                .unwrap()
                .publications
                .iter()
                .map(Bytes::len)
                .sum();
            assert!(held <= 50_000, "{held}");
        }
        assert!(
            h.window_bytes() > 80_000,
            "the caps keep what fits: {}",
            h.window_bytes()
        );
        // What was evicted is not recoverable; what is held is.
        let (p, _rx) = peer(Uuid::new_v4(), 16);
        assert!(
            !h.subscribe(rooms[0], &p, Some((w(0), B.epoch().as_str())), false)
                .recovered
        );
        let last = w(o - 4);
        let r = h.subscribe(rooms[0], &p, Some((last - 1, B.epoch().as_str())), false);
        assert!(r.recovered && r.publications.len() == 1);
        // A new incarnation and the sweep give the bytes back.
        h.init_partition(
            0,
            Base(9_000_000),
            Base(9_000_000).floor(),
            Base(9_000_000).floor(),
        );
        assert_eq!(h.window_bytes(), 0);
    }

    #[test]
    fn join_and_leave_pushes_go_only_to_who_asked() {
        let h = hub(10);
        let room = Uuid::new_v4();
        let (quiet, mut qrx) = peer(Uuid::new_v4(), 16);
        let (loud, mut lrx) = peer(Uuid::new_v4(), 16);
        h.subscribe(room, &quiet, None, false);
        h.subscribe(room, &loud, None, true);
        let (third, _trx) = peer(Uuid::new_v4(), 16);
        let s = h.subscribe(room, &third, None, false);
        h.unsubscribe(room, s.sub_id);
        assert!(drain(&mut qrx).is_empty());
        let got = drain(&mut lrx);
        assert!(got[0]["push"]["join"].is_object(), "its own join");
        assert!(got[1]["push"]["join"].is_object());
        assert!(got[2]["push"]["leave"].is_object());
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn presence_covers_other_instances_until_they_are_gone() {
        let h = hub(10);
        let room = Uuid::new_v4();
        let (me, mut rx) = peer(Uuid::new_v4(), 16);
        h.subscribe(room, &me, None, true);
        drain(&mut rx);
        let (g1, g2) = (Uuid::new_v4(), Uuid::new_v4());
        let (u1, u2) = (Uuid::new_v4(), Uuid::new_v4());
        let info = |u: Uuid| protocol::encode_client_info(&u.to_string(), "c", "x");
        h.remote_join(room, g1, "c1", u1, info(u1));
        h.remote_join(room, g1, "c1", u1, info(u1));
        h.remote_join(room, g1, "c2", u1, info(u1));
        h.remote_join(room, g2, "c3", u2, info(u2));
        assert_eq!(h.presence_stats(room), (4, 3));
        assert_eq!(h.presence(room).len(), 4);
        let joins = drain(&mut rx);
        assert_eq!(joins.len(), 3, "a repeated announcement is not a new join");
        h.remote_leave(room, g2, "c3");
        assert_eq!(h.presence_stats(room), (3, 2));
        let gone = h.remote_gone(g1);
        assert_eq!(gone.len(), 2);
        assert_eq!(h.presence_stats(room), (1, 1));
        let leaves = drain(&mut rx);
        assert_eq!(leaves.len(), 3);
        assert!(leaves.iter().all(|v| v["push"]["leave"].is_object()));
        // Rooms with remote subscribers are not swept.
        let quiet = Uuid::new_v4();
        h.remote_join(quiet, g2, "c9", u2, info(u2));
        h.sweep(-1);
        assert_eq!(h.presence_stats(quiet), (1, 1));
    }

    #[test]
    fn typing_reaches_the_others_but_not_the_typist() {
        let h = hub(10);
        let room = Uuid::new_v4();
        let typist = Uuid::new_v4();
        let (a, mut arx) = peer(typist, 16);
        let (b, mut brx) = peer(Uuid::new_v4(), 16);
        h.subscribe(room, &a, None, false);
        h.subscribe(room, &b, None, false);
        h.typing_request(room, typist, "ann");
        assert!(drain(&mut arx).is_empty());
        let got = drain(&mut brx);
        assert_eq!(got[0]["push"]["pub"]["data"]["type"], "typing");
        assert_eq!(
            got[0]["push"]["pub"]["data"]["user"]["id"],
            typist.to_string()
        );
        assert!(
            h.history(room, -1, None, false)
                .unwrap()
                .publications
                .is_empty(),
            "never stored"
        );
    }
}
