//! topup-ivr: an IVR media service for prepaid mobile top-up.

pub mod call;
pub mod clock;
pub mod config;
/// Call flows (crate `topup-dialplan`).
pub use topup_dialplan as dialplan;
pub mod http;
pub mod live;
/// Pure audio (crate `topup-media`).
pub use topup_media as media;
pub mod redact;
pub mod server;
pub mod shutdown;
pub mod sms;
pub mod store;
pub mod telephony;
/// What the service's text files share (crate `topup-values`).
pub use topup_values::textfile;
pub mod topup;
