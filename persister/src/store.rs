//! Writing batches into PostgreSQL.
//!
//! A batch is one statement: a data-modifying CTE puts the poison records in
//! `dead_letters`, the main `INSERT ... SELECT FROM UNNEST(...)` puts the good
//! ones in `messages`, and both skip rows that are already there (a message
//! is identified by its record id, unique per publish). One statement is one
//! transaction, so a batch is stored entirely or not at all, and storing it
//! again is a no-op.
//!
//! A batch with change records (edits, deletes, reactions: CONTRACT §7) runs
//! in one transaction: the batch statement, then one statement per change in
//! stream order. Each change statement first records the change's id in
//! `message_changes` and applies the change only when that row is new, so a
//! change is applied exactly once however often its record is stored.

use std::time::{Duration, Instant};

use confab_common::db::DbError;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

use crate::batch::{Batch, Change, ChangeOp, DeadLetter, DeadRows, Rows};

/// The batch statement. Parameters 1–9 are the `messages` columns, 10 the
/// topic, 11–15 the `dead_letters` columns. A chat message's `reply_to`
/// column is its data's `reply_to` when that is a UUID (the gateway checks
/// it is one; history shows it only if it names a message of the room).
const INSERT: &str = "\
WITH dead AS (
    INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, record_key, payload, error)
    SELECT $10::text, p, o, k, b, e
    FROM UNNEST($11::int4[], $12::int8[], $13::bytea[], $14::bytea[], $15::text[]) AS d(p, o, k, b, e)
    ON CONFLICT DO NOTHING
)
INSERT INTO messages (room_id, stream_offset, id, kind, user_id, username, data, created_at, kafka_partition, reply_to)
SELECT r, o, i, k, u, n, d::json, c, p,
       CASE WHEN k = 'message' AND d::json ->> 'reply_to' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
            THEN (d::json ->> 'reply_to')::uuid END
FROM UNNEST($1::uuid[], $2::int8[], $3::uuid[], $4::text[], $5::uuid[], $6::text[], $7::text[],
            $8::timestamptz[], $9::int4[]) AS t(r, o, i, k, u, n, d, c, p)
ON CONFLICT (id) DO NOTHING";

/// The start of every change statement: the change's id goes into the
/// ledger, and `change` has a row only if it was not there yet. Parameters:
/// 1 the change id, 2 the room, 3 its position, 4 the message, 5 the user,
/// 6 its time; the kind is spliced in by [`change_statement`].
const CHANGE_LEDGER: &str = "\
WITH change AS (
    INSERT INTO message_changes (id, room_id, stream_offset, message_id, kind, user_id, created_at)
    VALUES ($1, $2, $3, $4, '{kind}', $5, $6)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
)";

/// The message a change names, if it is a live chat message of the room and
/// the change is new.
const CHANGE_TARGET: &str = "\
target AS (
    SELECT m.id, m.user_id, m.data ->> 'text' AS old_text, m.edited_offset
    FROM messages m, change
    WHERE m.id = $4 AND m.room_id = $2 AND m.kind = 'message' AND NOT m.deleted
)";

/// An edit (7 the new text, 8 `edited_at`): only the author's, never of a
/// deleted message, and only over an older edit. The old text goes into
/// `message_edits`.
const EDIT: &str = "\
edit AS (
    SELECT * FROM target
    WHERE user_id = $5 AND (edited_offset IS NULL OR edited_offset < $3)
),
history AS (
    INSERT INTO message_edits (change_id, message_id, user_id, old_text, new_text, edited_at)
    SELECT $1, id, $5, old_text, $7, $8 FROM edit
),
applied AS (
    UPDATE messages m
    SET data = jsonb_set(m.data::jsonb, '{text}', to_jsonb($7::text))::json,
        edited_at = $8, edited_offset = $3
    FROM edit WHERE m.id = edit.id
)
SELECT count(*) FROM change";

