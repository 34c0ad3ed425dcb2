#!/usr/bin/env python3
"""Users across the cluster (issue 17, SPEC.md 7.5), through the
interfaces an administrator uses: `starling user add|passwd|del|list` and
IMAP LOGIN on every node.

Three nodes, each with its own users_file (a copy of what a site would
generate for every node) holding one user, "filer".  Checked here:

  - `user add` on node 1: LOGIN works on nodes 1, 2 and 3 right after the
    command returned (it waits until every up peer holds the user);
  - `user passwd` on node 2: right after it returned the old password is
    refused and the new one accepted on every node;
  - `user del` on node 3: right after it returned LOGIN is refused on every
    node, with either password;
  - a node that was down during an add and a delete gets both when it comes
    back (within CATCH_UP), the command said which peer it had not reached,
    and the deleted user is not revived on the others by the stale copy the
    returning node held (tombstones);
  - users_file users log in everywhere; `user del`, `user passwd` and
    `user add` of one are refused with a message naming users_file;
  - `user list` shows users_file and cluster users, not deleted ones;
    `starling deliver`, `starling resync` and LMTP (RCPT) accept a cluster
    user; invalid names are refused;
  - nodes 1 and 3 linked only to node 2: an add on node 1 lets the user
    log in on node 3, and a delete on node 3 refuses it on node 1, within
    5 s (node 2 passes each change on);
  - a peer's malformed USER-PUT (name, scheme, length, ':', origin 0, stamp)
    is refused with BAD and changes nothing; an older record is ignored, a
    replayed older add does not revive a deleted user; USER-LIST shows
    tombstones.

The last line is "test-users: N passed, M failed".
"""
import os
import socket
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness import proc  # noqa: E402
from harness.imapwire import Client  # noqa: E402
from harness.peerwire import PyPeer  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-users")
# A node back after a restart must have the table within this (link up,
# then one USER-LIST); generous for sanitizer builds.
CATCH_UP = 20.0


def can_login(node, user, password):
    c = Client(node.host, node.imap_port)
    try:
        return c.login(user, password).ok
    finally:
        c.logout()


def logins(cluster, user, password, nodes=None):
    """{node_id: True/False} for one LOGIN attempt on each node."""
    return {n.node_id: can_login(n, user, password)
            for n in (nodes or cluster.nodes)}


def wait_login(node, user, password, want, timeout):
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    while True:
        if can_login(node, user, password) == want:
            return time.monotonic() - t0
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def user_cmd(node, *args, password=None):
    inp = (password + "\n").encode() if password is not None else None
    r = node.cli("user", *args, input=inp)
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def t_add_passwd_del(c):
    n1, n2, n3 = c.nodes
    t0 = time.monotonic()
    rc, _, err = user_cmd(n1, "add", "carol", password="first-pw")
    took = time.monotonic() - t0
    R.equal("user add on node 1 exits 0", rc, 0)
    R.check("user add reached every peer (no warning)", "not yet on" not in err, err)
    print("measured: user add returned after %.3f s" % took)
    R.equal("carol logs in on every node right after user add",
            logins(c, "carol", "first-pw"), {1: True, 2: True, 3: True})
    R.equal("a wrong password is refused everywhere",
            logins(c, "carol", "nope"), {1: False, 2: False, 3: False})
    rc, _, err = user_cmd(n1, "add", "carol", password="again")
    R.check("user add of an existing user is refused", rc != 0 and "exists" in err, err)

    rc, _, err = user_cmd(n2, "passwd", "carol", password="second-pw")
    R.equal("user passwd on node 2 exits 0", rc, 0)
    R.equal("the old password is refused on every node right after user passwd",
            logins(c, "carol", "first-pw"), {1: False, 2: False, 3: False})
    R.equal("the new password works on every node",
            logins(c, "carol", "second-pw"), {1: True, 2: True, 3: True})

    rc, _, err = user_cmd(n3, "del", "carol")
    R.equal("user del on node 3 exits 0", rc, 0)
    R.equal("carol is refused on every node right after user del",
            logins(c, "carol", "second-pw"), {1: False, 2: False, 3: False})
    R.equal("her first password too",
            logins(c, "carol", "first-pw"), {1: False, 2: False, 3: False})
    rc, _, err = user_cmd(n1, "del", "carol")
    R.check("deleting her again says no such user", rc != 0 and "no such user" in err, err)
    rc, _, err = user_cmd(n2, "passwd", "carol", password="x")
    R.check("user passwd of a deleted user is refused", rc != 0 and "no such user" in err, err)
    # A deleted name can be added again, newer than its tombstone.
    rc, _, err = user_cmd(n2, "add", "carol", password="third-pw")
    R.equal("a deleted user can be added again", rc, 0)
    R.equal("and logs in everywhere with the new password",
            logins(c, "carol", "third-pw"), {1: True, 2: True, 3: True})


