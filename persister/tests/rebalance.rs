//! Exactly once while instances join and leave the group: a second instance
//! joining splits the partitions, and the first leaving hands its partitions
//! over, with no gaps and no duplicates in the table.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use confab_common::testing::test_topic;
use confab_common::testing::TestDb;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_and_hand_over_partitions() {
    init_tracing();
    let db = TestDb::create().await;
    let kafka = test_topic(8).await;
    let producer = producer(&kafka).await;
    let group = format!("g-{}", Uuid::new_v4().simple());

    let a = Instance::start(config(&kafka, &db.url, &group)).await;
    let producing = {
        let (producer, topic) = (producer.clone(), kafka.topic.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..100 {
                out.extend(produce(&producer, &topic, good_records(25, &rooms(32))).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            out
        })
    };
    let url = db.url.clone();
    let rows_over = |n: i64| {
        let url = url.clone();
        move || {
            let url = url.clone();
            async move { count(&common::db(&url).await, "messages").await > n }
        }
    };
    wait_for(
        "rows from the first instance",
        Duration::from_secs(60),
        rows_over(300),
    )
    .await;

    // A second instance joins: the partitions are split between the two.
    let b = Instance::start(config(&kafka, &db.url, &group)).await;
    wait_for(
        "the partitions to be split",
        Duration::from_secs(60),
        || {
            let (a, b) = (&a, &b);
            async move {
                let (pa, pb) = (a.stats.assigned_partitions(), b.stats.assigned_partitions());
                let all: BTreeSet<i32> = pa.iter().chain(&pb).copied().collect();
                !pa.is_empty() && !pb.is_empty() && pa.len() + pb.len() == 8 && all.len() == 8
            }
        },
    )
    .await;
    let b_before = b.stats.records_persisted();
    wait_for(
        "the second instance to store records",
        Duration::from_secs(30),
        || {
            let b = &b;
            async move { b.stats.records_persisted() > b_before + 100 }
        },
    )
    .await;
    assert!(!producing.is_finished(), "the split happened mid-stream");

    // The first leaves: the second takes every partition.
    // Read A's count after it stopped: its final flush stores records too.
    let a_stats = a.stats.clone();
    a.stop().await.expect("clean stop");
    let a_persisted = a_stats.records_persisted();
    wait_for(
        "the second instance to own every partition",
        Duration::from_secs(60),
        || {
            let b = &b;
            async move { b.stats.assigned_partitions() == (0..8).collect::<Vec<_>>() }
        },
    )
    .await;
    assert!(
        !producing.is_finished(),
        "the hand-over happened mid-stream"
    );

    let produced = producing.await.unwrap();
    assert_eq!(produced.len(), 2500);
    wait_for_rows(&db.url, 2500, Duration::from_secs(60)).await;
    wait_for_commits(&kafka, &group, 8, &ends(&produced)).await;
    assert_exactly_once(&db.url, &produced).await;
    assert!(a_persisted > 0);
    assert!(b.stats.records_persisted() > 0);
    assert!(a_persisted + b.stats.records_persisted() >= 2500);
    b.stop().await.expect("clean stop");
}
