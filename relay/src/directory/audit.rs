//! The audit log: append-only and hash-chained.
//!
//! Each record's `hash` is SHA-256 over the previous record's hash and this
//! record's fields, so deleting or editing any record breaks every later
//! link; [`Directory::verify_audit_chain`] checks the whole chain. Records
//! are only ever inserted; nothing here updates or deletes. Appends take
//! the database's write lock first (`BEGIN IMMEDIATE`), so the chain stays
//! linear across connections and processes sharing the file.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::notifications::insert_notification;
use super::{DirResult, Directory, DirectoryError};
use crate::clock::now_ms;

/// The `prev_hash` of the first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Which records to read; every field that is set must match.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Who did it (an email, an agent id, `system`).
    pub actor: Option<String>,
    /// Whom it concerns (a user's email, an agent id…).
    pub subject: Option<String>,
    /// An action (`obr.started`) or a family of them (`obr`).
    pub action: Option<String>,
    /// The relying party a record names (`detail.rp_id`).
    pub rp_id: Option<String>,
    /// From this time on (Unix ms, inclusive).
    pub since_ms: Option<i64>,
    /// Before this time (Unix ms).
    pub until_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    pub seq: i64,
    pub at_ms: i64,
    /// Who did it: a person's email, an agent id, or `system`.
    pub actor: String,
    /// What happened, e.g. `obr.started`.
    pub action: String,
    /// Whom or what it concerns.
    pub subject: String,
    /// JSON with the particulars.
    pub detail: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

impl Directory {
    /// Append one record to the chain and return it.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        subject: &str,
        detail: serde_json::Value,
    ) -> DirResult<AuditRecord> {
        let (actor, action, subject) = (actor.to_owned(), action.to_owned(), subject.to_owned());
        let dir = self.clone();
        uninterrupted(async move {
            let _guard = dir.audit_lock().lock().await;
            // BEGIN IMMEDIATE takes SQLite's write lock before the chain head
            // is read. A deferred transaction would read, then fail to
            // upgrade to a writer ("database is locked", no busy wait)
            // whenever any other connection — a notification insert, another
            // relay process on the same file — wrote in between.
            let mut tx = dir.pool().begin_with("BEGIN IMMEDIATE").await?;
            let record = append(&mut tx, &actor, &action, &subject, detail).await?;
            tx.commit().await?;
            dir.appended(&record);
            Ok(record)
        })
        .await
    }

    /// Record an on-behalf registration once: its audit record and the
    /// user's notification, in one transaction with the marker that says
    /// it is recorded. `Ok(false)` if it already was (the live path and
    /// the outbox sweep may both try; exactly one writes).
    pub async fn record_registration(&self, record: &RegistrationRecord) -> DirResult<bool> {
        let (dir, record) = (self.clone(), record.clone());
        uninterrupted(async move { dir.record_registration_now(&record).await }).await
    }

    async fn record_registration_now(&self, record: &RegistrationRecord) -> DirResult<bool> {
        let _guard = self.audit_lock().lock().await;
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let fresh = sqlx::query(
            "INSERT INTO recorded_registrations (credential_id, recorded_at_ms) VALUES ($1, $2) \
             ON CONFLICT (credential_id) DO NOTHING",
        )
        .bind(&record.credential_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            return Ok(false);
        }
        let audited = append(
            &mut tx,
            &record.admin_email,
            "obr.registration",
            &record.user_email,
            record.audit_detail.clone(),
        )
        .await?;
        insert_notification(
            &mut tx,
            &record.user_id,
            "obr.registration",
            &record.message,
            &record.notification_detail,
        )
        .await?;
        tx.commit().await?;
        self.appended(&audited);
        self.inbox_changed(&record.user_id);
        Ok(true)
    }

    /// The chain's head: the last record's `seq` and hash.
    pub async fn audit_head(&self) -> DirResult<Option<(i64, String)>> {
        Ok(
            sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// The stored hash of record `seq`, if it exists.
    pub async fn audit_hash(&self, seq: i64) -> DirResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = $1")
                .bind(seq)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Records with `seq > after`, oldest first, at most `limit`.
    pub async fn audit_records(&self, after: i64, limit: i64) -> DirResult<Vec<AuditRecord>> {
        self.audit_search(&AuditFilter::default(), after, limit)
            .await
    }

    /// Records `filter` selects with `seq > after`, oldest first, at most
    /// `limit`.
    pub async fn audit_search(
        &self,
        filter: &AuditFilter,
        after: i64,
        limit: i64,
    ) -> DirResult<Vec<AuditRecord>> {
        // Every condition is bound, never spliced: `?n IS NULL OR …`.
        let rows = sqlx::query(
            "SELECT seq, at_ms, actor, action, subject, detail, prev_hash, hash FROM audit_log \
             WHERE seq > $1 \
             AND ($3 IS NULL OR actor = $3) \
             AND ($4 IS NULL OR subject = $4) \
             AND ($5 IS NULL OR action = $5 OR action LIKE $5 || '.%') \
             AND ($6 IS NULL OR json_extract(detail, '$.rp_id') = $6) \
             AND ($7 IS NULL OR at_ms >= $7) \
             AND ($8 IS NULL OR at_ms < $8) \
             ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .bind(&filter.actor)
        .bind(&filter.subject)
        .bind(&filter.action)
        .bind(&filter.rp_id)
        .bind(filter.since_ms)
        .bind(filter.until_ms)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(AuditRecord {
                    seq: r.try_get("seq")?,
                    at_ms: r.try_get("at_ms")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    subject: r.try_get("subject")?,
                    detail: serde_json::from_str(&detail)
                        .unwrap_or(serde_json::Value::String(detail)),
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                })
            })
            .collect()
    }

    /// Recompute the chain; returns the first `seq` whose link is broken.
    pub async fn verify_audit_chain(&self) -> DirResult<Option<i64>> {
        let rows = sqlx::query(
            "SELECT seq, at_ms, actor, action, subject, detail, prev_hash, hash FROM audit_log ORDER BY seq",
        )
        .fetch_all(self.pool())
        .await?;
        let mut prev = GENESIS.to_owned();
        for r in rows {
            let seq: i64 = r.try_get("seq")?;
            let stored_prev: String = r.try_get("prev_hash")?;
            let expected = chain_hash(
                &prev,
                seq,
                r.try_get("at_ms")?,
                &r.try_get::<String, _>("actor")?,
                &r.try_get::<String, _>("action")?,
                &r.try_get::<String, _>("subject")?,
                &r.try_get::<String, _>("detail")?,
            );
            let hash: String = r.try_get("hash")?;
            if stored_prev != prev || hash != expected {
                return Ok(Some(seq));
            }
            prev = hash;
        }
        Ok(None)
    }
}

