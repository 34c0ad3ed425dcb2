/* Mailbox synchronisation over the real peer links: the engine of sync/
 * (sync.h) carried on the protocol connections of repl-peer.
 *
 * The client end runs on the node where a resync was asked (the admin
 * socket's RESYNC request, `starling resync`), toward one up peer or each up
 * peer in turn; the server end answers on the peer, one sync_server per
 * link, created on the first sync command and destroyed on link down.
 *
 * The engine writes whole tagged lines itself.  repl-sync relays them: a
 * client line goes out as a command of the link (the connection picks the
 * tag) and its answers come back to the engine under the
 * engine's own tag; a server line goes out as a data or completion line of
 * the peer's command.  Message texts (literals) are relayed byte for byte.
 *
 * Both ends work in bounded turns (about 10 ms) from idle watchers: the
 * client steps its engine, and a server with a long answer (SYNC-END of a
 * large mailbox, FETCH of texts) is stepped while its link takes output.
 * Either stops while the link's output is above its high-water mark and
 * goes on when it drains (repl_sync_link_drained), so a full sync of a
 * large mailbox neither queues all its texts in memory nor holds the loop
 * (the keepalive, other links, IMAP) for long.
 *
 * Changes the server end applied are made durable by the group commit
 * that follows the loop iteration (in storage's helper thread), before the
 * answers of all the commands of that iteration leave; a resync makes its
 * own changes durable before it reports.  The IMAP sessions watching the changed
 * mailboxes are notified (repl_notify).
 *
 * One resync runs at a time on a node: an asked one waits for a
 * background one, a second asked one is refused. */
#ifndef REPLICATOR_REPL_SYNC_H
#define REPLICATOR_REPL_SYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "replicator/repl-peer.h"
#include "replicator/repl.h"

struct ev_loop;
struct repl_sync;

/* A sync server stepping a long answer hands it to the link every this
 * many bytes (the link's high water then stops the steps). */
#define REPL_SYNC_SERVER_OUT_MAX (2u * 1024 * 1024)

/* A whole resync gives up after this long. */
#define REPL_SYNC_TIMEOUT_MS (10u * 60u * 1000u)

/* The end of a resync: converged tells whether every peer ended equal;
 * report is the "key: value" lines (one block per peer, starting with
 * "peer: SID"); text is the one-line outcome ("converged", or why not).
 * Called from the loop, never from inside repl_sync_start(), or from
 * repl_sync_destroy() with converged false. */
typedef void repl_sync_done_cb(void *ctx, bool converged, const char *report, size_t report_len,
			       const char *text);

struct repl_sync *repl_sync_create(struct ev_loop *loop, struct repl *repl);
/* Fails a running resync ("shutting down") and frees everything.  Call it
 * before destroying the peer manager and the admin socket. */
void repl_sync_destroy(struct repl_sync **rs);
/* Registers the sync command handlers on peers. */
void repl_sync_attach(struct repl_sync *rs, struct repl_peers *peers);
/* To be called from the peer manager's link callbacks. */
void repl_sync_link_up(struct repl_sync *rs, uint32_t sid);
void repl_sync_link_down(struct repl_sync *rs, uint32_t sid);
/* The link's output fell below its low-water mark: a resync that stopped
 * because the link was congested goes on. */
void repl_sync_link_drained(struct repl_sync *rs, uint32_t sid);

/* Starts a resync of user with peer (0 = every up peer, in turn, each
 * again while another brought changes, until all are equal); full compares
 * every message.  While a background resync runs, the asked one waits for
 * it.  Returns 0 (cb follows), or -1 with a one-line *error_r (static) when
 * the peer is not connected, no peer is, or an asked resync is already
 * running or waiting. */
int repl_sync_start(struct repl_sync *rs, const char *user, uint32_t peer, bool full,
		    repl_sync_done_cb *cb, void *ctx, const char **error_r);

/* How far the asked resync started with ctx (the cb_ctx given to
 * repl_sync_start()) is, in one line for progress reports: the peer it
 * syncs with, how many of the run's peers are done, mailboxes checked,
 * messages sent and received so far ("waiting for a background resync"
 * before it starts).  Returns false if no such resync runs. */
bool repl_sync_progress(const struct repl_sync *rs, const void *ctx, char *out, size_t size);

/* The periodic check: every REPL_SYNC_CHECK_INTERVAL seconds each up peer's
 * LIST of each user (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and digest per
 * mailbox, and the subscriptions) is compared with ours, and users that
 * differ get a background resync (see repl-sync-check.c).  The environment
 * variable STARLING_SYNC_CHECK_INTERVAL (seconds, decimals allowed; 0 turns
 * the check off) overrides the interval, for tests and benchmarks. */
#define REPL_SYNC_CHECK_INTERVAL 60u
/* A round that found users differing is followed by the confirming round
 * this soon (when the interval is longer), not a whole interval later. */
#define REPL_SYNC_CHECK_CONFIRM_S 3u
#define REPL_SYNC_CHECK_INFLIGHT 16u     /* LISTs outstanding at a time */
#define REPL_SYNC_CHECK_TIMEOUT_MS 30000u

