#!/usr/bin/env python3
"""IMAP benchmark against any server: host, port, user, password.

Four phases, each with N concurrent clients (separate processes, so the
Python GIL doesn't serialise them), each client on its own connection:

  append  N clients x M messages of realistic sizes (a seeded mix of short
          notes, typical mails and mails with attachments) APPENDed with
          LITERAL+ into one mailbox: msgs/s and MB/s.
  fetch   every body of that mailbox fetched --fetch-rounds times (UID FETCH a:b
          (BODY.PEEK[]) in chunks, the UID range split between the
          clients): msgs/s and MB/s.  With --fetch-client PATH (the build's
          bench/imap-fetch-load) one C process holds the N connections
          instead of N Python processes: it costs far less CPU per body,
          which counts when clients and server share a few cores.
  list    the same with what a client fetches to list a mailbox (ENVELOPE,
          BODYSTRUCTURE and some header fields, LIST_ITEMS): msgs/s.
  mix     a mail-client-like mix of UID STORE +/-FLAGS, UID COPY, UID
          EXPUNGE of a \\Deleted message and UID SEARCH (flag, header and
          date keys), each client on its own messages: ops/s.

It creates a mailbox named bench-PID (and bench-PID-copy) and deletes them
at the end unless --keep.  Prints each figure, then one line
"RESULT {json}" for scripts (bench/imap-vs-dovecot.sh).

    bench/imap-bench.py --host 127.0.0.1 --port 10143 --user demo --password demo
"""
import argparse
import json
import multiprocessing as mp
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
sys.dont_write_bytecode = True
from harness.imapwire import Client, Literal, quote  # noqa: E402

WORDS = ("the of and to in is that for it as was with be by on not he this are or his "
         "from at which but have an they you were her she there been one all we their "
         "report meeting budget quarter server mailbox replication figures attached "
         "please review tomorrow thanks regards project deadline").split()


