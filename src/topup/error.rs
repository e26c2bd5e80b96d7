//! The top-up core's errors, split by fault, each with a stable code that the voice dialplans
//! branch on and the HTTP API returns.

use super::ledger::LedgerError;
use super::money::MoneyError;

#[derive(Debug, thiserror::Error)]
pub enum TopupError {
    // --- the caller's input ---
    #[error("wrong PIN")]
    InvalidPin,
    #[error("{0} is locked after too many wrong PINs")]
    Locked(&'static str),
    #[error("too many failed attempts; try again later")]
    RateLimited,
    #[error("this card was already used")]
    CardRedeemed,
    #[error("this card has expired")]
    CardExpired,
    #[error("this card is blocked")]
    CardBlocked,
    #[error("invalid number: {0}")]
    InvalidNumber(String),
    #[error("no wallet for this number")]
    NoWallet,
    #[error("no prepaid account for this number")]
    NoAccount,
    #[error("no linked funding account")]
    NoFunding,
    #[error("no product {0}")]
    NoProduct(String),
    #[error("no product for this number")]
    NoProductForNumber,
    #[error("amount {amount} is outside {min} – {max}")]
    AmountOutOfRange {
        amount: String,
        min: String,
        max: String,
    },
    #[error("request {0} was already made with different details")]
    RequestConflict(String),
    #[error(transparent)]
    Money(#[from] MoneyError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    // --- the carrier ---
    #[error("the carrier refused the top-up: {0}")]
    CarrierFailed(String),
    #[error("no carrier for this number")]
    NoCarrier,
    #[error("calls to this number are not available")]
    NoRate,
    #[error("the balance does not pay for a call")]
    NoFunds,
    #[error("calls to this destination are not allowed")]
    DestinationBlocked,
    #[error("calling limit: {0}")]
    CallLimit(&'static str),
    // --- ours ---
    #[error(transparent)]
    Busy(#[from] super::hash_pool::Busy),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl TopupError {
    /// Stable code: the dialplan result branch and the API's error code.
    pub fn code(&self) -> &'static str {
        match self {
            TopupError::InvalidPin => "invalid_pin",
            TopupError::Locked(_) => "locked",
            TopupError::RateLimited => "rate_limited",
            TopupError::CardRedeemed => "card_used",
            TopupError::CardExpired => "card_expired",
            TopupError::CardBlocked => "card_blocked",
            TopupError::InvalidNumber(_) => "invalid_number",
            TopupError::NoWallet => "no_wallet",
            TopupError::NoAccount => "no_account",
            TopupError::NoFunding => "no_funding",
            TopupError::NoProduct(_) | TopupError::NoProductForNumber => "no_product",
            TopupError::AmountOutOfRange { .. } => "amount_out_of_range",
            TopupError::RequestConflict(_) => "conflict",
            TopupError::Money(_) => "invalid_amount",
            TopupError::Ledger(LedgerError::InsufficientFunds { .. }) => "insufficient_funds",
            TopupError::Ledger(_) => "ledger_error",
            TopupError::CarrierFailed(_) => "carrier_failed",
            TopupError::NoCarrier => "no_carrier",
            TopupError::NoRate => "no_rate",
            TopupError::NoFunds => "no_funds",
            TopupError::DestinationBlocked => "blocked_destination",
            TopupError::CallLimit(_) => "call_limit",
            TopupError::Busy(_)
            | TopupError::Corrupt(_)
            | TopupError::Db(_)
            | TopupError::Store(_) => "unavailable",
        }
    }
}
