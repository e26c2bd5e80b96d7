//! G.711 µ-law / A-law and L16 sample conversion.
//!
//! The per-sample companding comes from `audio-codec-algorithms` (its decode tables were made
//! with the ITU-T G.191 tools); this module adds the codec identity used on the wire and
//! whole-frame helpers so callers never loop over samples themselves.

use audio_codec_algorithms::{decode_alaw, decode_ulaw, encode_alaw, encode_ulaw};

/// A narrowband codec the service can send and receive (RFC 3551 static payload types).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 µ-law, payload type 0.
    Pcmu,
    /// G.711 A-law, payload type 8.
    Pcma,
}

impl Codec {
    pub const ALL: [Codec; 2] = [Codec::Pcmu, Codec::Pcma];

    /// Static RTP payload type (RFC 3551 table 4).
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// Encoding name as written in SDP `a=rtpmap`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    pub fn from_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    pub fn from_name(name: &str) -> Option<Codec> {
        if name.eq_ignore_ascii_case("PCMU") {
            Some(Codec::Pcmu)
        } else if name.eq_ignore_ascii_case("PCMA") {
            Some(Codec::Pcma)
        } else {
            None
        }
    }

    /// The code for digital silence (linear 0).
    pub fn silence_byte(self) -> u8 {
        match self {
            Codec::Pcmu => 0xFF,
            Codec::Pcma => 0xD5,
        }
    }

    pub fn encode_sample(self, s: i16) -> u8 {
        match self {
            Codec::Pcmu => encode_ulaw(s),
            Codec::Pcma => encode_alaw(s),
        }
    }

    /// The byte with which `b` compares equal as audio. µ-law has two codes for zero (0xFF is
    /// +0, 0x7F is −0) and encoders differ in which they write for a zero sample (ours writes
    /// −0 for small negative values, FreeSWITCH +0 for 0 itself); A-law has no second zero.
    pub fn canonical(self, b: u8) -> u8 {
        match (self, b) {
            (Codec::Pcmu, 0x7F) => 0xFF,
            _ => b,
        }
    }

    pub fn decode_sample(self, b: u8) -> i16 {
        match self {
            Codec::Pcmu => decode_ulaw(b),
            Codec::Pcma => decode_alaw(b),
        }
    }

    /// Encodes `pcm` into `out` (same length; extra output bytes are left untouched).
    pub fn encode(self, pcm: &[i16], out: &mut [u8]) {
        for (o, &s) in out.iter_mut().zip(pcm) {
            *o = self.encode_sample(s);
        }
    }

    /// Decodes `bytes` into `out` (same length; extra output samples are left untouched).
    pub fn decode(self, bytes: &[u8], out: &mut [i16]) {
        for (o, &b) in out.iter_mut().zip(bytes) {
            *o = self.decode_sample(b);
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Linear 16-bit samples as little-endian bytes into `out` (as long as both last): the host
/// order mod_audio_fork streams on every machine FreeSWITCH runs on (x86-64, arm64).
pub fn l16le_write(pcm: &[i16], out: &mut [u8]) {
    for (o, s) in out.chunks_exact_mut(2).zip(pcm) {
        o.copy_from_slice(&s.to_le_bytes());
    }
}

/// Little-endian 16-bit samples from bytes; a trailing odd byte is ignored.
pub fn l16le_read(bytes: &[u8], out: &mut Vec<i16>) {
    out.clear();
    out.extend(
        bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]])),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A-law full-scale sine level in dBm0 (G.711: +3.14 dBm0).
    #[allow(clippy::approx_constant)] // a level in dB, not π
    const ALAW_MAX_DBM0: f64 = 3.14;

    /// ITU-T G.711 Table 5 (µ-law) and Table 6 (A-law): the "digital milliwatt", eight
    /// character-signal codes of a 1 kHz sine at 0 dBm0 with a phase of π/8.
    const ULAW_MILLIWATT: [u8; 8] = [0x1E, 0x0B, 0x0B, 0x1E, 0x9E, 0x8B, 0x8B, 0x9E];
    const ALAW_MILLIWATT: [u8; 8] = [0x34, 0x21, 0x21, 0x34, 0xB4, 0xA1, 0xA1, 0xB4];

    fn milliwatt_samples(peak: f64) -> Vec<i16> {
        (0..8)
            .map(|k| {
                let phase = std::f64::consts::PI / 8.0 + k as f64 * std::f64::consts::PI / 4.0;
                (-peak * phase.sin()).round() as i16
            })
            .collect()
    }

    #[test]
    fn digital_milliwatt_encodes_to_the_itu_sequence() {
        // The sequence starts on the negative half-wave. 0 dBm0 is 3.17 dB (µ-law) / 3.14 dB (A-law) below a full-scale sine.
        let mu = milliwatt_samples(32767.0 * 10f64.powf(-3.17 / 20.0));
        let mut out = [0u8; 8];
        Codec::Pcmu.encode(&mu, &mut out);
        assert_eq!(out, ULAW_MILLIWATT);
        let a = milliwatt_samples(32767.0 * 10f64.powf(-ALAW_MAX_DBM0 / 20.0));
        Codec::Pcma.encode(&a, &mut out);
        // A-law characters on the line have the even bits inverted (G.711 §3.2): the table
        // lists line codes, which is what the encoder returns.
        assert_eq!(out, ALAW_MILLIWATT);
    }

    #[test]
    fn digital_milliwatt_decodes_to_zero_dbm0() {
        for (codec, codes, max_db) in [
            (Codec::Pcmu, ULAW_MILLIWATT, 3.17),
            (Codec::Pcma, ALAW_MILLIWATT, ALAW_MAX_DBM0),
        ] {
            let mut pcm = [0i16; 8];
            codec.decode(&codes, &mut pcm);
            let power: f64 = pcm.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / 8.0;
            let full_scale_sine_power = 32767f64.powi(2) / 2.0;
            let dbm0 = 10.0 * (power / full_scale_sine_power).log10() + max_db;
            assert!(dbm0.abs() < 0.1, "{codec}: {dbm0} dBm0");
        }
    }

    #[test]
    fn zero_encodes_to_the_idle_codes() {
        assert_eq!(Codec::Pcmu.encode_sample(0), 0xFF);
        assert_eq!(Codec::Pcma.encode_sample(0), 0xD5);
        assert_eq!(Codec::Pcmu.silence_byte(), Codec::Pcmu.encode_sample(0));
        assert_eq!(Codec::Pcma.silence_byte(), Codec::Pcma.encode_sample(0));
    }

    #[test]
    fn extremes_decode_to_the_largest_reconstruction_levels() {
        // G.711: µ-law ±8031 and A-law ±4032 in their native ranges (×4 and ×8 in 16 bits).
        assert_eq!(Codec::Pcmu.decode_sample(0x80), 32124);
        assert_eq!(Codec::Pcmu.decode_sample(0x00), -32124);
        assert_eq!(Codec::Pcma.decode_sample(0xAA), 32256);
        assert_eq!(Codec::Pcma.decode_sample(0x2A), -32256);
        assert_eq!(Codec::Pcmu.encode_sample(i16::MAX), 0x80);
        assert_eq!(Codec::Pcma.encode_sample(i16::MIN), 0x2A);
    }

    #[test]
    fn every_code_round_trips() {
        for codec in Codec::ALL {
            for b in 0..=255u8 {
                let s = codec.decode_sample(b);
                let back = codec.encode_sample(s);
                // µ-law has two codes for zero (0x7F, 0xFF); both decode to 0.
                if codec == Codec::Pcmu && s == 0 {
                    continue;
                }
                assert_eq!(back, b, "{codec} code {b:#04x} -> {s} -> {back:#04x}");
            }
        }
    }

    #[test]
    fn l16le_is_little_endian_both_ways() {
        let mut bytes = [0u8; 6];
        l16le_write(&[1, -2, 0x1234], &mut bytes);
        assert_eq!(bytes, [1, 0, 0xFE, 0xFF, 0x34, 0x12]);
        let mut back = vec![7];
        l16le_read(&bytes[..5], &mut back);
        assert_eq!(back, [1, -2]);
    }

    #[test]
    fn the_two_ulaw_zeros_are_one_canonical_byte() {
        let u = Codec::Pcmu;
        assert_eq!(u.decode_sample(0x7F), 0);
        assert_eq!(u.decode_sample(0xFF), 0);
        assert_eq!(u.canonical(0x7F), u.canonical(0xFF));
        assert_eq!(u.canonical(0x7E), 0x7E);
        // A-law's codes next to zero decode to ±8: two values, both kept.
        assert_ne!(Codec::Pcma.canonical(0xD5), Codec::Pcma.canonical(0x55));
    }
}
