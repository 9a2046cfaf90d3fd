//! The library every Confab binary shares.
//!
//! It owns what must be the same everywhere: typed configuration from the
//! environment ([`config`]), the versioned Kafka records ([`record`]), stream
//! positions ([`position`]) and the topic layout that gives them
//! ([`stream`]), the one room-record producer ([`producer`]), JWT issuing and
//! checking ([`jwt`]), Postgres pools and migrations ([`db`], feature `db`,
//! which the gateway leaves off), Kafka client
//! settings ([`kafka`]), logs and metrics ([`telemetry`]), health and metrics
//! endpoints ([`ops`]) and graceful shutdown ([`shutdown`]).

pub mod clock;
pub mod config;
#[cfg(feature = "db")]
pub mod db;
pub mod jwt;
pub mod kafka;
pub mod ops;
pub mod position;
pub mod producer;
pub mod ratelimit;
pub mod record;
pub mod shutdown;
pub mod stream;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;

/// The channel name of a room, `room:<id>`.
pub fn room_channel(room_id: uuid::Uuid) -> String {
    format!("room:{room_id}")
}

/// The room id in a channel name, if it is a room channel.
pub fn parse_room_channel(channel: &str) -> Option<uuid::Uuid> {
    channel.strip_prefix("room:")?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn room_channels_round_trip() {
        let id = uuid::Uuid::new_v4();
        assert_eq!(
            super::parse_room_channel(&super::room_channel(id)),
            Some(id)
        );
        assert_eq!(super::parse_room_channel("room:nope"), None);
        assert_eq!(super::parse_room_channel(&format!("chat:{id}")), None);
    }
}