def t_node_away(c):
    n1, n2, n3 = c.nodes
    rc, _, _ = user_cmd(n1, "add", "erin", password="erin-pw")
    R.equal("erin added while every node is up", rc, 0)
    R.equal("erin logs in on node 3", can_login(n3, "erin", "erin-pw"), True)
    n3.stop()
    rc, _, err = user_cmd(n1, "add", "dave", password="dave-pw")
    R.equal("user add with node 3 down exits 0", rc, 0)
    R.check("and warns that node 3 does not have it yet",
            "not yet on" in err and "3 (" in err, err)
    rc, _, err = user_cmd(n2, "del", "erin")
    R.equal("user del of erin with node 3 down exits 0", rc, 0)
    R.equal("dave logs in on nodes 1 and 2",
            logins(c, "dave", "dave-pw", [n1, n2]), {1: True, 2: True})
    n3.start()
    waited = wait_login(n3, "dave", "dave-pw", True, CATCH_UP)
    R.check("node 3, back, lets dave log in within %.0f s" % CATCH_UP, waited is not None)
    if waited is not None:
        print("measured: node 3 had the add %.2f s after it was started" % waited)
    R.equal("node 3 refuses erin, deleted while it was down",
            can_login(n3, "erin", "erin-pw"), False)
    # Node 3's stale copy of erin went to the others when they pulled its
    # table: the tombstone must win there.
    c.wait_links_up(timeout=30)
    time.sleep(1.0)
    R.equal("erin is not revived anywhere by node 3's stale copy",
            logins(c, "erin", "erin-pw"), {1: False, 2: False, 3: False})


