#!/usr/bin/env python3
"""Monotonic reads across nodes (issue 20): a client that moves between
nodes never sees a mailbox go back in time under read_consistency = master,
and can under read_consistency = local.

Three nodes with sync_replicas = 1, every directed peer link through a
LinkProxy; node 3's links get a one-way latency (a second data centre).
The user's INBOX is mastered by node 1, where writers APPEND.  Checked:

  - hop test, read_consistency = master: four writers APPEND on node 1
    while one client reconnects alternately to nodes 2 and 3 and asks
    STATUS INBOX (UIDNEXT HIGHESTMODSEQ): neither value ever goes back
    (0 regressions), node 3 did wait for the master (read_barriers_waited
    in `starling status`), and enough reads were made for that to mean
    something;
  - read-your-writes: an APPEND OK'd on node 1, then at once STATUS, SELECT,
    EXAMINE and LIST-STATUS on node 3 (200 ms away) show its UID;
  - a FETCH (CHANGEDSINCE m), a STORE (UNCHANGEDSINCE m) or a SELECT
    (QRESYNC (v m)) naming a modseq the node has not applied yet waits for
    it (a CONDSTORE or QRESYNC client that saw m on another node);
  - the master unreachable (links cut, then blackholed): STATUS on node 3
    is answered from its own state, at once for a cut link and within the
    barrier's 2 s cap for a silent one, and read_barriers_local counts it;
  - read_consistency = local on nodes 2 and 3 (restarted): the same hop
    test sees at least one regression within a bounded time, and the
    read-your-writes STATUS on node 3 shows the old UIDNEXT: the test can
    fail, and `local` really answers without waiting;
  - HIGHEST from a peer (a Python peer, tests/harness/peerwire.py):
    malformed requests get BAD [ARGS], another user's or an unknown
    mailbox NO [NONEXISTENT], a non-master NO [NOTMASTER]; the link goes on.

Every loop is bounded in count and time.  Figures are printed as
"measured: ...".  The last line is "test-monotonic: N passed, M failed".
"""
import os
import re
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness.imapwire import Client, Literal  # noqa: E402
from harness.peerwire import PyPeer  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-monotonic")
USER = "hopper@example.com"
PASSWORD = "secret"
LATENCY = 0.025          # one way, node 3's links (the issue's setting)
FAR_LATENCY = 0.2        # read-your-writes: far enough that "local" cannot hide
HOP_SECONDS = 8.0        # master: the whole hop test
LOCAL_MAX_SECONDS = 20.0  # local: until the first regression, at most this
WRITERS = 4
CLUSTER = None

STATUS_RE = re.compile(rb"^\* STATUS \S+ \(UIDNEXT (\d+) HIGHESTMODSEQ (\d+)\)")


def login(node, timeout=30.0):
    c = Client(node.host, node.imap_port, timeout=timeout)
    r = c.login(USER, PASSWORD)
    if not r.ok:
        raise RuntimeError("login on node %d: %r" % (node.node_id, r))
    return c


def message(tag, i):
    return ("From: t@example.com\r\nTo: u@example.com\r\nSubject: %s %d\r\n"
            "Message-ID: <%s.%d@test.example.com>\r\n\r\nbody %s %d\r\n"
            % (tag, i, tag, i, tag, i)).encode()


def append(c, data):
    """UID of the APPEND, or None."""
    r = c.command("APPEND INBOX", Literal(data, plus=True))
    if r.ok and r.code == "APPENDUID" and r.code_args:
        parts = r.code_args.split()
        if len(parts) == 2 and parts[1].isdigit():
            return int(parts[1])
    return None


def status_values(resp):
    for line in resp.untagged:
        m = STATUS_RE.match(line)
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def status_of(node):
    """`starling status` as {key: value}."""
    r = node.cli("status", timeout=20)
    out = {}
    for line in r.stdout.decode(errors="replace").splitlines():
        k, sep, v = line.partition(": ")
        if sep:
            out[k.strip()] = v.strip()
    return out


def counter(node, key):
    try:
        return int(status_of(node).get(key, "-1"))
    except ValueError:
        return -1


