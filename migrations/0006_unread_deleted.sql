-- Confab schema, version 6: a deleted message is no longer unread.
--
-- Migration 0005 counts chat messages as the persister stores them. A delete
-- (persister/src/store.rs) keeps the row, with `deleted` set, so without this
-- migration the room went on counting it: a message another member took back
-- stayed in every reader's unread count for good. Now a delete takes the
-- message out of the three counters of 0005:
--
--   room_message_counts.messages   one less in the room,
--   room_sender_counts.messages    one less from its author,
--   room_reads.read_from_others    one less for each other member whose
--                                  position is at or past it,
--
-- so the unread count of a reader who had not reached it drops by one and
-- nobody else's changes. It runs under the same lock as a stored batch (the
-- room's room_message_counts row, updated first), so a read position moving
-- at the same time is counted against the message either before its delete
-- or after, never both: auth-api's newly read range counts only messages
-- that are not deleted.

-- Counting a newly read range: others' chat messages of one room by offset,
-- those taken back left out.
DROP INDEX messages_room_chat;
CREATE INDEX messages_room_chat ON messages (room_id, stream_offset, user_id)
    WHERE kind = 'message' AND NOT deleted;

-- The chat messages an UPDATE statement deleted (a delete is final:
-- `deleted` never goes back to false).
CREATE FUNCTION messages_unread_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM changed_new n JOIN changed_old o ON o.id = n.id
        WHERE n.kind = 'message' AND n.deleted AND NOT o.deleted
    ) THEN
        RETURN NULL;
    END IF;
    -- The room counters first, in a stable order as the insert trigger
    -- takes them, so a delete and a batch never deadlock.
    PERFORM 1 FROM room_message_counts
    WHERE room_id IN (
        SELECT n.room_id FROM changed_new n JOIN changed_old o ON o.id = n.id
        WHERE n.kind = 'message' AND n.deleted AND NOT o.deleted
    )
    ORDER BY room_id FOR UPDATE;
    UPDATE room_message_counts c SET messages = c.messages - d.n
    FROM (SELECT n.room_id, count(*) AS n
          FROM changed_new n JOIN changed_old o ON o.id = n.id
          WHERE n.kind = 'message' AND n.deleted AND NOT o.deleted
          GROUP BY n.room_id) d
    WHERE c.room_id = d.room_id;
    UPDATE room_sender_counts c SET messages = c.messages - d.n
    FROM (SELECT n.room_id, n.user_id, count(*) AS n
          FROM changed_new n JOIN changed_old o ON o.id = n.id
          WHERE n.kind = 'message' AND n.deleted AND NOT o.deleted
          GROUP BY n.room_id, n.user_id) d
    WHERE c.room_id = d.room_id AND c.user_id = d.user_id;
    -- Readers already past a deleted message had counted it as read. A
    -- statement of its own, so it sees every read position committed before
    -- the counter lock was granted.
    UPDATE room_reads r SET read_from_others = r.read_from_others - d.n
    FROM (
        SELECT r2.room_id, r2.user_id, count(*) AS n
        FROM changed_new n
        JOIN changed_old o ON o.id = n.id
        JOIN room_reads r2 ON r2.room_id = n.room_id
                          AND r2.position >= n.stream_offset
                          AND r2.user_id <> n.user_id
        WHERE n.kind = 'message' AND n.deleted AND NOT o.deleted
        GROUP BY r2.room_id, r2.user_id
    ) d
    WHERE r.room_id = d.room_id AND r.user_id = d.user_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_unread_deleted
    AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS changed_old NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION messages_unread_deleted();

-- Messages deleted before this migration leave the counters now.
UPDATE room_message_counts c SET messages = c.messages - d.n
FROM (SELECT room_id, count(*) AS n FROM messages
      WHERE kind = 'message' AND deleted GROUP BY room_id) d
WHERE c.room_id = d.room_id;
UPDATE room_sender_counts c SET messages = c.messages - d.n
FROM (SELECT room_id, user_id, count(*) AS n FROM messages
      WHERE kind = 'message' AND deleted GROUP BY room_id, user_id) d
WHERE c.room_id = d.room_id AND c.user_id = d.user_id;
UPDATE room_reads r SET read_from_others = r.read_from_others - d.n
FROM (
    SELECT r2.room_id, r2.user_id, count(*) AS n
    FROM messages m
    JOIN room_reads r2 ON r2.room_id = m.room_id
                      AND r2.position >= m.stream_offset
                      AND r2.user_id <> m.user_id
    WHERE m.kind = 'message' AND m.deleted
    GROUP BY r2.room_id, r2.user_id
) d
WHERE r.room_id = d.room_id AND r.user_id = d.user_id;
