//! Where a call's RTP may come from and where ours goes (sans-IO): the defence against RTP
//! hijacking and key injection, and the guard against reflecting media at a spoofed address.
//!
//! A caller's media comes from the address in its SDP, or, behind NAT, from the address its
//! NAT maps that to. Anyone who can reach our RTP port can send packets too: an RTP sprayer
//! that was let in would hear the call and inject keys (RFC 4733 events). The rules, as the
//! trusted media servers do it (Asterisk `strictrtp=seqno`, rtpengine's strict source):
//!
//! - `SourcePolicy::Sdp`: packets only from the SDP address (address and port).
//! - `SourcePolicy::Learn` (the default): packets from the SDP address are taken at once.
//!   Another address is considered only on the SDP address's host or the host the call's SIP
//!   came from (a caller behind NAT sends its media from the address its signalling comes
//!   from), and must first prove itself with [`LEARN_PACKETS`] packets in sequence (one SSRC,
//!   consecutive sequence numbers) before anything from it is taken. Once a source is
//!   established, a new address is taken only if it continues that source's own stream (its
//!   SSRC, the next sequence numbers: a NAT binding that moved) for [`LEARN_PACKETS`]
//!   packets, after the established source has been quiet for [`MOVE_AFTER`]. A sprayer on
//!   another host never gets in; one on the caller's host knows neither SSRC nor sequence.
//!
//! Our own media goes to the established source, or to the SDP address before one exists, but
//! only for [`UNANSWERED_SEND`]: a call whose far end never sends us a packet gets no more of
//! ours (an INVITE with a spoofed SDP address must not make us a traffic reflector).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Packets in sequence a new source must send before it is taken.
pub const LEARN_PACKETS: u8 = 4;
/// How long an established source must be quiet before its stream may move to another
/// address (a NAT rebinding); a stream that is still flowing never moves.
pub const MOVE_AFTER: Duration = Duration::from_millis(500);
/// How long we send to an address that has not sent us a single packet.
pub const UNANSWERED_SEND: Duration = Duration::from_secs(2);

/// Which sources a call takes media from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourcePolicy {
    /// The SDP address, or a source that proved itself (see the module docs).
    #[default]
    Learn,
    /// The SDP address only.
    Sdp,
}

impl SourcePolicy {
    pub fn from_name(s: &str) -> Option<SourcePolicy> {
        match s {
            "learn" => Some(SourcePolicy::Learn),
            "sdp" => Some(SourcePolicy::Sdp),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stream {
    addr: SocketAddr,
    ssrc: u32,
    /// The sequence number expected next.
    next_seq: u16,
}

/// A source proving itself: how many packets in sequence so far.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    stream: Stream,
    count: u8,
}

/// What [`RtpPeer::handle_packet`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// From the call's source: process it.
    Accept,
    /// From elsewhere (or not yet proven): drop it.
    Drop,
}

#[derive(Debug)]
pub struct RtpPeer {
    policy: SourcePolicy,
    /// The address the SDP names (unspecified for a late offer not yet answered).
    sdp: SocketAddr,
    /// The host the call's SIP came from: media from it may prove itself.
    signalling: Option<IpAddr>,
    established: Option<Stream>,
    candidate: Option<Candidate>,
    /// When the established source last sent.
    last_in: Option<Instant>,
    /// Since when we send without having heard anything.
    since: Instant,
    /// Packets dropped from sources not taken, for the log and metrics.
    dropped: u64,
}

impl RtpPeer {
    /// `signalling` is the host the call's SIP came from (`None` when media is not from the
    /// caller's host, e.g. a softswitch's media channel).
    pub fn new(
        now: Instant,
        policy: SourcePolicy,
        sdp: SocketAddr,
        signalling: Option<IpAddr>,
    ) -> RtpPeer {
        RtpPeer {
            policy,
            sdp,
            signalling,
            established: None,
            candidate: None,
            last_in: None,
            since: now,
            dropped: 0,
        }
    }

    /// A new SDP (re-INVITE, or the ACK's answer to a late offer): its address is trusted as
    /// the first one was. An established source stays until the new address sends.
    pub fn set_sdp(&mut self, now: Instant, sdp: SocketAddr) {
        if sdp != self.sdp {
            self.sdp = sdp;
            self.candidate = None;
            if self.established.is_none() {
                self.since = now;
            }
        }
    }

    /// Whether the packet `from` may be processed (RTP, or RTCP multiplexed on the port).
    pub fn handle_packet(&mut self, now: Instant, from: SocketAddr, packet: &[u8]) -> Verdict {
        let verdict = self.judge(now, from, packet);
        if verdict == Verdict::Drop {
            self.dropped += 1;
        }
        verdict
    }

