//! The four scenarios. Each sets up its own users and rooms over REST, opens
//! its connections, runs for a bounded time and returns a [`Report`].

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
use crate::sys;
use crate::ws::WsTarget;

/// The password of every bench user.
const PASSWORD: &str = "bench-password-1";
/// Points per CDF series.
const CDF_POINTS: usize = 300;

/// What every scenario needs.
#[derive(Debug)]
pub struct Ctx {
    pub common: Common,
    /// Eight hex digits, unique per run; in usernames, room names and every message.
    pub run: String,
    pub api: Api,
    pub target: WsTarget,
    /// Fires on Ctrl-C.
    pub interrupt: CancellationToken,
    pub report: Report,
    /// The gateway's Prometheus endpoint.
    pub metrics_url: String,
    /// Its counters when the run started, if it answered.
    pub metrics_before: Option<std::collections::BTreeMap<String, f64>>,
}

/// The gateway's counters now, if its `/metrics` answers.
pub async fn scrape(url: &str) -> Option<std::collections::BTreeMap<String, f64>> {
    let resp = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?
        .get(url)
        .send()
        .await
        .ok()?;
    Some(sys::parse_gateway_metrics(&resp.text().await.ok()?))
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

    /// Records how the gateway's counters moved since the start; called
    /// before the bench closes its connections, so the close storm is left out.
    async fn record_gateway_metrics(&mut self) {
        if let (Some(a), Some(b)) = (&self.metrics_before, scrape(&self.metrics_url).await) {
            self.report.gateway_metrics = sys::metric_deltas(a, &b);
        }
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
}

fn default_users(rooms: usize, asked: usize) -> usize {
    if asked > 0 {
        asked
    } else {
        rooms.clamp(1, 20)
    }
}

async fn setup(ctx: &Ctx, rooms: usize, users: usize) -> anyhow::Result<Fixture> {
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
    let keys = ctx.common.jwt_secret.as_ref().map(|s| {
        confab_common::jwt::JwtKeys::new(
            s.as_bytes(),
            Duration::from_secs(24 * 3600),
            Duration::from_secs(2 * 3600),
        )
    });
    let created_ref = &created;
    let keys_ref = &keys;
    let sub_tokens: Vec<Arc<str>> = futures::stream::iter(0..rooms)
        .map(|r| {
            let pb = pb.clone();
            async move {
                let owner = &users_ref[r % users_ref.len()];
                let room = &created_ref[r];
                let token = match keys_ref {
                    Some(k) => k.issue_subscription(owner.id, &room.channel).0,
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
    })
}

/// Connection specs: connection `i` is in room `i % rooms` (none if there are
/// no rooms) and uses source address `i % sources`.
fn specs(fx: &Fixture, n: usize, sources: &[std::net::IpAddr]) -> Vec<ConnSpec> {
    let fallback: Arc<str> = Arc::from(fx.users[0].token.as_str());
    (0..n)
        .map(|i| {
            let room = (!fx.rooms.is_empty()).then(|| i % fx.rooms.len());
            ConnSpec {
                index: i,
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
        ctx.target.addr.ip(),
        &ctx.common.source_addrs,
        ctx.common.source_ips,
    )?;
    let shared = Arc::new(Shared::new(ctx.run.clone(), rooms, false));
    let stop = ctx.interrupt.child_token();
    let tracker = TaskTracker::new();
    let pb = ctx.progress(connections as u64, "connecting");
    let ramp = client::ramp(
        &ctx.target,
        specs(&fx, connections, &sources),
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
    let publish_start = Instant::now();
    let publish_start_ns = client::unix_nanos();
    if !pubs.is_empty() && !ctx.interrupt.is_cancelled() {
        shared.record_after_ns.store(
            publish_start_ns + t.warmup.as_nanos() as u64,
            Ordering::Relaxed,
        );
        let per_pub = rate / pubs.len() as f64;
        let deadline = tokio::time::Instant::now() + t.duration;
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
        let pb = ctx.progress(t.duration.as_secs().max(1), "publishing");
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
        let drain_end = tokio::time::Instant::now() + t.drain;
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
    finish_conn_stats(&mut ctx.report.connections, &ramp, &shared);
    ctx.record_gateway_metrics().await;
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
        "latency excludes publications sent in the first {:.1} s (warm-up); the bench shares the machine with the stack",
        t.warmup.as_secs_f64()
    ));
    Ok(ctx.report)
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
pub async fn connections(
    mut ctx: Ctx,
    n: usize,
    rooms: usize,
    settle: Duration,
    hold: Duration,
) -> anyhow::Result<Report> {
    sys::check_fd_budget(n)?;
    let pid = sys::gateway_pid(ctx.common.gateway_pid, None)?;
    let mut mem = MemoryStats {
        gateway_pid: pid,
        gateway_nofile: sys::process_nofile(pid),
        rss_before_kib: sys::rss_kib(pid).with_context(|| format!("no VmRSS for pid {pid}"))?,
        ..Default::default()
    };
    if let Some(lim) = mem.gateway_nofile {
        if lim < n as u64 + 100 {
            ctx.report.notes.push(format!(
                "the gateway's fd limit is {lim}: it cannot hold {n} connections"
            ));
        }
    }
    let setup_start = Instant::now();
    let fx = setup(&ctx, rooms, default_users(rooms, ctx.common.users)).await?;
    ctx.report.setup_secs = setup_start.elapsed().as_secs_f64();
    // Setup itself may have grown the gateway (it did not: REST only), but
    // sample again right before the ramp.
    mem.rss_before_kib = sys::rss_kib(pid).unwrap_or(mem.rss_before_kib);
    mem.samples.push((0, mem.rss_before_kib));

    let sources = sys::source_addrs(
        n,
        ctx.target.addr.ip(),
        &ctx.common.source_addrs,
        ctx.common.source_ips,
    )?;
    let shared = Arc::new(Shared::new(ctx.run.clone(), rooms, false));
    let stop = ctx.interrupt.child_token();
    let tracker = TaskTracker::new();
    let pb = ctx.progress(n as u64, "connecting");
    let step = (n / 10).max(1);
    let mut samples = Vec::new();
    let mut ok_before = 0usize;
    let ramp = client::ramp(
        &ctx.target,
        specs(&fx, n, &sources),
        &shared,
        &ramp_opts(&ctx.common),
        &pb,
        &stop,
        &ctx.interrupt,
        &tracker,
        |done| {
            if done % step == 0 {
                ok_before = done;
                if let Some(kib) = sys::rss_kib(pid) {
                    samples.push((done, kib));
                }
            }
        },
    )
    .await;
    let _ = ok_before;
    pb.finish_and_clear();
    // Samples were taken by attempts; attempts and successes only differ on failures.
    mem.samples.extend(samples);
    ctx.report.connections = conn_stats(n, &ramp, &sources);

    ctx.sleep(settle).await;
    mem.rss_after_kib = sys::rss_kib(pid).unwrap_or(0);
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
    ctx.record_gateway_metrics().await;
    shutdown(&stop, &tracker).await;
    ctx.report.memory = Some(mem);
    ctx.report.notes.push(
        "per-connection memory is (gateway VmRSS after ramp + settle - before) / established connections".into(),
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
    let spec = specs(&fx, 1, &[]).remove(0);
    let conn = client::establish(
        &ctx.target,
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
    loop {
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
    ctx.record_gateway_metrics().await;
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
    ctx.report.persist = Some(ps);
    ctx.report.notes.push(format!(
        "persist lag is measured by polling REST every {} ms, so it overstates by up to that (plus one request)",
        poll.as_millis()
    ));
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
        let s = specs(&fx, 7, &sources);
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
        let s = specs(&fx, 2, &[]);
        assert!(s
            .iter()
            .all(|c| c.room.is_none() && c.subs.is_empty() && c.source.is_none()));
        assert_eq!(&*s[0].token, "access0");
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
