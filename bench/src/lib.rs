//! `confab-bench`: what Confab users feel, measured from outside.
//!
//! The bench is a client like any other: it registers users and creates rooms
//! through the REST API, speaks the Centrifugo client protocol v2 (JSON) to
//! the gateway, and times publish-to-deliver, publish-to-ack and
//! publish-to-REST-history. It owns no server code. Scenarios live in
//! [`scenario`]; [`run`] is what the binary calls.
//!
//! The same scenarios run against Centrifugo (`--target centrifugo`), the
//! peer that speaks the same protocol; [`target`] holds the little that
//! differs, [`compare`] runs both back to back and tabulates the ratios, and
//! [`goals`] runs every scenario behind issue 12's goal table and says which
//! goals hold.

pub mod cli;
pub mod client;
pub mod compare;
pub mod goals;
pub mod proto;
pub mod report;
pub mod rest;
pub mod scenario;
pub mod spread;
pub mod stats;
pub mod sys;
pub mod target;
pub mod ws;

use std::path::Path;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::cli::{Cli, Command, Common, Compared, Scenario};
use crate::report::Report;
use crate::target::{Endpoints, Target};

/// Runs what the command line asks: one scenario against one target, or a
/// comparison of both targets. Prints the table(s) and writes the JSON and SVG.
pub async fn run(cli: Cli, command: String, interrupt: CancellationToken) -> anyhow::Result<()> {
    match &cli.command {
        Command::Run(scenario) => {
            let report = run_target(
                &cli.common,
                scenario,
                cli.common.target,
                true,
                &command,
                &interrupt,
            )
            .await?;
            let out = cli.common.out.clone().unwrap_or_else(|| {
                report::default_out(scenario.name(), time::OffsetDateTime::now_utc())
            });
            print!("{}", report.table());
            save(&report, &out)
        }
        Command::Compare(cmp) => match &cmp.what {
            Compared::Scenario(scenario) => {
                compare::run(&cli.common, cmp, scenario, &command, &interrupt).await?;
                Ok(())
            }
            Compared::Goals(g) => {
                goals::run(&cli.common, cmp, g, &command, &interrupt).await?;
                Ok(())
            }
        },
    }
}

/// Writes a report's JSON and, when it has latency series, its SVG beside it.
pub fn save(report: &Report, out: &Path) -> anyhow::Result<()> {
    report.write_json(out)?;
    println!("  results: {}", out.display());
    let svg = report::svg_path(out);
    if report::write_svg(report, &svg).with_context(|| format!("drawing {}", svg.display()))? {
        println!("  plot:    {}", svg.display());
    }
    Ok(())
}

/// Runs one scenario against one target to completion (or to Ctrl-C on
/// `interrupt`) and returns its report; prints nothing but progress.
/// `single` is true outside `compare` (then `--server-pid` applies).
pub async fn run_target(
    common: &Common,
    scenario: &Scenario,
    kind: Target,
    single: bool,
    command: &str,
    interrupt: &CancellationToken,
) -> anyhow::Result<Report> {
    let endpoints = Endpoints::resolve(common, kind, single)?;
    let started = time::OffsetDateTime::now_utc();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut common = common.clone();
    common.target = kind;
    let mut report = Report {
        target: kind.name().into(),
        scenario: scenario.name().into(),
        run_id: run.clone(),
        started_at: started
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        command: command.to_owned(),
        params: serde_json::json!({
            "target": kind,
            "ws": &endpoints.ws,
            "scenario": scenario,
            "common": &common,
        }),
        server_pids: endpoints.server.pids.clone(),
        ..Default::default()
    };
    if let Some(e) = &endpoints.pid_error {
        report
            .notes
            .push(format!("server CPU and RSS left out: {e}"));
    }
    let mut targets = Vec::with_capacity(endpoints.ws.len());
    for url in &endpoints.ws {
        targets.push(ws::WsTarget::resolve(url).await?);
    }
    let metrics_before = scenario::scrape(&endpoints.metrics, kind.metrics_prefix()).await;
    let server = endpoints.server.clone();
    let cpu_start = server.cpu_secs();
    report.load_average_start = sys::loadavg();
    let ctx = scenario::Ctx {
        api: rest::Api::new(&common.api)?,
        kind,
        targets,
        server: server.clone(),
        pid_error: endpoints.pid_error.clone(),
        common,
        run,
        interrupt: interrupt.clone(),
        report,
        metrics_urls: endpoints.metrics.clone(),
        metrics_before,
    };
    let mut report = match scenario.clone() {
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
            processes,
            worker,
        } => {
            if processes > 1 && !worker {
                spread::connections(ctx, connections, rooms, settle, hold, processes as usize)
                    .await?
            } else {
                scenario::connections(ctx, connections, rooms, settle, hold, worker).await?
            }
        }
        Scenario::Persist {
            rate,
            duration,
            poll,
            drain,
        } => scenario::persist(ctx, rate, duration, poll, drain).await?,
    };
    report.interrupted = interrupt.is_cancelled();
    report.load_average_end = sys::loadavg();
    if let (Some(a), Some(b)) = (cpu_start, server.cpu_secs()) {
        report.server_cpu_secs = Some(b - a);
    }
    Ok(report)
}
