//! Top-up throughput: how many complete top-ups per second (lookup, reservation, carrier,
//! settlement — exactly-once semantics kept) with 1, 8 and 64 concurrent clients.
//!
//!     cargo run --release --example topup_bench                       # SQLite in a temp dir
//!     cargo run --release --example topup_bench -- postgres://u:p@127.0.0.1/db
//!
//! Carriers are the demo's sandbox adapters (no network), so this measures the core and the
//! database. Each client pays from its own wallet. After each run the books are checked.

use std::time::{Duration, Instant};

use topup_ivr::clock::now_ms;
use topup_ivr::store::Db;
use topup_ivr::topup::Core;
use topup_ivr::topup::adapters::Adapters;
use topup_ivr::topup::auth::AuthPolicy;
use topup_ivr::topup::books::check_books;
use topup_ivr::topup::ledger::accounts;
use topup_ivr::topup::money::Money;
use topup_ivr::topup::secrets::Pepper;
use topup_ivr::topup::topups::{Funding, TopupRequest, TopupState};

const RUN: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() {
    let url = std::env::args().nth(1);
    let dir = tempfile::tempdir().unwrap();
    let db = match &url {
        Some(u) => Db::connect(u).await.expect("database"),
        None => Db::open(dir.path()).await.expect("sqlite"),
    };
    let core = Core::new(
        db,
        Pepper::new(b"benchmark-pepper-0123").unwrap(),
        AuthPolicy::default(),
    );
    core.seed_demo(now_ms()).await.unwrap();
    let backend = format!("{:?}", core.db.backend());
    println!("| backend | clients | top-ups | seconds | top-ups/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|");
    for clients in [1usize, 8, 64] {
        let usd = topup_ivr::topup::money::Currency::new("USD").unwrap();
        for c in 0..clients {
            let wallet = format!("+1201555{:04}", 2000 + c);
            if core.wallet(&wallet).await.unwrap().is_none() {
                core.create_wallet(
                    &wallet,
                    usd,
                    &topup_ivr::topup::secrets::Pin::new("1234"),
                    "en",
                    now_ms(),
                )
                .await
                .unwrap();
                core.adjust(
                    &format!("bench-{c}"),
                    &accounts::wallet(&wallet),
                    Money::parse("1000000USD").unwrap(),
                    now_ms(),
                )
                .await
                .unwrap();
            }
        }
        let start = Instant::now();
        let mut tasks = vec![];
        for c in 0..clients {
            let core = core.clone();
            tasks.push(tokio::spawn(async move {
                let adapters = Adapters::new();
                let wallet = format!("+1201555{:04}", 2000 + c);
                let mut latencies = vec![];
                let mut i = 0u64;
                while start.elapsed() < RUN {
                    let t = Instant::now();
                    let r = core
                        .topup(
                            &adapters,
                            None,
                            &TopupRequest {
                                id: format!("b{clients}-{c}-{i}"),
                                channel: "bench".into(),
                                funding: Funding::Wallet(wallet.clone()),
                                payer: wallet.clone(),
                                recipient: "+525512345678".into(),
                                product_id: "telcel-mx-100".into(),
                                amount: None,
                                message: None,
                            },
                            now_ms(),
                        )
                        .await
                        .expect("top-up");
                    assert_eq!(r.state, TopupState::Succeeded);
                    latencies.push(t.elapsed());
                    i += 1;
                }
                latencies
            }));
        }
        let mut all = vec![];
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let secs = start.elapsed().as_secs_f64();
        all.sort();
        let pct = |p: f64| {
            all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0
        };
        println!(
            "| {backend} | {clients} | {} | {secs:.1} | {:.0} | {:.1} | {:.1} |",
            all.len(),
            all.len() as f64 / secs,
            pct(0.5),
            pct(0.99)
        );
        let report = check_books(&core.db).await.unwrap();
        assert!(
            report.balanced(),
            "books unbalanced after the run: {report:?}"
        );
    }
}
