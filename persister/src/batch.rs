//! Turning Kafka records into rows, and rows into one columnar batch.

use std::collections::BTreeMap;

use confab_common::position::Position;
use confab_common::record::{RecordError, RecordKind, RoomRecord, TopicRecord};
use time::OffsetDateTime;
use uuid::Uuid;

/// One record read from the topic, ready to store.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) body: Body,
}

/// What a record becomes in the database.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    /// A row of `messages`.
    Row(Row),
    /// A change of an earlier message (CONTRACT §7).
    Change(Change),
    /// A row of `dead_letters`.
    Dead(DeadLetter),
    /// Nothing: a genesis, which only opens an incarnation.
    Skip,
}

/// A good record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) room_id: Uuid,
    pub(crate) id: Uuid,
    pub(crate) kind: &'static str,
    pub(crate) user_id: Uuid,
    pub(crate) username: String,
    /// The data exactly as the record carried it.
    pub(crate) data: String,
    pub(crate) created_at: OffsetDateTime,
    /// The producer's clock, for the publish-to-persist latency.
    pub(crate) ts_ms: i64,
    /// The record's stream position.
    pub(crate) position: Position,
}

/// What a change record does to the message it names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ChangeOp {
    /// The message's text becomes `text`, edited at `edited_at`.
    Edit {
        text: String,
        edited_at: OffsetDateTime,
    },
    /// The message is deleted: its data is erased.
    Delete,
    /// The record's user reacted with `emoji`.
    React { emoji: String },
    /// The record's user took back their `emoji` reaction.
    Unreact { emoji: String },
}

/// A change record: applied to its message once, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    /// The change record's id: the key that makes applying it idempotent.
    pub(crate) id: Uuid,
    pub(crate) room_id: Uuid,
    pub(crate) message_id: Uuid,
    /// Who made the change.
    pub(crate) user_id: Uuid,
    pub(crate) op: ChangeOp,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) ts_ms: i64,
    pub(crate) position: Position,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

impl Change {
    /// The record kind, as `message_changes.kind` stores it.
    pub(crate) fn kind(&self) -> &'static str {
        match self.op {
            ChangeOp::Edit { .. } => RecordKind::MessageEdited.as_str(),
            ChangeOp::Delete => RecordKind::MessageDeleted.as_str(),
            ChangeOp::React { .. } => RecordKind::ReactionAdded.as_str(),
            ChangeOp::Unreact { .. } => RecordKind::ReactionRemoved.as_str(),
        }
    }
}

/// A record that cannot be stored as a message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeadLetter {
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) error: String,
}

/// Reads one Kafka record at `position` (`None`: its partition is outside
/// the topic's layout).
///
/// A record is poison, and goes to `dead_letters`, when it has no payload or
/// no key, does not decode as a record of a known version, has a timestamp
/// out of range, has a key other than its room id, or sits in a partition
/// outside the layout. The key check keeps every room in the one partition
/// that orders it.
#[cfg(test)]
pub(crate) fn decode(
    partition: i32,
    offset: i64,
    position: Option<Position>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
) -> Entry {
    let decoded = payload.map(|b| TopicRecord::decode(key, b));
    entry(partition, offset, position, key, payload, decoded)
}

/// [`decode`], for a record whose payload the caller already decoded.
pub(crate) fn entry(
    partition: i32,
    offset: i64,
    position: Option<Position>,
    key: Option<&[u8]>,
    payload: Option<&[u8]>,
    decoded: Option<Result<TopicRecord, RecordError>>,
) -> Entry {
    let body = match decode_body(position, key, decoded) {
        Ok(Some(Decoded::Row(row))) => Body::Row(row),
        Ok(Some(Decoded::Change(mut change))) => {
            change.partition = partition;
            change.offset = offset;
            Body::Change(change)
        }
        Ok(None) => Body::Skip,
        Err(error) => Body::Dead(DeadLetter {
            key: key.map(<[u8]>::to_vec),
            payload: payload.map(<[u8]>::to_vec),
            error: clean_text(&error),
        }),
    };
    Entry {
        partition,
        offset,
        body,
    }
}

enum Decoded {
    Row(Row),
    Change(Change),
}

