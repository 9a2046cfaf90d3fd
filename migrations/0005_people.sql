-- Confab schema, version 5: people (CONTRACT §8). Roles, bans, direct rooms
-- and read positions with unread counts that cost a few index probes per room.

-- Roles: owner, moderator, member.
ALTER TABLE room_members DROP CONSTRAINT IF EXISTS room_members_role_check;
ALTER TABLE room_members ADD CONSTRAINT room_members_role_check
    CHECK (role IN ('owner', 'moderator', 'member'));

-- A banned user cannot join the room again, whatever invite or password they
-- hold, until a moderator lifts the ban.
CREATE TABLE room_bans (
    room_id    uuid        NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    banned_by  uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);

-- Direct rooms: private rooms of exactly two people. The pair is stored in
-- order (user_low < user_high), so the primary key makes one room per pair
-- whichever of the two asks first, even when both ask at once.
ALTER TABLE rooms ADD COLUMN direct boolean NOT NULL DEFAULT false;
ALTER TABLE rooms ADD CONSTRAINT rooms_direct_private
    CHECK (NOT direct OR (visibility = 'private' AND password_hash IS NULL));
CREATE TABLE direct_rooms (
    user_low  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_high uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    room_id   uuid NOT NULL UNIQUE REFERENCES rooms (id) ON DELETE CASCADE,
    PRIMARY KEY (user_low, user_high),
    CHECK (user_low < user_high)
);

-- Unread counts.
--
-- A user's unread count in a room is the number of chat messages (kind
-- 'message') from others with an offset above their read position. Counting
-- those rows on every room list would cost as many rows as there are unread
-- messages (a user in 500 rooms of 2000 unread messages each: a million), so
-- three counters are kept instead, and the count is
--
--     room_message_counts.messages            (chat messages in the room)
--   - room_sender_counts.messages             (of which the user sent)
--   - room_reads.read_from_others             (others' messages at or below
--                                              the read position)
--
-- three primary-key probes per room. The persister's batch inserts keep the
-- first two with one statement-level trigger (only rows actually inserted
-- are counted: ON CONFLICT DO NOTHING leaves duplicates out of the
-- transition table). A read position may run ahead of what the persister has
-- stored (a client marks read what it received live), so the same trigger
-- adds newly stored messages at or below a reader's position to that
-- reader's read_from_others.
--
-- The race between a reader moving its position and a batch being stored is
-- closed by the room's room_message_counts row: the trigger updates it
-- (an exclusive row lock until the batch commits) before it looks at
-- room_reads, and auth-api locks it FOR SHARE before it moves a position and
-- counts the newly read range. Whichever comes second sees the other's
-- committed work, so every message is counted exactly once.
CREATE TABLE room_message_counts (
    room_id  uuid   PRIMARY KEY,
    messages bigint NOT NULL DEFAULT 0
);
CREATE TABLE room_sender_counts (
    room_id  uuid   NOT NULL,
    user_id  uuid   NOT NULL,
    messages bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE TABLE room_reads (
    room_id          uuid   NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id          uuid   NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The offset the user last marked read, as the API shows it (null until
    -- their first read).
    last_read_offset bigint,
    -- What counting starts from: the last read offset, or, for a user who
    -- joined later than that, the newest stored offset when they joined (a
    -- new member does not inherit the room's whole history as unread).
    position         bigint NOT NULL,
    -- Chat messages from others stored with an offset at or below position.
    read_from_others bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_reads_room_position ON room_reads (room_id, position);
-- Counting a newly read range: others' chat messages of one room by offset.
CREATE INDEX messages_room_chat ON messages (room_id, stream_offset, user_id)
    WHERE kind = 'message';

INSERT INTO room_message_counts (room_id, messages)
    SELECT id, 0 FROM rooms;
INSERT INTO room_message_counts (room_id, messages)
    SELECT room_id, count(*) FROM messages WHERE kind = 'message' GROUP BY room_id
    ON CONFLICT (room_id) DO UPDATE SET messages = EXCLUDED.messages;
INSERT INTO room_sender_counts (room_id, user_id, messages)
    SELECT room_id, user_id, count(*) FROM messages WHERE kind = 'message'
    GROUP BY room_id, user_id;
-- Existing members start with everything stored so far read.
INSERT INTO room_reads (room_id, user_id, last_read_offset, position, read_from_others)
    SELECT m.room_id, m.user_id, NULL,
           coalesce((SELECT max(stream_offset) FROM messages x WHERE x.room_id = m.room_id), 0),
           coalesce((SELECT count(*) FROM messages x
                     WHERE x.room_id = m.room_id AND x.kind = 'message' AND x.user_id <> m.user_id), 0)
    FROM room_members m;

-- Every room has its counter row from the start, so auth-api always has a
-- row to lock.
CREATE FUNCTION rooms_message_count_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO room_message_counts (room_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER rooms_message_count_row
    AFTER INSERT ON rooms
    FOR EACH ROW EXECUTE FUNCTION rooms_message_count_row();

CREATE FUNCTION messages_unread_counters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Rooms in a stable order, so concurrent batches never deadlock.
    INSERT INTO room_message_counts AS c (room_id, messages)
        SELECT room_id, count(*) FROM added WHERE kind = 'message'
        GROUP BY room_id ORDER BY room_id
        ON CONFLICT (room_id) DO UPDATE SET messages = c.messages + EXCLUDED.messages;
    INSERT INTO room_sender_counts AS c (room_id, user_id, messages)
        SELECT room_id, user_id, count(*) FROM added WHERE kind = 'message'
        GROUP BY room_id, user_id ORDER BY room_id, user_id
        ON CONFLICT (room_id, user_id) DO UPDATE SET messages = c.messages + EXCLUDED.messages;
    -- Readers who are already past some of these messages.
    UPDATE room_reads r SET read_from_others = r.read_from_others + n.n
    FROM (
        SELECT r2.room_id, r2.user_id, count(*) AS n
        FROM (SELECT room_id, min(stream_offset) AS low FROM added WHERE kind = 'message'
              GROUP BY room_id) lows
        JOIN room_reads r2 ON r2.room_id = lows.room_id AND r2.position >= lows.low
        JOIN added a ON a.room_id = r2.room_id AND a.kind = 'message'
                    AND a.stream_offset <= r2.position AND a.user_id <> r2.user_id
        GROUP BY r2.room_id, r2.user_id
    ) n
    WHERE r.room_id = n.room_id AND r.user_id = n.user_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_unread_counters
    AFTER INSERT ON messages
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION messages_unread_counters();
