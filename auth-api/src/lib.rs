//! Confab's REST API (CONTRACT §3): accounts and access tokens, rooms with
//! public, password and invite access, membership events to Kafka, history
//! from PostgreSQL and subscription tokens for the gateway.
//!
//! auth-api owns the `users`, `rooms`, `room_members` and `room_invites`
//! tables; it only reads `messages`, which the persister writes. Membership
//! changes are answered only after the broker acknowledged their record (see
//! [`events`]).
//!
//! Besides `/api/*` it serves `/healthz`, `/metrics`, `/api/openapi.json` and
//! the static web client from `CONFAB_WEB_DIR`.

use std::future::IntoFuture;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use confab_common::config::{ConfigError, Env, KafkaConfig};
use confab_common::db::PgPool;
use confab_common::jwt::JwtKeys;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

pub mod auth;
pub mod error;
pub mod events;
pub mod extract;
pub mod history;
pub mod model;
pub mod openapi;
pub mod password;
pub mod ratelimit;
pub mod rooms;

use crate::error::{ApiError, LoggedCause};
use crate::events::Events;
use crate::ratelimit::{Quota, RateLimiter};

/// The largest request body accepted; bigger ones get 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A pooled Postgres connection.
pub type DbConn = bb8::PooledConnection<
    'static,
    bb8_postgres::PostgresConnectionManager<tokio_postgres_rustls::MakeRustlsConnect>,
>;

/// How long shutdown waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// auth-api's settings, read from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (`CONFAB_API_ADDR`, default 127.0.0.1:8080).
    pub addr: SocketAddr,
    /// The database (`DATABASE_URL`).
    pub database_url: String,
    /// The most Postgres connections to hold (`CONFAB_API_DB_POOL_SIZE`, default 16).
    pub db_pool_size: u32,
    /// The broker and room topic.
    pub kafka: KafkaConfig,
    /// Token keys and lifetimes.
    pub jwt: JwtKeys,
    /// The built web client (`CONFAB_WEB_DIR`, default `web/dist`).
    pub web_dir: PathBuf,
    /// Whether to take the client address from `X-Forwarded-For`
    /// (`CONFAB_TRUST_PROXY`, default false). Only safe behind a proxy that
    /// sets it.
    pub trust_proxy: bool,
    /// Failed login and join-by-password attempts per user and window
    /// (`CONFAB_RATE_LIMIT_USER_BURST`, default 10; window
    /// `CONFAB_RATE_LIMIT_WINDOW_SECS`, default 60).
    pub rate_user: Quota,
    /// Failed attempts per client address and window
    /// (`CONFAB_RATE_LIMIT_IP_BURST`, default 100).
    pub rate_ip: Quota,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let window = env.secs_or("CONFAB_RATE_LIMIT_WINDOW_SECS", Duration::from_secs(60))?;
        if window.is_zero() {
            return Err(ConfigError::Invalid {
                key: "CONFAB_RATE_LIMIT_WINDOW_SECS",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            addr: confab_common::config::listen_addr(env, "CONFAB_API_ADDR", "127.0.0.1:8080")?,
            database_url: env.required("DATABASE_URL")?,
            db_pool_size: env.parse_or("CONFAB_API_DB_POOL_SIZE", 16)?,
            kafka: KafkaConfig::from_env(env)?,
            jwt: JwtKeys::from_env(env)?,
            web_dir: PathBuf::from(env.string_or("CONFAB_WEB_DIR", "web/dist")),
            trust_proxy: env.bool_or("CONFAB_TRUST_PROXY", false)?,
            rate_user: Quota {
                burst: env.parse_or("CONFAB_RATE_LIMIT_USER_BURST", 10)?,
                window,
            },
            rate_ip: Quota {
                burst: env.parse_or("CONFAB_RATE_LIMIT_IP_BURST", 100)?,
                window,
            },
        })
    }
}

/// A startup problem.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Db(#[from] confab_common::db::DbError),
    #[error("kafka producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

