//! Malformed HTTP and malformed Kinesis bodies against the real server over raw sockets:
//! each gets a clear 4xx in the AWS error shape or a closed connection for that client
//! alone; never a 5xx, never a crash, never a stall for others.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Server, temp_dir};

fn connect(server: &Server) -> TcpStream {
    let addr = server.endpoint.trim_start_matches("http://");
    let socket = TcpStream::connect(addr).expect("connect");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    socket
}

/// Sends raw bytes and returns the status code and the whole response text (None when
/// the server closed the connection without answering).
fn exchange(server: &Server, raw: &[u8]) -> Option<(u16, String)> {
    let mut socket = connect(server);
    socket.write_all(raw).ok()?;
    let mut response = Vec::new();
    let _ = socket.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

/// A well-formed SigV4 header: accepted as is, since the test server verifies no keys.
const AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKID/20261123/us-east-1/kinesis/aws4_request, \
                    SignedHeaders=host;x-amz-date, Signature=00";

fn kinesis(target: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-amz-json-1.1\r\n\
         X-Amz-Target: Kinesis_20131202.{target}\r\nContent-Length: {}\r\nConnection: close\r\n\
         X-Amz-Date: 20261123T000000Z\r\nAuthorization: {AUTH}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

fn expect_error(server: &Server, raw: &[u8], status: u16, kind: &str) {
    let (got, text) = exchange(server, raw).unwrap_or_else(|| panic!("no answer for {kind}"));
    assert_eq!(got, status, "{text}");
    assert!(text.contains(&format!("\"__type\":\"{kind}\"")), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains(&format!("x-amzn-errortype: {}", kind.to_ascii_lowercase())),
        "{text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("x-amzn-requestid"),
        "{text}"
    );
}

fn healthy(server: &Server) -> bool {
    exchange(
        server,
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .is_some_and(|(status, _)| status == 200)
}

#[test]
fn malformed_bodies_get_aws_shaped_4xx_errors() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    let create = kinesis("CreateStream", br#"{"StreamName":"s","ShardCount":1}"#);
    assert_eq!(exchange(&server, &create).map(|r| r.0), Some(200));

    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            kinesis("PutRecord", b"{not json"),
            400,
            "SerializationException",
        ),
        (kinesis("PutRecord", b""), 400, "SerializationException"),
        (
            kinesis("PutRecord", b"[1,2]"),
            400,
            "SerializationException",
        ),
        (
            kinesis(
                "PutRecord",
                br#"{"StreamName":5,"Data":"eA==","PartitionKey":"k"}"#,
            ),
            400,
            "SerializationException",
        ),
        (
            kinesis(
                "PutRecord",
                br#"{"StreamName":{"a":1},"Data":"eA==","PartitionKey":"k"}"#,
            ),
            400,
            "SerializationException",
        ),
        (
            kinesis(
                "PutRecord",
                br#"{"StreamName":"s","Data":"eA==","PartitionKey":null}"#,
            ),
            400,
            "ValidationException",
        ),
        (
            kinesis(
                "PutRecord",
                br#"{"StreamName":"s","Data":"not base64!","PartitionKey":"k"}"#,
            ),
            400,
            "SerializationException",
        ),
        (
            kinesis(
                "PutRecord",
                br#"{"StreamName":"s","Data":"eA==","PartitionKey":"k","ExplicitHashKey":"-1"}"#,
            ),
            400,
            "InvalidArgumentException",
        ),
        (
            kinesis(
                "PutRecord",
                br#"{"StreamName":"s\u0000x","Data":"eA==","PartitionKey":"k"}"#,
            ),
            400,
            "ValidationException",
        ),
        (
            kinesis("CreateStream", br#"{"StreamName":"t","ShardCount":1e400}"#),
            400,
            "SerializationException",
        ),
        (
            kinesis("CreateStream", br#"{"StreamName":"t","ShardCount":-4}"#),
            400,
            "ValidationException",
        ),
        (
            kinesis(
                "CreateStream",
                br#"{"StreamName":"t","ShardCount":99999999999}"#,
            ),
            400,
            "LimitExceededException",
        ),
        (
            kinesis("GetRecords", br#"{"ShardIterator":"garbage"}"#),
            400,
            "InvalidArgumentException",
        ),
        (
            kinesis("GetRecords", br#"{"ShardIterator":"x","Limit":0}"#),
            400,
            "ValidationException",
        ),
        (
            kinesis("NoSuchThing", b"{}"),
            400,
            "UnknownOperationException",
        ),
        (
            kinesis("StartStreamEncryption", b"{}"),
            400,
            "UnknownOperationException",
        ),
        (
            kinesis("SplitShard", b"{}"),
            400,
            "InvalidArgumentException",
        ),
        (
            kinesis(
                "SplitShard",
                br#"{"StreamName":"s","ShardToSplit":"shardId-000000000000","NewStartingHashKey":-1}"#,
            ),
            400,
            "SerializationException",
        ),
        (
            kinesis(
                "UpdateShardCount",
                br#"{"StreamName":"s","TargetShardCount":"two","ScalingType":"UNIFORM_SCALING"}"#,
            ),
            400,
            "SerializationException",
        ),
    ];
    for (raw, status, kind) in &cases {
        expect_error(&server, raw, *status, kind);
    }

    // Deep nesting, a huge string, invalid UTF-8.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    expect_error(
        &server,
        &kinesis("PutRecord", deep.as_bytes()),
        400,
        "SerializationException",
    );
    let huge = format!(r#"{{"StreamName":"{}"}}"#, "a".repeat(8 << 20));
    expect_error(
        &server,
        &kinesis("DescribeStream", huge.as_bytes()),
        400,
        "ValidationException",
    );
    let mut bad_utf8 = br#"{"StreamName":""#.to_vec();
    bad_utf8.extend_from_slice(&[0xff, 0xfe]);
    bad_utf8.extend_from_slice(br#""}"#);
    expect_error(
        &server,
        &kinesis("DescribeStream", &bad_utf8),
        400,
        "SerializationException",
    );

    // Bodies over the limit are refused by their declared length, before being read.
    let absurd = b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Kinesis_20131202.PutRecord\r\n\
                   Content-Type: application/x-amz-json-1.1\r\nContent-Length: 999999999999\r\n\r\n{}";
    let (status, _) = exchange(&server, absurd).expect("answer");
    assert_eq!(status, 413);
    // CBOR gets a clear error naming the switch.
    let cbor = b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: Kinesis_20131202.ListStreams\r\n\
                 Content-Type: application/x-amz-cbor-1.1\r\nContent-Length: 1\r\nConnection: close\r\n\r\n\xa0";
    let (status, text) = exchange(&server, cbor).expect("answer");
    assert_eq!(status, 400);
    assert!(text.contains("aws.cborEnabled=false"), "{text}");
    assert!(healthy(&server));
    server.stop();
}

#[test]
fn malformed_http_closes_only_its_own_connection() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    // A client that promises a body and never sends it holds only its own connection.
    let mut stalled = connect(&server);
    stalled
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nX-Amz-Target: Kinesis_20131202.ListStreams\r\n\r\n{")
        .expect("write");
    // Garbage instead of a request line; broken chunking; headers beyond the limit.
    let answers = [
        exchange(&server, b"\x00\x01\x02 not http at all\r\n\r\n"),
        exchange(
            &server,
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-Amz-Target: Kinesis_20131202.ListStreams\r\n\r\nZZZ\r\n{}\r\n0\r\n\r\n",
        ),
        exchange(
            &server,
            format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(200_000)).as_bytes(),
        ),
    ];
    for answer in answers.iter().flatten() {
        assert!(
            (400..500).contains(&answer.0),
            "expected a 4xx or a close: {}",
            answer.1
        );
    }
    // A client that stops mid-body.
    let mut cut = connect(&server);
    cut.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"Stre")
        .expect("write");
    drop(cut);
    // Others are served meanwhile.
    assert!(healthy(&server));
    let list = kinesis("ListStreams", b"{}");
    assert_eq!(exchange(&server, &list).map(|r| r.0), Some(200));
    drop(stalled);
    server.stop();
}
