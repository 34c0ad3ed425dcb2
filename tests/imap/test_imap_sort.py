#!/usr/bin/env python3
"""End-to-end SORT (RFC 5256), SORT=DISPLAY (RFC 5957) and ESORT (RFC 5267).

Against one real server: every sort key and REVERSE over messages with RFC
2047 subjects and names, reply/forward prefixes, groups, missing and broken
Date: headers; UID SORT; the search program and its charset; ESORT's MIN,
MAX, COUNT, ALL and PARTIAL; errors (BAD, NO [BADCHARSET]) that leave the
connection usable; and a mailbox of 600 messages checked against the order
computed here.  `--dovecot` runs the same checks against a private Dovecot,
which validates the test itself.  The last line is
"imap-sort: N passed, M failed"; exit 0 only if nothing failed.
"""
import sys

from imapcommon import Report, run_sections
from harness.imapwire import Client, Literal, parse, quote

USER, PASSWORD = "alice", "s3cret pass"

R = Report("imap-sort")
T = None  # the Target


def connect():
    c = Client(T.host, T.port, timeout=30.0)
    r = c.login(USER, PASSWORD)
    if not r.ok:
        raise RuntimeError("login failed: %r" % r)
    return c


def crlf(s):
    if isinstance(s, str):
        s = s.encode("latin-1")
    return s.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def append(c, box, msg, date=None, flags=None):
    parts = ["APPEND", quote(box)]
    if flags:
        parts.append("(%s)" % " ".join(flags))
    if date:
        parts.append(quote(date))
    parts.append(Literal(msg))
    r = c.command(*parts)
    if not r.ok:
        raise RuntimeError("append failed: %r" % r)


def sort_nums(r):
    """Numbers of '* SORT' (None when there is none)."""
    found = r.find("SORT")
    if not found:
        return None
    return [int(t) for t in found[0][1:] if not isinstance(t, list)]


def esearch(r):
    """The ESEARCH response as (tag, uid, {NAME: value}) or None."""
    found = r.find("ESEARCH")
    if not found:
        return None
    toks = found[0][1:]
    tag, uid, items = None, False, {}
    i = 0
    if toks and isinstance(toks[0], list):
        tag = toks[0][1].decode() if len(toks[0]) > 1 else None
        i = 1
    if i < len(toks) and toks[i] == b"UID":
        uid = True
        i += 1
    while i + 1 < len(toks):
        items[toks[i].decode().upper()] = toks[i + 1]
        i += 2
    return tag, uid, items


# Messages of the "Sort" mailbox: (from, to, cc, subject, date, internaldate,
# body).  None leaves the header out.
MSGS = [
    ("Zed Zulu <zed@example.org>", "\"Bob B\" <bob@x.org>", "carol@x.org",
     "Re: Lunch", "Sat, 10 Jan 2026 12:00:00 +0000", "10-Jan-2026 13:00:00 +0000",
     "short\n"),
    ("=?iso-8859-1?q?=C9mile?= <alice@example.org>", "team: dave@x.org;", None,
     "=?utf-8?q?lunch?=", "Fri, 9 Jan 2026 23:00:00 -0200", "01-Jan-2026 00:00:00 +0000",
     "a somewhat longer body\n" * 3),
    ("bob@example.org (Bobby)", "aaron@x.org", "dan@x.org",
     "[list] Apples", None, "05-Jan-2026 00:00:00 +0000",
     "b\n"),
    (None, None, None,
     "Fwd: lunch (fwd)", "garbage date", "05-Jan-2026 00:00:00 +0000",
     "a body of middling length here\n"),
    ("\"Carl\" <carl@example.org>", "Yves <yves@x.org>", "=?utf-8?q?=C3=80?= <b@x.org>",
     "=?iso-8859-1?q?=E9t=E9?=", "Mon, 12 Jan 2026 08:00:00 +0100", "20-Jan-2026 00:00:00 +0000",
     "x" * 200 + "\n"),
]


def build(frm, to, cc, subj, date, body):
    hdr = ""
    if frm is not None:
        hdr += "From: %s\n" % frm
    if to is not None:
        hdr += "To: %s\n" % to
    if cc is not None:
        hdr += "Cc: %s\n" % cc
    if subj is not None:
        hdr += "Subject: %s\n" % subj
    if date is not None:
        hdr += "Date: %s\n" % date
    return crlf(hdr + "\n" + body)


