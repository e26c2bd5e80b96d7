//! Configuration: a TOML file (every key optional), then environment variables and flags for
//! the essentials. Raw serde structs only validate shape; [`Config`] is the resolved result.
//! Unknown keys and bad values stop the start with the file, the key and the reason.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::media::g711::Codec;
use crate::telephony::sip::transaction::TsxConfig;
use crate::textfile::parse_duration;

/// A config problem: where (file or flag), which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: key `{key}`: {reason}")]
pub struct ConfigError {
    pub origin: String,
    pub key: String,
    pub reason: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    sip: RawSip,
    rtp: RawRtp,
    calls: RawCalls,
    http: RawHttp,
    paths: RawPaths,
    log: RawLog,
    database: RawDatabase,
    security: RawSecurity,
    lookup: RawLookup,
    topups: RawTopups,
    escalation: RawEscalation,
    calling: RawCalling,
    sms: RawSms,
    asterisk: Option<RawAsterisk>,
    freeswitch: Option<RawFreeswitch>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawAsterisk {
    url: Option<String>,
    app: Option<String>,
    username: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
    media: Option<String>,
    format: Option<String>,
    escalation_context: Option<String>,
    calling_endpoint: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawFreeswitch {
    esl: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
    media_listen: Option<String>,
    media_url: Option<String>,
    escalation_context: Option<String>,
    calling_gateway: Option<String>,
    sample_rate: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSms {
    language: Option<String>,
    sender: Option<String>,
    alert_every: Option<String>,
    max_attempts: Option<i64>,
    mo_id_tlv: Option<u16>,
    mo_repeat_window: Option<String>,
    receipts: Option<bool>,
    smsc: Vec<RawSmsc>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSmsc {
    name: Option<String>,
    address: Option<String>,
    system_id: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
    system_type: Option<String>,
    prefixes: Vec<String>,
    window: Option<usize>,
    enquire_link: Option<String>,
    response_timeout: Option<String>,
    sender: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawCalling {
    gateway: Option<String>,
    ring_timeout: Option<String>,
    warning_before: Option<String>,
    blocked_prefixes: Option<Vec<String>>,
    max_calls_per_wallet: Option<u32>,
    max_cost_per_call: Option<Vec<String>>,
    max_cost_per_day: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawEscalation {
    agent_uri: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    url: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSecurity {
    max_pin_failures: Option<u32>,
    ani_failures_per_hour: Option<u32>,
    global_failures_per_minute: Option<u32>,
    failure_delay: Option<String>,
    max_failure_delay: Option<String>,
    pin_pepper_file: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLookup {
    hlr_url: Option<String>,
    hlr_api_key_env: Option<String>,
    hlr_timeout: Option<String>,
    hlr_cache_ttl: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawTopups {
    reconcile_every: Option<String>,
    demo: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSip {
    listen: Option<String>,
    advertise: Option<String>,
    max_calls: Option<usize>,
    answer_delay: Option<String>,
    user_agent: Option<String>,
    codecs: Option<Vec<String>>,
    t1: Option<String>,
    per_source_calls: Option<usize>,
    per_source_rate: Option<f64>,
    trusted_sources: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawRtp {
    ports: Option<String>,
    timeout: Option<String>,
    inband_dtmf: Option<String>,
    source: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawCalls {
    max_duration: Option<String>,
    shutdown_grace: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    listen: Option<String>,
    max_connections: Option<usize>,
    header_timeout: Option<String>,
    secure_cookies: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawPaths {
    data_dir: Option<String>,
    prompts: Option<String>,
    dialplans: Option<String>,
    sms: Option<String>,
    reload_every: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
}

/// When to run the in-band DTMF detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InbandDtmf {
    /// Only on calls whose SDP has no telephone-event.
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A password from the config or the environment: never printed by `{:?}`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Keys of the file that hold a secret written inline (a password, a database URL with
    /// its password) rather than named by `password_env` / the environment.
    pub inline_secrets: Vec<String>,
    /// What is wrong but not fatal about the configuration (logged when the service starts).
    pub warnings: Vec<String>,
    pub sip_listen: SocketAddr,
    /// Address written into Via, Contact and SDP.
    pub advertise: IpAddr,
    pub max_calls: usize,
    /// Per source host: calls at once, INVITEs a second, and the hosts exempt (see
    /// telephony::sip::admission).
    pub per_source: crate::telephony::sip::admission::Limits,
    pub answer_delay: Duration,
    pub user_agent: String,
    /// Codecs accepted, in our order of preference when the caller has none.
    pub codecs: Vec<Codec>,
    pub tsx: TsxConfig,
    /// Even RTP ports are used, each call gets one; RTCP (port + 1) is not bound.
    pub rtp_ports: (u16, u16),
    pub rtp_timeout: Duration,
    /// Which sources a call takes media from (see media::peer).
    pub rtp_source: crate::media::peer::SourcePolicy,
    pub inband_dtmf: InbandDtmf,
    pub max_call_duration: Duration,
    pub shutdown_grace: Duration,
    pub http_listen: SocketAddr,
    /// HTTP connections open at once at most; more are closed as they come.
    pub http_max_connections: usize,
    /// How long a client has to send a request's headers (and an idle connection is kept).
    pub http_header_timeout: Duration,
    /// Mark the session cookie `Secure` (behind TLS).
    pub http_secure_cookies: bool,
    pub data_dir: PathBuf,
    pub prompts_dir: PathBuf,
    pub dialplans_dir: PathBuf,
    pub log_level: String,
    pub log_format: LogFormat,
    /// `postgres://...`, or `None` for SQLite in the data directory.
    pub database_url: Option<String>,
    pub auth: crate::topup::auth::AuthPolicy,
    pub pin_pepper_file: PathBuf,
    pub hlr: Option<HlrConfig>,
    pub reconcile_every: Duration,
    /// Seed the demo carriers, accounts and cards into an empty database.
    pub demo: bool,
    /// How often prompts and dialplans are checked for changes (zero: only on SIGHUP).
    pub reload_every: Duration,
    /// The outbound SIP gateway for the calling service (IP:port); `None` disables calling.
    pub calling_gateway: Option<SocketAddr>,
    /// How long an outbound call may ring.
    pub calling_ring_timeout: Duration,
    /// How long before the money runs out the caller is warned.
    pub calling_warning_before: Duration,
    /// The calling service's toll-fraud limits.
    pub calling_limits: crate::topup::calling::CallLimits,
    /// Where escalated calls are transferred (REFER), e.g. `sip:agents@pbx.example.com`.
    pub agent_uri: Option<String>,
    /// SMS language files (`<lang>.toml`).
    pub sms_dir: PathBuf,
    pub sms: SmsConfig,
    /// Calls from Asterisk over ARI (section `[asterisk]`).
    pub asterisk: Option<AsteriskConfig>,
    /// Calls from FreeSWITCH over ESL + mod_audio_fork (section `[freeswitch]`).
    pub freeswitch: Option<FreeswitchConfig>,
}

/// How media reaches us from Asterisk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AriMedia {
    /// externalMedia over chan_websocket (we connect to Asterisk's `/media/<id>`).
    Websocket,
    /// externalMedia RTP over UDP to a port of ours.
    Rtp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsteriskConfig {
    /// Asterisk's HTTP server, e.g. `http://127.0.0.1:8088` (`/ari` is added).
    pub url: String,
    /// The Stasis application name the dialplan sends calls to.
    pub app: String,
    pub username: String,
    pub password: Secret,
    pub media: AriMedia,
    pub codec: Codec,
    /// Escalated calls continue in this dialplan context at the plan's transfer target.
    pub escalation_context: String,
    /// Where the calling service's calls go, e.g. `PJSIP/{number}@trunk`; `None`: off.
    pub calling_endpoint: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreeswitchConfig {
    /// The event socket (inbound mode), `host:port`.
    pub esl: String,
    pub password: Secret,
    /// Where our websocket server for mod_audio_fork listens.
    pub media_listen: SocketAddr,
    /// The same server as FreeSWITCH reaches it (`ws://host:port`); the call's UUID is added.
    pub media_url: String,
    /// Escalated calls are transferred to the plan's target in this XML context.
    pub escalation_context: String,
    /// Where the calling service's calls go, e.g. `sofia/gateway/trunk/{number}`; `None`: off.
    pub calling_gateway: Option<String>,
    /// The rate mod_audio_fork streams at both ways: 8000, or 16000 for wideband prompts
    /// (FreeSWITCH resamples to the caller's codec).
    pub sample_rate: u32,
}

/// The text channel. SMS are written and sent only when at least one SMSC is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmsConfig {
    /// Language of messages to numbers whose language is not known otherwise.
    pub language: String,
    /// Source address of outgoing SMS: `+E164`, a short code, or a name (≤ 11 characters).
    pub sender: String,
    /// How often prepaid accounts are checked for a low balance.
    pub alert_every: Duration,
    /// Attempts before a message the SMSC keeps refusing is marked failed.
    pub max_attempts: i64,
    /// The TLV carrying the SMSC's own id of an incoming message (duplicates are dropped by it).
    pub mo_id_tlv: u16,
    /// An incoming message without that id which repeats, word for word, one from the same
    /// sender to the same number within this time is taken as delivered again (0: never).
    pub mo_repeat_window: Duration,
    /// Ask for delivery receipts.
    pub receipts: bool,
    pub smscs: Vec<SmscConfig>,
}

/// One SMPP connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmscConfig {
    pub name: String,
    /// `host:port`.
    pub address: String,
    pub system_id: String,
    pub password: Secret,
    pub system_type: String,
    /// Destinations (E.164 prefixes with `+`) this connection carries; empty: all others.
    pub prefixes: Vec<String>,
    pub window: usize,
    pub enquire_link: Duration,
    pub response_timeout: Duration,
    /// Overrides `sms.sender` on this connection.
    pub sender: Option<String>,
}

impl SmsConfig {
    pub fn enabled(&self) -> bool {
        !self.smscs.is_empty()
    }

    /// The connection for `destination`: the longest matching prefix, else one without
    /// prefixes.
    pub fn route(&self, destination: &str) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (i, s) in self.smscs.iter().enumerate() {
            let len = if s.prefixes.is_empty() {
                Some(0)
            } else {
                s.prefixes
                    .iter()
                    .filter(|p| destination.starts_with(p.as_str()))
                    .map(|p| p.len())
                    .max()
            };
            if let Some(len) = len
                && best.is_none_or(|(_, l)| len > l)
            {
                best = Some((i, len));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// An HLR lookup provider.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HlrConfig {
    pub url: String,
    /// Environment variable holding the API key.
    pub api_key_env: Option<String>,
    pub timeout: Duration,
    pub cache_ttl: Duration,
}

/// Values given on the command line or in the environment; they win over the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub sip_listen: Option<String>,
    pub rtp_ports: Option<String>,
    pub http_listen: Option<String>,
    pub data_dir: Option<String>,
    pub prompts_dir: Option<String>,
    pub dialplans_dir: Option<String>,
    pub sms_dir: Option<String>,
    pub database_url: Option<String>,
}

impl Config {
    /// Reads `file` (if given), applies overrides, checks everything.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (origin, raw) = match file {
            Some(path) => {
                let origin = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                    origin: origin.clone(),
                    key: "-".into(),
                    reason: format!("cannot read: {e}"),
                })?;
                (origin.clone(), parse_raw(&origin, &text)?)
            }
            None => ("defaults".to_string(), RawConfig::default()),
        };
        let mut cfg = resolve(&origin, raw, overrides)?;
        #[cfg(unix)]
        if let Some(path) = file {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                cfg.warnings.extend(exposed_secrets(
                    &path.display().to_string(),
                    meta.permissions().mode(),
                    &cfg.inline_secrets,
                ));
            }
        }
        Ok(cfg)
    }

    /// Parses TOML text (for tests and `config check`).
    pub fn from_toml(
        origin: &str,
        text: &str,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        resolve(origin, parse_raw(origin, text)?, overrides)
    }
}

/// Keys of `raw` that carry a secret inline.
fn inline_secrets(raw: &RawConfig) -> Vec<String> {
    let mut keys = vec![];
    // postgres://user:password@host/db
    let url_has_password = |u: &str| {
        u.split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    };
    if raw.database.url.as_deref().is_some_and(url_has_password) {
        keys.push("database.url".to_string());
    }
    if raw.asterisk.as_ref().is_some_and(|a| a.password.is_some()) {
        keys.push("asterisk.password".to_string());
    }
    if raw
        .freeswitch
        .as_ref()
        .is_some_and(|f| f.password.is_some())
    {
        keys.push("freeswitch.password".to_string());
    }
    for (i, smsc) in raw.sms.smsc.iter().enumerate() {
        if smsc.password.is_some() {
            keys.push(format!("sms.smsc[{i}].password"));
        }
    }
    keys
}

/// Pure: the warning for a config file of permission bits `mode` that holds `secrets` inline
/// and that users other than its owner may read (as ssh warns of a readable private key).
pub fn exposed_secrets(path: &str, mode: u32, secrets: &[String]) -> Option<String> {
    if secrets.is_empty() || mode & 0o077 == 0 {
        return None;
    }
    Some(format!(
        "{path} holds {} and others may read it (mode {:03o}): run `chmod 600 {path}`, or \
         name environment variables instead (password_env, TOPUP_IVR_DATABASE_URL)",
        secrets.join(", "),
        mode & 0o777
    ))
}

fn parse_raw(origin: &str, text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
        origin: origin.into(),
        key: "-".into(),
        reason: one_line(&e.to_string()),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // A key written as `""` (TOML allows it) is named as it is written, not as nothing.
        let mut key = String::new();
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => {
                    key.push_str(&format!("[{index}]"));
                }
                other => {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    match other.to_string() {
                        k if k.is_empty() => key.push_str("\"\""),
                        k => key.push_str(&k),
                    }
                }
            }
        }
        if key.is_empty() {
            key.push('.');
        }
        ConfigError {
            origin: origin.into(),
            key,
            reason: one_line(&e.inner().to_string()),
        }
    })
}

/// toml errors draw a source excerpt; keep the position and the message on one line.
fn one_line(s: &str) -> String {
    let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let pos = lines.first().copied().unwrap_or("");
    let msg = lines.last().copied().unwrap_or("");
    if pos == msg || !pos.starts_with("TOML parse error") {
        msg.to_string()
    } else {
        format!(
            "{msg} ({})",
            pos.trim_start_matches("TOML parse error ").trim()
        )
    }
}

fn resolve(origin: &str, raw: RawConfig, o: &Overrides) -> Result<Config, ConfigError> {
    // The origin of a value: the flag/env if overridden, else the file.
    let err = |from_flag: bool, key: &str, reason: String| ConfigError {
        origin: if from_flag {
            "command line/environment".into()
        } else {
            origin.into()
        },
        key: key.into(),
        reason,
    };
    let pick = |flag: &Option<String>, file: &Option<String>, default: &str| -> (String, bool) {
        match (flag, file) {
            (Some(f), _) => (f.clone(), true),
            (None, Some(v)) => (v.clone(), false),
            (None, None) => (default.to_string(), false),
        }
    };
    let addr = |key: &str, (v, flag): (String, bool)| -> Result<SocketAddr, ConfigError> {
        v.trim().parse().map_err(|_| {
            err(
                flag,
                key,
                format!("`{v}` is not an address like 127.0.0.1:5060"),
            )
        })
    };
    let dur = |key: &str, v: &Option<String>, default: &str| -> Result<Duration, ConfigError> {
        parse_duration(v.as_deref().unwrap_or(default)).map_err(|r| err(false, key, r))
    };

    let sip_listen = addr(
        "sip.listen",
        pick(&o.sip_listen, &raw.sip.listen, "127.0.0.1:5060"),
    )?;
    let advertise = match &raw.sip.advertise {
        Some(a) => a.parse().map_err(|_| {
            err(
                false,
                "sip.advertise",
                format!("`{a}` is not an IP address"),
            )
        })?,
        None if sip_listen.ip().is_unspecified() => {
            return Err(err(
                false,
                "sip.advertise",
                "required when sip.listen is a wildcard address: the IP callers reach us on".into(),
            ));
        }
        None => sip_listen.ip(),
    };
    let max_calls = raw.sip.max_calls.unwrap_or(500);
    if max_calls == 0 {
        return Err(err(false, "sip.max_calls", "must be at least 1".into()));
    }
    // One source may hold half the calls (an SBC or proxy in front: list it as trusted).
    let per_source_calls = raw.sip.per_source_calls.unwrap_or((max_calls / 2).max(1));
    if per_source_calls == 0 {
        return Err(err(
            false,
            "sip.per_source_calls",
            "must be at least 1".into(),
        ));
    }
    let per_source_rate = raw.sip.per_source_rate.unwrap_or(50.0);
    if !(per_source_rate > 0.0 && per_source_rate.is_finite()) {
        return Err(err(
            false,
            "sip.per_source_rate",
            "must be a number of INVITEs a second above 0".into(),
        ));
    }
    let mut trusted = vec![];
    for t in raw.sip.trusted_sources.iter().flatten() {
        match t.parse::<std::net::IpAddr>() {
            Ok(ip) => trusted.push(ip),
            Err(_) => {
                return Err(err(
                    false,
                    "sip.trusted_sources",
                    format!("`{t}` is not an IP address"),
                ));
            }
        }
    }
    let per_source = crate::telephony::sip::admission::Limits {
        rate: per_source_rate,
        calls: per_source_calls,
        trusted,
    };
    let codecs = match &raw.sip.codecs {
        None => Codec::ALL.to_vec(),
        Some(list) => {
            let mut out = vec![];
            for c in list {
                out.push(Codec::from_name(c).ok_or_else(|| {
                    err(
                        false,
                        "sip.codecs",
                        format!("unknown codec `{c}` (PCMU or PCMA)"),
                    )
                })?);
            }
            if out.is_empty() {
                return Err(err(false, "sip.codecs", "needs at least one codec".into()));
            }
            out
        }
    };
    let t1 = dur("sip.t1", &raw.sip.t1, "500ms")?;
    if t1.is_zero() || t1 > Duration::from_secs(10) {
        return Err(err(false, "sip.t1", "must be between 1ms and 10s".into()));
    }
    let tsx = TsxConfig {
        t1,
        t2: (t1 * 8).max(Duration::from_secs(4)),
        ..TsxConfig::default()
    };

    let (ports, ports_flag) = pick(&o.rtp_ports, &raw.rtp.ports, "20000-29999");
    let rtp_ports = parse_port_range(&ports).map_err(|r| err(ports_flag, "rtp.ports", r))?;
    let inband_dtmf = match raw.rtp.inband_dtmf.as_deref().unwrap_or("auto") {
        "auto" => InbandDtmf::Auto,
        "always" => InbandDtmf::Always,
        "never" => InbandDtmf::Never,
        other => {
            return Err(err(
                false,
                "rtp.inband_dtmf",
                format!("`{other}`: expected auto, always or never"),
            ));
        }
    };
    let source = raw.rtp.source.as_deref().unwrap_or("learn");
    let rtp_source = crate::media::peer::SourcePolicy::from_name(source).ok_or_else(|| {
        err(
            false,
            "rtp.source",
            format!("`{source}`: expected learn or sdp"),
        )
    })?;
    let log_format = match raw.log.format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(err(
                false,
                "log.format",
                format!("`{other}`: expected text or json"),
            ));
        }
    };
    let log_level = raw.log.level.clone().unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
        return Err(err(
            false,
            "log.level",
            format!("`{log_level}` is not a log filter like \"info\" or \"topup_ivr=debug\""),
        ));
    }
    let path = |flag: &Option<String>, file: &Option<String>, default: &str| {
        PathBuf::from(pick(flag, file, default).0)
    };
    let data_dir = path(&o.data_dir, &raw.paths.data_dir, "data");
    let (url, url_flag) = pick(&o.database_url, &raw.database.url, "");
    let database_url = match url.trim() {
        "" => None,
        u if u.starts_with("postgres://")
            || u.starts_with("postgresql://")
            || u.starts_with("sqlite:") =>
        {
            Some(u.to_string())
        }
        _ => {
            return Err(err(
                url_flag,
                "database.url",
                "must start with postgres:// or sqlite: (empty: SQLite in the data directory)"
                    .into(),
            ));
        }
    };
    let defaults = crate::topup::auth::AuthPolicy::default();
    let auth = crate::topup::auth::AuthPolicy {
        max_pin_failures: raw
            .security
            .max_pin_failures
            .unwrap_or(defaults.max_pin_failures),
        ani_failures_per_hour: raw
            .security
            .ani_failures_per_hour
            .unwrap_or(defaults.ani_failures_per_hour),
        global_failures_per_minute: raw
            .security
            .global_failures_per_minute
            .unwrap_or(defaults.global_failures_per_minute),
        failure_delay: dur("security.failure_delay", &raw.security.failure_delay, "1s")?,
        max_failure_delay: dur(
            "security.max_failure_delay",
            &raw.security.max_failure_delay,
            "30s",
        )?,
    };
    if auth.max_pin_failures == 0
        || auth.ani_failures_per_hour == 0
        || auth.global_failures_per_minute == 0
    {
        return Err(err(false, "security", "limits must be at least 1".into()));
    }
    let hlr = match raw
        .lookup
        .hlr_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        None => None,
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => Some(HlrConfig {
            url: u.to_string(),
            api_key_env: raw.lookup.hlr_api_key_env.clone().filter(|v| !v.is_empty()),
            timeout: nonzero(
                dur("lookup.hlr_timeout", &raw.lookup.hlr_timeout, "2s")?,
                "lookup.hlr_timeout",
                origin,
            )?,
            cache_ttl: dur("lookup.hlr_cache_ttl", &raw.lookup.hlr_cache_ttl, "1h")?,
        }),
        Some(_) => {
            return Err(err(
                false,
                "lookup.hlr_url",
                "must be an http(s) URL".into(),
            ));
        }
    };

