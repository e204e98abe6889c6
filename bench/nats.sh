#!/usr/bin/env bash
# Peer benchmark: durable binary-protocol puts through `spate serve` beside NATS JetStream
# (Debian's nats-server -js, a file-storage stream), each driven by `spate load` on the same
# machine in the same run: spate with batches of 500 records, JetStream with one
# acknowledged publish per record and the same number in flight (4 connections x 8
# requests x 500 records). Rounds alternate between the two so the machine's noise falls
# on both. Appends a section to bench/RESULTS.md.
#
#   bench/nats.sh                      # 3 rounds of 10 s each
#   ROUNDS=5 RUN_SECONDS=5 bench/nats.sh
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
run_seconds=${RUN_SECONDS:-10}
work=$(mktemp -d -p "$PWD/target" bench-nats.XXXX)
port=$((20000 + RANDOM % 20000))
nats_port=$((port + 2))
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
  [ -n "${nats_pid:-}" ] && kill "$nats_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if ! command -v nats-server >/dev/null; then
  echo "installing nats-server (Debian package)" >&2
  apt-get update -qq && apt-get install -y -qq nats-server >/dev/null
fi
cargo build --release --quiet
spate=$PWD/target/release/spate

load() { # name, target, extra args...; writes $work/name.json
  local name=$1 target=$2; shift 2
  "$spate" load --server "$target" --stream bench --record-bytes 100 --batch 500 \
      --connections 4 --in-flight 8 --duration "$run_seconds" --warmup 2 \
      --json "$work/$name.json" --hgrm "$work/$name.hgrm" "$@" >/dev/null 2>&1
}

figures() { # name -> "records/s p99-ms"
  python3 -c "import json; d=json.load(open('$work/$1.json')); print(round(d['records_per_s']), d['latency_ms']['p99'])"
}

spate_round() {
  rm -rf "$work/data"
  "$spate" serve --data-dir "$work/data" --listen "127.0.0.1:$port" \
      --http-listen "127.0.0.1:$((port + 1))" >"$work/serve.out" 2>"$work/serve.err" &
  server_pid=$!
  until grep -q serving "$work/serve.out" 2>/dev/null; do sleep 0.2; done
  load "spate$1" "127.0.0.1:$port" --shards 4
  peak_spate=$(awk '/VmHWM/ {print $2}' "/proc/$server_pid/status")
  kill -TERM "$server_pid"; wait "$server_pid" || true; server_pid=
}

nats_round() {
  rm -rf "$work/js"; mkdir -p "$work/js"
  nats-server -js -sd "$work/js" -a 127.0.0.1 -p "$nats_port" >"$work/nats.log" 2>&1 &
  nats_pid=$!
  sleep 1
  load "nats$1" "127.0.0.1:$nats_port" --protocol nats
  peak_nats=$(awk '/VmHWM/ {print $2}' "/proc/$nats_pid/status")
  kill -TERM "$nats_pid"; wait "$nats_pid" || true; nats_pid=
}

spate_rates=(); nats_rates=(); spate_p99=(); nats_p99=()
for i in $(seq 1 "$rounds"); do
  spate_round "$i"
  read -r rate p99 <<<"$(figures "spate$i")"; spate_rates+=("$rate"); spate_p99+=("$p99")
  nats_round "$i"
  read -r rate p99 <<<"$(figures "nats$i")"; nats_rates+=("$rate"); nats_p99+=("$p99")
  echo "round $i: spate ${spate_rates[-1]} records/s, NATS JetStream ${nats_rates[-1]} records/s" >&2
done
read -r med_spate med_nats ratio <<<"$(python3 - "${spate_rates[*]}" "${nats_rates[*]}" <<'PY'
import statistics, sys
a = [int(x) for x in sys.argv[1].split()]
b = [int(x) for x in sys.argv[2].split()]
print("%.3f %.3f %.2f" % (statistics.median(a) / 1e6, statistics.median(b) / 1e6,
                          statistics.median([x / y for x, y in zip(a, b)])))
PY
)"
echo "median: spate $med_spate M, NATS JetStream $med_nats M records/s; spate / NATS = $ratio" >&2

commit=$(git rev-parse --short HEAD)
{
  echo
  echo "## Peer: NATS JetStream, 100 B durable puts — $(date -u +%Y-%m-%d)"
  echo
  echo "- command: \`ROUNDS=$rounds RUN_SECONDS=$run_seconds bench/nats.sh\`; commit $commit"
  echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), kernel $(uname -r); server and load generator share it"
  echo "- spate: \`spate load --batch 500 --connections 4 --in-flight 8\`, 4 shards; acknowledged after fdatasync (group commit)"
  echo "- NATS: $(nats-server --version), \`nats-server -js\`, a file-storage stream, one publish per record, driven by \`spate load --protocol nats\` with the same 16,000 records in flight; acknowledged once written to its block file, not fsync'd per message (the server syncs block files in the background), so it can lose acknowledged messages on power loss"
  echo
  echo "| round | spate records/s | spate p99 (ms) | NATS records/s | NATS p99 (ms) |"
  echo "|---|---|---|---|---|"
  for i in $(seq 0 $((rounds - 1))); do
    echo "| $((i + 1)) | ${spate_rates[$i]} | ${spate_p99[$i]} | ${nats_rates[$i]} | ${nats_p99[$i]} |"
  done
  echo
  echo "Median spate $med_spate M, NATS JetStream $med_nats M records/s: spate / NATS = $ratio (target 3). Peak RSS in the last round: spate $((peak_spate / 1024)) MiB, nats-server $((peak_nats / 1024)) MiB."
} >>bench/RESULTS.md
