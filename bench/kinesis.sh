#!/usr/bin/env bash
# Kinesis API benchmark: PutRecords of 500 x 100-byte records over HTTP/1.1, offered by
# wrk (bench/kinesis/put_records.lua) and by `spate load --protocol kinesis`, against spate
# and against kinesalite (npm) on the same workload in the same run. Each load tool runs at
# every concurrency in CONNECTIONS (requests in flight: wrk connections, or spate load's
# 2 connections x CONNECTIONS/2 in flight), since a system's best throughput is reached at
# its own concurrency; the ratio is given per concurrency and between the two systems'
# best. Appends a section to bench/RESULTS.md.
#
#   bench/kinesis.sh                         # 10 s per run, 8, 16 and 32 in flight
#   RUN_SECONDS=20 CONNECTIONS="16" bench/kinesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

run_seconds=${RUN_SECONDS:-10}
connections=${CONNECTIONS:-8 16 32}
for c in $connections; do # spate load splits each over 2 connections
  [ $((c % 2)) -eq 0 ] && [ "$c" -ge 2 ] || { echo "CONNECTIONS: even numbers of 2 or more, not '$c'" >&2; exit 2; }
done
work=$(mktemp -d -p "$PWD/target" bench-kinesis.XXXX)
port=$((20000 + RANDOM % 20000))
kl_port=$((port + 1))
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
  [ -n "${kl_pid:-}" ] && kill "$kl_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
if [ ! -x target/bench-node/node_modules/.bin/kinesalite ]; then
  echo "installing kinesalite 3.3.3 into target/bench-node (npm)" >&2
  mkdir -p target/bench-node
  (cd target/bench-node && npm init -y >/dev/null && npm install --silent --no-audit --no-fund kinesalite@3.3.3)
fi
python=target/pyenv/bin/python
if ! "$python" -c "import boto3" 2>/dev/null; then
  python3 -m venv target/pyenv && "$python" -m pip install --quiet boto3
fi
cargo build --release --quiet

create() { # endpoint
  "$python" - "$1" <<'PY'
import sys, time, boto3
k = boto3.client("kinesis", endpoint_url=sys.argv[1], region_name="us-east-1",
                 aws_access_key_id="a", aws_secret_access_key="b")
k.create_stream(StreamName="bench", ShardCount=4)
while k.describe_stream(StreamName="bench")["StreamDescription"]["StreamStatus"] != "ACTIVE":
    time.sleep(0.1)
PY
}
offer() { # name endpoint connections
  echo "wrk -c$3 against $1" >&2
  STREAM=bench wrk -t1 -c"$3" -d"${run_seconds}s" --timeout 30s \
      -s bench/kinesis/put_records.lua "$2" >"$work/$1-$3.txt"
  tail -1 "$work/$1-$3.txt" >&2
}

own() { # name address connections
  echo "spate load --protocol kinesis, 2 x $(($3 / 2)) in flight, against $1" >&2
  ./target/release/spate load --protocol kinesis --server "$2" --stream bench --batch 500 \
      --connections 2 --in-flight "$(($3 / 2))" --duration "$run_seconds" --warmup 1 \
      --json "$work/own-$1-$3.json" --hgrm "$work/own-$1-$3.hgrm" >&2
}
both() { # name endpoint-host:port
  for c in $connections; do
    offer "$1" "http://$2/" "$c"
    own "$1" "$2" "$c"
  done
}
./target/release/spate serve --data-dir "$work/data" --listen "127.0.0.1:$port" \
    --http-listen "127.0.0.1:$((port + 2))" >"$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
until grep -q serving "$work/serve.out" 2>/dev/null; do sleep 0.2; done
create "http://127.0.0.1:$((port + 2))"
both spate "127.0.0.1:$((port + 2))"
peak_kb=$(awk '/VmHWM/ {print $2}' "/proc/$server_pid/status")
kill -TERM "$server_pid"; wait "$server_pid" || true; server_pid=

target/bench-node/node_modules/.bin/kinesalite --port "$kl_port" --createStreamMs 0 >"$work/kl.log" 2>&1 &
kl_pid=$!
sleep 2
create "http://127.0.0.1:$kl_port"
both kinesalite "127.0.0.1:$kl_port"

python3 - "$work" "$run_seconds" "$connections" "$peak_kb" <<'PY' | tee -a bench/RESULTS.md
import datetime, json, os, platform, subprocess, sys
work, seconds, conns, peak_kb = sys.argv[1:5]
conns = [int(c) for c in conns.split()]
def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
def wrk(name, c):
    line = open(f"{work}/{name}-{c}.txt").read().strip().splitlines()[-1].split()
    values = dict(zip(line[0::2], line[1::2]))
    return {"records_per_s": int(values["requests"]) * 500 / float(seconds),
            "errors": int(values["errors_status"]) + int(values["errors_socket"]),
            "p50": int(values["p50_us"]) / 1000, "p99": int(values["p99_us"]) / 1000}
def own(name, c):
    j = json.load(open(f"{work}/own-{name}-{c}.json"))
    return {"records_per_s": j["records_per_s"], "errors": j["errors"],
            "p50": j["latency_ms"]["p50"], "p99": j["latency_ms"]["p99"]}
tools = (("wrk", wrk), ("spate load --protocol kinesis", own))
commit = sh("git rev-parse --short HEAD") + (" (dirty)" if sh("git status --porcelain -- src") else "")
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
print(f"\n## Kinesis API puts, spate and kinesalite — {datetime.date.today()}\n")
print(f"- command: `bench/kinesis.sh` (RUN_SECONDS={seconds}, CONNECTIONS=\"{' '.join(map(str, conns))}\"); commit {commit}")
print(f"- machine: {os.cpu_count()} cores, {cpu}, kernel {platform.release()}; server and load tool share it")
print("- load: PutRecords of 500 x 100 B over HTTP/1.1 keep-alive to a 4-shard stream; `wrk -t1 -cN` with "
      "bench/kinesis/put_records.lua, or `spate load --protocol kinesis --connections 2 --in-flight N/2`")
print("- durability: spate acknowledges after fdatasync; kinesalite 3.3.3 keeps records in memory (no --path)\n")
print("| load tool | in flight | spate records/s | spate p50 / p99 (ms) | kinesalite records/s | kinesalite p50 / p99 (ms) | errors (spate, kinesalite) | spate / kinesalite |")
print("|---|---|---|---|---|---|---|---|")
summary = []
for tool, read in tools:
    rows = [(c, read("spate", c), read("kinesalite", c)) for c in conns]
    for c, s, k in rows:
        print(f"| {tool} | {c} | {s['records_per_s']:,.0f} | {s['p50']:.1f} / {s['p99']:.1f} | "
              f"{k['records_per_s']:,.0f} | {k['p50']:.1f} / {k['p99']:.1f} | {s['errors']}, {k['errors']} | "
              f"{s['records_per_s'] / max(k['records_per_s'], 1):.0f}x |")
    best_s = max(rows, key=lambda r: r[1]["records_per_s"])
    best_k = max(rows, key=lambda r: r[2]["records_per_s"])
    summary.append(f"with {tool} spate's best is {best_s[1]['records_per_s']:,.0f} records/s ({best_s[0]} in flight) "
                   f"and kinesalite's {best_k[2]['records_per_s']:,.0f} ({best_k[0]} in flight): "
                   f"{best_s[1]['records_per_s'] / max(best_k[2]['records_per_s'], 1):.0f}x")
print("\nBest of each system: " + "; ".join(summary) + f". spate's peak RSS {int(peak_kb) / 1024:.0f} MiB.")
PY
