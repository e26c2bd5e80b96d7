//! An Asterisk emulator for the ARI adapter's tests, written from the published references in
//! tests/specs/asterisk-ari/ (the ARI swagger of Asterisk 23.4.1 and our chan_websocket
//! summary), not from the adapter:
//!
//! - REST: only the paths, methods and parameters of the swagger files are served. An unknown
//!   path gets 404 `{"message":"Resource not found"}`, a known path with another method 405,
//!   a missing required parameter or a value outside `allowableValues` 400. Every request is
//!   logged with the swagger operation it matched; parameters the swagger does not list are
//!   recorded as violations (Asterisk itself ignores them, which would hide a typo).
//! - Events: JSON on `/ari/events?app=` (Basic auth or `api_key`), every event checked
//!   against the swagger models (required fields and types) before it is sent.
//! - chan_websocket (`/media/<connection id>`): 404 for an unknown id, 409 for a second
//!   connection, sub-protocol `media` echoed, `MEDIA_START` first, binary frames cut into
//!   `optimal_frame_size` pieces (a trailing partial piece dropped), a 1000-frame queue with
//!   `MEDIA_XOFF` at 900 and `MEDIA_XON` below 800, one frame played per 20 ms, text frames
//!   over 128 bytes ignored, `FLUSH_MEDIA`, `MARK_MEDIA`, `GET_STATUS`, `HANGUP`, `ANSWER`,
//!   `DTMF_END` for keys reaching the channel from its bridge.
//! - externalMedia channels are created `Down` and enter the application (`Up`,
//!   `StasisStart`) asynchronously, a random 0-40 ms after they are up: an RTP channel at once,
//!   a chan_websocket one once its connection is in. Until then a bridge refuses them with 422
//!   "Channel not in Stasis application" (Asterisk 23.4.1 accepts them a little earlier, once
//!   the channel's Stasis control exists, a moment no client can see; the adapter waits for
//!   the StasisStart).
//! - What crashes Asterisk 23.4.1 kills the emulator: an invalid `f(...)` in
//!   `transport_data`, and a chan_websocket externalMedia with the id of a channel that exists
//!   (an RTP one answers 500). The crashing request gets no answer at all.
//!
//! Where the emulator and the real Asterisk are compared (`e2e_asterisk_faults.rs`, "against
//! both"), every difference found is fixed here.
//!
//! Calls are placed by the test (`call`), keys pressed (`press`), and what the caller heard is
//! the list of frames the bridge delivered to them (`heard`).

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, Query, Request};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const SPEC_DIR: &str = "tests/specs/asterisk-ari/api-docs";
/// chan_websocket's limits (chan_websocket.c, 23.4.1).
pub const QUEUE_MAX: usize = 1000;
pub const XOFF_LEVEL: usize = 900;
pub const XON_LEVEL: usize = 800;
pub const MAX_TEXT: usize = 128;

/// One swagger operation.
#[derive(Clone, Debug)]
struct Op {
    method: String,
    path: Vec<String>,
    nickname: String,
    params: Vec<Param>,
}

#[derive(Clone, Debug)]
struct Param {
    name: String,
    kind: String,
    required: bool,
    data_type: String,
    allowed: Option<Vec<String>>,
}

/// The swagger files: operations and models.
pub struct Swagger {
    ops: Vec<Op>,
    models: HashMap<String, Value>,
    /// Model name → the model whose `subTypes` lists it.
    parents: HashMap<String, String>,
}

