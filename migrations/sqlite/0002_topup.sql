-- The top-up core. Amounts are BIGINT minor units; times are BIGINT Unix milliseconds.

-- Double-entry ledger accounts (TigerBeetle-style balances). An account's balance is
-- credits_posted - debits_posted; per currency the balances of all accounts sum to zero.
CREATE TABLE accounts (
    id              TEXT PRIMARY KEY,      -- e.g. wallet:+15550100, system:card-float:USD
    currency        TEXT NOT NULL,
    kind            TEXT NOT NULL,         -- system, wallet, prepaid, carrier, funding
    no_overdraft    BIGINT NOT NULL,       -- 1: debits (posted + pending) may not exceed credits
    debits_pending  BIGINT NOT NULL DEFAULT 0,
    debits_posted   BIGINT NOT NULL DEFAULT 0,
    credits_pending BIGINT NOT NULL DEFAULT 0,
    credits_posted  BIGINT NOT NULL DEFAULT 0,
    created_at      BIGINT NOT NULL
);

-- Transfers: one currency, one debit and one credit account, a unique id chosen by the caller
-- (retries with the same id return the first result).
CREATE TABLE transfers (
    id             TEXT PRIMARY KEY,
    debit_account  TEXT NOT NULL REFERENCES accounts (id),
    credit_account TEXT NOT NULL REFERENCES accounts (id),
    amount         BIGINT NOT NULL CHECK (amount > 0),
    currency       TEXT NOT NULL,
    kind           TEXT NOT NULL,          -- redeem, topup, fx, settle, fund, adjust ...
    two_phase      BIGINT NOT NULL,        -- 1: created pending
    state          TEXT NOT NULL,          -- pending, posted, voided
    created_at     BIGINT NOT NULL,
    resolved_at    BIGINT
);
CREATE INDEX transfers_debit ON transfers (debit_account);
CREATE INDEX transfers_credit ON transfers (credit_account);
CREATE INDEX transfers_pending ON transfers (state);

-- PIN cards (vouchers). The PIN is stored only as HMAC-SHA256(pepper, PIN).
CREATE TABLE cards (
    serial          TEXT PRIMARY KEY,
    pin_hash        TEXT NOT NULL UNIQUE,
    batch           TEXT NOT NULL,
    face_minor      BIGINT NOT NULL,
    currency        TEXT NOT NULL,
    expires_at      BIGINT NOT NULL,
    state           TEXT NOT NULL,         -- active, redeemed, blocked (expiry is by date)
    failed_attempts BIGINT NOT NULL DEFAULT 0,
    redeemed_at     BIGINT,
    redeemed_by     TEXT,                  -- who redeemed it (caller number, API client)
    created_at      BIGINT NOT NULL
);
CREATE INDEX cards_batch ON cards (batch);

