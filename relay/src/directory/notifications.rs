//! Each user's notification inbox: durable, so a phone that was offline
//! sees what happened on its key when it comes back. Written whenever an
//! admin acts on the user's key; read by the user's device, and signalled
//! as it is written so a connected phone hears of it at once.

use serde::Serialize;
use sqlx::Row;

use super::{DirResult, Directory};
use crate::clock::now_ms;

/// Notifications one read returns.
pub const NOTIFICATION_PAGE: i64 = 200;

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Notification {
    pub id: i64,
    pub at_ms: i64,
    /// Machine-readable kind, e.g. `obr.registration`.
    pub kind: String,
    /// What the phone shows.
    pub message: String,
    pub detail: serde_json::Value,
}

impl Directory {
    pub async fn notify(
        &self,
        person_id: &str,
        kind: &str,
        message: &str,
        detail: serde_json::Value,
    ) -> DirResult<Notification> {
        let mut conn = self.pool().acquire().await?;
        let notification =
            insert_notification(&mut conn, person_id, kind, message, &detail).await?;
        self.inbox_changed(person_id);
        Ok(notification)
    }

    /// `person_id`'s inbox got a notification that is now committed.
    pub(super) fn inbox_changed(&self, person_id: &str) {
        // Nobody listening is not an error: no phone is connected here.
        let _ = self.inbox.send(person_id.to_owned());
    }

    /// The people whose inbox gets a notification from now on, in this
    /// process (the relay forwards them to every pod).
    pub fn inbox_changes(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.inbox.subscribe()
    }

    /// The person's notifications with `id > after`, oldest first, at most
    /// [`NOTIFICATION_PAGE`] (ask again from the last one for more).
    pub async fn notifications(&self, person_id: &str, after: i64) -> DirResult<Vec<Notification>> {
        let rows = sqlx::query(
            "SELECT id, at_ms, kind, message, detail FROM notifications WHERE person_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(person_id)
        .bind(after)
        .bind(NOTIFICATION_PAGE)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(Notification {
                    id: r.try_get("id")?,
                    at_ms: r.try_get("at_ms")?,
                    kind: r.try_get("kind")?,
                    message: r.try_get("message")?,
                    detail: serde_json::from_str(&detail)
                        .unwrap_or(serde_json::Value::String(detail)),
                })
            })
            .collect()
    }
}

/// Put one notification in `person_id`'s inbox, on `conn` (a pooled
/// connection, or a transaction that records more with it).
pub(super) async fn insert_notification(
    conn: &mut sqlx::SqliteConnection,
    person_id: &str,
    kind: &str,
    message: &str,
    detail: &serde_json::Value,
) -> DirResult<Notification> {
    let at_ms = now_ms();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO notifications (person_id, at_ms, kind, message, detail) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(person_id)
    .bind(at_ms)
    .bind(kind)
    .bind(message)
    .bind(detail.to_string())
    .fetch_one(&mut *conn)
    .await?;
    Ok(Notification {
        id,
        at_ms,
        kind: kind.to_owned(),
        message: message.to_owned(),
        detail: detail.clone(),
    })
}
