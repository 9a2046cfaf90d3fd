//! `connections --processes K`: more idle connections than one process's
//! open-file limit allows (20,000 here), spread over K bench processes.
//!
//! This process starts K copies of its own binary as workers (`connections
//! --worker`), each with its share of the connections and rooms and its own
//! 127.0.0.x source address(es), so that no two share a source port range.
//! A worker ramps, prints one `READY` line with its connection figures on
//! stdout and holds its connections until its stdin closes. This process
//! reads the servers' RSS before the workers start and `--settle` after the
//! last one is ready, summed over every server pid given (`--gateway-pid
//! a,b,c`), holds for `--hold`, then closes the workers' stdin and collects
//! their final figures (`DONE`). Each worker also writes its own report
//! beside this one's.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli::Common;
use crate::report::{self, ConnStats, MemoryStats, Report};
use crate::scenario::Ctx;
use crate::sys;
use crate::target::Target;

/// The line a worker prints once its ramp is over.
pub const READY: &str = "confab-bench-worker-ready ";
/// The line a worker prints when it lets its connections go.
pub const DONE: &str = "confab-bench-worker-done ";

/// What a worker tells its parent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub conns: ConnStats,
    /// Unix milliseconds when its ramp began and ended.
    pub ramp_started_ms: u64,
    pub ramp_ended_ms: u64,
    /// The worker's own VmRSS.
    pub bench_rss_kib: Option<u64>,
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Prints a status line for the parent.
pub fn announce(tag: &str, status: &WorkerStatus) {
    use std::io::Write as _;
    let json = serde_json::to_string(status).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{tag}{json}");
    let _ = out.flush();
}

/// A token cancelled when stdin reaches its end (the parent closed it, or died).
pub fn stdin_closed() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        t.cancel();
    });
    token
}

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Ready(WorkerStatus),
    Done(WorkerStatus),
    Exited,
}

fn parse_line(line: &str) -> Option<Event> {
    if let Some(j) = line.strip_prefix(READY) {
        return serde_json::from_str(j).ok().map(Event::Ready);
    }
    let j = line.strip_prefix(DONE)?;
    serde_json::from_str(j).ok().map(Event::Done)
}

/// `n` split into `k` shares, the first `n % k` one larger.
pub fn split(n: usize, k: usize) -> Vec<usize> {
    let k = k.max(1);
    (0..k).map(|i| n / k + usize::from(i < n % k)).collect()
}

/// Rooms per worker: split like connections, at least one each (a worker
/// with no room would connect without subscribing).
pub fn split_rooms(rooms: usize, k: usize) -> Vec<usize> {
    if rooms == 0 {
        return vec![0; k.max(1)];
    }
    split(rooms, k).into_iter().map(|r| r.max(1)).collect()
}

/// Source addresses per worker: the explicit ones dealt out (each worker
/// needs its own, or two would pick the same source ports), else
/// 127.0.0.2, .3, ... enough for each worker's share.
pub fn worker_sources(
    shares: &[usize],
    explicit: &[IpAddr],
    target: IpAddr,
) -> anyhow::Result<Vec<Vec<IpAddr>>> {
    let k = shares.len();
    if !explicit.is_empty() {
        anyhow::ensure!(
            explicit.len() >= k,
            "{k} processes need at least {k} --source-addr values, one of their own each"
        );
        return Ok((0..k)
            .map(|i| explicit.iter().skip(i).step_by(k).copied().collect())
            .collect());
    }
    anyhow::ensure!(
        target.is_loopback(),
        "several processes need their own source addresses: pass --source-addr for non-loopback target {target}"
    );
    let per = shares
        .iter()
        .map(|s| s.div_ceil(sys::CONNS_PER_SOURCE).max(1))
        .max()
        .unwrap_or(1);
    anyhow::ensure!(k * per <= 253, "at most 253 source addresses");
    Ok((0..k)
        .map(|i| {
            (0..per)
                .map(|j| IpAddr::V4(Ipv4Addr::new(127, 0, 0, (2 + i * per + j) as u8)))
                .collect()
        })
        .collect())
}

