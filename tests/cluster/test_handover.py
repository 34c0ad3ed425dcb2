#!/usr/bin/env python3
"""Safe handovers of mastership (issue 13; SPEC.md 9.8).

Real starlingd nodes on loopback:

  - failover: node 1 is master of alice's INBOX, `sync_replicas = 1`.
    The link 1-3 loses everything (blackhole) while node 1 sets \\Seen on
    message 1 and takes an APPEND, both acknowledged with node 2's copy;
    node 1 is then killed, and once node 3 noticed, a client of node 3
    (which makes node 3 the new master) sends STORE UNCHANGEDSINCE with
    the modseq it saw before the \\Seen change, then an APPEND.  The new master must catch
    up with node 2 first: the STORE is refused (MODIFIED), the APPEND
    gets a UID that is not the acknowledged message's, and both survivors
    end with \\Seen and the acknowledged message at its UID;
  - a restarted node asks for no master before it knows the cluster: a
    `master show` on node 3 right after its restart answers with root 1
    (the cluster's root), never as its own root and master;
  - a Python peer (tests/harness/peerwire.py) playing node 1 against a real
    node 2 that is master of INBOX: a forwarded STORE with a stale EPOCH is
    refused with NO [STALE EPOCH e] and changes nothing, one with a newer
    EPOCH gets NO [TRYLATER], one with the node's epoch is served; changes
    with ORIGIN from a node that is not the master (node 2 is master
    itself) are refused and change nothing, as are ORIGIN changes without
    EPOCH or at another epoch;
  - the same peer as root and master of the granule (MASTER-IS to node 2):
    a change with ORIGIN 1 at its epoch is applied; one naming ORIGIN 3
    over the same link (a relay passing on node 3's change) is refused:
    the check is on the ORIGIN sid, not on the link.

Every wait is bounded.  The last line is "test-handover: N passed, M failed".
"""
import imaplib
import os
import re
import sys
import threading

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness import imapwire, mailops  # noqa: E402
from harness.mailops import message  # noqa: E402
from harness.proc import poll as wait_for  # noqa: E402
from harness.peerwire import PyPeer  # noqa: E402
from harness.peerwire import command_retrying as command, completion as last  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-handover")
PASSWORD = "secret"
USER = "alice@example.com"


def login(node):
    m = imaplib.IMAP4(node.host, node.imap_port, timeout=60)
    m.login(USER, PASSWORD)
    return m


def appenduid(m, subject):
    """(typ, uid or None, text) of an APPEND to INBOX."""
    typ, data = m.append("INBOX", None, None, message(subject))
    text = data[0].decode(errors="replace") if data and data[0] else ""
    mm = re.search(r"APPENDUID \d+ (\d+)", text)
    return typ, int(mm.group(1)) if mm else None, text


def parse_dump(text):
    """{"mailbox": {name: guid}, "msg": {(name, uid): (guid, flags)}}"""
    out = {"mailbox": {}, "msg": {}}
    for line in text.splitlines():
        m = re.match(r"mailbox (\S+) guid=(\w+)", line)
        if m:
            out["mailbox"][m.group(1)] = m.group(2)
        m = re.match(r"msg (\S+) uid=(\d+) guid=(\w+) flags=(\S*)", line)
        if m:
            out["msg"][(m.group(1), int(m.group(2)))] = (m.group(3), m.group(4))
    return out


def master_show(node):
    return mailops.master_show(node, USER)


def epoch_of(node):
    """The node's epoch as a number (status shows COUNTER.ROOT)."""
    counter, root = node.status(timeout=20)["epoch"].split(".")
    return (int(counter) << 32) | int(root)


# ---- failover: the new master catches up before it serves ----------------

