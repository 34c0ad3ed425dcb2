#!/usr/bin/env python3
"""Deleted mailboxes leave tombstones (SPEC.md 7.3, 10.5).

- A node whose store was wiped is resynced by a peer: the peer gives it
  every mailbox back and deletes nothing of its own (without tombstones the
  list merge took "missing on the other side" for "deleted there" and
  emptied the survivor).
- A replicated DELETE of a mailbox a node lacks is remembered, and a CREATE
  of that mailbox replayed after it (from another node's log) is refused
  with NO [NONEXISTENT] instead of bringing it back.

The last line is "cluster-deletes: N passed, M failed".
"""
import os
import shutil
import sys

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness import imapwire  # noqa: E402
from harness.peerwire import PyPeer  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("cluster-deletes")


def diff(a, b):
    import difflib
    return "\n".join(difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0))


def resync(node, peer):
    r = node.cli("resync", "-u", "alice", "--peer", str(peer), timeout=120)
    return r.returncode, r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


def t_wiped_node(c):
    n1, n2 = c.nodes
    imap = imapwire.Client(n1.host, n1.imap_port)
    R.equal("login", imap.login("alice", "pw").status, "OK")
    R.equal("CREATE Projects", imap.command("CREATE Projects").status, "OK")
    for box in ("INBOX", "Projects"):
        for i in range(3):
            r = imap.command("APPEND %s" % box, imapwire.Literal(
                "Subject: %s %d\r\n\r\nbody\r\n" % (box, i)))
            R.equal("APPEND to %s" % box, r.status, "OK")
    imap.close()
    before = c.wait_dumps_equal("alice", timeout=60)
    rc, out = resync(n1, 2)
    R.check("a resync records the common state", rc == 0, out)
    n2.stop()
    shutil.rmtree(n2.data_dir)
    n2.start()
    c.wait_links_up(timeout=30)
    rc, out = resync(n1, 2)
    R.check("the resync toward the wiped node converges", rc == 0, out)
    R.check("it deleted no mailbox", "mailboxes_deleted: 0" in out, out)
    after = n1.dump("alice")
    R.check("node 1 lost nothing", after == before, diff(before, after))
    R.check("node 2 has everything back", n2.dump("alice") == after,
            diff(after, n2.dump("alice")))


def t_replayed_create(c):
    n2 = c.nodes[1]
    with open(c.secret_file, "rb") as f:
        secret = f.read().rstrip(b"\n")
    p = PyPeer(n2.repl_port, 1, secret)
    R.check("the peer authenticates", p.auth().startswith("C1 OK"))
    g = "0123456789abcdef0123456789abcd01"
    r = p.command("DELETE alice Old %s ORIGIN 1" % g)
    R.check("DELETE of a mailbox node 2 never had: OK", r[-1].split()[1] == "OK", r)
    r = p.command("CREATE alice Old %s 1700000001 ORIGIN 1" % g)
    R.check("its CREATE replayed after it: NO [NONEXISTENT]",
            r[-1].split()[1:3] == ["NO", "[NONEXISTENT]"], r)
    g2 = "0123456789abcdef0123456789abcd02"
    r = p.command("CREATE alice Fresh %s 1700000002 ORIGIN 1" % g2)
    R.check("another mailbox: CREATE OK", r[-1].split()[1] == "OK", r)
    r = p.command("DELETE alice Fresh %s ORIGIN 1" % g2)
    R.check("... DELETE OK", r[-1].split()[1] == "OK", r)
    r = p.command("CREATE alice Fresh %s 1700000002 ORIGIN 1" % g2)
    R.check("... and its CREATE again: NO [NONEXISTENT]",
            r[-1].split()[1:3] == ["NO", "[NONEXISTENT]"], r)
    dump = n2.dump("alice")
    R.check("neither mailbox exists on node 2", " Old " not in dump and " Fresh " not in dump,
            dump)
    p.close()


def main():
    # Only the resyncs this test asks for.
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0"
    c = Cluster(n=2, users={"alice": "pw"})
    try:
        c.start_all()
        c.wait_links_up(timeout=30)
        R.section("a wiped node gets everything back, the survivor loses nothing",
                  t_wiped_node, c)
        reports = c.sanitizer_reports()
        R.check("no sanitizer reports", not reports, reports)
    finally:
        c.close()
    c = Cluster(n=2, users={"alice": "pw"}, extra_config={"sync_replicas": 0})
    try:
        c.nodes[1].start()
        R.section("a CREATE replayed after its DELETE is refused", t_replayed_create, c)
        reports = c.sanitizer_reports()
        R.check("no sanitizer reports", not reports, reports)
    finally:
        c.close()
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
