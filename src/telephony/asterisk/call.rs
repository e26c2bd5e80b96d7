//! One call from Asterisk: its task, the media connection (chan_websocket or RTP), set-up, the edge
//! the call driver runs on, the calling service's outbound leg and escalation.

use super::*;

pub(super) struct CallTask {
    pub(super) shared: Arc<Shared>,
    pub(super) ari: Ari,
    pub(super) cfg: AsteriskConfig,
    pub(super) channel: Channel,
    pub(super) args: Vec<String>,
    pub(super) media_id: String,
    pub(super) events: mpsc::Receiver<LegEvent>,
    pub(super) done: mpsc::Sender<Vec<String>>,
}

/// The media leg of one call.
pub(super) enum MediaConn {
    Ws {
        ws: Box<WsStream>,
        xoff: bool,
        /// Our Close frame went out: Asterisk hangs the media channel up on it.
        closed: bool,
    },
    Rtp {
        socket: UdpSocket,
        asterisk: SocketAddr,
    },
}

impl MediaConn {
    /// Ends a chan_websocket connection with a Close frame (never a bare reset, which
    /// Asterisk logs as an error) and waits briefly for Asterisk's Close in return. Returns
    /// whether the media channel is thereby hung up (closing it is how chan_websocket's
    /// channel ends; a DELETE after that answers 404). An RTP leg is not closed here: its
    /// channel is hung up by REST.
    async fn close(&mut self) -> bool {
        let MediaConn::Ws { ws, closed, .. } = self else {
            return false;
        };
        if *closed {
            return true;
        }
        *closed = true;
        // Close, then read until Asterisk's Close (or the end) comes back; a peer that
        // neither reads nor answers gets no more than CLOSE_WAIT.
        let handshake = async {
            if ws.as_mut().close(None).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        };
        if tokio::time::timeout(CLOSE_WAIT, handshake).await.is_err() {
            debug!("no Close frame back from chan_websocket in time");
        }
        true
    }
}

/// How long Asterisk has to answer our Close frame.
pub(super) const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// How long a new media channel may take to enter the application. Asterisk puts an
/// externalMedia channel into Stasis only once it is up (for chan_websocket, once our
/// connection is in), on another thread; a bridge refuses it until then (422 "Channel not
/// in Stasis application").
pub(super) const MEDIA_ENTER_WAIT: Duration = Duration::from_secs(5);

/// How far ahead of real time prompt audio goes into chan_websocket's queue.
pub(super) const WS_LEAD: Duration = Duration::from_millis(60);

pub(super) async fn call_task(mut t: CallTask) {
    let caller_id = t.channel.id.clone();
    let bridge_id = format!("{caller_id}-bridge");
    let mut state = Cleanup::default();
    let mut media = None;
    let reason = run_leg(&mut t, &bridge_id, &mut state, &mut media).await;
    debug!(reason, "cleaning up");
    // Whatever happened, nothing stays behind in Asterisk. The media connection first: its
    // Close frame also hangs a chan_websocket channel up.
    if let Some(conn) = media.as_mut()
        && conn.close().await
    {
        state.media = false;
    }
    debug!("media closed");
    if state.bridge
        && let Err(e) = t.ari.destroy_bridge(&bridge_id).await
        && !e.is_not_found()
    {
        warn!(error = %e, "bridge not destroyed");
    }
    if state.media
        && let Err(e) = t.ari.hangup(&t.media_id, "normal").await
        && !e.is_not_found()
    {
        warn!(error = %e, "media channel not hung up");
    }
    if !state.caller_gone
        && !state.left
        && let Err(e) = t.ari.hangup(&caller_id, reason).await
        && !e.is_not_found()
    {
        warn!(error = %e, "caller not hung up");
    }
    if let Some(callee) = &state.callee {
        let _ = t.ari.hangup(&callee.id, "normal").await;
    }
    let _ = t
        .done
        .send(vec![
            caller_id.clone(),
            t.media_id.clone(),
            callee_id(&caller_id),
        ])
        .await;
}

/// What exists in Asterisk for this call and must be removed at the end.
#[derive(Default)]
pub(super) struct Cleanup {
    bridge: bool,
    /// The media channel exists.
    media: bool,
    caller_gone: bool,
    /// The caller went on in the dialplan (escalation): not ours to hang up.
    left: bool,
    /// The outbound leg that exists now.
    callee: Option<Callee>,
    /// Outbound legs placed so far (each gets an id of its own).
    dialled: u32,
}

