//! Kinesis API compatibility judged by real AWS clients: boto3 (installed by
//! scripts/test.sh into target/pyenv) runs tests/kinesis/boto3_compat.py against a real
//! server.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Server, temp_dir};

#[test]
fn boto3_works_against_spate_with_only_an_endpoint_url() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/test.sh`, which installs boto3 there",
        python.display()
    );
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kinesis/boto3_compat.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(&server.endpoint)
        .output()
        .expect("run python");
    let report = String::from_utf8_lossy(&output.stderr);
    eprintln!("{report}");
    assert!(
        output.status.success(),
        "boto3 compatibility tests failed:\n{report}"
    );
    assert!(report.contains("OK"), "no boto3 test ran:\n{report}");
    server.stop();
}

/// Starts a server with `config` as its config file and runs a Python test script on it.
fn run_python_with_config(config: &str, script: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "run `bash scripts/test.sh` to install boto3"
    );
    let dir = temp_dir();
    let config_path = dir.path().join("spate.toml");
    std::fs::write(&config_path, config).expect("config");
    let config_arg = config_path.to_string_lossy().into_owned();
    let server = Server::start_with(&dir.path().join("data"), &["--config", &config_arg]);
    let output = Command::new(&python)
        .arg(root.join("tests/kinesis").join(script))
        .arg(&server.endpoint)
        .output()
        .expect("run python");
    let report = String::from_utf8_lossy(&output.stderr);
    eprintln!("{report}");
    assert!(output.status.success(), "{script} failed:\n{report}");
    server.stop();
}

#[test]
fn streams_pass_through_creating_and_deleting_and_iterators_expire() {
    run_python_with_config(
        "[kinesis]\nstream_transition = \"1 s\"\niterator_ttl = \"1 s\"\n",
        "boto3_transitions.py",
    );
}

#[test]
fn splits_merges_and_scaling_keep_every_record_with_boto3() {
    run_python_with_config("", "boto3_reshard.py");
}

#[test]
fn quotas_throttle_puts_and_reads_and_on_demand_streams_split_hot_shards() {
    // Rates low enough that a slow client on a loaded machine still passes them quickly.
    run_python_with_config(
        "[quota]\nenabled = true\nwrite_records_per_second = 10\nread_calls_per_second = 1\n\
         on_demand_split_percent = 1\non_demand_window = \"2 s\"\n",
        "boto3_quota.py",
    );
}

#[test]
fn enhanced_fan_out_streams_records_to_boto3_subscribers() {
    run_python_with_config(
        "[kinesis]\nsubscription_lifetime = \"15 s\"\n",
        "boto3_fanout.py",
    );
}

#[test]
fn sigv4_is_verified_when_keys_are_configured() {
    run_python_with_config(
        "[auth]\nkeys = [{ access_key = \"AKIDSPATE\", secret = \"s3cr3t/key\" }]\n",
        "boto3_auth.py",
    );
}

#[test]
fn the_javascript_sdk_v3_works_over_http2() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let env = root.join("target/jsenv");
    assert!(
        env.join("node_modules/@aws-sdk/client-kinesis").exists(),
        "{} is missing the AWS SDK: run `bash scripts/test.sh`, which installs it there",
        env.display()
    );
    // The script imports the SDK from target/jsenv, so it runs from there.
    let script = env.join("compat.mjs");
    std::fs::copy(root.join("tests/kinesis/js/compat.mjs"), &script).expect("copy script");
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let output = Command::new("node")
        .arg(&script)
        .arg(&server.endpoint)
        .output()
        .expect("run node");
    let report = String::from_utf8_lossy(&output.stdout);
    eprintln!("{report}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "JavaScript SDK tests failed:\n{report}"
    );
    assert!(report.contains("4 passed, 0 failed"), "{report}");
    server.stop();
}
