//! KEK rotation: re-wrap every user's data key under the keyring's current
//! KEK, in small batches, while signers keep running.
//!
//! Each batch reads up to `batch_size` `user_keys` rows not yet under the
//! current KEK (keyset pagination by user id), re-wraps each data key in the
//! vault ([`Kek::rewrap_data_key`]: the plaintext never leaves it), and
//! writes the batch back in one short transaction, every row by
//! compare-and-set on the `kek_id` and wrapped key it read. A row changed
//! meanwhile (another rotation run, a user deleted) is left alone and
//! retried by the next pass. A running signer is never disturbed: its claim
//! changes only `owner_epoch` and reads the wrapped key and its KEK id in one
//! statement, so it sees either the old pair or the new one, and it holds
//! both KEKs; an active user's actor already holds the data key, which a
//! rotation never changes (only its wrapping).
//!
//! Idempotent and resumable: rows already under the current KEK are never
//! read, so a second run finds nothing to do and an interrupted one carries
//! on where it stopped. Prints nothing itself; the caller gets counts.

use ring::rand::SystemRandom;

use super::{Pool, Store, StoreError, StoreRow};
use crate::ids::UserId;
use crate::vault::{Kek, VaultError, WrappedKey};

/// Rows re-wrapped per transaction: short enough that a claim waiting on
/// one of the batch's rows (PostgreSQL) or on the write lock (SQLite) waits
/// milliseconds, long enough to amortize the commit.
pub const DEFAULT_ROTATION_BATCH: u32 = 100;
/// Passes over the table before giving up on rows that keep changing under
/// the rotation (each pass retries the rows whose compare-and-set lost).
const MAX_ROTATION_PASSES: u32 = 5;
/// Connections a rotation needs: it runs one statement at a time.
const ROTATION_DB_CONNECTIONS: u32 = 1;

/// Counts of a rotation so far (after each batch) or in total.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RotationProgress {
    /// Data keys this run moved to the current KEK.
    pub rewrapped: u64,
    /// Rows that changed between read and write; retried by the next pass.
    pub raced: u64,
    /// Rows left as they are in this pass: wrapped under a KEK this keyring
    /// does not hold, or not opening under the KEK they name (logged).
    pub skipped: u64,
}

/// Where every data key stands after a rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationReport {
    /// The KEK every data key should now be wrapped under.
    pub kek_id: String,
    /// What this run did.
    pub totals: RotationProgress,
    /// Data keys under the current KEK, this run's and earlier ones.
    pub current: u64,
    /// Data keys still under another KEK, by KEK id: empty when the rotation
    /// is complete.
    pub remaining: Vec<(String, u64)>,
}

/// Why a rotation stopped.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("re-wrapping a data key: {0}")]
    Vault(#[from] VaultError),
    #[error("batch size must be at least 1")]
    EmptyBatch,
}

/// Re-wrap every data key in the database at `database_url` under `kek`'s
/// current KEK, unwrapping each with the KEK its row names (which `kek`
/// must hold as a previous KEK). `progress` sees the running totals after
/// every batch.
pub async fn rotate_kek(
    database_url: &str,
    kek: &Kek,
    batch_size: u32,
    mut progress: impl FnMut(&RotationProgress),
) -> Result<RotationReport, RotationError> {
    if batch_size == 0 {
        return Err(RotationError::EmptyBatch);
    }
    let store = Store::open(database_url, ROTATION_DB_CONNECTIONS).await?;
    let rng = SystemRandom::new();
    let mut totals = RotationProgress::default();
    for pass in 1..=MAX_ROTATION_PASSES {
        let raced_before = totals.raced;
        let mut after: Option<UserId> = None;
        loop {
            let rows = store
                .data_keys_not_under(kek.id(), after.as_ref(), batch_size)
                .await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.user.clone());
            let mut swaps = Vec::with_capacity(rows.len());
            for row in &rows {
                match kek.rewrap_data_key(&row.user, &row.kek_id, &row.wrapped, &rng) {
                    Ok(new) => swaps.push(DataKeySwap { old: row, new }),
                    Err(VaultError::UnknownKek { .. }) => totals.skipped += 1,
                    Err(error @ (VaultError::Authentication | VaultError::Malformed)) => {
                        tracing::warn!(user = %row.user, kek_id = %row.kek_id, %error,
                            "data key does not open under the KEK its row names: left as is");
                        totals.skipped += 1;
                    }
                    Err(error @ VaultError::Random) => return Err(error.into()),
                }
            }
            let swapped = store.swap_data_keys(kek.id(), &swaps).await?;
            totals.rewrapped += swapped;
            totals.raced += len_u64(swaps.len()).saturating_sub(swapped);
            progress(&totals);
        }
        if totals.raced == raced_before {
            break;
        }
        tracing::info!(pass, "rows changed during the pass: another pass");
    }
    let mut current = 0;
    let mut remaining = Vec::new();
    for (kek_id, users) in store.data_keys_by_kek().await? {
        if kek_id == kek.id() {
            current = users;
        } else {
            remaining.push((kek_id, users));
        }
    }
    Ok(RotationReport {
        kek_id: kek.id().to_owned(),
        totals,
        current,
        remaining,
    })
}

