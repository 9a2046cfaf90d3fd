//! The Centrifugo client protocol v2, JSON encoding (`client.proto` in
//! centrifugal/protocol).
//!
//! A WebSocket text message holds one or more JSON objects separated by `\n`.
//! Client to server they are `Command`s: an `id` and exactly one request
//! field (`connect`, `subscribe`, ...). An empty object `{}` is the client's
//! pong. Server to client they are `Reply`s: the same `id` with a result
//! field or an `error`, or (with no id) a `push`. An empty reply `{}` is the
//! server's ping.
//!
//! Decoding is typed ([`Command`] → [`Request`]); encoding writes JSON by hand
//! into byte buffers so that a publication is encoded once and its bytes are
//! shared by every push, recovery and history reply that carries it.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{self, Deserializer, IgnoredAny};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

/// Protocol error codes sent in replies (`Error.code`).
pub mod codes {
    pub const INTERNAL: u32 = 100;
    pub const UNAUTHORIZED: u32 = 101;
    pub const UNKNOWN_CHANNEL: u32 = 102;
    pub const PERMISSION_DENIED: u32 = 103;
    pub const METHOD_NOT_FOUND: u32 = 104;
    pub const ALREADY_SUBSCRIBED: u32 = 105;
    pub const LIMIT_EXCEEDED: u32 = 106;
    pub const BAD_REQUEST: u32 = 107;
    pub const NOT_AVAILABLE: u32 = 108;
    pub const TOKEN_EXPIRED: u32 = 109;
    pub const EXPIRED: u32 = 110;
    pub const TOO_MANY_REQUESTS: u32 = 111;
    pub const UNRECOVERABLE_POSITION: u32 = 112;
}

/// An error reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtoError {
    pub code: u32,
    pub message: &'static str,
    /// Tells SDKs the call may succeed if retried.
    pub temporary: bool,
}

impl ProtoError {
    pub const fn new(code: u32, message: &'static str) -> Self {
        Self {
            code,
            message,
            temporary: false,
        }
    }
    pub const INTERNAL: Self = Self {
        code: codes::INTERNAL,
        message: "internal server error",
        temporary: true,
    };
    pub const UNKNOWN_CHANNEL: Self = Self::new(codes::UNKNOWN_CHANNEL, "unknown channel");
    pub const PERMISSION_DENIED: Self = Self::new(codes::PERMISSION_DENIED, "permission denied");
    pub const METHOD_NOT_FOUND: Self = Self::new(codes::METHOD_NOT_FOUND, "method not found");
    pub const ALREADY_SUBSCRIBED: Self = Self::new(codes::ALREADY_SUBSCRIBED, "already subscribed");
    pub const LIMIT_EXCEEDED: Self = Self::new(codes::LIMIT_EXCEEDED, "limit exceeded");
    pub const BAD_REQUEST: Self = Self::new(codes::BAD_REQUEST, "bad request");
    pub const NOT_AVAILABLE: Self = Self {
        code: codes::NOT_AVAILABLE,
        message: "not available",
        temporary: true,
    };
    pub const TOKEN_EXPIRED: Self = Self::new(codes::TOKEN_EXPIRED, "token expired");
    pub const TOO_MANY_REQUESTS: Self = Self::new(codes::TOO_MANY_REQUESTS, "too many requests");
    pub const UNRECOVERABLE_POSITION: Self =
        Self::new(codes::UNRECOVERABLE_POSITION, "unrecoverable position");
}

/// A server-initiated disconnect, sent as the WebSocket close code and reason.
/// Codes 3000–3499 advise the client to reconnect, 3500–3999 not to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u16,
    pub reason: &'static str,
}

