/* What the files of the peer links share (repl-peer.c: the peers' state,
 * set-up, reload and queries; repl-peer-link.c: the links;
 * repl-peer-connect.c: connecting and accepting).  See repl-peer.c for the
 * states of a peer and of a link. */
#ifndef REPLICATOR_REPL_PEER_PRIVATE_H
#define REPLICATOR_REPL_PEER_PRIVATE_H

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "lib/arr.h"
#include "replicator/repl-peer.h"

#define ACCEPT_PAUSE_S 1.0         /* after EMFILE and friends */
#define REFUSAL_SLOTS 16
#define REASON_MAX 200
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

/* repl-peer.c */
struct peer *peer_find(const struct repl_peers *mgr, uint32_t sid);
void peer_set_state(struct peer *peer, enum repl_peer_state state);
/* Records why the link to peer is not up; logs it at warn level unless it
 * repeats the last failure logged for this peer. */
void peer_failure(struct peer *peer, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Logs a refused incoming connection, at most once a minute per reason. */
void peer_refusal_log(struct repl_peers *mgr, const char *addr, const char *reason);

/* repl-peer-link.c */
/* Wraps a connected socket in a protocol connection.  peer is NULL for an
 * accepted socket.  Returns the link, or NULL (fd closed, failure logged). */
struct link *peer_link_create(struct repl_peers *mgr, int fd, struct peer *peer,
			      const char *addr);
void peer_link_free(struct link *link);

/* repl-peer-connect.c */
/* DOWN, and a connection attempt after the backoff delay. */
void peer_schedule_connect(struct peer *peer);
/* Resolves the peer's host into peer->sa; 0, or -1 with the reason
 * recorded and the old addresses kept. */
int peer_resolve(struct peer *peer);
void peer_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
void peers_listen_cb(struct ev_loop *loop, ev_io *w, int revents);
void peers_accept_pause_cb(struct ev_loop *loop, ev_timer *w, int revents);
int peers_listen_on(const struct config_addr *addr, int *fd_r, char **error_r);

#endif
