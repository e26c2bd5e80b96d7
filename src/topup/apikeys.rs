//! API keys for retail terminals and apps: `tk_<id>_<secret>`. The id finds the row; only the
//! SHA-256 of the 32-byte random secret is stored, compared in constant time. Each key pays
//! from one wallet and holds scopes.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Core, TopupError};

/// What a key may do.
pub const SCOPES: [&str; 4] = ["lookup", "topup", "redeem", "wallet"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// The wallet top-ups are paid from.
    pub wallet: String,
    pub per_minute: i64,
    /// Where final top-up states are POSTed.
    pub webhook_url: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// A new key: the key itself and its webhook signing secret, both shown once.
#[derive(Debug)]
pub struct NewKey {
    pub key: ApiKey,
    pub secret: String,
    pub webhook_secret: Option<String>,
}

impl ApiKey {
    pub fn allows(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("unknown scope `{0}` (lookup, topup, redeem, wallet)")]
    Scope(String),
    #[error("a name is required")]
    Name,
    #[error("requests per minute must be between 1 and 100000")]
    Rate,
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Splits `tk_<id>_<secret>`.
fn parse(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("tk_")?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// Constant-time equality of two hex digests (no early exit on the first difference).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Core {
    /// Creates a key; returns it with the full secret, which is not stored and not shown
    /// again.
    pub async fn create_api_key(
        &self,
        name: &str,
        wallet: &str,
        scopes: &[String],
        per_minute: i64,
        webhook_url: Option<&str>,
        now: i64,
    ) -> Result<NewKey, TopupError> {
        let bad = |e: KeyError| TopupError::RequestConflict(e.to_string());
        if name.trim().is_empty() {
            return Err(bad(KeyError::Name));
        }
        if let Some(s) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
            return Err(bad(KeyError::Scope(s.clone())));
        }
        if !(1..=100_000).contains(&per_minute) {
            return Err(bad(KeyError::Rate));
        }
        let wallet = super::numbers::parse_number(wallet)?.e164;
        if self.wallet(&wallet).await?.is_none() {
            return Err(TopupError::NoWallet);
        }
        if let Some(u) = webhook_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return Err(TopupError::RequestConflict(format!(
                "webhook `{u}` is not an http(s) URL"
            )));
        }
        let id = hex::encode(rand::random::<[u8; 6]>());
        let secret = hex::encode(rand::random::<[u8; 32]>());
        let webhook_secret =
            webhook_url.map(|_| format!("whsec_{}", hex::encode(rand::random::<[u8; 24]>())));
        sqlx::query(
            "INSERT INTO api_keys (id, name, secret_hash, scopes, wallet, per_minute, webhook_url,
                webhook_secret, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&id)
        .bind(name.trim())
        .bind(hash(&secret))
        .bind(scopes.join(","))
        .bind(&wallet)
        .bind(per_minute)
        .bind(webhook_url)
        .bind(&webhook_secret)
        .bind(now)
        .execute(self.db.pool())
        .await?;
        let key = ApiKey {
            id: id.clone(),
            name: name.trim().to_string(),
            scopes: scopes.to_vec(),
            wallet,
            per_minute,
            webhook_url: webhook_url.map(str::to_string),
            created_at: now,
            revoked_at: None,
        };
        Ok(NewKey {
            key,
            secret: format!("tk_{id}_{secret}"),
            webhook_secret,
        })
    }

    /// The key a request presented, if it is valid and not revoked.
    pub async fn authenticate_api_key(
        &self,
        presented: &str,
    ) -> Result<Option<ApiKey>, TopupError> {
        let Some((id, secret)) = parse(presented) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT id, name, secret_hash, scopes, wallet, per_minute, webhook_url, created_at, revoked_at
             FROM api_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let stored: String = r.try_get("secret_hash")?;
        if !same(&stored, &hash(secret)) {
            return Ok(None);
        }
        let key = row_key(&r)?;
        Ok(key.revoked_at.is_none().then_some(key))
    }

    pub async fn api_keys(&self) -> Result<Vec<ApiKey>, TopupError> {
        let rows = sqlx::query(
            "SELECT id, name, secret_hash, scopes, wallet, per_minute, webhook_url, created_at, revoked_at
             FROM api_keys ORDER BY created_at, id",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(row_key).collect()
    }

    /// Revokes a key; false when there is no such key.
    pub async fn revoke_api_key(&self, id: &str, now: i64) -> Result<bool, TopupError> {
        let n =
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(self.db.pool())
                .await?
                .rows_affected();
        Ok(n == 1)
    }
}

fn row_key(r: &sqlx::any::AnyRow) -> Result<ApiKey, TopupError> {
    let scopes: String = r.try_get("scopes")?;
    Ok(ApiKey {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        scopes: scopes
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        wallet: r.try_get("wallet")?,
        per_minute: r.try_get("per_minute")?,
        webhook_url: r.try_get("webhook_url")?,
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topup::testing::cores;

    #[tokio::test]
    async fn a_key_authenticates_until_revoked_and_only_its_hash_is_stored() {
        for (core, _dir) in cores().await {
            core.seed_demo(1).await.unwrap();
            let new = core
                .create_api_key("Shop 12", "+12015550100", &["topup".into()], 60, None, 1)
                .await
                .unwrap();
            let (key, secret) = (new.key, new.secret);
            assert_eq!(new.webhook_secret, None);
            assert!(secret.starts_with(&format!("tk_{}_", key.id)));
            let found = core.authenticate_api_key(&secret).await.unwrap().unwrap();
            assert_eq!(found, key);
            assert!(found.allows("topup") && !found.allows("redeem"));
            // A wrong secret, a malformed key, an unknown id.
            let last = if secret.ends_with('0') { '1' } else { '0' };
            let wrong = format!("{}{last}", &secret[..secret.len() - 1]);
            assert_eq!(core.authenticate_api_key(&wrong).await.unwrap(), None);
            assert_eq!(core.authenticate_api_key("Bearer x").await.unwrap(), None);
            assert_eq!(core.authenticate_api_key("tk_nope_x").await.unwrap(), None);
            let raw: String = sqlx::query("SELECT secret_hash FROM api_keys")
                .fetch_one(core.db.pool())
                .await
                .unwrap()
                .try_get("secret_hash")
                .unwrap();
            assert!(!secret.contains(&raw) && raw.len() == 64);
            assert!(core.revoke_api_key(&key.id, 2).await.unwrap());
            assert_eq!(core.authenticate_api_key(&secret).await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn keys_are_checked_at_creation() {
        for (core, _dir) in cores().await {
            core.seed_demo(1).await.unwrap();
            let e = core
                .create_api_key("x", "+12015550100", &["admin".into()], 60, None, 1)
                .await
                .unwrap_err();
            assert_eq!(e.code(), "conflict");
            let e = core
                .create_api_key("x", "+12015550199", &["topup".into()], 60, None, 1)
                .await
                .unwrap_err();
            assert_eq!(e.code(), "no_wallet");
        }
    }
}
