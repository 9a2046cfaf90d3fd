//! `/healthz` and `/metrics`, the two endpoints every service serves.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

/// The body of `/healthz`.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub service: &'static str,
    /// Per-dependency state, such as `{"database": "down"}`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<(&'static str, &'static str)>,
    /// Why a check is down, where there is more to say than "down".
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<(&'static str, String)>,
}

impl Health {
    pub fn ok(service: &'static str) -> Self {
        Self {
            status: "ok",
            service,
            checks: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Adds a dependency check; any `down` makes the whole status `degraded`.
    pub fn check(mut self, name: &'static str, up: bool) -> Self {
        self.checks.push((name, if up { "up" } else { "down" }));
        if !up {
            self.status = "degraded";
        }
        self
    }

    /// A check that is down when there is a `problem`, with it as the reason.
    pub fn check_problem(mut self, name: &'static str, problem: Option<&str>) -> Self {
        if let Some(p) = problem {
            self.problems.push((name, p.to_owned()));
        }
        self.check(name, problem.is_none())
    }

    pub fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

impl IntoResponse for Health {
    fn into_response(self) -> Response {
        let status = if self.is_ok() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let checks: serde_json::Map<String, serde_json::Value> = self
            .checks
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).into()))
            .collect();
        let mut body = serde_json::json!({
            "status": self.status,
            "service": self.service,
            "checks": checks,
        });
        if !self.problems.is_empty() {
            body["problems"] = self
                .problems
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(v.as_str())))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        (status, axum::Json(body)).into_response()
    }
}

/// The content type of the Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders the metrics registry as a `/metrics` response.
pub fn metrics_response(handle: &PrometheusHandle) -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        handle.render(),
    )
        .into_response()
}