def setup_sort_box(c):
    c.command("CREATE Sort")
    sizes = []
    for frm, to, cc, subj, date, idate, body in MSGS:
        m = build(frm, to, cc, subj, date, body)
        sizes.append(len(m))
        append(c, "Sort", m, date=idate, flags=["\\Seen"] if subj.startswith("Re") else None)
    return sizes


def t_capability():
    c = connect()
    r = c.command("CAPABILITY")
    caps = r.find("CAPABILITY")[0][1:] if r.find("CAPABILITY") else []
    caps = [x.decode().upper() for x in caps]
    for cap in ("SORT", "SORT=DISPLAY", "ESORT", "CONTEXT=SORT"):
        R.check("%s advertised" % cap, cap in caps, caps)
    r = c.command("SORT (SUBJECT) UTF-8 ALL")
    R.equal("SORT without a selected mailbox is BAD", r.status, "BAD")
    c.logout()


def t_keys():
    c = connect()
    sizes = setup_sort_box(c)
    r = c.command("SELECT Sort")
    R.equal("5 messages", r.number("EXISTS"), 5)

    def s(criteria, want, label=None):
        r = c.command("SORT %s UTF-8 ALL" % criteria)
        R.check("SORT %s" % (label or criteria), r.ok and sort_nums(r) == want,
                "%r %r" % (r, sort_nums(r)))

    s("(ARRIVAL)", [2, 3, 4, 1, 5])
    # REVERSE reverses the key only; 3 and 4 tie and stay in sequence order
    s("(REVERSE ARRIVAL)", [5, 1, 3, 4, 2])
    # sent dates (UTC): 2 is Jan 10 01:00, 1 Jan 10 12:00, 5 Jan 12 07:00;
    # 3 (no Date:) and 4 (unparsable) use their internal date, Jan 5
    s("(DATE)", [3, 4, 2, 1, 5])
    s("(REVERSE DATE)", [5, 1, 2, 3, 4])
    order = sorted(range(1, 6), key=lambda i: (sizes[i - 1], i))
    s("(SIZE)", order)
    s("(REVERSE SIZE)", sorted(range(1, 6), key=lambda i: (-sizes[i - 1], i)))
    # base subjects: apples, ete (decoded; i;unicode-casemap makes e-acute
    # an E and a combining accent, so it sorts among the E's), lunch x3
    s("(SUBJECT)", [3, 5, 1, 2, 4])
    s("(REVERSE SUBJECT)", [1, 2, 4, 5, 3])
    s("(SUBJECT REVERSE ARRIVAL)", [3, 5, 1, 4, 2])
    # FROM by mailbox: "" (none), alice, bob, carl, zed
    s("(FROM)", [4, 2, 3, 5, 1])
    s("(REVERSE FROM)", [1, 5, 3, 2, 4])
    # TO: "", aaron, bob, team (a group sorts by its name), yves
    s("(TO)", [4, 3, 1, 2, 5])
    # CC: "" x2 (2, 4), b, carol, dan
    s("(CC)", [2, 4, 5, 1, 3])
    # DISPLAYFROM: "", Bobby (comment), Carl, Emile (decoded), Zed Zulu
    s("(DISPLAYFROM)", [4, 3, 5, 2, 1])
    s("(REVERSE DISPLAYFROM)", [1, 2, 5, 3, 4])
    # DISPLAYTO: "", aaron@x.org (no name), Bob B, team, Yves
    s("(DISPLAYTO)", [4, 3, 1, 2, 5])
    s("(subject arrival)", [3, 5, 2, 4, 1], "lower-case keys")

    r = c.command("UID FETCH 1:* (UID)")
    uids = [it["UID"] for _, it in sorted(r.fetches())]
    r = c.command("UID SORT (REVERSE ARRIVAL) UTF-8 ALL")
    R.check("UID SORT answers UIDs", r.ok and sort_nums(r) == [uids[i - 1] for i in (5, 1, 3, 4, 2)],
            "%r %r %r" % (r, sort_nums(r), uids))
    r = c.command("UID SORT (ARRIVAL) UTF-8 UID %d:%d" % (uids[1], uids[3]))
    R.check("UID SORT with a UID set", r.ok and sort_nums(r) == [uids[1], uids[2], uids[3]],
            "%r %r" % (r, sort_nums(r)))

    # the search program filters; the charset converts its strings
    r = c.command("SORT (SUBJECT) UTF-8 SEEN")
    R.check("SORT with a search key", r.ok and sort_nums(r) == [1], (r, sort_nums(r)))
    r = c.command("SORT (ARRIVAL) US-ASCII OR FROM zed FROM bob")
    R.check("SORT with OR", r.ok and sort_nums(r) == [3, 1], (r, sort_nums(r)))
    r = c.command("SORT", "(DATE)", "ISO-8859-1", "SUBJECT", Literal("\xe9t\xe9".encode("latin-1")))
    R.check("SORT with an ISO-8859-1 search string", r.ok and sort_nums(r) == [5],
            (r, sort_nums(r)))
    r = c.command("SORT (DATE) UTF-8 SUBJECT nothing-matches-this")
    R.check("SORT with no match answers an empty SORT", r.ok and sort_nums(r) == [],
            (r, sort_nums(r)))
    c.logout()


