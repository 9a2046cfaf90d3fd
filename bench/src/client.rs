//! Bench connections: open, connect, subscribe, then one reader task per
//! connection that answers pings and records every delivery; publisher tasks
//! write paced publishes on chosen connections.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use futures::StreamExt as _;
use indicatif::ProgressBar;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::proto::{self, Incoming};
use crate::stats::ShardedHistogram;
use crate::ws::{self, WsRead, WsTarget, WsWrite};

/// Now, in Unix nanoseconds.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Counters shared by every connection of a run.
#[derive(Debug, Default)]
pub struct Counters {
    /// Publications of this run received, over all connections.
    pub deliveries: AtomicU64,
    /// Publications not from this run (member events, other traffic).
    pub foreign: AtomicU64,
    /// Publish commands written.
    pub publishes_sent: AtomicU64,
    /// Publish replies without error.
    pub acks: AtomicU64,
    /// Publish replies with an error.
    pub publish_errors: AtomicU64,
    /// Publishes skipped because too many were in flight on the connection.
    pub throttled: AtomicU64,
    /// Publishes skipped because the publisher fell more than a second behind.
    pub behind: AtomicU64,
    /// Server pings answered.
    pub pings: AtomicU64,
    /// Connections the server closed or disconnected during the run.
    pub closed_by_server: AtomicU64,
    /// Connections that failed on a read or write error.
    pub io_errors: AtomicU64,
    /// Lines that did not parse.
    pub parse_errors: AtomicU64,
}

/// What every connection of one run shares.
#[derive(Debug)]
pub struct Shared {
    /// The run id embedded in every publication, so other runs' traffic is ignored.
    pub run: String,
    /// Publish-to-deliver latency, microseconds.
    pub deliver: ShardedHistogram,
    /// Publish-to-ack latency, microseconds.
    pub ack: ShardedHistogram,
    pub counters: Counters,
    /// Publications sent before this Unix-ns time are counted but not recorded
    /// in the histograms (warm-up).
    pub record_after_ns: AtomicU64,
    /// Acks per room index, to know how many deliveries to expect.
    pub acks_per_room: Vec<AtomicU64>,
    /// Error codes seen in replies, with counts.
    pub error_codes: Mutex<BTreeMap<u32, u64>>,
    /// Disconnect reasons pushed by the server, with counts.
    pub disconnects: Mutex<BTreeMap<String, u64>>,
    /// Offsets of this run's publications by `seq`, when a scenario wants them.
    pub offsets: Option<Mutex<HashMap<u64, u64>>>,
    /// When the last delivery of this run arrived, Unix ns.
    pub last_delivery_ns: AtomicU64,
}

impl Shared {
    pub fn new(run: String, rooms: usize, track_offsets: bool) -> Self {
        Self {
            run,
            deliver: ShardedHistogram::new(16),
            ack: ShardedHistogram::new(4),
            counters: Counters::default(),
            record_after_ns: AtomicU64::new(0),
            acks_per_room: (0..rooms).map(|_| AtomicU64::new(0)).collect(),
            error_codes: Mutex::new(BTreeMap::new()),
            disconnects: Mutex::new(BTreeMap::new()),
            offsets: track_offsets.then(|| Mutex::new(HashMap::new())),
            last_delivery_ns: AtomicU64::new(0),
        }
    }

    fn count_error(&self, code: u32) {
        *self
            .error_codes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code)
            .or_default() += 1;
    }
}

/// How to open one connection.
#[derive(Debug, Clone)]
pub struct ConnSpec {
    /// Position in the run; also the histogram shard hint.
    pub index: usize,
    /// Which of the run's servers to connect to (an index into the targets).
    pub server: usize,
    /// Ask for join and leave pushes on subscribe.
    pub join_leave: bool,
    /// The access token for `connect`.
    pub token: Arc<str>,
    /// The room index this connection belongs to, if any.
    pub room: Option<usize>,
    /// Channels to subscribe to, each with its subscription token.
    pub subs: Vec<(Arc<str>, Arc<str>)>,
    /// Local address to bind before connecting.
    pub source: Option<IpAddr>,
}

