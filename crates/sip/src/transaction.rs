//! SIP transactions over UDP (RFC 3261 §17, with RFC 6026's Accepted state), sans-IO.
//!
//! Each machine is told the time and what arrived, returns what to (re)send, and exposes its
//! next deadline; the endpoint owns the clock and the socket. Timers carry their RFC names.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// RFC 3261 timer base values (§17.1.1.1, table 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TsxConfig {
    /// RTT estimate: first retransmit interval.
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE responses.
    pub t2: Duration,
    /// Longest time a message stays in the network.
    pub t4: Duration,
}

impl Default for TsxConfig {
    fn default() -> Self {
        TsxConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TsxConfig {
    /// 64·T1: Timers B, F, H, J, L and M.
    pub fn timeout(&self) -> Duration {
        self.t1 * 64
    }
}

/// The timers of RFC 3261 §17 (and L from RFC 6026) a UAS runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// Non-INVITE client: retransmit the request.
    E,
    /// Non-INVITE client: give up.
    F,
    /// INVITE server: retransmit the non-2xx final response.
    G,
    /// INVITE server: give up waiting for the ACK.
    H,
    /// INVITE server: absorb ACK retransmissions.
    I,
    /// Non-INVITE server: absorb request retransmissions.
    J,
    /// Non-INVITE client: absorb response retransmissions.
    K,
    /// INVITE server (RFC 6026): absorb INVITE retransmissions after a 2xx.
    L,
}

/// What a transaction asks of its owner after an input or a timeout.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TsxOutput {
    /// Bytes to send to the transaction's peer.
    pub send: Option<Vec<u8>>,
    /// The transaction is finished and can be dropped.
    pub terminated: bool,
    /// It finished because the peer never answered (Timer F or H).
    pub timed_out: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InviteState {
    Proceeding,
    Completed,
    Confirmed,
    Accepted,
    Terminated,
}

/// INVITE server transaction (§17.2.1 + RFC 6026).
#[derive(Debug)]
pub struct ServerInviteTsx {
    pub state: InviteState,
    pub peer: SocketAddr,
    last_response: Option<Vec<u8>>,
    /// Timer G: next fire and current interval.
    g: Option<(Instant, Duration)>,
    h: Option<Instant>,
    i: Option<Instant>,
    l: Option<Instant>,
}

impl ServerInviteTsx {
    pub fn new(peer: SocketAddr) -> Self {
        ServerInviteTsx {
            state: InviteState::Proceeding,
            peer,
            last_response: None,
            g: None,
            h: None,
            i: None,
            l: None,
        }
    }

    /// The TU sends a response with status `code`. Returns the bytes to send.
    pub fn send_response(
        &mut self,
        now: Instant,
        cfg: &TsxConfig,
        code: u16,
        bytes: Vec<u8>,
    ) -> Option<Vec<u8>> {
        if self.state != InviteState::Proceeding {
            return None;
        }
        match code {
            100..=199 => {}
            200..=299 => {
                // The TU retransmits its 2xx itself (§13.3.1.4); we only absorb INVITE copies.
                self.state = InviteState::Accepted;
                self.l = Some(now + cfg.timeout());
            }
            _ => {
                self.state = InviteState::Completed;
                self.g = Some((now + cfg.t1, cfg.t1));
                self.h = Some(now + cfg.timeout());
            }
        }
        self.last_response = Some(bytes.clone());
        Some(bytes)
    }

    /// A retransmitted INVITE arrived.
    pub fn handle_retransmission(&mut self) -> Option<Vec<u8>> {
        match self.state {
            InviteState::Proceeding | InviteState::Completed => self.last_response.clone(),
            _ => None,
        }
    }

