//! `spate serve` end to end: the real binary on a loopback port with a temporary data
//! folder, driven over TCP by the Rust client (and by raw sockets for bad frames).

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{Server, entry, payload, run, temp_dir};
use spate::catalog::{hash_key, hash_ranges};
use spate::client::{Client, ClientError};
use spate::log::StartPosition;
use spate::protocol::binary::{
    self, FrameHeader, HEADER_BYTES, Op, PutEntry, Request, Response, Status, VERSION,
};

/// Reads every record of every shard: (shard, seq) -> (key, data).
async fn read_all(client: &Client, stream: &str) -> HashMap<(u32, u64), (Bytes, Bytes)> {
    let description = client.describe_stream(stream).await.expect("describe");
    let mut out = HashMap::new();
    for shard in description.shards {
        let mut position = StartPosition::TrimHorizon;
        loop {
            let body = client
                .get_records(stream, shard.index, position, 10_000)
                .await
                .expect("get records");
            if body.records.is_empty() {
                break;
            }
            for r in &body.records {
                out.insert(
                    (shard.index, r.seq),
                    (r.partition_key.clone(), r.data.clone()),
                );
            }
            position = StartPosition::AtSequence(body.next_seq);
        }
    }
    out
}

#[test]
fn puts_from_several_connections_are_readable_and_ordered_per_key() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let addr = server.addr;
    run(move || async move {
        let admin = Client::connect(addr).await.expect("connect");
        admin.create_stream("events", 4).await.expect("create");
        let producers = (0..4).map(|c| async move {
            let client = Client::connect(addr).await.expect("connect");
            let mut acked = Vec::new();
            for n in 0..20 {
                let records: Vec<PutEntry> = (0..100)
                    .map(|i| {
                        entry(
                            &format!("key-{}", i % 10),
                            format!("c{c}-{n}-{i}").into_bytes(),
                        )
                    })
                    .collect();
                let results = client.put_records("events", records).await.expect("put");
                for (i, result) in results.into_iter().enumerate() {
                    let (shard, seq) = result.expect("record accepted");
                    acked.push((
                        format!("key-{}", i % 10),
                        format!("c{c}-{n}-{i}"),
                        shard,
                        seq,
                    ));
                }
            }
            acked
        });
        let acked: Vec<_> = futures::future::join_all(producers)
            .await
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(acked.len(), 8_000);
        let stored = read_all(&admin, "events").await;
        assert_eq!(stored.len(), 8_000, "every record once");
        let description = admin.describe_stream("events").await.expect("describe");
        let mut last_seq: HashMap<(String, String), (u32, u64)> = HashMap::new();
        for (key, data, shard, seq) in &acked {
            let (k, d) = &stored[&(*shard, *seq)];
            assert_eq!((k.as_ref(), d.as_ref()), (key.as_bytes(), data.as_bytes()));
            // Routed by MD5 to the shard whose range holds the key.
            let meta = &description.shards[*shard as usize];
            let hash = hash_key(key.as_bytes());
            assert!(meta.hash_start <= hash && hash <= meta.hash_end);
            // Per connection and key, later puts get later sequence numbers.
            let connection = data.split('-').next().unwrap_or_default().to_string();
            if let Some(previous) = last_seq.insert((connection, key.clone()), (*shard, *seq)) {
                assert_eq!(previous.0, *shard, "one key, one shard");
                assert!(previous.1 < *seq, "order within {key}");
            }
        }
    });
    server.stop();
}

#[test]
fn a_batch_spanning_every_shard_and_core_is_answered_in_request_order() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let addr = server.addr;
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        client.create_stream("wide", 8).await.expect("create");
        let ranges = hash_ranges(8);
        let records: Vec<PutEntry> = (0..500u32)
            .map(|i| {
                let (start, _) = ranges[(i % 8) as usize];
                PutEntry {
                    partition_key: Bytes::from(format!("k{i}")),
                    data: Bytes::from(payload(u64::from(i), 64)),
                    explicit_hash_key: Some(start + u128::from(i)),
                }
            })
            .collect();
        let results = client.put_records("wide", records).await.expect("put");
        assert_eq!(results.len(), 500);
        let description = client.describe_stream("wide").await.expect("describe");
        let cores: std::collections::BTreeSet<u16> =
            description.shards.iter().map(|s| s.owner_core).collect();
        assert_eq!(cores.len(), 2, "the stream spans both cores");
        let stored = read_all(&client, "wide").await;
        for (i, result) in results.iter().enumerate() {
            let (shard, seq) = result.as_ref().expect("accepted");
            assert_eq!(
                *shard,
                i as u32 % 8,
                "record {i} went to the shard holding its hash key"
            );
            assert_eq!(
                stored[&(*shard, *seq)].1.as_ref(),
                payload(i as u64, 64).as_slice()
            );
        }
    });
    server.stop();
}

