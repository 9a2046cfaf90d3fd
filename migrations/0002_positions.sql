-- Confab schema, version 2: messages are identified by their record id.
--
-- A record id is unique per publish, so storing a record again (after a crash
-- or a rebalance) is still a no-op, and no new message can ever be dropped as
-- a "duplicate" of an older one whose position it happened to share (as the
-- old key (room_id, stream_offset) allowed when a topic was created again).
-- Positions never repeat by design (see common/src/position.rs); the index
-- below serves history's newest-first keyset pages.
ALTER TABLE messages DROP CONSTRAINT messages_pkey;
ALTER TABLE messages ADD PRIMARY KEY (id);
CREATE INDEX messages_room_position ON messages (room_id, stream_offset);
