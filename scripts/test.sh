#!/usr/bin/env bash
# Runs spate's whole test suite: unit tests, the shard-log model, recovery and SIGKILL
# crash tests on real files through io_uring, the server end to end, and Kinesis
# compatibility with real AWS clients (boto3, the AWS CLI and the JavaScript SDK v3).
# Installs what the tests need inside the repository (a Python virtualenv with boto3 and
# the AWS CLI, and the npm SDK, under target/); raises the memlock limit for this shell when it may (glommio registers I/O
# buffers in locked memory; with less it still works, a little slower).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(ulimit -l)" != unlimited ]; then
  ulimit -l unlimited 2>/dev/null || ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
fi
echo "memlock limit: $(ulimit -l) KiB"

python=target/pyenv/bin/python
if ! "$python" -c "import boto3" 2>/dev/null || [ ! -x target/pyenv/bin/aws ]; then
  echo "installing boto3 and the AWS CLI into target/pyenv (PyPI)"
  mkdir -p target
  python3 -m venv target/pyenv
  # One resolve for both, so boto3 and the CLI agree on botocore.
  "$python" -m pip install --quiet boto3 awscli
fi

if [ ! -d target/jsenv/node_modules/@aws-sdk/client-kinesis ]; then
  echo "installing @aws-sdk/client-kinesis into target/jsenv (npm)"
  mkdir -p target/jsenv
  cp tests/kinesis/js/package.json target/jsenv/
  (cd target/jsenv && npm install --silent --no-audit --no-fund)
fi

cargo build --all-targets --quiet
# A hung test must fail the run, not hold it until CI's own limit.
timeout 1800 cargo test --all-targets 2>&1
