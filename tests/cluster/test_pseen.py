#!/usr/bin/env python3
"""Private \\Seen (SPEC.md 7.7) across real starlingd nodes (issue 16).

Three nodes, every directed peer link through a LinkProxy, each with
shared_seen = private in its config (the default, written out here).  alice owns the mailbox Team (mastered on node 1) and shares
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
  - node 3 cut off from both others while bob and carol change their
    \\Seen on both sides (the same messages too): after the heal every node
    shows, per user and message, the later change, and the dumps are equal;
    a `starling resync --full` afterwards changes nothing;
  - with both replicas stopped, a \\Seen change on the master is not
    answered until one runs again (sync_replicas = 1 counts PSEEN acks);
  - a bundle of alice (the owner) holds no PSEEN line, one of bob only
    bob's records (carol's only carol's); on a lone node, alice's bundle
    then bob's make exactly bob's \\Seen appear; bob's change there,
    carried back by a bundle into node 3, goes through Team's master and
    shows on every node;
  - alice on node 1 RENAMEs Plan, shared with bob, to Plan-2027: bob on
    nodes 2 and 3 finds it as shared/alice/Plan-2027 (not under the old
    name), with his rights and his own \\Seen, set before the rename;
  - a peer's PSEEN lines: malformed ones get BAD [ARGS] and change
    nothing; one naming a GUID the mailbox does not hold is answered OK and
    kept; the same line twice, or an older one, changes nothing.

Waits are bounded (CONVERGE seconds).  The last line is
"test-pseen: N passed, M failed".
"""
import os
import re
import sys
import threading
import time
import zlib

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
    CLUSTER = Cluster(n=3, users=USERS, proxies=True, extra_config={"shared_seen": "private"})
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


def t_sync_replicas_counts_records():
    """sync_replicas = 1 (the default): bob's \\Seen change made on the
    master (node 1) is not answered while both replicas are stopped
    (SIGSTOP, links up): the PSEEN lines wait for an acknowledgement like
    any change; it is answered once one replica runs again."""
    n1, n2, n3 = CLUSTER.nodes
    b = login(n1, "bob")
    r = b.command("SELECT", quote(SHARED))
    R.check("bob SELECTs on node 1", r.ok, r)
    done = {}

    def storer():
        try:
            done["r"] = b.command("UID", "STORE", "3", "+FLAGS", r"(\Seen)")
        except Exception as e:  # noqa: BLE001
            done["r"] = str(e)
        done["t"] = time.monotonic()

    for n in (n2, n3):
        n.pause()
    early = True
    t_resume = None
    try:
        th = threading.Thread(target=storer, daemon=True)
        th.start()
        th.join(1.0)
        early = "t" in done
        R.check("with both replicas stopped the STORE is not answered within 1 s",
                not early, done.get("r"))
        n2.resume()
        t_resume = time.monotonic()
        th.join(10)
    finally:
        for n in (n2, n3):
            n.resume()
    R.check("answered OK once one replica runs again",
            "t" in done and t_resume is not None and not isinstance(done["r"], str) and
            done["r"].ok, done.get("r"))
    if "t" in done and t_resume is not None and not early:
        print("measured: answered %.2f s after a replica resumed" % (done["t"] - t_resume))
    b.logout()
    want = {"alice": {5}, "bob": {1, 2, 3, 6}, "carol": {4, 5}}
    R.check("bob's UID 3 shows on every node",
            wait_for(lambda: not views_everywhere(want), CONVERGE) is not None,
            views_everywhere(want))