def t_users_file(c):
    n1, n2, n3 = c.nodes
    R.equal("a users_file user logs in on every node",
            logins(c, "filer", "file-pw"), {1: True, 2: True, 3: True})
    for args, pw in ((("del", "filer"), None), (("passwd", "filer"), "x"),
                     (("add", "filer"), "x")):
        rc, _, err = user_cmd(n2, *args, password=pw)
        R.check("user %s of a users_file user is refused, naming users_file" % args[0],
                rc != 0 and "users_file" in err and "read-only" in err, err)
    R.equal("filer still logs in with the file's password",
            logins(c, "filer", "file-pw"), {1: True, 2: True, 3: True})
    rc, out, err = user_cmd(n3, "list")
    names = out.split()
    R.equal("user list exits 0", rc, 0)
    R.check("user list has the file's and the cluster's users, not deleted ones",
            "filer" in names and "dave" in names and "carol" in names and
            "erin" not in names and names == sorted(names), out)
    r = n2.cli("deliver", "-u", "dave", input=b"Subject: hi\r\n\r\nhello\r\n")
    R.equal("starling deliver accepts a cluster user", r.returncode, 0)
    rc, _, err = user_cmd(n1, "add", "bad/name", password="x")
    R.check("an invalid user name is refused", rc != 0, err)
    r = n3.cli("resync", "-u", "dave")
    R.equal("starling resync knows a cluster user", r.returncode, 0)
    R.equal("LMTP accepts a cluster user as recipient", lmtp_rcpt(n1, "dave@example.com"), 250)
    R.equal("LMTP refuses a deleted user", lmtp_rcpt(n1, "erin@example.com") // 100, 5)


def lmtp_rcpt(node, rcpt):
    """The reply code of RCPT TO:<rcpt> in an LMTP session with node."""
    s = socket.create_connection((node.host, node.lmtp_port), timeout=20)
    f = s.makefile("rb")
    try:
        def reply():
            while True:
                line = f.readline()
                if not line or line[3:4] != b"-":
                    return int(line[:3]) if line else 0
        reply()
        s.sendall(b"LHLO test.example\r\n")
        reply()
        s.sendall(b"MAIL FROM:<sender@example.net>\r\n")
        reply()
        s.sendall(b"RCPT TO:<%s>\r\n" % rcpt.encode())
        code = reply()
        s.sendall(b"QUIT\r\n")
        return code
    finally:
        f.close()
        s.close()


def t_hostile_peer(c):
    """Node 2 alone, node 1 played by a Python peer: malformed records are
    refused with BAD and change nothing; valid ones merge by time."""
    n2 = c.nodes[1]
    with open(c.secret_file, "rb") as f:
        secret = f.read().rstrip(b"\n")
    p = PyPeer(n2.repl_port, 1, secret)
    R.check("the peer authenticates", p.auth().startswith("C1 OK"))
    now = int(time.time() * 1000)
    bad = [
        'USER-PUT bad/name %d 1 "{PLAIN}x"' % now,
        'USER-PUT zed %d 1 "{MD4}abcd"' % now,
        'USER-PUT zed %d 1 "{PLAIN}%s"' % (now, "x" * 600),
        'USER-PUT zed %d 1 "{PLAIN}a:b"' % now,
        'USER-PUT zed %d 0 "{PLAIN}x"' % now,
        'USER-PUT zed soon 1 "{PLAIN}x"',
        'USER-PUT zed %d 1' % now,
        'USER-PUT "" %d 1 -' % now,
        'USER-PUT %s %d 1 -' % ("a" * 256, now),
    ]
    for line in bad:
        r = p.command(line)
        R.check("refused with BAD: %s" % line[:60], r[-1].split()[1] == "BAD", r)
    R.equal("nothing was stored", can_login(n2, "zed", "x"), False)
    r = p.command('USER-PUT zed %d 1 "{PLAIN}zpw"' % now)
    R.check("a valid USER-PUT: OK", r[-1].split()[1] == "OK", r)
    R.equal("zed logs in on node 2", can_login(n2, "zed", "zpw"), True)
    r = p.command('USER-PUT zed %d 1 "{PLAIN}older"' % (now - 1000))
    R.check("an older one: OK, held already", r[-1].split()[1] == "OK", r)
    R.equal("and ignored", (can_login(n2, "zed", "zpw"), can_login(n2, "zed", "older")),
            (True, False))
    r = p.command("USER-PUT zed %d 1 -" % (now + 1))
    R.check("a newer delete: OK", r[-1].split()[1] == "OK", r)
    R.equal("zed is refused", can_login(n2, "zed", "zpw"), False)
    r = p.command('USER-PUT zed %d 1 "{PLAIN}zpw"' % now)
    R.equal("a replayed older add does not revive him", can_login(n2, "zed", "zpw"), False)
    r = p.command("USER-LIST")
    R.check("USER-LIST shows the tombstone",
            "%s USER-ENTRY zed %d 1 -" % (r[-1].split()[0], now + 1) in r, r)
    p.close()


def t_partial_mesh(c):
    """Nodes 1 and 3 both linked to node 2 only: a change on node 1 reaches
    node 3 through node 2's passing it on."""
    n1, n2, n3 = c.nodes
    rc, _, err = user_cmd(n1, "add", "frank", password="frank-pw")
    R.equal("user add on node 1 exits 0", rc, 0)
    R.check("it counts only node 2 as a peer", "of 1 peers" in err or err == "", err)
    waited = wait_login(n3, "frank", "frank-pw", True, 5.0)
    R.check("node 3, not linked to node 1, lets frank log in within 5 s", waited is not None)
    if waited is not None:
        print("measured: the add reached node 3 over node 2 within %.2f s" % waited)
    rc, _, err = user_cmd(n3, "del", "frank")
    R.equal("user del on node 3 exits 0", rc, 0)
    waited = wait_login(n1, "frank", "frank-pw", False, 5.0)
    R.check("node 1 refuses frank within 5 s", waited is not None)


def own_users_files(c):
    """Give each node its own copy of the users file, as separate machines
    have: a user added on one node must reach the others by replication,
    not by a file they share (which the harness's default would be)."""
    with open(c.users_file) as f:
        text = f.read()
    for node in c.nodes:
        path = os.path.join(node.dir, "users")
        with open(path, "w") as f:
            f.write(text)

        def lines(orig=node.config_lines, path=path):
            return ["users_file = %s" % path if l.startswith("users_file =") else l
                    for l in orig()]
        node.config_lines = lines
        node.write_config()


def main():
    c = Cluster(n=3, users={"filer": "file-pw"})
    own_users_files(c)
    n1 = c.nodes[0]
    n1.lmtp_port = proc.free_port()
    n1.extra["lmtp_listen"] = "127.0.0.1:%d" % n1.lmtp_port
    n1.write_config()
    try:
        c.start_all()
        c.wait_links_up(timeout=30)
        R.section("add, passwd, del on three nodes", t_add_passwd_del, c)
        R.section("a node away during changes", t_node_away, c)
        R.section("users_file users are read-only", t_users_file, c)
        reports = c.sanitizer_reports()
        R.check("no sanitizer reports", not reports, reports)
    finally:
        c.close()
    c = Cluster(n=3)
    try:
        c.nodes[0].peer_ids = [2]
        c.nodes[2].peer_ids = [2]
        for node in c.nodes:
            node.write_config()
        c.start_all()
        deadline = time.monotonic() + 30
        while not (c.nodes[0].peer_state(2) == "up" and c.nodes[2].peer_state(2) == "up"):
            if time.monotonic() > deadline:
                raise TimeoutError("links 1-2 and 3-2 not up after 30 s")
            time.sleep(0.1)
        R.section("a partial mesh", t_partial_mesh, c)
        reports = c.sanitizer_reports()
        R.check("no sanitizer reports", not reports, reports)
    finally:
        c.close()
    # A first login creates the default mailboxes; with replicas to wait
    # for, it would wait for the Python peer, which does not take them.
    c = Cluster(n=2, extra_config={"sync_replicas": 0})
    try:
        c.nodes[1].start()
        R.section("a hostile peer", t_hostile_peer, c)
        reports = c.sanitizer_reports()
        R.check("no sanitizer reports", not reports, reports)
    finally:
        c.close()
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
