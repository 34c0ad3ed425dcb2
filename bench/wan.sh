#!/usr/bin/env bash
# Issue 19's geography benchmark (bench/wan-bench.py): 3 and 5 real nodes on
# loopback, every peer link behind a link proxy with a one-way delay, p50/p99
# latency of APPEND and STORE on the master and on another node with
# sync_replicas = 1 and 0, the time for mastership to follow a sole writer on
# another node, then APPEND throughput with 3, 5 and 7 nodes without delay
# (copies per second as nodes grow).  Prints a table.  Builds nothing.
#
#   BUILD=/path/to/build bench/wan.sh
#
# Environment: BUILD (default ./build), DELAY_MS (one-way, default 25 = 50 ms
# RTT), NODES (3,5), SYNC (1,0), COUNT (30 commands per figure),
# FOLLOW_LIMIT (15 s), TP_NODES (3,5,7; empty: skip), TP_CLIENTS (6),
# TP_MESSAGES (100 per client), BENCH_DIR (node directories, removed after).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$top/build}
[ -x "$BUILD/replicator/starlingd" ] || { echo "wan: no starlingd in $BUILD (set BUILD)" >&2; exit 1; }
[ -x "$BUILD/cli/starling" ] || { echo "wan: no starling CLI in $BUILD (set BUILD)" >&2; exit 1; }
exec python3 -B "$top/bench/wan-bench.py" --build "$BUILD" \
	--bench-dir "${BENCH_DIR:-${TMPDIR:-/tmp}}" \
	--delay-ms "${DELAY_MS:-25}" --nodes "${NODES-3,5}" --sync "${SYNC-1,0}" \
	--count "${COUNT:-30}" --follow-limit "${FOLLOW_LIMIT:-15}" \
	--tp-nodes "${TP_NODES-3,5,7}" --tp-clients "${TP_CLIENTS:-6}" \
	--tp-messages "${TP_MESSAGES:-100}"
