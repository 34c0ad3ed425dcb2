/* Peer links (see repl-peer.h): connecting, accepting, identifying,
 * reconnecting with backoff, and dispatching the peers' commands.
 *
 * Every protocol connection has a struct link.  A link we initiate knows
 * its peer from the start; an accepted link is anonymous until it has
 * authenticated, then its SID names the peer (and a link from a SID we don't
 * know, or from a SID we should have connected to ourselves, is closed with
 * `* BYE [SID]`).  A peer holds at most one link: while we initiate, the
 * one being set up or up; while we accept, the one up.
 *
 * Per peer the state goes DOWN -> CONNECTING -> AUTHENTICATING -> UP when
 * we initiate, and DOWN <-> UP when we accept.  One ev_timer per peer is
 * the backoff wait in DOWN and the connect deadline in CONNECTING; the
 * handshake deadline and the keepalive are the protocol connection's own.
 *
 * Logging: a state change is one line; a failure that repeats the previous
 * one of the same peer is logged at debug level only, so a peer that stays
 * unreachable for an hour does not fill the log.  Refused incoming
 * connections are logged once per reason per minute. */
#include "replicator/repl-peer.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "lib/arr.h"
#include "lib/clock.h"
#include "lib/file.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#define LISTEN_BACKLOG 64
#define MAX_ACCEPTS_PER_EVENT 16
#define ACCEPT_PAUSE_S 1.0         /* after EMFILE and friends */
#define REFUSAL_SLOTS 16
#define REFUSAL_LOG_INTERVAL_MS 60000
#define REASON_MAX 200
/* A peer given by host name is resolved again (blocking the loop, so
 * rarely) only after this many failed attempts and this long since the
 * last resolution.  Addresses are never resolved again. */
#define RESOLVE_AFTER_FAILURES 3
#define RESOLVE_INTERVAL_MS 30000
/* Addresses of a name kept and tried in turn, one per attempt. */
#define MAX_ADDRS 4

struct link;

struct peer {
	struct repl_peers *mgr;
	uint32_t sid;
	const char *host;  /* borrowed from the config */
	uint16_t port;
	struct sockaddr_storage sa[MAX_ADDRS]; /* resolved addresses */
	socklen_t sa_len[MAX_ADDRS];
	unsigned n_sa, cur_sa; /* n_sa 0: not resolved yet */
	bool numeric;      /* host is an address, not a name */
	uint64_t resolved_ms;
	bool we_connect;   /* our SID is the lower one */
	enum repl_peer_state state;
	uint64_t since_ms;
	struct link *link; /* AUTHENTICATING or UP */
	int connect_fd;    /* CONNECTING, else -1 */
	ev_io connect_io;
	ev_timer timer;
	unsigned failures; /* consecutive, since a link was last up for long */
	bool quiet;        /* the last link died right after coming up */
	uint64_t link_ups;
	char last_logged[REASON_MAX]; /* the last failure logged at warn */
	char reason[REASON_MAX];      /* why the link is not up */
};

struct link {
	struct repl_peers *mgr;
	struct link *prev, *next;
	struct proto_conn *conn;
	struct peer *peer;  /* NULL while an accepted link is anonymous */
	bool refused;       /* we said BYE: the close is already logged */
	char addr[64];
};

struct handler {
	char name[PROTO_MAX_NAME + 1];
	repl_peer_cmd_handler *func;
	void *ctx;
};

struct refusal {
	char reason[REASON_MAX];
	uint64_t logged_ms;
	unsigned suppressed;
};

struct repl_peers {
	struct ev_loop *loop;
	const struct config *cfg;
	struct repl_peers_callbacks cb;
	void *ctx;
	struct proto_conn_settings conn_set; /* template for every link */
	unsigned char *secret;
	size_t secret_len;
	int listen_fd;
	ev_io listen_io;
	ev_timer accept_pause;
	/* One allocation per peer: its watchers must not move when SIGHUP
	 * adds or removes peers (repl_peers_reload()). */
	struct peer **peers;
	size_t peer_count;
	struct link *links;
	size_t anonymous_count;
	ARRAY(struct handler) handlers;
	struct refusal refusals[REFUSAL_SLOTS];
	uint64_t rng;
};

