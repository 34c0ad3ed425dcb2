#!/usr/bin/env python3
"""Logging of TLS sessions that end without a close_notify (issue 17).

A real starlingd with implicit TLS: a client that logs in and then just
closes its socket (no TLS close_notify, as most clients do) is no error:
nothing about it at info.  Nor is a client gone during the handshake (a
port check connecting and closing, a client closing half-way through its
ClientHello) or one that resets its connection: those are logged at debug.
A broken handshake (bytes that are not TLS) still is logged at info.

The last line is "test-tls-eof: N passed, M failed".
"""
import os
import socket
import ssl
import struct
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for harness

from harness.imapwire import Client  # noqa: E402
from harness.report import Report  # noqa: E402
from harness.starling import Cluster  # noqa: E402

R = Report("test-tls-eof")
USER, PASSWORD = "alice", "secret"


def t_eof():
    c = Cluster(n=1, users={USER: PASSWORD}, tls=True)
    node = c.nodes[0]
    try:
        c.start_all()
        ctx = ssl.create_default_context(cafile=c.tls_cert)
        for _ in range(3):
            cl = Client(node.host, node.imaps_port, tls_context=ctx, server_hostname="localhost")
            R.equal("LOGIN over implicit TLS", cl.login(USER, PASSWORD).status, "OK")
            # Close the TCP socket under TLS: no close_notify is sent.
            raw = socket.socket(fileno=cl.sock.detach())
            raw.close()
        # A port check: connect, close.
        for _ in range(3):
            socket.create_connection((node.host, node.imaps_port), timeout=10).close()
        # Half a ClientHello, then close.
        with socket.create_connection((node.host, node.imaps_port), timeout=10) as so:
            so.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 20)
            time.sleep(0.2)
        # A logged-in client that resets its connection (RST, SO_LINGER 0).
        cl = Client(node.host, node.imaps_port, tls_context=ctx, server_hostname="localhost")
        R.equal("LOGIN over implicit TLS, before a reset", cl.login(USER, PASSWORD).status, "OK")
        raw = socket.socket(fileno=cl.sock.detach())
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
        # The node has handled them all once a new session gets through.
        cl = Client(node.host, node.imaps_port, tls_context=ctx, server_hostname="localhost")
        R.equal("a new session after them", cl.login(USER, PASSWORD).status, "OK")
        cl.command("LOGOUT")
        time.sleep(0.3)
        log = node.log_text()
        gone = [ln for ln in log.splitlines() if "level=debug" not in ln and
                any(w in ln for w in ("TLS handshake failed", "TLS read failed",
                                      "TLS write failed", "unexpected eof"))]
        R.check("clients gone mid-handshake or reset: nothing about TLS at info or warn",
                not gone, gone)
        with socket.create_connection((node.host, node.imaps_port), timeout=10) as so:
            so.sendall(b"not a TLS hello\r\n" * 4)
            try:
                while so.recv(4096):
                    pass
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while "TLS handshake failed" not in node.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = node.log_text()
        R.check("a bad handshake is still logged", "TLS handshake failed" in log, node.log_tail())
        R.check("no 'TLS read failed' for sessions closed without close_notify",
                "TLS read failed" not in log and "unexpected eof" not in log, node.log_tail())
    finally:
        c.close()
        reps = c.sanitizer_reports()
        R.check("no sanitizer report", not reps, reps)


def main():
    R.section("TLS EOF", t_eof)
    return R.summary()


if __name__ == "__main__":
    sys.exit(main())
