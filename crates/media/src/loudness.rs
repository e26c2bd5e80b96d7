//! Prompt loudness (ITU-R BS.1770 / EBU R128 integrated loudness, by the `ebur128` crate), so
//! that every prompt a caller hears is as loud as the one before it.

use ebur128::{EbuR128, Mode};

/// The loudness the shipped prompts are normalised to, in LUFS: the level every one of them
/// reaches without its peak passing −1 dBFS (telephone speech is nominally near −26 dBov,
/// ITU-T P.56; louder than that, but not so loud that a synthesised prompt clips).
pub const TARGET_LUFS: f64 = -22.0;
/// How far from the target a prompt may be before `prompts check` reports it, in dB.
pub const TOLERANCE_DB: f64 = 1.5;
/// The highest sample peak normalising may reach (−1 dBFS): gain stops there.
pub const PEAK_LIMIT: f32 = 0.891;

/// The integrated loudness of mono audio in LUFS, or `None` for silence.
///
/// BS.1770 measures 400 ms blocks; a prompt shorter than that ("five", "and") would have none,
/// so short audio is measured as if repeated to two seconds: its loudness is that of its own
/// energy, not of the silence a measurement would pad it with.
pub fn integrated_lufs(samples: &[f32], rate: u32) -> Option<f64> {
    if samples.is_empty() || rate == 0 {
        return None;
    }
    let mut meter = EbuR128::new(1, rate, Mode::I).ok()?;
    let min = rate as usize * 2;
    let mut fed = 0;
    while fed < min.max(samples.len()) {
        meter.add_frames_f32(samples).ok()?;
        fed += samples.len();
    }
    let lufs = meter.loudness_global().ok()?;
    lufs.is_finite().then_some(lufs)
}

/// The gain (a factor) that brings audio measured at `lufs` with sample peak `peak` to
/// `target`, without its peak passing `PEAK_LIMIT`.
pub fn gain_to(lufs: f64, peak: f32, target: f64) -> f32 {
    let wanted = 10f64.powf((target - lufs) / 20.0) as f32;
    if peak > 0.0 && peak * wanted > PEAK_LIMIT {
        PEAK_LIMIT / peak
    } else {
        wanted
    }
}

/// The largest absolute sample.
pub fn peak(samples: &[f32]) -> f32 {
    samples.iter().fold(0.0f32, |m, s| m.max(s.abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(amplitude: f32, ms: usize) -> Vec<f32> {
        (0..8 * ms)
            .map(|i| amplitude * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 8000.0).sin())
            .collect()
    }

    #[test]
    fn a_full_scale_1_khz_sine_reads_about_minus_3_lufs() {
        // BS.1770's reference: a 0 dBFS 997 Hz sine in one channel reads −3.01 LUFS (1 kHz
        // at 8 kHz is close enough for ±0.3).
        let l = integrated_lufs(&tone(1.0, 3000), 8000).unwrap();
        assert!((l + 3.0).abs() < 0.3, "{l}");
        // 20 dB down reads 20 dB lower.
        let quiet = integrated_lufs(&tone(0.1, 3000), 8000).unwrap();
        assert!((l - quiet - 20.0).abs() < 0.1, "{l} {quiet}");
    }

    #[test]
    fn short_audio_is_measured_by_its_own_energy_and_silence_is_none() {
        let long = integrated_lufs(&tone(0.3, 3000), 8000).unwrap();
        let short = integrated_lufs(&tone(0.3, 150), 8000).unwrap();
        assert!((long - short).abs() < 0.5, "{long} {short}");
        assert_eq!(integrated_lufs(&vec![0.0; 8000], 8000), None);
        assert_eq!(integrated_lufs(&[], 8000), None);
    }

    #[test]
    fn gain_reaches_the_target_unless_the_peak_would_pass_the_limit() {
        let g = gain_to(-24.0, 0.2, -18.0);
        assert!((g - 1.995).abs() < 0.01, "{g}");
        // 6 dB up would take a 0.6 peak to 1.2: stopped at the limit.
        let g = gain_to(-24.0, 0.6, -18.0);
        assert!((0.6 * g - PEAK_LIMIT).abs() < 1e-4, "{g}");
        // Too loud: turned down.
        assert!(gain_to(-12.0, 0.9, -18.0) < 0.51);
    }
}
