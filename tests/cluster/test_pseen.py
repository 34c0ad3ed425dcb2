#!/usr/bin/env python3
"""Private \\Seen (SPEC.md 7.7) across real starlingd nodes (issue 16).

Three nodes, every directed peer link through a LinkProxy, each started
with STARLING_TEST_PRIVATE_SEEN=1 (the key shared_seen does not accept
private yet).  alice owns the mailbox Team (mastered on node 1) and shares
it with bob and carol; each reads it on another node.  Checked through IMAP
and `starling dump` only:

  - bob on node 2 and carol on node 3 mark different messages \\Seen in
    shared/alice/Team, alice marks another in her own Team on node 1: after
    replication every one of them sees exactly their own \\Seen on every
    node (FETCH FLAGS, SEARCH UNSEEN, STATUS UNSEEN), and alice's dumps
    (which print the records) are identical on the three nodes;
  - bob clears one of his on node 3 (not where he set it): gone for bob on
    every node, nobody else's view changes;
  - a CONDSTORE session of alice sees HIGHESTMODSEQ rise with bob's change
    while her own flags stay;
  - a peer's PSEEN lines: malformed ones get BAD [ARGS] and change
    nothing; one naming a GUID the mailbox does not hold is answered OK and
    kept; the same line twice changes nothing.

Waits are bounded (CONVERGE seconds).  The last line is
"test-pseen: N passed, M failed".
"""
import os
import re
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness.imapwire import Client, Literal, quote  # noqa: E402
from harness.peerwire import PyPeer  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-pseen")
USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
CONVERGE = 20.0
CLUSTER = None
SHARED = "shared/alice/Team"
NMSG = 6
# Who marks which UIDs (the messages are UIDs 1..NMSG).
MARKS = {"alice": {5}, "bob": {1, 2}, "carol": {3, 4}}


def login(node, usr, timeout=30.0):
    c = Client(node.host, node.imap_port, timeout=timeout)
    r = c.login(usr, USERS[usr])
    if not r.ok:
        raise RuntimeError("login %s on node %d: %r" % (usr, node.node_id, r))
    return c


def box(usr):
    return "Team" if usr == "alice" else SHARED


def message(i):
    return ("From: t@example.com\r\nTo: u@example.com\r\nSubject: team %d\r\n"
            "Message-ID: <team.%d@pseen.example.com>\r\n\r\nbody %d\r\n" % (i, i, i)).encode()


def wait_for(pred, timeout):
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 >= timeout:
            return None
        time.sleep(0.1)


def seen_uids(node, usr):
    """The UIDs usr sees \\Seen in Team on node, over IMAP (EXAMINE)."""
    c = login(node, usr)
    try:
        r = c.command("EXAMINE", quote(box(usr)))
        if not r.ok:
            return None
        r = c.command("UID", "FETCH", "1:*", "(UID FLAGS)")
        out = set()
        for _, items in r.fetches():
            if b"\\Seen" in (items.get("FLAGS") or []):
                out.add(int(items["UID"]))
        return out
    finally:
        c.logout()


def unseen_search_and_status(node, usr):
    c = login(node, usr)
    try:
        r = c.command("STATUS", quote(box(usr)), "(UNSEEN)")
        m = re.search(rb"UNSEEN (\d+)", b"".join(r.untagged))
        status = int(m.group(1)) if m else None
        c.command("EXAMINE", quote(box(usr)))
        r = c.command("UID", "SEARCH", "UNSEEN")
        found = set()
        for line in r.untagged:
            if line.startswith(b"* SEARCH"):
                found |= {int(x) for x in line.split()[2:]}
        return status, found
    finally:
        c.logout()


def views_everywhere(expect):
    """{(node, user): seen set} where it differs from expect[user]."""
    bad = {}
    for n in CLUSTER.nodes:
        for usr, want in expect.items():
            got = seen_uids(n, usr)
            if got != want:
                bad[(n.node_id, usr)] = got
    return bad


def wait_dumps_equal(usr, timeout=CONVERGE):
    t0 = time.monotonic()
    d = {}
    while time.monotonic() - t0 < timeout:
        d = {}
        for n in CLUSTER.nodes:
            try:
                d[n.node_id] = n.dump(usr, timeout=30)
            except Exception as e:  # noqa: BLE001
                d[n.node_id] = "ERROR %s" % e
        vals = list(d.values())
        if all(v == vals[0] for v in vals) and not vals[0].startswith("ERROR"):
            return time.monotonic() - t0, d
        time.sleep(0.2)
    return None, d


