//! The wall clock, for what is stored and shown: rows, receipts, call records. The sans-IO
//! cores never read it (they take `now`, a monotonic `Instant`, see ARCHITECTURE.md); their
//! edges and the services around them call these.

/// Wall-clock milliseconds since the Unix epoch (the time the stores write).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Wall-clock time as RFC 3339 (UTC, milliseconds), as call records store it.
pub fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&fmt).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_utc_with_milliseconds_and_agree_with_now_ms() {
        let before = super::now_ms();
        let t = super::timestamp();
        let after = super::now_ms();
        assert_eq!(t.len(), "2026-12-07T10:00:00.000Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
        let parsed =
            time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                .unwrap();
        let ms = (parsed.unix_timestamp_nanos() / 1_000_000) as i64;
        assert!(
            before - 1 <= ms && ms <= after,
            "{before} <= {ms} <= {after}"
        );
    }
}
