#!/usr/bin/env python3
"""LIST of shared/ for a user with whom N other users each share one folder
(issue 16), against a user with whom nobody shares, on one starlingd.

Setup through the admin socket (no process per user): N owners, each gets
its default mailboxes (DELIVER) and shares INBOX with "lister"
(ACL-SET ... lister lr); then as many owners again who share nothing, so
that the second round shows whether LIST's time grows with the users who
do not share with the lister (it must not: LIST reads the sharing index
entries of the lister, "anyone" and "authenticated", never every user).

Prints "measured: ..." lines: medians of ROUNDS LISTs over one IMAP
session.  Usage: BUILD=DIR [N=1000] [ROUNDS=9] bench/acl-list.py
"""
import os
import socket
import statistics
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from harness import proc  # noqa: E402
from harness.imapwire import Client  # noqa: E402
from harness.starling import Cluster  # noqa: E402

N = int(os.environ.get("N", "1000"))
ROUNDS = int(os.environ.get("ROUNDS", "9"))
PASSWORD = "bench-pw"


def admin(node, line, body=b""):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(60)
    s.connect(os.path.join(node.data_dir, "admin.sock"))
    s.sendall(line.encode() + b"\n" + body)
    out = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        out += d
    s.close()
    last = out.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    if not last.startswith(b"OK"):
        raise RuntimeError("%s: %r" % (line, last))


def add_owners(c, node, first, count, share):
    msg = b"From: a@example.com\r\nSubject: x\r\n\r\nx\r\n"
    for i in range(first, first + count):
        u = "owner%05d" % i
        admin(node, "DELIVER %s INBOX %d" % (u, len(msg)), msg)
        if share:
            admin(node, "ACL-SET %s INBOX lister lr" % u)


def time_list(node, user, pattern):
    cl = Client(node.host, node.imap_port, timeout=120)
    cl.login(user, PASSWORD)
    times, count = [], 0
    for _ in range(ROUNDS):
        t0 = time.monotonic()
        r = cl.command("LIST", '""', pattern)
        times.append(time.monotonic() - t0)
        count = len(r.find("LIST"))
        if not r.ok:
            raise RuntimeError("LIST: %r" % r)
    cl.logout()
    return statistics.median(times), count


def main():
    c = Cluster(n=1, build_dir=os.environ.get("BUILD"))
    # One hash for every user: the file is what the node reads at login.
    h = proc.sha512_crypt(PASSWORD)
    with open(c.users_file, "w") as f:
        for i in range(2 * N):
            f.write("owner%05d:%s\n" % (i, h))
        f.write("lister:%s\nloner:%s\n" % (h, h))
    c.start_all()
    node = c.nodes[0]
    admin(node, "DELIVER lister INBOX 3", b"x\r\n")
    admin(node, "DELIVER loner INBOX 3", b"x\r\n")
    t0 = time.monotonic()
    add_owners(c, node, 0, N, True)
    print("setup: %d owners sharing INBOX with lister in %.1f s" % (N, time.monotonic() - t0))
    m, n = time_list(node, "lister", "shared/*")
    print("measured: LIST \"\" shared/* for lister, %d users sharing: %.1f ms (%d lines)"
          % (N, m * 1000, n))
    m, n = time_list(node, "lister", "*")
    print("measured: LIST \"\" * for lister: %.1f ms (%d lines)" % (m * 1000, n))
    m0, n0 = time_list(node, "loner", "*")
    print("measured: LIST \"\" * for loner (nothing shared): %.1f ms (%d lines)" % (m0 * 1000, n0))
    add_owners(c, node, N, N, False)
    print("setup: %d more owners sharing nothing" % N)
    m2, n2 = time_list(node, "lister", "shared/*")
    print("measured: LIST \"\" shared/* for lister with %d users in all: %.1f ms (%d lines)"
          % (2 * N, m2 * 1000, n2))
    m3, n3 = time_list(node, "loner", "*")
    print("measured: LIST \"\" * for loner with %d users in all: %.1f ms (%d lines)"
          % (2 * N, m3 * 1000, n3))
    c.close()


if __name__ == "__main__":
    main()