def t_setup():
    global CLUSTER
    os.environ["STARLING_TEST_PRIVATE_SEEN"] = "1"
    CLUSTER = Cluster(n=3, users=USERS, proxies=True)
    CLUSTER.start_all()
    took = CLUSTER.wait_links_up(timeout=40)
    R.check("the three nodes link up", took >= 0)
    a = login(CLUSTER.nodes[0], "alice")
    R.check("alice CREATE Team on node 1", a.command("CREATE", "Team").ok)
    for i in range(1, NMSG + 1):
        r = a.command("APPEND", "Team", Literal(message(i), plus=True))
        R.check("alice APPENDs message %d" % i, r.ok, r)
    for usr in ("bob", "carol"):
        r = a.command("SETACL", "Team", usr, "lrs")
        R.check("alice SETACL Team %s lrs" % usr, r.ok, r)
    a.logout()
    took, d = wait_dumps_equal("alice")
    R.check("alice's Team is the same on the three nodes", took is not None, d)
    for usr, n in (("bob", 1), ("carol", 2)):
        node = CLUSTER.nodes[n]
        R.check("%s on node %d reads %s" % (usr, n + 1, SHARED),
                wait_for(lambda: seen_uids(node, usr) == set(), CONVERGE) is not None)


def t_each_their_own():
    where = {"alice": 0, "bob": 1, "carol": 2}
    for usr, uids in MARKS.items():
        c = login(CLUSTER.nodes[where[usr]], usr)
        r = c.command("SELECT", quote(box(usr)))
        R.check("%s SELECTs on node %d" % (usr, where[usr] + 1), r.ok, r)
        uidset = ",".join(str(u) for u in sorted(uids))
        r = c.command("UID", "STORE", uidset, "+FLAGS", r"(\Seen)")
        R.check("%s STOREs +FLAGS (\\Seen) on %s on node %d" % (usr, uidset, where[usr] + 1),
                r.ok, r)
        # The answer is the user's own view of the messages named.
        told = {int(i["UID"]) for _, i in r.fetches()
                if "UID" in i and b"\\Seen" in (i.get("FLAGS") or [])}
        R.equal("%s is told \\Seen on exactly the messages named" % usr, told, uids)
        c.logout()
    t0 = time.monotonic()
    took = wait_for(lambda: not views_everywhere(MARKS), CONVERGE)
    print("measured: every user's own \\Seen on every node after %s s"
          % ("%.2f" % took if took is not None else "never"))
    R.check("every user sees exactly their own \\Seen on every node within %.0f s" % CONVERGE,
            took is not None, views_everywhere(MARKS))
    for n in CLUSTER.nodes:
        for usr, uids in MARKS.items():
            status, found = unseen_search_and_status(n, usr)
            want = set(range(1, NMSG + 1)) - uids
            R.check("node %d: %s's STATUS UNSEEN is %d and SEARCH UNSEEN %s"
                    % (n.node_id, usr, len(want), sorted(want)),
                    status == len(want) and found == want, (status, found))
    took, d = wait_dumps_equal("alice")
    R.check("alice's dumps (records included) are identical on the three nodes",
            took is not None, d)
    dump = d.get(1, "")
    R.check("the dump holds bob's and carol's records",
            "bob" in dump and "carol" in dump, dump[-800:])
    del t0


def t_clear_elsewhere():
    # bob clears UID 2 on node 3, where he did not set it.
    c = login(CLUSTER.nodes[2], "bob")
    c.command("SELECT", quote(SHARED))
    r = c.command("UID", "STORE", "2", "-FLAGS", r"(\Seen)")
    R.check("bob clears \\Seen of UID 2 on node 3", r.ok, r)
    c.logout()
    want = dict(MARKS)
    want["bob"] = {1}
    took = wait_for(lambda: not views_everywhere(want), CONVERGE)
    R.check("bob's clear shows on every node, nobody else's view changes",
            took is not None, views_everywhere(want))
    took, d = wait_dumps_equal("alice")
    R.check("alice's dumps are identical after the clear", took is not None, d)


