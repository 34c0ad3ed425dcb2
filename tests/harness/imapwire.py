"""A small IMAP client that shows tests the exact wire responses.

imaplib hides too much (it merges responses, drops ordering, can't send
malformed input), so the end-to-end tests talk through this instead:

    c = Client(host, port)
    r = c.command("SELECT INBOX")        # -> Response
    r.status, r.code, r.text             # "OK", "READ-WRITE", ...
    r.untagged                           # [b"* 3 EXISTS", ...] with literals inline
    r.fetches()                          # {seq: {"FLAGS": [...], "UID": 7, ...}}
    c.command("APPEND INBOX", Literal(msg))

parse(data) turns a response line (with its literals) into nested Python
lists of bytes atoms, bytes strings (Str), None for NIL and Lit for literals.
Every read is bounded by the socket timeout.
"""
import base64
import socket
import ssl


class Str(bytes):
    """A quoted string or literal from the wire (an atom is plain bytes)."""


class Literal:
    """A literal argument to send; plus=True uses LITERAL+ ({n+})."""

    def __init__(self, data, plus=False):
        self.data = data if isinstance(data, bytes) else data.encode()
        self.plus = plus


class ProtocolError(Exception):
    pass


class Refused(Exception):
    """The server answered a command with its tagged response while we
    waited for a literal's continuation (e.g. NO [TRYCREATE] on APPEND)."""

    def __init__(self, line):
        Exception.__init__(self, line)
        self.line = line


def quote(s):
    if isinstance(s, bytes):
        s = s.decode()
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------- parsing
ATOM_STOP = b" ()\r\n\"{"


def parse(data):
    """Parse the tokens of one response (after '* ' or the tag)."""
    toks, pos = _parse_list(data, 0, None)
    return toks


def _parse_list(data, pos, closer):
    out = []
    n = len(data)
    while pos < n:
        c = data[pos:pos + 1]
        if c == b" ":
            pos += 1
        elif c == b"(":
            sub, pos = _parse_list(data, pos + 1, b")")
            out.append(sub)
        elif c == b")":
            if closer != b")":
                raise ProtocolError("unbalanced ')' at %d" % pos)
            return out, pos + 1
        elif c == b'"':
            buf = bytearray()
            pos += 1
            while True:
                if pos >= n:
                    raise ProtocolError("unterminated quoted string")
                ch = data[pos:pos + 1]
                if ch == b"\\":
                    buf += data[pos + 1:pos + 2]
                    pos += 2
                elif ch == b'"':
                    pos += 1
                    break
                else:
                    buf += ch
                    pos += 1
            out.append(Str(bytes(buf)))
        elif c == b"~" and data[pos + 1:pos + 2] == b"{":
            pos += 1  # a literal8 (RFC 3516): read as a literal
        elif c == b"{":
            end = data.index(b"}", pos)
            size = int(data[pos + 1:end].rstrip(b"+"))
            start = end + 3  # "}\r\n"
            out.append(Str(data[start:start + size]))
            pos = start + size
        elif c in (b"\r", b"\n"):
            pos += 1
        else:
            start = pos
            depth = 0
            while pos < n:
                ch = data[pos:pos + 1]
                if ch == b"[":
                    depth += 1
                elif ch == b"]":
                    depth -= 1
                elif depth == 0 and ch in (b" ", b"(", b")", b"\r", b"\n"):
                    if ch == b"(" and pos > start:
                        break
                    break
                pos += 1
            atom = data[start:pos]
            out.append(None if atom.upper() == b"NIL" else atom)
    if closer is not None:
        raise ProtocolError("missing ')'")
    return out, pos


def fetch_items(tokens):
    """The item list of a FETCH response as {NAME: value}; names upper-cased
    (section text kept as sent, e.g. 'BODY[HEADER.FIELDS (SUBJECT)]')."""
    items = {}
    for i in range(0, len(tokens) - 1, 2):
        name = tokens[i].decode().upper() if isinstance(tokens[i], bytes) else str(tokens[i])
        val = tokens[i + 1]
        if name in ("UID", "RFC822.SIZE"):
            val = int(val)
        items[name] = val
    return items


