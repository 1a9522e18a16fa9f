//! The durable store: users' wrapped data keys, their credentials and sign
//! counters, and the fencing epoch that decides which signer may write.
//!
//! All SQL of the signer lives in this module, written once for both
//! backends: SQLite (the embedded default) and PostgreSQL (a cluster), which
//! share the migrations in `signer/migrations/`. Statements use `$n`
//! placeholders, `RETURNING` and `ON CONFLICT`, which both accept;
//! [`with_pool!`] runs the same code on whichever pool is open, and the one
//! place the SQL must differ (the row lock of a fenced write) is a
//! [`Fenced`] pair built by [`fenced_write!`].
//!
//! Fencing: [`Store::claim`] increments a user's `owner_epoch` and every
//! write afterwards carries the claimed epoch in its `WHERE` clause; a write
//! that matches no row because the epoch moved fails with
//! [`StoreError::Fenced`]. The check and the write must be one atomic step
//! with respect to a concurrent claim: on SQLite every write statement holds
//! the database's single write lock; on PostgreSQL the write locks the
//! user's `user_keys` row (`FOR SHARE`, or by updating it) in its own
//! transaction, so a claim waits for the write to commit, and a write that
//! waited for a claim re-reads the new epoch and is refused.
//!
//! `rotation` re-wraps the data keys under a new KEK in batches. Never sees
//! a plaintext key: private keys and data keys arrive and leave wrapped.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow, Postgres};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Decode, Row, Type};

use crate::call::{CredentialInfo, ObrActing, ObrRecord};
use crate::ids::{CredentialId, UserId};
use crate::vault::WrappedKey;

/// How long a SQLite statement waits for another connection's write lock
/// (another signer process on the same file, or this one's other
/// connections) before failing.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a free pooled connection (and for a new
/// PostgreSQL connection to be established).
pub const DB_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// URL schemes of each backend.
const SQLITE_SCHEME: &str = "sqlite:";
const POSTGRES_SCHEMES: [&str; 2] = ["postgres:", "postgresql:"];

/// The schema, embedded so the binary needs no migrations directory.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../../migrations/0001_init.sql")),
    (
        2,
        "authenticator",
        include_str!("../../migrations/0002_authenticator.sql"),
    ),
    (
        3,
        "obr_outbox",
        include_str!("../../migrations/0003_obr_outbox.sql"),
    ),
];

