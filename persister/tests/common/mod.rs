//! Helpers shared by the persister's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use confab_common::config::{Env, KafkaConfig};
use confab_common::position::KafkaOffset;
use confab_common::record::{RoomRecord, UserRef};
use confab_common::stream::{Layout, LayoutWatch};
use confab_persister::{Config, Persister, PersisterError, Stats};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::value::RawValue;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A record to produce: key, payload and, for good records, the record.
pub type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>, Option<RoomRecord>);

/// One record as produced: where it landed and what it was.
#[derive(Debug, Clone)]
pub struct Produced {
    pub partition: i32,
    pub offset: i64,
    /// Its stream position, by the topic's layout.
    pub position: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Set for good records.
    pub record: Option<RoomRecord>,
}

/// A row of `messages`, as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredRow {
    pub partition: i32,
    /// The stream position.
    pub offset: i64,
    pub room_id: Uuid,
    pub id: Uuid,
    pub kind: String,
    pub user_id: Uuid,
    pub username: String,
    pub data: String,
    pub created_ms: i64,
}

impl StoredRow {
    pub fn expected(p: &Produced) -> Option<Self> {
        let r = p.record.as_ref()?;
        Some(Self {
            partition: p.partition,
            offset: p.position,
            room_id: r.room_id,
            id: r.id,
            kind: r.kind.as_str().to_owned(),
            user_id: r.user.id,
            username: r.user.username.clone(),
            data: r.data.get().to_owned(),
            created_ms: r.ts_ms,
        })
    }
}

pub fn init_tracing() {
    confab_common::telemetry::init_tracing(&confab_common::config::LogConfig { json: false });
}

/// `n` good records spread over `rooms` rooms, with data that must survive
/// byte for byte.
pub fn good_records(n: usize, rooms: &[Uuid]) -> Vec<RoomRecord> {
    (0..n)
        .map(|i| {
            let user = UserRef {
                id: Uuid::new_v4(),
                username: format!("user_{}", i % 7),
            };
            let data = format!(r#"{{"text": "msg {i} héllo ✓" ,"n":{i}.50}}"#);
            RoomRecord::message(
                rooms[i % rooms.len()],
                user,
                RawValue::from_string(data).unwrap(),
            )
        })
        .collect()
}

pub fn rooms(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::new_v4()).collect()
}

/// A producer that knows the topic's layout, so that it can tell where each
/// record's position is.
#[derive(Clone)]
pub struct TestProducer {
    pub inner: FutureProducer,
    pub layout: Arc<Layout>,
}

pub async fn producer(kafka: &KafkaConfig) -> TestProducer {
    let layout = LayoutWatch::new(kafka)
        .expect("layout watch")
        .refresh()
        .await
        .layout()
        .cloned()
        .expect("the test topic has a layout");
    TestProducer {
        inner: confab_common::kafka::producer_config(kafka)
            .create()
            .expect("producer"),
        layout,
    }
}

