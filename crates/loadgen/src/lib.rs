//! The load generator (`topup-loadgen`, also `topup-ivr loadgen`): places many concurrent SIP calls against a running service over
//! loopback, each with real RTP both ways at 50 packets/s, answering prompts with RFC 4733 keys
//! along a script, and prints what it measured (see BENCHMARKS.md for how it is used).
//!
//! Signalling goes through the same sans-IO [`Endpoint`] the service uses (as a UAC), on one
//! socket; each call's media is a sans-IO [`caller::Caller`] on its own UDP socket, driven by a
//! task. The service's CPU and memory are read from /proc.

pub mod caller;
pub mod proc;
pub mod report;
pub mod script;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, mpsc, oneshot};

use caller::{Action, Caller, PromptIndex};
use report::{Outcome, Report};
use script::Script;
use topup_media::g711::Codec;
use topup_media::prompts::{LoadOptions, PromptStore};
use topup_sip::endpoint::{CallHandle, Endpoint, EndpointConfig, SipEvent};
use topup_sip::sdp::{self, Direction, Negotiated};

/// What a call task asks of the SIP task.
enum SipCommand {
    /// Place a call: its events go to `events`, its handle to `reply`.
    Invite {
        peer: SocketAddr,
        uri: String,
        from: String,
        sdp: Vec<u8>,
        events: mpsc::Sender<SipEvent>,
        reply: oneshot::Sender<CallHandle>,
    },
    Hangup(CallHandle),
}

/// Sleeps until `at`, or forever when there is no deadline (a `select!` branch for the
/// endpoint's next timer).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The telephone-event payload type we offer.
const EVENT_PT: u8 = 101;

#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// The service's SIP address.
    #[arg(long, default_value = "127.0.0.1:5060")]
    pub target: SocketAddr,
    /// The number dialled (selects the dialplan), e.g. `echo` or `1000`.
    #[arg(long, default_value = "echo")]
    pub number: String,
    /// Caller ID (From user).
    #[arg(long, default_value = "+12015550100")]
    pub caller: String,
    /// What each caller does: a built-in script (echo, card, listen) or steps
    /// (`wait`, `keys:123#`, `hold:5s`, `loop`, `bye`, `end`). Default: the echo script.
    #[arg(long, default_value = "echo")]
    pub script: String,
    /// Calls to place in all.
    #[arg(long, default_value_t = 10)]
    pub calls: usize,
    /// Most calls up at once (default: all of them).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// New calls per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// How long each call lasts (a script that ends sooner hangs up sooner).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub length: Duration,
    /// Codec offered first: pcmu or pcma.
    #[arg(long, default_value = "pcmu")]
    pub codec: String,
    /// PINs for `{pin}` in the script: one per line, or the CSV of `cards generate`; each call
    /// takes the next one.
    #[arg(long)]
    pub pins: Option<PathBuf>,
    /// The service's prompt directory (to recognise the start of each prompt on the wire).
    #[arg(long, default_value = "prompts")]
    pub prompts: PathBuf,
    /// The service's process id, for its CPU and memory (default: the one `topup-ivr serve`).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Silence that ends a `wait` step.
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    pub quiet: Duration,
    /// Local address for our SIP and RTP sockets.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("{0}")]
    Script(#[from] script::ScriptError),
    #[error("--codec must be pcmu or pcma")]
    Codec,
    #[error("the script presses `{{pin}}`: give --pins FILE")]
    NoPins,
    #[error("--pins {0}: {1}")]
    Pins(PathBuf, String),
    #[error("prompts: {0}")]
    Prompts(String),
    #[error("cannot bind the SIP socket on {0}: {1}")]
    Bind(IpAddr, std::io::Error),
    #[error("--rate must be above 0")]
    Rate,
}

/// What every call task shares.
struct Ctx {
    args: LoadgenArgs,
    script: Arc<Script>,
    index: Arc<PromptIndex>,
    codec: Codec,
    sip: mpsc::Sender<SipCommand>,
    uri: String,
    active: AtomicUsize,
}

