#!/usr/bin/env python3
"""ESEARCH, SEARCHRES and CONTEXT=SEARCH against one real server.

RFC 4731 (SEARCH RETURN (MIN MAX ALL COUNT SAVE), UID SEARCH, MODSEQ with
CONDSTORE), RFC 5182 ("$" after RETURN (SAVE) in SEARCH, FETCH, STORE, COPY,
MOVE and UID EXPUNGE, and when it is reset), RFC 5267 (PARTIAL, UPDATE with
ADDTO/REMOVEFROM for this session's and another session's changes,
CANCELUPDATE, NOUPDATE), and that a couple of BADs in a row do not end a
session while sustained garbage does.

By default it starts a starlingd node through tests/harness; `--dovecot`
runs the same checks against a private Dovecot.  The last line is
"imap-esearch: N passed, M failed"; exit 0 only if nothing failed.
"""
import sys

from imapcommon import Report, run_sections
from harness.imapwire import Client, Literal, parse, expand_set

USER, PASSWORD = "erin", "esearch-pw"
R = Report("imap-esearch")
T = None


def connect():
    c = Client(T.host, T.port, timeout=20.0)
    r = c.login(USER, PASSWORD)
    if not r.ok:
        raise RuntimeError("login failed: %r" % r)
    return c


def message(subject, body="Hello body\n"):
    return ("From: a@example.org\r\nTo: b@example.net\r\nSubject: %s\r\n"
            "Date: Mon, 15 Jul 2024 12:00:00 +0000\r\n\r\n%s" % (subject, body)
            ).replace("\r\n", "\n").replace("\n", "\r\n")


def fill(c, box, n, prefix="m"):
    c.command("CREATE", box)
    for i in range(n):
        r = c.command("APPEND", box, Literal(message("%s%d" % (prefix, i + 1))))
        if not r.ok:
            raise RuntimeError("append failed: %r" % r)


def esearch(r):
    """[(tag, uid, {NAME: value})] of the ESEARCH responses, in order; a
    name given twice (ADDTO, REMOVEFROM) collects a list of values."""
    out = []
    for u in r.untagged:
        toks = parse(u[2:])
        if not toks or not isinstance(toks[0], bytes) or toks[0].upper() != b"ESEARCH":
            continue
        i, tag, uid, items = 1, None, False, {}
        if i < len(toks) and isinstance(toks[i], list):
            tag = toks[i][1].decode()
            i += 1
        if i < len(toks) and isinstance(toks[i], bytes) and toks[i].upper() == b"UID":
            uid = True
            i += 1
        while i + 1 < len(toks):
            name = toks[i].decode().upper()
            items.setdefault(name, []).append(toks[i + 1])
            i += 2
        out.append((tag, uid, {k: v if len(v) > 1 else v[0] for k, v in items.items()}))
    return out


def one(r, tag):
    """The single ESEARCH of the command with tag, as (uid, items), or None."""
    es = [e for e in esearch(r) if e[0] == tag]
    return (es[0][1], es[0][2]) if len(es) == 1 else None


def nums(v):
    return expand_set(v) if v is not None else []


def uids_of(c):
    return [f["UID"] for _, f in c.command("FETCH 1:* (UID)").fetches()]


# ------------------------------------------------------------------ sections
def t_capability():
    c = connect()
    caps = c.command("CAPABILITY").find("CAPABILITY")[0]
    caps = {x.decode().upper() for x in caps[1:]}
    for cap in ("ESEARCH", "SEARCHRES", "CONTEXT=SEARCH"):
        R.check("CAPABILITY advertises %s" % cap, cap in caps, caps)
    c.logout()


