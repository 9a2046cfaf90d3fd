//! The client side of the Centrifugo client protocol v2, JSON encoding.
//!
//! Commands are one JSON object each; several may share a frame, one per line.
//! The server does the same with replies and pushes. An empty object `{}` (or an
//! empty line) from the server is a ping that the client answers with `{}`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The client's answer to a server ping.
pub const PONG: &[u8] = b"{}";

/// A `connect` command.
pub fn connect_command(id: u32, token: &str, name: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id,
        "connect": {"token": token, "name": name},
    }))
    .expect("a JSON value always serializes")
}

/// A `subscribe` command for one channel with its subscription token;
/// `join_leave` asks for join and leave pushes (protocol v2's opt-in flag).
pub fn subscribe_command(id: u32, channel: &str, token: &str, join_leave: bool) -> Vec<u8> {
    let mut sub = serde_json::json!({"channel": channel, "token": token});
    if join_leave {
        sub["join_leave"] = serde_json::Value::Bool(true);
    }
    serde_json::to_vec(&serde_json::json!({"id": id, "subscribe": sub}))
        .expect("a JSON value always serializes")
}

/// The `data` of every publication the bench sends. `t` is the send time in
/// Unix nanoseconds, so the receiver can compute publish-to-deliver latency
/// without any shared state; `run` keeps other runs' messages out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenchData<'a> {
    /// What the contract requires: a non-empty string.
    pub text: &'a str,
    /// Send time, Unix nanoseconds.
    pub t: u64,
    /// Sequence number, unique per run and publisher.
    pub seq: u64,
    /// The run id.
    pub run: &'a str,
}

/// A `publish` command carrying [`BenchData`].
pub fn publish_command(id: u32, channel: &str, data: &BenchData<'_>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Publish<'a> {
        channel: &'a str,
        data: &'a BenchData<'a>,
    }
    #[derive(Serialize)]
    struct Cmd<'a> {
        id: u32,
        publish: Publish<'a>,
    }
    serde_json::to_vec(&Cmd {
        id,
        publish: Publish { channel, data },
    })
    .expect("plain structs always serialize")
}

/// An error in a reply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReplyError {
    /// The protocol error code (103 permission denied, 109 token expired, ...).
    pub code: u32,
    /// The server's text.
    #[serde(default)]
    pub message: String,
}

/// A publication push.
#[derive(Debug, Deserialize)]
pub struct Publication<'a> {
    /// The data exactly as the publisher sent it.
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
    /// The stream position in the room.
    #[serde(default, deserialize_with = "u64_from_number_or_string")]
    pub offset: u64,
}

/// A disconnect push.
#[derive(Debug, Clone, Deserialize)]
pub struct Disconnect {
    #[serde(default)]
    pub code: u32,
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Deserialize)]
struct RawPush<'a> {
    #[serde(default, borrow)]
    channel: Option<&'a str>,
    #[serde(default, borrow, rename = "pub")]
    publication: Option<Publication<'a>>,
    #[serde(default)]
    disconnect: Option<Disconnect>,
}

#[derive(Debug, Deserialize)]
struct RawReply<'a> {
    #[serde(default)]
    id: u32,
    #[serde(default)]
    error: Option<ReplyError>,
    #[serde(default, borrow)]
    push: Option<RawPush<'a>>,
}

/// One line the server sent, as far as the bench cares.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// `{}`: answer with [`PONG`].
    Ping,
    /// The reply to command `id`, successful.
    Ok { id: u32 },
    /// The reply to command `id`, failed.
    Error { id: u32, error: ReplyError },
    /// A publication in `channel`.
    Publication {
        channel: &'a str,
        publication: Publication<'a>,
    },
    /// The server is closing the connection.
    Disconnect(Disconnect),
    /// Any other push (join, leave, unsubscribe, ...).
    OtherPush,
}

/// Why a line could not be understood.
#[derive(Debug, thiserror::Error)]
#[error("bad server line: {0}")]
pub struct ParseError(#[from] serde_json::Error);

/// Parses one line of a server frame.
pub fn parse_line(line: &[u8]) -> Result<Incoming<'_>, ParseError> {
    let trimmed = line.trim_ascii();
    if trimmed.is_empty() || trimmed == b"{}" {
        return Ok(Incoming::Ping);
    }
    let reply: RawReply<'_> = serde_json::from_slice(trimmed)?;
    if let Some(push) = reply.push {
        if let Some(publication) = push.publication {
            return Ok(Incoming::Publication {
                channel: push.channel.unwrap_or(""),
                publication,
            });
        }
        if let Some(d) = push.disconnect {
            return Ok(Incoming::Disconnect(d));
        }
        return Ok(Incoming::OtherPush);
    }
    match (reply.id, reply.error) {
        (id, Some(error)) => Ok(Incoming::Error { id, error }),
        (0, None) => Ok(Incoming::OtherPush),
        (id, None) => Ok(Incoming::Ok { id }),
    }
}

