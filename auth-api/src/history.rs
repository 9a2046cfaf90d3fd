//! Room history from the `messages` table, and subscription tokens.
//!
//! Changes (edits, deletes, reactions: CONTRACT §7) are not rows of their own:
//! the persister applies them to the message they name, so a page shows each
//! message as it is now ([`message`], [`with_reactions`]; search and the
//! message routes share them).
//!
//! History is keyset-paginated on `stream_offset`, newest first:
//! `WHERE room_id = $1 AND stream_offset < $before ORDER BY stream_offset DESC
//! LIMIT $limit + 1`, served by the primary key `(room_id, stream_offset)`
//! scanned backwards. The extra row tells whether an older page exists.
//!
//! A cursor is an exclusive upper bound on the offset, not a row count, so
//! rows inserted while a client pages (at newer offsets: the persister stores
//! each partition in offset order) never shift later pages, and every row is
//! returned exactly once.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use confab_common::record::RecordKind;
use serde_json::value::RawValue;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{AuthUser, RoomId};
use crate::model::{Message, MessagePage, Reaction, SubscriptionToken, User};
use crate::rooms::require_member;
use crate::AppState;

/// The page size when `limit` is not given.
pub const DEFAULT_LIMIT: i64 = 50;
/// The largest page; bigger `limit`s are capped to it.
pub const MAX_LIMIT: i64 = 200;

/// Reads `limit` from the query string: [`DEFAULT_LIMIT`] when absent,
/// capped at [`MAX_LIMIT`], 400 unless a positive integer.
pub(crate) fn parse_limit(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    let raw = match query.get("limit").map(|s| s.trim()) {
        None | Some("") => return Ok(DEFAULT_LIMIT),
        Some(raw) => raw,
    };
    match raw.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n.min(MAX_LIMIT)),
        // Too many digits for an i64 is still a positive number: cap it.
        Err(_) if raw.bytes().all(|b| b.is_ascii_digit()) => Ok(MAX_LIMIT),
        _ => Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be a positive integer (at most {MAX_LIMIT} are returned)"),
        )),
    }
}

/// Reads `limit` and `before` from the query string.
fn page_params(query: &HashMap<String, String>) -> Result<(i64, i64), ApiError> {
    let limit = parse_limit(query)?;
    let before = match query
        .get("before")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        None => i64::MAX,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) => n,
            // Beyond every offset: the newest page.
            Err(_) if raw.bytes().all(|b| b.is_ascii_digit()) => i64::MAX,
            Err(_) => {
                return Err(ApiError::bad_request(
                    "invalid_before",
                    "before must be an integer offset",
                ))
            }
        },
    };
    Ok((limit, before))
}

/// The columns [`message`] reads, from `messages m`. `reply_to` is shown
/// only when it names a message of the same room.
pub(crate) const COLUMNS: &str = "m.stream_offset, m.id, m.room_id, m.kind, m.user_id, m.username,
    m.data::text, m.created_at, m.edited_at, m.deleted,
    CASE WHEN m.reply_to IS NOT NULL AND EXISTS
        (SELECT 1 FROM messages t WHERE t.id = m.reply_to AND t.room_id = m.room_id)
    THEN m.reply_to END";

/// How many columns [`COLUMNS`] has.
pub(crate) const COLUMN_COUNT: usize = 11;

/// A history entry from a row of [`COLUMNS`], without its reactions.
pub(crate) fn message(row: &tokio_postgres::Row) -> Result<Message, ApiError> {
    let kind: &str = row.get(3);
    let data: Option<String> = row.get(6);
    let data = data
        .map(RawValue::from_string)
        .transpose()
        .map_err(ApiError::internal)?;
    Ok(Message {
        offset: row.get(0),
        id: row.get(1),
        room_id: row.get(2),
        kind: kind.parse::<RecordKind>().map_err(ApiError::internal)?,
        user: User {
            id: row.get(4),
            username: row.get(5),
        },
        data,
        created_at: row.get(7),
        edited_at: row.get(8),
        deleted: row.get(9),
        reply_to: row.get(10),
        reactions: Vec::new(),
    })
}

