//! A call on the built-in SIP edge: its set-up (offer/answer, an RTP port, ringing, the
//! ACK) and [`SipEdge`], the [`Edge`] the one call driver runs it on. The edge owns the
//! caller's RTP socket (media accepted only as `media::peer` allows), answers re-INVITEs,
//! transfers by REFER, and for the calling service places the outbound leg to the gateway
//! and relays RTP between the two legs (a B2BUA).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tracing::{Instrument, debug, info, warn};

use super::endpoint::{CallHandle, IncomingCall, SipEvent};
use super::sdp::{self, Direction, Negotiated};
use super::transport::SipCommand;
use crate::call::{DialEvent, Edge, EdgeCommand, EdgeEvent, MediaParams, Record};
use crate::clock::timestamp;
use crate::dialplan::Dialplan;
use crate::media::dtmf::DtmfMethod;
use crate::media::peer::{RtpPeer, Verdict};
use crate::media::player::Payload;
use crate::server::state::Shared;
use crate::store::Cdr;

/// Everything a SIP call task needs from the transport.
pub struct SipCallSetup {
    pub shared: Arc<Shared>,
    pub incoming: IncomingCall,
    pub plan: Arc<Dialplan>,
    pub events: mpsc::Receiver<SipEvent>,
    /// The sender side of `events`, for the legs this call places (calling service).
    pub events_tx: mpsc::Sender<SipEvent>,
    pub commands: mpsc::Sender<SipCommand>,
    /// The call's hold on its source's share of calls, released when the call ends.
    pub source_slot: super::admission::Slot,
}

/// Runs one SIP call to its end and writes its CDR. The admission `permit` is held until the
/// record is written, so "no call in progress" also means "every record is stored" (shutdown
/// relies on it).
pub async fn run_sip_call(setup: SipCallSetup, permit: OwnedSemaphorePermit) {
    let span =
        tracing::info_span!("call", id = %setup.incoming.call, call_id = %setup.incoming.call_id);
    async move {
        let shared = setup.shared.clone();
        let inc = &setup.incoming;
        let mut record = Record::new(&inc.call_id, &inc.caller, &inc.dialled, &setup.plan);
        let _active = shared.call_started(&setup.plan.service);
        let plan = setup.plan.clone();
        let _slot = match set_up(setup, &mut record).await {
            Ok((mut edge, media, slot)) => {
                let (reason, session) =
                    crate::call::drive(&shared.call_env, plan, media, &mut edge, &mut record).await;
                record
                    .finish(&shared.call_env, &reason, Some(&session))
                    .await;
                slot
            }
            Err(reason) => {
                record.finish(&shared.call_env, reason, None).await;
                None
            }
        };
        drop(permit);
    }
    .instrument(span)
    .await
}

