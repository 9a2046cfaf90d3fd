//! Rooms: creating, listing, joining, leaving, invites and members.
//!
//! Visibility: a public room is visible to everyone; a private room only to
//! its members and invitees. Every other caller gets 404 for it, as if it did
//! not exist, from every route but join: joining applies the room's rules
//! (`wrong_password`, `invite_required`) to anyone who has its id.
//!
//! Choices the contract leaves open:
//! - Leaving a room one is not a member of is 409 `not_a_member` (404 if the
//!   room is invisible to the caller).
//! - The owner may leave. The room stays, `owner_id` is unchanged and the
//!   owner is then treated like anyone else; when they join again they get
//!   back the `owner` role.
//! - An invite makes a private room visible; it does not replace the password
//!   of a password room. Inviting an existing member or invitee is a no-op
//!   that still answers 201.
//! - `GET /api/rooms` pages in creation order (room ids are UUIDv7): `limit`
//!   (default 50, at most 200) and `after`, the previous page's `next_after`.
//!   `member=true` pages only the caller's rooms (member or invited), so a
//!   client can show all of them whatever number of public rooms came first.
//!   Member counts are kept in `rooms.member_count` by a trigger, so a page
//!   costs no count per row.
//!
//! Membership changes (create, join, leave) go through
//! [`crate::membership::publish_then_apply`]: cheap checks first, then the
//! member's lock, then the broker, then one short transaction.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use confab_common::record::{RecordKind, RoomRecord, UserRef};
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, AuthUser, ClientIp, OptionalJson, RoomId};
use crate::membership::publish_then_apply;
use crate::model::{
    CreateInvite, CreateRoom, Invite, JoinRoom, Member, MemberList, Role, Room, RoomList, User,
    Visibility,
};
use crate::AppState;

/// Room names have at most this many characters.
pub const MAX_ROOM_NAME_CHARS: usize = 100;

/// A room row with what the caller needs to know about it.
#[derive(Debug)]
pub(crate) struct RoomRow {
    pub(crate) id: Uuid,
    pub(crate) name: String,
    pub(crate) visibility: Visibility,
    pub(crate) password_hash: Option<String>,
    pub(crate) owner_id: Uuid,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) member_count: i64,
    pub(crate) is_member: bool,
    pub(crate) is_invited: bool,
    pub(crate) direct: bool,
    pub(crate) my_role: Option<Role>,
    pub(crate) last_read_offset: Option<i64>,
    pub(crate) unread_count: i64,
    /// For a direct room, the other member's username.
    pub(crate) peer_name: Option<String>,
}

/// What a room's caller sees of people (CONTRACT §8): their read position
/// and unread count from three counters, each a primary-key probe (see
/// migrations/0005_people.sql), and for direct rooms the other member's name.
macro_rules! people_columns {
    () => {
        "(SELECT rr.last_read_offset FROM room_reads rr
          WHERE rr.room_id = r.id AND rr.user_id = $1) AS last_read_offset,
    CASE WHEN m.user_id IS NULL THEN 0::bigint ELSE greatest(0::bigint,
        coalesce((SELECT c.messages FROM room_message_counts c WHERE c.room_id = r.id), 0)
      - coalesce((SELECT s.messages FROM room_sender_counts s
                  WHERE s.room_id = r.id AND s.user_id = $1), 0)
      - coalesce((SELECT rr.read_from_others FROM room_reads rr
                  WHERE rr.room_id = r.id AND rr.user_id = $1), 0)) END AS unread_count,
    CASE WHEN r.direct THEN (SELECT u.username FROM direct_rooms d JOIN users u
        ON u.id = CASE WHEN d.user_low = $1 THEN d.user_high ELSE d.user_low END
        WHERE d.room_id = r.id) END AS peer_name"
    };
}

const ROOM_COLUMNS: &str = concat!(
    "r.id, r.name, r.visibility, r.password_hash, r.owner_id, r.created_at,
    r.member_count::bigint AS member_count,
    m.user_id IS NOT NULL AS is_member,
    EXISTS (SELECT 1 FROM room_invites i WHERE i.room_id = r.id AND i.user_id = $1) AS is_invited,
    r.direct, m.role AS my_role, ",
    people_columns!()
);

