//! Results: one [`Report`] per run, shown as a table, saved as JSON, and drawn
//! as a latency CDF in SVG.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::stats::{CdfPoint, Summary};

/// How connections went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnStats {
    pub target: usize,
    pub established: usize,
    pub failed: u64,
    /// Failure messages with counts.
    pub errors: BTreeMap<String, u64>,
    pub ramp_secs: f64,
    /// Successful connections per second during the ramp.
    pub connect_rate_per_sec: f64,
    /// Source addresses used (empty: the kernel's choice).
    pub source_addrs: Vec<String>,
    /// Connections still open when the run ended.
    pub alive_at_end: usize,
    /// Connections the server closed or disconnected during the run.
    pub closed_by_server: u64,
    pub io_errors: u64,
    /// Server pings answered.
    pub pings: u64,
    /// Disconnect pushes by reason.
    pub disconnects: BTreeMap<String, u64>,
    /// Server CPU seconds during the ramp (connect and subscribe), when its pid is known.
    pub server_cpu_secs: Option<f64>,
    /// That, in microseconds per established connection.
    pub server_cpu_us_per_connection: Option<f64>,
}

/// Publishes and deliveries.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrafficStats {
    /// How long publishers ran.
    pub publish_secs: f64,
    /// Aggregate publish rate asked for.
    pub offered_rate_per_sec: f64,
    pub publishers: usize,
    pub publishes_sent: u64,
    /// Publish rate achieved (sent / publish_secs).
    pub sent_rate_per_sec: f64,
    pub acks: u64,
    pub publish_errors: u64,
    /// Reply error codes with counts.
    pub error_codes: BTreeMap<u32, u64>,
    /// Publishes without a reply by the end.
    pub unanswered: u64,
    /// Skipped: too many in flight on a connection.
    pub throttled: u64,
    /// Skipped: the publisher fell more than a second behind.
    pub behind: u64,
    /// Deliveries of this run's publications, over all connections.
    pub deliveries: u64,
    /// Acked publications times subscribers in their room.
    pub expected_deliveries: u64,
    /// Expected minus received, if positive.
    pub missing_deliveries: u64,
    /// Deliveries per second, from the first publish to the last delivery.
    pub deliveries_per_sec: f64,
    /// Publications not from this run that arrived (member events, other traffic).
    pub foreign_publications: u64,
    pub parse_errors: u64,
    /// Latency samples beyond the histogram range.
    pub clamped_samples: u64,
    /// Server CPU seconds from the first publish to the end of the drain.
    pub server_cpu_secs: Option<f64>,
    /// That, in microseconds per delivery.
    pub server_cpu_us_per_delivery: Option<f64>,
}

/// The server's memory (summed over its processes).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryStats {
    pub server_pids: Vec<u32>,
    /// The server's soft fd limit when the run started (the lowest, for several).
    pub server_nofile: Option<u64>,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// (connections open, server VmRSS KiB) along the ramp.
    pub samples: Vec<(usize, u64)>,
    /// (after - before) / established.
    pub per_connection_bytes: Option<f64>,
    /// The bench's own VmRSS at the peak, for reference.
    pub bench_rss_kib: Option<u64>,
}

/// The persist scenario's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PersistStats {
    pub published: u64,
    /// Seen in REST history.
    pub seen: u64,
    /// Acked but never seen before the run ended.
    pub missing: u64,
    /// REST offset differed from the offset delivered over the WebSocket.
    pub offset_mismatches: u64,
    /// REST data differed from what was published.
    pub data_mismatches: u64,
    pub poll_ms: u64,
    pub polls: u64,
    pub poll_errors: u64,
}

/// Everything one run produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `confab` or `centrifugo`.
    pub target: String,
    pub scenario: String,
    pub run_id: String,
    pub started_at: String,
    /// The command line, to rerun it.
    pub command: String,
    /// True if Ctrl-C cut the run short; figures are then partial.
    pub interrupted: bool,
    pub params: serde_json::Value,
    pub setup_secs: f64,
    /// `/proc/loadavg` (1, 5, 15 min) when the run started and ended: the
    /// machine has two cores shared with everything else running.
    pub load_average_start: Option<String>,
    pub load_average_end: Option<String>,
    /// The server processes whose CPU time and RSS were read (Confab: the
    /// gateway; Centrifugo: its node), when known.
    pub server_pids: Vec<u32>,
    /// CPU seconds the server used during the whole run, when its pid is known.
    pub server_cpu_secs: Option<f64>,
    /// How the server's own counters moved during the run (`*_total`,
    /// histogram `_sum`/`_count`, and `_mean` in seconds), summed over servers.
    pub server_metrics: std::collections::BTreeMap<String, f64>,
    pub connections: ConnStats,
    pub traffic: Option<TrafficStats>,
    pub deliver_latency: Option<Summary>,
    pub ack_latency: Option<Summary>,
    pub persist_lag: Option<Summary>,
    pub persist: Option<PersistStats>,
    pub memory: Option<MemoryStats>,
    /// CDF series by name, for the plot.
    pub cdf: BTreeMap<String, Vec<CdfPoint>>,
    pub notes: Vec<String>,
}

