/* Peer links (see repl-peer.c): connecting to a peer (resolving its
 * name, a non-blocking connect with a deadline, the backoff between
 * attempts) and accepting connections on repl_listen. */
#include "replicator/repl-peer-private.h"

#include <errno.h>
#include <ev.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/listen.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#define MAX_ACCEPTS_PER_EVENT 16
/* A peer given by host name is resolved again (blocking the loop, so
 * rarely) only after this many failed attempts and this long since the
 * last resolution.  Addresses are never resolved again. */
#define RESOLVE_AFTER_FAILURES 3
#define RESOLVE_INTERVAL_MS 30000

/* xorshift64*: jitter needs no cryptographic quality. */
static uint32_t peers_random(struct repl_peers *mgr)
{
	uint64_t x = mgr->rng;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	mgr->rng = x;
	return (uint32_t)((x * 0x2545F4914F6CDD1Dull) >> 32);
}

static void sockaddr_string(const struct sockaddr *sa, socklen_t len, char *out, size_t size)
{
	char host[NI_MAXHOST], serv[NI_MAXSERV];
	if (getnameinfo(sa, len, host, sizeof(host), serv, sizeof(serv),
			NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
		snprintf(out, size, "?");
		return;
	}
	snprintf(out, size, sa->sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, serv);
}

static void set_nodelay(int fd)
{
	int one = 1;
	/* Small command lines should leave at once; failure only costs latency. */
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* ------------------------------------------------------------------ */
/* Connecting */

static void peer_connect_failed(struct peer *peer, const char *what, int err)
{
	struct repl_peers *mgr = peer->mgr;
	peer->cur_sa++; /* the next address of a name, if it has several */
	ev_io_stop(mgr->loop, &peer->connect_io);
	if (peer->connect_fd >= 0) {
		close(peer->connect_fd);
		peer->connect_fd = -1;
	}
	if (err != 0)
		peer_failure(peer, "%s %s:%u: %s", what, peer->host, peer->port, strerror(err));
	else
		peer_failure(peer, "%s %s:%u", what, peer->host, peer->port);
	peer_schedule_connect(peer);
}

static void peer_connected(struct peer *peer)
{
	struct repl_peers *mgr = peer->mgr;
	int fd = peer->connect_fd;
	char addr[80];
	ev_io_stop(mgr->loop, &peer->connect_io);
	ev_timer_stop(mgr->loop, &peer->timer);
	peer->connect_fd = -1;
	set_nodelay(fd);
	snprintf(addr, sizeof(addr), "%s:%u", peer->host, peer->port);
	peer_set_state(peer, REPL_PEER_AUTHENTICATING);
	struct link *link = peer_link_create(mgr, fd, peer, addr);
	if (link == NULL) {
		peer_schedule_connect(peer);
		return;
	}
	peer->link = link;
}

static void connect_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct peer *peer = (struct peer *)((char *)w - offsetof(struct peer, connect_io));
	int err = 0;
	socklen_t len = sizeof(err);
	if (getsockopt(peer->connect_fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err != 0) {
		peer_connect_failed(peer, "cannot connect to", err);
		return;
	}
	peer_connected(peer);
}

/* Resolves the peer's host into peer->sa (a name may have several
 * addresses, e.g. ::1 and 127.0.0.1 for localhost: the attempts go through
 * them in turn).  Returns 0, or -1 with the reason recorded and the old
 * addresses kept. */
int peer_resolve(struct peer *peer)
{
	struct addrinfo hints, *res = NULL;
	char port[8];
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV | AI_NUMERICHOST;
	snprintf(port, sizeof(port), "%u", peer->port);
	int gai = getaddrinfo(peer->host, port, &hints, &res);
	peer->numeric = gai == 0;
	if (gai != 0) {
		hints.ai_flags = AI_NUMERICSERV;
		gai = getaddrinfo(peer->host, port, &hints, &res);
	}
	peer->resolved_ms = clock_mono_ms();
	unsigned n = 0;
	for (struct addrinfo *ai = gai == 0 ? res : NULL; ai != NULL && n < MAX_ADDRS;
	     ai = ai->ai_next) {
		if (ai->ai_addrlen > sizeof(peer->sa[0]))
			continue;
		memcpy(&peer->sa[n], ai->ai_addr, ai->ai_addrlen);
		peer->sa_len[n] = ai->ai_addrlen;
		n++;
	}
	if (res != NULL)
		freeaddrinfo(res);
	if (n == 0) {
		peer_failure(peer, "cannot resolve %s: %s", peer->host,
			     gai != 0 ? gai_strerror(gai) : "no usable address");
		return -1;
	}
	peer->n_sa = n;
	peer->cur_sa = 0;
	return 0;
}

/* Starts a non-blocking connect to the peer's address. */
static void peer_connect(struct peer *peer)
{
	struct repl_peers *mgr = peer->mgr;
	peer_set_state(peer, REPL_PEER_CONNECTING);
	bool stale = !peer->numeric && peer->failures >= RESOLVE_AFTER_FAILURES &&
		     clock_mono_ms() - peer->resolved_ms >= RESOLVE_INTERVAL_MS;
	if ((peer->n_sa == 0 || stale) && peer_resolve(peer) < 0 && peer->n_sa == 0) {
		peer_schedule_connect(peer);
		return;
	}
	unsigned k = peer->cur_sa % peer->n_sa;
	int fd = socket(peer->sa[k].ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		peer_connect_failed(peer, "cannot create a socket for", errno);
		return;
	}
	peer->connect_fd = fd;
	int r = connect(fd, (const struct sockaddr *)&peer->sa[k], peer->sa_len[k]);
	int err = errno;
	if (r == 0) {
		peer_connected(peer);
		return;
	}
	if (err != EINPROGRESS) {
		peer_connect_failed(peer, "cannot connect to", err);
		return;
	}
	ev_io_init(&peer->connect_io, connect_io_cb, fd, EV_WRITE);
	ev_io_start(mgr->loop, &peer->connect_io);
	ev_timer_stop(mgr->loop, &peer->timer);
	ev_timer_set(&peer->timer, REPL_PEER_CONNECT_TIMEOUT_MS / 1000.0, 0.);
	ev_timer_start(mgr->loop, &peer->timer);
}

void peer_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct peer *peer = (struct peer *)((char *)w - offsetof(struct peer, timer));
	if (peer->state == REPL_PEER_DOWN)
		peer_connect(peer);
	else if (peer->state == REPL_PEER_CONNECTING)
		peer_connect_failed(peer, "timed out connecting to", 0);
}

/* DOWN, and a connection attempt after the backoff delay. */
void peer_schedule_connect(struct peer *peer)
{
	struct repl_peers *mgr = peer->mgr;
	unsigned delay = repl_peer_backoff_ms(peer->failures, peers_random(mgr));
	if (peer->failures < 32)
		peer->failures++;
	peer_set_state(peer, REPL_PEER_DOWN);
	ev_timer_stop(mgr->loop, &peer->timer);
	ev_timer_set(&peer->timer, delay / 1000.0, 0.);
	ev_timer_start(mgr->loop, &peer->timer);
	log_debug("peer %u: next connection attempt in %u ms", peer->sid, delay);
}

/* ------------------------------------------------------------------ */
/* Accepting */

void peers_accept_pause_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct repl_peers *mgr = (struct repl_peers *)((char *)w -
						       offsetof(struct repl_peers, accept_pause));
	ev_io_start(loop, &mgr->listen_io);
}

