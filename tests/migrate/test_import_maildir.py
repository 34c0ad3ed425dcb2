#!/usr/bin/env python3
"""`starling import maildir` (issue 17): a move from a real Dovecot.

A private Dovecot (tests/harness/dovecot.py) gets mail over IMAP: folders
(one nested, one with a modified UTF-7 name), APPENDs with flags, keywords
and INTERNALDATEs, expunges that leave UID gaps, subscriptions; a file is
then dropped into new/ with no uidlist line.  What Dovecot showed over IMAP
(UIDVALIDITY, UIDNEXT, UID, FLAGS, INTERNALDATE, RFC822.SIZE, BODY[]) is
recorded, Dovecot is stopped, and the Maildir is imported into node 1 of a
two-node cluster through its admin socket.  Checked on node 2 over IMAP:
every mailbox and message exactly as Dovecot showed it (the dropped file at
Dovecot's next UID).  Then:
  - an import killed midway (SIGKILL after its first progress line) and run
    again ends with the same mailboxes, without duplicates;
  - importing again changes nothing;
  - hostile dovecot-uidlist / dovecot-keywords lines: one error line naming
    file:line, exit 1, nothing imported;
  - a file above max_message_size: one line naming it;
  - a user whose INBOX exists with another UIDVALIDITY: refused, nothing
    imported;
  - a uidlist whose header's next UID lags behind its lines (Dovecot
    appends lines without rewriting it) imports like the original;
  - with no node running, the import opens the store itself.
The last line is "test-import-maildir: N passed, M failed"."""
import imaplib
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness import proc  # noqa: E402
from harness.dovecot import Dovecot  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster, sanitizer_env  # noqa: E402

R = Report("test-import-maildir")
PASSWORD = "secret"
CONVERGE = 30.0

FOLDERS = ["Work", "Work/Sub", "Caf&AOk-"]


def message(i, body_lines=3):
    return ("From: sender%d@example.com\r\nTo: alice@example.com\r\n"
            "Subject: message %d\r\nMessage-ID: <m%d@example.com>\r\n\r\n" % (i, i, i)
            + "".join("line %d of message %d\r\n" % (k, i) for k in range(body_lines))
            ).encode()


def quote(name):
    return '"%s"' % name


def snapshot(host, port, user, names):
    """{mailbox: (uidvalidity, uidnext, [(uid, flags, date, size, body)])}."""
    m = imaplib.IMAP4(host, port)
    m.login(user, PASSWORD)
    out = {}
    for name in names:
        typ, data = m.select(quote(name), readonly=True)
        if typ != "OK":
            out[name] = None
            continue
        uv = int(m.untagged_responses.get("UIDVALIDITY", [b"0"])[-1])
        un = int(m.untagged_responses.get("UIDNEXT", [b"0"])[-1])
        msgs = []
        if int(data[0]) > 0:
            typ, data = m.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
            for item in data:
                if not isinstance(item, tuple):
                    continue
                head = item[0].decode()
                uid = int(re.search(r"UID (\d+)", head).group(1))
                # \Recent is the session's, not the mailbox's: not migrated.
                flags = tuple(sorted(f for f in re.search(r"FLAGS \(([^)]*)\)", head)
                                     .group(1).split() if f != "\\Recent"))
                date = re.search(r'INTERNALDATE "([^"]+)"', head).group(1)
                size = int(re.search(r"RFC822.SIZE (\d+)", head).group(1))
                msgs.append((uid, flags, imaplib.Internaldate2tuple(
                    ('INTERNALDATE "%s"' % date).encode()), size, item[1]))
        msgs.sort()
        typ, st = m.status(quote(name), "(HIGHESTMODSEQ)")
        hms = int(re.search(rb"HIGHESTMODSEQ (\d+)", st[0]).group(1))
        out[name] = (uv, un, msgs, hms)
    m.logout()
    return out


