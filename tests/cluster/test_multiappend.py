#!/usr/bin/env python3
"""MULTIAPPEND (RFC 3502) on a node that is not the mailbox's master.

Every message of a MULTIAPPEND goes through the seam, which forwards it to
the master when that is another node.  Checked here on two real nodes:
  - a MULTIAPPEND of three messages on the non-master node is answered with
    the three UIDs in order, and both nodes end with the three texts;
  - all or nothing: with the mailbox at the top of its UIDs on every node
    (tests/imap/stor-raise, nodes stopped), the master gives the first
    message the last UID and refuses the second with NO [LIMIT]; the
    forwarding node then expunges the first again, so that the client's NO
    is true: no node keeps any of the messages.

The last line is "cluster-multiappend: N passed, M failed".
"""
import os
import re
import subprocess
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness import imapwire  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("cluster-multiappend")


def msgs_of(dump, box):
    """[(uid, guid)] of mailbox box in a `starling dump`."""
    out = []
    for line in dump.splitlines():
        m = re.match(r"msg (\S+) uid=(\d+) guid=(\w+)", line)
        if m and m.group(1) == box:
            out.append((int(m.group(2)), m.group(3)))
    return sorted(out)


def master_of(nodes, box, timeout=60):
    """The node that says it is master of alice's box, or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for n in nodes:
            r = n.cli("master", "show", "-u", "alice", "-m", box, timeout=30)
            if r.returncode == 0 and b"is_master: yes" in r.stdout:
                return n
        time.sleep(0.5)
    return None


def retry(client, *parts, timeout=30):
    """A command again while the node answers NO [TRYLATER] or
    [UNAVAILABLE] (a master being chosen after a restart)."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.command(*parts)
        if r.status != "NO" or r.code not in ("TRYLATER", "UNAVAILABLE") or \
                time.monotonic() > deadline:
            return r
        time.sleep(0.5)


def msg(s):
    return ("From: a@example.org\r\nSubject: %s\r\n\r\nbody %s\r\n" % (s, s)).encode()


def t_forwarded(c):
    # The first login creates the user's mailboxes.
    first = imapwire.Client(c.nodes[0].host, c.nodes[0].imap_port)
    R.equal("login on node 1", first.login("alice", "pw").status, "OK")
    first.logout()
    c.wait_dumps_equal("alice", timeout=60)
    master = master_of(c.nodes, "INBOX")
    R.check("a master of INBOX", master is not None)
    if master is None:
        return
    other = [n for n in c.nodes if n is not master][0]
    a = imapwire.Client(other.host, other.imap_port)
    R.equal("login on the non-master node", a.login("alice", "pw").status, "OK")
    r = retry(a, "APPEND", "INBOX", imapwire.Literal(msg("m1")), "(\\Seen)",
              imapwire.Literal(msg("m2")), imapwire.Literal(msg("m3")))
    R.check("MULTIAPPEND of 3 on the non-master node: OK", r.ok, r)
    R.check("APPENDUID names three UIDs in order",
            r.code == "APPENDUID" and r.code_args.split(b" ")[1] == b"1:3", r.line)
    d = c.wait_dumps_equal("alice", timeout=60)
    R.equal("both nodes hold the three messages", len(msgs_of(d, "INBOX")), 3)
    r = a.command("EXAMINE INBOX")
    r = a.command("FETCH 1:3 BODY.PEEK[]")
    R.equal("in order", [it.get("BODY[]") for _, it in r.fetches()],
            [msg("m1"), msg("m2"), msg("m3")])
    r = a.command("CREATE full")
    R.equal("CREATE full", r.status, "OK")
    c.wait_dumps_equal("alice", timeout=60)
    a.logout()


def t_rollback(c):
    build = os.environ.get("top_builddir")
    tool = os.path.join(build, "tests", "imap", "stor-raise") if build else None
    R.check("the stor-raise tool is built (make -C tests imap/stor-raise)",
            tool is not None and os.path.exists(tool), tool)
    if tool is None or not os.path.exists(tool):
        return
    c.stop_all()
    for n in c.nodes:
        p = subprocess.run([tool, os.path.join(n.data_dir, "store"), "alice", "full"],
                           capture_output=True, timeout=60)
        R.check("stor-raise on node %d" % n.node_id, p.returncode == 0, p.stderr)
    c.start_all()
    c.wait_links_up(timeout=60)
    master = master_of(c.nodes, "full")
    R.check("a master of full", master is not None)
    if master is None:
        return
    other = [n for n in c.nodes if n is not master][0]
    a = imapwire.Client(other.host, other.imap_port)
    R.equal("login on the non-master node", a.login("alice", "pw").status, "OK")
    r = retry(a, "APPEND", "full", imapwire.Literal(msg("f1")), imapwire.Literal(msg("f2")))
    R.check("MULTIAPPEND whose 2nd message the master refuses: NO [LIMIT]",
            r.status == "NO" and r.code == "LIMIT", r)
    d = c.wait_dumps_equal("alice", timeout=60)
    R.equal("no node keeps the 1st message", msgs_of(d, "full"), [])
    r = a.command("STATUS full (MESSAGES)")
    R.check("STATUS full: 0 messages", b"MESSAGES 0" in b"".join(r.untagged), r.untagged)
    a.logout()


def main():
    c = Cluster(n=2, users={"alice": "pw"})
    try:
        c.start_all()
        c.wait_links_up(timeout=30)
        R.section("MULTIAPPEND forwarded to the master", t_forwarded, c)
        R.section("MULTIAPPEND all or nothing across nodes", t_rollback, c)
        reports = c.sanitizer_reports()
        R.check("no sanitizer reports", not reports, reports)
    finally:
        c.close()
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
