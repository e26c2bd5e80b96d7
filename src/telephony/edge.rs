//! The call driver for softswitch edges (Asterisk, FreeSWITCH): the softswitch owns the
//! caller's channel and the network media; the adapter turns its protocol into [`EdgeEvent`]s
//! and carries out [`EdgeCommand`]s. Everything a call *does* (plan, prompts, operations,
//! escalation records, CDR) is the same [`CallSession`] the built-in SIP edge runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::{Instrument, info, warn};

use crate::call::{
    CallSession, MediaParams, finish_op, next_wake, record_escalation, spawn_op, timestamp,
};
use crate::dialplan::Dialplan;
use crate::media::dtmf::{Digit, DtmfMethod};
use crate::media::g711::Codec;
use crate::media::player::Payload;
use crate::server::{Shared, Shutdown};
use crate::store::Cdr;

/// A call the softswitch handed to us, already answered.
pub struct EdgeCall {
    /// The softswitch's id of the caller's channel (Asterisk uniqueid, FreeSWITCH UUID).
    pub call_id: String,
    pub caller: String,
    pub dialled: String,
    pub plan: Arc<Dialplan>,
    /// The codec of the call (for the record, and of the frames in [`EdgeCommand::Media`] when
    /// `payload` is G.711).
    pub codec: Codec,
    /// What the frames in [`EdgeCommand::Media`] carry.
    pub payload: Payload,
    /// How far ahead of real time frames are sent (for a softswitch that plays them from a
    /// buffer of its own, so a late wake-up of ours leaves no gap).
    pub lead: Duration,
    /// Run the in-band detector on [`EdgeEvent::Pcm`] (the softswitch reports keys itself
    /// otherwise).
    pub inband: bool,
    /// The adapter can place outbound calls ([`EdgeCommand::Dial`]) for the calling service.
    pub can_dial: bool,
}

/// What the adapter reports about a call.
#[derive(Debug)]
pub enum EdgeEvent {
    /// The caller's audio, 8 kHz linear (only needed for in-band DTMF).
    Pcm(Vec<i16>),
    Digit(Digit, DtmfMethod),
    /// The escalation transfer was carried out (the call has left us) or failed.
    Transferred(Result<(), String>),
    /// The caller's channel is gone; the reason is for the CDR.
    Ended(String),
    /// What became of the outbound leg of [`EdgeCommand::Dial`].
    Dial(DialEvent),
}

/// The outbound leg's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialEvent {
    /// Answered, and joined with the caller by the softswitch.
    Answered,
    Busy,
    NoAnswer,
    Failed,
    /// The callee hung up after answering.
    Ended,
}

/// What the call asks of the adapter.
#[derive(Debug, PartialEq, Eq)]
pub enum EdgeCommand {
    /// One 20 ms RTP packet of prompt audio (or silence) in the call's payload format, paced
    /// in real time; adapters that carry bare frames send the payload after the 12-byte
    /// header.
    Media(Vec<u8>),
    /// Barge-in: drop whatever audio the softswitch still has queued.
    Flush,
    /// Send the caller to the agents (`target` is the plan's transfer target); answer with
    /// [`EdgeEvent::Transferred`].
    Transfer {
        escalation: String,
        target: String,
        reason: String,
    },
    /// End the call (the plan finished, or the service is shutting down).
    Hangup(String),
    /// Calling service: call `number` (E.164) from `caller` and join it with the caller once
    /// answered; report with [`EdgeEvent::Dial`].
    Dial { number: String, caller: String },
    /// End the outbound leg (the money ran out, nobody answered, the caller left).
    DropDial,
}

/// Outgoing audio queued for one call's media connection: about 200 ms. When a connection is
/// this far behind, frames are dropped rather than delaying the call's logic.
pub const MEDIA_QUEUE: usize = 10;

