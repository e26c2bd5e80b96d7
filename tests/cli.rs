//! The command line as telco staff use it: DTMF detection on recordings, start-up checks
//! that name the file and the problem, dialplan and prompt checks.

mod common;

use std::process::Command;

use common::*;
use topup_ivr::media::dtmf::inband::InbandDetector;
use topup_ivr::media::prompts::{decode_file, resample};

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dtmf_detect_finds_the_keys_in_a_recording_with_their_times() {
    let fixture = repo().join("audio-fixtures/keys-in-speech.flac");
    let (ok, out, err) = run(&["dtmf", "detect", "--json", fixture.to_str().unwrap()]);
    assert!(ok, "{err}");
    let found: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let expected =
        std::fs::read_to_string(repo().join("audio-fixtures/keys-in-speech.txt")).unwrap();
    let expected: Vec<(f64, String)> = expected
        .lines()
        .map(|l| {
            let (t, k) = l.split_once(' ').unwrap();
            (t.parse().unwrap(), k.to_string())
        })
        .collect();
    assert_eq!(found.len(), expected.len(), "{out}");
    for (f, (t, k)) in found.iter().zip(&expected) {
        assert_eq!(f["digit"], k.as_str());
        let start = f["start"].as_f64().unwrap();
        assert!((start - t).abs() < 0.010, "{k}: {start} vs {t}");
    }
    // The plain format: one "seconds digit" line per key.
    let (_, text, _) = run(&["dtmf", "detect", fixture.to_str().unwrap()]);
    assert_eq!(text.lines().next(), Some("1.005 1"));
}

#[test]
fn speech_and_music_give_no_false_keys() {
    for name in ["speech-en", "speech-es", "speech-vi", "music"] {
        let (samples, rate) =
            decode_file(&repo().join(format!("audio-fixtures/{name}.flac"))).unwrap();
        let pcm8k = resample(&samples, rate, 8000).unwrap();
        // Also louder and quieter than recorded: +6 dB (clipping) and -12 dB.
        for gain in [1.0f32, 2.0, 0.25] {
            let pcm: Vec<i16> = pcm8k
                .iter()
                .map(|s| (s * gain * 32767.0).round().clamp(-32768.0, 32767.0) as i16)
                .collect();
            let found = InbandDetector::detect_all(&pcm);
            assert!(found.is_empty(), "{name} at x{gain}: {found:?}");
        }
    }
}

#[test]
fn dtmf_detect_on_a_missing_or_bad_file_is_a_clear_error() {
    let (ok, _, err) = run(&["dtmf", "detect", "/nonexistent/x.wav"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/x.wav"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.wav");
    std::fs::write(&bad, b"RIFFxxxxWAVEjunk").unwrap();
    let (ok, _, err) = run(&["dtmf", "detect", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("bad.wav") && err.contains("cannot decode"),
        "{err}"
    );
}

#[test]
fn serve_refuses_unknown_config_keys_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[sip]\nlisten = \"127.0.0.1:5999\"\nmax_cals = 3\n").unwrap();
    let (ok, _, err) = run(&["serve", "--config", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("bad.toml") && err.contains("sip.max_cals") && err.contains("unknown field"),
        "{err}"
    );
    let (ok, _, err) = run(&[
        "serve",
        "--rtp-ports",
        "9-8",
        "--sip-listen",
        "127.0.0.1:5999",
    ]);
    assert!(!ok);
    assert!(err.contains("rtp.ports"), "{err}");
}

#[test]
fn serve_refuses_a_missing_prompt_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts/en");
    std::fs::create_dir_all(&prompts).unwrap();
    std::fs::write(
        prompts.join("manifest.toml"),
        "[prompts]\necho-welcome = \"Hi\"\n",
    )
    .unwrap();
    let (ok, _, err) = run(&[
        "serve",
        "--sip-listen",
        "127.0.0.1:5998",
        "--prompts-dir",
        dir.path().join("prompts").to_str().unwrap(),
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("echo-welcome.wav"), "{err}");
}

#[test]
fn dialplan_check_reports_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("dialplans/echo.toml"))
        .unwrap()
        .replace("on_failure = \"bye\"", "on_failure = \"byebye\"");
    std::fs::write(dir.path().join("echo.toml"), &text).unwrap();
    // The line and column of the bad field, not of its node's header.
    let line = text
        .lines()
        .position(|l| l == "on_failure = \"byebye\"")
        .unwrap()
        + 1;
    let (ok, _, err) = run(&[
        "dialplan",
        "check",
        "--dialplans-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "echo.toml:{line}:14: node `listen` goes to `byebye`"
        )) && err.contains("did you mean `bye`?"),
        "{err}"
    );
    // Run away from the checkout, the three dialplan commands say where they looked and why.
    for args in [
        &["dialplan", "check"][..],
        &["dialplan", "graph", "x.toml"],
        &["dialplan", "simulate", "x.toml"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("prompts directory prompts not found")
                && err.contains("run from the checkout"),
            "{args:?}: {err}"
        );
    }
    let (ok, out, err) = run(&["dialplan", "check"]);
    assert!(ok, "{err}");
    assert!(out.contains("echo"), "{out}");
    let (ok, out, _) = run(&["prompts", "check"]);
    assert!(ok && out.contains("en"), "{out}");
}

