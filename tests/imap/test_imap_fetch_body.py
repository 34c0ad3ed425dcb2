#!/usr/bin/env python3
"""Body FETCH of large texts against one real server.

A whole text (BODY[], BODY.PEEK[], RFC822 and their partials) goes from the
store's journal straight into the connection's output, chunk by chunk
(256 KiB chunks): these checks fetch texts of several chunks whole and in
ranges that start or end at or next to a chunk boundary, the same text as
two items of one FETCH and beside items that need it parsed, many large
texts in one FETCH (more than the output's high-water mark), texts
expunged by another session while the FETCH is being sent, and outputs far
bigger than the sockets hold (a reader that stalls, one that resets, small
receive windows, a shutdown with output pending).  Every byte is
compared with what was appended.  `--dovecot` runs the same checks against
a private Dovecot.  Last line: "imap-fetch-body: N passed, M failed".
"""
import socket
import ssl
import struct
import sys
import time

from imapcommon import parse_args, start_target, finish, Report
import harness.imapwire as imapwire
from harness.imapwire import Client, Literal, parse, fetch_items, quote

USER, PASSWORD = "carol", "c4rol-pw"
CHUNK = 256 * 1024

R = Report("imap-fetch-body")
T = None


def connect():
    c = Client(T.host, T.port, timeout=30.0)
    r = c.login(USER, PASSWORD)
    if not r.ok:
        raise RuntimeError("login failed: %r" % r)
    return c


def big_message(n, size):
    """A text of about size bytes whose every line says where it is."""
    hdr = ("From: a@example.org\r\nTo: b@example.net\r\nSubject: big %d\r\n"
           "Message-ID: <big-%d@test>\r\nContent-Type: text/plain\r\n\r\n" % (n, n)).encode()
    lines, total = [], len(hdr)
    i = 0
    while total < size:
        line = b"msg %06d line %08d %s\r\n" % (n, i, b"abcdefghijklmnopqrstuvwxyz"[:(i * 7) % 27])
        lines.append(line)
        total += len(line)
        i += 1
    return hdr + b"".join(lines)


def append(c, box, text):
    r = c.command("APPEND", quote(box), Literal(text, plus=True))
    if not r.ok:
        raise RuntimeError("APPEND failed: %r" % r)


def fetch_map(r):
    """{uid: items} of a FETCH response."""
    out = {}
    for u in r.untagged:
        if b" FETCH " not in u[:30]:
            continue
        toks = parse(u)
        items = fetch_items(toks[3])
        out[items["UID"]] = items
    return out


