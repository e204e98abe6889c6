#!/usr/bin/env bash
# A/B benchmark of two spate builds on one workload, in alternating rounds so the noise of
# this shared machine falls on both: each round starts a fresh server from one build,
# drives it with that build's `spate load` (durable binary puts of 100 B records in
# batches of 500, closed loop), and records its records/s. Prints each round and the
# median ratio B / A; appends a section to bench/RESULTS.md.
#
#   bench/ab.sh A_BINARY B_BINARY [LABEL_A LABEL_B]
#   ROUNDS=5 RUN_SECONDS=5 PROTOCOL=kinesis bench/ab.sh old/spate target/release/spate
set -euo pipefail
cd "$(dirname "$0")/.."

a=${1:?usage: bench/ab.sh A_BINARY B_BINARY [LABEL_A LABEL_B]}
b=${2:?usage: bench/ab.sh A_BINARY B_BINARY [LABEL_A LABEL_B]}
label_a=${3:-A}
label_b=${4:-B}
rounds=${ROUNDS:-3}
run_seconds=${RUN_SECONDS:-5}
protocol=${PROTOCOL:-binary}
work=$(mktemp -d -p "$PWD/target" bench-ab.XXXX)
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

round() { # binary, name -> prints records/s
  local spate=$1 name=$2 port=$((20000 + RANDOM % 20000))
  local http=$((port + 1))
  rm -rf "$work/data"
  "$spate" serve --data-dir "$work/data" --listen "127.0.0.1:$port" \
      --http-listen "127.0.0.1:$http" >"$work/serve.out" 2>"$work/serve.err" &
  server_pid=$!
  until grep -q serving "$work/serve.out" 2>/dev/null; do sleep 0.2; done
  local target="127.0.0.1:$port"
  [ "$protocol" = kinesis ] && target="127.0.0.1:$http"
  "$spate" load --protocol "$protocol" --server "$target" --stream ab --shards 4 \
      --record-bytes 100 --batch 500 --connections 4 --in-flight 8 \
      --duration "$run_seconds" --warmup 1 --json "$work/$name.json" \
      --hgrm "$work/$name.hgrm" >"$work/$name.load" 2>&1 || {
    echo "round $name: spate load failed; its output and the server's log:" >&2
    tail -n 20 "$work/$name.load" "$work/serve.err" >&2
    exit 1
  }
  kill -TERM "$server_pid"; wait "$server_pid" || true; server_pid=
  python3 -c "import json; print(round(json.load(open('$work/$name.json'))['records_per_s']))"
}

rates_a=(); rates_b=()
for i in $(seq 1 "$rounds"); do
  ra=$(round "$a" "a$i"); rb=$(round "$b" "b$i")
  rates_a+=("$ra"); rates_b+=("$rb")
  echo "round $i: $label_a $ra records/s, $label_b $rb records/s" >&2
done
summary=$(python3 - "${rates_a[*]}" "${rates_b[*]}" <<'EOF'
import statistics, sys
a = [int(x) for x in sys.argv[1].split()]
b = [int(x) for x in sys.argv[2].split()]
ratios = [y / x for x, y in zip(a, b)]
print("%.2f %.2f %.3f" % (statistics.median(a) / 1e6, statistics.median(b) / 1e6,
                          statistics.median(ratios)))
EOF
)
read -r med_a med_b ratio <<<"$summary"
echo "median: $label_a $med_a M, $label_b $med_b M records/s; $label_b / $label_a = $ratio" >&2

commit=$(git rev-parse --short HEAD)
{
  echo
  echo "## A/B: $label_a vs $label_b, $protocol puts — $(date -u +%Y-%m-%d)"
  echo
  echo "- command: \`ROUNDS=$rounds RUN_SECONDS=$run_seconds PROTOCOL=$protocol bench/ab.sh $a $b $label_a $label_b\`; commit $commit"
  echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), kernel $(uname -r); server and load share it"
  echo "- workload: 100 B records, batch 500, 4 shards, 4 connections x 8 in flight, closed loop, durable"
  echo
  echo "| round | $label_a records/s | $label_b records/s |"
  echo "|---|---|---|"
  for i in $(seq 0 $((rounds - 1))); do
    echo "| $((i + 1)) | ${rates_a[$i]} | ${rates_b[$i]} |"
  done
  echo
  echo "Median $label_a $med_a M, $label_b $med_b M records/s; median ratio $label_b / $label_a = $ratio."
} >>bench/RESULTS.md
