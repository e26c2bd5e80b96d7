-- An incoming message the SMSC gave no id of its own is known by a keyed hash of who sent
-- it, to where, and its words (PINs included, so keyed with the PIN pepper): the same words
-- from the same sender again within sms.mo_repeat_window are taken as the SMSC delivering it
-- again, and nothing is done twice.
ALTER TABLE sms_inbox ADD COLUMN content_key TEXT;
CREATE INDEX sms_inbox_content ON sms_inbox (content_key, received_at);