fn decode_body(
    position: Option<Position>,
    key: Option<&[u8]>,
    decoded: Option<Result<TopicRecord, RecordError>>,
) -> Result<Option<Decoded>, String> {
    let decoded = decoded.ok_or("record has no payload")?;
    let record = match decoded.map_err(|e| e.to_string())? {
        TopicRecord::Genesis(_) => return Ok(None),
        TopicRecord::Room(r) => r,
    };
    let position = position.ok_or("the record's partition is outside the topic's layout")?;
    let key = key.ok_or("record has no key")?;
    if key != record.room_id.to_string().as_bytes() {
        return Err(format!(
            "record key {:?} is not its room id {}",
            String::from_utf8_lossy(key),
            record.room_id
        ));
    }
    let created_at =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(record.ts_ms) * 1_000_000)
            .map_err(|e| format!("ts_ms {} is out of range: {e}", record.ts_ms))?;
    if record.kind.is_change() {
        return change(&record, created_at, position).map(|c| Some(Decoded::Change(c)));
    }
    Ok(Some(Decoded::Row(row(record, created_at, position))))
}

/// The fields of a change record's data (CONTRACT §7).
#[derive(serde::Deserialize)]
struct ChangeData {
    message_id: Uuid,
    #[serde(default)]
    text: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    edited_at: Option<OffsetDateTime>,
    #[serde(default)]
    emoji: Option<String>,
}

fn change(
    record: &RoomRecord,
    created_at: OffsetDateTime,
    position: Position,
) -> Result<Change, String> {
    let data: ChangeData = serde_json::from_str(record.data.get())
        .map_err(|e| format!("{} data: {e}", record.kind.as_str()))?;
    let missing = |field: &str| format!("{} data has no {field}", record.kind.as_str());
    let op = match record.kind {
        RecordKind::MessageEdited => ChangeOp::Edit {
            text: clean_text(&data.text.ok_or_else(|| missing("text"))?),
            edited_at: data.edited_at.unwrap_or(created_at),
        },
        RecordKind::MessageDeleted => ChangeOp::Delete,
        RecordKind::ReactionAdded => ChangeOp::React {
            emoji: clean_text(&data.emoji.ok_or_else(|| missing("emoji"))?),
        },
        RecordKind::ReactionRemoved => ChangeOp::Unreact {
            emoji: clean_text(&data.emoji.ok_or_else(|| missing("emoji"))?),
        },
        other => return Err(format!("{} is not a change", other.as_str())),
    };
    Ok(Change {
        id: record.id,
        room_id: record.room_id,
        message_id: data.message_id,
        user_id: record.user.id,
        op,
        created_at,
        ts_ms: record.ts_ms,
        position,
        partition: 0,
        offset: 0,
    })
}

fn row(record: RoomRecord, created_at: OffsetDateTime, position: Position) -> Row {
    Row {
        room_id: record.room_id,
        id: record.id,
        kind: record.kind.as_str(),
        user_id: record.user.id,
        username: record.user.username,
        data: Box::<str>::from(record.data).into_string(),
        created_at,
        ts_ms: record.ts_ms,
        position,
    }
}

/// `text` without NUL characters, which PostgreSQL's text type refuses.
pub(crate) fn clean_text(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

/// A closed batch in the column layout the insert statement takes.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) rows: Rows,
    pub(crate) dead: DeadRows,
    /// Per partition, the offset to commit once this batch is stored: one
    /// past its last record.
    pub(crate) next_offsets: BTreeMap<i32, i64>,
    /// The producers' timestamps of the good records.
    pub(crate) ts_ms: Vec<i64>,
    /// Change records, in stream order: applied after `rows` (a change
    /// always names an earlier message), one after another.
    pub(crate) changes: Vec<Change>,
}

/// Columns of `messages`.
#[derive(Debug, Default, Clone)]
pub(crate) struct Rows {
    pub(crate) room_id: Vec<Uuid>,
    pub(crate) stream_offset: Vec<i64>,
    pub(crate) id: Vec<Uuid>,
    pub(crate) kind: Vec<&'static str>,
    pub(crate) user_id: Vec<Uuid>,
    pub(crate) username: Vec<String>,
    pub(crate) data: Vec<String>,
    pub(crate) created_at: Vec<OffsetDateTime>,
    pub(crate) partition: Vec<i32>,
    /// Kafka offsets, for dead letters of refused rows.
    pub(crate) offset: Vec<i64>,
}

impl Rows {
    pub(crate) fn len(&self) -> usize {
        self.room_id.len()
    }

