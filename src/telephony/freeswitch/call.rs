//! One call from FreeSWITCH: the parked call, its task, set-up of mod_audio_fork's media, the edge
//! the call driver runs on, the calling service's outbound leg and transfers.

use super::*;

pub(super) struct ParkedCall {
    pub(super) uuid: String,
    pub(super) caller: String,
    pub(super) dialled: String,
    /// The channel's `send_silence_when_idle` when it parked (see [`writes_when_idle`]).
    pub(super) silence_when_idle: Option<String>,
    pub(super) codec: Codec,
}

/// Whether a parked channel writes frames while idle, from its `send_silence_when_idle`.
/// FreeSWITCH's `park` writes nothing unless the variable is set (to a non-zero level; -1 is
/// silence) before it parks, and mod_audio_fork plays streamed audio only into frames
/// FreeSWITCH writes: without it the caller hears nothing and every mark times out. `park`
/// reads the variable once, so setting it later does nothing; a call parked again does.
pub(super) fn writes_when_idle(value: Option<&str>) -> bool {
    value
        .map(str::trim)
        .and_then(|v| v.parse::<i64>().ok())
        .is_some_and(|v| v != 0)
}

/// The dialplan fix, said once per process in the log (each call is repaired regardless).
pub(super) static SILENCE_WARNED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// How long a repaired call has to park again.
pub(super) const REPARK_WAIT: Duration = Duration::from_secs(3);

/// How long a command on the event socket may wait for FreeSWITCH's reply.
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// How long the first streamed audio has to be played (its mark to come back) before the
/// call is taken to hear nothing.
pub(super) const AUDIO_CHECK_WAIT: Duration = Duration::from_secs(5);

/// How far ahead of real time prompt audio is streamed. mod_audio_fork plays what it holds
/// into each frame FreeSWITCH writes, with no buffer of its own to speak of: audio that comes
/// late leaves a gap the caller hears (measured under load: prompts no longer arrived sample
/// for sample). With 100 ms in hand, a wake-up of ours that late costs nothing; a barge-in
/// still cuts at once (`killAudio` empties that buffer).
pub(super) const PLAYOUT_LEAD: Duration = Duration::from_millis(100);

/// Frames streamed before the audio check's mark is sent.
pub(super) const AUDIO_CHECK_AFTER: u32 = 5;

/// A call's audio check ran out: FreeSWITCH reported none of its audio played. When it plays
/// nothing at all (the park that sends no frames, see the README) no call's mark comes back;
/// under a storm a busy FreeSWITCH reports marks late, or drops one, while its callers hear
/// the prompts (measured: a caller answered the read-back 2 s after its key, the mark never
/// came). So a call is taken to hear nothing only when no call's audio was reported played
/// within [`PLAYED_RECENTLY_MS`]; otherwise it goes on, and the lateness is logged.
pub(super) fn audio_check_failed(now_ms: i64, played_at_ms: i64) -> bool {
    played_at_ms == 0 || now_ms - played_at_ms > PLAYED_RECENTLY_MS
}

/// See [`audio_check_failed`].
pub(super) const PLAYED_RECENTLY_MS: i64 = 30_000;

/// Parks the call again with `send_silence_when_idle=-1` (an inline dialplan), so FreeSWITCH
/// writes the frames mod_audio_fork plays our audio into; returns once it has re-parked.
pub(super) async fn repair_silent_park(
    api: &mpsc::Sender<Api>,
    uuid: &str,
    events: &mut mpsc::Receiver<LegEvent>,
    early: &mut Vec<LegEvent>,
) -> Result<(), EslError> {
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
                return Err(EslError::CallerLeft);
            }
            Ok(Some(e)) => early.push(e),
            Ok(None) => return Err(EslError::Down),
            Err(_) => return Err(EslError::NotParked(REPARK_WAIT)),
        }
    }
}

pub(super) async fn api_call(api: &mpsc::Sender<Api>, command: String) -> Result<String, EslError> {
    esl_call(api, format!("api {command}"), vec![]).await
}

/// One command on the event socket and its reply (`-ERR ...` is an error).
pub(super) async fn esl_call(
    api: &mpsc::Sender<Api>,
    command: String,
    headers: Vec<(String, String)>,
) -> Result<String, EslError> {
    let (reply, rx) = oneshot::channel();
    api.send(Api {
        command,
        headers,
        reply,
    })
    .await
    .map_err(|_| EslError::Down)?;
    let r = tokio::time::timeout(REPLY_WAIT, rx)
        .await
        .map_err(|_| EslError::NoReply(REPLY_WAIT))?
        .map_err(|_| EslError::Lost)??;
    if r.starts_with("-ERR") {
        Err(EslError::Refused(r.trim().to_string()))
    } else {
        Ok(r)
    }
}

