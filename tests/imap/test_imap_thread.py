#!/usr/bin/env python3
"""THREAD end to end: REFS, REFERENCES and ORDEREDSUBJECT over the wire.

A mailbox of a few conversations (References, In-Reply-To only, replies
known only by subject, RFC 2047 subjects, a missing parent, a message
without Message-ID or Date) is threaded with each algorithm, by sequence
number and by UID, with search criteria and charsets as SEARCH takes them
("$" of SEARCHRES among them); errors get BAD or NO and the session goes on; a 2,000-message mailbox is
threaded within a time bound.  The expected replies were checked against
Dovecot 2.3 (`--dovecot` runs the same checks against a private Dovecot).
The last line is "imap-thread: N passed, M failed".
"""
import sys
import time

from imapcommon import Report, run_sections
from harness.imapwire import Client, Literal, parse, quote

USER, PASSWORD = "alice", "s3cret pass"
R = Report("imap-thread")
T = None
BOX = "Threads"


def connect():
    c = Client(T.host, T.port, timeout=60.0)
    r = c.login(USER, PASSWORD)
    if not r.ok:
        raise RuntimeError("login failed: %r" % r)
    return c


def msg(mid, subject, date, refs=None, irt=None, body="text\n"):
    lines = ["From: a@example.org", "To: b@example.org"]
    if subject is not None:
        lines.append("Subject: " + subject)
    if date is not None:
        lines.append("Date: " + date)
    if mid is not None:
        lines.append("Message-ID: " + mid)
    if irt is not None:
        lines.append("In-Reply-To: " + irt)
    if refs is not None:
        lines.append("References: " + refs)
    return ("\r\n".join(lines) + "\r\n\r\n" + body.replace("\n", "\r\n")).encode()


D = "Mon, 01 Jul 2024 %s +0000"
# (message, internal date)
MESSAGES = [
    (msg("<m1@t>", "Lunch", D % "10:00:00"), "01-Jul-2024 10:00:00 +0000"),
    (msg("<m2@t>", "Re: Lunch", D % "11:00:00", refs="<m1@t>", irt="<m1@t>"),
     "01-Jul-2024 11:00:00 +0000"),
    (msg("<m3@t>", "Budget", D % "09:00:00"), "01-Jul-2024 09:00:00 +0000"),
    (msg("<m4@t>", "Re: Lunch", D % "15:00:00", refs="<m1@t>\r\n <m2@t>"),
     "01-Jul-2024 15:00:00 +0000"),
    (msg("<m5@t>", "Re: Budget", D % "12:00:00"), "01-Jul-2024 12:00:00 +0000"),
    (msg("<m6@t>", "=?utf-8?q?Caf=C3=A9?=", D % "08:00:00"), "01-Jul-2024 08:00:00 +0000"),
    (msg("<m7@t>", "Re: =?utf-8?q?Caf=C3=A9?=", D % "13:00:00", irt="<missing@t> (lost)"),
     "01-Jul-2024 13:00:00 +0000"),
    (msg("<m8@t>", "Lunch", D % "14:00:00"), "01-Jul-2024 14:00:00 +0000"),
    (msg(None, "Budget", None, refs="<m3@t>"), "01-Jul-2024 16:00:00 +0000"),
    (msg("<m10@t>", "Other", "not a date"), "01-Jul-2024 07:00:00 +0000"),
]


def thread(c, *args):
    """The command's response and the text after '* THREAD ' (None when
    there was no THREAD response)."""
    r = c.command(*args)
    line = None
    for u in r.untagged:
        if u.upper() == b"* THREAD" or u[:9].upper() == b"* THREAD ":
            line = u[9:].decode()
    return r, line


def t_capability():
    c = connect()
    r = c.command("CAPABILITY")
    caps = set()
    for toks in r.find("CAPABILITY"):
        caps |= {t.decode().upper() for t in toks[1:] if isinstance(t, bytes)}
    for alg in ("REFS", "REFERENCES", "ORDEREDSUBJECT"):
        R.check("CAPABILITY has THREAD=" + alg, "THREAD=" + alg in caps, caps)
    c.logout()


def setup(c, box=BOX):
    c.command("CREATE", quote(box))
    uids = []
    for m, date in MESSAGES:
        r = c.command("APPEND", quote(box), quote(date), Literal(m))
        R.equal("APPEND a thread message", r.status, "OK")
    r = c.command("SELECT", quote(box))
    R.equal("SELECT the thread mailbox", r.number("EXISTS"), len(MESSAGES))
    r = c.command("UID SEARCH ALL")
    uids = r.search()[0]
    return uids


