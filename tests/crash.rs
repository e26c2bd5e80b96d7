//! The service killed with SIGKILL again and again while retail terminals top up through the
//! API: each terminal retries an unanswered request with the same Idempotency-Key, as the API
//! asks. Afterwards, with the reconciler run: every key made exactly one top-up, each one
//! settled (posted or voided) exactly once, the wallet paid exactly for the successful ones,
//! the books balance, and every successful top-up has its confirmation SMS recorded.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// POST over plain HTTP/1.0; `None` when the service died before answering.
fn post(
    server_http: std::net::SocketAddr,
    key: &str,
    idem: &str,
    body: &str,
) -> Option<(u16, Value)> {
    let mut s = TcpStream::connect_timeout(&server_http, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "POST /api/v1/topups HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
Idempotency-Key: {idem}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let json = serde_json::from_str(resp.split_once("\r\n\r\n")?.1).ok()?;
    Some((code, json))
}

/// The demo wallet funded with `amount` for a stream of top-ups, a retail terminal's API key
/// paying from it with `scopes`, and the body of its top-up request (5.99 USD to Mexico);
/// the wallet as it was before.
fn terminal(server: &Server, amount: &str, scopes: &str) -> (String, String, Value) {
    let wallet = "+12015550100";
    cli_ok(
        server,
        &[
            "accounts",
            "credit",
            wallet,
            amount,
            "--id",
            "terminal-fund",
        ],
    );
    let before = cli(server, &["accounts", "show", wallet]);
    let key = api_key(server, wallet, scopes, 100_000);
    let body = json!({"recipient": "+525512345678", "product_id": "telcel-mx-100"}).to_string();
    (key, body, before)
}

#[test]
fn top_ups_killed_at_random_points_are_made_once_and_the_books_balance() {
    // SMS configured, its SMSC away: confirmations wait in the outbox, where they are counted.
    let mut server = Server::start(
        "[sms]\nsender = \"TopUp\"\n[[sms.smsc]]\nname = \"main\"\naddress = \"127.0.0.1:9\"\n\
         system_id = \"topup\"\npassword = \"x\"\n",
    );
    let wallet = "+12015550100";
    let (key, body, before) = terminal(&server, "100000.00USD", "topup");

    // Answers per key: the last final answer a terminal got.
    let answers: Arc<Mutex<BTreeMap<String, (u16, Value)>>> = Arc::default();
    let unanswered: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let rounds = 5;
    let terminals = 3;
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = vec![];
        for t in 0..terminals {
            let (http, key, body) = (server.http, key.clone(), body.clone());
            let (answers, unanswered, stop) = (answers.clone(), unanswered.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let idem = format!("r{round}-t{t}-{i}");
                    match post(http, &key, &idem, &body) {
                        Some(a) => {
                            answers.lock().unwrap().insert(idem, a);
                        }
                        None => unanswered.lock().unwrap().push(idem),
                    }
                    i += 1;
                }
            }));
        }
        // Let the stream run, then kill the service without warning.
        std::thread::sleep(Duration::from_millis(400 + next() % 1200));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        server.restart();
        // Every terminal retries what went unanswered, with the same key and body.
        for idem in unanswered.lock().unwrap().drain(..) {
            let a = post(server.http, &key, &idem, &body).expect("the restarted service answers");
            answers.lock().unwrap().insert(idem, a);
        }
    }
    let left = cli(&server, &["topups", "list", "--limit", "100000"]);
    let pending = left
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == "pending")
        .count();
    cli_ok(&server, &["topups", "reconcile", "--all"]);
    cli_ok(&server, &["ledger", "check"]);

    let answers = answers.lock().unwrap();
    assert!(
        answers.len() >= rounds * terminals,
        "{} requests",
        answers.len()
    );
    for (idem, (code, v)) in answers.iter() {
        assert!(
            *code == 200 || *code == 201 || *code == 202,
            "{idem}: {code} {v}"
        );
    }
    // One top-up per key, each in a final state after the reconciler.
    let topups = cli(&server, &["topups", "list", "--limit", "100000"]);
    let topups = topups.as_array().unwrap();
    let ids: std::collections::HashSet<&str> = answers
        .values()
        .map(|(_, v)| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), answers.len(), "each key its own top-up");
    let api: Vec<&Value> = topups
        .iter()
        .filter(|t| ids.contains(t["id"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(api.len(), answers.len(), "no top-up lost, none made twice");
    assert!(
        topups.len() == answers.len(),
        "no top-up without a key: {} vs {}",
        topups.len(),
        answers.len()
    );
    let succeeded: Vec<&&Value> = api.iter().filter(|t| t["state"] == "succeeded").collect();
    assert!(
        api.iter()
            .all(|t| t["state"] == "succeeded" || t["state"] == "failed"),
        "{api:#?}"
    );
    eprintln!(
        "{} top-ups over {rounds} kills; {pending} left pending by a kill and settled by the \
         reconciler; {} succeeded",
        answers.len(),
        succeeded.len()
    );
    // The wallet paid exactly the price of each successful top-up, once.
    let after = cli(&server, &["accounts", "show", wallet]);
    let cents = minor_units;
    let balance = |v: &Value| cents(v["wallet"]["balance"].as_str().unwrap());
    let price = cents(succeeded[0]["sent"].as_str().unwrap());
    assert!(
        succeeded
            .iter()
            .all(|t| cents(t["sent"].as_str().unwrap()) == price)
    );
    assert_eq!(
        balance(&before) - balance(&after),
        price * succeeded.len() as i64,
        "{} top-ups succeeded",
        succeeded.len()
    );
    // Every successful top-up has its confirmation recorded in the SMS outbox.
    let sms = cli(&server, &["sms", "list", "--limit", "100000"]);
    for t in &succeeded {
        let id = t["id"].as_str().unwrap();
        assert!(
            sms.as_array()
                .unwrap()
                .iter()
                .any(|m| m["reference"].as_str() == Some(id)),
            "no SMS recorded for {id}"
        );
    }
}

/// A Postgres server of the test's own (scripts/test-postgres on a private port and
/// directory), which the test stops and starts.
struct PrivatePostgres {
    env: [(String, String); 2],
    url: String,
}

impl PrivatePostgres {
    fn script(&self, arg: Option<&str>) -> String {
        let out = std::process::Command::new(repo().join("scripts/test-postgres"))
            .args(arg)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn start() -> PrivatePostgres {
        let port = free_tcp_port();
        let mut pg = PrivatePostgres {
            // Under /tmp itself: the server runs as the postgres user when the tests run as root.
            env: [
                ("TOPUP_IVR_TEST_PG_PORT".into(), port.to_string()),
                (
                    "TOPUP_IVR_TEST_PG_DIR".into(),
                    format!("/tmp/topup-ivr-pg-outage-{}", std::process::id()),
                ),
            ],
            url: String::new(),
        };
        // The test user may create databases, not tables in `postgres`: a database of its own.
        let admin = pg.script(None);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::query("DROP DATABASE IF EXISTS outage")
                .execute(&mut c)
                .await
                .unwrap();
            sqlx::query("CREATE DATABASE outage")
                .execute(&mut c)
                .await
                .unwrap();
        });
        pg.url = format!("{}/outage", admin.rsplit_once('/').unwrap().0);
        pg
    }

    fn stop(&self) {
        self.script(Some("stop"));
    }

    fn restart(&self) {
        self.script(None);
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| self.stop());
        let dir = &self.env[1].1;
        let _ = std::fs::remove_dir_all(dir);
        for f in ["initdb.log", "check.log"] {
            let _ = std::fs::remove_file(format!("{dir}.{f}"));
        }
    }
}

