#!/usr/bin/env python3
"""A real IMAP client against the server: mbsync (isync) syncing a mailbox
to a local Maildir and back, with flags.

1. Messages are delivered (starling deliver / doveadm save) and flagged
   over IMAP; `mbsync -a` pulls them: the Maildir holds each message once,
   with the right text and Maildir flags.
2. Locally a message is flagged and replied, one is trashed, one is added
   to INBOX and a new folder is made; `mbsync -a` pushes: the server (read
   with imaplib) shows the flags, the expunge, the new message and folder.
3. A flag changed on the server reaches the Maildir; a further run changes
   nothing (no duplicates).

By default against a starlingd started through tests/harness; --dovecot
runs it against a private Dovecot.  Last line: "imap-mbsync: N passed, M failed".
"""
import imaplib
import os
import re
import sys
import time

from imapcommon import Report, run_sections, proc

USER, PASSWORD = "mbuser", "mbsync-pw-1"
R = Report("imap-mbsync")
T = None
MBSYNC = os.environ.get("MBSYNC", "mbsync")


def message(n, subject):
    return ("From: Sender %d <sender%d@example.org>\r\nTo: mbuser@example.org\r\n"
            "Subject: %s\r\nDate: Mon, 15 Jul 2024 12:%02d:00 +0000\r\n"
            "Message-ID: <mbsync-%d@test>\r\n\r\nBody of message %d.\r\nSecond line.\r\n"
            % (n, n, subject, n, n, n)).encode()


def norm(data):
    """Text as mbsync stores it (LF endings), without its X-TUID header."""
    data = data.replace(b"\r\n", b"\n")
    return re.sub(rb"(?m)^X-TUID: [^\n]*\n", b"", data)


def maildir_messages(folder):
    """{message-id: (path, flags, normalised text)} of a Maildir folder."""
    out = {}
    for sub in ("new", "cur"):
        d = os.path.join(folder, sub)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            path = os.path.join(d, name)
            with open(path, "rb") as f:
                data = f.read()
            m = re.search(rb"(?mi)^Message-ID: (<[^>]+>)", data)
            mid = m.group(1).decode() if m else name
            flags = name.split(":2,", 1)[1] if ":2," in name else ""
            out.setdefault(mid, []).append((path, flags, norm(data)))
    return out


def run_mbsync(rc, what):
    r = proc.run([MBSYNC, "-c", rc, "-a"], timeout=120)
    out = (r.stdout + r.stderr).decode(errors="replace")
    R.check("mbsync %s exits 0" % what, r.returncode == 0, out[-2000:])
    return r


def imap():
    m = imaplib.IMAP4(T.host, T.port, timeout=30)
    m.login(USER, PASSWORD)
    return m


def server_messages(m, box):
    """{message-id: (uid, flags set, text)} of a server mailbox."""
    typ, _ = m.select('"%s"' % box, readonly=True)
    if typ != "OK":
        return None
    typ, data = m.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
    out = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        meta, text = item
        uid = int(re.search(rb"UID (\d+)", meta).group(1))
        flags = set(re.search(rb"FLAGS \(([^)]*)\)", meta).group(1).decode().split())
        mm = re.search(rb"(?mi)^Message-ID: (<[^>]+>)", text)
        out[mm.group(1).decode() if mm else str(uid)] = (uid, flags, text)
    return out


