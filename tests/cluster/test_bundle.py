#!/usr/bin/env python3
"""Change bundles between real starlingd nodes with no peer link (issue 7,
SPEC.md 11).

Two nodes share a users file and a cluster secret but have no `peer` line,
so nothing reaches one from the other except bundle files carried by
`starling bundle export` / `starling bundle import` (through each running
node's admin socket).  Checked here:

  - each node delivers its own messages and sets flags over IMAP; a bundle
    1 -> 2 and one back 2 -> 1 (with --since the state the import wrote)
    make both `starling dump`s identical, every message present exactly
    once, flags carried;
  - an IMAP session in IDLE on node 1 sees the messages of the bundle back
    as EXISTS;
  - a second round after changes on both sides (an EXPUNGE on node 1, a
    STORE and a new message on node 2) converges again, and its bundles
    leave out the texts the other node holds (--since);
  - a bundle that is truncated, has one bit flipped, was signed with another
    cluster secret, or is for alice but names bob inside (made here in
    Python from SPEC.md 11, signed with the right key) is refused: exit
    non-zero, one line on stderr, both users' dumps unchanged;
  - the same bundle imported twice is refused as a replay;
  - a bundle of 4,000 messages imports in steps: the node answers IMAP
    within 1 s throughout;
  - with both nodes stopped, export and import open the stores themselves.

The last line is "test-bundle: N passed, M failed".
"""
import hashlib
import hmac
import os
import re
import sys
import time
import zlib

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness.imapwire import Client  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-bundle")
USER = "alice@example.com"
OTHER = "bob@example.com"
PASSWORD = "secret"
CLUSTERS = []


def message(node_id, i):
    return ("From: n%d@example.com\r\nSubject: node %d message %d\r\n"
            "Message-ID: <n%d.m%d@example.com>\r\n\r\nbody %d/%d\r\n"
            % (node_id, node_id, i, node_id, i, node_id, i)).encode()


