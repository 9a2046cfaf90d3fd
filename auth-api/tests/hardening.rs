//! Overload and abuse (issue 15): bounded password hashing, rate limits on
//! register and room creation, no lockout of a victim, timeouts, REST during a
//! broker outage, and paging the room list. Against the real PostgreSQL and
//! broker, like `api.rs`.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use support::{assert_error_shape, call, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// A JSON request from client address `ip` (the harness trusts
/// `X-Forwarded-For` where a test sets `CONFAB_TRUST_PROXY`). Returns status,
/// body and the `Retry-After` header.
async fn from_ip(
    app: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    ip: &str,
) -> (StatusCode, Value, Option<String>) {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let mut builder = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("x-forwarded-for", ip)
        .header("content-type", "application/json");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let request = builder
        .body(
            body.map(|b| Body::from(b.to_string()))
                .unwrap_or_else(Body::empty),
        )
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    if status.is_client_error() || status.is_server_error() {
        assert_error_shape(&value);
    }
    (status, value, retry_after)
}

fn creds(name: &str, password: &str) -> Value {
    json!({"username": name, "password": password})
}

fn p50(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

// ---------------------------------------------------------------- argon2

/// A flood of registrations (fresh names from many addresses, so only the
/// hashing bound applies) must not starve logins, and must be refused with
/// 503 once the hashing queue is full. Registrations of a taken name are
/// answered 409 without hashing, so they never see 503.
#[tokio::test]
async fn a_register_flood_gets_503_and_logins_still_succeed() {
    let h = Harness::with(&[
        ("CONFAB_TRUST_PROXY", "true"),
        ("CONFAB_RATE_LIMIT_REGISTER_BURST", "100000"),
        ("CONFAB_HASH_WORKERS", "2"),
        ("CONFAB_HASH_QUEUE", "2"),
    ])
    .await;
    h.user("victim").await;
    let done = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(60);
    let flooders: Vec<_> = (0..24)
        .map(|i| {
            let app = h.app.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                let mut n = 0;
                while !done.load(Ordering::Relaxed) && n < 400 && Instant::now() < deadline {
                    // Every fourth flooder uses the taken name.
                    let name = if i % 4 == 0 {
                        "victim".to_owned()
                    } else {
                        format!("flood_{i}_{n}")
                    };
                    let ip = format!("10.9.{i}.{}", n % 250);
                    let (status, body, retry) = from_ip(
                        &app,
                        Method::POST,
                        "/api/auth/register",
                        None,
                        Some(creds(&name, "password123")),
                        &ip,
                    )
                    .await;
                    if status == StatusCode::SERVICE_UNAVAILABLE {
                        assert!(retry.is_some(), "503 without Retry-After: {body}");
                    }
                    statuses.push((i % 4 == 0, status, code(&body).to_owned()));
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                statuses
            })
        })
        .collect();
    // Let the flood build up, then log in while it runs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = Vec::new();
    let mut login_statuses = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let (status, body, _) = from_ip(
            &h.app,
            Method::POST,
            "/api/auth/login",
            None,
            Some(creds("victim", "password123")),
            "10.200.0.1",
        )
        .await;
        latencies.push(started.elapsed());
        login_statuses.push((status, body));
    }
    done.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for f in flooders {
        all.extend(f.await.unwrap());
    }
    let count =
        |pred: &dyn Fn(&(bool, StatusCode, String)) -> bool| all.iter().filter(|s| pred(s)).count();
    eprintln!(
        "register flood: {} requests ({} created, {} x 503, {} x 409); login p50 {:?}, max {:?}",
        all.len(),
        count(&|s| s.1 == StatusCode::CREATED),
        count(&|s| s.1 == StatusCode::SERVICE_UNAVAILABLE),
        count(&|s| s.1 == StatusCode::CONFLICT),
        p50(latencies.clone()),
        latencies.iter().max().unwrap(),
    );
    for (status, body) in &login_statuses {
        assert_eq!(*status, StatusCode::OK, "login during the flood: {body}");
    }
    assert!(
        count(&|s| s.1 == StatusCode::SERVICE_UNAVAILABLE && s.2 == "overloaded") > 0,
        "a full hashing queue answers 503 overloaded"
    );
    for (taken, status, c) in &all {
        if *taken {
            assert_eq!(*status, StatusCode::CONFLICT, "taken name: {c}");
        } else {
            assert!(
                *status == StatusCode::CREATED || *status == StatusCode::SERVICE_UNAVAILABLE,
                "{status} {c}"
            );
        }
    }
}

