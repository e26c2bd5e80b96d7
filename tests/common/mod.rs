//! Shared harness for the end-to-end tests: runs the real `topup-ivr` binary on its own ports
//! and data directory, and drives real peers (sipp, baresip, tcpdump) against it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub mod asterisk;
pub mod asterisk_real;
pub mod carrier;
pub mod freeswitch;
pub mod freeswitch_real;
pub mod smsc;

pub const BIN: &str = env!("CARGO_BIN_EXE_topup-ivr");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A lock held across every test process of this checkout (cargo test runs one binary at a
/// time with threads, nextest a process per test): an `flock` on a file under the tests' scratch
/// directory, released when dropped (or when the process dies).
pub struct FileLock(std::fs::File);

impl FileLock {
    fn open(name: &str) -> std::fs::File {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("locks");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join(name))
            .unwrap()
    }

    fn take(name: &str, op: libc::c_int) -> Option<FileLock> {
        use std::os::fd::AsRawFd;
        let f = Self::open(name);
        loop {
            // SAFETY: flock on a descriptor this value owns; no memory is passed.
            if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
                return Some(FileLock(f));
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => return None,
                _ => panic!("flock {name}: {e}"),
            }
        }
    }

    pub fn exclusive(name: &str) -> FileLock {
        Self::take(name, libc::LOCK_EX).unwrap()
    }

    pub fn shared(name: &str) -> FileLock {
        Self::take(name, libc::LOCK_SH).unwrap()
    }

    pub fn try_exclusive(name: &str) -> Option<FileLock> {
        Self::take(name, libc::LOCK_EX | libc::LOCK_NB)
    }

    /// One of `n` slots (`name-0`...), waiting while all are held: (the slot, its lock).
    pub fn slot(name: &str, n: usize) -> (usize, FileLock) {
        loop {
            for i in 0..n {
                if let Some(l) = Self::try_exclusive(&format!("{name}-{i}")) {
                    return (i, l);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A test's turn on the machine. Softswitch tests share it; a load test (a storm of calls
/// through a softswitch) runs alone, so it neither starves nor is starved by the calls of
/// another test (both softswitches play late audio under load, and tests that compare audio
/// sample for sample would see it). Held across test processes; a test waiting to run alone
/// holds the gate, so that shared turns asked for meanwhile wait behind it, not it behind them.
pub struct Turn(FileLock);

impl Turn {
    pub fn shared() -> Turn {
        let _gate = FileLock::shared("turn-gate");
        Turn(FileLock::shared("turn"))
    }

    pub fn alone() -> Turn {
        let _gate = FileLock::exclusive("turn-gate");
        Turn(FileLock::exclusive("turn"))
    }
}

/// What a failed test prints of a peer's log: its warnings and errors first (each distinct
/// line once, with how often it came; the cause of a failure under load is usually one of
/// them, repeated), then the last `tail` lines.
pub fn peer_log_report(name: &str, log: &str, markers: &[&str], tail: usize) -> String {
    let mut seen: Vec<(String, usize)> = vec![];
    for line in log
        .lines()
        .filter(|l| markers.iter().any(|m| l.contains(m)))
    {
        // Timestamps and thread ids differ between repeats of one warning: compare from the
        // marker on, without a bracketed thread id (`WARNING[6038] http.c: ...`).
        let at = markers
            .iter()
            .filter_map(|m| line.find(m))
            .min()
            .unwrap_or(0);
        let from = &line[at..];
        let key = match (from.find('['), from.find(']')) {
            (Some(open), Some(close))
                if open < close && from[open + 1..close].bytes().all(|b| b.is_ascii_digit()) =>
            {
                format!("{}{}", &from[..open], &from[close + 1..])
            }
            _ => from.to_string(),
        };
        if let Some((_, n)) = seen.iter_mut().find(|(k, _)| *k == key) {
            *n += 1;
        } else if seen.len() < 100 {
            seen.push((key, 1));
        }
    }
    let trouble: Vec<String> = seen
        .into_iter()
        .map(|(k, n)| if n > 1 { format!("{n} x {k}") } else { k })
        .collect();
    format!(
        "---- {name}: warnings and errors ----\n{}\n---- {name} (tail) ----\n{}",
        trouble.join("\n"),
        tail_lines(log, tail)
    )
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Fails the test with a clear message when a peer program is missing.
pub fn require(program: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{program}` is not installed: run the test command from the README (scripts/test), \
         which installs sipp, baresip, sox and tcpdump"
    );
}

/// Listening ports for the tests come from 10000-19999, below both the RTP ranges (20000+) and
/// the ephemeral range the OS hands to `bind(0)` and outgoing connections (32768+): a port the
/// harness picked, checked and released cannot be taken meanwhile by an SMSC peer or a client
/// socket of another test. A counter per process (offset by the pid) keeps two tests of one
/// binary apart; the bind check skips ports still held by anything else.
fn next_port(free: impl Fn(u16) -> bool) -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    loop {
        let slot = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
        let port = (10000 + (std::process::id() * 53 + slot * 7) % 9990) as u16;
        if free(port) {
            return port;
        }
    }
}

/// A free UDP port.
pub fn free_udp_port() -> u16 {
    next_port(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

/// A free UDP port whose next three ports are free too (sipp binds media port and port+2).
pub fn free_udp_pair() -> u16 {
    next_port(|p| p % 2 == 0 && (p..p + 4).all(|q| UdpSocket::bind(("127.0.0.1", q)).is_ok()))
}

/// A free TCP port.
pub fn free_tcp_port() -> u16 {
    next_port(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
}

/// Distinct RTP ranges per server, below the ephemeral range the OS hands out.
fn rtp_range() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let slot = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
    let base = 20000 + ((std::process::id() * 37 + slot * 211) % 4500) * 2;
    (base as u16, base as u16 + 398)
}

fn spawn_server(dir: &Path, config: &Path, env: &[(String, String)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .unwrap();
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start topup-ivr")
}

/// A running server.
pub struct Server {
    child: Option<Child>,
    pub sip: SocketAddr,
    pub http: SocketAddr,
    pub rtp: (u16, u16),
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// Environment variables the service is started with (secrets named by the config).
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts the service with the shipped prompts and dialplans; `extra` is appended to the
    /// generated config file (TOML).
    pub fn start(extra: &str) -> Server {
        Server::start_with_env(extra, &[])
    }

    /// As [`Server::start`], with these environment variables set for the service.
    pub fn start_with_env(extra: &str, env: &[(&str, &str)]) -> Server {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let sip: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let rtp = rtp_range();
        let config = dir.path().join("topup-ivr.toml");
        let text = format!(
            "[sip]\nlisten = \"{sip}\"\n[rtp]\nports = \"{}-{}\"\n[http]\nlisten = \"{http}\"\n\
[paths]\ndata_dir = \"{}\"\nprompts = \"{}\"\ndialplans = \"{}\"\nsms = \"{}\"\n[log]\nlevel = \"info,topup_ivr=debug\"\n{extra}",
            rtp.0,
            rtp.1,
            dir.path().join("data").display(),
            repo().join("prompts").display(),
            repo().join("dialplans").display(),
            repo().join("sms").display(),
        );
        // Later tables in `extra` may repeat a section: merge by letting extra override keys.
        let text = merge_sections(&text);
        std::fs::write(&config, text).unwrap();
        let child = spawn_server(dir.path(), &config, &env);
        let server = Server {
            child: Some(child),
            sip,
            http,
            rtp,
            dir,
            config,
            env,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(self.http, "/health") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not become ready:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn health(&self) -> serde_json::Value {
        let (_, body) = http_get(self.http, "/health").expect("health");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until `ok` holds, checking every 50 ms; after `limit` fails with `what` and the
    /// server's log.
    pub fn wait_until(&self, what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !ok() {
            assert!(
                Instant::now() < deadline,
                "{what} did not happen in {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until no call is in progress (CDRs are written when calls end).
    pub fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.health()["active_calls"] == 0 {
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("calls still active:\n{}", self.log());
    }

    /// A `topup-ivr` command against this server's config, with its environment (secrets
    /// named by the config).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// CDRs via `topup-ivr calls list --json`, newest first.
    pub fn calls(&self) -> Vec<serde_json::Value> {
        let out = self
            .command(&["calls", "list", "--json", "--limit", "1000"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The service's resident memory now, KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Kills the process with SIGKILL: no shutdown, nothing flushed.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the service again on the same configuration and data (after `kill9` or an
    /// exit); its log goes on in the same file.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.child = Some(spawn_server(self.dir.path(), &self.config, &self.env));
        self.wait_ready();
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
    }

    /// Waits for the process to exit; returns its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("server did not exit in {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- server log ----\n{}", self.log());
        }
    }
}

/// Runs a `topup-ivr` command against the server's config; its standard output. Panics with
/// the command's error if it fails.
pub fn cli_text(server: &Server, args: &[&str]) -> String {
    let out = server.command(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a `topup-ivr` command against the server's config with `--json`; its parsed output.
pub fn cli(server: &Server, args: &[&str]) -> serde_json::Value {
    let args: Vec<&str> = args.iter().copied().chain(["--json"]).collect();
    serde_json::from_str(&cli_text(server, &args)).unwrap()
}

/// Runs a `topup-ivr` command against the server's config; panics if it fails.
pub fn cli_ok(server: &Server, args: &[&str]) {
    cli_text(server, args);
}

/// An API key of a terminal paying from `wallet`, with `scopes`; its secret.
pub fn api_key(server: &Server, wallet: &str, scopes: &str, per_minute: u32) -> String {
    let v = cli(
        server,
        &[
            "apikeys",
            "create",
            "--name",
            "Shop 12",
            "--wallet",
            wallet,
            "--scopes",
            scopes,
            "--per-minute",
            &per_minute.to_string(),
        ],
    );
    v["key"].as_str().unwrap().to_string()
}

/// `topup-ivr loadgen` aimed at the server, recognising the shipped prompts; add the rest.
pub fn loadgen_command(server: &Server) -> Command {
    let mut c = Command::new(BIN);
    c.arg("loadgen")
        .arg("--target")
        .arg(server.sip.to_string())
        .arg("--prompts")
        .arg(repo().join("prompts"));
    c
}

/// For the calling service: the wallet +12015550166 (PIN 4321) with 0.10 USD, and a rate of
/// 0.60 USD/min in 6 s increments to +44 — 10 s affordable, 6 s in whole increments.
pub fn calling_wallet(server: &Server) {
    let rates = server.dir.path().join("rates.toml");
    std::fs::write(
        &rates,
        "[[rate]]\nprefix = \"44\"\ncurrency = \"USD\"\nper_minute = \"0.60\"\nincrement = 6\n",
    )
    .unwrap();
    cli_ok(server, &["carriers", "import", rates.to_str().unwrap()]);
    create_wallet(server, "+12015550166", "4321");
    cli_ok(
        server,
        &[
            "accounts",
            "credit",
            "+12015550166",
            "0.10USD",
            "--id",
            "fund",
        ],
    );
}

/// How many top-ups have `field` equal to `value` (e.g. state succeeded, channel sms), and
/// the whole list (for the assertion's message).
pub fn count_topups(server: &Server, field: &str, value: &str) -> (usize, serde_json::Value) {
    let topups = cli(server, &["topups", "list"]);
    let n = topups
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t[field] == value)
        .count();
    (n, topups)
}

/// Copies the files of `from` (not its subdirectories) into `to`, e.g. shipped dialplans or
/// SMS texts a test then edits.
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Minor units of an amount as the service prints it: "12.34 USD" or "12.34".
pub fn minor_units(s: &str) -> i64 {
    let amount = s.split_whitespace().next().unwrap();
    let (units, frac) = amount.split_once('.').unwrap_or((amount, "0"));
    units.parse::<i64>().unwrap() * 100 + format!("{frac:0<2}")[..2].parse::<i64>().unwrap()
}

/// The balance of `number`'s wallet (`kind` "wallet") or prepaid account ("prepaid"), in
/// minor units.
pub fn balance_minor(server: &Server, number: &str, kind: &str) -> i64 {
    let v = cli(server, &["accounts", "show", number]);
    minor_units(v[kind]["balance"].as_str().unwrap_or_else(|| panic!("{v}")))
}

/// Creates an empty wallet for `number` with `pin` (typed on standard input, as staff do).
pub fn create_wallet(server: &Server, number: &str, pin: &str) {
    let mut child = server
        .command(&["accounts", "create-wallet", number])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{pin}\n").as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "create-wallet {number}");
}

/// A sipp caller that presses `digits` (RFC 4733) from `caller` on `service`.
pub fn keys(scenario: &str, service: &str, caller: &str, digits: &str) -> Sipp {
    Sipp::new(scenario, service)
        .arg("-key")
        .arg("caller")
        .arg(caller)
        .arg("-key")
        .arg("digits")
        .arg(digits)
}

/// Joins repeated `[section]` tables so `extra` can set keys in sections the base wrote.
fn merge_sections(text: &str) -> String {
    let mut order: Vec<String> = vec![];
    let mut sections: std::collections::HashMap<String, Vec<(String, String)>> = Default::default();
    let mut current = String::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with("[[") {
            // An array of tables: every one is its own entry.
            current = format!("{t}#{n}");
            order.push(current.clone());
            sections.insert(current.clone(), vec![]);
        } else if t.starts_with('[') {
            current = t.to_string();
            if !sections.contains_key(&current) {
                order.push(current.clone());
                sections.insert(current.clone(), vec![]);
            }
        } else if let Some((k, _)) = t.split_once('=') {
            let entry = sections.entry(current.clone()).or_default();
            let k = k.trim().to_string();
            entry.retain(|(key, _)| *key != k);
            entry.push((k, line.to_string()));
        }
    }
    let mut out = String::new();
    for s in order {
        out.push_str(s.split('#').next().unwrap_or(&s));
        out.push('\n');
        for (_, l) in &sections[&s] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// A sample of `/metrics`: the value of `name` with all of `labels` (any order), if present.
pub fn metric(server: &Server, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (status, text) = http_get(server.http, "/metrics")?;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (head, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let (n, rest) = head.split_once('{').unwrap_or((head, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

/// One HTTP request to the server, with an API key as bearer token if given; (status, JSON
/// body, or null when the body is not JSON).
pub fn api_call(
    server: &Server,
    method: &str,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let mut req = client.request(
            method.parse().unwrap(),
            format!("http://{}{path}", server.http),
        );
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    })
}

/// Minimal HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Some((code, body))
}

/// A sipp run against `server`.
pub struct Sipp {
    pub scenario: PathBuf,
    pub service: String,
    pub args: Vec<String>,
    pub local_port: u16,
    pub media_port: u16,
}

impl Sipp {
    pub fn new(scenario: &str, service: &str) -> Sipp {
        Sipp {
            scenario: repo().join("tests/sipp").join(scenario),
            service: service.into(),
            args: vec![],
            local_port: free_udp_port(),
            media_port: free_udp_pair(),
        }
    }

    pub fn arg(mut self, a: &str) -> Sipp {
        self.args.push(a.into());
        self
    }

    pub fn command(&self, server: &Server, log_dir: &Path) -> Command {
        self.command_to(server.sip, log_dir)
    }

    /// Dials `target` (a proxy in front of servers) instead of a server.
    pub fn command_to(&self, target: SocketAddr, log_dir: &Path) -> Command {
        let mut c = Command::new("sipp");
        c.arg("-sf")
            .arg(&self.scenario)
            .args(["-s", &self.service])
            .args(["-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &self.local_port.to_string()])
            .args(["-mp", &self.media_port.to_string()])
            .args(["-timeout", "60s", "-timeout_error", "-nostdin"])
            .args(["-trace_err", "-trace_msg", "-trace_logs"])
            .current_dir(log_dir)
            .args(&self.args)
            .arg(target.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !self.args.iter().any(|a| a == "-m") {
            c.args(["-m", "1"]);
        }
        c
    }

    /// Runs to completion; panics with sipp's logs if it failed.
    pub fn run(&self, server: &Server) -> Output {
        let logs = tempfile::tempdir().unwrap();
        let out = self
            .command(server, logs.path())
            .output()
            .expect("run sipp");
        if !out.status.success() {
            panic!(
                "sipp {} failed ({}):\n{}\n{}\n---- server log ----\n{}",
                self.scenario.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                read_logs(logs.path()),
                server.log()
            );
        }
        out
    }

    pub fn spawn(&self, server: &Server, logs: &Path) -> Child {
        self.command(server, logs).spawn().expect("run sipp")
    }
}

/// A calling gateway played by a sipp UAS (`scenario` in tests/sipp): it takes one call on a
/// free loopback port and gives up after `timeout` (sipp syntax, e.g. "60s"); its messages
/// are logged for [`SippGateway::messages`].
pub struct SippGateway {
    pub port: u16,
    child: Child,
    logs: tempfile::TempDir,
}

impl SippGateway {
    pub fn start(scenario: &str, timeout: &str) -> SippGateway {
        require("sipp");
        let port = free_udp_port();
        let logs = tempfile::tempdir().unwrap();
        let child = Command::new("sipp")
            .arg("-sf")
            .arg(repo().join("tests/sipp").join(scenario))
            .args(["-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-mp", &free_udp_pair().to_string()])
            .args(["-m", "1", "-timeout", timeout, "-timeout_error", "-nostdin"])
            .args(["-trace_err", "-trace_msg"])
            .current_dir(logs.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run sipp");
        SippGateway { port, child, logs }
    }

    /// Waits for its one call to end: whether it went as the scenario says.
    pub fn succeeded(&mut self) -> bool {
        self.child.wait().unwrap().success()
    }

    /// The messages it exchanged (and its errors).
    pub fn messages(&self) -> String {
        read_logs(self.logs.path())
    }
}

impl Drop for SippGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read_logs(dir: &Path) -> String {
    let mut s = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with("_errors.log")
            || name.ends_with("_messages.log")
            || name.ends_with("_logs.log")
        {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(120).collect();
            s.push_str(&format!("---- {name} (tail) ----\n"));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
    }
    s
}

/// tcpdump capturing UDP to one port on loopback.
pub struct Capture {
    child: Child,
    pub file: PathBuf,
}

impl Capture {
    pub fn start(dir: &Path, filter: &str) -> Capture {
        require("tcpdump");
        let file = dir.join("capture.pcap");
        let child = Command::new("tcpdump")
            .args(["-i", "lo", "-s0", "-U", "--immediate-mode", "-w"])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        // tcpdump needs a moment before it captures.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !file.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        Capture { child, file }
    }

    /// Stops (SIGINT after 1 s, so the last packets are written) and returns the UDP payloads
    /// with their capture times in seconds.
    pub fn stop(mut self) -> Vec<(f64, Vec<u8>)> {
        std::thread::sleep(Duration::from_secs(1));
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        let _ = self.child.wait();
        read_pcap_udp(&std::fs::read(&self.file).unwrap())
    }
}

/// A tmpfs mounted at `dir` with `opts` (needs root; `None` where mounting is not allowed).
pub struct Mount(pub PathBuf);

impl Mount {
    pub fn new(dir: &Path, opts: &str) -> Option<Mount> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The shipped prompts.
pub fn prompts() -> topup_ivr::media::prompts::PromptStore {
    topup_ivr::media::prompts::PromptStore::load(&repo().join("prompts"), Default::default())
        .unwrap()
}

/// Whether `frames` (µ-law RTP payloads) hold the whole prompt, frame for frame, in order.
pub fn heard_prompt(
    frames: &[Vec<u8>],
    prompts: &topup_ivr::media::prompts::PromptStore,
    lang: &str,
    name: &str,
) -> bool {
    heard_start(frames, prompts, lang, name, usize::MAX)
}

/// Whether `frames` hold the first `n` frames of a prompt (one cut off by a key).
pub fn heard_start(
    frames: &[Vec<u8>],
    prompts: &topup_ivr::media::prompts::PromptStore,
    lang: &str,
    name: &str,
    n: usize,
) -> bool {
    heard_start_as(
        frames,
        prompts,
        lang,
        name,
        n,
        topup_ivr::media::g711::Codec::Pcmu,
    )
}

/// As [`heard_start`], for frames in `codec`.
pub fn heard_start_as(
    frames: &[Vec<u8>],
    prompts: &topup_ivr::media::prompts::PromptStore,
    lang: &str,
    name: &str,
    n: usize,
    codec: topup_ivr::media::g711::Codec,
) -> bool {
    let p = prompts.get(lang, name).unwrap();
    let want: Vec<&[u8]> = (0..p.frames().min(n)).map(|i| p.frame(codec, i)).collect();
    frames
        .windows(want.len())
        .any(|w| w.iter().zip(&want).all(|(a, b)| a.as_slice() == *b))
}

/// Whether the bytes of `frames`, run together, hold the whole prompt's `codec` bytes at any
/// offset, sample for sample (µ-law's two zeros taken as one, see `Codec::canonical`): the
/// caller received our G.711, re-framed by a softswitch's buffer.
pub fn heard_bytes_as(
    frames: &[Vec<u8>],
    prompts: &topup_ivr::media::prompts::PromptStore,
    lang: &str,
    name: &str,
    codec: topup_ivr::media::g711::Codec,
) -> bool {
    let p = prompts.get(lang, name).unwrap();
    let want: Vec<u8> = (0..p.frames())
        .flat_map(|i| p.frame(codec, i).to_vec())
        .map(|b| codec.canonical(b))
        .collect();
    let heard: Vec<u8> = frames
        .concat()
        .into_iter()
        .map(|b| codec.canonical(b))
        .collect();
    heard.windows(want.len()).any(|w| w == want.as_slice())
}

/// Whether the decoded `frames` hold the whole prompt (decoded from its `codec` frames) at
/// any sample offset, with a normalized correlation of at least `min_ncc`: for audio a
/// softswitch re-encoded and re-framed. The search narrows by the loudness envelope (20-sample
/// blocks) before comparing samples, so a minute of audio takes milliseconds.
pub fn heard_like_as(
    frames: &[Vec<u8>],
    prompts: &topup_ivr::media::prompts::PromptStore,
    lang: &str,
    name: &str,
    codec: topup_ivr::media::g711::Codec,
    min_ncc: f64,
) -> bool {
    heard_score(frames, prompts, lang, name, codec) >= min_ncc
}

/// Whether the prompt was heard through a softswitch that may drop or insert a frame under
/// load: of its five equal pieces, at least four are each found (at any offset) with a
/// normalized correlation of at least `min_ncc`. One glitch spoils one piece; a prompt not
/// played, or another prompt, matches none.
pub fn heard_through_glitch(
    frames: &[Vec<u8>],
    prompts: &topup_ivr::media::prompts::PromptStore,
    lang: &str,
    name: &str,
    codec: topup_ivr::media::g711::Codec,
    min_ncc: f64,
) -> bool {
    let (heard, want) = decoded(frames, prompts, lang, name, codec);
    if best_match(&heard, &want) >= min_ncc {
        return true;
    }
    let piece = want.len() / 5;
    let found = want
        .chunks_exact(piece)
        .take(5)
        .filter(|w| best_match(&heard, w) >= min_ncc)
        .count();
    found >= 4
}

/// The best normalized correlation of the prompt with the decoded `frames` (see
/// [`heard_like_as`]): for a failure message that says how close it came.
pub fn heard_score(
    frames: &[Vec<u8>],
    prompts: &topup_ivr::media::prompts::PromptStore,
    lang: &str,
    name: &str,
    codec: topup_ivr::media::g711::Codec,
) -> f64 {
    let (heard, want) = decoded(frames, prompts, lang, name, codec);
    best_match(&heard, &want)
}

/// What was heard and the prompt, both decoded to linear samples (for [`best_match`]).
fn decoded(
    frames: &[Vec<u8>],
    prompts: &topup_ivr::media::prompts::PromptStore,
    lang: &str,
    name: &str,
    codec: topup_ivr::media::g711::Codec,
) -> (Vec<f64>, Vec<f64>) {
    let decode = |f: &[u8]| {
        let mut pcm = vec![0i16; f.len()];
        codec.decode(f, &mut pcm);
        pcm
    };
    let p = prompts.get(lang, name).unwrap();
    let want: Vec<f64> = (0..p.frames())
        .flat_map(|i| decode(p.frame(codec, i)))
        .map(f64::from)
        .collect();
    let heard: Vec<f64> = frames
        .iter()
        .flat_map(|f| decode(f))
        .map(f64::from)
        .collect();
    (heard, want)
}

/// The highest normalized correlation of `want` with a stretch of `heard` (see
/// [`heard_like_as`]).
pub fn best_match(heard: &[f64], want: &[f64]) -> f64 {
    const B: usize = 20;
    if want.len() < B || heard.len() < want.len() {
        return 0.0;
    }
    let envelope = |x: &[f64]| -> Vec<f64> {
        x.chunks_exact(B)
            .map(|c| (c.iter().map(|v| v * v).sum::<f64>() / B as f64).sqrt())
            .collect()
    };
    let ncc = |a: &[f64], b: &[f64], centred: bool| {
        let (ma, mb) = if centred {
            (
                a.iter().sum::<f64>() / a.len() as f64,
                b.iter().sum::<f64>() / b.len() as f64,
            )
        } else {
            (0.0, 0.0)
        };
        let (mut dot, mut ea, mut eb) = (0.0, 0.0, 0.0);
        for (x, y) in a.iter().zip(b) {
            dot += (x - ma) * (y - mb);
            ea += (x - ma) * (x - ma);
            eb += (y - mb) * (y - mb);
        }
        if ea > 0.0 && eb > 0.0 {
            dot / (ea * eb).sqrt()
        } else {
            0.0
        }
    };
    let (he, we) = (envelope(heard), envelope(want));
    let mut blocks: Vec<(f64, usize)> = (0..=he.len() - we.len())
        .map(|j| (ncc(&he[j..j + we.len()], &we, true), j))
        .collect();
    blocks.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut best = 0.0f64;
    for &(_, j) in blocks.iter().take(3) {
        let from = (j * B).saturating_sub(B);
        let to = (j * B + B).min(heard.len() - want.len());
        for o in from..=to {
            best = best.max(ncc(&heard[o..o + want.len()], want, false));
        }
    }
    best
}

/// UDP payloads of an Ethernet (or Linux cooked) IPv4 pcap.
pub fn read_pcap_udp(data: &[u8]) -> Vec<(f64, Vec<u8>)> {
    let mut out = vec![];
    if data.len() < 24 {
        return out;
    }
    let link = u32::from_le_bytes(data[20..24].try_into().unwrap());
    let l2 = match link {
        1 => 14,
        113 => 16,
        _ => panic!("unexpected link type {link}"),
    };
    let mut off = 24;
    while off + 16 <= data.len() {
        let ts = u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as f64
            + u32::from_le_bytes(data[off + 4..off + 8].try_into().unwrap()) as f64 / 1e6;
        let incl = u32::from_le_bytes(data[off + 8..off + 12].try_into().unwrap()) as usize;
        off += 16;
        let pkt = &data[off..(off + incl).min(data.len())];
        off += incl;
        if pkt.len() < l2 + 28 {
            continue;
        }
        let ihl = ((pkt[l2] & 0x0F) as usize) * 4;
        let udp = l2 + ihl;
        if pkt[l2 + 9] != 17 || pkt.len() < udp + 8 {
            continue;
        }
        out.push((ts, pkt[udp + 8..].to_vec()));
    }
    out
}

/// Writes a pcap of RTP packets (Ethernet/IPv4/UDP) for sipp's play_pcap_audio.
pub fn write_rtp_pcap(path: &Path, packets: &[(f64, Vec<u8>)]) {
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&0i32.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&1u32.to_le_bytes());
    for (t, rtp) in packets {
        let udp_len = 8 + rtp.len();
        let ip_len = 20 + udp_len;
        let mut pkt = vec![0u8; 14];
        pkt[12] = 0x08; // IPv4
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
        ];
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        let sum = ipv4_checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        pkt.extend_from_slice(&ip);
        pkt.extend_from_slice(&6000u16.to_be_bytes());
        pkt.extend_from_slice(&7000u16.to_be_bytes());
        pkt.extend_from_slice(&(udp_len as u16).to_be_bytes());
        pkt.extend_from_slice(&[0, 0]);
        pkt.extend_from_slice(rtp);
        f.extend_from_slice(&(t.trunc() as u32).to_le_bytes());
        f.extend_from_slice(&((t.fract() * 1e6) as u32).to_le_bytes());
        f.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
        f.extend_from_slice(&(pkt.len() as u32).to_le_bytes());
        f.extend_from_slice(&pkt);
    }
    std::fs::write(path, f).unwrap();
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// An RTP header + payload.
pub fn rtp_packet(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A sipp caller into a softswitch, its audio captured.
pub struct Call {
    child: Child,
    logs: tempfile::TempDir,
    capture: Capture,
    codec: topup_ivr::media::g711::Codec,
}

/// Dials `exten` at `target` from `caller`, offering `codec`, and presses `digits` from 1.5 s
/// in (one key per 0.4 s); with `bye_after` the caller hangs up that long after the keys
/// began, else it waits for the far end to hang up.
pub fn dial(
    target: SocketAddr,
    exten: &str,
    caller: &str,
    digits: &str,
    codec: topup_ivr::media::g711::Codec,
    bye_after: Option<Duration>,
) -> Call {
    require("sipp");
    let (pt, name) = match codec {
        topup_ivr::media::g711::Codec::Pcmu => ("0", "PCMU"),
        topup_ivr::media::g711::Codec::Pcma => ("8", "PCMA"),
    };
    let scenario = match bye_after {
        Some(_) => "asterisk_keys_then_bye.xml",
        None => "asterisk_keys.xml",
    };
    let mut sipp = keys(scenario, exten, caller, digits)
        .arg("-key")
        .arg("pt")
        .arg(pt)
        .arg("-key")
        .arg("codec")
        .arg(name);
    if let Some(d) = bye_after {
        sipp = sipp.arg("-d").arg(&d.as_millis().to_string());
    }
    let logs = tempfile::tempdir().unwrap();
    let capture = Capture::start(
        logs.path(),
        &format!("udp and dst port {}", sipp.media_port),
    );
    let child = sipp
        .command_to(target, logs.path())
        .spawn()
        .expect("run sipp");
    Call {
        child,
        logs,
        capture,
        codec,
    }
}

impl Call {
    /// Waits for sipp to finish (it must succeed) and returns the audio frames the caller
    /// heard, in order.
    pub fn heard(mut self, server: &Server) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "sipp did not finish:\n{}\n{}",
                    read_logs(self.logs.path()),
                    server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let packets = self.capture.stop();
        assert!(
            status.success(),
            "sipp failed ({status}):\n{}\n---- server log ----\n{}",
            read_logs(self.logs.path()),
            server.log()
        );
        let pt = match self.codec {
            topup_ivr::media::g711::Codec::Pcmu => 0,
            topup_ivr::media::g711::Codec::Pcma => 8,
        };
        rtp_frames(&packets, pt)
    }
}

/// The payloads of the RTP packets of payload type `pt` among UDP payloads, in order.
pub fn rtp_frames(packets: &[(f64, Vec<u8>)], pt: u8) -> Vec<Vec<u8>> {
    packets
        .iter()
        .filter(|(_, p)| p.len() > 12 && p[0] >> 6 == 2 && p[1] & 0x7F == pt)
        .map(|(_, p)| p[12..].to_vec())
        .collect()
}