static void peer_schedule_connect(struct peer *peer);

/* ------------------------------------------------------------------ */
/* Small helpers */

const char *repl_peer_state_name(enum repl_peer_state state)
{
	switch (state) {
	case REPL_PEER_DOWN:
		return "down";
	case REPL_PEER_CONNECTING:
		return "connecting";
	case REPL_PEER_AUTHENTICATING:
		return "authenticating";
	case REPL_PEER_UP:
		return "up";
	}
	return "?";
}

unsigned repl_peer_backoff_ms(unsigned failures, uint32_t rnd)
{
	unsigned base = REPL_PEER_BACKOFF_MIN_MS;
	for (unsigned i = 0; i < failures && base < REPL_PEER_BACKOFF_MAX_MS; i++)
		base *= 2;
	if (base > REPL_PEER_BACKOFF_MAX_MS)
		base = REPL_PEER_BACKOFF_MAX_MS;
	/* Jitter in [base/2, base] so that nodes restarted together do not
	 * retry in lockstep. */
	unsigned half = base / 2;
	return half + (unsigned)(rnd % (uint32_t)(base - half + 1));
}

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

static struct peer *peer_find(const struct repl_peers *mgr, uint32_t sid)
{
	for (size_t i = 0; i < mgr->peer_count; i++) {
		if (mgr->peers[i]->sid == sid)
			return mgr->peers[i];
	}
	return NULL;
}

/* since_ms counts from the last time the link went up or down: the
 * connecting and authenticating states are steps of being down, and a peer
 * that stays unreachable should show how long it has been down, not how
 * long ago the last attempt began. */
static void peer_set_state(struct peer *peer, enum repl_peer_state state)
{
	if ((state == REPL_PEER_UP) != (peer->state == REPL_PEER_UP))
		peer->since_ms = clock_mono_ms();
	peer->state = state;
}

/* Records why the link to peer is not up; logs it at warn level unless it
 * repeats the last failure logged for this peer. */
