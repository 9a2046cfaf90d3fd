//! History latency with one million messages in a room.
//!
//! Fills a fresh test database with 1,000,000 `messages` rows in one room
//! (`INSERT ... SELECT generate_series`), then times `GET
//! /api/rooms/{id}/messages?limit=50` through the whole handler stack (token
//! check, membership check, keyset query, JSON) with `app().oneshot()`, for
//! the first page and for deep pages at random cursors, and prints p50, p90,
//! p99 and max. The target is p99 under 10 ms.
//!
//! Run (PostgreSQL from `ops/dev infra`):
//!
//! ```text
//! set -a; . .dev/env; set +a
//! cargo bench -p confab-auth-api --bench history
//! ```
//!
//! `CONFAB_BENCH_MESSAGES` (default 1000000) and `CONFAB_BENCH_REQUESTS`
//! (default 2000 per case) change the sizes.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use confab_auth_api::{app, AppState, Config};
use confab_common::config::Env;
use confab_common::jwt::JwtKeys;
use confab_common::testing::{TestDb, TEST_JWT_SECRET};
use http_body_util::BodyExt;
use tower::ServiceExt;
use uuid::Uuid;

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx]
}

fn report(name: &str, mut samples: Vec<Duration>) -> Duration {
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

async fn fetch(app: &axum::Router, path: &str, token: &str) -> Duration {
    let request = Request::builder()
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .unwrap();
    let started = Instant::now();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert!(body.len() > 100);
    elapsed
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // then this only checks that it builds.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let total = env_num("CONFAB_BENCH_MESSAGES", 1_000_000) as i64;
    let requests = env_num("CONFAB_BENCH_REQUESTS", 2000) as usize;

    let db = TestDb::create().await;
    let sql = confab_common::db::connect(&db.url).await.unwrap();
    let user = Uuid::now_v7();
    let room = Uuid::now_v7();
    sql.execute(
        "INSERT INTO users (id, username, password_hash) VALUES ($1, 'bench', 'x')",
        &[&user],
    )
    .await
    .unwrap();
    sql.execute(
        "INSERT INTO rooms (id, name, visibility, owner_id) VALUES ($1, 'bench', 'public', $2)",
        &[&room, &user],
    )
    .await
    .unwrap();
    sql.execute(
        "INSERT INTO room_members (room_id, user_id, role) VALUES ($1, $2, 'owner')",
        &[&room, &user],
    )
    .await
    .unwrap();
    // Another room's rows interleave in the same table, as in production.
    let other = Uuid::now_v7();
    let started = Instant::now();
    sql.execute(
        "INSERT INTO messages (room_id, stream_offset, id, kind, user_id, username, data, created_at, kafka_partition)
         SELECT CASE WHEN g % 10 = 0 THEN $3::uuid ELSE $1::uuid END, g, gen_random_uuid(), 'message', $2, 'bench',
                json_build_object('text', 'message number ' || g), now(), 0
         FROM generate_series(1, $4::bigint * 10 / 9) g",
        &[&room, &user, &other, &total],
    )
    .await
    .unwrap();
    sql.batch_execute("VACUUM ANALYZE messages").await.unwrap();
    let in_room: i64 = sql
        .query_one("SELECT count(*) FROM messages WHERE room_id = $1", &[&room])
        .await
        .unwrap()
        .get(0);
    let max_offset: i64 = sql
        .query_one(
            "SELECT max(stream_offset) FROM messages WHERE room_id = $1",
            &[&room],
        )
        .await
        .unwrap()
        .get(0);
    println!(
        "filled {in_room} messages in the room (+{} elsewhere) in {:.1}s",
        total * 10 / 9 - in_room,
        started.elapsed().as_secs_f64()
    );

    let env = Env::from_pairs([
        ("DATABASE_URL", db.url.as_str()),
        (
            "KAFKA_BROKERS",
            std::env::var("KAFKA_BROKERS")
                .unwrap_or_else(|_| "127.0.0.1:1".into())
                .as_str(),
        ),
        ("CONFAB_JWT_SECRET", TEST_JWT_SECRET),
        ("CONFAB_WEB_DIR", "/nonexistent"),
    ]);
    let config = Config::from_env(&env).unwrap();
    let app = app(AppState::new(&config).unwrap());
    let keys = JwtKeys::new(
        TEST_JWT_SECRET.as_bytes(),
        Duration::from_secs(3600),
        Duration::from_secs(60),
    );
    let (token, _) = keys.issue_access(user, "bench");
    let first = format!("/api/rooms/{room}/messages?limit=50");

    for _ in 0..200 {
        fetch(&app, &first, &token).await;
    }
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        samples.push(fetch(&app, &first, &token).await);
    }
    let p99_first = report("first page (limit=50)", samples);

    // Deep pages at cursors spread over the whole history (a cheap LCG).
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let before = 1000 + (seed >> 11) as i64 % (max_offset - 1000);
        let path = format!("/api/rooms/{room}/messages?limit=50&before={before}");
        samples.push(fetch(&app, &path, &token).await);
    }
    let p99_deep = report("deep pages (limit=50)", samples);

    // Walking backwards from the newest page, as a client scrolls.
    let mut samples = Vec::with_capacity(requests);
    let mut before = max_offset + 1;
    for _ in 0..requests {
        let path = format!("/api/rooms/{room}/messages?limit=50&before={before}");
        samples.push(fetch(&app, &path, &token).await);
        before -= 56;
    }
    let p99_walk = report("sequential paging", samples);

    // The filled database is a few hundred MB: drop it.
    drop(app);
    drop(sql);
    let admin = confab_common::db::connect(&confab_common::testing::require_env("DATABASE_URL"))
        .await
        .unwrap();
    if let Err(err) = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name))
        .await
    {
        eprintln!("could not drop {}: {err}", db.name);
    }

    let worst = p99_first.max(p99_deep).max(p99_walk);
    println!(
        "p99 target 10ms: {} (worst p99 {:.3}ms)",
        if worst < Duration::from_millis(10) {
            "met"
        } else {
            "MISSED"
        },
        worst.as_secs_f64() * 1000.0
    );
}