/// Run `$body` with `$pool` bound to the concrete pool inside `$pools` (a
/// [`Pool`]): the code is written once and type-checked against each
/// backend.
macro_rules! with_pool {
    ($pools:expr, $pool:ident => $body:expr) => {
        match &$pools {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// A fenced write: `$write` may test `EXISTS (SELECT 1 FROM owner)`, which
/// holds while `$2` (user id) still has owner epoch `$3`. On PostgreSQL the
/// `owner` CTE takes `FOR SHARE` on the user's `user_keys` row: a concurrent
/// claim (which updates that row) cannot commit between the check and the
/// write, and a check that waited for a claim sees the claim's new epoch
/// (READ COMMITTED re-reads a locked row's latest version). On SQLite the
/// statement runs under the database's single write lock, so no claim can
/// interleave and no row lock exists to take.
macro_rules! fenced_write {
    ($write:literal) => {
        Fenced {
            sqlite: concat!(
                "WITH owner AS (SELECT 1 FROM user_keys \
                 WHERE user_keys.user_id = $2 AND user_keys.owner_epoch = $3) ",
                $write
            ),
            postgres: concat!(
                "WITH owner AS (SELECT 1 FROM user_keys \
                 WHERE user_keys.user_id = $2 AND user_keys.owner_epoch = $3 FOR SHARE) ",
                $write
            ),
        }
    };
}

mod rotation;

pub use self::rotation::{
    DEFAULT_ROTATION_BATCH, RotationError, RotationProgress, RotationReport, rotate_kek,
};

/// One fenced statement as each backend runs it (see [`fenced_write!`]).
struct Fenced {
    sqlite: &'static str,
    postgres: &'static str,
}

/// `$1` credential, `$2` user, `$3` epoch, `$4` now (ms).
const INCREMENT_SIGN_COUNT: Fenced = fenced_write!(
    "UPDATE credentials SET sign_count = sign_count + 1, last_used_at = $4 \
     WHERE credential_id = $1 AND user_id = $2 AND EXISTS (SELECT 1 FROM owner) \
     RETURNING sign_count"
);

/// `$1` credential, `$2` user, `$3` epoch.
const DELETE_CREDENTIAL: Fenced = fenced_write!(
    "DELETE FROM credentials \
     WHERE credential_id = $1 AND user_id = $2 AND EXISTS (SELECT 1 FROM owner)"
);

/// The durable store of one signer process (a cheap handle: clone freely).
#[derive(Clone, Debug)]
pub(crate) struct Store {
    pool: Pool,
}

/// The open database, by backend.
#[derive(Clone, Debug)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "unsupported database URL scheme in {0:?}: use sqlite:// (or sqlite::memory:) or postgres://"
    )]
    Unsupported(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrating the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("another signer has claimed this user since (fencing epoch moved)")]
    Fenced,
    #[error("stored {0} is out of range")]
    Corrupt(&'static str),
}

/// What an activation learns when it claims a user.
#[derive(Debug)]
pub(crate) struct Claim {
    pub epoch: i64,
    pub wrapped_data_key: WrappedKey,
    pub kek_id: String,
}

/// A credential as an assertion needs it.
#[derive(Debug)]
pub(crate) struct StoredCredential {
    pub id: CredentialId,
    pub user_handle: Vec<u8>,
    pub user_name: String,
    pub user_display_name: String,
    pub discoverable: bool,
    pub wrapped_private_key: WrappedKey,
    /// The OBR session that created it, if an admin did.
    pub obr_session_id: Option<String>,
}

/// The statement that queues an on-behalf credential's record.
const OUTBOX_INSERT: &str = "INSERT INTO obr_outbox \
         (credential_id, user_id, admin_id, obr_session_id, rp_id, user_name, \
          user_display_name, discoverable, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// A credential about to be stored.
#[derive(Debug)]
pub(crate) struct NewCredential<'a> {
    pub id: &'a CredentialId,
    pub rp_id: &'a str,
    pub user_handle: &'a [u8],
    pub user_name: &'a str,
    pub user_display_name: &'a str,
    pub discoverable: bool,
    /// COSE algorithm identifier.
    pub algorithm: i64,
    pub wrapped_private_key: &'a WrappedKey,
    pub created_at_ms: i64,
    pub created_by: Option<&'a ObrActing>,
    /// credProtect level (CTAP 2.1 §12.1), 1 to 3.
    pub cred_protect: i64,
    /// The wrapped hmac-secret CredRandoms, if the credential has them.
    pub wrapped_cred_random: Option<&'a WrappedKey>,
}

/// What an assertion needs beyond [`StoredCredential`]: the key's
/// algorithm and the credential's extension state (migration 0002).
#[derive(Debug)]
pub(crate) struct CredentialPolicy {
    pub id: CredentialId,
    /// COSE algorithm identifier.
    pub algorithm: i64,
    pub cred_protect: i64,
    pub wrapped_cred_random: Option<WrappedKey>,
}

