//! The test SMSC (tests/smsc/smsc.js on node-smpp's server), driven over its JSON lines.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

type Events = Arc<(Mutex<Vec<Value>>, Condvar)>;

pub struct Smsc {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    events: Events,
    pub port: u16,
}

fn script() -> std::path::PathBuf {
    let dir = super::repo().join("tests/smsc");
    assert!(
        dir.join("node_modules/smpp").is_dir(),
        "the test SMSC's packages are missing: run the test command from the README \
         (scripts/test runs `npm ci --prefix tests/smsc`)"
    );
    dir.join("smsc.js")
}

impl Smsc {
    /// Starts an SMSC on `port` (0: any free port) that accepts `topup` / `password`.
    pub fn start(port: u16, password: &str) -> Smsc {
        super::require("node");
        let mut child = Command::new("node")
            .arg(script())
            .args([
                "--port",
                &port.to_string(),
                "--system-id",
                "topup",
                "--password",
                password,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node");
        let stdout = child.stdout.take().unwrap();
        let events: Events = Arc::new((Mutex::new(vec![]), Condvar::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({"event": "raw", "line": line}));
                let (lock, cv) = &*sink;
                lock.lock().unwrap().push(v);
                cv.notify_all();
            }
        });
        let mut smsc = Smsc {
            stdin: child.stdin.take(),
            child: Some(child),
            events,
            port,
        };
        let listening = smsc.wait_for("the SMSC to listen", Duration::from_secs(10), |e| {
            e.iter().any(|v| v["event"] == "listening")
        });
        smsc.port = listening
            .iter()
            .find(|v| v["event"] == "listening")
            .and_then(|v| v["port"].as_u64())
            .unwrap() as u16;
        smsc
    }

    pub fn send(&mut self, cmd: Value) {
        let stdin = self.stdin.as_mut().expect("SMSC running");
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
    }

    pub fn events(&self) -> Vec<Value> {
        self.events.0.lock().unwrap().clone()
    }

    /// Events of one kind.
    pub fn of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|v| v["event"] == kind)
            .collect()
    }

    /// Whole messages to `to`.
    pub fn messages_to(&self, to: &str) -> Vec<Value> {
        self.of("message")
            .into_iter()
            .filter(|v| v["to"] == to)
            .collect()
    }

    /// Waits until `done` holds for the events so far; panics with them after `limit`.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        let (lock, cv) = &*self.events;
        let mut ev = lock.lock().unwrap();
        loop {
            if done(&ev) {
                return ev.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "waited {limit:?} for {what}; the SMSC saw:\n{}",
                    ev.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            ev = cv.wait_timeout(ev, deadline - now).unwrap().0;
        }
    }

    /// Waits for `n` whole messages to `to` and returns them.
    pub fn wait_messages(&self, to: &str, n: usize) -> Vec<Value> {
        self.wait_for(
            &format!("{n} message(s) to {to}"),
            Duration::from_secs(30),
            |e| {
                e.iter()
                    .filter(|v| v["event"] == "message" && v["to"] == to)
                    .count()
                    >= n
            },
        );
        self.messages_to(to)
    }

    /// Sends an MO message and waits for the ESME's answer to it.
    pub fn mo(&mut self, from: &str, text: &str, id: &str) -> Value {
        self.send(serde_json::json!({"cmd": "mo", "from": from, "text": text, "id": id}));
        self.wait_answer(id)
    }

    /// Sends an MO message without an SMSC id (as most SMSCs do) and waits for the answer to
    /// it, matched by `reference` (which goes nowhere else).
    pub fn mo_without_id(&mut self, from: &str, text: &str, reference: &str) -> Value {
        self.send(serde_json::json!({"cmd": "mo", "from": from, "text": text, "ref": reference}));
        self.wait_answer(reference)
    }

    /// Waits for the ESME's answer to the deliver_sm with reference `id` (its last part).
    pub fn wait_answer(&self, id: &str) -> Value {
        let ev = self.wait_for(
            &format!("the answer to MO {id}"),
            Duration::from_secs(30),
            |e| {
                e.iter()
                    .any(|v| v["event"] == "deliver_resp" && v["ref"] == id)
            },
        );
        ev.into_iter()
            .rfind(|v| v["event"] == "deliver_resp" && v["ref"] == id)
            .unwrap()
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.stdin = None;
    }

    /// Waits for the process to end by itself (after `die_after`).
    pub fn wait_exit(&mut self, limit: Duration) {
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if c.try_wait().unwrap().is_some() {
                self.stdin = None;
                return;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("the SMSC did not exit:\n{:?}", self.events());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Smsc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The config lines for an SMSC connection (append to `Server::start`'s extra).
pub fn smsc_config(name: &str, port: u16, password: &str, prefixes: &str) -> String {
    format!(
        "[[sms.smsc]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\nsystem_id = \"topup\"\n\
         password = \"{password}\"\nprefixes = [{prefixes}]\nenquire_link = \"2s\"\nresponse_timeout = \"3s\"\n"
    )
}
