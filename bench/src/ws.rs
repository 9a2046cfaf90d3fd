//! A lean WebSocket client: a raw `TcpStream` (optionally bound to a chosen
//! source address), our own HTTP/1.1 upgrade, then fastwebsockets framing on
//! the split halves. No hyper and no boxing per connection, which matters at
//! tens of thousands of sockets.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use base64::Engine as _;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket, WebSocketRead, WebSocketWrite};
use sha1::{Digest as _, Sha1};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

/// Where to connect: `ws://host:port/path`, resolved once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsTarget {
    /// The resolved server address.
    pub addr: SocketAddr,
    /// The `Host` header value.
    pub host: String,
    /// The request path, e.g. `/connection/websocket`.
    pub path: String,
}

/// Splits a `ws://` URL into host, port and path. `wss://` is refused: the
/// bench measures the gateway itself, not TLS.
pub fn parse_ws_url(url: &str) -> anyhow::Result<(String, u16, String)> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("{url}: only ws:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    ensure!(!authority.is_empty(), "{url}: no host");
    let bad_port = || format!("{url}: bad port");
    let (host, port) = if authority.starts_with('[') {
        let end = authority
            .find(']')
            .with_context(|| format!("{url}: bad IPv6 host"))?;
        let port = match &authority[end + 1..] {
            "" => 80,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .with_context(bad_port)?,
        };
        (authority[..=end].to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().with_context(bad_port)?),
            None => (authority.to_owned(), 80),
        }
    };
    Ok((host, port, path))
}

impl WsTarget {
    /// Parses and resolves a `ws://` URL.
    pub async fn resolve(url: &str) -> anyhow::Result<Self> {
        let (host, port, path) = parse_ws_url(url)?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addr = tokio::net::lookup_host((bare, port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        Ok(Self {
            addr,
            host: format!("{host}:{port}"),
            path,
        })
    }
}

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value a server must answer `key` with.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The upgrade request.
pub fn upgrade_request(target: &WsTarget, key: &str) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.path, target.host
    )
}

/// Checks an upgrade response head (everything up to the blank line).
pub fn check_upgrade_response(head: &str, key: &str) -> anyhow::Result<()> {
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split(' ').nth(1).unwrap_or_default();
    ensure!(code == "101", "upgrade refused: {status}");
    let want = accept_key(key);
    let mut accepted = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("sec-websocket-accept") {
                accepted = value.trim() == want;
            }
        }
    }
    ensure!(
        accepted,
        "upgrade response lacks the right Sec-WebSocket-Accept"
    );
    Ok(())
}

/// Explains bytes the server sent right after the upgrade, before any command.
pub fn describe_early_frame(extra: &[u8]) -> String {
    match extra {
        [0x88, len, rest @ ..] if len & 0x7f >= 2 && rest.len() >= 2 => format!(
            "server closed the connection right after the upgrade (close code {})",
            u16::from_be_bytes([rest[0], rest[1]])
        ),
        [0x88, ..] => "server closed the connection right after the upgrade".to_owned(),
        _ => format!(
            "server sent {} bytes before the client's first command",
            extra.len()
        ),
    }
}

/// The first port handed out for explicit source binds.
const PORT_LO: u32 = 10_000;
/// How many ports from `PORT_LO` are used (10000..=64999).
const PORT_SPAN: u32 = 55_000;

/// Next explicit source port per source address. Binding to port 0 makes the
/// kernel search for a free port and, past about 14,000 bound sockets on one
/// address, that search crawls (we measured the ramp falling from hundreds to
/// ten connections per second); picking ports ourselves keeps bind O(1).
static NEXT_PORT: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<IpAddr, u32>>> =
    std::sync::LazyLock::new(Default::default);

fn next_port(ip: IpAddr) -> u16 {
    let mut m = NEXT_PORT.lock().unwrap_or_else(|p| p.into_inner());
    let n = m.entry(ip).or_insert_with(|| {
        let b = uuid::Uuid::new_v4();
        let b = b.as_bytes();
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) % PORT_SPAN
    });
    let port = PORT_LO + *n % PORT_SPAN;
    *n = n.wrapping_add(1);
    port as u16
}

/// Connects from `ip`, on the next free explicit port (ports taken by other
/// sockets or processes are skipped).
async fn connect_from(ip: IpAddr, addr: SocketAddr) -> anyhow::Result<TcpStream> {
    use std::io::ErrorKind::{AddrInUse, AddrNotAvailable};
    let mut last = None;
    for _ in 0..64 {
        let port = next_port(ip);
        let socket = if ip.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(SocketAddr::new(ip, port)) {
            Ok(()) => {}
            Err(e) if e.kind() == AddrInUse => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("binding source address {ip}:{port}")),
        }
        match socket.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) if matches!(e.kind(), AddrInUse | AddrNotAvailable) => last = Some(e),
            Err(e) => {
                return Err(e).with_context(|| format!("connecting to {addr} from {ip}:{port}"))
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from(AddrInUse)))
        .with_context(|| format!("no free source port on {ip} after 64 tries"))
}

/// The two halves of an open client connection.
pub type WsRead = WebSocketRead<OwnedReadHalf>;
/// The write half; shared behind a mutex by the reader (pongs) and publishers.
pub type WsWrite = WebSocketWrite<OwnedWriteHalf>;

/// Opens a TCP connection (from `source` if given) and upgrades it.
pub async fn open(
    target: &WsTarget,
    source: Option<IpAddr>,
    timeout: Duration,
) -> anyhow::Result<(WsRead, WsWrite)> {
    tokio::time::timeout(timeout, open_inner(target, source))
        .await
        .context("WebSocket open timed out")?
}

