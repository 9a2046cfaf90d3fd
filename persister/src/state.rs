//! What the parts of one persister instance share: the ledger, database
//! health and counters, and the [`Stats`] handle tests read them through.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use metrics::gauge;

use crate::ledger::Ledger;
use crate::metrics as m;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) ledger: Ledger,
    db_up: AtomicBool,
    persisted: AtomicU64,
    /// Batches committed in PostgreSQL, for the crash test hook.
    pub(crate) db_commits: AtomicU64,
    poison: AtomicU64,
    batches: AtomicU64,
}

impl Shared {
    pub(crate) fn new(topic: String) -> Self {
        Self {
            ledger: Ledger::new(topic),
            db_up: AtomicBool::new(false),
            persisted: AtomicU64::new(0),
            db_commits: AtomicU64::new(0),
            poison: AtomicU64::new(0),
            batches: AtomicU64::new(0),
        }
    }

    pub(crate) fn db_up(&self) -> bool {
        self.db_up.load(Ordering::Relaxed)
    }

    pub(crate) fn set_db_up(&self, up: bool) {
        let was = self.db_up.swap(up, Ordering::Relaxed);
        gauge!(m::DATABASE_UP).set(if up { 1.0 } else { 0.0 });
        if was != up {
            if up {
                tracing::info!("database is up");
            } else {
                tracing::warn!("database is down");
            }
        }
    }

    pub(crate) fn count_stored(&self, records: u64) {
        self.persisted.fetch_add(records, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_poison(&self, records: u64) {
        self.poison.fetch_add(records, Ordering::Relaxed);
    }
}

/// Counters of one running instance, for tests and benchmarks.
#[derive(Debug, Clone)]
pub struct Stats(pub(crate) Arc<Shared>);

impl Stats {
    /// Good records stored by this instance (including ones already present).
    pub fn records_persisted(&self) -> u64 {
        self.0.persisted.load(Ordering::Relaxed)
    }

    /// Poison records seen by this instance.
    pub fn poison_records(&self) -> u64 {
        self.0.poison.load(Ordering::Relaxed)
    }

    /// Batches stored by this instance.
    pub fn batches(&self) -> u64 {
        self.0.batches.load(Ordering::Relaxed)
    }

    /// Whether the last contact with PostgreSQL succeeded.
    pub fn database_up(&self) -> bool {
        self.0.db_up()
    }

    /// The partitions this instance owns now.
    pub fn assigned_partitions(&self) -> Vec<i32> {
        self.0.ledger.assigned()
    }
}
