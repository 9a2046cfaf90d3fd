//! `compare`: one scenario against Confab and against Centrifugo, back to back
//! with the same parameters on the same machine, and one table of both
//! figures and their ratio. The two runs are ordinary [`Report`]s from the
//! same code; this module only picks figures out of them.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cli::{self, Common};
use crate::report::{self, Report};
use crate::target::{self, Target};

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
}

/// One metric of both runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub metric: String,
    /// `ms`, `µs`, `KiB`, `/s`, ... or empty for counts.
    pub unit: String,
    pub better: Better,
    pub confab: Option<f64>,
    pub centrifugo: Option<f64>,
    /// `confab / centrifugo`, when both are known and the quotient is defined
    /// (two zeros give 1).
    pub ratio: Option<f64>,
}

/// Both runs and their table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Comparison {
    pub scenario: String,
    pub started_at: String,
    /// The command line, secret hidden.
    pub command: String,
    /// The targets in the order they ran.
    pub order: Vec<String>,
    pub load_average_start: Option<String>,
    pub load_average_end: Option<String>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub confab: Option<Report>,
    pub centrifugo: Option<Report>,
}

/// A figure picked out of a report.
struct Metric {
    name: &'static str,
    unit: &'static str,
    better: Better,
    get: fn(&Report) -> Option<f64>,
}

/// The figures the table shows, in order. A row is left out when neither run
/// has it (a latency scenario has no RSS per connection without a pid, ...).
const METRICS: &[Metric] = &[
    Metric {
        name: "publish→deliver p50",
        unit: "ms",
        better: Better::Lower,
        get: |r| r.deliver_latency.as_ref().map(|s| s.p50_ms),
    },
    Metric {
        name: "publish→deliver p99",
        unit: "ms",
        better: Better::Lower,
        get: |r| r.deliver_latency.as_ref().map(|s| s.p99_ms),
    },
    Metric {
        name: "publish→deliver p99.9",
        unit: "ms",
        better: Better::Lower,
        get: |r| r.deliver_latency.as_ref().map(|s| s.p999_ms),
    },
    Metric {
        name: "publish→deliver max",
        unit: "ms",
        better: Better::Lower,
        get: |r| r.deliver_latency.as_ref().map(|s| s.max_ms),
    },
    Metric {
        name: "publish→ack p50",
        unit: "ms",
        better: Better::Lower,
        get: |r| r.ack_latency.as_ref().map(|s| s.p50_ms),
    },
    Metric {
        name: "publish→ack p99",
        unit: "ms",
        better: Better::Lower,
        get: |r| r.ack_latency.as_ref().map(|s| s.p99_ms),
    },
    Metric {
        name: "publish→REST p99",
        unit: "ms",
        better: Better::Lower,
        get: |r| r.persist_lag.as_ref().map(|s| s.p99_ms),
    },
    Metric {
        name: "delivery rate",
        unit: "/s",
        better: Better::Higher,
        // Zero means not measured (persist has no rate).
        get: |r| {
            r.traffic
                .as_ref()
                .map(|t| t.deliveries_per_sec)
                .filter(|v| *v > 0.0)
        },
    },
    Metric {
        name: "deliveries",
        unit: "",
        better: Better::Higher,
        get: |r| r.traffic.as_ref().map(|t| t.deliveries as f64),
    },
    Metric {
        name: "deliveries missing",
        unit: "",
        better: Better::Lower,
        get: |r| r.traffic.as_ref().map(|t| t.missing_deliveries as f64),
    },
    Metric {
        name: "publishes acked",
        unit: "",
        better: Better::Higher,
        get: |r| r.traffic.as_ref().map(|t| t.acks as f64),
    },
    Metric {
        name: "publish errors",
        unit: "",
        better: Better::Lower,
        get: |r| r.traffic.as_ref().map(|t| t.publish_errors as f64),
    },
    Metric {
        name: "server CPU per delivery",
        unit: "µs",
        better: Better::Lower,
        get: |r| {
            r.traffic
                .as_ref()
                .and_then(|t| t.server_cpu_us_per_delivery)
        },
    },
    Metric {
        name: "server CPU, traffic",
        unit: "s",
        better: Better::Lower,
        get: |r| r.traffic.as_ref().and_then(|t| t.server_cpu_secs),
    },
    Metric {
        name: "server CPU per connection (ramp)",
        unit: "µs",
        better: Better::Lower,
        get: |r| r.connections.server_cpu_us_per_connection,
    },
    Metric {
        name: "server CPU, whole run",
        unit: "s",
        better: Better::Lower,
        get: |r| r.server_cpu_secs,
    },
    Metric {
        name: "RSS growth per connection",
        unit: "KiB",
        better: Better::Lower,
        get: |r| {
            r.memory
                .as_ref()
                .and_then(|m| m.per_connection_bytes)
                .map(|b| b / 1024.0)
        },
    },
    Metric {
        name: "server RSS after ramp",
        unit: "MiB",
        better: Better::Lower,
        get: |r| r.memory.as_ref().map(|m| m.rss_after_kib as f64 / 1024.0),
    },
    Metric {
        name: "connect rate",
        unit: "conn/s",
        better: Better::Higher,
        // No ramp (persist opens one connection): not measured.
        get: |r| (r.connections.ramp_secs > 0.0).then_some(r.connections.connect_rate_per_sec),
    },
    Metric {
        name: "connections failed",
        unit: "",
        better: Better::Lower,
        get: |r| Some(r.connections.failed as f64),
    },
    Metric {
        name: "closed by server",
        unit: "",
        better: Better::Lower,
        get: |r| Some(r.connections.closed_by_server as f64),
    },
];