/// Answers the call: negotiates the media (or offers it, for an INVITE without SDP), takes an
/// RTP port, rings for `answer_delay`, sends the 200 and waits for the ACK. Returns the edge,
/// or why the call ended first.
async fn set_up(
    setup: SipCallSetup,
    record: &mut Record,
) -> Result<(SipEdge, MediaParams, Option<super::admission::Slot>), &'static str> {
    let SipCallSetup {
        shared,
        incoming,
        mut events,
        events_tx,
        commands,
        source_slot,
        ..
    } = setup;
    let call = incoming.call;
    let cfg = &shared.cfg;
    let send = |cmd: SipCommand| {
        let commands = commands.clone();
        async move {
            let _ = commands.send(cmd).await;
        }
    };

    // An INVITE without an offer (late offer, as some PBXs and SBCs send): our 200 carries
    // the offer and the ACK the answer.
    let offered = if incoming.offer.trim_ascii().is_empty() {
        None
    } else {
        match sdp::negotiate(&incoming.offer, &cfg.sip.codecs) {
            Ok(n) => Some(n),
            Err(e) => {
                info!(error = %e, "offer refused");
                send(SipCommand::Reject(call, 488, None)).await;
                return Err("no-acceptable-media");
            }
        }
    };
    let socket = match shared.ports.bind(cfg.sip.advertise).await {
        Ok(s) => s,
        Err(e) if crate::server::fds::is_out_of_descriptors(&e) => {
            tracing::error!(
                "out of file descriptors: call refused (raise the open files limit, or lower calls.max / http.max_connections)"
            );
            send(SipCommand::Reject(call, 503, Some(5))).await;
            return Err("no-descriptors");
        }
        Err(e) => {
            warn!(error = %e, "no RTP port free");
            send(SipCommand::Reject(call, 503, Some(5))).await;
            return Err("no-rtp-port");
        }
    };
    let local_port = socket.local_addr().map(|a| a.port()).unwrap_or(0);

    if !cfg.sip.answer_delay.is_zero() {
        send(SipCommand::Ring(call)).await;
        let ring = tokio::time::sleep(cfg.sip.answer_delay);
        tokio::pin!(ring);
        loop {
            tokio::select! {
                _ = &mut ring => break,
                ev = events.recv() => match ev {
                    Some(SipEvent::Ended { reason, .. }) => return Err(reason.as_str()),
                    None => return Err("internal"),
                    _ => {}
                },
            }
        }
    }

    let session_id: u64 = rand::random::<u32>() as u64;
    let sdp_version = 1u64;
    let body = match &offered {
        Some(n) => sdp::write_answer(n, cfg.sip.advertise, local_port, session_id, sdp_version),
        None => sdp::write_offer(
            &cfg.sip.codecs,
            cfg.sip.advertise,
            local_port,
            session_id,
            sdp_version,
        ),
    };
    send(SipCommand::Answer(call, body)).await;
    record.cdr.answered_at = Some(timestamp());

    // Wait for the ACK before starting media: the caller is then sure to hear the start.
    let ack_answer = loop {
        match events.recv().await {
            Some(SipEvent::Confirmed { answer, .. }) => break answer,
            Some(SipEvent::Ended { reason, .. }) => return Err(reason.as_str()),
            Some(_) => {}
            None => return Err("internal"),
        }
    };
    let negotiated = match offered {
        Some(n) => n,
        None => match ack_answer.map(|a| sdp::negotiate(&a, &cfg.sip.codecs)) {
            Some(Ok(n)) => n,
            refused => {
                // RFC 3261 §13.3.1.4: an ACK without an acceptable answer ends the call.
                let why = match refused {
                    Some(Err(e)) => e.to_string(),
                    _ => "no SDP answer in the ACK".into(),
                };
                info!(error = %why, "answer to our offer refused");
                send(SipCommand::Hangup(call)).await;
                return Err("no-acceptable-media");
            }
        },
    };
    record.cdr.codec = Some(negotiated.codec.name().to_string());
    let media = media_params(&negotiated, cfg.rtp.inband_dtmf);
    let now = Instant::now();
    // Where media may come from and where ours goes (see media::peer).
    let peer = RtpPeer::new(
        now,
        cfg.rtp.source,
        SocketAddr::new(negotiated.remote_addr, negotiated.remote_port),
        Some(incoming.source.ip()),
    );
    let edge = SipEdge {
        shared: shared.clone(),
        call,
        socket,
        local_port,
        peer,
        last_rtp: now,
        media,
        session_id,
        sdp_version,
        events,
        events_tx,
        commands,
        pending: VecDeque::new(),
        referring: false,
        out: None,
        out_buf: Vec::new(),
        announcing: false,
    };
    Ok((edge, media, Some(source_slot)))
}

/// The outbound leg of the calling service.
struct OutLeg {
    call: CallHandle,
    socket: UdpSocket,
    /// Where the callee's media goes, once it answered.
    remote: Option<SocketAddr>,
}

