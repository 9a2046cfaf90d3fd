//! Search latency over one million messages.
//!
//! Fills a fresh test database with 1,000,000 chat messages spread over 100
//! rooms (`INSERT ... SELECT generate_series`; words from a 1,000-word
//! vocabulary, a word in every tenth message, a rare one in every ten
//! thousandth, 5 % deleted), makes the caller a member of 20 rooms, then
//! times `GET /api/search` through the whole handler stack with
//! `app().oneshot()`: a rare word, a common word across the caller's rooms
//! and in one room, a phrase, a word that is nowhere, and keyset paging. It
//! prints p50, p90, p99 and max per case. The target is p99 under 50 ms.
//!
//! Run (PostgreSQL from `ops/dev infra`; the figures belong on an idle
//! machine):
//!
//! ```text
//! set -a; . .dev/env; set +a
//! cargo bench -p confab-auth-api --bench search
//! ```
//!
//! `CONFAB_BENCH_MESSAGES` (default 1000000) and `CONFAB_BENCH_REQUESTS`
//! (default 500 per case) change the sizes.

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

async fn fetch(app: &axum::Router, path: &str, token: &str) -> (Duration, serde_json::Value) {
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
    (elapsed, serde_json::from_slice(&body).unwrap())
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

const ROOMS: usize = 100;
const MEMBER_OF: usize = 20;

async fn bench() {
    let total = env_num("CONFAB_BENCH_MESSAGES", 1_000_000) as i64;
    let requests = env_num("CONFAB_BENCH_REQUESTS", 500) as usize;

    let db = TestDb::create().await;
    let sql = confab_common::db::connect(&db.url).await.unwrap();
    let user = Uuid::now_v7();
    sql.execute(
        "INSERT INTO users (id, username, password_hash) VALUES ($1, 'bench', 'x')",
        &[&user],
    )
    .await
    .unwrap();
    let rooms: Vec<Uuid> = (0..ROOMS).map(|_| Uuid::now_v7()).collect();
    for (i, room) in rooms.iter().enumerate() {
        sql.execute(
            "INSERT INTO rooms (id, name, visibility, owner_id) VALUES ($1, 'bench', 'public', $2)",
            &[room, &user],
        )
        .await
        .unwrap();
        if i < MEMBER_OF {
            sql.execute(
                "INSERT INTO room_members (room_id, user_id, role) VALUES ($1, $2, 'member')",
                &[room, &user],
            )
            .await
            .unwrap();
        }
    }
    let started = Instant::now();
    // Ids in creation order, as UUIDv7 are: a time prefix from g.
    sql.execute(
        "INSERT INTO messages (room_id, stream_offset, id, kind, user_id, username, data, created_at, kafka_partition)
         SELECT ($1::uuid[])[(1 + g % $3::int)::int], g,
                (lpad(to_hex(g), 12, '0') || substr(md5(g::text), 13, 20))::uuid,
                'message', $2, 'bench',
                json_build_object('text',
                    'w' || (g * 7919 % 1000) || ' w' || (g * 104729 % 1000) || ' w' || (g % 997)
                    || CASE WHEN g % 10 = 0 THEN ' common' ELSE '' END
                    || CASE WHEN g % 10000 = 0 THEN ' needle' ELSE '' END),
                now(), 0
         FROM generate_series(1, $4::bigint) g",
        &[&rooms, &user, &(ROOMS as i32), &total],
    )
    .await
    .unwrap();
    sql.execute(
        "UPDATE messages SET deleted = true, data = NULL WHERE stream_offset % 20 = 7",
        &[],
    )
    .await
    .unwrap();
    sql.batch_execute("VACUUM ANALYZE messages").await.unwrap();
    println!(
        "filled {total} messages in {ROOMS} rooms (caller in {MEMBER_OF}) in {:.1}s",
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

    let one_room = rooms[3];
    let cases: Vec<(&str, String)> = vec![
        ("rare word, my rooms", "/api/search?q=needle".into()),
        ("common word, my rooms", "/api/search?q=common".into()),
        (
            "common word, one room",
            format!("/api/search?q=common&room_id={one_room}"),
        ),
        ("two words, my rooms", "/api/search?q=w7%20w13".into()),
        ("phrase, my rooms", "/api/search?q=%22w7%20w13%22".into()),
        ("word nowhere", "/api/search?q=haystack".into()),
    ];
    let mut worst = Duration::ZERO;
    for (name, path) in &cases {
        for _ in 0..20 {
            fetch(&app, path, &token).await;
        }
        let mut samples = Vec::with_capacity(requests);
        for _ in 0..requests {
            samples.push(fetch(&app, path, &token).await.0);
        }
        worst = worst.max(report(name, samples));
    }

    // Keyset paging through a common word's results, as a client scrolls.
    let mut samples = Vec::with_capacity(requests);
    let mut before: Option<String> = None;
    for _ in 0..requests {
        let path = match &before {
            None => "/api/search?q=common&limit=50".to_owned(),
            Some(b) => format!("/api/search?q=common&limit=50&before={b}"),
        };
        let (took, page) = fetch(&app, &path, &token).await;
        samples.push(took);
        before = page["next_before"].as_str().map(str::to_owned);
    }
    worst = worst.max(report("paging, common word", samples));

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
    println!(
        "p99 target 50ms: {} (worst p99 {:.3}ms)",
        if worst < Duration::from_millis(50) {
            "met"
        } else {
            "MISSED"
        },
        worst.as_secs_f64() * 1000.0
    );
}
