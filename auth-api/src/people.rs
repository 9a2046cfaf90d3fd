//! People (CONTRACT §8): direct rooms, read positions and receipts, roles,
//! kicks and bans.
//!
//! Choices the contract leaves open:
//! - A direct room is a private room without password whose two members
//!   both have the `member` role: nobody moderates it, nobody else joins
//!   (403 `direct_room`) or is invited (409 `direct_room`). Its `name` is the
//!   other member's username. `POST /api/dms` makes both people members
//!   again if one of them left.
//! - A DM to oneself is 422 `cannot_dm_self`; to an unknown user, 404
//!   `user_not_found`.
//! - A new member's read position starts at the newest stored offset, so
//!   joining does not make the room's whole history unread; `last_read_offset`
//!   stays null until their first read.
//! - Moderators may kick and ban members and other moderators, never the
//!   owner (403 `cannot_moderate_owner`), and nobody moderates themselves
//!   (409 `cannot_moderate_self`). Ownership cannot be given away: `role` is
//!   `moderator` or `member`.
//! - A ban of a non-member only records the ban. Unbanning someone who is not
//!   banned is a no-op that answers 204. An invite may still be sent to a
//!   banned user; it does not admit them.
//!
//! Unread counts are three counters kept by the database (see
//! migrations/0005_people.sql); moving a read position locks the room's
//! message counter `FOR SHARE`, so a batch the persister is storing at that
//! moment is counted exactly once.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use confab_common::record::{RecordKind, RoomRecord, UserRef};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, AuthUser, RoomId};
use crate::membership::publish_then_apply;
use crate::model::{CreateDm, MarkRead, Member, ReadList, ReadReceipt, Role, Room, SetRole, User};
use crate::rooms::{load_room, require_member, require_user, unknown_user, user_ref, RoomRow};
use crate::AppState;

/// `{id}` and `{user_id}` of the member routes. A malformed room id is 404
/// `room_not_found`, a malformed user id 404 `member_not_found`.
#[derive(Debug, Clone, Copy)]
pub struct RoomUser {
    pub room: Uuid,
    pub user: Uuid,
}

impl<S: Send + Sync> FromRequestParts<S> for RoomUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((room, user)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::room_not_found())?;
        let room = room.parse().map_err(|_| ApiError::room_not_found())?;
        let user = user.parse().map_err(|_| member_not_found())?;
        Ok(Self { room, user })
    }
}

fn member_not_found() -> ApiError {
    ApiError::not_found("member_not_found", "no such member of this room")
}

fn direct_room_conflict() -> ApiError {
    ApiError::conflict("direct_room", "a direct room admits nobody else")
}

/// 403 `banned` if `user` is banned from the room, 403 `direct_room` for a
/// direct room: the checks of a join before the room's own rules.
pub(crate) async fn check_may_join<C: GenericClient>(
    client: &C,
    room: &RoomRow,
    user: Uuid,
) -> Result<(), ApiError> {
    if room.direct {
        return Err(ApiError::forbidden(
            "direct_room",
            "direct rooms are opened with POST /api/dms",
        ));
    }
    let banned: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM room_bans WHERE room_id = $1 AND user_id = $2)",
            &[&room.id, &user],
        )
        .await?
        .get(0);
    if banned {
        return Err(ApiError::forbidden(
            "banned",
            "you are banned from this room",
        ));
    }
    Ok(())
}

/// 409 `direct_room` when `room` is a direct room.
pub(crate) async fn check_may_invite<C: GenericClient>(
    client: &C,
    room: Uuid,
) -> Result<(), ApiError> {
    let direct: bool = client
        .query_opt("SELECT direct FROM rooms WHERE id = $1", &[&room])
        .await?
        .is_some_and(|row| row.get(0));
    if direct {
        return Err(direct_room_conflict());
    }
    Ok(())
}

