//! A kick through REST reaches a subscribed client of the kicked user at
//! once (CONTRACT §8): the whole stack on the shared broker, its record
//! stored by the persister with reason and `by`.

use std::time::Duration;

use confab_common::testing::{test_topic, TestDb};
use confab_systest::{Member, Stack};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kicked_member_is_unsubscribed_at_once_and_cannot_publish() {
    let kafka = test_topic(4).await;
    let db = TestDb::create().await;
    let stack = Stack::start(&kafka, &db.url).await;
    let alice = stack.api().register().await;
    let bob = stack.api().register().await;
    let room = alice.create_room().await;
    bob.join(room).await;

    let mut watcher = Member::join(stack.gateway, &alice, room, None).await;
    let mut kicked = Member::join(stack.gateway, &bob, room, None).await;
    assert!(
        kicked.publish("before the kick").await,
        "bob publishes while a member"
    );

    alice
        .post(
            &format!("/api/rooms/{room}/members/{}/kick", bob.user),
            json!({}),
        )
        .await;

    // Bob's connection sees the member_left (reason and by) and then its
    // subscription ends, without reconnecting or any call of its own.
    let mut left: Option<Value> = None;
    let mut unsubscribed = false;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(left.is_some() && unsubscribed) {
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        let push = kicked
            .client
            .push_within(wait)
            .await
            .expect("member_left and unsubscribe pushes");
        if push["pub"]["data"]["type"] == "member_left" {
            left = Some(push["pub"]["data"].clone());
        }
        if push.get("unsubscribe").is_some() {
            assert_eq!(push["channel"], kicked.channel.as_str());
            unsubscribed = true;
        }
    }
    let left = left.unwrap();
    assert_eq!(left["reason"], "kicked");
    assert_eq!(left["user"]["id"], bob.user.to_string());
    assert_eq!(
        left["by"],
        json!({"id": alice.user, "username": alice.username})
    );

    // Bob's next publish fails; alice's still goes through.
    let reply = kicked
        .client
        .publish(&kicked.channel, json!({"text": "after the kick"}))
        .await;
    assert!(
        reply.get("error").is_some(),
        "publish after a kick: {reply}"
    );
    assert!(watcher.publish("still here").await);

    // The persister stored the record as it was produced.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let history = alice.history(room).await;
        if let Some(m) = history
            .iter()
            .find(|m| m["kind"] == "member_left" && m["data"]["reason"] == "kicked")
        {
            assert_eq!(m["user"]["id"], bob.user.to_string());
            assert_eq!(m["data"]["by"]["id"], alice.user.to_string());
            let texts: Vec<&str> = history
                .iter()
                .filter_map(|m| m["data"]["text"].as_str())
                .collect();
            assert!(!texts.contains(&"after the kick"), "{texts:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "member_left not stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((watcher, kicked));
    stack.stop().await;
}
