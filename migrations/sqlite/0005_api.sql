-- API keys of retail terminals and apps. The secret is shown once at creation; only its
-- SHA-256 is kept (the secret is 32 random bytes, so a fast hash is enough).
CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY,    -- public part of the key: tk_<id>_<secret>
    name           TEXT NOT NULL,       -- the terminal or retailer
    secret_hash    TEXT NOT NULL,       -- hex SHA-256 of the secret
    scopes         TEXT NOT NULL,       -- comma-separated: lookup, topup, redeem, wallet
    wallet         TEXT NOT NULL,       -- the wallet (E.164) top-ups are paid from
    per_minute     BIGINT NOT NULL,     -- requests per minute allowed
    webhook_url    TEXT,                -- where final top-up states are POSTed
    webhook_secret TEXT,                -- HMAC-SHA256 key of their signature (shared with the client)
    created_at     BIGINT NOT NULL,
    revoked_at     BIGINT
);

-- Webhooks to send, written in the transaction that settles the top-up; sent at least once
-- (the receiver deduplicates by the delivery id).
CREATE TABLE webhook_outbox (
    id              TEXT PRIMARY KEY,   -- <top-up id>:<state>
    key_id          TEXT NOT NULL,
    url             TEXT NOT NULL,
    body            TEXT NOT NULL,      -- the JSON sent
    state           TEXT NOT NULL,      -- queued, delivered, failed
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (state, next_attempt_at);
