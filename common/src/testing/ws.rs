//! A raw client of the WebSocket protocol (Centrifugo v2, JSON) for
//! integration tests: it sends commands, waits for their replies and keeps
//! pushes in order, answers server pings, and records how the server closed.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How long a client waits for a reply or a push.
pub const WAIT: Duration = Duration::from_secs(10);

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

/// A raw protocol client, over an upgraded HTTP connection by default or
/// over any stream ([`Client::over`]).
pub struct Client<S = TokioIo<Upgraded>> {
    ws: FragmentCollector<S>,
    next_id: u32,
    /// Replies and pushes read but not yet asked for.
    pending: VecDeque<Value>,
    pub closed: Option<(u16, String)>,
    /// Every non-ping line received, as text.
    pub raw: Vec<String>,
    /// The size of every text frame received, in bytes.
    pub frame_sizes: Vec<usize>,
    /// Answer server pings automatically.
    pub auto_pong: bool,
}

/// Connects to the gateway at `addr`.
pub async fn ws_connect(addr: SocketAddr) -> Client {
    ws_connect_with(addr, &[])
        .await
        .expect("websocket handshake")
}

/// Connects with extra request headers (an `Origin`, say).
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
    Ok(Client::over(ws))
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// A client on a WebSocket that is already open (a test's in-memory
    /// stream, say).
    pub fn over(ws: fastwebsockets::WebSocket<S>) -> Self {
        Self {
            ws: FragmentCollector::new(ws),
            next_id: 0,
            pending: VecDeque::new(),
            closed: None,
            raw: Vec::new(),
            frame_sizes: Vec::new(),
            auto_pong: true,
        }
    }

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
                self.frame_sizes.push(frame.payload.len());
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

    /// The reply to command `id`, or `None` if it does not come within
    /// `wait` (or the connection closes first).
    pub async fn reply_within(&mut self, id: u32, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(pos) = self.pending.iter().position(|v| v["id"] == id) {
                return self.pending.remove(pos);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || (!self.read_more(left).await && self.closed.is_some()) {
                return None;
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
