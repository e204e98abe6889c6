//! Consumer applications end to end: real `spate consumers run` worker processes sharing a
//! stream's shards through the server's leases, one of them killed with SIGKILL, an
//! application restarted from its checkpoints, two applications side by side, and a
//! reshard during consumption.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Server, entry, run, temp_dir};
use spate::catalog::Reshard;
use spate::client::Client;
use spate::protocol::binary::{Checkpoint, LeaseRow, PutEntry, Request, Response};

const LEASE_TIMEOUT_MS: u64 = 2000;

fn start_worker(server: &Server, stream: &str, app: &str, worker: &str, output: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["consumers", "run", stream, "--app", app, "--worker", worker])
        .args(["--lease-timeout-ms", &LEASE_TIMEOUT_MS.to_string()])
        .arg("--output")
        .arg(output)
        .args(["--server", &server.addr.to_string()])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a worker")
}

fn stop_worker(mut child: Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "worker exited with {status}");
}

/// Every processed record in a worker's output: (key, counter) in processing order.
fn processed(path: &Path) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let data = line.split('\t').nth(3)?;
            let (key, counter) = data.rsplit_once(':')?;
            Some((key.to_string(), counter.parse().ok()?))
        })
        .collect()
}

fn batch(counter: u64) -> Vec<PutEntry> {
    (0..32)
        .map(|k| {
            entry(
                &format!("key-{k}"),
                format!("key-{k}:{counter}").into_bytes(),
            )
        })
        .collect()
}

/// Puts a batch per key round until `stop`; returns what was acknowledged.
fn producer(
    addr: std::net::SocketAddr,
    stream: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<(String, u64)>> {
    std::thread::spawn(move || {
        run(move || async move {
            let client = Client::connect(addr).await.expect("connect");
            let mut acked = Vec::new();
            let mut counter = 0;
            while !stop.load(Ordering::Relaxed) {
                counter += 1;
                let results = client
                    .put_records(stream, batch(counter))
                    .await
                    .expect("put");
                for (k, result) in results.iter().enumerate() {
                    if result.is_ok() {
                        acked.push((format!("key-{k}"), counter));
                    }
                }
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            acked
        })
    })
}

async fn leases(client: &Client, stream: &str, app: &str) -> Vec<LeaseRow> {
    let request = Request::ListLeases {
        stream: stream.to_string(),
        app: app.to_string(),
    };
    match client.call(&request).await.expect("list leases") {
        Response::LeaseRows(rows) => rows,
        other => panic!("unexpected {other:?}"),
    }
}

/// Waits until every shard of `app` is checkpointed at or after its newest record.
async fn wait_caught_up(client: &Client, stream: &str, app: &str, seconds: u64) {
    let started = Instant::now();
    loop {
        let description = client.describe_stream(stream).await.expect("describe");
        let rows = leases(client, stream, app).await;
        let caught_up = description.shards.iter().all(|shard| {
            let row = rows.iter().find(|r| r.shard == shard.index);
            match row.map(|r| r.checkpoint) {
                Some(Checkpoint::ShardEnd) => true,
                Some(Checkpoint::After(seq)) => seq + 1 >= shard.tip_seq,
                _ => shard.tip_seq == shard.trim_seq,
            }
        });
        if caught_up {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(seconds),
            "{app} did not catch up: {rows:?}"
        );
        glommio::timer::sleep(Duration::from_millis(100)).await;
    }
}

fn http_get(endpoint: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = endpoint.trim_start_matches("http://");
    let mut socket = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    socket.read_to_string(&mut text).expect("read");
    text
}

fn output(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

#[test]
fn three_workers_share_a_stream_and_a_killed_ones_leases_move_within_the_timeout() {
    let dir = temp_dir();
    let server = Server::start(&dir.path().join("data"));
    let addr = server.addr;
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        client.create_stream("shared", 8).await.expect("create");
    });
    let stop = Arc::new(AtomicBool::new(false));
    let puts = producer(addr, "shared", stop.clone());
    let w1 = start_worker(&server, "shared", "app", "w1", &output(dir.path(), "w1"));
    let w2 = start_worker(&server, "shared", "app", "w2", &output(dir.path(), "w2"));
    let w3 = start_worker(&server, "shared", "app", "w3", &output(dir.path(), "w3"));
    // Wait until the three share the eight shards.
    let shared = run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        let started = Instant::now();
        loop {
            let rows = leases(&client, "shared", "app").await;
            let mut per: HashMap<String, usize> = HashMap::new();
            for row in rows.iter().filter(|r| !r.owner.is_empty()) {
                *per.entry(row.owner.clone()).or_default() += 1;
            }
            let counts: Vec<usize> = per.values().copied().collect();
            if per.len() == 3 && counts.iter().sum::<usize>() == 8 {
                let (min, max) = (counts.iter().min(), counts.iter().max());
                if max.zip(min).is_some_and(|(a, b)| a - b <= 1) {
                    return started.elapsed();
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "never balanced: {rows:?}"
            );
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut w1 = w1;
    let _ = w1.kill();
    let _ = w1.wait();
    let killed = Instant::now();
    let moved = run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        loop {
            let rows = leases(&client, "shared", "app").await;
            let owned = rows
                .iter()
                .filter(|r| r.owner == "w2" || r.owner == "w3")
                .count();
            if owned == 8 {
                return killed.elapsed();
            }
            assert!(
                killed.elapsed() < Duration::from_secs(15),
                "w1's leases did not move: {rows:?}"
            );
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    });
    eprintln!("balanced over 3 workers in {shared:?}; w1's leases moved {moved:?} after SIGKILL");
    assert!(
        moved < Duration::from_millis(LEASE_TIMEOUT_MS * 2),
        "leases took {moved:?} to move (lease timeout {LEASE_TIMEOUT_MS} ms)"
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let acked = puts.join().expect("producer");
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        wait_caught_up(&client, "shared", "app", 20).await;
    });
    stop_worker(w2);
    stop_worker(w3);
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    for name in ["w1", "w2", "w3"] {
        seen.extend(processed(&output(dir.path(), name)));
    }
    let missing: Vec<&(String, u64)> = acked.iter().filter(|r| !seen.contains(*r)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records never processed, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    eprintln!("{} acknowledged, all processed at least once", acked.len());

    // A restarted application resumes from its checkpoints: only new records reach it.
    let w4 = start_worker(&server, "shared", "app", "w4", &output(dir.path(), "w4"));
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        client
            .put_records("shared", batch(1_000_000))
            .await
            .expect("put");
        wait_caught_up(&client, "shared", "app", 20).await;
    });
    stop_worker(w4);
    let again = processed(&output(dir.path(), "w4"));
    assert_eq!(
        again.len(),
        32,
        "the restarted worker processed {} records",
        again.len()
    );
    assert!(again.iter().all(|(_, counter)| *counter == 1_000_000));
    server.stop();
}

