#!/usr/bin/env python3
"""Routing through a partial mesh (issue 13 item 3, SPEC.md 6.3 and 8.6).

Three real nodes, every directed link through a LinkProxy, and the link
1-3 cut while node 2 stays linked to both (the seed's A-B-C case).  Node 1
is master of the user's INBOX (the user's first APPEND is made there).
Checked, with the link 1-3 still cut:

  - APPENDs and STOREs on node 3 are forwarded to node 1 through node 2
    (`TO 1`): each is answered OK promptly, node 3 makes none of them
    autonomously (`autonomous_changes` stays 0) and counts them in
    `forwarded_changes`, node 2 counts the commands it relayed
    (`relayed_commands`), and every OK'd message is on node 1 within a few
    seconds with the UID its APPENDUID named;
  - node 1's own changes (APPEND, STORE, CREATE) reach node 3, which gets
    no stream from node 1, within a bounded time, through node 2;
  - `starling dump` is byte-identical on the three nodes within a bounded
    time;
  - node 3 cut off from both writes by itself; once its link to node 2
    alone comes back, its changes are on node 1 within seconds (a resync
    that changed node 2 is passed on to the peers of node 2 that have no
    link to node 3), and the dumps become identical, link 1-3 still cut.

Four nodes in a chain 1-2-3-4 (links 1-3, 1-4 and 2-4 cut): APPENDs on
node 4 reach node 1 through 3 and 2 (never autonomously), node 1's APPEND
reaches node 4 (each node passes a change on to the peers it is the parent
of in the breadth-first tree rooted at the change's origin), and the four
dumps become identical.

Two nodes with the periodic check every 15 s: node 2 writes alone, then
node 1 restarts once node 2 is back; the difference node 1's first check
finds is resynced 3 s later (the confirming round), not a whole interval
later (about 18 s after node 1's start instead of 30).

Then, with a Python peer playing node 1 against node 2 alone: a command
whose VIA already holds node 2 is refused `NO [LOOP]`, one whose VIA holds
8 SIDs `NO [HOPLIMIT]`, one `TO` a node with no route `NO [TRYLATER]`, and
none of them changes anything.

Times are printed as "measured: ...".  The last line is
"cluster-routing: N passed, M failed".
"""
import os
import re
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness.imapwire import Client, Literal, quote  # noqa: E402
from harness.peerwire import PyPeer  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("cluster-routing")
PASSWORD = "secret"
USER = "route@example.com"
# A forwarded change is answered within this (the direct case takes a few
# ms; going autonomous takes three master look-ups, about 0.6 s or more).
ANSWER_BOUND = 2.0
# How long a change may take to show on a node, CLI polling and sanitizers
# included.
SHOW_BOUND = 5.0
CONVERGE = 20.0


def message(tag, i):
    return ("From: t@example.com\r\nSubject: %s %d\r\nMessage-ID: <%s.%d@test>\r\n\r\n"
            "body %s %d\r\n" % (tag, i, tag, i, tag, i)).encode()


def login(node):
    c = Client(node.host, node.imap_port, timeout=30)
    r = c.login(USER, PASSWORD)
    if not r.ok:
        raise RuntimeError("login on node %d: %r" % (node.node_id, r))
    return c


def append(c, data):
    r = c.command("APPEND", quote("INBOX"), Literal(data, plus=True))
    uid = None
    if r.ok and r.code == "APPENDUID" and r.code_args:
        parts = r.code_args.split()
        if len(parts) == 2 and parts[1].isdigit():
            uid = int(parts[1])
    return r.ok, uid, r


def status(node):
    try:
        r = node.cli("status", timeout=15)
    except Exception:  # noqa: BLE001 -- CLI timeout
        return {}
    out = {}
    for line in r.stdout.decode(errors="replace").splitlines():
        k, sep, v = line.partition(": ")
        if sep:
            out[k.strip()] = v.strip()
    return out


def counter(node, key):
    v = status(node).get(key, "")
    return int(v) if v.isdigit() else None


def msgs(node):
    """{uid: (guid, flags)} of INBOX from `starling dump`."""
    out = {}
    for line in node.dump(USER).splitlines():
        m = re.match(r"msg INBOX uid=(\d+) guid=(\w+) flags=(\S*)", line)
        if m:
            out[int(m.group(1))] = (m.group(2), m.group(3))
    return out


