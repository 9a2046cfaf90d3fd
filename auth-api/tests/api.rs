//! Black-box tests of every route and rule of CONTRACT §3, against the real
//! PostgreSQL and broker (`DATABASE_URL`, `KAFKA_BROKERS`).

mod support;

use std::collections::HashSet;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use confab_common::jwt::JwtKeys;
use confab_common::record::RecordKind;
use confab_common::testing::TEST_JWT_SECRET;
use serde_json::{json, Value};
use support::{call, insert_message, raw, read_room_records, Harness};
use uuid::Uuid;

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap()
}

// ---------------------------------------------------------------- accounts

#[tokio::test]
async fn register_login_and_me() {
    let h = Harness::new().await;
    let (status, body) = h
        .call(
            Method::POST,
            "/api/auth/register",
            None,
            Some(json!({"username": "Alice", "password": "password123"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(keys(&body), ["expires_at", "token", "user"]);
    assert_eq!(keys(&body["user"]), ["id", "username"]);
    assert_eq!(body["user"]["username"], "Alice");
    let expires = time::OffsetDateTime::parse(
        body["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("expires_at is RFC 3339");
    let ttl = expires - time::OffsetDateTime::now_utc();
    assert!(ttl > time::Duration::hours(23) && ttl <= time::Duration::hours(24));
    let token = body["token"].as_str().unwrap().to_owned();
    let claims = JwtKeys::new(
        TEST_JWT_SECRET.as_bytes(),
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
    .verify_access(&token)
    .unwrap();
    assert_eq!(claims.sub.to_string(), body["user"]["id"].as_str().unwrap());

    let (status, me) = h.get("/api/me", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me, body["user"]);

    // Login is case-insensitive on the name and returns the stored spelling.
    let (status, login) = h
        .call(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"username": "alice", "password": "password123"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{login}");
    assert_eq!(login["user"], body["user"]);
    assert_eq!(keys(&login), ["expires_at", "token", "user"]);
    let (status, _) = h.get("/api/me", login["token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);

    // Duplicate names, regardless of case: 409.
    for name in ["Alice", "ALICE"] {
        let (status, err) = h
            .call(
                Method::POST,
                "/api/auth/register",
                None,
                Some(json!({"username": name, "password": "password123"})),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(code(&err), "username_taken");
    }
}

#[tokio::test]
async fn registration_validates_usernames_and_passwords() {
    let h = Harness::new().await;
    for (name, password) in [
        ("ab", "password123"),
        (&"x".repeat(33) as &str, "password123"),
        ("bad name", "password123"),
        ("bad/name", "password123"),
        ("good_name", "short"),
        ("good_name", "1234567"),
    ] {
        let (status, err) = h
            .call(
                Method::POST,
                "/api/auth/register",
                None,
                Some(json!({"username": name, "password": password})),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{name} {password}"
        );
        assert!(["invalid_username", "invalid_password"].contains(&code(&err)));
    }
    // The boundaries pass: 3 and 32 characters, an 8-character password.
    for name in ["abc", &"y".repeat(32), "a.b-c_9"] {
        let (status, _) = h
            .call(
                Method::POST,
                "/api/auth/register",
                None,
                Some(json!({"username": name, "password": "12345678"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{name}");
    }
}

#[tokio::test]
async fn bad_credentials_get_401_without_a_hint() {
    let h = Harness::new().await;
    h.user("bob").await;
    let mut bodies = Vec::new();
    for creds in [
        json!({"username": "bob", "password": "wrong-password"}),
        json!({"username": "nobody", "password": "password123"}),
        json!({"username": "x", "password": "password123"}),
    ] {
        let (status, err) = h
            .call(Method::POST, "/api/auth/login", None, Some(creds))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        bodies.push(err);
    }
    assert_eq!(bodies[0], bodies[1], "no hint which part was wrong");
    assert_eq!(bodies[0], bodies[2]);
}

/// Unknown users are verified against a dummy hash, so their failed logins
/// cost as much as a wrong password. Without it they would answer in about a
/// millisecond instead of an Argon2 verification's tens; the margin is wide.
#[tokio::test]
async fn unknown_user_logins_take_as_long_as_wrong_passwords() {
    let h = Harness::new().await;
    h.user("timed").await;
    let time_login = |name: &'static str| {
        let app = h.app.clone();
        async move {
            let started = std::time::Instant::now();
            let (status, _) = call(
                &app,
                Method::POST,
                "/api/auth/login",
                None,
                Some(json!({"username": name, "password": "wrong-password"})),
            )
            .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            started.elapsed()
        }
    };
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..3 {
        known.push(time_login("timed").await);
        unknown.push(time_login("missing").await);
    }
    let known = known.into_iter().min().unwrap();
    let unknown = unknown.into_iter().min().unwrap();
    assert!(
        unknown * 2 >= known,
        "unknown user {unknown:?} vs wrong password {known:?}"
    );
}

#[tokio::test]
async fn missing_forged_and_expired_tokens_get_401() {
    let h = Harness::new().await;
    let (id, good) = h.user("carol").await;
    let forged = JwtKeys::new(
        b"some-other-secret-0123456789",
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
    .issue_access(id, "carol")
    .0;
    let keys = JwtKeys::new(
        TEST_JWT_SECRET.as_bytes(),
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    let expired = keys.issue_access_with_ttl(id, "carol", Duration::ZERO).0;
    // A subscription token is not an access token.
    let subscription = keys.issue_subscription(id, "room:x").0;
    // Past the 2 s leeway.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let room = Uuid::new_v4();
    let routes = [
        (Method::GET, "/api/me".to_owned()),
        (Method::POST, "/api/rooms".to_owned()),
        (Method::GET, "/api/rooms".to_owned()),
        (Method::GET, format!("/api/rooms/{room}")),
        (Method::POST, format!("/api/rooms/{room}/join")),
        (Method::POST, format!("/api/rooms/{room}/leave")),
        (Method::POST, format!("/api/rooms/{room}/invites")),
        (Method::GET, format!("/api/rooms/{room}/members")),
        (Method::GET, format!("/api/rooms/{room}/messages")),
        (
            Method::POST,
            format!("/api/rooms/{room}/subscription-token"),
        ),
    ];
    for (method, path) in &routes {
        for token in [
            None,
            Some(forged.as_str()),
            Some(expired.as_str()),
            Some(subscription.as_str()),
            Some("not.a.jwt"),
        ] {
            let (status, err) = h.call(method.clone(), path, token, None).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} {token:?}"
            );
            assert_eq!(code(&err), "unauthorized");
        }
    }
    // Other schemes are refused too.
    let (status, _) = raw(
        &h.app,
        Method::GET,
        "/api/me",
        None,
        None,
        &[("authorization", &format!("Basic {good}"))],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = h.get("/api/me", &good).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_valid_token_for_an_unknown_user_is_401() {
    let h = Harness::new().await;
    let keys = JwtKeys::new(
        TEST_JWT_SECRET.as_bytes(),
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    let (ghost, _) = keys.issue_access(Uuid::new_v4(), "ghost");
    let (status, _) = h.get("/api/me", &ghost).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = h
        .post(
            "/api/rooms",
            &ghost,
            json!({"name": "x", "visibility": "public"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

// ---------------------------------------------------------------- rooms

#[tokio::test]
async fn public_room_lifecycle() {
    let h = Harness::new().await;
    let (alice, a) = h.user("alice").await;
    let (bob, b) = h.user("bob").await;

    let (status, room) = h
        .post(
            "/api/rooms",
            &a,
            json!({"name": "  general  ", "visibility": "public"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{room}");
    assert_eq!(
        keys(&room),
        [
            "channel",
            "created_at",
            "direct",
            "id",
            "is_member",
            "last_read_offset",
            "member_count",
            "my_role",
            "name",
            "owner_id",
            "requires_password",
            "unread_count",
            "visibility"
        ]
    );
    let id = room["id"].as_str().unwrap().to_owned();
    assert_eq!(room["name"], "general");
    assert_eq!(room["visibility"], "public");
    assert_eq!(room["requires_password"], false);
    assert_eq!(room["owner_id"], alice.to_string());
    assert_eq!(room["channel"], format!("room:{id}"));
    assert_eq!(room["member_count"], 1);
    assert_eq!(room["is_member"], true);
    time::OffsetDateTime::parse(
        room["created_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();

    // Bob sees it, not as a member.
    let (status, seen) = h.get(&format!("/api/rooms/{id}"), &b).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["is_member"], false);
    assert_eq!(seen["member_count"], 1);
    let (_, list) = h.get("/api/rooms", &b).await;
    assert_eq!(keys(&list), ["next_after", "rooms"]);
    assert_eq!(list["rooms"].as_array().unwrap().len(), 1);
    assert_eq!(list["rooms"][0]["id"], id.as_str());

    // Not a member yet: no members list, history or subscription token.
    for (method, path) in [
        (Method::GET, format!("/api/rooms/{id}/members")),
        (Method::GET, format!("/api/rooms/{id}/messages")),
        (Method::POST, format!("/api/rooms/{id}/subscription-token")),
    ] {
        let (status, err) = h.call(method, &path, Some(&b), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(code(&err), "not_a_member");
    }

    // Join with no body at all; a public room always admits.
    let (status, joined) = h
        .call(
            Method::POST,
            &format!("/api/rooms/{id}/join"),
            Some(&b),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["is_member"], true);
    assert_eq!(joined["member_count"], 2);
    // Joining again is a no-op that returns 200, with or without a body.
    let (status, again) = h
        .post(&format!("/api/rooms/{id}/join"), &b, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["member_count"], 2);

    let (status, members) = h.get(&format!("/api/rooms/{id}/members"), &b).await;
    assert_eq!(status, StatusCode::OK);
    let members = members["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(keys(&members[0]), ["joined_at", "role", "user"]);
    assert_eq!(
        members[0]["user"],
        json!({"id": alice, "username": "alice"})
    );
    assert_eq!(members[0]["role"], "owner");
    assert_eq!(members[1]["user"], json!({"id": bob, "username": "bob"}));
    assert_eq!(members[1]["role"], "member");

    // A member gets a subscription token for this user and channel.
    let (status, tok) = h
        .call(
            Method::POST,
            &format!("/api/rooms/{id}/subscription-token"),
            Some(&b),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys(&tok), ["token"]);
    let claims = JwtKeys::new(
        TEST_JWT_SECRET.as_bytes(),
        Duration::from_secs(60),
        Duration::from_secs(60),
    )
    .verify_subscription(tok["token"].as_str().unwrap())
    .unwrap();
    assert_eq!(claims.sub, bob);
    assert_eq!(claims.channel, format!("room:{id}"));

    // Leave: 204, then not a member; leaving again is 409.
    let (status, body) = h
        .call(
            Method::POST,
            &format!("/api/rooms/{id}/leave"),
            Some(&b),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(body, Value::Null);
    let (_, seen) = h.get(&format!("/api/rooms/{id}"), &b).await;
    assert_eq!(seen["is_member"], false);
    assert_eq!(seen["member_count"], 1);
    let (status, err) = h
        .call(
            Method::POST,
            &format!("/api/rooms/{id}/leave"),
            Some(&b),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(code(&err), "not_a_member");
    let (status, _) = h.get(&format!("/api/rooms/{id}/messages"), &b).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Unknown room: 404.
    let (status, err) = h.get(&format!("/api/rooms/{}", Uuid::new_v4()), &b).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&err), "room_not_found");
    let (status, _) = h
        .call(
            Method::POST,
            &format!("/api/rooms/{}/join", Uuid::new_v4()),
            Some(&b),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn room_creation_validates_its_body() {
    let h = Harness::new().await;
    let (_, a) = h.user("alice").await;
    for body in [
        json!({"name": "", "visibility": "public"}),
        json!({"name": "   ", "visibility": "public"}),
        json!({"name": "x".repeat(101), "visibility": "public"}),
        json!({"name": "x", "visibility": "secret"}),
        json!({"name": "x"}),
        json!({"visibility": "public"}),
        json!({"name": 5, "visibility": "public"}),
        json!({"name": "x", "visibility": "public", "password": "pw"}),
        json!({"name": "x", "visibility": "private", "password": ""}),
        json!({"name": "x", "visibility": "private", "password": 12345678}),
    ] {
        let (status, _) = h.post("/api/rooms", &a, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    }
    let (_, list) = h.get("/api/rooms", &a).await;
    assert_eq!(list["rooms"], json!([]));
}

#[tokio::test]
async fn invite_only_room_stays_invisible_and_needs_an_invite() {
    let h = Harness::new().await;
    let (_, a) = h.user("alice").await;
    let (bob, b) = h.user("bob").await;
    let (_, c) = h.user("carol").await;
    let id = h
        .room(&a, json!({"name": "secret", "visibility": "private"}))
        .await;
    let (_, room) = h.get(&format!("/api/rooms/{id}"), &a).await;
    assert_eq!(room["visibility"], "private");
    assert_eq!(room["requires_password"], false);

    // Invisible to outsiders: 404 everywhere, absent from the list.
    for (method, path) in [
        (Method::GET, format!("/api/rooms/{id}")),
        (Method::GET, format!("/api/rooms/{id}/members")),
        (Method::GET, format!("/api/rooms/{id}/messages")),
        (Method::POST, format!("/api/rooms/{id}/subscription-token")),
        (Method::POST, format!("/api/rooms/{id}/leave")),
    ] {
        let (status, err) = h.call(method, &path, Some(&b), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(code(&err), "room_not_found");
    }
    let (status, _) = h
        .post(
            &format!("/api/rooms/{id}/invites"),
            &b,
            json!({"username": "carol"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = h.get("/api/rooms", &b).await;
    assert_eq!(list["rooms"], json!([]));

    // Joining without an invite: 403 invite_required.
    let (status, err) = h
        .call(
            Method::POST,
            &format!("/api/rooms/{id}/join"),
            Some(&b),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&err), "invite_required");

    // Inviting: unknown user 404, then bob.
    let (status, err) = h
        .post(
            &format!("/api/rooms/{id}/invites"),
            &a,
            json!({"username": "nobody"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&err), "user_not_found");
    let (status, _) = h
        .post(&format!("/api/rooms/{id}/invites"), &a, json!({}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, inv) = h
        .post(
            &format!("/api/rooms/{id}/invites"),
            &a,
            json!({"username": "BOB"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{inv}");
    assert_eq!(inv["user"]["id"], bob.to_string());
    // Inviting again is harmless.
    let (status, _) = h
        .post(
            &format!("/api/rooms/{id}/invites"),
            &a,
            json!({"username": "bob"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // The invitee sees the room (not yet a member) and can join.
    let (status, seen) = h.get(&format!("/api/rooms/{id}"), &b).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen["is_member"], false);
    let (_, list) = h.get("/api/rooms", &b).await;
    assert_eq!(list["rooms"].as_array().unwrap().len(), 1);
    // Still not a member: history is forbidden, not hidden.
    let (status, _) = h.get(&format!("/api/rooms/{id}/messages"), &b).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, joined) = h
        .call(
            Method::POST,
            &format!("/api/rooms/{id}/join"),
            Some(&b),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(joined["is_member"], true);

    // Carol is still shut out.
    let (status, _) = h.get(&format!("/api/rooms/{id}"), &c).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, err) = h
        .call(
            Method::POST,
            &format!("/api/rooms/{id}/join"),
            Some(&c),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&err), "invite_required");

    // Members (bob now) may invite; carol then joins.
    let (status, _) = h
        .post(
            &format!("/api/rooms/{id}/invites"),
            &b,
            json!({"username": "carol"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, joined) = h
        .call(
            Method::POST,
            &format!("/api/rooms/{id}/join"),
            Some(&c),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(joined["member_count"], 3);
}

#[tokio::test]
async fn only_members_invite_even_in_public_rooms() {
    let h = Harness::new().await;
    let (_, a) = h.user("alice").await;
    let (_, b) = h.user("bob").await;
    h.user("carol").await;
    let id = h
        .room(&a, json!({"name": "open", "visibility": "public"}))
        .await;
    let (status, err) = h
        .post(
            &format!("/api/rooms/{id}/invites"),
            &b,
            json!({"username": "carol"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&err), "not_a_member");
}

#[tokio::test]
async fn password_room_admits_only_with_the_right_password() {
    let h = Harness::new().await;
    let (_, a) = h.user("alice").await;
    let (_, b) = h.user("bob").await;
    let (status, room) = h
        .post(
            "/api/rooms",
            &a,
            json!({"name": "club", "visibility": "private", "password": "open sesame"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(room["requires_password"], true);
    let id = room["id"].as_str().unwrap();

    // The hash is an Argon2id PHC string, never the password.
    let stored: String = h
        .sql()
        .await
        .query_one(
            "SELECT password_hash FROM rooms WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stored}"
    );

    // Invisible to outsiders, but joinable by id and password.
    let (status, _) = h.get(&format!("/api/rooms/{id}"), &b).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let path = format!("/api/rooms/{id}/join");
    for body in [
        None,
        Some(json!({})),
        Some(json!({"password": "wrong"})),
        Some(json!({"password": ""})),
    ] {
        let (status, err) = h.call(Method::POST, &path, Some(&b), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(code(&err), "wrong_password");
    }
    let (status, joined) = h.post(&path, &b, json!({"password": "open sesame"})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["is_member"], true);
    assert_eq!(joined["requires_password"], true);
    // Members re-join without the password: a no-op.
    let (status, _) = h.call(Method::POST, &path, Some(&b), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h.get(&format!("/api/rooms/{id}/messages"), &b).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn owner_may_leave_and_the_room_stays() {
    let h = Harness::new().await;
    let (alice, a) = h.user("alice").await;
    let (_, b) = h.user("bob").await;
    let id = h
        .room(&a, json!({"name": "mine", "visibility": "public"}))
        .await;
    let (status, _) = h
        .call(
            Method::POST,
            &format!("/api/rooms/{id}/join"),
            Some(&b),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h
        .call(
            Method::POST,
            &format!("/api/rooms/{id}/leave"),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, room) = h.get(&format!("/api/rooms/{id}"), &b).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(room["owner_id"], alice.to_string());
    assert_eq!(room["member_count"], 1);
    // Back in, the owner is the owner again.
    h.call(
        Method::POST,
        &format!("/api/rooms/{id}/join"),
        Some(&a),
        None,
    )
    .await;
    let (_, members) = h.get(&format!("/api/rooms/{id}/members"), &a).await;
    let owner = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user"]["id"] == alice.to_string())
        .unwrap();
    assert_eq!(owner["role"], "owner");
}

#[tokio::test]
async fn room_list_shows_public_plus_own_and_invited_private_rooms() {
    let h = Harness::new().await;
    let (_, a) = h.user("alice").await;
    let (_, b) = h.user("bob").await;
    let public = h
        .room(&a, json!({"name": "p", "visibility": "public"}))
        .await;
    let hidden = h
        .room(&a, json!({"name": "h", "visibility": "private"}))
        .await;
    let invited = h
        .room(&a, json!({"name": "i", "visibility": "private"}))
        .await;
    let pw = h
        .room(
            &a,
            json!({"name": "w", "visibility": "private", "password": "pw"}),
        )
        .await;
    let own = h
        .room(&b, json!({"name": "o", "visibility": "private"}))
        .await;
    h.post(
        &format!("/api/rooms/{invited}/invites"),
        &a,
        json!({"username": "bob"}),
    )
    .await;
    let ids = |list: &Value| -> HashSet<String> {
        list["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, list) = h.get("/api/rooms", &b).await;
    let expect: HashSet<String> = [public, invited, own].iter().map(Uuid::to_string).collect();
    assert_eq!(ids(&list), expect);
    let (_, list) = h.get("/api/rooms", &a).await;
    let expect: HashSet<String> = [public, hidden, invited, pw]
        .iter()
        .map(Uuid::to_string)
        .collect();
    assert_eq!(ids(&list), expect);
}

// ---------------------------------------------------------------- events

#[tokio::test]
async fn membership_events_land_on_the_topic_in_order() {
    let h = Harness::new().await;
    let (alice, a) = h.user("alice").await;
    let (bob, b) = h.user("bob").await;
    let id = h
        .room(&a, json!({"name": "e", "visibility": "public"}))
        .await;
    let join = format!("/api/rooms/{id}/join");
    h.call(Method::POST, &join, Some(&b), None).await;
    // A re-join produces nothing.
    h.call(Method::POST, &join, Some(&b), None).await;
    let (status, _) = h
        .call(
            Method::POST,
            &format!("/api/rooms/{id}/leave"),
            Some(&b),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // A failed leave produces nothing either.
    h.call(
        Method::POST,
        &format!("/api/rooms/{id}/leave"),
        Some(&b),
        None,
    )
    .await;

    // One more than expected, to catch extra records.
    let records = read_room_records(&h.kafka, 1, id, 4, Duration::from_secs(8));
    let seen: Vec<(RecordKind, Uuid)> = records.iter().map(|(_, r)| (r.kind, r.user.id)).collect();
    assert_eq!(
        seen,
        [
            (RecordKind::MemberJoined, alice),
            (RecordKind::MemberJoined, bob),
            (RecordKind::MemberLeft, bob),
        ]
    );
    for (key, record) in &records {
        assert_eq!(key, &id.to_string(), "keyed by room");
        let data: Value = serde_json::from_str(record.data.get()).unwrap();
        assert_eq!(data["type"], record.kind.as_str());
        assert_eq!(data["user"]["id"], record.user.id.to_string());
        assert_eq!(data["user"]["username"], record.user.username);
    }
}

#[tokio::test]
async fn concurrent_joins_of_one_user_produce_one_event() {
    let h = Harness::new().await;
    let (_, a) = h.user("alice").await;
    let (bob, b) = h.user("bob").await;
    let id = h
        .room(&a, json!({"name": "race", "visibility": "public"}))
        .await;
    let path = format!("/api/rooms/{id}/join");
    let joins = (0..6).map(|_| call(&h.app, Method::POST, &path, Some(&b), None));
    for (status, room) in futures::future::join_all(joins).await {
        assert_eq!(status, StatusCode::OK, "{room}");
        assert_eq!(room["member_count"], 2);
    }
    let records = read_room_records(&h.kafka, 1, id, 3, Duration::from_secs(6));
    let bob_joins = records
        .iter()
        .filter(|(_, r)| r.user.id == bob && r.kind == RecordKind::MemberJoined)
        .count();
    assert_eq!(bob_joins, 1, "{records:?}");
}

#[tokio::test]
async fn a_broker_outage_fails_membership_changes_instead_of_losing_events() {
    let h = Harness::new().await;
    let (_, a) = h.user("alice").await;
    let (_, b) = h.user("bob").await;
    let id = h
        .room(&a, json!({"name": "r", "visibility": "public"}))
        .await;
    // The same database, but a broker nobody listens on.
    let down = h.sibling(&[
        ("KAFKA_BROKERS", "127.0.0.1:1"),
        ("CONFAB_KAFKA_MESSAGE_TIMEOUT_MS", "1500"),
    ]);
    let (status, err) = call(
        &down,
        Method::POST,
        &format!("/api/rooms/{id}/join"),
        Some(&b),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code(&err), "broker_unavailable");
    let (_, room) = h.get(&format!("/api/rooms/{id}"), &b).await;
    assert_eq!(room["is_member"], false, "the join was rolled back");
    assert_eq!(room["member_count"], 1);

    let (status, _) = call(
        &down,
        Method::POST,
        "/api/rooms",
        Some(&a),
        Some(json!({"name": "lost", "visibility": "public"})),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (_, list) = h.get("/api/rooms", &a).await;
    assert_eq!(
        list["rooms"].as_array().unwrap().len(),
        1,
        "no room without its event"
    );

    let (status, _) = call(
        &down,
        Method::POST,
        &format!("/api/rooms/{id}/leave"),
        Some(&a),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (_, room) = h.get(&format!("/api/rooms/{id}"), &a).await;
    assert_eq!(room["is_member"], true, "the leave was rolled back");

    // Reads do not need the broker.
    let (status, _) = call(
        &down,
        Method::GET,
        &format!("/api/rooms/{id}"),
        Some(&a),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

// ---------------------------------------------------------------- history

#[tokio::test]
async fn history_pages_newest_first_with_exact_data() {
    let h = Harness::new().await;
    let (alice, a) = h.user("alice").await;
    let id = h
        .room(&a, json!({"name": "h", "visibility": "public"}))
        .await;
    let sql = h.sql().await;
    // Offsets with gaps, as rooms share partitions.
    for i in 0..120i64 {
        insert_message(
            &sql,
            id,
            10 + i * 3,
            alice,
            &format!(r#"{{"text": "m{i}",  "n": 1.50}}"#),
        )
        .await;
    }
    let base = format!("/api/rooms/{id}/messages");
    let (status, page) = h.get(&base, &a).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys(&page), ["messages", "next_before"]);
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 50, "default limit");
    assert_eq!(
        keys(&msgs[0]),
        [
            "created_at",
            "data",
            "deleted",
            "edited_at",
            "id",
            "kind",
            "offset",
            "reactions",
            "reply_to",
            "room_id",
            "user"
        ]
    );
    assert_eq!(msgs[0]["offset"], 10 + 119 * 3);
    assert_eq!(msgs[0]["kind"], "message");
    assert_eq!(msgs[0]["room_id"], id.to_string());
    assert_eq!(msgs[0]["user"], json!({"id": alice, "username": "someone"}));
    assert_eq!(msgs[0]["data"], json!({"text": "m119", "n": 1.50}));
    assert_eq!(page["next_before"], msgs[49]["offset"]);

    // The data bytes come back as stored.
    let (_, bytes) = raw(
        &h.app,
        Method::GET,
        &format!("{base}?limit=1"),
        Some(&a),
        None,
        &[],
    )
    .await;
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.contains(r#""data":{"text": "m119",  "n": 1.50}"#),
        "{text}"
    );

    let (_, page) = h.get(&format!("{base}?limit=1000"), &a).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 120);
    assert_eq!(page["next_before"], Value::Null);
    let (_, page) = h.get(&format!("{base}?limit=120"), &a).await;
    assert_eq!(page["next_before"], Value::Null, "exactly exhausted");
    let (_, page) = h.get(&format!("{base}?limit=119"), &a).await;
    assert_eq!(page["next_before"], 13);
    let (_, page) = h.get(&format!("{base}?before=13"), &a).await;
    assert_eq!(page["messages"][0]["offset"], 10);
    assert_eq!(page["next_before"], Value::Null);
    let (_, page) = h.get(&format!("{base}?before=10"), &a).await;
    assert_eq!(page, json!({"messages": [], "next_before": null}));

    for bad in [
        "limit=0",
        "limit=-5",
        "limit=abc",
        "limit=1.5",
        "before=xyz",
        "before=1e3",
    ] {
        let (status, _) = h.get(&format!("{base}?{bad}"), &a).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn history_cap_is_200() {
    let h = Harness::new().await;
    let (alice, a) = h.user("alice").await;
    let id = h
        .room(&a, json!({"name": "h", "visibility": "public"}))
        .await;
    h.sql()
        .await
        .execute(
            "INSERT INTO messages (room_id, stream_offset, id, kind, user_id, username, data, created_at, kafka_partition)
             SELECT $1, g, gen_random_uuid(), 'message', $2, 'alice', '{\"text\":\"x\"}', now(), 0
             FROM generate_series(1, 250) g",
            &[&id, &alice],
        )
        .await
        .unwrap();
    let (_, page) = h
        .get(&format!("/api/rooms/{id}/messages?limit=500"), &a)
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 200);
    assert_eq!(page["next_before"], 51);
}

#[tokio::test]
async fn paging_returns_every_message_exactly_once_while_new_ones_arrive() {
    let h = Harness::new().await;
    let (alice, a) = h.user("alice").await;
    let id = h
        .room(&a, json!({"name": "busy", "visibility": "public"}))
        .await;
    let sql = h.sql().await;
    let initial: Vec<i64> = (0..300).map(|i| i * 2).collect();
    for &o in &initial {
        insert_message(&sql, id, o, alice, r#"{"text":"old"}"#).await;
    }
    // A writer keeps appending newer records while we page.
    let writer_sql = h.sql().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let writer_stop = stop.clone();
    let writer = tokio::spawn(async move {
        let mut offset = 10_000i64;
        while !writer_stop.is_cancelled() {
            insert_message(&writer_sql, id, offset, alice, r#"{"text":"new"}"#).await;
            offset += 1;
            tokio::task::yield_now().await;
        }
        offset - 10_000
    });

    let mut seen: Vec<i64> = Vec::new();
    let mut before: Option<i64> = None;
    // The first page is taken once some new rows exist; every row stored
    // when it was taken must then come back exactly once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut first_page_newest = None;
    loop {
        let path = match before {
            Some(b) => format!("/api/rooms/{id}/messages?limit=7&before={b}"),
            None => format!("/api/rooms/{id}/messages?limit=7"),
        };
        let (status, page) = h.get(&path, &a).await;
        assert_eq!(status, StatusCode::OK);
        let offsets: Vec<i64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["offset"].as_i64().unwrap())
            .collect();
        assert!(offsets.windows(2).all(|w| w[0] > w[1]), "newest first");
        first_page_newest.get_or_insert(offsets[0]);
        seen.extend(&offsets);
        match page["next_before"].as_i64() {
            Some(b) => {
                assert_eq!(Some(&b), offsets.last());
                before = Some(b);
            }
            None => break,
        }
    }
    stop.cancel();
    let written = writer.await.unwrap();
    assert!(written > 0, "the writer ran");

    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates");
    for o in &initial {
        assert!(unique.contains(o), "offset {o} missing");
    }
    // And every new row up to the first page's newest one.
    let newest = first_page_newest.unwrap();
    let expected_new = (10_000..=newest).count();
    assert_eq!(seen.len(), initial.len() + expected_new);
}

// ---------------------------------------------------------------- bad input

#[tokio::test]
async fn bad_input_gets_json_errors_never_panics() {
    let h = Harness::new().await;
    let (_, a) = h.user("alice").await;
    let id = h
        .room(&a, json!({"name": "x", "visibility": "public"}))
        .await;

    type Case<'a> = (Method, String, Option<&'a str>, Vec<u8>, StatusCode);
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/api/auth/register".into(),
            None,
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/auth/register".into(),
            None,
            b"".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/auth/register".into(),
            None,
            br#"{"username": 1, "password": []}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/api/auth/register".into(),
            None,
            br#"{"username": "abc"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/api/auth/register".into(),
            None,
            br#"[1,2]"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/api/auth/login".into(),
            None,
            b"\xff\xfe".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/auth/login".into(),
            None,
            br#"{"username": "a""#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/rooms".into(),
            Some(&a),
            b"nope".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/api/rooms".into(),
            Some(&a),
            br#"{"name": null, "visibility": "public"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            format!("/api/rooms/{id}/join"),
            Some(&a),
            b"{".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            format!("/api/rooms/{id}/join"),
            Some(&a),
            br#"{"password": 5}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            format!("/api/rooms/{id}/invites"),
            Some(&a),
            b"[".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        // Non-UUID ids name no room.
        (
            Method::GET,
            "/api/rooms/not-a-uuid".into(),
            Some(&a),
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/api/rooms/123/join".into(),
            Some(&a),
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/api/rooms/%00/leave".into(),
            Some(&a),
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/api/rooms/x/messages".into(),
            Some(&a),
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/api/rooms/x/members".into(),
            Some(&a),
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/api/rooms/x/subscription-token".into(),
            Some(&a),
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/api/rooms/x/invites".into(),
            Some(&a),
            br#"{"username":"a"}"#.to_vec(),
            StatusCode::NOT_FOUND,
        ),
        // Unknown API routes and methods.
        (
            Method::GET,
            "/api/nope".into(),
            None,
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/api".into(),
            None,
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            format!("/api/rooms/{id}/nope"),
            Some(&a),
            vec![],
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            "/api/rooms".into(),
            Some(&a),
            vec![],
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            Method::GET,
            "/api/auth/login".into(),
            None,
            vec![],
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        // A broken query string.
        (
            Method::GET,
            format!("/api/rooms/{id}/messages?limit=%zz"),
            Some(&a),
            vec![],
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, path, token, body, expect) in cases {
        let (status, bytes) = raw(
            &h.app,
            method.clone(),
            &path,
            token,
            Some(body.clone()),
            &[],
        )
        .await;
        assert_eq!(
            status,
            expect,
            "{method} {path} {:?}",
            String::from_utf8_lossy(&body)
        );
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{path}: not JSON: {:?}", String::from_utf8_lossy(&bytes)));
        support::assert_error_shape(&value);
    }

    // No Content-Type header is fine: bodies are JSON by contract.
    let (status, _) = raw(
        &h.app,
        Method::POST,
        "/api/auth/login",
        None,
        Some(br#"{"username":"alice","password":"password123"}"#.to_vec()),
        &[("content-type", "text/plain")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bodies_over_64_kib_get_413() {
    let h = Harness::new().await;
    let (_, a) = h.user("alice").await;
    let big = json!({"username": "x".repeat(70 * 1024), "password": "password123"}).to_string();
    for (path, token) in [
        ("/api/auth/register", None),
        ("/api/rooms", Some(a.as_str())),
    ] {
        let (status, bytes) = raw(
            &h.app,
            Method::POST,
            path,
            token,
            Some(big.clone().into_bytes()),
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(code(&value), "payload_too_large");
    }
    // Just under the limit is read (and then refused for its content).
    let near = json!({"name": "n".repeat(60 * 1024), "visibility": "public"}).to_string();
    let (status, _) = raw(
        &h.app,
        Method::POST,
        "/api/rooms",
        Some(&a),
        Some(near.into_bytes()),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

// ---------------------------------------------------------------- rate limits

#[tokio::test]
async fn login_is_rate_limited_per_user() {
    let h = Harness::with(&[("CONFAB_RATE_LIMIT_USER_BURST", "3")]).await;
    h.user("dave").await;
    // Successful logins do not use up the quota.
    for _ in 0..5 {
        let (status, _) = h
            .call(
                Method::POST,
                "/api/auth/login",
                None,
                Some(json!({"username": "dave", "password": "password123"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let wrong = json!({"username": "dave", "password": "wrong-password"});
    for _ in 0..3 {
        let (status, _) = h
            .call(Method::POST, "/api/auth/login", None, Some(wrong.clone()))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Over the limit even the right password is refused, for any spelling.
    for name in ["dave", "DAVE"] {
        let (status, err) = h
            .call(
                Method::POST,
                "/api/auth/login",
                None,
                Some(json!({"username": name, "password": "password123"})),
            )
            .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(code(&err), "rate_limited");
    }
    // Other users are not affected by dave's bucket.
    h.user("erin").await;
    let (status, _) = h
        .call(
            Method::POST,
            "/api/auth/login",
            None,
            Some(json!({"username": "erin", "password": "password123"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn login_is_rate_limited_per_client_address() {
    let h = Harness::with(&[
        ("CONFAB_RATE_LIMIT_IP_BURST", "4"),
        ("CONFAB_TRUST_PROXY", "true"),
    ])
    .await;
    let login = |name: String, ip: &'static str| {
        let app = h.app.clone();
        async move {
            let body = json!({"username": name, "password": "whatever-pw"}).to_string();
            raw(
                &app,
                Method::POST,
                "/api/auth/login",
                None,
                Some(body.into_bytes()),
                &[("x-forwarded-for", ip)],
            )
            .await
            .0
        }
    };
    for i in 0..4 {
        assert_eq!(
            login(format!("user{i}"), "10.0.0.1").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login("user9".into(), "10.0.0.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The proxy-appended (last) address counts, not a client-supplied first one.
    assert_eq!(
        login("user9".into(), "10.0.0.2, 10.0.0.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        login("user9".into(), "10.0.0.2").await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn join_by_password_is_rate_limited() {
    let h = Harness::with(&[("CONFAB_RATE_LIMIT_USER_BURST", "2")]).await;
    let (_, a) = h.user("alice").await;
    let (_, b) = h.user("bob").await;
    let id = h
        .room(
            &a,
            json!({"name": "pw", "visibility": "private", "password": "letmein"}),
        )
        .await;
    let path = format!("/api/rooms/{id}/join");
    for _ in 0..2 {
        let (status, _) = h.post(&path, &b, json!({"password": "guess"})).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, err) = h.post(&path, &b, json!({"password": "letmein"})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(code(&err), "rate_limited");
}

// ---------------------------------------------------------------- ops

#[tokio::test]
async fn healthz_metrics_and_openapi() {
    let h = Harness::new().await;
    let (status, health) = h.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["checks"]["database"], "up");

    let (_, a) = h.user("alice").await;
    let id = h
        .room(&a, json!({"name": "m", "visibility": "public"}))
        .await;
    h.get(&format!("/api/rooms/{id}"), &a).await;
    h.get("/api/rooms/nope", &a).await;
    let (status, bytes) = raw(&h.app, Method::GET, "/metrics", None, None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(bytes).unwrap();
    for needle in [
        "# HELP confab_api_requests_total",
        "# TYPE confab_api_requests_total counter",
        "# HELP confab_api_request_duration_seconds",
        "confab_api_request_duration_seconds_bucket{",
        r#"route="/api/rooms/{id}""#,
        r#"status="404""#,
        r#"route="/api/auth/register""#,
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from /metrics:\n{text}"
        );
    }

    // The OpenAPI document lists every route the router serves.
    let (status, doc) = h.call(Method::GET, "/api/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("/api/auth/register", "post"),
        ("/api/auth/login", "post"),
        ("/api/me", "get"),
        ("/api/rooms", "post"),
        ("/api/rooms", "get"),
        ("/api/rooms/{id}", "get"),
        ("/api/rooms/{id}/join", "post"),
        ("/api/rooms/{id}/leave", "post"),
        ("/api/rooms/{id}/invites", "post"),
        ("/api/rooms/{id}/members", "get"),
        ("/api/rooms/{id}/messages", "get"),
        ("/api/rooms/{id}/subscription-token", "post"),
        // CONTRACT §7
        ("/api/rooms/{id}/messages/{message_id}", "patch"),
        ("/api/rooms/{id}/messages/{message_id}", "delete"),
        (
            "/api/rooms/{id}/messages/{message_id}/reactions/{emoji}",
            "put",
        ),
        (
            "/api/rooms/{id}/messages/{message_id}/reactions/{emoji}",
            "delete",
        ),
        ("/api/search", "get"),
        // CONTRACT §8
        ("/api/dms", "post"),
        ("/api/rooms/{id}/read", "post"),
        ("/api/rooms/{id}/reads", "get"),
        ("/api/rooms/{id}/members/{user_id}", "patch"),
        ("/api/rooms/{id}/members/{user_id}/kick", "post"),
        ("/api/rooms/{id}/bans/{user_id}", "post"),
        ("/api/rooms/{id}/bans/{user_id}", "delete"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = 0;
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            documented += 1;
            assert!(
                expected.contains(&(path.as_str(), method.as_str())),
                "{method} {path} documented but not in the contract"
            );
            // And the router serves it (no 404 not_found / 405 for the route).
            let concrete = path
                .replace("{id}", &id.to_string())
                .replace("{user_id}", &Uuid::nil().to_string())
                .replace("{message_id}", &Uuid::nil().to_string())
                .replace("{emoji}", ":thumbsup:");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, bytes) =
                raw(&h.app, m, &concrete, Some(&a), Some(b"{}".to_vec()), &[]).await;
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            assert_ne!(value["error"]["code"], "not_found", "{method} {path}");
        }
    }
    assert_eq!(documented, expected.len());
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let room_props: Vec<&String> = schemas["Room"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(room_props.len(), 13);
}

#[tokio::test]
async fn healthz_is_503_without_the_database() {
    let h = Harness::new().await;
    let broken = h.sibling(&[("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")]);
    let (status, bytes) = raw(&broken, Method::GET, "/healthz", None, None, &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["checks"]["database"], "down");
    // API calls answer 503 in the error shape.
    let (_, token) = h.user("alice").await;
    let (status, err) = call(&broken, Method::GET, "/api/rooms", Some(&token), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(code(&err), "unavailable");
}

// ---------------------------------------------------------------- serving

#[tokio::test]
async fn serves_the_web_client_with_spa_fallback_or_a_placeholder() {
    let h = Harness::new().await;
    // Without a built client: a placeholder page, and /api still JSON.
    let (status, bytes) = raw(&h.app, Method::GET, "/", None, None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8(bytes).unwrap().contains("not built"));

    let dir = std::env::temp_dir().join(format!("confab-web-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("index.html"), "<html>confab client</html>").unwrap();
    std::fs::write(dir.join("assets/app.js"), "console.log('hi')").unwrap();
    let web = h.sibling(&[("CONFAB_WEB_DIR", dir.to_str().unwrap())]);
    let (status, bytes) = raw(&web, Method::GET, "/", None, None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, b"<html>confab client</html>");
    let (status, bytes) = raw(&web, Method::GET, "/assets/app.js", None, None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, b"console.log('hi')");
    // Client-side routes fall back to index.html.
    let (status, bytes) = raw(&web, Method::GET, "/rooms/some-room", None, None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, b"<html>confab client</html>");
    // The API is not shadowed by the client.
    let (status, bytes) = raw(&web, Method::GET, "/api/nothing-here", None, None, &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    support::assert_error_shape(&serde_json::from_slice(&bytes).unwrap());
    let (status, _) = raw(&web, Method::GET, "/healthz", None, None, &[]).await;
    assert_eq!(status, StatusCode::OK);
    std::fs::remove_dir_all(&dir).ok();
}

/// One HTTP/1.1 request over a real socket; returns the status code.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: String) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response {response:?}"))
}

#[tokio::test]
async fn run_serves_on_a_socket_limits_by_peer_address_and_shuts_down() {
    let h = Harness::new().await;
    let config = support::config_with(&h.db, &h.kafka, &[("CONFAB_RATE_LIMIT_IP_BURST", "2")]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(confab_auth_api::run(config, listener, shutdown.clone()));

    assert_eq!(http(addr, "GET", "/healthz", String::new()).await, 200);
    let creds = |name: &str| format!(r#"{{"username":"{name}","password":"password123"}}"#);
    assert_eq!(
        http(addr, "POST", "/api/auth/register", creds("peer1")).await,
        201
    );
    let login = |name: &'static str| http(addr, "POST", "/api/auth/login", creds(name));
    // Successful logins do not count; failures do.
    for _ in 0..3 {
        assert_eq!(login("peer1").await, 200);
    }
    assert_eq!(login("peer2").await, 401);
    assert_eq!(login("peer3").await, 401);
    // The peer address (127.0.0.1) has used its two failures.
    assert_eq!(login("peer1").await, 429);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("run returns after cancellation")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}
