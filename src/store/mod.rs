//! Storage (sqlx). One set of queries runs on SQLite (the embedded default, a file in the data
//! directory) and on Postgres (`--database-url postgres://...`) through `sqlx::Any`: bound
//! parameters only, `$1` placeholders, portable types (TEXT, BIGINT). Each backend has its own
//! migrations directory (`migrations/sqlite`, `migrations/postgres`), applied at start.

use std::path::Path;
use std::str::FromStr;

pub mod call_log;

use serde::Serialize;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Row, Transaction};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {dir}: {reason}")]
    DataDir { dir: String, reason: String },
    #[error("database URL must start with sqlite:// or postgres:// (got `{0}`)")]
    Url(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One call detail record.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Cdr {
    pub call_id: String,
    pub caller: String,
    pub dialled: String,
    pub service: Option<String>,
    pub codec: Option<String>,
    /// Comma-separated DTMF methods seen (rfc4733, info, inband).
    pub dtmf_methods: String,
    pub started_at: String,
    pub answered_at: Option<String>,
    pub ended_at: String,
    pub end_reason: String,
    pub digits: Option<String>,
}

/// The database: a pool and which backend it talks to.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

/// The data directory holds PIN hashes, balances and callers' numbers: it is the service
/// user's alone (0700, its files 0600). What was open to others is closed, and said (the
/// returned lines). Files made later are private too: `serve` runs with umask 077.
#[cfg(unix)]
pub fn make_private(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut fixed = vec![];
    let mut close = |path: &Path, private: u32| {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0
            && std::fs::set_permissions(path, std::fs::Permissions::from_mode(private)).is_ok()
        {
            fixed.push(format!(
                "{} was open to others (mode {mode:o}): now {private:o}",
                path.display()
            ));
        }
    };
    close(dir, 0o700);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            close(&entry.path(), 0o600);
        }
    }
    fixed
}

#[cfg(not(unix))]
pub fn make_private(_dir: &Path) -> Vec<String> {
    vec![]
}

/// The statement that stores one record.
fn insert_cdr_query(c: &Cdr) -> sqlx::query::Query<'_, Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO calls (call_id, caller, dialled, service, codec, dtmf_methods,
            started_at, answered_at, ended_at, end_reason, digits)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&c.call_id)
    .bind(&c.caller)
    .bind(&c.dialled)
    .bind(&c.service)
    .bind(&c.codec)
    .bind(&c.dtmf_methods)
    .bind(&c.started_at)
    .bind(&c.answered_at)
    .bind(&c.ended_at)
    .bind(&c.end_reason)
    .bind(&c.digits)
}

/// Kept for call sites that predate the top-up core.
pub type Store = Db;