async fn open_inner(
    target: &WsTarget,
    source: Option<IpAddr>,
) -> anyhow::Result<(WsRead, WsWrite)> {
    let mut stream = match source {
        Some(ip) => connect_from(ip, target.addr).await?,
        None => {
            let socket = if target.addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket
                .connect(target.addr)
                .await
                .with_context(|| format!("connecting to {}", target.addr))?
        }
    };
    stream.set_nodelay(true)?;

    let key = base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes());
    stream
        .write_all(upgrade_request(target, &key).as_bytes())
        .await?;

    // Read the response head. The server says nothing more until we send
    // `connect`, so anything after the blank line would be a protocol error.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let head_end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("server closed during the upgrade");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        ensure!(buf.len() < 16 * 1024, "upgrade response head too large");
    };
    ensure!(
        buf.len() == head_end + 4,
        "{}",
        describe_early_frame(&buf[head_end + 4..])
    );
    let head = std::str::from_utf8(&buf[..head_end]).context("upgrade response is not UTF-8")?;
    check_upgrade_response(head, &key)?;

    let ws = WebSocket::after_handshake(stream, Role::Client);
    let (mut read, write) = ws.split(|s| s.into_split());
    read.set_max_message_size(16 << 20);
    Ok((read, write))
}

/// A text frame with `payload`.
pub fn text_frame(payload: Vec<u8>) -> Frame<'static> {
    Frame::text(Payload::Owned(payload))
}

/// What `read_text` returned.
#[derive(Debug)]
pub enum Read {
    /// A text frame's payload.
    Text(bytes::BytesMut),
    /// The server closed the connection (close frame or EOF).
    Closed,
}

/// Reads the next text frame, answering WebSocket-level pings and closes
/// through `write`. Other frame types are skipped.
pub async fn read_text(
    read: &mut WsRead,
    write: &tokio::sync::Mutex<WsWrite>,
) -> anyhow::Result<Read> {
    loop {
        let mut send = |frame: Frame<'_>| {
            let frame = Frame::new(
                true,
                frame.opcode,
                None,
                Payload::Owned(frame.payload.to_vec()),
            );
            async move { write.lock().await.write_frame(frame).await }
        };
        let frame = match read.read_frame(&mut send).await {
            Ok(f) => f,
            Err(fastwebsockets::WebSocketError::UnexpectedEOF) => return Ok(Read::Closed),
            Err(fastwebsockets::WebSocketError::ConnectionClosed) => return Ok(Read::Closed),
            Err(e) => return Err(e.into()),
        };
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                ensure!(
                    frame.fin,
                    "fragmented frames are not expected from the gateway"
                );
                return Ok(Read::Text(match frame.payload {
                    Payload::Bytes(b) => b,
                    other => bytes::BytesMut::from(&other[..]),
                }));
            }
            OpCode::Close => return Ok(Read::Closed),
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn ws_urls_parse() {
        assert_eq!(
            parse_ws_url("ws://127.0.0.1:8000/connection/websocket").unwrap(),
            ("127.0.0.1".into(), 8000, "/connection/websocket".into())
        );
        assert_eq!(
            parse_ws_url("ws://localhost").unwrap(),
            ("localhost".into(), 80, "/".into())
        );
        assert_eq!(
            parse_ws_url("ws://[::1]:9000/x").unwrap(),
            ("[::1]".into(), 9000, "/x".into())
        );
        assert!(parse_ws_url("wss://example/x").is_err());
        assert!(parse_ws_url("http://x/").is_err());
        assert!(parse_ws_url("ws://h:notaport/").is_err());
    }

    #[test]
    fn upgrade_response_is_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let good = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        check_upgrade_response(good, key).unwrap();
        let wrong = good.replace("s3pP", "AAAA");
        assert!(check_upgrade_response(&wrong, key).is_err());
        assert!(check_upgrade_response("HTTP/1.1 400 Bad Request\r\n", key).is_err());
    }

    #[test]
    fn early_frames_are_explained() {
        assert_eq!(
            describe_early_frame(&[0x88, 0x02, 0x03, 0xf0]),
            "server closed the connection right after the upgrade (close code 1008)"
        );
        assert!(describe_early_frame(&[0x88, 0x00]).contains("closed"));
        assert!(describe_early_frame(&[0x81, 0x02, b'{', b'}']).contains("4 bytes"));
    }

    #[test]
    fn explicit_source_ports_advance_and_stay_in_range() {
        let ip: IpAddr = "127.0.0.77".parse().unwrap();
        let a = next_port(ip) as u32;
        let b = next_port(ip) as u32;
        assert!((PORT_LO..PORT_LO + PORT_SPAN).contains(&a));
        assert!(b == a + 1 || (a == PORT_LO + PORT_SPAN - 1 && b == PORT_LO));
    }

    #[tokio::test]
    async fn connects_from_a_chosen_loopback_address() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let src: IpAddr = "127.0.0.3".parse().unwrap();
        let s = connect_from(src, addr).await.unwrap();
        let (_, peer) = l.accept().await.unwrap();
        assert_eq!(s.local_addr().unwrap().ip(), src);
        assert_eq!(peer.ip(), src);
    }

    #[test]
    fn request_has_the_upgrade_headers() {
        let t = WsTarget {
            addr: "127.0.0.1:8000".parse().unwrap(),
            host: "127.0.0.1:8000".into(),
            path: "/connection/websocket".into(),
        };
        let r = upgrade_request(&t, "k");
        assert!(r.starts_with("GET /connection/websocket HTTP/1.1\r\n"));
        assert!(r.contains("Sec-WebSocket-Key: k\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
    }
}
