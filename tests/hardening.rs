//! The attacks of a hardening review, each in a form that takes seconds, against the running
//! service: a login flood from many hosts during a call, an RTP sprayer on the call's ports,
//! a flood of unfinished HTTP connections, cross-site requests to the console, a key that names
//! a stranger's wallet, one host taking every call slot or writing a record per INVITE, a
//! spoofed SDP address, a forged log line, files others may read.

mod common;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn create_agent(server: &Server, username: &str, password: &str, staff: bool) {
    let mut args = vec!["agents", "create", username, "--name", "Test Agent"];
    if staff {
        args.push("--staff");
    }
    let mut c = server
        .command(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "{password}").unwrap();
    assert!(c.wait().unwrap().success());
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// An HTTP client whose connections come from `from` (a loopback address: 127.0.0.0/8 is
/// all ours), as from another host.
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// One request; (status, headers, body).
async fn send(
    client: &reqwest::Client,
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut r = client.request(
        method.parse().unwrap(),
        format!("http://{}{path}", server.http),
    );
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(b) = body {
        r = r
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    match r.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let h = resp.headers().clone();
            (status, h, resp.text().await.unwrap_or_default())
        }
        Err(_) => (0, Default::default(), String::new()),
    }
}

/// Logs `username` in from 127.0.0.1; the session cookie and the CSRF token.
fn log_in(server: &Server, username: &str, password: &str) -> (String, String) {
    runtime().block_on(async {
        let body = format!(r#"{{"username":"{username}","password":"{password}"}}"#);
        let (status, headers, text) = send(
            &client_from("127.0.0.1"),
            server,
            "POST",
            "/console/api/login",
            &[],
            Some(&body),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let cookie = headers["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        (cookie, v["csrf"].as_str().unwrap().to_string())
    })
}

#[test]
fn a_login_flood_from_many_hosts_does_not_touch_a_call_in_progress() {
    let server = Server::start("");
    create_agent(&server, "ana", "correct horse battery", false);
    // Two echo calls pressing keys for 9 s, measuring every frame they receive.
    let generator = loadgen_command(&server)
        .args([
            "--calls", "2", "--length", "9s", "--json", "--number", "echo",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The flood starts once both calls are up.
    server.wait_until("the generator's two calls", Duration::from_secs(20), || {
        server.health()["active_calls"] == 2
    });
    // Eight hosts, each trying passwords as fast as answers come, for 6 s: each is throttled
    // as a source, so across them they still ask for many argon2 checks.
    let statuses = runtime().block_on(async {
        let mut tasks = vec![];
        for h in 2..10 {
            let server_http = server.http;
            tasks.push(tokio::spawn(async move {
                let client = client_from(&format!("127.0.0.{h}"));
                let until = Instant::now() + Duration::from_secs(6);
                let mut seen = vec![];
                let mut n = 0;
                while Instant::now() < until {
                    n += 1;
                    let body = format!(r#"{{"username":"u{h}x{n}","password":"wrong password"}}"#);
                    let r = client
                        .post(format!("http://{server_http}/console/api/login"))
                        .header("Content-Type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    seen.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
                }
                seen
            }));
        }
        let mut all = vec![];
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let out = generator.wait_with_output().unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    // The calls did not notice.
    assert_eq!(r["established"], 2, "{r:#}");
    assert_eq!(r["failed"], serde_json::json!({}), "{r:#}");
    assert_eq!(r["frames_lost"], 0, "{r:#}");
    assert_eq!(r["dtmf_unanswered"], 0, "{r:#}");
    // Every login was answered: refused (401), throttled (429) or busy (503), never worse.
    assert!(statuses.len() > 40, "{} attempts", statuses.len());
    assert!(
        statuses.iter().all(|s| [401, 429, 503].contains(s)),
        "{statuses:?}"
    );
}

#[test]
fn a_login_is_throttled_after_five_wrong_passwords_and_unknown_users_take_as_long() {
    let server = Server::start("");
    create_agent(&server, "ana", "correct horse battery", false);
    let (codes, known, unknown) = runtime().block_on(async {
        let c = client_from("127.0.0.11");
        let login = |user: &str, pw: &str| format!(r#"{{"username":"{user}","password":"{pw}"}}"#);
        let mut codes = vec![];
        for _ in 0..8 {
            let (s, h, _) = send(
                &c,
                &server,
                "POST",
                "/console/api/login",
                &[],
                Some(&login("ana", "guess")),
            )
            .await;
            codes.push((s, h.get("retry-after").is_some()));
        }
        // Now the right password is refused too, unchecked, until the door opens.
        let (right, _, _) = send(
            &c,
            &server,
            "POST",
            "/console/api/login",
            &[],
            Some(&login("ana", "correct horse battery")),
        )
        .await;
        codes.push((right, false));
        // The time of a refusal: a known user (wrong password) and unknown ones, each from a
        // host of its own so no throttle answers first.
        let mut known = vec![];
        let mut unknown = vec![];
        for i in 0..3 {
            create_agent(
                &server,
                &format!("known{i}"),
                "correct horse battery",
                false,
            );
            known.push(refusal_time(&server, &format!("127.0.1.{i}"), &format!("known{i}")).await);
            unknown
                .push(refusal_time(&server, &format!("127.0.2.{i}"), &format!("nobody{i}")).await);
        }
        known.sort();
        unknown.sort();
        (codes, known[1], unknown[1])
    });
    let statuses: Vec<u16> = codes.iter().map(|c| c.0).collect();
    assert_eq!(&statuses[..5], &[401; 5], "{codes:?}");
    assert!(codes[5..8].iter().all(|c| c == &(429, true)), "{codes:?}");
    assert_eq!(
        statuses[8], 429,
        "the right password while throttled: {codes:?}"
    );
    // Unknown users are checked against a hash too: no answer says which usernames exist.
    assert!(
        unknown.as_secs_f64() >= known.as_secs_f64() * 0.3,
        "unknown {unknown:?} vs known {known:?}"
    );
}

/// How long a wrong login of `user` from `host` takes to be refused.
async fn refusal_time(server: &Server, host: &str, user: &str) -> Duration {
    let c = client_from(host);
    let body = format!(r#"{{"username":"{user}","password":"nope"}}"#);
    let t = Instant::now();
    let (s, _, _) = send(&c, server, "POST", "/console/api/login", &[], Some(&body)).await;
    assert_eq!(s, 401);
    t.elapsed()
}

#[test]
fn cross_site_requests_to_the_console_are_refused_and_private_pages_say_so() {
    let server = Server::start("[http]\nsecure_cookies = true\n");
    create_agent(&server, "ana", "correct horse battery", false);
    let (cookie, csrf) = log_in(&server, "ana", "correct horse battery");
    assert!(csrf.len() >= 32);
    let results = runtime().block_on(async {
        let c = client_from("127.0.0.1");
        let act = "/console/api/escalations/nosuch/close";
        let mut out = vec![];
        for headers in [
            // Another port of the same host is another origin.
            vec![
                ("Cookie", cookie.as_str()),
                ("X-CSRF-Token", csrf.as_str()),
                ("Origin", "http://127.0.0.1:9"),
            ],
            vec![
                ("Cookie", cookie.as_str()),
                ("X-CSRF-Token", csrf.as_str()),
                ("Sec-Fetch-Site", "same-site"),
            ],
            vec![("Cookie", cookie.as_str())],
            vec![("Cookie", cookie.as_str()), ("X-CSRF-Token", "0000")],
            // The page itself: through the guard (then: no such escalation).
            vec![
                ("Cookie", cookie.as_str()),
                ("X-CSRF-Token", csrf.as_str()),
                ("Sec-Fetch-Site", "same-origin"),
            ],
        ] {
            let (s, _, _) = send(&c, &server, "POST", act, &headers, Some("{}")).await;
            out.push(s);
        }
        let (_, page, _) = send(&c, &server, "GET", "/console", &[], None).await;
        let (_, login, _) = send(
            &c,
            &server,
            "POST",
            "/console/api/login",
            &[],
            Some(r#"{"username":"ana","password":"correct horse battery"}"#),
        )
        .await;
        (out, page, login)
    });
    let (statuses, page, login) = results;
    assert_eq!(statuses, [403, 403, 403, 403, 404]);
    let csp = page["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'sha256-") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page["x-frame-options"], "DENY");
    assert_eq!(page["x-content-type-options"], "nosniff");
    assert_eq!(page["cache-control"], "no-store");
    assert!(login["set-cookie"].to_str().unwrap().contains("; Secure"));
}

#[test]
fn the_staff_pages_are_for_staff_only() {
    let server = Server::start("");
    create_agent(&server, "ana", "correct horse battery", false);
    create_agent(&server, "sam", "correct horse battery", true);
    let (agent, _) = log_in(&server, "ana", "correct horse battery");
    let (staff, _) = log_in(&server, "sam", "correct horse battery");
    let (a, s) = runtime().block_on(async {
        let c = client_from("127.0.0.1");
        let get = |cookie: String| {
            let c = c.clone();
            let server = &server;
            async move {
                send(
                    &c,
                    server,
                    "GET",
                    "/staff/api/calls",
                    &[("Cookie", &cookie)],
                    None,
                )
                .await
                .0
            }
        };
        (get(agent).await, get(staff).await)
    });
    assert_eq!((a, s), (403, 200));
    // And staff can be made of an agent, by staff at the command line.
    cli_text(&server, &["agents", "role", "ana", "staff"]);
}

#[test]
fn a_forged_log_line_in_a_username_stays_one_escaped_line() {
    let server = Server::start("");
    let forged = "eve\\n2026-12-07T00:00:00.000000Z  INFO topup_ivr::http::console: agent logged in agent=admin\\u001b[2J";
    runtime().block_on(async {
        let body = format!(r#"{{"username":"{forged}","password":"x"}}"#);
        let (s, _, _) = send(
            &client_from("127.0.0.1"),
            &server,
            "POST",
            "/console/api/login",
            &[],
            Some(&body),
        )
        .await;
        assert_eq!(s, 401);
    });
    let log = server.log();
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-12-07T00:00:00.000000Z")),
        "a forged line: {log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "an escape sequence reached the log"
    );
    assert!(log.contains("eve\\n2026-12-07"), "{log}");
}

#[test]
fn a_redeem_key_naming_a_strangers_wallet_cannot_lock_it() {
    let server = Server::start("");
    let attacker = api_key(&server, "+12015550100", "redeem", 100);
    let shop = api_key(&server, "+12015550100", "redeem", 100);
    let mut last = 0;
    for i in 0..15 {
        let body = format!(r#"{{"pin":"9999888877{i:04}","wallet":"+12015550100"}}"#);
        last = api_call(
            &server,
            "POST",
            "/api/v1/cards/redeem",
            Some(&attacker),
            &[],
            Some(&body),
        )
        .0;
    }
    // The attacker's own key is throttled...
    assert_eq!(last, 429);
    // ...the wallet it named is not: another terminal redeems a real card into it at once.
    let (status, v) = api_call(
        &server,
        "POST",
        "/api/v1/cards/redeem",
        Some(&shop),
        &[],
        Some(r#"{"pin":"11112222333344","wallet":"+12015550100"}"#),
    );
    assert_eq!(status, 200, "{v}");
    let w = cli(&server, &["accounts", "show", "+12015550100"]);
    assert_eq!(w["wallet"]["status"], "active", "{w}");
}

/// An INVITE for `service` from `sock` with an SDP naming `media` as our peer's RTP address.
fn invite(to: SocketAddr, sock: &UdpSocket, service: &str, n: usize, media: SocketAddr) -> String {
    let me = sock.local_addr().unwrap();
    let sdp = format!(
        "v=0\r\no=x 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
        ip = media.ip(),
        port = media.port()
    );
    format!(
        "INVITE sip:{service}@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKh{n}x{}\r\nFrom: <sip:+12015550177@{me}>;tag=h{n}\r\nTo: <sip:{service}@{to}>\r\nCall-ID: hardening-{n}-{}@x\r\nCSeq: 1 INVITE\r\nContact: <sip:x@{me}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        me.port(),
        me.port(),
        sdp.len()
    )
}

/// The final response (status code) of each call that answered on `sock` within `wait`
/// (retransmissions counted once).
fn finals(sock: &UdpSocket, wait: Duration) -> Vec<u16> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let until = Instant::now() + wait;
    let mut seen = std::collections::BTreeMap::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            let call_id = text
                .lines()
                .find_map(|l| l.strip_prefix("Call-ID: "))
                .unwrap_or("")
                .to_string();
            if let Some(code) = text
                .strip_prefix("SIP/2.0 ")
                .and_then(|r| r.get(..3))
                .and_then(|c| c.parse::<u16>().ok())
                && code >= 200
            {
                seen.insert(call_id, code);
            }
        }
    }
    seen.into_values().collect()
}

#[test]
fn one_host_holds_at_most_its_share_of_calls_and_writes_few_records() {
    require("sipp");
    let server = Server::start("[sip]\nmax_calls = 10\n");
    // A host that opens calls it never ACKs (each would hold a slot for 32 s).
    let hog = UdpSocket::bind("127.0.0.2:0").unwrap();
    let sink = UdpSocket::bind("127.0.0.2:0").unwrap();
    for n in 0..30 {
        hog.send_to(
            invite(server.sip, &hog, "echo", n, sink.local_addr().unwrap()).as_bytes(),
            server.sip,
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let answers = finals(&hog, Duration::from_secs(2));
    let taken = answers.iter().filter(|c| **c == 200).count();
    assert_eq!(taken, 5, "half of max_calls: {answers:?}");
    assert!(
        answers.iter().filter(|c| **c == 503).count() >= 20,
        "{answers:?}"
    );
    // The rest are everybody else's: a caller from another host gets through.
    keys("keys.xml", "echo", "+12015550161", "1**").run(&server);
    // A flood of calls to a number nobody serves, from a third host: a handful of records.
    let flood = UdpSocket::bind("127.0.0.3:0").unwrap();
    for n in 0..500 {
        // (1 ms apart: back to back, the kernel drops most before the service sees them.)
        std::thread::sleep(Duration::from_millis(1));
        flood
            .send_to(
                invite(
                    server.sip,
                    &flood,
                    "nosuch",
                    1000 + n,
                    sink.local_addr().unwrap(),
                )
                .as_bytes(),
                server.sip,
            )
            .unwrap();
    }
    let refused = finals(&flood, Duration::from_secs(3));
    assert!(refused.len() >= 450, "{} answers", refused.len());
    std::thread::sleep(Duration::from_millis(500));
    let not_found = server
        .calls()
        .iter()
        .filter(|c| c["end_reason"] == "not-found")
        .count();
    assert!(
        (1..=10).contains(&not_found),
        "{not_found} records for 500 INVITEs"
    );
}

#[test]
fn an_rtp_sprayer_on_another_host_neither_hears_the_call_nor_presses_its_keys() {
    require("sipp");
    let server = Server::start("");
    let sprayer = UdpSocket::bind("127.0.0.2:0").unwrap();
    sprayer.set_nonblocking(true).unwrap();
    let (low, high) = server.rtp;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spraying = {
        let stop = stop.clone();
        let sprayer = sprayer.try_clone().unwrap();
        std::thread::spawn(move || {
            // In perfect sequence, audio and the key 9, at every port of the range, from before
            // the caller's first packet to the end of the call.
            let mut seq = 0u16;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for port in (low..=high).step_by(2) {
                    let to = SocketAddr::from(([127, 0, 0, 1], port));
                    let audio =
                        rtp_packet(0, false, seq, u32::from(seq) * 160, 0xA77AC4, &[0xFF; 160]);
                    let key = rtp_packet(
                        101,
                        false,
                        seq.wrapping_add(1),
                        u32::from(seq) * 160,
                        0xA77AC4,
                        &[9, 0x0A, 0, 160],
                    );
                    let _ = sprayer.send_to(&audio, to);
                    let _ = sprayer.send_to(&key, to);
                }
                seq = seq.wrapping_add(2);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    keys("keys.xml", "echo", "+12015550161", "1**").run(&server);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spraying.join().unwrap();
    server.wait_idle();
    // The caller's keys, and none of the sprayer's.
    assert_eq!(server.calls()[0]["digits"], "1**", "{}", server.calls()[0]);
    // Not one packet of the call went to the sprayer.
    let mut buf = [0u8; 2048];
    let mut got = 0;
    while sprayer.recv_from(&mut buf).is_ok() {
        got += 1;
    }
    assert_eq!(got, 0, "packets of the call reached the sprayer");
    assert!(metric(&server, "topup_ivr_rtp_foreign_packets_total", &[]).unwrap_or(0.0) > 0.0);
}

#[test]
fn a_spoofed_sdp_address_that_never_answers_gets_two_seconds_of_media() {
    let server = Server::start("");
    let sig = UdpSocket::bind("127.0.0.1:0").unwrap();
    // The "victim": an address in the SDP that never sends a packet.
    let victim = UdpSocket::bind("127.0.0.1:0").unwrap();
    victim
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    sig.send_to(
        invite(server.sip, &sig, "echo", 1, victim.local_addr().unwrap()).as_bytes(),
        server.sip,
    )
    .unwrap();
    // ACK the 200 so the call runs its course (the spoofer's own signalling is real).
    sig.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    let ok = loop {
        let (n, _) = sig.recv_from(&mut buf).unwrap();
        let t = String::from_utf8_lossy(&buf[..n]).to_string();
        if t.starts_with("SIP/2.0 200") {
            break t;
        }
    };
    let to_tag = ok.lines().find(|l| l.starts_with("To:")).unwrap();
    let me = sig.local_addr().unwrap();
    let port = me.port();
    let ack = format!(
        "ACK sip:echo@{0} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKack1\r\nFrom: <sip:+12015550177@{me}>;tag=h1\r\n{to_tag}\r\nCall-ID: hardening-1-{port}@x\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        server.sip
    );
    sig.send_to(ack.as_bytes(), server.sip).unwrap();
    let until = Instant::now() + Duration::from_secs(6);
    let mut got = 0;
    while Instant::now() < until {
        if victim.recv_from(&mut buf).is_ok() {
            got += 1;
        }
    }
    // 2 s of 50 packets a second, and nothing after.
    assert!(
        (50..=115).contains(&got),
        "{got} packets to an address that never sent one"
    );
}

#[test]
fn an_http_connection_flood_leaves_calls_working_and_is_cleared() {
    require("sipp");
    let server = Server::start("[http]\nmax_connections = 100\nheader_timeout = \"2s\"\n");
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
            .unwrap()
            .count()
    };
    let before = fds();
    // 600 connections that never send a byte.
    let flood: Vec<TcpStream> = (0..600)
        .filter_map(|_| TcpStream::connect(server.http).ok())
        .collect();
    assert!(flood.len() >= 500);
    std::thread::sleep(Duration::from_millis(300));
    // The service holds no more than its cap of them.
    let during = fds();
    assert!(
        during < before + 150,
        "{before} descriptors before, {during} during"
    );
    // Calls are untouched.
    keys("keys.xml", "echo", "+12015550161", "5**").run(&server);
    // The unfinished ones are closed after the header timeout: /health answers again while
    // the flooder still holds its end.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(http_get(server.http, "/health").map(|r| r.0), Some(200));
    drop(flood);
    assert_eq!(server.calls()[0]["digits"], "5**");
}

#[test]
fn the_data_directory_and_its_files_are_the_services_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(data.join("notes.txt"), "x").unwrap();
    std::fs::set_permissions(
        data.join("notes.txt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let server = Server::start(&format!("[paths]\ndata_dir = \"{}\"\n", data.display()));
    create_wallet(&server, "+12015550188", "2468");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for e in std::fs::read_dir(&data).unwrap().flatten() {
        assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
    }
    assert!(
        server
            .log()
            .contains("was open to others (mode 755): now 700")
    );
    // The wallet's PIN hash is keyed with the pepper: the database alone does not verify it.
    let db: Vec<u8> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("topup-ivr.db"))
        .flat_map(|e| std::fs::read(e.path()).unwrap())
        .collect();
    assert!(
        db.windows(14).any(|w| w == b"k1:$argon2id$v"),
        "no keyed hash stored"
    );
}

#[test]
fn api_bodies_are_read_after_the_key_and_refused_in_json_when_too_large_or_too_long() {
    let server = Server::start("");
    let key = api_key(&server, "+12015550100", "topup", 100);
    let big = format!(
        r#"{{"recipient":"+525512345678","product_id":"{}"}}"#,
        "x".repeat(20_000)
    );
    // No key: unauthorized, whatever the body.
    assert_eq!(
        api_call(&server, "POST", "/api/v1/topups", None, &[], Some(&big)).0,
        401
    );
    // A key: the size is refused in the API's own error format.
    let (status, v) = api_call(
        &server,
        "POST",
        "/api/v1/topups",
        Some(&key),
        &[("Idempotency-Key", "big-1")],
        Some(&big),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{v}"
    );
    // A message over 100 characters is refused, not cut.
    let long = format!(
        r#"{{"recipient":"+525512345678","product_id":"telcel-mx-100","message":"{}"}}"#,
        "m".repeat(101)
    );
    let (status, v) = api_call(
        &server,
        "POST",
        "/api/v1/topups",
        Some(&key),
        &[("Idempotency-Key", "long-1")],
        Some(&long),
    );
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`message`"),
        "{v}"
    );
}