def bundle_stream(path):
    """The inflated command stream of a bundle file (SPEC.md 11.1)."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.index(b"\r\nEND\r\n") + len(b"\r\nEND\r\n")
    m = re.search(rb"\r\nBODY DEFLATE (\d+) (\d+)\r\n", data[:end])
    return zlib.decompress(data[end:end + int(m.group(1))])


def t_bundles_carry_each_users_own_records():
    """SPEC.md 7.7 "Bundles": a bundle of alice, the owner, carries no
    record; a bundle of bob carries bob's and nobody else's (carol's the
    same).  On a lone node that never linked with the cluster (same
    secret), alice's bundle brings Team without records, and bob's bundle
    then makes exactly bob's \\Seen appear there, carol's view unchanged."""
    n2 = CLUSTER.nodes[1]
    paths = {}
    for usr in ("alice", "bob", "carol"):
        p = os.path.join(CLUSTER.dir, "%s.bundle" % usr)
        r = n2.cli("bundle", "export", "-u", usr, "-o", p, timeout=120)
        R.check("starling bundle export -u %s on node 2" % usr, r.returncode == 0, r.stderr)
        paths[usr] = p
    streams = {u: bundle_stream(p) for u, p in paths.items()}
    R.check("alice's bundle holds no PSEEN line", b"PSEEN" not in streams["alice"])
    for usr, other in (("bob", "carol"), ("carol", "bob")):
        st = streams[usr]
        R.check("%s's bundle holds PSEEN-MBOX alice and %s's records" % (usr, usr),
                b" PSEEN-MBOX alice " in st and (b" PSEEN %s " % usr.encode()) in st, st[-300:])
        R.check("%s's bundle holds none of %s's or alice's" % (usr, other),
                (b" PSEEN %s " % other.encode()) not in st and b" PSEEN alice " not in st)
    want = {u: seen_uids(n2, u) for u in ("bob", "carol")}
    # A lone node writes no cluster_secret_file of its own: give it the
    # cluster's, so that it verifies the cluster's bundles.
    lone = Cluster(n=1, users=USERS, extra_config={"cluster_secret_file": CLUSTER.secret_file})
    try:
        ln = lone.nodes[0]
        ln.start()
        r = ln.cli("bundle", "import", paths["alice"], timeout=120)
        R.check("the lone node imports alice's bundle", r.returncode == 0, (r.stdout, r.stderr))
        R.check("bob sees Team there, nothing \\Seen",
                wait_for(lambda: seen_uids(ln, "bob") == set(), CONVERGE) is not None,
                seen_uids(ln, "bob"))
        r = ln.cli("bundle", "import", paths["bob"], timeout=120)
        out = ((r.stdout or b"") + (r.stderr or b"")).decode(errors="replace")
        R.check("the lone node imports bob's bundle", r.returncode == 0, out)
        R.check("its summary counts %d records applied" % len(want["bob"]),
                ("pseen %d " % len(want["bob"])) in out, out)
        took = wait_for(lambda: seen_uids(ln, "bob") == want["bob"], CONVERGE)
        R.check("bob sees his \\Seen %s on the lone node" % sorted(want["bob"] or []),
                took is not None, seen_uids(ln, "bob"))
        R.equal("carol sees nothing \\Seen there", seen_uids(ln, "carol"), set())
        R.equal("alice's own view there is her message's own \\Seen", seen_uids(ln, "alice"),
                seen_uids(n2, "alice"))
        r = ln.cli("bundle", "import", paths["bob"], timeout=120)
        R.check("the same bundle again is refused (a replay)", r.returncode != 0, r.stdout)
        # Back the other way, into node 3 (not Team's master): bob's new
        # \\Seen on the lone node becomes a change through the master
        # and shows on all three nodes; nobody else's view moves.
        fresh = sorted(set(range(1, NMSG + 1)) - want["bob"])
        R.check("a message bob has not seen is left", bool(fresh), want["bob"])
        if not fresh:
            return
        u = fresh[0]
        b = login(ln, "bob")
        R.check("bob SELECTs %s on the lone node" % SHARED, b.command("SELECT", quote(SHARED)).ok)
        r = b.command("UID", "STORE", str(u), "+FLAGS", r"(\Seen)")
        R.check("bob STOREs +FLAGS (\\Seen) on UID %d there" % u, r.ok, r)
        b.logout()
        back = os.path.join(CLUSTER.dir, "bob-back.bundle")
        r = ln.cli("bundle", "export", "-u", "bob", "-o", back, timeout=120)
        R.check("the lone node exports bob's bundle", r.returncode == 0, r.stderr)
        views = {u2: {n.node_id: seen_uids(n, u2) for n in CLUSTER.nodes}
                 for u2 in ("alice", "carol")}
        n3 = CLUSTER.nodes[2]
        r = n3.cli("bundle", "import", back, timeout=120)
        out = ((r.stdout or b"") + (r.stderr or b"")).decode(errors="replace")
        R.check("node 3 imports it, one record applied (the others restate its own)",
                r.returncode == 0 and "pseen 1 " in out, out)
        target = want["bob"] | {u}
        took = wait_for(lambda: all(seen_uids(n, "bob") == target for n in CLUSTER.nodes),
                        CONVERGE)
        R.check("bob sees UID %d \\Seen on all three nodes" % u, took is not None,
                {n.node_id: seen_uids(n, "bob") for n in CLUSTER.nodes})
        for u2 in ("alice", "carol"):
            R.equal("%s's view is unchanged on every node" % u2,
                    {n.node_id: seen_uids(n, u2) for n in CLUSTER.nodes}, views[u2])
    finally:
        lone.close()
        reps = lone.sanitizer_reports()
        R.check("no sanitizer report on the lone node", not reps, reps)


def t_append_sets_own_seen():
    """bob APPENDs with \\Seen to shared/alice/Team on node 2 (Team's master
    is node 1): the new message is \\Seen for bob on every node (his record,
    made through the master), for alice and carol on none."""
    n2 = CLUSTER.nodes[1]
    before = {u: {n.node_id: seen_uids(n, u) for n in CLUSTER.nodes}
              for u in ("alice", "bob", "carol")}
    a = login(CLUSTER.nodes[0], "alice")
    r = a.command("SETACL", "Team", "bob", "lrsi")
    R.check("alice SETACL Team bob lrsi", r.ok, r)
    a.logout()
    b = login(n2, "bob")
    # The right reaches node 2 by replication: bounded retries.
    t0 = time.monotonic()
    while True:
        r = b.command("APPEND", quote(SHARED), r"(\Seen)", Literal(message(99), plus=True))
        if r.ok or time.monotonic() - t0 > CONVERGE:
            break
        time.sleep(0.2)
    R.check("bob APPENDs with (\\Seen) on node 2", r.ok, r)
    m = re.search(rb"\[APPENDUID \d+ (\d+)\]", r.line)
    b.logout()
    uid = int(m.group(1)) if m else None
    R.check("its APPENDUID", uid is not None, r)
    if uid is None:
        return
    want_bob = {nid: (v or set()) | {uid} for nid, v in before["bob"].items()}
    took = wait_for(lambda: {n.node_id: seen_uids(n, "bob") for n in CLUSTER.nodes} == want_bob,
                    CONVERGE)
    R.check("bob sees UID %d \\Seen on every node" % uid, took is not None,
            {n.node_id: seen_uids(n, "bob") for n in CLUSTER.nodes})
    for u in ("alice", "carol"):
        R.equal("%s does not" % u, {n.node_id: seen_uids(n, u) for n in CLUSTER.nodes}, before[u])


def seen_in(node, usr, mbox):
    """The UIDs usr sees \\Seen in mbox on node, or None."""
    c = login(node, usr)
    try:
        r = c.command("EXAMINE", quote(mbox))
        if not r.ok:
            return None
        r = c.command("UID", "FETCH", "1:*", "(UID FLAGS)")
        return {int(i["UID"]) for _, i in r.fetches() if b"\\Seen" in (i.get("FLAGS") or [])}
    finally:
        c.logout()


def copyuid(r):
    """{source UID: new UID} of a COPY's COPYUID, or None."""
    m = re.search(rb"\[COPYUID \d+ ([\d:,]+) ([\d:,]+)\]", r.line)

    def uids(b):
        out = []
        for part in b.decode().split(","):
            lo, _, hi = part.partition(":")
            out += list(range(int(lo), int(hi or lo) + 1))
        return out
    return dict(zip(uids(m.group(1)), uids(m.group(2)))) if m else None