fn row(out: &mut String, k: &str, v: impl std::fmt::Display) {
    let _ = writeln!(out, "  {k:<28} {v}");
}

fn latency_rows(out: &mut String, rows: &[(&str, &Option<Summary>)]) {
    let present: Vec<_> = rows
        .iter()
        .filter_map(|(n, s)| Some((n, s.as_ref()?)))
        .collect();
    if present.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n  {:<20} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, s) in present {
        let _ = writeln!(
            out,
            "  {:<20} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            name, s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms
        );
    }
}

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "confab-bench {} against {} — run {}{}",
            self.scenario,
            if self.target.is_empty() {
                "confab"
            } else {
                &self.target
            },
            self.run_id,
            if self.interrupted {
                " (INTERRUPTED: partial results)"
            } else {
                ""
            }
        );
        row(&mut o, "started", &self.started_at);
        row(&mut o, "setup", format!("{:.1} s", self.setup_secs));
        if let (Some(a), Some(b)) = (&self.load_average_start, &self.load_average_end) {
            row(&mut o, "load average", format!("{a} -> {b} (2 cores)"));
        }
        if let Some(cpu) = self.server_cpu_secs {
            let pids: Vec<String> = self.server_pids.iter().map(|p| p.to_string()).collect();
            row(
                &mut o,
                "server CPU",
                format!("{cpu:.2} s (pid {})", pids.join(", ")),
            );
        }
        let c = &self.connections;
        row(
            &mut o,
            "connections",
            format!("{} of {} ({} failed)", c.established, c.target, c.failed),
        );
        row(
            &mut o,
            "ramp",
            format!("{:.1} s, {:.0} conn/s", c.ramp_secs, c.connect_rate_per_sec),
        );
        if !c.source_addrs.is_empty() {
            row(&mut o, "source addresses", c.source_addrs.join(" "));
        }
        row(
            &mut o,
            "alive at end",
            format!(
                "{} (closed by server {}, io errors {}, pings {})",
                c.alive_at_end, c.closed_by_server, c.io_errors, c.pings
            ),
        );
        if let (Some(cpu), Some(us)) = (c.server_cpu_secs, c.server_cpu_us_per_connection) {
            row(
                &mut o,
                "  server CPU, ramp",
                format!("{cpu:.2} s, {us:.0} µs per connection"),
            );
        }
        for (e, n) in &c.errors {
            row(&mut o, "  connect error", format!("{n} × {e}"));
        }
        for (e, n) in &c.disconnects {
            row(&mut o, "  disconnect", format!("{n} × {e}"));
        }
        if let Some(t) = &self.traffic {
            row(
                &mut o,
                "publishers",
                format!(
                    "{} for {:.1} s, offered {:.0} msg/s, sent {:.0} msg/s",
                    t.publishers, t.publish_secs, t.offered_rate_per_sec, t.sent_rate_per_sec
                ),
            );
            row(
                &mut o,
                "publishes",
                format!(
                    "{} sent, {} acked, {} errors, {} unanswered, {} throttled, {} behind",
                    t.publishes_sent, t.acks, t.publish_errors, t.unanswered, t.throttled, t.behind
                ),
            );
            for (code, n) in &t.error_codes {
                row(&mut o, "  reply error", format!("{n} × code {code}"));
            }
            row(
                &mut o,
                "deliveries",
                format!(
                    "{} of {} expected ({} missing), {:.0}/s",
                    t.deliveries, t.expected_deliveries, t.missing_deliveries, t.deliveries_per_sec
                ),
            );
            if let (Some(cpu), Some(us)) = (t.server_cpu_secs, t.server_cpu_us_per_delivery) {
                row(
                    &mut o,
                    "  server CPU, traffic",
                    format!("{cpu:.2} s, {us:.2} µs per delivery"),
                );
            }
        }
        if let Some(p) = &self.persist {
            row(
                &mut o,
                "persisted",
                format!(
                    "{} of {} seen in REST ({} missing, {} offset / {} data mismatches), poll every {} ms",
                    p.seen, p.published, p.missing, p.offset_mismatches, p.data_mismatches, p.poll_ms
                ),
            );
        }
        if let Some(m) = &self.memory {
            row(
                &mut o,
                "server RSS",
                format!(
                    "{:.1} MiB -> {:.1} MiB (pid {}, fd limit {})",
                    m.rss_before_kib as f64 / 1024.0,
                    m.rss_after_kib as f64 / 1024.0,
                    m.server_pids
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    m.server_nofile
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "?".into())
                ),
            );
            if let Some(b) = m.per_connection_bytes {
                row(
                    &mut o,
                    "per connection",
                    format!("{:.1} KiB ({b:.0} bytes)", b / 1024.0),
                );
            }
            if let Some(b) = m.bench_rss_kib {
                row(&mut o, "bench RSS", format!("{:.1} MiB", b as f64 / 1024.0));
            }
        }
        for (k, v) in &self.server_metrics {
            let short = k
                .strip_prefix("confab_gateway_")
                .or_else(|| k.strip_prefix("centrifugo_"))
                .unwrap_or(k);
            let (name, _) = crate::sys::split_labels(short);
            if name.ends_with("_total") {
                row(&mut o, &format!("srv {short}"), format!("{v:.0}"));
            } else if name.ends_with("_mean") {
                row(&mut o, &format!("srv {short}"), format!("{v:.6}"));
            }
        }
        latency_rows(
            &mut o,
            &[
                ("publish -> deliver", &self.deliver_latency),
                ("publish -> ack", &self.ack_latency),
                ("publish -> REST", &self.persist_lag),
            ],
        );
        for n in &self.notes {
            let _ = writeln!(o, "  note: {n}");
        }
        o
    }

    /// Writes the JSON file, creating its directory.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let json = serde_json::to_vec_pretty(self)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
    }
}

