//! Calls from FreeSWITCH: the event socket (inbound mode) for control and keys, and our own
//! websocket server for mod_audio_fork's media. The dialplan answers and parks the recharge
//! numbers; each `CHANNEL_PARK` becomes a call: we start `uuid_audio_fork` (bidirectional,
//! L16 at `sample_rate`, 8 or 16 kHz) towards `<media_url>/fs/<uuid>`, play prompts as binary
//! frames down that socket (`killAudio` on barge-in, `mark` to know they were heard), read keys
//! from `DTMF` events, escalate with `uuid_transfer` and hang up with `uuid_kill`.
//!
//! FreeSWITCH 1.10.12 plays streamed audio only into frames it writes to the channel, and a
//! parked channel writes none unless `send_silence_when_idle` was set before `park`: a call
//! parked without it is parked again with it (one warning names the dialplan fix), and a call
//! whose first audio is not played within [`AUDIO_CHECK_WAIT`] ends as `no-audio` rather than
//! leave a caller in silence.

pub mod esl;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, debug, info, warn};

use crate::config::FreeswitchConfig;
use crate::media::dtmf::{Digit, DtmfMethod};
use crate::media::g711::Codec;
use crate::media::player::Payload;
use crate::server::{Shared, Shutdown};
use crate::telephony::edge::{self, DialEvent, EdgeCall, EdgeCommand, EdgeEvent, Refusal};

/// The sub-protocols mod_audio_fork asks for (drachtio's default, jambonz's); the one offered
/// is echoed back, as libwebsockets requires.
pub const SUBPROTOCOLS: [&str; 2] = ["audio.drachtio.org", "audio.jambonz.org"];

/// The events we subscribe to.
const EVENTS: &str = "event json CHANNEL_PARK CHANNEL_ANSWER CHANNEL_HANGUP_COMPLETE DTMF BACKGROUND_JOB CUSTOM mod_audio_fork::connect mod_audio_fork::connect_failed mod_audio_fork::disconnect";

/// How long FreeSWITCH has to open the media websocket after `uuid_audio_fork start`.
const MEDIA_CONNECT_WAIT: Duration = Duration::from_secs(10);
const PLAYOUT_WAIT: Duration = Duration::from_secs(2);

