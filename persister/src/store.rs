//! Writing batches into PostgreSQL.
//!
//! A batch is one statement: a data-modifying CTE puts the poison records in
//! `dead_letters`, the main `INSERT ... SELECT FROM UNNEST(...)` puts the good
//! ones in `messages`, and both skip rows that are already there (a message
//! is identified by its record id, unique per publish). One statement is one
//! transaction, so a batch is stored entirely or not at all, and storing it
//! again is a no-op.

use std::time::{Duration, Instant};

use confab_common::db::DbError;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};

use crate::batch::{Batch, DeadLetter, DeadRows, Rows};

/// The batch statement. Parameters 1–9 are the `messages` columns, 10 the
/// topic, 11–15 the `dead_letters` columns.
const INSERT: &str = "\
WITH dead AS (
    INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, record_key, payload, error)
    SELECT $10::text, p, o, k, b, e
    FROM UNNEST($11::int4[], $12::int8[], $13::bytea[], $14::bytea[], $15::text[]) AS d(p, o, k, b, e)
    ON CONFLICT DO NOTHING
)
INSERT INTO messages (room_id, stream_offset, id, kind, user_id, username, data, created_at, kafka_partition)
SELECT r, o, i, k, u, n, d::json, c, p
FROM UNNEST($1::uuid[], $2::int8[], $3::uuid[], $4::text[], $5::uuid[], $6::text[], $7::text[],
            $8::timestamptz[], $9::int4[]) AS t(r, o, i, k, u, n, d, c, p)
ON CONFLICT (id) DO NOTHING";

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
            let open = async {
                let client = confab_common::db::connect(&self.url).await?;
                let insert = client.prepare(INSERT).await?;
                Ok::<_, StoreError>(Conn { client, insert })
            };
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, open)
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

    /// One attempt to run the batch statement.
    async fn execute(&mut self, rows: &Rows, dead: &DeadRows) -> Result<u64, StoreError> {
        let topic = self.topic.clone();
        let result: Result<u64, StoreError> = async {
            let conn = self.conn().await?;
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
            let run = conn.client.execute(&conn.insert, &params);
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
        match self.execute(&batch.rows, &batch.dead).await {
            Ok(inserted) => Ok(Stored {
                inserted,
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
            match self.execute(&row, &none).await {
                Ok(n) => stored.inserted += n,
                Err(err) if err.is_data_error() => {
                    let (partition, offset) = (row.partition[0], row.offset[0]);
                    tracing::warn!(partition, offset, error = %err, "record refused by PostgreSQL, stored as a dead letter");
                    stored.refused += 1;
                    dead.push(partition, offset, refused_row(&row, &err));
                }
                Err(err) => return Err(err),
            }
        }
        self.execute(&Rows::default(), &dead).await?;
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
