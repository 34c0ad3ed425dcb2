#!/usr/bin/env python3
"""LMTP (RFC 2033) against real starlingd nodes on loopback.

One node with lmtp_listen (TCP, then a UNIX socket) and
lmtp_detail_mailbox = yes:
  - greeting and LHLO capabilities (PIPELINING, ENHANCEDSTATUSCODES,
    8BITMIME, SIZE = max_message_size);
  - a whole transaction pipelined in one write, with an unknown user
    among the recipients: 550 5.1.1 at its RCPT, one 250 per valid
    recipient after DATA, in RCPT order; the message reaches both users
    over IMAP with Return-Path added and the body intact;
  - dot-unstuffing and bare LF lines (stored as CRLF);
  - user+detail@domain: into mailbox "detail" when it exists, else INBOX;
    the domain part picks "user@domain" when the users file names it;
  - limits: MAIL SIZE= over the limit (552), a body over the limit (552 per
    recipient, the session goes on), 101 recipients (452 4.5.3 for the
    101st), an overlong command line (500 5.5.2, the session goes on),
    HELO / DATA out of order (500 / 503), binary garbage and a connection
    dropped in the middle of DATA (nothing delivered, node alive);
  - the same delivery over lmtp_listen = /path (a UNIX socket).
Three nodes, sync_replicas = 1, degraded_writes = refuse, node 1 master of
the user's INBOX, nodes 2 and 3 stopped: each recipient gets 451 4.3.0 after
DATA and nothing is stored; with node 2 back, the same delivery gets 250 and
node 2 holds it.  SIGTERM to a node while a delivery waits for its paused
replicas (degraded_writes = refuse): a clean stop, no 250.

The last line is "test-lmtp: N passed, M failed".
"""
import imaplib
import os
import re
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness
sys.path.insert(0, HERE)

from harness import proc  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402
from lmtpwire import Client, dot_stuff  # noqa: E402

R = Report("test-lmtp")
PASSWORD = "secret"
ALICE = "alice@example.com"
BOB = "bob"
MAX = 64 * 1024


def message(subject, body=b"hello\r\n"):
    return (b"From: t@example.com\r\nSubject: " + subject.encode() +
            b"\r\nMessage-ID: <" + subject.encode() + b"@test>\r\n\r\n" + body)


def messages(node, user, mailbox="INBOX"):
    """Every message of the mailbox, as bytes, in UID order."""
    m = imaplib.IMAP4(node.host, node.imap_port, timeout=40)
    m.login(user, PASSWORD)
    typ, data = m.select('"%s"' % mailbox, readonly=True)
    out = []
    if typ == "OK" and int(data[0]) > 0:
        typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
        for item in data:
            if isinstance(item, tuple):
                out.append(item[1])
    m.logout()
    return out


def subjects(node, user, mailbox="INBOX"):
    out = []
    for msg in messages(node, user, mailbox):
        mm = re.search(rb"Subject: (\S+)", msg)
        out.append(mm.group(1).decode() if mm else None)
    return out


def create_mailbox(node, user, name):
    m = imaplib.IMAP4(node.host, node.imap_port, timeout=40)
    m.login(user, PASSWORD)
    typ, _ = m.create(name)
    m.logout()
    return typ


def lhlo(cl):
    code, _ = cl.reply()
    R.equal("greeting is 220", code, 220)
    return cl.cmd("LHLO test.example")


def deliver(addr, sender, rcpts, msg):
    """One plain transaction; returns the per-recipient replies."""
    cl = Client(addr)
    try:
        lhlo(cl)
        cl.cmd("MAIL FROM:<%s>" % sender)
        for r in rcpts:
            cl.cmd("RCPT TO:<%s>" % r)
        code, _ = cl.cmd("DATA")
        if code != 354:
            return [code]
        cl.send(dot_stuff(msg))
        return [cl.reply() for _ in rcpts]
    finally:
        cl.close()


