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
 * connections are logged once per reason per minute.
 *
 * This file holds the peers' state, set-up, reload and queries; the links
 * and their callbacks are in repl-peer-link.c, connecting and accepting in
 * repl-peer-connect.c (repl-peer-private.h is what they share). */
#include "replicator/repl-peer-private.h"

#include <errno.h>
#include <ev.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "lib/clock.h"
#include "lib/file.h"
#include "lib/log.h"
#include "lib/xalloc.h"

#define REFUSAL_LOG_INTERVAL_MS 60000

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

struct peer *peer_find(const struct repl_peers *mgr, uint32_t sid)
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
void peer_set_state(struct peer *peer, enum repl_peer_state state)
{
	if ((state == REPL_PEER_UP) != (peer->state == REPL_PEER_UP))
		peer->since_ms = clock_mono_ms();
	peer->state = state;
}

/* Records why the link to peer is not up; logs it at warn level unless it
 * repeats the last failure logged for this peer. */
void peer_failure(struct peer *peer, const char *fmt, ...)
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
void peer_refusal_log(struct repl_peers *mgr, const char *addr, const char *reason)
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
	ev_timer_init(&mgr->accept_pause, peers_accept_pause_cb, ACCEPT_PAUSE_S, 0.);
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
	    peers_listen_on(&cfg->repl_listen, &mgr->listen_fd, error_r) < 0)
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

	ev_io_init(&mgr->listen_io, peers_listen_cb, mgr->listen_fd, EV_READ);
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
		peer_link_free(link);
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
			peer_link_free(link);
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

uint32_t repl_peers_my_sid(const struct repl_peers *mgr)
{
	return mgr->conn_set.my_sid;
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
