//! The top-up API over real HTTP against the running binary with the demo data: keys and
//! scopes, idempotency, bad input, rate limits, card redemption, and the OpenAPI document.

mod common;

use common::*;
use serde_json::{Value, json};

/// A key paying from the demo wallet +12015550100.
fn key(server: &Server, scopes: &str, per_minute: u32) -> String {
    api_key(server, "+12015550100", scopes, per_minute)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[test]
fn a_top_up_is_made_once_per_idempotency_key() {
    let server = Server::start("");
    let k = key(&server, "lookup,topup,wallet", 1000);
    let (s, n) = api_call(
        &server,
        "GET",
        "/api/v1/numbers/+525512345678",
        Some(&k),
        &[],
        None,
    );
    assert_eq!(s, 200, "{n}");
    assert_eq!(
        (n["valid"].as_bool(), n["country"].as_str()),
        (Some(true), Some("MX"))
    );
    assert!(n["carrier"]["id"].is_string(), "{n}");
    let (s, bad) = api_call(&server, "GET", "/api/v1/numbers/12", Some(&k), &[], None);
    assert_eq!((s, bad["valid"].as_bool()), (200, Some(false)), "{bad}");

    let (s, p) = api_call(
        &server,
        "GET",
        "/api/v1/products?number=%2B525512345678",
        Some(&k),
        &[],
        None,
    );
    assert_eq!(s, 200, "{p}");
    let products = p["products"].as_array().unwrap();
    let first = products[0]["id"].as_str().unwrap().to_string();
    let second = products[1]["id"].as_str().unwrap().to_string();

    let body = json!({"recipient": "+525512345678", "product_id": first}).to_string();
    let idem = [("Idempotency-Key", "order-1001")];
    let (s, r1) = api_call(
        &server,
        "POST",
        "/api/v1/topups",
        Some(&k),
        &idem,
        Some(&body),
    );
    assert_eq!(s, 200, "{r1}");
    assert_eq!(r1["state"], "succeeded", "{r1}");
    assert_eq!(r1["channel"], "api");
    // The same key and body again: the same top-up, not a second one.
    let (s, r2) = api_call(
        &server,
        "POST",
        "/api/v1/topups",
        Some(&k),
        &idem,
        Some(&body),
    );
    assert_eq!(s, 200);
    assert_eq!(r2["id"], r1["id"]);
    let (_, b) = api_call(&server, "GET", "/api/v1/balance", Some(&k), &[], None);
    assert_eq!(
        b["balance"], "21.90 USD",
        "25.00 - 3.10 (the smallest, 50 pesos) once: {b}"
    );
    // The same key with another body is a client bug: 409, nothing charged.
    let other = json!({"recipient": "+525512345678", "product_id": second}).to_string();
    let (s, c) = api_call(
        &server,
        "POST",
        "/api/v1/topups",
        Some(&k),
        &idem,
        Some(&other),
    );
    assert_eq!((s, code(&c)), (409, "conflict"), "{c}");
    let (_, b) = api_call(&server, "GET", "/api/v1/balance", Some(&k), &[], None);
    assert_eq!(b["balance"], "21.90 USD");

    let id = r1["id"].as_str().unwrap();
    let (s, r3) = api_call(
        &server,
        "GET",
        &format!("/api/v1/topups/{id}"),
        Some(&k),
        &[],
        None,
    );
    assert_eq!((s, &r3["id"]), (200, &r1["id"]));
    // Another client cannot read it.
    let k2 = key(&server, "topup", 1000);
    let (s, e) = api_call(
        &server,
        "GET",
        &format!("/api/v1/topups/{id}"),
        Some(&k2),
        &[],
        None,
    );
    assert_eq!((s, code(&e)), (404, "not_found"));
    assert_eq!(
        cli(&server, &["topups", "list"]).as_array().unwrap().len(),
        1
    );
    cli_ok(&server, &["ledger", "check"]);
}

#[test]
fn bad_requests_get_a_clear_error_and_change_nothing() {
    let server = Server::start("");
    // The front page says what to dial and links the console, staff pages and API; the
    // ready log says the same.
    let (status, page) = common::http_get(server.http, "/").unwrap();
    assert_eq!(status, 200, "{page}");
    for want in [
        format!("<code>sip:recharge@{}</code> (recharge)", server.sip),
        format!("<code>sip:echo@{}</code> (echo)", server.sip),
        "href=\"/console\"".into(),
        "href=\"/staff\"".into(),
        "href=\"/api/v1/openapi.json\"".into(),
    ] {
        assert!(page.contains(&want), "{want} not in {page}");
    }
    assert!(
        server.log().contains(&format!(
            "dial sip:echo@{0}, sip:recharge@{0}, sip:wallet@{0}; agents: http://{1}/console",
            server.sip, server.http
        )),
        "{}",
        server.log()
    );
    let k = key(&server, "lookup,topup", 1000);
    let post = |key: Option<&str>, headers: &[(&str, &str)], body: &str| {
        api_call(&server, "POST", "/api/v1/topups", key, headers, Some(body))
    };
    let idem = [("Idempotency-Key", "x1")];
    let ok_body = r#"{"recipient": "+525512345678", "product_id": "p"}"#;
    let (s, e) = post(None, &idem, ok_body);
    assert_eq!((s, code(&e)), (401, "unauthorized"));
    let (s, e) = post(Some("tk_abc_wrong"), &idem, ok_body);
    assert_eq!((s, code(&e)), (401, "unauthorized"));
    let (s, e) = api_call(
        &server,
        "POST",
        "/api/v1/cards/redeem",
        Some(&k),
        &[],
        Some(r#"{"pin":"1","wallet":"+12015550161"}"#),
    );
    assert_eq!((s, code(&e)), (403, "forbidden"), "no redeem scope");
    let (s, e) = post(Some(&k), &[], ok_body);
    assert_eq!((s, code(&e)), (400, "bad_request"));
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key")
    );
    for (body, names) in [
        ("{not json", "body"),
        (r#"{"recipient": 52, "product_id": "p"}"#, "recipient"),
        (r#"{"recipient": "+525512345678"}"#, "product_id"),
        (
            r#"{"recipient": "+525512345678", "product_id": "p", "tip": 1}"#,
            "tip",
        ),
        (
            r#"{"recipient": "+525512345678", "product_id": "p", "amount": "lots"}"#,
            "amount",
        ),
    ] {
        let (s, e) = post(Some(&k), &idem, body);
        assert_eq!((s, code(&e)), (400, "bad_request"), "{body}: {e}");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains(names), "{body}: {msg}");
    }
    let (s, e) = post(
        Some(&k),
        &idem,
        r#"{"recipient": "+99912", "product_id": "p"}"#,
    );
    assert_eq!((s, code(&e)), (422, "invalid_number"), "{e}");
    let (s, e) = api_call(&server, "GET", "/api/v1/nothing", Some(&k), &[], None);
    assert_eq!((s, code(&e)), (404, "not_found"));
    assert_eq!(
        cli(&server, &["topups", "list"]).as_array().unwrap().len(),
        0
    );
    let log = server.log();
    assert!(log.contains("API request"), "requests are logged");
    assert!(!log.contains(&k), "keys are never logged");
}

#[test]
fn a_key_over_its_rate_is_told_to_wait() {
    let server = Server::start("");
    let k = key(&server, "wallet", 3);
    for _ in 0..3 {
        assert_eq!(
            api_call(&server, "GET", "/api/v1/balance", Some(&k), &[], None).0,
            200
        );
    }
    let (s, e) = api_call(&server, "GET", "/api/v1/balance", Some(&k), &[], None);
    assert_eq!((s, code(&e)), (429, "rate_limited"), "{e}");
    // Revoked keys stop at once.
    let id = k.split('_').nth(1).unwrap();
    cli_ok(&server, &["apikeys", "revoke", id]);
    assert_eq!(
        api_call(&server, "GET", "/api/v1/balance", Some(&k), &[], None).0,
        401
    );
}

#[test]
fn a_card_is_redeemed_once_into_a_wallet() {
    let server = Server::start("");
    let k = key(&server, "redeem", 1000);
    let body = r#"{"pin": "11112222333344", "wallet": "+12015550161"}"#;
    let (s, r) = api_call(
        &server,
        "POST",
        "/api/v1/cards/redeem",
        Some(&k),
        &[],
        Some(body),
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["serial"], "100000000001");
    assert_eq!(r["wallet"], "+12015550161");
    let (s, e) = api_call(
        &server,
        "POST",
        "/api/v1/cards/redeem",
        Some(&k),
        &[],
        Some(body),
    );
    assert_eq!((s, code(&e)), (422, "card_used"), "{e}");
    let (s, e) = api_call(
        &server,
        "POST",
        "/api/v1/cards/redeem",
        Some(&k),
        &[],
        Some(r#"{"pin": "99998888777766", "wallet": "+12015550161"}"#),
    );
    assert_eq!((s, code(&e)), (422, "invalid_pin"), "{e}");
    assert!(
        !server.log().contains("11112222333344"),
        "PINs are never logged"
    );
    cli_ok(&server, &["ledger", "check"]);
}

#[test]
fn every_documented_operation_is_served() {
    let server = Server::start("");
    let (s, doc) = api_call(&server, "GET", "/api/v1/openapi.json", None, &[], None);
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 7);
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let url = format!(
                "/api/v1{}",
                path.replace("{number}", "+525512345678")
                    .replace("{id}", "x")
            );
            let (s, v) = api_call(&server, &method.to_uppercase(), &url, None, &[], None);
            // Served: without a key every operation but the document itself is 401, never 404.
            let want = if path == "/openapi.json" { 200 } else { 401 };
            assert_eq!(s, want, "{method} {path}: {v}");
        }
    }
}