/// A user's wrapped data key as a rotation reads it.
#[derive(Debug)]
pub(crate) struct DataKeyRow {
    pub user: UserId,
    pub kek_id: String,
    pub wrapped: WrappedKey,
}

/// Replace `old` (if still as read) by `new`, wrapped under the current KEK.
#[derive(Debug)]
pub(crate) struct DataKeySwap<'a> {
    pub old: &'a DataKeyRow,
    pub new: WrappedKey,
}

impl Store {
    /// Up to `limit` data keys not wrapped under `kek_id`, for users after
    /// `after` in user-id order.
    pub(crate) async fn data_keys_not_under(
        &self,
        kek_id: &str,
        after: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<DataKeyRow>, StoreError> {
        const SELECT: &str = "SELECT user_id, kek_id, wrapped_data_key FROM user_keys \
             WHERE kek_id <> $1 AND user_id > $2 ORDER BY user_id LIMIT $3";
        // Every user id is non-empty, so "" sorts before all of them.
        let after = after.map_or("", UserId::as_str);
        with_pool!(self.pool, pool => {
            let rows = sqlx::query(SELECT)
                .bind(kek_id)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
            rows.iter().map(data_key_row).collect()
        })
    }

    /// Write each swap whose row still holds the wrapped key and KEK id it
    /// was read with; returns how many were written. One transaction: a
    /// batch costs one commit.
    pub(crate) async fn swap_data_keys(
        &self,
        new_kek_id: &str,
        swaps: &[DataKeySwap<'_>],
    ) -> Result<u64, StoreError> {
        const SWAP: &str = "UPDATE user_keys SET wrapped_data_key = $1, kek_id = $2 \
             WHERE user_id = $3 AND kek_id = $4 AND wrapped_data_key = $5";
        if swaps.is_empty() {
            return Ok(0);
        }
        with_pool!(self.pool, pool => {
            // The first statement is a write, so on SQLite the transaction
            // takes the write lock at once (waiting up to the busy timeout)
            // instead of failing to upgrade a read lock later.
            let mut tx = pool.begin().await?;
            let mut swapped = 0;
            for swap in swaps {
                swapped += sqlx::query(SWAP)
                    .bind(swap.new.as_bytes())
                    .bind(new_kek_id)
                    .bind(swap.old.user.as_str())
                    .bind(swap.old.kek_id.as_str())
                    .bind(swap.old.wrapped.as_bytes())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
            Ok(swapped)
        })
    }

    /// How many data keys each KEK wraps, by KEK id.
    pub(crate) async fn data_keys_by_kek(&self) -> Result<Vec<(String, u64)>, StoreError> {
        const SELECT: &str = "SELECT kek_id, COUNT(*) AS users FROM user_keys \
             GROUP BY kek_id ORDER BY kek_id";
        with_pool!(self.pool, pool => {
            let rows = sqlx::query(SELECT).fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    let users: i64 = row.column("users")?;
                    let users =
                        u64::try_from(users).map_err(|_| StoreError::Corrupt("user count"))?;
                    Ok((row.column("kek_id")?, users))
                })
                .collect()
        })
    }
}

fn data_key_row(row: &impl StoreRow) -> Result<DataKeyRow, StoreError> {
    Ok(DataKeyRow {
        user: UserId::new(row.column::<String>("user_id")?)
            .map_err(|_| StoreError::Corrupt("user id"))?,
        kek_id: row.column("kek_id")?,
        wrapped: WrappedKey::from_stored(row.column("wrapped_data_key")?),
    })
}

fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}
