//! One generated caller's media, sans-IO: it sends 20 ms G.711 frames (silence) and RFC 4733
//! key presses at real-time pace, follows its script by listening to what the service plays,
//! and measures what it receives: inter-arrival jitter, lost and late frames, and the time from
//! the end of a key press to the first packet of the prompt that answers it.
//!
//! The driver hands in `now` and datagrams and sends what `poll_transmit` gives; nothing here
//! touches a socket or a clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::script::{Script, Step, expand};
use topup_media::dtmf::Digit;
use topup_media::dtmf::rfc4733::EventPayload;
use topup_media::g711::Codec;
use topup_media::prompts::{FRAME_SAMPLES, PromptStore};

const FRAME: Duration = Duration::from_millis(20);
const RTP_HEADER: usize = 12;
/// A key press: this many 20 ms packets with a growing duration (100 ms of tone), then the
/// end packet sent three times (RFC 4733 §2.5.1.4), then a pause of normal audio.
const KEY_PACKETS: u32 = 5;
const END_REPEATS: u32 = 3;
const KEY_PAUSE_FRAMES: u32 = 3;
/// Longest wait for a prompt (a `wait` step, or the answer to a key press).
pub const PROMPT_LIMIT: Duration = Duration::from_secs(30);
/// A frame arriving later than this after its place in the stream counts as late (what a
/// 40 ms jitter buffer would no longer play).
pub const LATE_AFTER: Duration = Duration::from_millis(40);
/// Most of our own frames sent back-to-back after a late wake-up; older ones are skipped.
const MAX_BURST: u32 = 5;

/// The opening audible frames of every prompt, for each codec, with their place in it:
/// seeing one on the wire dates the start of its prompt. A quiet frame can open several
/// prompts at different places (recordings start with faint noise); such frames say nothing
/// and are left out, and the next frames of the prompt date it instead.
#[derive(Debug, Default)]
pub struct PromptIndex {
    /// Payload → frame index in its prompt; `None` when prompts disagree.
    frames: HashMap<(Codec, Box<[u8]>), Option<u32>>,
}

/// A frame whose loudest sample reaches this (about −50 dBFS) is heard; quieter ones are the
/// room noise and dither that recordings carry around their words, and count as silence.
const AUDIBLE_PEAK: i16 = 100;

/// Whether a G.711 frame carries sound a caller would hear.
pub fn audible(codec: Codec, payload: &[u8]) -> bool {
    payload
        .iter()
        .any(|&b| codec.decode_sample(b).unsigned_abs() >= AUDIBLE_PEAK as u16)
}

/// Audible frames indexed from the start of each prompt.
const INDEXED_FRAMES: usize = 10;

impl PromptIndex {
    pub fn new(store: &PromptStore) -> PromptIndex {
        let mut frames: HashMap<(Codec, Box<[u8]>), Option<u32>> = HashMap::new();
        for lang in store.languages() {
            for name in store.names(lang) {
                let Some(p) = store.get(lang, name) else {
                    continue;
                };
                for codec in Codec::ALL {
                    let sounding = (0..p.frames())
                        .filter(|&i| audible(codec, p.frame(codec, i)))
                        .take(INDEXED_FRAMES);
                    for i in sounding {
                        let at = i as u32;
                        frames
                            .entry((codec, canonical(codec, p.frame(codec, i))))
                            .and_modify(|k| {
                                if *k != Some(at) {
                                    *k = None;
                                }
                            })
                            .or_insert(Some(at));
                    }
                }
            }
        }
        PromptIndex { frames }
    }

    /// How many frames into its prompt `payload` is, if it dates one.
    fn lookup(&self, codec: Codec, payload: &[u8]) -> Option<u32> {
        // Keyed by boxed slices: building the key costs one small copy, only while a key
        // press waits for its answer.
        self.frames
            .get(&(codec, canonical(codec, payload)))
            .copied()
            .flatten()
    }
}

/// A frame as the index keys it: each byte as [`Codec::canonical`] has it, so a softswitch
/// that re-encodes our audio (writing +0 where we wrote −0) is still recognised.
fn canonical(codec: Codec, payload: &[u8]) -> Box<[u8]> {
    payload.iter().map(|&b| codec.canonical(b)).collect()
}

/// What the caller asks of its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send BYE: the script is done (or the call's time is up).
    Hangup,
    /// The call failed; hang up and count it with this reason.
    Fail(String),
}

