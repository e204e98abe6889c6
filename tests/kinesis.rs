//! Kinesis API compatibility judged by real AWS clients against a real server: boto3 and
//! the AWS CLI (installed by scripts/test.sh into target/pyenv) run the scripts in
//! tests/kinesis/ and the commands below; the JavaScript SDK v3 (target/jsenv) runs
//! tests/kinesis/js/compat.mjs over HTTP/2.

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
         read_bytes_per_second = \"100 KiB\"\n\
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

/// Runs `aws kinesis ARGS` against `endpoint`; returns (success, stdout, stderr).
fn aws(endpoint: &str, args: &[&str]) -> (bool, String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cli = root.join("target/pyenv/bin/aws");
    assert!(
        cli.exists(),
        "{} is missing: run `bash scripts/test.sh`, which installs the AWS CLI there",
        cli.display()
    );
    let output = Command::new(&cli)
        .arg("kinesis")
        .args(args)
        .args(["--endpoint-url", endpoint, "--output", "json"])
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .expect("run aws");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_aws_cli_creates_puts_reads_and_reshards() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let e = server.endpoint.clone();
    let ok = |args: &[&str]| {
        let (success, out, err) = aws(&e, args);
        assert!(success, "aws kinesis {args:?} failed: {err}");
        out
    };
    ok(&[
        "create-stream",
        "--stream-name",
        "cli",
        "--shard-count",
        "2",
    ]);
    let listed = ok(&["list-streams"]);
    assert!(listed.contains("\"cli\""), "{listed}");
    let summary = ok(&["describe-stream-summary", "--stream-name", "cli"]);
    assert!(summary.contains("\"OpenShardCount\": 2"), "{summary}");
    // AWS CLI v1 sends --data as text (base64-encoding it on the wire).
    let put = ok(&[
        "put-record",
        "--stream-name",
        "cli",
        "--partition-key",
        "k",
        "--data",
        "hello from the cli",
        "--explicit-hash-key",
        "0",
    ]);
    assert!(put.contains("shardId-000000000000"), "{put}");
    let iterator = ok(&[
        "get-shard-iterator",
        "--stream-name",
        "cli",
        "--shard-id",
        "shardId-000000000000",
        "--shard-iterator-type",
        "TRIM_HORIZON",
    ]);
    let iterator = iterator
        .split('"')
        .nth(3)
        .unwrap_or_else(|| panic!("no iterator in {iterator}"))
        .to_string();
    let records = ok(&["get-records", "--shard-iterator", &iterator]);
    let encoded = base64_simd::STANDARD.encode_to_string(b"hello from the cli");
    assert!(records.contains(&encoded), "{records}");
    ok(&[
        "split-shard",
        "--stream-name",
        "cli",
        "--shard-to-split",
        "shardId-000000000000",
        "--new-starting-hash-key",
        "85070591730234615865843651857942052864",
    ]);
    let shards = ok(&["list-shards", "--stream-name", "cli"]);
    assert!(
        shards.contains("\"ParentShardId\": \"shardId-000000000000\""),
        "{shards}"
    );
    assert!(shards.contains("EndingSequenceNumber"), "{shards}");
    let (success, _, err) = aws(&e, &["describe-stream", "--stream-name", "missing"]);
    assert!(
        !success && err.contains("ResourceNotFoundException"),
        "{err}"
    );
    server.stop();
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
