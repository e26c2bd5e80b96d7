//! The SMS gateway: the tokio edge around the sans-IO SMPP [`Session`].
//!
//! One task per configured SMSC keeps a TCP connection bound (reconnecting with a backoff of
//! 1 s doubling to 30 s, and saying clearly why a bind was refused). A central loop owns the
//! outbox side: it takes due rows from the database, routes each to the connection whose
//! prefix is the longest match for its destination, encodes it (GSM 03.38 or UCS-2, split
//! with a UDH when long), claims it, submits the parts the SMSC has not accepted yet, and
//! records every answer: the SMSC's message id per part, a refusal (retried with backoff when
//! temporary, failed after `sms.max_attempts`), or the connection dropping first (queued again).
//! Delivery receipts update the parts; MO messages are joined when long and handed to
//! [`Commands`], and the SMSC's `deliver_sm` is answered only once the command is recorded,
//! with a temporary error when the database could not take it, so the SMSC delivers it again.
//! A low-balance check runs every `sms.alert_every`.
//!
//! At least once, never lost: a row is `sending` only while a connection holds its parts;
//! rows left `sending` by a stop are queued again at start. A part the SMSC accepted is never
//! submitted again (its message id is stored), so a resend after a drop repeats at most the
//! parts whose answer was lost with the connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::commands::Keywords;
use super::messages::Messages;
use super::outbox::{ReceiptResult, retry_at};
use super::service::{Commands, Mo};
use super::session::{
    CommandStatus, Event, Incoming, Session, SessionConfig, Submit, SubmitId, is_temporary,
    status_name,
};
use super::text::{self, Reassembler};
use crate::clock::now_ms;
use crate::config::{SmsConfig, SmscConfig};
use crate::server::state::LinkStatus;
use crate::shutdown::Shutdown;
use crate::sms::messages::SmsTexts;
use crate::topup::adapters::Adapters;
use crate::topup::numbers::Hlr;
use crate::topup::{Core, TopupError};

/// What a delivery receipt says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The SMSC's id of the message it reports on.
    pub message_id: String,
    /// `Some(true)` delivered, `Some(false)` finally not delivered, `None` not final yet
    /// (ENROUTE, ACCEPTD).
    pub delivered: Option<bool>,
    /// The state and error as the SMSC wrote them, e.g. `DELIVRD err:000`.
    pub status: String,
}

/// Reads a delivery receipt: the `receipted_message_id` and `message_state` TLVs when the
/// SMSC sends them, else the text of SMPP 3.4 Appendix B
/// (`id:… sub:… dlvrd:… submit date:… done date:… stat:DELIVRD err:000 text:…`).
pub fn parse_receipt(m: &Incoming) -> Option<Receipt> {
    let text = String::from_utf8_lossy(&m.data);
    let field = |name: &str| -> Option<String> {
        let lower = text.to_ascii_lowercase();
        let mut from = 0;
        while let Some(i) = lower[from..].find(name) {
            let at = from + i;
            // A whole word: "id:" must not match inside "sid:".
            if at == 0 || lower.as_bytes()[at - 1] == b' ' {
                let rest = &text[at + name.len()..];
                let v: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                return Some(v);
            }
            from = at + name.len();
        }
        None
    };
    let message_id = m
        .receipted_message_id
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| field("id:"))
        .filter(|s| !s.is_empty())?;
    let stat = field("stat:").map(|s| s.to_ascii_uppercase());
    let err = field("err:");
    let delivered = match (m.message_state, stat.as_deref()) {
        // SMPP 3.4 §5.2.28: 2 DELIVERED; 3 EXPIRED, 4 DELETED, 5 UNDELIVERABLE, 8 REJECTED;
        // 1 ENROUTE, 6 ACCEPTED, 7 UNKNOWN are not final.
        (Some(2), _) => Some(true),
        (Some(3 | 4 | 5 | 8), _) => Some(false),
        (Some(_), _) => None,
        (None, Some("DELIVRD")) => Some(true),
        (None, Some("EXPIRED" | "DELETED" | "UNDELIV" | "REJECTD")) => Some(false),
        (None, _) => None,
    };
    let mut status = stat.unwrap_or_else(|| match m.message_state {
        Some(s) => format!("state {s}"),
        None => "no state".into(),
    });
    if let Some(e) = err {
        status.push_str(&format!(" err:{e}"));
    }
    Some(Receipt {
        message_id,
        delivered,
        status,
    })
}

