//! The text channel: SMPP to SMSCs (the sans-IO ESME session of crate `topup-smpp` with tokio at the edge), the
//! outbox of confirmations and alerts, SMS commands and low-balance alerts.

pub mod commands;
pub mod gateway;
pub mod messages;
pub mod outbox;
pub mod service;
pub use topup_smpp::{session, text};

/// Cores with the text channel on, for the SMS tests.
#[cfg(test)]
pub(crate) mod testing {

    use std::sync::Arc;

    use super::messages::{Messages, SmsTexts};
    use super::outbox::SmsOutbox;
    use crate::store::testing::tempfile_guard::Guard;
    use crate::topup::Core;

    /// The shipped SMS texts.
    pub fn texts() -> SmsTexts {
        SmsTexts::new(
            Messages::load_dir(
                &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sms"),
                "en",
            )
            .unwrap(),
        )
    }

    /// A core per backend (SQLite, Postgres) whose notifications are SMS in the shipped texts.
    pub async fn sms_cores() -> Vec<(Core, Option<Guard>)> {
        let m = texts();
        let mut out = vec![];
        for (core, g) in crate::topup::testing::cores().await {
            out.push((core.with_notifier(Arc::new(SmsOutbox::new(m.clone()))), g));
        }
        out
    }
}