struct Shared {
    /// Accounts, rooms and membership live here; history is read from here.
    db: PgPool,
    /// Issues access and subscription tokens and checks access tokens.
    jwt: JwtKeys,
    /// Produces membership records and waits for the broker's acknowledgement.
    events: Events,
    /// Buckets for login and join-by-password attempts.
    limiter: RateLimiter,
    /// The per-user quota of failed attempts.
    rate_user: Quota,
    /// The per-address quota of failed attempts.
    rate_ip: Quota,
    /// Whether `X-Forwarded-For` names the client.
    trust_proxy: bool,
    /// The Prometheus registry rendered at `/metrics`.
    metrics: PrometheusHandle,
    /// Where the built web client is, served at `/`.
    web_dir: PathBuf,
}

/// The state every handler shares: a cheap clone of one `Arc`.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the pool and the producer. Neither connects yet, so this
    /// succeeds while PostgreSQL or the broker is down.
    pub fn new(config: &Config) -> Result<Self, StartError> {
        let metrics = confab_common::telemetry::metrics_handle();
        describe_metrics();
        Ok(Self(Arc::new(Shared {
            db: confab_common::db::pool(&config.database_url, config.db_pool_size)?,
            jwt: config.jwt.clone(),
            events: Events::new(&config.kafka)?,
            limiter: RateLimiter::new(),
            rate_user: config.rate_user,
            rate_ip: config.rate_ip,
            trust_proxy: config.trust_proxy,
            metrics,
            web_dir: config.web_dir.clone(),
        })))
    }

    /// A pooled database connection; 503 when none can be had.
    pub async fn db(&self) -> Result<DbConn, ApiError> {
        self.0
            .db
            .get_owned()
            .await
            .map_err(|e| ApiError::from(confab_common::db::DbError::from(e)))
    }

    pub fn jwt(&self) -> &JwtKeys {
        &self.0.jwt
    }

    pub fn events(&self) -> &Events {
        &self.0.events
    }

    pub(crate) fn trust_proxy(&self) -> bool {
        self.0.trust_proxy
    }

    /// Takes one `scope` attempt (`login`, `join`) for `user` and `ip`, or
    /// fails with 429. Pass the ticket to [`AppState::refund`] when the
    /// attempt succeeds.
    pub(crate) fn check_rate(
        &self,
        scope: &'static str,
        user: &str,
        ip: Option<IpAddr>,
    ) -> Result<RateTicket, ApiError> {
        let ticket = RateTicket {
            user_key: format!("{scope}:user:{user}"),
            ip_key: match ip {
                Some(ip) => format!("{scope}:ip:{ip}"),
                None => format!("{scope}:ip:unknown"),
            },
        };
        if self.0.limiter.try_acquire(&self.rate_keys(&ticket)) {
            Ok(ticket)
        } else {
            metrics::counter!("confab_api_rate_limited_total", "scope" => scope).increment(1);
            Err(ApiError::rate_limited())
        }
    }

    /// Gives back a successful attempt's tokens: only failures count.
    pub(crate) fn refund(&self, ticket: RateTicket) {
        self.0.limiter.refund(&self.rate_keys(&ticket));
    }

    fn rate_keys<'a>(&self, ticket: &'a RateTicket) -> [(&'a str, Quota); 2] {
        [
            (&ticket.user_key, self.0.rate_user),
            (&ticket.ip_key, self.0.rate_ip),
        ]
    }
}

/// The buckets one rate-limited attempt drew from.
#[derive(Debug)]
pub(crate) struct RateTicket {
    user_key: String,
    ip_key: String,
}

fn describe_metrics() {
    metrics::describe_counter!(
        "confab_api_requests_total",
        "HTTP requests answered, by method, route template and status"
    );
    metrics::describe_histogram!(
        "confab_api_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency, by method, route template and status"
    );
    metrics::describe_histogram!(
        "confab_api_produce_duration_seconds",
        metrics::Unit::Seconds,
        "Time from producing a membership record to the broker's acknowledgement"
    );
    metrics::describe_counter!(
        "confab_api_produce_errors_total",
        "Membership records the broker did not acknowledge"
    );
    metrics::describe_counter!(
        "confab_api_rate_limited_total",
        "Login and join-by-password attempts refused by the rate limiter, by scope"
    );
}

