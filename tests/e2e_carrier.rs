//! Carrier faults end to end: the running service tops up through the API via an aggregator
//! that times out, answers 5xx, answers malformed JSON, succeeds long after the request,
//! sends its notices several times at once, reverses a delivered top-up, and refuses. Each
//! top-up ends in exactly one final state, the wallet pays exactly once for each delivered
//! one (and gets its money back for a reversed one), and the books balance.

mod common;

use common::carrier::{Aggregator, SLOW};
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

const WALLET: &str = "+12015550100";
const CARRIER: &str = "agg-ph";
const SECRET: &str = "notice-secret-for-tests";
const PRICE_MINOR: i64 = 205;

fn recipient(case: u8) -> String {
    format!("+6395401234{case:02}")
}

fn balance(server: &Server, key: &str) -> i64 {
    let (s, b) = api_call(server, "GET", "/api/v1/balance", Some(key), &[], None);
    assert_eq!(s, 200, "{b}");
    minor_units(b["balance"].as_str().unwrap())
}

fn topup_state(server: &Server, key: &str, id: &str) -> String {
    let (s, t) = api_call(
        server,
        "GET",
        &format!("/api/v1/topups/{id}"),
        Some(key),
        &[],
        None,
    );
    assert_eq!(s, 200, "{t}");
    t["state"].as_str().unwrap().to_string()
}

