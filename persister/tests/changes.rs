//! Change records (CONTRACT §7: edits, deletes, reactions) are applied to
//! the message they name exactly once, in stream order: reading the whole
//! topic again (a new group on the same database, as after lost offsets)
//! changes nothing, and never reverts a later edit.

mod common;

use std::time::Duration;

use common::*;
use confab_common::record::{RecordKind, RoomRecord, UserRef};
use confab_common::testing::{test_topic, TestDb};
use serde_json::{json, value::RawValue};
use uuid::Uuid;

fn user(name: &str) -> UserRef {
    UserRef {
        id: Uuid::new_v4(),
        username: name.into(),
    }
}

fn message(room: Uuid, who: &UserRef, data: serde_json::Value) -> RoomRecord {
    RoomRecord::message(
        room,
        who.clone(),
        RawValue::from_string(data.to_string()).unwrap(),
    )
}

fn edit(room: Uuid, who: &UserRef, id: Uuid, text: &str, at: &str) -> RoomRecord {
    RoomRecord::event(
        room,
        who.clone(),
        RecordKind::MessageEdited,
        json!({"type": "message_edited", "message_id": id, "text": text, "edited_at": at}),
    )
}

fn reaction(room: Uuid, who: &UserRef, id: Uuid, emoji: &str, kind: RecordKind) -> RoomRecord {
    RoomRecord::event(
        room,
        who.clone(),
        kind,
        json!({"type": kind.as_str(), "message_id": id, "emoji": emoji, "user": who}),
    )
}

fn delete(room: Uuid, who: &UserRef, id: Uuid) -> RoomRecord {
    RoomRecord::event(
        room,
        who.clone(),
        RecordKind::MessageDeleted,
        json!({"type": "message_deleted", "message_id": id}),
    )
}

