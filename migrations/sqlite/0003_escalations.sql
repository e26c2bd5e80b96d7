-- Calls handed to the agents' queue, with what the caller tried (secrets masked).
CREATE TABLE escalations (
    id         TEXT PRIMARY KEY,       -- also sent to the agents' side in the transfer
    call_id    TEXT NOT NULL,
    caller     TEXT NOT NULL,
    service    TEXT NOT NULL,
    language   TEXT NOT NULL,
    node       TEXT NOT NULL,          -- where in the plan the caller was
    path       TEXT NOT NULL,          -- JSON list of nodes visited
    inputs     TEXT NOT NULL,          -- JSON object: variable -> value ("****" for secrets)
    reason     TEXT NOT NULL,
    topup_ids  TEXT NOT NULL,          -- JSON list of top-ups made in the call
    state      TEXT NOT NULL,          -- open, transferred, failed, closed
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX escalations_state ON escalations (state, created_at);