#[test]
fn limits_are_enforced_before_anything_is_appended() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let addr = server.addr;
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        client.create_stream("limits", 1).await.expect("create");
        fn status<T: std::fmt::Debug>(result: Result<T, ClientError>) -> Status {
            match result {
                Err(ClientError::Server(error)) => error.status,
                other => panic!("expected a server error, got {other:?}"),
            }
        }
        let too_many: Vec<PutEntry> = (0..501).map(|_| entry("k", vec![1])).collect();
        assert_eq!(
            status(client.put_records("limits", too_many).await),
            Status::LimitExceeded
        );
        let long_key = "x".repeat(257);
        let mixed = vec![entry("ok", vec![1]), entry(&long_key, vec![2])];
        assert_eq!(
            status(client.put_records("limits", mixed).await),
            Status::LimitExceeded
        );
        let empty_key = vec![entry("", vec![1])];
        assert_eq!(
            status(client.put_records("limits", empty_key).await),
            Status::LimitExceeded
        );
        let big = vec![entry("k", vec![0; 1024 * 1024 + 1])];
        assert_eq!(
            status(client.put_records("limits", big).await),
            Status::LimitExceeded
        );
        let heavy: Vec<PutEntry> = (0..6).map(|_| entry("k", vec![0; 1024 * 1024])).collect();
        assert_eq!(
            status(client.put_records("limits", heavy).await),
            Status::LimitExceeded
        );
        assert_eq!(
            status(client.put_records("nope", vec![entry("k", vec![1])]).await),
            Status::StreamNotFound
        );
        assert_eq!(
            status(client.create_stream("limits", 1).await),
            Status::StreamExists
        );
        assert_eq!(
            status(client.create_stream("bad name", 1).await),
            Status::InvalidArgument
        );
        assert_eq!(
            status(client.create_stream("zero", 0).await),
            Status::InvalidArgument
        );
        // Nothing of the rejected puts was appended.
        let description = client.describe_stream("limits").await.expect("describe");
        assert_eq!(description.shards[0].tip_seq, 0);
    });
    server.stop();
}

#[test]
fn restart_keeps_every_stream_and_record_and_delete_removes_them() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let addr = server.addr;
    let acked = run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        client.create_stream("kept", 3).await.expect("create");
        client.create_stream("gone", 2).await.expect("create");
        let mut acked = Vec::new();
        for n in 0..10u64 {
            let records: Vec<PutEntry> = (0..50)
                .map(|i| entry(&format!("k{i}"), payload(n * 50 + i, 200)))
                .collect();
            let results = client.put_records("kept", records).await.expect("put");
            for (i, r) in results.into_iter().enumerate() {
                acked.push((r.expect("ok"), n * 50 + i as u64));
            }
        }
        client.delete_stream("gone").await.expect("delete");
        acked
    });
    server.stop();
    let server = Server::start(dir.path());
    let addr = server.addr;
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        assert_eq!(
            client.list_streams().await.expect("list"),
            vec!["kept".to_string()]
        );
        let stored = read_all(&client, "kept").await;
        assert_eq!(stored.len(), acked.len());
        for ((shard, seq), n) in acked {
            assert_eq!(stored[&(shard, seq)].1.as_ref(), payload(n, 200).as_slice());
        }
    });
    let streams = std::fs::read_dir(dir.path().join("streams"))
        .expect("streams")
        .count();
    assert_eq!(streams, 1, "the deleted stream's files are gone");
    server.stop();
}

