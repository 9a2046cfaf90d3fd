-- Confab schema, version 4: messages people expect (CONTRACT §7): edits,
-- deletes, reactions, replies and full-text search.
--
-- Every change is a record on the room's partition (kinds message_edited,
-- message_deleted, reaction_added, reaction_removed), produced by auth-api and
-- applied here by the persister, which remains the only writer of these
-- tables. A change is applied exactly once: its record id goes into
-- message_changes in the same transaction that applies it, and it is applied
-- only when that row is new, so replaying a partition after a crash or a
-- rebalance changes nothing twice (and never reverts a later edit).

-- A deleted message keeps its row, place and offset; its data (the text) is
-- erased, so history shows `data: null`.
ALTER TABLE messages ALTER COLUMN data DROP NOT NULL;
ALTER TABLE messages
    -- The message this one answers (a publish's `data.reply_to`), if any.
    ADD COLUMN reply_to      uuid,
    -- When the current text was written by an edit; null if never edited.
    ADD COLUMN edited_at     timestamptz,
    -- The stream position of the edit that wrote the current text: an edit
    -- applies only over an older one.
    ADD COLUMN edited_offset bigint,
    ADD COLUMN deleted       boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT messages_deleted_erased CHECK (NOT deleted OR data IS NULL),
    -- The text's search vector. The `simple` configuration lower-cases and
    -- splits words without stemming or stop words: chat is multilingual and
    -- full of names, handles and code, which a language's stemmer (`english`)
    -- would mangle or drop, and a room has no declared language to pick one.
    -- A deleted message has no data, so no vector: search never finds it.
    ADD COLUMN tsv tsvector GENERATED ALWAYS AS (
        CASE WHEN kind = 'message' AND data IS NOT NULL
             THEN to_tsvector('simple'::regconfig, coalesce(data ->> 'text', ''))
        END
    ) STORED;
CREATE INDEX messages_tsv ON messages USING gin (tsv);

-- Every change record the persister has applied, by record id: the ledger
-- that makes applying idempotent.
CREATE TABLE message_changes (
    id            uuid        PRIMARY KEY,
    room_id       uuid        NOT NULL,
    stream_offset bigint      NOT NULL,
    message_id    uuid        NOT NULL,
    kind          text        NOT NULL CHECK (kind IN
        ('message_edited', 'message_deleted', 'reaction_added', 'reaction_removed')),
    -- Who made the change (the editor, the deleter, the reacting member).
    user_id       uuid        NOT NULL,
    created_at    timestamptz NOT NULL,
    persisted_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_changes_message ON message_changes (message_id);

-- The edit history: who changed a message's text, when, from what. The API
-- shows only the current text. Deleting a message erases the texts here too
-- (who and when stay): a deleted message is gone from the database.
CREATE TABLE message_edits (
    change_id  uuid        PRIMARY KEY REFERENCES message_changes (id),
    message_id uuid        NOT NULL,
    user_id    uuid        NOT NULL,
    old_text   text,
    new_text   text,
    edited_at  timestamptz NOT NULL
);
CREATE INDEX message_edits_message ON message_edits (message_id, edited_at);

-- Reactions: one per (message, user, emoji).
CREATE TABLE message_reactions (
    message_id uuid        NOT NULL,
    user_id    uuid        NOT NULL,
    emoji      text        NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (message_id, emoji, user_id)
);
