//! Asterisk at its worst, on demand: the real binary as a Stasis application against the ARI +
//! chan_websocket emulator in tests/common/asterisk.rs, for what a real Asterisk cannot do at
//! a chosen instant (drop the events connection, delay a channel's entry into the application,
//! refuse). The services themselves run against the real Asterisk 23.4.1 in
//! tests/e2e_asterisk.rs; the tests here marked "against both" hold the emulator to the real
//! one's behaviour. Every REST request must be an operation of the swagger
//! (tests/specs/asterisk-ari/); keys arrive both as ChannelDtmfReceived and as DTMF_END, as
//! Asterisk sends them; prompts are checked frame by frame as the caller hears them.

mod common;

use std::time::Duration;

use common::asterisk::Asterisk;
use common::*;

const APP: &str = "topup-ivr";

fn start() -> (Asterisk, Server) {
    start_with("")
}

fn start_with(extra: &str) -> (Asterisk, Server) {
    let ast = Asterisk::start("topup", "s3cret");
    let server = Server::start(&format!(
        "[asterisk]\nurl = \"{}\"\napp = \"{APP}\"\nusername = \"topup\"\npassword = \"s3cret\"\n{extra}",
        ast.url()
    ));
    ast.wait_app(APP, Duration::from_secs(10));
    (ast, server)
}

/// Waits until the channel is gone from Asterisk (hung up by the service).
fn wait_gone(ast: &Asterisk, server: &Server, channel: &str, limit: Duration) {
    server.wait_until("the caller's channel is hung up", limit, || {
        !ast.exists(channel)
    });
}

/// Every request the adapter made is a swagger operation, nothing it sent was outside the
/// swagger or the chan_websocket protocol, and Asterisk is still alive.
fn assert_conformant(ast: &Asterisk) {
    let reqs = ast.requests();
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert!(
            r.operation.is_some(),
            "{} {} is not in the ARI swagger",
            r.method,
            r.path
        );
    }
    assert_eq!(ast.violations(), Vec::<String>::new());
    assert!(!ast.crashed());
}

#[test]
fn a_card_top_up_through_asterisk_credits_the_recipient_and_cleans_up() {
    let (ast, server) = start();
    let ch = ast.call(APP, "+12015550161", "recharge");
    std::thread::sleep(Duration::from_millis(600));
    // English, the demo card's PIN, the recipient, confirm, the second amount, confirm.
    ast.press(&ch, "111112222333344#12015550150#111");
    wait_gone(&ast, &server, &ch, Duration::from_secs(40));
    server.wait_idle();

    let account = cli(&server, &["accounts", "show", "+12015550150"]);
    assert_eq!(account["prepaid"]["balance"], "6.20", "{account}");
    let card = cli(&server, &["cards", "show", "100000000001"]);
    assert_eq!(card["state"], "redeemed");
    let calls = server.calls();
    assert_eq!(calls[0]["call_id"], ch.as_str());
    assert_eq!(calls[0]["service"], "recharge");
    assert_eq!(calls[0]["end_reason"], "service-hangup");
    assert_eq!(calls[0]["dtmf_methods"], "softswitch");
    assert_eq!(calls[0]["codec"], "PCMU");

    // The caller heard the prompts exactly as stored.
    let heard = ast.heard(&ch);
    let p = prompts();
    // The greeting until the first key (600 ms in), then cut off by it.
    assert!(heard_start(&heard, &p, "en", "for-english", 20));
    assert!(!heard_prompt(&heard, &p, "en", "for-english"), "barge-in");
    let cmds = ast.media_commands();
    assert!(cmds.iter().any(|c| c == "FLUSH_MEDIA"), "{cmds:?}");
    // Before hanging up, a mark waits for the last words to be played.
    assert_eq!(
        cmds.last().map(String::as_str),
        Some("MARK_MEDIA"),
        "{cmds:?}"
    );
    assert!(heard_prompt(&heard, &p, "en", "thank-you-goodbye"));
    assert_eq!(
        ast.leftovers(),
        (vec![], vec![]),
        "channels or bridges left"
    );
    assert_conformant(&ast);
    assert!(!server.log().contains("11112222333344"), "PIN logged");
}