/// The caller's SIP dialog and RTP socket, as the call driver sees them.
pub struct SipEdge {
    shared: Arc<Shared>,
    call: CallHandle,
    socket: UdpSocket,
    local_port: u16,
    /// Where the caller's media may come from and ours goes.
    peer: RtpPeer,
    last_rtp: Instant,
    /// The media as last negotiated.
    media: MediaParams,
    session_id: u64,
    sdp_version: u64,
    events: mpsc::Receiver<SipEvent>,
    events_tx: mpsc::Sender<SipEvent>,
    commands: mpsc::Sender<SipCommand>,
    /// Events decided while carrying out a command, reported by the next `recv`.
    pending: VecDeque<EdgeEvent>,
    /// A transfer (REFER) is in flight.
    referring: bool,
    out: Option<OutLeg>,
    out_buf: Vec<u8>,
    /// An announcement is being spoken during a joined call: the callee's audio is held.
    announcing: bool,
}

impl SipEdge {
    async fn command(&self, cmd: SipCommand) {
        let _ = self.commands.send(cmd).await;
    }

    /// Turns a SIP event into what the driver is told, if anything.
    async fn handle_sip(&mut self, ev: SipEvent) -> Option<EdgeEvent> {
        let out = self.out.as_ref().map(|o| o.call);
        match ev {
            SipEvent::Dtmf { digit, .. } => Some(EdgeEvent::Digit(digit, DtmfMethod::SipInfo)),
            SipEvent::Reoffer { call, .. } if out.is_some() => {
                // Mid-call renegotiation is not relayed; both legs keep their media.
                self.command(SipCommand::AnswerReoffer(call, Err(488)))
                    .await;
                None
            }
            SipEvent::Reoffer { offer, .. } => {
                let cfg = &self.shared.cfg;
                match sdp::negotiate(&offer, &cfg.sip.codecs) {
                    Ok(n) => {
                        self.sdp_version += 1;
                        self.media = media_params(&n, cfg.rtp.inband_dtmf);
                        let now = Instant::now();
                        self.peer
                            .set_sdp(now, SocketAddr::new(n.remote_addr, n.remote_port));
                        let answer = sdp::write_answer(
                            &n,
                            cfg.sip.advertise,
                            self.local_port,
                            self.session_id,
                            self.sdp_version,
                        );
                        self.command(SipCommand::AnswerReoffer(self.call, Ok(answer)))
                            .await;
                        Some(EdgeEvent::Media(self.media))
                    }
                    Err(e) => {
                        info!(error = %e, "re-offer refused");
                        self.command(SipCommand::AnswerReoffer(self.call, Err(488)))
                            .await;
                        None
                    }
                }
            }
            SipEvent::ReferResult { code, .. } => {
                if !std::mem::take(&mut self.referring) {
                    return None;
                }
                if (200..300).contains(&code) {
                    // The caller is with the agents: our leg of the call ends.
                    self.command(SipCommand::Hangup(self.call)).await;
                    Some(EdgeEvent::Transferred(Ok(())))
                } else {
                    Some(EdgeEvent::Transferred(Err(format!(
                        "the agents' side answered the REFER with {code}"
                    ))))
                }
            }
            SipEvent::Ended { call, .. } if Some(call) == out => {
                self.out = None;
                Some(EdgeEvent::Dial(DialEvent::Ended))
            }
            SipEvent::Ended { reason, .. } => Some(EdgeEvent::Ended(reason.as_str().into())),
            SipEvent::Outbound { call, code, sdp } if Some(call) == out => {
                let dial = match (code, sdp) {
                    (200..=299, Some(answer)) => {
                        match sdp::negotiate(&answer, &[self.media.codec]) {
                            Ok(n) => {
                                if let Some(o) = self.out.as_mut() {
                                    o.remote = Some(SocketAddr::new(n.remote_addr, n.remote_port));
                                }
                                return Some(EdgeEvent::Dial(DialEvent::Answered));
                            }
                            Err(e) => {
                                warn!(error = %e, "unusable answer from the gateway");
                                self.command(SipCommand::Hangup(call)).await;
                                DialEvent::Failed
                            }
                        }
                    }
                    (100..=199, _) => {
                        debug!(code, "ringing");
                        return None;
                    }
                    (486 | 600 | 603, _) => DialEvent::Busy,
                    (408 | 480 | 487, _) => DialEvent::NoAnswer,
                    _ => DialEvent::Failed,
                };
                self.out = None;
                Some(EdgeEvent::Dial(dial))
            }
            _ => None,
        }
    }