#[tokio::test]
async fn register_and_room_creation_are_rate_limited_per_address() {
    let h = Harness::with(&[
        ("CONFAB_TRUST_PROXY", "true"),
        ("CONFAB_RATE_LIMIT_REGISTER_BURST", "3"),
        ("CONFAB_RATE_LIMIT_ROOM_CREATE_BURST", "2"),
    ])
    .await;
    let register = |name: String, ip: &'static str| {
        let app = h.app.clone();
        async move {
            from_ip(
                &app,
                Method::POST,
                "/api/auth/register",
                None,
                Some(creds(&name, "password123")),
                ip,
            )
            .await
        }
    };
    for i in 0..3 {
        assert_eq!(
            register(format!("reg{i}"), "10.0.0.1").await.0,
            StatusCode::CREATED
        );
    }
    // Attempts count whatever their outcome: a taken name too.
    let (status, body, retry) = register("reg9".into(), "10.0.0.1").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(code(&body), "rate_limited");
    assert!(retry.is_some(), "429 carries Retry-After");
    let (status, body, _) = register("reg9".into(), "10.0.0.2").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();

    let create = |ip: &'static str| {
        let app = h.app.clone();
        let token = token.clone();
        async move {
            from_ip(
                &app,
                Method::POST,
                "/api/rooms",
                Some(&token),
                Some(json!({"name": "pw", "visibility": "private", "password": "sesame"})),
                ip,
            )
            .await
        }
    };
    assert_eq!(create("10.0.0.3").await.0, StatusCode::CREATED);
    assert_eq!(create("10.0.0.3").await.0, StatusCode::CREATED);
    let (status, body, _) = create("10.0.0.3").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(create("10.0.0.4").await.0, StatusCode::CREATED);
}

// ---------------------------------------------------------------- lockout

/// Failed logins from one address must not lock the user out elsewhere,
/// while the guessing address stays throttled.
#[tokio::test]
async fn failed_logins_from_one_address_do_not_lock_out_the_victim() {
    let h = Harness::with(&[
        ("CONFAB_TRUST_PROXY", "true"),
        ("CONFAB_RATE_LIMIT_USER_BURST", "3"),
        ("CONFAB_RATE_LIMIT_IP_BURST", "5"),
    ])
    .await;
    h.user("victim").await;
    h.user("other").await;
    let login = |name: &'static str, password: &'static str, ip: &'static str| {
        let app = h.app.clone();
        async move {
            from_ip(
                &app,
                Method::POST,
                "/api/auth/login",
                None,
                Some(creds(name, password)),
                ip,
            )
            .await
        }
    };
    for _ in 0..3 {
        assert_eq!(
            login("victim", "wrong-guess", "10.6.6.6").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    // The attacker's address is throttled for this user, even with the right password.
    for _ in 0..3 {
        let (status, body, _) = login("victim", "password123", "10.6.6.6").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    }
    // The victim, from their own address, logs in.
    let (status, body, _) = login("victim", "password123", "10.1.1.1").await;
    assert_eq!(status, StatusCode::OK, "victim locked out: {body}");
    // Two more failures (other users) use up the attacker address's quota of 5.
    for _ in 0..2 {
        assert_eq!(
            login("other", "wrong-guess", "10.6.6.6").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login("nobody", "wrong-guess", "10.6.6.6").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        login("other", "password123", "10.1.1.1").await.0,
        StatusCode::OK
    );
}

// ---------------------------------------------------------------- timeouts

/// Starts `run` on a socket with `extra` config; returns its address and the
/// shutdown token.
async fn serve(
    h: &Harness,
    extra: &[(&str, &str)],
) -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let config = support::config_with(&h.db, &h.kafka, extra);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(confab_auth_api::run(config, listener, shutdown.clone()));
    (addr, shutdown)
}

/// Reads until the peer closes; `None` if it is still open after `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok().map(|()| got)
}