fn dur_arg(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The command line of worker `i` (the secret goes in the environment).
pub fn worker_args(
    common: &Common,
    kind: Target,
    n: usize,
    rooms: usize,
    hold: Duration,
    sources: &[IpAddr],
    out: &Path,
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--quiet".into(),
        "--target".into(),
        kind.name().into(),
        "--api".into(),
        common.api.clone(),
        "--ws".into(),
        common.ws.join(","),
        "--centrifugo-ws".into(),
        common.centrifugo_ws.join(","),
        "--users".into(),
        common.users.to_string(),
        "--connect-concurrency".into(),
        common.connect_concurrency.to_string(),
        "--connect-rate".into(),
        common.connect_rate.to_string(),
        "--connect-timeout".into(),
        dur_arg(common.connect_timeout),
        "--out".into(),
        out.display().to_string(),
    ];
    if common.join_leave {
        a.push("--join-leave".into());
    }
    for s in sources {
        a.push("--source-addr".into());
        a.push(s.to_string());
    }
    a.extend([
        "connections".into(),
        "-n".into(),
        n.to_string(),
        "--rooms".into(),
        rooms.to_string(),
        "--settle".into(),
        "0ms".into(),
        "--hold".into(),
        dur_arg(hold),
        "--worker".into(),
    ]);
    a
}

/// `<stem>-worker<i>.json` beside `out`.
fn worker_out(out: &Path, i: usize) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "connections".into());
    out.with_file_name(format!("{stem}-worker{i}.json"))
}

/// The figures of all workers as one run's. `ready[i]` is worker `i`'s
/// report at the end of its ramp, `done[i]` at the end of the hold; a worker
/// with neither counts all its connections as failed.
pub fn aggregate(
    shares: &[usize],
    ready: &[Option<WorkerStatus>],
    done: &[Option<WorkerStatus>],
) -> ConnStats {
    let mut c = ConnStats {
        target: shares.iter().sum(),
        ..Default::default()
    };
    let (mut first, mut last) = (u64::MAX, 0u64);
    for (i, share) in shares.iter().enumerate() {
        let Some(r) = ready.get(i).cloned().flatten() else {
            c.failed += *share as u64;
            *c.errors
                .entry("worker exited before its ramp ended".into())
                .or_default() += *share as u64;
            continue;
        };
        first = first.min(r.ramp_started_ms);
        last = last.max(r.ramp_ended_ms);
        c.established += r.conns.established;
        c.failed += r.conns.failed;
        for (e, n) in &r.conns.errors {
            *c.errors.entry(e.clone()).or_default() += n;
        }
        c.source_addrs.extend(r.conns.source_addrs.iter().cloned());
        // Figures from the end of the hold, when the worker got there.
        let end = done.get(i).cloned().flatten().unwrap_or(r).conns;
        c.alive_at_end += end.alive_at_end;
        c.closed_by_server += end.closed_by_server;
        c.io_errors += end.io_errors;
        c.pings += end.pings;
        for (e, n) in &end.disconnects {
            *c.disconnects.entry(e.clone()).or_default() += n;
        }
    }
    if last > first {
        c.ramp_secs = (last - first) as f64 / 1000.0;
        c.connect_rate_per_sec = c.established as f64 / c.ramp_secs;
    }
    c
}

/// What the workers have said so far.
struct Workers {
    ready: Vec<Option<WorkerStatus>>,
    done: Vec<Option<WorkerStatus>>,
    exited: Vec<bool>,
}

impl Workers {
    fn on(&mut self, i: usize, ev: Event) {
        match ev {
            Event::Ready(s) => {
                println!(
                    "  worker {i} ready: {} of {} in {:.1} s",
                    s.conns.established, s.conns.target, s.conns.ramp_secs
                );
                self.ready[i] = Some(s);
            }
            Event::Done(s) => self.done[i] = Some(s),
            Event::Exited => self.exited[i] = true,
        }
    }
}

/// Per server pid: VmRSS (KiB) and open file descriptors.
fn per_pid(pids: &[u32]) -> Vec<(u32, Option<u64>, Option<usize>)> {
    pids.iter()
        .map(|p| (*p, sys::rss_kib(*p), sys::open_fds(*p)))
        .collect()
}