impl Disconnect {
    pub const SHUTDOWN: Self = Self::new(3001, "shutdown");
    pub const SERVER_ERROR: Self = Self::new(3004, "internal server error");
    pub const EXPIRED: Self = Self::new(3005, "connection expired");
    pub const SLOW: Self = Self::new(3008, "slow");
    pub const WRITE_ERROR: Self = Self::new(3009, "write error");
    pub const NO_PONG: Self = Self::new(3012, "no pong");
    pub const INVALID_TOKEN: Self = Self::new(3500, "invalid token");
    pub const BAD_REQUEST: Self = Self::new(3501, "bad request");
    pub const STALE: Self = Self::new(3502, "stale");
    pub const CONNECTION_LIMIT: Self = Self::new(3504, "connection limit");

    pub const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }

    /// Whether the SDKs reconnect after this code.
    pub fn reconnect(&self) -> bool {
        !((3500..4000).contains(&self.code) || (4500..5000).contains(&self.code))
    }
}

/// Unsubscribe push codes: below 2500 the SDK stays unsubscribed, from 2500 it
/// resubscribes.
pub mod unsubscribe_codes {
    /// The server removed the subscription for good (the user left the room).
    pub const SERVER: u32 = 2000;
    /// The subscription token expired without a `sub_refresh`.
    pub const EXPIRED: u32 = 2501;
}

/// Accepts a JSON number or a decimal string (protobuf JSON writes 64-bit
/// integers as strings).
fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr<'a> {
        Num(u64),
        Str(&'a str),
    }
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => Ok(n),
        NumOrStr::Str(s) => s.parse().map_err(de::Error::custom),
    }
}

/// The wire form of a command: every request field is optional.
#[derive(Debug, Default, Deserialize)]
pub struct Command {
    #[serde(default)]
    pub id: u32,
    connect: Option<ConnectRequest>,
    subscribe: Option<SubscribeRequest>,
    unsubscribe: Option<ChannelRequest>,
    publish: Option<PublishRequest>,
    presence: Option<ChannelRequest>,
    presence_stats: Option<ChannelRequest>,
    history: Option<HistoryRequest>,
    ping: Option<IgnoredAny>,
    send: Option<IgnoredAny>,
    rpc: Option<RpcRequest>,
    refresh: Option<RefreshRequest>,
    sub_refresh: Option<SubRefreshRequest>,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ConnectRequest {
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct SubscribeRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub recover: bool,
    #[serde(default)]
    pub epoch: String,
    #[serde(default, deserialize_with = "de_u64")]
    pub offset: u64,
    #[serde(default)]
    pub positioned: bool,
    #[serde(default)]
    pub recoverable: bool,
    #[serde(default)]
    pub join_leave: bool,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ChannelRequest {
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Deserialize)]
pub struct PublishRequest {
    #[serde(default)]
    pub channel: String,
    /// The publication data, kept byte for byte.
    pub data: Option<Box<RawValue>>,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq, Clone)]
pub struct StreamPosition {
    #[serde(default, deserialize_with = "de_u64")]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct HistoryRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub limit: i32,
    pub since: Option<StreamPosition>,
    #[serde(default)]
    pub reverse: bool,
}