/// Fills in the reactions of `messages` (`me` for `caller`), in one query.
pub(crate) async fn with_reactions(
    conn: &tokio_postgres::Client,
    messages: &mut [Message],
    caller: Uuid,
) -> Result<(), ApiError> {
    let ids: Vec<Uuid> = messages
        .iter()
        .filter(|m| m.kind == RecordKind::Message && !m.deleted)
        .map(|m| m.id)
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let rows = conn
        .query_typed(
            "SELECT message_id, emoji, count(*), bool_or(user_id = $2)
             FROM message_reactions
             WHERE message_id = ANY($1)
             GROUP BY message_id, emoji
             ORDER BY message_id, min(created_at), emoji",
            &[(&ids, Type::UUID_ARRAY), (&caller, Type::UUID)],
        )
        .await?;
    let mut by_message: HashMap<Uuid, Vec<Reaction>> = HashMap::new();
    for row in &rows {
        by_message.entry(row.get(0)).or_default().push(Reaction {
            emoji: row.get(1),
            count: row.get(2),
            me: row.get(3),
        });
    }
    for m in messages {
        if let Some(reactions) = by_message.remove(&m.id) {
            m.reactions = reactions;
        }
    }
    Ok(())
}

/// A page of a room's history, newest first.
#[utoipa::path(
    get, path = "/api/rooms/{id}/messages", tag = "history",
    security(("bearer" = [])),
    params(
        ("id" = uuid::Uuid, Path, description = "Room id"),
        ("limit" = Option<i64>, Query, minimum = 1, description = "Page size, default 50, capped at 200; must be positive"),
        ("before" = Option<i64>, Query, description = "Only entries with a smaller offset (exclusive); the previous page's `next_before`"),
    ),
    responses(
        (status = 200, description = "A page of history", body = MessagePage),
        (status = 400, description = "Bad `limit` or `before`", body = ErrorBody),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a member (`not_a_member`)", body = ErrorBody),
        (status = 404, description = "No such room, or invisible", body = ErrorBody),
    )
)]
pub async fn messages(
    State(state): State<AppState>,
    caller: AuthUser,
    RoomId(room): RoomId,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<MessagePage>, ApiError> {
    let Query(query) =
        query.map_err(|_| ApiError::bad_request("invalid_query", "malformed query string"))?;
    let (limit, before) = page_params(&query)?;
    let conn = state.db().await?;
    // The access check and the page query are pipelined on one connection:
    // one round trip for both. The page is dropped unless access is granted.
    let fetch = limit + 1;
    let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 3] = [
        (&room, Type::UUID),
        (&before, Type::INT8),
        (&fetch, Type::INT8),
    ];
    let sql = format!(
        "SELECT {COLUMNS}
         FROM messages m
         WHERE m.room_id = $1 AND m.stream_offset < $2
         ORDER BY m.stream_offset DESC
         LIMIT $3"
    );
    let page = conn.query_typed(&sql, &params);
    let (access, rows) = tokio::join!(require_member(&conn, room, caller.id), page);
    access?;
    let rows = rows?;
    let more = rows.len() as i64 > limit;
    let mut messages = rows
        .iter()
        .take(limit as usize)
        .map(message)
        .collect::<Result<Vec<_>, _>>()?;
    with_reactions(&conn, &mut messages, caller.id).await?;
    let next_before = if more {
        messages.last().map(|m| m.offset)
    } else {
        None
    };
    Ok(Json(MessagePage {
        messages,
        next_before,
    }))
}

/// A subscription token for the room's channel. Only members get one.
#[utoipa::path(
    post, path = "/api/rooms/{id}/subscription-token", tag = "history",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Room id")),
    responses(
        (status = 200, description = "A JWT for this user and `room:<id>`", body = SubscriptionToken),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a member (`not_a_member`)", body = ErrorBody),
        (status = 404, description = "No such room, or invisible", body = ErrorBody),
    )
)]
pub async fn subscription_token(
    State(state): State<AppState>,
    caller: AuthUser,
    RoomId(room): RoomId,
) -> Result<Json<SubscriptionToken>, ApiError> {
    let conn = state.db().await?;
    require_member(&conn, room, caller.id).await?;
    let channel = confab_common::room_channel(room);
    let (token, _exp) = state.jwt().issue_subscription(caller.id, &channel);
    Ok(Json(SubscriptionToken { token }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn limits_default_cap_and_reject() {
        assert_eq!(page_params(&q(&[])).unwrap(), (50, i64::MAX));
        assert_eq!(page_params(&q(&[("limit", "500")])).unwrap().0, 200);
        assert_eq!(
            page_params(&q(&[("limit", "7"), ("before", "42")])).unwrap(),
            (7, 42)
        );
        for bad in ["0", "-1", "ten", "1.5"] {
            assert!(page_params(&q(&[("limit", bad)])).is_err(), "{bad}");
        }
        assert!(page_params(&q(&[("before", "x")])).is_err());
        let huge = "99999999999999999999999";
        assert_eq!(page_params(&q(&[("limit", huge)])).unwrap().0, 200);
        assert_eq!(page_params(&q(&[("before", huge)])).unwrap().1, i64::MAX);
        assert!(page_params(&q(&[("limit", "-99999999999999999999999")])).is_err());
    }
}