/// What one call measured.
#[derive(Debug)]
pub struct CallStats {
    pub received: u64,
    /// Frames missing from the sequence or skipped in time (a timestamp jump).
    pub lost: u64,
    pub late: u64,
    /// |inter-arrival − 20 ms| of every received audio frame, µs.
    pub jitter_us: hdrhistogram::Histogram<u32>,
    /// First packet of the last key of a press → first packet of the prompt answering it, µs.
    pub key_down_us: Vec<i64>,
    /// The same from the key's end packet: negative when the answer began while the key was
    /// still held (the service acts on the first packet of an event).
    pub key_up_us: Vec<i64>,
    /// Key presses no prompt answered within the limit.
    pub dtmf_unanswered: u32,
    pub keys_sent: u32,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for a prompt to have played (since the last key went down) and then for
    /// `quiet` of silence.
    Wait {
        since: Instant,
    },
    Keys {
        digits: Vec<Digit>,
        /// Index of the key being sent, packet within it.
        key: usize,
        packet: u32,
        /// RTP timestamp of the key's first packet.
        ts: u32,
    },
    Hold {
        until: Instant,
    },
    End,
    Idle,
}

pub struct Caller {
    codec: Codec,
    event_pt: u8,
    ssrc: u32,
    seq: u16,
    ts: u32,
    next_due: Option<Instant>,
    script: Arc<Script>,
    pin: Option<String>,
    step: Option<usize>,
    phase: Phase,
    quiet: Duration,
    until: Instant,
    /// Reached the loop (or the end): running out of time from here on is success.
    in_loop: bool,
    /// A prompt sounded since the last key went down (or since the call began).
    heard: bool,
    /// Silence since then, if the line is silent now.
    quiet_from: Option<Instant>,
    actions: Vec<Action>,
    index: Arc<PromptIndex>,
    packet: [u8; RTP_HEADER + FRAME_SAMPLES],
    // Receive side.
    peer_ssrc: Option<u32>,
    first_rx: Option<(Instant, u32)>,
    last_rx: Option<(Instant, u16, u32)>,
    min_offset: Option<i128>,
    /// A key press waiting for its answer: when its last key went down (and up).
    awaiting: Option<(Instant, Option<Instant>)>,
    stats: CallStats,
}

