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
use crate::server::state::Shared;
use crate::shutdown::Shutdown;
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
    /// The originate job failed, with its cause: the leg never came, if it had not answered
    /// (once it has, only its hangup ends it: the job can report an error after the answer,
    /// when the leg was bridged away from it, while the call goes on).
    CalleeNotPlaced(String),
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

/// Why a command on the event socket did not do what it asked.
#[derive(Debug, thiserror::Error)]
pub enum EslError {
    #[error("event socket down")]
    Down,
    #[error("event socket lost")]
    Lost,
    #[error("no reply in {0:?}")]
    NoReply(Duration),
    #[error("a command with a line break is refused")]
    LineBreak,
    /// FreeSWITCH answered `-ERR ...`.
    #[error("{0}")]
    Refused(String),
    #[error("no [freeswitch] calling_gateway")]
    NoGateway,
    #[error("the caller left")]
    CallerLeft,
    #[error("not parked again in {0:?}")]
    NotParked(Duration),
}

/// A request to the ESL connection: an `api` command and where its reply goes.
struct Api {
    /// The whole command line (`api ...`, `bgapi ...`).
    command: String,
    /// Extra header lines (`Job-UUID` for bgapi).
    headers: Vec<(String, String)>,
    reply: oneshot::Sender<Result<String, EslError>>,
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
    // The media listener stops with the service (the connections it upgraded are the
    // calls', which end before).
    let mut stop = shared.shutdown.clone();
    let server = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop.wait_for(|s| *s == Shutdown::Stop).await;
        };
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await;
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
                let mut waiting: VecDeque<oneshot::Sender<Result<String, EslError>>> =
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
                                Some(_) => { let _ = api.reply.send(Err(EslError::Lost)); break; }
                                None => { let _ = api.reply.send(Err(EslError::LineBreak)); }
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
                    let _ = w.send(Err(EslError::Lost));
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
                Some(api) = api_rx.recv() => { let _ = api.reply.send(Err(EslError::Down)); }
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
    let _ = server.await;
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
    waiting: &mut VecDeque<oneshot::Sender<Result<String, EslError>>>,
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
                        route(LegEvent::CalleeNotPlaced(cause.trim().to_string()))
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

mod call;

use call::*;
