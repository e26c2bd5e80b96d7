//! Test and signalling tone generation, and the dBm0 scale.
//!
//! Levels follow G.711: a sine at 0 dBm0 is 3.17 dB below a full-scale 16-bit sine (the
//! µ-law "digital milliwatt"); we use the same reference for A-law (3.14 dB) to keep one scale.

use super::dtmf::Digit;

/// Sample rate of narrowband telephony.
pub const RATE: u32 = 8000;

/// Full-scale sine level in dBm0 (G.711 µ-law).
pub const FULL_SCALE_DBM0: f64 = 3.17;

/// Peak amplitude (16-bit linear) of a sine at `dbm0`.
pub fn dbm0_to_peak(dbm0: f64) -> f64 {
    32767.0 * 10f64.powf((dbm0 - FULL_SCALE_DBM0) / 20.0)
}

/// Mean-square power of a sine at `dbm0` (16-bit linear units).
pub fn dbm0_to_power(dbm0: f64) -> f64 {
    dbm0_to_peak(dbm0).powi(2) / 2.0
}

/// Power (mean square, 16-bit linear units) to dBm0.
pub fn power_to_dbm0(power: f64) -> f64 {
    10.0 * (power.max(1e-12) / dbm0_to_power(0.0)).log10()
}

/// A DTMF tone pair as specified for a test: levels per tone and a common frequency error.
#[derive(Clone, Copy, Debug)]
pub struct DtmfTone {
    pub digit: Digit,
    /// Low-group (row) tone level.
    pub low_dbm0: f64,
    /// High-group (column) tone level.
    pub high_dbm0: f64,
    /// Relative frequency error applied to both tones, e.g. 0.015 for +1.5 %.
    pub freq_error: f64,
    pub duration_ms: f64,
}

impl DtmfTone {
    pub fn new(digit: Digit, dbm0: f64, duration_ms: f64) -> Self {
        DtmfTone {
            digit,
            low_dbm0: dbm0,
            high_dbm0: dbm0,
            freq_error: 0.0,
            duration_ms,
        }
    }

    /// Float samples at 8 kHz (not clipped).
    pub fn samples(&self) -> Vec<f64> {
        let (lo, hi) = self.digit.frequencies();
        let n = (self.duration_ms * RATE as f64 / 1000.0).round() as usize;
        let (al, ah) = (dbm0_to_peak(self.low_dbm0), dbm0_to_peak(self.high_dbm0));
        let (wl, wh) = (
            2.0 * std::f64::consts::PI * lo as f64 * (1.0 + self.freq_error) / RATE as f64,
            2.0 * std::f64::consts::PI * hi as f64 * (1.0 + self.freq_error) / RATE as f64,
        );
        (0..n)
            .map(|i| al * (wl * i as f64).sin() + ah * (wh * i as f64).sin())
            .collect()
    }
}

/// Sine at `freq` Hz and `dbm0`, `ms` long, 8 kHz.
pub fn sine(freq: f64, dbm0: f64, ms: f64) -> Vec<f64> {
    let n = (ms * RATE as f64 / 1000.0).round() as usize;
    let a = dbm0_to_peak(dbm0);
    let w = 2.0 * std::f64::consts::PI * freq / RATE as f64;
    (0..n).map(|i| a * (w * i as f64).sin()).collect()
}

/// Silence, `ms` long.
pub fn silence(ms: f64) -> Vec<f64> {
    vec![0.0; (ms * RATE as f64 / 1000.0).round() as usize]
}

/// Rounds and clips float samples to 16-bit.
pub fn to_i16(samples: &[f64]) -> Vec<i16> {
    samples
        .iter()
        .map(|s| s.round().clamp(i16::MIN as f64, i16::MAX as f64) as i16)
        .collect()
}

/// Adds white Gaussian noise of mean-square `power` (deterministic for a given seed).
pub fn add_white_noise(samples: &mut [f64], power: f64, seed: u64) {
    // xorshift64* + Box-Muller: deterministic and dependency-free for test signals.
    let mut state = seed.max(1);
    let mut next = || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((v >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let sigma = power.sqrt();
    for s in samples.iter_mut() {
        let (u1, u2) = (next(), next());
        *s += sigma * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sine_level_matches_the_dbm0_scale() {
        let s = sine(1000.0, -10.0, 1000.0);
        let p = s.iter().map(|x| x * x).sum::<f64>() / s.len() as f64;
        assert!((power_to_dbm0(p) + 10.0).abs() < 0.01);
    }

    #[test]
    fn noise_has_the_requested_power() {
        let mut s = vec![0.0; 80_000];
        add_white_noise(&mut s, 1.0e6, 42);
        let p = s.iter().map(|x| x * x).sum::<f64>() / s.len() as f64;
        assert!((p / 1.0e6 - 1.0).abs() < 0.03, "{p}");
    }
}
