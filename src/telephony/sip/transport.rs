//! The tokio edge of the built-in SIP stack: one UDP socket and one [`Endpoint`], driven by
//! datagrams, timers and commands from call tasks. New calls pass admission here (503 when
//! full or shutting down, 404 for a number no dialplan serves) and get their own task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::admission::{Refused, SourceGuard};
use super::call::{SipCallSetup, refused_cdr, run_sip_call};
use super::endpoint::{CallHandle, Endpoint, IncomingCall, SipEvent};
use crate::server::state::Shared;
use crate::shutdown::Shutdown;
use crate::telephony::edge::{Refusal, admit};

/// What call tasks ask of the SIP layer.
#[derive(Debug)]
pub enum SipCommand {
    Ring(CallHandle),
    Answer(CallHandle, Vec<u8>),
    Reject(CallHandle, u16, Option<u32>),
    AnswerReoffer(CallHandle, Result<Vec<u8>, u16>),
    Hangup(CallHandle),
    /// Blind transfer to a SIP URI, with extra headers.
    Refer(CallHandle, String, Vec<(String, String)>),
    /// Place a call (the calling service): its events go to `events`, its handle to `reply`.
    Invite {
        peer: SocketAddr,
        uri: String,
        from: String,
        sdp: Vec<u8>,
        events: mpsc::Sender<SipEvent>,
        reply: tokio::sync::oneshot::Sender<CallHandle>,
    },
}

/// Events queued per call before the call task reads them.
const CALL_EVENT_QUEUE: usize = 64;

pub struct Transport {
    socket: UdpSocket,
    endpoint: Endpoint,
    shared: Arc<Shared>,
    routes: HashMap<CallHandle, mpsc::Sender<SipEvent>>,
    commands_tx: mpsc::Sender<SipCommand>,
    commands_rx: mpsc::Receiver<SipCommand>,
    /// Per-source limits on INVITEs, calls and refused-call records.
    sources: SourceGuard,
}

impl Transport {
    pub fn new(socket: UdpSocket, endpoint: Endpoint, shared: Arc<Shared>) -> Transport {
        let (commands_tx, commands_rx) = mpsc::channel(4096);
        Transport {
            socket,
            endpoint,
            sources: SourceGuard::new(shared.cfg.sip.per_source.clone()),
            shared,
            routes: HashMap::new(),
            commands_tx,
            commands_rx,
        }
    }

