#!/usr/bin/env python3
"""THREAD differential check against a private Dovecot (a developer's check,
not part of `make check`: it needs /usr/sbin/dovecot).

    thread_vs_dovecot.py [--build DIR] [--seed N] [--boxes N] [--max-msgs N]

Builds the same random mailboxes on a starlingd node and on Dovecot
(messages with random, duplicate, missing and looping Message-IDs,
References and In-Reply-To, reply and forward subjects, equal and missing
dates) and compares the replies of THREAD REFS, REFERENCES and
ORDEREDSUBJECT.  Prints each difference with the mailbox and ends with
"thread-vs-dovecot: N passed, M failed".
"""
import argparse
import random
import sys

from imapcommon import start_target, Report
from harness.imapwire import Client, Literal, quote

POOL = ["<%d@x>" % i for i in range(10)]
SUBJECTS = ["a", "Re: a", "b", "Fwd: b", "", None, "re: [fwd: a]", "B"]


class Args:
    def __init__(self, dovecot, build):
        self.dovecot = dovecot
        self.build = build


def random_box(rnd, max_msgs):
    msgs = []
    for _ in range(rnd.randint(1, max_msgs)):
        h = ["From: a@example.org"]
        s = rnd.choice(SUBJECTS)
        if s is not None:
            h.append("Subject: " + s)
        if rnd.random() < 0.8:
            h.append("Date: Mon, 01 Jul 2024 10:%02d:00 +0000" % rnd.randint(0, 5))
        if rnd.random() < 0.85:
            h.append("Message-ID: " + rnd.choice(POOL))
        if rnd.random() < 0.6:
            h.append("References: " + " ".join(rnd.choice(POOL)
                                               for _ in range(rnd.randint(0, 4))))
        if rnd.random() < 0.3:
            h.append("In-Reply-To: " + rnd.choice(POOL))
        text = ("\r\n".join(h) + "\r\n\r\nbody\r\n").encode()
        msgs.append((text, "01-Jul-2024 10:%02d:00 +0000" % rnd.randint(0, 5)))
    return msgs


def thread_reply(c, cmd):
    r = c.command(cmd)
    for u in r.untagged:
        if u[:8].upper() == b"* THREAD":
            return u[8:].strip().decode()
    return r.status


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--boxes", type=int, default=30)
    ap.add_argument("--max-msgs", type=int, default=25)
    a = ap.parse_args()
    R = Report("thread-vs-dovecot")
    servers, clients = [], []
    for dovecot in (False, True):
        t = start_target(Args(dovecot, a.build), {"u": "p"}, tls=False)
        servers.append(t)
        c = Client(t.host, t.port, timeout=120)
        c.login("u", "p")
        clients.append(c)
    rnd = random.Random(a.seed)
    try:
        for box in range(a.boxes):
            msgs = random_box(rnd, a.max_msgs)
            name = "B%d" % box
            for c in clients:
                c.command("CREATE " + name)
                for text, date in msgs:
                    c.command("APPEND", name, quote(date), Literal(text, plus=True))
                c.command("SELECT " + name)
            for alg in ("REFS", "REFERENCES", "ORDEREDSUBJECT"):
                got = [thread_reply(c, "THREAD %s UTF-8 ALL" % alg) for c in clients]
                detail = "starling: %s\ndovecot:  %s\n%s" % (got[0], got[1], "\n".join(
                    "  %d [%s] %s" % (i + 1, d, m.decode().replace("\r\n", " | "))
                    for i, (m, d) in enumerate(msgs)))
                R.check("mailbox %d: THREAD %s as Dovecot" % (box, alg), got[0] == got[1], detail)
    finally:
        for c in clients:
            c.close()
        servers[0].stop()
        servers[1].server.stop()
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
