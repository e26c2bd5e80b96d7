//! From the file as written (and the overrides) to the checked [`Config`], one function per
//! section. Every refusal names where the value came from, the key and why.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::*;
use super::*;
use crate::textfile::parse_duration;

/// Where values come from while resolving: the file (`origin`) or the overrides.
struct Cx<'a> {
    origin: &'a str,
    o: &'a Overrides,
}

impl Cx<'_> {
    /// A refusal of `key`, from the flag/env if it was overridden, else from the file.
    fn err(&self, from_flag: bool, key: &str, reason: String) -> ConfigError {
        ConfigError {
            origin: if from_flag {
                "command line/environment".into()
            } else {
                self.origin.into()
            },
            key: key.into(),
            reason,
        }
    }

    /// The flag's value, else the file's, else `default`; and whether it came from the flag.
    fn pick(&self, flag: &Option<String>, file: &Option<String>, default: &str) -> (String, bool) {
        match (flag, file) {
            (Some(f), _) => (f.clone(), true),
            (None, Some(v)) => (v.clone(), false),
            (None, None) => (default.to_string(), false),
        }
    }

    fn addr(&self, key: &str, (v, flag): (String, bool)) -> Result<SocketAddr, ConfigError> {
        v.trim().parse().map_err(|_| {
            self.err(
                flag,
                key,
                format!("`{v}` is not an address like 127.0.0.1:5060"),
            )
        })
    }

    fn dur(&self, key: &str, v: &Option<String>, default: &str) -> Result<Duration, ConfigError> {
        parse_duration(v.as_deref().unwrap_or(default)).map_err(|r| self.err(false, key, r))
    }

    /// As [`Cx::dur`], refusing zero.
    fn nonzero(
        &self,
        key: &str,
        v: &Option<String>,
        default: &str,
    ) -> Result<Duration, ConfigError> {
        nonzero(self.dur(key, v, default)?, key, self.origin)
    }

    fn path(&self, flag: &Option<String>, file: &Option<String>, default: &str) -> PathBuf {
        PathBuf::from(self.pick(flag, file, default).0)
    }
}

pub(super) fn resolve(origin: &str, raw: RawConfig, o: &Overrides) -> Result<Config, ConfigError> {
    let cx = Cx { origin, o };
    let paths = paths(&cx, &raw.paths)?;
    Ok(Config {
        inline_secrets: inline_secrets(&raw),
        warnings: vec![],
        sip: sip(&cx, &raw.sip)?,
        rtp: rtp(&cx, &raw.rtp)?,
        calls: CallSettings {
            max_duration: cx.nonzero("calls.max_duration", &raw.calls.max_duration, "1h")?,
            shutdown_grace: cx.dur("calls.shutdown_grace", &raw.calls.shutdown_grace, "30s")?,
        },
        http: http(&cx, &raw.http)?,
        log: log(&cx, &raw.log)?,
        database_url: database_url(&cx, &raw.database)?,
        security: security(&cx, &raw.security, &paths.data_dir)?,
        hlr: lookup(&cx, &raw.lookup)?,
        topups: TopupSettings {
            reconcile_every: cx.nonzero(
                "topups.reconcile_every",
                &raw.topups.reconcile_every,
                "30s",
            )?,
            demo: raw.topups.demo.unwrap_or(true),
        },
        calling: calling(&cx, &raw.calling)?,
        agent_uri: agent_uri(&cx, &raw.escalation)?,
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
        paths,
    })
}

