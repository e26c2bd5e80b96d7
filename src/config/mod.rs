//! Configuration: a TOML file (every key optional), then environment variables and flags for
//! the essentials. Raw serde structs (`raw`) only validate shape; [`Config`] is the resolved
//! result, in the file's sections (`resolve` checks each).
//! Unknown keys and bad values stop the start with the file, the key and the reason.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::media::g711::Codec;
use topup_sip::transaction::TsxConfig;

mod raw;
mod resolve;
#[cfg(test)]
mod tests;

use raw::RawConfig;
use resolve::resolve;

/// A config problem: where (file or flag), which key (none for the file as a whole), and why.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {}{reason}", if key.is_empty() { String::new() } else { format!("key `{key}`: ") })]
pub struct ConfigError {
    pub origin: String,
    pub key: String,
    pub reason: String,
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

/// The resolved configuration, in the sections of the file.
#[derive(Clone, Debug)]
pub struct Config {
    /// Keys of the file that hold a secret written inline (a password, a database URL with
    /// its password) rather than named by `password_env` / the environment.
    pub inline_secrets: Vec<String>,
    /// What is wrong but not fatal about the configuration (logged when the service starts).
    pub warnings: Vec<String>,
    pub sip: SipSettings,
    pub rtp: RtpSettings,
    pub calls: CallSettings,
    pub http: HttpSettings,
    pub paths: Paths,
    pub log: LogSettings,
    /// `postgres://...`, or `None` for SQLite in the data directory (`[database] url`).
    pub database_url: Option<String>,
    pub security: SecuritySettings,
    /// The HLR lookup provider (`[lookup]`), if any.
    pub hlr: Option<HlrConfig>,
    pub topups: TopupSettings,
    pub calling: CallingSettings,
    /// Where escalated calls are transferred (REFER), e.g. `sip:agents@pbx.example.com`
    /// (`[escalation] agent_uri`).
    pub agent_uri: Option<String>,
    pub sms: SmsConfig,
    /// Calls from Asterisk over ARI (section `[asterisk]`).
    pub asterisk: Option<AsteriskConfig>,
    /// Calls from FreeSWITCH over ESL + mod_audio_fork (section `[freeswitch]`).
    pub freeswitch: Option<FreeswitchConfig>,
}

/// `[sip]`: the built-in SIP edge.
#[derive(Clone, Debug)]
pub struct SipSettings {
    pub listen: SocketAddr,
    /// Address written into Via, Contact and SDP.
    pub advertise: IpAddr,
    /// Calls at once on every edge (admission).
    pub max_calls: usize,
    /// Per source host: calls at once, INVITEs a second, and the hosts exempt (see
    /// telephony::sip::admission).
    pub per_source: topup_sip::admission::Limits,
    pub answer_delay: Duration,
    pub user_agent: String,
    /// Codecs accepted, in our order of preference when the caller has none.
    pub codecs: Vec<Codec>,
    pub tsx: TsxConfig,
}

/// `[rtp]`: media.
#[derive(Clone, Debug)]
pub struct RtpSettings {
    /// Even RTP ports are used, each call gets one; RTCP (port + 1) is not bound.
    pub ports: (u16, u16),
    pub timeout: Duration,
    /// Which sources a call takes media from (see media::peer).
    pub source: crate::media::peer::SourcePolicy,
    pub inband_dtmf: InbandDtmf,
}

/// `[calls]`.
#[derive(Clone, Debug)]
pub struct CallSettings {
    pub max_duration: Duration,
    /// How long calls in progress may finish when the service stops.
    pub shutdown_grace: Duration,
}

/// `[http]`: the API, console, staff pages, health and metrics.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    /// Connections open at once at most; more are closed as they come.
    pub max_connections: usize,
    /// How long a client has to send a request's headers (and an idle connection is kept).
    pub header_timeout: Duration,
    /// Mark the session cookie `Secure` (behind TLS).
    pub secure_cookies: bool,
}

/// `[paths]`: where the service's files are.
#[derive(Clone, Debug)]
pub struct Paths {
    pub data_dir: PathBuf,
    pub prompts: PathBuf,
    pub dialplans: PathBuf,
    /// SMS language files (`<lang>.toml`).
    pub sms: PathBuf,
    /// How often prompts and dialplans are checked for changes (zero: only on SIGHUP).
    pub reload_every: Duration,
}

/// `[log]`.
#[derive(Clone, Debug)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

/// `[security]`: PIN attempts and the pepper.
#[derive(Clone, Debug)]
pub struct SecuritySettings {
    pub auth: crate::topup::auth::AuthPolicy,
    pub pin_pepper_file: PathBuf,
}

/// `[topups]`.
#[derive(Clone, Debug)]
pub struct TopupSettings {
    pub reconcile_every: Duration,
    /// Seed the demo carriers, accounts and cards into an empty database.
    pub demo: bool,
}

/// `[calling]`: the calling service.
#[derive(Clone, Debug)]
pub struct CallingSettings {
    /// The outbound SIP gateway (IP:port); `None` disables calling on the built-in SIP edge.
    pub gateway: Option<SocketAddr>,
    /// How long an outbound call may ring.
    pub ring_timeout: Duration,
    /// How long before the money runs out the caller is warned.
    pub warning_before: Duration,
    /// Toll-fraud limits.
    pub limits: crate::topup::calling::CallLimits,
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
                    key: String::new(),
                    reason: format!("cannot read the configuration file: {e}"),
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
    let de = toml::Deserializer::parse(text).map_err(|e| {
        // Where the mistake is, as `file:line:col`, and the parser's words for it.
        let at = e.span().map(|span| {
            let (line, col) = topup_values::textfile::line_col(text, span.start);
            format!("{origin}:{line}:{col}")
        });
        ConfigError {
            origin: at.unwrap_or_else(|| origin.into()),
            key: String::new(),
            reason: one_line(e.message()),
        }
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