/// `rpc`: a method and its data, kept raw.
#[derive(Debug, Deserialize)]
pub struct RpcRequest {
    #[serde(default)]
    pub method: String,
    pub data: Option<Box<RawValue>>,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct RefreshRequest {
    #[serde(default)]
    pub token: String,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct SubRefreshRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
}

/// A decoded command: its id and what it asks for.
#[derive(Debug)]
pub enum Request {
    Connect(ConnectRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe(ChannelRequest),
    Publish(PublishRequest),
    Presence(ChannelRequest),
    PresenceStats(ChannelRequest),
    History(HistoryRequest),
    Refresh(RefreshRequest),
    SubRefresh(SubRefreshRequest),
    /// An explicit `ping` request (answered with an empty `ping` result).
    Ping,
    /// An empty command: the answer to a server ping.
    Pong,
    /// `send` (async message); this server has no handler and ignores it.
    Send,
    /// `rpc`: `typing` is the one method; any other answers 104.
    Rpc(RpcRequest),
}

impl Command {
    /// The request this command carries. The first request field wins, as in
    /// the reference server.
    pub fn into_request(self) -> Request {
        if let Some(r) = self.connect {
            Request::Connect(r)
        } else if let Some(r) = self.subscribe {
            Request::Subscribe(r)
        } else if let Some(r) = self.unsubscribe {
            Request::Unsubscribe(r)
        } else if let Some(r) = self.publish {
            Request::Publish(r)
        } else if let Some(r) = self.presence {
            Request::Presence(r)
        } else if let Some(r) = self.presence_stats {
            Request::PresenceStats(r)
        } else if let Some(r) = self.history {
            Request::History(r)
        } else if self.ping.is_some() {
            Request::Ping
        } else if self.send.is_some() {
            Request::Send
        } else if let Some(r) = self.rpc {
            Request::Rpc(r)
        } else if let Some(r) = self.refresh {
            Request::Refresh(r)
        } else if let Some(r) = self.sub_refresh {
            Request::SubRefresh(r)
        } else {
            Request::Pong
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame is not valid UTF-8")]
    Utf8,
    #[error("malformed command: {0}")]
    Json(#[from] serde_json::Error),
    #[error("too many commands in one frame ({0})")]
    TooMany(usize),
}

/// The most commands one frame may carry.
pub const MAX_COMMANDS_PER_FRAME: usize = 256;

/// Splits a frame into commands, one JSON object per line. Blank lines are
/// skipped.
pub fn decode_commands(frame: &[u8]) -> Result<Vec<(u32, Request)>, DecodeError> {
    let text = std::str::from_utf8(frame).map_err(|_| DecodeError::Utf8)?;
    let mut out = Vec::new();
    for line in text.split('\n') {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if out.len() == MAX_COMMANDS_PER_FRAME {
            return Err(DecodeError::TooMany(out.len() + 1));
        }
        let cmd: Command = serde_json::from_str(line)?;
        let id = cmd.id;
        out.push((id, cmd.into_request()));
    }
    Ok(out)
}

// ---------------------------------------------------------------- encoding

/// Appends `s` as a JSON string.
pub fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *buf, s).expect("writing to a Vec cannot fail");
}

fn push_num(buf: &mut Vec<u8>, n: impl std::fmt::Display) {
    let mut s = String::new();
    let _ = write!(s, "{n}");
    buf.extend_from_slice(s.as_bytes());
}

/// `{"user":"..","client":"..","conn_info":{"username":".."}}`: who a
/// presence entry, join or leave is about.
pub fn encode_client_info(user: &str, client: &str, username: &str) -> Bytes {
    let mut b = Vec::with_capacity(128);
    b.extend_from_slice(b"{\"user\":");
    push_json_str(&mut b, user);
    if !client.is_empty() {
        b.extend_from_slice(b",\"client\":");
        push_json_str(&mut b, client);
    }
    b.extend_from_slice(b",\"conn_info\":{\"username\":");
    push_json_str(&mut b, username);
    b.extend_from_slice(b"}}");
    Bytes::from(b)
}

/// A publication:
/// `{"data":<raw>,"info":{...},"offset":N,"tags":{"message_id":"<id>"}}`.
/// `data` is written exactly as it was received; `message_id` is the
/// record's id, the REST `Message.id`.
pub fn encode_publication(data: &str, info: &[u8], offset: u64, message_id: &Uuid) -> Bytes {
    let mut b = Vec::with_capacity(data.len() + info.len() + 100);
    b.extend_from_slice(b"{\"data\":");
    b.extend_from_slice(data.as_bytes());
    b.extend_from_slice(b",\"info\":");
    b.extend_from_slice(info);
    b.extend_from_slice(b",\"offset\":");
    push_num(&mut b, offset);
    b.extend_from_slice(b",\"tags\":{\"message_id\":\"");
    let mut id = Uuid::encode_buffer();
    b.extend_from_slice(message_id.hyphenated().encode_lower(&mut id).as_bytes());
    b.extend_from_slice(b"\"}}");
    Bytes::from(b)
}

fn push_prefix(channel: &str, kind: &str, extra: usize) -> BytesMut {
    let mut b = BytesMut::with_capacity(channel.len() + extra + 40);
    b.put_slice(b"{\"push\":{\"channel\":");
    let mut tmp = Vec::with_capacity(channel.len() + 2);
    push_json_str(&mut tmp, channel);
    b.put_slice(&tmp);
    b.put_slice(b",\"");
    b.put_slice(kind.as_bytes());
    b.put_slice(b"\":");
    b
}

/// `{"push":{"channel":"..","pub":<publication>}}`.
pub fn encode_pub_push(channel: &str, publication: &[u8]) -> Bytes {
    let mut b = push_prefix(channel, "pub", publication.len());
    b.put_slice(publication);
    b.put_slice(b"}}");
    b.freeze()
}

/// `{"push":{"channel":"..","join":{"info":<client info>}}}`.
pub fn encode_join_push(channel: &str, info: &[u8]) -> Bytes {
    let mut b = push_prefix(channel, "join", info.len() + 12);
    b.put_slice(b"{\"info\":");
    b.put_slice(info);
    b.put_slice(b"}}}");
    b.freeze()
}

/// `{"push":{"channel":"..","leave":{"info":<client info>}}}`.
pub fn encode_leave_push(channel: &str, info: &[u8]) -> Bytes {
    let mut b = push_prefix(channel, "leave", info.len() + 12);
    b.put_slice(b"{\"info\":");
    b.put_slice(info);
    b.put_slice(b"}}}");
    b.freeze()
}

/// A typing signal: `{"push":{"channel":"..","pub":{"data":{"type":"typing",
/// "user":{"id":"..","username":".."}},"info":{..}}}}`, a publication with no
/// offset (never stored, never recovered).
pub fn encode_typing_push(channel: &str, user: &str, username: &str) -> Bytes {
    let mut publication = Vec::with_capacity(160);
    publication.extend_from_slice(b"{\"data\":{\"type\":\"typing\",\"user\":{\"id\":");
    push_json_str(&mut publication, user);
    publication.extend_from_slice(b",\"username\":");
    push_json_str(&mut publication, username);
    publication.extend_from_slice(b"}},\"info\":");
    publication.extend_from_slice(&encode_client_info(user, "", username));
    publication.push(b'}');
    encode_pub_push(channel, &publication)
}

/// `{"push":{"channel":"..","unsubscribe":{"code":N,"reason":".."}}}`.
pub fn encode_unsubscribe_push(channel: &str, code: u32, reason: &str) -> Bytes {
    let mut b = push_prefix(channel, "unsubscribe", reason.len() + 32);
    let mut tmp = Vec::new();
    tmp.extend_from_slice(b"{\"code\":");
    push_num(&mut tmp, code);
    tmp.extend_from_slice(b",\"reason\":");
    push_json_str(&mut tmp, reason);
    tmp.extend_from_slice(b"}}}");
    b.put_slice(&tmp);
    b.freeze()
}

/// `{"push":{"disconnect":{"code":N,"reason":"..","reconnect":bool}}}`.
pub fn encode_disconnect_push(d: Disconnect) -> Bytes {
    let mut b = Vec::new();
    b.extend_from_slice(b"{\"push\":{\"disconnect\":{\"code\":");
    push_num(&mut b, d.code);
    b.extend_from_slice(b",\"reason\":");
    push_json_str(&mut b, d.reason);
    b.extend_from_slice(if d.reconnect() {
        b",\"reconnect\":true}}}"
    } else {
        b"}}}"
    });
    Bytes::from(b)
}

/// The server's ping: an empty reply.
pub const PING: &[u8] = b"{}";

/// A reply being written: `{"id":N,"<method>":{...}}`.
pub struct ReplyWriter<'a> {
    buf: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> ReplyWriter<'a> {
    /// Starts `{"id":N,"<method>":{` in `buf`.
    pub fn start(buf: &'a mut Vec<u8>, id: u32, method: &str) -> Self {
        buf.extend_from_slice(b"{\"id\":");
        push_num(buf, id);
        buf.extend_from_slice(b",\"");
        buf.extend_from_slice(method.as_bytes());
        buf.extend_from_slice(b"\":{");
        Self { buf, first: true }
    }

