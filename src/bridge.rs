//! The calling service's media bridge (B2BUA): the caller's leg stays with us; we place a
//! second call to the outbound gateway and relay RTP between the two. The wallet pays: the
//! call's cost is reserved before dialling, the caller hears a warning before the money runs
//! out, the call is cut when it does, and the actual talk time is charged by the increment.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::call::CallSession;
use crate::media::peer::{RtpPeer, Verdict};
use crate::server::Shared;
use crate::services::OpResult;
use crate::telephony::sip::endpoint::{CallHandle, EndReason, SipEvent};
use crate::telephony::sip::sdp::{self, Direction, Negotiated};
use crate::telephony::sip::transport::SipCommand;
use crate::topup::books::now_ms;

/// The caller's side, lent by the call driver for the length of the bridge.
pub struct CallerLeg<'a> {
    pub session: &'a mut CallSession,
    pub socket: &'a UdpSocket,
    /// Where the caller's media comes from and ours goes.
    pub peer: &'a mut RtpPeer,
    pub last_rtp: &'a mut Instant,
    pub events: &'a mut mpsc::Receiver<SipEvent>,
    pub events_tx: mpsc::Sender<SipEvent>,
    pub commands: mpsc::Sender<SipCommand>,
    pub call: CallHandle,
    /// The caller's number (pays from their wallet).
    pub caller: &'a str,
    /// Unique per call attempt (billing ids).
    pub id: String,
}

