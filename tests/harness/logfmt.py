"""Reading starlingd's log lines (logfmt, see lib/log.h):

    ts=2026-12-07T11:19:34.873Z level=info node=3 msg="peer 2: link up"

parse() gives the fields of one line as a dict, or None for a line that is
not a well-formed log line (the harness's own "--- start" marks, sanitizer
reports).  Quoted values are unescaped as lib/log.c escapes them: \\" \\\\ \\n
\\r \\t, \\uXXXX, and \\xHH for a byte that was not UTF-8 (kept as a
surrogate escape, so nothing is lost)."""

_SIMPLE = {'"': b'"', "\\": b"\\", "n": b"\n", "r": b"\r", "t": b"\t"}


def _key(line, i):
    j = i
    while j < len(line) and ("a" <= line[j] <= "z" or line[j] == "_"):
        j += 1
    if j == i or j >= len(line) or line[j] != "=":
        return None, i
    return line[i:j], j + 1


def _quoted(line, i):
    """(value, index after the closing quote) or (None, i)."""
    out = bytearray()
    i += 1
    while i < len(line):
        c = line[i]
        if c == '"':
            return out.decode("utf-8", "surrogateescape"), i + 1
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        e = line[i + 1:i + 2]
        if e in _SIMPLE:
            out += _SIMPLE[e]
            i += 2
        elif e == "x" and len(line) >= i + 4:
            try:
                out.append(int(line[i + 2:i + 4], 16))
            except ValueError:
                return None, i
            i += 4
        elif e == "u" and len(line) >= i + 6:
            try:
                out += chr(int(line[i + 2:i + 6], 16)).encode("utf-8", "surrogatepass")
            except ValueError:
                return None, i
            i += 6
        else:
            return None, i
    return None, i


def parse(line):
    """The fields of one log line (without its newline) as a dict, or None."""
    line = line.rstrip("\n")
    fields = {}
    i = 0
    while i < len(line):
        key, i = _key(line, i)
        if key is None:
            return None
        if line[i:i + 1] == '"':
            value, i = _quoted(line, i)
            if value is None:
                return None
        else:
            j = line.find(" ", i)
            j = len(line) if j < 0 else j
            value, i = line[i:j], j
        fields[key] = value
        if i < len(line):
            if line[i] != " " or i + 1 == len(line):
                return None
            i += 1
    if "ts" not in fields or "level" not in fields or "msg" not in fields:
        return None
    return fields


def events(text):
    """The parsed log lines of text, in order (other lines left out)."""
    out = []
    for line in text.splitlines():
        f = parse(line)
        if f is not None:
            out.append(f)
    return out


def messages(text):
    """The msg field of every log line of text, with err appended as
    "msg: err" when there is one (how the old format read)."""
    return [e["msg"] + (": " + e["err"] if "err" in e else "") for e in events(text)]
