//! The one call driver. Every edge — the built-in SIP stack, Asterisk, FreeSWITCH — is an
//! [`Edge`]: an adapter that turns its protocol into [`EdgeEvent`]s and carries out
//! [`EdgeCommand`]s. The driver runs the [`CallSession`] against it: one loop and one `match`
//! on [`Output`], the plan's operations, escalation records, the calling service's paid call,
//! shutdown, and the call's record. What a call *does* is therefore the same on every edge.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::paid::{PaidCall, PaidCallAction, WARNING_PROMPT};
use super::session::{CallSession, MediaParams, Output};
use crate::call::CallEnv;
use crate::clock::timestamp;
use crate::dialplan::interpreter::CallContext;
use crate::dialplan::{Args, Dialplan, Op};
use crate::media::dtmf::{Digit, DtmfMethod};
use crate::shutdown::Shutdown;
use crate::store::Cdr;
use crate::store::call_log::CallEnd;
use crate::topup::escalations::EscalationState;

/// What an edge reports about a call.
#[derive(Debug)]
pub enum EdgeEvent {
    /// An RTP packet from the caller, in the first `n` bytes of the buffer handed to
    /// [`Edge::wait`] (edges that carry the caller's RTP themselves).
    Packet(usize),
    /// The caller's audio, 8 kHz linear (softswitch edges; only needed for in-band DTMF).
    Pcm(Vec<i16>),
    Digit(Digit, DtmfMethod),
    /// The media was renegotiated (a re-INVITE).
    Media(MediaParams),
    /// The escalation transfer was carried out (the call has left us) or failed.
    Transferred(Result<(), String>),
    /// The caller's channel is gone; the reason is for the record.
    Ended(String),
    /// What became of the outbound leg of [`EdgeCommand::Dial`].
    Dial(DialEvent),
}

/// The outbound leg's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialEvent {
    /// Answered, and joined with the caller.
    Answered,
    Busy,
    NoAnswer,
    Failed,
    /// The callee hung up after answering.
    Ended,
}

/// What the call asks of its edge.
#[derive(Debug, PartialEq, Eq)]
pub enum EdgeCommand {
    /// One 20 ms RTP packet of prompt audio (or silence) in the call's payload format, paced
    /// in real time; edges that carry bare frames send the payload after the 12-byte header.
    Media(Vec<u8>),
    /// Barge-in: drop whatever audio the far end still has queued.
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
    /// During a joined call, whether an announcement is being spoken to the caller (the
    /// callee's audio is held meanwhile, where the edge relays it).
    Announcing(bool),
}

/// One call's edge, as the driver sees it. A call is one task: the driver waits on the edge's
/// inputs and its own timers together, then lets the edge handle what came.
pub trait Edge: Send {
    /// What the edge waits on: a packet, a media message, an event of its control connection.
    type Input: Send;

    /// Waits for the next input; `None` when the edge is gone. Must be cancel-safe: the driver
    /// drops it whenever a timer fires first (every 20 ms while a prompt plays).
    fn wait(&mut self, buf: &mut [u8]) -> impl Future<Output = Option<Self::Input>> + Send;

    /// Turns an input into what the driver is told, if anything. Runs to completion (it may
    /// talk to the softswitch); `buf` holds what [`Edge::wait`] put there.
    fn handle(
        &mut self,
        input: Self::Input,
        buf: &[u8],
    ) -> impl Future<Output = Option<EdgeEvent>> + Send;

    /// Carries out a command; media is sent at once or dropped, never queued for long.
    fn send(&mut self, now: Instant, command: EdgeCommand) -> impl Future<Output = ()> + Send;

    /// Whether the edge can place outbound calls ([`EdgeCommand::Dial`]).
    fn can_dial(&self) -> bool;

