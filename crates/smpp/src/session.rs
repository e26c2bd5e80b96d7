//! An SMPP 3.4 ESME session over one connection (sans-IO).
//!
//! The session binds as a transceiver, submits short messages within a window of outstanding
//! requests, answers the SMSC's `enquire_link`, `unbind` and `deliver_sm` (MO messages and
//! delivery receipts, which the owner answers with [`Session::respond`]), sends `enquire_link`
//! when the line is idle, and pauses submissions with a growing backoff when the SMSC says
//! it is throttling (`ESME_RTHROTTLED`, `ESME_RMSGQFUL`). Garbage gets a `generic_nack`; a
//! length that makes the byte stream unreadable, a request the SMSC never answers and the
//! SMSC's `unbind` close the session, and every message not yet accepted comes back as
//! [`Event::Unsent`] so that nothing is lost.
//!
//! No clock, no socket: the owner feeds bytes with [`Session::handle_input`] and time with
//! [`Session::handle_timeout`], and drains [`Session::poll_transmit`] and
//! [`Session::poll_event`]. PDUs are encoded and decoded with rusmpp's types; the framing is
//! ours so that one malformed PDU is answered and skipped instead of desynchronising the stream.

use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
/// SMPP command statuses (SMPP 3.4 §5.1.3), as rusmpp names them.
pub use rusmpp::CommandStatus;
use rusmpp::decode::DecodeWithLength;
use rusmpp::encode::{Encode, Length};
use rusmpp::pdus::{BindTransceiver, DeliverSmResp, SubmitSm};
use rusmpp::tlvs::TlvValue;
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{
    DataCoding, EsmClass, InterfaceVersion, Npi, RegisteredDelivery, ServiceType, Ton,
};
use rusmpp::{Command, Pdu};

/// The SMPP name of a command status, for logs and `sms show`: `ESME_RTHROTTLED (0x00000058)`.
pub fn status_name(s: CommandStatus) -> String {
    let code = u32::from(s);
    match s {
        CommandStatus::Other(_) => format!("status 0x{code:08X}"),
        // rusmpp names the statuses after the specification: `EsmeRthrottled`.
        CommandStatus::EsmeRxTAppn => format!("ESME_RX_T_APPN (0x{code:08X})"),
        CommandStatus::EsmeRxPAppn => format!("ESME_RX_P_APPN (0x{code:08X})"),
        CommandStatus::EsmeRxRAppn => format!("ESME_RX_R_APPN (0x{code:08X})"),
        named => {
            let name = format!("{named:?}");
            let rest = name.strip_prefix("Esme").unwrap_or(&name);
            format!("ESME_{} (0x{code:08X})", rest.to_ascii_uppercase())
        }
    }
}

/// Whether a refused submission may succeed if tried again later (the SMSC's trouble, not
/// the message's).
pub fn is_temporary(s: CommandStatus) -> bool {
    matches!(
        s,
        CommandStatus::EsmeRsyserr
            | CommandStatus::EsmeRmsgqful
            | CommandStatus::EsmeRthrottled
            | CommandStatus::EsmeRsubmitfail
            | CommandStatus::EsmeRdeliveryfailure
            | CommandStatus::EsmeRunknownerr
            | CommandStatus::EsmeRxTAppn
    )
}

#[derive(Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub system_id: String,
    pub password: String,
    pub system_type: String,
    /// Most submissions awaiting an answer at once.
    pub window: usize,
    /// Send `enquire_link` after this long without traffic.
    pub enquire_link: Duration,
    /// How long a request may wait for its answer before the connection is given up (ms).
    pub response_timeout: Duration,
    /// First pause after a throttling answer, doubled up to the maximum (ms).
    pub throttle_min: Duration,
    pub throttle_max: Duration,
    /// Longest PDU accepted.
    pub max_pdu: usize,
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("system_id", &self.system_id)
            .field("password", &"<redacted>")
            .field("system_type", &self.system_type)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            system_id: String::new(),
            password: String::new(),
            system_type: String::new(),
            window: 10,
            enquire_link: Duration::from_secs(30),
            response_timeout: Duration::from_secs(10),
            throttle_min: Duration::from_secs(1),
            throttle_max: Duration::from_secs(30),
            max_pdu: 64 * 1024,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Binding,
    Bound,
    Unbinding,
    Closed,
}