def t_errors():
    c = connect()
    c.command("SELECT Sort")
    for bad in ("SORT", "SORT () UTF-8 ALL", "SORT (BOGUS) UTF-8 ALL", "SORT (REVERSE) UTF-8 ALL",
                "SORT (SUBJECT REVERSE) UTF-8 ALL", "SORT SUBJECT UTF-8 ALL", "SORT (SUBJECT)",
                "SORT (SUBJECT) UTF-8", "SORT (SUBJECT) UTF-8 NOSUCHKEY",
                "SORT RETURN (BOGUS) (SUBJECT) UTF-8 ALL",
                "SORT RETURN (PARTIAL 1) (ARRIVAL) UTF-8 ALL",
                "SORT RETURN (PARTIAL 0:2) (ARRIVAL) UTF-8 ALL",
                "SORT RETURN (PARTIAL 1:*) (ARRIVAL) UTF-8 ALL",
                "SORT RETURN (PARTIAL *:1) (ARRIVAL) UTF-8 ALL",
                "SORT RETURN (PARTIAL 1:4294967296) (ARRIVAL) UTF-8 ALL"):
        r = c.command(bad)
        R.equal("%s is BAD" % bad, r.status, "BAD")
        # the server closes after 10 BADs in a row (sustained garbage)
        c.command("NOOP")
    r = c.command("SORT (SUBJECT) X-NO-SUCH-CHARSET ALL")
    R.check("unknown charset: NO [BADCHARSET]", r.status == "NO" and r.code == "BADCHARSET", r)
    r = c.command("SORT (ARRIVAL) UTF-8 ALL")
    R.check("the connection still works after the errors", r.ok and sort_nums(r) == [2, 3, 4, 1, 5],
            (r, sort_nums(r)))
    c.logout()


