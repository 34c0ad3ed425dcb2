#!/usr/bin/env python3
"""IMAP ACLs (RFC 4314) and the shared/ namespace against one real server.

Checked here: the ACL and RIGHTS=texk capabilities; MYRIGHTS, GETACL,
SETACL (replace, +, -, the obsolete c and d), DELETEACL and LISTRIGHTS;
bad input (an unknown right letter, a bad identifier) is BAD with a reason
and changes nothing; NAMESPACE reports shared/; a mailbox shared with bob
shows in bob's LIST as shared/alice/NAME (with its \\Noselect parents and
\\HasChildren/\\HasNoChildren) and in a real client's (Python imaplib)
listing; bob can SELECT, FETCH, APPEND, STORE and EXPUNGE there as far as
his rights go, and alice sees his changes; every command he lacks the right
for is NO [NOPERM] while he has "l", and exactly the answer for a mailbox
that does not exist when he has not (SELECT, STATUS, MYRIGHTS, APPEND,
COPY, GETACL, and LIST shows nothing); negative rights (-bob) take away
what "anyone" gives; a right taken away while bob has the mailbox selected
applies at his next command; the owner cannot lock themselves out (keeps
"l" and "a"); RENAME inside shared/alice/ and Public/ with x (and k on the
new parent), NO [NOPERM] / NO [NONEXISTENT] without, NO [CANNOT] across
owners, the ACL following the mailbox; on a node of its own with
acl_owner_rights = lrswipkte, the owner's default rights (DELETE and
RENAME of an own mailbox NO [NOPERM], MYRIGHTS/GETACL/`starling acl` show
it, the owner's own record wins, a bad value stops starlingd and starling
with one line).

The last line is "imap-acl: N passed, M failed"; exit 0 only if nothing
failed.
"""
import imaplib
import re
import sys

from imapcommon import Report, run_sections
from harness.imapwire import Client, Literal, parse

USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
R = Report("imap-acl")
T = None


def connect(user):
    c = Client(T.host, T.port, timeout=20.0)
    r = c.login(user, USERS[user])
    if not r.ok:
        raise RuntimeError("login of %s failed: %r" % (user, r))
    return c


def message(subject):
    return ("From: a@example.org\r\nTo: b@example.net\r\nSubject: %s\r\n"
            "Date: Mon, 15 Jul 2024 12:00:00 +0000\r\n\r\nbody\r\n" % subject)


def listed(r):
    """{name: [attributes]} of the LIST responses."""
    out = {}
    for toks in r.find("LIST"):
        name = toks[3].decode() if isinstance(toks[3], bytes) else str(toks[3])
        out[name] = [a.decode() for a in toks[1]]
    return out


def myrights(c, box):
    r = c.command("MYRIGHTS", box)
    got = r.find("MYRIGHTS")
    return r, (got[0][2].decode() if got else None)


def getacl(c, box):
    r = c.command("GETACL", box)
    got = r.find("ACL")
    acl = {}
    if got:
        toks = got[0][2:]
        for i in range(0, len(toks) - 1, 2):
            acl[toks[i].decode()] = toks[i + 1].decode()
    return r, acl


def t_capability():
    c = connect("alice")
    r = c.command("CAPABILITY")
    caps = b" ".join(r.untagged).upper().split()
    R.check("CAPABILITY has ACL", b"ACL" in caps, r.untagged)
    R.check("CAPABILITY has RIGHTS=texk", b"RIGHTS=TEXK" in caps, r.untagged)
    r = c.command("NAMESPACE")
    R.check("NAMESPACE reports shared/ as the other users' namespace and Public/ as the "
            "shared one", any(b'NAMESPACE (("" "/")) (("shared/" "/")) (("Public/" "/"))' in u
                              for u in r.untagged), r.untagged)
    c.logout()


def t_owner_rights():
    c = connect("alice")
    r, rights = myrights(c, "INBOX")
    R.check("MYRIGHTS INBOX OK", r.ok, r)
    R.equal("the owner has every right by default, with the virtual c and d", rights,
            "lrswipkxteacd")
    r, acl = getacl(c, "INBOX")
    R.check("GETACL INBOX OK", r.ok, r)
    R.equal("GETACL shows the owner's implicit rights", acl, {"alice": "lrswipkxteacd"})
    r = c.command("LISTRIGHTS", "INBOX", "alice")
    lr = r.find("LISTRIGHTS")
    R.check("LISTRIGHTS for the owner: l and a always, the rest one by one",
            r.ok and lr and lr[0][3] == b"la" and [x.decode() for x in lr[0][4:]] ==
            list("rswipkxtecd"), r.untagged)
    r = c.command("LISTRIGHTS", "INBOX", "bob")
    lr = r.find("LISTRIGHTS")
    R.check("LISTRIGHTS for another user: nothing required, every right by itself and c "
            "and d by themselves (RFC 4314 2.1.1)",
            r.ok and lr and lr[0][3] == b"" and [x.decode() for x in lr[0][4:]] ==
            list("lrswipkxteacd"), r.untagged)
    # The owner cannot lock themselves out.
    r = c.command("SETACL", "INBOX", "alice", "r")
    R.check("SETACL INBOX alice r OK", r.ok, r)
    _, rights = myrights(c, "INBOX")
    R.equal("an owner named with r keeps l and a", rights, "lra")
    r = c.command("SELECT", "INBOX")
    R.check("... and SELECT is READ-ONLY then", r.ok and r.code == "READ-ONLY", r)
    c.command("CLOSE")
    r = c.command("DELETEACL", "INBOX", "alice")
    R.check("DELETEACL INBOX alice OK", r.ok, r)
    _, rights = myrights(c, "INBOX")
    R.equal("without a record the owner has every right again", rights, "lrswipkxteacd")
    c.logout()


