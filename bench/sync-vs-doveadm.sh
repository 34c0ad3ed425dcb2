#!/usr/bin/env bash
# Issue 7's sync benchmark: on the same generated messages in one run, a full
# `starling resync` of a user with N messages to an empty node (2 real
# starlingd nodes) against `doveadm backup` between two local Maildirs of a
# private Dovecot, and the no-change resync of a user with 1,000 mailboxes.
# See bench/sync-bench.py for what is timed and checked.  Builds nothing.
#
#   BUILD=/tmp/b-rel bench/sync-vs-doveadm.sh            # 100,000 messages
#   BUILD=/tmp/b-rel MESSAGES=10000 bench/sync-vs-doveadm.sh
#
# Environment: BUILD (default ./build; uses $BUILD/replicator/starlingd and
# $BUILD/cli/starling, build without sanitizers), BENCH_DIR (default
# /var/tmp, must not be tmpfs or fsync means nothing), MESSAGES (100000,
# 1-20 KB each, about 420 MB), MAILBOXES (1000), RUNS (9 no-change resyncs),
# SEED (7).
# Goals of issue 7: full sync >= 10x doveadm backup; no-change resync < 100 ms.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$top/build}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
[ -x "$BUILD/replicator/starlingd" ] || { echo "sync-vs-doveadm: no starlingd in $BUILD (set BUILD)" >&2; exit 1; }
[ -x /usr/bin/doveadm ] || { echo "sync-vs-doveadm: dovecot not installed (scripts/install-deps --bench)" >&2; exit 1; }
fs=$(stat -f -c %T "$BENCH_DIR")
[ "$fs" != tmpfs ] || echo "sync-vs-doveadm: warning: $BENCH_DIR is tmpfs, fsync costs nothing there" >&2
exec python3 -B "$top/bench/sync-bench.py" --build "$BUILD" --bench-dir "$BENCH_DIR" \
	--messages "${MESSAGES:-100000}" --mailboxes "${MAILBOXES:-1000}" \
	--runs "${RUNS:-9}" --seed "${SEED:-7}"
