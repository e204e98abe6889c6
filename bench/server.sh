#!/usr/bin/env bash
# Server benchmark: durable binary-protocol puts through `spate serve`, driven by
# `spate load` on the same machine, beside Redis Streams (XADD, appendonly with
# appendfsync everysec) driven by redis-benchmark in the same run. Scenarios: 100 B and
# 1 KiB records in batches of 500 at the maximum rate (closed loop), then an open-loop
# latency run at half the 100 B maximum (records sent to their shard's owner core, the
# load's default, then once more routed by the server core that holds the connection,
# which hands records over between cores); then the 100 B maximum and half-maximum again with
# the server on one core (`serve --cores 1`), which leaves the other core to the load
# generator; then that half-maximum once more with acknowledgements before the sync (not
# durable: the latency floor without waiting for the disk). Reports the server's CPU in
# the half-maximum runs and its peak resident memory. Appends a section to
# bench/RESULTS.md.
#
#   bench/server.sh                    # 10 s per scenario
#   RUN_SECONDS=20 bench/server.sh
set -euo pipefail
cd "$(dirname "$0")/.."

run_seconds=${RUN_SECONDS:-10}
connections=${CONNECTIONS:-4}
in_flight=${IN_FLIGHT:-8}
work=$(mktemp -d -p "$PWD/target" bench-server.XXXX)
port=$((20000 + RANDOM % 20000))
redis_port=$((port + 1))
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
  redis-cli -p "$redis_port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  echo "installing redis-server and redis-tools (Debian packages)" >&2
  apt-get update -qq && apt-get install -y -qq redis-server redis-tools >/dev/null
fi
cargo build --release --quiet
spate=$PWD/target/release/spate

start_server() { # extra serve args...
  rm -rf "$work/data" "$work/serve.out"
  "$spate" serve --data-dir "$work/data" --listen "127.0.0.1:$port" "$@" >"$work/serve.out" 2>"$work/serve.err" &
  server_pid=$!
  until grep -q serving "$work/serve.out" 2>/dev/null; do sleep 0.2; done
}
stop_server() {
  kill -TERM "$server_pid"; wait "$server_pid" || true; server_pid=
}
half_of() { # load name -> half its records/s
  python3 -c "import json; print(int(json.load(open('$work/$1.json'))['records_per_s'] / 2))"
}

start_server

server_ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat"; }
load() { # name, extra args...; also writes the server's busy cores during the run to name.cpu
  local name=$1; shift
  echo "spate load: $name" >&2
  local ticks_before started
  ticks_before=$(server_ticks); started=$(date +%s.%N)
  "$spate" load --server "127.0.0.1:$port" --batch 500 --connections "$connections" \
      --in-flight "$in_flight" --duration "$run_seconds" --warmup 2 \
      --json "$work/$name.json" --hgrm "$work/$name.hgrm" "$@" >&2
  python3 -c "import sys; print((int(sys.argv[1]) - int(sys.argv[2])) / $(getconf CLK_TCK) / (float(sys.argv[4]) - float(sys.argv[3])))" \
      "$(server_ticks)" "$ticks_before" "$started" "$(date +%s.%N)" >"$work/$name.cpu"
}
load put-100 --stream s100 --shards 4 --record-bytes 100
load put-1k --stream s1k --shards 4 --record-bytes 1024
load latency-half --stream s100 --record-bytes 100 --rate "$(half_of put-100)"
load latency-half-server-routed --stream s100 --record-bytes 100 --rate "$(half_of put-100)" \
    --route server
peak_kb=$(awk '/VmHWM/ {print $2}' "/proc/$server_pid/status")
stop_server

start_server --cores 1
load put-100-one --stream s100 --shards 4 --record-bytes 100
load latency-half-one --stream s100 --record-bytes 100 --rate "$(half_of put-100-one)"
one_core_peak_kb=$(awk '/VmHWM/ {print $2}' "/proc/$server_pid/status")
stop_server

printf '[commit]\nack_before_sync = true\n' >"$work/unsynced.toml"
start_server --cores 1 --config "$work/unsynced.toml"
load latency-half-one-unsynced --stream s100 --shards 4 --record-bytes 100 \
    --rate "$(half_of put-100-one)"
stop_server

echo "redis: XADD, appendonly everysec" >&2
mkdir -p "$work/redis"
redis-server --port "$redis_port" --dir "$work/redis" --appendonly yes --appendfsync everysec \
    --save "" --daemonize yes --logfile "$work/redis.log" >/dev/null