/// What the ESL task tells a call task.
#[derive(Debug)]
enum LegEvent {
    Dtmf(Digit, DtmfMethod),
    Gone(String),
    Media(Box<WebSocket>),
    MediaFailed(String),
    /// The calling service's outbound leg answered.
    CalleeUp,
    /// The outbound leg is gone (or never came), with FreeSWITCH's hangup cause.
    CalleeGone(String),
    /// The caller's channel parked again (after our repair), with its
    /// `send_silence_when_idle`.
    Parked(Option<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leg {
    Caller,
    Callee,
}

/// The hangup reason, if `e` is the caller's hangup.
fn caller_gone(e: LegEvent) -> Option<String> {
    match e {
        LegEvent::Gone(why) => Some(why),
        _ => None,
    }
}

/// A request to the ESL connection: an `api` command and where its reply goes.
struct Api {
    /// The whole command line (`api ...`, `bgapi ...`).
    command: String,
    /// Extra header lines (`Job-UUID` for bgapi).
    headers: Vec<(String, String)>,
    reply: oneshot::Sender<Result<String, String>>,
}

/// Runs the FreeSWITCH edge until the service stops (returns at once without `[freeswitch]`).
pub async fn run(shared: Arc<Shared>) {
    let Some(cfg) = shared.cfg.freeswitch.clone() else {
        return;
    };
    let (media_tx, mut media_rx) = mpsc::channel::<(String, WebSocket)>(64);
    let listener = match tokio::net::TcpListener::bind(cfg.media_listen).await {
        Ok(l) => l,
        Err(e) => {
            warn!(addr = %cfg.media_listen, error = %e, "cannot listen for mod_audio_fork");
            return;
        }
    };
    info!(addr = %cfg.media_listen, "listening for mod_audio_fork");
    let app = axum::Router::new().route(
        "/fs/{uuid}",
        axum::routing::get(
            |axum::extract::Path(uuid): axum::extract::Path<String>, ws: WebSocketUpgrade| async move {
                ws.protocols(SUBPROTOCOLS).on_upgrade(move |socket| async move {
                    let _ = media_tx.send((uuid, socket)).await;
                })
            },
        ),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let (api_tx, mut api_rx) = mpsc::channel::<Api>(256);
    let (done_tx, mut done_rx) = mpsc::channel::<String>(64);
    let mut routes: HashMap<String, (mpsc::Sender<LegEvent>, Leg)> = HashMap::new();
    let mut shutdown = shared.shutdown.clone();
    // Since when the event socket has been out of reach, and when that was last logged.
    let mut outage: Option<(Instant, Instant)> = None;
    'outer: loop {
        match connect(&cfg).await {
            Ok((mut sock, mut parser)) => {
                match outage.take() {
                    Some((since, _)) => info!(
                        esl = %cfg.esl,
                        down_ms = since.elapsed().as_millis() as u64,
                        "FreeSWITCH event socket connected again"
                    ),
                    None => info!(esl = %cfg.esl, "FreeSWITCH event socket connected"),
                }
                shared.freeswitch_up.store(true, Ordering::Relaxed);
                // Replies come in the order of the commands.
                let mut waiting: VecDeque<oneshot::Sender<Result<String, String>>> =
                    VecDeque::new();
                // Calls whose channel vanished while we were away.
                for (uuid, (tx, leg)) in &routes {
                    if *leg != Leg::Caller {
                        continue;
                    }
                    let (reply, rx) = oneshot::channel();
                    let cmd = format!("api uuid_exists {uuid}");
                    if sock
                        .write_all(format!("{cmd}\n\n").as_bytes())
                        .await
                        .is_ok()
                    {
                        waiting.push_back(reply);
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            if let Ok(Ok(r)) = rx.await
                                && r.trim() == "false"
                            {
                                let _ = tx.send(LegEvent::Gone("lost".into())).await;
                            }
                        });
                    }
                }
                let mut buf = vec![0u8; 16384];
                loop {
                    tokio::select! {
                        n = sock.read(&mut buf) => {
                            let n = match n {
                                Ok(0) | Err(_) => {
                                    warn!("FreeSWITCH event socket lost");
                                    break;
                                }
                                Ok(n) => n,
                            };
                            parser.push(&buf[..n]);
                            loop {
                                match parser.next_frame() {
                                    Ok(Some(f)) => on_frame(&shared, &cfg, &api_tx, &done_tx, &mut routes, &mut waiting, f),
                                    Ok(None) => break,
                                    Err(e) => {
                                        warn!(error = %e, "FreeSWITCH sent garbage; reconnecting");
                                        continue 'outer;
                                    }
                                }
                            }
                        }
                        Some(api) = api_rx.recv() => {
                            match esl::command_with(&api.command, &api.headers) {
                                Some(line) if sock.write_all(line.as_bytes()).await.is_ok() => waiting.push_back(api.reply),
                                Some(_) => { let _ = api.reply.send(Err("event socket lost".into())); break; }
                                None => { let _ = api.reply.send(Err("command with a line break refused".into())); }
                            }
                        }
                        Some((uuid, socket)) = media_rx.recv() => deliver_media(&routes, uuid, socket),
                        Some(uuid) = done_rx.recv() => forget(&mut routes, &uuid),
                        _ = shutdown.changed() => {
                            if *shutdown.borrow() == Shutdown::Stop {
                                break 'outer;
                            }
                        }
                    }
                }
                for w in waiting.drain(..) {
                    let _ = w.send(Err("event socket lost".into()));
                }
                outage = Some((Instant::now(), Instant::now()));
            }
            Err(e) => edge::log_outage("the FreeSWITCH event socket", &mut outage, &e.to_string()),
        }
        shared.freeswitch_up.store(false, Ordering::Relaxed);
        let wait = tokio::time::sleep(edge::retry_delay());
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                Some(api) = api_rx.recv() => { let _ = api.reply.send(Err("event socket down".into())); }
                Some((uuid, socket)) = media_rx.recv() => deliver_media(&routes, uuid, socket),
                Some(uuid) = done_rx.recv() => forget(&mut routes, &uuid),
                _ = shutdown.changed() => {
                    if *shutdown.borrow() == Shutdown::Stop {
                        break 'outer;
                    }
                }
            }
        }
    }
    server.abort();
}

/// A call is over: its channels are no longer routed.
fn forget(routes: &mut HashMap<String, (mpsc::Sender<LegEvent>, Leg)>, uuid: &str) {
    routes.remove(uuid);
    routes.remove(&callee_uuid(uuid));
}

/// The UUID we give the calling service's outbound leg (one at a time per call).
fn callee_uuid(caller: &str) -> String {
    format!("{caller}-out")
}

fn deliver_media(
    routes: &HashMap<String, (mpsc::Sender<LegEvent>, Leg)>,
    uuid: String,
    socket: WebSocket,
) {
    match routes.get(&uuid) {
        Some((tx, Leg::Caller)) => {
            let _ = tx.try_send(LegEvent::Media(Box::new(socket)));
        }
        _ => debug!(%uuid, "media connection for no call of ours"),
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Esl(#[from] esl::EslError),
    #[error("authentication refused: {0}")]
    Auth(String),
    #[error("connection closed during the handshake")]
    Closed,
}

async fn read_frame(
    sock: &mut TcpStream,
    parser: &mut esl::Parser,
) -> Result<esl::Frame, ConnectError> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(f) = parser.next_frame()? {
            return Ok(f);
        }
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            return Err(ConnectError::Closed);
        }
        parser.push(&buf[..n]);
    }
}

