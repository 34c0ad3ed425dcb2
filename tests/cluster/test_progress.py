#!/usr/bin/env python3
"""Progress lines of long admin work (issue 17, "Progress").

`starling bundle import` and `starling resync` wait for the running node;
while the work lasts, the node sends a PROGRESS line on the admin socket at
a bounded rate (every 5 s; STARLING_PROGRESS_INTERVAL seconds here, 0.1) and
the CLI prints it on stderr as "progress: ...", stdout keeping the report.

Two nodes linked, the periodic check off (nothing syncs behind our back):
- node 1 imports a bundle of 8,000 messages made here (SPEC.md 11):
  progress lines show the loading and the merge, no more than one per
  interval, and the import still succeeds with the usual OK;
- `resync --full` of the user with node 2 (which lacks all 8,000) prints
  progress lines naming peer 2 and growing counts, no more than one per
  interval; stdout is the report alone and says "converged: yes";
- a short command (a resync finding nothing to do) prints none before one
  interval has passed;
- with node 1 stopped, `bundle import` opens the store itself and prints
  the same progress lines.

The last line is "cluster-progress: N passed, M failed".
"""
import os
import re
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness
sys.path.insert(0, HERE)

from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402
from test_bundle import seal  # noqa: E402

R = Report("cluster-progress")
USER = "alice@example.com"
PASSWORD = "secret"
INTERVAL = 0.1
COUNT = 8000


def big_bundle(secret, path, source=3, name=b"Big", guid_byte=0xee):
    mbox = "0123456789abcdef0123456789abcd%02x" % guid_byte
    parts = [b"B1 CREATE %s %s %s 7\r\n" % (USER.encode(), name, mbox.encode()),
             b"B2 MBOX 1 %s %s 7 %s\r\n" % (USER.encode(), name, mbox.encode()),
             b"B3 SELECT 1\r\n",
             b"B4 SYNC-BEGIN 0 %d 1 %d\r\n" % (COUNT, COUNT + 1)]
    for i in range(COUNT):
        text = (b"Subject: big %d\r\n\r\n" % i) + os.urandom(600).hex().encode() + b"\r\n"
        parts.append(b"B%d SAVE 1700000000+0000 %d %d %032x () {%d}\r\n%s\r\n"
                     % (5 + i, i + 1, i + 1, 0xb16 << 64 | i, len(text), text))
    parts.append(b"B%d SYNC-END\r\n" % (5 + COUNT))
    with open(path, "wb") as f:
        f.write(seal(secret, USER, source, int(time.time()), b"".join(parts)))


def progress_lines(stderr):
    return [ln for ln in stderr.decode(errors="replace").splitlines()
            if ln.startswith("progress: ")]


def check_rate(what, lines, took):
    # One line per interval at most, the first after one interval.
    bound = int(took / INTERVAL) + 1
    R.check("%s: at most one progress line per %.1f s (%d lines in %.2f s)"
            % (what, INTERVAL, len(lines), took), len(lines) <= bound, lines[-3:])