/// The `serving` line means every core has opened its shards: a read sent the moment it
/// appears, to a shard owned by the other core, must find the shard open there. (Before,
/// a core served clients as soon as its own shards were open, while the other core could
/// still be opening its own: a read then got ShardUnavailable.)
#[test]
fn every_shard_is_open_once_the_server_says_it_serves() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let addr = server.addr;
    const SHARDS: u32 = 64;
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        client.create_stream("many", SHARDS).await.expect("create");
        let records: Vec<PutEntry> = (0..500)
            .map(|i| entry(&format!("k{i}"), payload(i, 16)))
            .collect();
        client.put_records("many", records).await.expect("put");
    });
    server.stop();
    for round in 0..3 {
        let server = Server::start(dir.path());
        let addr = server.addr;
        run(move || async move {
            // Connections on both cores, each reading every shard at once.
            let clients: Vec<Client> = futures::future::join_all(
                (0..4).map(|_| async move { Client::connect(addr).await.expect("connect") }),
            )
            .await;
            let reads = clients.iter().flat_map(|client| {
                (0..SHARDS).map(move |shard| {
                    client.get_records("many", shard, StartPosition::TrimHorizon, 1000)
                })
            });
            let mut seen = 0;
            for (i, read) in futures::future::join_all(reads)
                .await
                .into_iter()
                .enumerate()
            {
                match read {
                    Ok(batch) => seen += batch.records.len(),
                    Err(error) => panic!(
                        "round {round}: read of shard {} failed: {error:?}",
                        i as u32 % SHARDS
                    ),
                }
            }
            assert_eq!(
                seen,
                4 * 500,
                "round {round}: every record, once per client"
            );
        });
        server.stop();
    }
}

