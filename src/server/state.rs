//! The state the edges, the front doors (HTTP, SMS) and the background tasks share: the
//! service's configuration, its content (prompts and dialplans, reloadable), the calls in
//! progress and their RTP ports, and the links' status for `/health`. It imports nothing of
//! the edges or front doors that use it (they are above it; `server` builds it and starts them).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::net::UdpSocket;
use tokio::sync::{Mutex, Semaphore, watch};

use super::content::{ServeError, load_content, sms_messages};
use crate::call::CallEnv;
use crate::config::Config;
use crate::dialplan::Dialplans;
use crate::media::prompts::PromptStore;
use crate::shutdown::Shutdown;
use crate::sms::messages::SmsTexts;
use crate::store::Store;
use crate::topup::Core;
use crate::topup::adapters::Adapters;
use crate::topup::numbers::Hlr;

/// State shared by the transports and call tasks (read-only but for counters and ports).
pub struct Shared {
    pub cfg: Config,
    /// What a call's driver uses (and nothing else): the edges hand it to `call::drive`.
    pub call_env: Arc<CallEnv>,
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
    pub sms_links: Arc<std::sync::RwLock<Vec<LinkStatus>>>,
    /// Whether the ARI events connection is up (for `/health`).
    pub asterisk_up: std::sync::atomic::AtomicBool,
    /// Whether the FreeSWITCH event socket is up (for `/health`).
    pub freeswitch_up: std::sync::atomic::AtomicBool,
    /// When FreeSWITCH last reported a call's audio played (ms since the epoch; 0: never).
    pub freeswitch_played_at: std::sync::atomic::AtomicI64,
    /// Calls in progress per service (staff pages).
    pub active_by_service: std::sync::Mutex<std::collections::BTreeMap<String, i64>>,
    /// Renders `/metrics` (None when another recorder was installed first).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl Shared {
    pub fn prompts(&self) -> Arc<PromptStore> {
        self.call_env.prompts()
    }

    pub fn dialplans(&self) -> Arc<Dialplans> {
        self.call_env.content.current().1.clone()
    }

    /// What to dial on the built-in SIP edge: (service, `sip:NUMBER@ADDRESS:PORT`) for every
    /// number of every plan.
    pub fn dial_uris(&self) -> Vec<(String, String)> {
        let at = std::net::SocketAddr::new(self.cfg.sip.advertise, self.cfg.sip.listen.port());
        self.dialplans()
            .plans()
            .iter()
            .flat_map(|p| {
                p.numbers
                    .iter()
                    .map(move |n| (p.service.clone(), format!("sip:{n}@{at}")))
            })
            .collect()
    }

    /// Loads prompts, dialplans and (when SMS are on) the SMS texts again; on any error
    /// keeps all the current ones.
    pub fn reload(&self) -> Result<(), ServeError> {
        let (prompts, dialplans) = load_content(&self.cfg)?;
        let sms = match &self.sms_texts {
            Some(texts) => Some((texts, sms_messages(&self.cfg)?)),
            None => None,
        };
        self.call_env
            .content
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

/// Live state of an SMSC connection, for `/health`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LinkStatus {
    pub name: String,
    pub bound: bool,
}
