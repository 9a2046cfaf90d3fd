//! One client's session: the protocol, from connect to close.
//!
//! [`run`] is the connection task. It takes typed commands from the reader
//! ([`crate::connection`]), answers them, writes the pushes the hub queues
//! for this client, waits for the broker's acknowledgements of its
//! publications, and keeps the timers (connect deadline, pings, token
//! expiry). Everything it writes goes through one buffer, flushed after each
//! event in frames of bounded size.
//!
//! **The publish path**, in order: [`Session::publish`] checks the
//! subscription, that the user has not left the room, the rate limits (per
//! connection and per user) and the data ([`crate::message`]); builds the
//! [`RoomRecord`]; hands it to the [`Publisher`](crate::kafka::Publisher);
//! and answers only when the broker's acknowledgement resolves
//! ([`Session::published`]). A failed acknowledgement answers an error and
//! the client may retry; a success means the record is durable.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_common::clock::{now_ms, now_secs};
use confab_common::jwt::TokenError;
use confab_common::ratelimit::{Quota, TokenBucket};
use confab_common::record::{RoomRecord, UserRef};
use std::future::Future as _;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::connection::{self, Inbound};
use crate::hub::{Outbound, Peer};
use crate::metrics as m;
use crate::protocol::{
    self, encode_empty, encode_error, unsubscribe_codes, Disconnect, ProtoError, ReplyWriter,
    Request,
};
use crate::server::SocketSlot;
use crate::state::Gateway;

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Publications one connection may have waiting for the broker.
const MAX_INFLIGHT: usize = 256;
/// Queue messages written in one frame at most.
const MAX_BATCH: usize = 64;
/// The longest a session's timer sleeps when nothing is due sooner.
const IDLE_RECHECK: Duration = Duration::from_secs(60);

struct LocalSub {
    sub_id: u64,
    channel: String,
    /// The subscription token's `exp`, Unix seconds.
    exp: i64,
}

type Published = std::pin::Pin<Box<dyn std::future::Future<Output = (u32, Instant, bool)> + Send>>;

/// The protocol state of one connection.
struct Session {
    gw: Gateway,
    kill: CancellationToken,
    queue_tx: mpsc::Sender<Outbound>,
    peer: Option<Arc<Peer>>,
    /// The access token's `exp`, Unix seconds.
    exp: i64,
    subs: HashMap<Uuid, LocalSub>,
    /// This connection's publish rate (`None`: unlimited).
    bucket: Option<TokenBucket>,
    /// This connection's rate of costly commands (`None`: unlimited).
    costly: Option<TokenBucket>,
    /// Costly commands in the message being handled.
    costly_in_message: usize,
    started: Instant,
    next_ping: Instant,
    pong_deadline: Option<Instant>,
    /// Publications waiting for the broker.
    inflight: FuturesUnordered<Published>,
    /// Replies and pushes waiting to be written, `\n`-separated.
    out: Vec<u8>,
}

impl Session {
    fn new(gw: Gateway, kill: CancellationToken, queue_tx: mpsc::Sender<Outbound>) -> Self {
        let c = &gw.config;
        let bucket = (c.publish_rate > 0.0).then(|| {
            TokenBucket::new(Quota::per_second(
                c.publish_rate,
                c.publish_burst.max(1.0) as u32,
            ))
        });
        let costly = (c.costly_rate > 0.0).then(|| {
            TokenBucket::new(Quota::per_second(
                c.costly_rate,
                c.costly_rate.ceil().max(1.0) as u32,
            ))
        });
        Self {
            bucket,
            costly,
            costly_in_message: 0,
            gw,
            kill,
            queue_tx,
            peer: None,
            exp: 0,
            subs: HashMap::new(),
            started: Instant::now(),
            next_ping: Instant::now(),
            pong_deadline: None,
            inflight: FuturesUnordered::new(),
            out: Vec::new(),
        }
    }