#[test]
fn records_acknowledged_over_tcp_survive_sigkill() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let addr = server.addr;
    // Producers run on the executor thread and report acks through a std channel, so the
    // test thread can kill the server while they are mid-stream.
    let (tx, rx) = std::sync::mpsc::channel::<((u32, u64), u64)>();
    let producer = std::thread::spawn(move || {
        run(move || async move {
            let client = Rc::new(Client::connect(addr).await.expect("connect"));
            client.create_stream("durable", 4).await.expect("create");
            let tasks = (0..4u64).map(|p| {
                let client = client.clone();
                let tx = tx.clone();
                async move {
                    for n in 0.. {
                        let base = (p << 40) | (n * 100);
                        let records: Vec<PutEntry> = (0..100)
                            .map(|i| entry(&format!("p{p}-{i}"), payload(base + i, 150)))
                            .collect();
                        let Ok(results) = client.put_records("durable", records).await else {
                            return;
                        };
                        for (i, r) in results.into_iter().enumerate() {
                            if let Ok(at) = r
                                && tx.send((at, base + i as u64)).is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
            futures::future::join_all(tasks).await;
        })
    });
    let mut acked = Vec::new();
    let started = Instant::now();
    while acked.len() < 20_000 && started.elapsed() < Duration::from_secs(60) {
        if let Ok(ack) = rx.recv_timeout(Duration::from_secs(10)) {
            acked.push(ack);
        }
    }
    server.kill();
    let _ = producer.join();
    acked.extend(rx.try_iter());
    assert!(acked.len() >= 20_000, "only {} acknowledged", acked.len());
    let server = Server::start(dir.path());
    let addr = server.addr;
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        let stored = read_all(&client, "durable").await;
        for ((shard, seq), n) in &acked {
            let Some((_, data)) = stored.get(&(*shard, *seq)) else {
                panic!("acknowledged record {shard}/{seq} lost");
            };
            assert_eq!(
                data.as_ref(),
                payload(*n, 150).as_slice(),
                "record {shard}/{seq}"
            );
        }
        eprintln!("{} acknowledged, {} recovered", acked.len(), stored.len());
    });
    server.stop();
}

fn raw_frame(kind: u8, version: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((body.len() + 12) as u32).to_le_bytes());
    out.push(version);
    out.push(kind);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Reads one frame from a raw socket: its header and body, or None when it closed.
fn read_frame(socket: &mut std::net::TcpStream) -> Option<(FrameHeader, Vec<u8>)> {
    let mut head = [0u8; HEADER_BYTES];
    socket.read_exact(&mut head).ok()?;
    let header = FrameHeader::decode(&head, 1 << 30).ok()?;
    let mut body = vec![0u8; header.frame_bytes - HEADER_BYTES];
    socket.read_exact(&mut body).ok()?;
    Some((header, body))
}

fn is_closed(socket: &mut std::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(socket.read(&mut byte), Ok(0) | Err(_))
}

#[test]
fn bad_frames_get_clear_errors_and_leave_other_connections_alone() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let addr = server.addr;
    let healthy = std::thread::spawn(move || {
        run(move || async move {
            let client = Client::connect(addr).await.expect("connect");
            client.create_stream("calm", 2).await.expect("create");
            let mut acked = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                let records = vec![entry("k", vec![7; 100]); 50];
                let results = client
                    .put_records("calm", records)
                    .await
                    .expect("healthy put");
                acked += results.iter().filter(|r| r.is_ok()).count();
            }
            acked
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    let timeout = Some(Duration::from_secs(5));
    let connect = || {
        let socket = std::net::TcpStream::connect(addr).expect("connect");
        socket.set_read_timeout(timeout).expect("timeout");
        socket
    };

    // An unknown operation gets an error and the connection stays usable.
    let mut socket = connect();
    socket
        .write_all(&raw_frame(0x55, VERSION, 1, b""))
        .expect("write");
    let (header, body) = read_frame(&mut socket).expect("answer");
    assert_eq!(
        (header.request_id, header.status),
        (1, Status::UnknownOperation as u16)
    );
    let error = binary::decode_error(header.status, Bytes::from(body)).expect("error body");
    assert!(
        error.message.contains("unknown operation"),
        "{}",
        error.message
    );
    let mut list = BytesMut::new();
    Request::ListStreams.encode(2, &mut list);
    socket.write_all(&list).expect("write");
    let (header, _) = read_frame(&mut socket).expect("answer");
    assert_eq!((header.request_id, header.status), (2, 0));

    // A body that does not decode (a put announcing 2 records, carrying 1).
    let mut body = Vec::new();
    body.extend_from_slice(&4u16.to_le_bytes());
    body.extend_from_slice(b"calm");
    body.extend_from_slice(&2u16.to_le_bytes());
    body.extend_from_slice(&[0, 1, 0, b'k', 1, 0, 0, 0, b'x']);
    socket
        .write_all(&raw_frame(Op::PutRecords as u8, VERSION, 3, &body))
        .expect("write");
    let (header, body) = read_frame(&mut socket).expect("answer");
    assert_eq!(
        (header.request_id, header.status),
        (3, Status::Malformed as u16)
    );
    let error = binary::decode_error(header.status, Bytes::from(body)).expect("error body");
    assert!(error.message.contains("truncated"), "{}", error.message);

    // An oversized frame is refused before buffering, and its connection closed.
    let mut socket = connect();
    let mut huge = raw_frame(Op::PutRecords as u8, VERSION, 4, b"");
    huge[..4].copy_from_slice(&(512u32 << 20).to_le_bytes());
    socket.write_all(&huge).expect("write");
    let (header, _) = read_frame(&mut socket).expect("answer");
    assert_eq!(
        (header.request_id, header.status),
        (4, Status::FrameTooLarge as u16)
    );
    assert!(is_closed(&mut socket));

    // Another protocol version.
    let mut socket = connect();
    socket
        .write_all(&raw_frame(Op::ListStreams as u8, 9, 5, b""))
        .expect("write");
    let (header, _) = read_frame(&mut socket).expect("answer");
    assert_eq!(
        (header.request_id, header.status),
        (5, Status::UnsupportedVersion as u16)
    );
    assert!(is_closed(&mut socket));

    // A frame cut off mid-way, then the client goes away.
    let mut socket = connect();
    let frame = raw_frame(Op::ListStreams as u8, VERSION, 6, b"");
    socket.write_all(&frame[..10]).expect("write");
    drop(socket);

    // Garbage bytes that are not a frame at all.
    let mut socket = connect();
    socket
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let answered = read_frame(&mut socket);
    assert!(answered.is_some_and(|(h, _)| h.status != 0));
    assert!(is_closed(&mut socket));

    let acked = healthy.join().expect("healthy client");
    assert!(acked > 0, "the healthy connection kept working");
    server.stop();
}

#[test]
fn subscribers_receive_records_as_they_become_durable() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let addr = server.addr;
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        client.create_stream("live", 1).await.expect("create");
        let subscription = client
            .subscribe("live", 0, StartPosition::Latest)
            .await
            .expect("subscribe");
        let producer = Client::connect(addr).await.expect("connect");
        for n in 0..5u64 {
            let records = (0..10)
                .map(|i| entry("k", payload(n * 10 + i, 30)))
                .collect();
            producer.put_records("live", records).await.expect("put");
        }
        let mut seen = Vec::new();
        while seen.len() < 50 {
            let event = subscription.next().await.expect("event").expect("records");
            seen.extend(event.records);
        }
        for (i, record) in seen.iter().enumerate() {
            assert_eq!(record.seq, i as u64);
            assert_eq!(record.data.as_ref(), payload(i as u64, 30).as_slice());
        }
        let missing = client.subscribe("live", 9, StartPosition::Latest).await;
        assert!(
            matches!(missing, Err(ClientError::Server(e)) if e.status == Status::ShardNotFound)
        );
    });
    server.stop();
}

#[test]
fn the_producer_batches_single_records_and_answers_each() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let addr = server.addr;
    run(move || async move {
        let client = Rc::new(Client::connect(addr).await.expect("connect"));
        client.create_stream("batched", 2).await.expect("create");
        let producer = spate::client::Producer::new(
            client.clone(),
            "batched",
            100,
            Duration::from_millis(5),
            4,
        );
        let sends: Vec<_> = (0..1_234u64)
            .map(|i| {
                producer.send(
                    Bytes::from(format!("k{}", i % 7)),
                    Bytes::from(payload(i, 40)),
                )
            })
            .collect();
        let results = futures::future::join_all(sends).await;
        let stored = read_all(&client, "batched").await;
        assert_eq!(stored.len(), 1_234);
        let mut last: HashMap<usize, u64> = HashMap::new();
        for (i, result) in results.into_iter().enumerate() {
            let (shard, seq) = result.expect("answered").expect("accepted");
            assert_eq!(
                stored[&(shard, seq)].1.as_ref(),
                payload(i as u64, 40).as_slice()
            );
            // Each key's records are stored in the order they were sent.
            if let Some(previous) = last.insert(i % 7, seq) {
                assert!(seq > previous, "key k{}: {previous} then {seq}", i % 7);
            }
        }
        // A lone record goes out when the linger time has passed.
        let lone = producer.send(Bytes::from("lone"), Bytes::from("x"));
        assert!(lone.await.expect("answered").is_ok());
    });
    server.stop();
}

