//! `compare goals`: every scenario behind issue 12's goal table, each run
//! against Confab and Centrifugo back to back by [`compare::run`], and one
//! table whose rows are the issue's goals: Confab's figure, Centrifugo's, the
//! ratio, and whether the goal holds, computed from the figures with the
//! issue's thresholds ([`goal_rows`]). Figures this run cannot take (100k
//! connections, the persister) come from `--extra` or are shown as not
//! measured; nothing here is a hard-coded result.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cli::{self, Common, Goals, Scenario, Traffic};
use crate::compare::{self, Comparison};
use crate::report::{self, Report};
use crate::sys;
use crate::target::{self, Target};

/// The issue's thresholds. These are the goals, not results.
pub const LATENCY_10K_P99_MS: f64 = 10.0;
/// Confab's p99 at most this times Centrifugo's, same run.
pub const LATENCY_10K_OF_CENTRIFUGO: f64 = 0.5;
pub const LATENCY_1K_P99_MS: f64 = 5.0;
pub const FANOUT_DELIVERIES_PER_SEC: f64 = 400_000.0;
/// Deliveries per server CPU-second at least this times Centrifugo's
/// ("≥ 2× Centrifugo at equal server CPU").
pub const FANOUT_PER_CPU_TIMES_CENTRIFUGO: f64 = 2.0;
/// Server CPU per delivery at most this times Centrifugo's.
pub const CPU_PER_DELIVERY_OF_CENTRIFUGO: f64 = 0.5;
pub const IDLE_KIB_PER_CONNECTION: f64 = 6.0;
/// Memory per idle connection at most this times Centrifugo's.
pub const IDLE_MEMORY_OF_CENTRIFUGO: f64 = 1.0 / 3.0;
/// Idle subscribed connections held at once on one machine.
pub const CONNECTIONS_ON_ONE_MACHINE: f64 = 100_000.0;
pub const PERSISTER_RECORDS_PER_SEC: f64 = 150_000.0;

/// The runs behind the goal table, in the order they run (the idle-memory
/// run first, while the servers are as fresh as the caller left them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunId {
    Idle10k,
    Latency1k,
    Latency10k,
    Fanout5k,
}

impl RunId {
    pub const ALL: [RunId; 4] = [
        Self::Idle10k,
        Self::Latency1k,
        Self::Latency10k,
        Self::Fanout5k,
    ];

    /// Names the run's result file.
    pub fn label(self) -> &'static str {
        match self {
            Self::Idle10k => "connections-10k",
            Self::Latency1k => "latency-1k",
            Self::Latency10k => "latency-10k",
            Self::Fanout5k => "fanout-5k",
        }
    }
}

/// One planned run: the scenario and how to run it by hand.
#[derive(Debug, Clone)]
pub struct Planned {
    pub id: RunId,
    pub scenario: Scenario,
    /// The same run as a plain `compare` command line.
    pub equivalent: String,
}

/// The options with `--quick` applied.
pub fn effective(g: &Goals) -> Goals {
    let mut g = g.clone();
    if g.quick {
        g.scale_down = 20;
        g.timing.duration = Duration::from_secs(2);
        g.timing.warmup = Duration::from_millis(500);
        g.timing.drain = Duration::from_secs(2);
        g.settle = Duration::from_secs(1);
        g.hold = Duration::ZERO;
    }
    g
}

fn dur(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The four runs at the issue's sizes divided by `scale_down`.
pub fn plan(g: &Goals, cmp: &cli::Compare) -> Vec<Planned> {
    let k = g.scale_down.max(1);
    let n = |x: usize| (x / k as usize).max(1);
    let rate = |x: f64| x / f64::from(k);
    let traffic = Traffic {
        timing: g.timing.clone(),
        size: 0,
        max_inflight: 1000,
    };
    let mut prefix = format!("confab-bench compare --pause {}", dur(cmp.pause));
    if cmp.centrifugo_first {
        prefix.push_str(" --centrifugo-first");
    }
    let t = format!(
        "--duration {} --warmup {} --drain {}",
        dur(g.timing.duration),
        dur(g.timing.warmup),
        dur(g.timing.drain)
    );
    RunId::ALL
        .iter()
        .map(|&id| {
            let (scenario, args) = match id {
                RunId::Idle10k => (
                    Scenario::Connections {
                        connections: n(10_000),
                        rooms: n(100),
                        settle: g.settle,
                        hold: g.hold,
                        processes: 1,
                        worker: false,
                    },
                    format!(
                        "connections -n {} --rooms {} --settle {} --hold {}",
                        n(10_000),
                        n(100),
                        dur(g.settle),
                        dur(g.hold)
                    ),
                ),
                RunId::Latency1k | RunId::Latency10k => {
                    let (c, r, m) = if id == RunId::Latency1k {
                        (1_000, 10, 200.0)
                    } else {
                        (10_000, 100, 1_000.0)
                    };
                    (
                        Scenario::Latency {
                            connections: n(c),
                            rooms: n(r),
                            publishers: 1,
                            rate: rate(m),
                            traffic: traffic.clone(),
                        },
                        format!(
                            "latency -n {} -r {} -p 1 --rate {} {t}",
                            n(c),
                            n(r),
                            rate(m)
                        ),
                    )
                }
                RunId::Fanout5k => (
                    Scenario::Fanout {
                        subscribers: n(5_000),
                        publishers: g.fanout_publishers,
                        rate: g.fanout_rate,
                        traffic: traffic.clone(),
                    },
                    format!(
                        "fanout -n {} -p {} --rate {} {t}",
                        n(5_000),
                        g.fanout_publishers,
                        g.fanout_rate
                    ),
                ),
            };
            Planned {
                id,
                scenario,
                equivalent: format!("{prefix} {args}"),
            }
        })
        .collect()
}

/// One figure of both servers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Pair {
    pub confab: Option<f64>,
    pub centrifugo: Option<f64>,
}

