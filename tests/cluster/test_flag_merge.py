#!/usr/bin/env python3
"""Flag changes made on both sides of a partition are all kept (issue 13,
item 4; SPEC.md 10.3 "Flags"), with real starlingd nodes behind the link
proxy, through IMAP and `starling dump` only:

  - the issue's reproduction: 3 nodes, node 1 cut from 2 and 3; on node 1
    \\Seen is set on six messages, on node 2 \\Flagged on the same six;
    after the heal every node shows \\Seen and \\Flagged on all six, the
    dumps are identical and every message has one modseq on every node;
  - keywords: one side adds $A and removes $Old, the other adds $B; all
    three changes hold everywhere;
  - the same flag changed both ways: node 1 sets \\Seen, node 2 clears it
    later; the later change (the clear) wins everywhere;
  - a STORE that changes no value still counts (the fault campaign's
    flag-holds, partition seed 1): node 3 sets $k2, later node 1, where
    $k2 was never set, does -FLAGS ($k2 \\Answered); the later clear
    wins everywhere;
  - the same as the first through the sync engine alone: node 1 runs
    without peers (what it writes is in no replication log), and the
    periodic check brings the sides together after it rejoins.

Every wait is bounded (HEAL seconds after the links are back).  The last
line is "test-flag-merge: N passed, M failed".
"""
import os
import re
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness.imapwire import Client, Literal, quote  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-flag-merge")
PASSWORD = "secret"
USERS = ["fm%d@example.com" % i for i in range(1, 6)]
# After the heal: link catch-up, then the resync it queues (or the
# periodic check, run every CHECK seconds here).
HEAL = 90.0
CHECK = "10"
CLUSTER = None


def login(node, usr, timeout=30.0):
    c = Client(node.host, node.imap_port, timeout=timeout)
    r = c.login(usr, PASSWORD)
    if not r.ok:
        raise RuntimeError("login %s on node %d: %r" % (usr, node.node_id, r))
    return c


def message(usr, i):
    return ("From: a@example.com\r\nTo: %s\r\nSubject: flag merge %d\r\n"
            "Message-ID: <fm.%d.%s>\r\n\r\nbody %d\r\n" % (usr, i, i, usr, i)).encode()


def flags_modseqs(node, usr):
    """{uid: (sorted flags, modseq)} of INBOX over IMAP with CONDSTORE."""
    c = login(node, usr)
    try:
        c.command("ENABLE CONDSTORE")
        r = c.command("EXAMINE INBOX")
        if not r.ok or not r.number("EXISTS"):
            return {}
        r = c.command("UID FETCH 1:* (UID FLAGS MODSEQ)")
        out = {}
        for _seq, it in r.fetches():
            flags = sorted(f.decode() for f in it.get("FLAGS", []) if f != b"\\Recent")
            ms = it.get("MODSEQ")
            ms = int(ms[0]) if isinstance(ms, list) and ms else None
            out[it["UID"]] = (flags, ms)
        return out
    finally:
        c.logout()


def store(node, usr, what):
    # During a partition a change may wait for forwarding to give up
    # (SPEC 8.6: three tries) before the node makes it itself.
    c = login(node, usr, timeout=90.0)
    try:
        r = c.command("SELECT INBOX")
        if not r.ok:
            raise RuntimeError("SELECT on node %d: %r" % (node.node_id, r))
        r = c.command("UID STORE 1:* %s" % what)
        return r
    finally:
        c.logout()


def dumps(nodes, usr):
    out = {}
    for n in nodes:
        try:
            out[n.node_id] = n.dump(usr, timeout=30)
        except Exception as e:  # noqa: BLE001 -- a node that cannot answer
            out[n.node_id] = "ERROR %s" % e
    return out


def wait_until(pred, timeout):
    """Polls pred() (bounded); returns (seconds or None, last value)."""
    t0 = time.monotonic()
    last = None
    while True:
        last = pred()
        if last[0]:
            return time.monotonic() - t0, last[1]
        if time.monotonic() - t0 >= timeout:
            return None, last[1]
        time.sleep(0.3)


