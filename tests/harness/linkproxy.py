"""A TCP proxy that cluster tests put on a link between two nodes, to cut it.

    p = LinkProxy(target_port).start()   # listens on p.port (127.0.0.1)
    ...                                  # node A connects to p.port, not B's
    p.cut()        # drop every connection, refuse new ones (a clean failure)
    p.blackhole()  # forward nothing either way, keep sockets open, accept
                   # nothing: a silent partition (only keepalive notices)
    p.restore()    # forward again
    p.close()

Modes:
  pass       bytes flow both ways, new connections are forwarded.
  cut        existing connections are reset at once; new ones are accepted
             and reset at once (the connecting node sees its link fail).
  blackhole  nothing is read, written, accepted or closed: bytes wait in the
             kernel's buffers and new connections wait in the listen
             backlog, as across a network that silently lost every packet.
             restore() lets whatever is still alive flow again.

One thread per proxy, stdlib only, 127.0.0.1 only.  Every wait is bounded:
the thread wakes at least every 50 ms, connecting to the target gives up
after 2 s, and close() joins the thread with a timeout.
"""
import errno
import select
import socket
import struct
import threading

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
        self._set_mode("pass")

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
            if mode == "pass":
                for p in list(self.pairs):
                    self._register(poller, fdmap, p)
            try:
                events = poller.poll(POLL_MS)
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

    def _register(self, poller, fdmap, p):
        for sock, inbuf_other, outbuf, eof in (
                (p.client, p.to_server, p.to_client, p.client_eof),
                (p.server, p.to_client, p.to_server, p.server_eof)):
            mask = 0
            if not eof and len(inbuf_other) < MAX_BUFFERED:
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
                if data:
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
                done = ((p.client_eof and not p.to_server) or
                        (p.server_eof and not p.to_client))
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

    def close(self):
        for p in self.proxies.values():
            p.close()
        self.proxies = {}