/// An outbound leg of the calling service.
pub(super) struct Callee {
    id: String,
    answered: bool,
}

/// The routing key of the calling service's outbound channels: each is `<key><n>` (one at a
/// time per call, a new id for each: Asterisk must never be handed an id in use).
pub(super) fn callee_id(caller: &str) -> String {
    format!("{caller}-out")
}

/// The route of a channel: by its id, or for an outbound leg `<caller>-out<n>` by its key.
pub(super) fn lookup<'a>(
    routes: &'a HashMap<String, (mpsc::Sender<LegEvent>, Leg)>,
    id: &str,
) -> Option<&'a (mpsc::Sender<LegEvent>, Leg)> {
    routes.get(id).or_else(|| {
        let i = id.rfind("-out")? + "-out".len();
        let n = &id[i..];
        (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .then(|| routes.get(&id[..i]))
            .flatten()
            .filter(|(_, leg)| *leg == Leg::Callee)
    })
}

/// Why an answered call never reached its plan.
#[derive(Debug, thiserror::Error)]
pub(super) enum SetupError {
    #[error("no media channel: {0}")]
    Media(#[from] MediaError),
    #[error("the media channel did not enter the application in {0:?}")]
    MediaNotUp(Duration),
    #[error("the media channel was hung up before it was bridged")]
    MediaGone,
    #[error("cannot bridge: {0}")]
    Bridge(ari::AriError),
    /// The caller hung up meanwhile (with the reason for the CDR).
    #[error("the caller left")]
    CallerLeft(String),
}

/// Sets the call up and runs it; returns the hangup reason for the caller's channel.
pub(super) async fn run_leg(
    t: &mut CallTask,
    bridge_id: &str,
    st: &mut Cleanup,
    media: &mut Option<MediaConn>,
) -> &'static str {
    let caller_id = t.channel.id.clone();
    let dialled = t
        .args
        .first()
        .cloned()
        .or_else(|| t.channel.dialplan.as_ref().map(|d| d.exten.clone()))
        .unwrap_or_default();
    let caller = t.channel.caller.number.clone();
    let (plan, permit) = match edge::admit(&t.shared, "asterisk", &dialled, &caller) {
        Ok(x) => x,
        Err(r) => {
            info!(reason = r.as_str(), "call refused");
            return match r {
                Refusal::NoService => "unallocated",
                Refusal::Full | Refusal::ShuttingDown => "congestion",
            };
        }
    };
    info!(service = %plan.service, from = %crate::redact::Phone(&caller), "incoming call");
    if let Err(e) = t.ari.answer(&caller_id).await {
        warn!(error = %e, "cannot answer");
        st.caller_gone = e.is_not_found();
        return "failure";
    }
    let answered_at = crate::clock::timestamp();
    let inband = t.shared.cfg.rtp.inband_dtmf == crate::config::InbandDtmf::Always;
    let call = EdgeCall {
        call_id: caller_id.clone(),
        caller,
        dialled,
        plan,
        codec: t.cfg.codec,
        payload: crate::media::player::Payload::G711,
        // chan_websocket queues what we send and plays one frame per 20 ms from its own timer:
        // a frame of ours later than its tick leaves a 20 ms gap. In the calling service's
        // three-party mixing bridge the warning was twice heard spoiled (NCC 0.58, 0.67; it
        // passed 4 of 4 runs with the lead). 60 ms in the queue absorbs our wake-up jitter; a
        // barge-in still cuts at once (FLUSH_MEDIA). RTP media goes out on time.
        lead: match t.cfg.media {
            AriMedia::Websocket => WS_LEAD,
            AriMedia::Rtp => Duration::ZERO,
        },
        inband,
        can_dial: t.cfg.calling_endpoint.is_some(),
    };
    // Keys the caller presses while the media is being set up count (typed ahead).
    let mut early = vec![];
    if let Err(e) = set_up(t, bridge_id, st, media, &mut early).await {
        let reason = match e {
            SetupError::CallerLeft(why) => {
                st.caller_gone = true;
                why
            }
            e => {
                warn!(error = %e, "call not set up");
                "setup-failed".to_string()
            }
        };
        edge::record_unserved(&t.shared, &call, answered_at, &reason).await;
        return "failure";
    }
    let Some(media) = media.as_mut() else {
        return "failure";
    };

