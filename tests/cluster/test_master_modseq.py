#!/usr/bin/env python3
"""A change from the master at a modseq the replica spent itself (issue 13,
the chaos class `qresync-cache`; SPEC.md 10.3 "A change from the master").

A replica's HIGHESTMODSEQ can be above the master's: a sync with another
replica spent N = max(cm, sm) + 1 on both (9994), or two masters wrote
while apart (11166: node 2 spent up to 103 as master on its side, then took
node 1's expunges at 90 and 93).  When the master's change then arrives at
a modseq at or below that HIGHESTMODSEQ, writing it there hides it from an
IMAP client of the replica that cached the HIGHESTMODSEQ: SELECT (QRESYNC
(uidvalidity h)) reports nothing, and the client's view stays wrong.

A Python peer (tests/harness/peerwire.py) plays node 1, root and master of
alice's INBOX, against a real node 2 that wrote INBOX itself before (its
HIGHESTMODSEQ h).  A client of node 2 caches (UIDVALIDITY, h) and the
peer sends changes with ORIGIN 1:

  - a STORE, an EXPUNGE and a SAVE at modseq h: after each, the client's
    cache brought up to date by SELECT (QRESYNC) equals the mailbox (node
    2 refuses them, NO [HIGHESTMODSEQ h], and the sender's resync gives
    them a modseq above both copies');
  - a STORE at h + 1 of message 1, then of message 2 at the same modseq
    (the next message of one change): both applied at h + 1;
  - a STORE at an older modseq that changes nothing (the change came
    before): OK, and the message keeps its higher modseq;
  - a client's STORE on node 2 forwarded to the peer as master, answered
    at a modseq below node 2's HIGHESTMODSEQ: the session sees its change,
    and so does a client that cached the HIGHESTMODSEQ before it.

Every wait is bounded.  The last line is "test-master-modseq: N passed, M failed".
"""
import os
import re
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness.imapwire import Client  # noqa: E402
from harness.peerwire import PyPeer  # noqa: E402
from harness.peerwire import command_retrying as command, completion as last  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-master-modseq")
PASSWORD = "secret"
USER = "alice@example.com"


def message(subject):
    return ("From: t@example.com\r\nSubject: %s\r\nMessage-ID: <%s@test>\r\n\r\nbody\r\n"
            % (subject, subject))


def client(node, usr=USER, pw=PASSWORD):
    c = Client(node.host, node.imap_port, timeout=20)
    R.check("LOGIN %s" % usr, c.login(usr, pw).ok)
    c.command("ENABLE QRESYNC")
    return c


def select(c, box="INBOX"):
    """(uidvalidity, highestmodseq) of SELECT box."""
    r = c.command("SELECT %s" % box)
    codes = r.codes()
    return int(codes["UIDVALIDITY"]), int(codes["HIGHESTMODSEQ"])


def flags_of(c):
    """{uid: (sorted flags, modseq)} of the selected mailbox."""
    r = c.command("UID FETCH 1:* (UID FLAGS MODSEQ)")
    out = {}
    for _, it in r.fetches():
        if "FLAGS" in it and "MODSEQ" in it:
            out[it["UID"]] = (tuple(sorted(bytes(f).decode() for f in it["FLAGS"])),
                              int(it["MODSEQ"][0]))
    return out


def cache_holds(node, uv, hms, cache, usr=USER, pw=PASSWORD, box="INBOX"):
    """True when the cache {uid: flags} taken at (uv, hms), brought up to
    date by SELECT (QRESYNC (uv hms)), equals the mailbox now; else a
    description of the difference."""
    c = client(node, usr, pw)
    try:
        r = c.command("SELECT %s (QRESYNC (%d %d))" % (box, uv, hms))
        if not r.ok:
            return "SELECT (QRESYNC) refused: %r" % r.line
        cache = dict(cache)
        for _earlier, uids in r.vanished():
            for u in uids:
                cache.pop(u, None)
        for _, it in r.fetches():
            if "FLAGS" in it:
                cache[it["UID"]] = tuple(sorted(bytes(f).decode() for f in it["FLAGS"]))
        truth = {u: f for u, (f, _m) in flags_of(c).items()}
        if cache != truth:
            return "cache %r, mailbox %r" % (cache, truth)
        return True
    finally:
        c.logout()


