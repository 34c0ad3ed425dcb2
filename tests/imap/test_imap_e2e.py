#!/usr/bin/env python3
"""End-to-end IMAP scenario against one real server.

Covers every command of the IMAP server issue over the wire, with exact
RFC 3501 / 4315 / 6851 / 7162 / 2177 behaviour: capabilities, LOGIN and
AUTHENTICATE PLAIN, mailbox management, APPEND, every FETCH item on a
multipart message with an attachment, STORE (CONDSTORE), COPY/MOVE with
UIDPLUS codes, EXPUNGE / UID EXPUNGE, SEARCH keys, NAMESPACE, ENABLE, ID,
IDLE wake-up, two sessions seeing each other's changes, QRESYNC resync of a
client cache, 50 concurrent clients, malformed input and STARTTLS.

By default it starts a starlingd node through tests/harness (binaries from
$top_builddir); `--dovecot` runs the same checks against a private Dovecot,
which validates the test itself.  Every check is one pass or fail; the last
line is "imap-e2e: N passed, M failed".  Exit 0 only if nothing failed.

Where Dovecot departs from the RFC the RFC is asserted (noted inline).
"""
import base64
import datetime
import email.utils
import ssl
import sys
import socket
import threading
import time

from imapcommon import Report, run_sections
from harness.imapwire import Client, Literal, parse, quote, expand_set, fetch_items

USER, PASSWORD = "alice", "s3cret pass"
USER2, PASSWORD2 = "bob", "b0b-Pw!"

R = Report("imap-e2e")
T = None  # the Target


def connect(login=True, user=USER, password=PASSWORD, timeout=20.0):
    c = Client(T.host, T.port, timeout=timeout)
    if login:
        r = c.login(user, password)
        if not r.ok:
            raise RuntimeError("login failed: %r" % r)
    return c


# ------------------------------------------------------------ messages
def crlf(s):
    if isinstance(s, str):
        s = s.encode()
    return s.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def simple_message(subject, body="Hello\n", frm="Alice <alice@example.org>",
                   to="Bob <bob@example.net>", date="Mon, 15 Jul 2024 12:00:00 +0000",
                   extra=""):
    return crlf("From: %s\nTo: %s\nSubject: %s\nDate: %s\nMessage-ID: <%s@test>\n%s\n%s"
                % (frm, to, subject, date, abs(hash(subject + body)), extra, body))


TEXT_PART_BODY = crlf("Hello Bob,\nThe numbers are in the attachment =E2=80=94 see page 2.\n"
                      "Regards=\n, Alice\n")
TEXT_PART_HDR = crlf("Content-Type: text/plain; charset=utf-8\n"
                     "Content-Transfer-Encoding: quoted-printable\n")
HTML_PART_BODY = crlf("<html><body>\n<p>Hello Bob</p>\n</body></html>\n")
HTML_PART_HDR = crlf("Content-Type: text/html; charset=utf-8\n")
PDF_DATA = bytes(range(256)) * 3
PDF_PART_BODY = crlf(base64.encodebytes(PDF_DATA).decode())
PDF_PART_HDR = crlf('Content-Type: application/pdf; name="report.pdf"\n'
                    'Content-Disposition: attachment; filename="report.pdf"\n'
                    "Content-Transfer-Encoding: base64\n")
INNER_MSG = crlf("From: Carol <carol@example.com>\nSubject: Forwarded note\n"
                 "Date: Tue, 02 Jul 2024 08:00:00 +0000\n\nInner body line\nsecond line\n")
INNER_BODY = crlf("Inner body line\nsecond line\n")
RFC822_PART_HDR = crlf("Content-Type: message/rfc822\n")


def multipart(boundary, parts, preamble=b""):
    b = boundary.encode()
    out = (preamble + b"\r\n") if preamble else b""
    out += b"--" + b + b"\r\n"
    out += (b"\r\n--" + b + b"\r\n").join(h + b"\r\n" + body for h, body in parts)
    out += b"\r\n--" + b + b"--\r\n"
    return out


ALT_BODY = multipart("inner-b", [(TEXT_PART_HDR, TEXT_PART_BODY),
                                 (HTML_PART_HDR, HTML_PART_BODY)])
ALT_HDR = crlf('Content-Type: multipart/alternative; boundary="inner-b"\n')
MAIN_HEADER = crlf(
    "Return-Path: <alice@example.org>\n"
    "Date: Mon, 15 Jul 2024 09:30:00 +0000\n"
    'From: "Alice Example" <alice@example.org>\n'
    "To: Bob <bob@example.net>, carol@example.com\n"
    "Cc: Dave <dave@example.com>\n"
    "Bcc: eve@example.com\n"
    "Subject: Quarterly report\n"
    "Message-ID: <report-1@example.org>\n"
    "In-Reply-To: <prev@example.org>\n"
    "MIME-Version: 1.0\n"
    'Content-Type: multipart/mixed; boundary="outer-b"\n'
    "\n")
MAIN_BODY = multipart("outer-b", [(ALT_HDR, ALT_BODY), (PDF_PART_HDR, PDF_PART_BODY),
                                  (RFC822_PART_HDR, INNER_MSG)],
                      preamble=b"This is a multi-part message in MIME format.")
MAIN_MSG = MAIN_HEADER + MAIN_BODY


def lines(b):
    return b.count(b"\r\n")


# ------------------------------------------------------------ helpers
def lower(x):
    return x.lower() if isinstance(x, bytes) else x


def norm_params(p):
    if p is None:
        return None
    return {bytes(p[i]).lower(): bytes(p[i + 1]) for i in range(0, len(p) - 1, 2)}


def norm_body(bs, extensible):
    """A BODY/BODYSTRUCTURE list as a comparable dict (extension data
    under 'ext' when present)."""
    if isinstance(bs[0], list):
        i = 0
        parts = []
        while i < len(bs) and isinstance(bs[i], list):
            parts.append(norm_body(bs[i], extensible))
            i += 1
        d = {"type": b"multipart", "subtype": lower(bytes(bs[i])), "parts": parts}
        ext = bs[i + 1:]
        if ext:
            d["ext"] = {"params": norm_params(ext[0]) if len(ext) > 0 else None,
                        "disp": ext[1] if len(ext) > 1 else None}
        return d
    d = {"type": lower(bytes(bs[0])), "subtype": lower(bytes(bs[1])),
         "params": norm_params(bs[2]), "id": bs[3], "desc": bs[4],
         "enc": lower(bytes(bs[5])), "size": int(bs[6])}
    i = 7
    if d["type"] == b"message" and d["subtype"] == b"rfc822":
        d["env_subject"] = bytes(bs[7][1]) if bs[7][1] is not None else None
        d["body"] = norm_body(bs[8], extensible)
        d["lines"] = int(bs[9])
        i = 10
    elif d["type"] == b"text":
        d["lines"] = int(bs[7])
        i = 8
    ext = bs[i:]
    if ext:
        disp = ext[1] if len(ext) > 1 else None
        if isinstance(disp, list):
            disp = (lower(bytes(disp[0])), norm_params(disp[1]))
        d["ext"] = {"md5": ext[0], "disp": disp}
    return d


def strip_ext(d):
    d = dict(d)
    d.pop("ext", None)
    if "parts" in d:
        d["parts"] = [strip_ext(p) for p in d["parts"]]
    if "body" in d:
        d["body"] = strip_ext(d["body"])
    return d


def expected_structure():
    text = {"type": b"text", "subtype": b"plain", "params": {b"charset": b"utf-8"},
            "id": None, "desc": None, "enc": b"quoted-printable",
            "size": len(TEXT_PART_BODY), "lines": lines(TEXT_PART_BODY)}
    html = {"type": b"text", "subtype": b"html", "params": {b"charset": b"utf-8"},
            "id": None, "desc": None, "enc": b"7bit",
            "size": len(HTML_PART_BODY), "lines": lines(HTML_PART_BODY)}
    pdf = {"type": b"application", "subtype": b"pdf", "params": {b"name": b"report.pdf"},
           "id": None, "desc": None, "enc": b"base64", "size": len(PDF_PART_BODY)}
    inner_text = {"type": b"text", "subtype": b"plain", "params": {b"charset": b"us-ascii"},
                  "id": None, "desc": None, "enc": b"7bit", "size": len(INNER_BODY),
                  "lines": lines(INNER_BODY)}
    rfc822 = {"type": b"message", "subtype": b"rfc822", "params": None, "id": None,
              "desc": None, "enc": b"7bit", "size": len(INNER_MSG),
              "env_subject": b"Forwarded note", "body": inner_text,
              "lines": lines(INNER_MSG)}
    alt = {"type": b"multipart", "subtype": b"alternative", "parts": [text, html]}
    return {"type": b"multipart", "subtype": b"mixed", "parts": [alt, pdf, rfc822]}


def addr_list(v):
    if v is None:
        return None
    return [tuple(None if x is None else bytes(x) for x in a) for a in v]


def fetch1(c, what, seq="1", uid=False):
    """FETCH one message; returns (response, items of that message)."""
    r = c.command(("UID FETCH" if uid else "FETCH"), seq, what)
    f = r.fetches()
    items = {}
    for _, it in f:
        items.update(it)
    return r, items


def flagset(v):
    return set(bytes(x).decode().lower() for x in (v or []))


def delim_of(c):
    r = c.command('LIST "" ""')
    toks = r.find("LIST")
    if toks and toks[0][2] is not None:
        return bytes(toks[0][2]).decode()
    return "/"


def list_names(r):
    out = {}
    for toks in r.find("LIST") + r.find("LSUB"):
        out[bytes(toks[3]).decode()] = set(bytes(a).decode().lower() for a in toks[1])
    return out


def status_of(c, box, items="(MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ)"):
    r = c.command("STATUS", quote(box), items)
    st = {}
    for toks in r.find("STATUS"):
        lst = toks[2]
        for i in range(0, len(lst) - 1, 2):
            st[bytes(lst[i]).decode().upper()] = int(lst[i + 1])
    return r, st


def append(c, box, msg, flags=None, date=None, plus=False):
    parts = ["APPEND", quote(box)]
    if flags is not None:
        parts.append("(%s)" % " ".join(flags))
    if date is not None:
        parts.append(quote(date))
    parts.append(Literal(msg, plus=plus))
    r = c.command(*parts)
    uid = None
    if r.ok and r.code == "APPENDUID":
        uid = int(r.code_args.split()[1])
    return r, uid


def uids_in(c, box=None):
    """UIDs of the selected mailbox in sequence order (UID FETCH 1:*)."""
    if box is not None:
        c.command("SELECT", quote(box))
    r = c.command("FETCH 1:* (UID)")
    return [it["UID"] for _, it in sorted(r.fetches())]


# ------------------------------------------------------------ sections
def t_capability_and_login():
    c = connect(login=False)
    R.check("greeting is untagged OK", c.greeting.startswith(b"* OK"), c.greeting)
    r = c.command("CAPABILITY")
    toks = r.find("CAPABILITY")
    pre = set(bytes(x).upper() for x in toks[0][1:]) if toks else set()
    R.check("CAPABILITY answered OK with a CAPABILITY response", r.ok and toks, r)
    R.check("IMAP4rev1 advertised", b"IMAP4REV1" in pre, pre)
    R.check("STARTTLS advertised before login", b"STARTTLS" in pre, pre)
    R.check("AUTH=PLAIN advertised before login", b"AUTH=PLAIN" in pre, pre)
    R.check("LOGINDISABLED not advertised on loopback", b"LOGINDISABLED" not in pre, pre)
    r = c.command("SELECT INBOX")
    R.check("SELECT before login is refused", r.status in ("NO", "BAD"), r)
    r = c.login(USER, "wrong password")
    R.equal("LOGIN with a wrong password -> NO", r.status, "NO")
    r = c.login("nosuchuser", PASSWORD)
    R.equal("LOGIN of an unknown user -> NO", r.status, "NO")
    r = c.login(USER, PASSWORD)
    R.equal("LOGIN with the right password (quoted, with a space) -> OK", r.status, "OK")
    r = c.command("CAPABILITY")
    toks = r.find("CAPABILITY")
    post = set(bytes(x).upper() for x in toks[0][1:]) if toks else set()
    for cap in ("IMAP4REV1", "LITERAL+", "UIDPLUS", "IDLE", "NAMESPACE", "ENABLE", "ID",
                "MOVE", "CONDSTORE", "QRESYNC", "SPECIAL-USE"):
        R.check("%s advertised after login" % cap, cap.encode() in post, post)
    r = c.login(USER, PASSWORD)
    R.check("LOGIN when already authenticated is refused", r.status in ("NO", "BAD"), r)
    r = c.command("LOGOUT")
    R.check("LOGOUT sends untagged BYE then OK",
            r.ok and any(u.startswith(b"* BYE") for u in r.untagged), r)

    # AUTHENTICATE PLAIN
    c = connect(login=False)
    r = c.authenticate_plain(USER2, "not it")
    R.equal("AUTHENTICATE PLAIN with a wrong password -> NO", r.status, "NO")
    r = c.authenticate_plain(USER2, PASSWORD2)
    R.equal("AUTHENTICATE PLAIN with the right password -> OK", r.status, "OK")
    r = c.command("SELECT INBOX")
    R.equal("authenticated session can SELECT", r.status, "OK")
    c.logout()
    c = connect(login=False)
    tag = c.next_tag()
    c.send("%s AUTHENTICATE PLAIN\r\n" % tag)
    first = c.read_response()
    c.send("*\r\n")
    r = c.wait_tagged(tag)
    R.check("AUTHENTICATE cancelled with '*' -> BAD (RFC 3501 6.2.2)",
            first.startswith(b"+") and r.status == "BAD", (first, r))
    blob = base64.b64encode(("\0%s\0%s" % (USER2, PASSWORD2)).encode()).decode()
    r = c.command("AUTHENTICATE PLAIN", blob)
    R.check("AUTHENTICATE PLAIN with an initial response (SASL-IR) works or is BAD"
            " when SASL-IR is not advertised", r.status in ("OK", "BAD"), r)
    c.logout()


