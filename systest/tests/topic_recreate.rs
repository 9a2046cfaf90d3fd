//! The room topic deleted and created again while the gateway and persister
//! run: nothing acknowledged is lost, offsets keep rising, and a client that
//! recovers across it gets `recovered: false`, never a stale publication.

use std::time::Duration;

use confab_common::testing::{KafkaCluster, TestDb};
use confab_systest::{assert_rising, offsets, texts, Member, Stack};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recreated_topic_loses_nothing_and_never_recovers_stale() {
    let cluster = KafkaCluster::start(1).await;
    let kafka = cluster.test_topic(8).await;
    let db = TestDb::create().await;
    let stack = Stack::start(&kafka, &db.url).await;
    let api = stack.api().register().await;
    let room = api.create_room().await;
    let mut alice = Member::join(stack.gateway, &api, room, None).await;

    let first: Vec<String> = (0..20).map(|i| format!("old {i}")).collect();
    for t in &first {
        assert!(alice.publish(t).await, "{t} acknowledged");
    }
    // The operator waits for the persister before deleting the topic.
    let before = api.wait_messages(room, 20, WAIT).await;
    let last_old = *offsets(&before).last().unwrap();
    let old_epoch = alice.subscribed["subscribe"]["epoch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Delete the topic and create it again (what `confab-admin
    // create-topic` does; no hint from the database, so the new base comes
    // from the clock alone).
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .create()
        .unwrap();
    let deleted = admin
        .delete_topics(&[&kafka.topic], &AdminOptions::new())
        .await
        .unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    confab_common::testing::create_topic(&kafka, 8).await;

    // Publishing works again once the services follow the new topic.
    let second: Vec<String> = (0..20).map(|i| format!("new {i}")).collect();
    for t in &second {
        alice.publish_until_acked(t, WAIT).await;
    }

    // History: all 40 once each, in send order, offsets still rising.
    let all = api.wait_messages(room, 40, WAIT).await;
    assert_eq!(texts(&all), [first, second].concat());
    assert_rising(&offsets(&all));
    assert!(offsets(&all)[20] > last_old);

    // The subscriber that stayed sees the new messages at higher offsets.
    let mut live = Vec::new();
    while live.len() < 20 {
        let p = alice.client.publication().await;
        let new = p["pub"]["data"]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("new"));
        if new {
            live.push(p["pub"].clone());
        }
    }
    assert_eq!(offsets(&live), offsets(&all)[20..]);
    assert!(live
        .iter()
        .all(|p| p["tags"]["message_id"].as_str().is_some()));

    // A client that recovers from the old incarnation is told to fall back.
    let bob = stack.api().register().await;
    bob.join(room).await;
    let back = Member::join(stack.gateway, &bob, room, Some((last_old, &old_epoch))).await;
    let s = &back.subscribed["subscribe"];
    assert_eq!(s["was_recovering"], true, "{s}");
    assert_ne!(s["recovered"], true, "recovered: false (omitted) {s}");
    assert!(s.get("publications").is_none(), "no stale publication: {s}");
    assert_ne!(s["epoch"], old_epoch.as_str());
    assert!(s["offset"].as_u64().unwrap() > last_old);
    stack.stop().await;
}
