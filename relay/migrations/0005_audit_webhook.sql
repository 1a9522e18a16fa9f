-- How far the audit webhook has delivered the log, per receiver (its URL):
-- a new receiver starts from the first record. `holder` is the relay that
-- delivers until `lease_until_ms`, so that one relay of a cluster posts at
-- a time, in order.
CREATE TABLE audit_webhook_cursor (
    target TEXT PRIMARY KEY NOT NULL,
    delivered_seq INTEGER NOT NULL DEFAULT 0,
    holder TEXT,
    lease_until_ms INTEGER NOT NULL DEFAULT 0
);
