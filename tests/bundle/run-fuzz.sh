#!/bin/sh
# Builds the bundle import libFuzzer harness (sync/fuzz-bundle.c) with clang
# in a build directory of its own and runs it for a bounded time over the
# seed corpus in tests/bundle/corpus.
#
#   tests/bundle/run-fuzz.sh [SECONDS]    (default $FUZZ_SECONDS, else 60)
#
# Environment: FUZZ_SECONDS; FUZZ_BUILD_DIR (default
# ${TMPDIR:-/tmp}/starling-fuzz-bundle).
# Exit status 0 when nothing was found; non-zero on a crash, a leak, a
# sanitizer report or a build failure.  Inputs found during the run go to a
# scratch copy of the corpus, which is removed at the end, as is the
# harness's store.
set -eu
seconds=${1:-${FUZZ_SECONDS:-60}}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
build=${FUZZ_BUILD_DIR:-${TMPDIR:-/tmp}/starling-fuzz-bundle}
command -v clang >/dev/null 2>&1 || { echo "run-fuzz.sh: clang is required" >&2; exit 1; }
[ -x "$top/configure" ] || (cd "$top" && autoreconf -fi)
mkdir -p "$build"
cd "$build"
[ -f Makefile ] || CC=clang "$top/configure" --enable-fuzzers -q
make -j2 -C lib libstarling.a >/dev/null
make -j2 -C protocol libprotocol.a >/dev/null
make -j2 -C storage libstorage.a >/dev/null
make -j2 -C sync fuzz-bundle >/dev/null
scratch=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-bundle-corpus.XXXXXX")
trap 'rm -rf "$scratch"' EXIT INT TERM
cp "$here/corpus/"* "$scratch/"
./sync/fuzz-bundle -max_total_time="$seconds" -max_len=8192 -timeout=10 \
	-rss_limit_mb=2048 -print_final_stats=1 "$scratch"
