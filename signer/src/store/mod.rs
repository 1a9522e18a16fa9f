//! The durable store: users' wrapped data keys, their credentials and sign
//! counters, and the fencing epoch that decides which signer may write.
//!
//! All SQL of the signer lives in this module (SQLite today; statements use
//! `$n` placeholders, `RETURNING` and `ON CONFLICT` so they also run on
//! PostgreSQL). Fencing: [`Store::claim`] increments a user's `owner_epoch`
//! and every write afterwards carries the claimed epoch in its `WHERE`
//! clause; a write that matches no row because the epoch moved fails with
//! [`StoreError::Fenced`]. On SQLite every write statement holds the
//! database's single write lock, so the epoch check and the write are one
//! atomic step. (A PostgreSQL backend must lock the `user_keys` row `FOR
//! SHARE` in the same transaction to keep that property.)
//!
//! Never sees a plaintext key: private keys arrive and leave wrapped.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Row;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use crate::api::{CredentialInfo, ObrActing};
use crate::ids::{CredentialId, UserId};
use crate::vault::WrappedKey;

/// How long a SQLite statement waits for another connection's write lock
/// (another signer process on the same file, or this one's other
/// connections) before failing.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a caller waits for a free pooled connection.
pub const DB_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema, embedded so the binary needs no migrations directory.
const MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "init", include_str!("../../migrations/0001_init.sql"))];

/// The durable store of one signer process (a cheap handle: clone freely).
#[derive(Clone, Debug)]
pub(crate) struct Store {
    pool: SqlitePool,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: only sqlite: URLs are implemented")]
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
}

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
}

impl Store {
    /// Connect (creating the SQLite file if the URL says `mode=rwc`) and
    /// apply pending migrations.
    pub(crate) async fn open(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        if !url.starts_with("sqlite:") {
            return Err(StoreError::Unsupported(url.to_owned()));
        }
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
        Migrator::new(EmbeddedMigrations).await?.run(&pool).await?;
        Ok(Self { pool })
    }

    /// Claim `user` for this activation: create the user's key row with
    /// `new_data_key` if there is none (epoch 1), else increment its epoch.
    /// Returns the epoch to carry in every later write, and the data key
    /// actually stored.
    pub(crate) async fn claim(
        &self,
        user: &UserId,
        new_data_key: &WrappedKey,
        kek_id: &str,
    ) -> Result<Claim, StoreError> {
        let row = sqlx::query(
            "INSERT INTO user_keys \
                 (user_id, owner_epoch, wrapped_data_key, kek_id, credential_seq, created_at) \
             VALUES ($1, 1, $2, $3, 0, $4) \
             ON CONFLICT (user_id) DO UPDATE SET owner_epoch = user_keys.owner_epoch + 1 \
             RETURNING owner_epoch, wrapped_data_key, kek_id",
        )
        .bind(user.as_str())
        .bind(new_data_key.as_bytes())
        .bind(kek_id)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok(Claim {
            epoch: row.try_get("owner_epoch")?,
            wrapped_data_key: WrappedKey::from_stored(row.try_get("wrapped_data_key")?),
            kek_id: row.try_get("kek_id")?,
        })
    }

