//! A private Apache Kafka cluster for fault tests.
//!
//! [`KafkaCluster::start`] runs one or three nodes with `ops/kafka/broker`
//! (the script `ops/dev` uses) in a temporary directory on free ports. Tests
//! can kill and restart nodes and watch partition leaders move. Clusters are
//! heavy (a JVM per node on a small machine), so only one exists at a time on
//! the machine: a process-wide mutex and a lock file under /tmp serialize
//! them, across test binaries too. Dropping the cluster kills its nodes and
//! removes its directory, unless the test is panicking (then the logs stay
//! for inspection and the path is printed).

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::config::KafkaConfig;

/// Only one cluster at a time in this process.
static CLUSTER_MUTEX: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The machine-wide lock file, held with flock(1).
const LOCK_FILE: &str = "/tmp/confab-kafka-cluster.lock";

/// How long a cluster or a node may take to start on a busy machine.
const START_TIMEOUT_SECS: u32 = 180;

/// How [`KafkaCluster::kill`] stops a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: a controlled shutdown (the node hands its leaderships over
    /// first), waited for.
    Term,
    /// SIGKILL: a crash.
    Kill,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
        }
    }
}

/// One partition as the cluster's metadata describes it. Nodes are numbered
/// from 1, as Kafka's node ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    pub leader: Option<usize>,
    pub replicas: Vec<usize>,
    pub isr: Vec<usize>,
}

/// A running cluster of 1 or 3 nodes; see the module docs.
#[derive(Debug)]
pub struct KafkaCluster {
    dir: PathBuf,
    nodes: usize,
    port: u16,
    /// Held for the cluster's life: no other cluster starts meanwhile.
    _lock: ClusterLock,
}