def t_esort():
    c = connect()
    c.command("SELECT Sort")
    r = c.command("SORT RETURN (MIN MAX COUNT ALL) (REVERSE ARRIVAL) UTF-8 ALL", tag="E1")
    e = esearch(r)
    R.check("ESORT answers ESEARCH with the tag", r.ok and e is not None and e[0] == "E1"
            and not e[1], (r, e))
    if e:
        items = e[2]
        # MIN and MAX are the first and last in the sort order
        R.equal("ESORT MIN", items.get("MIN"), b"5")
        R.equal("ESORT MAX", items.get("MAX"), b"2")
        R.equal("ESORT COUNT", items.get("COUNT"), b"5")
        R.equal("ESORT ALL keeps the sort order", items.get("ALL"), b"5,1,3:4,2")
        R.check("no * SORT beside ESEARCH", sort_nums(r) is None, r.untagged)
    r = c.command("SORT RETURN () (ARRIVAL) UTF-8 ALL")
    e = esearch(r)
    R.check("RETURN () means ALL", r.ok and e is not None and e[2] == {"ALL": b"2:4,1,5"},
            (r, e))
    r = c.command("UID FETCH 1:* (UID)")
    uids = [it["UID"] for _, it in sorted(r.fetches())]
    r = c.command("UID SORT RETURN (COUNT MIN) (DATE) UTF-8 ALL")
    e = esearch(r)
    R.check("UID ESORT says UID", r.ok and e is not None and e[1]
            and e[2] == {"COUNT": b"5", "MIN": str(uids[2]).encode()}, (r, e, uids))
    r = c.command("SORT RETURN (COUNT MIN MAX ALL) (DATE) UTF-8 SUBJECT nothing-matches-this")
    e = esearch(r)
    R.check("ESORT with no match: COUNT 0 only", r.ok and e is not None and e[2] == {"COUNT": b"0"},
            (r, e))
    # PARTIAL (RFC 5267 4.4): a window of the sorted result; n:m in either
    # order, clamped to the result
    for opts, want in (("PARTIAL 1:1", b"(1:1 2)"), ("PARTIAL 2:4", b"(2:4 3:4,1)"),
                       ("PARTIAL 4:2", b"(2:4 3:4,1)"), ("PARTIAL 3:100", b"(3:100 4,1,5)"),
                       ("PARTIAL 6:9", b"(6:9 NIL)")):
        r = c.command("SORT RETURN (%s) (ARRIVAL) UTF-8 ALL" % opts)
        e = esearch(r)
        got = None
        if e is not None and "PARTIAL" in e[2]:
            p = e[2]["PARTIAL"]
            if isinstance(p, list):
                got = b"(" + b" ".join(b"NIL" if x is None else x for x in p) + b")"
        R.equal("ESORT %s" % opts, got, want)
    c.logout()


def search_nums(c, prog):
    r = c.command("SEARCH " + prog)
    found = r.find("SEARCH")
    if not r.ok or not found:
        return None
    return [int(t) for t in found[0][1:] if not isinstance(t, list)]


def t_esort_save():
    """SORT RETURN (SAVE) keeps the result for "$" (RFC 5182, RFC 5267)."""
    c = connect()
    c.command("SELECT Sort")
    r = c.command("SORT RETURN (SAVE) (REVERSE ARRIVAL) UTF-8 UNSEEN")
    R.check("SORT RETURN (SAVE) alone answers no ESEARCH",
            r.ok and esearch(r) is None and sort_nums(r) is None, r)
    R.equal("the saved SORT result is the set of matches", search_nums(c, "$"), [2, 3, 4, 5])
    r = c.command("SORT RETURN (SAVE MIN) (REVERSE ARRIVAL) UTF-8 ALL")
    e = esearch(r)
    R.check("SORT RETURN (SAVE MIN) answers MIN", r.ok and e is not None and e[2] == {"MIN": b"5"},
            (r, e))
    R.equal("SAVE with MIN keeps the first in sort order", search_nums(c, "$"), [5])
    r = c.command("SORT RETURN (MAX SAVE) (REVERSE ARRIVAL) UTF-8 ALL")
    R.equal("SAVE with MAX keeps the last in sort order", search_nums(c, "$"), [2])
    r = c.command("SORT (ARRIVAL) UTF-8 OR $ 1")
    R.check("SORT with $ in its program", r.ok and sort_nums(r) == [2, 1], (r, sort_nums(r)))
    r = c.command("SORT RETURN (SAVE BOGUS) (ARRIVAL) UTF-8 ALL")
    R.check("SORT RETURN (SAVE BOGUS) is BAD", r.status == "BAD", r)
    R.equal("a failed SORT with SAVE empties $", search_nums(c, "$"), [])
    c.logout()


def fetch_has_modseq(r):
    return any("MODSEQ" in it for _, it in r.fetches())