fn sip(cx: &Cx, raw: &RawSip) -> Result<SipSettings, ConfigError> {
    let err = |flag, key: &str, reason| cx.err(flag, key, reason);
    let listen = cx.addr(
        "sip.listen",
        cx.pick(&cx.o.sip_listen, &raw.listen, "127.0.0.1:5060"),
    )?;
    let advertise = match &raw.advertise {
        Some(a) => a.parse().map_err(|_| {
            err(
                false,
                "sip.advertise",
                format!("`{a}` is not an IP address"),
            )
        })?,
        None if listen.ip().is_unspecified() => {
            return Err(err(
                false,
                "sip.advertise",
                "required when sip.listen is a wildcard address: the IP callers reach us on".into(),
            ));
        }
        None => listen.ip(),
    };
    let max_calls = raw.max_calls.unwrap_or(500);
    if max_calls == 0 {
        return Err(err(false, "sip.max_calls", "must be at least 1".into()));
    }
    // One source may hold half the calls (an SBC or proxy in front: list it as trusted).
    let per_source_calls = raw.per_source_calls.unwrap_or((max_calls / 2).max(1));
    if per_source_calls == 0 {
        return Err(err(
            false,
            "sip.per_source_calls",
            "must be at least 1".into(),
        ));
    }
    let per_source_rate = raw.per_source_rate.unwrap_or(50.0);
    if !(per_source_rate > 0.0 && per_source_rate.is_finite()) {
        return Err(err(
            false,
            "sip.per_source_rate",
            "must be a number of INVITEs a second above 0".into(),
        ));
    }
    let mut trusted = vec![];
    for t in raw.trusted_sources.iter().flatten() {
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
    let codecs = match &raw.codecs {
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
    let t1 = cx.dur("sip.t1", &raw.t1, "500ms")?;
    if t1.is_zero() || t1 > Duration::from_secs(10) {
        return Err(err(false, "sip.t1", "must be between 1ms and 10s".into()));
    }
    Ok(SipSettings {
        listen,
        advertise,
        max_calls,
        per_source: topup_sip::admission::Limits {
            rate: per_source_rate,
            calls: per_source_calls,
            trusted,
        },
        answer_delay: cx.dur("sip.answer_delay", &raw.answer_delay, "0s")?,
        user_agent: raw
            .user_agent
            .clone()
            // No version by default: it tells a scanner which flaws to try.
            .unwrap_or_else(|| "topup-ivr".into()),
        codecs,
        tsx: TsxConfig {
            t1,
            t2: (t1 * 8).max(Duration::from_secs(4)),
            ..TsxConfig::default()
        },
    })
}

fn rtp(cx: &Cx, raw: &RawRtp) -> Result<RtpSettings, ConfigError> {
    let err = |flag, key: &str, reason| cx.err(flag, key, reason);
    let (ports, ports_flag) = cx.pick(&cx.o.rtp_ports, &raw.ports, "20000-29999");
    let ports = parse_port_range(&ports).map_err(|r| err(ports_flag, "rtp.ports", r))?;
    let inband_dtmf = match raw.inband_dtmf.as_deref().unwrap_or("auto") {
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
    let source = raw.source.as_deref().unwrap_or("learn");
    let source = crate::media::peer::SourcePolicy::from_name(source).ok_or_else(|| {
        err(
            false,
            "rtp.source",
            format!("`{source}`: expected learn or sdp"),
        )
    })?;
    Ok(RtpSettings {
        ports,
        timeout: cx.nonzero("rtp.timeout", &raw.timeout, "30s")?,
        source,
        inband_dtmf,
    })
}

fn http(cx: &Cx, raw: &RawHttp) -> Result<HttpSettings, ConfigError> {
    Ok(HttpSettings {
        listen: cx.addr(
            "http.listen",
            cx.pick(&cx.o.http_listen, &raw.listen, "127.0.0.1:8080"),
        )?,
        max_connections: match raw.max_connections.unwrap_or(1024) {
            0 => {
                return Err(cx.err(false, "http.max_connections", "must be at least 1".into()));
            }
            n => n,
        },
        header_timeout: cx.nonzero("http.header_timeout", &raw.header_timeout, "10s")?,
        secure_cookies: raw.secure_cookies.unwrap_or(false),
    })
}

fn paths(cx: &Cx, raw: &RawPaths) -> Result<Paths, ConfigError> {
    Ok(Paths {
        data_dir: cx.path(&cx.o.data_dir, &raw.data_dir, "data"),
        prompts: cx.path(&cx.o.prompts_dir, &raw.prompts, "prompts"),
        dialplans: cx.path(&cx.o.dialplans_dir, &raw.dialplans, "dialplans"),
        sms: cx.path(&cx.o.sms_dir, &raw.sms, "sms"),
        reload_every: cx.dur("paths.reload_every", &raw.reload_every, "2s")?,
    })
}

fn log(cx: &Cx, raw: &RawLog) -> Result<LogSettings, ConfigError> {
    let format = match raw.format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(cx.err(
                false,
                "log.format",
                format!("`{other}`: expected text or json"),
            ));
        }
    };
    let level = raw.level.clone().unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        return Err(cx.err(
            false,
            "log.level",
            format!("`{level}` is not a log filter like \"info\" or \"topup_ivr=debug\""),
        ));
    }
    Ok(LogSettings { level, format })
}

