#!/usr/bin/env python3
"""Resync cases of issue 7 with real starlingd nodes (SPEC.md 10).

Live replication copies what a node writes while its peers are up, so the
nodes here come apart by writing while they run without peers (what a node
writes alone is in no replication log; only a sync brings it over):

  - a node whose data dir was deleted restarts empty, and one `starling
    resync` restores everything (dumps identical);
  - a client that cached UIDs on one side of a partition (both sides
    APPENDing, EXPUNGE and STORE in the same mailbox) reconnects with
    QRESYNC after the resync: it is told the changes (VANISHED for what went
    away, FETCH for what is new or changed) and no UID it cached names
    another message now; UIDVALIDITY is unchanged;
  - the periodic check (STARLING_SYNC_CHECK_INTERVAL) finds nodes that
    differ and resyncs them by itself, and leaves equal nodes alone;
  - a mailbox of 20,000 messages resyncs to an empty node over a real link
    without the link dropping;
  - an EXPUNGE a client was told about on a node that was alone holds after
    the heal although the two other nodes' sync renumbered the message
    (SPEC.md 10.3 "A user's expunge"; the fault campaign's
    acked-expunge-holds);
  - the same when the expunging node first syncs with a node that never
    held the message, and the message reaches that node later from a third
    one that held it; a message moved out and back stays.

The last line is "test-sync-cases: N passed, M failed".
"""
import os
import re
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness import proc  # noqa: E402
from harness.imapwire import Client  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-sync-cases")
USER = "carol@example.com"
PASSWORD = "secret"
CLUSTERS = []
LARGE = int(os.environ.get("SYNC_LARGE_MESSAGES", "20000"))


def new_cluster(n, check_interval="0", proxies=False):
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = check_interval
    c = Cluster(n=n, users={USER: PASSWORD}, proxies=proxies,
                log_level=os.environ.get("SYNC_CASES_LOG_LEVEL", "info"))
    CLUSTERS.append(c)
    c.start_all()
    c.wait_links_up(timeout=40)
    return c


def finish_cluster(c):
    c.close()
    reps = c.sanitizer_reports()
    R.check("no sanitizer report in the node logs", not reps, reps)


def alone(c, node, work):
    """Runs work(node) while node runs without peers, then back in the
    cluster."""
    if node.running():
        node.stop()
    node.peer_ids = set()
    node.start()
    try:
        work(node)
    finally:
        node.stop()
        node.peer_ids = None
        node.start()
    c.wait_links_up(timeout=40)


def message(tag, i, pad=0):
    return ("From: %s@example.com\r\nSubject: %s message %d\r\n"
            "Message-ID: <%s.%d@example.com>\r\n\r\nbody %s/%d\r\n%s"
            % (tag, tag, i, tag, i, tag, i, "x" * pad)).encode()


def resync(node, peer=None, full=False, timeout=300):
    args = ["resync", "-u", USER]
    if peer is not None:
        args += ["--peer", str(peer)]
    if full:
        args.append("--full")
    r = node.cli(*args, timeout=timeout)
    report = {}
    for line in r.stdout.decode(errors="replace").splitlines():
        k, sep, v = line.partition(": ")
        if sep and k != "peer":
            report[k] = v
    return r, report


def login(node):
    a = Client(node.host, node.imap_port, timeout=120)
    a.login(USER, PASSWORD)
    return a


def append_many(node, msgs, mailbox="INBOX"):
    """APPENDs msgs over one IMAP session, pipelined (LITERAL+)."""
    a = login(node)
    tags = []
    for m in msgs:
        t = a.next_tag()
        a.send(b"%s APPEND %s {%d+}\r\n%s\r\n" % (t.encode(), mailbox.encode(), len(m), m))
        tags.append(t)
    ok = all(a.wait_tagged(t).ok for t in tags)
    a.command("LOGOUT")
    return ok