def t_namespace_list_special_use():
    c = connect()
    r = c.command("NAMESPACE")
    ns = r.find("NAMESPACE")
    R.check("NAMESPACE answers OK with a NAMESPACE response", r.ok and ns, r)
    delim = delim_of(c)
    if ns:
        personal = ns[0][1]
        R.check("personal namespace is listed with the LIST delimiter",
                isinstance(personal, list) and personal and
                bytes(personal[0][1]).decode() == delim, ns[0])
    r = c.command('LIST "" ""')
    toks = r.find("LIST")
    R.check('LIST "" "" gives the hierarchy delimiter with \\Noselect and an empty name',
            toks and b"\\noselect" in [bytes(a).lower() for a in toks[0][1]]
            and bytes(toks[0][3]) == b"", r.untagged)
    r = c.command('LIST "" "*"')
    names = list_names(r)
    R.check("LIST * is OK", r.ok, r)
    for box, use in (("INBOX", None), ("Drafts", "\\drafts"), ("Sent", "\\sent"),
                     ("Trash", "\\trash"), ("Junk", "\\junk"), ("Archive", "\\archive")):
        R.check("new user has %s" % box, box in names, names)
        if use:
            R.check("%s carries the %s special-use attribute" % (box, use),
                    use in names.get(box, set()), names.get(box))
    c.logout()


def t_mailbox_management():
    c = connect()
    d = delim_of(c)
    sub = "Work" + d + "Sub"
    R.equal("CREATE Work", c.command("CREATE Work").status, "OK")
    R.equal("CREATE Work%sSub" % d, c.command("CREATE", quote(sub)).status, "OK")
    R.equal("CREATE of an existing mailbox -> NO", c.command("CREATE Work").status, "NO")
    R.equal("CREATE INBOX -> NO", c.command("CREATE INBOX").status, "NO")
    r = c.command('LIST "" "Work*"')
    R.equal('LIST "" "Work*" lists Work and its child', set(list_names(r)), {"Work", sub})
    r = c.command('LIST "" "Work%"')
    R.equal('LIST "" "Work%" stops at the delimiter', set(list_names(r)), {"Work"})
    r = c.command('LIST "" "%"')
    top = set(list_names(r))
    R.check('LIST "" "%" lists top-level names only',
            "Work" in top and "INBOX" in top and sub not in top, top)
    r = c.command('LIST "" "work"')
    R.equal("LIST matching is case-sensitive for names other than INBOX",
            set(list_names(r)), set())
    r = c.command('LIST "" "inbox"')
    R.equal("INBOX is case-insensitive", set(list_names(r)), {"INBOX"})
    # subscriptions
    R.equal("SUBSCRIBE Work", c.command("SUBSCRIBE Work").status, "OK")
    r = c.command('LSUB "" "*"')
    R.check("LSUB lists the subscribed Work", "Work" in list_names(r), r.untagged)
    R.equal("UNSUBSCRIBE Work", c.command("UNSUBSCRIBE Work").status, "OK")
    r = c.command('LSUB "" "*"')
    R.check("LSUB no longer lists Work", "Work" not in list_names(r), r.untagged)
    # RENAME moves the inferiors too
    r, st = status_of(c, "Work", "(UIDVALIDITY)")
    R.equal("RENAME Work Projects", c.command("RENAME Work Projects").status, "OK")
    r = c.command('LIST "" "*"')
    names = set(list_names(r))
    R.check("after RENAME, Projects and Projects%sSub exist, Work is gone" % d,
            "Projects" in names and "Projects" + d + "Sub" in names
            and "Work" not in names and sub not in names, names)
    R.equal("RENAME of a missing mailbox -> NO",
            c.command("RENAME NoSuchBox Other").status, "NO")
    c.command("CREATE Taken")
    R.equal("RENAME onto an existing mailbox -> NO",
            c.command("RENAME Projects Taken").status, "NO")
    c.command("DELETE Taken")
    R.equal("DELETE Projects%sSub" % d,
            c.command("DELETE", quote("Projects" + d + "Sub")).status, "OK")
    R.equal("DELETE Projects", c.command("DELETE Projects").status, "OK")
    R.equal("DELETE of a missing mailbox -> NO", c.command("DELETE Projects").status, "NO")
    R.equal("DELETE INBOX -> NO", c.command("DELETE INBOX").status, "NO")
    r = c.command('LIST "" "Projects*"')
    R.equal("deleted mailboxes are no longer listed", set(list_names(r)), set())
    # a re-created mailbox gets a new UIDVALIDITY or starts its UIDs anew
    c.command("CREATE Again")
    r, uid1 = append(c, "Again", simple_message("again 1"))
    _, st1 = status_of(c, "Again", "(UIDVALIDITY UIDNEXT)")
    c.command("DELETE Again")
    c.command("CREATE Again")
    _, st2 = status_of(c, "Again", "(UIDVALIDITY UIDNEXT MESSAGES)")
    R.check("a deleted and re-created mailbox is empty and its UIDs cannot be "
            "confused with the old ones (new UIDVALIDITY or UIDNEXT kept)",
            st2.get("MESSAGES") == 0 and (st2.get("UIDVALIDITY") != st1.get("UIDVALIDITY")
                                          or st2.get("UIDNEXT", 0) >= st1.get("UIDNEXT", 0)),
            (st1, st2))
    c.command("DELETE Again")
    c.logout()


def t_append_status_select():
    c = connect()
    c.command("CREATE Box1")
    _, st0 = status_of(c, "Box1")
    R.check("STATUS of an empty mailbox: MESSAGES 0 UNSEEN 0, UIDVALIDITY > 0",
            st0.get("MESSAGES") == 0 and st0.get("UNSEEN") == 0
            and st0.get("UIDVALIDITY", 0) > 0 and st0.get("UIDNEXT", 0) >= 1, st0)
    date = "14-Jul-2024 10:11:12 +0200"
    r, uid = append(c, "Box1", MAIN_MSG, flags=["\\Seen", "\\Flagged", "$Label1"], date=date)
    R.equal("APPEND with flags and date -> OK", r.status, "OK")
    R.check("APPEND answers [APPENDUID uidvalidity uid] (UIDPLUS)",
            r.code == "APPENDUID" and uid is not None and
            int(r.code_args.split()[0]) == st0.get("UIDVALIDITY"), r)
    r2, uid2 = append(c, "Box1", simple_message("second", "two\n"), plus=True)
    R.check("APPEND with a LITERAL+ literal -> OK with a higher UID",
            r2.ok and uid2 is not None and uid is not None and uid2 > uid, r2)
    r3, uid3 = append(c, "Box1", simple_message("third", "three\n"), flags=[])
    R.check("APPEND with an empty flag list -> OK", r3.ok, r3)
    r = c.command("APPEND NoSuchBox", Literal(b"Subject: x\r\n\r\nx\r\n"))
    R.check("APPEND to a missing mailbox -> NO [TRYCREATE]",
            r.status == "NO" and r.code == "TRYCREATE", r)
    _, st = status_of(c, "Box1")
    R.check("STATUS after 3 APPENDs: MESSAGES 3, UNSEEN 2, UIDNEXT > last UID",
            st.get("MESSAGES") == 3 and st.get("UNSEEN") == 2 and
            uid3 is not None and st.get("UIDNEXT", 0) > uid3, st)
    R.check("STATUS HIGHESTMODSEQ > 0 (CONDSTORE)", st.get("HIGHESTMODSEQ", 0) > 0, st)
    r, st = status_of(c, "NoSuchBox")
    R.equal("STATUS of a missing mailbox -> NO", r.status, "NO")

    r = c.command("SELECT Box1")
    R.equal("SELECT -> OK", r.status, "OK")
    R.equal("SELECT answers [READ-WRITE]", r.code, "READ-WRITE")
    R.equal("SELECT gives * 3 EXISTS", r.number("EXISTS"), 3)
    R.check("SELECT gives * n RECENT", r.number("RECENT") is not None, r.untagged)
    R.check("SELECT gives a FLAGS response", bool(r.find("FLAGS")), r.untagged)
    codes = r.codes()
    R.equal("SELECT gives [UIDVALIDITY]", int(codes.get("UIDVALIDITY", b"0")),
            st0.get("UIDVALIDITY"))
    R.check("SELECT gives [UIDNEXT]", int(codes.get("UIDNEXT", b"0")) > (uid3 or 0), codes)
    R.check("SELECT gives [PERMANENTFLAGS] with \\* (keywords can be created)",
            b"\\*" in codes.get("PERMANENTFLAGS", b""), codes)
    R.check("SELECT gives [UNSEEN 2] (first unseen message)",
            codes.get("UNSEEN") in (b"2", None) and "UNSEEN" in codes, codes)
    r = c.command("SELECT Box1 (CONDSTORE)")
    R.check("SELECT (CONDSTORE) gives [HIGHESTMODSEQ n]",
            r.ok and int(r.codes().get("HIGHESTMODSEQ", b"0")) > 0, r)
    r = c.command("EXAMINE Box1")
    R.check("EXAMINE answers OK [READ-ONLY]", r.ok and r.code == "READ-ONLY", r)
    r = c.command("STORE 1 +FLAGS (\\Deleted)")
    R.equal("STORE in an EXAMINEd mailbox -> NO (RFC 3501 6.3.2: read-only; "
            "Dovecot says OK and ignores it)", r.status, "NO")
    r, it = fetch1(c, "(FLAGS)", "1")
    R.check("STORE in an EXAMINEd mailbox changes nothing",
            "\\deleted" not in flagset(it.get("FLAGS")), it)
    r, it = fetch1(c, "(BODY[TEXT])", "2")
    r, it = fetch1(c, "(FLAGS)", "2")
    R.check("FETCH BODY[] in an EXAMINEd mailbox does not set \\Seen",
            "\\seen" not in flagset(it.get("FLAGS")), it)
    r = c.command("SELECT NoSuchBox")
    R.equal("SELECT of a missing mailbox -> NO", r.status, "NO")
    r = c.command("FETCH 1 (FLAGS)")
    R.check("after a failed SELECT no mailbox is selected (FETCH refused)",
            r.status in ("BAD", "NO"), r)
    c.logout()


