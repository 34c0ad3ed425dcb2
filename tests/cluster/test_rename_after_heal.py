#!/usr/bin/env python3
"""A RENAME made right after a heal holds (issue 13, the fault campaign's
`mailbox-ops`, seed 9721: node 1 renamed scratch-s1-2 to -3 0.13 s after
its partition healed, and after the heal scratch-s1-2 was back on every
node).

Real starlingd nodes on loopback behind link proxies, repl_log_max = 8, no
periodic check.  Per round, with a mailbox of its own:

  - node 1 creates A and resyncs with node 2 (their last common list names
    A); node 1 is cut off; it renames A to B (so the heal has a rename to
    carry), and one side takes APPENDs: 12, which push the other past
    repl_log_max (the heal starts a full resync of the user, whose client
    is the side that took them), or 3 (the heal streams the backlog, then
    resyncs the users it touched);
  - the link gets a 50 ms latency each way (the resync's round trips then
    take a few hundred ms) and is restored; when the heal starts (its log
    line), node 1 waits 0, 150 or 400 ms, so that the RENAME lands before
    the resync's LIST is answered, between its list merge and its
    per-mailbox syncs, or after, and renames B to C over an IMAP session
    opened beforehand;
  - after convergence every node has C, and neither A nor B.

With three nodes (seed 9721's shape), node 3 is killed while node 1 is cut
off and started again 1 s or 1.5 s after node 1's RENAME; in the second
shape node 1 is then paused (SIGSTOP) for 4.5 s, 0.8 s after node 3 is back.

These rounds passed before the fix of the last common list too (the race
needs a lost live RENAME); tests/sync "a rename made during a sync, after
its merge, is kept" is the test that failed before it.

Every wait is bounded.  The last line is "test-rename-after-heal: N passed, M failed".
"""
import os
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness
sys.path.insert(0, HERE)

from harness import imapwire  # noqa: E402
from harness.proc import poll  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402
from test_rename_heal import PASSWORD, USER, command, names  # noqa: E402

R = Report("test-rename-after-heal")

DELAYS_MS = (0, 150, 400)
RESYNC_LINE = "full resync of"
APPENDS = 12
BODY = "body"
LATENCY_S = 0.05


def down(node, peer):
    return poll(lambda: node.peer_state(peer) not in ("up", None), 20, interval=0.1)