    let mut edge = AsteriskEdge {
        t,
        bridge_id,
        st,
        media,
        dedup: DtmfDedup::default(),
        pending: std::collections::VecDeque::new(),
        pcm: vec![],
        inband: call.inband,
        can_dial: call.can_dial,
        end: None,
    };
    for (at, d) in early {
        if let Some(e) = edge.key(at, d, KeySource::Control) {
            edge.pending.push_back(e);
        }
    }
    let shared = edge.t.shared.clone();
    edge::run_call(&shared, call, &mut edge, permit).await;
    edge.end.unwrap_or("normal")
}

/// One Asterisk call as the call driver sees it: the caller's channel (the ARI events routed
/// to this call), the media channel (chan_websocket or RTP), and their bridge.
pub(super) struct AsteriskEdge<'a> {
    t: &'a mut CallTask,
    bridge_id: &'a str,
    st: &'a mut Cleanup,
    media: &'a mut MediaConn,
    dedup: DtmfDedup,
    /// Events decided while carrying out a command (or typed ahead), to report next.
    pending: std::collections::VecDeque<EdgeEvent>,
    pcm: Vec<i16>,
    inband: bool,
    can_dial: bool,
    /// How the caller's channel is to be hung up once the call is over (set when the edge
    /// ends it).
    end: Option<&'static str>,
}

/// What the Asterisk edge waits on.
pub(super) enum AsteriskInput {
    Pending,
    Leg(Option<LegEvent>),
    Media(MediaIn),
}

impl AsteriskEdge<'_> {
    /// A key from one of the two reports Asterisk makes of it, once.
    fn key(&mut self, now: Instant, d: Digit, source: KeySource) -> Option<EdgeEvent> {
        self.dedup
            .handle(now, d, source)
            .then_some(EdgeEvent::Digit(d, DtmfMethod::Softswitch))
    }

    /// The media channel is gone: the caller hung up (the hangup may come just after), or
    /// the media failed.
    async fn media_lost(&mut self) -> Option<EdgeEvent> {
        if let Some(why) = edge::wait_for(&mut self.t.events, caller_gone).await {
            self.st.caller_gone = true;
            self.end = Some("normal");
            return Some(EdgeEvent::Ended(why));
        }
        info!("media connection closed");
        self.end = Some("failure");
        Some(EdgeEvent::Ended("media-lost".into()))
    }
}