/// Runs `connections` over `k` worker processes; see the module doc.
pub async fn connections(
    mut ctx: Ctx,
    n: usize,
    rooms: usize,
    settle: Duration,
    hold: Duration,
    k: usize,
) -> anyhow::Result<Report> {
    anyhow::ensure!(n >= k, "{n} connections over {k} processes");
    if ctx.server.pids.is_empty() {
        anyhow::bail!(
            "the connections scenario needs the server's pid(s): {}",
            ctx.pid_error.as_deref().unwrap_or("pass --server-pid")
        );
    }
    let server = ctx.server.clone();
    let shares = split(n, k);
    let room_shares = split_rooms(rooms, k);
    let sources = worker_sources(&shares, &ctx.common.source_addrs, ctx.targets[0].addr.ip())?;
    let out = ctx
        .common
        .out
        .clone()
        .unwrap_or_else(|| report::default_out("connections", time::OffsetDateTime::now_utc()));
    let exe = std::env::current_exe().context("finding the bench's own binary")?;
    let mut mem = MemoryStats {
        server_pids: server.pids.clone(),
        server_nofile: server.nofile(),
        rss_before_kib: server
            .rss_kib()
            .with_context(|| format!("no VmRSS for pid(s) {:?}", server.pids))?,
        ..Default::default()
    };
    if let Some(lim) = mem.server_nofile {
        let per = n.div_ceil(server.pids.len()) as u64;
        if lim < per + 100 {
            ctx.report.notes.push(format!(
                "the server's fd limit is {lim}: {n} connections over {} process(es) need {per} each",
                server.pids.len()
            ));
        }
    }
    let rss_before = per_pid(&server.pids);
    mem.samples.push((0, mem.rss_before_kib));
    let cpu_before = server.cpu_secs();

    // Workers hold at most this long if this process never closes their stdin.
    let worker_hold = settle + hold + Duration::from_secs(300);
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Event)>();
    let mut children = Vec::with_capacity(k);
    let mut stdins = Vec::with_capacity(k);
    let started = Instant::now();
    for i in 0..k {
        let args = worker_args(
            &ctx.common,
            ctx.kind,
            shares[i],
            room_shares[i],
            worker_hold,
            &sources[i],
            &worker_out(&out, i),
        );
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(s) = &ctx.common.jwt_secret {
            cmd.env("CONFAB_JWT_SECRET", s);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting worker {i}: {}", exe.display()))?;
        stdins.push(child.stdin.take());
        let stdout = child.stdout.take().context("worker stdout")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(ev) = parse_line(&l) {
                    let _ = tx.send((i, ev));
                }
            }
            let _ = tx.send((i, Event::Exited));
        });
        ctx.report.notes.push(format!(
            "worker {i}: {} connections, {} rooms, from {}; its report: {}",
            shares[i],
            room_shares[i],
            sources[i]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            worker_out(&out, i).display()
        ));
        children.push(child);
    }
    drop(tx);
    println!(
        "connections: {n} over {k} worker processes, server pid(s) {:?}",
        server.pids
    );

    let mut w = Workers {
        ready: vec![None; k],
        done: vec![None; k],
        exited: vec![false; k],
    };
    // Until every worker is ready or gone.
    loop {
        let waiting = (0..k).any(|i| w.ready[i].is_none() && !w.exited[i]);
        if !waiting || ctx.interrupt.is_cancelled() {
            break;
        }
        tokio::select! {
            _ = ctx.interrupt.cancelled() => break,
            ev = rx.recv() => match ev {
                Some((i, ev)) => w.on(i, ev),
                None => break,
            },
        }
    }
    let ramp_wall = started.elapsed();
    let cpu_after_ramp = server.cpu_secs();

    // Settle, sample, hold: all with the workers' events still read.
    let mut sampled = false;
    let mut rss_after = Vec::new();
    for (phase, len) in [("settle", settle), ("hold", hold)] {
        let end = tokio::time::Instant::now() + len;
        while !ctx.interrupt.is_cancelled() {
            tokio::select! {
                _ = ctx.interrupt.cancelled() => {}
                _ = tokio::time::sleep_until(end) => break,
                Some((i, ev)) = rx.recv() => w.on(i, ev),
            }
        }
        if phase == "settle" {
            mem.rss_after_kib = server.rss_kib().unwrap_or(0);
            rss_after = per_pid(&server.pids);
            sampled = true;
        }
    }
    if !sampled {
        mem.rss_after_kib = server.rss_kib().unwrap_or(0);
        rss_after = per_pid(&server.pids);
    }

    // Let the workers go and collect their last figures.
    drop(stdins);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while w.exited.iter().any(|e| !e) {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            ev = rx.recv() => match ev {
                Some((i, ev)) => w.on(i, ev),
                None => break,
            },
        }
    }
    for (i, mut c) in children.into_iter().enumerate() {
        match tokio::time::timeout(Duration::from_secs(10), c.wait()).await {
            Ok(Ok(status)) if !status.success() => ctx
                .report
                .notes
                .push(format!("worker {i} exited with {status}")),
            Ok(_) => {}
            Err(_) => {
                let _ = c.kill().await;
                ctx.report
                    .notes
                    .push(format!("worker {i} did not exit: killed"));
            }
        }
    }

    let mut conns = aggregate(&shares, &w.ready, &w.done);
    if let (Some(a), Some(b)) = (cpu_before, cpu_after_ramp) {
        conns.server_cpu_secs = Some(b - a);
        if conns.established > 0 {
            conns.server_cpu_us_per_connection = Some((b - a) * 1e6 / conns.established as f64);
        }
    }
    let established = conns.established;
    mem.samples.push((established, mem.rss_after_kib));
    if established > 0 && mem.rss_after_kib > 0 {
        mem.per_connection_bytes = Some(
            (mem.rss_after_kib as f64 - mem.rss_before_kib as f64) * 1024.0 / established as f64,
        );
    }
    mem.bench_rss_kib = w
        .ready
        .iter()
        .flatten()
        .map(|r| r.bench_rss_kib)
        .sum::<Option<u64>>();
    let before: BTreeMap<u32, (Option<u64>, Option<usize>)> = rss_before
        .into_iter()
        .map(|(p, r, f)| (p, (r, f)))
        .collect();
    ctx.report.notes.push(format!(
        "server by pid, before -> after settle: {}",
        rss_after
            .iter()
            .map(|(p, rss, fds)| {
                let (rss0, fds0) = before.get(p).copied().unwrap_or_default();
                format!(
                    "{p}: VmRSS {} -> {} KiB, open fds {} -> {}",
                    rss0.unwrap_or(0),
                    rss.unwrap_or(0),
                    fds0.unwrap_or(0),
                    fds.unwrap_or(0)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    ));
    ctx.report.notes.push(format!(
        "spread over {k} bench processes; the ramp ({:.1} s wall from the first worker's start, \
         users and rooms set up by each worker included) is from the first worker's ramp start to \
         the last one's end; server CPU over the ramp includes the workers' setup; bench RSS is \
         the workers' sum",
        ramp_wall.as_secs_f64()
    ));
    ctx.report.notes.push(
        "per-connection memory is (server VmRSS summed over the pids after ramp + settle - before) / established connections".into(),
    );
    ctx.report.connections = conns;
    ctx.report.memory = Some(mem);
    Ok(ctx.report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn shares_add_up() {
        assert_eq!(
            split(100_000, 6),
            [16_667, 16_667, 16_667, 16_667, 16_666, 16_666]
        );
        assert_eq!(split(100_000, 6).iter().sum::<usize>(), 100_000);
        assert_eq!(split(5, 1), [5]);
        assert_eq!(split_rooms(100, 6), [17, 17, 17, 17, 16, 16]);
        assert_eq!(split_rooms(2, 4), [1, 1, 1, 1]);
        assert_eq!(split_rooms(0, 3), [0, 0, 0]);
    }

    #[test]
    fn each_worker_gets_its_own_sources() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let s = worker_sources(&split(100_000, 6), &[], lo).unwrap();
        assert_eq!(s.len(), 6);
        assert_eq!(s[0], ["127.0.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(s[5], ["127.0.0.7".parse::<IpAddr>().unwrap()]);
        // A share beyond one address's budget takes several, still disjoint.
        let s = worker_sources(&[30_000, 30_000], &[], lo).unwrap();
        assert_eq!(s[0].len(), 2);
        assert_eq!(s[1][0], "127.0.0.4".parse::<IpAddr>().unwrap());
        let all: std::collections::HashSet<_> = s.iter().flatten().collect();
        assert_eq!(all.len(), 4);
        let explicit: Vec<IpAddr> = (10..13)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 1, i)))
            .collect();
        let s = worker_sources(&[1, 1], &explicit, lo).unwrap();
        assert_eq!(s[0], [explicit[0], explicit[2]]);
        assert_eq!(s[1], [explicit[1]]);
        assert!(worker_sources(&[1, 1, 1, 1], &explicit, lo).is_err());
        assert!(worker_sources(&[1, 1], &[], "10.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn worker_command_lines_parse_as_workers() {
        let parent = crate::cli::Cli::try_parse_from([
            "confab-bench",
            "--ws",
            "ws://127.0.0.1:8100/connection/websocket",
            "--jwt-secret",
            "s3cret",
            "--gateway-pid",
            "1,2",
            "connections",
            "-n",
            "100000",
            "--processes",
            "6",
        ])
        .unwrap();
        let sources = ["127.0.0.3".parse().unwrap()];
        let args = worker_args(
            &parent.common,
            Target::Confab,
            16_667,
            17,
            Duration::from_secs(330),
            &sources,
            Path::new("bench-results/c-worker1.json"),
        );
        assert!(!args.iter().any(|a| a.contains("s3cret")), "{args:?}");
        let mut argv = vec!["confab-bench".to_owned()];
        argv.extend(args);
        let w = crate::cli::Cli::try_parse_from(argv).unwrap();
        assert_eq!(w.common.ws, ["ws://127.0.0.1:8100/connection/websocket"]);
        assert_eq!(w.common.source_addrs, sources);
        assert!(w.common.quiet && w.common.gateway_pid.is_empty());
        match w.command.scenario().unwrap() {
            crate::cli::Scenario::Connections {
                connections,
                rooms,
                hold,
                processes,
                worker,
                ..
            } => {
                assert_eq!((*connections, *rooms, *processes), (16_667, 17, 1));
                assert!(*worker);
                assert_eq!(*hold, Duration::from_secs(330));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            worker_out(Path::new("bench-results/c.json"), 1),
            Path::new("bench-results/c-worker1.json")
        );
    }

    fn status(target: usize, established: usize, start: u64, end: u64) -> WorkerStatus {
        WorkerStatus {
            conns: ConnStats {
                target,
                established,
                failed: (target - established) as u64,
                errors: if target > established {
                    [("refused".to_owned(), (target - established) as u64)].into()
                } else {
                    Default::default()
                },
                source_addrs: vec![format!("127.0.0.{start}")],
                ..Default::default()
            },
            ramp_started_ms: start,
            ramp_ended_ms: end,
            bench_rss_kib: Some(1),
        }
    }

    #[test]
    fn worker_lines_round_trip() {
        let s = status(10, 9, 1_000, 3_000);
        let line = format!("{READY}{}", serde_json::to_string(&s).unwrap());
        assert_eq!(parse_line(&line), Some(Event::Ready(s.clone())));
        let line = format!("{DONE}{}", serde_json::to_string(&s).unwrap());
        assert_eq!(parse_line(&line), Some(Event::Done(s)));
        assert_eq!(parse_line("confab-bench connections against confab"), None);
        assert_eq!(parse_line(&format!("{READY}not json")), None);
    }

    #[test]
    fn workers_add_up_to_one_run() {
        let shares = [10, 10, 10];
        let mut end = status(10, 9, 1_000, 3_000);
        end.conns.alive_at_end = 8;
        end.conns.closed_by_server = 1;
        let ready = [
            Some(status(10, 10, 1_000, 2_000)),
            Some(status(10, 9, 1_500, 5_000)),
            None,
        ];
        let done = [None, Some(end), None];
        let c = aggregate(&shares, &ready, &done);
        assert_eq!((c.target, c.established, c.failed), (30, 19, 11));
        assert_eq!(c.errors["refused"], 1);
        assert_eq!(c.errors["worker exited before its ramp ended"], 10);
        assert_eq!(c.ramp_secs, 4.0);
        assert_eq!(c.connect_rate_per_sec, 19.0 / 4.0);
        assert_eq!((c.alive_at_end, c.closed_by_server), (8, 1));
        assert_eq!(c.source_addrs.len(), 2);
    }
}
