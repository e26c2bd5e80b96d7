//! The double-entry ledger's rules (pure): accounts with TigerBeetle-style balances, transfers
//! in one currency between two accounts, two-phase transfers (pending → posted | voided), and
//! idempotent ids. The SQL store applies exactly these rules in one transaction per operation;
//! [`Model`] applies them in memory and is the oracle of the property tests.
//!
//! Sign convention: an account's balance is `credits_posted − debits_posted`. Money owed to a
//! customer (a wallet) is a credit balance; system accounts (card float, carrier settlement,
//! FX, funding sources) go negative as value flows out of them. Every transfer adds the same
//! amount to one account's debits and another's credits, so per currency the balances of all
//! accounts always sum to zero — `ledger check` proves it on the real books.

use std::collections::BTreeMap;

use super::money::{Currency, Money};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccountKind {
    /// Card float, carrier settlement, FX, fees: the platform's side of every movement.
    System,
    /// A customer's wallet (may not be overdrawn).
    Wallet,
    /// A prepaid phone account on our own network (may not be overdrawn).
    Prepaid,
    /// What we owe a carrier for top-ups it delivered.
    Carrier,
    /// A linked external funding source (bank card on file): money enters through it.
    Funding,
}

impl AccountKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::System => "system",
            AccountKind::Wallet => "wallet",
            AccountKind::Prepaid => "prepaid",
            AccountKind::Carrier => "carrier",
            AccountKind::Funding => "funding",
        }
    }

    pub fn parse(s: &str) -> Option<AccountKind> {
        Some(match s {
            "system" => AccountKind::System,
            "wallet" => AccountKind::Wallet,
            "prepaid" => AccountKind::Prepaid,
            "carrier" => AccountKind::Carrier,
            "funding" => AccountKind::Funding,
            _ => return None,
        })
    }

    /// Customer balances may never go below zero, counting pending debits.
    pub fn no_overdraft(self) -> bool {
        matches!(self, AccountKind::Wallet | AccountKind::Prepaid)
    }
}

/// Well-known account ids.
pub mod accounts {
    use super::super::money::Currency;

    pub fn card_float(c: Currency) -> String {
        format!("system:card-float:{c}")
    }
    pub fn fx(c: Currency) -> String {
        format!("system:fx:{c}")
    }
    pub fn fees(c: Currency) -> String {
        format!("system:fees:{c}")
    }
    pub fn adjustments(c: Currency) -> String {
        format!("system:adjustments:{c}")
    }
    pub fn carrier(carrier_id: &str, c: Currency) -> String {
        format!("carrier:{carrier_id}:{c}")
    }
    pub fn wallet(number: &str) -> String {
        format!("wallet:{number}")
    }
    pub fn prepaid(number: &str) -> String {
        format!("prepaid:{number}")
    }
    pub fn funding(number: &str) -> String {
        format!("funding:{number}")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub currency: Currency,
    pub kind: AccountKind,
    pub debits_pending: i64,
    pub debits_posted: i64,
    pub credits_pending: i64,
    pub credits_posted: i64,
}

impl Account {
    pub fn new(id: &str, currency: Currency, kind: AccountKind) -> Account {
        Account {
            id: id.to_string(),
            currency,
            kind,
            debits_pending: 0,
            debits_posted: 0,
            credits_pending: 0,
            credits_posted: 0,
        }
    }

    /// Posted balance (credits − debits).
    pub fn balance(&self) -> i64 {
        self.credits_posted - self.debits_posted
    }

    /// What may still be debited: the posted balance less pending debits.
    pub fn available(&self) -> i64 {
        self.credits_posted - self.debits_posted - self.debits_pending
    }

    pub fn balance_money(&self) -> Money {
        Money::new(self.balance(), self.currency)
    }

    pub fn available_money(&self) -> Money {
        Money::new(self.available(), self.currency)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferState {
    Pending,
    Posted,
    Voided,
}

impl TransferState {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::Pending => "pending",
            TransferState::Posted => "posted",
            TransferState::Voided => "voided",
        }
    }

    pub fn parse(s: &str) -> Option<TransferState> {
        Some(match s {
            "pending" => TransferState::Pending,
            "posted" => TransferState::Posted,
            "voided" => TransferState::Voided,
            _ => return None,
        })
    }
}

/// What a caller asks for. `pending` transfers reserve funds until posted or voided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferSpec {
    pub id: String,
    pub debit: String,
    pub credit: String,
    pub amount: Money,
    pub kind: String,
    pub pending: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub id: String,
    pub debit: String,
    pub credit: String,
    pub amount: Money,
    pub kind: String,
    /// Created as pending (two-phase) rather than posted at once.
    pub two_phase: bool,
    pub state: TransferState,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("transfer {0} exists with different fields")]
    IdConflict(String),
    #[error("account {0} does not exist")]
    NoAccount(String),
    #[error("account {account} is in {account_currency}, the transfer in {transfer_currency}")]
    CurrencyMismatch {
        account: String,
        account_currency: Currency,
        transfer_currency: Currency,
    },
    #[error("insufficient funds in {account}: {available} available, {needed} needed")]
    InsufficientFunds {
        account: String,
        available: Money,
        needed: Money,
    },
    #[error("a transfer must move a positive amount between two different accounts")]
    Invalid,
    #[error("transfer {0} does not exist")]
    NoTransfer(String),
    #[error("transfer {id} is {state}, not pending")]
    NotPending { id: String, state: &'static str },
}

