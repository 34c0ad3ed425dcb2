"""A replication peer written in Python from SPEC.md alone, for tests that
need a node to misbehave or to be played exactly: the initiator side of
the handshake (2.2-3), commands with tags of its own, and answers to the
commands the real node sends meanwhile.

    p = PyPeer(node.repl_port, sid, secret)
    p.auth()
    lines = p.command("PING")       # every line up to the completion

While it waits for its own answer (command, pump), the peer answers what
the node sends it: PING with OK PONG, MM with OK (after handing the message
to on_mm, which may send MM messages of its own), and anything else with
NO [TRYLATER], so the node keeps the link and retries later.  Every wait is
bounded by the socket timeout.
"""
import hashlib
import hmac
import os
import socket
import struct
import time

from harness import proc

class PyPeer:
    """The initiator side of SPEC.md 2.2-3 over plain TCP, written from the
    SPEC alone: HELLO, then AUTH HMAC-SHA256 with a proof over both nonces
    and SIDs."""

    def __init__(self, port, sid, secret, timeout=10.0):
        self.sid = sid
        self.secret = secret
        self.sock = socket.create_connection((proc.LOOPBACK, port), timeout=timeout)
        self.timeout = timeout
        self.inbuf = bytearray()
        self.nonce = os.urandom(32)
        self.send("* HELLO 1.0 %d %s (AUTH=HMAC-SHA256)" % (sid, self.nonce.hex()))
        hello = self.readline().split()
        # Any 1.x: this peer speaks 1.0, so the node sends it nothing newer.
        if len(hello) < 6 or hello[:2] != ["*", "HELLO"] or not hello[2].startswith("1."):
            raise RuntimeError("bad greeting %r" % hello)
        self.peer_sid = int(hello[3])
        self.peer_nonce = bytes.fromhex(hello[4])
        self.tag = 1
        self.on_mm = None      # called as on_mm(peer, message) for each MM
        self.mm_seen = []
        # name -> handler(peer, tag, rest): answers a command of the node
        # (it must send the completion); unhandled ones get TRYLATER.
        self.handlers = {}
        self.epoch = 0
        self.mm_version = 0
        self.gens = {}
        self.mm_done = 0       # MM messages grant_masters() has looked at

    def proof(self, label, secret=None):
        msg = (b"STARLING-AUTH-1\x00" + label + b"\x00" + self.nonce + self.peer_nonce +
               struct.pack(">II", self.sid, self.peer_sid))
        return hmac.new(secret or self.secret, msg, hashlib.sha256).hexdigest()

    def send(self, line):
        self.sock.sendall(line.encode() + b"\r\n")

    def readline(self, timeout=None):
        """One line; socket.timeout after timeout s (default: the
        connection's), leaving what was read for the next call."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self.inbuf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no line within the timeout")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.inbuf += data
            if len(self.inbuf) > 1 << 20:
                raise RuntimeError("line longer than 1 MiB")
        i = self.inbuf.index(b"\n")
        line = bytes(self.inbuf[:i])
        del self.inbuf[:i + 1]
        return line.decode("utf-8", "replace").rstrip("\r")

    def auth(self, secret=None):
        """Sends AUTH; returns the completion line.  Checks the acceptor's
        proof when it is OK (raises if it is wrong)."""
        self.send("C1 AUTH HMAC-SHA256 %s" % self.proof(b"initiator", secret))
        reply = self.readline()
        if reply.startswith("C1 OK [AUTH "):
            theirs = reply.split()[3].rstrip("]")
            if not hmac.compare_digest(theirs, self.proof(b"acceptor", secret)):
                raise RuntimeError("acceptor proof wrong: %r" % reply)
        self.tag = 2
        return reply

    def command(self, text):
        """Sends "Cn text" and returns its lines up to the completion;
        commands from the node in between are answered (serve)."""
        tag = "C%d" % self.tag
        self.tag += 1
        self.send("%s %s" % (tag, text))
        lines = []
        while True:
            line = self.readline()
            if line.startswith(tag + " "):
                lines.append(line)
                if self._completes(line[len(tag) + 1:]):
                    return lines
            elif not self.serve(line):
                lines.append(line)

    @staticmethod
    def _completes(rest):
        return rest.split(" ", 1)[0] in ("OK", "NO", "BAD")

    def serve(self, line):
        """Answers a command the node sent; False for a line that is not
        one (an untagged line)."""
        parts = line.split(" ", 2)
        if len(parts) < 2 or parts[0] == "*":
            return False
        tag, name = parts[0], parts[1].upper()
        if name == "PING":
            self.send("%s OK PONG" % tag)
        elif name == "MM":
            self.send("%s OK" % tag)
            self.mm_seen.append(parts[2] if len(parts) > 2 else "")
            if self.on_mm is not None:
                self.on_mm(self, parts[2] if len(parts) > 2 else "")
        elif name in self.handlers:
            self.handlers[name](self, tag, parts[2] if len(parts) > 2 else "")
        else:
            self.send("%s NO [TRYLATER] a test peer" % tag)
        return True

    def pump(self, seconds):
        """Answers the node's commands for a while."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                line = self.readline(timeout=max(0.01, end - time.monotonic()))
            except socket.timeout:
                break
            self.serve(line)

    def mm(self, message):
        """Sends one MM message (SPEC 9.6); the node answers OK at once."""
        return self.command("MM " + message)

    def closed_within(self, timeout):
        """True if the node closes the connection within timeout s (lines
        sent before the close are skipped)."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.readline(timeout=deadline - time.monotonic())
        except EOFError:
            return True
        except socket.timeout:
            return False
        except OSError:
            return True  # a reset is a close too

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # -- playing the root of a component {self.sid, member} (SPEC 9.3-9.5) --
    def _epochs_seen(self):
        """The epochs in what the node sent."""
        out = []
        for msg in self.mm_seen:
            f = msg.split()
            if len(f) >= 4 and f[0] == "LINKS":
                out.append(int(f[3]))
            elif len(f) >= 5 and f[0] in ("STALE-EPOCH", "DROPPED", "MASTER-WHO"):
                out.append(int(f[4]))
        return out

    def play_root(self, member, timeout=10.0):
        """Links to member as its root: floods LINKS, mints epochs above the
        member's and announces them until it answers DROPPED.  True then."""
        deadline = time.monotonic() + timeout
        announced = 0.0
        while time.monotonic() < deadline:
            # Mint above any other epoch the member holds (its own
            # placeholder, or an older one of ours).
            others = [e for e in self._epochs_seen() if e != self.epoch]
            counter = max([e >> 32 for e in others] or [0])
            if self.epoch == 0 or counter >= self.epoch >> 32:
                self.epoch = ((counter + 1) << 32) | self.sid
                self.mm_version += 1
                self.mm("LINKS %d %d %d %d" % (self.sid, self.mm_version, self.epoch, member))
                announced = 0.0
            if any(m.split()[:2] == ["DROPPED", str(member)] and
                   m.split()[4] == str(self.epoch) for m in self.mm_seen
                   if len(m.split()) >= 5):
                return True
            if time.monotonic() - announced > 0.5:
                self.mm("ROOT-ANNOUNCE %d %d 32 %d" % (self.sid, member, self.epoch))
                announced = time.monotonic()
            self.pump(0.05)
        return False

    def grant_masters(self, master_of, seconds, until=None):
        """For a while (or until until() is true), answers MASTER-WHO as the
        root: master_of(key) names the master."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (until is not None and until()):
            while self.mm_done < len(self.mm_seen):
                f = self.mm_seen[self.mm_done].split()
                self.mm_done += 1
                if len(f) >= 6 and f[0] == "MASTER-WHO" and int(f[4]) == self.epoch:
                    key = f[5]
                    self.gens[key] = self.gens.get(key, 0) + 1
                    self.mm("MASTER-IS %d %s 32 %d %s %d %d" % (
                        self.sid, f[1], self.epoch, key, master_of(key), self.gens[key]))
            self.pump(0.05)


def completion(lines):
    """(status, code) of a completion line "Cn STATUS [CODE] text"."""
    f = lines[-1].split(" ", 2)
    rest = f[2] if len(f) > 2 else ""
    code = rest[1:rest.index("]")] if rest.startswith("[") and "]" in rest else ""
    return f[1], code


def command_retrying(p, text, timeout=20.0):
    """p.command(text), again while the node holds the mailbox for a
    resync with the peer (NO [TRYLATER] ... resync ...: a refused change
    makes the node resync the user with the peer now and then)."""
    deadline = time.monotonic() + timeout
    while True:
        r = p.command(text)
        if completion(r) != ("NO", "TRYLATER") or "resync" not in r[-1] or \
                time.monotonic() > deadline:
            return r
        p.pump(0.2)