impl Caller {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        now: Instant,
        codec: Codec,
        event_pt: u8,
        script: Arc<Script>,
        pin: Option<String>,
        index: Arc<PromptIndex>,
        quiet: Duration,
        length: Duration,
        seed: u32,
    ) -> Caller {
        let mut c = Caller {
            codec,
            event_pt,
            ssrc: seed,
            seq: (seed >> 7) as u16,
            ts: seed.rotate_left(13),
            // A phone's frame clock has no relation to the service's: start at a random
            // point of the 20 ms frame, or every key would land at the same phase of the
            // service's frames and the key-to-prompt figures would be biased.
            next_due: Some(now + Duration::from_micros((seed % 20_000) as u64)),
            script,
            pin,
            step: None,
            phase: Phase::Idle,
            quiet,
            until: now + length,
            in_loop: false,
            heard: false,
            quiet_from: None,
            actions: vec![],
            index,
            packet: [0; RTP_HEADER + FRAME_SAMPLES],
            peer_ssrc: None,
            first_rx: None,
            last_rx: None,
            min_offset: None,
            awaiting: None,
            stats: CallStats {
                received: 0,
                lost: 0,
                late: 0,
                jitter_us: hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 2)
                    .expect("valid bounds"),
                key_down_us: vec![],
                key_up_us: vec![],
                dtmf_unanswered: 0,
                keys_sent: 0,
            },
        };
        c.enter(now, Some(0));
        c
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop()
    }

    pub fn stats(&self) -> &CallStats {
        &self.stats
    }

    pub fn into_stats(self) -> CallStats {
        self.stats
    }

    /// When the caller next needs `handle_timeout` (or `poll_transmit`).
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_due.unwrap_or(self.until).min(self.until);
        match &self.phase {
            Phase::Wait { since } => {
                t = t.min(*since + PROMPT_LIMIT);
                if let Some(q) = self.quiet_from {
                    t = t.min(q + self.quiet);
                }
            }
            Phase::Hold { until } => t = t.min(*until),
            _ => {}
        }
        if let Some((a, _)) = self.awaiting {
            t = t.min(a + PROMPT_LIMIT);
        }
        t
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some((a, _)) = self.awaiting
            && now >= a + PROMPT_LIMIT
        {
            self.awaiting = None;
            self.stats.dtmf_unanswered += 1;
        }
        if !self.actions.is_empty() || self.next_due.is_none() {
            return;
        }
        if now >= self.until && !matches!(self.phase, Phase::Keys { .. }) {
            self.finish(
                if self.in_loop || matches!(self.phase, Phase::Hold { .. }) {
                    Action::Hangup
                } else {
                    Action::Fail(format!(
                        "the script did not finish in the call's time (at step {})",
                        self.step.map_or(0, |s| s + 1)
                    ))
                },
            );
            return;
        }
        match self.phase {
            Phase::Wait { since } => {
                if self.heard && self.quiet_from.is_some_and(|q| now >= q + self.quiet) {
                    self.advance(now);
                } else if now >= since + PROMPT_LIMIT {
                    self.finish(Action::Fail(format!(
                        "no prompt and silence within {} s (step {})",
                        PROMPT_LIMIT.as_secs(),
                        self.step.map_or(0, |s| s + 1)
                    )));
                }
            }
            Phase::Hold { until } if now >= until => self.advance(now),
            _ => {}
        }
    }

    /// The service hung up. Expected only in an `end` step.
    pub fn remote_hangup(&mut self) -> Result<(), String> {
        self.next_due = None;
        match self.phase {
            Phase::End => Ok(()),
            _ if self.in_loop && self.script.loop_from.is_none() => Ok(()),
            _ => Err(format!(
                "the service hung up during step {}",
                self.step.map_or(0, |s| s + 1)
            )),
        }
    }

    fn finish(&mut self, a: Action) {
        self.next_due = None;
        self.phase = Phase::Idle;
        self.actions.push(a);
    }

    fn advance(&mut self, now: Instant) {
        let next = self.step.and_then(|i| self.script.next(i));
        self.enter(now, next);
    }

    fn enter(&mut self, now: Instant, step: Option<usize>) {
        let Some(i) = step else {
            // Out of steps: hold until the call's time is up.
            self.in_loop = true;
            self.step = None;
            self.phase = Phase::Hold { until: self.until };
            return;
        };
        self.step = Some(i);
        if self.script.loop_from.is_some_and(|f| i >= f) {
            self.in_loop = true;
        }
        self.phase = match &self.script.steps[i] {
            Step::Wait => Phase::Wait { since: now },
            Step::Keys(k) => {
                let digits = expand(k, self.pin.as_deref());
                if digits.is_empty() {
                    return self.finish(Action::Fail("no PIN for a `{pin}` step".into()));
                }
                Phase::Keys {
                    digits,
                    key: 0,
                    packet: 0,
                    ts: self.ts,
                }
            }
            Step::Hold(d) => Phase::Hold { until: now + *d },
            Step::Loop => return self.advance(now),
            Step::Bye => return self.finish(Action::Hangup),
            Step::End => Phase::End,
        };
    }

    /// The next packet to send if one is due. Call until `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<&[u8]> {
        let due = self.next_due?;
        if now < due || !self.actions.is_empty() {
            return None;
        }
        let late = ((now - due).as_micros() / FRAME.as_micros()) as u32;
        let mut due = due;
        if late > MAX_BURST && !matches!(self.phase, Phase::Keys { .. }) {
            let skip = late - 1;
            self.ts = self.ts.wrapping_add(skip * FRAME_SAMPLES as u32);
            due += FRAME * skip;
        }
        self.next_due = Some(due + FRAME);
        let mut len = RTP_HEADER + FRAME_SAMPLES;
        let (pt, marker) = match &mut self.phase {
            Phase::Keys {
                digits,
                key,
                packet,
                ts,
            } => {
                let total = KEY_PACKETS + END_REPEATS;
                if *packet < total {
                    let end = *packet >= KEY_PACKETS;
                    let payload = EventPayload {
                        event: digits[*key].event_code(),
                        end,
                        volume: 10,
                        duration: ((*packet).min(KEY_PACKETS - 1) + 1) as u16
                            * FRAME_SAMPLES as u16,
                    };
                    let mut p = [0u8; 4];
                    payload.write(&mut p);
                    self.packet[RTP_HEADER..RTP_HEADER + 4].copy_from_slice(&p);
                    len = RTP_HEADER + 4;
                    let marker = *packet == 0;
                    let event_ts = *ts;
                    if marker {
                        // What plays from now on answers this key.
                        self.heard = false;
                        self.quiet_from = None;
                    }
                    if *key + 1 == digits.len() {
                        // The last key: its answer is awaited from its first packet.
                        if *packet == 0 {
                            self.awaiting = Some((now, None));
                        } else if *packet == KEY_PACKETS
                            && let Some((_, up)) = &mut self.awaiting
                        {
                            *up = Some(now);
                        }
                    }
                    if *packet == KEY_PACKETS {
                        self.stats.keys_sent += 1;
                    }
                    *packet += 1;
                    self.write_header(self.event_pt, marker, event_ts);
                    self.ts = self.ts.wrapping_add(FRAME_SAMPLES as u32);
                    self.seq = self.seq.wrapping_add(1);
                    return Some(&self.packet[..len]);
                }
                // The pause after a key: normal audio.
                *packet += 1;
                if *packet >= total + KEY_PAUSE_FRAMES {
                    *key += 1;
                    *packet = 0;
                    *ts = self.ts.wrapping_add(FRAME_SAMPLES as u32);
                    if *key >= digits.len() {
                        self.advance(now);
                    }
                }
                (self.codec.payload_type(), false)
            }
            _ => (self.codec.payload_type(), false),
        };
        self.packet[RTP_HEADER..].fill(self.codec.silence_byte());
        self.write_header(pt, marker, self.ts);
        self.ts = self.ts.wrapping_add(FRAME_SAMPLES as u32);
        self.seq = self.seq.wrapping_add(1);
        Some(&self.packet[..len])
    }

    fn write_header(&mut self, pt: u8, marker: bool, ts: u32) {
        let h = &mut self.packet[..RTP_HEADER];
        h[0] = 0x80;
        h[1] = pt | if marker { 0x80 } else { 0 };
        h[2..4].copy_from_slice(&self.seq.to_be_bytes());
        h[4..8].copy_from_slice(&ts.to_be_bytes());
        h[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
    }

    /// A datagram from the service's RTP port.
    pub fn handle_packet(&mut self, now: Instant, data: &[u8]) {
        let Ok(rtp) = rtp_rs::RtpReader::new(data) else {
            return;
        };
        if rtp.payload_type() != self.codec.payload_type() {
            return;
        }
        // One stream per call: a packet of another SSRC is a late one from an earlier call
        // that had this local port (the OS hands ports out again), not ours to count.
        let ssrc = rtp.ssrc();
        if *self.peer_ssrc.get_or_insert(ssrc) != ssrc {
            return;
        }
        let seq = u16::from(rtp.sequence_number());
        let ts = rtp.timestamp();
        let payload = rtp.payload();
        match self.last_rx {
            Some((_, last_seq, _)) if seq == last_seq => return,
            Some((_, last_seq, _)) if (seq.wrapping_sub(last_seq) as i16) < 0 => {
                // A reordered old frame: its gap was counted as lost already.
                self.stats.received += 1;
                self.stats.lost = self.stats.lost.saturating_sub(1);
                return;
            }
            Some((at, last_seq, last_ts)) => {
                let gap = seq.wrapping_sub(last_seq) as u64;
                // A timestamp that went back says nothing of skipped frames.
                let frames = match ts.wrapping_sub(last_ts) {
                    d if (d as i32) < 0 => 0,
                    d => (d / FRAME_SAMPLES as u32) as u64,
                };
                // Missing sequence numbers, or frames the sender skipped in time.
                self.stats.lost += gap.max(frames).saturating_sub(1);
                // RFC 3550 §6.4.1 D(i,j): arrival spacing against timestamp spacing.
                let dt = now.saturating_duration_since(at).as_micros() as i64;
                let dts = ts.wrapping_sub(last_ts) as i64 * 125;
                let _ = self
                    .stats
                    .jitter_us
                    .record((dt - dts).unsigned_abs().max(1));
            }
            None => self.first_rx = Some((now, ts)),
        }
        self.stats.received += 1;
        self.last_rx = Some((now, seq, ts));
        // Lateness against the earliest this stream has ever been (same clock both sides).
        if let Some((t0, ts0)) = self.first_rx {
            let place = ts.wrapping_sub(ts0) as i128 * 125; // µs at 8 kHz
            let offset = now.saturating_duration_since(t0).as_micros() as i128 - place;
            let min = self.min_offset.get_or_insert(offset);
            *min = (*min).min(offset);
            if offset - *min > LATE_AFTER.as_micros() as i128 {
                self.stats.late += 1;
            }
        }
        let sounding = audible(self.codec, payload);
        if let Some((down, up)) = self.awaiting
            && sounding
            && let Some(k) = self.index.lookup(self.codec, payload)
        {
            let started = now.checked_sub(FRAME * k).unwrap_or(now);
            // Answered before the end packet went out: the end was due KEY_PACKETS frames in.
            let up = up.unwrap_or(down + FRAME * KEY_PACKETS);
            self.stats.key_down_us.push(signed_us(started, down));
            self.stats.key_up_us.push(signed_us(started, up));
            self.awaiting = None;
        }
        if sounding {
            self.heard = true;
            self.quiet_from = None;
        } else if self.heard && self.quiet_from.is_none() {
            self.quiet_from = Some(now);
        }
        self.handle_timeout(now);
    }
}

