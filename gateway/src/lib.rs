//! confab-gateway: the WebSocket gateway.
//!
//! It speaks the Centrifugo client protocol v2 with JSON encoding (see
//! [`protocol`]) on `/connection/websocket`, so unmodified centrifuge-js and
//! centrifuge-python clients can connect, subscribe to `room:<id>` channels,
//! publish, receive, recover missed publications and ask for presence and
//! history. It also serves `/healthz` and `/metrics`.
//!
//! Publications are produced to the room topic and answered only on the
//! broker's delivery report. Every instance consumes every partition of the
//! topic's layout and fans records out to its own subscribers ([`hub`]); a
//! record's position comes from its Kafka offset and its partition's
//! incarnation ([`confab_common::position`]), so all instances, the REST
//! history and the clients agree on offsets.
//!
//! Presence, join and leave cover the subscribers of one instance only.
//!
//! **Architecture invariant:** the gateway never talks to PostgreSQL; the only
//! state it shares with other services is the Kafka topic.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use confab_common::config::{ConfigError, Env, KafkaConfig, LogConfig};
use confab_common::jwt::JwtKeys;
use confab_common::producer::RoomProducer;
use confab_common::stream::LayoutWatch;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod conn;
pub mod hub;
pub mod kafka;
pub mod metrics;
pub mod protocol;
mod server;

/// The largest WebSocket frame or message accepted (CONTRACT §4); larger
/// ones close the connection with 1009.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// How often the topic's layout is checked (it changes when the topic is
/// created again).
const LAYOUT_CHECK_INTERVAL: Duration = Duration::from_secs(10);

impl Gateway {
    /// Why publishing is refused now, if it is: the topic is not usable, or
    /// its layout no longer matches the partitions this instance reads.
    pub(crate) fn publish_problem(&self) -> Option<String> {
        let state = self.producer.layout().state();
        match state.layout() {
            None => Some(state.problem().unwrap_or_default().to_owned()),
            Some(l) if l.partitions as usize != self.hub.partitions().len() => Some(format!(
                "the room topic's layout changed from {} to {} partitions; restart this gateway",
                self.hub.partitions().len(),
                l.partitions
            )),
            Some(_) => None,
        }
    }
}

/// Gateway settings, read from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (`CONFAB_GATEWAY_ADDR`).
    pub addr: SocketAddr,
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
    /// Subscriptions one connection may hold (`CONFAB_GATEWAY_MAX_SUBSCRIPTIONS`).
    pub max_subscriptions: usize,
    /// Publications kept per room for recovery and history (`CONFAB_GATEWAY_HISTORY_SIZE`).
    pub history_size: usize,
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
    /// Largest publication `data`, in bytes (`CONFAB_GATEWAY_MAX_PUBLISH_BYTES`).
    pub max_publish_bytes: usize,
    /// How long shutdown waits for connections to finish (`CONFAB_GATEWAY_SHUTDOWN_GRACE_SECS`).
    pub shutdown_grace: Duration,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let kafka = KafkaConfig::from_env(env)?;
        let positive = |key: &'static str, v: usize| {
            if v == 0 {
                Err(ConfigError::Invalid {
                    key,
                    value: "0".into(),
                    reason: "must be at least 1".into(),
                })
            } else {
                Ok(v)
            }
        };
        Ok(Self {
            addr: confab_common::config::listen_addr(env, "CONFAB_GATEWAY_ADDR", "127.0.0.1:8000")?,
            log: LogConfig::from_env(env)?,
            jwt: JwtKeys::from_env(env)?,
            allowed_origins: env.list("CONFAB_GATEWAY_ALLOWED_ORIGINS"),
            max_connections: positive(
                "CONFAB_GATEWAY_MAX_CONNECTIONS",
                env.parse_or("CONFAB_GATEWAY_MAX_CONNECTIONS", 10_000)?,
            )?,
            max_subscriptions: positive(
                "CONFAB_GATEWAY_MAX_SUBSCRIPTIONS",
                env.parse_or("CONFAB_GATEWAY_MAX_SUBSCRIPTIONS", 128)?,
            )?,
            history_size: positive(
                "CONFAB_GATEWAY_HISTORY_SIZE",
                env.parse_or("CONFAB_GATEWAY_HISTORY_SIZE", 1000)?,
            )?,
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
            send_queue: positive(
                "CONFAB_GATEWAY_SEND_QUEUE",
                env.parse_or("CONFAB_GATEWAY_SEND_QUEUE", 1024)?,
            )?,
            write_timeout: env
                .secs_or("CONFAB_GATEWAY_WRITE_TIMEOUT_SECS", Duration::from_secs(10))?,
            publish_rate: env.parse_or("CONFAB_GATEWAY_PUBLISH_RATE", 20.0)?,
            publish_burst: env.parse_or("CONFAB_GATEWAY_PUBLISH_BURST", 40.0)?,
            max_publish_bytes: env.parse_or("CONFAB_GATEWAY_MAX_PUBLISH_BYTES", 16 * 1024)?,
            shutdown_grace: env.secs_or(
                "CONFAB_GATEWAY_SHUTDOWN_GRACE_SECS",
                Duration::from_secs(15),
            )?,
            kafka,
        })
    }
}

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("kafka client: {0}")]
    KafkaClient(#[from] rdkafka::error::KafkaError),
}