/// Produces `records` (key, payload) in order and waits for every ack.
pub async fn produce_raw(
    producer: &TestProducer,
    topic: &str,
    records: Vec<RawRecord>,
) -> Vec<Produced> {
    let layout = Arc::clone(&producer.layout);
    let producer = &producer.inner;
    let mut futures = Vec::with_capacity(records.len());
    for (key, payload, record) in records {
        let fut = {
            let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
            if let Some(k) = &key {
                r = r.key(k.as_slice());
            }
            if let Some(p) = &payload {
                r = r.payload(p.as_slice());
            }
            loop {
                match producer.send_result(r) {
                    Ok(f) => break f,
                    Err((_, back)) => {
                        r = back;
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
        };
        futures.push((fut, key, payload, record));
    }
    let mut out = Vec::with_capacity(futures.len());
    for (fut, key, payload, record) in futures {
        let delivery = fut
            .await
            .expect("delivery future")
            .map_err(|(e, _)| e)
            .expect("broker acked the record");
        out.push(Produced {
            partition: delivery.partition,
            offset: delivery.offset,
            position: layout
                .base(delivery.partition)
                .expect("a partition of the layout")
                .position(KafkaOffset(delivery.offset))
                .to_db(),
            key,
            payload,
            record,
        });
    }
    out
}

pub async fn produce(
    producer: &TestProducer,
    topic: &str,
    records: Vec<RoomRecord>,
) -> Vec<Produced> {
    let raw = records
        .into_iter()
        .map(|r| (Some(r.key().into_bytes()), Some(r.encode()), Some(r)))
        .collect();
    produce_raw(producer, topic, raw).await
}

/// A persister config for a test topic and database.
pub fn config(kafka: &KafkaConfig, database_url: &str, group: &str) -> Config {
    let mut config = Config::from_env(&Env::from_pairs([
        ("KAFKA_BROKERS", kafka.brokers.as_str()),
        ("CONFAB_KAFKA_TOPIC", kafka.topic.as_str()),
        ("DATABASE_URL", database_url),
        ("CONFAB_PERSISTER_GROUP", group),
        ("CONFAB_PERSISTER_ADDR", "127.0.0.1:0"),
        ("CONFAB_PERSISTER_SESSION_TIMEOUT_MS", "6000"),
        ("CONFAB_PERSISTER_LAG_INTERVAL_MS", "300"),
        ("CONFAB_PERSISTER_RETRY_MAX_MS", "500"),
    ]))
    .expect("valid test config");
    config.kafka = kafka.clone();
    config
}

/// A persister running in this process.
pub struct Instance {
    pub stats: Stats,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), PersisterError>>,
}

impl Instance {
    pub async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let persister = Persister::new(config);
        let stats = persister.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(persister.run(listener, shutdown.clone()));
        Self {
            stats,
            addr,
            shutdown,
            task,
        }
    }

    /// Shuts down gracefully and returns run's result.
    pub async fn stop(self) -> Result<(), PersisterError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("persister stops within 30 s")
            .expect("persister task did not panic")
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .expect("http request");
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn db(url: &str) -> tokio_postgres::Client {
    confab_common::db::connect(url).await.expect("connect")
}

pub async fn count(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

/// Waits until `messages` holds `n` rows (or fails if it ever holds more).
pub async fn wait_for_rows(url: &str, n: i64, timeout: Duration) {
    let client = db(url).await;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let have = count(&client, "messages").await;
        assert!(
            have <= n,
            "messages holds {have} rows, expected at most {n}"
        );
        if have == n {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?}: messages holds {have} of {n} rows");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn stored_rows(url: &str) -> Vec<StoredRow> {
    let client = db(url).await;
    let rows = client
        .query(
            "SELECT kafka_partition, stream_offset, room_id, id, kind, user_id, username, data::text,
                    (extract(epoch FROM created_at) * 1000)::int8
             FROM messages ORDER BY kafka_partition, stream_offset",
            &[],
        )
        .await
        .expect("read messages");
    rows.iter()
        .map(|r| StoredRow {
            partition: r.get(0),
            offset: r.get(1),
            room_id: r.get(2),
            id: r.get(3),
            kind: r.get(4),
            user_id: r.get(5),
            username: r.get(6),
            data: r.get(7),
            created_ms: r.get(8),
        })
        .collect()
}

/// Asserts that `messages` holds exactly the good records of `produced`,
/// each once, at its partition and offset, with its data byte for byte.
pub async fn assert_exactly_once(url: &str, produced: &[Produced]) {
    let mut expected: Vec<StoredRow> = produced.iter().filter_map(StoredRow::expected).collect();
    expected.sort();
    let stored = stored_rows(url).await;
    let mut missing = 0;
    let by_key: BTreeMap<(i32, i64), &StoredRow> = stored
        .iter()
        .map(|r| ((r.partition, r.offset), r))
        .collect();
    let acked_at: std::collections::HashMap<Uuid, (i32, i64)> = expected
        .iter()
        .map(|e| (e.id, (e.partition, e.offset)))
        .collect();
    for e in &expected {
        match by_key.get(&(e.partition, e.offset)) {
            Some(s) => assert_eq!(
                *s,
                e,
                "stored row differs from the record; the stored record is the one at {:?}",
                acked_at.get(&s.id)
            ),
            None => missing += 1,
        }
    }
    assert_eq!(missing, 0, "{missing} records are missing from messages");
    assert_eq!(stored.len(), expected.len(), "messages holds extra rows");
    let ids: std::collections::BTreeSet<Uuid> = stored.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), stored.len(), "a record id is stored twice");
}

/// The group's committed offsets for `topic`, per partition.
pub fn committed(kafka: &KafkaConfig, group: &str, partitions: i32) -> BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = confab_common::kafka::consumer_config(kafka, Some(group))
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(&kafka.topic, p);
    }
    let c = consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .expect("committed offsets");
    c.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Per partition, one past the last produced offset.
pub fn ends(produced: &[Produced]) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for p in produced {
        let e = ends.entry(p.partition).or_insert(0);
        *e = (*e).max(p.offset + 1);
    }
    ends
}

/// Waits until the group has committed exactly `ends`.
pub async fn wait_for_commits(
    kafka: &KafkaConfig,
    group: &str,
    partitions: i32,
    ends: &BTreeMap<i32, i64>,
) {
    let mut last = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let (k, g) = (kafka.clone(), group.to_owned());
        last = tokio::task::spawn_blocking(move || committed(&k, &g, partitions))
            .await
            .unwrap();
        if last == *ends {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("committed offsets {last:?}, expected {ends:?}");
}

/// A PostgreSQL server of the test's own, which it may stop and start: the
/// shared one must never be stopped. It runs `initdb` and `pg_ctl` from
/// `/usr/lib/postgresql/*/bin` in a temporary directory on a free port, as
/// the `postgres` user when the tests run as root.
pub struct OwnPostgres {
    bin: std::path::PathBuf,
    dir: std::path::PathBuf,
    pub port: u16,
}

impl OwnPostgres {
    pub fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("pg_ctl").exists())
            .expect("pg_ctl under /usr/lib/postgresql/*/bin");
        let dir = std::env::temp_dir().join(format!("confab-pg-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Self { bin, dir, port };
        if pg.as_root() {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&pg.dir)
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown the data directory to postgres");
        }
        pg.run(
            "initdb",
            &[
                "-D",
                pg.data().to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.up();
        pg
    }

    fn as_root(&self) -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false)
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.join("data")
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut cmd = if self.as_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            std::process::Command::new(&program)
        };
        let out = cmd.args(args).output().expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server and waits until it accepts connections.
    pub fn up(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server the hard way, as a crash would.
    pub fn down(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates and migrates database `name`; returns its URL.
    pub async fn database(&self, name: &str) -> String {
        let admin = confab_common::db::connect(&self.url("postgres"))
            .await
            .expect("connect to own postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let url = self.url(name);
        let mut client = confab_common::db::connect(&url).await.unwrap();
        confab_common::db::migrate(&mut client).await.unwrap();
        url
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if self.as_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            std::process::Command::new(&program)
        };
        let _ = cmd
            .args(["-D", data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
