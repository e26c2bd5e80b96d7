//! A FreeSWITCH emulator for the FreeSWITCH adapter's tests, written from the integration spec
//! in tests/specs/freeswitch/README.md (mod_event_socket, mod_commands and the jambonz
//! mod_audio_fork, read from their sources), not from the adapter:
//!
//! - Event socket, inbound mode: `auth/request` first; `auth <password>` answered
//!   `+OK accepted`, or `-ERR invalid` then a disconnect notice and the close; `event
//!   json|plain <names> [CUSTOM <subclasses>]`; `api` answered as `api/response` with
//!   `Content-Length`; unknown commands `-ERR command not found`. Events are framed with
//!   `Content-Length` and `Content-Type: text/event-json` (headers as keys, `_body`) or
//!   `text/event-plain` (values URL-encoded), only those subscribed to.
//! - API: `uuid_audio_fork` (short and `^^|` forms; `-ERR Operation Failed` for an unknown
//!   channel), `uuid_transfer`, `uuid_kill`, `uuid_setvar`, `uuid_getvar`, `uuid_exists`,
//!   `uuid_break`; anything else `-ERR <cmd> Command not found!`.
//! - mod_audio_fork as the websocket client: connects to the URL with sub-protocol
//!   `audio.drachtio.org` (and refuses a server that answers another), sends the metadata as
//!   the first text frame, then the caller's audio as L16 little-endian frames every 20 ms;
//!   with bidirectional streaming, binary frames from the server are played to the caller
//!   (`heard`), `killAudio` empties that buffer (pending marks come back `cleared`), `mark`
//!   comes back `playout` when reached; other JSON types fire `CUSTOM mod_audio_fork::<type>`.
//!   Events `mod_audio_fork::connect` / `::connect_failed`.
//! - Calls: `call` parks a channel (`CHANNEL_PARK`) as the shipped dialplan does (with
//!   `send_silence_when_idle=-1` set first), `call_with` with other variables, `press` sends
//!   `DTMF` events, `hangup` sends `CHANNEL_HANGUP` and `CHANNEL_HANGUP_COMPLETE`.
//! - As measured on FreeSWITCH 1.10.12: a channel parked without `send_silence_when_idle`
//!   (non-zero) writes no frames, so streamed audio is never played and marks never come back;
//!   the variable counts only when it is set before `park` (`uuid_setvar` later changes
//!   nothing), and `uuid_transfer <uuid> set:send_silence_when_idle=-1,park inline` parks the
//!   call again with it (a second `CHANNEL_PARK`). Forks stream at 8 or 16 kHz; what the caller
//!   hears is kept at 8 kHz (FreeSWITCH resamples to the caller's PCMU).
//!
//! Where the emulator and the real FreeSWITCH are compared (`e2e_freeswitch_faults.rs`,
//! "against both"), every difference found is fixed here.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// mod_audio_fork's largest text message (`MAX_RECV_BUF_SIZE`, about 650 KB).
const MAX_TEXT: usize = 650 * 1024;

/// Where `uuid_transfer` sent a channel: (extension, dialplan, context).
pub type Transferred = (String, String, String);

#[derive(Default)]
struct Fork {
    /// Audio streamed to the caller, not yet played (at `rate`).
    buffer: VecDeque<i16>,
    /// The bidirectional rate (8000 or 16000).
    rate: u32,
    /// (samples still before the mark, name)
    marks: Vec<(usize, String)>,
    to_server: Option<mpsc::UnboundedSender<Message>>,
    metadata: String,
    bugname: String,
}

/// How an originated callee behaves.
#[derive(Clone, Copy, Debug)]
pub struct Callee {
    pub busy: bool,
    pub answer_after: Duration,
}

impl Default for Callee {
    fn default() -> Self {
        Callee {
            busy: false,
            answer_after: Duration::from_millis(300),
        }
    }
}

struct Chan {
    /// The channel it is bridged with.
    bridged: Option<String>,
    uuid: String,
    caller: String,
    dest: String,
    vars: HashMap<String, String>,
    fork: Option<Fork>,
    transferred: Option<(String, String, String)>,
    heard: Vec<i16>,
    hangup_cause: Option<String>,
    /// Parked with `send_silence_when_idle` set: FreeSWITCH writes frames, so streamed audio
    /// is played.
    writes: bool,
}

struct Conn {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    json: bool,
    events: HashSet<String>,
    subclasses: HashSet<String>,
}

