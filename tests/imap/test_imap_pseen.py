#!/usr/bin/env python3
"""Private \\Seen (SPEC.md 7.7) on one real server: each user's own \\Seen.

The node runs without shared_seen in its config: private \\Seen is the
default (tests/cluster/test_pseen.py runs it across nodes).  alice shares a mailbox with bob
and carol: bob's STORE +FLAGS/-FLAGS/FLAGS (\\Seen), the \\Seen a FETCH
BODY[] sets, SEARCH SEEN/UNSEEN, STATUS UNSEEN, SELECT's [UNSEEN n], FETCH
FLAGS, untagged FETCHes in his other session, and CONDSTORE/QRESYNC
modseqs are his own; alice (the owner) sees and changes the message's own
\\Seen; carol sees neither.  Other flags stay shared.  A public mailbox
gives every user their own, and nobody the message's.  An expunge takes
the records along (STATUS UNSEEN stays right).  A second node with
shared_seen = shared shows bob's \\Seen to alice (the message's own flag).

The last line is "imap-pseen: N passed, M failed"; exit 0 only if nothing
failed.
"""
import sys

from imapcommon import Report, run_sections
from harness.imapwire import Literal

USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
R = Report("imap-pseen")
T = None
BOX = "shared/alice/Team"


def connect(user):
    from harness.imapwire import Client
    c = Client(T.host, T.port, timeout=20.0)
    r = c.login(user, USERS[user])
    if not r.ok:
        raise RuntimeError("login of %s failed: %r" % (user, r))
    return c


def message(subject):
    return ("From: a@example.org\r\nTo: b@example.net\r\nSubject: %s\r\n"
            "Date: Mon, 15 Jul 2024 12:00:00 +0000\r\n\r\nbody of %s\r\n" % (subject, subject))


def flags_of(c):
    """{seq: set of flags} of FETCH 1:* (FLAGS) in the selected mailbox."""
    r = c.command("FETCH", "1:*", "(FLAGS)")
    return {seq: {f.decode() for f in it.get("FLAGS", [])} - {"\\Recent"}
            for seq, it in r.fetches()}


def seen_seqs(c):
    return sorted(s for s, f in flags_of(c).items() if "\\Seen" in f)


def search(c, *keys):
    r = c.command("SEARCH", *keys)
    return sorted(r.search()[0]) if r.ok else r


def status_unseen(c, box):
    r = c.command("STATUS", box, "(UNSEEN MESSAGES)")
    got = r.find("STATUS")
    if not r.ok or not got:
        return r
    toks = got[0][2]
    d = {toks[i].decode().upper(): int(toks[i + 1]) for i in range(0, len(toks), 2)}
    return d.get("UNSEEN")


def unseen_code(r):
    v = r.codes().get("UNSEEN")
    return int(v) if v is not None else None


def t_setup():
    a = connect("alice")
    R.check("alice CREATE Team", a.command("CREATE", "Team").ok)
    for i in (1, 2, 3):
        flags = "(\\Seen)" if i == 3 else "()"
        r = a.command("APPEND", "Team", flags, Literal(message("m%d" % i)))
        R.check("alice APPENDs m%d" % i, r.ok, r)
    R.check("SETACL Team bob lrswit", a.command("SETACL", "Team", "bob", "lrswit").ok)
    R.check("SETACL Team carol lrs", a.command("SETACL", "Team", "carol", "lrs").ok)
    a.logout()


