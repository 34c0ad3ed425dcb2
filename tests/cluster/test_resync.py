#!/usr/bin/env python3
"""`starling resync` between real starlingd nodes (issue 7, wiring).

Mail is not replicated between nodes yet, so a resync over the peer links is
the only way two nodes converge: every node delivers its own messages (and
creates its own default mailboxes, with their own GUIDs), then `starling
resync -u USER --peer N` on one node runs the sync engine (SPEC.md 10) with
that node as client over the link to N.  Checked here:

  - 2 nodes: after one resync both `starling dump`s are identical, every
    delivered message is present exactly once, flags set over IMAP on one
    node arrive on the other; the report says what moved and "converged";
  - a second resync sends and receives nothing;
  - an IMAP session in IDLE on the peer sees the new messages as EXISTS;
  - --full works and changes nothing on converged nodes;
  - a resync toward a down peer exits non-zero with one line on stderr, and
    one toward a peer that stops answering (SIGSTOP) fails within the
    link's dead timeout (a second resync meanwhile is refused), then
    converges once the peer is back;
  - an APPEND on a node while it resyncs the user waits for the resync and
    is answered within 2 s of its end (the end wakes it);
  - a mailbox named ORIGIN replicates and resyncs like any other;
  - 3 nodes: one `starling resync -u USER` (every up peer) leaves all three
    dumps equal: a peer synced before another brought changes is synced
    again in the same command.

The last line is "test-resync: N passed, M failed".
"""
import os
import re
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness.imapwire import Client, Literal  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster, sanitizer_env  # noqa: E402

R = Report("test-resync")
USER = "alice@example.com"
PASSWORD = "secret"
CLUSTERS = []


def new_cluster(n):
    c = Cluster(n=n)
    CLUSTERS.append(c)
    r = c.nodes[0].cli("user", "add", USER, input=(PASSWORD + "\n").encode())
    R.check("user created with the CLI", r.returncode == 0, r.stderr)
    c.start_all()
    c.wait_links_up(timeout=40)
    return c


def finish_cluster(c):
    c.close()
    reps = c.sanitizer_reports()
    R.check("no sanitizer report in the node logs", not reps, reps)


def message(node_id, i):
    return ("From: n%d@example.com\r\nSubject: node %d message %d\r\n"
            "Message-ID: <n%d.m%d@example.com>\r\n\r\nbody %d/%d\r\n"
            % (node_id, node_id, i, node_id, i, node_id, i)).encode()


def resync(node, peer=None, full=False, timeout=120):
    args = ["resync", "-u", USER]
    if peer is not None:
        args += ["--peer", str(peer)]
    if full:
        args.append("--full")
    r = node.cli(*args, timeout=timeout)
    report = {}
    for line in r.stdout.decode(errors="replace").splitlines():
        k, sep, v = line.partition(": ")
        if sep and k != "peer":
            report[k] = v
    return r, report


def imap_subjects(node):
    """{(node id, message number): count} over every mailbox of the user on
    node, read over IMAP (the dump names messages by GUID only)."""
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


def exactly_once(node, node_ids, per_node):
    found = imap_subjects(node)
    want = {(n, i): 1 for n in node_ids for i in range(per_node)}
    return found == want, found


def moved(report):
    keys = ("messages_sent", "messages_received", "texts_fetched", "renumbered",
            "expunged", "flags_changed", "mailboxes_synced", "mailboxes_created",
            "mailboxes_renamed", "mailboxes_deleted")
    return {k: report.get(k) for k in keys if report.get(k) != "0"}


def alone(c, node, work):
    """Runs work(node) while node runs without peers, then restarts it in
    the cluster.  Live replication copies what a node writes while its
    peers are up, so this is how two nodes come apart here: what a node
    writes alone is in no replication log, and only a sync brings it over
    (the periodic check is off in these tests, see main())."""
    if node.running():
        node.stop()
    node.peer_ids = set()
    node.start()
    try:
        work(node)
    finally:
        node.stop()
        node.peer_ids = None
        node.start()
    c.wait_links_up(timeout=40)


