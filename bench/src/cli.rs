//! Command-line arguments.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Measures what Confab users feel: publish-to-deliver latency, fan-out,
/// connection cost and persistence lag, over the same WebSocket protocol and
/// REST API as any client. Every run stops by itself after `--duration`.
/// `--target centrifugo` runs the same scenarios against Centrifugo, and
/// `compare` runs one scenario against both, back to back.
#[derive(Debug, Parser)]
#[command(name = "confab-bench", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

/// The server a run talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The Confab stack: users and rooms over its REST API, the gateway over WebSocket.
    Confab,
    /// Centrifugo (bench/peers/centrifugo): tokens and rooms made locally with the secret.
    Centrifugo,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Self::Confab => "confab",
            Self::Centrifugo => "centrifugo",
        }
    }

    /// The display name, for tables.
    pub fn title(self) -> &'static str {
        match self {
            Self::Confab => "Confab",
            Self::Centrifugo => "Centrifugo",
        }
    }
}

/// What to run: one scenario, or one scenario against both servers.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Run(Scenario),
    /// Runs one scenario against Confab, then against Centrifugo, with the same
    /// parameters, and prints one table of both figures and their ratio;
    /// `compare goals` runs every scenario behind issue 12's goal table.
    Compare(Compare),
}

/// `compare` options.
#[derive(Debug, Clone, Args)]
pub struct Compare {
    /// Wait between the two runs, so the first one's connections are gone.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub pause: Duration,
    /// Run Centrifugo first.
    #[arg(long)]
    pub centrifugo_first: bool,
    #[command(subcommand)]
    pub what: Compared,
}

/// What `compare` runs: one scenario, or the whole goal table.
#[derive(Debug, Clone, Subcommand)]
pub enum Compared {
    #[command(flatten)]
    Scenario(Scenario),
    /// Every scenario behind issue 12's goal table, each against both servers
    /// back to back, then one table: goal, Confab, Centrifugo, ratio, holds.
    Goals(Goals),
}

/// `compare goals` options. The sizes are the issue's; `--scale-down` (or
/// `--quick`) shrinks them for a smoke test, and the report says so.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct Goals {
    /// The timing of each traffic scenario.
    #[command(flatten)]
    #[serde(flatten)]
    pub timing: Timing,
    /// The idle-memory run: wait after the ramp before the "after" RSS sample.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub settle: Duration,
    /// The idle-memory run: keep the connections open this long after the sample.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub hold: Duration,
    /// The fan-out run's aggregate publish rate (× 5,000 subscribers = deliveries offered).
    #[arg(long, default_value_t = 100.0)]
    pub fanout_rate: f64,
    /// The fan-out run's publishing connections.
    #[arg(long, default_value_t = 3)]
    pub fanout_publishers: usize,
    /// Divide every connection and room count and the latency runs' rates by
    /// this (a smoke test: the verdicts are then not the goals').
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub scale_down: u32,
    /// A smoke test in seconds: --scale-down 20, --duration 2s, --warmup 500ms,
    /// --drain 2s, --settle 1s, --hold 0s (overriding those flags).
    #[arg(long)]
    pub quick: bool,
    /// A JSON file with the figures this run cannot measure itself
    /// (`connections_100k`, `persister_records_per_sec`), each
    /// `{"confab": N, "centrifugo": N?, "source": "where it was measured", "detail": "..."}`.
    #[arg(long)]
    pub extra: Option<PathBuf>,
}

