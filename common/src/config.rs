//! Typed configuration read from the environment (CONTRACT §2).
//!
//! Services read their settings through an [`Env`], which is the process
//! environment in production and a plain map in tests. A bad value becomes a
//! [`ConfigError`] naming the variable; binaries print it on one line and exit
//! with status 64 (see [`exit_on_error`]).

use std::collections::HashMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

/// The exit status for a configuration error (`EX_USAGE` in sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// A problem with one environment variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{key} is required but not set")]
    Missing { key: &'static str },
    #[error("{key}={value:?} is invalid: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// Where configuration values come from.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `None` reads the process environment; `Some` is an injected map.
    vars: Option<HashMap<String, String>>,
}

impl Env {
    /// The process environment.
    pub fn process() -> Self {
        Self { vars: None }
    }

    /// A fixed set of variables, for tests.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: Some(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    /// The raw value of `key`; empty strings count as unset.
    pub fn get(&self, key: &str) -> Option<String> {
        let value = match &self.vars {
            None => std::env::var(key).ok(),
            Some(map) => map.get(key).cloned(),
        };
        value.filter(|v| !v.trim().is_empty())
    }

    /// A required string.
    pub fn required(&self, key: &'static str) -> Result<String, ConfigError> {
        self.get(key).ok_or(ConfigError::Missing { key })
    }

    /// A string with a default.
    pub fn string_or(&self, key: &'static str, default: &str) -> String {
        self.get(key).unwrap_or_else(|| default.to_owned())
    }

    /// A value parsed with `FromStr`, or `default` when unset.
    pub fn parse_or<T>(&self, key: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::Invalid {
                    key,
                    value: raw,
                    reason: e.to_string(),
                }),
        }
    }

    /// A count that must be at least 1, or `default` when unset.
    pub fn positive_or(&self, key: &'static str, default: usize) -> Result<usize, ConfigError> {
        let n: usize = self.parse_or(key, default)?;
        if n == 0 {
            return Err(ConfigError::Invalid {
                key,
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(n)
    }

    /// A duration in milliseconds (`KEY=250`), or `default` when unset.
    pub fn millis_or(&self, key: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        let ms: u64 = self.parse_or(key, default.as_millis() as u64)?;
        Ok(Duration::from_millis(ms))
    }

    /// A duration in seconds (`KEY=30`), or `default` when unset.
    pub fn secs_or(&self, key: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        let s: u64 = self.parse_or(key, default.as_secs())?;
        Ok(Duration::from_secs(s))
    }

    /// A boolean: `1/true/yes/on` or `0/false/no/off`.
    pub fn bool_or(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => match raw.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(ConfigError::Invalid {
                    key,
                    value: raw,
                    reason: "expected true or false".into(),
                }),
            },
        }
    }

    /// A comma-separated list; empty items are dropped.
    pub fn list(&self, key: &'static str) -> Vec<String> {
        self.get(key)
            .map(|raw| {
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Settings for Kafka clients, shared by every service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Bootstrap servers (`KAFKA_BROKERS`).
    pub brokers: String,
    /// The room topic (`CONFAB_KAFKA_TOPIC`).
    pub topic: String,
    /// `fetch.wait.max.ms` for consumers (`CONFAB_KAFKA_FETCH_WAIT_MAX_MS`):
    /// how long an idle fetch waits on the broker. Kafka answers a fetch as
    /// soon as a byte is there (`fetch.min.bytes=1`), so this bounds only idle
    /// polling, never latency.
    pub fetch_wait_max_ms: u32,
    /// `message.timeout.ms` for producers (`CONFAB_KAFKA_MESSAGE_TIMEOUT_MS`): how
    /// long a publish may wait for the broker before it fails. It outlasts a
    /// leader failover (a dead broker is fenced within seconds).
    pub message_timeout_ms: u32,
    /// `linger.ms` for producers (`CONFAB_KAFKA_LINGER_MS`): how long a record
    /// waits for others to share its request. 0 sends at once.
    pub linger_ms: u32,
}

impl KafkaConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            brokers: env.required("KAFKA_BROKERS")?,
            topic: env.string_or("CONFAB_KAFKA_TOPIC", "confab.rooms"),
            fetch_wait_max_ms: env.parse_or("CONFAB_KAFKA_FETCH_WAIT_MAX_MS", 100)?,
            message_timeout_ms: env.parse_or("CONFAB_KAFKA_MESSAGE_TIMEOUT_MS", 30_000)?,
            linger_ms: env.parse_or("CONFAB_KAFKA_LINGER_MS", 0)?,
        })
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// JSON lines instead of human-readable text (`CONFAB_LOG_FORMAT=json`).
    pub json: bool,
}

impl LogConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let format = env.string_or("CONFAB_LOG_FORMAT", "text");
        match format.as_str() {
            "json" => Ok(Self { json: true }),
            "text" | "pretty" => Ok(Self { json: false }),
            _ => Err(ConfigError::Invalid {
                key: "CONFAB_LOG_FORMAT",
                value: format,
                reason: "expected json or text".into(),
            }),
        }
    }
}

/// Reads a listen address with a default.
pub fn listen_addr(env: &Env, key: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
    let default: SocketAddr = default.parse().expect("default listen address is valid");
    env.parse_or(key, default)
}

/// The JWT secret of the test suites. Services reading the process
/// environment refuse it; only an injected [`Env`] (tests) accepts it.
pub const TEST_JWT_SECRET: &str = "confab-test-secret-0123456789";

/// Secrets that appear in this repository (compose file, docs, tests):
/// anyone can mint tokens with them, so no service accepts them.
pub const EXAMPLE_JWT_SECRETS: &[&str] =
    &["change-me-dev-only-jwt-secret-0123456789", TEST_JWT_SECRET];