    /// Runs until the shutdown state reaches `Stop`.
    pub async fn run(mut self) {
        let mut shutdown = self.shared.shutdown.clone();
        let mut buf = vec![0u8; 65_536];
        loop {
            let timeout = self.endpoint.poll_timeout();
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.endpoint.handle_datagram(Instant::now(), from, &buf[..n]),
                    Err(e) => debug!(error = %e, "SIP socket receive error"),
                },
                Some(cmd) = self.commands_rx.recv() => self.on_command(cmd),
                _ = sleep_until(timeout) => self.endpoint.handle_timeout(Instant::now()),
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() == Shutdown::Stop {
                        self.flush().await;
                        return;
                    }
                    let draining = *shutdown.borrow() != Shutdown::Running;
                    self.endpoint.set_draining(draining);
                }
            }
            self.flush().await;
        }
    }

    fn on_command(&mut self, cmd: SipCommand) {
        let now = Instant::now();
        match cmd {
            SipCommand::Ring(c) => self.endpoint.ring(now, c),
            SipCommand::Answer(c, sdp) => self.endpoint.answer(now, c, sdp),
            SipCommand::Reject(c, code, retry) => {
                self.endpoint.reject(now, c, code, retry);
                self.routes.remove(&c);
            }
            SipCommand::AnswerReoffer(c, a) => self.endpoint.answer_reoffer(now, c, a),
            SipCommand::Refer(c, to, headers) => self.endpoint.refer(now, c, &to, headers),
            SipCommand::Invite {
                peer,
                uri,
                from,
                sdp,
                events,
                reply,
            } => {
                let call = self.endpoint.invite(now, peer, &uri, &from, sdp);
                self.routes.insert(call, events);
                let _ = reply.send(call);
            }
            SipCommand::Hangup(c) => {
                self.endpoint.hangup(now, c);
                self.routes.remove(&c);
            }
        }
    }

    /// Sends what the endpoint produced and hands its events out.
    async fn flush(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            if let Err(e) = self.socket.send_to(&t.payload, t.to).await {
                debug!(to = %t.to, error = %e, "SIP send failed");
            }
        }
        while let Some(ev) = self.endpoint.poll_event() {
            match ev {
                SipEvent::Incoming(inc) => self.admit(inc),
                SipEvent::Ended { call, .. } => {
                    if let Some(tx) = self.routes.remove(&call) {
                        let _ = tx.try_send(ev);
                    }
                }
                SipEvent::Confirmed { call, .. }
                | SipEvent::Dtmf { call, .. }
                | SipEvent::Reoffer { call, .. }
                | SipEvent::ReferResult { call, .. }
                | SipEvent::Outbound { call, .. } => {
                    let finished = matches!(ev, SipEvent::Outbound { code: 300.., .. });
                    if let Some(tx) = self.routes.get(&call)
                        && tx.try_send(ev).is_err()
                    {
                        warn!(%call, "call task not keeping up; SIP event dropped");
                    }
                    if finished {
                        self.routes.remove(&call);
                    }
                }
            }
        }
        // Rejections made during admission go out now.
        while let Some(t) = self.endpoint.poll_transmit() {
            let _ = self.socket.send_to(&t.payload, t.to).await;
        }
    }

    fn admit(&mut self, inc: IncomingCall) {
        let now = Instant::now();
        let source = inc.source.ip();
        if let Err(why) = self.sources.handle_invite(now, source) {
            // One source flooding: refused cheaply, nothing written.
            self.endpoint.reject(now, inc.call, 503, Some(5));
            let reason = match why {
                Refused::TooFast => "rate",
                Refused::TooMany => "calls",
            };
            metrics::counter!("topup_ivr_calls_refused_total", "reason" => reason).increment(1);
            debug!(call = %inc.call, %source, reason, "refused: over the per-source limit");
            return;
        }
        // The same admission as every edge: the plan for the number, and a call permit.
        let (plan, permit) = match admit(&self.shared, "sip", &inc.dialled, &inc.caller) {
            Ok(admitted) => admitted,
            Err(Refusal::ShuttingDown) => {
                self.endpoint.reject(now, inc.call, 503, Some(30));
                info!(call = %inc.call, "refused: shutting down");
                return;
            }
            Err(Refusal::NoService) => {
                self.endpoint.reject(now, inc.call, 404, None);
                metrics::counter!("topup_ivr_calls_refused_total", "reason" => "not-found")
                    .increment(1);
                if self.sources.poll_record(now, source) {
                    info!(call = %inc.call, "refused: no service for the dialled number");
                    let cdr = refused_cdr(&inc, None, "not-found");
                    self.shared
                        .call_env
                        .call_log
                        .send(crate::store::call_log::CallEnd { cdr, path: vec![] });
                }
                return;
            }
            Err(Refusal::Full) => {
                // Over capacity: refuse quickly and cheaply (no CDR write under a flood).
                self.endpoint.reject(now, inc.call, 503, Some(5));
                debug!(call = %inc.call, "refused: at max_calls");
                return;
            }
        };
        let source_slot = self.sources.handle_call_started(now, source);
        let (tx, rx) = mpsc::channel(CALL_EVENT_QUEUE);
        self.routes.insert(inc.call, tx.clone());
        info!(call = %inc.call, service = %plan.service, from = %crate::redact::Phone(&inc.caller), "incoming call");
        let setup = SipCallSetup {
            shared: self.shared.clone(),
            incoming: inc,
            plan,
            events: rx,
            events_tx: tx,
            commands: self.commands_tx.clone(),
            source_slot,
        };
        tokio::spawn(run_sip_call(setup, permit));
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Sleeps until `at`, or forever when there is no deadline (a `select!` branch for an
/// endpoint's next timer).
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