impl Pair {
    fn of(c: &Comparison, get: impl Fn(&Report) -> Option<f64>) -> Self {
        // A run cut short by Ctrl-C has partial figures: they do not count.
        let usable = |r: &Option<Report>| r.as_ref().filter(|r| !r.interrupted).and_then(&get);
        Self {
            confab: usable(&c.confab),
            centrifugo: usable(&c.centrifugo),
        }
    }

    fn ratio(self) -> Option<f64> {
        self.confab
            .zip(self.centrifugo)
            .and_then(|(a, b)| compare::ratio(a, b))
    }
}

/// What one run measured, for the goal rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RunFigures {
    /// publish→deliver p99, ms.
    pub p99_ms: Pair,
    /// Deliveries expected (acked × subscribers) and not received.
    pub missing: Pair,
    /// Deliveries per second, first publish to last delivery.
    pub deliveries_per_sec: Pair,
    /// Server CPU from the first publish to the end of the drain, per delivery, µs.
    pub cpu_us_per_delivery: Pair,
    /// Server RSS growth per established connection, KiB.
    pub kib_per_connection: Pair,
    /// Connections asked for and not established.
    pub not_established: Pair,
}

impl RunFigures {
    pub fn of(c: &Comparison) -> Self {
        Self {
            p99_ms: Pair::of(c, |r| r.deliver_latency.as_ref().map(|s| s.p99_ms)),
            missing: Pair::of(c, |r| {
                r.traffic.as_ref().map(|t| t.missing_deliveries as f64)
            }),
            deliveries_per_sec: Pair::of(c, |r| {
                r.traffic
                    .as_ref()
                    .map(|t| t.deliveries_per_sec)
                    .filter(|v| *v > 0.0)
            }),
            cpu_us_per_delivery: Pair::of(c, |r| {
                r.traffic
                    .as_ref()
                    .and_then(|t| t.server_cpu_us_per_delivery)
            }),
            kib_per_connection: Pair::of(c, |r| {
                r.memory
                    .as_ref()
                    .and_then(|m| m.per_connection_bytes)
                    .map(|b| b / 1024.0)
            }),
            not_established: Pair::of(c, |r| {
                Some(
                    r.connections
                        .target
                        .saturating_sub(r.connections.established) as f64,
                )
            }),
        }
    }
}

/// A figure measured elsewhere, given with `--extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraFigure {
    pub confab: f64,
    #[serde(default)]
    pub centrifugo: Option<f64>,
    /// Where and how it was measured (a results file, a document section).
    pub source: String,
    #[serde(default)]
    pub detail: Option<String>,
}

/// The `--extra` file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extra {
    /// Idle subscribed connections held at once on one machine.
    #[serde(default)]
    pub connections_100k: Option<ExtraFigure>,
    /// Records the persister stores per second, Kafka consume included.
    #[serde(default)]
    pub persister_records_per_sec: Option<ExtraFigure>,
}

impl Extra {
    /// Parses and checks an `--extra` text: every figure finite and not
    /// negative, every source named.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let e: Self = serde_json::from_str(text)?;
        for (name, f) in [
            ("connections_100k", &e.connections_100k),
            ("persister_records_per_sec", &e.persister_records_per_sec),
        ] {
            let Some(f) = f else { continue };
            for v in std::iter::once(f.confab).chain(f.centrifugo) {
                anyhow::ensure!(v.is_finite() && v >= 0.0, "{name}: {v} is not a figure");
            }
            anyhow::ensure!(
                !f.source.trim().is_empty(),
                "{name}: say where the figure was measured (\"source\")"
            );
        }
        Ok(e)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("{}", path.display()))
    }
}

/// Everything the goal rows are computed from.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Measured {
    pub idle_10k: RunFigures,
    pub latency_1k: RunFigures,
    pub latency_10k: RunFigures,
    pub fanout_5k: RunFigures,
    pub extra: Extra,
}

impl Measured {
    fn slot(&mut self, id: RunId) -> &mut RunFigures {
        match id {
            RunId::Idle10k => &mut self.idle_10k,
            RunId::Latency1k => &mut self.latency_1k,
            RunId::Latency10k => &mut self.latency_10k,
            RunId::Fanout5k => &mut self.fanout_5k,
        }
    }
}

/// Whether a goal holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Holds,
    Misses,
    NotMeasured,
}

/// One condition of a goal; `ok` is `None` when a figure it needs is missing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub what: String,
    pub ok: Option<bool>,
}

/// A goal misses if any condition fails, holds if every one is met, and is
/// otherwise not measured.
pub fn verdict(checks: &[Check]) -> Verdict {
    if checks.iter().any(|c| c.ok == Some(false)) {
        Verdict::Misses
    } else if !checks.is_empty() && checks.iter().all(|c| c.ok == Some(true)) {
        Verdict::Holds
    } else {
        Verdict::NotMeasured
    }
}

fn check(what: impl Into<String>, ok: Option<bool>) -> Check {
    Check {
        what: what.into(),
        ok,
    }
}

