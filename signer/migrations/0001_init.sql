-- obr-signer schema, version 1.
--
-- Every user's security key is one `user_keys` row (the per-user data key,
-- wrapped by the key-encryption key, plus the fencing epoch of the signer
-- that owns the user) and its `credentials`. Private keys are stored only
-- wrapped (AES-256-GCM under the user's data key). Times are milliseconds
-- since the Unix epoch.
--
-- Portable between SQLite and PostgreSQL: BYTEA (SQLite stores the blobs
-- as given), BIGINT, TEXT, BOOLEAN; no backend-specific syntax.

CREATE TABLE user_keys (
    user_id          TEXT    NOT NULL PRIMARY KEY,
    -- Incremented by every activation of the user's actor; every credential
    -- write and counter increment must carry the epoch it claimed.
    owner_epoch      BIGINT  NOT NULL,
    -- version || nonce || AES-256-GCM(KEK, data key), AAD = user id.
    wrapped_data_key BYTEA   NOT NULL,
    kek_id           TEXT    NOT NULL,
    -- Orders credentials by creation ("most recent first", CTAP 2.1 §6.2.2).
    credential_seq   BIGINT  NOT NULL,
    created_at       BIGINT  NOT NULL
);

CREATE TABLE credentials (
    credential_id       BYTEA   NOT NULL PRIMARY KEY,
    user_id             TEXT    NOT NULL REFERENCES user_keys (user_id) ON DELETE CASCADE,
    rp_id               TEXT    NOT NULL,
    user_handle         BYTEA   NOT NULL,
    user_name           TEXT    NOT NULL,
    user_display_name   TEXT    NOT NULL,
    discoverable        BOOLEAN NOT NULL,
    -- COSE algorithm identifier (-7 = ES256).
    algorithm           BIGINT  NOT NULL,
    -- version || nonce || AES-256-GCM(data key, PKCS#8), AAD = user id + credential id.
    wrapped_private_key BYTEA   NOT NULL,
    sign_count          BIGINT  NOT NULL,
    created_seq         BIGINT  NOT NULL,
    created_at          BIGINT  NOT NULL,
    -- Set when an administrator created the credential on the user's behalf.
    created_by_admin    TEXT,
    obr_session_id      TEXT,
    last_used_at        BIGINT
);

CREATE INDEX credentials_by_user_rp ON credentials (user_id, rp_id, created_seq);
