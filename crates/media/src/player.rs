//! The frame player (sans-IO): turns a queue of prompts and silences into one RTP stream of
//! 20 ms packets at real-time pace.
//!
//! The stream is continuous for the whole call: when nothing is queued it sends silence, so
//! the far end never sees a gap, its jitter buffer stays primed and NAT bindings stay open.
//! Hence the marker bit is set once, on the first packet (RFC 3551 §4.1: only after a
//! silence period in which nothing was sent). Sequence numbers and timestamps start random
//! (RFC 3550 §5.1) and advance by 1 and 160 per packet.
//!
//! Pacing is by the clock given in: packet *n* is due at `start + n·20 ms`. A driver that
//! wakes late gets every due packet at once, so the far end's audio stays in step with time;
//! after a stall longer than `MAX_BURST` frames, the missed frames are skipped (the
//! timestamps jump with them) rather than sent in a burst the far end would discard.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::g711::{Codec, l16le_write};
use super::prompts::{FRAME_SAMPLES, Prompt};

pub const FRAME: Duration = Duration::from_millis(20);
const RTP_HEADER: usize = 12;
/// The largest payload: 20 ms of 16 kHz L16.
const MAX_PAYLOAD: usize = FRAME_SAMPLES * 4;

/// What each frame's payload carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Payload {
    /// G.711 in the player's codec: an RTP stream for a caller.
    #[default]
    G711,
    /// Linear 16-bit little-endian samples at 8 kHz (320 bytes): the player's G.711 frames,
    /// decoded. What mod_audio_fork plays at 8 kHz; a softswitch that encodes it to the same
    /// codec for the caller gets back exactly our frames (G.711 decode-encode is lossless),
    /// so the caller hears what a caller of our own SIP edge hears, bit for bit.
    L16Le8k,
    /// The same at 16 kHz (640 bytes), from the prompts' wideband audio (the store must be
    /// loaded with `wideband`; a prompt without it plays its 8 kHz audio doubled).
    L16Le16k,
}

impl Payload {
    /// Bytes per 20 ms frame.
    pub fn frame_len(self) -> usize {
        match self {
            Payload::G711 => FRAME_SAMPLES,
            Payload::L16Le8k => FRAME_SAMPLES * 2,
            Payload::L16Le16k => FRAME_SAMPLES * 4,
        }
    }
}
/// Most frames sent back-to-back after a late wake-up.
const MAX_BURST: u32 = 5;

/// Something to play.
#[derive(Clone, Debug)]
pub enum PlayItem {
    Prompt(Arc<Prompt>),
    /// Silence of this many 20 ms frames.
    Silence(u32),
}

/// What the player reports to its driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlayerEvent {
    /// The queue ran dry: the last frame of the last item has been sent.
    Done,
}

#[derive(Debug)]
pub struct Player {
    codec: Codec,
    payload: Payload,
    payload_type: u8,
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    /// Marker goes on the first packet, and on the first after a muted stretch.
    first: bool,
    /// On hold: time, timestamps and the queue go on, but nothing is sent and sequence
    /// numbers do not advance (they count packets sent, RFC 3550 §5.1).
    muted: bool,
    queue: VecDeque<PlayItem>,
    /// Frame index into the head of the queue.
    pos: usize,
    /// When the next packet is due; `None` until started.
    next_due: Option<Instant>,
    events: VecDeque<PlayerEvent>,
    /// The packet being handed out by `poll_transmit`.
    packet: [u8; RTP_HEADER + MAX_PAYLOAD],
    /// How far ahead of real time frames go out (see [`Player::with_lead`]).
    lead: Duration,
}

impl Player {
    pub fn new(codec: Codec, ssrc: u32, seq: u16, timestamp: u32) -> Player {
        Player {
            codec,
            payload: Payload::G711,
            payload_type: codec.payload_type(),
            ssrc,
            seq,
            timestamp,
            first: true,
            muted: false,
            queue: VecDeque::new(),
            pos: 0,
            next_due: None,
            events: VecDeque::new(),
            packet: [0; RTP_HEADER + MAX_PAYLOAD],
            lead: Duration::ZERO,
        }
    }

    /// Frames go out `lead` ahead of their time, so a far end that plays them from a buffer
    /// of its own (mod_audio_fork) always holds that much: a driver that wakes late by less
    /// than `lead` leaves no gap in what the caller hears. A burst after a stall is allowed
    /// that many frames more. Barge-in is unaffected: the far end's buffer is flushed with
    /// ours.
    pub fn with_lead(mut self, lead: Duration) -> Player {
        self.lead = lead;
        self
    }

