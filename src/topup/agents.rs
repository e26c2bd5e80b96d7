//! Call-centre agents: accounts (argon2 passwords), sessions (the cookie holds a random
//! token; its SHA-256 is stored), and what they do on escalations, each action recorded with
//! who did it.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::escalations::Escalation;
use super::secrets::{Pin, hash_pin, verify_pin};
use super::{Core, TopupError};

/// How long a login lasts.
pub const SESSION_MS: i64 = 12 * 3600 * 1000;

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Action {
    pub agent: String,
    pub action: String,
    pub detail: String,
    pub at: i64,
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Core {
    pub async fn create_agent(
        &self,
        username: &str,
        name: &str,
        password: &str,
        now: i64,
    ) -> Result<(), TopupError> {
        let ok = !username.is_empty()
            && username.len() <= 64
            && username
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !ok {
            return Err(TopupError::RequestConflict(
                "usernames are letters, digits, . _ - (64 at most)".into(),
            ));
        }
        if password.chars().count() < 10 {
            return Err(TopupError::RequestConflict(
                "passwords are 10 characters or more".into(),
            ));
        }
        sqlx::query(
            "INSERT INTO agents (username, name, password_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(username)
        .bind(name)
        .bind(hash_pin(&Pin::new(password)))
        .bind(now)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Checks a login; returns a new session token (for the cookie) or `None`.
    pub async fn login_agent(
        &self,
        username: &str,
        password: &str,
        now: i64,
    ) -> Result<Option<String>, TopupError> {
        let row = sqlx::query("SELECT password_hash FROM agents WHERE username = $1")
            .bind(username)
            .fetch_optional(self.db.pool())
            .await?;
        let Some(r) = row else { return Ok(None) };
        let stored: String = r.try_get("password_hash")?;
        if !verify_pin(&Pin::new(password), &stored) {
            return Ok(None);
        }
        let token = hex::encode(rand::random::<[u8; 32]>());
        sqlx::query(
            "INSERT INTO agent_sessions (token_hash, username, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(token_hash(&token))
        .bind(username)
        .bind(now + SESSION_MS)
        .execute(self.db.pool())
        .await?;
        Ok(Some(token))
    }

    /// The agent a session token belongs to, while it lasts.
    pub async fn agent_for_session(
        &self,
        token: &str,
        now: i64,
    ) -> Result<Option<String>, TopupError> {
        let row = sqlx::query(
            "SELECT username FROM agent_sessions WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(token_hash(token))
        .bind(now)
        .fetch_optional(self.db.pool())
        .await?;
        Ok(row.map(|r| r.try_get("username")).transpose()?)
    }

    pub async fn logout_agent(&self, token: &str) -> Result<(), TopupError> {
        sqlx::query("DELETE FROM agent_sessions WHERE token_hash = $1")
            .bind(token_hash(token))
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    pub async fn record_action(
        &self,
        escalation: &str,
        agent: &str,
        action: &str,
        detail: &str,
        now: i64,
    ) -> Result<(), TopupError> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO escalation_actions (id, escalation_id, agent, action, detail, at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(hex::encode(rand::random::<[u8; 8]>()))
        .bind(escalation)
        .bind(agent)
        .bind(action)
        .bind(detail)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // The list shows what changed: every action touches the escalation.
        let state = if action == "close" {
            Some("closed")
        } else {
            None
        };
        sqlx::query(
            "UPDATE escalations SET updated_at = $1, state = COALESCE($2, state) WHERE id = $3",
        )
        .bind(now)
        .bind(state)
        .bind(escalation)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn escalation_actions(&self, escalation: &str) -> Result<Vec<Action>, TopupError> {
        let rows = sqlx::query(
            "SELECT agent, action, detail, at FROM escalation_actions WHERE escalation_id = $1 ORDER BY at, id",
        )
        .bind(escalation)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Action {
                    agent: r.try_get("agent")?,
                    action: r.try_get("action")?,
                    detail: r.try_get("detail")?,
                    at: r.try_get("at")?,
                })
            })
            .collect()
    }

    pub async fn escalation(&self, id: &str) -> Result<Option<Escalation>, TopupError> {
        Ok(self
            .escalations_where("WHERE id = $1", id, 1)
            .await?
            .into_iter()
            .next())
    }

    /// Counts a call's way through a plan: each node it reached, and the one it ended at.
    /// Statistics only: a failure is logged, never passed on.
    pub async fn record_path(&self, service: &str, path: &[String]) {
        let Some(last) = path.last() else { return };
        let mut seen = std::collections::BTreeSet::new();
        for node in path {
            if !seen.insert(node.as_str()) {
                continue;
            }
            let ended = i64::from(node == last);
            let r = sqlx::query(
                "INSERT INTO node_stats (service, node, reached, ended) VALUES ($1, $2, 1, $3)
                 ON CONFLICT (service, node) DO UPDATE SET reached = node_stats.reached + 1,
                    ended = node_stats.ended + $3",
            )
            .bind(service)
            .bind(node)
            .bind(ended)
            .execute(self.db.pool())
            .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "node statistics not written");
                return;
            }
        }
    }

    /// Per node of a plan: (calls that reached it, calls that ended there).
    pub async fn node_stats(
        &self,
        service: &str,
    ) -> Result<std::collections::HashMap<String, (i64, i64)>, TopupError> {
        let rows = sqlx::query("SELECT node, reached, ended FROM node_stats WHERE service = $1")
            .bind(service)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("node")?,
                    (r.try_get("reached")?, r.try_get("ended")?),
                ))
            })
            .collect()
    }

    /// Publishes this node's live figures (every few seconds).
    pub async fn heartbeat(
        &self,
        node: &str,
        active: i64,
        by_service: &std::collections::BTreeMap<String, i64>,
        total: i64,
        now: i64,
    ) -> Result<(), TopupError> {
        sqlx::query(
            "INSERT INTO nodes (id, active_calls, by_service, calls_total, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET active_calls = $2, by_service = $3, calls_total = $4, updated_at = $5",
        )
        .bind(node)
        .bind(active)
        .bind(serde_json::to_string(by_service).unwrap_or_default())
        .bind(total)
        .bind(now)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Nodes heard from since `since`: (id, active calls, per service, calls since start).
    pub async fn live_nodes(&self, since: i64) -> Result<Vec<serde_json::Value>, TopupError> {
        let rows = sqlx::query(
            "SELECT id, active_calls, by_service, calls_total, updated_at FROM nodes WHERE updated_at >= $1 ORDER BY id",
        )
        .bind(since)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let by: String = r.try_get("by_service")?;
                Ok(serde_json::json!({
                    "node": r.try_get::<String, _>("id")?,
                    "active": r.try_get::<i64, _>("active_calls")?,
                    "by_service": serde_json::from_str::<serde_json::Value>(&by).unwrap_or_default(),
                    "total": r.try_get::<i64, _>("calls_total")?,
                    "updated_at": r.try_get::<i64, _>("updated_at")?,
                }))
            })
            .collect()
    }

    /// Sends the payer's confirmation of a top-up again (a new outbox row with the same text).
    pub async fn resend_confirmation(&self, topup: &str, now: i64) -> Result<bool, TopupError> {
        let orig = format!("{topup}:payer");
        let resend = format!("{orig}:resend:{now}");
        let n = sqlx::query(
            "INSERT INTO sms_outbox (id, kind, destination, language, body, reference, udh_ref, state,
                attempts, next_attempt_at, created_at, updated_at)
             SELECT $1, kind, destination, language, body, reference, udh_ref, 'queued', 0, $2, $2, $2
             FROM sms_outbox WHERE id = $3",
        )
        .bind(&resend)
        .bind(now)
        .bind(&orig)
        .execute(self.db.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topup::testing::cores;

    #[tokio::test]
    async fn agents_log_in_with_their_password_and_sessions_expire() {
        for (core, _dir) in cores().await {
            core.create_agent("ana", "Ana", "correct horse battery", 1)
                .await
                .unwrap();
            assert!(core.create_agent("bob", "Bob", "short", 1).await.is_err());
            assert_eq!(
                core.login_agent("ana", "wrong password!", 2).await.unwrap(),
                None
            );
            assert_eq!(
                core.login_agent("nobody", "correct horse battery", 2)
                    .await
                    .unwrap(),
                None
            );
            let t = core
                .login_agent("ana", "correct horse battery", 2)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                core.agent_for_session(&t, 3).await.unwrap().as_deref(),
                Some("ana")
            );
            assert_eq!(
                core.agent_for_session(&t, 2 + SESSION_MS).await.unwrap(),
                None
            );
            assert_eq!(core.agent_for_session("forged", 3).await.unwrap(), None);
            core.logout_agent(&t).await.unwrap();
            assert_eq!(core.agent_for_session(&t, 3).await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn nodes_publish_their_live_figures_and_quiet_ones_drop_out() {
        for (core, _dir) in cores().await {
            let by = std::collections::BTreeMap::from([("wallet".to_string(), 2)]);
            core.heartbeat("a:5060", 2, &by, 9, 1_000).await.unwrap();
            core.heartbeat("b:5060", 0, &Default::default(), 4, 1_000)
                .await
                .unwrap();
            core.heartbeat("a:5060", 3, &by, 10, 5_000).await.unwrap();
            let live = core.live_nodes(2_000).await.unwrap();
            assert_eq!(live.len(), 1, "b has been quiet: {live:?}");
            assert_eq!(live[0]["node"], "a:5060");
            assert_eq!(live[0]["active"], 3);
            assert_eq!(live[0]["by_service"]["wallet"], 2);
            assert_eq!(core.live_nodes(0).await.unwrap().len(), 2);
        }
    }
}
