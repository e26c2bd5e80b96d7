//! What a load run measured, summed over its calls, as text or JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::LoadgenArgs;
use super::caller::CallStats;
use super::proc::Sample;

/// How one call went.
#[derive(Debug)]
pub struct Outcome {
    refused: Option<u16>,
    failure: Option<String>,
    setup: Option<Duration>,
    stats: Option<CallStats>,
}

impl Outcome {
    pub fn failed(reason: String) -> Outcome {
        Outcome {
            refused: None,
            failure: Some(reason),
            setup: None,
            stats: None,
        }
    }

    pub fn refused(code: u16) -> Outcome {
        Outcome {
            refused: Some(code),
            failure: None,
            setup: None,
            stats: None,
        }
    }

    pub fn done(setup: Duration, stats: CallStats, result: Result<(), String>) -> Outcome {
        Outcome {
            refused: None,
            failure: result.err(),
            setup: Some(setup),
            stats: Some(stats),
        }
    }
}

/// p50 / p99 / max of a distribution, in milliseconds, and how many values.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Quantiles {
    pub n: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    fn of_us(h: &Histogram<u32>) -> Quantiles {
        if h.is_empty() {
            return Quantiles::default();
        }
        Quantiles {
            n: h.len(),
            p50: h.value_at_quantile(0.5) as f64 / 1000.0,
            p99: h.value_at_quantile(0.99) as f64 / 1000.0,
            max: h.max() as f64 / 1000.0,
        }
    }
}

impl Quantiles {
    /// Of signed µs values (sorted here).
    fn of_signed_us(mut v: Vec<i64>) -> Quantiles {
        if v.is_empty() {
            return Quantiles::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        Quantiles {
            n: v.len() as u64,
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

impl fmt::Display for Quantiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n = {})",
            self.p50, self.p99, self.max, self.n
        )
    }
}

#[derive(Debug, Serialize)]
pub struct ProcFigures {
    pub pid: u32,
    /// Mean CPU of the service while at least 90 % of the peak calls were up, in % of one
    /// core (200 % = both cores of this machine).
    pub cpu_percent_at_peak: Option<f64>,
    pub rss_idle_mib: Option<f64>,
    pub rss_at_peak_mib: Option<f64>,
    pub rss_max_mib: Option<f64>,
    /// (RSS at peak − RSS idle) / calls at peak.
    pub kib_per_call: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub number: String,
    pub script: String,
    pub calls: usize,
    pub rate: f64,
    pub length_s: f64,
    pub elapsed_s: f64,
    pub established: usize,
    pub refused: BTreeMap<u16, usize>,
    pub failed: BTreeMap<String, usize>,
    pub peak_calls: usize,
    pub setup: Quantiles,
    pub frames_received: u64,
    pub frames_lost: u64,
    pub frames_late: u64,
    /// |inter-arrival − timestamp spacing| over every received frame.
    pub jitter: Quantiles,
    /// Each call's own p99 jitter, as a distribution over calls.
    pub jitter_p99_per_call: Quantiles,
    /// Each call's worst jitter, as a distribution over calls.
    pub jitter_max_per_call: Quantiles,
    pub keys_sent: u64,
    /// The last key of a press going down (its first RFC 4733 packet) → the first packet of
    /// the prompt that answers it.
    pub key_down_to_prompt: Quantiles,
    /// The same from the key's end packet (negative: the answer began before the key ended).
    pub key_end_to_prompt: Quantiles,
    pub dtmf_unanswered: u64,
    pub server: Option<ProcFigures>,
    /// Mean CPU of the generator itself at peak, % of one core.
    pub generator_cpu_percent_at_peak: Option<f64>,
}

fn hist() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

impl Report {
    pub fn build(
        args: &LoadgenArgs,
        script: &str,
        pid: Option<u32>,
        elapsed: Duration,
        outcomes: Vec<Outcome>,
        samples: Vec<Sample>,
    ) -> Report {
        let mut setup = hist();
        let mut jitter = hist();
        let mut per_call_p99 = hist();
        let mut per_call_max = hist();
        let mut down = vec![];
        let mut up = vec![];
        let mut r = Report {
            target: args.target.to_string(),
            number: args.number.clone(),
            script: script.to_string(),
            calls: args.calls,
            rate: args.rate,
            length_s: args.length.as_secs_f64(),
            elapsed_s: elapsed.as_secs_f64(),
            established: 0,
            refused: BTreeMap::new(),
            failed: BTreeMap::new(),
            peak_calls: samples.iter().map(|s| s.active).max().unwrap_or(0),
            setup: Quantiles::default(),
            frames_received: 0,
            frames_lost: 0,
            frames_late: 0,
            jitter: Quantiles::default(),
            jitter_p99_per_call: Quantiles::default(),
            jitter_max_per_call: Quantiles::default(),
            keys_sent: 0,
            key_down_to_prompt: Quantiles::default(),
            key_end_to_prompt: Quantiles::default(),
            dtmf_unanswered: 0,
            server: None,
            generator_cpu_percent_at_peak: None,
        };
        for o in outcomes {
            if let Some(code) = o.refused {
                *r.refused.entry(code).or_default() += 1;
            }
            if let Some(f) = o.failure {
                *r.failed.entry(f).or_default() += 1;
            }
            if let Some(s) = o.setup {
                r.established += 1;
                let _ = setup.record(s.as_micros().max(1) as u64);
            }
            if let Some(st) = o.stats {
                r.frames_received += st.received;
                r.frames_lost += st.lost;
                r.frames_late += st.late;
                r.keys_sent += st.keys_sent as u64;
                r.dtmf_unanswered += st.dtmf_unanswered as u64;
                if !st.jitter_us.is_empty() {
                    let _ = jitter.add(&st.jitter_us);
                    let _ = per_call_p99.record(st.jitter_us.value_at_quantile(0.99));
                    let _ = per_call_max.record(st.jitter_us.max());
                }
                down.extend(st.key_down_us);
                up.extend(st.key_up_us);
            }
        }
        r.setup = Quantiles::of_us(&setup);
        r.jitter = Quantiles::of_us(&jitter);
        r.jitter_p99_per_call = Quantiles::of_us(&per_call_p99);
        r.jitter_max_per_call = Quantiles::of_us(&per_call_max);
        r.key_down_to_prompt = Quantiles::of_signed_us(down);
        r.key_end_to_prompt = Quantiles::of_signed_us(up);
        let (server, own) = at_peak(&samples, r.peak_calls);
        r.generator_cpu_percent_at_peak = own;
        r.server = pid.map(|pid| {
            let mib = |k: u64| k as f64 / 1024.0;
            let idle = samples.first().and_then(|s| s.server_rss_kib);
            let at_peak = samples
                .iter()
                .filter(|s| s.active == r.peak_calls)
                .filter_map(|s| s.server_rss_kib)
                .max();
            ProcFigures {
                pid,
                cpu_percent_at_peak: server,
                rss_idle_mib: idle.map(mib),
                rss_at_peak_mib: at_peak.map(mib),
                rss_max_mib: samples
                    .iter()
                    .filter_map(|s| s.server_rss_kib)
                    .max()
                    .map(mib),
                kib_per_call: match (idle, at_peak) {
                    (Some(i), Some(p)) if r.peak_calls > 0 => {
                        Some(p.saturating_sub(i) as f64 / r.peak_calls as f64)
                    }
                    _ => None,
                },
            }
        });
        r
    }