def t_failover_catches_up():
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0"  # only the handover resyncs
    c = Cluster(n=3, users={USER: PASSWORD}, extra_config={"sync_replicas": "1"},
                proxies=True)
    try:
        c.start_all()
        c.wait_links_up(timeout=40)
        n1, n2, n3 = c.nodes
        m1 = login(n1)
        typ, _, text = appenduid(m1, "first")
        R.check("first APPEND on node 1", typ == "OK", text)
        R.equal("node 1 is master of INBOX", master_show(n1).get("master"), "1")
        c.wait_dumps_equal(USER, timeout=40)

        # imapwire, not imaplib: the MODIFIED code is in the tagged line.
        m3 = imapwire.Client(n3.host, n3.imap_port, timeout=90)
        R.equal("login on node 3", m3.login(USER, PASSWORD).status, "OK")
        R.equal("SELECT on node 3", m3.command("SELECT INBOX").status, "OK")
        r = m3.command("UID FETCH 1 (MODSEQ)")
        mm = re.search(rb"MODSEQ \((\d+)\)", b" ".join(r.untagged))
        R.check("node 3's client sees message 1 and its modseq", mm is not None, r.untagged)
        seen_modseq = int(mm.group(1)) if mm else 0

        # Node 1's changes must not reach node 3: the link between them
        # loses everything from now on (no close: node 3 notices only by
        # its keepalive, as with a hung network).
        c.blackhole(1, 3)
        m1.select("INBOX")
        typ, data = m1.uid("STORE", "1", "+FLAGS", "(\\Seen)")
        R.equal("STORE \\Seen on node 1 (node 2 holds it)", typ, "OK")
        typ, acked_uid, text = appenduid(m1, "acked")
        R.check("APPEND on node 1 acknowledged with a UID", typ == "OK" and acked_uid, text)
        n1.kill()
        # Node 3's client writes once node 3 knows node 1 is gone, so that
        # it gets a new master (itself) instead of going on alone.
        R.check("node 3 notices that node 1 is gone",
                wait_for(lambda: n3.peer_state(1) not in ("up", None), 20),
                n3.peer_state(1))
        r = m3.command("UID STORE 1 (UNCHANGEDSINCE %d) +FLAGS (\\Flagged)" % seen_modseq)
        R.check("STORE UNCHANGEDSINCE on node 3 (the new master) sees the \\Seen change: "
                "MODIFIED", r.status == "OK" and r.code == "MODIFIED", r)
        r = m3.command("APPEND INBOX", imapwire.Literal(message("after")))
        mm = re.search(rb"APPENDUID \d+ (\d+)", r.line)
        new_uid = int(mm.group(1)) if mm else None
        R.check("APPEND on node 3 answered OK", r.status == "OK" and new_uid, r)
        R.check("... with a UID that is not the acknowledged message's",
                new_uid is not None and new_uid != acked_uid, (new_uid, acked_uid))
        R.equal("node 3 is now master of INBOX", master_show(n3).get("master"), "3")

        d = parse_dump(c.wait_dumps_equal(USER, timeout=60, nodes=[n2, n3]))
        R.check("both survivors hold \\Seen on message 1 (not \\Flagged)",
                d["msg"].get(("INBOX", 1), ("", ""))[1] == "\\Seen", d["msg"].get(("INBOX", 1)))
        subjects = {}
        for node in (n2, n3):
            m = login(node)
            m.select("INBOX", readonly=True)
            typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            for item in data:
                if isinstance(item, tuple):
                    u = re.search(rb"UID (\d+)", item[0])
                    s = re.search(rb"Subject: (\S+)", item[1])
                    if u and s:
                        subjects[(node.node_id, int(u.group(1)))] = s.group(1).decode()
            m.logout()
        for node in (n2, n3):
            R.equal("node %d: the acknowledged message keeps its UID" % node.node_id,
                    subjects.get((node.node_id, acked_uid)), "acked")
            R.equal("node %d: the new message is at the UID its client was told"
                    % node.node_id, subjects.get((node.node_id, new_uid)), "after")
        m3.close()
    finally:
        os.environ.pop("STARLING_SYNC_CHECK_INTERVAL", None)
        c.close_checked(R)


# ---- a restarted node knows the cluster before it is master ---------------

