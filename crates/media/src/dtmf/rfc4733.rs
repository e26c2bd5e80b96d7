//! RFC 4733 telephone-event receiver (sans-IO).
//!
//! No crate decodes the 4-byte event payload, so it is done here. A key press is one *event*,
//! identified by the sender's SSRC and the RTP timestamp of the event's start; every packet
//! of the event (start, duration updates, the three end packets) carries that same pair. We
//! report the digit the first time we see any packet of a new event, which makes the receiver
//! indifferent to a lost start packet, lost or repeated end packets, sequence-number jumps and
//! replays of the same packets.

use std::collections::VecDeque;

use super::Digit;

/// Event payload as defined in RFC 4733 §2.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventPayload {
    pub event: u8,
    pub end: bool,
    pub volume: u8,
    pub duration: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rfc4733Error {
    #[error("telephone-event payload is {0} bytes, needs at least 4")]
    Short(usize),
}

impl EventPayload {
    pub fn parse(payload: &[u8]) -> Result<EventPayload, Rfc4733Error> {
        if payload.len() < 4 {
            return Err(Rfc4733Error::Short(payload.len()));
        }
        Ok(EventPayload {
            event: payload[0],
            end: payload[1] & 0x80 != 0,
            volume: payload[1] & 0x3F,
            duration: u16::from_be_bytes([payload[2], payload[3]]),
        })
    }

    pub fn write(&self, out: &mut [u8; 4]) {
        out[0] = self.event;
        out[1] = (if self.end { 0x80 } else { 0 }) | (self.volume & 0x3F);
        out[2..4].copy_from_slice(&self.duration.to_be_bytes());
    }
}

/// How many recent events are remembered for de-duplication. Replays older than this many
/// key presses are not expected from any sender.
const REMEMBERED_EVENTS: usize = 16;

/// Turns telephone-event packets into digits, each key press exactly once.
#[derive(Debug, Default)]
pub struct Rfc4733Receiver {
    /// (ssrc, timestamp) of events already reported, oldest first.
    seen: VecDeque<(u32, u32)>,
    /// The most recent event per the last packet: used to recognise the continuation
    /// segments of a long event (RFC 4733 §2.5.1.3), which carry a new timestamp.
    last: Option<LastEvent>,
}

#[derive(Debug, Clone, Copy)]
struct LastEvent {
    ssrc: u32,
    timestamp: u32,
    event: u8,
    duration: u16,
    ended: bool,
}