/// Confab's figure at most `k` times Centrifugo's.
fn at_most_times(p: Pair, k: f64) -> Option<bool> {
    p.confab.zip(p.centrifugo).map(|(a, b)| a <= k * b)
}

/// Zero, for Confab.
fn none_on_confab(p: Pair) -> Option<bool> {
    p.confab.map(|v| v == 0.0)
}

/// One row of the goal table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GoalRow {
    pub id: String,
    /// The goal as issue 12 states it.
    pub goal: String,
    pub unit: String,
    pub confab: Option<f64>,
    pub centrifugo: Option<f64>,
    /// Confab / Centrifugo.
    pub ratio: Option<f64>,
    pub checks: Vec<Check>,
    pub verdict: Verdict,
    /// The run of this invocation the figures come from, the `--extra`
    /// source, or that nothing measured it.
    pub source: String,
    pub detail: Option<String>,
}

fn measured_row(
    id: &str,
    goal: &str,
    unit: &str,
    run: RunId,
    figure: Pair,
    checks: Vec<Check>,
    detail: Option<String>,
) -> GoalRow {
    GoalRow {
        id: id.into(),
        goal: goal.into(),
        unit: unit.into(),
        confab: figure.confab,
        centrifugo: figure.centrifugo,
        ratio: figure.ratio(),
        verdict: verdict(&checks),
        checks,
        source: if figure.confab.is_some() || figure.centrifugo.is_some() {
            format!("this run: {}", run.label())
        } else {
            NOT_MEASURED.into()
        },
        detail,
    }
}

const NOT_MEASURED: &str = "not measured in this run";

fn extra_row(id: &str, goal: &str, unit: &str, f: Option<&ExtraFigure>, min: f64) -> GoalRow {
    let checks = vec![check(
        format!("≥ {}", fmt_num(min)),
        f.map(|f| f.confab >= min),
    )];
    GoalRow {
        id: id.into(),
        goal: goal.into(),
        unit: unit.into(),
        confab: f.map(|f| f.confab),
        centrifugo: f.and_then(|f| f.centrifugo),
        ratio: f.and_then(|f| f.centrifugo.and_then(|b| compare::ratio(f.confab, b))),
        verdict: verdict(&checks),
        checks,
        source: f
            .map(|f| format!("--extra: {}", f.source))
            .unwrap_or_else(|| NOT_MEASURED.into()),
        detail: f.and_then(|f| f.detail.clone()),
    }
}

