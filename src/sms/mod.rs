//! The text channel: SMPP to SMSCs (a sans-IO ESME session with tokio at the edge), the
//! outbox of confirmations and alerts, SMS commands and low-balance alerts.

pub mod commands;
pub mod gateway;
pub mod messages;
pub mod outbox;
pub mod service;
pub mod session;
pub mod text;
