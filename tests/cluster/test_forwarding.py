#!/usr/bin/env python3
"""Forwarded STORE and EXPUNGE name their messages by GUID (SPEC.md 8.6).

After a partition, one UID can name different messages on two nodes until
their resync.  A change a client made on one node is forwarded to the
mailbox's master by UID; without the GUIDs, the master would change or
expunge whatever message it holds under that UID, and its tombstone would
then win every sync.  Here node 2 is master of the mailbox (it is alone in
its component: the Python peer playing node 1 never floods a link list, so
no edge to it counts and node 2 stays root) and the Python peer, as node 1,
forwards STOREs and EXPUNGEs to it, with right and wrong GUIDs.

The last line is "cluster-forwarding: N passed, M failed".
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

R = Report("cluster-forwarding")
WRONG = "00112233445566778899aabbccddeeff"


# parse_dump() and command() are test_copies.py's too.
def parse_dump(text):
    """{"mailbox": {name: (guid, uidvalidity)}, "msg": {(name, uid): (guid, flags)}}"""
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
    """p.command(text), again while the node answers NO [TRYLATER]: the
    node resyncs the user with the peer now and then (the peer has not
    acknowledged its log), and holds the mailbox meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        r = p.command(text)
        if r[-1].split()[1:3] != ["NO", "[TRYLATER]"] or time.monotonic() > deadline:
            return r
        p.pump(0.2)


def t_master_checks_guids(c):
    n2 = c.nodes[1]
    imap = imapwire.Client(n2.host, n2.imap_port)
    R.equal("login", imap.login("alice", "pw").status, "OK")
    for i in range(3):
        r = imap.command("APPEND INBOX", imapwire.Literal(
            "Subject: m%d\r\n\r\nbody %d\r\n" % (i, i)))
        R.equal("APPEND %d" % i, r.status, "OK")
    d = parse_dump(n2.dump("alice"))
    guid, uidvalidity = d["mailbox"]["INBOX"]
    g1 = d["msg"][("INBOX", 1)][0]
    g2 = d["msg"][("INBOX", 2)][0]

    with open(c.secret_file, "rb") as f:
        secret = f.read().rstrip(b"\n")
    p = PyPeer(n2.repl_port, 1, secret)
    R.check("the peer authenticates", p.auth().startswith("C1 OK"))
    r = command(p, "MBOX 7 alice INBOX %d %s" % (uidvalidity, guid))
    R.check("MBOX binds INBOX", r[-1].split()[1] == "OK", r)
    r = command(p, "SELECT 7")
    R.check("SELECT", r[-1].split()[1] == "OK", r)

    r = command(p, "STORE 1 0 (\\Flagged) () GUIDS (%s)" % WRONG)
    R.check("STORE naming another message: NO [GUIDMISMATCH]",
            r[-1].split()[1:3] == ["NO", "[GUIDMISMATCH]"], r)
    r = command(p, "STORE 1:2 0 (\\Flagged) () GUIDS (%s %s)" % (g1, WRONG))
    R.check("STORE with one UID naming another message: NO [GUIDMISMATCH]",
            r[-1].split()[1:3] == ["NO", "[GUIDMISMATCH]"], r)
    d = parse_dump(n2.dump("alice"))
    R.equal("neither message was flagged", [d["msg"][("INBOX", u)][1] for u in (1, 2)],
            ["", ""])

    r = command(p, "EXPUNGE 2 0 GUIDS (%s)" % WRONG)
    R.check("EXPUNGE naming another message: NO [GUIDMISMATCH]",
            r[-1].split()[1:3] == ["NO", "[GUIDMISMATCH]"], r)
    d = parse_dump(n2.dump("alice"))
    R.check("UID 2 is still there", ("INBOX", 2) in d["msg"], d["msg"].keys())

    r = command(p, "STORE 1 0 (\\Flagged) () GUIDS (%s)" % g1)
    R.check("STORE naming the right message: OK", r[-1].split()[1] == "OK", r)
    R.check("... with a FLAGS line for it", any(" FLAGS 1 " in x for x in r), r)
    r = command(p, "STORE 1:2 0 (\\Seen) () GUIDS (%s)" % g1)
    R.check("GUIDS of another length: BAD", r[-1].split()[1] == "BAD", r)
    r = command(p, "EXPUNGE 2 0 GUIDS (%s)" % g2)
    R.check("EXPUNGE naming the right message: OK", r[-1].split()[1] == "OK", r)
    # Without GUIDS (a node of an earlier build), UIDs alone still work.
    r = command(p, "STORE 3 0 (\\Answered) ()")
    R.check("STORE without GUIDS: OK", r[-1].split()[1] == "OK", r)
    d = parse_dump(n2.dump("alice"))
    R.equal("UID 1 flagged", d["msg"][("INBOX", 1)][1], "\\Flagged")
    R.check("UID 2 expunged", ("INBOX", 2) not in d["msg"], d["msg"].keys())
    R.equal("UID 3 answered", d["msg"][("INBOX", 3)][1], "\\Answered")
    p.close()
    imap.close()


