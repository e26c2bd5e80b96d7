//! Configuration: a TOML file (every key optional), then environment variables and flags for
//! the essentials. Raw serde structs only validate shape; [`Config`] is the resolved result.
//! Unknown keys and bad values stop the start with the file, the key and the reason.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::media::g711::Codec;
use crate::telephony::sip::transaction::TsxConfig;

/// A config problem: where (file or flag), which key, and why.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: key `{key}`: {reason}")]
pub struct ConfigError {
    pub origin: String,
    pub key: String,
    pub reason: String,
}

/// Deserializes a duration written like "500ms", "30s", "5m" or "1h 30m".
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration like \"500ms\", \"30s\" or \"5m\" ({e})"))
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
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawCalling {
    gateway: Option<String>,
    ring_timeout: Option<String>,
    warning_before: Option<String>,
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
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawRtp {
    ports: Option<String>,
    timeout: Option<String>,
    inband_dtmf: Option<String>,
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
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawPaths {
    data_dir: Option<String>,
    prompts: Option<String>,
    dialplans: Option<String>,
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

/// The resolved configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub sip_listen: SocketAddr,
    /// Address written into Via, Contact and SDP.
    pub advertise: IpAddr,
    pub max_calls: usize,
    pub answer_delay: Duration,
    pub user_agent: String,
    /// Codecs accepted, in our order of preference when the caller has none.
    pub codecs: Vec<Codec>,
    pub tsx: TsxConfig,
    /// Even RTP ports are used, each call gets one; RTCP (port + 1) is not bound.
    pub rtp_ports: (u16, u16),
    pub rtp_timeout: Duration,
    pub inband_dtmf: InbandDtmf,
    pub max_call_duration: Duration,
    pub shutdown_grace: Duration,
    pub http_listen: SocketAddr,
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
    /// Where escalated calls are transferred (REFER), e.g. `sip:agents@pbx.example.com`.
    pub agent_uri: Option<String>,
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
        resolve(&origin, raw, overrides)
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

fn parse_raw(origin: &str, text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError {
        origin: origin.into(),
        key: "-".into(),
        reason: one_line(&e.to_string()),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| ConfigError {
        origin: origin.into(),
        key: e.path().to_string(),
        reason: one_line(&e.inner().to_string()),
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
        sip_listen,
        advertise,
        max_calls,
        answer_delay: dur("sip.answer_delay", &raw.sip.answer_delay, "0s")?,
        user_agent: raw
            .sip
            .user_agent
            .clone()
            .unwrap_or_else(|| format!("topup-ivr/{}", env!("CARGO_PKG_VERSION"))),
        codecs,
        tsx,
        rtp_ports,
        rtp_timeout: nonzero(
            dur("rtp.timeout", &raw.rtp.timeout, "30s")?,
            "rtp.timeout",
            origin,
        )?,
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
        prompts_dir: path(&o.prompts_dir, &raw.paths.prompts, "prompts"),
        dialplans_dir: path(&o.dialplans_dir, &raw.paths.dialplans, "dialplans"),
        log_level,
        log_format,
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
            ..Default::default()
        };
        let c = Config::from_toml("f.toml", "[sip]\nlisten = \"127.0.0.1:5070\"\n", &o).unwrap();
        assert_eq!(c.sip_listen.port(), 5090);
        assert_eq!(c.rtp_ports, (40000, 40100));
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
