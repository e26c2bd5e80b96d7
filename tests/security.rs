//! Secrets and access on the running service: PINs used in real calls and API requests appear
//! nowhere the service writes (its log, CDRs, SMS, escalations, the database files), and no
//! private page or API answers without credentials.

mod common;

use common::*;

/// Every file under the data directory, as bytes (SQLite database, its WAL).
fn data_files(server: &Server) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    let mut dirs = vec![server.dir.path().join("data")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p.display().to_string(), b));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn pins_used_by_voice_and_api_appear_nowhere_the_service_writes() {
    let server = Server::start("");
    // Two cards: one topped up by voice (the load generator's card script), one redeemed over
    // the API; a wrong PIN tried over the API too.
    let csv = cli_text(
        &server,
        &[
            "cards", "generate", "--batch", "SEC", "--count", "2", "--value", "10.00USD",
        ],
    );
    let pins: Vec<String> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(pins.len(), 2);
    let voice_file = server.dir.path().join("voice.csv");
    std::fs::write(&voice_file, format!("{}\n", pins[0])).unwrap();
    let lg = loadgen_command(&server)
        .args(["--calls", "1", "--length", "90s", "--number", "recharge"])
        .args(["--script", "card"])
        .arg("--pins")
        .arg(&voice_file)
        .output()
        .unwrap();
    assert!(
        lg.status.success(),
        "{}",
        String::from_utf8_lossy(&lg.stdout)
    );
    let key = api_key(&server, "+12015550100", "redeem", 1000);
    let body = format!(r#"{{"pin": "{}", "wallet": "+12015550161"}}"#, pins[1]);
    let (s, _) = api_call(
        &server,
        "POST",
        "/api/v1/cards/redeem",
        Some(&key),
        &[],
        Some(&body),
    );
    assert_eq!(s, 200);
    let wrong = "98765432109876";
    let body = format!(r#"{{"pin": "{wrong}", "wallet": "+12015550161"}}"#);
    let (s, _) = api_call(
        &server,
        "POST",
        "/api/v1/cards/redeem",
        Some(&key),
        &[],
        Some(&body),
    );
    assert!(s >= 400);
    server.wait_idle();

    let mut places: Vec<(String, Vec<u8>)> = data_files(&server);
    places.push(("server log".into(), server.log().into_bytes()));
    for args in [
        &["calls", "list", "--json", "--limit", "1000"][..],
        &["sms", "list", "--json"][..],
        &["escalations", "list", "--json"][..],
        &["topups", "list", "--json"][..],
    ] {
        places.push((args.join(" "), cli_text(&server, args).into_bytes()));
    }
    let secrets = [pins[0].as_str(), pins[1].as_str(), wrong];
    for (place, bytes) in &places {
        for pin in secrets {
            assert!(!contains(bytes, pin), "a PIN is in {place}");
        }
    }
    // The data directory really holds the service's records (the check above is not vacuous).
    assert!(
        places
            .iter()
            .any(|(p, b)| p.contains("data") && b.len() > 10_000)
    );
}

#[test]
fn private_pages_and_apis_refuse_requests_without_credentials() {
    let server = Server::start("");
    let get = [
        "/api/v1/numbers/+12015550150",
        "/api/v1/products?number=%2B12015550150",
        "/api/v1/topups/anything",
        "/api/v1/balance",
        "/console/api/escalations",
        "/console/api/escalations/1",
        "/console/api/events",
        "/staff/api/overview",
        "/staff/api/calls",
        "/staff/api/dialplans/echo",
    ];
    for path in get {
        for key in [None, Some("tk_1_wrong")] {
            let (s, _) = api_call(&server, "GET", path, key, &[], None);
            assert_eq!(s, 401, "GET {path} with {key:?}");
        }
    }
    let post = [
        (
            "/api/v1/topups",
            r#"{"recipient": "+12015550150", "product_id": "x"}"#,
        ),
        ("/api/v1/cards/redeem", r#"{"pin": "1", "wallet": "+1"}"#),
        ("/console/api/escalations/1/close", "{}"),
        ("/console/api/escalations/1/unlock", "{}"),
    ];
    for (path, body) in post {
        let (s, _) = api_call(&server, "POST", path, None, &[], Some(body));
        assert_eq!(s, 401, "POST {path}");
    }
    // A forged session cookie is no session.
    let (s, _) = api_call(
        &server,
        "GET",
        "/console/api/escalations",
        None,
        &[("Cookie", "topup_session=0123456789abcdef")],
        None,
    );
    assert_eq!(s, 401);
    // Public: health, metrics, the OpenAPI document and the login pages themselves.
    for path in [
        "/health",
        "/metrics",
        "/api/v1/openapi.json",
        "/console",
        "/staff",
    ] {
        let (s, _) = api_call(&server, "GET", path, None, &[], None);
        assert_eq!(s, 200, "GET {path}");
    }
}

/// One call to the wallet line from `caller` entering one wrong PIN; seconds from the PIN's
/// last key to the prompt that answers it.
fn wrong_pin_answer_secs(server: &Server, caller: &str) -> f64 {
    let out = loadgen_command(server)
        .args([
            "--calls", "1", "--length", "30s", "--number", "wallet", "--json",
        ])
        .args([
            "--caller",
            caller,
            "--script",
            "hold:1s keys:9753# hold:3s bye",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let q = &r["key_down_to_prompt"];
    assert_eq!(q["n"], 1, "one answered key press: {r}");
    q["p50"].as_f64().unwrap() / 1000.0
}

#[test]
fn wrong_pins_are_answered_ever_more_slowly_per_caller_until_refused() {
    // 0.5 s after a caller's 2nd failure, doubling, at most 1 s; a 4th attempt within the hour
    // is refused before its PIN is checked (and answered after the longest pause).
    let server = Server::start(
        "[security]\nfailure_delay = \"500ms\"\nmax_failure_delay = \"1s\"\nani_failures_per_hour = 3\nmax_pin_failures = 10\n",
    );
    let caller = "+12015550100";
    create_wallet(&server, "+12015550177", "4321");
    let mut got: Vec<f64> = (0..3)
        .map(|_| wrong_pin_answer_secs(&server, caller))
        .collect();
    // Another caller, meanwhile, is not slowed by the first one's failures.
    let other = std::thread::scope(|s| {
        let other = s.spawn(|| wrong_pin_answer_secs(&server, "+12015550177"));
        got.push(wrong_pin_answer_secs(&server, caller));
        other.join().unwrap()
    });
    // Without the pause a prompt answers within a few tens of milliseconds.
    let want = [0.0, 0.5, 1.0, 1.0];
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            *g >= w && *g < w + 0.4,
            "attempt {}: answered after {g:.3} s, expected {w} s (all: {got:?})",
            i + 1
        );
    }
    assert!(other < 0.4, "another caller waited {other:.3} s");
    // Three wrong PINs checked for the first caller, one for the other; the first caller's
    // fourth attempt refused unchecked.
    let log = server.log();
    let count = |result: &str| {
        log.lines()
            .filter(|l| {
                l.contains("operation done op=wallet_auth")
                    && l.contains(&format!("result={result}"))
            })
            .count()
    };
    assert_eq!(
        (count("invalid_pin"), count("rate_limited")),
        (4, 1),
        "{log}"
    );
}

#[test]
fn a_config_file_with_a_password_that_others_may_read_is_warned_of_at_start() {
    use std::os::unix::fs::PermissionsExt;
    // An SMSC password written in the file (nothing listens there; the gateway retries).
    let password = "pw7731x";
    let mut server = Server::start(&common::smsc::smsc_config(
        "main",
        free_tcp_port(),
        password,
        "",
    ));
    let mode = std::fs::metadata(&server.config)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_ne!(
        mode & 0o077,
        0,
        "the test's config is readable by others ({mode:o})"
    );
    let log = server.log();
    let config = server.config.display().to_string();
    assert!(
        log.contains("sms.smsc[0].password and others may read it")
            && log.contains(&format!("chmod 600 {config}")),
        "{log}"
    );
    assert!(
        !log.contains(password),
        "the warning never shows the secret"
    );
    // After the chmod it names, the next start is quiet.
    std::fs::set_permissions(&server.config, std::fs::Permissions::from_mode(0o600)).unwrap();
    server.kill9();
    let before = server.log().len();
    server.restart();
    assert!(!server.log()[before..].contains("others may read it"));
}

#[test]
fn the_service_writes_no_core_file_that_could_hold_a_pin() {
    let server = Server::start("");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    // "Max core file size  <soft>  <hard>  bytes"
    assert_eq!(fields[4], "0", "{core}");
}
