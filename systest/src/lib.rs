//! Helpers for whole-system tests: the three services, started in this
//! process against a given Kafka cluster and database exactly as their
//! binaries start them ([`Stack`]), a REST client for the calls a user makes
//! ([`Api`]), and a WebSocket member of a room ([`Member`]).
//!
//! The faults under test happen to real processes: the Kafka nodes of a
//! [`confab_common::testing::KafkaCluster`] are killed and restarted, the
//! topic is deleted and created again. Services are stopped and started the
//! way `ops/dev down` and `up` do it (shutdown, then a fresh start).

use std::net::SocketAddr;
use std::time::Duration;

use confab_common::config::{Env, KafkaConfig};
use confab_common::testing::ws::{ws_connect, Client};
use confab_common::testing::TEST_JWT_SECRET;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The three services, running.
pub struct Stack {
    pub api: SocketAddr,
    pub gateway: SocketAddr,
    pub persister: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

fn env(kafka: &KafkaConfig, db_url: &str) -> Env {
    Env::from_pairs([
        ("KAFKA_BROKERS", kafka.brokers.as_str()),
        ("CONFAB_KAFKA_TOPIC", kafka.topic.as_str()),
        ("DATABASE_URL", db_url),
        ("CONFAB_JWT_SECRET", TEST_JWT_SECRET),
        // Tests publish faster than people do.
        ("CONFAB_GATEWAY_PUBLISH_RATE", "1000"),
        ("CONFAB_GATEWAY_PUBLISH_BURST", "1000"),
        ("CONFAB_GATEWAY_USER_PUBLISH_RATE", "1000"),
        ("CONFAB_GATEWAY_USER_PUBLISH_BURST", "1000"),
        ("CONFAB_PERSISTER_BATCH_MS", "10"),
        ("CONFAB_PERSISTER_SESSION_TIMEOUT_MS", "6000"),
    ])
}

async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// Waits until `GET http://addr/healthz` answers 200.
pub async fn wait_healthy(addr: SocketAddr, within: Duration) {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(r) = http.get(format!("http://{addr}/healthz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} not healthy after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Stack {
    /// Starts auth-api, gateway and persister on `kafka.topic` and `db_url`
    /// and waits until each answers `/healthz`.
    pub async fn start(kafka: &KafkaConfig, db_url: &str) -> Self {
        confab_common::telemetry::init_tracing(&confab_common::config::LogConfig { json: false });
        let env = env(kafka, db_url);
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();

        let (l, api) = listener().await;
        let config = confab_auth_api::Config::from_env(&env).expect("auth-api config");
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            confab_auth_api::run(config, l, stop)
                .await
                .expect("auth-api");
        }));

        let (l, persister) = listener().await;
        let config = confab_persister::Config::from_env(&env).expect("persister config");
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            confab_persister::run(config, l, stop)
                .await
                .expect("persister");
        }));

        let (l, gateway) = listener().await;
        let config = confab_gateway::Config::from_env(&env).expect("gateway config");
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            confab_gateway::run(config, l, stop).await.expect("gateway");
        }));

        for addr in [api, persister, gateway] {
            wait_healthy(addr, Duration::from_secs(60)).await;
        }
        Self {
            api,
            gateway,
            persister,
            shutdown,
            tasks,
        }
    }

    /// Starts one more gateway on the same topic (stopped with the others)
    /// and waits until it answers `/healthz`.
    pub async fn add_gateway(&mut self, kafka: &KafkaConfig, db_url: &str) -> SocketAddr {
        let (l, addr) = listener().await;
        let config = confab_gateway::Config::from_env(&env(kafka, db_url)).expect("gateway config");
        let stop = self.shutdown.clone();
        self.tasks.push(tokio::spawn(async move {
            confab_gateway::run(config, l, stop).await.expect("gateway");
        }));
        wait_healthy(addr, Duration::from_secs(60)).await;
        addr
    }

    /// Stops all three, as `ops/dev down` does (each drains first).
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a service stops within its grace period")
                .expect("a service stops cleanly");
        }
    }

    pub fn api(&self) -> Api {
        Api::new(self.api)
    }
}

/// The REST calls of one user.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
    pub user: Uuid,
    pub username: String,
    token: String,
}