def t_seen_is_private():
    a, b, c = connect("alice"), connect("bob"), connect("carol")
    r = b.command("SELECT", BOX)
    R.check("bob SELECTs %s" % BOX, r.ok and r.number("EXISTS") == 3, r)
    R.equal("bob's [UNSEEN n]: alice's own \\Seen of m3 is not his", unseen_code(r), 1)
    R.equal("bob sees no \\Seen at first", seen_seqs(b), [])
    r = a.command("SELECT", "Team")
    R.equal("alice's [UNSEEN n] (the message's own flags)", unseen_code(r), 1)
    R.equal("alice sees the message's own \\Seen (m3)", seen_seqs(a), [3])

    r = b.command("STORE", "1", "+FLAGS", "(\\Seen)")
    R.check("bob STORE 1 +FLAGS (\\Seen) OK", r.ok, r)
    R.check("... its FETCH shows \\Seen", any(s == 1 and b"\\Seen" in it.get("FLAGS", [])
                                             for s, it in r.fetches()), r.untagged)
    R.equal("bob sees m1 seen", seen_seqs(b), [1])
    R.equal("alice still sees only m3 seen", seen_seqs(a), [3])
    r = c.command("SELECT", BOX)
    R.equal("carol's [UNSEEN n]", unseen_code(r), 1)
    R.equal("carol sees nothing seen", seen_seqs(c), [])

    # The \Seen a FETCH BODY[] sets is bob's.
    r = b.command("FETCH", "2", "(BODY[])")
    R.check("bob FETCH 2 BODY[] OK with FLAGS (\\Seen)",
            r.ok and any(s == 2 and b"\\Seen" in it.get("FLAGS", []) for s, it in r.fetches()),
            r.untagged)
    R.equal("bob sees m1 and m2 seen", seen_seqs(b), [1, 2])
    R.equal("alice still sees only m3", seen_seqs(a), [3])
    R.equal("carol still sees nothing", seen_seqs(c), [])
    r = c.command("FETCH", "3", "(BODY.PEEK[])")
    R.check("carol BODY.PEEK[] sets nothing", r.ok and seen_seqs(c) == [], r)

    R.equal("bob SEARCH UNSEEN", search(b, "UNSEEN"), [3])
    R.equal("bob SEARCH SEEN", search(b, "SEEN"), [1, 2])
    R.equal("bob SEARCH NOT SEEN", search(b, "NOT", "SEEN"), [3])
    R.equal("alice SEARCH UNSEEN", search(a, "UNSEEN"), [1, 2])
    R.equal("carol SEARCH UNSEEN", search(c, "UNSEEN"), [1, 2, 3])
    r = b.command("SORT", "(ARRIVAL)", "UTF-8", "UNSEEN")
    got = r.find("SORT")
    R.equal("bob SORT ... UNSEEN filters by his \\Seen",
            [int(x) for x in got[0][1:]] if got else r, [3])

    o = {u: connect(u) for u in ("alice", "bob", "carol")}
    R.equal("STATUS UNSEEN for bob", status_unseen(o["bob"], BOX), 1)
    R.equal("STATUS UNSEEN for alice", status_unseen(o["alice"], "Team"), 2)
    R.equal("STATUS UNSEEN for carol", status_unseen(o["carol"], BOX), 3)
    r = o["bob"].command("SELECT", BOX)
    R.equal("bob's second session: [UNSEEN 3]", unseen_code(r), 3)

    # Replace: bob's \Seen follows the list, the other flags are the
    # message's, and alice's own \Seen of m3 stays.
    r = b.command("STORE", "3", "FLAGS", "(\\Flagged \\Seen)")
    R.check("bob STORE 3 FLAGS (\\Flagged \\Seen) OK", r.ok, r)
    R.equal("bob's m3", flags_of(b).get(3), {"\\Flagged", "\\Seen"})
    R.equal("alice's m3: her \\Seen kept, bob's \\Flagged shared", flags_of(a).get(3),
            {"\\Flagged", "\\Seen"})
    R.equal("carol's m3: \\Flagged only", flags_of(c).get(3), {"\\Flagged"})
    r = b.command("STORE", "1", "FLAGS", "(\\Flagged)")
    R.check("bob STORE 1 FLAGS (\\Flagged) OK", r.ok, r)
    R.equal("bob's m1: his \\Seen gone", flags_of(b).get(1), {"\\Flagged"})
    r = b.command("STORE", "2", "-FLAGS", "(\\Seen)")
    R.check("bob STORE 2 -FLAGS (\\Seen) OK", r.ok, r)
    R.equal("bob sees only m3 seen now", seen_seqs(b), [3])
    r = a.command("STORE", "1:3", "-FLAGS", "(\\Seen)")
    R.check("alice (owner) STORE 1:3 -FLAGS (\\Seen)", r.ok, r)
    R.equal("alice sees none seen", seen_seqs(a), [])
    R.equal("bob still sees m3 seen", seen_seqs(b), [3])

    # bob's other session hears of his change; alice's and carol's do not.
    r = o["bob"].command("NOOP")
    R.check("bob's other session gets FETCH (FLAGS) for his changes",
            any(s == 3 and b"\\Seen" in it.get("FLAGS", []) for s, it in r.fetches()),
            r.untagged)
    r = c.command("NOOP")
    R.check("carol's session shows no \\Seen of bob's",
            not any(b"\\Seen" in it.get("FLAGS", []) for _, it in r.fetches()), r.untagged)
    for x in [a, b, c] + list(o.values()):
        x.logout()


