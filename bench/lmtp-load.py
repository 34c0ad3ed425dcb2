#!/usr/bin/env python3
"""LMTP delivery load for bench/lmtp.sh: CLIENTS processes, each with one
LMTP connection, deliver MESSAGES messages of SIZE bytes each to one
recipient, as an MTA does (MAIL, RCPT and DATA pipelined, then the text,
then the per-recipient reply).  Every reply must be 250; anything else
stops the run with exit 1.  Prints one JSON object: deliveries, seconds,
deliveries_per_s and the clients' CPU seconds.

    lmtp-load.py --host 127.0.0.1 --port 24 --rcpt bench@example.com \\
        --clients 4 --messages 500 --size 4096
"""
import argparse
import json
import multiprocessing
import os
import resource
import socket
import sys
import time


def reply(sock, buf):
    """One whole reply: (code, rest of buf)."""
    while True:
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("connection closed")
            buf += chunk
        line, buf = buf.split(b"\r\n", 1)
        if len(line) < 4 or line[3:4] != b"-":
            return int(line[:3]), line, buf


def message(i, size, client):
    head = (b"From: load@example.net\r\nTo: bench\r\nSubject: lmtp bench %d/%d\r\n"
            b"Message-ID: <lmtp-%d-%d-%d@bench>\r\nDate: Mon, 7 Dec 2026 00:00:00 +0000\r\n\r\n"
            % (client, i, client, i, os.getpid()))
    line = b"x" * 76 + b"\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


def worker(args, client, start, out):
    sock = socket.create_connection((args.host, args.port), timeout=120)
    buf = b""
    code, line, buf = reply(sock, buf)
    if code != 220:
        raise RuntimeError("greeting %r" % line)
    sock.sendall(b"LHLO bench.example.net\r\n")
    code, line, buf = reply(sock, buf)
    if code != 250:
        raise RuntimeError("LHLO %r" % line)
    texts = [message(i, args.size, client) for i in range(args.messages)]
    start.wait()
    for text in texts:
        sock.sendall(b"MAIL FROM:<load@example.net>\r\nRCPT TO:<%s>\r\nDATA\r\n"
                     % args.rcpt.encode())
        for want in (250, 250, 354):
            code, line, buf = reply(sock, buf)
            if code != want:
                raise RuntimeError("got %r, want %d" % (line, want))
        sock.sendall(text + b".\r\n")
        code, line, buf = reply(sock, buf)
        if code != 250:
            raise RuntimeError("delivery answered %r" % line)
    sock.sendall(b"QUIT\r\n")
    sock.close()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out.put(ru.ru_utime + ru.ru_stime)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rcpt", required=True)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--size", type=int, default=4096)
    args = ap.parse_args()
    start = multiprocessing.Event()
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker, args=(args, i, start, out))
             for i in range(args.clients)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # connections up and greeted, texts made
    t0 = time.monotonic()
    start.set()
    for p in procs:
        p.join(timeout=1800)
    took = time.monotonic() - t0
    failed = [p for p in procs if p.exitcode != 0]
    if failed:
        print("lmtp-load: %d of %d clients failed" % (len(failed), len(procs)), file=sys.stderr)
        return 1
    cpu = sum(out.get(timeout=10) for _ in procs)
    n = args.clients * args.messages
    print(json.dumps({"deliveries": n, "seconds": round(took, 3),
                      "deliveries_per_s": round(n / took, 1),
                      "client_cpu_s": round(cpu, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