impl RoomRow {
    fn from_row(row: &Row) -> Result<Self, ApiError> {
        let visibility: String = row.get("visibility");
        let visibility = match visibility.as_str() {
            "public" => Visibility::Public,
            "private" => Visibility::Private,
            other => return Err(ApiError::internal(format!("room visibility {other:?}"))),
        };
        Ok(Self {
            id: row.get("id"),
            name: row.get("name"),
            visibility,
            password_hash: row.get("password_hash"),
            owner_id: row.get("owner_id"),
            created_at: row.get("created_at"),
            member_count: row.get("member_count"),
            is_member: row.get("is_member"),
            is_invited: row.get("is_invited"),
            direct: row.get("direct"),
            my_role: row
                .get::<_, Option<&str>>("my_role")
                .map(|raw| {
                    Role::parse(raw).ok_or_else(|| ApiError::internal(format!("role {raw:?}")))
                })
                .transpose()?,
            last_read_offset: row.get("last_read_offset"),
            unread_count: row.get("unread_count"),
            peer_name: row.get("peer_name"),
        })
    }

    /// Whether the caller may know the room exists.
    pub(crate) fn visible(&self) -> bool {
        self.visibility == Visibility::Public || self.is_member || self.is_invited
    }

    pub(crate) fn to_room(&self) -> Room {
        Room {
            id: self.id,
            name: match (&self.peer_name, self.direct) {
                (Some(peer), true) => peer.clone(),
                _ => self.name.clone(),
            },
            visibility: self.visibility,
            requires_password: self.password_hash.is_some(),
            owner_id: self.owner_id,
            created_at: self.created_at,
            channel: confab_common::room_channel(self.id),
            member_count: self.member_count,
            is_member: self.is_member,
            direct: self.direct,
            my_role: self.my_role,
            last_read_offset: self.last_read_offset,
            unread_count: self.unread_count,
        }
    }
}

/// Loads a room with `user`'s relation to it, visible or not.
pub(crate) async fn load_room<C: GenericClient>(
    client: &C,
    room: Uuid,
    user: Uuid,
) -> Result<Option<RoomRow>, ApiError> {
    let sql = format!(
        "SELECT {ROOM_COLUMNS} FROM rooms r
         LEFT JOIN room_members m ON m.room_id = r.id AND m.user_id = $1
         WHERE r.id = $2"
    );
    let row = client.query_opt(&sql, &[&user, &room]).await?;
    row.as_ref().map(RoomRow::from_row).transpose()
}

/// Loads a room as `user` sees it; `None` when it does not exist or is
/// invisible to `user`.
pub(crate) async fn load_visible<C: GenericClient>(
    client: &C,
    room: Uuid,
    user: Uuid,
) -> Result<Option<RoomRow>, ApiError> {
    Ok(load_room(client, room, user)
        .await?
        .filter(RoomRow::visible))
}

/// Checks that `user` is a member of `room`: 404 if the room does not exist
/// or is invisible to them, 403 if visible but not a member.
///
/// One round trip (`query_typed` sends parse, bind and execute together), so
/// history can run it alongside its page query.
pub(crate) async fn require_member(
    client: &tokio_postgres::Client,
    room: Uuid,
    user: Uuid,
) -> Result<(), ApiError> {
    let row = client
        .query_typed(
            "SELECT r.visibility = 'public',
                    EXISTS (SELECT 1 FROM room_members m WHERE m.room_id = r.id AND m.user_id = $2),
                    EXISTS (SELECT 1 FROM room_invites i WHERE i.room_id = r.id AND i.user_id = $2)
             FROM rooms r WHERE r.id = $1",
            &[(&room, Type::UUID), (&user, Type::UUID)],
        )
        .await?;
    let row = row.first().ok_or_else(ApiError::room_not_found)?;
    let (public, member, invited): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    match (member, public || invited) {
        (true, _) => Ok(()),
        (false, true) => Err(ApiError::not_a_member()),
        (false, false) => Err(ApiError::room_not_found()),
    }
}

/// A foreign-key violation on the user means the token names a user this
/// database does not know.
pub(crate) fn unknown_user(err: tokio_postgres::Error) -> ApiError {
    if err.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
        ApiError::unauthorized("unknown user")
    } else {
        err.into()
    }
}