/// Checks a spec on its own.
pub fn validate(spec: &TransferSpec) -> Result<(), LedgerError> {
    if spec.amount.minor <= 0 || spec.debit == spec.credit || spec.id.is_empty() {
        return Err(LedgerError::Invalid);
    }
    Ok(())
}

/// Result of posting or voiding: whether it changed anything (a retry does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    Done,
    AlreadyDone,
}

/// The ledger in memory: the reference implementation of the rules.
#[derive(Debug, Default, Clone)]
pub struct Model {
    pub accounts: BTreeMap<String, Account>,
    pub transfers: BTreeMap<String, Transfer>,
}

impl Model {
    pub fn open(&mut self, id: &str, currency: Currency, kind: AccountKind) {
        self.accounts
            .entry(id.to_string())
            .or_insert_with(|| Account::new(id, currency, kind));
    }

    /// Creates a transfer; a retry of the same request returns the first result.
    pub fn transfer(&mut self, spec: &TransferSpec) -> Result<Transfer, LedgerError> {
        validate(spec)?;
        if let Some(t) = self.transfers.get(&spec.id) {
            return if same_request(t, spec) {
                Ok(t.clone())
            } else {
                Err(LedgerError::IdConflict(spec.id.clone()))
            };
        }
        let debit = self.check_account(&spec.debit, spec.amount.currency)?;
        self.check_account(&spec.credit, spec.amount.currency)?;
        if debit.kind.no_overdraft() && debit.available() < spec.amount.minor {
            return Err(LedgerError::InsufficientFunds {
                account: debit.id.clone(),
                available: debit.available_money(),
                needed: spec.amount,
            });
        }
        let amt = spec.amount.minor;
        let d = self
            .accounts
            .get_mut(&spec.debit)
            .ok_or_else(|| LedgerError::NoAccount(spec.debit.clone()))?;
        if spec.pending {
            d.debits_pending += amt;
        } else {
            d.debits_posted += amt;
        }
        let c = self
            .accounts
            .get_mut(&spec.credit)
            .ok_or_else(|| LedgerError::NoAccount(spec.credit.clone()))?;
        if spec.pending {
            c.credits_pending += amt;
        } else {
            c.credits_posted += amt;
        }
        let t = Transfer {
            id: spec.id.clone(),
            debit: spec.debit.clone(),
            credit: spec.credit.clone(),
            amount: spec.amount,
            kind: spec.kind.clone(),
            two_phase: spec.pending,
            state: if spec.pending {
                TransferState::Pending
            } else {
                TransferState::Posted
            },
        };
        self.transfers.insert(spec.id.clone(), t.clone());
        Ok(t)
    }

    pub fn post(&mut self, id: &str) -> Result<Resolution, LedgerError> {
        self.resolve(id, TransferState::Posted)
    }

    pub fn void(&mut self, id: &str) -> Result<Resolution, LedgerError> {
        self.resolve(id, TransferState::Voided)
    }

    fn resolve(&mut self, id: &str, to: TransferState) -> Result<Resolution, LedgerError> {
        let t = self
            .transfers
            .get_mut(id)
            .ok_or_else(|| LedgerError::NoTransfer(id.to_string()))?;
        match resolution(t.state, to, id)? {
            Resolution::AlreadyDone => return Ok(Resolution::AlreadyDone),
            Resolution::Done => {}
        }
        t.state = to;
        let (amt, debit, credit) = (t.amount.minor, t.debit.clone(), t.credit.clone());
        if let Some(d) = self.accounts.get_mut(&debit) {
            d.debits_pending -= amt;
            if to == TransferState::Posted {
                d.debits_posted += amt;
            }
        }
        if let Some(c) = self.accounts.get_mut(&credit) {
            c.credits_pending -= amt;
            if to == TransferState::Posted {
                c.credits_posted += amt;
            }
        }
        Ok(Resolution::Done)
    }

    fn check_account(&self, id: &str, currency: Currency) -> Result<&Account, LedgerError> {
        let a = self
            .accounts
            .get(id)
            .ok_or_else(|| LedgerError::NoAccount(id.to_string()))?;
        if a.currency != currency {
            return Err(LedgerError::CurrencyMismatch {
                account: id.to_string(),
                account_currency: a.currency,
                transfer_currency: currency,
            });
        }
        Ok(a)
    }

