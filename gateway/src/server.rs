//! HTTP/1 with upgrades: `/connection/websocket`, `/healthz`, `/metrics`.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::response::IntoResponse;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::connection::Upgraded;
use crate::metrics as m;
use crate::state::Gateway;

/// Accepts until shutdown; each TCP connection gets a task in the tracker.
pub(crate) async fn serve(gw: Gateway, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            () = gw.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let gw2 = gw.clone();
        gw.tracker.spawn(serve_http(gw2, stream, peer.ip()));
    }
}

async fn serve_http(gw: Gateway, stream: TcpStream, peer: IpAddr) {
    let svc_gw = gw.clone();
    let svc = service_fn(move |req| {
        let gw = svc_gw.clone();
        async move { Ok::<_, Infallible>(route(gw, req, peer)) }
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

fn route(gw: Gateway, req: Request<Incoming>, peer: IpAddr) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/connection/websocket") => upgrade(gw, req, peer),
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

/// The client's address: the TCP peer, or behind a trusted proxy the last
/// `X-Forwarded-For` entry (the one the proxy added).
pub(crate) fn client_addr(trust_proxy: bool, peer: IpAddr, forwarded: Option<&str>) -> IpAddr {
    if !trust_proxy {
        return peer;
    }
    forwarded
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

/// One of the open sockets the connection caps count (in total and per
/// address); the counts go down when the connection task ends.
pub(crate) struct SocketSlot {
    gw: Gateway,
    ip: IpAddr,
}

/// Why a socket was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    Total,
    Address,
}

impl SocketSlot {
    /// Takes a slot for a socket from `ip`, within both caps.
    pub(crate) fn take(gw: &Gateway, ip: IpAddr) -> Result<Self, Refused> {
        if !gw.per_ip.try_add(ip, gw.config.max_connections_per_ip) {
            return Err(Refused::Address);
        }
        let slot = Self { gw: gw.clone(), ip };
        let open = gw.sockets.fetch_add(1, Ordering::AcqRel);
        if open >= gw.config.max_connections {
            return Err(Refused::Total);
        }
        Ok(slot)
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.gw.sockets.fetch_sub(1, Ordering::AcqRel);
        self.gw.per_ip.remove(&self.ip);
    }
}

fn upgrade(gw: Gateway, mut req: Request<Incoming>, peer: IpAddr) -> Response<Body> {
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
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let ip = client_addr(gw.config.trust_proxy, peer, forwarded);
    let slot = match SocketSlot::take(&gw, ip) {
        Ok(slot) => slot,
        Err(Refused::Total) => {
            metrics::counter!(m::REJECTED_CONNECTIONS, "reason" => "limit").increment(1);
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "connection limit reached\n",
            );
        }
        Err(Refused::Address) => {
            metrics::counter!(m::REJECTED_CONNECTIONS, "reason" => "address").increment(1);
            return plain(
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address\n",
            );
        }
    };
    let (response, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(_) => return plain(StatusCode::BAD_REQUEST, "bad websocket upgrade\n"),
    };
    let task_gw = gw.clone();
    gw.tracker.spawn(async move {
        match fut.await.map(|ws| unwrap_upgraded(ws.into_inner())) {
            Ok(Some(stream)) => crate::session::run(task_gw, stream, slot).await,
            Ok(None) => tracing::warn!("an upgraded connection is not a TCP stream"),
            Err(err) => tracing::debug!(%err, "websocket upgrade failed"),
        }
    });
    response.map(|_| Body::empty())
}

/// The TCP stream under hyper's upgrade, so that the session writes to the
/// socket directly (no boxed stream, no lock between the two halves).
fn unwrap_upgraded(io: TokioIo<hyper::upgrade::Upgraded>) -> Option<Upgraded> {
    let parts = io.into_inner().downcast::<TokioIo<TcpStream>>().ok()?;
    Some(Upgraded {
        stream: parts.io.into_inner(),
        // A copy: `read_buf` shares hyper's whole 8 KiB read buffer, which
        // would otherwise live as long as the connection.
        read_ahead: Bytes::copy_from_slice(&parts.read_buf),
    })
}

#[cfg(test)]
mod tests {
    use super::{client_addr, origin_allowed};
    use std::net::IpAddr;

    #[test]
    fn client_address_behind_a_trusted_proxy_only() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let xff = Some("1.2.3.4, 5.6.7.8");
        assert_eq!(client_addr(false, peer, xff), peer, "not trusted: the peer");
        assert_eq!(
            client_addr(true, peer, xff),
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_addr(true, peer, Some("junk")), peer);
        assert_eq!(client_addr(true, peer, None), peer);
    }

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
