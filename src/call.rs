//! One call: the sans-IO [`CallSession`] (interpreter + player + DTMF receivers) and the
//! async driver that ties it to a SIP dialog and an RTP socket.
//!
//! The session is where a call's logic lives and is tested on a simulated clock; the driver
//! only moves bytes and time in and out, so the softswitch adapters can reuse the session.

use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::{Instrument, debug, info, warn};

use crate::dialplan::interpreter::CallContext;
use crate::dialplan::{CallAction, CallEvent, Dialplan, Interpreter};
use crate::media::dtmf::inband::{InbandDetector, InbandDigit};
use crate::media::dtmf::rfc4733::Rfc4733Receiver;
use crate::media::dtmf::{Digit, DtmfMethod};
use crate::media::g711::Codec;
use crate::media::peer::{RtpPeer, Verdict};
use crate::media::player::{Payload, PlayItem, Player, PlayerEvent};
use crate::media::prompts::PromptStore;
use crate::server::{Shared, Shutdown};
use crate::store::Cdr;
use crate::telephony::sip::endpoint::{IncomingCall, SipEvent};
use crate::telephony::sip::sdp::{self, Negotiated};
use crate::telephony::sip::transport::SipCommand;

/// What was agreed for the media of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaParams {
    pub codec: Codec,
    /// What the frames we send carry: G.711 RTP (a caller), or linear audio (mod_audio_fork).
    pub payload: Payload,
    /// How far ahead of real time frames go out (a far end that plays from a buffer).
    pub lead: Duration,
    pub telephone_event: Option<u8>,
    /// Run the in-band detector on received audio.
    pub inband: bool,
    /// We may send (not on hold).
    pub send: bool,
}

/// The per-call logic, sans-IO.
pub struct CallSession {
    interp: Interpreter,
    player: Player,
    prompts: Arc<PromptStore>,
    media: MediaParams,
    rfc4733: Rfc4733Receiver,
    inband: InbandDetector,
    pcm: Vec<i16>,
    inband_found: Vec<InbandDigit>,
    methods: BTreeSet<&'static str>,
    /// The plan ended the call: why, and when the BYE may go (see [`HANGUP_LINGER`]).
    hangup: Option<(String, Instant)>,
    /// Operations the plan asked for, not yet handed to the driver.
    ops: VecDeque<(String, Vec<(String, String)>)>,
    /// An escalation the plan asked for: (target, reason, context).
    transfer: Option<(String, String, CallContext)>,
    /// Hang up when the player runs dry (after a driver announcement).
    hangup_after_play: Option<String>,
    /// Media is relayed to another leg: the player only speaks for announcements.
    bridged: bool,
    /// A prompt was cut off (barge-in): a softswitch edge drops the audio it has queued.
    flushed: bool,
}

/// Silence sent after the last prompt before hanging up: the caller's jitter buffer still
/// holds the end of "Goodbye" when our last packet leaves, and a BYE right then cuts it off.
pub const HANGUP_LINGER: Duration = Duration::from_millis(300);

impl CallSession {
    pub fn new(
        plan: Arc<Dialplan>,
        prompts: Arc<PromptStore>,
        media: MediaParams,
        ssrc: u32,
        seq: u16,
        ts: u32,
    ) -> Self {
        Self::with_vars(plan, prompts, media, ssrc, seq, ts, [])
    }

    /// With the call's variables (`caller`, `dialled`).
    pub fn with_vars(
        plan: Arc<Dialplan>,
        prompts: Arc<PromptStore>,
        media: MediaParams,
        ssrc: u32,
        seq: u16,
        ts: u32,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let mut player = Player::new(media.codec, ssrc, seq, ts)
            .with_payload(media.payload)
            .with_lead(media.lead);
        // A call may start on hold (an offer with a=sendonly).
        player.set_muted(!media.send);
        CallSession {
            interp: Interpreter::with_vars(plan, vars),
            player,
            prompts,
            media,
            rfc4733: Rfc4733Receiver::new(),
            inband: InbandDetector::new(),
            pcm: Vec::with_capacity(480),
            inband_found: Vec::new(),
            methods: BTreeSet::new(),
            hangup: None,
            ops: VecDeque::new(),
            transfer: None,
            hangup_after_play: None,
            bridged: false,
            flushed: false,
        }
    }

    /// The call is up: start sending and run the plan.
    pub fn start(&mut self, now: Instant) {
        self.player.start(now);
        self.interp.start(now);
        self.pump(now);
    }