static void peer_failure(struct peer *peer, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void peer_failure(struct peer *peer, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(peer->reason, sizeof(peer->reason), fmt, ap);
	va_end(ap);
	if (strcmp(peer->reason, peer->last_logged) == 0) {
		log_debug("peer %u: %s (again)", peer->sid, peer->reason);
		return;
	}
	snprintf(peer->last_logged, sizeof(peer->last_logged), "%s", peer->reason);
	log_warnx("peer %u: %s", peer->sid, peer->reason);
}

/* Logs a refused incoming connection, at most once a minute per reason. */
static void refusal_log(struct repl_peers *mgr, const char *addr, const char *reason)
{
	uint64_t now = clock_mono_ms();
	struct refusal *slot = NULL, *oldest = &mgr->refusals[0];
	for (size_t i = 0; i < REFUSAL_SLOTS; i++) {
		struct refusal *r = &mgr->refusals[i];
		if (strcmp(r->reason, reason) == 0) {
			slot = r;
			break;
		}
		if (r->logged_ms < oldest->logged_ms)
			oldest = r;
	}
	if (slot != NULL && slot->logged_ms != 0 &&
	    now - slot->logged_ms < REFUSAL_LOG_INTERVAL_MS) {
		slot->suppressed++;
		log_debug("refused peer connection from %s: %s", addr, reason);
		return;
	}
	if (slot == NULL) {
		slot = oldest;
		snprintf(slot->reason, sizeof(slot->reason), "%s", reason);
		slot->suppressed = 0;
	}
	if (slot->suppressed > 0)
		log_warnx("refused peer connection from %s: %s (%u more like it not logged)", addr,
			  reason, slot->suppressed);
	else
		log_warnx("refused peer connection from %s: %s", addr, reason);
	slot->suppressed = 0;
	slot->logged_ms = now != 0 ? now : 1;
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
/* Links */

static void link_free(struct link *link)
{
	struct repl_peers *mgr = link->mgr;
	if (link->prev != NULL)
		link->prev->next = link->next;
	else
		mgr->links = link->next;
	if (link->next != NULL)
		link->next->prev = link->prev;
	free(link);
}

/* The link of an up peer is gone (closed or replaced): tell the layers.
 *
 * A link that dies within REPL_PEER_STABLE_MS of coming up (the peer
 * authenticates us, then refuses our SID, say) counts as a failed attempt:
 * the backoff keeps growing, and from the second such loss in a row on,
 * neither the ups nor the downs are logged above debug level (the reason
 * can vary: a BYE, or a reset that overtook it). */
static void peer_link_lost(struct peer *peer, const char *reason)
{
	struct repl_peers *mgr = peer->mgr;
	bool was_up = peer->state == REPL_PEER_UP;
	peer->link = NULL;
	if (was_up) {
		bool brief = clock_mono_ms() - peer->since_ms < REPL_PEER_STABLE_MS;
		snprintf(peer->reason, sizeof(peer->reason), "%s", reason);
		if (brief && peer->quiet) {
			log_debug("peer %u: link down again: %s", peer->sid, reason);
		} else {
			log_warnx("peer %u: link down: %s%s", peer->sid, reason,
				  brief ? " (right after it came up)" : "");
			snprintf(peer->last_logged, sizeof(peer->last_logged), "%s", reason);
		}
		peer->quiet = brief;
		if (!brief)
			peer->failures = 0;
	} else {
		peer_failure(peer, "%s", reason);
	}
	if (peer->we_connect) {
		peer_schedule_connect(peer);
	} else {
		peer_set_state(peer, REPL_PEER_DOWN);
	}
	if (was_up && mgr->cb.link_down != NULL)
		mgr->cb.link_down(mgr, peer->sid, reason, mgr->ctx);
}

static void peer_link_up(struct peer *peer, struct link *link)
{
	struct repl_peers *mgr = peer->mgr;
	peer->link = link;
	link->peer = peer;
	peer->link_ups++;
	peer->reason[0] = '\0';
	peer_set_state(peer, REPL_PEER_UP);
	if (peer->quiet)
		log_debug("peer %u: link up again (%s)", peer->sid, link->addr);
	else
		log_info("peer %u: link up (%s, %s%s)", peer->sid, link->addr,
			 peer->we_connect ? "we connected" : "it connected",
			 proto_conn_is_tls(link->conn) ? ", TLS" : "");
	if (mgr->cb.link_up != NULL)
		mgr->cb.link_up(mgr, peer->sid, link->conn, mgr->ctx);
}

/* An accepted link authenticated: find whose it is. */
static void link_identify(struct link *link)
{
	struct repl_peers *mgr = link->mgr;
	uint32_t sid = proto_conn_peer_sid(link->conn);
	struct peer *peer = peer_find(mgr, sid);
	char reason[REASON_MAX];
	if (peer == NULL) {
		snprintf(reason, sizeof(reason), "node %u is not a configured peer", sid);
		proto_conn_bye(link->conn, "SID", "unknown node id");
	} else if (peer->we_connect) {
		snprintf(reason, sizeof(reason),
			 "node %u connected, but the lower SID (this node) connects", sid);
		proto_conn_bye(link->conn, "SID", "duplicate link: the lower SID connects");
	} else {
		mgr->anonymous_count--;
		if (peer->link != NULL) {
			/* The peer restarted, or our side missed that its old
			 * link died: the new one wins. */
			struct link *old = peer->link;
			proto_conn_destroy(&old->conn);
			link_free(old);
			peer_link_lost(peer, "replaced by a new connection from the peer");
		}
		peer_link_up(peer, link);
		return;
	}
	link->refused = true;
	refusal_log(mgr, link->addr, reason);
}

static void link_ready_cb(struct proto_conn *conn, void *ctx)
{
	struct link *link = ctx;
	if (link->peer == NULL)
		link_identify(link);
	else
		peer_link_up(link->peer, link);
}

static void link_command_cb(struct proto_conn *conn, const struct proto_cmd *cmd, void *ctx)
{
	struct link *link = ctx;
	struct repl_peers *mgr = link->mgr;
	struct peer *peer = link->peer;
	if (peer == NULL || peer->link != link || peer->state != REPL_PEER_UP) {
		proto_conn_reply(conn, cmd->tag, "NO", "TRYLATER", "link not established");
		return;
	}
	for (size_t i = 0; i < mgr->handlers.count; i++) {
		struct handler *h = &mgr->handlers.items[i];
		if (strcasecmp(h->name, cmd->name) == 0) {
			h->func(mgr, peer->sid, conn, cmd, h->ctx);
			return;
		}
	}
	proto_conn_reply(conn, cmd->tag, "BAD", "UNKNOWN-COMMAND",
			 proto_cmd_info_find(cmd->name) != NULL ?
			 "command not implemented by this node" : "unknown command");
}

static void link_untagged_cb(struct proto_conn *conn, const struct proto_cmd *line, void *ctx)
{
	struct link *link = ctx;
	struct repl_peers *mgr = link->mgr;
	if (link->peer != NULL && link->peer->link == link && mgr->cb.untagged != NULL)
		mgr->cb.untagged(mgr, link->peer->sid, conn, line, mgr->ctx);
}

static void link_drained_cb(struct proto_conn *conn, void *ctx)
{
	struct link *link = ctx;
	struct repl_peers *mgr = link->mgr;
	if (link->peer != NULL && link->peer->link == link && mgr->cb.drained != NULL)
		mgr->cb.drained(mgr, link->peer->sid, conn, mgr->ctx);
}

static void link_closed_cb(struct proto_conn *conn, const char *reason, void *ctx)
{
	struct link *link = ctx;
	struct repl_peers *mgr = link->mgr;
	struct peer *peer = link->peer;
	if (peer == NULL) {
		mgr->anonymous_count--;
		if (!link->refused)
			refusal_log(mgr, link->addr, reason);
		link_free(link);
		return;
	}
	bool current = peer->link == link;
	link_free(link);
	if (current)
		peer_link_lost(peer, reason);
}

/* Read at the HELLO, so a peer's address changed by SIGHUP counts at once. */
static const char *link_peer_host_cb(struct proto_conn *conn, uint32_t sid, void *ctx)
{
	struct link *link = ctx;
	struct peer *peer = peer_find(link->mgr, sid);
	return peer != NULL ? peer->host : NULL;
}

static const struct proto_conn_callbacks link_callbacks = {
	.peer_host = link_peer_host_cb,
	.ready = link_ready_cb,
	.command = link_command_cb,
	.untagged = link_untagged_cb,
	.drained = link_drained_cb,
	.closed = link_closed_cb,
};

/* Wraps a connected socket in a protocol connection.  peer is NULL for an
 * accepted socket.  Returns the link, or NULL (fd closed, failure logged). */
static struct link *link_create(struct repl_peers *mgr, int fd, struct peer *peer,
				const char *addr)
{
	struct link *link = xcalloc(1, sizeof(*link));
	link->mgr = mgr;
	link->peer = peer;
	snprintf(link->addr, sizeof(link->addr), "%s", addr);
	struct proto_conn_settings set = mgr->conn_set;
	set.initiator = peer != NULL;
	set.expected_peer_sid = peer != NULL ? peer->sid : 0;
	const char *error;
	link->conn = proto_conn_create(mgr->loop, fd, &set, &link_callbacks, link, &error);
	if (link->conn == NULL) {
		/* proto_conn_create() leaves fd to us when TLS setup fails. */
		close(fd);
		if (peer != NULL)
			peer_failure(peer, "cannot set up the link: %s", error);
		else
			refusal_log(mgr, addr, error);
		free(link);
		return NULL;
	}
	link->next = mgr->links;
	if (mgr->links != NULL)
		mgr->links->prev = link;
	mgr->links = link;
	return link;
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
	struct link *link = link_create(mgr, fd, peer, addr);
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
static int peer_resolve(struct peer *peer)
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

static void peer_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct peer *peer = (struct peer *)((char *)w - offsetof(struct peer, timer));
	if (peer->state == REPL_PEER_DOWN)
		peer_connect(peer);
	else if (peer->state == REPL_PEER_CONNECTING)
		peer_connect_failed(peer, "timed out connecting to", 0);
}

/* DOWN, and a connection attempt after the backoff delay. */
static void peer_schedule_connect(struct peer *peer)
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

static void accept_pause_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct repl_peers *mgr = (struct repl_peers *)((char *)w -
						       offsetof(struct repl_peers, accept_pause));
	ev_io_start(loop, &mgr->listen_io);
}

static void listen_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct repl_peers *mgr = (struct repl_peers *)((char *)w -
						       offsetof(struct repl_peers, listen_io));
	for (int i = 0; i < MAX_ACCEPTS_PER_EVENT; i++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int fd = accept4(mgr->listen_fd, (struct sockaddr *)&ss, &len,
				 SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
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
		sockaddr_string((struct sockaddr *)&ss, len, addr, sizeof(addr));
		if (mgr->anonymous_count >= REPL_PEER_MAX_UNAUTHENTICATED) {
			close(fd);
			refusal_log(mgr, addr, "too many connections still authenticating");
			continue;
		}
		set_nodelay(fd);
		if (link_create(mgr, fd, NULL, addr) != NULL)
			mgr->anonymous_count++;
	}
}

static int listen_on(const struct config_addr *addr, int *fd_r, char **error_r)
{
	struct addrinfo hints, *res = NULL;
	char port[8];
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	snprintf(port, sizeof(port), "%u", addr->port);
	int gai = getaddrinfo(addr->host, port, &hints, &res);
	if (gai != 0) {
		*error_r = xasprintf("repl_listen %s:%u: %s", addr->host, addr->port,
				     gai_strerror(gai));
		return -1;
	}
	int err = 0;
	for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
		int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			err = errno;
			continue;
		}
		int one = 1;
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, LISTEN_BACKLOG) < 0) {
			err = errno;
			close(fd);
			continue;
		}
		freeaddrinfo(res);
		*fd_r = fd;
		return 0;
	}
	freeaddrinfo(res);
	*error_r = xasprintf("repl_listen %s:%u: cannot listen: %s", addr->host, addr->port,
			     strerror(err));
	return -1;
}