/// Connects, authenticates and subscribes (inbound mode).
async fn connect(cfg: &FreeswitchConfig) -> Result<(TcpStream, esl::Parser), ConnectError> {
    let mut sock = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&cfg.esl))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = sock.set_nodelay(true);
    let mut parser = esl::Parser::default();
    let hello = read_frame(&mut sock, &mut parser).await?;
    if hello.content_type() != "auth/request" {
        return Err(ConnectError::Auth(format!(
            "expected auth/request, got {}",
            hello.content_type()
        )));
    }
    let auth = esl::command(&format!("auth {}", cfg.password.expose()))
        .ok_or_else(|| ConnectError::Auth("password with a line break".into()))?;
    sock.write_all(auth.as_bytes()).await?;
    let reply = read_frame(&mut sock, &mut parser).await?;
    let text = reply.header("Reply-Text").unwrap_or("").to_string();
    if !text.starts_with("+OK") {
        return Err(ConnectError::Auth(text));
    }
    sock.write_all(format!("{EVENTS}\n\n").as_bytes()).await?;
    let reply = read_frame(&mut sock, &mut parser).await?;
    let text = reply.header("Reply-Text").unwrap_or("").to_string();
    if !text.starts_with("+OK") {
        return Err(ConnectError::Auth(format!(
            "event subscription refused: {text}"
        )));
    }
    Ok((sock, parser))
}

fn on_frame(
    shared: &Arc<Shared>,
    cfg: &FreeswitchConfig,
    api: &mpsc::Sender<Api>,
    done: &mpsc::Sender<String>,
    routes: &mut HashMap<String, (mpsc::Sender<LegEvent>, Leg)>,
    waiting: &mut VecDeque<oneshot::Sender<Result<String, String>>>,
    f: esl::Frame,
) {
    match f.content_type() {
        "api/response" => {
            if let Some(w) = waiting.pop_front() {
                let _ = w.send(Ok(f.body));
            }
        }
        "command/reply" => {
            if let Some(w) = waiting.pop_front() {
                let _ = w.send(Ok(f.header("Reply-Text").unwrap_or("").to_string()));
            }
        }
        "text/disconnect-notice" => debug!("FreeSWITCH disconnect notice"),
        _ => {
            let Some(ev) = esl::event(&f) else { return };
            // A background job carries our id of the channel it created (the callee's).
            let uuid = ev
                .get("Unique-ID")
                .or_else(|| ev.get("Job-UUID"))
                .unwrap_or("")
                .to_string();
            let leg = routes.get(&uuid).map(|(_, l)| *l);
            let route = |ev: LegEvent| {
                if let Some((tx, _)) = routes.get(&uuid) {
                    let _ = tx.try_send(ev);
                }
            };
            match (ev.name(), leg) {
                ("CHANNEL_PARK", None) if !uuid.is_empty() => {
                    let (tx, rx) = mpsc::channel(64);
                    routes.insert(uuid.clone(), (tx.clone(), Leg::Caller));
                    routes.insert(callee_uuid(&uuid), (tx, Leg::Callee));
                    let call = ParkedCall {
                        uuid: uuid.clone(),
                        caller: ev.get("Caller-Caller-ID-Number").unwrap_or("").to_string(),
                        // The dialplan may name the service number (`set topup_dialled=...`).
                        dialled: ev
                            .get("variable_topup_dialled")
                            .or_else(|| ev.get("Caller-Destination-Number"))
                            .unwrap_or("")
                            .to_string(),
                        silence_when_idle: ev
                            .get("variable_send_silence_when_idle")
                            .map(str::to_string),
                        // The caller's codec: 8 kHz prompts go as its G.711 frames, decoded,
                        // so FreeSWITCH's encoding gives the caller exactly those frames.
                        codec: match ev.get("variable_read_codec") {
                            Some("PCMA") => Codec::Pcma,
                            _ => Codec::Pcmu,
                        },
                    };
                    let span = tracing::info_span!("call", call_id = %uuid);
                    tokio::spawn(
                        call_task(
                            shared.clone(),
                            cfg.clone(),
                            call,
                            rx,
                            api.clone(),
                            done.clone(),
                        )
                        .instrument(span),
                    );
                }
                ("CHANNEL_PARK", Some(Leg::Caller)) => route(LegEvent::Parked(
                    ev.get("variable_send_silence_when_idle")
                        .map(str::to_string),
                )),
                ("DTMF", Some(Leg::Caller)) => {
                    let Some(d) = ev
                        .get("DTMF-Digit")
                        .and_then(|d| d.chars().next())
                        .and_then(Digit::from_char)
                    else {
                        return;
                    };
                    let method = match ev.get("DTMF-Source") {
                        Some("RTP") => DtmfMethod::Rfc4733,
                        Some("INBAND_AUDIO") => DtmfMethod::Inband,
                        _ => DtmfMethod::Softswitch,
                    };
                    route(LegEvent::Dtmf(d, method));
                }
                ("CHANNEL_HANGUP_COMPLETE", Some(Leg::Caller)) => {
                    route(LegEvent::Gone("caller-hangup".into()))
                }
                ("CHANNEL_HANGUP_COMPLETE", Some(Leg::Callee)) => route(LegEvent::CalleeGone(
                    ev.get("Hangup-Cause").unwrap_or("").to_string(),
                )),
                ("CHANNEL_ANSWER", Some(Leg::Callee)) => route(LegEvent::CalleeUp),
                // originate failed before a channel existed (or after: the hangup says why too).
                ("BACKGROUND_JOB", Some(Leg::Callee)) => {
                    if let Some(cause) = ev.body.trim().strip_prefix("-ERR ") {
                        route(LegEvent::CalleeGone(cause.trim().to_string()))
                    }
                }
                ("CUSTOM", Some(Leg::Caller))
                    if ev.get("Event-Subclass") == Some("mod_audio_fork::connect_failed") =>
                {
                    route(LegEvent::MediaFailed(ev.body.clone()))
                }
                _ => {}
            }
        }
    }
}