    /// Places the outbound leg to the calling gateway.
    async fn place(&mut self, number: String, caller: String) -> Result<OutLeg, ()> {
        let cfg = &self.shared.cfg;
        let gateway = cfg.calling.gateway.ok_or(())?;
        let socket = match self.shared.ports.bind(cfg.sip.advertise).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "no RTP port for the outbound leg");
                return Err(());
            }
        };
        let offer = Negotiated {
            remote_addr: cfg.sip.advertise,
            remote_port: 0,
            codec: self.media.codec,
            // Offer the caller's event payload type, so events relay unchanged.
            telephone_event: Some(self.media.telephone_event.unwrap_or(101)),
            direction: Direction::SendRecv,
        };
        let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
        let sdp = sdp::write_answer(
            &offer,
            cfg.sip.advertise,
            port,
            rand::random::<u32>() as u64,
            1,
        );
        let (reply, handle) = oneshot::channel();
        self.command(SipCommand::Invite {
            peer: gateway,
            uri: format!("sip:{number}@{gateway}"),
            from: caller,
            sdp,
            events: self.events_tx.clone(),
            reply,
        })
        .await;
        let call = handle.await.map_err(|_| ())?;
        // The relay's buffer exists only for calls that place a leg.
        self.out_buf.resize(2048, 0);
        Ok(OutLeg {
            call,
            socket,
            remote: None,
        })
    }
}

/// What the SIP edge waits on.
pub enum SipInput {
    /// Events decided while carrying out a command, to report now.
    Pending,
    /// A datagram on the caller's RTP port (in the driver's buffer), and its source.
    Rtp(usize, SocketAddr),
    /// A datagram on the outbound leg's RTP port (in the edge's own buffer).
    OutRtp(usize, SocketAddr),
    Sip(SipEvent),
}

impl Edge for SipEdge {
    type Input = SipInput;

    async fn wait(&mut self, buf: &mut [u8]) -> Option<SipInput> {
        if !self.pending.is_empty() {
            return Some(SipInput::Pending);
        }
        loop {
            tokio::select! {
                r = self.socket.recv_from(buf) => {
                    if let Ok((n, from)) = r {
                        return Some(SipInput::Rtp(n, from));
                    }
                }
                r = async {
                    let out = self.out.as_ref().expect("guarded");
                    out.socket.recv_from(&mut self.out_buf).await
                }, if self.out.is_some() => {
                    if let Ok((n, from)) = r {
                        return Some(SipInput::OutRtp(n, from));
                    }
                }
                ev = self.events.recv() => return ev.map(SipInput::Sip),
            }
        }
    }

    async fn handle(&mut self, input: SipInput, buf: &[u8]) -> Option<EdgeEvent> {
        match input {
            SipInput::Pending => self.pending.pop_front(),
            SipInput::Rtp(n, from) => {
                let now = Instant::now();
                if self.peer.handle_packet(now, from, &buf[..n]) != Verdict::Accept {
                    metrics::counter!("topup_ivr_rtp_foreign_packets_total").increment(1);
                    return None;
                }
                self.last_rtp = now;
                match &self.out {
                    None => return Some(EdgeEvent::Packet(n)),
                    // Joined with a callee: the caller's media goes to them.
                    Some(out) => {
                        if let Some(to) = out.remote {
                            let _ = out.socket.send_to(&buf[..n], to).await;
                        }
                    }
                }
                None
            }
            SipInput::OutRtp(n, from) => {
                let out = self.out.as_mut()?;
                // The callee's media, from the address its answer gave (its port may differ),
                // goes to the caller unless an announcement is being spoken.
                if out.remote.is_some_and(|o| o.ip() == from.ip()) && !self.announcing {
                    out.remote = Some(from);
                    if let Some(to) = self.peer.send_to(Instant::now()) {
                        let _ = self.socket.send_to(&self.out_buf[..n], to).await;
                    }
                }
                None
            }
            SipInput::Sip(ev) => self.handle_sip(ev).await,
        }
    }