def expand_set(s):
    """'1:3,7' -> [1, 2, 3, 7] (no '*')."""
    if isinstance(s, bytes):
        s = s.decode()
    out = []
    for part in s.split(","):
        if ":" in part:
            a, b = part.split(":")
            a, b = int(a), int(b)
            if a > b:
                a, b = b, a
            if b - a > 1000000:
                raise ProtocolError("set too large: %s" % part)
            out.extend(range(a, b + 1))
        else:
            out.append(int(part))
    return out


# ---------------------------------------------------------------- responses
class Response:
    def __init__(self, tag, status, line, untagged, continuations):
        self.tag = tag
        self.status = status          # "OK", "NO", "BAD" (or "BYE"/"CLOSED")
        self.line = line              # the whole tagged line (bytes)
        self.untagged = untagged      # list of bytes, literals inline
        self.continuations = continuations
        rest = line.split(b" ", 2)[2] if line.count(b" ") >= 2 else b""
        self.code = None
        self.code_args = None
        if rest.startswith(b"["):
            end = rest.find(b"]")
            code = rest[1:end]
            self.code = code.split(b" ", 1)[0].decode().upper()
            self.code_args = code.split(b" ", 1)[1] if b" " in code else b""
            rest = rest[end + 1:].lstrip()
        self.text = rest.decode("utf-8", "replace")

    @property
    def ok(self):
        return self.status == "OK"

    def __repr__(self):
        return "<%s %r untagged=%d>" % (self.status, self.line[:200], len(self.untagged))

    def find(self, keyword):
        """Untagged responses whose first word (after '* ') or second word
        (after a number) is keyword, as parsed token lists."""
        out = []
        kw = keyword.upper().encode()
        for u in self.untagged:
            toks = parse(u[2:])
            if not toks:
                continue
            if isinstance(toks[0], bytes) and toks[0].upper() == kw:
                out.append(toks)
            elif len(toks) > 1 and isinstance(toks[1], bytes) and toks[1].upper() == kw:
                out.append(toks)
        return out

    def codes(self):
        """Response codes of untagged OK/NO/BAD: {CODE: args bytes}."""
        out = {}
        for u in self.untagged:
            for st in (b"* OK [", b"* NO [", b"* BAD ["):
                if u.upper().startswith(st):
                    end = u.find(b"]")
                    code = u[len(st):end]
                    name = code.split(b" ", 1)[0].decode().upper()
                    out[name] = code.split(b" ", 1)[1] if b" " in code else b""
        return out

    def number(self, keyword):
        """n of '* n KEYWORD' (EXISTS, RECENT); the last one, or None."""
        n = None
        for toks in self.find(keyword):
            if isinstance(toks[0], bytes) and toks[0].isdigit():
                n = int(toks[0])
        return n

    def fetches(self):
        """[(seq, {ITEM: value})] in arrival order."""
        out = []
        for toks in self.find("FETCH"):
            if toks[0].isdigit() and len(toks) >= 3 and isinstance(toks[2], list):
                out.append((int(toks[0]), fetch_items(toks[2])))
        return out

    def search(self):
        """Numbers of '* SEARCH' and the MODSEQ of '(MODSEQ n)' if any."""
        nums, modseq = [], None
        for toks in self.find("SEARCH"):
            for t in toks[1:]:
                if isinstance(t, list):
                    if len(t) == 2 and t[0].upper() == b"MODSEQ":
                        modseq = int(t[1])
                else:
                    nums.append(int(t))
        return nums, modseq

    def expunges(self):
        return [int(t[0]) for t in self.find("EXPUNGE")]

    def vanished(self):
        """(earlier, [uids]) pairs of VANISHED responses."""
        out = []
        for toks in self.find("VANISHED"):
            earlier = len(toks) > 2 and isinstance(toks[1], list)
            out.append((earlier, expand_set(toks[-1])))
        return out


