-- obr-signer schema, version 3: the on-behalf outbox.
--
-- A credential an admin creates on a user's key gets its row here in the
-- same transaction as the credential itself. The relay records it (audit
-- log and the user's notification, idempotently by credential id) and then
-- deletes the row; rows the relay never confirmed — the browser cancelled,
-- the relay timed out or died — are found again and recorded later. So no
-- on-behalf credential exists without its record.
--
-- Types are valid on SQLite and PostgreSQL alike.
CREATE TABLE obr_outbox (
    credential_id     BYTEA   PRIMARY KEY,
    user_id           TEXT    NOT NULL,
    admin_id          TEXT    NOT NULL,
    obr_session_id    TEXT    NOT NULL,
    rp_id             TEXT    NOT NULL,
    user_name         TEXT    NOT NULL,
    user_display_name TEXT    NOT NULL,
    discoverable      BOOLEAN NOT NULL,
    created_at        BIGINT  NOT NULL
);
CREATE INDEX obr_outbox_by_age ON obr_outbox (created_at);