/// The command keywords of `messages`, kept with the texts they were read from.
fn keywords_of(messages: Arc<Messages>) -> (Arc<Messages>, Arc<Keywords>) {
    let keywords = Arc::new(Keywords::new(messages.keywords()));
    (messages, keywords)
}

/// The SMSC's own id of an incoming message, from the configured TLV.
pub fn mo_id(m: &Incoming, tag: u16) -> Option<String> {
    let raw = if tag == 0x001E {
        m.receipted_message_id.clone()
    } else {
        m.other_tlvs.iter().find(|(t, _)| *t == tag).map(|(_, v)| {
            String::from_utf8_lossy(v)
                .trim_end_matches('\0')
                .to_string()
        })
    };
    raw.map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() <= 64)
}

/// Orders for a connection task.
enum LinkCmd {
    Submit(SubmitId, Submit),
    /// Answer a `deliver_sm` of session `generation`.
    Respond {
        generation: u64,
        seq: u32,
        status: CommandStatus,
    },
    Unbind,
}

struct LinkEvent {
    link: usize,
    generation: u64,
    event: Event,
}

/// What the central loop knows of one connection.
struct Link {
    cfg: SmscConfig,
    tx: mpsc::UnboundedSender<LinkCmd>,
    bound: bool,
    throttled_until: i64,
    in_flight: usize,
}

impl Link {
    /// Parts it may still be given: twice its window, so the next ones wait in its session
    /// while the SMSC answers the first.
    fn room(&self, now: i64) -> usize {
        if self.bound && now >= self.throttled_until {
            (self.cfg.window * 2).saturating_sub(self.in_flight)
        } else {
            0
        }
    }
}

/// A part handed to a connection and not answered yet.
struct InFlight {
    row: String,
    part: i64,
    link: usize,
    attempts: i64,
}

/// What the gateway uses of the service, and nothing else.
pub struct SmsEnv {
    pub core: Core,
    pub adapters: Adapters,
    pub hlr: Option<Arc<Hlr>>,
    /// The SMS texts and keywords (replaced whole on reload).
    pub texts: SmsTexts,
    /// `[sms]`: the SMSCs, retries, alerts.
    pub cfg: SmsConfig,
    pub shutdown: tokio::sync::watch::Receiver<Shutdown>,
    /// Where the connections' state is published (for `/health`).
    pub links: Arc<std::sync::RwLock<Vec<LinkStatus>>>,
}

/// Runs the gateway until the service stops.
pub async fn run(env: SmsEnv) {
    let env = Arc::new(env);
    let cfg = env.cfg.clone();
    let keywords = keywords_of(env.texts.current());
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<LinkEvent>();
    let mut links = vec![];
    let mut tasks = vec![];
    for (i, s) in cfg.smscs.iter().enumerate() {
        let (tx, rx) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(link_task(i, s.clone(), rx, ev_tx.clone())));
        links.push(Link {
            cfg: s.clone(),
            tx,
            bound: false,
            throttled_until: 0,
            in_flight: 0,
        });
    }
    drop(ev_tx);
    if !cfg.smscs.iter().any(|s| s.prefixes.is_empty()) {
        warn!("no [[sms.smsc]] without prefixes: SMS to other destinations will fail");
    }
    match env.core.requeue_sending(now_ms()).await {
        Ok(n) if n > 0 => info!(
            count = n,
            "SMS left sending by the last stop are queued again"
        ),
        Ok(_) => {}
        Err(e) => error!(error = %e, "cannot queue SMS left sending again"),
    }
    let mut g = Gateway {
        env: env.clone(),
        cfg,
        links,
        in_flight: HashMap::new(),
        next_id: 1,
        reassembler: Reassembler::new(Duration::from_secs(10 * 60), 10_000),
        keywords,
    };
    g.publish();
    let mut shutdown = env.shutdown.clone();
    let mut fill = tokio::time::interval(Duration::from_millis(250));
    fill.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut alerts = tokio::time::interval(g.cfg.alert_every);
    alerts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = ev_rx.recv() => match ev {
                Some(ev) => g.on_event(ev).await,
                None => break,
            },
            _ = fill.tick() => {
                g.reassembler.handle_timeout(std::time::Instant::now());
                g.fill().await;
            }
            _ = alerts.tick() => g.alerts().await,
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() == Shutdown::Stop {
                    break;
                }
            }
        }
    }
    // Let answers to parts already submitted arrive, then unbind.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while !g.in_flight.is_empty() {
        match tokio::time::timeout_at(deadline, ev_rx.recv()).await {
            Ok(Some(ev)) => g.on_event(ev).await,
            _ => break,
        }
    }
    for l in &g.links {
        let _ = l.tx.send(LinkCmd::Unbind);
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
}

