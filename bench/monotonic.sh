#!/usr/bin/env bash
# Issue 20's figures (bench/monotonic-bench.py): SELECT and STATUS p50/p99
# on the mailbox's master and on a node far from it, read_consistency =
# local against = master, on a real 3-node cluster with the far node's
# links slowed by the test harness's LinkProxy.  Builds nothing.
#
#   BUILD=/tmp/b-rel bench/monotonic.sh        # an -O2 build without sanitizers
#
# Environment: BUILD (default ./build; uses $BUILD/replicator/starlingd and
# $BUILD/cli/starling), ONE_WAY_MS (25: node 3 is 50 ms round trip away),
# OPS (200 of each command per node and mode), SEED (200 messages in INBOX),
# RATE (20 APPENDs/s on the master while measuring; 0: idle), HOP_SECONDS
# (20: issue 20's hop test afterwards, 0: none), WRITERS (4, for the hop test).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$top/build}
[ -x "$BUILD/replicator/starlingd" ] || { echo "monotonic: no starlingd in $BUILD (set BUILD)" >&2; exit 1; }
[ -x "$BUILD/cli/starling" ] || { echo "monotonic: no starling CLI in $BUILD (set BUILD)" >&2; exit 1; }
exec python3 -B "$top/bench/monotonic-bench.py" --build "$BUILD" \
	--one-way-ms "${ONE_WAY_MS:-25}" --ops "${OPS:-200}" --seed "${SEED:-200}" \
	--rate "${RATE:-20}" --hop-seconds "${HOP_SECONDS:-20}" --writers "${WRITERS:-4}"
