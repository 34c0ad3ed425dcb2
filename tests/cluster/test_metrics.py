#!/usr/bin/env python3
"""metrics_listen (issue 17): GET /metrics in the Prometheus text format on
two real nodes.  Checked: the format (HELP/TYPE before samples, every line
parses), the per-peer link state, backlog, lag and under-replicated
changes against `starling status` and against what was done (a stopped
peer, a delivery while it is down), syncs and UIDFIX counters after a
`starling resync`, IMAP sessions and the command latency histogram after
IMAP commands, store sizes; and hostile HTTP: other methods and paths,
garbage, an endless header, a NUL, many idle connections, a client that
never reads -- none of which stops a scrape or the node.  Last line:
"test-metrics: N passed, M failed"."""
import os
import re
import socket
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness import proc  # noqa: E402
from harness.imapwire import Client  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-metrics")
ALICE, PW = "alice@example.com", "secret"
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"'
                    r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")*)?\})? (\S+)$')


def http(port, data, timeout=10.0, read=True):
    """Send raw bytes, return (status line, headers, body) or None."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        if not read:
            return s
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    finally:
        if read:
            s.close()
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return lines[0], lines[1:], body


def scrape(port):
    st, headers, body = http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    if not st.startswith("HTTP/1.1 200"):
        raise RuntimeError("scrape: %s" % st)
    return headers, body.decode()


def parse(text):
    """{(name, labels): value}, and a list of format errors."""
    samples, errors, typed = {}, [], set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        if not m:
            errors.append("bad line %r" % line)
            continue
        name = m.group(1)
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in typed and base not in typed:
            errors.append("no TYPE before %s" % name)
        try:
            samples[(name, m.group(3) or "")] = float(m.group(5))
        except ValueError:
            errors.append("bad value %r" % line)
    return samples, errors


def main():
    cl = Cluster(2, users={ALICE: PW})
    n1, n2 = cl.nodes
    mport = {n.node_id: proc.free_port() for n in cl.nodes}
    for n in cl.nodes:
        n.extra["metrics_listen"] = "127.0.0.1:%d" % mport[n.node_id]
    try:
        cl.start_all()
        cl.wait_links_up()
        p1 = mport[1]
        headers, text = scrape(p1)
        R.check("Content-Type is the Prometheus text format",
                any(h.lower() == "content-type: text/plain; version=0.0.4; charset=utf-8" for h in headers),
                headers)
        s, errors = parse(text)
        R.check("every line parses, every sample has its TYPE", not errors, errors[:5])
        R.equal("peer 2 is up", s.get(("starling_peer_up", 'peer="2"')), 1.0)
        for name in ("starling_peer_backlog", "starling_peer_lag_seconds",
                     "starling_peer_under_replicated", "starling_peer_link_ups_total"):
            R.check("%s{peer=2} is there" % name, (name, 'peer="2"') in s, sorted(s)[:50])
        for name in ("starling_syncs_total", "starling_uidfix_renumbered_total",
                     "starling_autonomous_changes_total", "starling_under_replicated_changes",
                     "starling_imap_sessions", "starling_store_journal_bytes",
                     "starling_store_text_live_bytes", "starling_imap_command_duration_seconds_count"):
            R.check("%s is there" % name, (name, "") in s)

        # IMAP sessions and the latency histogram.
        count0 = s[("starling_imap_command_duration_seconds_count", "")]
        clients = [Client(n1.host, n1.imap_port) for _ in range(3)]
        for c in clients:
            c.login(ALICE, PW)
            c.command("SELECT INBOX")
            c.command("NOOP")
        s, _ = parse(scrape(p1)[1])
        R.equal("3 IMAP sessions", s.get(("starling_imap_sessions", "")), 3.0)
        count1 = s[("starling_imap_command_duration_seconds_count", "")]
        R.check("9 commands more in the histogram", count1 - count0 == 9, (count0, count1))
        buckets = sorted((float(re.search(r'le="([^"]+)"', k[1]).group(1)), v) for k, v in s.items()
                         if k[0] == "starling_imap_command_duration_seconds_bucket")
        R.check("buckets are cumulative and +Inf equals count",
                len(buckets) >= 5 and all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
                and buckets[-1] == (float("inf"), count1), buckets)
        R.check("the sum is positive", s.get(("starling_imap_command_duration_seconds_sum", ""), 0) > 0)
        for c in clients:
            c.logout()

        # Syncs and UIDFIX counters follow `starling resync`.
        n1.deliver(ALICE, b"Subject: one\r\n\r\nbody\r\n")
        syncs0 = parse(scrape(p1)[1])[0][("starling_syncs_total", "")]
        r = n1.cli("resync", "-u", ALICE)
        R.check("resync runs", r.returncode == 0, r.stderr)
        s, _ = parse(scrape(p1)[1])
        R.check("starling_syncs_total grew", s[("starling_syncs_total", "")] > syncs0,
                (syncs0, s[("starling_syncs_total", "")]))
        st = n1.status()
        R.equal("syncs_total equals status syncs_run", s[("starling_syncs_total", "")],
                float(st["syncs_run"]))
        R.equal("uidfix equals status uids_renumbered", s[("starling_uidfix_renumbered_total", "")],
                float(st["uids_renumbered"]))

        # A stopped peer: link down, backlog, lag, under-replicated.
        n2.stop()
        t0 = time.monotonic()
        while parse(scrape(p1)[1])[0].get(("starling_peer_up", 'peer="2"')) != 0.0:
            if time.monotonic() - t0 > 15:
                break
            time.sleep(0.2)
        n1.deliver(ALICE, b"Subject: two\r\n\r\nbody\r\n")  # accepted, under-replicated
        time.sleep(0.3)
        s, _ = parse(scrape(p1)[1])
        st = n1.status()
        R.equal("peer 2 down", s.get(("starling_peer_up", 'peer="2"')), 0.0)
        R.check("backlog to peer 2 >= 1", s.get(("starling_peer_backlog", 'peer="2"'), 0) >= 1, s.get(("starling_peer_backlog", 'peer="2"')))
        R.check("lag to peer 2 > 0", s.get(("starling_peer_lag_seconds", 'peer="2"'), 0) > 0)
        R.check("under-replicated changes >= 1", s.get(("starling_under_replicated_changes", ""), 0) >= 1)
        R.check("peer 2 lacks them", s.get(("starling_peer_under_replicated", 'peer="2"'), 0) >= 1)
        R.equal("backlog as in status", s.get(("starling_peer_backlog", 'peer="2"')),
                float(st["peer.2.backlog"]))

        # Hostile HTTP.
        cases = [
            ("POST is refused", b"POST /metrics HTTP/1.1\r\n\r\n", "405"),
            ("another path is not found", b"GET /admin HTTP/1.1\r\n\r\n", "404"),
            ("a path that only starts with /metrics", b"GET /metricsX HTTP/1.1\r\n\r\n", "404"),
            ("garbage", b"\x16\x03\x01 hello\r\n\r\n", "400"),
            ("no version", b"GET /metrics\r\n\r\n", "400"),
            ("a NUL", b"GET /met\x00rics HTTP/1.1\r\n\r\n", "400"),
            ("an endless header", b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000, "431"),
        ]
        for what, data, code in cases:
            try:
                res = http(p1, data)
                R.check("%s: %s" % (what, code), res[0].startswith("HTTP/1.1 " + code), res[0])
            except OSError as e:
                # The server may close while we still write the long one.
                R.check("%s: %s" % (what, code), code == "431" and isinstance(e, (BrokenPipeError, ConnectionResetError)), e)
        st_line, _, body = http(p1, b"HEAD /metrics HTTP/1.0\r\n\r\n")
        R.check("HEAD: 200 without a body", st_line.startswith("HTTP/1.1 200") and body == b"", (st_line, body[:40]))
        idle = [socket.create_connection(("127.0.0.1", p1)) for _ in range(40)]
        half = http(p1, b"GET /metrics HTTP/1.1\r\n", read=False)  # never finishes
        t0 = time.monotonic()
        ok = scrape(p1)
        took = time.monotonic() - t0
        R.check("with 40 idle and one half-sent connection a scrape is answered at once",
                ok and took < 2.0, took)
        print("measured: scrape with 41 idle connections open took %.3f s" % took)
        # A client that asks and never reads (a tiny receive buffer): the
        # loop goes on.  The server closes after its one answer, so only
        # one request is sent.
        nr = socket.socket()
        nr.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        nr.connect(("127.0.0.1", p1))
        nr.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        c = Client(n1.host, n1.imap_port)
        R.check("IMAP still answers", c.login(ALICE, PW).ok)
        c.logout()
        for sck in idle + [half, nr]:
            sck.close()
        R.check("a scrape still works after all that", scrape(p1) is not None)
        R.check("node 1 still runs", n1.running())
    finally:
        cl.close()
    reps = cl.sanitizer_reports()
    R.check("no sanitizer report in the node logs", not reps, reps)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