/// The owner's tag for a submission.
pub type SubmitId = u64;

/// A message for the SMSC, in plain terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submit {
    /// `+` and digits (international), digits (a short code) or letters (an alphanumeric
    /// sender name).
    pub source: String,
    /// E.164 with `+`.
    pub destination: String,
    pub esm_class: u8,
    pub data_coding: u8,
    pub short_message: Vec<u8>,
    /// Ask for a final delivery receipt.
    pub receipt: bool,
}

/// A `deliver_sm` from the SMSC: an MO message or a delivery receipt. Answer it with
/// [`Session::respond`] and its `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    pub seq: u32,
    pub source: String,
    pub source_ton: u8,
    pub destination: String,
    pub esm_class: u8,
    pub data_coding: u8,
    /// `short_message`, or the `message_payload` TLV when that carries the text.
    pub data: Vec<u8>,
    pub receipted_message_id: Option<String>,
    pub message_state: Option<u8>,
    /// Other TLVs, raw (tag, value): vendor tags such as an SMSC's own message id.
    pub other_tlvs: Vec<(u16, Vec<u8>)>,
}

impl Incoming {
    /// SMPP 3.4 §5.2.12: esm_class bits 5-2 = 0001 (SMSC delivery receipt) or 1000
    /// (intermediate notification).
    pub fn is_receipt(&self) -> bool {
        matches!(self.esm_class & 0x3C, 0x04 | 0x20)
    }