pub(crate) fn user_ref(caller: &AuthUser) -> UserRef {
    UserRef {
        id: caller.id,
        username: caller.username.clone(),
    }
}

/// 401 when the token names a user this database does not know; checked
/// before a record is produced for them.
pub(crate) async fn require_user<C: GenericClient>(client: &C, user: Uuid) -> Result<(), ApiError> {
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)",
            &[&user],
        )
        .await?
        .get(0);
    if exists {
        Ok(())
    } else {
        Err(ApiError::unauthorized("unknown user"))
    }
}

/// Creates a room; the caller becomes its owner and first member.
#[utoipa::path(
    post, path = "/api/rooms", tag = "rooms",
    security(("bearer" = [])),
    request_body = CreateRoom,
    responses(
        (status = 201, description = "Room created; a `member_joined` record for the owner was acknowledged by the broker", body = Room),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 422, description = "Invalid name, visibility or password", body = ErrorBody),
        (status = 429, description = "Too many rooms created from this address (`rate_limited`)", body = ErrorBody),
        (status = 503, description = "The broker did not acknowledge the event or is down (`broker_unavailable`), or password hashing is at capacity (`overloaded`)", body = ErrorBody),
    )
)]
pub async fn create_room(
    State(state): State<AppState>,
    caller: AuthUser,
    ClientIp(ip): ClientIp,
    ApiJson(body): ApiJson<CreateRoom>,
) -> Result<(StatusCode, Json<Room>), ApiError> {
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_ROOM_NAME_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_name",
            format!("room names have 1-{MAX_ROOM_NAME_CHARS} characters"),
        ));
    }
    // PostgreSQL text cannot hold NUL; no control character belongs in a name.
    if name.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "invalid_name",
            "room names have no control characters",
        ));
    }
    let password_hash = match (body.visibility, body.password) {
        (_, None) => None,
        (Visibility::Public, Some(_)) => {
            return Err(ApiError::unprocessable(
                "password_not_allowed",
                "only private rooms can have a password",
            ))
        }
        (Visibility::Private, Some(p)) if p.is_empty() || p.len() > 1024 => {
            return Err(ApiError::unprocessable(
                "invalid_password",
                "room passwords have 1-1024 bytes",
            ))
        }
        (Visibility::Private, Some(p)) => Some(p),
    };
    // Cheap checks before the costly hash.
    state.check_address_rate("room_create", ip)?;
    require_user(&*state.db().await?, caller.id).await?;
    let password_hash = match password_hash {
        Some(p) => Some(state.hasher().hash(p).await?),
        None => None,
    };

    let id = Uuid::now_v7();
    let record = RoomRecord::member_event(id, user_ref(&caller), RecordKind::MemberJoined);
    let (insert_name, insert_hash, visibility, owner) = (
        name.clone(),
        password_hash.clone(),
        body.visibility,
        caller.id,
    );
    let created_at = publish_then_apply(&state, record, (), move |state| async move {
        let mut conn = state.db().await?;
        let tx = conn.transaction().await?;
        let row = tx
            .query_one(
                "INSERT INTO rooms (id, name, visibility, password_hash, owner_id)
                 VALUES ($1, $2, $3, $4, $5) RETURNING created_at",
                &[
                    &id,
                    &insert_name,
                    &visibility.as_str(),
                    &insert_hash,
                    &owner,
                ],
            )
            .await
            .map_err(unknown_user)?;
        tx.execute(
            "INSERT INTO room_members (room_id, user_id, role) VALUES ($1, $2, 'owner')",
            &[&id, &owner],
        )
        .await?;
        crate::people::start_reading(&tx, id, owner).await?;
        tx.commit().await?;
        Ok(row.get::<_, OffsetDateTime>(0))
    })
    .await?;
    tracing::info!(room_id = %id, owner = %caller.id, "room created");

    let room = Room {
        id,
        name,
        visibility: body.visibility,
        requires_password: password_hash.is_some(),
        owner_id: caller.id,
        created_at,
        channel: confab_common::room_channel(id),
        member_count: 1,
        is_member: true,
        direct: false,
        my_role: Some(Role::Owner),
        last_read_offset: None,
        unread_count: 0,
    };
    Ok((StatusCode::CREATED, Json(room)))
}

