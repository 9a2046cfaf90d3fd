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

-- Takes deleted chat messages (their rooms, offsets and authors, element by
-- element) out of the counters. The trigger below calls it for the messages
-- one statement deleted, and this migration once for those deleted before it.
CREATE FUNCTION unread_forget(rooms uuid[], offsets bigint[], authors uuid[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- The room counters first, in a stable order as the insert trigger
    -- takes them, so a delete and a batch never deadlock.
    PERFORM 1 FROM room_message_counts WHERE room_id = ANY (rooms)
    ORDER BY room_id FOR UPDATE;
    UPDATE room_message_counts c SET messages = c.messages - d.n
    FROM (SELECT room_id, count(*) AS n FROM unnest(rooms) AS t (room_id)
          GROUP BY room_id) d
    WHERE c.room_id = d.room_id;
    UPDATE room_sender_counts c SET messages = c.messages - d.n
    FROM (SELECT room_id, user_id, count(*) AS n
          FROM unnest(rooms, authors) AS t (room_id, user_id)
          GROUP BY room_id, user_id) d
    WHERE c.room_id = d.room_id AND c.user_id = d.user_id;
    -- Readers already past a deleted message had counted it as read. A
    -- statement of its own, so it sees every read position committed before
    -- the counter lock was granted.
    UPDATE room_reads r SET read_from_others = r.read_from_others - d.n
    FROM (
        SELECT r2.room_id, r2.user_id, count(*) AS n
        FROM unnest(rooms, offsets, authors) AS t (room_id, stream_offset, user_id)
        JOIN room_reads r2 ON r2.room_id = t.room_id
                          AND r2.position >= t.stream_offset
                          AND r2.user_id <> t.user_id
        GROUP BY r2.room_id, r2.user_id
    ) d
    WHERE r.room_id = d.room_id AND r.user_id = d.user_id;
END
$$;

-- The chat messages an UPDATE statement deleted (a delete is final:
-- `deleted` never goes back to false); other updates (edits) find none.
CREATE FUNCTION messages_unread_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    rooms   uuid[];
    offsets bigint[];
    authors uuid[];
BEGIN
    SELECT array_agg(n.room_id), array_agg(n.stream_offset), array_agg(n.user_id)
    INTO rooms, offsets, authors
    FROM changed_new n JOIN changed_old o ON o.id = n.id
    WHERE n.kind = 'message' AND n.deleted AND NOT o.deleted;
    IF rooms IS NOT NULL THEN
        PERFORM unread_forget(rooms, offsets, authors);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_unread_deleted
    AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS changed_old NEW TABLE AS changed_new
    FOR EACH STATEMENT EXECUTE FUNCTION messages_unread_deleted();

-- Messages deleted before this migration leave the counters now.
SELECT unread_forget(array_agg(room_id), array_agg(stream_offset), array_agg(user_id))
FROM messages WHERE kind = 'message' AND deleted;