/// An open, connected and subscribed bench connection.
pub struct Conn {
    pub index: usize,
    pub room: Option<usize>,
    /// Shared by the reader (pongs) and a publisher.
    pub writer: tokio::sync::Mutex<WsWrite>,
    /// Commands in flight: id -> when written.
    pub pending: Mutex<HashMap<u32, Instant>>,
    next_id: AtomicU32,
    /// False once the reader has stopped.
    pub alive: AtomicBool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("index", &self.index)
            .field("room", &self.room)
            .field("alive", &self.alive)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// The next command id.
    pub fn next_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Writes one text frame.
    pub async fn send(&self, payload: Vec<u8>) -> anyhow::Result<()> {
        self.writer
            .lock()
            .await
            .write_frame(ws::text_frame(payload))
            .await?;
        Ok(())
    }
}

/// Waits for the reply to command `id`, answering pings on the way.
async fn await_reply(
    read: &mut WsRead,
    writer: &tokio::sync::Mutex<WsWrite>,
    id: u32,
    what: &str,
) -> anyhow::Result<()> {
    loop {
        let buf = match ws::read_text(read, writer).await? {
            ws::Read::Text(b) => b,
            ws::Read::Closed => bail!("{what}: server closed the connection"),
        };
        // Every line of the frame is handled (a ping may follow the reply).
        let mut outcome = None;
        for line in proto::lines(&buf) {
            match proto::parse_line(line)? {
                Incoming::Ping => {
                    writer
                        .lock()
                        .await
                        .write_frame(ws::text_frame(proto::PONG.to_vec()))
                        .await?
                }
                Incoming::Ok { id: got } if got == id => outcome = Some(Ok(())),
                Incoming::Error { id: got, error } if got == id => {
                    outcome = Some(Err(anyhow::anyhow!(
                        "{what} error {}: {}",
                        error.code,
                        error.message
                    )))
                }
                Incoming::Disconnect(d) => bail!("{what}: disconnect {} {}", d.code, d.reason),
                _ => {}
            }
        }
        if let Some(outcome) = outcome {
            return outcome;
        }
    }
}

/// Opens, connects and subscribes one connection, then spawns its reader.
pub async fn establish(
    target: &WsTarget,
    spec: ConnSpec,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tracker: &TaskTracker,
    timeout: Duration,
) -> anyhow::Result<Arc<Conn>> {
    let (mut read, write) = ws::open(target, spec.source, timeout).await?;
    let writer = tokio::sync::Mutex::new(write);
    let handshake = async {
        writer
            .lock()
            .await
            .write_frame(ws::text_frame(proto::connect_command(
                1,
                &spec.token,
                "bench",
            )))
            .await?;
        await_reply(&mut read, &writer, 1, "connect").await?;
        let mut id = 2;
        for (channel, token) in &spec.subs {
            writer
                .lock()
                .await
                .write_frame(ws::text_frame(proto::subscribe_command(
                    id,
                    channel,
                    token,
                    spec.join_leave,
                )))
                .await?;
            await_reply(&mut read, &writer, id, "subscribe").await?;
            id += 1;
        }
        anyhow::Ok(id)
    };
    let next_id = tokio::time::timeout(timeout, handshake)
        .await
        .context("connect/subscribe timed out")??;
    let conn = Arc::new(Conn {
        index: spec.index,
        room: spec.room,
        writer,
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU32::new(next_id),
        alive: AtomicBool::new(true),
    });
    tracker.spawn(reader(read, conn.clone(), shared, stop));
    Ok(conn)
}

