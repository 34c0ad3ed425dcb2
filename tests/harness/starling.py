"""Start and stop real starlingd nodes on loopback for tests.

    from harness.starling import Cluster
    with Cluster(n=3, users={"alice": "secret"}) as c:
        c.start_all()
        node = c.nodes[0]
        node.deliver("alice", b"Subject: hi\\r\\n\\r\\nbody\\r\\n")
        imap = imaplib.IMAP4(node.host, node.imap_port)
        ...
        c.nodes[1].kill()          # SIGKILL, as in a crash
        c.nodes[1].start()         # same data_dir, same ports

Each node gets its own directory (config, data_dir, log) under one temp dir,
its own free ports (IMAP, optional IMAPS, replication), and a config file with
`peer = SID 127.0.0.1:PORT` lines for every other node and a shared
cluster_secret_file.  Binaries come from $STARLINGD / $STARLING_CLI, else from
$top_builddir (replicator/starlingd, cli/starling).

With proxies=True every directed peer link goes through a LinkProxy
(tests/harness/linkproxy.py): node i's `peer = j` line names the proxy
(i, j), which forwards to node j's repl_listen, and c.cut(i, j),
c.blackhole(i, j), c.restore(i, j) break and heal the link between nodes i
and j.  With peer_tls=True a CA and one certificate per node are made with
the openssl command (each naming its node: SAN DNS:starling-node-N), and
every node gets tls_cert, tls_key and tls_ca, so peer links run mutual TLS.

Under AddressSanitizer (make check), a node's output goes to its log file;
sanitizer_report() finds a sanitizer's report in it, and tests count one as a
failure.  Everything started is killed at exit (process groups), every wait
is bounded.
"""
import os
import re
import signal
import socket
import time

from harness import logfmt, proc
from harness.certs import TestCA
from harness.linkproxy import ProxyMesh

SANITIZER_PATTERNS = re.compile(
    r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|"
    r"SUMMARY: UndefinedBehaviorSanitizer|SUMMARY: AddressSanitizer|"
    r"ERROR: ThreadSanitizer")


def find_binaries(build_dir=None):
    """(starlingd, starling) paths, from the environment or a build dir."""
    build_dir = build_dir or os.environ.get("top_builddir")
    daemon = os.environ.get("STARLINGD")
    cli = os.environ.get("STARLING_CLI")
    if build_dir:
        daemon = daemon or os.path.join(build_dir, "replicator", "starlingd")
        cli = cli or os.path.join(build_dir, "cli", "starling")
    if not daemon:
        raise RuntimeError("no starlingd: set top_builddir or STARLINGD")
    return daemon, cli


def sanitizer_env():
    env = dict(os.environ)
    asan = env.get("ASAN_OPTIONS", "")
    if "detect_leaks" not in asan:
        asan = "detect_leaks=1" + (":" + asan if asan else "")
    env["ASAN_OPTIONS"] = asan
    if "UBSAN_OPTIONS" not in env:
        env["UBSAN_OPTIONS"] = "print_stacktrace=1"
    return env