struct ParkedCall {
    uuid: String,
    caller: String,
    dialled: String,
    /// The channel's `send_silence_when_idle` when it parked (see [`writes_when_idle`]).
    silence_when_idle: Option<String>,
    codec: Codec,
}

/// Whether a parked channel writes frames while idle, from its `send_silence_when_idle`.
/// FreeSWITCH's `park` writes nothing unless the variable is set (to a non-zero level; -1 is
/// silence) before it parks, and mod_audio_fork plays streamed audio only into frames
/// FreeSWITCH writes: without it the caller hears nothing and every mark times out. `park`
/// reads the variable once, so setting it later does nothing; a call parked again does.
fn writes_when_idle(value: Option<&str>) -> bool {
    value
        .map(str::trim)
        .and_then(|v| v.parse::<i64>().ok())
        .is_some_and(|v| v != 0)
}

/// The dialplan fix, said once per process in the log (each call is repaired regardless).
static SILENCE_WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// How long a repaired call has to park again.
const REPARK_WAIT: Duration = Duration::from_secs(3);

/// How long the first streamed audio has to be played (its mark to come back) before the
/// call is taken to hear nothing.
const AUDIO_CHECK_WAIT: Duration = Duration::from_secs(5);

/// How far ahead of real time prompt audio is streamed. mod_audio_fork plays what it holds
/// into each frame FreeSWITCH writes, with no buffer of its own to speak of: audio that comes
/// late leaves a gap the caller hears (measured under load: prompts no longer arrived sample
/// for sample). With 100 ms in hand, a wake-up of ours that late costs nothing; a barge-in
/// still cuts at once (`killAudio` empties that buffer).
const PLAYOUT_LEAD: Duration = Duration::from_millis(100);

/// Frames streamed before the audio check's mark is sent.
const AUDIO_CHECK_AFTER: u32 = 5;

/// Parks the call again with `send_silence_when_idle=-1` (an inline dialplan), so FreeSWITCH
/// writes the frames mod_audio_fork plays our audio into; returns once it has re-parked.
async fn repair_silent_park(
    api: &mpsc::Sender<Api>,
    uuid: &str,
    events: &mut mpsc::Receiver<LegEvent>,
    early: &mut Vec<LegEvent>,
) -> Result<(), String> {
    if !SILENCE_WARNED.swap(true, Ordering::Relaxed) {
        warn!(
            "FreeSWITCH parked a call without send_silence_when_idle: callers would hear nothing. \
             Each such call is parked again with it; set it in the dialplan before answer/park: \
             <action application=\"set\" data=\"send_silence_when_idle=-1\"/> \
             (docker/freeswitch/dialplan.xml)"
        );
    }
    metrics::counter!("topup_ivr_freeswitch_repaired_parks_total").increment(1);
    api_call(
        api,
        format!("uuid_transfer {uuid} set:send_silence_when_idle=-1,park inline"),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + REPARK_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(LegEvent::Parked(v))) if writes_when_idle(v.as_deref()) => return Ok(()),
            Ok(Some(LegEvent::Parked(_))) => {}
            Ok(Some(e @ LegEvent::Gone(_))) => {
                early.push(e);
                return Err("the caller left".into());
            }
            Ok(Some(e)) => early.push(e),
            Ok(None) => return Err("event socket task gone".into()),
            Err(_) => return Err(format!("not parked again in {REPARK_WAIT:?}")),
        }
    }
}

async fn api_call(api: &mpsc::Sender<Api>, command: String) -> Result<String, String> {
    esl_call(api, format!("api {command}"), vec![]).await
}