/// How a bridge ended.
pub enum BridgeEnd {
    /// Back to the dialplan with this result.
    Result(OpResult),
    /// The caller hung up during the call.
    CallerGone(EndReason),
}

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

    /// The next moment [`PaidCall::poll`] has something to say.
    pub fn poll_timeout(&self) -> Instant {
        match self.answered {
            None => self.ring_deadline,
            Some(at) => self.warn_at().unwrap_or(at + self.max),
        }
    }

    pub fn poll(&mut self, now: Instant) -> Option<PaidCallAction> {
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

/// Places a call to `number` and relays it until one side ends it or the money runs out.
pub async fn call(shared: &Shared, leg: CallerLeg<'_>, number: &str) -> BridgeEnd {
    let cfg = &shared.cfg;
    let Some(gateway) = cfg.calling_gateway else {
        return BridgeEnd::Result(("unavailable".into(), vec![]));
    };
    let e164 = match crate::topup::numbers::parse_callable(number) {
        Ok(n) => n.e164,
        Err(_) => return BridgeEnd::Result(("invalid_number".into(), vec![])),
    };
    let budget = match shared
        .core
        .reserve_call(&leg.id, leg.caller, &e164, cfg.max_call_duration, now_ms())
        .await
    {
        Ok(b) => b,
        Err(e) => return BridgeEnd::Result((e.code().into(), vec![])),
    };
    let settle = |talk: Duration| async move {
        match shared
            .core
            .settle_call(&leg.id.clone(), leg.caller, &budget, talk, now_ms())
            .await
        {
            Ok(cost) => cost.to_string(),
            Err(e) => {
                // The reservation stays pending: nothing is lost, staff can settle it.
                warn!(error = %e, "call not settled");
                String::new()
            }
        }
    };
    let out_socket = match shared.ports.bind(cfg.advertise).await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "no RTP port for the outbound leg");
            settle(Duration::ZERO).await;
            return BridgeEnd::Result(("failed".into(), vec![]));
        }
    };
    let media = leg.session.media();
    let offer = Negotiated {
        remote_addr: cfg.advertise,
        remote_port: 0,
        codec: media.codec,
        // Offer the caller's event payload type, so events relay unchanged.
        telephone_event: Some(media.telephone_event.unwrap_or(101)),
        direction: Direction::SendRecv,
    };
    let port = out_socket.local_addr().map(|a| a.port()).unwrap_or(0);
    let sdp = sdp::write_answer(&offer, cfg.advertise, port, rand::random::<u32>() as u64, 1);
    let (reply, handle) = oneshot::channel();
    let _ = leg
        .commands
        .send(SipCommand::Invite {
            peer: gateway,
            uri: format!("sip:{e164}@{gateway}"),
            from: leg.caller.to_string(),
            sdp,
            events: leg.events_tx.clone(),
            reply,
        })
        .await;
    let Ok(out) = handle.await else {
        settle(Duration::ZERO).await;
        return BridgeEnd::Result(("failed".into(), vec![]));
    };
    info!(to = %crate::redact::Phone(&e164), max_secs = budget.max.as_secs(), "placing call");

    let mut clock = PaidCall::new(
        Instant::now(),
        cfg.calling_ring_timeout,
        budget.max,
        cfg.calling_warning_before,
    );
    let mut out_remote: Option<SocketAddr> = None;
    let mut buf = vec![0u8; 2048];
    let mut out_buf = vec![0u8; 2048];
    let session = leg.session;

    let finish = |code: &str, talk: Duration, cost: String, session: &mut CallSession| {
        session.set_bridged(false);
        let vars = vec![
            ("call_secs".to_string(), talk.as_secs().to_string()),
            ("call_cost".to_string(), cost),
        ];
        BridgeEnd::Result((code.to_string(), vars))
    };

    loop {
        let now = Instant::now();
        while let Some(pkt) = session.poll_transmit(now) {
            if let Some(to) = leg.peer.send_to(now) {
                let _ = leg.socket.send_to(&pkt, to).await;
            }
        }
        match clock.poll(now) {
            Some(PaidCallAction::RingTimeout) => {
                debug!("no answer");
                let _ = leg.commands.send(SipCommand::Hangup(out)).await;
                settle(Duration::ZERO).await;
                return finish("no_answer", Duration::ZERO, String::new(), session);
            }
            Some(PaidCallAction::Cut) => {
                info!("balance used up: cutting the call");
                let _ = leg.commands.send(SipCommand::Hangup(out)).await;
                let talk = clock.talk(now);
                let cost = settle(talk).await;
                return finish("cut", talk, cost, session);
            }
            Some(PaidCallAction::Warn) => {
                info!("warning the caller: the money runs out soon");
                session.announce(&[WARNING_PROMPT]);
            }
            None => {}
        }
        let wake =
            crate::call::next_wake(now, [session.poll_timeout(), Some(clock.poll_timeout())]);
        tokio::select! {
            ev = leg.events.recv() => {
                let now = Instant::now();
                match ev {
                    Some(SipEvent::Outbound { call, code, sdp }) if call == out => match (code, sdp) {
                        (200..=299, Some(answer)) => match sdp::negotiate(&answer, &[media.codec]) {
                            Ok(n) => {
                                info!("call answered");
                                out_remote = Some(SocketAddr::new(n.remote_addr, n.remote_port));
                                clock.handle_answer(now);
                                session.set_bridged(true);
                            }
                            Err(e) => {
                                warn!(error = %e, "unusable answer from the gateway");
                                let _ = leg.commands.send(SipCommand::Hangup(out)).await;
                                settle(Duration::ZERO).await;
                                return finish("failed", Duration::ZERO, String::new(), session);
                            }
                        },
                        (100..=199, _) => debug!(code, "ringing"),
                        (486 | 600 | 603, _) => {
                            settle(Duration::ZERO).await;
                            return finish("busy", Duration::ZERO, String::new(), session);
                        }
                        (408 | 480 | 487, _) => {
                            settle(Duration::ZERO).await;
                            return finish("no_answer", Duration::ZERO, String::new(), session);
                        }
                        _ => {
                            settle(Duration::ZERO).await;
                            return finish("failed", Duration::ZERO, String::new(), session);
                        }
                    },
                    Some(SipEvent::Ended { call, .. }) if call == out => {
                        let talk = clock.talk(now);
                        let cost = settle(talk).await;
                        return finish("ok", talk, cost, session);
                    }
                    Some(SipEvent::Ended { call, reason }) if call == leg.call => {
                        let _ = leg.commands.send(SipCommand::Hangup(out)).await;
                        settle(clock.talk(now)).await;
                        session.set_bridged(false);
                        return BridgeEnd::CallerGone(reason);
                    }
                    Some(SipEvent::Reoffer { call, .. }) => {
                        // Mid-call renegotiation is not relayed; both legs keep their media.
                        let _ = leg.commands.send(SipCommand::AnswerReoffer(call, Err(488))).await;
                    }
                    Some(_) => {}
                    None => {
                        let _ = leg.commands.send(SipCommand::Hangup(out)).await;
                        settle(clock.talk(now)).await;
                        return BridgeEnd::CallerGone(EndReason::RemoteBye);
                    }
                }
            }
            r = leg.socket.recv_from(&mut buf) => {
                let now = Instant::now();
                if let Ok((n, from)) = r
                    && leg.peer.handle_packet(now, from, &buf[..n]) == Verdict::Accept
                {
                    *leg.last_rtp = now;
                    if let Some(to) = out_remote {
                        let _ = out_socket.send_to(&buf[..n], to).await;
                    }
                }
            }
            r = out_socket.recv_from(&mut out_buf) => {
                if let Ok((n, from)) = r
                    && out_remote.is_some_and(|o| o.ip() == from.ip())
                    && !session.is_announcing()
                {
                    out_remote = Some(from);
                    if let Some(to) = leg.peer.send_to(Instant::now()) {
                        let _ = leg.socket.send_to(&out_buf[..n], to).await;
                    }
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                session.handle_timeout(Instant::now());
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
        assert_eq!(c.poll(t0 + 44 * S), None);
        assert_eq!(c.poll(t0 + 45 * S), Some(PaidCallAction::RingTimeout));
        assert_eq!(c.talk(t0 + 50 * S), Duration::ZERO);
    }

    #[test]
    fn an_answered_call_is_warned_once_then_cut_when_the_money_runs_out() {
        let t0 = Instant::now();
        let mut c = PaidCall::new(t0, 45 * S, 300 * S, 60 * S);
        c.handle_answer(t0 + 5 * S);
        // The ring deadline no longer matters.
        assert_eq!(c.poll(t0 + 50 * S), None);
        assert_eq!(c.poll_timeout(), t0 + 245 * S);
        assert_eq!(c.poll(t0 + 245 * S), Some(PaidCallAction::Warn));
        assert_eq!(c.poll(t0 + 246 * S), None, "warned once");
        assert_eq!(c.poll_timeout(), t0 + 305 * S);
        assert_eq!(c.poll(t0 + 305 * S), Some(PaidCallAction::Cut));
        assert_eq!(c.talk(t0 + 305 * S), 300 * S);
    }

    #[test]
    fn a_call_shorter_than_the_warning_is_not_warned() {
        let t0 = Instant::now();
        let mut c = PaidCall::new(t0, 45 * S, 30 * S, 60 * S);
        c.handle_answer(t0);
        assert_eq!(c.poll_timeout(), t0 + 30 * S);
        assert_eq!(c.poll(t0 + 29 * S), None);
        assert_eq!(c.poll(t0 + 30 * S), Some(PaidCallAction::Cut));
    }
}
