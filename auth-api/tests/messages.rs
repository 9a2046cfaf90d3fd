//! Black-box tests of CONTRACT §7 on auth-api: who may edit, delete and
//! react, the change records each call produces on the room's partition, and
//! how history and search show the messages the persister changed.
//!
//! No persister runs here: rows are written as the persister writes them
//! (`persister/tests/changes.rs` tests that part, and
//! `systest/tests/messages.rs` the whole path).

mod support;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use confab_common::record::{RecordKind, RoomRecord};
use serde_json::{json, Value};
use support::{call, Harness};
use uuid::Uuid;

fn code(v: &Value) -> &str {
    v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no code in {v}"))
}

/// Inserts a chat message as the persister would and returns its id.
async fn stored(h: &Harness, room: Uuid, offset: i64, user: Uuid, data: Value) -> Uuid {
    let id = Uuid::now_v7();
    let reply_to: Option<Uuid> = data["reply_to"].as_str().and_then(|s| s.parse().ok());
    h.sql()
        .await
        .execute(
            "INSERT INTO messages (room_id, stream_offset, id, kind, user_id, username, data, created_at, kafka_partition, reply_to)
             VALUES ($1, $2, $3, 'message', $4, 'someone', $5::text::json, now(), 0, $6)",
            &[&room, &offset, &id, &user, &data.to_string(), &reply_to],
        )
        .await
        .unwrap();
    id
}

/// Marks a message deleted, as the persister applies a delete.
async fn mark_deleted(h: &Harness, id: Uuid) {
    h.sql()
        .await
        .execute(
            "UPDATE messages SET deleted = true, data = NULL WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
}

async fn add_reaction(h: &Harness, message: Uuid, user: Uuid, emoji: &str) {
    h.sql()
        .await
        .execute(
            "INSERT INTO message_reactions (message_id, user_id, emoji, created_at) VALUES ($1, $2, $3, clock_timestamp())",
            &[&message, &user, &emoji],
        )
        .await
        .unwrap();
}

/// The change records of `room` on the topic so far, waiting a moment for
/// `want` of them.
fn changes(h: &Harness, room: Uuid, want: usize) -> Vec<RoomRecord> {
    let wait = if want == 0 { 1 } else { 10 };
    support::read_room_records(&h.kafka, 1, room, usize::MAX, Duration::from_secs(wait))
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| r.kind.is_change())
        .collect()
}

fn data(record: &RoomRecord) -> Value {
    serde_json::from_str(record.data.get()).unwrap()
}

/// A public room owned by `owner`, with `members` joined.
async fn room_with(h: &Harness, owner: &str, members: &[&str]) -> Uuid {
    let room = h
        .room(owner, json!({"name": "r", "visibility": "public"}))
        .await;
    for token in members {
        let (status, body) = h
            .post(&format!("/api/rooms/{room}/join"), token, json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    room
}

async fn patch(h: &Harness, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    h.call(Method::PATCH, path, Some(token), Some(body)).await
}

async fn delete(h: &Harness, path: &str, token: &str) -> (StatusCode, Value) {
    h.call(Method::DELETE, path, Some(token), None).await
}

async fn put(h: &Harness, path: &str, token: &str) -> (StatusCode, Value) {
    h.call(Method::PUT, path, Some(token), None).await
}

#[tokio::test]
async fn only_the_author_edits_and_never_a_deleted_message() {
    let h = Harness::new().await;
    let (_, owner) = h.user("owner").await;
    let (ann_id, ann) = h.user("ann").await;
    let (_, bob) = h.user("bob").await;
    let (_, carl) = h.user("carl").await;
    let room = room_with(&h, &owner, &[&ann, &bob]).await;
    let msg = stored(&h, room, 10, ann_id, json!({"text": "helo", "n": 1})).await;
    let path = format!("/api/rooms/{room}/messages/{msg}");

    for (token, status, want) in [
        (&bob, StatusCode::FORBIDDEN, "not_author"),
        (&owner, StatusCode::FORBIDDEN, "not_author"),
        (&carl, StatusCode::FORBIDDEN, "not_a_member"),
    ] {
        let (got, body) = patch(&h, &path, token, json!({"text": "x"})).await;
        assert_eq!((got, code(&body)), (status, want), "{body}");
    }
    let (status, body) = patch(
        &h,
        &format!("/api/rooms/{room}/messages/{}", Uuid::now_v7()),
        &ann,
        json!({"text": "x"}),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "message_not_found")
    );
    let (status, body) = patch(
        &h,
        &format!("/api/rooms/{room}/messages/nope"),
        &ann,
        json!({"text": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    for bad in [
        json!({"text": ""}),
        json!({"text": "   "}),
        json!({"text": "a".repeat(4001)}),
    ] {
        let (status, body) = patch(&h, &path, &ann, bad).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_text")
        );
    }
    let (status, _) = patch(&h, &path, &ann, json!({"txt": "x"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        changes(&h, room, 0).is_empty(),
        "refused edits produce nothing"
    );

    let (status, edited) = patch(&h, &path, &ann, json!({"text": "hello"})).await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited["id"], msg.to_string());
    assert_eq!(edited["data"], json!({"text": "hello", "n": 1}));
    assert_eq!(edited["offset"], 10);
    assert_eq!(edited["deleted"], false);
    assert!(edited["edited_at"].is_string());
    let records = changes(&h, room, 1);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].kind, RecordKind::MessageEdited);
    assert_eq!(records[0].user.id, ann_id);
    assert_eq!(
        data(&records[0]),
        json!({"type": "message_edited", "message_id": msg, "text": "hello", "edited_at": edited["edited_at"]})
    );

    mark_deleted(&h, msg).await;
    let (status, body) = patch(&h, &path, &ann, json!({"text": "again"})).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "message_deleted")
    );
    assert_eq!(changes(&h, room, 1).len(), 1);
}

