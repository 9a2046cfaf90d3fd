//! What a chat message must look like to be published (CONTRACT §4): `data`
//! is a JSON object with a non-empty string `text` of at most
//! [`MAX_TEXT_CHARS`] characters. It may carry `reply_to`, the id of the
//! message it answers (CONTRACT §7): a UUID string, or null. Whether that
//! message is in the same room is for history to say (the gateway has no
//! database); the persister stores only a well-formed id.

use crate::protocol::ProtoError;

/// The longest text a chat message may carry, in characters.
pub(crate) const MAX_TEXT_CHARS: usize = 4000;

/// Checks publication data; `max_bytes` bounds its encoded size.
pub(crate) fn validate(data: &str, max_bytes: usize) -> Result<(), ProtoError> {
    if data.len() > max_bytes {
        return Err(ProtoError::LIMIT_EXCEEDED);
    }
    let value: serde_json::Value =
        serde_json::from_str(data).map_err(|_| ProtoError::BAD_REQUEST)?;
    let object = value.as_object().ok_or(ProtoError::BAD_REQUEST)?;
    match object.get("reply_to") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(id)) if id.parse::<uuid::Uuid>().is_ok() => {}
        Some(_) => return Err(ProtoError::BAD_REQUEST),
    }
    let text = object
        .get("text")
        .and_then(|t| t.as_str())
        .ok_or(ProtoError::BAD_REQUEST)?;
    if text.is_empty() {
        return Err(ProtoError::BAD_REQUEST);
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ProtoError::LIMIT_EXCEEDED);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_validation() {
        let max = 16 * 1024;
        assert!(validate(r#"{"text":"hi"}"#, max).is_ok());
        assert!(validate(r#"{"text":"hi","extra":[1,2]}"#, max).is_ok());
        let reply = r#"{"text":"hi","reply_to":"0190a5c4-7b1e-7cc2-9f00-1a2b3c4d5e6f"}"#;
        assert!(validate(reply, max).is_ok());
        assert!(validate(r#"{"text":"hi","reply_to":null}"#, max).is_ok());
        for bad in [
            r#"{"text":""}"#,
            r#"{"text":5}"#,
            r#"{}"#,
            r#""text""#,
            "[1]",
            "null",
            r#"{"text":"hi","reply_to":"not-a-uuid"}"#,
            r#"{"text":"hi","reply_to":42}"#,
        ] {
            assert_eq!(validate(bad, max), Err(ProtoError::BAD_REQUEST), "{bad}");
        }
        let long = format!(r#"{{"text":"{}"}}"#, "é".repeat(MAX_TEXT_CHARS));
        assert!(validate(&long, max).is_ok(), "4000 characters, 8000 bytes");
        let too_long = format!(r#"{{"text":"{}"}}"#, "a".repeat(MAX_TEXT_CHARS + 1));
        assert_eq!(validate(&too_long, max), Err(ProtoError::LIMIT_EXCEEDED));
        assert_eq!(validate(&long, 100), Err(ProtoError::LIMIT_EXCEEDED));
    }
}
