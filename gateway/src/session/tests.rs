//! The session with no broker: a loopback publisher delivers each record to
//! the hub at once, as the consumer would after the broker's ack.

use std::sync::atomic::{AtomicBool, AtomicU64};

use confab_common::config::Env;
use confab_common::position::{Base, Position};
use confab_common::producer::ProduceError;
use confab_common::testing::ws::Client;
use confab_common::testing::TEST_JWT_SECRET;
use fastwebsockets::{Role, WebSocket};
use serde_json::{json, Value};
use tokio::io::DuplexStream;

use super::*;
use crate::hub::{Hub, HubConfig};
use crate::kafka::{Ack, Publisher};

const BASE: Base = Base(1_000_000);

/// Delivers every record to the hub right away; can be told to fail.
struct Loopback {
    hub: Arc<Hub>,
    next: AtomicU64,
    fail: AtomicBool,
}

impl Publisher for Loopback {
    fn publish(&self, record: RoomRecord) -> Result<Ack, ProduceError> {
        if self.fail.load(Ordering::Relaxed) {
            return Ok(Box::pin(async {
                Err(ProduceError::Unavailable("test broker down".into()))
            }));
        }
        let position = Position(self.next.fetch_add(1, Ordering::Relaxed));
        self.hub.deliver(0, position, &record);
        Ok(Box::pin(async { Ok(()) }))
    }

    fn problem(&self) -> Option<String> {
        None
    }

    fn flush(&self, _: Duration) {}
}

use std::sync::atomic::Ordering;

struct World {
    gw: Gateway,
    publisher: Arc<Loopback>,
}

fn world(extra: &[(&str, &str)]) -> World {
    let mut pairs = vec![
        ("KAFKA_BROKERS", "unused:9092"),
        ("CONFAB_JWT_SECRET", TEST_JWT_SECRET),
    ];
    pairs.extend_from_slice(extra);
    let config = crate::config::Config::from_env(&Env::from_pairs(pairs)).unwrap();
    let hub = Arc::new(Hub::new(HubConfig::with_size(1, 100)));
    hub.init_partition(0, BASE, BASE.floor(), BASE.floor());
    let publisher = Arc::new(Loopback {
        hub: Arc::clone(&hub),
        next: AtomicU64::new(BASE.0 + 1),
        fail: AtomicBool::new(false),
    });
    let gw = Gateway::new(
        config,
        hub,
        Arc::clone(&publisher) as Arc<dyn Publisher>,
        CancellationToken::new(),
        Arc::new(AtomicBool::new(true)),
        confab_common::telemetry::metrics_handle(),
    );
    World { gw, publisher }
}