    /// An ACK matching this transaction arrived (only non-2xx ACKs match; §17.2.1).
    /// Returns true when the ACK was absorbed here.
    pub fn handle_ack(&mut self, now: Instant, cfg: &TsxConfig) -> bool {
        match self.state {
            InviteState::Completed => {
                self.state = InviteState::Confirmed;
                self.g = None;
                self.h = None;
                self.i = Some(now + cfg.t4);
                true
            }
            InviteState::Confirmed => true,
            _ => false,
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.g.map(|g| g.0), self.h, self.i, self.l]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant, cfg: &TsxConfig) -> TsxOutput {
        let mut out = TsxOutput::default();
        if let Some((at, interval)) = self.g
            && now >= at
        {
            let next = (interval * 2).min(cfg.t2);
            self.g = Some((now + next, next));
            out.send = self.last_response.clone();
        }
        if self.h.is_some_and(|h| now >= h) {
            out.timed_out = true;
            out.terminated = true;
        }
        if self.i.is_some_and(|i| now >= i) || self.l.is_some_and(|l| now >= l) {
            out.terminated = true;
        }
        if out.terminated {
            self.state = InviteState::Terminated;
            self.g = None;
            self.h = None;
            self.i = None;
            self.l = None;
            out.send = None;
        }
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

/// Non-INVITE server transaction (§17.2.2).
#[derive(Debug)]
pub struct ServerNonInviteTsx {
    pub state: NonInviteState,
    pub peer: SocketAddr,
    last_response: Option<Vec<u8>>,
    j: Option<Instant>,
}

impl ServerNonInviteTsx {
    pub fn new(peer: SocketAddr) -> Self {
        ServerNonInviteTsx {
            state: NonInviteState::Trying,
            peer,
            last_response: None,
            j: None,
        }
    }

    pub fn send_response(
        &mut self,
        now: Instant,
        cfg: &TsxConfig,
        code: u16,
        bytes: Vec<u8>,
    ) -> Option<Vec<u8>> {
        match self.state {
            NonInviteState::Completed | NonInviteState::Terminated => return None,
            _ => {}
        }
        if code < 200 {
            self.state = NonInviteState::Proceeding;
        } else {
            self.state = NonInviteState::Completed;
            // Over UDP, Timer J = 64·T1.
            self.j = Some(now + cfg.timeout());
        }
        self.last_response = Some(bytes.clone());
        Some(bytes)
    }

    pub fn handle_retransmission(&mut self) -> Option<Vec<u8>> {
        match self.state {
            NonInviteState::Proceeding | NonInviteState::Completed => self.last_response.clone(),
            _ => None,
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.j
    }

    pub fn handle_timeout(&mut self, now: Instant) -> TsxOutput {
        if self.j.is_some_and(|j| now >= j) {
            self.state = NonInviteState::Terminated;
            self.j = None;
            return TsxOutput {
                terminated: true,
                ..Default::default()
            };
        }
        TsxOutput::default()
    }
}

/// Non-INVITE client transaction (§17.1.2), used for the BYEs we send.
#[derive(Debug)]
pub struct ClientNonInviteTsx {
    pub state: NonInviteState,
    pub peer: SocketAddr,
    request: Vec<u8>,
    e: Option<(Instant, Duration)>,
    f: Option<Instant>,
    k: Option<Instant>,
    /// Final status received, if any.
    pub final_code: Option<u16>,
}

impl ClientNonInviteTsx {
    /// Starts the transaction; the caller sends `request` once now.
    pub fn new(now: Instant, cfg: &TsxConfig, peer: SocketAddr, request: Vec<u8>) -> Self {
        ClientNonInviteTsx {
            state: NonInviteState::Trying,
            peer,
            request,
            e: Some((now + cfg.t1, cfg.t1)),
            f: Some(now + cfg.timeout()),
            k: None,
            final_code: None,
        }
    }

    pub fn request(&self) -> &[u8] {
        &self.request
    }

    pub fn handle_response(&mut self, now: Instant, cfg: &TsxConfig, code: u16) {
        match (self.state, code) {
            (NonInviteState::Trying | NonInviteState::Proceeding, 100..=199) => {
                self.state = NonInviteState::Proceeding;
            }
            (NonInviteState::Trying | NonInviteState::Proceeding, _) => {
                self.state = NonInviteState::Completed;
                self.final_code = Some(code);
                self.e = None;
                self.f = None;
                // Over UDP, Timer K = T4.
                self.k = Some(now + cfg.t4);
            }
            _ => {}
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.e.map(|e| e.0), self.f, self.k]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant, cfg: &TsxConfig) -> TsxOutput {
        let mut out = TsxOutput::default();
        if self.f.is_some_and(|f| now >= f) {
            self.state = NonInviteState::Terminated;
            self.e = None;
            self.f = None;
            return TsxOutput {
                send: None,
                terminated: true,
                timed_out: true,
            };
        }
        if self.k.is_some_and(|k| now >= k) {
            self.state = NonInviteState::Terminated;
            self.k = None;
            out.terminated = true;
            return out;
        }
        if let Some((at, interval)) = self.e
            && now >= at
        {
            // In Proceeding the interval is T2; in Trying it doubles up to T2.
            let next = if self.state == NonInviteState::Proceeding {
                cfg.t2
            } else {
                (interval * 2).min(cfg.t2)
            };
            self.e = Some((now + next, next));
            out.send = Some(self.request.clone());
        }
        out
    }
}

/// INVITE client transaction (§17.1.1), for the calls we place (the calling service).
#[derive(Debug)]
pub struct ClientInviteTsx {
    pub state: InviteState,
    pub peer: SocketAddr,
    request: Vec<u8>,
    /// Timer A: INVITE retransmission.
    a: Option<(Instant, Duration)>,
    /// Timer B: no answer at all.
    b: Option<Instant>,
    /// Timer D: absorb retransmitted final responses after a non-2xx.
    d: Option<Instant>,
    /// The ACK for a non-2xx final response, re-sent when it is retransmitted.
    ack: Option<Vec<u8>>,
}

impl ClientInviteTsx {
    /// Starts the transaction; the caller sends `request` once now.
    pub fn new(now: Instant, cfg: &TsxConfig, peer: SocketAddr, request: Vec<u8>) -> Self {
        ClientInviteTsx {
            state: InviteState::Proceeding,
            peer,
            request,
            a: Some((now + cfg.t1, cfg.t1)),
            b: Some(now + cfg.timeout()),
            d: None,
            ack: None,
        }
    }

    /// A response arrived. For a non-2xx final, `ack` is the ACK to send (and re-send).
    /// Returns bytes to send now.
    pub fn handle_response(
        &mut self,
        now: Instant,
        code: u16,
        ack: impl FnOnce() -> Vec<u8>,
    ) -> Option<Vec<u8>> {
        match (self.state, code) {
            (InviteState::Proceeding, 100..=199) => {
                // A provisional answer: the far end has it; stop retransmitting.
                self.a = None;
                self.b = None;
                None
            }
            (InviteState::Proceeding, 200..=299) => {
                // The TU acknowledges 2xx responses itself (§13.2.2.4).
                self.state = InviteState::Terminated;
                self.a = None;
                self.b = None;
                None
            }
            (InviteState::Proceeding, _) => {
                self.state = InviteState::Completed;
                self.a = None;
                self.b = None;
                // Timer D: at least 32 s over UDP.
                self.d = Some(now + Duration::from_secs(32));
                let bytes = ack();
                self.ack = Some(bytes.clone());
                Some(bytes)
            }
            (InviteState::Completed, 300..=699) => self.ack.clone(),
            _ => None,
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.a.map(|a| a.0), self.b, self.d]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) -> TsxOutput {
        let mut out = TsxOutput::default();
        if self.b.is_some_and(|b| now >= b) {
            self.state = InviteState::Terminated;
            self.a = None;
            self.b = None;
            return TsxOutput {
                send: None,
                terminated: true,
                timed_out: true,
            };
        }
        if self.d.is_some_and(|d| now >= d) {
            self.state = InviteState::Terminated;
            self.d = None;
            out.terminated = true;
            return out;
        }
        if let Some((at, interval)) = self.a
            && now >= at
        {
            // Timer A doubles without a cap (§17.1.1.2); Timer B ends it.
            let next = interval * 2;
            self.a = Some((now + next, next));
            out.send = Some(self.request.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:5061".parse().unwrap()
    }

    /// Runs a machine on a simulated clock until `end`, collecting the times it resent.
    fn fire_until(
        start: Instant,
        end: Instant,
        mut next: impl FnMut() -> Option<Instant>,
        mut fire: impl FnMut(Instant) -> TsxOutput,
    ) -> (Vec<Duration>, Option<TsxOutput>) {
        let mut sends = vec![];
        while let Some(at) = next() {
            if at > end {
                break;
            }
            let out = fire(at);
            if out.send.is_some() {
                sends.push(at - start);
            }
            if out.terminated {
                return (sends, Some(out));
            }
        }
        (sends, None)
    }

    #[test]
    fn timer_g_retransmits_the_final_response_doubling_to_t2() {
        let cfg = TsxConfig::default();
        let t0 = Instant::now();
        let mut tsx = ServerInviteTsx::new(peer());
        tsx.send_response(t0, &cfg, 486, b"486".to_vec()).unwrap();
        let tsx = std::cell::RefCell::new(tsx);
        let (sends, end) = fire_until(
            t0,
            t0 + Duration::from_secs(60),
            || tsx.borrow().poll_timeout(),
            |at| tsx.borrow_mut().handle_timeout(at, &cfg),
        );
        let ms: Vec<u128> = sends.iter().map(|d| d.as_millis()).collect();
        assert_eq!(&ms[..5], &[500, 1500, 3500, 7500, 11500]);
        let end = end.expect("terminated");
        assert!(end.timed_out, "Timer H: no ACK");
    }

    #[test]
    fn invite_timer_h_expires_after_64_t1_without_ack() {
        let cfg = TsxConfig::default();
        let t0 = Instant::now();
        let mut tsx = ServerInviteTsx::new(peer());
        tsx.send_response(t0, &cfg, 487, b"487".to_vec());
        let mut now;
        loop {
            now = tsx.poll_timeout().unwrap();
            if tsx.handle_timeout(now, &cfg).terminated {
                break;
            }
        }
        assert_eq!(now - t0, cfg.timeout());
        assert_eq!(tsx.state, InviteState::Terminated);
    }

    #[test]
    fn ack_confirms_and_timer_i_ends_the_transaction() {
        let cfg = TsxConfig::default();
        let t0 = Instant::now();
        let mut tsx = ServerInviteTsx::new(peer());
        tsx.send_response(t0, &cfg, 404, b"404".to_vec());
        assert!(tsx.handle_ack(t0 + Duration::from_millis(10), &cfg));
        assert_eq!(tsx.state, InviteState::Confirmed);
        assert_eq!(tsx.handle_retransmission(), None);
        assert_eq!(
            tsx.poll_timeout(),
            Some(t0 + Duration::from_millis(10) + cfg.t4)
        );
        let out = tsx.handle_timeout(t0 + Duration::from_millis(10) + cfg.t4, &cfg);
        assert!(out.terminated && !out.timed_out);
    }

    #[test]
    fn proceeding_resends_the_provisional_on_invite_retransmission() {
        let cfg = TsxConfig::default();
        let t0 = Instant::now();
        let mut tsx = ServerInviteTsx::new(peer());
        tsx.send_response(t0, &cfg, 100, b"100".to_vec());
        assert_eq!(tsx.handle_retransmission(), Some(b"100".to_vec()));
        tsx.send_response(t0, &cfg, 200, b"200".to_vec());
        assert_eq!(tsx.state, InviteState::Accepted);
        assert_eq!(tsx.handle_retransmission(), None, "absorbed (RFC 6026)");
        assert!(!tsx.handle_ack(t0, &cfg), "2xx ACK goes to the dialog");
        assert_eq!(tsx.poll_timeout(), Some(t0 + cfg.timeout()), "Timer L");
        assert_eq!(tsx.send_response(t0, &cfg, 500, b"x".to_vec()), None);
    }

    #[test]
    fn timer_j_absorbs_retransmissions_then_ends() {
        let cfg = TsxConfig::default();
        let t0 = Instant::now();
        let mut tsx = ServerNonInviteTsx::new(peer());
        assert_eq!(tsx.handle_retransmission(), None);
        tsx.send_response(t0, &cfg, 200, b"200".to_vec());
        assert_eq!(tsx.handle_retransmission(), Some(b"200".to_vec()));
        assert_eq!(tsx.poll_timeout(), Some(t0 + cfg.timeout()));
        assert!(tsx.handle_timeout(t0 + cfg.timeout()).terminated);
    }

    #[test]
    fn timer_e_doubles_to_t2_and_timer_f_gives_up() {
        let cfg = TsxConfig::default();
        let t0 = Instant::now();
        let tsx =
            std::cell::RefCell::new(ClientNonInviteTsx::new(t0, &cfg, peer(), b"BYE".to_vec()));
        let (sends, end) = fire_until(
            t0,
            t0 + Duration::from_secs(60),
            || tsx.borrow().poll_timeout(),
            |at| tsx.borrow_mut().handle_timeout(at, &cfg),
        );
        let ms: Vec<u128> = sends.iter().map(|d| d.as_millis()).collect();
        assert_eq!(&ms[..6], &[500, 1500, 3500, 7500, 11500, 15500]);
        let end = end.unwrap();
        assert!(end.timed_out);
        assert!(ms.iter().all(|&m| m < 32_000));
    }

    #[test]
    fn final_response_stops_retransmission_and_timer_k_ends() {
        let cfg = TsxConfig::default();
        let t0 = Instant::now();
        let mut tsx = ClientNonInviteTsx::new(t0, &cfg, peer(), b"BYE".to_vec());
        tsx.handle_response(t0 + Duration::from_millis(5), &cfg, 200);
        assert_eq!(tsx.final_code, Some(200));
        assert_eq!(
            tsx.poll_timeout(),
            Some(t0 + Duration::from_millis(5) + cfg.t4)
        );
        let out = tsx.handle_timeout(t0 + Duration::from_millis(5) + cfg.t4, &cfg);
        assert!(out.terminated && !out.timed_out && out.send.is_none());
    }

    #[test]
    fn timer_a_retransmits_the_invite_until_timer_b() {
        let cfg = TsxConfig::default();
        let t0 = Instant::now();
        let tsx =
            std::cell::RefCell::new(ClientInviteTsx::new(t0, &cfg, peer(), b"INVITE".to_vec()));
        let (sends, end) = fire_until(
            t0,
            t0 + Duration::from_secs(60),
            || tsx.borrow().poll_timeout(),
            |at| tsx.borrow_mut().handle_timeout(at),
        );
        let ms: Vec<u128> = sends.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [500, 1500, 3500, 7500, 15500, 31500]);
        assert!(end.unwrap().timed_out, "Timer B");
    }

    #[test]
    fn provisional_stops_retransmission_and_a_failure_is_acknowledged() {
        let cfg = TsxConfig::default();
        let t0 = Instant::now();
        let mut tsx = ClientInviteTsx::new(t0, &cfg, peer(), b"INVITE".to_vec());
        assert_eq!(tsx.handle_response(t0, 180, || unreachable!()), None);
        assert_eq!(tsx.poll_timeout(), None, "no Timer A or B while ringing");
        assert_eq!(
            tsx.handle_response(t0, 486, || b"ACK".to_vec()),
            Some(b"ACK".to_vec())
        );
        assert_eq!(
            tsx.handle_response(t0, 486, || unreachable!()),
            Some(b"ACK".to_vec()),
            "re-ACK"
        );
        assert!(
            tsx.handle_timeout(t0 + Duration::from_secs(32)).terminated,
            "Timer D"
        );
        let mut ok = ClientInviteTsx::new(t0, &cfg, peer(), b"INVITE".to_vec());
        assert_eq!(ok.handle_response(t0, 200, || unreachable!()), None);
        assert_eq!(ok.state, InviteState::Terminated);
    }
}