def t_forwarder_names_messages(c):
    """Node 2 forwards its client's STORE and EXPUNGE to the Python peer,
    which plays root and master: the requests carry GUIDS, a GUIDMISMATCH
    answer fails the client's command and changes nothing here."""
    n2 = c.nodes[1]
    imap = imapwire.Client(n2.host, n2.imap_port)
    R.equal("login", imap.login("alice", "pw").status, "OK")
    for i in range(2):
        r = imap.command("APPEND INBOX", imapwire.Literal("Subject: f%d\r\n\r\n%d\r\n" % (i, i)))
        R.equal("APPEND %d while node 2 is alone" % i, r.status, "OK")
    d = parse_dump(n2.dump("alice"))
    g1 = d["msg"][("INBOX", 1)][0]
    st = imap.command("STATUS INBOX (UIDNEXT HIGHESTMODSEQ)")
    m = re.search(rb"UIDNEXT (\d+) HIGHESTMODSEQ (\d+)", b" ".join(st.untagged))
    uidnext, modseq = int(m.group(1)), int(m.group(2))

    with open(c.secret_file, "rb") as f:
        secret = f.read().rstrip(b"\n")
    p = PyPeer(n2.repl_port, 1, secret)
    R.check("the peer authenticates", p.auth().startswith("C1 OK"))
    R.check("node 2 takes the peer as its root", p.play_root(2, timeout=15), p.mm_seen[-5:])

    got = []          # (name, rest) of the forwarded requests
    # None: refuse with GUIDMISMATCH; else the flags (STORE) the master
    # answers with, at the next modseq.
    answers = {"STORE": None, "EXPUNGE": None}
    nextmod = [modseq]

    def mbox(peer, tag, rest):
        peer.send("%s OK [UIDNEXT %d HIGHESTMODSEQ %d] bound" % (tag, uidnext, modseq))

    def select(peer, tag, rest):
        peer.send("%s OK selected" % tag)

    def change(name):
        def handler(peer, tag, rest):
            if " ORIGIN " in rest:
                # Node 2 streaming what it holds to us (it was master
                # before us): not a request; taken as it is.
                peer.send("%s OK [MODSEQ %d] done" % (tag, nextmod[0]))
                return
            got.append((name, rest))
            if answers[name] is None:
                peer.send("%s NO [GUIDMISMATCH] UID 1 holds another message here" % tag)
                return
            nextmod[0] += 1
            if name == "STORE":
                peer.send("%s FLAGS 1 %d (%s)" % (tag, nextmod[0], answers[name]))
            peer.send("%s OK [MODSEQ %d] done" % (tag, nextmod[0]))
        return handler

    p.handlers.update({"MBOX": mbox, "SELECT": select, "STORE": change("STORE"),
                       "EXPUNGE": change("EXPUNGE")})
    R.equal("SELECT on node 2", imap.command("SELECT INBOX").status, "OK")

    def client(cmd):
        """Runs an IMAP command on node 2 while the peer answers as root
        and master; returns its response."""
        out = []
        t = threading.Thread(target=lambda: out.append(imap.command(cmd)))
        t.start()
        p.grant_masters(lambda key: 1, 30, until=lambda: not t.is_alive())
        t.join(5)
        return out[0] if out else None

    r = client("UID STORE 1 +FLAGS (\\Flagged)")
    R.check("the STORE reached the master with the message's GUID",
            got and got[-1][0] == "STORE" and ("GUIDS (%s)" % g1) in got[-1][1], got)
    R.equal("GUIDMISMATCH from the master: the client gets NO", r and r.status, "NO")
    d = parse_dump(n2.dump("alice"))
    R.equal("nothing changed here", d["msg"][("INBOX", 1)][1], "")
    R.check("node 2 logs the mismatch and queues a resync",
            "the master holds other messages under these UIDs" in n2.log_text(),
            n2.log_tail(10))

    answers["STORE"] = "\\Flagged"
    r = client("UID STORE 1 +FLAGS (\\Flagged)")
    R.equal("the master's OK: the client gets OK", r and r.status, "OK")
    d = parse_dump(n2.dump("alice"))
    R.equal("the master's flags are applied here", d["msg"][("INBOX", 1)][1], "\\Flagged")
    answers["STORE"] = "\\Flagged \\Deleted"
    r = client("UID STORE 1 +FLAGS (\\Deleted)")
    R.equal("STORE \\Deleted: OK", r and r.status, "OK")

    r = client("UID EXPUNGE 1")
    R.check("the EXPUNGE reached the master with the message's GUID",
            got[-1][0] == "EXPUNGE" and ("GUIDS (%s)" % g1) in got[-1][1], got[-1:])
    R.equal("GUIDMISMATCH: the client's EXPUNGE gets NO", r and r.status, "NO")
    d = parse_dump(n2.dump("alice"))
    R.check("UID 1 is still here", ("INBOX", 1) in d["msg"], d["msg"].keys())
    p.close()
    imap.close()