-- Wallets, keyed by the owner's number (ANI). PIN: argon2 PHC string.
CREATE TABLE wallets (
    number          TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts (id),
    currency        TEXT NOT NULL,
    pin_hash        TEXT,
    status          TEXT NOT NULL,         -- active, locked, closed
    failed_attempts BIGINT NOT NULL DEFAULT 0,
    language        TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE TABLE recent_recipients (
    wallet    TEXT NOT NULL,
    number    TEXT NOT NULL,
    last_used BIGINT NOT NULL,
    uses      BIGINT NOT NULL,
    PRIMARY KEY (wallet, number)
);

-- The platform's own prepaid phone accounts (billing), keyed by E.164 number.
CREATE TABLE prepaid_accounts (
    number           TEXT PRIMARY KEY,
    account_id       TEXT NOT NULL REFERENCES accounts (id),
    currency         TEXT NOT NULL,
    low_balance      BIGINT NOT NULL,      -- alert threshold, minor units
    funding_account  TEXT REFERENCES accounts (id),
    funding_pin_hash TEXT,                 -- argon2; PIN + this number unlock linked funding
    language         TEXT NOT NULL,
    status           TEXT NOT NULL,        -- active, locked, suspended
    failed_attempts  BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL
);

-- Failed authentications, for per-caller and global velocity limits.
CREATE TABLE auth_failures (
    id      TEXT PRIMARY KEY,
    ani     TEXT NOT NULL,
    subject TEXT NOT NULL,                 -- card, wallet, funding
    at      BIGINT NOT NULL
);
CREATE INDEX auth_failures_ani ON auth_failures (ani, at);
CREATE INDEX auth_failures_at ON auth_failures (at);

-- Carriers (mobile operators) and how to reach them.
CREATE TABLE carriers (
    id        TEXT PRIMARY KEY,            -- e.g. telcel-mx
    name      TEXT NOT NULL,               -- as announced: "Telcel"
    country   TEXT NOT NULL,               -- ISO 3166 alpha-2
    currency  TEXT NOT NULL,               -- what recipients receive
    adapter   TEXT NOT NULL,               -- builtin, http
    settings  TEXT NOT NULL,               -- adapter settings (JSON)
    mccmnc    TEXT NOT NULL DEFAULT '',    -- comma list, to map HLR answers
    status    TEXT NOT NULL                -- active, suspended
);
CREATE TABLE carrier_prefixes (
    prefix     TEXT PRIMARY KEY,           -- E.164 digits without '+'; longest match wins
    carrier_id TEXT NOT NULL REFERENCES carriers (id)
);
CREATE TABLE ported_numbers (
    number     TEXT PRIMARY KEY,           -- E.164 with '+'
    carrier_id TEXT NOT NULL REFERENCES carriers (id),
    updated_at BIGINT NOT NULL
);

-- Products: a fixed denomination (price -> receive) or a range (amount in the sender's
-- currency, converted at fx_rate_e8 with the FX rule in src/topup/money.rs).
CREATE TABLE products (
    id               TEXT PRIMARY KEY,
    carrier_id       TEXT NOT NULL REFERENCES carriers (id),
    kind             TEXT NOT NULL,        -- fixed, range
    label            TEXT NOT NULL,
    send_currency    TEXT NOT NULL,
    price_minor      BIGINT,               -- fixed: what the sender pays
    receive_minor    BIGINT,               -- fixed: what the recipient gets
    receive_currency TEXT NOT NULL,
    min_minor        BIGINT,               -- range: sender amount bounds
    max_minor        BIGINT,
    fx_rate_e8       BIGINT,               -- range: receive = floor(send x rate)
    status           TEXT NOT NULL
);
CREATE INDEX products_carrier ON products (carrier_id);

-- Top-ups: one row per request, keyed by our id (also the carrier's external reference).
CREATE TABLE topups (
    id               TEXT PRIMARY KEY,
    request_hash     TEXT NOT NULL,        -- the request's fields, for idempotent retries
    channel          TEXT NOT NULL,        -- voice, sms, http, cli
    funding          TEXT NOT NULL,        -- wallet:<number>, card:<serial>, funding:<number>
    payer            TEXT NOT NULL,        -- who pays (caller number / client)
    recipient        TEXT NOT NULL,        -- E.164
    carrier_id       TEXT NOT NULL,
    product_id       TEXT NOT NULL,
    send_minor       BIGINT NOT NULL,
    send_currency    TEXT NOT NULL,
    receive_minor    BIGINT NOT NULL,
    receive_currency TEXT NOT NULL,
    state            TEXT NOT NULL,        -- pending, succeeded, failed
    carrier_ref      TEXT,
    error            TEXT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_check_at    BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX topups_pending ON topups (state, next_check_at);
CREATE INDEX topups_payer ON topups (payer, created_at);

-- Calling rates: destination prefix -> price per minute, billed in increments.
CREATE TABLE rates (
    prefix         TEXT NOT NULL,
    currency       TEXT NOT NULL,
    per_minute     BIGINT NOT NULL,
    increment_secs BIGINT NOT NULL,
    PRIMARY KEY (prefix, currency)
);
