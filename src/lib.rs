//! topup-ivr: an IVR media service for prepaid mobile top-up.

pub mod media;
pub mod telephony;
