//! Resharding on the real server over the binary protocol: a restart in the middle of a
//! reshard, SIGKILL while shards split and merge under puts, and shard moves between cores
//! under puts. Each checks every acknowledged record, read through the lineage, in order
//! per partition key. (The same through boto3 is in tests/kinesis/boto3_reshard.py.)

mod common;

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Server, entry, run, temp_dir};
use spate::catalog::Reshard;
use spate::client::Client;
use spate::log::StartPosition;
use spate::protocol::binary::{PutEntry, StreamDescription};

/// Every record of a stream as (key, counter), read shard by shard with each shard after
/// its parents, as a Kinesis consumer reads through the lineage.
async fn read_in_lineage(client: &Client, stream: &str) -> Vec<(String, u64)> {
    let description = client.describe_stream(stream).await.expect("describe");
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    while done.len() < description.shards.len() {
        let ready: Vec<u32> = description
            .shards
            .iter()
            .filter(|s| !done.contains(&s.index))
            .filter(|s| {
                s.parent
                    .iter()
                    .chain(&s.adjacent_parent)
                    .all(|p| done.contains(p))
            })
            .map(|s| s.index)
            .collect();
        assert!(!ready.is_empty(), "the lineage has a cycle");
        for shard in ready {
            let mut position = StartPosition::TrimHorizon;
            loop {
                let body = client
                    .get_records(stream, shard, position, 10_000)
                    .await
                    .expect("get records");
                if body.records.is_empty() {
                    break;
                }
                for r in &body.records {
                    let text = String::from_utf8_lossy(&r.data).into_owned();
                    let counter = text.rsplit(':').next().and_then(|n| n.parse().ok());
                    out.push((
                        String::from_utf8_lossy(&r.partition_key).into_owned(),
                        counter.expect("counter"),
                    ));
                }
                position = StartPosition::AtSequence(body.next_seq);
            }
            done.insert(shard);
        }
    }
    out
}

/// Checks that every acknowledged (key, counter) was read exactly once and each key's
/// counters rise in reading order.
fn check(read: &[(String, u64)], acked: &[(String, u64)]) {
    let mut by_key: HashMap<&str, Vec<u64>> = HashMap::new();
    for (key, counter) in read {
        by_key.entry(key).or_default().push(*counter);
    }
    for (key, counters) in &by_key {
        assert!(
            counters.windows(2).all(|w| w[0] < w[1]),
            "records of key {key} are out of order or repeated: {counters:?}"
        );
    }
    for (key, counter) in acked {
        let found = by_key
            .get(key.as_str())
            .is_some_and(|c| c.binary_search(counter).is_ok());
        assert!(
            found,
            "acknowledged record {key}:{counter} was not read back"
        );
    }
}

fn batch(keys: u64, counter: u64) -> Vec<PutEntry> {
    (0..keys)
        .map(|k| {
            entry(
                &format!("key-{k}"),
                format!("key-{k}:{counter}").into_bytes(),
            )
        })
        .collect()
}

