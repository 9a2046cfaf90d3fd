//! Records reach PostgreSQL exactly once with their data intact; poison
//! records go to dead_letters without blocking their partition.

mod common;

use std::time::Duration;

use common::*;
use confab_common::record::{RoomRecord, UserRef};
use confab_common::testing::{test_topic, TestDb};
use serde_json::value::RawValue;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_every_record_once_and_commits_after() {
    init_tracing();
    let db = TestDb::create().await;
    let kafka = test_topic(4).await;
    let producer = producer(&kafka).await;
    let group = format!("g-{}", Uuid::new_v4().simple());

    // Some records before the persister starts, some while it runs.
    let mut produced = produce(&producer, &kafka.topic, good_records(300, &rooms(20))).await;
    let instance = Instance::start(config(&kafka, &db.url, &group)).await;
    produced.extend(produce(&producer, &kafka.topic, good_records(700, &rooms(20))).await);

    wait_for_rows(&db.url, 1000, Duration::from_secs(60)).await;
    assert_exactly_once(&db.url, &produced).await;

    // Offsets are committed up to the end of every partition.
    wait_for_commits(&kafka, &group, 4, &ends(&produced)).await;

    let (status, body) = instance.get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""database":"up""#), "{body}");
    // Lag is measured per partition and drops to zero.
    wait_for("lag gauges at zero", Duration::from_secs(20), || {
        let instance = &instance;
        async move {
            let (_, metrics) = instance.get("/metrics").await;
            (0..4).all(|p| {
                metrics.contains(&format!(
                    "confab_persister_consumer_lag{{partition=\"{p}\"}} 0"
                ))
            })
        }
    })
    .await;
    let (_, metrics) = instance.get("/metrics").await;
    for name in [
        "confab_persister_batch_size",
        "confab_persister_insert_duration_seconds",
        "confab_persister_records_persisted_total",
        "confab_persister_publish_to_persist_seconds",
        "# HELP confab_persister_errors_total",
        "# HELP confab_persister_poison_records_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    assert_eq!(instance.stats.records_persisted(), 1000);
    instance.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_become_dead_letters_and_do_not_block() {
    init_tracing();
    let db = TestDb::create().await;
    // One partition: every poison record sits in front of good ones.
    let kafka = test_topic(1).await;
    let producer = producer(&kafka).await;
    let room = Uuid::new_v4();
    let good = |text: &str| {
        let r = RoomRecord::message(
            room,
            UserRef {
                id: Uuid::new_v4(),
                username: "ann".into(),
            },
            RawValue::from_string(format!(r#"{{"text":"{text}"}}"#)).unwrap(),
        );
        (Some(r.key().into_bytes()), Some(r.encode()), Some(r))
    };
    let template = RoomRecord::message(
        room,
        UserRef {
            id: Uuid::new_v4(),
            username: "bob".into(),
        },
        RawValue::from_string("{}".into()).unwrap(),
    );
    let mut wrong_version: serde_json::Value = serde_json::from_slice(&template.encode()).unwrap();
    wrong_version["v"] = 7.into();
    // Decodes fine, but PostgreSQL's text type refuses the NUL character.
    let mut nul_name: serde_json::Value = serde_json::from_slice(&template.encode()).unwrap();
    nul_name["user"]["username"] = "bad\u{0}name".into();
    let key = Some(room.to_string().into_bytes());
    let records = vec![
        (key.clone(), Some(b"\xff not json".to_vec()), None),
        good("one"),
        (None, Some(template.encode()), None),
        good("two"),
        (
            key.clone(),
            Some(wrong_version.to_string().into_bytes()),
            None,
        ),
        (key.clone(), None, None),
        (
            Some(Uuid::new_v4().to_string().into_bytes()),
            Some(template.encode()),
            None,
        ),
        good("three"),
        (key.clone(), Some(nul_name.to_string().into_bytes()), None),
        good("four"),
    ];
    let produced = produce_raw(&producer, &kafka.topic, records).await;

    let group = format!("g-{}", Uuid::new_v4().simple());
    let instance = Instance::start(config(&kafka, &db.url, &group)).await;
    wait_for_rows(&db.url, 4, Duration::from_secs(60)).await;
    assert_exactly_once(&db.url, &produced).await;

    let client = common::db(&db.url).await;
    wait_for("dead letters", Duration::from_secs(20), || {
        let client = &client;
        async move { count(client, "dead_letters").await == 6 }
    })
    .await;
    let dead = client
        .query(
            "SELECT topic, kafka_partition, kafka_offset, record_key, payload, error
             FROM dead_letters ORDER BY kafka_offset",
            &[],
        )
        .await
        .unwrap();
    let poison: Vec<&Produced> = produced.iter().filter(|p| p.record.is_none()).collect();
    assert_eq!(dead.len(), poison.len());
    for (row, p) in dead.iter().zip(&poison) {
        assert_eq!(row.get::<_, String>(0), kafka.topic);
        assert_eq!(row.get::<_, i32>(1), p.partition);
        assert_eq!(row.get::<_, i64>(2), p.offset);
        let error: String = row.get(5);
        assert!(!error.is_empty());
        let payload: Option<Vec<u8>> = row.get(4);
        if error.starts_with("refused by PostgreSQL") {
            // Re-encoded from the decoded record.
            assert!(payload.is_some());
        } else {
            assert_eq!(row.get::<_, Option<Vec<u8>>>(3), p.key, "{error}");
            assert_eq!(payload, p.payload, "{error}");
        }
    }
    assert_eq!(instance.stats.poison_records(), 6);
    // Nothing is stuck: the group has committed past the last record.
    wait_for_commits(&kafka, &group, 1, &ends(&produced)).await;
    let (_, metrics) = instance.get("/metrics").await;
    assert!(metrics.contains("confab_persister_poison_records_total"));
    instance.stop().await.expect("clean stop");
}
