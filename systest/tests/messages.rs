//! CONTRACT §7 end to end: an edit, a reaction and a delete made through
//! REST arrive live on two gateways in the room's order, among the messages
//! around them; a client that re-subscribes recovers them; history folds
//! them into the messages and does not list them.

use std::time::Duration;

use confab_common::testing::{test_topic, TestDb};
use confab_systest::{assert_rising, Member, Stack};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// The next `n` publications of `member`.
async fn publications(member: &mut Member, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(member.client.publication().await["pub"].clone());
    }
    out
}

/// What a publication is: its `data.type`, or its text for a chat message.
fn what(p: &Value) -> String {
    match p["data"]["type"].as_str() {
        Some(t) => format!(
            "{t} {}",
            p["data"]["message_id"].as_str().unwrap_or_default()
        ),
        None => format!("text {}", p["data"]["text"].as_str().unwrap_or_default()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_are_ordered_live_recovered_and_folded_into_history() {
    let kafka = test_topic(4).await;
    let db = TestDb::create().await;
    let mut stack = Stack::start(&kafka, &db.url).await;
    let second_gateway = stack.add_gateway(&kafka, &db.url).await;
    let ann = stack.api().register().await;
    let bob = stack.api().register().await;
    let room = ann.create_room().await;
    bob.join(room).await;
    let mut ann_ws = Member::join(stack.gateway, &ann, room, None).await;
    let mut bob_ws = Member::join(second_gateway, &bob, room, None).await;
    let epoch = ann_ws.subscribed["subscribe"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Three messages; the third answers the first.
    assert!(ann_ws.publish("helo").await);
    assert!(ann_ws.publish("take me back").await);
    let sent = publications(&mut ann_ws, 2).await;
    let id = |p: &Value| {
        p["tags"]["message_id"]
            .as_str()
            .expect("tags.message_id")
            .parse::<Uuid>()
            .unwrap()
    };
    let (first, second) = (id(&sent[0]), id(&sent[1]));
    let r = ann_ws
        .client
        .publish(
            &ann_ws.channel,
            json!({"text": "what about it", "reply_to": first}),
        )
        .await;
    assert!(r.get("publish").is_some(), "{r}");
    let reply_pub = publications(&mut ann_ws, 1).await.remove(0);
    let reply = id(&reply_pub);
    let r = ann_ws
        .client
        .publish(
            &ann_ws.channel,
            json!({"text": "x", "reply_to": "not an id"}),
        )
        .await;
    assert!(
        r.get("error").is_some(),
        "a malformed reply_to is refused: {r}"
    );

    // The changes go to stored messages: wait until the persister has them.
    ann.wait_messages(room, 3, WAIT).await;
    let edited = ann
        .call(
            Method::PATCH,
            &format!("/api/rooms/{room}/messages/{first}"),
            Some(json!({"text": "hello"})),
        )
        .await;
    assert_eq!(edited["data"]["text"], "hello");
    bob.call(
        Method::PUT,
        &format!("/api/rooms/{room}/messages/{first}/reactions/%F0%9F%91%8D"),
        None,
    )
    .await;
    ann.call(
        Method::DELETE,
        &format!("/api/rooms/{room}/messages/{second}"),
        None,
    )
    .await;
    assert!(ann_ws.publish("after").await);

    // Both gateways deliver the same stream, in the same order.
    let want = vec![
        "text helo".to_owned(),
        "text take me back".to_owned(),
        "text what about it".to_owned(),
        format!("message_edited {first}"),
        format!("reaction_added {first}"),
        format!("message_deleted {second}"),
        "text after".to_owned(),
    ];
    let on_bob = publications(&mut bob_ws, want.len()).await;
    let on_ann = [
        sent,
        vec![reply_pub],
        publications(&mut ann_ws, want.len() - 3).await,
    ]
    .concat();
    assert_eq!(on_bob.iter().map(what).collect::<Vec<_>>(), want);
    assert_eq!(on_ann.iter().map(what).collect::<Vec<_>>(), want);
    let offsets: Vec<u64> = on_bob
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_rising(&offsets);
    assert_eq!(
        offsets,
        on_ann
            .iter()
            .map(|p| p["offset"].as_u64().unwrap())
            .collect::<Vec<_>>()
    );
    assert_eq!(on_bob[2]["data"]["reply_to"], first.to_string());
    assert_eq!(
        on_bob[3]["data"],
        json!({"type": "message_edited", "message_id": first, "text": "hello", "edited_at": edited["edited_at"]})
    );
    assert_eq!(
        on_bob[4]["data"],
        json!({"type": "reaction_added", "message_id": first, "emoji": "👍",
               "user": {"id": bob.user, "username": bob.username}})
    );
    assert_eq!(on_bob[4]["info"]["user"], bob.user.to_string());

    // A client that comes back after the third message recovers the changes.
    drop(bob_ws);
    let back = Member::join(second_gateway, &bob, room, Some((offsets[2], &epoch))).await;
    let s = &back.subscribed["subscribe"];
    assert_eq!(s["recovered"], true, "{s}");
    let recovered: Vec<String> = s["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(what)
        .collect();
    assert_eq!(recovered, want[3..]);

    // History shows the messages as they are now, and no change records.
    let deadline = tokio::time::Instant::now() + WAIT;
    let history = loop {
        let history = bob.history(room).await;
        let done = history
            .iter()
            .any(|m| m["id"] == second.to_string() && m["deleted"] == true)
            && history.iter().any(|m| m["data"]["text"] == "after");
        if done {
            break history;
        }
        assert!(tokio::time::Instant::now() < deadline, "{history:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let messages: Vec<&Value> = history.iter().filter(|m| m["kind"] == "message").collect();
    assert_eq!(messages.len(), 4, "{messages:?}");
    assert!(history.iter().all(
        |m| ["message", "member_joined", "member_left"].contains(&m["kind"].as_str().unwrap())
    ));
    let m = messages[0];
    assert_eq!(
        (m["data"]["text"].as_str(), m["offset"].as_u64()),
        (Some("hello"), Some(offsets[0]))
    );
    assert_eq!(m["edited_at"], edited["edited_at"]);
    assert_eq!(
        m["reactions"],
        json!([{"emoji": "👍", "count": 1, "me": true}])
    );
    let m = messages[1];
    assert_eq!((&m["data"], &m["deleted"]), (&Value::Null, &json!(true)));
    assert_eq!(
        m["offset"].as_u64(),
        Some(offsets[1]),
        "a deleted message keeps its offset"
    );
    assert_eq!(messages[2]["id"], reply.to_string());
    assert_eq!(messages[2]["reply_to"], first.to_string());
    // The other side of `me`.
    let m = &ann.messages(room).await[0];
    assert_eq!(
        m["reactions"],
        json!([{"emoji": "👍", "count": 1, "me": false}])
    );

    // Search finds the edited text, not the old one nor the deleted one.
    let found = ann.call(Method::GET, "/api/search?q=hello", None).await;
    assert_eq!(found["messages"][0]["id"], first.to_string());
    let found = ann.call(Method::GET, "/api/search?q=helo", None).await;
    assert_eq!(found["messages"], json!([]));
    let found = ann.call(Method::GET, "/api/search?q=take", None).await;
    assert_eq!(found["messages"], json!([]));
    drop((ann_ws, back));
    stack.stop().await;
}