struct Gateway {
    env: Arc<SmsEnv>,
    cfg: SmsConfig,
    links: Vec<Link>,
    in_flight: HashMap<SubmitId, InFlight>,
    next_id: SubmitId,
    reassembler: Reassembler,
    /// The command keywords of the SMS texts they were read from (rebuilt when the texts
    /// are reloaded).
    keywords: (Arc<Messages>, Arc<Keywords>),
}

/// Runs a store call a few times before giving up: a row must not be left `sending` because
/// the database was briefly busy.
async fn retrying<T, F, Fut>(what: &str, mut f: F) -> Result<T, TopupError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, TopupError>>,
{
    let mut delay = Duration::from_millis(100);
    let mut tries = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if tries < 4 => {
                warn!(error = %e, what, "SMS store call failed; trying again");
                tokio::time::sleep(delay).await;
                delay *= 4;
                tries += 1;
            }
            Err(e) => {
                error!(error = %e, what, "SMS store call failed");
                return Err(e);
            }
        }
    }
}

impl Gateway {
    fn publish(&self) {
        let mut s = self.env.links.write().unwrap_or_else(|p| p.into_inner());
        *s = self
            .links
            .iter()
            .map(|l| LinkStatus {
                name: l.cfg.name.clone(),
                bound: l.bound,
            })
            .collect();
    }

