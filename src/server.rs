//! `topup-ivr serve`: loads prompts, dialplans and the store, binds the SIP and HTTP
//! listeners, runs until SIGINT/SIGTERM, then drains: new calls get 503, calls in progress
//! may finish until `calls.shutdown_grace`, after which they are hung up.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{Mutex, Semaphore, watch};
use tracing::{error, info, warn};

use crate::call::CallEnv;
use crate::config::Config;
use crate::dialplan::{Catalog, DialplanError, Dialplans};
use crate::live::Live;
use crate::media::prompts::{LoadOptions, PromptError, PromptStore};
use crate::sms::messages::SmsTexts;
use crate::store::{Db, Store, StoreError};
use crate::telephony::sip::endpoint::{Endpoint, EndpointConfig};
use crate::telephony::sip::transport::Transport;
use crate::topup::adapters::Adapters;
use crate::topup::numbers::Hlr;
use crate::topup::secrets::Pepper;
use crate::topup::{Core, books::now_ms};

pub use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("prompts: {0}")]
    Prompts(#[from] PromptError),
    #[error("dialplans:\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Dialplans(Vec<DialplanError>),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("SMS messages:\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Sms(Vec<crate::sms::messages::MessagesError>),
    #[error("{0}")]
    Secret(#[from] crate::topup::secrets::SecretError),
    #[error("{0}")]
    Topup(#[from] crate::topup::TopupError),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// State shared by the transports and call tasks (read-only but for counters and ports).
pub struct Shared {
    pub cfg: Config,
    /// What a call's driver uses (and nothing else): the edges hand it to `call::drive`.
    pub call_env: Arc<CallEnv>,
    /// Prompts and dialplans; replaced whole on reload (calls keep the version they started
    /// with, through their own `Arc`s).
    content: Live<(Arc<PromptStore>, Arc<Dialplans>)>,
    /// The top-up core (its database also holds the call records).
    pub core: Core,
    /// The SMS texts and keywords when an SMSC is configured (the core's notifier writes with
    /// the same ones; a reload replaces them for both).
    pub sms_texts: Option<SmsTexts>,
    pub adapters: Adapters,
    pub hlr: Option<Arc<Hlr>>,
    pub store: Store,
    pub ports: PortPool,
    /// One permit per call in progress (admission).
    pub calls: Arc<Semaphore>,
    pub calls_total: AtomicU64,
    pub shutdown: watch::Receiver<Shutdown>,
    /// The SMSC connections and whether each is bound (for `/health`).
    pub sms_links: Arc<std::sync::RwLock<Vec<crate::sms::gateway::LinkStatus>>>,
    /// Whether the ARI events connection is up (for `/health`).
    pub asterisk_up: std::sync::atomic::AtomicBool,
    /// Whether the FreeSWITCH event socket is up (for `/health`).
    pub freeswitch_up: std::sync::atomic::AtomicBool,
    /// Calls in progress per service (staff pages).
    pub active_by_service: std::sync::Mutex<std::collections::BTreeMap<String, i64>>,
    /// Renders `/metrics` (None when another recorder was installed first).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl Shared {
    pub fn prompts(&self) -> Arc<PromptStore> {
        self.content.current().0.clone()
    }

    pub fn dialplans(&self) -> Arc<Dialplans> {
        self.content.current().1.clone()
    }

    /// Loads prompts, dialplans and (when SMS are on) the SMS texts again; on any error
    /// keeps all the current ones.
    pub fn reload(&self) -> Result<(), ServeError> {
        let (prompts, dialplans) = load_content(&self.cfg)?;
        let sms = match &self.sms_texts {
            Some(texts) => Some((texts, sms_messages(&self.cfg)?)),
            None => None,
        };
        self.content
            .replace((Arc::new(prompts), Arc::new(dialplans)));
        if let Some((texts, m)) = sms {
            texts.replace(m);
        }
        Ok(())
    }

    /// Counts a call of `service` as in progress until the guard is dropped.
    pub fn call_started(self: &Arc<Self>, service: &str) -> ActiveCall {
        self.add_active(service, 1);
        ActiveCall {
            shared: self.clone(),
            service: service.to_string(),
        }
    }

    fn add_active(&self, service: &str, n: i64) {
        let mut m = self
            .active_by_service
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let v = m.entry(service.to_string()).or_default();
        *v += n;
        if *v <= 0 {
            m.remove(service);
        }
    }

    /// Resolves once the service is told to stop (the last step of a shutdown): the
    /// background tasks end on it.
    pub async fn stopped(&self) {
        let mut shutdown = self.shutdown.clone();
        let _ = shutdown.wait_for(|s| *s == Shutdown::Stop).await;
    }

    pub fn active_calls(&self) -> usize {
        self.cfg.sip.max_calls - self.calls.available_permits()
    }
}

/// A call in progress, counted per service while it lives.
pub struct ActiveCall {
    shared: Arc<Shared>,
    service: String,
}

impl Drop for ActiveCall {
    fn drop(&mut self) {
        self.shared.add_active(&self.service, -1);
    }
}

/// Hands out RTP ports: even ports of the range, round robin, skipping ports in use.
pub struct PortPool {
    low: u16,
    high: u16,
    next: Mutex<u16>,
}

impl PortPool {
    pub fn new((low, high): (u16, u16)) -> PortPool {
        let low = low + (low % 2);
        PortPool {
            low,
            high,
            next: Mutex::new(low),
        }
    }

    /// Binds the next free even port on `ip`.
    pub async fn bind(&self, ip: IpAddr) -> std::io::Result<UdpSocket> {
        let count = ((self.high - self.low) / 2 + 1) as usize;
        let mut next = self.next.lock().await;
        for _ in 0..count {
            let port = *next;
            *next = if port + 2 > self.high {
                self.low
            } else {
                port + 2
            };
            if let Ok(s) = UdpSocket::bind(SocketAddr::new(ip, port)).await {
                return Ok(s);
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("all RTP ports {}-{} are in use", self.low, self.high),
        ))
    }
}

/// Loads prompts and dialplans as `serve` does (also used by the check commands).
pub fn load_content(cfg: &Config) -> Result<(PromptStore, Dialplans), ServeError> {
    // 16 kHz prompt audio only where a softswitch streams it (it doubles the linear audio).
    let wideband = cfg
        .freeswitch
        .as_ref()
        .is_some_and(|f| f.sample_rate == 16000);
    let prompts = PromptStore::load(&cfg.paths.prompts, LoadOptions { wideband })?;
    let has_prompt = |lang: &str, name: &str| prompts.get(lang, name).is_some();
    let dialplans = Dialplans::load_dir(
        &cfg.paths.dialplans,
        &Catalog::new(&has_prompt, &crate::sms::messages::NAMES),
    )
    .map_err(ServeError::Dialplans)?;
    Ok((prompts, dialplans))
}

/// Opens the database (Postgres when `database.url` is set, else SQLite in the data
/// directory) and the top-up core over it.
pub async fn open_core(cfg: &Config) -> Result<Core, ServeError> {
    Ok(open_core_and_texts(cfg).await?.0)
}

/// [`open_core`], and the SMS texts its notifier writes with when an SMSC is configured.
pub async fn open_core_and_texts(cfg: &Config) -> Result<(Core, Option<SmsTexts>), ServeError> {
    let db = match &cfg.database_url {
        Some(url) => Db::connect(url).await?,
        None => Db::open(&cfg.paths.data_dir).await?,
    };
    let pepper = Pepper::load(&cfg.security.pin_pepper_file)?;
    let core =
        Core::new(db, pepper, cfg.security.auth).with_call_limits(cfg.calling.limits.clone());
    Ok(match load_sms(cfg)? {
        Some(m) => {
            let texts = Live::new(m);
            let outbox = crate::sms::outbox::SmsOutbox::new(texts.clone());
            (core.with_notifier(Arc::new(outbox)), Some(texts))
        }
        None => (core, None),
    })
}

/// The SMS texts and keywords, checked, when an SMSC is configured (else SMS are off).
pub fn load_sms(cfg: &Config) -> Result<Option<crate::sms::messages::Messages>, ServeError> {
    if !cfg.sms.enabled() {
        return Ok(None);
    }
    sms_messages(cfg).map(Some)
}

/// The SMS texts and keywords of `paths.sms`, checked (also for `sms check`).
pub fn sms_messages(cfg: &Config) -> Result<crate::sms::messages::Messages, ServeError> {
    crate::sms::messages::Messages::load_dir(&cfg.paths.sms, &cfg.sms.language)
        .map_err(ServeError::Sms)
}

/// The HLR client, when one is configured.
pub fn hlr(cfg: &Config) -> Option<Hlr> {
    cfg.hlr.as_ref().map(|h| {
        let key = h.api_key_env.as_deref().and_then(|v| std::env::var(v).ok());
        Hlr::new(&h.url, key, h.timeout, h.cache_ttl)
    })
}

/// A fingerprint of the prompt and dialplan files (names, sizes, modification times).
fn content_signature(
    cfg: &Config,
) -> Vec<(std::path::PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut out = vec![];
    let mut dirs = vec![cfg.paths.dialplans.clone()];
    if cfg.sms.enabled() {
        dirs.push(cfg.paths.sms.clone());
    }
    if let Ok(langs) = std::fs::read_dir(&cfg.paths.prompts) {
        dirs.extend(langs.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for d in dirs {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if let Ok(m) = e.metadata() {
                out.push((e.path(), m.len(), m.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

/// Reloads prompts, dialplans and SMS texts on SIGHUP or when their files change. A broken
/// file is reported and the running versions kept; calls in progress keep the version they
/// started with.
async fn reload_loop(shared: Arc<Shared>) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let every = shared.cfg.paths.reload_every;
    let mut last = content_signature(&shared.cfg);
    loop {
        let forced = tokio::select! {
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
            _ = tokio::time::sleep(if every.is_zero() { Duration::from_secs(3600) } else { every }) => false,
            _ = shared.stopped() => return,
        };
        let now = content_signature(&shared.cfg);
        if !forced && (every.is_zero() || now == last) {
            continue;
        }
        last = now;
        let s = shared.clone();
        match tokio::task::spawn_blocking(move || s.reload()).await {
            Ok(Ok(())) => info!(
                services = %shared.dialplans().plans().iter().map(|p| p.service.clone()).collect::<Vec<_>>().join(","),
                prompts = shared.prompts().len(),
                sms_texts = shared.sms_texts.is_some(),
                "reloaded the changed files"
            ),
            Ok(Err(e)) => {
                error!(error = %e, "reload refused; keeping the running prompts, dialplans and SMS texts")
            }
            Err(e) => error!(error = %e, "reload failed"),
        }
    }
}

/// Resolves pending top-ups every `every` until shutdown.
async fn reconcile_loop(shared: Arc<Shared>, every: Duration) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        match shared.core.reconcile(&shared.adapters, now_ms(), 100).await {
            Ok(r) if r.checked > 0 => info!(
                checked = r.checked,
                succeeded = r.succeeded,
                failed = r.failed,
                "reconciled top-ups"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "reconciliation failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => {
                if *shutdown.borrow() != Shutdown::Running {
                    return;
                }
            }
        }
    }
}

/// The Prometheus recorder behind `/metrics`: latency histograms in seconds with buckets
/// from 1 ms to 30 s.
fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let buckets = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .ok()?
        .install_recorder()
        .map_err(|e| warn!(error = %e, "metrics not recorded"))
        .ok()
}

/// Runs the service until `stop` completes (the command line passes [`termination_signal`]),
/// then shuts down gracefully: new calls refused, calls in progress given `shutdown_grace`,
/// then hung up.
pub async fn serve(cfg: Config, stop: impl Future<Output = ()>) -> Result<(), ServeError> {
    let started = std::time::Instant::now();
    let (prompts, dialplans) = load_content(&cfg)?;
    // The number plan is loaded lazily on first use (about half a second): load it now, not
    // in the first caller's silence.
    let _ = crate::topup::numbers::parse_number("+12015550100");
    let (core, sms_texts) = open_core_and_texts(&cfg).await?;
    if cfg.topups.demo && core.seed_demo(now_ms()).await? {
        info!("seeded the demo carriers, accounts and cards (see README)");
    }
    let store: Store = core.db.clone();
    let sip_socket = UdpSocket::bind(cfg.sip.listen)
        .await
        .map_err(|source| ServeError::Bind {
            what: "SIP",
            addr: cfg.sip.listen,
            source,
        })?;
    let http = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .map_err(|source| ServeError::Bind {
            what: "HTTP",
            addr: cfg.http.listen,
            source,
        })?;
    let sip_local = sip_socket.local_addr().unwrap_or(cfg.sip.listen);

    let (shutdown_tx, shutdown_rx) = watch::channel(Shutdown::Running);
    let endpoint = Endpoint::new(
        EndpointConfig {
            local_addr: SocketAddr::new(cfg.sip.advertise, sip_local.port()),
            user_agent: cfg.sip.user_agent.clone(),
            tsx: cfg.sip.tsx,
        },
        rand::random(),
    );
    let content = Live::new((Arc::new(prompts), Arc::new(dialplans)));
    let hlr = hlr(&cfg).map(Arc::new);
    let adapters = Adapters::new();
    let call_env = Arc::new(CallEnv {
        core: core.clone(),
        store: store.clone(),
        adapters: adapters.clone(),
        hlr: hlr.clone(),
        content: content.clone(),
        shutdown: shutdown_rx.clone(),
        calls: cfg.calls.clone(),
        calling: cfg.calling.clone(),
    });
    let shared = Arc::new(Shared {
        call_env,
        ports: PortPool::new(cfg.rtp.ports),
        calls: Arc::new(Semaphore::new(cfg.sip.max_calls)),
        calls_total: AtomicU64::new(0),
        sms_links: Default::default(),
        asterisk_up: Default::default(),
        freeswitch_up: Default::default(),
        metrics: install_metrics(),
        active_by_service: Default::default(),
        content,
        store: store.clone(),
        shutdown: shutdown_rx,
        hlr,
        adapters,
        core,
        sms_texts,
        cfg,
    });
    // What loading left free goes back to the system: the idle figure is the real one.
    release_free_memory();
    let services: Vec<String> = shared
        .dialplans()
        .plans()
        .iter()
        .map(|p| p.service.clone())
        .collect();
    info!(
        sip = %sip_local,
        http = %http.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        prompts = shared.prompts().len(),
        services = %services.join(","),
        startup_ms = started.elapsed().as_millis() as u64,
        "topup-ivr ready"
    );

    let transport = tokio::spawn(Transport::new(sip_socket, endpoint, shared.clone()).run());
    let http_task = tokio::spawn(crate::http::serve(http, shared.clone()));
    let reconciler = tokio::spawn(reconcile_loop(
        shared.clone(),
        shared.cfg.topups.reconcile_every,
    ));
    let reloader = tokio::spawn(reload_loop(shared.clone()));
    let sms = tokio::spawn(crate::sms::gateway::run(shared.clone()));
    let asterisk = tokio::spawn(crate::telephony::asterisk::run(shared.clone()));
    let freeswitch = tokio::spawn(crate::telephony::freeswitch::run(shared.clone()));
    let webhooks = tokio::spawn(crate::http::webhooks::run(shared.clone()));
    let heartbeat = tokio::spawn(heartbeat_loop(shared.clone(), node_id(sip_local.port())));

    stop.await;
    info!(
        active = shared.active_calls(),
        "shutting down: refusing new calls"
    );
    let _ = shutdown_tx.send(Shutdown::Draining);
    let grace = shared.cfg.calls.shutdown_grace;
    if !wait_idle(&shared, grace).await {
        warn!(
            active = shared.active_calls(),
            "grace period over: hanging up calls in progress"
        );
        let _ = shutdown_tx.send(Shutdown::HangupNow);
        wait_idle(&shared, Duration::from_secs(5)).await;
    }
    // Let the last BYEs leave before the socket closes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = shutdown_tx.send(Shutdown::Stop);
    let _ = transport.await;
    let _ = tokio::time::timeout(Duration::from_secs(6), sms).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), asterisk).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), freeswitch).await;
    // Every background task ends on Stop (one in the middle of a database write finishes it).
    for task in [http_task, reconciler, reloader, webhooks, heartbeat] {
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            warn!("a background task did not stop within 5 s");
        }
    }
    store.close().await;
    info!("stopped");
    Ok(())
}

/// This node's name for the staff pages: host and SIP port.
fn node_id(sip_port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{sip_port}")
}

/// Publishes this node's live figures every two seconds (nodes quiet for ten drop out of the
/// staff pages).
async fn heartbeat_loop(shared: Arc<Shared>, node: String) {
    let mut trimmed_at_total = 0;
    loop {
        let by = shared
            .active_by_service
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let total = shared
            .calls_total
            .load(std::sync::atomic::Ordering::Relaxed) as i64;
        if let Err(e) = shared
            .core
            .heartbeat(&node, shared.active_calls() as i64, &by, total, now_ms())
            .await
        {
            warn!(error = %e, "node figures not published");
        }
        // Idle again after calls: hand the memory they used back to the system, so the
        // service's footprint returns to its idle figure instead of staying at its peak.
        if shared.active_calls() == 0 && total != trimmed_at_total {
            trimmed_at_total = total;
            release_free_memory();
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shared.stopped() => return,
        }
    }
}

/// Returns the allocator's free pages to the system (glibc keeps them in its arenas, one per
/// thread that allocated, so a burst of calls would otherwise fix the process at its peak).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only works on the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Waits until no call is in progress (every call's permit is back, so every record is
/// stored), at most `limit`. New calls are refused by then (shutdown state), so taking every
/// permit is the moment the last call ends, not a poll.
async fn wait_idle(shared: &Shared, limit: Duration) -> bool {
    let all = u32::try_from(shared.cfg.sip.max_calls).unwrap_or(u32::MAX);
    tokio::time::timeout(limit, shared.calls.acquire_many(all))
        .await
        .is_ok_and(|permits| permits.is_ok())
}

/// SIGTERM or SIGINT: what stops a service run from the command line.
pub async fn termination_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGTERM; SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Descriptors kept for everything but calls and HTTP connections: the database pool, SMSC
/// and softswitch links, the SIP socket, logs, the runtime's own.
const RESERVED_FDS: u64 = 256;

/// Raises the open-files soft limit to the hard one and makes the configuration fit in it:
/// each call holds an RTP socket, each HTTP connection a socket. When both cannot have their
/// configured maximum, HTTP connections give way first (down to 64), then calls; each
/// change is said in a warning. Returns the warnings.
pub fn fit_descriptors(cfg: &mut crate::config::Config) -> Vec<String> {
    let mut warnings = vec![];
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit fill or read the struct we pass and change only this
    // process's limit.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return warnings;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        limit.rlim_cur
    };
    let (calls, http) = fit(
        soft,
        cfg.sip.max_calls as u64,
        cfg.http.max_connections as u64,
    );
    if http < cfg.http.max_connections as u64 {
        warnings.push(format!(
            "open files limit {soft}: http.max_connections lowered from {} to {http} so calls keep their descriptors",
            cfg.http.max_connections
        ));
        cfg.http.max_connections = http as usize;
    }
    if calls < cfg.sip.max_calls as u64 {
        warnings.push(format!(
            "open files limit {soft}: calls.max lowered from {} to {calls} (raise the limit, e.g. LimitNOFILE= in systemd)",
            cfg.sip.max_calls
        ));
        cfg.sip.max_calls = calls as usize;
    }
    warnings
}

