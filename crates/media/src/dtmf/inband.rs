//! In-band DTMF detector (sans-IO) for calls without telephone-event, built to the ITU-T
//! Q.24 figures: ±1.5 % frequency deviation accepted and ±3.5 % rejected, tones of 40 ms
//! detected and of 23 ms or less never, a 10 ms interruption bridged, normal twist 8 dB and
//! reverse twist 4 dB, levels 0 to −26 dBm0 per tone.
//!
//! Why hand-written: the crates that exist (`dtmf`, `goertzel-nostd`) give tone energies,
//! not a detector that meets these figures; the decisions below are the detector.
//!
//! How it works. Every 5 ms (a *hop* of 40 samples) the last 20 ms (160 samples, Hann
//! window) are analysed at the eight DTMF frequencies with a complex DFT. The strongest row
//! and column tone must each be above a floor, within the twist limits, and together carry
//! most of the window's energy. Energy alone cannot tell a tone 1.5 % off from one 3.5 % off
//! in 20 ms, so each tone's *frequency* is measured from how far its phase turned since the
//! previous hop (a tone at f turns by 2π·f·40/8000 per hop); both must be within 2.5 %.
//!
//! Timing uses the same hops: a hop is *present* when it is valid for the digit and both
//! tones are within 6 dB of their peak in this event, which is true while the window's centre
//! lies inside the tone. So the number of present hops measures the tone's length to ±5 ms,
//! independent of its level: 6 present hops (≥ 30 ms) are needed to report a digit, which
//! splits 23 ms (at most 5) from 40 ms (at least 7). An event ends after 5 non-present hops
//! (25 ms), so a 10 ms interruption (about 2 hops) is bridged and a 40 ms pause is not.

use std::sync::OnceLock;

use super::{COL_HZ, Digit, KEYPAD, ROW_HZ};
use crate::tones::{RATE, dbm0_to_power};

const WINDOW: usize = 160;
const HOP: usize = 40;
/// Present hops needed to report a digit (hops × 5 ms).
const MIN_PRESENT_HOPS: usize = 6;
/// Consecutive non-present hops that end an event.
const END_HOPS: u32 = 5;
/// Longest event history kept (hops); a digit is reported long before this fills.
const MAX_HISTORY: usize = 64;
/// Highest accepted frequency error of each tone.
const FREQ_TOLERANCE: f32 = 0.025;
/// Twist limits as power ratios high/low: normal twist (high group weaker) up to 9 dB,
/// reverse twist (high group stronger) up to 5 dB; 1 dB above Q.24's 8 / 4 dB for margin.
const NORMAL_TWIST: f32 = 7.943; // 9 dB
const REVERSE_TWIST: f32 = 3.162; // 5 dB
/// Share of the window's energy the two tones must carry (a pure pair 1.5 % off-frequency
/// shows about 0.72 here, as the Hann window loses up to 1.4 dB between bins).
const MIN_TONE_SHARE: f32 = 0.6;
/// A hop is analysed only if each tone is above −38 dBm0 (its edges are 6 dB or more below
/// the tone's level)…
const HOP_FLOOR_DBM0: f64 = -38.0;
/// …and a digit is reported only if each tone peaked above −32 dBm0.
const REPORT_FLOOR_DBM0: f64 = -32.0;

/// A digit found in the audio, with the sample index (8 kHz, from the first sample fed) where
/// the tone began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InbandDigit {
    pub digit: Digit,
    pub start_sample: u64,
}