/// Counts and times every request by route template, and logs the cause of
/// 5xx answers.
async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let status = response.status();
    if let Some(LoggedCause(cause)) = response.extensions().get::<LoggedCause>() {
        tracing::error!(%method, %route, status = status.as_u16(), error = %cause, "request failed");
    }
    let labels = [
        ("method", method),
        ("route", route),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("confab_api_requests_total", &labels).increment(1);
    metrics::histogram!("confab_api_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

async fn healthz(State(state): State<AppState>) -> confab_common::ops::Health {
    let up = async {
        let conn = state.db().await.ok()?;
        conn.simple_query("SELECT 1").await.ok()
    };
    let up = tokio::time::timeout(Duration::from_secs(2), up)
        .await
        .ok()
        .flatten()
        .is_some();
    confab_common::ops::Health::ok("auth-api").check("database", up)
}

async fn metrics_endpoint(State(state): State<AppState>) -> Response {
    confab_common::ops::metrics_response(&state.0.metrics)
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi::ApiDoc::openapi())
}

async fn api_not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::client(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

const PLACEHOLDER: &str = "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Confab</title></head>
<body><h1>Confab</h1><p>The web client is not built. Build it in <code>web/</code>
(its output goes to <code>web/dist</code>, or set <code>CONFAB_WEB_DIR</code>). The REST API is
under <a href=\"/api/openapi.json\">/api</a>.</p></body></html>
";

async fn placeholder() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(PLACEHOLDER)).into_response()
}

/// The static web client with a single-page-app fallback to `index.html`,
/// or a placeholder page when the client is not built.
fn web_routes(web_dir: &std::path::Path) -> Router {
    let index = web_dir.join("index.html");
    if index.is_file() {
        let serve = tower_http::services::ServeDir::new(web_dir)
            .fallback(tower_http::services::ServeFile::new(index));
        Router::new().fallback_service(serve)
    } else {
        Router::new().fallback(placeholder)
    }
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route("/auth/register", post(auth::register))
        .route("/auth/login", post(auth::login))
        .route("/me", get(auth::me))
        .route("/rooms", post(rooms::create_room).get(rooms::list_rooms))
        .route("/rooms/{id}", get(rooms::get_room))
        .route("/rooms/{id}/join", post(rooms::join_room))
        .route("/rooms/{id}/leave", post(rooms::leave_room))
        .route("/rooms/{id}/invites", post(rooms::invite))
        .route("/rooms/{id}/members", get(rooms::members))
        .route("/rooms/{id}/messages", get(history::messages))
        .route(
            "/rooms/{id}/subscription-token",
            post(history::subscription_token),
        )
        .route("/openapi.json", get(openapi_json))
        .fallback(api_not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let web = web_routes(&state.0.web_dir);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_endpoint))
        .nest("/api", api)
        .with_state(state)
        .merge(web)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(track))
}

/// Serves the API on `listener` until `shutdown` is cancelled, then waits
/// for in-flight requests (at most a grace period) and flushes the producer.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let state = AppState::new(&config)?;
    confab_common::telemetry::spawn_metrics_upkeep(state.0.metrics.clone());
    // Compute the dummy hash now, so the first login of an unknown user takes
    // no longer than any other.
    tokio::task::spawn_blocking(|| {
        password::dummy_hash();
    });
    let events = state.events().clone();
    let watch_stop = CancellationToken::new();
    let watcher = events.watch(watch_stop.clone());
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "auth-api listening");
    let service = app(state).into_make_service_with_connect_info::<SocketAddr>();
    let graceful = shutdown.clone();
    let server = axum::serve(listener, service)
        .with_graceful_shutdown(async move { graceful.cancelled().await });
    let server = server.into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result?,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!(?SHUTDOWN_GRACE, "grace period over, closing remaining connections"),
    }
    events.flush(Duration::from_secs(5));
    watch_stop.cancel();
    let _ = watcher.await;
    tracing::info!("auth-api stopped");
    Ok(())
}
