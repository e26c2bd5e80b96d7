//! Per-source admission for the built-in SIP edge (sans-IO): one source address must not take
//! every call slot, nor make us write a call record per INVITE.
//!
//! Each source host (IP) gets a token bucket of INVITEs (`sip.per_source_rate` a second, twice
//! that in a burst) and may hold at most `sip.per_source_calls` calls at once; beyond either an
//! INVITE is refused `503` with `Retry-After` and nothing is written. A refused call's record
//! (unknown number) is written for the first [`RECORDS_PER_MINUTE`] of a source each minute;
//! the rest are counted only. Sources in `sip.trusted_sources` (the SBC or proxy every call
//! comes through) are held to the service's capacity alone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Records of refused calls written per source and minute.
pub const RECORDS_PER_MINUTE: u32 = 10;
/// Sources remembered at most; idle ones are forgotten first.
const MAX_SOURCES: usize = 10_000;

#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// INVITEs a second (the bucket holds twice that).
    pub rate: f64,
    /// Calls at once.
    pub calls: usize,
    pub trusted: Vec<IpAddr>,
}

/// Why an INVITE was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Over the source's INVITE rate.
    TooFast,
    /// The source holds its share of calls.
    TooMany,
}

#[derive(Debug)]
struct Source {
    tokens: f64,
    updated: Instant,
    /// Calls of this source in progress (decremented by their [`Slot`]).
    active: Arc<AtomicUsize>,
    /// Refused-call records written in the current minute, and when it began.
    records: (u32, Instant),
}

/// A call's hold on its source's share: dropped when the call ends.
#[derive(Debug)]
pub struct Slot(Option<Arc<AtomicUsize>>);

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(a) = &self.0 {
            a.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug)]
pub struct SourceGuard {
    limits: Limits,
    sources: HashMap<IpAddr, Source>,
}

impl SourceGuard {
    pub fn new(limits: Limits) -> SourceGuard {
        SourceGuard {
            limits,
            sources: HashMap::new(),
        }
    }

    fn source(&mut self, now: Instant, ip: IpAddr) -> &mut Source {
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&ip) {
            // Forget sources with no call that have been quiet a minute: their bucket is full
            // again and their record count past.
            self.sources.retain(|_, s| {
                s.active.load(Ordering::Relaxed) > 0
                    || now.saturating_duration_since(s.updated) < Duration::from_secs(60)
            });
            if self.sources.len() >= MAX_SOURCES {
                // Still full (a spoofed flood from many addresses): the idlest go.
                let mut idle: Vec<(IpAddr, Instant)> = self
                    .sources
                    .iter()
                    .filter(|(_, s)| s.active.load(Ordering::Relaxed) == 0)
                    .map(|(ip, s)| (*ip, s.updated))
                    .collect();
                idle.sort_by_key(|(_, t)| *t);
                for (ip, _) in idle.into_iter().take(MAX_SOURCES / 10) {
                    self.sources.remove(&ip);
                }
            }
        }
        let burst = self.limits.rate * 2.0;
        self.sources.entry(ip).or_insert_with(|| Source {
            tokens: burst,
            updated: now,
            active: Arc::new(AtomicUsize::new(0)),
            records: (0, now),
        })
    }

    /// Whether an INVITE from `ip` may go on to admission (it uses one of the source's
    /// tokens).
    pub fn handle_invite(&mut self, now: Instant, ip: IpAddr) -> Result<(), Refused> {
        if self.limits.trusted.contains(&ip) {
            return Ok(());
        }
        let (rate, calls) = (self.limits.rate, self.limits.calls);
        let s = self.source(now, ip);
        let elapsed = now.saturating_duration_since(s.updated).as_secs_f64();
        s.tokens = (s.tokens + elapsed * rate).min(rate * 2.0);
        s.updated = now;
        if s.tokens < 1.0 {
            return Err(Refused::TooFast);
        }
        s.tokens -= 1.0;
        if s.active.load(Ordering::Relaxed) >= calls {
            return Err(Refused::TooMany);
        }
        Ok(())
    }

    /// A call from `ip` was admitted: it holds the returned slot until it ends.
    pub fn handle_call_started(&mut self, now: Instant, ip: IpAddr) -> Slot {
        if self.limits.trusted.contains(&ip) {
            return Slot(None);
        }
        let s = self.source(now, ip);
        s.active.fetch_add(1, Ordering::Relaxed);
        Slot(Some(s.active.clone()))
    }

    /// Whether a refused call from `ip` gets its call record (see [`RECORDS_PER_MINUTE`]).
    pub fn poll_record(&mut self, now: Instant, ip: IpAddr) -> bool {
        if self.limits.trusted.contains(&ip) {
            return true;
        }
        let s = self.source(now, ip);
        if now.saturating_duration_since(s.records.1) >= Duration::from_secs(60) {
            s.records = (0, now);
        }
        s.records.0 += 1;
        s.records.0 <= RECORDS_PER_MINUTE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn guard() -> SourceGuard {
        SourceGuard::new(Limits {
            rate: 5.0,
            calls: 3,
            trusted: vec![ip("10.0.0.1")],
        })
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let t = Instant::now();
        let mut g = guard();
        for _ in 0..10 {
            assert_eq!(g.handle_invite(t, ip("198.51.100.1")), Ok(()));
        }
        assert_eq!(
            g.handle_invite(t, ip("198.51.100.1")),
            Err(Refused::TooFast)
        );
        // Another source is not held up by it.
        assert_eq!(g.handle_invite(t, ip("198.51.100.2")), Ok(()));
        // 5 a second come back.
        let later = t + Duration::from_millis(400);
        assert_eq!(g.handle_invite(later, ip("198.51.100.1")), Ok(()));
        assert_eq!(g.handle_invite(later, ip("198.51.100.1")), Ok(()));
        assert_eq!(
            g.handle_invite(later, ip("198.51.100.1")),
            Err(Refused::TooFast)
        );
    }

    #[test]
    fn a_source_holds_its_share_of_calls_until_they_end() {
        let t = Instant::now();
        let mut g = guard();
        let a = ip("198.51.100.1");
        let slots: Vec<Slot> = (0..3)
            .map(|_| {
                g.handle_invite(t, a).unwrap();
                g.handle_call_started(t, a)
            })
            .collect();
        assert_eq!(g.handle_invite(t, a), Err(Refused::TooMany));
        drop(slots);
        assert_eq!(g.handle_invite(t, a), Ok(()));
    }

    #[test]
    fn trusted_sources_are_held_to_capacity_alone() {
        let t = Instant::now();
        let mut g = guard();
        let proxy = ip("10.0.0.1");
        let _slots: Vec<Slot> = (0..100)
            .map(|_| {
                g.handle_invite(t, proxy).unwrap();
                g.handle_call_started(t, proxy)
            })
            .collect();
        assert_eq!(g.handle_invite(t, proxy), Ok(()));
        assert!((0..100).all(|_| g.poll_record(t, proxy)));
    }

    #[test]
    fn refused_calls_are_recorded_ten_a_minute_per_source() {
        let t = Instant::now();
        let mut g = guard();
        let a = ip("198.51.100.1");
        let written = (0..2000).filter(|_| g.poll_record(t, a)).count();
        assert_eq!(written, RECORDS_PER_MINUTE as usize);
        assert!(g.poll_record(t + Duration::from_secs(60), a));
    }
}