/// Options every scenario shares.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct Common {
    /// The server to run against.
    #[arg(long, global = true, value_enum, default_value_t = Target::Confab)]
    pub target: Target,
    /// The REST API base URL (Confab only).
    #[arg(
        long,
        global = true,
        env = "CONFAB_API_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub api: String,
    /// Confab's gateway WebSocket URL; several (comma-separated or repeated)
    /// spread the connections over several gateways.
    #[arg(
        long,
        global = true,
        env = "CONFAB_WS_URL",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8000/connection/websocket"
    )]
    pub ws: Vec<String>,
    /// Centrifugo's WebSocket URL(s), as `bench/peers/centrifugo env` prints them.
    #[arg(
        long,
        global = true,
        env = "CONFAB_PEER_WS_URL",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8001/connection/websocket"
    )]
    pub centrifugo_ws: Vec<String>,
    /// The HS256 secret. With Confab, subscription tokens are then minted
    /// locally (two-hour lifetime) instead of asked from the API per room.
    /// Centrifugo needs it: every token is minted locally.
    #[arg(long, global = true, env = "CONFAB_JWT_SECRET", hide_env_values = true)]
    #[serde(skip)]
    pub jwt_secret: Option<String>,
    /// Where to write the JSON results; the SVG plot goes beside it.
    /// Default: bench-results/<scenario>-<UTC time>.json.
    #[arg(long, global = true)]
    pub out: Option<PathBuf>,
    /// Users to register (connections share them); 0 picks one per room, at most 20.
    #[arg(long, global = true, default_value_t = 0)]
    pub users: usize,
    /// Source addresses to connect from (repeatable), with explicit ports.
    /// Default: the kernel's choice up to 20,000 connections, beyond that
    /// 127.0.0.2, .3, ... one per 20,000 when the server is on loopback.
    #[arg(long = "source-addr", global = true)]
    pub source_addrs: Vec<IpAddr>,
    /// Force this many 127.0.0.x source addresses (0: automatic).
    #[arg(long, global = true, default_value_t = 0)]
    pub source_ips: usize,
    /// Connections being opened at once.
    #[arg(long, global = true, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// New connections per second (0: as fast as the concurrency allows).
    #[arg(long, global = true, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Timeout for one connection's open, connect and subscribe.
    #[arg(long, global = true, value_parser = parse_duration, default_value = "20s")]
    pub connect_timeout: Duration,
    /// Ask for join and leave pushes on subscribe (the protocol's `join_leave`).
    #[arg(long, global = true)]
    pub join_leave: bool,
    /// The pid(s) of the server under test in a single run, whichever the
    /// target: CPU time and RSS are read from /proc (summed over several).
    #[arg(long, global = true, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Confab's gateway pid(s) (default: .dev/pids/gateway.pid).
    #[arg(long, global = true, value_delimiter = ',')]
    pub gateway_pid: Vec<u32>,
    /// Centrifugo's pid(s) (default: from --centrifugo-pid-file).
    #[arg(long, global = true, value_delimiter = ',')]
    pub centrifugo_pid: Vec<u32>,
    /// Centrifugo's pid file(s) (default: .dev/peers/pids/centrifugo.pid).
    #[arg(
        long,
        global = true,
        env = "CONFAB_PEER_PID_FILE",
        value_delimiter = ','
    )]
    pub centrifugo_pid_file: Vec<PathBuf>,
    /// Confab's gateway Prometheus endpoint(s), read before and after the run
    /// (default: /metrics on each WebSocket URL's host and port).
    #[arg(long, global = true, value_delimiter = ',')]
    pub metrics_url: Vec<String>,
    /// Centrifugo's Prometheus endpoint(s) (default: /metrics beside each WebSocket URL).
    #[arg(long, global = true, value_delimiter = ',')]
    pub centrifugo_metrics_url: Vec<String>,
    /// No progress bar.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

/// How long a traffic run lasts: `latency`, `fanout`, and each of them in
/// `compare goals`.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct Timing {
    /// How long publishers run.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// Publications sent in this first part of the run are delivered and
    /// counted but left out of the latency histograms.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub warmup: Duration,
    /// How long to wait for outstanding deliveries after publishing stops.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub drain: Duration,
}

/// Traffic options shared by `latency` and `fanout`.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct Traffic {
    #[command(flatten)]
    #[serde(flatten)]
    pub timing: Timing,
    /// Bytes of padding in each message's text.
    #[arg(long, default_value_t = 0)]
    pub size: usize,
    /// Most publishes in flight per publisher before sends are skipped.
    #[arg(long, default_value_t = 1000)]
    pub max_inflight: usize,
}

