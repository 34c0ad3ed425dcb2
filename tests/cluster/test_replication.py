#!/usr/bin/env python3
"""Replication through the mailbox master between real starlingd nodes
(issue 6), through the user-visible interfaces only: IMAP, `starling dump`,
`starling status` and `starling master show`.

Three nodes with sync_replicas = 1, every directed peer link through a
LinkProxy (tests/harness/linkproxy.py).  Each section has its own user, so
that a section that leaves a user's copies different does not fail the
next ones.  Checked here:

  - an APPEND OK'd on any node is on every node soon after, with the UID
    of its APPENDUID everywhere, and the dumps end byte-identical;
  - 3 clients APPEND to one mailbox on the three nodes at once: every OK'd
    message (a unique Message-ID) is on every node exactly once, at the UID
    its APPENDUID named, and the dumps are identical;
  - kill -9 of a replica while clients APPEND on the other nodes, restart:
    it catches up, nothing OK'd is lost;
  - kill -9 of the mailbox's master (`starling master show`) while clients
    APPEND on all nodes: after failover every OK'd APPEND is on the
    survivors exactly once and their dumps are equal, and so on all three
    once the old master is back (twice, with two users);
  - the master's links go silent (blackhole) while clients on the other
    nodes APPEND through it: after the heal every OK'd message is on every
    node exactly once (a forwarded APPEND whose answer was lost is not
    stored twice);
  - a 4 MB APPEND on a node that is not the master reaches every node
    intact; EXPUNGEs on one node racing STOREs of the same messages on
    another end with the messages expunged and equal flags and modseqs;
  - sync_replicas = 1: with both replicas stopped (SIGSTOP) an APPEND on the
    master is not answered; it is as soon as one replica runs again;
  - concurrent conflicting STOREs on two nodes: every node ends with the
    same FLAGS and MODSEQ per message (CONDSTORE); STORE (UNCHANGEDSINCE
    stale) right after another node's change is refused with MODIFIED on
    every node, master or not;
  - IDLE on node B sees * n EXISTS for an APPEND on node A within 5 s
    (the delays are printed), and * n FETCH (FLAGS ...) for a STORE;
  - `starling status` shows peer.N, peer.N.backlog and peer.N.lag_ms; with
    the master's link to a replica cut, the backlog grows; restored, it
    drains to 0 and the dumps become equal;
  - CREATE, RENAME, DELETE, SUBSCRIBE, UNSUBSCRIBE on one node appear on
    the others (LIST, LSUB, dump);
  - `starling deliver` on one node reaches every node; COPY and MOVE make a
    message with a GUID of its own, the same on every node (SPEC.md 6.4);
    EXPUNGE and MOVE made on one node show
    as EXPUNGE in an IDLE session on another;
  - the master cut off from both peers while clients write on both sides
    (each side goes on by itself), then healed: every node ends with every
    OK'd message exactly once, identical dumps and one master.

Waits are bounded (CONVERGE seconds for replication to show, CATCH_UP after
a restart or a heal).  Figures are printed as "measured: ...".  ONLY=word,...
runs only the sections whose names contain one of the words.  The last line
is "test-replication: N passed, M failed".
"""
import os
import re
import statistics
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness.imapwire import Client, Literal, quote  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-replication")
DOMAIN = "example.com"
PASSWORD = "secret"
# How long a change may take to show on every node, CLI polling and
# sanitizers included; after a restart the node must also catch up.
CONVERGE = 20.0
CATCH_UP = 40.0
IDLE_BOUND = 5.0
CLUSTER = None


# ---------------------------------------------------------------- helpers
def user(section):
    return "r%s@%s" % (section, DOMAIN)


