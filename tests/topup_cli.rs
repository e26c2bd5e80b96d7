//! The top-up core through its command line, on SQLite and on Postgres: cards, carriers,
//! accounts, top-ups and the ledger check — and a crash between reserving a top-up and
//! settling it (the process is killed with SIGKILL while the carrier has not answered).

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::BIN;

/// Where a test's data lives: a data directory, plus a Postgres URL for the Postgres run.
struct Env {
    dir: tempfile::TempDir,
    database_url: Option<String>,
}

impl Env {
    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--data-dir".to_string(),
            self.dir.path().join("data").display().to_string(),
        ];
        if let Some(u) = &self.database_url {
            a.push("--database-url".into());
            a.push(u.clone());
        }
        a
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args).args(self.args());
        c
    }

    /// Runs a command; returns (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        self.run_with_stdin(args, "")
    }

    fn run_with_stdin(&self, args: &[&str], stdin: &str) -> (bool, String, String) {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "{args:?} failed:\n{out}\n{err}");
        out
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

/// One SQLite and one Postgres environment.
fn envs(rt: &tokio::runtime::Runtime) -> Vec<Env> {
    // The SQLite data directory exists, as where the service runs (commands refuse one that
    // does not).
    let sqlite = tempfile::tempdir().unwrap();
    std::fs::create_dir(sqlite.path().join("data")).unwrap();
    vec![
        Env {
            dir: sqlite,
            database_url: None,
        },
        Env {
            dir: tempfile::tempdir().unwrap(),
            database_url: Some(rt.block_on(topup_ivr::store::testing::postgres_url())),
        },
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn cards_accounts_topups_and_the_ledger_from_the_command_line() {
    let rt = runtime();
    for env in envs(&rt) {
        // Empty lists say so, in words (JSON stays an empty array).
        for (args, none) in [
            (&["escalations", "list"][..], "no escalations"),
            (&["sms", "list"][..], "no SMS"),
            (&["topups", "list"][..], "no top-ups"),
            (&["carriers", "list"][..], "no carriers"),
        ] {
            assert_eq!(env.ok(args).trim(), none, "{args:?}");
            assert_eq!(env.json(args), serde_json::json!([]), "{args:?}");
        }
        env.ok(&[
            "carriers",
            "import",
            &common::repo()
                .join("demo/carriers.toml")
                .display()
                .to_string(),
        ]);
        let csv = env.ok(&[
            "cards",
            "generate",
            "--batch",
            "B7",
            "--count",
            "3",
            "--value",
            "10.00USD",
            "--expires",
            "2099-01-31",
        ]);
        let rows: Vec<Vec<&str>> = csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect())
            .collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(&rows[0][2..], ["10.00", "USD", "B7", "2099-01-31"]);
        let card = env.json(&["cards", "show", rows[0][0]]);
        assert_eq!(card["state"], "active");
        assert!(
            !card.to_string().contains(rows[0][1]),
            "the PIN is never shown"
        );
        env.ok(&["cards", "block", rows[1][0]]);
        assert_eq!(env.json(&["cards", "show", rows[1][0]])["state"], "blocked");
        let (ok, _, err) = env.run(&["cards", "block", "nope"]);
        assert!(!ok && err.contains("nope"), "{err}");

        let (ok, _, err) =
            env.run_with_stdin(&["accounts", "create-wallet", "+12015550100"], "2468\n");
        assert!(ok, "{err}");
        assert!(!err.contains("2468"), "the PIN is not echoed");
        env.ok(&[
            "accounts",
            "credit",
            "+12015550100",
            "12.00USD",
            "--id",
            "first",
        ]);
        env.ok(&[
            "accounts",
            "credit",
            "+12015550100",
            "12.00USD",
            "--id",
            "first",
        ]);
        env.ok(&[
            "accounts",
            "create-prepaid",
            "+12015550150",
            "--low-balance",
            "2.00",
            "--language",
            "es",
        ]);
        let shown = env.json(&["accounts", "show", "+12015550100"]);
        assert_eq!(
            shown["wallet"]["balance"], "12.00",
            "the same adjustment id counts once"
        );

        let r = env.json(&[
            "topups",
            "create",
            "--id",
            "cli-1",
            "--wallet",
            "+12015550100",
            "--to",
            "525512345678",
            "--product",
            "telcel-mx-100",
        ]);
        assert_eq!(r["state"], "succeeded");
        // The sandbox carrier refuses numbers ending in 0000: the receipt says so, the money
        // comes back, and the command fails (exit status), so a script notices.
        let (ok, out, err) = env.run(&[
            "topups",
            "create",
            "--id",
            "cli-refused",
            "--wallet",
            "+12015550100",
            "--to",
            "+12015550000",
            "--product",
            "ivr-mobile-5",
        ]);
        assert!(!ok, "a failed top-up exits non-zero: {out}");
        assert!(out.contains("failed"), "the receipt is printed: {out}");
        assert!(
            err.contains("top-up cli-refused failed") && err.contains("nothing was taken"),
            "{err}"
        );
        assert_eq!(
            env.json(&["accounts", "show", "+12015550100"])["wallet"]["available"],
            "6.01"
        );
        let r = env.json(&[
            "topups",
            "create",
            "--id",
            "cli-2",
            "--wallet",
            "+12015550100",
            "--to",
            "+12015550150",
            "--product",
            "ivr-mobile-5",
        ]);
        assert_eq!(r["state"], "succeeded");
        assert_eq!(
            env.json(&["accounts", "show", "+12015550150"])["prepaid"]["balance"],
            "5.00"
        );
        // 12.00 - 5.99 - 5.00 leaves 1.01: not enough for another 5.99.
        let (ok, _, err) = env.run(&[
            "topups",
            "create",
            "--id",
            "cli-3",
            "--wallet",
            "+12015550100",
            "--to",
            "525512345678",
            "--product",
            "telcel-mx-100",
        ]);
        assert!(!ok && err.contains("insufficient funds"), "{err}");
        let list = env.json(&["topups", "list"]);
        assert!(list.as_array().unwrap().len() >= 2);
        let done = env.json(&["topups", "list", "--state", "succeeded"]);
        assert!(
            done.as_array()
                .unwrap()
                .iter()
                .all(|t| t["state"] == "succeeded")
                && !done.as_array().unwrap().is_empty(),
            "{done}"
        );
        let (ok, _, err) = env.run(&["topups", "list", "--state", "done"]);
        assert!(!ok && err.contains("`done` is not a top-up state"), "{err}");
        // A receipt as text, and as JSON.
        let text = env.ok(&["topups", "show", "cli-2"]);
        assert!(
            text.starts_with("cli-2 succeeded: ") && text.contains("to +12015550150"),
            "{text}"
        );
        assert_eq!(env.json(&["topups", "show", "cli-2"])["state"], "succeeded");
        let lookup = env.json(&["numbers", "lookup", "+84 98 123 4567"]);
        assert_eq!(lookup["carrier_id"], "viettel-vn");
        // A national number: the reason, and how to write it.
        let (ok, _, err) = env.run(&["numbers", "lookup", "5512345678"]);
        assert!(!ok);
        assert!(
            err.contains("invalid number: too short")
                && err.contains("write it as +<country code><number>"),
            "{err}"
        );
        // A rate of zero is refused as a bad value, before anything is stored.
        let (ok, _, err) = env.run(&[
            "apikeys",
            "create",
            "--name",
            "zero",
            "--wallet",
            "+12015550100",
            "--per-minute",
            "0",
        ]);
        assert!(!ok);
        assert!(
            err.contains("invalid value '0' for '--per-minute") && err.contains("1..=100000"),
            "{err}"
        );
        let products = env.json(&["products", "list", "--number", "+84981234567"]);
        // Smallest first, not in the order of their ids (`100k` sorts before `50k`).
        assert_eq!(products[0]["id"], "viettel-vn-50k");
        assert_eq!(products[1]["id"], "viettel-vn-100k");
        let check = env.json(&["ledger", "check"]);
        assert_eq!(check["mismatched_accounts"].as_array().unwrap().len(), 0);
        assert!(env.ok(&["ledger", "check"]).contains("the books balance"));
    }
}

/// An aggregator that takes a top-up and never answers the request (it hangs), but reports
/// the outcome when asked for the status, as configured.
#[derive(Clone, Default)]
struct SlowAggregator {
    posts: Arc<Mutex<HashMap<String, u32>>>,
    delivered: Arc<Mutex<HashMap<String, bool>>>,
    /// When false, the aggregator "lost" the request: status says 404 until it is resent.
    keep: bool,
}

fn start_aggregator(rt: &tokio::runtime::Runtime, agg: SlowAggregator) -> String {
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use axum::{Json, Router};
    async fn create(
        State(a): State<SlowAggregator>,
        Json(b): Json<serde_json::Value>,
    ) -> (StatusCode, String) {
        let id = b["external_id"].as_str().unwrap_or("").to_string();
        let n = {
            let mut p = a.posts.lock().unwrap();
            let e = p.entry(id.clone()).or_default();
            *e += 1;
            *e
        };
        if n == 1 {
            if a.keep {
                a.delivered.lock().unwrap().insert(id.clone(), true);
            }
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        a.delivered.lock().unwrap().insert(id, true);
        (
            StatusCode::OK,
            r#"{"status":"SUCCESSFUL","transaction_id":"AGG-9"}"#.into(),
        )
    }
    async fn status(
        State(a): State<SlowAggregator>,
        Path(id): Path<String>,
    ) -> (StatusCode, String) {
        if a.delivered.lock().unwrap().contains_key(&id) {
            (
                StatusCode::OK,
                r#"{"status":"SUCCESSFUL","transaction_id":"AGG-9"}"#.into(),
            )
        } else {
            (StatusCode::NOT_FOUND, "{}".into())
        }
    }
    let app = Router::new()
        .route("/topups", post(create))
        .route("/topups/{id}", get(status))
        .with_state(agg);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[test]
fn a_crash_between_reserve_and_settle_loses_nothing_and_pays_once() {
    let rt = runtime();
    for keep in [true, false] {
        for env in envs(&rt) {
            let agg = SlowAggregator {
                keep,
                ..Default::default()
            };
            let url = start_aggregator(&rt, agg.clone());
            let carriers = env.dir.path().join("carriers.toml");
            std::fs::write(
                &carriers,
                format!(
                    "[[carrier]]\nid = \"agg-ph\"\nname = \"Globe\"\ncountry = \"PH\"\ncurrency = \"PHP\"\nadapter = \"http\"\n\
prefixes = [\"63917\"]\nhttp = {{ base_url = \"{url}\", operator_id = \"globe\", timeout = \"60s\" }}\n\
[[carrier.product]]\nid = \"globe-100\"\nkind = \"fixed\"\nlabel = \"100 pesos\"\nprice = \"2.05USD\"\nreceive = \"100PHP\"\n"
                ),
            )
            .unwrap();
            env.ok(&["carriers", "import", &carriers.display().to_string()]);
            env.run_with_stdin(&["accounts", "create-wallet", "+12015550100"], "2468\n");
            env.ok(&[
                "accounts",
                "credit",
                "+12015550100",
                "10.00USD",
                "--id",
                "fund",
            ]);

            // The top-up reserves the money, asks the carrier, and is killed while waiting.
            let mut child = env
                .command(&[
                    "topups",
                    "create",
                    "--id",
                    "crash-1",
                    "--wallet",
                    "+12015550100",
                    "--to",
                    "+639171234567",
                    "--product",
                    "globe-100",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            while agg.posts.lock().unwrap().get("crash-1").is_none() {
                assert!(
                    Instant::now() < deadline,
                    "the top-up never reached the carrier"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            child.kill().unwrap(); // SIGKILL: no cleanup
            child.wait().unwrap();

            let pending: serde_json::Value =
                serde_json::from_str(&env.ok(&["topups", "show", "crash-1", "--json"])).unwrap();
            assert_eq!(
                pending["state"], "pending",
                "recorded and reserved before the carrier was asked"
            );
            assert_eq!(
                env.json(&["accounts", "show", "+12015550100"])["wallet"]["available"],
                "7.95"
            );
            assert!(env.ok(&["ledger", "check"]).contains("the books balance"));

            // After the restart, the reconciler settles it — exactly once.
            let out = env.ok(&["topups", "reconcile", "--all"]);
            assert!(out.contains("1 succeeded"), "{out}");
            let done = env.json(&["topups", "list"]);
            assert_eq!(done[0]["state"], "succeeded");
            let posts = agg.posts.lock().unwrap().get("crash-1").copied();
            assert_eq!(
                posts,
                Some(if keep { 1 } else { 2 }),
                "resent only when the carrier never got it (keep={keep})"
            );
            // Retrying the original request returns the settled receipt, no new payment.
            let again = env.json(&[
                "topups",
                "create",
                "--id",
                "crash-1",
                "--wallet",
                "+12015550100",
                "--to",
                "+639171234567",
                "--product",
                "globe-100",
            ]);
            assert_eq!(again["state"], "succeeded");
            let w = env.json(&["accounts", "show", "+12015550100"]);
            assert_eq!(
                (
                    w["wallet"]["balance"].as_str(),
                    w["wallet"]["available"].as_str()
                ),
                (Some("7.95"), Some("7.95"))
            );
            assert!(env.ok(&["ledger", "check"]).contains("the books balance"));
        }
    }
}