def t_modseq():
    """A MODSEQ search key in SORT or THREAD (RFC 7162 3.1, 3.1.9): the
    command enables CONDSTORE like SEARCH's does (the untagged OK [HIGHESTMODSEQ]
    the first time, MODSEQ in later FETCH responses), SORT's reply ends
    with (MODSEQ n), the highest modseq of the matches, and ESORT's MODSEQ
    covers what it returns (RFC 4731 3.2: only the MIN and MAX messages
    when nothing else is asked)."""
    c = connect()
    c.command("CREATE SortMod")
    for i, subj in enumerate(("delta", "bravo", "charlie", "alpha")):
        append(c, "SortMod", build("a@x.org", "b@x.org", None, subj,
                                   "Mon, 5 Jan 2026 0%d:00:00 +0000" % i, "x\n"),
               date="05-Jan-2026 0%d:00:00 +0000" % i)
    c.logout()
    c = connect()
    c.command("SELECT SortMod")
    r = c.command("STORE 1 +FLAGS (\\Flagged)")
    R.check("no MODSEQ in FETCH before CONDSTORE is enabled", r.ok and not fetch_has_modseq(r),
            r.untagged)
    r = c.command("SORT (SUBJECT) UTF-8 MODSEQ 1")
    R.check("SORT with MODSEQ enables CONDSTORE: * OK [HIGHESTMODSEQ n]",
            r.ok and "HIGHESTMODSEQ" in r.codes(), r.untagged)
    found = r.find("SORT")
    nums = [int(t) for t in found[0][1:] if not isinstance(t, list)] if found else None
    tail = found[0][-1] if found else None
    ms = {s: int(it["MODSEQ"][0]) for s, it in c.command("FETCH 1:* (MODSEQ)").fetches()}
    R.equal("SORT with MODSEQ: the order", nums, [4, 2, 3, 1])
    R.equal("SORT with MODSEQ ends with (MODSEQ highest of the matches)", tail,
            [b"MODSEQ", str(max(ms.values())).encode()])
    r = c.command("STORE 3 +FLAGS (\\Seen)")
    R.check("after SORT MODSEQ, a STORE's FETCH carries MODSEQ", r.ok and fetch_has_modseq(r),
            r.untagged)
    ms = {s: int(it["MODSEQ"][0]) for s, it in c.command("FETCH 1:* (MODSEQ)").fetches()}
    R.check("the last STORE made message 3 the highest modseq",
            ms[3] > max(ms[1], ms[2], ms[4]), ms)
    r = c.command("SORT RETURN (MIN MAX) (SUBJECT) UTF-8 MODSEQ 1")
    e = esearch(r)
    R.equal("ESORT MIN MAX with MODSEQ: the modseq of those two", e and e[2],
            {"MIN": b"4", "MAX": b"1", "MODSEQ": str(max(ms[4], ms[1])).encode()})
    r = c.command("SORT RETURN (ALL) (REVERSE SUBJECT) UTF-8 MODSEQ 1")
    e = esearch(r)
    R.equal("ESORT ALL with MODSEQ: the highest of all", e and e[2],
            {"ALL": b"1,3,2,4", "MODSEQ": str(ms[3]).encode()})
    r = c.command("UID SORT RETURN (COUNT) (SUBJECT) UTF-8 MODSEQ %d" % ms[3])
    e = esearch(r)
    R.equal("UID ESORT COUNT with MODSEQ n: the one changed since", e and (e[1], e[2]),
            (True, {"COUNT": b"1", "MODSEQ": str(ms[3]).encode()}))
    r = c.command("SORT (SUBJECT) UTF-8 MODSEQ %d" % (ms[3] + 1))
    R.check("SORT MODSEQ matching nothing: * SORT without (MODSEQ)",
            r.ok and sort_nums(r) == [] and r.find("SORT")[0][1:] == [], r.untagged)
    c.logout()
    if T.kind != "starling":
        return  # Dovecot 2.3 does not count THREAD among the enabling commands
    c = connect()
    c.command("SELECT SortMod")
    r = c.command("THREAD REFS UTF-8 MODSEQ 1")
    R.check("THREAD with MODSEQ enables CONDSTORE: * OK [HIGHESTMODSEQ n]",
            r.ok and "HIGHESTMODSEQ" in r.codes(), r.untagged)
    R.check("THREAD's reply has no MODSEQ (RFC 5256's thread-data)",
            not any(b"MODSEQ" in u for u in r.untagged if u.upper().startswith(b"* THREAD")),
            r.untagged)
    r = c.command("STORE 2 +FLAGS (\\Seen)")
    R.check("after THREAD MODSEQ, a STORE's FETCH carries MODSEQ", r.ok and fetch_has_modseq(r),
            r.untagged)
    c.logout()


def seqset_in_order(v):
    """A sequence-set as written, ranges expanded in place ("5,3:4" ->
    [5, 3, 4])."""
    out = []
    for part in v.decode().split(","):
        a, _, b = part.partition(":")
        lo, hi = int(a), int(b or a)
        out.extend(range(lo, hi + 1) if lo <= hi else range(lo, hi - 1, -1))
    return out