def master_of(node, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = node.cli("master", "show", "-u", USER, "-m", "INBOX", timeout=20)
        if r.returncode == 0:
            m = re.search(rb"^master: (\d+)$", r.stdout, re.M)
            if m and int(m.group(1)) != 0:
                return int(m.group(1))
        time.sleep(0.2)
    return None


def set_far_latency(c, seconds):
    c.mesh.set_latency(1, 3, seconds)
    c.mesh.set_latency(2, 3, seconds)


# ---------------------------------------------------------------- the hop test
class Writers:
    """WRITERS threads APPENDing to INBOX on one node until stop()."""

    def __init__(self, node, tag):
        self.node = node
        self.tag = tag
        self.stop_ev = threading.Event()
        self.oks = 0
        self.errors = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(WRITERS)]

    def run(self, k):
        try:
            c = login(self.node)
        except Exception as e:  # noqa: BLE001 -- reported by the test
            with self.lock:
                self.errors.append(repr(e))
            return
        i = 0
        # Bounded: the hop test stops us, or 50000 APPENDs per writer.
        while not self.stop_ev.is_set() and i < 50000:
            i += 1
            uid = append(c, message("%s-w%d" % (self.tag, k), i))
            with self.lock:
                if uid is None:
                    self.errors.append("APPEND %d of writer %d not OK" % (i, k))
                else:
                    self.oks += 1
        c.logout()

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(30)


def hop(c, seconds, stop_at_first=False, max_reads=100000):
    """One client reconnects alternately to nodes 2 and 3 and asks STATUS;
    returns (reads, regressions [(node, uidnext, modseq, max seen)], per-node
    latencies)."""
    best_u = best_m = 0
    reads = 0
    regressions = []
    lat = {2: [], 3: []}
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline and reads < max_reads:
        node = c.nodes[1 + i % 2]
        i += 1
        cl = login(node)
        t0 = time.monotonic()
        r = cl.command("STATUS INBOX (UIDNEXT HIGHESTMODSEQ)")
        lat[node.node_id].append(time.monotonic() - t0)
        cl.logout()
        v = status_values(r)
        if not r.ok or v is None:
            raise RuntimeError("STATUS on node %d: %r" % (node.node_id, r))
        reads += 1
        u, m = v
        if u < best_u or m < best_m:
            regressions.append((node.node_id, u, m, best_u, best_m))
            if stop_at_first:
                break
        best_u, best_m = max(best_u, u), max(best_m, m)
    return reads, regressions, lat


def pct(xs, p):
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100.0 * len(s)))] * 1000


def t_setup():
    global CLUSTER
    c = Cluster(n=3, users={USER: PASSWORD}, proxies=True,
                extra_config={"sync_replicas": 1},
                log_level=os.environ.get("LOG_LEVEL", "info"))
    CLUSTER = c
    print("cluster dir: %s" % c.dir)
    c.start_all()
    c.wait_links_up(timeout=40)
    cl = login(c.nodes[0])
    uid = append(cl, message("first", 0))
    cl.logout()
    R.check("the first APPEND on node 1 is OK", uid is not None)
    R.equal("node 1 is INBOX's master (the writers' node)", master_of(c.nodes[0]), 1)
    set_far_latency(c, LATENCY)


