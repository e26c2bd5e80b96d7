//! The SIP user-agent server core (sans-IO): routes datagrams to transactions and dialogs,
//! answers what it can on its own (OPTIONS, INFO, BYE, CANCEL, errors), and hands calls to
//! the driver as events. The driver answers with commands (`answer`, `reject`, `hangup`...).
//!
//! ```text
//!   handle_datagram(now, from, bytes) ──►  ┌──────────┐ ──► poll_transmit()  (to the socket)
//!   handle_timeout(now)               ──►  │ Endpoint │ ──► poll_event()     (to call tasks)
//!   answer / reject / hangup ...      ──►  └──────────┘ ──► poll_timeout()   (next wake-up)
//! ```
//!
//! Every SIP-level error maps to a status code in one place, [`EndpointError::status`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::message::{
    Headers, Malformed, Message, Method, NameAddr, ParseError, Request, Response, Uri, Via,
    reason_phrase,
};
use super::transaction::{
    ClientInviteTsx, ClientNonInviteTsx, InviteState, NonInviteState, ServerInviteTsx,
    ServerNonInviteTsx, TsxConfig,
};
use topup_media::dtmf::{Digit, info};

/// Methods we answer; sent in `Allow`.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, NOTIFY";

/// A call (one INVITE dialog) known to the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallHandle(pub u64);

impl fmt::Display for CallHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Our address as written in Via, Contact and SDP.
    pub local_addr: SocketAddr,
    /// Value of the `Server` / `User-Agent` header.
    pub user_agent: String,
    pub tsx: TsxConfig,
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub payload: Vec<u8>,
}

/// A new call offered to the driver. The endpoint has sent 100 Trying.
#[derive(Clone, Debug)]
pub struct IncomingCall {
    pub call: CallHandle,
    pub call_id: String,
    /// Caller's user part (ANI), or "anonymous".
    pub caller: String,
    pub caller_display: Option<String>,
    /// Dialled user (DNIS) from the Request-URI.
    pub dialled: String,
    /// The SDP offer (empty for an offerless INVITE).
    pub offer: Vec<u8>,
    pub source: SocketAddr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The caller sent BYE.
    RemoteBye,
    /// The caller cancelled before we answered.
    Cancelled,
    /// Our 2xx was never acknowledged (64·T1); we sent BYE.
    AckTimeout,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::RemoteBye => "caller-hangup",
            EndReason::Cancelled => "cancelled",
            EndReason::AckTimeout => "ack-timeout",
        }
    }
}

#[derive(Clone, Debug)]
pub enum SipEvent {
    Incoming(IncomingCall),
    /// The ACK for our 2xx arrived: media may flow both ways. For an INVITE without an
    /// offer (late offer: our 2xx carried the offer), `answer` is the ACK's SDP, if any.
    Confirmed {
        call: CallHandle,
        answer: Option<Vec<u8>>,
    },
    /// A key press in a SIP INFO request (already answered 200).
    Dtmf {
        call: CallHandle,
        digit: Digit,
    },
    /// A re-INVITE with a new offer; answer with [`Endpoint::answer_reoffer`].
    Reoffer {
        call: CallHandle,
        offer: Vec<u8>,
    },
    /// A call we placed: provisional (1xx, no SDP), answered (2xx with the SDP answer) or
    /// failed (≥ 300, or 408 when nobody answered the INVITE).
    Outbound {
        call: CallHandle,
        code: u16,
        sdp: Option<Vec<u8>>,
    },
    /// The answer to our REFER (2xx: the caller's side is calling the target).
    ReferResult {
        call: CallHandle,
        code: u16,
    },
    /// The call is over from the SIP side; the handle is no longer valid.
    Ended {
        call: CallHandle,
        reason: EndReason,
    },
}

/// Why the endpoint refused a request; each maps to one status code.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{0}")]
    Malformed(ParseError),
    #[error("no such call or transaction")]
    NoDialog,
    #[error("unsupported URI scheme")]
    UriScheme,
    #[error("unsupported extension {0}")]
    Extension(String),
    #[error("too many hops")]
    TooManyHops,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request merged (loop)")]
    Merged,
    #[error("a re-INVITE is already in progress")]
    Pending,
    #[error("CSeq out of order")]
    CSeqOrder,
    #[error("INFO body: {0}")]
    Info(info::InfoError),
}

impl EndpointError {
    /// The single place SIP errors become status codes.
    pub fn status(&self) -> u16 {
        match self {
            EndpointError::Malformed(_) => 400,
            EndpointError::NoDialog => 481,
            EndpointError::UriScheme => 416,
            EndpointError::Extension(_) => 420,
            EndpointError::TooManyHops => 483,
            EndpointError::MethodNotAllowed => 405,
            EndpointError::Merged => 482,
            EndpointError::Pending => 491,
            EndpointError::CSeqOrder => 500,
            EndpointError::Info(info::InfoError::UnsupportedType(_)) => 415,
            EndpointError::Info(_) => 400,
        }
    }

    fn reason(&self) -> String {
        match self {
            EndpointError::Malformed(e) => format!("Bad Request - {e}"),
            EndpointError::Info(e) => match self.status() {
                415 => reason_phrase(415).to_string(),
                _ => format!("Bad Request - {e}"),
            },
            e => reason_phrase(e.status()).to_string(),
        }
    }
}

/// Server transaction key (§17.2.3): branch, sent-by and method, with ACK folded into INVITE.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct TsxKey {
    branch: String,
    sent_by: String,
    invite: bool,
    cancel: bool,
}