/// One command on the event socket and its reply (`-ERR ...` is an error).
async fn esl_call(
    api: &mpsc::Sender<Api>,
    command: String,
    headers: Vec<(String, String)>,
) -> Result<String, String> {
    let (reply, rx) = oneshot::channel();
    api.send(Api {
        command,
        headers,
        reply,
    })
    .await
    .map_err(|_| "event socket task gone".to_string())?;
    let r = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .map_err(|_| "no reply".to_string())?
        .map_err(|_| "event socket lost".to_string())??;
    if r.starts_with("-ERR") {
        Err(r.trim().to_string())
    } else {
        Ok(r)
    }
}

async fn call_task(
    shared: Arc<Shared>,
    cfg: FreeswitchConfig,
    call: ParkedCall,
    mut events: mpsc::Receiver<LegEvent>,
    api: mpsc::Sender<Api>,
    done: mpsc::Sender<String>,
) {
    let uuid = call.uuid.clone();
    let cause = run_leg(&shared, &cfg, call, &mut events, &api).await;
    if let Some(cause) = cause {
        if let Err(e) = api_call(&api, format!("uuid_kill {uuid} {cause}")).await {
            debug!(error = %e, "uuid_kill");
        }
    }
    let _ = done.send(uuid).await;
}

/// Runs the call; returns the hangup cause to end the channel with, or `None` when it is
/// already gone or was transferred.
async fn run_leg(
    shared: &Arc<Shared>,
    cfg: &FreeswitchConfig,
    call: ParkedCall,
    events: &mut mpsc::Receiver<LegEvent>,
    api: &mpsc::Sender<Api>,
) -> Option<&'static str> {
    let uuid = call.uuid.clone();
    let (plan, permit) = match edge::admit(shared, "freeswitch", &call.dialled, &call.caller) {
        Ok(x) => x,
        Err(r) => {
            info!(reason = r.as_str(), "call refused");
            return Some(match r {
                Refusal::NoService => "UNALLOCATED_NUMBER",
                Refusal::Full | Refusal::ShuttingDown => "NORMAL_TEMPORARY_FAILURE",
            });
        }
    };
    info!(service = %plan.service, from = %crate::redact::Phone(&call.caller), "incoming call");
    // The dialplan answered the call before parking it.
    let answered_at = crate::call::timestamp();
    let (rate_word, payload) = match cfg.sample_rate {
        16000 => ("16k", Payload::L16Le16k),
        _ => ("8k", Payload::L16Le8k),
    };
    let edge_call = EdgeCall {
        call_id: uuid.clone(),
        caller: call.caller,
        dialled: call.dialled,
        plan,
        codec: call.codec,
        payload,
        lead: PLAYOUT_LEAD,
        inband: shared.cfg.rtp.inband_dtmf == crate::config::InbandDtmf::Always,
        can_dial: cfg.calling_gateway.is_some(),
    };
    // Events that come while the call is set up (keys typed ahead), for the call once it runs.
    let mut early: Vec<LegEvent> = vec![];
    let caller_left = |early: &[LegEvent]| early.iter().any(|e| matches!(e, LegEvent::Gone(_)));
    if !writes_when_idle(call.silence_when_idle.as_deref()) {
        match repair_silent_park(api, &uuid, events, &mut early).await {
            Ok(()) => debug!("parked again with send_silence_when_idle"),
            Err(_) if caller_left(&early) => {
                edge::record_unserved(shared, &edge_call, answered_at, "caller-hangup").await;
                return None;
            }
            // The audio check below ends the call if the caller really hears nothing.
            Err(e) => warn!(error = %e, "could not park the call again"),
        }
    }
    // The `^^|` form: ten fields split on `|`, bidirectional streaming at the configured rate.
    let start = format!(
        "uuid_audio_fork ^^|{uuid}|start|{}/fs/{uuid}|mono|{rate_word}|topup-ivr|{{\"uuid\":\"{uuid}\"}}|true|true|{}",
        cfg.media_url, cfg.sample_rate
    );
    debug!(rate = cfg.sample_rate, codec = %call.codec, "starting mod_audio_fork");
    let setup_failed = |why: &str| warn!(%why, "call not set up");
    if let Err(e) = api_call(api, start).await {
        setup_failed(&format!("uuid_audio_fork refused: {e}"));
        edge::record_unserved(shared, &edge_call, answered_at, "setup-failed").await;
        return Some("NORMAL_TEMPORARY_FAILURE");
    }
    let deadline = tokio::time::Instant::now() + MEDIA_CONNECT_WAIT;
    let ws = loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(LegEvent::Media(ws))) => break ws,
            Ok(Some(LegEvent::Gone(_))) | Ok(None) => {
                edge::record_unserved(shared, &edge_call, answered_at, "caller-hangup").await;
                return None;
            }
            Ok(Some(LegEvent::MediaFailed(why))) => {
                setup_failed(&format!("mod_audio_fork could not connect: {why}"));
                edge::record_unserved(shared, &edge_call, answered_at, "setup-failed").await;
                return Some("NORMAL_TEMPORARY_FAILURE");
            }
            Ok(Some(e)) => early.push(e),
            Err(_) => {
                setup_failed("mod_audio_fork never connected");
                edge::record_unserved(shared, &edge_call, answered_at, "setup-failed").await;
                return Some("NORMAL_TEMPORARY_FAILURE");
            }
        }
    };

    let mut edge = FsEdge {
        cfg,
        uuid: uuid.clone(),
        events,
        api,
        ws,
        pending: VecDeque::new(),
        pcm: Vec::with_capacity(320),
        inband: edge_call.inband,
        wide: cfg.sample_rate == 16000,
        can_dial: edge_call.can_dial,
        ring_timeout: shared.cfg.calling.ring_timeout,
        callee: None,
        streamed: 0,
        check_deadline: None,
        audio_heard: false,
        end: None,
    };
    for e in early {
        if let LegEvent::Dtmf(d, method) = e {
            edge.pending.push_back(EdgeEvent::Digit(d, method));
        }
    }
    edge::run_call(shared, edge_call, &mut edge, permit).await;
    if edge.callee.is_some() {
        let _ = api_call(
            api,
            format!("uuid_kill {} NORMAL_CLEARING", callee_uuid(&uuid)),
        )
        .await;
    }
    let _ = edge.ws.send(Message::Close(None)).await;
    edge.end.unwrap_or(Some("NORMAL_CLEARING"))
}