    Ok(Config {
        inline_secrets: inline_secrets(&raw),
        warnings: vec![],
        sip_listen,
        advertise,
        max_calls,
        per_source,
        answer_delay: dur("sip.answer_delay", &raw.sip.answer_delay, "0s")?,
        user_agent: raw
            .sip
            .user_agent
            .clone()
            // No version by default: it tells a scanner which flaws to try.
            .unwrap_or_else(|| "topup-ivr".into()),
        codecs,
        tsx,
        rtp_ports,
        rtp_timeout: nonzero(
            dur("rtp.timeout", &raw.rtp.timeout, "30s")?,
            "rtp.timeout",
            origin,
        )?,
        rtp_source,
        inband_dtmf,
        max_call_duration: nonzero(
            dur("calls.max_duration", &raw.calls.max_duration, "1h")?,
            "calls.max_duration",
            origin,
        )?,
        shutdown_grace: dur("calls.shutdown_grace", &raw.calls.shutdown_grace, "30s")?,
        http_listen: addr(
            "http.listen",
            pick(&o.http_listen, &raw.http.listen, "127.0.0.1:8080"),
        )?,
        http_max_connections: match raw.http.max_connections.unwrap_or(1024) {
            0 => {
                return Err(err(
                    false,
                    "http.max_connections",
                    "must be at least 1".into(),
                ));
            }
            n => n,
        },
        http_header_timeout: nonzero(
            dur("http.header_timeout", &raw.http.header_timeout, "10s")?,
            "http.header_timeout",
            origin,
        )?,
        http_secure_cookies: raw.http.secure_cookies.unwrap_or(false),
        pin_pepper_file: raw
            .security
            .pin_pepper_file
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("pin-pepper")),
        data_dir,
        database_url,
        auth,
        hlr,
        reconcile_every: nonzero(
            dur("topups.reconcile_every", &raw.topups.reconcile_every, "30s")?,
            "topups.reconcile_every",
            origin,
        )?,
        demo: raw.topups.demo.unwrap_or(true),
        reload_every: dur("paths.reload_every", &raw.paths.reload_every, "2s")?,
        calling_gateway: match raw
            .calling
            .gateway
            .as_deref()
            .map(str::trim)
            .filter(|g| !g.is_empty())
        {
            None => None,
            Some(g) => Some(g.parse().map_err(|_| {
                err(
                    false,
                    "calling.gateway",
                    format!("`{g}` is not an address like 192.0.2.1:5060"),
                )
            })?),
        },
        calling_ring_timeout: nonzero(
            dur("calling.ring_timeout", &raw.calling.ring_timeout, "45s")?,
            "calling.ring_timeout",
            origin,
        )?,
        calling_warning_before: dur("calling.warning_before", &raw.calling.warning_before, "60s")?,
        calling_limits: call_limits(origin, &raw.calling)?,
        agent_uri: match raw
            .escalation
            .agent_uri
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            None => None,
            Some(u)
                if crate::telephony::sip::message::Uri::parse(u)
                    .is_some_and(|x| x.scheme == "sip" || x.scheme == "sips") =>
            {
                Some(u.to_string())
            }
            Some(u) => {
                return Err(err(
                    false,
                    "escalation.agent_uri",
                    format!("`{u}` is not a sip: URI"),
                ));
            }
        },
        sms_dir: path(&o.sms_dir, &raw.paths.sms, "sms"),
        sms: sms(origin, &raw.sms)?,
        asterisk: raw
            .asterisk
            .as_ref()
            .map(|a| asterisk(origin, a))
            .transpose()?,
        freeswitch: raw
            .freeswitch
            .as_ref()
            .map(|f| freeswitch(origin, f))
            .transpose()?,
        prompts_dir: path(&o.prompts_dir, &raw.paths.prompts, "prompts"),
        dialplans_dir: path(&o.dialplans_dir, &raw.paths.dialplans, "dialplans"),
        log_level,
        log_format,
    })
}

