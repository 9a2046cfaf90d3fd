//! The records that travel through Kafka.
//!
//! Every chat message and membership event is a [`RoomRecord`], produced to the
//! room topic with the room id as key, to the partition the topic's layout
//! gives the room (see [`crate::stream`]), so that one room's records share a
//! partition and therefore one order. The broker assigns the offset; the
//! offset and the partition's incarnation give the record its stream
//! position (see [`crate::position`]).
//!
//! The first record of each partition incarnation is a [`Genesis`], keyed
//! [`GENESIS_KEY`]; it is never shown to clients or stored as a message.
//!
//! The encoding is JSON with a version field `v`. Readers reject versions they
//! do not know instead of guessing.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// The record version this build writes. It reads this one and version 1
/// (which lacks `base`).
pub const RECORD_VERSION: u8 = 2;

/// The Kafka key of genesis records.
pub const GENESIS_KEY: &[u8] = b"confab.genesis";

/// What a record is: the one vocabulary of record kinds, used in Kafka, in
/// `messages.kind` and in the REST API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A chat message published by a member.
    Message,
    /// A user joined the room (including its creator).
    MemberJoined,
    /// A user left the room (or was kicked or banned: see its data).
    MemberLeft,
    /// A message's text was changed (CONTRACT §7).
    MessageEdited,
    /// A message was deleted; it keeps its place with `data: null`.
    MessageDeleted,
    /// A user reacted to a message.
    ReactionAdded,
    /// A user took a reaction back.
    ReactionRemoved,
}

impl RecordKind {
    /// Every kind, for exhaustive tests and checks.
    pub const ALL: [Self; 7] = [
        Self::Message,
        Self::MemberJoined,
        Self::MemberLeft,
        Self::MessageEdited,
        Self::MessageDeleted,
        Self::ReactionAdded,
        Self::ReactionRemoved,
    ];

    /// The name used in JSON, in the database and in the REST API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::MemberJoined => "member_joined",
            Self::MemberLeft => "member_left",
            Self::MessageEdited => "message_edited",
            Self::MessageDeleted => "message_deleted",
            Self::ReactionAdded => "reaction_added",
            Self::ReactionRemoved => "reaction_removed",
        }
    }

    /// Whether records of this kind change an earlier message rather than
    /// being one: REST history folds them into the message they name.
    pub fn is_change(self) -> bool {
        matches!(
            self,
            Self::MessageEdited
                | Self::MessageDeleted
                | Self::ReactionAdded
                | Self::ReactionRemoved
        )
    }
}

impl std::str::FromStr for RecordKind {
    type Err = RecordError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| RecordError::UnknownKind(s.to_owned()))
    }
}

/// A user as records and the API show them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    pub id: Uuid,
    pub username: String,
}

/// One room event on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomRecord {
    /// The format version, [`RECORD_VERSION`].
    pub v: u8,
    /// Identifies the message across retries and in REST history.
    pub id: Uuid,
    pub room_id: Uuid,
    pub kind: RecordKind,
    /// The sender, or the member who joined or left.
    pub user: UserRef,
    /// The publication data, kept byte for byte as the client sent it.
    pub data: Box<RawValue>,
    /// When the producer built the record, in Unix milliseconds. Used for
    /// `created_at` and for publish-to-deliver latency.
    pub ts_ms: i64,
    /// The base of the partition incarnation the producer believed current.
    /// Readers compute positions from the log, not from this; a value that
    /// differs from theirs tells them to check the topic's layout (it may
    /// have been created again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
}

/// The first record of a partition incarnation (see [`crate::stream`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    pub v: u8,
    /// Identifies this genesis among racing ones.
    pub id: Uuid,
    /// The incarnation's base: positions of its records are `base + offset + 1`.
    pub base: u64,
    /// How many partitions rooms are spread over (the topic's layout).
    pub partitions: u32,
    pub ts_ms: i64,
}

impl Genesis {
    pub fn new(base: u64, partitions: u32) -> Self {
        Self {
            v: RECORD_VERSION,
            id: Uuid::now_v7(),
            base,
            partitions,
            ts_ms: now_ms(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Genesis always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let g: Self = serde_json::from_slice(bytes)?;
        check_version(g.v)?;
        Ok(g)
    }
}

/// Any record of the room topic.
#[derive(Debug, Clone)]
pub enum TopicRecord {
    Room(RoomRecord),
    Genesis(Genesis),
}

impl TopicRecord {
    /// Reads a Kafka record by its key and payload.
    pub fn decode(key: Option<&[u8]>, payload: &[u8]) -> Result<Self, RecordError> {
        if key == Some(GENESIS_KEY) {
            Genesis::decode(payload).map(Self::Genesis)
        } else {
            RoomRecord::decode(payload).map(Self::Room)
        }
    }
}

fn check_version(v: u8) -> Result<(), RecordError> {
    if v == 0 || v > RECORD_VERSION {
        return Err(RecordError::UnsupportedVersion(v));
    }
    Ok(())
}

/// Why a record could not be read or built.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("record version {0} is not supported (this build reads 1 to {RECORD_VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown record kind {0:?}")]
    UnknownKind(String),
}

use crate::clock::now_ms;

impl RoomRecord {
    /// A chat message. `data` must already be validated by the caller.
    pub fn message(room_id: Uuid, user: UserRef, data: Box<RawValue>) -> Self {
        Self {
            v: RECORD_VERSION,
            id: Uuid::now_v7(),
            room_id,
            kind: RecordKind::Message,
            user,
            data,
            ts_ms: now_ms(),
            base: None,
        }
    }

