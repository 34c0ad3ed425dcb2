#!/bin/sh
# Builds the IMAP command parser's libFuzzer harness with clang in its own
# build directory and runs it for a bounded time over the seed corpus.
#
#   tests/imap/run-fuzz.sh [SECONDS]      (default $FUZZ_SECONDS, else 60)
#
# Environment: FUZZ_SECONDS, FUZZ_BUILD_DIR (default
# $TMPDIR/starling-fuzz-imap).
# Exit status: 0 when the run found nothing, non-zero on a crash or a build
# failure.  New interesting inputs go to a scratch copy of the corpus, so the
# checked-in seeds stay small.
set -eu
seconds=${1:-${FUZZ_SECONDS:-60}}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=${FUZZ_BUILD_DIR:-${TMPDIR:-/tmp}/starling-fuzz-imap}
if ! command -v clang >/dev/null 2>&1; then
	echo "run-fuzz.sh: clang is needed for libFuzzer" >&2
	exit 1
fi
if [ ! -x "$top/configure" ]; then
	(cd "$top" && autoreconf -fi)
fi
mkdir -p "$build"
cd "$build"
if [ ! -f Makefile ]; then
	CC=clang "$top/configure" --enable-fuzzers -q
fi
make -j2 -C lib libstarling.a >/dev/null
make -j2 -C imap fuzz-imap-parser >/dev/null
work=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-imap-corpus.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
cp "$here/corpus/"* "$work/"
./imap/fuzz-imap-parser -max_total_time="$seconds" -max_len=4096 -timeout=10 \
	-rss_limit_mb=1024 -print_final_stats=1 "$work"