def t_algorithms():
    c = connect()
    uids = setup(c)
    # REFERENCES: 1 -> 2 -> 4 by references, 8 ("Lunch") joins as a second
    # original under a dummy; 5 is a subject-only reply to 3 and 9
    # references 3; 7's parent is missing, it joins 6 by subject; threads
    # by the sent date of their first message (10's bad Date falls back
    # to its internal date, 07:00).
    r, got = thread(c, "THREAD REFERENCES UTF-8 ALL")
    R.equal("THREAD REFERENCES -> OK", r.status, "OK")
    R.equal("THREAD REFERENCES reply", got, "(10)(6 7)(3 (5)(9))((1 2 4)(8))")
    # REFS: the same links without subject grouping, threads ordered by
    # their newest message.
    r, got = thread(c, "THREAD REFS UTF-8 ALL")
    R.equal("THREAD REFS -> OK", r.status, "OK")
    R.equal("THREAD REFS reply", got, "(10)(6)(5)(7)(8)(1 2 4)(3 9)")
    r, got = thread(c, "THREAD ORDEREDSUBJECT UTF-8 ALL")
    R.equal("THREAD ORDEREDSUBJECT -> OK", r.status, "OK")
    R.equal("THREAD ORDEREDSUBJECT reply", got, "(10)(6 7)(3 (5)(9))(1 (2)(8)(4))")
    # UID THREAD answers UIDs; criteria narrow the set like SEARCH.
    u = {i + 1: uids[i] for i in range(len(uids))}
    r, got = thread(c, "UID THREAD REFS US-ASCII ALL")
    R.equal("UID THREAD REFS reply", got,
            "(%d)(%d)(%d)(%d)(%d)(%d %d %d)(%d %d)" % (u[10], u[6], u[5], u[7], u[8], u[1],
                                                       u[2], u[4], u[3], u[9]))
    r, got = thread(c, "THREAD REFERENCES US-ASCII SUBJECT lunch NOT HEADER Message-ID m4")
    R.equal("THREAD with search criteria", got, "((1 2)(8))")
    r, got = thread(c, "THREAD REFS UTF-8 SUBJECT", quote("café"))
    R.equal("THREAD with a UTF-8 search string", got, "(6)(7)")
    r, got = thread(c, "THREAD REFS ISO-8859-1 SUBJECT", Literal("caf\xe9".encode("latin-1")))
    R.equal("THREAD with an ISO-8859-1 search string", got, "(6)(7)")
    c.command("STORE 2 +FLAGS (\\Deleted)")
    r, got = thread(c, "THREAD REFS UTF-8 UNDELETED")
    R.equal("THREAD of what is not deleted: 4 stays under 1", got,
            "(10)(6)(5)(7)(8)(1 4)(3 9)")
    r, got = thread(c, "THREAD REFS UTF-8 UID 999999")
    R.equal("THREAD matching nothing -> OK", r.status, "OK")
    R.equal("THREAD matching nothing -> empty", got, "")
    # thread-data = "THREAD" [SP 1*thread-list] (RFC 5256 5): no trailing
    # space.  Dovecot 2.3 sends "* THREAD " here; the RFC is asserted.
    if T.kind == "starling":
        R.check("THREAD matching nothing -> '* THREAD' exactly",
                b"* THREAD" in r.untagged, r.untagged)
    c.logout()


def t_errors():
    c = connect()
    r = c.command("THREAD REFS UTF-8 ALL")
    R.equal("THREAD before SELECT -> BAD", r.status, "BAD")
    c.command("SELECT", quote(BOX))
    for args, want in (("THREAD X-NOSUCH UTF-8 ALL", "BAD"),
                       ("THREAD REFS", "BAD"),
                       ("THREAD REFS UTF-8", "BAD"),
                       ("THREAD (REFS) UTF-8 ALL", "BAD"),
                       ("THREAD REFS UTF-8 NOSUCHKEY", "BAD"),
                       ("THREAD REFS X-NO-SUCH-CHARSET ALL", "NO")):
        r = c.command(args)
        R.equal("%s -> %s" % (args, want), r.status, want)
    r = c.command("THREAD REFS X-NO-SUCH-CHARSET ALL")
    R.equal("an unknown charset -> [BADCHARSET]", r.code, "BADCHARSET")
    r = c.command("NOOP")
    R.equal("the session goes on after THREAD errors", r.status, "OK")
    c.logout()