def t_bad_input():
    c = connect("alice")
    c.command("CREATE", "Bad")
    r = c.command("SETACL", "Bad", "bob", "lrz")
    R.check("SETACL with an unknown right 'z' is BAD naming it",
            r.status == "BAD" and "'z'" in r.text, r)
    r = c.command("SETACL", "Bad", '"bo b"', "lr")
    R.check("SETACL with a bad identifier is BAD", r.status == "BAD", r)
    r = c.command("SETACL", "Bad", '""', "lr")
    R.check("SETACL with an empty identifier is BAD", r.status == "BAD", r)
    r = c.command("SETACL", "Bad", "bob", "+lr!")
    R.check("SETACL +rights with a bad letter is BAD", r.status == "BAD", r)
    _, acl = getacl(c, "Bad")
    R.equal("after the BADs the ACL is unchanged", acl, {"alice": "lrswipkxteacd"})
    r = c.command("SETACL", "NoSuchBox", "bob", "lr")
    R.check("SETACL on a missing mailbox is NO [NONEXISTENT]",
            r.status == "NO" and r.code == "NONEXISTENT", r)
    r = c.command("SETACL", "Bad", "bob")
    R.check("SETACL without rights is BAD", r.status == "BAD", r)
    r = c.command("CREATE", "shared/x")
    R.check("CREATE under shared/ is NO", r.status == "NO", r)
    c.logout()


def t_obsolete_and_negative():
    a = connect("alice")
    a.command("CREATE", "Old")
    r = a.command("SETACL", "Old", "carol", "lrcd")
    R.check("SETACL with the obsolete c and d OK", r.ok, r)
    _, acl = getacl(a, "Old")
    R.equal("c is k and x, d is t and e (RFC 4314 2.1.1)", acl.get("carol"), "lrkxtecd")
    r = a.command("SETACL", "Old", "carol", "-kx")
    _, acl = getacl(a, "Old")
    R.equal("SETACL -kx removes those two only, and c with them", acl.get("carol"),
            "lrted")
    r = a.command("SETACL", "Old", "carol", "+w")
    _, acl = getacl(a, "Old")
    R.equal("SETACL +w adds it", acl.get("carol"), "lrwted")
    # anyone gets lr, -bob takes r away from bob only.
    a.command("SETACL", "Old", "anyone", "lr")
    a.command("SETACL", "Old", "-bob", "r")
    b = connect("bob")
    _, rights = myrights(b, "shared/alice/Old")
    R.equal("anyone lr minus -bob r: bob has l", rights, "l")
    r = b.command("SELECT", "shared/alice/Old")
    R.check("bob without r: SELECT is NO [NOPERM] (he may see it)",
            r.status == "NO" and r.code == "NOPERM", r)
    c = connect("carol")
    _, rights = myrights(c, "shared/alice/Old")
    R.equal("carol: her own record and anyone's", rights, "lrwted")
    a.command("DELETEACL", "Old", "-bob")
    _, rights = myrights(b, "shared/alice/Old")
    R.equal("after DELETEACL -bob, bob has anyone's lr", rights, "lr")
    a.command("DELETEACL", "Old", "anyone")
    a.command("DELETEACL", "Old", "carol")
    for x in (a, b, c):
        x.logout()


def t_virtual_c_and_d():
    """RFC 4314 2.1.1: MYRIGHTS and ACL responses carry c when any of k x is
    set and d when any of t e is, on negative identifiers too; a client that
    sends back what it read sets the same rights."""
    a = connect("alice")
    b = connect("bob")
    a.command("CREATE", "Virt")
    box = "shared/alice/Virt"
    for given, want in (("lk", "lkc"), ("lx", "lxc"), ("le", "led"), ("lt", "ltd"),
                        ("lrswipa", "lrswipa"), ("lkxte", "lkxtecd")):
        r = a.command("SETACL", "Virt", "bob", given)
        _, acl = getacl(a, "Virt")
        _, rights = myrights(b, box)
        R.check("SETACL Virt bob %s: the ACL response says %s" % (given, want),
                r.ok and acl.get("bob") == want, (r, acl))
        R.equal("SETACL Virt bob %s: bob's MYRIGHTS says %s" % (given, want), rights, want)
    # A client that writes back the rights it read (with c and d) changes nothing.
    _, acl = getacl(a, "Virt")
    r = a.command("SETACL", "Virt", "bob", acl.get("bob"))
    _, again = getacl(a, "Virt")
    R.check("SETACL with the rights GETACL returned keeps them",
            r.ok and again.get("bob") == "lkxtecd", (r, again))
    # The RFC's "-Fred wetd": negative identifiers show c and d too.
    a.command("SETACL", "Virt", "anyone", "lrkxte")
    a.command("SETACL", "Virt", "-carol", "we")
    _, acl = getacl(a, "Virt")
    R.equal("a negative identifier with e shows d", acl.get("-carol"), "wed")
    R.equal("anyone with k x t e shows c and d", acl.get("anyone"), "lrkxtecd")
    c = connect("carol")
    _, rights = myrights(c, box)
    R.equal("carol (anyone minus -carol we): l r k x t, so c and d", rights, "lrkxtcd")
    a.command("SETACL", "Virt", "-carol", "kxte")
    _, rights = myrights(c, box)
    R.equal("carol without any of k x t e: neither c nor d", rights, "lr")
    # A real client (imaplib) reads the responses with c and d in them.
    m = imaplib.IMAP4(T.host, T.port)
    try:
        m.login("alice", USERS["alice"])
        typ, data = m.myrights("Virt")
        R.check("imaplib: MYRIGHTS Virt OK, ending in c and d",
                typ == "OK" and data and data[0].split()[-1] == b"lrswipkxteacd", data)
        typ, data = m.getacl("Virt")
        R.check("imaplib: GETACL Virt OK, -carol kxte shown with c and d",
                typ == "OK" and data and b"-carol kxtecd" in data[0], data)
        m.logout()
    except imaplib.IMAP4.error as e:
        R.check("imaplib session", False, str(e))
    R.check("DELETE Virt OK", a.command("DELETE", "Virt").ok)
    for x in (a, b, c):
        x.logout()


