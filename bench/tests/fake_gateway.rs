//! The bench's client side against a tiny in-process stand-in for the
//! gateway: handshake, connect, subscribe, pings, paced publishes, fan-out
//! and latency recording, with no real stack needed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use confab_bench::client::{self, ConnSpec, PublishPlan, RampOpts, Shared};
use confab_bench::ws::{accept_key, WsTarget};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Default)]
struct Hub {
    subs: Mutex<HashMap<String, Vec<mpsc::UnboundedSender<Vec<u8>>>>>,
    offset: AtomicU64,
    pongs: AtomicU64,
}

async fn serve(listener: TcpListener, hub: Arc<Hub>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            let req = String::from_utf8(buf).unwrap();
            assert!(req.starts_with("GET /connection/websocket HTTP/1.1\r\n"));
            let key = req
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .trim()
                .to_owned();
            // The key is 16 random bytes, base64.
            assert_eq!(
                base64::engine::general_purpose::STANDARD
                    .decode(&key)
                    .unwrap()
                    .len(),
                16
            );
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                accept_key(&key)
            );
            stream.write_all(resp.as_bytes()).await.unwrap();
            let ws = WebSocket::after_handshake(stream, Role::Server);
            let (mut read, mut write) = ws.split(|s| s.into_split());
            let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
            tokio::spawn(async move {
                while let Some(msg) = rx.recv().await {
                    if write
                        .write_frame(Frame::text(Payload::Owned(msg)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
            let mut ignore = |_f: Frame<'_>| async { Ok::<_, std::io::Error>(()) };
            while let Ok(frame) = read.read_frame(&mut ignore).await {
                if frame.opcode == OpCode::Close {
                    return;
                }
                if frame.opcode != OpCode::Text {
                    continue;
                }
                let text = std::str::from_utf8(&frame.payload).unwrap().to_owned();
                for line in text.lines() {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    let id = v.get("id").and_then(|i| i.as_u64()).unwrap_or(0);
                    if id == 0 {
                        hub.pongs.fetch_add(1, Ordering::Relaxed);
                    } else if v.get("connect").is_some() {
                        assert_eq!(v["connect"]["token"], "access");
                        // Reply and ping in one frame, as a real server may.
                        let _ = tx.send(
                            format!("{{\"id\":{id},\"connect\":{{\"client\":\"c\",\"ping\":25,\"pong\":true}}}}\n{{}}")
                                .into_bytes(),
                        );
                    } else if let Some(s) = v.get("subscribe") {
                        let ch = s["channel"].as_str().unwrap().to_owned();
                        if s["token"] != "sub" {
                            let _ = tx.send(format!("{{\"id\":{id},\"error\":{{\"code\":103,\"message\":\"permission denied\"}}}}").into_bytes());
                            continue;
                        }
                        hub.subs
                            .lock()
                            .unwrap()
                            .entry(ch)
                            .or_default()
                            .push(tx.clone());
                        let _ = tx.send(format!("{{\"id\":{id},\"subscribe\":{{}}}}").into_bytes());
                        // A later ping, which the reader task must answer.
                        let _ = tx.send(b"{}".to_vec());
                    } else if let Some(p) = v.get("publish") {
                        let ch = p["channel"].as_str().unwrap();
                        let offset = hub.offset.fetch_add(1, Ordering::Relaxed) + 1;
                        let push = serde_json::json!({"push": {"channel": ch, "pub": {
                            "data": p["data"], "info": {"user": "u"}, "offset": offset}}});
                        let push = serde_json::to_vec(&push).unwrap();
                        let _ = tx.send(format!("{{\"id\":{id},\"publish\":{{}}}}").into_bytes());
                        for sub in hub.subs.lock().unwrap().get(ch).into_iter().flatten() {
                            let _ = sub.send(push.clone());
                        }
                    }
                }
            }
        });
    }
}

async fn start() -> (WsTarget, Arc<Hub>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hub = Arc::new(Hub::default());
    tokio::spawn(serve(listener, hub.clone()));
    let target = WsTarget::resolve(&format!("ws://{addr}/connection/websocket"))
        .await
        .unwrap();
    (target, hub)
}

fn spec(i: usize, room: usize, sub_token: &str) -> ConnSpec {
    ConnSpec {
        index: i,
        server: 0,
        join_leave: false,
        token: Arc::from("access"),
        room: Some(room),
        subs: vec![(Arc::from(format!("room:{room}")), Arc::from(sub_token))],
        source: None,
    }
}

#[tokio::test]
async fn connections_publish_and_fan_out() {
    let (target, hub) = start().await;
    let shared = Arc::new(Shared::new("run1".into(), 2, true));
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let specs: Vec<ConnSpec> = (0..20).map(|i| spec(i, i % 2, "sub")).collect();
    let ramp = client::ramp(
        std::slice::from_ref(&target),
        specs,
        &shared,
        &RampOpts {
            concurrency: 8,
            rate: 0.0,
            timeout: Duration::from_secs(5),
        },
        &indicatif::ProgressBar::hidden(),
        &stop,
        &CancellationToken::new(),
        &tracker,
        |_| {},
    )
    .await;
    assert_eq!(ramp.conns.len(), 20, "{:?}", ramp.errors);
    assert_eq!(ramp.failed, 0);

    // One publisher per room, 50 msg/s each, for one second.
    let seq = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    let mut pubs = Vec::new();
    for room in 0..2 {
        let conn = ramp
            .conns
            .iter()
            .find(|c| c.room == Some(room))
            .unwrap()
            .clone();
        pubs.push(tokio::spawn(client::publisher(
            conn,
            PublishPlan {
                channel: Arc::from(format!("room:{room}")),
                rate: 50.0,
                text: Arc::from("bench"),
                phase: Duration::ZERO,
                max_inflight: 100,
            },
            shared.clone(),
            seq.clone(),
            deadline,
            stop.clone(),
            None,
        )));
    }
    for p in pubs {
        p.await.unwrap();
    }
    let c = &shared.counters;
    let sent = c.publishes_sent.load(Ordering::Relaxed);
    assert!((80..=110).contains(&sent), "sent {sent}");
    // Each publication reaches the 10 connections of its room.
    let want = sent * 10;
    for _ in 0..100 {
        if c.deliveries.load(Ordering::Relaxed) >= want && c.acks.load(Ordering::Relaxed) == sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(c.acks.load(Ordering::Relaxed), sent);
    assert_eq!(c.deliveries.load(Ordering::Relaxed), want);
    assert_eq!(
        shared.acks_per_room[0].load(Ordering::Relaxed)
            + shared.acks_per_room[1].load(Ordering::Relaxed),
        sent
    );
    assert_eq!(c.parse_errors.load(Ordering::Relaxed), 0);
    // Both pings (in the connect reply's frame, and after subscribing) were answered.
    assert_eq!(hub.pongs.load(Ordering::Relaxed), 40);
    assert_eq!(c.pings.load(Ordering::Relaxed), 20);
    let deliver = shared.deliver.merged();
    assert_eq!(deliver.len(), want);
    assert_eq!(shared.ack.merged().len(), sent);
    // Offsets seen over the socket are recorded per seq.
    assert_eq!(
        shared.offsets.as_ref().unwrap().lock().unwrap().len() as u64,
        sent
    );

    stop.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .expect("readers stop on cancel");
    assert!(ramp.conns.iter().all(|c| !c.alive.load(Ordering::Relaxed)));
}

#[tokio::test]
async fn subscribe_errors_are_counted_not_fatal() {
    let (target, _hub) = start().await;
    let shared = Arc::new(Shared::new("run2".into(), 1, false));
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let specs = vec![spec(0, 0, "sub"), spec(1, 0, "wrong")];
    let ramp = client::ramp(
        std::slice::from_ref(&target),
        specs,
        &shared,
        &RampOpts {
            concurrency: 2,
            rate: 0.0,
            timeout: Duration::from_secs(5),
        },
        &indicatif::ProgressBar::hidden(),
        &stop,
        &CancellationToken::new(),
        &tracker,
        |_| {},
    )
    .await;
    assert_eq!(ramp.conns.len(), 1);
    assert_eq!(ramp.failed, 1);
    let (msg, n) = ramp.errors.iter().next().unwrap();
    assert_eq!(*n, 1);
    assert!(msg.contains("subscribe error 103"), "{msg}");
    stop.cancel();
}

#[tokio::test]
async fn refused_connections_are_reported() {
    // A port nobody listens on.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let target = WsTarget::resolve(&format!("ws://{addr}/connection/websocket"))
        .await
        .unwrap();
    let shared = Arc::new(Shared::new("run3".into(), 1, false));
    let ramp = client::ramp(
        std::slice::from_ref(&target),
        vec![spec(0, 0, "sub")],
        &shared,
        &RampOpts {
            concurrency: 1,
            rate: 0.0,
            timeout: Duration::from_secs(2),
        },
        &indicatif::ProgressBar::hidden(),
        &CancellationToken::new(),
        &CancellationToken::new(),
        &TaskTracker::new(),
        |_| {},
    )
    .await;
    assert_eq!(ramp.failed, 1);
    assert!(ramp.errors.keys().next().unwrap().contains("connecting to"));
}