impl connection::Split for DuplexStream {
    type Read = tokio::io::ReadHalf<DuplexStream>;
    type Write = tokio::io::WriteHalf<DuplexStream>;

    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// A client talking to a session over an in-memory stream.
async fn client(gw: &Gateway) -> Client<DuplexStream> {
    let (server, client) = tokio::io::duplex(1 << 20);
    let slot = SocketSlot::take(gw, std::net::Ipv4Addr::LOCALHOST.into()).expect("a socket slot");
    tokio::spawn(run(gw.clone(), server, slot));
    Client::over(WebSocket::after_handshake(client, Role::Client))
}

/// A connected client of a fresh user, subscribed to `room`.
async fn member(gw: &Gateway, room: Uuid) -> (Client<DuplexStream>, Uuid) {
    let user = Uuid::new_v4();
    let keys = &gw.config.jwt;
    let mut c = client(gw).await;
    let (token, _) = keys.issue_access(user, "ann");
    assert!(c.connect(&token).await["connect"]["client"].is_string());
    let channel = confab_common::room_channel(room);
    let (sub, _) = keys.issue_subscription(user, &channel);
    let r = c.subscribe(&channel, &sub).await;
    assert_eq!(r["subscribe"]["epoch"], BASE.epoch().as_str(), "{r}");
    (c, user)
}

#[tokio::test]
async fn a_publish_is_answered_after_the_ack_and_pushed_to_everyone() {
    let w = world(&[]);
    let room = Uuid::new_v4();
    let (mut a, _) = member(&w.gw, room).await;
    let (mut b, _) = member(&w.gw, room).await;
    let channel = confab_common::room_channel(room);
    let r = a.publish(&channel, json!({"text": "hi"})).await;
    assert_eq!(r["publish"], json!({}), "{r}");
    for c in [&mut a, &mut b] {
        let p = c.publication().await;
        assert_eq!(p["pub"]["data"]["text"], "hi");
        assert_eq!(p["pub"]["offset"], BASE.0 + 1);
        assert!(p["pub"]["tags"]["message_id"].is_string());
    }
}

#[tokio::test]
async fn an_unacknowledged_publish_is_an_error_and_the_connection_stays() {
    let w = world(&[]);
    let room = Uuid::new_v4();
    let (mut a, _) = member(&w.gw, room).await;
    let channel = confab_common::room_channel(room);
    w.publisher.fail.store(true, Ordering::Relaxed);
    let r = a.publish(&channel, json!({"text": "lost?"})).await;
    assert_eq!(r["error"]["code"], 100, "{r}");
    w.publisher.fail.store(false, Ordering::Relaxed);
    let r = a.publish(&channel, json!({"text": "again"})).await;
    assert_eq!(r["publish"], json!({}), "{r}");
}

#[tokio::test]
async fn bad_data_is_refused_before_the_publisher() {
    let w = world(&[]);
    let room = Uuid::new_v4();
    let (mut a, _) = member(&w.gw, room).await;
    let channel = confab_common::room_channel(room);
    let r = a.publish(&channel, json!({"no": "text"})).await;
    assert_eq!(r["error"]["code"], 107);
    let r = a
        .publish(
            &confab_common::room_channel(Uuid::new_v4()),
            json!({"text": "x"}),
        )
        .await;
    assert_eq!(r["error"]["code"], 103, "not subscribed");
    assert_eq!(
        w.publisher.next.load(Ordering::Relaxed),
        BASE.0 + 1,
        "nothing produced"
    );
}

#[tokio::test]
async fn the_publish_rate_is_per_user_not_per_connection() {
    let w = world(&[
        ("CONFAB_GATEWAY_PUBLISH_RATE", "1000"),
        ("CONFAB_GATEWAY_PUBLISH_BURST", "1000"),
        ("CONFAB_GATEWAY_USER_PUBLISH_RATE", "1"),
        ("CONFAB_GATEWAY_USER_PUBLISH_BURST", "3"),
    ]);
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let user = Uuid::new_v4();
    let keys = w.gw.config.jwt.clone();
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut c = client(&w.gw).await;
        c.connect(&keys.issue_access(user, "ann").0).await;
        c.subscribe(&channel, &keys.issue_subscription(user, &channel).0)
            .await;
        conns.push(c);
    }
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..9 {
        let r = conns[i % 3].publish(&channel, json!({"text": "x"})).await;
        if r.get("publish").is_some() {
            ok += 1;
        } else {
            assert_eq!(r["error"]["code"], 111, "{r}");
            limited += 1;
        }
    }
    assert_eq!(
        (ok, limited),
        (3, 6),
        "three sockets share one user's burst"
    );
}

#[tokio::test]
async fn a_member_who_left_publishes_nowhere_whatever_their_token() {
    let w = world(&[]);
    let room = Uuid::new_v4();
    let (mut a, user) = member(&w.gw, room).await;
    let channel = confab_common::room_channel(room);
    let left = RoomRecord::member_event(
        room,
        UserRef {
            id: user,
            username: "ann".into(),
        },
        confab_common::record::RecordKind::MemberLeft,
    );
    w.gw.hub.deliver(0, Position(BASE.0 + 50), &left);
    let push = loop {
        let p = a.push().await;
        if p.get("unsubscribe").is_some() {
            break p;
        }
    };
    assert_eq!(push["unsubscribe"]["code"], 2000, "{push}");
    // A token minted after the leave (the REST race) does not admit them.
    let (fresh, _) = w.gw.config.jwt.issue_subscription(user, &channel);
    let r = a.subscribe(&channel, &fresh).await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    // Nor does recovering from past the leave.
    let r = a
        .call(
            "subscribe",
            json!({"channel": channel, "token": fresh, "recover": true,
                   "offset": BASE.0 + 1000, "epoch": BASE.epoch()}),
        )
        .await;
    assert_eq!(r["error"]["code"], 103, "{r}");
    let r = a.publish(&channel, json!({"text": "still here?"})).await;
    assert_eq!(r["error"]["code"], 103, "{r}");
}

