//! Room-list latency with unread counts: one user in 500 rooms holding one
//! million messages.
//!
//! Fills a fresh test database with 500 private rooms the user belongs to
//! and 1,000,000 `messages` rows spread over them (2,000 per room, one in ten
//! the user's own), stored through the same trigger that keeps the unread
//! counters when the persister stores a batch. The user marks half of the
//! rooms read halfway through (`POST /api/rooms/{id}/read`) and has never
//! read the other half, the costliest case for a count. Then it times
//! `GET /api/rooms?limit=200` through the whole handler stack with
//! `app().oneshot()`, for each page of the room list, and prints p50, p90,
//! p99 and max. The target is p99 under 20 ms.
//!
//! Run (PostgreSQL from `ops/dev infra`):
//!
//! ```text
//! set -a; . .dev/env; set +a
//! cargo bench -p confab-auth-api --bench unread
//! ```
//!
//! `CONFAB_BENCH_ROOMS` (default 500), `CONFAB_BENCH_MESSAGES` (default
//! 1000000) and `CONFAB_BENCH_REQUESTS` (default 1000 per page) change the
//! sizes.

mod support;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use confab_common::testing::TestDb;
use uuid::Uuid;

async fn send(
    app: &axum::Router,
    method: Method,
    path: &str,
    token: &str,
    body: Option<String>,
) -> (Duration, StatusCode, serde_json::Value) {
    let (elapsed, status, bytes) = support::send(app, method, path, token, body).await;
    let value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (elapsed, status, value)
}

fn main() {
    support::run(bench());
}

async fn bench() {
    let rooms = support::env_num("CONFAB_BENCH_ROOMS", 500) as i64;
    let total = support::env_num("CONFAB_BENCH_MESSAGES", 1_000_000) as i64;
    let requests = support::env_num("CONFAB_BENCH_REQUESTS", 1000) as usize;
    let per_room = total / rooms;

    let db = TestDb::create().await;
    let sql = confab_common::db::connect(&db.url).await.unwrap();
    let user = Uuid::now_v7();
    sql.execute(
        "INSERT INTO users (id, username, password_hash) VALUES ($1, 'bench', 'x')",
        &[&user],
    )
    .await
    .unwrap();
    let senders: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    for (i, s) in senders.iter().enumerate() {
        sql.execute(
            "INSERT INTO users (id, username, password_hash) VALUES ($1, $2, 'x')",
            &[s, &format!("sender{i}")],
        )
        .await
        .unwrap();
    }
    let room_ids: Vec<Uuid> = (0..rooms).map(|_| Uuid::now_v7()).collect();
    sql.execute(
        "INSERT INTO rooms (id, name, visibility, owner_id)
         SELECT r, 'bench', 'private', $2 FROM UNNEST($1::uuid[]) r",
        &[&room_ids, &user],
    )
    .await
    .unwrap();
    sql.execute(
        "INSERT INTO room_members (room_id, user_id, role)
         SELECT r, $2, 'member' FROM UNNEST($1::uuid[]) r",
        &[&room_ids, &user],
    )
    .await
    .unwrap();
    let started = Instant::now();
    // Rooms interleave in the table, as in production; one in ten messages
    // is the user's own.
    sql.execute(
        "INSERT INTO messages (room_id, stream_offset, id, kind, user_id, username, data, created_at, kafka_partition)
         SELECT ($1::uuid[])[g % $4 + 1], g / $4 + 1, gen_random_uuid(), 'message',
                CASE WHEN (g / $4) % 10 = 0 THEN $2 ELSE ($3::uuid[])[(g / 7) % 10 + 1] END, 'bench',
                json_build_object('text', 'message number ' || g), now(), 0
         FROM generate_series(0, $5::bigint - 1) g",
        &[&room_ids, &user, &senders, &rooms, &(per_room * rooms)],
    )
    .await
    .unwrap();
    sql.batch_execute("VACUUM ANALYZE").await.unwrap();
    println!(
        "filled {} messages in {rooms} rooms in {:.1}s",
        per_room * rooms,
        started.elapsed().as_secs_f64()
    );

    let app = support::service(&db.url);
    let token = support::token(user);

    // Half the rooms read halfway, through the API.
    let mut reads = Vec::new();
    for room in room_ids.iter().step_by(2) {
        let (elapsed, status, body) = send(
            &app,
            Method::POST,
            &format!("/api/rooms/{room}/read"),
            &token,
            Some(format!("{{\"offset\":{}}}", per_room / 2)),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        reads.push(elapsed);
    }
    support::report("mark read (halfway)", reads);

    // The pages of the room list, and a check of the counts they carry.
    let mut pages = Vec::new();
    let mut after = String::new();
    let mut unread_total = 0i64;
    loop {
        let path = format!("/api/rooms?limit=200{after}");
        let (_, status, body) = send(&app, Method::GET, &path, &token, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for r in body["rooms"].as_array().unwrap() {
            unread_total += r["unread_count"].as_i64().unwrap();
        }
        pages.push(path);
        match body["next_after"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    // Offsets 1, 11, 21, ... of each room are the user's own.
    let others_per_room = |n: i64| n - (n + 9) / 10;
    let read = (rooms + 1) / 2;
    let expected = (rooms - read) * others_per_room(per_room)
        + read * (others_per_room(per_room) - others_per_room(per_room / 2));
    println!(
        "{} pages, {unread_total} unread in all (expected {expected})",
        pages.len()
    );
    assert_eq!(unread_total, expected, "unread counts are exact");

    let mut worst = Duration::ZERO;
    for (i, path) in pages.iter().enumerate() {
        for _ in 0..50 {
            send(&app, Method::GET, path, &token, None).await;
        }
        let mut samples = Vec::with_capacity(requests);
        for _ in 0..requests {
            samples.push(send(&app, Method::GET, path, &token, None).await.0);
        }
        worst = worst.max(support::report(
            &format!("room list page {}", i + 1),
            samples,
        ));
    }

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
        "p99 target 20ms: {} (worst p99 {:.3}ms)",
        if worst < Duration::from_millis(20) {
            "met"
        } else {
            "MISSED"
        },
        worst.as_secs_f64() * 1000.0
    );
}