    /// Per currency: (sum of posted balances, sum of pending credits − pending debits).
    pub fn totals(&self) -> BTreeMap<Currency, (i64, i64)> {
        let mut out: BTreeMap<Currency, (i64, i64)> = BTreeMap::new();
        for a in self.accounts.values() {
            let e = out.entry(a.currency).or_default();
            e.0 += a.balance();
            e.1 += a.credits_pending - a.debits_pending;
        }
        out
    }
}

/// A retry repeats the transfer exactly (ids are unique per request): same accounts, amount,
/// kind and phase. Its current state does not matter: a retried pending transfer that has since
/// been posted returns it, posted.
pub fn same_request(t: &Transfer, spec: &TransferSpec) -> bool {
    t.debit == spec.debit
        && t.credit == spec.credit
        && t.amount == spec.amount
        && t.kind == spec.kind
        && t.two_phase == spec.pending
}

/// Whether a transfer in `from` may go to `to` (posted or voided): the same resolution
/// again is a harmless retry; the other one is an error.
pub fn resolution(
    from: TransferState,
    to: TransferState,
    id: &str,
) -> Result<Resolution, LedgerError> {
    match (from, to) {
        (TransferState::Pending, _) => Ok(Resolution::Done),
        (a, b) if a == b => Ok(Resolution::AlreadyDone),
        (a, _) => Err(LedgerError::NotPending {
            id: id.to_string(),
            state: a.as_str(),
        }),
    }
}