#[tokio::test]
async fn slowloris_and_idle_connections_are_cut_off() {
    let h = Harness::new().await;
    let (addr, shutdown) = serve(&h, &[("CONFAB_API_HEADER_TIMEOUT_MS", "400")]).await;

    // Headers that never end.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nX-Slow: 1")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5))
            .await
            .is_some(),
        "a client that never finishes its headers is cut off"
    );
    eprintln!("slowloris cut off after {:?}", started.elapsed());

    // A keep-alive connection left idle after its request.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let response = closed_within(&mut idle, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(
        String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_request_whose_body_never_arrives_gets_503() {
    let h = Harness::new().await;
    let (addr, shutdown) = serve(
        &h,
        &[
            ("CONFAB_API_HEADER_TIMEOUT_MS", "10000"),
            ("CONFAB_API_REQUEST_TIMEOUT_MS", "500"),
        ],
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("the request is answered within its timeout")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_error_shape(&json);
    assert_eq!(code(&json), "timeout");
    shutdown.cancel();
}

#[tokio::test]
async fn a_query_over_the_statement_timeout_gets_503_not_a_hang() {
    let h = Harness::with(&[("CONFAB_API_STATEMENT_TIMEOUT_MS", "300")]).await;
    let (_, token) = h.user("alice").await;
    // Hold a lock every read of `users` waits for.
    let mut blocker = h.sql().await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), h.get("/api/me", &token)).await;
    tx.rollback().await.unwrap();
    let (status, body) = answer.expect("GET /api/me hung behind the lock");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(code(&body), "unavailable");
    let (status, _) = h.get("/api/me", &token).await;
    assert_eq!(status, StatusCode::OK);
}