/// Runs the load and returns what it measured.
pub async fn run(args: LoadgenArgs) -> Result<Report, LoadgenError> {
    let text = script::builtin(&args.script).unwrap_or(&args.script);
    let script = Arc::new(Script::parse(text)?);
    let codec = Codec::from_name(&args.codec.to_ascii_uppercase()).ok_or(LoadgenError::Codec)?;
    if args.rate.is_nan() || args.rate <= 0.0 {
        return Err(LoadgenError::Rate);
    }
    let pins = match (&args.pins, script.uses_pin()) {
        (Some(p), _) => read_pins(p)?,
        (None, true) => return Err(LoadgenError::NoPins),
        (None, false) => vec![],
    };
    let store = PromptStore::load(&args.prompts, LoadOptions::default())
        .map_err(|e| LoadgenError::Prompts(e.to_string()))?;
    let index = Arc::new(PromptIndex::new(&store));
    drop(store);

    let socket = UdpSocket::bind(SocketAddr::new(args.bind, 0))
        .await
        .map_err(|e| LoadgenError::Bind(args.bind, e))?;
    let local = socket
        .local_addr()
        .map_err(|e| LoadgenError::Bind(args.bind, e))?;
    let endpoint = Endpoint::new(
        EndpointConfig {
            local_addr: local,
            user_agent: "topup-ivr-loadgen".into(),
            tsx: Default::default(),
        },
        rand::random(),
    );
    let (sip_tx, sip_rx) = mpsc::channel(8192);
    let sip_task = tokio::spawn(uac(socket, endpoint, sip_rx));

    let uri = format!("sip:{}@{}", args.number, args.target);
    let concurrency = args.concurrency.unwrap_or(args.calls).max(1);
    let ctx = Arc::new(Ctx {
        script: script.clone(),
        index,
        codec,
        sip: sip_tx,
        uri,
        active: AtomicUsize::new(0),
        args: args.clone(),
    });
    let pid = args.pid.or_else(proc::find_server);
    let sampler = proc::Sampler::start(pid, {
        let ctx = ctx.clone();
        move || ctx.active.load(Ordering::Relaxed)
    });
    // Let the sampler see the idle service first.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(args.calls);
    let spacing = Duration::from_secs_f64(1.0 / args.rate);
    for i in 0..args.calls {
        tokio::time::sleep_until((started + spacing * i as u32).into()).await;
        let permit = gate.clone().acquire_owned().await.expect("never closed");
        let ctx = ctx.clone();
        let pin = if pins.is_empty() {
            None
        } else {
            Some(pins[i % pins.len()].clone())
        };
        tasks.push(tokio::spawn(async move {
            let r = one_call(&ctx, i, pin).await;
            drop(permit);
            r
        }));
    }
    let mut outcomes = Vec::with_capacity(tasks.len());
    for t in tasks {
        outcomes.push(
            t.await
                .unwrap_or_else(|e| Outcome::failed(format!("task: {e}"))),
        );
    }
    let elapsed = started.elapsed();
    let samples = sampler.stop().await;
    drop(ctx);
    let _ = sip_task.await;
    Ok(Report::build(&args, text, pid, elapsed, outcomes, samples))
}

fn read_pins(path: &PathBuf) -> Result<Vec<String>, LoadgenError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| LoadgenError::Pins(path.clone(), e.to_string()))?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut pins = vec![];
    let mut column = None;
    if let Some(first) = lines.next() {
        // The CSV of `cards generate` / `cards import`: take the `pin` column.
        if first.contains(',') {
            column = first.split(',').position(|h| h.trim() == "pin");
            if column.is_none() {
                return Err(LoadgenError::Pins(
                    path.clone(),
                    "a CSV file needs a `pin` column in its header".into(),
                ));
            }
        } else {
            pins.push(first.to_string());
        }
    }
    for l in lines {
        let pin = match column {
            Some(c) => l.split(',').nth(c).unwrap_or("").trim(),
            None => l,
        };
        if !pin.is_empty() {
            pins.push(pin.to_string());
        }
    }
    if pins.is_empty() {
        return Err(LoadgenError::Pins(
            path.clone(),
            "no PINs in the file".into(),
        ));
    }
    Ok(pins)
}

/// The SIP side: one socket, one endpoint acting as UAC for every call.
async fn uac(socket: UdpSocket, mut endpoint: Endpoint, mut commands: mpsc::Receiver<SipCommand>) {
    let mut routes: HashMap<CallHandle, mpsc::Sender<SipEvent>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    let mut open = true;
    loop {
        let timeout = endpoint.poll_timeout();
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                if let Ok((n, from)) = r {
                    endpoint.handle_datagram(Instant::now(), from, &buf[..n]);
                }
            }
            cmd = commands.recv(), if open => match cmd {
                Some(SipCommand::Invite { peer, uri, from, sdp, events, reply }) => {
                    let call = endpoint.invite(Instant::now(), peer, &uri, &from, sdp);
                    routes.insert(call, events);
                    let _ = reply.send(call);
                }
                Some(SipCommand::Hangup(call)) => endpoint.hangup(Instant::now(), call),
                None => open = false,
            },
            _ = sleep_until(timeout) => endpoint.handle_timeout(Instant::now()),
        }
        while let Some(t) = endpoint.poll_transmit() {
            let _ = socket.send_to(&t.payload, t.to).await;
        }
        while let Some(ev) = endpoint.poll_event() {
            let call = match &ev {
                SipEvent::Outbound { call, .. } | SipEvent::Ended { call, .. } => *call,
                SipEvent::Confirmed { call, .. }
                | SipEvent::Dtmf { call, .. }
                | SipEvent::Reoffer { call, .. }
                | SipEvent::ReferResult { call, .. } => *call,
                SipEvent::Incoming(inc) => {
                    endpoint.reject(Instant::now(), inc.call, 603, None);
                    continue;
                }
            };
            let last = matches!(
                ev,
                SipEvent::Ended { .. } | SipEvent::Outbound { code: 300.., .. }
            );
            if let Some(tx) = routes.get(&call) {
                let _ = tx.try_send(ev);
            }
            if last {
                routes.remove(&call);
            }
        }
        while let Some(t) = endpoint.poll_transmit() {
            let _ = socket.send_to(&t.payload, t.to).await;
        }
        // Every call is over and every request answered: what transactions remain only
        // absorb retransmissions (Timer K, D), which the service does not need from us.
        if !open && endpoint.active_calls() == 0 && endpoint.awaiting_answers() == 0 {
            return;
        }
    }
}