#[test]
fn carrier_faults_settle_every_top_up_once_and_reversals_return_the_money() {
    let agg = Aggregator::start(SECRET);
    let server = Server::start_with_env("", &[("AGG_NOTICE_SECRET", SECRET)]);
    let carriers = server.dir.path().join("agg.toml");
    std::fs::write(
        &carriers,
        format!(
            "[[carrier]]\nid = \"{CARRIER}\"\nname = \"Aggregator PH\"\ncountry = \"PH\"\ncurrency = \"PHP\"\n\
adapter = \"http\"\nprefixes = [\"639540\"]\n\
http = {{ base_url = \"{}\", operator_id = \"ph-1\", timeout = \"1s\", webhook_secret_env = \"AGG_NOTICE_SECRET\" }}\n\
[[carrier.product]]\nid = \"agg-100\"\nkind = \"fixed\"\nlabel = \"100 pesos\"\nprice = \"2.05USD\"\nreceive = \"100PHP\"\n",
            agg.url
        ),
    )
    .unwrap();
    cli_ok(
        &server,
        &["carriers", "import", &carriers.display().to_string()],
    );
    let v = cli(
        &server,
        &[
            "apikeys",
            "create",
            "--name",
            "Shop 7",
            "--wallet",
            WALLET,
            "--scopes",
            "topup,wallet",
            "--per-minute",
            "1000",
            "--webhook-url",
            &format!("{}/client-hooks", agg.url),
        ],
    );
    let key = v["key"].as_str().unwrap().to_string();
    let start = balance(&server, &key);

    // One top-up per fault; the API answers what it knows when the carrier has answered or
    // the wait ran out.
    let mut ids = std::collections::BTreeMap::new();
    for case in 1..=8u8 {
        let body = json!({"recipient": recipient(case), "product_id": "agg-100"}).to_string();
        let idem = format!("case-{case:02}");
        let t0 = std::time::Instant::now();
        let (s, r) = api_call(
            &server,
            "POST",
            "/api/v1/topups",
            Some(&key),
            &[("Idempotency-Key", &idem)],
            Some(&body),
        );
        assert!(s == 200 || s == 202, "case {case}: {s} {r}");
        assert!(
            t0.elapsed() < SLOW,
            "case {case}: the API waited for a slow carrier past the carrier's timeout"
        );
        ids.insert(
            case,
            (
                r["id"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
            ),
        );
    }
    let state = |case: u8| ids[&case].1.as_str();
    assert_eq!(state(1), "succeeded");
    assert_eq!(state(2), "pending", "a timeout is not a failure");
    assert_eq!(state(3), "pending", "a 5xx is not a failure");
    assert_eq!(state(4), "pending", "an unreadable answer is not a failure");
    assert_eq!(state(5), "pending", "PROCESSING");
    assert_eq!(state(6), "succeeded");
    assert_eq!(state(7), "failed", "a refusal releases the money");
    assert_eq!(state(8), "pending");
    // Reserved: everything but the refused one.
    assert_eq!(balance(&server, &key), start - 7 * PRICE_MINOR);

    // The reconciler asks about each pending top-up; the one that never arrived is resent.
    std::thread::sleep(SLOW); // the slow answers are done with
    let out = cli_text(&server, &["topups", "reconcile", "--all"]);
    assert!(out.contains("3 succeeded"), "{out}");
    let id = |case: u8| ids[&case].0.clone();
    for case in [2, 3, 4] {
        assert_eq!(
            topup_state(&server, &key, &id(case)),
            "succeeded",
            "case {case}"
        );
    }
    assert_eq!(
        topup_state(&server, &key, &id(8)),
        "pending",
        "its status query got a 500"
    );
    cli_text(&server, &["topups", "reconcile", "--all"]);
    cli_text(&server, &["topups", "reconcile", "--all"]);
    assert_eq!(
        topup_state(&server, &key, &id(8)),
        "succeeded",
        "after the 500s passed"
    );
    assert_eq!(
        topup_state(&server, &key, &id(5)),
        "pending",
        "still PROCESSING"
    );
    {
        let b = agg.books.lock().unwrap();
        assert_eq!(
            b.posts[&id(3)],
            2,
            "resent once after the status query found nothing"
        );
        for case in [1, 2, 4, 5, 6, 7, 8] {
            assert_eq!(b.posts[&id(case)], 1, "case {case} was not sent again");
        }
    }

    // Late success, notified three times at once and once more later: settled once.
    agg.set_status(&id(5), "SUCCESSFUL");
    let answers = agg.notify(server.http, CARRIER, &id(5), "ev-5-done", 3);
    let results: Vec<&str> = answers
        .iter()
        .map(|(_, v)| v["result"].as_str().unwrap_or("?"))
        .collect();
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    assert!(results.contains(&"settled"), "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| ["settled", "duplicate", "ignored"].contains(r)),
        "{results:?}"
    );
    let again = agg.notify(server.http, CARRIER, &id(5), "ev-5-done", 1);
    assert_eq!(again[0].1["result"], "duplicate");
    assert_eq!(topup_state(&server, &key, &id(5)), "succeeded");

    // Forged, replayed, malformed and misaddressed notices change nothing.
    agg.set_status(&id(1), "REVERSED");
    let body =
        json!({"event_id": "forged", "external_id": id(1), "status": "REVERSED"}).to_string();
    let url = format!("http://{}/carriers/{CARRIER}/notices", server.http);
    let forged = agg.post_notice(&url, &body, "t=1,v1=00", 1);
    assert_eq!(forged[0].0, 401, "{forged:?}");
    let replayed = agg.post_notice(&url, &body, &agg.signed(&body, 3600), 1);
    assert_eq!(replayed[0].0, 401, "{replayed:?}");
    let tampered = agg.post_notice(
        &url,
        &body.replace("forged", "forged2"),
        &agg.signed(&body, 0),
        1,
    );
    assert_eq!(tampered[0].0, 401, "{tampered:?}");
    let garbage = "{\"external_id\": 7}";
    let bad = agg.post_notice(&url, garbage, &agg.signed(garbage, 0), 1);
    assert_eq!(bad[0].0, 400, "{bad:?}");
    assert!(
        bad[0].1["result"].as_str().unwrap().contains("JSON"),
        "{bad:?}"
    );
    let other = format!("http://{}/carriers/telcel-mx/notices", server.http);
    let misaddressed = agg.post_notice(&other, &body, &agg.signed(&body, 0), 1);
    assert_eq!(
        misaddressed[0].0, 404,
        "a carrier without a notice secret: {misaddressed:?}"
    );
    assert_eq!(topup_state(&server, &key, &id(1)), "succeeded");
    agg.set_status(&id(1), "SUCCESSFUL");

    // Delivered, then reversed by the operator: the money comes back, once.
    let before = balance(&server, &key);
    agg.set_status(&id(6), "REVERSED");
    let answers = agg.notify(server.http, CARRIER, &id(6), "ev-6-rev", 2);
    let results: Vec<&str> = answers
        .iter()
        .map(|(_, v)| v["result"].as_str().unwrap_or("?"))
        .collect();
    assert!(results.contains(&"reversed"), "{results:?}");
    assert_eq!(topup_state(&server, &key, &id(6)), "reversed");
    assert_eq!(
        balance(&server, &key),
        before + PRICE_MINOR,
        "returned once"
    );
    // The same news again under a new event id: nothing more.
    let again = agg.notify(server.http, CARRIER, &id(6), "ev-6-rev-again", 1);
    assert_eq!(again[0].1["result"], "ignored");
    assert_eq!(balance(&server, &key), before + PRICE_MINOR);
    // Then SUCCESSFUL again: it contradicts the reversal; nothing moves, staff see it.
    assert!(
        cli(&server, &["carriers", "conflicts"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    agg.set_status(&id(6), "SUCCESSFUL");
    let contra = agg.notify(server.http, CARRIER, &id(6), "ev-6-contra", 1);
    assert_eq!(contra[0].1["result"], "conflict");
    assert_eq!(topup_state(&server, &key, &id(6)), "reversed");
    assert_eq!(balance(&server, &key), before + PRICE_MINOR);
    let conflicts = cli(&server, &["carriers", "conflicts"]);
    assert_eq!(conflicts.as_array().unwrap().len(), 1, "{conflicts}");
    let c = &conflicts[0];
    assert_eq!(
        (&c["topup_id"], &c["notice"], &c["state"]),
        (&json!(id(6)), &json!("succeeded"), &json!("reversed"))
    );
    agg.set_status(&id(6), "REVERSED");

    // Final: delivered ones paid once, the refused and the reversed one not at all.
    let delivered = [1u8, 2, 3, 4, 5, 8];
    assert_eq!(
        balance(&server, &key),
        start - delivered.len() as i64 * PRICE_MINOR,
        "the wallet paid exactly once per delivered top-up"
    );
    let all = cli(&server, &["topups", "list", "--limit", "100"]);
    let mine: Vec<&Value> = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["carrier_id"] == CARRIER)
        .collect();
    assert_eq!(mine.len(), 8, "one top-up per request");
    for t in &mine {
        assert!(
            ["succeeded", "failed", "reversed"].contains(&t["state"].as_str().unwrap()),
            "{t}"
        );
    }
    {
        let b = agg.books.lock().unwrap();
        assert_eq!(
            b.topups.len(),
            7,
            "the aggregator delivered each accepted top-up once"
        );
    }
    assert!(cli_text(&server, &["ledger", "check"]).contains("the books balance"));

    // The retail terminal is told: final states, and the reversal after the success.
    server.wait_until("the client webhooks", Duration::from_secs(20), || {
        agg.books.lock().unwrap().client_hooks.len() >= 9
    });
    let hooks = agg.books.lock().unwrap().client_hooks.clone();
    let events_of = |case: u8| -> Vec<String> {
        hooks
            .iter()
            .filter(|h| h["topup"]["id"] == id(case).as_str())
            .map(|h| h["event"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(events_of(6), ["topup.succeeded", "topup.reversed"]);
    assert_eq!(events_of(7), ["topup.failed"]);
    assert_eq!(
        events_of(5),
        ["topup.succeeded"],
        "one webhook despite four notices"
    );
}