def t_esearch():
    c = connect()
    fill(c, "Es", 7)
    c.command("SELECT Es")
    c.command("STORE 4 +FLAGS (\\Deleted)")
    c.command("EXPUNGE")
    uids = uids_of(c)
    R.equal("6 messages left", len(uids), 6)
    r = c.command("SEARCH RETURN (ALL) ALL", tag="e1")
    R.equal("SEARCH RETURN (ALL) -> ESEARCH (TAG) ALL 1:6", one(r, "e1"),
            (False, {"ALL": b"1:6"}))
    R.check("...and no plain * SEARCH", not r.find("SEARCH"), r.untagged)
    r = c.command("SEARCH RETURN () ALL", tag="e2")
    R.equal("RETURN () is ALL", one(r, "e2"), (False, {"ALL": b"1:6"}))
    r = c.command("SEARCH RETURN (MIN MAX COUNT) 2:5", tag="e3")
    R.equal("MIN MAX COUNT", one(r, "e3"),
            (False, {"MIN": b"2", "MAX": b"5", "COUNT": b"4"}))
    r = c.command("UID SEARCH RETURN (ALL MIN) ALL", tag="e4")
    uid, items = one(r, "e4")
    R.check("UID SEARCH -> ESEARCH ... UID, the set in UIDs",
            uid and expand_set(items["ALL"]) == uids and int(items["MIN"]) == uids[0], r.untagged)
    r = c.command("SEARCH RETURN (MIN MAX ALL COUNT) 1000", tag="e5")
    R.equal("no match: only COUNT 0", one(r, "e5"), (False, {"COUNT": b"0"}))
    r = c.command("UID SEARCH RETURN (MIN) 1000", tag="e6")
    R.equal("no match, MIN only: ESEARCH with the tag and UID alone", one(r, "e6"), (True, {}))
    c.command("STORE 2,4 +FLAGS (\\Seen)")
    r = c.command("UID SEARCH RETURN (COUNT ALL) SEEN", tag="e7")
    R.equal("SEEN", one(r, "e7"), (True, {"COUNT": b"2", "ALL": ("%d,%d" % (uids[1], uids[3])).encode()}))
    for opts in ("(BOGUS)", "(PARTIAL 1:2 PARTIAL 3:4)", "MIN", "(PARTIAL 1)", "(PARTIAL 1:*)", "(PARTIAL 0:2)",
                 "(ALL PARTIAL 1:2)"):
        R.equal("RETURN %s -> BAD" % opts, c.command("SEARCH RETURN %s ALL" % opts).status, "BAD")
    # PARTIAL (RFC 5267 4.4)
    r = c.command("SEARCH RETURN (PARTIAL 4:2) ALL", tag="p1")
    R.equal("PARTIAL 4:2 -> (2:4 2:4)", one(r, "p1"), (False, {"PARTIAL": [b"2:4", b"2:4"]}))
    r = c.command("SEARCH RETURN (PARTIAL 2:10) 1:2,4:5", tag="p2")
    R.equal("PARTIAL past the end", one(r, "p2"), (False, {"PARTIAL": [b"2:10", b"2,4:5"]}))
    r = c.command("UID SEARCH RETURN (PARTIAL 7:9) ALL", tag="p3")
    R.equal("PARTIAL beyond the result -> NIL", one(r, "p3"), (True, {"PARTIAL": [b"7:9", None]}))
    # MODSEQ (RFC 7162 3.1.5 with RFC 4731)
    c.command("STORE 3 +FLAGS (\\Flagged)")
    c.command("STORE 1 +FLAGS (\\Flagged)")
    r = c.command("FETCH 1:3 (MODSEQ)")
    hms = r.codes().get("HIGHESTMODSEQ")
    ms = {s: int(f["MODSEQ"][0]) for s, f in r.fetches()}
    # RFC 7162 3.1: the first CONDSTORE-enabling command in a selected
    # mailbox reports HIGHESTMODSEQ (imaptest's esearch-condstore).
    R.check("the first FETCH MODSEQ sends * OK [HIGHESTMODSEQ n], n >= every modseq",
            hms is not None and int(hms) >= max(ms.values()), r.untagged)
    R.check("...only the first", "HIGHESTMODSEQ" not in
            c.command("FETCH 1 (MODSEQ)").codes(), None)
    r = c.command("SEARCH RETURN (MIN) 1:3 MODSEQ 1", tag="m1")
    R.equal("MIN with MODSEQ: the min's modseq", one(r, "m1"),
            (False, {"MIN": b"1", "MODSEQ": str(ms[1]).encode()}))
    r = c.command("SEARCH RETURN (MAX) 1:3 MODSEQ 1", tag="m2")
    R.equal("MAX with MODSEQ: the max's modseq", one(r, "m2"),
            (False, {"MAX": b"3", "MODSEQ": str(ms[3]).encode()}))
    r = c.command("SEARCH RETURN (COUNT) 1:3 MODSEQ 1", tag="m3")
    R.equal("COUNT with MODSEQ: the highest of all", one(r, "m3"),
            (False, {"COUNT": b"3", "MODSEQ": str(max(ms.values())).encode()}))
    c.logout()


