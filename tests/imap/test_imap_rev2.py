#!/usr/bin/env python3
"""End-to-end IMAP4rev2 (RFC 9051) against one real server.

IMAP4rev2 is advertised beside IMAP4rev1 with the extensions RFC 9051
folds in; after `ENABLE IMAP4rev2` a session gets rev2's rules: no \\Recent
and no RECENT responses, SELECT without [UNSEEN n] but with the mailbox's
LIST response, OK [CLOSED] when another mailbox is selected, SEARCH
answered with ESEARCH, mailbox names in UTF-8 both ways (stored as modified
UTF-7, which IMAP4rev1 sessions still see), STATUS SIZE and DELETED, and
LIST-EXTENDED's \\NonExistent and CHILDINFO, NAMESPACE, BINARY and LITERAL-
in a rev2 session.  A rev1 session on the same mailboxes keeps rev1's rules.
The last line is "imap-rev2: N passed, M failed"; exit 0 only if nothing
failed.
"""
import sys

from imapcommon import Report, run_sections
from harness.imapwire import Client, Literal, expand_set, parse, quote

USER, PASSWORD = "alice", "s3cret pass"

R = Report("imap-rev2")
T = None  # the Target


def connect(rev2=False):
    c = Client(T.host, T.port, timeout=20.0)
    r = c.login(USER, PASSWORD)
    if not r.ok:
        raise RuntimeError("login failed: %r" % r)
    if rev2:
        r = c.command("ENABLE IMAP4rev2")
        if not r.ok:
            raise RuntimeError("ENABLE failed: %r" % r)
    return c


def message(subject, body="Hello body\n"):
    return ("From: a@example.org\r\nTo: b@example.net\r\nSubject: %s\r\n"
            "Date: Mon, 15 Jul 2024 12:00:00 +0000\r\n\r\n%s" % (subject, body)
            ).replace("\r\n", "\n").replace("\n", "\r\n").encode()


def append(c, box, msg, flags=None):
    parts = ["APPEND", quote(box)]
    if flags:
        parts.append("(%s)" % flags)
    parts.append(Literal(msg))
    r = c.command(*parts)
    if not r.ok:
        raise RuntimeError("append failed: %r" % r)
    return r


def list_names(r, kind="LIST"):
    """{name (str): [attributes]} of the LIST/LSUB responses."""
    out = {}
    for toks in r.find(kind):
        if len(toks) >= 4 and isinstance(toks[1], list):
            name = toks[3]
            out[name.decode("utf-8", "replace")] = [a.decode() for a in toks[1]]
    return out


def lines_with(r, needle):
    return [u for u in r.untagged if needle in u]


# ------------------------------------------------------------------ sections
def t_capability():
    c = Client(T.host, T.port, timeout=20.0)
    r = c.command("CAPABILITY")
    caps = {x.decode().upper() for x in r.find("CAPABILITY")[0][1:]}
    R.check("IMAP4rev2 advertised beside IMAP4rev1", {"IMAP4REV1", "IMAP4REV2"} <= caps, caps)
    # what RFC 9051 folds in: a rev2 server has all of it
    folded = {"ENABLE", "IDLE", "NAMESPACE", "UIDPLUS", "UNSELECT", "MOVE", "ESEARCH",
              "SEARCHRES", "LIST-EXTENDED", "LIST-STATUS", "SASL-IR", "SPECIAL-USE",
              "LITERAL-", "BINARY", "STATUS=SIZE"}
    R.check("the extensions IMAP4rev2 folds in are advertised", folded <= caps, folded - caps)
    c.login(USER, PASSWORD)
    r = c.command("ENABLE IMAP4rev2")
    R.check("ENABLE IMAP4rev2 -> * ENABLED IMAP4rev2",
            r.ok and any(t[1:] == [b"IMAP4rev2"] for t in r.find("ENABLED")), r.untagged)
    r = c.command("ENABLE IMAP4rev2")
    R.check("a second ENABLE IMAP4rev2 enables nothing new",
            r.ok and all(len(t) == 1 for t in r.find("ENABLED")), r.untagged)
    c.logout()