def t_whole_and_partial():
    c = connect()
    c.command("CREATE", quote("big"))
    texts = [big_message(1, 3 * CHUNK + 1000), big_message(2, 10), b"", big_message(4, CHUNK)]
    # An empty text is refused by some servers; keep the ones accepted.
    for t in texts:
        if t:
            append(c, "big", t)
    texts = [t for t in texts if t]
    r = c.command("EXAMINE", quote("big"))
    R.check("examine", r.ok, r)
    r = c.command("UID FETCH 1:* (BODY.PEEK[])")
    got = fetch_map(r)
    R.check("whole texts: tagged OK", r.ok, r)
    R.equal("whole texts: one response each", sorted(got), list(range(1, len(texts) + 1)))
    for uid, t in enumerate(texts, 1):
        R.check("whole text %d (%d bytes) byte for byte" % (uid, len(t)),
                got.get(uid, {}).get("BODY[]") == t)
    t = texts[0]
    n = len(t)
    offs = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK - 1, 2 * CHUNK, 3 * CHUNK, n - 1, n, n + 5]
    lens = [1, 2, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3, n]
    bad = []
    for o in offs:
        for ln in lens:
            r1 = c.command("UID FETCH 1 (BODY.PEEK[]<%d.%d>)" % (o, ln))
            v = fetch_map(r1).get(1, {}).get("BODY[]<%d>" % o)
            if not r1.ok or v != t[o:o + ln]:
                bad.append((o, ln, None if v is None else len(v)))
    R.equal("partial ranges at chunk boundaries", bad, [])
    # The same text twice in one FETCH, and beside items that parse it.
    r = c.command("UID FETCH 1 (RFC822 BODY.PEEK[] BODY.PEEK[TEXT] RFC822.SIZE "
                  "BODY.PEEK[]<%d.10>)" % (CHUNK - 5))
    it = fetch_map(r).get(1, {})
    R.check("RFC822 and BODY[] in one FETCH", it.get("RFC822") == t and it.get("BODY[]") == t)
    body = t[t.index(b"\r\n\r\n") + 4:]
    R.check("BODY[TEXT] beside them", it.get("BODY[TEXT]") == body)
    R.check("partial beside them", it.get("BODY[]<%d>" % (CHUNK - 5)) == t[CHUNK - 5:CHUNK + 5])
    R.equal("RFC822.SIZE", it.get("RFC822.SIZE"), n)
    r = c.command("UID FETCH 1 (BINARY.PEEK[1] BODY.PEEK[])")
    it = fetch_map(r).get(1, {})
    R.check("BINARY[1] and BODY[] in one FETCH", r.ok and it.get("BODY[]") == t
            and it.get("BINARY[1]") == body, r)
    # RFC822 (not PEEK) sets \Seen and still sends the text.
    r = c.command("SELECT", quote("big"))
    r = c.command("UID FETCH 2 (RFC822)")
    it = fetch_map(r).get(2, {})
    R.check("RFC822 sets \\Seen and sends the text", it.get("RFC822") == texts[1] and
            b"\\Seen" in it.get("FLAGS", []), it)
    c.logout()


def t_many_large_texts():
    c = connect()
    c.command("CREATE", quote("many"))
    texts = [big_message(100 + i, CHUNK + 4000 * i) for i in range(12)]
    for t in texts:
        append(c, "many", t)
    c.command("EXAMINE", quote("many"))
    r = c.command("UID FETCH 1:* (UID BODY.PEEK[] FLAGS)")
    got = fetch_map(r)
    R.check("12 texts of 256+ KiB in one FETCH: tagged OK", r.ok, r)
    R.check("every text byte for byte, in order",
            [got.get(u, {}).get("BODY[]") == texts[u - 1] for u in range(1, 13)] == [True] * 12)
    c.logout()


def t_expunged_while_sent():
    """A FETCH whose output is bigger than the client reads is produced in
    steps; another session expunges the texts meanwhile (the last
    reference, so the store frees them).  What was sent is intact, the rest
    is left out, the FETCH ends, and the session goes on."""
    a, b = connect(), connect()
    a.command("CREATE", quote("gone"))
    # 24 MiB: more than the server's output buffer and both sockets'
    # buffers hold, so the server is still producing when the expunge comes.
    texts = [big_message(200 + i, 4 * CHUNK + 11 * i) for i in range(24)]
    for t in texts:
        append(a, "gone", t)
    r = a.command("SELECT", quote("gone"))
    R.check("select", r.ok, r)
    r = b.command("SELECT", quote("gone"))
    a.send(b"f1 UID FETCH 1:* (BODY.PEEK[])\r\n")
    time.sleep(0.5)  # the server fills its output and waits for the reader
    r = b.command("UID STORE 2:24 +FLAGS.SILENT (\\Deleted)")
    R.check("other session flags", r.ok, r)
    r = b.command("UID EXPUNGE 2:24")
    R.check("other session expunges during the FETCH", r.ok, r)
    r = a.wait_tagged("f1")
    R.check("the FETCH ends with a tagged response", r.status in ("OK", "NO"), r)
    got = fetch_map(r)
    print("   (texts sent before the expunge: %s)" % sorted(got), flush=True)
    R.check("the first text arrived", 1 in got, sorted(got))
    # RFC 2180 4.1.3 lets a server send NIL or an empty text for a message
    # expunged meanwhile; never some of its bytes, nor another's.
    broken = [uid for uid, items in got.items()
              if items.get("BODY[]") not in (texts[uid - 1], None, b"")]
    R.equal("every text sent is intact (or NIL or empty)", broken, [])
    gone = len(r.expunges())  # a server may report them with the FETCH
    r = a.command("NOOP")
    R.check("the session goes on and learns of the expunges",
            r.ok and gone + len(r.expunges()) == 23, (gone, r))
    r = a.command("UID FETCH 1:* (BODY.PEEK[])")
    got = fetch_map(r)
    R.check("the remaining text is still whole", r.ok and sorted(got) == [1] and
            got[1].get("BODY[]") == texts[0], r)
    b.logout()
    a.logout()


