//! A three-node cluster (replication 3, `min.insync.replicas=2`): SIGKILL the
//! leader of the room's partition while ten clients publish, restart it, then
//! SIGTERM another node. Every acknowledged message is in history exactly
//! once, each client's messages in the order it sent them, at offsets that
//! rise; the live stream agrees with history.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use confab_common::testing::{KafkaCluster, Signal, TestDb};
use confab_systest::{assert_rising, offsets, texts, Member, Stack};

const CLIENTS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_loses_and_duplicates_nothing() {
    let cluster = KafkaCluster::start(3).await;
    let kafka = cluster.test_topic(4).await;
    let db = TestDb::create().await;
    let stack = Stack::start(&kafka, &db.url).await;
    let owner = stack.api().register().await;
    let room = owner.create_room().await;
    let stop = Arc::new(AtomicBool::new(false));

    // A subscriber that only reads, to compare the live stream with history.
    let mut watcher = Member::join(stack.gateway, &owner, room, None).await;
    let watching = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut live = Vec::new();
            loop {
                match watcher.client.push_within(Duration::from_secs(3)).await {
                    Some(p) if p["pub"]["data"]["text"].is_string() => live.push(p["pub"].clone()),
                    Some(_) => {}
                    None if stop.load(Ordering::Relaxed) => return live,
                    None => {}
                }
            }
        })
    };

    // Ten publishers, one message in flight each, recording what was acked.
    let mut publishers = Vec::new();
    for c in 0..CLIENTS {
        let api = stack.api().register().await;
        api.join(room).await;
        let mut member = Member::join(stack.gateway, &api, room, None).await;
        let stop = Arc::clone(&stop);
        publishers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let text = format!("c{c} m{n}");
                n += 1;
                if member.publish(&text).await {
                    acked.push(text);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acked
        }));
    }
    let partition = confab_common::stream::room_partition(room, 4);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = cluster
        .leader_of(&kafka.topic, partition)
        .await
        .expect("the room's partition has a leader");
    cluster.kill(leader, Signal::Kill).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster.start_node(leader).await;
    cluster.wait_healthy().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let other = (1..=3).find(|&n| n != leader).unwrap();
    cluster.kill(other, Signal::Term).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acked: Vec<Vec<String>> = Vec::new();
    for p in publishers {
        acked.push(p.await.unwrap());
    }
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total > 100, "only {total} publishes were acknowledged");

    let history = owner
        .wait_messages(room, total, Duration::from_secs(120))
        .await;
    let stored = texts(&history);
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "a message is stored twice");
    for (c, sent) in acked.iter().enumerate() {
        let prefix = format!("c{c} ");
        let mine: Vec<&String> = stored.iter().filter(|t| t.starts_with(&prefix)).collect();
        // Every acknowledged message is there; one that failed may be too
        // (the broker stored it but the ack was lost), but never twice.
        let have: HashSet<&String> = mine.iter().copied().collect();
        for t in sent {
            assert!(have.contains(t), "acknowledged {t:?} is missing");
        }
        // In the order the client sent them.
        let order: Vec<usize> = mine
            .iter()
            .map(|t| t[prefix.len() + 1..].parse().unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "c{c}: {order:?}");
    }
    assert_rising(&offsets(&history));

    // The subscriber saw the same publications at the same offsets.
    let live = watching.await.unwrap();
    assert_eq!(live.len(), history.len(), "pushed and stored counts");
    let first_difference = offsets(&live)
        .iter()
        .zip(offsets(&history))
        .position(|(a, b)| *a != b);
    assert_eq!(
        first_difference, None,
        "the live stream and history disagree"
    );
    assert_eq!(texts(&live), stored);
    cluster.start_node(other).await;
    stack.stop().await;
}