impl Rfc4733Receiver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one telephone-event RTP packet. Returns the digit if this packet belongs to an
    /// event not seen before. Events 16 and above (other tones) are ignored.
    pub fn handle_packet(
        &mut self,
        ssrc: u32,
        timestamp: u32,
        payload: &[u8],
    ) -> Result<Option<Digit>, Rfc4733Error> {
        let ev = EventPayload::parse(payload)?;
        let key = (ssrc, timestamp);
        let continuation = self.last.is_some_and(|l| {
            // A long event is split into segments: the next segment's timestamp is the
            // previous timestamp plus the previous segment's duration (≈ 0xFFFF), and it is
            // the same key, still not ended.
            let gap = timestamp.wrapping_sub(l.timestamp);
            l.ssrc == ssrc
                && l.event == ev.event
                && !l.ended
                && l.duration >= 0x8000
                && gap >= u32::from(l.duration)
                && gap <= 0x1_0000 + 3 * 160
        });
        if !self.seen.contains(&key) {
            if self.seen.len() == REMEMBERED_EVENTS {
                self.seen.pop_front();
            }
            self.seen.push_back(key);
            let fresh = !continuation;
            self.last = Some(LastEvent {
                ssrc,
                timestamp,
                event: ev.event,
                duration: ev.duration,
                ended: ev.end,
            });
            return Ok(if fresh {
                Digit::from_event_code(ev.event)
            } else {
                None
            });
        }
        if let Some(l) = self.last.as_mut()
            && l.ssrc == ssrc
            && l.timestamp == timestamp
        {
            l.duration = l.duration.max(ev.duration);
            l.ended |= ev.end;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(event: u8, end: bool, duration: u16) -> [u8; 4] {
        let mut b = [0u8; 4];
        EventPayload {
            event,
            end,
            volume: 10,
            duration,
        }
        .write(&mut b);
        b
    }

    /// A well-behaved sender's packets for one key press: start, updates, three ends.
    fn press(rx: &mut Rfc4733Receiver, ssrc: u32, ts: u32, event: u8) -> Vec<Digit> {
        let mut out = vec![];
        for (i, dur) in [0u16, 160, 320, 480, 640].into_iter().enumerate() {
            let _ = i;
            out.extend(rx.handle_packet(ssrc, ts, &pkt(event, false, dur)).unwrap());
        }
        for _ in 0..3 {
            out.extend(rx.handle_packet(ssrc, ts, &pkt(event, true, 800)).unwrap());
        }
        out
    }

    #[test]
    fn one_press_gives_one_digit() {
        let mut rx = Rfc4733Receiver::new();
        assert_eq!(
            press(&mut rx, 1, 1000, 5),
            vec![Digit::from_char('5').unwrap()]
        );
    }

    #[test]
    fn repeated_key_with_new_timestamp_is_a_second_digit() {
        let mut rx = Rfc4733Receiver::new();
        let mut got = press(&mut rx, 1, 1000, 1);
        got.extend(press(&mut rx, 1, 3000, 1));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn replayed_packets_are_not_counted_again() {
        let mut rx = Rfc4733Receiver::new();
        let mut got = press(&mut rx, 1, 1000, 9);
        got.extend(press(&mut rx, 1, 1000, 9));
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn lost_start_packets_still_give_the_digit() {
        let mut rx = Rfc4733Receiver::new();
        assert_eq!(
            rx.handle_packet(7, 500, &pkt(11, true, 800)).unwrap(),
            Digit::from_char('#')
        );
        assert_eq!(rx.handle_packet(7, 500, &pkt(11, true, 800)).unwrap(), None);
    }

    #[test]
    fn lost_end_packets_do_not_swallow_the_next_press() {
        let mut rx = Rfc4733Receiver::new();
        assert!(
            rx.handle_packet(7, 500, &pkt(3, false, 160))
                .unwrap()
                .is_some()
        );
        // No end packet ever arrives; the next press of the same key has a new timestamp.
        assert!(
            rx.handle_packet(7, 2500, &pkt(3, false, 0))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn long_event_segments_are_one_digit() {
        let mut rx = Rfc4733Receiver::new();
        assert!(rx.handle_packet(9, 0, &pkt(0, false, 0)).unwrap().is_some());
        assert_eq!(
            rx.handle_packet(9, 0, &pkt(0, false, 0xFFFF)).unwrap(),
            None
        );
        // Second segment: timestamp advanced by the full duration, still not ended.
        assert_eq!(
            rx.handle_packet(9, 0xFFFF, &pkt(0, false, 800)).unwrap(),
            None
        );
        assert_eq!(
            rx.handle_packet(9, 0xFFFF, &pkt(0, true, 1600)).unwrap(),
            None
        );
        // The next, separate press is counted.
        assert!(
            rx.handle_packet(9, 0x2_0000, &pkt(0, false, 0))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn different_sources_are_different_events() {
        let mut rx = Rfc4733Receiver::new();
        assert!(
            rx.handle_packet(1, 100, &pkt(2, false, 0))
                .unwrap()
                .is_some()
        );
        assert!(
            rx.handle_packet(2, 100, &pkt(2, false, 0))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn non_dtmf_events_and_short_payloads_are_not_digits() {
        let mut rx = Rfc4733Receiver::new();
        assert_eq!(rx.handle_packet(1, 100, &pkt(32, false, 0)).unwrap(), None);
        assert_eq!(
            rx.handle_packet(1, 200, &[1, 2]),
            Err(Rfc4733Error::Short(2))
        );
    }
}