def t_sizes_plain_and_tls():
    """Texts around the size from which a plain connection sends them from
    the store's mapping instead of copying them (8 KiB), whole and in
    ranges, the same over implicit TLS (always copied), and a FETCH of many
    pipelined behind each other: every byte as appended."""
    c = connect()
    c.command("CREATE", quote("sizes"))
    texts = [big_message(300 + i, n) for i, n in enumerate(
        (8100, 8192, 8300, 20000, CHUNK + 3, 2 * CHUNK + 77))]
    for t in texts:
        append(c, "sizes", t)
    conns = [("plain", c)]
    if T.imaps_port:
        ctx = ssl.create_default_context(cafile=T.tls_cert)
        s = Client(T.host, T.imaps_port, timeout=30.0, tls_context=ctx,
                   server_hostname="localhost")
        R.check("TLS login", s.login(USER, PASSWORD).ok)
        conns.append(("TLS", s))
    for name, cl in conns:
        cl.command("EXAMINE", quote("sizes"))
        r = cl.command("UID FETCH 1:* (BODY.PEEK[] RFC822.SIZE)")
        got = fetch_map(r)
        R.check("%s: every size whole, byte for byte" % name, r.ok and all(
            got.get(u, {}).get("BODY[]") == t for u, t in enumerate(texts, 1)),
            [(u, len(got.get(u, {}).get("BODY[]") or b"")) for u in got])
        bad = []
        for u, t in enumerate(texts, 1):
            for o, ln in ((0, 8191), (0, 8192), (1, 8192), (len(t) - 8193, 9000),
                          (100, len(t))):
                o = max(o, 0)
                r = cl.command("UID FETCH %d (BODY.PEEK[]<%d.%d>)" % (u, o, ln))
                v = fetch_map(r).get(u, {}).get("BODY[]<%d>" % o)
                if v != t[o:o + ln]:
                    bad.append((u, o, ln))
        R.equal("%s: ranges around 8 KiB" % name, bad, [])
        # 30 FETCHes sent at once: the texts queued between the responses'
        # own bytes come out in order.
        tags = ["p%d" % i for i in range(30)]
        cl.send(b"".join(b"%s UID FETCH %d (UID BODY.PEEK[])\r\n" % (
            tg.encode(), i % len(texts) + 1) for i, tg in enumerate(tags)))
        ok = True
        for i, tg in enumerate(tags):
            r = cl.wait_tagged(tg)
            u = i % len(texts) + 1
            if not r.ok or fetch_map(r).get(u, {}).get("BODY[]") != texts[u - 1]:
                ok = False
        R.check("%s: 30 pipelined FETCHes, each text right" % name, ok)
        R.check("%s: the session goes on" % name, cl.command("NOOP").ok)
        cl.logout()