/// One FreeSWITCH call as the call driver sees it: the caller's channel (ESL events routed to
/// this call, API commands) and mod_audio_fork's websocket.
struct FsEdge<'a> {
    cfg: &'a FreeswitchConfig,
    uuid: String,
    events: &'a mut mpsc::Receiver<LegEvent>,
    api: &'a mpsc::Sender<Api>,
    ws: Box<WebSocket>,
    /// Events decided while carrying out a command (or typed ahead), to report next.
    pending: VecDeque<EdgeEvent>,
    pcm: Vec<i16>,
    inband: bool,
    /// The fork streams 16 kHz audio.
    wide: bool,
    can_dial: bool,
    ring_timeout: Duration,
    /// The calling service's outbound leg, if one exists: whether it has answered.
    callee: Option<bool>,
    /// The audio check: frames streamed since it was (re)armed, and until when its mark has
    /// to come back; `None` once FreeSWITCH has played our audio.
    streamed: u32,
    check_deadline: Option<tokio::time::Instant>,
    audio_heard: bool,
    /// How the caller's channel is to be hung up once the call is over (`Some(None)`: not
    /// ours to hang up), set when the edge ends the call.
    end: Option<Option<&'static str>>,
}

/// What the FreeSWITCH edge waits on.
enum FsInput {
    Pending,
    Leg(Option<LegEvent>),
    Media(Option<Result<Message, axum::Error>>),
    /// The audio check's mark did not come back in time.
    Silent,
}

impl FsEdge<'_> {
    fn kill_callee(&self) -> String {
        format!("uuid_kill {} NORMAL_CLEARING", callee_uuid(&self.uuid))
    }
}