def t_condstore():
    a, b, c = connect("alice"), connect("bob"), connect("carol")
    for x in (a, b, c):
        x.command("ENABLE", "CONDSTORE", "QRESYNC")
    r = b.command("SELECT", BOX)
    h0 = int(r.codes().get("HIGHESTMODSEQ", b"0"))
    R.check("bob's SELECT has HIGHESTMODSEQ", h0 > 0, r.untagged)
    c.command("SELECT", BOX)
    a.command("SELECT", "Team")
    r = c.command("STORE", "1", "+FLAGS", "(\\Seen)")
    R.check("carol marks m1 seen", r.ok, r)
    r = b.command("FETCH", "1:*", "(FLAGS)", "(CHANGEDSINCE %d)" % h0)
    R.check("bob FETCH CHANGEDSINCE before carol's change: nothing of carol's",
            r.ok and r.fetches() == [], r.untagged)
    r = b.command("NOOP")
    R.check("bob's NOOP shows no change of carol's",
            not any(b"\\Seen" in it.get("FLAGS", []) for _, it in r.fetches()), r.untagged)
    r = a.command("FETCH", "1:*", "(FLAGS)", "(CHANGEDSINCE %d)" % h0)
    R.check("alice FETCH CHANGEDSINCE: nothing either", r.ok and r.fetches() == [], r.untagged)
    r = b.command("STATUS", BOX, "(HIGHESTMODSEQ)")
    h1 = int(r.find("STATUS")[0][2][1])
    R.check("HIGHESTMODSEQ rose with carol's change", h1 > h0, (h0, h1))

    r = b.command("STORE", "2", "+FLAGS", "(\\Seen)")
    R.check("bob marks m2 seen", r.ok, r)
    got = [it for s, it in r.fetches() if s == 2]
    m2 = int(got[0]["MODSEQ"][0]) if got and "MODSEQ" in got[0] else None
    R.check("... his FETCH has a MODSEQ above carol's change", m2 is not None and m2 > h1,
            (m2, h1, r.untagged))
    r = b.command("FETCH", "1:*", "(FLAGS MODSEQ)", "(CHANGEDSINCE %d)" % h1)
    R.equal("bob FETCH CHANGEDSINCE h1: m2 only", [s for s, _ in r.fetches()], [2])
    r = a.command("FETCH", "1:*", "(FLAGS)", "(CHANGEDSINCE %d)" % h1)
    R.check("alice FETCH CHANGEDSINCE h1: nothing", r.ok and r.fetches() == [], r.untagged)
    r = c.command("FETCH", "1:*", "(FLAGS)", "(CHANGEDSINCE %d)" % h1)
    R.check("carol FETCH CHANGEDSINCE h1: nothing", r.ok and r.fetches() == [], r.untagged)
    r = b.command("SEARCH", "MODSEQ", str(h1 + 1))
    R.equal("bob SEARCH MODSEQ h1+1", sorted(r.search()[0]), [2])
    r = c.command("SEARCH", "MODSEQ", str(h1 + 1))
    R.equal("carol SEARCH MODSEQ h1+1", sorted(r.search()[0]), [])
    # UNCHANGEDSINCE compares with bob's view of the modseq.
    r = b.command("STORE", "2", "(UNCHANGEDSINCE %d)" % h1, "-FLAGS", "(\\Seen)")
    R.check("bob UNCHANGEDSINCE below his change: MODIFIED 2",
            r.ok and r.code == "MODIFIED" and r.code_args == b"2", r)
    r = c.command("STORE", "2", "(UNCHANGEDSINCE %d)" % h1, "+FLAGS", "(\\Seen)")
    R.check("carol UNCHANGEDSINCE h1 on m2 (bob's change is not hers): OK", r.ok and
            r.code != "MODIFIED", r)
    r = b.command("STORE", "2", "(UNCHANGEDSINCE %d)" % m2, "-FLAGS", "(\\Seen)")
    R.check("bob UNCHANGEDSINCE at his modseq: OK", r.ok and r.code != "MODIFIED", r)
    R.equal("bob sees m2 unseen again", 2 in seen_seqs(b), False)
    R.equal("carol sees m1 and m2 seen", seen_seqs(c), [1, 2])
    # QRESYNC: a new session of bob learns his own changes since h0 only.
    q = connect("bob")
    q.command("ENABLE", "QRESYNC")
    r = q.command("STATUS", BOX, "(UIDVALIDITY)")
    uv = int(r.find("STATUS")[0][2][1])
    r = q.command("SELECT", BOX, "(QRESYNC (%d %d))" % (uv, h0))
    got = {s: {f.decode() for f in it.get("FLAGS", [])} for s, it in r.fetches()}
    R.check("bob's QRESYNC SELECT reports m2 (his change), not m1 (carol's)",
            r.ok and 2 in got and 1 not in got and "\\Seen" not in got[2], (r, got))
    for x in (a, b, c, q):
        x.logout()


