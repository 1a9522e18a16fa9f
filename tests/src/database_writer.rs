//! What an attacker who can write the relay's SQLite file does (a restored
//! backup, a database admin): run SQL on it beside the running relay,
//! without the cluster key.

use sqlx::Connection as _;

/// `sql` with `values` bound, run on the SQLite file `database`.
pub fn write_db(database: &std::path::Path, sql: &str, values: &[&str]) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let url = format!("sqlite://{}", database.display());
            let mut db = sqlx::SqliteConnection::connect(&url).await?;
            let mut query = sqlx::query(sql);
            for value in values {
                query = query.bind(*value);
            }
            query.execute(&mut db).await?;
            db.close().await?;
            anyhow::Ok(())
        })
}

/// The first column of the first row `sql` selects on the SQLite file
/// `database`, as an integer (what such a writer can read, too).
pub fn read_i64(database: &std::path::Path, sql: &str) -> anyhow::Result<Option<i64>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let url = format!("sqlite://{}", database.display());
            let mut db = sqlx::SqliteConnection::connect(&url).await?;
            let value: Option<i64> = sqlx::query_scalar(sql).fetch_optional(&mut db).await?;
            db.close().await?;
            anyhow::Ok(value)
        })
}