/// What the database says about the messages, for comparing before and
/// after a replay.
async fn state(client: &tokio_postgres::Client) -> Vec<String> {
    let rows = client
        .query(
            "SELECT id::text || ' ' || coalesce(data::jsonb ->> 'text', '<null>') || ' '
                    || deleted || ' ' || coalesce(edited_at::text, '-') || ' '
                    || coalesce(reply_to::text, '-')
             FROM messages ORDER BY stream_offset",
            &[],
        )
        .await
        .unwrap();
    let mut out: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let rows = client
        .query(
            "SELECT message_id::text || ' ' || emoji || ' ' || user_id FROM message_reactions ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    out.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    let rows = client
        .query(
            "SELECT message_id::text || ' ' || coalesce(old_text, '<erased>') || ' -> '
                    || coalesce(new_text, '<erased>')
             FROM message_edits ORDER BY edited_at",
            &[],
        )
        .await
        .unwrap();
    out.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_apply_once_in_order_and_survive_a_replay() {
    init_tracing();
    let db = TestDb::create().await;
    // One partition: the order of the records below is the stream's.
    let kafka = test_topic(1).await;
    let producer = producer(&kafka).await;
    let room = Uuid::new_v4();
    let (ann, bob) = (user("ann"), user("bob"));
    let first_group = format!("g-{}", Uuid::new_v4().simple());
    let second_group = format!("g-{}", Uuid::new_v4().simple());

    let first = message(room, &ann, json!({"text": "helo wrold", "n": 1}));
    let second = message(room, &ann, json!({"text": "react to me"}));
    let third = message(room, &bob, json!({"text": "regret this"}));
    let reply = message(room, &bob, json!({"text": "answer", "reply_to": first.id}));
    let bad_reply = message(room, &bob, json!({"text": "x", "reply_to": "nope"}));
    let records = vec![
        first.clone(),
        second.clone(),
        third.clone(),
        reply.clone(),
        bad_reply.clone(),
        edit(room, &ann, first.id, "hello world", "2026-01-01T00:00:01Z"),
        // Someone else's edit never applies.
        edit(room, &bob, first.id, "hijacked", "2026-01-01T00:00:02Z"),
        edit(room, &ann, first.id, "hello, world", "2026-01-01T00:00:03Z"),
        reaction(room, &ann, second.id, "👍", RecordKind::ReactionAdded),
        reaction(room, &bob, second.id, "👍", RecordKind::ReactionAdded),
        reaction(room, &bob, second.id, "👍", RecordKind::ReactionAdded),
        reaction(room, &bob, second.id, ":tada:", RecordKind::ReactionAdded),
        reaction(room, &ann, second.id, "👍", RecordKind::ReactionRemoved),
        edit(
            room,
            &bob,
            third.id,
            "regret this more",
            "2026-01-01T00:00:04Z",
        ),
        reaction(room, &ann, third.id, "👍", RecordKind::ReactionAdded),
        delete(room, &ann, third.id),
        // After the delete nothing applies to it.
        edit(
            room,
            &bob,
            third.id,
            "back from the dead",
            "2026-01-01T00:00:05Z",
        ),
        reaction(room, &ann, third.id, "🎉", RecordKind::ReactionAdded),
        // A change naming another room's message, or no message, is dropped.
        delete(Uuid::new_v4(), &ann, first.id),
        delete(room, &ann, Uuid::new_v4()),
    ];
    let changes = records.iter().filter(|r| r.kind.is_change()).count() as i64;
    let produced = produce(&producer, &kafka.topic, records).await;

    let instance = Instance::start(config(&kafka, &db.url, &first_group)).await;
    let client = common::db(&db.url).await;
    wait_for(
        "every change in the ledger",
        Duration::from_secs(60),
        || {
            let client = &client;
            async move { count(client, "message_changes").await == changes }
        },
    )
    .await;
    wait_for_commits(&kafka, &first_group, 1, &ends(&produced)).await;
    instance.stop().await.expect("clean stop");

    let get = |id: Uuid| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT data::text, deleted, edited_at IS NOT NULL, reply_to FROM messages WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap()
        }
    };
    let row = get(first.id).await;
    let data: serde_json::Value = serde_json::from_str(row.get::<_, &str>(0)).unwrap();
    assert_eq!(
        data,
        json!({"text": "hello, world", "n": 1}),
        "the last edit wins, other fields stay"
    );
    assert!(row.get::<_, bool>(2));
    assert!(!row.get::<_, bool>(1));
    let row = get(third.id).await;
    assert_eq!(
        row.get::<_, Option<&str>>(0),
        None,
        "a deleted message's data is erased"
    );
    assert!(row.get::<_, bool>(1));
    assert_eq!(
        get(reply.id).await.get::<_, Option<Uuid>>(3),
        Some(first.id)
    );
    assert_eq!(get(bad_reply.id).await.get::<_, Option<Uuid>>(3), None);

    let reactions = client
        .query(
            "SELECT emoji, user_id FROM message_reactions ORDER BY created_at, emoji",
            &[],
        )
        .await
        .unwrap();
    let reactions: Vec<(String, Uuid)> = reactions.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        reactions
            .iter()
            .filter(|(e, u)| e == "👍" && *u == bob.id)
            .count(),
        1,
        "reacting twice is one reaction"
    );
    assert!(reactions.iter().any(|(e, u)| e == ":tada:" && *u == bob.id));
    assert!(
        !reactions.iter().any(|(_, u)| *u == ann.id),
        "{reactions:?}"
    );
    assert_eq!(reactions.len(), 2, "{reactions:?}");

    // The edit history: who, when, from what; erased for the deleted message.
    let edits = client
        .query(
            "SELECT message_id, user_id, old_text, new_text FROM message_edits ORDER BY edited_at",
            &[],
        )
        .await
        .unwrap();
    let edits: Vec<(Uuid, Uuid, Option<String>, Option<String>)> = edits
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        edits,
        vec![
            (
                first.id,
                ann.id,
                Some("helo wrold".into()),
                Some("hello world".into())
            ),
            (
                first.id,
                ann.id,
                Some("hello world".into()),
                Some("hello, world".into())
            ),
            (third.id, bob.id, None, None),
        ]
    );

    // Read the whole topic again, as a persister that lost its offsets
    // would: nothing changes.
    let before = state(&client).await;
    let again = Instance::start(config(&kafka, &db.url, &second_group)).await;
    wait_for_commits(&kafka, &second_group, 1, &ends(&produced)).await;
    again.stop().await.expect("clean stop");
    assert_eq!(state(&client).await, before);
}