def t_copy_takes_users_seen():
    """bob on node 2 COPYs all of shared/alice/Team into his own Got: the
    copies are \\Seen exactly where bob sees \\Seen in Team (his records),
    not where alice's own flag is, on every node.  bob on node 3 COPYs Got
    back into Team: alice sees none of the new messages \\Seen (the copy's
    own \\Seen is hers, not bob's)."""
    n2, n3 = CLUSTER.nodes[1], CLUSTER.nodes[2]
    bob_team = seen_uids(n2, "bob")
    alice_team = seen_uids(n2, "alice")
    R.check("bob's and alice's \\Seen in Team differ (else the test shows nothing)",
            bob_team and bob_team != alice_team, (bob_team, alice_team))
    b = login(n2, "bob")
    R.check("bob CREATE Got on node 2", b.command("CREATE", "Got").ok)
    R.check("bob SELECT Team on node 2", b.command("SELECT", quote(SHARED)).ok)
    r = b.command("UID", "COPY", "1:*", "Got")
    R.check("bob UID COPY 1:* Got on node 2", r.ok, r)
    b.logout()
    mapping = copyuid(r) or {}
    R.check("its COPYUID", mapping, r)
    want = {mapping[u] for u in (bob_team or set()) if u in mapping}
    took = wait_for(lambda: all(seen_in(n, "bob", "Got") == want for n in CLUSTER.nodes),
                    CONVERGE)
    R.check("bob's copies in Got are \\Seen where he sees \\Seen in Team, on every node",
            took is not None, (want, {n.node_id: seen_in(n, "bob", "Got") for n in CLUSTER.nodes}))

    b = login(n3, "bob")
    ok = wait_for(lambda: b.command("SELECT", "Got").ok, CONVERGE)
    R.check("bob SELECT Got on node 3", ok is not None)
    r = b.command("UID", "COPY", "1:*", quote(SHARED))
    R.check("bob UID COPY 1:* Team on node 3", r.ok, r)
    b.logout()
    back = set((copyuid(r) or {}).values())
    R.check("its COPYUID", back, r)
    took = wait_for(lambda: back and all(back <= uids_of(n, "alice") for n in CLUSTER.nodes),
                    CONVERGE)
    R.check("bob's copies reach Team on every node", took is not None)
    for n in CLUSTER.nodes:
        R.equal("alice on node %d sees none of bob's copies \\Seen" % n.node_id,
                (seen_uids(n, "alice") or set()) & back, set())


