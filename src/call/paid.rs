//! The clock of a paid call (calling service): the wallet pays, so the call's cost is
//! reserved before dialling, the caller hears a warning before the money runs out, the call is
//! cut when it does, and the actual talk time is charged by the increment (`call::driver`).

use std::time::{Duration, Instant};

/// Prompt played before the money runs out.
pub const WARNING_PROMPT: &str = "one-minute-left";

/// The clock of a paid call, sans-IO: it may ring until a deadline; once answered it may last
/// the budget's `max`, and the caller is warned `warn_before` the end (when the call is long
/// enough for a warning to make sense). Shared by every edge that places calls.
#[derive(Debug)]
pub struct PaidCall {
    ring_deadline: Instant,
    max: Duration,
    warn_before: Duration,
    answered: Option<Instant>,
    warned: bool,
}

/// What the clock says must happen now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaidCallAction {
    /// Nobody answered in time: give up (nothing to pay).
    RingTimeout,
    /// Play [`WARNING_PROMPT`] to the caller.
    Warn,
    /// The money is used up: end the outbound leg.
    Cut,
}

impl PaidCall {
    pub fn new(now: Instant, ring_timeout: Duration, max: Duration, warn_before: Duration) -> Self {
        PaidCall {
            ring_deadline: now + ring_timeout,
            max,
            warn_before,
            answered: None,
            warned: false,
        }
    }

    pub fn handle_answer(&mut self, now: Instant) {
        self.answered.get_or_insert(now);
    }

    pub fn is_answered(&self) -> bool {
        self.answered.is_some()
    }

    /// Talk time so far (zero before the answer).
    pub fn talk(&self, now: Instant) -> Duration {
        self.answered
            .map(|a| now.saturating_duration_since(a))
            .unwrap_or_default()
    }

    fn warn_at(&self) -> Option<Instant> {
        let at = self.answered?;
        (!self.warned && self.max > self.warn_before).then(|| at + self.max - self.warn_before)
    }

    /// The next moment [`PaidCall::poll_action`] has something to say.
    pub fn poll_timeout(&self) -> Instant {
        match self.answered {
            None => self.ring_deadline,
            Some(at) => self.warn_at().unwrap_or(at + self.max),
        }
    }

    pub fn poll_action(&mut self, now: Instant) -> Option<PaidCallAction> {
        match self.answered {
            None => (now >= self.ring_deadline).then_some(PaidCallAction::RingTimeout),
            Some(at) => {
                if now >= at + self.max {
                    Some(PaidCallAction::Cut)
                } else if self.warn_at().is_some_and(|w| now >= w) {
                    self.warned = true;
                    Some(PaidCallAction::Warn)
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn an_unanswered_call_times_out_at_the_ring_deadline() {
        let t0 = Instant::now();
        let mut c = PaidCall::new(t0, 45 * S, 300 * S, 60 * S);
        assert_eq!(c.poll_timeout(), t0 + 45 * S);
        assert_eq!(c.poll_action(t0 + 44 * S), None);
        assert_eq!(
            c.poll_action(t0 + 45 * S),
            Some(PaidCallAction::RingTimeout)
        );
        assert_eq!(c.talk(t0 + 50 * S), Duration::ZERO);
    }

    #[test]
    fn an_answered_call_is_warned_once_then_cut_when_the_money_runs_out() {
        let t0 = Instant::now();
        let mut c = PaidCall::new(t0, 45 * S, 300 * S, 60 * S);
        c.handle_answer(t0 + 5 * S);
        // The ring deadline no longer matters.
        assert_eq!(c.poll_action(t0 + 50 * S), None);
        assert_eq!(c.poll_timeout(), t0 + 245 * S);
        assert_eq!(c.poll_action(t0 + 245 * S), Some(PaidCallAction::Warn));
        assert_eq!(c.poll_action(t0 + 246 * S), None, "warned once");
        assert_eq!(c.poll_timeout(), t0 + 305 * S);
        assert_eq!(c.poll_action(t0 + 305 * S), Some(PaidCallAction::Cut));
        assert_eq!(c.talk(t0 + 305 * S), 300 * S);
    }

    #[test]
    fn a_call_shorter_than_the_warning_is_not_warned() {
        let t0 = Instant::now();
        let mut c = PaidCall::new(t0, 45 * S, 30 * S, 60 * S);
        c.handle_answer(t0);
        assert_eq!(c.poll_timeout(), t0 + 30 * S);
        assert_eq!(c.poll_action(t0 + 29 * S), None);
        assert_eq!(c.poll_action(t0 + 30 * S), Some(PaidCallAction::Cut));
    }
}
