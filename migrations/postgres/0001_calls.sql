-- Call detail records: one row per call, written when the call ends.
CREATE TABLE calls (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id      TEXT NOT NULL,            -- SIP Call-ID
    caller       TEXT NOT NULL,            -- ANI (From user)
    dialled      TEXT NOT NULL,            -- DNIS (Request-URI user)
    service      TEXT,                     -- dialplan service, if routed
    codec        TEXT,                     -- PCMU / PCMA, if negotiated
    dtmf_methods TEXT NOT NULL DEFAULT '', -- comma list: rfc4733, info, inband
    started_at   TEXT NOT NULL,            -- RFC 3339, UTC
    answered_at  TEXT,
    ended_at     TEXT NOT NULL,
    end_reason   TEXT NOT NULL,
    digits       TEXT                      -- keys pressed, only for plans with record_digits
);
CREATE INDEX calls_started_at ON calls (started_at);
