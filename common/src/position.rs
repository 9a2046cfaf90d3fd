//! Stream positions: the one place where Kafka offsets become the offsets
//! clients, the recovery window and REST history see.
//!
//! Two number spaces exist and each has its type:
//!
//! - [`KafkaOffset`]: where the broker put a record in its partition. It
//!   starts again at 0 whenever the topic is created again, on a new cluster
//!   or in a new partition, so it is never shown to anyone.
//! - [`Position`]: a record's place in its room's stream, the `offset` of a
//!   publication, of `history` and of `Message.offset`, stored as
//!   `messages.stream_offset`. It never repeats and never goes down for the
//!   life of a deployment.
//!
//! A partition's log has incarnations: each begins with a genesis record
//! (see [`crate::stream`]) that fixes the incarnation's [`Base`]. A record at
//! Kafka offset `o` of an incarnation with base `b` has position `b + o + 1`.
//! The base of a new incarnation is chosen above every position used before
//! (the wall clock in microseconds, and never below a position already
//! known), so positions keep rising across topic re-creation, cluster moves
//! and new partitions. The `+ 1` keeps position 0 free: both SDKs read
//! offset 0 as "no position".
//!
//! The epoch clients get with a position names the incarnation, so a client
//! holding a position from an older incarnation is told `recovered: false`
//! instead of being served the wrong publications.

use std::fmt;

/// An offset in a Kafka partition, as the broker numbers records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KafkaOffset(pub i64);

/// A position in a room's stream (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position(pub u64);

impl Position {
    /// No position: what a client holds before it has seen anything.
    pub const ZERO: Self = Self(0);

    /// The position as PostgreSQL stores it (`bigint`). Positions stay far
    /// below `i64::MAX` (and below 2^53, so JavaScript reads them exactly).
    pub fn to_db(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// A stored position; negative values (never written) read as zero.
    pub fn from_db(value: i64) -> Self {
        Self(u64::try_from(value).unwrap_or(0))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The base of one partition incarnation: the position just before its
/// Kafka offset 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Base(pub u64);

/// The largest base handed out, kept well below 2^53 so that positions stay
/// exact in JavaScript (about the year 2255 in microseconds).
pub const MAX_BASE: u64 = 1 << 52;
const _: () = assert!(
    MAX_BASE < (1u64 << 53),
    "positions must stay exact in JavaScript"
);

impl Base {
    /// A base for a new incarnation: the wall clock in microseconds, but
    /// above `at_least` (a position known to be taken).
    pub fn fresh(now_us: u64, at_least: Position) -> Self {
        Self(now_us.max(at_least.0.saturating_add(1)).min(MAX_BASE))
    }

    /// The position of the record at `offset` of this incarnation.
    pub fn position(self, offset: KafkaOffset) -> Position {
        Position(
            self.0
                .saturating_add(u64::try_from(offset.0).unwrap_or(0))
                .saturating_add(1),
        )
    }

    /// The position just before the record at `offset`: where a reader that
    /// starts at `offset` stands (the floor for `offset` 0).
    pub fn before(self, offset: KafkaOffset) -> Position {
        Position(self.0.saturating_add(u64::try_from(offset.0).unwrap_or(0)))
    }

    /// The Kafka offset of `position` in this incarnation, if the position
    /// belongs to it (it may also be a position of an older incarnation).
    pub fn offset(self, position: Position) -> Option<KafkaOffset> {
        let rel = position.0.checked_sub(self.0)?.checked_sub(1)?;
        i64::try_from(rel).ok().map(KafkaOffset)
    }

    /// The position just before the first record of this incarnation:
    /// positions at or below it belong to older incarnations.
    pub fn floor(self) -> Position {
        Position(self.0)
    }

    /// The epoch clients see for this incarnation.
    pub fn epoch(self) -> String {
        format!("{:x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_one_incarnation() {
        let b = Base(1_000);
        assert_eq!(b.position(KafkaOffset(0)), Position(1_001));
        assert_eq!(b.offset(Position(1_001)), Some(KafkaOffset(0)));
        assert_eq!(b.offset(Position(1_000)), None, "the floor is not a record");
        assert_eq!(b.offset(Position(3)), None, "an older incarnation");
        assert_eq!(b.floor(), Position(1_000));
        assert_eq!(b.before(KafkaOffset(0)), b.floor());
        assert_eq!(b.before(KafkaOffset(5)), Position(1_005));
        assert_eq!(b.position(KafkaOffset(4)), b.before(KafkaOffset(5)));
        for o in [0, 1, 17, 1 << 40] {
            assert_eq!(b.offset(b.position(KafkaOffset(o))), Some(KafkaOffset(o)));
        }
    }

    #[test]
    fn a_fresh_base_is_above_what_is_known_and_exact_in_javascript() {
        let now = crate::clock::now_us();
        assert!(now > 1_700_000_000_000_000, "microseconds since 1970");
        assert_eq!(Base::fresh(now, Position(5)), Base(now));
        assert_eq!(Base::fresh(10, Position(99)), Base(100));
        assert!(Base::fresh(u64::MAX, Position::ZERO).0 <= MAX_BASE);
        // A later incarnation starts above every position of an earlier one
        // that held fewer records than microseconds passed.
        let old = Base::fresh(now, Position::ZERO);
        let last_old = old.position(KafkaOffset(1_000));
        let new = Base::fresh(now + 1_000_000, last_old);
        assert!(new.position(KafkaOffset(0)) > last_old);
    }

    #[test]
    fn epochs_name_incarnations() {
        assert_eq!(Base(255).epoch(), "ff");
        assert_ne!(Base(1).epoch(), Base(2).epoch());
    }

    #[test]
    fn db_round_trip() {
        assert_eq!(Position::from_db(Position(42).to_db()), Position(42));
        assert_eq!(Position::from_db(-1), Position::ZERO);
    }
}
