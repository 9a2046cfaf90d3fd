-- Confab schema, version 8: the unread counters are updated in place.
--
-- Every batch the persister stores bumps one room_message_counts row per
-- room and one room_sender_counts row per (room, author) in it (the statement
-- trigger of migration 0005). With the tables packed full, no page had room
-- for the new row version, so each bump wrote the version to another page
-- and a new entry into the primary key index as well: a profile of the
-- persister's benchmark (docs/BENCHMARKS.md) put a quarter of the trigger's
-- time in those index inserts. With half of each page left free, an update
-- stays on its page and, as no indexed column changes, is a heap-only (HOT)
-- update: no index entry, and the old version is pruned on the next visit.
-- Nothing else changes: the same rows, the same counts, the same locks.
ALTER TABLE room_message_counts SET (fillfactor = 50);
ALTER TABLE room_sender_counts SET (fillfactor = 50);

-- The setting applies to pages written from now on; rewriting the tables
-- (small: a row per room, and per room and author) applies it to the rows
-- already there. CLUSTER is the rewrite a transaction allows; the tables are
-- not kept clustered afterwards.
CLUSTER room_message_counts USING room_message_counts_pkey;
ALTER TABLE room_message_counts SET WITHOUT CLUSTER;
CLUSTER room_sender_counts USING room_sender_counts_pkey;
ALTER TABLE room_sender_counts SET WITHOUT CLUSTER;
