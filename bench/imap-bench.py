#!/usr/bin/env python3
"""IMAP benchmark against any server: host, port, user, password.

Four phases, each with N concurrent clients (separate processes, so the
Python GIL doesn't serialise them), each client on its own connection:

  append  N clients x M messages of realistic sizes (a seeded mix of short
          notes, typical mails and mails with attachments) APPENDed with
          LITERAL+ into one mailbox: msgs/s and MB/s.
  fetch   every body of that mailbox fetched --fetch-rounds times (UID FETCH a:b
          (BODY.PEEK[]) in chunks, the UID range split between the
          clients): msgs/s and MB/s.
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


def w_fetch(a, idx, barrier, q, uid_lo, uid_hi, items="(BODY.PEEK[])"):
    try:
        c = connect(a)
        r = c.command("EXAMINE", quote(a.mailbox))
        if not r.ok:
            raise RuntimeError("EXAMINE failed: %r" % r)
        barrier.wait(timeout=120)
        t0 = time.monotonic()
        count, nbytes = 0, 0
        chunks = [(lo, min(uid_hi, lo + a.fetch_chunk - 1))
                  for lo in range(uid_lo, uid_hi + 1, a.fetch_chunk)]
        for _ in range(a.fetch_rounds):
            for lo, hi in chunks:
                r = c.command("UID FETCH %d:%d %s" % (lo, hi, items))
                if not r.ok:
                    raise RuntimeError("FETCH failed: %r" % r)
                for u in r.untagged:
                    if b" FETCH " in u[:40]:
                        count += 1
                        nbytes += len(u)
        t1 = time.monotonic()
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


def run_phase(name, target, argsets, timeout):
    n = len(argsets)
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
    return results, end - start


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
    a = ap.parse_args()
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
    per_client_uids = [r[6] for r in sorted(res)]

    r = c.command("EXAMINE", quote(a.mailbox))
    r2 = c.command("UID FETCH 1:* (UID)")
    all_uids = sorted(it["UID"] for _, it in r2.fetches())
    if len(all_uids) != n:
        raise SystemExit("mailbox holds %d messages, %d were appended" % (len(all_uids), n))
    c.command("CLOSE")
    k = a.clients
    slices = [all_uids[i * len(all_uids) // k:(i + 1) * len(all_uids) // k] for i in range(k)]
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

    res, dt = run_phase("list", w_fetch,
                        [(a, s[0], s[-1], LIST_ITEMS) for s in slices if s], 1800)
    ln = sum(r[4] for r in res)
    if ln != n * a.fetch_rounds:
        raise SystemExit("listed %d messages, expected %d" % (ln, n * a.fetch_rounds))
    out["list_msgs_s"] = ln / dt
    print("%slist: %d messages (ENVELOPE BODYSTRUCTURE HEADER.FIELDS) by %d clients in %.2fs: "
          "%.1f msgs/s" % (label, ln, k, dt, ln / dt), flush=True)

    if not all(per_client_uids):
        per_client_uids = [s for s in slices]
    res, dt = run_phase("mix", w_mix, [(a, u) for u in per_client_uids], 1800)
    ops = sum(r[4] for r in res)
    out["mix_ops_s"] = ops / dt
    print("%smix: %d ops (STORE/COPY/EXPUNGE/SEARCH) by %d clients in %.2fs: %.1f ops/s"
          % (label, ops, k, dt, ops / dt), flush=True)

    if not a.keep:
        c.command("DELETE", quote(a.mailbox))
        c.command("DELETE", quote(a.mailbox + "-copy"))
    c.logout()
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
