-- Staff (supervisors) see the staff pages: the calls of everyone, with callers' numbers.
-- Agents see escalations only. Existing accounts stay agents; `agents create --staff` or
-- `agents set-role` makes staff.
ALTER TABLE agents ADD COLUMN role TEXT NOT NULL DEFAULT 'agent';
