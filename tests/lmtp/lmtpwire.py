"""A small LMTP client for tests: raw bytes out, reply lines in, every read
bounded in time."""
import socket
import time


class LMTPError(Exception):
    pass


class Client:
    def __init__(self, addr, timeout=30.0):
        """addr: (host, port) or a UNIX socket path."""
        if isinstance(addr, str):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(addr)
        self.timeout = timeout
        self.pending = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def line(self):
        """One reply line without its CRLF; raises on EOF or timeout."""
        deadline = time.monotonic() + self.timeout
        while b"\r\n" not in self.pending:
            if time.monotonic() > deadline:
                raise LMTPError("timeout, have %r" % self.pending[:200])
            chunk = self.sock.recv(65536)
            if not chunk:
                raise LMTPError("connection closed, have %r" % self.pending[:200])
            self.pending += chunk
        ln, self.pending = self.pending.split(b"\r\n", 1)
        return ln.decode("utf-8", "replace")

    def reply(self):
        """A whole (possibly multi-line) reply: (code, [texts])."""
        texts = []
        while True:
            ln = self.line()
            texts.append(ln[4:])
            if len(ln) < 4 or ln[3] != "-":
                return int(ln[:3]), texts

    def cmd(self, text):
        self.send(text + "\r\n")
        return self.reply()

    def closed(self, timeout=5.0):
        """True when the server closes the connection within timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.pending += chunk
        except ConnectionResetError:
            # Closed with our input unread: the kernel answers with RST.
            return True
        except (socket.timeout, OSError):
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def dot_stuff(msg):
    """msg (bytes, CRLF lines) as DATA content with its terminator."""
    lines = msg.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
    return out + b".\r\n"
