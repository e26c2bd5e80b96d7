//! The built-in SIP edge: a sans-IO UAS (message parsing, transactions, dialogs, SDP) and
//! the tokio transport that drives it.

pub mod admission;
pub mod endpoint;
pub mod message;
pub mod sdp;
pub mod transaction;
pub mod transport;
