#!/usr/bin/env python3
"""SIGHUP (issue 17): `starlingd` reloads peers, the users file and TLS
files from its configuration without dropping IMAP sessions.

A 2-node cluster (1, 2) with mail; node 3 configured with both as peers
but not known to them.  Then nodes 1 and 2 get node 3 in their `peer`
lines, a new users file (with a new user) and a new certificate, and
SIGHUP: node 3's links come up, the mail reaches node 3 by the full resync
a new peer gets (well before the 60 s periodic check), IMAP and IMAPS
sessions opened before stay usable, the new user logs in, new IMAPS
connections get the new certificate.  A bad file on SIGHUP keeps the
running configuration and logs FILE:LINE: message; a key that only a
restart applies is named in one warn line and kept; a removed peer's link
is closed.  Then TLS between peers: node 3 of a 3-node cluster holds a
certificate of another CA, so its links never come up; a good certificate
at a new path and SIGHUP to node 3 alone bring them up.
Last line: "test-reload: N passed, M failed"."""
import os
import signal
import ssl
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness import proc  # noqa: E402
from harness.imapwire import Client  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.certs import TestCA  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-reload")
ALICE, BOB, PW = "alice@example.com", "bob@example.com", "secret"
CONVERGE = 30.0  # well under the 60 s periodic check


def msg(i):
    return ("From: a@example.com\r\nSubject: m%d\r\nMessage-ID: <reload.%d@example.com>\r\n"
            "\r\nbody %d\r\n" % (i, i, i)).encode()


def hup(node):
    os.kill(node.process.pid, signal.SIGHUP)


def wait_for(pred, timeout):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return time.monotonic() - t0
        time.sleep(0.2)
    return None


def log_count(node, needle):
    return node.log_text().count(needle)


def tls_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def pem_der(path):
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def login_ok(node, user):
    try:
        c = Client(node.host, node.imap_port, timeout=15)
        ok = c.login(user, PW).ok
        c.logout()
        return ok
    except Exception:  # noqa: BLE001 -- refused or closed: not logged in
        return False


def dump(node, user):
    try:
        return node.dump(user, timeout=30)
    except Exception as e:  # noqa: BLE001
        return "ERROR %s" % e


def peer_tls():
    cl = Cluster(3, users={ALICE: PW}, peer_tls=True)
    n1, n2, n3 = cl.nodes
    rogue = TestCA(os.path.join(cl.dir, "rogue-ca"), name="Rogue CA")
    n3.tls_cert, n3.tls_key = rogue.issue("node3", san="DNS:starling-node-3")
    try:
        cl.start_all()
        cl.wait_links_up(nodes=[n1, n2])
        ever_up = set()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3:
            ever_up |= {k for k, v in cl.links_state().items() if v == "up" and 3 in k}
            time.sleep(0.2)
        R.check("node 3 with another CA's certificate: its links stay down", not ever_up, ever_up)
        n3.tls_cert, n3.tls_key = cl.ca.issue("node3-new", san="DNS:starling-node-3")
        n3.write_config()
        hup(n3)
        try:
            took = cl.wait_links_up(timeout=20)
        except TimeoutError as e:
            took = None
            print(e)
        R.check("a good certificate and SIGHUP to node 3 alone: its links come up", took is not None)
        if took is not None:
            print("measured: node 3's TLS links up %.1f s after its SIGHUP" % took)
        st = n3.status()
        R.equal("... over TLS", (st.get("peer.1.tls"), st.get("peer.2.tls")), ("yes", "yes"))
        R.equal("... node 3 was not restarted", n3.starts, 1)
    finally:
        cl.close()
    reps = cl.sanitizer_reports()
    R.check("no sanitizer report in the node logs (peer TLS)", not reps, reps)
    cl.check_log_format(R)


