"""A TCP proxy that cluster tests put on a link between two nodes, to cut it.

    p = LinkProxy(target_port).start()   # listens on p.port (127.0.0.1)
    ...                                  # node A connects to p.port, not B's
    p.cut()        # drop every connection, refuse new ones (a clean failure)
    p.blackhole()  # forward nothing either way, keep sockets open, accept
                   # nothing: a silent partition (only keepalive notices)
    p.restore()    # forward again
    p.close()

    p.set_latency(0.2)       # every byte waits 0.2 s before it is forwarded
    p.hold("to_server")      # one direction only: bytes from the connecting
                             # node wait unread, the other way still flows
    p.restore()              # also ends holds (latency stays until set to 0)

Modes:
  pass       bytes flow both ways, new connections are forwarded.
  cut        existing connections are reset at once; new ones are accepted
             and reset at once (the connecting node sees its link fail).
  blackhole  nothing is read, written, accepted or closed: bytes wait in the
             kernel's buffers and new connections wait in the listen
             backlog, as across a network that silently lost every packet.
             restore() lets whatever is still alive flow again.

Latency (set_latency) and one-way holds (hold) combine with pass mode; they
let a fault campaign (tests/chaos) slow a link or break it in one direction
only, as a half-broken route does.  Delayed bytes keep their order.

One thread per proxy, stdlib only, 127.0.0.1 only.  Every wait is bounded:
the thread wakes at least every 50 ms, connecting to the target gives up
after 2 s, and close() joins the thread with a timeout.
"""
import collections
import errno
import select
import socket
import struct
import threading
import time

LOOPBACK = "127.0.0.1"
CHUNK = 65536
MAX_BUFFERED = 1 << 20   # per direction: stop reading above this
POLL_MS = 50


class _Pair:
    """One proxied connection: client side (the connecting node) and
    server side (the target), with the bytes waiting in each direction."""

    def __init__(self, client, server):
        self.client = client
        self.server = server
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.client_eof = False
        self.server_eof = False
        # (due time, bytes) waiting for the proxy's latency, per direction.
        self.delayed_to_server = collections.deque()
        self.delayed_to_client = collections.deque()

    def delayed_bytes(self, side):
        q = self.delayed_to_server if side == "client" else self.delayed_to_client
        return sum(len(d) for _, d in q)

    def close(self, reset=False):
        for s in (self.client, self.server):
            try:
                if reset:
                    # RST instead of FIN: the node sees the link fail.
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                 struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass


