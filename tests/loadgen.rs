//! The load generator at small scale against the real server (the CI smoke run): it must
//! place every call, hear every prompt and have every key answered. Speed is not judged here
//! (BENCHMARKS.md records the figures of full runs).

mod common;

use std::process::Command;

use common::*;

fn loadgen(server: &Server, args: &[&str]) -> (bool, serde_json::Value, String) {
    let out = loadgen_command(server)
        .arg("--pid")
        .arg(server.pid().to_string())
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stderr}"));
    (out.status.success(), report, stderr)
}

#[test]
fn fifty_echo_calls_for_ten_seconds_all_complete_with_every_key_answered() {
    let server = Server::start("");
    let (ok, r, err) = loadgen(
        &server,
        &[
            "--calls", "50", "--rate", "25", "--length", "10s", "--number", "echo",
        ],
    );
    assert!(ok, "{err}\n{r:#}");
    assert_eq!(r["established"], 50, "{r:#}");
    assert_eq!(r["failed"], serde_json::json!({}), "{r:#}");
    assert_eq!(r["refused"], serde_json::json!({}), "{r:#}");
    assert_eq!(r["peak_calls"], 50, "{r:#}");
    // Every call heard its prompts: ~10 s at 50 frames/s each (lost frames are figures,
    // not errors, on a busy CI machine).
    let frames = r["frames_received"].as_u64().unwrap() + r["frames_lost"].as_u64().unwrap();
    assert!(frames > 50 * 400, "{r:#}");
    assert!(r["keys_sent"].as_u64().unwrap() >= 50 * 3, "{r:#}");
    assert_eq!(r["dtmf_unanswered"], 0, "{r:#}");
    assert_eq!(
        r["key_down_to_prompt"]["n"], r["keys_sent"],
        "every key's read-back was recognised: {r:#}"
    );
    // The service's CDRs agree: 50 echo calls ended by the caller's BYE.
    server.wait_idle();
    let calls = server.calls();
    let echo: Vec<_> = calls.iter().filter(|c| c["service"] == "echo").collect();
    assert_eq!(echo.len(), 50);
    assert!(
        echo.iter().all(|c| c["end_reason"] == "caller-hangup"),
        "{echo:?}"
    );
    assert!(
        r["server"]["rss_at_peak_mib"].as_f64().unwrap() > 1.0,
        "{r:#}"
    );
}

#[test]
fn card_top_ups_follow_the_recharge_plan_with_one_card_per_call() {
    let server = Server::start("");
    let cards = cli_text(
        &server,
        &[
            "cards", "generate", "--batch", "LOAD", "--count", "4", "--value", "10.00USD",
        ],
    );
    let pins = server.dir.path().join("cards.csv");
    std::fs::write(&pins, cards).unwrap();
    let (ok, r, err) = loadgen(
        &server,
        &[
            "--calls",
            "4",
            "--rate",
            "4",
            "--length",
            "90s",
            "--number",
            "recharge",
            "--script",
            "card",
            "--pins",
            pins.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}\n{r:#}");
    assert_eq!(r["established"], 4, "{r:#}");
    let (posted, topups) = count_topups(&server, "state", "succeeded");
    assert_eq!(posted, 4, "{topups:#}");
    cli_ok(&server, &["ledger", "check"]);
    // A PIN reused by a fifth call is refused by the service, and the generator says so.
    let (ok, r, _) = loadgen(
        &server,
        &[
            "--calls",
            "1",
            "--length",
            "30s",
            "--number",
            "recharge",
            "--script",
            "card",
            "--pins",
            pins.to_str().unwrap(),
        ],
    );
    assert!(!ok, "a used card must not complete the script: {r:#}");
    assert_eq!(r["failed"].as_object().unwrap().len(), 1, "{r:#}");
}

#[test]
fn bad_arguments_are_named() {
    let out = Command::new(BIN)
        .args(["loadgen", "--script", "wait keys:1x", "--calls", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("keys:1x") && err.contains("`x`"), "{err}");
    let out = Command::new(BIN)
        .args(["loadgen", "--script", "card", "--calls", "1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pins"));
}