#[derive(Default)]
struct State {
    password: String,
    conns: Vec<Conn>,
    channels: HashMap<String, Chan>,
    commands: Vec<String>,
    violations: Vec<String>,
    refuse: bool,
    auth_failures: usize,
    next: u64,
    callees: HashMap<String, Callee>,
    /// `type`s of the JSON text frames the server sent on media forks, in order.
    fork_types: Vec<String>,
    /// Inline dialplans are accepted but not run (a FreeSWITCH whose dialplan cannot park the
    /// call again).
    ignore_inline: bool,
}

#[derive(Clone)]
pub struct FreeSwitch {
    pub esl: SocketAddr,
    state: Arc<Mutex<State>>,
    rt: Arc<tokio::runtime::Runtime>,
}

impl FreeSwitch {
    pub fn start(password: &str) -> FreeSwitch {
        let rt = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        );
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let fs = FreeSwitch {
            esl: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(State {
                password: password.into(),
                ..Default::default()
            })),
            rt: rt.clone(),
        };
        let acceptor = fs.clone();
        rt.spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let fs = acceptor.clone();
                tokio::spawn(async move { fs.esl_conn(sock).await });
            }
        });
        let ticker = fs.clone();
        rt.spawn(async move { ticker.playout().await });
        fs
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an authenticated event socket client is subscribed to CHANNEL_PARK.
    pub fn connected(&self) -> bool {
        self.lock()
            .conns
            .iter()
            .any(|c| !c.tx.is_closed() && c.events.contains("CHANNEL_PARK"))
    }

    pub fn wait_connected(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.connected() {
            assert!(
                Instant::now() < deadline,
                "no event socket client subscribed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn auth_failures(&self) -> usize {
        self.lock().auth_failures
    }

    /// The dialplan answered a call to `dest` and parked it, as the shipped dialplan does
    /// (`send_silence_when_idle=-1` set before `park`).
    pub fn call(&self, caller: &str, dest: &str) -> String {
        self.call_with(caller, dest, &[("send_silence_when_idle", "-1")])
    }

    /// As [`FreeSwitch::call`], with (only) these channel variables set by the dialplan.
    pub fn call_with(&self, caller: &str, dest: &str, vars: &[(&str, &str)]) -> String {
        let mut st = self.lock();
        st.next += 1;
        let uuid = format!("6f1c0a2e-0000-4000-8000-{:012x}", st.next);
        st.channels.insert(
            uuid.clone(),
            Chan {
                bridged: None,
                uuid: uuid.clone(),
                caller: caller.into(),
                dest: dest.into(),
                vars: vars
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                fork: None,
                transferred: None,
                heard: vec![],
                hangup_cause: None,
                writes: false,
            },
        );
        park(&mut st, &uuid);
        uuid
    }

    /// Keys from the caller (RFC 2833), one each 250 ms.
    pub fn press(&self, uuid: &str, digits: &str) {
        for d in digits.chars() {
            {
                let mut st = self.lock();
                if !st.channels.contains_key(uuid) {
                    return;
                }
                // DTMF events carry no channel variables.
                let h = vec![
                    ("Event-Name".into(), "DTMF".into()),
                    ("Unique-ID".into(), uuid.into()),
                    ("DTMF-Digit".into(), d.to_string()),
                    ("DTMF-Duration".into(), "1120".into()),
                    ("DTMF-Source".into(), "RTP".into()),
                ];
                emit(&mut st, h, "");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// How calls originated to `number` behave.
    pub fn set_callee(&self, number: &str, callee: Callee) {
        self.lock().callees.insert(number.into(), callee);
    }

    pub fn exists(&self, uuid: &str) -> bool {
        self.lock()
            .channels
            .get(uuid)
            .is_some_and(|c| c.hangup_cause.is_none())
    }

    pub fn hangup(&self, uuid: &str) {
        let mut st = self.lock();
        hangup(&mut st, uuid, "NORMAL_CLEARING");
    }

    /// What the caller heard from the media fork (8 kHz samples).
    pub fn heard(&self, uuid: &str) -> Vec<i16> {
        self.lock()
            .channels
            .get(uuid)
            .map(|c| c.heard.clone())
            .unwrap_or_default()
    }

    pub fn hangup_cause(&self, uuid: &str) -> Option<String> {
        self.lock().channels.get(uuid)?.hangup_cause.clone()
    }

    pub fn transferred(&self, uuid: &str) -> Option<(Transferred, HashMap<String, String>)> {
        let st = self.lock();
        let c = st.channels.get(uuid)?;
        c.transferred.clone().map(|t| (t, c.vars.clone()))
    }

    /// Whether a media fork is still attached.
    pub fn forked(&self, uuid: &str) -> bool {
        self.lock()
            .channels
            .get(uuid)
            .is_some_and(|c| c.fork.is_some())
    }

    pub fn metadata(&self, uuid: &str) -> Option<String> {
        Some(
            self.lock()
                .channels
                .get(uuid)?
                .fork
                .as_ref()?
                .metadata
                .clone(),
        )
    }

    pub fn commands(&self) -> Vec<String> {
        self.lock().commands.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// `type`s of the JSON messages the server sent down media forks, in order.
    pub fn fork_types(&self) -> Vec<String> {
        self.lock().fork_types.clone()
    }

    /// Closes every event socket connection; new ones are closed at once while `refuse`.
    pub fn drop_esl(&self, refuse: bool) {
        let mut st = self.lock();
        st.refuse = refuse;
        // An empty message tells the connection's task to close the socket.
        for c in st.conns.drain(..) {
            let _ = c.tx.send(vec![]);
        }
    }

    /// Accepts `uuid_transfer ... inline` without running it (see `State::ignore_inline`).
    pub fn ignore_inline(&self, on: bool) {
        self.lock().ignore_inline = on;
    }

    pub fn allow_esl(&self) {
        self.lock().refuse = false;
    }

    async fn esl_conn(self, mut sock: tokio::net::TcpStream) {
        if self.lock().refuse {
            return;
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let _ = sock.write_all(b"Content-Type: auth/request\n\n").await;
        let mut authed = false;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            tokio::select! {
                out = rx.recv() => match out {
                    Some(bytes) if !bytes.is_empty() => if sock.write_all(&bytes).await.is_err() { return },
                    _ => return,
                },
                n = sock.read(&mut chunk) => {
                    let n = match n { Ok(0) | Err(_) => return, Ok(n) => n };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                        let cmd = String::from_utf8_lossy(&buf[..end]).trim().to_string();
                        buf.drain(..end + 2);
                        if cmd.is_empty() {
                            continue;
                        }
                        let reply = self.command(&cmd, &mut authed, &tx);
                        let close = reply.is_none();
                        if let Some(r) = reply {
                            if sock.write_all(r.as_bytes()).await.is_err() { return }
                        } else {
                            let _ = sock.write_all(b"Content-Type: command/reply\nReply-Text: -ERR invalid\n\n").await;
                            let _ = sock.write_all(b"Content-Type: text/disconnect-notice\nContent-Length: 67\n\nDisconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n").await;
                        }
                        if close {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// One command; `None` closes the connection after `-ERR invalid`.
    fn command(
        &self,
        cmd: &str,
        authed: &mut bool,
        tx: &mpsc::UnboundedSender<Vec<u8>>,
    ) -> Option<String> {
        let reply = |t: &str| Some(format!("Content-Type: command/reply\nReply-Text: {t}\n\n"));
        let mut st = self.lock();
        let line = cmd.lines().next().unwrap_or("");
        let logged = if line.starts_with("auth ") {
            "auth ********".to_string()
        } else {
            line.to_string()
        };
        st.commands.push(logged);
        if !*authed {
            if let Some(pw) = line.strip_prefix("auth ") {
                if pw == st.password {
                    *authed = true;
                    return reply("+OK accepted");
                }
                st.auth_failures += 1;
                return None;
            }
            st.violations.push(format!("`{line}` before auth"));
            return reply("-ERR command not found");
        }
        let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
        match verb {
            "event" => {
                let mut words = rest.split_whitespace();
                let format = words.next().unwrap_or("");
                if !["plain", "json", "xml"].contains(&format) {
                    return reply("-ERR invalid format");
                }
                let mut events = HashSet::new();
                let mut subclasses = HashSet::new();
                let mut custom = false;
                for w in words {
                    if custom && w.contains("::") {
                        subclasses.insert(w.to_string());
                    } else {
                        custom |= w == "CUSTOM";
                        events.insert(w.to_string());
                    }
                }
                st.conns.push(Conn {
                    tx: tx.clone(),
                    json: format == "json",
                    events,
                    subclasses,
                });
                reply(&format!("+OK event listener enabled {format}"))
            }
            "api" => {
                if rest.starts_with("originate ") {
                    st.violations
                        .push("api originate holds the event socket while it rings".into());
                }
                let body = self.api(&mut st, rest);
                Some(format!(
                    "Content-Type: api/response\nContent-Length: {}\n\n{body}",
                    body.len()
                ))
            }
            "bgapi" => {
                // The job id is ours if the client sent a Job-UUID header.
                let job = cmd
                    .lines()
                    .skip(1)
                    .find_map(|l| l.strip_prefix("Job-UUID: "))
                    .map(str::to_string)
                    .unwrap_or_else(|| {
                        st.next += 1;
                        format!("job-{}", st.next)
                    });
                let fs = self.clone();
                let line = rest.to_string();
                let job2 = job.clone();
                self.rt.spawn(async move {
                    let body = if let Some(args) = line.strip_prefix("originate ") {
                        fs.originate(args).await
                    } else {
                        let mut st = fs.lock();
                        fs.api(&mut st, &line)
                    };
                    let mut st = fs.lock();
                    let (cmd, args) = line.split_once(' ').unwrap_or((&line, ""));
                    let h = vec![
                        ("Event-Name".into(), "BACKGROUND_JOB".into()),
                        ("Job-UUID".into(), job2),
                        ("Job-Command".into(), cmd.to_string()),
                        ("Job-Command-Arg".into(), args.to_string()),
                    ];
                    emit(&mut st, h, &body);
                });
                reply(&format!("+OK Job-UUID: {job}"))
            }
            "exit" => None,
            _ => reply("-ERR command not found"),
        }
    }

    fn api(&self, st: &mut State, line: &str) -> String {
        let (cmd, args) = line.split_once(' ').unwrap_or((line, ""));
        match cmd {
            "uuid_audio_fork" => self.audio_fork(st, args),
            "uuid_transfer" => {
                let mut a: Vec<&str> = args.split_whitespace().collect();
                if a.len() >= 2 && (a[1] == "-bleg" || a[1] == "-both") {
                    a.remove(1);
                }
                let Some(c) = a.first().and_then(|u| st.channels.get_mut(*u)) else {
                    return "-ERR No such channel!\n".into();
                };
                let Some(ext) = a.get(1) else {
                    return "-USAGE: <uuid> [-bleg|-both] <dest-exten> [<dialplan>] [<context>]\n"
                        .into();
                };
                if a.get(2) == Some(&"inline") {
                    // An inline dialplan: `app:args,app:args`; `set` and `park` are emulated.
                    if st.ignore_inline {
                        return "+OK\n".into();
                    }
                    let uuid = a[0].to_string();
                    for app in ext.split(',') {
                        let (name, args) = app.split_once(':').unwrap_or((app, ""));
                        match name {
                            "set" => {
                                if let (Some(c), Some((k, v))) =
                                    (st.channels.get_mut(&uuid), args.split_once('='))
                                {
                                    c.vars.insert(k.into(), v.into());
                                }
                            }
                            "park" => park(st, &uuid),
                            other => st
                                .violations
                                .push(format!("inline application {other} not emulated")),
                        }
                    }
                    return "+OK\n".into();
                }
                c.transferred = Some((
                    ext.to_string(),
                    a.get(2).unwrap_or(&"XML").to_string(),
                    a.get(3).unwrap_or(&"default").to_string(),
                ));
                if c.fork.is_some() {
                    st.violations
                        .push("transferred with the media fork still running".into());
                }
                "+OK\n".into()
            }
            "uuid_kill" => {
                let mut a = args.split_whitespace();
                let uuid = a.next().unwrap_or("");
                if !st.channels.contains_key(uuid) {
                    return "-ERR No such channel!\n".into();
                }
                let cause = a.next().unwrap_or("NORMAL_CLEARING").to_string();
                hangup(st, uuid, &cause);
                "+OK\n".into()
            }
            "uuid_setvar" => {
                // argv[2] is the rest of the line (switch_separate_string with 3 fields).
                let mut a = args.splitn(3, ' ');
                let (uuid, var, val) = (
                    a.next().unwrap_or(""),
                    a.next().unwrap_or(""),
                    a.next().unwrap_or(""),
                );
                let Some(c) = st.channels.get_mut(uuid) else {
                    return "-ERR No such channel!\n".into();
                };
                if var.is_empty() {
                    return "-USAGE: <uuid> <var> [value]\n".into();
                }
                c.vars.insert(var.into(), val.into());
                "+OK\n".into()
            }
            "uuid_getvar" => {
                let mut a = args.split_whitespace();
                let (uuid, var) = (a.next().unwrap_or(""), a.next().unwrap_or(""));
                match st.channels.get(uuid) {
                    None => "-ERR No such channel!\n".into(),
                    Some(c) => c.vars.get(var).cloned().unwrap_or_else(|| "_undef_".into()),
                }
            }
            "uuid_exists" => if st
                .channels
                .get(args.trim())
                .is_some_and(|c| c.hangup_cause.is_none())
            {
                "true"
            } else {
                "false"
            }
            .into(),
            "uuid_break" => "+OK\n".into(),
            "uuid_bridge" => {
                let mut a = args.split_whitespace();
                let (x, y) = (
                    a.next().unwrap_or("").to_string(),
                    a.next().unwrap_or("").to_string(),
                );
                let live = |st: &State, u: &str| {
                    st.channels.get(u).is_some_and(|c| c.hangup_cause.is_none())
                };
                if !live(st, &x) || !live(st, &y) {
                    return "-ERR Invalid uuid\n".into();
                }
                st.channels.get_mut(&x).unwrap().bridged = Some(y.clone());
                st.channels.get_mut(&y).unwrap().bridged = Some(x);
                "+OK\n".into()
            }
            other => format!("-ERR {other} Command not found!\n"),
        }
    }

    /// `originate {vars}<dial string> &park()`: rings, then answers (CHANNEL_ANSWER, then the
    /// park) or fails (hangup with its cause). Returns the job's result.
    async fn originate(&self, args: &str) -> String {
        let (vars, rest) = match args.strip_prefix('{').and_then(|r| r.split_once('}')) {
            Some((v, r)) => (v.to_string(), r.to_string()),
            None => (String::new(), args.to_string()),
        };
        let mut parts = rest.split_whitespace();
        let dial = parts.next().unwrap_or("").to_string();
        let app = parts.next().unwrap_or("").to_string();
        let vars: HashMap<String, String> = vars
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if app != "&park()" {
            self.lock()
                .violations
                .push(format!("originate to {app}, not &park()"));
        }
        let number = dial.rsplit('/').next().unwrap_or("").to_string();
        let uuid = vars
            .get("origination_uuid")
            .cloned()
            .unwrap_or_else(|| "callee".into());
        let timeout = vars
            .get("originate_timeout")
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(60);
        let callee = self
            .lock()
            .callees
            .get(&number)
            .copied()
            .unwrap_or_default();
        self.lock().channels.insert(
            uuid.clone(),
            Chan {
                bridged: None,
                uuid: uuid.clone(),
                caller: vars
                    .get("origination_caller_id_number")
                    .cloned()
                    .unwrap_or_default(),
                dest: number.clone(),
                vars: HashMap::new(),
                fork: None,
                transferred: None,
                heard: vec![],
                hangup_cause: None,
                writes: false,
            },
        );
        tokio::time::sleep(callee.answer_after.min(Duration::from_secs(timeout))).await;
        let mut st = self.lock();
        if st
            .channels
            .get(&uuid)
            .is_none_or(|c| c.hangup_cause.is_some())
        {
            return "-ERR ORIGINATOR_CANCEL\n".into();
        }
        let failure = if callee.busy {
            Some("USER_BUSY")
        } else if callee.answer_after > Duration::from_secs(timeout) {
            Some("NO_ANSWER")
        } else {
            None
        };
        if let Some(cause) = failure {
            hangup(&mut st, &uuid, cause);
            return format!("-ERR {cause}\n");
        }
        let c = &st.channels[&uuid];
        let h = channel_headers(c, "CHANNEL_ANSWER");
        let p = channel_headers(c, "CHANNEL_PARK");
        emit(&mut st, h, "");
        emit(&mut st, p, "");
        format!("+OK {uuid}\n")
    }

    fn audio_fork(&self, st: &mut State, args: &str) -> String {
        // `^^|` switches the separator to `|` (switch_separate_string).
        let argv: Vec<String> = match args.strip_prefix("^^|") {
            Some(rest) => rest.split('|').map(str::to_string).collect(),
            None => args.split(' ').take(10).map(str::to_string).collect(),
        };
        let uuid = argv.first().cloned().unwrap_or_default();
        if st
            .channels
            .get(&uuid)
            .is_none_or(|c| c.hangup_cause.is_some())
        {
            return "-ERR Operation Failed\n".into();
        }
        match argv.get(1).map(String::as_str) {
            Some("start") => {
                let url = argv.get(2).cloned().unwrap_or_default();
                let mix = argv.get(3).map(String::as_str).unwrap_or("");
                let rate = argv.get(4).map(String::as_str).unwrap_or("");
                let scheme_ok = ["ws://", "wss://", "http://", "https://"].iter().any(|s| url.starts_with(s));
                let rate_ok = rate == "8k" || rate == "16k" || rate.parse::<u32>().is_ok_and(|r| r > 0 && r % 8000 == 0);
                if !scheme_ok || !["mono", "mixed", "stereo"].contains(&mix) || !rate_ok {
                    st.violations.push(format!("uuid_audio_fork start with bad arguments: {args}"));
                    return "-ERR Operation Failed\n".into();
                }
                let sample_rate = match rate {
                    "8k" | "8000" => 8000,
                    "16k" | "16000" => 16000,
                    _ => {
                        st.violations.push(format!("the emulator streams 8 or 16 kHz, not {rate}"));
                        8000
                    }
                };
                // The bidirectional form has exactly ten fields.
                let bidir = argv.len() == 10 && argv[7] == "true" && argv[8] == "true";
                let bidir_rate = match argv.get(9).map(String::as_str) {
                    Some("16000") => 16000,
                    Some("8000") | None => 8000,
                    Some(other) => {
                        st.violations.push(format!("bidirectional rate {other} not emulated"));
                        8000
                    }
                };
                let bugname = argv.get(5).cloned().filter(|b| !b.is_empty()).unwrap_or_else(|| "audio_fork".into());
                let metadata = argv.get(6).cloned().unwrap_or_default();
                let fs = self.clone();
                self.rt.spawn(async move { fs.fork(uuid, url, bugname, metadata, bidir, (sample_rate, bidir_rate)).await });
                "+OK Success\n".into()
            }
            Some("stop") => {
                if let Some(c) = st.channels.get_mut(&uuid)
                    && let Some(f) = c.fork.take()
                    && let Some(tx) = f.to_server
                {
                    if let Some(text) = argv.get(3) {
                        let _ = tx.send(Message::Text(text.clone().into()));
                    }
                    let _ = tx.send(Message::Close(None));
                }
                "+OK Success\n".into()
            }
            Some("stop_play") => {
                if let Some(f) = st.channels.get_mut(&uuid).and_then(|c| c.fork.as_mut()) {
                    f.buffer.clear();
                }
                "+OK Success\n".into()
            }
            _ => "-USAGE: <uuid> [start | stop | send_text | pause | resume | graceful-shutdown | stop_play ] [wss-url | path] [mono | mixed | stereo] [8000 | 16000 | 24000 | 32000 | 64000] [bugname] [metadata] [bidirectionalAudio_enabled] [bidirectionalAudio_stream_enabled] [bidirectionalAudio_stream_samplerate]\n".into(),
        }
    }

    /// mod_audio_fork's websocket client for one channel.
    async fn fork(
        self,
        uuid: String,
        url: String,
        bugname: String,
        metadata: String,
        bidir: bool,
        (rate, bidir_rate): (u32, u32),
    ) {
        let mut req = match url.as_str().into_client_request() {
            Ok(r) => r,
            Err(e) => {
                return self.custom(
                    &uuid,
                    "mod_audio_fork::connect_failed",
                    &json!({"reason": e.to_string()}),
                );
            }
        };
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "audio.drachtio.org".parse().unwrap(),
        );
        let ws = match tokio_tungstenite::connect_async(req).await {
            Ok((ws, resp)) => {
                let proto = resp
                    .headers()
                    .get("Sec-WebSocket-Protocol")
                    .and_then(|v| v.to_str().ok());
                if proto.is_some_and(|p| p != "audio.drachtio.org") {
                    self.lock()
                        .violations
                        .push(format!("server chose sub-protocol {proto:?}"));
                    return self.custom(
                        &uuid,
                        "mod_audio_fork::connect_failed",
                        &json!({"reason": "subprotocol"}),
                    );
                }
                if proto.is_none() {
                    self.lock()
                        .violations
                        .push("server did not echo the sub-protocol".into());
                }
                ws
            }
            Err(e) => {
                return self.custom(
                    &uuid,
                    "mod_audio_fork::connect_failed",
                    &json!({"reason": e.to_string()}),
                );
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        {
            let mut st = self.lock();
            let Some(c) = st.channels.get_mut(&uuid) else {
                return;
            };
            c.fork = Some(Fork {
                to_server: Some(tx.clone()),
                metadata: metadata.clone(),
                bugname,
                rate: bidir_rate,
                ..Default::default()
            });
        }
        self.custom(&uuid, "mod_audio_fork::connect", &json!({}));
        let (mut sink, mut stream) = ws.split();
        if !metadata.is_empty() {
            let _ = sink.send(Message::Text(metadata.into())).await;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // The caller's audio: 20 ms of silence, L16 little-endian, mono.
                    let bytes = (rate / 50 * 2) as usize;
                    if sink.send(Message::Binary(vec![0u8; bytes].into())).await.is_err() { break }
                }
                m = rx.recv() => match m {
                    Some(Message::Close(_)) | None => { let _ = sink.send(Message::Close(None)).await; break }
                    Some(m) => if sink.send(m).await.is_err() { break },
                },
                m = stream.next() => match m {
                    Some(Ok(Message::Binary(b))) => {
                        let mut st = self.lock();
                        let Some(f) = st.channels.get_mut(&uuid).and_then(|c| c.fork.as_mut()) else { break };
                        if !bidir {
                            continue;
                        }
                        // Odd trailing bytes are kept by the module; the adapter never sends any.
                        f.buffer.extend(b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])));
                    }
                    Some(Ok(Message::Text(t))) => self.fork_text(&uuid, t.as_str()),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        let mut st = self.lock();
                        if let Some(c) = st.channels.get_mut(&uuid) {
                            c.fork = None;
                        }
                        break;
                    }
                    _ => {}
                },
            }
        }
    }

    fn fork_text(&self, uuid: &str, text: &str) {
        if text.len() > MAX_TEXT {
            self.lock()
                .violations
                .push("text message over MAX_RECV_BUF_SIZE dropped".into());
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            self.custom(uuid, "mod_audio_fork::json", &Value::String(text.into()));
            return;
        };
        let ty = v["type"].as_str().unwrap_or("").to_string();
        let mut st = self.lock();
        st.fork_types.push(ty.clone());
        let Some(f) = st.channels.get_mut(uuid).and_then(|c| c.fork.as_mut()) else {
            return;
        };
        match ty.as_str() {
            "killAudio" => {
                f.buffer.clear();
                let tx = f.to_server.clone();
                for (_, name) in f.marks.drain(..) {
                    if let Some(tx) = &tx {
                        let _ = tx.send(Message::Text(
                            json!({"type": "mark", "data": {"name": name, "event": "cleared"}})
                                .to_string()
                                .into(),
                        ));
                    }
                }
                drop(st);
                self.custom(uuid, "mod_audio_fork::kill_audio", &json!({}));
            }
            "mark" => {
                let name = v["data"]["name"].as_str().unwrap_or("").to_string();
                if f.marks.len() < 30 {
                    let at = f.buffer.len();
                    f.marks.push((at, name));
                }
            }
            "clearMarks" => f.marks.clear(),
            "playAudio" | "transcription" | "transfer" | "disconnect" | "error" => {
                drop(st);
                let sub = if ty == "playAudio" {
                    "play_audio".to_string()
                } else {
                    ty.clone()
                };
                self.custom(uuid, &format!("mod_audio_fork::{sub}"), &v["data"]);
            }
            _ => {
                drop(st);
                self.custom(uuid, "mod_audio_fork::json", &v);
            }
        }
    }

    fn custom(&self, uuid: &str, subclass: &str, body: &Value) {
        let mut st = self.lock();
        let h = vec![
            ("Event-Name".into(), "CUSTOM".into()),
            ("Event-Subclass".into(), subclass.into()),
            ("Unique-ID".into(), uuid.into()),
        ];
        emit(&mut st, h, &body.to_string());
    }

    /// Every 20 ms each fork plays 20 ms of streamed audio to its caller, into the frame
    /// FreeSWITCH writes: a channel that writes none (parked without
    /// `send_silence_when_idle`) plays nothing, and its marks wait for ever.
    async fn playout(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            let mut st = self.lock();
            for c in st.channels.values_mut() {
                if !c.writes {
                    continue;
                }
                let Some(f) = c.fork.as_mut() else { continue };
                let n = f.buffer.len().min((f.rate / 50) as usize);
                if n == 0 {
                    continue;
                }
                let played: Vec<i16> = f.buffer.drain(..n).collect();
                if f.rate == 16000 {
                    // Resampled to the caller's 8 kHz: the mean of each pair.
                    c.heard.extend(
                        played
                            .chunks_exact(2)
                            .map(|p| ((i32::from(p[0]) + i32::from(p[1])) / 2) as i16),
                    );
                } else {
                    c.heard.extend(played);
                }
                let mut reached = vec![];
                for m in f.marks.iter_mut() {
                    m.0 = m.0.saturating_sub(n);
                }
                while f.marks.first().is_some_and(|m| m.0 == 0) {
                    reached.push(f.marks.remove(0).1);
                }
                if let Some(tx) = &f.to_server {
                    for name in reached {
                        let _ = tx.send(Message::Text(
                            json!({"type": "mark", "data": {"name": name, "event": "playout"}})
                                .to_string()
                                .into(),
                        ));
                    }
                }
            }
        }
    }
}

fn channel_headers(c: &Chan, name: &str) -> Vec<(String, String)> {
    let mut h = vec![
        ("Event-Name".into(), name.into()),
        (
            "Core-UUID".into(),
            "2a9a1e5c-0000-4000-8000-000000000001".into(),
        ),
        ("Unique-ID".into(), c.uuid.clone()),
        (
            "Channel-Name".into(),
            format!("sofia/internal/{}@10.0.0.2", c.caller),
        ),
        ("Channel-State".into(), "CS_EXECUTE".into()),
        ("Answer-State".into(), "answered".into()),
        ("Caller-Caller-ID-Number".into(), c.caller.clone()),
        ("Caller-Destination-Number".into(), c.dest.clone()),
        ("Caller-Context".into(), "public".into()),
        (
            "variable_sip_call_id".into(),
            format!("{}@10.0.0.2", &c.uuid[..8]),
        ),
        ("variable_read_codec".into(), "PCMU".into()),
    ];
    for (k, v) in &c.vars {
        h.push((format!("variable_{k}"), v.clone()));
    }
    h
}

/// The channel parks (`CHANNEL_PARK`): whether it writes frames from now on is decided by its
/// `send_silence_when_idle` at this moment.
fn park(st: &mut State, uuid: &str) {
    let Some(c) = st.channels.get_mut(uuid) else {
        return;
    };
    c.writes = c
        .vars
        .get("send_silence_when_idle")
        .and_then(|v| v.trim().parse::<i64>().ok())
        .is_some_and(|v| v != 0);
    let h = channel_headers(c, "CHANNEL_PARK");
    emit(st, h, "");
}

fn hangup(st: &mut State, uuid: &str, cause: &str) {
    let Some(c) = st.channels.get_mut(uuid) else {
        return;
    };
    if c.hangup_cause.is_some() {
        return;
    }
    c.hangup_cause = Some(cause.into());
    if let Some(f) = c.fork.take()
        && let Some(tx) = f.to_server
    {
        let _ = tx.send(Message::Close(None));
    }
    let peer = c.bridged.take();
    let c = &st.channels[uuid];
    let mut h = channel_headers(c, "CHANNEL_HANGUP");
    h.push(("Hangup-Cause".into(), cause.into()));
    let mut h2 = channel_headers(c, "CHANNEL_HANGUP_COMPLETE");
    h2.push(("Hangup-Cause".into(), cause.into()));
    emit(st, h, "");
    emit(st, h2, "");
    // The other side of a bridge parks if asked to (park_after_bridge), else hangs up.
    if let Some(p) = peer
        && let Some(other) = st.channels.get_mut(&p)
    {
        other.bridged = None;
        if other.vars.get("park_after_bridge").map(String::as_str) == Some("true") {
            park(st, &p);
        } else {
            hangup(st, &p, "NORMAL_CLEARING");
        }
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends an event to every connection subscribed to it, in that connection's format.
fn emit(st: &mut State, headers: Vec<(String, String)>, body: &str) {
    let name = headers[0].1.clone();
    let subclass = headers
        .iter()
        .find(|(k, _)| k == "Event-Subclass")
        .map(|(_, v)| v.clone());
    st.conns.retain(|c| !c.tx.is_closed());
    for c in &st.conns {
        let wanted = c.events.contains("ALL")
            || match &subclass {
                Some(s) => {
                    c.events.contains("CUSTOM")
                        && (c.subclasses.is_empty() || c.subclasses.contains(s))
                }
                None => c.events.contains(&name),
            };
        if !wanted {
            continue;
        }
        let payload = if c.json {
            let mut m = serde_json::Map::new();
            for (k, v) in &headers {
                m.insert(k.clone(), Value::String(v.clone()));
            }
            if !body.is_empty() {
                m.insert(
                    "Content-Length".into(),
                    Value::String(body.len().to_string()),
                );
                m.insert("_body".into(), Value::String(body.into()));
            }
            Value::Object(m).to_string()
        } else {
            let mut s: String = headers
                .iter()
                .map(|(k, v)| format!("{k}: {}\n", url_encode(v)))
                .collect();
            if !body.is_empty() {
                s.push_str(&format!("Content-Length: {}\n\n{body}", body.len()));
            } else {
                s.push('\n');
            }
            s
        };
        let ct = if c.json {
            "text/event-json"
        } else {
            "text/event-plain"
        };
        let frame = format!(
            "Content-Length: {}\nContent-Type: {ct}\n\n{payload}",
            payload.len()
        );
        let _ = c.tx.send(frame.into_bytes());
    }
}
