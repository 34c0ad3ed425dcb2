/* Peer links: one authenticated protocol connection per pair of nodes.
 *
 * The peer manager reads the `peer = SID HOST:PORT` lines of the
 * configuration and keeps one link to each of those nodes (SPEC.md 2.1):
 * the node with the lower SID connects, the higher one only accepts, so a
 * pair never has two links.  Links authenticate with the cluster secret,
 * run TLS when tls_cert, tls_key and tls_ca are all set, and use COMPRESS
 * DEFLATE.  A link that fails or closes is re-established with exponential
 * backoff; a silent peer is noticed by the protocol's PING keepalive within
 * REPL_PEER_DEAD_TIMEOUT_MS.  An authenticated connection from a peer that
 * already has a link replaces the old link (the peer restarted).
 *
 * The layers above (mailbox masters, replication) use the manager through
 * three things: link up/down callbacks, a dispatch table of command
 * handlers by name, and repl_peers_conn() to send commands on an up link.
 * Commands nobody registered a handler for are answered
 * `BAD [UNKNOWN-COMMAND]` (SPEC.md 5.1).
 *
 * Everything runs on the caller's libev loop; nothing here blocks, except
 * that a peer configured by host name (not by address) is resolved with
 * getaddrinfo() at start-up, and again, rarely, after repeated failures to
 * connect.
 *
 * Callbacks and handlers must not destroy the manager. */
#ifndef REPLICATOR_REPL_PEER_H
#define REPLICATOR_REPL_PEER_H

#include <stdint.h>

#include "lib/buf.h"
#include "lib/config.h"
#include "protocol/protocol.h"

/* Link timing, in one place.  A peer that sends nothing for
 * REPL_PEER_PING_INTERVAL_MS is pinged; one silent for
 * REPL_PEER_DEAD_TIMEOUT_MS is declared dead and its link closed. */
#define REPL_PEER_PING_INTERVAL_MS 1000u
#define REPL_PEER_DEAD_TIMEOUT_MS 3000u
/* TCP connect, then greeting + TLS + authentication, must each finish
 * within these. */
#define REPL_PEER_CONNECT_TIMEOUT_MS 3000u
#define REPL_PEER_HANDSHAKE_TIMEOUT_MS 5000u
/* Reconnect delays: the n-th consecutive failure waits about
 * MIN * 2^n ms, at most MAX, with jitter (repl_peer_backoff_ms()). */
#define REPL_PEER_BACKOFF_MIN_MS 100u
#define REPL_PEER_BACKOFF_MAX_MS 5000u
/* A link must stay up this long for the backoff to start again from MIN:
 * one closed right after authentication (the peer refused our SID) counts
 * as a failure. */
#define REPL_PEER_STABLE_MS 2000u
/* Accepted connections that have not authenticated yet, at most. */
#define REPL_PEER_MAX_UNAUTHENTICATED 32u

enum repl_peer_state {
	REPL_PEER_DOWN,           /* no link: waiting to reconnect, or for the peer */
	REPL_PEER_CONNECTING,     /* TCP connect in progress (we initiate) */
	REPL_PEER_AUTHENTICATING, /* greeting, TLS, AUTH in progress (we initiate) */
	REPL_PEER_UP,             /* authenticated: commands may be sent */
};

struct repl_peers;

struct repl_peers_callbacks {
	/* The link to sid is up; conn stays valid until link_down(sid). */
	void (*link_up)(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn,
			void *ctx);
	/* The link to sid went down (closed, timed out, or replaced by a new
	 * connection, in which case link_up follows at once).  Commands
	 * pending on it have already been failed with PROTO_REPLY_CLOSED. */
	void (*link_down)(struct repl_peers *peers, uint32_t sid, const char *reason, void *ctx);
	/* Untagged lines other than HELLO and BYE from an up peer.  May be NULL. */
	void (*untagged)(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn,
			 const struct proto_cmd *line, void *ctx);
	/* The output queue to sid fell below the low-water mark.  May be NULL. */
	void (*drained)(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn,
			void *ctx);
};

/* A command from an up peer.  The handler answers it on conn with
 * proto_conn_reply() (now, or later while the link is up: a link_down for
 * sid means the answer can no longer be sent).  cmd is valid only during
 * the call. */
typedef void repl_peer_cmd_handler(struct repl_peers *peers, uint32_t sid,
				   struct proto_conn *conn, const struct proto_cmd *cmd,
				   void *ctx);

/* Reads the cluster secret, binds cfg->repl_listen and starts connecting to
 * the peers with a higher SID.  With no peer configured it does nothing
 * (no listener, no secret needed).  cb may be NULL; cfg must outlive the
 * manager.  Returns 0, or -1 with a one-line *error_r (caller frees) for a
 * missing, empty, too short or world-readable secret file, an incomplete
 * TLS setting, or a listen address that cannot be bound. */
int repl_peers_create(struct ev_loop *loop, const struct config *cfg,
		      const struct repl_peers_callbacks *cb, void *ctx,
		      struct repl_peers **peers_r, char **error_r);
/* SIGHUP: cfg (which must outlive the manager, like the first one) is now
 * the configuration.  Peers no longer in it have their links closed
 * (link_down is called for an up one); new peers get links as at start;
 * a peer whose address changed keeps an up link and is reached at the new
 * address next time; new links use cfg's TLS files.  The listener, the
 * secret and whether TLS is on stay as they were.  Does nothing on a
 * manager created without peers. */
void repl_peers_reload(struct repl_peers *mgr, const struct config *cfg);
/* Closes every link without calling link_down, and the listener. */
void repl_peers_destroy(struct repl_peers **peers);

/* Registers the handler of command name (case-insensitive; at most
 * PROTO_MAX_NAME characters), replacing an earlier one. */
void repl_peers_register(struct repl_peers *peers, const char *name,
			 repl_peer_cmd_handler *handler, void *ctx);

/* The configured peers, in configuration order: i in [0, count). */
size_t repl_peers_count(const struct repl_peers *peers);
uint32_t repl_peers_sid(const struct repl_peers *peers, size_t i);
/* This node's own id (node_id). */
uint32_t repl_peers_my_sid(const struct repl_peers *peers);
/* The state of peer sid, and since when the link is up, or not up
 * (clock_mono_ms() of the last change between UP and the other states;
 * start-up counts as a change).  An unknown sid is REPL_PEER_DOWN with
 * *since_ms_r = 0.  since_ms_r may be NULL. */
enum repl_peer_state repl_peers_state(const struct repl_peers *peers, uint32_t sid,
				      uint64_t *since_ms_r);
/* The connection of an up peer, or NULL.  Valid until its link_down. */
struct proto_conn *repl_peers_conn(const struct repl_peers *peers, uint32_t sid);
/* Number of peers whose link is up. */
size_t repl_peers_up_count(const struct repl_peers *peers);

/* "down", "connecting", "authenticating" or "up". */
const char *repl_peer_state_name(enum repl_peer_state state);

/* Appends the STATUS lines about the links ("peers: 2", "peer.2: up",
 * "peer.2.since_ms: 1200", ...; README lists them) to out. */
void repl_peers_status(const struct repl_peers *peers, struct buf *out);

/* The delay before reconnect attempt number `failures` (0 for the first
 * retry): REPL_PEER_BACKOFF_MIN_MS doubled per failure, capped at
 * REPL_PEER_BACKOFF_MAX_MS, then scaled by a jitter factor in [1/2, 1]
 * taken from rnd (any 32-bit random value).  Pure; exposed for tests. */
unsigned repl_peer_backoff_ms(unsigned failures, uint32_t rnd);

#endif