def t_records_in_batches():
    """The records of a step's UIDs are read in batches: gaps (expunged
    UIDs) inside a batch, sparse sets, and per-message flags and sizes must
    each come from their own message."""
    c = connect()
    c.command("CREATE", quote("gaps"))
    texts = {}
    for u in range(1, 61):
        t = big_message(300 + u, 200 + 97 * u)
        texts[u] = t
        append(c, "gaps", t)
    r = c.command("SELECT", quote("gaps"))
    R.check("select", r.ok, r)
    c.command("UID STORE 1:60 +FLAGS.SILENT (\\Flagged)")
    gone = [u for u in range(1, 61) if u % 3 == 0 or 20 <= u <= 33]
    for u in range(1, 61):
        if u % 4 == 0:
            c.command("UID STORE %d -FLAGS.SILENT (\\Flagged)" % u)
    c.command("UID STORE %s +FLAGS.SILENT (\\Deleted)" % ",".join(map(str, gone)))
    r = c.command("EXPUNGE")
    R.check("expunge", r.ok, r)
    live = [u for u in range(1, 61) if u not in gone]

    def check(what, uidset, want):
        r = c.command("UID FETCH %s (UID FLAGS RFC822.SIZE BODY.PEEK[])" % uidset)
        got = fetch_map(r)
        bad = [u for u in want
               if u not in got or got[u].get("BODY[]") != texts[u]
               or got[u].get("RFC822.SIZE") != len(texts[u])
               or (b"\\Flagged" in got[u].get("FLAGS", [])) != (u % 4 != 0)]
        R.check(what, r.ok and sorted(got) == want and not bad,
                (r.status, sorted(got), bad))

    check("a range with gaps", "1:60", live)
    check("a sparse set", "1,17,59", [1, 17, 59])
    check("a set of single UIDs and ranges", "2,4:8,34:40,58:*",
          [u for u in live if u == 2 or 4 <= u <= 8 or 34 <= u <= 40 or u >= 58])
    r = c.command("FETCH 1:* (UID FLAGS)")
    got = fetch_map(r)
    R.check("by sequence number", r.ok and sorted(got) == live, sorted(got))
    # A non-PEEK fetch sets \Seen on exactly the messages it names (their
    # records read in batches first, to find those lacking it).
    want = [u for u in live if u >= 34]  # dense enough to be read in batches
    c.command("UID STORE 50:60 +FLAGS.SILENT (\\Seen)")
    c.command("UID STORE 59 -FLAGS.SILENT (\\Seen)")
    r = c.command("UID FETCH %s (BODY[])" % ",".join(map(str, want)))
    got = fetch_map(r)
    # RFC 3501 6.4.5: FLAGS come with the messages whose flags changed.
    R.check("BODY[] sends each text and sets \\Seen", r.ok and sorted(got) == want and
            all(got[u].get("BODY[]") == texts[u] and
                (b"\\Seen" in got[u].get("FLAGS", []) or (u >= 50 and u != 59 and
                                                         "FLAGS" not in got[u]))
                for u in want), (r.status, sorted(got)))
    r = c.command("UID SEARCH SEEN")
    seen = r.search()[0] if r.ok else None
    R.equal("\\Seen on exactly those (and the ones set before)",
            seen and sorted(seen), sorted(set(want) | {u for u in live if 50 <= u <= 60}))
    c.logout()


STALLED = []  # sessions left not reading until the server stops (t_big_outputs)


