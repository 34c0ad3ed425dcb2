#!/usr/bin/env python3
"""While a node's resync runs toward a peer, nothing else of the node sends
that peer a message command (REPLICATION.md 3.3): the mailbox such a
command acts on is the link's selection, which the run's SELECT owns.

Before the fix a forward (or a relay) whose MBOX was answered during a run
sent its SELECT and SAVE at once: on the peer they landed between the
run's SELECT and its SYNC-BEGIN, or a run's SYNC-BEGIN on the forward's
mailbox (campaign 16142: the messages a merge renumbered in Shared were
also in Copies, same UIDs, same modseqs).

A Python peer (tests/harness/peerwire.py) plays node 1, root and master of
the user's Copies on node 2:
  - a client APPENDs to Copies on node 2: node 2 forwards it, MBOX first;
    the peer holds the MBOX answer;
  - `starling resync` starts a run of node 2 toward the peer: the peer
    holds its LIST, then answers the MBOX;
  - for a second nothing comes from node 2 but the run's own commands (no
    SELECT, no SAVE);
  - once the run is refused, the forward's SELECT and SAVE come.

Every wait is bounded.  The last line is "test-link-order: N passed, M failed".
"""
import os
import re
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness import imapwire, mailops  # noqa: E402
from harness.peerwire import PyPeer  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-link-order")
PASSWORD = "secret"
USER = "alice@example.com"
BOB = "bob@example.com"


def mailbox_meta(node, box, usr=USER):
    m = re.search(r"^mailbox %s guid=(\w+) uidvalidity=(\d+)" % box, node.dump(usr), re.M)
    return m.group(1), int(m.group(2))