    fn key(&mut self, k: &str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        self.buf.push(b'"');
        self.buf.extend_from_slice(k.as_bytes());
        self.buf.extend_from_slice(b"\":");
    }

    pub fn str(mut self, k: &str, v: &str) -> Self {
        self.key(k);
        push_json_str(self.buf, v);
        self
    }

    pub fn num(mut self, k: &str, v: impl std::fmt::Display) -> Self {
        self.key(k);
        push_num(self.buf, v);
        self
    }

    /// Writes `"k":true` when `v`; omits false (protobuf JSON omits defaults).
    pub fn flag(mut self, k: &str, v: bool) -> Self {
        if v {
            self.key(k);
            self.buf.extend_from_slice(b"true");
        }
        self
    }

    /// Writes `"k":[a,b,...]` from pre-encoded JSON values.
    pub fn list<I, T>(mut self, k: &str, items: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.key(k);
        self.buf.push(b'[');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            self.buf.extend_from_slice(item.as_ref());
        }
        self.buf.push(b']');
        self
    }

    /// Writes `"k":{"key1":v1,...}` from pre-encoded JSON values.
    pub fn map<'k, I, T>(mut self, k: &str, items: I) -> Self
    where
        I: IntoIterator<Item = (&'k str, T)>,
        T: AsRef<[u8]>,
    {
        self.key(k);
        self.buf.push(b'{');
        for (i, (key, item)) in items.into_iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            push_json_str(self.buf, key);
            self.buf.push(b':');
            self.buf.extend_from_slice(item.as_ref());
        }
        self.buf.push(b'}');
        self
    }

