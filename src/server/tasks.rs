//! The service's background tasks: reloading content, reconciling top-ups, publishing this
//! node's figures.

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use super::content::{ContentSignature, content_signature};
use super::state::Shared;
use crate::clock::now_ms;
use crate::shutdown::Shutdown;

/// Reloads prompts, dialplans and SMS texts on SIGHUP or when their files change. A broken
/// file is reported and the running versions kept; calls in progress keep the version they
/// started with.
/// `loaded` is the files' signature taken before the running content was loaded: a change made
/// between that load and this task's start is a change too.
pub(super) async fn reload_loop(shared: Arc<Shared>, loaded: ContentSignature) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let every = shared.cfg.paths.reload_every;
    let mut last = loaded;
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
pub(super) async fn reconcile_loop(shared: Arc<Shared>, every: Duration) {
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

/// Publishes this node's live figures every two seconds (nodes quiet for ten drop out of the
/// staff pages).
pub(super) async fn heartbeat_loop(shared: Arc<Shared>, node: String) {
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
pub(super) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only works on the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