def t_fetch_items():
    c = connect()
    c.command("CREATE Fetch")
    date = "14-Jul-2024 10:11:12 +0200"
    r, uid = append(c, "Fetch", MAIN_MSG, flags=["\\Flagged", "$Label1"], date=date)
    r = c.command("SELECT Fetch")

    r, it = fetch1(c, "(FLAGS UID INTERNALDATE RFC822.SIZE)")
    R.equal("FETCH FLAGS", flagset(it.get("FLAGS")), {"\\flagged", "$label1", "\\recent"}
            if "\\recent" in flagset(it.get("FLAGS")) else {"\\flagged", "$label1"})
    R.equal("FETCH UID matches APPENDUID", it.get("UID"), uid)
    R.equal("FETCH RFC822.SIZE is the exact octet count", it.get("RFC822.SIZE"), len(MAIN_MSG))
    idate = it.get("INTERNALDATE")
    want = email.utils.parsedate_to_datetime("Sun, 14 Jul 2024 10:11:12 +0200")
    got = None
    if idate is not None:
        try:
            got = datetime.datetime.strptime(bytes(idate).decode(), "%d-%b-%Y %H:%M:%S %z")
        except ValueError:
            got = None
    R.check("INTERNALDATE is the APPEND date (same instant)", got == want, idate)

    r, it = fetch1(c, "(RFC822.HEADER)")
    R.equal("RFC822.HEADER is the header with its blank line", it.get("RFC822.HEADER"), MAIN_HEADER)
    r, it = fetch1(c, "(RFC822.TEXT)")
    R.equal("RFC822.TEXT is the body", it.get("RFC822.TEXT"), MAIN_BODY)
    r, it = fetch1(c, "(FLAGS)")
    R.check("RFC822.TEXT sets \\Seen", "\\seen" in flagset(it.get("FLAGS")), it)
    c.command("STORE 1 -FLAGS.SILENT (\\Seen)")
    r, it = fetch1(c, "(RFC822)")
    R.equal("RFC822 is the whole message", it.get("RFC822"), MAIN_MSG)
    c.command("STORE 1 -FLAGS.SILENT (\\Seen)")

    r, it = fetch1(c, "(ENVELOPE)")
    env = it.get("ENVELOPE")
    ok = isinstance(env, list) and len(env) == 10
    R.check("ENVELOPE has 10 fields", ok, env)
    if ok:
        R.equal("ENVELOPE date", bytes(env[0]), b"Mon, 15 Jul 2024 09:30:00 +0000")
        R.equal("ENVELOPE subject", bytes(env[1]), b"Quarterly report")
        alice = [(b"Alice Example", None, b"alice", b"example.org")]
        R.equal("ENVELOPE from", addr_list(env[2]), alice)
        R.equal("ENVELOPE sender defaults to from", addr_list(env[3]), alice)
        R.equal("ENVELOPE reply-to defaults to from", addr_list(env[4]), alice)
        R.equal("ENVELOPE to (two addresses, one without a name)", addr_list(env[5]),
                [(b"Bob", None, b"bob", b"example.net"), (None, None, b"carol", b"example.com")])
        R.equal("ENVELOPE cc", addr_list(env[6]), [(b"Dave", None, b"dave", b"example.com")])
        R.equal("ENVELOPE bcc", addr_list(env[7]), [(None, None, b"eve", b"example.com")])
        R.equal("ENVELOPE in-reply-to", bytes(env[8]), b"<prev@example.org>")
        R.equal("ENVELOPE message-id", bytes(env[9]), b"<report-1@example.org>")

    exp = expected_structure()
    r, it = fetch1(c, "(BODYSTRUCTURE)")
    bs = it.get("BODYSTRUCTURE")
    got = None
    try:
        got = norm_body(bs, True)
    except Exception as e:  # noqa: BLE001
        R.check("BODYSTRUCTURE parses", False, "%s: %r" % (e, bs))
    if got is not None:
        R.equal("BODYSTRUCTURE: nesting, types, parameters, encodings, sizes, lines",
                strip_ext(got), exp)
        R.check("BODYSTRUCTURE multipart extension data has the boundary parameter",
                got.get("ext", {}).get("params") == {b"boundary": b"outer-b"}, got.get("ext"))
        pdf = got["parts"][1] if len(got.get("parts", [])) > 1 else {}
        R.equal("BODYSTRUCTURE attachment disposition (extension data)",
                pdf.get("ext", {}).get("disp"), (b"attachment", {b"filename": b"report.pdf"}))
    r, it = fetch1(c, "(BODY)")
    b = it.get("BODY")
    try:
        gotb = norm_body(b, False)
        R.equal("BODY (non-extensible) has the same structure", strip_ext(gotb), exp)
        R.check("BODY carries no extension data", "ext" not in gotb, gotb.get("ext"))
    except Exception as e:  # noqa: BLE001
        R.check("BODY parses", False, "%s: %r" % (e, b))

    sections = [
        ("BODY.PEEK[]", "BODY[]", MAIN_MSG),
        ("BODY.PEEK[HEADER]", "BODY[HEADER]", MAIN_HEADER),
        ("BODY.PEEK[TEXT]", "BODY[TEXT]", MAIN_BODY),
        ("BODY.PEEK[HEADER.FIELDS (subject FROM)]", "BODY[HEADER.FIELDS (SUBJECT FROM)]",
         crlf('From: "Alice Example" <alice@example.org>\nSubject: Quarterly report\n\n')),
        ("BODY.PEEK[HEADER.FIELDS.NOT (Return-Path Date From To Cc Bcc Message-ID "
         "In-Reply-To MIME-Version Content-Type)]",
         "BODY[HEADER.FIELDS.NOT (RETURN-PATH DATE FROM TO CC BCC MESSAGE-ID IN-REPLY-TO "
         "MIME-VERSION CONTENT-TYPE)]", crlf("Subject: Quarterly report\n\n")),
        ("BODY.PEEK[1]", "BODY[1]", ALT_BODY),
        ("BODY.PEEK[1.MIME]", "BODY[1.MIME]", ALT_HDR + b"\r\n"),
        ("BODY.PEEK[1.1]", "BODY[1.1]", TEXT_PART_BODY),
        ("BODY.PEEK[1.1.MIME]", "BODY[1.1.MIME]", TEXT_PART_HDR + b"\r\n"),
        ("BODY.PEEK[1.2]", "BODY[1.2]", HTML_PART_BODY),
        ("BODY.PEEK[2]", "BODY[2]", PDF_PART_BODY),
        ("BODY.PEEK[2.MIME]", "BODY[2.MIME]", PDF_PART_HDR + b"\r\n"),
        ("BODY.PEEK[3]", "BODY[3]", INNER_MSG),
        ("BODY.PEEK[3.HEADER]", "BODY[3.HEADER]", INNER_MSG[:INNER_MSG.index(b"\r\n\r\n") + 4]),
        ("BODY.PEEK[3.TEXT]", "BODY[3.TEXT]", INNER_BODY),
        ("BODY.PEEK[3.1]", "BODY[3.1]", INNER_BODY),
        ("BODY.PEEK[]<0.20>", "BODY[]<0>", MAIN_MSG[:20]),
        ("BODY.PEEK[TEXT]<10.30>", "BODY[TEXT]<10>", MAIN_BODY[10:40]),
        ("BODY.PEEK[1.1]<2.5>", "BODY[1.1]<2>", TEXT_PART_BODY[2:7]),
        ("BODY.PEEK[]<%d.100>" % (len(MAIN_MSG) - 10), "BODY[]<%d>" % (len(MAIN_MSG) - 10),
         MAIN_MSG[-10:]),
        ("BODY.PEEK[]<100000.10>", "BODY[]<100000>", b""),
        ("BODY.PEEK[4]", "BODY[4]", b""),
    ]
    for ask, key, want in sections:
        r, it = fetch1(c, "(%s)" % ask)
        val = it.get(key)
        if val is None:  # servers may spell the section differently; take any BODY[...] item
            bodies = [v for k, v in it.items() if k.startswith("BODY[")]
            val = bodies[0] if len(bodies) == 1 else None
            R.check("FETCH %s answers with item %s" % (ask, key), False, list(it))
        R.equal("FETCH %s content" % ask, None if val is None else bytes(val), want)
    r, it = fetch1(c, "(FLAGS)")
    R.check("BODY.PEEK does not set \\Seen", "\\seen" not in flagset(it.get("FLAGS")), it)
    r, it = fetch1(c, "(BODY[1.2])")
    R.check("BODY[section] (not PEEK) sets \\Seen and the FETCH says so",
            "\\seen" in flagset(it.get("FLAGS")), r.untagged)
    r, it = fetch1(c, "(FLAGS)")
    R.check("\\Seen stays set after BODY[]", "\\seen" in flagset(it.get("FLAGS")), it)

    r, it = fetch1(c, "(MODSEQ)")
    ms = it.get("MODSEQ")
    R.check("FETCH MODSEQ gives (n) with n > 0",
            isinstance(ms, list) and len(ms) == 1 and int(ms[0]) > 0, ms)
    # sequence sets and '*'
    append(c, "Fetch", simple_message("second"))
    append(c, "Fetch", simple_message("third"))
    c.command("NOOP")
    r = c.command("FETCH 1:* (UID)")
    R.equal("FETCH 1:* covers every message", sorted(s for s, _ in r.fetches()), [1, 2, 3])
    r = c.command("FETCH *:2 (UID)")
    R.equal("FETCH *:2 (reversed range)", sorted(s for s, _ in r.fetches()), [2, 3])
    r = c.command("FETCH 1,3 (UID)")
    R.equal("FETCH 1,3", sorted(s for s, _ in r.fetches()), [1, 3])
    r = c.command("UID FETCH %d:* (FLAGS)" % (uid + 1))
    got = sorted(it["UID"] for _, it in r.fetches() if "UID" in it)
    R.check("UID FETCH n:* returns the UID item for the 2 newer messages",
            len(got) == 2 and all(u > uid for u in got), r.untagged)
    r = c.command("UID FETCH 4000000:* (FLAGS)")
    R.check("UID FETCH n:* with n > UIDNEXT returns the last message (RFC 3501 *)",
            r.ok and len(r.fetches()) == 1, r.untagged)
    r = c.command("UID FETCH 3999999 (FLAGS)")
    R.check("UID FETCH of a missing UID is OK with no data", r.ok and not r.fetches(), r)
    r = c.command("FETCH 1 FAST")
    f = r.fetches()
    R.check("FETCH FAST macro gives FLAGS INTERNALDATE RFC822.SIZE",
            f and {"FLAGS", "INTERNALDATE", "RFC822.SIZE"} <= set(f[0][1]), f)
    r = c.command("FETCH 1 (FOO)")
    R.equal("FETCH of an unknown item -> BAD", r.status, "BAD")
    c.logout()


