//! The persister's settings, read from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use confab_common::config::{listen_addr, ConfigError, Env, KafkaConfig};

/// Everything the persister needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Brokers and the room topic.
    pub kafka: KafkaConfig,
    /// Where rows go (`DATABASE_URL`).
    pub database_url: String,
    /// The consumer group (`CONFAB_PERSISTER_GROUP`). Instances in one group
    /// split the partitions between them.
    pub group: String,
    /// Where `/healthz` and `/metrics` are served (`CONFAB_PERSISTER_ADDR`).
    pub addr: SocketAddr,
    /// A batch closes once it holds this many records
    /// (`CONFAB_PERSISTER_BATCH_SIZE`).
    pub batch_size: usize,
    /// ... or once its oldest record has waited this long
    /// (`CONFAB_PERSISTER_BATCH_MS`). This bounds the extra latency batching adds.
    pub batch_time: Duration,
    /// Writers, each with its own connection and its own lane of partitions
    /// (`CONFAB_PERSISTER_WRITERS`). A partition is always written by the
    /// same lane, one batch at a time, so rows become visible in offset order.
    pub writers: usize,
    /// The longest pause between two attempts to write a batch while the
    /// database fails (`CONFAB_PERSISTER_RETRY_MAX_MS`).
    pub retry_max: Duration,
    /// How often consumer lag is measured (`CONFAB_PERSISTER_LAG_INTERVAL_MS`).
    pub lag_interval: Duration,
    /// `session.timeout.ms` of the group membership
    /// (`CONFAB_PERSISTER_SESSION_TIMEOUT_MS`): how soon the partitions of an
    /// instance that died without leaving move to the others.
    pub session_timeout: Duration,
    /// How long shutdown may take to store and commit what was already read
    /// (`CONFAB_PERSISTER_SHUTDOWN_GRACE_MS`).
    pub shutdown_grace: Duration,
    /// Test hook: simulate a crash right after the n-th batch is committed in
    /// PostgreSQL and before its offsets are committed in Kafka. Set through
    /// `CONFAB_PERSISTER_TEST_ABORT_AFTER_DB_COMMITS`, it aborts the process.
    #[doc(hidden)]
    pub crash_after_db_commits: Option<Crash>,
}

/// How the crash test hook crashes.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crash {
    /// The number of the database commit after which to crash (1 = first).
    pub after: u64,
    /// `std::process::abort()` (the binary) instead of returning
    /// [`crate::PersisterError::InjectedCrash`] from `run` without committing
    /// anything more (in-process tests).
    pub abort: bool,
}

impl Config {
    /// Reads the configuration; see the field docs for the variables.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let batch_size: usize = env.parse_or("CONFAB_PERSISTER_BATCH_SIZE", 1000)?;
        if batch_size == 0 {
            return Err(ConfigError::Invalid {
                key: "CONFAB_PERSISTER_BATCH_SIZE",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let crash_after: Option<u64> = match env.get("CONFAB_PERSISTER_TEST_ABORT_AFTER_DB_COMMITS")
        {
            None => None,
            Some(_) => Some(env.parse_or("CONFAB_PERSISTER_TEST_ABORT_AFTER_DB_COMMITS", 0)?),
        };
        Ok(Self {
            kafka: KafkaConfig::from_env(env)?,
            database_url: env.required("DATABASE_URL")?,
            group: env.string_or("CONFAB_PERSISTER_GROUP", "confab-persister"),
            addr: listen_addr(env, "CONFAB_PERSISTER_ADDR", "127.0.0.1:9102")?,
            batch_size,
            batch_time: env.millis_or("CONFAB_PERSISTER_BATCH_MS", Duration::from_millis(20))?,
            writers: env.parse_or("CONFAB_PERSISTER_WRITERS", 4)?.max(1),
            retry_max: env.millis_or("CONFAB_PERSISTER_RETRY_MAX_MS", Duration::from_secs(5))?,
            lag_interval: env
                .millis_or("CONFAB_PERSISTER_LAG_INTERVAL_MS", Duration::from_secs(5))?,
            session_timeout: env.millis_or(
                "CONFAB_PERSISTER_SESSION_TIMEOUT_MS",
                Duration::from_secs(10),
            )?,
            shutdown_grace: env.millis_or(
                "CONFAB_PERSISTER_SHUTDOWN_GRACE_MS",
                Duration::from_secs(10),
            )?,
            crash_after_db_commits: crash_after.map(|after| Crash { after, abort: true }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("KAFKA_BROKERS", "127.0.0.1:9092"),
            ("DATABASE_URL", "postgres://u@127.0.0.1/db"),
        ]
    }

    #[test]
    fn defaults() {
        let c = Config::from_env(&Env::from_pairs(base())).unwrap();
        assert_eq!(c.group, "confab-persister");
        assert_eq!(c.addr, "127.0.0.1:9102".parse().unwrap());
        assert_eq!(c.batch_size, 1000);
        assert_eq!(c.batch_time, Duration::from_millis(20));
        assert_eq!(c.retry_max, Duration::from_secs(5));
        assert_eq!(c.kafka.topic, "confab.rooms");
        assert_eq!(c.crash_after_db_commits, None);
    }

    #[test]
    fn overrides_and_errors() {
        let mut vars = base();
        vars.extend([
            ("CONFAB_PERSISTER_BATCH_SIZE", "50"),
            ("CONFAB_PERSISTER_BATCH_MS", "5"),
            ("CONFAB_PERSISTER_GROUP", "g"),
            ("CONFAB_PERSISTER_TEST_ABORT_AFTER_DB_COMMITS", "3"),
        ]);
        let c = Config::from_env(&Env::from_pairs(vars.clone())).unwrap();
        assert_eq!(c.batch_size, 50);
        assert_eq!(c.batch_time, Duration::from_millis(5));
        assert_eq!(c.group, "g");
        assert_eq!(
            c.crash_after_db_commits,
            Some(Crash {
                after: 3,
                abort: true
            })
        );

        vars.push(("CONFAB_PERSISTER_BATCH_SIZE", "0"));
        let err = Config::from_env(&Env::from_pairs(vars)).unwrap_err();
        assert!(err.to_string().contains("CONFAB_PERSISTER_BATCH_SIZE"));

        let missing = Config::from_env(&Env::from_pairs([("KAFKA_BROKERS", "b")])).unwrap_err();
        assert_eq!(
            missing,
            ConfigError::Missing {
                key: "DATABASE_URL"
            }
        );
    }
}
