//! Test helpers: a gateway on a real socket and a raw WebSocket client.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use confab_common::config::{Env, KafkaConfig};
use confab_common::jwt::JwtKeys;
use confab_common::record::{RecordKind, RoomRecord, UserRef};
use confab_common::testing::TEST_JWT_SECRET;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use confab_common::testing::ws::*;

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
        ("CONFAB_GATEWAY_USER_PUBLISH_RATE".into(), "1000".into()),
        ("CONFAB_GATEWAY_USER_PUBLISH_BURST".into(), "1000".into()),
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
    member_with(&keys(), addr, room, id, name).await
}

/// A member whose tokens `keys` signs.
pub async fn member_with(
    keys: &JwtKeys,
    addr: SocketAddr,
    room: Uuid,
    id: Uuid,
    name: &str,
) -> Member {
    let mut client = ws_connect(addr).await;
    let (token, _) = keys.issue_access(id, name);
    let r = client.connect(&token).await;
    assert!(r["connect"]["client"].is_string(), "{r}");
    let channel = confab_common::room_channel(room);
    let (sub, _) = keys.issue_subscription(id, &channel);
    // Join and leave pushes come only to subscribers that ask for them.
    let r = client
        .call(
            "subscribe",
            serde_json::json!({"channel": channel, "token": sub, "join_leave": true}),
        )
        .await;
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
