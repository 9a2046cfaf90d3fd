//! Changing messages (CONTRACT §7): edit, delete, react, take a reaction back.
//!
//! # How a change runs
//!
//! The checks read the database (the room, the caller's role, the message as
//! the persister stored it). Then the change is produced as one record on the
//! room's partition (kinds `message_edited`, `message_deleted`,
//! `reaction_added`, `reaction_removed` of `confab_common::record`) and the
//! call is answered once the broker has acknowledged it. auth-api writes no
//! row: the persister applies the record to the message exactly once (see
//! `persister/src/store.rs`), so the change is ordered with the messages
//! around it, reaches every gateway and subscriber, is part of recovery and
//! shows in history within a short time. No pooled connection is held while
//! the broker is waited for, and while it is known to be down the calls fail
//! at once with 503 (the same gate as membership changes).
//!
//! A change that the database does not show yet (a message whose delete is
//! still on its way, say) can pass the checks; the persister then drops what
//! no longer applies (an edit of a deleted message, a reaction to one), and
//! clients do the same with the live events.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use confab_common::record::{RecordKind, RoomRecord, UserRef};
use serde_json::json;
use time::OffsetDateTime;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, AuthUser};
use crate::history::{message, with_reactions, COLUMNS};
use crate::model::{EditMessage, Message};
use crate::AppState;

/// The longest text a message may have, in characters (as the gateway's).
pub const MAX_TEXT_CHARS: usize = 4000;

/// The longest `:short_name:` reaction, colons included.
pub const MAX_SHORT_NAME_CHARS: usize = 32;

/// `{id}` and `{message_id}` of a message path. Anything that is not a UUID
/// names nothing: 404.
#[derive(Debug, Clone, Copy)]
pub struct MessagePath {
    pub room: Uuid,
    pub message: Uuid,
}

/// [`MessagePath`] plus the `{emoji}` of a reaction path.
#[derive(Debug, Clone)]
pub struct ReactionPath {
    pub room: Uuid,
    pub message: Uuid,
    pub emoji: String,
}

async fn path_params<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
) -> Result<HashMap<String, String>, ApiError> {
    Path::<HashMap<String, String>>::from_request_parts(parts, state)
        .await
        .map(|Path(p)| p)
        .map_err(|_| ApiError::room_not_found())
}

fn ids(params: &HashMap<String, String>) -> Result<(Uuid, Uuid), ApiError> {
    let room = params
        .get("id")
        .and_then(|s| s.parse().ok())
        .ok_or_else(ApiError::room_not_found)?;
    let message = params
        .get("message_id")
        .and_then(|s| s.parse().ok())
        .ok_or_else(message_not_found)?;
    Ok((room, message))
}

impl<S: Send + Sync> FromRequestParts<S> for MessagePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = path_params(parts, state).await?;
        let (room, message) = ids(&params)?;
        Ok(Self { room, message })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ReactionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let params = path_params(parts, state).await?;
        let (room, message) = ids(&params)?;
        let emoji = params.get("emoji").cloned().unwrap_or_default();
        Ok(Self {
            room,
            message,
            emoji,
        })
    }
}

fn message_not_found() -> ApiError {
    ApiError::not_found("message_not_found", "no such message in this room")
}

fn message_deleted() -> ApiError {
    ApiError::conflict("message_deleted", "the message was deleted")
}

/// Whether `emoji` is one emoji (any sequence Unicode lists, with skin tones
/// and joiners) or a `:short_name:` of at most [`MAX_SHORT_NAME_CHARS`]
/// characters of `[A-Za-z0-9_+-]`.
pub fn valid_emoji(emoji: &str) -> bool {
    if let Some(name) = emoji
        .strip_prefix(':')
        .and_then(|rest| rest.strip_suffix(':'))
    {
        return !name.is_empty()
            && emoji.len() <= MAX_SHORT_NAME_CHARS
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-'));
    }
    emojis::get(emoji).is_some()
}

fn check_emoji(emoji: &str) -> Result<(), ApiError> {
    if valid_emoji(emoji) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_emoji",
            format!("emoji must be one emoji or a :short_name: of at most {MAX_SHORT_NAME_CHARS} characters"),
        ))
    }
}