def t_searchres():
    """RFC 5182 2.1: "$", the result SEARCH (or SORT) RETURN (SAVE) kept,
    is a search key THREAD takes like any other."""
    c = connect()
    uids = setup(c, "Saved")
    r = c.command("SEARCH RETURN (SAVE) SUBJECT lunch")
    R.equal("SEARCH RETURN (SAVE) SUBJECT lunch -> OK", r.status, "OK")
    r, got = thread(c, "THREAD REFS UTF-8 $")
    R.equal("THREAD REFS $ -> OK", r.status, "OK")
    R.equal("THREAD REFS $: the saved messages", got, "(8)(1 2 4)")
    r, got = thread(c, "THREAD REFERENCES UTF-8 OR $ 3")
    R.equal("THREAD REFERENCES OR $ 3", got, "(3)((1 2 4)(8))")
    r, got = thread(c, "THREAD ORDEREDSUBJECT UTF-8 NOT $ NOT 5:10")
    R.equal("THREAD ORDEREDSUBJECT NOT $ NOT 5:10", got, "(3)")
    r, got = thread(c, "UID THREAD REFS UTF-8 $ UNDELETED")
    R.equal("UID THREAD REFS $ answers UIDs", got,
            "(%d)(%d %d %d)" % (uids[7], uids[0], uids[1], uids[3]))
    # SORT RETURN (SAVE) replaces the saved result; a THREAD sent right
    # behind it (pipelined) sees the new one.
    tag1, tag2 = c.next_tag(), c.next_tag()
    c.send(("%s SORT RETURN (SAVE) (SUBJECT) UTF-8 SUBJECT budget\r\n"
            "%s THREAD REFS UTF-8 $\r\n" % (tag1, tag2)).encode())
    r1 = c.wait_tagged(tag1)
    r2 = c.wait_tagged(tag2)
    got = None
    for u in r2.untagged:
        if u[:9].upper() == b"* THREAD ":
            got = u[9:].decode()
    R.equal("pipelined SORT RETURN (SAVE) -> OK", r1.status, "OK")
    R.equal("pipelined THREAD REFS $ after it: the sorted result", got, "(5)(3 9)")
    # A failed SAVE empties "$" (RFC 5182 2.1): THREAD $ matches nothing.
    # Dovecot 2.3 keeps the old result when the criteria do not parse;
    # the RFC is asserted.
    r = c.command("SEARCH RETURN (SAVE) NOSUCHKEY")
    R.equal("SEARCH RETURN (SAVE) with a bad key -> BAD", r.status, "BAD")
    r, got = thread(c, "THREAD REFS UTF-8 $")
    R.equal("THREAD $ after a failed SAVE -> OK", r.status, "OK")
    if T.kind == "starling":
        R.equal("THREAD $ after a failed SAVE -> empty", got, "")
    c.logout()


def t_large():
    c = connect()
    c.command("CREATE Big")
    n = 2000
    # 200 threads of 10: each message replies to the one before in its
    # thread, the whole chain in References.
    t0 = time.time()
    for i in range(n):
        th, k = divmod(i, 10)
        refs = " ".join("<%d.%d@big>" % (th, j) for j in range(k)) or None
        m = msg("<%d.%d@big>" % (th, k), "Thread %d" % th if k == 0 else "Re: Thread %d" % th,
                "Tue, 02 Jul 2024 %02d:%02d:%02d +0000" % (k, th // 60, th % 60), refs=refs)
        r = c.command("APPEND Big", Literal(m, plus=True))
        if not r.ok:
            R.check("APPEND to Big", False, r)
            return
    print("  appended %d messages in %.1fs" % (n, time.time() - t0), flush=True)
    c.command("SELECT Big")
    for alg in ("REFS", "REFERENCES", "ORDEREDSUBJECT"):
        t0 = time.time()
        r, got = thread(c, "THREAD %s UTF-8 ALL" % alg)
        dt = time.time() - t0
        print("  THREAD %s over %d messages: %.2fs" % (alg, n, dt), flush=True)
        R.equal("THREAD %s over %d messages -> OK" % (alg, n), r.status, "OK")
        if alg == "ORDEREDSUBJECT":
            want = "".join("(%d (%s))" % (th * 10 + 1, ")(".join(
                str(th * 10 + k + 1) for k in range(1, 10))) for th in range(200))
        else:
            want = "".join("(%s)" % " ".join(str(th * 10 + k + 1) for k in range(10))
                           for th in range(200))
        R.equal("THREAD %s over %d messages: 200 chains of 10" % (alg, n), got, want)
        R.check("THREAD %s over %d messages within 20 s" % (alg, n), dt < 20.0, dt)
    c.logout()


SECTIONS = [
    ("capability", t_capability),
    ("algorithms", t_algorithms),
    ("errors", t_errors),
    ("searchres", t_searchres),
    ("large mailbox", t_large),
]


def set_target(t):
    global T
    T = t


if __name__ == "__main__":
    sys.exit(run_sections(R, SECTIONS, __doc__.splitlines()[0], {USER: PASSWORD}, set_target))
