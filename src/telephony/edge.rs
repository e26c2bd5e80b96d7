//! What the softswitch edges (Asterisk, FreeSWITCH) share: the softswitch owns the caller's
//! channel and the network media; each adapter is an [`Edge`] that turns its protocol into
//! [`EdgeEvent`]s and carries out [`EdgeCommand`]s, run by the one call driver
//! (`call::drive`) the built-in SIP edge runs too, in the call's own task. Also admission (for
//! every edge), the retry policy for the control connections, and the DTMF pairing Asterisk
//! needs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::warn;

pub use crate::call::{DialEvent, Edge, EdgeCommand, EdgeEvent};
use crate::call::{MediaParams, Record};
use crate::dialplan::Dialplan;
use crate::media::dtmf::Digit;
use crate::media::g711::Codec;
use crate::media::player::Payload;
use crate::server::state::Shared;
use crate::shutdown::Shutdown;

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

/// Runs one softswitch call to its end on `edge` (in the adapter's task: a call is one task)
/// and writes its CDR; the admission `permit` is held until the record is stored (as for SIP
/// calls), and the adapter's clean-up follows.
pub async fn run_call<E: Edge>(
    shared: &Arc<Shared>,
    call: EdgeCall,
    edge: &mut E,
    permit: OwnedSemaphorePermit,
) {
    let mut record = Record::new(&call.call_id, &call.caller, &call.dialled, &call.plan);
    record.cdr.codec = Some(call.codec.name().to_string());
    record.cdr.answered_at = Some(record.cdr.started_at.clone());
    let _active = shared.call_started(&call.plan.service);
    let media = MediaParams {
        codec: call.codec,
        payload: call.payload,
        lead: call.lead,
        telephone_event: None,
        inband: call.inband,
        send: true,
    };
    let (reason, session) =
        crate::call::drive(&shared.call_env, call.plan, media, edge, &mut record).await;
    record
        .finish(&shared.call_env, &reason, Some(&session))
        .await;
    drop(permit);
}

/// Writes the record of a call that was answered but never reached its plan: the softswitch
/// could not set its media up, or the caller left meanwhile. Every answered call gets a CDR,
/// whatever failed (staff count answered calls against records).
pub async fn record_unserved(shared: &Shared, call: &EdgeCall, answered_at: String, reason: &str) {
    let mut record = Record::new(&call.call_id, &call.caller, &call.dialled, &call.plan);
    record.cdr.codec = Some(call.codec.name().to_string());
    record.cdr.started_at = answered_at.clone();
    record.cdr.answered_at = Some(answered_at);
    record.finish(&shared.call_env, reason, None).await;
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

/// Admission, the same on every edge: not while shutting down, the plan for the dialled number,
/// and a call permit (`calls.max`). The SIP edge first applies its per-source limits.
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

/// Which way a key reached an adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The control connection (ARI `ChannelDtmfReceived`, ESL `DTMF`).
    Control,
    /// The media connection (chan_websocket `DTMF_END`).
    Media,
}

/// Asterisk reports one key press twice when media runs over chan_websocket: as
/// `ChannelDtmfReceived` on the caller and as `DTMF_END` on the media socket, usually at the
/// same moment but, on a loaded machine, measured more than 80 ms apart. A key from one source
/// is dropped when it pairs with an unpaired report of the same key from the *other* source
/// within [`DtmfDedup::WINDOW`] (the oldest first); two presses reported by one source always
/// count twice, so a quick "5 5" is two keys however late the second source is.
#[derive(Debug, Default)]
pub struct DtmfDedup {
    /// Keys seen from one source and not yet matched by the other.
    pending: Vec<(Digit, KeySource, Instant)>,
}

impl DtmfDedup {
    /// How long a report waits for its pair: well beyond the lag of either connection under
    /// load (a 200-call storm on a busy machine doubled keys with 80 ms). Pairing is by order,
    /// not by time, so a long window loses no press; it only bounds how long a report that
    /// never gets its pair (a source that stopped reporting) can absorb a later one.
    pub const WINDOW: Duration = Duration::from_secs(1);

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
    fn a_report_late_under_load_still_pairs_and_quick_presses_stay_two() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut dd = DtmfDedup::default();
        // "5 5" pressed 150 ms apart; the media connection reports each 300 ms late.
        assert!(dd.handle(t, d('5'), KeySource::Control));
        assert!(dd.handle(t + ms(150), d('5'), KeySource::Control));
        assert!(!dd.handle(t + ms(300), d('5'), KeySource::Media));
        assert!(!dd.handle(t + ms(450), d('5'), KeySource::Media));
        // The next press counts.
        assert!(dd.handle(t + ms(600), d('5'), KeySource::Media));
    }

    #[test]
    fn reports_far_apart_are_two_presses() {
        let t = Instant::now();
        let mut dd = DtmfDedup::default();
        assert!(dd.handle(t, d('2'), KeySource::Control));
        assert!(dd.handle(
            t + DtmfDedup::WINDOW + Duration::from_millis(1),
            d('2'),
            KeySource::Media
        ));
        // A different key is never matched.
        assert!(dd.handle(t + DtmfDedup::WINDOW * 2, d('3'), KeySource::Control));
    }
}
