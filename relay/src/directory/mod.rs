//! The directory: the relay's durable state (SQLite file or, later,
//! PostgreSQL), behind typed methods.
//!
//! Owns people (admins and users) with their key status and groups,
//! admins' sealed grants ([`grants`]) and second factors
//! ([`second_factor`]), invitations, device tokens, the audit log ([`audit`], anchored by signed checkpoints
//! outside the database: [`anchor`]) and each user's notification
//! inbox ([`notifications`]). It never holds key material or credentials:
//! those live in the signer's own database.

pub mod anchor;
pub mod audit;
pub mod grants;
pub mod notifications;
pub mod second_factor;
pub mod webhook_cursor;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tokio::sync::Mutex;

use crate::clock::now_ms;

/// Inbox signals buffered per listener before a slow one starts losing
/// them (a lost one only delays a phone until its next periodic read).
const INBOX_SIGNALS: usize = 1024;
/// How long SQLite waits on a locked database before failing a statement.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_DB_CONNECTIONS: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

pub type DirResult<T> = Result<T, DirectoryError>;

/// A user's security key, as the admin panel sees it (seed: "User security
/// key status must be active").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    Invited,
    Active,
    Suspended,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Invited => "invited",
            KeyStatus::Active => "active",
            KeyStatus::Suspended => "suspended",
        }
    }
}

impl FromStr for KeyStatus {
    type Err = DirectoryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "invited" => Ok(KeyStatus::Invited),
            "active" => Ok(KeyStatus::Active),
            "suspended" => Ok(KeyStatus::Suspended),
            other => Err(DirectoryError::Corrupt(format!("key status {other:?}"))),
        }
    }
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Person {
    pub id: String,
    pub email: String,
    pub display_name: String,
    /// An admin: nobody may act on their key. (Their power is their
    /// verified grant, [`grants::Grants::admin`], not this flag.)
    pub is_admin: bool,
    pub key_status: KeyStatus,
    pub created_at_ms: i64,
    /// The groups an admin's scope may name (sorted).
    pub groups: Vec<String>,
}

/// The columns [`person_from_row`] reads: anyone with a grant, even one
/// that does not verify, counts as an admin here (protected, not empowered).
const PERSON_COLUMNS: &str = "id, email, display_name, \
    (is_admin = 1 OR grant_sealed IS NOT NULL) AS is_admin, key_status, created_at_ms, \
    (SELECT group_concat(group_name, ',') FROM person_groups g WHERE g.person_id = people.id) \
    AS groups";

#[derive(Clone)]
pub struct Directory {
    pool: SqlitePool,
    /// Serialises audit appends in this process so the hash chain stays
    /// linear (the chain head is read and extended in one transaction).
    audit_lock: std::sync::Arc<Mutex<()>>,
    /// Whose inbox just got a notification (committed), for the user
    /// app's live feed ([`Directory::inbox_changes`]).
    inbox: tokio::sync::broadcast::Sender<String>,
    /// Woken after each audit append commits, for the audit webhook.
    audit_appended: std::sync::Arc<tokio::sync::Notify>,
}