def converged(nodes, usr, want):
    """(ok, detail): identical dumps and, on every node over IMAP, every
    message's flags as want(uid, flags) says and one modseq per message."""
    d = dumps(nodes, usr)
    vals = list(d.values())
    if not all(v == vals[0] for v in vals) or vals[0].startswith("ERROR"):
        return False, {"dumps differ": {k: v.splitlines()[-8:] for k, v in d.items()}}
    views = {n.node_id: flags_modseqs(n, usr) for n in nodes}
    first = views[nodes[0].node_id]
    if not first or not all(want(uid, fl) for uid, (fl, _ms) in first.items()):
        return False, views
    if not all(v == first for v in views.values()):
        return False, views
    return True, views


def prepare(c, usr, count):
    cl = login(c.nodes[0], usr)
    try:
        r = cl.command("SELECT INBOX")
        if not r.ok:
            raise RuntimeError("SELECT INBOX: %r" % r)
        for i in range(count):
            r = cl.command("APPEND INBOX", Literal(message(usr, i), plus=True))
            if not r.ok:
                raise RuntimeError("APPEND: %r" % r)
    finally:
        cl.logout()
    t, _ = wait_until(lambda: converged(c.nodes, usr, lambda u, f: f == []), 30)
    R.check("%d messages on every node before the partition" % count, t is not None)
    return t is not None


