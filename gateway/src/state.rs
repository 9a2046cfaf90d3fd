//! The state every connection shares: a cheap `Clone` handle around one
//! `Arc<Inner>` (mini-redis `Db`).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use confab_common::ratelimit::{Quota, RateLimiter};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::Config;
use crate::hub::Hub;
use crate::kafka::Publisher;

#[derive(Clone)]
pub(crate) struct Gateway(Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) hub: Arc<Hub>,
    pub(crate) publisher: Arc<dyn Publisher>,
    pub(crate) shutdown: CancellationToken,
    /// Shutdown as sessions watch it: set, then `sessions_stop` is
    /// cancelled, so a session woken by the one always sees the other.
    pub(crate) stopping: Arc<AtomicBool>,
    /// Cancelled right after `stopping` is set; every session's kill token
    /// is a child of it.
    pub(crate) sessions_stop: CancellationToken,
    /// Connection tasks, drained at shutdown.
    pub(crate) tracker: TaskTracker,
    /// Open WebSocket sockets, for the connection cap.
    pub(crate) sockets: AtomicUsize,
    /// True once the consumer has caught up with the topic.
    pub(crate) ready: AtomicBool,
    /// False while the broker does not answer.
    pub(crate) broker_up: Arc<AtomicBool>,
    pub(crate) metrics: PrometheusHandle,
    /// Publications per user, across all of that user's connections.
    pub(crate) user_publishes: RateLimiter<Uuid>,
    /// Open sockets per client address.
    pub(crate) per_ip: Counts<IpAddr>,
    /// Connected sessions per user.
    pub(crate) per_user: Counts<Uuid>,
}

/// How many of something each key holds, with a cap.
pub(crate) struct Counts<K>(Mutex<HashMap<K, usize>>);

impl<K: Hash + Eq> Counts<K> {
    fn new() -> Self {
        Self(Mutex::new(HashMap::new()))
    }

    /// Counts one more for `key` unless it already holds `max`.
    pub(crate) fn try_add(&self, key: K, max: usize) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// Counts one less for `key`.
    pub(crate) fn remove(&self, key: &K) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                map.remove(key);
            }
        }
    }
}

impl std::ops::Deref for Gateway {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Gateway {
    pub(crate) fn new(
        config: Config,
        hub: Arc<Hub>,
        publisher: Arc<dyn Publisher>,
        shutdown: CancellationToken,
        broker_up: Arc<AtomicBool>,
        metrics: PrometheusHandle,
    ) -> Self {
        let stopping = Arc::new(AtomicBool::new(false));
        let sessions_stop = CancellationToken::new();
        {
            let (shutdown, stopping, sessions_stop) = (
                shutdown.clone(),
                Arc::clone(&stopping),
                sessions_stop.clone(),
            );
            tokio::spawn(async move {
                shutdown.cancelled().await;
                stopping.store(true, Ordering::Release);
                sessions_stop.cancel();
            });
        }
        Self(Arc::new(Inner {
            config,
            hub,
            publisher,
            shutdown,
            stopping,
            sessions_stop,
            tracker: TaskTracker::new(),
            sockets: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            broker_up,
            metrics,
            user_publishes: RateLimiter::new(),
            per_ip: Counts::new(),
            per_user: Counts::new(),
        }))
    }

    /// Why publishing is refused now, if it is.
    pub(crate) fn publish_problem(&self) -> Option<String> {
        self.publisher.problem()
    }

    /// The per-user publish quota.
    pub(crate) fn user_quota(&self) -> Quota {
        let c = &self.config;
        Quota::per_second(c.user_publish_rate, c.user_publish_burst)
    }
}

#[cfg(test)]
mod tests {
    use super::Counts;

    #[test]
    fn counts_cap_each_key_and_free_on_remove() {
        let c = Counts::new();
        assert!(c.try_add("a", 2) && c.try_add("a", 2));
        assert!(!c.try_add("a", 2), "the third is over the cap");
        assert!(c.try_add("b", 2), "other keys are counted apart");
        c.remove(&"a");
        assert!(c.try_add("a", 2));
        c.remove(&"a");
        c.remove(&"a");
        c.remove(&"a");
        assert!(
            c.0.lock().unwrap().get("a").is_none(),
            "empty keys are forgotten"
        );
    }
}