    /// Hands due rows to connections with room.
    async fn fill(&mut self) {
        let now = now_ms();
        let room: usize = self.links.iter().map(|l| l.room(now)).sum();
        if room == 0 {
            return;
        }
        let core = &self.env.core;
        let rows = match core.due_sms(now, room.min(200) as i64).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read the SMS outbox");
                return;
            }
        };
        for row in rows {
            let Some(li) = self.cfg.route(&row.destination) else {
                let err = "no SMSC carries this destination (sms.smsc prefixes)";
                let _ = claim_and_fail(core, &row.id, "-", err, now).await;
                continue;
            };
            if self.links[li].room(now) == 0 {
                continue;
            }
            // A part of an earlier attempt still waits for its answer: sending the row again
            // now could repeat that part.
            if self.in_flight.values().any(|f| f.row == row.id) {
                continue;
            }
            let encoded = match text::encode(&row.body, row.udh_ref as u8) {
                Ok(e) => e,
                Err(e) => {
                    let _ = claim_and_fail(
                        core,
                        &row.id,
                        &self.links[li].cfg.name,
                        &e.to_string(),
                        now,
                    )
                    .await;
                    continue;
                }
            };
            let name = self.links[li].cfg.name.clone();
            match core
                .claim_sms(&row.id, &name, encoded.parts.len() as i64, now)
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    warn!(error = %e, "cannot claim an SMS");
                    continue;
                }
            }
            let accepted = match retrying("accepted parts", || core.accepted_parts(&row.id)).await {
                Ok(a) => a,
                Err(e) => {
                    let _ = core.sms_unsent(&row.id, &e.to_string(), now).await;
                    continue;
                }
            };
            let source = self.links[li]
                .cfg
                .sender
                .clone()
                .unwrap_or_else(|| self.cfg.sender.clone());
            let mut sent = 0;
            for (i, part) in encoded.parts.iter().enumerate() {
                let part_no = i as i64 + 1;
                if accepted.contains(&part_no) {
                    continue;
                }
                let id = self.next_id;
                self.next_id += 1;
                self.in_flight.insert(
                    id,
                    InFlight {
                        row: row.id.clone(),
                        part: part_no,
                        link: li,
                        attempts: row.attempts + 1,
                    },
                );
                self.links[li].in_flight += 1;
                sent += 1;
                let submit = Submit {
                    source: source.clone(),
                    destination: row.destination.clone(),
                    esm_class: encoded.esm_class(),
                    data_coding: encoded.coding.data_coding(),
                    short_message: part.clone(),
                    receipt: self.cfg.receipts,
                };
                if self.links[li].tx.send(LinkCmd::Submit(id, submit)).is_err() {
                    // The connection task is gone (only at shutdown).
                    self.in_flight.remove(&id);
                    self.links[li].in_flight -= 1;
                    let _ = core.sms_unsent(&row.id, "shutting down", now).await;
                    break;
                }
            }
            if sent == 0 {
                // Every part was accepted before (the row was queued again after a stop):
                // it only needs marking sent.
                let first = accepted.first().copied().unwrap_or(1);
                let _ = retrying("mark sent", || {
                    core.sms_part_accepted(&row.id, first, &name, "", now)
                })
                .await;
            }
            debug!(id = %row.id, smsc = %name, parts = encoded.parts.len(), coding = encoded.coding.name(), "SMS submitted");
        }
    }

    async fn alerts(&self) {
        match self.env.core.alert_low_balances(now_ms()).await {
            Ok(n) if n > 0 => info!(count = n, "low-balance alerts queued"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "low-balance check failed; will retry"),
        }
    }

    async fn on_event(&mut self, ev: LinkEvent) {
        let now = now_ms();
        let li = ev.link;
        let name = self.links[li].cfg.name.clone();
        let env = self.env.clone();
        let core = &env.core;
        match ev.event {
            Event::Bound => {
                info!(smsc = %name, address = %self.links[li].cfg.address, "bound to the SMSC");
                self.links[li].bound = true;
                self.links[li].throttled_until = 0;
                self.publish();
            }
            Event::BindRefused { status: st } => {
                error!(
                    smsc = %name,
                    address = %self.links[li].cfg.address,
                    status = %status_name(st),
                    "the SMSC refused the bind: check system_id, password and system_type of this [[sms.smsc]]"
                );
            }
            Event::Closed { reason } => {
                if self.links[li].bound {
                    warn!(smsc = %name, reason = %reason, "SMSC connection closed; reconnecting");
                } else {
                    debug!(smsc = %name, reason = %reason, "SMSC session ended");
                }
                self.links[li].bound = false;
                self.publish();
            }
            Event::Accepted { id, message_id } => {
                let Some(f) = self.take(id) else { return };
                let _ = retrying("part accepted", || {
                    core.sms_part_accepted(&f.row, f.part, &name, &message_id, now)
                })
                .await;
            }
            Event::Refused { id, status: st } => {
                let Some(f) = self.take(id) else { return };
                let err = format!("{name}: {}", status_name(st));
                let again = (is_temporary(st) && f.attempts < self.cfg.max_attempts)
                    .then(|| retry_at(now, f.attempts));
                if again.is_some() {
                    warn!(id = %f.row, error = %err, attempts = f.attempts, "SMS refused; will retry");
                } else {
                    warn!(id = %f.row, error = %err, attempts = f.attempts, "SMS refused; failed");
                }
                let _ = retrying("refused", || core.sms_refused(&f.row, &err, again, now)).await;
            }
            Event::Throttled {
                status: st,
                resume_at,
            } => {
                // The session's clock is monotonic; the gateway's is the one its rows use.
                let pause = resume_at.saturating_duration_since(std::time::Instant::now());
                let pause_ms = pause.as_millis() as i64;
                warn!(smsc = %name, status = %status_name(st), pause_ms, "the SMSC is throttling; pausing");
                self.links[li].throttled_until = now + pause_ms;
            }
            Event::Unsent { id } => {
                let Some(f) = self.take(id) else { return };
                let err = format!("{name}: connection lost before the SMSC answered");
                let _ = retrying("unsent", || core.sms_unsent(&f.row, &err, now)).await;
            }
            Event::Deliver(m) => self.on_deliver(li, ev.generation, m, now).await,
            Event::Protocol(what) => debug!(smsc = %name, what = %what, "SMPP"),
        }
    }

    /// The keywords of the SMS texts in use now.
    fn keywords(&mut self) -> Arc<Keywords> {
        let now = self.env.texts.current();
        if !Arc::ptr_eq(&now, &self.keywords.0) {
            self.keywords = keywords_of(now);
        }
        self.keywords.1.clone()
    }

    fn take(&mut self, id: SubmitId) -> Option<InFlight> {
        let f = self.in_flight.remove(&id)?;
        self.links[f.link].in_flight = self.links[f.link].in_flight.saturating_sub(1);
        Some(f)
    }

    async fn on_deliver(&mut self, li: usize, generation: u64, m: Incoming, now: i64) {
        let link = &self.links[li];
        let name = link.cfg.name.clone();
        let respond = {
            let tx = link.tx.clone();
            move |status: CommandStatus| {
                let _ = tx.send(LinkCmd::Respond {
                    generation,
                    seq: m.seq,
                    status,
                });
            }
        };
        if m.is_receipt() {
            let Some(r) = parse_receipt(&m) else {
                warn!(smsc = %name, "a delivery receipt without a message id; acknowledged");
                respond(CommandStatus::EsmeRok);
                return;
            };
            let Some(delivered) = r.delivered else {
                respond(CommandStatus::EsmeRok);
                return;
            };
            match self
                .env
                .core
                .sms_receipt(&name, &r.message_id, delivered, &r.status, now)
                .await
            {
                Ok(ReceiptResult::Applied { outbox_id, state }) => {
                    info!(id = %outbox_id, state = %state, status = %r.status, "delivery receipt");
                    respond(CommandStatus::EsmeRok)
                }
                Ok(ReceiptResult::Unknown) => {
                    debug!(smsc = %name, message_id = %r.message_id, "receipt for a message we do not know");
                    respond(CommandStatus::EsmeRok)
                }
                // The SMSC keeps the receipt and delivers it again.
                Err(e) => {
                    warn!(error = %e, "cannot record a delivery receipt");
                    respond(CommandStatus::EsmeRxTAppn)
                }
            }
            return;
        }
        let sender = m.source_e164();
        let decoded = text::decode(m.data_coding, m.esm_class, &m.data);
        let Some(text) = self.reassembler.handle_part(
            std::time::Instant::now(),
            &format!("{name}/{sender}"),
            decoded,
        ) else {
            // A part of a longer message: held until the rest arrives.
            respond(CommandStatus::EsmeRok);
            return;
        };
        let smsc_id = mo_id(&m, self.cfg.mo_id_tlv);
        let window_ms = self.cfg.mo_repeat_window.as_millis() as i64;
        let destination = m.destination.clone();
        let env = self.env.clone();
        let keywords = self.keywords();
        tokio::spawn(async move {
            let mo = Mo {
                id: String::new(),
                smsc: name,
                sender,
                destination,
                text,
                content_key: None,
            };
            let smsc = mo.smsc.clone();
            let mo = match env
                .core
                .identify_mo(mo, smsc_id.as_deref(), window_ms, now)
                .await
            {
                Ok(mo) => mo,
                Err(e) => {
                    error!(%smsc, error = %e, "SMS command not recorded; the SMSC will deliver it again");
                    respond(CommandStatus::EsmeRxTAppn);
                    return;
                }
            };
            let commands = Commands {
                core: &env.core,
                adapters: &env.adapters,
                hlr: env.hlr.as_deref(),
                keywords: &keywords,
            };
            match commands.handle(&mo, now_ms()).await {
                Ok(outcome) => {
                    info!(id = %mo.id, outcome = %outcome, "SMS command answered");
                    respond(CommandStatus::EsmeRok)
                }
                Err(e) => {
                    error!(id = %mo.id, error = %e, "SMS command not recorded; the SMSC will deliver it again");
                    respond(CommandStatus::EsmeRxTAppn)
                }
            }
        });
    }
}

