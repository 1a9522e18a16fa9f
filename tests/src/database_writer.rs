//! What an attacker who can write the relay's SQLite file does (a restored
//! backup, a database admin): run SQL on it beside the running relay,
//! without the cluster key.

use std::path::Path;

use sqlx::Connection as _;

/// `sql` with `values` bound, run on the SQLite file `database`.
pub fn write_db(database: &Path, sql: &str, values: &[&str]) -> anyhow::Result<()> {
    on_db(database, |mut db| async move {
        let mut query = sqlx::query(sql);
        for value in values {
            query = query.bind(*value);
        }
        query.execute(&mut db).await?;
        Ok(((), db))
    })
}

/// The first column of the first row `sql` selects on the SQLite file
/// `database`, as an integer (what such a writer can read, too).
pub fn read_i64(database: &Path, sql: &str) -> anyhow::Result<Option<i64>> {
    on_db(database, |mut db| async move {
        let value: Option<i64> = sqlx::query_scalar(sql).fetch_optional(&mut db).await?;
        Ok((value, db))
    })
}

/// Open `database`, run `work` on the connection, close it.
fn on_db<T, Work, Done>(database: &Path, work: Work) -> anyhow::Result<T>
where
    Work: FnOnce(sqlx::SqliteConnection) -> Done,
    Done: Future<Output = anyhow::Result<(T, sqlx::SqliteConnection)>>,
{
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let url = format!("sqlite://{}", database.display());
            let db = sqlx::SqliteConnection::connect(&url).await?;
            let (value, db) = work(db).await?;
            db.close().await?;
            Ok(value)
        })
}
