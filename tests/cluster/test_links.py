#!/usr/bin/env python3
"""Peer links between real starlingd nodes on 127.0.0.1 (issue 6, links).

Three nodes, every directed link through a LinkProxy
(tests/harness/linkproxy.py), checked through `starling status --json`:
all links come up, one TCP connection per pair (the lower SID connects);
kill -9 of a node is noticed by the others and healed after a restart; a
silent partition (proxy blackhole) is noticed by the keepalive on both ends
within the dead timeout, a reset link at once, and both heal on restore; a
node with the wrong cluster secret or a certificate from another CA never
comes up and the logs say why; a peer with an unknown SID is refused; TLS
between peers with certificates made now by openssl; a second connection
from the same peer replaces the first; five nodes split 2|3 silently and
healed; a SAVE with no mailbox selected gets BAD [NOSELECT] and commands
nobody handles get BAD [UNKNOWN-COMMAND].  A small Python peer speaks the handshake of SPEC.md
2-3 by itself for the checks that need a misbehaving peer.

Detection times are printed ("measured: ...").  The last line is
"cluster-links: N passed, M failed".
"""
import os
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness import proc  # noqa: E402
from harness.certs import TestCA  # noqa: E402
from harness.linkproxy import LinkProxy  # noqa: E402
from harness.peerwire import PyPeer  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("cluster-links")

# repl-peer.h: ping after 1 s of silence, dead after 3 s.
DEAD_TIMEOUT = 3.0
# What a test accepts: the dead timeout, the timer tick, status polling and
# a slow machine running sanitizers.
DETECT_LIMIT = 6.0
CLUSTERS = []


def new_cluster(n=3, **kw):
    c = Cluster(n=n, **kw)
    CLUSTERS.append(c)
    return c


def finish_cluster(c):
    """Stop the nodes (so LeakSanitizer runs) and check for reports."""
    c.close()
    reps = c.sanitizer_reports()
    R.check("no sanitizer report in the node logs", not reps, reps)
    c.check_log_format(R)


def wait_state(node, sid, pred, timeout):
    """Poll node's state of peer sid until pred(state); returns (seconds,
    state) or (None, last state) after timeout."""
    t0 = time.monotonic()
    state = None
    while time.monotonic() - t0 < timeout:
        state = node.peer_state(sid)
        if pred(state):
            return time.monotonic() - t0, state
        time.sleep(0.05)
    return None, state


def wait_all(checks, timeout):
    """checks: {label: (node, sid, pred)}.  Polls them all; returns
    {label: seconds or None}."""
    t0 = time.monotonic()
    out = {k: None for k in checks}
    while time.monotonic() - t0 < timeout and any(v is None for v in out.values()):
        for label, (node, sid, pred) in checks.items():
            if out[label] is None and pred(node.peer_state(sid)):
                out[label] = time.monotonic() - t0
        time.sleep(0.05)
    return out


def not_up(state):
    return state is not None and state != "up"


def is_up(state):
    return state == "up"


def count_lines(node, text):
    return sum(1 for line in node.log_text().splitlines() if text in line)


def cluster_secret(c):
    with open(c.secret_file, "rb") as f:
        return f.read().rstrip(b"\n")