impl TsxKey {
    fn for_request(req: &Request, via: &Via) -> TsxKey {
        let sent_by = format!("{}:{}", via.host, via.port.unwrap_or(5060));
        let branch = match via.branch() {
            Some(b) if b.starts_with("z9hG4bK") => b.to_string(),
            // RFC 2543 peers: fall back to the dialog identifiers.
            _ => format!(
                "{}|{}|{}",
                req.call_id(),
                req.from()
                    .and_then(|f| f.tag().map(String::from))
                    .unwrap_or_default(),
                req.cseq().map(|c| c.0).unwrap_or(0)
            ),
        };
        TsxKey {
            branch,
            sent_by,
            invite: matches!(req.method, Method::Invite | Method::Ack),
            cancel: req.method == Method::Cancel,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TimerOwner {
    Server(TsxKey),
    Client(String),
    ClientInvite(String),
    Dialog(CallHandle),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DialogState {
    /// INVITE received, no final response yet.
    Early,
    /// 2xx sent, waiting for the ACK.
    WaitAck,
    Confirmed,
}

/// Retransmission of our 2xx until the ACK comes (§13.3.1.4).
#[derive(Debug)]
struct OkRetransmit {
    bytes: Vec<u8>,
    cseq: u32,
    next: Instant,
    interval: std::time::Duration,
    give_up: Instant,
}

#[derive(Debug)]
struct Dialog {
    call_id: String,
    local_tag: String,
    remote_tag: String,
    /// To header of the INVITE (our identity), without our tag.
    local_uri: String,
    /// From header of the INVITE, with the caller's tag.
    remote_uri: String,
    remote_target: String,
    route_set: Vec<String>,
    local_cseq: u32,
    remote_cseq: u32,
    peer: SocketAddr,
    state: DialogState,
    /// The INVITE being answered (initial or re-INVITE) and its transaction.
    invite: Request,
    invite_key: TsxKey,
    reinvite_pending: bool,
    ok_retransmit: Option<OkRetransmit>,
    /// A hangup asked for before the ACK arrived (§15: BYE waits for the ACK).
    bye_after_ack: bool,
    /// Set on calls we placed (UAC side).
    outbound: Option<Outbound>,
}

/// The UAC side of a call we placed.
#[derive(Debug)]
struct Outbound {
    /// Branch of the INVITE client transaction (and of a CANCEL).
    branch: String,
    /// The ACK for the 2xx, re-sent if the 2xx is retransmitted.
    ack: Option<Vec<u8>>,
}

pub struct Endpoint {
    cfg: EndpointConfig,
    rng: StdRng,
    next_handle: u64,
    server_invite: HashMap<TsxKey, (ServerInviteTsx, Option<CallHandle>)>,
    server_other: HashMap<TsxKey, ServerNonInviteTsx>,
    client: HashMap<String, ClientNonInviteTsx>,
    /// INVITE client transactions of calls we placed, by branch.
    client_invite: HashMap<String, (ClientInviteTsx, CallHandle)>,
    /// REFER transactions in flight (branch → call), to report their outcome.
    refers: HashMap<String, CallHandle>,
    calls: HashMap<CallHandle, Dialog>,
    /// (Call-ID, our tag) → call, for in-dialog requests.
    by_local_tag: HashMap<(String, String), CallHandle>,
    /// (Call-ID, caller's tag, CSeq) of INVITEs being set up, for merged-request detection.
    by_invite: HashMap<(String, String, u32), CallHandle>,
    timers: BinaryHeap<Reverse<(Instant, TimerOwner)>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SipEvent>,
    /// The node is being stopped: OPTIONS pings get 503, so a load balancer (Kamailio's
    /// dispatcher) takes it out of rotation while its calls finish.
    draining: bool,
}

impl Endpoint {
    /// `seed` drives tags and branches (deterministic in tests, random in production).
    pub fn new(cfg: EndpointConfig, seed: u64) -> Endpoint {
        Endpoint {
            cfg,
            rng: StdRng::seed_from_u64(seed),
            next_handle: 1,
            server_invite: HashMap::new(),
            server_other: HashMap::new(),
            client: HashMap::new(),
            client_invite: HashMap::new(),
            refers: HashMap::new(),
            calls: HashMap::new(),
            by_local_tag: HashMap::new(),
            by_invite: HashMap::new(),
            timers: BinaryHeap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            draining: false,
        }
    }

    /// Marks the node as draining (OPTIONS answered 503 with Retry-After) or not.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.cfg.local_addr
    }

    /// Calls with a dialog (early or confirmed).
    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    /// Transactions alive (for tests and metrics: returns to zero when idle).
    pub fn transactions(&self) -> usize {
        self.server_invite.len()
            + self.server_other.len()
            + self.client.len()
            + self.client_invite.len()
    }

    /// Requests we sent that have no final answer yet. Transactions past that point only
    /// absorb retransmissions until their timers end (Timer K, D), so a client that has
    /// finished its calls can leave once this is zero instead of waiting for them.
    pub fn awaiting_answers(&self) -> usize {
        let non_invite = self
            .client
            .values()
            .filter(|t| matches!(t.state, NonInviteState::Trying | NonInviteState::Proceeding));
        let invite = self
            .client_invite
            .values()
            .filter(|(t, _)| t.state == InviteState::Proceeding);
        non_invite.count() + invite.count()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SipEvent> {
        self.events.pop_front()
    }

    /// The earliest deadline of any timer.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, owner))) = self.timers.peek() {
            if self.deadline_of(owner) == Some(*at) {
                return Some(*at);
            }
            self.timers.pop();
        }
        None
    }

    /// One datagram from the network.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        match Message::parse(data) {
            Ok(Message::Request(req)) => self.on_request(now, from, req),
            Ok(Message::Response(resp)) => self.on_response(now, resp),
            Err(Malformed {
                error,
                request: Some(req),
            }) if req.method != Method::Ack => {
                tracing::debug!(%from, %error, "malformed request");
                self.reply_stateless(from, &req, &EndpointError::Malformed(error));
            }
            Err(Malformed { error, .. }) => {
                tracing::debug!(%from, %error, "dropped malformed datagram");
            }
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, owner))) = self.timers.pop() else {
                break;
            };
            if self.deadline_of(&owner) != Some(at) {
                continue;
            }
            match owner {
                TimerOwner::Server(key) => self.on_server_timeout(now, key),
                TimerOwner::Client(branch) => self.on_client_timeout(now, branch),
                TimerOwner::ClientInvite(branch) => self.on_client_invite_timeout(now, branch),
                TimerOwner::Dialog(call) => self.on_dialog_timeout(now, call),
            }
        }
    }

    // ---- commands from the driver ----

    /// Sends 180 Ringing (with our tag).
    pub fn ring(&mut self, now: Instant, call: CallHandle) {
        if let Some(d) = self.calls.get(&call)
            && d.state == DialogState::Early
        {
            let mut resp = self.response_for(call, 180);
            self.add_contact(&mut resp);
            self.send_invite_response(now, call, resp);
        }
    }

    /// Answers the call with 200 OK carrying `sdp`.
    pub fn answer(&mut self, now: Instant, call: CallHandle, sdp: Vec<u8>) {
        let Some(d) = self.calls.get(&call) else {
            return;
        };
        if d.state != DialogState::Early {
            return;
        }
        self.send_2xx(now, call, sdp);
        if let Some(d) = self.calls.get_mut(&call) {
            d.state = DialogState::WaitAck;
        }
    }

    /// Refuses a call not yet answered with a final status (404, 486, 488, 503...).
    /// `retry_after` adds a Retry-After header (seconds), as for 503 during shutdown.
    pub fn reject(&mut self, now: Instant, call: CallHandle, code: u16, retry_after: Option<u32>) {
        let Some(d) = self.calls.get(&call) else {
            return;
        };
        if d.state != DialogState::Early || code < 300 {
            return;
        }
        let mut resp = self.response_for(call, code);
        if let Some(secs) = retry_after {
            resp.headers.push("Retry-After", secs.to_string());
        }
        if code == 488 || code == 405 {
            resp.headers.push("Allow", ALLOW);
        }
        self.send_invite_response(now, call, resp);
        self.remove_call(call);
    }

    /// Answers a re-INVITE: `Ok(sdp)` → 200, `Err(code)` → that error (e.g. 488).
    pub fn answer_reoffer(&mut self, now: Instant, call: CallHandle, answer: Result<Vec<u8>, u16>) {
        let Some(d) = self.calls.get_mut(&call) else {
            return;
        };
        if !d.reinvite_pending {
            return;
        }
        d.reinvite_pending = false;
        match answer {
            Ok(sdp) => self.send_2xx(now, call, sdp),
            Err(code) => {
                let resp = self.response_for(call, code.max(300));
                self.send_invite_response(now, call, resp);
            }
        }
    }

    /// Ends the call from our side: BYE once confirmed (after the ACK if it is still due),
    /// 480 if not answered yet.
    pub fn hangup(&mut self, now: Instant, call: CallHandle) {
        let Some(d) = self.calls.get_mut(&call) else {
            return;
        };
        match d.state {
            DialogState::Early if d.outbound.is_some() => {
                self.cancel_outbound(now, call);
                // The 487 that follows ends it; the call is forgotten now.
                self.remove_call(call);
            }
            DialogState::Early => self.reject(now, call, 480, None),
            DialogState::WaitAck => d.bye_after_ack = true,
            DialogState::Confirmed => {
                self.send_bye(now, call);
                self.remove_call(call);
            }
        }
    }

    // ---- requests ----

    fn on_request(&mut self, now: Instant, from: SocketAddr, req: Request) {
        let Some(via) = req.top_via() else { return };
        let key = TsxKey::for_request(&req, &via);

        if req.method == Method::Ack {
            if let Some((tsx, _)) = self.server_invite.get_mut(&key)
                && tsx.handle_ack(now, &self.cfg.tsx)
            {
                self.schedule(TimerOwner::Server(key));
                return;
            }
            self.on_ack_2xx(now, &req);
            return;
        }
        // Retransmissions are answered by their transaction.
        if let Some((tsx, _)) = self.server_invite.get_mut(&key) {
            if let Some(bytes) = tsx.handle_retransmission() {
                self.transmits.push_back(Transmit {
                    to: tsx.peer,
                    payload: bytes,
                });
            }
            return;
        }
        if let Some(tsx) = self.server_other.get_mut(&key) {
            if let Some(bytes) = tsx.handle_retransmission() {
                self.transmits.push_back(Transmit {
                    to: tsx.peer,
                    payload: bytes,
                });
            }
            return;
        }

        if let Err(e) = self.check_request(&req) {
            self.reply(now, from, key, &req, &e);
            return;
        }
        let result = match req.method {
            Method::Invite if req.to().and_then(|t| t.tag().map(String::from)).is_none() => {
                self.on_new_invite(now, from, key.clone(), req.clone())
            }
            Method::Invite => self.on_reinvite(now, from, key.clone(), req.clone()),
            Method::Cancel => self.on_cancel(now, from, key.clone(), &req),
            Method::Bye => self.on_bye(now, from, key.clone(), &req),
            Method::Info => self.on_info(now, from, key.clone(), &req),
            // Progress of a transfer we asked for (RFC 3515 §2.4.4): acknowledged, not needed.
            Method::Notify => self.dialog_for(&req).map(|_| {
                let ok = self.build_response(from, &req, 200, None);
                self.respond_non_invite(now, from, key.clone(), ok);
            }),
            Method::Options if self.draining => {
                let mut resp = self.build_response(from, &req, 503, None);
                resp.headers.push("Retry-After", "30");
                self.respond_non_invite(now, from, key.clone(), resp);
                Ok(())
            }
            Method::Options => {
                let mut resp = self.build_response(from, &req, 200, None);
                resp.headers.push("Allow", ALLOW);
                resp.headers.push(
                    "Accept",
                    "application/sdp, application/dtmf-relay, application/dtmf",
                );
                self.respond_non_invite(now, from, key.clone(), resp);
                Ok(())
            }
            _ => Err(EndpointError::MethodNotAllowed),
        };
        if let Err(e) = result {
            self.reply(now, from, key, &req, &e);
        }
    }

    /// Checks every request must pass before its method is looked at.
    fn check_request(&self, req: &Request) -> Result<(), EndpointError> {
        match Uri::parse(&req.uri) {
            Some(u) if u.scheme == "sip" || u.scheme == "sips" => {}
            Some(_) => return Err(EndpointError::UriScheme),
            None => return Err(EndpointError::Malformed(ParseError::BadStartLine)),
        }
        if req.headers.get("Max-Forwards").map(str::trim) == Some("0") {
            return Err(EndpointError::TooManyHops);
        }
        if req.method != Method::Cancel {
            let required = req.headers.list("Require");
            if !required.is_empty() {
                return Err(EndpointError::Extension(required.join(", ")));
            }
        }
        Ok(())
    }

    fn on_new_invite(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: TsxKey,
        req: Request,
    ) -> Result<(), EndpointError> {
        let from_addr = req
            .from()
            .ok_or(EndpointError::Malformed(ParseError::BadHeaderValue("From")))?;
        let remote_tag = from_addr.tag().unwrap_or("").to_string();
        let cseq = req.cseq().map(|c| c.0).unwrap_or(0);
        let merged_key = (req.call_id().to_string(), remote_tag.clone(), cseq);
        if self.by_invite.contains_key(&merged_key) {
            return Err(EndpointError::Merged);
        }
        let contact = req
            .contact()
            .ok_or(EndpointError::Malformed(ParseError::MissingHeader(
                "Contact",
            )))?;

        let call = CallHandle(self.next_handle);
        self.next_handle += 1;
        let local_tag = self.random_token();
        let to_value = req.headers.get("To").unwrap_or("").to_string();
        let dialled = Uri::parse(&req.uri)
            .and_then(|u| u.user)
            .or_else(|| req.to().and_then(|t| t.user()))
            .unwrap_or_default();
        let mut route_set: Vec<String> = req
            .headers
            .list("Record-Route")
            .into_iter()
            .map(String::from)
            .collect();
        route_set.retain(|r| !r.is_empty());
        let dialog = Dialog {
            call_id: req.call_id().to_string(),
            local_tag: local_tag.clone(),
            remote_tag,
            local_uri: to_value,
            remote_uri: req.headers.get("From").unwrap_or("").to_string(),
            remote_target: contact.uri.clone(),
            route_set,
            local_cseq: self.rng.random_range(1..10_000),
            remote_cseq: cseq,
            peer: from,
            state: DialogState::Early,
            invite: req.clone(),
            invite_key: key.clone(),
            reinvite_pending: false,
            ok_retransmit: None,
            bye_after_ack: false,
            outbound: None,
        };
        self.by_local_tag
            .insert((dialog.call_id.clone(), local_tag), call);
        self.by_invite.insert(merged_key, call);
        self.calls.insert(call, dialog);
        self.server_invite
            .insert(key.clone(), (ServerInviteTsx::new(from), Some(call)));
        // 100 Trying at once, so the caller stops retransmitting the INVITE.
        let trying = self.build_response(from, &req, 100, None);
        self.send_invite_response(now, call, trying);

        let body_is_sdp = req
            .headers
            .get("Content-Type")
            .is_some_and(|c| c.to_ascii_lowercase().starts_with("application/sdp"));
        self.events.push_back(SipEvent::Incoming(IncomingCall {
            call,
            call_id: req.call_id().to_string(),
            caller: from_addr
                .user()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "anonymous".into()),
            caller_display: from_addr.display.clone(),
            dialled,
            offer: if body_is_sdp {
                req.body.clone()
            } else {
                Vec::new()
            },
            source: from,
        }));
        Ok(())
    }

    fn on_reinvite(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: TsxKey,
        req: Request,
    ) -> Result<(), EndpointError> {
        let call = self.dialog_for(&req)?;
        let cseq = req.cseq().map(|c| c.0).unwrap_or(0);
        let d = self.calls.get_mut(&call).ok_or(EndpointError::NoDialog)?;
        if d.state != DialogState::Confirmed || d.reinvite_pending {
            return Err(EndpointError::Pending);
        }
        if cseq <= d.remote_cseq {
            return Err(EndpointError::CSeqOrder);
        }
        d.remote_cseq = cseq;
        if let Some(c) = req.contact() {
            d.remote_target = c.uri;
        }
        d.invite = req.clone();
        d.invite_key = key.clone();
        d.reinvite_pending = true;
        self.server_invite
            .insert(key, (ServerInviteTsx::new(from), Some(call)));
        let trying = self.build_response(from, &req, 100, None);
        self.send_invite_response(now, call, trying);
        self.events.push_back(SipEvent::Reoffer {
            call,
            offer: req.body.clone(),
        });
        Ok(())
    }

    fn on_cancel(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: TsxKey,
        req: &Request,
    ) -> Result<(), EndpointError> {
        let invite_key = TsxKey {
            invite: true,
            cancel: false,
            ..key.clone()
        };
        let (state, call) = match self.server_invite.get(&invite_key) {
            Some((tsx, call)) => (tsx.state, *call),
            None => return Err(EndpointError::NoDialog),
        };
        let ok = self.build_response(from, req, 200, None);
        self.respond_non_invite(now, from, key, ok);
        if state == InviteState::Proceeding
            && let Some(call) = call
            && self
                .calls
                .get(&call)
                .is_some_and(|d| d.state == DialogState::Early)
        {
            self.end_by_caller(now, call, EndReason::Cancelled);
        }
        Ok(())
    }

    /// The caller ended the call (BYE or CANCEL): a pending INVITE gets its 487 (§9.2,
    /// §15.1.2), the dialog goes, and the driver is told.
    fn end_by_caller(&mut self, now: Instant, call: CallHandle, reason: EndReason) {
        if self
            .calls
            .get(&call)
            .is_some_and(|d| d.state == DialogState::Early && d.outbound.is_none())
        {
            let resp = self.response_for(call, 487);
            self.send_invite_response(now, call, resp);
        }
        self.remove_call(call);
        self.events.push_back(SipEvent::Ended { call, reason });
    }

    fn on_bye(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: TsxKey,
        req: &Request,
    ) -> Result<(), EndpointError> {
        let call = self.dialog_for(req)?;
        let ok = self.build_response(from, req, 200, None);
        self.respond_non_invite(now, from, key, ok);
        self.end_by_caller(now, call, EndReason::RemoteBye);
        Ok(())
    }

    fn on_info(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: TsxKey,
        req: &Request,
    ) -> Result<(), EndpointError> {
        let call = self.dialog_for(req)?;
        let digit = if req.body.is_empty() {
            None // An empty INFO is a keep-alive probe.
        } else {
            let ctype = req.headers.get("Content-Type").unwrap_or("");
            Some(info::parse(ctype, &req.body).map_err(EndpointError::Info)?)
        };
        let ok = self.build_response(from, req, 200, None);
        self.respond_non_invite(now, from, key, ok);
        if let Some(digit) = digit {
            self.events.push_back(SipEvent::Dtmf { call, digit });
        }
        Ok(())
    }

    fn on_ack_2xx(&mut self, now: Instant, req: &Request) {
        let Ok(call) = self.dialog_for(req) else {
            return;
        };
        let cseq = req.cseq().map(|c| c.0);
        let Some(d) = self.calls.get_mut(&call) else {
            return;
        };
        if d.ok_retransmit.as_ref().map(|r| r.cseq) != cseq {
            return;
        }
        d.ok_retransmit = None;
        let first = d.state == DialogState::WaitAck;
        d.state = DialogState::Confirmed;
        let bye = d.bye_after_ack;
        self.schedule(TimerOwner::Dialog(call));
        if bye {
            self.send_bye(now, call);
            self.remove_call(call);
        } else if first {
            let answer = Some(req.body.clone()).filter(|b| !b.trim_ascii().is_empty());
            self.events.push_back(SipEvent::Confirmed { call, answer });
        }
    }

    fn dialog_for(&self, req: &Request) -> Result<CallHandle, EndpointError> {
        let tag = req
            .to()
            .and_then(|t| t.tag().map(String::from))
            .ok_or(EndpointError::NoDialog)?;
        self.by_local_tag
            .get(&(req.call_id().to_string(), tag))
            .copied()
            .ok_or(EndpointError::NoDialog)
    }

    // ---- responses ----

    fn on_response(&mut self, now: Instant, resp: Response) {
        let Some(branch) = resp.top_via().and_then(|v| v.branch().map(String::from)) else {
            return;
        };
        let Some((_, method)) = resp.cseq() else {
            return;
        };
        if method == Method::Invite {
            self.on_invite_response(now, &branch, resp);
            return;
        }
        let key = format!("{branch}|{method}");
        if let Some(tsx) = self.client.get_mut(&key) {
            tsx.handle_response(now, &self.cfg.tsx, resp.code);
            if resp.code >= 200
                && let Some(call) = self.refers.remove(&key)
            {
                self.events.push_back(SipEvent::ReferResult {
                    call,
                    code: resp.code,
                });
            }
            self.schedule(TimerOwner::Client(key));
        }
    }

    /// A response to an INVITE we sent (the calling service).
    fn on_invite_response(&mut self, now: Instant, branch: &str, resp: Response) {
        let Some((tsx, call)) = self.client_invite.get_mut(branch) else {
            // A retransmitted 2xx after the transaction ended: acknowledge it again.
            if (200..300).contains(&resp.code)
                && let Some(call) = self.outbound_for(&resp)
                && let Some(ack) = self
                    .calls
                    .get(&call)
                    .and_then(|d| d.outbound.as_ref())
                    .and_then(|o| o.ack.clone())
            {
                let to = self.calls[&call].peer;
                self.transmits.push_back(Transmit { to, payload: ack });
            }
            return;
        };
        let call = *call;
        let peer = tsx.peer;
        let invite = match self.calls.get(&call) {
            Some(d) => d.invite.clone(),
            None => return,
        };
        let code = resp.code;
        let ack_for_failure = || {
            // §17.1.1.3: same branch, the response's To (with its tag).
            let mut headers = Headers::new();
            for (n, v) in invite.headers.iter() {
                if matches!(n, "Via" | "From" | "Call-ID" | "Route" | "Max-Forwards") {
                    headers.push(n, v);
                }
            }
            headers.push("To", resp.headers.get("To").unwrap_or(""));
            headers.push(
                "CSeq",
                format!("{} ACK", invite.cseq().map(|c| c.0).unwrap_or(1)),
            );
            Request {
                method: Method::Ack,
                uri: invite.uri.clone(),
                headers,
                body: vec![],
            }
            .to_bytes()
        };
        if let Some(bytes) = tsx.handle_response(now, code, ack_for_failure) {
            self.transmits.push_back(Transmit {
                to: peer,
                payload: bytes,
            });
        }
        if tsx.state == InviteState::Terminated {
            self.client_invite.remove(branch);
        }
        self.schedule(TimerOwner::ClientInvite(branch.to_string()));
        match code {
            100 => {}
            101..=199 => self.events.push_back(SipEvent::Outbound {
                call,
                code,
                sdp: None,
            }),
            200..=299 => {
                let Some(d) = self.calls.get_mut(&call) else {
                    return;
                };
                if d.state == DialogState::Confirmed {
                    return;
                }
                // The dialog is established: the callee's tag, target and route set (§12.1.2).
                let to = resp.headers.get("To").unwrap_or("").to_string();
                d.remote_tag = NameAddr::parse(&to)
                    .and_then(|n| n.tag().map(String::from))
                    .unwrap_or_default();
                d.remote_uri = to;
                if let Some(c) = resp
                    .headers
                    .list("Contact")
                    .first()
                    .and_then(|c| NameAddr::parse(c))
                {
                    d.remote_target = c.uri;
                }
                d.route_set = resp
                    .headers
                    .list("Record-Route")
                    .into_iter()
                    .rev()
                    .map(String::from)
                    .collect();
                d.state = DialogState::Confirmed;
                let ack = self.build_ack_for_2xx(call);
                if let Some(d) = self.calls.get_mut(&call)
                    && let Some(o) = d.outbound.as_mut()
                {
                    o.ack = ack.clone();
                }
                if let Some(ack) = ack {
                    self.transmits.push_back(Transmit {
                        to: peer,
                        payload: ack,
                    });
                }
                self.events.push_back(SipEvent::Outbound {
                    call,
                    code,
                    sdp: Some(resp.body.clone()),
                });
            }
            _ => {
                self.remove_call(call);
                self.events.push_back(SipEvent::Outbound {
                    call,
                    code,
                    sdp: None,
                });
            }
        }
    }

    /// The ACK for a 2xx: a new transaction-less request in the dialog (§13.2.2.4).
    fn build_ack_for_2xx(&mut self, call: CallHandle) -> Option<Vec<u8>> {
        let branch = format!("z9hG4bK{}", self.random_token());
        let d = self.calls.get(&call)?;
        let cseq = d.invite.cseq().map(|c| c.0).unwrap_or(1);
        Some(dialog_request(d, self.cfg.local_addr, &branch, Method::Ack, cseq).to_bytes())
    }

    /// Our outbound call a response belongs to (by Call-ID and our From tag).
    fn outbound_for(&self, resp: &Response) -> Option<CallHandle> {
        let call_id = resp.headers.get("Call-ID")?;
        let tag = NameAddr::parse(resp.headers.get("From")?)?
            .tag()?
            .to_string();
        self.by_local_tag.get(&(call_id.to_string(), tag)).copied()
    }

    /// Places a call: INVITE `uri` (sent to `peer`) with our SDP offer, from `from_user`.
    /// Progress and the answer arrive as [`SipEvent::Outbound`].
    pub fn invite(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        uri: &str,
        from_user: &str,
        sdp: Vec<u8>,
    ) -> CallHandle {
        let call = CallHandle(self.next_handle);
        self.next_handle += 1;
        let local = self.cfg.local_addr;
        let call_id = format!("{}@{}", self.random_token(), local.ip());
        let local_tag = self.random_token();
        let branch = format!("z9hG4bK{}", self.random_token());
        let local_uri = format!("<sip:{from_user}@{}>", local.ip());
        let mut headers = Headers::new();
        headers.push("Via", format!("SIP/2.0/UDP {local};branch={branch};rport"));
        headers.push("Max-Forwards", "70");
        headers.push("From", format!("{local_uri};tag={local_tag}"));
        headers.push("To", format!("<{uri}>"));
        headers.push("Call-ID", call_id.clone());
        headers.push("CSeq", "1 INVITE");
        headers.push("Contact", format!("<sip:ivr@{local}>"));
        headers.push("Allow", ALLOW);
        headers.push("User-Agent", self.cfg.user_agent.clone());
        headers.push("Content-Type", "application/sdp");
        let req = Request {
            method: Method::Invite,
            uri: uri.to_string(),
            headers,
            body: sdp,
        };
        let bytes = req.to_bytes();
        let dialog = Dialog {
            call_id: call_id.clone(),
            local_tag: local_tag.clone(),
            remote_tag: String::new(),
            local_uri,
            remote_uri: format!("<{uri}>"),
            remote_target: uri.to_string(),
            route_set: vec![],
            local_cseq: 1,
            remote_cseq: 0,
            peer,
            state: DialogState::Early,
            invite: req,
            invite_key: TsxKey {
                branch: branch.clone(),
                sent_by: String::new(),
                invite: true,
                cancel: false,
            },
            reinvite_pending: false,
            ok_retransmit: None,
            bye_after_ack: false,
            outbound: Some(Outbound {
                branch: branch.clone(),
                ack: None,
            }),
        };
        self.by_local_tag.insert((call_id, local_tag), call);
        self.calls.insert(call, dialog);
        let tsx = ClientInviteTsx::new(now, &self.cfg.tsx, peer, bytes.clone());
        self.client_invite.insert(branch.clone(), (tsx, call));
        self.transmits.push_back(Transmit {
            to: peer,
            payload: bytes,
        });
        self.schedule(TimerOwner::ClientInvite(branch));
        call
    }

    /// Gives up on a call we placed that is not answered yet (§9.1).
    fn cancel_outbound(&mut self, now: Instant, call: CallHandle) {
        let Some(d) = self.calls.get(&call) else {
            return;
        };
        let Some(o) = &d.outbound else { return };
        let mut headers = Headers::new();
        for (n, v) in d.invite.headers.iter() {
            if matches!(
                n,
                "Via" | "From" | "To" | "Call-ID" | "Route" | "Max-Forwards"
            ) {
                headers.push(n, v);
            }
        }
        headers.push(
            "CSeq",
            format!("{} CANCEL", d.invite.cseq().map(|c| c.0).unwrap_or(1)),
        );
        let req = Request {
            method: Method::Cancel,
            uri: d.invite.uri.clone(),
            headers,
            body: vec![],
        };
        let key = format!("{}|CANCEL", o.branch);
        let bytes = req.to_bytes();
        let tsx = ClientNonInviteTsx::new(now, &self.cfg.tsx, d.peer, bytes.clone());
        self.transmits.push_back(Transmit {
            to: d.peer,
            payload: bytes,
        });
        self.client.insert(key.clone(), tsx);
        self.schedule(TimerOwner::Client(key));
    }

    // ---- timers ----

    fn deadline_of(&self, owner: &TimerOwner) -> Option<Instant> {
        match owner {
            TimerOwner::Server(k) => match self.server_invite.get(k) {
                Some((t, _)) => t.next_deadline(),
                None => self.server_other.get(k).and_then(|t| t.next_deadline()),
            },
            TimerOwner::Client(b) => self.client.get(b).and_then(|t| t.next_deadline()),
            TimerOwner::ClientInvite(b) => {
                self.client_invite.get(b).and_then(|t| t.0.next_deadline())
            }
            TimerOwner::Dialog(c) => self
                .calls
                .get(c)
                .and_then(|d| d.ok_retransmit.as_ref())
                .map(|r| r.next.min(r.give_up)),
        }
    }

    fn schedule(&mut self, owner: TimerOwner) {
        if let Some(at) = self.deadline_of(&owner) {
            self.timers.push(Reverse((at, owner)));
        }
    }

    fn on_server_timeout(&mut self, now: Instant, key: TsxKey) {
        let cfg = self.cfg.tsx;
        if let Some((tsx, call)) = self.server_invite.get_mut(&key) {
            let out = tsx.handle_timeout(now, &cfg);
            if let Some(bytes) = out.send {
                self.transmits.push_back(Transmit {
                    to: tsx.peer,
                    payload: bytes,
                });
            }
            if out.terminated {
                let call = *call;
                self.server_invite.remove(&key);
                if out.timed_out {
                    tracing::debug!(?call, "no ACK for a final response (Timer H)");
                }
            }
        } else if let Some(tsx) = self.server_other.get_mut(&key)
            && tsx.handle_timeout(now).terminated
        {
            self.server_other.remove(&key);
        }
        self.schedule(TimerOwner::Server(key));
    }

    fn on_client_timeout(&mut self, now: Instant, branch: String) {
        let cfg = self.cfg.tsx;
        if let Some(tsx) = self.client.get_mut(&branch) {
            let out = tsx.handle_timeout(now, &cfg);
            if let Some(bytes) = out.send {
                self.transmits.push_back(Transmit {
                    to: tsx.peer,
                    payload: bytes,
                });
            }
            if out.terminated {
                if out.timed_out {
                    tracing::debug!("in-dialog request not answered (Timer F)");
                    if let Some(call) = self.refers.remove(&branch) {
                        self.events
                            .push_back(SipEvent::ReferResult { call, code: 408 });
                    }
                }
                self.client.remove(&branch);
            }
        }
        self.schedule(TimerOwner::Client(branch));
    }

    fn on_client_invite_timeout(&mut self, now: Instant, branch: String) {
        if let Some((tsx, call)) = self.client_invite.get_mut(&branch) {
            let (call, peer) = (*call, tsx.peer);
            let out = tsx.handle_timeout(now);
            if let Some(bytes) = out.send {
                self.transmits.push_back(Transmit {
                    to: peer,
                    payload: bytes,
                });
            }
            if out.terminated {
                self.client_invite.remove(&branch);
                if out.timed_out {
                    // Timer B: nobody answered the INVITE at all.
                    self.remove_call(call);
                    self.events.push_back(SipEvent::Outbound {
                        call,
                        code: 408,
                        sdp: None,
                    });
                }
            }
        }
        self.schedule(TimerOwner::ClientInvite(branch));
    }

    fn on_dialog_timeout(&mut self, now: Instant, call: CallHandle) {
        let cfg = self.cfg.tsx;
        let Some(d) = self.calls.get_mut(&call) else {
            return;
        };
        let Some(r) = d.ok_retransmit.as_mut() else {
            return;
        };
        if now >= r.give_up {
            // §13.3.1.4: no ACK within 64·T1 — confirm and end the dialog with a BYE.
            d.ok_retransmit = None;
            let initial = d.state == DialogState::WaitAck;
            d.state = DialogState::Confirmed;
            self.send_bye(now, call);
            self.remove_call(call);
            if initial {
                self.events.push_back(SipEvent::Ended {
                    call,
                    reason: EndReason::AckTimeout,
                });
            }
            return;
        }
        if now >= r.next {
            r.interval = (r.interval * 2).min(cfg.t2);
            r.next = now + r.interval;
            self.transmits.push_back(Transmit {
                to: d.peer,
                payload: r.bytes.clone(),
            });
        }
        self.schedule(TimerOwner::Dialog(call));
    }

    // ---- building and sending ----

    fn random_token(&mut self) -> String {
        format!("{:016x}", self.rng.random::<u64>())
    }

    /// A response to `req`, with Via `received`/`rport` filled in (RFC 3581) and our Server.
    fn build_response(
        &self,
        from: SocketAddr,
        req: &Request,
        code: u16,
        to_tag: Option<&str>,
    ) -> Response {
        let mut resp = Response::to_request(req, code, reason_phrase(code), to_tag);
        if let Some(top) = resp.headers.get("Via").map(String::from) {
            let parts = super::message::split_list(&top);
            if let Some(first) = parts.first()
                && let Some(via) = Via::parse(first)
            {
                let mut v = first.to_string();
                if via.host.parse::<IpAddr>().ok() != Some(from.ip())
                    && via.params.get("received").is_none()
                {
                    v.push_str(&format!(";received={}", from.ip()));
                }
                if via.params.get("rport") == Some(None) {
                    v = v.replacen(";rport", &format!(";rport={}", from.port()), 1);
                }
                let mut all = vec![v];
                all.extend(parts[1..].iter().map(|s| s.to_string()));
                let mut headers = Headers::new();
                let mut replaced = false;
                for (n, val) in resp.headers.iter() {
                    if n == "Via" && !replaced {
                        headers.push(n, all.join(", "));
                        replaced = true;
                    } else {
                        headers.push(n, val);
                    }
                }
                resp.headers = headers;
            }
        }
        resp.headers.push("Server", self.cfg.user_agent.clone());
        resp
    }

    /// A response to the call's current INVITE, with our tag.
    fn response_for(&self, call: CallHandle, code: u16) -> Response {
        let d = &self.calls[&call];
        self.build_response(d.peer, &d.invite, code, Some(&d.local_tag))
    }

    fn add_contact(&self, resp: &mut Response) {
        resp.headers
            .push("Contact", format!("<sip:ivr@{}>", self.cfg.local_addr));
    }

    fn send_2xx(&mut self, now: Instant, call: CallHandle, sdp: Vec<u8>) {
        let mut resp = self.response_for(call, 200);
        self.add_contact(&mut resp);
        resp.headers.push("Allow", ALLOW);
        resp.headers.push("Content-Type", "application/sdp");
        resp.body = sdp;
        let bytes = resp.to_bytes();
        let cseq = resp.cseq().map(|c| c.0).unwrap_or(0);
        self.send_invite_response(now, call, resp);
        let t1 = self.cfg.tsx.t1;
        let give_up = now + self.cfg.tsx.timeout();
        if let Some(d) = self.calls.get_mut(&call) {
            d.ok_retransmit = Some(OkRetransmit {
                bytes,
                cseq,
                next: now + t1,
                interval: t1,
                give_up,
            });
        }
        self.schedule(TimerOwner::Dialog(call));
    }

    fn send_invite_response(&mut self, now: Instant, call: CallHandle, resp: Response) {
        let Some(d) = self.calls.get(&call) else {
            return;
        };
        let key = d.invite_key.clone();
        let cfg = self.cfg.tsx;
        if let Some((tsx, _)) = self.server_invite.get_mut(&key)
            && let Some(bytes) = tsx.send_response(now, &cfg, resp.code, resp.to_bytes())
        {
            self.transmits.push_back(Transmit {
                to: tsx.peer,
                payload: bytes,
            });
        }
        if resp.code >= 200 {
            let d = &self.calls[&call];
            self.by_invite.remove(&(
                d.call_id.clone(),
                d.remote_tag.clone(),
                d.invite.cseq().map(|c| c.0).unwrap_or(0),
            ));
        }
        self.schedule(TimerOwner::Server(key));
    }

    fn respond_non_invite(&mut self, now: Instant, to: SocketAddr, key: TsxKey, resp: Response) {
        let cfg = self.cfg.tsx;
        let tsx = self
            .server_other
            .entry(key.clone())
            .or_insert_with(|| ServerNonInviteTsx::new(to));
        if let Some(bytes) = tsx.send_response(now, &cfg, resp.code, resp.to_bytes()) {
            self.transmits.push_back(Transmit { to, payload: bytes });
        }
        self.schedule(TimerOwner::Server(key));
    }

    /// An error response in its own transaction (so retransmissions get the same answer).
    fn reply(
        &mut self,
        now: Instant,
        from: SocketAddr,
        key: TsxKey,
        req: &Request,
        e: &EndpointError,
    ) {
        if req.method == Method::Invite {
            // A refused INVITE still needs the INVITE machine: Timer G/H and the ACK.
            let tag = self.random_token();
            let resp = self.error_response(from, req, e, Some(&tag));
            let cfg = self.cfg.tsx;
            let mut tsx = ServerInviteTsx::new(from);
            if let Some(bytes) = tsx.send_response(now, &cfg, resp.code, resp.to_bytes()) {
                self.transmits.push_back(Transmit {
                    to: from,
                    payload: bytes,
                });
            }
            self.server_invite.insert(key.clone(), (tsx, None));
            self.schedule(TimerOwner::Server(key));
        } else {
            let resp = self.error_response(from, req, e, None);
            self.respond_non_invite(now, from, key, resp);
        }
    }

    /// A 400 for a request we could not parse: no transaction (we may not even have a key).
    fn reply_stateless(&mut self, from: SocketAddr, req: &Request, e: &EndpointError) {
        let resp = self.error_response(from, req, e, None);
        self.transmits.push_back(Transmit {
            to: from,
            payload: resp.to_bytes(),
        });
    }

    fn error_response(
        &self,
        from: SocketAddr,
        req: &Request,
        e: &EndpointError,
        to_tag: Option<&str>,
    ) -> Response {
        let mut resp = self.build_response(from, req, e.status(), to_tag);
        resp.reason = e.reason();
        self.decorate_error(&mut resp, e);
        resp
    }

    fn decorate_error(&self, resp: &mut Response, e: &EndpointError) {
        match e {
            EndpointError::Extension(ext) => resp.headers.push("Unsupported", ext.clone()),
            EndpointError::MethodNotAllowed => resp.headers.push("Allow", ALLOW),
            EndpointError::Info(info::InfoError::UnsupportedType(_)) => {
                resp.headers.push("Accept", info::CONTENT_TYPES.join(", "))
            }
            EndpointError::CSeqOrder | EndpointError::Pending => {
                resp.headers.push("Retry-After", "1")
            }
            _ => {}
        }
    }

    fn send_bye(&mut self, now: Instant, call: CallHandle) {
        self.send_in_dialog(now, call, Method::Bye, vec![]);
    }

    /// Sends a request inside the call's dialog in its own client transaction; returns the
    /// transaction's key (`branch|METHOD`).
    fn send_in_dialog(
        &mut self,
        now: Instant,
        call: CallHandle,
        method: Method,
        extra: Vec<(String, String)>,
    ) -> Option<String> {
        let branch = format!("z9hG4bK{}", self.random_token());
        let local = self.cfg.local_addr;
        let d = self.calls.get_mut(&call)?;
        d.local_cseq += 1;
        let mut req = dialog_request(d, local, &branch, method, d.local_cseq);
        for (n, v) in extra {
            req.headers.push(&n, v);
        }
        req.headers.push("User-Agent", self.cfg.user_agent.clone());
        // Next hop: the first route (loose routing) or the remote target; only IP literals can
        // be used without DNS, otherwise the address the INVITE came from.
        let hop = d
            .route_set
            .first()
            .and_then(|r| NameAddr::parse(r))
            .map(|n| n.uri)
            .unwrap_or_else(|| d.remote_target.clone());
        let to = Uri::parse(&hop)
            .and_then(|u| {
                let ip: IpAddr = u.host.trim_matches(['[', ']']).parse().ok()?;
                Some(SocketAddr::new(ip, u.port.unwrap_or(5060)))
            })
            .unwrap_or(d.peer);
        let key = format!("{branch}|{}", req.method);
        let bytes = req.to_bytes();
        let tsx = ClientNonInviteTsx::new(now, &self.cfg.tsx, to, bytes.clone());
        self.client.insert(key.clone(), tsx);
        self.transmits.push_back(Transmit { to, payload: bytes });
        self.schedule(TimerOwner::Client(key.clone()));
        Some(key)
    }

    /// Blind transfer (RFC 3515): asks the caller's side to call `refer_to`. The outcome
    /// arrives as [`SipEvent::ReferResult`]; the call stays up until the driver hangs up.
    pub fn refer(
        &mut self,
        now: Instant,
        call: CallHandle,
        refer_to: &str,
        extra: Vec<(String, String)>,
    ) {
        if self
            .calls
            .get(&call)
            .is_none_or(|d| d.state != DialogState::Confirmed)
        {
            self.events
                .push_back(SipEvent::ReferResult { call, code: 481 });
            return;
        }
        let mut headers = vec![
            ("Refer-To".to_string(), format!("<{refer_to}>")),
            (
                "Referred-By".to_string(),
                format!("<sip:ivr@{}>", self.cfg.local_addr),
            ),
        ];
        headers.extend(extra);
        if let Some(branch) = self.send_in_dialog(now, call, Method::Refer, headers) {
            self.refers.insert(branch, call);
        }
    }

    fn remove_call(&mut self, call: CallHandle) {
        if let Some(d) = self.calls.remove(&call) {
            self.by_local_tag
                .remove(&(d.call_id.clone(), d.local_tag.clone()));
            self.by_invite.remove(&(
                d.call_id,
                d.remote_tag,
                d.invite.cseq().map(|c| c.0).unwrap_or(0),
            ));
        }
    }
}

