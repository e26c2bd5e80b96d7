use super::*;

#[test]
fn checks_back_off_to_an_hour() {
    assert_eq!(next_check(0, 0), 30_000);
    assert_eq!(next_check(0, 1), 60_000);
    assert_eq!(next_check(0, 7), 3_600_000);
    assert_eq!(next_check(0, 50), 3_600_000);
}

#[test]
fn reservation_routes_through_fx_when_currencies_differ() {
    let usd = Money::parse("5.99USD").unwrap();
    let mxn = Money::parse("100MXN").unwrap();
    let v = reservation("t", "wallet:+1", "carrier:x:MXN", usd, mxn);
    assert_eq!(v.len(), 2);
    assert_eq!(
        (v[0].debit.as_str(), v[0].credit.as_str()),
        ("wallet:+1", "system:fx:USD")
    );
    assert_eq!(
        (v[1].debit.as_str(), v[1].credit.as_str()),
        ("system:fx:MXN", "carrier:x:MXN")
    );
    let same = reservation("t", "wallet:+1", "carrier:x:USD", usd, usd);
    assert_eq!(same.len(), 1);
    assert_eq!(same[0].credit, "carrier:x:USD");
    let margin = reservation(
        "t",
        "wallet:+1",
        "carrier:x:USD",
        usd,
        Money::parse("5.00USD").unwrap(),
    );
    assert_eq!(margin.len(), 2);
    assert_eq!(margin[1].debit, "system:fees:USD");
}

mod flows {
    use super::super::*;
    use crate::topup::books::check_books;
    use crate::topup::secrets::Pin;
    use crate::topup::testing::cores;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    const NOW: i64 = 1_800_000_000_000;

    const CARRIERS: &str = r#"
[[carrier]]
id = "telcel-mx"
name = "Telcel"
country = "MX"
currency = "MXN"
adapter = "sandbox"
prefixes = ["52"]
[[carrier.product]]
id = "telcel-100"
kind = "fixed"
label = "100 pesos"
price = "5.99USD"
receive = "100MXN"
[[carrier.product]]
id = "telcel-open"
kind = "range"
label = "Any amount"
min = "1.00USD"
max = "50.00USD"
rate = "17.05"

[[carrier]]
id = "ivr-mobile"
name = "IVR Mobile"
country = "US"
currency = "USD"
adapter = "builtin"
prefixes = ["1201555"]
[[carrier.product]]
id = "ivr-5"
kind = "fixed"
label = "5 dollars"
price = "5.00USD"
receive = "5.00USD"
"#;

    /// A core with the sample carriers and a wallet holding `funds` (from a card).
    async fn funded(core: &Core, wallet: &str, funds: &str) {
        core.import_carriers(CARRIERS, NOW).await.unwrap();
        let value = Money::parse(funds).unwrap();
        let cards = core
            .generate_cards("T", 1, value, NOW + 86_400_000, NOW)
            .await
            .unwrap();
        core.redeem_card(&cards[0].pin, None, wallet, NOW)
            .await
            .unwrap();
    }

    fn req(id: &str, wallet: &str, to: &str, product: &str) -> TopupRequest {
        TopupRequest {
            id: id.into(),
            channel: "test".into(),
            funding: Funding::Wallet(wallet.into()),
            payer: wallet.into(),
            recipient: to.into(),
            product_id: product.into(),
            amount: None,
            message: None,
        }
    }

    async fn balanced(core: &Core) {
        let r = check_books(&core.db).await.unwrap();
        assert!(r.balanced(), "{r:?}");
    }

    #[tokio::test]
    async fn a_top_up_succeeds_once_and_retries_return_the_same_receipt() {
        for (core, _g) in cores().await {
            let a = Adapters::new();
            funded(&core, "+12015550100", "10.00USD").await;
            let r = core
                .topup(
                    &a,
                    None,
                    &req("t1", "+12015550100", "+52 55 1234 5678", "telcel-100"),
                    NOW,
                )
                .await
                .unwrap();
            assert_eq!(
                (r.state.as_str(), r.sent.as_str(), r.received.as_str()),
                ("succeeded", "5.99 USD", "100.00 MXN")
            );
            assert_eq!(r.carrier_ref.as_deref(), Some("SBX-t1"));
            assert_eq!(r.payer_balance.as_deref(), Some("4.01 USD"));
            assert_eq!(
                core.wallet_balance("+12015550100")
                    .await
                    .unwrap()
                    .to_string(),
                "4.01 USD"
            );
            let again = core
                .topup(
                    &a,
                    None,
                    &req("t1", "+12015550100", "525512345678", "telcel-100"),
                    NOW + 5,
                )
                .await
                .unwrap();
            assert_eq!(again, r, "same request, same receipt");
            assert_eq!(
                core.wallet_balance("+12015550100")
                    .await
                    .unwrap()
                    .to_string(),
                "4.01 USD"
            );
            let e = core
                .topup(
                    &a,
                    None,
                    &req("t1", "+12015550100", "525512345678", "telcel-open"),
                    NOW,
                )
                .await
                .unwrap_err();
            assert_eq!(e.code(), "conflict");
            assert_eq!(
                core.recent_recipients("+12015550100", 5).await.unwrap(),
                ["+525512345678"]
            );
            balanced(&core).await;
        }
    }