/// What the checks need to know: the caller's standing in the room and the
/// message.
struct Target {
    /// The caller is the room's owner or one of its moderators.
    moderates: bool,
    message: Message,
}

/// Loads the room and the message for `caller`: 404 for an invisible room
/// or a message that is not a chat message of the room, 403 for a visible
/// room the caller is not a member of.
async fn load(
    conn: &tokio_postgres::Client,
    room: Uuid,
    message_id: Uuid,
    caller: Uuid,
) -> Result<Target, ApiError> {
    let sql = format!(
        "SELECT {COLUMNS},
                r.visibility = 'public',
                EXISTS (SELECT 1 FROM room_invites i WHERE i.room_id = r.id AND i.user_id = $2),
                (SELECT role FROM room_members rm WHERE rm.room_id = r.id AND rm.user_id = $2),
                r.owner_id = $2,
                m.id IS NOT NULL
         FROM rooms r
         LEFT JOIN messages m ON m.id = $3 AND m.room_id = r.id AND m.kind = 'message'
         WHERE r.id = $1"
    );
    let rows = conn
        .query_typed(
            &sql,
            &[
                (&room, Type::UUID),
                (&caller, Type::UUID),
                (&message_id, Type::UUID),
            ],
        )
        .await?;
    let row = rows.first().ok_or_else(ApiError::room_not_found)?;
    // The room's columns follow the message's.
    let at = crate::history::COLUMN_COUNT;
    let (public, invited): (bool, bool) = (row.get(at), row.get(at + 1));
    let role: Option<&str> = row.get(at + 2);
    let owner: bool = row.get(at + 3);
    let Some(role) = role else {
        return Err(if public || invited {
            ApiError::not_a_member()
        } else {
            ApiError::room_not_found()
        });
    };
    let found: bool = row.get(at + 4);
    if !found {
        return Err(message_not_found());
    }
    let message = message(row)?;
    Ok(Target {
        moderates: owner || matches!(role, "owner" | "moderator"),
        message,
    })
}

/// Produces `record` once the broker gate admits it and waits for the
/// broker's acknowledgement.
async fn produce(state: &AppState, record: &RoomRecord) -> Result<(), ApiError> {
    state.broker_gate().admit()?;
    let published = state.events().publish(record).await;
    state.broker_gate().record(published.is_ok());
    published.map(|_| ())
}

fn user_ref(caller: &AuthUser) -> UserRef {
    UserRef {
        id: caller.id,
        username: caller.username.clone(),
    }
}

/// Edits a message's text. Only its author may; a deleted message cannot be.
#[utoipa::path(
    patch, path = "/api/rooms/{id}/messages/{message_id}", tag = "messages",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Room id"),
        ("message_id" = Uuid, Path, description = "Message id"),
    ),
    request_body = EditMessage,
    responses(
        (status = 200, description = "The message with its new text (history shows it within a short time)", body = Message),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 403, description = "Not a member (`not_a_member`), or not the author (`not_author`)", body = ErrorBody),
        (status = 404, description = "No such room or message (`room_not_found`, `message_not_found`)", body = ErrorBody),
        (status = 409, description = "The message was deleted (`message_deleted`)", body = ErrorBody),
        (status = 422, description = "Empty or over 4000 characters (`invalid_text`), or the wrong shape (`invalid_body`)", body = ErrorBody),
        (status = 503, description = "The broker did not acknowledge the change (`broker_unavailable`)", body = ErrorBody),
    )
)]
pub async fn edit(
    State(state): State<AppState>,
    caller: AuthUser,
    path: MessagePath,
    ApiJson(body): ApiJson<EditMessage>,
) -> Result<Json<Message>, ApiError> {
    let chars = body.text.chars().count();
    if body.text.trim().is_empty() || chars > MAX_TEXT_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_text",
            format!("text must be 1 to {MAX_TEXT_CHARS} characters, not only whitespace"),
        ));
    }
    let mut target = {
        let conn = state.db().await?;
        let mut target = load(&conn, path.room, path.message, caller.id).await?;
        if target.message.user.id != caller.id {
            return Err(ApiError::forbidden(
                "not_author",
                "only the author edits a message",
            ));
        }
        if target.message.deleted {
            return Err(message_deleted());
        }
        with_reactions(&conn, std::slice::from_mut(&mut target.message), caller.id).await?;
        target
    };
    let edited_at = now_rfc3339();
    let data = json!({
        "type": RecordKind::MessageEdited.as_str(),
        "message_id": path.message,
        "text": body.text,
        "edited_at": edited_at
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(ApiError::internal)?,
    });
    let record = RoomRecord::event(
        path.room,
        user_ref(&caller),
        RecordKind::MessageEdited,
        data,
    );
    produce(&state, &record).await?;
    let message = &mut target.message;
    message.data = Some(replace_text(message.data.as_deref(), &body.text)?);
    message.edited_at = Some(edited_at);
    Ok(Json(target.message))
}

