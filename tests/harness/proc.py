"""Processes, ports and temp dirs for tests that run real servers.

Every process started here runs in its own process group and is registered,
so that cleanup_all() (run at exit, and on SIGTERM/SIGINT/SIGHUP) kills the
whole group even when a test dies half-way.  Every wait is bounded in time.
Only 127.0.0.1 is ever used.
"""
import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

LOOPBACK = "127.0.0.1"

_procs = []        # ManagedProcess objects still possibly alive
_tmpdirs = []      # temp dirs to remove at exit
_cleanups = []     # extra callables run at exit (before killing processes)
_ports_given = set()


_PORT_LOCK_DIR = os.path.join(tempfile.gettempdir(), "starling-test-ports")
_port_locks = []   # lock files this process holds
_PORT_LOCK_STALE_S = 3 * 3600


def _port_range():
    """Ports below the kernel's ephemeral range: an outgoing connection (a
    peer link, a proxy, a client) never takes one of these as its local port
    between the moment a test picks it and the moment a node binds it."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    top = min(low, 32768) - 1
    return max(1024, top - 12000), top


def _lock_port(port):
    """Claims port among concurrently running test processes (make -j runs
    several): an O_EXCL file per port, removed at exit, ignored when stale."""
    os.makedirs(_PORT_LOCK_DIR, exist_ok=True)
    path = os.path.join(_PORT_LOCK_DIR, str(port))
    try:
        if time.time() - os.stat(path).st_mtime > _PORT_LOCK_STALE_S:
            os.unlink(path)
    except OSError:
        pass
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    _port_locks.append(path)
    return True


def _release_ports():
    while _port_locks:
        try:
            os.unlink(_port_locks.pop())
        except OSError:
            pass


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on now, never the same
    one twice in this process nor in another test process running at the
    same time (two nodes must not get one port)."""
    import random
    low, high = _port_range()
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(500):
        port = rng.randint(low, high)
        if port in _ports_given or not _lock_port(port):
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue  # in use by something else; keep the lock, skip it
        _ports_given.add(port)
        return port
    raise RuntimeError("no free port found")


def port_open(port, host=LOOPBACK):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until it is true; raise TimeoutError after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def poll(pred, timeout, interval=0.1):
    """Whether pred() becomes true within timeout s (asked once more at the
    end): for a wait whose failure is a test's finding, not an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def mkdtemp(prefix):
    """A temp dir removed at exit unless KEEP_TEST_DIRS is set."""
    d = tempfile.mkdtemp(prefix=prefix)
    _tmpdirs.append(d)
    return d


def at_cleanup(func):
    _cleanups.append(func)


class ManagedProcess:
    """A child in its own process group, stdout+stderr to a log file."""

    def __init__(self, argv, log_path, env=None, cwd=None):
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        self.pid = self.popen.pid
        _procs.append(self)

    def alive(self):
        return self.popen.poll() is None

    def _signal_group(self, sig):
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            pass

    def stop(self, timeout=15.0):
        """SIGTERM the group, SIGKILL after timeout.  Returns the exit code
        of the main process (negative: killed by that signal)."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.popen.wait(timeout=10)
        self._signal_group(signal.SIGKILL)  # leftovers in the group
        self._close()
        return self.popen.returncode

    def kill(self):
        """SIGKILL the group at once (a crash, as far as the node knows)."""
        self._signal_group(signal.SIGKILL)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._close()
        return self.popen.returncode

    def _close(self):
        if self in _procs:
            _procs.remove(self)
        if not self._log.closed:
            self._log.close()

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""


def run(argv, input=None, timeout=60, env=None, check=False):
    """subprocess.run with a bounded time; input may be bytes or str."""
    if isinstance(input, str):
        input = input.encode()
    return subprocess.run(argv, input=input, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, env=env,
                          check=check)


def make_cert(directory, cn="localhost"):
    """A self-signed certificate made now with the openssl command.
    Returns (cert_path, key_path)."""
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
         "-days", "2", "-subj", "/CN=" + cn], timeout=60, check=True)
    os.chmod(key, 0o600)
    return cert, key


def sha512_crypt(password):
    """{SHA512-CRYPT} hash as Dovecot's passwd-file and Starling read it."""
    r = run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n",
            timeout=30, check=True)
    return "{SHA512-CRYPT}" + r.stdout.decode().strip()


def cleanup_all():
    for func in reversed(_cleanups):
        try:
            func()
        except Exception:  # noqa: BLE001 -- cleanup must go on
            pass
    del _cleanups[:]
    for p in list(_procs):
        try:
            p.stop(timeout=5)
        except Exception:  # noqa: BLE001
            p._signal_group(signal.SIGKILL)
    if not os.environ.get("KEEP_TEST_DIRS"):
        for d in _tmpdirs:
            shutil.rmtree(d, ignore_errors=True)
    del _tmpdirs[:]
    _release_ports()


def _on_signal(signum, frame):
    cleanup_all()
    os._exit(128 + signum)


atexit.register(cleanup_all)
for _sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    try:
        signal.signal(_sig, _on_signal)
    except (ValueError, OSError):
        pass  # not the main thread
