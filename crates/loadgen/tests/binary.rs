//! The `topup-loadgen` binary parses the same arguments as `topup-ivr loadgen` and reports
//! their errors (the generator itself is tested against the service in the service's
//! tests/loadgen.rs).

use std::process::Command;

fn loadgen() -> Command {
    Command::new(env!("CARGO_BIN_EXE_topup-loadgen"))
}

#[test]
fn help_lists_the_generator_options() {
    let out = loadgen().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for option in [
        "--target", "--calls", "--rate", "--script", "--pins", "--json",
    ] {
        assert!(text.contains(option), "{option} missing from:\n{text}");
    }
}

#[test]
fn a_bad_codec_is_refused_with_the_reason() {
    let out = loadgen()
        .args(["--codec", "opus", "--calls", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--codec must be pcmu or pcma"), "{err}");
}

#[test]
fn a_script_with_pins_needs_a_pin_file() {
    let out = loadgen()
        .args(["--script", "keys:{pin}#"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--pins FILE"), "{err}");
}