def t_hop_master():
    c = CLUSTER
    asked0 = counter(c.nodes[2], "read_barriers_asked")
    w = Writers(c.nodes[0], "hm").start()
    try:
        time.sleep(0.5)
        reads, regs, lat = hop(c, HOP_SECONDS)
    finally:
        w.stop()
    print("measured: read_consistency = master, %d ms one way to node 3: %d reads, "
          "%d regressions, %d APPENDs; STATUS p50/p99 node 2 %.1f/%.1f ms, node 3 "
          "%.1f/%.1f ms" % (LATENCY * 1000, reads, len(regs), w.oks,
                            pct(lat[2], 50), pct(lat[2], 99), pct(lat[3], 50), pct(lat[3], 99)))
    R.check("the writers' APPENDs are OK", not w.errors and w.oks > 0, w.errors[:5])
    R.check("the hop test made at least 40 reads", reads >= 40, reads)
    R.equal("no regression of UIDNEXT or HIGHESTMODSEQ under master", regs[:5], [])
    asked = counter(c.nodes[2], "read_barriers_asked")
    R.check("node 3 asked the master before its reads (read_barriers_asked grew by at "
            "least half the reads)", asked - asked0 >= reads // 2 > 0, (asked0, asked, reads))


def read_your_writes(c, expect_seen):
    """APPEND on node 1, then at once STATUS/SELECT/EXAMINE/LIST-STATUS on node
    3; returns what each showed, and checks it against expect_seen."""
    set_far_latency(c, FAR_LATENCY)
    try:
        far = login(c.nodes[2])
        w = login(c.nodes[0])
        out = {}
        for what, cmd in (("STATUS", "STATUS INBOX (UIDNEXT HIGHESTMODSEQ)"),
                          ("SELECT", "SELECT INBOX"),
                          ("EXAMINE", "EXAMINE INBOX"),
                          ("LIST-STATUS", 'LIST "" "INBOX" RETURN (STATUS (UIDNEXT HIGHESTMODSEQ))')):
            uid = append(w, message("ryw-%s" % what, 1))
            if uid is None:
                raise RuntimeError("APPEND on node 1 not OK")
            r = far.command(cmd)
            if what in ("STATUS", "LIST-STATUS"):
                v = status_values(r)
                shown = v[0] if v else None
            else:
                m = re.search(rb"\[UIDNEXT (\d+)\]", b"\n".join(r.untagged))
                shown = int(m.group(1)) if m else None
            out[what] = (uid, shown)
            if expect_seen:
                R.check("%s on node 3 right after an APPEND on node 1 shows its UID "
                        "(UIDNEXT %r > %d)" % (what, shown, uid),
                        r.ok and shown is not None and shown > uid, r)
        far.logout()
        w.logout()
        return out
    finally:
        set_far_latency(c, LATENCY)


def t_read_your_writes_master():
    read_your_writes(CLUSTER, True)


def t_condstore_waits():
    """A client that saw modseq m on node 1 asks node 3 for changes since m:
    node 3 waits until it holds m rather than show an older state."""
    c = CLUSTER
    # Quiet first: a resync still running could raise the message's modseq.
    c.wait_dumps_equal(USER, timeout=60)
    w = login(c.nodes[0])
    w.command("SELECT INBOX (CONDSTORE)")
    uid = append(w, message("condstore", 1))
    far = login(c.nodes[2])
    # Under master, this SELECT already holds the new message.
    r = far.command("SELECT INBOX (CONDSTORE)")
    R.check("SELECT (CONDSTORE) on node 3 knows the message just APPENDed on node 1",
            r.ok and uid is not None and
            any(int(x) > uid for x in re.findall(rb"\[UIDNEXT (\d+)\]", b"\n".join(r.untagged))),
            r)
    set_far_latency(c, FAR_LATENCY)
    try:
        # The client saw modseq m1 (and then m2) on node 1 and asks node 3
        # for what changed since m1, which node 3 has not applied yet.
        r = w.command("UID STORE %d +FLAGS (\\Flagged)" % uid)
        m = re.search(rb"MODSEQ \((\d+)\)", b"\n".join(r.untagged))
        R.check("STORE on node 1 reports the message's MODSEQ", r.ok and m, r)
        m1 = int(m.group(1))
        r = w.command("UID STORE %d +FLAGS ($Hop)" % uid)
        m = re.search(rb"MODSEQ \((\d+)\)", b"\n".join(r.untagged))
        m2 = int(m.group(1)) if m else 0
        t0 = time.monotonic()
        r = far.command("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % m1)
        took = time.monotonic() - t0
        print("measured: FETCH CHANGEDSINCE above node 3's modseq took %.0f ms "
              "(%.0f ms one way)" % (took * 1000, FAR_LATENCY * 1000))
        R.check("FETCH (CHANGEDSINCE m1) on node 3 right after changes m1 < m2 on node 1 "
                "shows the message \\Flagged $Hop at MODSEQ m2",
                r.ok and any(b"UID %d " % uid in x and b"\\Flagged" in x and b"$Hop" in x and
                             b"MODSEQ (%d)" % m2 in x for x in r.untagged), r)
        rw = w.command("UID STORE %d +FLAGS (\\Answered)" % uid)
        m = re.search(rb"MODSEQ \((\d+)\)", b"\n".join(rw.untagged))
        modseq2 = int(m.group(1)) if m else 0
        # What a client that saw the \Answered change on node 1 sends.
        r = far.command("UID STORE %d (UNCHANGEDSINCE %d) +FLAGS (\\Seen)" % (uid, modseq2))
        R.check("STORE (UNCHANGEDSINCE m) on node 3 for a change it had not applied yet "
                "succeeds and shows the master's flags (\\Answered \\Seen)",
                r.ok and b"MODIFIED" not in r.line and
                any(b"\\Answered" in x and b"\\Seen" in x for x in r.untagged),
                (rw.untagged, r.untagged, r))
        # A QRESYNC client that saw modseq m4 on node 1 reselects on node 3.
        mv = re.findall(rb"\[UIDVALIDITY (\d+)\]", b"\n".join(far.command("SELECT INBOX").untagged))
        r = w.command("UID STORE %d +FLAGS ($Qresync)" % uid)
        m = re.search(rb"MODSEQ \((\d+)\)", b"\n".join(r.untagged))
        m4 = int(m.group(1)) if m else 0
        q = login(c.nodes[2])
        q.command("ENABLE QRESYNC")
        r = q.command("SELECT INBOX (QRESYNC (%s %d))" % (mv[0].decode() if mv else "1", m4 - 1))
        R.check("SELECT (QRESYNC (uidvalidity m4-1)) on node 3 right after change m4 on node 1 "
                "reports the message with $Qresync at MODSEQ m4",
                r.ok and any(b"UID %d " % uid in x and b"$Qresync" in x and
                             b"MODSEQ (%d)" % m4 in x for x in r.untagged), r)
        q.logout()
        far.logout()
        w.logout()
    finally:
        set_far_latency(c, LATENCY)


def t_master_unreachable():
    c = CLUSTER
    # Cut off, node 3 is the root of its own part of the cluster and master
    # of INBOX there (autonomy first): it answers from its own state.
    c.mesh.isolate(3, "cut")
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and c.nodes[2].peer_state(1) == "up":
            time.sleep(0.1)
        cl = login(c.nodes[2])
        t0 = time.monotonic()
        r = cl.command("STATUS INBOX (UIDNEXT HIGHESTMODSEQ)")
        took = time.monotonic() - t0
        R.check("with node 3's links cut, STATUS on node 3 is answered from its own "
                "state within 1 s (%.0f ms)" % (took * 1000),
                r.ok and status_values(r) is not None and took < 1.0, r)
        r = cl.command("SELECT INBOX")
        R.check("and SELECT too", r.ok, r)
        cl.logout()
    finally:
        c.mesh.restore_all()
    c.wait_links_up(timeout=40)
    local0 = counter(c.nodes[2], "read_barriers_local")
    # A silent partition: the link still looks up, HIGHEST gets no answer.
    cl = login(c.nodes[2])
    c.mesh.isolate(3, "blackhole")
    try:
        t0 = time.monotonic()
        r = cl.command("STATUS INBOX (UIDNEXT HIGHESTMODSEQ)")
        took = time.monotonic() - t0
        print("measured: STATUS on node 3 with a silent master: %.0f ms" % (took * 1000))
        R.check("with node 3's links blackholed, STATUS on node 3 is answered within the "
                "barrier's 2 s cap (+1 s slack; %.0f ms)" % (took * 1000),
                r.ok and status_values(r) is not None and took < 3.0, r)
        R.check("read_barriers_local counts the read answered locally",
                counter(c.nodes[2], "read_barriers_local") > local0,
                (local0, counter(c.nodes[2], "read_barriers_local")))
    finally:
        c.mesh.restore_all()
    cl.logout()
    c.wait_links_up(timeout=60)


def t_local():
    c = CLUSTER
    for n in c.nodes[1:]:
        n.extra["read_consistency"] = "local"
        n.restart()
    c.wait_links_up(timeout=60)
    set_far_latency(c, LATENCY)
    st = status_of(c.nodes[2])
    R.equal("node 3 reports read_consistency: local", st.get("read_consistency"), "local")
    asked0 = counter(c.nodes[2], "read_barriers_asked")
    w = Writers(c.nodes[0], "hl").start()
    try:
        time.sleep(0.5)
        reads, regs, lat = hop(c, LOCAL_MAX_SECONDS, stop_at_first=True)
    finally:
        w.stop()
    print("measured: read_consistency = local, %d ms one way to node 3: first regression "
          "after %d reads (%r); STATUS p50/p99 node 2 %.1f/%.1f ms, node 3 %.1f/%.1f ms"
          % (LATENCY * 1000, reads, regs[:1], pct(lat[2], 50), pct(lat[2], 99),
             pct(lat[3], 50), pct(lat[3], 99)))
    R.check("under local, the hop test sees UIDNEXT or HIGHESTMODSEQ go back within %.0f s"
            % LOCAL_MAX_SECONDS, len(regs) >= 1, reads)
    R.equal("under local, node 3 never asks the master (read_barriers_asked)",
            counter(c.nodes[2], "read_barriers_asked"), asked0)
    out = read_your_writes(c, False)
    print("measured: local, right after APPENDs on node 1, node 3 showed %r" % out)
    R.check("under local, STATUS on node 3 right after an APPEND on node 1 (%.0f ms away) "
            "does not show it yet" % (FAR_LATENCY * 1000),
            out["STATUS"][1] is not None and out["STATUS"][1] <= out["STATUS"][0], out)


def t_highest_hostile():
    """HIGHEST from a peer (a Python peer playing node 1, stopped): malformed
    or foreign requests get one BAD or NO line, the link and node go on."""
    c = CLUSTER
    n2 = c.nodes[1]
    m = re.search(r"mailbox INBOX guid=(\w+)", n2.dump(USER))
    R.check("INBOX's GUID from the dump", m)
    guid = m.group(1)
    c.nodes[0].stop()
    with open(c.secret_file, "rb") as f:
        secret = f.read().rstrip(b"\n")
    deadline = time.monotonic() + 20
    p = None
    while p is None and time.monotonic() < deadline:
        try:
            p = PyPeer(n2.repl_port, 1, secret)
        except (OSError, RuntimeError):
            time.sleep(0.2)
    R.check("the Python peer authenticates as node 1", p and p.auth().startswith("C1 OK"))
    for line, want in (("HIGHEST %s" % USER, "BAD [ARGS"),
                       ("HIGHEST %s 0123" % USER, "BAD [ARGS"),
                       ('HIGHEST "" %s' % guid, "BAD [ARGS"),
                       ("HIGHEST %s %s %s" % (USER, guid, guid), "BAD [ARGS"),
                       ("HIGHEST %s %s" % ("u" * 300, guid), "BAD [ARGS"),
                       ("HIGHEST nobody@example.com %s" % guid, "NO [NONEXISTENT"),
                       ("HIGHEST %s %s" % (USER, "0" * 32), "NO [NONEXISTENT"),
                       ("HIGHEST %s %s" % (USER, guid), "NO [NOTMASTER")):
        r = p.command(line)
        R.check("%s... answered %s...] in one line" % (line[:60], want),
                len(r) == 1 and r[0].split(" ", 1)[1].startswith(want), r)
    r = p.command("PING")
    R.check("the link still works (PING)", r[-1].split()[1] == "OK", r)
    p.close()
    R.check("node 2 still runs", n2.running())


def main():
    only = [w for w in os.environ.get("ONLY", "").split(",") if w]
    R.section("setup: 3 nodes, links through proxies, node 3 %.0f ms away" % (LATENCY * 1000),
              t_setup)
    if CLUSTER is not None:
        for name, func in (
                ("read-your-writes on a far node, master", t_read_your_writes_master),
                ("CHANGEDSINCE / UNCHANGEDSINCE / QRESYNC above the node's modseq wait", t_condstore_waits),
                ("hop test, read_consistency = master", t_hop_master),
                ("the master unreachable: local answers", t_master_unreachable),
                ("read_consistency = local: regressions can be seen", t_local),
                ("HIGHEST from a hostile peer", t_highest_hostile)):
            # ONLY=word,word runs the sections whose name contains one of the words.
            if not only or any(w in name for w in only):
                R.section(name, func)
        CLUSTER.close()
        reps = CLUSTER.sanitizer_reports()
        R.check("no sanitizer report in the node logs", not reps, reps)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
