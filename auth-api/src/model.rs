//! The JSON bodies of the REST API (CONTRACT §3 and §7).

use confab_common::record::RecordKind;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub username: String,
}

/// The body of register and login.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Credentials {
    /// 3–32 characters of `[A-Za-z0-9_.-]`.
    #[schema(min_length = 3, max_length = 32, pattern = "^[A-Za-z0-9_.-]{3,32}$")]
    pub username: String,
    /// At least 8 characters (and at most 1024 bytes).
    #[schema(min_length = 8, max_length = 256)]
    pub password: String,
}

/// The answer to register and login.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuthResponse {
    pub user: User,
    /// An access token: `Authorization: Bearer <token>`, and the WebSocket
    /// connect token.
    pub token: String,
    /// When the token expires.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// Who can see and join a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Public,
    Private,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Private => "private",
        }
    }
}

/// The body of `POST /api/rooms`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateRoom {
    /// 1–100 characters, no control characters; surrounding whitespace is
    /// dropped.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    pub visibility: Visibility,
    /// Only for private rooms: they then admit by password instead of by invite.
    #[serde(default)]
    pub password: Option<String>,
}

/// A room as a given caller sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Room {
    pub id: Uuid,
    pub name: String,
    pub visibility: Visibility,
    /// True for private rooms that admit by password.
    pub requires_password: bool,
    pub owner_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The WebSocket channel, `room:<id>`.
    pub channel: String,
    pub member_count: i64,
    /// Whether the caller is a member.
    pub is_member: bool,
    /// A direct room: private to its two members; its `name` is the other
    /// member's username as the caller sees it.
    pub direct: bool,
    /// The caller's role, or null when not a member.
    pub my_role: Option<Role>,
    /// The offset the caller last marked read; null before the first read.
    pub last_read_offset: Option<i64>,
    /// Chat messages from others above the caller's read position (0 for
    /// non-members).
    pub unread_count: i64,
}

/// The answer to `GET /api/rooms`: one page, in creation order.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoomList {
    pub rooms: Vec<Room>,
    /// The `after` of the next page; null on the last page.
    pub next_after: Option<Uuid>,
}

/// The optional body of `POST /api/rooms/{id}/join`.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct JoinRoom {
    /// Required for password rooms, ignored otherwise.
    #[serde(default)]
    pub password: Option<String>,
}

/// The body of `POST /api/rooms/{id}/invites`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateInvite {
    pub username: String,
}

/// The answer to `POST /api/rooms/{id}/invites`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Invite {
    pub room_id: Uuid,
    /// The invited user.
    pub user: User,
    /// The member who invited them.
    pub invited_by: Uuid,
}

/// A member's role in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Moderator,
    Member,
}

impl Role {
    /// The name used in JSON and in `room_members.role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Moderator => "moderator",
            Self::Member => "member",
        }
    }

    /// Reads `room_members.role`.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "owner" => Some(Self::Owner),
            "moderator" => Some(Self::Moderator),
            "member" => Some(Self::Member),
            _ => None,
        }
    }

    /// Whether this role may kick and ban.
    pub fn moderates(self) -> bool {
        matches!(self, Self::Owner | Self::Moderator)
    }
}

/// One member of a room.
#[derive(Debug, Serialize, ToSchema)]
pub struct Member {
    pub user: User,
    pub role: Role,
    #[serde(with = "time::serde::rfc3339")]
    pub joined_at: OffsetDateTime,
}

/// The answer to `GET /api/rooms/{id}/members`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberList {
    pub members: Vec<Member>,
}

/// One persisted room record: a chat message or a membership event, with
/// the changes made to it since (CONTRACT §7) folded in.
#[derive(Debug, Serialize, ToSchema)]
pub struct Message {
    pub id: Uuid,
    pub room_id: Uuid,
    /// The stream position: the Kafka offset, also the WebSocket publication offset.
    pub offset: i64,
    /// `message`, `member_joined` or `member_left`: the record kinds of
    /// `confab_common::record::RecordKind` that history lists.
    #[schema(value_type = String, pattern = "^(message|member_joined|member_left)$")]
    pub kind: RecordKind,
    /// The sender, or the member who joined or left.
    pub user: User,
    /// The publication data as it was sent, with `text` replaced by the
    /// latest edit; null once the message is deleted.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Box<RawValue>>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the current text was written by an edit; null if never edited.
    #[serde(with = "time::serde::rfc3339::option")]
    pub edited_at: Option<OffsetDateTime>,
    /// Whether the message was deleted (its `data` is then null).
    pub deleted: bool,
    /// The message of the same room this one answers.
    pub reply_to: Option<Uuid>,
    /// The reactions, in the order they were first given.
    pub reactions: Vec<Reaction>,
}

/// The reactions of one emoji to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Reaction {
    /// One emoji, or a `:short_name:`.
    pub emoji: String,
    /// How many members reacted with it.
    pub count: i64,
    /// Whether the caller is one of them.
    pub me: bool,
}

/// One page of history, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    /// The `before` of the next, older page; null once history is exhausted.
    pub next_before: Option<i64>,
}

/// The body of `PATCH /api/rooms/{id}/messages/{message_id}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EditMessage {
    /// The new text: 1–4000 characters, like a published message's.
    #[schema(min_length = 1, max_length = 4000)]
    pub text: String,
}

/// One page of search results, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchPage {
    pub messages: Vec<Message>,
    /// The `before` of the next, older page (the id of this page's oldest
    /// message); null once there are no more results.
    pub next_before: Option<Uuid>,
}

/// The answer to `POST /api/rooms/{id}/subscription-token`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionToken {
    /// A JWT for this user and the room's channel.
    pub token: String,
}

/// The body of `POST /api/dms`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateDm {
    /// The other person.
    pub username: String,
}

/// The body of `POST /api/rooms/{id}/read`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct MarkRead {
    /// A stream offset; a position below the current one is ignored.
    #[schema(minimum = 0)]
    pub offset: i64,
}

/// One member's read position.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadReceipt {
    pub user: User,
    /// The offset they last marked read.
    pub offset: i64,
}

/// The answer to `GET /api/rooms/{id}/reads`: the members who have read
/// something, furthest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadList {
    pub reads: Vec<ReadReceipt>,
}

/// The body of `PATCH /api/rooms/{id}/members/{user_id}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SetRole {
    /// `moderator` or `member`; ownership cannot be given away.
    pub role: Role,
}
