//! Shared helpers for auth-api's integration tests: a fresh database and
//! topic per test, requests through `app().oneshot()`, and a topic reader.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use confab_auth_api::{app, AppState, Config};
use confab_common::config::{Env, KafkaConfig};
use confab_common::record::RoomRecord;
use confab_common::testing::{test_topic, TestDb, TEST_JWT_SECRET};
use http_body_util::BodyExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

/// One test's service: its own database, topic and app.
pub struct Harness {
    pub db: TestDb,
    pub kafka: KafkaConfig,
    pub state: AppState,
    pub app: Router,
}

/// The env a test config is built from.
pub fn env_pairs(db: &TestDb, kafka: &KafkaConfig) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", db.url.as_str()),
        ("KAFKA_BROKERS", kafka.brokers.as_str()),
        ("CONFAB_KAFKA_TOPIC", kafka.topic.as_str()),
        ("CONFAB_JWT_SECRET", TEST_JWT_SECRET),
        ("CONFAB_WEB_DIR", "/nonexistent/confab-web"),
        ("CONFAB_API_DB_POOL_SIZE", "8"),
        // Tests register and create from one (unknown) address; tests of
        // these limits set their own.
        ("CONFAB_RATE_LIMIT_REGISTER_BURST", "100000"),
        ("CONFAB_RATE_LIMIT_ROOM_CREATE_BURST", "100000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

pub fn config_with(db: &TestDb, kafka: &KafkaConfig, extra: &[(&str, &str)]) -> Config {
    let mut pairs = env_pairs(db, kafka);
    for (k, v) in extra {
        pairs.retain(|(key, _)| key != k);
        pairs.push(((*k).to_owned(), (*v).to_owned()));
    }
    Config::from_env(&Env::from_pairs(pairs)).expect("test config is valid")
}

impl Harness {
    pub async fn new() -> Self {
        Self::with(&[]).await
    }

    /// A harness whose config has `extra` env vars on top of the defaults.
    pub async fn with(extra: &[(&str, &str)]) -> Self {
        let db = TestDb::create().await;
        let kafka = test_topic(1).await;
        let config = config_with(&db, &kafka, extra);
        let state = AppState::new(&config).expect("state");
        let app = app(state.clone());
        Self {
            db,
            kafka,
            state,
            app,
        }
    }

    /// Another app on the same database, with `extra` env vars.
    pub fn sibling(&self, extra: &[(&str, &str)]) -> Router {
        let config = config_with(&self.db, &self.kafka, extra);
        app(AppState::new(&config).expect("state"))
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        call(&self.app, method, path, token, body).await
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// Registers `name` with a fixed password and returns (user id, token).
    pub async fn user(&self, name: &str) -> (Uuid, String) {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/auth/register",
                None,
                Some(json!({"username": name, "password": "password123"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = body["user"]["id"].as_str().unwrap().parse().unwrap();
        (id, body["token"].as_str().unwrap().to_owned())
    }

    /// Creates a room and returns its id.
    pub async fn room(&self, token: &str, body: Value) -> Uuid {
        let (status, room) = self.post("/api/rooms", token, body).await;
        assert_eq!(status, StatusCode::CREATED, "{room}");
        room["id"].as_str().unwrap().parse().unwrap()
    }

    /// A direct connection to the test database.
    pub async fn sql(&self) -> tokio_postgres::Client {
        confab_common::db::connect(&self.db.url).await.unwrap()
    }
}

/// Sends one request and returns the status and JSON body (`Null` when the
/// body is empty). Every error must have the contract's JSON shape.
pub async fn call(
    app: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body.map(|b| b.to_string().into_bytes());
    let (status, bytes) = raw(app, method, path, token, body, &[]).await;
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{path}: body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    if status.is_client_error() || status.is_server_error() {
        assert_error_shape(&value);
    }
    (status, value)
}

pub fn assert_error_shape(value: &Value) {
    let error = value["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object in {value}"));
    let code = error["code"].as_str().expect("error.code is a string");
    assert!(
        !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "code {code:?} is not snake_case"
    );
    assert!(error["message"].is_string(), "error.message is a string");
    assert_eq!(value.as_object().unwrap().len(), 1, "{value}");
}

/// Sends a request with a raw body and extra headers; returns status and bytes.
pub async fn raw(
    app: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> (StatusCode, Vec<u8>) {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if body.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, bytes.to_vec())
}

/// Reads every record of `kafka.topic` (partition 0 to `partitions`-1) until
/// `want` records for `room` arrived or `timeout` passed.
pub fn read_room_records(
    kafka: &KafkaConfig,
    partitions: i32,
    room: Uuid,
    want: usize,
    timeout: Duration,
) -> Vec<(String, RoomRecord)> {
    let consumer: BaseConsumer = confab_common::kafka::consumer_config(kafka, None)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&kafka.topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = std::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < want && std::time::Instant::now() < deadline {
        if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(200)) {
            if msg.key() == Some(confab_common::record::GENESIS_KEY) {
                continue;
            }
            let record = RoomRecord::decode(msg.payload().unwrap()).unwrap();
            if record.room_id == room {
                let key = String::from_utf8(msg.key().unwrap().to_vec()).unwrap();
                out.push((key, record));
            }
        }
    }
    out
}

/// Inserts a history row as the persister would.
pub async fn insert_message(
    client: &tokio_postgres::Client,
    room: Uuid,
    offset: i64,
    user: Uuid,
    data: &str,
) {
    client
        .execute(
            "INSERT INTO messages (room_id, stream_offset, id, kind, user_id, username, data, created_at, kafka_partition)
             VALUES ($1, $2, $3, 'message', $4, 'someone', $5::text::json, now(), 0)",
            &[&room, &offset, &Uuid::now_v7(), &user, &data],
        )
        .await
        .unwrap();
}
