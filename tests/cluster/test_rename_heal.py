#!/usr/bin/env python3
"""Renames made while a peer was away hold after the heal (issue 13, the
fault campaign's `mailbox-ops`, seeds 9403 and 9005).

Two real starlingd nodes on loopback, repl_log_max = 8:

  - node 1 creates S1 and resyncs with node 2 (node 1's last common list
    names S1), renames it to S2 (node 2 gets that by live replication: no
    sync updates the list), then node 2 is paused (SIGSTOP) past the dead
    timeout; node 1 renames S2 to S3 and S3 to S4 and takes enough changes
    to push node 2 past repl_log_max, so node 2 is brought back by a resync
    rather than the stream.  After SIGCONT both nodes have S4 and no S2:
    the resync's list merge must not take node 2's S2 (one node 1 renamed
    the mailbox away from) for a later rename of node 2's.

Every wait is bounded.  The last line is "test-rename-heal: N passed, M failed".
"""
import os
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness import imapwire  # noqa: E402
from harness.proc import poll  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-rename-heal")
USER = "alice"
PASSWORD = "pw"


# names() and command() are test_rename_stamps.py's too.
def names(node):
    """The mailbox names LIST gives on node."""
    imap = imapwire.Client(node.host, node.imap_port)
    try:
        imap.login(USER, PASSWORD)
        r = imap.command('LIST "" "*"')
        out = set()
        for line in r.untagged:
            text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
            if text.startswith("* LIST "):
                out.add(text.rsplit(" ", 1)[-1].strip('"'))
        return out
    finally:
        imap.close()


def command(node, cmd, *args):
    imap = imapwire.Client(node.host, node.imap_port)
    try:
        imap.login(USER, PASSWORD)
        return imap.command(cmd, *args)
    finally:
        imap.close()


def t_renames_while_paused(c):
    n1, n2 = c.nodes
    R.equal("CREATE S1 on node 1", command(n1, "CREATE S1").status, "OK")
    c.wait_dumps_equal(USER, timeout=60)
    r = n1.cli("resync", "-u", USER, "--peer", "2", timeout=120)
    R.check("node 1 resyncs with node 2 (its last common list names S1)", r.returncode == 0,
            r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace"))
    R.equal("RENAME S1 S2 on node 1", command(n1, "RENAME S1 S2").status, "OK")
    R.check("node 2 has S2 by live replication",
            poll(lambda: "S2" in names(n2), 30, interval=0.2), names(n2))
    n2.pause()
    try:
        R.check("node 1 sees node 2 down",
                poll(lambda: n1.peer_state(2) not in ("up", None), 20, interval=0.25),
                n1.peer_state(2))
        R.equal("RENAME S2 S3 on node 1", command(n1, "RENAME S2 S3").status, "OK")
        R.equal("RENAME S3 S4 on node 1", command(n1, "RENAME S3 S4").status, "OK")
        for i in range(12):
            r = command(n1, "APPEND INBOX", imapwire.Literal(
                "Subject: away %d\r\n\r\nbody\r\n" % i))
            R.equal("APPEND %d on node 1" % i, r.status, "OK")
    finally:
        n2.resume()
    c.wait_links_up(timeout=40)
    c.wait_dumps_equal(USER, timeout=60)
    for n in (n1, n2):
        have = names(n)
        R.check("node %d has S4 after the heal" % n.node_id, "S4" in have, sorted(have))
        R.check("node %d has no S2 (the rename was not undone)" % n.node_id,
                "S2" not in have, sorted(have))


def run(report, title, test, **cluster_args):
    """Runs test(c) as report's one section on a cluster of USER with
    repl_log_max = 8, then exits with the report's code.  Also run by
    test_rename_stamps.py."""
    # No periodic check: the resync after the heal is the one the log
    # bound asks for.
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0"
    c = Cluster(users={USER: PASSWORD}, extra_config={"repl_log_max": "8"}, **cluster_args)
    try:
        c.start_all()
        c.wait_links_up(timeout=40)
        report.section(title, test, c)
    finally:
        del os.environ["STARLING_SYNC_CHECK_INTERVAL"]
        c.close_checked(report)
    sys.exit(report.summary())


def main():
    run(R, "renames while a peer was paused hold after the heal", t_renames_while_paused, n=2)


if __name__ == "__main__":
    main()
