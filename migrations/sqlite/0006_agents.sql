-- Call-centre agents, their sessions, and what they did on escalations.
CREATE TABLE agents (
    username      TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,        -- argon2
    created_at    BIGINT NOT NULL
);

CREATE TABLE agent_sessions (
    token_hash TEXT PRIMARY KEY,        -- hex SHA-256 of the cookie's random token
    username   TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE escalation_actions (
    id            TEXT PRIMARY KEY,
    escalation_id TEXT NOT NULL,
    agent         TEXT NOT NULL,
    action        TEXT NOT NULL,        -- note, resend_sms, retry_status, unlock, close
    detail        TEXT NOT NULL,
    at            BIGINT NOT NULL
);
CREATE INDEX escalation_actions_by_escalation ON escalation_actions (escalation_id, at);
CREATE INDEX escalations_updated ON escalations (updated_at);

-- Where callers went in each plan: calls that reached a node, and calls that ended there
-- (hung up, failed or were transferred) — the staff's dialplan graph shows both.
CREATE TABLE node_stats (
    service TEXT NOT NULL,
    node    TEXT NOT NULL,
    reached BIGINT NOT NULL,
    ended   BIGINT NOT NULL,
    PRIMARY KEY (service, node)
);

-- Each running node's live figures, refreshed every few seconds (the staff pages' per-node view).
CREATE TABLE nodes (
    id           TEXT PRIMARY KEY,      -- host:SIP port
    active_calls BIGINT NOT NULL,
    by_service   TEXT NOT NULL,         -- JSON: service -> calls in progress
    calls_total  BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
