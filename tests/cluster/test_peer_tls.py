#!/usr/bin/env python3
"""TLS between peers checks who the peer is (issue 17, "peer identity").

Certificates are made now with the openssl command (tests/harness/certs.py):
one cluster CA; node certificates naming their node (SAN
DNS:starling-node-N) or the host of their peer line (SAN IP:127.0.0.1).
- the right certificates link, over TLS;
- a node holding another node's certificate (signed by the same CA) is
  refused, by the node it connects to (acceptor side) and by the node that
  connects to it (initiator side), with one log line naming the peer and
  what the certificate names;
- a certificate with CN=node3 and no SAN (what the issue found accepted)
  names nobody and is refused; a certificate naming the host of the peer
  line is accepted;
- TLS on one node and not on the other: each side logs one clear line, in
  both directions of the link, and never "wrong version number" or a parse
  error;
- the openssl commands of README.md "Setting up TLS", run as written, make
  certificates three nodes link with.

The last line is "cluster-peer-tls: N passed, M failed".
"""
import os
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness import proc  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("cluster-peer-tls")

# How long a link that must not come up is watched; a good link comes up in
# well under a second on loopback, a refused one retries every <= 5 s.
NEVER_UP_WATCH = 6.0


def wait_log(node, needle, timeout=20.0):
    """Seconds until needle is in node's log, or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if needle in node.log_text():
            return time.monotonic() - t0
        time.sleep(0.1)
    return None


def log_lines(node, needle):
    return [ln for ln in node.log_text().splitlines() if needle in ln]


def ever_up(c, pairs, watch):
    """The pairs (i, j) whose link node i ever reported up during watch s."""
    seen = set()
    t0 = time.monotonic()
    while time.monotonic() - t0 < watch:
        st = c.links_state()
        seen |= {k for k, v in st.items() if v == "up" and k in pairs}
        time.sleep(0.2)
    return seen


def finish(c):
    c.close()
    reps = c.sanitizer_reports()
    R.check("no sanitizer report in the node logs", not reps, reps)
    c.check_log_format(R)


def t_wrong_node_certificate():
    # Node 1 holds node 3's certificate: node 2 (which node 1 connects to)
    # and node 3 must refuse node 1 as the acceptor; 2-3 is fine.
    c = Cluster(3, peer_tls=True)
    try:
        n1, n2, n3 = c.nodes
        n1.tls_cert, n1.tls_key = n3.tls_cert, n3.tls_key
        n1.write_config()
        c.start_all()
        t = c.wait_links_up(timeout=30, nodes=[n2, n3])
        print("measured: TLS link 2-3 (right certificates) up %.2f s after start" % t)
        st = n2.status()
        R.equal("link 2-3 runs TLS", st.get("peer.3.tls"), "yes")
        up = ever_up(c, {(1, 2), (2, 1), (1, 3), (3, 1)}, NEVER_UP_WATCH)
        R.check("node 1 with node 3's certificate: its links never up", not up, up)
        for acc in (n2, n3):
            lines = log_lines(acc, "TLS certificate does not name node 1")
            print("node %d log: %s" % (acc.node_id, lines[:1]))
            R.check("node %d (acceptor) refuses node 1, naming what the certificate names"
                    % acc.node_id,
                    lines and "DNS:starling-node-3" in lines[0] and
                    "refused peer connection" in lines[0], acc.log_tail(8))
        bye = log_lines(n1, "does not name the node you claim")
        R.check("node 1 is told why", bool(bye), n1.log_tail(8))
    finally:
        finish(c)

    # Node 3 holds node 1's certificate: nodes 1 and 2 connect to it and
    # refuse it as the initiator.
    c = Cluster(3, peer_tls=True)
    try:
        n1, n2, n3 = c.nodes
        n3.tls_cert, n3.tls_key = n1.tls_cert, n1.tls_key
        n3.write_config()
        c.start_all()
        c.wait_links_up(timeout=30, nodes=[n1, n2])
        up = ever_up(c, {(1, 3), (3, 1), (2, 3), (3, 2)}, NEVER_UP_WATCH)
        R.check("node 3 with node 1's certificate: its links never up", not up, up)
        for ini in (n1, n2):
            lines = log_lines(ini, "peer 3: TLS certificate does not name node 3")
            print("node %d log: %s" % (ini.node_id, lines[:1]))
            R.check("node %d (initiator) refuses node 3, naming what the certificate names"
                    % ini.node_id,
                    lines and "DNS:starling-node-1" in lines[0], ini.log_tail(8))
            R.check("node %d logs it once, not at every retry" % ini.node_id,
                    len(lines) == 1, lines)
    finally:
        finish(c)


def t_cn_only_then_host():
    c = Cluster(3, peer_tls=True)
    try:
        n3 = c.nodes[2]
        # The issue's certificate: CN=node3, no SAN, signed by tls_ca.
        n3.tls_cert, n3.tls_key = c.ca.issue("node3-cn-only")
        n3.write_config()
        c.start_all()
        c.wait_links_up(timeout=30, nodes=c.nodes[:2])
        up = ever_up(c, {(1, 3), (3, 1), (2, 3), (3, 2)}, NEVER_UP_WATCH)
        R.check("CN=node3 without SAN: node 3's links never up", not up, up)
        lines = log_lines(c.nodes[0], "TLS certificate does not name node 3")
        R.check("the log names the CN it found", lines and "CN=node3-cn-only" in lines[0],
                c.nodes[0].log_tail(8))
        # A certificate naming the host of node 3's peer line (127.0.0.1).
        n3.stop()
        n3.tls_cert, n3.tls_key = c.ca.issue("node3-by-address", san="IP:%s" % n3.host)
        n3.write_config()
        n3.start()
        t = c.wait_links_up(timeout=30)
        print("measured: node 3 with a SAN IP certificate: links up %.2f s after restart" % t)
        st = n3.status()
        R.check("SAN naming the peer line's address: links up over TLS",
                st.get("peer.1.tls") == "yes" and st.get("peer.2.tls") == "yes", st)
    finally:
        finish(c)


def half_tls(tls_node):
    """Two nodes, TLS only on tls_node (1: the initiator, 2: the acceptor)."""
    c = Cluster(2, peer_tls=True)
    try:
        plain = c.nodes[1] if tls_node == 1 else c.nodes[0]
        tls = c.nodes[tls_node - 1]
        plain.tls_cert = plain.tls_key = None
        plain.write_config()
        c.start_all()
        t1 = wait_log(plain, "speaks TLS but tls is off here")
        t2 = wait_log(tls, "did not start TLS")
        for n in (plain, tls):
            for ln in log_lines(n, "TLS")[:2]:
                print("node %d log: %s" % (n.node_id, ln))
        R.check("node %d (tls off) says the peer speaks TLS" % plain.node_id,
                t1 is not None, plain.log_tail(8))
        R.check("node %d (tls on) says the peer did not start TLS" % tls.node_id,
                t2 is not None, tls.log_tail(8))
        # The initiator's line names the peer's SID.
        ini = c.nodes[0]
        R.check("the initiator's line names peer 2",
                any(ln for ln in log_lines(ini, "peer 2: ")
                    if "TLS" in ln), ini.log_tail(8))
        up = ever_up(c, {(1, 2), (2, 1)}, 3.0)
        R.check("the link never comes up", not up, up)
        for n in c.nodes:
            text = n.log_text()
            for bad in ("wrong version number", "protocol error", "Bad tag", "TLS handshake failed"):
                R.check("node %d: no '%s' in the log" % (n.node_id, bad), bad not in text,
                        [ln for ln in text.splitlines() if bad in ln][:3])
    finally:
        finish(c)


def readme_tls_commands():
    """The sh block of README.md's "Setting up TLS": (ca_part, node_part),
    split at its "N=... HOST=..." line, which the test replaces."""
    with open(os.path.join(os.path.dirname(os.path.dirname(HERE)), "README.md")) as f:
        text = f.read()
    section = text[text.index("## Setting up TLS"):]
    section = section[:section.index("\n## ", 5)]
    block = section[section.index("```sh\n") + 6:]
    block = block[:block.index("```")]
    lines = block.splitlines()
    at = [i for i, ln in enumerate(lines) if ln.startswith("N=")]
    assert len(at) == 1, "README TLS block: one N=... HOST=... line expected"
    return "\n".join(lines[:at[0]]) + "\n", "\n".join(lines[at[0] + 1:]) + "\n"


def t_readme_commands():
    ca_part, node_part = readme_tls_commands()
    c = Cluster(3, peer_tls=True)
    try:
        d = os.path.join(c.dir, "readme-certs")
        os.makedirs(d)
        r = proc.run(["sh", "-ec", "cd \"$1\"\n" + ca_part, "sh", d], timeout=120)
        R.check("README: the CA commands succeed", r.returncode == 0, r.stderr[-300:])
        for n in c.nodes:
            env = dict(os.environ, N=str(n.node_id), HOST="node%d.example.com" % n.node_id)
            r = proc.run(["sh", "-ec", "cd \"$1\"\n" + node_part, "sh", d], timeout=120,
                         env=env)
            R.check("README: node %d's commands succeed" % n.node_id, r.returncode == 0,
                    r.stderr[-300:])
            n.tls_cert = os.path.join(d, "node%d.pem" % n.node_id)
            n.tls_key = os.path.join(d, "node%d.key" % n.node_id)
        c.tls_ca = os.path.join(d, "ca.pem")
        for n in c.nodes:
            n.write_config()
        c.start_all()
        t = c.wait_links_up(timeout=30)
        print("measured: links with the README's certificates up %.2f s after start" % t)
        st = c.nodes[0].status()
        R.check("README certificates: links up over TLS",
                st.get("peer.2.tls") == "yes" and st.get("peer.3.tls") == "yes", st)
    finally:
        finish(c)


def main():
    R.section("a node with another node's certificate", t_wrong_node_certificate)
    R.section("CN-only certificate refused, SAN of the peer address accepted",
              t_cn_only_then_host)
    R.section("TLS on the initiator only", half_tls, 1)
    R.section("TLS on the acceptor only", half_tls, 2)
    R.section("the README's openssl commands", t_readme_commands)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
