//! The persister: moves room records from Kafka into PostgreSQL.
//!
//! It owns the `messages` and `dead_letters` tables: it is the only writer of
//! both. Records are read in a consumer group, stored in batches with one
//! idempotent statement each, and their offsets are committed only after the
//! statement has committed. Every record the broker acknowledged therefore
//! ends up stored exactly once in effect, across crashes, database outages
//! and rebalances, with the stream position the gateway pushed it with.
//!
//! The parts: [`group`](crate::group) (membership and rebalances),
//! [`reader`](crate::reader) (records to entries, per lane),
//! [`writers`](crate::writers) (one per lane, in partition order),
//! [`ledger`](crate::ledger) (offsets) and [`pipeline`](crate::pipeline)
//! (the loop). The library entry is [`run`]; `main.rs` only loads the config
//! and binds.

mod batch;
mod config;
mod group;
mod ledger;
mod metrics;
mod pipeline;
mod reader;
mod state;
mod store;
mod writers;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use confab_common::ops::{metrics_response, Health};
use confab_common::stream::LayoutWatch;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Config, Crash};
use state::Shared;
pub use state::Stats;

/// How often the topic's layout is checked (it changes when the topic is
/// created again).
const LAYOUT_CHECK_INTERVAL: Duration = Duration::from_secs(10);

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

/// One persister instance, before it runs.
#[derive(Debug)]
pub struct Persister {
    config: Config,
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    layout: LayoutWatch,
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

        // The endpoints, the layout watcher and the lag gauge outlive the
        // consumer loop, so health stays visible while shutdown stores the
        // last batches.
        let tasks = CancellationToken::new();
        let layout = LayoutWatch::new(&config.kafka)?;
        let watcher = layout.spawn(LAYOUT_CHECK_INTERVAL, tasks.clone());
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/metrics", get(metrics_endpoint))
            .with_state(AppState {
                shared: shared.clone(),
                layout: layout.clone(),
                metrics: handle,
            });
        let http = tokio::spawn(std::future::IntoFuture::into_future(
            axum::serve(listener, app).with_graceful_shutdown(tasks.clone().cancelled_owned()),
        ));
        // Positions need the layout: read nothing before it is known.
        if layout.ready(&shutdown).await.is_none() {
            tasks.cancel();
            let _ = watcher.await;
            let _ = http.await;
            return Ok(());
        }
        let consumer = Arc::new(group::join(&config, shared.clone())?);
        tracing::info!(
            topic = %config.kafka.topic,
            group = %config.group,
            "persister started"
        );
        let lag = tokio::spawn(group::measure_lag(
            consumer.clone(),
            shared.clone(),
            config.kafka.topic.clone(),
            config.lag_interval,
            tasks.clone(),
        ));

        let result = pipeline::run(consumer.clone(), shared, layout, &config, shutdown).await;

        tasks.cancel();
        let _ = lag.await;
        let _ = watcher.await;
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
    Health::ok("persister")
        .check("database", state.shared.db_up())
        .check_problem("topic", state.layout.state().problem())
}

async fn metrics_endpoint(State(state): State<AppState>) -> Response {
    metrics_response(&state.metrics).into_response()
}
