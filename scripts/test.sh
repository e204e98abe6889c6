#!/usr/bin/env bash
# Runs spate's whole test suite: unit tests, the shard-log model, recovery and SIGKILL
# crash tests, on real files through io_uring. Installs nothing system-wide; raises the
# memlock limit for this shell when it may (glommio registers I/O buffers in locked
# memory; with less it still works, a little slower).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(ulimit -l)" != unlimited ]; then
  ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
fi
echo "memlock limit: $(ulimit -l) KiB"

cargo build --all-targets --quiet
cargo test --all-targets 2>&1