def uids_of(node, usr):
    c = login(node, usr)
    try:
        c.command("EXAMINE", quote(box(usr)))
        r = c.command("UID", "FETCH", "1:*", "(UID)")
        return {int(i["UID"]) for _, i in r.fetches()}
    finally:
        c.logout()


def shared_listed(node, usr):
    """The names usr's LIST "" shared/alice/* gives on node."""
    c = login(node, usr)
    try:
        r = c.command("LIST", '""', quote("shared/alice/*"))
        out = set()
        for line in r.untagged:
            m = re.match(rb'\* LIST \([^)]*\) "/" "?([^"]*)"?$', line)
            if m:
                out.add(m.group(1).decode())
        return out
    finally:
        c.logout()


def t_rename_keeps_sharing():
    """alice on node 1 RENAMEs Plan, shared with bob, to Plan-2027: bob on
    node 2 (and node 3) finds it under shared/alice/Plan-2027 and no longer
    under the old name, with the same rights, and his own \Seen (set on
    node 2 before the rename) is still his and only his there; alice's
    dumps are equal on the three nodes."""
    n1, n2 = CLUSTER.nodes[0], CLUSTER.nodes[1]
    old, new = "shared/alice/Plan", "shared/alice/Plan-2027"
    a = login(n1, "alice")
    R.check("alice CREATE Plan on node 1", a.command("CREATE", "Plan").ok)
    for i in range(1, 5):
        r = a.command("APPEND", "Plan", Literal(message(100 + i), plus=True))
        R.check("alice APPENDs message %d to Plan" % i, r.ok, r)
    r = a.command("SETACL", "Plan", "bob", "lrs")
    R.check("alice SETACL Plan bob lrs on node 1", r.ok, r)
    a.logout()
    R.check("bob on node 2 sees %s" % old,
            wait_for(lambda: seen_in(n2, "bob", old) == set(), CONVERGE) is not None)
    b = login(n2, "bob")
    R.check("bob SELECT %s on node 2" % old, b.command("SELECT", quote(old)).ok)
    r = b.command("UID", "STORE", "1,3", "+FLAGS", "(\\Seen)")
    R.check("bob UID STORE 1,3 +FLAGS (\\Seen) on node 2", r.ok, r)
    b.logout()
    took = wait_for(lambda: all(seen_in(n, "bob", old) == {1, 3} for n in CLUSTER.nodes),
                    CONVERGE)
    R.check("bob's \\Seen {1, 3} in Plan on every node before the rename", took is not None,
            {n.node_id: seen_in(n, "bob", old) for n in CLUSTER.nodes})

    a = login(n1, "alice")
    r = a.command("RENAME", "Plan", "Plan-2027")
    R.check("alice RENAME Plan Plan-2027 on node 1", r.ok, r)
    a.logout()
    for n in CLUSTER.nodes[1:]:
        took = wait_for(lambda: shared_listed(n, "bob") >= {"shared/alice/Plan-2027"} and
                        "shared/alice/Plan" not in shared_listed(n, "bob"), CONVERGE)
        R.check("bob's LIST on node %d has %s, not %s" % (n.node_id, new, old),
                took is not None, shared_listed(n, "bob"))
        R.equal("bob's \\Seen in %s on node %d survived the rename" % (new, n.node_id),
                seen_in(n, "bob", new), {1, 3})
        R.equal("alice's own \\Seen in Plan-2027 on node %d is untouched" % n.node_id,
                seen_in(n, "alice", "Plan-2027"), set())
        b = login(n, "bob")
        r = b.command("MYRIGHTS", quote(new))
        R.check("bob's MYRIGHTS %s on node %d is still lrs" % (new, n.node_id),
                r.ok and b"MYRIGHTS" in b"".join(r.untagged) and
                b"".join(r.untagged).split()[-1] == b"lrs", r.untagged)
        r = b.command("SELECT", quote(old))
        R.check("bob SELECT %s on node %d: NO, the name is gone" % (old, n.node_id),
                r.status == "NO", r)
        b.logout()
    took, d = wait_dumps_equal("alice")
    R.check("alice's dumps equal on the three nodes after the rename", took is not None,
            {k: v[-300:] for k, v in d.items()})