fn sms(origin: &str, raw: &RawSms) -> Result<SmsConfig, ConfigError> {
    let err = |key: String, reason: String| ConfigError {
        origin: origin.into(),
        key,
        reason,
    };
    let dur = |key: &str, v: &Option<String>, default: &str| -> Result<Duration, ConfigError> {
        let d = parse_duration(v.as_deref().unwrap_or(default)).map_err(|r| err(key.into(), r))?;
        nonzero(d, key, origin)
    };
    let sender = raw.sender.clone().unwrap_or_else(|| "TopUp".into());
    check_sender(&sender).map_err(|r| err("sms.sender".into(), r))?;
    let language = raw.language.clone().unwrap_or_else(|| "en".into());
    if language.is_empty() || !language.bytes().all(|b| b.is_ascii_lowercase()) {
        return Err(err(
            "sms.language".into(),
            format!("`{language}` is not a language code like \"en\""),
        ));
    }
    let max_attempts = raw.max_attempts.unwrap_or(10);
    if !(1..=100).contains(&max_attempts) {
        return Err(err(
            "sms.max_attempts".into(),
            "must be between 1 and 100".into(),
        ));
    }
    let mut smscs: Vec<SmscConfig> = vec![];
    for (i, s) in raw.smsc.iter().enumerate() {
        let key = |k: &str| format!("sms.smsc[{i}].{k}");
        let name = s.name.clone().unwrap_or_else(|| format!("smsc{}", i + 1));
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(err(
                key("name"),
                format!("`{name}`: letters, digits, - and _ only"),
            ));
        }
        if smscs.iter().any(|o| o.name == name) {
            return Err(err(key("name"), format!("`{name}` is used twice")));
        }
        let address = s.address.clone().unwrap_or_default();
        match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => {
                return Err(err(
                    key("address"),
                    format!("`{address}` is not host:port like smsc.example.com:2775"),
                ));
            }
        }
        let system_id = s.system_id.clone().unwrap_or_default();
        if system_id.is_empty() || system_id.len() > 15 {
            return Err(err(
                key("system_id"),
                "required, 15 characters at most (SMPP 3.4)".into(),
            ));
        }
        let password = secret(origin, &key(""), &s.password, &s.password_env)?;
        if password.expose().len() > 8 {
            return Err(err(
                key("password"),
                "8 characters at most (SMPP 3.4)".into(),
            ));
        }
        let system_type = s.system_type.clone().unwrap_or_default();
        if system_type.len() > 12 {
            return Err(err(
                key("system_type"),
                "12 characters at most (SMPP 3.4)".into(),
            ));
        }
        for p in &s.prefixes {
            if !(p.starts_with('+') && p.len() > 1 && p[1..].bytes().all(|b| b.is_ascii_digit())) {
                return Err(err(
                    key("prefixes"),
                    format!("`{p}` is not an E.164 prefix like \"+52\""),
                ));
            }
        }
        let window = s.window.unwrap_or(10);
        if !(1..=1000).contains(&window) {
            return Err(err(key("window"), "must be between 1 and 1000".into()));
        }
        if let Some(sender) = &s.sender {
            check_sender(sender).map_err(|r| err(key("sender"), r))?;
        }
        smscs.push(SmscConfig {
            name,
            address,
            system_id,
            password,
            system_type,
            prefixes: s.prefixes.clone(),
            window,
            enquire_link: dur(&key("enquire_link"), &s.enquire_link, "30s")?,
            response_timeout: dur(&key("response_timeout"), &s.response_timeout, "10s")?,
            sender: s.sender.clone(),
        });
    }
    Ok(SmsConfig {
        language,
        sender,
        alert_every: dur("sms.alert_every", &raw.alert_every, "1m")?,
        max_attempts,
        mo_id_tlv: raw.mo_id_tlv.unwrap_or(0x001E),
        mo_repeat_window: dur("sms.mo_repeat_window", &raw.mo_repeat_window, "10m")?,
        receipts: raw.receipts.unwrap_or(true),
        smscs,
    })
}

