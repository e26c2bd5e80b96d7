//! CPU time and resident memory of a process, from /proc (Linux), sampled while the load runs.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How often the sampler reads /proc.
pub const EVERY: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    /// Calls with media up in the generator at that moment.
    pub active: usize,
    pub server_rss_kib: Option<u64>,
    /// utime + stime of the service, seconds.
    pub server_cpu_s: Option<f64>,
    /// utime + stime of the generator itself, seconds.
    pub own_cpu_s: Option<f64>,
}

/// The one running `topup-ivr serve`, if there is exactly one.
pub fn find_server() -> Option<u32> {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|&b| b == 0).map(String::from_utf8_lossy);
        let is_us = args
            .next()
            .is_some_and(|a0| a0.rsplit('/').next() == Some("topup-ivr"));
        if is_us && args.any(|a| a == "serve") {
            found.push(pid);
        }
    }
    (found.len() == 1).then(|| found[0])
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime in seconds (`/proc/PID/stat` fields 14 and 15).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

/// Resident set size in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub struct Sampler {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub fn start(pid: Option<u32>, active: impl Fn() -> usize + Send + 'static) -> Sampler {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let pid = pid.map(|p| p.to_string());
            let mut samples = vec![];
            loop {
                samples.push(Sample {
                    at: Instant::now(),
                    active: active(),
                    server_rss_kib: pid.as_deref().and_then(rss_kib),
                    server_cpu_s: pid.as_deref().and_then(cpu_seconds),
                    own_cpu_s: cpu_seconds("self"),
                });
                tokio::select! {
                    _ = tokio::time::sleep(EVERY) => {}
                    _ = &mut stopped => break,
                }
            }
            samples
        });
        Sampler { stop, task }
    }

    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_can_be_measured() {
        // Burn a little CPU so the figure cannot be zero by accident of tick rounding.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        assert!(x != 1);
        assert!(cpu_seconds("self").unwrap() > 0.0);
        assert!(rss_kib("self").unwrap() > 100);
        assert_eq!(cpu_seconds("999999999"), None);
    }
}
