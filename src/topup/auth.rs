//! Brute-force defences: a subject (wallet, funding account, card by serial) locks after N
//! wrong PINs in a row; every failure is also recorded against the caller's number, and too
//! many per caller per hour, or too many on the whole platform per minute, refuse further
//! attempts before any PIN is checked. In a call, each failure after a caller's first is also
//! answered more slowly (1 s, 2 s, 4 s ... by default), so a dialler guessing PINs gets few
//! tries per hour even across many calls, while a caller who mistypes once waits for nothing.
//! The policy is pure; recording is in the caller's transaction, committed even when the
//! attempt fails.

use std::time::Duration;

use sqlx::{AnyConnection, Row};

use super::TopupError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Wrong PINs in a row before a wallet, funding account or card locks.
    pub max_pin_failures: u32,
    /// Failed attempts per caller number per hour.
    pub ani_failures_per_hour: u32,
    /// Failed attempts on the whole platform per minute.
    pub global_failures_per_minute: u32,
    /// The pause in a call after a caller's second failure in an hour; it doubles with each
    /// further failure.
    pub failure_delay: Duration,
    /// The longest such pause.
    pub max_failure_delay: Duration,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy {
            max_pin_failures: 5,
            ani_failures_per_hour: 10,
            global_failures_per_minute: 300,
            failure_delay: Duration::from_secs(1),
            max_failure_delay: Duration::from_secs(30),
        }
    }
}

const HOUR_MS: i64 = 3_600_000;
const MINUTE_MS: i64 = 60_000;

/// Pure: may this caller try now, given recent failure counts?
pub fn velocity(
    ani_last_hour: i64,
    global_last_minute: i64,
    p: &AuthPolicy,
) -> Result<(), TopupError> {
    if ani_last_hour >= p.ani_failures_per_hour as i64
        || global_last_minute >= p.global_failures_per_minute as i64
    {
        return Err(TopupError::RateLimited);
    }
    Ok(())
}

/// Pure: how long a call waits before answering a failed (or refused) PIN attempt, given the
/// caller's failures in the last hour (counting this one): nothing for the first, then
/// `failure_delay` doubling up to `max_failure_delay`.
pub fn failure_delay(ani_failures_last_hour: i64, p: &AuthPolicy) -> Duration {
    if ani_failures_last_hour <= 1 {
        return Duration::ZERO;
    }
    let doublings = (ani_failures_last_hour - 2).min(30) as u32;
    p.failure_delay
        .saturating_mul(1u32 << doublings)
        .min(p.max_failure_delay)
}

/// Pure: after one more wrong PIN, is the subject locked?
pub fn locks_after(failed_before: i64, p: &AuthPolicy) -> bool {
    failed_before + 1 >= p.max_pin_failures as i64
}

/// Failed attempts by `ani` in the hour before `now`.
pub async fn ani_failures(
    conn: &mut AnyConnection,
    ani: &str,
    now: i64,
) -> Result<i64, TopupError> {
    Ok(sqlx::query(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM auth_failures WHERE ani = $1 AND at > $2",
    )
    .bind(ani)
    .bind(now - HOUR_MS)
    .fetch_one(&mut *conn)
    .await?
    .try_get("n")?)
}

impl super::Core {
    /// How long a call waits before answering a failed PIN attempt of `ani` (see
    /// [`failure_delay`]).
    pub async fn pin_failure_delay(&self, ani: &str, now: i64) -> Result<Duration, TopupError> {
        let mut conn = self.db.pool().acquire().await?;
        let n = ani_failures(&mut conn, ani, now).await?;
        Ok(failure_delay(n, &self.policy))
    }
}

/// Refuses a caller over the velocity limits.
pub async fn check_velocity(
    conn: &mut AnyConnection,
    ani: &str,
    now: i64,
    p: &AuthPolicy,
) -> Result<(), TopupError> {
    let ani_count = ani_failures(conn, ani, now).await?;
    let global: i64 =
        sqlx::query("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM auth_failures WHERE at > $1")
            .bind(now - MINUTE_MS)
            .fetch_one(&mut *conn)
            .await?
            .try_get("n")?;
    velocity(ani_count, global, p)
}

/// Records a failed attempt by `ani` against `subject` ("card", "wallet", "funding").
pub async fn record_failure(
    conn: &mut AnyConnection,
    ani: &str,
    subject: &str,
    now: i64,
) -> Result<(), TopupError> {
    sqlx::query("INSERT INTO auth_failures (id, ani, subject, at) VALUES ($1, $2, $3, $4)")
        .bind(hex::encode(rand::random::<[u8; 12]>()))
        .bind(ani)
        .bind(subject)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    // Old rows are no longer counted by any limit.
    sqlx::query("DELETE FROM auth_failures WHERE at < $1")
        .bind(now - 2 * HOUR_MS)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn velocity_limits_per_caller_and_platform() {
        let p = AuthPolicy::default();
        assert!(velocity(9, 299, &p).is_ok());
        assert!(matches!(velocity(10, 0, &p), Err(TopupError::RateLimited)));
        assert!(matches!(velocity(0, 300, &p), Err(TopupError::RateLimited)));
    }

    #[test]
    fn failures_are_answered_ever_more_slowly_up_to_the_cap() {
        let p = AuthPolicy::default();
        let secs: Vec<f64> = (0..=8)
            .map(|n| failure_delay(n, &p).as_secs_f64())
            .collect();
        assert_eq!(secs, [0.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]);
        assert_eq!(failure_delay(i64::MAX, &p), p.max_failure_delay);
        let off = AuthPolicy {
            failure_delay: Duration::ZERO,
            ..p
        };
        assert_eq!(failure_delay(9, &off), Duration::ZERO);
    }

    #[test]
    fn the_fifth_wrong_pin_locks() {
        let p = AuthPolicy::default();
        assert!(!locks_after(3, &p));
        assert!(locks_after(4, &p));
    }
}
