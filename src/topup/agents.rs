//! Call-centre agents: accounts (argon2 passwords), sessions (the cookie holds a random
//! token; its SHA-256 is stored), and what they do on escalations, each action recorded with
//! who did it.

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::escalations::Escalation;
use super::hash_pool::HashPool;
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

/// An argon2 hash of a random password, made once: what unknown usernames are checked
/// against.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_pin(&Pin::new(&hex::encode(rand::random::<[u8; 16]>()))))
}

/// Throttles agent logins (sans-IO; the console keeps one). Failures are counted per
/// username and per source address: after [`LoginGuard::FREE_PER_USER`] (or
/// [`LoginGuard::FREE_PER_SOURCE`]) within [`LoginGuard::WINDOW_MS`] the door closes for 1 s,
/// and each failure after that closes it for twice as long as the last (2 s, 4 s ... up to
/// [`LoginGuard::MAX_BLOCK_MS`]); while it is closed every attempt, right or wrong, is refused
/// unchecked. A successful login clears its username's count.
#[derive(Debug, Default)]
pub struct LoginGuard {
    entries: std::collections::HashMap<String, GuardEntry>,
}

#[derive(Debug, Clone, Copy)]
struct GuardEntry {
    failures: u32,
    last: i64,
    blocked_until: i64,
}

impl LoginGuard {
    pub const FREE_PER_USER: u32 = 5;
    pub const FREE_PER_SOURCE: u32 = 20;
    pub const WINDOW_MS: i64 = 15 * 60 * 1000;
    pub const MAX_BLOCK_MS: i64 = 15 * 60 * 1000;
    /// Entries kept at most (the oldest go first): a flood of made-up usernames cannot grow
    /// the guard without bound.
    const MAX_ENTRIES: usize = 100_000;

    fn keys(username: &str, source: &str) -> [(String, u32); 2] {
        [
            (format!("user:{username}"), Self::FREE_PER_USER),
            (format!("source:{source}"), Self::FREE_PER_SOURCE),
        ]
    }

    /// `Err(seconds)` when the door is closed for this username or source.
    pub fn check(&self, now: i64, username: &str, source: &str) -> Result<(), u64> {
        let wait = Self::keys(username, source)
            .iter()
            .filter_map(|(k, _)| self.entries.get(k))
            .map(|e| e.blocked_until - now)
            .max()
            .unwrap_or(0);
        if wait > 0 {
            Err((wait as u64).div_ceil(1000))
        } else {
            Ok(())
        }
    }

    pub fn failed(&mut self, now: i64, username: &str, source: &str) {
        if self.entries.len() >= Self::MAX_ENTRIES {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.entries.remove(&k);
            }
        }
        for (key, free) in Self::keys(username, source) {
            let e = self.entries.entry(key).or_insert(GuardEntry {
                failures: 0,
                last: now,
                blocked_until: 0,
            });
            if now - e.last > Self::WINDOW_MS {
                e.failures = 0;
            }
            e.failures += 1;
            e.last = now;
            if e.failures >= free {
                let doubling = (e.failures - free).min(20);
                let block = (1000i64 << doubling).min(Self::MAX_BLOCK_MS);
                e.blocked_until = now + block;
            }
        }
    }

    pub fn succeeded(&mut self, username: &str) {
        self.entries.remove(&format!("user:{username}"));
    }
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Core {
    /// Creates an agent (`staff`: a supervisor, who also sees the staff pages).
    pub async fn create_agent(
        &self,
        username: &str,
        name: &str,
        password: &str,
        staff: bool,
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
        let pin = Pin::new(password);
        let hash = HashPool::global().run(move || hash_pin(&pin)).await?;
        sqlx::query(
            "INSERT INTO agents (username, name, password_hash, created_at, role)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(username)
        .bind(name)
        .bind(hash)
        .bind(now)
        .bind(if staff { "staff" } else { "agent" })
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Whether an agent is staff (a supervisor); `None` for no such agent.
    pub async fn agent_is_staff(&self, username: &str) -> Result<Option<bool>, TopupError> {
        let row = sqlx::query("SELECT role FROM agents WHERE username = $1")
            .bind(username)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row
            .map(|r| r.try_get::<String, _>("role"))
            .transpose()?
            .map(|role| role == "staff"))
    }

    /// Makes an agent staff or not; false when there is no such agent.
    pub async fn set_agent_staff(&self, username: &str, staff: bool) -> Result<bool, TopupError> {
        let done = sqlx::query("UPDATE agents SET role = $1 WHERE username = $2")
            .bind(if staff { "staff" } else { "agent" })
            .bind(username)
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected() > 0)
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
        // An unknown user is checked against a hash too, so the answer takes as long as for a
        // known one: the time of a refusal does not say which usernames exist.
        let (known, stored) = match row {
            Some(r) => (true, r.try_get::<String, _>("password_hash")?),
            None => (false, dummy_hash().to_string()),
        };
        let pin = Pin::new(password);
        let matches = HashPool::global()
            .run(move || verify_pin(&pin, &stored))
            .await?;
        if !known || !matches {
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
            Some(super::escalations::EscalationState::Closed.as_str())
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
            core.create_agent("ana", "Ana", "correct horse battery", false, 1)
                .await
                .unwrap();
            assert!(
                core.create_agent("bob", "Bob", "short", false, 1)
                    .await
                    .is_err()
            );
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

    #[test]
    fn logins_are_free_five_times_then_the_door_closes_for_longer_each_time() {
        let mut g = LoginGuard::default();
        let t = 1_000_000;
        for i in 0..5 {
            assert_eq!(g.check(t + i, "ann", "10.0.0.1"), Ok(()));
            g.failed(t + i, "ann", "10.0.0.1");
        }
        // Closed for 1 s, then 2 s: for the right password as for a wrong one.
        assert_eq!(g.check(t + 5, "ann", "10.0.0.2"), Err(1));
        assert_eq!(g.check(t + 1004, "ann", "10.0.0.2"), Ok(()));
        g.failed(t + 1004, "ann", "10.0.0.1");
        assert_eq!(g.check(t + 1005, "ann", "10.0.0.1"), Err(2));
        // Another user from another address is not held up.
        assert_eq!(g.check(t + 1006, "bob", "10.0.0.9"), Ok(()));
        // A success clears the user's count.
        g.succeeded("ann");
        assert_eq!(g.check(t + 5000, "ann", "10.0.0.3"), Ok(()));
    }

    #[test]
    fn one_source_trying_many_usernames_is_held_up_too() {
        let mut g = LoginGuard::default();
        let t = 5_000_000;
        for i in 0..LoginGuard::FREE_PER_SOURCE as i64 {
            g.failed(t + i, &format!("user{i}"), "198.51.100.7");
        }
        assert!(g.check(t + 30, "someone-new", "198.51.100.7").is_err());
        assert!(g.check(t + 30, "someone-new", "198.51.100.8").is_ok());
        // A quiet window forgets.
        let later = t + LoginGuard::WINDOW_MS + LoginGuard::MAX_BLOCK_MS + 1;
        g.failed(later, "x", "198.51.100.7");
        assert!(g.check(later + 1, "y", "198.51.100.7").is_ok());
    }
}