def uid_msgids(a):
    """{uid: Message-ID} of the selected mailbox."""
    r = a.command("UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    out = {}
    for _, items in r.fetches():
        hdr = b""
        for k, v in items.items():
            if k.startswith("BODY[") and isinstance(v, bytes):
                hdr = v
        m = re.search(rb"<([^>]+)>", hdr)
        out[items["UID"]] = m.group(1).decode() if m else None
    return out


def link_drops(node, since):
    """Lines of node's log after offset since that say a link went down."""
    with open(node.log, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
    return [ln for ln in text.splitlines() if "link down" in ln or "timed out" in ln]


def log_size(node):
    return os.path.getsize(node.log)


def quiescent(node, peer):
    """True when node has no background resync queued and none pending for
    peer (one that is running is not counted: an asked resync waits for
    it)."""
    st = node.status()
    return (int(st.get("resyncs_queued", 0)) == 0 and
            int(st.get("peer.%d.resync_pending_users" % peer, 0)) == 0)


def t_wiped_node():
    c = new_cluster(2)
    n1, n2 = c.nodes
    # Mail written with both up (live replication), and mail written on
    # node 1 alone.
    R.check("5 messages appended with both nodes up",
            append_many(n1, [message("both", i) for i in range(5)]))
    c.wait_dumps_equal(USER, timeout=60)
    ok = []
    alone(c, n1, lambda nd: ok.append(append_many(nd, [message("alone", i) for i in range(7)])))
    R.check("7 more appended on node 1 alone", ok == [True])
    a = login(n1)
    a.command("CREATE Projects")
    a.command("SUBSCRIBE Projects")
    r = a.command("APPEND Projects (\\Flagged) {%d+}\r\n%s" % (
        len(message("proj", 0)), message("proj", 0).decode()))
    R.check("APPEND to a new mailbox on node 1", r.ok, r)
    a.command("LOGOUT")
    # Settle before the wipe.  Writing to Projects made node 1 its master,
    # which queues a background resync with node 2; stopped in the middle
    # of it, node 2 would stay pending on node 1, which would resync it by
    # itself as soon as it is back, before the resync this case is about
    # (and the check that node 2 differs would race it).  An asked resync
    # waits for a running background one: once none is queued and an asked
    # one converged, nothing is left to start when node 2 returns.
    proc.wait_for(lambda: quiescent(n1, 2) and quiescent(n2, 1), 60,
                  what="no resync queued on either node")
    r, rep = resync(n1, peer=2)
    R.check("nodes settled before the wipe (resync from node 1 converged)",
            r.returncode == 0 and rep.get("converged") == "yes", (r.stdout, r.stderr))
    proc.wait_for(lambda: quiescent(n1, 2), 60, what="no resync queued on node 1")
    before = n1.dump(USER)
    n2.stop()
    import shutil
    shutil.rmtree(n2.data_dir)
    # Read while node 2 is stopped: what it starts with, not what a sync
    # may have brought by the time a running node answers.
    R.check("node 2's wiped store differs from node 1 (read before it starts)",
            n2.dump(USER) != before)
    n2.start()
    c.wait_links_up(timeout=40)
    r, rep = resync(n2, peer=1)
    R.check("resync on the wiped node exits 0 and converged",
            r.returncode == 0 and rep.get("converged") == "yes", (r.stdout, r.stderr))
    R.check("it received every message (13)", int(rep.get("messages_received", "0")) >= 13,
            rep)
    d1, d2 = n1.dump(USER), n2.dump(USER)
    R.check("the wiped node's dump is identical to the other's", d1 == d2 and d1 == before,
            (d1[:1500], d2[:1500]))
    finish_cluster(c)


def mailbox_names(node):
    return sorted(re.findall(r"^mailbox (\S+) guid=", node.dump(USER), re.M))


def t_concurrent_renames():
    # The periodic check is off: only what replication itself does may
    # bring the two names together.
    c = new_cluster(2, proxies=True)
    n1, n2 = c.nodes
    a = login(n1)
    r = a.command("CREATE Shared")
    R.check("CREATE Shared", r.ok, r)
    for i in range(3):
        m = message("ren", i)
        a.command("APPEND Shared {%d+}\r\n%s" % (len(m), m.decode()))
    a.command("LOGOUT")
    c.wait_dumps_equal(USER, timeout=60)
    # Each node renames the mailbox while the link holds every byte back
    # (for well under the 3 s dead timeout), so both renames are made
    # before either node hears of the other's: they cross on the link.
    c.blackhole(1, 2)
    a1, a2 = login(n1), login(n2)
    t1, t2 = a1.next_tag(), a2.next_tag()
    a1.send(b"%s RENAME Shared Left\r\n" % t1.encode())
    a2.send(b"%s RENAME Shared Right\r\n" % t2.encode())
    proc.wait_for(lambda: "Left" in mailbox_names(n1) and "Right" in mailbox_names(n2), 10,
                  what="both renames made locally")
    c.restore(1, 2)
    r1, r2 = a1.wait_tagged(t1), a2.wait_tagged(t2)
    R.check("both RENAMEs answered OK", r1.ok and r2.ok, (r1, r2))
    a1.command("LOGOUT")
    a2.command("LOGOUT")
    deadline = time.monotonic() + 30
    names = (None, None)
    while time.monotonic() < deadline:
        names = (mailbox_names(n1), mailbox_names(n2))
        if names[0] == names[1] and "Shared" not in names[0]:
            break
        time.sleep(0.2)
    R.check("both nodes end with the mailbox under the same name", names[0] == names[1], names)
    R.check("that name is one of the two renames",
            ("Left" in names[0]) != ("Right" in names[0]) and "Shared" not in names[0], names)
    try:
        d = c.wait_dumps_equal(USER, timeout=30)
        R.check("dumps identical, its 3 messages there once",
                len(re.findall(r"^msg (Left|Right) ", d, re.M)) == 3, d[:1500])
    except TimeoutError as e:
        R.check("dumps identical", False, str(e))
    finish_cluster(c)


def t_qresync_after_partition():
    c = new_cluster(2)
    n1, n2 = c.nodes
    R.check("10 messages appended with both nodes up",
            append_many(n1, [message("base", i) for i in range(10)]))
    c.wait_dumps_equal(USER, timeout=60)
    cached = {}

    def side1(nd):
        a = login(nd)
        a.command("SELECT INBOX")
        a.command("UID STORE 2 +FLAGS.SILENT (\\Deleted)")
        a.command("EXPUNGE")
        a.command("UID STORE 3 +FLAGS.SILENT (\\Flagged)")
        a.command("LOGOUT")
        append_many(nd, [message("n1", i) for i in range(3)])

    def side2(nd):
        append_many(nd, [message("n2", i) for i in range(2)])
        a = login(nd)
        a.command("ENABLE QRESYNC")
        r = a.command("SELECT INBOX")
        cached["uidvalidity"] = int(r.codes().get("UIDVALIDITY", b"0"))
        cached["modseq"] = int(r.codes().get("HIGHESTMODSEQ", b"0"))
        a.command("UID STORE 5 +FLAGS.SILENT (\\Seen)")
        cached["uids"] = uid_msgids(a)
        a.command("LOGOUT")

    alone(c, n1, side1)
    alone(c, n2, side2)
    R.check("the client on node 2 cached 12 UIDs (10 + its 2 new)",
            len(cached.get("uids", {})) == 12, cached.get("uids"))
    r, rep = resync(n1, peer=2)
    R.check("resync after the partition exits 0 and converged",
            r.returncode == 0 and rep.get("converged") == "yes", (r.stdout, r.stderr))
    R.check("UIDs used on both sides were renumbered", int(rep.get("renumbered", "0")) >= 1,
            rep)
    R.check("dumps identical after the resync", n1.dump(USER) == n2.dump(USER))

    a = login(n2)
    a.command("ENABLE QRESYNC")
    known = ",".join(str(u) for u in sorted(cached["uids"]))
    r = a.command("SELECT INBOX (QRESYNC (%d %d %s))"
                  % (cached["uidvalidity"], cached["modseq"], known))
    R.check("SELECT with QRESYNC answers OK", r.ok, r)
    R.equal("UIDVALIDITY unchanged by the resync",
            int(r.codes().get("UIDVALIDITY", b"0")), cached["uidvalidity"])
    vanished = set()
    for _, uids in r.vanished():
        vanished.update(uids)
    told = {items["UID"] for _, items in r.fetches() if "UID" in items}
    now = uid_msgids(a)
    a.command("LOGOUT")
    wrong = {u: (m, now.get(u)) for u, m in cached["uids"].items()
             if u in now and now[u] != m}
    R.check("no cached UID names another message after the resync", not wrong, wrong)
    gone = {u for u in cached["uids"] if u not in now}
    R.check("every cached UID that went away is reported VANISHED", gone <= vanished,
            (gone, vanished))
    new = {u for u, m in now.items() if m not in cached["uids"].values()}
    R.check("every message the client has not seen is reported (FETCH)", new <= told,
            (new, told))
    R.check("node 1's 3 and node 2's 2 partition messages are all there",
            sum(1 for m in now.values() if m and (m.startswith("n1.") or m.startswith("n2.")))
            == 5, now)
    R.check("the message expunged on node 1 is gone on node 2",
            "base.1@example.com" not in now.values(), now)
    finish_cluster(c)


def msgids_on(node, mailbox="INBOX"):
    a = login(node)
    a.command("SELECT %s" % mailbox)
    ids = uid_msgids(a)
    a.command("LOGOUT")
    return ids


def start_alone(node):
    node.stop()
    node.peer_ids = set()
    node.start()


def start_linked(node, peers=None):
    node.stop()
    node.peer_ids = peers
    node.start()


def y_at_the_uid_of_an_expunged_x(n1, holder, away):
    """X reaches holder by replication from node 1 while away is down;
    away, alone, saves Y at X's UID; node 1, alone, expunges X (the client
    is told).  Returns X's UID; all three nodes are left stopped."""
    away.stop()
    R.check("X appended on node 1", append_many(n1, [message("x", 0)]))
    for _ in range(200):
        if "x.0@example.com" in msgids_on(holder).values():
            break
        time.sleep(0.05)
    x_uid = [u for u, m in msgids_on(holder).items() if m == "x.0@example.com"]
    R.check("X replicated to node %d" % holder.node_id, len(x_uid) == 1, x_uid)
    n1.stop()
    holder.stop()
    start_alone(away)
    R.check("Y appended on node %d alone" % away.node_id, append_many(away, [message("y", 0)]))
    y_uid = [u for u, m in msgids_on(away).items() if m == "y.0@example.com"]
    R.check("Y took X's UID there", y_uid == x_uid, (x_uid, y_uid))
    away.stop()
    start_alone(n1)
    a = login(n1)
    a.command("SELECT INBOX")
    uid = [u for u, m in uid_msgids(a).items() if m == "x.0@example.com"]
    a.command("UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid[0])
    r = a.command("UID EXPUNGE %d" % uid[0])
    R.check("UID EXPUNGE of X on node 1: OK", r.ok, r)
    a.command("LOGOUT")
    n1.stop()
    return x_uid


def meet(c, a, b):
    """Starts nodes a and b linked to each other alone; a resyncs with b."""
    start_linked(a, {b.node_id})
    start_linked(b, {a.node_id})
    c.wait_links_up(timeout=40, nodes=[a, b])
    r, rep = resync(a, peer=b.node_id)
    R.check("the resync of nodes %d and %d converged" % (a.node_id, b.node_id),
            rep.get("converged") == "yes", (r.stdout, r.stderr))


def heal_keeps_x_expunged(c):
    """The heal after y_at_the_uid_of_an_expunged_x(): all nodes linked and
    resynced, X is expunged everywhere and Y and the 3 others are kept."""
    n1, n2, n3 = c.nodes
    start_linked(n2, None)
    start_linked(n3, None)
    start_linked(n1, None)
    c.wait_links_up(timeout=40)
    for node in (n1, n2, n3):
        r, rep = resync(node)
        R.check("the resync from node %d converged" % node.node_id,
                rep.get("converged") == "yes", (r.stdout, r.stderr))
    c.wait_dumps_equal(USER, timeout=60)
    for node in (n1, n2, n3):
        ids = msgids_on(node)
        R.check("X stays expunged on node %d" % node.node_id,
                "x.0@example.com" not in ids.values(), ids)
        R.check("Y and the 3 others are on node %d" % node.node_id,
                sorted(m for m in ids.values()) ==
                ["base.0@example.com", "base.1@example.com", "base.2@example.com",
                 "y.0@example.com"], ids)


def t_acked_expunge_after_renumber():
    c = new_cluster(3)
    n1, n2, n3 = c.nodes
    R.check("3 messages appended with all nodes up",
            append_many(n1, [message("base", i) for i in range(3)]))
    c.wait_dumps_equal(USER, timeout=60)
    # X reaches nodes 1 and 2; node 3, alone, saves Y at X's UID.
    x_uid = y_at_the_uid_of_an_expunged_x(n1, n2, n3)
    # Nodes 2 and 3 meet without node 1: their sync renumbers X.
    meet(c, n2, n3)
    moved = [u for u, m in msgids_on(n2).items() if m == "x.0@example.com"]
    R.check("X now lives under another UID on node 2", len(moved) == 1 and moved != x_uid,
            (x_uid, moved))
    heal_keeps_x_expunged(c)
    finish_cluster(c)


def t_acked_expunge_reaches_third_node():
    """The open half of acked-expunge-holds: node 2 never held X, node 1's
    user expunged it, and X reaches node 2 later from node 3 (which held it
    and was apart).  Each pair meets in turn; a node alone writes into no
    replication log, so only the syncs carry anything, in this order."""
    c = new_cluster(3)
    n1, n2, n3 = c.nodes
    R.check("3 messages appended with all nodes up",
            append_many(n1, [message("base", i) for i in range(3)]))
    a = login(n1)
    R.check("CREATE Keep", a.command("CREATE Keep").ok)
    a.command("LOGOUT")
    c.wait_dumps_equal(USER, timeout=60)
    # X reaches nodes 1 and 3; node 2, alone, saves Y at X's UID.
    y_at_the_uid_of_an_expunged_x(n1, n3, n2)
    # Nodes 1 and 2 meet: Y moves; node 2 never held X.
    meet(c, n1, n2)
    ids2 = msgids_on(n2)
    R.check("node 2 has Y and not X", "y.0@example.com" in ids2.values() and
            "x.0@example.com" not in ids2.values(), ids2)
    n1.stop()
    n2.stop()
    # Nodes 2 and 3 meet without node 1: node 3 still holds X.
    meet(c, n2, n3)
    for node in (n2, n3):
        ids = msgids_on(node)
        R.check("after nodes 2 and 3 met, X is not on node %d" % node.node_id,
                "x.0@example.com" not in ids.values(), ids)
    heal_keeps_x_expunged(c)
    # A message moved out and back is a new message in INBOX, not one an
    # expunge missed: it stays on every node although its first copy's
    # expunge (the MOVE out) is remembered there.
    a = login(n1)
    a.command("SELECT INBOX")
    b0 = [u for u, m in uid_msgids(a).items() if m == "base.0@example.com"]
    R.check("MOVE base.0 to Keep", a.command("UID MOVE %d Keep" % b0[0]).ok)
    a.command("SELECT Keep")
    R.check("MOVE base.0 back to INBOX", a.command("UID MOVE 1:* INBOX").ok)
    a.command("LOGOUT")
    c.wait_dumps_equal(USER, timeout=60)
    for node in (n1, n2, n3):
        r, rep = resync(node)
        R.check("the resync from node %d after the moves converged" % node.node_id,
                rep.get("converged") == "yes", (r.stdout, r.stderr))
    c.wait_dumps_equal(USER, timeout=60)
    for node in (n1, n2, n3):
        ids = msgids_on(node)
        R.check("base.0, moved out and back, is in INBOX on node %d" % node.node_id,
                "base.0@example.com" in ids.values(), ids)
        R.check("Keep is empty on node %d" % node.node_id,
                not msgids_on(node, "Keep"), msgids_on(node, "Keep"))
    finish_cluster(c)


def t_periodic_check():
    c = new_cluster(2, check_interval="0.5")
    n1, n2 = c.nodes
    ok = []
    alone(c, n2, lambda nd: ok.append(append_many(nd, [message("p", i) for i in range(4)])))
    R.check("4 messages appended on node 2 alone", ok == [True])
    t0 = time.monotonic()
    equal = False
    while time.monotonic() - t0 < 30 and not equal:
        equal = n1.dump(USER) == n2.dump(USER)
        time.sleep(0.3)
    print("measured: the periodic check (0.5 s) brought the nodes together after %.1f s"
          % (time.monotonic() - t0))
    R.check("without any resync asked, the nodes converge within 30 s", equal)
    logs = n1.log_text() + n2.log_text()
    R.check("the log says the check queued the resync", "sync check: " in logs and
            "resync queued" in logs, logs[-2000:])
    # Equal nodes: the checks keep running and queue nothing.
    marks = [log_size(n) for n in c.nodes]
    time.sleep(3)
    quiet = True
    for n, m in zip(c.nodes, marks):
        with open(n.log, "rb") as f:
            f.seek(m)
            quiet = quiet and b"resync queued" not in f.read()
    R.check("equal nodes: 3 s of checks queue no resync", quiet)
    # A rename made alone changes no UIDNEXT, HIGHESTMODSEQ or digest:
    # only the names differ, and the check must see that too.
    a = login(n1)
    R.check("CREATE Notes", a.command("CREATE Notes").ok)
    # Tombstones in the LIST answers (a deleted mailbox, an unsubscribed
    # name) must not keep the check from comparing.
    R.check("CREATE Scratch", a.command("CREATE Scratch").ok)
    R.check("DELETE Scratch", a.command("DELETE Scratch").ok)
    R.check("UNSUBSCRIBE INBOX", a.command("UNSUBSCRIBE INBOX").ok)
    a.command("LOGOUT")
    c.wait_dumps_equal(USER, timeout=30)
    renamed = []
    alone(c, n2, lambda nd: renamed.append(login(nd).command("RENAME Notes Memo").ok))
    R.check("Notes renamed Memo on node 2 alone", renamed == [True])
    marks = [log_size(n) for n in c.nodes]
    t0 = time.monotonic()
    names = (None, None)
    while time.monotonic() - t0 < 30:
        names = (mailbox_names(n1), mailbox_names(n2))
        if names[0] == names[1]:
            break
        time.sleep(0.3)
    print("measured: the periodic check brought a renamed mailbox together after %.1f s"
          % (time.monotonic() - t0))
    R.check("the rename reaches node 1 within 30 s", names[0] == names[1] and
            "Memo" in names[0] and "Notes" not in names[0], names)
    later = b""
    for n, m in zip(c.nodes, marks):
        with open(n.log, "rb") as f:
            f.seek(m)
            later += f.read()
    R.check("the check found the names differing and queued the resync",
            b"sync check: " in later and b"resync queued" in later, later[-2000:])
    finish_cluster(c)


def t_large_mailbox():
    c = new_cluster(2)
    n1, n2 = c.nodes
    ok = []
    t0 = time.monotonic()
    alone(c, n1, lambda nd: ok.append(append_many(
        nd, [message("big", i, pad=200 + (i * 37) % 1500) for i in range(LARGE)])))
    print("measured: %d messages appended on node 1 alone in %.1f s"
          % (LARGE, time.monotonic() - t0))
    R.check("%d messages appended on node 1 alone" % LARGE, ok == [True])
    marks = [log_size(n) for n in c.nodes]
    t0 = time.monotonic()
    r, rep = resync(n2, peer=1, timeout=600)
    dt = time.monotonic() - t0
    print("measured: resync of %d messages to node 2 took %.1f s" % (LARGE, dt))
    R.check("resync of the large mailbox exits 0 and converged",
            r.returncode == 0 and rep.get("converged") == "yes", (r.stdout, r.stderr))
    R.equal("it received every message", rep.get("messages_received"), str(LARGE))
    drops = [d for n, m in zip(c.nodes, marks) for d in link_drops(n, m)]
    R.check("no link went down during the resync", not drops, drops)
    if drops or r.returncode != 0:
        for n, m in zip(c.nodes, marks):
            with open(n.log, "rb") as f:
                f.seek(m)
                print("--- node %d log during the resync:\n%s"
                      % (n.node_id, f.read().decode(errors="replace")[-4000:]))
    R.check("dumps identical", n1.dump(USER) == n2.dump(USER))
    finish_cluster(c)


def main():
    only = sys.argv[1:]
    for name, func in (("a wiped node is restored by one resync", t_wiped_node),
                       ("two concurrent RENAMEs end under one name", t_concurrent_renames),
                       ("QRESYNC client after a partition and resync", t_qresync_after_partition),
                       ("the periodic check", t_periodic_check),
                       ("an acknowledged EXPUNGE holds against a renumbered copy",
                        t_acked_expunge_after_renumber),
                       ("an acknowledged EXPUNGE reaches a node that never held the message",
                        t_acked_expunge_reaches_third_node),
                       ("a %d-message mailbox over a real link" % LARGE, t_large_mailbox)):
        if not only or func.__name__ in only:
            R.section(name, func)
    for cl in CLUSTERS:
        cl.close()
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
