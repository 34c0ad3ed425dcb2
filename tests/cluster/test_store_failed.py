#!/usr/bin/env python3
"""A node whose store failed (issue 13, fault campaign `diskfull`).

Two real starlingd nodes on loopback, node 2's data_dir on a small tmpfs
(needs root, as CI runs; without it the script exits 77, automake's SKIP):

  - once node 2's store failed on its full disk, neither node retries its
    background resync of the user every few milliseconds: over 5 s each
    node makes a bounded number of attempts (the back-off of
    REPL_SYNC_BACKOFF_MIN_S .. REPL_SYNC_BACKOFF_MAX_S), and a failure that
    repeats says how often it failed and when the next try comes;
  - an APPEND on node 2 then is made at node 1, its master, and answered
    OK without APPENDUID: node 2 cannot store the UID, and must not tell it;
  - node 2 restarted with space: the back-off does not keep the user apart,
    both nodes end with the same mail.

Every wait is bounded.  The last line is "test-store-failed: N passed, M failed".
"""
import os
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness
sys.path.insert(0, HERE)

from harness import logfmt  # noqa: E402
from harness.proc import poll  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402
from test_guarantees import login, message, restart_with_space, sh, tmpfs_used  # noqa: E402

R = Report("test-store-failed")
PASSWORD = "secret"
USER = "alice@example.com"
WINDOW_S = 5.0
# Attempts of one node in WINDOW_S: the back-off (0.1 s doubling to 5 s)
# allows about 7 from its start; before it there were hundreds.
MAX_ATTEMPTS = 12


def attempts(node, since_line):
    """The background resyncs of USER that node tried after its log's
    line since_line: one "background resync of USER" line each (its
    outcome, or that it could not start)."""
    lines = node.log_text().splitlines()[since_line:]
    out = []
    for ln in lines:
        f = logfmt.parse(ln)
        if f and f.get("msg", "").startswith("background resync of %s" % USER):
            out.append(f["msg"])
    return out


def t_backoff_while_store_failed():
    # A quick periodic check: each round finds the user differing (node 2
    # lacks what it could not store) and asks for a resync, as a binding
    # that finds the peer ahead or a refused change does.
    # (The nodes take it from the environment when they start.)
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0.2"
    c = Cluster(n=2, users={USER: PASSWORD}, extra_config={"sync_replicas": "1"})
    n1, n2 = c.nodes
    print("cluster directory: %s" % c.dir)
    mounted = []
    try:
        os.makedirs(n2.data_dir, exist_ok=True)
        r = sh("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", n2.data_dir)
        if not R.check("tmpfs mounted on node 2's data_dir", r.returncode == 0,
                       r.stderr.decode()):
            return
        mounted.append(n2.data_dir)
        c.start_all()
        c.wait_links_up(timeout=40)
        m = login(n1)
        typ, _ = m.append("INBOX", None, None, message("first"))
        R.equal("first APPEND on node 1", typ, "OK")
        c.wait_dumps_equal(USER, timeout=40)
        # Almost nothing left: the next big message cannot be stored there.
        size = (tmpfs_used(n2.data_dir) + 8192 + 4095) // 4096 * 4096
        r = sh("mount", "-o", "remount,size=%d" % size, n2.data_dir)
        R.check("tmpfs shrunk to %d bytes" % size, r.returncode == 0, r.stderr.decode())
        failed = False
        for i in range(10):
            m.append("INBOX", None, None, message("big-%d" % i, 64 * 1024))
            if poll(lambda: "No space left" in n2.log_text(), 3, interval=0.2):
                failed = True
                break
        m.logout()
        if not R.check("node 2's store failed on its full disk", failed, n2.log_tail(10)):
            return
        # An APPEND on node 2 is made at node 1, INBOX's master; node 2
        # cannot store the new UID, so it must not tell it: restarted on
        # what its store kept, it could give that UID again (seed 12218).
        m2 = login(n2)
        typ, data = m2.append("INBOX", None, None, message("unheld"))
        m2.logout()
        text = b" ".join(d for d in data if isinstance(d, bytes)).decode(errors="replace")
        R.check("APPEND on node 2 (store failed) is OK without APPENDUID",
                typ == "OK" and "APPENDUID" not in text, "%s %s" % (typ, text))
        m1 = login(n1)
        m1.select("INBOX")
        typ, found = m1.uid("SEARCH", None, "HEADER", "Subject", "unheld")
        m1.logout()
        R.check("the APPEND on node 2 is on node 1", typ == "OK" and found[0].split(),
                found)
        # Both nodes settle into their retries; then count over a window.
        time.sleep(1.0)
        marks = [len(n.log_text().splitlines()) for n in (n1, n2)]
        time.sleep(WINDOW_S)
        for n, mark in zip((n1, n2), marks):
            got = attempts(n, mark)
            print("measured: node %d: %d background resync attempts of %s in %.0f s"
                  % (n.node_id, len(got), USER, WINDOW_S))
            R.check("node %d: at most %d resync attempts in %.0f s while node 2's store "
                    "is failed" % (n.node_id, MAX_ATTEMPTS, WINDOW_S),
                    len(got) <= MAX_ATTEMPTS, "%d: %s" % (len(got), got[:3]))
        # A failure that repeats says so, with the wait before the next.
        msgs = attempts(n2, 0) + attempts(n1, 0)
        R.check("a repeated failure is logged with its count and the next try",
                any("times in a row; next try in" in x for x in msgs), msgs[-3:])

        restart_with_space(n2, mounted)
        c.wait_links_up(timeout=40)
        c.wait_dumps_equal(USER, timeout=60)
        R.check("node 2 restarted with space has every message",
                n1.dump(USER) == n2.dump(USER))
    finally:
        del os.environ["STARLING_SYNC_CHECK_INTERVAL"]
        c.close()
        for d in mounted:
            if sh("umount", d).returncode != 0:
                sh("umount", "-l", d)
        reps = c.sanitizer_reports()
        R.check("no sanitizer report", not reps, reps)


def main():
    if os.geteuid() != 0:
        # 77: automake's SKIP (no check ran, so none passed).
        print("SKIP store failed: needs root to mount a tmpfs (CI runs as root)")
        sys.exit(77)
    R.section("resync back-off while a store is failed", t_backoff_while_store_failed)
    sys.exit(R.summary())


if __name__ == "__main__":
    main()