#[test]
fn a_database_outage_mid_load_charges_nobody_and_the_service_recovers_by_itself() {
    require("sipp");
    let pg = PrivatePostgres::start();
    let server = Server::start(&format!("[database]\nurl = \"{}\"\n", pg.url));
    let wallet = "+12015550100";
    let (key, body, before) = terminal(&server, "100000.00USD", "topup");

    // Two terminals top up without pause; a request that fails (503, or no answer) is retried
    // with its key until it gets a final answer, as the API asks.
    let answers: Arc<Mutex<BTreeMap<String, (u16, Value)>>> = Arc::default();
    let refused = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = vec![];
    for t in 0..2 {
        let (http, key, body) = (server.http, key.clone(), body.clone());
        let (answers, refused, stop) = (answers.clone(), refused.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let idem = format!("t{t}-{i}");
                loop {
                    match post(http, &key, &idem, &body) {
                        Some((code, v)) if code < 500 => {
                            answers.lock().unwrap().insert(idem, (code, v));
                            break;
                        }
                        Some((code, v)) => {
                            assert_eq!(code, 503, "{v}");
                            assert!(
                                v["error"]["message"]
                                    .as_str()
                                    .unwrap()
                                    .contains("nothing was charged"),
                                "{v}"
                            );
                            *refused.lock().unwrap() += 1;
                        }
                        None => {}
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                i += 1;
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(2));
    pg.stop();

    // A caller during the outage: the wallet PIN cannot be checked; they are told so.
    let caller = keys("keys_then_bye.xml", "wallet", wallet, "1234#")
        .arg("-d")
        .arg("14000");
    let cap_dir = tempfile::tempdir().unwrap();
    let capture = Capture::start(
        cap_dir.path(),
        &format!("udp and dst port {}", caller.media_port),
    );
    caller.run(&server);
    let heard: Vec<Vec<u8>> = capture
        .stop()
        .into_iter()
        .filter_map(|(_, p)| (p.len() > 12).then(|| p[12..].to_vec()))
        .collect();
    assert!(
        heard_prompt(&heard, &prompts(), "en", "service-trouble"),
        "the caller was not told: {}",
        server.log()
    );
    let ok_during = answers.lock().unwrap().len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        answers.lock().unwrap().len(),
        ok_during,
        "nothing completes without a database"
    );

    // The database comes back; the service recovers on its own.
    pg.restart();
    let recovered = std::time::Instant::now();
    server.wait_until("top-ups complete again", Duration::from_secs(30), || {
        answers.lock().unwrap().len() > ok_during + 20
    });
    eprintln!(
        "recovered {:?} after the database was back",
        recovered.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(*refused.lock().unwrap() > 0, "the outage was felt");
    let caller = keys("keys_then_bye.xml", "wallet", wallet, "1234#")
        .arg("-d")
        .arg("3000");
    caller.run(&server);
    server.wait_idle();
    assert!(
        server
            .log()
            .contains("operation done op=wallet_auth result=ok")
    );

    cli_ok(&server, &["topups", "reconcile", "--all"]);
    assert!(cli_text(&server, &["ledger", "check"]).contains("the books balance"));
    let answers = answers.lock().unwrap();
    let topups = cli(&server, &["topups", "list", "--limit", "100000"]);
    let topups = topups.as_array().unwrap();
    assert_eq!(
        topups.len(),
        answers.len(),
        "one top-up per key, none from a refused request"
    );
    let succeeded = topups.iter().filter(|t| t["state"] == "succeeded").count();
    assert_eq!(succeeded, topups.len(), "{topups:#?}");
    let cents = |v: &Value| minor_units(v["wallet"]["balance"].as_str().unwrap());
    let after = cli(&server, &["accounts", "show", wallet]);
    assert_eq!(
        cents(&before) - cents(&after),
        599 * succeeded as i64,
        "5.99 per top-up, once each"
    );
    eprintln!(
        "{} top-ups; {} requests refused during the outage",
        answers.len(),
        refused.lock().unwrap()
    );
}

#[test]
fn voice_card_top_ups_killed_mid_call_redeem_each_card_once_and_lose_nothing() {
    let mut server = Server::start("");
    let wallet = "+12015550100";
    let recipient = "+12015550150"; // the card script's recipient: a prepaid account of ours
    let balance = balance_minor;
    let wallet_before = balance(&server, wallet, "wallet");
    let recipient_before = balance(&server, recipient, "prepaid");
    let csv = cli_text(
        &server,
        &[
            "cards", "generate", "--batch", "KILL", "--count", "12", "--value", "10.00USD",
        ],
    );
    let cards: Vec<(String, String)> = csv
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].to_string(), f[1].to_string())
        })
        .collect();
    let mut rng = 0x9E3779B97F4A7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Two rounds: six callers a second apart redeem a card each and top up by voice (a call
    // redeems about 11 s in and tops up about 44 s in); the service is killed between the
    // redemptions and the top-ups in the first round, among the top-ups in the second (just
    // after the round's first top-up is written, however long the calls took to get there).
    for round in 0..2 {
        let topups_before = cli(&server, &["topups", "list", "--limit", "1000"])
            .as_array()
            .unwrap()
            .len();
        let pins = server.dir.path().join(format!("pins-{round}.txt"));
        let mine: Vec<&str> = cards[round * 6..round * 6 + 6]
            .iter()
            .map(|(_, pin)| pin.as_str())
            .collect();
        std::fs::write(&pins, mine.join("\n")).unwrap();
        let mut generator = loadgen_command(&server)
            .args(["--calls", "6", "--rate", "1", "--length", "90s"])
            .args(["--number", "recharge", "--script", "card", "--pins"])
            .arg(&pins)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        if round == 0 {
            std::thread::sleep(Duration::from_millis(14_000 + next() % 16_000));
        } else {
            server.wait_until("a top-up of the round", Duration::from_secs(120), || {
                cli(&server, &["topups", "list", "--limit", "1000"])
                    .as_array()
                    .unwrap()
                    .len()
                    > topups_before
            });
            std::thread::sleep(Duration::from_millis(next() % 2_000));
        }
        server.kill9();
        let _ = generator.kill();
        let _ = generator.wait();
        server.restart();
    }
    cli_ok(&server, &["topups", "reconcile", "--all"]);
    assert!(cli_text(&server, &["ledger", "check"]).contains("the books balance"));

    let redeemed = cards
        .iter()
        .filter(|(serial, _)| {
            let show = cli_text(&server, &["cards", "show", serial]);
            let state = show
                .lines()
                .find_map(|l| l.strip_prefix("state"))
                .unwrap()
                .trim()
                .to_string();
            assert!(["active", "redeemed"].contains(&state.as_str()), "{show}");
            state == "redeemed"
        })
        .count() as i64;
    let topups = cli(&server, &["topups", "list", "--limit", "1000"]);
    let topups = topups.as_array().unwrap();
    assert!(
        topups
            .iter()
            .all(|t| t["state"] == "succeeded" || t["state"] == "failed"),
        "every top-up settled once the reconciler ran: {topups:#?}"
    );
    let succeeded: Vec<&Value> = topups
        .iter()
        .filter(|t| t["state"] == "succeeded")
        .collect();
    let paid: i64 = succeeded
        .iter()
        .map(|t| minor_units(t["sent"].as_str().unwrap()))
        .sum();
    let received: i64 = succeeded
        .iter()
        .map(|t| minor_units(t["received"].as_str().unwrap()))
        .sum();
    eprintln!(
        "{redeemed} of 12 cards redeemed, {} top-ups ({} delivered) over two kills",
        topups.len(),
        succeeded.len()
    );
    assert!(
        redeemed > 0 && !succeeded.is_empty(),
        "the calls got that far"
    );
    // Each redeemed card credited the wallet once; each delivered top-up was paid once from it
    // and arrived once; nothing else moved.
    assert_eq!(
        balance(&server, wallet, "wallet"),
        wallet_before + redeemed * 1000 - paid,
        "wallet: {redeemed} cards in, {} top-ups out",
        succeeded.len()
    );
    assert_eq!(
        balance(&server, recipient, "prepaid"),
        recipient_before + received
    );
}

