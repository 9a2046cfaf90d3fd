//! One WebSocket connection: a reader task that turns frames into complete,
//! size- and UTF-8-checked messages, and the session task that runs the
//! protocol, writes replies and pushes, and owns the timers.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use confab_common::jwt::TokenError;
use confab_common::record::{RoomRecord, UserRef};
use fastwebsockets::{
    Frame, OpCode, Payload, WebSocket, WebSocketError, WebSocketRead, WebSocketWrite,
};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::hub::{Outbound, Peer};
use crate::metrics as m;
use crate::protocol::{
    self, encode_empty, encode_error, unsubscribe_codes, Disconnect, ProtoError, ReplyWriter,
    Request,
};
use crate::server::SocketSlot;
use crate::{Gateway, MAX_MESSAGE_BYTES};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Publications one connection may have waiting for the broker.
const MAX_INFLIGHT: usize = 256;
/// Queue messages written in one frame at most.
const MAX_BATCH: usize = 64;
/// Pushes are batched into one frame only up to this size.
const MAX_FRAME_OUT: usize = 64 * 1024;
/// The longest text a chat message may carry, in characters.
pub(crate) const MAX_TEXT_CHARS: usize = 4000;

/// What the reader hands the session.
enum Inbound {
    /// A complete data message, UTF-8 checked.
    Message(Bytes),
    /// A WebSocket ping to answer.
    Ping(Bytes),
    /// The peer sent a close frame.
    Close,
    /// A protocol violation: close with this code.
    Fail(u16, &'static str),
}

fn owned(payload: Payload<'_>) -> Bytes {
    match payload {
        Payload::Bytes(b) => b.freeze(),
        Payload::Owned(v) => Bytes::from(v),
        other => Bytes::copy_from_slice(&other),
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut rd: WebSocketRead<R>, tx: mpsc::Sender<Inbound>) {
    let mut partial: Option<BytesMut> = None;
    loop {
        let frame = rd
            .read_frame::<_, std::io::Error>(&mut |_| async { Ok(()) })
            .await;
        let event = match frame {
            Ok(frame) => match frame.opcode {
                OpCode::Text | OpCode::Binary => {
                    if partial.is_some() {
                        Some(Inbound::Fail(1002, "expected continuation"))
                    } else if frame.fin {
                        let payload = owned(frame.payload);
                        if std::str::from_utf8(&payload).is_err() {
                            Some(Inbound::Fail(1007, "invalid utf-8"))
                        } else {
                            Some(Inbound::Message(payload))
                        }
                    } else {
                        partial = Some(BytesMut::from(&frame.payload[..]));
                        None
                    }
                }
                OpCode::Continuation => match partial.as_mut() {
                    None => Some(Inbound::Fail(1002, "unexpected continuation")),
                    Some(buf) => {
                        if buf.len() + frame.payload.len() > MAX_MESSAGE_BYTES {
                            Some(Inbound::Fail(1009, "message too big"))
                        } else {
                            buf.extend_from_slice(&frame.payload);
                            if frame.fin {
                                let whole = partial.take().unwrap_or_default().freeze();
                                if std::str::from_utf8(&whole).is_err() {
                                    Some(Inbound::Fail(1007, "invalid utf-8"))
                                } else {
                                    Some(Inbound::Message(whole))
                                }
                            } else {
                                None
                            }
                        }
                    }
                },
                OpCode::Close => Some(Inbound::Close),
                OpCode::Ping => Some(Inbound::Ping(owned(frame.payload))),
                OpCode::Pong => None,
            },
            Err(WebSocketError::FrameTooLarge) => Some(Inbound::Fail(1009, "message too big")),
            Err(WebSocketError::InvalidUTF8) => Some(Inbound::Fail(1007, "invalid utf-8")),
            Err(
                WebSocketError::UnexpectedEOF
                | WebSocketError::IoError(_)
                | WebSocketError::ConnectionClosed,
            ) => return,
            Err(_) => Some(Inbound::Fail(1002, "protocol error")),
        };
        if let Some(event) = event {
            let stop = matches!(event, Inbound::Close | Inbound::Fail(..));
            if tx.send(event).await.is_err() || stop {
                return;
            }
        }
    }
}

/// A token bucket for publications.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            tokens: burst.max(1.0),
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Checks publication data: a JSON object with a non-empty string `text` of
/// at most [`MAX_TEXT_CHARS`] characters.
pub(crate) fn validate_message(data: &str, max_bytes: usize) -> Result<(), ProtoError> {
    if data.len() > max_bytes {
        return Err(ProtoError::LIMIT_EXCEEDED);
    }
    let value: serde_json::Value =
        serde_json::from_str(data).map_err(|_| ProtoError::BAD_REQUEST)?;
    let text = value
        .as_object()
        .and_then(|o| o.get("text"))
        .and_then(|t| t.as_str())
        .ok_or(ProtoError::BAD_REQUEST)?;
    if text.is_empty() {
        return Err(ProtoError::BAD_REQUEST);
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ProtoError::LIMIT_EXCEEDED);
    }
    Ok(())
}

struct LocalSub {
    sub_id: u64,
    channel: String,
    /// The subscription token's `exp`, Unix seconds.
    exp: i64,
}

type PublishDone = Pin<Box<dyn Future<Output = (u32, Instant, bool)> + Send>>;

struct Session {
    gw: Gateway,
    kill: CancellationToken,
    queue_tx: mpsc::Sender<Outbound>,
    peer: Option<Arc<Peer>>,
    /// The access token's `exp`, Unix seconds.
    exp: i64,
    subs: HashMap<Uuid, LocalSub>,
    bucket: Bucket,
    started: Instant,
    next_ping: Instant,
    pong_deadline: Option<Instant>,
    /// Replies and pushes waiting to be written, `\n`-separated.
    out: Vec<u8>,
}

fn unix_now() -> i64 {
    confab_common::clock::now_secs()
}

impl Session {
    fn sep(&mut self) {
        if !self.out.is_empty() {
            self.out.push(b'\n');
        }
    }