/* ------------------------------------------------------------------ */
/* Set-up */

/* TLS on peer links needs all three files, readable. */
static int tls_check(const struct config *cfg, bool *tls_r, char **error_r)
{
	*tls_r = false;
	if (cfg->tls_ca == NULL)
		return 0;
	if (cfg->tls_cert == NULL || cfg->tls_key == NULL) {
		*error_r = xstrdup("tls_ca is set: peer links need tls_cert and tls_key too");
		return -1;
	}
	const char *files[] = { cfg->tls_cert, cfg->tls_key, cfg->tls_ca };
	for (size_t i = 0; i < 3; i++) {
		if (access(files[i], R_OK) < 0) {
			*error_r = xasprintf("%s: %s", files[i], strerror(errno));
			return -1;
		}
	}
	*tls_r = true;
	return 0;
}

static struct peer *peer_new(struct repl_peers *mgr, const struct config_peer *cp)
{
	struct peer *peer = xcalloc(1, sizeof(*peer));
	peer->mgr = mgr;
	peer->sid = cp->sid;
	peer->host = cp->addr.host;
	peer->port = cp->addr.port;
	peer->we_connect = mgr->cfg->node_id < cp->sid;
	peer->state = REPL_PEER_DOWN;
	peer->since_ms = clock_mono_ms();
	peer->connect_fd = -1;
	snprintf(peer->reason, sizeof(peer->reason), "%s",
		 peer->we_connect ? "not connected yet" : "waiting for the peer to connect");
	ev_timer_init(&peer->timer, peer_timer_cb, 0., 0.);
	if (peer->we_connect) {
		/* Resolve now, at start-up (or reload), where blocking is
		 * harmless; a failure is retried on each attempt. */
		(void)peer_resolve(peer);
		ev_timer_start(mgr->loop, &peer->timer); /* connect at once */
	}
	return peer;
}

