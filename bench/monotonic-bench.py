#!/usr/bin/env python3
"""What read barriers (issue 20, read_consistency) cost: SELECT and STATUS
latency on the mailbox's master and on a node far from it, under
read_consistency = local and = master.

A real 3-node starlingd cluster (sync_replicas = 1), every peer link through
a LinkProxy (tests/harness/linkproxy.py); node 3's links get --one-way-ms
of latency each way (the round trip to node 3 is twice that).  INBOX of one
user gets --seed messages on node 1, which is its master; a writer keeps
APPENDing on node 1 at --rate messages per second during the measurement
(0: an idle mailbox).  On node 1 and on node 3, one session sends --ops
`SELECT INBOX` and then --ops `STATUS INBOX (MESSAGES UIDNEXT HIGHESTMODSEQ)`
one after another; each command's time is from sending it to its tagged OK.
Prints p50 and p99 per node, command and mode.  Then, with --hop-seconds,
issue 20's experiment: --writers writers APPEND on node 1 as fast as they
can while one client reconnects alternately to nodes 2 and 3 and asks
STATUS INBOX (UIDNEXT HIGHESTMODSEQ); prints the reconnects and how often
either value went back (and by how many UIDs at most).  The cluster is
started afresh for each mode.  Run it through bench/monotonic.sh.
"""
import argparse
import os
import re
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))
sys.dont_write_bytecode = True
from harness.imapwire import Client, Literal  # noqa: E402
from harness.starling import Cluster  # noqa: E402

USER, PW = "monobench", "monobench-pw"


def message(i):
    return ("From: a@example.org\r\nTo: b@example.net\r\nSubject: mono %d\r\n"
            "Message-ID: <mono-%d-%d@example.org>\r\n\r\nbody %d\r\n"
            % (i, os.getpid(), i, i)).encode()


def login(node):
    c = Client(node.host, node.imap_port, timeout=60)
    r = c.login(USER, PW)
    if not r.ok:
        raise RuntimeError("login on node %d: %r" % (node.node_id, r))
    return c


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100.0 * len(s)))] * 1000


def measure(node, ops):
    c = login(node)
    out = {}
    for name, cmd in (("SELECT", "SELECT INBOX"),
                      ("STATUS", "STATUS INBOX (MESSAGES UIDNEXT HIGHESTMODSEQ)")):
        lat = []
        for _ in range(ops):
            t0 = time.monotonic()
            r = c.command(cmd)
            lat.append(time.monotonic() - t0)
            if not r.ok:
                raise RuntimeError("%s on node %d: %r" % (cmd, node.node_id, r))
        out[name] = lat
    c.logout()
    return out


def hop(c, args):
    """(reconnects, regressions, largest UID step back, APPENDs)."""
    stop = threading.Event()
    count = [0]

    def writer(k):
        cl = login(c.nodes[0])
        i = 0
        while not stop.is_set():
            i += 1
            if cl.command("APPEND INBOX", Literal(message(k * 10000000 + i), plus=True)).ok:
                count[0] += 1
        cl.logout()

    ts = [threading.Thread(target=writer, args=(k,), daemon=True) for k in range(args.writers)]
    for t in ts:
        t.start()
    best_u = best_m = 0
    reads = regs = worst = 0
    deadline = time.monotonic() + args.hop_seconds
    try:
        while time.monotonic() < deadline:
            node = c.nodes[1 + reads % 2]
            cl = login(node)
            r = cl.command("STATUS INBOX (UIDNEXT HIGHESTMODSEQ)")
            cl.logout()
            m = re.search(rb"UIDNEXT (\d+) HIGHESTMODSEQ (\d+)", b"\n".join(r.untagged))
            if not r.ok or not m:
                raise RuntimeError("STATUS on node %d: %r" % (node.node_id, r))
            reads += 1
            u, ms = int(m.group(1)), int(m.group(2))
            if u < best_u or ms < best_m:
                regs += 1
                worst = max(worst, best_u - u)
            best_u, best_m = max(best_u, u), max(best_m, ms)
    finally:
        stop.set()
        for t in ts:
            t.join(30)
    return reads, regs, worst, count[0]


def run_mode(args, mode):
    c = Cluster(n=3, users={USER: PW}, proxies=True, build_dir=args.build,
                base_dir=None, log_level="warn",
                extra_config={"sync_replicas": 1, "read_consistency": mode})
    try:
        c.start_all()
        c.wait_links_up(timeout=60)
        w = login(c.nodes[0])
        for i in range(args.seed):
            r = w.command("APPEND INBOX", Literal(message(i), plus=True))
            if not r.ok:
                raise RuntimeError("seed APPEND: %r" % r)
        c.wait_dumps_equal(USER, timeout=120)
        c.mesh.set_latency(1, 3, args.one_way_ms / 1000.0)
        c.mesh.set_latency(2, 3, args.one_way_ms / 1000.0)
        stop = threading.Event()
        appended = [0]

        def writer():
            i = args.seed
            period = 1.0 / args.rate if args.rate > 0 else 0
            nxt = time.monotonic()
            while not stop.is_set():
                i += 1
                r = w.command("APPEND INBOX", Literal(message(i), plus=True))
                if r.ok:
                    appended[0] += 1
                nxt += period
                stop.wait(max(0.0, nxt - time.monotonic()))

        t = threading.Thread(target=writer, daemon=True)
        if args.rate > 0:
            t.start()
        time.sleep(0.5)
        res = {}
        try:
            for node in (c.nodes[0], c.nodes[2]):
                res[node.node_id] = measure(node, args.ops)
        finally:
            stop.set()
            if args.rate > 0:
                t.join(30)
        w.logout()
        hops = hop(c, args) if args.hop_seconds > 0 else None
        st = c.nodes[2].status()
        return res, appended[0], st, hops
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--one-way-ms", type=float, default=25.0)
    ap.add_argument("--ops", type=int, default=200)
    ap.add_argument("--seed", type=int, default=200)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--hop-seconds", type=float, default=20.0)
    ap.add_argument("--writers", type=int, default=4)
    args = ap.parse_args()
    print("monotonic-bench: node 3 %.0f ms each way (%.0f ms round trip) from nodes 1 and 2; "
          "%d ops per command; writer %.0f APPENDs/s on node 1 (the master)"
          % (args.one_way_ms, 2 * args.one_way_ms, args.ops, args.rate), flush=True)
    for mode in ("local", "master"):
        res, appended, st, hops = run_mode(args, mode)
        for nid, label in ((1, "node 1 (master)"), (3, "node 3 (far)")):
            for cmd in ("SELECT", "STATUS"):
                lat = res[nid][cmd]
                print("read_consistency = %-6s %-16s %-6s p50 %7.2f ms  p99 %7.2f ms"
                      % (mode, label, cmd, pct(lat, 50), pct(lat, 99)), flush=True)
        print("read_consistency = %-6s node 3: read_barriers_asked %s, waited %s, local %s; "
              "%d APPENDs during the run" % (mode, st.get("read_barriers_asked"),
                                              st.get("read_barriers_waited"),
                                              st.get("read_barriers_local"), appended),
              flush=True)
        if hops is not None:
            print("read_consistency = %-6s hop test: %d reconnects in %.0f s alternating nodes 2 "
                  "and 3, %d went back (at most %d UIDs), %d APPENDs by %d writers on node 1"
                  % (mode, hops[0], args.hop_seconds, hops[1], hops[2], hops[3], args.writers),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