def context_updates(r, tag):
    """[(kind, position, [nums])] of the ADDTO/REMOVEFROM for tag, in the
    order sent; one entry per (position set) pair."""
    out = []
    for u in r.untagged:
        toks = parse(u[2:])
        if not toks or not isinstance(toks[0], bytes) or toks[0].upper() != b"ESEARCH":
            continue
        if not (len(toks) > 1 and isinstance(toks[1], list) and toks[1][1].decode() == tag):
            continue
        for i in range(2, len(toks) - 1):
            if isinstance(toks[i], bytes) and toks[i].upper() in (b"ADDTO", b"REMOVEFROM"):
                pairs = toks[i + 1]
                for k in range(0, len(pairs) - 1, 2):
                    out.append((toks[i].decode().upper(), int(pairs[k]),
                                seqset_in_order(pairs[k + 1])))
    return out


def plain(subject):
    return crlf("From: a@example.org\nSubject: %s\n\nbody\n" % subject)


def t_context_sort():
    """CONTEXT=SORT (RFC 5267 4.3): ADDTO/REMOVEFROM with positions in the
    sort order, for this session's and another session's changes."""
    c, other = connect(), connect()
    c.command("CREATE CtxSort")
    for subj in ("b", "d", "f"):
        append(c, "CtxSort", plain(subj))
    c.command("SELECT CtxSort")
    other.command("SELECT CtxSort")
    r = c.command("SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 UNSEEN", tag="s1")
    e = esearch(r)
    R.check("SORT RETURN (UPDATE ALL) answers the result now",
            r.ok and e is not None and e[0] == "s1" and e[2] == {"ALL": b"1:3"}, (r, e))
    append(other, "CtxSort", plain("c"))
    r = c.command("NOOP")
    R.equal("another session's APPEND -> ADDTO at its sorted position",
            context_updates(r, "s1"), [("ADDTO", 2, [4])])
    r = c.command("APPEND", "CtxSort", Literal(plain("a")))
    R.equal("own APPEND -> ADDTO (1 5)", context_updates(r, "s1"), [("ADDTO", 1, [5])])
    append(other, "CtxSort", plain("e"))
    append(other, "CtxSort", plain("g"))
    append(other, "CtxSort", plain("ca"))
    r = c.command("NOOP")
    # a b c ca d e f g: ca (8) at 4, e (6) at 6, g (7) at 8
    R.equal("three new messages -> one ADDTO per run of positions, in order",
            context_updates(r, "s1"), [("ADDTO", 4, [8]), ("ADDTO", 6, [6]), ("ADDTO", 8, [7])])
    r = c.command("STORE 2 +FLAGS.SILENT (\\Seen)")
    R.equal("STORE that ends a match -> REMOVEFROM (position seq)",
            context_updates(r, "s1"), [("REMOVEFROM", 5, [2])])
    r = c.command("STORE 2 -FLAGS.SILENT (\\Seen)")
    R.equal("...and ADDTO when it matches again", context_updates(r, "s1"), [("ADDTO", 5, [2])])
    other.command("STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.command("EXPUNGE")
    r = c.command("NOOP")
    kinds = []
    for u in r.untagged:
        toks = parse(u[2:])
        if toks and toks[0].upper() == b"ESEARCH":
            kinds.append(context_updates(r, "s1")[0] if context_updates(r, "s1") else None)
        elif len(toks) > 1 and toks[1].upper() == b"EXPUNGE":
            kinds.append(("EXPUNGE", int(toks[0])))
    R.equal("expunge -> REMOVEFROM (2 1) before * 1 EXPUNGE", kinds,
            [("REMOVEFROM", 2, [1]), ("EXPUNGE", 1)])
    r = c.command('CANCELUPDATE "s1"')
    R.check("CANCELUPDATE of a SORT context", r.ok, r)
    append(other, "CtxSort", plain("aa"))
    r = c.command("NOOP")
    R.check("no ADDTO after CANCELUPDATE", r.ok and not context_updates(r, "s1"), r.untagged)
    # A UID context with REVERSE, followed through random changes: the
    # updates applied in order give what a new SORT answers.
    r = c.command("UID SORT RETURN (UPDATE ALL) (REVERSE SUBJECT) UTF-8 UNSEEN", tag="s2")
    e = esearch(r)
    model = seqset_in_order(e[2]["ALL"]) if e and "ALL" in e[2] else []
    import random
    rnd = random.Random(5267)
    bad, applied = [], 0
    for rounds in range(40):
        op = rnd.randrange(4)
        n = len(other.command("UID SEARCH ALL").find("SEARCH")[0]) - 1
        if op == 0 or n < 3:
            for _ in range(rnd.randrange(1, 4)):
                append(other, "CtxSort", plain("%c%d" % (rnd.choice("abcdefgh"), rnd.randrange(9))))
        elif op == 1:
            other.command("STORE %d +FLAGS.SILENT (\\Seen)" % rnd.randrange(1, n + 1))
        elif op == 2:
            other.command("STORE %d:%d -FLAGS.SILENT (\\Seen)" % (1, n))
        else:
            other.command("STORE %d +FLAGS.SILENT (\\Deleted)" % rnd.randrange(1, n + 1))
            other.command("EXPUNGE")
        r = c.command("NOOP")
        for kind, pos, ids in context_updates(r, "s2"):
            applied += 1
            if kind == "ADDTO":
                model[pos - 1:pos - 1] = ids
            else:
                if model[pos - 1:pos - 1 + len(ids)] != ids:
                    bad.append((rounds, kind, pos, ids, list(model)))
                model = [x for x in model if x not in ids]
        want = sort_nums(c.command("UID SORT (REVERSE SUBJECT) UTF-8 UNSEEN"))
        if model != want:
            bad.append((rounds, "model", list(model), want))
            model = list(want)
    R.check("40 rounds of changes: the updates applied in order give the new SORT result",
            not bad, bad[:3])
    R.check("...through many updates (%d)" % applied, applied >= 30, applied)
    c.command('CANCELUPDATE "s2"')
    other.logout()
    c.logout()


def t_large():
    """600 messages: several steps of the server's loop, checked against the
    order computed here."""
    c = connect()
    c.command("CREATE Big")
    n = 600
    subjects = []
    for i in range(n):
        k = (i * 7919) % 37
        prefix = ("Re: ", "Fwd: ", "", "[x] ", "re: RE: ")[i % 5]
        subj = "%s%s topic %02d" % (prefix, "abcdefghij"[k % 10], k)
        subjects.append(subj)
        m = crlf("From: u%03d@example.org\nSubject: %s\nDate: %s\n\nbody %d\n" % (
            (i * 31) % 97, subj, "Mon, %d Feb 2026 10:00:00 +0000" % (1 + (i % 28)), i))
        append(c, "Big", m)
    c.command("SELECT Big")

    def base(s):
        for p in ("Re: ", "Fwd: ", "[x] ", "re: RE: "):
            if s.startswith(p):
                return s[len(p):]
        return s

    r = c.command("SORT (SUBJECT) UTF-8 ALL")
    want = sorted(range(1, n + 1), key=lambda i: (base(subjects[i - 1]).upper(), i))
    R.check("SORT (SUBJECT) of 600 messages", r.ok and sort_nums(r) == want,
            (r, (sort_nums(r) or [])[:20], want[:20]))
    r = c.command("SORT (REVERSE DATE FROM) UTF-8 ALL")
    want = sorted(range(1, n + 1), key=lambda i: (-(1 + ((i - 1) % 28)),
                                                  "U%03d" % (((i - 1) * 31) % 97), i))
    R.check("SORT (REVERSE DATE FROM) of 600 messages", r.ok and sort_nums(r) == want,
            (r, (sort_nums(r) or [])[:20], want[:20]))
    r = c.command("SORT RETURN (COUNT) (ARRIVAL) UTF-8 SUBJECT topic")
    e = esearch(r)
    R.check("ESORT COUNT of 600", r.ok and e is not None and e[2].get("COUNT") == b"600", (r, e))
    c.logout()


def t_long_headers():
    """The keys come from the header only, read in chunks: headers of every
    length around the first chunk (8 KiB), one of 40 KiB, a message that is
    all header, and large bodies.  The Subject is the last field, so a
    header cut short would lose it."""
    c = connect()
    c.command("CREATE Hdr")
    subjects = []
    i = 0
    for hlen in list(range(8180, 8200)) + [40000, 16385]:
        subj = "s%02d" % (40 - i)
        subjects.append(subj)
        tail = "Subject: %s\r\n" % subj
        head = "From: a@b.c\r\n"
        need = hlen - len(head) - len(tail)
        while need >= 89:
            head += "X-Pad: " + "p" * 70 + "\r\n"
            need -= 79
        head += "X-F: " + "f" * (need - 7) + "\r\n"
        assert len(head + tail) == hlen
        body = ("line of body text %d\r\n" % i) * (3000 if i % 3 == 0 else 2)
        append(c, "Hdr", (head + tail + "\r\n" + body).encode())
        i += 1
    subjects.append("s00")
    append(c, "Hdr", b"From: a@b.c\r\nSubject: s00")  # all header, no blank line
    c.command("SELECT Hdr")
    n = len(subjects)
    r = c.command("SORT (SUBJECT) UTF-8 ALL")
    want = sorted(range(1, n + 1), key=lambda k: (subjects[k - 1], k))
    R.check("SORT (SUBJECT) with headers around the chunk size", r.ok and sort_nums(r) == want,
            (r, sort_nums(r), want))
    r = c.command("SORT (REVERSE SUBJECT) UTF-8 BODY \"line of body\"")
    want = sorted(range(1, n), key=lambda k: subjects[k - 1], reverse=True)
    R.check("SORT (REVERSE SUBJECT) where the search reads the bodies",
            r.ok and sort_nums(r) == want, (r, sort_nums(r), want))
    c.logout()


def t_concurrent_changes():
    """SORTs in one session while another expunges and appends in the same
    mailbox: every answer names distinct messages of the session's view, and
    once the changes are reported SORT sees exactly the mailbox."""
    import threading
    a = connect()
    r = a.command("SELECT Big")
    count = r.number("EXISTS")
    R.check("Big has messages", count is not None and count > 100, r)
    errors = []

    def writer():
        try:
            b = connect()
            b.command("SELECT Big")
            for k in range(20):
                b.command("STORE %d +FLAGS (\\Deleted)" % (1 + (k * 13) % 50))
                b.command("EXPUNGE")
                append(b, "Big", crlf("Subject: late %d\n\nbody\n" % k))
            b.logout()
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    th = threading.Thread(target=writer)
    th.start()
    bad = []
    rounds = 0
    while th.is_alive() or rounds < 3:
        r = a.command("SORT (SUBJECT) UTF-8 ALL")
        nums = sort_nums(r) or []
        if not r.ok or len(set(nums)) != len(nums) or any(x < 1 or x > count for x in nums):
            bad.append((r, count, nums[:10]))
        # the view moves by what this response reported, after the SORT
        for toks in r.find("EXPUNGE"):
            count -= 1
        if r.number("EXISTS") is not None:
            count = r.number("EXISTS")
        rounds += 1
        if rounds > 500:
            break
    th.join(60)
    R.check("the writer ran without errors", not errors, errors)
    R.check("%d SORTs during changes named distinct messages of the view" % rounds, not bad,
            bad[:3])
    r = a.command("NOOP")
    for toks in r.find("EXPUNGE"):
        count -= 1
    if r.number("EXISTS") is not None:
        count = r.number("EXISTS")
    r = a.command("SORT (ARRIVAL) UTF-8 ALL")
    R.equal("after the changes SORT (ARRIVAL) is every message in order", sort_nums(r),
            list(range(1, count + 1)))
    r = a.command("SEARCH SUBJECT late")
    R.equal("the 20 appended messages are there", len(r.search()[0]), 20)
    a.logout()


SECTIONS = [
    ("capability", t_capability),
    ("every key", t_keys),
    ("errors", t_errors),
    ("esort", t_esort),
    ("esort save", t_esort_save),
    ("context sort", t_context_sort),
    ("modseq", t_modseq),
    ("600 messages", t_large),
    ("long headers", t_long_headers),
    ("concurrent changes", t_concurrent_changes),
]


def set_target(t):
    global T
    T = t


if __name__ == "__main__":
    sys.exit(run_sections(R, SECTIONS, __doc__.splitlines()[0], {USER: PASSWORD}, set_target))
