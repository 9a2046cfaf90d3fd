//! Exactly once across crashes: after the database commit but before the
//! offset commit (the test hook, in-process and as a real abort of the
//! binary), and a `kill -9` of the binary at an arbitrary point mid-stream.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use confab_common::config::KafkaConfig;
use confab_common::testing::{test_topic, TestDb};
use confab_persister::{Crash, PersisterError};
use uuid::Uuid;

/// How many of `produced` the group has committed (the partitions' geneses,
/// which are no messages, are not counted).
async fn committed_total(
    kafka: &KafkaConfig,
    group: &str,
    partitions: i32,
    produced: &[Produced],
) -> i64 {
    let (k, g) = (kafka.clone(), group.to_owned());
    let committed = tokio::task::spawn_blocking(move || committed(&k, &g, partitions))
        .await
        .unwrap();
    produced
        .iter()
        .filter(|p| committed.get(&p.partition).is_some_and(|&c| p.offset < c))
        .count() as i64
}

async fn rows_now(url: &str) -> i64 {
    count(&common::db(url).await, "messages").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_db_commit_before_offset_commit_in_process() {
    init_tracing();
    let db = TestDb::create().await;
    let kafka = test_topic(4).await;
    let producer = producer(&kafka).await;
    let group = format!("g-{}", Uuid::new_v4().simple());
    let produced = produce(&producer, &kafka.topic, good_records(1000, &rooms(16))).await;

    let mut crashing = config(&kafka, &db.url, &group);
    crashing.batch_size = 100;
    crashing.crash_after_db_commits = Some(Crash {
        after: 3,
        abort: false,
    });
    let first = Instance::start(crashing).await;
    let result = tokio::time::timeout(Duration::from_secs(60), first.task)
        .await
        .expect("the hook fires")
        .unwrap();
    assert!(
        matches!(result, Err(PersisterError::InjectedCrash)),
        "{result:?}"
    );

    // The crash window: rows are in the database that the group has not
    // committed.
    let stored = rows_now(&db.url).await;
    let committed_before = committed_total(&kafka, &group, 4, &produced).await;
    assert!(stored > 0, "the crashing instance stored nothing");
    assert!(
        committed_before < stored,
        "committed {committed_before} >= stored {stored}: no crash window"
    );

    let second = Instance::start(config(&kafka, &db.url, &group)).await;
    wait_for_rows(&db.url, 1000, Duration::from_secs(60)).await;
    wait_for_commits(&kafka, &group, 4, &ends(&produced)).await;
    assert_exactly_once(&db.url, &produced).await;
    // The second instance read again what was stored but not committed.
    assert_eq!(
        second.stats.records_persisted() as i64,
        1000 - committed_before,
        "the second instance starts exactly at the committed offsets"
    );
    second.stop().await.expect("clean stop");
}

/// A persister process whose output goes to a log file.
struct Process {
    child: Child,
    log: std::path::PathBuf,
}

impl Process {
    fn spawn(kafka: &KafkaConfig, url: &str, group: &str, extra: &[(&str, &str)]) -> Self {
        let log = std::env::temp_dir().join(format!("confab-persister-{}.log", Uuid::new_v4()));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab-persister"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KAFKA_BROKERS", &kafka.brokers)
            .env("CONFAB_KAFKA_TOPIC", &kafka.topic)
            .env("DATABASE_URL", url)
            .env("CONFAB_PERSISTER_GROUP", group)
            .env("CONFAB_PERSISTER_ADDR", "127.0.0.1:0")
            .env("CONFAB_PERSISTER_SESSION_TIMEOUT_MS", "6000")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file));
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Self {
            child: cmd.spawn().expect("start confab-persister"),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        let status = self.child.wait().unwrap();
        assert_eq!(status.signal(), Some(9));
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_aborted_after_db_commit_then_killed_mid_stream() {
    init_tracing();
    let db = TestDb::create().await;
    let kafka = test_topic(4).await;
    let producer = producer(&kafka).await;
    let group = format!("g-{}", Uuid::new_v4().simple());
    let mut produced = produce(&producer, &kafka.topic, good_records(600, &rooms(16))).await;

    // 1. A real abort right after the third database commit.
    let mut aborting = Process::spawn(
        &kafka,
        &db.url,
        &group,
        &[
            ("CONFAB_PERSISTER_BATCH_SIZE", "50"),
            ("CONFAB_PERSISTER_TEST_ABORT_AFTER_DB_COMMITS", "3"),
        ],
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = aborting.child.wait().unwrap();
        (status, aborting)
    });
    let (status, aborting) = tokio::time::timeout(Duration::from_secs(60), status)
        .await
        .expect("the hook aborts the process")
        .unwrap();
    assert_eq!(status.signal(), Some(6), "{}", aborting.log());
    let stored = rows_now(&db.url).await;
    let committed = committed_total(&kafka, &group, 4, &produced).await;
    assert!(
        stored > committed,
        "stored {stored}, committed {committed}: no crash window\n{}",
        aborting.log()
    );

    // 2. A fresh process, killed with SIGKILL while records keep coming.
    let producing = {
        let (producer, topic) = (producer.clone(), kafka.topic.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            for _ in 0..80 {
                out.extend(produce(&producer, &topic, good_records(25, &rooms(16))).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            out
        })
    };
    let mut victim = Process::spawn(&kafka, &db.url, &group, &[]);
    let url = db.url.clone();
    wait_for(
        "the victim to store records",
        Duration::from_secs(60),
        || {
            let url = url.clone();
            async move { rows_now(&url).await > 1000 }
        },
    )
    .await;
    victim.kill9();
    let at_kill = rows_now(&db.url).await;
    assert!(
        !producing.is_finished(),
        "the kill came after the last record"
    );

    // 3. A third process finishes the job.
    let survivor = Process::spawn(&kafka, &db.url, &group, &[]);
    produced.extend(producing.await.unwrap());
    assert_eq!(produced.len(), 2600);
    assert!(at_kill < 2600);
    wait_for_rows(&db.url, 2600, Duration::from_secs(90)).await;
    wait_for_commits(&kafka, &group, 4, &ends(&produced)).await;
    assert_exactly_once(&db.url, &produced).await;
    let log = survivor.log();
    assert!(log.contains("partitions assigned"), "{log}");
}
