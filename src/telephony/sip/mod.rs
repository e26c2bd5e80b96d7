//! The built-in SIP edge: the sans-IO UAS (crate `topup-sip`: message parsing, transactions,
//! dialogs, SDP, admission), the tokio transport that drives it, and the edge a call runs on
//! ([`call::SipEdge`]).

pub use topup_sip::{admission, endpoint, message, sdp, transaction};

pub mod call;
pub mod transport;