impl edge::Edge for AsteriskEdge<'_> {
    type Input = AsteriskInput;

    async fn wait(&mut self, buf: &mut [u8]) -> Option<AsteriskInput> {
        if !self.pending.is_empty() {
            return Some(AsteriskInput::Pending);
        }
        // Both are cancel-safe: a channel receive, and a websocket or UDP read.
        tokio::select! {
            ev = self.t.events.recv() => Some(AsteriskInput::Leg(ev)),
            msg = media_recv(self.media, buf) => Some(AsteriskInput::Media(msg)),
        }
    }

    async fn handle(&mut self, input: AsteriskInput, _buf: &[u8]) -> Option<EdgeEvent> {
        match input {
            AsteriskInput::Pending => self.pending.pop_front(),
            AsteriskInput::Leg(Some(LegEvent::Dtmf(d))) => {
                self.key(Instant::now(), d, KeySource::Control)
            }
            AsteriskInput::Leg(Some(LegEvent::CallerGone(why))) => {
                self.st.caller_gone = true;
                self.end = Some("normal");
                Some(EdgeEvent::Ended(why))
            }
            AsteriskInput::Leg(Some(LegEvent::CalleeUp(id))) => {
                if self.st.callee.as_ref().is_none_or(|c| c.id != id) {
                    return None;
                }
                match self.t.ari.add_channels(self.bridge_id, &[&id]).await {
                    Ok(()) => {
                        if let Some(c) = self.st.callee.as_mut() {
                            c.answered = true;
                        }
                        Some(EdgeEvent::Dial(DialEvent::Answered))
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot join the outbound leg");
                        let _ = self.t.ari.hangup(&id, "normal").await;
                        self.st.callee = None;
                        Some(EdgeEvent::Dial(DialEvent::Failed))
                    }
                }
            }
            AsteriskInput::Leg(Some(LegEvent::CalleeGone(id, cause))) => {
                if self.st.callee.as_ref().is_none_or(|c| c.id != id) {
                    return None;
                }
                let Callee { answered, .. } = self.st.callee.take()?;
                Some(EdgeEvent::Dial(match (answered, cause) {
                    (true, _) => DialEvent::Ended,
                    // Q.850: 17 user busy; 18 no user responding, 19 no answer.
                    (false, 17) => DialEvent::Busy,
                    (false, 18 | 19) => DialEvent::NoAnswer,
                    (false, _) => DialEvent::Failed,
                }))
            }
            AsteriskInput::Leg(Some(LegEvent::MediaUp)) => None,
            AsteriskInput::Leg(Some(LegEvent::MediaGone) | None) => {
                self.st.media = false;
                self.media_lost().await
            }
            AsteriskInput::Media(MediaIn::Audio(frame)) => {
                if !self.inband {
                    return None;
                }
                self.pcm.resize(frame.len(), 0);
                self.t.cfg.codec.decode(&frame, &mut self.pcm);
                Some(EdgeEvent::Pcm(self.pcm.clone()))
            }
            AsteriskInput::Media(MediaIn::Control(text)) => {
                match chan_websocket::parse_event(&text) {
                    Some(chan_websocket::Event::DtmfEnd(c)) => Digit::from_char(c)
                        .and_then(|d| self.key(Instant::now(), d, KeySource::Media)),
                    Some(chan_websocket::Event::MediaXoff) => {
                        set_xoff(self.media, true);
                        None
                    }
                    Some(chan_websocket::Event::MediaXon) => {
                        set_xoff(self.media, false);
                        None
                    }
                    Some(chan_websocket::Event::MediaStart {
                        format,
                        optimal_frame_size,
                        ..
                    }) => {
                        debug!(%format, optimal_frame_size, "media started");
                        None
                    }
                    Some(chan_websocket::Event::Error(e)) => {
                        warn!(error = %e, "chan_websocket error");
                        None
                    }
                    _ => None,
                }
            }
            AsteriskInput::Media(MediaIn::Closed) => {
                // Asterisk closed it: the media channel is gone with it.
                self.st.media = false;
                if let MediaConn::Ws { closed, .. } = self.media {
                    *closed = true;
                }
                // When the caller hangs up, the media channel may go first.
                self.media_lost().await
            }
            AsteriskInput::Media(MediaIn::Nothing) => None,
        }
    }

    async fn send(&mut self, _now: Instant, command: EdgeCommand) {
        match command {
            EdgeCommand::Media(pkt) => match self.media {
                MediaConn::Ws { ws, xoff, closed } => {
                    // chan_websocket takes bare frames in the channel's format.
                    if !*xoff && !*closed && pkt.len() > 12 {
                        let _ = ws.send(Message::Binary(pkt[12..].to_vec().into())).await;
                    }
                }
                MediaConn::Rtp { socket, asterisk } => {
                    let _ = socket.send_to(&pkt, *asterisk).await;
                }
            },
            EdgeCommand::Flush => {
                if let MediaConn::Ws { ws, .. } = self.media
                    && let Ok(text) = Command::FlushMedia.to_json()
                {
                    let _ = ws.send(Message::Text(text.into())).await;
                }
            }
            EdgeCommand::Transfer {
                escalation,
                target,
                reason,
            } => {
                // "Please hold while I transfer you" must be heard to its end first.
                played_out(self.media).await;
                let r = escalate(
                    self.t,
                    self.bridge_id,
                    self.st,
                    self.media,
                    &escalation,
                    &target,
                    &reason,
                )
                .await;
                if r.is_ok() {
                    self.end = Some("normal");
                }
                self.pending
                    .push_back(EdgeEvent::Transferred(r.map_err(|e| e.to_string())));
            }
            EdgeCommand::Hangup(_) => {
                played_out(self.media).await;
                self.end = Some("normal");
            }
            EdgeCommand::Dial { number, caller } => {
                if let Err(e) = originate(self.t, self.st, &number, &caller).await {
                    warn!(error = %e, "cannot place the call");
                    self.st.callee = None;
                    self.pending.push_back(EdgeEvent::Dial(DialEvent::Failed));
                }
            }
            // Asterisk's bridge joins the legs and holds nothing of ours.
            EdgeCommand::Announcing(_) => {}
            EdgeCommand::DropDial => {
                if let Some(callee) = self.st.callee.take()
                    && let Err(e) = self.t.ari.hangup(&callee.id, "normal").await
                    && !e.is_not_found()
                {
                    warn!(error = %e, "outbound leg not hung up");
                }
            }
        }
    }

    fn can_dial(&self) -> bool {
        self.can_dial
    }
}