def wait_for(pred, timeout):
    """Seconds until pred() is true, or None after timeout."""
    t0 = time.monotonic()
    while True:
        try:
            if pred():
                return time.monotonic() - t0
        except RuntimeError:
            pass
        if time.monotonic() - t0 >= timeout:
            return None
        time.sleep(0.1)


def master_of(node, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = node.cli("master", "show", "-u", USER, "-m", "INBOX", timeout=20)
        m = re.search(rb"^master: (\d+)$", r.stdout, re.M)
        if r.returncode == 0 and m and int(m.group(1)) != 0:
            return int(m.group(1))
        time.sleep(0.2)
    return None


def t_partial_mesh(c):
    n1, n2, n3 = c.nodes
    cl1 = login(n1)
    ok, uid, r = append(cl1, message("first", 0))
    R.check("the first APPEND, on node 1", ok and uid is not None, r)
    R.equal("node 1 is master of INBOX", master_of(n1), 1)

    c.cut(1, 3)
    t = wait_for(lambda: n1.peer_state(3) != "up" and n3.peer_state(1) != "up", 15)
    R.check("nodes 1 and 3 see their link down", t is not None)
    # Node 3 still reaches node 1 (through node 2) in the link state.
    t = wait_for(lambda: status(n3).get("mm_component") == "1,2,3" and
                 status(n3).get("root") == "1", 15)
    R.check("node 3's component is still 1,2,3 with root 1", t is not None, status(n3))

    fwd0 = counter(n3, "forwarded_changes")
    cl3 = login(n3)
    uids, times = {}, []
    for i in range(10):
        t0 = time.monotonic()
        ok, uid, r = append(cl3, message("three", i))
        times.append(time.monotonic() - t0)
        R.check("APPEND %d on node 3 answers OK with APPENDUID" % i, ok and uid is not None, r)
        if ok and uid is not None:
            uids[uid] = i
    print("measured: APPEND on node 3 through node 2: max %.3f s, mean %.3f s"
          % (max(times), sum(times) / len(times)))
    R.check("every APPEND answered within %.1f s" % ANSWER_BOUND, max(times) < ANSWER_BOUND,
            times)
    R.equal("node 3 made no change autonomously", counter(n3, "autonomous_changes"), 0)
    fwd1 = counter(n3, "forwarded_changes")
    R.check("node 3 forwarded the 10 APPENDs", fwd0 is not None and fwd1 is not None and
            fwd1 - fwd0 >= 10, (fwd0, fwd1))
    R.check("node 2 relayed them", (counter(n2, "relayed_commands") or 0) >= 10,
            status(n2).get("relayed_commands"))
    t = wait_for(lambda: set(uids) <= set(msgs(n1)), SHOW_BOUND)
    R.check("every OK'd APPEND of node 3 is on node 1 within %.0f s, at its UID" % SHOW_BOUND,
            t is not None, (sorted(uids), sorted(msgs(n1))))
    if t is not None:
        print("measured: node 3's APPENDs on node 1 %.2f s after the last OK" % t)
    mine = msgs(n3)
    R.check("node 3 holds them at the same UIDs with the same GUIDs",
            all(mine.get(u, ("", ""))[0] == msgs(n1).get(u, ("?", ""))[0] for u in uids))

    # STORE on node 3, forwarded the same way.
    r = cl3.command("SELECT INBOX")
    R.check("SELECT on node 3", r.ok, r)
    some = sorted(uids)[:3]
    t0 = time.monotonic()
    r = cl3.command("UID STORE %s +FLAGS (\\Flagged)" % ",".join(map(str, some)))
    took = time.monotonic() - t0
    R.check("UID STORE on node 3 answers OK within %.1f s" % ANSWER_BOUND,
            r.ok and took < ANSWER_BOUND, (r, took))
    R.equal("... not autonomously", counter(n3, "autonomous_changes"), 0)
    t = wait_for(lambda: all("\\Flagged" in msgs(n1).get(u, ("", ""))[1] for u in some),
                 SHOW_BOUND)
    R.check("the flags are on node 1 within %.0f s" % SHOW_BOUND, t is not None,
            {u: msgs(n1).get(u) for u in some})
    r = cl3.command("UID STORE %d +FLAGS (\\Deleted)" % some[0])
    R.check("STORE \\Deleted on node 3", r.ok, r)
    r = cl3.command("UID EXPUNGE %d" % some[0])
    R.check("UID EXPUNGE on node 3", r.ok, r)
    R.equal("... not autonomously", counter(n3, "autonomous_changes"), 0)
    t = wait_for(lambda: some[0] not in msgs(n1), SHOW_BOUND)
    R.check("the expunge is on node 1 within %.0f s" % SHOW_BOUND, t is not None)

    # Node 1's own changes reach node 3, which has no link to it.
    t0 = time.monotonic()
    ok1, uid1, r = append(cl1, message("one", 1))
    R.check("APPEND on node 1", ok1 and uid1 is not None, r)
    r = cl1.command("SELECT INBOX")
    r = cl1.command("UID STORE %d +FLAGS (\\Seen)" % some[1])
    R.check("STORE on node 1", r.ok, r)
    g1 = msgs(n1).get(uid1, ("?", ""))[0]
    t = wait_for(lambda: msgs(n3).get(uid1, ("", ""))[0] == g1 and
                 "\\Seen" in msgs(n3).get(some[1], ("", ""))[1], CONVERGE / 2)
    R.check("node 1's APPEND and STORE reach node 3 within %.0f s, link 1-3 cut"
            % (CONVERGE / 2), t is not None, sorted(msgs(n3)))
    if t is not None:
        print("measured: node 1's changes on node 3 after %.2f s (link 1-3 cut)"
              % (time.monotonic() - t0))
    # A mailbox-list change made on node 1 travels the same way.
    r = cl1.command("CREATE Routed")
    R.check("CREATE on node 1", r.ok, r)
    t = wait_for(lambda: "mailbox Routed " in n3.dump(USER), SHOW_BOUND)
    R.check("node 1's CREATE reaches node 3 within %.0f s, link 1-3 cut" % SHOW_BOUND,
            t is not None)
    t0 = time.monotonic()
    t = wait_for(lambda: len({n.dump(USER) for n in c.nodes}) == 1, CONVERGE)
    R.check("dumps identical on nodes 1, 2, 3 within %.0f s, link 1-3 cut" % CONVERGE,
            t is not None)
    if t is not None:
        print("measured: dumps equal %.2f s after the last change (link 1-3 cut)"
              % (time.monotonic() - t0))
    R.check("the link 1-3 was cut all along", n1.peer_state(3) != "up")
    for cl in (cl1, cl3):
        cl.logout()
    c.restore(1, 3)


def t_route_returns(c):
    """Node 3 alone writes (as the master of its own part); when only its
    link to node 2 comes back, its changes reach node 1 within seconds."""
    n1, n2, n3 = c.nodes
    t = wait_for(lambda: all(v == "up" for v in c.links_state().values()), 30)
    R.check("all links up again", t is not None, c.links_state())
    c.cut(1, 3)
    c.cut(2, 3)
    t = wait_for(lambda: status(n3).get("mm_component") == "3", 15)
    R.check("node 3 is alone", t is not None, status(n3).get("mm_component"))
    before = {g for g, _ in msgs(n3).values()}
    cl3 = login(n3)
    for i in range(3):
        ok, uid, r = append(cl3, message("alone", i))
        R.check("APPEND %d on node 3 alone" % i, ok, r)
    cl3.logout()
    new = {g for g, _ in msgs(n3).values()} - before
    R.equal("three new messages on node 3", len(new), 3)
    c.restore(2, 3)
    t0 = time.monotonic()
    t = wait_for(lambda: n3.peer_state(2) == "up", 15)
    R.check("the link 2-3 is back", t is not None)
    bound = 15.0
    t = wait_for(lambda: new <= {g for g, _ in msgs(n1).values()}, bound)
    R.check("node 3's changes reach node 1 within %.0f s of a route existing (1-3 cut)"
            % bound, t is not None, (len(new), len(new & {g for g, _ in msgs(n1).values()})))
    if t is not None:
        print("measured: node 3's own changes on node 1 %.2f s after the link 2-3 "
              "came back" % (time.monotonic() - t0))
    t = wait_for(lambda: len({n.dump(USER) for n in c.nodes}) == 1, CONVERGE)
    R.check("dumps identical on nodes 1, 2, 3 within %.0f s, link 1-3 cut" % CONVERGE,
            t is not None)
    R.check("the link 1-3 was cut all along", n1.peer_state(3) != "up")
    c.restore(1, 3)


def t_chain(c):
    """Four nodes in a chain 1-2-3-4 (links 1-3, 1-4, 2-4 cut)."""
    n1, n4 = c.nodes[0], c.nodes[3]
    cl1 = login(n1)
    ok, uid, r = append(cl1, message("chain", 0))
    R.check("the first APPEND, on node 1", ok, r)
    R.equal("node 1 is master of INBOX", master_of(n1), 1)
    for i, j in ((1, 3), (1, 4), (2, 4)):
        c.cut(i, j)
    t = wait_for(lambda: status(n4).get("mm_component") == "1,2,3,4" and
                 n4.peer_state(1) != "up" and n4.peer_state(2) != "up" and
                 n1.peer_state(3) != "up", 15)
    R.check("node 4 reaches node 1 only through 3 and 2", t is not None, status(n4))
    fwd0 = counter(n4, "forwarded_changes") or 0
    cl4 = login(n4)
    guids = set()
    for i in range(3):
        t0 = time.monotonic()
        ok, uid, r = append(cl4, message("four", i))
        took = time.monotonic() - t0
        R.check("APPEND %d on node 4 answers OK within %.1f s" % (i, ANSWER_BOUND),
                ok and took < ANSWER_BOUND, (r, took))
    cl4.logout()
    R.equal("node 4 made no change autonomously", counter(n4, "autonomous_changes"), 0)
    R.check("... it forwarded them", (counter(n4, "forwarded_changes") or 0) - fwd0 >= 3)
    guids = {g for g, _ in msgs(n4).values()}
    t = wait_for(lambda: guids <= {g for g, _ in msgs(n1).values()}, SHOW_BOUND)
    R.check("node 4's APPENDs are on node 1 within %.0f s" % SHOW_BOUND, t is not None)
    t0 = time.monotonic()
    ok, uid1, r = append(cl1, message("chain", 1))
    cl1.logout()
    R.check("an APPEND on node 1", ok and uid1 is not None, r)
    g1 = msgs(n1).get(uid1, ("?", ""))[0]
    t = wait_for(lambda: msgs(n4).get(uid1, ("", ""))[0] == g1, SHOW_BOUND)
    R.check("node 1's APPEND reaches node 4 (three hops) within %.0f s" % SHOW_BOUND,
            t is not None, sorted(msgs(n4)))
    if t is not None:
        print("measured: chain 1-2-3-4: node 1's APPEND on node 4 after %.2f s"
              % (time.monotonic() - t0))
    t = wait_for(lambda: len({n.dump(USER) for n in c.nodes}) == 1, CONVERGE)
    R.check("dumps identical on the four nodes within %.0f s" % CONVERGE, t is not None)


def t_check_confirms_soon(c, interval):
    """Node 2 writes alone; node 1 restarts after node 2 is back, so its
    first periodic check comes one interval later: the difference it finds
    is confirmed, and resynced, 3 s after that, not one interval later."""
    n1, n2 = c.nodes[0], c.nodes[1]
    cl = login(n1)
    ok, uid, r = append(cl, message("base", 0))
    cl.logout()
    R.check("an APPEND on node 1", ok, r)
    t = wait_for(lambda: n1.dump(USER) == n2.dump(USER), 15)
    R.check("... on node 2 too", t is not None)
    n2.stop()
    n2.peer_ids = set()
    n2.start()
    cl = login(n2)
    for i in range(3):
        ok, uid, r = append(cl, message("alone2", i))
        R.check("APPEND %d on node 2 alone" % i, ok, r)
    cl.logout()
    n2.stop()
    n1.stop()
    n2.peer_ids = None
    n2.start()
    n1.start()
    t0 = time.monotonic()
    c.wait_links_up(timeout=30)
    R.check("nodes 1 and 2 differ after the restart", n1.dump(USER) != n2.dump(USER))
    bound = interval + 9.0
    t = wait_for(lambda: n1.dump(USER) == n2.dump(USER), bound + interval)
    took = time.monotonic() - t0
    print("measured: periodic check every %.0f s: nodes equal %.1f s after node 1 started"
          % (interval, took))
    R.check("the first check's difference is resynced within %.0f s of node 1's start "
            "(one interval and the 3 s confirmation), not two intervals" % bound,
            t is not None and took < bound, took)
    R.check("by the periodic check", "sync check: " in n1.log_text())


def t_loop_and_hops(c):
    """A Python peer as node 1 against node 2 alone (node 2 is master)."""
    n2 = c.nodes[1]
    cl = login(n2)
    ok, uid, r = append(cl, message("loop", 0))
    R.check("APPEND on node 2", ok and uid == 1, r)
    cl.logout()
    dump = n2.dump(USER)
    m = re.search(r"mailbox INBOX guid=(\w+) uidvalidity=(\d+)", dump)
    g = re.search(r"msg INBOX uid=1 guid=(\w+)", dump)
    with open(c.secret_file, "rb") as f:
        secret = f.read().rstrip(b"\n")
    p = PyPeer(n2.repl_port, 1, secret)
    R.check("the peer authenticates", p.auth().startswith("C1 OK"))
    r = p.command("MBOX 7 %s INBOX %s %s" % (USER, m.group(2), m.group(1)))
    R.check("MBOX binds INBOX", r[-1].split()[1] == "OK", r)
    r = p.command("SELECT 7")
    R.check("SELECT", r[-1].split()[1] == "OK", r)
    store = "STORE 1 0 (\\Flagged) () GUIDS (%s)" % g.group(1)
    r = p.command(store + " TO 3 VIA (1 2)")
    R.check("VIA holding node 2: NO [LOOP]", r[-1].split()[1:3] == ["NO", "[LOOP]"], r)
    r = p.command(store + " TO 3 VIA (1 4 5 6 7 8 9 10)")
    R.check("VIA holding 8 SIDs: NO [HOPLIMIT]", r[-1].split()[1:3] == ["NO", "[HOPLIMIT]"], r)
    r = p.command(store + " TO 3")
    R.check("TO a node with no route: NO [TRYLATER] no route",
            r[-1].split()[1:3] == ["NO", "[TRYLATER]"] and "no route" in r[-1], r)
    flags = re.search(r"msg INBOX uid=1 guid=\w+ flags=(\S*)", n2.dump(USER)).group(1)
    R.equal("none of them changed the message", flags, "")
    p.close()


def main():
    c = Cluster(n=3, users={USER: PASSWORD}, proxies=True,
                extra_config={"sync_replicas": 1})
    try:
        c.start_all()
        c.wait_links_up(timeout=40)
        R.section("A-B-C: link 1-3 cut, node 1 master, changes on node 3", t_partial_mesh, c)
        R.section("node 3's own changes reach node 1 through node 2", t_route_returns, c)
        c.close()
        reps = c.sanitizer_reports()
        R.check("no sanitizer report in the node logs", not reps, reps)
    finally:
        c.close()
    c = Cluster(n=4, users={USER: PASSWORD}, proxies=True,
                extra_config={"sync_replicas": 1})
    try:
        c.start_all()
        c.wait_links_up(timeout=40)
        R.section("a chain of four nodes", t_chain, c)
        c.close()
        reps = c.sanitizer_reports()
        R.check("no sanitizer report in the node logs", not reps, reps)
    finally:
        c.close()
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "15"
    c = Cluster(n=2, users={USER: PASSWORD}, extra_config={"sync_replicas": 0})
    try:
        c.start_all()
        c.wait_links_up(timeout=40)
        R.section("the periodic check confirms a difference within seconds",
                  t_check_confirms_soon, c, 15.0)
        c.close()
        reps = c.sanitizer_reports()
        R.check("no sanitizer report in the node logs", not reps, reps)
    finally:
        c.close()
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0"
    c = Cluster(n=3, users={USER: PASSWORD}, extra_config={"sync_replicas": 0})
    try:
        c.nodes[1].start()
        R.section("LOOP, HOPLIMIT and no route at a relay", t_loop_and_hops, c)
        c.close()
        reps = c.sanitizer_reports()
        R.check("no sanitizer report in the node logs", not reps, reps)
    finally:
        c.close()
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