def t_shutdown_with_forwards_in_flight(c):
    """SIGTERM while a client's change is forwarded to a master that does
    not answer (stopped): the node answers the client, frees the change
    and exits cleanly (no leak or use after free under the sanitizers)."""
    n1, n2 = c.nodes
    a = imapwire.Client(n1.host, n1.imap_port)
    R.equal("login on node 1", a.login("alice", "pw").status, "OK")
    r = a.command("APPEND INBOX", imapwire.Literal("Subject: s\r\n\r\ns\r\n"))
    R.equal("APPEND on node 1 (the master)", r.status, "OK")
    c.wait_dumps_equal("alice", timeout=60)
    b = imapwire.Client(n2.host, n2.imap_port)
    R.equal("login on node 2", b.login("alice", "pw").status, "OK")
    R.equal("SELECT on node 2", b.command("SELECT INBOX").status, "OK")
    n1.pause()
    try:
        b.send_command(b.next_tag(), ["UID STORE 1 +FLAGS (\\Seen)"])
        time.sleep(0.5)   # forwarded, waiting for the stopped master
        code = n2.stop()
    finally:
        n1.resume()
    R.equal("node 2 exits 0 on SIGTERM with a forward in flight", code, 0)
    reports = c.sanitizer_reports()
    R.check("and leaves no sanitizer report", not reports, reports)
    a.close()
    b.close()


def t_batches(c):
    """A STORE and an EXPUNGE of more messages than one forwarded request
    carries (500) go as several, and every message is changed once."""
    n1, n2 = c.nodes
    a = imapwire.Client(n1.host, n1.imap_port)
    R.equal("login on node 1", a.login("alice", "pw").status, "OK")
    total = 1100
    ok = 0
    for i in range(total):
        r = a.command("APPEND INBOX", imapwire.Literal("Subject: b%d\r\n\r\n%d\r\n" % (i, i)))
        ok += r.status == "OK"
    R.equal("%d APPENDs on node 1 (the master)" % total, ok, total)
    c.wait_dumps_equal("alice", timeout=120)
    b = imapwire.Client(n2.host, n2.imap_port)
    R.equal("login on node 2", b.login("alice", "pw").status, "OK")
    R.equal("SELECT on node 2", b.command("SELECT INBOX").status, "OK")
    r = b.command("UID STORE 1:* +FLAGS.SILENT (\\Seen)")
    R.equal("UID STORE of all on node 2, forwarded", r.status, "OK")
    d = parse_dump(c.wait_dumps_equal("alice", timeout=60))
    seen = sum(1 for (mb, _), (_, fl) in d["msg"].items() if "\\Seen" in fl)
    R.equal("every message seen on both nodes", seen, total)
    r = b.command("UID STORE 1:* +FLAGS.SILENT (\\Deleted)")
    R.equal("UID STORE \\Deleted of all", r.status, "OK")
    r = b.command("EXPUNGE")
    R.equal("EXPUNGE on node 2, forwarded", r.status, "OK")
    R.equal("one EXPUNGE response per message", sum(1 for u in r.untagged
                                                    if u.endswith(b" EXPUNGE")), total)
    d = parse_dump(c.wait_dumps_equal("alice", timeout=60))
    R.equal("no message left on either node", len(d["msg"]), 0)
    a.close()
    b.close()


def main():
    # No periodic resync: nothing but this test's commands changes node 2.
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0"
    c = Cluster(n=2, users={"alice": "pw"}, extra_config={"sync_replicas": 0})
    try:
        c.nodes[1].start()
        R.section("the master checks the GUIDs of forwarded changes", t_master_checks_guids, c)
        reports = c.sanitizer_reports()
        R.check("no sanitizer reports", not reports, reports)
    finally:
        c.close()
    c = Cluster(n=2, users={"alice": "pw"}, extra_config={"sync_replicas": 0})
    try:
        c.nodes[1].start()
        R.section("the forwarder names its messages", t_forwarder_names_messages, c)
        reports = c.sanitizer_reports()
        R.check("no sanitizer reports", not reports, reports)
    finally:
        c.close()
    c = Cluster(n=2, users={"alice": "pw"})
    try:
        c.start_all()
        c.wait_links_up(timeout=30)
        R.section("shutdown with a forward in flight", t_shutdown_with_forwards_in_flight, c)
    finally:
        c.close()
    c = Cluster(n=2, users={"alice": "pw"})
    try:
        c.start_all()
        c.wait_links_up(timeout=30)
        R.section("changes to many messages are forwarded in batches", t_batches, c)
        reports = c.sanitizer_reports()
        R.check("no sanitizer reports", not reports, reports)
    finally:
        c.close()
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
