#!/bin/sh
# Runs the storage benchmark (bench-storage.c) from a build directory.
#
#   bench/storage.sh [BUILD_DIR] [-- bench-storage options]
#
# BUILD_DIR defaults to the current directory; it must hold a built
# bench/bench-storage (build without --enable-sanitizers for real figures).
# The store and the raw-write file go to $BENCH_DIR (default /var/tmp),
# which should be on the filesystem the node's data_dir will use.
set -eu
build=.
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
	build=$1
	shift
fi
[ $# -gt 0 ] && [ "$1" = "--" ] && shift
bin=$build/bench/bench-storage
if [ ! -x "$bin" ]; then
	echo "storage.sh: $bin not found: run make in $build first" >&2
	exit 1
fi
dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/starling-bench.XXXXXX")
trap 'rm -rf "$dir"' EXIT INT TERM
"$bin" -d "$dir" "$@"
