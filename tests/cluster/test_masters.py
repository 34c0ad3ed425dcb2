#!/usr/bin/env python3
"""Mailbox masters between real starlingd nodes (issue 5, wiring).

Nodes run the mailbox-master state machine over their peer links (SPEC.md
9); `starling master show -u USER` asks each node for the master of the
user's INBOX granule.  Checked here, with every directed link through a
LinkProxy:

  - three nodes agree on one root (the lowest SID) and one master;
  - kill -9 of the root: the survivors agree on a new root and a master;
  - restart: the node rejoins, root is the lowest SID again, one master;
  - kill -9 of the master: the survivors agree on a new master;
  - five nodes split 2|3 by cutting links: each side has its own root;
    after the heal, one root and one master for everybody;
  - a silent master (SIGSTOP) is replaced after the keepalive's dead timeout;
  - MM messages a peer cannot send legally are answered BAD and ignored;
  - mastership follows the writes (issue 19): two clients on two nodes
    appending to one INBOX in turn for 8 s move it at most once; then the
    non-master's client appending alone gets it, and every node ends with
    every message;
  - on every poll of every node, no two nodes claim to be master of the
    granule at the same epoch (each node's own `is_master` answer).

The three-node cluster runs with the default master_granularity (mailbox):
the user's INBOX has one GUID on every node, so every node names the same
granule.  The five-node cluster runs with master_granularity = user.  The
user is created with the CLI and gets one delivery on every node.

Failover times are printed ("measured: ...", from the kill to the moment
every survivor's `master show` agrees, CLI polling included).  The last line
is "test-masters: N passed, M failed".
"""
import os
import re
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness import imapwire  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-masters")
USER = "alice@example.com"
# What a failover may take: link failure detection (a killed node's sockets
# reset at once; a silent peer takes the 3 s dead timeout), the epoch
# change, and CLI polling on a slow machine running sanitizers.
AGREE_LIMIT = 10.0
CLUSTERS = []
# (cluster number, granule, epoch) -> node ids that claimed mastership of
# the granule at that epoch, over the whole run.
CLAIMS = {}


def new_cluster(n, granularity="user"):
    c = Cluster(n=n, proxies=True, extra_config={"master_granularity": granularity})
    CLUSTERS.append(c)
    return c


def finish_cluster(c):
    c.close()
    reps = c.sanitizer_reports()
    R.check("no sanitizer report in the node logs", not reps, reps)


def master_show(node, user=USER, mailbox=None, timeout=30):
    """The node's `master show` answer as a dict, or None (error)."""
    if not node.running():
        return None
    args = ["master", "show", "-u", user] + (["-m", mailbox] if mailbox else [])
    try:
        r = node.cli(*args, timeout=timeout)
    except Exception:  # noqa: BLE001 -- CLI timeout
        return None
    if r.returncode != 0:
        return None
    out = {}
    for line in r.stdout.decode().splitlines():
        k, sep, v = line.partition(": ")
        if sep:
            out[k] = v
    return out


def note_claims(cluster, answers):
    """Records who claims mastership at which epoch; two different nodes at
    one epoch of one cluster break the safety invariant."""
    for node_id, a in answers.items():
        if a and a.get("is_master") == "yes":
            key = (CLUSTERS.index(cluster) + 1, a["granule"], a["epoch"])
            CLAIMS.setdefault(key, set()).add(node_id)


def poll(nodes, record=True):
    """Every node's master show.  record=False where the master moves on
    purpose: a move hands the granule to another node within one epoch (a
    new generation, which master show does not print), so the claims
    check would take it for two masters."""
    answers = {n.node_id: master_show(n) for n in nodes}
    if nodes and record:
        note_claims(nodes[0].cluster, answers)
    return answers


def agreed(answers):
    vals = list(answers.values())
    if not vals or any(a is None for a in vals):
        return False
    first = vals[0]
    return all(a["master"] == first["master"] and a["root"] == first["root"] and
               a["epoch"] == first["epoch"] and a["granule"] == first["granule"]
               for a in vals) and first["master"] != "0"


def wait_agree(nodes, timeout=AGREE_LIMIT * 3, want_root=None, record=True):
    """Polls every node's master show until all agree (and on want_root);
    returns (seconds, answers), or (None, last answers)."""
    t0 = time.monotonic()
    answers = {}
    while time.monotonic() - t0 < timeout:
        answers = poll(nodes, record)
        if agreed(answers) and (want_root is None or
                                list(answers.values())[0]["root"] == str(want_root)):
            return time.monotonic() - t0, answers
        time.sleep(0.05)
    return None, answers


def one(answers, key):
    return int(list(answers.values())[0][key])


