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

pub use driver::{DialEvent, Edge, EdgeCommand, EdgeEvent, Record, drive, next_wake, timestamp};
pub use session::{CallSession, HANGUP_LINGER, MediaParams, Output};