/// A password given in the file (`password`) or, better, named by an environment variable
/// (`password_env`); `prefix` is the key path up to the last dot.
fn secret(
    origin: &str,
    prefix: &str,
    password: &Option<String>,
    password_env: &Option<String>,
) -> Result<Secret, ConfigError> {
    let err = |k: &str, reason: String| ConfigError {
        origin: origin.into(),
        key: format!("{prefix}{k}"),
        reason,
    };
    match (password, password_env) {
        (Some(_), Some(_)) => Err(err(
            "password",
            "give password or password_env, not both".into(),
        )),
        (Some(p), None) => Ok(Secret::new(p.clone())),
        (None, Some(var)) => std::env::var(var).map(Secret::new).map_err(|_| {
            err(
                "password_env",
                format!("the environment variable `{var}` is not set"),
            )
        }),
        (None, None) => Ok(Secret::default()),
    }
}

fn asterisk(origin: &str, raw: &RawAsterisk) -> Result<AsteriskConfig, ConfigError> {
    let err = |key: &str, reason: String| ConfigError {
        origin: origin.into(),
        key: format!("asterisk.{key}"),
        reason,
    };
    let url = raw
        .url
        .clone()
        .unwrap_or_else(|| "http://127.0.0.1:8088".into());
    let url = url.trim_end_matches('/').to_string();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    if rest.is_none_or(|r| r.is_empty() || r.contains('/')) {
        return Err(err(
            "url",
            format!("`{url}` is not Asterisk's HTTP server like http://127.0.0.1:8088"),
        ));
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    let app = raw.app.clone().unwrap_or_else(|| "topup-ivr".into());
    if !name_ok(&app) {
        return Err(err("app", format!("`{app}`: letters, digits, - _ . only")));
    }
    let username = raw.username.clone().unwrap_or_default();
    if username.is_empty() {
        return Err(err("username", "required (an ari.conf user)".into()));
    }
    let password = secret(origin, "asterisk.", &raw.password, &raw.password_env)?;
    let media = match raw.media.as_deref().unwrap_or("websocket") {
        "websocket" => AriMedia::Websocket,
        "rtp" => AriMedia::Rtp,
        m => return Err(err("media", format!("`{m}`: \"websocket\" or \"rtp\""))),
    };
    let codec = match raw.format.as_deref().unwrap_or("ulaw") {
        "ulaw" => Codec::Pcmu,
        "alaw" => Codec::Pcma,
        f => return Err(err("format", format!("`{f}`: \"ulaw\" or \"alaw\""))),
    };
    let escalation_context = raw
        .escalation_context
        .clone()
        .unwrap_or_else(|| "topup-agents".into());
    if !name_ok(&escalation_context) {
        return Err(err(
            "escalation_context",
            format!("`{escalation_context}`: letters, digits, - _ . only"),
        ));
    }
    let calling_endpoint = match raw.calling_endpoint.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(e)
            if e.contains("{number}") && e.contains('/') && !e.contains(char::is_whitespace) =>
        {
            Some(e.to_string())
        }
        Some(e) => {
            return Err(err(
                "calling_endpoint",
                format!("`{e}` is not a dial string with {{number}}, like PJSIP/{{number}}@trunk"),
            ));
        }
    };
    Ok(AsteriskConfig {
        url,
        app,
        username,
        password,
        media,
        codec,
        escalation_context,
        calling_endpoint,
    })
}

