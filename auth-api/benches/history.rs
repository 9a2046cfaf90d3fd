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

mod support;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use confab_common::testing::TestDb;
use uuid::Uuid;

async fn fetch(app: &axum::Router, path: &str, token: &str) -> Duration {
    let (elapsed, status, body) = support::send(app, Method::GET, path, token, None).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert!(body.len() > 100);
    elapsed
}

fn main() {
    support::run(bench());
}

async fn bench() {
    let total = support::env_num("CONFAB_BENCH_MESSAGES", 1_000_000) as i64;
    let requests = support::env_num("CONFAB_BENCH_REQUESTS", 2000) as usize;

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

    let app = support::service(&db.url);
    let token = support::token(user);
    let first = format!("/api/rooms/{room}/messages?limit=50");

    for _ in 0..200 {
        fetch(&app, &first, &token).await;
    }
    let mut samples = Vec::with_capacity(requests);
    for _ in 0..requests {
        samples.push(fetch(&app, &first, &token).await);
    }
    let p99_first = support::report("first page (limit=50)", samples);

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
    let p99_deep = support::report("deep pages (limit=50)", samples);

    // Walking backwards from the newest page, as a client scrolls.
    let mut samples = Vec::with_capacity(requests);
    let mut before = max_offset + 1;
    for _ in 0..requests {
        let path = format!("/api/rooms/{room}/messages?limit=50&before={before}");
        samples.push(fetch(&app, &path, &token).await);
        before -= 56;
    }
    let p99_walk = support::report("sequential paging", samples);

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