impl edge::Edge for FsEdge<'_> {
    type Input = FsInput;

    async fn wait(&mut self, _buf: &mut [u8]) -> Option<FsInput> {
        if !self.pending.is_empty() {
            return Some(FsInput::Pending);
        }
        let check = self.check_deadline;
        // All cancel-safe: a channel receive, a websocket read, a sleep.
        tokio::select! {
            ev = self.events.recv() => Some(FsInput::Leg(ev)),
            msg = self.ws.next() => Some(FsInput::Media(msg)),
            _ = async { tokio::time::sleep_until(check.unwrap_or_else(tokio::time::Instant::now)).await }, if check.is_some() => Some(FsInput::Silent),
        }
    }

    async fn handle(&mut self, input: FsInput, _buf: &[u8]) -> Option<EdgeEvent> {
        match input {
            FsInput::Pending => self.pending.pop_front(),
            FsInput::Leg(Some(LegEvent::Dtmf(d, method))) => Some(EdgeEvent::Digit(d, method)),
            FsInput::Leg(Some(LegEvent::Gone(why))) => {
                self.end = Some(None);
                Some(EdgeEvent::Ended(why))
            }
            FsInput::Leg(Some(LegEvent::CalleeUp)) => {
                if self.callee != Some(false) {
                    return None;
                }
                // The caller returns to the park (and to us) when the callee hangs up.
                let uuid = &self.uuid;
                let api = self.api;
                let joined = async {
                    api_call(api, format!("uuid_setvar {uuid} park_after_bridge true")).await?;
                    api_call(api, format!("uuid_bridge {uuid} {}", callee_uuid(uuid))).await
                };
                match joined.await {
                    Ok(_) => {
                        self.callee = Some(true);
                        Some(EdgeEvent::Dial(DialEvent::Answered))
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot bridge the outbound leg");
                        self.callee = None;
                        let _ = api_call(self.api, self.kill_callee()).await;
                        Some(EdgeEvent::Dial(DialEvent::Failed))
                    }
                }
            }
            FsInput::Leg(Some(LegEvent::CalleeGone(cause))) => {
                let answered = self.callee.take()?;
                Some(EdgeEvent::Dial(match (answered, cause.as_str()) {
                    (true, _) => DialEvent::Ended,
                    (false, "USER_BUSY") => DialEvent::Busy,
                    (false, "NO_ANSWER" | "NO_USER_RESPONSE" | "ALLOTTED_TIMEOUT") => {
                        DialEvent::NoAnswer
                    }
                    (false, _) => DialEvent::Failed,
                }))
            }
            FsInput::Leg(Some(
                LegEvent::Media(_) | LegEvent::MediaFailed(_) | LegEvent::Parked(_),
            )) => None,
            FsInput::Leg(None) => {
                self.end = Some(Some("NORMAL_CLEARING"));
                Some(EdgeEvent::Ended("internal".into()))
            }
            FsInput::Media(Some(Ok(Message::Binary(b)))) => {
                if !self.inband {
                    return None;
                }
                crate::media::g711::l16le_read(&b, &mut self.pcm);
                if self.wide {
                    // 16 kHz to the detector's 8 kHz: the mean of each pair (a low-pass enough
                    // for keypad tones, all below 1.7 kHz).
                    let narrow: Vec<i16> = self
                        .pcm
                        .chunks_exact(2)
                        .map(|p| ((i32::from(p[0]) + i32::from(p[1])) / 2) as i16)
                        .collect();
                    Some(EdgeEvent::Pcm(narrow))
                } else {
                    Some(EdgeEvent::Pcm(self.pcm.clone()))
                }
            }
            FsInput::Media(Some(Ok(Message::Text(t)))) => {
                match mark_event(t.as_str()) {
                    Some(("audio-check", "playout")) => {
                        self.audio_heard = true;
                        self.check_deadline = None;
                        debug!("FreeSWITCH plays our audio");
                    }
                    // Barge-in cleared the mark with the audio: check again on what follows.
                    Some(("audio-check", _)) => {
                        self.check_deadline = None;
                        self.streamed = 0;
                    }
                    _ => {
                        debug!(text = %t.as_str().chars().take(100).collect::<String>(), "mod_audio_fork")
                    }
                }
                None
            }
            FsInput::Media(Some(Ok(_))) => None,
            FsInput::Media(Some(Err(_)) | None) => {
                // A hangup closes the fork and brings CHANNEL_HANGUP_COMPLETE, in either
                // order: only a close without a hangup is a media failure.
                if let Some(why) = edge::wait_for(self.events, caller_gone).await {
                    self.end = Some(None);
                    return Some(EdgeEvent::Ended(why));
                }
                info!("media connection closed");
                self.end = Some(Some("NORMAL_TEMPORARY_FAILURE"));
                Some(EdgeEvent::Ended("media-lost".into()))
            }
            FsInput::Silent => {
                // FreeSWITCH took our audio but played none of it: the caller hears silence.
                // Such a call must not look healthy: it ends, with its own end reason.
                tracing::error!(
                    "FreeSWITCH played none of the call's audio in {AUDIO_CHECK_WAIT:?}: the caller \
                     hears nothing. Set send_silence_when_idle=-1 before park in the dialplan and \
                     rtp-timer-name=soft in the SIP profile (README, Running behind FreeSWITCH)"
                );
                metrics::counter!("topup_ivr_freeswitch_silent_calls_total").increment(1);
                self.end = Some(Some("NORMAL_TEMPORARY_FAILURE"));
                Some(EdgeEvent::Ended("no-audio".into()))
            }
        }
    }

    async fn send(&mut self, _now: Instant, command: EdgeCommand) {
        match command {
            EdgeCommand::Media(pkt) if pkt.len() > 12 => {
                // Bidirectional mod_audio_fork takes L16 (little-endian) at bidir_rate: the
                // player made exactly that.
                let _ = self
                    .ws
                    .send(Message::Binary(pkt[12..].to_vec().into()))
                    .await;
                self.streamed += 1;
                if !self.audio_heard
                    && self.check_deadline.is_none()
                    && self.streamed >= AUDIO_CHECK_AFTER
                {
                    let mark = r#"{"type":"mark","data":{"name":"audio-check"}}"#;
                    let _ = self.ws.send(Message::Text(mark.into())).await;
                    self.check_deadline = Some(tokio::time::Instant::now() + AUDIO_CHECK_WAIT);
                }
            }
            EdgeCommand::Media(_) => {}
            EdgeCommand::Flush => {
                let _ = self
                    .ws
                    .send(Message::Text(r#"{"type":"killAudio"}"#.into()))
                    .await;
            }
            EdgeCommand::Transfer {
                escalation,
                target,
                reason,
            } => {
                played_out(&mut self.ws).await;
                let r = transfer(
                    self.api,
                    &self.uuid,
                    self.cfg,
                    &escalation,
                    &target,
                    &reason,
                )
                .await;
                if r.is_ok() {
                    self.end = Some(None);
                }
                self.pending.push_back(EdgeEvent::Transferred(r));
            }
            EdgeCommand::Hangup(_) => {
                played_out(&mut self.ws).await;
                self.end = Some(Some("NORMAL_CLEARING"));
            }
            EdgeCommand::Dial { number, caller } => {
                match originate(
                    self.api,
                    self.cfg,
                    &self.uuid,
                    &number,
                    &caller,
                    self.ring_timeout,
                )
                .await
                {
                    Ok(()) => self.callee = Some(false),
                    Err(e) => {
                        warn!(error = %e, "cannot place the call");
                        self.pending.push_back(EdgeEvent::Dial(DialEvent::Failed));
                    }
                }
            }
            // FreeSWITCH bridges the legs and holds nothing of ours.
            EdgeCommand::Announcing(_) => {}
            EdgeCommand::DropDial => {
                if self.callee.take().is_some() {
                    let _ = api_call(self.api, self.kill_callee()).await;
                }
            }
        }
    }

    fn can_dial(&self) -> bool {
        self.can_dial
    }
}

/// A mod_audio_fork mark report (`{"type":"mark","data":{"name":..,"event":..}}`): its name
/// and event (`playout` once the audio before it was played, `cleared` when it was dropped).
fn mark_event(text: &str) -> Option<(&str, &str)> {
    #[derive(serde::Deserialize)]
    struct Mark<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        #[serde(borrow)]
        data: MarkData<'a>,
    }
    #[derive(serde::Deserialize)]
    struct MarkData<'a> {
        name: &'a str,
        #[serde(default)]
        event: &'a str,
    }
    let m: Mark = serde_json::from_str(text).ok()?;
    (m.kind == "mark").then_some((m.data.name, m.data.event))
}

