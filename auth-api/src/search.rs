//! Full-text search over the caller's rooms (CONTRACT §7).
//!
//! `messages.tsv` is a generated `tsvector` of a chat message's text in the
//! `simple` configuration (see `migrations/0004_messages.sql` for why),
//! indexed with the room in one GIN index on `(room_id, tsv)`
//! (`migrations/0007_search_by_room.sql`), so "these words in these rooms" is
//! answered from posting lists whatever the word's spread over rooms. The
//! query is `websearch_to_tsquery('simple', q)`: words, "quoted phrases",
//! `or` and `-word`, and never a syntax error. A deleted message has
//! no data and so no vector: it is never found.
//!
//! Results are the rooms the caller is a member of now (or the one
//! `room_id`, which needs membership), newest first. Message ids are UUIDv7,
//! in creation order, so the order and the keyset are the id: `before` is the
//! id of the previous page's oldest message (`next_before`), and each result
//! is returned exactly once.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::error::{ApiError, ErrorBody};
use crate::extract::AuthUser;
use crate::history::{message, parse_limit, with_reactions, COLUMNS};
use crate::model::SearchPage;
use crate::rooms::require_member;
use crate::AppState;

/// The longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 256;

/// The parameters of a search.
#[derive(Debug, PartialEq)]
struct Params {
    q: String,
    room: Option<Uuid>,
    limit: i64,
    before: Option<Uuid>,
}

fn uuid_param(
    query: &HashMap<String, String>,
    key: &str,
    code: &'static str,
) -> Result<Option<Uuid>, ApiError> {
    match query.get(key).map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(raw) => raw.parse().map(Some).map_err(|_| {
            ApiError::bad_request(code, format!("{key} must be a message or room id (a UUID)"))
        }),
    }
}

fn params(query: &HashMap<String, String>) -> Result<Params, ApiError> {
    let q = query.get("q").map(|s| s.trim()).unwrap_or_default();
    if q.is_empty() || q.chars().count() > MAX_QUERY_CHARS || q.contains('\0') {
        return Err(ApiError::bad_request(
            "invalid_q",
            format!("q must be 1 to {MAX_QUERY_CHARS} characters"),
        ));
    }
    Ok(Params {
        q: q.to_owned(),
        room: uuid_param(query, "room_id", "invalid_room_id")?,
        limit: parse_limit(query)?,
        before: uuid_param(query, "before", "invalid_before")?,
    })
}

/// Messages whose text matches `q`, newest first.
#[utoipa::path(
    get, path = "/api/search", tag = "messages",
    security(("bearer" = [])),
    params(
        ("q" = String, Query, description = "Words to find (PostgreSQL `websearch_to_tsquery` syntax: \"phrases\", `or`, `-word`), 1–256 characters"),
        ("room_id" = Option<Uuid>, Query, description = "Only this room (the caller must be a member); default: every room the caller is a member of"),
        ("limit" = Option<i64>, Query, minimum = 1, description = "Page size, default 50, capped at 200; must be positive"),
        ("before" = Option<Uuid>, Query, description = "Only messages older than this one: the previous page's `next_before`"),
    ),
    responses(
        (status = 200, description = "A page of results, newest first", body = SearchPage),
        (status = 400, description = "Bad `q`, `room_id`, `limit` or `before`", body = ErrorBody),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 403, description = "Not a member of `room_id` (`not_a_member`)", body = ErrorBody),
        (status = 404, description = "No such room, or invisible", body = ErrorBody),
    )
)]
pub async fn search(
    State(state): State<AppState>,
    caller: AuthUser,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<SearchPage>, ApiError> {
    let Query(query) =
        query.map_err(|_| ApiError::bad_request("invalid_query", "malformed query string"))?;
    let p = params(&query)?;
    let conn = state.db().await?;
    if let Some(room) = p.room {
        require_member(&conn, room, caller.id).await?;
    }
    let fetch = p.limit + 1;
    let sql = format!(
        "SELECT {COLUMNS}
         FROM messages m
         WHERE m.tsv @@ websearch_to_tsquery('simple', $1)
           AND m.room_id IN (SELECT rm.room_id FROM room_members rm
                             WHERE rm.user_id = $2 AND ($3::uuid IS NULL OR rm.room_id = $3))
           AND NOT m.deleted
           AND ($4::uuid IS NULL OR m.id < $4)
         ORDER BY m.id DESC
         LIMIT $5"
    );
    let rows = conn
        .query_typed(
            &sql,
            &[
                (&p.q, Type::TEXT),
                (&caller.id, Type::UUID),
                (&p.room, Type::UUID),
                (&p.before, Type::UUID),
                (&fetch, Type::INT8),
            ],
        )
        .await?;
    let more = rows.len() as i64 > p.limit;
    let mut messages = rows
        .iter()
        .take(p.limit as usize)
        .map(message)
        .collect::<Result<Vec<_>, _>>()?;
    with_reactions(&conn, &mut messages, caller.id).await?;
    let next_before = if more {
        messages.last().map(|m| m.id)
    } else {
        None
    };
    Ok(Json(SearchPage {
        messages,
        next_before,
    }))
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
    fn parameters_are_checked() {
        let room = Uuid::now_v7();
        let p = params(&q(&[("q", " hello "), ("room_id", &room.to_string())])).unwrap();
        assert_eq!(
            p,
            Params {
                q: "hello".into(),
                room: Some(room),
                limit: 50,
                before: None
            }
        );
        assert!(params(&q(&[])).is_err());
        assert!(params(&q(&[("q", "  ")])).is_err());
        assert!(params(&q(&[("q", &"x".repeat(257))])).is_err());
        assert!(params(&q(&[("q", "a\0b")])).is_err());
        assert!(params(&q(&[("q", "a"), ("room_id", "7")])).is_err());
        assert!(params(&q(&[("q", "a"), ("before", "12")])).is_err());
        assert!(params(&q(&[("q", "a"), ("limit", "0")])).is_err());
    }
}