#[tokio::test]
async fn the_author_the_owner_and_moderators_delete() {
    let h = Harness::new().await;
    let (owner_id, owner) = h.user("owner").await;
    let (ann_id, ann) = h.user("ann").await;
    let (_, bob) = h.user("bob").await;
    let (mod_id, moderator) = h.user("mod").await;
    let (_, carl) = h.user("carl").await;
    let room = room_with(&h, &owner, &[&ann, &bob, &moderator]).await;
    // Roles other than owner and member come with issue 14's migration;
    // this database only needs to hold one.
    let sql = h.sql().await;
    sql.batch_execute("ALTER TABLE room_members DROP CONSTRAINT IF EXISTS room_members_role_check")
        .await
        .unwrap();
    sql.execute(
        "UPDATE room_members SET role = 'moderator' WHERE room_id = $1 AND user_id = $2",
        &[&room, &mod_id],
    )
    .await
    .unwrap();
    let by_ann: Vec<Uuid> = futures::future::join_all(
        (0..3).map(|i| stored(&h, room, 10 + i, ann_id, json!({"text": format!("m{i}")}))),
    )
    .await;
    let path = |m: Uuid| format!("/api/rooms/{room}/messages/{m}");

    let (status, body) = delete(&h, &path(by_ann[0]), &bob).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, "not_allowed")
    );
    let (status, body) = delete(&h, &path(by_ann[0]), &carl).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, "not_a_member")
    );
    let (status, body) = delete(&h, &path(Uuid::now_v7()), &ann).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "message_not_found")
    );
    assert!(changes(&h, room, 0).is_empty());

    for (m, token, who) in [
        (by_ann[0], &ann, ann_id),
        (by_ann[1], &owner, owner_id),
        (by_ann[2], &moderator, mod_id),
    ] {
        let (status, body) = delete(&h, &path(m), token).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        let records = changes(&h, room, 1);
        let last = records.last().unwrap();
        assert_eq!(last.kind, RecordKind::MessageDeleted);
        assert_eq!(last.user.id, who);
        assert_eq!(
            data(last),
            json!({"type": "message_deleted", "message_id": m})
        );
    }
    assert_eq!(changes(&h, room, 3).len(), 3);

    // Deleting a deleted message is a no-op.
    mark_deleted(&h, by_ann[0]).await;
    let (status, _) = delete(&h, &path(by_ann[0]), &ann).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(changes(&h, room, 3).len(), 3);

    // A membership event is no message.
    let joined = Uuid::now_v7();
    sql.execute(
        "INSERT INTO messages (room_id, stream_offset, id, kind, user_id, username, data, created_at, kafka_partition)
         VALUES ($1, 99, $2, 'member_joined', $3, 'ann', '{\"type\":\"member_joined\"}', now(), 0)",
        &[&room, &joined, &ann_id],
    )
    .await
    .unwrap();
    let (status, body) = delete(&h, &path(joined), &owner).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "message_not_found")
    );
}