def t_recent():
    old, c = connect(), connect(rev2=True)
    old.command("CREATE Rev2")
    for i in range(3):
        append(old, "Rev2", message("m%d" % (i + 1)), flags="\\Seen" if i == 0 else None)
    r = c.command("SELECT Rev2")
    R.check("rev2 SELECT: EXISTS", r.ok and r.number("EXISTS") == 3, r.untagged)
    R.check("rev2 SELECT: no RECENT", r.number("RECENT") is None, r.untagged)
    R.check("rev2 SELECT: no [UNSEEN n]", "UNSEEN" not in r.codes(), r.codes())
    R.check("rev2 SELECT: UIDNEXT, UIDVALIDITY, PERMANENTFLAGS",
            {"UIDNEXT", "UIDVALIDITY", "PERMANENTFLAGS"} <= set(r.codes()), r.codes())
    R.equal("rev2 SELECT: * LIST () \"/\" Rev2", list_names(r), {"Rev2": []})
    r = c.command("FETCH 1:* (FLAGS)")
    flags = [f["FLAGS"] for _, f in r.fetches()]
    R.check("rev2 FETCH FLAGS has no \\Recent",
            len(flags) == 3 and not any(b"\\Recent" in f for f in flags), flags)
    append(old, "Rev2", message("m4"))
    r = c.command("NOOP")
    R.check("a new message: EXISTS and no RECENT",
            r.number("EXISTS") == 4 and r.number("RECENT") is None, r.untagged)
    # a rev1 session still has \Recent: the rev2 session took none
    r = old.command("SELECT Rev2")
    R.check("rev1 SELECT still sends RECENT and [UNSEEN n]",
            r.number("RECENT") is not None and "UNSEEN" in r.codes() and not list_names(r),
            r.untagged)
    old.command("CREATE Rec")
    old.command("SELECT Rec")
    append(c, "Rec", message("r1"))
    old.command("NOOP")
    r = old.command("FETCH 1 (FLAGS)")
    had = [f["FLAGS"] for _, f in r.fetches()]
    r = old.command("ENABLE IMAP4rev2")
    r2 = old.command("FETCH 1 (FLAGS)")
    now = [f["FLAGS"] for _, f in r2.fetches()]
    R.check("ENABLE IMAP4rev2 in a selected mailbox: \\Recent is gone",
            r.ok and had and b"\\Recent" in had[0] and now and b"\\Recent" not in now[0],
            (had, now))
    old.logout()
    old = connect()
    r = c.command("STATUS Rev2 (RECENT)")
    R.equal("rev2 STATUS (RECENT) is BAD", r.status, "BAD")
    r = c.command("STATUS Rev2 (MESSAGES RECENT)")
    R.equal("...whatever comes with it", r.status, "BAD")
    r = old.command("STATUS Rev2 (RECENT)")
    R.check("rev1 STATUS (RECENT) still answers", r.ok and r.find("STATUS"), r)
    c.logout()
    old.logout()


def status_items(r):
    st = r.find("STATUS")
    if not st:
        return None
    items = st[0][2]
    return {items[i].decode().upper(): int(items[i + 1]) for i in range(0, len(items) - 1, 2)}