def t_restart_waits_for_cluster():
    c = Cluster(n=3, users={USER: PASSWORD})
    try:
        c.start_all()
        c.wait_links_up(timeout=40)
        n1, n2, n3 = c.nodes
        m = login(n1)
        typ, _, text = appenduid(m, "first")
        R.check("first APPEND on node 1", typ == "OK", text)
        m.logout()
        c.wait_dumps_equal(USER, timeout=40)
        for attempt in range(3):
            n3.kill()
            n3.start()
            ans = master_show(n3)
            R.equal("restart %d: node 3's first master show names the cluster's root"
                    % (attempt + 1), ans.get("root"), "1")
            R.check("... at an epoch of root 1, not one of its own",
                    ans.get("epoch", "").endswith(".1"), ans)
            c.wait_links_up(timeout=40)
    finally:
        c.close_checked(R)


# ---- epochs on forwarded requests and on changes with ORIGIN ---------------


def peer_for(c, n2):
    with open(c.secret_file, "rb") as f:
        secret = f.read().rstrip(b"\n")
    p = PyPeer(n2.repl_port, 1, secret)
    R.check("the Python peer authenticates as node 1", p.auth().startswith("C1 OK"))
    return p


def bind_inbox(p, n2):
    d = parse_dump(n2.dump(USER))
    st = n2.dump(USER)
    mm = re.search(r"mailbox INBOX guid=(\w+) uidvalidity=(\d+)", st)
    guid, uidvalidity = mm.group(1), int(mm.group(2))
    r = command(p, "MBOX 7 %s INBOX %d %s" % (USER, uidvalidity, guid))
    R.equal("MBOX binds INBOX", last(r)[0], "OK")
    r = command(p, "SELECT 7")
    R.equal("SELECT", last(r)[0], "OK")
    return d, guid


def flags_of(n2, uid):
    return parse_dump(n2.dump(USER))["msg"].get(("INBOX", uid), (None, None))[1]


def start_node2(c, prefix, check):
    """Starts node 2 of c alone (node 1 is to be the Python peer) and
    APPENDs three messages, prefix0..2, to its INBOX; returns node 2."""
    n2 = c.nodes[1]
    n2.start()
    m = login(n2)
    for i in range(3):
        typ, _, text = appenduid(m, "%s%d" % (prefix, i))
        R.check(check % i, typ == "OK", text)
    m.logout()
    return n2


def t_epochs_checked():
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0"
    c = Cluster(n=2, users={USER: PASSWORD}, extra_config={"sync_replicas": 0})
    try:
        n2 = start_node2(c, "m", "APPEND %d on node 2 (alone: its master)")
        # The start-up hold is over by now (node 1 never came): node 2 is
        # master of INBOX at its own epoch.
        ep = epoch_of(n2)
        stale = ep - (1 << 32)
        newer = ep + (1 << 32)
        p = peer_for(c, n2)
        d, _ = bind_inbox(p, n2)
        g1 = d["msg"][("INBOX", 1)][0]
        g2 = d["msg"][("INBOX", 2)][0]

        r = command(p, "STORE 1 0 (\\Flagged) () GUIDS (%s) EPOCH %d" % (g1, stale))
        R.equal("forwarded STORE at a stale epoch: NO [STALE EPOCH <the node's>]", last(r),
                ("NO", "STALE EPOCH %d" % ep))
        R.equal("... and nothing changed", flags_of(n2, 1), "")
        r = command(p, "STORE 1 0 (\\Flagged) () GUIDS (%s) EPOCH %d" % (g1, newer))
        R.equal("forwarded STORE at an epoch the node has not adopted: NO [TRYLATER]",
                last(r)[0:2], ("NO", "TRYLATER"))
        R.equal("... and nothing changed", flags_of(n2, 1), "")
        r = command(p, "STORE 1 0 (\\Flagged) () GUIDS (%s) EPOCH %d" % (g1, ep))
        R.equal("forwarded STORE at the node's epoch: OK", last(r)[0], "OK")
        R.equal("... applied", flags_of(n2, 1), "\\Flagged")

        # Changes "already made by their master" from node 1, which is not
        # the master of INBOX (node 2 is).
        before = parse_dump(n2.dump(USER))["msg"]
        r = command(p, "EXPUNGE 2 900 ORIGIN 1 EPOCH %d GUIDS (%s)" % (ep, g2))
        R.check("EXPUNGE with ORIGIN from a node that is not the master: refused",
                last(r)[0] == "NO" and last(r)[1].startswith("NOTMASTER"), r)
        r = command(p, "STORE 1 901 (\\Answered) (\\*) ORIGIN 1 EPOCH %d GUIDS (%s)" % (ep, g1))
        R.check("STORE with ORIGIN from a node that is not the master: refused",
                last(r)[0] == "NO" and last(r)[1].startswith("NOTMASTER"), r)
        r = command(p, "EXPUNGE 2 902 ORIGIN 1 GUIDS (%s)" % g2)
        R.equal("EXPUNGE with ORIGIN and no EPOCH: NO [STALE]", last(r), ("NO", "STALE"))
        r = command(p, "EXPUNGE 2 903 ORIGIN 1 EPOCH %d GUIDS (%s)" % (stale, g2))
        R.equal("EXPUNGE with ORIGIN at a stale epoch: NO [STALE EPOCH ...]", last(r),
                ("NO", "STALE EPOCH %d" % ep))
        R.equal("none of them changed anything", parse_dump(n2.dump(USER))["msg"], before)
        p.close()
    finally:
        os.environ.pop("STARLING_SYNC_CHECK_INTERVAL", None)
        c.close_checked(R)