class Node:
    """One starlingd: its directory, ports, config, process."""

    host = proc.LOOPBACK

    def __init__(self, cluster, node_id, directory):
        self.cluster = cluster
        self.node_id = node_id
        self.dir = directory
        self.data_dir = os.path.join(directory, "data")
        self.conf = os.path.join(directory, "starling.conf")
        self.log = os.path.join(directory, "starlingd.log")
        self.imap_port = proc.free_port()
        self.imaps_port = proc.free_port() if cluster.tls else None
        self.repl_port = proc.free_port()
        self.extra = {}
        self.tls_cert = self.tls_key = None
        self.secret_file = None  # None: the cluster's
        self.peer_ids = None     # None: every other node is a peer
        self.process = None
        self.starts = 0
        self.exit_codes = []

    # -- configuration ---------------------------------------------------
    def config_lines(self):
        c = self.cluster
        lines = [
            "# written by tests/harness/starling.py",
            "node_id = %d" % self.node_id,
            "data_dir = %s" % self.data_dir,
            "imap_listen = %s:%d" % (self.host, self.imap_port),
            "users_file = %s" % c.users_file,
            "log_level = %s" % c.log_level,
        ]
        if c.tls:
            lines.append("imaps_listen = %s:%d" % (self.host, self.imaps_port))
        if self.tls_cert:
            lines += ["tls_cert = %s" % self.tls_cert,
                      "tls_key = %s" % self.tls_key,
                      "tls_ca = %s" % c.tls_ca]
        elif c.tls:
            lines += ["tls_cert = %s" % c.tls_cert,
                      "tls_key = %s" % c.tls_key]
        if len(c.nodes) > 1:
            lines += ["repl_listen = %s:%d" % (self.host, self.repl_port),
                      "cluster_secret_file = %s" % (self.secret_file or c.secret_file)]
            for other in c.nodes:
                if other is not self and (self.peer_ids is None or
                                          other.node_id in self.peer_ids):
                    lines.append("peer = %d %s:%d" % (other.node_id, other.host,
                                                      c.peer_port(self, other)))
        for k, v in list(c.extra_config.items()) + list(self.extra.items()):
            if isinstance(v, (list, tuple)):
                lines += ["%s = %s" % (k, x) for x in v]
            else:
                lines.append("%s = %s" % (k, v))
        return lines

    def write_config(self):
        with open(self.conf, "w") as f:
            f.write("\n".join(self.config_lines()) + "\n")

    # -- process ---------------------------------------------------------
    def running(self):
        return self.process is not None and self.process.alive()

    def start(self, timeout=30.0):
        """Start starlingd and wait until its IMAP port and its admin socket
        accept (starlingd binds the admin socket after the IMAP port: a CLI
        command right after a restart found the dead process's socket
        file, test_handover "first master show", 1 run in 7)."""
        if self.running():
            raise RuntimeError("node %d already running" % self.node_id)
        self.write_config()
        with open(self.log, "ab") as f:
            f.write(("--- start %d at %s\n" % (self.starts + 1, time.ctime())).encode())
        self.process = proc.ManagedProcess([self.cluster.daemon, "-c", self.conf],
                                           self.log, env=sanitizer_env())
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not (proc.port_open(self.imap_port) and self.admin_socket_open()):
            if not self.process.alive():
                code = self.process.popen.returncode
                self.exit_codes.append(code)
                raise RuntimeError("starlingd node %d exited with %s at start:\n%s"
                                   % (self.node_id, code, self.log_tail()))
            if time.monotonic() > deadline:
                raise TimeoutError("starlingd node %d: IMAP port %d not open after "
                                   "%.0fs:\n%s" % (self.node_id, self.imap_port,
                                                   timeout, self.log_tail()))
            time.sleep(0.05)
        return self

    def admin_socket_open(self):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect(os.path.join(self.data_dir, "admin.sock"))
                return True
        except OSError:
            return False

    def stop(self, timeout=20.0):
        """SIGTERM, then SIGKILL after timeout; returns the exit code."""
        if self.process is None:
            return None
        code = self.process.stop(timeout=timeout)
        self.exit_codes.append(code)
        self.process = None
        return code

    def kill(self):
        """SIGKILL: the node dies as in a crash or power loss."""
        if self.process is None:
            return None
        code = self.process.kill()
        self.exit_codes.append(code)
        self.process = None
        return code

    def pause(self):
        """SIGSTOP the node (a hung node, links stay open)."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self):
        os.killpg(self.process.pid, signal.SIGCONT)

    def restart(self, timeout=30.0):
        self.stop()
        return self.start(timeout=timeout)

    def log_text(self):
        try:
            with open(self.log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=40):
        return "\n".join(self.log_text().splitlines()[-n:])

    def log_events(self):
        """This node's log lines, each as a dict of its fields (logfmt)."""
        return logfmt.events(self.log_text())

    def log_messages(self):
        """The msg of every log line, unescaped, ": err" appended if any."""
        return logfmt.messages(self.log_text())

    def log_malformed(self):
        """Lines of the log that are neither a log line of this node
        (logfmt with ts, level, msg and node, which a configuration error
        logged before the node id is known lacks) nor the harness's
        "--- start" marks."""
        out = []
        for ln in self.log_text().splitlines():
            if ln.startswith("--- start "):
                continue
            f = logfmt.parse(ln)
            if f is None or f.get("node", str(self.node_id)) != str(self.node_id):
                out.append(ln)
        return out

    def sanitizer_report(self):
        """The sanitizer report in this node's log, or None."""
        text = self.log_text()
        m = SANITIZER_PATTERNS.search(text)
        if not m:
            return None
        start = text.rfind("\n", 0, max(0, m.start() - 200)) + 1
        return text[start:start + 3000]

    # -- admin CLI -------------------------------------------------------
    def cli(self, *args, input=None, timeout=60):
        """Run `starling -c CONF ARGS`; returns CompletedProcess."""
        if not self.cluster.cli:
            raise RuntimeError("no starling CLI binary")
        if not os.path.exists(self.conf):
            self.write_config()
        return proc.run([self.cluster.cli, "-c", self.conf] + list(args),
                        input=input, timeout=timeout, env=sanitizer_env())

    def deliver(self, user, message, mailbox=None, timeout=60):
        """`starling deliver`; raises on a non-zero exit."""
        args = ["deliver", "-u", user] + (["-m", mailbox] if mailbox else [])
        r = self.cli(*args, input=message, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError("starling deliver failed (%d): %s"
                               % (r.returncode, r.stderr.decode(errors="replace")))
        return r

    def status(self, timeout=30):
        """`starling status --json` parsed, or raises."""
        import json
        r = self.cli("status", "--json", timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError("starling status failed (%d): %s"
                               % (r.returncode, r.stderr.decode(errors="replace")))
        return json.loads(r.stdout.decode())

    def peer_state(self, sid):
        """This node's view of the link to node sid: "up", "down", ...
        (from `starling status`), or None if the node cannot answer."""
        try:
            return self.status(timeout=10).get("peer.%d" % sid)
        except Exception:  # noqa: BLE001 -- not running, CLI timeout, bad JSON
            return None

    def dump(self, user, timeout=60):
        r = self.cli("dump", "-u", user, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError("starling dump failed (%d): %s"
                               % (r.returncode, r.stderr.decode(errors="replace")))
        return r.stdout.decode("utf-8", "replace")


class Cluster:
    """N starlingd nodes sharing a users file and a cluster secret."""

    def __init__(self, n=1, users=None, tls=False, extra_config=None,
                 log_level="info", build_dir=None, daemon=None, cli=None,
                 base_dir=None, proxies=False, peer_tls=False):
        found_daemon, found_cli = (None, None)
        if daemon is None or cli is None:
            found_daemon, found_cli = find_binaries(build_dir)
        self.daemon = daemon or found_daemon
        self.cli = cli or found_cli
        if not os.access(self.daemon, os.X_OK):
            raise RuntimeError("starlingd not found or not executable: %s" % self.daemon)
        if self.cli and not os.access(self.cli, os.X_OK):
            self.cli = None
        self.dir = base_dir or proc.mkdtemp("starling-test-")
        self.tls = tls
        self.log_level = log_level
        self.extra_config = dict(extra_config or {})
        self.users_file = os.path.join(self.dir, "users")
        self.secret_file = os.path.join(self.dir, "cluster.secret")
        with open(self.secret_file, "w") as f:
            f.write(os.urandom(32).hex() + "\n")
        os.chmod(self.secret_file, 0o600)
        self.users = {}
        open(self.users_file, "a").close()
        for name, pw in (users or {}).items():
            self.add_user(name, pw)
        self.tls_cert = self.tls_key = self.tls_ca = None
        if tls:
            self.tls_cert, self.tls_key = proc.make_cert(self.dir)
        self.nodes = []
        for i in range(n):
            d = os.path.join(self.dir, "node%d" % (i + 1))
            os.makedirs(d)
            self.nodes.append(Node(self, i + 1, d))
        if peer_tls:
            self.ca = TestCA(os.path.join(self.dir, "ca"))
            self.tls_ca = self.ca.cert
            for node in self.nodes:
                node.tls_cert, node.tls_key = self.ca.issue(
                    "node%d" % node.node_id, san="DNS:starling-node-%d" % node.node_id)
        self.mesh = None
        if proxies and n > 1:
            self.mesh = ProxyMesh()
            for a in self.nodes:
                for b in self.nodes:
                    if a is not b:
                        self.mesh.add(a.node_id, b.node_id, b.repl_port)
        for node in self.nodes:
            node.write_config()
        proc.at_cleanup(self.close)

    def add_user(self, name, password):
        """Add a user to the shared users file (SHA512-CRYPT, like
        `starling user add` writes).  Nodes read the file at login."""
        self.users[name] = password
        line = "%s:%s\n" % (name, proc.sha512_crypt(password))
        with open(self.users_file, "a") as f:
            f.write(line)

    def start_all(self, timeout=30.0):
        for node in self.nodes:
            if not node.running():
                node.start(timeout=timeout)
        return self

    def stop_all(self):
        for node in self.nodes:
            if node.running():
                node.stop()

    def close(self):
        """Stop every node and every proxy."""
        self.stop_all()
        if self.mesh is not None:
            self.mesh.close()
            self.mesh = None

    # -- peer links ------------------------------------------------------
    def peer_port(self, node, other):
        """The port node's `peer = OTHER` line names: other's repl_listen,
        or the proxy (node, other) in front of it."""
        if self.mesh is not None:
            return self.mesh.port(node.node_id, other.node_id)
        return other.repl_port

    def cut(self, i, j):
        """Reset the link between nodes i and j and refuse new ones."""
        self.mesh.cut(i, j)

    def blackhole(self, i, j):
        """Make the link between nodes i and j silently lose everything."""
        self.mesh.blackhole(i, j)

    def restore(self, i, j):
        self.mesh.restore(i, j)

    def links_state(self, nodes=None):
        """{(i, j): node i's state of its link to j} for the running nodes."""
        nodes = nodes or self.running_nodes()
        out = {}
        for a in nodes:
            try:
                st = a.status(timeout=10)
            except Exception:  # noqa: BLE001 -- a node that cannot answer
                st = {}
            for b in self.nodes:
                if b is not a:
                    out[(a.node_id, b.node_id)] = st.get("peer.%d" % b.node_id)
        return out

    def wait_links_up(self, timeout=30.0, nodes=None):
        """Wait until every given (running) node reports its link to every
        other given node up; returns the seconds it took."""
        nodes = nodes or self.running_nodes()
        ids = {n.node_id for n in nodes}
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            st = self.links_state(nodes)
            if all(v == "up" for (a, b), v in st.items() if b in ids):
                return time.monotonic() - t0
            if time.monotonic() >= deadline:
                raise TimeoutError("links not up after %.0fs: %r" % (timeout, st))
            time.sleep(0.1)

    def sanitizer_reports(self):
        """{node_id: report} for every node whose log has one."""
        out = {}
        for node in self.nodes:
            r = node.sanitizer_report()
            if r:
                out[node.node_id] = r
        return out

    def close_checked(self, report):
        """Stops every node, then checks (in report) that no node's log has
        a sanitizer report: the end of every cluster scenario."""
        self.close()
        reps = self.sanitizer_reports()
        report.check("no sanitizer report", not reps, reps)
        if not reps:
            self.check_log_format(report)

    def check_log_format(self, report):
        """Every line of every node's log is one well-formed event."""
        bad = {n.node_id: n.log_malformed()[:3] for n in self.nodes if n.log_malformed()}
        report.check("every log line is one logfmt event of its node", not bad, bad)

    def running_nodes(self):
        return [n for n in self.nodes if n.running()]

    def wait_dumps_equal(self, user, timeout=60.0, nodes=None):
        """Wait until `starling dump -u USER` is byte-identical on every
        (given, running) node; returns the dump.  Raises TimeoutError with
        the first differing lines otherwise."""
        nodes = nodes or self.running_nodes()
        deadline = time.monotonic() + timeout
        last = None
        while True:
            dumps = []
            try:
                dumps = [n.dump(user) for n in nodes]
            except RuntimeError as e:
                last = str(e)
            if dumps and all(d == dumps[0] for d in dumps):
                return dumps[0]
            if dumps:
                last = _first_difference(dumps)
            if time.monotonic() >= deadline:
                raise TimeoutError("dumps of %s differ after %.0fs: %s" % (user, timeout, last))
            time.sleep(0.2)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _first_difference(dumps):
    base = dumps[0].splitlines()
    for i, d in enumerate(dumps[1:], 2):
        other = d.splitlines()
        for j in range(max(len(base), len(other))):
            x = base[j] if j < len(base) else "<end>"
            y = other[j] if j < len(other) else "<end>"
            if x != y:
                return "line %d: node 1 %r, node %d %r" % (j + 1, x, i, y)
    return "no difference"