fn fmt_num(v: f64) -> String {
    let s = format!("{v:.0}");
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 && c.is_ascii_digit() {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The goal table, computed from the figures with the issue's thresholds.
pub fn goal_rows(m: &Measured) -> Vec<GoalRow> {
    let l10 = &m.latency_10k;
    let l1 = &m.latency_1k;
    let f = &m.fanout_5k;
    let idle = &m.idle_10k;
    let all_connected = |r: &RunFigures| {
        check(
            "every Confab connection established",
            none_on_confab(r.not_established),
        )
    };
    let per_cpu = |p: Pair| Pair {
        confab: p.confab.filter(|v| *v > 0.0).map(|us| 1e6 / us),
        centrifugo: p.centrifugo.filter(|v| *v > 0.0).map(|us| 1e6 / us),
    };
    let mut rows = vec![
        measured_row(
            "latency_10k",
            "10k conns, 100 rooms, 1,000 msg/s: publish→deliver p99 < 10 ms, and ≤ ½ of Centrifugo's p99 in the same run",
            "ms",
            RunId::Latency10k,
            l10.p99_ms,
            vec![
                check("p99 < 10 ms", l10.p99_ms.confab.map(|v| v < LATENCY_10K_P99_MS)),
                check(
                    "p99 ≤ ½ of Centrifugo's",
                    at_most_times(l10.p99_ms, LATENCY_10K_OF_CENTRIFUGO),
                ),
                check("no delivery missing", none_on_confab(l10.missing)),
                all_connected(l10),
            ],
            None,
        ),
        measured_row(
            "latency_1k",
            "1k conns, 10 rooms, 200 msg/s: publish→deliver p99 < 5 ms",
            "ms",
            RunId::Latency1k,
            l1.p99_ms,
            vec![
                check("p99 < 5 ms", l1.p99_ms.confab.map(|v| v < LATENCY_1K_P99_MS)),
                check("no delivery missing", none_on_confab(l1.missing)),
                all_connected(l1),
            ],
            None,
        ),
        measured_row(
            "fanout_5k",
            "1 room × 5,000 subscribers: deliveries/s ≥ 400k/s, and ≥ 2× Centrifugo at equal server CPU",
            "/s",
            RunId::Fanout5k,
            f.deliveries_per_sec,
            vec![
                check(
                    "≥ 400,000 deliveries/s",
                    f.deliveries_per_sec
                        .confab
                        .map(|v| v >= FANOUT_DELIVERIES_PER_SEC),
                ),
                check(
                    "deliveries per server CPU-second ≥ 2× Centrifugo's",
                    at_most_times(
                        f.cpu_us_per_delivery,
                        1.0 / FANOUT_PER_CPU_TIMES_CENTRIFUGO,
                    ),
                ),
                check("no delivery missing", none_on_confab(f.missing)),
                all_connected(f),
            ],
            {
                let p = per_cpu(f.cpu_us_per_delivery);
                p.confab.zip(p.centrifugo).map(|(a, b)| {
                    format!(
                        "deliveries per server CPU-second: Confab {}, Centrifugo {} (ratio {:.2})",
                        fmt_num(a),
                        fmt_num(b),
                        a / b
                    )
                })
            },
        ),
    ];
    for (run, id, name, figs) in [
        (
            RunId::Latency10k,
            "cpu_per_delivery_latency_10k",
            "10k latency run",
            l10,
        ),
        (
            RunId::Latency1k,
            "cpu_per_delivery_latency_1k",
            "1k latency run",
            l1,
        ),
        (
            RunId::Fanout5k,
            "cpu_per_delivery_fanout_5k",
            "fan-out run",
            f,
        ),
    ] {
        rows.push(measured_row(
            id,
            &format!("gateway CPU per delivery (from /proc, {name}): ≤ ½ of Centrifugo's"),
            "µs",
            run,
            figs.cpu_us_per_delivery,
            vec![check(
                "≤ ½ of Centrifugo's",
                at_most_times(figs.cpu_us_per_delivery, CPU_PER_DELIVERY_OF_CENTRIFUGO),
            )],
            None,
        ));
    }
    rows.push(measured_row(
        "idle_memory_10k",
        "memory per idle connection (RSS growth / N at 10k): ≤ 6 KiB, and ≤ ⅓ of Centrifugo's",
        "KiB",
        RunId::Idle10k,
        idle.kib_per_connection,
        vec![
            check(
                "≤ 6 KiB",
                idle.kib_per_connection
                    .confab
                    .map(|v| v <= IDLE_KIB_PER_CONNECTION),
            ),
            check(
                "≤ ⅓ of Centrifugo's",
                at_most_times(idle.kib_per_connection, IDLE_MEMORY_OF_CENTRIFUGO),
            ),
            all_connected(idle),
        ],
        None,
    ));
    rows.push(extra_row(
        "connections_100k",
        "connections on one machine: 100k idle and subscribed",
        "conns",
        m.extra.connections_100k.as_ref(),
        CONNECTIONS_ON_ONE_MACHINE,
    ));
    rows.push(extra_row(
        "persister",
        "persister, Kafka consume included: ≥ 150k records/s sustained",
        "records/s",
        m.extra.persister_records_per_sec.as_ref(),
        PERSISTER_RECORDS_PER_SEC,
    ));
    rows
}

/// What was run, for the record.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunRecord {
    pub id: String,
    pub equivalent_command: String,
    /// The comparison's JSON (both full reports inside).
    pub results: Option<String>,
    pub load_average_start: Option<String>,
    pub load_average_end: Option<String>,
    /// Why the run produced no figures.
    pub error: Option<String>,
    /// The run's own comparison table rows.
    pub rows: Vec<compare::Row>,
}

/// Versions of what was measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Versions {
    pub confab_bench: String,
    /// `git rev-parse HEAD` (+ `-dirty`) of the checkout the bench was built in.
    pub bench_checkout: Option<String>,
    /// The gateway binary(ies) measured and the commit of the checkout each lives in.
    pub gateway: Vec<String>,
    /// `centrifugo version` of the running node's binary.
    pub centrifugo: Vec<String>,
}

/// The whole `compare goals` result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GoalsReport {
    pub started_at: String,
    pub finished_at: String,
    pub command: String,
    pub versions: Versions,
    pub load_average_start: Option<String>,
    pub load_average_end: Option<String>,
    /// The options in effect (`--quick` applied).
    pub settings: Option<Goals>,
    pub scale_down: u32,
    pub runs: Vec<RunRecord>,
    pub rows: Vec<GoalRow>,
    pub measured: Measured,
    pub notes: Vec<String>,
}

fn cell(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "—".into(),
        Some(v) if unit.is_empty() => fmt_num(v),
        Some(v) if v.abs() >= 1000.0 => format!("{} {unit}", fmt_num(v)),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1} {unit}"),
        Some(v) => format!("{v:.2} {unit}"),
    }
}

fn ratio_cell(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "—".into(), |q| format!("{q:.2}"))
}

fn holds_cell(r: &GoalRow, scaled: bool) -> String {
    let mark = if scaled && r.source.starts_with("this run") {
        " (scaled run)"
    } else {
        ""
    };
    match r.verdict {
        Verdict::Holds => format!("yes{mark}"),
        Verdict::Misses => {
            let failed: Vec<&str> = r
                .checks
                .iter()
                .filter(|c| c.ok == Some(false))
                .map(|c| c.what.as_str())
                .collect();
            format!("**no**: not {}{mark}", failed.join("; not "))
        }
        Verdict::NotMeasured if r.source == NOT_MEASURED => NOT_MEASURED.into(),
        Verdict::NotMeasured => {
            let open: Vec<&str> = r
                .checks
                .iter()
                .filter(|c| c.ok.is_none())
                .map(|c| c.what.as_str())
                .collect();
            format!("not measured: {}", open.join("; "))
        }
    }
}

