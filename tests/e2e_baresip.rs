//! End-to-end with baresip as the caller: it dials the echo line, presses keys (RFC 4733),
//! and records what it hears (sndfile module). The recording must contain the greeting, the
//! keys read back in order and the goodbye, sample for sample as the prompts decode.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use topup_ivr::media::g711::Codec;
use topup_ivr::media::prompts::{LoadOptions, PromptStore};

struct Baresip {
    child: Child,
    ctrl: TcpStream,
    buf: Vec<u8>,
}

impl Baresip {
    fn start(dir: &Path) -> Baresip {
        require("baresip");
        require("sox");
        let sip_port = free_udp_port();
        let ctrl_port = free_tcp_port();
        let rec = dir.join("rec");
        std::fs::create_dir_all(&rec).unwrap();
        // baresip hangs up when its source file ends: give it a minute of quiet tone.
        let src = dir.join("source.wav");
        let ok = Command::new("sox")
            .args(["-n", "-r", "8000", "-c", "1", "-b", "16"])
            .arg(&src)
            .args(["synth", "60", "sine", "300", "vol", "0.02"])
            .status()
            .unwrap();
        assert!(ok.success());
        std::fs::write(
            dir.join("config"),
            format!(
                "poll_method epoll\nsip_listen 127.0.0.1:{sip_port}\nnet_interface 127.0.0.1\n\
audio_player aufile,/dev/null\naudio_source aufile,{}\naudio_alert aufile,/dev/null\n\
audio_srate 8000\naudio_channels 1\nmodule_path /usr/lib/baresip/modules\nmodule g711.so\n\
module aufile.so\nmodule sndfile.so\nmodule account.so\nmodule menu.so\nmodule ctrl_tcp.so\n\
ctrl_tcp_listen 127.0.0.1:{ctrl_port}\nsnd_path {}\n",
                src.display(),
                rec.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.join("accounts"),
            format!("<sip:caller@127.0.0.1:{sip_port}>;regint=0;answermode=manual;audio_codecs=PCMU;ptime=20\n"),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("baresip.log")).unwrap();
        let child = Command::new("baresip")
            .arg("-f")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start baresip");
        let deadline = Instant::now() + Duration::from_secs(10);
        let ctrl = loop {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", ctrl_port)) {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "baresip control port never opened"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        ctrl.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Baresip {
            child,
            ctrl,
            buf: vec![],
        }
    }

    /// Sends a netstring-framed JSON command.
    fn command(&mut self, command: &str, params: &str) {
        let msg =
            serde_json::json!({"command": command, "params": params, "token": command}).to_string();
        write!(self.ctrl, "{}:{},", msg.len(), msg).unwrap();
    }

    /// Waits for an event type; panics after `limit`.
    fn wait_event(&mut self, kind: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let needle = format!("\"type\":\"{kind}\"");
        loop {
            if let Some(pos) = find(&self.buf, needle.as_bytes()) {
                self.buf.drain(..pos + needle.len());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} from baresip: {}",
                String::from_utf8_lossy(&self.buf)
            );
            let mut chunk = [0u8; 4096];
            match self.ctrl.read(&mut chunk) {
                Ok(0) => panic!("baresip closed its control connection"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        }
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What the caller hears for a prompt: its µ-law frames decoded.
fn heard(store: &PromptStore, name: &str) -> Vec<i16> {
    let p = store.get("en", name).unwrap();
    let mut out = vec![0i16; p.frames() * 160];
    for i in 0..p.frames() {
        Codec::Pcmu.decode(p.frame(Codec::Pcmu, i), &mut out[i * 160..(i + 1) * 160]);
    }
    // Trailing frame padding is silence; trim it so the next prompt may follow closely.
    while out.last() == Some(&0) {
        out.pop();
    }
    out
}

/// Relative RMS difference of two equal-length stretches (0 = identical).
fn difference(a: &[i16], b: &[i16]) -> f64 {
    let (mut err, mut pow) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        err += (*x as f64 - *y as f64).powi(2);
        pow += (*y as f64).powi(2);
    }
    (err / pow.max(1.0)).sqrt()
}

/// Finds `prompt` in `rec` at or after `from`; returns where it starts. baresip's µ-law
/// decoder rounds a little differently from ours, so "the same" means under 2 % RMS apart
/// (a different prompt or a misalignment by one sample is far above that).
fn locate(rec: &[i16], prompt: &[i16], from: usize) -> Option<usize> {
    let key_at = prompt.iter().position(|s| s.abs() > 1000)?;
    let key = &prompt[key_at..(key_at + 320).min(prompt.len())];
    let last = rec.len().checked_sub(prompt.len())?;
    (from..=last).find(|&o| {
        difference(&rec[o + key_at..o + key_at + key.len()], key) < 0.02
            && difference(&rec[o..o + prompt.len()], prompt) < 0.02
    })
}

#[test]
fn baresip_hears_the_greeting_its_keys_read_back_and_goodbye() {
    require("baresip");
    let server = Server::start("");
    let dir = tempfile::tempdir().unwrap();
    let mut bs = Baresip::start(dir.path());
    bs.command("dial", &format!("sip:echo@{}", server.sip));
    bs.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    let store = PromptStore::load(&repo().join("prompts"), LoadOptions::default()).unwrap();
    let greeting = store.get("en", "echo-welcome").unwrap().duration_ms();
    // Let the greeting play out, then press keys.
    std::thread::sleep(Duration::from_millis(greeting + 800));
    bs.command("sndcode", "123");
    std::thread::sleep(Duration::from_millis(3500));
    bs.command("sndcode", "**");
    bs.wait_event("CALL_CLOSED", Duration::from_secs(15));
    bs.command("quit", "");
    let _ = bs.child.wait();

    server.wait_idle();
    let calls = server.calls();
    assert_eq!(calls[0]["digits"], "123**");
    assert_eq!(calls[0]["dtmf_methods"], "rfc4733");
    assert_eq!(calls[0]["end_reason"], "service-hangup");

    let wav = std::fs::read_dir(dir.path().join("rec"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .expect("baresip's recording of what it heard");
    let reader = hound::WavReader::open(&wav).unwrap();
    assert_eq!(reader.spec().sample_rate, 8000);
    let rec: Vec<i16> = reader.into_samples::<i16>().map(Result::unwrap).collect();

    let mut at = 0;
    for name in [
        "echo-welcome",
        "digit-1",
        "digit-2",
        "digit-3",
        "star",
        "star",
        "goodbye",
    ] {
        let p = heard(&store, name);
        let found = locate(&rec, &p, at)
            .unwrap_or_else(|| panic!("`{name}` not heard after {:.2} s", at as f64 / 8000.0));
        if name == "echo-welcome" {
            assert!(
                found < 8000,
                "greeting starts {:.2} s into the call",
                found as f64 / 8000.0
            );
        }
        at = found + p.len();
    }
}

#[test]
fn baresip_tops_up_a_number_with_a_card_by_keypad_alone() {
    require("baresip");
    let server = Server::start("");
    let dir = tempfile::tempdir().unwrap();
    let mut bs = Baresip::start(dir.path());
    bs.command("dial", &format!("sip:recharge@{}", server.sip));
    bs.wait_event("CALL_ESTABLISHED", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    // English, a demo card, a demo prepaid number, confirm, 5 dollars, confirm.
    bs.command("sndcode", "111112222333344#12015550150#111");
    bs.wait_event("CALL_CLOSED", Duration::from_secs(90));
    server.wait_idle();
    let out = std::process::Command::new(BIN)
        .args(["accounts", "show", "+12015550150", "--json", "--config"])
        .arg(&server.config)
        .output()
        .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["prepaid"]["balance"], "6.20", "{shown}");
    assert_eq!(server.calls()[0]["end_reason"], "service-hangup");
}