    fn push(&mut self, partition: i32, row: Row) {
        self.room_id.push(row.room_id);
        self.stream_offset.push(row.position.to_db());
        self.id.push(row.id);
        self.kind.push(row.kind);
        self.user_id.push(row.user_id);
        self.username.push(row.username);
        self.data.push(row.data);
        self.created_at.push(row.created_at);
        self.partition.push(partition);
    }

    fn push_offset(&mut self, offset: i64) {
        self.offset.push(offset);
    }

    /// Row `i` alone, to find which row the database refuses.
    pub(crate) fn single(&self, i: usize) -> Rows {
        Rows {
            room_id: vec![self.room_id[i]],
            stream_offset: vec![self.stream_offset[i]],
            id: vec![self.id[i]],
            kind: vec![self.kind[i]],
            user_id: vec![self.user_id[i]],
            username: vec![self.username[i].clone()],
            data: vec![self.data[i].clone()],
            created_at: vec![self.created_at[i]],
            partition: vec![self.partition[i]],
            offset: vec![self.offset[i]],
        }
    }
}

/// Columns of `dead_letters` (the topic is a statement parameter).
#[derive(Debug, Default, Clone)]
pub(crate) struct DeadRows {
    pub(crate) partition: Vec<i32>,
    pub(crate) offset: Vec<i64>,
    pub(crate) key: Vec<Option<Vec<u8>>>,
    pub(crate) payload: Vec<Option<Vec<u8>>>,
    pub(crate) error: Vec<String>,
}

impl DeadRows {
    pub(crate) fn len(&self) -> usize {
        self.partition.len()
    }

    pub(crate) fn push(&mut self, partition: i32, offset: i64, dead: DeadLetter) {
        self.partition.push(partition);
        self.offset.push(offset);
        self.key.push(dead.key);
        self.payload.push(dead.payload);
        self.error.push(dead.error);
    }
}

impl Batch {
    /// Builds a batch. Rows are sorted by their id so that two writers whose
    /// batches overlap (a partition moving between instances) take row locks
    /// in the same order and cannot deadlock.
    pub(crate) fn build(entries: impl IntoIterator<Item = Entry>) -> Batch {
        let mut batch = Batch::default();
        let mut rows = Vec::new();
        for entry in entries {
            let next = batch.next_offsets.entry(entry.partition).or_insert(0);
            *next = (*next).max(entry.offset + 1);
            match entry.body {
                Body::Row(row) => rows.push((entry.partition, entry.offset, row)),
                Body::Change(change) => {
                    batch.ts_ms.push(change.ts_ms);
                    batch.changes.push(change);
                }
                Body::Dead(dead) => batch.dead.push(entry.partition, entry.offset, dead),
                Body::Skip => {}
            }
        }
        rows.sort_by_key(|(_, _, row)| row.id);
        batch.ts_ms.reserve(rows.len());
        for (partition, offset, row) in rows {
            batch.ts_ms.push(row.ts_ms);
            batch.rows.push(partition, row);
            batch.rows.push_offset(offset);
        }
        batch
    }

