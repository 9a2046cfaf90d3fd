//! Codec and fan-out benchmarks: decoding the commands SDKs send, encoding
//! replies and pushes, and handing one publication to 1,000 subscribers.

use std::sync::Arc;

use confab_common::position::{Base, Position};
use confab_common::record::{RecordKind, RoomRecord, UserRef};
use confab_gateway::hub::{Hub, HubConfig, Outbound, Peer};
use confab_gateway::protocol;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn decode(c: &mut Criterion) {
    let publish = br#"{"publish":{"channel":"room:6f1c9d2e-8c0a-4f55-9a51-1f3e6c1b2a77","data":{"text":"hello there, how is everyone doing today?"}},"id":42}"#;
    let batch = b"{\"connect\":{\"token\":\"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig\",\"name\":\"js\"},\"id\":1}\n{\"subscribe\":{\"channel\":\"room:6f1c9d2e-8c0a-4f55-9a51-1f3e6c1b2a77\",\"token\":\"t\",\"recover\":true,\"offset\":1234,\"epoch\":\"abcd\"},\"id\":2}";
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("publish", |b| {
        b.iter(|| protocol::decode_commands(black_box(publish)).unwrap())
    });
    g.bench_function("connect+subscribe frame", |b| {
        b.iter(|| protocol::decode_commands(black_box(batch)).unwrap())
    });
    g.bench_function("pong", |b| {
        b.iter(|| protocol::decode_commands(black_box(b"{}")).unwrap())
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let info = protocol::encode_client_info("6f1c9d2e-8c0a-4f55-9a51-1f3e6c1b2a77", "", "alice");
    let data = r#"{"text":"hello there, how is everyone doing today?"}"#;
    let mut g = c.benchmark_group("encode");
    g.bench_function("publication+push", |b| {
        b.iter(|| {
            let p =
                protocol::encode_publication(black_box(data), &info, 123_456, &uuid::Uuid::nil());
            protocol::encode_pub_push("room:6f1c9d2e-8c0a-4f55-9a51-1f3e6c1b2a77", &p)
        })
    });
    let pubs: Vec<_> = (0..20)
        .map(|i| protocol::encode_publication(data, &info, i, &uuid::Uuid::nil()))
        .collect();
    g.bench_function("subscribe reply with 20 recovered", |b| {
        let mut buf = Vec::with_capacity(8192);
        b.iter(|| {
            buf.clear();
            protocol::ReplyWriter::start(&mut buf, 7, "subscribe")
                .flag("recoverable", true)
                .str("epoch", "abcd1234")
                .num("offset", 19)
                .flag("positioned", true)
                .list("publications", &pubs)
                .flag("recovered", true)
                .finish();
            black_box(buf.len())
        })
    });
    g.finish();
}

fn fan_out(c: &mut Criterion) {
    const SUBSCRIBERS: usize = 1000;
    let hub = Hub::new(HubConfig::with_size(1, 1000));
    hub.init_partition(0, Base(1_000), Position(1_000), Position(1_000));
    let room = Uuid::new_v4();
    let mut queues = Vec::with_capacity(SUBSCRIBERS);
    for _ in 0..SUBSCRIBERS {
        let (tx, rx) = mpsc::channel::<Outbound>(1024);
        let peer = Arc::new(Peer::new(
            Uuid::new_v4().to_string(),
            Uuid::new_v4(),
            "u".into(),
            tx,
            CancellationToken::new(),
        ));
        hub.subscribe(room, &peer, None, true);
        queues.push((peer, rx));
    }
    let user = UserRef {
        id: Uuid::new_v4(),
        username: "alice".into(),
    };
    let record = RoomRecord::message(
        room,
        user,
        RawValue::from_string(r#"{"text":"hello there, how is everyone doing today?"}"#.into())
            .unwrap(),
    );
    assert_eq!(record.kind, RecordKind::Message);
    let mut offset = 1_000u64;
    let mut g = c.benchmark_group("fan-out");
    g.throughput(Throughput::Elements(SUBSCRIBERS as u64));
    g.bench_function("one publication to 1000 subscribers", |b| {
        b.iter_batched(
            || {
                for (_, rx) in &mut queues {
                    while rx.try_recv().is_ok() {}
                }
            },
            |()| {
                offset += 1;
                hub.deliver(0, Position(offset), black_box(&record));
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    assert!(queues.iter().all(|(p, _)| !p.kill.is_cancelled()));
}

criterion_group!(benches, decode, encode, fan_out);
criterion_main!(benches);
