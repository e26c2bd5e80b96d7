//! The text channel's sans-IO core: an SMPP 3.4 ESME session over one connection and the
//! short-message text on the wire. No sockets and no clock: the service's gateway owns the
//! TCP connection and feeds bytes and time.

pub mod session;
pub mod text;
