//! [`TempPostgres`]: a fresh PostgreSQL database for one test, on the
//! server named by `OBR_TEST_POSTGRES_URL` (default: the machine's own, as
//! `postgres`, which `scripts/test` sets up), dropped afterwards. Tests never
//! reuse what an earlier run left there.

use anyhow::Context;
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;

pub const POSTGRES_URL_ENV: &str = "OBR_TEST_POSTGRES_URL";
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct TempPostgres {
    admin_url: String,
    name: String,
    pub url: String,
}

impl TempPostgres {
    /// Create `obr_test_<random>`; an error names the server it tried.
    pub fn create() -> anyhow::Result<Self> {
        let admin_url =
            std::env::var(POSTGRES_URL_ENV).unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let name = format!("obr_test_{}", uuid::Uuid::new_v4().simple());
        run(async {
            let mut admin = PgConnection::connect(&admin_url).await.with_context(|| {
                format!("cannot reach PostgreSQL at {admin_url} (set {POSTGRES_URL_ENV}; scripts/test starts one)")
            })?;
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .await?;
            admin.close().await?;
            Ok(())
        })?;
        let url = match admin_url.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => format!("{admin_url}/{name}"),
        };
        Ok(Self {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ = run(async move {
            let mut admin = PgConnection::connect(&admin_url).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await?;
            Ok(())
        });
    }
}

fn run(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}
