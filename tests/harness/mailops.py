"""Small steps the cluster tests share: one user's mail on a node (a test
message, a client logged in with INBOX selected, an APPEND and its UID) and
what a node says of itself (alone and serving, `master show`).

Each raises or answers plainly; the checks stay in the tests."""
import re

from harness import imapwire


def message(subject, size=0):
    """A small message whose Subject and Message-ID are subject; with size,
    a body of about that many bytes."""
    body = ("x" * 76 + "\r\n") * (size // 78) if size else "body\r\n"
    return ("From: t@example.com\r\nSubject: %s\r\nMessage-ID: <%s@test>\r\n\r\n%s"
            % (subject, subject, body)).encode()


def client(node, user, password, timeout=60, mailbox="INBOX"):
    """An imapwire.Client of node, logged in as user, mailbox selected;
    raises RuntimeError if either is refused."""
    c = imapwire.Client(node.host, node.imap_port, timeout=timeout)
    r = c.login(user, password)
    if r.status != "OK":
        c.close()
        raise RuntimeError("login on node %d: %r" % (node.node_id, r))
    r = c.command("SELECT " + mailbox)
    if r.status != "OK":
        c.close()
        raise RuntimeError("SELECT on node %d: %r" % (node.node_id, r))
    return c


def append(c, subject, mailbox="INBOX"):
    """APPEND of message(subject) on imapwire.Client c: (response, the
    APPENDUID's UID or None)."""
    r = c.command("APPEND " + mailbox, imapwire.Literal(message(subject)))
    mm = re.search(rb"APPENDUID \d+ (\d+)", r.line)
    return r, int(mm.group(1)) if mm else None


def alone_and_serving(node):
    """Node is root of a component of itself alone, and serving (False while
    it does not answer)."""
    try:
        st = node.status(timeout=10)
    except Exception:  # noqa: BLE001 -- not answering yet
        return False
    return str(st.get("root")) == str(node.node_id) and st.get("root_serving") == "yes"


def master_show(node, user, mailbox=None, timeout=30):
    """`master show` of user's mailbox (INBOX by default) on node, as a
    dict of its "key: value" lines (empty if the command printed none)."""
    args = ["master", "show", "-u", user] + (["-m", mailbox] if mailbox else [])
    r = node.cli(*args, timeout=timeout)
    out = {}
    for line in r.stdout.decode().splitlines():
        k, sep, v = line.partition(": ")
        if sep:
            out[k] = v
    return out


def heal_and_check(c, report, user, timeout=60):
    """Restores every link of cluster c and checks on report that its nodes
    agree on user's mail (identical dumps) within timeout seconds."""
    c.mesh.restore_all()
    c.wait_links_up(timeout=40)
    n = len(c.nodes)
    what = "the %s nodes agree within %d s of the heal" % (
        {2: "two", 3: "three"}.get(n, str(n)), timeout)
    try:
        c.wait_dumps_equal(user, timeout=timeout)
        report.check(what, True)
    except TimeoutError as e:
        report.check(what, False, str(e))
