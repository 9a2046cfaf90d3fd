//! The wall clock, read the same way everywhere.

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Unix time in seconds.
pub fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Unix time in microseconds.
pub fn now_us() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_clock_three_units() {
        let (s, ms, us) = (super::now_secs(), super::now_ms(), super::now_us());
        assert!((ms / 1000 - s).abs() <= 1);
        assert!((us as i64 / 1000 - ms).abs() <= 1000);
    }
}