impl Store {
    /// Connect and apply pending migrations. `sqlite://path?mode=rwc`
    /// creates the file if missing; `sqlite::memory:` is a private
    /// in-memory database; `postgres://user@host/db` uses an existing
    /// PostgreSQL database (concurrent signers starting at once are safe:
    /// sqlx serializes migrations with an advisory lock).
    pub(crate) async fn open(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = if url.starts_with(SQLITE_SCHEME) {
            Pool::Sqlite(open_sqlite(url, max_connections).await?)
        } else if POSTGRES_SCHEMES
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .acquire_timeout(DB_ACQUIRE_TIMEOUT)
                    .connect(url)
                    .await?,
            )
        } else {
            return Err(StoreError::Unsupported(redact_url(url)));
        };
        let migrator = Migrator::new(EmbeddedMigrations).await?;
        with_pool!(pool, open => migrator.run(open).await?);
        Ok(Self { pool })
    }

    /// Claim `user` for this activation: create the user's key row with
    /// `new_data_key` if there is none (epoch 1), else increment its epoch.
    /// Returns the epoch to carry in every later write, and the data key
    /// actually stored (one statement, so the key and its KEK id are read
    /// together even while a rotation re-wraps them).
    pub(crate) async fn claim(
        &self,
        user: &UserId,
        new_data_key: &WrappedKey,
        kek_id: &str,
    ) -> Result<Claim, StoreError> {
        const CLAIM: &str = "INSERT INTO user_keys \
                 (user_id, owner_epoch, wrapped_data_key, kek_id, credential_seq, created_at) \
             VALUES ($1, 1, $2, $3, 0, $4) \
             ON CONFLICT (user_id) DO UPDATE SET owner_epoch = user_keys.owner_epoch + 1 \
             RETURNING owner_epoch, wrapped_data_key, kek_id";
        let columns = with_pool!(self.pool, pool => {
            let row = sqlx::query(CLAIM)
                .bind(user.as_str())
                .bind(new_data_key.as_bytes())
                .bind(kek_id)
                .bind(now_ms())
                .fetch_one(pool)
                .await?;
            claim_from(&row)?
        });
        Ok(columns)
    }

    /// `user`'s credentials for `rp_id`, most recently created first, each
    /// with its algorithm and extension state (one query: getAssertion's
    /// only read of the credentials).
    pub(crate) async fn credentials_for_rp(
        &self,
        user: &UserId,
        rp_id: &str,
    ) -> Result<Vec<(StoredCredential, CredentialPolicy)>, StoreError> {
        const SELECT: &str = "SELECT credential_id, user_handle, user_name, user_display_name, \
                    discoverable, wrapped_private_key, algorithm, cred_protect, wrapped_cred_random, \
                    obr_session_id \
             FROM credentials WHERE user_id = $1 AND rp_id = $2 \
             ORDER BY created_seq DESC";
        with_pool!(self.pool, pool => {
            let rows = sqlx::query(SELECT)
                .bind(user.as_str())
                .bind(rp_id)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| Ok((stored_credential(row)?, credential_policy(row)?)))
                .collect()
        })
    }

    /// The credentials among `ids` that are `user`'s for `rp_id` (a
    /// getAssertion allowList), most recently created first: one primary-key
    /// lookup per id, however many credentials the user has on the RP.
    pub(crate) async fn credentials_by_id(
        &self,
        user: &UserId,
        rp_id: &str,
        ids: &[&[u8]],
    ) -> Result<Vec<(StoredCredential, CredentialPolicy)>, StoreError> {
        const SELECT: &str = "SELECT credential_id, user_handle, user_name, user_display_name, \
                    discoverable, wrapped_private_key, algorithm, cred_protect, wrapped_cred_random, \
                    obr_session_id, created_seq \
             FROM credentials WHERE credential_id = $1 AND user_id = $2 AND rp_id = $3";
        let mut found = Vec::with_capacity(ids.len().min(4));
        for (n, id) in ids.iter().enumerate() {
            if ids.iter().take(n).any(|seen| seen == id) {
                continue;
            }
            let row = with_pool!(self.pool, pool => {
                sqlx::query(SELECT)
                    .bind(*id)
                    .bind(user.as_str())
                    .bind(rp_id)
                    .fetch_optional(pool)
                    .await?
                    .map(|row| -> Result<_, StoreError> {
                        let seq: i64 = StoreRow::column(&row, "created_seq")?;
                        Ok((seq, stored_credential(&row)?, credential_policy(&row)?))
                    })
                    .transpose()?
            });
            found.extend(row);
        }
        found.sort_by_key(|(seq, ..)| std::cmp::Reverse(*seq));
        Ok(found
            .into_iter()
            .map(|(_, credential, policy)| (credential, policy))
            .collect())
    }

    /// The algorithm and extension state of `user`'s credentials for
    /// `rp_id` (makeCredential's excludeList check needs no more).
    pub(crate) async fn credential_policies(
        &self,
        user: &UserId,
        rp_id: &str,
    ) -> Result<Vec<CredentialPolicy>, StoreError> {
        const SELECT: &str = "SELECT credential_id, algorithm, cred_protect, wrapped_cred_random \
             FROM credentials WHERE user_id = $1 AND rp_id = $2";
        with_pool!(self.pool, pool => {
            let rows = sqlx::query(SELECT)
                .bind(user.as_str())
                .bind(rp_id)
                .fetch_all(pool)
                .await?;
            rows.iter().map(credential_policy).collect()
        })
    }

    /// Delete all of `user`'s credentials and replace their data key with
    /// `new_data_key` (wrapped under `kek_id`), under the claimed `epoch`,
    /// in one transaction. Returns how many credentials were deleted.
    pub(crate) async fn reset_user_key(
        &self,
        user: &UserId,
        epoch: i64,
        new_data_key: &WrappedKey,
        kek_id: &str,
    ) -> Result<u64, StoreError> {
        // Updating the user_keys row is the fencing check and, on
        // PostgreSQL, locks that row against a concurrent claim to commit.
        const REKEY: &str = "UPDATE user_keys SET wrapped_data_key = $3, kek_id = $4 \
             WHERE user_id = $1 AND owner_epoch = $2";
        const DELETE_ALL: &str = "DELETE FROM credentials WHERE user_id = $1";
        with_pool!(self.pool, pool => {
            let mut tx = pool.begin().await?;
            let rekeyed = sqlx::query(REKEY)
                .bind(user.as_str())
                .bind(epoch)
                .bind(new_data_key.as_bytes())
                .bind(kek_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if rekeyed == 0 {
                return Err(StoreError::Fenced);
            }
            let deleted = sqlx::query(DELETE_ALL)
                .bind(user.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(deleted)
        })
    }

    /// Store a new credential under the claimed `epoch`. A discoverable
    /// credential replaces the user's discoverable credential for the same
    /// RP and user handle (CTAP 2.1 §6.1.2 step 17: "overwrite that
    /// credential"). Returns how many credentials it replaced.
    pub(crate) async fn insert_credential(
        &self,
        user: &UserId,
        epoch: i64,
        credential: NewCredential<'_>,
    ) -> Result<u64, StoreError> {
        // The fencing check comes first and is itself a write, so the
        // transaction holds the write lock (SQLite) or the user_keys row
        // (PostgreSQL: a claim waits for this commit, and an update that
        // waited for a claim re-checks the new epoch and matches nothing)
        // from here to commit.
        const NEXT_SEQ: &str = "UPDATE user_keys SET credential_seq = credential_seq + 1 \
             WHERE user_id = $1 AND owner_epoch = $2 \
             RETURNING credential_seq";
        const REPLACE: &str = "DELETE FROM credentials \
             WHERE user_id = $1 AND rp_id = $2 AND user_handle = $3 AND discoverable = TRUE";
        const INSERT: &str = "INSERT INTO credentials \
                 (credential_id, user_id, rp_id, user_handle, user_name, user_display_name, \
                  discoverable, algorithm, wrapped_private_key, sign_count, created_seq, \
                  created_at, created_by_admin, obr_session_id, last_used_at, \
                  cred_protect, wrapped_cred_random) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $11, $12, $13, NULL, \
                     $14, $15)";
        with_pool!(self.pool, pool => {
            let mut tx = pool.begin().await?;
            let seq: Option<i64> = sqlx::query_scalar(NEXT_SEQ)
                .bind(user.as_str())
                .bind(epoch)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(seq) = seq else {
                return Err(StoreError::Fenced);
            };
            let replaced = if credential.discoverable {
                sqlx::query(REPLACE)
                    .bind(user.as_str())
                    .bind(credential.rp_id)
                    .bind(credential.user_handle)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
            } else {
                0
            };
            sqlx::query(INSERT)
                .bind(credential.id.as_bytes())
                .bind(user.as_str())
                .bind(credential.rp_id)
                .bind(credential.user_handle)
                .bind(credential.user_name)
                .bind(credential.user_display_name)
                .bind(credential.discoverable)
                .bind(credential.algorithm)
                .bind(credential.wrapped_private_key.as_bytes())
                .bind(seq)
                .bind(credential.created_at_ms)
                .bind(credential.created_by.map(|obr| obr.admin_id.as_str()))
                .bind(credential.created_by.map(|obr| obr.obr_session_id.as_str()))
                .bind(credential.cred_protect)
                .bind(credential.wrapped_cred_random.map(WrappedKey::as_bytes))
                .execute(&mut *tx)
                .await?;
            // On behalf: the record to make travels with the credential.
            if let Some(obr) = credential.created_by {
                sqlx::query(OUTBOX_INSERT)
                    .bind(credential.id.as_bytes())
                    .bind(user.as_str())
                    .bind(obr.admin_id.as_str())
                    .bind(obr.obr_session_id.as_str())
                    .bind(credential.rp_id)
                    .bind(credential.user_name)
                    .bind(credential.user_display_name)
                    .bind(credential.discoverable)
                    .bind(credential.created_at_ms)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(replaced)
        })
    }

    /// On-behalf credentials whose record the relay has not confirmed,
    /// created at or before `created_before_ms`, oldest first.
    pub(crate) async fn pending_obr_records(
        &self,
        created_before_ms: i64,
        limit: i64,
    ) -> Result<Vec<ObrRecord>, StoreError> {
        const SELECT: &str = "SELECT credential_id, user_id, admin_id, obr_session_id, rp_id, \
                    user_name, user_display_name, discoverable, created_at \
             FROM obr_outbox WHERE created_at <= $1 ORDER BY created_at LIMIT $2";
        with_pool!(self.pool, pool => {
            let rows = sqlx::query(SELECT)
                .bind(created_before_ms)
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter().map(obr_record).collect()
        })
    }

    /// The relay recorded `credential`'s creation: its outbox row goes.
    /// Returns whether there was one.
    pub(crate) async fn ack_obr_record(&self, credential: &[u8]) -> Result<bool, StoreError> {
        const DELETE: &str = "DELETE FROM obr_outbox WHERE credential_id = $1";
        let deleted = with_pool!(self.pool, pool => {
            sqlx::query(DELETE).bind(credential).execute(pool).await?.rows_affected()
        });
        Ok(deleted > 0)
    }

    /// Increment and return a credential's signature counter under the
    /// claimed `epoch`, committed before this returns. `Ok(None)`: the
    /// credential no longer exists.
    pub(crate) async fn increment_sign_count(
        &self,
        user: &UserId,
        epoch: i64,
        credential: &CredentialId,
    ) -> Result<Option<u32>, StoreError> {
        let count: Option<i64> = with_pool!(self.pool, pool => {
            sqlx::query_scalar(self.fenced(&INCREMENT_SIGN_COUNT))
                .bind(credential.as_bytes())
                .bind(user.as_str())
                .bind(epoch)
                .bind(now_ms())
                .fetch_optional(pool)
                .await?
        });
        match count {
            Some(count) => u32::try_from(count)
                .map(Some)
                .map_err(|_| StoreError::Corrupt("sign counter")),
            None => self.still_owner(user, epoch).await.map(|()| None),
        }
    }

    /// Delete one of `user`'s credentials under the claimed `epoch`.
    pub(crate) async fn delete_credential(
        &self,
        user: &UserId,
        epoch: i64,
        credential: &CredentialId,
    ) -> Result<bool, StoreError> {
        let deleted = with_pool!(self.pool, pool => {
            sqlx::query(self.fenced(&DELETE_CREDENTIAL))
                .bind(credential.as_bytes())
                .bind(user.as_str())
                .bind(epoch)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if deleted > 0 {
            return Ok(true);
        }
        self.still_owner(user, epoch).await.map(|()| false)
    }

    /// Whether `user` has the credential (a read: no claim needed).
    pub(crate) async fn has_credential(
        &self,
        user: &UserId,
        credential: &CredentialId,
    ) -> Result<bool, StoreError> {
        const SELECT: &str =
            "SELECT credential_id FROM credentials WHERE credential_id = $1 AND user_id = $2";
        let found: Option<Vec<u8>> = with_pool!(self.pool, pool => {
            sqlx::query_scalar(SELECT)
                .bind(credential.as_bytes())
                .bind(user.as_str())
                .fetch_optional(pool)
                .await?
        });
        Ok(found.is_some())
    }

    /// Everything the panel shows about `user`'s credentials, oldest first.
    pub(crate) async fn list_credentials(
        &self,
        user: &UserId,
    ) -> Result<Vec<CredentialInfo>, StoreError> {
        const SELECT: &str = "SELECT credential_id, rp_id, user_handle, user_name, \
                    user_display_name, discoverable, algorithm, sign_count, created_at, \
                    created_by_admin, obr_session_id, last_used_at \
             FROM credentials WHERE user_id = $1 ORDER BY created_seq";
        with_pool!(self.pool, pool => {
            let rows = sqlx::query(SELECT)
                .bind(user.as_str())
                .fetch_all(pool)
                .await?;
            rows.iter().map(credential_info).collect()
        })
    }

    /// `Ok` if `epoch` is still `user`'s current one, else [`StoreError::Fenced`].
    async fn still_owner(&self, user: &UserId, epoch: i64) -> Result<(), StoreError> {
        const SELECT: &str = "SELECT owner_epoch FROM user_keys WHERE user_id = $1";
        let current: Option<i64> = with_pool!(self.pool, pool => {
            sqlx::query_scalar(SELECT)
                .bind(user.as_str())
                .fetch_optional(pool)
                .await?
        });
        if current == Some(epoch) {
            Ok(())
        } else {
            Err(StoreError::Fenced)
        }
    }

    /// This backend's text of a fenced statement.
    fn fenced(&self, statement: &Fenced) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => statement.sqlite,
            Pool::Postgres(_) => statement.postgres,
        }
    }
}

/// Milliseconds since the Unix epoch, as the database records time.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Create the database file 0600 before SQLite does (with the process's
/// umask, often world-readable); SQLite gives its `-wal` and `-shm` files
/// the same mode. An existing file is left as it is.
fn create_private(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Database(sqlx::Error::Io(e))),
    }
}