def t_expunge_takes_records():
    a, b = connect("alice"), connect("bob")
    a.command("SELECT", "Team")
    b.command("SELECT", BOX)
    R.check("bob marks all seen", b.command("STORE", "1:*", "+FLAGS", "(\\Seen)").ok)
    R.equal("bob STATUS UNSEEN before", status_unseen(connect("bob"), BOX), 0)
    r = a.command("STORE", "1", "+FLAGS", "(\\Deleted)")
    R.check("alice \\Deleted m1", r.ok, r)
    R.check("alice EXPUNGE", a.command("EXPUNGE").ok)
    b.command("NOOP")
    R.equal("bob STATUS UNSEEN after (his record went with m1)",
            status_unseen(connect("bob"), BOX), 0)
    r = a.command("APPEND", "Team", "()", Literal(message("m4")))
    R.check("alice APPENDs m4", r.ok, r)
    R.equal("bob STATUS UNSEEN: only m4", status_unseen(connect("bob"), BOX), 1)
    R.equal("alice STATUS UNSEEN: m2, m3, m4", status_unseen(connect("alice"), "Team"), 3)
    r = b.command("APPEND", BOX, "(\\Seen \\Flagged)", Literal(message("m5 from bob")))
    R.check("bob APPENDs m5 with (\\Seen \\Flagged)", r.ok, r)
    a.command("NOOP")
    R.equal("alice's m5: \\Flagged, not bob's \\Seen", flags_of(a).get(4), {"\\Flagged"})
    r = b.command("SELECT", BOX)
    R.equal("bob's m5: \\Flagged and his own \\Seen (his record, made by the APPEND)",
            flags_of(b).get(4), {"\\Flagged", "\\Seen"})
    R.equal("bob's [UNSEEN n] does not count m5 (m4 is first)", unseen_code(r), 3)
    c = connect("carol")
    c.command("SELECT", BOX)
    R.equal("carol's m5: \\Flagged only", flags_of(c).get(4), {"\\Flagged"})
    c.logout()
    a.logout()
    b.logout()


def t_idle():
    """bob IDLEs in the shared mailbox: his own \\Seen from another session
    shows at once; carol's does not show (the mailbox changed, he sees no
    change)."""
    b1, b2, c = connect("bob"), connect("bob"), connect("carol")
    for x in (b1, b2, c):
        x.command("SELECT", BOX)
    before = 3 in seen_seqs(b1)
    tag = b2.next_tag()
    b2.send_command(tag, ["IDLE"])
    line = b2.read_line()
    R.check("IDLE continues", line.startswith(b"+"), line)
    r = c.command("STORE", "3", "+FLAGS", "(\\Seen)")
    R.check("carol marks message 3 seen", r.ok, r)
    got = b2.read_untagged_until(lambda g: len(g) > 0, 1.5)
    R.check("bob's IDLE hears nothing of carol's \\Seen", got == [], got)
    r = b1.command("STORE", "3", ("-FLAGS" if before else "+FLAGS"), "(\\Seen)")
    R.check("bob changes his \\Seen of message 3 in his other session", r.ok, r)
    got = b2.read_untagged_until(lambda g: any(b"FETCH" in u for u in g), 5.0)
    flat = b" ".join(got)
    R.check("bob's IDLE reports FETCH of message 3 with his new \\Seen within 5 s",
            b"3 FETCH" in flat and ((b"\\Seen" in flat) != before), got)
    b2.send(b"DONE\r\n")
    b2.wait_tagged(tag)
    for x in (b1, b2, c):
        x.logout()