impl Swagger {
    pub fn load() -> Swagger {
        let dir = super::repo().join(SPEC_DIR);
        let mut ops = vec![];
        let mut models = HashMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            for api in doc["apis"].as_array().unwrap() {
                let segs: Vec<String> = api["path"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches('/')
                    .split('/')
                    .map(str::to_string)
                    .collect();
                for op in api["operations"].as_array().unwrap() {
                    let params = op["parameters"]
                        .as_array()
                        .map(|ps| {
                            ps.iter()
                                .map(|p| Param {
                                    name: p["name"].as_str().unwrap().into(),
                                    kind: p["paramType"].as_str().unwrap().into(),
                                    required: p["required"].as_bool().unwrap_or(false),
                                    data_type: p["dataType"].as_str().unwrap_or("").into(),
                                    allowed: p["allowableValues"]["values"].as_array().map(|v| {
                                        v.iter().map(|x| x.as_str().unwrap().to_string()).collect()
                                    }),
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    ops.push(Op {
                        method: op["httpMethod"].as_str().unwrap().into(),
                        path: segs.clone(),
                        nickname: op["nickname"].as_str().unwrap().into(),
                        params,
                    });
                }
            }
            if let Some(m) = doc["models"].as_object() {
                for (k, v) in m {
                    models.insert(k.clone(), v.clone());
                }
            }
        }
        let mut parents = HashMap::new();
        for (name, m) in &models {
            if let Some(subs) = m["subTypes"].as_array() {
                for s in subs {
                    parents.insert(s.as_str().unwrap().to_string(), name.clone());
                }
            }
        }
        Swagger {
            ops,
            models,
            parents,
        }
    }

    /// The operation for a request, or the status Asterisk answers when there is none.
    fn find(&self, method: &str, path: &[&str]) -> Result<&Op, (u16, &'static str)> {
        let matching: Vec<&Op> = self
            .ops
            .iter()
            .filter(|op| {
                op.path.len() == path.len()
                    && op
                        .path
                        .iter()
                        .zip(path)
                        .all(|(t, s)| t.starts_with('{') || t == s)
            })
            .collect();
        if matching.is_empty() {
            return Err((404, "Resource not found"));
        }
        // A literal segment beats a template (`/channels/externalMedia` vs `/channels/{id}`).
        let literal = |op: &&Op| op.path.iter().filter(|t| !t.starts_with('{')).count();
        matching
            .into_iter()
            .filter(|op| op.method == method)
            .max_by_key(literal)
            .ok_or((405, "Invalid method"))
    }

    /// Checks an event or model value against the swagger model `name` (with the properties
    /// of the models it is a sub-type of); returns what is wrong.
    pub fn check(&self, name: &str, v: &Value) -> Vec<String> {
        let mut errors = vec![];
        let Some(obj) = v.as_object() else {
            return vec![format!("{name}: not an object")];
        };
        let mut props: HashMap<String, Value> = HashMap::new();
        let mut cur = Some(name.to_string());
        while let Some(n) = cur {
            let Some(m) = self.models.get(&n) else {
                errors.push(format!("no model {n}"));
                break;
            };
            for (k, p) in m["properties"].as_object().unwrap() {
                props.insert(k.clone(), p.clone());
            }
            cur = self.parents.get(&n).cloned();
        }
        for (k, p) in &props {
            let ty = p["type"].as_str().unwrap_or("");
            match obj.get(k) {
                None if p["required"].as_bool().unwrap_or(false) => {
                    errors.push(format!("{name}.{k}: required, missing"))
                }
                None => {}
                Some(val) => errors.extend(self.check_type(&format!("{name}.{k}"), ty, val)),
            }
        }
        for k in obj.keys() {
            if !props.contains_key(k) {
                errors.push(format!("{name}.{k}: not in the model"));
            }
        }
        errors
    }

    fn check_type(&self, at: &str, ty: &str, v: &Value) -> Vec<String> {
        let ok = match ty {
            "string" | "Date" => v.is_string(),
            "int" | "long" => v.is_i64() || v.is_u64(),
            "double" => v.is_number(),
            "boolean" => v.is_boolean(),
            "object" => v.is_object(),
            t if t.starts_with("List[") => {
                let inner = &t[5..t.len() - 1];
                return match v.as_array() {
                    Some(items) => items
                        .iter()
                        .flat_map(|i| self.check_type(at, inner, i))
                        .collect(),
                    None => vec![format!("{at}: not a list")],
                };
            }
            model if self.models.contains_key(model) => return self.check(model, v),
            _ => true,
        };
        if ok {
            vec![]
        } else {
            vec![format!("{at}: not a {ty}")]
        }
    }
}

/// One REST request as the emulator saw it.
#[derive(Clone, Debug)]
pub struct Request1 {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub status: u16,
    /// The swagger operation it matched.
    pub operation: Option<String>,
}

/// Where a channel went on in the dialplan: (context, extension, priority).
pub type Continued = (String, String, String);

#[derive(Debug)]
enum Kind {
    Caller,
    /// chan_websocket, server mode (`INCOMING`).
    Ws {
        conn_id: String,
        connected: bool,
        queue: VecDeque<Vec<u8>>,
        xoff: bool,
        to_app: Option<mpsc::UnboundedSender<Message>>,
        marks: Vec<(usize, String)>,
    },
    /// externalMedia RTP (UnicastRTP): plays what arrives at `socket`, sends the caller's
    /// audio to `remote`.
    Rtp {
        socket: Arc<tokio::net::UdpSocket>,
        remote: SocketAddr,
        seq: u16,
    },
}

#[derive(Debug)]
struct Chan {
    id: String,
    name: String,
    state: &'static str,
    caller: String,
    exten: String,
    context: String,
    app: Option<String>,
    vars: HashMap<String, String>,
    kind: Kind,
    bridge: Option<String>,
    /// Frames the caller heard from the bridge.
    heard: Vec<Vec<u8>>,
    continued: Option<(String, String, String)>,
    /// In the application (StasisStart sent, StasisEnd not yet).
    stasis: bool,
}

/// How an originated callee behaves.
#[derive(Clone, Copy, Debug)]
pub struct Callee {
    pub busy: bool,
    pub answer_after: Duration,
    /// Hangs up this long after answering (never when `None`).
    pub hangup_after: Option<Duration>,
}

impl Default for Callee {
    fn default() -> Self {
        Callee {
            busy: false,
            answer_after: Duration::from_millis(300),
            hangup_after: None,
        }
    }
}

#[derive(Default)]
struct State {
    apps: HashMap<String, Vec<mpsc::UnboundedSender<Message>>>,
    channels: HashMap<String, Chan>,
    bridges: HashMap<String, Vec<String>>,
    requests: Vec<Request1>,
    violations: Vec<String>,
    /// Channels destroyed (what their callers heard stays readable).
    destroyed: HashMap<String, Chan>,
    next: u64,
    crashed: bool,
    /// Refuse events websockets (to test reconnecting).
    refuse_events: bool,
    /// Originated calls by dialled number.
    callees: HashMap<String, Callee>,
    /// chan_websocket commands received, in order.
    media_commands: Vec<String>,
    /// How long a new externalMedia channel takes to enter the application once up: random
    /// 0-40 ms when `None`; never when `Some(None)`.
    entry_delay: Option<Option<Duration>>,
}

#[derive(Clone)]
pub struct Asterisk {
    pub addr: SocketAddr,
    user: String,
    pass: String,
    state: Arc<Mutex<State>>,
    swagger: Arc<Swagger>,
    rt: Arc<tokio::runtime::Runtime>,
}

fn now_ts() -> String {
    let t = time::OffsetDateTime::now_utc();
    t.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]+0000"
    ))
    .unwrap()
}

impl Asterisk {
    pub fn start(user: &str, pass: &str) -> Asterisk {
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
        let addr = listener.local_addr().unwrap();
        let ast = Asterisk {
            addr,
            user: user.into(),
            pass: pass.into(),
            state: Arc::default(),
            swagger: Arc::new(Swagger::load()),
            rt: rt.clone(),
        };
        let app = axum::Router::new()
            .route("/ari/events", get(events_ws))
            .route("/media/{id}", get(media_ws))
            .fallback(rest)
            .with_state(ast.clone());
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let ticker = ast.clone();
        rt.spawn(async move { ticker.playout().await });
        ast
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an application has an events connection.
    pub fn app_connected(&self, app: &str) -> bool {
        self.lock().apps.get(app).is_some_and(|v| !v.is_empty())
    }

    pub fn wait_app(&self, app: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self.app_connected(app) {
            assert!(
                Instant::now() < deadline,
                "application {app} never connected"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A caller on PJSIP dials `exten`, and the dialplan runs `Stasis(app)`: the channel
    /// enters the application (StasisStart). Returns the channel id.
    pub fn call(&self, app: &str, caller: &str, exten: &str) -> String {
        self.call_with_args(app, caller, exten, &[])
    }

    /// As [`Asterisk::call`] with `Stasis(app,args...)`.
    pub fn call_with_args(&self, app: &str, caller: &str, exten: &str, args: &[&str]) -> String {
        let mut st = self.lock();
        st.next += 1;
        let id = format!("1795297{:03}.{}", st.next, st.next);
        let name = format!("PJSIP/caller-{:08x}", st.next);
        st.channels.insert(
            id.clone(),
            Chan {
                id: id.clone(),
                name,
                state: "Ring",
                caller: caller.into(),
                exten: exten.into(),
                context: "from-callers".into(),
                app: Some(app.into()),
                vars: HashMap::new(),
                kind: Kind::Caller,
                bridge: None,
                heard: vec![],
                continued: None,
                stasis: true,
            },
        );
        let ev = json!({"type": "StasisStart", "args": args, "channel": channel_json(&st.channels[&id])});
        self.emit(&mut st, app, ev);
        id
    }

    /// The caller presses keys: `ChannelDtmfReceived` on the caller's channel and, as the
    /// key reaches the WebSocket channel bridged with it, `DTMF_END` on its media connection
    /// (both at the same moment, as measured on 23.4.1).
    pub fn press(&self, channel: &str, digits: &str) {
        for d in digits.chars() {
            {
                let mut st = self.lock();
                let Some(ch) = st.channels.get(channel) else {
                    return;
                };
                let app = ch.app.clone();
                let cj = channel_json(ch);
                let bridge = ch.bridge.clone();
                if let Some(app) = app {
                    let ev = json!({"type": "ChannelDtmfReceived", "digit": d.to_string(), "duration_ms": 100, "channel": cj});
                    self.emit(&mut st, &app, ev);
                }
                let peers: Vec<String> = bridge
                    .and_then(|b| st.bridges.get(&b).cloned())
                    .unwrap_or_default();
                for p in peers {
                    if let Some(Chan {
                        id,
                        kind:
                            Kind::Ws {
                                to_app: Some(tx), ..
                            },
                        ..
                    }) = st.channels.get(&p)
                    {
                        let _ = tx.send(Message::Text(
                            json!({"event": "DTMF_END", "channel_id": id, "digit": d.to_string()})
                                .to_string()
                                .into(),
                        ));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// How calls originated to `number` behave.
    pub fn set_callee(&self, number: &str, callee: Callee) {
        self.lock().callees.insert(number.into(), callee);
    }

    /// The caller hangs up.
    pub fn hangup_caller(&self, channel: &str) {
        let mut st = self.lock();
        self.destroy(&mut st, channel, 16, "Normal Clearing");
    }

    /// Frames played to the caller so far.
    pub fn heard(&self, channel: &str) -> Vec<Vec<u8>> {
        let st = self.lock();
        st.channels
            .get(channel)
            .or_else(|| st.destroyed.get(channel))
            .map(|c| c.heard.clone())
            .unwrap_or_default()
    }

    /// Where the channel went on in the dialplan (`continue`), and its variables.
    pub fn continued(&self, channel: &str) -> Option<(Continued, HashMap<String, String>)> {
        let st = self.lock();
        let c = st.channels.get(channel)?;
        c.continued.clone().map(|x| (x, c.vars.clone()))
    }

    pub fn exists(&self, channel: &str) -> bool {
        self.lock().channels.contains_key(channel)
    }

    /// Channels and bridges still alive (a finished call must leave none).
    pub fn leftovers(&self) -> (Vec<String>, Vec<String>) {
        let st = self.lock();
        let chans = st
            .channels
            .values()
            .filter(|c| c.continued.is_none())
            .map(|c| c.name.clone())
            .collect();
        (chans, st.bridges.keys().cloned().collect())
    }

    pub fn requests(&self) -> Vec<Request1> {
        self.lock().requests.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// chan_websocket commands the application sent, in order.
    pub fn media_commands(&self) -> Vec<String> {
        self.lock().media_commands.clone()
    }

    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Closes every events websocket (and refuses new ones while `refuse` is set).
    pub fn drop_events(&self, refuse: bool) {
        let mut st = self.lock();
        st.refuse_events = refuse;
        for (_, conns) in st.apps.iter_mut() {
            for c in conns.drain(..) {
                let _ = c.send(Message::Close(None));
            }
        }
    }

    pub fn allow_events(&self) {
        self.lock().refuse_events = false;
    }

    fn emit(&self, st: &mut State, app: &str, mut ev: Value) {
        ev["application"] = json!(app);
        ev["timestamp"] = json!(now_ts());
        ev["asterisk_id"] = json!("02:42:ac:11:00:02");
        let ty = ev["type"].as_str().unwrap().to_string();
        let errors = self.swagger.check(&ty, &ev);
        assert!(
            errors.is_empty(),
            "emulator event not per swagger: {errors:?}"
        );
        if let Some(conns) = st.apps.get_mut(app) {
            let text = ev.to_string();
            conns.retain(|c| c.send(Message::Text(text.clone().into())).is_ok());
        }
    }

    /// externalMedia RTP: a UnicastRTP channel that receives on a port of its own and sends to
    /// `external_host`; it is up at once and enters the application.
    fn external_rtp(&self, st: &mut State, q: &HashMap<String, String>) -> Response {
        let Some(remote) = q
            .get("external_host")
            .and_then(|h| h.parse::<SocketAddr>().ok())
        else {
            return message(400, "external_host is required");
        };
        let socket = Arc::new(
            std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| {
                    s.set_nonblocking(true)?;
                    let _guard = self.rt.enter();
                    tokio::net::UdpSocket::from_std(s)
                })
                .unwrap(),
        );
        let local = socket.local_addr().unwrap();
        let id = q.get("channelId").cloned().unwrap_or_else(|| {
            st.next += 1;
            format!("1795298{:03}.{}", st.next, st.next)
        });
        if st.channels.contains_key(&id) {
            return message(409, "Channel with the same id already exists");
        }
        st.next += 1;
        let app = q["app"].clone();
        let ch = Chan {
            id: id.clone(),
            name: format!("UnicastRTP/{local}-0x{:012x}", 0x5620cd1e2c70u64 + st.next),
            state: "Down",
            caller: String::new(),
            exten: "s".into(),
            context: "default".into(),
            app: Some(app.clone()),
            vars: HashMap::new(),
            kind: Kind::Rtp {
                socket: socket.clone(),
                remote,
                seq: 0,
            },
            bridge: None,
            heard: vec![],
            continued: None,
            stasis: false,
        };
        let v = channel_json(&ch);
        st.channels.insert(id.clone(), ch);
        self.enter_later(st, &id);
        // What arrives is played into the bridge as it comes (no jitter buffer).
        let ast = self.clone();
        self.rt.spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, _)) = socket.recv_from(&mut buf).await {
                if n <= 12 {
                    continue;
                }
                let mut st = ast.lock();
                let Some(b) = st.channels.get(&id).and_then(|c| c.bridge.clone()) else {
                    if !st.channels.contains_key(&id) {
                        return;
                    }
                    continue;
                };
                let members = st.bridges.get(&b).cloned().unwrap_or_default();
                for m in members {
                    if m != id
                        && let Some(c) = st.channels.get_mut(&m)
                    {
                        c.heard.push(buf[12..n].to_vec());
                    }
                }
            }
        });
        axum::Json(v).into_response()
    }

    /// An externalMedia channel that is up enters its application a random 0-40 ms later, on
    /// another task (Asterisk answers it and runs Stasis on a thread of its own).
    fn enter_later(&self, st: &State, id: &str) {
        let ast = self.clone();
        let id = id.to_string();
        let delay = match st.entry_delay {
            None => Duration::from_millis(rand::random_range(0..=40)),
            Some(Some(d)) => d,
            Some(None) => return,
        };
        self.rt.spawn(async move {
            tokio::time::sleep(delay).await;
            let mut st = ast.lock();
            let Some(ch) = st.channels.get_mut(&id) else {
                return;
            };
            ch.state = "Up";
            ch.stasis = true;
            let app = ch.app.clone().unwrap_or_default();
            let cj = channel_json(ch);
            ast.emit(
                &mut st,
                &app,
                json!({"type": "StasisStart", "args": [], "channel": cj}),
            );
        });
    }

    /// Makes new externalMedia channels enter the application `delay` after they are up
    /// (`None`: never), instead of the usual random 0-40 ms.
    pub fn set_entry_delay(&self, delay: Option<Duration>) {
        self.lock().entry_delay = Some(delay);
    }

    /// Hangs a channel up: it leaves its bridge and application and is destroyed.
    fn destroy(&self, st: &mut State, id: &str, cause: i64, cause_txt: &str) {
        let Some(mut ch) = st.channels.remove(id) else {
            return;
        };
        if let Some(b) = ch.bridge.take()
            && let Some(members) = st.bridges.get_mut(&b)
        {
            members.retain(|m| m != id);
        }
        let cj = channel_json(&ch);
        if let Some(app) = ch.app.clone() {
            self.emit(
                st,
                &app,
                json!({"type": "ChannelHangupRequest", "cause": cause, "channel": cj.clone()}),
            );
            self.emit(
                st,
                &app,
                json!({"type": "StasisEnd", "channel": cj.clone()}),
            );
            self.emit(st, &app, json!({"type": "ChannelDestroyed", "cause": cause, "cause_txt": cause_txt, "channel": cj}));
        }
        if let Kind::Ws {
            to_app: Some(tx), ..
        } = &ch.kind
        {
            // Asterisk closes the media websocket when the channel hangs up (code 1000).
            let _ = tx.send(Message::Close(None));
        }
        st.destroyed.insert(id.to_string(), ch);
    }

    /// One tick per 20 ms: every connected WebSocket channel plays one queued frame into its
    /// bridge (the caller hears it) and gets one frame of the caller's audio.
    async fn playout(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            let mut st = self.lock();
            let ids: Vec<String> = st.channels.keys().cloned().collect();
            for id in &ids {
                if let Some(Chan {
                    kind:
                        Kind::Rtp {
                            socket,
                            remote,
                            seq,
                        },
                    bridge: Some(_),
                    ..
                }) = st.channels.get_mut(id)
                {
                    *seq = seq.wrapping_add(1);
                    let mut pkt = vec![0x80, 0x00];
                    pkt.extend_from_slice(&seq.to_be_bytes());
                    pkt.extend_from_slice(&(u32::from(*seq) * 160).to_be_bytes());
                    pkt.extend_from_slice(&0x5eed_0001u32.to_be_bytes());
                    pkt.extend_from_slice(&[0xFF; 160]);
                    let _ = socket.try_send_to(&pkt, *remote);
                }
            }
            for id in ids {
                let (frame, bridge, events) = {
                    let Some(ch) = st.channels.get_mut(&id) else {
                        continue;
                    };
                    let Kind::Ws {
                        connected: true,
                        queue,
                        xoff,
                        to_app,
                        marks,
                        ..
                    } = &mut ch.kind
                    else {
                        continue;
                    };
                    let frame = queue.pop_front();
                    let mut events = vec![];
                    if frame.is_some() {
                        for m in marks.iter_mut() {
                            m.0 = m.0.saturating_sub(1);
                        }
                    }
                    while marks.first().is_some_and(|m| m.0 == 0) {
                        let (_, name) = marks.remove(0);
                        events.push(json!({"event": "MEDIA_MARK_PROCESSED", "channel_id": id, "correlation_id": name}));
                    }
                    if *xoff && queue.len() < XON_LEVEL {
                        *xoff = false;
                        events.push(json!({"event": "MEDIA_XON", "channel_id": id}));
                    }
                    if let Some(tx) = to_app {
                        for e in &events {
                            let _ = tx.send(Message::Text(e.to_string().into()));
                        }
                        if ch.bridge.is_some() {
                            // The caller's audio (silence) reaches the app while bridged.
                            let _ = tx.send(Message::Binary(vec![0xFFu8; 160].into()));
                        }
                    }
                    (frame, ch.bridge.clone(), events)
                };
                let _ = events;
                if let (Some(frame), Some(b)) = (frame, bridge) {
                    let members = st.bridges.get(&b).cloned().unwrap_or_default();
                    for m in members {
                        if m != id
                            && let Some(c) = st.channels.get_mut(&m)
                        {
                            c.heard.push(frame.clone());
                        }
                    }
                }
            }
        }
    }
}

fn channel_json(c: &Chan) -> Value {
    let mut v = json!({
        "id": c.id,
        "protocol_id": "",
        "name": c.name,
        "state": c.state,
        "caller": {"name": "", "number": c.caller},
        "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": match c.kind {
            Kind::Caller => json!({"context": c.context, "exten": c.exten, "priority": 1, "app_name": "Stasis", "app_data": c.app.clone().unwrap_or_default()}),
            // An externalMedia channel is dialled by the core, not by a dialplan.
            _ => json!({"context": "default", "exten": "s", "priority": 1, "app_name": "AppDial2", "app_data": "(Outgoing Line)"}),
        },
        "creationtime": now_ts(),
        "language": "en",
    });
    match &c.kind {
        Kind::Ws { conn_id, .. } => {
            v["channelvars"] = json!({
                "MEDIA_WEBSOCKET_CONNECTION_ID": conn_id,
                "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": "160",
            });
        }
        Kind::Rtp { socket, .. } => {
            let local = socket.local_addr().unwrap();
            v["channelvars"] = json!({
                "UNICASTRTP_LOCAL_ADDRESS": local.ip().to_string(),
                "UNICASTRTP_LOCAL_PORT": local.port().to_string(),
            });
        }
        Kind::Caller => {}
    }
    v
}

/// Asterisk dies: every connection goes, later requests are refused, and the request that
/// killed it gets no answer (the handler's task ends without one, so its connection drops).
fn crash(st: &mut State) -> ! {
    st.crashed = true;
    for (_, conns) in st.apps.iter_mut() {
        for c in conns.drain(..) {
            let _ = c.send(Message::Close(None));
        }
    }
    for ch in st.channels.values() {
        if let Kind::Ws {
            to_app: Some(tx), ..
        } = &ch.kind
        {
            let _ = tx.send(Message::Close(None));
        }
    }
    std::panic::resume_unwind(Box::new("the emulated Asterisk crashed"))
}

fn message(status: u16, msg: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({ "message": msg })),
    )
        .into_response()
}

fn authorized(ast: &Asterisk, headers: &HeaderMap, query: &HashMap<String, String>) -> bool {
    use base64::Engine;
    let want = format!("{}:{}", ast.user, ast.pass);
    if query.get("api_key") == Some(&want) {
        return true;
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .is_some_and(|d| d == want.as_bytes())
}

async fn events_ws(
    axum::extract::State(ast): axum::extract::State<Asterisk>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !authorized(&ast, &headers, &q) {
        return message(401, "Authentication required");
    }
    let Some(app) = q.get("app").cloned() else {
        return message(400, "Missing parameter app");
    };
    if ast.lock().refuse_events || ast.lock().crashed {
        return message(503, "Service Unavailable");
    }
    ws.protocols(["ari"]).on_upgrade(move |socket| async move {
        let (tx, mut rx) = mpsc::unbounded_channel();
        ast.lock().apps.entry(app.clone()).or_default().push(tx);
        let (mut sink, mut stream) = socket.split();
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(Message::Close(c)) => { let _ = sink.send(Message::Close(c)).await; break; }
                    Some(m) => if sink.send(m).await.is_err() { break },
                    None => break,
                },
                m = stream.next() => match m {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    _ => {}
                },
            }
        }
        let mut st = ast.lock();
        if let Some(v) = st.apps.get_mut(&app) {
            v.retain(|c| !c.is_closed());
        }
    })
}

async fn media_ws(
    axum::extract::State(ast): axum::extract::State<Asterisk>,
    Path(conn): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    let chan_id = {
        let st = ast.lock();
        let found = st.channels.values().find_map(|c| match &c.kind {
            Kind::Ws {
                conn_id, connected, ..
            } if *conn_id == conn => Some((c.id.clone(), *connected)),
            _ => None,
        });
        match found {
            None => return StatusCode::NOT_FOUND.into_response(),
            Some((_, true)) => return StatusCode::CONFLICT.into_response(),
            Some((id, false)) => id,
        }
    };
    ws.protocols(["media"]).on_upgrade(move |socket| async move {
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        {
            let mut st = ast.lock();
            let Some(ch) = st.channels.get_mut(&chan_id) else { return };
            if let Kind::Ws { connected, to_app, .. } = &mut ch.kind {
                *connected = true;
                *to_app = Some(tx.clone());
            }
            let start = json!({
                "event": "MEDIA_START", "connection_id": conn, "channel": ch.name, "channel_id": ch.id,
                "format": "ulaw", "optimal_frame_size": 160, "ptime": 20,
                "channel_variables": {"MEDIA_WEBSOCKET_CONNECTION_ID": conn, "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": "160"},
            });
            let _ = tx.send(Message::Text(start.to_string().into()));
            // Answered once the connection is up: the channel enters the application.
            ast.enter_later(&st, &chan_id);
        }
        let (mut sink, mut stream) = socket.split();
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(Message::Close(c)) => { let _ = sink.send(Message::Close(c)).await; break; }
                    Some(m) => if sink.send(m).await.is_err() { break },
                    None => break,
                },
                m = stream.next() => match m {
                    Some(Ok(Message::Binary(b))) => on_media(&ast, &chan_id, &b, &tx),
                    Some(Ok(Message::Text(t))) if on_control(&ast, &chan_id, t.as_str(), &tx) => break,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        // CLOSE from the app hangs the channel up; a connection dropped without
                        // one is logged by Asterisk as an error ("Error reading from web
                        // socket: Connection reset by peer").
                        let mut st = ast.lock();
                        if !matches!(m, Some(Ok(Message::Close(_)))) && st.channels.contains_key(&chan_id) {
                            st.violations.push(format!("media websocket of {chan_id} dropped without a Close frame"));
                        }
                        ast.destroy(&mut st, &chan_id, 16, "Normal Clearing");
                        break;
                    }
                    _ => {}
                },
            }
        }
    })
}

