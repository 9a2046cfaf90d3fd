//! What differs between the two servers the bench drives: where each listens,
//! which processes it is, and how users, rooms and tokens come to exist.
//!
//! Confab makes users and rooms over its REST API. Centrifugo has no such API,
//! so for it the bench mints the same tokens Confab's auth-api issues, with the
//! shared secret, and a "room" is just a channel name `room:<uuid>`. Everything
//! else (connections, publishers, histograms, /proc figures) is shared code.

use std::time::Duration;

use anyhow::Context as _;
use confab_common::jwt::JwtKeys;
use uuid::Uuid;

use crate::cli::Common;
pub use crate::cli::Target;
use crate::rest::{BenchUser, Room};
use crate::sys::{self, Server};
use crate::ws;

/// Lifetime of locally minted access tokens (auth-api's default).
pub const ACCESS_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lifetime of locally minted subscription tokens: longer than any run, so no
/// subscription needs a refresh mid-run.
pub const SUBSCRIPTION_TTL: Duration = Duration::from_secs(2 * 3600);

impl Target {
    /// The prefix of the server's own Prometheus metrics.
    pub fn metrics_prefix(self) -> &'static str {
        match self {
            Self::Confab => "confab_gateway_",
            Self::Centrifugo => "centrifugo_",
        }
    }

    /// Where the server's pid file is by default, relative to the repository root.
    pub fn default_pid_file(self) -> &'static str {
        match self {
            Self::Confab => sys::GATEWAY_PID_FILE,
            Self::Centrifugo => sys::CENTRIFUGO_PID_FILE,
        }
    }
}

/// Where one target listens and which processes it is.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub target: Target,
    /// WebSocket URLs; connections are spread over them.
    pub ws: Vec<String>,
    /// The server processes, for CPU time and RSS. Empty when unknown.
    pub server: Server,
    /// Why no pid is known, when none is.
    pub pid_error: Option<String>,
    /// Prometheus endpoints, one per server.
    pub metrics: Vec<String>,
}

/// `/metrics` on the host and port of a `ws://` URL.
pub fn metrics_url_for(ws_url: &str) -> anyhow::Result<String> {
    let (host, port, _) = ws::parse_ws_url(ws_url)?;
    Ok(format!("http://{host}:{port}/metrics"))
}

impl Endpoints {
    /// The endpoints of `target` from the command line. `--server-pid`
    /// applies only to a single run (`single`); `compare` names each
    /// server's pids with `--gateway-pid` and `--centrifugo-pid`.
    pub fn resolve(common: &Common, target: Target, single: bool) -> anyhow::Result<Self> {
        let (ws, pids, files, metrics) = match target {
            Target::Confab => (
                &common.ws,
                &common.gateway_pid,
                &[][..],
                &common.metrics_url,
            ),
            Target::Centrifugo => (
                &common.centrifugo_ws,
                &common.centrifugo_pid,
                &common.centrifugo_pid_file[..],
                &common.centrifugo_metrics_url,
            ),
        };
        anyhow::ensure!(!ws.is_empty(), "no WebSocket URL for {}", target.title());
        let pids = if single && !common.server_pid.is_empty() {
            &common.server_pid
        } else {
            pids
        };
        let (server, pid_error) = match sys::server_pids(pids, files, target.default_pid_file()) {
            Ok(pids) => (Server { pids }, None),
            Err(e) => (Server::default(), Some(format!("{e:#}"))),
        };
        let metrics = if metrics.is_empty() {
            ws.iter()
                .map(|u| metrics_url_for(u))
                .collect::<anyhow::Result<_>>()?
        } else {
            metrics.clone()
        };
        Ok(Self {
            target,
            ws: ws.clone(),
            server,
            pid_error,
            metrics,
        })
    }
}

/// The keys the bench mints with: Confab's own `JwtKeys`, so the claims are
/// exactly what auth-api issues (`sub`, `name`, `exp`, `iat`, `iss`, `aud`;
/// `channel` instead of `name` on subscription tokens).
pub fn bench_keys(secret: &str) -> JwtKeys {
    JwtKeys::new(secret.as_bytes(), ACCESS_TTL, SUBSCRIPTION_TTL)
}

/// The keys for a target: Centrifugo always needs them, Confab only when
/// subscription tokens are to be minted locally.
pub fn keys_for(target: Target, secret: Option<&str>) -> anyhow::Result<Option<JwtKeys>> {
    match (target, secret) {
        (_, Some(s)) => Ok(Some(bench_keys(s))),
        (Target::Confab, None) => Ok(None),
        (Target::Centrifugo, None) => Err(anyhow::anyhow!(
            "--target centrifugo mints every token locally: pass --jwt-secret or set CONFAB_JWT_SECRET \
             (the secret in Centrifugo's config, as bench/peers/centrifugo wrote it)"
        )),
    }
}

/// A user that exists only in its token, as a Centrifugo connection sees it.
pub fn local_user(keys: &JwtKeys, username: &str) -> BenchUser {
    let id = Uuid::new_v4();
    BenchUser {
        id,
        username: username.to_owned(),
        token: keys.issue_access(id, username).0,
    }
}

/// A room that exists only as its channel name.
pub fn local_room() -> Room {
    let id = Uuid::new_v4();
    Room {
        id,
        channel: confab_common::room_channel(id),
    }
}

/// A subscription token for `user` on `room`'s channel.
pub fn subscription_token(keys: &JwtKeys, user: &BenchUser, room: &Room) -> String {
    keys.issue_subscription(user.id, &room.channel).0
}

