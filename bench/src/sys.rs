//! Process plumbing: the fd limit, resident memory from `/proc`, the
//! gateway's pid and source addresses for many connections.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Connections per source address before another 127.0.0.x is used. The
/// kernel's own choice (no bind) is used up to this many; beyond it the bench
/// binds explicit ports on 127.0.0.2, .3, ... (leaving 127.0.0.1's ephemeral
/// ports to everything else on the machine).
pub const CONNS_PER_SOURCE: usize = 20_000;

/// Raises `RLIMIT_NOFILE` so that `want` descriptors fit: the soft limit to
/// the hard one, and the hard one too when allowed (root). Returns the new
/// (soft, hard).
pub fn raise_nofile(want: u64) -> anyhow::Result<(u64, u64)> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if hard < want {
        let cap = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(hard);
        let target = want.min(cap).max(hard);
        if rlimit::Resource::NOFILE.set(target, target).is_ok() {
            return Ok((target, target));
        }
    }
    if soft < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
    }
    Ok(rlimit::Resource::NOFILE.get()?)
}

/// Fails early, with the reason, when `conns` sockets cannot fit under this
/// process's open-file limit.
pub fn check_fd_budget(conns: usize) -> anyhow::Result<()> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    let need = conns as u64 + 64;
    anyhow::ensure!(
        need <= soft,
        "{conns} connections need about {need} file descriptors but this process may open {soft} \
         (hard limit {hard}, which this environment does not let us raise); \
         run several bench processes with fewer connections each"
    );
    Ok(())
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` shows them.
pub fn loadavg() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// User plus system CPU seconds of a `/proc/<pid>/stat` text (USER_HZ = 100).
pub fn stat_cpu_secs(stat: &str) -> Option<f64> {
    // The command name may hold spaces; fields restart after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, utime field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// CPU seconds a process has used so far.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu_secs(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// A `kB` field (`VmRSS`, `VmHWM`) of a `/proc/<pid>/status` text.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The resident set of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kib(&s, "VmRSS")
}

/// How many file descriptors a process has open (sockets included).
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The soft "Max open files" of a `/proc/<pid>/limits` text; `None` for unlimited.
pub fn limits_nofile(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The gateway process's soft fd limit.
pub fn process_nofile(pid: u32) -> Option<u64> {
    limits_nofile(&std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?)
}

/// Where `ops/dev` leaves the gateway's pid, relative to the repository root.
pub const GATEWAY_PID_FILE: &str = ".dev/pids/gateway.pid";

/// Where `bench/peers/centrifugo up` leaves the single node's pid.
pub const CENTRIFUGO_PID_FILE: &str = ".dev/peers/pids/centrifugo.pid";

/// Reads one pid file.
pub fn read_pid_file(path: &Path) -> anyhow::Result<u32> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    s.trim()
        .parse()
        .with_context(|| format!("{}: not a pid", path.display()))
}

/// Server pids: the given ones, else those in the given pid files, else the
/// one in `default_file` (a path relative to the repository root), looked up
/// in the current directory and in this repository's checkout.
pub fn server_pids(
    given: &[u32],
    files: &[PathBuf],
    default_file: &str,
) -> anyhow::Result<Vec<u32>> {
    if !given.is_empty() {
        return Ok(given.to_vec());
    }
    if !files.is_empty() {
        return files.iter().map(|f| read_pid_file(f)).collect();
    }
    let candidates = [
        PathBuf::from(default_file),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(default_file),
    ];
    for c in &candidates {
        if c.exists() {
            return Ok(vec![read_pid_file(c)?]);
        }
    }
    anyhow::bail!(
        "no server pid: pass --server-pid or start the server with its script (looked in {})",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The server processes of a run, read from /proc. Several pids (several
/// gateways or nodes) are summed.
#[derive(Debug, Clone, Default)]
pub struct Server {
    pub pids: Vec<u32>,
}

impl Server {
    /// User plus system CPU seconds, summed; `None` if any pid is unreadable
    /// or there is none.
    pub fn cpu_secs(&self) -> Option<f64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|p| cpu_secs(*p)).sum()
    }

    /// VmRSS in KiB, summed; `None` if any pid is unreadable or there is none.
    pub fn rss_kib(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|p| rss_kib(*p)).sum()
    }

    /// The lowest soft fd limit among the processes.
    pub fn nofile(&self) -> Option<u64> {
        self.pids.iter().filter_map(|p| process_nofile(*p)).min()
    }
}

/// The source addresses for `conns` connections to `target`: none (let the
/// kernel choose) when one address is enough, else 127.0.0.2, .3, ... for a
/// loopback target. `explicit` overrides; `count` > 0 forces a number.
pub fn source_addrs(
    conns: usize,
    target: IpAddr,
    explicit: &[IpAddr],
    count: usize,
) -> anyhow::Result<Vec<IpAddr>> {
    if !explicit.is_empty() {
        return Ok(explicit.to_vec());
    }
    let n = if count > 0 {
        count
    } else {
        conns.div_ceil(CONNS_PER_SOURCE)
    };
    if n <= 1 && count == 0 {
        return Ok(Vec::new());
    }
    anyhow::ensure!(
        target.is_loopback(),
        "{conns} connections need {n} source addresses; pass --source-addr for non-loopback target {target}"
    );
    anyhow::ensure!(n <= 253, "at most 253 source addresses");
    Ok((2..=n as u8 + 1)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect())
}

/// The server's Prometheus counters and histogram sums/counts that matter to
/// a run, from a `/metrics` text: every `<prefix>*_total`, `*_sum` and
/// `*_count` sample (`confab_gateway_` for Confab, `centrifugo_` for
/// Centrifugo), keyed by name and labels as written.
pub fn parse_server_metrics(text: &str, prefix: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| {
            // Label values may hold spaces: the key ends at the closing brace.
            let end = match l.find('{') {
                Some(_) => l.rfind('}')? + 1,
                None => l.find(' ')?,
            };
            let (key, rest) = l.split_at(end);
            let (name, _) = split_labels(key);
            let keep =
                name.ends_with("_total") || name.ends_with("_sum") || name.ends_with("_count");
            let value = rest.split_whitespace().next()?.parse().ok()?;
            keep.then(|| (key.to_owned(), value))
        })
        .collect()
}

/// `name{labels}` into `name` and `{labels}` (empty without labels).
pub fn split_labels(key: &str) -> (&str, &str) {
    key.find('{').map_or((key, ""), |i| key.split_at(i))
}

/// `after - before` for every metric in both, dropping zeros; histogram
/// `_sum`/`_count` pairs (with the same labels) also give a `_mean` (seconds).
pub fn metric_deltas(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for (k, a) in after {
        let d = a - before.get(k).copied().unwrap_or(0.0);
        if d != 0.0 {
            out.insert(k.clone(), d);
        }
    }
    let means: Vec<(String, f64)> = out
        .iter()
        .filter_map(|(k, sum)| {
            let (name, labels) = split_labels(k);
            let base = name.strip_suffix("_sum")?;
            let count = out.get(&format!("{base}_count{labels}"))?;
            (*count > 0.0).then(|| (format!("{base}_mean{labels}"), sum / count))
        })
        .collect();
    out.extend(means);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_fields() {
        let s = "Name:\tconfab-gateway\nVmPeak:\t  900 kB\nVmHWM:\t   5000 kB\nVmRSS:\t   4321 kB\nThreads:\t3\n";
        assert_eq!(status_kib(s, "VmRSS"), Some(4321));
        assert_eq!(status_kib(s, "VmHWM"), Some(5000));
        assert_eq!(status_kib(s, "VmSwap"), None);
    }

    #[test]
    fn parses_cpu_time() {
        let stat =
            "4242 (confab gate) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 8 0 100 0 0";
        assert_eq!(stat_cpu_secs(stat), Some(3.0));
        assert!(cpu_secs(std::process::id()).is_some());
        assert_eq!(loadavg().unwrap().split(' ').count(), 3);
    }

    #[test]
    fn gateway_metric_deltas() {
        let before = parse_server_metrics(
            "# HELP x\nconfab_gateway_messages_delivered_total 10\nconfab_gateway_connections 5\n\
             confab_gateway_kafka_produce_seconds_sum 1.5\nconfab_gateway_kafka_produce_seconds_count 3\n\
             confab_gateway_kafka_produce_seconds_bucket{le=\"0.1\"} 3\nother_total 9\n",
            "confab_gateway_",
        );
        assert_eq!(before.len(), 3, "{before:?}");
        let after = parse_server_metrics(
            "confab_gateway_messages_delivered_total 110\nconfab_gateway_kafka_produce_seconds_sum 3.5\n\
             confab_gateway_kafka_produce_seconds_count 7\nconfab_gateway_send_queue_drops_total 0\n",
            "confab_gateway_",
        );
        let d = metric_deltas(&before, &after);
        assert_eq!(d["confab_gateway_messages_delivered_total"], 100.0);
        assert_eq!(d["confab_gateway_kafka_produce_seconds_count"], 4.0);
        assert_eq!(d["confab_gateway_kafka_produce_seconds_mean"], 0.5);
        assert!(!d.contains_key("confab_gateway_send_queue_drops_total"));
    }

    #[test]
    fn labelled_metrics_are_kept_by_name_and_labels() {
        let text = "# TYPE centrifugo_node_messages_sent_count counter\n\
             centrifugo_node_messages_sent_count{type=\"publication\"} 40\n\
             centrifugo_client_command_duration_seconds_sum{method=\"publish\",x=\"a b\"} 0.5\n\
             centrifugo_client_command_duration_seconds_count{method=\"publish\",x=\"a b\"} 10\n\
             centrifugo_client_command_duration_seconds_bucket{le=\"0.1\"} 3\n\
             centrifugo_node_num_clients 50\nconfab_gateway_x_total 1\n";
        let m = parse_server_metrics(text, "centrifugo_");
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(
            m["centrifugo_node_messages_sent_count{type=\"publication\"}"],
            40.0
        );
        let d = metric_deltas(&Default::default(), &m);
        assert_eq!(
            d["centrifugo_client_command_duration_seconds_mean{method=\"publish\",x=\"a b\"}"],
            0.05
        );
    }

    #[test]
    fn parses_limits() {
        let l = "Limit                     Soft Limit           Hard Limit           Units     \n\
                 Max cpu time              unlimited            unlimited            seconds   \n\
                 Max open files            20000                20000                files     \n";
        assert_eq!(limits_nofile(l), Some(20000));
        assert_eq!(
            limits_nofile("Max open files  unlimited unlimited files"),
            None
        );
    }

    #[test]
    fn own_fds_are_counted() {
        let before = open_fds(std::process::id()).unwrap();
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(open_fds(std::process::id()).unwrap() > before);
        drop(f);
        assert_eq!(open_fds(u32::MAX), None);
    }

    #[test]
    fn own_rss_is_readable() {
        let kib = rss_kib(std::process::id()).unwrap();
        assert!(kib > 100, "{kib}");
    }

    #[test]
    fn source_addresses_spread_beyond_one_port_range() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(source_addrs(10_000, lo, &[], 0).unwrap().is_empty());
        assert!(source_addrs(20_000, lo, &[], 0).unwrap().is_empty());
        let s = source_addrs(50_000, lo, &[], 0).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(s[2], "127.0.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(source_addrs(10, lo, &[], 3).unwrap().len(), 3);
        let explicit: IpAddr = "127.0.0.9".parse().unwrap();
        assert_eq!(
            source_addrs(60_000, lo, &[explicit], 0).unwrap(),
            vec![explicit]
        );
        let remote: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(source_addrs(60_000, remote, &[], 0).is_err());
    }

    #[test]
    fn server_pids_prefer_the_given_ones() {
        assert_eq!(
            server_pids(&[7, 8], &[], GATEWAY_PID_FILE).unwrap(),
            vec![7, 8]
        );
        let dir = std::env::temp_dir().join(format!("bench-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.pid"), dir.join("b.pid"));
        std::fs::write(&a, "1234\n").unwrap();
        std::fs::write(&b, "5678").unwrap();
        assert_eq!(
            server_pids(&[], &[a.clone(), b.clone()], GATEWAY_PID_FILE).unwrap(),
            vec![1234, 5678]
        );
        std::fs::write(&b, "nope").unwrap();
        assert!(server_pids(&[], &[a, b], GATEWAY_PID_FILE).is_err());
        assert!(server_pids(&[], &[dir.join("missing")], GATEWAY_PID_FILE).is_err());
        assert!(server_pids(&[], &[], "no/such/file.pid").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn server_figures_sum_over_pids() {
        let me = std::process::id();
        let one = Server { pids: vec![me] };
        let two = Server { pids: vec![me, me] };
        let (r1, r2) = (one.rss_kib().unwrap(), two.rss_kib().unwrap());
        assert!(r2 >= r1 * 2 - 1024 && r2 <= r1 * 2 + 1024, "{r1} {r2}");
        assert!(two.cpu_secs().unwrap() >= one.cpu_secs().unwrap());
        assert!(Server::default().cpu_secs().is_none());
        assert!(Server {
            pids: vec![u32::MAX]
        }
        .rss_kib()
        .is_none());
        assert!(one.nofile().is_some());
    }
}
