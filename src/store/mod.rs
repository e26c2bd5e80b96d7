//! Storage (sqlx). SQLite in the data directory is the embedded default.
//! Schema changes are migrations under `migrations/`, applied at start.

use std::path::Path;
use std::str::FromStr;

use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {dir}: {reason}")]
    DataDir { dir: String, reason: String },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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

#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/topup-ivr.db` and applies migrations.
    pub async fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let dir_err = |reason: String| StoreError::DataDir {
            dir: data_dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| dir_err(e.to_string()))?;
        let path = data_dir.join("topup-ivr.db");
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(|e| dir_err(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    pub async fn insert_cdr(&self, c: &Cdr) -> Result<(), StoreError> {
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
        .execute(&self.pool)
        .await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cdrs_round_trip_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
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
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], c);
        assert_eq!(got[1].digits.as_deref(), Some("12"));
        store.close().await;
        // Reopening applies no migration twice and keeps the rows.
        let again = Store::open(dir.path()).await.unwrap();
        assert_eq!(again.recent_cdrs(1).await.unwrap()[0].call_id, "b");
    }

    #[tokio::test]
    async fn unusable_data_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let err = Store::open(&file.join("sub"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("data directory"), "{err}");
    }
}