pub(super) async fn call_task(
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
pub(super) async fn run_leg(
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
    let answered_at = crate::clock::timestamp();
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
        played_at: &shared.freeswitch_played_at,
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
pub(super) struct FsEdge<'a> {
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
    /// When FreeSWITCH last reported any call's audio played (shared by the calls).
    played_at: &'a std::sync::atomic::AtomicI64,
    /// The audio check: frames streamed since it was (re)armed, and until when its mark has
    /// to come back; `None` once FreeSWITCH has played our audio.
    streamed: u32,
    check_deadline: Option<Instant>,
    audio_heard: bool,
    /// How the caller's channel is to be hung up once the call is over (`Some(None)`: not
    /// ours to hang up), set when the edge ends the call.
    end: Option<Option<&'static str>>,
}

/// What the FreeSWITCH edge waits on.
pub(super) enum FsInput {
    Pending,
    Leg(Option<LegEvent>),
    Media(Option<Result<Message, axum::Error>>),
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
        // Both cancel-safe: a channel receive, a websocket read. The audio check's deadline
        // is the driver's timer (poll_timeout / handle_timeout).
        tokio::select! {
            ev = self.events.recv() => Some(FsInput::Leg(ev)),
            msg = self.ws.next() => Some(FsInput::Media(msg)),
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
            FsInput::Leg(Some(LegEvent::CalleeNotPlaced(cause))) if self.callee == Some(true) => {
                debug!(%cause, "the originate job failed after the answer: the call goes on");
                None
            }
            FsInput::Leg(Some(LegEvent::CalleeGone(cause) | LegEvent::CalleeNotPlaced(cause))) => {
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
                        self.played_at
                            .store(crate::clock::now_ms(), std::sync::atomic::Ordering::Relaxed);
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
                    self.check_deadline = Some(Instant::now() + AUDIO_CHECK_WAIT);
                }
            }
            EdgeCommand::Media(_) => {}
            EdgeCommand::Flush => {
                let _ = self
                    .ws
                    .send(Message::Text(r#"{"type":"killAudio"}"#.into()))
                    .await;
                // The audio check's mark goes with the audio it followed, and FreeSWITCH does
                // not always say so: a key right after the mark (a storm's slow start) can
                // clear it with no `cleared` event, and the check would fail a call its caller
                // hears. It starts again on what plays next.
                if !self.audio_heard {
                    self.check_deadline = None;
                    self.streamed = 0;
                }
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
                self.pending
                    .push_back(EdgeEvent::Transferred(r.map_err(|e| e.to_string())));
            }
            // Ended already (the audio check failed): nothing is played out.
            EdgeCommand::Hangup(_) if self.end.is_some() => {}
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

    /// The audio check: the mark sent after the first frames must come back in time.
    fn poll_timeout(&self) -> Option<Instant> {
        self.check_deadline
    }

    fn handle_timeout(&mut self, now: Instant) -> Option<String> {
        if self.check_deadline.is_none_or(|d| now < d) {
            return None;
        }
        self.check_deadline = None;
        let played_at = self.played_at.load(std::sync::atomic::Ordering::Relaxed);
        if !audio_check_failed(crate::clock::now_ms(), played_at) {
            warn!(
                "FreeSWITCH has not reported this call's audio played in {AUDIO_CHECK_WAIT:?}, \
                 though it plays other calls' audio: taken as load, the call goes on"
            );
            self.audio_heard = true;
            return None;
        }
        // FreeSWITCH took our audio but played none of it: the caller hears silence. Such a
        // call must not look healthy: it ends, with its own end reason.
        tracing::error!(
            "FreeSWITCH played none of the call's audio in {AUDIO_CHECK_WAIT:?}: the caller \
             hears nothing. Set send_silence_when_idle=-1 before park in the dialplan and \
             rtp-timer-name=soft in the SIP profile (README, Running behind FreeSWITCH)"
        );
        metrics::counter!("topup_ivr_freeswitch_silent_calls_total").increment(1);
        self.end = Some(Some("NORMAL_TEMPORARY_FAILURE"));
        Some("no-audio".into())
    }

    fn can_dial(&self) -> bool {
        self.can_dial
    }
}

/// A mod_audio_fork mark report (`{"type":"mark","data":{"name":..,"event":..}}`): its name
/// and event (`playout` once the audio before it was played, `cleared` when it was dropped).
pub(super) fn mark_event(text: &str) -> Option<(&str, &str)> {
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
pub(super) async fn originate(
    api: &mpsc::Sender<Api>,
    cfg: &FreeswitchConfig,
    uuid: &str,
    number: &str,
    caller: &str,
    ring: Duration,
) -> Result<(), EslError> {
    let Some(template) = &cfg.calling_gateway else {
        return Err(EslError::NoGateway);
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
pub(super) async fn played_out(ws: &mut WebSocket) {
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
pub(super) async fn transfer(
    api: &mpsc::Sender<Api>,
    uuid: &str,
    cfg: &FreeswitchConfig,
    escalation: &str,
    target: &str,
    reason: &str,
) -> Result<(), EslError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_mark_fails_a_call_only_when_freeswitch_plays_no_call_at_all() {
        let now = 1_000_000;
        // Nothing ever reported played: the park sends no frames.
        assert!(audio_check_failed(now, 0));
        // Nothing for longer than the window: as good as nothing.
        assert!(audio_check_failed(now, now - PLAYED_RECENTLY_MS - 1));
        // Other calls' audio played just now: this mark is late, not lost for good.
        assert!(!audio_check_failed(now, now - 2_000));
        assert!(!audio_check_failed(now, now - PLAYED_RECENTLY_MS));
    }
}
