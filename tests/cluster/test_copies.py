#!/usr/bin/env python3
"""Two COPYs of one message into one mailbox make two messages (SPEC.md 6.4).

A copy forwarded to the master is a SAVE with the message's GUID, and a SAVE
of a GUID the mailbox already holds is a resent one: without more, two
COPYs made on two nodes before either saw the other's are one message,
answered twice with the same COPYUID.  Forwarded copies carry REQ, their
request's identity, so the master tells a resent copy (same REQ: the
message it made) from another copy (a new message with a new GUID).

1. Protocol: node 2 is master and alone; the Python peer, as node 1, sends
   SAVEs with REQ: a resent one gets the same UID, another request a new
   message (with GUID in the answer), a SAVE without REQ (an older peer)
   the existing one, a malformed REQ BAD [ARGS].
2. Three real nodes: node 1 is master of "Copies", its links to nodes 2
   and 3 slowed down so neither sees the other's copy; both COPY the same
   message into Copies at once: two COPYUIDs, and every node ends with
   both messages, under different GUIDs and with the same text.

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

from harness import imapwire  # noqa: E402
from harness.peerwire import PyPeer  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("cluster-copies")
TEXT = "From: a@example.com\r\nSubject: copied\r\n\r\nthe body\r\n"


def parse_dump(text):
    out = {"mailbox": {}, "msg": {}}
    for line in text.splitlines():
        m = re.match(r"mailbox (\S+) guid=(\w+) uidvalidity=(\d+)", line)
        if m:
            out["mailbox"][m.group(1)] = (m.group(2), int(m.group(3)))
        m = re.match(r"msg (\S+) uid=(\d+) guid=(\w+) flags=(\S*)", line)
        if m:
            out["msg"][(m.group(1), int(m.group(2)))] = (m.group(3), m.group(4))
    return out


def command(p, text, timeout=20.0):
    """p.command(text), again while the node answers NO [TRYLATER]."""
    deadline = time.monotonic() + timeout
    while True:
        r = p.command(text)
        if r[-1].split()[1:3] != ["NO", "[TRYLATER]"] or time.monotonic() > deadline:
            return r
        p.pump(0.2)


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
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