def setup_user(c):
    r = c.nodes[0].cli("user", "add", USER, input=b"secret\n")
    R.check("user created with the CLI", r.returncode == 0, r.stderr)
    c.start_all()
    for node in c.nodes:
        node.deliver(USER, b"Subject: hi\r\n\r\nbody\r\n")


def t_three_nodes():
    c = new_cluster(3, "mailbox")
    setup_user(c)
    c.wait_links_up(timeout=40)
    n1, n2, n3 = c.nodes
    t, ans = wait_agree([n3, n1, n2], want_root=1)
    R.check("3 nodes agree on master and root of INBOX", t is not None, ans)
    if t is None:
        finish_cluster(c)
        return
    R.equal("root is the lowest SID", one(ans, "root"), 1)
    R.check("granule is the INBOX's mailbox key, the same on every node",
            list(ans.values())[0]["granule"].startswith("m:" + USER + "/") and
            len(set(a["granule"] for a in ans.values())) == 1, ans)
    claimants = [i for i, a in ans.items() if a["is_master"] == "yes"]
    R.check("exactly the master says it is master",
            claimants == [one(ans, "master")], ans)
    st = n2.status()
    R.check("status shows root and epoch",
            st.get("root") == 1 and st.get("epoch") == ans[2]["epoch"], st)
    r = n1.cli("master", "show", "-u", USER, "-m", "NoSuchBox")
    R.check("master show of a missing mailbox fails with one line",
            r.returncode != 0 and b"does not exist" in r.stderr and
            len(r.stderr.splitlines()) == 1, r.stderr)

    # kill -9 the root
    n1.kill()
    t0 = time.monotonic()
    t, ans = wait_agree([n3, n2], want_root=2)
    R.check("root killed: survivors agree on root 2 and a master", t is not None, ans)
    if t is not None:
        print("measured: root (node 1) killed -> 2 survivors agree on root and master "
              "in %.2f s" % (time.monotonic() - t0))
    # restart: rejoin
    n1.start()
    c.wait_links_up(timeout=40)
    t, ans = wait_agree([n3, n1, n2], want_root=1)
    R.check("restarted root rejoins: root 1, one master", t is not None, ans)
    if t is None:
        finish_cluster(c)
        return
    # kill -9 the master (node 3 asked first, so normally it is node 3)
    m = one(ans, "master")
    victim = c.nodes[m - 1]
    rest = [n for n in c.nodes if n is not victim]
    victim.kill()
    t0 = time.monotonic()
    t, ans2 = wait_agree(rest, want_root=min(n.node_id for n in rest))
    R.check("master (node %d) killed: survivors agree on a new master" % m,
            t is not None and one(ans2, "master") != m, ans2)
    if t is not None:
        print("measured: master (node %d) killed -> survivors agree on a new master "
              "in %.2f s" % (m, time.monotonic() - t0))
    victim.start()
    c.wait_links_up(timeout=40)
    t, ans = wait_agree(c.nodes, want_root=1)
    R.check("restarted master rejoins: root 1, one master", t is not None, ans)
    if t is None:
        finish_cluster(c)
        return
    claimants = [i for i, a in ans.items() if a["is_master"] == "yes"]
    R.check("one node claims mastership after the rejoin", len(claimants) == 1, ans)

    # A silent master (SIGSTOP): its links stay open, the keepalive notices.
    m = one(ans, "master")
    victim = c.nodes[m - 1]
    rest = [n for n in c.nodes if n is not victim]
    victim.pause()
    t0 = time.monotonic()
    try:
        t, ans2 = wait_agree(rest, want_root=min(n.node_id for n in rest))
        elapsed = time.monotonic() - t0
        R.check("silent master (node %d, SIGSTOP) replaced within %.0f s"
                % (m, AGREE_LIMIT), t is not None and elapsed < AGREE_LIMIT and
                one(ans2, "master") != m, (elapsed, ans2))
        if t is not None:
            print("measured: master (node %d) stopped silently -> survivors agree on a new "
                  "master in %.2f s (dead timeout 3 s)" % (m, elapsed))
    finally:
        victim.resume()
    t, ans = wait_agree(c.nodes, want_root=1)
    R.check("resumed node rejoins: root 1, one master", t is not None, ans)
    finish_cluster(c)