def imap_subjects(node):
    """{(node id, message number): count} over every mailbox of USER."""
    a = Client(node.host, node.imap_port)
    a.login(USER, PASSWORD)
    r = a.command('LIST "" "*"')
    names = []
    for line in r.untagged:
        m = re.match(rb'\* LIST \([^)]*\) (?:"[^"]*"|NIL) (.*)$', line.rstrip(b"\r\n"))
        if m:
            names.append(m.group(1).decode())
    found = {}
    for name in names:
        r = a.command("SELECT %s" % name)
        if not r.ok or not r.number("EXISTS"):
            continue
        r = a.command("FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        for line in r.untagged:
            for m in re.finditer(rb"node (\d+) message (\d+)", line):
                k = (int(m.group(1)), int(m.group(2)))
                found[k] = found.get(k, 0) + 1
    a.command("LOGOUT")
    return found


def bundle_export(node, path, since=None):
    args = ["bundle", "export", "-u", USER, "-o", path]
    if since is not None:
        args += ["--since", since]
    return node.cli(*args, timeout=120)


def bundle_import(node, path):
    return node.cli("bundle", "import", path, timeout=120)


def one_line(stderr):
    lines = stderr.decode(errors="replace").strip().splitlines()
    return len(lines) == 1, lines


def new_nodes():
    """Two nodes with no peer link between them."""
    c = Cluster(n=2)
    CLUSTERS.append(c)
    for node in c.nodes:
        node.peer_ids = []
        node.write_config()
    for user in (USER, OTHER):
        r = c.nodes[0].cli("user", "add", user, input=(PASSWORD + "\n").encode())
        R.check("user %s created with the CLI" % user, r.returncode == 0, r.stderr)
    c.start_all()
    return c


def t_converge():
    c = new_nodes()
    n1, n2 = c.nodes
    work = c.dir
    per_node = 3
    for node in (n1, n2):
        for i in range(per_node):
            node.deliver(USER, message(node.node_id, i))
    n2.deliver(OTHER, message(2, 99))
    a = Client(n1.host, n1.imap_port)
    a.login(USER, PASSWORD)
    a.command("SELECT INBOX")
    r = a.command("STORE 1 +FLAGS (\\Flagged)")
    R.check("STORE on node 1 answers OK", r.ok, r)
    a.command("LOGOUT")
    R.check("no link: the nodes' dumps differ", n1.dump(USER) != n2.dump(USER))

    b1 = os.path.join(work, "b1.bundle")
    t0 = time.monotonic()
    r = bundle_export(n1, b1)
    R.check("bundle export on node 1 exits 0", r.returncode == 0, r.stderr)
    R.check("the export says what it wrote", b"messages 3" in r.stdout, r.stdout)
    with open(b1, "rb") as f:
        head = f.read(300)
    R.check("the file starts with the SPEC's header",
            head.startswith(b"STARLING-BUNDLE 1.0\r\nUSER alice@example.com\r\nSOURCE 1\r\n"),
            head[:120])
    r = bundle_import(n2, b1)
    R.check("bundle import on node 2 exits 0", r.returncode == 0, r.stderr)
    R.check("the import wrote the state file next to the bundle",
            os.path.exists(b1 + ".state"), os.listdir(work))

    # IDLE on node 1 in INBOX while the bundle back is imported.
    idle = Client(n1.host, n1.imap_port)
    idle.login(USER, PASSWORD)
    sel = idle.command("SELECT INBOX")
    exists_before = sel.number("EXISTS") or 0
    tag = idle.next_tag()
    idle.send("%s IDLE\r\n" % tag)
    first = idle.read_response()
    R.check("IDLE on node 1 answers with a continuation", first.startswith(b"+"), first)

    b2 = os.path.join(work, "b2.bundle")
    r = bundle_export(n2, b2, since=b1 + ".state")
    R.check("bundle export --since on node 2 exits 0", r.returncode == 0, r.stderr)
    r = bundle_import(n1, b2)
    R.check("bundle import on node 1 exits 0", r.returncode == 0, r.stderr)
    print("measured: 2 bundles of %d messages each way, exported and imported in %.2f s"
          % (per_node, time.monotonic() - t0))
    got = idle.read_untagged_until(
        lambda g: any(x.rstrip().endswith(b" EXISTS") for x in g), 10)
    R.check("IDLE on node 1 sees node 2's messages arrive as EXISTS",
            any(re.match(rb"\* (\d+) EXISTS", x) and int(x.split()[1]) > exists_before
                for x in got), got)
    idle.send("DONE\r\n")
    idle.wait_tagged(tag)
    idle.command("LOGOUT")

    d1, d2 = n1.dump(USER), n2.dump(USER)
    R.check("after a bundle each way the dumps are identical", d1 == d2 and d1 != "",
            (d1[:1500], d2[:1500]))
    for node in (n1, n2):
        found = imap_subjects(node)
        want = {(n, i): 1 for n in (1, 2) for i in range(per_node)}
        R.check("every message is present exactly once on node %d (IMAP)" % node.node_id,
                found == want, found)
    R.check("node 1's \\Flagged is on node 2", "\\Flagged" in d2, d2[:2000])
    R.check("bob's mail on node 2 was not carried", n1.dump(OTHER) == "", n1.dump(OTHER))

    # Round 2: both sides change, then a bundle each way again.
    a = Client(n1.host, n1.imap_port)
    a.login(USER, PASSWORD)
    a.command("SELECT INBOX")
    a.command("STORE 1 +FLAGS (\\Deleted)")
    r = a.command("EXPUNGE")
    R.check("EXPUNGE on node 1 answers OK", r.ok, r)
    a.command("LOGOUT")
    b = Client(n2.host, n2.imap_port)
    b.login(USER, PASSWORD)
    b.command("SELECT INBOX")
    r = b.command("STORE 2 +FLAGS (\\Answered)")
    R.check("STORE on node 2 answers OK", r.ok, r)
    b.command("LOGOUT")
    n2.deliver(USER, message(2, per_node))
    b3, b4 = os.path.join(work, "b3.bundle"), os.path.join(work, "b4.bundle")
    r1 = bundle_export(n1, b3, since=b2 + ".state")
    r2 = bundle_import(n2, b3)
    r3 = bundle_export(n2, b4, since=b3 + ".state")
    r4 = bundle_import(n1, b4)
    R.check("round 2: export, import, export back, import all exit 0",
            all(x.returncode == 0 for x in (r1, r2, r3, r4)),
            [x.stderr for x in (r1, r2, r3, r4)])
    # The first exchange renumbered the UID conflicts (those texts travel
    # again, SPEC.md 11.3); now every message has the same UID on both.
    m = re.search(rb"left_out (\d+)", r1.stdout)
    R.check("round 2: node 1's bundle leaves out the texts node 2 holds",
            m is not None and int(m.group(1)) >= 2 * per_node - 1, r1.stdout)
    d1, d2 = n1.dump(USER), n2.dump(USER)
    R.check("round 2: the dumps are identical again", d1 == d2, (d1[:1500], d2[:1500]))
    R.check("round 2: the expunge and the \\Answered reached both",
            "\\Answered" in d1 and d1.count("\nmsg ") == d2.count("\nmsg "), d1[d1.find("\nmsg"):])

    # A replay.
    before = (n1.dump(USER), n1.dump(OTHER))
    r = bundle_import(n1, b4)
    ok, lines = one_line(r.stderr)
    R.check("the same bundle again is refused as a replay (one line on stderr)",
            r.returncode != 0 and ok and b"replay" in r.stderr, r.stderr)
    R.check("the replay changed nothing", (n1.dump(USER), n1.dump(OTHER)) == before)
    t_refusals(c, b4)
    t_busy(c)
    t_stopped(c)
    c.close()
    reps = c.sanitizer_reports()
    R.check("no sanitizer report in the node logs", not reps, reps)


def refused(node, data, name, want, what):
    path = os.path.join(node.cluster.dir, name)
    with open(path, "wb") as f:
        f.write(data)
    before = (node.dump(USER), node.dump(OTHER))
    r = bundle_import(node, path)
    ok, lines = one_line(r.stderr)
    R.check("%s: refused with one line on stderr" % what,
            r.returncode != 0 and ok and want in r.stderr.decode(errors="replace"),
            (r.returncode, r.stderr))
    R.check("%s: nothing changed" % what, (node.dump(USER), node.dump(OTHER)) == before)


def seal(secret, user, source, created, stream):
    """A bundle as SPEC.md 11 writes it."""
    body = zlib.compress(stream)
    head = ("STARLING-BUNDLE 1.0\r\nUSER %s\r\nSOURCE %d\r\nCREATED %d\r\nSINCE FULL\r\n"
            "KEY CLUSTER\r\nBODY DEFLATE %d %d\r\nEND\r\n"
            % (user, source, created, len(body), len(stream))).encode()
    digest = hashlib.sha256(head + body).digest()
    sig = hmac.new(secret, b"STARLING-BUNDLE-1\x00" + digest, hashlib.sha256).hexdigest()
    return (head + body + b"DIGEST SHA-256 " + digest.hex().encode() + b"\r\n"
            + b"SIGNATURE HMAC-SHA256 " + sig.encode() + b"\r\n")


def t_refusals(c, good_path):
    n1, n2 = c.nodes
    # A fresh bundle from node 2, not imported yet, to damage.
    path = os.path.join(c.dir, "fresh.bundle")
    n2.deliver(USER, message(2, 50))
    r = bundle_export(n2, path)
    R.check("a fresh export exits 0", r.returncode == 0, r.stderr)
    with open(path, "rb") as f:
        good = f.read()
    refused(n1, good[:len(good) // 2], "half.bundle", "truncated", "a truncated bundle")
    refused(n1, good[:-1], "short.bundle", "bundle refused", "a bundle missing its last byte")
    for pos in (30, len(good) // 2, len(good) - 40):
        flipped = bytearray(good)
        flipped[pos] ^= 0x04
        refused(n1, bytes(flipped), "flip%d.bundle" % pos, "bundle refused",
                "a bundle with bit 2 of byte %d flipped" % pos)
    with open(c.secret_file, "rb") as f:
        secret = f.read().rstrip(b"\r\n")
    other_key = seal(os.urandom(32).hex().encode(), USER, 2, int(time.time()),
                     b"B1 SUBSCRIBE alice@example.com Elsewhere\r\n")
    refused(n1, other_key, "otherkey.bundle", "another key",
            "a bundle signed with another cluster secret")
    wrong_user = seal(secret, USER, 2, int(time.time()),
                      b"B1 CREATE bob@example.com INBOX 0123456789abcdef0123456789abcdef 7\r\n")
    refused(n1, wrong_user, "wronguser.bundle", "another user",
            "a bundle for alice that names bob")
    # The Python-made bundle is accepted when it is right (the format is
    # the SPEC's, not only what the C code writes).
    right = seal(secret, USER, 2, int(time.time()) + 1,
                 b"B1 SUBSCRIBE alice@example.com Elsewhere\r\n")
    p = os.path.join(c.dir, "right.bundle")
    with open(p, "wb") as f:
        f.write(right)
    r = bundle_import(n1, p)
    R.check("a bundle made from SPEC.md 11 in Python is accepted", r.returncode == 0, r.stderr)
    R.check("its subscription arrived", "subscribed Elsewhere" in n1.dump(USER),
            n1.dump(USER)[:600])
    r = n1.cli("bundle", "import", os.path.join(c.dir, "missing.bundle"))
    R.check("a missing file fails with one line", r.returncode != 0 and one_line(r.stderr)[0],
            r.stderr)


LAST_CREATED_FROM_2 = []


def t_busy(c):
    """A large import runs in steps: the node answers IMAP meanwhile."""
    import threading
    n1 = c.nodes[0]
    with open(c.secret_file, "rb") as f:
        secret = f.read().rstrip(b"\r\n")
    count = 4000
    mbox = "0123456789abcdef0123456789abcd%02x" % 0xee
    parts = [b"B1 CREATE %s Big %s 7\r\n" % (USER.encode(), mbox.encode()),
             b"B2 MBOX 1 %s Big 7 %s\r\n" % (USER.encode(), mbox.encode()),
             b"B3 SELECT 1\r\n",
             b"B4 SYNC-BEGIN 0 %d 1 %d\r\n" % (count, count + 1)]
    for i in range(count):
        text = (b"Subject: big %d\r\n\r\n" % i) + os.urandom(600).hex().encode() + b"\r\n"
        parts.append(b"B%d SAVE 1700000000+0000 %d %d %032x () {%d}\r\n%s\r\n"
                     % (5 + i, i + 1, i + 1, 0xb16 << 64 | i, len(text), text))
    parts.append(b"B%d SYNC-END\r\n" % (5 + count))
    created = int(time.time()) + 5
    LAST_CREATED_FROM_2.append(created)
    data = seal(secret, USER, 2, created, b"".join(parts))
    path = os.path.join(c.dir, "big.bundle")
    with open(path, "wb") as f:
        f.write(data)
    a = Client(n1.host, n1.imap_port)
    a.login(USER, PASSWORD)
    worst = [0.0]
    done = threading.Event()

    def ping():
        while not done.is_set():
            t = time.monotonic()
            a.command("NOOP")
            worst[0] = max(worst[0], time.monotonic() - t)
            time.sleep(0.02)
    th = threading.Thread(target=ping)
    th.start()
    t0 = time.monotonic()
    r = bundle_import(n1, path)
    took = time.monotonic() - t0
    done.set()
    th.join()
    a.command("LOGOUT")
    print("measured: import of %d messages (%d bytes) took %.2f s; slowest IMAP NOOP "
          "meanwhile %.3f s" % (count, len(data), took, worst[0]))
    R.check("a bundle of %d messages imports" % count, r.returncode == 0, r.stderr)
    R.check("the node answered IMAP within 1 s throughout the import", worst[0] < 1.0,
            worst[0])
    d = n1.dump(USER)
    R.check("all %d messages arrived" % count, d.count("\nmsg Big ") == count,
            d.count("\nmsg Big "))


def t_stopped(c):
    """With no node running, the CLI opens the stores itself."""
    n1, n2 = c.nodes
    # Node 1 refuses a bundle from node 2 made before the last one it took
    # (a replay): the big one above was dated a few seconds ahead.
    while LAST_CREATED_FROM_2 and time.time() <= max(LAST_CREATED_FROM_2) + 1:
        time.sleep(0.2)
    n1.deliver(USER, message(1, 60))
    c.stop_all()
    d2_before = n2.dump(USER)
    p = os.path.join(c.dir, "offline1.bundle")
    r = bundle_export(n1, p)
    R.check("stopped nodes: export opens the store and exits 0", r.returncode == 0, r.stderr)
    r = bundle_import(n2, p)
    R.check("stopped nodes: import opens the store and exits 0", r.returncode == 0, r.stderr)
    R.check("stopped nodes: the import changed node 2", n2.dump(USER) != d2_before)
    p2 = os.path.join(c.dir, "offline2.bundle")
    r = bundle_export(n2, p2, since=p + ".state")
    r2 = bundle_import(n1, p2)
    R.check("stopped nodes: the bundle back exits 0", r.returncode == 0 and r2.returncode == 0,
            (r.stderr, r2.stderr))
    R.check("stopped nodes: the dumps are identical", n1.dump(USER) == n2.dump(USER))


def main():
    R.section("two nodes without a link: bundles both ways, refusals", t_converge)
    for cl in CLUSTERS:
        cl.close()
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