/* Stops peer's watchers and frees it; its links must be gone already. */
static void peer_free(struct repl_peers *mgr, struct peer *peer)
{
	ev_timer_stop(mgr->loop, &peer->timer);
	ev_io_stop(mgr->loop, &peer->connect_io);
	if (peer->connect_fd >= 0)
		close(peer->connect_fd);
	free(peer);
}

int repl_peers_create(struct ev_loop *loop, const struct config *cfg,
		      const struct repl_peers_callbacks *cb, void *ctx,
		      struct repl_peers **peers_r, char **error_r)
{
	struct repl_peers *mgr = xcalloc(1, sizeof(*mgr));
	mgr->loop = loop;
	mgr->cfg = cfg;
	if (cb != NULL)
		mgr->cb = *cb;
	mgr->ctx = ctx;
	mgr->listen_fd = -1;
	mgr->rng = (clock_mono_us() ^ ((uint64_t)cfg->node_id << 32) ^ (uint64_t)getpid()) | 1;
	ev_timer_init(&mgr->accept_pause, accept_pause_cb, ACCEPT_PAUSE_S, 0.);
	*peers_r = mgr;
	if (cfg->peers.count == 0)
		return 0;

	bool tls;
	if (cfg->repl_listen.host == NULL) {
		*error_r = xstrdup("peers are configured but repl_listen is missing");
		goto fail;
	}
	if (cfg->cluster_secret_file == NULL) {
		*error_r = xstrdup("peers are configured but cluster_secret_file is missing");
		goto fail;
	}
	if (file_read_secret("cluster_secret_file", cfg->cluster_secret_file, CONFIG_SECRET_MIN,
			     CONFIG_SECRET_MAX, &mgr->secret, &mgr->secret_len, error_r) < 0 ||
	    tls_check(cfg, &tls, error_r) < 0 ||
	    listen_on(&cfg->repl_listen, &mgr->listen_fd, error_r) < 0)
		goto fail;