fn freeswitch(origin: &str, raw: &RawFreeswitch) -> Result<FreeswitchConfig, ConfigError> {
    let err = |key: &str, reason: String| ConfigError {
        origin: origin.into(),
        key: format!("freeswitch.{key}"),
        reason,
    };
    let esl = raw.esl.clone().unwrap_or_else(|| "127.0.0.1:8021".into());
    if !esl
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
    {
        return Err(err(
            "esl",
            format!("`{esl}` is not host:port like 127.0.0.1:8021"),
        ));
    }
    let password = secret(origin, "freeswitch.", &raw.password, &raw.password_env)?;
    if password.is_empty() {
        return Err(err(
            "password",
            "required (event_socket.conf.xml's password), best by password_env".into(),
        ));
    }
    let listen = raw
        .media_listen
        .clone()
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let media_listen: SocketAddr = listen.parse().map_err(|_| {
        err(
            "media_listen",
            format!("`{listen}` is not an address like 0.0.0.0:8090"),
        )
    })?;
    let media_url = raw
        .media_url
        .clone()
        .unwrap_or_else(|| format!("ws://{media_listen}"));
    let media_url = media_url.trim_end_matches('/').to_string();
    if !(media_url.starts_with("ws://") || media_url.starts_with("wss://"))
        || media_url.contains(' ')
    {
        return Err(err(
            "media_url",
            format!("`{media_url}` is not a ws:// or wss:// URL"),
        ));
    }
    let escalation_context = raw
        .escalation_context
        .clone()
        .unwrap_or_else(|| "default".into());
    if escalation_context.is_empty() || escalation_context.contains(char::is_whitespace) {
        return Err(err(
            "escalation_context",
            format!("`{escalation_context}` is not a context name"),
        ));
    }
    let calling_gateway = match raw.calling_gateway.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(g)
            if g.contains("{number}") && g.contains('/') && !g.contains(char::is_whitespace) =>
        {
            Some(g.to_string())
        }
        Some(g) => {
            return Err(err(
                "calling_gateway",
                format!(
                    "`{g}` is not a dial string with {{number}}, like sofia/gateway/trunk/{{number}}"
                ),
            ));
        }
    };
    let sample_rate = raw.sample_rate.unwrap_or(8000);
    if sample_rate != 8000 && sample_rate != 16000 {
        return Err(err(
            "sample_rate",
            format!("`{sample_rate}`: 8000 or 16000"),
        ));
    }
    Ok(FreeswitchConfig {
        esl,
        password,
        media_listen,
        media_url,
        escalation_context,
        calling_gateway,
        sample_rate,
    })
}

