-- API keys of retail terminals and apps. The secret is shown once at creation; only its
-- SHA-256 is kept (the secret is 32 random bytes, so a fast hash is enough).
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,      -- public part of the key: tk_<id>_<secret>
    name         TEXT NOT NULL,         -- the terminal or retailer
    secret_hash  TEXT NOT NULL,         -- hex SHA-256 of the secret
    scopes       TEXT NOT NULL,         -- comma-separated: lookup, topup, redeem, wallet
    wallet       TEXT NOT NULL,         -- the wallet (E.164) top-ups are paid from
    per_minute   BIGINT NOT NULL,       -- requests per minute allowed
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);
