#!/usr/bin/env python3
"""Geography benchmark of issue 19 (run it through bench/wan.sh).

Real starlingd nodes on 127.0.0.1, every peer link behind a LinkProxy
(tests/harness/linkproxy.py) that holds each byte --delay-ms before passing
it on, in both directions: a one-way delay of 25 ms is a 50 ms round trip
between every pair of nodes.  IMAP clients talk to their node directly (a
client is in the same data centre as its node).  For each cluster size of
--nodes and each sync_replicas of --sync:

  master   --count APPENDs, then --count UID STOREs, on node 1, the master
           of the mailbox (node 1 asked for it first).
  other    the same on node 2, each of its commands after one on node 1
           (two writers, so node 1 stays master if the hysteresis holds;
           a poller counts the master changes node 2 sees meanwhile).
  follow   node 2 alone APPENDs back to back: the time from its first
           APPEND until `starling master show` on node 2 says it is the
           master (bounded by --follow-limit), and how many APPENDs that
           took; then --count APPENDs and STOREs on node 2 as the new master.

Latencies are per command, from sending it to its tagged OK (p50, p99).
Then, without delay and without proxies, APPEND throughput with each size of
--tp-nodes: --tp-clients clients spread over the nodes round robin, each
APPENDing --tp-messages messages into one mailbox, timed from the first
APPEND until every node's STATUS shows them all; copies per second is
messages times nodes over that time.  All figures come from this machine:
with a sanitizer build they are slower than a release build's.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))
sys.dont_write_bytecode = True
from harness.imapwire import Client, Literal, quote  # noqa: E402
from harness.starling import Cluster  # noqa: E402

USER, PW = "wanbench", "wanbench-pw"
BOX = "wan"


def message(tag, n, size=2000):
    hdr = ("From: <a@example.org>\r\nTo: <wanbench@example.net>\r\n"
           "Subject: wan bench %s %d\r\nMessage-ID: <wan-%s-%d-%d@example.org>\r\n\r\n"
           % (tag, n, tag, n, os.getpid()))
    body = ("geography of mail " * 4 + "\r\n") * max(1, (size - len(hdr)) // 74)
    return (hdr + body).encode()


def connect(node, select=True):
    c = Client("127.0.0.1", node.imap_port, timeout=60)
    r = c.login(USER, PW)
    if not r.ok:
        raise RuntimeError("login on node %d: %r" % (node.node_id, r))
    if select:
        r = c.command("SELECT", quote(BOX))
        if not r.ok:
            raise RuntimeError("SELECT on node %d: %r" % (node.node_id, r))
    return c


def timed(c, *parts):
    t = time.monotonic()
    r = c.command(*parts)
    dt = time.monotonic() - t
    if not r.ok:
        raise RuntimeError("%s failed: %r" % (parts[0], r))
    return dt, r


def append(c, tag, n):
    dt, r = timed(c, "APPEND", quote(BOX), Literal(message(tag, n), plus=True))
    uid = None
    if r.code == "APPENDUID" and r.code_args:
        uid = int(r.code_args.split()[1])
    return dt, uid


def store(c, uid):
    dt, _ = timed(c, "UID", "STORE", str(uid), "+FLAGS.SILENT", "(\\Flagged)")
    return dt


def status_messages(r):
    for toks in r.find("STATUS"):
        items = toks[-1] if isinstance(toks[-1], list) else []
        for k in range(0, len(items) - 1, 2):
            if items[k].upper() == b"MESSAGES":
                return int(items[k + 1])
    return None


def master_show(node):
    r = node.cli("master", "show", "-u", USER, "-m", BOX, timeout=30)
    if r.returncode != 0:
        return None
    out = {}
    for line in r.stdout.decode().splitlines():
        k, sep, v = line.partition(": ")
        if sep:
            out[k] = v
    return out


class MasterPoller(threading.Thread):
    """Polls `master show` on one node; records every change of master."""

    def __init__(self, node, interval=0.1):
        super().__init__(daemon=True)
        self.node, self.interval = node, interval
        self.changes = []          # (monotonic time, master)
        self.last = None
        self.stop_ev = threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            a = master_show(self.node)
            t = time.monotonic()
            m = a.get("master") if a else None
            if m is not None and m != self.last:
                self.changes.append((t, m))
                self.last = m
            self.stop_ev.wait(self.interval)

    def stop(self):
        self.stop_ev.set()
        self.join(timeout=40)

    def moves(self):
        return max(0, len(self.changes) - 1)


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * len(xs) + 0.5)) - 1))
    return xs[k]


def ms(xs):
    return "%6.1f %6.1f" % (pct(xs, 50) * 1000, pct(xs, 99) * 1000)


def wait_master(node, want, timeout):
    deadline = time.monotonic() + timeout
    a = None
    while time.monotonic() < deadline:
        a = master_show(node)
        if a and a.get("master") == str(want):
            return a
        time.sleep(0.1)
    raise RuntimeError("node %d: master of %s not %d after %ds: %r"
                       % (node.node_id, BOX, want, timeout, a))


def latency_run(args, n, sync):
    base = tempfile.mkdtemp(prefix="starling-wan-", dir=args.bench_dir)
    c = Cluster(n=n, users={USER: PW}, build_dir=args.build, base_dir=base, proxies=True,
                extra_config={"sync_replicas": sync})
    res = {"n": n, "sync": sync}
    try:
        c.start_all()
        c.wait_links_up(timeout=60)
        for i in range(1, n + 1):
            for j in range(i + 1, n + 1):
                c.mesh.set_latency(i, j, args.delay_ms / 1000.0)
        n1, n2 = c.nodes[0], c.nodes[1]
        c1 = connect(n1, select=False)
        r = c1.command("CREATE", quote(BOX))
        if not r.ok:
            raise RuntimeError("CREATE: %r" % r)
        c1.command("SELECT", quote(BOX))
        append(c1, "init", 0)           # node 1 asks first: it is the master
        wait_master(n1, 1, 30)
        deadline = time.monotonic() + 30
        while True:                     # the mailbox reached node 2
            try:
                c2 = connect(n2)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        wait_master(n2, 1, 30)

        a1 = [append(c1, "m", k) for k in range(args.count)]
        res["master_append"] = [d for d, _ in a1]
        c1.command("NOOP")
        res["master_store"] = [store(c1, u) for _, u in a1]

        poll = MasterPoller(n2)
        poll.start()
        other_a, other_s, uids2 = [], [], []
        for k in range(args.count):
            append(c1, "k", k)
            d, u = append(c2, "o", k)
            other_a.append(d)
            uids2.append(u)
        c2.command("NOOP")
        for k, u in enumerate(uids2):
            store(c1, a1[k][1])
            other_s.append(store(c2, u))
        time.sleep(0.3)
        poll.stop()
        res["other_append"], res["other_store"] = other_a, other_s
        res["two_writer_moves"] = poll.moves()
        res["two_writer_master"] = poll.last

        # node 2 alone: how long until it is the master?
        poll = MasterPoller(n2, interval=0.05)
        poll.start()
        t0 = time.monotonic()
        writes, moved_at = 0, None
        while time.monotonic() - t0 < args.follow_limit:
            append(c2, "f", writes)
            writes += 1
            if poll.last == "2":
                moved_at = [t for t, m in poll.changes if m == "2"][-1]
                break
        poll.stop()
        if moved_at is None and poll.last == "2":
            moved_at = [t for t, m in poll.changes if m == "2"][-1]
        res["follow_s"] = None if moved_at is None else moved_at - t0
        res["follow_writes"] = writes
        if moved_at is not None:
            af = [append(c2, "a", k) for k in range(args.count)]
            res["after_append"] = [d for d, _ in af]
            c2.command("NOOP")
            res["after_store"] = [store(c2, u) for _, u in af]
        for cl in (c1, c2):
            cl.logout()
    finally:
        c.close()
        reps = c.sanitizer_reports()
        if reps:
            print("wan-bench: sanitizer report in a node log: %s" % reps[:1], file=sys.stderr)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return res


def throughput_run(args, n):
    base = tempfile.mkdtemp(prefix="starling-wan-", dir=args.bench_dir)
    c = Cluster(n=n, users={USER: PW}, build_dir=args.build, base_dir=base)
    try:
        c.start_all()
        c.wait_links_up(timeout=60)
        c0 = connect(c.nodes[0], select=False)
        c0.command("CREATE", quote(BOX))
        append(c0, "init", 0)
        total = 1 + args.tp_clients * args.tp_messages
        clients = []
        for k in range(args.tp_clients):
            node = c.nodes[k % n]
            deadline = time.monotonic() + 30
            while True:
                try:
                    clients.append(connect(node))
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        watchers = [connect(nd, select=False) for nd in c.nodes]
        errors = []

        def worker(k, cl):
            try:
                for m in range(args.tp_messages):
                    append(cl, "t%d" % k, m)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k, cl)) for k, cl in enumerate(clients)]
        t0 = time.monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=600)
        t_ok = time.monotonic() - t0
        if errors:
            raise RuntimeError("throughput: %s" % errors[:2])
        pending = list(watchers)
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            left = []
            for w in pending:
                r = w.command("STATUS", quote(BOX), "(MESSAGES)")
                if status_messages(r) != total:
                    left.append(w)
            pending = left
            if pending:
                time.sleep(0.02)
        t_all = time.monotonic() - t0
        if pending:
            raise RuntimeError("throughput: %d node(s) lack messages after 120 s" % len(pending))
        for cl in clients + watchers:
            cl.logout()
        msgs = args.tp_clients * args.tp_messages
        return {"n": n, "msgs": msgs, "ok_s": t_ok, "all_s": t_all,
                "ok_rate": msgs / t_ok, "copies_rate": msgs * n / t_all}
    finally:
        c.close()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(TOP, "build"))
    ap.add_argument("--bench-dir", default=tempfile.gettempdir())
    ap.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay per link")
    ap.add_argument("--nodes", default="3,5")
    ap.add_argument("--sync", default="1,0")
    ap.add_argument("--count", type=int, default=30)
    ap.add_argument("--follow-limit", type=float, default=15.0)
    ap.add_argument("--tp-nodes", default="3,5,7")
    ap.add_argument("--tp-clients", type=int, default=6)
    ap.add_argument("--tp-messages", type=int, default=100)
    ap.add_argument("--keep", action="store_true", help="keep the node directories")
    args = ap.parse_args()
    nodes = [int(x) for x in args.nodes.split(",") if x]
    syncs = [int(x) for x in args.sync.split(",") if x]
    tps = [int(x) for x in args.tp_nodes.split(",") if x]

    print("wan-bench: one-way delay %.0f ms (RTT %.0f ms), %d commands per figure; "
          "latencies p50 p99 in ms" % (args.delay_ms, 2 * args.delay_ms, args.count))
    hdr = ("%-5s %-4s | %-13s %-13s | %-13s %-13s | %-6s | %-16s | %-13s %-13s"
           % ("nodes", "sync", "APPEND master", "STORE master", "APPEND other", "STORE other",
              "2w mv", "follow s (writes)", "APPEND after", "STORE after"))
    rows = []
    for n in nodes:
        for s in syncs:
            r = latency_run(args, n, s)
            fol = ("%.2f (%d)" % (r["follow_s"], r["follow_writes"]) if r["follow_s"] is not None
                   else ">%.0f (%d)" % (args.follow_limit, r["follow_writes"]))
            row = ("%-5d %-4d | %s %s | %s %s | %-6d | %-16s | %s %s"
                   % (n, s, ms(r["master_append"]), ms(r["master_store"]),
                      ms(r["other_append"]), ms(r["other_store"]), r["two_writer_moves"], fol,
                      ms(r.get("after_append", [])), ms(r.get("after_store", []))))
            rows.append(row)
            print(row, flush=True)
    if rows:
        print()
        print(hdr)
        for row in rows:
            print(row)
        print("(2w mv: master changes seen while nodes 1 and 2 wrote alternately; "
              "after: node 2 once it is master)")
    if tps:
        print()
        print("throughput, no delay: %d clients x %d APPENDs, sync_replicas = 1"
              % (args.tp_clients, args.tp_messages))
        print("%-5s | %-10s | %-12s | %-12s" % ("nodes", "APPEND/s", "on all (s)", "copies/s"))
        for n in tps:
            t = throughput_run(args, n)
            print("%-5d | %10.1f | %12.2f | %12.1f" % (n, t["ok_rate"], t["all_s"],
                                                        t["copies_rate"]), flush=True)


if __name__ == "__main__":
    main()