def resync(label, node, peer, after=""):
    """node's `starling resync` of USER with peer, checked to succeed."""
    r = node.cli("resync", "-u", USER, "--peer", str(peer), timeout=120)
    R.check("%s: node %d resyncs with node %d%s" % (label, node.node_id, peer, after),
            r.returncode == 0,
            r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace"))


def appends(node, k, label, count=None):
    """APPENDs enough to push node's peers past repl_log_max (or count)."""
    count = APPENDS if count is None else count
    imap = imapwire.Client(node.host, node.imap_port)
    try:
        imap.login(USER, PASSWORD)
        ok = 0
        for i in range(count):
            r = imap.command("APPEND INBOX", imapwire.Literal(
                "Subject: r%d away %d\r\n\r\n%s\r\n" % (k, i, BODY)))
            ok += r.status == "OK"
    finally:
        imap.close()
    R.equal("%s: %d APPENDs on node %d" % (label, count, node.node_id), ok, count)


def rename_after_heal(c, label, watched, line, started_what, heal, delay_ms, b, cc):
    """heal() with a 50 ms latency on link 1-2; once watched logs line once
    more (the heal has started), delay_ms later, RENAME b cc on node 1."""
    n1 = c.nodes[0]
    imap = imapwire.Client(n1.host, n1.imap_port)
    try:
        imap.login(USER, PASSWORD)
        before = watched.log_text().count(line)
        # A one-way latency of 50 ms on the link stretches the resync
        # (each of its round trips) to a few hundred ms, so that the
        # RENAME lands before the LIST is answered, between the merge and
        # the per-mailbox syncs, or after them, as the delay says.
        c.mesh.set_latency(1, 2, LATENCY_S)
        heal()
        started = poll(lambda: watched.log_text().count(line) > before, 30, interval=0.002)
        R.check("%s: %s" % (label, started_what), started, watched.log_tail(20))
        time.sleep(delay_ms / 1000.0)
        r = imap.command("RENAME %s %s" % (b, cc))
        R.equal("%s: RENAME %s %s on node 1 right after the heal" % (label, b, cc),
                r.status, "OK")
    finally:
        imap.close()
        c.mesh.set_latency(1, 2, 0)


def round_(c, k, client_id, delay_ms, overflow=True):
    n1, n2 = c.nodes
    a, b, cc = "R%d-A" % k, "R%d-B" % k, "R%d-C" % k
    label = "round %d (client node %d, +%d ms%s)" % (k, client_id, delay_ms,
                                                     "" if overflow else ", backlog")
    R.equal("%s: CREATE %s on node 1" % (label, a), command(n1, "CREATE " + a).status, "OK")
    c.wait_dumps_equal(USER, timeout=60)
    resync(label, n1, 2)

    c.cut(1, 2)
    R.check("%s: node 1 sees node 2 down" % label, down(n1, 2), n1.peer_state(2))
    R.check("%s: node 2 sees node 1 down" % label, down(n2, 1), n2.peer_state(1))
    R.equal("%s: RENAME %s %s on node 1 while cut" % (label, a, b),
            command(n1, "RENAME %s %s" % (a, b)).status, "OK")
    client = c.nodes[client_id - 1]
    appends(client, k, label, None if overflow else 3)

    # Without an overflow the heal streams the backlog, then resyncs the
    # users it touched: the link coming up is the start.
    line = RESYNC_LINE if overflow else "link up"
    rename_after_heal(c, label, client, line, "the heal starts on node %d" % client_id,
                      lambda: c.restore(1, 2), delay_ms, b, cc)

    c.wait_links_up(timeout=40)
    # A second pass settles whatever the heal's resync left to a later one.
    c.wait_dumps_equal(USER, timeout=60)
    resync(label, n2, 1)
    resync(label, n1, 2)
    c.wait_dumps_equal(USER, timeout=60)
    for n in c.nodes:
        have = names(n)
        R.check("%s: node %d has %s and neither %s nor %s" % (label, n.node_id, cc, a, b),
                cc in have and a not in have and b not in have, sorted(have))


def round3(c, k, delay_ms, back_s, pause_s=None):
    """Seed 9721's shape: node 3 dies while node 1 is cut off and comes
    back back_s after node 1's heal and RENAME; with pause_s, node 1 is
    paused (SIGSTOP) pause_s after node 3 is back, for 4.5 s."""
    n1, n2, n3 = c.nodes
    a, b, cc = "T%d-A" % k, "T%d-B" % k, "T%d-C" % k
    label = "3 nodes, round %d (+%d ms, node 3 back %.1f s later%s)" % (
        k, delay_ms, back_s, "" if pause_s is None else ", node 1 paused %.1f s after" % pause_s)
    R.equal("%s: CREATE %s on node 1" % (label, a), command(n1, "CREATE " + a).status, "OK")
    c.wait_dumps_equal(USER, timeout=60)
    for x, y in ((1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)):
        resync(label, c.nodes[x - 1], y)

    c.cut(1, 2)
    c.cut(1, 3)
    R.check("%s: node 1 sees node 2 down" % label, down(n1, 2), n1.peer_state(2))
    R.check("%s: node 2 sees node 1 down" % label, down(n2, 1), n2.peer_state(1))
    R.check("%s: node 3 sees node 1 down" % label, down(n3, 1), n3.peer_state(1))
    R.equal("%s: RENAME %s %s on node 1 while cut" % (label, a, b),
            command(n1, "RENAME %s %s" % (a, b)).status, "OK")
    for node in (n1, n2):
        appends(node, k, label)
    n3.kill()

    rename_after_heal(c, label, n1, RESYNC_LINE, "the heal starts a full resync on node 1",
                      lambda: (c.restore(1, 2), c.restore(1, 3)), delay_ms, b, cc)
    time.sleep(back_s)
    n3.start()
    if pause_s is not None:
        time.sleep(pause_s)
        n1.pause()
        try:
            time.sleep(4.5)
        finally:
            n1.resume()
    c.wait_links_up(timeout=40)
    c.wait_dumps_equal(USER, timeout=60)
    for x, y in ((3, 1), (3, 2), (1, 3), (2, 3), (1, 2)):
        resync(label, c.nodes[x - 1], y, " after")
    c.wait_dumps_equal(USER, timeout=60)
    for n in c.nodes:
        have = names(n)
        R.check("%s: node %d has %s and neither %s nor %s" % (label, n.node_id, cc, a, b),
                cc in have and a not in have and b not in have, sorted(have))


def t_three_nodes(c):
    k = 0
    for back, pause_s in ((1.0, None), (1.5, 0.8)):
        for d in DELAYS_MS:
            k += 1
            round3(c, k, d, back, pause_s)


def t_rename_after_heal(c):
    k = 0
    for overflow in (True, False):
        for client_id in (1, 2):
            for d in DELAYS_MS:
                k += 1
                round_(c, k, client_id, d, overflow)


def main():
    # No periodic check: the resyncs after the heal are the ones the log
    # bound asks for.
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0"
    for title, test, n in (("a RENAME right after a heal holds", t_rename_after_heal, 2),
                           ("a RENAME right after a heal holds, a third node away",
                            t_three_nodes, 3)):
        # Debug: a link up after the first is a debug line ("link up
        # again"), the start of a backlog round.
        c = Cluster(users={USER: PASSWORD}, extra_config={"repl_log_max": "8"}, n=n,
                    proxies=True, log_level="debug")
        try:
            c.start_all()
            c.wait_links_up(timeout=40)
            R.section(title, test, c)
        finally:
            c.close_checked(R)
    sys.exit(R.summary())


if __name__ == "__main__":
    main()