    /// New media parameters (re-INVITE).
    pub fn set_media(&mut self, media: MediaParams) {
        if media.codec != self.media.codec {
            self.player.set_codec(media.codec);
        }
        self.player.set_muted(!media.send);
        self.media = media;
    }

    pub fn media(&self) -> MediaParams {
        self.media
    }

    /// An RTP (or multiplexed RTCP) packet from the caller's latched address.
    pub fn handle_rtp(&mut self, now: Instant, packet: &[u8]) {
        // RTCP multiplexed on the RTP port (RFC 5761): packet types 200-204.
        if packet.len() >= 2 && (200..=204).contains(&packet[1]) {
            return;
        }
        let Ok(rtp) = rtp_rs::RtpReader::new(packet) else {
            return;
        };
        let pt = rtp.payload_type();
        if Some(pt) == self.media.telephone_event {
            if let Ok(Some(d)) =
                self.rfc4733
                    .handle_packet(rtp.ssrc(), rtp.timestamp(), rtp.payload())
            {
                self.handle_digit(now, d, DtmfMethod::Rfc4733);
            }
            return;
        }
        if !self.media.inband {
            return;
        }
        let Some(codec) = Codec::from_payload_type(pt) else {
            return;
        };
        let payload = rtp.payload();
        let mut pcm = std::mem::take(&mut self.pcm);
        pcm.resize(payload.len(), 0);
        codec.decode(payload, &mut pcm);
        self.handle_pcm(now, &pcm);
        self.pcm = pcm;
    }

    /// The caller's audio as 8 kHz linear samples (softswitch edges), for the in-band
    /// detector when it is on.
    pub fn handle_pcm(&mut self, now: Instant, pcm: &[i16]) {
        if !self.media.inband {
            return;
        }
        self.inband.process(pcm, &mut self.inband_found);
        let found: Vec<Digit> = self.inband_found.drain(..).map(|d| d.digit).collect();
        for d in found {
            self.handle_digit(now, d, DtmfMethod::Inband);
        }
    }

    /// Whether a prompt was cut off since the last call (once per cut).
    pub fn take_flush(&mut self) -> bool {
        std::mem::take(&mut self.flushed)
    }

    pub fn handle_digit(&mut self, now: Instant, digit: Digit, method: DtmfMethod) {
        debug!(method = method.as_str(), "key received");
        metrics::counter!("topup_ivr_dtmf_digits_total", "method" => method.as_str()).increment(1);
        self.methods.insert(method.as_str());
        self.interp.handle_event(now, CallEvent::Digit(digit));
        self.pump(now);
    }