#[derive(Debug, Clone, Subcommand, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// N connections over R rooms, P publishers per room, a set aggregate rate:
    /// publish-to-deliver and publish-to-ack latency.
    Latency {
        /// Connections in total (publishers included).
        #[arg(long, short = 'n', default_value_t = 10_000)]
        connections: usize,
        /// Rooms; connections are spread evenly.
        #[arg(long, short = 'r', default_value_t = 100)]
        rooms: usize,
        /// Publishing connections per room.
        #[arg(long, short = 'p', default_value_t = 1)]
        publishers: usize,
        /// Aggregate messages per second over all publishers.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        #[command(flatten)]
        traffic: Traffic,
    },
    /// One room with N subscribers: deliveries per second and latency.
    Fanout {
        /// Subscribing connections (publishers included).
        #[arg(long, short = 'n', default_value_t = 5_000)]
        subscribers: usize,
        /// Publishing connections (the gateway limits each to 20 msg/s by default).
        #[arg(long, short = 'p', default_value_t = 2)]
        publishers: usize,
        /// Aggregate messages per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        #[command(flatten)]
        traffic: Traffic,
    },
    /// Ramp to N idle connections: connect rate and gateway memory per connection.
    Connections {
        #[arg(long, short = 'n', default_value_t = 10_000)]
        connections: usize,
        /// Rooms to subscribe the connections to (0: connect without subscribing).
        #[arg(long, short = 'r', default_value_t = 100)]
        rooms: usize,
        /// Wait after the ramp before the "after" memory sample.
        #[arg(long, value_parser = parse_duration, default_value = "5s")]
        settle: Duration,
        /// Keep the connections open this long after the sample (pings keep flowing).
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        hold: Duration,
        /// Spread the connections over this many bench processes (children of
        /// this one, each from its own source address), for more than one
        /// process's open-file limit; server RSS is still summed over every pid given.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=250))]
        processes: u32,
        /// Run as one of those children: report the ramp on stdout and hold
        /// until stdin closes (set by the parent).
        #[arg(long, hide = true)]
        worker: bool,
    },
    /// Lag from publish until the message is visible in REST history.
    Persist {
        /// Messages per second.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// How long to publish.
        #[arg(long, value_parser = parse_duration, default_value = "30s")]
        duration: Duration,
        /// REST polling interval.
        #[arg(long, value_parser = parse_duration, default_value = "20ms")]
        poll: Duration,
        /// How long to keep polling for stragglers after publishing stops.
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        drain: Duration,
    },
}

impl Command {
    /// The scenario to run, alone or in a comparison (none for `compare goals`).
    pub fn scenario(&self) -> Option<&Scenario> {
        match self {
            Self::Run(s) => Some(s),
            Self::Compare(c) => match &c.what {
                Compared::Scenario(s) => Some(s),
                Compared::Goals(_) => None,
            },
        }
    }
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Latency { .. } => "latency",
            Self::Fanout { .. } => "fanout",
            Self::Connections { .. } => "connections",
            Self::Persist { .. } => "persist",
        }
    }
}

/// The command line with the value of `--jwt-secret` hidden.
pub fn redacted_command(args: impl IntoIterator<Item = String>) -> String {
    let mut out = Vec::new();
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("***".to_owned());
            hide_next = false;
        } else if a == "--jwt-secret" {
            out.push(a);
            hide_next = true;
        } else if a.starts_with("--jwt-secret=") {
            out.push("--jwt-secret=***".to_owned());
        } else {
            out.push(a);
        }
    }
    out.join(" ")
}

