#!/usr/bin/env bash
# Kinesis API benchmark: PutRecords of 500 x 100-byte records over HTTP/1.1, offered by
# wrk (bench/kinesis/put_records.lua), against spate and against kinesalite (npm) on the
# same workload in the same run. Appends a section to bench/RESULTS.md.
#
#   bench/kinesis.sh                 # 10 s per system
#   RUN_SECONDS=20 CONNECTIONS=16 bench/kinesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

run_seconds=${RUN_SECONDS:-10}
connections=${CONNECTIONS:-8}
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
offer() { # name endpoint
  echo "wrk against $1" >&2
  STREAM=bench wrk -t1 -c"$connections" -d"${run_seconds}s" --timeout 30s \
      -s bench/kinesis/put_records.lua "$2" >"$work/$1.txt"
  tail -1 "$work/$1.txt" >&2
}

./target/release/spate serve --data-dir "$work/data" --listen "127.0.0.1:$port" \
    --http-listen "127.0.0.1:$((port + 2))" >"$work/serve.out" 2>"$work/serve.err" &
server_pid=$!
until grep -q serving "$work/serve.out" 2>/dev/null; do sleep 0.2; done
create "http://127.0.0.1:$((port + 2))"
offer spate "http://127.0.0.1:$((port + 2))/"
own() { # name address
  echo "spate load --protocol kinesis against $1" >&2
  ./target/release/spate load --protocol kinesis --server "$2" --stream bench --batch 500 \
      --connections 2 --in-flight "$((connections / 2))" --duration "$run_seconds" --warmup 1 \
      --json "$work/own-$1.json" --hgrm "$work/own-$1.hgrm" >&2
}
own spate "127.0.0.1:$((port + 2))"
peak_kb=$(awk '/VmHWM/ {print $2}' "/proc/$server_pid/status")
kill -TERM "$server_pid"; wait "$server_pid" || true; server_pid=

target/bench-node/node_modules/.bin/kinesalite --port "$kl_port" --createStreamMs 0 >"$work/kl.log" 2>&1 &
kl_pid=$!
sleep 2
create "http://127.0.0.1:$kl_port"
offer kinesalite "http://127.0.0.1:$kl_port/"
own kinesalite "127.0.0.1:$kl_port"

python3 - "$work" "$run_seconds" "$connections" "$peak_kb" <<'PY' | tee -a bench/RESULTS.md
import datetime, os, platform, subprocess, sys
work, seconds, conns, peak_kb = sys.argv[1:5]
def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
def parse(name):
    line = open(f"{work}/{name}.txt").read().strip().splitlines()[-1].split()
    values = dict(zip(line[0::2], line[1::2]))
    requests = int(values["requests"])
    return {"records_per_s": requests * 500 / float(seconds), "errors": int(values["errors_status"]) + int(values["errors_socket"]),
            "p50": int(values["p50_us"]) / 1000, "p99": int(values["p99_us"]) / 1000}
spate, kl = parse("spate"), parse("kinesalite")
import json
def own(name):
    j = json.load(open(f"{work}/own-{name}.json"))
    return {"records_per_s": j["records_per_s"], "errors": j["errors"], "p50": j["latency_ms"]["p50"], "p99": j["latency_ms"]["p99"]}
own_spate, own_kl = own("spate"), own("kinesalite")
commit = sh("git rev-parse --short HEAD") + (" (dirty)" if sh("git status --porcelain -- src") else "")
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
print(f"\n## Kinesis API puts, spate and kinesalite — {datetime.date.today()}\n")
print(f"- command: `bench/kinesis.sh` (RUN_SECONDS={seconds}, CONNECTIONS={conns}); commit {commit}")
print(f"- machine: {os.cpu_count()} cores, {cpu}, kernel {platform.release()}; server and wrk share it")
print(f"- load: `wrk -t1 -c{conns}` with bench/kinesis/put_records.lua: PutRecords of 500 x 100 B over HTTP/1.1 keep-alive")
print("- durability: spate acknowledges after fdatasync; kinesalite 3.3.3 keeps records in memory (no --path)\n")
print("| load tool | system | records/s | PutRecords p50 / p99 (ms) | errors | vs spate |")
print("|---|---|---|---|---|---|")
for tool, rows in (("wrk", (("spate", spate), ("kinesalite", kl))), ("spate load --protocol kinesis", (("spate", own_spate), ("kinesalite", own_kl)))):
    base = rows[0][1]["records_per_s"]
    for name, r in rows:
        print(f"| {tool} | {name} | {r['records_per_s']:,.0f} | {r['p50']:.1f} / {r['p99']:.1f} | {r['errors']} | {r['records_per_s']/base:.3f} |")
print(f"\nWith wrk spate is {spate['records_per_s']/max(kl['records_per_s'],1):.0f}x kinesalite; with spate load "
      f"{own_spate['records_per_s']/max(own_kl['records_per_s'],1):.0f}x. spate's peak RSS {int(peak_kb)/1024:.0f} MiB.")
PY