impl GoalsReport {
    /// The goal table alone, as markdown.
    pub fn goal_table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "| goal | Confab | Centrifugo | ratio | holds? |");
        let _ = writeln!(o, "|---|---|---|---|---|");
        for r in &self.rows {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                r.goal,
                cell(r.confab, &r.unit),
                cell(r.centrifugo, &r.unit),
                ratio_cell(r.ratio),
                holds_cell(r, self.scale_down > 1)
            );
        }
        o
    }

    /// The full markdown report: the goal table, where each figure came from,
    /// versions, commands, load averages, and each run's own table.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "# confab-bench compare goals, {}\n", self.started_at);
        if self.scale_down > 1 {
            let _ = writeln!(
                o,
                "**Scaled run**: connection and room counts and the latency runs' rates are 1/{} \
                 of the issue's, so the verdicts below are not the goals' verdicts.\n",
                self.scale_down
            );
        }
        o.push_str(&self.goal_table());
        let _ = writeln!(o);
        for r in &self.rows {
            let mut extra = Vec::new();
            if let Some(d) = &r.detail {
                extra.push(d.clone());
            }
            if r.source != NOT_MEASURED {
                extra.push(format!("from {}", r.source));
            }
            if !extra.is_empty() {
                let _ = writeln!(o, "- {}: {}", r.id, extra.join("; "));
            }
        }
        let _ = writeln!(o, "\n## How it was measured\n");
        let _ = writeln!(o, "- command: `{}`", self.command);
        let _ = writeln!(
            o,
            "- started {}, finished {}; load average {} at the start, {} at the end (1, 5, 15 min; 2 cores)",
            self.started_at,
            self.finished_at,
            self.load_average_start.as_deref().unwrap_or("?"),
            self.load_average_end.as_deref().unwrap_or("?")
        );
        let v = &self.versions;
        let _ = writeln!(
            o,
            "- confab-bench {} ({})",
            v.confab_bench,
            v.bench_checkout.as_deref().unwrap_or("checkout unknown")
        );
        for g in &v.gateway {
            let _ = writeln!(o, "- gateway: {g}");
        }
        for c in &v.centrifugo {
            let _ = writeln!(o, "- Centrifugo: {c}");
        }
        for n in &self.notes {
            let _ = writeln!(o, "- note: {n}");
        }
        for run in &self.runs {
            let _ = writeln!(o, "\n### {}\n", run.id);
            let _ = writeln!(o, "`{}`\n", run.equivalent_command);
            if let Some(e) = &run.error {
                let _ = writeln!(o, "Failed: {e}");
                continue;
            }
            let _ = writeln!(
                o,
                "Load average {} → {}; results `{}`.\n",
                run.load_average_start.as_deref().unwrap_or("?"),
                run.load_average_end.as_deref().unwrap_or("?"),
                run.results.as_deref().unwrap_or("?")
            );
            let _ = writeln!(o, "| metric | Confab | Centrifugo | ratio |");
            let _ = writeln!(o, "|---|---|---|---|");
            for r in &run.rows {
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} |",
                    r.metric,
                    cell(r.confab, &r.unit),
                    cell(r.centrifugo, &r.unit),
                    ratio_cell(r.ratio)
                );
            }
        }
        o
    }
}

