//! Test helpers: a gateway on a real socket and a raw WebSocket client.
#![allow(dead_code, unreachable_pub)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use confab_common::config::{Env, KafkaConfig};
use confab_common::jwt::JwtKeys;
use confab_common::record::{RecordKind, RoomRecord, UserRef};
use confab_common::testing::TEST_JWT_SECRET;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(10);

pub fn keys() -> JwtKeys {
    JwtKeys::new(
        TEST_JWT_SECRET.as_bytes(),
        Duration::from_secs(3600),
        Duration::from_secs(900),
    )
}

/// A running gateway.
pub struct Gw {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Gw {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

pub async fn start(kafka: &KafkaConfig, extra: &[(&str, &str)]) -> Gw {
    confab_common::telemetry::init_tracing(&confab_common::config::LogConfig { json: false });
    let mut pairs: Vec<(String, String)> = vec![
        ("KAFKA_BROKERS".into(), kafka.brokers.clone()),
        ("CONFAB_KAFKA_TOPIC".into(), kafka.topic.clone()),
        ("CONFAB_JWT_SECRET".into(), TEST_JWT_SECRET.into()),
        ("CONFAB_GATEWAY_PUBLISH_RATE".into(), "1000".into()),
        ("CONFAB_GATEWAY_PUBLISH_BURST".into(), "1000".into()),
    ];
    for (k, v) in extra {
        pairs.retain(|(key, _)| key != k);
        pairs.push(((*k).into(), (*v).into()));
    }
    let config = confab_gateway::Config::from_env(&Env::from_pairs(pairs)).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        confab_gateway::run(config, listener, token)
            .await
            .expect("gateway run");
    });
    // Wait until it answers health (consumer caught up).
    let client = reqwest_like_get(addr, "/healthz");
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok((200, _)) = client.clone_req().await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("gateway became healthy");
    Gw {
        addr,
        shutdown,
        task,
    }
}

/// A tiny HTTP GET for health and metrics.
pub struct Get {
    addr: SocketAddr,
    path: &'static str,
}

pub fn reqwest_like_get(addr: SocketAddr, path: &'static str) -> Get {
    Get { addr, path }
}

impl Get {
    pub async fn clone_req(&self) -> std::io::Result<(u16, String)> {
        http_get(self.addr, self.path).await
    }
}

pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((status, body))
}

struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// What the client read.
#[derive(Debug)]
pub enum Msg {
    Reply(Value),
    Closed(u16, String),
}

/// A raw protocol client.
pub struct Client {
    ws: FragmentCollector<TokioIo<Upgraded>>,
    next_id: u32,
    /// Replies and pushes read but not yet asked for.
    pending: VecDeque<Value>,
    pub closed: Option<(u16, String)>,
    /// Every non-ping line received, as text.
    pub raw: Vec<String>,
    /// Answer server pings automatically.
    pub auto_pong: bool,
}

pub async fn ws_connect(addr: SocketAddr) -> Client {
    ws_connect_with(addr, &[])
        .await
        .expect("websocket handshake")
}

pub async fn ws_connect_with(
    addr: SocketAddr,
    headers: &[(&str, &str)],
) -> Result<Client, fastwebsockets::WebSocketError> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut req = hyper::Request::builder()
        .method("GET")
        .uri(format!("http://{addr}/connection/websocket"))
        .header("Host", addr.to_string())
        .header(hyper::header::UPGRADE, "websocket")
        .header(hyper::header::CONNECTION, "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let (ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream).await?;
    Ok(Client {
        ws: FragmentCollector::new(ws),
        next_id: 0,
        pending: VecDeque::new(),
        closed: None,
        raw: Vec::new(),
        auto_pong: true,
    })
}