/// A request in a dialog (§12.2.1.1): our From and tag, their To, the dialog's route set,
/// sent to the remote target.
fn dialog_request(
    d: &Dialog,
    local: SocketAddr,
    branch: &str,
    method: Method,
    cseq: u32,
) -> Request {
    let mut headers = Headers::new();
    headers.push("Via", format!("SIP/2.0/UDP {local};branch={branch};rport"));
    headers.push("Max-Forwards", "70");
    headers.push("From", format!("{};tag={}", d.local_uri, d.local_tag));
    headers.push("To", d.remote_uri.clone());
    headers.push("Call-ID", d.call_id.clone());
    headers.push("CSeq", format!("{cseq} {method}"));
    for r in &d.route_set {
        headers.push("Route", r.clone());
    }
    Request {
        method,
        uri: d.remote_target.clone(),
        headers,
        body: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const CALLER: &str = "127.0.0.1:5061";

    fn ep() -> Endpoint {
        Endpoint::new(
            EndpointConfig {
                local_addr: "127.0.0.1:5060".parse().unwrap(),
                user_agent: "topup-ivr-test".into(),
                tsx: TsxConfig::default(),
            },
            7,
        )
    }

    fn caller() -> SocketAddr {
        CALLER.parse().unwrap()
    }

    fn invite(branch: &str, call_id: &str) -> String {
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
        format!(
            "INVITE sip:echo@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch={branch};rport\r\n\
From: \"Ann\" <sip:5551234@127.0.0.1>;tag=ft\r\nTo: <sip:echo@127.0.0.1:5060>\r\nCall-ID: {call_id}\r\n\
CSeq: 1 INVITE\r\nContact: <sip:ann@{CALLER}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
    }

    /// An in-dialog request from the caller.
    fn in_dialog(
        method: &str,
        cseq: u32,
        to_tag: &str,
        call_id: &str,
        extra: &str,
        body: &str,
    ) -> String {
        format!(
            "{method} sip:ivr@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK{method}{cseq}\r\n\
From: <sip:5551234@127.0.0.1>;tag=ft\r\nTo: <sip:echo@127.0.0.1:5060>;tag={to_tag}\r\nCall-ID: {call_id}\r\n\
CSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn responses(ep: &mut Endpoint) -> Vec<Response> {
        std::iter::from_fn(|| ep.poll_transmit())
            .filter_map(|t| match Message::parse(&t.payload) {
                Ok(Message::Response(r)) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn sent(ep: &mut Endpoint) -> Vec<Message> {
        std::iter::from_fn(|| ep.poll_transmit())
            .map(|t| Message::parse(&t.payload).expect("we send valid SIP"))
            .collect()
    }

    fn codes(rs: &[Response]) -> Vec<u16> {
        rs.iter().map(|r| r.code).collect()
    }

    fn events(ep: &mut Endpoint) -> Vec<SipEvent> {
        std::iter::from_fn(|| ep.poll_event()).collect()
    }

    /// INVITE + answer + ACK; returns (call, our tag).
    fn established(ep: &mut Endpoint, t0: Instant) -> (CallHandle, String) {
        ep.handle_datagram(t0, caller(), invite("z9hG4bK1", "cid1").as_bytes());
        let call = match events(ep).pop() {
            Some(SipEvent::Incoming(i)) => i.call,
            e => panic!("{e:?}"),
        };
        ep.answer(t0, call, b"v=0\r\n".to_vec());
        let rs = responses(ep);
        let tag = rs[1]
            .headers
            .get("To")
            .and_then(NameAddr::parse)
            .unwrap()
            .tag()
            .unwrap()
            .to_string();
        let ack = in_dialog("ACK", 1, &tag, "cid1", "", "");
        ep.handle_datagram(t0 + Duration::from_millis(5), caller(), ack.as_bytes());
        assert!(matches!(
            events(ep).as_slice(),
            [SipEvent::Confirmed { .. }]
        ));
        (call, tag)
    }

    /// Runs all timers to completion (2 minutes of simulated time).
    fn drain(ep: &mut Endpoint, t0: Instant) -> Vec<Message> {
        let mut out = vec![];
        while let Some(at) = ep.poll_timeout() {
            assert!(at < t0 + Duration::from_secs(120), "timers run forever");
            ep.handle_timeout(at);
            out.extend(sent(ep));
        }
        out
    }

    #[test]
    fn invite_gets_trying_then_the_driver_sees_the_call() {
        let mut ep = ep();
        let t0 = Instant::now();
        ep.handle_datagram(t0, caller(), invite("z9hG4bK1", "cid1").as_bytes());
        let rs = responses(&mut ep);
        assert_eq!(codes(&rs), [100]);
        let via = rs[0].headers.get("Via").unwrap();
        assert!(via.contains("rport=5061"), "{via}");
        match events(&mut ep).as_slice() {
            [SipEvent::Incoming(i)] => {
                assert_eq!(i.dialled, "echo");
                assert_eq!(i.caller, "5551234");
                assert_eq!(i.caller_display.as_deref(), Some("Ann"));
                assert!(i.offer.starts_with(b"v=0"));
            }
            e => panic!("{e:?}"),
        }
        // A retransmitted INVITE gets the 100 again and no second call.
        ep.handle_datagram(t0, caller(), invite("z9hG4bK1", "cid1").as_bytes());
        assert_eq!(codes(&responses(&mut ep)), [100]);
        assert!(events(&mut ep).is_empty());
    }

    #[test]
    fn answered_call_retransmits_200_until_ack() {
        let mut ep = ep();
        let t0 = Instant::now();
        ep.handle_datagram(t0, caller(), invite("z9hG4bK1", "cid1").as_bytes());
        let SipEvent::Incoming(inc) = events(&mut ep).remove(0) else {
            panic!()
        };
        responses(&mut ep);
        ep.answer(t0, inc.call, b"v=0\r\n".to_vec());
        let rs = responses(&mut ep);
        assert_eq!(codes(&rs), [200]);
        assert_eq!(rs[0].headers.get("Content-Type"), Some("application/sdp"));
        assert!(rs[0].headers.get("Contact").is_some());
        let tag = NameAddr::parse(rs[0].headers.get("To").unwrap())
            .unwrap()
            .tag()
            .unwrap()
            .to_string();
        // Retransmits at T1 and 2·T1 later.
        let t1 = ep.poll_timeout().unwrap();
        assert_eq!(t1 - t0, Duration::from_millis(500));
        ep.handle_timeout(t1);
        assert_eq!(codes(&responses(&mut ep)), [200]);
        let t2 = ep.poll_timeout().unwrap();
        assert_eq!(t2 - t1, Duration::from_millis(1000));
        ep.handle_datagram(
            t2 - Duration::from_millis(1),
            caller(),
            in_dialog("ACK", 1, &tag, "cid1", "", "").as_bytes(),
        );
        assert!(matches!(
            events(&mut ep).as_slice(),
            [SipEvent::Confirmed { .. }]
        ));
        // No more 200s; only the INVITE transaction's Timer L remains, then nothing.
        let later = drain(&mut ep, t0);
        assert!(later.is_empty(), "{later:?}");
        assert_eq!(ep.transactions(), 0);
        assert_eq!(ep.active_calls(), 1);
    }

    #[test]
    fn missing_ack_ends_the_call_with_bye_after_64_t1() {
        let mut ep = ep();
        let t0 = Instant::now();
        ep.handle_datagram(t0, caller(), invite("z9hG4bK1", "cid1").as_bytes());
        let SipEvent::Incoming(inc) = events(&mut ep).remove(0) else {
            panic!()
        };
        ep.answer(t0, inc.call, b"v=0\r\n".to_vec());
        responses(&mut ep);
        let mut oks = 0;
        let mut bye_at = None;
        while let Some(at) = ep.poll_timeout() {
            ep.handle_timeout(at);
            for m in sent(&mut ep) {
                match m {
                    Message::Response(r) if r.code == 200 => oks += 1,
                    Message::Request(r) if r.method == Method::Bye => {
                        bye_at.get_or_insert(at - t0);
                    }
                    _ => {}
                }
            }
            if bye_at.is_some() {
                break;
            }
        }
        assert_eq!(bye_at, Some(Duration::from_secs(32)));
        assert!((8..=11).contains(&oks), "{oks} retransmissions");
        assert!(matches!(
            events(&mut ep).as_slice(),
            [SipEvent::Ended {
                reason: EndReason::AckTimeout,
                ..
            }]
        ));
        assert_eq!(ep.active_calls(), 0);
    }

    #[test]
    fn cancel_before_answer_gets_200_and_487() {
        let mut ep = ep();
        let t0 = Instant::now();
        ep.handle_datagram(t0, caller(), invite("z9hG4bK1", "cid1").as_bytes());
        events(&mut ep);
        responses(&mut ep);
        let cancel = format!(
            "CANCEL sip:echo@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK1\r\n\
From: \"Ann\" <sip:5551234@127.0.0.1>;tag=ft\r\nTo: <sip:echo@127.0.0.1:5060>\r\nCall-ID: cid1\r\n\
CSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        ep.handle_datagram(t0, caller(), cancel.as_bytes());
        let rs = responses(&mut ep);
        assert_eq!(codes(&rs), [200, 487]);
        assert_eq!(rs[0].cseq(), Some((1, Method::Cancel)));
        assert_eq!(rs[1].cseq(), Some((1, Method::Invite)));
        assert!(matches!(
            events(&mut ep).as_slice(),
            [SipEvent::Ended {
                reason: EndReason::Cancelled,
                ..
            }]
        ));
        // The caller ACKs the 487 (same branch); it is absorbed, and everything drains.
        let tag = NameAddr::parse(rs[1].headers.get("To").unwrap())
            .unwrap()
            .tag()
            .unwrap()
            .to_string();
        let ack = in_dialog("ACK", 1, &tag, "cid1", "", "")
            .replace("branch=z9hG4bKACK1", "branch=z9hG4bK1");
        ep.handle_datagram(t0, caller(), ack.as_bytes());
        assert!(
            drain(&mut ep, t0).is_empty(),
            "no 487 retransmission after the ACK"
        );
        assert_eq!((ep.transactions(), ep.active_calls()), (0, 0));
        // A CANCEL for nothing is 481.
        ep.handle_datagram(
            t0,
            caller(),
            cancel.replace("z9hG4bK1", "z9hG4bK9").as_bytes(),
        );
        assert_eq!(codes(&responses(&mut ep)), [481]);
    }

    #[test]
    fn bye_ends_the_call_and_unknown_dialogs_get_481() {
        let mut ep = ep();
        let t0 = Instant::now();
        let (_call, tag) = established(&mut ep, t0);
        ep.handle_datagram(
            t0,
            caller(),
            in_dialog("BYE", 9, "nope", "cid1", "", "").as_bytes(),
        );
        assert_eq!(codes(&responses(&mut ep)), [481]);
        ep.handle_datagram(
            t0,
            caller(),
            in_dialog("BYE", 2, &tag, "cid1", "", "").as_bytes(),
        );
        assert_eq!(codes(&responses(&mut ep)), [200]);
        assert!(matches!(
            events(&mut ep).as_slice(),
            [SipEvent::Ended {
                reason: EndReason::RemoteBye,
                ..
            }]
        ));
        // Retransmitted BYE: same 200 from the transaction, no new event.
        ep.handle_datagram(
            t0,
            caller(),
            in_dialog("BYE", 2, &tag, "cid1", "", "").as_bytes(),
        );
        assert_eq!(codes(&responses(&mut ep)), [200]);
        assert!(events(&mut ep).is_empty());
        assert_eq!(ep.active_calls(), 0);
    }

    #[test]
    fn info_carries_digits_and_bad_bodies_are_refused() {
        let mut ep = ep();
        let t0 = Instant::now();
        let (_, tag) = established(&mut ep, t0);
        let relay = "Content-Type: application/dtmf-relay\r\n";
        ep.handle_datagram(
            t0,
            caller(),
            in_dialog(
                "INFO",
                2,
                &tag,
                "cid1",
                relay,
                "Signal=5\r\nDuration=160\r\n",
            )
            .as_bytes(),
        );
        assert_eq!(codes(&responses(&mut ep)), [200]);
        match events(&mut ep).as_slice() {
            [SipEvent::Dtmf { digit, .. }] => assert_eq!(digit.as_char(), '5'),
            e => panic!("{e:?}"),
        }
        ep.handle_datagram(
            t0,
            caller(),
            in_dialog(
                "INFO",
                3,
                &tag,
                "cid1",
                "Content-Type: application/dtmf\r\n",
                "#",
            )
            .as_bytes(),
        );
        assert_eq!(codes(&responses(&mut ep)), [200]);
        assert_eq!(events(&mut ep).len(), 1);
        ep.handle_datagram(
            t0,
            caller(),
            in_dialog("INFO", 4, &tag, "cid1", relay, "Signal=xyz").as_bytes(),
        );
        assert_eq!(codes(&responses(&mut ep)), [400]);
        let rs = {
            ep.handle_datagram(
                t0,
                caller(),
                in_dialog("INFO", 5, &tag, "cid1", "Content-Type: text/plain\r\n", "5").as_bytes(),
            );
            responses(&mut ep)
        };
        assert_eq!(codes(&rs), [415]);
        assert!(
            rs[0]
                .headers
                .get("Accept")
                .unwrap()
                .contains("application/dtmf-relay")
        );
        ep.handle_datagram(
            t0,
            caller(),
            in_dialog("INFO", 6, &tag, "cid1", "", "").as_bytes(),
        );
        assert_eq!(
            codes(&responses(&mut ep)),
            [200],
            "empty INFO is a keep-alive"
        );
        ep.handle_datagram(
            t0,
            caller(),
            in_dialog("INFO", 7, "other", "cid1", relay, "Signal=1").as_bytes(),
        );
        assert_eq!(codes(&responses(&mut ep)), [481]);
        assert!(events(&mut ep).is_empty());
    }

    #[test]
    fn options_is_answered_with_capabilities() {
        let mut ep = ep();
        let t0 = Instant::now();
        let opt = format!(
            "OPTIONS sip:ivr@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKo\r\n\
From: <sip:mon@127.0.0.1>;tag=m\r\nTo: <sip:ivr@127.0.0.1>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        ep.handle_datagram(t0, caller(), opt.as_bytes());
        let rs = responses(&mut ep);
        assert_eq!(codes(&rs), [200]);
        assert_eq!(rs[0].headers.get("Allow"), Some(ALLOW));
        assert!(events(&mut ep).is_empty());
        // A node being stopped tells load balancers to look elsewhere.
        ep.set_draining(true);
        ep.handle_datagram(t0, caller(), opt.replace("z9hG4bKo", "z9hG4bKp").as_bytes());
        let rs = responses(&mut ep);
        assert_eq!(codes(&rs), [503]);
        assert_eq!(rs[0].headers.get("Retry-After"), Some("30"));
    }

    #[test]
    fn malformed_requests_get_400_and_garbage_is_dropped() {
        let mut ep = ep();
        let t0 = Instant::now();
        let no_callid = invite("z9hG4bK1", "x").replace("Call-ID: x\r\n", "");
        ep.handle_datagram(t0, caller(), no_callid.as_bytes());
        // The 400 cannot carry the Call-ID it lacks, so read it as text.
        let raw: Vec<String> = std::iter::from_fn(|| ep.poll_transmit())
            .map(|t| String::from_utf8(t.payload).unwrap())
            .collect();
        assert_eq!(raw.len(), 1);
        assert!(
            raw[0].starts_with("SIP/2.0 400 Bad Request - missing Call-ID header\r\n"),
            "{}",
            raw[0]
        );
        assert!(raw[0].contains("Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK1;rport=5061"));
        ep.handle_datagram(t0, caller(), b"\x00\x01garbage\r\n\r\n");
        assert!(responses(&mut ep).is_empty());
        assert!(events(&mut ep).is_empty());
        assert_eq!(ep.active_calls(), 0);
        // A wrong Content-Length is a 400 too.
        let short = invite("z9hG4bK2", "y").replace("Content-Length: ", "Content-Length: 9");
        ep.handle_datagram(t0, caller(), short.as_bytes());
        assert_eq!(codes(&responses(&mut ep)), [400]);
    }

    #[test]
    fn unsupported_requests_get_their_status_codes() {
        let mut ep = ep();
        let t0 = Instant::now();
        let req100rel = invite("z9hG4bK1", "r").replace(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nRequire: 100rel\r\n",
        );
        ep.handle_datagram(t0, caller(), req100rel.as_bytes());
        let rs = responses(&mut ep);
        assert_eq!(codes(&rs), [420]);
        assert_eq!(rs[0].headers.get("Unsupported"), Some("100rel"));
        let reg = invite("z9hG4bK2", "g")
            .replace("INVITE sip", "REGISTER sip")
            .replace("1 INVITE", "1 REGISTER");
        ep.handle_datagram(t0, caller(), reg.as_bytes());
        let rs = responses(&mut ep);
        assert_eq!(codes(&rs), [405]);
        assert_eq!(rs[0].headers.get("Allow"), Some(ALLOW));
        let tel = invite("z9hG4bK3", "t")
            .replace("INVITE sip:echo@127.0.0.1:5060", "INVITE tel:+15551234");
        ep.handle_datagram(t0, caller(), tel.as_bytes());
        assert_eq!(codes(&responses(&mut ep)), [416]);
        let hops = invite("z9hG4bK4", "h").replace("Max-Forwards: 70", "Max-Forwards: 0");
        ep.handle_datagram(t0, caller(), hops.as_bytes());
        assert_eq!(codes(&responses(&mut ep)), [483]);
        // The same INVITE arriving by another path (new branch) is merged → 482.
        ep.handle_datagram(t0, caller(), invite("z9hG4bK5", "m").as_bytes());
        ep.handle_datagram(t0, caller(), invite("z9hG4bK6", "m").as_bytes());
        assert_eq!(codes(&responses(&mut ep)), [100, 482]);
        assert_eq!(ep.active_calls(), 1);
        assert_eq!(events(&mut ep).len(), 1);
    }

    #[test]
    fn reinvite_is_offered_to_the_driver_and_answered() {
        let mut ep = ep();
        let t0 = Instant::now();
        let (call, tag) = established(&mut ep, t0);
        let reinv = in_dialog(
            "INVITE",
            2,
            &tag,
            "cid1",
            "Content-Type: application/sdp\r\n",
            "v=0\r\n",
        );
        ep.handle_datagram(t0, caller(), reinv.as_bytes());
        assert_eq!(codes(&responses(&mut ep)), [100]);
        assert!(matches!(
            events(&mut ep).as_slice(),
            [SipEvent::Reoffer { .. }]
        ));
        // A second one while the first is open: 491.
        ep.handle_datagram(
            t0,
            caller(),
            in_dialog("INVITE", 3, &tag, "cid1", "", "").as_bytes(),
        );
        assert_eq!(codes(&responses(&mut ep)), [491]);
        let ack491 =
            in_dialog("ACK", 3, &tag, "cid1", "", "").replace("z9hG4bKACK3", "z9hG4bKINVITE3");
        ep.handle_datagram(t0, caller(), ack491.as_bytes());
        ep.answer_reoffer(t0, call, Ok(b"v=0\r\n".to_vec()));
        let rs = responses(&mut ep);
        assert_eq!(codes(&rs), [200]);
        assert_eq!(rs[0].cseq(), Some((2, Method::Invite)));
        ep.handle_datagram(
            t0,
            caller(),
            in_dialog("ACK", 2, &tag, "cid1", "", "").as_bytes(),
        );
        assert!(
            events(&mut ep).is_empty(),
            "re-INVITE ACK is not a new confirmation"
        );
        assert!(drain(&mut ep, t0).is_empty());
    }

    #[test]
    fn hangup_sends_bye_in_the_dialog_and_stops_on_200() {
        let mut ep = ep();
        let t0 = Instant::now();
        let (call, tag) = established(&mut ep, t0);
        ep.hangup(t0, call);
        let msgs = sent(&mut ep);
        let [Message::Request(bye)] = msgs.as_slice() else {
            panic!("{msgs:?}")
        };
        assert_eq!(bye.method, Method::Bye);
        assert_eq!(bye.uri, format!("sip:ann@{CALLER}"));
        assert_eq!(bye.from().unwrap().tag(), Some(tag.as_str()));
        assert_eq!(bye.to().unwrap().tag(), Some("ft"));
        assert_eq!(bye.call_id(), "cid1");
        assert_eq!(ep.active_calls(), 0);
        assert_eq!(ep.awaiting_answers(), 1);
        // The caller answers 200: no retransmission of the BYE follows.
        let mut ok = Response::to_request(bye, 200, "OK", None);
        ok.headers.push("Content-Length", "0");
        ep.handle_datagram(t0 + Duration::from_millis(3), caller(), &ok.to_bytes());
        // The BYE's transaction stays for Timer K (and the INVITE's for Timer L), but
        // nothing is awaited any more.
        assert_eq!((ep.transactions(), ep.awaiting_answers()), (2, 0));
        assert!(drain(&mut ep, t0).is_empty());
        assert_eq!(ep.transactions(), 0);
    }

    #[test]
    fn behind_a_record_routing_proxy_the_route_set_is_returned_and_used() {
        let mut ep = ep();
        let t0 = Instant::now();
        let inv = invite("z9hG4bK1", "cid1").replace(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 69\r\nRecord-Route: <sip:10.0.0.1;lr;ftag=ft>\r\nRecord-Route: <sip:10.0.0.2;lr>\r\n",
        );
        ep.handle_datagram(t0, caller(), inv.as_bytes());
        let SipEvent::Incoming(inc) = events(&mut ep).remove(0) else {
            panic!()
        };
        ep.answer(t0, inc.call, b"v=0\r\n".to_vec());
        let rs = responses(&mut ep);
        assert_eq!(codes(&rs), [100, 200]);
        // The 200 carries the route set in order (RFC 3261 12.1.1); the 100 does not need it.
        assert_eq!(
            rs[1].headers.list("Record-Route"),
            ["<sip:10.0.0.1;lr;ftag=ft>", "<sip:10.0.0.2;lr>"]
        );
        let tag = NameAddr::parse(rs[1].headers.get("To").unwrap())
            .unwrap()
            .tag()
            .unwrap()
            .to_string();
        ep.handle_datagram(
            t0,
            caller(),
            in_dialog("ACK", 1, &tag, "cid1", "", "").as_bytes(),
        );
        // Our BYE goes through the proxies, first one first.
        ep.hangup(t0, inc.call);
        let msgs = sent(&mut ep);
        let [Message::Request(bye)] = msgs.as_slice() else {
            panic!("{msgs:?}")
        };
        assert_eq!(
            bye.headers.list("Route"),
            ["<sip:10.0.0.1;lr;ftag=ft>", "<sip:10.0.0.2;lr>"]
        );
    }

    #[test]
    fn hangup_before_the_ack_waits_for_it() {
        let mut ep = ep();
        let t0 = Instant::now();
        ep.handle_datagram(t0, caller(), invite("z9hG4bK1", "cid1").as_bytes());
        let SipEvent::Incoming(inc) = events(&mut ep).remove(0) else {
            panic!()
        };
        ep.answer(t0, inc.call, b"v=0\r\n".to_vec());
        let tag = NameAddr::parse(responses(&mut ep)[1].headers.get("To").unwrap())
            .unwrap()
            .tag()
            .unwrap()
            .to_string();
        ep.hangup(t0, inc.call);
        assert!(sent(&mut ep).is_empty(), "no BYE before the ACK");
        ep.handle_datagram(
            t0,
            caller(),
            in_dialog("ACK", 1, &tag, "cid1", "", "").as_bytes(),
        );
        let msgs = sent(&mut ep);
        assert!(matches!(msgs.as_slice(), [Message::Request(r)] if r.method == Method::Bye));
        assert!(
            events(&mut ep).is_empty(),
            "the driver asked for it: no Ended event"
        );
    }

    #[test]
    fn reject_sends_the_final_status_with_retry_after() {
        let mut ep = ep();
        let t0 = Instant::now();
        ep.handle_datagram(t0, caller(), invite("z9hG4bK1", "cid1").as_bytes());
        let SipEvent::Incoming(inc) = events(&mut ep).remove(0) else {
            panic!()
        };
        responses(&mut ep);
        ep.reject(t0, inc.call, 503, Some(5));
        let rs = responses(&mut ep);
        assert_eq!(codes(&rs), [503]);
        assert_eq!(rs[0].headers.get("Retry-After"), Some("5"));
        assert_eq!(ep.active_calls(), 0);
        // Without an ACK the 503 is retransmitted (Timer G) until Timer H.
        let again = drain(&mut ep, t0);
        assert!(again.len() >= 5, "{}", again.len());
        assert_eq!(ep.transactions(), 0);
    }

    /// Mutated copies of real requests (bytes flipped, cut, duplicated) never panic the
    /// endpoint, and it stays able to take a clean call afterwards.
    #[test]
    fn mutated_messages_never_panic_the_endpoint() {
        let mut ep = ep();
        let t0 = Instant::now();
        let seeds = [
            invite("z9hG4bK1", "m1"),
            in_dialog("BYE", 2, "x", "m1", "", ""),
            in_dialog(
                "INFO",
                3,
                "x",
                "m1",
                "Content-Type: application/dtmf-relay\r\n",
                "Signal=5\r\n",
            ),
            in_dialog(
                "INVITE",
                4,
                "x",
                "m1",
                "Content-Type: application/sdp\r\n",
                "v=0\r\n",
            ),
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..20_000u32 {
            let mut m = seeds[i as usize % seeds.len()].as_bytes().to_vec();
            for _ in 0..(rnd() % 8) {
                let pos = (rnd() as usize) % m.len().max(1);
                match rnd() % 4 {
                    0 => m[pos] = rnd() as u8,
                    1 => m.truncate(pos),
                    2 => m.insert(pos, b"\r\n:;,<>\"= "[(rnd() % 10) as usize]),
                    _ => {
                        let end = (pos + (rnd() as usize % 16)).min(m.len());
                        let chunk = m[pos..end].to_vec();
                        m.splice(pos..pos, chunk);
                    }
                }
                if m.is_empty() {
                    break;
                }
            }
            let now = t0 + Duration::from_millis(i as u64);
            ep.handle_datagram(now, caller(), &m);
            while ep.poll_transmit().is_some() {}
            while let Some(ev) = ep.poll_event() {
                if let SipEvent::Incoming(inc) = ev {
                    ep.reject(now, inc.call, 486, None);
                }
            }
            if let Some(at) = ep.poll_timeout()
                && at <= now
            {
                ep.handle_timeout(now);
            }
        }
        let later = t0 + Duration::from_secs(100);
        ep.handle_timeout(later);
        ep.handle_datagram(later, caller(), invite("z9hG4bKclean", "clean").as_bytes());
        assert!(
            events(&mut ep)
                .iter()
                .any(|e| matches!(e, SipEvent::Incoming(_)))
        );
    }

    #[test]
    fn refer_transfers_in_the_dialog_and_reports_the_answer() {
        let mut ep = ep();
        let t0 = Instant::now();
        let (call, tag) = established(&mut ep, t0);
        ep.refer(
            t0,
            call,
            "sip:agents@10.0.0.9?X-Escalation-Id=e1",
            vec![("X-Escalation-Id".into(), "e1".into())],
        );
        let msgs = sent(&mut ep);
        let [Message::Request(refer)] = msgs.as_slice() else {
            panic!("{msgs:?}")
        };
        assert_eq!(refer.method, Method::Refer);
        assert_eq!(
            refer.headers.get("Refer-To"),
            Some("<sip:agents@10.0.0.9?X-Escalation-Id=e1>")
        );
        assert_eq!(refer.headers.get("X-Escalation-Id"), Some("e1"));
        assert_eq!(refer.from().unwrap().tag(), Some(tag.as_str()));
        let accepted = Response::to_request(refer, 202, "Accepted", None);
        ep.handle_datagram(t0, caller(), &accepted.to_bytes());
        assert!(matches!(
            events(&mut ep).as_slice(),
            [SipEvent::ReferResult { code: 202, .. }]
        ));
        // The transfer's progress NOTIFY is acknowledged.
        let notify = in_dialog(
            "NOTIFY",
            2,
            &tag,
            "cid1",
            "Event: refer\r\nContent-Type: message/sipfrag\r\n",
            "SIP/2.0 200 OK",
        );
        ep.handle_datagram(t0, caller(), notify.as_bytes());
        assert_eq!(codes(&responses(&mut ep)), [200]);
    }

    #[test]
    fn an_unanswered_refer_reports_a_timeout() {
        let mut ep = ep();
        let t0 = Instant::now();
        let (call, _) = established(&mut ep, t0);
        ep.refer(t0, call, "sip:agents@10.0.0.9", vec![]);
        sent(&mut ep);
        drain(&mut ep, t0);
        assert!(matches!(
            events(&mut ep).as_slice(),
            [SipEvent::ReferResult { code: 408, .. }]
        ));
    }

    fn gateway() -> SocketAddr {
        "127.0.0.1:5090".parse().unwrap()
    }

    /// The gateway's response to the INVITE we sent.
    fn answer_invite(invite: &Request, code: u16, tag: &str, body: &str) -> Vec<u8> {
        let mut r = Response::to_request(invite, code, reason_phrase(code), Some(tag));
        if code == 200 {
            r.headers.push("Contact", "<sip:gw@127.0.0.1:5090>");
            r.headers.push("Content-Type", "application/sdp");
            r.body = body.as_bytes().to_vec();
        }
        r.to_bytes()
    }

    fn placed(ep: &mut Endpoint, t0: Instant) -> (CallHandle, Request) {
        let call = ep.invite(
            t0,
            gateway(),
            "sip:+447911123456@127.0.0.1:5090",
            "+12015550100",
            b"v=0\r\n".to_vec(),
        );
        let Some(Message::Request(inv)) = ep
            .poll_transmit()
            .map(|t| Message::parse(&t.payload).unwrap())
        else {
            panic!()
        };
        (call, inv)
    }

    #[test]
    fn a_placed_call_rings_answers_and_is_acknowledged() {
        let mut ep = ep();
        let t0 = Instant::now();
        let (call, inv) = placed(&mut ep, t0);
        assert_eq!(inv.method, Method::Invite);
        assert_eq!(inv.uri, "sip:+447911123456@127.0.0.1:5090");
        assert!(inv.from().unwrap().tag().is_some());
        ep.handle_datagram(t0, gateway(), &answer_invite(&inv, 180, "gw1", ""));
        assert!(matches!(
            events(&mut ep).as_slice(),
            [SipEvent::Outbound {
                code: 180,
                sdp: None,
                ..
            }]
        ));
        assert_eq!(
            ep.poll_timeout(),
            None,
            "no INVITE retransmission while ringing"
        );
        let ok = answer_invite(&inv, 200, "gw1", "v=0\r\n");
        ep.handle_datagram(t0, gateway(), &ok);
        match events(&mut ep).as_slice() {
            [
                SipEvent::Outbound {
                    code: 200,
                    sdp: Some(sdp),
                    call: c,
                },
            ] => {
                assert_eq!(*c, call);
                assert_eq!(sdp, b"v=0\r\n");
            }
            e => panic!("{e:?}"),
        }
        let msgs = sent(&mut ep);
        let [Message::Request(ack)] = msgs.as_slice() else {
            panic!("{msgs:?}")
        };
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(
            ack.uri, "sip:gw@127.0.0.1:5090",
            "to the Contact of the 2xx"
        );
        assert_eq!(ack.to().unwrap().tag(), Some("gw1"));
        assert_eq!(ack.cseq(), Some((1, Method::Ack)));
        ep.handle_datagram(t0, gateway(), &ok);
        assert!(
            matches!(sent(&mut ep).as_slice(), [Message::Request(r)] if r.method == Method::Ack),
            "2xx retransmission re-ACKed"
        );
        assert!(events(&mut ep).is_empty());
        // Hanging up sends BYE in the dialog.
        ep.hangup(t0, call);
        let msgs = sent(&mut ep);
        assert!(
            matches!(msgs.as_slice(), [Message::Request(r)] if r.method == Method::Bye && r.to().unwrap().tag() == Some("gw1"))
        );
    }

    #[test]
    fn a_busy_callee_is_acknowledged_on_the_same_branch() {
        let mut ep = ep();
        let t0 = Instant::now();
        let (_, inv) = placed(&mut ep, t0);
        assert_eq!(ep.awaiting_answers(), 1);
        ep.handle_datagram(t0, gateway(), &answer_invite(&inv, 486, "gw2", ""));
        assert!(matches!(
            events(&mut ep).as_slice(),
            [SipEvent::Outbound { code: 486, .. }]
        ));
        // Timer D keeps the transaction to re-ACK a retransmitted 486; nothing is awaited.
        assert_eq!((ep.transactions(), ep.awaiting_answers()), (1, 0));
        let msgs = sent(&mut ep);
        let [Message::Request(ack)] = msgs.as_slice() else {
            panic!("{msgs:?}")
        };
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(
            ack.top_via().unwrap().branch(),
            inv.top_via().unwrap().branch()
        );
        assert_eq!(ep.active_calls(), 0);
        drain(&mut ep, t0);
        assert_eq!(ep.transactions(), 0);
    }

    #[test]
    fn an_unanswered_call_is_cancelled_or_times_out() {
        let mut ep = ep();
        let t0 = Instant::now();
        let (call, inv) = placed(&mut ep, t0);
        ep.handle_datagram(t0, gateway(), &answer_invite(&inv, 180, "gw3", ""));
        events(&mut ep);
        ep.hangup(t0, call);
        let msgs = sent(&mut ep);
        let [Message::Request(cancel)] = msgs.as_slice() else {
            panic!("{msgs:?}")
        };
        assert_eq!(cancel.method, Method::Cancel);
        assert_eq!(
            cancel.top_via().unwrap().branch(),
            inv.top_via().unwrap().branch()
        );
        // Nobody answers a second call at all: Timer B reports 408.
        let (_, _) = placed(&mut ep, t0);
        let mut out = vec![];
        while let Some(at) = ep.poll_timeout() {
            ep.handle_timeout(at);
            out.extend(events(&mut ep));
            sent(&mut ep);
        }
        assert!(
            out.iter()
                .any(|e| matches!(e, SipEvent::Outbound { code: 408, .. })),
            "{out:?}"
        );
    }
}