    fn sep(&mut self) {
        if !self.out.is_empty() {
            self.out.push(b'\n');
        }
    }

    fn error(&mut self, id: u32, err: ProtoError) {
        self.sep();
        encode_error(&mut self.out, id, err);
    }

    /// Handles the commands of one message, in order.
    fn commands(&mut self, cmds: Vec<(u32, Request)>) -> Option<Disconnect> {
        self.costly_in_message = 0;
        for (id, req) in cmds {
            if let Some(d) = self.handle(id, req) {
                return Some(d);
            }
        }
        None
    }

    /// Whether a command may make a large reply: subscribe (recovery),
    /// history and presence.
    fn is_costly(req: &Request) -> bool {
        matches!(
            req,
            Request::Subscribe(_) | Request::History(_) | Request::Presence(_)
        )
    }

    /// Admits one costly command: at most `max_costly_per_message` per
    /// message, while the message's replies stay within `max_reply_bytes`
    /// (else 106), and within the connection's rate (else 111).
    fn admit_costly(&mut self) -> Result<(), ProtoError> {
        let c = &self.gw.config;
        self.costly_in_message += 1;
        if self.costly_in_message > c.max_costly_per_message || self.out.len() >= c.max_reply_bytes
        {
            metrics::counter!(m::COSTLY_REFUSED, "reason" => "message").increment(1);
            return Err(ProtoError::LIMIT_EXCEEDED);
        }
        if !self.costly.as_mut().is_none_or(TokenBucket::take) {
            metrics::counter!(m::COSTLY_REFUSED, "reason" => "rate").increment(1);
            return Err(ProtoError::TOO_MANY_REQUESTS);
        }
        Ok(())
    }

    fn handle(&mut self, id: u32, req: Request) -> Option<Disconnect> {
        let Some(peer) = self.peer.clone() else {
            return match req {
                Request::Connect(c) => self.connect(id, c),
                Request::Pong => None,
                _ => Some(Disconnect::BAD_REQUEST),
            };
        };
        if id == 0 && !matches!(req, Request::Pong | Request::Send) {
            // Every other command expects a reply, so it needs an id.
            return Some(Disconnect::BAD_REQUEST);
        }
        if Self::is_costly(&req) {
            if let Err(e) = self.admit_costly() {
                self.error(id, e);
                return None;
            }
        }
        match req {
            Request::Connect(_) => return Some(Disconnect::BAD_REQUEST),
            Request::Pong => self.pong_deadline = None,
            Request::Ping => {
                self.sep();
                encode_empty(&mut self.out, id, "ping");
            }
            Request::Send => {}
            Request::Rpc(r) => match r.method.as_str() {
                "typing" => match self.typing(r.data.as_deref(), &peer) {
                    Ok(()) => {
                        self.sep();
                        encode_empty(&mut self.out, id, "rpc");
                    }
                    Err(e) => self.error(id, e),
                },
                _ => self.error(id, ProtoError::METHOD_NOT_FOUND),
            },
            Request::Refresh(r) => return self.refresh(id, &r.token, &peer),
            Request::Subscribe(s) => self.subscribe(id, s, &peer),
            Request::SubRefresh(r) => self.sub_refresh(id, &r.channel, &r.token, &peer),
            Request::Unsubscribe(c) => {
                if let Some(room) = confab_common::parse_room_channel(&c.channel) {
                    if let Some(local) = self.subs.remove(&room) {
                        self.gw.hub.unsubscribe(room, local.sub_id);
                    }
                }
                self.sep();
                encode_empty(&mut self.out, id, "unsubscribe");
            }
            Request::Publish(p) => {
                if let Err(e) = self.publish(id, p, &peer) {
                    self.error(id, e);
                }
            }
            Request::Presence(c) => match self.subscribed_room(&c.channel) {
                Err(e) => self.error(id, e),
                Ok(room) => {
                    let entries = self.gw.hub.presence(room);
                    self.sep();
                    ReplyWriter::start(&mut self.out, id, "presence")
                        .map("presence", entries.iter().map(|(k, v)| (k.as_str(), v)))
                        .finish();
                }
            },
            Request::PresenceStats(c) => match self.subscribed_room(&c.channel) {
                Err(e) => self.error(id, e),
                Ok(room) => {
                    let (clients, users) = self.gw.hub.presence_stats(room);
                    self.sep();
                    ReplyWriter::start(&mut self.out, id, "presence_stats")
                        .num("num_clients", clients)
                        .num("num_users", users)
                        .finish();
                }
            },
            Request::History(h) => match self.subscribed_room(&h.channel) {
                Err(e) => self.error(id, e),
                Ok(room) => {
                    let since = h.since.as_ref().map(|s| (s.offset, s.epoch.as_str()));
                    let limit = if h.limit < 0 {
                        self.gw.config.history_size as i32
                    } else {
                        h.limit
                    };
                    match self.gw.hub.history(room, limit, since, h.reverse) {
                        Err(e) => self.error(id, e),
                        Ok(hist) => {
                            self.sep();
                            ReplyWriter::start(&mut self.out, id, "history")
                                .list("publications", &hist.publications)
                                .str("epoch", &hist.epoch)
                                .num("offset", hist.offset)
                                .finish();
                        }
                    }
                }
            },
        }
        None
    }