def t_big_outputs():
    """Outputs far bigger than the sockets hold.  A session that stops
    reading the answer to a big FETCH holds up nobody: another session gets
    its own big FETCHes (every byte) and its NOOPs meanwhile; a session
    that resets its connection in the middle of a big FETCH leaves the
    server serving; readers with small receive windows get every byte of
    1 MiB and 6 MiB texts in order; and a session that never reads is left
    until the server stops (the shutdown section then checks that
    starlingd exits 0 with no sanitizer report)."""
    a, b = connect(), connect()
    a.command("CREATE", quote("stall"))
    texts = [big_message(400 + i, 4 * CHUNK + 13 * i) for i in range(16)]
    for t in texts:
        append(a, "stall", t)
    R.check("examine", a.command("EXAMINE", quote("stall")).ok)
    a.send(b"s1 UID FETCH 1:* (BODY.PEEK[])\r\n")  # 16 MiB, never read
    STALLED.append(a)
    time.sleep(0.3)
    R.check("other session: examine", b.command("EXAMINE", quote("stall")).ok)
    t0 = time.monotonic()
    ok = True
    for _ in range(3):
        r = b.command("UID FETCH 1:4 (UID BODY.PEEK[])")
        got = fetch_map(r)
        ok = ok and r.ok and all(got.get(u, {}).get("BODY[]") == texts[u - 1] for u in range(1, 5))
        ok = ok and b.command("NOOP").ok
    dt = time.monotonic() - t0
    R.check("other session: 3 FETCHes of 4 MiB, byte for byte, while one stalls", ok)
    R.check("other session: not held up (%.2f s)" % dt, dt < 10.0, dt)
    # A reader that goes away mid-FETCH (reset, not a polite close).
    c = connect()
    c.command("EXAMINE", quote("stall"))
    c.send(b"g1 UID FETCH 1:* (BODY.PEEK[])\r\n")
    got = 0
    while got < 3 * CHUNK:
        d = c.sock.recv(65536)
        if not d:
            break
        got += len(d)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.sock.close()
    time.sleep(0.3)
    r = b.command("UID FETCH 16 (BODY.PEEK[])")
    R.check("after a reader went away mid-FETCH the server serves on",
            r.ok and fetch_map(r).get(16, {}).get("BODY[]") == texts[15], r.status)
    # Small receive windows (set before connecting): the server's socket
    # fills in the middle of a text, again and again.  One such reader
    # reads everything (every byte must arrive, in order); another never
    # reads, so output is still waiting for room when the server stops.
    real = imapwire.socket.create_connection

    def small_window(addr, timeout=None, *args, **kw):
        sk = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sk.settimeout(timeout)
        sk.connect(addr)
        return sk
    imapwire.socket.create_connection = small_window
    try:
        slow, stuck = connect(), connect()
    finally:
        imapwire.socket.create_connection = real
    # Texts of 6 MiB: more than the sockets have room for.
    huge = [big_message(500 + i, 24 * CHUNK + 7 * i) for i in range(2)]
    for t in huge:
        append(b, "stall", t)
    slow.command("EXAMINE", quote("stall"))
    r = slow.command("UID FETCH 1:8,17:18 (UID BODY.PEEK[])")
    got = fetch_map(r)
    want = {u: texts[u - 1] for u in range(1, 9)}
    want.update({17: huge[0], 18: huge[1]})
    R.check("small window: 8 x 1 MiB and 2 x 6 MiB, every byte in order", r.ok and all(
        got.get(u, {}).get("BODY[]") == t for u, t in want.items()), r.status)
    R.check("small window: the session goes on", slow.command("NOOP").ok)
    stuck.command("EXAMINE", quote("stall"))
    stuck.send(b"s2 UID FETCH 17:18 (BODY.PEEK[])\r\n")
    STALLED.append(stuck)
    time.sleep(0.3)
    R.check("the others still served", b.command("NOOP").ok and slow.command("NOOP").ok)
    slow.logout()
    b.logout()


SECTIONS = [
    ("whole texts and partials at chunk boundaries", t_whole_and_partial),
    ("many large texts in one FETCH", t_many_large_texts),
    ("texts expunged while being sent", t_expunged_while_sent),
    ("message records read in batches", t_records_in_batches),
    ("sizes around the in-place threshold, plain and TLS", t_sizes_plain_and_tls),
    ("outputs bigger than the sockets hold", t_big_outputs),
]


def main():
    global T
    args = parse_args(__doc__.splitlines()[0])
    try:
        T = start_target(args, {USER: PASSWORD}, tls=True)
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
