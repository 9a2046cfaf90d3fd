//! The state every connection shares: a cheap `Clone` handle around one
//! `Arc<Inner>` (mini-redis `Db`).

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

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
        Self(Arc::new(Inner {
            config,
            hub,
            publisher,
            shutdown,
            tracker: TaskTracker::new(),
            sockets: AtomicUsize::new(0),
            ready: AtomicBool::new(false),
            broker_up,
            metrics,
            user_publishes: RateLimiter::new(),
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