    fn judge(&mut self, now: Instant, from: SocketAddr, packet: &[u8]) -> Verdict {
        let header = rtp_header(packet);
        if let Some(est) = self.established
            && est.addr == from
        {
            self.last_in = Some(now);
            if let Some((ssrc, seq)) = header
                && ssrc == est.ssrc
            {
                self.established = Some(Stream {
                    next_seq: seq.wrapping_add(1),
                    ..est
                });
            }
            return Verdict::Accept;
        }
        // RTCP (and anything that is not RTP) only from the established source.
        let Some((ssrc, seq)) = header else {
            return Verdict::Drop;
        };
        let stream = Stream {
            addr: from,
            ssrc,
            next_seq: seq.wrapping_add(1),
        };
        if self.established.is_none() && from == self.sdp {
            self.establish(now, stream);
            return Verdict::Accept;
        }
        let trusted_host = from.ip() == self.sdp.ip() || Some(from.ip()) == self.signalling;
        if self.policy == SourcePolicy::Sdp || !trusted_host {
            return Verdict::Drop;
        }
        if let Some(est) = self.established {
            // Only the established stream itself may move, and only once it has gone quiet.
            let quiet = self
                .last_in
                .is_none_or(|last| now.duration_since(last) >= MOVE_AFTER);
            if ssrc != est.ssrc || !quiet {
                return Verdict::Drop;
            }
        }
        if !self.prove(stream) {
            return Verdict::Drop;
        }
        tracing::info!(%from, "RTP source taken after {LEARN_PACKETS} packets in sequence");
        self.establish(now, stream);
        Verdict::Accept
    }

    /// Counts a candidate's packets in sequence; true once it has sent enough.
    fn prove(&mut self, stream: Stream) -> bool {
        let seq = stream.next_seq.wrapping_sub(1);
        let count = match self.candidate {
            Some(c)
                if c.stream.addr == stream.addr
                    && c.stream.ssrc == stream.ssrc
                    && c.stream.next_seq == seq =>
            {
                c.count + 1
            }
            _ => 1,
        };
        self.candidate = Some(Candidate { stream, count });
        count >= LEARN_PACKETS
    }

    fn establish(&mut self, now: Instant, stream: Stream) {
        self.established = Some(stream);
        self.candidate = None;
        self.last_in = Some(now);
    }

    /// Where our media goes now: the established source, or the SDP address while it is new;
    /// `None` when there is nowhere to send (no address yet, or an SDP address that has not
    /// sent a packet in [`UNANSWERED_SEND`]).
    pub fn send_to(&self, now: Instant) -> Option<SocketAddr> {
        if let Some(est) = self.established {
            return Some(est.addr);
        }
        (!self.sdp.ip().is_unspecified() && now.duration_since(self.since) < UNANSWERED_SEND)
            .then_some(self.sdp)
    }

    /// Whether any source has been taken.
    pub fn is_established(&self) -> bool {
        self.established.is_some()
    }