    fn error(&mut self, id: u32, err: ProtoError) {
        self.sep();
        encode_error(&mut self.out, id, err);
    }

    fn handle(
        &mut self,
        id: u32,
        req: Request,
        inflight: &mut FuturesUnordered<PublishDone>,
    ) -> Option<Disconnect> {
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
        match req {
            Request::Connect(_) => return Some(Disconnect::BAD_REQUEST),
            Request::Pong => self.pong_deadline = None,
            Request::Ping => {
                self.sep();
                encode_empty(&mut self.out, id, "ping");
            }
            Request::Send => {}
            Request::Rpc => self.error(id, ProtoError::METHOD_NOT_FOUND),
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
                if let Err(e) = self.publish(id, p, &peer, inflight) {
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

    /// Handles one data message: its commands, in order.
    fn message(
        &mut self,
        bytes: &[u8],
        inflight: &mut FuturesUnordered<PublishDone>,
    ) -> Option<Disconnect> {
        match protocol::decode_commands(bytes) {
            Err(err) => {
                tracing::debug!(%err, "malformed frame");
                Some(Disconnect::BAD_REQUEST)
            }
            Ok(cmds) => {
                for (id, req) in cmds {
                    if let Some(d) = self.handle(id, req, inflight) {
                        return Some(d);
                    }
                }
                None
            }
        }
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
        let ttl = (claims.exp - unix_now()).max(1);
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
        let ttl = (claims.exp - unix_now()).max(1);
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
                if self.gw.hub.left_since(room, peer.user, c.iat) {
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
        let s = self.gw.hub.subscribe(room, peer, recover);
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
                .num("ttl", (exp - unix_now()).max(1));
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
                    .num("ttl", (exp - unix_now()).max(1))
                    .finish();
            }
        }
    }

    fn publish(
        &mut self,
        id: u32,
        req: protocol::PublishRequest,
        peer: &Peer,
        inflight: &mut FuturesUnordered<PublishDone>,
    ) -> Result<(), ProtoError> {
        let room = self.subscribed_room(&req.channel)?;
        if inflight.len() >= MAX_INFLIGHT || !self.bucket.take() {
            return Err(ProtoError::TOO_MANY_REQUESTS);
        }
        let data = req.data.ok_or(ProtoError::BAD_REQUEST)?;
        validate_message(data.get(), self.gw.config.max_publish_bytes)?;
        let user = UserRef {
            id: peer.user,
            username: peer.username.clone(),
        };
        if let Some(problem) = self.gw.publish_problem() {
            tracing::warn!(%problem, "publication refused");
            metrics::counter!(m::PUBLISH_FAILURES).increment(1);
            return Err(ProtoError::NOT_AVAILABLE);
        }
        let record = RoomRecord::message(room, user, data);
        let started = Instant::now();
        match self.gw.producer.enqueue(record) {
            Ok(delivery) => {
                inflight.push(Box::pin(async move {
                    let ok = match delivery.await {
                        Ok(_) => true,
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

    fn publish_done(&mut self, id: u32, started: Instant, ok: bool) {
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
            Outbound::Unsubscribed { room, sub_id, push } => {
                if self.subs.get(&room).is_some_and(|l| l.sub_id == sub_id) {
                    self.subs.remove(&room);
                    self.sep();
                    self.out.extend_from_slice(&push);
                }
            }
        }
    }

    /// Timers: connect deadline, pings, pong deadline, token expiry.
    fn tick(&mut self) -> Option<Disconnect> {
        let now = Instant::now();
        let gw = self.gw.clone();
        let config = &gw.config;
        if self.peer.is_none() {
            return (now.duration_since(self.started) > config.connect_timeout)
                .then_some(Disconnect::STALE);
        }
        if self.pong_deadline.is_some_and(|d| now > d) {
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
        let unix = unix_now();
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
        if self.peer.take().is_some() {
            metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        }
    }
}

/// Writes `frame` within the write timeout.
async fn write<W: AsyncWrite + Unpin>(
    wr: &mut WebSocketWrite<W>,
    frame: Frame<'_>,
    timeout: Duration,
) -> Result<(), ()> {
    match tokio::time::timeout(timeout, wr.write_frame(frame)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Writes what is pending in `out` as one text frame.
async fn flush<W: AsyncWrite + Unpin>(
    wr: &mut WebSocketWrite<W>,
    out: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), ()> {
    if out.is_empty() {
        return Ok(());
    }
    let r = write(wr, Frame::text(Payload::Borrowed(out)), timeout).await;
    out.clear();
    r
}

async fn close<W: AsyncWrite + Unpin>(wr: &mut WebSocketWrite<W>, code: u16, reason: &str) {
    let _ = write(
        wr,
        Frame::close(code, reason.as_bytes()),
        Duration::from_secs(2),
    )
    .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), wr.flush()).await;
}

/// The socket's read half, shared so that the session can take it back from
/// the frame reader and drain it after sending a close frame. Closing a socket
/// with unread input makes the kernel send RST, which can destroy the close
/// frame before the client reads it.
struct SharedRead<R>(Arc<std::sync::Mutex<R>>);

impl<R: AsyncRead + Unpin> AsyncRead for SharedRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Pin::new(&mut *inner).poll_read(cx, buf)
    }
}

/// Serves one upgraded socket until it closes.
pub(crate) async fn run<S>(gw: Gateway, ws: WebSocket<S>, slot: SocketSlot)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _slot = slot;
    let (read, write_half) = tokio::io::split(ws.into_inner());
    let read = Arc::new(std::sync::Mutex::new(read));
    let (mut rd, mut wr) = fastwebsockets::after_handshake_split(
        SharedRead(Arc::clone(&read)),
        write_half,
        fastwebsockets::Role::Server,
    );
    rd.set_auto_close(false);
    rd.set_auto_pong(false);
    // fastwebsockets refuses frames whose length is >= this limit.
    rd.set_max_message_size(MAX_MESSAGE_BYTES + 1);
    let (in_tx, mut in_rx) = mpsc::channel(8);
    let reader = tokio::spawn(read_loop(rd, in_tx));

    let (queue_tx, mut queue_rx) = mpsc::channel(gw.config.send_queue);
    let kill = CancellationToken::new();
    let write_timeout = gw.config.write_timeout;
    let mut s = Session {
        bucket: Bucket::new(gw.config.publish_rate, gw.config.publish_burst),
        gw: gw.clone(),
        kill: kill.clone(),
        queue_tx,
        peer: None,
        exp: 0,
        subs: HashMap::new(),
        started: Instant::now(),
        next_ping: Instant::now(),
        pong_deadline: None,
        out: Vec::with_capacity(4096),
    };
    let mut inflight: FuturesUnordered<PublishDone> = FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;

    // The close to send when the loop ends, if any.
    let end: Option<(u16, &'static str)> = loop {
        let mut disconnect = None;
        tokio::select! {
            biased;
            () = kill.cancelled() => {
                let code = s.peer.as_ref().map_or(Disconnect::SLOW.code, |p| p.kill_code());
                // A slow consumer's socket may not drain; do not wait on it.
                let _ = tokio::time::timeout(Duration::from_millis(200), close(&mut wr, code, "slow")).await;
                break None;
            }
            () = gw.shutdown.cancelled(), if !draining => {
                draining = true;
                // Commands already received are still handled (a publish
                // among them is answered once the broker acknowledges it).
                while let Ok(ev) = in_rx.try_recv() {
                    if let Inbound::Message(bytes) = ev {
                        disconnect = s.message(&bytes, &mut inflight);
                        if disconnect.is_some() {
                            break;
                        }
                    }
                }
                if disconnect.is_none() && inflight.is_empty() {
                    disconnect = Some(Disconnect::SHUTDOWN);
                }
            }
            Some((id, started, ok)) = inflight.next(), if !inflight.is_empty() => {
                s.publish_done(id, started, ok);
                if draining && inflight.is_empty() {
                    disconnect = Some(Disconnect::SHUTDOWN);
                }
            }
            msg = queue_rx.recv() => {
                if let Some(msg) = msg {
                    s.outbound(msg);
                    let mut n = 1;
                    while n < MAX_BATCH && s.out.len() < MAX_FRAME_OUT {
                        match queue_rx.try_recv() {
                            Ok(msg) => s.outbound(msg),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                }
            }
            ev = in_rx.recv(), if !draining => match ev {
                None => break None,
                Some(Inbound::Close) => break Some((1000, "")),
                Some(Inbound::Fail(code, reason)) => break Some((code, reason)),
                Some(Inbound::Ping(payload)) => {
                    if write(&mut wr, Frame::pong(Payload::Owned(payload.to_vec())), write_timeout).await.is_err() {
                        break None;
                    }
                }
                Some(Inbound::Message(bytes)) => disconnect = s.message(&bytes, &mut inflight),
            },
            _ = tick.tick() => disconnect = s.tick(),
        }
        if flush(&mut wr, &mut s.out, write_timeout).await.is_err() {
            break None;
        }
        if let Some(d) = disconnect {
            break Some((d.code, d.reason));
        }
    };
    s.cleanup();
    if let Some((code, reason)) = end {
        close(&mut wr, code, reason).await;
    }
    reader.abort();
    let _ = reader.await;
    if let Ok(read) = Arc::try_unwrap(read) {
        // Read what the client still sends (its close echo) until it closes.
        let read = read.into_inner().unwrap_or_else(|e| e.into_inner());
        let mut limited = tokio::io::AsyncReadExt::take(read, 1 << 20);
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::io::copy(&mut limited, &mut tokio::io::sink()),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_validation() {
        let max = 16 * 1024;
        assert!(validate_message(r#"{"text":"hi"}"#, max).is_ok());
        assert!(validate_message(r#"{"text":"hi","extra":[1,2]}"#, max).is_ok());
        for bad in [
            r#"{"text":""}"#,
            r#"{"text":5}"#,
            r#"{}"#,
            r#""text""#,
            "[1]",
            "null",
        ] {
            assert_eq!(
                validate_message(bad, max),
                Err(ProtoError::BAD_REQUEST),
                "{bad}"
            );
        }
        let long = format!(r#"{{"text":"{}"}}"#, "é".repeat(MAX_TEXT_CHARS));
        assert!(
            validate_message(&long, max).is_ok(),
            "4000 characters, 8000 bytes"
        );
        let too_long = format!(r#"{{"text":"{}"}}"#, "a".repeat(MAX_TEXT_CHARS + 1));
        assert_eq!(
            validate_message(&too_long, max),
            Err(ProtoError::LIMIT_EXCEEDED)
        );
        assert_eq!(
            validate_message(&long, 100),
            Err(ProtoError::LIMIT_EXCEEDED)
        );
    }

    #[test]
    fn bucket_limits_bursts() {
        let mut b = Bucket::new(1.0, 3.0);
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
        let mut unlimited = Bucket::new(0.0, 1.0);
        assert!((0..100).all(|_| unlimited.take()));
    }
}