/// The lines of one text frame, empty trailing line excluded.
pub fn lines(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    let frame = frame.strip_suffix(b"\n").unwrap_or(frame);
    frame.split(|b| *b == b'\n')
}

/// Parses a bench payload out of a publication's data; `None` for anything
/// that is not the bench's (member events, other clients' messages).
pub fn bench_data<'a>(data: &'a RawValue) -> Option<BenchData<'a>> {
    serde_json::from_str(data.get()).ok()
}

fn u64_from_number_or_string<'de, D>(de: D) -> Result<u64, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num<'a> {
        N(u64),
        S(&'a str),
    }
    match Num::deserialize(de)? {
        Num::N(n) => Ok(n),
        Num::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_single_line_json() {
        let c = connect_command(1, "tok", "bench");
        let v: serde_json::Value = serde_json::from_slice(&c).unwrap();
        assert_eq!(v["id"], 1);
        assert_eq!(v["connect"]["token"], "tok");
        assert_eq!(v["connect"]["name"], "bench");
        assert!(!c.contains(&b'\n'));

        let s = subscribe_command(2, "room:x", "st", false);
        let v: serde_json::Value = serde_json::from_slice(&s).unwrap();
        assert_eq!(v["subscribe"]["channel"], "room:x");
        assert_eq!(v["subscribe"]["token"], "st");
        assert!(v["subscribe"].get("join_leave").is_none());
        let s = subscribe_command(2, "room:x", "st", true);
        let v: serde_json::Value = serde_json::from_slice(&s).unwrap();
        assert_eq!(v["subscribe"]["join_leave"], true);

        let data = BenchData {
            text: "bench",
            t: 42,
            seq: 7,
            run: "r1",
        };
        let p = publish_command(3, "room:x", &data);
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["id"], 3);
        assert_eq!(v["publish"]["channel"], "room:x");
        assert_eq!(
            v["publish"]["data"],
            serde_json::json!({"text":"bench","t":42,"seq":7,"run":"r1"})
        );
    }

    #[test]
    fn pings_are_empty_objects_or_lines() {
        assert!(matches!(parse_line(b"{}").unwrap(), Incoming::Ping));
        assert!(matches!(parse_line(b"").unwrap(), Incoming::Ping));
        assert!(matches!(parse_line(b" {} \r").unwrap(), Incoming::Ping));
    }

    #[test]
    fn replies_and_errors() {
        let ok = parse_line(br#"{"id":1,"connect":{"client":"c","ping":25,"pong":true}}"#);
        assert!(matches!(ok.unwrap(), Incoming::Ok { id: 1 }));
        let ok = parse_line(br#"{"id":9,"publish":{}}"#);
        assert!(matches!(ok.unwrap(), Incoming::Ok { id: 9 }));
        match parse_line(br#"{"id":2,"error":{"code":103,"message":"permission denied"}}"#).unwrap()
        {
            Incoming::Error { id, error } => {
                assert_eq!(id, 2);
                assert_eq!(error.code, 103);
                assert_eq!(error.message, "permission denied");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn publications_carry_data_and_offset() {
        let line = br#"{"push":{"channel":"room:a","pub":{"data":{"text":"bench","t":5,"seq":1,"run":"r"},"info":{"user":"u"},"offset":17}}}"#;
        match parse_line(line).unwrap() {
            Incoming::Publication {
                channel,
                publication,
            } => {
                assert_eq!(channel, "room:a");
                assert_eq!(publication.offset, 17);
                let d = bench_data(publication.data.unwrap()).unwrap();
                assert_eq!((d.t, d.seq, d.run), (5, 1, "r"));
            }
            other => panic!("unexpected {other:?}"),
        }
        // Offsets as strings (protobuf JSON style) are accepted too.
        let line = br#"{"push":{"channel":"room:a","pub":{"data":{"text":"hi"},"offset":"18"}}}"#;
        match parse_line(line).unwrap() {
            Incoming::Publication { publication, .. } => {
                assert_eq!(publication.offset, 18);
                assert!(bench_data(publication.data.unwrap()).is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn other_pushes_and_disconnects() {
        let join = br#"{"push":{"channel":"room:a","join":{"info":{"user":"u"}}}}"#;
        assert!(matches!(parse_line(join).unwrap(), Incoming::OtherPush));
        let d = br#"{"push":{"disconnect":{"code":3501,"reason":"bad request"}}}"#;
        match parse_line(d).unwrap() {
            Incoming::Disconnect(d) => {
                assert_eq!((d.code, d.reason.as_str()), (3501, "bad request"))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(parse_line(b"{not json").is_err());
        assert!(parse_line(br#"{"id":"x"}"#).is_err());
    }

    #[test]
    fn frames_split_into_lines() {
        let frame = b"{\"id\":1,\"publish\":{}}\n{}\n{\"id\":2,\"publish\":{}}\n";
        let got: Vec<&[u8]> = lines(frame).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1], b"{}");
        let single: Vec<&[u8]> = lines(b"{}").collect();
        assert_eq!(single, vec![&b"{}"[..]]);
    }
}