/// The longest a request waits for a database connection.
pub const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl Db {
    /// Opens (creating if needed) `<data_dir>/topup-ivr.db`.
    pub async fn open(data_dir: &Path) -> Result<Db, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::DataDir {
            dir: data_dir.display().to_string(),
            reason: e.to_string(),
        })?;
        for fixed in make_private(data_dir) {
            tracing::warn!("{fixed}");
        }
        let path = data_dir.join("topup-ivr.db");
        Db::connect(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Opens `sqlite://PATH` or `postgres://...` and applies migrations.
    ///
    /// The pool reconnects by itself: after a database restart the next request gets a new
    /// connection, so the service recovers without being restarted.
    pub async fn connect(url: &str) -> Result<Db, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::Url(
                url.split('@')
                    .next_back()
                    .unwrap_or("")
                    .chars()
                    .take(40)
                    .collect(),
            ));
        };
        let opts = AnyConnectOptions::from_str(url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            // When the database is down, a caller hears "we cannot complete your request now"
            // after this long, not after sqlx's default 30 s of silence.
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A transaction whose COMMIT and ROLLBACK both failed (SQLite with a full disk)
            // leaves its connection inside it; handed out again, every `begin` on it would fail
            // for good. Such a connection is closed instead, and a fresh one opened.
            .before_acquire(|conn, _| {
                Box::pin(async move {
                    use sqlx::Connection;
                    let stuck = conn.is_in_transaction();
                    if stuck {
                        tracing::warn!(
                            "a database connection was left inside a transaction; replaced"
                        );
                    }
                    Ok(!stuck)
                })
            })
            .connect_with(opts)
            .await?;
        if backend == Backend::Sqlite {
            // WAL lets readers run beside the one writer; the mode is stored in the file.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let db = Db { pool, backend };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => {
                sqlx::migrate!("./migrations/sqlite")
                    .run(&self.pool)
                    .await?
            }
            Backend::Postgres => {
                sqlx::migrate!("./migrations/postgres")
                    .run(&self.pool)
                    .await?
            }
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A write transaction. On SQLite it takes the write lock at once (BEGIN IMMEDIATE), so two
    /// writers queue on the busy timeout instead of failing when one upgrades its read lock.
    pub async fn begin(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Writes one record at once (calls log theirs through [`call_log::CallLog`]).
    pub async fn insert_cdr(&self, c: &Cdr) -> Result<(), StoreError> {
        insert_cdr_query(c).execute(&self.pool).await?;
        Ok(())
    }

    /// The most recent `limit` records, newest first.
    pub async fn recent_cdrs(&self, limit: i64) -> Result<Vec<Cdr>, StoreError> {
        let rows = sqlx::query(
            "SELECT call_id, caller, dialled, service, codec, dtmf_methods, started_at,
                answered_at, ended_at, end_reason, digits
             FROM calls ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Cdr {
                    call_id: r.try_get("call_id")?,
                    caller: r.try_get("caller")?,
                    dialled: r.try_get("dialled")?,
                    service: r.try_get("service")?,
                    codec: r.try_get("codec")?,
                    dtmf_methods: r.try_get("dtmf_methods")?,
                    started_at: r.try_get("started_at")?,
                    answered_at: r.try_get("answered_at")?,
                    ended_at: r.try_get("ended_at")?,
                    end_reason: r.try_get("end_reason")?,
                    digits: r.try_get("digits")?,
                })
            })
            .collect()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Databases for tests: SQLite in a temp dir, and Postgres when `TOPUP_IVR_TEST_DATABASE_URL`
/// names a server (scripts/test starts one). Each Postgres test gets its own schema-free
/// database so tests run in parallel.
pub mod testing {
    use super::*;

    /// The test suite runs on both backends; Postgres is required, not optional: a missing
    /// server fails the test with instructions rather than silently skipping half the suite.
    pub async fn backends() -> Vec<(Db, Option<tempfile_guard::Guard>)> {
        let mut out = vec![];
        let guard = tempfile_guard::Guard::new();
        out.push((Db::open(guard.path()).await.expect("sqlite"), Some(guard)));
        out.push((postgres().await, None));
        out
    }

    /// A fresh Postgres database for one test.
    pub async fn postgres() -> Db {
        Db::connect(&postgres_url().await)
            .await
            .expect("open test database")
    }

    /// The URL of a fresh, empty Postgres database for one test.
    pub async fn postgres_url() -> String {
        let base = std::env::var("TOPUP_IVR_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| {
            panic!(
                "TOPUP_IVR_TEST_DATABASE_URL is not set: the store tests also run on Postgres. \
                 Run scripts/test (it installs and starts Postgres), or point the variable at a \
                 server where the user may create databases, e.g. postgres://topup_test:topup_test@127.0.0.1/postgres"
            )
        });
        sqlx::any::install_default_drivers();
        let admin = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&base)
            .await
            .expect("connect to the test Postgres");
        let name = format!("t_{}_{:x}", std::process::id(), rand::random::<u64>());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        match base.rsplit_once('/') {
            Some((prefix, _)) => format!("{prefix}/{name}"),
            None => panic!("TOPUP_IVR_TEST_DATABASE_URL needs a /database part"),
        }
    }

    /// A temporary directory that lives as long as the test's database.
    pub mod tempfile_guard {
        pub struct Guard(std::path::PathBuf);
        impl Guard {
            pub fn new() -> Guard {
                let p =
                    std::env::temp_dir().join(format!("topup-ivr-db-{:x}", rand::random::<u64>()));
                std::fs::create_dir_all(&p).expect("temp dir");
                Guard(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Default for Guard {
            fn default() -> Self {
                Self::new()
            }
        }
        impl Drop for Guard {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cdrs_round_trip_newest_first() {
        for (store, _guard) in testing::backends().await {
            let mut c = Cdr {
                call_id: "a".into(),
                caller: "100".into(),
                dialled: "echo".into(),
                service: Some("echo".into()),
                codec: Some("PCMU".into()),
                dtmf_methods: "rfc4733".into(),
                started_at: "2026-01-01T00:00:00Z".into(),
                answered_at: None,
                ended_at: "2026-01-01T00:00:01Z".into(),
                end_reason: "caller-hangup".into(),
                digits: Some("12".into()),
            };
            store.insert_cdr(&c).await.unwrap();
            c.call_id = "b".into();
            c.digits = None;
            store.insert_cdr(&c).await.unwrap();
            let got = store.recent_cdrs(10).await.unwrap();
            assert_eq!(got.len(), 2, "{:?}", store.backend());
            assert_eq!(got[0], c);
            assert_eq!(got[1].digits.as_deref(), Some("12"));
        }
    }

    #[tokio::test]
    async fn reopening_applies_no_migration_twice_and_keeps_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Db::open(dir.path()).await.unwrap();
        store
            .insert_cdr(&Cdr {
                call_id: "x".into(),
                caller: "1".into(),
                dialled: "echo".into(),
                service: None,
                codec: None,
                dtmf_methods: String::new(),
                started_at: "t".into(),
                answered_at: None,
                ended_at: "t".into(),
                end_reason: "r".into(),
                digits: None,
            })
            .await
            .unwrap();
        store.close().await;
        let again = Db::open(dir.path()).await.unwrap();
        assert_eq!(again.recent_cdrs(1).await.unwrap()[0].call_id, "x");
    }

    #[tokio::test]
    async fn unusable_data_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let err = Db::open(&file.join("sub")).await.unwrap_err().to_string();
        assert!(err.starts_with("data directory"), "{err}");
        assert!(matches!(
            Db::connect("mysql://x").await,
            Err(StoreError::Url(_))
        ));
    }
}