    /// The next RTP packet to send, if one is due. Call until `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let packet = self.player.poll_transmit(now).map(<[u8]>::to_vec);
        self.pump(now);
        packet
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.player.poll_timeout(),
            self.interp.poll_timeout(),
            self.hangup.as_ref().map(|h| h.1),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.interp.handle_timeout(now);
        self.pump(now);
    }

    /// The next operation the plan wants run; answer with [`CallSession::handle_result`].
    pub fn poll_invoke(&mut self) -> Option<(String, Vec<(String, String)>)> {
        self.ops.pop_front()
    }

    pub fn handle_result(&mut self, now: Instant, code: String, vars: Vec<(String, String)>) {
        self.interp
            .handle_event(now, CallEvent::Result { code, vars });
        self.pump(now);
    }

    /// Plays prompts (in the call's language), then hangs up with `reason`: what the driver
    /// says when it cannot do what the plan asked (no agent to transfer to).
    pub fn announce_then_hangup(&mut self, now: Instant, names: &[&str], reason: &str) {
        let lang = self.interp.language().to_string();
        let items: Vec<PlayItem> = names
            .iter()
            .filter_map(|n| self.prompts.get(&lang, n))
            .map(PlayItem::Prompt)
            .collect();
        if items.is_empty() {
            self.hangup.get_or_insert((reason.to_string(), now));
        } else {
            self.player.stop();
            self.player.enqueue(items);
            self.hangup_after_play = Some(reason.to_string());
        }
    }

    /// Starts or ends relaying media to another leg (calling service): while bridged the player
    /// is silent except for [`CallSession::announce`].
    pub fn set_bridged(&mut self, on: bool) {
        self.bridged = on;
        self.player.stop();
        self.player.set_muted(on || !self.media.send);
    }

    /// Speaks prompts to the caller during a bridge (the other leg's audio is held meanwhile).
    pub fn announce(&mut self, names: &[&str]) {
        let lang = self.interp.language().to_string();
        let items: Vec<PlayItem> = names
            .iter()
            .filter_map(|n| self.prompts.get(&lang, n))
            .map(PlayItem::Prompt)
            .collect();
        if !items.is_empty() {
            self.player.set_muted(!self.media.send);
            self.player.enqueue(items);
        }
    }

    /// An announcement is being spoken during a bridge.
    pub fn is_announcing(&self) -> bool {
        self.bridged && self.player.is_playing()
    }

    /// Whether received audio should be relayed rather than interpreted.
    pub fn is_bridged(&self) -> bool {
        self.bridged
    }

    /// An escalation the plan asked for (once).
    pub fn take_transfer(&mut self) -> Option<(String, String, CallContext)> {
        self.transfer.take()
    }

    /// Why the plan ended the call, once it is time to send the BYE.
    pub fn poll_hangup(&self, now: Instant) -> Option<&str> {
        self.hangup
            .as_ref()
            .filter(|(_, at)| now >= *at)
            .map(|(r, _)| r.as_str())
    }

    /// DTMF methods seen, comma-separated.
    pub fn dtmf_methods(&self) -> String {
        self.methods.iter().copied().collect::<Vec<_>>().join(",")
    }

    pub fn interpreter(&self) -> &Interpreter {
        &self.interp
    }

    /// Moves interpreter actions to the player and player events back, until both are idle.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(action) = self.interp.poll_action() {
                progressed = true;
                match action {
                    CallAction::Play(refs) => {
                        let items: Vec<PlayItem> = refs
                            .iter()
                            .filter_map(|r| {
                                let p = self.prompts.get(&r.language, &r.name);
                                if p.is_none() {
                                    warn!(prompt = %r.name, language = %r.language, "prompt missing");
                                }
                                p.map(PlayItem::Prompt)
                            })
                            .collect();
                        if items.is_empty() {
                            self.interp.handle_event(now, CallEvent::PromptDone);
                        } else {
                            self.player.enqueue(items);
                        }
                    }
                    CallAction::StopPlayback => {
                        self.flushed |= self.player.is_playing();
                        self.player.stop();
                    }
                    CallAction::Invoke { op, args } => self.ops.push_back((op, args)),
                    CallAction::Transfer {
                        target,
                        reason,
                        context,
                    } => {
                        self.transfer.get_or_insert((target, reason, context));
                    }
                    CallAction::Hangup { reason } => {
                        self.hangup.get_or_insert((reason, now + HANGUP_LINGER));
                    }
                }
            }
            while let Some(PlayerEvent::Done) = self.player.poll_event() {
                progressed = true;
                if let Some(reason) = self.hangup_after_play.take() {
                    self.hangup.get_or_insert((reason, now + HANGUP_LINGER));
                }
                if self.bridged {
                    self.player.set_muted(true);
                }
                self.interp.handle_event(now, CallEvent::PromptDone);
            }
            if !progressed {
                return;
            }
        }
    }
}

/// When a call loop must wake: the earliest deadline, not in the past, at most a second away.
pub fn next_wake(now: Instant, deadlines: impl IntoIterator<Item = Option<Instant>>) -> Instant {
    deadlines
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + Duration::from_secs(1))
        .max(now)
}

/// Wall-clock time as RFC 3339 (UTC, milliseconds).
pub fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&fmt).unwrap_or_default()
}

/// Everything a SIP call task needs from the transport.
pub struct SipCallSetup {
    pub shared: Arc<Shared>,
    pub incoming: IncomingCall,
    pub plan: Arc<Dialplan>,
    pub events: mpsc::Receiver<SipEvent>,
    /// The sender side of `events`, for the legs this call places (calling service).
    pub events_tx: mpsc::Sender<SipEvent>,
    pub commands: mpsc::Sender<SipCommand>,
    pub started_at: String,
    /// The call's hold on its source's share of calls, released when the call ends.
    pub source_slot: crate::telephony::sip::admission::Slot,
}

