"""Shared setup for the IMAP end-to-end scripts: find the harness, parse
the common options and start the target server (a starlingd node by
default, a private Dovecot with --dovecot to validate the tests).
"""
import argparse
import sys as _sys
_sys.dont_write_bytecode = True  # keep the source tree clean under make check
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE)))  # tests/ for harness

from harness import proc  # noqa: E402
from harness.report import Report  # noqa: E402


class Target:
    """The server under test, whichever it is."""

    def __init__(self, kind, server, node=None):
        self.kind = kind
        self.server = server     # Cluster or Dovecot
        self.node = node         # starling Node, or the Dovecot
        self.host = proc.LOOPBACK
        self.port = node.imap_port
        self.imaps_port = node.imaps_port
        self.tls_cert = server.tls_cert

    def deliver(self, user, message, mailbox=None):
        self.node.deliver(user, message, mailbox)

    def alive(self):
        if self.kind == "starling":
            return self.node.running()
        return self.server.process.alive()

    def sanitizer_report(self):
        return self.node.sanitizer_report()

    def stop(self):
        """Stop the server; returns its exit code (starlingd) or None."""
        if self.kind == "starling":
            return self.node.stop()
        self.server.stop()
        return None

    def restart(self, kill=False):
        """Stop (SIGTERM, or SIGKILL as in a crash) and start again on the
        same data and ports."""
        if self.kind == "starling":
            if kill:
                self.node.kill()
            else:
                self.node.stop()
            self.node.start()
        else:
            if kill:
                self.server.process.kill()
                self.server.started = False
            else:
                self.server.stop()
            self.server.start()

    def log_text(self):
        return self.node.log_text()

    def log_tail(self):
        return self.node.log_tail()


def parse_args(description):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--dovecot", action="store_true",
                    help="run against a private Dovecot instead of starlingd")
    ap.add_argument("--build", help="build dir (default: $top_builddir)")
    ap.add_argument("-k", "--only", help="run only sections whose name contains this")
    return ap.parse_args()


def start_target(args, users, tls=True):
    if args.dovecot:
        from harness.dovecot import Dovecot
        d = Dovecot(users=users, tls=tls).start()
        return Target("dovecot", d, d)
    from harness.starling import Cluster
    c = Cluster(n=1, users=users, tls=tls, build_dir=args.build)
    c.start_all()
    return Target("starling", c, c.nodes[0])


def finish(report, target):
    """Stop the server and count its clean exit and sanitizer reports."""
    if target is None:
        return report.summary()
    report.section_name = "shutdown"
    alive = target.alive()
    report.check("server still running at the end", alive,
                 "server died:\n" + target.log_tail())
    code = target.stop()
    if target.kind == "starling":
        if alive:
            report.equal("starlingd exits 0 on SIGTERM", code, 0)
        rep = target.sanitizer_report()
        report.check("no sanitizer report in starlingd's output", rep is None, rep)
    report.section_name = None
    return report.summary()


def run_sections(report, sections, description, users, set_target, tls=False, start=None):
    """The usual main(): start the target (start(args) when the script needs
    its own server setup, else start_target with users and tls;
    set_target(t) hands it to the script), run each (name, func) section
    while the server is alive, then finish.  Returns the exit status."""
    args = parse_args(description)
    try:
        target = start(args) if start is not None else start_target(args, users, tls=tls)
    except Exception as e:  # noqa: BLE001
        report.check("server starts", False, "%s: %s" % (type(e).__name__, e))
        return report.summary()
    set_target(target)
    print("target: %s on 127.0.0.1:%d" % (target.kind, target.port), flush=True)
    for name, func in sections:
        if args.only and args.only not in name:
            continue
        if not target.alive():
            report.check("%s: server alive before the section" % name, False, target.log_tail())
            continue
        report.section(name, func)
    return finish(report, target)


__all__ = ["Report", "Target", "parse_args", "start_target", "finish", "proc", "run_sections"]
