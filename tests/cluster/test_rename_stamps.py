#!/usr/bin/env python3
"""Two renames neither side of a merge made are ordered by their rename
stamps (issue 13, the fault campaign's `mailbox-ops`, seed 9403:
scratch-s2-3 back; SPEC.md 7.3, 10.5).

Three real starlingd nodes on loopback behind link proxies, repl_log_max = 8,
no periodic check:

  - node 2 creates S2; node 1 resyncs with nodes 3 and 2 (its last common
    lists name S2);
  - node 1 is cut off; node 2 renames S2 to S3, which node 3 takes by live
    replication; node 3 is cut off from node 2; node 2 renames S3 to S4 and
    takes enough changes to push node 1 past repl_log_max;
  - node 1 comes back to node 2 only: a resync gives it S4, jumping from S2
    (it never holds S3);
  - node 1 comes back to node 3 (node 2 still cut from it): the merge meets
    S4 on node 1 and S3 on node 3, their common list's S2 older than both,
    neither name among the other's old names.  Names alone took S3 (the
    server's) and passed it on; the stamps keep S4 everywhere.

Every wait is bounded.  The last line is "test-rename-stamps: N passed, M failed".
"""
import os
import sys

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness
sys.path.insert(0, HERE)

from harness import imapwire  # noqa: E402
from harness.proc import poll  # noqa: E402
from harness.report import Report  # noqa: E402
from test_rename_heal import USER, command, names, run  # noqa: E402

R = Report("test-rename-stamps")


def resync(node, peer):
    r = node.cli("resync", "-u", USER, "--peer", str(peer), timeout=120)
    R.check("node %d resyncs with node %d" % (node.node_id, peer), r.returncode == 0,
            r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace"))


def down(node, peer):
    return poll(lambda: node.peer_state(peer) not in ("up", None), 20, interval=0.2)


def t_third_node_renames(c):
    n1, n2, n3 = c.nodes
    R.equal("CREATE S2 on node 2", command(n2, "CREATE S2").status, "OK")
    c.wait_dumps_equal(USER, timeout=60)
    resync(n1, 3)
    resync(n1, 2)

    c.cut(1, 2)
    c.cut(1, 3)
    R.check("node 2 sees node 1 down", down(n2, 1), n2.peer_state(1))
    R.check("node 3 sees node 1 down", down(n3, 1), n3.peer_state(1))
    R.equal("RENAME S2 S3 on node 2", command(n2, "RENAME S2 S3").status, "OK")
    R.check("node 3 has S3 by live replication",
            poll(lambda: "S3" in names(n3), 30, interval=0.2), names(n3))
    c.cut(2, 3)
    R.check("node 2 sees node 3 down", down(n2, 3), n2.peer_state(3))
    R.equal("RENAME S3 S4 on node 2", command(n2, "RENAME S3 S4").status, "OK")
    for i in range(12):
        r = command(n2, "APPEND INBOX", imapwire.Literal("Subject: away %d\r\n\r\nbody\r\n" % i))
        R.equal("APPEND %d on node 2" % i, r.status, "OK")

    c.restore(1, 2)
    c.wait_links_up(timeout=40, nodes=[n1, n2])
    R.check("node 1 has S4 after its heal with node 2 (never S3)",
            poll(lambda: "S4" in names(n1), 60, interval=0.25), names(n1))

    c.restore(1, 3)
    c.wait_links_up(timeout=40, nodes=[n1, n3])
    # The merge of the two (node 1's list with node 3 names S2).
    resync(n1, 3)
    R.check("node 3 has S4 after its heal with node 1",
            poll(lambda: "S4" in names(n3), 30, interval=0.25), names(n3))
    have1 = names(n1)
    R.check("node 1 still has S4 and no S3", "S4" in have1 and "S3" not in have1, sorted(have1))

    c.restore(2, 3)
    c.wait_links_up(timeout=40)
    resync(n3, 2)
    c.wait_dumps_equal(USER, timeout=60)
    for n in c.nodes:
        have = names(n)
        R.check("node %d has S4 and no S3 at the end" % n.node_id,
                "S4" in have and "S3" not in have and "S2" not in have, sorted(have))


def main():
    run(R, "renames from a third node are ordered by their stamps", t_third_node_renames,
        n=3, proxies=True)


if __name__ == "__main__":
    main()
