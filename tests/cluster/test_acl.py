#!/usr/bin/env python3
"""Shared mailboxes and IMAP ACLs across real starlingd nodes (issue 16).

Three nodes, every directed peer link through a LinkProxy; the whole run
twice, with master_granularity = mailbox (the default) and = user.  alice owns
the mailbox Team; bob and carol reach it as shared/alice/Team.  Checked
here, through IMAP and `starling dump` only:

  - alice shares Team with bob on node 1; bob on node 2 sees it in LIST,
    SELECTs it, APPENDs and STOREs there; alice on node 1 sees his message
    and flags;
  - alice on node 1 and bob on node 2 APPEND to Team at once: every OK'd
    message is on every node exactly once, at the UID its APPENDUID named
    (one UID sequence), and alice's dumps are identical on the three nodes;
  - bob on node 3 MOVEs a message of his into Team and COPYs one of
    alice's into his INBOX: both users' dumps end identical everywhere,
    each message once where it belongs;
  - a revocation made on node 2 (SETACL bob lr, then DELETEACL bob) is
    enforced in bob's session on node 1, selected all along: STORE then
    NO [NOPERM], then FETCH answered as for a missing mailbox and Team gone
    from his LIST (the delays are printed);
  - carol, with no right, sees nothing of Team on any node and gets the
    answer of a missing mailbox;
  - a public mailbox made on node 1, its ACL set on node 2, written by bob
    on node 2 and read by carol on node 3;
  - a grant made while node 3 is cut off from both others reaches node 3
    after the heal;
  - two nodes that differ only in an ACL record (written past the log into
    a stopped node's store by the test tool cluster/acl-put): the periodic
    check notices and a resync repairs it;
  - a peer's malformed ACL-PUTs (unknown right, bad identifier, another
    owner than the mailbox's, bounds) are refused and change nothing;
    valid ones merge by time.

Waits are bounded (CONVERGE seconds).  The last line is
"test-acl: N passed, M failed".
"""
import os
import re
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness.imapwire import Client, Literal, quote  # noqa: E402
from harness.peerwire import PyPeer  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-acl")
USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
CONVERGE = 20.0
CATCH_UP = 40.0
CLUSTER = None
SHARED = "shared/alice/Team"


def login(node, usr, timeout=30.0):
    c = Client(node.host, node.imap_port, timeout=timeout)
    r = c.login(usr, USERS[usr])
    if not r.ok:
        raise RuntimeError("login %s on node %d: %r" % (usr, node.node_id, r))
    return c


def message(tag, i):
    return ("From: t@example.com\r\nTo: u@example.com\r\nSubject: %s %d\r\n"
            "Message-ID: <%s.%d@acl.example.com>\r\n\r\nbody %s %d\r\n"
            % (tag, i, tag, i, tag, i)).encode()


def append(c, mailbox, data):
    """(ok, uid or None, response)"""
    r = c.command("APPEND", quote(mailbox), Literal(data, plus=True))
    uid = None
    if r.ok and r.code == "APPENDUID" and r.code_args:
        parts = r.code_args.split()
        if len(parts) == 2 and parts[1].isdigit():
            uid = int(parts[1])
    return r.ok, uid, r


def wait_for(pred, timeout):
    """Polls pred() until true; seconds it took, or None."""
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 >= timeout:
            return None
        time.sleep(0.1)


def lists(c, name):
    r = c.command("LIST", '""', '"shared/*"')
    return any(name.encode() in u for u in r.untagged)