/// Parses `500ms`, `30s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with ms, s, m or h"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("{s:?}: unknown unit {u:?}")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn secrets_stay_out_of_the_recorded_command() {
        let args = [
            "b",
            "--jwt-secret",
            "s3cret",
            "latency",
            "--jwt-secret=abc",
            "-n",
            "5",
        ];
        let c = redacted_command(args.map(String::from));
        assert_eq!(c, "b --jwt-secret *** latency --jwt-secret=*** -n 5");
        let cli = Cli::try_parse_from(args).unwrap();
        let json = serde_json::to_string(&cli.common).unwrap();
        assert!(!json.contains("abc") && !json.contains("s3cret"), "{json}");
        let json = serde_json::to_value(cli.command.scenario().unwrap()).unwrap();
        assert_eq!(json["latency"]["connections"], 5);
    }

    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn latency_args_parse_with_globals_anywhere() {
        let cli = Cli::try_parse_from([
            "confab-bench",
            "--api",
            "http://127.0.0.1:9999",
            "latency",
            "-n",
            "2000",
            "--rooms",
            "10",
            "--rate",
            "500",
            "--duration",
            "10s",
            "--jwt-secret",
            "s3cret",
            "--source-addr",
            "127.0.0.2",
            "--source-addr",
            "127.0.0.3",
        ])
        .unwrap();
        assert_eq!(cli.common.api, "http://127.0.0.1:9999");
        assert_eq!(cli.common.jwt_secret.as_deref(), Some("s3cret"));
        assert_eq!(cli.common.source_addrs.len(), 2);
        match cli.command.scenario().unwrap().clone() {
            Scenario::Latency {
                connections,
                rooms,
                publishers,
                rate,
                traffic,
            } => {
                assert_eq!((connections, rooms, publishers), (2000, 10, 1));
                assert_eq!(rate, 500.0);
                assert_eq!(traffic.timing.duration, Duration::from_secs(10));
                assert_eq!(traffic.timing.warmup, Duration::from_secs(3));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn other_scenarios_parse() {
        let c = Cli::try_parse_from(["b", "connections", "-n", "50000", "--rooms", "0"]).unwrap();
        assert!(matches!(
            c.command.scenario().unwrap(),
            Scenario::Connections {
                connections: 50000,
                rooms: 0,
                ..
            }
        ));
        assert_eq!(c.command.scenario().unwrap().name(), "connections");
        let c = Cli::try_parse_from(["b", "persist", "--poll", "50ms"]).unwrap();
        assert!(
            matches!(c.command.scenario().unwrap(), Scenario::Persist { poll, .. } if *poll == Duration::from_millis(50))
        );
        let c = Cli::try_parse_from(["b", "fanout", "-n", "300", "--gateway-pid", "42"]).unwrap();
        assert_eq!(c.common.gateway_pid, vec![42]);
        assert_eq!(c.common.target, Target::Confab);
        assert!(Cli::try_parse_from(["b", "latency", "--rate", "fast"]).is_err());
        assert!(Cli::try_parse_from(["b"]).is_err());
    }

    #[test]
    fn targets_and_lists_parse() {
        let c = Cli::try_parse_from([
            "b",
            "--target",
            "centrifugo",
            "--centrifugo-ws",
            "ws://127.0.0.1:8202/connection/websocket,ws://127.0.0.1:8203/connection/websocket",
            "--server-pid",
            "7,8",
            "latency",
            "-n",
            "50",
        ])
        .unwrap();
        assert_eq!(c.common.target, Target::Centrifugo);
        assert_eq!(c.common.centrifugo_ws.len(), 2);
        assert_eq!(c.common.server_pid, vec![7, 8]);
        assert!(matches!(
            c.command,
            Command::Run(Scenario::Latency {
                connections: 50,
                ..
            })
        ));
        assert!(Cli::try_parse_from(["b", "--target", "nats", "latency"]).is_err());
    }

    #[test]
    fn compare_wraps_a_scenario() {
        let c = Cli::try_parse_from([
            "b", "compare", "--pause", "1s", "latency", "-n", "50", "-r", "2", "--rate", "20",
        ])
        .unwrap();
        match &c.command {
            Command::Compare(cmp) => {
                assert_eq!(cmp.pause, Duration::from_secs(1));
                assert!(!cmp.centrifugo_first);
                assert!(matches!(
                    cmp.what,
                    Compared::Scenario(Scenario::Latency {
                        connections: 50,
                        rooms: 2,
                        ..
                    })
                ));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(c.command.scenario().unwrap().name(), "latency");
        assert!(Cli::try_parse_from(["b", "compare"]).is_err());
    }

    #[test]
    fn compare_goals_parses_its_own_options() {
        let c = Cli::try_parse_from([
            "b",
            "compare",
            "goals",
            "--duration",
            "10s",
            "--extra",
            "x.json",
            "--scale-down",
            "4",
        ])
        .unwrap();
        assert!(c.command.scenario().is_none());
        match &c.command {
            Command::Compare(Compare {
                what: Compared::Goals(g),
                ..
            }) => {
                assert_eq!(g.timing.duration, Duration::from_secs(10));
                assert_eq!(g.extra.as_deref(), Some(std::path::Path::new("x.json")));
                assert_eq!(g.scale_down, 4);
                assert!(!g.quick);
                assert_eq!(g.fanout_rate, 100.0);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(Cli::try_parse_from(["b", "compare", "goals", "--scale-down", "0"]).is_err());
    }
}