/// State shared by every connection: a cheap handle.
#[derive(Clone)]
pub(crate) struct Gateway(Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) hub: Arc<hub::Hub>,
    pub(crate) producer: RoomProducer,
    pub(crate) shutdown: CancellationToken,
    /// Connection tasks, drained at shutdown.
    pub(crate) tracker: TaskTracker,
    /// Open WebSocket sockets, for the connection cap.
    pub(crate) sockets: AtomicUsize,
    /// True once the consumer has caught up with the topic.
    pub(crate) ready: AtomicBool,
    /// False while the broker does not answer.
    pub(crate) broker_up: Arc<AtomicBool>,
    pub(crate) metrics: PrometheusHandle,
}

impl std::ops::Deref for Gateway {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Runs the gateway on `listener` until `shutdown` is cancelled, then drains:
/// stops accepting, answers every in-flight publish, closes sockets with
/// reconnect advice (3001) and flushes the producer.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let handle = confab_common::telemetry::metrics_handle();
    metrics::describe();
    confab_common::telemetry::spawn_metrics_upkeep(handle.clone());

    let consumer_stop = CancellationToken::new();
    let layout = LayoutWatch::new(&config.kafka)?;
    let watcher = layout.spawn(LAYOUT_CHECK_INTERVAL, consumer_stop.clone());
    let Some(current) = layout.ready(&shutdown).await else {
        consumer_stop.cancel();
        let _ = watcher.await;
        return Ok(());
    };
    let partitions = current.partitions as usize;
    let hub = Arc::new(hub::Hub::new(hub::HubConfig {
        partitions,
        history_size: config.history_size,
        history_ttl_ms: config.history_ttl.as_millis() as i64,
    }));
    let producer = RoomProducer::new(&config.kafka, layout.clone())?;
    let consumer = kafka::start_consumer(
        &config.kafka,
        Arc::clone(&hub),
        layout,
        config.prefill_records.max(0),
        consumer_stop.clone(),
    )
    .await?;
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        partitions,
        topic = %config.kafka.topic,
        "gateway starting"
    );

    let mut caught_up = consumer.caught_up.clone();
    let wait = tokio::time::timeout(config.catch_up_timeout, caught_up.wait_for(|v| *v));
    tokio::select! {
        () = shutdown.cancelled() => {}
        r = wait => if r.is_err() {
            tracing::warn!("consumer has not caught up yet; accepting connections anyway");
        }
    }

    let grace = config.shutdown_grace;
    let gw = Gateway(Arc::new(Inner {
        config,
        hub,
        producer,
        shutdown: shutdown.clone(),
        tracker: TaskTracker::new(),
        sockets: AtomicUsize::new(0),
        ready: AtomicBool::new(*consumer.caught_up.borrow()),
        broker_up: Arc::clone(&consumer.broker_up),
        metrics: handle,
    }));
    {
        let gw = gw.clone();
        let mut caught_up = consumer.caught_up.clone();
        tokio::spawn(async move {
            if caught_up.wait_for(|v| *v).await.is_ok() {
                gw.ready.store(true, std::sync::atomic::Ordering::Release);
            }
        });
    }

    if !gw.config.room_idle.is_zero() {
        let hub = Arc::clone(&gw.hub);
        let idle_ms = gw.config.room_idle.as_millis() as i64;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let dropped = hub.sweep(idle_ms);
                if dropped > 0 {
                    tracing::debug!(dropped, "idle rooms dropped");
                }
                ::metrics::gauge!(metrics::ROOMS).set(hub.rooms() as f64);
            }
        });
    }

    server::serve(gw.clone(), listener).await;

    tracing::info!("draining connections");
    confab_common::shutdown::drain(&gw.tracker, grace).await;
    let producer = gw.producer.clone();
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
    consumer_stop.cancel();
    let _ = consumer.task.await;
    let _ = watcher.await;
    tracing::info!("gateway stopped");
    Ok(())
}