    /// The sender as E.164 when the SMSC marks it international (TON 1) or writes it with `+`.
    pub fn source_e164(&self) -> String {
        let s = self.source.trim();
        if s.starts_with('+') {
            s.to_string()
        } else if self.source_ton == 1 {
            format!("+{s}")
        } else if let Some(rest) = s.strip_prefix("00") {
            format!("+{rest}")
        } else {
            s.to_string()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Bound,
    /// The SMSC refused the bind; the session is closed.
    BindRefused {
        status: CommandStatus,
    },
    Accepted {
        id: SubmitId,
        message_id: String,
    },
    /// The SMSC refused the message (for a reason other than throttling).
    Refused {
        id: SubmitId,
        status: CommandStatus,
    },
    /// The SMSC asked us to slow down: submissions pause until `resume_at`.
    Throttled {
        status: CommandStatus,
        resume_at: Instant,
    },
    /// The session ended before the SMSC accepted this submission: send it again later.
    Unsent {
        id: SubmitId,
    },
    Deliver(Incoming),
    /// Something the SMSC sent that the session answered or ignored (for the log).
    Protocol(String),
    /// The session is over; close the connection.
    Closed {
        reason: String,
    },
}

#[derive(Clone, Debug)]
enum Pending {
    Bind,
    Submit(SubmitId, Submit),
    EnquireLink,
    Unbind,
}

const HEADER: usize = 16;

#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    state: State,
    next_seq: u32,
    rx: BytesMut,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    /// Requests awaiting an answer, by sequence number, with their deadline.
    pending: HashMap<u32, (Pending, Instant)>,
    /// Submissions waiting for room in the window or for throttling to end.
    queue: VecDeque<(SubmitId, Submit)>,
    outstanding_submits: usize,
    throttled_until: Option<Instant>,
    throttle_level: u32,
    last_activity: Instant,
}

impl Session {
    /// Starts a session on a fresh connection: the bind goes out at once.
    pub fn new(cfg: SessionConfig, now: Instant) -> Session {
        let mut s = Session {
            cfg,
            state: State::Binding,
            next_seq: 0,
            rx: BytesMut::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            pending: HashMap::new(),
            queue: VecDeque::new(),
            outstanding_submits: 0,
            throttled_until: None,
            throttle_level: 0,
            last_activity: now,
        };
        match bind_pdu(&s.cfg) {
            Ok(pdu) => s.request(now, pdu, Pending::Bind),
            Err(reason) => s.close(reason),
        }
        s
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// How many more submissions the session takes before the window is full.
    pub fn capacity(&self) -> usize {
        if self.state != State::Bound {
            return 0;
        }
        self.cfg
            .window
            .saturating_sub(self.outstanding_submits + self.queue.len())
    }

    pub fn is_throttled(&self, now: Instant) -> bool {
        self.throttled_until.is_some_and(|t| now < t)
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut t = self.pending.values().map(|(_, d)| *d).min();
        if self.state == State::Bound {
            let ping = self.last_activity + self.cfg.enquire_link;
            t = Some(t.map_or(ping, |x| x.min(ping)));
            if let (Some(resume), false) = (self.throttled_until, self.queue.is_empty()) {
                t = Some(t.map_or(resume, |x| x.min(resume)));
            }
        }
        t
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if let Some((seq, what)) = self
            .pending
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(seq, (p, _))| (*seq, p.clone()))
            .next()
        {
            let what = match what {
                Pending::Bind => "bind_transceiver".to_string(),
                Pending::Submit(..) => format!("submit_sm (sequence {seq})"),
                Pending::EnquireLink => "enquire_link".to_string(),
                Pending::Unbind => "unbind".to_string(),
            };
            self.close(format!(
                "no answer to {what} within {:?}",
                self.cfg.response_timeout
            ));
            return;
        }
        if self.state == State::Bound
            && now.saturating_duration_since(self.last_activity) >= self.cfg.enquire_link
            && !self
                .pending
                .values()
                .any(|(p, _)| matches!(p, Pending::EnquireLink))
        {
            self.request(now, Pdu::EnquireLink, Pending::EnquireLink);
        }
        if self.throttled_until.is_some_and(|t| now >= t) {
            self.throttled_until = None;
        }
        self.pump(now);
    }

    /// Queues a message. It goes out when the window has room and the SMSC is not throttling.
    /// A message that cannot be put into a PDU is refused at once.
    pub fn submit(&mut self, now: Instant, id: SubmitId, m: Submit) {
        if self.state != State::Bound {
            self.events.push_back(Event::Unsent { id });
            return;
        }
        if let Err(status) = submit_pdu(&m) {
            self.events.push_back(Event::Refused { id, status });
            return;
        }
        self.queue.push_back((id, m));
        self.pump(now);
    }

    /// Answers a `deliver_sm`.
    pub fn respond(&mut self, now: Instant, seq: u32, status: CommandStatus) {
        if self.state == State::Closed {
            return;
        }
        let cmd = Command::new(status, seq, DeliverSmResp::builder().build());
        self.send(now, &cmd);
    }

    /// Ends the session politely: `unbind`, then close on its answer.
    pub fn unbind(&mut self, now: Instant) {
        match self.state {
            State::Bound => {
                self.state = State::Unbinding;
                self.request(now, Pdu::Unbind, Pending::Unbind);
            }
            State::Binding => self.close("unbound before the bind completed".into()),
            State::Unbinding | State::Closed => {}
        }
    }

