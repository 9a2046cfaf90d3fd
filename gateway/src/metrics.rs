//! Metric names and their descriptions (`/metrics` must pass `promtool`).

pub(crate) const CONNECTIONS: &str = "confab_gateway_connections";
pub(crate) const SUBSCRIPTIONS: &str = "confab_gateway_subscriptions";
pub(crate) const MESSAGES_PUBLISHED: &str = "confab_gateway_messages_published_total";
pub(crate) const PUBLISH_FAILURES: &str = "confab_gateway_publish_failures_total";
pub(crate) const MESSAGES_DELIVERED: &str = "confab_gateway_messages_delivered_total";
pub(crate) const PUBLISH_TO_DELIVER: &str = "confab_gateway_publish_to_deliver_seconds";
pub(crate) const KAFKA_PRODUCE: &str = "confab_gateway_kafka_produce_seconds";
pub(crate) const SEND_QUEUE_DROPS: &str = "confab_gateway_send_queue_drops_total";
pub(crate) const SLOW_CONSUMER_DISCONNECTS: &str = "confab_gateway_slow_consumer_disconnects_total";
pub(crate) const CONSUMER_LAG: &str = "confab_gateway_consumer_lag";
pub(crate) const RECORDS_CONSUMED: &str = "confab_gateway_records_consumed_total";
pub(crate) const BAD_RECORDS: &str = "confab_gateway_bad_records_total";
pub(crate) const ROOMS: &str = "confab_gateway_rooms";
pub(crate) const REJECTED_CONNECTIONS: &str = "confab_gateway_rejected_connections_total";
pub(crate) const INCARNATION_CHANGES: &str = "confab_gateway_incarnation_changes_total";
pub(crate) const COSTLY_REFUSED: &str = "confab_gateway_costly_commands_refused_total";
pub(crate) const PRESENCE_DROPPED: &str = "confab_gateway_presence_records_dropped_total";
pub(crate) const WINDOW_BYTES: &str = "confab_gateway_window_bytes";
pub(crate) const REMOTE_GATEWAYS: &str = "confab_gateway_remote_gateways";

/// Registers HELP text for every gateway metric and makes the gauges and
/// counters visible before their first change.
pub(crate) fn describe() {
    describe_only();
    for g in [
        CONNECTIONS,
        SUBSCRIPTIONS,
        CONSUMER_LAG,
        ROOMS,
        WINDOW_BYTES,
        REMOTE_GATEWAYS,
    ] {
        metrics::gauge!(g).increment(0.0);
    }
    for c in [
        MESSAGES_PUBLISHED,
        PUBLISH_FAILURES,
        MESSAGES_DELIVERED,
        SEND_QUEUE_DROPS,
        SLOW_CONSUMER_DISCONNECTS,
        RECORDS_CONSUMED,
        BAD_RECORDS,
        INCARNATION_CHANGES,
        PRESENCE_DROPPED,
    ] {
        metrics::counter!(c).increment(0);
    }
}

fn describe_only() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        COSTLY_REFUSED,
        "Subscribe, history and presence commands refused by the per-message or per-second limits."
    );
    describe_counter!(
        PRESENCE_DROPPED,
        "Presence and typing records this instance could not queue for the presence topic."
    );
    describe_gauge!(
        WINDOW_BYTES,
        Unit::Bytes,
        "Publication bytes held in recovery windows."
    );
    describe_gauge!(
        REMOTE_GATEWAYS,
        "Other gateway instances heard from on the presence topic."
    );
    describe_gauge!(
        CONNECTIONS,
        "Open WebSocket connections that completed connect."
    );
    describe_gauge!(
        SUBSCRIPTIONS,
        "Active channel subscriptions on this instance."
    );
    describe_counter!(
        MESSAGES_PUBLISHED,
        "Publications acknowledged by the broker and answered with success."
    );
    describe_counter!(
        PUBLISH_FAILURES,
        "Publications the broker did not acknowledge (answered with an error)."
    );
    describe_counter!(
        MESSAGES_DELIVERED,
        "Publication pushes handed to subscribers' send queues."
    );
    describe_histogram!(
        PUBLISH_TO_DELIVER,
        Unit::Seconds,
        "Time from record creation to fan-out on this instance."
    );
    describe_histogram!(
        KAFKA_PRODUCE,
        Unit::Seconds,
        "Time from enqueueing a publication to its broker delivery report."
    );
    describe_counter!(
        SEND_QUEUE_DROPS,
        "Pushes dropped because a subscriber's send queue was full."
    );
    describe_counter!(
        SLOW_CONSUMER_DISCONNECTS,
        "Connections closed because their send queue was full."
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Records between this instance's consumer position and the partitions' high watermarks."
    );
    describe_gauge!(ROOMS, "Rooms held in memory (windows and subscriber sets).");
    describe_counter!(RECORDS_CONSUMED, "Records read from the room topic.");
    describe_counter!(
        BAD_RECORDS,
        "Records that could not be decoded and were skipped."
    );
    describe_counter!(
        INCARNATION_CHANGES,
        "Partitions started over because their incarnation changed (the topic was created again)."
    );
    describe_counter!(
        REJECTED_CONNECTIONS,
        "Upgrade requests refused (connection cap or origin)."
    );
}