/// Locks the room's message counter against concurrent batches of the
/// persister (see the module docs); returns (chat messages in the room, of
/// which `user` sent, newest stored offset).
async fn lock_counts<C: GenericClient>(
    client: &C,
    room: Uuid,
    user: Uuid,
) -> Result<(i64, i64, i64), ApiError> {
    client
        .execute(
            "INSERT INTO room_message_counts (room_id) VALUES ($1) ON CONFLICT DO NOTHING",
            &[&room],
        )
        .await?;
    client
        .execute(
            "SELECT 1 FROM room_message_counts WHERE room_id = $1 FOR SHARE",
            &[&room],
        )
        .await?;
    // A separate statement, so its snapshot is taken after the lock: it sees
    // the whole of any batch the lock waited for (one statement would read
    // the counter's new version but the messages of its older snapshot).
    let row = client
        .query_one(
            "SELECT c.messages,
                    coalesce((SELECT s.messages FROM room_sender_counts s
                              WHERE s.room_id = $1 AND s.user_id = $2), 0),
                    coalesce((SELECT max(stream_offset) FROM messages WHERE room_id = $1), 0)
             FROM room_message_counts c WHERE c.room_id = $1",
            &[&room, &user],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// Starts or restarts `user`'s read position in `room` at the newest stored
/// offset (everything stored so far counts as read); a position already
/// further on is kept. Runs inside the transaction that adds the member.
pub(crate) async fn start_reading<C: GenericClient>(
    client: &C,
    room: Uuid,
    user: Uuid,
) -> Result<(), ApiError> {
    let (total, own, newest) = lock_counts(client, room, user).await?;
    client
        .execute(
            "INSERT INTO room_reads (room_id, user_id, last_read_offset, position, read_from_others)
             VALUES ($1, $2, NULL, $3, $4)
             ON CONFLICT (room_id, user_id) DO UPDATE
                 SET position = EXCLUDED.position, read_from_others = EXCLUDED.read_from_others
                 WHERE room_reads.position < EXCLUDED.position",
            &[&room, &user, &newest, &(total - own)],
        )
        .await?;
    Ok(())
}

/// Opens the direct room of the caller and `username`: the same room for the
/// same pair, whichever asks.
#[utoipa::path(
    post, path = "/api/dms", tag = "people",
    security(("bearer" = [])),
    request_body = CreateDm,
    responses(
        (status = 200, description = "The pair's direct room; both are members (any `member_joined` record was acknowledged)", body = Room),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 404, description = "No such user (`user_not_found`)", body = ErrorBody),
        (status = 422, description = "A direct room with oneself (`cannot_dm_self`)", body = ErrorBody),
        (status = 503, description = "The broker did not acknowledge an event or is down (`broker_unavailable`)", body = ErrorBody),
    )
)]
pub async fn open_dm(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiJson(body): ApiJson<CreateDm>,
) -> Result<Json<Room>, ApiError> {
    if !crate::auth::valid_username(&body.username) {
        return Err(ApiError::not_found("user_not_found", "no such user"));
    }
    let peer = {
        let conn = state.db().await?;
        require_user(&*conn, caller.id).await?;
        let row = conn
            .query_opt(
                "SELECT id, username FROM users WHERE lower(username) = lower($1)",
                &[&body.username],
            )
            .await?
            .ok_or_else(|| ApiError::not_found("user_not_found", "no such user"))?;
        UserRef {
            id: row.get(0),
            username: row.get(1),
        }
    };
    if peer.id == caller.id {
        return Err(ApiError::unprocessable(
            "cannot_dm_self",
            "a direct room needs another person",
        ));
    }
    let room = find_or_create_dm(&state, &user_ref(&caller), &peer).await?;
    for user in [user_ref(&caller), peer] {
        ensure_dm_member(&state, room, user).await?;
    }
    let row = load_room(&*state.db().await?, room, caller.id)
        .await?
        .ok_or_else(ApiError::room_not_found)?;
    Ok(Json(row.to_room()))
}

/// The pair's room id, creating the room (without members) if there is none.
/// The pair key decides between concurrent creators: the loser's insert
/// does nothing and it reads the winner's room.
async fn find_or_create_dm(state: &AppState, a: &UserRef, b: &UserRef) -> Result<Uuid, ApiError> {
    let (low, high) = if a.id < b.id { (a, b) } else { (b, a) };
    let mut conn = state.db().await?;
    let find = "SELECT room_id FROM direct_rooms WHERE user_low = $1 AND user_high = $2";
    if let Some(row) = conn.query_opt(find, &[&low.id, &high.id]).await? {
        return Ok(row.get(0));
    }
    let id = Uuid::now_v7();
    let name = format!("{} & {}", low.username, high.username);
    let tx = conn.transaction().await?;
    tx.execute(
        "INSERT INTO rooms (id, name, visibility, owner_id, direct)
         VALUES ($1, $2, 'private', $3, true)",
        &[&id, &name, &a.id],
    )
    .await
    .map_err(unknown_user)?;
    let won = tx
        .query_opt(
            "INSERT INTO direct_rooms (user_low, user_high, room_id) VALUES ($1, $2, $3)
             ON CONFLICT (user_low, user_high) DO NOTHING RETURNING room_id",
            &[&low.id, &high.id, &id],
        )
        .await
        .map_err(unknown_user)?;
    if won.is_some() {
        tx.commit().await?;
        tracing::info!(room_id = %id, "direct room created");
        return Ok(id);
    }
    tx.rollback().await?;
    let row = conn
        .query_one(find, &[&low.id, &high.id])
        .await
        .map_err(ApiError::from)?;
    Ok(row.get(0))
}

