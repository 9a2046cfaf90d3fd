//! `confab-bench`: what Confab users feel, measured from outside.
//!
//! The bench is a client like any other: it registers users and creates rooms
//! through the REST API, speaks the Centrifugo client protocol v2 (JSON) to
//! the gateway, and times publish-to-deliver, publish-to-ack and
//! publish-to-REST-history. It owns no server code. Scenarios live in
//! [`scenario`]; [`run`] is what the binary calls.

pub mod cli;
pub mod client;
pub mod proto;
pub mod report;
pub mod rest;
pub mod scenario;
pub mod stats;
pub mod sys;
pub mod ws;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Scenario};
use crate::report::Report;

/// Runs one scenario to completion (or to Ctrl-C on `interrupt`), prints the
/// table and writes the JSON and SVG files.
pub async fn run(
    cli: Cli,
    command: String,
    interrupt: CancellationToken,
) -> anyhow::Result<Report> {
    let started = time::OffsetDateTime::now_utc();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let name = cli.scenario.name();
    let out = cli
        .common
        .out
        .clone()
        .unwrap_or_else(|| report::default_out(name, started));
    let report = Report {
        scenario: name.into(),
        run_id: run.clone(),
        started_at: started
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        command,
        params: serde_json::json!({"scenario": &cli.scenario, "common": &cli.common}),
        ..Default::default()
    };
    let gateway = sys::gateway_pid(cli.common.gateway_pid, None).ok();
    let metrics_url = match &cli.common.metrics_url {
        Some(u) => u.clone(),
        None => {
            let (host, port, _) = ws::parse_ws_url(&cli.common.ws)?;
            format!("http://{host}:{port}/metrics")
        }
    };
    let metrics_before = scenario::scrape(&metrics_url).await;
    let cpu_start = gateway.and_then(sys::cpu_secs);
    let report = Report {
        load_average_start: sys::loadavg(),
        ..report
    };
    let ctx = scenario::Ctx {
        api: rest::Api::new(&cli.common.api)?,
        target: ws::WsTarget::resolve(&cli.common.ws).await?,
        common: cli.common.clone(),
        run,
        interrupt: interrupt.clone(),
        report,
        metrics_url,
        metrics_before,
    };
    let mut report = match cli.scenario {
        Scenario::Latency {
            connections,
            rooms,
            publishers,
            rate,
            traffic,
        } => scenario::traffic(ctx, connections, rooms, publishers, rate, &traffic).await?,
        Scenario::Fanout {
            subscribers,
            publishers,
            rate,
            traffic,
        } => scenario::traffic(ctx, subscribers, 1, publishers, rate, &traffic).await?,
        Scenario::Connections {
            connections,
            rooms,
            settle,
            hold,
        } => scenario::connections(ctx, connections, rooms, settle, hold).await?,
        Scenario::Persist {
            rate,
            duration,
            poll,
            drain,
        } => scenario::persist(ctx, rate, duration, poll, drain).await?,
    };
    report.interrupted = interrupt.is_cancelled();
    report.load_average_end = sys::loadavg();
    if let (Some(a), Some(b)) = (cpu_start, gateway.and_then(sys::cpu_secs)) {
        report.gateway_cpu_secs = Some(b - a);
    }
    print!("{}", report.table());
    report.write_json(&out)?;
    println!("  results: {}", out.display());
    let svg = report::svg_path(&out);
    if report::write_svg(&report, &svg).with_context(|| format!("drawing {}", svg.display()))? {
        println!("  plot:    {}", svg.display());
    }
    Ok(report)
}