/// Publishes `n` publications of about 15 KB, then forgets what was read.
async fn publish_big(c: &mut Client<DuplexStream>, channel: &str, n: usize) {
    let pad = "x".repeat(15_000);
    for _ in 0..n {
        let r = c
            .publish(channel, json!({ "text": "big", "pad": pad }))
            .await;
        assert!(r.get("publish").is_some(), "{r}");
    }
    c.raw.clear();
}

#[tokio::test]
async fn replies_go_out_in_frames_of_bounded_size() {
    let w = world(&[
        ("CONFAB_GATEWAY_MAX_PUBLISH_BYTES", "60000"),
        ("CONFAB_GATEWAY_MAX_REPLY_BYTES", "8000000"),
    ]);
    let room = Uuid::new_v4();
    let (mut a, _) = member(&w.gw, room).await;
    let channel = confab_common::room_channel(room);
    publish_big(&mut a, &channel, 20).await;
    a.frame_sizes.clear();
    // Many history commands in one frame: their replies come back in
    // several frames, none over the bound unless one reply alone is.
    let cmds: Vec<String> = (1..=8)
        .map(|i| json!({"id": 100 + i, "history": {"channel": channel, "limit": -1}}).to_string())
        .collect();
    a.send_text(&cmds.join("\n")).await;
    for i in 1..=8 {
        let r = a.reply(100 + i).await;
        assert!(r["history"]["publications"].as_array().unwrap().len() > 1);
    }
    assert_eq!(
        a.raw.iter().filter(|l| l.contains("\"history\"")).count(),
        8
    );
    // Eight replies of ~300 KB each: several frames, each one reply at most
    // (a reply alone over the bound is not split).
    assert!(a.frame_sizes.len() >= 8, "{:?}", a.frame_sizes);
    assert!(
        a.frame_sizes.iter().all(|&n| n < 400_000),
        "{:?}",
        a.frame_sizes
    );
}

/// Sends `n` copies of a command in one message; returns the replies.
async fn burst(
    c: &mut Client<DuplexStream>,
    n: u32,
    first: u32,
    cmd: &str,
    params: Value,
) -> Vec<Value> {
    let cmds: Vec<String> = (0..n)
        .map(|i| json!({"id": first + i, cmd: params}).to_string())
        .collect();
    c.send_text(&cmds.join("\n")).await;
    let mut out = Vec::new();
    for i in 0..n {
        out.push(c.reply(first + i).await);
    }
    out
}

fn codes(replies: &[Value]) -> Vec<u64> {
    replies
        .iter()
        .map(|r| r["error"]["code"].as_u64().unwrap_or(0))
        .collect()
}

#[tokio::test]
async fn costly_commands_are_capped_per_message_and_per_second() {
    let w = world(&[
        ("CONFAB_GATEWAY_MAX_COSTLY_PER_MESSAGE", "4"),
        ("CONFAB_GATEWAY_COSTLY_RATE", "1000"),
    ]);
    let room = Uuid::new_v4();
    let (mut a, _) = member(&w.gw, room).await;
    let channel = confab_common::room_channel(room);
    // Six presence commands in one message: four answered, two refused
    // with 106; pings are not costly.
    let got = burst(&mut a, 6, 10, "presence", json!({ "channel": channel })).await;
    assert_eq!(codes(&got), vec![0, 0, 0, 0, 106, 106], "{got:?}");
    assert!(got[0]["presence"]["presence"].is_object());
    let got = burst(&mut a, 6, 20, "ping", json!({})).await;
    assert_eq!(codes(&got), vec![0; 6]);
    // The next message starts afresh.
    let got = burst(
        &mut a,
        1,
        30,
        "history",
        json!({ "channel": channel, "limit": 1 }),
    )
    .await;
    assert_eq!(codes(&got), vec![0]);

    // Per second: a rate of 2 (burst 2) refuses the third with 111.
    let w = world(&[("CONFAB_GATEWAY_COSTLY_RATE", "2")]);
    let (mut b, _) = member(&w.gw, room).await;
    let mut refused = 0;
    for i in 0..4 {
        let r = b
            .call(
                "presence",
                json!({ "channel": confab_common::room_channel(room) }),
            )
            .await;
        if r["error"]["code"] == 111 {
            refused += 1;
        } else {
            assert!(r.get("presence").is_some(), "{i}: {r}");
        }
    }
    // The subscribe in `member` took one token too.
    assert!(refused >= 2, "{refused}");
}