async fn open_sqlite(url: &str, max_connections: u32) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str(url)?
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true);
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let pool = if in_memory {
        // Each in-memory database lives as long as a connection to it:
        // keep exactly one, forever.
        SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(DB_ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?
    } else {
        create_private(options.get_filename())?;
        // WAL lets readers run beside the writer; FULL sync makes every
        // committed sign counter survive a power cut (a counter that
        // went backwards would look like a cloned key to the RP).
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(DB_ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?
    };
    Ok(pool)
}

/// `url` without a password, fit for an error message.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://…{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// A Rust value both backends decode from a column.
trait Column:
    for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}

impl<T> Column for T where
    T: for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}

/// A result row of either backend, read by column name.
trait StoreRow {
    fn column<T: Column>(&self, name: &str) -> Result<T, sqlx::Error>;
}

impl StoreRow for SqliteRow {
    fn column<T: Column>(&self, name: &str) -> Result<T, sqlx::Error> {
        self.try_get(name)
    }
}

impl StoreRow for PgRow {
    fn column<T: Column>(&self, name: &str) -> Result<T, sqlx::Error> {
        self.try_get(name)
    }
}

fn claim_from(row: &impl StoreRow) -> Result<Claim, StoreError> {
    Ok(Claim {
        epoch: row.column("owner_epoch")?,
        wrapped_data_key: WrappedKey::from_stored(row.column("wrapped_data_key")?),
        kek_id: row.column("kek_id")?,
    })
}