impl Directory {
    /// Open (creating if missing) the SQLite database at `path` and migrate it.
    pub async fn open(path: &Path) -> DirResult<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_DB_CONNECTIONS)
            .connect_with(options)
            .await?;
        Migrator::new(EmbeddedMigrations).await?.run(&pool).await?;
        Ok(Self {
            pool,
            audit_lock: Default::default(),
            inbox: tokio::sync::broadcast::channel(INBOX_SIGNALS).0,
            audit_appended: Default::default(),
        })
    }

    /// Whether the database answers (readiness).
    pub async fn ping(&self) -> DirResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn is_empty(&self) -> DirResult<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM people")
            .fetch_one(&self.pool)
            .await?;
        Ok(n == 0)
    }

    /// Create a person. Admins get a password hash and an active key (they
    /// enrolled themselves); users start `invited`.
    pub async fn create_person(
        &self,
        email: &str,
        display_name: &str,
        is_admin: bool,
        password_hash: Option<&str>,
        key_status: KeyStatus,
    ) -> DirResult<Person> {
        let person = Person {
            id: uuid::Uuid::new_v4().to_string(),
            email: email.to_owned(),
            display_name: display_name.to_owned(),
            is_admin,
            key_status,
            created_at_ms: now_ms(),
            groups: Vec::new(),
        };
        self.insert_person(&person, password_hash, None).await?;
        Ok(person)
    }

    /// Write `person`'s row (an admin's with their sealed grant).
    pub(crate) async fn insert_person(
        &self,
        person: &Person,
        password_hash: Option<&str>,
        grant_sealed: Option<&str>,
    ) -> DirResult<()> {
        sqlx::query(
            "INSERT INTO people (id, email, display_name, is_admin, password_hash, key_status, \
             created_at_ms, grant_sealed) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&person.id)
        .bind(&person.email)
        .bind(&person.display_name)
        .bind(i64::from(person.is_admin))
        .bind(password_hash)
        .bind(person.key_status.as_str())
        .bind(person.created_at_ms)
        .bind(grant_sealed)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn person(&self, id: &str) -> DirResult<Option<Person>> {
        let row = sqlx::query(&format!(
            "SELECT {PERSON_COLUMNS} FROM people WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| person_from_row(&r)).transpose()
    }

    pub async fn people(&self) -> DirResult<Vec<Person>> {
        let rows = sqlx::query(&format!(
            "SELECT {PERSON_COLUMNS} FROM people ORDER BY email"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(person_from_row).collect()
    }

    /// The admin with this email and their password hash, for login.
    pub async fn admin_credentials(&self, email: &str) -> DirResult<Option<(Person, String)>> {
        let row = sqlx::query(&format!(
            "SELECT {PERSON_COLUMNS}, password_hash FROM people \
             WHERE email = $1 AND is_admin = 1 AND password_hash IS NOT NULL"
        ))
        .bind(email)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Some((person_from_row(&r)?, r.try_get("password_hash")?))),
            None => Ok(None),
        }
    }

    /// A new invitation for `person_id`, in place of any they have not
    /// accepted (whose links stop working).
    pub async fn create_invitation(
        &self,
        person_id: &str,
        token_hash: &str,
        ttl: Duration,
    ) -> DirResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM invitations WHERE person_id = $1 AND accepted_at_ms IS NULL")
            .bind(person_id)
            .execute(&mut *tx)
            .await?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO invitations (token_hash, person_id, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(token_hash)
        .bind(person_id)
        .bind(now)
        .bind(now + duration_ms(ttl))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Accept an invitation: mark it used, make the key `active`, and issue
    /// a device token, all in one transaction. `None` if the invitation is
    /// unknown, expired or already used.
    pub async fn accept_invitation(
        &self,
        invitation_hash: &str,
        device_token_hash: &str,
        device_token_ttl: Duration,
    ) -> DirResult<Option<Person>> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let person_id: Option<String> = sqlx::query_scalar(
            "UPDATE invitations SET accepted_at_ms = $1 \
             WHERE token_hash = $2 AND accepted_at_ms IS NULL AND expires_at_ms > $1 RETURNING person_id",
        )
        .bind(now)
        .bind(invitation_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(person_id) = person_id else {
            return Ok(None);
        };
        sqlx::query(
            "UPDATE people SET key_status = 'active' WHERE id = $1 AND key_status = 'invited'",
        )
        .bind(&person_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO device_tokens (token_hash, person_id, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(device_token_hash)
        .bind(&person_id)
        .bind(now)
        .bind(now + duration_ms(device_token_ttl))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.person(&person_id).await
    }

    /// Move `person_id`'s key from `from` to `to` (suspend, resume).
    /// `false` if it was not in `from`.
    pub async fn change_key_status(
        &self,
        person_id: &str,
        from: KeyStatus,
        to: KeyStatus,
    ) -> DirResult<bool> {
        let changed =
            sqlx::query("UPDATE people SET key_status = $1 WHERE id = $2 AND key_status = $3")
                .bind(to.as_str())
                .bind(person_id)
                .bind(from.as_str())
                .execute(&self.pool)
                .await?;
        Ok(changed.rows_affected() == 1)
    }

    /// The person a device (user app) token belongs to, if it is valid.
    pub async fn device_token_owner(&self, token_hash: &str) -> DirResult<Option<Person>> {
        let person_id: Option<String> = sqlx::query_scalar(
            "SELECT person_id FROM device_tokens WHERE token_hash = $1 AND expires_at_ms > $2",
        )
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        match person_id {
            Some(id) => self.person(&id).await,
            None => Ok(None),
        }
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) fn audit_lock(&self) -> &Mutex<()> {
        &self.audit_lock
    }
}

fn person_from_row(r: &sqlx::sqlite::SqliteRow) -> DirResult<Person> {
    Ok(Person {
        id: r.try_get("id")?,
        email: r.try_get("email")?,
        display_name: r.try_get("display_name")?,
        is_admin: r.try_get::<i64, _>("is_admin")? != 0,
        key_status: r.try_get::<String, _>("key_status")?.parse()?,
        created_at_ms: r.try_get("created_at_ms")?,
        groups: {
            let joined: Option<String> = r.try_get("groups")?;
            let mut groups: Vec<String> = joined
                .iter()
                .flat_map(|g| g.split(','))
                .map(str::to_owned)
                .collect();
            groups.sort();
            groups
        },
    })
}

/// The migrations, compiled into the binary (sqlx's `migrate!` macro would
/// pull in sqlx-macros and its compile time for this one job).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "directory",
        include_str!("../../migrations/0001_directory.sql"),
    ),
    (
        2,
        "recorded_registrations",
        include_str!("../../migrations/0002_recorded_registrations.sql"),
    ),
    (
        3,
        "admin_grants",
        include_str!("../../migrations/0003_admin_grants.sql"),
    ),
    (
        4,
        "admin_second_factor",
        include_str!("../../migrations/0004_admin_second_factor.sql"),
    ),
    (
        5,
        "audit_webhook",
        include_str!("../../migrations/0005_audit_webhook.sql"),
    ),
];

#[derive(Debug)]
struct EmbeddedMigrations;

impl MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, name, sql)| {
                    Migration::new(
                        *version,
                        (*name).into(),
                        MigrationType::Simple,
                        (*sql).into(),
                        false,
                    )
                })
                .collect())
        })
    }
}

pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_migration_file_is_compiled_in() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations folder")
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = super::MIGRATIONS
            .iter()
            .map(|(version, name, _)| format!("{version:04}_{name}.sql"))
            .collect();
        assert_eq!(listed, files);
    }
}
