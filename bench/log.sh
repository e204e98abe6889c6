#!/usr/bin/env bash
# Shard-log benchmark: durable appends on one core for 100 B and 1 KiB records in batches
# of 500, beside the raw sequential O_DIRECT write bandwidth of the same disk (fio),
# measured in the same run. The three runs alternate, ROUNDS times, and the medians are
# compared as ratios, because this machine is shared and noisy. Appends a section to
# bench/RESULTS.md.
#
#   bench/log.sh                 # 3 rounds of 10 s each
#   ROUNDS=5 RUN_SECONDS=20 bench/log.sh
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
run_seconds=${RUN_SECONDS:-10}
dir=${BENCH_DIR:-$PWD/target/bench-data}
out=$(mktemp -d)
trap 'rm -rf "$out" "$dir"' EXIT

if ! command -v fio >/dev/null; then
  echo "installing fio (Debian package)" >&2
  apt-get update -qq && apt-get install -y -qq fio >/dev/null
fi
cargo build --release --quiet
spate=./target/release/spate
mkdir -p "$dir"

for round in $(seq 1 "$rounds"); do
  echo "round $round/$rounds: fio sequential O_DIRECT write" >&2
  rm -rf "$dir/fio" && mkdir -p "$dir/fio"
  fio --name=seqwrite --directory="$dir/fio" --rw=write --bs=1M --direct=1 \
      --ioengine=io_uring --iodepth=8 --size=4G --runtime="$run_seconds" --time_based=0 \
      --end_fsync=1 --output-format=json >"$out/fio-$round.json"
  rm -rf "$dir/fio"
  for size in 100 1024; do
    echo "round $round/$rounds: spate log-bench, $size B records" >&2
    "$spate" log-bench --dir "$dir/log" --record-bytes "$size" --batch-records 500 \
        --seconds "$run_seconds" 2>"$out/log-$size-$round.txt" >"$out/log-$size-$round.json"
    tail -2 "$out/log-$size-$round.txt" >&2
  done
done

python3 - "$out" "$rounds" "$run_seconds" <<'PY' | tee -a bench/RESULTS.md
import json, os, platform, statistics, subprocess, sys, datetime
out, rounds, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def load(path):
    with open(path) as f:
        return json.load(f)
fio = [load(f"{out}/fio-{r}.json")["jobs"][0]["write"]["bw_bytes"] / 1e6 for r in range(1, rounds + 1)]
runs = {size: [load(f"{out}/log-{size}-{r}.json") for r in range(1, rounds + 1)] for size in (100, 1024)}
med = statistics.median
def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
commit = sh("git rev-parse --short HEAD") + (" (dirty)" if sh("git status --porcelain -- src") else "")
cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
fs = sh(f"df -T {out} | tail -1 | awk '{{print $1\" \"$2}}'")
print(f"\n## Shard log, one core — {datetime.date.today()}\n")
print(f"- command: `bench/log.sh` (ROUNDS={rounds}, RUN_SECONDS={seconds}); commit {commit}")
print(f"- machine: {os.cpu_count()} cores, {cpu}, kernel {platform.release()}, disk {fs}")
print("- spate: `spate log-bench --record-bytes N --batch-records 500 --in-flight 64`, durable "
      "(ack after fdatasync); peer: `fio --rw=write --bs=1M --direct=1 --ioengine=io_uring --iodepth=8 --end_fsync=1`")
print(f"- rounds alternate fio and spate; figures are medians of {rounds}\n")
print("| run | records/s | payload MB/s | to disk MB/s | vs fio | fsyncs/s | batches/commit | append p50 / p99 (ms) | tail reads rec/s | disk reads rec/s (MB/s) |")
print("|---|---|---|---|---|---|---|---|---|---|")
print(f"| fio seq write 1 MiB | – | – | {med(fio):.0f} | 1.00 | – | – | – | – | – |")
for size, rs in runs.items():
    g = lambda k: med(r[k] for r in rs)
    print(f"| {size} B records | {g('records_per_s')/1e6:.2f} M | {g('payload_mb_per_s'):.0f} | {g('disk_mb_per_s'):.0f} | "
          f"{g('disk_mb_per_s')/med(fio):.2f} | {g('fsyncs_per_s'):.0f} | {g('mean_batches_per_commit'):.1f} | "
          f"{g('append_p50_us')/1000:.1f} / {g('append_p99_us')/1000:.1f} | {g('tail_read_records_per_s')/1e6:.1f} M | "
          f"{g('disk_read_records_per_s')/1e6:.2f} M ({g('disk_read_mb_per_s'):.0f}) |")
print("\nPer round (fio MB/s; spate 100 B M records/s; spate 1 KiB disk MB/s): " + "; ".join(
    f"{fio[i]:.0f}, {runs[100][i]['records_per_s']/1e6:.2f}, {runs[1024][i]['disk_mb_per_s']:.0f}" for i in range(rounds)))
PY
