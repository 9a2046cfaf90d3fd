//! The persister: moves room records from Kafka into PostgreSQL.
//!
//! It owns the `messages` and `dead_letters` tables: it is the only writer of
//! both. Records are read in a consumer group, stored in batches with one
//! idempotent statement each, and their offsets are committed only after the
//! statement has committed. Every record the broker acknowledged therefore
//! ends up stored exactly once in effect, across crashes, database outages
//! and rebalances. See [`consumer`](crate::consumer) for the details.
//!
//! The library entry is [`run`]; `main.rs` only loads the config and binds.

mod batch;
mod config;
mod consumer;
mod gap;
mod metrics;
mod store;

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use confab_common::ops::{metrics_response, Health};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::Consumer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Config, Crash};
use consumer::{Ctx, Kafka, Shared};

/// Why the persister stopped.
#[derive(Debug, thiserror::Error)]
pub enum PersisterError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Db(#[from] confab_common::db::DbError),
    #[error("serving http: {0}")]
    Io(#[from] std::io::Error),
    #[error("the writer task stopped: {0}")]
    WriterStopped(String),
    /// The crash test hook fired: a batch is stored but its offsets are not
    /// committed.
    #[error("test hook: crashed after a database commit")]
    InjectedCrash,
}

/// Counters of one running instance, for tests and benchmarks.
#[derive(Debug, Clone)]
pub struct Stats(Arc<Shared>);

impl Stats {
    /// Good records stored by this instance (including ones already present).
    pub fn records_persisted(&self) -> u64 {
        self.0.persisted()
    }

    /// Poison records seen by this instance.
    pub fn poison_records(&self) -> u64 {
        self.0.poison()
    }

    /// Batches stored by this instance.
    pub fn batches(&self) -> u64 {
        self.0.batches()
    }

    /// Whether the last contact with PostgreSQL succeeded.
    pub fn database_up(&self) -> bool {
        self.0.db_up()
    }

    /// The partitions this instance owns now.
    pub fn assigned_partitions(&self) -> Vec<i32> {
        self.0.assigned()
    }
}

/// One persister instance, before it runs.
#[derive(Debug)]
pub struct Persister {
    config: Config,
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    metrics: PrometheusHandle,
}

impl Persister {
    pub fn new(config: Config) -> Self {
        let shared = Arc::new(Shared::new(config.kafka.topic.clone()));
        Self { config, shared }
    }

    /// A handle to this instance's counters.
    pub fn stats(&self) -> Stats {
        Stats(self.shared.clone())
    }

    /// Serves `/healthz` and `/metrics` on `listener` and persists records
    /// until `shutdown` is cancelled; then stores what it has read, commits,
    /// and leaves the group.
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), PersisterError> {
        let Self { config, shared } = self;
        // Install the recorder first: descriptions sent before it are lost.
        let handle = confab_common::telemetry::metrics_handle();
        metrics::describe();
        confab_common::telemetry::spawn_metrics_upkeep(handle.clone());
        confab_common::db::parse_url(&config.database_url)?;

        let mut kafka_config =
            confab_common::kafka::consumer_config(&config.kafka, Some(&config.group));
        kafka_config
            .set(
                "session.timeout.ms",
                config.session_timeout.as_millis().to_string(),
            )
            // Statistics carry the exact high watermark per partition (see
            // `gap`).
            .set("statistics.interval.ms", "1000");
        let consumer: Kafka = kafka_config.create_with_context(Ctx {
            shared: shared.clone(),
        })?;
        consumer.subscribe(&[&config.kafka.topic])?;
        let consumer = Arc::new(consumer);
        tracing::info!(
            topic = %config.kafka.topic,
            group = %config.group,
            addr = %listener.local_addr()?,
            "persister started"
        );

        // The endpoints and the lag gauge outlive the consumer loop, so
        // health stays visible while shutdown stores the last batches.
        let tasks = CancellationToken::new();
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics_endpoint))
            .with_state(AppState {
                shared: shared.clone(),
                metrics: handle,
            });
        let http = tokio::spawn(std::future::IntoFuture::into_future(
            axum::serve(listener, app).with_graceful_shutdown(tasks.clone().cancelled_owned()),
        ));
        let lag = tokio::spawn(consumer::measure_lag(
            consumer.clone(),
            shared.clone(),
            config.lag_interval,
            tasks.clone(),
        ));

        let result = consumer::consume(consumer.clone(), shared, &config, shutdown).await;

        tasks.cancel();
        let _ = lag.await;
        match http.await {
            Ok(Err(err)) => tracing::warn!(error = %err, "http server failed"),
            Err(err) => tracing::warn!(error = %err, "http task failed"),
            Ok(Ok(())) => {}
        }
        // Dropping the last handle closes the consumer and leaves the group.
        drop(consumer);
        match &result {
            Ok(()) => tracing::info!("persister stopped"),
            Err(err) => tracing::error!(error = %err, "persister stopped"),
        }
        result
    }
}

/// Runs a persister; see [`Persister::run`].
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), PersisterError> {
    Persister::new(config).run(listener, shutdown).await
}

async fn healthz(State(state): State<AppState>) -> Health {
    Health::ok("persister").check("database", state.shared.db_up())
}

async fn metrics_endpoint(State(state): State<AppState>) -> Response {
    metrics_response(&state.metrics).into_response()
}
