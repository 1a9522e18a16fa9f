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
    /// `until_ms`, if nobody else holds it past `now_ms`. Returns the last
    /// delivered `seq` when `holder` holds the lease.
    pub async fn lease_webhook(
        &self,
        target: &str,
        holder: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> DirResult<Option<i64>> {
        sqlx::query("INSERT INTO audit_webhook_cursor (target) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(target)
            .execute(self.pool())
            .await?;
        Ok(sqlx::query_scalar(
            "UPDATE audit_webhook_cursor SET holder = $2, lease_until_ms = $4 \
             WHERE target = $1 AND (holder IS NULL OR holder = $2 OR lease_until_ms < $3) \
             RETURNING delivered_seq",
        )
        .bind(target)
        .bind(holder)
        .bind(now_ms)
        .bind(until_ms)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Record that `target` accepted every record up to `to`, if `holder`
    /// still holds the lease and the cursor is still at `from`.
    pub async fn advance_webhook(
        &self,
        target: &str,
        holder: &str,
        from: i64,
        to: i64,
    ) -> DirResult<bool> {
        let moved = sqlx::query(
            "UPDATE audit_webhook_cursor SET delivered_seq = $4 \
             WHERE target = $1 AND holder = $2 AND delivered_seq = $3",
        )
        .bind(target)
        .bind(holder)
        .bind(from)
        .bind(to)
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

    /// A receiver's cursor: the last `seq` it accepted (0: none yet).
    pub async fn webhook_delivered(&self, target: &str) -> DirResult<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT delivered_seq FROM audit_webhook_cursor WHERE target = $1")
                .bind(target)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Resolves when a record may have been appended since the last call
    /// (a permit is kept if nobody waits).
    pub async fn audit_appended(&self) {
        self.audit_appended.notified().await;
    }
}
