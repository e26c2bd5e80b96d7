//! Measures the in-band DTMF detector against the ITU-T Q.24 figures and prints a Markdown
//! report (the table in BENCHMARKS.md):
//!
//!     cargo run --release --example dtmf_q24
//!
//! Every point is tried for all 16 keys at 8 alignments to the detector's 5 ms hop grid (128
//! trials); "detected" means every trial gave exactly that key, "rejected" that none gave
//! any key. Signals are generated (tones::DtmfTone), quantised to 16 bits.

use topup_ivr::media::dtmf::Digit;
use topup_ivr::media::dtmf::inband::InbandDetector;
use topup_ivr::media::prompts::{decode_file, resample};
use topup_ivr::media::tones::{DtmfTone, add_white_noise, dbm0_to_power, silence, to_i16};

const ALIGNMENTS: usize = 8;

/// Fraction of trials (keys × alignments) that found exactly `expect` copies of the key.
fn rate(make: impl Fn(Digit) -> Vec<f64>, expect: usize) -> f64 {
    let mut ok = 0;
    let mut n = 0;
    for d in Digit::ALL {
        let signal = make(d);
        for a in 0..ALIGNMENTS {
            let mut s = silence(30.0 + a as f64 * 5.0 / ALIGNMENTS as f64);
            s.extend_from_slice(&signal);
            s.extend(silence(100.0));
            let found = InbandDetector::detect_all(&to_i16(&s));
            if found.len() == expect && found.iter().all(|f| f.digit == d) {
                ok += 1;
            }
            n += 1;
        }
    }
    ok as f64 / n as f64
}

fn tone(d: Digit, level: f64, ms: f64) -> DtmfTone {
    DtmfTone::new(d, level, ms)
}