struct Tables {
    /// Hann window folded into cos/sin for each of the 8 frequencies.
    cos: [[f32; WINDOW]; 8],
    sin: [[f32; WINDOW]; 8],
    window: [f32; WINDOW],
    /// Σw² and (Σw)², to turn sums into mean-square powers.
    sum_w2: f32,
    sum_w_sq: f32,
    /// Expected phase turn per hop of each frequency.
    hop_phase: [f32; 8],
    freqs: [f32; 8],
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut freqs = [0f32; 8];
        freqs[..4].copy_from_slice(&ROW_HZ);
        freqs[4..].copy_from_slice(&COL_HZ);
        let mut window = [0f32; WINDOW];
        for (k, w) in window.iter_mut().enumerate() {
            *w = 0.5 - 0.5 * (2.0 * std::f32::consts::PI * (k as f32 + 0.5) / WINDOW as f32).cos();
        }
        let mut cos = [[0f32; WINDOW]; 8];
        let mut sin = [[0f32; WINDOW]; 8];
        let mut hop_phase = [0f32; 8];
        for f in 0..8 {
            let w = 2.0 * std::f64::consts::PI * freqs[f] as f64 / RATE as f64;
            for k in 0..WINDOW {
                cos[f][k] = (window[k] as f64 * (w * k as f64).cos()) as f32;
                sin[f][k] = (window[k] as f64 * (w * k as f64).sin()) as f32;
            }
            hop_phase[f] = (w * HOP as f64).rem_euclid(2.0 * std::f64::consts::PI) as f32;
        }
        let sum_w: f32 = window.iter().sum();
        Tables {
            cos,
            sin,
            sum_w2: window.iter().map(|w| w * w).sum(),
            sum_w_sq: sum_w * sum_w,
            window,
            hop_phase,
            freqs,
        }
    })
}

#[derive(Clone, Copy, Debug)]
struct Hop {
    /// Row and column tone power (mean square).
    row: f32,
    col: f32,
    /// Sample index of the window's centre.
    centre: u64,
}

#[derive(Debug)]
struct Event {
    row: usize,
    col: usize,
    /// Valid hops of this digit so far (invalid ones are not stored: they are not present).
    hops: Vec<Hop>,
    peak_row: f32,
    peak_col: f32,
    /// Consecutive non-present hops.
    absent: u32,
    reported: bool,
}

impl Event {
    fn is_present(&self, h: &Hop) -> bool {
        h.row * 4.0 >= self.peak_row && h.col * 4.0 >= self.peak_col
    }
}

/// Detects DTMF digits in 8 kHz linear audio. Feed samples in any chunk size.
pub struct InbandDetector {
    ring: [f32; WINDOW],
    /// Next write position in `ring` (= oldest sample once full).
    pos: usize,
    /// Samples written since the last hop.
    since_hop: usize,
    /// Total samples fed.
    samples: u64,
    /// Previous hop's complex DFT per frequency, for the phase-turn frequency measurement.
    prev: Option<[(f32, f32); 8]>,
    event: Option<Event>,
}

impl Default for InbandDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl InbandDetector {
    pub fn new() -> Self {
        InbandDetector {
            ring: [0.0; WINDOW],
            pos: 0,
            since_hop: 0,
            samples: 0,
            prev: None,
            event: None,
        }
    }

    /// Feeds samples; digits found are pushed to `out` as soon as they qualify.
    pub fn handle_pcm(&mut self, pcm: &[i16], out: &mut Vec<InbandDigit>) {
        for &s in pcm {
            self.ring[self.pos] = s as f32;
            self.pos = (self.pos + 1) % WINDOW;
            self.samples += 1;
            self.since_hop += 1;
            if self.since_hop == HOP && self.samples >= WINDOW as u64 {
                self.since_hop = 0;
                self.on_hop(out);
            } else if self.since_hop == HOP {
                self.since_hop = 0;
            }
        }
    }

    /// Convenience: all digits in a whole recording.
    pub fn detect_all(pcm: &[i16]) -> Vec<InbandDigit> {
        let mut d = InbandDetector::new();
        let mut out = Vec::new();
        d.handle_pcm(pcm, &mut out);
        // Trailing silence lets a tone at the very end finish.
        d.handle_pcm(&[0; WINDOW * 2], &mut out);
        out
    }