def t_public():
    if T.kind != "starling":
        return

    def cli(*args):
        r = T.node.cli(*args)
        return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
    rc, out, err = cli("mailbox", "create", "--public", "Board")
    R.check("mailbox create --public Board", rc == 0, (rc, out, err))
    rc, out, err = cli("acl", "set", "-m", "Public/Board", "anyone", "lrsi")
    R.check("acl set Public/Board anyone lrsi", rc == 0, (rc, out, err))
    a, b, c = connect("alice"), connect("bob"), connect("carol")
    r = a.command("APPEND", "Public/Board", "(\\Seen)", Literal(message("p1")))
    R.check("alice APPENDs p1 with \\Seen", r.ok, r)
    a.command("APPEND", "Public/Board", "()", Literal(message("p2")))
    for x in (a, b, c):
        x.command("SELECT", "Public/Board")
    R.equal("p1 (APPENDed with \\Seen by alice) is seen for alice: her record", seen_seqs(a),
            [1])
    R.equal("... and unseen for bob", seen_seqs(b), [])
    R.check("alice marks p2 seen", a.command("STORE", "2", "+FLAGS", "(\\Seen)").ok)
    R.check("bob marks p1 seen", b.command("STORE", "1", "+FLAGS", "(\\Seen)").ok)
    R.equal("alice sees p1 and p2", seen_seqs(a), [1, 2])
    R.equal("bob sees p1", seen_seqs(b), [1])
    R.equal("carol sees none", seen_seqs(c), [])
    R.equal("STATUS UNSEEN Public/Board for carol", status_unseen(connect("carol"),
                                                                  "Public/Board"), 2)
    R.equal("STATUS UNSEEN Public/Board for bob", status_unseen(connect("bob"),
                                                                "Public/Board"), 1)
    for x in (a, b, c):
        x.logout()


def t_own_mailbox_unchanged():
    b = connect("bob")
    r = b.command("APPEND", "INBOX", "(\\Seen)", Literal(message("own")))
    R.check("bob APPENDs to his INBOX with \\Seen", r.ok, r)
    b.command("SELECT", "INBOX")
    R.equal("in his own mailbox bob sees the message's \\Seen", seen_seqs(b), [1])
    b.logout()


