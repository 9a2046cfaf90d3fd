//! Confab's REST API (CONTRACT §3 and §7): accounts and access tokens, rooms
//! with public, password and invite access, membership events and message
//! changes (edits, deletes, reactions) to Kafka, history and search from
//! PostgreSQL and subscription tokens for the gateway.
//!
//! auth-api owns the `users`, `rooms`, `room_members` and `room_invites`
//! tables; it only reads `messages`, which the persister writes. Membership
//! changes are answered only after the broker acknowledged their record (see
//! [`events`]).
//!
//! Besides `/api/*` it serves `/healthz`, `/metrics`, `/api/openapi.json` and
//! the static web client from `CONFAB_WEB_DIR`.
//!
//! Overload bounds: password hashing is bounded ([`password::Hasher`]);
//! register and room creation are rate-limited per client address, failed
//! logins per (user, address) and per address; a request must send its headers
//! within `CONFAB_API_HEADER_TIMEOUT_MS` (which also closes idle keep-alive
//! connections) and be answered within `CONFAB_API_REQUEST_TIMEOUT_MS`;
//! every query has a `statement_timeout`; membership changes hold no pooled
//! connection while they wait for the broker ([`membership`]).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, patch, post, put};
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
mod membership;
pub mod messages;
pub mod model;
pub mod openapi;
pub mod password;
pub mod people;
pub mod rooms;
pub mod search;

use crate::error::{ApiError, LoggedCause};
use crate::events::Events;
use crate::membership::{BrokerGate, MemberLocks};
use crate::password::{HashLimits, Hasher};
use confab_common::ratelimit::{Quota, RateLimiter};

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
    /// How long a request waits for a pooled connection before it gets 503
    /// (`CONFAB_API_DB_ACQUIRE_TIMEOUT_MS`, default 2000).
    pub db_acquire_timeout: Duration,
    /// `statement_timeout` of every pooled connection
    /// (`CONFAB_API_STATEMENT_TIMEOUT_MS`, default 5000): a slow or hung query
    /// fails with 503 instead of holding its request.
    pub statement_timeout: Duration,
    /// The time a client has to send a request's headers, and the longest an
    /// idle keep-alive connection stays open (`CONFAB_API_HEADER_TIMEOUT_MS`,
    /// default 10000). Cuts off slowloris clients.
    pub header_timeout: Duration,
    /// The longest a request may take, body upload included, before it is
    /// answered 503 `timeout` (`CONFAB_API_REQUEST_TIMEOUT_MS`, default 30000).
    pub request_timeout: Duration,
    /// How long membership changes fail fast with 503 after the broker failed
    /// to acknowledge one (`CONFAB_API_BROKER_RETRY_MS`, default 5000).
    pub broker_retry: Duration,
    /// Bounds on password hashing (`CONFAB_HASH_WORKERS`, `CONFAB_HASH_QUEUE`,
    /// `CONFAB_HASH_WAIT_MS`).
    pub hashing: HashLimits,
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
    /// Failed logins per (user, client address) and failed join-by-password
    /// attempts per caller, per window (`CONFAB_RATE_LIMIT_USER_BURST`,
    /// default 10; window `CONFAB_RATE_LIMIT_WINDOW_SECS`, default 60).
    pub rate_user: Quota,
    /// Failed attempts per client address and window
    /// (`CONFAB_RATE_LIMIT_IP_BURST`, default 100).
    pub rate_ip: Quota,
    /// Registrations per client address and window, whatever their outcome
    /// (`CONFAB_RATE_LIMIT_REGISTER_BURST`, default 20).
    pub rate_register: Quota,
    /// Rooms created per client address and window
    /// (`CONFAB_RATE_LIMIT_ROOM_CREATE_BURST`, default 30).
    pub rate_room_create: Quota,
}

