#!/usr/bin/env bash
# Every peer comparison in one command, each installing and starting its peer on loopback
# by itself and appending its section to bench/RESULTS.md: Redis Streams (bench/server.sh),
# NATS JetStream (bench/nats.sh) and kinesalite on the Kinesis API (bench/kinesis.sh).
# Each reports the peer as a ratio to spate measured in the same run, with both systems'
# durability settings beside the figures.
#
#   bench/peers.sh
#   RUN_SECONDS=5 bench/peers.sh
set -euo pipefail
cd "$(dirname "$0")"
bash ./server.sh
bash ./nats.sh
bash ./kinesis.sh