/// The SVG path beside a JSON path.
pub fn svg_path(json: &Path) -> PathBuf {
    json.with_extension("svg")
}

/// The default output path: `bench-results/<scenario>-<UTC time>.json`.
pub fn default_out(scenario: &str, now: time::OffsetDateTime) -> PathBuf {
    let stamp = format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    PathBuf::from("bench-results").join(format!("{scenario}-{stamp}.json"))
}

/// Draws the report's CDF series, log latency on x, percent on y.
pub fn write_svg(report: &Report, path: &Path) -> anyhow::Result<bool> {
    use plotters::prelude::*;

    let series: Vec<(&String, &Vec<CdfPoint>)> =
        report.cdf.iter().filter(|(_, p)| !p.is_empty()).collect();
    if series.is_empty() {
        return Ok(false);
    }
    let lo = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.ms))
        .fold(f64::INFINITY, f64::min)
        .max(0.001);
    let hi = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.ms))
        .fold(0.0, f64::max)
        .max(lo * 10.0);
    let (lo, hi) = (lo / 1.5, hi * 1.5);

    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "confab-bench {} — latency CDF (run {}{})",
        report.scenario,
        report.run_id,
        if report.interrupted { ", partial" } else { "" }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("% of samples ≤ latency")
        .x_label_formatter(&|v| {
            if *v >= 1.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (name, points)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.ms.max(lo), p.percent)),
                color.stroke_width(2),
            ))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats;

    fn sample() -> Report {
        let mut h = stats::new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let mut r = Report {
            scenario: "latency".into(),
            run_id: "abcd1234".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            deliver_latency: stats::summarize(&h),
            traffic: Some(TrafficStats {
                deliveries: 1000,
                expected_deliveries: 1000,
                ..Default::default()
            }),
            ..Default::default()
        };
        r.cdf
            .insert("publish -> deliver".into(), stats::cdf(&h, 100));
        r
    }

    #[test]
    fn table_shows_percentiles() {
        let t = sample().table();
        assert!(t.contains("p99.9"), "{t}");
        assert!(t.contains("publish -> deliver"), "{t}");
        assert!(t.contains("1000 of 1000 expected"), "{t}");
        assert!(
            !t.contains("publish -> ack"),
            "absent summaries get no row:\n{t}"
        );
        let mut r = sample();
        r.interrupted = true;
        assert!(r.table().contains("INTERRUPTED"));
    }

    #[test]
    fn json_and_svg_are_written() {
        let dir = std::env::temp_dir().join(format!("bench-report-{}", std::process::id()));
        let json = dir.join("nested").join("r.json");
        let r = sample();
        r.write_json(&json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(v["scenario"], "latency");
        assert_eq!(v["deliver_latency"]["count"], 1000);
        assert!(v["cdf"]["publish -> deliver"].as_array().unwrap().len() > 10);

        let svg = svg_path(&json);
        assert!(write_svg(&r, &svg).unwrap());
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..80.min(text.len())]);
        assert!(text.contains("polyline") || text.contains("path"));
        assert!(!write_svg(&Report::default(), &dir.join("empty.svg")).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn default_out_is_under_bench_results() {
        let now = time::macros::datetime!(2026-11-28 01:02:03 UTC);
        assert_eq!(
            default_out("fanout", now),
            PathBuf::from("bench-results/fanout-20261128T010203Z.json")
        );
    }
}