    /// `rpc typing {"channel": "room:<id>"}`: tells the room's other
    /// subscribers, on every instance, that this user is typing. Never
    /// stored; at most one per user and room every 2 s is passed on.
    fn typing(
        &self,
        data: Option<&serde_json::value::RawValue>,
        peer: &Peer,
    ) -> Result<(), ProtoError> {
        #[derive(serde::Deserialize)]
        struct Typing {
            channel: String,
        }
        let t: Typing = data
            .and_then(|d| serde_json::from_str(d.get()).ok())
            .ok_or(ProtoError::BAD_REQUEST)?;
        let room = self.subscribed_room(&t.channel)?;
        if self.gw.hub.has_left(room, peer.user) {
            return Err(ProtoError::PERMISSION_DENIED);
        }
        self.gw.hub.typing_request(room, peer.user, &peer.username);
        Ok(())
    }

    fn subscribed_room(&self, channel: &str) -> Result<Uuid, ProtoError> {
        let room = confab_common::parse_room_channel(channel).ok_or(ProtoError::UNKNOWN_CHANNEL)?;
        if self.subs.contains_key(&room) {
            Ok(room)
        } else {
            Err(ProtoError::PERMISSION_DENIED)
        }
    }

    fn connect(&mut self, id: u32, req: protocol::ConnectRequest) -> Option<Disconnect> {
        if req.token.is_empty() {
            return Some(Disconnect::INVALID_TOKEN);
        }
        let claims = match self.gw.config.jwt.verify_access(&req.token) {
            Ok(c) => c,
            Err(TokenError::Expired) => {
                self.error(id, ProtoError::TOKEN_EXPIRED);
                return None;
            }
            Err(TokenError::Invalid(_)) => return Some(Disconnect::INVALID_TOKEN),
        };
        if !self
            .gw
            .per_user
            .try_add(claims.sub, self.gw.config.max_connections_per_user)
        {
            metrics::counter!(m::REJECTED_CONNECTIONS, "reason" => "user").increment(1);
            return Some(Disconnect::CONNECTION_LIMIT);
        }
        let client = Uuid::new_v4().to_string();
        let peer = Arc::new(Peer::new(
            client.clone(),
            claims.sub,
            claims.name,
            self.queue_tx.clone(),
            self.kill.clone(),
        ));
        self.peer = Some(peer);
        self.exp = claims.exp;
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        let ping = self.gw.config.ping_interval.as_secs();
        self.next_ping = Instant::now() + self.gw.config.ping_interval;
        let ttl = (claims.exp - now_secs()).max(1);
        self.sep();
        let mut w = ReplyWriter::start(&mut self.out, id, "connect")
            .str("client", &client)
            .str("version", VERSION);
        if claims.exp > 0 {
            w = w.flag("expires", true).num("ttl", ttl);
        }
        if ping > 0 {
            w = w.num("ping", ping).flag("pong", true);
        }
        w.finish();
        None
    }