/// Runs one softswitch call to its end and writes its CDR; the admission `permit` is held until
/// the record is stored (as for SIP calls).
pub async fn run_call(
    shared: Arc<Shared>,
    call: EdgeCall,
    events: mpsc::Receiver<EdgeEvent>,
    commands: mpsc::Sender<EdgeCommand>,
    permit: OwnedSemaphorePermit,
) {
    let span = tracing::info_span!("call", call_id = %call.call_id);
    async move {
        let mut cdr = Cdr {
            call_id: call.call_id.clone(),
            caller: call.caller.clone(),
            dialled: call.dialled.clone(),
            service: Some(call.plan.service.clone()),
            codec: Some(call.codec.name().to_string()),
            dtmf_methods: String::new(),
            started_at: timestamp(),
            answered_at: Some(timestamp()),
            ended_at: String::new(),
            end_reason: String::new(),
            digits: None,
        };
        let record_digits = call.plan.record_digits;
        let service = call.plan.service.clone();
        let _active = shared.call_started(&service);
        let (reason, session) = drive(&shared, call, events, &commands).await;
        shared
            .core
            .record_path(&service, &session.interpreter().context().path)
            .await;
        cdr.end_reason = reason;
        cdr.dtmf_methods = session.dtmf_methods();
        if record_digits {
            cdr.digits = Some(session.interpreter().digits().to_string());
        }
        cdr.ended_at = timestamp();
        info!(reason = %cdr.end_reason, "call ended");
        if let Err(e) = shared.store.insert_cdr(&cdr).await {
            warn!(error = %e, "CDR not written");
        }
        drop(permit);
    }
    .instrument(span)
    .await
}

/// Writes the record of a call that was answered but never reached its plan: the softswitch
/// could not set its media up, or the caller left meanwhile. Every answered call gets a CDR,
/// whatever failed (staff count answered calls against records).
pub async fn record_unserved(shared: &Shared, call: &EdgeCall, answered_at: String, reason: &str) {
    let cdr = Cdr {
        call_id: call.call_id.clone(),
        caller: call.caller.clone(),
        dialled: call.dialled.clone(),
        service: Some(call.plan.service.clone()),
        codec: Some(call.codec.name().to_string()),
        dtmf_methods: String::new(),
        started_at: answered_at.clone(),
        answered_at: Some(answered_at),
        ended_at: timestamp(),
        end_reason: reason.to_string(),
        digits: None,
    };
    info!(reason, "call ended before its plan started");
    if let Err(e) = shared.store.insert_cdr(&cdr).await {
        warn!(error = %e, "CDR not written");
    }
}

/// The wait between attempts to reach a softswitch's control connection while it is down:
/// short, so the service is back within a second of the softswitch's return (until then it
/// refuses or drops every call for us), and jittered, so the nodes of a cluster do not knock
/// in step. An attempt on a host that is up but not listening costs one refused connection.
pub fn retry_delay() -> Duration {
    Duration::from_millis(rand::random_range(200..=600))
}

/// How often a long outage is logged again (its first failure is logged at once).
const OUTAGE_LOG_EVERY: Duration = Duration::from_secs(30);

/// Logs a failed attempt to reach `what`: the first of an outage at once, then one line per
/// [`OUTAGE_LOG_EVERY`] (attempts are a few a second). `outage` is (since, last logged).
pub fn log_outage(what: &str, outage: &mut Option<(Instant, Instant)>, error: &str) {
    let now = Instant::now();
    match outage {
        None => {
            warn!(%error, "cannot connect to {what}; retrying every 200-600 ms");
            *outage = Some((now, now));
        }
        Some((since, logged)) if now.duration_since(*logged) >= OUTAGE_LOG_EVERY => {
            warn!(%error, down_s = since.elapsed().as_secs(), "still cannot connect to {what}");
            *logged = now;
        }
        Some(_) => tracing::debug!(%error, "cannot connect to {what}"),
    }
}

/// Why a softswitch call was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The service is shutting down (a node being drained).
    ShuttingDown,
    /// No plan serves the dialled number.
    NoService,
    /// `calls.max` calls are in progress.
    Full,
}

impl Refusal {
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::ShuttingDown => "shutting-down",
            Refusal::NoService => "not-found",
            Refusal::Full => "full",
        }
    }
}

/// Admission, as for SIP calls: the plan for the dialled number and a call permit.
pub fn admit(
    shared: &Shared,
    edge: &'static str,
    dialled: &str,
    caller: &str,
) -> Result<(Arc<Dialplan>, OwnedSemaphorePermit), Refusal> {
    if *shared.shutdown.borrow() != Shutdown::Running {
        return Err(Refusal::ShuttingDown);
    }
    let plan = shared
        .dialplans()
        .route(dialled, caller)
        .ok_or(Refusal::NoService)?;
    let permit = shared
        .calls
        .clone()
        .try_acquire_owned()
        .map_err(|_| Refusal::Full)?;
    shared
        .calls_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    metrics::counter!("topup_ivr_calls_total", "edge" => edge).increment(1);
    Ok((plan, permit))
}

