//! The four scenarios. Each sets up its own users and rooms (over Confab's
//! REST API, or locally for Centrifugo, see [`crate::target`]), opens its
//! connections, runs for a bounded time and returns a [`Report`]. The
//! measuring code is the same for both targets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::{Common, Traffic};
use crate::client::{self, ConnSpec, PublishPlan, RampOpts, Shared};
use crate::report::{ConnStats, MemoryStats, PersistStats, Report, TrafficStats};
use crate::rest::{Api, BenchUser, Room};
use crate::stats::{self, ShardedHistogram};
use crate::sys::{self, Server};
use crate::target::{self, Target};
use crate::ws::WsTarget;

/// The password of every bench user.
const PASSWORD: &str = "bench-password-1";
/// Points per CDF series.
const CDF_POINTS: usize = 300;

/// What every scenario needs.
#[derive(Debug)]
pub struct Ctx {
    pub common: Common,
    /// Which server this run talks to.
    pub kind: Target,
    /// Eight hex digits, unique per run; in usernames, room names and every message.
    pub run: String,
    /// Confab's REST API (unused for Centrifugo).
    pub api: Api,
    /// The servers' WebSocket endpoints; connections are spread over them.
    pub targets: Vec<WsTarget>,
    /// The server processes, for CPU and RSS (no pids: figures left out).
    pub server: Server,
    /// Why no server pid is known, when none is.
    pub pid_error: Option<String>,
    /// Fires on Ctrl-C.
    pub interrupt: CancellationToken,
    pub report: Report,
    /// The servers' Prometheus endpoints.
    pub metrics_urls: Vec<String>,
    /// Their counters when the run started, if they all answered.
    pub metrics_before: Option<std::collections::BTreeMap<String, f64>>,
}

/// The servers' counters now, summed, if every `/metrics` answers.
pub async fn scrape(
    urls: &[String],
    prefix: &str,
) -> Option<std::collections::BTreeMap<String, f64>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let mut sum = std::collections::BTreeMap::new();
    for url in urls {
        let text = http.get(url).send().await.ok()?.text().await.ok()?;
        for (k, v) in sys::parse_server_metrics(&text, prefix) {
            *sum.entry(k).or_insert(0.0) += v;
        }
    }
    Some(sum)
}