class Watch:
    """Reads what node 2 sends the peer: MM and PING answered, the rest
    kept as (tag, NAME, rest) for the test to answer."""

    def __init__(self, p):
        self.p = p
        self.got = []
        # Commands left to the test; a LIST not held fails its run at
        # once (NO without TRYLATER: not tried again soon), anything else
        # is taken (OK).
        self.hold = {"MBOX", "SAVE"}

    def until(self, pred, seconds):
        """Reads for up to seconds, stopping at the first command pred
        accepts (returned); None if none came."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                line = self.p.readline(timeout=max(0.01, end - time.monotonic()))
                lit = re.search(r"\{(\d+)\}$", line)
                while lit:  # a SAVE's text: skipped, the line goes on after it
                    n = int(lit.group(1))
                    while len(self.p.inbuf) < n:
                        data = self.p.sock.recv(65536)
                        if not data:
                            raise EOFError("connection closed")
                        self.p.inbuf += data
                    del self.p.inbuf[:n]
                    line = line[:lit.start()] + "<text>" + self.p.readline(timeout=5)
                    lit = re.search(r"\{(\d+)\}$", line)
            except TimeoutError:
                return None
            except EOFError:
                self.got.append(("*", "CLOSED", ""))
                return None
            parts = line.split(" ", 2)
            if len(parts) < 2 or parts[0] == "*":
                continue
            name = parts[1].upper()
            if name in ("MM", "PING"):
                self.p.serve(line)
                continue
            cmd = (parts[0], name, parts[2] if len(parts) > 2 else "")
            self.got.append(cmd)
            if pred(cmd):
                return cmd
            if name == "LIST" and name not in self.hold:
                self.p.send("%s NO [SERVERBUG] a test peer" % parts[0])
            elif name not in self.hold:
                # The stream's list changes, a SELECT: taken.
                self.p.send("%s OK a test peer" % parts[0])
        return None


def t_forward_waits_for_run():
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0"
    c = Cluster(n=2, users={USER: PASSWORD}, extra_config={"sync_replicas": 0})
    try:
        n2 = c.nodes[1]
        n2.start()
        w = mailops.client(n2, USER, PASSWORD)
        R.check("CREATE Copies", w.command("CREATE Copies").status == "OK")
        w.logout()
        guid, _uv = mailbox_meta(n2, "Copies")

        with open(c.secret_file, "rb") as f:
            secret = f.read().rstrip(b"\n")
        p = PyPeer(n2.repl_port, 1, secret, timeout=30)
        R.check("the Python peer authenticates as node 1", p.auth().startswith("C1 OK"))
        R.check("node 2 takes the peer as its root", p.play_root(n2.node_id, timeout=15),
                p.mm_seen[-5:])
        p.mm("MASTER-IS 1 %d 32 %d m:%s/%s 1 1" % (n2.node_id, p.epoch, USER, guid))
        watch = Watch(p)
        # The stream's list changes and node 2's link-up resync (failed)
        # come first: wait until node 2 is quiet.
        watch.until(lambda cmd: False, 1.5)

        appended = []

        def append():
            cl = imapwire.Client(n2.host, n2.imap_port, timeout=60)
            try:
                cl.login(USER, PASSWORD)
                appended.append(cl.command("APPEND Copies",
                                           imapwire.Literal(mailops.message("fwd"))))
            finally:
                cl.close()
        ta = threading.Thread(target=append)
        ta.start()
        mbox = watch.until(lambda cmd: cmd[1] == "MBOX" and "Copies" in cmd[2], 10)
        R.check("node 2 forwards the APPEND: MBOX Copies", mbox is not None, [g[:2] for g in watch.got])

        resync = []
        watch.hold.discard("MBOX")  # this one only; a binding again is taken
        watch.hold.add("LIST")
        tr = threading.Thread(target=lambda: resync.append(n2.cli("resync", "-u", USER)))
        tr.start()
        lst = watch.until(lambda cmd: cmd[1] == "LIST", 10)
        R.check("`starling resync`: node 2's run sends LIST", lst is not None, watch.got[-5:])
        if mbox is not None and lst is not None:
            p.send("%s OK [UIDNEXT 1 HIGHESTMODSEQ 1] bound" % mbox[0])
            start = len(watch.got)
            watch.until(lambda cmd: False, 1.0)
            during = [cmd[1] for cmd in watch.got[start:]]
            R.check("during the run no SELECT or SAVE comes from node 2",
                    "SELECT" not in during and "SAVE" not in during, during)
            watch.hold.discard("LIST")
            p.send("%s NO [SERVERBUG] a test peer" % lst[0])
            save = watch.until(lambda cmd: cmd[1] == "SAVE", 15)
            R.check("after the run the forward's SAVE comes", save is not None,
                    watch.got[-5:])
            if save is not None:
                R.check("... after its SELECT", any(cmd[1] == "SELECT" for cmd in
                                                   watch.got[start:-1]), watch.got[start:])
                p.send("%s NO [LIMIT] a test peer" % save[0])
        tr.join(60)
        ta.join(60)
        p.close()
        R.check("the APPEND is answered", len(appended) == 1, appended)
    finally:
        os.environ.pop("STARLING_SYNC_CHECK_INTERVAL", None)
        c.close_checked(R)


def guids_by_mailbox(node, usr=USER):
    out = {}
    for m in re.finditer(r"^msg (\S+) uid=(\d+) guid=(\w+)", node.dump(usr), re.M):
        out.setdefault(m.group(1), set()).add(m.group(3))
    return out


def t_stream_after_run_moves_on():
    """Three real nodes; node 2, master of every mailbox of alice and of
    bob's INBOX, runs a full resync of alice toward nodes 1 and 3 while
    node 3 is stopped: the run selects each of alice's mailboxes on node 1,
    then waits on node 3.  An APPEND to bob's INBOX on node 2 meanwhile
    streams to node 1 (bob's changes are not held by alice's run), whose
    selection is the run's last mailbox: bob's message must land in bob's
    INBOX there.  Before the fix the stream sent no SELECT, its cache still
    naming bob's INBOX from before the run, and node 1 stored bob's message
    in alice's mailbox (campaign 18173 did the same within one user
    through a relay)."""
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0"
    c = Cluster(n=3, users={USER: PASSWORD, BOB: PASSWORD}, extra_config={"sync_replicas": 1})
    try:
        c.start_all()
        c.wait_links_up(timeout=30)
        n1, n2, n3 = c.nodes
        w = mailops.client(n2, USER, PASSWORD)
        wb = mailops.client(n2, BOB, PASSWORD)
        boxes = sorted(m.group(1) for m in re.finditer(
            r"^mailbox (\S+) guid=", n2.dump(USER), re.M))
        ok = 0
        for b in boxes:
            r, _uid = mailops.append(w, "first-%s" % b, mailbox=b)
            ok += r.status == "OK"
        R.equal("an APPEND to each of %s on node 2" % boxes, ok, len(boxes))
        masters = [mailops.master_show(n2, USER, b).get("master") for b in boxes]
        R.check("node 2 is master of every mailbox", all(m == "2" for m in masters), masters)
        c.wait_dumps_equal(USER, timeout=30)
        # Bob's INBOX ahead of alice's mailboxes in UIDs and modseqs, so
        # that a change of it would fit any of them; its stream is the
        # last SELECT node 2 sends node 1 before the run.
        ok = 0
        for i in range(5):
            r, _uid = mailops.append(wb, "bob-before-run-%d" % i)
            ok += r.status == "OK"
        R.equal("5 APPENDs to bob's INBOX before the run", ok, 5)
        wb.command("SELECT INBOX")
        for i in range(10):
            wb.command("UID STORE 1:* %sFLAGS (\\Flagged)" % ("+" if i % 2 == 0 else "-"))
        R.equal("node 2 is master of bob's INBOX",
                mailops.master_show(n2, BOB).get("master"), "2")
        c.wait_dumps_equal(BOB, timeout=30)

        n3.pause()
        done = []
        t = threading.Thread(target=lambda: done.append(
            n2.cli("resync", "-u", USER, "--full", timeout=120)))
        t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and \
                "resync of %s with 1:" % USER not in n2.log_text():
            time.sleep(0.1)
        R.check("node 2's run is done with node 1 (and waits on node 3)",
                "resync of %s with 1:" % USER in n2.log_text())
        r, _uid = mailops.append(wb, "bob-during-run")
        R.check("an APPEND to bob's INBOX on node 2 during the run", r.status == "OK", r.line)
        want = guids_by_mailbox(n2, BOB).get("INBOX", set())
        deadline = time.monotonic() + 15
        got = {}
        while time.monotonic() < deadline:
            got = guids_by_mailbox(n1, BOB)
            if want <= got.get("INBOX", set()):
                break
            time.sleep(0.2)
        R.check("bob's INBOX on node 1 holds node 2's", want <= got.get("INBOX", set()),
                sorted(want - got.get("INBOX", set())))
        strays = {b: sorted(g & want) for b, g in guids_by_mailbox(n1).items() if g & want}
        R.equal("none of bob's messages in a mailbox of alice on node 1", strays, {})
        n3.resume()
        t.join(120)
        w.logout()
        wb.logout()
    finally:
        os.environ.pop("STARLING_SYNC_CHECK_INTERVAL", None)
        for n in c.nodes:
            try:
                n.resume()
            except Exception:  # noqa: BLE001 -- not paused, or gone
                pass
        c.close_checked(R)


def main():
    R.section("a forward whose binding settles during a resync waits for it",
              t_forward_waits_for_run)
    R.section("the stream to a peer the run has left selects again", t_stream_after_run_moves_on)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
