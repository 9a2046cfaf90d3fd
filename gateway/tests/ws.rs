//! Black-box tests: real gateway processes (in-process `run`) on real sockets
//! against the real broker.

mod common;

use std::time::Duration;

use common::*;
use confab_common::record::RecordKind;
use confab_common::testing::test_topic;
use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::{json, Value};
use uuid::Uuid;

fn offsets(pushes: &[Value]) -> Vec<u64> {
    pushes
        .iter()
        .map(|p| p["pub"]["offset"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_every_subscriber_with_increasing_offsets() {
    let kafka = test_topic(4).await;
    let gw = start(&kafka, &[]).await;
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let mut a = member(gw.addr, room).await;
    let mut b = member(gw.addr, room).await;

    let mut sent = Vec::new();
    for i in 0..5 {
        let data = json!({"text": format!("hello {i} ✓"), "n": i});
        let r = a.client.publish(&channel, data.clone()).await;
        assert_eq!(r["publish"], json!({}), "{r}");
        sent.push(data);
    }
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for _ in 0..5 {
        got_a.push(a.client.publication().await);
        got_b.push(b.client.publication().await);
    }
    for (i, p) in got_b.iter().enumerate() {
        assert_eq!(p["channel"], channel);
        assert_eq!(p["pub"]["data"], sent[i]);
        assert_eq!(p["pub"]["info"]["user"], a.id.to_string());
    }
    let oa = offsets(&got_a);
    assert_eq!(oa, offsets(&got_b), "every subscriber sees the same order");
    assert!(oa.windows(2).all(|w| w[0] < w[1]), "{oa:?}");

    // Offsets are positions in the room's partition, as the producer's.
    let (partition, position) =
        produce_member_event(&kafka, room, b.id, &b.name, RecordKind::MemberJoined).await;
    assert_eq!(
        partition,
        confab_common::stream::room_partition(room, 4),
        "the room's partition"
    );
    let p = b.client.publication().await;
    assert_eq!(p["pub"]["offset"].as_u64().unwrap(), position);
    assert_eq!(p["pub"]["data"]["type"], "member_joined");
    assert!(position > *oa.last().unwrap());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_arrives_byte_for_byte() {
    let kafka = test_topic(2).await;
    let gw = start(&kafka, &[]).await;
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let mut a = member(gw.addr, room).await;
    let raw = r#"{"text":"exact  spacing","n":1.50,"z":[ 1 ]}"#;
    a.client
        .send_text(&format!(
            r#"{{"id":77,"publish":{{"channel":"{channel}","data":{raw}}}}}"#
        ))
        .await;
    assert_eq!(a.client.reply(77).await["publish"], json!({}));
    let p = a.client.publication().await;
    assert_eq!(p["pub"]["data"]["text"], "exact  spacing");
    // The raw line carries the data bytes exactly as sent.
    let line = a.client.raw.iter().find(|l| l.contains("\"pub\"")).unwrap();
    assert!(line.contains(&format!("\"data\":{raw}")), "{line}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked() {
    let kafka = test_topic(1).await;
    let gw = start(&kafka, &[]).await;
    let keys = keys();

    // A forged access token: disconnect with 3500.
    let mut c = ws_connect(gw.addr).await;
    c.send_text(r#"{"id":1,"connect":{"token":"not-a-jwt"}}"#)
        .await;
    assert_eq!(c.closed_with().await.0, 3500);

    // An expired access token: error 109.
    let mut c = ws_connect(gw.addr).await;
    let expired = expired_access_token(Uuid::new_v4());
    let r = c.connect(&expired).await;
    assert_eq!(r["error"]["code"], 109, "{r}");

    // Subscribing without or with a wrong token: 103; expired: 109.
    let user = Uuid::new_v4();
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let mut c = ws_connect(gw.addr).await;
    let (tok, _) = keys.issue_access(user, "zed");
    let r = c.connect(&tok).await;
    assert_eq!(r["connect"]["expires"], true);
    assert!(r["connect"]["ttl"].as_u64().unwrap() > 3000);
    assert_eq!(r["connect"]["pong"], true);
    assert!(r["connect"]["ping"].as_u64().unwrap() > 0);
    assert_eq!(c.subscribe(&channel, "").await["error"]["code"], 103);
    let (other_channel, _) =
        keys.issue_subscription(user, &confab_common::room_channel(Uuid::new_v4()));
    assert_eq!(
        c.subscribe(&channel, &other_channel).await["error"]["code"],
        103
    );
    let (other_user, _) = keys.issue_subscription(Uuid::new_v4(), &channel);
    assert_eq!(
        c.subscribe(&channel, &other_user).await["error"]["code"],
        103
    );
    // An access token is not a subscription token.
    assert_eq!(c.subscribe(&channel, &tok).await["error"]["code"], 103);
    assert_eq!(
        c.subscribe(&channel, &expired_subscription_token(user, &channel))
            .await["error"]["code"],
        109
    );
    assert_eq!(c.subscribe("news", "x").await["error"]["code"], 102);
    // Not subscribed: publish, presence and history are refused.
    assert_eq!(
        c.publish(&channel, json!({"text":"hi"})).await["error"]["code"],
        103
    );
    assert_eq!(
        c.call("presence", json!({"channel": channel})).await["error"]["code"],
        103
    );
    // Then a good token works, twice is 105.
    let (good, _) = keys.issue_subscription(user, &channel);
    let r = c.subscribe(&channel, &good).await;
    assert_eq!(r["subscribe"]["recoverable"], true, "{r}");
    assert_eq!(r["subscribe"]["positioned"], true);
    assert!(r["subscribe"]["epoch"].is_string());
    assert_eq!(c.subscribe(&channel, &good).await["error"]["code"], 105);

    // Refresh with a new token.
    let (fresh, _) = keys.issue_access(user, "zed");
    let r = c.call("refresh", json!({"token": fresh})).await;
    assert_eq!(r["refresh"]["expires"], true, "{r}");
    let r = c
        .call("sub_refresh", json!({"channel": channel, "token": good}))
        .await;
    assert_eq!(r["sub_refresh"]["expires"], true, "{r}");
    // Another user's access token in refresh: disconnect.
    let (someone, _) = keys.issue_access(Uuid::new_v4(), "eve");
    c.send_text(&json!({"id": 99, "refresh": {"token": someone}}).to_string())
        .await;
    assert_eq!(c.closed_with().await.0, 3500);
    gw.stop().await;
}

fn sign<T: serde::Serialize>(claims: &T) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(confab_common::testing::TEST_JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

fn expired_access_token(user: Uuid) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    sign(&confab_common::jwt::AccessClaims {
        sub: user,
        name: "old".into(),
        exp: now - 60,
        iat: now - 120,
        iss: confab_common::jwt::ISSUER.into(),
        aud: confab_common::jwt::ACCESS_AUDIENCE.into(),
    })
}

fn expired_subscription_token(user: Uuid, channel: &str) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    sign(&confab_common::jwt::SubscriptionClaims {
        sub: user,
        channel: channel.into(),
        exp: now - 60,
        iat: now - 120,
        iss: confab_common::jwt::ISSUER.into(),
        aud: confab_common::jwt::SUBSCRIPTION_AUDIENCE.into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_publications_get_errors_and_keep_the_connection() {
    let kafka = test_topic(1).await;
    let gw = start(&kafka, &[]).await;
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let mut a = member(gw.addr, room).await;
    let long = "x".repeat(4001);
    assert_eq!(
        a.client.publish(&channel, json!({"text": long})).await["error"]["code"],
        106
    );
    assert_eq!(
        a.client.publish(&channel, json!({"text": ""})).await["error"]["code"],
        107
    );
    assert_eq!(
        a.client.publish(&channel, json!({"body": "x"})).await["error"]["code"],
        107
    );
    assert_eq!(
        a.client.publish(&channel, json!("text")).await["error"]["code"],
        107
    );
    assert_eq!(
        a.client.publish(&channel, json!({"text": 5})).await["error"]["code"],
        107
    );
    let ok = "y".repeat(4000);
    assert_eq!(
        a.client.publish(&channel, json!({"text": ok})).await["publish"],
        json!({})
    );
    assert_eq!(
        a.client.publication().await["pub"]["data"]["text"]
            .as_str()
            .unwrap()
            .len(),
        4000
    );
    assert!(a.client.closed.is_none());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_rate_limit_answers_111() {
    let kafka = test_topic(1).await;
    let gw = start(
        &kafka,
        &[
            ("CONFAB_GATEWAY_PUBLISH_RATE", "0.01"),
            ("CONFAB_GATEWAY_PUBLISH_BURST", "2"),
        ],
    )
    .await;
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let mut a = member(gw.addr, room).await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        let r = a.client.publish(&channel, json!({"text": "spam"})).await;
        codes.push(r["error"]["code"].as_u64().unwrap_or(0));
    }
    assert_eq!(codes, vec![0, 0, 111, 111]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_limits_and_malformed_input() {
    let kafka = test_topic(1).await;
    let gw = start(&kafka, &[]).await;
    let keys = keys();
    let (tok, _) = keys.issue_access(Uuid::new_v4(), "x");

    // Exactly 64 KiB is allowed (and is a bad command: 3501).
    let mut c = ws_connect(gw.addr).await;
    c.connect(&tok).await;
    let mut big = vec![b' '; 64 * 1024];
    big[0] = b'{';
    big[64 * 1024 - 1] = b'}';
    c.send_frame(Frame::text(Payload::Owned(big))).await;
    c.call("ping", json!({})).await;
    assert!(c.closed.is_none(), "a 64 KiB frame is accepted");

    // Over 64 KiB: 1009.
    let mut c = ws_connect(gw.addr).await;
    c.connect(&tok).await;
    c.send_frame(Frame::text(Payload::Owned(vec![b' '; 64 * 1024 + 1])))
        .await;
    assert_eq!(c.closed_with().await.0, 1009);

    // Over 64 KiB in fragments: 1009.
    let mut c = ws_connect(gw.addr).await;
    let mut first = Frame::text(Payload::Owned(vec![b' '; 40 * 1024]));
    first.fin = false;
    c.send_frame(first).await;
    c.send_frame(Frame::new(
        true,
        OpCode::Continuation,
        None,
        Payload::Owned(vec![b' '; 40 * 1024]),
    ))
    .await;
    assert_eq!(c.closed_with().await.0, 1009);

    // Invalid UTF-8: 1007.
    let mut c = ws_connect(gw.addr).await;
    c.send_frame(Frame::text(Payload::Owned(vec![b'{', 0xff, 0xfe, b'}'])))
        .await;
    assert_eq!(c.closed_with().await.0, 1007);

    // Malformed JSON: a disconnect (3501), never a crash.
    for junk in [
        "{",
        "{\"id\":1,\"connect\":5}",
        "[1,2]",
        "\u{0}",
        "{\"id\":1,\"publish\":{\"data\":}}",
    ] {
        let mut c = ws_connect(gw.addr).await;
        c.connect(&tok).await;
        c.send_text(junk).await;
        assert_eq!(c.closed_with().await.0, 3501, "{junk:?}");
    }
    // Commands before connect: 3501.
    let mut c = ws_connect(gw.addr).await;
    c.send_text(r#"{"id":1,"subscribe":{"channel":"room:x"}}"#)
        .await;
    assert_eq!(c.closed_with().await.0, 3501);

    // The gateway still serves.
    let mut c = ws_connect(gw.addr).await;
    assert!(c.connect(&tok).await["connect"].is_object());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_left_unsubscribes_the_user() {
    let kafka = test_topic(2).await;
    let gw = start(&kafka, &[]).await;
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let mut a = member(gw.addr, room).await;
    let mut b = member(gw.addr, room).await;
    produce_member_event(&kafka, room, a.id, &a.name, RecordKind::MemberLeft).await;

    let p = a.client.publication().await;
    assert_eq!(
        p["pub"]["data"],
        json!({"type":"member_left","user":{"id":a.id,"username":a.name}})
    );
    let u = loop {
        let p = a.client.push().await;
        if p.get("unsubscribe").is_some() {
            break p;
        }
    };
    assert_eq!(u["channel"], channel);
    assert_eq!(u["unsubscribe"]["code"], 2000);
    let p = b.client.publication().await;
    assert_eq!(p["pub"]["data"]["type"], "member_left");
    let leave = loop {
        let p = b.client.push().await;
        if p.get("leave").is_some() {
            break p;
        }
    };
    assert_eq!(leave["leave"]["info"]["user"], a.id.to_string());
    // A no longer may publish; B still receives.
    assert_eq!(
        a.client.publish(&channel, json!({"text":"x"})).await["error"]["code"],
        103
    );
    let r = b
        .client
        .call("presence_stats", json!({"channel": channel}))
        .await;
    assert_eq!(r["presence_stats"], json!({"num_clients":1,"num_users":1}));
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_join_leave_and_history() {
    let kafka = test_topic(2).await;
    let gw = start(&kafka, &[]).await;
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let mut a = member(gw.addr, room).await;
    let b = member(gw.addr, room).await;
    let join = loop {
        let p = a.client.push().await;
        if p.get("join").is_some() && p["join"]["info"]["user"] == b.id.to_string() {
            break p;
        }
    };
    assert_eq!(join["join"]["info"]["conn_info"]["username"], b.name);
    let r = a.client.call("presence", json!({"channel": channel})).await;
    let presence = r["presence"]["presence"].as_object().unwrap();
    assert_eq!(presence.len(), 2);
    assert!(presence.values().any(|v| v["user"] == b.id.to_string()));
    let r = a
        .client
        .call("presence_stats", json!({"channel": channel}))
        .await;
    assert_eq!(r["presence_stats"], json!({"num_clients":2,"num_users":2}));
    drop(b);
    let leave = loop {
        let p = a.client.push().await;
        if p.get("leave").is_some() {
            break p;
        }
    };
    assert!(leave["leave"]["info"]["client"].is_string());

    for i in 0..3 {
        a.client
            .publish(&channel, json!({"text": format!("m{i}")}))
            .await;
    }
    let pubs: Vec<Value> = vec![
        a.client.publication().await,
        a.client.publication().await,
        a.client.publication().await,
    ];
    let offs = offsets(&pubs);
    let r = a
        .client
        .call("history", json!({"channel": channel, "limit": -1}))
        .await;
    let h = &r["history"];
    let hist: Vec<u64> = h["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(hist, offs);
    assert_eq!(h["offset"].as_u64().unwrap(), offs[2]);
    let epoch = h["epoch"].as_str().unwrap().to_owned();
    let r = a
        .client
        .call(
            "history",
            json!({"channel": channel, "limit": 10, "since": {"offset": offs[0], "epoch": epoch}}),
        )
        .await;
    assert_eq!(r["history"]["publications"].as_array().unwrap().len(), 2);
    let r = a
        .client
        .call(
            "history",
            json!({"channel": channel, "limit": 1, "reverse": true}),
        )
        .await;
    assert_eq!(
        r["history"]["publications"][0]["offset"].as_u64().unwrap(),
        offs[2]
    );
    let r = a
        .client
        .call("history", json!({"channel": channel, "limit": 0}))
        .await;
    assert!(r["history"]
        .get("publications")
        .is_none_or(|p| p.as_array().unwrap().is_empty()));
    let r = a
        .client
        .call(
            "history",
            json!({"channel": channel, "limit": 10, "since": {"offset": 0, "epoch": "nope"}}),
        )
        .await;
    assert_eq!(r["error"]["code"], 112);
    gw.stop().await;
}

/// Subscribes `user` with recovery from `offset`/`epoch`; returns the reply.
async fn recover(
    addr: std::net::SocketAddr,
    room: Uuid,
    user: Uuid,
    offset: u64,
    epoch: &str,
) -> Value {
    let keys = keys();
    let channel = confab_common::room_channel(room);
    let mut c = ws_connect(addr).await;
    let (tok, _) = keys.issue_access(user, "rec");
    c.connect(&tok).await;
    let (sub, _) = keys.issue_subscription(user, &channel);
    c.call(
        "subscribe",
        json!({"channel": channel, "token": sub, "recover": true, "offset": offset, "epoch": epoch}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_inside_and_outside_the_window() {
    let kafka = test_topic(2).await;
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    // As in production, a room's stream starts with its creator joining.
    produce_member_event(
        &kafka,
        room,
        Uuid::new_v4(),
        "owner",
        RecordKind::MemberJoined,
    )
    .await;
    // The gateway reads that record at start, before accepting connections.
    let gw = start(&kafka, &[("CONFAB_GATEWAY_HISTORY_SIZE", "5")]).await;
    let mut pubr = member(gw.addr, room).await;
    let r = {
        let keys = keys();
        let mut c = ws_connect(gw.addr).await;
        let user = Uuid::new_v4();
        let (tok, _) = keys.issue_access(user, "late");
        c.connect(&tok).await;
        let (sub, _) = keys.issue_subscription(user, &channel);
        let r = c.subscribe(&channel, &sub).await;
        drop(c); // disconnects: misses what follows
        (user, r)
    };
    let (user, reply) = r;
    let position = reply["subscribe"]["offset"].as_u64().unwrap();
    let epoch = reply["subscribe"]["epoch"].as_str().unwrap().to_owned();

    let mut missed = Vec::new();
    for i in 0..3 {
        pubr.client
            .publish(&channel, json!({"text": format!("missed {i}")}))
            .await;
        missed.push(pubr.client.publication().await["pub"].clone());
    }
    let r = recover(gw.addr, room, user, position, &epoch).await;
    let s = &r["subscribe"];
    assert_eq!(s["recovered"], true, "{r}");
    assert_eq!(s["was_recovering"], true);
    assert_eq!(
        s["publications"].as_array().unwrap(),
        &missed,
        "exactly the missed publications, in order"
    );
    assert_eq!(
        s["offset"].as_u64().unwrap(),
        missed[2]["offset"].as_u64().unwrap()
    );

    // From the middle: only what follows.
    let mid = missed[1]["offset"].as_u64().unwrap();
    let r = recover(gw.addr, room, user, mid, &epoch).await;
    assert_eq!(
        r["subscribe"]["publications"].as_array().unwrap(),
        &missed[2..]
    );

    // Push the early ones out of the 5-entry window.
    for i in 0..5 {
        pubr.client
            .publish(&channel, json!({"text": format!("more {i}")}))
            .await;
        pubr.client.publication().await;
    }
    let r = recover(gw.addr, room, user, position, &epoch).await;
    assert_eq!(
        r["subscribe"]["recovered"],
        Value::Null,
        "outside the window: {r}"
    );
    assert!(r["subscribe"].get("publications").is_none());
    let r = recover(gw.addr, room, user, mid, "other-epoch").await;
    assert_eq!(
        r["subscribe"]["recovered"],
        Value::Null,
        "epoch mismatch: {r}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_agree_on_offsets_and_recovery() {
    let kafka = test_topic(3).await;
    let g1 = start(&kafka, &[]).await;
    let g2 = start(&kafka, &[]).await;
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let mut a = member(g1.addr, room).await;
    let mut b = member(g2.addr, room).await;
    let first = a.client.publish(&channel, json!({"text": "seed"})).await;
    assert_eq!(first["publish"], json!({}));
    let seed = a.client.publication().await;
    let seed_b = b.client.publication().await;
    assert_eq!(seed["pub"], seed_b["pub"]);
    let since = seed["pub"]["offset"].as_u64().unwrap();

    for i in 0..4 {
        b.client
            .publish(&channel, json!({"text": format!("from g2 {i}")}))
            .await;
    }
    let mut on1 = Vec::new();
    let mut on2 = Vec::new();
    for _ in 0..4 {
        on1.push(a.client.publication().await);
        on2.push(b.client.publication().await);
    }
    assert_eq!(on1, on2, "same publications, same offsets, same order");

    let user = Uuid::new_v4();
    let epoch1 = recover(g1.addr, room, user, 0, "").await["subscribe"]["epoch"].clone();
    let r1 = recover(g1.addr, room, user, since, epoch1.as_str().unwrap()).await;
    let r2 = recover(g2.addr, room, user, since, epoch1.as_str().unwrap()).await;
    assert_eq!(r1["subscribe"]["recovered"], true, "{r1}");
    assert_eq!(
        r1["subscribe"]["publications"],
        r2["subscribe"]["publications"]
    );
    assert_eq!(r1["subscribe"]["epoch"], r2["subscribe"]["epoch"]);
    assert_eq!(r1["subscribe"]["publications"].as_array().unwrap().len(), 4);

    // A third gateway started later prefills from the topic and agrees too.
    let g3 = start(&kafka, &[]).await;
    let r3 = recover(g3.addr, room, user, since, epoch1.as_str().unwrap()).await;
    assert_eq!(
        r1["subscribe"]["publications"], r3["subscribe"]["publications"],
        "{r3}"
    );
    g1.stop().await;
    g2.stop().await;
    g3.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_in_flight_publishes_then_advises_reconnect() {
    let kafka = test_topic(1).await;
    let gw = start(&kafka, &[]).await;
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let mut a = member(gw.addr, room).await;
    a.client
        .send_text(
            &json!({"id": 500, "publish": {"channel": channel, "data": {"text": "last words"}}})
                .to_string(),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    gw.shutdown.cancel();
    let r = a.client.reply(500).await;
    assert_eq!(r["publish"], json!({}), "{r}");
    assert_eq!(a.client.closed_with().await.0, 3001);
    let _ = tokio::time::timeout(Duration::from_secs(30), gw.task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_origin() {
    let kafka = test_topic(1).await;
    let gw = start(
        &kafka,
        &[("CONFAB_GATEWAY_ALLOWED_ORIGINS", "https://chat.example")],
    )
    .await;
    let (status, body) = http_get(gw.addr, "/healthz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let mut a = member(gw.addr, room).await;
    a.client.publish(&channel, json!({"text": "m"})).await;
    a.client.publication().await;
    let (status, body) = http_get(gw.addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for name in [
        "confab_gateway_connections",
        "confab_gateway_subscriptions",
        "confab_gateway_messages_published_total",
        "confab_gateway_messages_delivered_total",
        "confab_gateway_publish_to_deliver_seconds",
        "confab_gateway_kafka_produce_seconds",
    ] {
        assert!(
            body.contains(&format!("# HELP {name}")),
            "{name} missing:\n{body}"
        );
    }
    assert!(
        ws_connect_with(gw.addr, &[("Origin", "https://evil.example")])
            .await
            .is_err()
    );
    let mut ok = ws_connect_with(gw.addr, &[("Origin", "https://chat.example")])
        .await
        .unwrap();
    let (tok, _) = keys().issue_access(Uuid::new_v4(), "o");
    assert!(ok.connect(&tok).await["connect"].is_object());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_and_pong_timeout() {
    let kafka = test_topic(1).await;
    let gw = start(
        &kafka,
        &[
            ("CONFAB_GATEWAY_MAX_CONNECTIONS", "2"),
            ("CONFAB_GATEWAY_PING_INTERVAL_SECS", "1"),
            ("CONFAB_GATEWAY_PONG_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    let (tok, _) = keys().issue_access(Uuid::new_v4(), "p");
    let mut c1 = ws_connect(gw.addr).await;
    let r = c1.connect(&tok).await;
    assert_eq!(r["connect"]["ping"], 1);
    let _c2 = ws_connect(gw.addr).await;
    assert!(
        ws_connect_with(gw.addr, &[]).await.is_err(),
        "third connection refused"
    );
    // c1 answers pings and stays; a silent client is dropped with 3012.
    c1.auto_pong = false;
    assert_eq!(c1.closed_with().await.0, 3012);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_disconnected_without_slowing_others() {
    let kafka = test_topic(1).await;
    let gw = start(
        &kafka,
        &[
            ("CONFAB_GATEWAY_SEND_QUEUE", "64"),
            ("CONFAB_GATEWAY_WRITE_TIMEOUT_SECS", "30"),
        ],
    )
    .await;
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let mut fast = member(gw.addr, room).await;
    // The slow member subscribes and then never reads its socket.
    let slow = member(gw.addr, room).await;
    let text = "z".repeat(4000);
    let pad = "p".repeat(12_000);
    let total = 400;
    let mut sent = 0;
    let mut received = 0;
    while sent < total {
        // Several publishes in flight at once, then read what arrived.
        for _ in 0..20 {
            sent += 1;
            fast.client
                .send_text(
                    &json!({"id": 10_000 + sent, "publish": {"channel": channel, "data": {"text": text, "pad": pad}}})
                        .to_string(),
                )
                .await;
        }
        while received < sent {
            if fast.client.publication().await["pub"]["data"]["text"] == text {
                received += 1;
            }
        }
    }
    assert_eq!(received, total, "the fast subscriber got everything");
    let (_, metrics) = http_get(gw.addr, "/metrics").await.unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("confab_gateway_slow_consumer_disconnects_total"))
        .unwrap_or_default()
        .to_owned();
    let count: f64 = line
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(count >= 1.0, "slow consumer not disconnected: {line}");
    drop(slow);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_socket() {
    let kafka = test_topic(1).await;
    let gw = start(
        &kafka,
        &[
            ("CONFAB_GATEWAY_MAX_CONNECTIONS", "100"),
            ("CONFAB_GATEWAY_MAX_CONNECTIONS_PER_IP", "2"),
            ("CONFAB_GATEWAY_TRUST_PROXY", "true"),
        ],
    )
    .await;
    let first = ws_connect(gw.addr).await;
    let _second = ws_connect(gw.addr).await;
    assert!(
        ws_connect_with(gw.addr, &[]).await.is_err(),
        "a third socket from one address is refused"
    );
    // Behind a trusted proxy, the client address is the last X-Forwarded-For
    // entry: other clients still get in.
    let _proxied = ws_connect_with(gw.addr, &[("X-Forwarded-For", "203.0.113.9")])
        .await
        .expect("another address");
    // A closed socket gives its place back.
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ws_connect_with(gw.addr, &[]).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the place never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_pushes_only_for_who_asked() {
    let kafka = test_topic(1).await;
    let gw = start(&kafka, &[]).await;
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);
    let keys = keys();
    let id = Uuid::new_v4();
    let mut quiet = ws_connect(gw.addr).await;
    quiet.connect(&keys.issue_access(id, "quiet").0).await;
    let r = quiet
        .subscribe(&channel, &keys.issue_subscription(id, &channel).0)
        .await;
    assert!(r.get("subscribe").is_some(), "{r}");
    let mut loud = member(gw.addr, room).await;
    let other = member(gw.addr, room).await;
    drop(other);
    let mut seen = 0;
    while let Some(p) = loud.client.push_within(Duration::from_millis(500)).await {
        if p.get("join").is_some() || p.get("leave").is_some() {
            seen += 1;
        }
    }
    assert!(seen >= 3, "own join, the other's join and leave: {seen}");
    assert!(
        quiet
            .push_within(Duration::from_millis(300))
            .await
            .is_none(),
        "no join or leave without join_leave"
    );
    gw.stop().await;
}