/// A delete: the text is erased (from the edit history too) and the
/// message's reactions are dropped; the row keeps its place.
const DELETE: &str = "\
erase_edits AS (
    UPDATE message_edits e SET old_text = NULL, new_text = NULL
    FROM target WHERE e.message_id = target.id
),
drop_reactions AS (
    DELETE FROM message_reactions r USING target WHERE r.message_id = target.id
),
applied AS (
    UPDATE messages m SET deleted = true, data = NULL
    FROM target WHERE m.id = target.id
)
SELECT count(*) FROM change";

/// A reaction (7 the emoji); reacting twice is a no-op.
const REACT: &str = "\
applied AS (
    INSERT INTO message_reactions (message_id, user_id, emoji, created_at)
    SELECT id, $5, $7, $6 FROM target
    ON CONFLICT DO NOTHING
)
SELECT count(*) FROM change";

/// A reaction taken back (7 the emoji).
const UNREACT: &str = "\
applied AS (
    DELETE FROM message_reactions r USING target
    WHERE r.message_id = target.id AND r.user_id = $5 AND r.emoji = $7
)
SELECT count(*) FROM change";

/// The statement of one kind of change.
fn change_statement(kind: &str, body: &str) -> String {
    format!(
        "{},\n{CHANGE_TARGET},\n{body}",
        CHANGE_LEDGER.replace("{kind}", kind)
    )
}

/// How long one statement may take before the connection is given up. A
/// statement cut off this way may still commit; retrying it is harmless.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed attempt to store a batch.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("connecting to PostgreSQL: {}", describe_db(.0))]
    Connect(#[from] DbError),
    #[error("{}", describe_pg(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
}

/// The server's message and SQLSTATE when there is one: tokio-postgres
/// prints only "db error" for those.
fn describe_pg(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(err) {
            Some(source) => format!("{err}: {source}"),
            None => err.to_string(),
        },
    }
}

fn describe_db(err: &DbError) -> String {
    match err {
        DbError::Postgres(e) => describe_pg(e),
        other => other.to_string(),
    }
}

impl StoreError {
    /// True when PostgreSQL refused the data itself (a bad value, a violated
    /// constraint): retrying the same rows would fail forever.
    fn is_data_error(&self) -> bool {
        let Self::Postgres(err) = self else {
            return false;
        };
        let Some(state) = err.code() else {
            return false;
        };
        let code = state.code();
        code.starts_with("22")
            || (code.starts_with("23") && *state != SqlState::UNIQUE_VIOLATION)
            || code.starts_with("54")
    }
}

/// What storing a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stored {
    /// Rows that were new.
    pub(crate) inserted: u64,
    /// Good records the database refused, stored as dead letters instead.
    pub(crate) refused: u64,
}

struct Conn {
    client: Client,
    insert: Statement,
    edit: Statement,
    delete: Statement,
    react: Statement,
    unreact: Statement,
}

impl Conn {
    async fn open(url: &str) -> Result<Self, StoreError> {
        use confab_common::record::RecordKind as K;
        let client = confab_common::db::connect(url).await?;
        let insert = client.prepare(INSERT).await?;
        let prepare = |kind: K, body: &str| {
            let sql = change_statement(kind.as_str(), body);
            let client = &client;
            async move { client.prepare(&sql).await }
        };
        let edit = prepare(K::MessageEdited, EDIT).await?;
        let delete = prepare(K::MessageDeleted, DELETE).await?;
        let react = prepare(K::ReactionAdded, REACT).await?;
        let unreact = prepare(K::ReactionRemoved, UNREACT).await?;
        Ok(Self {
            client,
            insert,
            edit,
            delete,
            react,
            unreact,
        })
    }
}

