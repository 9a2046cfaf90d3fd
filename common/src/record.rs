//! The one record that travels through Kafka.
//!
//! Every chat message and membership event is a [`RoomRecord`], produced to the
//! room topic with the room id as key, so that one room's records share a
//! partition and therefore one order. The broker assigns the offset; that
//! offset is the stream position clients see and the `offset` in REST history.
//!
//! The encoding is JSON with a version field `v`. Readers reject versions they
//! do not know instead of guessing.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// The record version this build writes and reads.
pub const RECORD_VERSION: u8 = 1;

/// A record's stream position is its Kafka offset plus this: "next offset"
/// semantics, as Kafka commits use. The SDKs (centrifuge-js, centrifuge-python)
/// read an offset of 0 as "no position", so the first record of a partition
/// must not be position 0. The gateway sends this position as the
/// publication `offset`, and the persister stores it as
/// `messages.stream_offset`, so REST history and the WebSocket agree.
pub const STREAM_OFFSET_SHIFT: i64 = 1;

/// The stream position of the record at `kafka_offset`.
pub fn stream_offset(kafka_offset: i64) -> i64 {
    kafka_offset + STREAM_OFFSET_SHIFT
}

/// The Kafka offset of the record at stream position `stream_offset`.
pub fn kafka_offset(stream_offset: i64) -> i64 {
    stream_offset - STREAM_OFFSET_SHIFT
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A chat message published by a member.
    Message,
    /// A user joined the room (including its creator).
    MemberJoined,
    /// A user left the room.
    MemberLeft,
}

impl RecordKind {
    /// The name used in JSON, in the database and in the REST API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::MemberJoined => "member_joined",
            Self::MemberLeft => "member_left",
        }
    }
}

impl std::str::FromStr for RecordKind {
    type Err = RecordError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "message" => Ok(Self::Message),
            "member_joined" => Ok(Self::MemberJoined),
            "member_left" => Ok(Self::MemberLeft),
            other => Err(RecordError::UnknownKind(other.to_owned())),
        }
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
}

/// Why a record could not be read or built.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("record is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("record version {0} is not supported (this build reads {RECORD_VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown record kind {0:?}")]
    UnknownKind(String),
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as i64
}

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
        }
    }

    /// A membership event. Its data is the publication clients receive:
    /// `{"type": "member_joined" | "member_left", "user": {id, username}}`.
    pub fn member_event(room_id: Uuid, user: UserRef, kind: RecordKind) -> Self {
        debug_assert!(kind != RecordKind::Message);
        let data = serde_json::json!({ "type": kind.as_str(), "user": &user });
        let data = RawValue::from_string(data.to_string()).expect("json! output is valid JSON");
        Self {
            v: RECORD_VERSION,
            id: Uuid::now_v7(),
            room_id,
            kind,
            user,
            data,
            ts_ms: now_ms(),
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
        #[derive(Deserialize)]
        struct Version {
            v: u8,
        }
        let Version { v } = serde_json::from_slice(bytes)?;
        if v != RECORD_VERSION {
            return Err(RecordError::UnsupportedVersion(v));
        }
        Ok(serde_json::from_slice(bytes)?)
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
        json["v"] = 2.into();
        assert!(matches!(
            RoomRecord::decode(json.to_string().as_bytes()),
            Err(RecordError::UnsupportedVersion(2))
        ));
        assert!(RoomRecord::decode(b"not json").is_err());
        assert!(RoomRecord::decode(br#"{"v":1}"#).is_err());
    }

    #[test]
    fn kinds_parse_and_print() {
        for k in [
            RecordKind::Message,
            RecordKind::MemberJoined,
            RecordKind::MemberLeft,
        ] {
            assert_eq!(k.as_str().parse::<RecordKind>().unwrap(), k);
        }
        assert!("bogus".parse::<RecordKind>().is_err());
    }
}
#[cfg(test)]
#[path = "record_prop_tests.rs"]
mod prop_tests;
