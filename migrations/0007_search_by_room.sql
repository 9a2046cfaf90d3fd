-- Confab schema, version 7: search finds a word within rooms in one index.
--
-- Every search is limited to rooms (the caller's, or one of them). With the
-- GIN index on `tsv` alone, PostgreSQL either walks the primary key backwards
-- and filters (fast when the word is frequent in the caller's rooms, but a
-- scan of the whole table when it is frequent elsewhere and absent there: the
-- planner assumes word and room independent), or intersects the word's
-- bitmap with a bitmap of each room's messages (a rare word in 20 rooms of
-- 10,000 messages built 200,000-entry bitmaps). `auth-api/benches/search.rs`
-- measured p99 326 ms and 54 ms for those two over a million messages.
--
-- A two-column GIN index on (room_id, tsv) answers "this word in these
-- rooms" from the posting lists of both keys, whatever their correlation.
-- btree_gin (a trusted contrib extension, shipped with PostgreSQL and enabled
-- on Supabase) gives GIN the uuid operator class. It replaces the index on
-- `tsv` alone, which a search no longer needs. Building it takes a write
-- lock on `messages` for as long as the build runs (about a second per
-- million messages here).
CREATE EXTENSION IF NOT EXISTS btree_gin;
CREATE INDEX messages_room_tsv ON messages USING gin (room_id, tsv);
DROP INDEX messages_tsv;
