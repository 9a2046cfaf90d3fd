//! Black-box tests of CONTRACT §8 over REST: direct rooms, read positions and
//! unread counts, roles, kicks and bans, against the real PostgreSQL and
//! broker.

mod support;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use confab_common::record::RecordKind;
use serde_json::{json, Value};
use support::{insert_message, read_room_records, Harness};
use uuid::Uuid;

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

async fn room_of(h: &Harness, token: &str, room: Uuid) -> Value {
    let (status, body) = h.get(&format!("/api/rooms/{room}"), token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn listed(h: &Harness, token: &str) -> Vec<Value> {
    let (status, body) = h.get("/api/rooms?limit=200", token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["rooms"].as_array().unwrap().clone()
}

async fn read(h: &Harness, token: &str, room: Uuid, offset: i64) -> StatusCode {
    let (status, body) = h
        .post(
            &format!("/api/rooms/{room}/read"),
            token,
            json!({ "offset": offset }),
        )
        .await;
    assert!(status != StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    status
}

async fn unread(h: &Harness, token: &str, room: Uuid) -> i64 {
    room_of(h, token, room).await["unread_count"]
        .as_i64()
        .unwrap()
}

async fn patch(h: &Harness, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
    h.call(Method::PATCH, path, Some(token), Some(body)).await
}

async fn empty_post(h: &Harness, token: &str, path: &str) -> (StatusCode, Value) {
    h.call(Method::POST, path, Some(token), None).await
}

// ---------------------------------------------------------------- direct rooms

#[tokio::test]
async fn a_dm_is_one_room_per_pair_that_nobody_else_can_see_join_or_enter() {
    let h = Harness::new().await;
    let (alice_id, alice) = h.user("alice").await;
    let (bob_id, bob) = h.user("bob").await;
    let (_, carol) = h.user("carol").await;

    let (status, dm) = h.post("/api/dms", &alice, json!({"username": "bob"})).await;
    assert_eq!(status, StatusCode::OK, "{dm}");
    assert_eq!(dm["direct"], true);
    assert_eq!(dm["visibility"], "private");
    assert_eq!(dm["is_member"], true);
    assert_eq!(dm["member_count"], 2);
    assert_eq!(dm["my_role"], "member");
    assert_eq!(dm["name"], "bob", "named after the other person");
    assert_eq!(dm["unread_count"], 0);
    assert!(dm["last_read_offset"].is_null());
    let id: Uuid = dm["id"].as_str().unwrap().parse().unwrap();

    // The same room whichever of the two asks, every time, by any spelling.
    for (token, other) in [(&bob, "alice"), (&alice, "BOB"), (&bob, "Alice")] {
        let (status, again) = h.post("/api/dms", token, json!({"username": other})).await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!(again["id"], dm["id"]);
    }
    assert_eq!(room_of(&h, &bob, id).await["name"], "alice");

    // Both are members with plain roles; nobody moderates a DM.
    let (_, members) = h.get(&format!("/api/rooms/{id}/members"), &alice).await;
    let mut ids: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["role"], "member");
            m["user"]["id"].as_str().unwrap()
        })
        .collect();
    ids.sort();
    let mut want = [alice_id.to_string(), bob_id.to_string()];
    want.sort();
    assert_eq!(ids, want);
    let (status, err) = empty_post(
        &h,
        &alice,
        &format!("/api/rooms/{id}/members/{bob_id}/kick"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");

    // A third user cannot see it, join it, get its token or be invited.
    let (status, _) = h.get(&format!("/api/rooms/{id}"), &carol).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(listed(&h, &carol).await.iter().all(|r| r["id"] != dm["id"]));
    let (status, err) = h
        .post(&format!("/api/rooms/{id}/join"), &carol, json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&err), "direct_room");
    let (status, _) = empty_post(&h, &carol, &format!("/api/rooms/{id}/subscription-token")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.get(&format!("/api/rooms/{id}/messages"), &carol).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, err) = h
        .post(
            &format!("/api/rooms/{id}/invites"),
            &alice,
            json!({"username": "carol"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(code(&err), "direct_room");
    let (status, _) = h.get(&format!("/api/rooms/{id}"), &carol).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "still invisible after the refused invite"
    );

    // Its members list it, marked direct.
    let mine = listed(&h, &alice).await;
    let entry = mine.iter().find(|r| r["id"] == dm["id"]).expect("listed");
    assert_eq!(entry["direct"], true);

    // A DM to oneself or to nobody is a clear 4xx.
    let (status, err) = h
        .post("/api/dms", &alice, json!({"username": "alice"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(code(&err), "cannot_dm_self");
    for name in ["nobody", "bad name", ""] {
        let (status, err) = h.post("/api/dms", &alice, json!({"username": name})).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name:?}");
        assert_eq!(code(&err), "user_not_found");
    }
    let (status, _) = h.post("/api/dms", &alice, json!({})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // One who left comes back into the same room through POST /api/dms.
    let (status, _) = empty_post(&h, &bob, &format!("/api/rooms/{id}/leave")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, err) = h
        .post(&format!("/api/rooms/{id}/join"), &bob, json!({}))
        .await;
    assert_eq!((status, code(&err)), (StatusCode::FORBIDDEN, "direct_room"));
    let (status, back) = h.post("/api/dms", &bob, json!({"username": "alice"})).await;
    assert_eq!(status, StatusCode::OK, "{back}");
    assert_eq!(back["id"], dm["id"]);
    assert_eq!(back["is_member"], true);
    assert_eq!(back["member_count"], 2);
}

#[tokio::test]
async fn concurrent_dms_of_one_pair_make_one_room() {
    let h = Harness::new().await;
    let (_, dave) = h.user("dave").await;
    let (_, erin) = h.user("erin").await;
    let calls = (0..8).map(|i| {
        let (token, other) = if i % 2 == 0 {
            (&dave, "erin")
        } else {
            (&erin, "dave")
        };
        h.post("/api/dms", token, json!({ "username": other }))
    });
    let answers = futures::future::join_all(calls).await;
    let first = &answers[0].1["id"];
    for (status, room) in &answers {
        assert_eq!(*status, StatusCode::OK, "{room}");
        assert_eq!(&room["id"], first);
        assert_eq!(room["member_count"], 2);
    }
    let rooms: i64 = h
        .sql()
        .await
        .query_one("SELECT count(*) FROM rooms WHERE direct", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rooms, 1);
    // Each person joined once: two member_joined records.
    let room: Uuid = first.as_str().unwrap().parse().unwrap();
    let records = read_room_records(&h.kafka, 1, room, 3, Duration::from_secs(3));
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records
        .iter()
        .all(|(_, r)| r.kind == RecordKind::MemberJoined));
}

// ---------------------------------------------------------------- reads

#[tokio::test]
async fn unread_counts_rise_and_read_positions_only_move_forward() {
    let h = Harness::new().await;
    let (alice_id, alice) = h.user("alice").await;
    let (bob_id, bob) = h.user("bob").await;
    let (_, carol) = h.user("carol").await;
    let room = h
        .room(&alice, json!({"name": "r", "visibility": "public"}))
        .await;
    let (status, joined) = h
        .post(&format!("/api/rooms/{room}/join"), &bob, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(joined["unread_count"], 0);
    assert!(joined["last_read_offset"].is_null());
    assert_eq!(joined["my_role"], "member");

    let sql = h.sql().await;
    for offset in [10, 11, 12] {
        insert_message(&sql, room, offset, alice_id, r#"{"text":"from alice"}"#).await;
    }
    insert_message(&sql, room, 13, bob_id, r#"{"text":"from bob"}"#).await;
    // Membership events are not unread messages.
    sql.execute(
        "INSERT INTO messages (room_id, stream_offset, id, kind, user_id, username, data, created_at, kafka_partition)
         VALUES ($1, 14, $2, 'member_joined', $3, 'carol', '{}', now(), 0)",
        &[&room, &Uuid::now_v7(), &alice_id],
    )
    .await
    .unwrap();

    assert_eq!(
        unread(&h, &bob, room).await,
        3,
        "alice's three, not bob's own"
    );
    assert_eq!(unread(&h, &alice, room).await, 1);
    let listed_bob = listed(&h, &bob).await;
    let entry = listed_bob
        .iter()
        .find(|r| r["id"] == room.to_string())
        .unwrap();
    assert_eq!(entry["unread_count"], 3, "the room list carries it too");
    // Non-members have nothing unread.
    assert_eq!(unread(&h, &carol, room).await, 0);

    assert_eq!(read(&h, &bob, room, 11).await, StatusCode::NO_CONTENT);
    let seen = room_of(&h, &bob, room).await;
    assert_eq!(seen["last_read_offset"], 11);
    assert_eq!(seen["unread_count"], 1);

    // Backwards is ignored.
    assert_eq!(read(&h, &bob, room, 5).await, StatusCode::NO_CONTENT);
    let seen = room_of(&h, &bob, room).await;
    assert_eq!(seen["last_read_offset"], 11);
    assert_eq!(seen["unread_count"], 1);

    // Ahead of what is stored (a live push the persister has not written
    // yet): messages stored later at or below the position are read.
    assert_eq!(read(&h, &bob, room, 100).await, StatusCode::NO_CONTENT);
    assert_eq!(unread(&h, &bob, room).await, 0);
    insert_message(&sql, room, 50, alice_id, r#"{"text":"late"}"#).await;
    assert_eq!(unread(&h, &bob, room).await, 0);
    insert_message(&sql, room, 101, alice_id, r#"{"text":"new"}"#).await;
    assert_eq!(unread(&h, &bob, room).await, 1);
    assert_eq!(
        unread(&h, &alice, room).await,
        1,
        "bob's one; alice never read"
    );

    // Receipts: members who have read, furthest first.
    assert_eq!(read(&h, &alice, room, 12).await, StatusCode::NO_CONTENT);
    let (status, reads) = h.get(&format!("/api/rooms/{room}/reads"), &alice).await;
    assert_eq!(status, StatusCode::OK, "{reads}");
    assert_eq!(
        reads,
        json!({"reads": [
            {"user": {"id": bob_id, "username": "bob"}, "offset": 100},
            {"user": {"id": alice_id, "username": "alice"}, "offset": 12},
        ]})
    );

    // A new member does not inherit the history as unread.
    let (_, joined) = h
        .post(&format!("/api/rooms/{room}/join"), &carol, json!({}))
        .await;
    assert_eq!(joined["unread_count"], 0, "{joined}");
    insert_message(&sql, room, 102, bob_id, r#"{"text":"hi carol"}"#).await;
    assert_eq!(unread(&h, &carol, room).await, 1);

    // Only members read and see receipts; offsets are not negative.
    let (_, dave) = h.user("dave").await;
    assert_eq!(read(&h, &dave, room, 1).await, StatusCode::FORBIDDEN);
    let (status, _) = h.get(&format!("/api/rooms/{room}/reads"), &dave).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        read(&h, &bob, room, -1).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let (status, _) = h
        .post(
            &format!("/api/rooms/{room}/read"),
            &bob,
            json!({"offset": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        read(&h, &bob, Uuid::now_v7(), 1).await,
        StatusCode::NOT_FOUND
    );
    let (status, _) = h
        .get(&format!("/api/rooms/{}/reads", Uuid::now_v7()), &bob)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A message taken back is no longer unread (migration 0006): not for a
/// reader who had not reached it, not in a range read later, and never
/// twice.
#[tokio::test]
async fn a_deleted_message_is_no_longer_unread() {
    let h = Harness::new().await;
    let (alice_id, alice) = h.user("alice").await;
    let (bob_id, bob) = h.user("bob").await;
    let room = h
        .room(&alice, json!({"name": "r", "visibility": "public"}))
        .await;
    h.post(&format!("/api/rooms/{room}/join"), &bob, json!({}))
        .await;
    let sql = h.sql().await;
    for offset in 1..=4 {
        insert_message(&sql, room, offset, alice_id, r#"{"text":"from alice"}"#).await;
    }
    insert_message(&sql, room, 5, bob_id, r#"{"text":"from bob"}"#).await;
    // As the persister applies a delete (persister/src/store.rs).
    let delete = |offset: i64| {
        let sql = &sql;
        async move {
            sql.execute(
                "UPDATE messages SET deleted = true, data = NULL
                 WHERE room_id = $1 AND stream_offset = $2",
                &[&room, &offset],
            )
            .await
            .unwrap();
        }
    };
    assert_eq!(unread(&h, &bob, room).await, 4);
    assert_eq!(unread(&h, &alice, room).await, 1);
    assert_eq!(read(&h, &bob, room, 2).await, StatusCode::NO_CONTENT);
    assert_eq!(unread(&h, &bob, room).await, 2);

    delete(1).await;
    assert_eq!(unread(&h, &bob, room).await, 2, "one he had read");
    delete(3).await;
    assert_eq!(unread(&h, &bob, room).await, 1, "one he had not");
    delete(3).await;
    assert_eq!(
        unread(&h, &bob, room).await,
        1,
        "a second delete counts nothing"
    );
    delete(5).await;
    assert_eq!(unread(&h, &alice, room).await, 0, "bob took his back");
    assert_eq!(unread(&h, &bob, room).await, 1, "his own never counted");
    // Other updates (an edit) leave the counts alone.
    sql.execute(
        "UPDATE messages SET edited_at = now() WHERE room_id = $1 AND stream_offset = 4",
        &[&room],
    )
    .await
    .unwrap();
    assert_eq!(unread(&h, &bob, room).await, 1);

    // A range read later skips what was deleted in it.
    assert_eq!(read(&h, &bob, room, 4).await, StatusCode::NO_CONTENT);
    assert_eq!(unread(&h, &bob, room).await, 0);
    insert_message(&sql, room, 6, alice_id, r#"{"text":"new"}"#).await;
    assert_eq!(unread(&h, &bob, room).await, 1);
    // Reading up to the newest counts from the room's counters.
    assert_eq!(read(&h, &bob, room, 6).await, StatusCode::NO_CONTENT);
    assert_eq!(unread(&h, &bob, room).await, 0);
    delete(6).await;
    assert_eq!(unread(&h, &bob, room).await, 0, "never below zero");
    insert_message(&sql, room, 7, alice_id, r#"{"text":"newer"}"#).await;
    assert_eq!(unread(&h, &bob, room).await, 1);

    // A member who joins now starts with nothing unread.
    let (_, carol) = h.user("carol").await;
    let (_, joined) = h
        .post(&format!("/api/rooms/{room}/join"), &carol, json!({}))
        .await;
    assert_eq!(joined["unread_count"], 0, "{joined}");
    delete(7).await;
    assert_eq!(unread(&h, &carol, room).await, 0);
    assert_eq!(unread(&h, &bob, room).await, 0);
}

/// Batches stored while the reader moves its position are counted exactly
/// once: the counter lock of migration 0005 at work.
#[tokio::test]
async fn reads_racing_stored_batches_count_every_message_once() {
    let h = Harness::new().await;
    let (alice_id, alice) = h.user("alice").await;
    let (_, bob) = h.user("bob").await;
    let room = h
        .room(&alice, json!({"name": "r", "visibility": "public"}))
        .await;
    h.post(&format!("/api/rooms/{room}/join"), &bob, json!({}))
        .await;

    const BATCHES: i64 = 40;
    const PER_BATCH: i64 = 10;
    let writer = {
        let sql = h.sql().await;
        tokio::spawn(async move {
            for b in 0..BATCHES {
                // One statement per batch, as the persister stores them.
                sql.execute(
                    "INSERT INTO messages (room_id, stream_offset, id, kind, user_id, username, data, created_at, kafka_partition)
                     SELECT $1, g, gen_random_uuid(), 'message', $2, 'alice', '{\"text\":\"x\"}', now(), 0
                     FROM generate_series($3::bigint, $4::bigint) g",
                    &[&room, &alice_id, &(b * PER_BATCH + 1), &((b + 1) * PER_BATCH)],
                )
                .await
                .unwrap();
            }
        })
    };
    // The reader jumps around the writer: sometimes behind what is stored,
    // sometimes ahead of it.
    let mut furthest = 0;
    for i in 0..60 {
        let offset = (i * 37) % 350 + 1;
        furthest = furthest.max(offset);
        assert_eq!(read(&h, &bob, room, offset).await, StatusCode::NO_CONTENT);
    }
    writer.await.unwrap();
    let total = BATCHES * PER_BATCH;
    assert_eq!(
        unread(&h, &bob, room).await,
        (total - furthest).max(0),
        "furthest read {furthest}"
    );
    assert_eq!(read(&h, &bob, room, total).await, StatusCode::NO_CONTENT);
    assert_eq!(unread(&h, &bob, room).await, 0);
    assert_eq!(unread(&h, &alice, room).await, 0, "her own messages");
}

// ---------------------------------------------------------------- roles and moderation

#[tokio::test]
async fn the_owner_sets_roles_and_moderators_kick_anyone_but_the_owner() {
    let h = Harness::new().await;
    let (alice_id, alice) = h.user("alice").await;
    let (bob_id, bob) = h.user("bob").await;
    let (carol_id, carol) = h.user("carol").await;
    let (dave_id, dave) = h.user("dave").await;
    let room = h
        .room(&alice, json!({"name": "mod", "visibility": "public"}))
        .await;
    for token in [&bob, &carol, &dave] {
        let (status, _) = h
            .post(&format!("/api/rooms/{room}/join"), token, json!({}))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(room_of(&h, &alice, room).await["my_role"], "owner");

    let member = |u: Uuid| format!("/api/rooms/{room}/members/{u}");
    // Only the owner sets roles.
    let (status, err) = patch(&h, &carol, &member(bob_id), json!({"role": "moderator"})).await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::FORBIDDEN, "not_the_owner")
    );
    let (status, set) = patch(&h, &alice, &member(bob_id), json!({"role": "moderator"})).await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(set["role"], "moderator");
    assert_eq!(set["user"]["id"], bob_id.to_string());
    assert!(set["joined_at"].is_string());
    assert_eq!(room_of(&h, &bob, room).await["my_role"], "moderator");
    let (_, members) = h.get(&format!("/api/rooms/{room}/members"), &carol).await;
    let roles: Vec<(&str, &str)> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user"]["username"].as_str().unwrap(),
                m["role"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("alice", "owner"),
            ("bob", "moderator"),
            ("carol", "member"),
            ("dave", "member")
        ]
    );
    // The owner's role is not for changing, nor ownership for giving.
    let (status, err) = patch(&h, &alice, &member(alice_id), json!({"role": "member"})).await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::FORBIDDEN, "cannot_change_owner")
    );
    let (status, err) = patch(&h, &alice, &member(carol_id), json!({"role": "owner"})).await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_role")
    );
    let (status, _) = patch(&h, &alice, &member(carol_id), json!({"role": "admin"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, err) = patch(
        &h,
        &alice,
        &member(Uuid::now_v7()),
        json!({"role": "member"}),
    )
    .await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::NOT_FOUND, "member_not_found")
    );
    let (status, _) = patch(
        &h,
        &alice,
        &format!("/api/rooms/{room}/members/nope"),
        json!({"role": "member"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A member does not kick; nobody kicks the owner or themselves.
    let kick = |u: Uuid| format!("/api/rooms/{room}/members/{u}/kick");
    let (status, err) = empty_post(&h, &carol, &kick(dave_id)).await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::FORBIDDEN, "not_a_moderator")
    );
    let (status, err) = empty_post(&h, &bob, &kick(alice_id)).await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::FORBIDDEN, "cannot_moderate_owner")
    );
    let (status, err) = h
        .post(
            &format!("/api/rooms/{room}/bans/{alice_id}"),
            &bob,
            json!({}),
        )
        .await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::FORBIDDEN, "cannot_moderate_owner")
    );
    let (status, err) = empty_post(&h, &bob, &kick(bob_id)).await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::CONFLICT, "cannot_moderate_self")
    );

    // The moderator kicks carol: she is out, with a member_left that says so.
    let (status, body) = empty_post(&h, &bob, &kick(carol_id)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, err) = h.get(&format!("/api/rooms/{room}/messages"), &carol).await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::FORBIDDEN, "not_a_member")
    );
    let (status, _) =
        empty_post(&h, &carol, &format!("/api/rooms/{room}/subscription-token")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(room_of(&h, &carol, room).await["my_role"], Value::Null);
    let (status, err) = empty_post(&h, &bob, &kick(carol_id)).await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::NOT_FOUND, "member_not_found")
    );
    // A kick is not a ban: she may come back.
    let (status, _) = h
        .post(&format!("/api/rooms/{room}/join"), &carol, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);

    // The owner kicks a moderator.
    let (status, _) = empty_post(&h, &alice, &kick(bob_id)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let records = read_room_records(&h.kafka, 1, room, 7, Duration::from_secs(10));
    let left: Vec<Value> = records
        .iter()
        .filter(|(_, r)| r.kind == RecordKind::MemberLeft)
        .map(|(_, r)| serde_json::from_str(r.data.get()).unwrap())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(left[0]["type"], "member_left");
    assert_eq!(left[0]["reason"], "kicked");
    assert_eq!(
        left[0]["user"],
        json!({"id": carol_id, "username": "carol"})
    );
    assert_eq!(left[0]["by"], json!({"id": bob_id, "username": "bob"}));
    assert_eq!(left[1]["user"]["id"], bob_id.to_string());
    assert_eq!(left[1]["by"]["id"], alice_id.to_string());

    // Outsiders of an invisible room learn nothing.
    let private = h
        .room(&alice, json!({"name": "p", "visibility": "private"}))
        .await;
    let (status, _) = empty_post(
        &h,
        &dave,
        &format!("/api/rooms/{private}/members/{alice_id}/kick"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_ban_outlasts_invites_and_passwords_until_lifted() {
    let h = Harness::new().await;
    let (_, alice) = h.user("alice").await;
    let (bob_id, bob) = h.user("bob").await;
    let (carol_id, carol) = h.user("carol").await;

    // An invite-only room: bob is invited, joins, is banned.
    let room = h
        .room(&alice, json!({"name": "inv", "visibility": "private"}))
        .await;
    let invites = format!("/api/rooms/{room}/invites");
    let invite = |name: &str| h.post(&invites, &alice, json!({ "username": name }));
    assert_eq!(invite("bob").await.0, StatusCode::CREATED);
    assert_eq!(
        h.post(&format!("/api/rooms/{room}/join"), &bob, json!({}))
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = h
        .post(
            &format!("/api/rooms/{room}/bans/{bob_id}"),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (_, members) = h.get(&format!("/api/rooms/{room}/members"), &alice).await;
    assert_eq!(members["members"].as_array().unwrap().len(), 1);
    // A fresh invite does not lift the ban.
    assert_eq!(invite("bob").await.0, StatusCode::CREATED);
    let (status, err) = h
        .post(&format!("/api/rooms/{room}/join"), &bob, json!({}))
        .await;
    assert_eq!((status, code(&err)), (StatusCode::FORBIDDEN, "banned"));
    let (status, _) = empty_post(&h, &bob, &format!("/api/rooms/{room}/subscription-token")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Banning again is a no-op.
    let (status, _) = h
        .post(
            &format!("/api/rooms/{room}/bans/{bob_id}"),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let records = read_room_records(&h.kafka, 1, room, 3, Duration::from_secs(10));
    let left: Vec<Value> = records
        .iter()
        .filter(|(_, r)| r.kind == RecordKind::MemberLeft)
        .map(|(_, r)| serde_json::from_str(r.data.get()).unwrap())
        .collect();
    assert_eq!(left.len(), 1, "one member_left, none for the repeated ban");
    assert_eq!(left[0]["reason"], "banned");
    assert_eq!(left[0]["user"]["id"], bob_id.to_string());
    assert_eq!(left[0]["by"]["username"], "alice");

    // A password room: carol is banned before she ever joined; the right
    // password does not admit her, and the ban produced no record.
    let locked = h
        .room(
            &alice,
            json!({"name": "pw", "visibility": "private", "password": "sesame123"}),
        )
        .await;
    let (status, _) = h
        .post(
            &format!("/api/rooms/{locked}/bans/{carol_id}"),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let join_path = format!("/api/rooms/{locked}/join");
    let join = || h.post(&join_path, &carol, json!({"password": "sesame123"}));
    let (status, err) = join().await;
    assert_eq!((status, code(&err)), (StatusCode::FORBIDDEN, "banned"));
    assert_eq!(
        read_room_records(&h.kafka, 1, locked, 2, Duration::from_secs(2)).len(),
        1
    );
    // A member may not lift it; the owner may.
    let (status, err) = h
        .call(
            Method::DELETE,
            &format!("/api/rooms/{locked}/bans/{carol_id}"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "bob cannot even see it: {err}"
    );
    let (status, _) = h
        .call(
            Method::DELETE,
            &format!("/api/rooms/{locked}/bans/{carol_id}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, joined) = join().await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let (status, err) = h
        .call(
            Method::DELETE,
            &format!("/api/rooms/{locked}/bans/{bob_id}"),
            Some(&carol),
            None,
        )
        .await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::FORBIDDEN, "not_a_moderator")
    );

    // Unknown users cannot be banned.
    let (status, err) = h
        .post(
            &format!("/api/rooms/{locked}/bans/{}", Uuid::now_v7()),
            &alice,
            json!({}),
        )
        .await;
    assert_eq!(
        (status, code(&err)),
        (StatusCode::NOT_FOUND, "user_not_found")
    );
}
