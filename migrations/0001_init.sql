-- Confab schema, version 1.
-- Only auth-api writes users, rooms, room_members and room_invites.
-- Only the persister writes messages and dead_letters.

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    username      text        NOT NULL,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Usernames are unique regardless of case, as users of chat services expect.
CREATE UNIQUE INDEX users_username_key ON users (lower(username));

CREATE TABLE rooms (
    id            uuid        PRIMARY KEY,
    name          text        NOT NULL,
    visibility    text        NOT NULL CHECK (visibility IN ('public', 'private')),
    -- Argon2id PHC string; set only for private rooms that admit by password.
    password_hash text,
    owner_id      uuid        NOT NULL REFERENCES users (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (visibility = 'private' OR password_hash IS NULL)
);
CREATE INDEX rooms_public_created ON rooms (created_at) WHERE visibility = 'public';

CREATE TABLE room_members (
    room_id   uuid        NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id   uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role      text        NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'member')),
    joined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_user ON room_members (user_id);

CREATE TABLE room_invites (
    room_id    uuid        NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    invited_by uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_invites_user ON room_invites (user_id);

-- One row per broker record. The key (room_id, stream_offset) identifies the
-- record (a room lives in exactly one partition), so storing the same record
-- again is a no-op, and it serves newest-first keyset pagination.
CREATE TABLE messages (
    room_id         uuid        NOT NULL,
    stream_offset   bigint      NOT NULL,
    id              uuid        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('message', 'member_joined', 'member_left')),
    user_id         uuid        NOT NULL,
    username        text        NOT NULL,
    -- json, not jsonb: history returns the data exactly as it was sent.
    data            json        NOT NULL,
    created_at      timestamptz NOT NULL,
    kafka_partition integer     NOT NULL,
    persisted_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, stream_offset)
);

-- Records the persister could not read. Kept so that nothing is silently lost
-- and a bad record never blocks its partition.
CREATE TABLE dead_letters (
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    record_key      bytea,
    payload         bytea,
    error           text        NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, kafka_partition, kafka_offset)
);