    fn refresh(&mut self, id: u32, token: &str, peer: &Peer) -> Option<Disconnect> {
        let claims = match self.gw.config.jwt.verify_access(token) {
            Ok(c) => c,
            Err(TokenError::Expired) => {
                self.error(id, ProtoError::TOKEN_EXPIRED);
                return None;
            }
            Err(TokenError::Invalid(_)) => return Some(Disconnect::INVALID_TOKEN),
        };
        if claims.sub != peer.user {
            return Some(Disconnect::INVALID_TOKEN);
        }
        self.exp = claims.exp;
        let ttl = (claims.exp - now_secs()).max(1);
        self.sep();
        ReplyWriter::start(&mut self.out, id, "refresh")
            .str("client", &peer.client)
            .str("version", VERSION)
            .flag("expires", true)
            .num("ttl", ttl)
            .finish();
        None
    }

    /// Checks a subscription token for `channel`; returns its `exp`.
    fn check_sub_token(&self, token: &str, channel: &str, peer: &Peer) -> Result<i64, ProtoError> {
        if token.is_empty() {
            return Err(ProtoError::PERMISSION_DENIED);
        }
        match self.gw.config.jwt.verify_subscription(token) {
            Ok(c) if c.sub == peer.user && c.channel == channel => {
                let room = confab_common::parse_room_channel(channel)
                    .ok_or(ProtoError::UNKNOWN_CHANNEL)?;
                if self.gw.hub.has_left(room, peer.user) {
                    return Err(ProtoError::PERMISSION_DENIED);
                }
                Ok(c.exp)
            }
            Ok(_) | Err(TokenError::Invalid(_)) => Err(ProtoError::PERMISSION_DENIED),
            Err(TokenError::Expired) => Err(ProtoError::TOKEN_EXPIRED),
        }
    }

    fn subscribe(&mut self, id: u32, req: protocol::SubscribeRequest, peer: &Arc<Peer>) {
        let Some(room) = confab_common::parse_room_channel(&req.channel) else {
            return self.error(id, ProtoError::UNKNOWN_CHANNEL);
        };
        if self.subs.contains_key(&room) {
            return self.error(id, ProtoError::ALREADY_SUBSCRIBED);
        }
        if self.subs.len() >= self.gw.config.max_subscriptions {
            return self.error(id, ProtoError::LIMIT_EXCEEDED);
        }
        let exp = match self.check_sub_token(&req.token, &req.channel, peer) {
            Ok(exp) => exp,
            Err(e) => return self.error(id, e),
        };
        let recover = req.recover.then_some((req.offset, req.epoch.as_str()));
        let s = self.gw.hub.subscribe(room, peer, recover, req.join_leave);
        self.subs.insert(
            room,
            LocalSub {
                sub_id: s.sub_id,
                channel: req.channel,
                exp,
            },
        );
        self.sep();
        let mut w = ReplyWriter::start(&mut self.out, id, "subscribe");
        if exp > 0 {
            w = w
                .flag("expires", true)
                .num("ttl", (exp - now_secs()).max(1));
        }
        w = w
            .flag("recoverable", true)
            .str("epoch", &s.epoch)
            .num("offset", s.offset)
            .flag("positioned", true);
        if !s.publications.is_empty() {
            w = w.list("publications", &s.publications);
        }
        w.flag("recovered", s.recovered)
            .flag("was_recovering", s.was_recovering)
            .finish();
    }