/// `a / b`; two zeros are equal (1), a zero denominator otherwise has none.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    if a == 0.0 && b == 0.0 {
        return Some(1.0);
    }
    let q = a / b;
    q.is_finite().then_some(q)
}

/// The rows for two runs (either may be missing, e.g. after Ctrl-C).
pub fn rows(confab: Option<&Report>, centrifugo: Option<&Report>) -> Vec<Row> {
    METRICS
        .iter()
        .filter_map(|m| {
            let a = confab.and_then(m.get);
            let b = centrifugo.and_then(m.get);
            if a.is_none() && b.is_none() {
                return None;
            }
            Some(Row {
                metric: m.name.into(),
                unit: m.unit.into(),
                better: m.better,
                confab: a,
                centrifugo: b,
                ratio: a.zip(b).and_then(|(a, b)| ratio(a, b)),
            })
        })
        .collect()
}

/// A figure for the table: fewer decimals as it grows, integers for counts.
fn fmt_value(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "n/a".into(),
        Some(v) if unit.is_empty() => format!("{v:.0}"),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

impl Comparison {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "\nconfab-bench compare: {} (same parameters, back to back: {})",
            self.scenario,
            self.order.join(" then ")
        );
        if let (Some(a), Some(b)) = (&self.load_average_start, &self.load_average_end) {
            let _ = writeln!(o, "  load average {a} -> {b}");
        }
        let _ = writeln!(
            o,
            "  {:<40} {:>12} {:>12} {:>10}",
            "metric", "Confab", "Centrifugo", "ratio"
        );
        for r in &self.rows {
            let arrow = match r.better {
                Better::Lower => "↓",
                Better::Higher => "↑",
            };
            let name = if r.unit.is_empty() {
                format!("{} {arrow}", r.metric)
            } else {
                format!("{} ({}) {arrow}", r.metric, r.unit)
            };
            let _ = writeln!(
                o,
                "  {:<40} {:>12} {:>12} {:>10}",
                name,
                fmt_value(r.confab, &r.unit),
                fmt_value(r.centrifugo, &r.unit),
                r.ratio
                    .map(|q| format!("{q:.2}"))
                    .unwrap_or_else(|| "n/a".into())
            );
        }
        for n in &self.notes {
            let _ = writeln!(o, "  note: {n}");
        }
        o
    }

    /// Builds the comparison of two runs.
    pub fn new(
        scenario: &str,
        command: &str,
        order: &[Target],
        confab: Option<Report>,
        centrifugo: Option<Report>,
    ) -> Self {
        let rows = rows(confab.as_ref(), centrifugo.as_ref());
        let first = order.first().and_then(|t| match t {
            Target::Confab => confab.as_ref(),
            Target::Centrifugo => centrifugo.as_ref(),
        });
        let last = order.last().and_then(|t| match t {
            Target::Confab => confab.as_ref(),
            Target::Centrifugo => centrifugo.as_ref(),
        });
        let mut notes = vec![
            "ratio = Confab / Centrifugo; ↓ lower is better, ↑ higher is better".to_owned(),
            "server CPU and RSS are the processes named by each run's server_pids: for Confab the \
             gateway only (broker, persister, auth-api and PostgreSQL are not counted); for \
             Centrifugo the node(s), engine included (Redis not counted)"
                .to_owned(),
        ];
        let runs: Vec<&Report> = [&confab, &centrifugo].into_iter().flatten().collect();
        // A note both runs make is shown once; the others say whose they are.
        let in_all = |n: &String| runs.len() > 1 && runs.iter().all(|r| r.notes.contains(n));
        for r in &runs {
            for n in &r.notes {
                let n = if in_all(n) {
                    n.clone()
                } else {
                    format!("{}: {n}", title(&r.target))
                };
                if !notes.contains(&n) {
                    notes.push(n);
                }
            }
            if r.interrupted {
                notes.push(format!(
                    "{}: INTERRUPTED, partial figures",
                    title(&r.target)
                ));
            }
        }
        let coarse = rows
            .iter()
            .any(|r| r.unit == "s" && [r.confab, r.centrifugo].iter().flatten().any(|v| *v < 1.0));
        if coarse {
            notes.push(
                "/proc counts CPU in 10 ms ticks: CPU figures of runs this short are coarse".into(),
            );
        }
        Self {
            scenario: scenario.into(),
            started_at: first.map(|r| r.started_at.clone()).unwrap_or_default(),
            command: command.into(),
            order: order.iter().map(|t| t.name().to_owned()).collect(),
            load_average_start: first.and_then(|r| r.load_average_start.clone()),
            load_average_end: last.and_then(|r| r.load_average_end.clone()),
            rows,
            notes,
            confab,
            centrifugo,
        }
    }

    /// Both runs' latency CDFs in one report, for one plot.
    pub fn plot_report(&self) -> Report {
        let mut r = Report {
            scenario: format!("compare {}", self.scenario),
            run_id: [&self.confab, &self.centrifugo]
                .into_iter()
                .flatten()
                .map(|r| r.run_id.clone())
                .collect::<Vec<_>>()
                .join("+"),
            ..Default::default()
        };
        for rep in [&self.confab, &self.centrifugo].into_iter().flatten() {
            for (name, points) in &rep.cdf {
                r.cdf
                    .insert(format!("{} {name}", title(&rep.target)), points.clone());
            }
        }
        r
    }

    /// Writes the JSON file, creating its directory.
    pub fn write_json(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use anyhow::Context as _;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))
    }
}