#[test]
fn a_relative_data_dir_serves_like_an_absolute_one() {
    // The default data folder is ./data, and glommio opens folders through io_uring, where
    // a relative path once failed every stream creation with EBADF.
    let dir = temp_dir();
    let cwd = std::env::current_dir().expect("cwd");
    let mut relative = std::path::PathBuf::new();
    for _ in cwd.components().skip(1) {
        relative.push("..");
    }
    relative.push(dir.path().strip_prefix("/").expect("an absolute temp dir"));
    let server = Server::start(&relative);
    let addr = server.addr;
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        client.create_stream("relative", 2).await.expect("create");
        let results = client
            .put_records("relative", vec![entry("k", payload(1, 10))])
            .await
            .expect("put");
        assert!(results[0].is_ok(), "{:?}", results[0]);
    });
    server.stop();
}

/// A keep-alive connection to the server's HTTP port, for [`connections_per_core`].
fn metrics_connection(server: &Server) -> std::net::TcpStream {
    let http =
        std::net::TcpStream::connect(server.endpoint.trim_start_matches("http://")).expect("http");
    http.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    http
}

/// Open connections per core, from `spate_connections` on /metrics, asked over one
/// keep-alive HTTP connection (itself one of the connections counted).
fn connections_per_core(http: &mut std::net::TcpStream) -> Vec<usize> {
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: spate\r\n\r\n")
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        http.read_exact(&mut byte).expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("content-length");
    let mut body = vec![0u8; length];
    http.read_exact(&mut body).expect("response body");
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|line| line.starts_with("spate_connections{"))
        .map(|line| {
            let value = line.rsplit(' ').next().expect("value");
            value.parse().expect("count")
        })
        .collect()
}

