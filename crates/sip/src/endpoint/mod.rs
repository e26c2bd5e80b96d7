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

use crate::message::{
    Headers, Malformed, Message, Method, NameAddr, ParseError, Request, Response, Uri, Via,
    reason_phrase,
};
use crate::transaction::{
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
}

mod requests;
mod responses;
mod send;
mod timers;

use send::dialog_request;

#[cfg(test)]
mod tests;