async fn drive(
    shared: &Arc<Shared>,
    call: EdgeCall,
    mut events: mpsc::Receiver<EdgeEvent>,
    commands: &mpsc::Sender<EdgeCommand>,
) -> (String, CallSession) {
    let cfg = &shared.cfg;
    let caller = crate::services::caller_e164(&call.caller);
    let mut session = CallSession::with_vars(
        call.plan.clone(),
        shared.prompts(),
        MediaParams {
            codec: call.codec,
            payload: call.payload,
            lead: call.lead,
            telephone_event: None,
            inband: call.inband,
            send: true,
        },
        rand::random(),
        rand::random(),
        rand::random(),
        [
            ("caller".to_string(), caller.clone()),
            ("dialled".to_string(), call.dialled.clone()),
        ],
    );
    let mut shutdown = shared.shutdown.clone();
    let mut op_task: Option<tokio::task::JoinHandle<crate::services::OpResult>> = None;
    let mut op_seq = 0u32;
    let mut topup_ids: Vec<String> = vec![];
    let mut transferring: Option<String> = None;
    let mut hangup_deadline: Option<Instant> = None;
    let started = Instant::now();
    session.start(started);

    let reason = loop {
        let now = Instant::now();
        if session.take_flush() {
            let _ = commands.send(EdgeCommand::Flush).await;
        }
        while let Some(pkt) = session.poll_transmit(now) {
            // Real-time pacing keeps the softswitch's queue short; a connection that cannot
            // keep up loses frames, never the call.
            if commands.try_send(EdgeCommand::Media(pkt)).is_err() {
                tracing::trace!("media frame dropped: connection behind");
            }
        }
        if let Some((op, args)) = session.poll_invoke() {
            op_seq += 1;
            if op == "call" {
                let number = args
                    .iter()
                    .find(|(k, _)| k == "number")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                let id = format!("{}:{op_seq}", call.call_id);
                let leg = DialLeg {
                    session: &mut session,
                    events: &mut events,
                    commands,
                    caller: &caller,
                    id,
                };
                match dial(shared, leg, &number, call.can_dial).await {
                    Ok((code, mut vars)) => {
                        tracing::debug!(op = %"call", result = %code, "operation done");
                        if let Ok(b) = shared.core.wallet_balance(&caller).await {
                            vars.push(("balance".into(), b.to_string()));
                        }
                        session.handle_result(Instant::now(), code, vars);
                    }
                    Err(reason) => return (reason, session),
                }
                continue;
            }
            let request_id = format!("voice:{}:{op_seq}", call.call_id);
            op_task = Some(spawn_op(shared, &caller, request_id, &session, op, args));
        }
        if let Some((target, reason, context)) = session.take_transfer() {
            let id = record_escalation(
                shared,
                &call.call_id,
                &caller,
                &reason,
                &context,
                &topup_ids,
            )
            .await;
            info!(escalation = %id, %target, %reason, "escalating");
            transferring = Some(id.clone());
            let _ = commands
                .send(EdgeCommand::Transfer {
                    escalation: id,
                    target,
                    reason,
                })
                .await;
        }
        if let Some(r) = session.poll_hangup(now) {
            break r.to_string();
        }
        if now >= started + cfg.max_call_duration {
            break "max-duration".into();
        }
        if hangup_deadline.is_some_and(|d| now >= d) {
            break "shutdown".into();
        }
        let wake = next_wake(
            now,
            [
                session.poll_timeout(),
                Some(started + cfg.max_call_duration),
                hangup_deadline,
            ],
        );
        tokio::select! {
            r = async { op_task.as_mut().expect("guarded").await }, if op_task.is_some() => {
                op_task = None;
                finish_op(&mut session, r, &mut topup_ids);
            }
            ev = events.recv() => {
                let now = Instant::now();
                match ev {
                    Some(EdgeEvent::Pcm(pcm)) => session.handle_pcm(now, &pcm),
                    Some(EdgeEvent::Digit(d, method)) => session.handle_digit(now, d, method),
                    Some(EdgeEvent::Transferred(r)) => {
                        let Some(id) = transferring.take() else { continue };
                        let ms = crate::topup::books::now_ms();
                        match r {
                            Ok(()) => {
                                let _ = shared.core.set_escalation_state(&id, "transferred", ms).await;
                                // The call has left us: nothing to hang up.
                                return ("transferred".into(), session);
                            }
                            Err(e) => {
                                warn!(error = %e, "transfer failed");
                                let _ = shared.core.set_escalation_state(&id, "failed", ms).await;
                                session.announce_then_hangup(now, &["agents-unavailable"], "escalation-failed");
                            }
                        }
                    }
                    Some(EdgeEvent::Ended(reason)) => return (reason, session),
                    Some(EdgeEvent::Dial(_)) => {}
                    None => break "internal".into(),
                }
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() == Shutdown::HangupNow {
                    hangup_deadline = Some(Instant::now());
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                session.handle_timeout(Instant::now());
            }
        }
    };
    let _ = commands.send(EdgeCommand::Hangup(reason.clone())).await;
    (reason, session)
}

/// How long a lost media leg waits for the hangup that explains it: when a caller hangs up,
/// the softswitch closes the media connection and reports the hangup on the control
/// connection, in either order. Only a close without a hangup is a media failure.
pub const GONE_WAIT: Duration = Duration::from_secs(1);

/// Waits up to [`GONE_WAIT`] for an event `pick` accepts (others are dropped).
pub async fn wait_for<T, R>(
    events: &mut mpsc::Receiver<T>,
    pick: impl Fn(T) -> Option<R>,
) -> Option<R> {
    let deadline = tokio::time::Instant::now() + GONE_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) => {
                if let Some(r) = pick(ev) {
                    return Some(r);
                }
            }
            Ok(None) | Err(_) => return None,
        }
    }
}