def partition(c):
    """Cuts node 1 from nodes 2 and 3 and waits until both sides see it."""
    c.mesh.isolate(1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        st = c.links_state()
        if all(st.get((a, b)) not in (None, "up") for a, b in ((1, 2), (1, 3), (2, 1), (3, 1))):
            return True
        time.sleep(0.1)
    return False


def heal(c):
    c.mesh.restore_all()
    c.wait_links_up(timeout=40)


def t_setup():
    global CLUSTER
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = CHECK
    c = Cluster(n=3, users={u: PASSWORD for u in USERS}, proxies=True)
    CLUSTER = c
    c.start_all()
    t = c.wait_links_up(timeout=40)
    print("measured: 3 nodes' links up %.2f s after start" % t)
    R.check("three nodes start and link up", True)


def t_issue_reproduction():
    """The issue's scenario, exactly."""
    c = CLUSTER
    usr = USERS[0]
    if not prepare(c, usr, 6):
        return
    R.check("node 1 is cut from nodes 2 and 3", partition(c))
    try:
        r1 = store(c.nodes[0], usr, "+FLAGS (\\Seen)")
        R.check("STORE +FLAGS (\\Seen) on node 1 answered OK", r1.ok, r1)
        r2 = store(c.nodes[1], usr, "+FLAGS (\\Flagged)")
        R.check("STORE +FLAGS (\\Flagged) on node 2 answered OK", r2.ok, r2)
    finally:
        heal(c)
    t, views = wait_until(lambda: converged(c.nodes, usr,
                                            lambda u, f: f == ["\\Flagged", "\\Seen"]), HEAL)
    R.check("after the heal every node has \\Seen and \\Flagged on all six, dumps and "
            "modseqs equal, within %.0f s" % HEAL, t is not None, views)
    if t is not None:
        print("measured: converged %.2f s after the links were back" % t)
        R.equal("six messages", len(views[1]), 6)


def t_keywords():
    c = CLUSTER
    usr = USERS[1]
    if not prepare(c, usr, 3):
        return
    r = store(c.nodes[0], usr, "+FLAGS ($Old)")
    R.check("STORE +FLAGS ($Old) answered OK", r.ok, r)
    t, _ = wait_until(lambda: converged(c.nodes, usr, lambda u, f: f == ["$Old"]), 30)
    R.check("$Old on every node before the partition", t is not None)
    R.check("node 1 is cut from nodes 2 and 3", partition(c))
    try:
        r = store(c.nodes[0], usr, "+FLAGS ($A)")
        R.check("node 1: +FLAGS ($A) OK", r.ok, r)
        r = store(c.nodes[0], usr, "-FLAGS ($Old)")
        R.check("node 1: -FLAGS ($Old) OK", r.ok, r)
        r = store(c.nodes[2], usr, "+FLAGS ($B)")
        R.check("node 3: +FLAGS ($B) OK", r.ok, r)
    finally:
        heal(c)
    t, views = wait_until(lambda: converged(c.nodes, usr, lambda u, f: f == ["$A", "$B"]), HEAL)
    R.check("after the heal every node has $A and $B and not $Old, within %.0f s" % HEAL,
            t is not None, views)


def t_later_change_wins():
    c = CLUSTER
    usr = USERS[2]
    if not prepare(c, usr, 2):
        return
    R.check("node 1 is cut from nodes 2 and 3", partition(c))
    try:
        # Node 1 sets \Seen; node 2 sets it and clears it a moment later;
        # node 1 then changes something else, so that its copies end with
        # the higher modseqs (the old rule would have kept its \Seen).
        r = store(c.nodes[0], usr, "+FLAGS (\\Seen)")
        R.check("node 1: +FLAGS (\\Seen) OK", r.ok, r)
        time.sleep(0.05)
        r = store(c.nodes[1], usr, "+FLAGS (\\Seen)")
        R.check("node 2: +FLAGS (\\Seen) OK", r.ok, r)
        time.sleep(0.05)
        r = store(c.nodes[1], usr, "-FLAGS (\\Seen)")
        R.check("node 2: -FLAGS (\\Seen) OK", r.ok, r)
        for kw in ("$x1", "$x2", "$x3"):
            r = store(c.nodes[0], usr, "+FLAGS (%s)" % kw)
            R.check("node 1: +FLAGS (%s) OK" % kw, r.ok, r)
    finally:
        heal(c)
    t, views = wait_until(lambda: converged(c.nodes, usr,
                                            lambda u, f: f == ["$x1", "$x2", "$x3"]), HEAL)
    R.check("after the heal node 2's later clear of \\Seen holds everywhere, node 1's "
            "keywords too, within %.0f s" % HEAL, t is not None, views)


def t_noop_clear_later():
    c = CLUSTER
    usr = USERS[4]
    if not prepare(c, usr, 2):
        return
    R.check("node 1 is cut from nodes 2 and 3", partition(c))
    try:
        r = store(c.nodes[2], usr, "+FLAGS ($k2)")
        R.check("node 3: +FLAGS ($k2) OK", r.ok, r)
        time.sleep(0.05)
        # Changes no value on node 1 ($k2 was never set there): still
        # the user's later action on $k2 and \Answered.
        r = store(c.nodes[0], usr, "-FLAGS ($k2 \\Answered)")
        R.check("node 1: -FLAGS ($k2 \\Answered) OK", r.ok, r)
    finally:
        heal(c)
    t, views = wait_until(lambda: converged(c.nodes, usr, lambda u, f: f == []), HEAL)
    R.check("after the heal node 1's later no-op clear of $k2 holds everywhere, within "
            "%.0f s" % HEAL, t is not None, views)
    if t is not None:
        print("measured: no-op clear converged %.2f s after the links were back" % t)


def t_through_resync():
    c = CLUSTER
    usr = USERS[3]
    if not prepare(c, usr, 6):
        return
    n1 = c.nodes[0]
    n1.stop()
    n1.peer_ids = set()
    n1.start()
    try:
        r = store(n1, usr, "+FLAGS (\\Seen)")
        R.check("node 1 alone: STORE +FLAGS (\\Seen) OK", r.ok, r)
        r = store(c.nodes[1], usr, "+FLAGS (\\Flagged)")
        R.check("node 2: STORE +FLAGS (\\Flagged) OK", r.ok, r)
    finally:
        n1.stop()
        n1.peer_ids = None
        n1.start()
    c.wait_links_up(timeout=40)
    t, views = wait_until(lambda: converged(c.nodes, usr,
                                            lambda u, f: f == ["\\Flagged", "\\Seen"]), HEAL)
    R.check("after node 1 rejoins every node has \\Seen and \\Flagged on all six, within "
            "%.0f s" % HEAL, t is not None, views)
    if t is not None:
        print("measured: resync path converged %.2f s after the links were back" % t)
    log = n1.log_text() + c.nodes[1].log_text() + c.nodes[2].log_text()
    R.check("a resync of the user ran (the nodes' logs say so)",
            re.search(r"resync of %s" % re.escape(usr), log) is not None)


def main():
    R.section("setup: 3 nodes behind link proxies", t_setup)
    if CLUSTER is not None:
        R.section("partition: \\Seen on node 1, \\Flagged on node 2, heal", t_issue_reproduction)
        R.section("partition: keywords added and removed on both sides", t_keywords)
        R.section("partition: the same flag set on one side, cleared later on the other",
                  t_later_change_wins)
        R.section("partition: $k2 set on node 3, a no-op clear later on node 1",
                  t_noop_clear_later)
        R.section("node 1 alone sets \\Seen, node 2 \\Flagged, the periodic check merges",
                  t_through_resync)
        CLUSTER.close()
        reps = CLUSTER.sanitizer_reports()
        R.check("no sanitizer report in the node logs", not reps, reps)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