/// Marks a queued row failed at once (it can never be sent as it is).
async fn claim_and_fail(
    core: &crate::topup::Core,
    id: &str,
    smsc: &str,
    error: &str,
    now: i64,
) -> Result<(), TopupError> {
    warn!(id, error, "SMS cannot be sent");
    if core.claim_sms(id, smsc, 0, now).await? {
        core.sms_refused(id, error, None, now).await?;
    }
    Ok(())
}

/// One SMSC connection: connect, bind, carry submissions and answers, reconnect.
async fn link_task(
    link: usize,
    cfg: SmscConfig,
    mut cmds: mpsc::UnboundedReceiver<LinkCmd>,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);
    let scfg = SessionConfig {
        system_id: cfg.system_id.clone(),
        password: cfg.password.expose().to_string(),
        system_type: cfg.system_type.clone(),
        window: cfg.window,
        enquire_link: cfg.enquire_link,
        response_timeout: cfg.response_timeout,
        ..SessionConfig::default()
    };
    let mut backoff = MIN;
    let mut generation = 0u64;
    let mut stopping = false;
    let emit = |generation: u64, event: Event| {
        let _ = events.send(LinkEvent {
            link,
            generation,
            event,
        });
    };
    while !stopping {
        let stream = match tokio::time::timeout(
            cfg.response_timeout,
            TcpStream::connect(&cfg.address),
        )
        .await
        {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                warn!(smsc = %cfg.name, address = %cfg.address, error = %e, retry_in = ?backoff, "cannot connect to the SMSC");
                None
            }
            Err(_) => {
                warn!(smsc = %cfg.name, address = %cfg.address, retry_in = ?backoff, "connecting to the SMSC timed out");
                None
            }
        };
        if let Some(stream) = stream {
            let _ = stream.set_nodelay(true);
            generation += 1;
            let bound = drive(&mut cmds, stream, &scfg, generation, &mut stopping, &|e| {
                emit(generation, e)
            })
            .await;
            if bound {
                backoff = MIN;
            }
        }
        if stopping {
            break;
        }
        // Wait before reconnecting; submissions meanwhile cannot go out.
        let until = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                c = cmds.recv() => match c {
                    Some(LinkCmd::Submit(id, _)) => emit(generation, Event::Unsent { id }),
                    Some(LinkCmd::Respond { .. }) => {}
                    Some(LinkCmd::Unbind) | None => { stopping = true; break; }
                }
            }
        }
        backoff = (backoff * 2).min(MAX);
    }
}