    /// The number of records in the batch, good and poison.
    pub(crate) fn len(&self) -> usize {
        self.rows.len() + self.changes.len() + self.dead.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_common::record::UserRef;
    use serde_json::value::RawValue;

    fn record(room: Uuid, data: &str) -> RoomRecord {
        RoomRecord::message(
            room,
            UserRef {
                id: Uuid::new_v4(),
                username: "ann".into(),
            },
            RawValue::from_string(data.into()).unwrap(),
        )
    }

    #[test]
    fn good_record_keeps_data_bytes_and_fields() {
        let room = Uuid::new_v4();
        let rec = record(room, r#"{"text" : "hi  ✓", "n":1.50}"#);
        let e = decode(
            3,
            42,
            Some(Position(1_043)),
            Some(rec.key().as_bytes()),
            Some(&rec.encode()),
        );
        assert_eq!((e.partition, e.offset), (3, 42));
        let Body::Row(row) = e.body else {
            panic!("expected a row: {e:?}")
        };
        assert_eq!(row.data, r#"{"text" : "hi  ✓", "n":1.50}"#);
        assert_eq!(row.room_id, room);
        assert_eq!(row.id, rec.id);
        assert_eq!(row.user_id, rec.user.id);
        assert_eq!(row.username, "ann");
        assert_eq!(row.kind, "message");
        assert_eq!(row.position, Position(1_043));
        assert_eq!(
            row.created_at.unix_timestamp_nanos(),
            i128::from(rec.ts_ms) * 1_000_000
        );
    }

    #[test]
    fn poison_records_become_dead_letters() {
        let room = Uuid::new_v4();
        let rec = record(room, "{}");
        let mut wrong_version: serde_json::Value = serde_json::from_slice(&rec.encode()).unwrap();
        wrong_version["v"] = 9.into();
        let wrong_version = wrong_version.to_string();
        let mut far_future: serde_json::Value = serde_json::from_slice(&rec.encode()).unwrap();
        far_future["ts_ms"] = i64::MAX.into();
        let far_future = far_future.to_string();
        let key = rec.key();
        let other_key = Uuid::new_v4().to_string();
        let encoded = rec.encode();
        type Case<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, &'a str);
        let cases: Vec<Case<'_>> = vec![
            (Some(key.as_bytes()), Some(b"not json"), "not valid JSON"),
            (Some(key.as_bytes()), None, "no payload"),
            (None, Some(&encoded), "no key"),
            (
                Some(other_key.as_bytes()),
                Some(&encoded),
                "is not its room id",
            ),
            (
                Some(key.as_bytes()),
                Some(wrong_version.as_bytes()),
                "version 9",
            ),
            (
                Some(key.as_bytes()),
                Some(far_future.as_bytes()),
                "out of range",
            ),
        ];
        for (k, p, why) in cases {
            let e = decode(0, 7, Some(Position(8)), k, p);
            let Body::Dead(dead) = e.body else {
                panic!("expected a dead letter for {why}")
            };
            assert!(dead.error.contains(why), "{} vs {why}", dead.error);
            assert_eq!(dead.key.as_deref(), k);
            assert_eq!(dead.payload.as_deref(), p);
        }
        let e = decode(9, 7, None, Some(key.as_bytes()), Some(&encoded));
        let Body::Dead(dead) = e.body else {
            panic!("a partition outside the layout")
        };
        assert!(dead.error.contains("outside the topic's layout"));
        let genesis = confab_common::record::Genesis::new(5, 4);
        let e = decode(
            0,
            0,
            Some(Position(6)),
            Some(confab_common::record::GENESIS_KEY),
            Some(&genesis.encode()),
        );
        assert!(matches!(e.body, Body::Skip));
    }

    #[test]
    fn batch_tracks_next_offsets_and_sorts_rows() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let entry = |p, o, room| {
            let rec = record(room, "{}");
            let position = Position(1_000 * (p as u64 + 1) + o as u64 + 1);
            decode(
                p,
                o,
                Some(position),
                Some(rec.key().as_bytes()),
                Some(&rec.encode()),
            )
        };
        let genesis = confab_common::record::Genesis::new(5, 4);
        let batch = Batch::build(vec![
            entry(0, 10, b),
            entry(1, 5, a),
            decode(0, 11, Some(Position(1_012)), None, Some(b"x")),
            entry(0, 12, a),
            entry(1, 6, a),
            decode(
                2,
                0,
                Some(Position(3_001)),
                Some(confab_common::record::GENESIS_KEY),
                Some(&genesis.encode()),
            ),
        ]);
        assert_eq!(batch.len(), 5, "the genesis is no row");
        assert_eq!(batch.rows.len(), 4);
        assert_eq!(batch.dead.len(), 1);
        assert_eq!(batch.dead.offset, vec![11]);
        assert_eq!(
            batch.next_offsets,
            BTreeMap::from([(0, 13), (1, 7), (2, 1)])
        );
        // Rows are sorted by id (ids are time-ordered, so in creation order).
        let mut sorted = batch.rows.id.clone();
        sorted.sort();
        assert_eq!(batch.rows.id, sorted);
        let mut keys: Vec<_> = batch
            .rows
            .room_id
            .iter()
            .zip(&batch.rows.stream_offset)
            .zip(&batch.rows.offset)
            .map(|((r, p), o)| (*r, *p, *o))
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![(a, 1_013, 12), (a, 2_006, 5), (a, 2_007, 6), (b, 1_011, 10)]
        );
        let one = batch.rows.single(2);
        assert_eq!(one.len(), 1);
        assert_eq!(one.offset, vec![batch.rows.offset[2]]);
    }
}
