//! confab-gateway: the WebSocket gateway.
//!
//! It speaks the Centrifugo client protocol v2 with JSON encoding (see
//! [`protocol`]) on `/connection/websocket`, so unmodified centrifuge-js and
//! centrifuge-python clients can connect, subscribe to `room:<id>` channels,
//! publish, receive, recover missed publications and ask for presence and
//! history. It also serves `/healthz` and `/metrics`.
//!
//! A message's path through this crate:
//! - `server.rs` accepts the socket and upgrades it;
//! - `connection.rs` turns frames into typed commands, and writes frames;
//! - `session/mod.rs` runs the protocol: `Session::publish` produces the record
//!   through the `Publisher` of `kafka/mod.rs` and answers on the broker's ack;
//! - `kafka/consumer.rs` reads every partition of the topic's layout and
//!   hands each record to [`hub`], whose `Hub::deliver` stores it in the
//!   room's window and fans its push bytes, encoded once, out to every
//!   subscriber's bounded queue.
//!
//! Presence and typing cross instances through a compacted presence topic
//! (`kafka/signals.rs`).
//!
//! A record's position comes from its Kafka offset and its partition's
//! incarnation ([`confab_common::position`]), so all instances, the REST
//! history and the clients agree on offsets.
//!
//! **Architecture invariant:** the gateway never talks to PostgreSQL; the only
//! state it shares with other services is the Kafka topic.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use confab_common::producer::RoomProducer;
use confab_common::stream::LayoutWatch;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod config;
mod connection;
pub mod hub;
mod kafka;
mod message;
mod metrics;
pub mod protocol;
mod server;
mod session;
mod state;

pub use config::Config;