def fill_dovecot(d, user, n_inbox):
    m = imaplib.IMAP4(d.host, d.imap_port)
    m.login(user, PASSWORD)
    for f in FOLDERS:
        typ, _ = m.create(quote(f))
        R.check("dovecot: CREATE %s" % f, typ == "OK")
    m.subscribe(quote("Work"))
    flagsets = ["", "\\Seen", "\\Seen \\Flagged", "\\Answered $Label1", "\\Draft",
                "\\Seen Project-X $Label1", "\\Deleted"]
    t0 = 1600000000
    for i in range(n_inbox):
        flags = flagsets[i % len(flagsets)]
        date = imaplib.Time2Internaldate(t0 + i * 3607)
        m.append("INBOX", "(%s)" % flags if flags else None, date, message(i, 3 + i % 5))
    for fi, f in enumerate(FOLDERS):
        for i in range(4):
            k = 1000 * (fi + 1) + i
            m.append(quote(f), "(\\Seen Work%d)" % fi if i % 2 else None,
                     imaplib.Time2Internaldate(t0 + k), message(k))
    # UID gaps: expunge a few (not the \Deleted ones above, which stay).
    m.select("INBOX")
    m.uid("STORE", "2,5,9", "+FLAGS.SILENT", "(\\Deleted)")
    m.uid("EXPUNGE", "2,5,9")
    m.select(quote("Work"))
    m.uid("STORE", "1", "+FLAGS.SILENT", "(\\Deleted)")
    m.uid("EXPUNGE", "1")
    m.logout()


def idate(ts):
    return imaplib.Internaldate2tuple(b"INTERNALDATE " + imaplib.Time2Internaldate(ts).encode())


def maildir_of(d, user):
    return os.path.join(d.dir, "mail", user)


def drop_new_file(maildir, i):
    """A file delivered behind Dovecot's back: no uidlist line."""
    p = os.path.join(maildir, "new", "1700000000.M1P1.dropped%d" % i)
    with open(p, "wb") as f:
        f.write(message(5000 + i).replace(b"\r\n", b"\n"))
    os.utime(p, (1700000000, 1700000000))


def compare(want, got, what):
    ok = True
    for name, w in want.items():
        g = got.get(name)
        if w is None:
            continue
        if g is None:
            R.check("%s: mailbox %s exists" % (what, name), False)
            ok = False
            continue
        ok &= R.equal("%s: %s UIDVALIDITY" % (what, name), g[0], w[0])
        ok &= R.equal("%s: %s UIDNEXT" % (what, name), g[1], w[1])
        # A QRESYNC client's cached HIGHESTMODSEQ must stay below later changes.
        ok &= R.check("%s: %s HIGHESTMODSEQ at least Dovecot's" % (what, name), g[3] >= w[3],
                      (g[3], w[3]))
        ok &= R.equal("%s: %s UIDs" % (what, name), [x[0] for x in g[2]], [x[0] for x in w[2]])
        ok &= R.check("%s: %s flags and keywords" % (what, name),
                      [x[1] for x in g[2]] == [x[1] for x in w[2]],
                      "got %r want %r" % ([x[1] for x in g[2]], [x[1] for x in w[2]]))
        ok &= R.check("%s: %s INTERNALDATEs" % (what, name),
                      [x[2] for x in g[2]] == [x[2] for x in w[2]])
        ok &= R.check("%s: %s sizes and bodies" % (what, name),
                      [x[3:] for x in g[2]] == [x[3:] for x in w[2]],
                      "sizes got %r want %r" % ([x[3] for x in g[2]], [x[3] for x in w[2]]))
    return ok


def wait_equal(c, user):
    deadline = time.time() + CONVERGE
    while time.time() < deadline:
        if c.nodes[0].dump(user) == c.nodes[1].dump(user):
            return True
        time.sleep(0.3)
    return False


def import_cmd(node, user, path, *extra):
    return [node.cluster.cli, "-c", node.conf, "import", "maildir", "-u", user] + \
        list(extra) + [path]


def run_import(node, user, path, *extra, timeout=300):
    return subprocess.run(import_cmd(node, user, path, *extra), capture_output=True,
                          timeout=timeout, env=sanitizer_env())


def one_line_error(r, *needles):
    lines = r.stderr.decode(errors="replace").strip().splitlines()
    return (r.returncode == 1 and len(lines) == 1 and
            all(n in lines[0] for n in needles)), lines


def fake_imap(script):
    """A one-connection IMAP server on loopback answering with script(tag,
    command) -> bytes; returns its port."""
    import socket
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(30)

    def run():
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        conn.settimeout(30)
        f = conn.makefile("rb")
        conn.sendall(b"* OK fake\r\n")
        try:
            while True:
                line = f.readline()
                if not line:
                    break
                tag, cmd = line.decode().rstrip("\r\n").split(" ", 1)
                conn.sendall(script(tag, cmd))
        except OSError:
            pass
        conn.close()
        srv.close()
    threading.Thread(target=run, daemon=True).start()
    return srv.getsockname()[1]