    fn sub_refresh(&mut self, id: u32, channel: &str, token: &str, peer: &Peer) {
        let room = match self.subscribed_room(channel) {
            Ok(r) => r,
            Err(e) => return self.error(id, e),
        };
        match self.check_sub_token(token, channel, peer) {
            Err(e) => self.error(id, e),
            Ok(exp) => {
                if let Some(local) = self.subs.get_mut(&room) {
                    local.exp = exp;
                }
                self.sep();
                ReplyWriter::start(&mut self.out, id, "sub_refresh")
                    .flag("expires", true)
                    .num("ttl", (exp - now_secs()).max(1))
                    .finish();
            }
        }
    }

    /// The publish path; see the module docs.
    fn publish(
        &mut self,
        id: u32,
        req: protocol::PublishRequest,
        peer: &Peer,
    ) -> Result<(), ProtoError> {
        let room = self.subscribed_room(&req.channel)?;
        if self.gw.hub.has_left(room, peer.user) {
            return Err(ProtoError::PERMISSION_DENIED);
        }
        let conn_ok = self.bucket.as_mut().is_none_or(TokenBucket::take);
        if self.inflight.len() >= MAX_INFLIGHT || !conn_ok || !self.user_may_publish(peer) {
            return Err(ProtoError::TOO_MANY_REQUESTS);
        }
        let data = req.data.ok_or(ProtoError::BAD_REQUEST)?;
        crate::message::validate(data.get(), self.gw.config.max_publish_bytes)?;
        if let Some(problem) = self.gw.publish_problem() {
            tracing::warn!(%problem, "publication refused");
            metrics::counter!(m::PUBLISH_FAILURES).increment(1);
            return Err(ProtoError::NOT_AVAILABLE);
        }
        let user = UserRef {
            id: peer.user,
            username: peer.username.clone(),
        };
        let record = RoomRecord::message(room, user, data);
        let started = Instant::now();
        match self.gw.publisher.publish(record) {
            Ok(ack) => {
                self.inflight.push(Box::pin(async move {
                    let ok = match ack.await {
                        Ok(()) => true,
                        Err(err) => {
                            tracing::warn!(%err, "publication not acknowledged by the broker");
                            false
                        }
                    };
                    (id, started, ok)
                }));
                Ok(())
            }
            Err(err) => {
                tracing::warn!(%err, "cannot enqueue publication");
                metrics::counter!(m::PUBLISH_FAILURES).increment(1);
                Err(ProtoError::NOT_AVAILABLE)
            }
        }
    }

    /// The per-user publish rate, across every connection of the user.
    fn user_may_publish(&self, peer: &Peer) -> bool {
        self.gw.config.user_publish_rate <= 0.0
            || self
                .gw
                .user_publishes
                .try_acquire(&[(&peer.user, self.gw.user_quota())])
    }

    /// Answers a publication once the broker has (not) acknowledged it.
    fn published(&mut self, id: u32, started: Instant, ok: bool) {
        if ok {
            metrics::counter!(m::MESSAGES_PUBLISHED).increment(1);
            metrics::histogram!(m::KAFKA_PRODUCE).record(started.elapsed().as_secs_f64());
            self.sep();
            encode_empty(&mut self.out, id, "publish");
        } else {
            metrics::counter!(m::PUBLISH_FAILURES).increment(1);
            self.error(id, ProtoError::INTERNAL);
        }
    }

    fn outbound(&mut self, msg: Outbound) {
        match msg {
            Outbound::Push(bytes) => {
                self.sep();
                self.out.extend_from_slice(&bytes);
            }
            Outbound::Unsubscribed(u) => {
                if self.subs.get(&u.room).is_some_and(|l| l.sub_id == u.sub_id) {
                    self.subs.remove(&u.room);
                    self.sep();
                    self.out.extend_from_slice(&u.push);
                }
            }
        }
    }