def make_message(rng, n, client):
    """A realistic message: ~1 KB of headers, a text body, sometimes an
    attachment.  Size mix: 50% 2-6 KB, 35% 10-40 KB, 15% 60-250 KB."""
    r = rng.random()
    if r < 0.50:
        body_len, attach = rng.randint(1000, 5000), 0
    elif r < 0.85:
        body_len, attach = rng.randint(2000, 8000), rng.randint(8000, 30000)
    else:
        body_len, attach = rng.randint(2000, 8000), rng.randint(50000, 240000)
    hdr = ("Return-Path: <sender%d@example.org>\r\n"
           "Received: from mx%d.example.org (mx%d.example.org [192.0.2.%d])\r\n"
           "\tby mail.example.net with ESMTPS id %08x\r\n"
           "\tfor <user@example.net>; Mon, 15 Jul 2024 12:%02d:%02d +0000\r\n"
           "DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel; b=%s\r\n"
           "From: Sender %d <sender%d@example.org>\r\n"
           "To: User <user@example.net>\r\n"
           "Subject: %s %d from client %d\r\n"
           "Date: Mon, 15 Jul 2024 12:%02d:%02d +0000\r\n"
           "Message-ID: <bench-%d-%d-%08x@example.org>\r\n"
           "MIME-Version: 1.0\r\n"
           % (client, n % 9, n % 9, n % 250, rng.getrandbits(32), n % 60, client % 60,
              "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(172)),
              client, client, " ".join(rng.choice(WORDS) for _ in range(5)), n, client,
              n % 60, client % 60, client, n, rng.getrandbits(32)))
    lines, size = [], 0
    while size < body_len:
        line = " ".join(rng.choice(WORDS) for _ in range(12))[:76]
        lines.append(line)
        size += len(line) + 2
    text = "\r\n".join(lines) + "\r\n"
    if not attach:
        return (hdr + "Content-Type: text/plain; charset=us-ascii\r\n\r\n" + text).encode()
    raw = rng.randbytes(attach * 3 // 4)
    import base64
    b64 = base64.encodebytes(raw).decode().replace("\n", "\r\n")
    return (hdr + 'Content-Type: multipart/mixed; boundary="b-%d"\r\n\r\n'
            "--b-%d\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n%s\r\n"
            "--b-%d\r\nContent-Type: application/octet-stream; name=\"data.bin\"\r\n"
            "Content-Disposition: attachment; filename=\"data.bin\"\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n%s\r\n--b-%d--\r\n"
            % (n, n, text, n, b64, n)).encode()


def connect(a):
    c = Client(a.host, a.port, timeout=120)
    r = c.login(a.user, a.password)
    if not r.ok:
        raise RuntimeError("login failed: %r" % r)
    return c


def w_append(a, idx, barrier, q):
    try:
        rng = random.Random(a.seed * 1000 + idx)
        msgs = [make_message(rng, n, idx) for n in range(a.messages)]
        c = connect(a)
        barrier.wait(timeout=120)
        t0 = time.monotonic()
        uids, nbytes = [], 0
        for m in msgs:
            r = c.command("APPEND", quote(a.mailbox), Literal(m, plus=True))
            if not r.ok:
                raise RuntimeError("APPEND failed: %r" % r)
            if r.code == "APPENDUID":
                uids.append(int(r.code_args.split()[1]))
            nbytes += len(m)
        t1 = time.monotonic()
        c.logout()
        q.put((idx, "ok", t0, t1, len(msgs), nbytes, uids))
    except Exception as e:  # noqa: BLE001
        q.put((idx, "error", 0, 0, 0, 0, "%s: %s" % (type(e).__name__, e)))


# What a mail client fetches to list a mailbox (Thunderbird, Roundcube):
# the envelope, the structure and a few header fields.
LIST_ITEMS = ("(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE "
              "BODY.PEEK[HEADER.FIELDS (From To Cc Subject Date Message-ID References "
              "In-Reply-To Content-Type)])")


class ResponseCounter:
    """Reads responses off a client's socket without building them: one
    buffer filled with recv_into, literals skipped by size (a literal that
    has not arrived yet is received and dropped).  The harness's reader
    re-slices its buffer on every line and literal, which costs the client
    more CPU than the server spends sending: 8 such clients on a 2-core
    machine then measure mostly themselves.  Same work for any server: it
    counts the FETCH responses and their bytes."""

    def __init__(self, sock, pending=b""):
        self.sock = sock
        self.buf = bytearray(max(1 << 22, 2 * len(pending)))
        self.buf[0:len(pending)] = pending
        self.mv = memoryview(self.buf)
        self.pos, self.end = 0, len(pending)

    def _recv(self):
        if self.end == len(self.buf):
            # Only a line longer than the free half: grow.
            self.mv.release()
            self.buf.extend(bytes(len(self.buf)))
            self.mv = memoryview(self.buf)
        k = self.sock.recv_into(self.mv[self.end:])
        if not k:
            raise EOFError("server closed the connection")
        self.end += k

    def response(self):
        """(first bytes, length with CRLF) of the next response, literals
        included."""
        if self.pos > len(self.buf) >> 1:
            n = self.end - self.pos
            self.buf[0:n] = self.buf[self.pos:self.end]
            self.pos, self.end = 0, n
        head, total = None, 0
        scan = line_start = self.pos
        while True:
            i = self.buf.find(b"\r\n", scan, self.end)
            while i < 0:
                scan = max(scan, self.end - 1)
                self._recv()
                i = self.buf.find(b"\r\n", scan, self.end)
            if head is None:
                head = bytes(self.buf[line_start:min(line_start + 40, i)])
            total += i + 2 - line_start
            scan = i + 2
            if i > line_start and self.buf[i - 1] == 0x7d:  # "}"
                lb = self.buf.rfind(b"{", line_start, i)
                if lb >= 0:
                    n = int(self.buf[lb + 1:i - 1].rstrip(b"+"))
                    total += n
                    if self.end - scan >= n:
                        scan += n
                    else:
                        n -= self.end - scan
                        while True:
                            k = self.sock.recv_into(self.mv)
                            if not k:
                                raise EOFError("server closed the connection")
                            if k > n:
                                break
                            n -= k
                        scan, self.end = n, k
                    line_start = scan
                    continue
            self.pos = scan
            return head, total


def w_fetch(a, idx, barrier, q, uid_lo, uid_hi, items="(BODY.PEEK[])"):
    try:
        c = connect(a)
        r = c.command("EXAMINE", quote(a.mailbox))
        if not r.ok:
            raise RuntimeError("EXAMINE failed: %r" % r)
        rd = ResponseCounter(c.sock, c.buf) if not a.harness_reader else None
        if rd is not None:
            c.buf = b""
        barrier.wait(timeout=120)
        t0 = time.monotonic()
        count, nbytes = 0, 0
        chunks = [(lo, min(uid_hi, lo + a.fetch_chunk - 1))
                  for lo in range(uid_lo, uid_hi + 1, a.fetch_chunk)]
        cmds = [(lo, hi) for _ in range(a.fetch_rounds) for lo, hi in chunks]
        sent = done = 0
        if rd is None:
            # The harness's reader, one command at a time (as before PIPELINE).
            for lo, hi in cmds:
                r = c.command("UID FETCH %d:%d %s" % (lo, hi, items))
                if not r.ok:
                    raise RuntimeError("FETCH failed: %r" % r)
                for u in r.untagged:
                    if b" FETCH " in u[:40]:
                        count += 1
                        nbytes += len(u)
            done = len(cmds)
        while done < len(cmds):
            # Keep up to --pipeline commands in flight (RFC 3501 5.5: FETCHes
            # may be pipelined).
            while sent < len(cmds) and sent - done < a.pipeline:
                lo, hi = cmds[sent]
                c.sock.sendall(b"f%d UID FETCH %d:%d %s\r\n" % (sent, lo, hi, items.encode()))
                sent += 1
            tag = b"f%d " % done
            while True:
                head, n = rd.response()
                if head.startswith(tag):
                    if not head[len(tag):].startswith(b"OK"):
                        raise RuntimeError("FETCH failed: %r" % head)
                    break
                if head.startswith(b"* ") and b" FETCH " in head:
                    count += 1
                    nbytes += n - 2
            done += 1
        t1 = time.monotonic()
        if rd is not None:
            c.buf = bytes(rd.buf[rd.pos:rd.end])
        c.logout()
        q.put((idx, "ok", t0, t1, count, nbytes, None))
    except Exception as e:  # noqa: BLE001
        q.put((idx, "error", 0, 0, 0, 0, "%s: %s" % (type(e).__name__, e)))


def w_mix(a, idx, barrier, q, uids):
    try:
        rng = random.Random(a.seed * 7777 + idx)
        c = connect(a)
        r = c.command("SELECT", quote(a.mailbox))
        if not r.ok:
            raise RuntimeError("SELECT failed: %r" % r)
        live = list(uids)
        barrier.wait(timeout=120)
        t0 = time.monotonic()
        ops = 0
        for _ in range(a.mix_ops):
            if not live:
                break
            x = rng.random()
            u = rng.choice(live)
            if x < 0.45:
                flag = rng.choice(["\\Seen", "\\Flagged", "\\Answered", "$Label1"])
                r = c.command("UID STORE %d %sFLAGS (%s)" % (u, rng.choice("+-"), flag))
            elif x < 0.60:
                r = c.command("UID COPY %d %s" % (u, quote(a.mailbox + "-copy")))
            elif x < 0.70:
                r = c.command("UID STORE %d +FLAGS.SILENT (\\Deleted)" % u)
                if r.ok:
                    r = c.command("UID EXPUNGE %d" % u)
                    live.remove(u)
            else:
                key = rng.choice(["UNSEEN", "FLAGGED", "FROM sender%d" % idx,
                                  "SUBJECT report", "SINCE 1-Jul-2024", "LARGER 20000",
                                  "OR ANSWERED KEYWORD $Label1"])
                r = c.command("UID SEARCH %s" % key)
            if not r.ok:
                raise RuntimeError("mix op failed: %r" % r)
            ops += 1
        t1 = time.monotonic()
        c.logout()
        q.put((idx, "ok", t0, t1, ops, 0, None))
    except Exception as e:  # noqa: BLE001
        q.put((idx, "error", 0, 0, 0, 0, "%s: %s" % (type(e).__name__, e)))


CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid):
    """CPU seconds (user+system) of process pid and all its descendants,
    including those that exited and were reaped (cutime/cstime of their
    parent): Dovecot's per-connection imap processes come and go within a
    phase.  None when pid is not given or /proc cannot tell."""
    if not pid:
        return None
    stats = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        f = st[st.rindex(")") + 2:].split()
        # fields from 3 on: state ppid ... utime(14) stime(15) cutime(16) cstime(17)
        stats[int(d)] = (int(f[1]), int(f[11]) + int(f[12]), int(f[13]) + int(f[14]))
    if pid not in stats:
        return None
    kids = {}
    for p, (pp, _, _) in stats.items():
        kids.setdefault(pp, []).append(p)
    total, todo = stats[pid][2], [pid]
    while todo:
        p = todo.pop()
        total += stats[p][1]
        todo.extend(kids.get(p, []))
    return total / CLK_TCK


