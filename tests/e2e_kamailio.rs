//! Scale-out: Kamailio (Debian's package, docker/kamailio/kamailio.cfg) in front of two
//! topup-ivr nodes sharing one Postgres ledger. Calls placed by sipp through Kamailio spread
//! over both nodes; one node is stopped in the middle of a run: its calls finish, its new calls
//! go to the other node, no call fails, and the books balance afterwards.

mod common;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Kamailio {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Kamailio {
    /// The shipped configuration, listening on a loopback port, dispatching to `nodes`.
    fn start(nodes: &[SocketAddr]) -> Kamailio {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let list = dir.path().join("dispatcher.list");
        let text: String = nodes.iter().map(|n| format!("1 sip:{n}\n")).collect();
        std::fs::write(&list, text).unwrap();
        let cfg = std::fs::read_to_string(repo().join("docker/kamailio/kamailio.cfg")).unwrap();
        let cfg = cfg
            .replace("listen=udp:0.0.0.0:5060", &format!("listen=udp:{addr}"))
            .replace("/etc/kamailio/dispatcher.list", list.to_str().unwrap());
        assert!(cfg.contains(&format!("listen=udp:{addr}")));
        let path = dir.path().join("kamailio.cfg");
        std::fs::write(&path, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("kamailio.log")).unwrap();
        // A process group of its own: Kamailio forks its workers, and they must go with it.
        let child = Command::new("kamailio")
            .process_group(0)
            .arg("-f")
            .arg(&path)
            .args(["-DD", "-E", "-m", "64", "-M", "8", "-Y"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start kamailio");
        Kamailio { child, addr, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // The whole group: killing the main process alone leaves its workers running.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- kamailio log ----\n{}", self.log());
        }
    }
}

fn calls_total(server: &Server) -> u64 {
    server.health()["calls_total"].as_u64().unwrap()
}

/// Runs sipp through the proxy; panics with its logs if any call failed.
fn run_through(sipp: &Sipp, proxy: &Kamailio) {
    let logs = tempfile::tempdir().unwrap();
    let out = sipp.command_to(proxy.addr, logs.path()).output().unwrap();
    assert!(
        out.status.success(),
        "sipp failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        read_logs(logs.path())
    );
}

#[test]
fn calls_spread_over_two_nodes_and_stopping_one_drops_no_call() {
    require("sipp");
    require("kamailio");
    let url = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(topup_ivr::store::testing::postgres_url());
    let shared = tempfile::tempdir().unwrap();
    let pepper = shared.path().join("pin-pepper");
    let extra = format!(
        "[database]\nurl = \"{url}\"\n[security]\npin_pepper_file = \"{}\"\n[calls]\nshutdown_grace = \"30s\"\n",
        pepper.display()
    );
    // The first node creates the schema and the demo data; the second finds them.
    let mut a = Server::start(&extra);
    let b = Server::start(&extra);
    let proxy = Kamailio::start(&[a.sip, b.sip]);
    std::thread::sleep(Duration::from_millis(1500));

    // Twenty short calls, ten at a time: round robin puts half on each node.
    run_through(
        &Sipp::new("proxied_call.xml", "echo")
            .arg("-m")
            .arg("20")
            .arg("-l")
            .arg("10")
            .arg("-r")
            .arg("10")
            .arg("-d")
            .arg("1000"),
        &proxy,
    );
    let (a1, b1) = (calls_total(&a), calls_total(&b));
    assert_eq!(a1 + b1, 20);
    assert!(a1 >= 5 && b1 >= 5, "spread {a1}/{b1}");

    // Two wallet top-ups through the proxy, whichever node takes them: a number, then the
    // same number again as the recent recipient (offered first, whichever node wrote it).
    for digits in ["1234#1525512345678#121", "1234#121"] {
        run_through(
            &keys("proxied_keys.xml", "wallet", "+12015550100", digits)
                .arg("-d")
                .arg("12000"),
            &proxy,
        );
    }

    // Forty 3-second calls; node a is stopped two seconds in.
    let logs = tempfile::tempdir().unwrap();
    let sipp = Sipp::new("proxied_call.xml", "echo")
        .arg("-m")
        .arg("40")
        .arg("-l")
        .arg("10")
        .arg("-r")
        .arg("10")
        .arg("-d")
        .arg("3000");
    let run = sipp
        .command_to(proxy.addr, logs.path())
        .spawn()
        .expect("sipp");
    std::thread::sleep(Duration::from_secs(2));
    a.terminate();
    let out = run.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "a call failed while a node was stopping:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        read_logs(logs.path())
    );
    assert!(a.wait_exit(Duration::from_secs(40)).success());
    assert!(a.log().contains("refusing new calls"));
    let b_end = calls_total(&b);
    assert!(b_end > b1 + 2, "node b took the rest: {b_end}");

    // One ledger: every call recorded once, the top-ups posted once, the books balance.
    b.wait_idle();
    let calls = b.calls();
    assert_eq!(calls.len(), 62, "20 + 2 + 40 calls");
    for c in &calls {
        assert_eq!(c["end_reason"], "caller-hangup", "{c}");
    }
    let (ok, topups) = count_topups(&b, "state", "succeeded");
    assert_eq!(ok, 2, "{topups}");
    let wallet = cli(&b, &["accounts", "show", "+12015550100"]);
    assert_eq!(wallet["wallet"]["balance"], "13.02", "25.00 - 2 x 5.99");
    let books = cli(&b, &["ledger", "check"]);
    assert!(
        books["mismatched_accounts"].as_array().unwrap().is_empty()
            && books["overdrawn_accounts"].as_array().unwrap().is_empty(),
        "{books}"
    );
}