    /// Calls that were refused or failed.
    pub fn errors(&self) -> usize {
        self.refused.values().sum::<usize>() + self.failed.values().sum::<usize>()
    }
}

/// Mean CPU (% of one core) of the service and of the generator over the longest stretch of
/// samples with at least 90 % of the peak calls up.
fn at_peak(samples: &[Sample], peak: usize) -> (Option<f64>, Option<f64>) {
    if peak == 0 {
        return (None, None);
    }
    let floor = peak - peak / 10;
    let hot: Vec<&Sample> = samples.iter().filter(|s| s.active >= floor).collect();
    let (Some(a), Some(b)) = (hot.first(), hot.last()) else {
        return (None, None);
    };
    let secs = b.at.duration_since(a.at).as_secs_f64();
    if secs < 0.5 {
        return (None, None);
    }
    let pct = |x: Option<f64>, y: Option<f64>| Some((y? - x?) / secs * 100.0);
    (
        pct(a.server_cpu_s, b.server_cpu_s),
        pct(a.own_cpu_s, b.own_cpu_s),
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "loadgen: {} calls to {} at {}, {}/s, up to {} s each, {:.1} s in all",
            self.calls, self.number, self.target, self.rate, self.length_s, self.elapsed_s
        )?;
        writeln!(f, "script: {}", self.script)?;
        writeln!(
            f,
            "calls: {} established, {} refused, {} failed; {} up at once at the peak",
            self.established,
            self.refused.values().sum::<usize>(),
            self.failed.values().sum::<usize>(),
            self.peak_calls
        )?;
        for (code, n) in &self.refused {
            writeln!(f, "  refused {code}: {n}")?;
        }
        for (why, n) in &self.failed {
            writeln!(f, "  failed: {why}: {n}")?;
        }
        writeln!(f, "INVITE → 200: {}", self.setup)?;
        let pct = |n: u64| {
            if self.frames_received + n == 0 {
                0.0
            } else {
                n as f64 * 100.0 / (self.frames_received + self.frames_lost) as f64
            }
        };
        writeln!(
            f,
            "frames received: {}, lost {} ({:.3} %), late (> 40 ms) {} ({:.3} %)",
            self.frames_received,
            self.frames_lost,
            pct(self.frames_lost),
            self.frames_late,
            pct(self.frames_late)
        )?;
        writeln!(f, "jitter, all frames: {}", self.jitter)?;
        writeln!(f, "jitter, each call's p99: {}", self.jitter_p99_per_call)?;
        writeln!(f, "jitter, each call's max: {}", self.jitter_max_per_call)?;
        writeln!(
            f,
            "keys sent: {}, unanswered {}",
            self.keys_sent, self.dtmf_unanswered
        )?;
        writeln!(f, "key down → next prompt: {}", self.key_down_to_prompt)?;
        writeln!(f, "key end → next prompt: {}", self.key_end_to_prompt)?;
        let opt = |v: Option<f64>, unit: &str| match v {
            Some(v) => format!("{v:.1}{unit}"),
            None => "?".into(),
        };
        match &self.server {
            Some(s) => writeln!(
                f,
                "service (pid {}): CPU at peak {} of one core; RSS idle {}, at peak {}, max {}; {} per call",
                s.pid,
                opt(s.cpu_percent_at_peak, " %"),
                opt(s.rss_idle_mib, " MiB"),
                opt(s.rss_at_peak_mib, " MiB"),
                opt(s.rss_max_mib, " MiB"),
                opt(s.kib_per_call, " KiB"),
            )?,
            None => writeln!(
                f,
                "service: process not found (give --pid) — no CPU or memory figures"
            )?,
        }
        writeln!(
            f,
            "generator: CPU at peak {} of one core",
            opt(self.generator_cpu_percent_at_peak, " %")
        )
    }
}