def t_single_node_mailbox_granule():
    """One node, no peers, default granularity (mailbox): it is its own
    root and master, and the key names the mailbox GUID."""
    c = Cluster(n=1)
    CLUSTERS.append(c)
    r = c.nodes[0].cli("user", "add", USER, input=b"secret\n")
    R.check("user created with the CLI", r.returncode == 0, r.stderr)
    n1 = c.nodes[0]
    n1.start()
    n1.deliver(USER, b"Subject: hi\r\n\r\nbody\r\n")
    a = master_show(n1)
    R.check("lone node is master and root of its INBOX",
            a is not None and a["master"] == "1" and a["root"] == "1" and
            a["is_master"] == "yes", a)
    b = master_show(n1, mailbox="Sent")
    R.check("granule keys are per mailbox GUID",
            a is not None and b is not None and a["granule"].startswith("m:" + USER + "/") and
            len(a["granule"]) == len("m:" + USER + "/") + 32 and
            a["granule"] != b["granule"], (a, b))
    r = n1.cli("master", "show", "-u", USER, "-x")
    R.check("bad arguments: exit 2 with usage", r.returncode == 2 and b"usage" in r.stderr,
            r.stderr)
    finish_cluster(c)


def t_hostile_messages():
    """A Python peer (tests/harness/peerwire.py) speaks for SID 1 to node 2."""
    from harness.peerwire import PyPeer
    from test_links import cluster_secret
    c = new_cluster(2)
    n2 = c.nodes[1]
    n2.start()
    p = PyPeer(n2.repl_port, 1, cluster_secret(c))
    try:
        reply = p.auth()
        R.check("python peer authenticates as SID 1", reply.startswith("C1 OK"), reply)
        cases = [
            ("MM garbage", "BAD"),
            ("MM", "BAD"),
            ("MM MASTER-WHO 1 2 32 0 u:x", "BAD"),          # epoch 0
            ("MM MASTER-WHO 0 2 32 5 u:x", "BAD"),          # src 0
            ("MM LINKS 1 1 4294967297 1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,"
             "21,22,23,24,25,26,27,28,29,30,31,32,33,34,35,36,37,38,39,40,41,42,43,44,45,46,"
             "47,48,49,50,51,52,53,54,55,56,57,58,59,60,61,62,63,64,65", "BAD"),  # 65 nbrs
            ("MM (LINKS 1 1 1 2)", "BAD"),
            ("MM MASTER-IS 1 2 32 4294967297 \"bad key\" 1 1", "BAD"),
            ("MM LINKS 1 1 4294967297 2", "OK"),
        ]
        tag = 2
        for line, want in cases:
            r = p.command(line)
            R.check("%r answered %s" % (line[:40], want),
                    r[-1].startswith("C%d %s" % (tag, want)), r[-1])
            tag += 1
        R.equal("link survives bad messages", p.command("PING")[-1], "C%d OK PONG" % tag)
        R.check("node 2 sends its link state as MM LINKS commands",
                any(x.startswith("LINKS 2 ") for x in p.mm_seen), p.mm_seen[:5])
        R.check("node 2 still runs", n2.running())
        st = n2.status()
        R.check("node 2 still answers status with a root", "root" in st, st)
    finally:
        p.close()
    finish_cluster(c)


def t_five_nodes_partition():
    c = new_cluster(5)
    setup_user(c)
    c.wait_links_up(timeout=40)
    t, ans = wait_agree(c.nodes, want_root=1)
    R.check("5 nodes agree on root 1 and one master", t is not None, ans)
    left, right = c.nodes[:2], c.nodes[2:]
    for i in (1, 2):
        for j in (3, 4, 5):
            c.cut(i, j)
    t0 = time.monotonic()
    tl, al = wait_agree(left, want_root=1)
    tr, ar = wait_agree(right, want_root=3)
    R.check("side {1,2} agrees on root 1 and a master", tl is not None, al)
    R.check("side {3,4,5} agrees on root 3 and a master", tr is not None, ar)
    if tl is not None and tr is not None:
        print("measured: 5 nodes cut 2|3 -> both sides agree on root and master in %.2f s"
              % (time.monotonic() - t0))
    for i in (1, 2):
        for j in (3, 4, 5):
            c.restore(i, j)
    t0 = time.monotonic()
    c.wait_links_up(timeout=40)
    t, ans = wait_agree(c.nodes, want_root=1)
    R.check("after the heal: one root (1) and one master for all 5", t is not None, ans)
    if t is not None:
        print("measured: partition healed -> all 5 agree on root and master %.2f s "
              "after restore (links up included)" % (time.monotonic() - t0))
        claimants = [i for i, a in ans.items() if a["is_master"] == "yes"]
        R.check("one node claims mastership after the heal", len(claimants) == 1, ans)
    finish_cluster(c)


def imap_append(client, n):
    r = client.command("APPEND INBOX", imapwire.Literal(
        "Subject: follow %d\r\n\r\nbody %d\r\n" % (n, n)))
    return r.status == "OK"


