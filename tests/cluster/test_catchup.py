#!/usr/bin/env python3
"""Nodes that were apart catch up by themselves (issues 6 and 7).

Three real starlingd nodes with link-cutting proxies:

  - the replication log's bound: with repl_log_max = 20, a node that is
    stopped while 60 changes are made is marked for a full resync
    (`peer.3.full_sync: yes` on the master) and no longer holds the log
    back; restarted, it converges through a resync (dumps identical) and
    the mark goes away;
  - a partition with writes on both sides of the same mailbox: node 3 is
    cut off from nodes 1 and 2, clients append on both sides (the two
    masters hand out the same UIDs) and flag messages; after the heal every
    node has every OK'd message exactly once, the dumps are identical,
    UIDVALIDITY is unchanged and no UID names two messages;
  - the same, with the heal coming while clients keep appending.

Every wait is bounded.  The last line is "test-catchup: N passed, M failed".
"""
import imaplib
import os
import re
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-catchup")
PASSWORD = "secret"


def login(node, user):
    m = imaplib.IMAP4(node.host, node.imap_port, timeout=30)
    m.login(user, PASSWORD)
    return m


def append(m, subject, flags=None):
    msg = ("From: t@example.com\r\nSubject: %s\r\nMessage-ID: <%s@test>\r\n\r\nbody of %s\r\n"
           % (subject, subject, subject)).encode()
    typ, data = m.append("INBOX", flags, None, msg)
    return typ == "OK"


def inbox(node, user):
    """[(uid, subject)] of the user's INBOX on node, and its UIDVALIDITY."""
    m = login(node, user)
    typ, data = m.select("INBOX", readonly=True)
    uv = int(m.untagged_responses.get("UIDVALIDITY", [b"0"])[-1])
    out = []
    if int(data[0]) > 0:
        typ, data = m.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        for item in data:
            if not isinstance(item, tuple):
                continue
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
            subj = re.search(rb"Subject: (\S+)", item[1]).group(1).decode()
            out.append((uid, subj))
    m.logout()
    return out, uv


def status(node, key):
    return node.status().get(key)