#[test]
fn connections_are_spread_evenly_over_the_cores() {
    // The kernel hashes each connection to one core's listener; left there, 24 connections
    // on 2 cores stay within one of each other only by luck (a random walk 24 steps long).
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let timeout = Some(Duration::from_secs(10));
    let mut http = metrics_connection(&server);
    let mut held = Vec::new();
    for opened in 1..=24 {
        let mut socket = std::net::TcpStream::connect(server.addr).expect("connect");
        socket.set_read_timeout(timeout).expect("timeout");
        // Answered, so accepted and placed on a core before the next one comes.
        let mut list = BytesMut::new();
        Request::ListStreams.encode(opened, &mut list);
        socket.write_all(&list).expect("write");
        let (header, _) = read_frame(&mut socket).expect("answer");
        assert_eq!((header.request_id, header.status), (opened, 0));
        held.push(socket);
        let counts = connections_per_core(&mut http);
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert_eq!(
            counts.iter().sum::<usize>(),
            opened as usize + 1,
            "{counts:?}"
        );
        let spread = counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0);
        assert!(
            spread <= 1,
            "after {opened} connections (and the metrics one) the cores hold {counts:?}"
        );
    }
    // Closed connections are counted off, and new ones counted again.
    held.truncate(8);
    wait_for_connections(&mut http, 9);
    for _ in 0..8 {
        let socket = std::net::TcpStream::connect(server.addr).expect("connect");
        held.push(socket);
    }
    wait_for_connections(&mut http, 17);
    server.stop();
}