/// A source address SMPP can carry: `+` and up to 15 digits, up to 20 digits, or a name of
/// up to 11 GSM characters.
fn check_sender(s: &str) -> Result<(), String> {
    let ok = if let Some(d) = s.strip_prefix('+') {
        (1..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
    } else if s.bytes().all(|b| b.is_ascii_digit()) {
        (1..=20).contains(&s.len())
    } else {
        (1..=11).contains(&s.chars().count())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}`: +E164, a short code, or a name of up to 11 letters and digits"
        ))
    }
}

fn call_limits(
    origin: &str,
    raw: &RawCalling,
) -> Result<crate::topup::calling::CallLimits, ConfigError> {
    use crate::topup::money::Money;
    let err = |key: &str, reason: String| ConfigError {
        origin: origin.into(),
        key: key.into(),
        reason,
    };
    let defaults = crate::topup::calling::CallLimits::default();
    let moneys = |key: &str, v: &Option<Vec<String>>, default: Vec<Money>| {
        let Some(list) = v else {
            return Ok(default);
        };
        let mut out: Vec<Money> = vec![];
        for s in list {
            let m = Money::parse(s).map_err(|e| {
                err(
                    key,
                    format!("`{s}`: {e} (write an amount with its currency, like \"20.00USD\")"),
                )
            })?;
            if m.minor <= 0 {
                return Err(err(key, format!("`{s}` must be more than zero")));
            }
            if out.iter().any(|o| o.currency == m.currency) {
                return Err(err(key, format!("{} is listed twice", m.currency.code())));
            }
            out.push(m);
        }
        Ok(out)
    };
    let blocked_prefixes = match &raw.blocked_prefixes {
        None => defaults.blocked_prefixes,
        Some(list) => {
            for p in list {
                let digits = p.trim_start_matches('+');
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err(
                        "calling.blocked_prefixes",
                        format!("`{p}` is not a number prefix (digits, country code first)"),
                    ));
                }
            }
            list.iter()
                .map(|p| p.trim_start_matches('+').to_string())
                .collect()
        }
    };
    let max_calls_per_wallet = raw
        .max_calls_per_wallet
        .unwrap_or(defaults.max_calls_per_wallet);
    if max_calls_per_wallet == 0 {
        return Err(err(
            "calling.max_calls_per_wallet",
            "must be at least 1".into(),
        ));
    }
    Ok(crate::topup::calling::CallLimits {
        blocked_prefixes,
        max_calls_per_wallet,
        max_cost_per_call: moneys(
            "calling.max_cost_per_call",
            &raw.max_cost_per_call,
            defaults.max_cost_per_call,
        )?,
        max_cost_per_day: moneys(
            "calling.max_cost_per_day",
            &raw.max_cost_per_day,
            defaults.max_cost_per_day,
        )?,
    })
}

fn nonzero(d: Duration, key: &str, origin: &str) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(ConfigError {
            origin: origin.into(),
            key: key.into(),
            reason: "must be longer than zero".into(),
        })
    } else {
        Ok(d)
    }
}

/// "20000-29999" → (20000, 29999); needs at least two even ports.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("`{s}` is not a range like 20000-29999"))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .map_err(|_| format!("`{lo}` is not a port"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .map_err(|_| format!("`{hi}` is not a port"))?;
    if lo < 1024 || lo >= hi {
        return Err(format!("`{s}`: need 1024 ≤ low < high"));
    }
    if (hi - lo) < 2 {
        return Err(format!(
            "`{s}`: the range must hold at least one even port pair"
        ));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml("test.toml", text, &Overrides::default())
    }

    #[test]
    fn defaults_run_on_loopback() {
        let c = load("").unwrap();
        assert_eq!(c.sip_listen, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(c.rtp_ports, (20000, 29999));
        assert_eq!(c.tsx.t1, Duration::from_millis(500));
        assert_eq!(c.codecs, Codec::ALL);
    }

    #[test]
    fn unknown_keys_are_rejected_with_file_and_key() {
        let e = load("[sip]\nlisten = \"127.0.0.1:5070\"\nlisen = 1\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("test.toml: key `sip.lisen`"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
        let e = load("[media]\n").unwrap_err();
        assert_eq!(e.key, "media");
        // Found by the config fuzz target: an empty key was named as nothing.
        assert_eq!(load("\"\" = 4\n").unwrap_err().key, "\"\"");
        assert_eq!(load("[sip]\n\"\" = 4\n").unwrap_err().key, "sip.\"\"");
    }

    #[test]
    fn bad_values_are_rejected_with_the_reason() {
        let e = load("[sip]\nlisten = 5060\n").unwrap_err();
        assert_eq!(e.key, "sip.listen");
        let e = load("[sip]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(e.to_string().contains("`nowhere` is not an address"), "{e}");
        let e = load("[rtp]\nports = \"30000-20000\"\n").unwrap_err();
        assert_eq!(e.key, "rtp.ports");
        let e = load("[rtp]\ntimeout = \"forever\"\n").unwrap_err();
        assert!(
            e.to_string().contains("rtp.timeout") && e.to_string().contains("forever"),
            "{e}"
        );
        let e = load("[sip]\ncodecs = [\"G729\"]\n").unwrap_err();
        assert!(e.to_string().contains("G729"));
        let e = load("[sip]\nlisten = \"0.0.0.0:5060\"\n").unwrap_err();
        assert_eq!(e.key, "sip.advertise");
        let e = load("[sip\n").unwrap_err();
        assert!(e.to_string().starts_with("test.toml:"), "{e}");
    }

    #[test]
    fn flags_win_over_the_file_and_are_named_in_errors() {
        let o = Overrides {
            sip_listen: Some("127.0.0.1:5090".into()),
            rtp_ports: Some("40000-40100".into()),
            sms_dir: Some("/srv/sms".into()),
            ..Default::default()
        };
        let c = Config::from_toml(
            "f.toml",
            "[sip]\nlisten = \"127.0.0.1:5070\"\n[paths]\nsms = \"texts\"\n",
            &o,
        )
        .unwrap();
        assert_eq!(c.sip_listen.port(), 5090);
        assert_eq!(c.rtp_ports, (40000, 40100));
        assert_eq!(c.sms_dir, std::path::PathBuf::from("/srv/sms"));
        let bad = Overrides {
            rtp_ports: Some("x".into()),
            ..Default::default()
        };
        let e = Config::from_toml("f.toml", "", &bad).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("command line/environment: key `rtp.ports`"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod sms_tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml("t.toml", text, &Overrides::default())
    }

    #[test]
    fn smscs_are_read_checked_and_routed_by_the_longest_prefix() {
        let c = load(
            "[sms]\nsender = \"+15550001\"\n\
             [[sms.smsc]]\nname = \"main\"\naddress = \"127.0.0.1:2775\"\nsystem_id = \"topup\"\npassword = \"pw\"\n\
             [[sms.smsc]]\nname = \"mx\"\naddress = \"smsc.mx:2775\"\nsystem_id = \"topup\"\nprefixes = [\"+52\"]\n\
             [[sms.smsc]]\nname = \"telcel\"\naddress = \"smsc.mx:2776\"\nsystem_id = \"topup\"\nprefixes = [\"+5255\", \"+5233\"]\nwindow = 4\n",
        )
        .unwrap();
        let sms = &c.sms;
        assert!(sms.enabled());
        assert_eq!(sms.smscs[2].window, 4);
        assert_eq!(sms.route("+525512345678"), Some(2));
        assert_eq!(sms.route("+528112345678"), Some(1));
        assert_eq!(sms.route("+12015550100"), Some(0));
        // The password never prints.
        let shown = format!("{c:?}");
        assert!(
            shown.contains("<redacted>") && !shown.contains("\"pw\""),
            "{shown}"
        );
        // Without a default connection other numbers have no route.
        let c = load("[[sms.smsc]]\naddress = \"h:1\"\nsystem_id = \"a\"\nprefixes = [\"+52\"]\n")
            .unwrap();
        assert_eq!(c.sms.route("+12015550100"), None);
        assert_eq!(c.sms.smscs[0].name, "smsc1");
        assert!(!load("").unwrap().sms.enabled());
    }

    #[test]
    fn bad_smsc_settings_name_the_key() {
        let smsc = |extra: &str| {
            load(&format!(
                "[[sms.smsc]]\naddress = \"h:2775\"\nsystem_id = \"topup\"\n{extra}\n"
            ))
            .unwrap_err()
        };
        assert_eq!(smsc("password = \"123456789\"").key, "sms.smsc[0].password");
        assert_eq!(
            smsc("system_type = \"abcdefghijklm\"").key,
            "sms.smsc[0].system_type"
        );
        assert_eq!(smsc("prefixes = [\"52\"]").key, "sms.smsc[0].prefixes");
        assert_eq!(smsc("window = 0").key, "sms.smsc[0].window");
        assert_eq!(
            smsc("sender = \"A very long sender name\"").key,
            "sms.smsc[0].sender"
        );
        let e = smsc("password_env = \"TOPUP_IVR_NO_SUCH_VARIABLE\"");
        assert!(e.to_string().contains("TOPUP_IVR_NO_SUCH_VARIABLE"), "{e}");
        assert_eq!(smsc("pasword = \"x\"").key, "sms.smsc[0].pasword");
        let e = load("[[sms.smsc]]\naddress = \"nowhere\"\nsystem_id = \"a\"\n").unwrap_err();
        assert_eq!(e.key, "sms.smsc[0].address");
        let e = load("[[sms.smsc]]\naddress = \"h:1\"\n").unwrap_err();
        assert_eq!(e.key, "sms.smsc[0].system_id");
        let e = load("[[sms.smsc]]\nname=\"a\"\naddress = \"h:1\"\nsystem_id=\"x\"\n[[sms.smsc]]\nname=\"a\"\naddress = \"h:1\"\nsystem_id=\"x\"\n").unwrap_err();
        assert!(e.to_string().contains("used twice"), "{e}");
        assert_eq!(
            load("[sms]\nmax_attempts = 0\n").unwrap_err().key,
            "sms.max_attempts"
        );
        assert_eq!(
            load("[sms]\nalert_every = \"0s\"\n").unwrap_err().key,
            "sms.alert_every"
        );
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// The documented example (docker/topup-ivr.toml) is valid and states the defaults.
    #[test]
    fn the_example_config_parses_and_matches_the_defaults() {
        let text = include_str!("../docker/topup-ivr.toml");
        let c = Config::from_toml("docker/topup-ivr.toml", text, &Overrides::default()).unwrap();
        let d = Config::from_toml("defaults", "", &Overrides::default()).unwrap();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }
}

#[cfg(test)]
mod softswitch_tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml("t.toml", text, &Overrides::default())
    }

    #[test]
    fn asterisk_and_freeswitch_sections_are_read_with_defaults() {
        let c = load(
            "[asterisk]\nurl = \"http://10.0.0.5:8088/\"\nusername = \"topup\"\npassword = \"Ari-S3cret\"\n\
             [freeswitch]\npassword = \"Esl-S3cret\"\nmedia_listen = \"0.0.0.0:9000\"\nmedia_url = \"ws://10.0.0.6:9000\"\n",
        )
        .unwrap();
        let a = c.asterisk.as_ref().unwrap();
        assert_eq!(a.url, "http://10.0.0.5:8088");
        assert_eq!(a.app, "topup-ivr");
        assert_eq!(a.media, AriMedia::Websocket);
        assert_eq!(a.codec, Codec::Pcmu);
        assert_eq!(a.escalation_context, "topup-agents");
        let f = c.freeswitch.as_ref().unwrap();
        assert_eq!(f.esl, "127.0.0.1:8021");
        assert_eq!(f.media_url, "ws://10.0.0.6:9000");
        assert_eq!(f.escalation_context, "default");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("Ari-S3cret") && !shown.contains("Esl-S3cret"),
            "{shown}"
        );
        assert!(load("").unwrap().asterisk.is_none());
    }

    #[test]
    fn bad_softswitch_settings_name_the_key() {
        for (text, key) in [
            (
                "[asterisk]\nurl = \"10.0.0.5:8088\"\nusername = \"u\"\n",
                "asterisk.url",
            ),
            ("[asterisk]\n", "asterisk.username"),
            (
                "[asterisk]\nusername = \"u\"\nmedia = \"sctp\"\n",
                "asterisk.media",
            ),
            (
                "[asterisk]\nusername = \"u\"\nformat = \"opus\"\n",
                "asterisk.format",
            ),
            (
                "[asterisk]\nusername = \"u\"\napp = \"my app\"\n",
                "asterisk.app",
            ),
            (
                "[asterisk]\nusername = \"u\"\npassword = \"a\"\npassword_env = \"B\"\n",
                "asterisk.password",
            ),
            ("[freeswitch]\n", "freeswitch.password"),
            (
                "[asterisk]\nusername = \"u\"\ncalling_endpoint = \"PJSIP/trunk\"\n",
                "asterisk.calling_endpoint",
            ),
            (
                "[freeswitch]\npassword = \"p\"\ncalling_gateway = \"sofia/gw {number}\"\n",
                "freeswitch.calling_gateway",
            ),
            (
                "[freeswitch]\npassword = \"p\"\nesl = \"fs\"\n",
                "freeswitch.esl",
            ),
            (
                "[freeswitch]\npassword = \"p\"\nmedia_url = \"http://x\"\n",
                "freeswitch.media_url",
            ),
            (
                "[freeswitch]\npassword = \"p\"\nsample_rate = 44100\n",
                "freeswitch.sample_rate",
            ),
            (
                "[freeswitch]\npassword_env = \"TOPUP_IVR_NO_SUCH_VARIABLE\"\n",
                "freeswitch.password_env",
            ),
        ] {
            let e = load(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
    }

    #[test]
    fn calling_limits_and_pin_pauses_are_read_and_checked() {
        let c = load(
            "[calling]\nblocked_prefixes = [\"+979\", \"4470\"]\nmax_calls_per_wallet = 1\n\
             max_cost_per_call = [\"5.00USD\", \"100000VND\"]\nmax_cost_per_day = [\"9.00USD\"]\n\
             [security]\nfailure_delay = \"250ms\"\nmax_failure_delay = \"4s\"\n",
        )
        .unwrap();
        let l = &c.calling_limits;
        assert_eq!(l.blocked_prefixes, ["979", "4470"]);
        assert_eq!(l.max_calls_per_wallet, 1);
        assert_eq!(l.max_cost_per_call.len(), 2);
        assert_eq!(l.max_cost_per_day[0].to_string(), "9.00 USD");
        assert_eq!(c.auth.failure_delay, Duration::from_millis(250));
        assert_eq!(c.auth.max_failure_delay, Duration::from_secs(4));
        let d = load("").unwrap();
        assert_eq!(
            d.calling_limits,
            crate::topup::calling::CallLimits::default()
        );
        for (text, key, says) in [
            (
                "[calling]\nblocked_prefixes = [\"44x\"]\n",
                "calling.blocked_prefixes",
                "44x",
            ),
            (
                "[calling]\nblocked_prefixes = [\"\"]\n",
                "calling.blocked_prefixes",
                "prefix",
            ),
            (
                "[calling]\nmax_calls_per_wallet = 0\n",
                "calling.max_calls_per_wallet",
                "at least 1",
            ),
            (
                "[calling]\nmax_cost_per_call = [\"5\"]\n",
                "calling.max_cost_per_call",
                "currency",
            ),
            (
                "[calling]\nmax_cost_per_day = [\"0USD\"]\n",
                "calling.max_cost_per_day",
                "more than zero",
            ),
            (
                "[calling]\nmax_cost_per_day = [\"1USD\", \"2USD\"]\n",
                "calling.max_cost_per_day",
                "twice",
            ),
            (
                "[security]\nfailure_delay = \"soon\"\n",
                "security.failure_delay",
                "soon",
            ),
        ] {
            let e = load(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.to_string().contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn inline_secrets_in_a_file_others_may_read_are_warned_of() {
        let c = load(
            "[database]\nurl = \"postgres://ivr:hunter2@db/ivr\"\n\
             [asterisk]\nurl = \"http://127.0.0.1:8088\"\nusername = \"ivr\"\npassword = \"x\"\n\
             [[sms.smsc]]\naddress = \"127.0.0.1:2775\"\nsystem_id = \"a\"\npassword = \"y\"\n",
        );
        let c = c.unwrap();
        assert_eq!(
            c.inline_secrets,
            ["database.url", "asterisk.password", "sms.smsc[0].password"]
        );
        let w = exposed_secrets("/etc/t.toml", 0o100644, &c.inline_secrets).unwrap();
        assert!(
            w.contains("chmod 600 /etc/t.toml") && w.contains("mode 644"),
            "{w}"
        );
        assert!(w.contains("database.url"), "{w}");
        assert!(
            !w.contains("hunter2"),
            "the warning never shows the secret: {w}"
        );
        assert_eq!(
            exposed_secrets("/etc/t.toml", 0o100600, &c.inline_secrets),
            None
        );
        assert_eq!(exposed_secrets("/etc/t.toml", 0o100644, &[]), None);
        // Secrets from the environment are not inline.
        let env = load("[database]\nurl = \"postgres://ivr@db/ivr\"\n").unwrap();
        assert!(env.inline_secrets.is_empty());
    }
}
