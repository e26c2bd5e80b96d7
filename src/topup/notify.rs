//! What the top-up core tells people. A change in the books (a top-up settled, a card
//! redeemed, an account locked, a low balance) causes a [`Notification`]; the core hands it to
//! its [`Notifier`] inside the transaction that makes the change, so a message exists exactly
//! when its cause does. The SMS layer is the notifier (its outbox renders and queues the
//! text); with none configured, notifications are not written. The core knows nothing of how
//! they are sent.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use sqlx::AnyConnection;

use super::{Core, TopupError};

/// A message for a person: what happened (`kind`, a message name of the SMS texts) and its
/// values, for `to` (a phone number).
#[derive(Clone, Debug)]
pub struct Notification {
    /// Unique per cause: the same notification written twice is written once.
    pub id: String,
    pub kind: &'static str,
    pub to: String,
    /// The language, when the cause knows it (else the recipient's account or country).
    pub language: Option<String>,
    pub vars: Vec<(&'static str, String)>,
    pub reference: Option<String>,
}

/// The future [`Notifier::write`] returns.
pub type WriteFuture<'a> = Pin<Box<dyn Future<Output = Result<bool, TopupError>> + Send + 'a>>;

/// Where notifications go: written in the transaction of their cause (`conn`).
pub trait Notifier: Send + Sync + fmt::Debug {
    /// Writes `n`; whether it was written (not when its destination is no phone number, or
    /// a notification with its id exists already).
    fn write<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        n: Notification,
        now: i64,
    ) -> WriteFuture<'a>;
}

impl Core {
    /// Whether notifications are written at all (an SMSC is configured).
    pub fn notifications_on(&self) -> bool {
        self.notifier.is_some()
    }

    /// Writes `n` inside the caller's transaction. Returns whether it was written: not when
    /// notifications are off, or the notifier did not (see [`Notifier::write`]).
    pub async fn notify(
        &self,
        conn: &mut AnyConnection,
        n: Notification,
        now: i64,
    ) -> Result<bool, TopupError> {
        match &self.notifier {
            Some(notifier) => notifier.write(conn, n, now).await,
            None => Ok(false),
        }
    }

    /// Writes a notification in a transaction of its own (for causes that change nothing
    /// else: replies to malformed commands, balance answers).
    pub async fn send_notification(&self, n: Notification, now: i64) -> Result<bool, TopupError> {
        if !self.notifications_on() {
            return Ok(false);
        }
        let mut tx = self.db.begin().await?;
        let written = self.notify(&mut tx, n, now).await?;
        tx.commit().await?;
        Ok(written)
    }
}
