//! The top-up core: money, the double-entry ledger, cards, wallets, prepaid accounts, number
//! lookup, carriers and products. Pure rules live here; storage is behind [`store::Store`].

pub mod books;
pub mod error;
pub mod ledger;
pub mod money;
pub use error::TopupError;