def t_hostile_imap(c, n1):
    def base(tag, cmd, fetch):
        if cmd.startswith("LOGIN"):
            return b"%s OK\r\n" % tag.encode()
        if cmd.startswith("LIST"):
            return b'* LIST () "/" INBOX\r\n%s OK\r\n' % tag.encode()
        if cmd.startswith("LSUB"):
            return b"%s OK\r\n" % tag.encode()
        if cmd.startswith("EXAMINE"):
            return (b"* 1 EXISTS\r\n* OK [UIDVALIDITY 5] x\r\n* OK [UIDNEXT 3] x\r\n"
                    b"%s OK\r\n" % tag.encode())
        if cmd.startswith("UID FETCH 1:*"):
            return fetch + b"%s OK\r\n" % tag.encode()
        if cmd.startswith("UID FETCH"):
            return (b"* 1 FETCH (UID 2 BODY[] {2000000}\r\n" + b"x" * 2000000 + b")\r\n"
                    b"%s OK\r\n" % tag.encode())
        return b"%s OK\r\n" % tag.encode()
    cases = [
        (b"* 1 FETCH (UID 0 FLAGS () INTERNALDATE \"01-Jan-2020 00:00:00 +0000\" "
         b"RFC822.SIZE 5)\r\n", "without a valid UID"),
        (b"* 1 FETCH (UID 2 FLAGS (\\Seen INTERNALDATE \"x\")\r\n", "without a valid UID"),
        (b"* 1 FETCH (UID 2 FLAGS () INTERNALDATE \"01-Jan-2020 00:00:00 +0000\" "
         b"RFC822.SIZE 5)\r\n", "max_message_size"),
        (b"* 1 FETCH (UID 2 FLAGS () INTERNALDATE \"01-Jan-2020 00:00:00 +0000\" "
         b"RFC822.SIZE 5000000)\r\n", "max_message_size"),
        (b"* 1 FETCH (UID 2 BODY[] {99999999999}\r\n", "literal"),
    ]
    for fetch, why in cases:
        port = fake_imap(lambda tag, cmd, fetch=fetch: base(tag, cmd, fetch))
        r = subprocess.run([c.cli, "-c", n1.conf, "import", "imap", "-u", "ivan", "--host",
                            "127.0.0.1", "--port", str(port), "--user", "x"], input=b"pw\n",
                           capture_output=True, timeout=120, env=sanitizer_env())
        lines = r.stderr.decode(errors="replace").strip().splitlines()
        R.check("hostile IMAP server %r: exit 1, the error names it" % fetch[:40],
                r.returncode == 1 and lines and why in lines[-1] and
                not any("runtime error" in x or "Sanitizer" in x for x in lines), lines)
    R.check("hostile IMAP servers: nothing imported for ivan", "msg " not in n1.dump("ivan"))