/// Runs one SIP call to its end and writes its CDR. The admission `permit` is held until the
/// record is written, so "no call in progress" also means "every record is stored" (shutdown
/// relies on it).
pub async fn run_sip_call(setup: SipCallSetup, permit: OwnedSemaphorePermit) {
    let span =
        tracing::info_span!("call", id = %setup.incoming.call, call_id = %setup.incoming.call_id);
    async move {
        let shared = setup.shared.clone();
        let mut cdr = Cdr {
            call_id: setup.incoming.call_id.clone(),
            caller: setup.incoming.caller.clone(),
            dialled: setup.incoming.dialled.clone(),
            service: Some(setup.plan.service.clone()),
            codec: None,
            dtmf_methods: String::new(),
            started_at: setup.started_at.clone(),
            answered_at: None,
            ended_at: String::new(),
            end_reason: String::new(),
            digits: None,
        };
        let record_digits = setup.plan.record_digits;
        let service = setup.plan.service.clone();
        let _active = shared.call_started(&service);
        let outcome = drive(setup, &mut cdr).await;
        shared.core.record_path(&service, &outcome.path).await;
        cdr.end_reason = outcome.reason;
        if record_digits {
            cdr.digits = Some(outcome.digits);
        }
        cdr.ended_at = timestamp();
        info!(reason = %cdr.end_reason, "call ended");
        if let Err(e) = shared.store.insert_cdr(&cdr).await {
            warn!(error = %e, "CDR not written");
        }
        drop(permit);
    }
    .instrument(span)
    .await
}

struct Outcome {
    reason: String,
    digits: String,
    /// The plan's nodes the caller went through (staff statistics).
    path: Vec<String>,
}

impl Outcome {
    fn new(reason: &str) -> Self {
        Outcome {
            reason: reason.to_string(),
            digits: String::new(),
            path: vec![],
        }
    }
}