fn on_media(ast: &Asterisk, id: &str, data: &[u8], tx: &mpsc::UnboundedSender<Message>) {
    let mut st = ast.lock();
    let Some(Chan {
        kind: Kind::Ws { queue, xoff, .. },
        ..
    }) = st.channels.get_mut(id)
    else {
        return;
    };
    // Cut into optimal_frame_size pieces; outside buffering mode a partial piece is dropped.
    for piece in data.chunks_exact(160) {
        if queue.len() >= QUEUE_MAX {
            break;
        }
        queue.push_back(piece.to_vec());
        if queue.len() >= XOFF_LEVEL && !*xoff {
            *xoff = true;
            let _ = tx.send(Message::Text(
                json!({"event": "MEDIA_XOFF", "channel_id": id})
                    .to_string()
                    .into(),
            ));
        }
    }
}

/// A control message; true when the channel was hung up.
fn on_control(ast: &Asterisk, id: &str, text: &str, tx: &mpsc::UnboundedSender<Message>) -> bool {
    let mut st = ast.lock();
    if text.len() > MAX_TEXT {
        st.violations.push(format!(
            "text frame of {} bytes ignored (over 128)",
            text.len()
        ));
        return false;
    }
    let Ok(cmd) = serde_json::from_str::<Value>(text) else {
        st.violations
            .push(format!("control message not JSON: {text}"));
        return false;
    };
    let name = cmd["command"].as_str().unwrap_or("").to_string();
    st.media_commands.push(name.clone());
    let Some(Chan {
        kind: Kind::Ws { queue, marks, .. },
        ..
    }) = st.channels.get_mut(id)
    else {
        return false;
    };
    match name.as_str() {
        "FLUSH_MEDIA" => {
            queue.clear();
            for (_, name) in marks.drain(..) {
                let _ = name;
            }
        }
        "MARK_MEDIA" => {
            let at = queue.len();
            marks.push((at, cmd["correlation_id"].as_str().unwrap_or("").to_string()));
        }
        "GET_STATUS" => {
            let s = json!({"event": "STATUS", "channel_id": id, "queue_length": queue.len(), "xon_level": XON_LEVEL,
                "xoff_level": XOFF_LEVEL, "queue_full": queue.len() >= QUEUE_MAX, "bulk_media": false, "media_paused": false});
            let _ = tx.send(Message::Text(s.to_string().into()));
        }
        "HANGUP" => {
            ast.destroy(&mut st, id, 16, "Normal Clearing");
            return true;
        }
        "ANSWER" => {}
        other => st
            .violations
            .push(format!("unknown chan_websocket command {other} ignored")),
    }
    false
}