impl Api {
    fn new(addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
            user: Uuid::nil(),
            username: String::new(),
            token: String::new(),
        }
    }

    /// The same user, talking to another (or a restarted) auth-api.
    pub fn at(&self, addr: SocketAddr) -> Self {
        Self {
            base: format!("http://{addr}"),
            ..self.clone()
        }
    }

    /// Registers a fresh user and keeps its token.
    pub async fn register(mut self) -> Self {
        let name = format!("u{}", &Uuid::new_v4().simple().to_string()[..10]);
        let body = self
            .call(
                reqwest::Method::POST,
                "/api/auth/register",
                Some(json!({"username": name, "password": "correct horse battery"})),
            )
            .await;
        self.token = body["token"].as_str().expect("a token").to_owned();
        self.user = body["user"]["id"].as_str().unwrap().parse().unwrap();
        self.username = name;
        self
    }

    /// The access token, for the WebSocket connect.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Sends one request as this user; panics unless it succeeds. Returns the
    /// JSON body (`Null` when empty).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    /// POSTs `body` to `path` (which must succeed); returns the answer.
    pub async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Creates a public room; returns its id.
    pub async fn create_room(&self) -> Uuid {
        let room = self
            .call(
                reqwest::Method::POST,
                "/api/rooms",
                Some(json!({"name": "systest", "visibility": "public"})),
            )
            .await;
        room["id"].as_str().unwrap().parse().unwrap()
    }

    pub async fn join(&self, room: Uuid) {
        self.call(
            reqwest::Method::POST,
            &format!("/api/rooms/{room}/join"),
            Some(json!({})),
        )
        .await;
    }

    pub async fn subscription_token(&self, room: Uuid) -> String {
        let r = self
            .call(
                reqwest::Method::POST,
                &format!("/api/rooms/{room}/subscription-token"),
                None,
            )
            .await;
        r["token"].as_str().unwrap().to_owned()
    }

    /// The whole history of `room`, oldest first, paging back from the
    /// newest page as a client does.
    pub async fn history(&self, room: Uuid) -> Vec<Value> {
        let mut all = Vec::new();
        let mut before: Option<i64> = None;
        loop {
            let path = match before {
                None => format!("/api/rooms/{room}/messages?limit=200"),
                Some(b) => format!("/api/rooms/{room}/messages?limit=200&before={b}"),
            };
            let page = self.call(reqwest::Method::GET, &path, None).await;
            all.extend(page["messages"].as_array().unwrap().iter().cloned());
            match page["next_before"].as_i64() {
                Some(b) => before = Some(b),
                None => break,
            }
        }
        all.reverse();
        all
    }

    /// The chat messages of `room` (no membership events), oldest first.
    pub async fn messages(&self, room: Uuid) -> Vec<Value> {
        self.history(room)
            .await
            .into_iter()
            .filter(|m| m["kind"] == "message")
            .collect()
    }

    /// Waits until `room` holds at least `n` chat messages; returns them.
    pub async fn wait_messages(&self, room: Uuid, n: usize, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.messages(room).await;
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {n} messages in history after {within:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A user's WebSocket connection, subscribed to one room.
pub struct Member {
    pub client: Client,
    pub channel: String,
    /// The subscribe reply.
    pub subscribed: Value,
}

impl Member {
    /// Connects to `gateway` as `api`'s user and subscribes to `room`,
    /// recovering from `(offset, epoch)` when given.
    pub async fn join(
        gateway: SocketAddr,
        api: &Api,
        room: Uuid,
        recover: Option<(u64, &str)>,
    ) -> Self {
        let mut client = ws_connect(gateway).await;
        let r = client.connect(api.token()).await;
        assert!(r["connect"]["client"].is_string(), "{r}");
        let channel = confab_common::room_channel(room);
        let token = api.subscription_token(room).await;
        let mut params = json!({"channel": channel, "token": token});
        if let Some((offset, epoch)) = recover {
            params["recover"] = true.into();
            params["offset"] = offset.into();
            params["epoch"] = epoch.into();
        }
        let subscribed = client.call("subscribe", params).await;
        assert!(subscribed.get("subscribe").is_some(), "{subscribed}");
        Self {
            client,
            channel,
            subscribed,
        }
    }

    /// Publishes `text`; true once the broker acknowledged it.
    pub async fn publish(&mut self, text: &str) -> bool {
        let r = self
            .client
            .publish(&self.channel, json!({ "text": text }))
            .await;
        r.get("publish").is_some()
    }

    /// Publishes `text`, retrying until it is acknowledged (the broker may
    /// be failing over), at most `within`.
    pub async fn publish_until_acked(&mut self, text: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while !self.publish(text).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{text:?} not acknowledged within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The texts of `messages`, in order.
pub fn texts(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["data"]["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The offsets of `messages`, in order.
pub fn offsets(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["offset"].as_u64().expect("an offset"))
        .collect()
}

/// Asserts that `offsets` strictly increase.
pub fn assert_rising(offsets: &[u64]) {
    for w in offsets.windows(2) {
        assert!(
            w[0] < w[1],
            "offsets go down or repeat: {} then {}",
            w[0],
            w[1]
        );
    }
}