    /// Packets dropped from sources not taken.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// SSRC and sequence number of an RTP packet (version 2, not RTCP); `None` for anything else.
fn rtp_header(p: &[u8]) -> Option<(u32, u16)> {
    if p.len() < 12 || p[0] >> 6 != 2 {
        return None;
    }
    // RTCP multiplexed on the port (RFC 5761): packet types 200-204 in the second byte.
    if (200..=204).contains(&p[1]) {
        return None;
    }
    let seq = u16::from_be_bytes([p[2], p[3]]);
    let ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
    Some((ssrc, seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xFF; 160]);
        p
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    const SDP: &str = "10.0.0.5:4000";
    const NAT: &str = "203.0.113.7:31000";
    const SPRAYER: &str = "198.51.100.9:5000";

    #[test]
    fn a_sequential_sprayer_on_another_host_never_gets_in() {
        let t = Instant::now();
        let mut p = RtpPeer::new(t, SourcePolicy::Learn, addr(SDP), Some(addr(NAT).ip()));
        // Before the caller's first packet, in perfect sequence: still not the caller's host.
        for seq in 0..50 {
            assert_eq!(
                p.handle_packet(t, addr(SPRAYER), &rtp(9, seq)),
                Verdict::Drop
            );
        }
        assert!(!p.is_established());
        assert_eq!(p.handle_packet(t, addr(SDP), &rtp(1, 1)), Verdict::Accept);
    }

    #[test]
    fn the_sdp_address_is_taken_at_once_and_a_sprayer_first_is_not() {
        let t = Instant::now();
        let mut p = RtpPeer::new(t, SourcePolicy::Learn, addr(SDP), Some(addr(NAT).ip()));
        // The sprayer races the caller with random sequence numbers: never in sequence.
        for (i, seq) in [9u16, 1200, 7, 31000, 8].iter().enumerate() {
            let v = p.handle_packet(t, addr(SPRAYER), &rtp(0xBAD, *seq + i as u16 * 13));
            assert_eq!(v, Verdict::Drop);
        }
        assert_eq!(p.handle_packet(t, addr(SDP), &rtp(1, 100)), Verdict::Accept);
        assert_eq!(p.send_to(t), Some(addr(SDP)));
        // Once the caller is established, even a sequential sprayer stays out.
        for seq in 0..10 {
            let v = p.handle_packet(t, addr(SPRAYER), &rtp(0xBAD, seq));
            assert_eq!(v, Verdict::Drop);
        }
        assert_eq!(p.dropped(), 15);
    }

    #[test]
    fn a_caller_behind_nat_is_taken_after_four_packets_in_sequence() {
        let t = Instant::now();
        let mut p = RtpPeer::new(t, SourcePolicy::Learn, addr(SDP), Some(addr(NAT).ip()));
        for seq in 500..503 {
            assert_eq!(p.handle_packet(t, addr(NAT), &rtp(7, seq)), Verdict::Drop);
        }
        assert_eq!(p.handle_packet(t, addr(NAT), &rtp(7, 503)), Verdict::Accept);
        assert_eq!(p.send_to(t), Some(addr(NAT)));
        // A gap in the sequence while proving starts the count again.
        let mut q = RtpPeer::new(t, SourcePolicy::Learn, addr(SDP), Some(addr(NAT).ip()));
        for seq in [1, 2, 4, 5, 6] {
            assert_eq!(q.handle_packet(t, addr(NAT), &rtp(7, seq)), Verdict::Drop);
        }
        assert_eq!(q.handle_packet(t, addr(NAT), &rtp(7, 7)), Verdict::Accept);
    }

    #[test]
    fn a_stream_moves_only_with_its_own_ssrc_and_after_it_went_quiet() {
        let t = Instant::now();
        let mut p = RtpPeer::new(t, SourcePolicy::Learn, addr(SDP), Some(addr(NAT).ip()));
        assert_eq!(p.handle_packet(t, addr(SDP), &rtp(1, 10)), Verdict::Accept);
        let moved = addr("10.0.0.5:4100");
        // Still flowing: the same stream from elsewhere is not taken.
        for seq in 11..16 {
            assert_eq!(p.handle_packet(t, moved, &rtp(1, seq)), Verdict::Drop);
        }
        // Quiet for MOVE_AFTER: an attacker's stream (another SSRC) still cannot move it.
        let later = t + MOVE_AFTER;
        for seq in 0..8 {
            assert_eq!(
                p.handle_packet(later, addr(SPRAYER), &rtp(2, seq)),
                Verdict::Drop
            );
        }
        // The caller's own stream, rebound by its NAT, moves after proving itself.
        for seq in 16..19 {
            assert_eq!(p.handle_packet(later, moved, &rtp(1, seq)), Verdict::Drop);
        }
        assert_eq!(p.handle_packet(later, moved, &rtp(1, 19)), Verdict::Accept);
        assert_eq!(p.send_to(later), Some(moved));
    }

    #[test]
    fn sdp_policy_takes_nothing_but_the_sdp_address() {
        let t = Instant::now();
        let mut p = RtpPeer::new(t, SourcePolicy::Sdp, addr(SDP), Some(addr(NAT).ip()));
        for seq in 0..10 {
            assert_eq!(p.handle_packet(t, addr(NAT), &rtp(7, seq)), Verdict::Drop);
        }
        assert_eq!(p.handle_packet(t, addr(SDP), &rtp(7, 10)), Verdict::Accept);
    }

    #[test]
    fn rtcp_and_garbage_count_only_from_the_established_source() {
        let t = Instant::now();
        let mut p = RtpPeer::new(t, SourcePolicy::Learn, addr(SDP), Some(addr(NAT).ip()));
        let rtcp = [0x80, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(p.handle_packet(t, addr(SDP), &rtcp), Verdict::Drop);
        assert_eq!(p.handle_packet(t, addr(SDP), &[1, 2, 3]), Verdict::Drop);
        assert_eq!(p.handle_packet(t, addr(SDP), &rtp(1, 1)), Verdict::Accept);
        assert_eq!(p.handle_packet(t, addr(SDP), &rtcp), Verdict::Accept);
        assert_eq!(p.handle_packet(t, addr(NAT), &rtcp), Verdict::Drop);
    }

    #[test]
    fn nothing_goes_to_an_address_that_never_answers() {
        let t = Instant::now();
        let mut p = RtpPeer::new(t, SourcePolicy::Learn, addr(SDP), Some(addr(NAT).ip()));
        assert_eq!(p.send_to(t + Duration::from_millis(1999)), Some(addr(SDP)));
        assert_eq!(p.send_to(t + UNANSWERED_SEND), None);
        // Its first packet, however late, restores the stream.
        let late = t + Duration::from_secs(10);
        assert_eq!(
            p.handle_packet(late, addr(SDP), &rtp(1, 1)),
            Verdict::Accept
        );
        assert_eq!(p.send_to(late), Some(addr(SDP)));
        // No address yet (a late offer): nowhere to send.
        let q = RtpPeer::new(t, SourcePolicy::Learn, addr("0.0.0.0:0"), None);
        assert_eq!(q.send_to(t), None);
    }

    #[test]
    fn a_new_sdp_address_is_trusted_like_the_first() {
        let t = Instant::now();
        let mut p = RtpPeer::new(t, SourcePolicy::Sdp, addr("0.0.0.0:0"), None);
        assert_eq!(p.handle_packet(t, addr(SDP), &rtp(1, 1)), Verdict::Drop);
        p.set_sdp(t, addr(SDP));
        assert_eq!(p.send_to(t), Some(addr(SDP)));
        assert_eq!(p.handle_packet(t, addr(SDP), &rtp(1, 2)), Verdict::Accept);
    }
}