def t_status():
    c = connect(rev2=True)
    c.command("CREATE Sizes")
    sizes = []
    for i in range(3):
        m = message("s%d" % i, "x" * (10 * i + 1) + "\n")
        sizes.append(len(m))
        append(c, "Sizes", m, flags="\\Deleted" if i != 1 else None)
    r = c.command("STATUS Sizes (SIZE DELETED MESSAGES)")
    R.equal("STATUS SIZE, DELETED, MESSAGES", status_items(r),
            {"SIZE": sum(sizes), "DELETED": 2, "MESSAGES": 3})
    c.command("SELECT Sizes")
    c.command("STORE 1 -FLAGS.SILENT (\\Deleted)")
    c.command("UNSELECT")
    r = c.command("STATUS Sizes (DELETED)")
    R.equal("STATUS DELETED follows STORE", status_items(r), {"DELETED": 1})
    r = c.command("STATUS Empty-none (SIZE)")
    R.check("STATUS of a missing mailbox: NO [NONEXISTENT]",
            r.status == "NO" and r.code == "NONEXISTENT", r)
    c.command("CREATE Empty")
    r = c.command("STATUS Empty (SIZE DELETED)")
    R.equal("STATUS SIZE/DELETED of an empty mailbox", status_items(r), {"SIZE": 0, "DELETED": 0})
    r = c.command('LIST "" "Sizes" RETURN (STATUS (SIZE DELETED))')
    R.equal("LIST-STATUS with SIZE and DELETED", status_items(r),
            {"SIZE": sum(sizes), "DELETED": 1})
    c.logout()


def esearch_items(r):
    out = []
    for toks in r.find("ESEARCH"):
        i, tag, uid = 1, None, False
        if i < len(toks) and isinstance(toks[i], list):
            tag = toks[i][1].decode()
            i += 1
        if i < len(toks) and toks[i] == b"UID":
            uid = True
            i += 1
        items = {toks[k].decode().upper(): toks[k + 1] for k in range(i, len(toks) - 1, 2)}
        out.append((tag, uid, items))
    return out


def t_search():
    c, old = connect(rev2=True), connect()
    c.command("SELECT Rev2")
    old.command("SELECT Rev2")
    r = c.command("SEARCH UNSEEN", tag="S1")
    R.check("rev2 SEARCH answers ESEARCH (TAG) ALL, no * SEARCH",
            r.ok and esearch_items(r) == [("S1", False, {"ALL": b"2:4"})] and not r.find("SEARCH"),
            r.untagged)
    r = c.command("UID SEARCH ALL", tag="S2")
    uids = [f["UID"] for _, f in c.command("FETCH 1:* (UID)").fetches()]
    e = esearch_items(r)
    R.check("rev2 UID SEARCH -> ESEARCH UID ALL",
            r.ok and len(e) == 1 and e[0][1] and expand_set(e[0][2].get("ALL", b"")) == uids,
            (r.untagged, uids))
    r = c.command("SEARCH SUBJECT nothing-matches", tag="S3")
    R.check("rev2 SEARCH without a match: ESEARCH with the tag only",
            r.ok and esearch_items(r) == [("S3", False, {})], r.untagged)
    r = c.command("SEARCH RETURN (COUNT) ALL", tag="S4")
    R.check("RETURN options still apply", esearch_items(r) == [("S4", False, {"COUNT": b"4"})],
            r.untagged)
    r = old.command("SEARCH UNSEEN")
    R.check("a rev1 session still gets * SEARCH", r.ok and r.search()[0] == [2, 3, 4]
            and not r.find("ESEARCH"), r.untagged)
    c.logout()
    old.logout()