fn database_url(cx: &Cx, raw: &RawDatabase) -> Result<Option<String>, ConfigError> {
    let (url, url_flag) = cx.pick(&cx.o.database_url, &raw.url, "");
    match url.trim() {
        "" => Ok(None),
        u if u.starts_with("postgres://")
            || u.starts_with("postgresql://")
            || u.starts_with("sqlite:") =>
        {
            Ok(Some(u.to_string()))
        }
        _ => Err(cx.err(
            url_flag,
            "database.url",
            "must start with postgres:// or sqlite: (empty: SQLite in the data directory)".into(),
        )),
    }
}

fn security(
    cx: &Cx,
    raw: &RawSecurity,
    data_dir: &std::path::Path,
) -> Result<SecuritySettings, ConfigError> {
    let defaults = crate::topup::auth::AuthPolicy::default();
    let auth = crate::topup::auth::AuthPolicy {
        max_pin_failures: raw.max_pin_failures.unwrap_or(defaults.max_pin_failures),
        ani_failures_per_hour: raw
            .ani_failures_per_hour
            .unwrap_or(defaults.ani_failures_per_hour),
        global_failures_per_minute: raw
            .global_failures_per_minute
            .unwrap_or(defaults.global_failures_per_minute),
        failure_delay: cx.dur("security.failure_delay", &raw.failure_delay, "1s")?,
        max_failure_delay: cx.dur("security.max_failure_delay", &raw.max_failure_delay, "30s")?,
    };
    if auth.max_pin_failures == 0
        || auth.ani_failures_per_hour == 0
        || auth.global_failures_per_minute == 0
    {
        return Err(cx.err(false, "security", "limits must be at least 1".into()));
    }
    Ok(SecuritySettings {
        auth,
        pin_pepper_file: raw
            .pin_pepper_file
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("pin-pepper")),
    })
}

fn lookup(cx: &Cx, raw: &RawLookup) -> Result<Option<HlrConfig>, ConfigError> {
    match raw
        .hlr_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        None => Ok(None),
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => Ok(Some(HlrConfig {
            url: u.to_string(),
            api_key_env: raw.hlr_api_key_env.clone().filter(|v| !v.is_empty()),
            timeout: cx.nonzero("lookup.hlr_timeout", &raw.hlr_timeout, "2s")?,
            cache_ttl: cx.dur("lookup.hlr_cache_ttl", &raw.hlr_cache_ttl, "1h")?,
        })),
        Some(_) => Err(cx.err(false, "lookup.hlr_url", "must be an http(s) URL".into())),
    }
}

fn calling(cx: &Cx, raw: &RawCalling) -> Result<CallingSettings, ConfigError> {
    Ok(CallingSettings {
        gateway: match raw
            .gateway
            .as_deref()
            .map(str::trim)
            .filter(|g| !g.is_empty())
        {
            None => None,
            Some(g) => Some(g.parse().map_err(|_| {
                cx.err(
                    false,
                    "calling.gateway",
                    format!("`{g}` is not an address like 192.0.2.1:5060"),
                )
            })?),
        },
        ring_timeout: cx.nonzero("calling.ring_timeout", &raw.ring_timeout, "45s")?,
        warning_before: cx.dur("calling.warning_before", &raw.warning_before, "60s")?,
        limits: call_limits(cx.origin, raw)?,
    })
}

fn agent_uri(cx: &Cx, raw: &RawEscalation) -> Result<Option<String>, ConfigError> {
    match raw
        .agent_uri
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        None => Ok(None),
        Some(u)
            if topup_sip::message::Uri::parse(u)
                .is_some_and(|x| x.scheme == "sip" || x.scheme == "sips") =>
        {
            Ok(Some(u.to_string()))
        }
        Some(u) => Err(cx.err(
            false,
            "escalation.agent_uri",
            format!("`{u}` is not a sip: URI"),
        )),
    }
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
