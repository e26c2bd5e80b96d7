//! The call core: one call's logic ([`session`], sans-IO), the paid-call clock of the calling
//! service ([`paid`], sans-IO), and the one driver that runs a call on any edge ([`driver`]).
//! The edges (`telephony::sip`, `telephony::asterisk`, `telephony::freeswitch`) sit above and
//! implement [`driver::Edge`]; nothing here knows their protocols.

pub mod driver;
pub mod paid;
pub mod session;

pub use driver::{DialEvent, Edge, EdgeCommand, EdgeEvent, Record, drive, next_wake, timestamp};
pub use session::{CallSession, HANGUP_LINGER, MediaParams, Output};