    /// The connection ended (the SMSC closed it, or a read or write failed).
    pub fn handle_close(&mut self, reason: &str) {
        if self.state != State::Closed {
            self.close(reason.to_string());
        }
    }

    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        if self.state == State::Closed {
            return;
        }
        self.rx.extend_from_slice(bytes);
        self.last_activity = now;
        while self.state != State::Closed && self.rx.len() >= 4 {
            let len = u32::from_be_bytes([self.rx[0], self.rx[1], self.rx[2], self.rx[3]]) as usize;
            if !(HEADER..=self.cfg.max_pdu).contains(&len) {
                // Nothing after this can be framed: say so and end the session.
                let seq = if self.rx.len() >= HEADER {
                    u32::from_be_bytes([self.rx[12], self.rx[13], self.rx[14], self.rx[15]])
                } else {
                    0
                };
                self.generic_nack(now, seq, CommandStatus::EsmeRinvcmdlen);
                self.close(format!("unreadable PDU: command_length {len}"));
                return;
            }
            if self.rx.len() < len {
                break;
            }
            let mut frame = self.rx.split_to(len);
            frame.advance(4);
            let id = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
            let st =
                CommandStatus::from(u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]));
            let seq = u32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
            match Command::decode(&mut frame, len - 4) {
                Ok((cmd, _)) => self.on_command(now, cmd),
                Err(e) => self.on_undecodable(now, id, st, seq, &e.to_string()),
            }
        }
    }

    fn on_undecodable(&mut self, now: Instant, id: u32, st: CommandStatus, seq: u32, why: &str) {
        if id & 0x8000_0000 == 0 {
            self.events.push_back(Event::Protocol(format!(
                "malformed request 0x{id:08X} (sequence {seq}): {why}; answered generic_nack"
            )));
            self.generic_nack(now, seq, CommandStatus::EsmeRinvcmdlen);
            return;
        }
        // A response whose body we cannot read: the header still says how it went.
        self.events.push_back(Event::Protocol(format!(
            "malformed response 0x{id:08X} (sequence {seq}): {why}"
        )));
        self.on_response(now, seq, st, None);
    }

    fn on_command(&mut self, now: Instant, cmd: Command) {
        let seq = cmd.sequence_number();
        let st = cmd.status();
        let id = u32::from(cmd.id());
        match cmd.pdu() {
            Some(Pdu::BindTransceiverResp(_))
            | Some(Pdu::SubmitSmResp(_))
            | Some(Pdu::EnquireLinkResp)
            | Some(Pdu::UnbindResp)
            | Some(Pdu::GenericNack)
            | None
                if id & 0x8000_0000 != 0 =>
            {
                let message_id = match cmd.pdu() {
                    Some(Pdu::SubmitSmResp(r)) => Some(r.message_id().as_str().to_string()),
                    _ => None,
                };
                self.on_response(now, seq, st, message_id);
            }
            Some(Pdu::DeliverSm(d)) => {
                let mut data = d.short_message().as_ref().to_vec();
                let mut receipted_message_id = None;
                let mut message_state = None;
                let mut other_tlvs = vec![];
                for t in d.tlvs() {
                    match t.value() {
                        Some(TlvValue::ReceiptedMessageId(v)) => {
                            receipted_message_id = Some(v.as_str().to_string())
                        }
                        Some(TlvValue::MessageState(v)) => message_state = Some(u8::from(*v)),
                        Some(TlvValue::MessagePayload(p)) if data.is_empty() => {
                            data = p.value.as_ref().to_vec()
                        }
                        Some(TlvValue::Other { tag, value }) => {
                            other_tlvs.push((u16::from(*tag), value.as_ref().to_vec()))
                        }
                        _ => {}
                    }
                }
                self.events.push_back(Event::Deliver(Incoming {
                    seq,
                    source: d.source_addr.as_str().to_string(),
                    source_ton: u8::from(d.source_addr_ton),
                    destination: d.destination_addr.as_str().to_string(),
                    esm_class: u8::from(d.esm_class),
                    data_coding: u8::from(d.data_coding),
                    data,
                    receipted_message_id,
                    message_state,
                    other_tlvs,
                }));
            }
            Some(Pdu::EnquireLink) => {
                let resp = Command::new(CommandStatus::EsmeRok, seq, Pdu::EnquireLinkResp);
                self.send(now, &resp);
            }
            Some(Pdu::Unbind) => {
                let resp = Command::new(CommandStatus::EsmeRok, seq, Pdu::UnbindResp);
                self.send(now, &resp);
                self.close("the SMSC unbound".into());
            }
            // No answer is defined for these.
            Some(Pdu::AlertNotification(_)) | Some(Pdu::Outbind(_)) => {}
            _ if id & 0x8000_0000 != 0 => {
                self.events.push_back(Event::Protocol(format!(
                    "unexpected response 0x{id:08X} (sequence {seq}) ignored"
                )));
            }
            _ => {
                self.events.push_back(Event::Protocol(format!(
                    "unsupported request 0x{id:08X} (sequence {seq}); answered generic_nack"
                )));
                self.generic_nack(now, seq, CommandStatus::EsmeRinvcmdid);
            }
        }
    }

    fn on_response(
        &mut self,
        now: Instant,
        seq: u32,
        st: CommandStatus,
        message_id: Option<String>,
    ) {
        let Some((what, _)) = self.pending.remove(&seq) else {
            self.events.push_back(Event::Protocol(format!(
                "answer to an unknown request (sequence {seq}) ignored"
            )));
            return;
        };
        match what {
            Pending::Bind if st == CommandStatus::EsmeRok => {
                self.state = State::Bound;
                self.events.push_back(Event::Bound);
                self.pump(now);
            }
            Pending::Bind => {
                self.events.push_back(Event::BindRefused { status: st });
                self.close(format!("the SMSC refused the bind: {}", status_name(st)));
            }
            Pending::Submit(id, m) => {
                self.outstanding_submits -= 1;
                match st {
                    CommandStatus::EsmeRok => {
                        self.throttle_level = 0;
                        self.events.push_back(Event::Accepted {
                            id,
                            message_id: message_id.unwrap_or_default(),
                        });
                    }
                    CommandStatus::EsmeRthrottled | CommandStatus::EsmeRmsgqful => {
                        let pause = (self.cfg.throttle_min * (1 << self.throttle_level.min(16)))
                            .min(self.cfg.throttle_max);
                        self.throttle_level += 1;
                        let resume_at = now + pause;
                        self.throttled_until = Some(resume_at);
                        // First in line again, so order is kept.
                        self.queue.push_front((id, m));
                        self.events.push_back(Event::Throttled {
                            status: st,
                            resume_at,
                        });
                    }
                    _ => self.events.push_back(Event::Refused { id, status: st }),
                }
                self.pump(now);
            }
            Pending::EnquireLink => {}
            Pending::Unbind => self.close("unbound".into()),
        }
    }

    fn pump(&mut self, now: Instant) {
        while self.state == State::Bound
            && !self.is_throttled(now)
            && self.outstanding_submits < self.cfg.window
        {
            let Some((id, m)) = self.queue.pop_front() else {
                break;
            };
            match submit_pdu(&m) {
                Ok(pdu) => {
                    self.outstanding_submits += 1;
                    self.request(now, Pdu::SubmitSm(pdu), Pending::Submit(id, m));
                }
                Err(status) => self.events.push_back(Event::Refused { id, status }),
            }
        }
    }

    fn request(&mut self, now: Instant, pdu: Pdu, what: Pending) {
        self.next_seq = if self.next_seq >= 0x7FFF_FFFF {
            1
        } else {
            self.next_seq + 1
        };
        let seq = self.next_seq;
        let cmd = Command::new(CommandStatus::EsmeRok, seq, pdu);
        self.pending
            .insert(seq, (what, now + self.cfg.response_timeout));
        self.send(now, &cmd);
    }

    fn generic_nack(&mut self, now: Instant, seq: u32, st: CommandStatus) {
        let cmd = Command::new(st, seq, Pdu::GenericNack);
        self.send(now, &cmd);
    }

    fn send(&mut self, now: Instant, cmd: &Command) {
        self.last_activity = now;
        self.transmit.push_back(encode(cmd));
    }

    fn close(&mut self, reason: String) {
        self.state = State::Closed;
        let mut unsent: Vec<(u32, SubmitId)> = self
            .pending
            .drain()
            .filter_map(|(seq, (p, _))| match p {
                Pending::Submit(id, _) => Some((seq, id)),
                _ => None,
            })
            .collect();
        unsent.sort();
        for (_, id) in unsent {
            self.events.push_back(Event::Unsent { id });
        }
        for (id, _) in self.queue.drain(..) {
            self.events.push_back(Event::Unsent { id });
        }
        self.outstanding_submits = 0;
        self.events.push_back(Event::Closed { reason });
    }
}

