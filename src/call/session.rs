//! One call's logic, sans-IO: the [`CallSession`] (interpreter + player + DTMF receivers).
//!
//! The session takes `now` and inputs (packets, keys, operation results) and says what it
//! needs done through one output, [`CallSession::poll_output`] (as str0m's `Rtc`); the
//! driver (`call::driver`) only moves bytes and time in and out, the same for every edge.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::dialplan::interpreter::CallContext;
use crate::dialplan::{Args, CallAction, CallEvent, Dialplan, Interpreter, Op};
use crate::media::dtmf::inband::{InbandDetector, InbandDigit};
use crate::media::dtmf::rfc4733::Rfc4733Receiver;
use crate::media::dtmf::{Digit, DtmfMethod};
use crate::media::g711::Codec;
use crate::media::player::{Payload, PlayItem, Player, PlayerEvent};
use crate::media::prompts::PromptStore;

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

/// What a [`CallSession`] needs done ([`CallSession::poll_output`]).
#[derive(Debug, PartialEq)]
pub enum Output {
    /// Send this 20 ms media packet now: RTP, the payload in the call's [`Payload`] format
    /// (edges that carry bare frames send what follows the 12-byte header).
    Transmit(Vec<u8>),
    /// A prompt was cut off (barge-in): drop whatever audio the far end still has queued.
    Flush,
    /// Run a plan operation; answer with [`CallSession::handle_result`]. The plan waits for
    /// it (one at a time) while the media goes on.
    Invoke { op: Op, args: Args },
    /// Escalate: record the case and send the caller to `target` (the agents).
    Transfer {
        target: String,
        reason: String,
        context: CallContext,
    },
    /// The plan ended the call and its last prompt has played out: hang up, for `reason`.
    Hangup(String),
    /// Nothing is due before this instant, unless an input arrives first.
    Timeout(Instant),
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
    ops: VecDeque<(Op, Args)>,
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
        self.inband.handle_pcm(pcm, &mut self.inband_found);
        let found: Vec<Digit> = self.inband_found.drain(..).map(|d| d.digit).collect();
        for d in found {
            self.handle_digit(now, d, DtmfMethod::Inband);
        }
    }

    pub fn handle_digit(&mut self, now: Instant, digit: Digit, method: DtmfMethod) {
        debug!(method = method.as_str(), "key received");
        metrics::counter!("topup_ivr_dtmf_digits_total", "method" => method.as_str()).increment(1);
        self.methods.insert(method.as_str());
        self.interp.handle_event(now, CallEvent::Digit(digit));
        self.pump(now);
    }

    /// What the session needs done next. Call until it answers [`Output::Timeout`]: then
    /// nothing is due before that instant unless an input arrives (a packet, a key, an
    /// operation's result), after which the outputs are polled again.
    pub fn poll_output(&mut self, now: Instant) -> Output {
        if std::mem::take(&mut self.flushed) {
            return Output::Flush;
        }
        if let Some(packet) = self.player.poll_transmit(now).map(<[u8]>::to_vec) {
            self.pump(now);
            return Output::Transmit(packet);
        }
        if let Some((op, args)) = self.ops.pop_front() {
            return Output::Invoke { op, args };
        }
        if let Some((target, reason, context)) = self.transfer.take() {
            return Output::Transfer {
                target,
                reason,
                context,
            };
        }
        if let Some((reason, _)) = self.hangup.take_if(|(_, at)| now >= *at) {
            return Output::Hangup(reason);
        }
        let next = [
            self.player.poll_timeout(),
            self.interp.poll_timeout(),
            self.hangup.as_ref().map(|h| h.1),
        ]
        .into_iter()
        .flatten()
        .min();
        // Nothing scheduled (a plan waiting for an operation while on hold): look again in a
        // second at the latest.
        Output::Timeout(next.unwrap_or(now + Duration::from_secs(1)).max(now))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.interp.handle_timeout(now);
        self.pump(now);
    }

    pub fn handle_result(&mut self, now: Instant, code: String, vars: Vec<(String, String)>) {
        self.interp
            .handle_event(now, CallEvent::Result { code, vars });
        self.pump(now);
    }

    /// Plays prompts (in the call's language), then hangs up with `reason`: what the driver
    /// says when it cannot do what the plan asked (no agent to transfer to).
    pub fn announce_then_hangup(&mut self, now: Instant, names: &[&str], reason: &str) {
        let items = self.announcement(names);
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
        let items = self.announcement(names);
        if !items.is_empty() {
            self.player.set_muted(!self.media.send);
            self.player.enqueue(items);
        }
    }

    /// The driver's own prompts, in the call's language (those missing are left out).
    fn announcement(&self, names: &[&str]) -> Vec<PlayItem> {
        let lang = self.interp.language();
        names
            .iter()
            .filter_map(|n| self.prompts.get(lang, n))
            .map(PlayItem::Prompt)
            .collect()
    }

    /// An announcement is being spoken during a bridge.
    pub fn is_announcing(&self) -> bool {
        self.bridged && self.player.is_playing()
    }

    /// Whether received audio should be relayed rather than interpreted.
    pub fn is_bridged(&self) -> bool {
        self.bridged
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
            include_str!("../../dialplans/echo.toml"),
            &crate::dialplan::Catalog::EVERY_PROMPT,
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

    /// The packet due at `now`, if any (the tests using it expect no other output).
    fn transmit(s: &mut CallSession, now: Instant) -> Option<Vec<u8>> {
        match s.poll_output(now) {
            Output::Transmit(p) => Some(p),
            Output::Timeout(_) => None,
            other => panic!("unexpected {other:?}"),
        }
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
        let first = transmit(&mut s, t0).unwrap();
        assert_eq!(first[12], first_byte(&store, "echo-welcome"));
        assert_eq!(
            s.poll_output(t0),
            Output::Timeout(t0 + Duration::from_millis(20))
        );
        // Key "4" arrives 5 ms into the second frame period.
        let t = t0 + Duration::from_millis(25);
        s.handle_rtp(t, &key(4, 1000));
        // The greeting was cut: a softswitch drops what it still has queued.
        assert_eq!(s.poll_output(t), Output::Flush);
        let next = transmit(&mut s, t0 + Duration::from_millis(40)).unwrap();
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
        let reason = loop {
            assert!(now < t0 + Duration::from_secs(2), "never hung up");
            match s.poll_output(now) {
                Output::Transmit(p) if p[12] == goodbye => goodbye_end = Some(now),
                Output::Transmit(_) | Output::Flush => {}
                Output::Hangup(reason) => break reason,
                Output::Timeout(t) => now = t,
                other => panic!("unexpected {other:?}"),
            }
        };
        let linger = now - goodbye_end.expect("goodbye was played");
        assert!(linger >= HANGUP_LINGER, "{linger:?}");
        assert_eq!(reason, "service-hangup");
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
        assert!(transmit(&mut s, t0 + Duration::from_millis(100)).is_none());
        s.set_media(MediaParams {
            send: true,
            ..s.media()
        });
        let p = transmit(&mut s, t0 + Duration::from_millis(120)).unwrap();
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
            while !matches!(s.poll_output(now), Output::Timeout(_)) {}
            s.handle_timeout(now);
        }
    }
}