def t_condstore():
    a = login(CLUSTER.nodes[0], "alice")
    r = a.command("SELECT", "Team", "(CONDSTORE)")
    m = re.search(rb"HIGHESTMODSEQ (\d+)", b"".join(r.untagged) + r.line)
    before = int(m.group(1)) if m else None
    b = login(CLUSTER.nodes[1], "bob")
    b.command("SELECT", quote(SHARED))
    r = b.command("UID", "STORE", "6", "+FLAGS", r"(\Seen)")
    R.check("bob marks UID 6 on node 2", r.ok, r)
    b.logout()

    def risen():
        r = a.command("STATUS", "Team", "(HIGHESTMODSEQ)")
        m = re.search(rb"HIGHESTMODSEQ (\d+)", b"".join(r.untagged))
        return m is not None and before is not None and int(m.group(1)) > before
    R.check("alice's HIGHESTMODSEQ on node 1 rises with bob's change",
            wait_for(risen, CONVERGE) is not None)
    r = a.command("UID", "FETCH", "6", "(FLAGS)")
    f = r.fetches()
    R.check("alice's own view of UID 6 stays unseen",
            len(f) == 1 and b"\\Seen" not in (f[0][1].get("FLAGS") or []), r.untagged)
    a.logout()
    MARKS["bob"] = {1, 6}
    took = wait_for(lambda: not views_everywhere({"alice": {5}, "bob": {1, 6},
                                                  "carol": {3, 4}}), CONVERGE)
    R.check("views on every node after bob's third change", took is not None)


def store(node, usr, uid, op):
    c = login(node, usr)
    try:
        c.command("SELECT", quote(box(usr)))
        return c.command("UID", "STORE", str(uid), op, r"(\Seen)")
    finally:
        c.logout()


def t_partition_and_heal():
    """Node 3 cut off from both others; bob and carol change their \Seen on
    both sides, the same messages too; after the heal every node holds, per
    user and message, the later change."""
    n1, n2, n3 = CLUSTER.nodes
    for other in (1, 2):
        CLUSTER.cut(3, other)
        CLUSTER.cut(other, 3)
    steps = [
        (n3, "bob", 1, "-FLAGS"),    # older than bob's +FLAGS on node 2 below
        (n3, "bob", 2, "+FLAGS"),
        (n3, "carol", 5, "+FLAGS"),
        (n3, "carol", 6, "+FLAGS"),  # older than carol's -FLAGS on node 3 below
        (n2, "bob", 1, "+FLAGS"),
        (n1, "carol", 3, "-FLAGS"),
        (n1, "carol", 6, "+FLAGS"),
        (n3, "carol", 6, "-FLAGS"),  # the latest change of carol's UID 6
    ]
    for node, usr, uid, op in steps:
        time.sleep(0.02)  # times 20 ms apart: "later" is never a tie
        r = store(node, usr, uid, op)
        R.check("%s %s \\Seen of UID %d on node %d during the partition"
                % (usr, op, uid, node.node_id), r.ok, r)
    R.check("node 3 still shows its own side: bob has not seen UID 1 there",
            1 not in (seen_uids(n3, "bob") or set()))
    for other in (1, 2):
        CLUSTER.restore(3, other)
        CLUSTER.restore(other, 3)
    want = {"alice": {5}, "bob": {1, 2, 6}, "carol": {4, 5}}
    t0 = time.monotonic()
    took = wait_for(lambda: not views_everywhere(want), 40.0)
    print("measured: views merged on every node %s s after the heal"
          % ("%.2f" % took if took is not None else "never"))
    R.check("after the heal every node shows each user the later change per message",
            took is not None, views_everywhere(want))
    took, d = wait_dumps_equal("alice", timeout=40.0)
    R.check("alice's dumps are identical on the three nodes after the heal",
            took is not None, d)
    del t0


def t_full_resync():
    """`starling resync --full` between nodes that hold the same records
    changes nothing; the records stay and the dumps stay equal."""
    want = {"alice": {5}, "bob": {1, 2, 6}, "carol": {4, 5}}
    before = CLUSTER.nodes[0].dump("alice")
    r = CLUSTER.nodes[1].cli("resync", "-u", "alice", "--full")
    R.check("starling resync -u alice --full on node 2", r.returncode == 0,
            (r.stdout, r.stderr))
    R.check("every user's view is the same on every node after the full resync",
            not views_everywhere(want), views_everywhere(want))
    took, d = wait_dumps_equal("alice")
    R.check("dumps identical after the full resync, and as before it",
            took is not None and d.get(1) == before, d)


SECTIONS = [
    ("setup", t_setup),
    ("each their own", t_each_their_own),
    ("a clear on another node", t_clear_elsewhere),
    ("condstore", t_condstore),
    ("partition and heal", t_partition_and_heal),
    ("full resync", t_full_resync),
]


def main():
    try:
        for name, func in SECTIONS:
            R.section(name, func)
            if name == "setup" and R.failed:
                break
    finally:
        if CLUSTER is not None:
            CLUSTER.close_checked(R)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
