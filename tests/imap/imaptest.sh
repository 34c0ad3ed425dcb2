#!/usr/bin/env bash
# Runs Dovecot's imaptest (its scripted test groups) against a fresh single
# starlingd node and prints imaptest's summary.  A developer's check, not part
# of `make check`: imaptest is not a Debian package (docs/testing.md
# says how to build it).
#
#   IMAPTEST=/path/to/imaptest tests/imap/imaptest.sh [GROUP...]
#
# IMAPTEST_TESTS is the directory of test groups (default: the `tests`
# directory beside the binary, as in imaptest's source tree); naming GROUPs
# (file names in it, e.g. sort-date) runs only those.  BUILD is the build
# directory holding replicator/starlingd and cli/starling (default: build).
# PORT is the node's IMAP port (default 11143).  Exits 0 only when every
# group ran and none failed.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
: "${IMAPTEST:?set IMAPTEST to an imaptest binary}"
build=$(cd "${BUILD:-$top/build}" && pwd)
tests=${IMAPTEST_TESTS:-$(dirname "$IMAPTEST")/tests}
port=${PORT:-11143}
[ -d "$tests" ] || { echo "imaptest.sh: no test directory $tests (set IMAPTEST_TESTS)" >&2; exit 2; }

work=$(mktemp -d /tmp/starling-imaptest.XXXXXX)
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

cat >"$work/node.conf" <<EOF
node_id = 1
data_dir = $work/data
imap_listen = 127.0.0.1:$port
users_file = $work/users
log_level = warn
EOF
: >"$work/users"
printf 'testpass\n' | "$build/cli/starling" -c "$work/node.conf" user add testuser
"$build/replicator/starlingd" -c "$work/node.conf" 2>"$work/node.log" &
pid=$!
for _ in $(seq 50); do
	(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
	sleep 0.1
done

# With GROUPs, copy them (and the mailbox files they use) to a directory of
# their own: imaptest's test= takes a directory.
if [ $# -gt 0 ]; then
	mkdir "$work/tests"
	cp "$tests"/*.mbox "$work/tests/" 2>/dev/null || true
	for g in "$@"; do cp "$tests/$g" "$work/tests/"; done
	tests=$work/tests
fi

export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}/usr/lib/dovecot
out=$work/imaptest.out
rc=0
timeout 900 "$IMAPTEST" host=127.0.0.1 port="$port" user=testuser pass=testpass \
	test="$tests" >"$out" 2>&1 || rc=$?
cat "$out"
if ! kill -0 "$pid" 2>/dev/null; then
	echo "imaptest.sh: starlingd died; its log:" >&2
	cat "$work/node.log" >&2
	exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"
grep -q "groups: 0 failed" "$out"