/* ---- Used by the replicator (repl-cluster.c) ---- */

/* Background resyncs waiting at most; more are dropped with a warning. */
#define REPL_SYNC_QUEUE_MAX 4096u
/* Runs of one background resync before it is given up (logged; the
 * periodic check finds what is left). */
#define REPL_SYNC_RETRIES 6u
/* A user whose background resync failed is not tried again before a
 * back-off: REPL_SYNC_BACKOFF_MIN_S after the first failure, doubled after
 * each further one up to REPL_SYNC_BACKOFF_MAX_S, forgotten at the first
 * success.  Resyncs asked for meanwhile (a binding that found the peer
 * ahead, a refused change, the periodic check) wait for it: a node whose
 * store failed, or a peer that keeps refusing, is not hammered. */
#define REPL_SYNC_BACKOFF_MIN_S 0.1
#define REPL_SYNC_BACKOFF_MAX_S 5.0
/* Two nodes whose resyncs of one user refuse each other (each runs its own
 * and refuses the other's, TRYLATER): the one with the higher node id
 * waits at least this long before trying again, the lower one only its
 * back-off, so the lower id's resync runs next and the pair does not meet
 * again (REPLICATION.md). */
#define REPL_SYNC_YIELD_S 1.0

/* An asked resync (starling resync) that a peer refuses because the
 * peer's own run works on the user (TRYLATER) tries that peer again
 * after REPL_SYNC_REFUSED_MIN_S, doubled per refusal up to
 * REPL_SYNC_BACKOFF_MAX_S, at most REPL_SYNC_REFUSED_MAX times: an
 * administrator asked for this resync and should not get a failure for
 * a background one that ends in a moment.  Background runs fail instead
 * and back off (above). */
#define REPL_SYNC_REFUSED_MIN_S 0.2
#define REPL_SYNC_REFUSED_MAX 8

/* Queues a resync of user with peer (0 = every up peer) to run when no
 * other resync runs; a pair already queued is not queued twice.  The
 * outcome is logged. */
void repl_sync_enqueue(struct repl_sync *rs, const char *user, uint32_t peer);
size_t repl_sync_queued(const struct repl_sync *rs);
/* Appends "syncs_run: N" (user syncs with a peer this node ran, checks
 * included) and "uids_renumbered: N" (messages those syncs gave new UIDs,
 * UIDFIX) since start. */
void repl_sync_status(const struct repl_sync *rs, struct buf *out);
/* True while a resync client talks to sid: its MBOX/SELECT own the
 * direction toward sid, so live replication to sid waits. */
bool repl_sync_busy_with(const struct repl_sync *rs, uint32_t sid);

/* True while a resync on this node works on the user's mail: a client run
 * for the user (any mailbox), or a server merging mailbox (between
 * SYNC-BEGIN and the end of its answer).  Live changes to it wait: the
 * engine compares snapshots and must not see them move.  mailbox may be
 * NULL (only a client run counts then). */
bool repl_sync_holds(const struct repl_sync *rs, const char *user, const struct guid *mailbox);

/* Live replication commands arriving on a link (a message command outside
 * a sync, or any change carrying ORIGIN) go to cb instead of the sync
 * server; selected is the mailbox selected in that direction, or NULL.
 * cb answers on conn, now or later. */
typedef void repl_sync_live_cb(void *ctx, uint32_t sid, struct proto_conn *conn,
			       const struct proto_cmd *cmd, const struct guid *selected);
void repl_sync_set_live(struct repl_sync *rs, repl_sync_live_cb *cb, void *ctx);
/* The sync of one user with one peer: REPL_SYNC_PEER_START when a sync
 * client starts (a first one or a verification), REPL_SYNC_PEER_EQUAL when
 * one ended finding every mailbox and the mailbox list equal on both sides
 * (so the peer holds, durably, every change of the user this node had when
 * that client started: live changes of the user wait during the run). */
/* REPL_SYNC_PEER_CHANGED when a sync with the peer (this node's client or
 * its server end) changed this node's copy of the user: changes the peer
 * held reached this node, and may be due to others. */
enum repl_sync_peer_event { REPL_SYNC_PEER_START, REPL_SYNC_PEER_EQUAL, REPL_SYNC_PEER_CHANGED };
typedef void repl_sync_peer_cb(void *ctx, enum repl_sync_peer_event ev, const char *user,
			       uint32_t sid);
void repl_sync_set_peer_watch(struct repl_sync *rs, repl_sync_peer_cb *cb, void *ctx);
/* Called after each resync ends (the links are free again). */
typedef void repl_sync_idle_cb(void *ctx);
void repl_sync_set_idle(struct repl_sync *rs, repl_sync_idle_cb *cb, void *ctx);
/* Called when a hold of repl_sync_holds() may have ended: a client run
 * finished, or a link's sync server left the mailbox it merged (the sync
 * ended, another mailbox was selected, the link went).  Changes held
 * wait for this, not for a timer. */
typedef void repl_sync_released_cb(void *ctx);
void repl_sync_set_released(struct repl_sync *rs, repl_sync_released_cb *cb, void *ctx);

#endif
