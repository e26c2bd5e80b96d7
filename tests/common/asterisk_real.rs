//! A real Asterisk 23.4.1 for the end-to-end tests: the prebuilt, relocatable install from
//! `../shared/tools/asterisk/` (see its README), unpacked once per test target into
//! `CARGO_TARGET_TMPDIR`, and started per test with a configuration directory, ports and RTP
//! range of its own. The configuration is the one shipped in `docker/asterisk/` with only the
//! addresses, ports and password replaced, so the tests prove the shipped files work.
//!
//! Callers are sipp (`tests/sipp/asterisk_*.xml`) dialling Asterisk's PJSIP; what a caller
//! heard is captured with tcpdump on its media port.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_tcp_port, free_udp_port, repo};

/// The version the tests run against (and the README names).
pub const VERSION: &str = "23.4.1";
/// The Stasis application of the shipped `extensions.conf`.
pub const APP: &str = "topup-ivr";
/// The ARI password the tests give Asterisk (ari.conf is written from the shipped template).
pub const ARI_PASSWORD: &str = "ari-test-secret";
/// The shipped extensions: 7000 runs the recharge plan, 7001 the wallet; the tests add 7002
/// for the echo line.
pub const RECHARGE: &str = "7000";
pub const WALLET: &str = "7001";
pub const ECHO: &str = "7002";

/// The install, unpacked once per tarball (several test threads and processes may ask at
/// once: unpack beside, then rename into place). The tarball is the prebuilt one, or the one
/// `scripts/test-asterisk` names (`TOPUP_IVR_ASTERISK_TARBALL`: the same version built here
/// when the prebuilt one needs instructions this CPU lacks).
fn install() -> PathBuf {
    let tarball = std::env::var_os("TOPUP_IVR_ASTERISK_TARBALL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            repo().join(format!(
                "../shared/tools/asterisk/asterisk-{VERSION}-debian12-amd64.tar.gz"
            ))
        });
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("peers");
    let name = tarball
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".tar.gz"))
        .unwrap_or("asterisk")
        .to_string();
    let root = base.join(name);
    if root.join("sbin/asterisk").exists() {
        return root;
    }
    assert!(
        tarball.exists(),
        "the prebuilt Asterisk {VERSION} is not at {} (set TOPUP_IVR_ASTERISK_TARBALL)",
        tarball.display()
    );
    std::fs::create_dir_all(&base).unwrap();
    let scratch = tempfile::tempdir_in(&base).unwrap();
    let ok = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(scratch.path())
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot unpack {}", tarball.display());
    // Another thread may have won the race: its copy is as good as ours.
    let _ = std::fs::rename(scratch.path().join(format!("asterisk-{VERSION}")), &root);
    assert!(root.join("sbin/asterisk").exists(), "{}", root.display());
    root
}

/// RTP ports for the Asterisks of the tests: two ranges of 700 from 30000 to 31399, below
/// the ephemeral range (32768 up, where the load generator's sockets are) and above the
/// service's (20000-29000) and the peers' (10000-19999). A storm of ~100 calls at once holds a
/// pair for each caller and one for each media channel. Each Asterisk holds a range until it is
/// dropped (a lock across test processes); a third waits for one.
fn rtp_range(slot: usize) -> (u16, u16) {
    let base = 30000 + slot as u16 * 700;
    (base, base + 698)
}

/// How a test wants its Asterisk.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Where the shipped `sbc` endpoint's calls go (the calling service's outbound leg): a
    /// sipp UAS. Without it the aor points at a port nobody listens on.
    pub trunk: Option<SocketAddr>,
    /// A load test: wait until no other test runs, and let none start meanwhile.
    pub alone: bool,
}

/// A running Asterisk.
pub struct RealAsterisk {
    root: PathBuf,
    pub dir: tempfile::TempDir,
    /// PJSIP's UDP transport (callers dial here).
    pub sip: SocketAddr,
    /// The HTTP server (ARI and chan_websocket media).
    pub http: SocketAddr,
    pub rtp: (u16, u16),
    /// The RTP range's slot, held (across test processes) until dropped.
    _rtp_slot: super::FileLock,
    child: Option<Child>,
    /// Held for the test's length (dropped last).
    _turn: super::Turn,
}

impl RealAsterisk {
    pub fn start(opts: Options) -> RealAsterisk {
        let turn = if opts.alone {
            super::Turn::alone()
        } else {
            super::Turn::shared()
        };
        let root = install();
        let dir = tempfile::tempdir().unwrap();
        let sip: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let (rtp_slot, rtp_lock) = super::FileLock::slot("asterisk-rtp", 2);
        let rtp = rtp_range(rtp_slot);
        let trunk = opts
            .trunk
            .unwrap_or_else(|| format!("127.0.0.1:{}", free_udp_port()).parse().unwrap());
        write_config(&root, dir.path(), sip, http, rtp, trunk);
        let mut ast = RealAsterisk {
            root,
            dir,
            sip,
            http,
            rtp,
            _rtp_slot: rtp_lock,
            child: None,
            _turn: turn,
        };
        ast.boot();
        ast
    }

