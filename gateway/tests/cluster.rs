//! Several gateways on one Kafka topic: presence, join and leave, typing and
//! unsubscribes cover every instance (CONTRACT §8), and a gateway that dies
//! leaves presence within a bound.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use confab_common::config::KafkaConfig;
use confab_common::jwt::JwtKeys;
use confab_common::record::RecordKind;
use confab_common::testing::test_topic;
use serde_json::{json, Value};
use uuid::Uuid;

/// Polls `presence_stats` until it says `clients`, or fails after `within`.
async fn wait_clients(c: &mut Client, channel: &str, clients: u64, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let r = c
            .call("presence_stats", json!({ "channel": channel }))
            .await;
        if r["presence_stats"]["num_clients"] == clients {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "presence never reached {clients} clients: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a push matching `want`, skipping others.
async fn push_where(c: &mut Client, within: Duration, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let p = c
            .push_within(left)
            .await
            .expect("the push did not come in time");
        if want(&p) {
            return p;
        }
    }
}

fn is_typing(p: &Value) -> bool {
    p["pub"]["data"]["type"] == "typing"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_typing_cross_gateways() {
    let kafka = test_topic(2).await;
    let g1 = start(&kafka, &[]).await;
    let g2 = start(&kafka, &[]).await;
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let mut a = member(g1.addr, room).await;
    let mut b = member(g2.addr, room).await;

    // A (gateway 1) sees B (gateway 2): in presence, and as a join push.
    wait_clients(&mut a.client, &channel, 2, Duration::from_secs(10)).await;
    wait_clients(&mut b.client, &channel, 2, Duration::from_secs(10)).await;
    let r = a
        .client
        .call("presence", json!({ "channel": channel }))
        .await;
    let users: Vec<&Value> = r["presence"]["presence"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| &v["user"])
        .collect();
    assert!(users.contains(&&json!(b.id.to_string())), "{r}");
    let join = push_where(&mut a.client, Duration::from_secs(5), |p| {
        p["join"]["info"]["user"] == b.id.to_string()
    })
    .await;
    assert_eq!(join["join"]["info"]["conn_info"]["username"], b.name);

    // B types: A gets a publication without offset; B does not get its own.
    let r = b
        .client
        .call(
            "rpc",
            json!({"method": "typing", "data": {"channel": channel}}),
        )
        .await;
    assert!(r.get("rpc").is_some(), "{r}");
    let t = push_where(&mut a.client, Duration::from_secs(5), is_typing).await;
    assert_eq!(
        t["pub"]["data"],
        json!({"type": "typing", "user": {"id": b.id, "username": b.name}})
    );
    assert!(t["pub"].get("offset").is_none(), "{t}");
    // A second signal within 2 s is not passed on.
    b.client
        .call(
            "rpc",
            json!({"method": "typing", "data": {"channel": channel}}),
        )
        .await;
    let deadline = Instant::now() + Duration::from_millis(1200);
    while let Some(p) = a
        .client
        .push_within(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        assert!(!is_typing(&p), "a second typing signal within 2 s: {p}");
    }
    assert!(
        b.client
            .push_within(Duration::from_millis(300))
            .await
            .is_none_or(|p| !is_typing(&p)),
        "the typist does not hear themselves"
    );
    // Typing needs a subscription; unknown methods get 104.
    let other = confab_common::room_channel(Uuid::new_v4());
    let r = b
        .client
        .call(
            "rpc",
            json!({"method": "typing", "data": {"channel": other}}),
        )
        .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    let r = b.client.call("rpc", json!({"method": "nope"})).await;
    assert_eq!(r["error"]["code"], 104, "{r}");

    // B leaves cleanly: A sees the leave push and presence drops to 1.
    drop(b);
    push_where(&mut a.client, Duration::from_secs(10), |p| {
        p.get("leave").is_some()
    })
    .await;
    wait_clients(&mut a.client, &channel, 1, Duration::from_secs(10)).await;

    // A gateway that stops cleanly takes its subscribers out of presence
    // at once (its heartbeat's tombstone).
    let mut c = member(g2.addr, room).await;
    wait_clients(&mut a.client, &channel, 2, Duration::from_secs(10)).await;
    g2.stop().await;
    wait_clients(&mut a.client, &channel, 1, Duration::from_secs(5)).await;
    assert!(c.client.closed_with().await.0 == 3001);
    g1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_left_unsubscribes_on_every_gateway() {
    let kafka = test_topic(2).await;
    let g1 = start(&kafka, &[]).await;
    let g2 = start(&kafka, &[]).await;
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let id = Uuid::new_v4();
    let mut on1 = member_as(g1.addr, room, id, "kicked").await;
    let mut on2 = member_as(g2.addr, room, id, "kicked").await;
    let mut other = member(g2.addr, room).await;
    produce_member_event(&kafka, room, id, "kicked", RecordKind::MemberLeft).await;
    for m in [&mut on1, &mut on2] {
        let u = push_where(&mut m.client, Duration::from_secs(10), |p| {
            p.get("unsubscribe").is_some()
        })
        .await;
        assert_eq!(u["channel"], channel);
        assert_eq!(u["unsubscribe"]["code"], 2000);
        let r = m.client.publish(&channel, json!({"text": "still?"})).await;
        assert_eq!(r["error"]["code"], 103, "{r}");
    }
    wait_clients(&mut other.client, &channel, 1, Duration::from_secs(10)).await;
    g1.stop().await;
    g2.stop().await;
}

/// A JWT secret the binaries accept (they refuse the in-process tests' one).
const PROCESS_SECRET: &str = "cluster-test-secret-0123456789abcdef";

fn process_keys() -> JwtKeys {
    JwtKeys::new(
        PROCESS_SECRET.as_bytes(),
        Duration::from_secs(3600),
        Duration::from_secs(900),
    )
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the gateway binary on a free port; returns once it is healthy.
async fn spawn_gateway(kafka: &KafkaConfig) -> (Process, SocketAddr) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_confab-gateway"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KAFKA_BROKERS", &kafka.brokers)
        .env("CONFAB_KAFKA_TOPIC", &kafka.topic)
        .env("CONFAB_JWT_SECRET", PROCESS_SECRET)
        .env("CONFAB_GATEWAY_ADDR", addr.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the gateway binary");
    let process = Process(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((200, _)) = http_get(addr, "/healthz").await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway process never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (process, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_leaves_presence_within_the_bound() {
    let kafka = test_topic(2).await;
    let g1 = start(&kafka, &[("CONFAB_JWT_SECRET", PROCESS_SECRET)]).await;
    let (mut victim, addr) = spawn_gateway(&kafka).await;
    let keys = process_keys();
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let mut a = member_with(&keys, g1.addr, room, Uuid::new_v4(), "alive").await;
    let _b = member_with(&keys, addr, room, Uuid::new_v4(), "doomed").await;
    wait_clients(&mut a.client, &channel, 2, Duration::from_secs(10)).await;

    victim.0.kill().expect("SIGKILL the gateway");
    let killed = Instant::now();
    // Heartbeats every 2 s, gone after 8 s of silence, checked every second.
    wait_clients(&mut a.client, &channel, 1, Duration::from_secs(12)).await;
    let took = killed.elapsed();
    eprintln!("a killed gateway left presence after {took:?}");
    assert!(
        took >= Duration::from_secs(5),
        "too soon to be the expiry: {took:?}"
    );
    push_where(&mut a.client, Duration::from_secs(2), |p| {
        p.get("leave").is_some()
    })
    .await;
    g1.stop().await;
}