def t_all():
    d = Dovecot(users={"alice": PASSWORD, "bob": PASSWORD}).start()
    fill_dovecot(d, "alice", 30)
    # bob: enough mail for several batches, to interrupt the import.
    fill_dovecot(d, "bob", 240)
    names = ["INBOX"] + FOLDERS
    want = {u: snapshot(d.host, d.imap_port, u, names) for u in ("alice", "bob")}
    d.stop()
    alice_md, bob_md = maildir_of(d, "alice"), maildir_of(d, "bob")
    R.check("dovecot wrote a version 3 uidlist",
            open(os.path.join(alice_md, "dovecot-uidlist")).read().startswith("3 V"))
    R.check("dovecot wrote keywords", os.path.exists(os.path.join(alice_md, "dovecot-keywords")))
    R.check("the expunges left UID gaps",
            [x[0] for x in want["alice"]["INBOX"][2]][:4] == [1, 3, 4, 6],
            [x[0] for x in want["alice"]["INBOX"][2]][:6])
    # The dropped file gets Dovecot's next UID, with the file's mtime.
    drop_new_file(alice_md, 1)
    uv, un, msgs, hms = want["alice"]["INBOX"]
    body = message(5001)
    want["alice"]["INBOX"] = (uv, un + 1, msgs + [(un, (), idate(1700000000), len(body), body)],
                              hms)

    c = Cluster(n=2, users={u: PASSWORD for u in ("alice", "bob", "carol", "dave", "erin", "frank", "gina", "hank", "ivan")},
                extra_config={"max_message_size": 1048576})
    c.start_all()
    c.wait_links_up()
    n1, n2 = c.nodes

    t = time.time()
    r = run_import(n1, "alice", alice_md)
    err = r.stderr.decode(errors="replace")
    R.check("import maildir exits 0", r.returncode == 0, err)
    R.check("progress lines on stderr", re.search(r"import: INBOX: \d+/\d+ messages.*msg/s", err),
            err)
    print("measured: alice (%d messages) imported in %.2f s" % (
        sum(len(v[2]) for v in want["alice"].values()), time.time() - t))
    R.check("node 2 converges with node 1", wait_equal(c, "alice"))
    compare(want["alice"], snapshot(n2.host, n2.imap_port, "alice", names), "node 2")
    m = imaplib.IMAP4(n2.host, n2.imap_port)
    m.login("alice", PASSWORD)
    typ, data = m.lsub('""', "*")
    R.check("subscriptions imported", any(b'"Work"' in x or x.endswith(b" Work") for x in data),
            data)
    m.logout()

    before = n1.dump("alice")
    r = run_import(n1, "alice", alice_md)
    R.check("a second import exits 0", r.returncode == 0, r.stderr)
    R.check("a second import says everything was there",
            re.search(rb"0 messages \(\d+ were there already\)", r.stdout), r.stdout)
    R.check("a second import changes nothing", n1.dump("alice") == before)

    # Interrupted, then resumed.
    p = subprocess.Popen(import_cmd(n1, "bob", bob_md, "--batch", "20"),
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=sanitizer_env())
    progress = b""
    deadline = time.time() + 120
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        progress += line
        if b"messages" in line and b"/" in line and b"INBOX" in line:
            break
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    p.stderr.close()
    R.check("the killed import had merged a batch", b"INBOX: " in progress, progress)
    partial = n1.dump("bob")
    n_partial = partial.count("\nmsg ")
    R.check("the killed import left part of the mail", 0 < n_partial < 240, n_partial)
    r = run_import(n1, "bob", bob_md, "--batch", "50")
    R.check("the resumed import exits 0", r.returncode == 0, r.stderr)
    R.check("the resumed import skipped what was there",
            re.search(rb"\(([1-9]\d*) were there already\)", r.stdout), r.stdout)
    R.check("bob: node 2 converges", wait_equal(c, "bob"))
    compare(want["bob"], snapshot(n2.host, n2.imap_port, "bob", names), "resumed")

    # Hostile input: one line naming file:line, nothing imported.
    work = proc.mkdtemp("maildir-hostile-")
    cases = [
        ("3 V1 N5\n1 :a\nxyz :b\n", 3, "bad UID"),
        ("3 V1 N5\n3 :a\n2 :b\n", 3, "not ascending"),
        ("3 V1 N5\n0 :a\n", 2, "bad UID"),
        ("3 V1 N5\n2147483648 :a\n", 2, "bad UID"),
        ("3 V1 N5\n1 :../../etc/passwd\n", 2, "bad file name"),
        ("3 V1 N5\n1 no-colon\n", 2, "no ' :"),
        ("3 V1 N99999999999\n", 1, "bad V or N"),
        ("9 V1 N2\n", 1, "version"),
        ("3 V1 N5\n99999999999999999999 :a\n", 2, "bad UID"),
    ]
    for i, (text, line, why) in enumerate(cases):
        md = os.path.join(work, "h%d" % i)
        shutil.copytree(alice_md, md)
        with open(os.path.join(md, ".Work", "dovecot-uidlist"), "w") as f:
            f.write(text)
        r = run_import(n1, "carol", md)
        ok, lines = one_line_error(r, ".Work/dovecot-uidlist:%d:" % line, why)
        R.check("hostile uidlist %r: one line naming file:line" % text[:30], ok, lines)
    md = os.path.join(work, "kw")
    shutil.copytree(alice_md, md)
    with open(os.path.join(md, "dovecot-keywords"), "w") as f:
        f.write("0 $Label1\n40 bad\n")
    r = run_import(n1, "carol", md)
    ok, lines = one_line_error(r, "dovecot-keywords:2:")
    R.check("hostile keywords line: one line naming file:line", ok, lines)
    R.check("hostile input: nothing imported for carol", "msg " not in n1.dump("carol"))

    md = os.path.join(work, "big")
    shutil.copytree(alice_md, md)
    big = os.path.join(md, "cur", "1700000001.M2P2.big:2,S")
    with open(big, "wb") as f:
        f.write(b"Subject: big\n\n" + b"x" * 2000000)
    r = run_import(n1, "erin", md)
    ok, lines = one_line_error(r, big, "max_message_size")
    R.check("a file above max_message_size: one line naming it", ok, lines)

    # A user whose INBOX exists here (logged in first): refused.
    m = imaplib.IMAP4(n1.host, n1.imap_port)
    m.login("dave", PASSWORD)
    m.logout()
    before = n1.dump("dave")
    r = run_import(n1, "dave", alice_md)
    ok, lines = one_line_error(r, "INBOX", "UIDVALIDITY", "nothing was imported")
    R.check("an existing INBOX with another UIDVALIDITY is refused", ok, lines)
    R.check("the refused import changed nothing", n1.dump("dave") == before)
    # Dovecot appends uidlist lines without rewriting the header, whose
    # next UID then lags behind: the lines decide.
    md = os.path.join(work, "lagging")
    shutil.copytree(alice_md, md)
    up = os.path.join(md, "dovecot-uidlist")
    lines = open(up).read().split("\n")
    lines[0] = re.sub(r" N\d+", " N2", lines[0])
    open(up, "w").write("\n".join(lines))
    r = run_import(n1, "gina", md)
    R.check("a uidlist header behind its lines: import exits 0", r.returncode == 0, r.stderr)
    R.check("gina: node 2 converges", wait_equal(c, "gina"))
    compare({"INBOX": want["alice"]["INBOX"]},
            snapshot(n2.host, n2.imap_port, "gina", ["INBOX"]), "lagging header")

    # From the same Dovecot over IMAP (it now also sees the dropped file,
    # and gives it the UID the Maildir import gave it).
    d.start()
    r = subprocess.run([c.cli, "-c", n1.conf, "import", "imap", "-u", "hank", "--host", d.host,
                        "--port", str(d.imap_port), "--user", "alice", "--batch", "7"],
                       input=(PASSWORD + "\n").encode(), capture_output=True, timeout=300,
                       env=sanitizer_env())
    R.check("import imap exits 0", r.returncode == 0, r.stderr)
    R.check("import imap: progress lines", b"import: INBOX: " in r.stderr, r.stderr)
    R.check("hank: node 2 converges", wait_equal(c, "hank"))
    compare(want["alice"], snapshot(n2.host, n2.imap_port, "hank", names), "imap")
    # Again, several times within a second or two: a run with nothing to
    # do sends nothing (an identical bundle in the same second was once
    # refused as a replay).
    for i in range(3):
        r = subprocess.run([c.cli, "-c", n1.conf, "import", "imap", "-u", "hank", "--host",
                            d.host, "--port", str(d.imap_port), "--user", "alice"],
                           input=(PASSWORD + "\n").encode(), capture_output=True, timeout=300,
                           env=sanitizer_env())
        R.check("import imap again (%d): everything was there" % i,
                r.returncode == 0 and
                re.search(rb" 0 messages \(\d+ were there already\)", r.stdout),
                (r.stdout, r.stderr))
    r = subprocess.run([c.cli, "-c", n1.conf, "import", "imap", "-u", "hank", "--host", d.host,
                        "--port", str(d.imap_port), "--user", "alice"],
                       input=b"wrong\n", capture_output=True, timeout=300, env=sanitizer_env())
    ok, lines = one_line_error(r, "LOGIN")
    R.check("import imap with a wrong password: one line", ok, lines)
    d.stop()
    t_hostile_imap(c, n1)

    # No node running: the store is opened directly.
    c.stop_all()
    r = run_import(n1, "frank", alice_md)
    R.check("with no node running, the import opens the store and exits 0", r.returncode == 0,
            r.stderr)
    n1.start()
    compare(want["alice"], snapshot(n1.host, n1.imap_port, "frank", names), "offline")
    c.close()
    reports = c.sanitizer_reports() if hasattr(c, "sanitizer_reports") else []
    R.check("no sanitizer reports from the nodes", not reports, reports)


def main():
    R.section("Dovecot Maildir to a two-node cluster", t_all)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