#[test]
fn two_applications_progress_independently_and_keep_key_order_across_a_split() {
    let dir = temp_dir();
    let server = Server::start(&dir.path().join("data"));
    let addr = server.addr;
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        client.create_stream("twice", 2).await.expect("create");
    });
    let stop = Arc::new(AtomicBool::new(false));
    let puts = producer(addr, "twice", stop.clone());
    let fast = start_worker(
        &server,
        "twice",
        "dashboard",
        "d1",
        &output(dir.path(), "d1"),
    );
    std::thread::sleep(Duration::from_millis(700));
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        let split = Reshard::Split {
            shard: 0,
            new_starting_hash: 1 << 126,
        };
        client.reshard("twice", split).await.expect("split");
    });
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let acked = puts.join().expect("producer");
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        wait_caught_up(&client, "twice", "dashboard", 20).await;
        // The archiver has not started: its progress is its own.
        assert!(leases(&client, "twice", "archiver").await.is_empty());
    });
    let slow = start_worker(
        &server,
        "twice",
        "archiver",
        "a1",
        &output(dir.path(), "a1"),
    );
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        wait_caught_up(&client, "twice", "archiver", 20).await;
        let rows = leases(&client, "twice", "dashboard").await;
        let parent = rows.iter().find(|r| r.shard == 0).map(|r| r.checkpoint);
        assert_eq!(parent, Some(Checkpoint::ShardEnd), "{rows:?}");
    });
    // Lag and throughput per application on /metrics.
    let metrics = http_get(&server.endpoint, "/metrics");
    let total = format!(
        "spate_consumer_checkpointed_records_total{{stream=\"twice\",application=\"dashboard\"}} {}",
        acked.len()
    );
    assert!(metrics.contains(&total), "no `{total}` in:\n{metrics}");
    let lags: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("spate_consumer_lag_records{stream=\"twice\""))
        .collect();
    assert_eq!(
        lags.len(),
        2 * 4,
        "a lag line per application and shard: {lags:?}"
    );
    assert!(lags.iter().all(|l| l.ends_with(" 0")), "{lags:?}");
    stop_worker(fast);
    stop_worker(slow);
    for name in ["d1", "a1"] {
        let order = processed(&output(dir.path(), name));
        let seen: HashSet<&(String, u64)> = order.iter().collect();
        assert!(
            acked.iter().all(|r| seen.contains(r)),
            "{name} missed records"
        );
        // One worker per application: its output is its processing order, and each key's
        // records must come in order, the parent shard's before the children's.
        let mut last: HashMap<&str, u64> = HashMap::new();
        for (key, counter) in &order {
            if let Some(before) = last.insert(key, *counter) {
                assert!(
                    before < *counter,
                    "{name}: {key} went {before} then {counter}"
                );
            }
        }
    }
    server.stop();
}