    /// When the edge next needs [`Edge::handle_timeout`]: folded into the driver's one
    /// timer, so an edge with a deadline of its own costs no second timer per wake-up.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// The driver's timer fired: `Some(reason)` when the edge's deadline has passed and it
    /// gives up on the call (the driver hangs up, for that reason).
    fn handle_timeout(&mut self, _now: Instant) -> Option<String> {
        None
    }
}

/// A call's record (CDR) from admission to its end: written once, whatever happens.
pub struct Record {
    pub cdr: Cdr,
    record_digits: bool,
}

impl Record {
    pub fn new(call_id: &str, caller: &str, dialled: &str, plan: &Dialplan) -> Self {
        Record {
            cdr: Cdr {
                call_id: call_id.to_string(),
                caller: caller.to_string(),
                dialled: dialled.to_string(),
                service: Some(plan.service.clone()),
                codec: None,
                dtmf_methods: String::new(),
                started_at: timestamp(),
                answered_at: None,
                ended_at: String::new(),
                end_reason: String::new(),
                digits: None,
            },
            record_digits: plan.record_digits,
        }
    }

    /// Writes the record of a call that ended for `reason`; `session` is absent when the
    /// call ended before its plan started.
    pub async fn finish(mut self, env: &CallEnv, reason: &str, session: Option<&CallSession>) {
        let cdr = &mut self.cdr;
        let mut path = vec![];
        match session {
            Some(s) => {
                path = s.interpreter().context().path;
                cdr.dtmf_methods = s.dtmf_methods();
                if self.record_digits {
                    cdr.digits = Some(s.interpreter().digits().to_string());
                }
                info!(reason, "call ended");
            }
            None => info!(reason, "call ended before its plan started"),
        }
        cdr.end_reason = reason.to_string();
        cdr.ended_at = timestamp();
        env.call_log
            .write(CallEnd {
                cdr: self.cdr,
                path,
            })
            .await;
    }
}