def pumped(p, fn, *args):
    """fn(*args) in a thread while the peer answers node 2 (its pings, the
    read barriers of IMAP commands, MASTER-WHO as root); its result."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    p.grant_masters(lambda key: 1, 30, until=lambda: not t.is_alive())
    t.join(5)
    return out[0] if out else None


def guids(node, usr=USER, box="INBOX"):
    out = {}
    for line in node.dump(usr).splitlines():
        m = re.match(r"msg %s uid=(\d+) guid=(\w+)" % box, line)
        if m:
            out[int(m.group(1))] = m.group(2)
    return out


def peer_as_master(c, node, usr, box):
    """A Python peer playing node 1, node's root and master of usr's box,
    with box bound (MBOX 7) and selected on its link: (peer, {uid: guid}
    of box on node, the peer's epoch)."""
    with open(c.secret_file, "rb") as f:
        secret = f.read().rstrip(b"\n")
    p = PyPeer(node.repl_port, 1, secret)
    R.check("the Python peer authenticates as node 1", p.auth().startswith("C1 OK"))
    R.check("node %d takes the peer as its root" % node.node_id,
            p.play_root(node.node_id, timeout=15), p.mm_seen[-5:])
    mm = re.search(r"mailbox %s guid=(\w+) uidvalidity=(\d+)" % box, node.dump(usr))
    guid, uidvalidity = mm.group(1), int(mm.group(2))
    p.mm("MASTER-IS 1 %d 32 %d m:%s/%s 1 1" % (node.node_id, p.epoch, usr, guid))
    p.pump(0.3)
    R.equal("MBOX binds %s" % box,
            last(command(p, "MBOX 7 %s %s %d %s" % (usr, box, uidvalidity, guid)))[0], "OK")
    R.equal("SELECT", last(command(p, "SELECT 7"))[0], "OK")
    return p, guids(node, usr, box), p.epoch


def t_master_change_below():
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0"
    c = Cluster(n=2, users={USER: PASSWORD}, extra_config={"sync_replicas": 0})
    try:
        n2 = c.nodes[1]
        n2.start()
        # Node 2 alone is master of INBOX and spends its modseqs.
        w = client(n2)
        for i in range(4):
            text = message("m%d" % i)
            r = w.command("APPEND INBOX () {%d+}\r\n%s" % (len(text), text))
            R.check("APPEND m%d on node 2" % i, r.ok, r.line)
        select(w)
        R.check("STORE on node 2", w.command("UID STORE 1 +FLAGS (\\Flagged)").ok)
        w.logout()
        p, g, e = peer_as_master(c, n2, USER, "INBOX")

        # The client's cache, taken at node 2's HIGHESTMODSEQ h.
        cl = pumped(p, client, n2)
        uv, h = pumped(p, select, cl)
        cache = {u: f for u, (f, _m) in pumped(p, flags_of, cl).items()}
        pumped(p, cl.logout)
        R.check("node 2 spent modseqs itself (h = %d)" % h, h >= 5)

        r = command(p, "STORE 2 %d (\\Answered) (\\*) ORIGIN 1 EPOCH %d GUIDS (%s)"
                      % (h, e, g[2]))
        R.equal("a STORE from the master at modseq h (node 2's HIGHESTMODSEQ): "
                "NO [HIGHESTMODSEQ h]", last(r), ("NO", "HIGHESTMODSEQ %d" % h))
        R.equal("... the client's cache at h, after SELECT (QRESYNC), equals the mailbox",
                pumped(p, cache_holds, n2, uv, h, cache), True)

        r = command(p, "EXPUNGE 3 %d ORIGIN 1 EPOCH %d GUIDS (%s) BY USER" % (h - 1, e, g[3]))
        R.equal("an EXPUNGE from the master below h: NO [HIGHESTMODSEQ h]", last(r),
                ("NO", "HIGHESTMODSEQ %d" % h))
        R.equal("... the client's cache at h equals the mailbox",
                pumped(p, cache_holds, n2, uv, h, cache), True)

        text = message("from-master")
        r = command(p, "SAVE 1700000000+0000 5 %d aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa05 () {%d}\r\n"
                      "%s ORIGIN 1 EPOCH %d" % (h, len(text), text, e))
        R.equal("a SAVE from the master at h: NO [HIGHESTMODSEQ h]", last(r),
                ("NO", "HIGHESTMODSEQ %d" % h))
        R.equal("... the client's cache at h equals the mailbox",
                pumped(p, cache_holds, n2, uv, h, cache), True)

        r = command(p, "STORE 1 %d (\\Seen) (\\*) ORIGIN 1 EPOCH %d GUIDS (%s)"
                      % (h + 1, e, g[1]))
        R.equal("a STORE from the master above h: OK", last(r)[0], "OK")
        r = command(p, "STORE 2 %d (\\Seen) (\\*) ORIGIN 1 EPOCH %d GUIDS (%s)"
                      % (h + 1, e, g[2]))
        R.equal("the next message of the same change, at the same modseq: OK", last(r)[0],
                "OK")
        cl = pumped(p, client, n2)
        pumped(p, select, cl)
        now = pumped(p, flags_of, cl)
        R.equal("... both at h + 1 with \\Seen", (now.get(1), now.get(2)),
                ((("\\Seen",), h + 1), (("\\Seen",), h + 1)))
        r = command(p, "STORE 1 %d (\\Seen) (\\*) ORIGIN 1 EPOCH %d GUIDS (%s)" % (2, e, g[1]))
        R.equal("an older change that is already here: OK", last(r)[0], "OK")
        R.equal("... message 1 keeps modseq h + 1", pumped(p, flags_of, cl).get(1), (("\\Seen",), h + 1))
        R.equal("the client's cache at h equals the mailbox",
                pumped(p, cache_holds, n2, uv, h, cache), True)

        # A forwarded STORE: the peer, as master, answers at a modseq below
        # node 2's HIGHESTMODSEQ (h + 1) and above message 4's own (4).
        uv, h2 = pumped(p, select, cl)
        cache2 = {u: f for u, (f, _m) in pumped(p, flags_of, cl).items()}

        def serve_store(peer, tag, rest):
            if " ORIGIN " in rest:
                peer.send("%s OK done" % tag)   # node 2 streaming to us
                return
            peer.send("%s FLAGS 4 %d (\\Draft)" % (tag, h2 - 1))
            peer.send("%s OK [MODSEQ %d] stored" % (tag, h2 - 1))

        def serve_mbox(peer, tag, rest):
            peer.send("%s OK [UIDNEXT 6 HIGHESTMODSEQ %d] bound" % (tag, h2 - 1))

        def serve_ok(peer, tag, rest):
            peer.send("%s OK done" % tag)
        p.handlers.update({"STORE": serve_store, "MBOX": serve_mbox, "SELECT": serve_ok,
                           "SAVE": serve_ok, "EXPUNGE": serve_ok})
        res = {}
        t = threading.Thread(
            target=lambda: res.update(r=cl.command("UID STORE 4 FLAGS (\\Draft)")))
        t.start()
        p.grant_masters(lambda key: 1, 30, until=lambda: not t.is_alive())
        t.join(5)
        R.check("a forwarded STORE answered by the master: OK",
                "r" in res and res["r"].ok, res.get("r"))
        R.equal("... node 2 shows \\Draft on message 4", pumped(p, flags_of, cl).get(4, ((),))[0],
                ("\\Draft",))
        R.equal("... a client's cache at node 2's HIGHESTMODSEQ before it equals the mailbox",
                pumped(p, cache_holds, n2, uv, h2, cache2), True)
        pumped(p, cl.logout)
        p.close()
    finally:
        os.environ.pop("STARLING_SYNC_CHECK_INTERVAL", None)
        c.close_checked(R)


SHARERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
SHARED = "shared/alice/Team"


def t_pseen_below():
    """The same for a private \\Seen record (PSEEN, SPEC.md 7.7): bob's
    \\Seen on node 2 spent a modseq of alice's Team there; the master's
    PSEEN of carol at that modseq would hide carol's change from her cache."""
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0"
    c = Cluster(n=2, users=SHARERS, extra_config={"sync_replicas": 0, "shared_seen": "private"})
    try:
        n2 = c.nodes[1]
        n2.start()
        a = client(n2, "alice", SHARERS["alice"])
        R.check("alice CREATE Team on node 2", a.command("CREATE Team").ok)
        for i in range(3):
            text = message("t%d" % i)
            r = a.command("APPEND Team () {%d+}\r\n%s" % (len(text), text))
            R.check("APPEND t%d" % i, r.ok, r.line)
        for usr in ("bob", "carol"):
            R.check("SETACL Team %s lrs" % usr, a.command("SETACL Team %s lrs" % usr).ok)
        a.logout()
        b = client(n2, "bob", SHARERS["bob"])
        select(b, SHARED)
        R.check("bob's \\Seen on UID 1 (node 2 spends a modseq of Team)",
                b.command("UID STORE 1 +FLAGS (\\Seen)").ok)
        b.logout()
        p, g, e = peer_as_master(c, n2, "alice", "Team")

        cl = pumped(p, client, n2, "carol", SHARERS["carol"])
        uv, h = pumped(p, select, cl, SHARED)
        cache = {u: f for u, (f, _m) in pumped(p, flags_of, cl).items()}
        pumped(p, cl.logout)
        now_ms = int(time.time() * 1000)
        r = command(p, "PSEEN carol %s 1 %d %d ORIGIN 1 EPOCH %d" % (g[2], h, now_ms, e))
        R.equal("carol's PSEEN from the master at modseq h (node 2's HIGHESTMODSEQ): "
                "NO [HIGHESTMODSEQ h]", last(r), ("NO", "HIGHESTMODSEQ %d" % h))
        R.equal("... carol's cache at h, after SELECT (QRESYNC), equals her view",
                pumped(p, cache_holds, n2, uv, h, cache, "carol", SHARERS["carol"], SHARED),
                True)
        r = command(p, "PSEEN carol %s 1 %d %d ORIGIN 1 EPOCH %d" % (g[2], h + 1, now_ms, e))
        R.equal("the same record above h: OK", last(r)[0], "OK")
        r = command(p, "PSEEN carol %s 1 %d %d ORIGIN 1 EPOCH %d" % (g[3], h + 1, now_ms, e))
        R.equal("the next record of the same change, at the same modseq: OK", last(r)[0], "OK")
        r = command(p, "PSEEN carol %s 1 %d %d ORIGIN 1 EPOCH %d" % (g[3], 2, now_ms, e))
        R.equal("an older line of a record already here: OK", last(r)[0], "OK")
        cl = pumped(p, client, n2, "carol", SHARERS["carol"])
        pumped(p, select, cl, SHARED)
        now = pumped(p, flags_of, cl)
        R.equal("carol sees \\Seen on UIDs 2 and 3 at h + 1", (now.get(2), now.get(3)),
                ((("\\Seen",), h + 1), (("\\Seen",), h + 1)))
        pumped(p, cl.logout)
        R.equal("carol's cache at h equals her view",
                pumped(p, cache_holds, n2, uv, h, cache, "carol", SHARERS["carol"], SHARED),
                True)
        p.close()
    finally:
        os.environ.pop("STARLING_SYNC_CHECK_INTERVAL", None)
        c.close_checked(R)


def main():
    R.section("a change from the master below the replica's HIGHESTMODSEQ",
              t_master_change_below)
    R.section("a private \\Seen record from the master below it", t_pseen_below)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