sleep 0.5
for size in 100 1024; do
  value=$(head -c "$size" /dev/zero | tr '\0' 'x')
  requests=$((run_seconds * 200000))
  redis-benchmark -p "$redis_port" -n "$requests" -c "$connections" -P 500 --csv \
      XADD "r$size" '*' f "$value" | tail -1 >"$work/redis-$size.csv"
done
redis_peak_kb=$(awk '/VmHWM/ {print $2}' "/proc/$(redis-cli -p "$redis_port" info server | awk -F: '/process_id/ {print $2}' | tr -d '\r')/status")

python3 - "$work" "$run_seconds" "$peak_kb" "$redis_peak_kb" "$connections" "$in_flight" "$one_core_peak_kb" <<'PY' | tee -a bench/RESULTS.md
import csv, datetime, json, os, platform, subprocess, sys
work, seconds, peak_kb, redis_kb, conns, inflight, one_core_kb = sys.argv[1:8]
def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
def load(name):
    with open(f"{work}/{name}.json") as f:
        return json.load(f)
def redis(size):
    with open(f"{work}/redis-{size}.csv") as f:
        row = next(csv.reader(f))
    return float(row[1]), float(row[6])
commit = sh("git rev-parse --short HEAD") + (" (dirty)" if sh("git status --porcelain -- src") else "")
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
print(f"\n## Server, binary protocol puts — {datetime.date.today()}\n")
print(f"- command: `bench/server.sh` (RUN_SECONDS={seconds}); commit {commit}")
print(f"- machine: {os.cpu_count()} cores, {cpu}, kernel {platform.release()}; server and load generator share it")
print(f"- spate: `spate load --batch 500 --connections {conns} --in-flight {inflight}` (each record sent to its shard's owner core unless the row says otherwise); durable: acknowledged after fdatasync")
print(f"- peer: Redis Streams {sh('redis-server --version').split()[2][2:]}, `redis-benchmark -c {conns} -P 500 XADD`, "
      "appendonly yes, appendfsync everysec: acknowledged before fsync, can lose about 1 s of writes on power loss\n")
print("| scenario | spate records/s | spate MB/s | spate p50 / p99 / max (ms) | Redis records/s | Redis p99 (ms) | spate / Redis |")
print("|---|---|---|---|---|---|---|")
for name, size in (("put-100", 100), ("put-1k", 1024)):
    s = load(name); r, r99 = redis(size)
    l = s["latency_ms"]
    print(f"| {size} B, max rate (closed loop) | {s['records_per_s']/1e6:.2f} M | {s['mb_per_s']:.0f} | "
          f"{l['p50']:.1f} / {l['p99']:.1f} / {l['max']:.1f} | {r/1e6:.2f} M | {r99:.1f} | {s['records_per_s']/r:.2f} |")
def row(label, s, redis_rate=None):
    l = s["latency_ms"]
    ratio = f"{s['records_per_s']/redis_rate:.2f}" if redis_rate else "–"
    print(f"| {label} | {s['records_per_s']/1e6:.2f} M | {s['mb_per_s']:.0f} | "
          f"{l['p50']:.1f} / {l['p99']:.1f} / {l['max']:.1f} | – | – | {ratio} |")
def busy(name):
    with open(f"{work}/{name}.cpu") as f:
        return float(f.read())
h = load("latency-half")
row(f"100 B at half the max, {h['rate']:,.0f} records/s (open loop)", h)
row("the same, routed by the server (`--route server`: cross-core hand-overs)",
    load("latency-half-server-routed"))
row("server on 1 core: 100 B, max rate (closed loop)", load("put-100-one"), redis(100)[0])
h = load("latency-half-one")
row(f"server on 1 core: 100 B at half its max, {h['rate']:,.0f} records/s (open loop)", h)
row("server on 1 core, the same rate, acknowledged before the sync (not durable)",
    load("latency-half-one-unsynced"))
print(f"\nServer CPU at half the max (cores busy, its kernel threads for io_uring included): "
      f"{busy('latency-half'):.2f} of 2 ({busy('latency-half-server-routed'):.2f} routed by the server); on 1 core {busy('latency-half-one'):.2f}, "
      f"{busy('latency-half-one-unsynced'):.2f} when acknowledging before the sync.")
print(f"\nPeak resident memory: spate server {int(peak_kb)/1024:.0f} MiB (on 1 core: "
      f"{int(one_core_kb)/1024:.0f} MiB), Redis {int(redis_kb)/1024:.0f} MiB.")
PY
