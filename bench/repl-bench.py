#!/usr/bin/env python3
"""Replication benchmark of issue 6, in one run:

  (1) throughput: a real 3-node starlingd cluster with sync_replicas = 1
      (an APPEND is OK only once durable on the mailbox's master and one
      replica) against one private Dovecot (tests/harness/dovecot.py,
      mail_fsync = always, no replication) on the same machine and disk.
      --clients concurrent IMAP clients (separate processes), spread over
      the three nodes round robin (all on Dovecot), each APPENDs --messages
      messages of about --size bytes into one shared mailbox.  Figure:
      OK'd messages per second, from the first APPEND to the last OK.
      Afterwards every node must hold every OK'd message: `starling dump`
      identical on the three nodes (bounded wait, the time is printed).
  (2) replication lag: IMAP sessions in IDLE on nodes 2 and 3 in an empty
      mailbox; --clients writers APPEND to it on node 1 at once.  For each
      APPEND, lag = time of the first untagged "* n EXISTS" on the IDLE
      session with n >= the message's rank among the UIDs (UIDs are given
      in order by the master, and a replica applies in order) minus the
      time of the APPEND's tagged OK.  All processes use CLOCK_MONOTONIC.
      An EXISTS seen before the OK counts as 0 (the count is printed).
      Prints p50, p99 and max per IDLE node and overall.

Goals (issue 6): replicated rate >= Dovecot's unreplicated rate; lag p99 <
10 ms on loopback with 8 concurrent writers.  Run it through
bench/repl-vs-dovecot.sh (an -O2 build, data on a real disk).
"""
import argparse
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))
sys.dont_write_bytecode = True
from harness import proc  # noqa: E402
from harness.imapwire import Client, Literal, quote  # noqa: E402
from harness.starling import Cluster  # noqa: E402

USER, PW = "replbench", "replbench-pw"
WORDS = ("the of and to in is that for it as was with be by on not he this are or his "
         "from at which but have an they you were her she there been one all we their "
         "report meeting budget quarter server mailbox replication figures attached").split()