def t_searchres():
    c = connect()
    fill(c, "Sr", 6)
    c.command("CREATE SrDest")
    c.command("SELECT Sr")
    uids = uids_of(c)
    r = c.command("FETCH $ (UID)")
    R.check("$ before any SAVE is the empty set: FETCH $ -> OK, nothing",
            r.ok and not r.fetches(), r)
    r = c.command("SEARCH RETURN (SAVE) 2:4", tag="s1")
    R.check("RETURN (SAVE) alone: no ESEARCH, no SEARCH", r.ok and not esearch(r)
            and not r.find("SEARCH"), r.untagged)
    r = c.command("FETCH $ (UID)")
    R.equal("FETCH $ -> the saved messages", sorted(s for s, _ in r.fetches()), [2, 3, 4])
    r = c.command("UID FETCH $ (FLAGS)")
    R.equal("UID FETCH $ too", sorted(f["UID"] for _, f in r.fetches()), uids[1:4])
    r = c.command("SEARCH $")
    R.equal("SEARCH $", r.search()[0], [2, 3, 4])
    r = c.command("UID SEARCH UID $ NOT 3")
    R.equal("UID SEARCH UID $ NOT 3", r.search()[0], [uids[1], uids[3]])
    r = c.command("STORE $ +FLAGS (\\Flagged)")
    R.check("STORE $", r.ok and sorted(s for s, _ in r.fetches()) == [2, 3, 4], r)
    r = c.command("SEARCH FLAGGED")
    R.equal("...flagged exactly those", r.search()[0], [2, 3, 4])
    r = c.command("COPY $ SrDest")
    R.check("COPY $ -> COPYUID of three", r.ok and r.code == "COPYUID" and
            len(expand_set(r.code_args.split()[1])) == 3, r)
    # Expunging a saved message takes it out of $ (RFC 5182 2.1).
    c.command("STORE 3 +FLAGS (\\Deleted)")
    c.command("UID EXPUNGE %d" % uids[2])
    r = c.command("UID SEARCH $")
    R.equal("an expunged message leaves $", r.search()[0], [uids[1], uids[3]])
    # SAVE with MIN/MAX keeps only those; with COUNT everything.
    c.command("SEARCH RETURN (SAVE MIN MAX) ALL", tag="s2")
    R.equal("SAVE MIN MAX keeps the two ends", c.command("SEARCH $").search()[0], [1, 5])
    c.command("SEARCH RETURN (SAVE MIN COUNT) ALL", tag="s3")
    R.equal("SAVE MIN COUNT keeps all", c.command("SEARCH $").search()[0], [1, 2, 3, 4, 5])
    # Failed SAVE searches reset $ to empty.
    c.command("SEARCH RETURN (SAVE) 1")
    r = c.command("SEARCH RETURN (SAVE) BOGUSKEY")
    R.equal("a SAVE search with a bad key -> BAD", r.status, "BAD")
    # RFC 5182 2.1: a failed SAVE search empties $, so that a pipelined
    # "FETCH $" cannot act on a stale result; Dovecot keeps the old one.
    if T.kind == "starling":
        R.equal("...and $ is now empty", c.command("SEARCH $").search()[0], [])
    c.command("SEARCH RETURN (SAVE) 1")
    r = c.command("SEARCH RETURN (SAVE) CHARSET X-UNKNOWN-CS SUBJECT x")
    R.check("a SAVE search with an unknown charset -> NO [BADCHARSET]",
            r.status == "NO" and r.code == "BADCHARSET", r)
    if T.kind == "starling":
        R.equal("...and $ is now empty", c.command("SEARCH $").search()[0], [])
    # A plain SEARCH does not touch $.
    c.command("SEARCH RETURN (SAVE) 2")
    c.command("SEARCH 1:3")
    R.equal("a SEARCH without SAVE keeps $", c.command("SEARCH $").search()[0], [2])
    r = c.command("MOVE $ SrDest")
    R.check("MOVE $", r.ok and r.expunges() == [2], r)
    # SELECT resets it.
    c.command("SEARCH RETURN (SAVE) 1:2")
    c.command("SELECT Sr")
    R.equal("SELECT empties $", c.command("SEARCH $").search()[0], [])
    c.command("SEARCH RETURN (SAVE) 1")
    c.command("STORE 1 +FLAGS (\\Deleted)")
    r = c.command("UID EXPUNGE $")
    R.check("UID EXPUNGE $", r.ok and r.expunges() == [1], r)
    c.logout()