    fn on_hop(&mut self, out: &mut Vec<InbandDigit>) {
        let t = tables();
        let mut x = [0f32; WINDOW];
        let (older, newer) = self.ring.split_at(self.pos);
        x[..newer.len()].copy_from_slice(newer);
        x[newer.len()..].copy_from_slice(older);

        let total: f32 = x
            .iter()
            .zip(&t.window)
            .map(|(s, w)| (s * w) * (s * w))
            .sum::<f32>()
            / t.sum_w2;
        let mut dft = [(0f32, 0f32); 8];
        let mut power = [0f32; 8];
        for f in 0..8 {
            let (mut re, mut im) = (0f32, 0f32);
            for ((s, c), sn) in x.iter().zip(&t.cos[f]).zip(&t.sin[f]) {
                re += s * c;
                im -= s * sn;
            }
            dft[f] = (re, im);
            power[f] = (re * re + im * im) * 2.0 / t.sum_w_sq;
        }
        let prev = self.prev.replace(dft);

        let row = argmax(&power[..4]);
        let col = 4 + argmax(&power[4..]);
        let centre = self.samples - (WINDOW / 2) as u64;
        let hop = Hop {
            row: power[row],
            col: power[col],
            centre,
        };
        let floor = dbm0_to_power(HOP_FLOOR_DBM0) as f32;
        let freq_ok = |f: usize| match prev {
            Some(p) => {
                let (re, im) = (
                    dft[f].0 * p[f].0 + dft[f].1 * p[f].1,
                    dft[f].1 * p[f].0 - dft[f].0 * p[f].1,
                );
                let turn = im.atan2(re);
                let dev = wrap(turn - t.hop_phase[f]);
                let df = dev * RATE as f32 / (2.0 * std::f32::consts::PI * HOP as f32);
                df.abs() <= FREQ_TOLERANCE * t.freqs[f]
            }
            None => false,
        };
        let valid = hop.row >= floor
            && hop.col >= floor
            && hop.col <= hop.row * REVERSE_TWIST
            && hop.col * NORMAL_TWIST >= hop.row
            && hop.row + hop.col >= MIN_TONE_SHARE * total
            && freq_ok(row)
            && freq_ok(col);

        let col = col - 4;
        match (&mut self.event, valid) {
            (Some(ev), true) if ev.row == row && ev.col == col => {
                if ev.hops.len() == MAX_HISTORY {
                    ev.hops.remove(0);
                }
                ev.peak_row = ev.peak_row.max(hop.row);
                ev.peak_col = ev.peak_col.max(hop.col);
                ev.hops.push(hop);
                if ev.is_present(&hop) {
                    ev.absent = 0;
                } else {
                    ev.absent += 1;
                }
            }
            (Some(ev), false) => ev.absent += 1,
            (slot, true) => {
                // A new digit (or another digit without a pause) starts an event.
                *slot = Some(Event {
                    row,
                    col,
                    hops: vec![hop],
                    peak_row: hop.row,
                    peak_col: hop.col,
                    absent: 0,
                    reported: false,
                });
            }
            (None, false) => {}
        }

        if let Some(ev) = &mut self.event {
            if ev.absent >= END_HOPS {
                self.event = None;
                return;
            }
            let report_floor = dbm0_to_power(REPORT_FLOOR_DBM0) as f32;
            if !ev.reported && ev.peak_row >= report_floor && ev.peak_col >= report_floor {
                let mut present = ev.hops.iter().filter(|h| ev.is_present(h));
                let first = present.clone().next().map(|h| h.centre);
                if present.by_ref().count() >= MIN_PRESENT_HOPS {
                    ev.reported = true;
                    let ch = KEYPAD[ev.row][ev.col];
                    if let (Some(digit), Some(start)) = (Digit::from_char(ch), first) {
                        out.push(InbandDigit {
                            digit,
                            start_sample: start,
                        });
                    }
                }
            }
        }
    }
}

fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