    /// The caller is expected to send RTP unless the stream is on hold the other way (not
    /// checked while joined with a callee).
    fn poll_timeout(&self) -> Option<Instant> {
        (self.out.is_none() && self.media.send).then(|| self.last_rtp + self.shared.cfg.rtp.timeout)
    }

    fn handle_timeout(&mut self, now: Instant) -> Option<String> {
        self.poll_timeout()
            .is_some_and(|t| now >= t)
            .then(|| "rtp-timeout".into())
    }

    async fn send(&mut self, now: Instant, command: EdgeCommand) {
        match command {
            EdgeCommand::Media(packet) => {
                if let Some(to) = self.peer.send_to(now) {
                    let _ = self.socket.send_to(&packet, to).await;
                }
            }
            // Our RTP goes out in real time: nothing is queued to drop.
            EdgeCommand::Flush => {}
            EdgeCommand::Transfer { escalation, .. } => match self.shared.cfg.agent_uri.clone() {
                Some(uri) => {
                    let sep = if uri.contains('?') { '&' } else { '?' };
                    let to = format!("{uri}{sep}X-Escalation-Id={escalation}");
                    let headers = vec![("X-Escalation-Id".into(), escalation)];
                    self.command(SipCommand::Refer(self.call, to, headers))
                        .await;
                    self.referring = true;
                }
                None => self.pending.push_back(EdgeEvent::Transferred(Err(
                    "no agents address is configured (agents.uri)".into(),
                ))),
            },
            EdgeCommand::Hangup(_) => self.command(SipCommand::Hangup(self.call)).await,
            EdgeCommand::Dial { number, caller } => match self.place(number, caller).await {
                Ok(out) => self.out = Some(out),
                Err(()) => self.pending.push_back(EdgeEvent::Dial(DialEvent::Failed)),
            },
            EdgeCommand::DropDial => {
                if let Some(out) = self.out.take() {
                    self.command(SipCommand::Hangup(out.call)).await;
                }
            }
            EdgeCommand::Announcing(on) => self.announcing = on,
        }
    }

    fn can_dial(&self) -> bool {
        self.shared.cfg.calling.gateway.is_some()
    }
}

fn media_params(n: &Negotiated, inband: crate::config::InbandDtmf) -> MediaParams {
    use crate::config::InbandDtmf;
    MediaParams {
        codec: n.codec,
        payload: Payload::G711,
        lead: Duration::ZERO,
        telephone_event: n.telephone_event,
        inband: match inband {
            InbandDtmf::Auto => n.telephone_event.is_none(),
            InbandDtmf::Always => true,
            InbandDtmf::Never => false,
        },
        send: n.direction.we_send(),
    }
}

/// The record of a call refused before a task exists (the transport writes it).
pub fn refused_cdr(incoming: &IncomingCall, service: Option<String>, reason: &str) -> Cdr {
    let now = timestamp();
    Cdr {
        call_id: incoming.call_id.clone(),
        caller: incoming.caller.clone(),
        dialled: incoming.dialled.clone(),
        service,
        codec: None,
        dtmf_methods: String::new(),
        started_at: now.clone(),
        answered_at: None,
        ended_at: now,
        end_reason: reason.to_string(),
        digits: None,
    }
}