#[test]
fn a_card_top_up_with_media_over_rtp() {
    let (ast, server) = start_with("media = \"rtp\"\n");
    let ch = ast.call(APP, "+12015550161", "recharge");
    std::thread::sleep(Duration::from_millis(600));
    ast.press(&ch, "111112222333344#12015550150#111");
    wait_gone(&ast, &server, &ch, Duration::from_secs(40));
    server.wait_idle();
    let account = cli(&server, &["accounts", "show", "+12015550150"]);
    assert_eq!(account["prepaid"]["balance"], "6.20", "{account}");
    assert_eq!(server.calls()[0]["end_reason"], "service-hangup");
    let heard = ast.heard(&ch);
    let p = prompts();
    assert!(heard_start(&heard, &p, "en", "for-english", 20));
    assert!(heard_prompt(&heard, &p, "en", "thank-you-goodbye"));
    assert!(ast.requests().iter().any(|r| {
        r.query
            .iter()
            .any(|(k, v)| k == "encapsulation" && v == "rtp")
    }));
    assert_eq!(ast.leftovers(), (vec![], vec![]));
    assert_conformant(&ast);
}

#[test]
fn a_wallet_call_is_originated_bridged_warned_and_cut_when_the_money_runs_out() {
    let (ast, server) = start_with(
        "calling_endpoint = \"PJSIP/{number}@trunk\"\n[calling]\nwarning_before = \"3s\"\n",
    );
    calling_wallet(&server);
    let ch = ast.call(APP, "+12015550166", "wallet");
    std::thread::sleep(Duration::from_millis(600));
    // PIN, 3: minutes to a number (a London landline), the number, 1: connect.
    ast.press(&ch, "4321#3442079460123#1");
    let callee = format!("{ch}-out1");
    server.wait_until("the call is cut", Duration::from_secs(30), || {
        server.log().contains("balance used up: cutting the call")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!ast.exists(&callee), "the outbound leg was hung up");
    ast.hangup_caller(&ch);
    server.wait_idle();
    let w = cli(&server, &["accounts", "show", "+12015550166"]);
    assert_eq!(w["wallet"]["balance"], "0.04", "6 s at 0.60/min: {w}");
    let log = server.log();
    assert!(log.find("warning the caller").unwrap() < log.find("balance used up").unwrap());
    // The callee was dialled with the caller's number, answered into the application and
    // joined to the caller's bridge; the warning reached the caller through that bridge.
    let reqs = ast.requests();
    let orig = reqs
        .iter()
        .find(|r| r.operation.as_deref() == Some("originate"))
        .expect("originate");
    let q = |k: &str| {
        orig.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(q("endpoint"), Some("PJSIP/+442079460123@trunk"));
    assert_eq!(q("callerId"), Some("+12015550166"));
    assert!(
        reqs.iter()
            .any(|r| r.operation.as_deref() == Some("addChannel")
                && r.query.iter().any(|(k, v)| k == "channel" && v == &callee))
    );
    assert!(heard_prompt(
        &ast.heard(&ch),
        &prompts(),
        "en",
        "one-minute-left"
    ));
    assert_eq!(ast.leftovers(), (vec![], vec![]));
    assert_conformant(&ast);
    cli_ok(&server, &["ledger", "check"]);
}

#[test]
fn a_busy_callee_costs_nothing() {
    let (ast, server) = start_with("calling_endpoint = \"PJSIP/{number}@trunk\"\n");
    calling_wallet(&server);
    ast.set_callee(
        "+447911123456",
        common::asterisk::Callee {
            busy: true,
            ..Default::default()
        },
    );
    let ch = ast.call(APP, "+12015550166", "wallet");
    std::thread::sleep(Duration::from_millis(600));
    ast.press(&ch, "4321#3447911123456#1");
    server.wait_until(
        "the busy callee is reported",
        Duration::from_secs(20),
        || {
            server.log().contains("placing call")
                && ast
                    .requests()
                    .iter()
                    .any(|r| r.operation.as_deref() == Some("originate"))
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !ast.requests()
            .iter()
            .any(|r| r.operation.as_deref() == Some("addChannel")
                && r.query.iter().any(|(_, v)| v.contains("-out"))),
        "a busy callee is never bridged"
    );
    ast.hangup_caller(&ch);
    server.wait_idle();
    let w = cli(&server, &["accounts", "show", "+12015550166"]);
    assert_eq!(w["wallet"]["balance"], "0.10", "{w}");
    assert_eq!(ast.leftovers(), (vec![], vec![]));
    assert_conformant(&ast);
    cli_ok(&server, &["ledger", "check"]);
}

#[test]
fn an_escalation_continues_in_the_dialplan_with_the_escalation_id() {
    let (ast, server) = start();
    // The telco's number 7001 runs Stasis(topup-ivr,wallet).
    let ch = ast.call_with_args(APP, "+12015550100", "7001", &["wallet"]);
    std::thread::sleep(Duration::from_millis(600));
    // 0 at the PIN prompt asks for an agent.
    ast.press(&ch, "0");
    server.wait_until("the call is continued", Duration::from_secs(20), || {
        ast.continued(&ch).is_some()
    });
    server.wait_idle();
    let ((context, exten, prio), vars) = ast.continued(&ch).unwrap();
    assert_eq!(
        (context.as_str(), exten.as_str(), prio.as_str()),
        ("topup-agents", "agents", "1")
    );
    let e = &cli(&server, &["escalations", "list"])[0];
    assert_eq!(e["state"], "transferred");
    assert_eq!(vars["TOPUP_ESCALATION_ID"], e["id"].as_str().unwrap());
    assert_eq!(
        vars["TOPUP_ESCALATION_REASON"],
        e["reason"].as_str().unwrap()
    );
    assert_eq!(server.calls()[0]["end_reason"], "transferred");
    assert!(heard_prompt(
        &ast.heard(&ch),
        &prompts(),
        "en",
        "transferring"
    ));
    // The caller's channel went on in Asterisk; ours (media, bridge) are gone.
    assert_eq!(ast.leftovers(), (vec![], vec![]));
    assert_conformant(&ast);
}

#[test]
fn a_caller_hanging_up_at_any_step_leaves_nothing_behind() {
    let (ast, server) = start();
    // At the greeting, during the PIN, after the PIN (the card is being redeemed), during the
    // number, at the final confirmation.
    let steps = [
        "",
        "1111",
        "111112222333344#",
        "111112222333344#1201",
        "111112222333344#12015550150#11",
    ];
    for (i, keys) in steps.iter().enumerate() {
        let ch = ast.call(APP, &format!("+1201555017{i}"), "recharge");
        std::thread::sleep(Duration::from_millis(400));
        ast.press(&ch, keys);
        ast.hangup_caller(&ch);
    }
    server.wait_until("every call recorded", Duration::from_secs(20), || {
        server.calls().len() == steps.len()
    });
    server.wait_idle();
    for c in server.calls() {
        assert_eq!(c["end_reason"], "caller-hangup", "{c}");
    }
    server.wait_until("nothing left in Asterisk", Duration::from_secs(5), || {
        ast.leftovers() == (vec![], vec![])
    });
    // No top-up was made: the caller never confirmed one.
    let topups = cli(&server, &["topups", "list"]);
    assert_eq!(topups.as_array().unwrap().len(), 0, "{topups}");
    assert_conformant(&ast);
}

#[test]
fn calls_survive_a_lost_events_connection_and_gone_callers_are_cleaned_up() {
    let (ast, server) = start();
    let stays = ast.call(APP, "+12015550161", "recharge");
    let leaves = ast.call(APP, "+12015550162", "recharge");
    std::thread::sleep(Duration::from_millis(600));
    ast.press(&stays, "1");
    assert_eq!(server.health()["asterisk"]["connected"], true);
    // Asterisk restarts its HTTP side: the events connection drops and is refused a while.
    ast.drop_events(true);
    // Keys still arrive over the media connection (DTMF_END) meanwhile.
    ast.press(&stays, "11112222333344#");
    // This caller hangs up while the application cannot hear about it.
    ast.hangup_caller(&leaves);
    server.wait_until("/health shows ARI down", Duration::from_secs(5), || {
        server.health()["asterisk"]["connected"] == false
    });
    ast.allow_events();
    // Knocking every 200-600 ms, the service is back within a second of Asterisk.
    ast.wait_app(APP, Duration::from_secs(1));
    ast.press(&stays, "12015550150#111");
    wait_gone(&ast, &server, &stays, Duration::from_secs(40));
    server.wait_idle();
    let calls = server.calls();
    let by_id = |id: &str| calls.iter().find(|c| c["call_id"] == id).unwrap().clone();
    assert_eq!(by_id(&stays)["end_reason"], "service-hangup");
    assert_eq!(by_id(&leaves)["end_reason"], "lost");
    let account = cli(&server, &["accounts", "show", "+12015550150"]);
    assert_eq!(account["prepaid"]["balance"], "6.20", "{account}");
    assert_eq!(ast.leftovers(), (vec![], vec![]));
    assert!(server.log().contains("ARI connected"));
    assert_conformant(&ast);
}

#[test]
fn a_media_channel_that_enters_the_application_late_is_bridged_once_it_has() {
    let (ast, server) = start();
    // Asterisk busy: the media channel enters 400 ms after it is up (a bridge refuses it until
    // then; bridging at once failed 10-30 % of set-ups on a real Asterisk).
    ast.set_entry_delay(Some(Duration::from_millis(400)));
    let ch = ast.call(APP, "+12015550161", "echo");
    std::thread::sleep(Duration::from_millis(1500));
    ast.press(&ch, "5**");
    wait_gone(&ast, &server, &ch, Duration::from_secs(30));
    server.wait_idle();
    let c = &server.calls()[0];
    assert_eq!(
        (c["end_reason"].as_str(), c["digits"].as_str()),
        (Some("service-hangup"), Some("5**")),
        "{c}"
    );
    // The greeting from its first frame: nothing was played before the bridge was whole.
    let heard = ast.heard(&ch);
    assert!(heard_start(&heard, &prompts(), "en", "echo-welcome", 20));
    assert!(
        ast.requests().iter().all(|r| r.status < 400),
        "{:?}",
        ast.requests()
    );
    assert_eq!(ast.leftovers(), (vec![], vec![]));
    assert_conformant(&ast);
}

#[test]
fn a_media_channel_that_never_enters_ends_the_call_with_a_record_and_a_close_frame() {
    let (ast, server) = start();
    ast.set_entry_delay(None);
    let ch = ast.call(APP, "+12015550161", "recharge");
    wait_gone(&ast, &server, &ch, Duration::from_secs(15));
    server.wait_idle();
    // The caller was answered: the call has its record, whatever failed.
    let c = &server.calls()[0];
    assert_eq!(c["call_id"], ch.as_str());
    assert_eq!(
        (c["service"].as_str(), c["end_reason"].as_str()),
        (Some("recharge"), Some("setup-failed")),
        "{c}"
    );
    assert!(c["answered_at"].is_string(), "{c}");
    assert!(server.log().contains("did not enter the application"));
    // The media connection was closed with a Close frame (assert_conformant: no violation),
    // and nothing is left.
    assert_eq!(ast.leftovers(), (vec![], vec![]));
    assert_conformant(&ast);
}

#[test]
fn a_caller_who_leaves_while_the_media_is_set_up_gets_a_record_and_nothing_is_left() {
    let (ast, server) = start();
    ast.set_entry_delay(Some(Duration::from_secs(2)));
    let ch = ast.call(APP, "+12015550161", "recharge");
    std::thread::sleep(Duration::from_millis(500));
    ast.hangup_caller(&ch);
    server.wait_until("the call is recorded", Duration::from_secs(10), || {
        !server.calls().is_empty()
    });
    server.wait_idle();
    assert_eq!(server.calls()[0]["end_reason"], "caller-hangup");
    server.wait_until("nothing left", Duration::from_secs(5), || {
        ast.leftovers() == (vec![], vec![])
    });
    assert_conformant(&ast);
}

/// What a client sees of an Asterisk, step by step (status codes, channel states, events):
/// the same script against the real Asterisk 23.4.1 and against the emulator must see the
/// same, and each difference found is an emulator fix. It ends by crashing the Asterisk.
async fn probe(url: &str, user: &str, pass: &str) -> Vec<(&'static str, String)> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    const APP: &str = "probe";
    let http = reqwest::Client::new();
    let ari = |method: &str, path: &str, auth: (&str, &str)| {
        let req = http
            .request(method.parse().unwrap(), format!("{url}/ari{path}"))
            .basic_auth(auth.0, Some(auth.1));
        async move {
            match req.send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    (
                        status,
                        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
                    )
                }
                Err(_) => (0, serde_json::Value::Null),
            }
        }
    };
    let me = (user, pass);
    let ws_url = url.replace("http://", "ws://");
    let mut events = {
        let mut req = format!("{ws_url}/ari/events?app={APP}")
            .into_client_request()
            .unwrap();
        let token = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        };
        req.headers_mut()
            .insert("Authorization", format!("Basic {token}").parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    };
    // The next event of `kind` for `channel` within 2 s (others are skipped); its channel state.
    async fn next_event(
        events: &mut (
                 impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin
             ),
        kind: &str,
        channel: &str,
    ) -> String {
        let wait = async {
            while let Some(Ok(m)) = events.next().await {
                if let Message::Text(t) = m {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == kind && v["channel"]["id"] == channel {
                        return format!("{kind} {}", v["channel"]["state"].as_str().unwrap_or(""));
                    }
                }
            }
            "events closed".to_string()
        };
        tokio::time::timeout(Duration::from_secs(2), wait)
            .await
            .unwrap_or_else(|_| format!("no {kind}"))
    }
    let media_connect = |conn: String| {
        let ws_url = ws_url.clone();
        async move {
            let mut req = format!("{ws_url}/media/{conn}")
                .into_client_request()
                .unwrap();
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", "media".parse().unwrap());
            tokio_tungstenite::connect_async(req).await
        }
    };
    let status_of = |e: &tokio_tungstenite::tungstenite::Error| match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => r.status().as_u16().to_string(),
        other => format!("error {other}"),
    };
    let mut seen: Vec<(&'static str, String)> = vec![];
    let mut see = |step: &'static str, what: String| seen.push((step, what));

    see(
        "unknown path",
        ari("POST", "/channels/x/dance", me).await.0.to_string(),
    );
    see(
        "wrong method",
        ari("PUT", "/channels/x/answer", me).await.0.to_string(),
    );
    see(
        "unknown channel",
        ari("POST", "/channels/nope/answer", me).await.0.to_string(),
    );
    see(
        "wrong password",
        ari("GET", "/channels", (user, "wrong")).await.0.to_string(),
    );
    see(
        "externalMedia without its parameters",
        ari("POST", "/channels/externalMedia?app=a", me)
            .await
            .0
            .to_string(),
    );
    see(
        "create a bridge",
        ari("POST", "/bridges/probe-bridge?type=mixing", me)
            .await
            .0
            .to_string(),
    );
    let ws_media = "/channels/externalMedia?app=probe&channelId=probe-ws&transport=websocket\
                    &encapsulation=none&connection_type=server&format=ulaw\
                    &transport_data=f(json)";
    let (st, ch) = ari("POST", ws_media, me).await;
    see(
        "externalMedia over websocket",
        format!("{st} {}", ch["state"]),
    );
    let conn = ch["channelvars"]["MEDIA_WEBSOCKET_CONNECTION_ID"]
        .as_str()
        .unwrap_or("")
        .to_string();
    see(
        "bridge it before its connection",
        ari(
            "POST",
            "/bridges/probe-bridge/addChannel?channel=probe-ws",
            me,
        )
        .await
        .0
        .to_string(),
    );
    see(
        "an unknown media id",
        match media_connect("no-such-id".into()).await {
            Ok(_) => "101".into(),
            Err(e) => status_of(&e),
        },
    );
    let mut media = media_connect(conn.clone()).await.unwrap();
    let proto = media
        .1
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let first = match media.0.next().await {
        Some(Ok(Message::Text(t))) => {
            serde_json::from_str::<serde_json::Value>(&t).unwrap()["event"].to_string()
        }
        other => format!("{other:?}"),
    };
    see("connect the media", format!("{proto} {first}"));
    see(
        "a second connection to it",
        match media_connect(conn).await {
            Ok(_) => "101".into(),
            Err(e) => status_of(&e),
        },
    );
    see(
        "it enters the application",
        next_event(&mut events, "StasisStart", "probe-ws").await,
    );
    see(
        "bridge it now",
        ari(
            "POST",
            "/bridges/probe-bridge/addChannel?channel=probe-ws",
            me,
        )
        .await
        .0
        .to_string(),
    );
    let (st, ch) = ari("GET", "/channels/probe-ws", me).await;
    see(
        "GET it",
        format!(
            "{st} {} channelvars: {}",
            ch["state"],
            !ch["channelvars"].is_null()
        ),
    );
    let _ = media.0.close(None).await;
    see(
        "close its connection",
        next_event(&mut events, "ChannelDestroyed", "probe-ws").await,
    );
    see(
        "DELETE it after",
        ari("DELETE", "/channels/probe-ws", me).await.0.to_string(),
    );
    let rtp = "/channels/externalMedia?app=probe&channelId=probe-rtp&external_host=127.0.0.1:9\
               &format=ulaw";
    let (st, ch) = ari("POST", rtp, me).await;
    see(
        "externalMedia over RTP",
        format!(
            "{st} {} {}",
            ch["state"],
            ch["channelvars"]["UNICASTRTP_LOCAL_PORT"].is_string()
        ),
    );
    see(
        "it enters the application",
        next_event(&mut events, "StasisStart", "probe-rtp").await,
    );
    see(
        "the same RTP id again",
        ari("POST", rtp, me).await.0.to_string(),
    );
    see(
        "DELETE the RTP channel",
        ari("DELETE", "/channels/probe-rtp", me).await.0.to_string(),
    );
    see(
        "it is destroyed",
        next_event(&mut events, "ChannelDestroyed", "probe-rtp").await,
    );
    see(
        "destroy the bridge",
        ari("DELETE", "/bridges/probe-bridge", me)
            .await
            .0
            .to_string(),
    );
    see(
        "destroy it again",
        ari("DELETE", "/bridges/probe-bridge", me)
            .await
            .0
            .to_string(),
    );
    // Last: what kills Asterisk 23.4.1 (a websocket channel id that is in use).
    let dup = ws_media.replace("probe-ws", "probe-dup");
    ari("POST", &dup, me).await;
    see(
        "the same websocket id again",
        ari("POST", &dup, me).await.0.to_string(),
    );
    seen
}

/// What `probe` must see from Asterisk 23.4.1 (measured), step by step.
const ASTERISK_23_4_1: &[(&str, &str)] = &[
    ("unknown path", "404"),
    ("wrong method", "405"),
    ("unknown channel", "404"),
    ("wrong password", "401"),
    ("externalMedia without its parameters", "400"),
    ("create a bridge", "200"),
    ("externalMedia over websocket", "200 \"Down\""),
    ("bridge it before its connection", "422"),
    ("an unknown media id", "404"),
    ("connect the media", "media \"MEDIA_START\""),
    ("a second connection to it", "409"),
    ("it enters the application", "StasisStart Up"),
    ("bridge it now", "204"),
    ("GET it", "200 \"Up\" channelvars: false"),
    ("close its connection", "ChannelDestroyed Up"),
    ("DELETE it after", "404"),
    ("externalMedia over RTP", "200 \"Down\" true"),
    ("it enters the application", "StasisStart Up"),
    ("the same RTP id again", "500"),
    ("DELETE the RTP channel", "204"),
    ("it is destroyed", "ChannelDestroyed Up"),
    ("destroy the bridge", "204"),
    ("destroy it again", "404"),
    ("the same websocket id again", "0"),
];

fn run_probe(url: &str, user: &str, pass: &str) -> Vec<(&'static str, String)> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(probe(url, user, pass))
}

fn expected() -> Vec<(&'static str, String)> {
    ASTERISK_23_4_1
        .iter()
        .map(|(k, v)| (*k, v.to_string()))
        .collect()
}

#[test]
fn against_both_the_real_asterisk_and_the_emulator_answer_alike() {
    use common::asterisk_real::{ARI_PASSWORD, Options, RealAsterisk};
    let mut real = RealAsterisk::start(Options::default());
    assert_eq!(run_probe(&real.url(), "topup", ARI_PASSWORD), expected());
    // The crashing thread takes the process down a moment after the request died.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while real.is_running() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !real.is_running(),
        "Asterisk 23.4.1 survived a websocket id in use"
    );

    let emulator = Asterisk::start("topup", "s3cret");
    assert_eq!(run_probe(&emulator.url(), "topup", "s3cret"), expected());
    assert!(emulator.crashed());
}

