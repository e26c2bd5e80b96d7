//! The values every layer shares, pure (no I/O, no clock): money in minor units with its
//! currency, FX rates, phone numbers per the number plan, and what the service's text files
//! share (a directory's TOML files, durations written as text). The top-up core, the dialplan,
//! the SMS layer and the configuration all speak them; none of them owns them.

pub mod money;
pub mod phone;
pub mod pin;
pub mod textfile;
