//! Sends queued webhooks (see [`crate::topup::webhooks`]): at least once, signed, retried with
//! backoff; several nodes share the queue through short leases.

use std::time::Duration;

use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::shutdown::Shutdown;
use crate::topup::Core;
use crate::topup::webhooks::signature;

const EVERY: Duration = Duration::from_secs(1);
/// How long a claimed webhook is ours before another node may send it.
const LEASE_MS: i64 = 60_000;

/// Sends due webhooks until the service stops.
pub async fn run(core: Core, mut shutdown: tokio::sync::watch::Receiver<Shutdown>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap_or_default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.changed() => {
                if *shutdown.borrow() == Shutdown::Stop {
                    return;
                }
            }
        }
        let due = match core.claim_webhooks(now_ms(), LEASE_MS, 50).await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "webhooks not read");
                continue;
            }
        };
        for w in due {
            let t = now_ms() / 1000;
            let result = http
                .post(&w.url)
                .header("Content-Type", "application/json")
                .header("X-Topup-Delivery", &w.id)
                .header("X-Topup-Signature", signature(&w.secret, t, &w.body))
                .body(w.body.clone())
                .send()
                .await;
            let outcome = match result {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("answered {}", r.status().as_u16())),
                Err(e) => Err(if e.is_timeout() {
                    "timed out".to_string()
                } else {
                    "unreachable".to_string()
                }),
            };
            match &outcome {
                Ok(()) => info!(delivery = %w.id, "webhook delivered"),
                Err(e) => {
                    debug!(delivery = %w.id, error = %e, attempt = w.attempts + 1, "webhook not delivered")
                }
            }
            if let Err(e) = core
                .webhook_attempted(&w.id, outcome, w.attempts, now_ms())
                .await
            {
                warn!(error = %e, "webhook attempt not recorded");
            }
        }
    }
}
