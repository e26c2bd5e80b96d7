//! Calls from Asterisk: a Stasis application over ARI. The dialplan sends the recharge
//! numbers to `Stasis(<app>)`; for each call we answer, create an externalMedia channel
//! (chan_websocket, or RTP over UDP), put both in a mixing bridge, and run the call's plan
//! with keys from `ChannelDtmfReceived` / `DTMF_END`. Escalation sends the caller on in the
//! dialplan (`continue`) with the escalation id in channel variables.
//!
//! One task reads the events websocket and routes each event by channel id to the task of its
//! call; a call task owns its media connection and its REST clean-up, so a lost events
//! connection neither stops media nor leaks channels (on reconnect, calls whose channel is
//! gone are ended). A call task is the call: its [`AsteriskEdge`] is the edge the one call
//! driver (`call::drive`) runs the plan on.

pub mod ari;
pub mod chan_websocket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tracing::{Instrument, debug, info, warn};

use crate::config::{AriMedia, AsteriskConfig};
use crate::media::dtmf::{Digit, DtmfMethod};
use crate::media::g711::Codec;
use crate::server::state::Shared;
use crate::shutdown::Shutdown;
use crate::telephony::edge::{
    self, DialEvent, DtmfDedup, EdgeCall, EdgeCommand, EdgeEvent, KeySource, Refusal,
};
use ari::{Ari, Channel, Event, WsStream};
use chan_websocket::Command;

/// What the events task tells a call task.
#[derive(Debug)]
enum LegEvent {
    Dtmf(Digit),
    /// The caller's channel left the application or was destroyed.
    CallerGone(String),
    /// The media channel entered the application: only now may it join a bridge.
    MediaUp,
    /// The media channel is gone.
    MediaGone,
    /// An outbound leg (its channel id) answered: it entered the application.
    CalleeUp(String),
    /// An outbound leg (its channel id) is gone, with its Q.850 cause.
    CalleeGone(String, i64),
}

/// The hangup reason, if `e` is the caller's hangup.
fn caller_gone(e: LegEvent) -> Option<String> {
    match e {
        LegEvent::CallerGone(why) => Some(why),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leg {
    Caller,
    Media,
    /// The outbound leg of the calling service.
    Callee,
}

/// How long one attempt to open the events connection may take (an Asterisk host that is
/// down drops the SYN rather than refusing it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the Stasis application until the service stops (returns at once without `[asterisk]`).
pub async fn run(shared: Arc<Shared>) {
    let Some(cfg) = shared.cfg.asterisk.clone() else {
        return;
    };
    let ari = Ari::new(&cfg);
    // Call tasks report their channel ids here when they end.
    let (done_tx, mut done_rx) = mpsc::channel::<Vec<String>>(64);
    let mut routes: HashMap<String, (mpsc::Sender<LegEvent>, Leg)> = HashMap::new();
    let mut shutdown = shared.shutdown.clone();
    // Since when ARI has been out of reach, and when that was last logged.
    let mut outage: Option<(Instant, Instant)> = None;
    loop {
        match tokio::time::timeout(CONNECT_TIMEOUT, connect_events(&ari, &cfg.app)).await {
            Ok(Ok(mut ws)) => {
                match outage.take() {
                    Some((since, _)) => info!(
                        url = %ari.events_url(&cfg.app),
                        down_ms = since.elapsed().as_millis() as u64,
                        "ARI connected again"
                    ),
                    None => info!(url = %ari.events_url(&cfg.app), "ARI connected"),
                }
                shared.asterisk_up.store(true, Ordering::Relaxed);
                recover(&ari, &routes).await;
                loop {
                    tokio::select! {
                        Some(ids) = done_rx.recv() => forget(&mut routes, ids),
                        msg = ws.next() => match msg {
                            Some(Ok(Message::Text(text))) => {
                                on_event(&shared, &ari, &cfg, &mut routes, &done_tx, &text);
                            }
                            Some(Ok(Message::Ping(p))) => {
                                let _ = ws.send(Message::Pong(p)).await;
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                warn!(error = %e, "ARI events connection lost");
                                break;
                            }
                            None => {
                                warn!("ARI events connection closed by Asterisk");
                                break;
                            }
                        },
                        _ = shutdown.changed() => {
                            if *shutdown.borrow() == Shutdown::Stop {
                                let _ = ws.close(None).await;
                                return;
                            }
                        }
                    }
                }
                outage = Some((Instant::now(), Instant::now()));
            }
            Ok(Err(e)) => edge::log_outage("ARI", &mut outage, &e.to_string()),
            Err(_) => edge::log_outage("ARI", &mut outage, "no answer in 2 s"),
        }
        shared.asterisk_up.store(false, Ordering::Relaxed);
        let wait = tokio::time::sleep(edge::retry_delay());
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                Some(ids) = done_rx.recv() => forget(&mut routes, ids),
                _ = shutdown.changed() => {
                    if *shutdown.borrow() == Shutdown::Stop {
                        return;
                    }
                }
            }
        }
    }
}

