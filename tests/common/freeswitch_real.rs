//! A real FreeSWITCH 1.10.12 with jambonz's mod_audio_fork (freeswitch-modules 30f2189) for the
//! end-to-end tests: the prebuilt, relocatable tree from `../shared/tools/freeswitch/` (see its
//! README), unpacked once per test target into `CARGO_TARGET_TMPDIR`, and started per test
//! with a configuration, ports, RTP range and state directory of its own. The configuration
//! includes the files shipped in `docker/freeswitch/` (the dialplan, the agents extension, the
//! event socket with its password from `FREESWITCH_ESL_PASSWORD`), with only the port
//! replaced; around them, what a FreeSWITCH install brings: a SIP profile for the callers
//! (with `rtp-timer-name=soft`, which the shipped files' README asks for), a `trunk` gateway
//! for the calling service, a call-centre queue for the agents.
//!
//! Callers are sipp dialling the profile; what a caller heard is captured with tcpdump.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_tcp_port, free_udp_port, repo};

/// The version the tests run against (and the README names).
pub const VERSION: &str = "1.10.12";
/// The event socket password the tests give FreeSWITCH (by environment, as shipped).
pub const ESL_PASSWORD: &str = "esl-test-secret";
/// The shipped dialplan's numbers; the tests add 7002 for the echo line (and 7009 parks a
/// call the way the shipped dialplan did before it set send_silence_when_idle).
pub const RECHARGE: &str = "7000";
pub const WALLET: &str = "7001";
pub const ECHO: &str = "7002";
pub const ECHO_BARE_PARK: &str = "7009";

fn install() -> PathBuf {
    let tarball = std::env::var_os("TOPUP_IVR_FREESWITCH_TARBALL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            repo().join("../shared/tools/freeswitch/freeswitch-1.10-debian12-amd64.tar.gz")
        });
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("peers");
    let root = base.join("freeswitch-1.10");
    if root.join("bin/freeswitch").exists() {
        return root;
    }
    assert!(
        tarball.exists(),
        "the prebuilt FreeSWITCH {VERSION} is not at {} (set TOPUP_IVR_FREESWITCH_TARBALL)",
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
    let _ = std::fs::rename(scratch.path().join("freeswitch-1.10"), &root);
    assert!(root.join("bin/freeswitch").exists(), "{}", root.display());
    root
}

// RTP ports: two ranges of 680 from 31400 to 32759 (a lock across test processes for each; a
// third FreeSWITCH waits for one), above the Asterisk
// ranges and below the ephemeral range (32768 up), where the load generator's and sipp's
// sockets are: a port FreeSWITCH picks there may be taken (`Bind Error!` and the call fails).

/// How a test wants its FreeSWITCH.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Where the `trunk` gateway sends the calling service's calls (a sipp UAS).
    pub trunk: Option<SocketAddr>,
    /// A load test: wait until no other test runs, and let none start meanwhile.
    pub alone: bool,
}

pub struct RealFreeSwitch {
    root: PathBuf,
    pub dir: tempfile::TempDir,
    /// The callers' SIP profile (UDP).
    pub sip: SocketAddr,
    /// The event socket.
    pub esl: SocketAddr,
    pub rtp: (u16, u16),
    /// The RTP range's slot, held (across test processes) until dropped.
    _rtp_slot: super::FileLock,
    child: Option<Child>,
    /// Held for the test's length (dropped last).
    _turn: super::Turn,
}

