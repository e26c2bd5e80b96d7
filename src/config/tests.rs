//! The configuration's checks, the example file, and the softswitch and SMS sections.

use super::*;

mod checks {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml("test.toml", text, &Overrides::default())
    }

    #[test]
    fn defaults_run_on_loopback() {
        let c = load("").unwrap();
        assert_eq!(c.sip.listen, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(c.rtp.ports, (20000, 29999));
        assert_eq!(c.sip.tsx.t1, Duration::from_millis(500));
        assert_eq!(c.sip.codecs, Codec::ALL);
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
    fn broken_toml_and_a_missing_file_say_where_and_what_without_a_key() {
        let e = load("[sip]\nlisten = \"127.0.0.1:5070\n").unwrap_err();
        assert_eq!(e.key, "");
        let msg = e.to_string();
        assert!(msg.starts_with("test.toml:2:"), "{msg}");
        assert!(!msg.contains("key `"), "{msg}");
        let e = Config::load(
            Some(Path::new("/nonexistent/topup-ivr.toml")),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("/nonexistent/topup-ivr.toml: cannot read the configuration file: "),
            "{e}"
        );
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
        assert_eq!(c.sip.listen.port(), 5090);
        assert_eq!(c.rtp.ports, (40000, 40100));
        assert_eq!(c.paths.sms, std::path::PathBuf::from("/srv/sms"));
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

mod example_file {
    use super::*;

    /// The documented example (docker/topup-ivr.toml) is valid and states the defaults.
    #[test]
    fn the_example_config_parses_and_matches_the_defaults() {
        let text = include_str!("../../docker/topup-ivr.toml");
        let c = Config::from_toml("docker/topup-ivr.toml", text, &Overrides::default()).unwrap();
        let d = Config::from_toml("defaults", "", &Overrides::default()).unwrap();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }
}

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
        let l = &c.calling.limits;
        assert_eq!(l.blocked_prefixes, ["979", "4470"]);
        assert_eq!(l.max_calls_per_wallet, 1);
        assert_eq!(l.max_cost_per_call.len(), 2);
        assert_eq!(l.max_cost_per_day[0].to_string(), "9.00 USD");
        assert_eq!(c.security.auth.failure_delay, Duration::from_millis(250));
        assert_eq!(c.security.auth.max_failure_delay, Duration::from_secs(4));
        let d = load("").unwrap();
        assert_eq!(
            d.calling.limits,
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