/// Runs one session over `stream` until it closes. Returns whether it was ever bound.
async fn drive(
    cmds: &mut mpsc::UnboundedReceiver<LinkCmd>,
    stream: TcpStream,
    cfg: &SessionConfig,
    generation: u64,
    stopping: &mut bool,
    emit: &(dyn Fn(Event) + Sync),
) -> bool {
    let mut session = Session::new(cfg.clone(), std::time::Instant::now());
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = vec![0u8; 64 * 1024];
    let mut was_bound = false;
    let mut cmds_open = true;
    loop {
        while let Some(bytes) = session.poll_transmit() {
            if let Err(e) = wr.write_all(&bytes).await {
                session.handle_close(&format!("write failed: {e}"));
                break;
            }
        }
        while let Some(ev) = session.poll_event() {
            if ev == Event::Bound {
                was_bound = true;
            }
            emit(ev);
        }
        if session.state() == super::session::State::Closed {
            let _ = wr.shutdown().await;
            return was_bound;
        }
        let wake = session.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) => session.handle_close("the SMSC closed the connection"),
                Ok(n) => session.handle_input(std::time::Instant::now(), &buf[..n]),
                Err(e) => session.handle_close(&format!("read failed: {e}")),
            },
            c = cmds.recv(), if cmds_open => match c {
                Some(LinkCmd::Submit(id, m)) => session.submit(std::time::Instant::now(), id, m),
                Some(LinkCmd::Respond { generation: g, seq, status }) => {
                    if g == generation {
                        session.respond(std::time::Instant::now(), seq, status);
                    }
                }
                Some(LinkCmd::Unbind) | None => {
                    cmds_open = false;
                    *stopping = true;
                    session.unbind(std::time::Instant::now());
                }
            },
            _ = async { match wake { Some(w) => tokio::time::sleep_until(w).await, None => std::future::pending().await } } => {
                session.handle_timeout(std::time::Instant::now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(data: &str) -> Incoming {
        Incoming {
            seq: 1,
            source: "12015550100".into(),
            source_ton: 1,
            destination: "555".into(),
            esm_class: 0x04,
            data_coding: 0,
            data: data.as_bytes().to_vec(),
            receipted_message_id: None,
            message_state: None,
            other_tlvs: vec![],
        }
    }

    #[test]
    fn receipts_are_read_from_the_text() {
        let r = parse_receipt(&incoming(
            "id:0123456789 sub:001 dlvrd:001 submit date:2611221200 done date:2611221201 stat:DELIVRD err:000 text:Hello",
        ))
        .unwrap();
        assert_eq!(r.message_id, "0123456789");
        assert_eq!(r.delivered, Some(true));
        assert_eq!(r.status, "DELIVRD err:000");
        let r = parse_receipt(&incoming("id:77 sub:001 dlvrd:000 stat:UNDELIV err:001")).unwrap();
        assert_eq!(r.delivered, Some(false));
        let r = parse_receipt(&incoming("id:77 stat:ENROUTE")).unwrap();
        assert_eq!(r.delivered, None);
        let r = parse_receipt(&incoming("ID:ab-9 Stat:expired err:5")).unwrap();
        assert_eq!((r.message_id.as_str(), r.delivered), ("ab-9", Some(false)));
        // "sid:" is not "id:".
        assert!(parse_receipt(&incoming("sid:5 stat:DELIVRD")).is_none());
        assert!(parse_receipt(&incoming("")).is_none());
        assert!(parse_receipt(&incoming("\u{1F600} stat:")).is_none());
    }

    #[test]
    fn receipt_tlvs_win_over_the_text() {
        let mut m = incoming("id:1 stat:UNDELIV");
        m.receipted_message_id = Some("abc".into());
        m.message_state = Some(2);
        let r = parse_receipt(&m).unwrap();
        assert_eq!((r.message_id.as_str(), r.delivered), ("abc", Some(true)));
        m.message_state = Some(6);
        assert_eq!(parse_receipt(&m).unwrap().delivered, None);
        m.message_state = Some(8);
        assert_eq!(parse_receipt(&m).unwrap().delivered, Some(false));
    }

    #[test]
    fn the_mo_id_comes_from_the_configured_tlv() {
        let mut m = incoming("TOPUP");
        assert_eq!(mo_id(&m, 0x001E), None);
        m.receipted_message_id = Some(" 42 ".into());
        assert_eq!(mo_id(&m, 0x001E).as_deref(), Some("42"));
        m.other_tlvs = vec![(0x1401, b"smsc-7\0".to_vec())];
        assert_eq!(mo_id(&m, 0x1401).as_deref(), Some("smsc-7"));
        assert_eq!(mo_id(&m, 0x1402), None);
        m.other_tlvs = vec![(0x1401, vec![b'x'; 200])];
        assert_eq!(mo_id(&m, 0x1401), None, "absurd ids are not trusted");
    }
}