	struct proto_conn_settings *set = &mgr->conn_set;
	set->my_sid = cfg->node_id;
	set->secret = mgr->secret;
	set->secret_len = mgr->secret_len;
	/* TLS from the first byte: the plain greeting of STARTTLS would only
	 * add a round trip and a downgrade check (SPEC.md 2.1). */
	set->tls = tls ? PROTO_TLS_IMPLICIT : PROTO_TLS_NONE;
	set->tls_cert = cfg->tls_cert;
	set->tls_key = cfg->tls_key;
	set->tls_ca = cfg->tls_ca;
	set->compress = true;
	proto_parser_settings_default(&set->limits);
	if (cfg->max_message_size > set->limits.max_literal)
		set->limits.max_literal = (size_t)cfg->max_message_size;
	set->handshake_timeout_ms = REPL_PEER_HANDSHAKE_TIMEOUT_MS;
	set->ping_interval_ms = REPL_PEER_PING_INTERVAL_MS;
	set->dead_timeout_ms = REPL_PEER_DEAD_TIMEOUT_MS;

	ev_io_init(&mgr->listen_io, listen_cb, mgr->listen_fd, EV_READ);
	ev_io_start(loop, &mgr->listen_io);

	mgr->peer_count = cfg->peers.count;
	mgr->peers = xcalloc(mgr->peer_count, sizeof(*mgr->peers));
	for (size_t i = 0; i < mgr->peer_count; i++)
		mgr->peers[i] = peer_new(mgr, &cfg->peers.items[i]);
	log_info("replication: listening on %s:%u, %zu peers%s", cfg->repl_listen.host,
		 cfg->repl_listen.port, mgr->peer_count,
		 tls ? ", TLS" : cfg->tls_cert != NULL ? " (no tls_ca: links not encrypted)" : "");
	return 0;
fail:
	*peers_r = NULL;
	repl_peers_destroy(&mgr);
	return -1;
}