impl KafkaCluster {
    /// Starts a cluster of `nodes` (1 or 3) and waits until every node is
    /// ready. Waits first for any other test's cluster to be dropped.
    pub async fn start(nodes: usize) -> Self {
        assert!(nodes == 1 || nodes == 3, "a cluster has 1 or 3 nodes");
        let lock = ClusterLock::acquire().await;
        let mut last = String::new();
        // A free port can be taken between the check and the broker's bind:
        // then try others.
        for _ in 0..3 {
            let port = free_base_port(nodes);
            let dir = std::env::temp_dir()
                .join(format!("confab-kafka-{}", uuid::Uuid::new_v4().simple()));
            let out = broker(&[
                "start",
                "--dir",
                path_str(&dir),
                "--nodes",
                &nodes.to_string(),
                "--port",
                &port.to_string(),
                "--timeout",
                &START_TIMEOUT_SECS.to_string(),
                "--watch",
                &std::process::id().to_string(),
            ])
            .await;
            if out.status.success() {
                return Self {
                    dir,
                    nodes,
                    port,
                    _lock: lock,
                };
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            eprintln!("kafka cluster did not start on base port {port}:\n{last}");
            kill_all(&dir);
            let _ = std::fs::remove_dir_all(&dir);
        }
        panic!("could not start a {nodes}-node Kafka cluster:\n{last}");
    }

    /// The bootstrap servers: every node's client address.
    pub fn brokers(&self) -> String {
        (1..=self.nodes)
            .map(|node| format!("127.0.0.1:{}", self.client_port(node)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The cluster's directory: `node-I/logs` holds each node's logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kafka settings for a fresh topic on this cluster, created with the
    /// cluster's replication (3 on three nodes). The produce timeout outlasts
    /// a failover.
    pub async fn test_topic(&self, partitions: i32) -> KafkaConfig {
        super::test_topic_on(&self.brokers(), partitions).await
    }

    /// Stops node `node` (1-based) with `signal` and waits until it is gone.
    pub async fn kill(&self, node: usize, signal: Signal) {
        self.check_node(node);
        let out = broker(&[
            "stop",
            "--dir",
            path_str(&self.dir),
            "--node",
            &node.to_string(),
            "--signal",
            signal.name(),
        ])
        .await;
        assert_success("stop", &out);
    }

    /// Starts node `node` again, on its old data, and waits until it is
    /// ready. It may not be back in every ISR yet: see [`Self::wait_healthy`].
    pub async fn start_node(&self, node: usize) {
        self.check_node(node);
        let out = broker(&[
            "start",
            "--dir",
            path_str(&self.dir),
            "--node",
            &node.to_string(),
            "--timeout",
            &START_TIMEOUT_SECS.to_string(),
            "--watch",
            &std::process::id().to_string(),
        ])
        .await;
        assert_success("start", &out);
    }

    /// The partition's current state, or `None` if no live node reports the
    /// topic.
    pub async fn partition(&self, topic: &str, partition: i32) -> Option<PartitionState> {
        let metadata = self.metadata(Some(topic)).await?;
        let topic = metadata.topics().iter().find(|t| t.name() == topic)?;
        let p = topic.partitions().iter().find(|p| p.id() == partition)?;
        Some(PartitionState {
            leader: node_id(p.leader()),
            replicas: p.replicas().iter().filter_map(|&id| node_id(id)).collect(),
            isr: p.isr().iter().filter_map(|&id| node_id(id)).collect(),
        })
    }

    /// The node leading `topic`'s `partition`, if it has a leader.
    pub async fn leader_of(&self, topic: &str, partition: i32) -> Option<usize> {
        self.partition(topic, partition).await?.leader
    }

    /// Waits (up to a minute) until every node is registered and every
    /// partition of every topic has a leader and all its replicas in sync.
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let problem = match self.metadata(None).await {
                None => "no metadata".to_owned(),
                Some(metadata) => unhealthy(&metadata, self.nodes).unwrap_or_default(),
            };
            if problem.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Kafka cluster not healthy after 60 s: {problem} (logs in {})",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn client_port(&self, node: usize) -> u16 {
        self.port + 10 * (node as u16 - 1)
    }

    fn check_node(&self, node: usize) {
        assert!(
            (1..=self.nodes).contains(&node),
            "node {node} is not in 1..={}",
            self.nodes
        );
    }

    /// Metadata from whichever node answers, or `None` within 5 s.
    async fn metadata(&self, topic: Option<&str>) -> Option<Metadata> {
        let brokers = self.brokers();
        let topic = topic.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("log_level", "3")
                .create()
                .ok()?;
            consumer
                .fetch_metadata(topic.as_deref(), Duration::from_secs(5))
                .ok()
        })
        .await
        .expect("metadata task")
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        kill_all(&self.dir);
        if std::thread::panicking() {
            eprintln!("Kafka cluster logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What keeps `metadata` from being healthy, if anything.
fn unhealthy(metadata: &Metadata, nodes: usize) -> Option<String> {
    if metadata.brokers().len() != nodes {
        return Some(format!(
            "{} of {nodes} nodes registered",
            metadata.brokers().len()
        ));
    }
    for topic in metadata.topics() {
        for p in topic.partitions() {
            let mut isr = p.isr().to_vec();
            let mut replicas = p.replicas().to_vec();
            isr.sort_unstable();
            replicas.sort_unstable();
            if p.leader() < 0 || isr != replicas {
                return Some(format!(
                    "{} partition {}: leader {}, replicas {replicas:?}, isr {isr:?}",
                    topic.name(),
                    p.id(),
                    p.leader()
                ));
            }
        }
    }
    None
}

fn node_id(id: i32) -> Option<usize> {
    usize::try_from(id).ok().filter(|&id| id > 0)
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the repository")
        .join("ops/kafka/broker")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp dir")
}

/// Runs `ops/kafka/broker` with `args`; its log goes to the test's stderr.
async fn broker(args: &[&str]) -> Output {
    let out = Command::new(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run ops/kafka/broker");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "ops/kafka/broker {what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills every node of the cluster in `dir` and waits until they are gone.
fn kill_all(dir: &Path) {
    let _ = std::process::Command::new(script())
        .args(["stop", "--dir", path_str(dir), "--signal", "KILL"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A base port with the client and controller ports of every node free.
/// It stays below Linux's ephemeral range (32768 and up), so outgoing
/// connections do not take it meanwhile.
fn free_base_port(nodes: usize) -> u16 {
    for _ in 0..100 {
        let random = u16::from_le_bytes(
            uuid::Uuid::new_v4().as_bytes()[..2]
                .try_into()
                .expect("two bytes"),
        );
        let base = 20_000 + (random % 1_200) * 10;
        let all_free = (0..nodes as u16).all(|i| {
            [base + 10 * i, base + 10 * i + 1]
                .iter()
                .all(|&port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok())
        });
        if all_free {
            return base;
        }
    }
    panic!("no free ports for a Kafka cluster");
}

/// The process-wide mutex plus the machine-wide lock file. The file lock is
/// held by a `flock` child whose stdin is ours: if this process dies, its
/// stdin closes, the child exits and the lock is free again.
#[derive(Debug)]
struct ClusterLock {
    _guard: tokio::sync::MutexGuard<'static, ()>,
    _holder: Child,
}

impl ClusterLock {
    async fn acquire() -> Self {
        let guard = CLUSTER_MUTEX.lock().await;
        let mut holder = Command::new("flock")
            .args([
                "-o",
                LOCK_FILE,
                "sh",
                "-c",
                "echo locked && exec cat >/dev/null",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run flock (util-linux)");
        let stdout = holder.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .expect("read from flock");
        assert_eq!(line.trim(), "locked", "flock {LOCK_FILE} failed");
        Self {
            _guard: guard,
            _holder: holder,
        }
    }
}