#[tokio::test]
async fn reactions_are_idempotent_and_validated() {
    let h = Harness::new().await;
    let (_, owner) = h.user("owner").await;
    let (ann_id, ann) = h.user("ann").await;
    let (bob_id, bob) = h.user("bob").await;
    let (_, carl) = h.user("carl").await;
    let room = room_with(&h, &owner, &[&ann, &bob]).await;
    let msg = stored(&h, room, 10, ann_id, json!({"text": "react"})).await;
    let base = format!("/api/rooms/{room}/messages/{msg}/reactions");
    // 👍, percent-encoded as a client sends it.
    let thumbs = format!("{base}/%F0%9F%91%8D");

    let (status, body) = put(&h, &thumbs, &bob).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let records = changes(&h, room, 1);
    assert_eq!(records.len(), 1);
    assert_eq!(
        data(&records[0]),
        json!({"type": "reaction_added", "message_id": msg, "emoji": "👍", "user": {"id": bob_id, "username": "bob"}})
    );
    // Once the persister stored it, reacting again is a no-op.
    add_reaction(&h, msg, bob_id, "👍").await;
    let (status, _) = put(&h, &thumbs, &bob).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        changes(&h, room, 1).len(),
        1,
        "reacting twice produces nothing"
    );

    let (status, _) = put(&h, &format!("{base}/:party_parrot:"), &ann).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for bad in [
        "abc",
        "%F0%9F%91%8D%F0%9F%91%8D",
        ":has%20space:",
        ":abcdefghijklmnopqrstuvwxyz01234:",
        "::",
    ] {
        let (status, body) = put(&h, &format!("{base}/{bad}"), &ann).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, "invalid_emoji"),
            "{bad}"
        );
    }
    let (status, body) = put(&h, &thumbs, &carl).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, "not_a_member")
    );

    // Taking back a reaction that is not there is a no-op; one that is
    // produces reaction_removed.
    let (status, _) = delete(&h, &thumbs, &ann).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(changes(&h, room, 2).len(), 2);
    let (status, _) = delete(&h, &thumbs, &bob).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let records = changes(&h, room, 3);
    assert_eq!(records.len(), 3);
    assert_eq!(records[2].kind, RecordKind::ReactionRemoved);
    assert_eq!(data(&records[2])["emoji"], "👍");

    mark_deleted(&h, msg).await;
    let (status, body) = put(&h, &format!("{base}/:tada:"), &ann).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "message_deleted")
    );
}

#[tokio::test]
async fn history_folds_changes_into_the_messages() {
    let h = Harness::new().await;
    let (owner_id, owner) = h.user("owner").await;
    let (ann_id, ann) = h.user("ann").await;
    let room = room_with(&h, &owner, &[&ann]).await;
    let other = room_with(&h, &owner, &[]).await;
    let foreign = stored(&h, other, 5, owner_id, json!({"text": "elsewhere"})).await;
    let first = stored(&h, room, 10, ann_id, json!({"text": "first"})).await;
    let gone = stored(&h, room, 11, ann_id, json!({"text": "secret"})).await;
    let reply = stored(
        &h,
        room,
        12,
        owner_id,
        json!({"text": "re", "reply_to": first}),
    )
    .await;
    let stray = stored(
        &h,
        room,
        13,
        owner_id,
        json!({"text": "x", "reply_to": foreign}),
    )
    .await;
    let sql = h.sql().await;
    sql.execute(
        "UPDATE messages SET data = '{\"text\":\"first!\"}', edited_at = now() WHERE id = $1",
        &[&first],
    )
    .await
    .unwrap();
    mark_deleted(&h, gone).await;
    add_reaction(&h, first, ann_id, "👍").await;
    add_reaction(&h, first, owner_id, "👍").await;
    add_reaction(&h, first, owner_id, ":tada:").await;

    let (status, page) = h.get(&format!("/api/rooms/{room}/messages"), &ann).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let messages: Vec<&Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "message")
        .collect();
    assert_eq!(messages.len(), 4);
    let by_id = |id: Uuid| *messages.iter().find(|m| m["id"] == id.to_string()).unwrap();
    let m = by_id(first);
    assert_eq!(m["data"], json!({"text": "first!"}));
    assert!(m["edited_at"].is_string());
    assert_eq!(m["deleted"], false);
    assert_eq!(
        m["reactions"],
        json!([{"emoji": "👍", "count": 2, "me": true}, {"emoji": ":tada:", "count": 1, "me": false}])
    );
    let m = by_id(gone);
    assert_eq!(m["data"], Value::Null);
    assert_eq!(m["deleted"], true);
    assert_eq!(m["offset"], 11, "a deleted message keeps its place");
    assert_eq!(m["reactions"], json!([]));
    assert_eq!(by_id(reply)["reply_to"], first.to_string());
    assert_eq!(
        by_id(stray)["reply_to"],
        Value::Null,
        "only a message of the same room"
    );
    // Every entry has the §7 fields.
    for m in page["messages"].as_array().unwrap() {
        for field in ["edited_at", "deleted", "reply_to", "reactions"] {
            assert!(m.get(field).is_some(), "{field} in {m}");
        }
    }
    // The owner sees `me` from their side.
    let (_, page) = h.get(&format!("/api/rooms/{room}/messages"), &owner).await;
    let m = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == first.to_string())
        .unwrap()
        .clone();
    assert_eq!(
        m["reactions"][1],
        json!({"emoji": ":tada:", "count": 1, "me": true})
    );
}

