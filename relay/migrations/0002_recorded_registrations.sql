-- On-behalf registrations already recorded (audit record and the user's
-- notification), by credential id (base64url): the live path and the
-- outbox sweep may both try to record one; this makes it exactly once.
CREATE TABLE recorded_registrations (
    credential_id TEXT PRIMARY KEY,
    recorded_at_ms BIGINT NOT NULL
);
