//! `topup-ivr serve`: loads prompts, dialplans and the store, binds the SIP and HTTP
//! listeners, runs until SIGINT/SIGTERM, then drains: new calls get 503, calls in progress
//! may finish until `calls.shutdown_grace`, after which they are hung up.

pub mod content;
pub mod fds;
pub mod state;
mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::call::CallEnv;
use crate::clock::now_ms;
use crate::config::Config;
use crate::live::Live;
use crate::store::Store;
use crate::store::call_log::CallLog;
use crate::telephony::sip::endpoint::{Endpoint, EndpointConfig};
use crate::telephony::sip::transport::Transport;
use crate::topup::adapters::Adapters;

pub use crate::shutdown::Shutdown;
use content::content_signature;
pub use content::{
    ServeError, hlr, load_content, load_sms, open_core, open_core_and_texts, sms_messages,
};
pub use fds::{fit_descriptors, is_out_of_descriptors, log_accept_error};
pub use state::{PortPool, Shared};
use tasks::{heartbeat_loop, reconcile_loop, release_free_memory, reload_loop};

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
pub async fn serve(mut cfg: Config, stop: impl Future<Output = ()>) -> Result<(), ServeError> {
    let started = std::time::Instant::now();
    // Taken before loading: a file changed from here on is reloaded.
    let loaded = content_signature(&cfg);
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
    // The port bound (the configured one may be 0: any), for what the service says to dial.
    cfg.sip.listen = sip_local;

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
    let (call_log, call_log_writer) = CallLog::spawn(store.clone());
    let call_env = Arc::new(CallEnv {
        core: core.clone(),
        store: store.clone(),
        call_log,
        adapters: adapters.clone(),
        hlr: hlr.clone(),
        content,
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
        freeswitch_played_at: Default::default(),
        metrics: install_metrics(),
        active_by_service: Default::default(),
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
    let http_local = http.local_addr().map(|a| a.to_string()).unwrap_or_default();
    info!(
        sip = %sip_local,
        http = %http_local,
        prompts = shared.prompts().len(),
        services = %services.join(","),
        startup_ms = started.elapsed().as_millis() as u64,
        "topup-ivr ready"
    );
    // Where things are, once, for whoever just started it.
    let dial: Vec<String> = shared.dial_uris().into_iter().map(|(_, uri)| uri).collect();
    info!(
        "dial {}; agents: http://{http_local}/console, staff: http://{http_local}/staff, API: http://{http_local}/api/v1/openapi.json (all linked from http://{http_local}/)",
        dial.join(", ")
    );

    let transport = tokio::spawn(Transport::new(sip_socket, endpoint, shared.clone()).run());
    let http_task = tokio::spawn(crate::http::serve(http, shared.clone()));
    let reconciler = tokio::spawn(reconcile_loop(
        shared.clone(),
        shared.cfg.topups.reconcile_every,
    ));
    let reloader = tokio::spawn(reload_loop(shared.clone(), loaded));
    let sms = shared.sms_texts.clone().map(|texts| {
        tokio::spawn(crate::sms::gateway::run(crate::sms::gateway::SmsEnv {
            core: shared.core.clone(),
            adapters: shared.adapters.clone(),
            hlr: shared.hlr.clone(),
            texts,
            cfg: shared.cfg.sms.clone(),
            shutdown: shared.shutdown.clone(),
            links: shared.sms_links.clone(),
        }))
    });
    let asterisk = tokio::spawn(crate::telephony::asterisk::run(shared.clone()));
    let freeswitch = tokio::spawn(crate::telephony::freeswitch::run(shared.clone()));
    let webhooks = tokio::spawn(crate::http::webhooks::run(
        shared.core.clone(),
        shared.shutdown.clone(),
    ));
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
    if let Some(sms) = sms {
        let _ = tokio::time::timeout(Duration::from_secs(6), sms).await;
    }
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
    // The last calls' records are written (or, with the database out, tried for a while).
    call_log_writer.finish().await;
    store.close().await;
    info!("stopped");
    Ok(())
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

/// This node's name for the staff pages: host and SIP port.
fn node_id(sip_port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{sip_port}")
}
