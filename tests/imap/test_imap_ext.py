#!/usr/bin/env python3
"""End-to-end checks of IMAP extensions against one real server.

LITERAL- (RFC 7888), LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819):
each advertised capability is exercised over the wire, including hostile
input (oversized literals, too many patterns, unknown options) that must
be answered with a clear NO/BAD and never crash the server.

By default it starts a starlingd node through tests/harness (binaries from
$top_builddir); `--dovecot` runs the same checks against a private Dovecot.
The last line is "imap-ext: N passed, M failed"; exit 0 only if nothing
failed.
"""
import socket
import sys

from imapcommon import parse_args, start_target, finish, Report
from harness.imapwire import Client, Literal, parse, quote

USER, PASSWORD = "alice", "s3cret pass"

R = Report("imap-ext")
T = None  # the Target


def connect(login=True):
    c = Client(T.host, T.port, timeout=20.0)
    if login:
        r = c.login(USER, PASSWORD)
        if not r.ok:
            raise RuntimeError("login failed: %r" % r)
    return c


def caps(c):
    r = c.command("CAPABILITY")
    for toks in r.find("CAPABILITY"):
        return {t.decode().upper() for t in toks[1:]}
    return set()


def msg(subject, body="hello\r\n"):
    return ("From: a@example.org\r\nTo: b@example.org\r\nSubject: %s\r\n"
            "Date: Mon, 15 Jul 2024 12:00:00 +0000\r\n\r\n%s" % (subject, body)).encode()


# ------------------------------------------------------------ LITERAL-
def t_literal_minus():
    c = connect()
    cp = caps(c)
    R.check("CAPABILITY has LITERAL- and LITERAL+", {"LITERAL-", "LITERAL+"} <= cp, cp)
    # A 4096-octet non-synchronizing literal is taken without a '+'.
    body = msg("lit4096")
    body += b"x" * (4096 - len(body))
    r = c.command("APPEND", "INBOX", Literal(body, plus=True))
    R.check("APPEND with a {4096+} literal: OK, no continuation",
            r.ok and not r.continuations, r)
    r = c.command("NOOP")
    R.check("the session goes on after {4096+}", r.ok, r)
    c.logout()

    # Over the server's limit (before login: a few KB), a non-synchronizing
    # literal is answered with a tagged BAD [TOOBIG]; the octets already
    # sent cannot be resynchronised, so the server closes with BYE.
    s = socket.create_connection((T.host, T.port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"x1 LOGIN {1000000+}\r\n" + b"y" * 100000)
    lines = []
    try:
        while True:
            ln = f.readline()
            if not ln:
                break
            lines.append(ln)
    except OSError:
        pass
    s.close()
    tagged = [ln for ln in lines if ln.startswith(b"x1 ")]
    R.check("oversized {n+}: tagged BAD [TOOBIG]",
            len(tagged) == 1 and tagged[0].startswith(b"x1 BAD [TOOBIG]"), lines)
    R.check("oversized {n+}: BYE, then the connection closes",
            any(ln.startswith(b"* BYE") for ln in lines), lines)
    c = connect()
    R.check("server still answers after an oversized literal", c.command("NOOP").ok)
    c.logout()


SECTIONS = [
    ("literal-minus", t_literal_minus),
]


def main():
    global T
    args = parse_args(__doc__.splitlines()[0])
    try:
        T = start_target(args, {USER: PASSWORD}, tls=False)
    except Exception as e:  # noqa: BLE001
        R.check("server starts", False, "%s: %s" % (type(e).__name__, e))
        return R.summary()
    print("target: %s on 127.0.0.1:%d" % (T.kind, T.port), flush=True)
    for name, func in SECTIONS:
        if args.only and args.only not in name:
            continue
        if not T.alive():
            R.check("%s: server alive before the section" % name, False, T.log_tail())
            continue
        R.section(name, func)
    return finish(R, T)


if __name__ == "__main__":
    sys.exit(main())