    /// Frames carry `payload` instead of G.711 (the RTP header stays, for the sequence).
    pub fn with_payload(mut self, payload: Payload) -> Player {
        self.payload = payload;
        self
    }

    /// Starts the stream: the first packet is due at `now`.
    pub fn start(&mut self, now: Instant) {
        if self.next_due.is_none() {
            self.next_due = Some(now);
        }
    }

    /// Changes codec (re-INVITE); the stream (SSRC, sequence, timestamps) continues.
    pub fn set_codec(&mut self, codec: Codec) {
        self.codec = codec;
        self.payload_type = codec.payload_type();
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Stops or resumes sending (hold). Prompts keep playing out in time while muted.
    pub fn set_muted(&mut self, muted: bool) {
        if muted && !self.muted {
            self.first = true;
        }
        self.muted = muted;
    }

    /// Queues items after whatever is playing.
    pub fn enqueue(&mut self, items: impl IntoIterator<Item = PlayItem>) {
        self.queue.extend(items);
    }

    /// Barge-in: drops everything queued. The next packet is silence. No `Done` follows.
    pub fn stop(&mut self) {
        self.queue.clear();
        self.pos = 0;
    }

    pub fn is_playing(&self) -> bool {
        !self.queue.is_empty()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_due
            .map(|due| due.checked_sub(self.lead).unwrap_or(due))
    }

    pub fn poll_event(&mut self) -> Option<PlayerEvent> {
        self.events.pop_front()
    }

    /// The next RTP packet if one is due at `now`. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<&[u8]> {
        let now = now + self.lead;
        let max_burst = MAX_BURST as u128 + self.lead.as_micros() / FRAME.as_micros();
        while self.muted {
            let due = self.next_due?;
            if now < due {
                return None;
            }
            self.advance_content();
            self.timestamp = self.timestamp.wrapping_add(FRAME_SAMPLES as u32);
            self.next_due = Some(due + FRAME);
        }
        let due = self.next_due?;
        if now < due {
            return None;
        }
        let late = (now - due).as_micros() / FRAME.as_micros();
        if late > max_burst {
            let skip = (late - 1) as u32;
            for _ in 0..skip {
                self.advance_content();
            }
            self.timestamp = self
                .timestamp
                .wrapping_add(skip.wrapping_mul(FRAME_SAMPLES as u32));
            self.next_due = Some(due + FRAME * skip);
        }
        let due = self.next_due.unwrap_or(now);

        let header = &mut self.packet[..RTP_HEADER];
        header[0] = 0x80;
        header[1] = self.payload_type | if self.first { 0x80 } else { 0 };
        header[2..4].copy_from_slice(&self.seq.to_be_bytes());
        header[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        header[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        let len = self.payload.frame_len();
        let payload = &mut self.packet[RTP_HEADER..RTP_HEADER + len];
        match (self.queue.front(), self.payload) {
            (Some(PlayItem::Prompt(p)), Payload::G711) => {
                payload.copy_from_slice(p.frame(self.codec, self.pos))
            }
            (Some(PlayItem::Prompt(p)), Payload::L16Le8k) => {
                let mut pcm = [0i16; FRAME_SAMPLES];
                self.codec.decode(p.frame(self.codec, self.pos), &mut pcm);
                l16le_write(&pcm, payload)
            }
            (Some(PlayItem::Prompt(p)), Payload::L16Le16k) => match p.frame_pcm16k(self.pos) {
                Some(wide) => l16le_write(wide, payload),
                None => {
                    let narrow = p.frame_pcm8k(self.pos);
                    for (o, s) in payload.chunks_exact_mut(4).zip(narrow) {
                        o[..2].copy_from_slice(&s.to_le_bytes());
                        o[2..].copy_from_slice(&s.to_le_bytes());
                    }
                }
            },
            (Some(PlayItem::Silence(_)) | None, Payload::G711) => {
                payload.fill(self.codec.silence_byte())
            }
            (Some(PlayItem::Silence(_)) | None, _) => payload.fill(0),
        }
        self.advance_content();
        self.first = false;
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(FRAME_SAMPLES as u32);
        self.next_due = Some(due + FRAME);
        Some(&self.packet[..RTP_HEADER + len])
    }

    /// Moves one frame forward in the queue; reports `Done` when it empties.
    fn advance_content(&mut self) {
        let Some(head) = self.queue.front() else {
            return;
        };
        let len = match head {
            PlayItem::Prompt(p) => p.frames(),
            PlayItem::Silence(n) => *n as usize,
        };
        self.pos += 1;
        if self.pos >= len {
            self.queue.pop_front();
            self.pos = 0;
            // Skip empty items so `Done` comes right after the last real frame.
            while matches!(self.queue.front(), Some(PlayItem::Silence(0))) {
                self.queue.pop_front();
            }
            if self.queue.is_empty() {
                self.events.push_back(PlayerEvent::Done);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(frames: usize, value: i16) -> Arc<Prompt> {
        Arc::new(Prompt::from_pcm8k(
            "p",
            "en",
            "",
            vec![value; frames * FRAME_SAMPLES],
        ))
    }

    fn header(p: &[u8]) -> (bool, u8, u16, u32, u32) {
        let r = rtp_rs::RtpReader::new(p).unwrap();
        (
            r.mark(),
            r.payload_type(),
            r.sequence_number().into(),
            r.timestamp(),
            r.ssrc(),
        )
    }

    #[test]
    fn packets_are_paced_every_20ms_with_contiguous_headers() {
        let t0 = Instant::now();
        let mut p = Player::new(Codec::Pcmu, 0xABCD, 65534, u32::MAX - 100);
        p.start(t0);
        p.enqueue([PlayItem::Prompt(prompt(3, 1000))]);
        let mut seen = vec![];
        for i in 0..5u32 {
            let now = t0 + FRAME * i;
            let pkt = p.poll_transmit(now).expect("due").to_vec();
            assert!(p.poll_transmit(now).is_none(), "only one per 20 ms");
            assert_eq!(p.poll_timeout(), Some(now + FRAME));
            seen.push(header(&pkt));
        }
        assert!(seen[0].0, "marker on the first packet");
        assert!(seen[1..].iter().all(|h| !h.0), "and only there");
        for w in seen.windows(2) {
            assert_eq!(w[1].2, w[0].2.wrapping_add(1));
            assert_eq!(w[1].3, w[0].3.wrapping_add(160));
            assert_eq!(w[1].4, 0xABCD);
            assert_eq!(w[1].1, 0);
        }
    }

    #[test]
    fn prompt_frames_then_silence_and_done_after_the_last_frame() {
        let t0 = Instant::now();
        let mut p = Player::new(Codec::Pcma, 1, 0, 0);
        p.start(t0);
        let pr = prompt(2, 4000);
        p.enqueue([PlayItem::Prompt(pr.clone()), PlayItem::Silence(1)]);
        let f0 = p.poll_transmit(t0).unwrap()[12..].to_vec();
        assert_eq!(f0, pr.frame(Codec::Pcma, 0));
        assert_eq!(p.poll_event(), None);
        p.poll_transmit(t0 + FRAME).unwrap();
        assert_eq!(p.poll_event(), None, "silence item still queued");
        let s = p.poll_transmit(t0 + FRAME * 2).unwrap()[12..].to_vec();
        assert!(s.iter().all(|&b| b == 0xD5));
        assert_eq!(p.poll_event(), Some(PlayerEvent::Done));
        assert!(!p.is_playing());
        let idle = p.poll_transmit(t0 + FRAME * 3).unwrap();
        assert_eq!(idle[1] & 0x7F, 8, "A-law payload type");
        assert_eq!(p.poll_event(), None);
    }

    #[test]
    fn barge_in_stops_within_one_frame() {
        let t0 = Instant::now();
        let mut p = Player::new(Codec::Pcmu, 1, 0, 0);
        p.start(t0);
        p.enqueue([PlayItem::Prompt(prompt(50, 8000))]);
        p.poll_transmit(t0).unwrap();
        p.stop();
        let next = p.poll_transmit(t0 + FRAME).unwrap();
        assert!(
            next[12..].iter().all(|&b| b == 0xFF),
            "silence right after stop"
        );
        assert_eq!(p.poll_event(), None);
    }

    #[test]
    fn late_wakeup_sends_due_frames_and_skips_after_a_stall() {
        let t0 = Instant::now();
        let mut p = Player::new(Codec::Pcmu, 1, 100, 1000);
        p.start(t0);
        p.poll_transmit(t0).unwrap();
        // Woken 60 ms late: three packets are due now.
        let mut n = 0;
        while p.poll_transmit(t0 + FRAME * 4).is_some() {
            n += 1;
        }
        assert_eq!(n, 4);
        // A 1 s stall: we do not burst 50 packets; the timestamp jumps to match the clock.
        let now = t0 + FRAME * 55;
        let pkt = p.poll_transmit(now).unwrap().to_vec();
        let (_, _, seq, ts, _) = header(&pkt);
        assert_eq!(seq, 105, "sequence stays contiguous");
        assert_eq!(ts, 1000 + 160 * 54, "timestamp follows the clock");
        let mut burst = 0;
        while p.poll_transmit(now).is_some() {
            burst += 1;
        }
        assert!(burst <= 1, "{burst}");
    }

    #[test]
    fn muted_stream_keeps_time_but_not_sequence_and_marks_the_resume() {
        let t0 = Instant::now();
        let mut p = Player::new(Codec::Pcmu, 1, 10, 0);
        p.start(t0);
        p.enqueue([PlayItem::Prompt(prompt(3, 100))]);
        let (_, _, seq0, _, _) = header(p.poll_transmit(t0).unwrap());
        p.set_muted(true);
        for i in 1..=4 {
            assert!(p.poll_transmit(t0 + FRAME * i).is_none());
        }
        assert_eq!(
            p.poll_event(),
            Some(PlayerEvent::Done),
            "the prompt played out while muted"
        );
        p.set_muted(false);
        let (marker, _, seq, ts, _) = header(p.poll_transmit(t0 + FRAME * 5).unwrap());
        assert!(marker);
        assert_eq!(seq, seq0.wrapping_add(1));
        assert_eq!(ts, 160 * 5);
    }

    #[test]
    fn nothing_is_sent_before_start() {
        let mut p = Player::new(Codec::Pcmu, 1, 0, 0);
        assert!(p.poll_transmit(Instant::now()).is_none());
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn l16_payloads_are_little_endian_and_8_khz_ones_re_encode_to_our_g711_frames() {
        use crate::g711::l16le_read;
        let pcm: Vec<i16> = (0..320).map(|i| (i * 97 - 9000) as i16).collect();
        let ramp = Arc::new(Prompt::from_pcm8k("ramp", "en", "", pcm.clone()));
        let t = Instant::now();
        let mut p = Player::new(Codec::Pcma, 1, 0, 0).with_payload(Payload::L16Le8k);
        p.enqueue([PlayItem::Prompt(ramp.clone()), PlayItem::Silence(1)]);
        p.start(t);
        let mut back = vec![];
        let first = p.poll_transmit(t).unwrap().to_vec();
        assert_eq!(first.len(), 12 + 320);
        l16le_read(&first[12..], &mut back);
        // Encoded again to the call's codec: exactly the frame a G.711 player sends.
        let mut alaw = vec![0u8; 160];
        Codec::Pcma.encode(&back, &mut alaw);
        assert_eq!(alaw, ramp.frame(Codec::Pcma, 0));
        p.poll_transmit(t + FRAME).unwrap();
        let silence = p.poll_transmit(t + FRAME * 2).unwrap();
        assert!(
            silence[12..].iter().all(|&b| b == 0),
            "linear silence is zeros"
        );

        // 16 kHz: the linear audio (from a prompt loaded without wideband: each 8 kHz sample
        // twice).
        let mut wide = Player::new(Codec::Pcmu, 1, 0, 0).with_payload(Payload::L16Le16k);
        wide.enqueue([PlayItem::Prompt(ramp)]);
        wide.start(t);
        let pkt = wide.poll_transmit(t).unwrap();
        assert_eq!(pkt.len(), 12 + 640);
        l16le_read(&pkt[12..], &mut back);
        assert_eq!(&back[..4], &[pcm[0], pcm[0], pcm[1], pcm[1]]);
    }

    #[test]
    fn with_a_lead_frames_go_out_that_much_early_and_a_stall_within_it_loses_nothing() {
        let t = Instant::now();
        let lead = FRAME * 5;
        let mut p = Player::new(Codec::Pcmu, 1, 0, 0).with_lead(lead);
        p.enqueue([PlayItem::Prompt(prompt(50, 1000))]);
        p.start(t);
        // At the start: the first frame and the 100 ms after it.
        let mut sent = 0;
        while p.poll_transmit(t).is_some() {
            sent += 1;
        }
        assert_eq!(sent, 6);
        // The next one is due 120 ms in, asked for 100 ms before.
        assert_eq!(p.poll_timeout(), Some(t + FRAME));
        // A 150 ms stall: every frame is sent, none skipped (timestamps consecutive).
        let mut ts = vec![];
        while let Some(pkt) = p.poll_transmit(t + Duration::from_millis(170)) {
            ts.push(header(pkt).3);
        }
        assert_eq!(
            ts.len(),
            14 - 6,
            "the frames due by 270 ms, less those sent"
        );
        assert!(ts.windows(2).all(|w| w[1] == w[0] + 160), "{ts:?}");
    }
}