def t_store_condstore():
    c = connect()
    c.command("CREATE Store")
    for i in range(4):
        append(c, "Store", simple_message("store %d" % i))
    c.command("SELECT Store")
    r = c.command("STORE 1 +FLAGS (\\Answered $Work)")
    f = dict(r.fetches())
    R.check("STORE +FLAGS answers with the new FLAGS",
            r.ok and {"\\answered", "$work"} <= flagset(f.get(1, {}).get("FLAGS")), r.untagged)
    r = c.command("STORE 1 -FLAGS ($Work)")
    f = dict(r.fetches())
    R.check("STORE -FLAGS removes the keyword",
            r.ok and "$work" not in flagset(f.get(1, {}).get("FLAGS"))
            and "\\answered" in flagset(f.get(1, {}).get("FLAGS")), r.untagged)
    r = c.command("STORE 2 FLAGS (\\Draft \\Flagged)")
    f = dict(r.fetches())
    R.check("STORE FLAGS replaces the flags",
            r.ok and flagset(f.get(2, {}).get("FLAGS")) - {"\\recent"} == {"\\draft", "\\flagged"},
            r.untagged)
    r = c.command("STORE 3 +FLAGS.SILENT (\\Seen)")
    R.check("STORE FLAGS.SILENT sends no FETCH for the message",
            r.ok and not r.fetches(), r.untagged)
    r, it = fetch1(c, "(FLAGS)", "3")
    R.check("...but the flag is set", "\\seen" in flagset(it.get("FLAGS")), it)
    r = c.command("STORE 1:2 +FLAGS (\\Seen")
    R.equal("STORE with an unbalanced flag list -> BAD", r.status, "BAD")

    r = c.command("ENABLE CONDSTORE")
    en = r.find("ENABLED")
    R.check("ENABLE CONDSTORE -> * ENABLED CONDSTORE",
            r.ok and en and b"CONDSTORE" in [bytes(x).upper() for x in en[0][1:]], r)
    r, it = fetch1(c, "(MODSEQ)", "4")
    m4 = int(it["MODSEQ"][0]) if it.get("MODSEQ") else 0
    r = c.command("STORE 4 +FLAGS (\\Flagged)")
    f = dict(r.fetches())
    it4 = f.get(4, {})
    new4 = int(it4["MODSEQ"][0]) if it4.get("MODSEQ") else 0
    R.check("with CONDSTORE enabled, STORE's FETCH carries a higher MODSEQ",
            new4 > m4, r.untagged)
    r = c.command("STORE 4 (UNCHANGEDSINCE %d) +FLAGS (\\Answered)" % m4)
    R.check("STORE UNCHANGEDSINCE older modseq -> OK [MODIFIED 4], flags unchanged",
            r.ok and r.code == "MODIFIED" and expand_set(r.code_args) == [4], r)
    r, it = fetch1(c, "(FLAGS)", "4")
    R.check("...\\Answered was not set", "\\answered" not in flagset(it.get("FLAGS")), it)
    r = c.command("STORE 4 (UNCHANGEDSINCE %d) +FLAGS (\\Answered)" % new4)
    f = dict(r.fetches())
    R.check("STORE UNCHANGEDSINCE current modseq -> applied, no MODIFIED",
            r.ok and r.code != "MODIFIED" and "\\answered" in flagset(f.get(4, {}).get("FLAGS")),
            r)
    r = c.command("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % new4)
    R.check("FETCH (CHANGEDSINCE m) returns only messages changed after m",
            r.ok and [s for s, _ in r.fetches()] == [4], r.untagged)
    _, st = status_of(c, "Store")
    r = c.command("FETCH 1:* (MODSEQ)")
    mx = max(int(it["MODSEQ"][0]) for _, it in r.fetches()) if r.fetches() else -1
    R.equal("HIGHESTMODSEQ equals the largest message MODSEQ", st.get("HIGHESTMODSEQ"), mx)
    c.logout()


def t_copy_move_expunge():
    c = connect()
    c.command("CREATE Src")
    c.command("CREATE Dst")
    uids = []
    for i in range(6):
        _, u = append(c, "Src", simple_message("copy %d" % i, "body %d\n" % i),
                      flags=["\\Flagged"] if i == 0 else [])
        uids.append(u)
    _, dst0 = status_of(c, "Dst")
    c.command("SELECT Src")
    r = c.command("COPY 1:2 Dst")
    ok = r.ok and r.code == "COPYUID"
    R.check("COPY -> OK [COPYUID uidvalidity src-uids dst-uids]", ok, r)
    if ok:
        a = r.code_args.split()
        R.equal("COPYUID uidvalidity is the destination's", int(a[0]), dst0.get("UIDVALIDITY"))
        R.equal("COPYUID source set", expand_set(a[1]), uids[:2])
        R.equal("COPYUID destination set has 2 UIDs >= UIDNEXT",
                [u >= dst0.get("UIDNEXT", 0) for u in expand_set(a[2])], [True, True])
    r = c.command("COPY 1 NoSuchBox")
    R.check("COPY to a missing mailbox -> NO [TRYCREATE]",
            r.status == "NO" and r.code == "TRYCREATE", r)
    r = c.command("UID COPY %d Dst" % uids[2])
    R.check("UID COPY -> OK [COPYUID]", r.ok and r.code == "COPYUID", r)
    c.command("EXAMINE Dst")
    r = c.command("FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    f = r.fetches()
    R.equal("Dst holds the 3 copies", len(f), 3)
    if f:
        R.check("COPY keeps the flags", "\\flagged" in flagset(f[0][1].get("FLAGS")), f[0])
    c.command("SELECT Src")
    r = c.command("MOVE 2 Dst")
    R.check("MOVE -> untagged OK [COPYUID], * 2 EXPUNGE, tagged OK",
            r.ok and "COPYUID" in r.codes() and r.expunges() == [2], r.untagged)
    r = c.command("UID MOVE %d Dst" % uids[5])
    R.check("UID MOVE -> OK with an EXPUNGE of the last message",
            r.ok and r.expunges() == [5], r.untagged)
    now = uids_in(c)
    R.equal("Src after MOVE", now, [uids[0], uids[2], uids[3], uids[4]])
    _, st = status_of(c, "Dst")
    R.equal("Dst after MOVE has 5 messages", st.get("MESSAGES"), 5)

    # EXPUNGE: delete 2nd and 4th of [u0 u2 u3 u4]
    c.command("STORE 2,4 +FLAGS.SILENT (\\Deleted)")
    r = c.command("EXPUNGE")
    seqs = r.expunges()
    model = list(now)
    for s in seqs:
        if 1 <= s <= len(model):
            del model[s - 1]
    R.check("EXPUNGE sends one EXPUNGE per deleted message, with sequence numbers "
            "that leave exactly the undeleted ones", r.ok and len(seqs) == 2
            and model == [uids[0], uids[3]], (seqs, r.untagged))
    R.equal("UIDs after EXPUNGE", uids_in(c), [uids[0], uids[3]])
    # UID EXPUNGE only expunges the listed UIDs
    c.command("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    r = c.command("UID EXPUNGE %d" % uids[3])
    R.check("UID EXPUNGE uid expunges only that \\Deleted message",
            r.ok and r.expunges() == [2], r.untagged)
    R.equal("the other \\Deleted message is still there", uids_in(c), [uids[0]])
    r = c.command("CLOSE")
    R.check("CLOSE expunges silently", r.ok and not r.expunges(), r.untagged)
    _, st = status_of(c, "Src")
    R.equal("Src is empty after CLOSE", st.get("MESSAGES"), 0)
    r = c.command("FETCH 1 (FLAGS)")
    R.check("after CLOSE no mailbox is selected", r.status in ("BAD", "NO"), r)
    c.logout()


SEARCH_MSGS = [
    # subject, from, to, cc, date header, internal date, flags, body, extra headers
    ("Quarterly report", "Alice <alice@example.org>", "bob@example.net", "dave@example.com",
     "Mon, 15 Jan 2024 12:00:00 +0000", "15-Jan-2024 12:00:00 +0000", ["\\Seen"],
     "numbers attached\n", ""),
    ("Lunch on friday", "Bob <bob@example.net>", "alice@example.org", "",
     "Thu, 01 Feb 2024 12:00:00 +0000", "01-Feb-2024 12:00:00 +0000", ["\\Flagged", "$Todo"],
     "pizza or sushi?\n", "X-Priority: 1\n"),
    ("Re: Quarterly report", "Carol <carol@example.com>", "alice@example.org",
     "bob@example.net", "Fri, 01 Mar 2024 12:00:00 +0000", "01-Mar-2024 12:00:00 +0000",
     ["\\Answered", "\\Seen"], "the NUMBERS look good\n" + "padding line\n" * 80, ""),
    ("=?UTF-8?Q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=", "Dieter <dieter@example.de>",
     "alice@example.org", "", "Mon, 01 Apr 2024 12:00:00 +0000", "01-Apr-2024 12:00:00 +0000",
     ["\\Draft"], "Sch\u00f6ne Gr\u00fc\u00dfe aus K\u00f6ln\n",
     "MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\n"
     "Content-Transfer-Encoding: 8bit\n"),
    ("Deleted thing", "Eve <eve@example.com>", "alice@example.org", "",
     "Wed, 01 May 2024 12:00:00 +0000", "01-May-2024 12:00:00 +0000", ["\\Deleted"],
     "gone soon\n", "Bcc: frank@example.com\n"),
]


def t_search():
    c = connect()
    c.command("CREATE Search")
    uids, sizes = [], []
    for subj, frm, to, cc, date, idate, flags, body, extra in SEARCH_MSGS:
        hdr = "From: %s\nTo: %s\n%sSubject: %s\nDate: %s\n%s" % (
            frm, to, ("Cc: %s\n" % cc) if cc else "", subj, date, extra)
        msg = crlf(hdr + "\n" + body)
        sizes.append(len(msg))
        _, u = append(c, "Search", msg, flags=flags, date=idate)
        uids.append(u)
    r = c.command("SELECT Search (CONDSTORE)")
    R.equal("5 messages to search", r.number("EXISTS"), 5)
    size_sorted = sorted(sizes)

    def s(criteria, want, uid=False, charset=None, label=None):
        parts = ["UID SEARCH" if uid else "SEARCH"]
        if charset:
            parts += ["CHARSET", charset]
        if isinstance(criteria, tuple):
            parts += list(criteria)
        else:
            parts.append(criteria)
        r = c.command(*parts)
        got, _ = r.search()
        want_l = [uids[i - 1] for i in want] if uid else want
        R.check("SEARCH %s" % (label or " ".join(str(p) for p in parts[1:])),
                r.ok and sorted(got) == sorted(want_l), (r.status, got, want_l, r.line))
        return r

    s("ALL", [1, 2, 3, 4, 5])
    s("2:4", [2, 3, 4])
    s("3:*", [3, 4, 5])
    s("UID %d:%d" % (uids[1], uids[2]), [2, 3])
    s("UID %d:*" % uids[3], [4, 5], uid=True)
    s("ANSWERED", [3]); s("UNANSWERED", [1, 2, 4, 5])
    s("DELETED", [5]); s("UNDELETED", [1, 2, 3, 4])
    s("DRAFT", [4]); s("UNDRAFT", [1, 2, 3, 5])
    s("FLAGGED", [2]); s("UNFLAGGED", [1, 3, 4, 5])
    s("SEEN", [1, 3]); s("UNSEEN", [2, 4, 5])
    s("KEYWORD $Todo", [2]); s("UNKEYWORD $Todo", [1, 3, 4, 5])
    s("FROM alice", [1]); s("FROM EXAMPLE.COM", [3, 5])
    s("TO bob@example.net", [1]); s("CC bob", [3]); s("BCC frank", [5])
    s("SUBJECT quarterly", [1, 3], label="SUBJECT is a case-insensitive substring match")
    s('SUBJECT "re: quarterly"', [3])
    s("HEADER X-Priority 1", [2])
    s('HEADER X-Priority ""', [2], label='HEADER name "" matches messages having the field')
    s("BODY numbers", [1, 3], label="BODY case-insensitive in the body only")
    s("BODY Quarterly", [], label="BODY does not look at the header")
    s("TEXT Quarterly", [1, 3], label="TEXT matches header and body")
    s("TEXT pizza", [2])
    s("BEFORE 1-Feb-2024", [1]); s("ON 1-Mar-2024", [3]); s("SINCE 1-Apr-2024", [4, 5])
    s("SENTBEFORE 1-Feb-2024", [1]); s("SENTON 1-Feb-2024", [2])
    s("SENTSINCE 1-Mar-2024", [3, 4, 5])
    s("LARGER %d" % size_sorted[-2], [sizes.index(size_sorted[-1]) + 1])
    s("SMALLER %d" % (size_sorted[0] + 1), [sizes.index(size_sorted[0]) + 1])
    s("NOT SEEN", [2, 4, 5])
    s("OR FLAGGED DRAFT", [2, 4])
    s("OR FROM bob (ANSWERED SEEN)", [2, 3], label="OR with a parenthesised AND list")
    s("SEEN NOT ANSWERED", [1], label="implicit AND of keys")
    s("CHARSET US-ASCII SUBJECT report", [1, 3], label="CHARSET US-ASCII")
    s(("BODY", Literal("K\u00f6ln".encode())), [4], charset="UTF-8",
      label="CHARSET UTF-8 BODY with a literal matches 8-bit UTF-8 text")
    s(("SUBJECT", Literal("Gr\u00fc\u00dfe".encode())), [4], charset="UTF-8",
      label="CHARSET UTF-8 SUBJECT matches a MIME encoded-word (what clients expect)")
    s(("BODY", Literal("K\u00d6LN".encode("iso-8859-1"))), [4], charset="ISO-8859-1",
      label="CHARSET ISO-8859-1 BODY with a Latin-1 literal finds UTF-8 text")
    s(("SUBJECT", Literal("gr\u00fc\u00dfe".encode("iso-8859-1"))), [4], charset="ISO-8859-1",
      label="CHARSET ISO-8859-1 SUBJECT finds a UTF-8 encoded word")
    s(("TEXT", Literal("\u0413\u0440\u044e\u0441\u0441".encode("koi8-r"))), [], charset="KOI8-R",
      label="CHARSET KOI8-R is accepted (no message holds the text)")
    s(("TEXT", Literal("GR\u00dc\u00dfE".encode("windows-1252"))), [4], charset='"windows-1252"',
      label="CHARSET as a quoted string (windows-1252) with TEXT")
    r = c.command("SEARCH CHARSET X-NO-SUCH-CHARSET BODY x")
    R.check("SEARCH with an unknown charset -> NO [BADCHARSET]",
            r.status == "NO" and r.code == "BADCHARSET", r)
    r = c.command("SEARCH CHARSET x-unknown ALL")
    R.check("SEARCH CHARSET x-unknown -> NO [BADCHARSET]",
            r.status == "NO" and r.code == "BADCHARSET", r)
    r = c.command("SEARCH FROBNICATE")
    R.equal("SEARCH with an unknown key -> BAD", r.status, "BAD")
    r = c.command("SEARCH BEFORE 31-Foo-2024")
    R.equal("SEARCH with a malformed date -> BAD", r.status, "BAD")
    # MODSEQ
    c.command("STORE 2 +FLAGS.SILENT (\\Seen)")
    r = c.command("FETCH 2 (MODSEQ)")
    m2 = int(r.fetches()[0][1]["MODSEQ"][0])
    r = c.command("SEARCH MODSEQ %d" % m2)
    nums, hm = r.search()
    R.check("SEARCH MODSEQ m finds messages changed at or after m, with (MODSEQ n)",
            r.ok and nums == [2] and hm == m2, r.untagged)
    r = c.command("SEARCH FLAGGED NOT FLAGGED")
    R.check("SEARCH with no match: '* SEARCH' with no numbers",
            r.ok and r.search()[0] == [] and len(r.find("SEARCH")) == 1, r.untagged)
    c.logout()


def t_enable_id():
    c = connect()
    r = c.command("ENABLE CONDSTORE QRESYNC")
    en = r.find("ENABLED")
    got = set(bytes(x).upper() for x in en[0][1:]) if en else set()
    R.check("ENABLE CONDSTORE QRESYNC -> * ENABLED with both", r.ok and
            got == {b"CONDSTORE", b"QRESYNC"}, r)
    r = c.command("ENABLE X-NOSUCH")
    en = r.find("ENABLED")
    R.check("ENABLE of an unknown extension -> OK, nothing listed",
            r.ok and all(len(e) == 1 for e in en), r)
    r = c.command('ID ("name" "starling-e2e" "version" "1")')
    R.check("ID -> * ID (...) or * ID NIL, then OK", r.ok and bool(r.find("ID")), r)
    r = c.command("ID NIL")
    R.check("ID NIL -> OK", r.ok and bool(r.find("ID")), r)
    r = c.command("NOOP")
    R.equal("NOOP -> OK", r.status, "OK")
    r = c.command("CHECK")
    R.check("CHECK without a selected mailbox is refused", r.status in ("BAD", "NO"), r)
    c.command("SELECT INBOX")
    R.equal("CHECK -> OK", c.command("CHECK").status, "OK")
    c.logout()


def t_two_sessions_and_idle():
    a, b = connect(), connect()
    a.command("CREATE Shared")
    append(a, "Shared", simple_message("one"))
    ra = a.command("SELECT Shared")
    rb = b.command("SELECT Shared")
    R.check("both sessions see 1 message", ra.number("EXISTS") == 1 and rb.number("EXISTS") == 1,
            (ra.untagged, rb.untagged))
    r, _ = append(b, "Shared", simple_message("two"))
    r = a.command("NOOP")
    R.equal("A sees B's APPEND as * 2 EXISTS on NOOP", r.number("EXISTS"), 2)
    b.command("NOOP")
    b.command("STORE 1 +FLAGS (\\Flagged)")
    r = a.command("NOOP")
    f = dict(r.fetches())
    R.check("A sees B's STORE as * 1 FETCH (FLAGS (... \\Flagged))",
            "\\flagged" in flagset(f.get(1, {}).get("FLAGS")), r.untagged)
    b.command("STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.command("EXPUNGE")
    r = a.command("NOOP")
    R.equal("A sees B's EXPUNGE as * 1 EXPUNGE", r.expunges(), [1])
    r = a.command("FETCH 1:* (UID)")
    R.equal("A has 1 message left", len(r.fetches()), 1)

    # IDLE wake-ups
    tag = a.next_tag()
    a.send("%s IDLE\r\n" % tag)
    first = a.read_response()
    R.check("IDLE answers with a continuation", first.startswith(b"+"), first)
    t0 = time.monotonic()
    append(b, "Shared", simple_message("three"))
    got = a.read_untagged_until(lambda g: any(x.endswith(b" EXISTS") for x in g), 10)
    dt = time.monotonic() - t0
    R.check("IDLE wakes with * 2 EXISTS when another session appends (%.2fs)" % dt,
            b"* 2 EXISTS" in got, got)
    b.command("NOOP")
    b.command("STORE 2 +FLAGS (\\Answered)")
    got = a.read_untagged_until(lambda g: any(b"FETCH" in x for x in g), 10)
    R.check("IDLE shows another session's STORE as FETCH FLAGS",
            any(x.startswith(b"* 2 FETCH") and b"\\Answered" in x for x in got), got)
    b.command("STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.command("EXPUNGE")
    got = a.read_untagged_until(lambda g: any(b"EXPUNGE" in x for x in g), 10)
    R.check("IDLE shows another session's EXPUNGE as * 1 EXPUNGE", b"* 1 EXPUNGE" in got, got)
    r, _ = append(b, "INBOX", simple_message("elsewhere"))
    got = a.read_untagged_until(lambda g: bool(g), 1.5)
    R.check("IDLE stays quiet for changes in other mailboxes",
            not any(b"EXISTS" in x for x in got), got)
    a.send("DONE\r\n")
    r = a.wait_tagged(tag)
    R.equal("DONE ends IDLE with a tagged OK", r.status, "OK")
    R.equal("the session works after IDLE", a.command("NOOP").status, "OK")
    a.logout()
    b.logout()


def t_qresync():
    c = connect()
    c.command("ENABLE QRESYNC")
    c.command("CREATE Cache")
    uids = []
    for i in range(8):
        _, u = append(c, "Cache", simple_message("cache %d" % i))
        uids.append(u)
    r = c.command("SELECT Cache")
    codes = r.codes()
    uidvalidity = int(codes.get("UIDVALIDITY", b"0"))
    hms = int(codes.get("HIGHESTMODSEQ", b"0"))
    R.check("SELECT after ENABLE QRESYNC gives [HIGHESTMODSEQ]", hms > 0, codes)
    c.logout()
    # cache is (uidvalidity, hms, uids); another client changes things
    o = connect()
    o.command("ENABLE QRESYNC")
    o.command("SELECT Cache")
    o.command("UID STORE %d,%d +FLAGS.SILENT (\\Deleted)" % (uids[1], uids[4]))
    r = o.command("EXPUNGE")
    R.check("with QRESYNC enabled, EXPUNGE reports VANISHED uids, not EXPUNGE",
            r.ok and not r.expunges() and sorted(sum((v for e, v in r.vanished()), []))
            == [uids[1], uids[4]], r.untagged)
    r = o.command("UID STORE %d +FLAGS (\\Flagged)" % uids[2])
    f = r.fetches()
    R.check("with QRESYNC enabled, STORE's FETCH carries UID and MODSEQ",
            f and "UID" in f[0][1] and "MODSEQ" in f[0][1], r.untagged)
    o.command("UID STORE %d +FLAGS.SILENT ($Seen-elsewhere)" % uids[6])
    _, new = append(o, "Cache", simple_message("cache new"))
    o.logout()

    c = connect()
    r = c.command("ENABLE QRESYNC")
    r = c.command("SELECT Cache (QRESYNC (%d %d %d:%d))" % (uidvalidity, hms, uids[0], uids[-1]))
    R.equal("SELECT (QRESYNC ...) -> OK", r.status, "OK")
    van = r.vanished()
    vset = set(sum((v for e, v in van), []))
    R.check("QRESYNC: * VANISHED (EARLIER) lists the expunged UIDs",
            van and all(e for e, _ in van) and {uids[1], uids[4]} <= vset
            and vset <= set(uids) - {uids[0], uids[2], uids[3], uids[5], uids[6], uids[7]},
            r.untagged)
    f = {it.get("UID"): it for _, it in r.fetches()}
    R.check("QRESYNC: changed messages come as FETCH (UID FLAGS MODSEQ)",
            uids[2] in f and uids[6] in f and "\\flagged" in flagset(f[uids[2]].get("FLAGS"))
            and "MODSEQ" in f[uids[2]], r.untagged)
    R.check("QRESYNC: the new message is reported (FETCH or EXISTS)",
            new in f or r.number("EXISTS") == 7, r.untagged)
    R.check("QRESYNC: unchanged messages are not sent",
            not (set(f) & {uids[0], uids[3], uids[5], uids[7]}), sorted(f))
    R.equal("QRESYNC: EXISTS is 7", r.number("EXISTS"), 7)
    # UID FETCH ... (CHANGEDSINCE m VANISHED)
    r = c.command("UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % hms)
    van = set(sum((v for e, v in r.vanished()), []))
    f = {it.get("UID") for _, it in r.fetches()}
    R.check("UID FETCH (CHANGEDSINCE m VANISHED) gives VANISHED (EARLIER) and the changes",
            r.ok and {uids[1], uids[4]} <= van and {uids[2], uids[6], new} <= f
            and not (f & {uids[0], uids[3]}), r.untagged)
    r = c.command("SELECT Cache (QRESYNC (%d %d))" % (uidvalidity + 1, hms))
    R.check("QRESYNC with a wrong UIDVALIDITY: OK, no VANISHED (a full resync)",
            r.ok and not r.vanished(), r.untagged)
    c.logout()


def t_concurrency(nclients=50, per_client=4):
    c = connect()
    c.command("CREATE Busy")
    c.logout()
    errors = []
    results = {}

    def worker(i):
        try:
            cl = connect(timeout=60)
            mine = []
            for j in range(per_client):
                mid = "<c%d-m%d@e2e>" % (i, j)
                body = ("client %d message %d\n" % (i, j)) + ("x" * (i * 13 % 200) + "\n") * 5
                msg = crlf("From: c%d@example.org\nSubject: conc %d %d\nMessage-ID: %s\n\n%s"
                           % (i, i, j, mid, body))
                r, uid = append(cl, "Busy", msg)
                if not r.ok or uid is None:
                    errors.append("client %d append %d: %r" % (i, j, r))
                    continue
                mine.append((uid, msg))
            cl.command("EXAMINE Busy")
            for uid, msg in mine:
                r = cl.command("UID FETCH %d (BODY.PEEK[])" % uid)
                f = r.fetches()
                if not f or bytes(f[0][1].get("BODY[]", b"")) != msg:
                    errors.append("client %d: UID %d has the wrong text" % (i, uid))
            results[i] = mine
            cl.logout()
        except Exception as e:  # noqa: BLE001
            errors.append("client %d: %s: %s" % (i, type(e).__name__, e))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(nclients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    dt = time.monotonic() - t0
    R.check("%d clients x %d APPEND+FETCH finish without errors (%.1fs)"
            % (nclients, per_client, dt), not errors and
            not any(t.is_alive() for t in threads), errors[:10])
    allu = [u for m in results.values() for u, _ in m]
    R.equal("every APPEND got a distinct UID", len(set(allu)), nclients * per_client)
    c = connect()
    r = c.command("EXAMINE Busy")
    R.equal("the mailbox holds exactly %d messages" % (nclients * per_client),
            r.number("EXISTS"), nclients * per_client)
    r = c.command("FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    ids = []
    seq_uids = []
    for s, it in sorted(r.fetches()):
        seq_uids.append(it.get("UID"))
        h = bytes(it.get("BODY[HEADER.FIELDS (MESSAGE-ID)]", b""))
        ids.append(h.strip())
    want = sorted(("Message-ID: <c%d-m%d@e2e>" % (i, j)).encode()
                  for i in range(nclients) for j in range(per_client))
    R.equal("every message arrived exactly once", sorted(ids), want)
    R.check("UIDs increase with sequence numbers", seq_uids == sorted(seq_uids)
            and len(set(seq_uids)) == len(seq_uids), seq_uids[:20])
    c.logout()


def t_malformed():
    c = connect()
    c.command("SELECT INBOX")
    cases = [
        ("a1 FROBNICATE", "an unknown command"),
        ("a2 FETCH", "FETCH without arguments"),
        ("a3 FETCH 1 (FLAGS", "an unbalanced parenthesis"),
        ("a4 FETCH 0 (FLAGS)", "sequence number 0"),
        ("a5 FETCH x:y (FLAGS)", "a non-numeric sequence set"),
        ("a6 SELECT", "SELECT without a mailbox"),
        ("a7 STORE 1 +FLAGS", "STORE without flags"),
        ("a8 LOGIN a b", "LOGIN when authenticated"),
        ('a9 LIST "unterminated', "an unterminated quoted string"),
        ("a10 FETCH 1 " + "(" * 200 + ")" * 200, "deep nesting"),
        ("a11 SEARCH " + "NOT " * 5000 + "ALL", "a very deep SEARCH"),
        ("a12 UID FROB 1", "an unknown UID command"),
        ("a13 FETCH 1 BODY[1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17.18.19.20.21]",
         "a silly section"),
        ("a14 FETCH 1 BODY[]<5.0>", "a zero-length partial"),
        ("a15 FETCH 1 BODY[]<99999999999999999999.1>", "an overflowing partial"),
        ("a16 APPEND INBOX {99999999999999999999}", "an overflowing literal size"),
    ]
    for line, what in cases:
        tag = line.split()[0]
        c.send(line + "\r\n")
        r = c.wait_tagged(tag)
        if tag in ("a14",):
            R.check("malformed: %s -> OK or BAD" % what, r.status in ("OK", "BAD"), r)
        elif tag in ("a8",):
            R.check("malformed: %s -> BAD or NO" % what, r.status in ("BAD", "NO"), r)
        elif tag in ("a10", "a11", "a13", "a15", "a16"):
            R.check("malformed: %s -> BAD/NO or disconnect, no crash" % what,
                    r.status in ("BAD", "NO", "CLOSED"), r)
        else:
            R.equal("malformed: %s -> BAD" % what, r.status, "BAD")
        if c.closed:
            c = connect()
            c.command("SELECT INBOX")
    c.send(b"a20 NOOP\x00junk\r\n")
    r = c.wait_tagged("a20")
    R.check("malformed: a NUL byte -> BAD or disconnect", r.status in ("BAD", "CLOSED"), r)
    if c.closed:
        c = connect()
    c.send(b"\r\n")
    c.send(b"a21 NOOP\r\n")
    r = c.wait_tagged("a21")
    R.check("an empty line is answered (BAD) or ignored, the session goes on",
            r.status == "OK", r)
    r = c.command("NOOP")
    R.equal("the session still works after malformed commands", r.status, "OK")
    c.logout()

    # huge line without CRLF
    c = connect(login=False)
    try:
        c.send(b"a1 LOGIN " + b"x" * (2 * 1024 * 1024))
        c.send(b"\r\na2 NOOP\r\n")
        r = c.wait_tagged("a1")
        R.check("a 2 MB command line -> BAD or disconnect", r.status in ("BAD", "CLOSED"), r)
    except (OSError, EOFError) as e:
        R.check("a 2 MB command line -> BAD or disconnect", True, e)
    c.close()
    # an announced literal much larger than max_message_size
    c = connect()
    c.send("a1 APPEND INBOX {2000000000}\r\n")
    r = c.read_response()
    if T.kind == "starling":
        # The issue bounds literals by max_message_size (64M by default);
        # the RFC doesn't require it and Dovecot without a quota says "+ OK".
        R.check("APPEND with a 2 GB literal (> max_message_size) is refused before "
                "any data is sent (no '+' continuation)", not r.startswith(b"+"), r)
    c.close()
    # a client that keeps sending garbage is disconnected
    c = connect(login=False)
    closed = False
    try:
        for i in range(300):
            c.send("x%d GARBAGE %d\r\n" % (i, i))
        r = c.read_untagged_until(lambda g: False, 10)
        closed = c.closed
    except (OSError, EOFError):
        closed = True
    if not closed:
        try:
            c.sock.settimeout(5)
            while True:
                c._fill()
        except (OSError, EOFError):
            closed = c.closed
    R.check("a client that keeps sending garbage is disconnected", closed)
    c.close()
    c = connect()
    R.equal("the server still serves new connections", c.command("NOOP").status, "OK")
    c.logout()


def t_starttls():
    ctx = ssl.create_default_context(cafile=T.tls_cert)
    ctx.check_hostname = True
    c = connect(login=False)
    r = c.starttls(ctx)
    R.equal("STARTTLS -> OK and a verified TLS handshake", r.status, "OK")
    r = c.command("CAPABILITY")
    caps = set(bytes(x).upper() for x in r.find("CAPABILITY")[0][1:]) if r.find("CAPABILITY") else set()
    R.check("after STARTTLS, STARTTLS is no longer advertised", r.ok and b"STARTTLS" not in caps,
            caps)
    r = c.command("STARTTLS")
    R.check("a second STARTTLS is refused", r.status in ("BAD", "NO"), r)
    r = c.login(USER, PASSWORD)
    R.equal("LOGIN over TLS -> OK", r.status, "OK")
    r = c.command("SELECT INBOX")
    R.equal("SELECT over TLS -> OK", r.status, "OK")
    c.logout()
    # commands pipelined after STARTTLS must not be run (command injection)
    c = connect(login=False)
    c.send("s1 STARTTLS\r\ns2 LOGIN %s %s\r\n" % (quote(USER), quote(PASSWORD)))
    line = c.read_response()
    ok = line.startswith(b"s1 OK")
    leftover = c.buf
    if ok:
        # A safe server drops the plaintext that followed STARTTLS (then our
        # SELECT is refused: not logged in) or fails the handshake on it;
        # an unsafe one runs the injected LOGIN after the handshake.
        try:
            c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
            c.buf = b""
            r = c.command("SELECT INBOX")
            R.check("a command pipelined after STARTTLS in plaintext is not executed",
                    r.status in ("BAD", "NO", "CLOSED") and not leftover, (r, leftover))
        except (OSError, EOFError) as e:
            R.check("a command pipelined after STARTTLS in plaintext is not executed "
                    "(the server dropped the connection)", True, e)
    else:
        R.check("STARTTLS with pipelined data is refused or ignored", True)
    c.close()
    if T.imaps_port:
        c = Client(T.host, T.imaps_port, tls_context=ctx, server_hostname="localhost")
        R.check("implicit TLS port greets with OK", c.greeting.startswith(b"* OK"), c.greeting)
        r = c.login(USER, PASSWORD)
        R.equal("LOGIN over implicit TLS -> OK", r.status, "OK")
        c.logout()
        # plaintext and a half handshake on the TLS port: dropped, nothing else
        closed = False
        with socket.create_connection((T.host, T.imaps_port), timeout=10) as so:
            so.sendall(b"a1 LOGIN x y\r\n" * 50)
            try:
                while so.recv(4096):
                    pass
                closed = True
            except socket.timeout:
                closed = False
            except OSError:  # reset
                closed = True
        R.check("plaintext sent to the implicit TLS port gets the connection closed", closed)
        with socket.create_connection((T.host, T.imaps_port), timeout=10) as so:
            so.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        c = Client(T.host, T.imaps_port, tls_context=ctx, server_hostname="localhost")
        R.equal("after a half-finished handshake the TLS port still serves",
                c.login(USER, PASSWORD).status, "OK")
        c.logout()


def t_rename_inbox_and_logout():
    c = connect()
    for i in range(2):
        append(c, "INBOX", simple_message("inbox %d" % i))
    _, st = status_of(c, "INBOX")
    n = st.get("MESSAGES", 0)
    r = c.command("RENAME INBOX OldInbox")
    R.equal("RENAME INBOX -> OK", r.status, "OK")
    _, st_old = status_of(c, "OldInbox")
    _, st_in = status_of(c, "INBOX")
    R.check("RENAME INBOX moves its messages and leaves an empty INBOX (RFC 3501 6.3.5)",
            st_old.get("MESSAGES") == n and st_in.get("MESSAGES") == 0, (n, st_old, st_in))
    r = c.command("LOGOUT")
    R.check("LOGOUT -> * BYE and OK", r.ok and any(u.startswith(b"* BYE") for u in r.untagged), r)
    R.check("the server closes the connection after LOGOUT",
            c.read_untagged_until(lambda g: False, 3) == [] and c.closed, c.closed)


def t_wire_robustness():
    c = connect()
    c.command("CREATE Wire")
    append(c, "Wire", simple_message("first on the wire"))
    # pipelining: many commands in one write (RFC 3501 5.5 lets the server
    # finish them in any order, so only "each exactly once" is asserted)
    n = 60
    batch = "".join("p%d %s\r\n" % (i, ("NOOP", 'STATUS Wire (MESSAGES)', "SELECT Wire",
                                         "FETCH 1:* (FLAGS)", "CHECK")[i % 5])
                    for i in range(n))
    c.send(batch)
    tags = []
    while len(tags) < n:
        line = c.read_response()
        if line.startswith(b"p"):
            tags.append(line.split(b" ", 2)[:2])
    R.equal("%d pipelined commands are each answered once" % n,
            sorted(t[0].decode() for t in tags), sorted("p%d" % i for i in range(n)))
    R.check("...and all succeed", all(t[1] == b"OK" for t in tags),
            [t for t in tags if t[1] != b"OK"][:5])
    # a command and its literal arriving in small pieces
    msg = simple_message("pieces", "sent three bytes at a time\n")
    whole = b"w1 APPEND Wire {%d}\r\n" % len(msg)
    for i in range(0, len(whole), 3):
        c.send(whole[i:i + 3])
        time.sleep(0.001)
    cont = c.read_response()
    for i in range(0, len(msg), 3):
        c.send(msg[i:i + 3])
    c.send(b"\r\n")
    r = c.wait_tagged("w1")
    R.check("a command and literal sent 3 bytes at a time are parsed",
            cont.startswith(b"+") and r.ok, (cont, r))
    # a big message: byte-exact round trip and partial at its end
    big = crlf("From: a@example.org\nSubject: big\n\n") + (b"0123456789abcdef" * 63 + b"\r\n") * 5200
    r, uid = append(c, "Wire", big)
    R.check("APPEND of a %.1f MB message -> OK" % (len(big) / 1e6), r.ok and uid, r)
    c.command("SELECT Wire")
    r, it = fetch1(c, "(RFC822.SIZE BODY.PEEK[])", str(uid), uid=True)
    R.check("the big message comes back byte-exact with its RFC822.SIZE",
            bytes(it.get("BODY[]", b"")) == big and it.get("RFC822.SIZE") == len(big),
            (len(bytes(it.get("BODY[]", b""))), it.get("RFC822.SIZE")))
    r, it = fetch1(c, "(BODY.PEEK[]<%d.50>)" % (len(big) - 20), str(uid), uid=True)
    R.equal("a partial FETCH near the end of the big message",
            bytes(it.get("BODY[]<%d>" % (len(big) - 20), b"?")), big[-20:])
    # mailbox names in modified UTF-7 (RFC 3501 5.1.3) round-trip
    name = "Entw&APw-rfe"
    R.equal("CREATE a modified UTF-7 name", c.command("CREATE", quote(name)).status, "OK")
    r = c.command('LIST "" "Entw*"')
    R.equal("LIST returns the modified UTF-7 name as created", set(list_names(r)), {name})
    c.command("DELETE", quote(name))
    # many keywords on one message
    kws = ["kw%02d" % i for i in range(40)]
    r = c.command("UID STORE %d +FLAGS (%s)" % (uid, " ".join(kws)))
    r, it = fetch1(c, "(FLAGS)", str(uid), uid=True)
    R.check("40 keywords on one message are kept",
            set(k.lower() for k in kws) <= flagset(it.get("FLAGS")), it.get("FLAGS"))
    c.logout()


def t_local_delivery():
    msg = simple_message("delivered to Archive", "by the local delivery agent\n")
    T.deliver(USER2, msg, "Archive")
    c = connect(user=USER2, password=PASSWORD2)
    r = c.command("EXAMINE Archive")
    R.equal("a message delivered with -m Archive is in Archive", r.number("EXISTS"), 1)
    r, it = fetch1(c, "(BODY.PEEK[])")
    R.equal("the delivered text is intact", bytes(it.get("BODY[]", b"")), msg)
    c.logout()
    if T.kind == "starling":
        out = T.node.dump(USER2)
        R.check("`starling dump` lists the user's mailboxes", "Archive" in out and "INBOX" in out,
                out[:500])


def t_restart_persistence():
    c = connect()
    c.command("CREATE Durable")
    uids = []
    for i in range(20):
        _, u = append(c, "Durable", simple_message("durable %d" % i, "text %d\n" % i),
                      flags=["\\Seen"] if i % 3 == 0 else [])
        uids.append(u)
    c.command("SELECT Durable")
    c.command("UID STORE %d +FLAGS.SILENT (\\Flagged $Kept)" % uids[1])
    c.command("UID STORE %d +FLAGS.SILENT (\\Deleted)" % uids[2])
    c.command("UID EXPUNGE %d" % uids[2])
    _, before = status_of(c, "Durable")
    r = c.command("UID FETCH 1:* (FLAGS BODY.PEEK[])")
    snap = {it["UID"]: (flagset(it.get("FLAGS")) - {"\\recent"}, bytes(it.get("BODY[]", b"")))
            for _, it in r.fetches()}
    r = c.command('LIST "" "*"')
    boxes = set(list_names(r))
    c.logout()

    T.restart(kill=False)
    c = connect()
    _, after = status_of(c, "Durable")
    R.equal("after a clean restart, STATUS is unchanged (UIDVALIDITY, UIDNEXT, "
            "MESSAGES, UNSEEN, HIGHESTMODSEQ)", after, before)
    c.command("SELECT Durable")
    r = c.command("UID FETCH 1:* (FLAGS BODY.PEEK[])")
    snap2 = {it["UID"]: (flagset(it.get("FLAGS")) - {"\\recent"}, bytes(it.get("BODY[]", b"")))
             for _, it in r.fetches()}
    R.check("after a clean restart, every message, text and flag is unchanged",
            snap2 == snap, (sorted(snap), sorted(snap2)))
    R.equal("after a clean restart, the mailbox list is unchanged",
            set(list_names(c.command('LIST "" "*"'))), boxes)
    # answered OK, then SIGKILL: nothing answered OK may be lost
    more = []
    for i in range(10):
        _, u = append(c, "Durable", simple_message("after kill %d" % i))
        more.append(u)
    c.command("UID STORE %d +FLAGS.SILENT (\\Answered)" % uids[0])
    c.close()
    T.restart(kill=True)
    c = connect()
    c.command("SELECT Durable")
    r = c.command("UID FETCH 1:* (FLAGS)")
    got = {it["UID"]: flagset(it.get("FLAGS")) for _, it in r.fetches()}
    R.check("after SIGKILL, every APPEND answered OK is there",
            set(more) <= set(got) and set(snap) <= set(got), sorted(set(more) - set(got)))
    R.check("after SIGKILL, a STORE answered OK is kept",
            "\\answered" in got.get(uids[0], set()), got.get(uids[0]))
    _, st = status_of(c, "Durable", "(UIDNEXT)")
    R.check("after SIGKILL, UIDNEXT is above every UID given out",
            st.get("UIDNEXT", 0) > max(more), (st, max(more)))
    _, u = append(c, "Durable", simple_message("after restart"))
    R.check("a new APPEND after the crash gets a fresh UID", u is not None and u > max(more), u)
    c.logout()


def t_kill_during_appends(rounds=4, writers=4):
    """SIGKILL while several clients append: every APPEND answered OK is
    there after the restart, with its exact bytes; UIDs keep rising."""
    c = connect()
    c.command("CREATE Crashes")
    c.logout()
    acked = {}
    lock = threading.Lock()
    lost_connections = 0
    for rnd in range(rounds):
        stop = threading.Event()

        def writer(w):
            nonlocal lost_connections
            try:
                cl = connect(timeout=10.0)
                # Bounded, but far more than fit before the kill.
                for i in range(20000):
                    if stop.is_set():
                        break
                    body = simple_message("round %d writer %d message %d" % (rnd, w, i),
                                          "line\n" * (1 + (i * 7) % 200))
                    _, u = append(cl, "Crashes", body)
                    if u is not None:
                        with lock:
                            acked[u] = body
            except Exception:  # noqa: BLE001 -- the kill cuts the connection
                with lock:
                    lost_connections += 1

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        # Let the writers get going, then kill in the middle of their work.
        time.sleep(0.3 + 0.2 * rnd)
        T.restart(kill=True)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        R.check("round %d: the writers ended" % rnd, not any(t.is_alive() for t in threads))
    R.check("every kill cut every client mid-work", lost_connections == rounds * writers,
            lost_connections)
    c = connect()
    c.command("SELECT Crashes")
    r = c.command("UID FETCH 1:* (BODY.PEEK[])")
    got = {it["UID"]: bytes(it.get("BODY[]", b"")) for _, it in r.fetches()}
    missing = sorted(u for u in acked if u not in got)
    changed = sorted(u for u in acked if u in got and got[u] != acked[u])
    print("measured: %d APPENDs answered OK over %d kills, %d stored in all"
          % (len(acked), rounds, len(got)))
    R.check("some APPENDs were answered OK", len(acked) > 0, len(acked))
    R.check("after the kills, every APPEND answered OK is there", not missing, missing[:10])
    R.check("after the kills, every stored text is the one appended", not changed, changed[:10])
    _, u = append(c, "Crashes", simple_message("after the kills"))
    R.check("an APPEND after the kills gets a UID above all", u is not None and
            u > max(list(got) + [0]), u)
    c.logout()


def t_logging():
    """The issue: logs say who logged in from where and what failed."""
    if T.kind != "starling":
        print("   (logging checks are for starlingd only)")
        return
    c = connect(login=False)
    c.login("ghost-user", "nope")
    c.logout()
    connect().logout()
    time.sleep(0.2)
    log = T.log_text()
    R.check("the log names the user who logged in and where from",
            any(USER in l and "127.0.0.1" in l for l in log.splitlines()), log[-1500:])
    R.check("the log records a failed login",
            any("ghost-user" in l and ("fail" in l.lower() or "denied" in l.lower()
                                       or "invalid" in l.lower() or "wrong" in l.lower()
                                       or "unknown" in l.lower()) for l in log.splitlines()),
            log[-1500:])
    R.check("the log never contains a password",
            PASSWORD not in log and PASSWORD2 not in log)


def t_plaintext_auth_no():
    """plaintext_auth = no: LOGIN and AUTHENTICATE refused until STARTTLS."""
    if T.kind != "starling":
        print("   (plaintext_auth checks are for starlingd only)")
        return
    from harness.starling import Cluster
    cl = Cluster(n=1, users={USER: PASSWORD}, tls=True, daemon=T.server.daemon,
                 cli=T.server.cli or "", extra_config={"plaintext_auth": "no"})
    cl.start_all()
    node = cl.nodes[0]
    try:
        c = Client(node.host, node.imap_port)
        r = c.command("CAPABILITY")
        caps = set(bytes(x).upper() for x in r.find("CAPABILITY")[0][1:]) if r.find("CAPABILITY") else set()
        R.check("plaintext_auth = no: LOGINDISABLED advertised without TLS",
                b"LOGINDISABLED" in caps and b"STARTTLS" in caps, caps)
        r = c.login(USER, PASSWORD)
        R.equal("plaintext_auth = no: LOGIN without TLS -> NO", r.status, "NO")
        r = c.authenticate_plain(USER, PASSWORD)
        R.check("plaintext_auth = no: AUTHENTICATE PLAIN without TLS is refused",
                r.status in ("NO", "BAD"), r)
        ctx = ssl.create_default_context(cafile=cl.tls_cert)
        r = c.starttls(ctx)
        R.equal("plaintext_auth = no: STARTTLS -> OK", r.status, "OK")
        r = c.login(USER, PASSWORD)
        R.equal("plaintext_auth = no: LOGIN after STARTTLS -> OK", r.status, "OK")
        c.logout()
    finally:
        code = node.stop()
    R.equal("the plaintext_auth = no node exits 0", code, 0)
    rep = node.sanitizer_report()
    R.check("no sanitizer report from the plaintext_auth = no node", rep is None, rep)


def t_edge_cases():
    c = connect()
    d = delim_of(c)
    # literals as ordinary arguments (LOGIN with literals)
    l = Client(T.host, T.port)
    r = l.command("LOGIN", Literal(USER), Literal(PASSWORD))
    R.equal("LOGIN with literal arguments -> OK", r.status, "OK")
    l.logout()
    # CREATE with a trailing delimiter, and with missing superiors
    r = c.command("CREATE", quote("Trail" + d))
    R.equal("CREATE with a trailing delimiter -> OK", r.status, "OK")
    R.equal("...creates the name without the delimiter",
            set(list_names(c.command('LIST "" "Trail*"'))), {"Trail"})
    deep = d.join(["Lvl1", "Lvl2", "Lvl3"])
    R.equal("CREATE Lvl1%sLvl2%sLvl3 -> OK" % (d, d), c.command("CREATE", quote(deep)).status, "OK")
    names = set(list_names(c.command('LIST "" "Lvl1*"')))
    R.check("CREATE makes the missing superior names (RFC 3501 6.3.3 SHOULD)",
            {"Lvl1", "Lvl1" + d + "Lvl2", deep} <= names, names)
    r = c.command("DELETE", quote("Lvl1" + d + "Lvl2"))
    names = set(list_names(c.command('LIST "" "Lvl1*"')))
    R.check("DELETE of a name with inferiors never deletes the inferiors",
            deep in names, (r, names))
    # APPEND to the selected mailbox is seen by the same session
    c.command("CREATE Edge")
    for i in range(5):
        append(c, "Edge", simple_message("edge %d" % i))
    c.command("SELECT Edge")
    r, _ = append(c, "Edge", simple_message("edge 5"))
    r2 = c.command("NOOP")
    R.check("APPEND to the selected mailbox: * 6 EXISTS in the APPEND or next NOOP response",
            r.number("EXISTS") == 6 or r2.number("EXISTS") == 6, (r.untagged, r2.untagged))
    # no EXPUNGE during a FETCH/STORE/SEARCH by sequence numbers (RFC 3501 7.4.1)
    b = connect()
    b.command("SELECT Edge")
    b.command("STORE 3 +FLAGS.SILENT (\\Deleted)")
    b.command("EXPUNGE")
    b.logout()
    r = c.command("FETCH 1:* (FLAGS)")
    R.check("no EXPUNGE response is sent during FETCH (sequence numbers stay valid)",
            r.ok and not r.expunges(), r.untagged)
    r = c.command("STORE 1 +FLAGS (\\Seen)")
    R.check("no EXPUNGE response is sent during STORE", r.ok and not r.expunges(), r.untagged)
    r = c.command("SEARCH ALL")
    R.check("no EXPUNGE response is sent during SEARCH", r.ok and not r.expunges(), r.untagged)
    r = c.command("NOOP")
    R.equal("...the EXPUNGE comes with the next NOOP", r.expunges(), [3])
    c.logout()
    # MOVE with QRESYNC enabled reports VANISHED (RFC 6851 4.3 / RFC 7162)
    q = connect()
    q.command("ENABLE QRESYNC")
    q.command("SELECT Edge")
    r = q.command("FETCH 1 (UID)")
    u1 = r.fetches()[0][1]["UID"] if r.fetches() else None
    r = q.command("MOVE 1 Trash")
    R.check("MOVE with QRESYNC enabled reports VANISHED uid, not EXPUNGE",
            r.ok and not r.expunges() and [v for e, v in r.vanished()] == [[u1]], r.untagged)
    q.logout()
    # a client that disconnects in the middle of an APPEND literal leaves nothing behind
    c = connect()
    _, st0 = status_of(c, "Edge")
    x = connect()
    x.send("z1 APPEND Edge {1000}\r\n")
    cont = x.read_response()
    x.send(b"Subject: half\r\n\r\n" + b"y" * 300)
    x.close()
    time.sleep(0.3)
    _, st1 = status_of(c, "Edge")
    R.check("an APPEND cut off mid-literal stores nothing",
            cont.startswith(b"+") and st1.get("MESSAGES") == st0.get("MESSAGES"), (st0, st1))
    # a client that does not read a large FETCH response blocks nobody else
    c.command("CREATE Slow")
    big = crlf("Subject: slow\n\n") + (b"z" * 998 + b"\r\n") * 2000
    for i in range(3):
        append(c, "Slow", big)
    s_ = connect()
    s_.command("EXAMINE Slow")
    s_.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s_.send("".join("f%d FETCH 1:* (BODY.PEEK[])\r\n" % i for i in range(15)))
    time.sleep(0.5)
    t0 = time.monotonic()
    ok = True
    try:
        o = connect(timeout=10)
        ok = o.command("NOOP").ok and append(o, "Edge", simple_message("while slow"))[0].ok
        o.logout()
    except Exception as e:  # noqa: BLE001
        ok = False
        print("   other client failed: %s" % e)
    dt = time.monotonic() - t0
    R.check("while a client leaves ~90 MB of FETCH output unread, another logs in and "
            "APPENDs promptly (%.2fs)" % dt, ok and dt < 5, dt)
    s_.close()
    # many connections that never log in
    socks = []
    for i in range(100):
        try:
            socks.append(socket.create_connection((T.host, T.port), timeout=5))
        except OSError:
            break
    R.equal("100 idle unauthenticated connections are accepted", len(socks), 100)
    for so in socks:
        so.close()
    time.sleep(0.2)
    R.equal("the server still serves a session after them", connect().logout().status, "OK")
    c.logout()


def t_imaptest_defects():
    """The defects Dovecot's imaptest found (issue 15), one check or more each."""
    c = connect()
    # 1. '[' is an ATOM-CHAR: a mailbox name atom may hold it (RFC 3501 9)
    odd = "!#$&'+,-.0123456789:;<=>?@^_`|[}"
    r = c.command("SELECT " + odd)
    R.equal("SELECT of imaptest's atom holding '[' (no such mailbox; '&' not valid "
            "modified UTF-7) -> NO, not BAD", r.status, "NO")
    R.equal("...and the connection stays open", c.command("NOOP").status, "OK")
    r = c.command("CREATE Br[ack}et")
    R.equal("CREATE Br[ack}et (an atom) -> OK", r.status, "OK")
    R.equal("SELECT Br[ack}et -> OK", c.command("SELECT Br[ack}et").status, "OK")
    r = c.command('LIST "" Br[ack}et')
    R.equal("...LIST shows the name as created", list(list_names(r)), ["Br[ack}et"])
    r = c.command("FETCH 1 BODY[HEADER")
    R.equal("an unclosed '[' in a FETCH item -> BAD", r.status, "BAD")
    for i in range(3):
        c.command("XYZZY%d" % i)
    R.equal("three BADs in a row do not close the connection",
            c.command("NOOP").status, "OK")
    c.command("CLOSE")
    # 4. ID with RFC 2971's limits: 30 pairs, names 30 octets, values 1024 octets
    pairs = " ".join('"%s" "%s"' % (("f%02d" % i).ljust(30, "x"), "v" * 1024)
                     for i in range(30))
    r = c.command("ID (%s)" % pairs)
    R.check("ID with 30 pairs, 30-octet names, 1024-octet values -> * ID, OK",
            r.ok and bool(r.find("ID")), r)
    R.equal("...and the connection stays open", c.command("NOOP").status, "OK")
    pre = connect(login=False)
    r = pre.command("ID (%s)" % pairs)
    R.check("...the same ID before login -> * ID, OK", r.ok and bool(r.find("ID")), r)
    R.equal("...then LOGIN on that connection -> OK", pre.login(USER, PASSWORD).status, "OK")
    pre.logout()
    # 5. 4294967295 is a valid UID in a set
    c.command("CREATE Defects")
    frm = 'From: "User From" <user-from@domain.org>'
    append(c, "Defects", simple_message("defects one", frm=frm.split(": ", 1)[1]))
    append(c, "Defects", simple_message("defects two"))
    append(c, "Defects", simple_message("defects three",
                                        frm="<user-from (comment)@ (comment) domain.org>",
                                        to="groupname: groupuser1@domain.org;"))
    c.command("SELECT Defects")
    r = c.command("UID SEARCH UID 1:4294967295")
    R.check("UID SEARCH UID 1:4294967295 -> OK with all messages",
            r.ok and len(r.search()[0]) == 3, r)
    r = c.command("UID FETCH 4294967295 (FLAGS)")
    R.equal("UID FETCH 4294967295 -> OK", r.status, "OK")
    R.equal("...and the connection stays open", c.command("NOOP").status, "OK")
    # 6. SEARCH FROM matches the address part as a substring
    for key, want in (("FROM user-from@domain.org", [1, 3]), ("FROM ser-fro", [1, 3]),
                      ("FROM domain.org", [1, 3]), ('FROM "User From"', [1]),
                      ("FROM alice@example.org", [2]), ("FROM nobody@domain.org", []),
                      ("TO groupname", [3]),
                      ("TO groupuser1@domain.org", [3])):
        r = c.command("SEARCH " + key)
        R.equal("SEARCH %s" % key, (r.status, r.search()[0]), ("OK", want))
    # 8. a sequence number above EXISTS is an error
    r = c.command("FETCH 4 (FLAGS)")
    R.equal("FETCH 4 with EXISTS 3 -> BAD", r.status, "BAD")
    r = c.command("FETCH 1:4 (FLAGS)")
    R.equal("FETCH 1:4 with EXISTS 3 -> BAD", r.status, "BAD")
    R.equal("FETCH 1:* with EXISTS 3 -> OK", c.command("FETCH 1:* (FLAGS)").status, "OK")
    R.equal("UID FETCH 1:99 -> OK (UIDs need not exist)",
            c.command("UID FETCH 1:99 (FLAGS)").status, "OK")
    R.equal("STORE 4 with EXISTS 3 -> BAD",
            c.command("STORE 4 +FLAGS (\\Seen)").status, "BAD")
    R.equal("...and the connection stays open", c.command("NOOP").status, "OK")
    c.command("CLOSE")
    # 7. LSUB returns an unsubscribed parent of a subscribed child as \Noselect
    d = delim_of(c)
    parent, child = "LsubP" + d + "mid", "LsubP" + d + "mid" + d + "leaf"
    c.command("CREATE " + quote(child))
    c.command("SUBSCRIBE " + quote(child))
    c.command("UNSUBSCRIBE " + quote(parent))
    r = c.command('LSUB "" ' + quote("LsubP" + d + "%"))
    got = [(set(bytes(f).lower() for f in t[1]), t[3]) for t in r.find("LSUB")]
    got = [(f, n.decode() if isinstance(n, bytes) else n) for f, n in got]
    R.check('LSUB "" LsubP/%% -> the unsubscribed parent with \\Noselect',
            r.ok and any(n == parent and b"\\noselect" in f for f, n in got), r.untagged)
    r = c.command('LSUB "" ' + quote("LsubP" + d + "*"))
    got = [(set(bytes(f).lower() for f in t[1]), t[3]) for t in r.find("LSUB")]
    R.check('LSUB "" LsubP/* -> the subscribed child without \\Noselect',
            any(n.decode() == child and b"\\noselect" not in f for f, n in got), r.untagged)
    c.logout()


def t_recent():
    """\\Recent per RFC 3501 2.3.2: one session sees a new message as recent."""
    c = connect()
    c.command("CREATE Rec")
    append(c, "Rec", simple_message("rec one"))
    append(c, "Rec", simple_message("rec two"))
    _, st = status_of(c, "Rec", "(MESSAGES RECENT)")
    R.equal("STATUS RECENT counts messages nobody has selected yet", st.get("RECENT"), 2)
    r = c.command("EXAMINE Rec")
    R.equal("EXAMINE reports them recent", r.number("RECENT"), 2)
    c.command("CLOSE")
    a, b = connect(), connect()
    r = a.command("SELECT Rec")
    R.equal("...EXAMINE does not take \\Recent away: SELECT -> * 2 RECENT",
            r.number("RECENT"), 2)
    r = a.command("FETCH 1:* (FLAGS)")
    R.check("FETCH FLAGS shows \\Recent to that session",
            all("\\recent" in flagset(f["FLAGS"]) for _, f in r.fetches()) and
            len(r.fetches()) == 2, r.untagged)
    R.equal("SEARCH RECENT", a.command("SEARCH RECENT").search()[0], [1, 2])
    R.equal("SEARCH NEW (recent and unseen)", a.command("SEARCH NEW").search()[0], [1, 2])
    R.equal("SEARCH OLD", a.command("SEARCH OLD").search()[0], [])
    r = b.command("SELECT Rec")
    R.equal("a second session's SELECT -> * 0 RECENT", r.number("RECENT"), 0)
    R.equal("...and SEARCH RECENT finds nothing there", b.command("SEARCH RECENT").search()[0], [])
    R.equal("...SEARCH OLD finds both", b.command("SEARCH OLD").search()[0], [1, 2])
    _, st = status_of(c, "Rec", "(RECENT)")
    R.equal("STATUS RECENT once a session has taken them -> 0 (as imaptest's select)",
            st.get("RECENT"), 0)
    append(c, "Rec", simple_message("rec three"))
    ra, rb = a.command("NOOP"), b.command("NOOP")
    R.check("a message that arrives is recent to exactly one selecting session",
            sorted([ra.number("RECENT") or 0, rb.number("RECENT") or 0]) in ([0, 3], [2, 3]) and
            (ra.number("EXISTS"), rb.number("EXISTS")) == (3, 3), (ra.untagged, rb.untagged))
    r = a.command("STORE 1 +FLAGS (\\Seen)")
    R.equal("SEARCH NEW after \\Seen on 1", a.command("SEARCH NEW").search()[0],
            [2, 3] if (ra.number("RECENT") or 0) == 3 else [2])
    c.command("SELECT Rec")
    r = c.command("COPY 1:2 Rec")
    R.check("COPY into the selected mailbox -> * 5 EXISTS, * 2 RECENT",
            r.ok and (r.number("EXISTS"), r.number("RECENT")) == (5, 2), r.untagged)
    r = a.command("NOOP")
    R.check("...the copies are not recent to a session that learns of them later",
            r.number("EXISTS") == 5 and a.command("SEARCH RECENT").search()[0] ==
            ([1, 2, 3] if (ra.number("RECENT") or 0) == 3 else [1, 2]), r.untagged)
    c.command("CLOSE")
    a.logout()
    b.logout()
    c.logout()


class RecentView:
    """A session as a client like imaptest sees it: EXISTS from EXISTS and
    EXPUNGE, and the recent count from the last RECENT response, the only
    count RFC 3501 7.3.2 gives a client."""

    def __init__(self, c):
        self.c, self.exists, self.recent = c, 0, 0

    def command(self, *parts):
        r = self.c.command(*parts)
        for u in r.untagged:
            toks = parse(u[2:])
            if len(toks) >= 2 and isinstance(toks[0], bytes) and toks[0].isdigit():
                word = bytes(toks[1]).upper()
                if word == b"EXISTS":
                    self.exists = int(toks[0])
                elif word == b"EXPUNGE":
                    self.exists -= 1
                elif word == b"RECENT":
                    self.recent = int(toks[0])
        return r

    def recent_uids(self):
        r = self.command("FETCH 1:* (UID FLAGS)") if self.exists else None
        if r is None:
            return set()
        return {f["UID"] for _, f in r.fetches() if "\\recent" in flagset(f.get("FLAGS"))}


def t_recent_expunge():
    """\\Recent with expunges: three sessions, new messages appended by a
    fourth and expunged by any of them.  A message is recent in exactly one
    session (RFC 3501 2.3.2), and each session's RECENT count follows its
    recent messages out when they are expunged, so the counts add up to
    EXISTS (imaptest's checkpoint: "Total RECENT count larger than current
    message count")."""
    import random
    rnd = random.Random(1515)
    c = connect()
    c.command("CREATE RecX")
    views = []
    for _ in range(3):
        v = RecentView(connect())
        r = v.command("SELECT RecX")
        R.check("SELECT RecX", r.ok, r)
        views.append(v)
    ok_sum = ok_once = ok_count = True
    detail = []
    n = 0
    for rnd_i in range(12):
        for _ in range(rnd.randint(1, 4)):
            n += 1
            append(c, "RecX", simple_message("recx %d" % n))
        for v in rnd.sample(views, len(views)):
            v.command("NOOP")
        if rnd_i % 2 == 1:
            # one session expunges a random half of the mailbox
            e = rnd.choice(views)
            if e.exists:
                seqs = sorted(rnd.sample(range(1, e.exists + 1), (e.exists + 1) // 2))
                e.command("STORE %s +FLAGS.SILENT (\\Deleted)" % ",".join(map(str, seqs)))
                e.command("EXPUNGE")
            for v in views:
                v.command("NOOP")
        exists = views[0].exists
        owners = {}
        for i, v in enumerate(views):
            uids = v.recent_uids()
            if v.recent != len(uids):
                ok_count = False
                detail.append("round %d: session %d told RECENT %d, has %d \\Recent"
                              % (rnd_i, i, v.recent, len(uids)))
            for u in uids:
                owners.setdefault(u, []).append(i)
        total = sum(v.recent for v in views)
        if total != exists or any(v.exists != exists for v in views):
            ok_sum = False
            detail.append("round %d: RECENT %r sum %d, EXISTS %r"
                          % (rnd_i, [v.recent for v in views], total,
                             [v.exists for v in views]))
        if len(owners) != exists or any(len(o) != 1 for o in owners.values()):
            ok_once = False
            detail.append("round %d: \\Recent owners %r, EXISTS %d" % (rnd_i, owners, exists))
    R.check("each session's last RECENT count is its number of \\Recent messages", ok_count, detail)
    R.check("sum of RECENT over the sessions == EXISTS after every round", ok_sum, detail)
    R.check("every message is \\Recent in exactly one session", ok_once, detail)
    for v in views:
        v.c.logout()
    c.command("DELETE RecX")
    c.logout()


def t_keyword_flags():
    """A keyword's first use is announced with FLAGS (imaptest's "Keyword used
    without being in FLAGS")."""
    c = connect()
    a, b = connect(), connect()
    c.command("CREATE Kw")
    append(c, "Kw", simple_message("kw one"))
    a.command("SELECT Kw")
    b.command("SELECT Kw")
    r = b.command("STORE 1 +FLAGS ($NewKeyword1)")

    def flags_before_fetch(resp, kw):
        seen_flags = False
        for u in resp.untagged:
            toks = parse(u[2:])
            if toks and toks[0].upper() == b"FLAGS" and kw.lower() in flagset(toks[1]):
                seen_flags = True
            if len(toks) > 2 and toks[1].upper() == b"FETCH":
                f = fetch_items(toks[2]).get("FLAGS")
                if f is not None and kw.lower() in flagset(f):
                    return seen_flags
        return None

    R.equal("STORE of a new keyword: the storing session gets * FLAGS before the FETCH",
            flags_before_fetch(r, "$NewKeyword1"), True)
    R.check("...and PERMANENTFLAGS with it",
            "$NewKeyword1" in r.codes().get("PERMANENTFLAGS", b"").decode(), r.untagged)
    r = a.command("NOOP")
    R.equal("another session gets * FLAGS with the keyword before the FETCH",
            flags_before_fetch(r, "$NewKeyword1"), True)
    r = a.command("SELECT Kw")
    fl = r.find("FLAGS")
    R.check("SELECT lists the keyword in FLAGS",
            fl and "$newkeyword1" in flagset(fl[0][1]), r.untagged)
    a.logout()
    b.logout()
    c.logout()


def t_unselect_children():
    """UNSELECT (RFC 3691) and CHILDREN (RFC 3348), advertised in CAPABILITY,
    which the other sections do not use."""
    c = connect()
    caps = set(bytes(x).upper() for t in c.command("CAPABILITY").find("CAPABILITY")
               for x in t[1:])
    R.check("CAPABILITY lists UNSELECT and CHILDREN", {b"UNSELECT", b"CHILDREN"} <= caps, caps)
    c.command("CREATE Unsel")
    append(c, "Unsel", simple_message("unsel one"))
    c.command("SELECT Unsel")
    c.command("STORE 1 +FLAGS.SILENT (\\Deleted)")
    r = c.command("UNSELECT")
    R.check("UNSELECT -> OK without an EXPUNGE", r.ok and not r.expunges(), r)
    R.equal("...the mailbox is no longer selected", c.command("FETCH 1 (FLAGS)").status, "BAD")
    _, st = status_of(c, "Unsel", "(MESSAGES)")
    R.equal("...and the \\Deleted message is still there", st.get("MESSAGES"), 1)
    d = delim_of(c)
    c.command("CREATE " + quote("Kids" + d + "one"))
    c.command("CREATE Nokids")
    names = list_names(c.command('LIST "" "%"'))
    R.check("LIST: \\HasChildren on a parent, \\HasNoChildren on a leaf",
            "\\haschildren" in names.get("Kids", set()) and
            "\\hasnochildren" in names.get("Nokids", set()), names)
    c.logout()


SECTIONS = [
    ("capability and login", t_capability_and_login),
    ("namespace, list, special-use", t_namespace_list_special_use),
    ("mailbox management", t_mailbox_management),
    ("append, status, select, examine", t_append_status_select),
    ("fetch items", t_fetch_items),
    ("store and condstore", t_store_condstore),
    ("copy, move, expunge", t_copy_move_expunge),
    ("search", t_search),
    ("enable, id, noop, check", t_enable_id),
    ("two sessions and idle", t_two_sessions_and_idle),
    ("qresync", t_qresync),
    ("50 concurrent clients", t_concurrency),
    ("malformed input", t_malformed),
    ("starttls", t_starttls),
    ("wire robustness", t_wire_robustness),
    ("edge cases", t_edge_cases),
    ("local delivery", t_local_delivery),
    ("restart persistence", t_restart_persistence),
    ("kill during appends", t_kill_during_appends),
    ("logging", t_logging),
    ("plaintext_auth no", t_plaintext_auth_no),
    ("rename inbox and logout", t_rename_inbox_and_logout),
    ("imaptest defects", t_imaptest_defects),
    ("recent", t_recent),
    ("recent with expunges", t_recent_expunge),
    ("keyword flags", t_keyword_flags),
    ("unselect, children", t_unselect_children),
]


def set_target(t):
    global T
    T = t


if __name__ == "__main__":
    sys.exit(run_sections(R, SECTIONS, __doc__.splitlines()[0], {USER: PASSWORD, USER2: PASSWORD2},
                          set_target, tls=True))
