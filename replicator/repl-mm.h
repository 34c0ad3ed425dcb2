/* Mailbox masters on a running node: the state machine of mailbox-master/
 * (mm.h) driven by the real peer links.
 *
 * repl-mm owns one mm_node per daemon.  It feeds it the link up/down events
 * of the peer manager (repl-peer.h), the `MM` commands peers send (SPEC.md
 * 9.6: `TAG MM <message>`, acknowledged with OK at once), the time (a 50 ms
 * libev timer, clock_mono_ms()), and local requests for the master of a
 * granule.  It sends the machine's messages on the up link to the named
 * peer (dropped when that link is down: the machine retries) and logs root
 * and master changes at info level.
 *
 * Typical use in starlingd:
 *
 *   mm = repl_mm_create(loop, cfg);
 *   repl_peers_create(loop, cfg, repl_mm_peer_callbacks(), mm, &peers, ...);
 *   repl_mm_attach(mm, peers);
 *   ...
 *   repl_mm_destroy(&mm);   (before the peers and the admin socket)
 */
#ifndef REPLICATOR_REPL_MM_H
#define REPLICATOR_REPL_MM_H

#include <stdbool.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/config.h"
#include "lib/guid.h"
#include "mailbox-master/mm.h"
#include "replicator/repl-peer.h"

struct ev_loop;
struct repl_mm;

/* How often the state machine is ticked. */
#define REPL_MM_TICK_MS 50u
/* A node with peers asks for no master for at most this long after it
 * started, until its links to every configured peer are up and settled
 * (a restarted node must not be master of its mailboxes before it knows
 * the cluster).  The lower SID of a pair connects (repl-peer.h), so a
 * restarted node waits for its peers' next attempt: at most
 * REPL_PEER_BACKOFF_MAX_MS, plus the handshake.  A request held meanwhile
 * gets its whole timeout from the end of the hold. */
#define REPL_MM_START_HOLD_MS (REPL_PEER_BACKOFF_MAX_MS + 1000u)
/* A loop that did not run for longer than this (the node was stopped, or
 * a call blocked it) holds its master requests again as at start-up, and
 * for this long serves no request as a master: its peers took it for dead,
 * closed the links and may have chosen other masters. */
#define REPL_MM_STALL_MS REPL_PEER_DEAD_TIMEOUT_MS
/* How long a peer has to acknowledge an MM command (the answer carries no
 * meaning; a missing one is only logged at debug level). */
#define REPL_MM_ACK_TIMEOUT_MS 10000u

/* What a request for the master of a granule found. */
struct repl_mm_answer {
	bool ok;              /* false: error says why (timeout, shutting down) */
	const char *error;
	uint32_t master;      /* the master to send writes to */
	bool am_master;       /* this node is that master */
	uint32_t root;        /* this node's root and epoch at the answer */
	uint64_t epoch;
	const char *gkey;
};

/* Called once per request, from the loop (never from inside
 * repl_mm_request_master()), or from repl_mm_destroy() with ok false. */
typedef void repl_mm_answer_cb(void *ctx, const struct repl_mm_answer *ans);

/* A node with no links yet, ticking on loop.  cfg must outlive it. */
struct repl_mm *repl_mm_create(struct ev_loop *loop, const struct config *cfg);
/* Fails pending requests ("shutting down") and frees everything.  Call it
 * after the loop stopped and just before destroying the peer manager: the
 * MM handler and link callbacks stay registered there with mm as ctx. */
void repl_mm_destroy(struct repl_mm **mm);

/* The callbacks to give repl_peers_create() with the repl_mm as ctx. */
const struct repl_peers_callbacks *repl_mm_peer_callbacks(void);
/* Registers the MM command handler on peers and sends through it. */
void repl_mm_attach(struct repl_mm *mm, struct repl_peers *peers);

/* The granule key of (user, mailbox GUID) under the configured
 * granularity, into out (at least MM_GKEY_MAX + 1 bytes).  Returns 0 or
 * -1 for a user that cannot be part of a key. */
int repl_mm_granule_key(const struct repl_mm *mm, const char *user, const struct guid *mailbox,
			char *out, size_t size);

/* Asks the state machine for the master of gkey; cb gets the answer, or a
 * failure after timeout_ms.  Returns 0, or -1 for an invalid gkey (cb is
 * not called). */
int repl_mm_request_master(struct repl_mm *mm, const char *gkey, unsigned timeout_ms,
			   repl_mm_answer_cb *cb, void *ctx);

/* Called when this node becomes master of a granule (a first assignment, a
 * move, or a failover), from the loop. */
typedef void repl_mm_gained_cb(void *ctx, const char *gkey);
void repl_mm_set_gained(struct repl_mm *mm, repl_mm_gained_cb *cb, void *ctx);

/* True if this node is master of gkey at its current epoch (a forwarded
 * change is served only then). */
bool repl_mm_is_master(struct repl_mm *mm, const char *gkey);
/* True for REPL_MM_STALL_MS after this node's loop was found not to have
 * run for longer than REPL_MM_STALL_MS, up to now: a request read then is
 * not served as master (SPEC.md 9.8 "A master that did not run"). */
bool repl_mm_stalled(struct repl_mm *mm);
/* This node's epoch; *settled_r (may be NULL) tells whether it was minted
 * by the root this node computes (if not, the node serves and accepts no
 * change as or from a master). */
uint64_t repl_mm_epoch(struct repl_mm *mm, bool *settled_r);
/* The master of gkey this node has cached at its epoch, 0 when unknown. */
uint32_t repl_mm_cached_master(struct repl_mm *mm, const char *gkey);
/* The root this node computes (its epoch may not be settled yet). */
uint32_t repl_mm_root(struct repl_mm *mm);
/* mm_root_record(): without asking anyone, and never making anyone master. */
int repl_mm_root_record(struct repl_mm *mm, const char *gkey, uint32_t *master_r);
/* One write for gkey was made here, as master or forwarded: mastership
 * follows the writes (mm_note_write()). */
void repl_mm_note_write(struct repl_mm *mm, const char *gkey);
/* stale_master turned out not to be the master of gkey: ask the root
 * again next time. */
void repl_mm_forget_master(struct repl_mm *mm, const char *gkey, uint32_t stale_master);

/* The direct peer through which sid is reached (the first hop of the
 * breadth-first path of the link state, SPEC.md 9.3): sid itself when
 * directly linked, 0 when sid is this node or unreachable. */
uint32_t repl_mm_next_hop(struct repl_mm *mm, uint32_t sid);
/* True when the link state says a and b have a link up between them. */
bool repl_mm_linked(struct repl_mm *mm, uint32_t a, uint32_t b);
/* The parent of v in the breadth-first tree rooted at root (mm_tree_parent()). */
uint32_t repl_mm_tree_parent(struct repl_mm *mm, uint32_t root, uint32_t v);

/* Formats an epoch as humans see it: "counter.root" (out >= 32 bytes). */
void repl_mm_epoch_str(uint64_t epoch, char *out, size_t size);

/* Appends the STATUS lines "root: R", "epoch: C.R", "root_settled: yes|no",
 * "root_serving: yes|no" and "mm_component: 1,2,3" to out. */
void repl_mm_status(struct repl_mm *mm, struct buf *out);

#endif