/// Why `secret` must not be used, if it must not. `injected` (a test's
/// [`Env`]) admits [`TEST_JWT_SECRET`].
fn refuse_secret(secret: &str, injected: bool) -> Option<&'static str> {
    if secret.len() < 16 {
        return Some("must be at least 16 bytes");
    }
    if injected && secret == TEST_JWT_SECRET {
        return None;
    }
    let lower = secret.to_ascii_lowercase();
    if EXAMPLE_JWT_SECRETS.contains(&secret)
        || lower.starts_with("change-me")
        || lower.starts_with("changeme")
    {
        return Some("is a published example secret; generate one with `openssl rand -hex 32`");
    }
    None
}

/// Reads the JWT secret, which every service requires. Example secrets from
/// the repository are refused ([`EXAMPLE_JWT_SECRETS`]).
pub fn jwt_secret(env: &Env) -> Result<String, ConfigError> {
    let secret = env.required("CONFAB_JWT_SECRET")?;
    if let Some(reason) = refuse_secret(&secret, env.vars.is_some()) {
        return Err(ConfigError::Invalid {
            key: "CONFAB_JWT_SECRET",
            value: "<redacted>".into(),
            reason: reason.into(),
        });
    }
    Ok(secret)
}

/// Unwraps a config result, or prints the reason on one line and exits with 64.
pub fn exit_on_error<T>(result: Result<T, ConfigError>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => {
            eprintln!("configuration error: {err}");
            std::process::exit(EXIT_CONFIG);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        let env = Env::from_pairs([("KAFKA_BROKERS", "b:9092"), ("CONFAB_KAFKA_TOPIC", " ")]);
        let k = KafkaConfig::from_env(&env).unwrap();
        assert_eq!(k.topic, "confab.rooms");
        assert_eq!(k.brokers, "b:9092");
        assert_eq!(k.fetch_wait_max_ms, 100);
        assert_eq!(k.message_timeout_ms, 30_000);
        assert_eq!(k.linger_ms, 0);
    }

    #[test]
    fn missing_and_invalid_values_name_the_key() {
        let env = Env::from_pairs([("CONFAB_KAFKA_FETCH_WAIT_MAX_MS", "soon")]);
        assert_eq!(
            KafkaConfig::from_env(&env).unwrap_err(),
            ConfigError::Missing {
                key: "KAFKA_BROKERS"
            }
        );
        let env = Env::from_pairs([
            ("KAFKA_BROKERS", "b:9092"),
            ("CONFAB_KAFKA_FETCH_WAIT_MAX_MS", "soon"),
        ]);
        let err = KafkaConfig::from_env(&env).unwrap_err().to_string();
        assert!(err.contains("CONFAB_KAFKA_FETCH_WAIT_MAX_MS"), "{err}");
    }

    #[test]
    fn listen_addr_default_and_override() {
        let env = Env::from_pairs([("CONFAB_API_ADDR", "0.0.0.0:9")]);
        assert_eq!(
            listen_addr(&env, "CONFAB_API_ADDR", "127.0.0.1:8080").unwrap(),
            "0.0.0.0:9".parse().unwrap()
        );
        assert_eq!(
            listen_addr(&Env::default(), "CONFAB_GATEWAY_ADDR", "127.0.0.1:8000")
                .unwrap()
                .port(),
            8000
        );
        let bad = Env::from_pairs([("CONFAB_API_ADDR", "nope")]);
        assert!(listen_addr(&bad, "CONFAB_API_ADDR", "127.0.0.1:8080").is_err());
    }

    #[test]
    fn jwt_secret_is_required_and_not_trivial() {
        assert!(jwt_secret(&Env::from_pairs::<[(&str, &str); 0], _, _>([])).is_err());
        assert!(jwt_secret(&Env::from_pairs([("CONFAB_JWT_SECRET", "short")])).is_err());
        assert!(jwt_secret(&Env::from_pairs([(
            "CONFAB_JWT_SECRET",
            "0123456789abcdef0123"
        )]))
        .is_ok());
    }

    #[test]
    fn positive_counts() {
        let env = Env::from_pairs([("A", "0"), ("B", "3")]);
        assert!(env
            .positive_or("A", 5)
            .unwrap_err()
            .to_string()
            .contains("must be at least 1"));
        assert_eq!(env.positive_or("B", 5).unwrap(), 3);
        assert_eq!(env.positive_or("C", 5).unwrap(), 5);
    }

    #[test]
    fn example_secrets_are_refused_and_the_test_secret_only_in_tests() {
        for example in [
            "change-me-dev-only-jwt-secret-0123456789",
            "CHANGE-ME-please-0123456789",
        ] {
            let err = jwt_secret(&Env::from_pairs([("CONFAB_JWT_SECRET", example)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("example secret"), "{err}");
            assert!(!err.contains(example), "the secret is not printed: {err}");
        }
        // An injected (test) environment may use the test secret; the process
        // environment, which services read, may not.
        assert!(jwt_secret(&Env::from_pairs([("CONFAB_JWT_SECRET", TEST_JWT_SECRET)])).is_ok());
        assert!(refuse_secret(TEST_JWT_SECRET, false).is_some());
        assert!(refuse_secret("5325067f428541ba1cc65f76c128db6b", false).is_none());
    }

    #[test]
    fn bools_and_lists() {
        let env = Env::from_pairs([("A", "yes"), ("B", "maybe"), ("L", "a, b,,c")]);
        assert!(env.bool_or("A", false).unwrap());
        assert!(env.bool_or("B", false).is_err());
        assert_eq!(env.list("L"), vec!["a", "b", "c"]);
    }
}