def t_context_update():
    c, other = connect(), connect()
    fill(c, "Cx", 5, prefix="s")
    c.command("SELECT Cx")
    other.command("SELECT Cx")
    c.command("STORE 1,2 +FLAGS (\\Seen)")
    r = c.command("SEARCH RETURN (UPDATE ALL) OR SEEN SUBJECT s5", tag="u1")
    R.equal("UPDATE ALL gives the result now", one(r, "u1"), (False, {"ALL": b"1:2,5"}))
    r = c.command("STORE 3:4 +FLAGS (\\Seen)")
    R.equal("own STORE -> ADDTO with the new messages", one(r, "u1")[1]["ADDTO"][1], b"3:4")
    r = c.command("STORE 1:5 -FLAGS (\\Seen)")
    R.equal("own STORE -> REMOVEFROM of those that stopped matching",
            nums(one(r, "u1")[1]["REMOVEFROM"][1]), [1, 2, 3, 4])
    other.command("STORE 2 +FLAGS (\\Seen)")
    r = c.command("NOOP")
    R.equal("another session's STORE -> ADDTO on NOOP", one(r, "u1")[1]["ADDTO"][1], b"2")
    # An expunge by another session: REMOVEFROM comes before the EXPUNGE,
    # with the sequence number the client still knows.
    other.command("STORE 2 +FLAGS (\\Deleted)")
    other.command("EXPUNGE")
    r = c.command("NOOP")
    kinds = []
    for u in r.untagged:
        toks = parse(u[2:])
        if toks and toks[0].upper() == b"ESEARCH":
            kinds.append(("REMOVEFROM", esearch_line_value(toks, "REMOVEFROM")))
        elif len(toks) > 1 and toks[1].upper() == b"EXPUNGE":
            kinds.append(("EXPUNGE", toks[0]))
    R.equal("expunge -> REMOVEFROM (2) before * 2 EXPUNGE", kinds,
            [("REMOVEFROM", b"2"), ("EXPUNGE", b"2")])
    r = c.command("APPEND", "Cx", "(\\Seen)", Literal(message("late")))
    order = []
    for u in r.untagged:
        toks = parse(u[2:])
        if toks and toks[0].upper() == b"ESEARCH":
            order.append(("ADDTO", esearch_line_value(toks, "ADDTO")))
        elif len(toks) > 1 and toks[1].upper() == b"EXISTS":
            order.append(("EXISTS", toks[0]))
    R.equal("own APPEND -> * 5 EXISTS, then ADDTO (5)", order,
            [("EXISTS", b"5"), ("ADDTO", b"5")])
    # A UID context reports UIDs.
    uids = uids_of(c)
    r = c.command("UID SEARCH RETURN (UPDATE) FLAGGED", tag="u2")
    R.equal("UPDATE alone answers with the tag only", one(r, "u2"), (True, {}))
    r = c.command("STORE 1 +FLAGS (\\Flagged)")
    uid, items = one(r, "u2")
    R.check("UID context -> UID ADDTO (pos uid)", uid and items["ADDTO"][1] ==
            str(uids[0]).encode(), r.untagged)
    # CANCELUPDATE
    r = c.command('CANCELUPDATE "u1" "nosuchtag"')
    R.check("CANCELUPDATE of an unknown tag -> BAD (Dovecot: NO)", r.status in ("BAD", "NO"), r)
    for t in ("u1", "u2"):
        r = c.command('CANCELUPDATE "%s"' % t)
        # Dovecot keeps one context a session: u2 replaced u1 there.
        R.check('CANCELUPDATE "%s"' % t, r.ok or (T.kind == "dovecot" and t == "u1"), r)
    r = c.command("STORE 1:* +FLAGS (\\Seen \\Flagged)")
    R.check("after CANCELUPDATE no more ESEARCH", r.ok and not esearch(r), r.untagged)
    # Too many contexts: NO [NOUPDATE] but the search itself answers.
    noupdate = None
    for i in range(12):
        r = c.command("SEARCH RETURN (UPDATE COUNT) ALL", tag="n%d" % i)
        if "NOUPDATE" in r.codes():
            noupdate = (i, r)
            break
    # How many contexts a session may keep is the server's choice (ours:
    # 10).
    want = 10 if T.kind == "starling" else noupdate and noupdate[0]
    tag = "n%s" % want
    R.check("context %s is refused with * NO [NOUPDATE \"tag\"], the search still OK" % want,
            noupdate is not None and noupdate[0] == want and noupdate[1].ok and
            one(noupdate[1], tag) == (False, {"COUNT": b"5"}) and
            ('"%s"' % tag).encode() in noupdate[1].codes()["NOUPDATE"], noupdate)
    # Contexts end with the mailbox.
    c.command("SELECT Cx")
    r = c.command("STORE 1:* -FLAGS (\\Seen)")
    R.check("re-SELECT drops the contexts", r.ok and not esearch(r), r.untagged)
    other.logout()
    c.logout()