def _reset(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


class LinkProxy:
    def __init__(self, target_port, port=0, target_host=LOOPBACK, name=None):
        self.target = (target_host, target_port)
        self.name = name or "proxy->%d" % target_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((LOOPBACK, port))
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.mode = "pass"
        self.latency = 0.0      # seconds every forwarded byte waits
        self.held = set()       # "to_server" / "to_client": not read
        self.pairs = []
        self.accepted = 0       # connections accepted in pass mode
        self.refused = 0        # connections reset in cut mode
        self._lock = threading.Lock()
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    # -- control (any thread) ------------------------------------------
    def start(self):
        self._thread.start()
        return self

    def _set_mode(self, mode):
        with self._lock:
            self.mode = mode
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def cut(self):
        self._set_mode("cut")

    def blackhole(self):
        self._set_mode("blackhole")

    def restore(self):
        with self._lock:
            self.held = set()
        self._set_mode("pass")

    def set_latency(self, seconds):
        """Delay every byte forwarded from now on by seconds (0: none)."""
        with self._lock:
            self.latency = max(0.0, float(seconds))
        self._set_mode(self.mode)

    def hold(self, direction):
        """Stop forwarding one direction ("to_server": bytes the connecting
        node sends; "to_client": bytes it receives) while the other flows.
        The held bytes wait unread, as in blackhole mode; restore() ends it."""
        if direction not in ("to_server", "to_client"):
            raise ValueError("hold: direction is to_server or to_client")
        with self._lock:
            self.held.add(direction)
        self._set_mode(self.mode)

    def connection_count(self):
        with self._lock:
            return len(self.pairs)

    def close(self, timeout=5.0):
        self._stop = True
        self._set_mode("closed")
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            for p in self.pairs:
                p.close()
            self.pairs = []
        for s in (self.listener, self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass

    # -- the proxy thread ----------------------------------------------
    def _run(self):
        while not self._stop:
            with self._lock:
                mode = self.mode
            if mode == "cut":
                with self._lock:
                    pairs, self.pairs = self.pairs, []
                for p in pairs:
                    p.close(reset=True)
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            fdmap = {}
            if mode in ("pass", "cut"):
                poller.register(self.listener, select.POLLIN)
            timeout = POLL_MS
            if mode == "pass":
                now = time.monotonic()
                for p in list(self.pairs):
                    due = self._release_delayed(p, now)
                    if due is not None:
                        timeout = max(1, min(timeout, int((due - now) * 1000) + 1))
                    self._register(poller, fdmap, p)
            try:
                events = poller.poll(timeout)
            except InterruptedError:
                continue
            for fd, ev in events:
                if fd == self._wake_r.fileno():
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                elif fd == self.listener.fileno():
                    self._accept()
                elif fd in fdmap:
                    pair, side = fdmap[fd]
                    self._service(pair, side, ev)
            self._reap()

    @staticmethod
    def _release_delayed(p, now):
        """Move delayed bytes that are due into the output buffers; returns
        the next due time, or None."""
        nxt = None
        for q, out in ((p.delayed_to_server, p.to_server),
                       (p.delayed_to_client, p.to_client)):
            while q and q[0][0] <= now:
                out += q.popleft()[1]
            if q and (nxt is None or q[0][0] < nxt):
                nxt = q[0][0]
        return nxt

    def _register(self, poller, fdmap, p):
        with self._lock:
            held = set(self.held)
        for sock, inbuf_other, outbuf, eof, direction in (
                (p.client, p.to_server, p.to_client, p.client_eof, "to_server"),
                (p.server, p.to_client, p.to_server, p.server_eof, "to_client")):
            mask = 0
            side = "client" if sock is p.client else "server"
            waiting = len(inbuf_other) + p.delayed_bytes(side)
            if not eof and waiting < MAX_BUFFERED and direction not in held:
                mask |= select.POLLIN
            if outbuf:
                mask |= select.POLLOUT
            if mask:
                poller.register(sock, mask)
                fdmap[sock.fileno()] = (p, "client" if sock is p.client else "server")

    def _accept(self):
        for _ in range(16):
            try:
                client, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            # The mode now, not when the poll began: restore() may have
            # come in between.  (One accepted just as blackhole() began
            # becomes a pair that the blackhole then leaves unserved.)
            with self._lock:
                mode = self.mode
            if mode == "cut":
                self.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=2.0)
            except OSError:
                # Target down: the connecting node sees its link fail.
                _reset(client)
                continue
            for s in (client, server):
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.pairs.append(_Pair(client, server))
                self.accepted += 1

    def _service(self, p, side, ev):
        sock = p.client if side == "client" else p.server
        other_buf = p.to_server if side == "client" else p.to_client
        own_out = p.to_client if side == "client" else p.to_server
        if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
            try:
                data = sock.recv(CHUNK)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data is not None:
                q = p.delayed_to_server if side == "client" else p.delayed_to_client
                if data and (self.latency > 0 or q):
                    # Behind bytes still delayed even when latency just
                    # went to 0: order is kept.
                    due = time.monotonic() + self.latency
                    if q and q[-1][0] > due:
                        due = q[-1][0]
                    q.append((due, data))
                elif data:
                    other_buf += data
                elif side == "client":
                    p.client_eof = True
                else:
                    p.server_eof = True
        if ev & select.POLLOUT and own_out:
            try:
                n = sock.send(own_out)
                del own_out[:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                if e.errno != errno.EAGAIN:
                    if side == "client":
                        p.client_eof = True
                    else:
                        p.server_eof = True
                    own_out.clear()

    def _reap(self):
        """Close pairs where one side ended and its bytes were delivered."""
        with self._lock:
            keep = []
            for p in self.pairs:
                done = ((p.client_eof and not p.to_server and not p.delayed_to_server) or
                        (p.server_eof and not p.to_client and not p.delayed_to_client))
                if done:
                    p.close()
                else:
                    keep.append(p)
            self.pairs = keep


class ProxyMesh:
    """One LinkProxy per directed pair of nodes: proxy (i, j) is where node i
    connects to reach node j.  cut/blackhole/restore act on both directions
    of a pair."""

    def __init__(self):
        self.proxies = {}

    def add(self, i, j, target_port):
        p = LinkProxy(target_port, name="proxy%d->%d" % (i, j)).start()
        self.proxies[(i, j)] = p
        return p

    def port(self, i, j):
        return self.proxies[(i, j)].port

    def _both(self, i, j):
        return [p for key, p in self.proxies.items() if key in ((i, j), (j, i))]

    def cut(self, i, j):
        for p in self._both(i, j):
            p.cut()

    def blackhole(self, i, j):
        for p in self._both(i, j):
            p.blackhole()

    def restore(self, i, j):
        for p in self._both(i, j):
            p.restore()

    def isolate(self, i, mode="cut"):
        """Cut (or blackhole) every link of node i."""
        for (a, b), p in self.proxies.items():
            if i in (a, b):
                getattr(p, mode)()

    def restore_all(self):
        for p in self.proxies.values():
            p.restore()

    def set_latency(self, i, j, seconds):
        """Delay both directions of the link between i and j."""
        for p in self._both(i, j):
            p.set_latency(seconds)

    def hold(self, src, dst):
        """Break the link between src and dst in one direction only: bytes
        from src to dst wait unread, bytes from dst to src flow.  Proxy
        (src, dst) carries src's connection (src is its client), proxy
        (dst, src) dst's (src is its server); whichever is in use, only the
        src -> dst bytes stop."""
        if (src, dst) in self.proxies:
            self.proxies[(src, dst)].hold("to_server")
        if (dst, src) in self.proxies:
            self.proxies[(dst, src)].hold("to_client")

    def clear_latency(self):
        for p in self.proxies.values():
            p.set_latency(0)

    def close(self):
        for p in self.proxies.values():
            p.close()
        self.proxies = {}

