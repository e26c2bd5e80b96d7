//! Escalations: a call handed to the agents with its context, so the agent who answers sees
//! who called, what they tried and why it failed.

use serde::Serialize;
use sqlx::Row;

use super::{Core, TopupError};

/// Where an escalation is: `open` while the call is handed over, `transferred` when the
/// transfer went through, `failed` when it did not, `closed` when an agent closed the case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EscalationState {
    Open,
    Transferred,
    Failed,
    Closed,
}

impl EscalationState {
    pub const ALL: [EscalationState; 4] = [
        EscalationState::Open,
        EscalationState::Transferred,
        EscalationState::Failed,
        EscalationState::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EscalationState::Open => "open",
            EscalationState::Transferred => "transferred",
            EscalationState::Failed => "failed",
            EscalationState::Closed => "closed",
        }
    }

    pub fn from_name(name: &str) -> Option<EscalationState> {
        EscalationState::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for EscalationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Escalation {
    pub id: String,
    pub call_id: String,
    pub caller: String,
    pub service: String,
    pub language: String,
    pub node: String,
    pub path: Vec<String>,
    pub inputs: std::collections::BTreeMap<String, String>,
    pub reason: String,
    pub topup_ids: Vec<String>,
    pub state: EscalationState,
    pub created_at: i64,
    /// When it last changed (state, an agent's action).
    pub updated_at: i64,
}

impl Core {
    pub async fn record_escalation(&self, e: &Escalation, now: i64) -> Result<(), TopupError> {
        sqlx::query(
            "INSERT INTO escalations (id, call_id, caller, service, language, node, path, inputs, reason, topup_ids,
                state, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
        )
        .bind(&e.id)
        .bind(&e.call_id)
        .bind(&e.caller)
        .bind(&e.service)
        .bind(&e.language)
        .bind(&e.node)
        .bind(serde_json::to_string(&e.path).unwrap_or_default())
        .bind(serde_json::to_string(&e.inputs).unwrap_or_default())
        .bind(&e.reason)
        .bind(serde_json::to_string(&e.topup_ids).unwrap_or_default())
        .bind(e.state.as_str())
        .bind(now)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    pub async fn set_escalation_state(
        &self,
        id: &str,
        state: EscalationState,
        now: i64,
    ) -> Result<(), TopupError> {
        sqlx::query("UPDATE escalations SET state = $1, updated_at = $2 WHERE id = $3")
            .bind(state.as_str())
            .bind(now)
            .bind(id)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// The most recent escalations, newest first.
    pub async fn escalations(&self, limit: i64) -> Result<Vec<Escalation>, TopupError> {
        self.escalations_where("WHERE id <> $1", "", limit).await
    }

    /// Escalations changed after `after_ms` (the agents' live list), newest first.
    pub async fn escalations_changed(
        &self,
        after_ms: i64,
        limit: i64,
    ) -> Result<Vec<Escalation>, TopupError> {
        self.escalations_where(
            "WHERE updated_at > CAST($1 AS BIGINT)",
            &after_ms.to_string(),
            limit,
        )
        .await
    }

    /// Escalations matching `filter` (one `$1` parameter, bound to `arg`).
    pub(crate) async fn escalations_where(
        &self,
        filter: &str,
        arg: &str,
        limit: i64,
    ) -> Result<Vec<Escalation>, TopupError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, call_id, caller, service, language, node, path, inputs, reason, topup_ids, state,
                created_at, updated_at
             FROM escalations {filter} ORDER BY created_at DESC, id LIMIT $2"
        )))
        .bind(arg)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let json =
                    |c: &str| -> Result<String, TopupError> { Ok(r.try_get::<String, _>(c)?) };
                Ok(Escalation {
                    id: r.try_get("id")?,
                    call_id: r.try_get("call_id")?,
                    caller: r.try_get("caller")?,
                    service: r.try_get("service")?,
                    language: r.try_get("language")?,
                    node: r.try_get("node")?,
                    path: serde_json::from_str(&json("path")?).unwrap_or_default(),
                    inputs: serde_json::from_str(&json("inputs")?).unwrap_or_default(),
                    reason: r.try_get("reason")?,
                    topup_ids: serde_json::from_str(&json("topup_ids")?).unwrap_or_default(),
                    state: {
                        let s: String = r.try_get("state")?;
                        EscalationState::from_name(&s)
                            .ok_or_else(|| TopupError::Corrupt(format!("escalation state `{s}`")))?
                    },
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    /// Remembers a wallet owner's language for later calls.
    pub async fn set_wallet_language(
        &self,
        number: &str,
        language: &str,
    ) -> Result<bool, TopupError> {
        let n = sqlx::query("UPDATE wallets SET language = $1 WHERE number = $2")
            .bind(language)
            .bind(number)
            .execute(self.db.pool())
            .await?
            .rows_affected();
        Ok(n == 1)
    }
}