/// Answered caller → media channel in the application → caller and media in one bridge.
/// Keys pressed meanwhile are kept in `early`.
pub(super) async fn set_up(
    t: &mut CallTask,
    bridge_id: &str,
    st: &mut Cleanup,
    media: &mut Option<MediaConn>,
    early: &mut Vec<(Instant, Digit)>,
) -> Result<(), SetupError> {
    let format = match t.cfg.codec {
        Codec::Pcmu => "ulaw",
        Codec::Pcma => "alaw",
    };
    *media = Some(open_media(t, format, st).await?);
    t.ari
        .create_bridge(bridge_id)
        .await
        .map_err(SetupError::Bridge)?;
    st.bridge = true;
    // The caller is in the application already: bridge it while the media channel comes up.
    if let Err(e) = t.ari.add_channels(bridge_id, &[&t.channel.id]).await {
        if e.is_not_found() {
            return Err(SetupError::CallerLeft("caller-hangup".into()));
        }
        return Err(SetupError::Bridge(e));
    }
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + MEDIA_ENTER_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, t.events.recv()).await {
            Ok(Some(LegEvent::MediaUp)) => break,
            Ok(Some(LegEvent::Dtmf(d))) => early.push((Instant::now(), d)),
            Ok(Some(LegEvent::CallerGone(why))) => return Err(SetupError::CallerLeft(why)),
            Ok(Some(LegEvent::MediaGone)) => {
                st.media = false;
                return Err(SetupError::MediaGone);
            }
            Ok(Some(LegEvent::CalleeUp(_) | LegEvent::CalleeGone(..))) => {}
            Ok(None) => return Err(SetupError::MediaGone),
            Err(_) => return Err(SetupError::MediaNotUp(MEDIA_ENTER_WAIT)),
        }
    }
    debug!(
        wait_ms = started.elapsed().as_millis() as u64,
        "media channel in the application"
    );
    match t.ari.add_channels(bridge_id, &[&t.media_id]).await {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Err(SetupError::MediaGone),
        Err(e) => Err(SetupError::Bridge(e)),
    }
}

pub(super) enum MediaIn {
    Audio(Vec<u8>),
    Control(String),
    Closed,
    Nothing,
}

pub(super) async fn media_recv(media: &mut MediaConn, buf: &mut [u8]) -> MediaIn {
    match media {
        MediaConn::Ws { closed: true, .. } => std::future::pending().await,
        MediaConn::Ws { ws, .. } => match ws.next().await {
            Some(Ok(Message::Binary(b))) => MediaIn::Audio(b.to_vec()),
            Some(Ok(Message::Text(t))) => MediaIn::Control(t.to_string()),
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => MediaIn::Closed,
            Some(Ok(_)) => MediaIn::Nothing,
        },
        MediaConn::Rtp { socket, asterisk } => match socket.recv_from(buf).await {
            Ok((n, from)) if from.ip() == asterisk.ip() => {
                match rtp_rs::RtpReader::new(&buf[..n]) {
                    Ok(r) => MediaIn::Audio(r.payload().to_vec()),
                    Err(_) => MediaIn::Nothing,
                }
            }
            _ => MediaIn::Nothing,
        },
    }
}

/// How long to wait for queued prompt audio to be played before hanging up or transferring.
pub(super) const PLAYOUT_WAIT: Duration = Duration::from_secs(2);