async fn rest(axum::extract::State(ast): axum::extract::State<Asterisk>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query: Vec<(String, String)> = req.uri().query().map(url_pairs).unwrap_or_default();
    let headers = req.headers().clone();
    let qmap: HashMap<String, String> = query.iter().cloned().collect();
    let mut log = Request1 {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        status: 0,
        operation: None,
    };
    let resp = handle_rest(&ast, &method, &path, &qmap, &headers, &mut log);
    log.status = resp.status().as_u16();
    ast.lock().requests.push(log);
    resp
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(h, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn handle_rest(
    ast: &Asterisk,
    method: &Method,
    path: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    log: &mut Request1,
) -> Response {
    if ast.lock().crashed {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let Some(rest) = path.strip_prefix("/ari/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !authorized(ast, headers, q) {
        return message(401, "Authentication required");
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let op = match ast.swagger.find(method.as_str(), &segs) {
        Ok(op) => op.clone(),
        Err((status, msg)) => return message(status, msg),
    };
    log.operation = Some(op.nickname.clone());
    let mut path_params = HashMap::new();
    for (t, s) in op.path.iter().zip(&segs) {
        if t.starts_with('{') {
            path_params.insert(
                t.trim_matches(|c| c == '{' || c == '}').to_string(),
                s.to_string(),
            );
        }
    }
    for p in op.params.iter().filter(|p| p.kind == "query") {
        match q.get(&p.name) {
            None if p.required => return message(400, &format!("Missing parameter {}", p.name)),
            None => {}
            Some(v) => {
                if let Some(allowed) = &p.allowed
                    && !allowed.contains(v)
                {
                    return message(400, &format!("Invalid value for {}", p.name));
                }
                if (p.data_type == "int" || p.data_type == "long") && v.parse::<i64>().is_err() {
                    return message(400, &format!("{} must be an integer", p.name));
                }
            }
        }
    }
    for k in q.keys() {
        if k != "api_key" && !op.params.iter().any(|p| p.kind == "query" && &p.name == k) {
            ast.lock().violations.push(format!(
                "{} {path}: parameter {k} is not in the swagger",
                method
            ));
        }
    }
    let mut st = ast.lock();
    let chan = |st: &State, key: &str| {
        path_params
            .get(key)
            .filter(|id| st.channels.contains_key(*id))
            .cloned()
    };
    match op.nickname.as_str() {
        "get" if op.path[0] == "channels" => match chan(&st, "channelId") {
            Some(id) => {
                // As measured: channel variables come with a new channel, not with GET.
                let mut v = channel_json(&st.channels[&id]);
                if let Some(o) = v.as_object_mut() {
                    o.remove("channelvars");
                }
                axum::Json(v).into_response()
            }
            None => message(404, "Channel not found"),
        },
        "answer" => match chan(&st, "channelId") {
            Some(id) => {
                let c = st.channels.get_mut(&id).unwrap();
                if c.app.is_none() {
                    return message(409, "Channel not in a Stasis application");
                }
                c.state = "Up";
                StatusCode::NO_CONTENT.into_response()
            }
            None => message(404, "Channel not found"),
        },
        "hangup" => match chan(&st, "channelId") {
            Some(id) => {
                ast.destroy(&mut st, &id, 16, "Normal Clearing");
                StatusCode::NO_CONTENT.into_response()
            }
            None => message(404, "Channel not found"),
        },
        "setChannelVar" => match chan(&st, "channelId") {
            Some(id) => {
                let c = st.channels.get_mut(&id).unwrap();
                c.vars.insert(
                    q["variable"].clone(),
                    q.get("value").cloned().unwrap_or_default(),
                );
                StatusCode::NO_CONTENT.into_response()
            }
            None => message(404, "Channel not found"),
        },
        "continueInDialplan" => match chan(&st, "channelId") {
            Some(id) => {
                let mut c = st.channels.remove(&id).unwrap();
                let Some(app) = c.app.take() else {
                    st.channels.insert(id, c);
                    return message(409, "Channel not in a Stasis application");
                };
                if let Some(b) = c.bridge.take()
                    && let Some(m) = st.bridges.get_mut(&b)
                {
                    m.retain(|x| x != &id);
                }
                let cj = channel_json(&c);
                c.stasis = false;
                c.continued = Some((
                    q.get("context")
                        .cloned()
                        .unwrap_or_else(|| c.context.clone()),
                    q.get("extension")
                        .cloned()
                        .unwrap_or_else(|| c.exten.clone()),
                    q.get("priority").cloned().unwrap_or_else(|| "1".into()),
                ));
                st.channels.insert(id, c);
                ast.emit(&mut st, &app, json!({"type": "StasisEnd", "channel": cj}));
                StatusCode::NO_CONTENT.into_response()
            }
            None => message(404, "Channel not found"),
        },
        "externalMedia" => {
            let transport = q.get("transport").map(String::as_str).unwrap_or("udp");
            let encapsulation = q.get("encapsulation").map(String::as_str).unwrap_or("rtp");
            if let Some(td) = q.get("transport_data")
                && let Some(start) = td.find("f(")
            {
                let end = td[start..].find(')').map(|e| start + e).unwrap_or(td.len());
                let f = &td[start + 2..end];
                if f != "json" && f != "plain-text" {
                    // Asterisk 23.4.1 dereferences a NULL channel here and dies.
                    crash(&mut st);
                }
            }
            let taken = q
                .get("channelId")
                .is_some_and(|id| st.channels.contains_key(id));
            if transport == "udp" && encapsulation == "rtp" {
                if taken {
                    return message(
                        500,
                        "An internal error prevented this request from being handled",
                    );
                }
                return ast.external_rtp(&mut st, q);
            }
            if transport != "websocket" || encapsulation != "none" {
                return message(400, "Invalid parameters");
            }
            if q.get("connection_type").map(String::as_str) != Some("server") {
                // Client mode needs a websocket_client.conf section; this Asterisk has none.
                return message(400, "Invalid parameters");
            }
            let id = q.get("channelId").cloned().unwrap_or_else(|| {
                st.next += 1;
                format!("1795298{:03}.{}", st.next, st.next)
            });
            if taken {
                // Asterisk 23.4.1 logs "Channel Unique ID ... already in use" and segfaults.
                crash(&mut st);
            }
            st.next += 1;
            let conn_id = format!("4cb7f494-d62b-46a5-ba49-{:012x}", st.next);
            let ch = Chan {
                id: id.clone(),
                name: format!("WebSocket/INCOMING/0x{:012x}", 0x5620cd1e2c70u64 + st.next),
                state: "Down",
                caller: String::new(),
                exten: "s".into(),
                context: "default".into(),
                app: Some(q["app"].clone()),
                vars: HashMap::new(),
                kind: Kind::Ws {
                    conn_id,
                    connected: false,
                    queue: VecDeque::new(),
                    xoff: false,
                    to_app: None,
                    marks: vec![],
                },
                bridge: None,
                heard: vec![],
                continued: None,
                // Enters the application when its websocket connects.
                stasis: false,
            };
            let v = channel_json(&ch);
            st.channels.insert(id, ch);
            axum::Json(v).into_response()
        }
        "originate" => {
            // `PJSIP/<number>@trunk` or `PJSIP/<number>`: the dialled number.
            let endpoint = q["endpoint"].clone();
            let Some((_, rest)) = endpoint.split_once('/') else {
                return message(400, "Invalid endpoint");
            };
            let number = rest.split('@').next().unwrap_or("").to_string();
            let Some(app) = q.get("app").cloned() else {
                // Originating into the dialplan is not emulated.
                st.violations.push("originate without app".into());
                return message(400, "app is required here");
            };
            let id = q.get("channelId").cloned().unwrap_or_else(|| {
                st.next += 1;
                format!("1795299{:03}.{}", st.next, st.next)
            });
            if st.channels.contains_key(&id) || st.destroyed.contains_key(&id) {
                return message(409, "Channel with the same id already exists");
            }
            st.next += 1;
            let args: Vec<String> = q
                .get("appArgs")
                .map(|a| a.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            let ch = Chan {
                id: id.clone(),
                name: format!("PJSIP/trunk-{:08x}", st.next),
                state: "Down",
                caller: q.get("callerId").cloned().unwrap_or_default(),
                exten: number.clone(),
                context: "default".into(),
                app: Some(app.clone()),
                vars: HashMap::new(),
                kind: Kind::Caller,
                bridge: None,
                heard: vec![],
                continued: None,
                stasis: false,
            };
            let v = channel_json(&ch);
            st.channels.insert(id.clone(), ch);
            let callee = st.callees.get(&number).copied().unwrap_or_default();
            let timeout = q
                .get("timeout")
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(30);
            let ast2 = ast.clone();
            ast.rt.spawn(async move {
                let wait = callee.answer_after.min(Duration::from_secs(timeout));
                tokio::time::sleep(wait).await;
                {
                    let mut st = ast2.lock();
                    if !st.channels.contains_key(&id) {
                        return;
                    }
                    if callee.busy {
                        ast2.destroy(&mut st, &id, 17, "User busy");
                        return;
                    }
                    if callee.answer_after > Duration::from_secs(timeout) {
                        ast2.destroy(&mut st, &id, 19, "No answer");
                        return;
                    }
                    let c = st.channels.get_mut(&id).unwrap();
                    c.state = "Up";
                    c.stasis = true;
                    let cj = channel_json(c);
                    ast2.emit(
                        &mut st,
                        &app,
                        json!({"type": "StasisStart", "args": args, "channel": cj}),
                    );
                }
                if let Some(after) = callee.hangup_after {
                    tokio::time::sleep(after).await;
                    let mut st = ast2.lock();
                    ast2.destroy(&mut st, &id, 16, "Normal Clearing");
                }
            });
            axum::Json(v).into_response()
        }
        "createWithId" => {
            let id = path_params["bridgeId"].clone();
            if st.bridges.contains_key(&id) {
                return message(409, "Bridge with the same bridgeId already exists");
            }
            st.bridges.insert(id.clone(), vec![]);
            axum::Json(json!({"id": id, "technology": "simple_bridge", "bridge_type": q.get("type").cloned().unwrap_or("mixing".into()),
                "bridge_class": "stasis", "creator": "Stasis", "name": "", "channels": [], "creationtime": now_ts()}))
                .into_response()
        }
        "addChannel" => {
            let b = path_params["bridgeId"].clone();
            if !st.bridges.contains_key(&b) {
                return message(404, "Bridge not found");
            }
            let ids: Vec<String> = q["channel"].split(',').map(str::to_string).collect();
            for id in &ids {
                match st.channels.get(id) {
                    None => return message(400, "Channel not found"),
                    Some(c) if c.app.is_none() || !c.stasis => {
                        return message(422, "Channel not in Stasis application");
                    }
                    _ => {}
                }
            }
            for id in ids {
                st.channels.get_mut(&id).unwrap().bridge = Some(b.clone());
                st.bridges.get_mut(&b).unwrap().push(id);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        "destroy" if op.path[0] == "bridges" => {
            let b = path_params["bridgeId"].clone();
            match st.bridges.remove(&b) {
                Some(members) => {
                    for m in members {
                        if let Some(c) = st.channels.get_mut(&m) {
                            c.bridge = None;
                        }
                    }
                    StatusCode::NO_CONTENT.into_response()
                }
                None => message(404, "Bridge not found"),
            }
        }
        other => {
            st.violations.push(format!(
                "operation {other} is in the swagger but not emulated"
            ));
            StatusCode::NOT_IMPLEMENTED.into_response()
        }
    }
}
