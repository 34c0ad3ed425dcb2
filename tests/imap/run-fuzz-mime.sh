#!/bin/sh
# Builds the MIME layer's libFuzzer harness (tests/imap/test-mime-fuzz.c)
# with clang and runs it for a bounded time, starting from the MIME test
# messages of the IMAP seed corpus.
#
#   tests/imap/run-fuzz-mime.sh [SECONDS]   (default $FUZZ_SECONDS, else 60)
#
# Exit status: 0 when the run found nothing, non-zero on a crash, a leak, a
# hang or a build failure.
set -eu
seconds=${1:-${FUZZ_SECONDS:-60}}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
if ! command -v clang >/dev/null 2>&1; then
	echo "run-fuzz-mime.sh: clang is needed for libFuzzer" >&2
	exit 1
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/fuzz-mime.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
mkdir "$work/corpus"
# A few structured seeds so the fuzzer starts inside multipart parsing.
printf 'Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: s\r\n\r\ny\r\n--b--\r\n' >"$work/corpus/multipart"
printf 'From: "A" <a@b>, g: c@d;\r\nSubject: =?utf-8?q?h=C3=A9?=\r\nDate: Mon, 2 Jan 2006 15:04:05 -0700\r\n\r\nbody\r\n' >"$work/corpus/envelope"
printf 'Content-Type: text/plain; name*0="a"; name*1*=utf-8%%27%%27%%C3%%A9\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n' >"$work/corpus/params"
printf 'Subject: =?GB2312?B?sbG+?= =?GB2312?B?qbu2063E4w==?=\r\nContent-Type: text/plain; charset=iso-2022-jp\r\n\r\n\033$B2q5D\033(B x\r\n' >"$work/corpus/charsets"
printf 'Subject: Re: [a] Fwd: [fwd: re[2]: x (fwd)]\r\nTo: g: a@b;\r\n\r\n' >"$work/corpus/subjects"
cd "$top"
clang -g -O1 -D_GNU_SOURCE -I. -fsanitize=fuzzer,address,undefined \
	tests/imap/test-mime-fuzz.c imap/imap-mime*.c imap/imap-sortkeys.c lib/buf.c lib/str.c \
	lib/xalloc.c lib/log.c \
	-lunistring -o "$work/fuzz-mime"
"$work/fuzz-mime" -max_total_time="$seconds" -timeout=5 -max_len=4096 \
	-rss_limit_mb=1024 -print_final_stats=1 "$work/corpus"