#[tokio::test]
async fn one_message_cannot_ask_for_more_than_the_reply_budget() {
    let w = world(&[
        ("CONFAB_GATEWAY_MAX_PUBLISH_BYTES", "60000"),
        ("CONFAB_GATEWAY_MAX_REPLY_BYTES", "1000000"),
    ]);
    let room = Uuid::new_v4();
    let (mut a, _) = member(&w.gw, room).await;
    let channel = confab_common::room_channel(room);
    publish_big(&mut a, &channel, 20).await;
    // Each full history is ~300 KB: after the fourth, the replies are past
    // 1 MB and the rest are refused.
    let got = burst(
        &mut a,
        8,
        100,
        "history",
        json!({ "channel": channel, "limit": -1 }),
    )
    .await;
    let c = codes(&got);
    assert_eq!(&c[..4], &[0, 0, 0, 0], "{c:?}");
    assert!(c[4..].iter().all(|&x| x == 106), "{c:?}");
    let total: usize = a.raw.iter().map(String::len).sum();
    assert!(total < 1_300_000, "{total}");
}

#[tokio::test]
async fn a_user_has_a_bounded_number_of_connections() {
    let w = world(&[("CONFAB_GATEWAY_MAX_CONNECTIONS_PER_USER", "2")]);
    let user = Uuid::new_v4();
    let (token, _) = w.gw.config.jwt.issue_access(user, "many");
    let mut first = client(&w.gw).await;
    let mut second = client(&w.gw).await;
    assert!(first.connect(&token).await["connect"].is_object());
    assert!(second.connect(&token).await["connect"].is_object());
    let mut third = client(&w.gw).await;
    third
        .send_text(&json!({"id": 1, "connect": {"token": token}}).to_string())
        .await;
    assert_eq!(third.closed_with().await.0, 3504);
    // Another user is not affected; a closed connection frees its place.
    let (other, _) = w.gw.config.jwt.issue_access(Uuid::new_v4(), "one");
    let mut c = client(&w.gw).await;
    assert!(c.connect(&other).await["connect"].is_object());
    drop(first);
    // The server sees the close and frees the place.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = client(&w.gw).await;
    assert!(again.connect(&token).await["connect"].is_object());
}

/// The session's one timer (no periodic tick) still meets each deadline:
/// a socket that never sends connect is closed as stale.
#[tokio::test]
async fn a_socket_without_connect_is_closed_as_stale() {
    let w = world(&[("CONFAB_GATEWAY_CONNECT_TIMEOUT_SECS", "1")]);
    let mut c = client(&w.gw).await;
    let started = Instant::now();
    assert_eq!(c.closed_with().await.0, 3502);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn an_access_token_past_its_exp_and_the_delay_closes_the_connection() {
    let w = world(&[("CONFAB_GATEWAY_EXPIRED_CLOSE_DELAY_SECS", "1")]);
    let mut c = client(&w.gw).await;
    let (token, exp) =
        w.gw.config
            .jwt
            .issue_access_with_ttl(Uuid::new_v4(), "eve", Duration::from_secs(1));
    assert!(c.connect(&token).await["connect"]["client"].is_string());
    assert_eq!(c.closed_with().await.0, 3005);
    // Closed once the Unix second is past exp + delay, not before.
    assert!(now_secs() > exp + 1, "closed too early");
}

#[tokio::test]
async fn a_subscription_token_past_its_exp_and_the_delay_unsubscribes() {
    let w = world(&[("CONFAB_GATEWAY_EXPIRED_CLOSE_DELAY_SECS", "1")]);
    let user = Uuid::new_v4();
    let keys = &w.gw.config.jwt;
    let mut c = client(&w.gw).await;
    let (token, _) = keys.issue_access(user, "sue");
    assert!(c.connect(&token).await["connect"]["client"].is_string());
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let (sub, exp) = keys.issue_subscription_with_ttl(user, &channel, Duration::from_secs(1));
    assert!(c.subscribe(&channel, &sub).await["subscribe"].is_object());
    let push = c.push_within(Duration::from_secs(5)).await.expect("a push");
    assert_eq!(push["unsubscribe"]["code"], 2501, "{push}");
    assert_eq!(push["channel"], channel.as_str());
    assert!(now_secs() > exp + 1, "unsubscribed too early");
    // The connection stays.
    assert_eq!(c.call("ping", json!({})).await["ping"], json!({}));
}
