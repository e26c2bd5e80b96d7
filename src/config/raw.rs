//! The file as written: every key optional, unknown keys refused. Only the shape is checked
//! here; values are checked when resolved into [`super::Config`].

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) sip: RawSip,
    pub(super) rtp: RawRtp,
    pub(super) calls: RawCalls,
    pub(super) http: RawHttp,
    pub(super) paths: RawPaths,
    pub(super) log: RawLog,
    pub(super) database: RawDatabase,
    pub(super) security: RawSecurity,
    pub(super) lookup: RawLookup,
    pub(super) topups: RawTopups,
    pub(super) escalation: RawEscalation,
    pub(super) calling: RawCalling,
    pub(super) sms: RawSms,
    pub(super) asterisk: Option<RawAsterisk>,
    pub(super) freeswitch: Option<RawFreeswitch>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAsterisk {
    pub(super) url: Option<String>,
    pub(super) app: Option<String>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) media: Option<String>,
    pub(super) format: Option<String>,
    pub(super) escalation_context: Option<String>,
    pub(super) calling_endpoint: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFreeswitch {
    pub(super) esl: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) media_listen: Option<String>,
    pub(super) media_url: Option<String>,
    pub(super) escalation_context: Option<String>,
    pub(super) calling_gateway: Option<String>,
    pub(super) sample_rate: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSms {
    pub(super) language: Option<String>,
    pub(super) sender: Option<String>,
    pub(super) alert_every: Option<String>,
    pub(super) max_attempts: Option<i64>,
    pub(super) mo_id_tlv: Option<u16>,
    pub(super) mo_repeat_window: Option<String>,
    pub(super) receipts: Option<bool>,
    pub(super) smsc: Vec<RawSmsc>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSmsc {
    pub(super) name: Option<String>,
    pub(super) address: Option<String>,
    pub(super) system_id: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_env: Option<String>,
    pub(super) system_type: Option<String>,
    pub(super) prefixes: Vec<String>,
    pub(super) window: Option<usize>,
    pub(super) enquire_link: Option<String>,
    pub(super) response_timeout: Option<String>,
    pub(super) sender: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCalling {
    pub(super) gateway: Option<String>,
    pub(super) ring_timeout: Option<String>,
    pub(super) warning_before: Option<String>,
    pub(super) blocked_prefixes: Option<Vec<String>>,
    pub(super) max_calls_per_wallet: Option<u32>,
    pub(super) max_cost_per_call: Option<Vec<String>>,
    pub(super) max_cost_per_day: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawEscalation {
    pub(super) agent_uri: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDatabase {
    pub(super) url: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSecurity {
    pub(super) max_pin_failures: Option<u32>,
    pub(super) ani_failures_per_hour: Option<u32>,
    pub(super) global_failures_per_minute: Option<u32>,
    pub(super) failure_delay: Option<String>,
    pub(super) max_failure_delay: Option<String>,
    pub(super) pin_pepper_file: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLookup {
    pub(super) hlr_url: Option<String>,
    pub(super) hlr_api_key_env: Option<String>,
    pub(super) hlr_timeout: Option<String>,
    pub(super) hlr_cache_ttl: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTopups {
    pub(super) reconcile_every: Option<String>,
    pub(super) demo: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSip {
    pub(super) listen: Option<String>,
    pub(super) advertise: Option<String>,
    pub(super) max_calls: Option<usize>,
    pub(super) answer_delay: Option<String>,
    pub(super) user_agent: Option<String>,
    pub(super) codecs: Option<Vec<String>>,
    pub(super) t1: Option<String>,
    pub(super) per_source_calls: Option<usize>,
    pub(super) per_source_rate: Option<f64>,
    pub(super) trusted_sources: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRtp {
    pub(super) ports: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) inband_dtmf: Option<String>,
    pub(super) source: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCalls {
    pub(super) max_duration: Option<String>,
    pub(super) shutdown_grace: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHttp {
    pub(super) listen: Option<String>,
    pub(super) max_connections: Option<usize>,
    pub(super) header_timeout: Option<String>,
    pub(super) secure_cookies: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPaths {
    pub(super) data_dir: Option<String>,
    pub(super) prompts: Option<String>,
    pub(super) dialplans: Option<String>,
    pub(super) sms: Option<String>,
    pub(super) reload_every: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    pub(super) level: Option<String>,
    pub(super) format: Option<String>,
}