/// A webhook receiver: records each request (headers lowercased, body); answers 500 to the
/// first `fail` requests, then 200.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

fn receiver(fail: usize) -> (u16, Seen) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                head.push_str(&line.to_ascii_lowercase());
            }
            let mut body = vec![0u8; len];
            let _ = r.read_exact(&mut body);
            let n = {
                let mut l = log.lock().unwrap();
                l.push((head, String::from_utf8_lossy(&body).to_string()));
                l.len()
            };
            let status = if n <= fail {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (port, seen)
}

#[test]
fn final_states_are_posted_signed_and_retried_until_accepted() {
    use hmac::Mac;
    let server = Server::start("");
    let (port, seen) = receiver(1);
    let v = cli(
        &server,
        &[
            "apikeys",
            "create",
            "--name",
            "App",
            "--wallet",
            "+12015550100",
            "--scopes",
            "topup",
            "--webhook-url",
            &format!("http://127.0.0.1:{port}/hook"),
        ],
    );
    let (k, whsec) = (
        v["key"].as_str().unwrap(),
        v["webhook_secret"].as_str().unwrap(),
    );
    let body = json!({"recipient": "+525512345678", "product_id": "telcel-mx-100"}).to_string();
    let (s, r) = api_call(
        &server,
        "POST",
        "/api/v1/topups",
        Some(k),
        &[("Idempotency-Key", "w-1")],
        Some(&body),
    );
    assert_eq!((s, r["state"].as_str()), (200, Some("succeeded")), "{r}");
    server.wait_until(
        "the webhook is retried and accepted",
        std::time::Duration::from_secs(20),
        || seen.lock().unwrap().len() >= 2,
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one failure, one delivery, nothing after");
    for (head, body) in &got {
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["event"], "topup.succeeded");
        assert_eq!(v["topup"]["id"], r["id"]);
        assert!(head.contains(&format!(
            "x-topup-delivery: {}:succeeded",
            r["id"].as_str().unwrap().to_ascii_lowercase()
        )));
        // t=<secs>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
        let sig = head
            .lines()
            .find_map(|l| l.strip_prefix("x-topup-signature: "))
            .unwrap()
            .trim();
        let (t, v1) = sig.split_once(",v1=").unwrap();
        let t = t.strip_prefix("t=").unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(whsec.as_bytes()).unwrap();
        mac.update(format!("{t}.{body}").as_bytes());
        assert_eq!(v1, hex::encode(mac.finalize().into_bytes()), "signature");
    }
}