/// Reads `limit`, `after` and `member` from the query string.
fn room_page_params(query: &HashMap<String, String>) -> Result<(i64, Uuid, bool), ApiError> {
    let limit = crate::history::parse_limit(query)?;
    let after = match query
        .get("after")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        None => Uuid::nil(),
        Some(raw) => raw.parse().map_err(|_| {
            ApiError::bad_request(
                "invalid_after",
                "after must be a room id (the previous page's next_after)",
            )
        })?,
    };
    let member = match query.get("member").map(|s| s.trim()) {
        None | Some("" | "false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_member",
                "member must be true or false",
            ))
        }
    };
    Ok((limit, after, member))
}

/// Every public room, plus the private rooms the caller belongs or is invited
/// to; with `member=true`, only the rooms the caller belongs or is invited to
/// (what a client's sidebar lists, however many public rooms there are).
#[utoipa::path(
    get, path = "/api/rooms", tag = "rooms",
    security(("bearer" = [])),
    params(
        ("limit" = Option<i64>, Query, minimum = 1, description = "Page size, default 50, capped at 200; must be positive"),
        ("after" = Option<Uuid>, Query, description = "Only rooms created after this one (exclusive): the previous page's `next_after`"),
        ("member" = Option<bool>, Query, description = "`true`: only rooms the caller is a member of or invited to"),
    ),
    responses(
        (status = 200, description = "A page of visible rooms in creation order", body = RoomList),
        (status = 400, description = "Bad `limit`, `after` or `member`", body = ErrorBody),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
    )
)]
pub async fn list_rooms(
    State(state): State<AppState>,
    caller: AuthUser,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<RoomList>, ApiError> {
    let Query(query) =
        query.map_err(|_| ApiError::bad_request("invalid_query", "malformed query string"))?;
    let (limit, after, member_only) = room_page_params(&query)?;
    let conn = state.db().await?;
    // Keyset over the three ways a room is visible, each read in id order
    // from its own index and cut at the page size, then merged.
    let sql = format!(
        "WITH visible AS (
            (SELECT id FROM rooms WHERE visibility = 'public' AND NOT $4 AND id > $2
             ORDER BY id LIMIT $3)
            UNION
            (SELECT room_id FROM room_members WHERE user_id = $1 AND room_id > $2
             ORDER BY room_id LIMIT $3)
            UNION
            (SELECT room_id FROM room_invites WHERE user_id = $1 AND room_id > $2
             ORDER BY room_id LIMIT $3)
         ), page AS (SELECT id FROM visible ORDER BY id LIMIT $3)
         SELECT {ROOM_COLUMNS} FROM page p
         JOIN rooms r ON r.id = p.id
         LEFT JOIN room_members m ON m.room_id = r.id AND m.user_id = $1
         ORDER BY r.id"
    );
    let fetch = limit + 1;
    let rows = conn
        .query(&sql, &[&caller.id, &after, &fetch, &member_only])
        .await?;
    let more = rows.len() as i64 > limit;
    let rooms: Vec<Room> = rows
        .iter()
        .take(limit as usize)
        .map(|row| RoomRow::from_row(row).map(|r| r.to_room()))
        .collect::<Result<_, _>>()?;
    let next_after = if more {
        rooms.last().map(|r| r.id)
    } else {
        None
    };
    Ok(Json(RoomList { rooms, next_after }))
}

/// One room.
#[utoipa::path(
    get, path = "/api/rooms/{id}", tag = "rooms",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id")),
    responses(
        (status = 200, description = "The room", body = Room),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 404, description = "No such room, or a private room the caller may not see", body = ErrorBody),
    )
)]
pub async fn get_room(
    State(state): State<AppState>,
    caller: AuthUser,
    RoomId(room): RoomId,
) -> Result<Json<Room>, ApiError> {
    let conn = state.db().await?;
    let row = load_visible(&*conn, room, caller.id)
        .await?
        .ok_or_else(ApiError::room_not_found)?;
    Ok(Json(row.to_room()))
}

