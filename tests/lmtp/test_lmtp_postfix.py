#!/usr/bin/env python3
"""A real Postfix delivering over LMTP to a 3-node cluster.

A private Postfix instance (tests/lmtp/postfixrun.py: its own config and
queue directories in the test's temp dir, smtpd on one loopback port,
virtual_transport = lmtp:inet:127.0.0.1:PORT of node 1) takes mail over
SMTP (smtplib); the cluster has sync_replicas = 1 and degraded_writes =
refuse.
  - a message to two users, one with a line starting with '.', one with
    8-bit text: read over IMAP on node 3 (another node than the one Postfix
    spoke to), byte for byte after Postfix's and our headers;
  - an unknown user: Postfix logs the 550 5.1.1 and bounces it
    (status=bounced), the known one in the same message is delivered;
  - nodes 2 and 3 stopped: Postfix gets 451 4.3.0, keeps the message queued
    (status=deferred), nothing is stored on node 1; node 2 started again:
    Postfix's retry delivers it and node 2 holds it;
  - a burst of messages: every one arrives; deliveries per second printed.

The last line is "test-lmtp-postfix: N passed, M failed".
"""
import imaplib
import os
import re
import smtplib
import subprocess
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness
sys.path.insert(0, HERE)

from harness import proc  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402
import postfixrun  # noqa: E402

R = Report("test-lmtp-postfix")
PASSWORD = "secret"
ALICE = "alice@example.com"
BOB = "bob@example.com"
BURST = int(os.environ.get("LMTP_POSTFIX_BURST", "200"))


def fetch_all(node, user):
    """{Subject: full text} of user's INBOX on node."""
    m = imaplib.IMAP4(node.host, node.imap_port, timeout=40)
    m.login(user, PASSWORD)
    typ, data = m.select("INBOX", readonly=True)
    out = {}
    if typ == "OK" and int(data[0]) > 0:
        typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
        for item in data:
            if isinstance(item, tuple):
                mm = re.search(rb"\r\nSubject: (\S+)", item[1])
                if mm:
                    out[mm.group(1).decode()] = item[1]
    m.logout()
    return out