async fn drive(setup: SipCallSetup, cdr: &mut Cdr) -> Outcome {
    let SipCallSetup {
        shared,
        incoming,
        plan,
        mut events,
        events_tx,
        commands,
        ..
    } = setup;
    let call = incoming.call;
    let cfg = &shared.cfg;
    let send = |cmd: SipCommand| {
        let commands = commands.clone();
        async move {
            let _ = commands.send(cmd).await;
        }
    };

    // An INVITE without an offer (late offer, as some PBXs and SBCs send): our 200 carries
    // the offer and the ACK the answer.
    let offered = if incoming.offer.trim_ascii().is_empty() {
        None
    } else {
        match sdp::negotiate(&incoming.offer, &cfg.codecs) {
            Ok(n) => Some(n),
            Err(e) => {
                info!(error = %e, "offer refused");
                send(SipCommand::Reject(call, 488, None)).await;
                return Outcome::new("no-acceptable-media");
            }
        }
    };
    let socket = match shared.ports.bind(cfg.advertise).await {
        Ok(s) => s,
        Err(e) if crate::server::is_out_of_descriptors(&e) => {
            tracing::error!(
                "out of file descriptors: call refused (raise the open files limit, or lower calls.max / http.max_connections)"
            );
            send(SipCommand::Reject(call, 503, Some(5))).await;
            return Outcome::new("no-descriptors");
        }
        Err(e) => {
            warn!(error = %e, "no RTP port free");
            send(SipCommand::Reject(call, 503, Some(5))).await;
            return Outcome::new("no-rtp-port");
        }
    };
    let local_port = socket.local_addr().map(|a| a.port()).unwrap_or(0);

    let mut shutdown = shared.shutdown.clone();
    if !cfg.answer_delay.is_zero() {
        send(SipCommand::Ring(call)).await;
        let ring = tokio::time::sleep(cfg.answer_delay);
        tokio::pin!(ring);
        loop {
            tokio::select! {
                _ = &mut ring => break,
                ev = events.recv() => match ev {
                    Some(SipEvent::Ended { reason, .. }) => {
                        return Outcome::new(reason.as_str());
                    }
                    None => return Outcome::new("internal"),
                    _ => {}
                },
            }
        }
    }

    let session_id: u64 = rand::random::<u32>() as u64;
    let mut sdp_version = 1u64;
    let body = match &offered {
        Some(n) => sdp::write_answer(n, cfg.advertise, local_port, session_id, sdp_version),
        None => sdp::write_offer(
            &cfg.codecs,
            cfg.advertise,
            local_port,
            session_id,
            sdp_version,
        ),
    };
    send(SipCommand::Answer(call, body)).await;
    cdr.answered_at = Some(timestamp());

    // Wait for the ACK before starting media: the caller is then sure to hear the start.
    let ack_answer = loop {
        match events.recv().await {
            Some(SipEvent::Confirmed { answer, .. }) => break answer,
            Some(SipEvent::Ended { reason, .. }) => return Outcome::new(reason.as_str()),
            Some(_) => {}
            None => return Outcome::new("internal"),
        }
    };
    let negotiated = match offered {
        Some(n) => n,
        None => match ack_answer.map(|a| sdp::negotiate(&a, &cfg.codecs)) {
            Some(Ok(n)) => n,
            refused => {
                // RFC 3261 §13.3.1.4: an ACK without an acceptable answer ends the call.
                let why = match refused {
                    Some(Err(e)) => e.to_string(),
                    _ => "no SDP answer in the ACK".into(),
                };
                info!(error = %why, "answer to our offer refused");
                send(SipCommand::Hangup(call)).await;
                return Outcome::new("no-acceptable-media");
            }
        },
    };
    cdr.codec = Some(negotiated.codec.name().to_string());

    let media = media_params(&negotiated, cfg.inband_dtmf);
    let caller = crate::services::caller_e164(&incoming.caller);
    let mut session = CallSession::with_vars(
        plan,
        shared.prompts(),
        media,
        rand::random(),
        rand::random(),
        rand::random(),
        [
            ("caller".to_string(), caller.clone()),
            ("dialled".to_string(), incoming.dialled.clone()),
        ],
    );
    // The operation in flight (one at a time: the plan waits for it).
    let mut op_task: Option<tokio::task::JoinHandle<crate::services::OpResult>> = None;
    let mut op_seq = 0u32;
    let mut topup_ids: Vec<String> = vec![];
    // The escalation whose transfer (REFER) is in flight.
    let mut referring: Option<String> = None;
    let started = Instant::now();
    session.start(started);
    // Where media may come from and where ours goes (see media::peer).
    let mut peer = RtpPeer::new(
        started,
        cfg.rtp_source,
        SocketAddr::new(negotiated.remote_addr, negotiated.remote_port),
        Some(incoming.source.ip()),
    );
    let mut last_rtp = started;
    let mut buf = vec![0u8; 2048];
    let mut hangup_deadline: Option<Instant> = None;

    let reason = loop {
        let now = Instant::now();
        let to = peer.send_to(now);
        while let Some(pkt) = session.poll_transmit(now) {
            if let Some(to) = to {
                let _ = socket.send_to(&pkt, to).await;
            }
        }
        if let Some((op, args)) = session.poll_invoke() {
            op_seq += 1;
            if op == "call" {
                // The calling service takes over the media until the call ends.
                let number = args
                    .iter()
                    .find(|(k, _)| k == "number")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                let leg = crate::bridge::CallerLeg {
                    session: &mut session,
                    socket: &socket,
                    peer: &mut peer,
                    last_rtp: &mut last_rtp,
                    events: &mut events,
                    events_tx: events_tx.clone(),
                    commands: commands.clone(),
                    call,
                    caller: &caller,
                    id: format!("{}:{op_seq}", incoming.call_id),
                };
                match crate::bridge::call(&shared, leg, &number).await {
                    crate::bridge::BridgeEnd::Result((code, mut vars)) => {
                        debug!(op = %"call", result = %code, "operation done");
                        if let Ok(b) = shared.core.wallet_balance(&caller).await {
                            vars.push(("balance".into(), b.to_string()));
                        }
                        session.handle_result(Instant::now(), code, vars);
                    }
                    crate::bridge::BridgeEnd::CallerGone(reason) => {
                        return Outcome {
                            reason: reason.as_str().into(),
                            digits: session.interpreter().digits().into(),
                            path: vec![],
                        }
                        .with_methods(cdr, &session);
                    }
                }
                continue;
            }
            op_task = Some(spawn_op(
                &shared,
                &caller,
                format!("voice:{}:{op_seq}", incoming.call_id),
                &session,
                op,
                args,
            ));
        }
        if let Some((target, reason, context)) = session.take_transfer() {
            let id = record_escalation(
                &shared,
                &incoming.call_id,
                &caller,
                &reason,
                &context,
                &topup_ids,
            )
            .await;
            info!(escalation = %id, %target, %reason, "escalating");
            match &cfg.agent_uri {
                Some(uri) => {
                    let sep = if uri.contains('?') { '&' } else { '?' };
                    let to = format!("{uri}{sep}X-Escalation-Id={id}");
                    send(SipCommand::Refer(
                        call,
                        to,
                        vec![("X-Escalation-Id".into(), id.clone())],
                    ))
                    .await;
                    referring = Some(id);
                }
                None => {
                    let _ = shared
                        .core
                        .set_escalation_state(&id, "failed", crate::topup::books::now_ms())
                        .await;
                    session.announce_then_hangup(now, &["agents-unavailable"], "escalation-failed");
                }
            }
        }
        if let Some(r) = session.poll_hangup(now) {
            break r.to_string();
        }
        if now >= started + cfg.max_call_duration {
            break "max-duration".into();
        }
        // The caller is expected to send RTP unless the stream is on hold the other way.
        if session.media().send && now >= last_rtp + cfg.rtp_timeout {
            break "rtp-timeout".into();
        }
        if hangup_deadline.is_some_and(|d| now >= d) {
            break "shutdown".into();
        }
        let wake = next_wake(
            now,
            [
                session.poll_timeout(),
                Some(started + cfg.max_call_duration),
                Some(last_rtp + cfg.rtp_timeout),
                hangup_deadline,
            ],
        );
        tokio::select! {
            r = async { op_task.as_mut().expect("guarded").await }, if op_task.is_some() => {
                op_task = None;
                finish_op(&mut session, r, &mut topup_ids);
            }
            r = socket.recv_from(&mut buf) => {
                let now = Instant::now();
                if let Ok((n, from)) = r {
                    if peer.handle_packet(now, from, &buf[..n]) == Verdict::Accept {
                        last_rtp = now;
                        session.handle_rtp(now, &buf[..n]);
                    } else {
                        metrics::counter!("topup_ivr_rtp_foreign_packets_total").increment(1);
                    }
                }
            }
            ev = events.recv() => {
                let now = Instant::now();
                match ev {
                    Some(SipEvent::Dtmf { digit, .. }) => session.handle_digit(now, digit, DtmfMethod::SipInfo),
                    Some(SipEvent::Reoffer { offer, .. }) => match sdp::negotiate(&offer, &cfg.codecs) {
                        Ok(n) => {
                            sdp_version += 1;
                            session.set_media(media_params(&n, cfg.inband_dtmf));
                            cdr.codec = Some(n.codec.name().to_string());
                            peer.set_sdp(now, SocketAddr::new(n.remote_addr, n.remote_port));
                            let answer = sdp::write_answer(&n, cfg.advertise, local_port, session_id, sdp_version);
                            send(SipCommand::AnswerReoffer(call, Ok(answer))).await;
                        }
                        Err(e) => {
                            info!(error = %e, "re-offer refused");
                            send(SipCommand::AnswerReoffer(call, Err(488))).await;
                        }
                    },
                    Some(SipEvent::ReferResult { code, .. }) => {
                        if let Some(id) = referring.take() {
                            let ms = crate::topup::books::now_ms();
                            if (200..300).contains(&code) {
                                let _ = shared.core.set_escalation_state(&id, "transferred", ms).await;
                                break "transferred".into();
                            }
                            warn!(code, "transfer refused");
                            let _ = shared.core.set_escalation_state(&id, "failed", ms).await;
                            session.announce_then_hangup(now, &["agents-unavailable"], "escalation-failed");
                        }
                    }
                    Some(SipEvent::Ended { reason, .. }) => {
                        return Outcome { reason: reason.as_str().into(), digits: session.interpreter().digits().into(), path: vec![] }
                            .with_methods(cdr, &session);
                    }
                    Some(_) => {}
                    None => break "internal".into(),
                }
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() == Shutdown::HangupNow {
                    hangup_deadline = Some(Instant::now());
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                session.handle_timeout(Instant::now());
            }
        }
    };
    send(SipCommand::Hangup(call)).await;
    Outcome {
        reason,
        digits: session.interpreter().digits().into(),
        path: vec![],
    }
    .with_methods(cdr, &session)
}

/// Runs a plan operation in its own task (the plan waits for the result; the call's media
/// goes on meanwhile). `request_id` is unique per call and operation.
pub fn spawn_op(
    shared: &Arc<Shared>,
    caller: &str,
    request_id: String,
    session: &CallSession,
    op: String,
    args: Vec<(String, String)>,
) -> tokio::task::JoinHandle<crate::services::OpResult> {
    let shared = shared.clone();
    let caller = caller.to_string();
    let language = session.interpreter().language().to_string();
    debug!(op = %op, "operation");
    tokio::spawn(async move {
        let ctx = crate::services::OpContext {
            core: &shared.core,
            adapters: &shared.adapters,
            hlr: shared.hlr.as_ref(),
            caller: &caller,
            request_id,
            channel: "voice",
            language: Some(&language),
        };
        let result = crate::services::run(&ctx, &op, &args).await;
        debug!(op = %op, result = %result.0, "operation done");
        // A wrong (or refused) PIN is answered ever more slowly: a dialler guessing PINs
        // gets few tries per hour. The call's media goes on meanwhile.
        if crate::services::PIN_FAILURES.contains(&result.0.as_str()) {
            let now = crate::topup::books::now_ms();
            match shared.core.pin_failure_delay(&caller, now).await {
                Ok(d) if !d.is_zero() => {
                    debug!(
                        delay_ms = d.as_millis() as u64,
                        "pausing after a PIN failure"
                    );
                    tokio::time::sleep(d).await;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "PIN failure delay unknown"),
            }
        }
        result
    })
}

/// Hands an operation's result to the plan, remembering the top-ups it made (an escalation
/// carries them to the agent).
pub fn finish_op(
    session: &mut CallSession,
    r: Result<crate::services::OpResult, tokio::task::JoinError>,
    topup_ids: &mut Vec<String>,
) {
    let (code, vars) = r.unwrap_or_else(|_| ("unavailable".into(), vec![]));
    if let Some((_, id)) = vars.iter().find(|(k, _)| k == "topup_id") {
        topup_ids.push(id.clone());
    }
    session.handle_result(Instant::now(), code, vars);
}

/// Records an escalation the plan asked for (what the agent sees) and returns its id, which
/// travels with the transfer.
pub async fn record_escalation(
    shared: &Shared,
    call_id: &str,
    caller: &str,
    reason: &str,
    context: &CallContext,
    topup_ids: &[String],
) -> String {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let esc = crate::topup::escalations::Escalation {
        id: id.clone(),
        call_id: call_id.to_string(),
        caller: caller.to_string(),
        service: context.service.clone(),
        language: context.language.clone(),
        node: context.node.clone(),
        path: context.path.clone(),
        inputs: context.inputs.clone(),
        reason: reason.to_string(),
        topup_ids: topup_ids.to_vec(),
        state: "open".into(),
        created_at: crate::topup::books::now_ms(),
        updated_at: crate::topup::books::now_ms(),
    };
    if let Err(e) = shared.core.record_escalation(&esc, esc.created_at).await {
        warn!(error = %e, "escalation not recorded");
    }
    id
}

impl Outcome {
    fn with_methods(mut self, cdr: &mut Cdr, session: &CallSession) -> Outcome {
        cdr.dtmf_methods = session.dtmf_methods();
        self.path = session.interpreter().context().path;
        self
    }
}

fn media_params(n: &Negotiated, inband: crate::config::InbandDtmf) -> MediaParams {
    use crate::config::InbandDtmf;
    MediaParams {
        codec: n.codec,
        payload: Payload::G711,
        lead: Duration::ZERO,
        telephone_event: n.telephone_event,
        inband: match inband {
            InbandDtmf::Auto => n.telephone_event.is_none(),
            InbandDtmf::Always => true,
            InbandDtmf::Never => false,
        },
        send: n.direction.we_send(),
    }
}

/// Used by the transport for calls refused before a task exists.
pub fn refused_cdr(incoming: &IncomingCall, service: Option<String>, reason: &str) -> Cdr {
    let now = timestamp();
    Cdr {
        call_id: incoming.call_id.clone(),
        caller: incoming.caller.clone(),
        dialled: incoming.dialled.clone(),
        service,
        codec: None,
        dtmf_methods: String::new(),
        started_at: now.clone(),
        answered_at: None,
        ended_at: now,
        end_reason: reason.to_string(),
        digits: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::dtmf::rfc4733::EventPayload;
    use crate::media::prompts::Prompt;
    use std::path::Path;

    /// The echo plan with tiny prompts: each is one frame of a distinct constant level, so a
    /// packet's payload tells which prompt it belongs to.
    fn session() -> (CallSession, Arc<PromptStore>) {
        let plan = Dialplan::parse(
            Path::new("echo.toml"),
            include_str!("../dialplans/echo.toml"),
            &|_, _| true,
        )
        .unwrap();
        let mut store = PromptStore::default();
        let names = ["echo-welcome", "echo-reprompt", "goodbye"]
            .into_iter()
            .chain(crate::dialplan::model::SAY_PROMPTS);
        for (i, name) in names.enumerate() {
            let frames = if name == "echo-welcome" { 50 } else { 2 };
            store.insert(Prompt::from_pcm8k(
                name,
                "en",
                "",
                vec![(i as i16 + 1) * 500; 160 * frames],
            ));
        }
        let store = Arc::new(store);
        let media = MediaParams {
            codec: Codec::Pcmu,
            payload: Payload::G711,
            lead: Duration::ZERO,
            telephone_event: Some(101),
            inband: false,
            send: true,
        };
        (
            CallSession::new(Arc::new(plan), store.clone(), media, 1, 0, 0),
            store,
        )
    }

    fn first_byte(store: &PromptStore, name: &str) -> u8 {
        store.get("en", name).unwrap().frame(Codec::Pcmu, 0)[0]
    }

    fn key(code: u8, ts: u32) -> Vec<u8> {
        let mut ev = [0u8; 4];
        EventPayload {
            event: code,
            end: false,
            volume: 10,
            duration: 160,
        }
        .write(&mut ev);
        let mut p = vec![0x80, 101, 0, 1];
        p.extend_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(&7u32.to_be_bytes());
        p.extend_from_slice(&ev);
        p
    }

    #[test]
    fn a_key_cuts_the_greeting_and_its_readback_starts_in_the_next_frame() {
        let (mut s, store) = session();
        let t0 = Instant::now();
        s.start(t0);
        let first = s.poll_transmit(t0).unwrap();
        assert_eq!(first[12], first_byte(&store, "echo-welcome"));
        // Key "4" arrives 5 ms into the second frame period.
        let t = t0 + Duration::from_millis(25);
        s.handle_rtp(t, &key(4, 1000));
        let next = s.poll_transmit(t0 + Duration::from_millis(40)).unwrap();
        assert_eq!(
            next[12],
            first_byte(&store, "digit-4"),
            "readback right after the key"
        );
        assert_eq!(s.dtmf_methods(), "rfc4733");
    }

    #[test]
    fn star_star_hangs_up_after_goodbye_and_a_short_linger() {
        let (mut s, store) = session();
        let t0 = Instant::now();
        s.start(t0);
        s.handle_rtp(t0, &key(10, 100));
        s.handle_rtp(t0, &key(10, 900));
        let goodbye = first_byte(&store, "goodbye");
        let mut now = t0;
        let mut goodbye_end = None;
        while s.poll_hangup(now).is_none() {
            assert!(now < t0 + Duration::from_secs(2), "never hung up");
            while let Some(p) = s.poll_transmit(now) {
                if p[12] == goodbye {
                    goodbye_end = Some(now);
                }
            }
            now = s.poll_timeout().unwrap();
        }
        let linger = now - goodbye_end.expect("goodbye was played");
        assert!(linger >= HANGUP_LINGER, "{linger:?}");
        assert_eq!(s.poll_hangup(now), Some("service-hangup"));
        assert_eq!(s.interpreter().digits(), "**");
    }

    #[test]
    fn on_hold_nothing_is_sent_but_time_goes_on() {
        let (mut s, _) = session();
        let t0 = Instant::now();
        s.set_media(MediaParams {
            send: false,
            ..s.media()
        });
        s.start(t0);
        assert!(s.poll_transmit(t0 + Duration::from_millis(100)).is_none());
        s.set_media(MediaParams {
            send: true,
            ..s.media()
        });
        let p = s.poll_transmit(t0 + Duration::from_millis(120)).unwrap();
        // Six frame periods went by while held: time moved on, the sequence did not.
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 0);
        assert_eq!(u32::from_be_bytes([p[4], p[5], p[6], p[7]]), 6 * 160);
        assert!(
            p[1] & 0x80 != 0,
            "marker on the first packet after the hold"
        );
    }

    #[test]
    fn rtcp_and_garbage_on_the_rtp_port_are_ignored() {
        let (mut s, _) = session();
        let t0 = Instant::now();
        s.start(t0);
        s.handle_rtp(t0, &[0x80, 200, 0, 6, 0, 0, 0, 1]);
        s.handle_rtp(t0, &[1, 2, 3]);
        s.handle_rtp(t0, &[]);
        assert_eq!(s.interpreter().digits(), "");
    }

    #[test]
    fn random_and_mutated_rtp_never_panics_the_session() {
        let (mut s, _) = session();
        s.set_media(MediaParams {
            inband: true,
            ..s.media()
        });
        let t0 = Instant::now();
        s.start(t0);
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..50_000u64 {
            let mut p = key((rnd() % 20) as u8, rnd() as u32);
            if i % 3 == 0 {
                p = rtp_rs::RtpPacketBuilder::new()
                    .payload_type((rnd() % 128) as u8)
                    .payload(&[0x55; 160])
                    .build()
                    .unwrap();
            }
            for _ in 0..(rnd() % 4) {
                let pos = rnd() as usize % p.len();
                p[pos] = rnd() as u8;
            }
            p.truncate(rnd() as usize % (p.len() + 1));
            let now = t0 + Duration::from_micros(i * 400);
            s.handle_rtp(now, &p);
            while s.poll_transmit(now).is_some() {}
            s.handle_timeout(now);
        }
    }
}
