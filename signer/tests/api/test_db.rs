//! Throw-away databases for the signer's tests, on either backend: a SQLite
//! file in a fresh temporary directory, or a fresh PostgreSQL database
//! (`obr_test_<random>`) created on the server named by
//! `OBR_TEST_POSTGRES_URL` (default: the machine's own, as user
//! `postgres`). Both are removed when the [`TempDb`] is dropped, so no test
//! depends on what an earlier run left behind.
//!
//! Shared by the store's unit tests (`src/store/tests.rs`, through
//! `#[path]`) and the public-API tests; each uses part of it.
#![allow(dead_code, reason = "shared by two test targets, each using a part")]

use std::path::PathBuf;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

/// Environment variable naming a PostgreSQL server (any database on it) where
/// the tests may `CREATE DATABASE`.
pub const POSTGRES_URL_ENV: &str = "OBR_TEST_POSTGRES_URL";
/// The machine's own server, trust authentication, as Debian's
/// `postgresql` package sets it up for the `postgres` user.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// The SQLite database's file name in the test's directory.
const SQLITE_FILE: &str = "signer.db";
/// Bound on connecting to the server to create or drop a test database.
const ADMIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The two store backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that exists for one test, and a private directory beside it
/// (the SQLite file's; on PostgreSQL, for the test's other files).
pub struct TempDb {
    url: String,
    dir: PathBuf,
    /// The PostgreSQL database to drop: `(admin URL, name)`.
    postgres: Option<(String, String)>,
}

impl TempDb {
    /// A SQLite file in a new temporary directory.
    pub fn new() -> Self {
        let dir = private_dir();
        let url = format!("sqlite://{}?mode=rwc", dir.join(SQLITE_FILE).display());
        Self {
            url,
            dir,
            postgres: None,
        }
    }

    /// A new, empty PostgreSQL database. Panics, saying what to install,
    /// when no server is reachable.
    pub async fn postgres() -> Self {
        let admin_url =
            std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let name = format!("obr_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin_connection(&admin_url).await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE on {admin_url}: {e}"));
        let _ = admin.close().await;
        Self {
            url: with_database(&admin_url, &name),
            dir: private_dir(),
            postgres: Some((admin_url, name)),
        }
    }

    /// A new database of `backend`.
    pub async fn of(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => Self::new(),
            Backend::Postgres => Self::postgres().await,
        }
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The SQLite file; on PostgreSQL the same path in the private
    /// directory, which tests use to place files beside the database.
    pub fn file(&self) -> PathBuf {
        self.dir.join(SQLITE_FILE)
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let Some((admin_url, name)) = &self.postgres else {
            return;
        };
        // Drop may run inside a runtime that must not block: drop the
        // database from a thread with its own runtime. FORCE ends the
        // connections the test's pools still hold.
        let (admin_url, database) = (admin_url.clone(), name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut admin = admin_connection(&admin_url).await;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await
                    .map(|_| ())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {name}: {dropped:?}");
        }
    }
}

fn private_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("obr-signer-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

async fn admin_connection(admin_url: &str) -> PgConnection {
    match tokio::time::timeout(ADMIN_CONNECT_TIMEOUT, PgConnection::connect(admin_url)).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => panic!("{}", unreachable_message(admin_url, &e.to_string())),
        Err(_) => panic!("{}", unreachable_message(admin_url, "timed out")),
    }
}

fn unreachable_message(admin_url: &str, error: &str) -> String {
    format!(
        "the PostgreSQL half of the signer's store tests needs a server: connecting to \
         {admin_url} failed ({error}). Install and start one (Debian: `apt-get install -y \
         postgresql && pg_ctlcluster --skip-systemctl-redirect <version> main start`, with \
         `trust` authentication for local TCP in pg_hba.conf, or a password in the URL), or \
         set {POSTGRES_URL_ENV} to a server where the user may CREATE DATABASE."
    )
}

/// `url` with its database (the path) replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    format!("{}/{name}{query}", &base[..authority_end])
}