fn git_head(dir: &Path) -> Option<String> {
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let head = out(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty =
        out(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

/// The running binaries' paths, with the commit of the checkout a gateway
/// binary was built in and the version Centrifugo reports.
fn versions(common: &Common) -> Versions {
    let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let pids = |t: Target| {
        target::Endpoints::resolve(common, t, false)
            .map(|e| e.server.pids)
            .unwrap_or_default()
    };
    let mut v = Versions {
        confab_bench: env!("CARGO_PKG_VERSION").into(),
        bench_checkout: git_head(Path::new(env!("CARGO_MANIFEST_DIR"))),
        ..Default::default()
    };
    for pid in pids(Target::Confab) {
        let Some(path) = exe(pid) else { continue };
        let commit = path
            .ancestors()
            .find(|d| d.join(".git").exists())
            .and_then(git_head)
            .unwrap_or_else(|| "commit unknown".into());
        let s = format!("{} (pid {pid}, checkout at {commit})", path.display());
        if !v.gateway.contains(&s) {
            v.gateway.push(s);
        }
    }
    for pid in pids(Target::Centrifugo) {
        let Some(path) = exe(pid) else { continue };
        let said = std::process::Command::new(&path)
            .arg("version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "version unknown".into());
        v.centrifugo
            .push(format!("{said} ({}, pid {pid})", path.display()));
    }
    v
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `<dir>/<stem>-<label>.json` beside `out`.
fn beside(out: &Path, label: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "goals".into());
    out.with_file_name(format!("{stem}-{label}.json"))
}

/// Runs the four comparisons, prints the goal table and writes
/// `goals-<time>.json` and `.md` (each run's comparison beside them).
pub async fn run(
    common: &Common,
    cmp: &cli::Compare,
    goals: &Goals,
    command: &str,
    interrupt: &CancellationToken,
) -> anyhow::Result<GoalsReport> {
    let g = effective(goals);
    anyhow::ensure!(
        common.server_pid.is_empty(),
        "compare names each server's pids with --gateway-pid and --centrifugo-pid, not --server-pid"
    );
    let extra = match &g.extra {
        Some(p) => Extra::load(p)?,
        None => Extra::default(),
    };
    target::keys_for(Target::Centrifugo, common.jwt_secret.as_deref())?;
    let out = common
        .out
        .clone()
        .unwrap_or_else(|| report::default_out("goals", time::OffsetDateTime::now_utc()));
    let mut rep = GoalsReport {
        started_at: now_rfc3339(),
        command: command.into(),
        versions: versions(common),
        load_average_start: sys::loadavg(),
        settings: Some(g.clone()),
        scale_down: g.scale_down,
        ..Default::default()
    };
    let mut measured = Measured {
        extra,
        ..Default::default()
    };
    for (i, p) in plan(&g, cmp).into_iter().enumerate() {
        if interrupt.is_cancelled() {
            rep.notes
                .push("interrupted: later runs were not started".into());
            break;
        }
        if i > 0 && !cmp.pause.is_zero() {
            tokio::select! {
                _ = interrupt.cancelled() => continue,
                _ = tokio::time::sleep(cmp.pause) => {}
            }
        }
        println!("\n===== goals: {} =====\n{}", p.id.label(), p.equivalent);
        let path = beside(&out, p.id.label());
        let mut c = common.clone();
        c.out = Some(path.clone());
        let mut rec = RunRecord {
            id: p.id.label().into(),
            equivalent_command: p.equivalent.clone(),
            ..Default::default()
        };
        match compare::run(&c, cmp, &p.scenario, command, interrupt).await {
            Ok(result) => {
                *measured.slot(p.id) = RunFigures::of(&result);
                rec.results = Some(path.display().to_string());
                rec.load_average_start = result.load_average_start.clone();
                rec.load_average_end = result.load_average_end.clone();
                rec.rows = result.rows.clone();
                for r in [&result.confab, &result.centrifugo].into_iter().flatten() {
                    if r.interrupted {
                        rep.notes.push(format!(
                            "{} against {} was interrupted: its figures are left out",
                            p.id.label(),
                            r.target
                        ));
                    }
                }
            }
            Err(e) => {
                eprintln!("goals: {} failed: {e:#}", p.id.label());
                rec.error = Some(format!("{e:#}"));
            }
        }
        rep.runs.push(rec);
    }
    rep.rows = goal_rows(&measured);
    rep.measured = measured;
    rep.finished_at = now_rfc3339();
    rep.load_average_end = sys::loadavg();
    rep.notes.push(
        "server CPU and RSS are read from /proc for the gateway process(es) only on Confab's side \
         (not Kafka, the persister, auth-api or PostgreSQL) and for the Centrifugo node(s), engine \
         in process, on the other; the bench shares the machine with both"
            .into(),
    );
    rep.notes.push(
        "memory per idle connection is only meaningful against freshly started servers: RSS \
         seldom shrinks after earlier runs"
            .into(),
    );

    println!("\n===== confab-bench compare goals =====\n");
    print!("{}", rep.goal_table());
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&rep)?)
        .with_context(|| format!("writing {}", out.display()))?;
    let md = out.with_extension("md");
    std::fs::write(&md, rep.markdown()).with_context(|| format!("writing {}", md.display()))?;
    println!("  results: {}\n  table:   {}", out.display(), md.display());
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn pair(a: f64, b: f64) -> Pair {
        Pair {
            confab: Some(a),
            centrifugo: Some(b),
        }
    }

    fn run(p99: Pair, dps: Pair, cpu: Pair) -> RunFigures {
        RunFigures {
            p99_ms: p99,
            missing: pair(0.0, 0.0),
            deliveries_per_sec: dps,
            cpu_us_per_delivery: cpu,
            kib_per_connection: Pair::default(),
            not_established: pair(0.0, 0.0),
        }
    }

    fn row<'a>(rows: &'a [GoalRow], id: &str) -> &'a GoalRow {
        rows.iter().find(|r| r.id == id).unwrap()
    }

    /// The figures of the 2026-12-02 runs in docs/BENCHMARKS.md.
    fn measured_like_the_docs() -> Measured {
        Measured {
            latency_10k: run(pair(677.4, 373.2), pair(1e5, 1e5), pair(8.16, 12.8)),
            latency_1k: run(pair(78.8, 9.5), pair(2e4, 2e4), pair(27.2, 30.6)),
            fanout_5k: run(
                pair(321.0, 14205.0),
                pair(298_508.0, 116_198.0),
                pair(3.19, 10.3),
            ),
            idle_10k: RunFigures {
                kib_per_connection: pair(18.0, 47.7),
                not_established: pair(0.0, 0.0),
                ..Default::default()
            },
            extra: Extra::default(),
        }
    }

    #[test]
    fn verdicts_follow_the_issues_thresholds() {
        let rows = goal_rows(&measured_like_the_docs());
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "latency_10k",
                "latency_1k",
                "fanout_5k",
                "cpu_per_delivery_latency_10k",
                "cpu_per_delivery_latency_1k",
                "cpu_per_delivery_fanout_5k",
                "idle_memory_10k",
                "connections_100k",
                "persister"
            ]
        );
        let l10 = row(&rows, "latency_10k");
        assert_eq!(l10.verdict, Verdict::Misses);
        assert_eq!((l10.confab, l10.centrifugo), (Some(677.4), Some(373.2)));
        assert!((l10.ratio.unwrap() - 677.4 / 373.2).abs() < 1e-9);
        assert_eq!(l10.checks[0].ok, Some(false));
        assert_eq!(l10.checks[1].ok, Some(false));
        assert_eq!(row(&rows, "latency_1k").verdict, Verdict::Misses);
        // 298.5k/s is under 400k/s, though the CPU half holds (3.19 ≤ 10.3 / 2).
        let f = row(&rows, "fanout_5k");
        assert_eq!(f.verdict, Verdict::Misses);
        assert_eq!(f.checks[0].ok, Some(false));
        assert_eq!(f.checks[1].ok, Some(true));
        assert!(f.detail.as_deref().unwrap().contains("ratio 3.23"), "{f:?}");
        // 8.16 > 12.8 / 2, 27.2 > 30.6 / 2, 3.19 ≤ 10.3 / 2.
        assert_eq!(
            row(&rows, "cpu_per_delivery_latency_10k").verdict,
            Verdict::Misses
        );
        assert_eq!(
            row(&rows, "cpu_per_delivery_latency_1k").verdict,
            Verdict::Misses
        );
        assert_eq!(
            row(&rows, "cpu_per_delivery_fanout_5k").verdict,
            Verdict::Holds
        );
        // 18 KiB: over 6 KiB, and 18 / 47.7 > ⅓.
        let idle = row(&rows, "idle_memory_10k");
        assert_eq!(idle.verdict, Verdict::Misses);
        assert_eq!(idle.unit, "KiB");
        for id in ["connections_100k", "persister"] {
            let r = row(&rows, id);
            assert_eq!(r.verdict, Verdict::NotMeasured);
            assert_eq!(r.source, NOT_MEASURED);
            assert_eq!(r.confab, None);
        }
    }

    #[test]
    fn goals_hold_when_every_condition_does() {
        let m = Measured {
            latency_10k: run(pair(9.0, 18.0), pair(1e5, 1e5), pair(2.0, 4.0)),
            latency_1k: run(pair(4.9, 3.0), pair(2e4, 2e4), pair(5.0, 10.0)),
            fanout_5k: run(pair(50.0, 60.0), pair(400_000.0, 100_000.0), pair(1.0, 2.0)),
            idle_10k: RunFigures {
                kib_per_connection: pair(6.0, 18.0),
                not_established: pair(0.0, 3.0),
                ..Default::default()
            },
            extra: Extra::parse(
                r#"{"connections_100k": {"confab": 100000, "source": "x.json"},
                    "persister_records_per_sec": {"confab": 150001, "source": "BENCHMARKS.md"}}"#,
            )
            .unwrap(),
        };
        let rows = goal_rows(&m);
        for r in &rows {
            assert_eq!(r.verdict, Verdict::Holds, "{r:?}");
        }
        assert_eq!(row(&rows, "persister").source, "--extra: BENCHMARKS.md");

        // Each condition on its own turns a row.
        let mut m2 = m.clone();
        m2.latency_10k.p99_ms = pair(10.0, 100.0); // not < 10 ms
        assert_eq!(row(&goal_rows(&m2), "latency_10k").verdict, Verdict::Misses);
        let mut m2 = m.clone();
        m2.latency_10k.p99_ms = pair(9.0, 17.0); // more than half
        assert_eq!(row(&goal_rows(&m2), "latency_10k").verdict, Verdict::Misses);
        let mut m2 = m.clone();
        m2.latency_1k.missing = pair(1.0, 0.0);
        assert_eq!(row(&goal_rows(&m2), "latency_1k").verdict, Verdict::Misses);
        let mut m2 = m.clone();
        m2.fanout_5k.cpu_us_per_delivery = pair(1.01, 2.0); // not 2× per CPU-second
        assert_eq!(row(&goal_rows(&m2), "fanout_5k").verdict, Verdict::Misses);
        let mut m2 = m.clone();
        m2.fanout_5k.not_established = pair(1.0, 0.0);
        assert_eq!(row(&goal_rows(&m2), "fanout_5k").verdict, Verdict::Misses);
        let mut m2 = m.clone();
        m2.idle_10k.kib_per_connection = pair(5.0, 14.0); // 5 > 14 / 3
        assert_eq!(
            row(&goal_rows(&m2), "idle_memory_10k").verdict,
            Verdict::Misses
        );
        let mut m2 = m;
        m2.extra.connections_100k.as_mut().unwrap().confab = 99_999.0;
        assert_eq!(
            row(&goal_rows(&m2), "connections_100k").verdict,
            Verdict::Misses
        );
    }

    #[test]
    fn a_missing_figure_is_not_a_verdict() {
        let mut m = measured_like_the_docs();
        // Confab under its absolute bound, Centrifugo's run missing: open.
        m.latency_10k.p99_ms = Pair {
            confab: Some(5.0),
            centrifugo: None,
        };
        let rows = goal_rows(&m);
        let r = row(&rows, "latency_10k");
        assert_eq!(r.verdict, Verdict::NotMeasured);
        assert_eq!(r.ratio, None);
        // ... but a failed absolute bound misses whatever Centrifugo did.
        m.latency_10k.p99_ms.confab = Some(50.0);
        assert_eq!(row(&goal_rows(&m), "latency_10k").verdict, Verdict::Misses);
        // Nothing at all: not measured in this run.
        let rows = goal_rows(&Measured::default());
        assert!(rows.iter().all(|r| r.verdict == Verdict::NotMeasured));
        assert!(rows.iter().all(|r| r.source == NOT_MEASURED));
        assert_eq!(verdict(&[]), Verdict::NotMeasured);
    }

    #[test]
    fn extra_figures_must_say_where_they_come_from() {
        assert!(Extra::parse(r#"{"connections_100k": {"confab": 1}}"#).is_err());
        assert!(Extra::parse(r#"{"connections_100k": {"confab": 1, "source": " "}}"#).is_err());
        assert!(Extra::parse(r#"{"connections_100k": {"confab": -1, "source": "a"}}"#).is_err());
        assert!(Extra::parse(r#"{"latency_10k": {"confab": 1, "source": "a"}}"#).is_err());
        let e = Extra::parse(
            r#"{"persister_records_per_sec": {"confab": 25914, "centrifugo": null, "source": "a", "detail": "16 partitions"}}"#,
        )
        .unwrap();
        assert_eq!(e.connections_100k, None);
        let p = e.persister_records_per_sec.unwrap();
        assert_eq!(
            (p.confab, p.detail.as_deref()),
            (25914.0, Some("16 partitions"))
        );
        assert_eq!(Extra::parse("{}").unwrap(), Extra::default());
    }

    fn goals_of(args: &[&str]) -> (Goals, cli::Compare) {
        let mut argv = vec!["b", "compare", "--pause", "2s", "goals"];
        argv.extend_from_slice(args);
        match cli::Cli::try_parse_from(argv).unwrap().command {
            cli::Command::Compare(c) => match &c.what {
                cli::Compared::Goals(g) => (g.clone(), c.clone()),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_plan_runs_the_issues_sizes() {
        let (g, c) = goals_of(&["--duration", "60s"]);
        let p = plan(&effective(&g), &c);
        assert_eq!(
            p.iter().map(|p| p.id).collect::<Vec<_>>(),
            RunId::ALL.to_vec()
        );
        assert!(matches!(
            p[0].scenario,
            Scenario::Connections {
                connections: 10_000,
                rooms: 100,
                ..
            }
        ));
        match &p[2].scenario {
            Scenario::Latency {
                connections,
                rooms,
                rate,
                traffic,
                ..
            } => {
                assert_eq!((*connections, *rooms, *rate), (10_000, 100, 1000.0));
                assert_eq!(traffic.timing.duration, Duration::from_secs(60));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            p[1].scenario,
            Scenario::Latency {
                connections: 1_000,
                rooms: 10,
                ..
            }
        ));
        assert!(matches!(
            p[3].scenario,
            Scenario::Fanout {
                subscribers: 5_000,
                publishers: 3,
                ..
            }
        ));
        assert_eq!(
            p[2].equivalent,
            "confab-bench compare --pause 2s latency -n 10000 -r 100 -p 1 --rate 1000 \
             --duration 60s --warmup 3s --drain 5s"
        );
        // The equivalent command parses to the same scenario.
        let argv: Vec<&str> = p[2].equivalent.split(' ').collect();
        let cli = cli::Cli::try_parse_from(argv).unwrap();
        assert_eq!(
            serde_json::to_value(cli.command.scenario().unwrap()).unwrap(),
            serde_json::to_value(&p[2].scenario).unwrap()
        );
    }

    #[test]
    fn quick_shrinks_everything() {
        let (g, c) = goals_of(&["--quick", "--duration", "60s"]);
        let g = effective(&g);
        assert_eq!(
            (g.scale_down, g.timing.duration),
            (20, Duration::from_secs(2))
        );
        let p = plan(&g, &c);
        assert!(matches!(
            p[0].scenario,
            Scenario::Connections {
                connections: 500,
                rooms: 5,
                ..
            }
        ));
        match &p[1].scenario {
            Scenario::Latency {
                connections,
                rooms,
                rate,
                ..
            } => assert_eq!((*connections, *rooms, *rate), (50, 1, 10.0)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_table_has_one_row_per_goal() {
        let rows = goal_rows(&measured_like_the_docs());
        let rep = GoalsReport {
            started_at: "2026-12-03T00:00:00Z".into(),
            command: "confab-bench compare goals".into(),
            load_average_start: Some("0.50 0.40 0.30".into()),
            load_average_end: Some("3.00 2.00 1.00".into()),
            scale_down: 1,
            rows,
            ..Default::default()
        };
        let t = rep.goal_table();
        assert_eq!(t.lines().count(), 2 + 9, "{t}");
        let l10 = t.lines().find(|l| l.contains("10k conns")).unwrap();
        assert!(l10.contains("| 677.4 ms | 373.2 ms | 1.82 | **no**: not p99 < 10 ms; not p99 ≤ ½ of Centrifugo's |"), "{l10}");
        let f = t.lines().find(|l| l.contains("5,000 subscribers")).unwrap();
        assert!(f.contains("298,508 /s | 116,198 /s | 2.57"), "{f}");
        assert!(t.contains("| yes |"), "{t}");
        let p = t.lines().find(|l| l.contains("persister")).unwrap();
        assert!(
            p.contains("| — | — | — | not measured in this run |"),
            "{p}"
        );
        let md = rep.markdown();
        assert!(
            md.contains("0.50 0.40 0.30 at the start, 3.00 2.00 1.00 at the end"),
            "{md}"
        );
        assert!(!md.contains("Scaled run"));
        let scaled = GoalsReport {
            scale_down: 20,
            ..rep
        };
        assert!(scaled.markdown().contains("**Scaled run**"));
        assert!(scaled.goal_table().contains("(scaled run)"));
    }

    #[test]
    fn result_files_sit_beside_the_report() {
        assert_eq!(
            beside(Path::new("bench-results/goals-1.json"), "latency-1k"),
            Path::new("bench-results/goals-1-latency-1k.json")
        );
        assert_eq!(fmt_num(1234567.0), "1,234,567");
        assert_eq!(fmt_num(999.0), "999");
        assert_eq!(cell(Some(0.0), ""), "0");
        assert_eq!(cell(Some(12345.0), ""), "12,345");
        assert_eq!(cell(Some(2.5), "ms"), "2.50 ms");
        assert_eq!(cell(None, "ms"), "—");
        assert_eq!(dur(Duration::from_millis(500)), "500ms");
    }
}
