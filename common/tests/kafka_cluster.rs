//! The fault-test harness itself: a three-node cluster survives the loss of a
//! partition leader and takes the node back.

use std::time::{Duration, Instant};

use confab_common::testing::{KafkaCluster, Signal};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_rejoins_the_isr() {
    let cluster = KafkaCluster::start(3).await;
    let config = cluster.test_topic(1).await;
    let topic = config.topic.as_str();
    cluster.wait_healthy().await;

    let before = cluster.partition(topic, 0).await.expect("partition 0");
    assert_eq!(before.replicas.len(), 3, "the cluster default: RF 3");
    let leader = before.leader.expect("a leader");

    cluster.kill(leader, Signal::Kill).await;
    let killed = Instant::now();
    let new_leader = loop {
        match cluster.leader_of(topic, 0).await {
            Some(l) if l != leader => break l,
            _ => {}
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "no new leader 15 s after node {leader} was killed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "node {new_leader} leads after {} ms",
        killed.elapsed().as_millis()
    );

    // Two of three replicas meet min.insync.replicas=2: acks=all still works.
    let producer: FutureProducer = confab_common::kafka::producer_config(&config)
        .create()
        .expect("producer");
    producer
        .send(
            FutureRecord::to(topic)
                .key("k")
                .payload("while a node is down"),
            Duration::from_secs(10),
        )
        .await
        .expect("an acknowledged produce with one node down");

    cluster.start_node(leader).await;
    cluster.wait_healthy().await;
    let after = cluster.partition(topic, 0).await.expect("partition 0");
    assert!(after.isr.contains(&leader), "node {leader} back in the ISR");
}
