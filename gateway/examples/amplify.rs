//! Measures what reply amplification costs a running gateway (issue 15):
//! fills one room's window with large publications, then has `sockets`
//! clients each send one WebSocket message of 256 `history` commands asking
//! for the whole window, and prints the gateway's RSS before and after.
//!
//! `CONFAB_JWT_SECRET=... cargo run --release -p confab-gateway --example amplify -- \
//!     <gateway addr> <gateway pid> [sockets]`
//!
//! The gateway must allow 20 KB publications and a fast publish rate
//! (`CONFAB_GATEWAY_MAX_PUBLISH_BYTES=20000`, `CONFAB_GATEWAY_PUBLISH_RATE=1000`,
//! `CONFAB_GATEWAY_PUBLISH_BURST=1000` and the same for the per-user rate).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use confab_common::jwt::JwtKeys;
use confab_common::testing::ws::ws_connect;
use serde_json::json;
use uuid::Uuid;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().expect("gateway addr").parse().expect("addr");
    let pid: u32 = args.next().expect("gateway pid").parse().expect("pid");
    let sockets: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let secret = std::env::var("CONFAB_JWT_SECRET").expect("CONFAB_JWT_SECRET");
    let keys = JwtKeys::new(
        secret.as_bytes(),
        Duration::from_secs(3600),
        Duration::from_secs(900),
    );
    let room = Uuid::new_v4();
    let channel = confab_common::room_channel(room);

    let mut clients = Vec::new();
    for i in 0..sockets {
        let user = Uuid::new_v4();
        let mut c = ws_connect(addr).await;
        c.connect(&keys.issue_access(user, &format!("amp{i}")).0)
            .await;
        let r = c
            .subscribe(&channel, &keys.issue_subscription(user, &channel).0)
            .await;
        assert!(r.get("subscribe").is_some(), "{r}");
        clients.push(c);
    }
    let pad = "x".repeat(15_000);
    let filler = &mut clients[0];
    for n in 0..1000 {
        let r = filler
            .publish(&channel, json!({"text": format!("big {n}"), "pad": pad}))
            .await;
        assert!(r.get("publish").is_some(), "{r}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid);
    let frame: Vec<String> = (1..=256)
        .map(|id| {
            json!({"id": 10_000 + id, "history": {"channel": channel, "limit": -1}}).to_string()
        })
        .collect();
    let frame = Arc::new(frame.join("\n"));
    let peak = Arc::new(AtomicU64::new(before));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Every client sends its message at once and reads its replies as they
    // come; a reply that never comes (the socket closed) counts as lost.
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let frame = Arc::clone(&frame);
            tokio::spawn(async move {
                c.send_text(&frame).await;
                let (mut answered, mut refused) = (0, 0);
                for id in 1..=256u32 {
                    let Some(r) = c.reply_within(10_000 + id, Duration::from_secs(30)).await else {
                        break;
                    };
                    if r.get("error").is_some() {
                        refused += 1;
                    } else {
                        answered += 1;
                    }
                    c.raw.clear();
                }
                (answered, refused)
            })
        })
        .collect();
    let (mut answered, mut refused) = (0, 0);
    for t in tasks {
        let (a, r) = t.await.expect("client task");
        answered += a;
        refused += r;
    }
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    let lost = sockets * 256 - answered - refused;
    println!(
        "{sockets} sockets x 256 history commands: {answered} answered, {refused} refused, {lost} never answered; \
         gateway RSS {before} KiB before, peak {peak} KiB, {after} KiB after"
    );
}