/// Makes `user` a member of the direct room `room` unless they are one.
async fn ensure_dm_member(state: &AppState, room: Uuid, user: UserRef) -> Result<(), ApiError> {
    let guard = state.member_locks().lock(room, user.id).await;
    let member: bool = state
        .db()
        .await?
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM room_members WHERE room_id = $1 AND user_id = $2)",
            &[&room, &user.id],
        )
        .await?
        .get(0);
    if member {
        return Ok(());
    }
    let id = user.id;
    let record = RoomRecord::member_event(room, user, RecordKind::MemberJoined);
    publish_then_apply(state, record, guard, move |state| async move {
        let mut conn = state.db().await?;
        let tx = conn.transaction().await?;
        tx.execute(
            "INSERT INTO room_members (room_id, user_id, role) VALUES ($1, $2, 'member')
             ON CONFLICT (room_id, user_id) DO NOTHING",
            &[&room, &id],
        )
        .await
        .map_err(unknown_user)?;
        start_reading(&tx, room, id).await?;
        tx.commit().await?;
        Ok(())
    })
    .await
}

/// Moves the caller's read position forward.
#[utoipa::path(
    post, path = "/api/rooms/{id}/read", tag = "people",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id")),
    request_body = MarkRead,
    responses(
        (status = 204, description = "Read up to `offset` (a lower offset than the current position is ignored)"),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a member (`not_a_member`)", body = ErrorBody),
        (status = 404, description = "No such room, or invisible", body = ErrorBody),
        (status = 422, description = "A negative offset (`invalid_offset`)", body = ErrorBody),
    )
)]
pub async fn mark_read(
    State(state): State<AppState>,
    caller: AuthUser,
    RoomId(room): RoomId,
    ApiJson(body): ApiJson<MarkRead>,
) -> Result<StatusCode, ApiError> {
    if body.offset < 0 {
        return Err(ApiError::unprocessable(
            "invalid_offset",
            "offset must not be negative",
        ));
    }
    let mut conn = state.db().await?;
    require_member(&conn, room, caller.id).await?;
    let tx = conn.transaction().await?;
    let (total, own, newest) = lock_counts(&tx, room, caller.id).await?;
    let current = tx
        .query_opt(
            "SELECT position FROM room_reads WHERE room_id = $1 AND user_id = $2 FOR UPDATE",
            &[&room, &caller.id],
        )
        .await?
        .map(|row| row.get::<_, i64>(0));
    let offset = body.offset;
    match current {
        Some(position) if offset <= position => {}
        _ => {
            // Others' chat messages stored at or below the new position:
            // all of them when it reaches the newest stored offset, else
            // those read now added to those read before.
            let read = if offset >= newest {
                total - own
            } else {
                let from = current.unwrap_or(i64::MIN);
                let newly: i64 = tx
                    .query_one(
                        "SELECT count(*) FROM messages
                         WHERE room_id = $1 AND kind = 'message' AND NOT deleted AND user_id <> $2
                           AND stream_offset > $3 AND stream_offset <= $4",
                        &[&room, &caller.id, &from, &offset],
                    )
                    .await?
                    .get(0);
                let before: i64 = tx
                    .query_opt(
                        "SELECT read_from_others FROM room_reads WHERE room_id = $1 AND user_id = $2",
                        &[&room, &caller.id],
                    )
                    .await?
                    .map_or(0, |row| row.get(0));
                before + newly
            };
            tx.execute(
                "INSERT INTO room_reads (room_id, user_id, last_read_offset, position, read_from_others)
                 VALUES ($1, $2, $3, $3, $4)
                 ON CONFLICT (room_id, user_id) DO UPDATE
                     SET position = EXCLUDED.position, read_from_others = EXCLUDED.read_from_others",
                &[&room, &caller.id, &offset, &read],
            )
            .await?;
        }
    }
    tx.execute(
        "UPDATE room_reads SET last_read_offset = greatest(coalesce(last_read_offset, $3), $3)
         WHERE room_id = $1 AND user_id = $2",
        &[&room, &caller.id, &offset],
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Read receipts: how far each member has read.
#[utoipa::path(
    get, path = "/api/rooms/{id}/reads", tag = "people",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Room id")),
    responses(
        (status = 200, description = "The members who have marked something read, furthest first", body = ReadList),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a member (`not_a_member`)", body = ErrorBody),
        (status = 404, description = "No such room, or invisible", body = ErrorBody),
    )
)]
pub async fn reads(
    State(state): State<AppState>,
    caller: AuthUser,
    RoomId(room): RoomId,
) -> Result<Json<ReadList>, ApiError> {
    let conn = state.db().await?;
    require_member(&conn, room, caller.id).await?;
    let rows = conn
        .query(
            "SELECT u.id, u.username, rr.last_read_offset
             FROM room_reads rr
             JOIN room_members m ON m.room_id = rr.room_id AND m.user_id = rr.user_id
             JOIN users u ON u.id = rr.user_id
             WHERE rr.room_id = $1 AND rr.last_read_offset IS NOT NULL
             ORDER BY rr.last_read_offset DESC, u.username",
            &[&room],
        )
        .await?;
    let reads = rows
        .iter()
        .map(|row| ReadReceipt {
            user: User {
                id: row.get(0),
                username: row.get(1),
            },
            offset: row.get(2),
        })
        .collect();
    Ok(Json(ReadList { reads }))
}