    fn conf(&self) -> PathBuf {
        self.dir.path().join("etc/asterisk.conf")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(self.root.join("sbin/asterisk"));
        c.env("LD_LIBRARY_PATH", self.root.join("lib"))
            .arg("-C")
            .arg(self.conf());
        c
    }

    /// Starts the process and waits until it is fully booted.
    fn boot(&mut self) {
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("console.log"))
            .unwrap();
        let child = self
            .command()
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(console.try_clone().unwrap())
            .stderr(console)
            .spawn()
            .expect("start asterisk");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self
                .command()
                .args(["-rx", "core waitfullybooted"])
                .output();
            if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("fully booted")) {
                break;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                use std::os::unix::process::ExitStatusExt;
                assert_ne!(
                    status.signal(),
                    Some(libc::SIGILL),
                    "this Asterisk needs instructions this CPU lacks: run scripts/test-asterisk \
                     (it builds one for this machine) and set TOPUP_IVR_ASTERISK_TARBALL to what it prints"
                );
                panic!(
                    "Asterisk exited ({status}) before it booted:\n{}",
                    self.console()
                );
            }
            assert!(
                Instant::now() < deadline,
                "Asterisk did not boot:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Every ARI request and response goes to the log (read by `ari_log`).
        self.rx("ari set debug all on");
    }

    /// Runs a CLI command (`asterisk -rx`); its output.
    pub fn rx(&self, cmd: &str) -> String {
        let out = self.command().args(["-rx", cmd]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The URL of the HTTP server (for `[asterisk] url`).
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The `[asterisk]` section for the service: the shipped docker/asterisk/topup-ivr.toml's,
    /// with this Asterisk's address (the password comes from TOPUP_IVR_ARI_PASSWORD, as the
    /// shipped file says); `extra` keys after it win.
    pub fn service_config(&self, extra: &str) -> String {
        let shipped = std::fs::read_to_string(repo().join("docker/asterisk/topup-ivr.toml"))
            .expect("docker/asterisk/topup-ivr.toml");
        let mut section = String::new();
        let mut inside = false;
        for line in shipped.lines() {
            if line.starts_with('[') {
                inside = line.trim() == "[asterisk]";
            }
            if inside {
                section.push_str(line);
                section.push('\n');
            }
        }
        let from = "url = \"http://127.0.0.1:8088\"";
        assert!(
            section.contains(from),
            "the shipped [asterisk] section lost `{from}`"
        );
        format!(
            "{}{extra}",
            section.replace(from, &format!("url = \"{}\"", self.url()))
        )
    }

    /// Whether the Stasis application is registered (the service's events connection is up).
    pub fn app_registered(&self) -> bool {
        self.rx("ari show apps").lines().any(|l| l.trim() == APP)
    }

    pub fn wait_app(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.app_registered() {
            assert!(
                Instant::now() < deadline,
                "the application never registered:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Channels alive now (names).
    pub fn channels(&self) -> Vec<String> {
        self.rx("core show channels concise")
            .lines()
            .filter(|l| l.contains('!'))
            .map(|l| l.split('!').next().unwrap_or("").to_string())
            .collect()
    }

    /// Bridges alive now (ids).
    pub fn bridges(&self) -> Vec<String> {
        self.rx("bridge show all")
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// Waits until no channel and no bridge is left; fails with what is left.
    pub fn wait_empty(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let (c, b) = (self.channels(), self.bridges());
            if c.is_empty() && b.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left in Asterisk: channels {c:?}, bridges {b:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asterisk's log (messages.log: notices, warnings, errors, verbose).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("state/log/messages.log")).unwrap_or_default()
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// The ARI requests Asterisk logged (`ari set debug all on`): each request line
    /// (`DELETE channels/<id>`) with the status Asterisk answered. A request and its response
    /// are logged by the same HTTP thread, which pairs them.
    pub fn ari_requests(&self) -> Vec<(String, u16)> {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let thread = |l: &str| {
            l.split("VERBOSE[")
                .nth(1)?
                .split(']')
                .next()
                .map(str::to_string)
        };
        let mut out = vec![];
        for (i, l) in lines.iter().enumerate() {
            if !l.contains("ARI request received from") {
                continue;
            }
            let Some(tid) = thread(l) else { continue };
            let request = lines
                .get(i + 1)
                .map(|r| r.trim().to_string())
                .unwrap_or_default();
            let status = lines[i + 1..]
                .iter()
                .position(|x| {
                    x.contains("Sending ARI response") && thread(x).as_ref() == Some(&tid)
                })
                .and_then(|j| lines.get(i + 2 + j))
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            out.push((request, status));
        }
        out
    }

    /// Whether the process is still alive (it has not crashed or been stopped).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops Asterisk (`core stop now`; killed if it does not go).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = self.command().args(["-rx", "core stop now"]).output();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops Asterisk and starts it again on the same configuration and ports.
    pub fn restart(&mut self) {
        self.stop();
        self.boot();
    }

    /// The installed version, as Asterisk reports it.
    pub fn version(&self) -> String {
        self.rx("core show version")
    }
}

impl Drop for RealAsterisk {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}",
                super::peer_log_report(
                    "asterisk messages.log",
                    &self.log(),
                    &["WARNING[", "ERROR["],
                    150
                )
            );
        }
        self.stop();
    }
}

/// Writes Asterisk's configuration: the shipped docker/asterisk files with the test's
/// addresses, plus the files a container image would bring (asterisk.conf, logger.conf,
/// rtp.conf).
fn write_config(
    root: &Path,
    dir: &Path,
    sip: SocketAddr,
    http: SocketAddr,
    rtp: (u16, u16),
    trunk: SocketAddr,
) {
    let etc = dir.join("etc");
    let state = dir.join("state");
    for d in ["lib", "db", "keys", "spool", "run", "log", "cache"] {
        std::fs::create_dir_all(state.join(d)).unwrap();
    }
    std::fs::create_dir_all(&etc).unwrap();
    let shipped = |name: &str| {
        std::fs::read_to_string(repo().join("docker/asterisk").join(name))
            .unwrap_or_else(|e| panic!("docker/asterisk/{name}: {e}"))
    };
    let replace = |text: String, from: &str, to: &str| {
        assert!(text.contains(from), "the shipped file lost `{from}`");
        text.replace(from, to)
    };
    let write = |name: &str, text: String| std::fs::write(etc.join(name), text).unwrap();

    write(
        "asterisk.conf",
        format!(
            "[directories]\nastetcdir => {etc}\nastmoddir => {root}/lib/asterisk/modules\n\
             astdatadir => {root}/var/lib/asterisk\nastvarlibdir => {s}/lib\nastdbdir => {s}/db\n\
             astkeydir => {s}/keys\nastspooldir => {s}/spool\nastrundir => {s}/run\n\
             astlogdir => {s}/log\nastcachedir => {s}/cache\n[options]\nverbose = 3\n",
            etc = etc.display(),
            root = root.display(),
            s = state.display()
        ),
    );
    write(
        "logger.conf",
        "[logfiles]\nmessages.log => notice,warning,error,verbose(3)\n".into(),
    );
    write(
        "rtp.conf",
        format!("[general]\nrtpstart = {}\nrtpend = {}\n", rtp.0, rtp.1),
    );
    // Asterisk's HTTP server closes connections beyond `sessionlimit` unanswered (a media
    // websocket's handshake among them). The tests hold the service to well under the
    // default 100, as if other applications shared the server: the storms pass only if the
    // service bounds its own connections.
    write(
        "http.conf",
        replace(
            replace(
                shipped("http.conf"),
                "bindaddr = 0.0.0.0",
                "bindaddr = 127.0.0.1",
            ),
            "bindport = 8088",
            &format!("bindport = {}", http.port()),
        ) + "sessionlimit = 40\n",
    );
    write(
        "ari.conf",
        replace(shipped("ari.conf.template"), "@ARI_PASSWORD@", ARI_PASSWORD),
    );
    // The SBC is sipp on loopback: calls from 127.0.0.1 are its calls, and the calling
    // service's outbound leg goes to the trunk address.
    let pjsip = replace(
        shipped("pjsip.conf"),
        "bind = 0.0.0.0:5060",
        &format!("bind = {sip}"),
    );
    let pjsip = replace(pjsip, "match = sbc.example.net", "match = 127.0.0.1");
    let pjsip = replace(
        pjsip,
        "contact = sip:sbc.example.net:5060",
        &format!("contact = sip:{trunk}"),
    );
    write("pjsip.conf", pjsip);
    // The shipped extensions, and the echo line for the tests.
    let mut ext = shipped("extensions.conf");
    ext.push_str(&format!(
        "\n[from-callers]\nexten => {ECHO},1,Stasis({APP},echo)\n same => n,Hangup()\n"
    ));
    write("extensions.conf", ext);
    for f in [
        "modules.conf",
        "chan_websocket.conf",
        "websocket_client.conf",
    ] {
        write(f, shipped(f));
    }
}