def wait_for(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return bool(pred())


def send(port, rcpts, subject, body=b"hello\r\n"):
    # With a Date: Postfix's cleanup adds one to a message without.
    msg = (b"Date: Mon, 7 Dec 2026 00:00:00 +0000\r\nFrom: sender@example.net\r\n"
           b"To: " + ", ".join(rcpts).encode() + b"\r\nSubject: " + subject.encode() +
           b"\r\nMessage-ID: <" + subject.encode() + b"@test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body)
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    try:
        s.sendmail("sender@example.net", rcpts, msg)
    finally:
        s.quit()
    return msg


def log_count(pf, pattern):
    return len(re.findall(pattern, pf.log_text()))


def t_postfix():
    if not postfixrun.available():
        # Not a skip: scripts/install-deps installs it, so missing is a failure.
        R.check("postfix is installed (scripts/install-deps)", False)
        return
    if os.geteuid() != 0:
        # postfix start wants root (it drops to mail_owner itself).
        R.check("running as root, as a private Postfix needs", False)
        return
    c = Cluster(n=3, users={ALICE: PASSWORD, BOB: PASSWORD},
                extra_config={"sync_replicas": "1", "degraded_writes": "refuse"})
    n1, n2, n3 = c.nodes
    lmtp_port = proc.free_port()
    n1.extra["lmtp_listen"] = "127.0.0.1:%d" % lmtp_port
    smtp_port = proc.free_port()
    # Postfix's daemons run as the postfix user: their directory must be
    # reachable by it (the cluster's is 0700).
    pf_dir = proc.mkdtemp("starling-postfix-")
    os.chmod(pf_dir, 0o755)
    pf = postfixrun.Postfix(pf_dir, smtp_port, "inet:127.0.0.1:%d" % lmtp_port)
    proc.at_cleanup(pf.stop)
    try:
        c.start_all()
        c.wait_links_up(timeout=40)
        pf.start()
        proc.wait_for(lambda: proc.port_open(smtp_port), 20, what="Postfix smtpd")

        # -- two recipients, read on node 3 ------------------------------
        body = (b"first line\r\n.a line starting with a dot\r\n..two dots\r\n" +
                "8-bit: \u00e9t\u00e9 \u00fcber\r\n".encode())
        sent = send(smtp_port, [ALICE, BOB], "two-rcpts", body)
        for user in (ALICE, BOB):
            ok = wait_for(lambda: "two-rcpts" in fetch_all(n3, user), 60)
            R.check("%s's copy read over IMAP on node 3" % user, ok, pf.log_tail())
            if ok:
                got = fetch_all(n3, user)["two-rcpts"]
                R.check("...Return-Path from the envelope first",
                        got.startswith(b"Return-Path: <sender@example.net>\r\n"), got[:200])
                R.check("...the message as sent after Postfix's Received header",
                        got.endswith(sent), got[-400:])

        # -- unknown user --------------------------------------------------
        send(smtp_port, ["nosuch@example.com", ALICE], "one-unknown")
        R.check("the known recipient of it is delivered",
                wait_for(lambda: "one-unknown" in fetch_all(n1, ALICE), 60), pf.log_tail())
        R.check("Postfix bounced the unknown one on our 550 5.1.1",
                wait_for(lambda: re.search(r"to=<nosuch@example.com>.*dsn=5\.1\.1, "
                                           r"status=bounced", pf.log_text()), 30),
                pf.log_tail())

        # -- refused: 451, queued, retried ------------------------------------
        n2.stop()
        n3.stop()
        send(smtp_port, [ALICE], "queued")
        R.check("no replica up: Postfix got 451 4.3.0 and deferred it",
                wait_for(lambda: re.search(r"to=<alice@example.com>.*dsn=4\.3\.0, "
                                           r"status=deferred", pf.log_text()), 30),
                pf.log_tail())
        R.check("...nothing stored on node 1", "queued" not in fetch_all(n1, ALICE))
        n2.start()
        c.wait_links_up(timeout=40, nodes=[n1, n2])
        R.check("node 2 back: Postfix's retry delivers it, node 2 holds it",
                wait_for(lambda: "queued" in fetch_all(n2, ALICE), 60), pf.log_tail())
        n3.start()
        c.wait_links_up(timeout=40)

        # -- a burst ---------------------------------------------------------
        # Queued first (defer_transports), then released at once, so the
        # rate is that of Postfix's LMTP deliveries, not of our submission.
        pf.postconf("defer_transports = lmtp")
        pf.reload()
        sent_re = r"relay=127\.0\.0\.1\[127\.0\.0\.1\]:%d.*status=sent" % lmtp_port
        held_re = r"to=<bob@example.com>.*status=deferred \(deferred transport\)"
        before = log_count(pf, sent_re)
        held_before = log_count(pf, held_re)
        s = smtplib.SMTP("127.0.0.1", smtp_port, timeout=30)
        for i in range(BURST):
            s.sendmail("sender@example.net", [BOB],
                       b"Subject: burst-%d\r\nMessage-ID: <burst-%d@test>\r\n\r\nx\r\n" % (i, i))
        s.quit()
        R.check("the burst is queued in Postfix",
                wait_for(lambda: log_count(pf, held_re) >= held_before + BURST, 120),
                pf.log_tail())
        pf.postconf("defer_transports =")
        pf.reload()
        t0 = time.monotonic()
        # postfix reload is asynchronous: a message the queue manager
        # still handled under defer_transports right after the flush is
        # deferred again and would wait for the next queue run (minutes).
        # Flushing again every few seconds stands for those runs.
        last_flush = [0.0]

        def all_sent():
            if time.monotonic() - last_flush[0] >= 3:
                pf.flush()
                last_flush[0] = time.monotonic()
            return log_count(pf, sent_re) >= before + BURST
        done = wait_for(all_sent, 120)
        elapsed = time.monotonic() - t0
        if not R.check("every message of the burst delivered (Postfix log)", done, pf.log_tail()):
            # What each side was doing, to find out why.
            print("\n".join(ln for ln in pf.log_text().splitlines()
                            if "status=sent" not in ln)[-6000:])
            print("\n".join(ln for ln in n1.log_text().splitlines()
                            if "delivered" not in ln)[-6000:])
            print(pf._run("status").stdout.decode(errors="replace"))
            print(subprocess.run(["/usr/sbin/postqueue", "-c", pf.conf, "-p"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 timeout=60).stdout.decode(errors="replace")[-4000:])
        print("burst: %d messages queued in Postfix, delivered over LMTP in %.2fs: "
              "%.0f deliveries/s (3 nodes, sync_replicas = 1, starlingd %s)"
              % (BURST, elapsed, BURST / elapsed, c.daemon), flush=True)
        have = fetch_all(n1, BOB)
        R.equal("...and in bob's INBOX on node 1",
                sum(1 for i in range(BURST) if "burst-%d" % i in have), BURST)
        R.check("...and on node 3",
                wait_for(lambda: sum(1 for k in fetch_all(n3, BOB) if k.startswith("burst-"))
                         == BURST, 60))
    finally:
        pf.stop()
        c.close()
        reps = c.sanitizer_reports()
        R.check("no sanitizer report", not reps, reps)


def main():
    R.section("Postfix over LMTP", t_postfix)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