fn wrap(mut a: f32) -> f32 {
    use std::f32::consts::PI;
    while a > PI {
        a -= 2.0 * PI;
    }
    while a < -PI {
        a += 2.0 * PI;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tones::{DtmfTone, add_white_noise, dbm0_to_power, silence, to_i16};

    fn digit(c: char) -> Digit {
        Digit::from_char(c).unwrap()
    }

    /// Detects in `lead` ms silence + signal + 100 ms silence, at several alignments to the
    /// hop grid; returns the digit strings found for each alignment.
    fn run(signal: &[f64]) -> Vec<String> {
        (0..8)
            .map(|offset| {
                let mut s = silence(30.0 + offset as f64 * 0.625);
                s.extend_from_slice(signal);
                s.extend(silence(100.0));
                InbandDetector::detect_all(&to_i16(&s))
                    .iter()
                    .map(|d| d.digit.as_char())
                    .collect()
            })
            .collect()
    }

    fn all_equal(found: &[String], want: &str) -> bool {
        found.iter().all(|f| f == want)
    }

    #[test]
    fn every_key_is_detected() {
        for d in Digit::ALL {
            let found = run(&DtmfTone::new(d, -10.0, 50.0).samples());
            assert!(all_equal(&found, &d.to_string()), "{d}: {found:?}");
        }
    }

    #[test]
    fn tone_of_40ms_is_detected_and_23ms_never() {
        for d in Digit::ALL {
            let found = run(&DtmfTone::new(d, -10.0, 40.0).samples());
            assert!(all_equal(&found, &d.to_string()), "40 ms {d}: {found:?}");
            let found = run(&DtmfTone::new(d, -10.0, 23.0).samples());
            assert!(all_equal(&found, ""), "23 ms {d}: {found:?}");
        }
    }

    #[test]
    fn frequency_deviation_of_1_5_percent_is_accepted_and_3_5_rejected() {
        for d in Digit::ALL {
            for (err, want) in [(0.015, d.to_string()), (-0.015, d.to_string())] {
                let mut t = DtmfTone::new(d, -10.0, 50.0);
                t.freq_error = err;
                let found = run(&t.samples());
                assert!(all_equal(&found, &want), "{d} {err}: {found:?}");
            }
            for err in [0.035, -0.035] {
                let mut t = DtmfTone::new(d, -10.0, 200.0);
                t.freq_error = err;
                let found = run(&t.samples());
                assert!(all_equal(&found, ""), "{d} {err}: {found:?}");
            }
        }
    }

    #[test]
    fn twist_of_8db_normal_and_4db_reverse_is_accepted() {
        for d in Digit::ALL {
            for (lo, hi) in [(-10.0, -18.0), (-14.0, -10.0)] {
                let mut t = DtmfTone::new(d, lo, 50.0);
                t.high_dbm0 = hi;
                let found = run(&t.samples());
                assert!(
                    all_equal(&found, &d.to_string()),
                    "{d} {lo}/{hi}: {found:?}"
                );
            }
        }
    }

    #[test]
    fn levels_from_0_to_minus_26_dbm0_are_detected() {
        for d in Digit::ALL {
            for level in [0.0, -6.0, -13.0, -20.0, -26.0] {
                let found = run(&DtmfTone::new(d, level, 50.0).samples());
                assert!(all_equal(&found, &d.to_string()), "{d} {level}: {found:?}");
            }
        }
    }

    #[test]
    fn ten_ms_interruption_is_bridged_and_40ms_pause_splits() {
        let d = digit('5');
        let mut s = DtmfTone::new(d, -10.0, 40.0).samples();
        s.extend(silence(10.0));
        s.extend(DtmfTone::new(d, -10.0, 40.0).samples());
        assert!(all_equal(&run(&s), "5"), "{:?}", run(&s));
        let mut s = DtmfTone::new(d, -10.0, 40.0).samples();
        s.extend(silence(40.0));
        s.extend(DtmfTone::new(d, -10.0, 40.0).samples());
        assert!(all_equal(&run(&s), "55"), "{:?}", run(&s));
    }

    #[test]
    fn tones_in_noise_at_15db_snr_are_all_detected() {
        for (i, d) in Digit::ALL.iter().enumerate() {
            let mut s = DtmfTone::new(*d, -20.0, 50.0).samples();
            let mut full = silence(30.0);
            full.append(&mut s);
            full.extend(silence(60.0));
            add_white_noise(&mut full, dbm0_to_power(-35.0), i as u64 + 1);
            let found: String = InbandDetector::detect_all(&to_i16(&full))
                .iter()
                .map(|d| d.digit.as_char())
                .collect();
            assert_eq!(found, d.to_string());
        }
    }

    #[test]
    fn digit_start_time_is_within_5ms() {
        let mut s = silence(500.0);
        s.extend(DtmfTone::new(digit('7'), -10.0, 60.0).samples());
        s.extend(silence(100.0));
        let found = InbandDetector::detect_all(&to_i16(&s));
        assert_eq!(found.len(), 1);
        let start_ms = found[0].start_sample as f64 / 8.0;
        assert!((start_ms - 500.0).abs() <= 5.0, "{start_ms}");
    }
}