/// A duration in milliseconds that must not be zero.
fn positive_millis(
    env: &Env,
    key: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let value = env.millis_or(key, default)?;
    if value.is_zero() {
        return Err(ConfigError::Invalid {
            key,
            value: "0".into(),
            reason: "must be at least 1".into(),
        });
    }
    Ok(value)
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
            db_acquire_timeout: positive_millis(
                env,
                "CONFAB_API_DB_ACQUIRE_TIMEOUT_MS",
                Duration::from_secs(2),
            )?,
            statement_timeout: positive_millis(
                env,
                "CONFAB_API_STATEMENT_TIMEOUT_MS",
                Duration::from_secs(5),
            )?,
            header_timeout: positive_millis(
                env,
                "CONFAB_API_HEADER_TIMEOUT_MS",
                Duration::from_secs(10),
            )?,
            request_timeout: positive_millis(
                env,
                "CONFAB_API_REQUEST_TIMEOUT_MS",
                Duration::from_secs(30),
            )?,
            broker_retry: env.millis_or("CONFAB_API_BROKER_RETRY_MS", Duration::from_secs(5))?,
            hashing: HashLimits {
                workers: env.parse_or("CONFAB_HASH_WORKERS", password::default_workers())?,
                queue: env.parse_or("CONFAB_HASH_QUEUE", 32)?,
                max_wait: positive_millis(env, "CONFAB_HASH_WAIT_MS", Duration::from_secs(5))?,
            },
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
            rate_register: Quota {
                burst: env.parse_or("CONFAB_RATE_LIMIT_REGISTER_BURST", 20)?,
                window,
            },
            rate_room_create: Quota {
                burst: env.parse_or("CONFAB_RATE_LIMIT_ROOM_CREATE_BURST", 30)?,
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
    /// Whether the broker is known to be down, so membership changes fail fast.
    broker_gate: BrokerGate,
    /// Serialises changes of one membership (room, user).
    member_locks: MemberLocks,
    /// Runs password hashing within its bounds.
    hasher: Hasher,
    /// Buckets for logins, joins by password, registrations and room creation.
    limiter: RateLimiter,
    /// The per-(user, address) quota of failed logins; per caller for joins.
    rate_user: Quota,
    /// The per-address quota of failed attempts.
    rate_ip: Quota,
    /// The per-address quota of registrations.
    rate_register: Quota,
    /// The per-address quota of room creations.
    rate_room_create: Quota,
    /// The longest a request may take.
    request_timeout: Duration,
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
        let pool = confab_common::db::PoolOptions {
            max_size: config.db_pool_size,
            acquire_timeout: config.db_acquire_timeout,
            statement_timeout: Some(config.statement_timeout),
        };
        Ok(Self(Arc::new(Shared {
            db: confab_common::db::pool_with(&config.database_url, &pool)?,
            jwt: config.jwt.clone(),
            events: Events::new(&config.kafka)?,
            broker_gate: BrokerGate::new(config.broker_retry),
            member_locks: MemberLocks::default(),
            hasher: Hasher::new(config.hashing),
            limiter: RateLimiter::new(),
            rate_user: config.rate_user,
            rate_ip: config.rate_ip,
            rate_register: config.rate_register,
            rate_room_create: config.rate_room_create,
            request_timeout: config.request_timeout,
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

    /// Password hashing within its bounds.
    pub fn hasher(&self) -> &Hasher {
        &self.0.hasher
    }

    pub(crate) fn broker_gate(&self) -> &BrokerGate {
        &self.0.broker_gate
    }

    pub(crate) fn member_locks(&self) -> &MemberLocks {
        &self.0.member_locks
    }

    pub(crate) fn trust_proxy(&self) -> bool {
        self.0.trust_proxy
    }

    /// Takes one `scope` attempt (`login`, `join`) for `user` and `ip`, or
    /// fails with 429. Pass the ticket to [`AppState::refund`] when the
    /// attempt succeeds.
    ///
    /// The `user` bucket is the caller's own: for logins it is keyed by the
    /// name *and the address*, so failures from one address never lock the
    /// user out of another (an attacker cannot lock out a victim); the
    /// address bucket caps guessing across names.
    pub(crate) fn check_rate(
        &self,
        scope: &'static str,
        user: &str,
        ip: Option<IpAddr>,
    ) -> Result<RateTicket, ApiError> {
        let ip = ip_key(ip);
        let ticket = RateTicket {
            user_key: match scope {
                "login" => format!("{scope}:user-ip:{user}|{ip}"),
                _ => format!("{scope}:user:{user}"),
            },
            ip_key: format!("{scope}:ip:{ip}"),
        };
        if self.0.limiter.try_acquire(&self.rate_keys(&ticket)) {
            Ok(ticket)
        } else {
            metrics::counter!("confab_api_rate_limited_total", "scope" => scope).increment(1);
            let slowest = self
                .0
                .rate_user
                .refill_secs()
                .max(self.0.rate_ip.refill_secs());
            Err(ApiError::rate_limited(slowest))
        }
    }

    /// Takes one registration or room creation (`scope` `register` or
    /// `room_create`) for `ip`, or fails with 429. Every attempt counts.
    pub(crate) fn check_address_rate(
        &self,
        scope: &'static str,
        ip: Option<IpAddr>,
    ) -> Result<(), ApiError> {
        let quota = match scope {
            "register" => self.0.rate_register,
            _ => self.0.rate_room_create,
        };
        let key = format!("{scope}:ip:{}", ip_key(ip));
        if self.0.limiter.try_acquire(&[(&key, quota)]) {
            Ok(())
        } else {
            metrics::counter!("confab_api_rate_limited_total", "scope" => scope).increment(1);
            Err(ApiError::rate_limited(quota.refill_secs()))
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

fn ip_key(ip: Option<IpAddr>) -> String {
    match ip {
        Some(ip) => ip.to_string(),
        None => "unknown".to_owned(),
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
        "Time from producing a membership or message-change record to the broker's acknowledgement"
    );
    metrics::describe_counter!(
        "confab_api_produce_errors_total",
        "Membership and message-change records the broker did not acknowledge"
    );
    metrics::describe_counter!(
        "confab_api_rate_limited_total",
        "Logins, joins by password, registrations and room creations refused by the rate limiter, by scope"
    );
    metrics::describe_counter!(
        "confab_api_hash_rejected_total",
        "Password hashes refused with 503 because the hashing queue was full or the wait too long, by kind"
    );
    metrics::describe_counter!(
        "confab_api_broker_fail_fast_total",
        "Membership and message changes refused at once because the broker is known to be down"
    );
    metrics::describe_counter!(
        "confab_api_request_timeouts_total",
        "Requests answered 503 because they exceeded the request timeout"
    );
}

/// Answers 503 `timeout` when a request (body upload included) takes longer
/// than the request timeout.
async fn deadline(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.0.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("confab_api_request_timeouts_total").increment(1);
            ApiError::Timeout.into_response()
        }
    }
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
            "/rooms/{id}/messages/{message_id}",
            patch(messages::edit).delete(messages::delete),
        )
        .route(
            "/rooms/{id}/messages/{message_id}/reactions/{emoji}",
            put(messages::react).delete(messages::unreact),
        )
        .route("/search", get(search::search))
        .route(
            "/rooms/{id}/subscription-token",
            post(history::subscription_token),
        )
        .route("/dms", post(people::open_dm))
        .route("/rooms/{id}/read", post(people::mark_read))
        .route("/rooms/{id}/reads", get(people::reads))
        .route("/rooms/{id}/members/{user_id}", patch(people::set_role))
        .route("/rooms/{id}/members/{user_id}/kick", post(people::kick))
        .route(
            "/rooms/{id}/bans/{user_id}",
            post(people::ban).delete(people::unban),
        )
        .route("/openapi.json", get(openapi_json))
        .fallback(api_not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let web = web_routes(&state.0.web_dir);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_endpoint))
        .nest("/api", api)
        .with_state(state.clone())
        .merge(web)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state, deadline))
        .layer(middleware::from_fn(track))
}

/// Serves the API on `listener` until `shutdown` is cancelled, then waits
/// for in-flight requests (at most a grace period) and flushes the producer.
///
/// Each connection is HTTP/1.1 served by hyper with a header read timeout
/// (`CONFAB_API_HEADER_TIMEOUT_MS`), which also closes keep-alive
/// connections that sit idle that long.
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
    let router = app(state);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(config.header_timeout);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                tower::ServiceExt::oneshot(router.clone(), request)
            });
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?SHUTDOWN_GRACE,
            "grace period over, closing remaining connections"
        );
    }
    events.flush(Duration::from_secs(5));
    watch_stop.cancel();
    let _ = watcher.await;
    tracing::info!("auth-api stopped");
    Ok(())
}