/// The caller's side, lent to [`dial`] for the length of an outbound call.
struct DialLeg<'a> {
    session: &'a mut CallSession,
    events: &'a mut mpsc::Receiver<EdgeEvent>,
    commands: &'a mpsc::Sender<EdgeCommand>,
    caller: &'a str,
    /// Unique per call attempt (billing ids).
    id: String,
}

/// The calling service on a softswitch edge: reserve the wallet's money, have the softswitch
/// place and join the call, warn and cut by [`PaidCall`], charge the talk time. Returns the
/// result for the plan, or `Err(reason)` when the caller hung up.
async fn dial(
    shared: &Shared,
    leg: DialLeg<'_>,
    number: &str,
    can_dial: bool,
) -> Result<crate::services::OpResult, String> {
    use crate::bridge::{PaidCall, PaidCallAction, WARNING_PROMPT};
    let cfg = &shared.cfg;
    if !can_dial {
        return Ok(("unavailable".into(), vec![]));
    }
    let e164 = match crate::topup::numbers::parse_callable(number) {
        Ok(n) => n.e164,
        Err(_) => return Ok(("invalid_number".into(), vec![])),
    };
    let now_ms = crate::topup::books::now_ms;
    let budget = match shared
        .core
        .reserve_call(&leg.id, leg.caller, &e164, cfg.max_call_duration, now_ms())
        .await
    {
        Ok(b) => b,
        Err(e) => return Ok((e.code().into(), vec![])),
    };
    let settle = |talk: Duration| {
        let id = leg.id.clone();
        async move {
            match shared
                .core
                .settle_call(&id, leg.caller, &budget, talk, now_ms())
                .await
            {
                Ok(cost) => cost.to_string(),
                Err(e) => {
                    // The reservation stays pending: nothing is lost, staff can settle it.
                    warn!(error = %e, "call not settled");
                    String::new()
                }
            }
        }
    };
    info!(to = %crate::redact::Phone(&e164), max_secs = budget.max.as_secs(), "placing call");
    let _ = leg
        .commands
        .send(EdgeCommand::Dial {
            number: e164,
            caller: leg.caller.to_string(),
        })
        .await;
    let session = leg.session;
    let mut clock = PaidCall::new(
        Instant::now(),
        cfg.calling_ring_timeout,
        budget.max,
        cfg.calling_warning_before,
    );
    let result = |code: &str, talk: Duration, cost: String| {
        Ok((
            code.to_string(),
            vec![
                ("call_secs".to_string(), talk.as_secs().to_string()),
                ("call_cost".to_string(), cost),
            ],
        ))
    };
    let outcome = loop {
        let now = Instant::now();
        while let Some(pkt) = session.poll_transmit(now) {
            let _ = leg.commands.try_send(EdgeCommand::Media(pkt));
        }
        match clock.poll(now) {
            Some(PaidCallAction::RingTimeout) => {
                let _ = leg.commands.send(EdgeCommand::DropDial).await;
                settle(Duration::ZERO).await;
                break result("no_answer", Duration::ZERO, String::new());
            }
            Some(PaidCallAction::Cut) => {
                info!("balance used up: cutting the call");
                let _ = leg.commands.send(EdgeCommand::DropDial).await;
                let talk = clock.talk(now);
                let cost = settle(talk).await;
                break result("cut", talk, cost);
            }
            Some(PaidCallAction::Warn) => {
                info!("warning the caller: the money runs out soon");
                session.announce(&[WARNING_PROMPT]);
            }
            None => {}
        }
        let wake = next_wake(now, [session.poll_timeout(), Some(clock.poll_timeout())]);
        tokio::select! {
            ev = leg.events.recv() => {
                let now = Instant::now();
                match ev {
                    Some(EdgeEvent::Dial(DialEvent::Answered)) => {
                        info!("call answered");
                        clock.handle_answer(now);
                        session.set_bridged(true);
                    }
                    Some(EdgeEvent::Dial(DialEvent::Ended)) => {
                        let talk = clock.talk(now);
                        let cost = settle(talk).await;
                        break result("ok", talk, cost);
                    }
                    Some(EdgeEvent::Dial(other)) => {
                        let code = match other {
                            DialEvent::Busy => "busy",
                            DialEvent::NoAnswer => "no_answer",
                            _ => "failed",
                        };
                        let talk = clock.talk(now);
                        let cost = settle(talk).await;
                        break result(code, talk, cost);
                    }
                    Some(EdgeEvent::Ended(reason)) => {
                        let _ = leg.commands.send(EdgeCommand::DropDial).await;
                        settle(clock.talk(now)).await;
                        break Err(reason);
                    }
                    // Keys and audio during the call are the callee's business.
                    Some(_) => {}
                    None => {
                        settle(clock.talk(now)).await;
                        break Err("internal".into());
                    }
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                session.handle_timeout(Instant::now());
            }
        }
    };
    session.set_bridged(false);
    outcome
}

/// Which way a key reached an adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The control connection (ARI `ChannelDtmfReceived`, ESL `DTMF`).
    Control,
    /// The media connection (chan_websocket `DTMF_END`).
    Media,
}