async fn reader(mut read: WsRead, conn: Arc<Conn>, shared: Arc<Shared>, stop: CancellationToken) {
    let c = &shared.counters;
    'outer: loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                // A polite close; the socket is dropped either way.
                let close = async {
                    conn.writer.lock().await.write_frame(fastwebsockets::Frame::close(1000, b"")).await
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
                break;
            }
            r = ws::read_text(&mut read, &conn.writer) => r,
        };
        let buf = match next {
            Ok(ws::Read::Text(b)) => b,
            Ok(ws::Read::Closed) => {
                if !stop.is_cancelled() {
                    c.closed_by_server.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
            Err(_) => {
                if !stop.is_cancelled() {
                    c.io_errors.fetch_add(1, Ordering::Relaxed);
                }
                break;
            }
        };
        for line in proto::lines(&buf) {
            let parsed = match proto::parse_line(line) {
                Ok(p) => p,
                Err(_) => {
                    c.parse_errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            match parsed {
                Incoming::Ping => {
                    c.pings.fetch_add(1, Ordering::Relaxed);
                    if conn.send(proto::PONG.to_vec()).await.is_err() {
                        c.io_errors.fetch_add(1, Ordering::Relaxed);
                        break 'outer;
                    }
                }
                Incoming::Ok { id } => {
                    let sent = conn
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    if let Some(sent) = sent {
                        c.acks.fetch_add(1, Ordering::Relaxed);
                        if let Some(room) = conn.room {
                            shared.acks_per_room[room].fetch_add(1, Ordering::Relaxed);
                        }
                        shared
                            .ack
                            .record(conn.index, sent.elapsed().as_micros() as u64);
                    }
                }
                Incoming::Error { id, error } => {
                    let sent = conn
                        .pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    if sent.is_some() {
                        c.publish_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    shared.count_error(error.code);
                }
                Incoming::Publication { publication, .. } => {
                    let now = unix_nanos();
                    let data = publication.data.and_then(proto::bench_data);
                    match data {
                        Some(d) if d.run == shared.run => {
                            c.deliveries.fetch_add(1, Ordering::Relaxed);
                            shared.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
                            if d.t >= shared.record_after_ns.load(Ordering::Relaxed) {
                                shared
                                    .deliver
                                    .record(conn.index, now.saturating_sub(d.t) / 1000);
                            }
                            if let Some(offsets) = &shared.offsets {
                                offsets
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .insert(d.seq, publication.offset);
                            }
                        }
                        _ => {
                            c.foreign.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Incoming::Disconnect(d) => {
                    *shared
                        .disconnects
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(format!("{} {}", d.code, d.reason))
                        .or_default() += 1;
                    c.closed_by_server.fetch_add(1, Ordering::Relaxed);
                    break 'outer;
                }
                Incoming::OtherPush => {}
            }
        }
    }
    conn.alive.store(false, Ordering::Relaxed);
}

/// Spreads sends evenly: credit accrues at `rate` per second and each whole
/// unit is one send. Credit beyond `cap` seconds' worth is dropped and counted,
/// so a stalled publisher does not burst when it wakes.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: f64,
    cap: f64,
    credit: f64,
}

impl Pacer {
    pub fn new(rate_per_sec: f64, cap_secs: f64) -> Self {
        Self {
            rate: rate_per_sec.max(0.0),
            cap: (rate_per_sec * cap_secs).max(1.0),
            credit: 0.0,
        }
    }

    /// After `elapsed` more time: how many sends are due, and how many were dropped.
    pub fn advance(&mut self, elapsed: Duration) -> (u64, u64) {
        self.credit += self.rate * elapsed.as_secs_f64();
        let mut dropped = 0;
        if self.credit > self.cap {
            dropped = (self.credit - self.cap).floor() as u64;
            self.credit -= dropped as f64;
        }
        let due = self.credit.floor();
        self.credit -= due;
        (due as u64, dropped)
    }

    /// The tick period: as slow as the rate allows, at most 100 ms, at least 1 ms.
    pub fn tick(&self) -> Duration {
        if self.rate <= 0.0 {
            return Duration::from_millis(100);
        }
        Duration::from_secs_f64((1.0 / self.rate).clamp(0.001, 0.1))
    }
}

/// What a publisher needs.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    pub channel: Arc<str>,
    /// Messages per second from this publisher.
    pub rate: f64,
    /// Padding added to `text`, in bytes.
    pub text: Arc<str>,
    /// Delay before the first send, to spread publishers over the tick.
    pub phase: Duration,
    /// Most publishes in flight on the connection before sends are skipped.
    pub max_inflight: usize,
}

/// Publishes on `conn` until `deadline` or `stop`. `seq` numbers are unique
/// per run; `sent_log` (if given) learns when each `seq` was written.
pub async fn publisher(
    conn: Arc<Conn>,
    plan: PublishPlan,
    shared: Arc<Shared>,
    seq: Arc<AtomicU64>,
    deadline: tokio::time::Instant,
    stop: CancellationToken,
    sent_log: Option<Arc<Mutex<HashMap<u64, Instant>>>>,
) {
    let c = &shared.counters;
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tokio::time::sleep(plan.phase) => {}
    }
    let mut pacer = Pacer::new(plan.rate, 1.0);
    let mut interval = tokio::time::interval(pacer.tick());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = tokio::time::Instant::now();
    // The first send happens right away.
    let mut first = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline || !conn.alive.load(Ordering::Relaxed) {
            return;
        }
        let (mut due, dropped) = pacer.advance(now - last);
        last = now;
        if first {
            due = due.max(1);
            first = false;
        }
        c.behind.fetch_add(dropped, Ordering::Relaxed);
        for _ in 0..due {
            if conn.pending.lock().unwrap_or_else(|p| p.into_inner()).len() >= plan.max_inflight {
                c.throttled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let id = conn.next_id();
            let s = seq.fetch_add(1, Ordering::Relaxed);
            let data = proto::BenchData {
                text: &plan.text,
                t: unix_nanos(),
                seq: s,
                run: &shared.run,
            };
            let cmd = proto::publish_command(id, &plan.channel, &data);
            let at = Instant::now();
            conn.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, at);
            if let Some(log) = &sent_log {
                log.lock().unwrap_or_else(|p| p.into_inner()).insert(s, at);
            }
            if conn.send(cmd).await.is_err() {
                c.io_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            c.publishes_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How to ramp up connections.
#[derive(Debug, Clone)]
pub struct RampOpts {
    /// Connections being opened at once.
    pub concurrency: usize,
    /// New connections per second; 0 means as fast as `concurrency` allows.
    pub rate: f64,
    /// Per-connection timeout for open + connect + subscribe.
    pub timeout: Duration,
}

/// The outcome of a ramp.
#[derive(Debug, Default)]
pub struct RampResult {
    pub conns: Vec<Arc<Conn>>,
    pub failed: u64,
    /// Failure messages, with counts.
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

/// Shortens an error into a stable key for counting.
pub fn error_key(e: &anyhow::Error) -> String {
    let mut s = format!("{e:#}");
    if s.len() > 140 {
        let mut cut = 140;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Opens every spec, `opts.concurrency` at a time, each to its server among
/// `targets`, calling `on_step(done)` after each attempt. Stops early when
/// `interrupt` fires.
#[allow(clippy::too_many_arguments)]
pub async fn ramp(
    targets: &[WsTarget],
    specs: Vec<ConnSpec>,
    shared: &Arc<Shared>,
    opts: &RampOpts,
    pb: &ProgressBar,
    stop: &CancellationToken,
    interrupt: &CancellationToken,
    tracker: &TaskTracker,
    mut on_step: impl FnMut(usize),
) -> RampResult {
    let start = tokio::time::Instant::now();
    let per = (opts.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / opts.rate));
    let mut stream = futures::stream::iter(specs.into_iter().enumerate())
        .map(|(i, spec)| {
            let shared = shared.clone();
            let stop = stop.clone();
            async move {
                if let Some(per) = per {
                    tokio::time::sleep_until(start + per * i as u32).await;
                }
                let target = targets
                    .get(spec.server)
                    .with_context(|| format!("no server #{}", spec.server))?;
                establish(target, spec, shared, stop, tracker, opts.timeout).await
            }
        })
        .buffer_unordered(opts.concurrency.max(1));
    let mut out = RampResult::default();
    let mut done = 0;
    loop {
        let next = tokio::select! {
            _ = interrupt.cancelled() => break,
            n = stream.next() => n,
        };
        let Some(res) = next else { break };
        match res {
            Ok(conn) => out.conns.push(conn),
            Err(e) => {
                out.failed += 1;
                *out.errors.entry(error_key(&e)).or_default() += 1;
            }
        }
        done += 1;
        pb.set_position(done as u64);
        on_step(done);
    }
    out.elapsed = start.elapsed();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spreads_a_rate() {
        let mut p = Pacer::new(10.0, 1.0);
        let mut total = 0;
        for _ in 0..100 {
            let (due, dropped) = p.advance(Duration::from_millis(10));
            assert_eq!(dropped, 0);
            assert!(due <= 1);
            total += due;
        }
        // One second at 10/s.
        assert!((9..=10).contains(&total), "{total}");
        assert_eq!(p.tick(), Duration::from_millis(100));
    }

    #[test]
    fn pacer_bursts_within_a_tick_at_high_rates() {
        let mut p = Pacer::new(5000.0, 1.0);
        assert_eq!(p.tick(), Duration::from_millis(1));
        let (due, _) = p.advance(Duration::from_millis(1));
        assert_eq!(due, 5);
    }

    #[test]
    fn pacer_drops_credit_after_a_stall() {
        let mut p = Pacer::new(100.0, 1.0);
        let (due, dropped) = p.advance(Duration::from_secs(5));
        assert_eq!(due, 100);
        assert_eq!(dropped, 400);
    }

    #[test]
    fn error_keys_are_bounded() {
        let e = anyhow::anyhow!("{}", "x".repeat(500)).context("outer");
        let k = error_key(&e);
        assert!(k.starts_with("outer: xxx"));
        assert!(k.chars().count() <= 141);
    }
}
