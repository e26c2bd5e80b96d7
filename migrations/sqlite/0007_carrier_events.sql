-- Status notices that carriers (aggregators) POST about our top-ups, kept once each: a carrier
-- that sends the same notice again finds it here and nothing is applied twice. `result` says
-- what the notice did: settled, reversed, ignored (nothing to change), conflict (it
-- contradicts what the carrier told us before; staff look at these).
CREATE TABLE carrier_events (
    carrier_id  TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    topup_id    TEXT NOT NULL,
    status      TEXT NOT NULL,
    result      TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (carrier_id, event_id)
);
CREATE INDEX carrier_events_topup ON carrier_events (topup_id);
-- topups.state may now also be 'reversed': delivered, then taken back by the carrier; the
-- payer's money was returned by compensating transfers (<transfer id>:reversal).