/// COSE algorithm identifier → the name the panel shows.
fn algorithm_name(cose: i64) -> String {
    match cose {
        -7 => "ES256".to_owned(),
        -8 => "EdDSA".to_owned(),
        other => format!("COSE({other})"),
    }
}

fn stored_credential(row: &impl StoreRow) -> Result<StoredCredential, StoreError> {
    Ok(StoredCredential {
        id: CredentialId::new(row.column("credential_id")?)
            .map_err(|_| StoreError::Corrupt("credential id"))?,
        user_handle: row.column("user_handle")?,
        user_name: row.column("user_name")?,
        user_display_name: row.column("user_display_name")?,
        discoverable: row.column("discoverable")?,
        wrapped_private_key: WrappedKey::from_stored(row.column("wrapped_private_key")?),
        obr_session_id: row.column("obr_session_id")?,
    })
}

fn obr_record(row: &impl StoreRow) -> Result<ObrRecord, StoreError> {
    Ok(ObrRecord {
        credential_id: row.column("credential_id")?,
        user_id: row.column("user_id")?,
        admin_id: row.column("admin_id")?,
        obr_session_id: row.column("obr_session_id")?,
        rp_id: row.column("rp_id")?,
        user_name: row.column("user_name")?,
        user_display_name: row.column("user_display_name")?,
        discoverable: row.column("discoverable")?,
        created_at_ms: row.column("created_at")?,
    })
}

