#!/usr/bin/env bash
# Two more server scenarios, each with the server's peak resident memory:
#   tail  — binary puts of 100 B records while `spate tail` follows every shard;
#   wide  — a 1,000-shard stream driven over 1,000 connections.
# Appends a section to bench/RESULTS.md.
#
#   bench/scenarios.sh              # 10 s each
set -euo pipefail
cd "$(dirname "$0")/.."

run_seconds=${RUN_SECONDS:-10}
work=$(mktemp -d -p "$PWD/target" bench-scenarios.XXXX)
port=$((20000 + RANDOM % 20000))
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
  [ -n "${tail_pid:-}" ] && kill "$tail_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo build --release --quiet
spate=$PWD/target/release/spate

start_server() { # name
  "$spate" serve --data-dir "$work/data-$1" --listen "127.0.0.1:$port" \
      --http-listen "127.0.0.1:$((port + 1))" >"$work/serve-$1.out" 2>"$work/serve-$1.err" &
  server_pid=$!
  until grep -q serving "$work/serve-$1.out" 2>/dev/null; do sleep 0.2; done
}
stop_server() { # name
  awk '/VmHWM/ {print $2}' "/proc/$server_pid/status" >"$work/peak-$1"
  kill -TERM "$server_pid"; wait "$server_pid" || true; server_pid=
}

echo "scenario tail: puts with a live tail reader" >&2
start_server tail
"$spate" streams create followed --shards 4 --server "127.0.0.1:$port" >/dev/null
"$spate" tail followed --server "127.0.0.1:$port" >"$work/tail.out" &
tail_pid=$!
"$spate" load --server "127.0.0.1:$port" --stream followed --record-bytes 100 --batch 500 \
    --duration "$run_seconds" --warmup 2 --json "$work/tail.json" --hgrm "$work/tail.hgrm" >&2
sleep 2
kill "$tail_pid"; wait "$tail_pid" 2>/dev/null || true; tail_pid=
wc -l <"$work/tail.out" >"$work/tailed"
stop_server tail

echo "scenario wide: 1,000 shards over 1,000 connections" >&2
start_server wide
"$spate" load --server "127.0.0.1:$port" --stream wide --shards 1000 --connections 1000 \
    --in-flight 1 --batch 100 --record-bytes 100 --duration "$run_seconds" --warmup 2 \
    --json "$work/wide.json" --hgrm "$work/wide.hgrm" >&2
stop_server wide

python3 - "$work" "$run_seconds" <<'PY' | tee -a bench/RESULTS.md
import datetime, json, os, platform, subprocess, sys
work, seconds = sys.argv[1:3]
def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
def load(name):
    return json.load(open(f"{work}/{name}.json"))
commit = sh("git rev-parse --short HEAD") + (" (dirty)" if sh("git status --porcelain -- src") else "")
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
print(f"\n## Server scenarios: live tail reader, 1,000 shards x 1,000 connections — {datetime.date.today()}\n")
print(f"- command: `bench/scenarios.sh` (RUN_SECONDS={seconds}); commit {commit}")
print(f"- machine: {os.cpu_count()} cores, {cpu}, kernel {platform.release()}; server, load and tail share it")
print("- durable puts (ack after fdatasync); no peer in these two scenarios\n")
print("| scenario | records/s | put p50 / p99 / max (ms) | errors | server peak RSS |")
print("|---|---|---|---|---|")
for name, label in (("tail", "100 B puts, batch 500, 4 connections, with `spate tail` following all 4 shards"),
                    ("wide", "1,000-shard stream, 1,000 connections, batch 100")):
    s = load(name); l = s["latency_ms"]
    peak = int(open(f"{work}/peak-{name}").read().strip() or 0) / 1024
    print(f"| {label} | {s['records_per_s']/1e6:.2f} M | {l['p50']:.1f} / {l['p99']:.1f} / {l['max']:.1f} | {s['errors']} | {peak:.0f} MiB |")
print(f"\nThe tail printed {open(f'{work}/tailed').read().strip()} records while the puts ran.")
PY