/// A command with its length prefix.
pub fn encode(cmd: &Command) -> Vec<u8> {
    let len = 4 + cmd.length();
    let mut buf = BytesMut::with_capacity(len);
    buf.put_u32(len as u32);
    let mut body = vec![0u8; cmd.length()];
    cmd.encode(&mut body);
    buf.extend_from_slice(&body);
    buf.to_vec()
}

fn cstr<const MIN: usize, const MAX: usize>(
    field: &str,
    v: &str,
) -> Result<COctetString<MIN, MAX>, String> {
    COctetString::from_str(v).map_err(|_| {
        format!(
            "{field} `{v}` does not fit SMPP ({} characters at most)",
            MAX - 1
        )
    })
}

fn bind_pdu(cfg: &SessionConfig) -> Result<Pdu, String> {
    Ok(Pdu::BindTransceiver(
        BindTransceiver::builder()
            .system_id(cstr("system_id", &cfg.system_id)?)
            .password(cstr("password", &cfg.password)?)
            .system_type(cstr("system_type", &cfg.system_type)?)
            .interface_version(InterfaceVersion::Smpp3_4)
            .addr_ton(Ton::Unknown)
            .addr_npi(Npi::Unknown)
            .address_range(COctetString::empty())
            .build(),
    ))
}