impl Ctx {
    fn progress(&self, len: u64, what: &str) -> ProgressBar {
        if self.common.quiet {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new(len);
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix:>12} [{bar:36}] {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        pb.set_prefix(what.to_owned());
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }

    /// Records how the server's counters moved since the start; called
    /// before the bench closes its connections, so the close storm is left out.
    async fn record_server_metrics(&mut self) {
        let now = scrape(&self.metrics_urls, self.kind.metrics_prefix()).await;
        if let (Some(a), Some(b)) = (&self.metrics_before, now) {
            self.report.server_metrics = sys::metric_deltas(a, &b);
        }
    }

    /// The first server's address, for choosing source addresses.
    fn server_ip(&self) -> std::net::IpAddr {
        self.targets[0].addr.ip()
    }

    /// Sleeps, or returns early (false) on Ctrl-C.
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            _ = self.interrupt.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

/// Users and rooms made over REST, with the tokens connections need.
#[derive(Debug)]
struct Fixture {
    users: Vec<BenchUser>,
    rooms: Vec<Room>,
    /// Per room: the access token of its owner, whom its connections act as.
    access: Vec<Arc<str>>,
    /// Per room: the owner's subscription token for the room's channel.
    sub_tokens: Vec<Arc<str>>,
    /// Whether subscribers ask for join and leave pushes.
    join_leave: bool,
}

fn default_users(rooms: usize, asked: usize) -> usize {
    if asked > 0 {
        asked
    } else {
        rooms.clamp(1, 20)
    }
}

async fn setup(ctx: &Ctx, rooms: usize, users: usize) -> anyhow::Result<Fixture> {
    let keys = target::keys_for(ctx.kind, ctx.common.jwt_secret.as_deref())?;
    let mut fx = match (ctx.kind, keys) {
        (Target::Centrifugo, Some(keys)) => local_setup(&ctx.run, rooms, users, &keys),
        (_, keys) => rest_setup(ctx, rooms, users, keys).await?,
    };
    fx.join_leave = ctx.common.join_leave;
    Ok(fx)
}

/// Centrifugo: users exist only in their tokens and rooms only as channel
/// names; the tokens carry the claims auth-api would issue.
fn local_setup(
    run: &str,
    rooms: usize,
    users: usize,
    keys: &confab_common::jwt::JwtKeys,
) -> Fixture {
    let users: Vec<BenchUser> = (0..users.max(1))
        .map(|i| target::local_user(keys, &format!("bench_{run}_{i}")))
        .collect();
    let created: Vec<Room> = (0..rooms).map(|_| target::local_room()).collect();
    let sub_tokens = created
        .iter()
        .enumerate()
        .map(|(r, room)| {
            Arc::<str>::from(target::subscription_token(
                keys,
                &users[r % users.len()],
                room,
            ))
        })
        .collect();
    let access = (0..rooms)
        .map(|r| Arc::<str>::from(users[r % users.len()].token.as_str()))
        .collect();
    Fixture {
        users,
        rooms: created,
        access,
        sub_tokens,
        join_leave: false,
    }
}

/// Confab: register users and create rooms over REST, as any client does.
async fn rest_setup(
    ctx: &Ctx,
    rooms: usize,
    users: usize,
    keys: Option<confab_common::jwt::JwtKeys>,
) -> anyhow::Result<Fixture> {
    let pb = ctx.progress((users + rooms * 2) as u64, "setup");
    let api = &ctx.api;
    let run = &ctx.run;
    let users: Vec<BenchUser> = futures::stream::iter(0..users)
        .map(|i| {
            let pb = pb.clone();
            async move {
                let u = api
                    .register(&format!("bench_{run}_{i}"), PASSWORD)
                    .await
                    .context("registering a bench user")?;
                pb.inc(1);
                anyhow::Ok(u)
            }
        })
        .buffered(4)
        .try_collect()
        .await?;
    let users_ref = &users;
    let created: Vec<Room> = futures::stream::iter(0..rooms)
        .map(|r| {
            let pb = pb.clone();
            async move {
                let owner = &users_ref[r % users_ref.len()];
                let room = api
                    .create_room(&owner.token, &format!("bench {run} {r}"))
                    .await
                    .context("creating a bench room")?;
                pb.inc(1);
                anyhow::Ok(room)
            }
        })
        .buffered(8)
        .try_collect()
        .await?;
    let created_ref = &created;
    let keys_ref = &keys;
    let sub_tokens: Vec<Arc<str>> = futures::stream::iter(0..rooms)
        .map(|r| {
            let pb = pb.clone();
            async move {
                let owner = &users_ref[r % users_ref.len()];
                let room = &created_ref[r];
                let token = match keys_ref {
                    Some(k) => target::subscription_token(k, owner, room),
                    None => api
                        .subscription_token(&owner.token, room.id)
                        .await
                        .context("getting a subscription token")?,
                };
                pb.inc(1);
                anyhow::Ok(Arc::<str>::from(token))
            }
        })
        .buffered(8)
        .try_collect()
        .await?;
    pb.finish_and_clear();
    let access = (0..rooms)
        .map(|r| Arc::<str>::from(users[r % users.len()].token.as_str()))
        .collect();
    Ok(Fixture {
        users,
        rooms: created,
        access,
        sub_tokens,
        join_leave: false,
    })
}

/// Connection specs: connection `i` is in room `r = i % rooms` (none if there
/// are no rooms) and uses source address `i % sources`. With several servers,
/// a room's connections alternate between them, starting at server
/// `r % servers`, so every room spans the servers and publishers (each room's
/// first connections) are spread too.
fn specs(fx: &Fixture, n: usize, sources: &[std::net::IpAddr], servers: usize) -> Vec<ConnSpec> {
    let fallback: Arc<str> = Arc::from(fx.users[0].token.as_str());
    let servers = servers.max(1);
    let join_leave = fx.join_leave;
    (0..n)
        .map(|i| {
            let room = (!fx.rooms.is_empty()).then(|| i % fx.rooms.len());
            let server = match room {
                Some(r) => (i / fx.rooms.len() + r) % servers,
                None => i % servers,
            };
            ConnSpec {
                index: i,
                server,
                join_leave,
                token: room
                    .map(|r| fx.access[r].clone())
                    .unwrap_or_else(|| fallback.clone()),
                room,
                subs: room
                    .map(|r| {
                        vec![(
                            Arc::<str>::from(fx.rooms[r].channel.as_str()),
                            fx.sub_tokens[r].clone(),
                        )]
                    })
                    .unwrap_or_default(),
                source: (!sources.is_empty()).then(|| sources[i % sources.len()]),
            }
        })
        .collect()
}

fn ramp_opts(c: &Common) -> RampOpts {
    RampOpts {
        concurrency: c.connect_concurrency,
        rate: c.connect_rate,
        timeout: c.connect_timeout,
    }
}

fn conn_stats(target: usize, ramp: &client::RampResult, sources: &[std::net::IpAddr]) -> ConnStats {
    let secs = ramp.elapsed.as_secs_f64();
    ConnStats {
        target,
        established: ramp.conns.len(),
        failed: ramp.failed,
        errors: ramp.errors.clone(),
        ramp_secs: secs,
        connect_rate_per_sec: if secs > 0.0 {
            ramp.conns.len() as f64 / secs
        } else {
            0.0
        },
        source_addrs: sources.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn finish_conn_stats(cs: &mut ConnStats, ramp: &client::RampResult, shared: &Shared) {
    let c = &shared.counters;
    cs.alive_at_end = ramp
        .conns
        .iter()
        .filter(|c| c.alive.load(Ordering::Relaxed))
        .count();
    cs.closed_by_server = c.closed_by_server.load(Ordering::Relaxed);
    cs.io_errors = c.io_errors.load(Ordering::Relaxed);
    cs.pings = c.pings.load(Ordering::Relaxed);
    cs.disconnects = shared
        .disconnects
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
}

async fn shutdown(stop: &CancellationToken, tracker: &TaskTracker) {
    stop.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
}

/// `latency` and `fanout`: connections over rooms, paced publishers, every
/// delivery timed.
pub async fn traffic(
    mut ctx: Ctx,
    connections: usize,
    rooms: usize,
    publishers: usize,
    rate: f64,
    t: &Traffic,
) -> anyhow::Result<Report> {
    anyhow::ensure!(rooms > 0, "at least one room");
    anyhow::ensure!(
        connections >= rooms,
        "need at least one connection per room ({connections} < {rooms})"
    );
    sys::check_fd_budget(connections)?;
    let setup_start = Instant::now();
    let fx = setup(&ctx, rooms, default_users(rooms, ctx.common.users)).await?;
    ctx.report.setup_secs = setup_start.elapsed().as_secs_f64();

    let sources = sys::source_addrs(
        connections,
        ctx.server_ip(),
        &ctx.common.source_addrs,
        ctx.common.source_ips,
    )?;
    let shared = Arc::new(Shared::new(ctx.run.clone(), rooms, false));
    let stop = ctx.interrupt.child_token();
    let tracker = TaskTracker::new();
    let pb = ctx.progress(connections as u64, "connecting");
    let rss_before = ctx.server.rss_kib();
    let cpu_before_ramp = ctx.server.cpu_secs();
    let ramp = client::ramp(
        &ctx.targets,
        specs(&fx, connections, &sources, ctx.targets.len()),
        &shared,
        &ramp_opts(&ctx.common),
        &pb,
        &stop,
        &ctx.interrupt,
        &tracker,
        |_| {},
    )
    .await;
    pb.finish_and_clear();
    ctx.report.connections = conn_stats(connections, &ramp, &sources);
    let cpu_after_ramp = ctx.server.cpu_secs();
    record_ramp_cpu(&mut ctx.report.connections, cpu_before_ramp, cpu_after_ramp);
    if let (Some(before), Some(after)) = (rss_before, ctx.server.rss_kib()) {
        ctx.report.memory = Some(memory_growth(&ctx.server, before, after, ramp.conns.len()));
    }

    // Subscribers per room, and the first `publishers` connections of each room publish.
    let mut per_room: Vec<Vec<Arc<client::Conn>>> = vec![Vec::new(); rooms];
    for c in &ramp.conns {
        if let Some(r) = c.room {
            per_room[r].push(c.clone());
        }
    }
    let subs_in_room: Vec<u64> = per_room.iter().map(|v| v.len() as u64).collect();
    let pubs: Vec<(usize, Arc<client::Conn>)> = per_room
        .iter()
        .enumerate()
        .flat_map(|(r, conns)| conns.iter().take(publishers).map(move |c| (r, c.clone())))
        .collect();

    let mut traffic = TrafficStats {
        offered_rate_per_sec: rate,
        publishers: pubs.len(),
        ..Default::default()
    };
    let seq = Arc::new(AtomicU64::new(0));
    let cpu_publish_start = ctx.server.cpu_secs();
    let publish_start = Instant::now();
    let publish_start_ns = client::unix_nanos();
    if !pubs.is_empty() && !ctx.interrupt.is_cancelled() {
        shared.record_after_ns.store(
            publish_start_ns + t.timing.warmup.as_nanos() as u64,
            Ordering::Relaxed,
        );
        let per_pub = rate / pubs.len() as f64;
        let deadline = tokio::time::Instant::now() + t.timing.duration;
        let text: Arc<str> = Arc::from(format!("bench{}", "x".repeat(t.size)));
        let tick = client::Pacer::new(per_pub, 1.0).tick();
        let mut handles = Vec::with_capacity(pubs.len());
        for (k, (r, conn)) in pubs.iter().enumerate() {
            let plan = PublishPlan {
                channel: Arc::from(fx.rooms[*r].channel.as_str()),
                rate: per_pub,
                text: text.clone(),
                phase: tick.mul_f64(k as f64 / pubs.len() as f64),
                max_inflight: t.max_inflight,
            };
            handles.push(tokio::spawn(client::publisher(
                conn.clone(),
                plan,
                shared.clone(),
                seq.clone(),
                deadline,
                stop.clone(),
                None,
            )));
        }
        let pb = ctx.progress(t.timing.duration.as_secs().max(1), "publishing");
        let c = &shared.counters;
        while tokio::time::Instant::now() < deadline && !ctx.interrupt.is_cancelled() {
            ctx.sleep(Duration::from_millis(250)).await;
            let el = publish_start.elapsed().as_secs_f64();
            pb.set_position(el as u64);
            pb.set_message(format!(
                "sent {} acked {} delivered {:.0}/s",
                c.publishes_sent.load(Ordering::Relaxed),
                c.acks.load(Ordering::Relaxed),
                c.deliveries.load(Ordering::Relaxed) as f64 / el.max(0.001)
            ));
        }
        for h in handles {
            let _ = h.await;
        }
        traffic.publish_secs = publish_start.elapsed().as_secs_f64();
        pb.finish_and_clear();

        // Drain: wait for replies and deliveries still on the way.
        let drain_end = tokio::time::Instant::now() + t.timing.drain;
        while tokio::time::Instant::now() < drain_end && !ctx.interrupt.is_cancelled() {
            let inflight: usize = pubs
                .iter()
                .map(|(_, c)| c.pending.lock().unwrap_or_else(|p| p.into_inner()).len())
                .sum();
            if inflight == 0
                && c.deliveries.load(Ordering::Relaxed) >= expected(&shared, &subs_in_room)
            {
                break;
            }
            ctx.sleep(Duration::from_millis(50)).await;
        }
    }

    let c = &shared.counters;
    traffic.publishes_sent = c.publishes_sent.load(Ordering::Relaxed);
    traffic.sent_rate_per_sec = traffic.publishes_sent as f64 / traffic.publish_secs.max(1e-9);
    traffic.acks = c.acks.load(Ordering::Relaxed);
    traffic.publish_errors = c.publish_errors.load(Ordering::Relaxed);
    traffic.error_codes = shared
        .error_codes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    traffic.unanswered = pubs
        .iter()
        .map(|(_, c)| c.pending.lock().unwrap_or_else(|p| p.into_inner()).len() as u64)
        .sum();
    traffic.throttled = c.throttled.load(Ordering::Relaxed);
    traffic.behind = c.behind.load(Ordering::Relaxed);
    traffic.deliveries = c.deliveries.load(Ordering::Relaxed);
    traffic.expected_deliveries = expected(&shared, &subs_in_room);
    traffic.missing_deliveries = traffic
        .expected_deliveries
        .saturating_sub(traffic.deliveries);
    let last = shared.last_delivery_ns.load(Ordering::Relaxed);
    if last > publish_start_ns {
        traffic.deliveries_per_sec =
            traffic.deliveries as f64 / ((last - publish_start_ns) as f64 / 1e9);
    }
    traffic.foreign_publications = c.foreign.load(Ordering::Relaxed);
    traffic.parse_errors = c.parse_errors.load(Ordering::Relaxed);
    traffic.clamped_samples = shared.deliver.clamped() + shared.ack.clamped();
    if let (Some(a), Some(b)) = (cpu_publish_start, ctx.server.cpu_secs()) {
        traffic.server_cpu_secs = Some(b - a);
        if traffic.deliveries > 0 {
            traffic.server_cpu_us_per_delivery = Some((b - a) * 1e6 / traffic.deliveries as f64);
        }
    }
    finish_conn_stats(&mut ctx.report.connections, &ramp, &shared);
    ctx.record_server_metrics().await;
    shutdown(&stop, &tracker).await;

    let deliver = shared.deliver.merged();
    let ack = shared.ack.merged();
    ctx.report.deliver_latency = stats::summarize(&deliver);
    ctx.report.ack_latency = stats::summarize(&ack);
    ctx.report.cdf.insert(
        "publish -> deliver".into(),
        stats::cdf(&deliver, CDF_POINTS),
    );
    ctx.report
        .cdf
        .insert("publish -> ack".into(), stats::cdf(&ack, CDF_POINTS));
    ctx.report.traffic = Some(traffic);
    ctx.report.notes.push(format!(
        "latency excludes publications sent in the first {:.1} s (warm-up); the bench shares the machine with the server",
        t.timing.warmup.as_secs_f64()
    ));
    if ctx.report.memory.is_some() {
        ctx.report.notes.push(
            "RSS growth per connection here is (server VmRSS after the ramp - before) / established, without a settle pause"
                .into(),
        );
    }
    Ok(ctx.report)
}

/// Server CPU over the ramp, in total and per established connection.
fn record_ramp_cpu(cs: &mut ConnStats, before: Option<f64>, after: Option<f64>) {
    if let (Some(a), Some(b)) = (before, after) {
        cs.server_cpu_secs = Some(b - a);
        if cs.established > 0 {
            cs.server_cpu_us_per_connection = Some((b - a) * 1e6 / cs.established as f64);
        }
    }
}

/// Memory figures from RSS before and after `established` connections opened.
fn memory_growth(
    server: &Server,
    before_kib: u64,
    after_kib: u64,
    established: usize,
) -> MemoryStats {
    MemoryStats {
        server_pids: server.pids.clone(),
        server_nofile: server.nofile(),
        rss_before_kib: before_kib,
        rss_after_kib: after_kib,
        samples: vec![(0, before_kib), (established, after_kib)],
        per_connection_bytes: (established > 0)
            .then(|| (after_kib as f64 - before_kib as f64) * 1024.0 / established as f64),
        bench_rss_kib: sys::rss_kib(std::process::id()),
    }
}

fn expected(shared: &Shared, subs_in_room: &[u64]) -> u64 {
    shared
        .acks_per_room
        .iter()
        .zip(subs_in_room)
        .map(|(a, s)| a.load(Ordering::Relaxed) * s)
        .sum()
}

/// `connections`: ramp to N idle connections and watch the gateway's memory.
/// As a `worker` (one of [`crate::spread`]'s children) it reads no server
/// figures: it reports its ramp on stdout and holds until stdin closes.
pub async fn connections(
    mut ctx: Ctx,
    n: usize,
    rooms: usize,
    settle: Duration,
    hold: Duration,
    worker: bool,
) -> anyhow::Result<Report> {
    sys::check_fd_budget(n)?;
    let server = if worker {
        Server::default()
    } else {
        ctx.server.clone()
    };
    if !worker && server.pids.is_empty() {
        anyhow::bail!(
            "the connections scenario needs the server's pid: {}",
            ctx.pid_error.as_deref().unwrap_or("pass --server-pid")
        );
    }
    let mut mem = MemoryStats {
        server_pids: server.pids.clone(),
        server_nofile: server.nofile(),
        ..Default::default()
    };
    if !worker {
        mem.rss_before_kib = server
            .rss_kib()
            .with_context(|| format!("no VmRSS for pid(s) {:?}", server.pids))?;
    }
    if let Some(lim) = mem.server_nofile {
        let per = n.div_ceil(server.pids.len()) as u64;
        if lim < per + 100 {
            ctx.report.notes.push(format!(
                "the server's fd limit is {lim}: it cannot hold {per} connections per process"
            ));
        }
    }
    let setup_start = Instant::now();
    let fx = setup(&ctx, rooms, default_users(rooms, ctx.common.users)).await?;
    ctx.report.setup_secs = setup_start.elapsed().as_secs_f64();
    // Setup itself may have grown the server (it did not: REST only), but
    // sample again right before the ramp.
    mem.rss_before_kib = server.rss_kib().unwrap_or(mem.rss_before_kib);
    mem.samples.push((0, mem.rss_before_kib));
    let cpu_before_ramp = server.cpu_secs();

    let sources = sys::source_addrs(
        n,
        ctx.server_ip(),
        &ctx.common.source_addrs,
        ctx.common.source_ips,
    )?;
    let shared = Arc::new(Shared::new(ctx.run.clone(), rooms, false));
    let stop = ctx.interrupt.child_token();
    let tracker = TaskTracker::new();
    let pb = ctx.progress(n as u64, "connecting");
    let step = (n / 10).max(1);
    let mut samples = Vec::new();
    let ramp_started_ms = crate::spread::unix_millis();
    let ramp = client::ramp(
        &ctx.targets,
        specs(&fx, n, &sources, ctx.targets.len()),
        &shared,
        &ramp_opts(&ctx.common),
        &pb,
        &stop,
        &ctx.interrupt,
        &tracker,
        |done| {
            if done % step == 0 {
                if let Some(kib) = server.rss_kib() {
                    samples.push((done, kib));
                }
            }
        },
    )
    .await;
    pb.finish_and_clear();
    // Samples were taken by attempts; attempts and successes only differ on failures.
    mem.samples.extend(samples);
    ctx.report.connections = conn_stats(n, &ramp, &sources);
    record_ramp_cpu(
        &mut ctx.report.connections,
        cpu_before_ramp,
        server.cpu_secs(),
    );

    if worker {
        crate::spread::announce(
            crate::spread::READY,
            &crate::spread::WorkerStatus {
                conns: ctx.report.connections.clone(),
                ramp_started_ms,
                ramp_ended_ms: crate::spread::unix_millis(),
                bench_rss_kib: sys::rss_kib(std::process::id()),
            },
        );
        // Until the parent closes stdin (or goes away), bounded by --hold.
        let parent_done = crate::spread::stdin_closed();
        tokio::select! {
            _ = ctx.interrupt.cancelled() => {}
            _ = parent_done.cancelled() => {}
            _ = tokio::time::sleep(hold) => {}
        }
        finish_conn_stats(&mut ctx.report.connections, &ramp, &shared);
        crate::spread::announce(
            crate::spread::DONE,
            &crate::spread::WorkerStatus {
                conns: ctx.report.connections.clone(),
                ramp_started_ms,
                ramp_ended_ms: ramp_started_ms,
                bench_rss_kib: sys::rss_kib(std::process::id()),
            },
        );
        shutdown(&stop, &tracker).await;
        ctx.report
            .notes
            .push("a worker of a spread run: server figures are in the parent's report".into());
        return Ok(ctx.report);
    }

    ctx.sleep(settle).await;
    mem.rss_after_kib = server.rss_kib().unwrap_or(0);
    let established = ramp.conns.len();
    mem.samples.push((established, mem.rss_after_kib));
    if established > 0 && mem.rss_after_kib > 0 {
        mem.per_connection_bytes = Some(
            (mem.rss_after_kib as f64 - mem.rss_before_kib as f64) * 1024.0 / established as f64,
        );
    }
    mem.bench_rss_kib = sys::rss_kib(std::process::id());

    if !ctx.interrupt.is_cancelled() && !hold.is_zero() {
        let pb = ctx.progress(hold.as_secs().max(1), "holding");
        let start = Instant::now();
        while start.elapsed() < hold && ctx.sleep(Duration::from_millis(250)).await {
            pb.set_position(start.elapsed().as_secs());
            pb.set_message(format!(
                "closed by server {}",
                shared.counters.closed_by_server.load(Ordering::Relaxed)
            ));
        }
        pb.finish_and_clear();
    }
    finish_conn_stats(&mut ctx.report.connections, &ramp, &shared);
    ctx.record_server_metrics().await;
    shutdown(&stop, &tracker).await;
    ctx.report.memory = Some(mem);
    ctx.report.notes.push(
        "per-connection memory is (server VmRSS after ramp + settle - before) / established connections".into(),
    );
    Ok(ctx.report)
}

/// `persist`: publish on one connection and poll REST history until each
/// message shows up.
pub async fn persist(
    mut ctx: Ctx,
    rate: f64,
    duration: Duration,
    poll: Duration,
    drain: Duration,
) -> anyhow::Result<Report> {
    let setup_start = Instant::now();
    let fx = setup(&ctx, 1, 1).await?;
    ctx.report.setup_secs = setup_start.elapsed().as_secs_f64();
    let shared = Arc::new(Shared::new(ctx.run.clone(), 1, true));
    let stop = ctx.interrupt.child_token();
    let tracker = TaskTracker::new();
    let spec = specs(&fx, 1, &[], 1).remove(0);
    let conn = client::establish(
        &ctx.targets[0],
        spec,
        shared.clone(),
        stop.clone(),
        &tracker,
        ctx.common.connect_timeout,
    )
    .await?;
    ctx.report.connections = ConnStats {
        target: 1,
        established: 1,
        ..Default::default()
    };

    let sent_log: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let text: Arc<str> = Arc::from("bench persist");
    let deadline = tokio::time::Instant::now() + duration;
    let publish_start = Instant::now();
    let publisher = tokio::spawn(client::publisher(
        conn.clone(),
        PublishPlan {
            channel: Arc::from(fx.rooms[0].channel.as_str()),
            rate,
            text: text.clone(),
            phase: Duration::ZERO,
            max_inflight: 1000,
        },
        shared.clone(),
        Arc::new(AtomicU64::new(0)),
        deadline,
        stop.clone(),
        Some(sent_log.clone()),
    ));

    let lag = ShardedHistogram::new(1);
    let mut ps = PersistStats {
        poll_ms: poll.as_millis() as u64,
        ..Default::default()
    };
    let mut seen: HashMap<u64, u64> = HashMap::new(); // seq -> REST offset
    let room = fx.rooms[0].id;
    let token = fx.users[0].token.clone();
    let pb = ctx.progress((duration + drain).as_secs().max(1), "persist");
    let hard_end = deadline + drain;
    // Centrifugo keeps no REST history: only the WebSocket half runs.
    let poll_rest = ctx.kind == Target::Confab;
    loop {
        if poll_rest {
            break;
        }
        let now = tokio::time::Instant::now();
        let acked = shared.counters.acks.load(Ordering::Relaxed);
        let done = now >= deadline
            && publisher.is_finished()
            && shared.counters.deliveries.load(Ordering::Relaxed) >= acked;
        if done || now >= hard_end || ctx.interrupt.is_cancelled() {
            break;
        }
        pb.set_position(publish_start.elapsed().as_secs());
        ctx.sleep(Duration::from_millis(50)).await;
    }
    loop {
        if !poll_rest {
            break;
        }
        let now = tokio::time::Instant::now();
        if now >= hard_end || ctx.interrupt.is_cancelled() {
            break;
        }
        let publishing_done = now >= deadline;
        let acked = shared.counters.acks.load(Ordering::Relaxed);
        if publishing_done && seen.len() as u64 >= acked && publisher.is_finished() {
            break;
        }
        ps.polls += 1;
        match ctx.api.messages(&token, room, 100).await {
            Ok(msgs) => {
                let at = Instant::now();
                for m in msgs {
                    if m.kind != "message"
                        || m.data.get("run").and_then(|r| r.as_str()) != Some(&ctx.run)
                    {
                        continue;
                    }
                    let Some(s) = m.data.get("seq").and_then(|s| s.as_u64()) else {
                        continue;
                    };
                    if seen.contains_key(&s) {
                        continue;
                    }
                    let sent = sent_log
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&s)
                        .copied();
                    if let Some(sent) = sent {
                        lag.record(0, at.duration_since(sent).as_micros() as u64);
                    }
                    if m.data.get("text").and_then(|t| t.as_str()) != Some(&text) {
                        ps.data_mismatches += 1;
                    }
                    seen.insert(s, m.offset);
                }
            }
            Err(_) => ps.poll_errors += 1,
        }
        pb.set_position(publish_start.elapsed().as_secs());
        pb.set_message(format!("seen {} of {}", seen.len(), acked));
        ctx.sleep(poll).await;
    }
    pb.finish_and_clear();
    let _ = publisher.await;
    ps.published = shared.counters.acks.load(Ordering::Relaxed);
    ps.seen = seen.len() as u64;
    ps.missing = ps.published.saturating_sub(ps.seen);
    if let Some(offsets) = &shared.offsets {
        let ws = offsets.lock().unwrap_or_else(|p| p.into_inner());
        ps.offset_mismatches = seen
            .iter()
            .filter(|(s, rest)| ws.get(s).is_some_and(|w| w != *rest))
            .count() as u64;
    }
    let c = &shared.counters;
    ctx.report.traffic = Some(TrafficStats {
        publish_secs: duration.as_secs_f64(),
        offered_rate_per_sec: rate,
        publishers: 1,
        publishes_sent: c.publishes_sent.load(Ordering::Relaxed),
        sent_rate_per_sec: c.publishes_sent.load(Ordering::Relaxed) as f64
            / duration.as_secs_f64().max(1e-9),
        acks: c.acks.load(Ordering::Relaxed),
        publish_errors: c.publish_errors.load(Ordering::Relaxed),
        deliveries: c.deliveries.load(Ordering::Relaxed),
        expected_deliveries: c.acks.load(Ordering::Relaxed),
        missing_deliveries: c
            .acks
            .load(Ordering::Relaxed)
            .saturating_sub(c.deliveries.load(Ordering::Relaxed)),
        ..Default::default()
    });
    finish_conn_stats(
        &mut ctx.report.connections,
        &client::RampResult {
            conns: vec![conn],
            ..Default::default()
        },
        &shared,
    );
    ctx.record_server_metrics().await;
    shutdown(&stop, &tracker).await;

    let lag = lag.merged();
    let deliver = shared.deliver.merged();
    ctx.report.persist_lag = stats::summarize(&lag);
    ctx.report.deliver_latency = stats::summarize(&deliver);
    ctx.report.ack_latency = stats::summarize(&shared.ack.merged());
    ctx.report
        .cdf
        .insert("publish -> REST".into(), stats::cdf(&lag, CDF_POINTS));
    ctx.report.cdf.insert(
        "publish -> deliver".into(),
        stats::cdf(&deliver, CDF_POINTS),
    );
    if poll_rest {
        ctx.report.persist = Some(ps);
        ctx.report.notes.push(format!(
            "persist lag is measured by polling REST every {} ms, so it overstates by up to that (plus one request)",
            poll.as_millis()
        ));
    } else {
        ctx.report.cdf.remove("publish -> REST");
        ctx.report.persist_lag = None;
        ctx.report.notes.push(format!(
            "persist lag skipped: {} has no REST history; only publish -> ack and publish -> deliver were measured",
            ctx.kind.title()
        ));
    }
    Ok(ctx.report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rooms: usize) -> Fixture {
        let users: Vec<BenchUser> = (0..2)
            .map(|i| BenchUser {
                id: uuid::Uuid::new_v4(),
                username: format!("u{i}"),
                token: format!("access{i}"),
            })
            .collect();
        let rooms: Vec<Room> = (0..rooms)
            .map(|_| {
                let id = uuid::Uuid::new_v4();
                Room {
                    id,
                    channel: confab_common::room_channel(id),
                }
            })
            .collect();
        Fixture {
            join_leave: false,
            access: (0..rooms.len())
                .map(|r| Arc::from(users[r % 2].token.as_str()))
                .collect(),
            sub_tokens: (0..rooms.len())
                .map(|r| Arc::from(format!("sub{r}")))
                .collect(),
            users,
            rooms,
        }
    }

    #[test]
    fn connections_spread_over_rooms_and_sources() {
        let fx = fixture(3);
        let sources: Vec<std::net::IpAddr> =
            vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()];
        let s = specs(&fx, 7, &sources, 1);
        assert_eq!(s.len(), 7);
        assert_eq!(s[4].room, Some(1));
        assert_eq!(&*s[4].subs[0].0, fx.rooms[1].channel.as_str());
        assert_eq!(&*s[4].subs[0].1, "sub1");
        assert_eq!(&*s[4].token, "access1");
        assert_eq!(s[3].source, Some(sources[1]));
        let per_room = (0..3)
            .map(|r| s.iter().filter(|c| c.room == Some(r)).count())
            .collect::<Vec<_>>();
        assert_eq!(per_room, vec![3, 2, 2]);
    }

    #[test]
    fn roomless_connections_do_not_subscribe() {
        let fx = fixture(0);
        let s = specs(&fx, 2, &[], 1);
        assert!(s
            .iter()
            .all(|c| c.room.is_none() && c.subs.is_empty() && c.source.is_none()));
        assert_eq!(&*s[0].token, "access0");
        assert!(s.iter().all(|c| c.server == 0));
        let s = specs(&fx, 4, &[], 2);
        assert_eq!(s.iter().map(|c| c.server).collect::<Vec<_>>(), [0, 1, 0, 1]);
    }

    #[test]
    fn rooms_span_servers_and_publishers_spread() {
        let mut fx = fixture(2);
        fx.join_leave = true;
        let s = specs(&fx, 8, &[], 2);
        for r in 0..2 {
            let servers: Vec<usize> = s
                .iter()
                .filter(|c| c.room == Some(r))
                .map(|c| c.server)
                .collect();
            // Alternating, starting at server r: the publisher (first) differs per room.
            assert_eq!(servers[0], r);
            assert_eq!(servers.iter().filter(|&&x| x == 0).count(), 2);
            assert_eq!(servers.iter().filter(|&&x| x == 1).count(), 2);
        }
        assert!(s.iter().all(|c| c.join_leave));
    }

    #[test]
    fn local_setup_mints_tokens_for_room_owners() {
        let keys = target::bench_keys("s3cret-s3cret");
        let fx = local_setup("abcd1234", 3, 2, &keys);
        assert_eq!((fx.users.len(), fx.rooms.len()), (2, 3));
        assert_eq!(fx.users[1].username, "bench_abcd1234_1");
        for r in 0..3 {
            let owner = &fx.users[r % 2];
            assert_eq!(&*fx.access[r], owner.token.as_str());
            let c = keys.verify_subscription(&fx.sub_tokens[r]).unwrap();
            assert_eq!(
                (c.sub, c.channel.as_str()),
                (owner.id, fx.rooms[r].channel.as_str())
            );
        }
        // Zero users asked still gives one.
        assert_eq!(local_setup("r", 1, 0, &keys).users.len(), 1);
    }

    #[test]
    fn memory_growth_per_connection() {
        let m = memory_growth(&Server { pids: vec![1] }, 1000, 3000, 100);
        assert_eq!(m.per_connection_bytes, Some(2000.0 * 1024.0 / 100.0));
        assert_eq!(m.samples, [(0, 1000), (100, 3000)]);
        assert_eq!(
            memory_growth(&Server::default(), 1, 2, 0).per_connection_bytes,
            None
        );
        let mut cs = ConnStats {
            established: 4,
            ..Default::default()
        };
        record_ramp_cpu(&mut cs, Some(1.0), Some(1.5));
        assert_eq!(cs.server_cpu_us_per_connection, Some(125_000.0));
    }

    #[test]
    fn default_user_pool() {
        assert_eq!(default_users(100, 0), 20);
        assert_eq!(default_users(3, 0), 3);
        assert_eq!(default_users(0, 0), 1);
        assert_eq!(default_users(100, 7), 7);
    }

    #[test]
    fn expected_deliveries_weigh_acks_by_room_size() {
        let shared = Shared::new("r".into(), 2, false);
        shared.acks_per_room[0].store(3, Ordering::Relaxed);
        shared.acks_per_room[1].store(5, Ordering::Relaxed);
        assert_eq!(expected(&shared, &[10, 2]), 40);
    }
}