fn credential_policy(row: &impl StoreRow) -> Result<CredentialPolicy, StoreError> {
    Ok(CredentialPolicy {
        id: CredentialId::new(row.column("credential_id")?)
            .map_err(|_| StoreError::Corrupt("credential id"))?,
        algorithm: row.column("algorithm")?,
        cred_protect: row.column("cred_protect")?,
        wrapped_cred_random: row
            .column::<Option<Vec<u8>>>("wrapped_cred_random")?
            .map(WrappedKey::from_stored),
    })
}

fn credential_info(row: &impl StoreRow) -> Result<CredentialInfo, StoreError> {
    let sign_count: i64 = row.column("sign_count")?;
    Ok(CredentialInfo {
        credential_id: row.column("credential_id")?,
        rp_id: row.column("rp_id")?,
        user_handle: row.column("user_handle")?,
        user_name: row.column("user_name")?,
        user_display_name: row.column("user_display_name")?,
        discoverable: row.column("discoverable")?,
        algorithm: algorithm_name(row.column("algorithm")?),
        sign_count: u32::try_from(sign_count).map_err(|_| StoreError::Corrupt("sign counter"))?,
        created_at_ms: row.column("created_at")?,
        created_by_admin: row.column("created_by_admin")?,
        obr_session_id: row.column("obr_session_id")?,
        last_used_at_ms: row.column("last_used_at")?,
    })
}

/// [`MIGRATIONS`] as a sqlx migration source.
#[derive(Debug)]
struct EmbeddedMigrations;

impl MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 'static>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests;