def t_utf8_names():
    c, old = connect(rev2=True), connect()
    r = c.command("CREATE", quote("Entwürfe/Ärger"))
    R.check("rev2 CREATE with a UTF-8 name", r.ok, r)
    r = old.command('LIST "" "Entw*"')
    R.equal("rev1 sees it in modified UTF-7", sorted(list_names(r)),
            ["Entw&APw-rfe", "Entw&APw-rfe/&AMQ-rger"])
    r = c.command('LIST "" "Entw*"')
    R.equal("rev2 LIST shows UTF-8", sorted(list_names(r)), ["Entwürfe", "Entwürfe/Ärger"])
    r = c.command("LIST", '""', quote("Entwürfe/%"))
    R.equal("rev2 LIST pattern in UTF-8", sorted(list_names(r)), ["Entwürfe/Ärger"])
    r = c.command("LIST", '""', quote("%/Ä*"))
    R.equal("...with a wildcard next to a non-ASCII character", sorted(list_names(r)),
            ["Entwürfe/Ärger"])
    r = old.command("CREATE &ZeVnLIqe-")
    r = c.command('LIST "" "*"')
    R.check("a rev1-created modified UTF-7 name is UTF-8 for rev2", "日本語" in list_names(r),
            list_names(r))
    r = c.command("SELECT", quote("日本語"))
    R.check("rev2 SELECT by the UTF-8 name, its LIST response in UTF-8",
            r.ok and list_names(r) == {"日本語": []}, r.untagged)
    append(c, "日本語", message("x"))
    r = c.command("STATUS", quote("日本語"), "(MESSAGES)")
    st = r.find("STATUS")
    R.check("rev2 STATUS names the mailbox in UTF-8",
            r.ok and st and st[0][1].decode("utf-8", "replace") == "日本語", r.untagged)
    r = c.command("COPY 1", quote("Entwürfe"))
    R.check("rev2 COPY to a UTF-8 name", r.ok, r)
    r = old.command("STATUS &ZeVnLIqe- (MESSAGES)")
    R.equal("...and rev1 sees the message under the modified UTF-7 name",
            status_items(r), {"MESSAGES": 1})
    r = c.command("CREATE", quote("A&B"))
    r2 = old.command('LIST "" "A*"')
    R.check("rev2 '&' is a plain character: stored as &-",
            r.ok and "A&-B" in list_names(r2), (r, list_names(r2)))
    r = c.command("RENAME", quote("A&B"), quote("Ä&B"))
    r2 = c.command('LIST "" "*&B"')
    R.check("rev2 RENAME with UTF-8 names", r.ok and list_names(r2) == {"Ä&B": ["\\HasNoChildren"]},
            (r, list_names(r2)))
    r = c.command("SUBSCRIBE", quote("Ä&B"))
    r2 = c.command("LSUB", '""', quote("*"))
    R.check("rev2 SUBSCRIBE/LSUB in UTF-8", r.ok and "Ä&B" in list_names(r2, "LSUB"),
            list_names(r2, "LSUB"))
    # not UTF-8: a latin-1 byte, and a control character
    c.send(b'B1 CREATE "bad\xe4name"\r\n')
    r = c.wait_tagged("B1")
    R.check("rev2 CREATE with invalid UTF-8 -> NO", r.status == "NO", r)
    r = c.command("CREATE", Literal(b"ctl\x01name"))
    R.check("rev2 CREATE with a control character -> NO", r.status in ("NO", "BAD"), r)
    R.equal("...and the session goes on", c.command("NOOP").status, "OK")
    c.logout()
    old.logout()


def t_list_rev2():
    c = connect(rev2=True)
    c.command("CREATE Par/Kid")
    c.command("SUBSCRIBE Par/Kid")
    c.command("SUBSCRIBE Gone")
    r = c.command('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    R.check('LIST (SUBSCRIBED RECURSIVEMATCH): Par with CHILDINFO ("SUBSCRIBED")',
            any(b'Par ("CHILDINFO" ("SUBSCRIBED"))' in u for u in r.untagged), r.untagged)
    r = c.command('LIST (SUBSCRIBED) "" "Gone"')
    R.check("a subscribed name that does not exist is \\NonExistent",
            "\\NonExistent" in list_names(r).get("Gone", []), r.untagged)
    r = c.command("NAMESPACE")
    R.check("NAMESPACE answers", r.ok and r.find("NAMESPACE"), r)
    c.logout()


def oldnames(r):
    """[(new name, [attributes], OLDNAME's name)] of the untagged LISTs,
    sorted; OLDNAME's name is None without the item, and a LIST that does
    not parse as one with at most that item is (raw line, None, None)."""
    out = []
    for u in r.untagged:
        if not u.startswith(b"* LIST"):
            continue
        t = parse(u[2:])
        if (len(t) == 4 or (len(t) == 5 and len(t[4]) == 2 and t[4][0] == b"OLDNAME"
                            and isinstance(t[4][1], list) and len(t[4][1]) == 1)) \
                and isinstance(t[1], list):
            out.append((t[3].decode(), [a.decode() for a in t[1]],
                        t[4][1][0].decode() if len(t) == 5 else None))
        else:
            out.append((u, None, None))
    return sorted(out, key=repr)