    #[tokio::test]
    async fn carrier_notices_settle_late_successes_and_reversals_return_the_money_once() {
        use crate::topup::notices::{Applied, Notice, Status};
        let notice = |event: &str, id: &str, status| Notice {
            event_id: event.into(),
            external_id: id.into(),
            status,
            transaction_id: Some("TX-1".into()),
            message: None,
        };
        for (core, _g) in cores().await {
            let a = Adapters::new();
            funded(&core, "+12015550107", "10.00USD").await;
            let w = "+12015550107";
            let balance = |core: &Core| {
                let core = core.clone();
                async move { core.wallet_balance(w).await.unwrap().to_string() }
            };
            // Delivered, then reversed: both movements come back, once.
            let r = core
                .topup(&a, None, &req("r1", w, "+525512345678", "telcel-100"), NOW)
                .await
                .unwrap();
            assert_eq!(r.state, TopupState::Succeeded);
            assert_eq!(balance(&core).await, "4.01 USD");
            let rev = notice("ev-1", "r1", Status::Reversed);
            assert_eq!(
                core.carrier_notice("telcel-mx", &rev, NOW + 10)
                    .await
                    .unwrap(),
                Applied::Reversed
            );
            assert_eq!(balance(&core).await, "10.00 USD");
            let receipt = core.topup_receipt("r1").await.unwrap().unwrap();
            assert_eq!(receipt.state, TopupState::Reversed);
            for t in ["r1:pay:reversal", "r1:fx:reversal"] {
                let mut conn = core.db.pool().acquire().await.unwrap();
                let t = crate::topup::books::transfer_by_id(&mut conn, t)
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("{t} missing"));
                assert_eq!(t.kind, "reversal");
            }
            // The same notice again, and the same news under another event id.
            assert_eq!(
                core.carrier_notice("telcel-mx", &rev, NOW + 11)
                    .await
                    .unwrap(),
                Applied::Duplicate
            );
            assert_eq!(
                core.carrier_notice(
                    "telcel-mx",
                    &notice("ev-2", "r1", Status::Reversed),
                    NOW + 12
                )
                .await
                .unwrap(),
                Applied::Ignored
            );
            // A success after the reversal contradicts it: recorded, nothing moves.
            assert_eq!(
                core.carrier_notice(
                    "telcel-mx",
                    &notice("ev-3", "r1", Status::Succeeded),
                    NOW + 13
                )
                .await
                .unwrap(),
                Applied::Conflict
            );
            assert_eq!(balance(&core).await, "10.00 USD");
            // Staff see it, with what each side says.
            let c = core.carrier_conflicts(10).await.unwrap();
            assert_eq!(
                c.iter()
                    .map(|c| (
                        c.carrier_id.as_str(),
                        c.event_id.as_str(),
                        c.topup_id.as_str(),
                        c.notice.as_str(),
                        c.state.as_str()
                    ))
                    .collect::<Vec<_>>(),
                [("telcel-mx", "ev-3", "r1", "succeeded", "reversed")]
            );
            // Another carrier cannot touch it; an unknown id is unknown.
            assert_eq!(
                core.carrier_notice("ivr-mobile", &notice("ev-4", "r1", Status::Reversed), NOW)
                    .await
                    .unwrap(),
                Applied::UnknownTopup
            );
            assert_eq!(
                core.carrier_notice("telcel-mx", &notice("ev-5", "nope", Status::Failed), NOW)
                    .await
                    .unwrap(),
                Applied::UnknownTopup
            );
            // A top-up left pending by a timeout, settled by a late success notice.
            let p = core
                .topup(&a, None, &req("p1", w, "+525512349999", "telcel-100"), NOW)
                .await
                .unwrap();
            assert_eq!(p.state, TopupState::Pending);
            assert_eq!(
                core.carrier_notice(
                    "telcel-mx",
                    &notice("ev-6", "p1", Status::Succeeded),
                    NOW + 20
                )
                .await
                .unwrap(),
                Applied::Settled
            );
            let p = core.topup_receipt("p1").await.unwrap().unwrap();
            assert_eq!(
                (p.state.as_str(), p.carrier_ref.as_deref()),
                ("succeeded", Some("TX-1"))
            );
            assert_eq!(balance(&core).await, "4.01 USD");
            balanced(&core).await;
            let results: Vec<(String, String)> =
                sqlx::query("SELECT event_id, result FROM carrier_events ORDER BY event_id")
                    .fetch_all(core.db.pool())
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.try_get("event_id").unwrap(), r.try_get("result").unwrap()))
                    .collect();
            let got: Vec<(&str, &str)> = results
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            assert_eq!(
                got,
                [
                    ("ev-1", "reversed"),
                    ("ev-2", "ignored"),
                    ("ev-3", "conflict"),
                    ("ev-6", "settled")
                ]
            );
        }
    }

    #[tokio::test]
    async fn failures_release_the_money_and_refusals_leave_nothing() {
        for (core, _g) in cores().await {
            let a = Adapters::new();
            funded(&core, "+12015550101", "10.00USD").await;
            let r = core
                .topup(
                    &a,
                    None,
                    &req("f1", "+12015550101", "+525512340000", "telcel-100"),
                    NOW,
                )
                .await
                .unwrap();
            assert_eq!(
                (r.state.as_str(), r.error.as_deref()),
                ("failed", Some("number not active"))
            );
            assert_eq!(
                core.wallet_balance("+12015550101")
                    .await
                    .unwrap()
                    .to_string(),
                "10.00 USD"
            );
            let mut big = req("f2", "+12015550101", "+525512345678", "telcel-open");
            big.amount = Some(Money::parse("20USD").unwrap());
            let e = core.topup(&a, None, &big, NOW).await.unwrap_err();
            assert_eq!(e.code(), "insufficient_funds");
            assert!(core.topup_receipt("f2").await.unwrap().is_none());
            let e = core
                .topup(
                    &a,
                    None,
                    &req("f3", "+12015550101", "+84912345678", "telcel-100"),
                    NOW,
                )
                .await
                .unwrap_err();
            assert_eq!(e.code(), "no_carrier");
            let e = core
                .topup(
                    &a,
                    None,
                    &req("f4", "+12015550101", "+12015550177", "telcel-100"),
                    NOW,
                )
                .await
                .unwrap_err();
            assert_eq!(e.code(), "no_product");
            let e = core
                .topup(
                    &a,
                    None,
                    &req("f5", "+12015550101", "12", "telcel-100"),
                    NOW,
                )
                .await
                .unwrap_err();
            assert_eq!(e.code(), "invalid_number");
            balanced(&core).await;
        }
    }

    #[tokio::test]
    async fn unknown_outcomes_stay_pending_until_the_reconciler_settles_them() {
        for (core, _g) in cores().await {
            let a = Adapters::new();
            funded(&core, "+12015550102", "10.00USD").await;
            let r = core
                .topup(
                    &a,
                    None,
                    &req("u1", "+12015550102", "+525512349999", "telcel-100"),
                    NOW,
                )
                .await
                .unwrap();
            assert_eq!(r.state, TopupState::Pending);
            assert_eq!(
                core.wallet_balance("+12015550102")
                    .await
                    .unwrap()
                    .to_string(),
                "4.01 USD",
                "reserved"
            );
            assert_eq!(
                core.reconcile(&a, NOW + 1_000, 10).await.unwrap().checked,
                0,
                "not due yet"
            );
            let rep = core.reconcile(&a, NOW + 60_000, 10).await.unwrap();
            assert_eq!((rep.checked, rep.succeeded), (1, 1));
            assert_eq!(
                core.topup_receipt("u1").await.unwrap().unwrap().state,
                TopupState::Succeeded
            );
            assert_eq!(
                core.reconcile(&a, NOW + 120_000, 10).await.unwrap().checked,
                0
            );
            balanced(&core).await;
        }
    }

    #[tokio::test]
    async fn builtin_carrier_credits_our_own_prepaid_account() {
        for (core, _g) in cores().await {
            let a = Adapters::new();
            funded(&core, "+12015550103", "10.00USD").await;
            let usd = Currency::new("USD").unwrap();
            core.create_prepaid(
                "+12015550150",
                usd,
                Money::parse("1USD").unwrap(),
                "en",
                NOW,
            )
            .await
            .unwrap();
            let r = core
                .topup(
                    &a,
                    None,
                    &req("b1", "+12015550103", "+12015550150", "ivr-5"),
                    NOW,
                )
                .await
                .unwrap();
            assert_eq!(r.state, TopupState::Succeeded);
            assert_eq!(
                core.prepaid("+12015550150").await.unwrap().unwrap().balance,
                "5.00"
            );
            let r = core
                .topup(
                    &a,
                    None,
                    &req("b2", "+12015550103", "+12015550151", "ivr-5"),
                    NOW,
                )
                .await
                .unwrap();
            assert_eq!(
                (r.state.as_str(), r.error.as_deref()),
                ("failed", Some("no such subscriber"))
            );
            assert_eq!(
                core.wallet_balance("+12015550103")
                    .await
                    .unwrap()
                    .to_string(),
                "5.00 USD"
            );
            balanced(&core).await;
        }
    }

    #[tokio::test]
    async fn fifty_top_ups_at_once_never_drain_a_wallet_below_zero() {
        for (core, _g) in cores().await {
            let a = Adapters::new();
            funded(&core, "+12015550104", "30.00USD").await;
            let mut tasks = vec![];
            for i in 0..50 {
                let (core, a) = (core.clone(), a.clone());
                tasks.push(tokio::spawn(async move {
                    core.topup(
                        &a,
                        None,
                        &req(
                            &format!("c{i}"),
                            "+12015550104",
                            "+525512345678",
                            "telcel-100",
                        ),
                        NOW,
                    )
                    .await
                }));
            }
            let mut ok = 0;
            for t in tasks {
                match t.await.unwrap() {
                    Ok(r) => {
                        assert_eq!(r.state, TopupState::Succeeded);
                        ok += 1;
                    }
                    Err(e) => assert_eq!(e.code(), "insufficient_funds", "{e}"),
                }
            }
            assert_eq!(ok, 5, "30.00 / 5.99 = 5 top-ups on {:?}", core.db.backend());
            assert_eq!(
                core.wallet_balance("+12015550104")
                    .await
                    .unwrap()
                    .to_string(),
                "0.05 USD"
            );
            balanced(&core).await;
        }
    }

    /// An aggregator over real HTTP, with a script per recipient.
    #[derive(Clone, Default)]
    struct Aggregator {
        posts: Arc<Mutex<HashMap<String, u32>>>,
        known: Arc<Mutex<HashMap<String, String>>>,
    }

    async fn serve_aggregator(agg: Aggregator) -> String {
        use axum::extract::{Path, State};
        use axum::http::StatusCode;
        use axum::routing::{get, post};
        use axum::{Json, Router};
        async fn create(
            State(a): State<Aggregator>,
            Json(b): Json<serde_json::Value>,
        ) -> (StatusCode, String) {
            let id = b["external_id"].as_str().unwrap_or("").to_string();
            let to = b["recipient"].as_str().unwrap_or("").to_string();
            let n = {
                let mut p = a.posts.lock().unwrap();
                let e = p.entry(id.clone()).or_default();
                *e += 1;
                *e
            };
            let ok = r#"{"status":"SUCCESSFUL","transaction_id":"AGG-1"}"#.to_string();
            match &to[to.len() - 4..] {
                "1111" => (StatusCode::OK, ok),
                "2222" => (
                    StatusCode::OK,
                    r#"{"status":"FAILED","message":"invalid msisdn"}"#.into(),
                ),
                "3333" => {
                    a.known.lock().unwrap().insert(id, "SUCCESSFUL".into());
                    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                    (StatusCode::OK, ok)
                }
                "4444" => {
                    a.known.lock().unwrap().insert(id, "SUCCESSFUL".into());
                    (StatusCode::OK, "<html>oops</html>".into())
                }
                "5555" if n == 1 => (StatusCode::SERVICE_UNAVAILABLE, "busy".into()),
                "5555" => (StatusCode::OK, ok),
                _ => (StatusCode::BAD_REQUEST, "no".into()),
            }
        }
        async fn status(
            State(a): State<Aggregator>,
            Path(id): Path<String>,
        ) -> (StatusCode, String) {
            match a.known.lock().unwrap().get(&id) {
                Some(s) => (
                    StatusCode::OK,
                    format!(r#"{{"status":"{s}","transaction_id":"AGG-2"}}"#),
                ),
                None => (StatusCode::NOT_FOUND, "{}".into()),
            }
        }
        let app = Router::new()
            .route("/topups", post(create))
            .route("/topups/{id}", get(status))
            .with_state(agg);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn http_carrier_success_failure_timeout_garbage_and_resend() {
        for (core, _g) in cores().await {
            let agg = Aggregator::default();
            let url = serve_aggregator(agg.clone()).await;
            let file = format!(
                "[[carrier]]\nid = \"agg-vn\"\nname = \"Viettel\"\ncountry = \"VN\"\ncurrency = \"VND\"\nadapter = \"http\"\n\
prefixes = [\"849\"]\nhttp = {{ base_url = \"{url}\", operator_id = \"vt\", timeout = \"1s\" }}\n\
[[carrier.product]]\nid = \"vt-50k\"\nkind = \"fixed\"\nlabel = \"50000 dong\"\nprice = \"2.10USD\"\nreceive = \"50000VND\"\n"
            );
            core.import_carriers(&file, NOW).await.unwrap();
            let value = Money::parse("20USD").unwrap();
            let cards = core
                .generate_cards("T", 1, value, NOW + 86_400_000, NOW)
                .await
                .unwrap();
            core.redeem_card(&cards[0].pin, None, "+12015550105", NOW)
                .await
                .unwrap();
            let a = Adapters::new();
            let w = "+12015550105";
            let state = |r: &Receipt| r.state;
            assert_eq!(
                state(
                    &core
                        .topup(&a, None, &req("h1", w, "+84912341111", "vt-50k"), NOW)
                        .await
                        .unwrap()
                ),
                TopupState::Succeeded
            );
            let f = core
                .topup(&a, None, &req("h2", w, "+84912342222", "vt-50k"), NOW)
                .await
                .unwrap();
            assert_eq!(
                (f.state.as_str(), f.error.as_deref()),
                ("failed", Some("invalid msisdn"))
            );
            let slow = core
                .topup(&a, None, &req("h3", w, "+84912343333", "vt-50k"), NOW)
                .await
                .unwrap();
            assert_eq!(
                slow.state,
                TopupState::Pending,
                "a timeout is unknown, never failed"
            );
            let junk = core
                .topup(&a, None, &req("h4", w, "+84912344444", "vt-50k"), NOW)
                .await
                .unwrap();
            assert_eq!(junk.state, TopupState::Pending);
            let busy = core
                .topup(&a, None, &req("h5", w, "+84912345555", "vt-50k"), NOW)
                .await
                .unwrap();
            assert_eq!(busy.state, TopupState::Pending);
            let rep = core.reconcile(&a, NOW + 60_000, 10).await.unwrap();
            assert_eq!((rep.checked, rep.succeeded), (3, 3), "{rep:?}");
            let posts = agg.posts.lock().unwrap().clone();
            assert_eq!(posts["h3"], 1, "never resent blindly");
            assert_eq!(posts["h4"], 1);
            assert_eq!(
                posts["h5"], 2,
                "resent only after the carrier said it never got it"
            );
            // 20.00 - 4 x 2.10 (the failure refunded)
            assert_eq!(
                core.wallet_balance(w).await.unwrap().to_string(),
                "11.60 USD"
            );
            balanced(&core).await;
        }
    }

    #[tokio::test]
    async fn wallet_pin_then_top_up_as_the_voice_line_does() {
        for (core, _g) in cores().await {
            funded(&core, "+12015550106", "10USD").await;
            core.create_wallet(
                "+12015550106",
                Currency::new("USD").unwrap(),
                &Pin::new("4321"),
                "en",
                NOW,
            )
            .await
            .unwrap();
            core.authenticate_wallet("+12015550106", &Pin::new("4321"), NOW)
                .await
                .unwrap();
            let mut r = req("v1", "+12015550106", "525512345678", "telcel-open");
            r.amount = Some(Money::parse("2.00USD").unwrap());
            let rec = core.topup(&Adapters::new(), None, &r, NOW).await.unwrap();
            assert_eq!(
                (rec.state.as_str(), rec.received.as_str()),
                ("succeeded", "34.10 MXN")
            );
        }
    }
}
