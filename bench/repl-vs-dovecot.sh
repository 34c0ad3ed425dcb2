#!/usr/bin/env bash
# Issue 6's replication benchmark (bench/repl-bench.py) in one run: APPEND
# throughput of a real 3-node starlingd cluster with sync_replicas = 1
# against one private Dovecot with mail_fsync = always on the same machine
# and disk, then the replication lag from an APPEND's OK on node 1 to the
# EXISTS in IDLE sessions on nodes 2 and 3 (p50, p99).  Builds nothing.
#
#   BUILD=/tmp/b-rel bench/repl-vs-dovecot.sh     # an -O2 build without sanitizers
#
# Environment: BUILD (default ./build; uses $BUILD/replicator/starlingd and
# $BUILD/cli/starling), BENCH_DIR (default /var/tmp, must not be tmpfs or
# fsync means nothing), CLIENTS (8: clients spread over the nodes, and
# concurrent writers for the lag), MESSAGES (100 APPENDs per client), SIZE
# (33000 bytes per message), LAG_MESSAGES (50 per writer), ROUNDS (1; the
# throughput figure is the median of the rounds).
# Goals of issue 6: replicated rate >= Dovecot's unreplicated one; lag p99 < 10 ms.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${BUILD:-$top/build}
BENCH_DIR=${BENCH_DIR:-/var/tmp}
[ -x "$BUILD/replicator/starlingd" ] || { echo "repl-vs-dovecot: no starlingd in $BUILD (set BUILD)" >&2; exit 1; }
[ -x "$BUILD/cli/starling" ] || { echo "repl-vs-dovecot: no starling CLI in $BUILD (set BUILD)" >&2; exit 1; }
command -v dovecot >/dev/null || [ -x /usr/sbin/dovecot ] || { echo "repl-vs-dovecot: dovecot not installed (scripts/install-deps --bench)" >&2; exit 1; }
fs=$(stat -f -c %T "$BENCH_DIR")
[ "$fs" != tmpfs ] || echo "repl-vs-dovecot: warning: $BENCH_DIR is tmpfs, fsync costs nothing there" >&2
exec python3 -B "$top/bench/repl-bench.py" --build "$BUILD" --bench-dir "$BENCH_DIR" \
	--clients "${CLIENTS:-8}" --messages "${MESSAGES:-100}" --size "${SIZE:-33000}" \
	--lag-messages "${LAG_MESSAGES:-50}" --rounds "${ROUNDS:-1}"