def inbox_messages(client):
    r = client.command("STATUS INBOX (MESSAGES)")
    m = re.search(rb"MESSAGES (\d+)", b" ".join(r.untagged))
    return int(m.group(1)) if m else None


def t_mastership_follows_writer():
    """Two writers do not move the mailbox back and forth; a sole writer on
    another node gets it.  Before issue 19's fix the master counted the
    writes it served for the other node as its own and refused every soft
    move, so the second part failed."""
    c = new_cluster(3, "mailbox")
    r = c.nodes[0].cli("user", "add", USER, input=b"secret\n")
    R.check("user created with the CLI", r.returncode == 0, r.stderr)
    c.start_all()
    c.wait_links_up(timeout=40)
    c.nodes[0].deliver(USER, b"Subject: first\r\n\r\nbody\r\n")
    t, ans = wait_agree(c.nodes)
    R.check("3 nodes agree on a master of INBOX", t is not None, ans)
    if t is None:
        finish_cluster(c)
        return
    m = one(ans, "master")
    master = c.nodes[m - 1]
    writer = c.nodes[m % 3]          # another node
    clients = {}
    for node in (master, writer):
        cl = imapwire.Client(node.host, node.imap_port)
        R.equal("login on node %d" % node.node_id, cl.login(USER, "secret").status, "OK")
        clients[node.node_id] = cl
    appended = 0

    # Both write, in turn, for 8 s: longer than the hold-down and a window.
    seen, moves, ok = [m], 0, True
    t0 = time.monotonic()
    while time.monotonic() - t0 < 8.0 and appended < 4000 and ok:
        for node in (master, writer):
            ok = ok and imap_append(clients[node.node_id], appended)
            appended += 1
        if appended % 10 == 0:
            a = poll([writer], record=False).get(writer.node_id)
            if a and a["master"] != "0" and int(a["master"]) != seen[-1]:
                seen.append(int(a["master"]))
                moves += 1
    R.check("two writers: every APPEND OK", ok)
    R.check("two writers for 8 s (%d APPENDs): at most one move (%s)"
            % (appended, seen), moves <= 1, seen)

    # The other node's client writes alone: the mailbox follows it.
    if seen[-1] == writer.node_id:
        writer, master = master, writer   # it moved already: try the other way
    t0 = time.monotonic()
    got, n_alone = None, 0
    while time.monotonic() - t0 < 20.0 and n_alone < 4000:
        ok = imap_append(clients[writer.node_id], appended)
        appended += 1
        n_alone += 1
        if not ok:
            break
        a = poll([writer], record=False).get(writer.node_id)
        if a and a.get("is_master") == "yes":
            got = time.monotonic() - t0
            break
    R.check("sole writer on node %d: every APPEND OK" % writer.node_id, ok)
    R.check("sole writer on node %d gets the mastership" % writer.node_id, got is not None,
            master_show(writer))
    if got is not None:
        print("measured: sole writer on node %d got the mastership after %.2f s, %d APPENDs"
              % (writer.node_id, got, n_alone))
    t, ans = wait_agree(c.nodes, record=False)
    R.check("all nodes agree the master is node %d" % writer.node_id,
            t is not None and one(ans, "master") == writer.node_id, ans)
    R.check("exactly node %d says it is master" % writer.node_id,
            t is not None and [k for k, a in ans.items() if a["is_master"] == "yes"]
            == [writer.node_id], ans)

    # No message lost or doubled across the moves: 1 delivery + every APPEND.
    want = 1 + appended
    counts = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        counts = {}
        for node in c.nodes:
            cl = clients.get(node.node_id)
            if cl is None:
                cl = imapwire.Client(node.host, node.imap_port)
                if cl.login(USER, "secret").status != "OK":
                    continue
                clients[node.node_id] = cl
            counts[node.node_id] = inbox_messages(cl)
        if all(v == want for v in counts.values()) and len(counts) == 3:
            break
        time.sleep(0.2)
    R.check("every node has all %d messages" % want,
            len(counts) == 3 and all(v == want for v in counts.values()), counts)
    for cl in clients.values():
        cl.close()
    finish_cluster(c)


def main():
    R.section("one node, mailbox granules", t_single_node_mailbox_granule)
    R.section("three nodes: agreement, kill root, kill master, rejoin", t_three_nodes)
    R.section("five nodes: partition 2|3 and heal", t_five_nodes_partition)
    R.section("hostile MM messages from a peer", t_hostile_messages)
    R.section("three nodes: mastership follows the writer", t_mastership_follows_writer)
    for cl in CLUSTERS:
        cl.close()
    double = {k: v for k, v in CLAIMS.items() if len(v) > 1}
    R.check("never two nodes claiming one granule at one epoch (%d epochs seen)"
            % len(CLAIMS), not double, double)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