/// A room member as moderation needs them.
struct MemberRow {
    user: UserRef,
    role: Role,
    joined_at: time::OffsetDateTime,
}

async fn load_member<C: GenericClient>(
    client: &C,
    room: Uuid,
    user: Uuid,
) -> Result<Option<MemberRow>, ApiError> {
    let row = client
        .query_opt(
            "SELECT u.id, u.username, m.role, m.joined_at
             FROM room_members m JOIN users u ON u.id = m.user_id
             WHERE m.room_id = $1 AND m.user_id = $2",
            &[&room, &user],
        )
        .await?;
    row.map(|row| {
        let role: &str = row.get(2);
        Ok(MemberRow {
            user: UserRef {
                id: row.get(0),
                username: row.get(1),
            },
            role: Role::parse(role).ok_or_else(|| ApiError::internal(format!("role {role:?}")))?,
            joined_at: row.get(3),
        })
    })
    .transpose()
}

/// The caller's role in `room`, which they must belong to: 404 for an
/// invisible room, 403 `not_a_member` otherwise.
async fn caller_role<C: GenericClient>(
    client: &C,
    room: Uuid,
    caller: Uuid,
) -> Result<(RoomRow, Role), ApiError> {
    let row = load_room(client, room, caller)
        .await?
        .filter(RoomRow::visible)
        .ok_or_else(ApiError::room_not_found)?;
    match row.my_role {
        Some(role) => Ok((row, role)),
        None => Err(ApiError::not_a_member()),
    }
}

/// 403: the caller is neither the owner nor a moderator.
fn not_a_moderator() -> ApiError {
    ApiError::forbidden(
        "not_a_moderator",
        "only the owner and moderators may do this",
    )
}

/// 403: nobody kicks or bans the owner.
fn cannot_moderate_owner() -> ApiError {
    ApiError::forbidden(
        "cannot_moderate_owner",
        "the owner cannot be kicked or banned",
    )
}

/// Checks that the caller may kick or ban `target` in `room`.
fn check_moderation(
    room: &RoomRow,
    role: Role,
    caller: Uuid,
    target: Uuid,
) -> Result<(), ApiError> {
    if !role.moderates() {
        return Err(not_a_moderator());
    }
    if target == caller {
        return Err(ApiError::conflict(
            "cannot_moderate_self",
            "leave the room instead",
        ));
    }
    if target == room.owner_id {
        return Err(cannot_moderate_owner());
    }
    Ok(())
}

