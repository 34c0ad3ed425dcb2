#!/usr/bin/env python3
"""Two COPYs of one message into one mailbox make two messages (SPEC.md 6.4).

A SAVE of a GUID the mailbox already holds is a resent one, and a resync
merges one GUID into one message: a copy saved under the message's GUID
could therefore vanish into another copy of it, through one master or
across a partition.  Every copy gets a GUID of its own, drawn once by the
node that took the COPY and kept by every resend of it.  Nodes of an
earlier build sent copies under the message's GUID with REQ, their
request's identity; a master still tells a resent copy (same REQ) from
another copy (a new message with a new GUID) for them.

1. Protocol: node 2 is master and alone; the Python peer, as node 1 of an
   earlier build, sends SAVEs with REQ: a resent one gets the same UID,
   another request a new message (with GUID in the answer), a SAVE
   without REQ (an older peer) the existing one, a malformed REQ
   BAD [ARGS].
2. Three real nodes: node 1 is master of "Copies", its links to nodes 2
   and 3 slowed down so neither sees the other's copy; both COPY the same
   message into Copies at once: two COPYUIDs, and every node ends with
   both messages, under different GUIDs and with the same text.
3. Three real nodes cut into {1} and {2, 3}, each side with its own master
   of the mailboxes: message A copied into Copies on both sides, message B
   copied and then moved on one side and moved on the other.  After the
   heal every node holds as many copies of each as were acknowledged (2
   of A, 3 of B, found by Message-ID) and no B in INBOX: a copy gets a GUID
   of its own where the client asked for it, so the resync keeps them
   apart (SPEC.md 6.4).  Before the heal, a bundle of node 1's side
   imported on node 2 keeps both copies of A there too.
4. The same three nodes, node 3 master of Resent: its answer to a copy
   forwarded by node 2 is lost (the link from node 3 to node 2 holds its
   bytes), so node 2 sends the copy again, through node 1: one COPY
   acknowledged, one message on every node, at the COPYUID's UID.  The
   copy's own GUID, drawn once for the request, is what the master
   recognises in the resent SAVE.

The last line is "cluster-copies: N passed, M failed".
"""
import os
import re
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness
sys.path.insert(0, HERE)

from harness import imapwire  # noqa: E402
from harness.peerwire import PyPeer  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402
from test_forwarding import command, parse_dump  # noqa: E402

R = Report("cluster-copies")
TEXT = "From: a@example.com\r\nSubject: copied\r\n\r\nthe body\r\n"


def code_of(line):
    m = re.search(r"\[([^\]]*)\]", line)
    return m.group(1).split() if m else []


def code_value(line, key):
    c = code_of(line)
    return c[c.index(key) + 1] if key in c and c.index(key) + 1 < len(c) else None