fn title(target: &str) -> &'static str {
    match target {
        "centrifugo" => Target::Centrifugo.title(),
        _ => Target::Confab.title(),
    }
}

/// Runs the comparison, prints each run's table and then the comparison, and
/// writes `compare-<scenario>-<time>.json` (both reports inside) and an SVG
/// with both CDFs.
pub async fn run(
    common: &Common,
    cmp: &cli::Compare,
    scenario: &cli::Scenario,
    command: &str,
    interrupt: &CancellationToken,
) -> anyhow::Result<Comparison> {
    anyhow::ensure!(
        common.server_pid.is_empty(),
        "compare names each server's pids with --gateway-pid and --centrifugo-pid, not --server-pid"
    );
    // Fail before the first run, not between the two.
    target::keys_for(Target::Centrifugo, common.jwt_secret.as_deref())?;
    for t in [Target::Confab, Target::Centrifugo] {
        target::Endpoints::resolve(common, t, false)?;
    }
    let order = if cmp.centrifugo_first {
        [Target::Centrifugo, Target::Confab]
    } else {
        [Target::Confab, Target::Centrifugo]
    };
    let name = scenario.name();
    let out: PathBuf = common.out.clone().unwrap_or_else(|| {
        report::default_out(&format!("compare-{name}"), time::OffsetDateTime::now_utc())
    });
    let (mut confab, mut centrifugo) = (None, None);
    for (i, t) in order.iter().enumerate() {
        if interrupt.is_cancelled() {
            break;
        }
        if i > 0 && !cmp.pause.is_zero() {
            tokio::select! {
                _ = interrupt.cancelled() => break,
                _ = tokio::time::sleep(cmp.pause) => {}
            }
        }
        println!("== {} ==", t.title());
        let r = crate::run_target(common, scenario, *t, false, command, interrupt).await?;
        print!("{}", r.table());
        match t {
            Target::Confab => confab = Some(r),
            Target::Centrifugo => centrifugo = Some(r),
        }
    }
    let c = Comparison::new(name, command, &order, confab, centrifugo);
    print!("{}", c.table());
    c.write_json(&out)?;
    println!("  results: {}", out.display());
    let svg = report::svg_path(&out);
    if report::write_svg(&c.plot_report(), &svg)? {
        println!("  plot:    {}", svg.display());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ConnStats, MemoryStats, TrafficStats};
    use crate::stats::Summary;

    fn summary(p50: f64, p99: f64) -> Summary {
        Summary {
            count: 100,
            min_ms: 0.1,
            mean_ms: p50,
            p50_ms: p50,
            p90_ms: p99,
            p99_ms: p99,
            p999_ms: p99,
            max_ms: p99,
        }
    }

    fn report(target: &str, p99: f64, dps: f64, cpu_us: Option<f64>) -> Report {
        Report {
            target: target.into(),
            scenario: "latency".into(),
            run_id: format!("{target}01"),
            started_at: "2026-12-01T00:00:00Z".into(),
            load_average_start: Some("1.00 1.00 1.00".into()),
            load_average_end: Some("2.00 1.00 1.00".into()),
            deliver_latency: Some(summary(p99 / 4.0, p99)),
            ack_latency: Some(summary(1.0, 2.0)),
            connections: ConnStats {
                target: 50,
                established: 50,
                ramp_secs: 0.1,
                connect_rate_per_sec: 500.0,
                ..Default::default()
            },
            traffic: Some(TrafficStats {
                deliveries: 1000,
                expected_deliveries: 1000,
                deliveries_per_sec: dps,
                server_cpu_us_per_delivery: cpu_us,
                ..Default::default()
            }),
            memory: Some(MemoryStats {
                per_connection_bytes: Some(20.0 * 1024.0),
                rss_after_kib: 10 * 1024,
                ..Default::default()
            }),
            notes: vec![format!("note of {target}"), "shared note".into()],
            ..Default::default()
        }
    }

    fn row<'a>(rows: &'a [Row], metric: &str) -> &'a Row {
        rows.iter()
            .find(|r| r.metric == metric)
            .unwrap_or_else(|| panic!("no row {metric}"))
    }

    #[test]
    fn ratios_divide_confab_by_centrifugo() {
        assert_eq!(ratio(4.0, 2.0), Some(2.0));
        assert_eq!(ratio(0.0, 0.0), Some(1.0));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(0.0, 5.0), Some(0.0));
    }

    #[test]
    fn rows_pair_the_same_figure_of_both_runs() {
        let a = report("confab", 10.0, 2000.0, Some(6.0));
        let b = report("centrifugo", 20.0, 1000.0, None);
        let rows = rows(Some(&a), Some(&b));
        let p99 = row(&rows, "publish→deliver p99");
        assert_eq!(
            (p99.confab, p99.centrifugo, p99.ratio),
            (Some(10.0), Some(20.0), Some(0.5))
        );
        assert_eq!(p99.better, Better::Lower);
        let dps = row(&rows, "delivery rate");
        assert_eq!(dps.ratio, Some(2.0));
        assert_eq!(dps.better, Better::Higher);
        // One side without a pid: the figure is shown, the ratio is not.
        let cpu = row(&rows, "server CPU per delivery");
        assert_eq!(
            (cpu.confab, cpu.centrifugo, cpu.ratio),
            (Some(6.0), None, None)
        );
        assert_eq!(row(&rows, "RSS growth per connection").confab, Some(20.0));
        assert_eq!(row(&rows, "deliveries missing").ratio, Some(1.0));
        // Neither run has persist lag: no row.
        assert!(rows.iter().all(|r| r.metric != "publish→REST p99"));
    }

    #[test]
    fn table_has_both_columns_and_the_ratio() {
        let c = Comparison::new(
            "latency",
            "confab-bench compare latency",
            &[Target::Confab, Target::Centrifugo],
            Some(report("confab", 10.0, 2000.0, Some(6.0))),
            Some(report("centrifugo", 20.0, 1000.0, Some(3.0))),
        );
        let t = c.table();
        assert!(
            t.contains("Confab") && t.contains("Centrifugo") && t.contains("ratio"),
            "{t}"
        );
        assert!(t.contains("confab then centrifugo"), "{t}");
        let line = t
            .lines()
            .find(|l| l.contains("publish→deliver p99 (ms)"))
            .unwrap();
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&cols[cols.len() - 3..], ["10.0", "20.0", "0.50"], "{line}");
        let line = t
            .lines()
            .find(|l| l.contains("server CPU per delivery"))
            .unwrap();
        assert!(line.trim_end().ends_with("2.00"), "{line}");
        assert!(t.contains("Confab: note of confab"), "{t}");
        assert!(t.contains("Centrifugo: note of centrifugo"), "{t}");
        assert!(
            t.contains("note: shared note") && !t.contains("Confab: shared note"),
            "{t}"
        );
        assert!(
            t.contains("load average 1.00 1.00 1.00 -> 2.00 1.00 1.00"),
            "{t}"
        );

        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["order"], serde_json::json!(["confab", "centrifugo"]));
        assert_eq!(v["confab"]["target"], "confab");
        assert_eq!(v["centrifugo"]["traffic"]["deliveries_per_sec"], 1000.0);
        let r = v["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["metric"] == "delivery rate")
            .unwrap();
        assert_eq!(r["ratio"], 2.0);
        assert_eq!(r["better"], "higher");
    }

    #[test]
    fn a_missing_run_still_tabulates() {
        let c = Comparison::new(
            "persist",
            "x",
            &[Target::Confab, Target::Centrifugo],
            Some(Report {
                target: "confab".into(),
                persist_lag: Some(summary(50.0, 400.0)),
                interrupted: true,
                ..Default::default()
            }),
            None,
        );
        let r = row(&c.rows, "publish→REST p99");
        assert_eq!((r.confab, r.centrifugo, r.ratio), (Some(400.0), None, None));
        // Figures the scenario does not measure get no row.
        assert!(c
            .rows
            .iter()
            .all(|r| r.metric != "connect rate" && r.metric != "delivery rate"));
        let t = c.table();
        assert!(t.contains("n/a"), "{t}");
        assert!(t.contains("Confab: INTERRUPTED"), "{t}");
    }

    #[test]
    fn the_plot_holds_both_runs() {
        let mut a = report("confab", 10.0, 1.0, None);
        let mut b = report("centrifugo", 10.0, 1.0, None);
        let pts = vec![crate::stats::CdfPoint {
            ms: 1.0,
            percent: 50.0,
        }];
        a.cdf.insert("publish -> deliver".into(), pts.clone());
        b.cdf.insert("publish -> deliver".into(), pts);
        let c = Comparison::new(
            "latency",
            "x",
            &[Target::Confab, Target::Centrifugo],
            Some(a),
            Some(b),
        );
        let p = c.plot_report();
        assert!(p.cdf.contains_key("Confab publish -> deliver"));
        assert!(p.cdf.contains_key("Centrifugo publish -> deliver"));
        assert_eq!(p.run_id, "confab01+centrifugo01");
    }

    #[test]
    fn values_are_formatted_by_size() {
        assert_eq!(fmt_value(None, "ms"), "n/a");
        assert_eq!(fmt_value(Some(3.0), ""), "3");
        assert_eq!(fmt_value(Some(1.234), "ms"), "1.23");
        assert_eq!(fmt_value(Some(12.34), "ms"), "12.3");
        assert_eq!(fmt_value(Some(12345.6), "/s"), "12346");
    }
}
