//! The gateway's settings, read from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use confab_common::config::{ConfigError, Env, KafkaConfig, LogConfig};
use confab_common::jwt::JwtKeys;

/// Gateway settings, read from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (`CONFAB_GATEWAY_ADDR`).
    pub addr: SocketAddr,
    /// Bind the listener with `SO_REUSEPORT`, so that several gateway
    /// processes on one machine share one port and the kernel spreads new
    /// connections over them (`CONFAB_GATEWAY_REUSE_PORT`, default false).
    pub reuse_port: bool,
    pub kafka: KafkaConfig,
    pub log: LogConfig,
    /// Verifies access and subscription tokens.
    pub jwt: JwtKeys,
    /// Browser origins allowed to connect (`CONFAB_GATEWAY_ALLOWED_ORIGINS`,
    /// comma-separated). Empty allows every origin. Requests without an
    /// `Origin` header (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Open WebSocket connections allowed at once (`CONFAB_GATEWAY_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Open sockets allowed from one client address
    /// (`CONFAB_GATEWAY_MAX_CONNECTIONS_PER_IP`).
    pub max_connections_per_ip: usize,
    /// Connections one user may have open on this instance
    /// (`CONFAB_GATEWAY_MAX_CONNECTIONS_PER_USER`); one more is refused with
    /// disconnect 3504.
    pub max_connections_per_user: usize,
    /// Take the client address from the last `X-Forwarded-For` entry, for a
    /// gateway behind a reverse proxy (`CONFAB_GATEWAY_TRUST_PROXY`).
    pub trust_proxy: bool,
    /// Subscriptions one connection may hold (`CONFAB_GATEWAY_MAX_SUBSCRIPTIONS`).
    pub max_subscriptions: usize,
    /// Publications kept per room for recovery and history (`CONFAB_GATEWAY_HISTORY_SIZE`).
    pub history_size: usize,
    /// Publication bytes kept per room (`CONFAB_GATEWAY_HISTORY_BYTES_PER_ROOM`).
    pub history_bytes_per_room: usize,
    /// Publication bytes kept across all rooms (`CONFAB_GATEWAY_HISTORY_BYTES_TOTAL`).
    pub history_bytes_total: usize,
    /// Age after which publications leave the window (`CONFAB_GATEWAY_HISTORY_TTL_SECS`, 0 = never).
    pub history_ttl: Duration,
    /// Rooms without subscribers and without publications for this long are
    /// dropped from memory (`CONFAB_GATEWAY_ROOM_IDLE_SECS`, 0 = never).
    pub room_idle: Duration,
    /// Records per partition read at start to fill windows (`CONFAB_GATEWAY_PREFILL_RECORDS`).
    pub prefill_records: i64,
    /// How long to wait at start for the prefill before accepting anyway
    /// (`CONFAB_GATEWAY_CATCH_UP_TIMEOUT_SECS`).
    pub catch_up_timeout: Duration,
    /// Server ping interval (`CONFAB_GATEWAY_PING_INTERVAL_SECS`).
    pub ping_interval: Duration,
    /// How long a client has to answer a ping (`CONFAB_GATEWAY_PONG_TIMEOUT_SECS`).
    pub pong_timeout: Duration,
    /// How long a new socket may take to send connect (`CONFAB_GATEWAY_CONNECT_TIMEOUT_SECS`).
    pub connect_timeout: Duration,
    /// Grace after a token's `exp` before the connection or subscription is
    /// closed for want of a refresh (`CONFAB_GATEWAY_EXPIRED_CLOSE_DELAY_SECS`).
    pub expired_close_delay: Duration,
    /// Pushes one connection may have queued before it counts as a slow
    /// consumer (`CONFAB_GATEWAY_SEND_QUEUE`).
    pub send_queue: usize,
    /// A socket write that takes longer closes the connection (`CONFAB_GATEWAY_WRITE_TIMEOUT_SECS`).
    pub write_timeout: Duration,
    /// Sustained publications per second per connection (`CONFAB_GATEWAY_PUBLISH_RATE`).
    pub publish_rate: f64,
    /// Publication burst per connection (`CONFAB_GATEWAY_PUBLISH_BURST`).
    pub publish_burst: f64,
    /// Sustained publications per second per user, across all of the user's
    /// connections on this instance (`CONFAB_GATEWAY_USER_PUBLISH_RATE`, 0 =
    /// unlimited): opening more sockets does not multiply it.
    pub user_publish_rate: f64,
    /// Publication burst per user (`CONFAB_GATEWAY_USER_PUBLISH_BURST`).
    pub user_publish_burst: u32,
    /// Costly commands (subscribe, history, presence) one message may carry
    /// (`CONFAB_GATEWAY_MAX_COSTLY_PER_MESSAGE`); the rest get error 106.
    pub max_costly_per_message: usize,
    /// Sustained costly commands per second per connection
    /// (`CONFAB_GATEWAY_COSTLY_RATE`, burst the same); beyond, error 111.
    pub costly_rate: f64,
    /// Reply bytes one message's commands may produce
    /// (`CONFAB_GATEWAY_MAX_REPLY_BYTES`); costly commands beyond get 106.
    pub max_reply_bytes: usize,
    /// Largest publication `data`, in bytes (`CONFAB_GATEWAY_MAX_PUBLISH_BYTES`).
    pub max_publish_bytes: usize,
    /// How long shutdown waits for connections to finish (`CONFAB_GATEWAY_SHUTDOWN_GRACE_SECS`).
    pub shutdown_grace: Duration,
}