/// Joins a room. Joining again is a no-op.
#[utoipa::path(
    post, path = "/api/rooms/{id}/join", tag = "rooms",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id")),
    request_body(content = Option<JoinRoom>, description = "Optional; `password` for password rooms"),
    responses(
        (status = 200, description = "Member now (a `member_joined` record was acknowledged), or already", body = Room),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 403, description = "`wrong_password`, `invite_required`, `banned` (even with an invite or the password), or `direct_room` (direct rooms are joined through `POST /api/dms`)", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 429, description = "Too many password attempts (`rate_limited`)", body = ErrorBody),
        (status = 503, description = "The broker did not acknowledge the event or is down (`broker_unavailable`), or password hashing is at capacity (`overloaded`)", body = ErrorBody),
    )
)]
pub async fn join_room(
    State(state): State<AppState>,
    caller: AuthUser,
    ClientIp(ip): ClientIp,
    RoomId(room): RoomId,
    OptionalJson(body): OptionalJson<JoinRoom>,
) -> Result<Json<Room>, ApiError> {
    // Joining goes by the room's rules even when the room is invisible to the
    // caller: knowing a password room's id and password is what admits, and
    // an invite-only room answers `invite_required`. The connection goes back
    // to the pool during the password check, which may wait for a hashing slot.
    let row = load_room(&*state.db().await?, room, caller.id)
        .await?
        .ok_or_else(ApiError::room_not_found)?;
    if row.is_member {
        return Ok(Json(row.to_room()));
    }
    crate::people::check_may_join(&*state.db().await?, &row, caller.id).await?;
    match (&row.visibility, &row.password_hash) {
        (Visibility::Public, _) => {}
        (Visibility::Private, Some(phc)) => {
            let ticket = state.check_rate("join", &caller.id.to_string(), ip)?;
            let given = body.password.unwrap_or_default();
            if given.is_empty() || !state.hasher().verify(given, Some(phc.clone())).await? {
                return Err(ApiError::forbidden(
                    "wrong_password",
                    "wrong or missing room password",
                ));
            }
            state.refund(ticket);
        }
        (Visibility::Private, None) => {
            if !row.is_invited {
                return Err(ApiError::forbidden(
                    "invite_required",
                    "this room admits invited users only",
                ));
            }
        }
    }

    // One change of this membership at a time: a concurrent join of the
    // same user waits here, then finds the membership and produces nothing.
    let guard = state.member_locks().lock(room, caller.id).await;
    {
        let conn = state.db().await?;
        let row = load_room(&*conn, room, caller.id)
            .await?
            .ok_or_else(ApiError::room_not_found)?;
        if row.is_member {
            return Ok(Json(row.to_room()));
        }
        // A ban made while this caller waited for the lock still holds.
        crate::people::check_may_join(&*conn, &row, caller.id).await?;
        require_user(&*conn, caller.id).await?;
    }
    let role = if row.owner_id == caller.id {
        "owner"
    } else {
        "member"
    };
    let record = RoomRecord::member_event(room, user_ref(&caller), RecordKind::MemberJoined);
    let user = caller.id;
    publish_then_apply(&state, record, guard, move |state| async move {
        let mut conn = state.db().await?;
        let tx = conn.transaction().await?;
        tx.execute(
            "INSERT INTO room_members (room_id, user_id, role) VALUES ($1, $2, $3)
             ON CONFLICT (room_id, user_id) DO NOTHING",
            &[&room, &user, &role],
        )
        .await
        .map_err(unknown_user)?;
        crate::people::start_reading(&tx, room, user).await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    tracing::info!(room_id = %room, user_id = %caller.id, "member joined");
    let row = load_visible(&*state.db().await?, room, caller.id)
        .await?
        .ok_or_else(ApiError::room_not_found)?;
    Ok(Json(row.to_room()))
}

/// Leaves a room.
#[utoipa::path(
    post, path = "/api/rooms/{id}/leave", tag = "rooms",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id")),
    responses(
        (status = 204, description = "Left; a `member_left` record was acknowledged"),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 404, description = "No such room, or invisible", body = ErrorBody),
        (status = 409, description = "The caller is not a member (`not_a_member`)", body = ErrorBody),
        (status = 503, description = "The broker did not acknowledge the event or is down (`broker_unavailable`)", body = ErrorBody),
    )
)]
pub async fn leave_room(
    State(state): State<AppState>,
    caller: AuthUser,
    RoomId(room): RoomId,
) -> Result<StatusCode, ApiError> {
    let guard = state.member_locks().lock(room, caller.id).await;
    {
        let conn = state.db().await?;
        let row = load_visible(&*conn, room, caller.id)
            .await?
            .ok_or_else(ApiError::room_not_found)?;
        if !row.is_member {
            return Err(ApiError::conflict(
                "not_a_member",
                "you are not a member of this room",
            ));
        }
    }
    let record = RoomRecord::member_event(room, user_ref(&caller), RecordKind::MemberLeft);
    let user = caller.id;
    publish_then_apply(&state, record, guard, move |state| async move {
        state
            .db()
            .await?
            .execute(
                "DELETE FROM room_members WHERE room_id = $1 AND user_id = $2",
                &[&room, &user],
            )
            .await?;
        Ok(())
    })
    .await?;
    tracing::info!(room_id = %room, user_id = %caller.id, "member left");
    Ok(StatusCode::NO_CONTENT)
}

