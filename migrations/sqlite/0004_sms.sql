-- The text channel: outgoing SMS (the outbox), their parts at the SMSC, incoming commands.
-- Times are BIGINT Unix milliseconds.

-- One row per SMS to send, written in the same transaction as the change that causes it.
CREATE TABLE sms_outbox (
    id              TEXT PRIMARY KEY,      -- from its cause: <top-up id>:payer, reply:<inbox id> ...
    kind            TEXT NOT NULL,         -- the message's name: topup_sent, low_balance ...
    destination     TEXT NOT NULL,         -- E.164
    language        TEXT NOT NULL,
    body            TEXT NOT NULL,         -- the text; messages never receive a PIN
    reference       TEXT,                  -- what caused it: a top-up id, an account number
    udh_ref         BIGINT NOT NULL,       -- concatenation reference, the same on every resend
    state           TEXT NOT NULL,         -- queued, sending, sent, delivered, failed
    smsc            TEXT,                  -- the connection of the last attempt
    parts           BIGINT NOT NULL DEFAULT 0,
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    sent_at         BIGINT,
    delivered_at    BIGINT
);
CREATE INDEX sms_outbox_due ON sms_outbox (state, next_attempt_at);
CREATE INDEX sms_outbox_destination ON sms_outbox (destination, created_at);

-- Parts the SMSC accepted, with its message id (delivery receipts name it).
CREATE TABLE sms_parts (
    outbox_id  TEXT NOT NULL REFERENCES sms_outbox (id),
    part       BIGINT NOT NULL,            -- 1-based
    smsc       TEXT NOT NULL,
    message_id TEXT NOT NULL,
    state      TEXT NOT NULL,              -- accepted, delivered, failed
    status     TEXT,                       -- the receipt's stat and err
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (outbox_id, part)
);
CREATE INDEX sms_parts_message ON sms_parts (smsc, message_id);

-- Commands received (the text with PINs masked); the id deduplicates resent deliveries.
CREATE TABLE sms_inbox (
    id          TEXT PRIMARY KEY,          -- <smsc>:<SMSC message id>, or generated
    smsc        TEXT NOT NULL,
    source      TEXT NOT NULL,
    destination TEXT NOT NULL,
    command     TEXT NOT NULL,
    state       TEXT NOT NULL,             -- received, done
    outcome     TEXT,                      -- what came of it (the reply's message name)
    received_at BIGINT NOT NULL,
    done_at     BIGINT
);
CREATE INDEX sms_inbox_source ON sms_inbox (source, received_at);

-- Low-balance alerts go once per crossing: set when alerted, cleared when back above.
ALTER TABLE prepaid_accounts ADD COLUMN low_alerted BIGINT NOT NULL DEFAULT 0;
-- The name recipients see in "Ana sent you ..." (else the sender's number).
ALTER TABLE wallets ADD COLUMN name TEXT;
-- The sender's message for the recipient's SMS.
ALTER TABLE topups ADD COLUMN message TEXT;
