-- obr-signer schema, version 2: per-credential extension state.
--
-- Types are valid on SQLite and PostgreSQL alike.

-- CTAP 2.1 §12.1 credProtect: 1 userVerificationOptional (the default),
-- 2 userVerificationOptionalWithCredentialIDList, 3 userVerificationRequired.
ALTER TABLE credentials ADD COLUMN cred_protect BIGINT NOT NULL DEFAULT 1;

-- CTAP 2.1 §12.5 hmac-secret: CredRandomWithUV || CredRandomWithoutUV
-- (32 bytes each), wrapped like the private key (AES-256-GCM under the
-- user's data key); NULL when the credential was made without hmac-secret.
ALTER TABLE credentials ADD COLUMN wrapped_cred_random BYTEA;