/// `a − b` in µs, negative when `a` is earlier.
fn signed_us(a: Instant, b: Instant) -> i64 {
    match a.checked_duration_since(b) {
        Some(d) => d.as_micros() as i64,
        None => -((b - a).as_micros() as i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use topup_media::player::{PlayItem, Player};
    use topup_media::prompts::Prompt;

    fn tone(frames: usize, lead_silence: usize, f: f32) -> Vec<i16> {
        (0..frames * FRAME_SAMPLES)
            .map(|i| {
                if i < lead_silence * FRAME_SAMPLES {
                    0
                } else {
                    (8000.0 * (i as f32 * f * std::f32::consts::TAU / 8000.0).sin()) as i16
                }
            })
            .collect()
    }

    fn store() -> Arc<PromptStore> {
        let mut s = PromptStore::default();
        s.insert(Prompt::from_pcm8k("greet", "en", "", tone(10, 0, 440.0)));
        // Opens with two frames of silence: its start is found from its third frame.
        s.insert(Prompt::from_pcm8k("digit", "en", "", tone(6, 2, 910.0)));
        Arc::new(s)
    }

    /// Runs a caller against a player standing for the service for `secs` of simulated time;
    /// the service answers each key with `digit` after `answer_after`.
    fn run(script: &str, secs: u64, answer_after: Duration) -> (Caller, Vec<Vec<u8>>, Action) {
        let store = store();
        let index = Arc::new(PromptIndex::new(&store));
        let t0 = Instant::now();
        let mut caller = Caller::new(
            t0,
            Codec::Pcmu,
            101,
            Arc::new(Script::parse(script).unwrap()),
            Some("42".into()),
            index,
            Duration::from_millis(200),
            Duration::from_secs(secs),
            7,
        );
        let mut service = Player::new(Codec::Pcmu, 1, 100, 1000);
        service.start(t0);
        service.enqueue([PlayItem::Prompt(store.get("en", "greet").unwrap())]);
        let mut sent = vec![];
        let mut answer_at: Option<Instant> = None;
        let mut now = t0;
        while now < t0 + Duration::from_secs(secs + 1) {
            while let Some(p) = caller.poll_transmit(now) {
                let p = p.to_vec();
                // A key's first packet (marker set): like the service, the stand-in answers
                // the key when it goes down, after a delay.
                if p[1] & 0x7f == 101 && p[1] & 0x80 != 0 {
                    answer_at = Some(now + answer_after);
                }
                sent.push(p);
            }
            if answer_at.is_some_and(|a| now >= a) {
                answer_at = None;
                service.enqueue([PlayItem::Prompt(store.get("en", "digit").unwrap())]);
            }
            while let Some(p) = service.poll_transmit(now) {
                let p = p.to_vec();
                caller.handle_packet(now, &p);
            }
            caller.handle_timeout(now);
            if let Some(a) = caller.poll_action() {
                return (caller, sent, a);
            }
            now += Duration::from_millis(1);
        }
        panic!("the caller never finished")
    }

    #[test]
    fn keys_go_out_as_rfc4733_presses_and_the_answer_time_is_measured() {
        let (caller, sent, end) = run("wait keys:{pin} wait bye", 10, Duration::from_millis(35));
        assert_eq!(end, Action::Hangup);
        let events: Vec<EventPayload> = sent
            .iter()
            .filter(|p| p[1] & 0x7f == 101)
            .map(|p| EventPayload::parse(&p[12..]).unwrap())
            .collect();
        // Two keys, each five packets and three end packets.
        assert_eq!(events.len(), 16);
        assert_eq!(events[0].event, 4);
        assert_eq!(events[8].event, 2);
        assert_eq!(events.iter().filter(|e| e.end).count(), 6);
        assert_eq!(events[7].duration, 800);
        let s = caller.stats();
        assert_eq!(s.keys_sent, 2);
        // Answered 35 ms after the key went down, within one millisecond step and the
        // service's frame boundary; the prompt's two silent frames are not counted against
        // the service. The key's end came 100 ms after it went down: the answer is earlier.
        assert_eq!(s.key_down_us.len(), 1, "{:?}", s.key_down_us);
        assert!(
            (35_000..=56_000).contains(&s.key_down_us[0]),
            "{:?}",
            s.key_down_us
        );
        assert_eq!(s.key_up_us[0], s.key_down_us[0] - 100_000);
        assert_eq!(s.lost, 0);
        assert_eq!(s.late, 0);
        assert!(s.received > 20);
        // Our own stream: sequence numbers without gaps.
        for w in sent.windows(2) {
            let a = u16::from_be_bytes([w[0][2], w[0][3]]);
            let b = u16::from_be_bytes([w[1][2], w[1][3]]);
            assert_eq!(b, a.wrapping_add(1));
        }
    }

    /// A caller with no prompts to recognise, started at `t0`.
    fn bare(t0: Instant, script: &str, length: Duration) -> Caller {
        Caller::new(
            t0,
            Codec::Pcmu,
            101,
            Arc::new(Script::parse(script).unwrap()),
            None,
            Arc::new(PromptIndex::new(&PromptStore::default())),
            Duration::from_millis(200),
            length,
            1,
        )
    }

    #[test]
    fn a_wait_without_any_prompt_fails_the_call() {
        let t0 = Instant::now();
        let mut c = bare(t0, "wait bye", Duration::from_secs(120));
        c.handle_timeout(t0 + PROMPT_LIMIT);
        assert!(matches!(c.poll_action(), Some(Action::Fail(r)) if r.contains("no prompt")));
    }

    #[test]
    fn gaps_skips_and_late_frames_are_counted() {
        let t0 = Instant::now();
        let mut c = bare(t0, "hold:10s", Duration::from_secs(20));
        let pkt = |seq: u16, ts: u32| {
            let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            p[4..8].copy_from_slice(&ts.to_be_bytes());
            p.extend([0xFF; 160]);
            p
        };
        let ms = Duration::from_millis;
        c.handle_packet(t0, &pkt(1, 0));
        c.handle_packet(t0 + ms(20), &pkt(2, 160));
        // Sequence 3 and 4 lost.
        c.handle_packet(t0 + ms(80), &pkt(5, 640));
        // The sender skipped 10 frames in time (timestamps jump, sequence does not).
        c.handle_packet(t0 + ms(300), &pkt(6, 640 + 160 * 11));
        // On time, then 60 ms late.
        c.handle_packet(t0 + ms(320), &pkt(7, 640 + 160 * 12));
        c.handle_packet(t0 + ms(400), &pkt(8, 640 + 160 * 13));
        let s = c.stats();
        assert_eq!(s.received, 6);
        assert_eq!(s.lost, 2 + 10);
        assert_eq!(s.late, 1);
        // Spacing against timestamps: the skip is no jitter, the late frame is 60 ms of it.
        let max = s.jitter_us.max();
        assert!((59_000..=61_000).contains(&max), "{max}");
        assert!(s.jitter_us.value_at_quantile(0.5) < 1_000);
        // A duplicate is not new audio; a reordered frame fills its gap.
        c.handle_packet(t0 + ms(410), &pkt(8, 640 + 160 * 13));
        assert_eq!(c.stats().lost, 12);
        c.handle_packet(t0 + ms(411), &pkt(4, 480));
        assert_eq!((c.stats().lost, c.stats().received), (11, 7));
        // A late packet of an earlier call that had this port (another SSRC) is not ours.
        let mut foreign = pkt(9, 3_000_000_000);
        foreign[11] = 10;
        c.handle_packet(t0 + ms(412), &foreign);
        assert_eq!((c.stats().lost, c.stats().received), (11, 7));
        // A timestamp going back with the sequence going on counts no skipped frames.
        c.handle_packet(t0 + ms(420), &pkt(9, 100));
        assert_eq!((c.stats().lost, c.stats().received), (11, 8));
    }

    #[test]
    fn the_echo_loop_runs_until_the_time_is_up_then_hangs_up() {
        let (caller, _, end) = run(
            super::super::script::builtin("echo").unwrap(),
            8,
            Duration::from_millis(10),
        );
        let s = caller.stats();
        assert!(s.keys_sent >= 4, "{}", s.keys_sent);
        assert!(s.key_down_us.len() as u32 >= s.keys_sent - 1);
        assert_eq!(s.dtmf_unanswered, 0);
        assert_eq!(end, Action::Hangup);
    }
}