/// Invites a user to a room. Only members may invite.
#[utoipa::path(
    post, path = "/api/rooms/{id}/invites", tag = "rooms",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id")),
    request_body = CreateInvite,
    responses(
        (status = 201, description = "Invited (or already invited)", body = Invite),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a member (`not_a_member`)", body = ErrorBody),
        (status = 404, description = "No such room (`room_not_found`) or user (`user_not_found`)", body = ErrorBody),
        (status = 409, description = "A direct room admits nobody else (`direct_room`)", body = ErrorBody),
        (status = 422, description = "Missing username", body = ErrorBody),
    )
)]
pub async fn invite(
    State(state): State<AppState>,
    caller: AuthUser,
    RoomId(room): RoomId,
    ApiJson(body): ApiJson<CreateInvite>,
) -> Result<(StatusCode, Json<Invite>), ApiError> {
    let conn = state.db().await?;
    require_member(&conn, room, caller.id).await?;
    if !crate::auth::valid_username(&body.username) {
        // No such name can exist (and NUL cannot even be sent to PostgreSQL).
        return Err(ApiError::not_found("user_not_found", "no such user"));
    }
    let invitee = conn
        .query_opt(
            "SELECT id, username FROM users WHERE lower(username) = lower($1)",
            &[&body.username],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("user_not_found", "no such user"))?;
    let user = User {
        id: invitee.get(0),
        username: invitee.get(1),
    };
    crate::people::check_may_invite(&*conn, room).await?;
    conn.execute(
        "INSERT INTO room_invites (room_id, user_id, invited_by) VALUES ($1, $2, $3)
         ON CONFLICT (room_id, user_id) DO NOTHING",
        &[&room, &user.id, &caller.id],
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(Invite {
            room_id: room,
            user,
            invited_by: caller.id,
        }),
    ))
}

/// The members of a room. Only members may list them.
#[utoipa::path(
    get, path = "/api/rooms/{id}/members", tag = "rooms",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id")),
    responses(
        (status = 200, description = "Members in joining order", body = MemberList),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a member (`not_a_member`)", body = ErrorBody),
        (status = 404, description = "No such room, or invisible", body = ErrorBody),
    )
)]
pub async fn members(
    State(state): State<AppState>,
    caller: AuthUser,
    RoomId(room): RoomId,
) -> Result<Json<MemberList>, ApiError> {
    let conn = state.db().await?;
    require_member(&conn, room, caller.id).await?;
    let rows = conn
        .query(
            "SELECT u.id, u.username, m.role, m.joined_at
             FROM room_members m JOIN users u ON u.id = m.user_id
             WHERE m.room_id = $1
             ORDER BY m.joined_at, u.id",
            &[&room],
        )
        .await?;
    let members = rows
        .iter()
        .map(|row| {
            let role: &str = row.get(2);
            Ok(Member {
                user: User {
                    id: row.get(0),
                    username: row.get(1),
                },
                role: Role::parse(role)
                    .ok_or_else(|| ApiError::internal(format!("role {role:?}")))?,
                joined_at: row.get(3),
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Json(MemberList { members }))
}