def t_shared_listing():
    a = connect("alice")
    for box in ("Team", "Team/Sub", "Private"):
        r = a.command("CREATE", box)
        R.check("alice CREATE %s" % box, r.ok, r)
    r = a.command("SETACL", "Team", "bob", "lr")
    R.check("SETACL Team bob lr OK", r.ok, r)
    r = a.command("SETACL", "Team/Sub", "bob", "lr")
    R.check("SETACL Team/Sub bob lr OK", r.ok, r)
    b = connect("bob")
    r = b.command("LIST", '""', "*")
    got = listed(r)
    R.check("bob's LIST * shows shared/alice/Team and Team/Sub",
            "shared/alice/Team" in got and "shared/alice/Team/Sub" in got, got)
    R.check("... with \\HasChildren on Team, \\HasNoChildren on Team/Sub",
            "\\HasChildren" in got.get("shared/alice/Team", []) and
            "\\HasNoChildren" in got.get("shared/alice/Team/Sub", []), got)
    R.check("... shared and shared/alice as \\Noselect levels",
            "\\Noselect" in got.get("shared", []) and
            "\\Noselect" in got.get("shared/alice", []), got)
    R.check("... and not alice's Private nor her INBOX",
            not any("Private" in n or n == "shared/alice/INBOX" for n in got), got)
    r = b.command("LIST", '""', "shared/%")
    R.equal("LIST shared/% is the owners' level", sorted(listed(r)), ["shared/alice"])
    r = b.command("LIST", '"shared/alice/"', "%")
    R.equal("LIST with a reference inside shared/", sorted(listed(r)), ["shared/alice/Team"])
    # A real client's view (imaplib).
    m = imaplib.IMAP4(T.host, T.port)
    try:
        m.login("bob", USERS["bob"])
        typ, data = m.list('""', "shared/*")
        names = [d.decode() for d in data if d]
        R.check("imaplib: LIST shared/* is OK and names shared/alice/Team",
                typ == "OK" and any(n.endswith('shared/alice/Team') for n in names), data)
        typ, data = m.select("shared/alice/Team", readonly=True)
        R.check("imaplib: EXAMINE shared/alice/Team OK", typ == "OK", data)
        m.logout()
    except imaplib.IMAP4.error as e:
        R.check("imaplib session", False, str(e))
    a.logout()
    b.logout()


def t_not_visible():
    """Without l (and no other right), bob gets exactly what a missing
    mailbox gets."""
    a = connect("alice")
    a.command("CREATE", "Hidden")
    a.command("APPEND", "Hidden", Literal(message("hidden")))
    a.command("SETACL", "Hidden", "carol", "lr")
    b = connect("bob")
    for cmd in (("SELECT",), ("EXAMINE",), ("STATUS", None, "(MESSAGES)"), ("MYRIGHTS",),
                ("GETACL",), ("SETACL", None, "bob", "lr"), ("DELETEACL", None, "bob")):
        args = [x if x is not None else "shared/alice/Hidden" for x in cmd[1:]] or \
            ["shared/alice/Hidden"]
        hidden = b.command(cmd[0], *args)
        missing = b.command(cmd[0], *[x.replace("Hidden", "NoSuchBox") for x in args])
        R.check("%s on a hidden mailbox is NO" % cmd[0], hidden.status == "NO", hidden)
        R.equal("%s: hidden and missing answer alike" % cmd[0],
                hidden.line.split(b" ", 1)[1], missing.line.split(b" ", 1)[1])
    hidden = b.command("APPEND", "shared/alice/Hidden", Literal(message("x")))
    missing = b.command("APPEND", "shared/alice/NoSuchBox", Literal(message("x")))
    R.equal("APPEND: hidden and missing answer alike",
            hidden.line.split(b" ", 1)[1], missing.line.split(b" ", 1)[1])
    R.check("... [TRYCREATE]", hidden.code == "TRYCREATE", hidden)
    r = b.command("LIST", '""', "*")
    R.check("bob's LIST does not show Hidden", not any("Hidden" in n for n in listed(r)),
            listed(r))
    r = b.command("LSUB", '""', "*")
    R.check("nor LSUB", not any(b"Hidden" in u for u in r.untagged), r.untagged)
    b.command("SELECT", "INBOX")
    hidden = b.command("COPY", "1:*", "shared/alice/Hidden")
    missing = b.command("COPY", "1:*", "shared/alice/NoSuchBox")
    R.equal("COPY: hidden and missing answer alike",
            hidden.line.split(b" ", 1)[1], missing.line.split(b" ", 1)[1])
    r = a.command("STATUS", "Hidden", "(MESSAGES)")
    R.check("nothing reached Hidden", b"MESSAGES 1" in b"".join(r.untagged), r.untagged)
    a.logout()
    b.logout()