#[test]
fn sms_check_passes_the_shipped_texts_and_names_the_line_of_a_broken_one() {
    let out = Command::new(BIN)
        .args(["sms", "check"])
        .current_dir(repo())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.starts_with("ok: ") && said.contains("en, es, vi"),
        "{said}"
    );

    let dir = tempfile::tempdir().unwrap();
    let sms = dir.path().join("sms");
    std::fs::create_dir_all(&sms).unwrap();
    let en = std::fs::read_to_string(repo().join("sms/en.toml"))
        .unwrap()
        .replace("Ref {reference}. Wallet", "Ref {refrence}. Wallet");
    std::fs::write(sms.join("en.toml"), en).unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[paths]\nsms = \"{}\"\ndata_dir = \"{}\"\nprompts = \"{}\"\ndialplans = \"{}\"\n\
             [sip]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n\
             [[sms.smsc]]\naddress = \"127.0.0.1:9\"\nsystem_id = \"topup\"\n",
            sms.display(),
            dir.path().join("data").display(),
            repo().join("prompts").display(),
            repo().join("dialplans").display(),
            free_udp_port(),
            free_tcp_port(),
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let (ok, _, err) = run(&["sms", "check", "--config", c]);
    assert!(!ok);
    assert!(
        err.contains("en.toml:") && err.contains("refrence"),
        "file, line and the unknown placeholder: {err}"
    );
    // `serve` refuses to start with it, for the same reason.
    let (ok, _, err) = run(&["serve", "--config", c]);
    assert!(!ok);
    assert!(err.contains("refrence"), "{err}");
    // The outbox commands answer clearly about what is not there.
    let (ok, _, err) = run(&["db", "migrate", "--config", c]);
    assert!(
        !ok,
        "the broken texts stop every command that could write an SMS: {err}"
    );
}

#[test]
fn commands_refuse_a_missing_data_directory_and_an_unknown_sms_is_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    // No data directory there: refused, naming it (and nothing is made).
    let (ok, _, err) = run(&["sms", "list", "--json", "--data-dir", d]);
    assert!(!ok);
    assert!(
        err.contains(&format!("no data directory at {d}")) && err.contains("db migrate"),
        "{err}"
    );
    assert!(!data.exists());
    let (ok, _, err) = run(&["db", "migrate", "--data-dir", d]);
    assert!(ok, "{err}");
    let (ok, out, err) = run(&["sms", "list", "--json", "--data-dir", d]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "[]");
    let (ok, _, err) = run(&["sms", "retry", "nope", "--data-dir", d]);
    assert!(!ok);
    assert!(err.contains("no failed or waiting SMS nope"), "{err}");
    let (ok, _, err) = run(&["sms", "show", "nope", "--data-dir", d]);
    assert!(!ok);
    assert!(err.contains("no SMS nope"), "{err}");
}

#[test]
fn serve_on_an_unusable_data_directory_says_why_once_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let start = |data: &std::path::Path| {
        run(&[
            "serve",
            "--sip-listen",
            &format!("127.0.0.1:{}", free_udp_port()),
            "--http-listen",
            &format!("127.0.0.1:{}", free_tcp_port()),
            "--prompts-dir",
            repo().join("prompts").to_str().unwrap(),
            "--dialplans-dir",
            repo().join("dialplans").to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ])
    };
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let (ok, _, err) = start(&file.join("data"));
    assert!(!ok);
    assert_eq!(
        err.trim(),
        format!(
            "error: data directory {}: Not a directory (os error 20)",
            file.join("data").display()
        )
    );
    // Read-only and full file systems, where this machine lets us mount them (as root).
    match Mount::new(&dir.path().join("ro"), "ro,size=1m") {
        Some(m) => {
            let (ok, _, err) = start(&m.0.join("data"));
            assert!(!ok);
            assert!(err.contains("Read-only file system"), "{err}");
            assert!(!err.contains("panicked"), "{err}");
        }
        None => eprintln!("not root: the read-only case is not run"),
    }
    match Mount::new(&dir.path().join("full"), "size=64k") {
        Some(m) => {
            let (ok, _, err) = start(&m.0.join("data"));
            assert!(!ok);
            assert!(err.contains("database or disk is full"), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(!err.contains("panicked"), "{err}");
        }
        None => eprintln!("not root: the disk-full case is not run"),
    }
}

#[test]
fn prompts_check_names_a_prompt_out_of_loudness_and_normalize_evens_it() {
    // The shipped English set, with one phrase re-recorded 8 dB too quiet.
    let dir = tempfile::tempdir().unwrap();
    let en = dir.path().join("prompts/en");
    std::fs::create_dir_all(&en).unwrap();
    for f in std::fs::read_dir(repo().join("prompts/en")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, en.join(f.file_name().unwrap())).unwrap();
    }
    let quiet = en.join("goodbye.wav");
    let spec = hound::WavReader::open(&quiet).unwrap().spec();
    let samples: Vec<i16> = hound::WavReader::open(&quiet)
        .unwrap()
        .into_samples::<i16>()
        .map(|s| (s.unwrap() as f32 * 0.4) as i16)
        .collect();
    let mut w = hound::WavWriter::create(&quiet, spec).unwrap();
    for s in samples {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
    let prompts = dir.path().join("prompts");
    let check = || {
        run(&[
            "prompts",
            "check",
            "--prompts-dir",
            prompts.to_str().unwrap(),
        ])
    };

    let (ok, out, err) = check();
    assert!(!ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("goodbye.wav"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("dB quieter"), "{line}");
    assert_eq!(out.lines().count(), 1, "only the quiet one: {out}");
    assert!(err.contains("1 of ") && err.contains("normalize"), "{err}");

    let (ok, out, err) = run(&["prompts", "normalize", quiet.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("-> -22.0 LUFS"), "{out}");
    let (ok, out, err) = check();
    assert!(ok, "{out}{err}");

    // A format it cannot rewrite is refused with what to do.
    let mp3 = en.join("x.mp3");
    std::fs::write(&mp3, b"not audio").unwrap();
    let (ok, _, err) = run(&["prompts", "normalize", mp3.to_str().unwrap()]);
    assert!(!ok && err.contains("16-bit PCM WAV"), "{err}");
}