def single_node(c, node, addr):
    # -- LHLO ---------------------------------------------------------------
    cl = Client(addr)
    code, caps = lhlo(cl)
    R.equal("LHLO: 250", code, 250)
    for cap in ("PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SIZE %d" % MAX):
        R.check("LHLO offers %s" % cap, cap in caps, caps)
    R.equal("HELO is SMTP's: 500", cl.cmd("HELO x")[0], 500)
    R.equal("DATA before MAIL: 503", cl.cmd("DATA")[0], 503)
    R.equal("MAIL: 250", cl.cmd("MAIL FROM:<s@example.com>")[0], 250)
    R.equal("unknown user at RCPT: 550", cl.cmd("RCPT TO:<nosuch@example.com>"),
            (550, ["5.1.1 <nosuch@example.com> User unknown"]))
    R.equal("DATA without a valid recipient: 503", cl.cmd("DATA")[0], 503)
    R.equal("RSET: 250", cl.cmd("RSET")[0], 250)
    R.equal("MAIL SIZE= over the limit: 552",
            cl.cmd("MAIL FROM:<s@example.com> SIZE=%d" % (MAX + 1))[0], 552)
    R.equal("unknown MAIL parameter: 555", cl.cmd("MAIL FROM:<s@example.com> FOO=1")[0], 555)
    R.equal("QUIT: 221", cl.cmd("QUIT")[0], 221)
    R.check("...and the server closes", cl.closed())
    cl.close()

    # -- pipelining, per-recipient replies -----------------------------------
    cl = Client(addr)
    cl.reply()
    body = message("pipelined", b"line one\r\nline two\r\n")
    cl.send(b"LHLO test.example\r\nMAIL FROM:<sender@example.net> BODY=8BITMIME\r\n"
            b"RCPT TO:<alice@example.com>\r\nRCPT TO:<nosuch@example.com>\r\n"
            b"RCPT TO:<bob@example.org>\r\nDATA\r\n")
    got = [cl.reply()[0] for _ in range(6)]
    R.equal("pipelined replies: LHLO, MAIL, RCPT, RCPT(unknown), RCPT, DATA",
            got, [250, 250, 250, 550, 250, 354])
    cl.send(dot_stuff(body) + b"NOOP\r\nQUIT\r\n")
    r1, r2 = cl.reply(), cl.reply()
    R.check("one 250 for alice after DATA",
            r1[0] == 250 and "<alice@example.com>" in r1[1][0] and r1[1][0].startswith("2.0.0"),
            r1)
    R.check("...then one 250 for bob (RCPT order)",
            r2[0] == 250 and "<bob@example.org>" in r2[1][0], r2)
    R.equal("pipelined NOOP after DATA: 250", cl.reply()[0], 250)
    R.equal("pipelined QUIT: 221", cl.reply()[0], 221)
    cl.close()
    for user in (ALICE, BOB):
        msgs = messages(node, user)
        R.equal("%s has the message" % user, len(msgs), 1)
        if msgs:
            R.check("...with Return-Path first and the body intact",
                    msgs[0] == b"Return-Path: <sender@example.net>\r\n" + body, msgs[0][:300])

    # -- dot-stuffing, bare LF ---------------------------------------------------
    cl = Client(addr)
    lhlo(cl)
    cl.cmd("MAIL FROM:<>")
    cl.cmd("RCPT TO:<%s>" % ALICE)
    cl.cmd("DATA")
    cl.send(b"Subject: dots\r\n\r\n..one dot\r\n...two dots\r\n. \r\nbare\nlf\n.\n")
    code, texts = cl.reply()
    R.equal("dot-stuffed message ended by a bare-LF '.': 250", code, 250)
    R.equal("NOOP after it: 250", cl.cmd("NOOP")[0], 250)
    cl.close()
    msgs = messages(node, ALICE)
    R.check("dots unstuffed, bare LF stored as CRLF",
            msgs and msgs[-1] == b"Return-Path: <>\r\nSubject: dots\r\n\r\n.one dot\r\n"
                                 b"..two dots\r\n \r\nbare\r\nlf\r\n", msgs[-1:])

    # -- +detail and domains -----------------------------------------------------
    R.equal("CREATE Work for alice", create_mailbox(node, ALICE, "Work"), "OK")
    rep = deliver(addr, "s@example.com", ["alice+Work@example.com"], message("to-work"))
    R.equal("alice+Work@example.com: 250", [x[0] for x in rep], [250])
    R.equal("...in mailbox Work", subjects(node, ALICE, "Work"), ["to-work"])
    rep = deliver(addr, "s@example.com", ["alice+nosuch@example.com"], message("to-nosuch"))
    R.equal("alice+nosuch@example.com: 250", [x[0] for x in rep], [250])
    R.check("...in INBOX (no mailbox 'nosuch')", "to-nosuch" in subjects(node, ALICE))
    cl = Client(addr)
    lhlo(cl)
    cl.cmd("MAIL FROM:<s@example.com>")
    R.equal("alice@other.example (users file names alice@example.com): 550",
            cl.cmd("RCPT TO:<alice@other.example>")[0], 550)
    R.equal("bob@any.domain (users file names bob): 250",
            cl.cmd("RCPT TO:<bob+x@any.domain>")[0], 250)
    R.equal("bad address syntax: 501", cl.cmd("RCPT TO:alice")[0], 501)
    R.equal("Alice+Work@EXAMPLE.com (other case): 250",
            cl.cmd("RCPT TO:<Alice+Work@EXAMPLE.com>")[0], 250)
    R.equal("DATA", cl.cmd("DATA")[0], 354)
    cl.send(dot_stuff(message("any-case")))
    R.equal("...250 for both recipients", [cl.reply()[0], cl.reply()[0]], [250, 250])
    cl.close()
    R.check("...the other-case one in alice's Work", "any-case" in subjects(node, ALICE, "Work"))

    # -- limits --------------------------------------------------------------------
    cl = Client(addr)
    lhlo(cl)
    cl.cmd("MAIL FROM:<s@example.com>")
    cl.cmd("RCPT TO:<%s>" % ALICE)
    cl.cmd("RCPT TO:<%s>" % BOB)
    cl.cmd("DATA")
    cl.send(b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (MAX // 1000 + 2) + b".\r\n")
    r1, r2 = cl.reply(), cl.reply()
    R.equal("message over max_message_size: 552 5.3.4 per recipient",
            (r1[0], r2[0], r1[1][0][:5]), (552, 552, "5.3.4"))
    R.equal("...and the session goes on", cl.cmd("NOOP")[0], 250)
    cl.cmd("MAIL FROM:<s@example.com>")
    codes = [cl.cmd("RCPT TO:<%s>" % ALICE) for _ in range(101)]
    R.equal("100 recipients accepted", [x[0] for x in codes[:100]], [250] * 100)
    R.check("the 101st: 452 4.5.3", codes[100][0] == 452 and codes[100][1][0].startswith("4.5.3"),
            codes[100])
    R.equal("RSET", cl.cmd("RSET")[0], 250)
    cl.send(b"NOOP " + b"y" * 100000 + b"\r\n")
    code, texts = cl.reply()
    R.check("a 100 kB command line: 500 5.5.2", code == 500 and texts[0].startswith("5.5.2"),
            (code, texts))
    R.equal("...and the session goes on", cl.cmd("NOOP")[0], 250)
    cl.close()
    R.check("nothing of the big message was stored",
            "big" not in subjects(node, ALICE) and "big" not in subjects(node, BOB))

    # -- hostile input ----------------------------------------------------------------
    cl = Client(addr)
    cl.reply()
    cl.send(bytes(range(256)) * 64 + b"\r\n" + b"\x00\xff" * 5000 + b"\n" * 30)
    R.check("binary garbage: the server answers 5xx and closes after too many errors",
            cl.closed(timeout=10), cl.pending[:200])
    R.check("...with 5xx replies and a 421", cl.pending.startswith(b"5") and b"421 4.7.0" in cl.pending,
            cl.pending[:200])
    cl.close()
    cl = Client(addr)
    lhlo(cl)
    cl.cmd("MAIL FROM:<s@example.com>")
    cl.cmd("RCPT TO:<%s>" % ALICE)
    cl.cmd("DATA")
    cl.send(b"Subject: dropped\r\n\r\nhalf a message\r\n")
    cl.close()
    time.sleep(0.5)
    R.check("a connection dropped in DATA: nothing delivered",
            "dropped" not in subjects(node, ALICE))
    R.check("the node is still running", node.running())


def t_single():
    c = Cluster(n=1, users={ALICE: PASSWORD, BOB: PASSWORD},
                extra_config={"max_message_size": str(MAX), "lmtp_detail_mailbox": "yes"})
    node = c.nodes[0]
    port = proc.free_port()
    node.extra["lmtp_listen"] = "127.0.0.1:%d" % port
    try:
        c.start_all()
        proc.wait_for(lambda: proc.port_open(port), 10, what="LMTP port")
        single_node(c, node, (node.host, port))
        # The same over a UNIX socket.
        node.stop()
        path = os.path.join(c.dir, "lmtp.sock")
        node.extra["lmtp_listen"] = path
        node.start()
        proc.wait_for(lambda: os.path.exists(path), 10, what="LMTP socket")
        rep = deliver(path, "s@example.com", [BOB], message("over-unix"))
        R.equal("delivery over lmtp_listen = /path: 250", [x[0] for x in rep], [250])
        R.check("...reached bob", "over-unix" in subjects(node, BOB))
        node.stop()
        R.check("the socket is removed at stop", not os.path.exists(path))
    finally:
        c.close()
        reps = c.sanitizer_reports()
        R.check("no sanitizer report", not reps, reps)


def master_of(node, user):
    r = node.cli("master", "show", "-u", user, timeout=30)
    mm = re.search(r"master: (\d+)", r.stdout.decode())
    return int(mm.group(1)) if mm else None


def t_refuse():
    c = Cluster(n=3, users={ALICE: PASSWORD},
                extra_config={"sync_replicas": "1", "degraded_writes": "refuse"})
    n1, n2, n3 = c.nodes
    port = proc.free_port()
    n1.extra["lmtp_listen"] = "127.0.0.1:%d" % port
    addr = (n1.host, port)
    try:
        c.start_all()
        c.wait_links_up(timeout=40)
        rep = deliver(addr, "s@example.com", [ALICE], message("first"))
        R.equal("all nodes up: 250", [x[0] for x in rep], [250])
        R.equal("node 1 is master of alice's INBOX", master_of(n1, ALICE), 1)
        c.wait_dumps_equal(ALICE, timeout=40)
        n2.stop()
        n3.stop()
        rep = deliver(addr, "s@example.com", [ALICE, ALICE], message("refused"))
        R.check("no replica up, degraded_writes = refuse: 451 4.3.0 for each recipient",
                [x[0] for x in rep] == [451, 451] and
                all(x[1][0].startswith("4.3.0") for x in rep), rep)
        R.equal("nothing was stored", subjects(n1, ALICE), ["first"])
        n2.start()
        c.wait_links_up(timeout=40, nodes=[n1, n2])
        rep = deliver(addr, "s@example.com", [ALICE], message("retried"))
        R.equal("node 2 back: the retry gets 250", [x[0] for x in rep], [250])
        R.check("node 2 holds it",
                proc.wait_for(lambda: "retried" in subjects(n2, ALICE), 30, what="on node 2")
                is not False)
    finally:
        c.close()
        reps = c.sanitizer_reports()
        R.check("no sanitizer report", not reps, reps)


def t_stop_in_flight():
    """SIGTERM while a delivery waits for its replicas (both paused, refuse):
    the node stops cleanly, and the LMTP client never gets a 250 for it.
    (With accept, a 250 is right: the copy is durable here and counted as
    under-replicated, as an APPEND's OK is.)"""
    c = Cluster(n=3, users={ALICE: PASSWORD},
                extra_config={"sync_replicas": "2", "degraded_writes": "refuse"})
    n1, n2, n3 = c.nodes
    port = proc.free_port()
    n1.extra["lmtp_listen"] = "127.0.0.1:%d" % port
    try:
        c.start_all()
        c.wait_links_up(timeout=40)
        rep = deliver((n1.host, port), "s@example.com", [ALICE], message("before"))
        R.equal("all nodes up: 250", [x[0] for x in rep], [250])
        c.wait_dumps_equal(ALICE, timeout=40)
        n2.pause()
        n3.pause()
        cl = Client((n1.host, port))
        lhlo(cl)
        cl.cmd("MAIL FROM:<s@example.com>")
        cl.cmd("RCPT TO:<%s>" % ALICE)
        cl.cmd("DATA")
        cl.send(dot_stuff(message("in-flight")))
        time.sleep(0.5)
        code = n1.stop()
        R.equal("starlingd exits 0 on SIGTERM with a delivery in flight", code, 0)
        got = None
        try:
            got = cl.reply()
        except Exception:  # noqa: BLE001 -- a closed connection is an answer too
            pass
        print("reply after SIGTERM: %r" % (got,), flush=True)
        R.check("...and the client got no 250 for it", got is None or got[0] != 250, got)
        cl.close()
        n2.resume()
        n3.resume()
    finally:
        c.close()
        reps = c.sanitizer_reports()
        R.check("no sanitizer report", not reps, reps)


def main():
    R.section("one node", t_single)
    R.section("refuse with no replica up", t_refuse)
    R.section("SIGTERM with a delivery in flight", t_stop_in_flight)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