#[tokio::test]
async fn search_finds_only_live_text_in_the_callers_rooms() {
    let h = Harness::new().await;
    let (ann_id, ann) = h.user("ann").await;
    let (bob_id, bob) = h.user("bob").await;
    let mine = room_with(&h, &ann, &[&bob]).await;
    let theirs = room_with(&h, &bob, &[]).await;
    let left = room_with(&h, &bob, &[&ann]).await;
    let mut expected = Vec::new();
    for i in 0..5 {
        expected.push(
            stored(
                &h,
                mine,
                10 + i,
                bob_id,
                json!({"text": format!("the Needle number {i}")}),
            )
            .await,
        );
    }
    stored(&h, mine, 20, bob_id, json!({"text": "nothing to see"})).await;
    let gone = stored(&h, mine, 21, ann_id, json!({"text": "needle I regret"})).await;
    mark_deleted(&h, gone).await;
    stored(
        &h,
        theirs,
        10,
        bob_id,
        json!({"text": "needle in their room"}),
    )
    .await;
    stored(
        &h,
        left,
        10,
        bob_id,
        json!({"text": "needle in a room ann left"}),
    )
    .await;
    let (status, _) = h
        .post(&format!("/api/rooms/{left}/leave"), &ann, json!({}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    expected.reverse(); // newest first

    let (status, page) = h.get("/api/search?q=needle", &ann).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ids: Vec<String> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = expected.iter().map(Uuid::to_string).collect();
    assert_eq!(ids, want);
    assert_eq!(page["next_before"], Value::Null);
    assert!(!page.to_string().contains("regret"));
    assert!(!page.to_string().contains("their room"));
    assert!(!page.to_string().contains("ann left"));

    // Keyset pages: each result exactly once, newest first.
    let mut paged = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut path = format!("/api/search?q=NEEDLE&room_id={mine}&limit=2");
        if let Some(b) = &before {
            path.push_str(&format!("&before={b}"));
        }
        let (status, page) = h.get(&path, &ann).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        paged.extend(
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned()),
        );
        match page["next_before"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, want);

    // Phrases and words that are in no message.
    let (_, page) = h.get("/api/search?q=%22number%203%22", &ann).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    let (_, page) = h.get("/api/search?q=haystack", &ann).await;
    assert_eq!(page["messages"], json!([]));
    // Another member sees the same room's results, and their own room's.
    let (_, page) = h.get("/api/search?q=needle", &bob).await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 7);

    // A room the caller is not in is refused, not searched.
    let (status, body) = h
        .get(&format!("/api/search?q=needle&room_id={theirs}"), &ann)
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, "not_a_member")
    );
    let (status, body) = h
        .get(&format!("/api/search?q=needle&room_id={left}"), &ann)
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::FORBIDDEN, "not_a_member")
    );
    for bad in [
        "/api/search",
        "/api/search?q=",
        "/api/search?q=a&room_id=1",
        "/api/search?q=a&before=5",
        "/api/search?q=a&limit=0",
    ] {
        let (status, body) = h.get(bad, &ann).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    // Query syntax never breaks the query.
    for odd in [
        "%26%7C%21(",
        "-",
        "%22",
        "or",
        "a%3A*",
        "%27%3B%20DROP%20TABLE%20messages",
    ] {
        let (status, body) = h.get(&format!("/api/search?q={odd}"), &ann).await;
        assert_eq!(status, StatusCode::OK, "{odd}: {body}");
    }
    let (status, _) = call(&h.app, Method::GET, "/api/search?q=needle", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_broker_outage_fails_changes_with_503() {
    let h = Harness::new().await;
    let (ann_id, ann) = h.user("ann").await;
    let room = room_with(&h, &ann, &[]).await;
    let msg = stored(&h, room, 10, ann_id, json!({"text": "hi"})).await;
    let down = h.sibling(&[
        ("KAFKA_BROKERS", "127.0.0.1:1"),
        ("CONFAB_KAFKA_MESSAGE_TIMEOUT_MS", "1500"),
    ]);
    let path = format!("/api/rooms/{room}/messages/{msg}");
    for (method, path, body) in [
        (Method::PATCH, path.clone(), Some(json!({"text": "x"}))),
        (Method::DELETE, path.clone(), None),
        (Method::PUT, format!("{path}/reactions/:tada:"), None),
    ] {
        let (status, err) = call(&down, method, &path, Some(&ann), body).await;
        assert_eq!(
            (status, code(&err)),
            (StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable")
        );
    }
}
