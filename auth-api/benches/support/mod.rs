//! What the auth-api benches share: the service on a test database, a
//! token, one timed request through the whole handler stack, percentiles,
//! and the `main` that runs only under `cargo bench`.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, Method, Request, StatusCode};
use confab_auth_api::{app, AppState, Config};
use confab_common::config::Env;
use confab_common::jwt::JwtKeys;
use confab_common::testing::TEST_JWT_SECRET;
use http_body_util::BodyExt;
use tower::ServiceExt;
use uuid::Uuid;

/// A size from the environment, or `default`.
pub(crate) fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `bench` on a two-thread runtime, under `cargo bench` only: `cargo
/// test --benches` does not pass `--bench`, and then this only checks that
/// the bench builds.
pub(crate) fn run<F: Future<Output = ()>>(bench: F) {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench);
}

/// The REST service on the database at `db_url` (no broker needed for
/// reads; the web client is not served).
pub(crate) fn service(db_url: &str) -> axum::Router {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:1".into());
    let env = Env::from_pairs([
        ("DATABASE_URL", db_url),
        ("KAFKA_BROKERS", brokers.as_str()),
        ("CONFAB_JWT_SECRET", TEST_JWT_SECRET),
        ("CONFAB_WEB_DIR", "/nonexistent"),
    ]);
    let config = Config::from_env(&env).unwrap();
    app(AppState::new(&config).unwrap())
}

/// An access token for `user`.
pub(crate) fn token(user: Uuid) -> String {
    let keys = JwtKeys::new(
        TEST_JWT_SECRET.as_bytes(),
        Duration::from_secs(3600),
        Duration::from_secs(60),
    );
    keys.issue_access(user, "bench").0
}

/// One request through the whole stack: how long it took (the body read
/// included), its status and its body.
pub(crate) async fn send(
    app: &axum::Router,
    method: Method,
    path: &str,
    token: &str,
    body: Option<String>,
) -> (Duration, StatusCode, Bytes) {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(body.map(Body::from).unwrap_or_else(Body::empty))
        .unwrap();
    let started = Instant::now();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (started.elapsed(), status, bytes)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

/// Prints p50, p90, p99 and max of `samples`; returns the p99.
pub(crate) fn report(name: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p99 = percentile(&samples, 0.99);
    println!(
        "{name:<28} n={:<5} p50={:.3}ms p90={:.3}ms p99={:.3}ms max={:.3}ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.90)),
        ms(p99),
        ms(*samples.last().unwrap()),
    );
    p99
}
