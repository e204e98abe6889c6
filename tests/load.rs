//! `spate load` against a real server: it creates its stream, puts for the requested time,
//! and writes a JSON summary and an .hgrm distribution that agree with what the server
//! stored.

mod common;

use std::process::Command;

use common::{Server, run, temp_dir};
use spate::client::Client;
use spate::log::StartPosition;

#[test]
fn load_creates_its_stream_puts_and_reports_what_the_server_stored() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let out = temp_dir();
    let json = out.path().join("summary.json");
    let hgrm = out.path().join("latency.hgrm");
    let status = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args([
            "load",
            "--stream",
            "bench",
            "--shards",
            "2",
            "--record-bytes",
            "50..150",
        ])
        .args(["--batch", "100", "--connections", "2", "--in-flight", "4"])
        // Whole requests to whichever core holds the connection (the verify test below
        // sends each record to its shard's owner core, the default).
        .args(["--route", "server"])
        .args([
            "--rate",
            "20000",
            "--duration",
            "2",
            "--warmup",
            "0",
            "--server",
        ])
        .arg(server.addr.to_string())
        .arg("--json")
        .arg(&json)
        .arg("--hgrm")
        .arg(&hgrm)
        .status()
        .expect("run spate load");
    assert!(status.success());
    let summary = std::fs::read_to_string(&json).expect("summary");
    let number = |field: &str| -> f64 {
        let start = summary.find(&format!("\"{field}\":")).expect(field) + field.len() + 3;
        let rest = &summary[start..];
        let end = rest.find([',', '}']).expect("end");
        rest[..end].parse().expect("number")
    };
    let records = number("records");
    // Open loop at 20,000 records/s for 2 s: about 40,000 records, all acknowledged.
    assert!((30_000.0..=44_000.0).contains(&records), "{summary}");
    assert_eq!(number("errors"), 0.0);
    assert!(summary.contains("open loop"), "{summary}");
    let distribution = std::fs::read_to_string(&hgrm).expect("hgrm");
    assert!(distribution.starts_with("       Value     Percentile"));
    assert!(distribution.contains("#[Max"));
    let addr = server.addr;
    let stored = run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        let mut total = 0u64;
        for shard in 0..2 {
            let mut position = StartPosition::TrimHorizon;
            loop {
                let body = client
                    .get_records("bench", shard, position, 10_000)
                    .await
                    .expect("read");
                if body.records.is_empty() {
                    break;
                }
                total += body.records.len() as u64;
                position = StartPosition::AtSequence(body.next_seq);
            }
        }
        total
    });
    assert_eq!(
        stored as f64, records,
        "the summary counts what the server stored"
    );
    server.stop();
}

#[test]
fn load_speaks_the_kinesis_api_too() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let out = temp_dir();
    let json = out.path().join("summary.json");
    let target = server.endpoint.trim_start_matches("http://").to_string();
    let status = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args([
            "load",
            "--protocol",
            "kinesis",
            "--stream",
            "viahttp",
            "--shards",
            "2",
        ])
        .args(["--batch", "100", "--connections", "1", "--in-flight", "2"])
        .args(["--duration", "1", "--warmup", "0", "--server", &target])
        .arg("--json")
        .arg(&json)
        .arg("--hgrm")
        .arg(out.path().join("latency.hgrm"))
        .status()
        .expect("run spate load");
    assert!(status.success());
    let summary = std::fs::read_to_string(&json).expect("summary");
    assert!(summary.contains("\"protocol\":\"Kinesis\""), "{summary}");
    assert!(summary.contains("\"errors\":0"), "{summary}");
    assert!(!summary.contains("\"records\":0,"), "{summary}");
    let addr = server.addr;
    let stored = run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        let description = client.describe_stream("viahttp").await.expect("describe");
        description.shards.iter().map(|s| s.tip_seq).sum::<u64>()
    });
    let records: u64 = summary
        .split("\"records\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("records");
    assert_eq!(stored, records, "{summary}");
    server.stop();
}