/// The largest WebSocket frame or message accepted (CONTRACT §4); larger
/// ones close the connection with 1009.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// How often the topic's layout is checked (it changes when the topic is
/// created again).
const LAYOUT_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// How often idle rooms are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("kafka client: {0}")]
    KafkaClient(#[from] rdkafka::error::KafkaError),
    #[error("kafka setup: {0}")]
    KafkaSetup(#[from] confab_common::kafka::KafkaError),
}

/// Runs the gateway on `listener` until `shutdown` is cancelled, then drains:
/// stops accepting, answers every in-flight publish, closes sockets with
/// reconnect advice (3001) and flushes the producer.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let handle = confab_common::telemetry::metrics_handle();
    metrics::describe();
    confab_common::telemetry::spawn_metrics_upkeep(handle.clone());
    if config.allowed_origins.is_empty() {
        tracing::warn!(
            "CONFAB_GATEWAY_ALLOWED_ORIGINS is empty: browsers from any origin may connect; \
             set it in production"
        );
    }

    // Kafka first: positions need the topic's layout.
    let kafka_stop = CancellationToken::new();
    let layout = LayoutWatch::new(&config.kafka)?;
    let watcher = layout.spawn(LAYOUT_CHECK_INTERVAL, kafka_stop.clone());
    let Some(current) = layout.ready(&shutdown).await else {
        kafka_stop.cancel();
        let _ = watcher.await;
        return Ok(());
    };
    let partitions = current.partitions as usize;
    let hub = Arc::new(hub::Hub::new(hub::HubConfig {
        partitions,
        history_size: config.history_size,
        history_ttl_ms: config.history_ttl.as_millis() as i64,
        history_bytes_per_room: config.history_bytes_per_room,
        history_bytes_total: config.history_bytes_total,
    }));
    // Presence across instances; stopped after the connections, so that
    // their leaves are written.
    let signals_stop = CancellationToken::new();
    let signals =
        kafka::signals::start(&config.kafka, Arc::clone(&hub), signals_stop.clone()).await?;
    // Stops them too when this function returns early with an error.
    let _signals_guard = signals_stop.clone().drop_guard();
    let publisher = kafka::KafkaPublisher::new(
        RoomProducer::new(&config.kafka, layout.clone())?,
        partitions,
    );
    let consumer = kafka::start_consumer(
        &config.kafka,
        Arc::clone(&hub),
        layout,
        config.prefill_records.max(0),
        kafka_stop.clone(),
    )
    .await?;
    tracing::info!(
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        partitions,
        topic = %config.kafka.topic,
        "gateway starting"
    );

    // Accept once the consumer has read the recent past (or soon anyway).
    let mut caught_up = consumer.caught_up.clone();
    let wait = tokio::time::timeout(config.catch_up_timeout, caught_up.wait_for(|v| *v));
    tokio::select! {
        () = shutdown.cancelled() => {}
        r = wait => if r.is_err() {
            tracing::warn!("consumer has not caught up yet; accepting connections anyway");
        }
    }

    let grace = config.shutdown_grace;
    let gw = state::Gateway::new(
        config,
        Arc::clone(&hub),
        Arc::new(publisher),
        shutdown.clone(),
        Arc::clone(&consumer.broker_up),
        handle,
    );
    {
        let gw = gw.clone();
        let mut caught_up = consumer.caught_up.clone();
        tokio::spawn(async move {
            if caught_up.wait_for(|v| *v).await.is_ok() {
                gw.ready.store(true, Ordering::Release);
            }
        });
    }
    if !gw.config.room_idle.is_zero() {
        tokio::spawn(sweep(hub, gw.config.room_idle, shutdown.clone()));
    }

    server::serve(gw.clone(), listener).await;

    // The same shutdown as every service: stop accepting, drain connections
    // within the grace period, flush what was produced, stop the consumer.
    tracing::info!("draining connections");
    confab_common::shutdown::drain(&gw.tracker, grace).await;
    let publisher = Arc::clone(&gw.publisher);
    let _ = tokio::task::spawn_blocking(move || publisher.flush(Duration::from_secs(5))).await;
    signals_stop.cancel();
    signals.stopped().await;
    kafka_stop.cancel();
    let _ = consumer.task.await;
    let _ = watcher.await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Pending connections the listener's accept queue holds (the kernel caps it
/// at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 1024;

/// Binds the gateway's listener on `addr`. With `reuse_port`
/// (`CONFAB_GATEWAY_REUSE_PORT`) the socket is bound with `SO_REUSEPORT`, so
/// several gateway processes on one machine can share the port and the
/// kernel spreads new connections over them; each process holds its own
/// connections (and its own open-file limit) and consumes every partition.
pub fn bind(addr: std::net::SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Drops idle rooms every minute, until `stop`.
async fn sweep(hub: Arc<hub::Hub>, idle: Duration, stop: CancellationToken) {
    let idle_ms = idle.as_millis() as i64;
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let dropped = hub.sweep(idle_ms);
        if dropped > 0 {
            tracing::debug!(dropped, "idle rooms dropped");
        }
        ::metrics::gauge!(metrics::ROOMS).set(hub.rooms() as f64);
        ::metrics::gauge!(metrics::WINDOW_BYTES).set(hub.window_bytes() as f64);
    }
}

#[cfg(test)]
mod bind_tests {
    use super::bind;

    #[tokio::test]
    async fn reuse_port_lets_listeners_share_a_port() {
        let first = bind("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind(addr, true).expect("a second SO_REUSEPORT listener on the same port");
        assert_eq!(second.local_addr().unwrap(), addr);
        // Connections reach one of them.
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = tokio::select! {
            r = first.accept() => r.unwrap().1,
            r = second.accept() => r.unwrap().1,
        };
        assert_eq!(accepted, client.local_addr().unwrap());
    }

    #[tokio::test]
    async fn without_reuse_port_the_port_is_taken() {
        let first = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = first.local_addr().unwrap();
        assert!(bind(addr, false).is_err());
        // Both must opt in.
        assert!(bind(addr, true).is_err());
    }
}