def t_protocol(c):
    n2 = c.nodes[1]
    imap = imapwire.Client(n2.host, n2.imap_port)
    R.equal("login", imap.login("alice", "pw").status, "OK")
    R.equal("CREATE Copies", imap.command("CREATE Copies").status, "OK")
    # A first write makes node 2 master of Copies.
    R.equal("APPEND to Copies", imap.command("APPEND Copies", imapwire.Literal(
        "Subject: first\r\n\r\nx\r\n")).status, "OK")
    R.equal("APPEND", imap.command("APPEND INBOX", imapwire.Literal(TEXT)).status, "OK")
    d = parse_dump(n2.dump("alice"))
    g = d["msg"][("INBOX", 1)][0]
    mguid, uidvalidity = d["mailbox"]["Copies"]

    with open(c.secret_file, "rb") as f:
        secret = f.read().rstrip(b"\n")
    p = PyPeer(n2.repl_port, 1, secret)
    R.check("the peer authenticates", p.auth().startswith("C1 OK"))
    r = command(p, "MBOX 7 alice Copies %d %s" % (uidvalidity, mguid))
    R.check("MBOX binds Copies", r[-1].split()[1] == "OK", r)
    r = command(p, "SELECT 7")
    R.check("SELECT", r[-1].split()[1] == "OK", r)
    save = "SAVE 1700000000+0000 0 0 %s () NIL" % g

    r = command(p, save + " REQ 1.100")
    R.check("a copy: OK", r[-1].split()[1] == "OK", r)
    uid1 = code_value(r[-1], "UID")
    R.equal("... with the GUID asked for (no GUID in the answer)",
            code_value(r[-1], "GUID"), None)
    r = command(p, save + " REQ 1.100")
    R.check("the same copy resent: OK", r[-1].split()[1] == "OK", r)
    R.equal("... the same UID", code_value(r[-1], "UID"), uid1)
    r = command(p, save + " REQ 1.101")
    R.check("another copy of the message: OK", r[-1].split()[1] == "OK", r)
    uid2 = code_value(r[-1], "UID")
    g2 = code_value(r[-1], "GUID")
    R.check("... a new UID", uid2 is not None and uid2 != uid1, r)
    R.check("... and a new GUID, named in the answer", g2 is not None and g2 != g, r)
    r = command(p, save + " REQ 1.101")
    R.check("that copy resent: the same UID", code_value(r[-1], "UID") == uid2, r)
    r = command(p, "SAVE 1700000000+0000 0 0 %s () NIL REQ 1.101" % g2)
    R.check("... also when it names the new GUID", code_value(r[-1], "UID") == uid2, r)
    r = command(p, save)
    R.check("without REQ (an older peer): the message there, by GUID",
            r[-1].split()[1] == "OK" and code_value(r[-1], "UID") == uid1, r)
    r = command(p, save + " REQ 7.101")
    R.check("the same number from another node: another copy",
            code_value(r[-1], "UID") not in (None, uid1, uid2), r)
    for bad in ("0.1", "1", "x.1", "1.2.3", "1.", ".5", "01.5", "4294967296.1",
                "1.18446744073709551616", "(1 2)", "1." + "1" * 40):
        r = command(p, save + " REQ " + bad)
        R.check("REQ %s: BAD [ARGS]" % bad[:20], r[-1].split()[1:3] == ["BAD", "[ARGS]"], r)
    r = command(p, save + " REQ 1.100 REQ 1.100")
    R.check("REQ twice: BAD", r[-1].split()[1] == "BAD", r)
    r = command(p, "PING")
    R.check("the link still works", r[-1].split()[1] == "OK", r)

    d = parse_dump(n2.dump("alice"))
    copies = sorted((u, gg) for (mb, u), (gg, _f) in d["msg"].items() if mb == "Copies")
    R.equal("Copies holds the first message and three copies", len(copies), 4)
    R.equal("... under four GUIDs", len(set(gg for _u, gg in copies)), 4)
    r = imap.command("SELECT Copies")
    R.equal("SELECT Copies", r.status, "OK")
    r = imap.command("UID FETCH 1:* BODY.PEEK[]")
    R.equal("... the three copies with the copied text",
            sum(1 for x in r.untagged if TEXT.encode() in x), 3)
    p.close()
    imap.close()


def master_of(node, mailbox):
    r = node.cli("master", "show", "-u", "alice", "-m", mailbox, timeout=30)
    m = re.search(r"master: (\d+)", r.stdout.decode())
    return int(m.group(1)) if m else None


def copies_on(node):
    d = parse_dump(node.dump("alice"))
    return sorted((u, g) for (mb, u), (g, _f) in d["msg"].items() if mb == "Copies")