#[test]
fn metrics_count_what_was_put_and_stats_shows_them() {
    use std::io::{Read, Write};
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let addr = server.addr;
    let acked = run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        client.create_stream("measured", 2).await.expect("create");
        let records = (0..300)
            .map(|i| common::entry(&format!("k{i}"), vec![1; 10]))
            .collect();
        client
            .put_records("measured", records)
            .await
            .expect("put")
            .len()
    });
    let http = server.endpoint.trim_start_matches("http://").to_string();
    let mut socket = std::net::TcpStream::connect(&http).expect("connect");
    socket
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    socket.read_to_string(&mut text).expect("read");
    let samples = spate::tools::stats::parse(&text);
    let appended: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("spate_records_in_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(appended as usize, acked, "{text}");
    // Per shard too: both shards of the stream, adding up to the same.
    let per_shard: Vec<f64> = samples
        .iter()
        .filter(|(k, _)| k.starts_with("spate_shard_records_in_total{stream=\"measured\""))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(per_shard.len(), 2, "{text}");
    assert_eq!(per_shard.iter().sum::<f64>() as usize, acked, "{text}");
    assert!(
        text.contains("spate_latency_seconds_count{op=\"put\",core=\"all\"} 1"),
        "{text}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["stats", "--count", "1", "--http", &http])
        .output()
        .expect("run spate stats");
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{screen}");
    assert!(
        screen.contains("records/s") && screen.contains("commit"),
        "{screen}"
    );
    server.stop();
}

/// `spate load` against `server` for one second with no warm-up, over two connections,
/// writing its summary and distribution into `out`; the caller adds the rest.
fn one_second_load(server: &Server, out: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_spate"));
    command
        .args([
            "load",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--connections",
            "2",
        ])
        .arg("--server")
        .arg(server.addr.to_string())
        .arg("--json")
        .arg(out.join("summary.json"))
        .arg("--hgrm")
        .arg(out.join("latency.hgrm"));
    command
}

#[test]
fn verify_reads_everything_back_and_catches_duplicates() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let out = temp_dir();
    let run_verify = |route: &str| {
        one_second_load(&server, out.path())
            .args(["--verify", "--stream", "checked", "--shards", "3"])
            .args(["--route", route])
            .args(["--record-bytes", "10..60", "--batch", "50"])
            .output()
            .expect("run spate load")
    };
    let first = run_verify("owner");
    let report = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        report.contains("missing 0, duplicated 0, reordered 0"),
        "{report}"
    );
    // The live tail saw every record and measured put → readable latency.
    let acknowledged = report
        .split("verify: ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    assert!(
        report.contains(&format!("put → readable (ms, {acknowledged} records seen")),
        "{report}"
    );
    // A second run (routed by the server this time) stamps the same producers and
    // counters again: the check must read the stream back, see the first run's records as
    // duplicates and fail.
    let second = run_verify("server");
    let report = String::from_utf8_lossy(&second.stdout);
    assert!(!second.status.success(), "{report}");
    assert!(report.contains("duplicated "), "{report}");
    assert!(!report.contains("duplicated 0,"), "{report}");
    server.stop();
}

#[test]
fn routed_by_owner_the_puts_take_no_cross_core_hand_over() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let out = temp_dir();
    let load = |route: &str| {
        let before = server.handovers();
        let output = one_second_load(&server, out.path())
            .args(["--stream", "routed", "--shards", "4", "--route", route])
            .args(["--batch", "100", "--rate", "20000"])
            .output()
            .expect("run spate load");
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "{stderr}");
        (server.handovers() - before, stderr)
    };
    // About 200 requests of 100 records, each for all four shards, two on each core.
    let (by_server, _) = load("server");
    let (by_owner, stderr) = load("owner");
    assert!(
        stderr.contains("to its owner core (cores [0, 1])"),
        "{stderr}"
    );
    eprintln!("hand-overs: {by_server} routed by the server, {by_owner} by owner");
    // Left for the owner-routed run: its set-up (the stream's description, each
    // connection's move to its core) and the metrics scrapes.
    assert!(
        by_server > 100.0 && by_owner < 20.0,
        "hand-overs: {by_server} routed by the server, {by_owner} by owner"
    );
    server.stop();
}