impl Client {
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .write_frame(Frame::text(Payload::Owned(text.as_bytes().to_vec())))
            .await
            .unwrap();
    }

    pub async fn send_frame(&mut self, frame: Frame<'_>) {
        self.ws.write_frame(frame).await.unwrap();
    }

    /// Reads one frame into `pending`, or records the close.
    async fn read_more(&mut self, timeout: Duration) -> bool {
        if self.closed.is_some() {
            return false;
        }
        let frame = match tokio::time::timeout(timeout, self.ws.read_frame()).await {
            Err(_) => return false,
            Ok(Err(_)) => {
                self.closed = Some((1006, String::new()));
                return false;
            }
            Ok(Ok(f)) => f,
        };
        match frame.opcode {
            OpCode::Close => {
                let p = frame.payload.to_vec();
                let code = if p.len() >= 2 {
                    u16::from_be_bytes([p[0], p[1]])
                } else {
                    1005
                };
                let reason = String::from_utf8_lossy(p.get(2..).unwrap_or_default()).to_string();
                self.closed = Some((code, reason));
                false
            }
            OpCode::Text => {
                let text = String::from_utf8(frame.payload.to_vec()).unwrap();
                for line in text.trim().split('\n') {
                    let v: Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("bad JSON from server {e}: {line}"));
                    if v.as_object().is_some_and(|o| o.is_empty()) {
                        if self.auto_pong {
                            self.send_text("{}").await;
                        }
                        continue;
                    }
                    self.raw.push(line.to_owned());
                    self.pending.push_back(v);
                }
                true
            }
            _ => true,
        }
    }

    /// Sends a command and returns its reply; pushes read meanwhile stay queued.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let cmd = json!({ "id": id, method: params });
        self.send_text(&cmd.to_string()).await;
        self.reply(id).await
    }

    pub async fn reply(&mut self, id: u32) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(pos) = self.pending.iter().position(|v| v["id"] == id) {
                return self.pending.remove(pos).unwrap();
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || (!self.read_more(left).await && self.closed.is_some()) {
                panic!("no reply to command {id}; closed = {:?}", self.closed);
            }
        }
    }

    /// The next push, skipping nothing.
    pub async fn push(&mut self) -> Value {
        self.push_within(WAIT).await.expect("a push")
    }

    pub async fn push_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(pos) = self.pending.iter().position(|v| v.get("push").is_some()) {
                return self.pending.remove(pos).map(|v| v["push"].clone());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            if !self.read_more(left).await && self.closed.is_some() {
                return None;
            }
        }
    }

    /// The next publication push (joins and leaves are skipped).
    pub async fn publication(&mut self) -> Value {
        loop {
            let p = self.push().await;
            if p.get("pub").is_some() {
                return p;
            }
        }
    }

    /// Waits for the server to close the connection.
    pub async fn closed_with(&mut self) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.closed.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "connection not closed");
            self.read_more(left).await;
        }
        self.closed.clone().unwrap()
    }

    pub async fn connect(&mut self, token: &str) -> Value {
        self.call("connect", json!({ "token": token, "name": "rust-test" }))
            .await
    }

    pub async fn subscribe(&mut self, channel: &str, token: &str) -> Value {
        self.call("subscribe", json!({ "channel": channel, "token": token }))
            .await
    }

    pub async fn publish(&mut self, channel: &str, data: Value) -> Value {
        self.call("publish", json!({ "channel": channel, "data": data }))
            .await
    }
}

/// A user with a connected, subscribed client.
pub struct Member {
    pub id: Uuid,
    pub name: String,
    pub client: Client,
}

pub async fn member(addr: SocketAddr, room: Uuid) -> Member {
    let id = Uuid::new_v4();
    let name = format!("user{}", &id.simple().to_string()[..6]);
    member_as(addr, room, id, &name).await
}

pub async fn member_as(addr: SocketAddr, room: Uuid, id: Uuid, name: &str) -> Member {
    let keys = keys();
    let mut client = ws_connect(addr).await;
    let (token, _) = keys.issue_access(id, name);
    let r = client.connect(&token).await;
    assert!(r["connect"]["client"].is_string(), "{r}");
    let channel = confab_common::room_channel(room);
    let (sub, _) = keys.issue_subscription(id, &channel);
    let r = client.subscribe(&channel, &sub).await;
    assert!(r.get("subscribe").is_some(), "{r}");
    Member {
        id,
        name: name.to_owned(),
        client,
    }
}

/// Produces a membership record as auth-api does; returns its partition and
/// position.
pub async fn produce_member_event(
    kafka: &KafkaConfig,
    room: Uuid,
    user: Uuid,
    name: &str,
    kind: RecordKind,
) -> (i32, u64) {
    let layout = confab_common::stream::LayoutWatch::new(kafka).unwrap();
    layout.refresh().await;
    let producer = confab_common::producer::RoomProducer::new(kafka, layout).unwrap();
    let rec = RoomRecord::member_event(
        room,
        UserRef {
            id: user,
            username: name.into(),
        },
        kind,
    );
    let d = producer.send(rec).await.unwrap();
    (d.partition, d.position.unwrap().0)
}
