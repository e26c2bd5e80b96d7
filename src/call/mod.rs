//! The call core: one call's logic ([`session`], sans-IO), the paid-call clock of the calling
//! service ([`paid`], sans-IO), the one driver that runs a call on any edge ([`driver`]), the
//! operations a plan invokes on the top-up core ([`operations`]), and the simulator that runs a
//! plan in the terminal against the real core ([`simulate`]).
//! The edges (`telephony::sip`, `telephony::asterisk`, `telephony::freeswitch`) sit above and
//! implement [`driver::Edge`]; nothing here knows their protocols.

pub mod driver;
pub mod operations;
pub mod paid;
pub mod session;
pub mod simulate;

pub use driver::{DialEvent, Edge, EdgeCommand, EdgeEvent, Record, drive, next_wake};
pub use session::{CallSession, HANGUP_LINGER, MediaParams, Output};

/// What a call's driver uses of the service, and nothing else — as mini-redis's `Handler`
/// gets its database and its shutdown signal, not the server. Built once when the service
/// starts; its content follows reloads (calls keep the version they started with).
#[derive(Clone)]
pub struct CallEnv {
    pub core: crate::topup::Core,
    pub store: crate::store::Store,
    /// Where ended calls' records go.
    pub call_log: crate::store::call_log::CallLog,
    pub adapters: crate::topup::adapters::Adapters,
    pub hlr: Option<std::sync::Arc<crate::topup::numbers::Hlr>>,
    pub content: crate::live::Live<(
        std::sync::Arc<crate::media::prompts::PromptStore>,
        std::sync::Arc<crate::dialplan::Dialplans>,
    )>,
    pub shutdown: tokio::sync::watch::Receiver<crate::shutdown::Shutdown>,
    /// `[calls]`: the longest call.
    pub calls: crate::config::CallSettings,
    /// `[calling]`: the calling service's ring timeout and warning.
    pub calling: crate::config::CallingSettings,
}

impl CallEnv {
    /// The prompts in use now.
    pub fn prompts(&self) -> std::sync::Arc<crate::media::prompts::PromptStore> {
        self.content.current().0.clone()
    }
}
