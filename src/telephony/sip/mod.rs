//! The built-in SIP edge: a sans-IO UAS (message parsing, transactions, dialogs, SDP) and
//! the tokio transport that drives it, and the edge a call runs on ([`call::SipEdge`]).

pub mod admission;
pub mod call;
pub mod endpoint;
pub mod message;
pub mod sdp;
pub mod transaction;
pub mod transport;