    /// `user`'s credentials for `rp_id`, most recently created first.
    pub(crate) async fn credentials_for_rp(
        &self,
        user: &UserId,
        rp_id: &str,
    ) -> Result<Vec<StoredCredential>, StoreError> {
        let rows = sqlx::query(
            "SELECT credential_id, user_handle, user_name, user_display_name, discoverable, \
                    wrapped_private_key \
             FROM credentials WHERE user_id = $1 AND rp_id = $2 \
             ORDER BY created_seq DESC",
        )
        .bind(user.as_str())
        .bind(rp_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(stored_credential).collect()
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
        let mut tx = self.pool.begin().await?;
        // The fencing check comes first and is itself a write, so the
        // transaction holds the write lock (and, on PostgreSQL, the
        // user_keys row) from here to commit.
        let seq: Option<i64> = sqlx::query_scalar(
            "UPDATE user_keys SET credential_seq = credential_seq + 1 \
             WHERE user_id = $1 AND owner_epoch = $2 \
             RETURNING credential_seq",
        )
        .bind(user.as_str())
        .bind(epoch)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(seq) = seq else {
            return Err(StoreError::Fenced);
        };
        let replaced = if credential.discoverable {
            sqlx::query(
                "DELETE FROM credentials \
                 WHERE user_id = $1 AND rp_id = $2 AND user_handle = $3 AND discoverable = TRUE",
            )
            .bind(user.as_str())
            .bind(credential.rp_id)
            .bind(credential.user_handle)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        } else {
            0
        };
        sqlx::query(
            "INSERT INTO credentials \
                 (credential_id, user_id, rp_id, user_handle, user_name, user_display_name, \
                  discoverable, algorithm, wrapped_private_key, sign_count, created_seq, \
                  created_at, created_by_admin, obr_session_id, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $11, $12, $13, NULL)",
        )
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
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(replaced)
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
        let count: Option<i64> = sqlx::query_scalar(
            "UPDATE credentials SET sign_count = sign_count + 1, last_used_at = $4 \
             WHERE credential_id = $1 AND user_id = $2 \
               AND EXISTS (SELECT 1 FROM user_keys \
                           WHERE user_keys.user_id = $2 AND user_keys.owner_epoch = $3) \
             RETURNING sign_count",
        )
        .bind(credential.as_bytes())
        .bind(user.as_str())
        .bind(epoch)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
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
        let deleted = sqlx::query(
            "DELETE FROM credentials \
             WHERE credential_id = $1 AND user_id = $2 \
               AND EXISTS (SELECT 1 FROM user_keys \
                           WHERE user_keys.user_id = $2 AND user_keys.owner_epoch = $3)",
        )
        .bind(credential.as_bytes())
        .bind(user.as_str())
        .bind(epoch)
        .execute(&self.pool)
        .await?
        .rows_affected();
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
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM credentials WHERE credential_id = $1 AND user_id = $2",
        )
        .bind(credential.as_bytes())
        .bind(user.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    /// Everything the panel shows about `user`'s credentials, oldest first.
    pub(crate) async fn list_credentials(
        &self,
        user: &UserId,
    ) -> Result<Vec<CredentialInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT credential_id, rp_id, user_handle, user_name, user_display_name, \
                    discoverable, algorithm, sign_count, created_at, created_by_admin, \
                    obr_session_id, last_used_at \
             FROM credentials WHERE user_id = $1 ORDER BY created_seq",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(credential_info).collect()
    }

    /// `Ok` if `epoch` is still `user`'s current one, else [`StoreError::Fenced`].
    async fn still_owner(&self, user: &UserId, epoch: i64) -> Result<(), StoreError> {
        let current: Option<i64> =
            sqlx::query_scalar("SELECT owner_epoch FROM user_keys WHERE user_id = $1")
                .bind(user.as_str())
                .fetch_optional(&self.pool)
                .await?;
        if current == Some(epoch) {
            Ok(())
        } else {
            Err(StoreError::Fenced)
        }
    }
}

/// Milliseconds since the Unix epoch, as the database records time.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// COSE algorithm identifier → the name the panel shows.
fn algorithm_name(cose: i64) -> String {
    match cose {
        -7 => "ES256".to_owned(),
        other => format!("COSE({other})"),
    }
}

fn stored_credential(row: &SqliteRow) -> Result<StoredCredential, StoreError> {
    Ok(StoredCredential {
        id: CredentialId::new(row.try_get("credential_id")?)
            .map_err(|_| StoreError::Corrupt("credential id"))?,
        user_handle: row.try_get("user_handle")?,
        user_name: row.try_get("user_name")?,
        user_display_name: row.try_get("user_display_name")?,
        discoverable: row.try_get("discoverable")?,
        wrapped_private_key: WrappedKey::from_stored(row.try_get("wrapped_private_key")?),
    })
}

fn credential_info(row: &SqliteRow) -> Result<CredentialInfo, StoreError> {
    let sign_count: i64 = row.try_get("sign_count")?;
    Ok(CredentialInfo {
        credential_id: row.try_get("credential_id")?,
        rp_id: row.try_get("rp_id")?,
        user_handle: row.try_get("user_handle")?,
        user_name: row.try_get("user_name")?,
        user_display_name: row.try_get("user_display_name")?,
        discoverable: row.try_get("discoverable")?,
        algorithm: algorithm_name(row.try_get("algorithm")?),
        sign_count: u32::try_from(sign_count).map_err(|_| StoreError::Corrupt("sign counter"))?,
        created_at_ms: row.try_get("created_at")?,
        created_by_admin: row.try_get("created_by_admin")?,
        obr_session_id: row.try_get("obr_session_id")?,
        last_used_at_ms: row.try_get("last_used_at")?,
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