/// A call is over: its channels are no longer routed.
fn forget(routes: &mut HashMap<String, (mpsc::Sender<LegEvent>, Leg)>, ids: Vec<String>) {
    for id in ids {
        routes.remove(&id);
    }
}

async fn connect_events(
    ari: &Ari,
    app: &str,
) -> Result<WsStream, tokio_tungstenite::tungstenite::Error> {
    let mut req = ari.events_url(app).into_client_request()?;
    if let Ok(v) = ari.authorization().parse() {
        req.headers_mut().insert("Authorization", v);
    }
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(ws)
}

/// After a reconnect: events of the gap are lost, so calls whose caller left meanwhile are
/// ended now (their tasks then remove the bridge and media channel).
async fn recover(ari: &Ari, routes: &HashMap<String, (mpsc::Sender<LegEvent>, Leg)>) {
    for (id, (tx, leg)) in routes {
        if *leg != Leg::Caller {
            continue;
        }
        match ari.channel_exists(id).await {
            Ok(true) => debug!(channel = %id, "call survived the reconnect"),
            Ok(false) => {
                info!(channel = %id, "caller left while ARI was disconnected");
                let _ = tx.send(LegEvent::CallerGone("lost".into())).await;
            }
            Err(e) => warn!(channel = %id, error = %e, "cannot check channel"),
        }
    }
}

fn on_event(
    shared: &Arc<Shared>,
    ari: &Ari,
    cfg: &AsteriskConfig,
    routes: &mut HashMap<String, (mpsc::Sender<LegEvent>, Leg)>,
    done: &mpsc::Sender<Vec<String>>,
    text: &str,
) {
    let event: Event = match serde_json::from_str(text) {
        Ok(e) => e,
        Err(e) => {
            debug!(error = %e, "ARI event not understood");
            return;
        }
    };
    let route =
        |routes: &HashMap<String, (mpsc::Sender<LegEvent>, Leg)>, id: &str, ev: LegEvent| {
            if let Some((tx, _)) = lookup(routes, id) {
                // A full queue means the call task is stuck; the event is dropped, not awaited,
                // so one call cannot stall every other.
                let _ = tx.try_send(ev);
            }
        };
    match event {
        Event::StasisStart { args, channel } => {
            match lookup(routes, &channel.id) {
                // The outbound leg answered.
                Some((_, Leg::Callee)) => {
                    let id = channel.id.clone();
                    return route(routes, &channel.id, LegEvent::CalleeUp(id));
                }
                // Our own media channel entering the application: the call may bridge it.
                Some((_, Leg::Media)) => return route(routes, &channel.id, LegEvent::MediaUp),
                Some(_) => return,
                None => {}
            }
            let (tx, rx) = mpsc::channel(64);
            let media_id = format!("{}-media", channel.id);
            routes.insert(channel.id.clone(), (tx.clone(), Leg::Caller));
            routes.insert(media_id.clone(), (tx.clone(), Leg::Media));
            routes.insert(callee_id(&channel.id), (tx, Leg::Callee));
            let span = tracing::info_span!("call", call_id = %channel.id);
            tokio::spawn(
                call_task(CallTask {
                    shared: shared.clone(),
                    ari: ari.clone(),
                    cfg: cfg.clone(),
                    channel,
                    args,
                    media_id,
                    events: rx,
                    done: done.clone(),
                })
                .instrument(span),
            );
        }
        Event::ChannelDtmfReceived { digit, channel } => {
            let Some(d) = digit.chars().next().and_then(Digit::from_char) else {
                return;
            };
            route(routes, &channel.id, LegEvent::Dtmf(d));
        }
        Event::StasisEnd { channel } => match lookup(routes, &channel.id) {
            Some((_, Leg::Caller)) => route(
                routes,
                &channel.id,
                LegEvent::CallerGone("caller-hangup".into()),
            ),
            Some((_, Leg::Media)) => route(routes, &channel.id, LegEvent::MediaGone),
            // ChannelDestroyed follows with the cause.
            Some((_, Leg::Callee)) | None => {}
        },
        Event::ChannelDestroyed {
            channel,
            cause,
            cause_txt,
        } => match lookup(routes, &channel.id) {
            Some((_, Leg::Caller)) => {
                debug!(cause = %cause_txt, "caller channel destroyed");
                route(
                    routes,
                    &channel.id,
                    LegEvent::CallerGone("caller-hangup".into()),
                )
            }
            Some((_, Leg::Media)) => route(routes, &channel.id, LegEvent::MediaGone),
            Some((_, Leg::Callee)) => {
                let id = channel.id.clone();
                route(routes, &channel.id, LegEvent::CalleeGone(id, cause))
            }
            None => {}
        },
        Event::Other => {}
    }
}

mod call;

#[cfg(test)]
mod tests;

use call::*;