/// A request that cannot get a pooled connection gets 503 after the
/// configured checkout timeout, not after a fixed 5 s.
#[tokio::test]
async fn a_request_without_a_free_connection_gets_503_after_the_checkout_timeout() {
    let h = Harness::with(&[
        ("CONFAB_API_DB_POOL_SIZE", "1"),
        ("CONFAB_API_STATEMENT_TIMEOUT_MS", "3000"),
        ("CONFAB_API_DB_ACQUIRE_TIMEOUT_MS", "200"),
    ])
    .await;
    let (_, token) = h.user("alice").await;
    let mut blocker = h.sql().await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // The pool's only connection waits behind the lock ...
    let stuck = {
        let app = h.app.clone();
        let token = token.clone();
        tokio::spawn(async move { call(&app, Method::GET, "/api/me", Some(&token), None).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... so another request has no connection to get.
    let started = Instant::now();
    let (status, body) = h.get("/api/rooms", &token).await;
    let waited = started.elapsed();
    tx.rollback().await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        waited < Duration::from_secs(2),
        "waited {waited:?} for a connection"
    );
    let (status, _) = stuck.await.unwrap();
    assert_eq!(status, StatusCode::OK);
}

// ---------------------------------------------------------------- broker outage

/// With a broker that never answers, membership changes wait (and fail with
/// 503) without holding database connections: login and history keep
/// answering while 20 joins wait, later joins fail fast, and nothing changed.
#[tokio::test]
async fn login_and_history_answer_while_joins_wait_for_a_dead_broker() {
    let h = Harness::new().await;
    let (_, a) = h.user("alice").await;
    let (bob, b) = h.user("bob").await;
    let mut rooms = Vec::new();
    for i in 0..20 {
        rooms.push(
            h.room(&a, json!({"name": format!("r{i}"), "visibility": "public"}))
                .await,
        );
    }
    let own = h
        .room(&b, json!({"name": "mine", "visibility": "public"}))
        .await;
    // The same database; a broker port that accepts nothing. Pool of 8.
    let down = h.sibling(&[
        ("KAFKA_BROKERS", "127.0.0.1:1"),
        ("CONFAB_KAFKA_MESSAGE_TIMEOUT_MS", "4000"),
        ("CONFAB_API_DB_POOL_SIZE", "8"),
    ]);
    let started = Instant::now();
    let joins: Vec<_> = rooms
        .iter()
        .map(|id| {
            let down = down.clone();
            let b = b.clone();
            let path = format!("/api/rooms/{id}/join");
            tokio::spawn(async move {
                let r = call(&down, Method::POST, &path, Some(&b), None).await;
                (r, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t = Instant::now();
    let (status, body) = call(
        &down,
        Method::POST,
        "/api/auth/login",
        None,
        Some(creds("bob", "password123")),
    )
    .await;
    let login_took = t.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    let t = Instant::now();
    let (status, body) = call(
        &down,
        Method::GET,
        &format!("/api/rooms/{own}/messages"),
        Some(&b),
        None,
    )
    .await;
    let history_took = t.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    let answered_at = started.elapsed();
    eprintln!("during the outage: login {login_took:?}, history {history_took:?}");

    let mut first_join_done = Duration::MAX;
    for j in joins {
        let ((status, body), at) = j.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(code(&body), "broker_unavailable");
        first_join_done = first_join_done.min(at);
    }
    assert!(
        answered_at < first_join_done,
        "login and history ({answered_at:?}) answered before any join gave up ({first_join_done:?})"
    );

    // The broker is known to be down now: the next change fails at once.
    let t = Instant::now();
    let (status, body) = call(
        &down,
        Method::POST,
        &format!("/api/rooms/{}/join", rooms[0]),
        Some(&b),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "fails fast: {:?}",
        t.elapsed()
    );
    let (status, _) = call(
        &down,
        Method::POST,
        "/api/rooms",
        Some(&a),
        Some(json!({"name": "lost", "visibility": "public"})),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = call(
        &down,
        Method::POST,
        &format!("/api/rooms/{own}/leave"),
        Some(&b),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    // No state changed without its event.
    let sql = h.sql().await;
    let n: i64 = sql
        .query_one(
            "SELECT count(*) FROM room_members WHERE user_id = $1",
            &[&bob],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "bob is still only in his own room");
    let n: i64 = sql
        .query_one("SELECT count(*) FROM rooms WHERE name = 'lost'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

// ---------------------------------------------------------------- room list

/// Pages through `GET /api/rooms?limit=N{extra}` to the end.
async fn all_room_pages(h: &Harness, token: &str, limit: u32, extra: &str) -> (Vec<Uuid>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            None => format!("/api/rooms?limit={limit}{extra}"),
            Some(a) => format!("/api/rooms?limit={limit}&after={a}{extra}"),
        };
        let (status, body) = h.get(&path, token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let rooms = body["rooms"].as_array().unwrap();
        assert!(rooms.len() <= limit as usize);
        pages += 1;
        ids.extend(
            rooms
                .iter()
                .map(|r| r["id"].as_str().unwrap().parse::<Uuid>().unwrap()),
        );
        match body["next_after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 100, "paging does not end");
    }
    (ids, pages)
}

#[tokio::test]
async fn the_room_list_pages_every_visible_room_exactly_once() {
    let h = Harness::new().await;
    let (_, a) = h.user("alice").await;
    let (_, b) = h.user("bob").await;
    let mut visible_to_b = Vec::new();
    let mut public = HashSet::new();
    for i in 0..13 {
        let id = match i % 3 {
            0 => {
                let id = h
                    .room(
                        &a,
                        json!({"name": format!("pub{i}"), "visibility": "public"}),
                    )
                    .await;
                public.insert(id);
                id
            }
            1 => {
                // Private and not for bob: never listed for him.
                h.room(
                    &a,
                    json!({"name": format!("priv{i}"), "visibility": "private"}),
                )
                .await;
                continue;
            }
            _ => {
                let id = h
                    .room(
                        &a,
                        json!({"name": format!("inv{i}"), "visibility": "private"}),
                    )
                    .await;
                let (status, _) = h
                    .post(
                        &format!("/api/rooms/{id}/invites"),
                        &a,
                        json!({"username": "bob"}),
                    )
                    .await;
                assert_eq!(status, StatusCode::CREATED);
                id
            }
        };
        visible_to_b.push(id);
    }
    visible_to_b.push(
        h.room(&b, json!({"name": "bobs", "visibility": "private"}))
            .await,
    );

    let (ids, pages) = all_room_pages(&h, &b, 4, "").await;
    assert_eq!(ids.len(), visible_to_b.len(), "{ids:?}");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "no duplicates"
    );
    assert_eq!(
        ids.iter().collect::<HashSet<_>>(),
        visible_to_b.iter().collect::<HashSet<_>>()
    );
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "creation (id) order");
    assert_eq!(pages, visible_to_b.len().div_ceil(4).max(1));

    // member=true: only the rooms bob belongs or is invited to, in the same
    // order and paging, whatever public rooms come before them.
    let (own, _) = all_room_pages(&h, &b, 2, "&member=true").await;
    let expected: Vec<Uuid> = visible_to_b
        .iter()
        .filter(|id| !public.contains(*id))
        .copied()
        .collect();
    assert_eq!(own, expected);
    let (status, body) = h.get("/api/rooms?member=yes", &b).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_member");

    // Member counts are right on every page.
    let (_, page) = h.get("/api/rooms?limit=200", &b).await;
    for room in page["rooms"].as_array().unwrap() {
        assert_eq!(room["member_count"], 1, "{room}");
    }
    let first = visible_to_b[0];
    let (status, _) = h
        .post(&format!("/api/rooms/{first}/join"), &b, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, page) = h.get("/api/rooms?limit=1", &b).await;
    assert_eq!(page["rooms"][0]["id"], first.to_string());
    assert_eq!(page["rooms"][0]["member_count"], 2);
    assert_eq!(page["rooms"][0]["is_member"], true);
    let (status, _) = h
        .post(&format!("/api/rooms/{first}/leave"), &b, json!({}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, page) = h.get("/api/rooms?limit=1", &b).await;
    assert_eq!(page["rooms"][0]["member_count"], 1);

    // Rooms created while paging appear once, on a later page.
    let (_, body) = h.get("/api/rooms?limit=5", &b).await;
    let cursor = body["next_after"].as_str().unwrap().to_owned();
    let late = h
        .room(&a, json!({"name": "late", "visibility": "public"}))
        .await;
    let (_, body) = h
        .get(&format!("/api/rooms?limit=200&after={cursor}"), &b)
        .await;
    let rest: Vec<&str> = body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(rest.iter().filter(|id| **id == late.to_string()).count(), 1);
    assert!(body["next_after"].is_null());
}

#[tokio::test]
async fn the_room_list_limit_defaults_caps_and_rejects() {
    let h = Harness::new().await;
    let (_, a) = h.user("alice").await;
    let sql = h.sql().await;
    // 260 public rooms, inserted directly: more than one capped page.
    let alice: Uuid = sql
        .query_one("SELECT id FROM users WHERE username = 'alice'", &[])
        .await
        .unwrap()
        .get(0);
    sql.execute(
        "INSERT INTO rooms (id, name, visibility, owner_id)
         SELECT gen_random_uuid(), 'bulk' || n, 'public', $1 FROM generate_series(1, 260) n",
        &[&alice],
    )
    .await
    .unwrap();
    let (status, body) = h.get("/api/rooms", &a).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["rooms"].as_array().unwrap().len(), 50, "default limit");
    let (_, body) = h.get("/api/rooms?limit=100000", &a).await;
    assert_eq!(
        body["rooms"].as_array().unwrap().len(),
        200,
        "capped at 200"
    );
    assert!(body["next_after"].is_string());
    let (ids, _) = all_room_pages(&h, &a, 200, "").await;
    assert_eq!(ids.len(), 260);
    for bad in ["limit=0", "limit=-1", "limit=x", "after=not-a-uuid"] {
        let (status, body) = h.get(&format!("/api/rooms?{bad}"), &a).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

// ---------------------------------------------------------------- bad input

/// PostgreSQL text cannot hold NUL: names with one must be client errors,
/// not 500 (found while fuzzing with schemathesis).
#[tokio::test]
async fn nul_bytes_in_names_are_client_errors() {
    let h = Harness::new().await;
    let (_, a) = h.user("alice").await;
    let (status, body) = h
        .post(
            "/api/rooms",
            &a,
            json!({"name": "a\u{0}b", "visibility": "public"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(code(&body), "invalid_name");
    let id = h
        .room(&a, json!({"name": "r", "visibility": "public"}))
        .await;
    let (status, body) = h
        .post(
            &format!("/api/rooms/{id}/invites"),
            &a,
            json!({"username": "b\u{0}b"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(code(&body), "user_not_found");
}

// ---------------------------------------------------------------- secrets

/// The service binary refuses the example secrets, the test suite's included,
/// with one line and exit status 64.
#[test]
fn the_binary_refuses_example_jwt_secrets() {
    for secret in [
        "change-me-dev-only-jwt-secret-0123456789",
        confab_common::testing::TEST_JWT_SECRET,
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_confab-auth-api"))
            .env_clear()
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("KAFKA_BROKERS", "127.0.0.1:1")
            .env("CONFAB_JWT_SECRET", secret)
            .env("CONFAB_API_ADDR", "127.0.0.1:0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            let _ = child.wait();
            panic!("confab-auth-api started with the example secret {secret:?}");
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{secret}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains("CONFAB_JWT_SECRET"), "{stderr}");
        assert!(
            !stderr.contains(secret),
            "the secret is not echoed: {stderr}"
        );
    }
}