def t_hostile_peer():
    """Node 2 of a second cluster alone, node 1 played by a Python peer
    (tests/harness/peerwire.py) as its root and the mailbox's master: it
    creates alice's Team there, saves a message, then streams PSEEN lines.
    Malformed ones get BAD [ARGS] and change nothing; a valid one is applied
    once; an older one and a replay change nothing; one naming a GUID the
    mailbox does not hold is kept (its SAVE may be on its way)."""
    c = Cluster(n=2, users=USERS, extra_config={"sync_replicas": 0})
    p = None
    try:
        n2 = c.nodes[1]
        n2.start()
        with open(c.secret_file, "rb") as f:
            secret = f.read().rstrip(b"\n")
        p = PyPeer(n2.repl_port, 1, secret)
        R.check("the peer authenticates", p.auth().startswith("C1 OK"))
        R.check("node 2 takes the peer as its root", p.play_root(2, timeout=15))
        e = p.epoch
        g = "0123456789abcdef0123456789abcd11"
        mg = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa01"
        other = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb02"
        uv = 1700000011
        r = p.command("CREATE alice Team %s %d ORIGIN 1" % (g, uv))
        R.check("CREATE alice Team from the peer: OK", r[-1].split()[1] == "OK", r)
        r = p.command("MBOX 1 alice Team %d %s" % (uv, g))
        R.check("MBOX: OK", r[-1].split()[1] == "OK", r)
        r = p.command("SELECT 1")
        R.check("SELECT: OK", r[-1].split()[1] == "OK", r)
        text = "Subject: x\r\n\r\nbody\r\n"
        r = p.command("SAVE 1700000000+0000 1 1 %s () {%d}\r\n%s ORIGIN 1 EPOCH %d"
                      % (mg, len(text), text, e))
        R.check("SAVE of UID 1 at modseq 1: OK", r[-1].split()[1] == "OK", r)
        before = n2.dump("alice")
        bad = [
            "PSEEN .public %s 1 2 1000 ORIGIN 1 EPOCH %d" % (mg, e),
            "PSEEN b/ob %s 1 2 1000 ORIGIN 1 EPOCH %d" % (mg, e),
            "PSEEN %s %s 1 2 1000 ORIGIN 1 EPOCH %d" % ("b" * 256, mg, e),
            "PSEEN bob %s 2 2 1000 ORIGIN 1 EPOCH %d" % (mg, e),
            "PSEEN bob %s 1 0 1000 ORIGIN 1 EPOCH %d" % (mg, e),
            "PSEEN bob 00000000000000000000000000000000 1 2 1000 ORIGIN 1 EPOCH %d" % e,
        ]
        for line in bad:
            r = p.command(line)
            R.check("BAD [ARGS]: %s" % line[:60], r[-1].split()[1:3] == ["BAD", "[ARGS]"], r)
        # Lines the command table refuses are not taken for live changes
        # (no valid ORIGIN): the sync end refuses them, BAD too.
        for line in ("PSEEN bob %s 1 2 1000 ORIGIN 1 EPOCH %d" % (mg[:-1], e),
                     "PSEEN bob %s 1 2 ORIGIN 1 EPOCH %d" % (mg, e),
                     "PSEEN bob %s 1 2 1000 GUIDS (%s) ORIGIN 1 EPOCH %d" % (mg, mg, e)):
            r = p.command(line)
            R.check("BAD: %s" % line[:60], r[-1].split()[1] == "BAD", r)
        r = p.command("PSEEN bob %s 1 2 1000" % mg)
        R.check("a PSEEN outside a sync without ORIGIN: BAD", r[-1].split()[1] == "BAD", r)
        r = p.command("PSEEN bob %s 1 4611686018427387904 1000 ORIGIN 1 EPOCH %d" % (mg, e))
        R.check("a modseq past the limits: NO [LIMIT]",
                r[-1].split()[1:3] == ["NO", "[LIMIT]"], r)
        R.check("nothing was changed by them", n2.dump("alice") == before)
        r = p.command("PSEEN bob %s 1 2 1000 ORIGIN 1 EPOCH %d" % (mg, e))
        R.check("a valid PSEEN: OK", r[-1].split()[1] == "OK", r)
        want = "pseen Team guid=%s user=bob seen=1 time=1000" % mg
        d1 = n2.dump("alice")
        R.check("the record is held", want in d1, d1)
        r = p.command("PSEEN bob %s 1 2 1000 ORIGIN 1 EPOCH %d" % (mg, e))
        R.check("the same line again: OK, nothing changes",
                r[-1].split()[1] == "OK" and n2.dump("alice") == d1, r)
        r = p.command("PSEEN bob %s 0 1 900 ORIGIN 1 EPOCH %d" % (mg, e))
        R.check("an older record (lower modseq): OK, nothing changes",
                r[-1].split()[1] == "OK" and n2.dump("alice") == d1, r)
        r = p.command("PSEEN carol %s 1 3 1100 ORIGIN 1 EPOCH %d" % (other, e))
        R.check("a record of a GUID the mailbox does not hold: OK",
                r[-1].split()[1] == "OK", r)
        d2 = n2.dump("alice")
        R.check("... and kept", "guid=%s user=carol seen=1" % other in d2, d2)
        R.check("node 2 still runs", n2.running())
    finally:
        if p is not None:
            p.close()
        c.close()
        reps = c.sanitizer_reports()
        R.check("no sanitizer report in the hostile-peer cluster", not reps, reps)


SECTIONS = [
    ("setup", t_setup),
    ("each their own", t_each_their_own),
    ("a clear on another node", t_clear_elsewhere),
    ("condstore", t_condstore),
    ("partition and heal", t_partition_and_heal),
    ("full resync", t_full_resync),
    ("sync_replicas counts the records' acknowledgements", t_sync_replicas_counts_records),
    ("bundles carry each user's own records", t_bundles_carry_each_users_own_records),
    ("an APPEND sets the appender's own \\Seen", t_append_sets_own_seen),
    ("a COPY takes the \\Seen the user sees", t_copy_takes_users_seen),
    ("a RENAME on node 1 keeps bob's share and \\Seen on node 2", t_rename_keeps_sharing),
    ("a hostile peer's PSEEN lines", t_hostile_peer),
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