/// Places the calling service's outbound leg with `bgapi originate` (a blocking `api` would
/// hold the event socket for every call while it rings); the leg parks when answered
/// (`CHANNEL_ANSWER` → bridged with the caller) and its job or hangup reports a failure.
async fn originate(
    api: &mpsc::Sender<Api>,
    cfg: &FreeswitchConfig,
    uuid: &str,
    number: &str,
    caller: &str,
    ring: Duration,
) -> Result<(), String> {
    let Some(template) = &cfg.calling_gateway else {
        return Err("no [freeswitch] calling_gateway".into());
    };
    let callee = callee_uuid(uuid);
    let caller: String = caller
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '+')
        .collect();
    let command = format!(
        "bgapi originate {{origination_uuid={callee},origination_caller_id_number={caller},originate_timeout={}}}{} &park()",
        ring.as_secs().max(1),
        template.replace("{number}", number),
    );
    esl_call(api, command, vec![("Job-UUID".into(), callee)])
        .await
        .map(drop)
}

/// Waits until mod_audio_fork has played what we streamed (`mark` → `playout`).
async fn played_out(ws: &mut WebSocket) {
    let mark = r#"{"type":"mark","data":{"name":"played-out"}}"#;
    if ws.send(Message::Text(mark.into())).await.is_err() {
        return;
    }
    let started = Instant::now();
    let wait = async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str())
                && v["type"] == "mark"
                && v["data"]["name"] == "played-out"
            {
                return;
            }
        }
    };
    if tokio::time::timeout(PLAYOUT_WAIT, wait).await.is_err() {
        debug!(waited = ?started.elapsed(), "no mark playout in time");
    }
}

/// `uuid_setvar` the escalation id and reason, stop the media fork (media bugs outlive a
/// transfer), then `uuid_transfer` to the plan's target in the configured context.
async fn transfer(
    api: &mpsc::Sender<Api>,
    uuid: &str,
    cfg: &FreeswitchConfig,
    escalation: &str,
    target: &str,
    reason: &str,
) -> Result<(), String> {
    api_call(
        api,
        format!("uuid_setvar {uuid} topup_escalation_id {escalation}"),
    )
    .await?;
    let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
    api_call(
        api,
        format!("uuid_setvar {uuid} topup_escalation_reason {reason}"),
    )
    .await?;
    let _ = api_call(api, format!("uuid_audio_fork {uuid} stop topup-ivr")).await;
    api_call(
        api,
        format!(
            "uuid_transfer {uuid} {target} XML {}",
            cfg.escalation_context
        ),
    )
    .await?;
    Ok(())
}