void repl_peers_destroy(struct repl_peers **peersp)
{
	struct repl_peers *mgr = *peersp;
	if (mgr == NULL)
		return;
	*peersp = NULL;
	while (mgr->links != NULL) {
		struct link *link = mgr->links;
		proto_conn_destroy(&link->conn);
		link_free(link);
	}
	for (size_t i = 0; i < mgr->peer_count; i++)
		peer_free(mgr, mgr->peers[i]);
	free(mgr->peers);
	ev_timer_stop(mgr->loop, &mgr->accept_pause);
	if (mgr->listen_fd >= 0) {
		ev_io_stop(mgr->loop, &mgr->listen_io);
		close(mgr->listen_fd);
	}
	if (mgr->secret != NULL) {
		OPENSSL_cleanse(mgr->secret, mgr->secret_len);
		free(mgr->secret);
	}
	ARRAY_FREE(&mgr->handlers);
	free(mgr);
}

/* ------------------------------------------------------------------ */
/* Reload (SIGHUP) */

/* peer is no longer configured: close its links, tell the layers it is
 * down, forget it. */
static void peer_remove(struct repl_peers *mgr, size_t i)
{
	struct peer *peer = mgr->peers[i];
	bool was_up = peer->state == REPL_PEER_UP;
	mgr->peers[i] = mgr->peers[--mgr->peer_count];
	struct link *link = mgr->links;
	while (link != NULL) {
		struct link *next = link->next;
		if (link->peer == peer) {
			proto_conn_destroy(&link->conn);
			link_free(link);
		}
		link = next;
	}
	peer->link = NULL;
	log_info("peer %u: removed from the configuration%s", peer->sid,
		 was_up ? ", link closed" : "");
	if (was_up && mgr->cb.link_down != NULL)
		mgr->cb.link_down(mgr, peer->sid, "removed from the configuration", mgr->ctx);
	peer_free(mgr, peer);
}

void repl_peers_reload(struct repl_peers *mgr, const struct config *cfg)
{
	mgr->cfg = cfg;
	if (mgr->listen_fd < 0)
		return; /* started without peers: nothing runs to reload */
	/* New links use the new TLS files; up links keep their session. */
	mgr->conn_set.tls_cert = cfg->tls_cert;
	mgr->conn_set.tls_key = cfg->tls_key;
	mgr->conn_set.tls_ca = cfg->tls_ca;
	for (size_t i = mgr->peer_count; i-- > 0;) {
		bool kept = false;
		for (size_t j = 0; j < cfg->peers.count && !kept; j++)
			kept = cfg->peers.items[j].sid == mgr->peers[i]->sid;
		if (!kept)
			peer_remove(mgr, i);
	}
	for (size_t j = 0; j < cfg->peers.count; j++) {
		const struct config_peer *cp = &cfg->peers.items[j];
		struct peer *peer = peer_find(mgr, cp->sid);
		if (peer == NULL) {
			mgr->peers = xreallocarray(mgr->peers, mgr->peer_count + 1, sizeof(*mgr->peers));
			mgr->peers[mgr->peer_count++] = peer_new(mgr, cp);
			log_info("peer %u: added (%s:%u)", cp->sid, cp->addr.host, cp->addr.port);
			continue;
		}
		bool moved = strcmp(peer->host, cp->addr.host) != 0 || peer->port != cp->addr.port;
		/* The old config's strings go away: borrow the new ones. */
		peer->host = cp->addr.host;
		peer->port = cp->addr.port;
		if (moved) {
			/* An up link stays; the next connection goes to the
			 * new address. */
			peer->n_sa = 0;
			peer->cur_sa = 0;
			if (peer->we_connect)
				(void)peer_resolve(peer);
			log_info("peer %u: address now %s:%u", cp->sid, cp->addr.host, cp->addr.port);
		}
	}
}

