#!/usr/bin/env python3
"""Sync benchmark of issue 7: Starling's resync against `doveadm backup`.

On the same generated messages, in one run:

  (a) full sync: N messages (seeded, realistic headers and text bodies,
      1-20 KB, mean about 4 KB) are APPENDed over IMAP to node 1 of a
      2-node starlingd cluster while node 1 runs alone (untimed: with its
      peer up, live replication would copy them during the load); then
      both nodes run and `starling resync -u USER --peer 1` on node 2, which
      has nothing of the user, is timed.  Node 2
      must then hold all N messages (counted over IMAP) and both nodes'
      `starling dump`s must be identical.
  (b) doveadm: the same N messages written as Maildir files into a private
      Dovecot's (tests/harness/dovecot.py, mail_fsync = always like
      Starling) mail location and indexed (untimed); then `doveadm backup -u
      USER maildir:DST` is timed, and DST must hold all N messages (counted
      with doveadm on DST, and as files).
  (c) no-change resync: a second user gets M mailboxes (IMAP CREATE on node
      1, default 1,000) with 2 small messages in each of the first 100, one
      resync brings them to node 2, then the no-change resync is timed
      --runs times through the CLI (process start included) and through the
      admin socket from this process (the RESYNC request of
      replicator/repl-admin.c: what the node itself takes); medians printed.

Prints messages, MB, seconds, MB/s for each side, the ratio, the resync
medians, and the goals of issue 7 (full sync >= 10x doveadm; no-change
resync < 100 ms).  Run through bench/sync-vs-doveadm.sh.
"""
import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import multiprocessing as mp

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TOP, "tests"))
sys.dont_write_bytecode = True
from harness import proc  # noqa: E402
from harness.starling import Cluster  # noqa: E402
from harness.dovecot import Dovecot, DOVEADM  # noqa: E402
from harness.imapwire import Client, quote  # noqa: E402

USER, PW = "syncbench", "syncbench-pw"
USER2 = "syncboxes"
WORDS = ("the of and to in is that for it as was with be by on not he this are or his "
         "from at which but have an they you were her she there been one all we their "
         "report meeting budget quarter server mailbox replication figures attached "
         "please review tomorrow thanks regards project deadline invoice customer "
         "release schedule network storage cluster").split()

_POOL = None


def text_pool(seed):
    """About 1 MB of CRLF text lines from the word list; bodies are slices."""
    global _POOL
    if _POOL is None:
        rng = random.Random(seed ^ 0x5eed)
        lines = []
        size = 0
        while size < 1 << 20:
            line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 13)))[:76]
            lines.append(line)
            size += len(line) + 2
        _POOL = "\r\n".join(lines)
    return _POOL


def body_size(rng):
    """1-20 KB, mean about 4.2 KB: 70% 1-4 KB, 25% 4-10 KB, 5% 10-20 KB."""
    r = rng.random()
    if r < 0.70:
        return rng.randint(1024, 4096)
    if r < 0.95:
        return rng.randint(4096, 10240)
    return rng.randint(10240, 20480)


def make_message(seed, i):
    """Message i of the set: the same bytes for the same (seed, i)."""
    rng = random.Random(seed * 1000003 + i)
    total = body_size(rng)
    sender = rng.randint(1, 500)
    mm, ss = rng.randint(0, 59), rng.randint(0, 59)
    hdr = ("Return-Path: <sender%d@example.org>\r\n"
           "Received: from mx%d.example.org (mx%d.example.org [192.0.2.%d])\r\n"
           "\tby mail.example.net with ESMTPS id %08x\r\n"
           "\tfor <user@example.net>; Mon, 15 Jul 2024 12:%02d:%02d +0000\r\n"
           "From: Sender %d <sender%d@example.org>\r\n"
           "To: User <user@example.net>\r\n"
           "Subject: %s (%d)\r\n"
           "Date: Mon, 15 Jul 2024 12:%02d:%02d +0000\r\n"
           "Message-ID: <sync-%d-%d-%08x@example.org>\r\n"
           "MIME-Version: 1.0\r\n"
           "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
           % (sender, i % 9, i % 9, i % 250, rng.getrandbits(32), mm, ss,
              sender, sender, " ".join(rng.choice(WORDS) for _ in range(5)), i,
              mm, ss, seed, i, rng.getrandbits(32)))
    pool = text_pool(seed)
    want = max(64, total - len(hdr))
    start = rng.randrange(0, len(pool) - want - 200)
    start = pool.index("\r\n", start) + 2  # whole lines
    body = pool[start:start + want]
    body = body[:body.rfind("\r\n") + 2] if "\r\n" in body else body + "\r\n"
    return (hdr + body).encode()