/// The current time at the precision records carry (microseconds), so the
/// live event, the answer and history show the same `edited_at`.
fn now_rfc3339() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}

/// `data` with its `text` replaced, as the persister does.
fn replace_text(
    data: Option<&serde_json::value::RawValue>,
    text: &str,
) -> Result<Box<serde_json::value::RawValue>, ApiError> {
    let mut value: serde_json::Map<String, serde_json::Value> = match data {
        Some(raw) => serde_json::from_str(raw.get()).map_err(ApiError::internal)?,
        None => serde_json::Map::new(),
    };
    value.insert("text".into(), text.into());
    serde_json::value::to_raw_value(&value).map_err(ApiError::internal)
}

/// Deletes a message: its author, the room's owner and its moderators may.
/// It keeps its place in history with `data: null`. Deleting a deleted
/// message is a no-op.
#[utoipa::path(
    delete, path = "/api/rooms/{id}/messages/{message_id}", tag = "messages",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Room id"),
        ("message_id" = Uuid, Path, description = "Message id"),
    ),
    responses(
        (status = 204, description = "Deleted (history shows it within a short time)"),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 403, description = "Not a member (`not_a_member`), or neither author, owner nor moderator (`not_allowed`)", body = ErrorBody),
        (status = 404, description = "No such room or message (`room_not_found`, `message_not_found`)", body = ErrorBody),
        (status = 503, description = "The broker did not acknowledge the change (`broker_unavailable`)", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: AuthUser,
    path: MessagePath,
) -> Result<StatusCode, ApiError> {
    let target = {
        let conn = state.db().await?;
        load(&conn, path.room, path.message, caller.id).await?
    };
    if target.message.user.id != caller.id && !target.moderates {
        return Err(ApiError::forbidden(
            "not_allowed",
            "only the author, the room's owner and its moderators delete a message",
        ));
    }
    if target.message.deleted {
        return Ok(StatusCode::NO_CONTENT);
    }
    let data = json!({
        "type": RecordKind::MessageDeleted.as_str(),
        "message_id": path.message,
    });
    let record = RoomRecord::event(
        path.room,
        user_ref(&caller),
        RecordKind::MessageDeleted,
        data,
    );
    produce(&state, &record).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether `caller` has reacted to `message` with `emoji`.
async fn has_reacted(
    conn: &tokio_postgres::Client,
    message: Uuid,
    caller: Uuid,
    emoji: &str,
) -> Result<bool, ApiError> {
    let rows = conn
        .query_typed(
            "SELECT 1 FROM message_reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3",
            &[
                (&message, Type::UUID),
                (&caller, Type::UUID),
                (&emoji, Type::TEXT),
            ],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// Produces a reaction change of `kind` unless `wanted` says the caller's
/// reaction already is (for adds) or is not (for removals) there.
async fn react_change(
    state: AppState,
    caller: AuthUser,
    path: ReactionPath,
    kind: RecordKind,
) -> Result<StatusCode, ApiError> {
    check_emoji(&path.emoji)?;
    {
        let conn = state.db().await?;
        let target = load(&conn, path.room, path.message, caller.id).await?;
        let reacted = has_reacted(&conn, path.message, caller.id, &path.emoji).await?;
        match kind {
            RecordKind::ReactionAdded if target.message.deleted => return Err(message_deleted()),
            RecordKind::ReactionAdded if reacted => return Ok(StatusCode::NO_CONTENT),
            RecordKind::ReactionRemoved if !reacted => return Ok(StatusCode::NO_CONTENT),
            _ => {}
        }
    }
    let user = user_ref(&caller);
    let data = json!({
        "type": kind.as_str(),
        "message_id": path.message,
        "emoji": path.emoji,
        "user": &user,
    });
    let record = RoomRecord::event(path.room, user, kind, data);
    produce(&state, &record).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Reacts to a message. Reacting twice with the same emoji is a no-op.
#[utoipa::path(
    put, path = "/api/rooms/{id}/messages/{message_id}/reactions/{emoji}", tag = "messages",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Room id"),
        ("message_id" = Uuid, Path, description = "Message id"),
        ("emoji" = String, Path, description = "One emoji (percent-encoded) or a `:short_name:` of at most 32 characters"),
    ),
    responses(
        (status = 204, description = "The caller has reacted with this emoji"),
        (status = 400, description = "Not one emoji or `:short_name:` (`invalid_emoji`)", body = ErrorBody),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 403, description = "Not a member (`not_a_member`)", body = ErrorBody),
        (status = 404, description = "No such room or message (`room_not_found`, `message_not_found`)", body = ErrorBody),
        (status = 409, description = "The message was deleted (`message_deleted`)", body = ErrorBody),
        (status = 503, description = "The broker did not acknowledge the change (`broker_unavailable`)", body = ErrorBody),
    )
)]
pub async fn react(
    State(state): State<AppState>,
    caller: AuthUser,
    path: ReactionPath,
) -> Result<StatusCode, ApiError> {
    react_change(state, caller, path, RecordKind::ReactionAdded).await
}