def message_ids(node, usr, mailbox):
    """{Message-ID: [uids]} of the mailbox on node, over IMAP."""
    c = login(node, usr)
    try:
        r = c.command("EXAMINE", quote(mailbox))
        if not r.ok:
            raise RuntimeError("EXAMINE %s on node %d: %r" % (mailbox, node.node_id, r))
        out = {}
        if not r.number("EXISTS"):
            return out
        r = c.command("UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        for line in r.untagged:
            if b" FETCH " not in line[:30]:
                continue
            mu = re.search(rb"UID (\d+)", line)
            mm = re.search(rb"Message-ID: (<[^>\r\n]*>)", line, re.I)
            if mu and mm:
                out.setdefault(mm.group(1).decode(), []).append(int(mu.group(1)))
        return out
    finally:
        c.logout()


def wait_dumps_equal(nodes, usr, timeout=CONVERGE):
    t0 = time.monotonic()
    while True:
        d = {}
        for n in nodes:
            try:
                d[n.node_id] = n.dump(usr, timeout=30)
            except Exception as e:  # noqa: BLE001 -- a node that cannot answer
                d[n.node_id] = "ERROR %s" % e
        vals = list(d.values())
        if all(v == vals[0] for v in vals) and not vals[0].startswith("ERROR"):
            return time.monotonic() - t0, d
        if time.monotonic() - t0 >= timeout:
            return None, d
        time.sleep(0.2)


def t_setup(granularity):
    global CLUSTER
    CLUSTER = Cluster(n=3, users=USERS, proxies=True,
                      extra_config={"master_granularity": granularity})
    CLUSTER.start_all()
    took = CLUSTER.wait_links_up(timeout=40)  # raises when they do not
    R.check("the three nodes link up", took >= 0)


def t_share_and_use():
    n1, n2 = CLUSTER.nodes[0], CLUSTER.nodes[1]
    a = login(n1, "alice")
    R.check("alice CREATE Team on node 1", a.command("CREATE", "Team").ok)
    ok, _, r = append(a, "Team", message("alice", 0))
    R.check("alice APPENDs to Team on node 1", ok, r)
    r = a.command("SETACL", "Team", "bob", "lrswite")
    R.check("alice SETACL Team bob lrswite on node 1", r.ok, r)
    b = login(n2, "bob")
    took = wait_for(lambda: lists(b, SHARED), CONVERGE)
    print("measured: the share showed in bob's LIST on node 2 after %s s" %
          ("%.2f" % took if took is not None else "never"))
    R.check("bob on node 2 lists %s within %.0f s" % (SHARED, CONVERGE), took is not None)
    r = b.command("MYRIGHTS", SHARED)
    R.check("bob's MYRIGHTS on node 2 is lrswite, shown with the virtual d (RFC 4314 2.1.1)",
            r.ok and b"".join(r.untagged).split()[-1] == b"lrswited", r.untagged)
    r = b.command("SELECT", SHARED)
    R.check("bob SELECTs it on node 2, READ-WRITE", r.ok and r.code == "READ-WRITE", r)
    ok, uid, r = append(b, SHARED, message("bob", 0))
    R.check("bob APPENDs to it on node 2 (APPENDUID)", ok and uid is not None, r)
    b.command("NOOP")
    r = b.command("UID", "STORE", "1", "+FLAGS", r"(\Flagged)")
    R.check("bob STOREs \\Flagged on alice's message on node 2", r.ok, r)
    a.command("SELECT", "Team")

    def alice_sees():
        r = a.command("UID", "FETCH", "1:*", "(FLAGS)")
        f = r.fetches()
        return len(f) == 2 and b"\\Flagged" in (f[0][1].get("FLAGS") or [])
    took = wait_for(alice_sees, CONVERGE)
    R.check("alice on node 1 sees bob's message and flag within %.0f s" % CONVERGE,
            took is not None)
    a.logout()
    b.logout()


def t_concurrent_writers():
    n1, n2 = CLUSTER.nodes[0], CLUSTER.nodes[1]
    per = 15
    oks = {}
    errors = []

    def writer(node, usr, box, tag):
        try:
            c = login(node, usr)
            for i in range(per):
                ok, uid, r = append(c, box, message(tag, i))
                if ok:
                    oks["<%s.%d@acl.example.com>" % (tag, i)] = uid
                else:
                    errors.append((tag, i, r))
            c.logout()
        except Exception as e:  # noqa: BLE001
            errors.append((tag, "session", e))
    threads = [threading.Thread(target=writer, args=(n1, "alice", "Team", "wa")),
               threading.Thread(target=writer, args=(n2, "bob", SHARED, "wb"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    R.check("both writers finished", not any(t.is_alive() for t in threads))
    R.equal("every APPEND of both users was OK", len(oks), 2 * per)
    R.check("no error", not errors, errors[:3])
    uids = [u for u in oks.values() if u is not None]
    R.equal("the APPENDUIDs of both users are distinct (one UID sequence)",
            len(set(uids)), len(uids))
    took, d = wait_dumps_equal(CLUSTER.nodes, "alice")
    print("measured: alice's dumps equal on 3 nodes %s s after the writers ended" %
          ("%.2f" % took if took is not None else "never"))
    R.check("alice's dumps are identical on the three nodes", took is not None,
            {k: v[:400] for k, v in d.items()})
    for n in CLUSTER.nodes:
        ids = message_ids(n, "alice", "Team")
        dup = {k: v for k, v in ids.items() if len(v) != 1}
        R.check("node %d: no message twice in Team" % n.node_id, not dup, dup)
        wrong = {k: (ids.get(k), u) for k, u in oks.items() if ids.get(k) != [u]}
        R.check("node %d: every OK'd message at the UID its APPENDUID named" % n.node_id,
                not wrong, list(wrong.items())[:3])


def t_copy_between_users():
    """bob on node 3 MOVEs one of his messages into alice's Team and COPYs
    one of hers into his INBOX: each half goes to its own mailbox's
    master, written as its owner's."""
    n3 = CLUSTER.nodes[2]
    b = login(n3, "bob")
    ok, _, r = append(b, "INBOX", message("bobmove", 0))
    R.check("bob APPENDs to his INBOX on node 3", ok, r)
    b.command("SELECT", "INBOX")
    r = b.command("UID", "SEARCH", "HEADER", "Message-ID", '"bobmove.0"')
    uids = r.search()[0]
    R.check("... and finds it", len(uids) == 1, r.untagged)
    r = b.command("UID", "MOVE", str(uids[-1] if uids else 0), SHARED)
    R.check("bob MOVEs it into %s on node 3" % SHARED, r.ok, r)
    r = b.command("SELECT", SHARED)
    R.check("bob SELECTs %s on node 3" % SHARED, r.ok, r)
    r = b.command("UID", "SEARCH", "HEADER", "Message-ID", '"alice.0"')
    uids = r.search()[0]
    r = b.command("UID", "COPY", str(uids[-1] if uids else 0), "INBOX")
    R.check("bob COPYs alice's first message into his INBOX on node 3",
            r.ok and r.code == "COPYUID", r)
    b.logout()
    for usr in ("alice", "bob"):
        took, d = wait_dumps_equal(CLUSTER.nodes, usr)
        R.check("%s's dumps identical on the three nodes after the COPY and MOVE" % usr,
                took is not None, {k: v[:300] for k, v in d.items()})
    for n in CLUSTER.nodes:
        team = message_ids(n, "alice", "Team")
        inbox = message_ids(n, "bob", "INBOX")
        R.check("node %d: the moved message is once in alice's Team" % n.node_id,
                len(team.get("<bobmove.0@acl.example.com>", [])) == 1, sorted(team)[:5])
        R.check("node %d: ... and no longer in bob's INBOX" % n.node_id,
                "<bobmove.0@acl.example.com>" not in inbox, sorted(inbox))
        R.check("node %d: alice's message is in bob's INBOX and still in Team" % n.node_id,
                len(inbox.get("<alice.0@acl.example.com>", [])) == 1 and
                len(team.get("<alice.0@acl.example.com>", [])) == 1, (sorted(inbox), sorted(team)[:5]))


def t_revocation_across_nodes():
    n1, n2 = CLUSTER.nodes[0], CLUSTER.nodes[1]
    b = login(n1, "bob")
    r = b.command("SELECT", SHARED)
    R.check("bob SELECTs %s on node 1" % SHARED, r.ok, r)
    a = login(n2, "alice")
    r = a.command("SETACL", "Team", "bob", "lr")
    R.check("alice SETACL Team bob lr on node 2", r.ok, r)
    t0 = time.monotonic()
    res = {}

    def refused():
        res["r"] = b.command("UID", "STORE", "1", "+FLAGS", r"(\Answered)")
        return res["r"].status == "NO"
    took = wait_for(refused, CONVERGE)
    print("measured: -w made on node 2 enforced on node 1 after %s s" %
          ("%.2f" % took if took is not None else "never"))
    R.check("bob's STORE on node 1 is refused within %.0f s" % CONVERGE, took is not None,
            res.get("r"))
    R.check("... with NO [NOPERM] (he still has l)",
            res.get("r") is not None and res["r"].code == "NOPERM", res.get("r"))
    r = b.command("UID", "FETCH", "1", "(FLAGS)")
    R.check("... while FETCH (r kept) still works", r.ok, r)
    r = a.command("DELETEACL", "Team", "bob")
    R.check("alice DELETEACL Team bob on node 2", r.ok, r)

    def gone():
        res["f"] = b.command("UID", "FETCH", "1", "(FLAGS)")
        return res["f"].status == "NO"
    took = wait_for(gone, CONVERGE)
    print("measured: DELETEACL made on node 2 enforced on node 1 after %s s" %
          ("%.2f" % took if took is not None else "never"))
    R.check("bob's FETCH on node 1 is refused within %.0f s" % CONVERGE, took is not None,
            res.get("f"))
    R.check("... as for a missing mailbox (NO [NONEXISTENT])",
            res.get("f") is not None and res["f"].code == "NONEXISTENT", res.get("f"))
    R.check("... and Team left bob's LIST on node 1", not lists(b, SHARED))
    r = b.command("APPEND", SHARED, Literal(message("late", 0), plus=True))
    R.check("... and his APPEND is NO [TRYCREATE] like a missing mailbox's",
            r.status == "NO" and r.code == "TRYCREATE", r)
    t_total = time.monotonic() - t0
    print("measured: revocation section %.2f s" % t_total)
    a.logout()
    b.logout()


def t_no_rights_sees_nothing():
    for n in CLUSTER.nodes:
        c = login(n, "carol")
        R.check("carol on node %d: no shared/alice/Team in LIST" % n.node_id,
                not lists(c, "shared/alice"))
        hidden = c.command("SELECT", SHARED)
        missing = c.command("SELECT", "shared/alice/NoSuch")
        R.check("carol on node %d: SELECT Team answers like a missing mailbox" % n.node_id,
                hidden.status == "NO" and
                hidden.line.split(b" ", 1)[1] == missing.line.split(b" ", 1)[1],
                (hidden, missing))
        c.logout()


def t_grant_during_partition():
    n1, n3 = CLUSTER.nodes[0], CLUSTER.nodes[2]
    for other in (1, 2):
        CLUSTER.cut(3, other)
        CLUSTER.cut(other, 3)
    a = login(n1, "alice")
    r = a.command("SETACL", "Team", "carol", "lr")
    R.check("alice SETACL Team carol lr on node 1 while node 3 is cut off", r.ok, r)
    c3 = login(n3, "carol")
    R.check("carol on the cut-off node 3 does not see it yet", not lists(c3, SHARED))
    for other in (1, 2):
        CLUSTER.restore(3, other)
        CLUSTER.restore(other, 3)
    took = wait_for(lambda: lists(c3, SHARED), CATCH_UP)
    print("measured: a grant made during the partition showed on node 3 %s s after the heal"
          % ("%.2f" % took if took is not None else "never"))
    R.check("after the heal carol on node 3 lists %s within %.0f s" % (SHARED, CATCH_UP),
            took is not None)
    r = c3.command("EXAMINE", SHARED)
    R.check("... and EXAMINEs it there", r.ok, r)
    a.logout()
    c3.logout()


def run(granularity):
    global CLUSTER
    CLUSTER = None
    R.section("setup: 3 nodes, links through proxies, master_granularity = %s" % granularity,
              t_setup, granularity)
    if CLUSTER is not None:
        for name, func in (
                ("share on node 1, use on node 2", t_share_and_use),
                ("two users on two nodes write one shared mailbox", t_concurrent_writers),
                ("COPY and MOVE between two users' mailboxes", t_copy_between_users),
                ("a revocation on node 2 is enforced on node 1", t_revocation_across_nodes),
                ("a user without rights sees nothing", t_no_rights_sees_nothing),
                ("a public mailbox across nodes", t_public_across_nodes),
                ("a grant during a partition arrives after the heal",
                 t_grant_during_partition)):
            R.section("%s (%s)" % (name, granularity), func)
        CLUSTER.close()
        reps = CLUSTER.sanitizer_reports()
        R.check("no sanitizer report in the node logs", not reps, reps)


def t_public_across_nodes():
    """A public mailbox made on node 1 (`starling mailbox create --public`),
    its ACL set on node 2, bob APPENDs on node 2, carol reads on node 3."""
    n1, n2, n3 = CLUSTER.nodes
    r = n1.cli("mailbox", "create", "--public", "Board")
    R.check("mailbox create --public Board on node 1", r.returncode == 0, r.stderr)
    r = n2.cli("acl", "set", "-m", "Public/Board", "bob", "lrswi")
    R.check("acl set -m Public/Board bob lrswi on node 2", r.returncode == 0, r.stderr)
    r = n2.cli("acl", "set", "-m", "Public/Board", "authenticated", "lr")
    R.check("acl set -m Public/Board authenticated lr on node 2", r.returncode == 0, r.stderr)
    b = login(n2, "bob")
    ok, uid, r = append(b, "Public/Board", message("board", 0))
    R.check("bob APPENDs to Public/Board on node 2", ok and uid is not None, r)
    b.logout()
    c = login(n3, "carol")

    def carol_reads():
        r = c.command("EXAMINE", "Public/Board")
        return r.ok and r.number("EXISTS") == 1
    took = wait_for(carol_reads, CONVERGE)
    R.check("carol on node 3 EXAMINEs Public/Board with bob's message within %.0f s"
            % CONVERGE, took is not None)
    r = c.command("APPEND", "Public/Board", Literal(message("carol", 0), plus=True))
    R.check("carol's APPEND on node 3 (no i): NO [NOPERM]",
            r.status == "NO" and r.code == "NOPERM", r)
    c.logout()
    took, d = wait_dumps_equal(CLUSTER.nodes, ".public")
    R.check("the public mailboxes' dumps are identical on the three nodes", took is not None,
            {k: v[:300] for k, v in d.items()})


def t_check_repairs_acls():
    """Two nodes that differ in an ACL record only (written into node 2's
    store past the log while it was stopped): the periodic check sees it
    and a resync carries the record to node 1."""
    build = os.environ.get("top_builddir")
    tool = os.path.join(build, "tests", "cluster", "acl-put") if build else None
    R.check("the acl-put test tool is built (make -C tests cluster/acl-put)",
            tool is not None and os.path.exists(tool), tool)
    if tool is None or not os.path.exists(tool):
        return
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0.5"
    try:
        c = Cluster(n=2, users=USERS)
        c.start_all()
    finally:
        del os.environ["STARLING_SYNC_CHECK_INTERVAL"]
    try:
        c.wait_links_up(timeout=40)
        n1, n2 = c.nodes
        a = login(n1, "alice")
        R.check("alice CREATE Quiet on node 1", a.command("CREATE", "Quiet").ok)
        a.logout()
        took, _ = wait_dumps_equal(c.nodes, "alice")
        R.check("Quiet is on both nodes", took is not None)
        n2.stop()
        p = subprocess.run([tool, os.path.join(n2.data_dir, "store"), "alice", "Quiet", "carol",
                            "lr", str(int(time.time() * 1000))], capture_output=True, timeout=60)
        R.check("acl-put wrote carol's record into node 2's store", p.returncode == 0, p.stderr)
        n2.start()
        c.wait_links_up(timeout=40)
        c1 = login(n1, "carol")
        took = wait_for(lambda: lists(c1, "shared/alice/Quiet"), CONVERGE)
        print("measured: the periodic check (every 0.5 s) carried an ACL-only difference to "
              "node 1 in %s s" % ("%.2f" % took if took is not None else "never"))
        R.check("carol on node 1 lists shared/alice/Quiet within %.0f s" % CONVERGE,
                took is not None)
        c1.logout()
    finally:
        c.close()
        reps = c.sanitizer_reports()
        R.check("no sanitizer report in the node logs", not reps, reps)


def t_hostile_peer():
    """Node 2 alone, node 1 played by a Python peer: malformed ACL-PUTs are
    refused (BAD; NO for a resync's record naming another owner) and change
    nothing; valid ones merge by time."""
    c = Cluster(n=2, users=USERS, extra_config={"sync_replicas": 0})
    try:
        n2 = c.nodes[1]
        n2.start()
        a = login(n2, "alice")
        R.check("alice CREATE Team on node 2", a.command("CREATE", "Team").ok)
        a.logout()
        m = re.search(r"^mailbox Team guid=([0-9a-f]{32})", n2.dump("alice"), re.M)
        R.check("Team's GUID from the dump", m is not None)
        if m is None:
            return
        g = m.group(1)
        with open(c.secret_file, "rb") as f:
            secret = f.read().rstrip(b"\n")
        p = PyPeer(n2.repl_port, 1, secret)
        R.check("the peer authenticates", p.auth().startswith("C1 OK"))
        now = int(time.time() * 1000)
        bad = [
            "ACL-PUT alice %s bob lrz %d ORIGIN 1" % (g, now),
            "ACL-PUT alice %s bo/b lr %d ORIGIN 1" % (g, now),
            "ACL-PUT alice %s .hidden lr %d ORIGIN 1" % (g, now),
            "ACL-PUT alice %s - lr %d ORIGIN 1" % (g, now),
            'ACL-PUT alice %s "" lr %d ORIGIN 1' % (g, now),
            "ACL-PUT -alice %s bob lr %d ORIGIN 1" % (g, now),
            "ACL-PUT mallory %s bob lra %d ORIGIN 1" % (g, now),
            "ACL-PUT alice %s bob %s %d ORIGIN 1" % (g, "l" * 100, now),
            "ACL-PUT alice %s %s lr %d ORIGIN 1" % (g, "b" * 300, now),
            "ACL-PUT alice %s bob lr soon ORIGIN 1" % g,
            "ACL-PUT alice %s bob lr ORIGIN 1" % g,
            "ACL-PUT alice nothex bob lr %d ORIGIN 1" % now,
            "ACL-PUT alice %s bob lrz %d" % (g, now),           # as a sync's
            "ACL-PUT mallory %s bob lra %d" % (g, now),
        ]
        for line in bad:
            r = p.command(line)
            R.check("refused (BAD or NO): %s" % line[:70], r[-1].split()[1] in ("BAD", "NO"), r)
        b = login(n2, "bob")
        r = b.command("MYRIGHTS", SHARED)
        R.check("nothing was stored: bob has no rights on Team", r.status == "NO", r)
        r = p.command("ACL-PUT alice %s bob lr %d ORIGIN 1" % (g, now))
        R.check("a valid ACL-PUT: OK", r[-1].split()[1] == "OK", r)
        r = b.command("MYRIGHTS", SHARED)
        R.check("bob has lr on Team",
                r.ok and b"".join(r.untagged).split()[-1] == b"lr", r.untagged)
        r = p.command("ACL-PUT alice %s bob lrswi %d ORIGIN 1" % (g, now - 1000))
        R.check("an older one: OK", r[-1].split()[1] == "OK", r)
        r = b.command("MYRIGHTS", SHARED)
        R.check("and ignored", r.ok and b" lr\r" in b"\r".join(r.untagged + [b""]), r.untagged)
        r = p.command('ACL-PUT alice %s bob "" %d ORIGIN 1' % (g, now + 1))
        R.check("a newer tombstone: OK", r[-1].split()[1] == "OK", r)
        r = b.command("LIST", '""', '"shared/*"')
        R.check("Team left bob's LIST", not any(b"Team" in u for u in r.untagged), r.untagged)
        b.logout()
        p.close()
        R.check("node 2 still runs", n2.running())
    finally:
        c.close()
        reps = c.sanitizer_reports()
        R.check("no sanitizer report in the node logs", not reps, reps)


def main():
    # Per mailbox (the default) and per user: with masters per user, a
    # change of alice's mailbox made in bob's session must still go to
    # alice's master.
    only = os.environ.get("GRANULARITY")
    for g in ("mailbox", "user"):
        if not only or only == g:
            run(g)
    if not only:
        R.section("the periodic check repairs an ACL-only difference", t_check_repairs_acls)
        R.section("a hostile peer's ACL-PUTs", t_hostile_peer)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