def scenario():
    work = proc.mkdtemp("mbsync-test-")
    local = os.path.join(work, "mail")
    os.makedirs(local)
    rc = os.path.join(work, "mbsyncrc")
    with open(rc, "w") as f:
        f.write("""IMAPAccount test
Host 127.0.0.1
Port %d
User %s
Pass %s
SSLType None
AuthMechs LOGIN
Timeout 30

IMAPStore remote
Account test

MaildirStore local
Path %s/
Inbox %s/INBOX
SubFolders Verbatim

Channel all
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
Sync All
""" % (T.port, USER, PASSWORD, local, local))

    # 1. server side: 3 delivered messages, one seen, one flagged in Archive
    msgs = {n: message(n, "delivered %d" % n) for n in (1, 2, 3)}
    for n in (1, 2, 3):
        T.deliver(USER, msgs[n])
    m = imap()
    m.select("INBOX")
    typ, data = m.search(None, "ALL")
    R.equal("3 delivered messages are in INBOX", data[0].split(), [b"1", b"2", b"3"])
    m.store("1", "+FLAGS", "(\\Seen)")
    arch = message(4, "archived")
    typ, _ = m.append("Archive", "(\\Flagged \\Seen)", None, arch)
    R.equal("APPEND to Archive", typ, "OK")
    m.logout()

    run_mbsync(rc, "pull")
    inbox = maildir_messages(os.path.join(local, "INBOX"))
    for n in (1, 2, 3):
        mid = "<mbsync-%d@test>" % n
        got = inbox.get(mid, [])
        R.check("message %d pulled into the Maildir exactly once" % n, len(got) == 1, got)
        if len(got) == 1:
            R.equal("message %d text is intact" % n, got[0][2], norm(msgs[n]))
            R.equal("message %d Maildir flags" % n, got[0][1], "S" if n == 1 else "")
    archived = maildir_messages(os.path.join(local, "Archive")).get("<mbsync-4@test>", [])
    R.check("Archive message pulled with flags F and S",
            len(archived) == 1 and set(archived[0][1]) == {"F", "S"}, archived)
    for box in ("Drafts", "Sent", "Trash", "Junk"):
        R.check("folder %s created locally" % box,
                os.path.isdir(os.path.join(local, box, "cur")), os.listdir(local))

    # 2. local side: flag + reply message 2, trash message 3, add messages
    def set_flags(path, flags):
        base = os.path.basename(path).split(":2,")[0]
        new = os.path.join(os.path.dirname(os.path.dirname(path)), "cur",
                           base + ":2," + "".join(sorted(flags)))
        os.rename(path, new)

    set_flags(inbox["<mbsync-2@test>"][0][0], "FRS")
    set_flags(inbox["<mbsync-3@test>"][0][0], "T")
    added = message(5, "written locally")
    with open(os.path.join(local, "INBOX", "new", "%d.local5.test" % int(time.time())), "wb") as f:
        f.write(added.replace(b"\r\n", b"\n"))
    newbox = os.path.join(local, "LocalFolder")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(newbox, sub))
    added6 = message(6, "in a new folder")
    with open(os.path.join(newbox, "cur", "%d.local6.test:2,S" % int(time.time())), "wb") as f:
        f.write(added6.replace(b"\r\n", b"\n"))

    run_mbsync(rc, "push")
    m = imap()
    srv = server_messages(m, "INBOX")
    R.check("server INBOX readable", srv is not None)
    srv = srv or {}
    R.equal("server: message 2 has \\Flagged \\Answered \\Seen",
            srv.get("<mbsync-2@test>", (0, set()))[1] - {"\\Recent"},
            {"\\Flagged", "\\Answered", "\\Seen"})
    R.check("server: the trashed message 3 is expunged", "<mbsync-3@test>" not in srv,
            sorted(srv))
    R.check("server: the locally written message arrived once, text intact",
            "<mbsync-5@test>" in srv and
            norm(srv["<mbsync-5@test>"][2]) == norm(added), sorted(srv))
    R.equal("server: message 1 still \\Seen only",
            srv.get("<mbsync-1@test>", (0, set()))[1] - {"\\Recent"}, {"\\Seen"})
    typ, lst = m.list()
    names = b"\n".join(x for x in lst if x)
    R.check("server: LocalFolder was created by mbsync", b"LocalFolder" in names, lst)
    lf = server_messages(m, "LocalFolder") or {}
    R.check("server: LocalFolder holds the message with \\Seen",
            "<mbsync-6@test>" in lf and "\\Seen" in lf["<mbsync-6@test>"][1], lf.keys())

    # 3. server-side flag change reaches the Maildir; another run is a no-op
    m.select("INBOX")
    uid1 = srv.get("<mbsync-1@test>", (0,))[0]
    m.uid("STORE", str(uid1), "+FLAGS", "(\\Flagged)")
    m.logout()
    run_mbsync(rc, "second pull")
    inbox = maildir_messages(os.path.join(local, "INBOX"))
    got = inbox.get("<mbsync-1@test>", [])
    R.check("a flag set on the server reaches the Maildir (F)",
            len(got) == 1 and set(got[0][1]) == {"F", "S"}, got)
    before = {k: len(v) for k, v in inbox.items()}
    run_mbsync(rc, "no-op run")
    after = {k: len(v) for k, v in maildir_messages(os.path.join(local, "INBOX")).items()}
    R.equal("a further run changes nothing locally", after, before)
    R.check("no message is duplicated in the Maildir", all(v == 1 for v in after.values()), after)
    m = imap()
    srv2 = server_messages(m, "INBOX") or {}
    m.logout()
    R.equal("a further run changes nothing on the server",
            sorted(srv2), sorted(k for k in srv if k != "<mbsync-3@test>"))


def set_target(t):
    global T
    T = t


if __name__ == "__main__":
    sys.exit(run_sections(R, [("mbsync round trip", scenario)], __doc__.splitlines()[0],
                          {USER: PASSWORD}, set_target))
