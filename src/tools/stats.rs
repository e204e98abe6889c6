//! `spate stats`: a live terminal view of a running server, refreshed each second from its
//! `GET /metrics`: records/s, MB/s and fsyncs/s (from counter deltas), and latency
//! percentiles per operation and per core (since the server started). One executor.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::net::TcpStream;
use http_body_util::{BodyExt, Empty};

use crate::net::http::HyperIo;

/// Options of `spate stats`.
pub struct StatsOptions {
    /// The server's HTTP (Kinesis API) address.
    pub target: SocketAddr,
    /// Stop after this many refreshes (None: until interrupted).
    pub count: Option<u64>,
}

/// Parsed `/metrics` text: metric line (name with labels) → value.
type Samples = BTreeMap<String, f64>;

async fn fetch(target: SocketAddr) -> Result<Samples, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connecting to {target}: {e} (is `spate serve` running?)"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(HyperIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    glommio::spawn_local(async move {
        let _ = connection.await;
    })
    .detach();
    let request = hyper::Request::get("/metrics")
        .header(hyper::header::HOST, target.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(parse(&String::from_utf8_lossy(&body)))
}

/// Parses Prometheus text lines `name{labels} value`.
pub fn parse(text: &str) -> Samples {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sum(samples: &Samples, name: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(name) && k[name.len()..].starts_with('{'))
        .map(|(_, v)| v)
        .sum()
}

fn quantile(samples: &Samples, op: &str, core: &str, q: &str) -> f64 {
    let key = format!("spate_latency_seconds{{op=\"{op}\",core=\"{core}\",quantile=\"{q}\"}}");
    samples.get(&key).copied().unwrap_or(0.0) * 1000.0
}

/// Renders one screen from two successive samples `seconds` apart.
pub fn screen(previous: &Samples, current: &Samples, seconds: f64) -> String {
    let rate = |name: &str| (sum(current, name) - sum(previous, name)).max(0.0) / seconds;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "records/s {:>12.0}   MB/s {:>8.1}   fsyncs/s {:>7.0}   requests/s {:>8.0}   errors/s {:>5.0}",
        rate("spate_records_in_total"),
        rate("spate_bytes_in_total") / 1e6,
        rate("spate_fsyncs_total"),
        rate("spate_requests_total"),
        rate("spate_errors_total"),
    );
    let _ = writeln!(
        out,
        "\nlatency since start (ms)     p50      p99    p99.9      max"
    );
    let mut cores: Vec<String> = current
        .keys()
        .filter_map(|k| k.strip_prefix("spate_records_in_total{core=\""))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect();
    cores.insert(0, "all".to_string());
    for op in ["put", "get", "commit", "sync", "handover"] {
        for core in &cores {
            let _ = writeln!(
                out,
                "{op:<9} core {core:<4} {:>12.2} {:>8.2} {:>8.2} {:>8.2}",
                quantile(current, op, core, "0.5"),
                quantile(current, op, core, "0.99"),
                quantile(current, op, core, "0.999"),
                quantile(current, op, core, "1"),
            );
        }
    }
    out
}

/// Runs the live view.
///
/// # Errors
/// A message when the server cannot be reached.
pub async fn run(options: StatsOptions) -> Result<(), String> {
    let mut previous = fetch(options.target).await?;
    let mut at = Instant::now();
    let mut shown = 0u64;
    while options.count.is_none_or(|count| shown < count) {
        glommio::timer::sleep(Duration::from_secs(1)).await;
        let current = fetch(options.target).await?;
        let now = Instant::now();
        let text = screen(&previous, &current, now.duration_since(at).as_secs_f64());
        // Clear the screen and home the cursor, then draw.
        print!("\x1b[2J\x1b[H{text}");
        println!(
            "\n(spate stats: {} every second; Ctrl-C to stop)",
            options.target
        );
        previous = current;
        at = now;
        shown += 1;
    }
    Ok(())
}