    /// When [`Session::tick`] next has something to do: the connect
    /// deadline before `connect`; after it, the next ping, the pong
    /// deadline, or the first token (access or subscription) to be past its
    /// `exp` plus the close delay. At most [`IDLE_RECHECK`] away.
    fn deadline(&self) -> Instant {
        let config = &self.gw.config;
        if self.peer.is_none() {
            return self.started + config.connect_timeout;
        }
        let now = Instant::now();
        let mut next = now + IDLE_RECHECK;
        if !config.ping_interval.is_zero() {
            next = next.min(self.next_ping);
        }
        if let Some(d) = self.pong_deadline {
            next = next.min(d);
        }
        let first_exp = self
            .subs
            .values()
            .map(|l| l.exp)
            .chain(std::iter::once(self.exp))
            .filter(|&e| e > 0)
            .min();
        if let Some(exp) = first_exp {
            // `tick` closes once the Unix second is past `exp + delay`.
            let delay = config.expired_close_delay.as_secs() as i64;
            let at_ms = (exp + delay + 1).saturating_mul(1000);
            let wait = u64::try_from(at_ms - now_ms()).unwrap_or(0);
            next = next.min(now + Duration::from_millis(wait));
        }
        next
    }

    /// Timers: connect deadline, pings, pong deadline, token expiry.
    fn tick(&mut self) -> Option<Disconnect> {
        let now = Instant::now();
        let gw = self.gw.clone();
        let config = &gw.config;
        if self.peer.is_none() {
            return (now.duration_since(self.started) >= config.connect_timeout)
                .then_some(Disconnect::STALE);
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            return Some(Disconnect::NO_PONG);
        }
        if !config.ping_interval.is_zero() && now >= self.next_ping {
            self.next_ping = now + config.ping_interval;
            if self.pong_deadline.is_none() {
                self.pong_deadline = Some(now + config.pong_timeout);
            }
            self.sep();
            self.out.extend_from_slice(protocol::PING);
        }
        let unix = now_secs();
        let delay = config.expired_close_delay.as_secs() as i64;
        if self.exp > 0 && unix > self.exp + delay {
            return Some(Disconnect::EXPIRED);
        }
        let expired: Vec<Uuid> = self
            .subs
            .iter()
            .filter(|(_, l)| l.exp > 0 && unix > l.exp + delay)
            .map(|(r, _)| *r)
            .collect();
        for room in expired {
            if let Some(local) = self.subs.remove(&room) {
                self.gw.hub.unsubscribe(room, local.sub_id);
                let push = protocol::encode_unsubscribe_push(
                    &local.channel,
                    unsubscribe_codes::EXPIRED,
                    "subscription expired",
                );
                self.sep();
                self.out.extend_from_slice(&push);
            }
        }
        None
    }

    fn cleanup(&mut self) {
        for (room, local) in self.subs.drain() {
            self.gw.hub.unsubscribe(room, local.sub_id);
        }
        if let Some(peer) = self.peer.take() {
            self.gw.per_user.remove(&peer.user);
            metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        }
    }
}