/// Runs a call's plan on `edge` until the call ends, and says why it ended. The call is
/// answered and its media flowing; `record` is the call's record (its codec follows
/// renegotiations). The session is returned for the record.
pub async fn drive<E: Edge>(
    env: &Arc<CallEnv>,
    plan: Arc<Dialplan>,
    media: MediaParams,
    edge: &mut E,
    record: &mut Record,
) -> (String, CallSession) {
    let cfg = env;
    let call_id = record.cdr.call_id.clone();
    let caller = crate::call::operations::caller_e164(&record.cdr.caller);
    let mut session = CallSession::with_vars(
        plan,
        env.prompts(),
        media,
        rand::random(),
        rand::random(),
        rand::random(),
        [
            ("caller".to_string(), caller.clone()),
            ("dialled".to_string(), record.cdr.dialled.clone()),
        ],
    );
    let mut shutdown = env.shutdown.clone();
    // The operation in flight (one at a time: the plan waits for it).
    let mut op_task: Option<tokio::task::JoinHandle<crate::call::operations::OpResult>> = None;
    let mut op_seq = 0u32;
    let mut topup_ids: Vec<String> = vec![];
    // The escalation whose transfer is in flight.
    let mut transferring: Option<String> = None;
    let mut hangup_deadline: Option<Instant> = None;
    let mut buf = vec![0u8; 2048];
    let started = Instant::now();
    let max_end = started + cfg.calls.max_duration;
    session.start(started);

    let reason = 'call: loop {
        let now = Instant::now();
        let wake = loop {
            match session.poll_output(now) {
                Output::Transmit(packet) => edge.send(now, EdgeCommand::Media(packet)).await,
                Output::Flush => edge.send(now, EdgeCommand::Flush).await,
                Output::Invoke { op, args } => {
                    op_seq += 1;
                    if op == Op::Call {
                        // The calling service takes over the media until the call ends.
                        let number = args.text("number").to_string();
                        let id = format!("{call_id}:{op_seq}");
                        let r = dial(env, &mut session, edge, &mut buf, &caller, id, number);
                        match r.await {
                            Ok((code, mut vars)) => {
                                debug!(op = %"call", result = %code, "operation done");
                                if let Ok(b) = env.core.wallet_balance(&caller).await {
                                    vars.push(("balance".into(), b.to_string()));
                                }
                                session.handle_result(Instant::now(), code, vars);
                            }
                            // The caller hung up: nothing left to hang up.
                            Err(reason) => return (reason, session),
                        }
                        continue 'call;
                    }
                    let request_id = format!("voice:{call_id}:{op_seq}");
                    op_task = Some(spawn_op(env, &caller, request_id, &session, op, args));
                }
                Output::Transfer {
                    target,
                    reason,
                    context,
                } => {
                    let id =
                        record_escalation(env, &call_id, &caller, &reason, &context, &topup_ids)
                            .await;
                    info!(escalation = %id, %target, %reason, "escalating");
                    transferring = Some(id.clone());
                    let transfer = EdgeCommand::Transfer {
                        escalation: id,
                        target,
                        reason,
                    };
                    edge.send(now, transfer).await;
                }
                Output::Hangup(reason) => break 'call reason,
                Output::Timeout(at) => break at,
            }
        };
        if now >= max_end {
            break "max-duration".into();
        }
        if hangup_deadline.is_some_and(|d| now >= d) {
            break "shutdown".into();
        }
        let wake = next_wake(
            now,
            [
                Some(wake),
                Some(max_end),
                hangup_deadline,
                edge.poll_timeout(),
            ],
        );
        tokio::select! {
            r = async { op_task.as_mut().expect("guarded").await }, if op_task.is_some() => {
                op_task = None;
                finish_op(&mut session, r, &mut topup_ids);
            }
            input = edge.wait(&mut buf) => {
                let Some(ev) = event_of(edge, input, &buf).await else { continue };
                let now = Instant::now();
                match ev {
                    Some(EdgeEvent::Packet(n)) => session.handle_rtp(now, &buf[..n]),
                    Some(EdgeEvent::Pcm(pcm)) => session.handle_pcm(now, &pcm),
                    Some(EdgeEvent::Digit(d, method)) => session.handle_digit(now, d, method),
                    Some(EdgeEvent::Media(media)) => {
                        record.cdr.codec = Some(media.codec.name().to_string());
                        session.set_media(media);
                    }
                    Some(EdgeEvent::Transferred(r)) => {
                        let Some(id) = transferring.take() else { continue };
                        let ms = crate::clock::now_ms();
                        match r {
                            Ok(()) => {
                                let _ = env.core.set_escalation_state(&id, EscalationState::Transferred, ms).await;
                                // The call has left us: nothing to hang up.
                                return ("transferred".into(), session);
                            }
                            Err(e) => {
                                warn!(error = %e, "transfer failed");
                                let _ = env.core.set_escalation_state(&id, EscalationState::Failed, ms).await;
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
                if let Some(reason) = timers_due(edge, &mut session, Instant::now()) {
                    break reason;
                }
            }
        }
    };
    edge.send(Instant::now(), EdgeCommand::Hangup(reason.clone()))
        .await;
    (reason, session)
}

/// The calling service: reserve the wallet's money, have the edge place and join the call,
/// warn and cut by [`PaidCall`], charge the talk time. Returns the result for the plan, or
/// `Err(reason)` when the caller hung up. The plan waits for the result meanwhile: the session
/// only speaks (announcements) and keeps time.
async fn dial<E: Edge>(
    env: &CallEnv,
    session: &mut CallSession,
    edge: &mut E,
    buf: &mut [u8],
    caller: &str,
    id: String,
    number: String,
) -> Result<crate::call::operations::OpResult, String> {
    let cfg = env;
    if !edge.can_dial() {
        return Ok(("unavailable".into(), vec![]));
    }
    let e164 = match crate::topup::numbers::parse_callable(&number) {
        Ok(n) => n.e164,
        Err(_) => return Ok(("invalid_number".into(), vec![])),
    };
    let now_ms = crate::clock::now_ms;
    let budget = match env
        .core
        .reserve_call(&id, caller, &e164, cfg.calls.max_duration, now_ms())
        .await
    {
        Ok(b) => b,
        Err(e) => return Ok((e.code().into(), vec![])),
    };
    let settle = |talk: Duration| {
        let id = id.clone();
        let budget = &budget;
        async move {
            match env
                .core
                .settle_call(&id, caller, budget, talk, now_ms())
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
    let caller_number = caller.to_string();
    let placing = EdgeCommand::Dial {
        number: e164,
        caller: caller_number,
    };
    edge.send(Instant::now(), placing).await;
    let mut clock = PaidCall::new(
        Instant::now(),
        cfg.calling.ring_timeout,
        budget.max,
        cfg.calling.warning_before,
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
    let mut announcing = false;
    let outcome = loop {
        let now = Instant::now();
        let wake = loop {
            match session.poll_output(now) {
                Output::Transmit(packet) => edge.send(now, EdgeCommand::Media(packet)).await,
                Output::Timeout(at) => break at,
                // The plan waits for this call's result: it asks for nothing else meanwhile.
                _ => {}
            }
        };
        if session.is_announcing() != announcing {
            announcing = !announcing;
            edge.send(now, EdgeCommand::Announcing(announcing)).await;
        }
        match clock.poll_action(now) {
            Some(PaidCallAction::RingTimeout) => {
                debug!("no answer");
                edge.send(now, EdgeCommand::DropDial).await;
                settle(Duration::ZERO).await;
                break result("no_answer", Duration::ZERO, String::new());
            }
            Some(PaidCallAction::Cut) => {
                info!("balance used up: cutting the call");
                edge.send(now, EdgeCommand::DropDial).await;
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
        // The edge's own deadline (the SIP caller's RTP timeout, FreeSWITCH's audio check)
        // holds during a paid call too.
        let wake = next_wake(
            now,
            [Some(wake), Some(clock.poll_timeout()), edge.poll_timeout()],
        );
        tokio::select! {
            input = edge.wait(buf) => {
                let Some(ev) = event_of(edge, input, buf).await else { continue };
                let now = Instant::now();
                match ev {
                    Some(EdgeEvent::Dial(DialEvent::Answered)) => {
                        info!("call answered");
                        clock.handle_answer(now);
                        session.set_bridged(true);
                    }
                    Some(EdgeEvent::Dial(ended)) => {
                        let code = match ended {
                            DialEvent::Ended => "ok",
                            DialEvent::Busy => "busy",
                            DialEvent::NoAnswer => "no_answer",
                            DialEvent::Failed | DialEvent::Answered => "failed",
                        };
                        let talk = clock.talk(now);
                        let cost = settle(talk).await;
                        break result(code, talk, cost);
                    }
                    Some(EdgeEvent::Ended(reason)) => {
                        edge.send(now, EdgeCommand::DropDial).await;
                        settle(clock.talk(now)).await;
                        break Err(reason);
                    }
                    // Keys and audio during the call are the callee's business.
                    Some(_) => {}
                    None => {
                        edge.send(now, EdgeCommand::DropDial).await;
                        settle(clock.talk(now)).await;
                        break Err("internal".into());
                    }
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                let now = Instant::now();
                if let Some(reason) = timers_due(edge, session, now) {
                    edge.send(now, EdgeCommand::DropDial).await;
                    settle(clock.talk(now)).await;
                    break Err(reason);
                }
            }
        }
    };
    if announcing {
        edge.send(Instant::now(), EdgeCommand::Announcing(false))
            .await;
    }
    session.set_bridged(false);
    outcome
}

/// Runs a plan operation in its own task (the plan waits for the result; the call's media
/// goes on meanwhile). `request_id` is unique per call and operation.
fn spawn_op(
    env: &Arc<CallEnv>,
    caller: &str,
    request_id: String,
    session: &CallSession,
    op: Op,
    args: Args,
) -> tokio::task::JoinHandle<crate::call::operations::OpResult> {
    let env = env.clone();
    let caller = caller.to_string();
    let language = session.interpreter().language().to_string();
    debug!(op = %op, "operation");
    tokio::spawn(async move {
        let ctx = crate::call::operations::OpContext {
            core: &env.core,
            adapters: &env.adapters,
            hlr: env.hlr.as_deref(),
            caller: &caller,
            request_id,
            channel: "voice",
            language: Some(&language),
        };
        let result = crate::call::operations::run(&ctx, op, &args).await;
        debug!(op = %op, result = %result.0, "operation done");
        // A wrong (or refused) PIN is answered ever more slowly: a dialler guessing PINs
        // gets few tries per hour. The call's media goes on meanwhile.
        if crate::call::operations::PIN_FAILURES.contains(&result.0.as_str()) {
            let now = crate::clock::now_ms();
            match env.core.pin_failure_delay(&caller, now).await {
                Ok(d) if !d.is_zero() => {
                    debug!(
                        delay_ms = d.as_millis() as u64,
                        "pausing after a PIN failure"
                    );
                    tokio::time::sleep(d).await;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "PIN failure delay unknown"),
            }
        }
        result
    })
}

/// Hands an operation's result to the plan, remembering the top-ups it made (an escalation
/// carries them to the agent).
fn finish_op(
    session: &mut CallSession,
    r: Result<crate::call::operations::OpResult, tokio::task::JoinError>,
    topup_ids: &mut Vec<String>,
) {
    let (code, vars) = r.unwrap_or_else(|_| ("unavailable".into(), vec![]));
    if let Some((_, id)) = vars.iter().find(|(k, _)| k == "topup_id") {
        topup_ids.push(id.clone());
    }
    session.handle_result(Instant::now(), code, vars);
}

/// Records an escalation the plan asked for (what the agent sees) and returns its id, which
/// travels with the transfer.
async fn record_escalation(
    env: &CallEnv,
    call_id: &str,
    caller: &str,
    reason: &str,
    context: &CallContext,
    topup_ids: &[String],
) -> String {
    let id = hex::encode(rand::random::<[u8; 8]>());
    let esc = crate::topup::escalations::Escalation {
        id: id.clone(),
        call_id: call_id.to_string(),
        caller: caller.to_string(),
        service: context.service.clone(),
        language: context.language.clone(),
        node: context.node.clone(),
        path: context.path.clone(),
        inputs: context.inputs.clone(),
        reason: reason.to_string(),
        topup_ids: topup_ids.to_vec(),
        state: EscalationState::Open,
        created_at: crate::clock::now_ms(),
        updated_at: crate::clock::now_ms(),
    };
    if let Err(e) = env.core.record_escalation(&esc, esc.created_at).await {
        warn!(error = %e, "escalation not recorded");
    }
    id
}

/// What the edge's input tells the driver, once the edge has handled it: `None` when it was
/// nothing for the driver (wait again), `Some(None)` when the edge is gone. Both of a call's
/// loops (the plan's and the paid call's) take their events through it.
async fn event_of<E: Edge>(
    edge: &mut E,
    input: Option<E::Input>,
    buf: &[u8],
) -> Option<Option<EdgeEvent>> {
    match input {
        Some(input) => edge.handle(input, buf).await.map(Some),
        None => Some(None),
    }
}

/// The loop's timer fired: the edge's deadlines first (`Some(reason)`: the edge gives up on
/// the call), then the session's.
fn timers_due<E: Edge>(edge: &mut E, session: &mut CallSession, now: Instant) -> Option<String> {
    if let Some(reason) = edge.handle_timeout(now) {
        return Some(reason);
    }
    session.handle_timeout(now);
    None
}

/// When a call loop must wake: the earliest deadline, not in the past, at most a second away.
pub fn next_wake(now: Instant, deadlines: impl IntoIterator<Item = Option<Instant>>) -> Instant {
    deadlines
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now + Duration::from_secs(1))
        .max(now)
}