#[test]
fn a_disk_that_fills_up_while_running_refuses_cleanly_and_recovers_when_freed() {
    let mount_dir = tempfile::tempdir().unwrap();
    let Some(disk) = Mount::new(mount_dir.path(), "size=24m") else {
        eprintln!("not root: the disk-full case is not run");
        return;
    };
    let data = disk.0.join("data");
    let server = Server::start(&format!("[paths]\ndata_dir = \"{}\"\n", data.display()));
    let wallet = "+12015550100";
    let (key, body, before) = terminal(&server, "100.00USD", "topup,wallet");
    let ok = post(server.http, &key, "disk-1", &body).unwrap();
    assert_eq!(ok.0, 200, "{ok:?}");

    // Fill the disk to the last byte.
    let filler = disk.0.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 1 << 16];
        while f.write_all(&block).is_ok() {}
        let mut byte = [0u8; 1];
        while f.write_all(&byte).is_ok() {
            byte[0] = 1;
        }
    }
    // Top-ups are refused with a clear answer, charge nothing, and nothing else breaks.
    let mut refused = 0;
    for i in 0..5 {
        let (code, v) = post(server.http, &key, &format!("disk-full-{i}"), &body).unwrap();
        if code == 503 {
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("nothing was charged"),
                "{v}"
            );
            refused += 1;
        } else {
            assert_eq!(code, 200, "{v}");
        }
    }
    assert!(refused > 0, "a full disk refuses top-ups");
    assert_eq!(server.health()["status"], "ok");
    let (code, _) = api_call(&server, "GET", "/api/v1/balance", Some(&key), &[], None);
    assert_eq!(code, 200, "reading still works");
    assert!(!server.log().contains("panicked"));

    // Space again: the same requests go through, each once.
    std::fs::remove_file(&filler).unwrap();
    for i in 0..5 {
        let (code, v) = post(server.http, &key, &format!("disk-full-{i}"), &body).unwrap();
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["state"], "succeeded", "{v}");
    }
    assert!(cli_text(&server, &["ledger", "check"]).contains("the books balance"));
    let after = cli(&server, &["accounts", "show", wallet]);
    assert_eq!(
        minor_units(before["wallet"]["balance"].as_str().unwrap())
            - minor_units(after["wallet"]["balance"].as_str().unwrap()),
        6 * 599,
        "six top-ups paid once each"
    );
    let topups = cli(&server, &["topups", "list", "--limit", "100"]);
    assert_eq!(topups.as_array().unwrap().len(), 6);
    drop(server);
}