/// Serves one upgraded socket until it closes.
pub(crate) async fn run<S: connection::Split>(gw: Gateway, stream: S, slot: SocketSlot) {
    let _slot = slot;
    let (reader, mut inbound, mut wr) = connection::split(stream, gw.config.write_timeout);
    let (queue_tx, mut queue_rx) = mpsc::channel(gw.config.send_queue);
    // A child of the sessions' stop token: one future tells both a kill from
    // outside (the hub: a slow consumer, a departed member) and shutdown.
    let kill = gw.sessions_stop.child_token();
    let mut s = Session::new(gw.clone(), kill.clone(), queue_tx);
    // One timer, set to the session's next deadline (not a periodic tick:
    // an idle connection wakes only when it has something to do).
    let timer = tokio::time::sleep_until(s.deadline().into());
    tokio::pin!(timer);
    let mut draining = false;
    // Made once, not per turn of the loop: each new one registers a waiter.
    // Once registered it is polled again only when a flag says it may be
    // done (the hub sets a kill code, and the gateway `stopping`, before the
    // token is cancelled): each poll of the token locks its node.
    let killed = kill.cancelled();
    tokio::pin!(killed);
    let mut registered = false;

    // The close to send when the loop ends, if any.
    let end: Option<(u16, &'static str)> = loop {
        let mut disconnect = None;
        // Pushes never bring a deadline closer; everything else may.
        let mut rearm = true;
        tokio::select! {
            biased;
            () = std::future::poll_fn(|cx| {
                // Only the first poll (which registers the waiter) and polls
                // after a flag is up reach the token.
                let hinted = gw.stopping.load(Ordering::Acquire)
                    || s.peer.as_ref().is_some_and(|p| p.kill_code() != 0);
                if registered && !hinted {
                    return std::task::Poll::Pending;
                }
                killed.as_mut().poll(cx)
            }), if !draining => {
                let by_hub = s.peer.as_ref().map(|p| p.kill_code()).filter(|&c| c != 0);
                if by_hub.is_some() || !gw.stopping.load(Ordering::Acquire) {
                    let code = by_hub.unwrap_or(Disconnect::SLOW.code);
                    // A slow consumer's socket may not drain; do not wait on it.
                    wr.close(code, "slow", Duration::from_millis(200)).await;
                    break None;
                }
                // Shutdown. A kill from now on is not watched: the drain
                // ends with the last acknowledgement anyway.
                draining = true;
                // Commands already received are still handled (a publish
                // among them is answered once the broker acknowledges it).
                while let Ok(ev) = inbound.try_recv() {
                    if let Inbound::Commands(cmds) = ev {
                        disconnect = s.commands(cmds);
                        if disconnect.is_some() {
                            break;
                        }
                    }
                }
                if disconnect.is_none() && s.inflight.is_empty() {
                    disconnect = Some(Disconnect::SHUTDOWN);
                }
            }
            Some((id, started, ok)) = s.inflight.next(), if !s.inflight.is_empty() => {
                s.published(id, started, ok);
                if draining && s.inflight.is_empty() {
                    disconnect = Some(Disconnect::SHUTDOWN);
                }
            }
            msg = queue_rx.recv() => {
                rearm = false;
                if let Some(msg) = msg {
                    s.outbound(msg);
                    let mut n = 1;
                    while n < MAX_BATCH && s.out.len() < connection::MAX_FRAME_OUT {
                        match queue_rx.try_recv() {
                            Ok(msg) => s.outbound(msg),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                }
            }
            ev = inbound.recv(), if !draining => match ev {
                None => break None,
                Some(Inbound::Close) => break Some((1000, "")),
                Some(Inbound::Fail(code, reason)) => break Some((code, reason)),
                Some(Inbound::Ping(payload)) => {
                    if wr.pong(payload).await.is_err() {
                        break None;
                    }
                }
                Some(Inbound::Malformed(err)) => {
                    tracing::debug!(%err, "malformed frame");
                    disconnect = Some(Disconnect::BAD_REQUEST);
                }
                Some(Inbound::Commands(cmds)) => disconnect = s.commands(cmds),
            },
            () = &mut timer => disconnect = s.tick(),
        }
        registered = true;
        if rearm {
            timer.as_mut().reset(s.deadline().into());
        }
        if wr.flush(&mut s.out).await.is_err() {
            break None;
        }
        if queue_rx.is_empty() {
            // Nothing more to write soon: an idle connection holds no
            // output buffer (a busy one keeps it between batches).
            s.out = Vec::new();
        }
        if let Some(d) = disconnect {
            break Some((d.code, d.reason));
        }
    };
    s.cleanup();
    if let Some((code, reason)) = end {
        wr.close(code, reason, Duration::from_secs(2)).await;
    }
    reader.drain().await;
}

#[cfg(test)]
mod tests;
