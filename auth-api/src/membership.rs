//! Running a membership change: one at a time per member, the broker first,
//! the database after, and no pooled connection held while the broker is
//! waited for. The guarantees are listed in [`crate::events`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use confab_common::record::{RecordKind, RoomRecord};
use uuid::Uuid;

use crate::error::ApiError;
use crate::AppState;

/// The lock of one membership.
type MemberLock = tokio::sync::Mutex<()>;

/// One async lock per (room, user), so that changes of one membership run one
/// after another in this process. Unused locks are forgotten.
#[derive(Debug, Default)]
pub(crate) struct MemberLocks {
    locks: Mutex<HashMap<(Uuid, Uuid), Weak<MemberLock>>>,
}

/// Locks above this count trigger a sweep of the unused ones.
const SWEEP_AT: usize = 1024;

impl MemberLocks {
    /// Waits for the lock of `(room, user)`.
    pub(crate) async fn lock(&self, room: Uuid, user: Uuid) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            if locks.len() > SWEEP_AT {
                locks.retain(|_, weak| weak.strong_count() > 0);
            }
            match locks.get(&(room, user)).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(MemberLock::new(()));
                    locks.insert((room, user), Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}

/// Whether the broker is known to be down. After a failed produce,
/// membership changes fail at once for `retry`; then one change is let
/// through as a probe, and its outcome decides.
#[derive(Debug)]
pub(crate) struct BrokerGate {
    state: Mutex<GateState>,
    /// How long changes fail fast after a failed produce
    /// (`CONFAB_API_BROKER_RETRY_MS`).
    retry: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GateState {
    Up,
    Down { until: Instant },
    Probing,
}

impl BrokerGate {
    pub(crate) fn new(retry: Duration) -> Self {
        Self {
            state: Mutex::new(GateState::Up),
            retry,
        }
    }

    /// Ok when a produce may be tried now; 503 while the broker is known down.
    pub(crate) fn admit(&self) -> Result<(), ApiError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match *state {
            GateState::Up => Ok(()),
            GateState::Down { until } if Instant::now() >= until => {
                *state = GateState::Probing;
                Ok(())
            }
            GateState::Down { .. } | GateState::Probing => {
                metrics::counter!("confab_api_broker_fail_fast_total").increment(1);
                Err(ApiError::Broker("known to be down; failing fast".into()))
            }
        }
    }

    /// Records the outcome of an admitted produce.
    pub(crate) fn record(&self, ok: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = if ok {
            GateState::Up
        } else {
            GateState::Down {
                until: Instant::now() + self.retry,
            }
        };
    }
}

/// The record that undoes `record`'s meaning in the stream.
fn opposite(record: &RoomRecord) -> RoomRecord {
    let kind = match record.kind {
        RecordKind::MemberJoined => RecordKind::MemberLeft,
        _ => RecordKind::MemberJoined,
    };
    RoomRecord::member_event(record.room_id, record.user.clone(), kind)
}

/// Produces `record`, waits for the broker's acknowledgement, then runs
/// `apply` (which takes its own short-lived pooled connection). If `apply`
/// fails, the opposite record is produced so the stream matches the database.
///
/// It runs as its own task, so a request that is dropped (client gone,
/// request timeout) cannot stop it between the acknowledgement and the write.
/// `guard` (the member's lock) is held until the task ends.
pub(crate) async fn publish_then_apply<T, F, Fut, G>(
    state: &AppState,
    record: RoomRecord,
    guard: G,
    apply: F,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(AppState) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, ApiError>> + Send + 'static,
    G: Send + 'static,
{
    state.broker_gate().admit()?;
    let state = state.clone();
    let task = tokio::spawn(async move {
        let _guard = guard;
        let published = state.events().publish(&record).await;
        state.broker_gate().record(published.is_ok());
        published?;
        match apply(state.clone()).await {
            Ok(value) => Ok(value),
            Err(err) => {
                tracing::error!(room_id = %record.room_id, kind = record.kind.as_str(), %err,
                    "membership write failed after its record was acknowledged; compensating");
                state.events().compensate(opposite(&record)).await;
                Err(err)
            }
        }
    });
    task.await.map_err(ApiError::internal)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_fails_fast_then_probes_once() {
        let gate = BrokerGate::new(Duration::from_millis(50));
        assert!(gate.admit().is_ok());
        gate.record(false);
        assert!(gate.admit().is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(gate.admit().is_ok(), "one probe");
        assert!(gate.admit().is_err(), "only one");
        gate.record(true);
        assert!(gate.admit().is_ok());
        assert!(gate.admit().is_ok());
    }

    #[tokio::test]
    async fn member_locks_serialise_one_member_only() {
        let locks = MemberLocks::default();
        let (room, a, b) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let held = locks.lock(room, a).await;
        // Another member is not blocked.
        let _other = tokio::time::timeout(Duration::from_millis(100), locks.lock(room, b))
            .await
            .expect("another member's lock is free");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), locks.lock(room, a))
                .await
                .is_err(),
            "the same member waits"
        );
        drop(held);
        let _again = tokio::time::timeout(Duration::from_millis(100), locks.lock(room, a))
            .await
            .expect("free after release");
    }
}