def wait_for(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return pred()


def check_every_ok_once(c, user, oks, what):
    for node in c.nodes:
        msgs, _ = inbox(node, user)
        subjects = [s for _, s in msgs]
        missing = sorted(set(oks) - set(subjects))
        R.check("%s: node %d holds every OK'd message" % (what, node.node_id), not missing,
                missing[:5])
        R.check("%s: node %d holds each message once" % (what, node.node_id),
                len(subjects) == len(set(subjects)),
                [s for s in subjects if subjects.count(s) > 1][:5])
        uids = [u for u, _ in msgs]
        R.check("%s: node %d: no UID names two messages" % (what, node.node_id),
                len(uids) == len(set(uids)), uids)


def t_log_bound():
    user = "bound@example.com"
    c = Cluster(n=3, proxies=True, users={user: PASSWORD},
                extra_config={"repl_log_max": "20"})
    try:
        c.start_all()
        c.wait_links_up(timeout=40)
        n1, n2, n3 = c.nodes
        m = login(n1, user)
        R.check("first APPEND", append(m, "first"))
        c.wait_dumps_equal(user, timeout=30)
        n3.stop()
        oks = ["first"]
        for i in range(60):
            # Each APPEND is a log entry on the master.
            if append(m, "while-down-%d" % i):
                oks.append("while-down-%d" % i)
        R.equal("60 APPENDs OK'd with node 3 down", len(oks), 61)
        masters = [n for n in (n1, n2) if n.cli("master", "show", "-u", user).stdout
                   .decode().find("is_master: yes") >= 0]
        R.check("one of the running nodes is master", len(masters) == 1, masters)
        if masters:
            st = masters[0].status()
            R.equal("node 3 is marked for a full resync", st.get("peer.3.full_sync"), "yes")
            R.equal("...and no longer counts in the backlog", st.get("peer.3.backlog"), 0)
        m.logout()
        n3.start()
        c.wait_links_up(timeout=40)
        t0 = time.monotonic()
        try:
            c.wait_dumps_equal(user, timeout=60)
            R.check("node 3 converged after its restart", True)
            print("measured: node 3 past the log bound converged %.2f s after its links were up"
                  % (time.monotonic() - t0))
        except TimeoutError as e:
            R.check("node 3 converged after its restart", False, str(e)[:300])
        if masters:
            R.check("the full-resync mark went away",
                    wait_for(lambda: status(masters[0], "peer.3.full_sync") == "no", 20))
        check_every_ok_once(c, user, oks, "log bound")
    finally:
        c.close()
        reps = c.sanitizer_reports()
        R.check("log bound: no sanitizer report", not reps, reps)


def t_partition(keep_writing):
    what = "partition" + (" healed under load" if keep_writing else "")
    user = ("part%d@example.com" % int(keep_writing))
    c = Cluster(n=3, proxies=True, users={user: PASSWORD})
    try:
        c.start_all()
        c.wait_links_up(timeout=40)
        n1, n2, n3 = c.nodes
        m1 = login(n1, user)
        oks = []
        for i in range(5):
            if append(m1, "before-%d" % i):
                oks.append("before-%d" % i)
        c.wait_dumps_equal(user, timeout=30)
        _, uv_before = inbox(n1, user)
        for other in (1, 2):
            c.cut(3, other)
        # Node 3 notices within the keepalive's dead timeout.
        R.check("%s: node 3 sees both links down" % what,
                wait_for(lambda: status(n3, "peer.1") != "up" and status(n3, "peer.2") != "up",
                         15))
        m1 = login(n1, user)
        m3 = login(n3, user)
        # Flags and expunges on both sides of the same mailbox.
        expunged = []
        for m, flag, victim in ((m1, "\\Answered", "before-1"), (m3, "\\Draft", "before-2")):
            m.select("INBOX")
            typ, data = m.uid("SEARCH", "HEADER", "Subject", victim)
            uids = data[0].split() if typ == "OK" and data and data[0] else []
            R.check("%s: %s found on its side" % (what, victim), len(uids) == 1, data)
            R.check("%s: STORE on its side" % what,
                    m.uid("STORE", "1:*", "+FLAGS", "(%s)" % flag)[0] == "OK")
            if uids:
                m.uid("STORE", uids[0], "+FLAGS", "(\\Deleted)")
                R.check("%s: EXPUNGE of %s on its side" % (what, victim), m.expunge()[0] == "OK")
                expunged.append(victim)
        oks = [o for o in oks if o not in expunged]
        before_sides = len(oks)
        for i in range(8):
            if append(m1, "side12-%d" % i, "(\\Flagged)"):
                oks.append("side12-%d" % i)
            if append(m3, "side3-%d" % i, "(\\Seen)"):
                oks.append("side3-%d" % i)
        R.equal("%s: every APPEND on both sides OK'd" % what, len(oks) - before_sides, 16)
        stop = threading.Event()
        late = []

        def writer():
            m = login(n2, user)
            i = 0
            while not stop.is_set() and i < 200:
                if append(m, "late-%d" % i):
                    late.append("late-%d" % i)
                i += 1
            m.logout()
        th = None
        if keep_writing:
            th = threading.Thread(target=writer)
            th.start()
            time.sleep(0.3)
        t0 = time.monotonic()
        for other in (1, 2):
            c.restore(3, other)
        c.wait_links_up(timeout=40)
        if th is not None:
            time.sleep(1.0)
            stop.set()
            th.join(60)
            oks.extend(late)
            R.check("%s: appends went on during the heal" % what, len(late) > 0, len(late))
        try:
            c.wait_dumps_equal(user, timeout=90)
            R.check("%s: dumps identical after the heal" % what, True)
            print("measured: %s: dumps identical %.2f s after the links were restored"
                  % (what, time.monotonic() - t0))
        except TimeoutError as e:
            R.check("%s: dumps identical after the heal" % what, False, str(e)[:400])
        check_every_ok_once(c, user, oks, what)
        for node in c.nodes:
            msgs, uv = inbox(node, user)
            R.equal("%s: node %d kept UIDVALIDITY" % (what, node.node_id), uv, uv_before)
            gone = [s for _, s in msgs if s in expunged]
            R.check("%s: node %d: what either side expunged is gone" % (what, node.node_id),
                    not gone, gone)
    finally:
        if os.environ.get("CATCHUP_KEEP"):
            for node in c.nodes:
                print("---- log of node %d" % node.node_id)
                print(node.log_text()[-6000:])
        c.close()
        reps = c.sanitizer_reports()
        R.check("%s: no sanitizer report" % what, not reps, reps)


def main():
    only = os.environ.get("CATCHUP_ONLY")
    scenarios = [("log bound", t_log_bound),
                 ("partition", lambda: t_partition(False)),
                 ("partition healed under load", lambda: t_partition(True))]
    for name, func in scenarios:
        if only is None or only == name:
            R.section(name, func)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