/// Applies one change inside `tx`; true when it was new.
async fn apply_change(
    tx: &tokio_postgres::Transaction<'_>,
    statements: (&Statement, &Statement, &Statement, &Statement),
    change: &Change,
) -> Result<bool, tokio_postgres::Error> {
    let (edit, delete, react, unreact) = statements;
    let position = change.position.to_db();
    let common: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
        &change.id,
        &change.room_id,
        &position,
        &change.message_id,
        &change.user_id,
        &change.created_at,
    ];
    let row = match &change.op {
        ChangeOp::Edit { text, edited_at } => {
            let mut params = common.to_vec();
            params.push(text);
            params.push(edited_at);
            tx.query_one(edit, &params).await?
        }
        ChangeOp::Delete => tx.query_one(delete, &common).await?,
        ChangeOp::React { emoji } | ChangeOp::Unreact { emoji } => {
            let statement = if matches!(change.op, ChangeOp::React { .. }) {
                react
            } else {
                unreact
            };
            let mut params = common.to_vec();
            params.push(emoji);
            tx.query_one(statement, &params).await?
        }
    };
    Ok(row.get::<_, i64>(0) == 1)
}

/// A connection to PostgreSQL that is opened again whenever it fails.
pub(crate) struct Store {
    url: String,
    topic: String,
    conn: Option<Conn>,
}

impl Store {
    pub(crate) fn new(url: String, topic: String) -> Self {
        Self {
            url,
            topic,
            conn: None,
        }
    }

    async fn conn(&mut self) -> Result<&Conn, StoreError> {
        if self.conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, Conn::open(&self.url))
                .await
                .map_err(|_| StoreError::Timeout(CONNECT_TIMEOUT))??;
            tracing::info!("connected to PostgreSQL");
            self.conn = Some(conn);
        }
        Ok(self.conn.as_ref().expect("connection was just opened"))
    }

    /// Checks that the database answers.
    pub(crate) async fn ping(&mut self) -> Result<(), StoreError> {
        let result = async {
            let conn = self.conn().await?;
            tokio::time::timeout(CONNECT_TIMEOUT, conn.client.simple_query("SELECT 1"))
                .await
                .map_err(|_| StoreError::Timeout(CONNECT_TIMEOUT))??;
            Ok(())
        }
        .await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    /// One attempt to run the batch statement and apply `changes`. Returns
    /// the rows inserted and the changes that were new.
    async fn execute(
        &mut self,
        rows: &Rows,
        dead: &DeadRows,
        changes: &[Change],
    ) -> Result<(u64, u64), StoreError> {
        let topic = self.topic.clone();
        let result: Result<(u64, u64), StoreError> = async {
            self.conn().await?;
            let conn = self.conn.as_mut().expect("connection was just opened");
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 15] = [
                &rows.room_id,
                &rows.stream_offset,
                &rows.id,
                &rows.kind,
                &rows.user_id,
                &rows.username,
                &rows.data,
                &rows.created_at,
                &rows.partition,
                &topic,
                &dead.partition,
                &dead.offset,
                &dead.key,
                &dead.payload,
                &dead.error,
            ];
            let Conn {
                client,
                insert,
                edit,
                delete,
                react,
                unreact,
            } = conn;
            let run = async {
                if changes.is_empty() {
                    // One statement is one transaction.
                    return Ok((client.execute(&*insert, &params).await?, 0));
                }
                let tx = client.transaction().await?;
                let inserted = tx.execute(&*insert, &params).await?;
                let mut applied = 0;
                for change in changes {
                    if apply_change(&tx, (&*edit, &*delete, &*react, &*unreact), change).await? {
                        applied += 1;
                    }
                }
                tx.commit().await?;
                Ok::<_, tokio_postgres::Error>((inserted, applied))
            };
            Ok(tokio::time::timeout(STATEMENT_TIMEOUT, run)
                .await
                .map_err(|_| StoreError::Timeout(STATEMENT_TIMEOUT))??)
        }
        .await;
        if let Err(err) = &result {
            if !err.is_data_error() {
                // The connection may be broken or in an unknown state.
                self.conn = None;
            }
        }
        result
    }

    /// One attempt to store a batch. When PostgreSQL refuses a value, the
    /// rows are stored one by one and each refused row becomes a dead letter,
    /// so one bad row never blocks its partition.
    pub(crate) async fn store(&mut self, batch: &Batch) -> Result<Stored, StoreError> {
        match self.execute(&batch.rows, &batch.dead, &batch.changes).await {
            Ok((inserted, applied)) => Ok(Stored {
                inserted: inserted + applied,
                refused: 0,
            }),
            Err(err) if err.is_data_error() => {
                tracing::warn!(error = %err, records = batch.len(), "batch refused, storing rows one by one");
                self.store_one_by_one(batch).await
            }
            Err(err) => Err(err),
        }
    }

    async fn store_one_by_one(&mut self, batch: &Batch) -> Result<Stored, StoreError> {
        let mut stored = Stored::default();
        let mut dead = batch.dead.clone();
        let none = DeadRows::default();
        for i in 0..batch.rows.len() {
            let row = batch.rows.single(i);
            match self.execute(&row, &none, &[]).await {
                Ok((n, _)) => stored.inserted += n,
                Err(err) if err.is_data_error() => {
                    let (partition, offset) = (row.partition[0], row.offset[0]);
                    tracing::warn!(partition, offset, error = %err, "record refused by PostgreSQL, stored as a dead letter");
                    stored.refused += 1;
                    dead.push(partition, offset, refused_row(&row, &err));
                }
                Err(err) => return Err(err),
            }
        }
        for change in &batch.changes {
            match self
                .execute(&Rows::default(), &none, std::slice::from_ref(change))
                .await
            {
                Ok((_, n)) => stored.inserted += n,
                Err(err) if err.is_data_error() => {
                    let (partition, offset) = (change.partition, change.offset);
                    tracing::warn!(partition, offset, error = %err, "change refused by PostgreSQL, stored as a dead letter");
                    stored.refused += 1;
                    dead.push(partition, offset, refused_change(change, &err));
                }
                Err(err) => return Err(err),
            }
        }
        self.execute(&Rows::default(), &dead, &[]).await?;
        Ok(stored)
    }
}