/// Asterisk reports one key press twice when media runs over chan_websocket: as
/// `ChannelDtmfReceived` on the caller and as `DTMF_END` on the media socket, at the same
/// moment. A key from one source is dropped when the same key came from the *other* source
/// within [`DtmfDedup::WINDOW`]; two presses reported by one source always count twice.
#[derive(Debug, Default)]
pub struct DtmfDedup {
    /// Keys seen from one source and not yet matched by the other.
    pending: Vec<(Digit, KeySource, Instant)>,
}

impl DtmfDedup {
    /// Long enough for the two reports of one key (measured: the same moment), short enough
    /// that a caller's next press of the same key (≥ 100 ms apart in practice) is not lost.
    pub const WINDOW: Duration = Duration::from_millis(80);

    /// Whether the key is new (deliver it) or the other report of a key already delivered.
    pub fn handle(&mut self, now: Instant, digit: Digit, source: KeySource) -> bool {
        self.pending
            .retain(|(_, _, at)| now.saturating_duration_since(*at) <= Self::WINDOW);
        if let Some(i) = self
            .pending
            .iter()
            .position(|(d, s, _)| *d == digit && *s != source)
        {
            self.pending.remove(i);
            return false;
        }
        self.pending.push((digit, source, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digit {
        Digit::from_char(c).unwrap()
    }

    #[test]
    fn one_key_reported_by_both_sources_counts_once() {
        let t = Instant::now();
        let mut dd = DtmfDedup::default();
        assert!(dd.handle(t, d('5'), KeySource::Control));
        assert!(!dd.handle(t + Duration::from_millis(3), d('5'), KeySource::Media));
        // Either order.
        assert!(dd.handle(t + Duration::from_millis(300), d('7'), KeySource::Media));
        assert!(!dd.handle(t + Duration::from_millis(301), d('7'), KeySource::Control));
    }

    #[test]
    fn repeated_key_from_one_source_counts_every_time() {
        let t = Instant::now();
        let mut dd = DtmfDedup::default();
        assert!(dd.handle(t, d('1'), KeySource::Media));
        assert!(dd.handle(t + Duration::from_millis(10), d('1'), KeySource::Media));
        // Each of the two presses is matched by its own control report, no more.
        assert!(!dd.handle(t + Duration::from_millis(11), d('1'), KeySource::Control));
        assert!(!dd.handle(t + Duration::from_millis(12), d('1'), KeySource::Control));
        assert!(dd.handle(t + Duration::from_millis(13), d('1'), KeySource::Control));
    }

    #[test]
    fn reports_far_apart_are_two_presses() {
        let t = Instant::now();
        let mut dd = DtmfDedup::default();
        assert!(dd.handle(t, d('2'), KeySource::Control));
        assert!(dd.handle(t + Duration::from_millis(500), d('2'), KeySource::Media));
        // A different key is never matched.
        assert!(dd.handle(t + Duration::from_millis(501), d('3'), KeySource::Control));
    }
}