def make_message(client, n, size):
    hdr = ("From: Sender %d <sender%d@example.org>\r\nTo: <replbench@example.net>\r\n"
           "Subject: replication bench %d/%d\r\nDate: Mon, 15 Jul 2024 12:00:00 +0000\r\n"
           "Message-ID: <rb-%d-%d-%d@example.org>\r\nMIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
           % (client, client, client, n, os.getpid(), client, n))
    line = (" ".join(WORDS[(client + n + k) % len(WORDS)] for k in range(12)))[:72] + "\r\n"
    body = line * max(1, (size - len(hdr)) // len(line))
    return (hdr + body).encode()


def connect(port, timeout=120):
    c = Client("127.0.0.1", port, timeout=timeout)
    r = c.login(USER, PW)
    if not r.ok:
        raise RuntimeError("login on port %d failed: %r" % (port, r))
    return c


# ---------------------------------------------------------------- workers
def w_append(port, idx, mailbox, count, size, barrier, q):
    """APPENDs count messages; reports (idx, ok, [(t_ok, uid)], t0, t1, bytes)."""
    try:
        msgs = [make_message(idx, n, size) for n in range(count)]
        c = connect(port)
        barrier.wait(timeout=120)
        t0 = time.monotonic()
        oks, nbytes = [], 0
        for m in msgs:
            r = c.command("APPEND", quote(mailbox), Literal(m, plus=True))
            t = time.monotonic()
            if not r.ok:
                raise RuntimeError("APPEND failed: %r" % r)
            uid = None
            if r.code == "APPENDUID" and r.code_args:
                uid = int(r.code_args.split()[1])
            oks.append((t, uid))
            nbytes += len(m)
        t1 = time.monotonic()
        c.logout()
        q.put((idx, "ok", oks, t0, t1, nbytes))
    except Exception as e:  # noqa: BLE001
        q.put((idx, "error", "%s: %s" % (type(e).__name__, e), 0, 0, 0))


def w_idle(port, idx, mailbox, want, timeout, ready, q):
    """IDLE in mailbox until '* n EXISTS' with n >= want; reports
    (idx, "ok", [(t, n)]) for every EXISTS seen."""
    try:
        c = connect(port)
        r = c.command("SELECT", quote(mailbox))
        if not r.ok:
            raise RuntimeError("SELECT failed: %r" % r)
        tag = c.next_tag()
        c.send("%s IDLE\r\n" % tag)
        first = c.read_response()
        if not first.startswith(b"+"):
            raise RuntimeError("IDLE refused: %r" % first)
        ready.wait(timeout=120)
        seen = []
        deadline = time.monotonic() + timeout
        c.sock.settimeout(1.0)
        while time.monotonic() < deadline:
            try:
                line = c.read_line()
            except OSError:  # socket.timeout
                continue
            t = time.monotonic()
            m = re.match(rb"\* (\d+) EXISTS", line)
            if m:
                seen.append((t, int(m.group(1))))
                if int(m.group(1)) >= want:
                    break
        c.sock.settimeout(30)
        c.send("DONE\r\n")
        c.wait_tagged(tag)
        c.logout()
        q.put((idx, "ok", seen))
    except Exception as e:  # noqa: BLE001
        q.put((idx, "error", "%s: %s" % (type(e).__name__, e)))


def collect(q, n, timeout, what):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError("%s: timed out after %ds" % (what, timeout))
        out.append(q.get(timeout=left))
    errs = [r[2] for r in out if r[1] != "ok"]
    if errs:
        raise RuntimeError("%s: %d worker(s) failed: %s" % (what, len(errs), errs[:3]))
    return sorted(out)


def join_all(procs):
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()


def append_phase(ports, mailbox, clients, count, size, timeout=1800):
    """Runs clients appenders, client i on ports[i % len(ports)]; returns
    (msgs/s, MB/s, seconds, [(t_ok, uid)], messages)."""
    barrier = mp.Barrier(clients)
    q = mp.Queue()
    procs = [mp.Process(target=w_append, args=(ports[i % len(ports)], i, mailbox, count,
                                               size, barrier, q)) for i in range(clients)]
    for p in procs:
        p.start()
    try:
        res = collect(q, clients, timeout, "append")
    finally:
        join_all(procs)
    t0 = min(r[3] for r in res)
    t1 = max(r[4] for r in res)
    n = sum(len(r[2]) for r in res)
    nb = sum(r[5] for r in res)
    oks = [x for r in res for x in r[2]]
    return n / (t1 - t0), nb / (t1 - t0) / 1e6, t1 - t0, oks, n


def create_mailbox(port, name):
    c = connect(port)
    r = c.command("CREATE", quote(name))
    c.logout()
    if not r.ok:
        raise RuntimeError("CREATE %s failed: %r" % (name, r))


def wait_mailbox_everywhere(cluster, name, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(re.search(r"^mailbox %s " % re.escape(name), n.dump(USER), re.M)
               for n in cluster.nodes):
            return True
        time.sleep(0.1)
    raise RuntimeError("mailbox %s not on every node after %ds" % (name, timeout))


def wait_dumps_equal(cluster, mailbox, n, timeout):
    """Seconds until the three dumps are identical and hold n messages of
    mailbox, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        ds = [x.dump(USER) for x in cluster.nodes]
        if all(d == ds[0] for d in ds) and \
                sum(1 for ln in ds[0].splitlines() if ln.startswith("msg %s " % mailbox)) == n:
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * len(xs) + 0.5)) - 1))
    return xs[k]


def master_of(node, mailbox):
    r = node.cli("master", "show", "-u", USER, "-m", mailbox, timeout=30)
    m = re.search(rb"^master: (\d+)$", r.stdout, re.M)
    return int(m.group(1)) if m else None


def main():
    ap = argparse.ArgumentParser(description="issue 6 replication benchmark")
    ap.add_argument("--build", required=True, help="build dir (replicator/starlingd, cli/starling)")
    ap.add_argument("--bench-dir", default="/var/tmp")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--messages", type=int, default=100, help="APPENDs per client, phase 1")
    ap.add_argument("--size", type=int, default=33000, help="bytes per message")
    ap.add_argument("--lag-messages", type=int, default=50, help="APPENDs per writer, phase 2")
    ap.add_argument("--rounds", type=int, default=1,
                    help="throughput rounds (cluster and Dovecot take turns; medians)")
    ap.add_argument("--no-dovecot", action="store_true")
    a = ap.parse_args()
    if not (1 <= a.clients <= 64 and 1 <= a.messages <= 10000 and 200 <= a.size <= 10 << 20
            and 1 <= a.lag_messages <= 10000 and 1 <= a.rounds <= 9):
        ap.error("arguments out of range")
    daemon = os.path.join(a.build, "replicator", "starlingd")
    cli = os.path.join(a.build, "cli", "starling")
    sdir = tempfile.mkdtemp(prefix="starling-replbench-", dir=a.bench_dir)
    proc._tmpdirs.append(sdir)
    print("machine: %s, %d cores; data in %s (%s)" % (
        subprocess.run(["uname", "-srm"], capture_output=True, text=True).stdout.strip(),
        os.cpu_count(), a.bench_dir,
        subprocess.run(["stat", "-f", "-c", "%T", a.bench_dir], capture_output=True,
                       text=True).stdout.strip()))
    print("starlingd: %s" % daemon)
    print("load: %d clients x %d APPENDs of %d bytes; lag: %d writers x %d APPENDs; %d round(s)"
          % (a.clients, a.messages, a.size, a.clients, a.lag_messages, a.rounds), flush=True)

    c = Cluster(n=3, users={USER: PW}, daemon=daemon, cli=cli, base_dir=sdir,
                extra_config={"sync_replicas": 1})
    d = None
    results = {"cluster": [], "dovecot": []}
    ok = True
    try:
        c.start_all()
        c.wait_links_up(timeout=60)
        ports = [n.imap_port for n in c.nodes]
        # The user's mailboxes are made on node 1 and must reach the others
        # before clients log in there (else each node makes its own).
        cl = connect(ports[0])
        cl.command("SELECT INBOX")
        cl.logout()
        wait_mailbox_everywhere(c, "INBOX")
        if not a.no_dovecot:
            from harness.dovecot import Dovecot
            ddir = tempfile.mkdtemp(prefix="dovecot-replbench-", dir=a.bench_dir)
            proc._tmpdirs.append(ddir)
            d = Dovecot(users={USER: PW}, base_dir=ddir).start()
        for rnd in range(a.rounds):
            box = "tput-%d" % rnd
            create_mailbox(ports[0], box)
            wait_mailbox_everywhere(c, box)
            rate, mbs, dt, _oks, n = append_phase(ports, box, a.clients, a.messages, a.size)
            results["cluster"].append(rate)
            print("round %d: 3-node cluster, sync_replicas = 1: %d msgs in %.2f s: %.1f msgs/s, "
                  "%.2f MB/s" % (rnd + 1, n, dt, rate, mbs), flush=True)
            t = wait_dumps_equal(c, box, n, 120)
            if t is None:
                ok = False
                print("round %d: FAILED: the three dumps are not identical with %d messages "
                      "after 120 s" % (rnd + 1, n))
            else:
                print("round %d: all %d messages on every node, dumps identical %.2f s after "
                      "the last OK (CLI polling included)" % (rnd + 1, n, t), flush=True)
            if d is not None:
                create_mailbox(d.imap_port, box)
                rate, mbs, dt, _oks, n = append_phase([d.imap_port], box, a.clients,
                                                      a.messages, a.size)
                results["dovecot"].append(rate)
                print("round %d: Dovecot, mail_fsync = always: %d msgs in %.2f s: %.1f msgs/s, "
                      "%.2f MB/s" % (rnd + 1, n, dt, rate, mbs), flush=True)

        # Phase 2: lag from node 1's OK to EXISTS on nodes 2 and 3.
        box = "lag"
        create_mailbox(ports[0], box)
        wait_mailbox_everywhere(c, box)
        total = a.clients * a.lag_messages
        print("master of %s: %s (writers on node 1, IDLE on nodes 2 and 3)"
              % (box, master_of(c.nodes[0], box)), flush=True)
        ready = mp.Barrier(3)
        iq = mp.Queue()
        idlers = [mp.Process(target=w_idle, args=(ports[i], i, box, total, 180, ready, iq))
                  for i in (1, 2)]
        for p in idlers:
            p.start()
        ready.wait(timeout=120)
        try:
            _rate, _mbs, _dt, oks, n = append_phase([ports[0]], box, a.clients,
                                                    a.lag_messages, a.size)
            idle = collect(iq, 2, 240, "idle")
        finally:
            join_all(idlers)
        uids = sorted(u for _, u in oks if u is not None)
        if len(uids) != len(oks):
            raise RuntimeError("%d APPENDs had no APPENDUID" % (len(oks) - len(uids)))
        rank = {u: i + 1 for i, u in enumerate(uids)}
        all_lags = []
        for idx, _st, seen in idle:
            lags, signed, early, missing = [], [], 0, 0
            for t_ok, uid in oks:
                t_seen = next((t for t, cnt in seen if cnt >= rank[uid]), None)
                if t_seen is None:
                    missing += 1
                    continue
                lag = t_seen - t_ok
                signed.append(lag * 1000)
                if lag < 0:
                    early += 1
                lags.append(max(0.0, lag) * 1000)
            all_lags += lags
            print("lag node 1 -> node %d: %d APPENDs, p50 %.2f ms, p99 %.2f ms, max %.2f ms; "
                  "%d seen before the OK; %d never seen" % (idx + 1, len(oks), pct(lags, 50),
                                                            pct(lags, 99), max(lags or [0]),
                                                            early, missing), flush=True)
            print("   signed (EXISTS time - OK time): p1 %.2f ms, p50 %.2f ms, p90 %.2f ms"
                  % (pct(signed, 1), pct(signed, 50), pct(signed, 90)), flush=True)
            if missing:
                ok = False
    finally:
        c.stop_all()
        if d is not None:
            d.stop()

    print()
    s = statistics.median(results["cluster"])
    p50, p99 = pct(all_lags, 50), pct(all_lags, 99)
    print("APPEND msgs/s   3-node cluster (sync_replicas = 1) %10.1f" % s)
    if results["dovecot"]:
        v = statistics.median(results["dovecot"])
        ratio = s / v if v else float("inf")
        print("APPEND msgs/s   Dovecot (mail_fsync = always)     %10.1f" % v)
        print("ratio cluster/Dovecot %.2fx (goal >= 1x: %s)" % (ratio, "met" if ratio >= 1
                                                                  else "NOT met"))
        ok = ok and ratio >= 1
    print("replication lag OK -> IDLE EXISTS, %d writers: p50 %.2f ms, p99 %.2f ms "
          "(goal p99 < 10 ms: %s)" % (a.clients, p50, p99, "met" if p99 < 10 else "NOT met"))
    ok = ok and p99 < 10
    print("goals %s" % ("met" if ok else "not met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
