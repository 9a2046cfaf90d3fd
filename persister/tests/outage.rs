//! Exactly once across a PostgreSQL outage mid-stream. The test runs its own
//! PostgreSQL server (see `OwnPostgres`) and stops it with `pg_ctl stop -m
//! immediate`, then starts it again; the shared server is never touched.

mod common;

use std::time::Duration;

use common::*;
use confab_common::testing::test_topic;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_stream_loses_and_duplicates_nothing() {
    init_tracing();
    let pg = tokio::task::spawn_blocking(OwnPostgres::start)
        .await
        .unwrap();
    let url = pg.database("confab_outage").await;
    let kafka = test_topic(4).await;
    let producer = producer(&kafka).await;
    let group = format!("g-{}", Uuid::new_v4().simple());

    let mut cfg = config(&kafka, &url, &group);
    // Small batches, so that the outage fills the pipeline and pauses reading.
    cfg.batch_size = 20;
    let instance = Instance::start(cfg).await;

    let producing = {
        let (producer, topic) = (producer.clone(), kafka.topic.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..60 {
                out.extend(produce(&producer, &topic, good_records(25, &rooms(16))).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            out
        })
    };
    let client_url = url.clone();
    wait_for("the first rows", Duration::from_secs(60), || {
        let url = client_url.clone();
        async move { count(&common::db(&url).await, "messages").await > 200 }
    })
    .await;

    // Outage.
    pg.down();
    wait_for(
        "/healthz to report the database down",
        Duration::from_secs(10),
        || {
            let instance = &instance;
            async move {
                let (status, body) = instance.get("/healthz").await;
                status == 503 && body.contains(r#""database":"down""#)
            }
        },
    )
    .await;
    assert!(!instance.stats.database_up());
    // Stay down for a while records keep coming: the instance stays in the
    // group with its partitions (paused) instead of dropping out.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(instance.stats.assigned_partitions(), vec![0, 1, 2, 3]);
    let (_, metrics) = instance.get("/metrics").await;
    assert!(
        metrics.contains("confab_persister_paused 1"),
        "reading is paused while the database is down"
    );
    let database_errors = metrics
        .lines()
        .find(|l| l.starts_with("confab_persister_errors_total{kind=\"database\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(database_errors > 0.0, "database errors are counted");

    // Back up.
    pg.up();
    wait_for(
        "/healthz to report the database up",
        Duration::from_secs(20),
        || {
            let instance = &instance;
            async move { instance.get("/healthz").await.0 == 200 }
        },
    )
    .await;
    let produced = producing.await.unwrap();
    assert_eq!(produced.len(), 1500);
    wait_for_rows(&url, 1500, Duration::from_secs(60)).await;
    wait_for_commits(&kafka, &group, 4, &ends(&produced)).await;
    assert_exactly_once(&url, &produced).await;
    instance.stop().await.expect("clean stop");
}
