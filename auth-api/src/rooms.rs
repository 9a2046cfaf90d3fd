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

use axum::extract::State;
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
use crate::model::{
    CreateInvite, CreateRoom, Invite, JoinRoom, Member, MemberList, Role, Room, RoomList, User,
    Visibility,
};
use crate::{password, AppState};

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
}

const ROOM_COLUMNS: &str = "r.id, r.name, r.visibility, r.password_hash, r.owner_id, r.created_at,
    (SELECT count(*) FROM room_members c WHERE c.room_id = r.id) AS member_count,
    m.user_id IS NOT NULL AS is_member,
    EXISTS (SELECT 1 FROM room_invites i WHERE i.room_id = r.id AND i.user_id = $1) AS is_invited";

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
        })
    }

    /// Whether the caller may know the room exists.
    pub(crate) fn visible(&self) -> bool {
        self.visibility == Visibility::Public || self.is_member || self.is_invited
    }

    pub(crate) fn to_room(&self) -> Room {
        Room {
            id: self.id,
            name: self.name.clone(),
            visibility: self.visibility,
            requires_password: self.password_hash.is_some(),
            owner_id: self.owner_id,
            created_at: self.created_at,
            channel: confab_common::room_channel(self.id),
            member_count: self.member_count,
            is_member: self.is_member,
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
fn unknown_user(err: tokio_postgres::Error) -> ApiError {
    if err.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
        ApiError::unauthorized("unknown user")
    } else {
        err.into()
    }
}

fn user_ref(caller: &AuthUser) -> UserRef {
    UserRef {
        id: caller.id,
        username: caller.username.clone(),
    }
}

/// Commits `tx` after `record` was acknowledged; on failure produces the
/// opposite record so the stream matches the database again (see
/// [`crate::events`]).
async fn commit_after_ack(
    state: &AppState,
    tx: tokio_postgres::Transaction<'_>,
    record: &RoomRecord,
) -> Result<(), ApiError> {
    if let Err(err) = tx.commit().await {
        let opposite = match record.kind {
            RecordKind::MemberJoined => RecordKind::MemberLeft,
            _ => RecordKind::MemberJoined,
        };
        tracing::error!(room_id = %record.room_id, %err, "commit failed after the membership record was acknowledged");
        state
            .events()
            .compensate(RoomRecord::member_event(
                record.room_id,
                record.user.clone(),
                opposite,
            ))
            .await;
        return Err(err.into());
    }
    Ok(())
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
        (status = 422, description = "Invalid name, visibility or password", body = ErrorBody),
        (status = 503, description = "The broker did not acknowledge the event", body = ErrorBody),
    )
)]
pub async fn create_room(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(body): ApiJson<CreateRoom>,
) -> Result<(StatusCode, Json<Room>), ApiError> {
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > MAX_ROOM_NAME_CHARS {
        return Err(ApiError::unprocessable(
            "invalid_name",
            format!("room names have 1-{MAX_ROOM_NAME_CHARS} characters"),
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
        (Visibility::Private, Some(p)) => Some(password::hash(p).await?),
    };

    let id = Uuid::now_v7();
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let row = tx
        .query_one(
            "INSERT INTO rooms (id, name, visibility, password_hash, owner_id)
             VALUES ($1, $2, $3, $4, $5) RETURNING created_at",
            &[
                &id,
                &name,
                &body.visibility.as_str(),
                &password_hash,
                &caller.id,
            ],
        )
        .await
        .map_err(unknown_user)?;
    let created_at: OffsetDateTime = row.get(0);
    tx.execute(
        "INSERT INTO room_members (room_id, user_id, role) VALUES ($1, $2, 'owner')",
        &[&id, &caller.id],
    )
    .await?;
    let record = RoomRecord::member_event(id, user_ref(&caller), RecordKind::MemberJoined);
    state.events().publish(&record).await?;
    commit_after_ack(&state, tx, &record).await?;
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
    };
    Ok((StatusCode::CREATED, Json(room)))
}

/// Every public room, plus the private rooms the caller belongs or is invited to.
#[utoipa::path(
    get, path = "/api/rooms", tag = "rooms",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Visible rooms, oldest first", body = RoomList),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
    )
)]
pub async fn list_rooms(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<Json<RoomList>, ApiError> {
    let conn = state.db().await?;
    let sql = format!(
        "SELECT {ROOM_COLUMNS} FROM rooms r
         LEFT JOIN room_members m ON m.room_id = r.id AND m.user_id = $1
         WHERE r.visibility = 'public'
            OR m.user_id IS NOT NULL
            OR EXISTS (SELECT 1 FROM room_invites i WHERE i.room_id = r.id AND i.user_id = $1)
         ORDER BY r.created_at, r.id"
    );
    let rows = conn.query(&sql, &[&caller.id]).await?;
    let rooms = rows
        .iter()
        .map(|row| RoomRow::from_row(row).map(|r| r.to_room()))
        .collect::<Result<_, _>>()?;
    Ok(Json(RoomList { rooms }))
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
        (status = 403, description = "`wrong_password` or `invite_required`", body = ErrorBody),
        (status = 404, description = "No such room", body = ErrorBody),
        (status = 429, description = "Too many password attempts (`rate_limited`)", body = ErrorBody),
        (status = 503, description = "The broker did not acknowledge the event", body = ErrorBody),
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
    match (&row.visibility, &row.password_hash) {
        (Visibility::Public, _) => {}
        (Visibility::Private, Some(phc)) => {
            let ticket = state.check_rate("join", &caller.id.to_string(), ip)?;
            let given = body.password.unwrap_or_default();
            if given.is_empty() || !password::verify(given, Some(phc.clone())).await? {
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

    let role = if row.owner_id == caller.id {
        "owner"
    } else {
        "member"
    };
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let inserted = tx
        .execute(
            "INSERT INTO room_members (room_id, user_id, role) VALUES ($1, $2, $3)
             ON CONFLICT (room_id, user_id) DO NOTHING",
            &[&room, &caller.id, &role],
        )
        .await
        .map_err(unknown_user)?;
    if inserted == 1 {
        let record = RoomRecord::member_event(room, user_ref(&caller), RecordKind::MemberJoined);
        state.events().publish(&record).await?;
        commit_after_ack(&state, tx, &record).await?;
        tracing::info!(room_id = %room, user_id = %caller.id, "member joined");
    } else {
        // A concurrent join of the same user won; that one produced the event.
        tx.rollback().await?;
    }
    let row = load_visible(&*conn, room, caller.id)
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
        (status = 503, description = "The broker did not acknowledge the event", body = ErrorBody),
    )
)]
pub async fn leave_room(
    State(state): State<AppState>,
    caller: AuthUser,
    RoomId(room): RoomId,
) -> Result<StatusCode, ApiError> {
    let mut conn = state.db().await?;
    load_visible(&*conn, room, caller.id)
        .await?
        .ok_or_else(ApiError::room_not_found)?;
    let tx = conn.transaction().await?;
    let deleted = tx
        .execute(
            "DELETE FROM room_members WHERE room_id = $1 AND user_id = $2",
            &[&room, &caller.id],
        )
        .await?;
    if deleted == 0 {
        tx.rollback().await?;
        return Err(ApiError::conflict(
            "not_a_member",
            "you are not a member of this room",
        ));
    }
    let record = RoomRecord::member_event(room, user_ref(&caller), RecordKind::MemberLeft);
    state.events().publish(&record).await?;
    commit_after_ack(&state, tx, &record).await?;
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
            let role: String = row.get(2);
            Member {
                user: User {
                    id: row.get(0),
                    username: row.get(1),
                },
                role: if role == "owner" {
                    Role::Owner
                } else {
                    Role::Member
                },
                joined_at: row.get(3),
            }
        })
        .collect();
    Ok(Json(MemberList { members }))
}