impl RealFreeSwitch {
    pub fn start(opts: Options) -> RealFreeSwitch {
        let turn = if opts.alone {
            super::Turn::alone()
        } else {
            super::Turn::shared()
        };
        let root = install();
        let dir = tempfile::tempdir().unwrap();
        let sip: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let esl: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let (rtp_slot, rtp_lock) = super::FileLock::slot("freeswitch-rtp", 2);
        let base = 31400 + rtp_slot as u16 * 680;
        let rtp = (base, base + 678);
        let trunk = opts
            .trunk
            .unwrap_or_else(|| format!("127.0.0.1:{}", free_udp_port()).parse().unwrap());
        write_config(dir.path(), sip, esl, rtp, trunk);
        let mut fs = RealFreeSwitch {
            root,
            dir,
            sip,
            esl,
            rtp,
            _rtp_slot: rtp_lock,
            child: None,
            _turn: turn,
        };
        fs.boot();
        fs
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn boot(&mut self) {
        let s = self.state();
        for d in [
            "log",
            "db",
            "run",
            "tmp",
            "cache",
            "storage",
            "recordings",
            "sounds",
            "scripts",
            "certs",
            "grammar",
            "htdocs",
        ] {
            std::fs::create_dir_all(s.join(d)).unwrap();
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(s.join("log/stdout.log"))
            .unwrap();
        let arg = |d: &str| s.join(d);
        let child = Command::new(self.root.join("bin/freeswitch"))
            .args(["-nc", "-nf", "-nonat"])
            .arg("-base")
            .arg(&s)
            .arg("-conf")
            .arg(self.dir.path().join("conf"))
            .arg("-log")
            .arg(arg("log"))
            .arg("-db")
            .arg(arg("db"))
            .arg("-run")
            .arg(arg("run"))
            .arg("-mod")
            .arg(self.root.join("lib/freeswitch/mod"))
            .arg("-temp")
            .arg(arg("tmp"))
            .arg("-cache")
            .arg(arg("cache"))
            .arg("-storage")
            .arg(arg("storage"))
            .arg("-recordings")
            .arg(arg("recordings"))
            .arg("-sounds")
            .arg(arg("sounds"))
            .arg("-scripts")
            .arg(arg("scripts"))
            .arg("-certs")
            .arg(arg("certs"))
            .arg("-grammar")
            .arg(arg("grammar"))
            .arg("-htdocs")
            .arg(arg("htdocs"))
            // The shipped event_socket.conf.xml reads the password from the environment.
            .env("FREESWITCH_ESL_PASSWORD", ESL_PASSWORD)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start freeswitch");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self
                .try_api("show calls count")
                .is_some_and(|r| r.contains("total"))
                && self.log().contains("FreeSWITCH Started")
            {
                return;
            }
            assert!(
                self.is_running(),
                "FreeSWITCH exited while starting:\n{}",
                super::tail_lines(&self.log(), 80)
            );
            assert!(
                Instant::now() < deadline,
                "FreeSWITCH did not start:\n{}",
                super::tail_lines(&self.log(), 80)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_api(&self, cmd: &str) -> Option<String> {
        let out = Command::new(self.root.join("bin/fs_cli"))
            .args(["-H", "127.0.0.1", "-P", &self.esl.port().to_string()])
            .args(["-p", ESL_PASSWORD, "-t", "2000", "-x", cmd])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An API command over the event socket (fs_cli); its output.
    pub fn api(&self, cmd: &str) -> String {
        self.try_api(cmd).unwrap_or_else(|| {
            panic!(
                "fs_cli -x '{cmd}' failed:\n{}",
                super::tail_lines(&self.log(), 40)
            )
        })
    }

    /// Channels alive now.
    pub fn channel_count(&self) -> usize {
        // "0 total." (or "N total.")
        self.api("show channels count")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(usize::MAX)
    }

    pub fn wait_no_channels(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.channel_count() != 0 {
            assert!(
                Instant::now() < deadline,
                "channels left in FreeSWITCH:\n{}",
                self.api("show channels")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state().join("log/freeswitch.log")).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops FreeSWITCH. With mod_audio_fork loaded it never finishes a clean shutdown (its
    /// websocket thread is joined without being woken), so it is killed after 2 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn restart(&mut self) {
        self.stop();
        self.boot();
    }

    /// The `[freeswitch]` section for the service: the shipped docker/freeswitch/topup-ivr.toml's
    /// with this FreeSWITCH's event socket and a media port of the test's; `extra` keys after
    /// it win.
    pub fn service_config(&self, extra: &str) -> String {
        let shipped = std::fs::read_to_string(repo().join("docker/freeswitch/topup-ivr.toml"))
            .expect("docker/freeswitch/topup-ivr.toml");
        let mut section = String::new();
        let mut inside = false;
        for line in shipped.lines() {
            if line.starts_with('[') {
                inside = line.trim() == "[freeswitch]";
            }
            if inside {
                section.push_str(line);
                section.push('\n');
            }
        }
        let media = free_tcp_port();
        let swap = |text: String, from: &str, to: &str| {
            assert!(
                text.contains(from),
                "the shipped [freeswitch] lost `{from}`"
            );
            text.replace(from, to)
        };
        let section = swap(
            section,
            "esl = \"127.0.0.1:8021\"",
            &format!("esl = \"{}\"", self.esl),
        );
        let section = swap(
            section,
            "media_listen = \"0.0.0.0:9000\"",
            &format!("media_listen = \"127.0.0.1:{media}\""),
        );
        let section = swap(
            section,
            "media_url = \"ws://127.0.0.1:9000\"",
            &format!("media_url = \"ws://127.0.0.1:{media}\""),
        );
        format!("{section}{extra}")
    }
}

impl Drop for RealFreeSwitch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}",
                super::peer_log_report(
                    "freeswitch.log",
                    &self.log(),
                    &["[WARNING]", "[ERR]", "[CRIT]"],
                    60
                )
            );
        }
        self.stop();
    }
}

fn write_config(dir: &Path, sip: SocketAddr, esl: SocketAddr, rtp: (u16, u16), trunk: SocketAddr) {
    let conf = dir.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let shipped = |name: &str| {
        std::fs::read_to_string(repo().join("docker/freeswitch").join(name))
            .unwrap_or_else(|e| panic!("docker/freeswitch/{name}: {e}"))
    };
    // The shipped files, included as they are but for the event socket's port.
    let esl_conf = shipped("event_socket.conf.xml");
    assert!(esl_conf.contains("value=\"8021\""));
    std::fs::write(
        conf.join("event_socket.conf.xml"),
        esl_conf.replace("value=\"8021\"", &format!("value=\"{}\"", esl.port())),
    )
    .unwrap();
    let include = |file: PathBuf| {
        format!(
            "<X-PRE-PROCESS cmd=\"include\" data=\"{}\"/>",
            file.display()
        )
    };
    let modules: String = shipped("modules.conf.xml.snippet")
        .lines()
        .filter(|l| l.trim_start().starts_with("<load"))
        .collect::<Vec<_>>()
        .join("\n");
    let xml = format!(
        r#"<?xml version="1.0"?>
<document type="freeswitch/xml">
  <X-PRE-PROCESS cmd="set" data="hold_music=tone_stream://%(200,2800,440);loops=-1"/>
  <section name="configuration" description="Various Configuration">
    <configuration name="switch.conf" description="Core Configuration">
      <settings>
        <param name="colorize-console" value="false"/>
        <param name="max-sessions" value="1000"/>
        <param name="sessions-per-second" value="200"/>
        <param name="loglevel" value="info"/>
        <param name="rtp-start-port" value="{rtp_lo}"/>
        <param name="rtp-end-port" value="{rtp_hi}"/>
        <param name="dump-cores" value="no"/>
      </settings>
    </configuration>
    <configuration name="modules.conf" description="Modules">
      <modules>
        <load module="mod_logfile"/>
        <load module="mod_sofia"/>
        <load module="mod_dialplan_xml"/>
        <load module="mod_callcenter"/>
        <load module="mod_tone_stream"/>
        <load module="mod_sndfile"/>
        <load module="mod_native_file"/>
        {modules}
      </modules>
    </configuration>
    <configuration name="logfile.conf" description="File Logging">
      <settings><param name="rotate-on-hup" value="true"/></settings>
      <profiles>
        <profile name="default">
          <settings><param name="rollover" value="0"/><param name="uuid" value="true"/></settings>
          <mappings><map name="all" value="info,notice,warning,err,crit,alert"/></mappings>
        </profile>
      </profiles>
    </configuration>
    {esl_include}
    <configuration name="callcenter.conf" description="CallCenter">
      <settings/>
      <queues>
        <queue name="support@default">
          <param name="strategy" value="longest-idle-agent"/>
          <param name="moh-sound" value="$${{hold_music}}"/>
          <param name="max-wait-time" value="0"/>
          <param name="max-wait-time-with-no-agent" value="0"/>
          <param name="tier-rules-apply" value="false"/>
        </queue>
      </queues>
      <agents/>
      <tiers/>
    </configuration>
    <configuration name="sofia.conf" description="sofia Endpoint">
      <global_settings><param name="log-level" value="0"/></global_settings>
      <profiles>
        <profile name="callers">
          <gateways>
            <gateway name="trunk">
              <param name="proxy" value="{trunk}"/>
              <param name="register" value="false"/>
              <param name="caller-id-in-from" value="true"/>
            </gateway>
          </gateways>
          <settings>
            <param name="sip-ip" value="127.0.0.1"/>
            <param name="rtp-ip" value="127.0.0.1"/>
            <param name="sip-port" value="{sip_port}"/>
            <param name="context" value="public"/>
            <param name="dialplan" value="XML"/>
            <param name="codec-prefs" value="PCMU,PCMA"/>
            <param name="inbound-codec-negotiation" value="generous"/>
            <param name="dtmf-type" value="rfc2833"/>
            <param name="rfc2833-pt" value="101"/>
            <param name="auth-calls" value="false"/>
            <param name="manage-presence" value="false"/>
            <param name="rtp-timer-name" value="soft"/>
            <param name="rtp-timeout-sec" value="300"/>
            <param name="NDLB-force-rport" value="true"/>
          </settings>
        </profile>
      </profiles>
    </configuration>
  </section>
  <section name="dialplan" description="Regex/XML Dialplan">
    <context name="public">
      {dialplan_include}
      <extension name="topup-echo">
        <condition field="destination_number" expression="^{echo}$">
          <action application="set" data="topup_dialled=echo"/>
          <action application="set" data="send_silence_when_idle=-1"/>
          <action application="answer"/>
          <action application="park"/>
        </condition>
      </extension>
      <extension name="topup-echo-bare-park">
        <condition field="destination_number" expression="^{bare}$">
          <action application="set" data="topup_dialled=echo"/>
          <action application="answer"/>
          <action application="park"/>
        </condition>
      </extension>
    </context>
    <context name="default">
      {agents_include}
    </context>
  </section>
</document>
"#,
        rtp_lo = rtp.0,
        rtp_hi = rtp.1,
        sip_port = sip.port(),
        esl_include = include(conf.join("event_socket.conf.xml")),
        dialplan_include = include(repo().join("docker/freeswitch/dialplan.xml")),
        agents_include = include(repo().join("docker/freeswitch/agents.xml")),
        echo = ECHO,
        bare = ECHO_BARE_PARK,
    );
    std::fs::write(conf.join("freeswitch.xml"), xml).unwrap();
}