# ------------------------------------------------------------ sections
def _echo_server():
    """A thread echoing every connection on a free port; returns the port."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((proc.LOOPBACK, 0))
    srv.listen(16)
    srv.settimeout(0.2)

    def serve_one(conn):
        conn.settimeout(60)
        try:
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                conn.sendall(data)
        except OSError:
            pass
        conn.close()

    def accept_loop():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()
        srv.close()

    threading.Thread(target=accept_loop, daemon=True).start()
    return srv.getsockname()[1]


def _recv_within(sock, timeout):
    """bytes received within timeout; b"" on EOF or reset; None if nothing."""
    sock.settimeout(timeout)
    try:
        return sock.recv(4096)
    except socket.timeout:
        return None
    except OSError:
        return b""


def t_link_proxy():
    port = _echo_server()
    p = LinkProxy(port).start()
    try:
        a = socket.create_connection((proc.LOOPBACK, p.port), timeout=5)
        a.sendall(b"hello")
        R.equal("pass: bytes go through and back", _recv_within(a, 5), b"hello")
        p.blackhole()
        time.sleep(0.2)
        a.sendall(b"held")
        R.equal("blackhole: nothing comes back", _recv_within(a, 1.0), None)
        b = socket.create_connection((proc.LOOPBACK, p.port), timeout=5)
        b.sendall(b"new")
        R.equal("blackhole: a new connection gets nothing either", _recv_within(b, 0.5), None)
        p.restore()
        R.equal("restore: the held bytes arrive (delayed, not lost)", _recv_within(a, 5),
                b"held")
        R.equal("restore: the waiting connection is served", _recv_within(b, 5), b"new")
        p.cut()
        R.equal("cut: existing connections are reset at once", _recv_within(a, 2), b"")
        try:
            c = socket.create_connection((proc.LOOPBACK, p.port), timeout=5)
            got = _recv_within(c, 2)
            c.close()
        except ConnectionResetError:
            got = b""  # the reset beat connect() back
        R.equal("cut: a new connection is reset at once", got, b"")
        for s in (a, b):
            s.close()
        p.restore()
        d = socket.create_connection((proc.LOOPBACK, p.port), timeout=5)
        d.sendall(b"again")
        R.equal("restore after cut: new connections work", _recv_within(d, 5), b"again")
        d.close()
    finally:
        p.close()


def t_links_come_up():
    c = new_cluster(3, proxies=True)
    c.start_all()
    t = c.wait_links_up(timeout=30)
    print("measured: all 6 link ends up %.2f s after the last node started" % t)
    R.check("all links up within 30 s", True)
    st = {n.node_id: n.status() for n in c.nodes}
    for n in c.nodes:
        s = st[n.node_id]
        R.equal("node %d: peers" % n.node_id, s.get("peers"), 2)
        R.equal("node %d: peers_up" % n.node_id, s.get("peers_up"), 2)
        for other in c.nodes:
            if other is n:
                continue
            k = "peer.%d" % other.node_id
            R.equal("node %d: %s.role" % (n.node_id, k), s.get(k + ".role"),
                    "connect" if n.node_id < other.node_id else "accept")
            R.equal("node %d: %s.compress" % (n.node_id, k), s.get(k + ".compress"), "yes")
            R.equal("node %d: %s.tls" % (n.node_id, k), s.get(k + ".tls"), "no")
            R.check("node %d: %s.since_ms is a number" % (n.node_id, k),
                    isinstance(s.get(k + ".since_ms"), int), s)
    # One TCP connection per pair: only the lower SID's proxy carries one.
    for (i, j), p in sorted(c.mesh.proxies.items()):
        R.equal("connections through proxy %d->%d" % (i, j), p.connection_count(),
                1 if i < j else 0)


def t_kill_and_restart(c):
    victim = c.nodes[2]
    victim.kill()
    res = wait_all({n.node_id: (n, 3, not_up) for n in c.nodes[:2]}, timeout=15)
    for sid, t in res.items():
        if t is not None:
            print("measured: node %d reports peer 3 down %.2f s after kill -9" % (sid, t))
        R.check("node %d reports killed peer 3 down within %.0f s" % (sid, DETECT_LIMIT),
                t is not None and t < DETECT_LIMIT, t)
    R.equal("link 1-2 stays up", c.nodes[0].peer_state(2), "up")
    # Retrying does not reset the clock: since_ms counts from the loss.
    time.sleep(1.5)
    s = c.nodes[0].status()
    R.check("node 1: peer 3 not up while it is dead", s.get("peer.3") != "up", s.get("peer.3"))
    R.check("node 1: peer.3.since_ms counts from the loss of the link (>= 1500)",
            isinstance(s.get("peer.3.since_ms"), int) and s["peer.3.since_ms"] >= 1500,
            s.get("peer.3.since_ms"))
    R.check("node 1: peer.3.reason is given", bool(s.get("peer.3.reason")), s)
    t0 = time.monotonic()
    victim.start()
    t = c.wait_links_up(timeout=30)
    print("measured: links to the restarted node 3 up %.2f s after start "
          "(%.2f s after its IMAP port opened)" % (time.monotonic() - t0, t))
    R.check("restarted node links up again", True)
    s = c.nodes[0].status()
    R.equal("node 1 counts 2 link-ups of peer 3", s.get("peer.3.link_ups"), 2)


def t_blackhole(c):
    c.blackhole(1, 2)
    res = wait_all({"node 1 end": (c.nodes[0], 2, not_up),
                    "node 2 end": (c.nodes[1], 1, not_up)}, timeout=15)
    for label, t in res.items():
        if t is not None:
            print("measured: silent partition 1-2: %s down after %.2f s" % (label, t))
        R.check("blackholed link: %s down within %.0f s" % (label, DETECT_LIMIT),
                t is not None and t < DETECT_LIMIT, t)
        # Nothing closes a blackholed socket: only the keepalive can have
        # noticed, so it cannot be much faster than dead timeout - ping.
        R.check("blackholed link: %s noticed by keepalive, not by a close" % label,
                t is not None and t >= DEAD_TIMEOUT - 1.5, t)
    R.equal("link 1-3 unaffected", c.nodes[0].peer_state(3), "up")
    R.equal("link 2-3 unaffected", c.nodes[1].peer_state(3), "up")
    log1 = c.nodes[0].log_text()
    R.check("node 1 log says the peer timed out", "peer 2: link down: peer timed out" in log1,
            c.nodes[0].log_tail(10))
    # While blackholed the link stays down (attempts hang, then time out).
    time.sleep(2)
    R.check("link stays down while blackholed", not_up(c.nodes[0].peer_state(2)))
    c.restore(1, 2)
    t = c.wait_links_up(timeout=30)
    print("measured: link 1-2 up again %.2f s after restore" % t)
    R.check("link 1-2 up again after restore", True)


def t_cut(c):
    c.cut(1, 3)
    res = wait_all({"node 1 end": (c.nodes[0], 3, not_up),
                    "node 3 end": (c.nodes[2], 1, not_up)}, timeout=15)
    for label, t in res.items():
        if t is not None:
            print("measured: reset link 1-3: %s down after %.2f s" % (label, t))
        R.check("cut link: %s down within 2 s" % label, t is not None and t < 2.0, t)
    time.sleep(1)
    R.check("link stays down while cut", not_up(c.nodes[0].peer_state(3)))
    c.restore(1, 3)
    t = c.wait_links_up(timeout=30)
    print("measured: link 1-3 up again %.2f s after restore" % t)
    R.check("link 1-3 up again after restore", True)
    finish_cluster(c)


def t_wrong_secret():
    c = new_cluster(3)
    bad = os.path.join(c.dir, "other.secret")
    with open(bad, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    os.chmod(bad, 0o600)
    c.nodes[2].secret_file = bad
    c.start_all()
    c.wait_links_up(timeout=30, nodes=c.nodes[:2])
    ever_up = set()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 5:
        st = c.links_state()
        ever_up |= {k for k, v in st.items() if v == "up" and 3 in k}
        time.sleep(0.2)
    R.check("node with the wrong secret never up with anyone", not ever_up, ever_up)
    R.equal("nodes 1-2 still up", c.nodes[0].peer_state(2), "up")
    n3 = c.nodes[2]
    refused = count_lines(n3, "refused peer connection from 127.0.0.1")
    R.check("node 3 logs the refusal: peer failed authentication",
            count_lines(n3, "peer failed authentication") >= 1, n3.log_tail(10))
    # Nodes 1 and 2 retry about every 5 s: the same reason is logged once.
    R.equal("node 3 logs the repeated refusal once", refused, 1)
    n1 = c.nodes[0]
    R.check("node 1 logs why: authentication refused by peer",
            count_lines(n1, "peer 3: authentication refused by peer") >= 1, n1.log_tail(10))
    R.equal("node 1 logs the repeated failure once",
            count_lines(n1, "peer 3: authentication refused by peer"), 1)
    s = n1.status()
    R.check("node 1 status gives the reason",
            "authentication" in str(s.get("peer.3.reason")), s.get("peer.3.reason"))
    finish_cluster(c)


def t_peer_does_not_list_us():
    # Node 3 has no peer line for node 1; node 1 lists node 3, connects,
    # authenticates, and is told BYE [SID].  It must back off, not flap.
    c = new_cluster(3)
    c.nodes[2].peer_ids = {2}
    c.start_all()
    c.wait_links_up(timeout=30, nodes=c.nodes[1:])
    t0 = time.monotonic()
    while time.monotonic() - t0 < 6:
        time.sleep(0.5)
    n1, n3 = c.nodes[0], c.nodes[2]
    s = n1.status()
    ups = s.get("peer.3.link_ups")
    print("measured: node 1 reached node 3 %s times in about 6 s" % ups)
    R.check("refused node backs off (at most 10 attempts in 6 s)",
            isinstance(ups, int) and 1 <= ups <= 10, ups)
    R.check("node 3 logs the unknown node once",
            count_lines(n3, "node 1 is not a configured peer") == 1, n3.log_tail(8))
    # The BYE [SID] text is usually what node 1 logs, but a reset can
    # overtake it (node 3 closes with node 1's COMPRESS unread): then the
    # log only says the link went down right after coming up.
    R.check("node 1 logs the failure",
            count_lines(n1, "unknown node id") + count_lines(n1, "right after it came up") >= 1,
            n1.log_tail(8))
    R.check("node 1 does not log every attempt (at most 2 'link up' lines for peer 3)",
            count_lines(n1, "peer 3: link up") <= 2, n1.log_tail(12))
    R.equal("node 3 links with node 2", n3.peer_state(2), "up")
    finish_cluster(c)


def t_secret_file_checks():
    c = new_cluster(2)
    n = c.nodes[0]
    cases = [("missing", None, "No such file"),
             ("empty", b"", "is empty"),
             ("too short", b"short\n", "at least 32"),
             ("world-readable", os.urandom(32).hex().encode(), "accessible by everyone")]
    for name, content, want in cases:
        path = os.path.join(c.dir, "secret-" + name.replace(" ", "-"))
        if content is not None:
            with open(path, "wb") as f:
                f.write(content)
            os.chmod(path, 0o644 if name == "world-readable" else 0o600)
        n.secret_file = path
        err = None
        try:
            n.start(timeout=15)
        except RuntimeError as e:
            err = str(e)
        if err is None:
            n.stop()
        R.check("secret file %s: starlingd refuses to start" % name, err is not None)
        R.check("secret file %s: the error says %r" % (name, want),
                err is not None and want in err, (err or "")[-400:])
    finish_cluster(c)


def t_python_peer():
    # Node 2 accepts from peer 1, which is never started: a Python peer
    # speaks for SID 1, then for SIDs node 2 does not know.
    c = new_cluster(2)
    n2 = c.nodes[1]
    n2.start()
    secret = cluster_secret(c)

    p = PyPeer(n2.repl_port, 77, secret)
    R.equal("HELLO names the node", p.peer_sid, 2)
    reply = p.auth()
    R.check("unknown SID 77 with the right secret authenticates", reply.startswith("C1 OK"),
            reply)
    R.check("then node 2 closes the link", p.closed_within(5))
    p.close()
    R.check("node 2 logs the unknown SID",
            count_lines(n2, "node 77 is not a configured peer") == 1, n2.log_tail(5))

    p = PyPeer(n2.repl_port, 1, secret)
    reply = p.auth(secret=b"x" * 64)
    R.check("wrong secret: NO [AUTHFAILED]", reply.startswith("C1 NO [AUTHFAILED]"), reply)
    R.check("wrong secret: closed", p.closed_within(5))
    p.close()

    p = PyPeer(n2.repl_port, 1, secret)
    reply = p.auth()
    R.check("SID 1 authenticates", reply.startswith("C1 OK [AUTH "), reply)
    t, state = wait_state(n2, 1, is_up, 5)
    R.check("node 2 reports peer 1 up", t is not None, state)
    R.equal("PING answered", p.command("PING")[-1], "C2 OK PONG")
    r = p.command("SAVE 1700000000+0100 0 0 0123456789abcdef0123456789abcdef ()")
    R.check("SAVE without a selected mailbox: BAD [NOSELECT]",
            r[-1].startswith("C3 BAD [NOSELECT]"), r)
    r = p.command("FROBNICATE 1")
    R.check("unknown command: BAD [UNKNOWN-COMMAND]",
            r[-1].startswith("C4 BAD [UNKNOWN-COMMAND]"), r)
    R.equal("link survives those answers", p.command("PING")[-1], "C5 OK PONG")

    # SID 1 "restarts": the new connection replaces the old one.
    q = PyPeer(n2.repl_port, 1, secret)
    reply = q.auth()
    R.check("second connection of SID 1 authenticates", reply.startswith("C1 OK"), reply)
    R.check("the older connection is closed", p.closed_within(5))
    p.close()
    R.equal("the new one works", q.command("PING")[-1], "C2 OK PONG")
    s = n2.status()
    R.equal("node 2: peer 1 up", s.get("peer.1"), "up")
    R.equal("node 2: peer 1 came up twice", s.get("peer.1.link_ups"), 2)
    q.close()
    t, state = wait_state(n2, 1, not_up, 5)
    R.check("peer 1 down once the Python peer left", t is not None, state)
    R.equal("status says down", state, "down")
    finish_cluster(c)


def t_tls():
    c = new_cluster(3, peer_tls=True, proxies=True)
    # Node 3 holds a certificate of another CA: nobody may accept it.
    rogue = TestCA(os.path.join(c.dir, "rogue-ca"), name="Rogue CA")
    c.nodes[2].tls_cert, c.nodes[2].tls_key = rogue.issue("node3", san="DNS:starling-node-3")
    c.start_all()
    t = c.wait_links_up(timeout=30, nodes=c.nodes[:2])
    print("measured: TLS link 1-2 up %.2f s after start" % t)
    # Both ends' views at a moment the link is up at both (a link may
    # still be replaced right after it came up, while the nodes start).
    s, s2 = {}, {}
    t0 = time.monotonic()
    while time.monotonic() - t0 < 15:
        s, s2 = c.nodes[0].status(), c.nodes[1].status()
        if s.get("peer.2") == "up" and s2.get("peer.1") == "up":
            break
        time.sleep(0.2)
    R.equal("link 1-2 runs TLS", s.get("peer.2.tls"), "yes")
    R.equal("link 1-2 compressed inside TLS", s.get("peer.2.compress"), "yes")
    R.equal("node 2 sees TLS too", s2.get("peer.1.tls"), "yes")
    ever_up = set()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 4:
        st = c.links_state()
        ever_up |= {k for k, v in st.items() if v == "up" and 3 in k}
        time.sleep(0.2)
    R.check("node with a certificate of another CA never up", not ever_up, ever_up)
    logs = c.nodes[0].log_text() + c.nodes[2].log_text()
    R.check("the logs say the TLS handshake failed", "TLS handshake failed" in logs,
            c.nodes[0].log_tail(5))
    # Fix node 3's certificate: the links come up, over TLS.
    c.nodes[2].stop()
    c.nodes[2].tls_cert, c.nodes[2].tls_key = c.ca.issue("node3-new", san="DNS:starling-node-3")
    c.nodes[2].start()
    t = c.wait_links_up(timeout=30)
    print("measured: TLS links to node 3 up %.2f s after its restart" % t)
    s3 = c.nodes[2].status()
    R.check("node 3 links run TLS",
            s3.get("peer.1.tls") == "yes" and s3.get("peer.2.tls") == "yes", s3)
    # Keepalive works inside TLS too.
    c.blackhole(2, 3)
    res = wait_all({"node 2 end": (c.nodes[1], 3, not_up),
                    "node 3 end": (c.nodes[2], 2, not_up)}, timeout=15)
    for label, t in res.items():
        if t is not None:
            print("measured: TLS silent partition 2-3: %s down after %.2f s" % (label, t))
        R.check("TLS blackholed link: %s down within %.0f s" % (label, DETECT_LIMIT),
                t is not None and t < DETECT_LIMIT, t)
    c.restore(2, 3)
    c.wait_links_up(timeout=30)
    R.check("TLS link 2-3 up again after restore", True)
    finish_cluster(c)


def t_five_nodes_partition():
    c = new_cluster(5, proxies=True)
    c.start_all()
    t = c.wait_links_up(timeout=40)
    print("measured: 5 nodes, all 20 link ends up %.2f s after the last start" % t)
    for (i, j), p in sorted(c.mesh.proxies.items()):
        if p.connection_count() != (1 if i < j else 0):
            R.check("one connection per pair (proxy %d->%d)" % (i, j), False,
                    p.connection_count())
            break
    else:
        R.check("one connection per pair among 5 nodes", True)
    # Split {1, 2} from {3, 4, 5} silently.
    for i in (1, 2):
        for j in (3, 4, 5):
            c.blackhole(i, j)
    checks = {}
    for i in (1, 2):
        for j in (3, 4, 5):
            checks["%d->%d" % (i, j)] = (c.nodes[i - 1], j, not_up)
            checks["%d->%d" % (j, i)] = (c.nodes[j - 1], i, not_up)
    res = wait_all(checks, timeout=15)
    worst = max((v for v in res.values() if v is not None), default=None)
    R.check("every cut link end down within %.0f s" % DETECT_LIMIT,
            all(v is not None and v < DETECT_LIMIT for v in res.values()), res)
    if worst is not None:
        print("measured: partition {1,2}|{3,4,5}: slowest of 12 link ends down after %.2f s"
              % worst)
    st = c.links_state()
    inside = [(a, b) for (a, b) in st if ({a, b} <= {1, 2} or {a, b} <= {3, 4, 5})]
    R.check("links inside each side stay up", all(st[k] == "up" for k in inside),
            {k: st[k] for k in inside})
    for i in (1, 2):
        for j in (3, 4, 5):
            c.restore(i, j)
    t = c.wait_links_up(timeout=40)
    print("measured: partition healed, all links up %.2f s after restore" % t)
    R.check("all links up after the partition heals", True)
    finish_cluster(c)


def main():
    R.section("link proxy (no nodes)", t_link_proxy)
    R.section("links come up", t_links_come_up)
    c = CLUSTERS[0] if CLUSTERS else None
    for name, func in (("kill -9 and restart", t_kill_and_restart),
                       ("silent partition (blackhole)", t_blackhole),
                       ("reset link (cut)", t_cut)):
        if c is None or not c.nodes[0].running():
            R.check("%s: cluster running" % name, False)
            continue
        R.section(name, func, c)
    R.section("wrong cluster secret", t_wrong_secret)
    R.section("secret file checks", t_secret_file_checks)
    R.section("a peer that does not list us", t_peer_does_not_list_us)
    R.section("python peer: unknown SID, commands, replacement", t_python_peer)
    R.section("TLS between peers", t_tls)
    R.section("five nodes: partition and heal", t_five_nodes_partition)
    for cl in CLUSTERS:
        cl.close()
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
