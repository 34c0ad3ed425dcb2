#!/usr/bin/env python3
"""Time `starling import maildir` of an N-message Dovecot Maildir (1-20 KB
messages, indexed by a private Dovecot so it has a dovecot-uidlist) into a
two-node cluster, against `doveadm import` and `doveadm backup -R` (dsync)
of the same Maildir into another user of that Dovecot, and `starling import
imap` of it from that Dovecot.

    top_builddir=BUILD MESSAGES=10000 bench/import-vs-doveadm.py

Prints "measured: ..." lines."""
import os
import random
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from harness.dovecot import DOVEADM, Dovecot  # noqa: E402
from harness.starling import Cluster, sanitizer_env  # noqa: E402

N = int(os.environ.get("MESSAGES", "10000"))
PASSWORD = "secret"


def main():
    d = Dovecot(users={"src": PASSWORD, "imp": PASSWORD, "sync": PASSWORD}).start()
    md = os.path.join(d.dir, "mail", "src")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(md, sub), exist_ok=True)
    rnd = random.Random(17)
    total = 0
    t0 = 1600000000
    for i in range(N):
        size = rnd.randint(1000, 20000)
        body = ("From: a@example.com\nTo: src@example.com\nSubject: bench %d\n"
                "Message-ID: <b%d@example.com>\n\n" % (i, i)).encode()
        body += (b"x" * 75 + b"\n") * (size // 76)
        flags = ["", "S", "FS", "RS"][i % 4]
        p = os.path.join(md, "cur", "%d.M%dP1.bench:2,%s" % (t0 + i, i, flags))
        with open(p, "wb") as f:
            f.write(body)
        os.utime(p, (t0 + i, t0 + i))
        total += len(body)
    if os.getuid() == 0:
        subprocess.run(["chown", "-R", "%d:%d" % (d.uid, d.gid), md], check=True)
    # Dovecot indexes the Maildir and writes its uidlist.
    subprocess.run([DOVEADM, "-c", d.conf, "mailbox", "status", "-u", "src", "messages",
                    "INBOX"], check=True, capture_output=True)
    print("measured: Maildir of %d messages, %.1f MB" % (N, total / 1e6))

    c = Cluster(n=2, users={"src": PASSWORD, "src2": PASSWORD})
    c.start_all()
    c.wait_links_up()
    n1 = c.nodes[0]
    t = time.time()
    r = subprocess.run([c.cli, "-c", n1.conf, "import", "maildir", "-u", "src", md],
                       capture_output=True, env=sanitizer_env())
    ts = time.time() - t
    if r.returncode != 0:
        sys.exit("starling import failed: %s" % r.stderr.decode(errors="replace"))
    print("measured: starling import maildir (2 nodes, peers resynced): %.1f s, %.0f msg/s"
          % (ts, N / ts))
    t = time.time()
    r = subprocess.run([c.cli, "-c", n1.conf, "import", "maildir", "-u", "src", md],
                       capture_output=True, env=sanitizer_env())
    print("measured: the same import again (everything there, skipped): %.1f s (exit %d)"
          % (time.time() - t, r.returncode))
    t = time.time()
    r = subprocess.run([c.cli, "-c", n1.conf, "import", "imap", "-u", "src2", "--host", d.host,
                        "--port", str(d.imap_port), "--user", "src"],
                       input=(PASSWORD + "\n").encode(), capture_output=True,
                       env=sanitizer_env())
    ti = time.time() - t
    print("measured: starling import imap from the Dovecot (2 nodes): %.1f s, %.0f msg/s "
          "(exit %d)" % (ti, N / ti, r.returncode))
    c.close()

    t = time.time()
    r = subprocess.run([DOVEADM, "-c", d.conf, "import", "-u", "imp", "maildir:" + md, "",
                        "all"], capture_output=True)
    ti = time.time() - t
    print("measured: doveadm import: %.1f s (exit %d)" % (ti, r.returncode))
    t = time.time()
    r = subprocess.run([DOVEADM, "-c", d.conf, "backup", "-R", "-u", "sync", "maildir:" + md],
                       capture_output=True)
    tb = time.time() - t
    print("measured: doveadm backup -R (dsync): %.1f s (exit %d)" % (tb, r.returncode))
    d.stop()


if __name__ == "__main__":
    main()