def t_copy_move():
    """COPY/MOVE carry the \\Seen the copying user sees: out of alice's
    mailbox (or a public one) into bob's own, the copy's \\Seen is bob's
    record; from bob's own into alice's, the copy's own \\Seen stays off
    (it is alice's) and bob's record of the new message is his \\Seen."""
    a, b = connect("alice"), connect("bob")
    R.check("alice CREATE Copies", a.command("CREATE", "Copies").ok)
    for subj, flags in (("c1", "(\\Seen)"), ("c2", "()"), ("c3", "(\\Seen)")):
        r = a.command("APPEND", "Copies", flags, Literal(message(subj)))
        R.check("alice APPENDs %s %s" % (subj, flags), r.ok, r)
    R.check("SETACL Copies bob lrswite", a.command("SETACL", "Copies", "bob", "lrswite").ok)
    box = "shared/alice/Copies"
    R.check("bob SELECTs %s" % box, b.command("SELECT", box).ok)
    R.check("bob marks c2 seen", b.command("STORE", "2", "+FLAGS", "(\\Seen)").ok)
    R.check("bob CREATE Mine", b.command("CREATE", "Mine").ok)
    r = b.command("COPY", "1:2", "Mine")
    R.check("bob COPY 1:2 (c1 seen by alice only, c2 by bob only) Mine", r.ok, r)
    r = b.command("MOVE", "3", "Mine")
    R.check("bob MOVE 3 (c3, seen by alice only) Mine", r.ok, r)
    m = connect("bob")
    m.command("SELECT", "Mine")
    R.equal("bob's copies in Mine: only c2 seen (his view, not alice's)", seen_seqs(m), [2])

    # The reverse: Mine holds c1 (unseen), c2 (seen), c3 (seen now; c3
    # left Copies with the MOVE, so no record of bob's names its GUID
    # there: records are per GUID, and c2's copy shares c2's).
    R.check("bob marks c3 seen in Mine", m.command("STORE", "3", "+FLAGS", "(\\Seen)").ok)
    r = m.command("COPY", "1:3", box)
    R.check("bob COPY 1:3 from Mine into %s" % box, r.ok, r)
    a.command("SELECT", "Copies")
    R.equal("alice sees c1 (hers) seen, not bob's copy of c2", seen_seqs(a), [1])
    b.command("SELECT", box)
    R.equal("bob sees c2 and his copies of c2 and c3 seen", seen_seqs(b), [2, 4, 5])
    c = connect("carol")
    R.check("SETACL Copies carol lr", a.command("SETACL", "Copies", "carol", "lr").ok)
    c.command("SELECT", box)
    R.equal("carol sees none of bob's \\Seen", seen_seqs(c), [])

    # Out of a public mailbox (t_public: bob has seen p1, not p2).
    b.command("SELECT", "Public/Board")
    r = b.command("COPY", "1:2", "Mine")
    R.check("bob COPY Public/Board 1:2 Mine", r.ok, r)
    m.command("NOOP")
    R.equal("bob's copies of p1 and p2 in Mine: p1 seen (his record)", seen_seqs(m), [2, 3, 4])
    for x in (a, b, c, m):
        x.logout()


def modseqs(c):
    """{seq: MODSEQ} of FETCH 1:* (MODSEQ) in the selected mailbox."""
    r = c.command("FETCH", "1:*", "(MODSEQ)")
    return {seq: int(it["MODSEQ"][0]) for seq, it in r.fetches() if "MODSEQ" in it}


def t_copy_stores_what_differs():
    """The \\Seen STOREs after a COPY name only the copies whose \\Seen is
    not what the user sees already: a STORE gives every message it names a
    new modseq (SPEC.md 10.2), so a copy whose \\Seen came right keeps the
    modseq of its COPY, and a user's record that says seen already is not
    written again."""
    a, b = connect("alice"), connect("bob")
    for x in (a, b):
        x.command("ENABLE", "CONDSTORE")
    # Out of alice's mailbox into bob's own: d1 seen by both, d2 by
    # neither, d3 by alice only, d4 by bob only.
    R.check("alice CREATE Mixed", a.command("CREATE", "Mixed").ok)
    for subj, flags in (("d1", "(\\Seen)"), ("d2", "()"), ("d3", "(\\Seen)"), ("d4", "()")):
        r = a.command("APPEND", "Mixed", flags, Literal(message(subj)))
        R.check("alice APPENDs %s %s" % (subj, flags), r.ok, r)
    R.check("SETACL Mixed bob lrswite", a.command("SETACL", "Mixed", "bob", "lrswite").ok)
    R.check("bob SELECTs shared/alice/Mixed", b.command("SELECT", "shared/alice/Mixed").ok)
    R.check("bob marks d1 and d4 seen", b.command("STORE", "1,4", "+FLAGS", "(\\Seen)").ok)
    R.check("bob CREATE Kept", b.command("CREATE", "Kept").ok)
    r = b.command("COPY", "1:4", "Kept")
    R.check("bob COPY 1:4 Kept", r.ok, r)
    k = connect("bob")
    k.command("ENABLE", "CONDSTORE")
    k.command("SELECT", "Kept")
    R.equal("bob's copies in Kept: d1 and d4 seen (his view)", seen_seqs(k), [1, 4])
    ms = modseqs(k)
    R.check("the copies of d1 and d2 (\\Seen right) have lower modseqs than those of "
            "d3 and d4 (changed after the COPY)",
            len(ms) == 4 and max(ms[1], ms[2]) < min(ms[3], ms[4]), ms)

    # Out of bob's own mailbox into alice's: e1 without \\Seen, e2 with.
    R.check("alice CREATE In", a.command("CREATE", "In").ok)
    R.check("SETACL In bob lrswite", a.command("SETACL", "In", "bob", "lrswite").ok)
    R.check("bob CREATE Out", b.command("CREATE", "Out").ok)
    for subj, flags in (("e1", "()"), ("e2", "(\\Seen)")):
        r = b.command("APPEND", "Out", flags, Literal(message(subj)))
        R.check("bob APPENDs %s %s to Out" % (subj, flags), r.ok, r)
    R.check("bob SELECTs Out", b.command("SELECT", "Out").ok)
    r = b.command("COPY", "1:2", "shared/alice/In")
    R.check("bob COPY 1:2 shared/alice/In", r.ok, r)
    R.check("alice SELECTs In", a.command("SELECT", "In").ok)
    R.equal("alice sees neither copy seen", seen_seqs(a), [])
    ms = modseqs(a)
    R.check("e1's copy (no \\Seen of its own) keeps the modseq of its COPY, below e2's "
            "(its own \\Seen cleared)", len(ms) == 2 and ms[1] < ms[2], ms)
    i = connect("bob")
    i.command("ENABLE", "CONDSTORE")
    R.check("bob SELECTs shared/alice/In", i.command("SELECT", "shared/alice/In").ok)
    R.equal("bob sees e2's copy seen (his record)", seen_seqs(i), [2])
    before = modseqs(i)
    # e2 again: bob's record of its GUID there says seen already.
    r = b.command("COPY", "2", "shared/alice/In")
    R.check("bob COPY 2 (e2 again) shared/alice/In", r.ok, r)
    i.command("NOOP")
    R.equal("bob sees both copies of e2 seen", seen_seqs(i), [2, 3])
    after = modseqs(i)
    R.check("bob's record of e2, seen already, is not written again: his first copy "
            "keeps its modseq", before.get(2) is not None and after.get(2) == before.get(2),
            (before, after))
    for x in (a, b, k, i):
        x.logout()