def main():
    R.section("TLS between peers: a new certificate by SIGHUP", peer_tls)
    cl = Cluster(3, users={ALICE: PW}, tls=True)
    n1, n2, n3 = cl.nodes
    n1.peer_ids, n2.peer_ids = {2}, {1}
    try:
        for n in cl.nodes:
            n.start()
        cl.wait_links_up(nodes=[n1, n2])
        for i in range(5):
            n1.deliver(ALICE, msg(i))
        R.check("the mail is on nodes 1 and 2",
                wait_for(lambda: dump(n1, ALICE) == dump(n2, ALICE) and dump(n1, ALICE).count("\n") > 5, CONVERGE) is not None)
        s_plain = Client(n1.host, n1.imap_port)
        R.check("an IMAP session on node 1", s_plain.login(ALICE, PW).ok and
                s_plain.command("SELECT INBOX").number("EXISTS") == 5)
        s_tls = Client(n1.host, n1.imaps_port, tls_context=tls_ctx())
        R.check("an IMAPS session on node 1", s_tls.login(ALICE, PW).ok)
        R.check("node 1 does not know node 3 yet", "peer.3" not in n1.status())
        R.check("node 3 has none of the mail", dump(n3, ALICE) != dump(n1, ALICE))
        old_cert = s_tls.sock.getpeercert(binary_form=True)

        # The new configuration: node 3 as a peer, a new users file with
        # bob, a new certificate.
        newdir = os.path.join(cl.dir, "new")
        os.makedirs(newdir)
        cl.tls_cert, cl.tls_key = proc.make_cert(newdir, cn="reloaded")
        with open(cl.users_file) as f:
            users = f.read()
        cl.users_file = os.path.join(newdir, "users")
        with open(cl.users_file, "w") as f:
            f.write(users + "%s:%s\n" % (BOB, proc.sha512_crypt(PW)))
        R.check("bob cannot log in before the reload", not login_ok(n1, BOB))
        n1.peer_ids = n2.peer_ids = None
        for n in (n1, n2):
            n.write_config()
            hup(n)
        took = wait_for(lambda: dump(n3, ALICE) == dump(n1, ALICE) == dump(n2, ALICE), CONVERGE)
        R.check("after SIGHUP on 1 and 2, node 3 gets the mail without a restart", took is not None,
                "node3:\n%s\nnode1:\n%s" % (dump(n3, ALICE), dump(n1, ALICE)))
        if took is not None:
            print("measured: node 3 had the mail %.1f s after the SIGHUPs" % took)
        for n in (n1, n2):
            R.equal("node %d: link to node 3" % n.node_id, n.peer_state(3), "up")
            R.check("node %d: one reload line" % n.node_id,
                    log_count(n, "SIGHUP: configuration reloaded") == 1, n.log_tail(20))
        R.equal("node 3: links to 1 and 2", (n3.peer_state(1), n3.peer_state(2)), ("up", "up"))
        before = dump(n3, ALICE).count("\n")
        n3.deliver(ALICE, msg(100))
        R.check("mail delivered on node 3 reaches 1 and 2",
                wait_for(lambda: dump(n3, ALICE) == dump(n1, ALICE) == dump(n2, ALICE)
                         and dump(n3, ALICE).count("\n") > before, CONVERGE) is not None)

        r = s_plain.command("NOOP")
        R.check("the IMAP session from before SIGHUP still works", r.ok, r)
        r = s_plain.command("FETCH 1:* (FLAGS)")
        R.check("... and sees the mail", r.ok and len(r.fetches()) >= 5, r)
        r = s_tls.command("NOOP")
        R.check("the IMAPS session from before SIGHUP still works", r.ok, r)
        R.check("bob (in the new users_file) logs in on node 1", login_ok(n1, BOB))
        R.check("bob logs in on node 2", login_ok(n2, BOB))
        c = Client(n1.host, n1.imaps_port, tls_context=tls_ctx())
        new_cert = c.sock.getpeercert(binary_form=True)
        c.logout()
        R.check("a new IMAPS connection gets the new certificate",
                new_cert == pem_der(cl.tls_cert) and new_cert != old_cert)

        # A bad file keeps the running configuration.
        lines = n1.config_lines()
        with open(n1.conf, "w") as f:
            f.write("\n".join(lines + ["bogus_key = 1"]) + "\n")
        hup(n1)
        want = "%s:%d: unknown key 'bogus_key'" % (n1.conf, len(lines) + 1)
        R.check("a bad file on SIGHUP logs FILE:LINE: message",
                wait_for(lambda: want in n1.log_text(), 10) is not None, n1.log_tail(5))
        R.check("... and says it keeps the running configuration",
                "keeping the running configuration" in n1.log_text())
        n1.write_config()  # for the CLI, which reads it too (no SIGHUP)
        R.equal("... the link to node 3 stays", n1.peer_state(3), "up")
        R.check("... bob still logs in", login_ok(n1, BOB))
        R.check("... the session stays", s_plain.command("NOOP").ok)

        # A key only a restart applies: one warn line, the old value kept.
        port = n1.imap_port
        n1.imap_port = proc.free_port()
        n1.write_config()
        n1.imap_port = port
        hup(n1)
        R.check("a changed imap_listen is named in one warn line",
                wait_for(lambda: log_count(n1, "only a restart applies it") == 1, 10) is not None
                and any("only a restart applies it" in m and m.endswith(": imap_listen")
                        for m in n1.log_messages()),
                n1.log_tail(5))
        R.check("... and IMAP still listens where it did", login_ok(n1, ALICE))
        n1.write_config()

        # Keys read once at start-up are named too, never dropped silently.
        n1.extra = {"read_consistency": "local", "shared_seen": "shared"}
        n1.write_config()
        n1.extra = {}
        hup(n1)
        R.check("changed read_consistency and shared_seen are named in one warn line",
                wait_for(lambda: log_count(n1, "only a restart applies it") == 2, 10) is not None
                and any("only a restart applies it" in m and
                        m.endswith(": read_consistency, shared_seen") for m in n1.log_messages()),
                n1.log_tail(5))
        n1.write_config()

        # Removing a peer closes its link.
        n1.peer_ids = {2}
        n1.write_config()
        hup(n1)
        R.check("node 3 removed from node 1: node 1 forgets it (no peer.3 keys in status)",
                wait_for(lambda: not any(k == "peer.3" or k.startswith("peer.3.") for k in n1.status()),
                         10) is not None, [k for k in n1.status() if k.startswith("peer.3")])
        R.check("... and node 3 sees its link to node 1 down",
                wait_for(lambda: n3.peer_state(1) not in ("up", None), 15) is not None,
                n3.peer_state(1))
        R.check("... node 1's log says so", "peer 3: removed from the configuration, link closed"
                in n1.log_text(), n1.log_tail(10))
        R.check("... and the session stays", s_plain.command("NOOP").ok)
        s_plain.logout()
        s_tls.logout()
    finally:
        cl.close()
    reps = cl.sanitizer_reports()
    R.check("no sanitizer report in the node logs", not reps, reps)
    cl.check_log_format(R)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