/// Sets a member's role. Only the owner may.
#[utoipa::path(
    patch, path = "/api/rooms/{id}/members/{user_id}", tag = "people",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Room id"),
        ("user_id" = Uuid, Path, description = "The member"),
    ),
    request_body = SetRole,
    responses(
        (status = 200, description = "The member with their new role", body = Member),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a member (`not_a_member`) or not the owner (`not_the_owner`), or the target is the owner (`cannot_change_owner`)", body = ErrorBody),
        (status = 404, description = "No such room, or invisible (`room_not_found`); no such member (`member_not_found`)", body = ErrorBody),
        (status = 422, description = "`role` is not `moderator` or `member` (`invalid_role`)", body = ErrorBody),
    )
)]
pub async fn set_role(
    State(state): State<AppState>,
    caller: AuthUser,
    target: RoomUser,
    ApiJson(body): ApiJson<SetRole>,
) -> Result<Json<Member>, ApiError> {
    let conn = state.db().await?;
    let (room, role) = caller_role(&*conn, target.room, caller.id).await?;
    if role != Role::Owner {
        return Err(ApiError::forbidden(
            "not_the_owner",
            "only the owner sets roles",
        ));
    }
    if body.role == Role::Owner {
        return Err(ApiError::unprocessable(
            "invalid_role",
            "role is moderator or member; ownership cannot be given away",
        ));
    }
    if target.user == room.owner_id || target.user == caller.id {
        return Err(ApiError::forbidden(
            "cannot_change_owner",
            "the owner's role cannot be changed",
        ));
    }
    let updated = conn
        .execute(
            "UPDATE room_members SET role = $3 WHERE room_id = $1 AND user_id = $2",
            &[&target.room, &target.user, &body.role.as_str()],
        )
        .await?;
    if updated == 0 {
        return Err(member_not_found());
    }
    let member = load_member(&*conn, target.room, target.user)
        .await?
        .ok_or_else(member_not_found)?;
    tracing::info!(room_id = %target.room, user_id = %target.user, role = body.role.as_str(), "role set");
    Ok(Json(Member {
        user: User {
            id: member.user.id,
            username: member.user.username,
        },
        role: member.role,
        joined_at: member.joined_at,
    }))
}

/// The record of a kick or ban: `member_left` with `reason` and `by`.
fn removal(room: Uuid, target: UserRef, by: UserRef, reason: &str) -> RoomRecord {
    let data = serde_json::json!({
        "type": RecordKind::MemberLeft.as_str(),
        "user": &target,
        "reason": reason,
        "by": &by,
    });
    RoomRecord::event(room, target, RecordKind::MemberLeft, data)
}

/// Removes a member.
#[utoipa::path(
    post, path = "/api/rooms/{id}/members/{user_id}/kick", tag = "people",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Room id"),
        ("user_id" = Uuid, Path, description = "The member"),
    ),
    responses(
        (status = 204, description = "Kicked: a `member_left` record with `\"reason\": \"kicked\"` and `by` was acknowledged, and the gateway unsubscribes them"),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a member (`not_a_member`) or moderator (`not_a_moderator`), or the target is the owner (`cannot_moderate_owner`)", body = ErrorBody),
        (status = 404, description = "No such room, or invisible (`room_not_found`); no such member (`member_not_found`)", body = ErrorBody),
        (status = 409, description = "The caller named themselves (`cannot_moderate_self`)", body = ErrorBody),
        (status = 503, description = "The broker did not acknowledge the event or is down (`broker_unavailable`)", body = ErrorBody),
    )
)]
pub async fn kick(
    State(state): State<AppState>,
    caller: AuthUser,
    target: RoomUser,
) -> Result<StatusCode, ApiError> {
    {
        let conn = state.db().await?;
        let (room, role) = caller_role(&*conn, target.room, caller.id).await?;
        check_moderation(&room, role, caller.id, target.user)?;
    }
    let guard = state.member_locks().lock(target.room, target.user).await;
    let member = load_member(&*state.db().await?, target.room, target.user)
        .await?
        .ok_or_else(member_not_found)?;
    if member.role == Role::Owner {
        return Err(cannot_moderate_owner());
    }
    let record = removal(target.room, member.user, user_ref(&caller), "kicked");
    let (room, user) = (target.room, target.user);
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
    tracing::info!(room_id = %room, user_id = %user, by = %caller.id, "member kicked");
    Ok(StatusCode::NO_CONTENT)
}

