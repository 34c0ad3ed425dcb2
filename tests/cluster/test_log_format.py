#!/usr/bin/env python3
"""The log format (issue 17): starlingd writes one event per line with
key=value fields (logfmt, lib/log.h), read back here by
tests/harness/logfmt.py.

- A node's whole log, from start to stop, is well-formed events of that
  node, ts/level/node/msg first, in that order.
- A hostile peer (a listener where node 1 expects node 2) answers with a
  BYE whose text holds quotes, `node=9`, `msg="forged`, `level=error`, a
  backslash, a non-ASCII character and a byte that is not UTF-8: node 1 logs
  it as one warn event of node 1 whose msg reads back byte for byte, and no
  forged field or event appears.
- A configuration error found before the node id is known is one event
  without `node`; one after it names the node, a system error goes in
  `err`; the exit status is 1.
Last line: "test-log-format: N passed, M failed"."""
import errno
import os
import socket
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness import logfmt  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-log-format")

# What the fake peer says; its protocol parser refuses control bytes in a
# text (tested elsewhere), so these are what reaches the log.
BYE_TEXT = b'evil" node=9 msg="forged level=error \\ \xc3\xa9\xff end'
WANT_MSG = ('peer 2: peer said BYE: X ' +
            BYE_TEXT.decode("utf-8", "surrogateescape"))


class HostilePeer:
    """Accepts on port, reads what the node sends, answers a BYE with
    BYE_TEXT and closes; until stop(), for at most 60 s."""

    def __init__(self, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(4)
        self.sock.settimeout(0.2)
        self.done = threading.Event()
        self.accepted = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        deadline = time.monotonic() + 60
        while not self.done.is_set() and time.monotonic() < deadline:
            try:
                s, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            s.settimeout(2)
            try:
                s.recv(4096)  # its HELLO: unread data would make the close a reset
                s.sendall(b"* BYE [X] " + BYE_TEXT + b"\r\n")
                s.shutdown(socket.SHUT_WR)
                end = time.monotonic() + 2
                while time.monotonic() < end and s.recv(4096):
                    pass
            except OSError:
                pass
            s.close()

    def stop(self):
        self.done.set()
        self.thread.join(5)
        self.sock.close()


def wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    return None


def t_hostile_peer():
    c = Cluster(2)
    n1, n2 = c.nodes
    peer = HostilePeer(n2.repl_port)  # node 2 never starts: this answers instead
    try:
        n1.start()
        byes = wait_for(lambda: [e for e in n1.log_events() if "peer said BYE" in e["msg"]], 20)
        R.check("node 1 logs the peer's BYE", byes, n1.log_tail(8))
        byes = byes or []
        R.check("... as events whose msg reads back byte for byte",
                byes and all(e["msg"] == WANT_MSG for e in byes), [e["msg"] for e in byes])
        R.check("... of node 1 (a forged node=9 is no field), at warn",
                byes and all(e["node"] == "1" and e["level"] == "warn" for e in byes), byes)
        R.check("... with no field but ts, level, node and msg",
                byes and all(sorted(e) == ["level", "msg", "node", "ts"] for e in byes), byes)
        R.check("no event starts with the forged msg",
                not any(e["msg"].startswith("forged") for e in n1.log_events()))
        raw = [ln for ln in n1.log_text().splitlines() if "peer said BYE" in ln]
        R.check("the raw line escapes the quotes, the backslash and the bad byte",
                raw and all('evil\\" node=9 msg=\\"forged' in ln and " \\\\ " in ln and
                            "\\xff end" in ln and "\u00e9" in ln for ln in raw), raw)
    finally:
        peer.stop()
        c.close()
    R.check("the hostile peer was connected to", peer.accepted >= 1, peer.accepted)
    reps = c.sanitizer_reports()
    R.check("no sanitizer report in the node logs", not reps, reps)
    c.check_log_format(R)
    order = [list(e)[:4] for e in n1.log_events()]
    R.check("every event starts ts, level, node, msg",
            order and all(o == ["ts", "level", "node", "msg"] for o in order), order[:3])


def run_with(c, edit):
    """starlingd on node 1's config changed by edit(lines): (exit status,
    stderr, its events)."""
    n = c.nodes[0]
    n.write_config()
    with open(n.conf) as f:
        lines = edit(f.read().splitlines())
    with open(n.conf, "w") as f:
        f.write("\n".join(lines) + "\n")
    p = subprocess.run([c.daemon, "-c", n.conf], capture_output=True, timeout=30)
    err = p.stderr.decode("utf-8", "replace")
    return p.returncode, err, logfmt.events(err)


def t_config_error():
    c = Cluster(1)
    try:
        rc, err, events = run_with(c, lambda ls: ls + ["bogus_key = 1"])
        R.equal("starlingd with an unknown key exits 1", rc, 1)
        R.check("... with one line on stderr, one event", err.count("\n") == 1 and len(events) == 1,
                err)
        if events:
            e = events[0]
            R.check("... an error naming the key, without node (not read yet)",
                    e["level"] == "error" and "unknown key 'bogus_key'" in e["msg"] and
                    "node" not in e, e)
        rc, err, events = run_with(c, lambda ls: [x for x in ls if not x.startswith("data_dir")]
                                   + ["data_dir = /dev/null/data"])
        R.equal("starlingd with a data_dir it cannot create exits 1", rc, 1)
        R.check("... one event of node 1 naming it, the system error in err",
                len(events) == 1 and events[0].get("node") == "1" and
                events[0]["msg"] == "cannot create /dev/null/data" and
                events[0].get("err") == os.strerror(errno.ENOTDIR), err)
    finally:
        c.close()


def main():
    R.section("a hostile peer's text in the log", t_hostile_peer)
    R.section("a configuration error", t_config_error)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