/// The claims of a JWT, decoded without checking anything: for tests and for
/// showing what a server is given.
pub fn claims_of(token: &str) -> anyhow::Result<serde_json::Value> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).context("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .context("JWT payload is not base64url")?;
    serde_json::from_slice(&bytes).context("JWT payload is not JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    const SECRET: &str = "bench-test-secret-0123456789";

    /// What the gateway holds: the same secret, auth-api's lifetimes.
    fn confab_verifier() -> JwtKeys {
        JwtKeys::new(
            SECRET.as_bytes(),
            Duration::from_secs(24 * 3600),
            Duration::from_secs(15 * 60),
        )
    }

    #[test]
    fn minted_access_tokens_pass_confabs_verifier() {
        let keys = bench_keys(SECRET);
        let u = local_user(&keys, "bench_abcd1234_0");
        let c = confab_verifier().verify_access(&u.token).unwrap();
        assert_eq!(c.sub, u.id);
        assert_eq!(c.name, "bench_abcd1234_0");
        assert_eq!(c.iss, confab_common::jwt::ISSUER);
        assert_eq!(c.aud, confab_common::jwt::ACCESS_AUDIENCE);
        assert_eq!(c.exp - c.iat, ACCESS_TTL.as_secs() as i64);
        // Not a subscription token.
        assert!(confab_verifier().verify_subscription(&u.token).is_err());
        // Another secret is refused.
        let other = JwtKeys::new(b"another-secret", ACCESS_TTL, SUBSCRIPTION_TTL);
        assert!(other.verify_access(&u.token).is_err());
    }

    #[test]
    fn minted_subscription_tokens_pass_confabs_verifier() {
        let keys = bench_keys(SECRET);
        let u = local_user(&keys, "bench_abcd1234_1");
        let room = local_room();
        assert_eq!(room.channel, format!("room:{}", room.id));
        let t = subscription_token(&keys, &u, &room);
        let c = confab_verifier().verify_subscription(&t).unwrap();
        assert_eq!(c.sub, u.id, "the connection's user, as both servers check");
        assert_eq!(c.channel, room.channel);
        assert_eq!(c.iss, confab_common::jwt::ISSUER);
        assert_eq!(c.aud, confab_common::jwt::SUBSCRIPTION_AUDIENCE);
        assert_eq!(c.exp - c.iat, SUBSCRIPTION_TTL.as_secs() as i64);
        assert!(confab_verifier().verify_access(&t).is_err());
    }

    #[test]
    fn claim_sets_are_exactly_auth_apis() {
        // Centrifugo sees these raw claims: `sub` is the user, `channel` must
        // equal the subscribed channel, `iss`/`aud` are checked by its config,
        // `name` is ignored, and no `info`, `client` or `expire_at` is sent.
        let keys = bench_keys(SECRET);
        let u = local_user(&keys, "bob_1");
        let room = local_room();
        let mut access: Vec<String> = claims_of(&u.token)
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        access.sort();
        assert_eq!(access, ["aud", "exp", "iat", "iss", "name", "sub"]);
        let sub = claims_of(&subscription_token(&keys, &u, &room)).unwrap();
        let mut names: Vec<&String> = sub.as_object().unwrap().keys().collect();
        names.sort();
        assert_eq!(names, ["aud", "channel", "exp", "iat", "iss", "sub"]);
        assert_eq!(sub["sub"], u.id.to_string());
        assert_eq!(sub["aud"], "confab:subscription");
        assert_eq!(sub["iss"], "confab");
        // HS256, as Centrifugo's hmac_secret_key expects.
        let header = u.token.split('.').next().unwrap();
        use base64::Engine as _;
        let header: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["alg"], "HS256");
        assert!(claims_of("garbage").is_err());
    }

    #[test]
    fn centrifugo_needs_the_secret() {
        assert!(keys_for(Target::Centrifugo, None).is_err());
        assert!(keys_for(Target::Centrifugo, Some(SECRET))
            .unwrap()
            .is_some());
        assert!(keys_for(Target::Confab, None).unwrap().is_none());
    }

    #[test]
    fn endpoints_follow_the_target() {
        let cli = crate::cli::Cli::try_parse_from([
            "b",
            "--ws",
            "ws://127.0.0.1:8200/connection/websocket",
            "--centrifugo-ws",
            "ws://127.0.0.1:8202/connection/websocket,ws://127.0.0.1:8203/connection/websocket",
            "--gateway-pid",
            "11",
            "--centrifugo-pid",
            "21,22",
            "latency",
        ])
        .unwrap();
        let c = Endpoints::resolve(&cli.common, Target::Confab, false).unwrap();
        assert_eq!(c.ws, ["ws://127.0.0.1:8200/connection/websocket"]);
        assert_eq!(c.server.pids, [11]);
        assert_eq!(c.metrics, ["http://127.0.0.1:8200/metrics"]);
        let p = Endpoints::resolve(&cli.common, Target::Centrifugo, false).unwrap();
        assert_eq!(p.server.pids, [21, 22]);
        assert_eq!(
            p.metrics,
            [
                "http://127.0.0.1:8202/metrics",
                "http://127.0.0.1:8203/metrics"
            ]
        );
        assert_eq!(Target::Centrifugo.metrics_prefix(), "centrifugo_");

        // --server-pid overrides the selected target's pid in a single run only.
        let cli = crate::cli::Cli::try_parse_from([
            "b",
            "--target",
            "centrifugo",
            "--server-pid",
            "99",
            "--centrifugo-pid",
            "21",
            "latency",
        ])
        .unwrap();
        let p = Endpoints::resolve(&cli.common, Target::Centrifugo, true).unwrap();
        assert_eq!(p.server.pids, [99]);
        let p = Endpoints::resolve(&cli.common, Target::Centrifugo, false).unwrap();
        assert_eq!(p.server.pids, [21]);
    }
}