/// One call: INVITE, media and script until the end, BYE.
async fn one_call(ctx: &Ctx, i: usize, pin: Option<String>) -> Outcome {
    let args = &ctx.args;
    let rtp = match UdpSocket::bind(SocketAddr::new(args.bind, 0)).await {
        Ok(s) => s,
        Err(e) => return Outcome::failed(format!("no local RTP port: {e}")),
    };
    let port = rtp.local_addr().map(|a| a.port()).unwrap_or(0);
    let offer = Negotiated {
        remote_addr: args.bind,
        remote_port: 0,
        codec: ctx.codec,
        telephone_event: Some(EVENT_PT),
        direction: Direction::SendRecv,
    };
    let sdp = sdp::write_answer(&offer, args.bind, port, i as u64 + 1, 1);
    let (events_tx, mut events) = mpsc::channel(16);
    let (reply_tx, reply) = oneshot::channel();
    let t0 = Instant::now();
    let cmd = SipCommand::Invite {
        peer: args.target,
        uri: ctx.uri.clone(),
        from: args.caller.clone(),
        sdp,
        events: events_tx,
        reply: reply_tx,
    };
    if ctx.sip.send(cmd).await.is_err() {
        return Outcome::failed("SIP task gone".into());
    }
    let Ok(call) = reply.await else {
        return Outcome::failed("SIP task gone".into());
    };
    let (answer, setup) = loop {
        match events.recv().await {
            Some(SipEvent::Outbound {
                code: 200..=299,
                sdp: Some(answer),
                ..
            }) => break (answer, t0.elapsed()),
            Some(SipEvent::Outbound { code, .. }) if code >= 300 => {
                return Outcome::refused(code);
            }
            Some(SipEvent::Ended { .. }) | None => {
                return Outcome::failed("the call ended before it was answered".into());
            }
            _ => {}
        }
    };
    let negotiated = match sdp::negotiate(&answer, &[ctx.codec]) {
        Ok(n) => n,
        Err(e) => {
            let _ = ctx.sip.send(SipCommand::Hangup(call)).await;
            return Outcome::failed(format!("bad SDP answer: {e}"));
        }
    };
    let remote = SocketAddr::new(negotiated.remote_addr, negotiated.remote_port);
    ctx.active.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    let mut c = Caller::new(
        now,
        ctx.codec,
        negotiated.telephone_event.unwrap_or(EVENT_PT),
        ctx.script.clone(),
        pin,
        ctx.index.clone(),
        args.quiet,
        args.length,
        rand::random(),
    );
    let mut buf = [0u8; 1500];
    let result: Result<(), String> = loop {
        let now = Instant::now();
        while let Some(p) = c.poll_transmit(now) {
            let _ = rtp.send_to(p, remote).await;
        }
        match c.poll_action() {
            Some(Action::Hangup) => {
                hang_up(ctx, call).await;
                break Ok(());
            }
            Some(Action::Fail(reason)) => {
                hang_up(ctx, call).await;
                break Err(reason);
            }
            None => {}
        }
        let wake = c.poll_timeout();
        tokio::select! {
            r = rtp.recv_from(&mut buf) => {
                if let Ok((n, _)) = r {
                    c.handle_packet(Instant::now(), &buf[..n]);
                }
            }
            ev = events.recv() => match ev {
                Some(SipEvent::Ended { .. }) | None => break c.remote_hangup(),
                _ => {}
            },
            _ = tokio::time::sleep_until(wake.into()) => c.handle_timeout(Instant::now()),
        }
    };
    ctx.active.fetch_sub(1, Ordering::Relaxed);
    Outcome::done(setup, c.into_stats(), result)
}

async fn hang_up(ctx: &Ctx, call: CallHandle) {
    // The BYE's transaction is the SIP task's to finish: it runs until every one is done.
    let _ = ctx.sip.send(SipCommand::Hangup(call)).await;
}