# -- loading ---------------------------------------------------------------
def worker_init():
    """A pool worker is a fork of this process: it must not inherit the
    harness' exit and signal cleanup, which would stop the servers and
    remove the data dirs when the pool ends."""
    import signal
    del proc._procs[:], proc._tmpdirs[:], proc._cleanups[:]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def run_pool(func, jobs):
    pool = mp.Pool(len(jobs), initializer=worker_init)
    try:
        out = pool.map(func, jobs)
    finally:
        pool.close()
        pool.join()
    return out


def append_worker(args):
    """APPEND messages lo..hi-1 to INBOX, pipelined with LITERAL+ in windows."""
    host, port, seed, lo, hi, window = args
    c = Client(host, port, timeout=120)
    if not c.login(USER, PW).ok:
        raise RuntimeError("login failed")
    nbytes = 0
    i = lo
    while i < hi:
        j = min(hi, i + window)
        out = []
        for k in range(i, j):
            m = make_message(seed, k)
            nbytes += len(m)
            out.append(b"a%d APPEND INBOX {%d+}\r\n" % (k, len(m)) + m + b"\r\n")
        c.send(b"".join(out))
        for k in range(i, j):
            r = c.wait_tagged("a%d" % k)
            if not r.ok:
                raise RuntimeError("APPEND %d: %r" % (k, r.line))
        i = j
    c.logout()
    return nbytes


def load_starling(node, n, seed, conns):
    step = (n + conns - 1) // conns
    jobs = [(node.host, node.imap_port, seed, lo, min(n, lo + step), 50)
            for lo in range(0, n, step)]
    return sum(run_pool(append_worker, jobs))


def maildir_worker(args):
    cur, seed, lo, hi, uid, gid = args
    nbytes = 0
    for k in range(lo, hi):
        m = make_message(seed, k).replace(b"\r\n", b"\n")  # Maildir stores LF
        name = "%d.M%dP%d.syncbench,S=%d:2," % (1700000000 + k, k, os.getpid(), len(m))
        path = os.path.join(cur, name)
        with open(path, "wb") as f:
            f.write(m)
        os.chown(path, uid, gid)
        nbytes += len(m)
    return nbytes