def t_context_bounded():
    """A text context that would read more than 1000 texts for one report is
    ended with NOUPDATE; a flag-only context follows any number."""
    c = connect()
    c.command("CREATE Big")
    n = 1001
    msg = message("big", "hello world\n").encode()
    # Pipelined APPENDs with LITERAL+ (bounded: n commands, then n replies).
    data = b"".join(b"b%d APPEND Big {%d+}\r\n%s\r\n" % (i, len(msg), msg) for i in range(n))
    c.send(data)
    oks = sum(1 for i in range(n) if c.wait_tagged("b%d" % i).ok)
    R.equal("%d pipelined APPENDs" % n, oks, n)
    c.command("SELECT Big")
    r1 = c.command("SEARCH RETURN (UPDATE) BODY hello SEEN", tag="big1")
    r2 = c.command("SEARCH RETURN (UPDATE) SEEN", tag="big2")
    R.check("two contexts created", r1.ok and r2.ok, (r1, r2))
    r = c.command("STORE 1:* +FLAGS.SILENT (\\Seen)")
    # The bound is ours (Dovecot follows every change).
    if T.kind == "starling":
        R.check("STORE 1:* -> NO [NOUPDATE \"big1\"] for the BODY context",
                r.ok and b'"big1"' in r.codes().get("NOUPDATE", b""), r.untagged[-3:])
        R.equal("CANCELUPDATE of the ended context -> BAD",
                c.command('CANCELUPDATE "big1"').status, "BAD")
    R.equal("...the SEEN context gets ADDTO 1:%d" % n,
            [e[2].get("ADDTO")[1] for e in esearch(r) if e[0] == "big2"], [b"1:%d" % n])
    c.logout()


def esearch_line_value(toks, name):
    for i in range(len(toks) - 1):
        if isinstance(toks[i], bytes) and toks[i].upper() == name.encode():
            v = toks[i + 1]
            return v[1] if isinstance(v, list) else v
    return None


def t_bad_commands():
    c = connect()
    c.command("SELECT INBOX")
    for i in range(9):
        r = c.command("SEARCH RETURN (BOGUS) ALL")
        if r.status != "BAD":
            break
    R.equal("nine BADs in a row are answered BAD", r.status, "BAD")
    R.equal("...and the session goes on", c.command("NOOP").status, "OK")
    for i in range(9):
        c.command("FROBNICATE")
    R.equal("a good command resets the count: nine more BADs, still served",
            c.command("NOOP").status, "OK")
    c.logout()
    c = connect()
    closed = False
    try:
        for i in range(40):
            r = c.command("FROBNICATE")
            if r.status == "CLOSED":
                closed = True
                break
    except (OSError, EOFError):
        closed = True
    R.check("sustained garbage (40 BADs in a row) ends the session", closed)
    c.close()


SECTIONS = [
    ("capability", t_capability),
    ("esearch", t_esearch),
    ("searchres", t_searchres),
    ("context update", t_context_update),
    ("context bounded", t_context_bounded),
    ("bad commands", t_bad_commands),
]


def set_target(t):
    global T
    T = t


if __name__ == "__main__":
    sys.exit(run_sections(R, SECTIONS, __doc__.splitlines()[0], {USER: PASSWORD}, set_target))