/// A dead letter for a decoded record PostgreSQL would not take.
fn refused_row(row: &Rows, err: &StoreError) -> DeadLetter {
    let payload = serde_json::json!({
        "id": row.id[0],
        "room_id": row.room_id[0],
        "kind": row.kind[0],
        "user": {"id": row.user_id[0], "username": row.username[0]},
        "data": row.data[0],
        "created_at": row.created_at[0].unix_timestamp_nanos() / 1_000_000,
    });
    DeadLetter {
        key: Some(row.room_id[0].to_string().into_bytes()),
        payload: Some(payload.to_string().into_bytes()),
        error: crate::batch::clean_text(&format!("refused by PostgreSQL: {err}")),
    }
}

/// A dead letter for a change record PostgreSQL would not take.
fn refused_change(change: &Change, err: &StoreError) -> DeadLetter {
    let payload = serde_json::json!({
        "id": change.id,
        "room_id": change.room_id,
        "kind": change.kind(),
        "message_id": change.message_id,
        "user_id": change.user_id,
        "op": format!("{:?}", change.op),
        "created_at": change.ts_ms,
    });
    DeadLetter {
        key: Some(change.room_id.to_string().into_bytes()),
        payload: Some(payload.to_string().into_bytes()),
        error: crate::batch::clean_text(&format!("refused by PostgreSQL: {err}")),
    }
}

/// Retries `store` until it succeeds, waiting longer after each failure, up
/// to `max`. `on_failure` is told about each failure (for health and
/// metrics). Returns what was stored and how long the successful attempt took.
pub(crate) async fn store_with_retry(
    store: &mut Store,
    batch: &Batch,
    max: Duration,
    mut on_failure: impl FnMut(&StoreError),
) -> (Stored, Duration) {
    let mut backoff = Duration::from_millis(50).min(max);
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let started = Instant::now();
        match store.store(batch).await {
            Ok(stored) => return (stored, started.elapsed()),
            Err(err) => {
                on_failure(&err);
                tracing::warn!(error = %err, attempt, retry_in = ?backoff, records = batch.len(), "storing a batch failed, will retry");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max);
            }
        }
    }
}
