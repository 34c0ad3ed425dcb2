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


# ------------------------------------------------------------ LIST-EXTENDED
def list_lines(r):
    """{name: (set of lowercased attributes, extended-data tokens or None)}"""
    out = {}
    for toks in r.find("LIST"):
        name = toks[3].decode()
        out[name] = ({a.decode().lower() for a in toks[1]}, toks[4] if len(toks) > 4 else None)
    return out


def statuses(r):
    out = {}
    for toks in r.find("STATUS"):
        items = toks[2]
        out[toks[1].decode()] = {items[i].decode().upper(): int(items[i + 1])
                                 for i in range(0, len(items), 2)}
    return out


def t_list_extended():
    c = connect()
    cp = caps(c)
    R.check("CAPABILITY has LIST-EXTENDED and LIST-STATUS",
            {"LIST-EXTENDED", "LIST-STATUS"} <= cp, cp)
    for box in ("lx/a", "lx/b/c", "lx/d", "lx/e/f", "lx/e/g"):
        R.check("CREATE " + box, c.command("CREATE", box).ok)
    for box in ("lx/a", "lx/b/c", "lx/gone", "lx/e/g"):
        R.check("SUBSCRIBE " + box, c.command("SUBSCRIBE", box).ok)
    c.command("APPEND", "lx/a", Literal(msg("one")))
    c.command("APPEND", "lx/a", Literal(msg("two")))

    r = c.command('LIST "" (lx/a lx/d)')
    got = list_lines(r)
    R.check("several patterns: each one's matches, nothing else",
            r.ok and set(got) == {"lx/a", "lx/d"}, r.untagged)

    r = c.command('LIST (SUBSCRIBED) "" lx/*')
    got = list_lines(r)
    R.check("(SUBSCRIBED): the subscribed names only",
            r.ok and set(got) == {"lx/a", "lx/b/c", "lx/gone", "lx/e/g"}, r.untagged)
    R.check("(SUBSCRIBED): \\Subscribed on each",
            all("\\subscribed" in a for a, _ in got.values()), got)
    R.check("(SUBSCRIBED): a subscribed name that does not exist is \\NonExistent",
            "\\nonexistent" in got.get("lx/gone", (set(), None))[0], got)

    r = c.command('LIST (SUBSCRIBED RECURSIVEMATCH) "" lx/%')
    got = list_lines(r)
    R.check("RECURSIVEMATCH: unsubscribed parents of unlisted subscribed children",
            r.ok and set(got) == {"lx/a", "lx/b", "lx/gone", "lx/e"}, r.untagged)
    b = got.get("lx/b", (set(), None))
    R.check("RECURSIVEMATCH: the parent carries CHILDINFO (\"SUBSCRIBED\")",
            b[1] is not None and [x.upper() for x in b[1][:1]] == [b"CHILDINFO"] and
            [x.upper() for x in b[1][1]] == [b"SUBSCRIBED"] and "\\subscribed" not in b[0], b)
    R.check("RECURSIVEMATCH: no CHILDINFO on a subscribed name",
            got.get("lx/a", (set(), 1))[1] is None, got)
    r = c.command('LIST (SUBSCRIBED RECURSIVEMATCH) "" (lx/b lx/b/c)')
    got = list_lines(r)
    R.check("RECURSIVEMATCH: no CHILDINFO parent when the child is listed itself",
            r.ok and set(got) == {"lx/b/c"}, r.untagged)

    r = c.command('LIST "" lx/% RETURN (CHILDREN SUBSCRIBED)')
    got = list_lines(r)
    R.check("RETURN (CHILDREN SUBSCRIBED): \\HasChildren on lx/e, \\Subscribed on lx/a",
            r.ok and "\\haschildren" in got.get("lx/e", (set(),))[0] and
            "\\subscribed" in got.get("lx/a", (set(),))[0] and
            "\\subscribed" not in got.get("lx/d", ({"\\subscribed"},))[0], got)

    r = c.command('LIST "" lx/% RETURN (STATUS (MESSAGES UIDNEXT UNSEEN))')
    st = statuses(r)
    R.check("LIST-STATUS: STATUS for each selectable listed mailbox",
            r.ok and set(st) == {"lx/a", "lx/b", "lx/d", "lx/e"}, r.untagged)
    R.check("LIST-STATUS: the counts are right",
            st.get("lx/a") == {"MESSAGES": 2, "UIDNEXT": 3, "UNSEEN": 2} and
            st.get("lx/d", {}).get("MESSAGES") == 0, st)
    order = [u.split(b" ")[1] for u in r.untagged]
    R.check("LIST-STATUS: each STATUS follows its LIST line",
            all(order[i - 1] == b"LIST" for i, w in enumerate(order) if w == b"STATUS"), order)
    r = c.command('LIST (SUBSCRIBED) "" lx/* RETURN (STATUS (MESSAGES))')
    R.check("LIST-STATUS: no STATUS for a \\NonExistent name",
            r.ok and "lx/gone" not in statuses(r) and "lx/a" in statuses(r), r.untagged)

    for bad in ('LIST (BOGUS) "" ""', 'LIST (RECURSIVEMATCH) "" %',
                'LIST (RECURSIVEMATCH REMOTE) "" %', 'LIST "" % RETURN (BOGUS)',
                'LIST "" % RETURN (STATUS (MESSAGES BOGUS))', 'LIST "" % RETURN (STATUS)',
                'LIST "" % RETURN (STATUS ())',
                'LIST "" (%s)' % " ".join("p%d" % i for i in range(17)),
                'LIST "" ()', 'LIST "" % RETURN'):
        r = c.command(bad)
        R.check("BAD: " + bad[:60], r.status == "BAD", r)
        c.command("NOOP")  # the server hangs up after 10 BADs in a row
    R.check("REMOTE alone is accepted", c.command('LIST (REMOTE) "" %').ok)
    R.check("the session survives the BADs", c.command("NOOP").ok)
    c.logout()


SECTIONS = [
    ("literal-minus", t_literal_minus),
    ("list-extended", t_list_extended),
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