/// Waits until chan_websocket has played everything queued (`MARK_MEDIA` →
/// `MEDIA_MARK_PROCESSED`): removing the media channel earlier cuts off the last words.
pub(super) async fn played_out(media: &mut MediaConn) {
    let MediaConn::Ws {
        ws, closed: false, ..
    } = media
    else {
        return;
    };
    let Ok(mark) = Command::MarkMedia("played-out").to_json() else {
        return;
    };
    if ws.send(Message::Text(mark.into())).await.is_err() {
        return;
    }
    let wait = async {
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg
                && let Some(chan_websocket::Event::MarkProcessed(id)) =
                    chan_websocket::parse_event(&t)
                && id == "played-out"
            {
                return;
            }
        }
    };
    if tokio::time::timeout(PLAYOUT_WAIT, wait).await.is_err() {
        debug!("no MEDIA_MARK_PROCESSED in time");
    }
}

pub(super) fn set_xoff(media: &mut MediaConn, on: bool) {
    if let MediaConn::Ws { xoff, .. } = media {
        if on {
            warn!("chan_websocket queue full (MEDIA_XOFF): holding prompt audio");
        }
        *xoff = on;
    }
}

#[derive(Debug, thiserror::Error)]
pub(super) enum MediaError {
    #[error(transparent)]
    Ari(#[from] ari::AriError),
    #[error("media websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("no RTP port: {0}")]
    Port(#[from] std::io::Error),
}

pub(super) async fn open_media(
    t: &CallTask,
    format: &str,
    st: &mut Cleanup,
) -> Result<MediaConn, MediaError> {
    match t.cfg.media {
        AriMedia::Websocket => {
            let conn = t
                .ari
                .external_media_websocket(&t.cfg.app, &t.media_id, format)
                .await?;
            st.media = true;
            let ws = t.ari.connect_media(&conn).await?;
            Ok(MediaConn::Ws {
                ws: Box::new(ws),
                xoff: false,
                closed: false,
            })
        }
        AriMedia::Rtp => {
            let socket = t.shared.ports.bind(t.shared.cfg.sip.advertise).await?;
            let ours = SocketAddr::new(t.shared.cfg.sip.advertise, socket.local_addr()?.port());
            let asterisk = t
                .ari
                .external_media_rtp(&t.cfg.app, &t.media_id, ours, format)
                .await?;
            st.media = true;
            Ok(MediaConn::Rtp { socket, asterisk })
        }
    }
}

/// Places the calling service's outbound leg into the application (it enters with
/// `StasisStart` once answered; [`LegEvent::CalleeUp`] then joins it to the bridge).
pub(super) async fn originate(
    t: &CallTask,
    st: &mut Cleanup,
    number: &str,
    caller: &str,
) -> Result<(), ari::AriError> {
    let Some(template) = &t.cfg.calling_endpoint else {
        return Err(ari::AriError::Malformed(
            "no [asterisk] calling_endpoint".into(),
        ));
    };
    st.dialled += 1;
    let id = format!("{}{}", callee_id(&t.channel.id), st.dialled);
    st.callee = Some(Callee {
        id: id.clone(),
        answered: false,
    });
    let ring = t
        .shared
        .cfg
        .calling
        .ring_timeout
        .as_secs()
        .max(1)
        .to_string();
    t.ari
        .originate(
            &template.replace("{number}", number),
            &t.cfg.app,
            &id,
            caller,
            &ring,
        )
        .await
}

/// Sends the caller on in the dialplan at `<escalation_context>,<target>,1` with
/// `TOPUP_ESCALATION_ID` and `TOPUP_ESCALATION_REASON` set (what the agent's screen pop
/// looks up). The media channel and bridge are removed first.
pub(super) async fn escalate(
    t: &CallTask,
    bridge_id: &str,
    st: &mut Cleanup,
    media: &mut MediaConn,
    escalation: &str,
    target: &str,
    reason: &str,
) -> Result<(), ari::AriError> {
    let caller = &t.channel.id;
    t.ari
        .set_variable(caller, "TOPUP_ESCALATION_ID", escalation)
        .await?;
    t.ari
        .set_variable(caller, "TOPUP_ESCALATION_REASON", reason)
        .await?;
    // The media channel goes first (its Close frame hangs a chan_websocket channel up).
    if media.close().await {
        st.media = false;
    }
    if st.media {
        let _ = t.ari.hangup(&t.media_id, "normal").await;
        st.media = false;
    }
    if st.bridge {
        let _ = t.ari.destroy_bridge(bridge_id).await;
        st.bridge = false;
    }
    t.ari
        .continue_in_dialplan(caller, &t.cfg.escalation_context, target)
        .await?;
    st.left = true;
    Ok(())
}
