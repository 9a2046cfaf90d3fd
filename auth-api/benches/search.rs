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

mod support;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use confab_common::testing::TestDb;
use uuid::Uuid;

async fn fetch(app: &axum::Router, path: &str, token: &str) -> (Duration, serde_json::Value) {
    let (elapsed, status, body) = support::send(app, Method::GET, path, token, None).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    (elapsed, serde_json::from_slice(&body).unwrap())
}

fn main() {
    support::run(bench());
}

const ROOMS: usize = 100;
const MEMBER_OF: usize = 20;

async fn bench() {
    let total = support::env_num("CONFAB_BENCH_MESSAGES", 1_000_000) as i64;
    let requests = support::env_num("CONFAB_BENCH_REQUESTS", 500) as usize;

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

    let app = support::service(&db.url);
    let token = support::token(user);

    // Message g is in room g % 100 and has "common" when g % 10 = 0: every
    // message of rooms[0] has it, none of rooms[3]. Word and room are as
    // correlated as they can be, which misleads a planner that assumes them
    // independent.
    let dense_room = rooms[0];
    let empty_room = rooms[3];
    let cases: Vec<(&str, String)> = vec![
        ("rare word, my rooms", "/api/search?q=needle".into()),
        ("common word, my rooms", "/api/search?q=common".into()),
        (
            "common word, a room full of it",
            format!("/api/search?q=common&room_id={dense_room}"),
        ),
        (
            "common word, a room without it",
            format!("/api/search?q=common&room_id={empty_room}"),
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
        worst = worst.max(support::report(name, samples));
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
    worst = worst.max(support::report("paging, common word", samples));

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