fn main() {
    println!("| Q.24 requirement | measured | result |");
    println!("|---|---|---|");

    // Frequency deviation: widest error up to which every error is detected, and the
    // narrowest from which every error (to 6 %) is rejected, in 0.1 % steps, both signs.
    let errors: Vec<(f64, bool, bool)> = (0..=60)
        .map(|step| {
            let e = step as f64 / 1000.0;
            let make = |sign: f64, ms: f64| {
                move |d: Digit| {
                    let mut t = tone(d, -10.0, ms);
                    t.freq_error = sign * e;
                    t.samples()
                }
            };
            let detected = rate(make(1.0, 50.0), 1) == 1.0 && rate(make(-1.0, 50.0), 1) == 1.0;
            let rejected = rate(make(1.0, 200.0), 0) == 1.0 && rate(make(-1.0, 200.0), 0) == 1.0;
            (step as f64 / 10.0, detected, rejected)
        })
        .collect();
    let accept = errors
        .iter()
        .take_while(|e| e.1)
        .last()
        .map_or(0.0, |e| e.0);
    let reject = errors.iter().rev().take_while(|e| e.2).last().map(|e| e.0);
    let reject = reject.unwrap_or(f64::NAN);
    println!(
        "| accept frequency deviation up to ±1.5 % | all detected up to ±{accept:.1} % | {} |",
        if accept >= 1.5 { "met" } else { "NOT met" }
    );
    println!(
        "| reject beyond ±3.5 % | none detected from ±{reject:.1} % | {} |",
        if reject <= 3.5 { "met" } else { "NOT met" }
    );

    // Duration: shortest from which every length is detected, longest up to which every
    // length is rejected (1 ms steps).
    let lengths: Vec<(u32, f64, f64)> = (10..=60)
        .map(|ms| {
            let make = |d: Digit| tone(d, -10.0, ms as f64).samples();
            (ms, rate(make, 1), rate(make, 0))
        })
        .collect();
    let max_reject = lengths
        .iter()
        .take_while(|l| l.2 == 1.0)
        .last()
        .map_or(0, |l| l.0);
    let min_detect = lengths
        .iter()
        .rev()
        .take_while(|l| l.1 == 1.0)
        .last()
        .map(|l| l.0);
    let min_detect = min_detect.unwrap_or(0);
    println!(
        "| detect tones ≥ 40 ms | all detected from {min_detect} ms | {} |",
        if min_detect <= 40 { "met" } else { "NOT met" }
    );
    println!(
        "| never detect ≤ 23 ms | none detected up to {max_reject} ms | {} |",
        if max_reject >= 23 { "met" } else { "NOT met" }
    );

    // Interruption: longest gap inside a 40+40 ms tone still seen as one key; shortest pause
    // between two 40 ms tones always seen as two.
    let mut bridged = 0;
    let mut bridge_run = true;
    let mut split = None;
    for gap in 0..=60 {
        let make = |d: Digit| {
            let mut s = tone(d, -10.0, 40.0).samples();
            s.extend(silence(gap as f64));
            s.extend(tone(d, -10.0, 40.0).samples());
            s
        };
        if bridge_run && rate(make, 1) == 1.0 {
            bridged = gap;
        } else {
            bridge_run = false;
        }
        if split.is_none() && rate(make, 2) == 1.0 {
            split = Some(gap);
        }
    }
    let split = split.unwrap_or(-1);
    println!(
        "| bridge a 10 ms interruption | gaps up to {bridged} ms bridged; pauses from {split} ms split | {} |",
        if bridged >= 10 { "met" } else { "NOT met" }
    );

    // Twist: 0.5 dB steps, reference tone at -10 dBm0.
    let twist = |normal: bool| {
        let mut best = 0.0;
        for step in 0..=30 {
            let db = step as f64 * 0.5;
            let r = rate(
                |d| {
                    let mut t = tone(d, -10.0, 50.0);
                    if normal {
                        t.high_dbm0 = -10.0 - db;
                    } else {
                        t.low_dbm0 = -10.0 - db;
                    }
                    t.samples()
                },
                1,
            );
            if r < 1.0 {
                break;
            }
            best = db;
        }
        best
    };
    let (nt, rt) = (twist(true), twist(false));
    println!(
        "| normal twist 8 dB (high group weaker) | accepted up to {nt:.1} dB | {} |",
        if nt >= 8.0 { "met" } else { "NOT met" }
    );
    println!(
        "| reverse twist 4 dB (high group stronger) | accepted up to {rt:.1} dB | {} |",
        if rt >= 4.0 { "met" } else { "NOT met" }
    );

    // Level range, per tone, 1 dB steps.
    let mut lowest = 0;
    for level in (-45..=0).rev() {
        if rate(|d| tone(d, level as f64, 50.0).samples(), 1) == 1.0 {
            lowest = level;
        } else {
            break;
        }
    }
    let mut highest = 0;
    for level in 0..=3 {
        if rate(|d| tone(d, level as f64, 50.0).samples(), 1) == 1.0 {
            highest = level;
        }
    }
    let mut silent_from = None;
    for level in (-50..=-26).rev() {
        if rate(|d| tone(d, level as f64, 50.0).samples(), 0) == 1.0 {
            silent_from = Some(level);
            break;
        }
    }
    println!(
        "| detect 0 to −26 dBm0 per tone | all detected from {lowest} to +{highest} dBm0; none at or below {} dBm0 | {} |",
        silent_from.unwrap_or(0),
        if lowest <= -26 && highest >= 0 {
            "met"
        } else {
            "NOT met"
        }
    );

    // Noise: 100 % detection at SNR ≥ 15 dB (SNR = each tone's power over white noise power
    // in 0-4 kHz), 4 seeds × 16 keys × 8 alignments per point, tones at -20 dBm0.
    let mut min_snr = None;
    for snr in (0..=30).rev() {
        let mut all = true;
        for seed in 0..4u64 {
            let r = rate(
                |d| {
                    let mut s = tone(d, -20.0, 50.0).samples();
                    add_white_noise(
                        &mut s,
                        dbm0_to_power(-20.0 - snr as f64),
                        seed * 131 + d.event_code() as u64 + 1,
                    );
                    s
                },
                1,
            );
            all &= r == 1.0;
        }
        if all {
            min_snr = Some(snr);
        } else {
            break;
        }
    }
    let min_snr = min_snr.unwrap_or(99);
    println!(
        "| 100 % detection at SNR ≥ 15 dB | 100 % down to {min_snr} dB SNR | {} |",
        if min_snr <= 15 { "met" } else { "NOT met" }
    );

    // Talk-off on the recorded fixtures, at three gains.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("audio-fixtures");
    let mut seconds = 0.0;
    let mut false_keys = 0;
    let mut names = vec![];
    for name in ["speech-en", "speech-es", "speech-vi", "music"] {
        let Ok((samples, rate_hz)) = decode_file(&root.join(format!("{name}.flac"))) else {
            continue;
        };
        names.push(name);
        let pcm8k = resample(&samples, rate_hz, 8000).unwrap_or_default();
        for gain in [0.25f32, 1.0, 2.0] {
            let pcm: Vec<i16> = pcm8k
                .iter()
                .map(|s| (s * gain * 32767.0).round().clamp(-32768.0, 32767.0) as i16)
                .collect();
            seconds += pcm.len() as f64 / 8000.0;
            false_keys += InbandDetector::detect_all(&pcm).len();
        }
    }
    println!(
        "| next to no false digits on speech and music | {false_keys} false keys in {:.1} min ({}; each at −12, 0, +6 dB) | {} |",
        seconds / 60.0,
        names.join(", "),
        if false_keys == 0 { "met" } else { "see note" }
    );
}