def t_two_nodes():
    c = new_cluster(2)
    n1, n2 = c.nodes
    per_node = 3
    flagged = []

    def deliver_own(node):
        for i in range(per_node):
            node.deliver(USER, message(node.node_id, i))
        if node is n1:
            # Flags on node 1 over IMAP.
            a = Client(n1.host, n1.imap_port)
            a.login(USER, PASSWORD)
            a.command("SELECT INBOX")
            r = a.command("STORE 1 +FLAGS (\\Flagged \\Seen)")
            flagged.append(r.ok)
            a.command("LOGOUT")

    for node in (n1, n2):
        alone(c, node, deliver_own)
    R.check("STORE on node 1 answers OK", flagged == [True], flagged)
    d1, d2 = n1.dump(USER), n2.dump(USER)
    R.check("before the resync the dumps differ", d1 != d2)

    t0 = time.monotonic()
    r, rep = resync(n1, peer=2)
    print("measured: resync of 2x%d messages 1->2 took %.2f s (CLI included)"
          % (per_node, time.monotonic() - t0))
    R.check("resync 1->2 exits 0", r.returncode == 0, (r.stdout, r.stderr))
    R.check("the report names the peer", b"peer: 2" in r.stdout, r.stdout)
    R.check("the report says converged", rep.get("converged") == "yes", r.stdout)
    R.check("resync sent node 1's messages", int(rep.get("messages_sent", "0")) >= per_node, rep)
    R.check("resync received node 2's messages",
            int(rep.get("messages_received", "0")) >= per_node, rep)
    d1, d2 = n1.dump(USER), n2.dump(USER)
    R.check("after the resync the dumps are identical", d1 == d2 and d1 != "",
            (d1[:2000], d2[:2000]))
    for node in (n1, n2):
        ok, found = exactly_once(node, (1, 2), per_node)
        R.check("every delivered message is present exactly once on node %d (IMAP)"
                % node.node_id, ok, found)
    R.check("the \\Flagged set on node 1 is on node 2", "\\Flagged" in d2, d2[:3000])
    # Without live replication each node made its own INBOX: the engine's
    # rule for one name with two GUIDs (SPEC.md 10.5) keeps INBOX for one
    # GUID and renames the other to "INBOX-<8 hex of its GUID>" on both
    # nodes.  With it, the nodes share one INBOX.  Either way (the dumps are
    # equal) there is exactly one INBOX.
    R.check("one INBOX on both nodes (a clashing one became INBOX-<8 hex> on both)",
            len(re.findall(r"^mailbox INBOX ", d1, re.M)) == 1, d1[:2000])

    # An IMAP session on node 2 idles in INBOX (now the same mailbox on
    # both nodes); node 1 gets two more messages (alone) and resyncs.
    b = Client(n2.host, n2.imap_port)
    b.login(USER, PASSWORD)
    r = b.command("SELECT INBOX")
    exists_before = r.number("EXISTS") or 0
    tag = b.next_tag()
    b.send("%s IDLE\r\n" % tag)
    first = b.read_response()
    R.check("IDLE on node 2 answers with a continuation", first.startswith(b"+"), first)
    alone(c, n1, lambda node: [node.deliver(USER, message(1, i))
                               for i in range(per_node, per_node + 2)])
    r, rep = resync(n1, peer=2)
    R.check("resync of the new messages exits 0 and converged",
            r.returncode == 0 and rep.get("converged") == "yes", (r.stdout, r.stderr))
    R.equal("it sent exactly the 2 new messages", rep.get("messages_sent"), "2")
    got = b.read_untagged_until(lambda g: any(x.rstrip().endswith(b" EXISTS") for x in g), 10)
    R.check("IDLE on node 2 sees the new messages as * %d EXISTS after the resync"
            % (exists_before + 2),
            any(x.rstrip() == b"* %d EXISTS" % (exists_before + 2) for x in got), got)
    b.send("DONE\r\n")
    b.wait_tagged(tag)
    b.command("LOGOUT")
    d1, d2 = n1.dump(USER), n2.dump(USER)
    R.check("the dumps are identical again", d1 == d2)

    r, rep = resync(n1, peer=2)
    R.check("a second resync exits 0 and converged",
            r.returncode == 0 and rep.get("converged") == "yes", (r.stdout, r.stderr))
    R.check("a second resync moves nothing", not moved(rep), rep)
    R.check("the dumps are unchanged by the second resync",
            n1.dump(USER) == d1 and n2.dump(USER) == d2)

    r, rep = resync(n2, full=True)
    R.check("resync --full from node 2 (every up peer) exits 0 and converged",
            r.returncode == 0 and rep.get("converged") == "yes", (r.stdout, r.stderr))
    R.check("--full compared every mailbox", int(rep.get("mailboxes_full", "0")) >= 1 or
            int(rep.get("mailboxes_checked", "0")) >= 1, rep)
    # Under --full the client re-offers every message (SAVE without text);
    # the server already has them, so nothing changes and no text moves.
    R.check("--full on converged nodes receives nothing and moves no text",
            rep.get("messages_received") == "0" and rep.get("texts_sent") == "0" and
            rep.get("texts_fetched") == "0", rep)
    R.check("--full on converged nodes counts every message present, none sent",
            rep.get("messages_sent") == "0" and
            int(rep.get("messages_present", "0")) >= 2 * per_node + 2, rep)
    R.check("the dumps are unchanged by --full", n1.dump(USER) == d1 and n2.dump(USER) == d2)

    # A peer that stops answering mid-resync (SIGSTOP): the link's dead
    # timeout closes it and the resync fails with one line, in bounded time.
    n1.deliver(USER, message(1, 99))
    n2.pause()
    first = None
    try:
        t0 = time.monotonic()
        first = subprocess.Popen([c.cli, "-c", n1.conf, "resync", "-u", USER, "--peer", "2"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=sanitizer_env())
        time.sleep(0.5)
        r2, _ = resync(n1, peer=3 if len(c.nodes) > 2 else 2, timeout=30)
        out, errb = first.communicate(timeout=60)
        dt = time.monotonic() - t0
    finally:
        if first is not None and first.poll() is None:
            first.kill()
        n2.resume()
    R.check("a second resync while one runs is refused",
            r2.returncode != 0 and b"already running" in r2.stderr, r2.stderr)
    err = errb.decode(errors="replace").strip().splitlines()
    R.check("resync to a silent peer fails with one line (%.1f s)" % dt,
            first.returncode != 0 and len(err) == 1 and dt < 30, (first.returncode, err))
    c.wait_links_up(timeout=40)
    r, rep = resync(n1, peer=2)
    R.check("after the peer is back, resync converges",
            r.returncode == 0 and rep.get("converged") == "yes", (r.stdout, r.stderr))
    R.check("... and the dumps are identical", n1.dump(USER) == n2.dump(USER))
    held_append(c, n1, n2)

    n2.stop()
    r, _ = resync(n1, peer=2)
    err = r.stderr.decode(errors="replace").strip().splitlines()
    R.check("resync to a down peer exits non-zero", r.returncode != 0, r.stdout)
    R.check("... with one line on stderr", len(err) == 1, err)
    r, _ = resync(n1, peer=9)
    R.check("resync to an unknown peer exits non-zero",
            r.returncode != 0 and b"not configured" in r.stderr, r.stderr)
    r = n1.cli("resync", "-u", USER, "--peer", "x")
    R.check("resync with a bad peer id is a usage error (2)", r.returncode == 2, r.stderr)
    finish_cluster(c)


def held_append(c, n1, n2):
    """An APPEND on node 1 while node 1 resyncs its user waits for the
    resync (the run holds the user's mailboxes) and goes on when the resync
    ends: the end of the run wakes it (REPLICATION.md 6.1, HELD), there is
    no poll that would find it otherwise."""
    a = Client(n1.host, n1.imap_port, timeout=30)
    a.login(USER, PASSWORD)
    done = {}

    def wait_answer(tag):
        try:
            done["r"] = a.wait_tagged(tag)
        except OSError as e:  # the socket timeout: never answered
            done["r"] = e
        done["t"] = time.monotonic()

    n2.pause()
    first = waiter = None
    try:
        first = subprocess.Popen([c.cli, "-c", n1.conf, "resync", "-u", USER, "--peer", "2"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 env=sanitizer_env())
        # The run's LIST waits for the stopped peer from here on.
        time.sleep(0.4)
        tag = a.next_tag()
        a.send_command(tag, ["APPEND", "INBOX", Literal(message(1, 200), plus=True)])
        waiter = threading.Thread(target=wait_answer, args=(tag,))
        waiter.start()
        time.sleep(0.5)
        early = dict(done)
    finally:
        n2.resume()
    out, errb = first.communicate(timeout=60)
    ended = time.monotonic()
    waiter.join(timeout=40)
    R.check("a resync with the peer paused for 1 s converges",
            first.returncode == 0 and b"converged: yes" in out, (out, errb))
    R.check("an APPEND during the resync is not answered while the resync waits",
            not early, early)
    r = done.get("r")
    R.check("... and is answered OK once the resync ended",
            not isinstance(r, Exception) and r is not None and r.ok, r)
    late = done.get("t", ended + 99) - ended
    R.check("... within 2 s of its end (%.2f s)" % late, late < 2.0, late)
    a.command("LOGOUT")
    try:
        c.wait_dumps_equal(USER, timeout=30)
        same = True
    except TimeoutError as e:
        same = str(e)
    R.check("... and the message reaches node 2", same is True, same)


def t_named_origin():
    """A mailbox named ORIGIN: the word is an option of live changes (SPEC.md
    8), and the link once took any argument spelled so for one, which sent
    the mailbox's MBOX binding to the live path instead of the sync server."""
    c = new_cluster(2)
    n1, n2 = c.nodes
    a = Client(n1.host, n1.imap_port)
    a.login(USER, PASSWORD)
    R.check("CREATE ORIGIN on node 1", a.command("CREATE", "ORIGIN").ok)
    r = a.command("APPEND", "ORIGIN", Literal(message(1, 300), plus=True))
    R.check("APPEND to ORIGIN on node 1", r.ok, r)
    a.command("SELECT", "ORIGIN")
    R.check("STORE +FLAGS (\\Flagged) in ORIGIN on node 1",
            a.command("STORE", "1", "+FLAGS", "(\\Flagged)").ok)
    a.command("LOGOUT")
    try:
        c.wait_dumps_equal(USER, timeout=30)
        same = True
    except TimeoutError as e:
        same = str(e)
    R.check("the mailbox ORIGIN, its message and its flag reach node 2", same is True, same)
    b = Client(n2.host, n2.imap_port)
    b.login(USER, PASSWORD)
    r = b.command("EXAMINE", "ORIGIN")
    R.check("node 2 shows the message in ORIGIN", r.ok and r.number("EXISTS") == 1, r)
    b.command("LOGOUT")
    r, rep = resync(n1, peer=2)
    changed = {k: rep.get(k) for k in ("messages_sent", "messages_received", "texts_fetched",
                                       "renumbered", "expunged", "flags_changed")
               if rep.get(k) != "0"}
    R.check("a resync of the user converges and changes no message",
            r.returncode == 0 and rep.get("converged") == "yes" and not changed,
            (r.stdout, r.stderr))
    finish_cluster(c)


def t_three_nodes():
    c = new_cluster(3)
    for node in c.nodes:
        alone(c, node, lambda nd: [nd.deliver(USER, message(nd.node_id, i)) for i in range(2)])
    n1, n2, n3 = c.nodes
    # One `starling resync -u USER` on node 1, toward every up peer: what
    # the 1-3 sync brings (node 3's mail, a rename decided there by SPEC.md
    # 10.5) is new to node 2, which is synced again in the same command.
    r, rep = resync(n1)
    out = r.stdout.decode(errors="replace")
    R.check("3 nodes: one resync toward every peer exits 0, every block converged",
            r.returncode == 0 and "converged: no" not in out and out.count("converged: yes") >= 2,
            (out, r.stderr))
    R.check("3 nodes: node 2 was synced again after node 3's changes arrived",
            out.count("peer: 2\n") >= 2, out)
    dumps = [n.dump(USER) for n in c.nodes]
    diff = [sorted(set(d.splitlines()) ^ set(dumps[0].splitlines())) for d in dumps[1:]]
    R.check("3 nodes: all three dumps identical after one resync command",
            dumps[0] == dumps[1] == dumps[2] and dumps[0] != "", diff)
    for node in c.nodes:
        ok, found = exactly_once(node, (1, 2, 3), 2)
        R.check("3 nodes: every delivered message is present exactly once on node %d"
                % node.node_id, ok, found)
    r, rep = resync(n3)
    R.check("3 nodes: resync from node 3 to every up peer moves nothing",
            r.returncode == 0 and not moved(rep) and r.stdout.count(b"peer: ") == 2,
            (r.stdout, r.stderr))
    finish_cluster(c)


def main():
    # Syncs start only when a test asks (t_periodic_check turns it on).
    os.environ["STARLING_SYNC_CHECK_INTERVAL"] = "0"
    R.section("two nodes: resync, second resync, IDLE, --full, down peer", t_two_nodes)
    R.section("three nodes: one resync toward every peer", t_three_nodes)
    R.section("a mailbox named ORIGIN", t_named_origin)
    for cl in CLUSTERS:
        cl.close()
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
