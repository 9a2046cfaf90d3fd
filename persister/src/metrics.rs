//! The persister's metric names, each described once so `/metrics` has HELP
//! lines for all of them.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, Unit};

/// Records per stored batch, good and poison.
pub(crate) const BATCH_SIZE: &str = "confab_persister_batch_size";
/// Time to store one batch (the statement and its commit).
pub(crate) const INSERT_SECONDS: &str = "confab_persister_insert_duration_seconds";
/// Records stored as messages, including ones already present.
pub(crate) const PERSISTED: &str = "confab_persister_records_persisted_total";
/// Records that were already stored (read again after a crash or rebalance).
pub(crate) const DUPLICATES: &str = "confab_persister_duplicate_records_total";
/// Records that could not be read and went to `dead_letters`.
pub(crate) const POISON: &str = "confab_persister_poison_records_total";
/// Per partition: the high watermark minus the group's committed offset.
pub(crate) const LAG: &str = "confab_persister_consumer_lag";
/// Errors, by kind.
pub(crate) const ERRORS: &str = "confab_persister_errors_total";
/// From the producer's timestamp to the row being committed.
pub(crate) const PUBLISH_TO_PERSIST: &str = "confab_persister_publish_to_persist_seconds";
/// 1 while the database answers.
pub(crate) const DATABASE_UP: &str = "confab_persister_database_up";
/// 1 while consumption is paused because writes fall behind.
pub(crate) const PAUSED: &str = "confab_persister_paused";
/// Partitions read again because their incarnation changed.
pub(crate) const INCARNATION_CHANGES: &str = "confab_persister_incarnation_changes_total";
/// Offset commits sent to the broker.
pub(crate) const COMMITS: &str = "confab_persister_offset_commits_total";

/// Error kinds for [`ERRORS`].
pub(crate) mod kind {
    /// A batch write or health ping failed.
    pub(crate) const DATABASE: &str = "database";
    /// `recv()` returned an error (broker down, and so on).
    pub(crate) const KAFKA_RECEIVE: &str = "kafka_receive";
    /// An offset commit failed.
    pub(crate) const KAFKA_COMMIT: &str = "kafka_commit";
    /// librdkafka reported a client-level error.
    pub(crate) const KAFKA_CLIENT: &str = "kafka_client";
    /// Measuring consumer lag failed.
    pub(crate) const LAG: &str = "lag";
    /// Pausing or resuming partitions failed.
    pub(crate) const PAUSE: &str = "pause";
    /// Seeking a partition to its start failed.
    pub(crate) const SEEK: &str = "seek";

    pub(crate) const ALL: [&str; 7] = [
        DATABASE,
        KAFKA_RECEIVE,
        KAFKA_COMMIT,
        KAFKA_CLIENT,
        LAG,
        PAUSE,
        SEEK,
    ];
}

/// Describes every metric and sets the counters to zero, so that they are
/// exported before the first event. Safe to call more than once.
pub(crate) fn describe() {
    for name in [PERSISTED, DUPLICATES, POISON, COMMITS, INCARNATION_CHANGES] {
        counter!(name).increment(0);
    }
    for k in kind::ALL {
        counter!(ERRORS, "kind" => k).increment(0);
    }
    describe_histogram!(BATCH_SIZE, Unit::Count, "Records per stored batch");
    describe_histogram!(
        INSERT_SECONDS,
        Unit::Seconds,
        "Time to store one batch in PostgreSQL"
    );
    describe_counter!(
        PERSISTED,
        Unit::Count,
        "Records stored as messages, including records already present"
    );
    describe_counter!(
        DUPLICATES,
        Unit::Count,
        "Records read again that were already stored"
    );
    describe_counter!(
        POISON,
        Unit::Count,
        "Records that could not be read and went to dead_letters"
    );
    describe_gauge!(
        LAG,
        Unit::Count,
        "High watermark minus committed offset, per partition"
    );
    describe_counter!(ERRORS, Unit::Count, "Errors by kind");
    describe_histogram!(
        PUBLISH_TO_PERSIST,
        Unit::Seconds,
        "Time from the producer's timestamp to the row being committed"
    );
    describe_gauge!(DATABASE_UP, "1 while PostgreSQL answers");
    describe_gauge!(
        PAUSED,
        "1 while consumption is paused because writes fall behind"
    );
    describe_counter!(COMMITS, Unit::Count, "Offset commits sent to the broker");
    describe_counter!(
        INCARNATION_CHANGES,
        Unit::Count,
        "Partitions read again because their incarnation changed (the topic was created again)"
    );
}