impl Config {
    /// Reads the configuration; see the field docs for the variables.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let kafka = KafkaConfig::from_env(env)?;
        Ok(Self {
            addr: confab_common::config::listen_addr(env, "CONFAB_GATEWAY_ADDR", "127.0.0.1:8000")?,
            reuse_port: env.parse_or("CONFAB_GATEWAY_REUSE_PORT", false)?,
            log: LogConfig::from_env(env)?,
            jwt: JwtKeys::from_env(env)?,
            allowed_origins: env.list("CONFAB_GATEWAY_ALLOWED_ORIGINS"),
            max_connections: env.positive_or("CONFAB_GATEWAY_MAX_CONNECTIONS", 10_000)?,
            max_connections_per_ip: env
                .positive_or("CONFAB_GATEWAY_MAX_CONNECTIONS_PER_IP", 1000)?,
            max_connections_per_user: env
                .positive_or("CONFAB_GATEWAY_MAX_CONNECTIONS_PER_USER", 100)?,
            trust_proxy: env.parse_or("CONFAB_GATEWAY_TRUST_PROXY", false)?,
            max_subscriptions: env.positive_or("CONFAB_GATEWAY_MAX_SUBSCRIPTIONS", 128)?,
            history_size: env.positive_or("CONFAB_GATEWAY_HISTORY_SIZE", 1000)?,
            history_bytes_per_room: env
                .positive_or("CONFAB_GATEWAY_HISTORY_BYTES_PER_ROOM", 2 << 20)?,
            history_bytes_total: env
                .positive_or("CONFAB_GATEWAY_HISTORY_BYTES_TOTAL", 512 << 20)?,
            history_ttl: env.secs_or("CONFAB_GATEWAY_HISTORY_TTL_SECS", Duration::ZERO)?,
            room_idle: env.secs_or("CONFAB_GATEWAY_ROOM_IDLE_SECS", Duration::from_secs(3600))?,
            prefill_records: env.parse_or("CONFAB_GATEWAY_PREFILL_RECORDS", 20_000)?,
            catch_up_timeout: env.secs_or(
                "CONFAB_GATEWAY_CATCH_UP_TIMEOUT_SECS",
                Duration::from_secs(30),
            )?,
            ping_interval: env
                .secs_or("CONFAB_GATEWAY_PING_INTERVAL_SECS", Duration::from_secs(25))?,
            pong_timeout: env
                .secs_or("CONFAB_GATEWAY_PONG_TIMEOUT_SECS", Duration::from_secs(10))?,
            connect_timeout: env.secs_or(
                "CONFAB_GATEWAY_CONNECT_TIMEOUT_SECS",
                Duration::from_secs(10),
            )?,
            expired_close_delay: env.secs_or(
                "CONFAB_GATEWAY_EXPIRED_CLOSE_DELAY_SECS",
                Duration::from_secs(25),
            )?,
            send_queue: env.positive_or("CONFAB_GATEWAY_SEND_QUEUE", 1024)?,
            write_timeout: env
                .secs_or("CONFAB_GATEWAY_WRITE_TIMEOUT_SECS", Duration::from_secs(10))?,
            publish_rate: env.parse_or("CONFAB_GATEWAY_PUBLISH_RATE", 20.0)?,
            publish_burst: env.parse_or("CONFAB_GATEWAY_PUBLISH_BURST", 40.0)?,
            user_publish_rate: env.parse_or("CONFAB_GATEWAY_USER_PUBLISH_RATE", 20.0)?,
            user_publish_burst: env.parse_or("CONFAB_GATEWAY_USER_PUBLISH_BURST", 40)?,
            max_costly_per_message: env.positive_or("CONFAB_GATEWAY_MAX_COSTLY_PER_MESSAGE", 16)?,
            costly_rate: env.parse_or("CONFAB_GATEWAY_COSTLY_RATE", 20.0)?,
            max_reply_bytes: env.positive_or("CONFAB_GATEWAY_MAX_REPLY_BYTES", 2 << 20)?,
            max_publish_bytes: env.parse_or("CONFAB_GATEWAY_MAX_PUBLISH_BYTES", 16 * 1024)?,
            shutdown_grace: env.secs_or(
                "CONFAB_GATEWAY_SHUTDOWN_GRACE_SECS",
                Duration::from_secs(15),
            )?,
            kafka,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_common::config::TEST_JWT_SECRET;

    fn config(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut pairs = vec![
            ("KAFKA_BROKERS", "unused:9092"),
            ("CONFAB_JWT_SECRET", TEST_JWT_SECRET),
        ];
        pairs.extend_from_slice(extra);
        Config::from_env(&Env::from_pairs(pairs))
    }

    #[test]
    fn reuse_port_is_opt_in() {
        assert!(!config(&[]).unwrap().reuse_port);
        let c = config(&[
            ("CONFAB_GATEWAY_REUSE_PORT", "true"),
            ("CONFAB_GATEWAY_ADDR", "127.0.0.1:8100"),
        ])
        .unwrap();
        assert!(c.reuse_port);
        assert_eq!(c.addr, "127.0.0.1:8100".parse().unwrap());
        assert!(
            !config(&[("CONFAB_GATEWAY_REUSE_PORT", "false")])
                .unwrap()
                .reuse_port
        );
        assert!(config(&[("CONFAB_GATEWAY_REUSE_PORT", "sometimes")]).is_err());
    }
}