def message(tag, i, size=0):
    body = "body of %s/%d\r\n" % (tag, i)
    if size > len(body):
        body += ("x" * 70 + "\r\n") * ((size - len(body)) // 72)
    return ("From: t@%s\r\nTo: u@%s\r\nSubject: %s %d\r\n"
            "Message-ID: <%s.%d@test.example.com>\r\n\r\n%s"
            % (DOMAIN, DOMAIN, tag, i, tag, i, body)).encode()


def msgid(tag, i):
    return "<%s.%d@test.example.com>" % (tag, i)


def login(node, usr, timeout=30.0):
    c = Client(node.host, node.imap_port, timeout=timeout)
    r = c.login(usr, PASSWORD)
    if not r.ok:
        raise RuntimeError("login %s on node %d: %r" % (usr, node.node_id, r))
    return c


def append(c, mailbox, data):
    """(ok, uid or None, response)"""
    r = c.command("APPEND", quote(mailbox), Literal(data, plus=True))
    uid = None
    if r.ok and r.code == "APPENDUID" and r.code_args:
        parts = r.code_args.split()
        if len(parts) == 2 and parts[1].isdigit():
            uid = int(parts[1])
    return r.ok, uid, r


def status_text(node, timeout=15):
    """`starling status` as {key: value} (text form), or None."""
    try:
        r = node.cli("status", timeout=timeout)
    except Exception:  # noqa: BLE001 -- CLI timeout
        return None
    if r.returncode != 0:
        return None
    out = {}
    for line in r.stdout.decode(errors="replace").splitlines():
        k, sep, v = line.partition(": ")
        if sep:
            out[k.strip()] = v.strip()
    return out


def master_of(node, usr, mailbox="INBOX", timeout=30.0):
    """SID of the mailbox's master as `starling master show` prints it on
    node, retried until it answers (bounded), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = node.cli("master", "show", "-u", usr, "-m", mailbox, timeout=20)
        except Exception:  # noqa: BLE001 -- CLI timeout
            r = None
        if r is not None and r.returncode == 0:
            m = re.search(rb"^master: (\d+)$", r.stdout, re.M)
            if m and int(m.group(1)) != 0:
                return int(m.group(1))
        time.sleep(0.2)
    return None


def message_ids(node, usr, mailbox="INBOX"):
    """{Message-ID: [uids]} of the mailbox on node, read over IMAP."""
    c = login(node, usr)
    try:
        r = c.command("EXAMINE", quote(mailbox))
        if not r.ok:
            raise RuntimeError("EXAMINE %s on node %d: %r" % (mailbox, node.node_id, r))
        out = {}
        if not r.number("EXISTS"):
            return out
        r = c.command("UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        if not r.ok:
            raise RuntimeError("FETCH on node %d: %r" % (node.node_id, r))
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


def dumps(nodes, usr):
    out = {}
    for n in nodes:
        try:
            out[n.node_id] = n.dump(usr, timeout=30)
        except Exception as e:  # noqa: BLE001 -- a node that cannot answer
            out[n.node_id] = "ERROR %s" % e
    return out


def wait_dumps_equal(nodes, usr, timeout=CONVERGE, pred=None):
    """Polls `starling dump` on every node until all are identical (and
    pred(dump) holds); returns (seconds or None, {node: dump})."""
    t0 = time.monotonic()
    d = {}
    while True:
        d = dumps(nodes, usr)
        vals = list(d.values())
        if (all(v == vals[0] for v in vals) and not vals[0].startswith("ERROR") and
                (pred is None or pred(vals[0]))):
            return time.monotonic() - t0, d
        if time.monotonic() - t0 >= timeout:
            return None, d
        time.sleep(0.2)


def dump_difference(d):
    ids = sorted(d)
    base = set(d[ids[0]].splitlines())
    out = {}
    for i in ids[1:]:
        other = set(d[i].splitlines())
        out["only on %d vs %d" % (ids[0], i)] = sorted(base - other)[:6]
        out["only on %d vs %d" % (i, ids[0])] = sorted(other - base)[:6]
    return out


def msg_lines(dump, mailbox="INBOX"):
    return [ln for ln in dump.splitlines() if ln.startswith("msg %s " % mailbox)]


def check_dumps_equal(what, nodes, usr, timeout=CONVERGE, pred=None):
    t, d = wait_dumps_equal(nodes, usr, timeout, pred)
    R.check("%s: dumps identical on nodes %s within %.0f s" %
            (what, ",".join(str(n.node_id) for n in nodes), timeout),
            t is not None, dump_difference(d) if t is None else None)
    if t is not None:
        print("measured: %s: dumps equal after %.2f s (CLI polling included)" % (what, t))
    return t is not None, d


def prepare_user(c, usr, node=None):
    """Creates the user's default mailboxes on one node (first login) and
    waits until every node has them; a check of mailbox-list replication."""
    node = node or c.nodes[0]
    cl = login(node, usr)
    r = cl.command("SELECT INBOX")
    cl.logout()
    if not r.ok:
        raise RuntimeError("SELECT INBOX on node %d: %r" % (node.node_id, r))
    ok, d = check_dumps_equal("default mailboxes of %s made on node %d" % (usr, node.node_id),
                              c.running_nodes(), usr,
                              pred=lambda x: "mailbox INBOX " in x)
    return ok


def node_logs_tail(nodes, n=25):
    return {x.node_id: x.log_tail(n) for x in nodes}


def ensure_all_up(c):
    for n in c.nodes:
        if not n.running():
            n.start()
    c.mesh.restore_all()
    c.wait_links_up(timeout=40)


class Appender(threading.Thread):
    """One IMAP client APPENDing count messages to a mailbox on one node,
    recording every OK (Message-ID -> APPENDUID UID) and every failure.
    After a failure it reconnects (bounded) and goes on, so clients of a
    surviving node keep writing through a failover; stop() ends it early."""

    def __init__(self, node, usr, tag, count, mailbox="INBOX", size=0, pause=0.0,
                 reconnect=True):
        threading.Thread.__init__(self, name="appender-%s" % tag, daemon=True)
        self.node, self.usr, self.tag, self.count = node, usr, tag, count
        self.mailbox, self.size, self.pause, self.reconnect = mailbox, size, pause, reconnect
        self.oks = {}        # msgid -> uid (None if no APPENDUID)
        self.ok_times = []   # monotonic time of each OK
        self.failures = []   # (i, reason)
        self.done_count = 0
        self._halt = threading.Event()

    def stop(self):
        self._halt.set()

    def run(self):
        c = None
        deadline = time.monotonic() + 300
        i = 0
        while i < self.count and not self._halt.is_set() and time.monotonic() < deadline:
            if c is None:
                try:
                    c = login(self.node, self.usr, timeout=15)
                except Exception as e:  # noqa: BLE001 -- node down
                    self.failures.append((i, "connect: %s" % e))
                    if not self.reconnect:
                        return
                    time.sleep(0.3)
                    continue
            try:
                ok, uid, r = append(c, self.mailbox, message(self.tag, i, self.size))
            except Exception as e:  # noqa: BLE001 -- connection lost
                self.failures.append((i, "%s: %s" % (type(e).__name__, e)))
                c.close()
                c = None
                i += 1
                if not self.reconnect:
                    return
                continue
            if ok:
                self.oks[msgid(self.tag, i)] = uid
                self.ok_times.append(time.monotonic())
            else:
                self.failures.append((i, r.line[:200]))
                if r.status == "CLOSED":
                    c.close()
                    c = None
            i += 1
            self.done_count = i
            if self.pause:
                time.sleep(self.pause)
        if c is not None:
            c.logout()


def run_appenders(apps, timeout=240):
    for a in apps:
        a.start()
    deadline = time.monotonic() + timeout
    for a in apps:
        a.join(max(0.1, deadline - time.monotonic()))
    for a in apps:
        if a.is_alive():
            a.stop()
            a.join(20)
    return all(not a.is_alive() for a in apps)


def start_appenders(apps):
    """Starts apps; returns once each has 10 APPENDs done (at most 30 s),
    for a fault under load."""
    for a in apps:
        a.start()
    deadline = time.monotonic() + 30
    while min(a.done_count for a in apps) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)


def join_appenders(apps):
    """Waits for apps (240 s each), then stops those still running."""
    for a in apps:
        a.join(240)
    for a in apps:
        if a.is_alive():
            a.stop()
            a.join(20)


def check_oks_present(what, nodes, usr, oks, mailbox="INBOX", check_uids=True):
    """Every OK'd Message-ID is on every node exactly once (at its
    APPENDUID UID when known); no Message-ID is there twice."""
    for n in nodes:
        try:
            have = message_ids(n, usr, mailbox)
        except Exception as e:  # noqa: BLE001
            R.check("%s: node %d readable over IMAP" % (what, n.node_id), False, str(e))
            continue
        missing = sorted(m for m in oks if m not in have)
        dup = sorted(m for m, u in have.items() if len(u) > 1)
        R.check("%s: every one of the %d OK'd messages is on node %d" %
                (what, len(oks), n.node_id), not missing,
                "%d missing, e.g. %s" % (len(missing), missing[:5]))
        detail = None
        if dup:
            # What the node holds at those UIDs: same GUID twice, or two.
            lines = msg_lines(n.dump(usr), mailbox)
            detail = {m: [ln for ln in lines for u in have[m] if " uid=%d " % u in ln]
                      for m in dup[:5]}
        R.check("%s: no message twice on node %d" % (what, n.node_id), not dup, detail)
        if check_uids:
            wrong = [(m, u, have[m]) for m, u in oks.items()
                     if u is not None and m in have and have[m] != [u]]
            R.check("%s: on node %d every message has the UID its APPENDUID named" %
                    (what, n.node_id), not wrong, wrong[:5])


def fetch_flags_modseq(node, usr, mailbox="INBOX"):
    """{uid: (sorted flags, modseq)} over IMAP with CONDSTORE."""
    c = login(node, usr)
    try:
        c.command("ENABLE CONDSTORE")
        r = c.command("EXAMINE", quote(mailbox))
        if not r.ok or not r.number("EXISTS"):
            return {}
        r = c.command("UID FETCH 1:* (UID FLAGS MODSEQ)")
        out = {}
        for _seq, it in r.fetches():
            flags = sorted(f.decode() for f in it.get("FLAGS", []) if f != b"\\Recent")
            ms = it.get("MODSEQ")
            ms = int(ms[0]) if isinstance(ms, list) and ms else None
            out[it["UID"]] = (flags, ms)
        return out
    finally:
        c.logout()


# ---------------------------------------------------------------- sections
def t_setup():
    global CLUSTER
    users = {user(s): PASSWORD for s in range(1, 17)}
    c = Cluster(n=3, users=users, proxies=True, extra_config={"sync_replicas": 1})
    CLUSTER = c
    c.start_all()
    t = c.wait_links_up(timeout=40)
    print("measured: 3 nodes' links up %.2f s after start" % t)
    R.check("three nodes start and link up", True)


def t_append_reaches_every_node():
    c = CLUSTER
    usr = user(1)
    prepare_user(c, usr)
    oks = {}
    for node in c.nodes:
        cl = login(node, usr)
        ok, uid, r = append(cl, "INBOX", message("one", node.node_id))
        cl.logout()
        R.check("APPEND on node %d answers OK with APPENDUID" % node.node_id,
                ok and uid is not None, r)
        if not ok:
            continue
        oks[msgid("one", node.node_id)] = uid
        t0 = time.monotonic()
        want = len(oks)
        t, d = wait_dumps_equal(c.nodes, usr, CONVERGE,
                                pred=lambda x: len(msg_lines(x)) == want)
        R.check("the APPEND on node %d is on every node within %.0f s" %
                (node.node_id, CONVERGE), t is not None,
                {k: msg_lines(v) for k, v in d.items()})
        if t is not None:
            print("measured: APPEND on node %d in every dump after %.2f s (CLI polling "
                  "included)" % (node.node_id, time.monotonic() - t0))
    uids = [u for u in oks.values() if u is not None]
    R.check("the three APPENDs got three different UIDs", len(set(uids)) == len(uids), oks)
    check_oks_present("one APPEND per node", c.nodes, usr, oks)


def t_concurrent_appends():
    c = CLUSTER
    usr = user(2)
    prepare_user(c, usr)
    per = 50
    apps = [Appender(n, usr, "conc%d" % n.node_id, per, reconnect=False) for n in c.nodes]
    t0 = time.monotonic()
    finished = run_appenders(apps)
    dt = time.monotonic() - t0
    R.check("3 concurrent clients finished within the bound", finished)
    oks = {}
    for a in apps:
        oks.update(a.oks)
        R.check("every APPEND on node %d got OK" % a.node.node_id,
                len(a.oks) == per and not a.failures,
                "%d OK, failures %s" % (len(a.oks), a.failures[:3]))
    print("measured: 3 clients x %d APPENDs (one per node) took %.2f s: %.1f msgs/s "
          "(sanitizer build)" % (per, dt, len(oks) / dt if dt else 0))
    uids = [u for u in oks.values() if u is not None]
    R.check("every OK'd APPEND has an APPENDUID", len(uids) == len(oks))
    R.check("no UID was given to two messages", len(set(uids)) == len(uids),
            sorted(uids)[:20])
    ok, d = check_dumps_equal("3x%d concurrent APPENDs" % per, c.nodes, usr,
                              pred=lambda x: len(msg_lines(x)) >= len(oks))
    check_oks_present("3x%d concurrent APPENDs" % per, c.nodes, usr, oks)
    if ok:
        R.equal("the dump holds exactly the OK'd messages", len(msg_lines(list(d.values())[0])),
                len(oks))


def t_kill_replica():
    c = CLUSTER
    ensure_all_up(c)
    usr = user(3)
    prepare_user(c, usr)
    m = master_of(c.nodes[0], usr)
    R.check("node 1 names a master of INBOX", m is not None)
    if m is None:
        return
    replica = [n for n in c.nodes if n.node_id != m][-1]
    writers = [n for n in c.nodes if n is not replica]
    print("master of INBOX: %d; killing replica %d" % (m, replica.node_id))
    apps = [Appender(n, usr, "kr%d" % n.node_id, 60, pause=0.01) for n in writers]
    start_appenders(apps)
    replica.kill()
    t_kill = time.monotonic()
    join_appenders(apps)
    oks = {}
    for a in apps:
        oks.update(a.oks)
        after = sum(1 for t in a.ok_times if t > t_kill)
        R.check("writer on node %d got OKs after the replica died" % a.node.node_id,
                after > 0, "%d OKs after the kill, failures %s" % (after, a.failures[:3]))
        R.check("writer on node %d: every APPEND OK with a replica down" % a.node.node_id,
                not a.failures, a.failures[:5])
    ok, _ = check_dumps_equal("replica %d down, survivors" % replica.node_id, writers, usr,
                              pred=lambda x: len(msg_lines(x)) >= len(oks))
    check_oks_present("replica down, survivors", writers, usr, oks)
    t0 = time.monotonic()
    replica.start()
    c.wait_links_up(timeout=40)
    ok, _ = check_dumps_equal("replica %d restarted: catch-up" % replica.node_id, c.nodes, usr,
                              timeout=CATCH_UP, pred=lambda x: len(msg_lines(x)) >= len(oks))
    if ok:
        print("measured: restarted replica caught up %.2f s after its start" %
              (time.monotonic() - t0))
    else:
        print("logs:", node_logs_tail([replica]))
    check_oks_present("replica killed and restarted", c.nodes, usr, oks)


def t_kill_master(section=4):
    c = CLUSTER
    ensure_all_up(c)
    usr = user(section)
    prepare_user(c, usr)
    m = master_of(c.nodes[0], usr)
    R.check("node 1 names a master of INBOX", m is not None)
    if m is None:
        return
    victim = c.nodes[m - 1]
    survivors = [n for n in c.nodes if n is not victim]
    views = {n.node_id: master_of(n, usr) for n in c.nodes}
    R.check("every node names the same master", len(set(views.values())) == 1, views)
    print("master of INBOX: %d (killing it)" % m)
    apps = [Appender(n, usr, "km%d" % n.node_id, 60, pause=0.01,
                     reconnect=n is not victim) for n in c.nodes]
    start_appenders(apps)
    victim.kill()
    t_kill = time.monotonic()
    join_appenders(apps)
    oks = {}
    for a in apps:
        oks.update(a.oks)
    gaps = []
    for a in apps:
        if a.node is victim:
            continue
        after = [t for t in a.ok_times if t > t_kill]
        before = [t for t in a.ok_times if t <= t_kill]
        R.check("writer on surviving node %d gets OKs again after the master died" %
                a.node.node_id, bool(after),
                "failures %s" % a.failures[:5])
        if after:
            gaps.append((after[0] - t_kill, after[0] - (before[-1] if before else t_kill)))
        print("node %d: %d OK, %d failed (%s)" % (a.node.node_id, len(a.oks), len(a.failures),
                                                 a.failures[:3]))
    if gaps:
        print("measured: first OK on a survivor %.2f s after the master's kill -9, longest "
              "pause between two OKs on a survivor %.2f s (max over survivors)"
              % (max(g[0] for g in gaps), max(g[1] for g in gaps)))
    new_m = {n.node_id: master_of(n, usr) for n in survivors}
    R.check("the survivors agree on a new master among them",
            len(set(new_m.values())) == 1 and list(new_m.values())[0] in
            [n.node_id for n in survivors], new_m)
    ok, _ = check_dumps_equal("master %d killed, survivors" % m, survivors, usr,
                              timeout=CATCH_UP, pred=lambda x: len(msg_lines(x)) >= len(oks))
    # After a failover a message may have been renumbered by the sync
    # that reconciles the autonomous writes (UIDFIX), so UIDs are not
    # compared here; presence exactly once is.
    check_oks_present("master killed, survivors", survivors, usr, oks, check_uids=False)
    victim.start()
    c.wait_links_up(timeout=40)
    ok, _ = check_dumps_equal("old master %d restarted" % m, c.nodes, usr, timeout=CATCH_UP,
                              pred=lambda x: len(msg_lines(x)) >= len(oks))
    check_oks_present("old master back", c.nodes, usr, oks, check_uids=False)
    if not ok:
        print("logs:", node_logs_tail(c.nodes))


def t_conflicting_stores():
    c = CLUSTER
    ensure_all_up(c)
    usr = user(5)
    prepare_user(c, usr)
    cl = login(c.nodes[0], usr)
    for i in range(10):
        append(cl, "INBOX", message("st", i))
    cl.logout()
    check_dumps_equal("10 messages for STORE", c.nodes, usr,
                      pred=lambda x: len(msg_lines(x)) == 10)
    m = master_of(c.nodes[0], usr)
    print("master of INBOX: %s" % m)
    errors = []

    def storer(node, flagsets, rounds):
        try:
            s = login(node, usr)
            s.command("ENABLE CONDSTORE")
            s.command("SELECT INBOX")
            for k in range(rounds):
                fs = flagsets[k % len(flagsets)]
                r = s.command("UID STORE 1:* FLAGS (%s)" % fs)
                if not r.ok:
                    errors.append((node.node_id, r.line))
                r = s.command("UID STORE %d +FLAGS (\\Answered)" % (k % 10 + 1))
                if not r.ok:
                    errors.append((node.node_id, r.line))
            s.logout()
        except Exception as e:  # noqa: BLE001
            errors.append((node.node_id, "%s: %s" % (type(e).__name__, e)))

    n2, n3 = c.nodes[1], c.nodes[2]
    th = [threading.Thread(target=storer, args=(n2, ["\\Flagged $A", "\\Seen $A2"], 20),
                           daemon=True),
          threading.Thread(target=storer, args=(n3, ["\\Seen $B", "\\Deleted $B2"], 20),
                           daemon=True)]
    for t in th:
        t.start()
    for t in th:
        t.join(180)
    R.check("concurrent STOREs on nodes 2 and 3 all answered OK",
            not errors and not any(t.is_alive() for t in th), errors[:5])
    check_dumps_equal("concurrent conflicting STOREs", c.nodes, usr)
    deadline = time.monotonic() + CONVERGE
    views = {}
    while True:
        views = {n.node_id: fetch_flags_modseq(n, usr) for n in c.nodes}
        vals = list(views.values())
        if all(v == vals[0] for v in vals) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    vals = list(views.values())
    diff = {uid: {nid: views[nid].get(uid) for nid in views}
            for uid in vals[0] if any(v.get(uid) != vals[0][uid] for v in vals)}
    R.check("every node has the same FLAGS and MODSEQ per message", not diff,
            dict(list(diff.items())[:3]))
    R.check("MODSEQs are reported and nonzero", vals[0] and
            all(ms for _, ms in vals[0].values()), vals[0])

    # UNCHANGEDSINCE: read the modseq everyone agrees on, change the
    # message on another node, then at once try to change it with the
    # stale modseq: the master decides, so every node must refuse.
    for x in c.nodes:
        y = c.nodes[x.node_id % 3]
        base = fetch_flags_modseq(x, usr).get(1)
        if base is None or base[1] is None:
            R.check("UID 1 has a modseq on node %d" % x.node_id, False, base)
            continue
        stale = base[1]
        sy = login(y, usr)
        sy.command("ENABLE CONDSTORE")
        sy.command("SELECT INBOX")
        sx = login(x, usr)
        sx.command("ENABLE CONDSTORE")
        sx.command("SELECT INBOX")
        r1 = sy.command("UID STORE 1 +FLAGS ($Newer%d)" % y.node_id)
        r2 = sx.command("UID STORE 1 (UNCHANGEDSINCE %d) +FLAGS ($Stale%d)" % (stale, x.node_id))
        sy.logout()
        sx.logout()
        R.check("STORE on node %d answers OK" % y.node_id, r1.ok, r1)
        role = "master" if x.node_id == m else "not the master"
        R.check("STORE (UNCHANGEDSINCE stale) on node %d (%s) right after node %d's change "
                "is refused with MODIFIED" % (x.node_id, role, y.node_id),
                r2.ok and r2.code == "MODIFIED", r2)
    ok, d = check_dumps_equal("after UNCHANGEDSINCE", c.nodes, usr)
    if ok:
        dump = list(d.values())[0]
        R.check("no refused ($Stale) flag reached any node", "$Stale" not in dump,
                [ln for ln in dump.splitlines() if "$Stale" in ln][:3])
        R.check("the accepted flags ($Newer) are on every node", dump.count("$Newer") >= 1)


def t_idle_sees_remote_append():
    c = CLUSTER
    ensure_all_up(c)
    usr = user(6)
    prepare_user(c, usr)
    delays = []
    pairs = [(0, 1), (1, 2), (2, 0)] * 3
    for k, (ia, ib) in enumerate(pairs):
        a_node, b_node = c.nodes[ia], c.nodes[ib]
        b = login(b_node, usr)
        r = b.command("SELECT INBOX")
        exists = r.number("EXISTS") or 0
        tag = b.next_tag()
        b.send("%s IDLE\r\n" % tag)
        first = b.read_response()
        if not first.startswith(b"+"):
            R.check("IDLE on node %d answers with a continuation" % b_node.node_id, False, first)
            b.close()
            continue
        seen = {}

        def reader(b=b, seen=seen, want=exists + 1):
            got = b.read_untagged_until(
                lambda g: any(re.match(rb"\* (\d+) EXISTS", x) and
                              int(x.split()[1]) >= want for x in g), IDLE_BOUND + 5)
            seen["t"] = time.monotonic()
            seen["got"] = got

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        a = login(a_node, usr)
        ok, uid, r = append(a, "INBOX", message("idle", k))
        t_ok = time.monotonic()
        a.logout()
        th.join(IDLE_BOUND + 10)
        got = seen.get("got", [])
        hit = [x for x in got if re.match(rb"\* (\d+) EXISTS", x) and
               int(x.split()[1]) >= exists + 1]
        delay = seen.get("t", t_ok) - t_ok
        R.check("IDLE on node %d sees * %d EXISTS for the APPEND on node %d within %.0f s" %
                (b_node.node_id, exists + 1, a_node.node_id, IDLE_BOUND),
                ok and hit and delay <= IDLE_BOUND, (r, got, delay))
        if hit:
            delays.append(delay)
        try:
            b.send("DONE\r\n")
            b.wait_tagged(tag)
            b.logout()
        except Exception:  # noqa: BLE001
            b.close()
    if delays:
        print("measured: IDLE EXISTS minus the remote APPEND's OK: median %.1f ms, min %.1f ms, "
              "max %.1f ms (%d samples, sanitizer build; negative: EXISTS came first)"
              % (statistics.median(delays) * 1000, min(delays) * 1000, max(delays) * 1000,
                 len(delays)))


def t_status_backlog():
    c = CLUSTER
    ensure_all_up(c)
    usr = user(7)
    prepare_user(c, usr)
    for n in c.nodes:
        st = status_text(n) or {}
        for p in c.nodes:
            if p is n:
                continue
            k = "peer.%d" % p.node_id
            R.check("status on node %d: %s is up" % (n.node_id, k), st.get(k) == "up",
                    st.get(k))
            R.check("status on node %d: %s.backlog and %s.lag_ms are numbers" %
                    (n.node_id, k, k),
                    (st.get(k + ".backlog") or "").isdigit() and
                    (st.get(k + ".lag_ms") or "").isdigit(),
                    {x: st.get(x) for x in (k + ".backlog", k + ".lag_ms")})
    m = master_of(c.nodes[0], usr)
    if m is None:
        R.check("node 1 names a master of INBOX", False)
        return
    master = c.nodes[m - 1]
    replica = [n for n in c.nodes if n is not master][0]
    k = "peer.%d" % replica.node_id
    print("master of INBOX: %d; cutting its link to %d" % (m, replica.node_id))
    c.cut(master.node_id, replica.node_id)
    try:
        down = False
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if (status_text(master) or {}).get(k) not in (None, "up"):
                down = True
                break
            time.sleep(0.1)
        R.check("the master sees %s down after the cut" % k, down)
        cl = login(master, usr)
        oks = 0
        for i in range(5):
            ok, _, r = append(cl, "INBOX", message("backlog", i))
            oks += ok
        cl.logout()
        R.equal("APPENDs on the master answer OK with one replica cut off", oks, 5)
        backlog = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            v = (status_text(master) or {}).get(k + ".backlog", "")
            backlog = int(v) if v.isdigit() else None
            if backlog:
                break
            time.sleep(0.1)
        R.check("the master's %s.backlog is > 0 while the link is cut" % k,
                backlog is not None and backlog > 0, backlog)
        print("measured: backlog for the cut-off replica: %s" % backlog)
    finally:
        c.restore(master.node_id, replica.node_id)
    c.wait_links_up(timeout=40)
    t0 = time.monotonic()
    drained, st = False, {}
    while time.monotonic() - t0 < CONVERGE:
        st = status_text(master) or {}
        if st.get(k + ".backlog") == "0":
            drained = True
            break
        time.sleep(0.1)
    R.check("after the link is restored the backlog returns to 0", drained,
            {x: st.get(x) for x in (k, k + ".backlog", k + ".lag_ms")})
    if drained:
        print("measured: backlog drained %.2f s after the links were up again; lag_ms then %s"
              % (time.monotonic() - t0, st.get(k + ".lag_ms")))
    check_dumps_equal("after the link came back", c.nodes, usr,
                      pred=lambda x: len(msg_lines(x)) >= 5)


def lists(node, usr):
    """(set of LIST names, set of LSUB names) on node."""
    cl = login(node, usr)
    try:
        out = []
        for cmd in ('LIST "" "*"', 'LSUB "" "*"'):
            r = cl.command(cmd)
            names = set()
            for line in r.untagged:
                m = re.match(rb'\* (?:LIST|LSUB) \([^)]*\) (?:"[^"]*"|NIL) (.*)$', line)
                if m:
                    nm = m.group(1)
                    if nm.startswith(b'"') and nm.endswith(b'"'):
                        nm = nm[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
                    names.add(nm.decode())
            out.append(names)
        return out[0], out[1]
    finally:
        cl.logout()


def wait_lists(c, usr, pred, timeout=CONVERGE):
    t0 = time.monotonic()
    views = {}
    while time.monotonic() - t0 < timeout:
        views = {n.node_id: lists(n, usr) for n in c.nodes}
        if all(pred(v) for v in views.values()):
            return time.monotonic() - t0, views
        time.sleep(0.2)
    return None, views


def t_mailbox_list():
    c = CLUSTER
    ensure_all_up(c)
    usr = user(8)
    prepare_user(c, usr)
    n1, n2, n3 = c.nodes

    def do(node, *cmds):
        cl = login(node, usr)
        rs = [cl.command(x) for x in cmds]
        cl.logout()
        for cmd, r in zip(cmds, rs):
            R.check("%s on node %d answers OK" % (cmd, node.node_id), r.ok, r)

    do(n1, 'CREATE "Projects"')
    t, v = wait_lists(c, usr, lambda x: "Projects" in x[0])
    R.check("CREATE on node 1 shows in LIST on every node", t is not None, v)
    do(n2, 'CREATE "Projects/2026"', 'SUBSCRIBE "Projects/2026"')
    t, v = wait_lists(c, usr, lambda x: "Projects/2026" in x[0] and "Projects/2026" in x[1])
    R.check("CREATE + SUBSCRIBE on node 2 show in LIST and LSUB on every node",
            t is not None, v)
    do(n3, 'RENAME "Projects" "Work"')
    t, v = wait_lists(c, usr, lambda x: "Work" in x[0] and "Work/2026" in x[0] and
                      "Projects" not in x[0] and "Projects/2026" not in x[0])
    R.check("RENAME on node 3 (with its child) shows on every node", t is not None, v)
    do(n1, 'SUBSCRIBE "Work"', 'UNSUBSCRIBE "Projects/2026"', 'DELETE "Work/2026"')
    t, v = wait_lists(c, usr, lambda x: "Work/2026" not in x[0] and "Work" in x[1] and
                      "Projects/2026" not in x[1])
    R.check("SUBSCRIBE, UNSUBSCRIBE and DELETE on node 1 show on every node",
            t is not None, v)
    ok, d = check_dumps_equal("mailbox list changes", c.nodes, usr)
    if ok:
        dump = list(d.values())[0]
        R.check("the dump has mailbox Work and no Work/2026",
                re.search(r"^mailbox Work ", dump, re.M) is not None and
                re.search(r"^mailbox Work/2026 ", dump, re.M) is None, dump[:1500])


def dump_msgs(dump):
    """{mailbox: {uid: guid}} from a dump."""
    out = {}
    for ln in dump.splitlines():
        m = re.match(r"msg (.*) uid=(\d+) guid=([0-9a-f]+) ", ln)
        if m:
            out.setdefault(m.group(1), {})[int(m.group(2))] = m.group(3)
    return out


def t_copy_move_expunge():
    c = CLUSTER
    ensure_all_up(c)
    usr = user(9)
    prepare_user(c, usr)
    n1, n2, n3 = c.nodes
    for i in range(3):
        n3.deliver(usr, message("dlv", i))
    ok, d = check_dumps_equal("3 messages by starling deliver on node 3", c.nodes, usr,
                              pred=lambda x: len(msg_lines(x)) == 3)
    before = dump_msgs(list(d.values())[0]).get("INBOX", {})
    R.equal("starling deliver on node 3: INBOX holds UIDs 1-3 on every node",
            sorted(before), [1, 2, 3])
    # An IDLE session on node 1 watches INBOX while the others change it.
    idler = login(n1, usr)
    idler.command("SELECT INBOX")
    tag = idler.next_tag()
    idler.send("%s IDLE\r\n" % tag)
    first = idler.read_response()
    R.check("IDLE on node 1 answers with a continuation", first.startswith(b"+"), first)
    s2 = login(n2, usr)
    s2.command("SELECT INBOX")
    r = s2.command("UID COPY 1 Archive")
    s2.logout()
    R.check("UID COPY on node 2 answers OK [COPYUID]", r.ok and r.code == "COPYUID", r)
    s3 = login(n3, usr)
    s3.command("SELECT INBOX")
    r = s3.command("UID MOVE 2 Trash")
    R.check("UID MOVE on node 3 answers OK", r.ok, r)
    r1 = s3.command("UID STORE 3 +FLAGS.SILENT (\\Deleted)")
    r2 = s3.command("UID EXPUNGE 3")
    s3.logout()
    R.check("UID STORE \\Deleted + UID EXPUNGE on node 3 answer OK", r1.ok and r2.ok, (r1, r2))
    got = idler.read_untagged_until(
        lambda g: sum(1 for x in g if re.match(rb"\* \d+ EXPUNGE", x)) >= 2, IDLE_BOUND)
    R.check("IDLE on node 1 sees the MOVE and the EXPUNGE made on node 3 within %.0f s"
            % IDLE_BOUND, sum(1 for x in got if re.match(rb"\* \d+ EXPUNGE", x)) >= 2, got)
    try:
        idler.send("DONE\r\n")
        idler.wait_tagged(tag)
        idler.logout()
    except Exception:  # noqa: BLE001
        idler.close()
    ok, d = check_dumps_equal("COPY, MOVE, EXPUNGE", c.nodes, usr,
                              pred=lambda x: len(msg_lines(x)) == 1)
    if not ok:
        return
    after = dump_msgs(list(d.values())[0])
    R.equal("INBOX keeps only UID 1 on every node", sorted(after.get("INBOX", {})), [1])
    # A copy is a message of its own (SPEC.md 6.4); the dumps being equal
    # says every node holds it under the same GUID.
    arch, trash = list(after.get("Archive", {}).values()), list(after.get("Trash", {}).values())
    R.check("the copy in Archive is one message with a GUID of its own on every node",
            len(arch) == 1 and arch[0] not in before.values(), after.get("Archive"))
    R.check("the message moved to Trash is one message with a GUID of its own on every node",
            len(trash) == 1 and trash[0] not in before.values(), after.get("Trash"))


def t_isolated_master():
    c = CLUSTER
    ensure_all_up(c)
    usr = user(10)
    prepare_user(c, usr)
    m = master_of(c.nodes[0], usr)
    R.check("node 1 names a master of INBOX", m is not None)
    if m is None:
        return
    master = c.nodes[m - 1]
    others = [n for n in c.nodes if n is not master]
    print("master of INBOX: %d; cutting it off from both peers" % m)
    c.mesh.isolate(m)
    apps = []
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            st = status_text(master) or {}
            if all(st.get("peer.%d" % o.node_id) not in (None, "up") for o in others):
                break
            time.sleep(0.1)
        apps = [Appender(n, usr, "iso%d" % n.node_id, 20) for n in c.nodes]
        finished = run_appenders(apps, timeout=180)
        R.check("writers on both sides of the partition finished", finished)
        for a in apps:
            R.check("every APPEND on node %d answered OK during the partition%s"
                    % (a.node.node_id, " (the cut-off master)" if a.node is master else ""),
                    len(a.oks) == a.count and not a.failures,
                    "%d OK, failures %s" % (len(a.oks), a.failures[:3]))
    finally:
        c.mesh.restore_all()
    oks = {}
    for a in apps:
        oks.update(a.oks)
    c.wait_links_up(timeout=40)
    ok, _ = check_dumps_equal("partition healed", c.nodes, usr, timeout=CATCH_UP,
                              pred=lambda x: len(msg_lines(x)) >= len(oks))
    if not ok:
        print("logs:", node_logs_tail(c.nodes))
    # Both sides gave UIDs on their own: the sync renumbers conflicts, so
    # only presence exactly once is checked, not the APPENDUIDs.
    check_oks_present("partition healed", c.nodes, usr, oks, check_uids=False)
    views = {n.node_id: master_of(n, usr) for n in c.nodes}
    R.check("after the heal every node names the same master", len(set(views.values())) == 1,
            views)


def t_master_goes_silent():
    """The master's links silently lose everything (blackhole) while
    clients on the other nodes APPEND through it: forwarded APPENDs whose
    answer is lost must not end up twice once the links heal."""
    c = CLUSTER
    ensure_all_up(c)
    usr = user(12)
    prepare_user(c, usr)
    m = master_of(c.nodes[0], usr)
    R.check("node 1 names a master of INBOX", m is not None)
    if m is None:
        return
    others = [n for n in c.nodes if n.node_id != m]
    print("master of INBOX: %d; its links go silent under load" % m)
    apps = [Appender(n, usr, "sil%d" % n.node_id, 60, pause=0.05) for n in others]
    start_appenders(apps)
    try:
        c.mesh.isolate(m, mode="blackhole")
        t_cut = time.monotonic()
        time.sleep(6.0)  # past the 3 s dead timeout, while the writers go on
    finally:
        c.mesh.restore_all()
    join_appenders(apps)
    oks = {}
    for a in apps:
        oks.update(a.oks)
        after = [t for t in a.ok_times if t > t_cut]
        R.check("writer on node %d gets OKs while the master is silent" % a.node.node_id,
                bool(after), a.failures[:3])
        print("node %d: %d OK, %d failed %s" % (a.node.node_id, len(a.oks), len(a.failures),
                                               a.failures[:3]))
    c.wait_links_up(timeout=40)
    ok, _ = check_dumps_equal("silent master healed", c.nodes, usr, timeout=CATCH_UP,
                              pred=lambda x: len(msg_lines(x)) >= len(oks))
    if not ok:
        print("logs:", node_logs_tail(c.nodes))
    check_oks_present("silent master healed", c.nodes, usr, oks, check_uids=False)


def t_large_message():
    """A 4 MB APPEND on a node that is not the master travels to the master
    and to every replica intact (same size and SHA-256 in every dump)."""
    c = CLUSTER
    ensure_all_up(c)
    usr = user(13)
    prepare_user(c, usr)
    m = master_of(c.nodes[0], usr)
    node = [n for n in c.nodes if n.node_id != m][-1]
    data = message("big", 1, size=4 * 1024 * 1024)
    cl = login(node, usr, timeout=120)
    ok, uid, r = append(cl, "INBOX", data)
    cl.logout()
    R.check("a %d-byte APPEND on node %d (master %s) answers OK" % (len(data), node.node_id, m),
            ok, r)
    ok, d = check_dumps_equal("4 MB message", c.nodes, usr, timeout=CATCH_UP,
                              pred=lambda x: len(msg_lines(x)) == 1)
    if ok:
        import hashlib
        line = msg_lines(list(d.values())[0])[0]
        R.check("every node holds it with its size and SHA-256",
                " size=%d " % len(data) in line and
                " sha256=%s" % hashlib.sha256(data).hexdigest() in line, line)


def t_expunge_beats_store():
    """An EXPUNGE on one node and STOREs of the same messages on another at
    the same time: the messages end expunged everywhere (the master orders
    both; an expunge always wins) and all nodes agree."""
    c = CLUSTER
    ensure_all_up(c)
    usr = user(14)
    prepare_user(c, usr)
    cl = login(c.nodes[0], usr)
    for i in range(20):
        append(cl, "INBOX", message("xs", i))
    cl.logout()
    check_dumps_equal("20 messages", c.nodes, usr, pred=lambda x: len(msg_lines(x)) == 20)
    errors = []

    def expunger():
        try:
            s2 = login(c.nodes[1], usr)
            s2.command("SELECT INBOX")
            for u in range(1, 21, 2):
                r1 = s2.command("UID STORE %d +FLAGS.SILENT (\\Deleted)" % u)
                r2 = s2.command("UID EXPUNGE %d" % u)
                if not (r1.ok and r2.ok):
                    errors.append((r1.line, r2.line))
            s2.logout()
        except Exception as e:  # noqa: BLE001
            errors.append(str(e))

    def storer():
        try:
            s3 = login(c.nodes[2], usr)
            s3.command("SELECT INBOX")
            for k in range(10):
                r = s3.command("UID STORE 1:20 %sFLAGS ($K%d)" % ("+-"[k % 2], k // 2))
                if not r.ok:
                    errors.append(r.line)
            s3.logout()
        except Exception as e:  # noqa: BLE001
            errors.append(str(e))

    th = [threading.Thread(target=expunger, daemon=True),
          threading.Thread(target=storer, daemon=True)]
    for t in th:
        t.start()
    for t in th:
        t.join(120)
    R.check("EXPUNGEs on node 2 and STOREs on node 3 all answered OK", not errors, errors[:3])
    ok, d = check_dumps_equal("EXPUNGE against STORE", c.nodes, usr)
    if ok:
        uids = sorted(dump_msgs(list(d.values())[0]).get("INBOX", {}))
        R.equal("exactly the even UIDs remain on every node", uids, list(range(2, 21, 2)))
    views = {n.node_id: fetch_flags_modseq(n, usr) for n in c.nodes}
    vals = list(views.values())
    R.check("every node has the same FLAGS and MODSEQ per remaining message",
            all(v == vals[0] for v in vals), views)


def t_sync_replicas_waits():
    """sync_replicas = 1: an APPEND on the master is not answered while both
    replicas are stopped (SIGSTOP, links still up), and is answered as soon
    as one of them runs again, well before a link could be declared dead."""
    c = CLUSTER
    ensure_all_up(c)
    usr = user(15)
    prepare_user(c, usr)
    m = master_of(c.nodes[0], usr)
    if m is None:
        R.check("node 1 names a master of INBOX", False)
        return
    master = c.nodes[m - 1]
    replicas = [n for n in c.nodes if n is not master]
    cl = login(master, usr)
    ok, _, r = append(cl, "INBOX", message("sr", 0))
    R.check("an APPEND on the master with both replicas running answers OK", ok, r)
    done = {}

    def appender():
        try:
            done["r"] = append(cl, "INBOX", message("sr", 1))
        except Exception as e:  # noqa: BLE001
            done["r"] = (False, None, str(e))
        done["t"] = time.monotonic()

    for n in replicas:
        n.pause()
    t_resume = None
    try:
        th = threading.Thread(target=appender, daemon=True)
        t0 = time.monotonic()
        th.start()
        th.join(1.0)
        early = "t" in done
        R.check("with both replicas stopped the APPEND is not answered within 1 s",
                not early, done.get("r"))
        replicas[0].resume()
        t_resume = time.monotonic()
        th.join(10)
    finally:
        for n in replicas:
            n.resume()
    cl.logout()
    if "t" in done and t_resume is not None and not early:
        R.check("the APPEND is answered OK within 1 s of one replica running again",
                done["r"][0] and done["t"] - t_resume < 1.0,
                (done["r"], done["t"] - t_resume))
        print("measured: APPEND answered %.0f ms after the replica's SIGCONT (%.2f s after it "
              "was sent)" % ((done["t"] - t_resume) * 1000, done["t"] - t0))
    else:
        R.check("the APPEND is answered after one replica runs again", False, done)
    c.wait_links_up(timeout=40)
    check_dumps_equal("sync_replicas waits", c.nodes, usr,
                      pred=lambda x: len(msg_lines(x)) == 2)


def t_idle_sees_remote_flags():
    """A STORE on one node shows as an untagged FETCH (FLAGS ...) in IDLE
    sessions on the other two nodes."""
    c = CLUSTER
    ensure_all_up(c)
    usr = user(16)
    prepare_user(c, usr)
    cl = login(c.nodes[0], usr)
    append(cl, "INBOX", message("fl", 0))
    cl.logout()
    check_dumps_equal("a message for flags", c.nodes, usr, pred=lambda x: len(msg_lines(x)) == 1)
    writer = c.nodes[1]
    idlers = []
    for n in (c.nodes[0], c.nodes[2]):
        s_ = login(n, usr)
        s_.command("SELECT INBOX")
        tag = s_.next_tag()
        s_.send("%s IDLE\r\n" % tag)
        first = s_.read_response()
        R.check("IDLE on node %d answers with a continuation" % n.node_id,
                first.startswith(b"+"), first)
        idlers.append((n, s_, tag))
    w = login(writer, usr)
    w.command("SELECT INBOX")
    r = w.command("UID STORE 1 +FLAGS (\\Flagged $Seen-On-%d)" % writer.node_id)
    w.logout()
    R.check("STORE on node %d answers OK" % writer.node_id, r.ok, r)
    for n, s_, tag in idlers:
        got = s_.read_untagged_until(
            lambda g: any(b"FETCH" in x and b"\\Flagged" in x for x in g), IDLE_BOUND)
        R.check("IDLE on node %d sees * 1 FETCH (FLAGS (... \\Flagged ...)) for the STORE on "
                "node %d within %.0f s" % (n.node_id, writer.node_id, IDLE_BOUND),
                any(re.match(rb"\* 1 FETCH \(.*FLAGS \([^)]*\\Flagged", x) for x in got), got)
        try:
            s_.send("DONE\r\n")
            s_.wait_tagged(tag)
            s_.logout()
        except Exception:  # noqa: BLE001
            s_.close()


def main():
    R.section("setup: 3 nodes, sync_replicas = 1, links through proxies", t_setup)
    # ONLY=word,word runs the sections whose name contains one of the words.
    only = [w for w in os.environ.get("ONLY", "").split(",") if w]
    if CLUSTER is not None:
        for name, func in (
                ("an APPEND on any node reaches every node", t_append_reaches_every_node),
                ("3 clients APPEND on 3 nodes at once", t_concurrent_appends),
                ("kill -9 of a replica under load, restart", t_kill_replica),
                ("kill -9 of the master under load", t_kill_master),
                # A second time: the race it looks for does not show every time.
                ("kill -9 of the master under load, again", lambda: t_kill_master(11)),
                ("conflicting STOREs, UNCHANGEDSINCE", t_conflicting_stores),
                ("IDLE on one node sees an APPEND on another", t_idle_sees_remote_append),
                ("IDLE on two nodes sees a STORE on the third", t_idle_sees_remote_flags),
                ("status: peer state, backlog, lag; a cut link", t_status_backlog),
                ("CREATE/RENAME/DELETE/SUBSCRIBE replicate", t_mailbox_list),
                ("deliver, COPY, MOVE, EXPUNGE replicate", t_copy_move_expunge),
                ("master cut off, both sides write, heal", t_isolated_master),
                ("master's links go silent under forwarded load", t_master_goes_silent),
                ("a 4 MB message APPENDed on a replica", t_large_message),
                ("EXPUNGE on one node against STORE on another", t_expunge_beats_store),
                ("sync_replicas = 1 waits for a replica", t_sync_replicas_waits)):
            if not only or any(w in name for w in only):
                R.section(name, func)
        CLUSTER.close()
        reps = CLUSTER.sanitizer_reports()
        R.check("no sanitizer report in the node logs", not reps, reps)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