/// The compensating transfer that undoes a posted one (a carrier reversed a delivered top-up):
/// the same amount back the other way, posted at once, with an id derived from the original so
/// applying the reversal twice moves nothing the second time. A ledger never deletes or edits a
/// posted transfer; it adds the opposite one. `None` for a transfer that is not posted (a
/// pending one is voided instead; a voided one moved nothing).
pub fn reversal(original: &Transfer) -> Option<TransferSpec> {
    (original.state == TransferState::Posted).then(|| TransferSpec {
        id: format!("{}:reversal", original.id),
        debit: original.credit.clone(),
        credit: original.debit.clone(),
        amount: original.amount,
        kind: "reversal".into(),
        pending: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(minor: i64) -> Money {
        Money::new(minor, Currency::new("USD").unwrap())
    }

    fn spec(id: &str, debit: &str, credit: &str, amount: i64, pending: bool) -> TransferSpec {
        TransferSpec {
            id: id.into(),
            debit: debit.into(),
            credit: credit.into(),
            amount: usd(amount),
            kind: "test".into(),
            pending,
        }
    }

    fn model() -> Model {
        let mut m = Model::default();
        let c = Currency::new("USD").unwrap();
        m.open("float", c, AccountKind::System);
        m.open("w", c, AccountKind::Wallet);
        m.open("carrier", c, AccountKind::Carrier);
        m
    }

    #[test]
    fn a_reversal_returns_a_posted_transfer_and_nothing_else() {
        let mut m = model();
        m.transfer(&spec("fund", "float", "w", 1000, false))
            .unwrap();
        let t = m.transfer(&spec("t1", "w", "carrier", 600, true)).unwrap();
        assert_eq!(
            reversal(&t),
            None,
            "a pending transfer is voided, not reversed"
        );
        m.post("t1").unwrap();
        let posted = m.transfers["t1"].clone();
        let back = reversal(&posted).unwrap();
        assert_eq!(
            (
                back.debit.as_str(),
                back.credit.as_str(),
                back.amount,
                back.pending
            ),
            ("carrier", "w", usd(600), false)
        );
        m.transfer(&back).unwrap();
        assert_eq!(m.accounts["w"].balance(), 1000);
        assert_eq!(m.accounts["carrier"].balance(), 0);
        // Applied again (a duplicate notice): the same id, nothing moves.
        m.transfer(&back).unwrap();
        assert_eq!(m.accounts["w"].balance(), 1000);
        let voided = m.transfer(&spec("t2", "w", "carrier", 100, true)).unwrap();
        m.void(&voided.id).unwrap();
        assert_eq!(reversal(&m.transfers["t2"]), None);
    }

    #[test]
    fn pending_reserves_and_post_or_void_settles() {
        let mut m = model();
        m.transfer(&spec("fund", "float", "w", 1000, false))
            .unwrap();
        m.transfer(&spec("t1", "w", "carrier", 600, true)).unwrap();
        assert_eq!(m.accounts["w"].available(), 400);
        assert_eq!(m.accounts["w"].balance(), 1000);
        let err = m
            .transfer(&spec("t2", "w", "carrier", 500, true))
            .unwrap_err();
        assert!(matches!(err, LedgerError::InsufficientFunds { .. }));
        assert_eq!(m.post("t1").unwrap(), Resolution::Done);
        assert_eq!(m.accounts["w"].balance(), 400);
        assert_eq!(m.post("t1").unwrap(), Resolution::AlreadyDone);
        assert!(matches!(m.void("t1"), Err(LedgerError::NotPending { .. })));
        m.transfer(&spec("t3", "w", "carrier", 400, true)).unwrap();
        m.void("t3").unwrap();
        assert_eq!(m.accounts["w"].available(), 400);
        assert!(m.totals().values().all(|t| *t == (0, 0)));
    }

    #[test]
    fn retries_return_the_first_result_and_reused_ids_are_refused() {
        let mut m = model();
        let first = m
            .transfer(&spec("fund", "float", "w", 1000, false))
            .unwrap();
        assert_eq!(
            m.transfer(&spec("fund", "float", "w", 1000, false))
                .unwrap(),
            first
        );
        assert_eq!(m.accounts["w"].balance(), 1000, "not applied twice");
        assert_eq!(
            m.transfer(&spec("fund", "float", "w", 999, false)),
            Err(LedgerError::IdConflict("fund".into()))
        );
        m.transfer(&spec("p", "w", "carrier", 100, true)).unwrap();
        m.post("p").unwrap();
        // Retrying the pending request after it was posted returns it, posted.
        assert_eq!(
            m.transfer(&spec("p", "w", "carrier", 100, true))
                .unwrap()
                .state,
            TransferState::Posted
        );
    }

    #[test]
    fn invalid_transfers_are_refused() {
        let mut m = model();
        assert_eq!(
            m.transfer(&spec("a", "w", "w", 1, false)),
            Err(LedgerError::Invalid)
        );
        assert_eq!(
            m.transfer(&spec("a", "float", "w", 0, false)),
            Err(LedgerError::Invalid)
        );
        assert!(matches!(
            m.transfer(&spec("a", "float", "nope", 1, false)),
            Err(LedgerError::NoAccount(_))
        ));
        let mxn = Currency::new("MXN").unwrap();
        m.open("mx", mxn, AccountKind::Wallet);
        assert!(matches!(
            m.transfer(&spec("a", "float", "mx", 1, false)),
            Err(LedgerError::CurrencyMismatch { .. })
        ));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Transfer {
                id: u8,
                debit: u8,
                credit: u8,
                amount: i64,
                pending: bool,
            },
            Post(u8),
            Void(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                (0u8..12, 0u8..4, 0u8..4, -5i64..500, any::<bool>()).prop_map(
                    |(id, debit, credit, amount, pending)| Op::Transfer {
                        id,
                        debit,
                        credit,
                        amount,
                        pending
                    }
                ),
                (0u8..12).prop_map(Op::Post),
                (0u8..12).prop_map(Op::Void),
            ]
        }

        const NAMES: [&str; 4] = ["float", "w1", "w2", "carrier"];

        proptest! {
            /// Whatever happens, per currency the books sum to zero, no wallet goes below zero
            /// (counting reservations), and pending columns never go negative.
            #[test]
            fn invariants_hold_for_any_sequence(ops in proptest::collection::vec(op(), 1..80)) {
                let c = Currency::new("USD").unwrap();
                let mut m = Model::default();
                m.open("float", c, AccountKind::System);
                m.open("w1", c, AccountKind::Wallet);
                m.open("w2", c, AccountKind::Wallet);
                m.open("carrier", c, AccountKind::Carrier);
                for op in ops {
                    let before = m.clone();
                    let result = match &op {
                        Op::Transfer { id, debit, credit, amount, pending } => m
                            .transfer(&TransferSpec {
                                id: format!("t{id}"),
                                debit: NAMES[*debit as usize].into(),
                                credit: NAMES[*credit as usize].into(),
                                amount: Money::new(*amount, c),
                                kind: "k".into(),
                                pending: *pending,
                            })
                            .map(|_| ()),
                        Op::Post(id) => m.post(&format!("t{id}")).map(|_| ()),
                        Op::Void(id) => m.void(&format!("t{id}")).map(|_| ()),
                    };
                    if result.is_err() {
                        // A refused operation changes nothing.
                        prop_assert_eq!(&m.accounts, &before.accounts);
                        prop_assert_eq!(&m.transfers, &before.transfers);
                    }
                    prop_assert!(m.totals().values().all(|t| *t == (0, 0)), "{:?}", m.totals());
                    for a in m.accounts.values() {
                        prop_assert!(a.debits_pending >= 0 && a.credits_pending >= 0);
                        if a.kind.no_overdraft() {
                            prop_assert!(a.available() >= 0, "{} overdrawn", a.id);
                        }
                    }
                }
            }
        }
    }
}