/// TON/NPI and digits of an address: `+` digits are international E.164, other digits a
/// national number or short code, anything else an alphanumeric sender name.
fn address(a: &str) -> (Ton, Npi, String) {
    if let Some(d) = a.strip_prefix('+') {
        (Ton::International, Npi::Isdn, d.to_string())
    } else if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) {
        (Ton::Unknown, Npi::Isdn, a.to_string())
    } else {
        (Ton::Alphanumeric, Npi::Unknown, a.to_string())
    }
}

fn submit_pdu(m: &Submit) -> Result<SubmitSm, CommandStatus> {
    let (ston, snpi, src) = address(&m.source);
    let (dton, dnpi, dst) = address(&m.destination);
    let src = cstr::<1, 21>("source", &src).map_err(|_| CommandStatus::EsmeRinvsrcadr)?;
    let dst = cstr::<1, 21>("destination", &dst).map_err(|_| CommandStatus::EsmeRinvdstadr)?;
    let sm = OctetString::from_vec(m.short_message.clone())
        .map_err(|_| CommandStatus::EsmeRinvmsglen)?;
    Ok(SubmitSm::builder()
        .service_type(ServiceType::default())
        .source_addr_ton(ston)
        .source_addr_npi(snpi)
        .source_addr(src)
        .dest_addr_ton(dton)
        .dest_addr_npi(dnpi)
        .destination_addr(dst)
        // From the raw byte: rusmpp's EsmClass::default() encodes as 0x08.
        .esm_class(EsmClass::from(m.esm_class))
        .registered_delivery(RegisteredDelivery::from(u8::from(m.receipt)))
        .data_coding(DataCoding::from(m.data_coding))
        .short_message(sm)
        .build())
}

#[cfg(test)]
mod tests;