/// (calls, HTTP connections) that fit in `soft` descriptors with [`RESERVED_FDS`] kept.
fn fit(soft: u64, calls: u64, http: u64) -> (u64, u64) {
    let room = soft.saturating_sub(RESERVED_FDS);
    if calls + http <= room {
        return (calls, http);
    }
    let http = room.saturating_sub(calls).max(64.min(http));
    let calls = calls.min(room.saturating_sub(http)).max(1);
    (calls, http)
}

/// Logs a failed `accept` on a listener, saying so plainly when the process is out of file
/// descriptors (once a second at most: the listener retries at once).
pub fn log_accept_error(what: &str, e: &std::io::Error) {
    use std::sync::atomic::AtomicU64;
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = crate::topup::books::now_ms() as u64;
    if now.saturating_sub(LAST.swap(now, std::sync::atomic::Ordering::Relaxed)) < 1000 {
        return;
    }
    if is_out_of_descriptors(e) {
        tracing::error!(
            "out of file descriptors: {what} connections cannot be accepted (raise the open files limit, or lower calls.max / http.max_connections)"
        );
    } else {
        tracing::warn!(error = %e, "{what} accept failed");
    }
}

/// EMFILE / ENFILE: the process or the system has no file descriptor left.
pub fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

#[cfg(test)]
mod fd_tests {
    use super::fit;

    #[test]
    fn calls_keep_their_descriptors_and_http_gives_way_first() {
        // Plenty: nothing changes.
        assert_eq!(fit(65536, 2000, 1024), (2000, 1024));
        // 1024 descriptors (a common default): 768 left; HTTP gives way to calls.
        assert_eq!(fit(1024, 500, 1024), (500, 268));
        // Calls alone would not fit: HTTP keeps 64, calls get the rest.
        assert_eq!(fit(1024, 2000, 1024), (704, 64));
    }
}