# ---------------------------------------------------------------- client
class Client:
    def __init__(self, host, port, timeout=20.0, tls_context=None, server_hostname=None):
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if tls_context is not None:
            self.sock = tls_context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.timeout = timeout
        self.buf = b""
        self.tagnum = 0
        self.closed = False
        self.greeting = self.read_response()

    # -- low level ---------------------------------------------------------
    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            chunk = b""
        if not chunk:
            self.closed = True
            raise EOFError("server closed the connection")
        self.buf += chunk

    def read_line(self):
        while b"\r\n" not in self.buf:
            if len(self.buf) > 64 * 1024 * 1024:
                raise ProtocolError("response line too long")
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_response(self):
        """One full response: a line and its literals, CRLFs kept inside."""
        line = self.read_line()
        out = line
        while line.endswith(b"}") and b"{" in line:
            size = int(line[line.rindex(b"{") + 1:-1].rstrip(b"+"))
            out += b"\r\n" + self.read_exact(size)
            line = self.read_line()
            out += line
        return out

    def next_tag(self):
        self.tagnum += 1
        return "t%d" % self.tagnum

    # -- commands ---------------------------------------------------------
    def command(self, *parts, tag=None):
        """Send one command: str parts are joined by spaces, Literal parts are
        sent as literals (waiting for '+' unless LITERAL+).  Returns the
        Response with every untagged response before the tagged one."""
        tag = tag or self.next_tag()
        try:
            self.send_command(tag, parts)
        except Refused as e:
            untagged = list(getattr(self, "pre_untagged", []))
            self.pre_untagged = []
            status = e.line[len(tag) + 1:].split(b" ", 1)[0].decode().upper()
            return Response(tag, status, e.line, untagged, [])
        return self.wait_tagged(tag)

    def send_command(self, tag, parts):
        pending = tag.encode()
        for p in parts:
            if isinstance(p, Literal):
                pending += b" {%d%s}\r\n" % (len(p.data), b"+" if p.plus else b"")
                self.send(pending)
                if not p.plus:
                    self._wait_continuation(tag)
                pending = p.data
            else:
                pending += b" " + (p.encode() if isinstance(p, str) else p)
        self.send(pending + b"\r\n")

    def _wait_continuation(self, tag):
        self.pre_untagged = getattr(self, "pre_untagged", [])
        while True:
            r = self.read_response()
            if r.startswith(b"+"):
                return
            if r.startswith(tag.encode() + b" "):
                raise Refused(r)
            self.pre_untagged.append(r)

    def wait_tagged(self, tag):
        untagged = list(getattr(self, "pre_untagged", []))
        self.pre_untagged = []
        conts = []
        t = tag.encode() + b" "
        while True:
            try:
                r = self.read_response()
            except EOFError:
                return Response(tag, "CLOSED", t + b"CLOSED connection closed",
                                untagged, conts)
            if r.startswith(t):
                status = r[len(t):].split(b" ", 1)[0].decode().upper()
                return Response(tag, status, r, untagged, conts)
            if r.startswith(b"+"):
                conts.append(r)
            else:
                untagged.append(r)

    def login(self, user, password):
        return self.command("LOGIN", quote(user), quote(password))

    def authenticate_plain(self, user, password, authzid=""):
        tag = self.next_tag()
        self.send("%s AUTHENTICATE PLAIN\r\n" % tag)
        r = self.read_response()
        if not r.startswith(b"+"):
            self.buf = r + b"\r\n" + self.buf
            return self.wait_tagged(tag)
        blob = ("%s\0%s\0%s" % (authzid, user, password)).encode()
        self.send(base64.b64encode(blob) + b"\r\n")
        return self.wait_tagged(tag)

    def starttls(self, context, server_hostname="localhost"):
        r = self.command("STARTTLS")
        if r.ok:
            self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
            self.buf = b""
        return r

    def logout(self):
        try:
            r = self.command("LOGOUT")
        except (OSError, EOFError, ProtocolError):
            r = None
        self.close()
        return r

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True

    def read_untagged_until(self, pred, timeout):
        """Read untagged responses (e.g. during IDLE) until pred(list of
        responses) is true or timeout; returns the list."""
        got = []
        old = self.sock.gettimeout()
        import time
        deadline = time.monotonic() + timeout
        try:
            while not pred(got):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.sock.settimeout(left)
                try:
                    got.append(self.read_response())
                except (socket.timeout, EOFError):
                    break
        finally:
            self.sock.settimeout(old)
        return got