def t_shared_key():
    """shared_seen = shared: bob's \\Seen is the message's own flag, which
    alice sees; the same STORE on the default node does not reach her."""
    global T
    from harness.starling import Cluster
    from imapcommon import Target
    c = Cluster(n=1, users=USERS, extra_config={"shared_seen": "shared"})
    saved = T
    try:
        c.start_all()
        T = Target("starling", c, c.nodes[0])
        a = connect("alice")
        R.check("shared node: alice CREATE Team", a.command("CREATE", "Team").ok)
        r = a.command("APPEND", "Team", "()", Literal(message("s1")))
        R.check("shared node: alice APPENDs s1", r.ok, r)
        R.check("shared node: SETACL Team bob lrs", a.command("SETACL", "Team", "bob", "lrs").ok)
        b = connect("bob")
        R.check("shared node: bob SELECTs", b.command("SELECT", BOX).ok)
        r = b.command("STORE", "1", "+FLAGS", "(\\Seen)")
        R.check("shared node: bob STORE 1 +FLAGS (\\Seen) OK", r.ok, r)
        r = a.command("SELECT", "Team")
        R.equal("shared node: alice sees bob's \\Seen (one flag for all)", seen_seqs(a), [1])
        R.equal("shared node: STATUS UNSEEN of alice's Team", status_unseen(b, "shared/alice/Team"),
                0)
        a.logout()
        b.logout()
    finally:
        T = saved
        c.close()
        reps = c.sanitizer_reports()
        R.check("no sanitizer report on the shared node", not reps, reps)


SECTIONS = [
    ("setup", t_setup),
    ("seen is private", t_seen_is_private),
    ("condstore", t_condstore),
    ("expunge takes records", t_expunge_takes_records),
    ("idle", t_idle),
    ("public", t_public),
    ("own mailbox", t_own_mailbox_unchanged),
    ("copy and move", t_copy_move),
    ("copy stores what differs", t_copy_stores_what_differs),
    ("shared_seen = shared", t_shared_key),
]


def set_target(t):
    global T
    T = t


if __name__ == "__main__":
    sys.exit(run_sections(R, SECTIONS, __doc__.splitlines()[0], USERS, set_target))
