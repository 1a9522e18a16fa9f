-- Admins' second factor: a TOTP secret (RFC 6238), encrypted under a key
-- derived from the deployment's cluster key and bound to the person's id
-- (relay/src/directory/second_factor.rs), so a database reader cannot make
-- codes and a database writer cannot move one admin's secret to another.
-- `totp_last_step` is the time step of the last code accepted: a code is
-- accepted once (RFC 6238 §5.2). Admins made before this migration have no
-- secret and cannot sign in until `obr-relay admin reset-totp` gives them one.
ALTER TABLE people ADD COLUMN totp_sealed TEXT;
ALTER TABLE people ADD COLUMN totp_last_step INTEGER NOT NULL DEFAULT 0;