/// Bans a user: removes them if they are a member and keeps them out.
#[utoipa::path(
    post, path = "/api/rooms/{id}/bans/{user_id}", tag = "people",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Room id"),
        ("user_id" = Uuid, Path, description = "The user"),
    ),
    responses(
        (status = 204, description = "Banned (or already); a member is removed with a `member_left` record with `\"reason\": \"banned\"` and `by`"),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a member (`not_a_member`) or moderator (`not_a_moderator`), or the target is the owner (`cannot_moderate_owner`)", body = ErrorBody),
        (status = 404, description = "No such room, or invisible (`room_not_found`); no such user (`user_not_found`)", body = ErrorBody),
        (status = 409, description = "The caller named themselves (`cannot_moderate_self`)", body = ErrorBody),
        (status = 503, description = "The broker did not acknowledge the event or is down (`broker_unavailable`)", body = ErrorBody),
    )
)]
pub async fn ban(
    State(state): State<AppState>,
    caller: AuthUser,
    target: RoomUser,
) -> Result<StatusCode, ApiError> {
    {
        let conn = state.db().await?;
        let (room, role) = caller_role(&*conn, target.room, caller.id).await?;
        check_moderation(&room, role, caller.id, target.user)?;
        let exists: bool = conn
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)",
                &[&target.user],
            )
            .await?
            .get(0);
        if !exists {
            return Err(ApiError::not_found("user_not_found", "no such user"));
        }
    }
    // The member's lock orders the ban with a concurrent join of theirs,
    // which checks bans again under it.
    let guard = state.member_locks().lock(target.room, target.user).await;
    let member = load_member(&*state.db().await?, target.room, target.user).await?;
    let (room, user, by) = (target.room, target.user, caller.id);
    let write = move |state: AppState| async move {
        let mut conn = state.db().await?;
        let tx = conn.transaction().await?;
        tx.execute(
            "DELETE FROM room_members WHERE room_id = $1 AND user_id = $2",
            &[&room, &user],
        )
        .await?;
        tx.execute(
            "INSERT INTO room_bans (room_id, user_id, banned_by) VALUES ($1, $2, $3)
             ON CONFLICT (room_id, user_id) DO NOTHING",
            &[&room, &user, &by],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    };
    match member {
        Some(member) if member.role == Role::Owner => {
            return Err(cannot_moderate_owner());
        }
        Some(member) => {
            let record = removal(room, member.user, user_ref(&caller), "banned");
            publish_then_apply(&state, record, guard, write).await?;
        }
        None => {
            write(state.clone()).await?;
            drop(guard);
        }
    }
    tracing::info!(room_id = %room, user_id = %user, by = %caller.id, "user banned");
    Ok(StatusCode::NO_CONTENT)
}

/// Lifts a ban.
#[utoipa::path(
    delete, path = "/api/rooms/{id}/bans/{user_id}", tag = "people",
    security(("bearer" = [])),
    params(
        ("id" = Uuid, Path, description = "Room id"),
        ("user_id" = Uuid, Path, description = "The user"),
    ),
    responses(
        (status = 204, description = "Not banned (any more)"),
        (status = 401, description = "Missing, forged or expired token", body = ErrorBody),
        (status = 403, description = "The caller is not a member (`not_a_member`) or moderator (`not_a_moderator`)", body = ErrorBody),
        (status = 404, description = "No such room, or invisible (`room_not_found`)", body = ErrorBody),
    )
)]
pub async fn unban(
    State(state): State<AppState>,
    caller: AuthUser,
    target: RoomUser,
) -> Result<StatusCode, ApiError> {
    let conn = state.db().await?;
    let (_, role) = caller_role(&*conn, target.room, caller.id).await?;
    if !role.moderates() {
        return Err(not_a_moderator());
    }
    conn.execute(
        "DELETE FROM room_bans WHERE room_id = $1 AND user_id = $2",
        &[&target.room, &target.user],
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_records_carry_reason_and_by() {
        let target = UserRef {
            id: Uuid::now_v7(),
            username: "bob".into(),
        };
        let by = UserRef {
            id: Uuid::now_v7(),
            username: "alice".into(),
        };
        let room = Uuid::now_v7();
        let record = removal(room, target.clone(), by.clone(), "kicked");
        assert_eq!(record.kind, RecordKind::MemberLeft);
        assert_eq!(record.user, target);
        let data: serde_json::Value = serde_json::from_str(record.data.get()).unwrap();
        assert_eq!(data["type"], "member_left");
        assert_eq!(data["reason"], "kicked");
        assert_eq!(data["user"]["username"], "bob");
        assert_eq!(data["by"]["id"], by.id.to_string());
        assert_eq!(data["by"]["username"], "alice");
    }

    #[test]
    fn only_owners_and_moderators_moderate() {
        assert!(Role::Owner.moderates());
        assert!(Role::Moderator.moderates());
        assert!(!Role::Member.moderates());
        for role in [Role::Owner, Role::Moderator, Role::Member] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("admin"), None);
    }
}