void peers_listen_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct repl_peers *mgr = (struct repl_peers *)((char *)w -
						       offsetof(struct repl_peers, listen_io));
	for (int i = 0; i < MAX_ACCEPTS_PER_EVENT; i++) {
		struct sockaddr_storage ss;
		int fd = listen_accept(mgr->listen_fd, &ss);
		if (fd == LISTEN_DRAINED)
			return;
		if (fd < 0) {
			/* Out of descriptors or memory: stop accepting for a
			 * moment instead of spinning on the ready socket. */
			log_warn("replication listener: accept failed, pausing %.0f s",
				 ACCEPT_PAUSE_S);
			ev_io_stop(loop, &mgr->listen_io);
			ev_timer_set(&mgr->accept_pause, ACCEPT_PAUSE_S, 0.);
			ev_timer_start(loop, &mgr->accept_pause);
			return;
		}
		char addr[80];
		sockaddr_string((struct sockaddr *)&ss, sizeof(ss), addr, sizeof(addr));
		if (mgr->anonymous_count >= REPL_PEER_MAX_UNAUTHENTICATED) {
			close(fd);
			peer_refusal_log(mgr, addr, "too many connections still authenticating");
			continue;
		}
		set_nodelay(fd);
		if (peer_link_create(mgr, fd, NULL, addr) != NULL)
			mgr->anonymous_count++;
	}
}

int peers_listen_on(const struct config_addr *addr, int *fd_r, char **error_r)
{
	char *err = NULL;
	*fd_r = listen_tcp(addr, &err);
	if (*fd_r < 0) {
		*error_r = xasprintf("repl_listen %s", err);
		free(err);
		return -1;
	}
	return 0;
}