def load_maildir(root, n, seed, uid, gid, procs):
    for sub in ("", "cur", "new", "tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        os.chown(os.path.join(root, sub), uid, gid)
    step = (n + procs - 1) // procs
    jobs = [(os.path.join(root, "cur"), seed, lo, min(n, lo + step), uid, gid)
            for lo in range(0, n, step)]
    nbytes = sum(run_pool(maildir_worker, jobs))
    subprocess.run(["sync"], check=True)
    return nbytes


# -- checks ----------------------------------------------------------------
def imap_total(node, user):
    """(mailboxes, messages) of user over IMAP: LIST, then STATUS each."""
    c = Client(node.host, node.imap_port, timeout=120)
    if not c.login(user, PW).ok:
        raise RuntimeError("login failed on node %d" % node.node_id)
    names = []
    for line in c.command('LIST "" "*"').untagged:
        line = line.rstrip(b"\r\n")
        if line.startswith(b"* LIST "):
            names.append(line.rsplit(b" ", 1)[1].decode())
    total = 0
    for name in names:
        r = c.command("STATUS %s (MESSAGES)" % name)
        for line in r.untagged:
            if line.startswith(b"* STATUS"):
                total += int(line.rsplit(b"MESSAGES ", 1)[1].split(b")")[0])
    c.logout()
    return len(names), total


def admin_request(data_dir, line, timeout=600):
    """One request on DATA_DIR/admin.sock; returns (final line, data)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(os.path.join(data_dir, "admin.sock"))
    s.sendall(line.encode() + b"\n")
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    data, final = b"", b""
    while buf:
        nl = buf.index(b"\n")
        head = buf[:nl]
        if head.startswith(b"DATA "):
            size = int(head[5:])
            data += buf[nl + 1:nl + 1 + size]
            buf = buf[nl + 1 + size:]
        else:
            final = head
            buf = buf[nl + 1:]
    return final.decode(errors="replace"), data.decode(errors="replace")


def report_of(text):
    out = {}
    for line in text.splitlines():
        k, sep, v = line.partition(": ")
        if sep:
            out[k] = v
    return out


def resync_cli(node, user, peer, timeout=3600):
    t0 = time.monotonic()
    r = node.cli("resync", "-u", user, "--peer", str(peer), timeout=timeout)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError("resync failed (%d): %s%s" % (r.returncode, r.stdout.decode(),
                                                       r.stderr.decode()))
    return dt, report_of(r.stdout.decode(errors="replace"))


def doveadm(d, *args, timeout=3600):
    r = subprocess.run([DOVEADM, "-c", d.conf] + list(args), capture_output=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError("doveadm %s failed (%d): %s" % (" ".join(args), r.returncode,
                                                         r.stderr.decode(errors="replace")))
    return r.stdout.decode(errors="replace")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.environ.get("BUILD", os.path.join(TOP, "build")))
    ap.add_argument("--bench-dir", default=os.environ.get("BENCH_DIR", "/var/tmp"))
    ap.add_argument("--messages", type=int, default=100000)
    ap.add_argument("--mailboxes", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--starling-only", action="store_true",
                    help="diagnostics: skip doveadm")
    ap.add_argument("--perf", metavar="FILE",
                    help="diagnostics: perf record node 1 (the answering peer) "
                    "during the full sync into FILE and node 2 (the client) into "
                    "FILE.client, and both nodes during the "
                    "no-change resyncs into FILE.nochange.SID")
    ap.add_argument("--log-level", default="info",
                    help="diagnostics: the nodes' log_level (debug shows the sync's phases)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the data dirs and logs (to look at a failure)")
    args = ap.parse_args()
    n = args.messages
    daemon = os.path.join(args.build, "replicator", "starlingd")
    cli = os.path.join(args.build, "cli", "starling")
    for b in (daemon, cli):
        if not os.access(b, os.X_OK):
            raise SystemExit("sync-bench: no %s (set BUILD)" % b)
    fs = subprocess.run(["stat", "-f", "-c", "%T", args.bench_dir], capture_output=True,
                        text=True).stdout.strip()
    print("machine: %s, %d cores, load %s; data in %s (%s)" % (
        subprocess.run(["uname", "-srm"], capture_output=True, text=True).stdout.strip(),
        os.cpu_count(), open("/proc/loadavg").read().split()[:3], args.bench_dir, fs))
    print("starlingd: %s" % daemon)
    print("dovecot: %s" % subprocess.run(["dpkg-query", "-W", "-f=${Version}", "dovecot-core"],
                                          capture_output=True, text=True).stdout.strip())
    sdir = tempfile.mkdtemp(prefix="syncbench-starling-", dir=args.bench_dir)
    ddir = tempfile.mkdtemp(prefix="syncbench-dovecot-", dir=args.bench_dir)
    if not args.keep:
        proc._tmpdirs.extend([sdir, ddir])
    c = Cluster(n=2, users={USER: PW, USER2: PW}, daemon=daemon, cli=cli, base_dir=sdir,
                log_level=args.log_level)
    d = Dovecot(users={USER: PW}, base_dir=ddir)
    src, dst = c.nodes
    res = {}
    # The periodic check would start a background resync of its own.
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0"
    try:
        d.start()

        # ---- (a) Starling full sync ---------------------------------------
        # Node 1 is loaded alone, without peers: live replication would
        # copy every message to node 2 during the load.  Mail written
        # without peers is in no replication log, so once both run, only
        # the timed resync brings it to node 2, which starts empty.
        src.peer_ids = set()
        src.start()
        t0 = time.monotonic()
        nbytes = load_starling(src, n, args.seed, args.conns)
        print("loaded %d messages (%.1f MB) into node 1 (alone) over IMAP in %.1f s"
              % (n, nbytes / 1e6, time.monotonic() - t0), flush=True)
        boxes, count = imap_total(src, USER)
        if count != n:
            raise RuntimeError("node 1 holds %d messages, not %d" % (count, n))
        src.stop()
        src.peer_ids = None
        c.start_all()
        subprocess.run(["sync"], check=True)
        c.wait_links_up(timeout=120)
        boxes, count = imap_total(dst, USER)
        if count != 0:
            raise RuntimeError("node 2 holds %d messages before the resync, not 0" % count)
        perfs = []
        if args.perf:
            # Flat profiles (no call graphs: cheap enough not to change
            # the timing much) of the answering peer and of the client.
            for node, suffix in ((src, ""), (dst, ".client")):
                perfs.append(subprocess.Popen(
                    ["perf", "record", "-q", "-F", "499", "-o", args.perf + suffix, "-p",
                     str(node.process.pid)]))
            time.sleep(1)
        try:
            dt, rep = resync_cli(dst, USER, src.node_id)
        finally:
            for perf in perfs:
                perf.send_signal(2)
                perf.wait(timeout=60)
        res["starling"] = (dt, nbytes)
        boxes, count = imap_total(dst, USER)
        print("starling: resync on node 2 --peer 1: %.2f s; report: messages_received %s, "
              "texts_fetched %s, converged %s; node 2 holds %d messages in %d mailboxes"
              % (dt, rep.get("messages_received"), rep.get("texts_fetched"),
                 rep.get("converged"), count, boxes), flush=True)
        if count != n:
            raise RuntimeError("node 2 holds %d messages after the resync, not %d" % (count, n))
        c.wait_dumps_equal(USER, timeout=300)
        print("starling: dumps of node 1 and node 2 identical", flush=True)

        if not args.starling_only:
            # ---- (b) doveadm backup -------------------------------------------
            mail = os.path.join(ddir, "mail", USER)
            t0 = time.monotonic()
            dbytes = load_maildir(mail, n, args.seed, d.uid, d.gid, args.conns)
            doveadm(d, "index", "-u", USER, "INBOX")  # source indexed, as Starling's is
            print("wrote %d Maildir files (%.1f MB with LF line ends) and indexed them in %.1f s"
                  % (n, dbytes / 1e6, time.monotonic() - t0), flush=True)
            dest = os.path.join(ddir, "backup")
            os.makedirs(dest)
            os.chown(dest, d.uid, d.gid)
            subprocess.run(["sync"], check=True)
            t0 = time.monotonic()
            doveadm(d, "backup", "-u", USER, "maildir:%s" % dest)
            ddt = time.monotonic() - t0
            out = doveadm(d, "-o", "mail_location=maildir:%s" % dest, "mailbox", "status",
                          "-u", USER, "messages", "INBOX")
            dcount = int(out.split("=")[1])
            files = len(os.listdir(os.path.join(dest, "cur"))) + \
                len(os.listdir(os.path.join(dest, "new")))
            print("doveadm: backup -u %s maildir:DST: %.2f s; DST INBOX messages=%d, %d files"
                  % (USER, ddt, dcount, files), flush=True)
            if dcount != n or files != n:
                raise RuntimeError("doveadm backup left %d messages / %d files, not %d"
                                   % (dcount, files, n))
            # The same messages: Starling moved CRLF text (nbytes), Dovecot LF
            # files; MB/s is over the CRLF size (the IMAP size) for both.
            res["dovecot"] = (ddt, nbytes)

        # ---- (c) no-change resync with many mailboxes ---------------------
        cl = Client(src.host, src.imap_port, timeout=120)
        cl.login(USER2, PW)
        tags = []
        for k in range(args.mailboxes):
            t = "c%d" % k
            cl.send("%s CREATE box%04d\r\n" % (t, k))
            tags.append(t)
        for t in tags:
            if not cl.wait_tagged(t).ok:
                raise RuntimeError("CREATE failed")
        small = b"From: a@example.org\r\nSubject: small\r\n\r\nhello\r\n"
        for k in range(min(100, args.mailboxes)):
            for j in range(2):
                r = cl.command("APPEND box%04d {%d+}\r\n" % (k, len(small)) +
                               small.decode())
                if not r.ok:
                    raise RuntimeError("APPEND failed: %r" % r.line)
        cl.logout()
        t1, rep = resync_cli(dst, USER2, src.node_id)
        print("no-change setup: %d mailboxes created on node 1; first resync %.2f s "
              "(mailboxes_created %s, messages_received %s)"
              % (args.mailboxes, t1, rep.get("mailboxes_created"),
                 rep.get("messages_received")), flush=True)
        perfs = []
        if args.perf:
            for node in c.nodes:
                perfs.append(subprocess.Popen(
                    ["perf", "record", "-q", "-F", "999", "--call-graph", "dwarf", "-o",
                     "%s.nochange.%d" % (args.perf, node.node_id), "-p",
                     str(node.process.pid)]))
            time.sleep(1)
        cli_t, sock_t = [], []
        for _ in range(args.runs):
            dt, rep = resync_cli(dst, USER2, src.node_id)
            moved = {k: v for k, v in rep.items()
                     if k not in ("peer", "converged", "mailboxes_checked",
                                  "messages_examined") and v != "0"}
            if moved or rep.get("converged") != "yes":
                raise RuntimeError("no-change resync changed something: %r" % rep)
            cli_t.append(dt)
            t0 = time.monotonic()
            final, data = admin_request(dst.data_dir, "RESYNC %s %d" % (USER2, src.node_id))
            sock_t.append(time.monotonic() - t0)
            if not final.startswith("OK"):
                raise RuntimeError("admin RESYNC: %s %s" % (final, data))
        for p in perfs:
            p.send_signal(2)
            p.wait(timeout=60)
        checked = report_of(data).get("mailboxes_checked")
        res["nochange"] = (statistics.median(cli_t), statistics.median(sock_t),
                           min(sock_t), max(sock_t), checked)
    finally:
        # Link drops while the bench ran (not those of the shutdown).
        now = time.time()
        stop_at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + \
            ".%03d" % int(now % 1 * 1000)
        c.stop_all()
        for node in c.nodes:
            drops = [l for l in node.log_text().splitlines() if "link down" in l
                     and l[:23] < stop_at]
            for l in drops:
                print("note: node %d log: %s" % (node.node_id, l))
        d.stop()
        for p in (sdir, ddir):
            if args.keep:
                print("kept %s" % p)
            else:
                shutil.rmtree(p, ignore_errors=True)

    st, sb = res["starling"]
    dt_, db = res.get("dovecot", (float("nan"), sb))
    mb = sb / 1e6
    print()
    print("%-26s %10s %10s %10s %10s" % ("full sync", "messages", "MB", "seconds", "MB/s"))
    print("%-26s %10d %10.1f %10.2f %10.2f" % ("starling resync", n, mb, st, mb / st))
    print("%-26s %10d %10.1f %10.2f %10.2f" % ("doveadm backup", n, db / 1e6, dt_,
                                                 db / 1e6 / dt_))
    ratio = dt_ / st
    ok1 = ratio >= 10
    print("ratio starling/doveadm (speed): %.2fx (goal >= 10x: %s)"
          % (ratio, "met" if ok1 else "NOT met"))
    cm, sm, smin, smax, checked = res["nochange"]
    ok2 = sm < 0.1
    print("no-change resync, %d mailboxes (mailboxes_checked %s), median of %d: "
          "CLI %.1f ms, admin socket %.1f ms (min %.1f, max %.1f) (goal < 100 ms: %s)"
          % (args.mailboxes, checked, args.runs, cm * 1e3, sm * 1e3, smin * 1e3,
             smax * 1e3, "met" if ok2 else "NOT met"))
    print("goals %s" % ("met" if ok1 and ok2 else "not met"))


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, TimeoutError) as e:
        raise SystemExit("sync-bench: FAILED: %s" % e)