def t_concurrent(c):
    n1, n2, n3 = c.nodes
    imap1 = imapwire.Client(n1.host, n1.imap_port)
    R.equal("login on node 1", imap1.login("alice", "pw").status, "OK")
    R.equal("CREATE Copies", imap1.command("CREATE Copies").status, "OK")
    # The first write makes node 1 master of both mailboxes.
    R.equal("APPEND to Copies", imap1.command("APPEND Copies", imapwire.Literal(
        "Subject: first\r\n\r\nx\r\n")).status, "OK")
    R.equal("APPEND to INBOX", imap1.command("APPEND INBOX", imapwire.Literal(TEXT)).status,
            "OK")
    R.equal("node 1 is master of Copies", master_of(n1, "Copies"), 1)
    R.check("every node holds the message", c.wait_dumps_equal("alice", timeout=60))
    clients = []
    for n in (n2, n3):
        m = imapwire.Client(n.host, n.imap_port)
        R.equal("login on node %d" % n.node_id, m.login("alice", "pw").status, "OK")
        R.equal("SELECT INBOX on node %d" % n.node_id, m.command("SELECT INBOX").status, "OK")
        clients.append(m)
    # Each forward takes a second to node 1, and node 1's changes a second
    # to the others: both COPYs leave before either node saw the other's.
    c.mesh.set_latency(1, 2, 1.0)
    c.mesh.set_latency(1, 3, 1.0)
    answers = [None, None]
    go = threading.Barrier(2, timeout=10)

    def copy(i):
        go.wait()
        answers[i] = clients[i].command("UID COPY 1 Copies")

    threads = [threading.Thread(target=copy, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    c.mesh.clear_latency()
    R.check("both COPYs answered OK", all(a is not None and a.ok for a in answers), answers)
    uids = [a.code_args.split()[-1] if a is not None and a.code == "COPYUID" else None
            for a in answers]
    R.check("two different COPYUIDs", None not in uids and uids[0] != uids[1], answers)
    R.check("every node converges", c.wait_dumps_equal("alice", timeout=90))
    for n in c.nodes:
        got = copies_on(n)
        R.equal("node %d holds the first message and both copies" % n.node_id, len(got), 3)
        R.equal("... under three GUIDs", len(set(g for _u, g in got)), 3)
        R.check("... the copies at the COPYUIDs",
                all(u is not None and int(u) in [x for x, _g in got] for u in uids), got)
    for n in c.nodes:
        m = imapwire.Client(n.host, n.imap_port)
        m.login("alice", "pw")
        m.command("SELECT Copies")
        r = m.command("UID FETCH 1:* BODY.PEEK[]")
        R.equal("node %d: two messages with the copied text" % n.node_id,
                sum(1 for x in r.untagged if TEXT.encode() in x), 2)
        m.close()
    for m in clients + [imap1]:
        m.close()


def msgid_text(name):
    return ("From: a@example.com\r\nMessage-ID: <%s@copies.test>\r\nSubject: %s\r\n\r\n"
            "the body of %s\r\n" % (name, name, name))


def count_msgids(node, mailbox):
    """{Message-ID local part: count} of the mailbox, through IMAP."""
    m = imapwire.Client(node.host, node.imap_port)
    try:
        m.login("alice", "pw")
        if not m.command("EXAMINE %s" % mailbox).ok:
            return None
        r = m.command("UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        out = {}
        for x in r.untagged:
            for mid in re.findall(rb"<([^@>]+)@copies\.test>", x):
                k = mid.decode()
                out[k] = out.get(k, 0) + 1
        return out
    finally:
        m.close()


def wait_for(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.3)
    return pred()


def t_partition(c):
    n1, n2, n3 = c.nodes
    imap1 = imapwire.Client(n1.host, n1.imap_port)
    R.equal("login on node 1", imap1.login("alice", "pw").status, "OK")
    R.equal("CREATE Copies", imap1.command("CREATE Copies").status, "OK")
    R.equal("APPEND to Copies", imap1.command("APPEND Copies", imapwire.Literal(
        "Subject: first\r\n\r\nx\r\n")).status, "OK")
    for name in ("a", "b"):
        R.equal("APPEND %s to INBOX" % name, imap1.command("APPEND INBOX", imapwire.Literal(
            msgid_text(name))).status, "OK")
    R.equal("node 1 is master of Copies", master_of(n1, "Copies"), 1)
    R.equal("node 1 is master of INBOX", master_of(n1, "INBOX"), 1)
    R.check("every node holds the messages", c.wait_dumps_equal("alice", timeout=60))
    for j in (2, 3):
        c.cut(1, j)
    try:
        # Side {2, 3} takes a master of its own; until it has one, a COPY
        # there is made autonomously, which is not the case under test.
        side = wait_for(lambda: master_of(n2, "Copies") in (2, 3) and
                        master_of(n2, "INBOX") in (2, 3) and
                        master_of(n3, "Copies") == master_of(n2, "Copies") and
                        master_of(n3, "INBOX") == master_of(n2, "INBOX"), 60)
        R.check("side {2, 3} has its own master of Copies and INBOX", side,
                [master_of(n, mb) for n in (n2, n3) for mb in ("Copies", "INBOX")])
        R.equal("node 1 is still master on its side", master_of(n1, "Copies"), 1)
        others = []
        for n in (n2, n3):
            m = imapwire.Client(n.host, n.imap_port)
            R.equal("login on node %d" % n.node_id, m.login("alice", "pw").status, "OK")
            R.equal("SELECT INBOX on node %d" % n.node_id, m.command("SELECT INBOX").status,
                    "OK")
            others.append(m)
        R.equal("SELECT INBOX on node 1", imap1.command("SELECT INBOX").status, "OK")
        # UID 1 is a, 2 is b (APPENDed in that order on node 1).
        acks = {"a": 0, "b": 0}
        uids = []
        for who, cl, cmd, name in ((1, imap1, "UID COPY 1 Copies", "a"),
                                   (2, others[0], "UID COPY 1 Copies", "a"),
                                   (3, others[1], "UID COPY 2 Copies", "b"),
                                   (3, others[1], "UID MOVE 2 Copies", "b"),
                                   (1, imap1, "UID MOVE 2 Copies", "b")):
            r = cl.command(cmd)
            R.check("%s on node %d: OK" % (cmd, who), r.ok, r)
            if r.ok:
                acks[name] += 1
            uids.append((who, cmd, r.code, r.code_args, r.codes().get("COPYUID")))
        print("partition answers: %r" % uids)
        for m in others:
            m.close()
        # A bundle carries node 1's side across the partition: its import
        # merges Copies by GUID as a resync does, and keeps both copies.
        path = os.path.join(c.dir, "side1.bundle")
        r = n1.cli("bundle", "export", "-u", "alice", "-o", path, timeout=120)
        R.equal("bundle export on node 1", r.returncode, 0)
        r = n2.cli("bundle", "import", path, timeout=120)
        R.equal("bundle import on node 2", r.returncode, 0)
        got = count_msgids(n2, "Copies") or {}
        R.equal("node 2 after the import: Copies holds both copies of a", got.get("a", 0),
                acks["a"])
    finally:
        for j in (2, 3):
            c.restore(1, j)
    c.wait_links_up(timeout=60)
    R.check("every node converges after the heal", c.wait_dumps_equal("alice", timeout=120))
    for n in c.nodes:
        got = count_msgids(n, "Copies") or {}
        R.equal("node %d: Copies holds both acknowledged copies of a" % n.node_id,
                got.get("a", 0), acks["a"])
        R.equal("node %d: Copies holds the three acknowledged copies of b" % n.node_id,
                got.get("b", 0), acks["b"])
        inbox = count_msgids(n, "INBOX") or {}
        R.equal("node %d: INBOX keeps a, b moved away" % n.node_id,
                (inbox.get("a", 0), inbox.get("b", 0)), (1, 0))
        d = parse_dump(n.dump("alice"))
        gs = [g for (mb, _u), (g, _f) in d["msg"].items() if mb == "Copies"]
        R.equal("node %d: every message in Copies has a GUID of its own" % n.node_id,
                len(gs), len(set(gs)))
    imap1.close()


def counter(node, key):
    v = str(node.status().get(key, ""))
    return int(v) if v.isdigit() else None


def t_resend(c):
    n1, n2, n3 = c.nodes
    # Node 3 masters Resent and node 1 is the root: node 2 can still learn
    # who the master is, and reach it through node 1, while node 3's bytes
    # to node 2 are held.
    imap3 = imapwire.Client(n3.host, n3.imap_port)
    R.equal("login on node 3", imap3.login("alice", "pw").status, "OK")
    R.equal("CREATE Resent", imap3.command("CREATE Resent").status, "OK")
    R.equal("APPEND to Resent", imap3.command("APPEND Resent", imapwire.Literal(
        "Subject: first\r\n\r\nx\r\n")).status, "OK")
    imap3.close()
    R.equal("node 3 is master of Resent", master_of(n3, "Resent"), 3)
    m = imapwire.Client(n2.host, n2.imap_port)
    R.equal("login on node 2", m.login("alice", "pw").status, "OK")
    R.equal("APPEND r to INBOX", m.command("APPEND INBOX", imapwire.Literal(
        msgid_text("r"))).status, "OK")
    # Node 2 learns the master of Resent from a write of its own.
    R.equal("APPEND to Resent on node 2", m.command("APPEND Resent", imapwire.Literal(
        "Subject: second\r\n\r\ny\r\n")).status, "OK")
    R.check("every node holds the messages", c.wait_dumps_equal("alice", timeout=60))
    R.equal("SELECT INBOX", m.command("SELECT INBOX").status, "OK")
    r = m.command("UID SEARCH HEADER Message-ID r@copies.test")
    found = [x for x in r.untagged if x.startswith(b"* SEARCH ")]
    uid = found[0].split()[2].decode() if found and len(found[0].split()) > 2 else None
    R.check("r is in INBOX", uid is not None, r)
    if uid is None:
        return
    auto0 = counter(n2, "autonomous_changes")
    relayed0 = counter(n1, "relayed_commands")
    c.mesh.hold(3, 2)
    try:
        t0 = time.monotonic()
        r = m.command("UID COPY %s Resent" % uid)
        took = time.monotonic() - t0
    finally:
        c.mesh.restore(3, 2)
    print("the COPY on node 2 took %.1f s: %s %s" % (took, r.code, r.code_args))
    R.check("the COPY answered OK", r.ok, r)
    R.check("... after its first answer was lost", took > 1.0, took)
    R.equal("... with a COPYUID", r.code, "COPYUID")
    dst = r.code_args.split()[-1] if r.code == "COPYUID" else None
    R.equal("... not made autonomously: the master answered the resent copy",
            counter(n2, "autonomous_changes"), auto0)
    relayed1 = counter(n1, "relayed_commands")
    R.check("... which went through node 1",
            None not in (relayed0, relayed1) and relayed1 > relayed0, (relayed0, relayed1))
    m.close()
    c.wait_links_up(timeout=60)
    R.check("every node converges", c.wait_dumps_equal("alice", timeout=120))
    for n in c.nodes:
        got = count_msgids(n, "Resent") or {}
        R.equal("node %d: Resent holds the one acknowledged copy of r" % n.node_id,
                got.get("r", 0), 1)
        d = parse_dump(n.dump("alice"))
        rs = [u for (mb, u), _v in d["msg"].items() if mb == "Resent"]
        R.check("node %d: ... at the COPYUID's UID" % n.node_id,
                dst is not None and int(dst) in rs, (dst, rs))


def main():
    # No periodic resync: nothing but this test's commands changes node 2.
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0"
    c = Cluster(n=2, users={"alice": "pw"}, extra_config={"sync_replicas": 0})
    try:
        c.nodes[1].start()
        R.section("REQ tells a resent copy from another copy", t_protocol, c)
        reports = c.sanitizer_reports()
        R.check("no sanitizer reports", not reports, reports)
    finally:
        c.close()
    del os.environ["STARLING_SYNC_CHECK_INTERVAL"]
    c = Cluster(n=3, users={"alice": "pw"}, extra_config={"sync_replicas": 1}, proxies=True)
    try:
        c.start_all()
        c.wait_links_up(timeout=40)
        R.section("two COPYs on two nodes at once make two messages", t_concurrent, c)
        reports = c.sanitizer_reports()
        R.check("no sanitizer reports", not reports, reports)
    finally:
        c.close()
    c = Cluster(n=3, users={"alice": "pw"}, extra_config={"sync_replicas": 0}, proxies=True)
    try:
        c.start_all()
        c.wait_links_up(timeout=40)
        R.section("copies on both sides of a partition stay apart after the heal",
                  t_partition, c)
        R.section("a copy resent after its answer was lost is stored once", t_resend, c)
        reports = c.sanitizer_reports()
        R.check("no sanitizer reports", not reports, reports)
    finally:
        c.close()
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