    /// Closes the result object and the reply.
    pub fn finish(self) {
        self.buf.extend_from_slice(b"}}");
    }
}

/// Appends `{"id":N,"error":{"code":C,"message":"..."}}`.
pub fn encode_error(buf: &mut Vec<u8>, id: u32, err: ProtoError) {
    buf.extend_from_slice(b"{\"id\":");
    push_num(buf, id);
    buf.extend_from_slice(b",\"error\":{\"code\":");
    push_num(buf, err.code);
    buf.extend_from_slice(b",\"message\":");
    push_json_str(buf, err.message);
    if err.temporary {
        buf.extend_from_slice(b",\"temporary\":true");
    }
    buf.extend_from_slice(b"}}");
}

/// Appends `{"id":N,"<method>":{}}`, the reply with an empty result.
pub fn encode_empty(buf: &mut Vec<u8>, id: u32, method: &str) {
    ReplyWriter::start(buf, id, method).finish();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn one(frame: &str) -> (u32, Request) {
        let mut v = decode_commands(frame.as_bytes()).unwrap();
        assert_eq!(v.len(), 1, "{frame}");
        v.remove(0)
    }

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(b)))
    }

    #[test]
    fn decodes_connect_as_centrifuge_js_sends_it() {
        let (id, r) = one(r#"{"connect":{"token":"abc","name":"js"},"id":1}"#);
        assert_eq!(id, 1);
        match r {
            Request::Connect(c) => {
                assert_eq!(c.token, "abc");
                assert_eq!(c.name, "js");
            }
            other => panic!("{other:?}"),
        }
        // centrifuge-python adds name/version and may send data/subs.
        let (_, r) = one(
            r#"{"id":1,"connect":{"token":"t","name":"python","version":"0.7","data":{"a":1},"subs":{}}}"#,
        );
        assert!(matches!(r, Request::Connect(c) if c.version == "0.7"));
    }

    #[test]
    fn decodes_batched_connect_and_optimistic_subscribe() {
        let frame = "{\"connect\":{\"token\":\"t\"},\"id\":1}\n{\"subscribe\":{\"channel\":\"room:x\",\"token\":\"s\"},\"id\":2}";
        let cmds = decode_commands(frame.as_bytes()).unwrap();
        assert_eq!(cmds.len(), 2);
        assert!(matches!(cmds[0].1, Request::Connect(_)));
        assert!(
            matches!(&cmds[1].1, Request::Subscribe(s) if s.channel == "room:x" && s.token == "s")
        );
        assert_eq!(cmds[1].0, 2);
    }

    #[test]
    fn decodes_subscribe_with_recovery() {
        let (_, r) = one(
            r#"{"subscribe":{"channel":"room:a","token":"tok","recover":true,"offset":42,"epoch":"e1","join_leave":true,"positioned":true,"recoverable":true},"id":7}"#,
        );
        let Request::Subscribe(s) = r else { panic!() };
        assert!(s.recover && s.join_leave && s.positioned && s.recoverable);
        assert_eq!((s.offset, s.epoch.as_str()), (42, "e1"));
        // protobuf-JSON style string offsets are accepted too.
        let (_, r) = one(
            r#"{"subscribe":{"channel":"c","recover":true,"offset":"18446744073709551615"},"id":8}"#,
        );
        let Request::Subscribe(s) = r else { panic!() };
        assert_eq!(s.offset, u64::MAX);
    }

    #[test]
    fn decodes_publish_keeping_raw_data() {
        let (_, r) =
            one(r#"{"publish":{"channel":"room:a","data":{"text":"hé  llo","n":1.50}},"id":3}"#);
        let Request::Publish(p) = r else { panic!() };
        assert_eq!(p.channel, "room:a");
        assert_eq!(p.data.unwrap().get(), r#"{"text":"hé  llo","n":1.50}"#);
    }

    #[test]
    fn decodes_every_other_command() {
        assert!(
            matches!(one(r#"{"unsubscribe":{"channel":"c"},"id":4}"#).1, Request::Unsubscribe(c) if c.channel == "c")
        );
        assert!(matches!(
            one(r#"{"presence":{"channel":"c"},"id":5}"#).1,
            Request::Presence(_)
        ));
        assert!(matches!(
            one(r#"{"presence_stats":{"channel":"c"},"id":6}"#).1,
            Request::PresenceStats(_)
        ));
        let Request::History(h) =
            one(r#"{"history":{"channel":"c","limit":10,"since":{"offset":5,"epoch":"e"},"reverse":true},"id":9}"#).1
        else {
            panic!()
        };
        assert_eq!(h.limit, 10);
        assert!(h.reverse);
        assert_eq!(
            h.since,
            Some(StreamPosition {
                offset: 5,
                epoch: "e".into()
            })
        );
        assert!(
            matches!(one(r#"{"refresh":{"token":"n"},"id":10}"#).1, Request::Refresh(r) if r.token == "n")
        );
        assert!(
            matches!(one(r#"{"sub_refresh":{"channel":"c","token":"n"},"id":11}"#).1, Request::SubRefresh(r) if r.channel == "c")
        );
        assert!(matches!(one(r#"{"ping":{},"id":12}"#).1, Request::Ping));
        assert!(matches!(
            one(r#"{"rpc":{"method":"m","data":{}},"id":13}"#).1,
            Request::Rpc(r) if r.method == "m" && r.data.is_some()
        ));
        assert!(matches!(one(r#"{"send":{"data":{}}}"#).1, Request::Send));
        assert!(matches!(one("{}"), (0, Request::Pong)));
    }

    #[test]
    fn typing_push_is_a_publication_without_offset() {
        let b = encode_typing_push("room:x", "u1", "al\"ice");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        let p = &v["push"]["pub"];
        assert_eq!(v["push"]["channel"], "room:x");
        assert_eq!(p["data"]["type"], "typing");
        assert_eq!(p["data"]["user"]["id"], "u1");
        assert_eq!(p["data"]["user"]["username"], "al\"ice");
        assert_eq!(p["info"]["user"], "u1");
        assert!(p.get("offset").is_none());
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            "{",
            "[]",
            "null",
            "{\"id\":-1}",
            "{\"id\":\"x\"}",
            "\"str\"",
            "{\"publish\":5,\"id\":1}",
        ] {
            assert!(decode_commands(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(matches!(
            decode_commands(&[0xff, 0xfe]),
            Err(DecodeError::Utf8)
        ));
        assert!(decode_commands(b"\n\n").unwrap().is_empty());
        let many = "{}\n".repeat(MAX_COMMANDS_PER_FRAME + 1);
        assert!(matches!(
            decode_commands(many.as_bytes()),
            Err(DecodeError::TooMany(_))
        ));
    }

    #[test]
    fn encodes_connect_reply() {
        let mut b = Vec::new();
        ReplyWriter::start(&mut b, 1, "connect")
            .str("client", "c1")
            .str("version", "0.1.0")
            .flag("expires", true)
            .num("ttl", 60)
            .num("ping", 25)
            .flag("pong", true)
            .finish();
        assert_eq!(
            parse(&b),
            json!({"id":1,"connect":{"client":"c1","version":"0.1.0","expires":true,"ttl":60,"ping":25,"pong":true}})
        );
    }

    #[test]
    fn encodes_subscribe_reply_with_publications() {
        let info = encode_client_info("u1", "", "alice");
        let p1 = encode_publication(r#"{"text":"a"}"#, &info, 5, &Uuid::nil());
        let p2 = encode_publication(r#"{"text":"b"}"#, &info, 9, &Uuid::nil());
        let mut b = Vec::new();
        ReplyWriter::start(&mut b, 2, "subscribe")
            .flag("expires", true)
            .num("ttl", 900)
            .flag("recoverable", true)
            .str("epoch", "abcd")
            .num("offset", 9)
            .flag("positioned", true)
            .list("publications", [&p1, &p2])
            .flag("recovered", true)
            .flag("was_recovering", true)
            .finish();
        let v = parse(&b);
        assert_eq!(v["id"], 2);
        let s = &v["subscribe"];
        assert_eq!(s["recoverable"], true);
        assert_eq!(s["positioned"], true);
        assert_eq!(s["epoch"], "abcd");
        assert_eq!(s["offset"], 9);
        assert_eq!(s["recovered"], true);
        assert_eq!(s["was_recovering"], true);
        assert_eq!(
            s["publications"][0],
            json!({"data":{"text":"a"},"info":{"user":"u1","conn_info":{"username":"alice"}},"offset":5,
                "tags":{"message_id":"00000000-0000-0000-0000-000000000000"}})
        );
        assert_eq!(s["publications"][1]["offset"], 9);
    }

    #[test]
    fn encodes_false_flags_by_omission() {
        let mut b = Vec::new();
        ReplyWriter::start(&mut b, 3, "subscribe")
            .flag("recovered", false)
            .str("epoch", "e")
            .finish();
        assert_eq!(parse(&b), json!({"id":3,"subscribe":{"epoch":"e"}}));
    }

    #[test]
    fn encodes_other_replies() {
        let mut b = Vec::new();
        encode_empty(&mut b, 4, "publish");
        assert_eq!(parse(&b), json!({"id":4,"publish":{}}));
        b.clear();
        encode_empty(&mut b, 5, "unsubscribe");
        assert_eq!(parse(&b), json!({"id":5,"unsubscribe":{}}));
        b.clear();
        encode_error(&mut b, 6, ProtoError::PERMISSION_DENIED);
        assert_eq!(
            parse(&b),
            json!({"id":6,"error":{"code":103,"message":"permission denied"}})
        );
        b.clear();
        encode_error(&mut b, 7, ProtoError::INTERNAL);
        assert_eq!(
            parse(&b),
            json!({"id":7,"error":{"code":100,"message":"internal server error","temporary":true}})
        );
        b.clear();
        let info = encode_client_info("u", "c", "bob");
        ReplyWriter::start(&mut b, 8, "presence")
            .map("presence", [("c", &info)])
            .finish();
        assert_eq!(
            parse(&b),
            json!({"id":8,"presence":{"presence":{"c":{"user":"u","client":"c","conn_info":{"username":"bob"}}}}})
        );
        b.clear();
        ReplyWriter::start(&mut b, 9, "presence_stats")
            .num("num_clients", 3)
            .num("num_users", 2)
            .finish();
        assert_eq!(
            parse(&b),
            json!({"id":9,"presence_stats":{"num_clients":3,"num_users":2}})
        );
        b.clear();
        ReplyWriter::start(&mut b, 10, "history")
            .list("publications", std::iter::empty::<Bytes>())
            .str("epoch", "e")
            .num("offset", 0)
            .finish();
        assert_eq!(
            parse(&b),
            json!({"id":10,"history":{"publications":[],"epoch":"e","offset":0}})
        );
        b.clear();
        ReplyWriter::start(&mut b, 11, "sub_refresh")
            .flag("expires", true)
            .num("ttl", 5)
            .finish();
        assert_eq!(
            parse(&b),
            json!({"id":11,"sub_refresh":{"expires":true,"ttl":5}})
        );
        b.clear();
        ReplyWriter::start(&mut b, 12, "refresh")
            .str("client", "c")
            .str("version", "v")
            .flag("expires", true)
            .num("ttl", 7)
            .finish();
        assert_eq!(
            parse(&b),
            json!({"id":12,"refresh":{"client":"c","version":"v","expires":true,"ttl":7}})
        );
    }

    #[test]
    fn encodes_pushes() {
        let info = encode_client_info("u1", "c1", "al\"ice");
        let id = Uuid::parse_str("0190a5c4-7b1e-7cc2-9f00-1a2b3c4d5e6f").unwrap();
        let publication = encode_publication(
            r#"{"text":"x"}"#,
            &encode_client_info("u1", "", "a"),
            17,
            &id,
        );
        assert_eq!(
            parse(&encode_pub_push("room:1", &publication)),
            json!({"push":{"channel":"room:1","pub":{"data":{"text":"x"},"info":{"user":"u1","conn_info":{"username":"a"}},"offset":17,"tags":{"message_id":"0190a5c4-7b1e-7cc2-9f00-1a2b3c4d5e6f"}}}})
        );
        assert_eq!(
            parse(&encode_join_push("room:1", &info)),
            json!({"push":{"channel":"room:1","join":{"info":{"user":"u1","client":"c1","conn_info":{"username":"al\"ice"}}}}})
        );
        assert_eq!(
            parse(&encode_leave_push("room:1", &info))["push"]["leave"]["info"]["client"],
            "c1"
        );
        assert_eq!(
            parse(&encode_unsubscribe_push("room:1", 2000, "member left")),
            json!({"push":{"channel":"room:1","unsubscribe":{"code":2000,"reason":"member left"}}})
        );
        assert_eq!(
            parse(&encode_disconnect_push(Disconnect::SHUTDOWN)),
            json!({"push":{"disconnect":{"code":3001,"reason":"shutdown","reconnect":true}}})
        );
        assert_eq!(
            parse(&encode_disconnect_push(Disconnect::INVALID_TOKEN)),
            json!({"push":{"disconnect":{"code":3500,"reason":"invalid token"}}})
        );
        assert_eq!(parse(PING), json!({}));
    }

    #[test]
    fn disconnect_codes_carry_reconnect_advice() {
        assert!(Disconnect::SHUTDOWN.reconnect());
        assert!(Disconnect::SLOW.reconnect());
        assert!(!Disconnect::INVALID_TOKEN.reconnect());
        assert!(!Disconnect::BAD_REQUEST.reconnect());
    }
}
#[cfg(test)]
#[path = "protocol_prop_tests.rs"]
mod prop_tests;
