"""Runs one schedule against real starlingd nodes and records the history:
what every client sent and was told, with timestamps.

Actors are threads: one per IMAP session (a client that sticks to one node
and reconnects when the node comes back), one for admin commands (`starling
deliver`, bundle export/import, resync) and one for faults.  Each waits for
its operations' planned times; one that is behind (a command blocked by a
paused node) goes on in order, so the order of every actor's operations is
the schedule's.
"""
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from harness.imapwire import Client, Literal, ProtocolError, parse, expand_set
from harness import logfmt, proc
from harness.starling import Cluster

from schedule import MAILBOXES, COPIES

USER = "chaos"
PASSWORD = "chaos-pw"
IMAP_TIMEOUT = 30.0       # one command; a paused node is resumed within 7 s
CLI_TIMEOUT = 60.0
FETCH_ITEMS = "(UID FLAGS MODSEQ BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"
HDR_KEY = "BODY[HEADER.FIELDS (MESSAGE-ID)]"


def message_id_of(header_bytes):
    for line in bytes(header_bytes).split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode("ascii", "replace")
    return None


def make_message(msgid, size, subject):
    head = ("Message-ID: %s\r\nFrom: chaos@example.com\r\nTo: chaos@example.com\r\n"
            "Subject: %s\r\nDate: Mon, 7 Dec 2026 00:00:00 +0000\r\n\r\n" % (msgid, subject))
    body = ("%s filler line for size\r\n" % msgid) * max(1, size // 40)
    return (head + body).encode()


class History:
    """Events in the order they ended, each with t0 (sent) and t1 (answer),
    seconds since the schedule began (time.monotonic based)."""

    def __init__(self, t0):
        self.t0 = t0
        self.events = []
        self._lock = threading.Lock()

    def now(self):
        return time.monotonic() - self.t0

    def add(self, ev):
        with self._lock:
            ev["seq"] = len(self.events)
            self.events.append(ev)
        return ev


def parse_untagged(lines):
    """The parts of untagged responses the checker needs."""
    out = {"fetch": [], "vanished": [], "highestmodseq": [], "uidvalidity": None,
           "copyuid": None, "exists": None}
    for raw in lines:
        try:
            toks = parse(raw[2:])
        except (ProtocolError, ValueError, IndexError):
            continue
        if not toks:
            continue
        w0 = toks[0].upper() if isinstance(toks[0], bytes) else None
        w1 = toks[1].upper() if len(toks) > 1 and isinstance(toks[1], bytes) else None
        if w1 == b"FETCH" and len(toks) >= 3 and isinstance(toks[2], list):
            items = {}
            lst = toks[2]
            for i in range(0, len(lst) - 1, 2):
                name = lst[i].decode().upper() if isinstance(lst[i], bytes) else ""
                items[name] = lst[i + 1]
            if "UID" not in items:
                continue
            f = {"uid": int(items["UID"])}
            if "FLAGS" in items:
                # \Recent is the session's own (RFC 3501 2.3.2), never
                # stored or replicated: no invariant looks at it.
                f["flags"] = sorted(x.decode() for x in items["FLAGS"]
                                    if x.decode().lower() != "\\recent")
            if "MODSEQ" in items:
                f["modseq"] = int(items["MODSEQ"][0])
            if HDR_KEY in items:
                f["msgid"] = message_id_of(items[HDR_KEY])
            out["fetch"].append(f)
        elif w0 == b"VANISHED":
            earlier = len(toks) > 2 and isinstance(toks[1], list)
            try:
                out["vanished"].append((earlier, expand_set(toks[-1])))
            except (ProtocolError, ValueError):
                pass
        elif w1 == b"EXISTS":
            out["exists"] = int(toks[0])
        elif w0 == b"OK" and len(toks) > 1 and isinstance(toks[1], bytes) \
                and toks[1].startswith(b"["):
            code = raw[raw.find(b"[") + 1:raw.find(b"]")].split()
            name = code[0].upper() if code else b""
            if name == b"HIGHESTMODSEQ" and len(code) > 1:
                out["highestmodseq"].append(int(code[1]))
            elif name == b"UIDVALIDITY" and len(code) > 1:
                out["uidvalidity"] = int(code[1])
            elif name == b"COPYUID" and len(code) > 3:
                out["copyuid"] = (int(code[1]), code[2].decode(), code[3].decode())
    return out


def tagged_code(line):
    """(CODE, args) of the tagged line's response code, or (None, None)."""
    parts = line.split(b" ", 2)
    if len(parts) < 3 or not parts[2].startswith(b"["):
        return None, None
    code = parts[2][1:parts[2].find(b"]")].split(b" ", 1)
    return code[0].upper().decode(), (code[1].decode() if len(code) > 1 else "")


class Session(threading.Thread):
    """One IMAP client sticking to one node."""

    def __init__(self, runner, spec):
        threading.Thread.__init__(self, name="session%d" % spec["id"], daemon=True)
        self.runner = runner
        self.sid = spec["id"]
        self.node = runner.cluster.nodes[spec["node"] - 1]
        self.ops = spec["ops"]
        self.client = None
        self.conn = 0
        self.selected = None
        self.uidvalidity = None
        self.view = {}          # uid -> message-id, of the selected mailbox
        self.executed = 0

    # -- recording ---------------------------------------------------------
    def record(self, opno, op, cmd, t0, resp=None, status=None, extra=None):
        ev = {"actor": "s%d" % self.sid, "node": self.node.node_id, "conn": self.conn,
              "op": opno, "kind": op["kind"] if op else "connect", "cmd": cmd,
              "mailbox": self.selected, "uidvalidity": self.uidvalidity,
              "t0": t0, "t1": self.runner.history.now()}
        if resp is not None:
            ev["status"] = resp.status
            ev["line"] = resp.line.decode("utf-8", "replace")
            ev["untagged"] = [u.decode("utf-8", "replace")[:300] for u in resp.untagged
                              if not u.startswith(b"* FLAGS") and b"PERMANENTFLAGS" not in u]
            ev.update(parse_untagged(resp.untagged))
            code, args = tagged_code(resp.line)
            ev["code"], ev["code_args"] = code, args
        else:
            ev["status"] = status
        if extra:
            ev.update(extra)
        self.runner.history.add(ev)
        # Keep the view of the selected mailbox (uid -> message-id) current.
        if resp is not None:
            for f in ev["fetch"]:
                if f.get("msgid"):
                    self.view[f["uid"]] = f["msgid"]
            for _earlier, uids in ev["vanished"]:
                for u in uids:
                    self.view.pop(u, None)
        return ev

    # -- connection --------------------------------------------------------
    def drop(self):
        if self.client is not None:
            self.client.close()
        self.client = None
        self.selected = None
        self.uidvalidity = None
        self.view = {}

    def connect(self):
        """Log in and select INBOX; False when the node does not answer."""
        t0 = self.runner.history.now()
        try:
            self.client = Client(self.node.host, self.node.imap_port, timeout=IMAP_TIMEOUT)
            self.conn += 1
            r = self.client.login(USER, PASSWORD)
            if not r.ok:
                raise ProtocolError("LOGIN: %r" % r.line)
            r = self.client.command("ENABLE QRESYNC")
            if not r.ok:
                raise ProtocolError("ENABLE: %r" % r.line)
            return self.select("INBOX", None, 0)
        except (OSError, EOFError, ProtocolError) as e:
            self.record(None, None, "connect", t0, status="ERROR", extra={"error": str(e)})
            self.drop()
            return False

    def select(self, mailbox, op, opno):
        t0 = self.runner.history.now()
        r = self.client.command("SELECT", mailbox)
        self.selected = mailbox if r.ok else None
        self.view = {}
        ev = self.record(opno, op or {"kind": "select"}, "SELECT " + mailbox, t0, r)
        ev["mailbox"] = mailbox
        self.uidvalidity = ev["uidvalidity"] if r.ok else None
        ev["uidvalidity"] = self.uidvalidity
        if r.ok:
            self.fetch_all(op, opno)
        return r.ok

    def fetch_all(self, op, opno):
        t0 = self.runner.history.now()
        r = self.client.command("UID FETCH 1:* " + FETCH_ITEMS)
        self.view = {}
        return self.record(opno, op or {"kind": "fetch"}, "UID FETCH 1:*", t0, r)

    # -- the loop ----------------------------------------------------------
    def run(self):
        try:
            self._run()
        except Exception as e:  # noqa: BLE001 -- a harness bug must show
            self.runner.errors.append("session %d: %s: %s" % (self.sid, type(e).__name__, e))
            import traceback
            traceback.print_exc()
        finally:
            self.drop()

    def _run(self):
        r = self.runner
        for opno, op in enumerate(self.ops):
            if not r.wait_until(op["t"]):
                return
            if self.client is None or self.client.closed:
                self.drop()
                if not self.node.running() or not self.connect():
                    continue   # node down: this operation is not sent
            try:
                if self.selected is None and not self.select("INBOX", None, opno):
                    self.drop()
                    continue
                self.execute(opno, op)
                self.executed += 1
            except (OSError, EOFError, socket.timeout, ProtocolError) as e:
                # The connection broke mid-command: the command's outcome
                # is unknown (recorded as such by execute), reconnect later.
                self.runner.history.add({
                    "actor": "s%d" % self.sid, "node": self.node.node_id, "conn": self.conn,
                    "op": opno, "kind": "broken", "status": "BROKEN",
                    "error": "%s: %s" % (type(e).__name__, e),
                    "t0": self.runner.history.now(), "t1": self.runner.history.now()})
                self.drop()

    def pick(self, k, count=1):
        uids = sorted(self.view)
        if not uids:
            return []
        return [uids[(k + i * 7919) % len(uids)] for i in range(min(count, len(uids)))]

    def run_cmd(self, opno, op, cmd, *parts, extra=None):
        """Send one command and record it; a broken connection is recorded
        as an unknown outcome and re-raised."""
        t0 = self.runner.history.now()
        try:
            resp = self.client.command(*parts)
        except (OSError, EOFError, socket.timeout, ProtocolError) as e:
            self.record(opno, op, cmd, t0, status="BROKEN",
                        extra=dict(extra or {}, error="%s: %s" % (type(e).__name__, e)))
            raise
        ev = self.record(opno, op, cmd, t0, resp, extra=extra)
        if resp.status == "CLOSED":
            raise EOFError("connection closed by the server")
        return ev

    def execute(self, opno, op):
        kind = op["kind"]
        c = self.client
        if kind == "append":
            msgid = "<c%d.s%d.%d@chaos>" % (self.runner.seed, self.sid, opno)
            msg = make_message(msgid, op["size"], "s%d op %d" % (self.sid, opno))
            flags = " ".join(op["flags"])
            ev = self.run_cmd(opno, op, "APPEND %s (%s) %s" % (op["mailbox"], flags, msgid),
                              "APPEND", op["mailbox"], "(%s)" % flags, Literal(msg),
                              extra={"msgid": msgid, "target_mailbox": op["mailbox"],
                                     "flags": op["flags"]})
            if ev["status"] == "OK" and ev["code"] == "APPENDUID" \
                    and op["mailbox"] == self.selected:
                uv, uid = (int(x) for x in ev["code_args"].split())
                if uv == self.uidvalidity:
                    self.view[uid] = msgid
        elif kind == "store":
            uids = self.pick(op["k"], op["count"])
            if not uids:
                return
            targets = {u: self.view[u] for u in uids}
            mod = ""
            if op["unchangedsince"]:
                # The last modseq this session saw for the first target (or
                # 1, a sure conflict when it never saw one).
                mod = " (UNCHANGEDSINCE %d)" % self.last_modseq(uids[0])
            uidset = ",".join(str(u) for u in uids)
            cmd = "UID STORE %s%s %sFLAGS (%s)" % (uidset, mod, op["sign"], " ".join(op["flags"]))
            self.run_cmd(opno, op, cmd, cmd,
                         extra={"targets": targets, "sign": op["sign"], "flags": op["flags"]})
        elif kind == "expunge":
            uids = self.pick(op["k"])
            if not uids:
                return
            u = uids[0]
            targets = {u: self.view[u]}
            ev = self.run_cmd(opno, op, "UID STORE %d +FLAGS.SILENT (\\Deleted)" % u,
                              "UID STORE %d +FLAGS.SILENT (\\Deleted)" % u,
                              extra={"targets": targets, "deleted_mark": True})
            if ev["status"] != "OK":
                return
            cmd = "EXPUNGE" if op["plain"] else "UID EXPUNGE %d" % u
            self.run_cmd(opno, op, cmd, cmd, extra={"targets": targets})
        elif kind in ("copy", "move"):
            uids = self.pick(op["k"])
            if not uids:
                return
            u = uids[0]
            cmd = "UID %s %d %s" % (kind.upper(), u, COPIES)
            self.run_cmd(opno, op, cmd, cmd, extra={"targets": {u: self.view[u]}})
        elif kind == "fetch":
            self.fetch_all(op, opno)
        elif kind == "select":
            if not self.select(op["mailbox"], op, opno):
                raise ProtocolError("SELECT %s refused" % op["mailbox"])
        elif kind == "snapshot":
            # A QRESYNC client's cache: the state of the mailbox as this
            # client was shown it, checked after the heal.
            if self.selected != op["mailbox"]:
                if not self.select(op["mailbox"], op, opno):
                    raise ProtocolError("SELECT %s refused" % op["mailbox"])
            ev = self.fetch_all(op, opno)
            hms = [e for e in self.runner.history.events
                   if e.get("actor") == "s%d" % self.sid and e.get("conn") == self.conn
                   and e.get("mailbox") == self.selected and e.get("highestmodseq")]
            if ev["status"] == "OK" and hms:
                # HIGHESTMODSEQ from the SELECT of this connection: the
                # cache is valid up to it (later changes come as FETCH/VANISHED
                # with higher modseqs, and were folded into the view above).
                cache = {}
                for f in ev["fetch"]:
                    if "flags" in f:
                        cache[f["uid"]] = f["flags"]
                self.runner.snapshots.append({
                    "session": self.sid, "node": self.node.node_id,
                    "mailbox": self.selected, "uidvalidity": self.uidvalidity,
                    "modseq": min(hms[-1]["highestmodseq"]), "cache": cache,
                    "t": ev["t1"], "seq": ev["seq"]})
        elif kind == "mbox":
            cmd = op["cmd"]
            text = "%s %s" % (cmd, op["name"]) + (" " + op["new"] if "new" in op else "")
            self.run_cmd(opno, op, text, text, extra={"mbox_cmd": cmd, "name": op["name"],
                                                       "new": op.get("new")})
        else:
            raise ValueError("unknown operation %r" % kind)

    def last_modseq(self, uid):
        for ev in reversed(self.runner.history.events):
            if ev.get("actor") != "s%d" % self.sid or ev.get("conn") != self.conn:
                continue
            for f in ev.get("fetch", ()):
                if f["uid"] == uid and "modseq" in f:
                    return f["modseq"]
        return 1


class Admin(threading.Thread):
    """`starling deliver`, bundle export/import and resync at planned times."""

    def __init__(self, runner, ops):
        threading.Thread.__init__(self, name="admin", daemon=True)
        self.runner = runner
        self.ops = ops
        self.executed = 0

    def run(self):
        try:
            for opno, op in enumerate(self.ops):
                if not self.runner.wait_until(op["t"]):
                    return
                self.execute(opno, op)
        except Exception as e:  # noqa: BLE001
            self.runner.errors.append("admin: %s: %s" % (type(e).__name__, e))
            import traceback
            traceback.print_exc()

    def cli(self, node, *args, input=None):
        try:
            r = node.cli(*args, input=input, timeout=CLI_TIMEOUT)
            return r.returncode, r.stderr.decode("utf-8", "replace").strip()[:300], \
                r.stdout.decode("utf-8", "replace")
        except subprocess.TimeoutExpired:
            return "timeout", "", ""

    def execute(self, opno, op):
        h = self.runner.history
        node = self.runner.cluster.nodes[op["node"] - 1]
        if not node.running():
            return
        self.executed += 1
        t0 = h.now()
        ev = {"actor": "admin", "node": op["node"], "op": opno, "kind": op["kind"], "t0": t0}
        if op["kind"] == "deliver":
            msgid = "<c%d.a.%d@chaos>" % (self.runner.seed, opno)
            msg = make_message(msgid, op["size"], "deliver %d" % opno)
            rc, err, _ = self.cli(node, "deliver", "-u", USER, "-m", op["mailbox"], input=msg)
            ev.update(cmd="deliver -m %s %s" % (op["mailbox"], msgid), msgid=msgid,
                      target_mailbox=op["mailbox"], flags=[])
        elif op["kind"] == "bundle":
            dst = self.runner.cluster.nodes[op["to"] - 1]
            path = os.path.join(self.runner.cluster.dir, "b%d.bundle" % opno)
            rc, err, _ = self.cli(node, "bundle", "export", "-u", USER, "-o", path)
            ev.update(cmd="bundle export on %d, import on %d" % (op["node"], op["to"]))
            if rc == 0:
                if dst.running():
                    rc, err, _ = self.cli(dst, "bundle", "import", path)
                else:
                    rc, err = "not-imported", "destination down"
        else:
            rc, err, out = self.cli(node, "resync", "-u", USER)
            ev.update(cmd="resync -u %s" % USER)
        ev.update(t1=h.now(), status="OK" if rc == 0 else "FAILED", rc=rc, error=err)
        h.add(ev)


class Faults(threading.Thread):
    """Injects and heals the planned faults."""

    def __init__(self, runner, events):
        threading.Thread.__init__(self, name="faults", daemon=True)
        self.runner = runner
        plan = []
        for ev in events:
            plan.append((ev["t"], 0, "inject", ev))
            plan.append((ev["heal"], 1, "heal", ev))
        self.plan = sorted(plan, key=lambda x: (x[0], x[1]))
        self.injected = 0

    def run(self):
        try:
            for t, _order, action, ev in self.plan:
                if not self.runner.wait_until(t, hard=True):
                    return
                getattr(self, action)(ev)
        except Exception as e:  # noqa: BLE001
            self.runner.errors.append("faults: %s: %s" % (type(e).__name__, e))
            import traceback
            traceback.print_exc()

    def log(self, action, ev, note=""):
        h = self.runner.history
        where = ("node %d" % ev["node"]) if "node" in ev else "link %d-%d" % (ev["a"], ev["b"])
        h.add({"actor": "fault", "kind": ev["kind"], "action": action, "where": where,
               "t0": h.now(), "t1": h.now(), "note": note, "status": "OK"})

    def inject(self, ev):
        c = self.runner.cluster
        k = ev["kind"]
        self.injected += 1
        if k == "kill":
            with self.runner.node_lock:
                self.runner.killed.add(ev["node"])
                c.nodes[ev["node"] - 1].kill()
        elif k == "pause":
            node = c.nodes[ev["node"] - 1]
            if node.running():
                node.pause()
                self.runner.paused.add(ev["node"])
        elif k == "partition":
            c.mesh.isolate(ev["node"], "cut")
        elif k == "partial":
            c.mesh.cut(ev["a"], ev["b"])
        elif k == "blackhole":
            c.mesh.blackhole(ev["a"], ev["b"])
        elif k == "oneway":
            c.mesh.hold(ev["a"], ev["b"])
        elif k == "latency":
            c.mesh.set_latency(ev["a"], ev["b"], ev["delay"])
        elif k == "diskfull":
            self.runner.fill_disk(ev["node"])
        self.log("inject", ev)

    def heal(self, ev):
        c = self.runner.cluster
        k = ev["kind"]
        note = ""
        if k == "kill":
            note = self.runner.start_node(ev["node"])
        elif k == "pause":
            if ev["node"] in self.runner.paused:
                c.nodes[ev["node"] - 1].resume()
                self.runner.paused.discard(ev["node"])
        elif k == "partition":
            for other in c.nodes:
                if other.node_id != ev["node"]:
                    c.mesh.restore(ev["node"], other.node_id)
        elif k in ("partial", "blackhole", "oneway"):
            c.mesh.restore(ev["a"], ev["b"])
        elif k == "latency":
            c.mesh.set_latency(ev["a"], ev["b"], 0)
        elif k == "diskfull":
            self.runner.free_disk(ev["node"])
            note = self.runner.restart_if_store_failed(ev["node"])
        self.log("heal", ev, note)


class Runner:
    """One schedule: the cluster, the actors, the history."""

    def __init__(self, sched, build_dir=None, keep=False, sync_check=5):
        self.sched = sched
        self.seed = sched["seed"]
        self.keep = keep
        self.errors = []
        self.snapshots = []
        self.killed = set()     # nodes down on purpose (not crashed)
        # Held while a node is stopped or started on purpose, and while
        # check_alive looks: a node between its SIGTERM and its restart is
        # not a crash.
        self.node_lock = threading.RLock()
        self.paused = set()
        self.crashes = []
        self.mounts = []
        self.fillers = {}
        # Nodes whose disk was ever filled: a store can fail after its disk
        # was freed (a write staged while it was full fails on the next
        # commit), when no diskfull heal is left to notice it.
        self.disk_filled = set()
        extra = {"sync_replicas": "1"}
        if sched["repl_log_max"]:
            extra["repl_log_max"] = str(sched["repl_log_max"])
        if sched.get("refuse"):
            extra["degraded_writes"] = "refuse"
        # The periodic check finds what streaming missed; a short interval
        # keeps the convergence bound short.
        os.environ["STARLING_SYNC_CHECK_INTERVAL"] = str(sync_check)
        # Not removed at exit by the harness: close() decides (--keep).
        base = tempfile.mkdtemp(prefix="starling-chaos-")
        self.cluster = Cluster(n=sched["nodes"], users={USER: PASSWORD}, proxies=True,
                               extra_config=extra, build_dir=build_dir, base_dir=base)
        self.stop_flag = threading.Event()
        self.history = None
        if sched.get("diskfull_node"):
            self.mount_tmpfs(sched["diskfull_node"])

    # -- disk ----------------------------------------------------------------
    def mount_tmpfs(self, node_id):
        node = self.cluster.nodes[node_id - 1]
        os.makedirs(node.data_dir, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", node.data_dir],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        if r.returncode != 0:
            raise RuntimeError("mount tmpfs on %s: %s" % (node.data_dir, r.stderr.decode()))
        self.mounts.append(node.data_dir)
        # Unmounted by close(), and also when the campaign is killed
        # (the harness runs its cleanups on SIGTERM/SIGINT and at exit).
        proc.at_cleanup(self.unmount_all)

    def fill_disk(self, node_id):
        """Leave about 100 KB free on the node's tmpfs data_dir."""
        node = self.cluster.nodes[node_id - 1]
        if node.data_dir not in self.mounts:
            return
        st = os.statvfs(node.data_dir)
        free = st.f_bavail * st.f_frsize
        path = os.path.join(node.data_dir, "chaos-filler")
        want = max(0, free - 100 * 1024)
        with open(path, "ab") as f:
            chunk = b"\0" * (1 << 20)
            while want > 0:
                n = min(want, len(chunk))
                try:
                    f.write(chunk[:n])
                except OSError:
                    break
                want -= n
        self.fillers[node_id] = path
        self.disk_filled.add(node_id)

    def free_disk(self, node_id):
        path = self.fillers.pop(node_id, None)
        if path:
            try:
                os.unlink(path)
            except OSError:
                pass

    def unmount_all(self):
        if self.mounts:
            # The nodes first: a live one keeps the mount busy.
            self.cluster.stop_all()
        for m in self.mounts:
            subprocess.run(["umount", m], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=30)
            if os.path.ismount(m):
                subprocess.run(["umount", "-l", m], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=30)
        self.mounts = []

    # -- nodes ---------------------------------------------------------------
    def start_node(self, node_id):
        node = self.cluster.nodes[node_id - 1]
        with self.node_lock:
            if node.running():
                self.killed.discard(node_id)
                return "already running"
            try:
                node.start(timeout=60)
                self.killed.discard(node_id)
                return "restarted"
            except (RuntimeError, TimeoutError) as e:
                self.crashes.append("node %d did not restart: %s" % (node_id, str(e)[:2000]))
                return "restart failed"

    def restart_if_store_failed(self, node_id):
        """After a full disk the store refuses every change until the node
        restarts, and says so in its log: do what its operator would."""
        node = self.cluster.nodes[node_id - 1]
        text = node.log_text()
        since = text.rfind("--- start %d at" % node.starts)
        failed = any(node.data_dir in m and "restart the node" in m
                     for m in logfmt.messages(text[max(0, since):]))
        if node.running() and failed:
            with self.node_lock:
                self.killed.add(node_id)
                code = node.stop()
            if code not in (0, None):
                self.crashes.append("node %d exited with %s on SIGTERM after its store "
                                    "failed; log tail:\n%s" % (node_id, code, node.log_tail(30)))
            return "store failed: " + self.start_node(node_id)
        return ""

    def check_alive(self, where):
        """A node that should run and does not has crashed."""
        with self.node_lock:
            self._check_alive(where)

    def _check_alive(self, where):
        for node in self.cluster.nodes:
            if node.node_id in self.killed or node.process is None:
                continue
            if not node.process.alive():
                code = node.process.popen.returncode
                self.crashes.append("node %d exited with %s (%s); log tail:\n%s"
                                    % (node.node_id, code, where, node.log_tail(30)))
                node.exit_codes.append(code)
                node.process = None

    # -- timing --------------------------------------------------------------
    def wait_until(self, t, hard=False):
        """Sleep until t seconds into the schedule; False when the schedule
        is over (operations stop at the duration plus a grace period)."""
        limit = self.sched["duration"] + (0 if hard else 5.0)
        while True:
            if self.stop_flag.is_set():
                return False
            now = self.history.now()
            if now > limit and not hard:
                return False
            if now >= t:
                return True
            time.sleep(min(0.2, t - now))

    def run(self):
        """Start, run the schedule, heal.  Returns the actors' counts."""
        self.cluster.start_all(timeout=60)
        self.cluster.wait_links_up(timeout=60)
        # Mailboxes every session uses exist before the clock starts.
        c = Client(self.cluster.nodes[0].host, self.cluster.nodes[0].imap_port,
                   timeout=IMAP_TIMEOUT)
        c.login(USER, PASSWORD)
        for mb in MAILBOXES[1:] + (COPIES,):
            r = c.command("CREATE", mb)
            if not r.ok:
                raise RuntimeError("CREATE %s: %r" % (mb, r.line))
        c.logout()
        self.cluster.wait_dumps_equal(USER, timeout=60)
        self.history = History(time.monotonic())
        self.sessions = [Session(self, s) for s in self.sched["sessions"]]
        self.admin = Admin(self, self.sched["admin"])
        self.faults = Faults(self, self.sched["faults"])
        actors = self.sessions + [self.admin, self.faults]
        for a in actors:
            a.start()
        deadline = time.monotonic() + self.sched["duration"] + 5.0 + IMAP_TIMEOUT + CLI_TIMEOUT
        watch = time.monotonic()
        while any(a.is_alive() for a in actors) and time.monotonic() < deadline:
            time.sleep(0.2)
            if time.monotonic() - watch > 1.0:
                self.check_alive("during the schedule")
                watch = time.monotonic()
        self.stop_flag.set()
        for a in actors:
            a.join(timeout=IMAP_TIMEOUT + 5)
            if a.is_alive():
                self.errors.append("%s did not finish" % a.name)
        self.check_alive("at the end of the schedule")
        return {"operations": sum(s.executed for s in self.sessions) + self.admin.executed,
                "faults": self.faults.injected}

    def heal_all(self):
        """End every fault: resume, restart, reconnect links, free disks."""
        c = self.cluster
        for nid in list(self.paused):
            c.nodes[nid - 1].resume()
        self.paused.clear()
        for nid in list(self.fillers):
            self.free_disk(nid)
        for nid in sorted(self.disk_filled):
            note = self.restart_if_store_failed(nid)
            if note:
                h = self.history
                h.add({"actor": "fault", "kind": "diskfull", "action": "final heal",
                       "where": "node %d" % nid, "t0": h.now(), "t1": h.now(),
                       "note": note, "status": "OK"})
        c.mesh.restore_all()
        c.mesh.clear_latency()
        for nid in list(self.killed):
            self.start_node(nid)
        self.killed.clear()

    def close(self, keep_dir=False):
        """Stop everything; the directory stays when keep_dir (--keep and a
        violation), for the node logs and data."""
        try:
            for nid in list(self.paused):
                self.cluster.nodes[nid - 1].resume()
            self.paused.clear()
            self.cluster.close()
        finally:
            self.unmount_all()
            if not keep_dir:
                shutil.rmtree(self.cluster.dir, ignore_errors=True)