/* ------------------------------------------------------------------ */
/* Public queries */

void repl_peers_register(struct repl_peers *mgr, const char *name,
			 repl_peer_cmd_handler *handler, void *ctx)
{
	for (size_t i = 0; i < mgr->handlers.count; i++) {
		struct handler *h = &mgr->handlers.items[i];
		if (strcasecmp(h->name, name) == 0) {
			h->func = handler;
			h->ctx = ctx;
			return;
		}
	}
	struct handler h;
	memset(&h, 0, sizeof(h));
	snprintf(h.name, sizeof(h.name), "%s", name);
	h.func = handler;
	h.ctx = ctx;
	ARRAY_PUSH(&mgr->handlers, h);
}

size_t repl_peers_count(const struct repl_peers *mgr)
{
	return mgr->peer_count;
}

uint32_t repl_peers_sid(const struct repl_peers *mgr, size_t i)
{
	return i < mgr->peer_count ? mgr->peers[i]->sid : 0;
}

enum repl_peer_state repl_peers_state(const struct repl_peers *mgr, uint32_t sid,
				      uint64_t *since_ms_r)
{
	const struct peer *peer = peer_find(mgr, sid);
	if (since_ms_r != NULL)
		*since_ms_r = peer != NULL ? peer->since_ms : 0;
	return peer != NULL ? peer->state : REPL_PEER_DOWN;
}

struct proto_conn *repl_peers_conn(const struct repl_peers *mgr, uint32_t sid)
{
	const struct peer *peer = peer_find(mgr, sid);
	if (peer == NULL || peer->state != REPL_PEER_UP || peer->link == NULL)
		return NULL;
	return peer->link->conn;
}

size_t repl_peers_up_count(const struct repl_peers *mgr)
{
	size_t n = 0;
	for (size_t i = 0; i < mgr->peer_count; i++)
		n += mgr->peers[i]->state == REPL_PEER_UP;
	return n;
}

void repl_peers_status(const struct repl_peers *mgr, struct buf *out)
{
	uint64_t now = clock_mono_ms();
	buf_appendf(out, "peers: %zu\n", mgr->peer_count);
	buf_appendf(out, "peers_up: %zu\n", repl_peers_up_count(mgr));
	for (size_t i = 0; i < mgr->peer_count; i++) {
		const struct peer *p = mgr->peers[i];
		bool up = p->state == REPL_PEER_UP && p->link != NULL;
		buf_appendf(out, "peer.%u: %s\n", p->sid, repl_peer_state_name(p->state));
		buf_appendf(out, "peer.%u.since_ms: %llu\n", p->sid,
			    (unsigned long long)(now - p->since_ms));
		buf_appendf(out, "peer.%u.addr: %s:%u\n", p->sid, p->host, p->port);
		buf_appendf(out, "peer.%u.role: %s\n", p->sid, p->we_connect ? "connect" : "accept");
		buf_appendf(out, "peer.%u.tls: %s\n", p->sid,
			    up && proto_conn_is_tls(p->link->conn) ? "yes" : "no");
		buf_appendf(out, "peer.%u.compress: %s\n", p->sid,
			    up && proto_conn_is_compressed(p->link->conn) ? "yes" : "no");
		buf_appendf(out, "peer.%u.link_ups: %llu\n", p->sid, (unsigned long long)p->link_ups);
		if (!up && p->reason[0] != '\0')
			buf_appendf(out, "peer.%u.reason: %s\n", p->sid, p->reason);
	}
}