/// Run a write transaction to its end even if the caller stops waiting (a
/// browser's CANCEL drops the request's future): a transaction dropped
/// half-way can leave its pooled connection inside `BEGIN`, and every later
/// `BEGIN` on that connection fails.
async fn uninterrupted<T: Send + 'static>(
    work: impl std::future::Future<Output = DirResult<T>> + Send + 'static,
) -> DirResult<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| DirectoryError::Corrupt(format!("audit write did not finish: {e}")))?
}

/// What recording one on-behalf registration writes.
#[derive(Clone, Debug)]
pub struct RegistrationRecord {
    /// base64url; the key of exactly-once.
    pub credential_id: String,
    pub admin_email: String,
    pub user_id: String,
    pub user_email: String,
    pub audit_detail: serde_json::Value,
    pub message: String,
    pub notification_detail: serde_json::Value,
}

/// Extend the chain by one record inside `tx` (which holds the write lock).
async fn append(
    tx: &mut sqlx::SqliteConnection,
    actor: &str,
    action: &str,
    subject: &str,
    detail: serde_json::Value,
) -> DirResult<AuditRecord> {
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    let (seq, prev_hash) = match head {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_owned()),
    };
    let at_ms = now_ms();
    let detail_text = detail.to_string();
    let hash = chain_hash(&prev_hash, seq, at_ms, actor, action, subject, &detail_text);
    sqlx::query(
        "INSERT INTO audit_log (seq, at_ms, actor, action, subject, detail, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(seq)
    .bind(at_ms)
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(&detail_text)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    Ok(AuditRecord {
        seq,
        at_ms,
        actor: actor.to_owned(),
        action: action.to_owned(),
        subject: subject.to_owned(),
        detail,
        prev_hash,
        hash,
    })
}

impl Directory {
    /// After `record` committed: log it, and wake the audit webhook.
    fn appended(&self, record: &AuditRecord) {
        tracing::info!(target: "obr::audit", seq = record.seq, actor = %record.actor,
            action = %record.action, subject = %record.subject, detail = %record.detail);
        self.audit_appended.notify_one();
    }
}

/// The chain's hash of one record: public, so anyone can check the chain —
/// and, without the signed checkpoints (`super::anchor`), recompute it.
pub fn chain_hash(
    prev: &str,
    seq: i64,
    at_ms: i64,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &str,
) -> String {
    let mut h = Sha256::new();
    for field in [
        prev.as_bytes(),
        &seq.to_be_bytes(),
        &at_ms.to_be_bytes(),
        actor.as_bytes(),
        action.as_bytes(),
        subject.as_bytes(),
        detail.as_bytes(),
    ] {
        // Length-prefix every field so that no two records hash alike by
        // shifting bytes between fields.
        h.update((field.len() as u64).to_be_bytes());
        h.update(field);
    }
    hex(&h.finalize())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        // invariant: writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
        s
    })
}
