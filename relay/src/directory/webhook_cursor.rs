//! Where the audit webhook stands: per receiver, the last record it
//! accepted, and which relay holds the lease to deliver the next ones. The
//! lease makes one relay of a cluster the deliverer, so batches go out in
//! order; the cursor moves only from the value its holder read, so a relay
//! that lost its lease mid-delivery cannot move it (the batch is delivered
//! again by the next holder: at least once, never skipped by us). This
//! module keeps the cursor; it does not post anything
//! ([`crate::audit_webhook`] does).

use super::{DirResult, Directory};

impl Directory {
    /// Take or renew the lease on `target`'s deliveries for `holder` until
    /// `until_ms`, unless another holder's lease runs past `now_ms` (a lease
    /// reaching beyond `until_ms` is no honest relay's: it is taken over).
    /// Makes the receiver's cursor the first time. True when `holder` holds
    /// the lease.
    pub async fn lease_webhook(
        &self,
        target: &str,
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> DirResult<bool> {
        let held: Option<i64> = sqlx::query_scalar(
            "INSERT INTO audit_webhook_cursor (target, holder, lease_until_ms) VALUES ($1, $2, $4) \
             ON CONFLICT (target) DO UPDATE SET holder = $2, lease_until_ms = $4 \
             WHERE audit_webhook_cursor.holder IS NULL OR audit_webhook_cursor.holder = $2 \
             OR audit_webhook_cursor.lease_until_ms < $3 \
             OR audit_webhook_cursor.lease_until_ms > $4 \
             RETURNING delivered_seq",
        )
        .bind(target)
        .bind(holder)
        .bind(now_ms)
        .bind(until_ms)
        .fetch_optional(self.pool())
        .await?;
        Ok(held.is_some())
    }

    /// Record that `target` accepted every record up to `to`, if `holder`
    /// still holds an unexpired lease and the cursor is still at `from`.
    pub async fn advance_webhook(
        &self,
        target: &str,
        holder: &str,
        from: i64,
        to: i64,
        now_ms: i64,
    ) -> DirResult<bool> {
        let moved = sqlx::query(
            "UPDATE audit_webhook_cursor SET delivered_seq = $4 \
             WHERE target = $1 AND holder = $2 AND delivered_seq = $3 AND lease_until_ms > $5",
        )
        .bind(target)
        .bind(holder)
        .bind(from)
        .bind(to)
        .bind(now_ms)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(moved == 1)
    }

    /// Give the lease up (a relay that stops), so another takes over at once.
    pub async fn release_webhook(&self, target: &str, holder: &str) -> DirResult<()> {
        sqlx::query(
            "UPDATE audit_webhook_cursor SET holder = NULL, lease_until_ms = 0 \
             WHERE target = $1 AND holder = $2",
        )
        .bind(target)
        .bind(holder)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The last `seq` the receiver accepted, if `holder` holds its lease.
    pub async fn webhook_delivered(&self, target: &str, holder: &str) -> DirResult<Option<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT delivered_seq FROM audit_webhook_cursor WHERE target = $1 AND holder = $2",
        )
        .bind(target)
        .bind(holder)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Resolves when a record may have been appended since the last call
    /// (a permit is kept if nobody waits).
    pub async fn audit_appended(&self) {
        self.audit_appended.notified().await;
    }
}