def t_enforcement():
    a = connect("alice")
    a.command("CREATE", "Work")
    a.command("APPEND", "Work", Literal(message("from alice")))
    a.command("SETACL", "Work", "bob", "lr")
    b = connect("bob")
    r = b.command("SELECT", "shared/alice/Work")
    R.check("bob with lr: SELECT is OK [READ-ONLY]", r.ok and r.code == "READ-ONLY", r)
    R.equal("... and shows alice's message", r.number("EXISTS"), 1)
    r = b.command("FETCH", "1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    R.check("bob FETCHes it", r.ok and b"from alice" in b"".join(r.untagged), r)
    r = b.command("APPEND", "shared/alice/Work", Literal(message("from bob")))
    R.check("APPEND without i is NO [NOPERM]", r.status == "NO" and r.code == "NOPERM", r)
    r = b.command("GETACL", "shared/alice/Work")
    R.check("GETACL without a is NO [NOPERM]", r.status == "NO" and r.code == "NOPERM", r)
    r = b.command("SETACL", "shared/alice/Work", "bob", "lrswite")
    R.check("SETACL without a is NO [NOPERM]", r.status == "NO" and r.code == "NOPERM", r)
    _, acl = getacl(a, "Work")
    R.equal("... and changed nothing", acl.get("bob"), "lr")
    # More rights: bob may write now.
    r = a.command("SETACL", "Work", "bob", "+iswte")
    R.check("SETACL Work bob +iswte OK", r.ok, r)
    r = b.command("SELECT", "shared/alice/Work")
    R.check("bob with lrswite: SELECT is READ-WRITE", r.ok and r.code == "READ-WRITE", r)
    r = b.command("APPEND", "shared/alice/Work", Literal(message("from bob")))
    R.check("bob APPENDs to shared/alice/Work", r.ok and r.code == "APPENDUID", r)
    r = b.command("NOOP")
    r = b.command("STORE", "1:*", "+FLAGS", r"(\Seen \Flagged $Label)")
    R.check("bob STOREs \\Seen, \\Flagged and a keyword", r.ok, r)
    r = a.command("SELECT", "Work")
    R.equal("alice sees bob's message", r.number("EXISTS"), 2)
    r = a.command("FETCH", "1:*", "(FLAGS)")
    flags = [f[1].get("FLAGS") for f in r.fetches()]
    R.check("alice sees bob's flags", all(b"\\Flagged" in (fl or []) for fl in flags), flags)
    # Take w away: bob's session, still selected, is refused at once.
    r = a.command("SETACL", "Work", "bob", "-w")
    R.check("SETACL Work bob -w OK", r.ok, r)
    r = b.command("STORE", "1", "+FLAGS", r"(\Answered)")
    R.check("bob, still selected, STORE \\Answered without w: NO [NOPERM]",
            r.status == "NO" and r.code == "NOPERM", r)
    r = b.command("STORE", "1", "-FLAGS", r"(\Seen)")
    R.check("... STORE \\Seen with s still OK", r.ok, r)
    r = b.command("STORE", "1", "FLAGS", r"(\Seen)")
    R.check("... replacing all flags needs w too: NO [NOPERM]",
            r.status == "NO" and r.code == "NOPERM", r)
    r = b.command("STORE", "2", "+FLAGS", r"(\Deleted)")
    R.check("... STORE \\Deleted with t OK", r.ok, r)
    a.command("SETACL", "Work", "bob", "-e")
    r = b.command("EXPUNGE")
    R.check("EXPUNGE without e: NO [NOPERM]", r.status == "NO" and r.code == "NOPERM", r)
    a.command("SETACL", "Work", "bob", "+e")
    r = b.command("EXPUNGE")
    R.check("EXPUNGE with e: OK and expunges", r.ok and r.expunges() == [2], r)
    a.command("SETACL", "Work", "bob", "-t")
    r = b.command("STORE", "1", "+FLAGS", r"(\Deleted)")
    R.check("STORE \\Deleted without t: NO [NOPERM]", r.status == "NO" and r.code == "NOPERM", r)
    r = b.command("MOVE", "1", "INBOX")
    R.check("MOVE out without t: NO [NOPERM]", r.status == "NO" and r.code == "NOPERM", r)
    # COPY between two users' mailboxes, both ways.
    r = b.command("STATUS", "INBOX", "(MESSAGES)")
    before = int(re.search(rb"MESSAGES (\d+)", b"".join(r.untagged)).group(1))
    r = b.command("COPY", "1", "INBOX")
    R.check("bob COPYs from alice's mailbox into his INBOX", r.ok and r.code == "COPYUID", r)
    r = b.command("STATUS", "INBOX", "(MESSAGES)")
    R.check("... and it is there", b"MESSAGES %d" % (before + 1) in b"".join(r.untagged),
            r.untagged)
    b.command("SELECT", "INBOX")
    b.command("APPEND", "INBOX", Literal(message("bob's own")))
    r = b.command("UID", "SEARCH", "SUBJECT", '"bob\'s own"')
    uid = r.search()[0][-1]
    r = b.command("UID", "MOVE", str(uid), "shared/alice/Work")
    R.check("bob MOVEs his own message into shared/alice/Work (i there)", r.ok, r)
    a.command("NOOP")
    r = a.command("UID", "SEARCH", "SUBJECT", '"bob\'s own"')
    R.check("alice sees it in Work", r.ok and len(r.search()[0]) == 1, r.untagged)
    a.command("SETACL", "Work", "bob", "-i")
    r = b.command("COPY", "1", "shared/alice/Work")
    R.check("COPY into it without i: NO [NOPERM]", r.status == "NO" and r.code == "NOPERM", r)
    b.command("SELECT", "shared/alice/Work")
    # r taken away while selected: reading stops at the next command.
    a.command("SETACL", "Work", "bob", "-r")
    for cmd in (("SEARCH", "ALL"), ("FETCH", "1", "(FLAGS)"), ("SORT", "(DATE)", "UTF-8", "ALL"),
                ("THREAD", "REFERENCES", "UTF-8", "ALL"), ("UID", "FETCH", "1:*", "(UID)")):
        r = b.command(*cmd)
        R.check("%s without r, still selected: NO [NOPERM]" % cmd[0],
                r.status == "NO" and r.code == "NOPERM" and not r.fetches(), r)
    r = b.command("UNSELECT")
    R.check("... UNSELECT still works", r.ok, r)
    a.command("SETACL", "Work", "bob", "+r")
    b.command("SELECT", "shared/alice/Work")
    # All rights gone: the next command answers as for a missing mailbox.
    r = a.command("DELETEACL", "Work", "bob")
    R.check("DELETEACL Work bob OK", r.ok, r)
    r = b.command("FETCH", "1", "(FLAGS)")
    R.check("bob, still selected, FETCH after DELETEACL: NO [NONEXISTENT]",
            r.status == "NO" and r.code == "NONEXISTENT", r)
    r = b.command("LIST", '""', "shared/alice/*")
    R.check("... and Work left his LIST", "shared/alice/Work" not in listed(r), listed(r))
    # CLOSE without e expunges nothing.
    a.command("SETACL", "Work", "bob", "lrst")
    b.command("SELECT", "shared/alice/Work")
    b.command("STORE", "1", "+FLAGS", r"(\Deleted)")
    b.command("CLOSE")
    r = a.command("STATUS", "Work", "(MESSAGES)")
    R.check("CLOSE by bob without e expunged nothing (alice's and the moved one)",
            b"MESSAGES 2" in b"".join(r.untagged), r.untagged)
    a.logout()
    b.logout()


def t_create_delete_shared():
    """CREATE below another user's mailbox needs k on the parent (and
    copies the parent's ACL); DELETE needs x."""
    a = connect("alice")
    b = connect("bob")
    c = connect("carol")
    a.command("CREATE", "Proj")
    a.command("SETACL", "Proj", "bob", "lr")
    r = b.command("CREATE", "shared/alice/Proj/Sub")
    R.check("bob CREATE below Proj without k: NO [NOPERM]",
            r.status == "NO" and r.code == "NOPERM", r)
    a.command("SETACL", "Proj", "bob", "+k")
    r = b.command("CREATE", "shared/alice/Proj/Sub")
    R.check("bob CREATE shared/alice/Proj/Sub with k: OK", r.ok, r)
    r = a.command("LIST", '""', "Proj/*")
    R.check("alice has Proj/Sub", "Proj/Sub" in listed(r), listed(r))
    _, acl = getacl(a, "Proj/Sub")
    R.equal("Proj/Sub got Proj's ACL", acl.get("bob"), "lrkc")
    r = b.command("LIST", '""', "shared/alice/Proj/*")
    R.check("bob lists it", "shared/alice/Proj/Sub" in listed(r), listed(r))
    r = b.command("CREATE", "shared/alice/Proj/Sub")
    R.check("CREATE it again: NO [ALREADYEXISTS]",
            r.status == "NO" and r.code == "ALREADYEXISTS", r)
    r = b.command("CREATE", "shared/alice/NewTop")
    R.check("CREATE at the top of alice's namespace: NO [CANNOT]",
            r.status == "NO" and r.code == "CANNOT", r)
    hidden = c.command("CREATE", "shared/alice/Proj/X")
    missing = c.command("CREATE", "shared/alice/NoSuch/X")
    R.check("carol (no rights) CREATE below Proj answers as below a missing mailbox",
            hidden.status == "NO" and
            hidden.line.split(b" ", 1)[1] == missing.line.split(b" ", 1)[1], (hidden, missing))
    r = b.command("DELETE", "shared/alice/Proj/Sub")
    R.check("bob DELETE without x: NO [NOPERM]", r.status == "NO" and r.code == "NOPERM", r)
    r = a.command("SETACL", "Proj/Sub", "bob", "+x")
    r = b.command("DELETE", "shared/alice/Proj/Sub")
    R.check("bob DELETE with x: OK", r.ok, r)
    r = a.command("LIST", '""', "Proj/*")
    R.check("Proj/Sub is gone for alice", "Proj/Sub" not in listed(r), listed(r))
    hidden = c.command("DELETE", "shared/alice/Proj")
    missing = c.command("DELETE", "shared/alice/NoSuch")
    R.check("carol DELETE of Proj answers as for a missing mailbox",
            hidden.status == "NO" and
            hidden.line.split(b" ", 1)[1] == missing.line.split(b" ", 1)[1], (hidden, missing))
    for x in (a, b, c):
        x.logout()


def t_rename_shared():
    """RENAME inside one owner's tree (shared/OWNER/ or Public/) is the
    owner's rename: x on the mailbox, k on the new parent (RFC 4314 4);
    across owners or namespaces it is NO [CANNOT]; the ACL follows."""
    a = connect("alice")
    b = connect("bob")
    c = connect("carol")
    for box in ("RenA", "RenA/Kid", "Dest"):
        a.command("CREATE", box)
    a.command("SETACL", "RenA", "bob", "lr")
    a.command("SETACL", "Dest", "bob", "lr")
    r = b.command("RENAME", "shared/alice/RenA", "shared/alice/RenB")
    R.check("bob RENAME without x: NO [NOPERM]", r.status == "NO" and r.code == "NOPERM", r)
    hidden = c.command("RENAME", "shared/alice/RenA", "shared/alice/RenB")
    missing = c.command("RENAME", "shared/alice/NoSuch", "shared/alice/RenB")
    R.check("carol (no l) RENAME answers NO [NONEXISTENT] as for a missing mailbox",
            hidden.status == "NO" and hidden.code == "NONEXISTENT" and
            hidden.line.split(b" ", 1)[1] == missing.line.split(b" ", 1)[1], (hidden, missing))
    a.command("SETACL", "RenA", "bob", "+x")
    for src, dst in (("shared/alice/RenA", "shared/carol/RenA"),
                     ("shared/alice/RenA", "RenA"), ("RenMine", "shared/alice/RenMine"),
                     ("shared/alice/RenA", "Public/RenA")):
        r = b.command("RENAME", src, dst)
        R.check("RENAME %s %s across owners: NO [CANNOT]" % (src, dst),
                r.status == "NO" and r.code == "CANNOT", r)
    r = b.command("RENAME", "shared/alice/RenA", "shared/alice/RenB")
    R.check("bob RENAME shared/alice/RenA shared/alice/RenB with x: OK", r.ok, r)
    got = listed(a.command("LIST", '""', "*"))
    R.check("alice's LIST has RenB and RenB/Kid, no RenA",
            "RenB" in got and "RenB/Kid" in got and "RenA" not in got and
            "RenA/Kid" not in got, got)
    got = listed(b.command("LIST", '""', "shared/alice/*"))
    R.check("bob's LIST has shared/alice/RenB, no shared/alice/RenA",
            "shared/alice/RenB" in got and "shared/alice/RenA" not in got, got)
    _, acl = getacl(a, "RenB")
    R.equal("the ACL followed the rename", acl.get("bob"), "lrxc")
    r = b.command("RENAME", "shared/alice/RenB", "shared/alice/Dest/RenB")
    R.check("bob RENAME into Dest without k on Dest: NO [NOPERM]",
            r.status == "NO" and r.code == "NOPERM", r)
    a.command("SETACL", "Dest", "bob", "+k")
    r = b.command("RENAME", "shared/alice/RenB", "shared/alice/Dest/RenB")
    R.check("bob RENAME into Dest with k: OK", r.ok, r)
    got = listed(a.command("LIST", '""', "Dest/*"))
    R.check("alice has Dest/RenB and Dest/RenB/Kid",
            "Dest/RenB" in got and "Dest/RenB/Kid" in got, got)
    got = listed(b.command("LIST", '""', "shared/alice/*"))
    R.check("bob lists shared/alice/Dest/RenB", "shared/alice/Dest/RenB" in got, got)
    r = b.command("RENAME", "shared/alice/Dest/RenB", "shared/alice/Top")
    R.check("moving up to the top of alice's tree: NO [CANNOT]",
            r.status == "NO" and r.code == "CANNOT", r)
    if T.kind == "starling":
        rc = T.node.cli("mailbox", "create", "--public", "Board").returncode
        rc2 = T.node.cli("acl", "set", "-m", "Public/Board", "bob", "lrx").returncode
        R.check("public Board made, bob given lrx", rc == 0 and rc2 == 0, (rc, rc2))
        r = c.command("RENAME", "Public/Board", "Public/Board2")
        R.check("carol (no rights) RENAME Public/Board: NO [NONEXISTENT]",
                r.status == "NO" and r.code == "NONEXISTENT", r)
        r = b.command("RENAME", "Public/Board", "Public/Board2")
        R.check("bob (x) RENAME Public/Board Public/Board2: OK", r.ok, r)
        got = listed(b.command("LIST", '""', "Public/*"))
        R.check("bob lists Public/Board2, not Public/Board",
                "Public/Board2" in got and "Public/Board" not in got, got)
        _, rights = myrights(b, "Public/Board2")
        R.equal("bob's rights followed", rights, "lrxc")
    for x in (a, b, c):
        x.logout()


def t_idle_shared():
    """alice IDLEs in Work, bob APPENDs through shared/: alice hears it."""
    a = connect("alice")
    a.command("SETACL", "Work", "bob", "lri")
    a.command("SELECT", "Work")
    b = connect("bob")
    tag = a.next_tag()
    a.send_command(tag, ["IDLE"])
    line = a.read_line()
    R.check("IDLE continues", line.startswith(b"+"), line)
    r = b.command("APPEND", "shared/alice/Work", Literal(message("idle")))
    R.check("bob APPENDs", r.ok, r)
    got = a.read_untagged_until(lambda g: any(u.rstrip().endswith(b"EXISTS") for u in g), 5.0)
    R.check("alice's IDLE reports EXISTS for bob's APPEND within 5 s",
            any(u.rstrip().endswith(b"EXISTS") for u in got), got)
    a.send(b"DONE\r\n")
    a.wait_tagged(tag)
    a.logout()
    b.logout()


def t_admin_tool():
    """`starling acl get|set|delete|debug`: the same records as IMAP."""
    if T.kind != "starling":
        return
    a = connect("alice")
    a.command("CREATE", "Admin")

    def cli(*args):
        r = T.node.cli("acl", *args)
        return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    rc, out, err = cli("set", "-u", "alice", "-m", "Admin", "bob", "lrs")
    R.check("acl set exits 0 and prints the record", rc == 0 and out.strip() == "bob lrs",
            (rc, out, err))
    _, acl = getacl(a, "Admin")
    R.equal("IMAP GETACL shows what acl set made", acl.get("bob"), "lrs")
    rc, out, err = cli("set", "-u", "alice", "-m", "Admin", "bob", "-s")
    R.check("acl set with -s removes s", rc == 0 and out.strip() == "bob lr", (rc, out, err))
    rc, out, err = cli("set", "-u", "alice", "-m", "Admin", "-carol", "w")
    R.check("acl set of a negative identifier", rc == 0, (rc, out, err))
    rc, out, err = cli("get", "-u", "alice", "-m", "Admin")
    R.check("acl get lists the records and the owner's implicit rights",
            rc == 0 and sorted(out.split("\n")) ==
            sorted(["-carol w", "alice lrswipkxtea", "bob lr", ""]), (rc, out, err))
    rc, out, err = cli("set", "-u", "alice", "-m", "Admin", "bob", "lrz")
    R.check("acl set with an unknown right: exit 1, one line naming it",
            rc == 1 and "'z'" in err and err.count("\n") == 1, (rc, out, err))
    rc, out, err = cli("set", "-u", "alice", "-m", "NoSuch", "bob", "lr")
    R.check("acl set on a missing mailbox: exit 1, one line",
            rc == 1 and "does not exist" in err and err.count("\n") == 1, (rc, out, err))
    rc, out, err = cli("set", "-u", "alice", "-m", "Admin", "bo b", "lr")
    R.check("acl set with a bad identifier: exit 1", rc == 1 and err.count("\n") == 1,
            (rc, out, err))
    rc, out, err = cli("set", "-u", "alice", "-m", "Admin", "bob")
    R.check("acl set without rights: usage, exit 2", rc == 2, (rc, out, err))
    _, acl = getacl(a, "Admin")
    R.equal("the refused commands changed nothing", acl.get("bob"), "lr")
    rc, out, err = cli("debug", "-u", "bob", "-m", "shared/alice/Admin")
    R.check("acl debug explains bob's rights", rc == 0 and
            'granted by "bob" lr' in out and 'result: "lr"' in out and
            "may APPEND, COPY and MOVE into it (i): no" in out and
            "may see it (LIST, LSUB) (l): yes" in out, (rc, out, err))
    rc, out, err = cli("debug", "-u", "carol", "-m", "shared/alice/Admin")
    R.check("acl debug for carol: denied by -carol, nothing granted",
            rc == 0 and 'denied by "-carol" w' in out and 'result: ""' in out and
            "answers as for a missing mailbox" in out, (rc, out, err))
    rc, out, err = cli("debug", "-u", "alice", "-m", "Admin")
    R.check("acl debug for the owner: every right by default",
            rc == 0 and 'result: "lrswipkxtea"' in out, (rc, out, err))
    rc, out, err = cli("delete", "-u", "alice", "-m", "Admin", "bob")
    R.check("acl delete exits 0", rc == 0 and out.strip() == "bob (none)", (rc, out, err))
    _, acl = getacl(a, "Admin")
    R.check("IMAP GETACL no longer shows bob", "bob" not in acl, acl)
    a.logout()


def t_owner_default():
    """acl_owner_rights = lrswipkte (no x): the owner's rights while no
    record names them, on a node of its own.  DELETE and RENAME of an own
    mailbox are NO [NOPERM]; MYRIGHTS, GETACL, LISTRIGHTS, `starling acl get`
    and `acl debug` show it; a SETACL naming the owner still wins; l and a
    are always kept; a bad value stops starlingd (and starling) with one
    line."""
    global T
    if T.kind != "starling":
        return
    import os
    import subprocess
    from harness.starling import Cluster
    from imapcommon import Target
    c = Cluster(n=1, users=USERS, extra_config={"acl_owner_rights": "lrswipkte"},
                daemon=T.server.daemon, cli=T.server.cli)
    saved = T
    try:
        c.start_all()
        T = Target("starling", c, c.nodes[0])
        a = connect("alice")
        r = a.command("CREATE", "Proj")
        R.check("default node: CREATE Proj (k at the top from the default)", r.ok, r)
        r = a.command("CREATE", "Proj/Sub")
        R.check("default node: CREATE Proj/Sub", r.ok, r)
        r, rights = myrights(a, "Proj")
        R.equal("default node: MYRIGHTS Proj is the default, l and a kept", rights, "lrswipkteacd")
        r, acl = getacl(a, "Proj")
        R.equal("default node: GETACL shows the owner's default", acl, {"alice": "lrswipkteacd"})
        r = a.command("LISTRIGHTS", "Proj", "alice")
        lr = r.find("LISTRIGHTS")
        R.check("default node: LISTRIGHTS for the owner still requires l and a only",
                r.ok and lr and lr[0][3] == b"la", r.untagged)
        r = a.command("DELETE", "Proj/Sub")
        R.check("default node: DELETE Proj/Sub is NO [NOPERM]", r.status == "NO" and
                r.code == "NOPERM", r)
        r = a.command("RENAME", "Proj", "Other")
        R.check("default node: RENAME Proj is NO [NOPERM]", r.status == "NO" and
                r.code == "NOPERM", r)
        r = a.command("LIST", '""', "*")
        R.check("default node: Proj and Proj/Sub are still there",
                "Proj" in listed(r) and "Proj/Sub" in listed(r), r.untagged)
        rc = T.node.cli("acl", "get", "-u", "alice", "-m", "Proj")
        out = rc.stdout.decode(errors="replace")
        R.check("default node: acl get shows the owner's default",
                rc.returncode == 0 and out == "alice lrswipktea\n", (rc.returncode, out))
        rc = T.node.cli("acl", "debug", "-u", "alice", "-m", "Proj")
        out = rc.stdout.decode(errors="replace")
        R.check("default node: acl debug names acl_owner_rights and refuses DELETE",
                rc.returncode == 0 and "acl_owner_rights" in out and
                'result: "lrswipktea"' in out and "may DELETE it, RENAME it (x): no" in out,
                (rc.returncode, out))
        # The owner's own record wins over the default, both ways.
        r = a.command("SETACL", "Proj/Sub", "alice", "lrswipkxtea")
        R.check("default node: SETACL Proj/Sub alice lrswipkxtea OK", r.ok, r)
        _, rights = myrights(a, "Proj/Sub")
        R.equal("default node: MYRIGHTS shows x from the owner's record", rights,
                "lrswipkxteacd")
        r = a.command("DELETE", "Proj/Sub")
        R.check("default node: DELETE Proj/Sub OK with the owner's record", r.ok, r)
        r = a.command("SETACL", "Proj", "alice", "r")
        R.check("default node: SETACL Proj alice r OK", r.ok, r)
        _, rights = myrights(a, "Proj")
        R.equal("default node: an owner named with r keeps l and a", rights, "lra")
        r = a.command("CREATE", "Proj/Kid")
        R.check("default node: CREATE Proj/Kid without k on Proj is NO [NOPERM]",
                r.status == "NO" and r.code == "NOPERM", r)
        r = a.command("DELETEACL", "Proj", "alice")
        R.check("default node: DELETEACL Proj alice OK", r.ok, r)
        _, rights = myrights(a, "Proj")
        R.equal("default node: back to the default", rights, "lrswipkteacd")
        # Other users' rights are their records only.
        r = a.command("SETACL", "Proj", "bob", "lrx")
        R.check("default node: SETACL Proj bob lrx OK", r.ok, r)
        b = connect("bob")
        _, rights = myrights(b, "shared/alice/Proj")
        R.equal("default node: bob's rights are his record's", rights, "lrxc")
        b.logout()
        a.logout()
        # A bad value: one line on stderr, nothing started.
        n = T.node
        T.stop()
        bad = os.path.join(n.dir, "bad.conf")
        with open(bad, "w") as f:
            f.write("\n".join(n.config_lines()).replace("acl_owner_rights = lrswipkte",
                                                        "acl_owner_rights = lrswz") + "\n")
        want = "%s:%d: acl_owner_rights: unknown right 'z'" % (
            bad, n.config_lines().index("acl_owner_rights = lrswipkte") + 1)
        for what, argv in (("starlingd", [c.daemon, "-c", bad]),
                           ("starlingd -n", [c.daemon, "-c", bad, "-n"]),
                           ("starling status", [c.cli, "-c", bad, "status"])):
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
            err = p.stderr.decode(errors="replace")
            R.check("%s refuses acl_owner_rights = lrswz with one line naming file, line, 'z'"
                    % what, p.returncode != 0 and err.count("\n") == 1 and want in err,
                    (p.returncode, err, want))
    finally:
        T = saved
        c.close()
        reps = c.sanitizer_reports()
        R.check("no sanitizer report on the default node", not reps, reps)


def t_public():
    """Public/NAME: made by `starling mailbox create --public`, rights only
    from its ACL (nobody is its owner)."""
    if T.kind != "starling":
        return

    def cli(*args):
        r = T.node.cli(*args)
        return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    rc, out, err = cli("mailbox", "create", "--public", "News")
    R.check("mailbox create --public News exits 0", rc == 0 and "Public/News" in out,
            (rc, out, err))
    rc, out, err = cli("mailbox", "create", "--public", "News")
    R.check("... a second time: exit 1, 'exists'", rc == 1 and "exists" in err, (rc, out, err))
    b = connect("bob")
    r = b.command("LIST", '""', "*")
    R.check("without an ACL nobody sees Public/News", "Public/News" not in listed(r), listed(r))
    hidden = b.command("SELECT", "Public/News")
    missing = b.command("SELECT", "Public/NoSuch")
    R.check("... and SELECT answers as for a missing mailbox",
            hidden.status == "NO" and hidden.line.split(b" ", 1)[1] ==
            missing.line.split(b" ", 1)[1], (hidden, missing))
    rc, out, err = cli("acl", "set", "-m", "Public/News", "anyone", "lr")
    R.check("acl set -m Public/News anyone lr", rc == 0, (rc, out, err))
    rc, out, err = cli("acl", "set", "-m", "Public/News", "alice", "lrswipkxtea")
    R.check("acl set -m Public/News alice (all)", rc == 0, (rc, out, err))
    rc, out, err = cli("acl", "get", "-m", "Public/News")
    R.check("acl get -m Public/News: the records, no owner line",
            rc == 0 and sorted(out.split("\n")) == ["", "alice lrswipkxtea", "anyone lr"],
            (rc, out, err))
    r = b.command("LIST", '""', "*")
    got = listed(r)
    R.check("bob's LIST shows Public (\\Noselect) and Public/News",
            "\\Noselect" in got.get("Public", []) and "Public/News" in got, got)
    r = b.command("LIST", '""', "Public/%")
    R.equal("LIST Public/%", sorted(listed(r)), ["Public/News"])
    _, rights = myrights(b, "Public/News")
    R.equal("bob's MYRIGHTS on Public/News (anyone)", rights, "lr")
    a = connect("alice")
    r = a.command("APPEND", "Public/News", Literal(message("news 1")))
    R.check("alice (i) APPENDs to Public/News", r.ok and r.code == "APPENDUID", r)
    r = b.command("APPEND", "Public/News", Literal(message("bob's news")))
    R.check("bob (no i) APPEND: NO [NOPERM]", r.status == "NO" and r.code == "NOPERM", r)
    r = b.command("SELECT", "Public/News")
    R.check("bob SELECTs Public/News [READ-ONLY] and sees alice's message",
            r.ok and r.code == "READ-ONLY" and r.number("EXISTS") == 1, r)
    r = a.command("SETACL", "Public/News", "bob", "lrsi")
    R.check("alice (a) SETACL Public/News bob lrsi over IMAP", r.ok, r)
    r = b.command("APPEND", "Public/News", Literal(message("bob's news")))
    R.check("bob APPENDs now", r.ok, r)
    r = a.command("GETACL", "Public/News")
    R.check("GETACL Public/News has no owner entry",
            r.ok and b".public" not in b"".join(r.untagged), r.untagged)
    r = a.command("CREATE", "Public/Other")
    R.check("CREATE at the top of Public/ over IMAP is NO [CANNOT]",
            r.status == "NO" and r.code == "CANNOT", r)
    r = a.command("CREATE", "Public/News/Archive")
    R.check("alice (k on Public/News) CREATE Public/News/Archive: OK", r.ok, r)
    r = b.command("LIST", '""', "Public/*")
    R.check("bob (News's ACL copied) lists Public/News/Archive",
            "Public/News/Archive" in listed(r), listed(r))
    rc, out, err = cli("acl", "debug", "-u", "carol", "-m", "Public/News")
    R.check("acl debug for carol on Public/News: anyone's lr",
            rc == 0 and 'granted by "anyone" lr' in out and 'result: "lr"' in out, (rc, out, err))
    a.logout()
    b.logout()


SECTIONS = [
    ("capability", t_capability),
    ("owner rights", t_owner_rights),
    ("bad input", t_bad_input),
    ("obsolete and negative rights", t_obsolete_and_negative),
    ("virtual c and d in responses (RFC 4314 2.1.1)", t_virtual_c_and_d),
    ("shared listing", t_shared_listing),
    ("not visible", t_not_visible),
    ("enforcement", t_enforcement),
    ("create and delete in shared/", t_create_delete_shared),
    ("idle shared", t_idle_shared),
    ("admin tool", t_admin_tool),
    ("owner default rights", t_owner_default),
    ("public", t_public),
    ("rename in shared/ and Public/", t_rename_shared),
]


def set_target(t):
    global T
    T = t


if __name__ == "__main__":
    sys.exit(run_sections(R, SECTIONS, __doc__.splitlines()[0], USERS, set_target))