def client_cpu():
    """CPU seconds of this process and its reaped children (the workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_phase(name, target, argsets, timeout):
    n = len(argsets)
    srv0, cli0 = tree_cpu(SERVER_PID), client_cpu()
    barrier = mp.Barrier(n)
    q = mp.Queue()
    procs = [mp.Process(target=target, args=args[:1] + (i, barrier, q) + args[1:])
             for i, args in enumerate(argsets)]
    for p in procs:
        p.start()
    results = []
    deadline = time.monotonic() + timeout
    try:
        while len(results) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("%s: timed out after %ds" % (name, timeout))
            results.append(q.get(timeout=left))
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    errs = [r[6] for r in results if r[1] != "ok"]
    if errs:
        raise RuntimeError("%s: %d client(s) failed: %s" % (name, len(errs), errs[:3]))
    start = min(r[2] for r in results)
    end = max(r[3] for r in results)
    srv1, cli1 = tree_cpu(SERVER_PID), client_cpu()
    PHASE_CPU[name] = (None if srv0 is None or srv1 is None else srv1 - srv0, cli1 - cli0)
    return results, end - start


def run_fetch_client(a, slices, timeout):
    """The fetch phase through the C load client (bench/imap-fetch-load.c):
    one process, one connection per slice, all logged in before its clock
    starts, as run_phase's barrier does.  Its CPU is counted as the clients'
    (a reaped child of this process).  Returns (bodies, bytes, seconds)."""
    srv0, cli0 = tree_cpu(SERVER_PID), client_cpu()
    cmd = [a.fetch_client, "--host", a.host, "--port", str(a.port), "--user", a.user,
           "--password", a.password, "--mailbox", a.mailbox,
           "--rounds", str(a.fetch_rounds), "--chunk", str(a.fetch_chunk),
           "--pipeline", str(a.pipeline), "--deadline", str(timeout)]
    cmd += ["%d:%d" % (s[0], s[-1]) for s in slices if s]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60)
    except subprocess.TimeoutExpired:
        raise RuntimeError("fetch: %s timed out" % a.fetch_client)
    if r.returncode != 0:
        raise RuntimeError("fetch: %s failed (status %d): %s"
                           % (a.fetch_client, r.returncode, r.stderr.strip()[:500]))
    f = r.stdout.split()
    if len(f) != 6 or (f[0], f[2], f[4]) != ("bodies", "bytes", "seconds"):
        raise RuntimeError("fetch: unexpected output of %s: %r" % (a.fetch_client, r.stdout[:200]))
    srv1, cli1 = tree_cpu(SERVER_PID), client_cpu()
    PHASE_CPU["fetch"] = (None if srv0 is None or srv1 is None else srv1 - srv0, cli1 - cli0)
    return int(f[1]), int(f[3]), float(f[5])


SERVER_PID = None
PHASE_CPU = {}
CLIENT_NAME = {}


def cpu_note(out, phase, units, label):
    """Adds the server's and the clients' CPU per unit of work of a phase:
    whether a ratio measures the server or the clients' share of the
    machine."""
    srv, cli = PHASE_CPU.get(phase, (None, None))
    if srv is not None:
        out[phase + "_srv_us"] = srv * 1e6 / units
    out[phase + "_cli_us"] = cli * 1e6 / units
    return "%s%s cpu: server %s us, clients (%s) %.0f us per %s" % (
        label, phase, "?" if srv is None else "%.0f" % (srv * 1e6 / units),
        CLIENT_NAME.get(phase, "python"), cli * 1e6 / units, "op" if phase == "mix" else "msg")


def main():
    ap = argparse.ArgumentParser(description="IMAP benchmark (APPEND, FETCH, listing, client mix)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--messages", type=int, default=100, help="APPENDs per client")
    ap.add_argument("--fetch-chunk", type=int, default=50, help="messages per UID FETCH")
    ap.add_argument("--fetch-rounds", type=int, default=3,
                    help="times each client fetches its share of the mailbox")
    ap.add_argument("--mix-ops", type=int, default=200, help="mix operations per client")
    ap.add_argument("--mailbox", default="bench-%d" % os.getpid())
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the benchmark mailboxes")
    ap.add_argument("--label", default="", help="name printed with the figures")
    ap.add_argument("--server-pid", type=int, default=0,
                    help="the server's (master) process: report its CPU per phase")
    ap.add_argument("--pipeline", type=int, default=1,
                    help="FETCH commands a fetch client keeps in flight (1: one at a time)")
    ap.add_argument("--harness-reader", action="store_true",
                    help="fetch clients read with tests/harness/imapwire.py (costlier)")
    ap.add_argument("--fetch-client", default="",
                    help="the C load client (BUILD/bench/imap-fetch-load) for the fetch phase "
                         "instead of Python processes")
    a = ap.parse_args()
    if a.fetch_client and a.harness_reader:
        ap.error("--fetch-client and --harness-reader exclude each other")
    global SERVER_PID
    SERVER_PID = a.server_pid or None
    if not (1 <= a.clients <= 500 and 1 <= a.messages <= 100000):
        ap.error("clients must be 1..500 and messages 1..100000")

    c = connect(a)
    for box in (a.mailbox, a.mailbox + "-copy"):
        r = c.command("CREATE", quote(box))
        if not r.ok:
            raise SystemExit("CREATE %s failed: %r" % (box, r))
    label = (a.label + " ") if a.label else ""
    out = {"label": a.label, "clients": a.clients, "messages": a.clients * a.messages}

    res, dt = run_phase("append", w_append, [(a,)] * a.clients, 1800)
    n = sum(r[4] for r in res)
    nb = sum(r[5] for r in res)
    out["append_msgs_s"] = n / dt
    out["append_mb_s"] = nb / dt / 1e6
    out["avg_size"] = nb / n
    print("%sappend: %d msgs (avg %.1f KB) by %d clients in %.2fs: %.1f msgs/s, %.2f MB/s"
          % (label, n, nb / n / 1024, a.clients, dt, n / dt, nb / dt / 1e6), flush=True)
    print(cpu_note(out, "append", n, label), flush=True)
    per_client_uids = [r[6] for r in sorted(res)]

    r = c.command("EXAMINE", quote(a.mailbox))
    r2 = c.command("UID FETCH 1:* (UID)")
    all_uids = sorted(it["UID"] for _, it in r2.fetches())
    if len(all_uids) != n:
        raise SystemExit("mailbox holds %d messages, %d were appended" % (len(all_uids), n))
    c.command("CLOSE")
    k = a.clients
    slices = [all_uids[i * len(all_uids) // k:(i + 1) * len(all_uids) // k] for i in range(k)]
    if a.fetch_client:
        CLIENT_NAME["fetch"] = "imap-fetch-load"
        out["fetch_client"] = "imap-fetch-load"
        fn, fb, dt = run_fetch_client(a, slices, 1800)
    else:
        out["fetch_client"] = "python"
        res, dt = run_phase("fetch", w_fetch,
                            [(a, s[0], s[-1]) for s in slices if s], 1800)
        fn = sum(r[4] for r in res)
        fb = sum(r[5] for r in res)
    if fn != n * a.fetch_rounds:
        raise SystemExit("fetched %d messages, expected %d" % (fn, n * a.fetch_rounds))
    out["fetch_msgs_s"] = fn / dt
    out["fetch_mb_s"] = fb / dt / 1e6
    print("%sfetch: %d bodies (%.1f MB) by %d clients in %.2fs: %.1f msgs/s, %.2f MB/s"
          % (label, fn, fb / 1e6, k, dt, fn / dt, fb / dt / 1e6), flush=True)
    print(cpu_note(out, "fetch", fn, label), flush=True)

    res, dt = run_phase("list", w_fetch,
                        [(a, s[0], s[-1], LIST_ITEMS) for s in slices if s], 1800)
    ln = sum(r[4] for r in res)
    if ln != n * a.fetch_rounds:
        raise SystemExit("listed %d messages, expected %d" % (ln, n * a.fetch_rounds))
    out["list_msgs_s"] = ln / dt
    print("%slist: %d messages (ENVELOPE BODYSTRUCTURE HEADER.FIELDS) by %d clients in %.2fs: "
          "%.1f msgs/s" % (label, ln, k, dt, ln / dt), flush=True)
    print(cpu_note(out, "list", ln, label), flush=True)

    if not all(per_client_uids):
        per_client_uids = [s for s in slices]
    res, dt = run_phase("mix", w_mix, [(a, u) for u in per_client_uids], 1800)
    ops = sum(r[4] for r in res)
    out["mix_ops_s"] = ops / dt
    print("%smix: %d ops (STORE/COPY/EXPUNGE/SEARCH) by %d clients in %.2fs: %.1f ops/s"
          % (label, ops, k, dt, ops / dt), flush=True)
    print(cpu_note(out, "mix", ops, label), flush=True)

    if not a.keep:
        c.command("DELETE", quote(a.mailbox))
        c.command("DELETE", quote(a.mailbox + "-copy"))
    c.logout()
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
