//! The top-up core: money, the double-entry ledger, cards, wallets, prepaid accounts, number
//! lookup, carriers and products. Pure rules live in the submodules without I/O (`money`,
//! `ledger`, `auth`'s policy, product pricing); [`Core`] applies them to the database.

pub mod accounts;
pub mod adapters;
pub mod agents;
pub mod apikeys;
pub mod auth;
pub mod books;
pub mod calling;
pub mod cards;
pub mod carriers;
pub mod demo;
pub mod error;
pub mod escalations;
pub mod hash_pool;
pub mod ledger;
/// Money, currencies and FX rates (crate `topup-values`).
pub use topup_values::money;
pub mod notices;
pub mod notify;
pub mod numbers;
pub mod secrets;
pub mod topups;
pub mod webhooks;

pub use error::TopupError;

use std::sync::Arc;

use crate::store::Db;
use auth::AuthPolicy;
use secrets::Pepper;

/// The top-up core as every channel uses it: the database, the PIN pepper, the brute-force
/// policy, the calling limits and, when SMS are on, the notifier that writes confirmations and
/// alerts.
#[derive(Clone, Debug)]
pub struct Core {
    pub db: Db,
    pub pepper: Pepper,
    pub policy: AuthPolicy,
    /// The calling service's toll-fraud limits.
    pub call_limits: calling::CallLimits,
    /// `Some` when an SMSC is configured: changes write their notifications through it.
    pub notifier: Option<Arc<dyn notify::Notifier>>,
}

impl Core {
    pub fn new(db: Db, pepper: Pepper, policy: AuthPolicy) -> Core {
        Core {
            db,
            pepper,
            policy,
            call_limits: calling::CallLimits::default(),
            notifier: None,
        }
    }

    /// Sets the calling service's toll-fraud limits.
    pub fn with_call_limits(mut self, limits: calling::CallLimits) -> Core {
        self.call_limits = limits;
        self
    }

    /// Turns notifications on: confirmations, notices and alerts go to `notifier`.
    pub fn with_notifier(mut self, notifier: Arc<dyn notify::Notifier>) -> Core {
        self.notifier = Some(notifier);
        self
    }
}

/// Cores on both backends for tests (see [`crate::store::testing`]).
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::store::testing::tempfile_guard::Guard;

    pub async fn cores() -> Vec<(Core, Option<Guard>)> {
        crate::store::testing::backends()
            .await
            .into_iter()
            .map(|(db, g)| {
                (
                    Core::new(
                        db,
                        Pepper::new(b"test-pepper-0123456789").unwrap(),
                        AuthPolicy::default(),
                    ),
                    g,
                )
            })
            .collect()
    }
}
