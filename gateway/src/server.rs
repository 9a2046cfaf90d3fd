//! HTTP/1 with upgrades: `/connection/websocket`, `/healthz`, `/metrics`.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::response::IntoResponse;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics as m;
use crate::state::Gateway;

/// Accepts until shutdown; each TCP connection gets a task in the tracker.
pub(crate) async fn serve(gw: Gateway, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            () = gw.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gw2 = gw.clone();
        gw.tracker.spawn(serve_http(gw2, stream));
    }
}

async fn serve_http(gw: Gateway, stream: TcpStream) {
    let svc_gw = gw.clone();
    let svc = service_fn(move |req| {
        let gw = svc_gw.clone();
        async move { Ok::<_, Infallible>(route(gw, req)) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = gw.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Body::from(text))
        .expect("static response is valid")
}

fn route(gw: Gateway, req: Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/connection/websocket") => upgrade(gw, req),
        (&Method::GET, "/healthz") => {
            let ready = gw.ready.load(Ordering::Acquire) && gw.broker_up.load(Ordering::Acquire);
            confab_common::ops::Health::ok("gateway")
                .check("kafka", ready)
                .check_problem("topic", gw.publish_problem().as_deref())
                .into_response()
        }
        (&Method::GET, "/metrics") => confab_common::ops::metrics_response(&gw.metrics),
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Whether the request's `Origin` may connect.
pub(crate) fn origin_allowed(allowed: &[String], origin: Option<&str>) -> bool {
    match origin {
        None => true,
        Some(_) if allowed.is_empty() => true,
        Some(o) => allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(o)),
    }
}

/// One of the open sockets the connection cap counts; the count goes down
/// when the connection task ends.
pub(crate) struct SocketSlot(Gateway);

impl SocketSlot {
    /// Takes a slot; returns it with the number of sockets open before.
    pub(crate) fn take(gw: &Gateway) -> (Self, usize) {
        let open = gw.sockets.fetch_add(1, Ordering::AcqRel);
        (Self(gw.clone()), open)
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.sockets.fetch_sub(1, Ordering::AcqRel);
    }
}

fn upgrade(gw: Gateway, mut req: Request<Incoming>) -> Response<Body> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return plain(StatusCode::BAD_REQUEST, "expected a websocket upgrade\n");
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if !origin_allowed(&gw.config.allowed_origins, origin) {
        metrics::counter!(m::REJECTED_CONNECTIONS, "reason" => "origin").increment(1);
        return plain(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    if gw.shutdown.is_cancelled() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    let (slot, open) = SocketSlot::take(&gw);
    if open >= gw.config.max_connections {
        metrics::counter!(m::REJECTED_CONNECTIONS, "reason" => "limit").increment(1);
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached\n",
        );
    }
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "bad websocket upgrade\n"),
    };
    let task_gw = gw.clone();
    gw.tracker.spawn(async move {
        match fut.await {
            Ok(ws) => crate::session::run(task_gw, ws, slot).await,
            Err(err) => tracing::debug!(%err, "websocket upgrade failed"),
        }
    });
    response.map(|_| Body::empty())
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn origin_rules() {
        let list = vec!["https://chat.example".to_owned()];
        assert!(origin_allowed(&[], Some("https://evil.example")));
        assert!(origin_allowed(&list, None));
        assert!(origin_allowed(&list, Some("https://chat.example")));
        assert!(!origin_allowed(&list, Some("https://evil.example")));
        assert!(origin_allowed(&["*".to_owned()], Some("https://any")));
    }
}