def t_oldname():
    """RENAME in a rev2 session: an untagged LIST of each new name with
    OLDNAME (RFC 9051 7.3.1), inferiors included, names in UTF-8; none for
    a rev1 session or a RENAME that fails."""
    c, old = connect(rev2=True), connect()
    c.command("CREATE", quote("Proj/Sub"))
    c.command("CREATE", quote("Proj/Sub/Deep"))
    r = c.command("RENAME", quote("Proj"), quote("Ärchiv"))
    R.equal("rev2 RENAME: LIST with OLDNAME for the mailbox and its inferiors",
            (r.status, oldnames(r)),
            ("OK", sorted([("Ärchiv", [], "Proj"), ("Ärchiv/Sub", [], "Proj/Sub"),
                           ("Ärchiv/Sub/Deep", [], "Proj/Sub/Deep")], key=repr)))
    r = c.command("RENAME", quote("Ärchiv/Sub/Deep"), quote("Flat"))
    R.equal("rev2 RENAME of a leaf: one LIST, OLDNAME in UTF-8", oldnames(r),
            [("Flat", [], "Ärchiv/Sub/Deep")])
    r = c.command('LIST "" "*"')
    R.check("a LIST command carries no OLDNAME", r.ok and all(
        o is None for _, _, o in oldnames(r)), r.untagged)
    r = old.command("RENAME Flat Flat2")
    R.check("rev1 RENAME: no LIST", r.ok and not lines_with(r, b"* LIST"), r.untagged)
    r = c.command("RENAME Nosuch Other")
    R.check("a failed RENAME: NO and no LIST", r.status == "NO" and not lines_with(r, b"* LIST"),
            r.untagged)
    r = c.command("RENAME", "Flat2", quote("Ärchiv"))
    R.check("RENAME onto an existing name: NO and no LIST",
            r.status == "NO" and not lines_with(r, b"* LIST"), r.untagged)
    r = old.command("RENAME &AMQ-rchiv Archiv2")
    R.check("rev1 RENAME of the modified UTF-7 name: no LIST",
            r.ok and not lines_with(r, b"* LIST"), r)
    c.logout()
    old.logout()


def t_closed_binary_literal():
    c = connect(rev2=True)
    c.command("SELECT Rev2")
    r = c.command("SELECT Sizes")
    R.check("rev2 SELECT of another mailbox: OK [CLOSED] first",
            r.ok and r.untagged and r.untagged[0].startswith(b"* OK [CLOSED]"), r.untagged[:2])
    body = ("Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n"
            "Subject: b\r\n\r\naMOpbGxvIHfDtnJsZA==\r\n").encode()
    r = c.command("APPEND", "Sizes", Literal(body, plus=True))
    R.check("APPEND with a non-synchronizing literal (LITERAL-)", r.ok, r)
    r = c.command("FETCH 4 (BINARY[1] BINARY.SIZE[1])")
    f = r.fetches()
    R.check("FETCH BINARY decodes the content transfer encoding",
            r.ok and f and f[0][1].get("BINARY[1]") == "héllo wörld".encode(), r.untagged)
    c.logout()


SECTIONS = [
    ("capability", t_capability),
    ("recent", t_recent),
    ("status", t_status),
    ("search", t_search),
    ("utf8 names", t_utf8_names),
    ("list", t_list_rev2),
    ("oldname", t_oldname),
    ("closed binary literal", t_closed_binary_literal),
]


def set_target(t):
    global T
    T = t


if __name__ == "__main__":
    sys.exit(run_sections(R, SECTIONS, __doc__.splitlines()[0], {USER: PASSWORD}, set_target))
