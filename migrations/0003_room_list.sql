-- Confab schema, version 3: cheap member counts and keyset paging of the
-- room list (GET /api/rooms, ordered by room id; ids are UUIDv7).

-- The member count of a room, kept by a trigger on room_members, so listing a
-- page of rooms counts nothing.
ALTER TABLE rooms ADD COLUMN member_count integer NOT NULL DEFAULT 0;
UPDATE rooms r SET member_count = (SELECT count(*) FROM room_members m WHERE m.room_id = r.id);

CREATE FUNCTION room_members_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE rooms SET member_count = member_count + 1 WHERE id = NEW.room_id;
    ELSE
        UPDATE rooms SET member_count = member_count - 1 WHERE id = OLD.room_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER room_members_count
    AFTER INSERT OR DELETE ON room_members
    FOR EACH ROW EXECUTE FUNCTION room_members_count();

-- The three ways a room is visible, each readable in id order.
CREATE INDEX rooms_public_id ON rooms (id) WHERE visibility = 'public';
CREATE INDEX room_members_user_room ON room_members (user_id, room_id);
DROP INDEX room_members_user;
CREATE INDEX room_invites_user_room ON room_invites (user_id, room_id);
DROP INDEX room_invites_user;