/// Puts one record per key per batch, batch after batch, until `stop`; sends what was
/// acknowledged, and counts it in the returned counter.
fn start_producer(
    addr: std::net::SocketAddr,
    stream: &'static str,
    stop: Arc<AtomicBool>,
) -> (
    std::thread::JoinHandle<()>,
    std::sync::mpsc::Receiver<(String, u64)>,
    Arc<AtomicUsize>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    let handle = std::thread::spawn(move || {
        run(move || async move {
            let client = Client::connect(addr).await.expect("connect");
            for counter in 1.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(results) = client.put_records(stream, batch(16, counter)).await else {
                    return;
                };
                for (k, result) in results.iter().enumerate() {
                    assert!(result.is_ok(), "a put failed during a reshard: {result:?}");
                    if tx.send((format!("key-{k}"), counter)).is_err() {
                        return;
                    }
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    });
    (handle, rx, count)
}

/// Waits until `count` of `what` reaches `at_least`, failing after a minute. Tests wait for
/// a number of acknowledged puts or finished scalings instead of a fixed time, so a slow or
/// busy machine makes them slower, not wrong.
fn wait_for_count(count: &AtomicUsize, at_least: usize, what: &str) {
    let started = Instant::now();
    while count.load(Ordering::Relaxed) < at_least {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} of {at_least} {what} in a minute",
            count.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

async fn wait_active(client: &Client, stream: &str) -> StreamDescription {
    let started = Instant::now();
    loop {
        let description = client.describe_stream(stream).await.expect("describe");
        if description.status == "ACTIVE" {
            return description;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{stream} stayed {}",
            description.status
        );
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

fn open_count(description: &StreamDescription) -> usize {
    description
        .shards
        .iter()
        .filter(|s| s.end_seq.is_none())
        .count()
}

#[test]
fn a_restart_in_the_middle_of_a_reshard_finishes_it_and_keeps_every_record() {
    let dir = temp_dir();
    let config = dir.path().join("spate.toml");
    std::fs::write(&config, "[kinesis]\nstream_transition = \"1 s\"\n").expect("config");
    let config_arg = config.to_string_lossy().into_owned();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, &["--config", &config_arg]);
    let addr = server.addr;
    let acked = run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        client.create_stream("r", 1).await.expect("create");
        wait_active(&client, "r").await;
        let mut acked = Vec::new();
        for counter in 1..=20 {
            let results = client
                .put_records("r", batch(16, counter))
                .await
                .expect("put");
            assert!(results.iter().all(|r| r.is_ok()));
            acked.extend((0..16).map(|k| (format!("key-{k}"), counter)));
        }
        let split = Reshard::Split {
            shard: 0,
            new_starting_hash: 1 << 127,
        };
        client.reshard("r", split).await.expect("split accepted");
        let description = client.describe_stream("r").await.expect("describe");
        assert_eq!(description.status, "UPDATING");
        acked
    });
    // Killed while the split is pending.
    server.kill();
    let server = Server::start_with(&data, &["--config", &config_arg]);
    let addr = server.addr;
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        let description = wait_active(&client, "r").await;
        assert_eq!(description.shards.len(), 3, "{description:?}");
        let parent = &description.shards[0];
        assert_eq!(
            parent.end_seq,
            Some(320),
            "the parent ends after its 320 records"
        );
        assert!(
            description.shards[1..]
                .iter()
                .all(|s| s.parent == Some(0) && s.end_seq.is_none())
        );
        let mut acked = acked;
        for counter in 21..=40 {
            client
                .put_records("r", batch(16, counter))
                .await
                .expect("put");
            acked.extend((0..16).map(|k| (format!("key-{k}"), counter)));
        }
        let read = read_in_lineage(&client, "r").await;
        assert_eq!(read.len(), acked.len());
        check(&read, &acked);
    });
    server.stop();
}

#[test]
fn sigkill_while_shards_split_and_merge_under_puts_loses_no_acknowledged_record() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let addr = server.addr;
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        client.create_stream("churn", 2).await.expect("create");
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (producer, acks, acked_count) = start_producer(addr, "churn", stop.clone());
    let scaler_stop = stop.clone();
    let scalings_done = Arc::new(AtomicUsize::new(0));
    let scalings_seen = scalings_done.clone();
    let scaler = std::thread::spawn(move || {
        run(move || async move {
            let client = Client::connect(addr).await.expect("connect");
            // Rescales until the kill, so it lands in the middle of one.
            let mut scalings = 0;
            for target in [4u32, 3, 2, 4, 6, 3].into_iter().cycle() {
                if scaler_stop.load(Ordering::Relaxed) {
                    break;
                }
                if client
                    .reshard("churn", Reshard::Scale { target })
                    .await
                    .is_err()
                {
                    break;
                }
                scalings += 1;
                scalings_seen.fetch_add(1, Ordering::Relaxed);
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            scalings
        })
    });
    // Kill once puts and rescaling have both been running for a while.
    std::thread::sleep(Duration::from_millis(500));
    wait_for_count(&acked_count, 1001, "acknowledged records");
    wait_for_count(&scalings_done, 2, "scalings");
    server.kill();
    stop.store(true, Ordering::Relaxed);
    let scalings = scaler.join().expect("scaler");
    let _ = producer.join();
    let acked: Vec<(String, u64)> = acks.try_iter().collect();
    assert!(scalings >= 1, "no scaling finished before the kill");
    assert!(acked.len() > 1000, "only {} acknowledged", acked.len());
    let server = Server::start(dir.path());
    let addr = server.addr;
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        let description = wait_active(&client, "churn").await;
        let mut open: Vec<(u128, u128)> = description
            .shards
            .iter()
            .filter(|s| s.end_seq.is_none())
            .map(|s| (s.hash_start, s.hash_end))
            .collect();
        open.sort();
        assert_eq!(open.first().map(|r| r.0), Some(0));
        assert_eq!(open.last().map(|r| r.1), Some(u128::MAX));
        assert!(open.windows(2).all(|w| w[0].1 + 1 == w[1].0), "{open:?}");
        let read = read_in_lineage(&client, "churn").await;
        check(&read, &acked);
        eprintln!(
            "{scalings} scalings, {} acknowledged, {} read after the restart, {} shards",
            acked.len(),
            read.len(),
            description.shards.len()
        );
    });
    server.stop();
}

#[test]
fn shards_move_between_cores_under_puts_without_loss_or_reordering() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let addr = server.addr;
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        client.create_stream("moving", 4).await.expect("create");
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (producer, acks, acked_count) = start_producer(addr, "moving", stop.clone());
    let during = acked_count.clone();
    run(move || async move {
        let client = Rc::new(Client::connect(addr).await.expect("connect"));
        glommio::timer::sleep(Duration::from_millis(300)).await;
        let before = during.load(Ordering::Relaxed);
        // Everything onto core 0, then rebalance spreads it out again.
        for shard in 0..4 {
            let change = Reshard::Move { shard, core: 0 };
            client.reshard("moving", change).await.expect("move");
            glommio::timer::sleep(Duration::from_millis(100)).await;
        }
        let description = client.describe_stream("moving").await.expect("describe");
        assert!(description.shards.iter().all(|s| s.owner_core == 0));
        client
            .reshard("", Reshard::Rebalance)
            .await
            .expect("rebalance");
        let description = client.describe_stream("moving").await.expect("describe");
        let on_zero = description
            .shards
            .iter()
            .filter(|s| s.owner_core == 0)
            .count();
        assert_eq!(on_zero, 2, "rebalance left {on_zero} of 4 shards on core 0");
        assert_eq!(open_count(&description), 4);
        assert!(
            during.load(Ordering::Relaxed) > before,
            "no put was acknowledged while the shards moved"
        );
    });
    wait_for_count(&acked_count, 1001, "acknowledged records");
    stop.store(true, Ordering::Relaxed);
    producer.join().expect("producer");
    let acked: Vec<(String, u64)> = acks.try_iter().collect();
    assert!(acked.len() > 1000, "only {} acknowledged", acked.len());
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        let read = read_in_lineage(&client, "moving").await;
        assert_eq!(read.len(), acked.len(), "records read != acknowledged");
        check(&read, &acked);
    });
    server.stop();
}