def t_progress():
    os.environ["STARLING_PROGRESS_INTERVAL"] = str(INTERVAL)
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0"
    c = Cluster(2, users={USER: PASSWORD})
    try:
        n1, n2 = c.nodes
        c.start_all()
        c.wait_links_up(timeout=30)
        with open(c.secret_file, "rb") as f:
            secret = f.read().rstrip(b"\r\n")
        path = os.path.join(c.dir, "big.bundle")
        big_bundle(secret, path)

        t0 = time.monotonic()
        r = n1.cli("bundle", "import", path, timeout=300)
        took = time.monotonic() - t0
        lines = progress_lines(r.stderr)
        print("measured: bundle import of %d messages took %.2f s, %d progress lines"
              % (COUNT, took, len(lines)))
        for ln in lines[:2] + lines[-2:]:
            print("  " + ln)
        R.check("the bundle import succeeds", r.returncode == 0, r.stderr[-400:])
        R.check("the import took more than two intervals (else nothing to show)",
                took > 2 * INTERVAL, took)
        R.check("bundle import: progress lines on stderr", len(lines) >= 1, r.stderr[-400:])
        R.check("bundle import: they say loading or merging, with counts",
                lines and all(re.match(r"progress: (loading: [0-9.]+ of [0-9.]+ MiB|"
                                       r"merging: \d+ mailboxes checked, \d+ messages added)",
                                       ln) for ln in lines), lines)
        check_rate("bundle import", lines, took)
        R.check("bundle import: nothing but progress on stderr",
                len(r.stderr.decode(errors="replace").splitlines()) == len(lines),
                r.stderr[-400:])

        t0 = time.monotonic()
        r = n1.cli("resync", "-u", USER, "--peer", "2", "--full", timeout=300)
        took = time.monotonic() - t0
        lines = progress_lines(r.stderr)
        print("measured: full resync of %d messages took %.2f s, %d progress lines"
              % (COUNT, took, len(lines)))
        for ln in lines[:2] + lines[-2:]:
            print("  " + ln)
        out = r.stdout.decode(errors="replace")
        R.check("the resync converges", r.returncode == 0 and "converged: yes" in out,
                (r.returncode, out[-300:], r.stderr[-300:]))
        R.check("the resync took more than two intervals", took > 2 * INTERVAL, took)
        R.check("resync: progress lines on stderr", len(lines) >= 1, r.stderr[-400:])
        pat = re.compile(r"progress: peer 2( verifying)? \(\d+ of 1 peers done\): "
                         r"(\d+) mailboxes checked, (\d+) messages sent, (\d+) received$")
        # Once the last peer is done the run waits for its changes to be
        # durable before it reports: "finishing", only at the end.
        syncing = lines
        while syncing and syncing[-1] == "progress: finishing":
            syncing = syncing[:-1]
        R.check("resync: each names peer 2 and its counts",
                syncing and all(pat.match(ln) for ln in syncing), lines)
        sent = [int(pat.match(ln).group(3)) for ln in lines if pat.match(ln)]
        R.check("resync: the count of messages sent grows to the end",
                sent and sent[-1] > 0 and sent == sorted(sent) or
                any("verifying" in ln for ln in lines), sent)
        check_rate("resync", lines, took)
        R.check("resync: stdout is the report alone", "progress" not in out, out[-300:])
        R.equal("node 2 got every message", n2.dump(USER).count("\nmsg Big "), COUNT)

        t0 = time.monotonic()
        r = n1.cli("resync", "-u", USER, "--peer", "2", timeout=120)
        took = time.monotonic() - t0
        R.check("a short resync (%.2f s): no progress line before one interval" % took,
                r.returncode == 0 and (took >= INTERVAL or not progress_lines(r.stderr)),
                r.stderr[-300:])

        # With the node stopped, the CLI imports itself, with the same lines.
        n1.stop()
        path = os.path.join(c.dir, "big2.bundle")
        big_bundle(secret, path, source=4, name=b"Big2", guid_byte=0xef)
        t0 = time.monotonic()
        r = n1.cli("bundle", "import", path, timeout=300)
        took = time.monotonic() - t0
        lines = progress_lines(r.stderr)
        print("measured: local bundle import of %d messages took %.2f s, %d progress lines"
              % (COUNT, took, len(lines)))
        R.check("node stopped: the bundle import succeeds", r.returncode == 0, r.stderr[-400:])
        R.check("node stopped: the import took more than two intervals", took > 2 * INTERVAL,
                took)
        R.check("node stopped: progress lines on stderr", len(lines) >= 1, r.stderr[-400:])
        check_rate("node stopped: bundle import", lines, took)
    finally:
        del os.environ["STARLING_PROGRESS_INTERVAL"]
        del os.environ["STARLING_SYNC_CHECK_INTERVAL"]
        c.close()
        reps = c.sanitizer_reports()
        R.check("no sanitizer report in the node logs", not reps, reps)
        c.check_log_format(R)


def main():
    R.section("progress of a bundle import and a full resync", t_progress)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