    /// A membership event. Its data is the publication clients receive:
    /// `{"type": "member_joined" | "member_left", "user": {id, username}}`.
    pub fn member_event(room_id: Uuid, user: UserRef, kind: RecordKind) -> Self {
        debug_assert!(kind != RecordKind::Message);
        let data = serde_json::json!({ "type": kind.as_str(), "user": &user });
        Self::event(room_id, user, kind, data)
    }

    /// An event of `kind` by `user` whose publication data is `data` (an
    /// object carrying `"type": kind`, as CONTRACT §7 and §8 give it).
    pub fn event(room_id: Uuid, user: UserRef, kind: RecordKind, data: serde_json::Value) -> Self {
        debug_assert_eq!(data["type"], kind.as_str());
        let data = RawValue::from_string(data.to_string()).expect("a Value is valid JSON");
        Self {
            v: RECORD_VERSION,
            id: Uuid::now_v7(),
            room_id,
            kind,
            user,
            data,
            ts_ms: now_ms(),
            base: None,
        }
    }

    /// The Kafka key: the room id, so a room's records share a partition.
    pub fn key(&self) -> String {
        self.room_id.to_string()
    }

    /// The Kafka payload.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a RoomRecord always serializes")
    }

    /// Reads a Kafka payload, checking the version.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        match serde_json::from_slice::<Self>(bytes) {
            Ok(record) => {
                check_version(record.v)?;
                Ok(record)
            }
            Err(err) => {
                // A record of an unknown version may not parse at all; say so
                // rather than only "missing field".
                #[derive(Deserialize)]
                struct Version {
                    v: u8,
                }
                if let Ok(Version { v }) = serde_json::from_slice(bytes) {
                    check_version(v)?;
                }
                Err(err.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserRef {
        UserRef {
            id: Uuid::new_v4(),
            username: "alice".into(),
        }
    }

    #[test]
    fn message_round_trips_with_data_bytes_intact() {
        let raw = RawValue::from_string(r#"{"text":"héllo  ✓","n":1.50}"#.into()).unwrap();
        let rec = RoomRecord::message(Uuid::new_v4(), alice(), raw);
        let back = RoomRecord::decode(&rec.encode()).unwrap();
        assert_eq!(back.data.get(), r#"{"text":"héllo  ✓","n":1.50}"#);
        assert_eq!(back.kind, RecordKind::Message);
        assert_eq!(back.id, rec.id);
        assert_eq!(back.key(), rec.room_id.to_string());
    }

    #[test]
    fn member_event_data_matches_contract() {
        let user = alice();
        let rec = RoomRecord::member_event(Uuid::new_v4(), user.clone(), RecordKind::MemberLeft);
        let data: serde_json::Value = serde_json::from_str(rec.data.get()).unwrap();
        assert_eq!(data["type"], "member_left");
        assert_eq!(data["user"]["username"], "alice");
        assert_eq!(data["user"]["id"], user.id.to_string());
    }

    #[test]
    fn unknown_version_and_garbage_are_rejected() {
        let rec = RoomRecord::message(
            Uuid::new_v4(),
            alice(),
            RawValue::from_string("{}".into()).unwrap(),
        );
        let mut json: serde_json::Value = serde_json::from_slice(&rec.encode()).unwrap();
        json["v"] = 9.into();
        assert!(matches!(
            RoomRecord::decode(json.to_string().as_bytes()),
            Err(RecordError::UnsupportedVersion(9))
        ));
        json["v"] = 1.into();
        assert!(
            RoomRecord::decode(json.to_string().as_bytes()).is_ok(),
            "version 1 is still read"
        );
        assert!(RoomRecord::decode(b"not json").is_err());
        assert!(RoomRecord::decode(br#"{"v":1}"#).is_err());
    }

    #[test]
    fn topic_records_are_told_apart_by_key() {
        let g = Genesis::new(1_700_000_000_000_000, 16);
        match TopicRecord::decode(Some(GENESIS_KEY), &g.encode()).unwrap() {
            TopicRecord::Genesis(back) => assert_eq!(back, g),
            other => panic!("{other:?}"),
        }
        let rec = RoomRecord::message(
            Uuid::new_v4(),
            alice(),
            RawValue::from_string("{}".into()).unwrap(),
        );
        let key = rec.key();
        assert!(matches!(
            TopicRecord::decode(Some(key.as_bytes()), &rec.encode()).unwrap(),
            TopicRecord::Room(_)
        ));
        assert!(TopicRecord::decode(Some(GENESIS_KEY), &rec.encode()).is_err());
        let mut stamped = rec.clone();
        stamped.base = Some(7);
        assert_eq!(RoomRecord::decode(&stamped.encode()).unwrap().base, Some(7));
    }

    #[test]
    fn kinds_parse_and_print() {
        for k in RecordKind::ALL {
            assert_eq!(k.as_str().parse::<RecordKind>().unwrap(), k);
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        assert!(RecordKind::MessageEdited.is_change());
        assert!(!RecordKind::MemberLeft.is_change());
        assert!("bogus".parse::<RecordKind>().is_err());
    }
}
#[cfg(test)]
#[path = "record_prop_tests.rs"]
mod prop_tests;