#[test]
fn the_emulator_refuses_what_the_swagger_refuses_and_dies_as_asterisk_does() {
    // Beyond the probe: a value outside allowableValues, and the f(...) that kills 23.4.1.
    let ast = Asterisk::start("u", "p");
    let (status, _) = api_ari(
        &ast,
        "POST",
        "/channels/externalMedia?app=a&format=ulaw&transport=pigeon",
    );
    assert_eq!(status, 400);
    assert!(!ast.crashed());
    let (status, _) = api_ari(
        &ast,
        "POST",
        "/channels/externalMedia?app=a&format=ulaw&transport=websocket&encapsulation=none&connection_type=server&transport_data=f(bogus)",
    );
    assert_eq!(status, 0, "no answer from a crashed Asterisk");
    assert!(ast.crashed());
}

/// One ARI request to the emulator as u:p; (status, body), status 0 when no answer came.
fn api_ari(ast: &Asterisk, method: &str, path: &str) -> (u16, serde_json::Value) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let r = reqwest::Client::new()
                .request(method.parse().unwrap(), format!("{}/ari{path}", ast.url()))
                .basic_auth("u", Some("p"))
                .send()
                .await;
            match r {
                Ok(r) => (
                    r.status().as_u16(),
                    r.json().await.unwrap_or(serde_json::Value::Null),
                ),
                Err(_) => (0, serde_json::Value::Null),
            }
        })
}

#[test]
fn a_wallet_top_up_through_asterisk_pays_from_the_wallet() {
    let (ast, server) = start();
    let ch = ast.call(APP, "+12015550100", "wallet");
    std::thread::sleep(Duration::from_millis(600));
    // PIN, 1: top up a number, the number, the first amount, confirm.
    ast.press(&ch, "1234#1525512345678#121");
    server.wait_until("the top-up is done", Duration::from_secs(30), || {
        cli(&server, &["topups", "list"])[0]["state"] == "succeeded"
    });
    ast.hangup_caller(&ch);
    server.wait_idle();
    let t = &cli(&server, &["topups", "list"])[0];
    assert_eq!(
        (t["payer"].as_str(), t["recipient"].as_str()),
        (Some("+12015550100"), Some("+525512345678"))
    );
    let w = cli(&server, &["accounts", "show", "+12015550100"]);
    assert_eq!(w["wallet"]["balance"], "19.01", "25.00 - 5.99: {w}");
    assert_eq!(ast.leftovers(), (vec![], vec![]));
    assert_conformant(&ast);
}
