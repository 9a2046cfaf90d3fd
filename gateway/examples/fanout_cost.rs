//! A fixed amount of fan-out work, for instruction counts under callgrind:
//! `fanout_cost <subscribers> <publications>` subscribes that many peers to
//! one room and delivers that many publications, draining the queues as a
//! session would. `bench/callgrind-fanout` runs it twice and divides the
//! difference by the extra deliveries, so setup cost cancels out.

use std::sync::Arc;

use confab_common::position::{Base, Position};
use confab_common::record::{RoomRecord, UserRef};
use confab_gateway::hub::{Hub, HubConfig, Outbound, Peer};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn main() {
    let mut args = std::env::args().skip(1);
    let subscribers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let publications: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let hub = Hub::new(HubConfig::with_size(1, 1000));
    hub.init_partition(0, Base(1_000), Position(1_000), Position(1_000));
    let room = Uuid::new_v4();
    let mut queues = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let (tx, rx) = mpsc::channel::<Outbound>(1024);
        let peer = Arc::new(Peer::new(
            Uuid::new_v4().to_string(),
            Uuid::new_v4(),
            "u".into(),
            tx,
            CancellationToken::new(),
        ));
        hub.subscribe(room, &peer, None, false);
        queues.push((peer, rx));
    }
    let record = RoomRecord::message(
        room,
        UserRef {
            id: Uuid::new_v4(),
            username: "alice".into(),
        },
        RawValue::from_string(r#"{"text":"hello there, how is everyone doing today?"}"#.into())
            .expect("valid JSON"),
    );
    let mut bytes = 0usize;
    for i in 0..publications {
        hub.deliver(0, Position(1_001 + i), &record);
        for (_, rx) in &mut queues {
            while let Ok(Outbound::Push(b)) = rx.try_recv() {
                bytes += b.len();
            }
        }
    }
    assert!(queues.iter().all(|(p, _)| !p.kill.is_cancelled()));
    println!(
        "{subscribers} subscribers x {publications} publications: {} deliveries, {bytes} bytes",
        subscribers as u64 * publications
    );
}