/// Waits (up to 10 s) until the server counts `total` open connections, and checks it does.
fn wait_for_connections(http: &mut std::net::TcpStream, total: usize) {
    let started = Instant::now();
    let counts = loop {
        let counts = connections_per_core(http);
        if counts.iter().sum::<usize>() == total || started.elapsed() > Duration::from_secs(10) {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(counts.iter().sum::<usize>(), total, "{counts:?}");
}

/// Sends `frame` on a raw connection and reads one frame back.
fn ask(socket: &mut std::net::TcpStream, frame: &[u8]) -> (FrameHeader, Vec<u8>) {
    socket.write_all(frame).expect("write");
    read_frame(socket).expect("an answer")
}

fn attach_frame(core: u16, id: u64) -> Vec<u8> {
    let mut frame = BytesMut::new();
    Request::Attach { core }.encode(id, &mut frame);
    frame.to_vec()
}

fn list_frame(id: u64) -> Vec<u8> {
    let mut frame = BytesMut::new();
    Request::ListStreams.encode(id, &mut frame);
    frame.to_vec()
}

#[test]
fn an_attach_moves_its_connection_to_the_core_it_names() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let timeout = Some(Duration::from_secs(10));
    let mut http = metrics_connection(&server);
    let connect = || {
        let socket = std::net::TcpStream::connect(server.addr).expect("connect");
        socket.set_read_timeout(timeout).expect("timeout");
        socket
    };
    // Six connections asking for core 1 all end up there, whichever core took them (the
    // server would have spread them three and three), and are served there.
    let mut held = Vec::new();
    for id in 1..=6u64 {
        let mut socket = connect();
        let (header, body) = ask(&mut socket, &attach_frame(1, id));
        assert_eq!((header.request_id, header.status), (id, 0));
        assert_eq!(
            Response::decode(Op::Attach, Bytes::from(body)),
            Ok(Response::Attached { core: 1, cores: 2 })
        );
        let (header, _) = ask(&mut socket, &list_frame(id + 100));
        assert_eq!((header.request_id, header.status), (id + 100, 0));
        held.push(socket);
    }
    wait_for_connections(&mut http, 7);
    let counts = connections_per_core(&mut http);
    assert!(counts[1] >= 6, "six attached to core 1: {counts:?}");

    // A core the server does not run: refused, and the connection stays open where it is.
    let mut socket = connect();
    let (header, body) = ask(&mut socket, &attach_frame(7, 1));
    assert_eq!(header.status, Status::InvalidArgument as u16);
    assert!(String::from_utf8_lossy(&body).contains("no core 7"));
    let (header, _) = ask(&mut socket, &list_frame(2));
    assert_eq!((header.request_id, header.status), (2, 0));
    // Only a connection's first request may attach.
    let (header, body) = ask(&mut socket, &attach_frame(0, 3));
    assert_eq!(header.status, Status::InvalidArgument as u16);
    assert!(String::from_utf8_lossy(&body).contains("first request"));
    let (header, _) = ask(&mut socket, &list_frame(4)); // still served
    assert_eq!((header.request_id, header.status), (4, 0));

    // Requests sent right behind an Attach, before its answer, move with the connection
    // and are served on the new core, after the Attach is answered.
    let mut socket = connect();
    let mut both = attach_frame(1, 1);
    both.extend_from_slice(&list_frame(2));
    socket.write_all(&both).expect("write");
    let (first, _) = read_frame(&mut socket).expect("the Attach's answer");
    let (second, _) = read_frame(&mut socket).expect("the list's answer");
    assert_eq!(
        [
            (first.request_id, first.status),
            (second.request_id, second.status)
        ],
        [(1, 0), (2, 0)]
    );
    held.push(socket);
    wait_for_connections(&mut http, 9);
    let counts = connections_per_core(&mut http);
    assert!(counts[1] >= 7, "seven attached to core 1: {counts:?}");

    // The Rust client's attached connections put and read like any other, whichever
    // core owns the records' shards.
    let addr = server.addr;
    run(move || async move {
        let client = Client::connect_to_core(addr, 0)
            .await
            .expect("attach to core 0");
        client.create_stream("attached", 4).await.expect("create");
        let records: Vec<_> = (0..200u64)
            .map(|i| entry(&format!("k{i}"), payload(i, 20)))
            .collect();
        let other = Client::connect_to_core(addr, 1)
            .await
            .expect("attach to core 1");
        for client in [&client, &other] {
            let results = client
                .put_records("attached", records.clone())
                .await
                .expect("put");
            assert!(results.iter().all(Result::is_ok), "{results:?}");
        }
        assert_eq!(read_all(&client, "attached").await.len(), 400);
        match Client::connect_to_core(addr, 2).await {
            Err(ClientError::Server(error)) => assert_eq!(error.status, Status::InvalidArgument),
            Err(other) => panic!("expected InvalidArgument, got {other}"),
            Ok(_) => panic!("attached to a core the server does not run"),
        }
    });
    drop(held);
    server.stop();
}

#[test]
fn a_producer_by_owner_sends_each_record_to_its_shards_core() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let addr = server.addr;
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        client.create_stream("owned", 4).await.expect("create");
    });
    // Sends 400 records over 20 keys in puts of 10 (40 puts, each of which would cross
    // cores if routed by the server); returns each record's (shard, seq) in send order.
    let send_all = |refresh: bool, round: u64| {
        run(move || async move {
            let producer = spate::client::Producer::connect_by_owner(
                addr,
                "owned",
                10,
                Duration::from_millis(5),
                4,
            )
            .await
            .expect("producer");
            if refresh {
                producer.refresh().await.expect("refresh");
            }
            let sends: Vec<_> = (0..400u64)
                .map(|i| {
                    producer.send(
                        Bytes::from(format!("k{}", i % 20)),
                        Bytes::from(payload(round * 1000 + i, 30)),
                    )
                })
                .collect();
            futures::future::join_all(sends)
                .await
                .into_iter()
                .map(|r| r.expect("answered").expect("accepted"))
                .collect::<Vec<_>>()
        })
    };
    let before = server.handovers();
    let first = send_all(false, 0);
    let after = server.handovers();
    eprintln!("hand-overs for the first 400 records: {}", after - before);
    // Set-up only: the description, a connection's move to core 1, the metrics scrapes.
    assert!(after - before < 10.0, "hand-overs {before} -> {after}");
    // Each key's records keep their order.
    let mut last: HashMap<u64, (u32, u64)> = HashMap::new();
    for (i, &(shard, seq)) in first.iter().enumerate() {
        if let Some(&(s, q)) = last.get(&(i as u64 % 20)) {
            assert_eq!(s, shard);
            assert!(seq > q, "key k{}: {q} then {seq}", i % 20);
        }
        last.insert(i as u64 % 20, (shard, seq));
    }
    // A shard moved to the other core: its records are still stored.
    run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        let description = client.describe_stream("owned").await.expect("describe");
        let shard = &description.shards[0];
        let change = spate::catalog::Reshard::Move {
            shard: shard.index,
            core: 1 - shard.owner_core,
        };
        client.reshard("owned", change).await.expect("move");
    });
    // Read again, the map sends the moved shard's records to its new core.
    let before = server.handovers();
    let second = send_all(true, 1);
    let after = server.handovers();
    assert!(after - before < 10.0, "hand-overs {before} -> {after}");
    let stored = run(move || async move {
        let client = Client::connect(addr).await.expect("connect");
        read_all(&client, "owned").await
    });
    assert_eq!(stored.len(), 800);
    for (round, results) in [(0u64, &first), (1, &second)] {
        for (i, at) in results.iter().enumerate() {
            let expected = payload(round * 1000 + i as u64, 30);
            assert_eq!(stored[at].1.as_ref(), expected.as_slice());
        }
    }
    server.stop();
}