def t_origin_is_the_master():
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0"
    c = Cluster(n=2, users={USER: PASSWORD}, extra_config={"sync_replicas": 0})
    try:
        n2 = start_node2(c, "o", "APPEND %d on node 2")
        p = peer_for(c, n2)
        R.check("node 2 takes the peer as its root", p.play_root(2, timeout=15),
                p.mm_seen[-5:])
        d, guid = bind_inbox(p, n2)
        g1 = d["msg"][("INBOX", 1)][0]
        g3 = d["msg"][("INBOX", 3)][0]
        key = "m:%s/%s" % (USER, guid)
        # The root tells node 2 that node 1 (the peer) is master of INBOX,
        # as it does every member when a master moves (SPEC 9.5).
        p.mm("MASTER-IS 1 2 32 %d %s 1 1" % (p.epoch, key))
        p.pump(0.3)
        R.equal("node 2 caches node 1 as the master",
                master_show(n2).get("master"), "1")
        before = parse_dump(n2.dump(USER))["msg"]
        r = command(p, "EXPUNGE 3 900 ORIGIN 3 EPOCH %d GUIDS (%s)" % (p.epoch, g3))
        R.check("a change with ORIGIN 3 over node 1's link (3 is not the master): refused",
                last(r)[0] == "NO" and last(r)[1].startswith("NOTMASTER MASTER 1"), r)
        R.equal("... and nothing changed", parse_dump(n2.dump(USER))["msg"], before)
        r = command(p, "STORE 1 901 (\\Answered) (\\*) ORIGIN 1 EPOCH %d GUIDS (%s)"
                      % (p.epoch, g1))
        R.equal("the master's change (ORIGIN 1 at the epoch) is applied", last(r)[0], "OK")
        R.equal("... \\Answered on message 1", flags_of(n2, 1), "\\Answered")
        p.close()
    finally:
        os.environ.pop("STARLING_SYNC_CHECK_INTERVAL", None)
        c.close_checked(R)


def main():
    only = os.environ.get("HANDOVER_ONLY")
    scenarios = [("failover: the new master catches up first", t_failover_catches_up),
                 ("a restarted node waits for the cluster", t_restart_waits_for_cluster),
                 ("epochs of forwards and ORIGIN changes", t_epochs_checked),
                 ("ORIGIN must be the master", t_origin_is_the_master)]
    for name, func in scenarios:
        if only is None or only == name:
            R.section(name, func)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