/// Takes the caller's reaction back. A reaction that is not there is a no-op.
#[utoipa::path(
    delete, path = "/api/rooms/{id}/messages/{message_id}/reactions/{emoji}", tag = "messages",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Room id"),
        ("message_id" = Uuid, Path, description = "Message id"),
        ("emoji" = String, Path, description = "One emoji (percent-encoded) or a `:short_name:` of at most 32 characters"),
    ),
    responses(
        (status = 204, description = "The caller has no reaction with this emoji"),
        (status = 400, description = "Not one emoji or `:short_name:` (`invalid_emoji`)", body = ErrorBody),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 403, description = "Not a member (`not_a_member`)", body = ErrorBody),
        (status = 404, description = "No such room or message (`room_not_found`, `message_not_found`)", body = ErrorBody),
        (status = 503, description = "The broker did not acknowledge the change (`broker_unavailable`)", body = ErrorBody),
    )
)]
pub async fn unreact(
    State(state): State<AppState>,
    caller: AuthUser,
    path: ReactionPath,
) -> Result<StatusCode, ApiError> {
    react_change(state, caller, path, RecordKind::ReactionRemoved).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emoji_are_one_emoji_or_a_short_name() {
        for good in [
            "👍",
            "❤️",
            "👍🏽",
            "👨‍👩‍👧",
            "🇫🇷",
            ":thumbsup:",
            ":party_parrot:",
            ":+1:",
            ":a:",
            ":abcdefghijklmnopqrstuvwxyz0123:",
        ] {
            assert!(valid_emoji(good), "{good}");
        }
        for bad in [
            "",
            "a",
            "ok",
            "👍👍",
            "👍 ",
            "::",
            ":no spaces:",
            ":abcdefghijklmnopqrstuvwxyz01234:",
            "thumbsup",
            ":thumbsup",
            "<script>",
            ":é:",
        ] {
            assert!(!valid_emoji(bad), "{bad:?}");
        }
    }

    #[test]
    fn an_edit_replaces_only_the_text() {
        let raw = serde_json::value::RawValue::from_string(
            r#"{"text":"old","reply_to":"x","n":1}"#.into(),
        )
        .unwrap();
        let new = replace_text(Some(&raw), "new").unwrap();
        let value: serde_json::Value = serde_json::from_str(new.get()).unwrap();
        assert_eq!(value, json!({"text": "new", "reply_to": "x", "n": 1}));
    }
}
