//! The built-in SIP edge's sans-IO core: message parsing and writing, transactions, dialogs
//! (the UAS endpoint), SDP offer/answer and per-source admission. No sockets and no clock:
//! every entry point takes `now` and input and returns output; the service's transport owns
//! the UDP socket and the timer.

pub mod admission;
pub mod endpoint;
pub mod message;
pub mod sdp;
pub mod transaction;
