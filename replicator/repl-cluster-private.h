/* Shared by the files of the replicating seam: repl-cluster.c (the changes
 * IMAP and the admin socket make, as master), repl-forward.c (forwarded to
 * the master, or autonomously), repl-copy.c and repl-mailbox-list.c (COPY
 * and MOVE, mailbox-list changes), repl-log.c and repl-stream.c (the
 * persistent replication log and its streaming to each peer, with
 * repl-peer-holds.c, repl-bind.c and repl-waiters.c) and repl-replica.c
 * (what arrives from peers: changes to apply, and requests to this node as
 * master).
 *
 * Nothing outside replicator/ includes this. */
#ifndef REPLICATOR_REPL_CLUSTER_PRIVATE_H
#define REPLICATOR_REPL_CLUSTER_PRIVATE_H

#include <ev.h>

#include "lib/arr.h"
#include "lib/config.h"
#include "mailbox-master/mm.h"
#include "protocol/protocol.h"
#include "replicator/repl-cluster.h"
#include "replicator/repl-private.h"
#include "replicator/repl-sync.h"

/* How long to wait for the mailbox-master machine to name a master before
 * a change goes on autonomously. */
#define CL_MASTER_TIMEOUT_MS 3000u
/* How long a forwarded change may wait for the master's answer. */
#define CL_FORWARD_TIMEOUT_MS 10000u
/* Attempts to reach a master (it may move or fail meanwhile) before a
 * change goes on autonomously. */
#define CL_FORWARD_ATTEMPTS 3
/* Replication commands to a peer wait this long for their answer before
 * the link is considered broken. */
#define CL_STREAM_TIMEOUT_MS 30000u
/* After a peer said TRYLATER (a resync holds the mailbox there), streaming
 * to it starts again this much later. */
#define CL_STREAM_RETRY_MS 100u
/* UIDs per replicated EXPUNGE line (each with its GUID). */
#define CL_EXPUNGE_BATCH 500
/* UIDs per forwarded STORE or EXPUNGE (each with its GUID, within the
 * line length and argument count of SPEC 5.2). */
#define CL_FORWARD_BATCH 500
/* How long a change waits for replicas to acknowledge it, and how long a
 * peer may leave log entries unacknowledged before it no longer counts as
 * healthy (SPEC.md 8.6). */
#define CL_ACK_WAIT_MS 5000u
/* Under-replicated changes remembered one by one; past this many only the
 * highest is kept, with a count. */
#define CL_UNDER_MAX 65536u
/* Holders' promises (SPEC 8.8) checked one by one; while this many are
 * open a new request's holder is not counted (it waits as without it). */
#define CL_PROMISE_MAX 4096u
/* A user whose changes a peer lacks is resynced with it again after this
 * long at first, doubling up to CL_UNHELD_RETRY_MAX_S. */
#define CL_UNHELD_RETRY_S 2u
#define CL_UNHELD_RETRY_MAX_S 64u
/* Log entries read per pass of a peer's streamer. */
#define CL_STREAM_BATCH 64
/* Our mailbox ids on a link start here, far from the small ones the sync
 * client picks, so the two never name different mailboxes with one id. */
#define CL_ID_BASE 0x40000000u
/* Mailbox ids per link before they are recycled. */
#define CL_MAX_BINDINGS 4096u

/* Replication log entry kinds (first byte of an entry). */
enum cl_entry_kind {
	CL_ENTRY_MAILBOX = 'M',    /* messages of a mailbox changed */
	CL_ENTRY_CREATE = 'C',
	CL_ENTRY_DELETE = 'D',
	CL_ENTRY_RENAME = 'R',
	CL_ENTRY_SUBSCRIBE = 'S',
	CL_ENTRY_UNSUBSCRIBE = 'U',
	CL_ENTRY_ACL = 'A',        /* an ACL record: guid, name = identifier */
};

/* A decoded log entry; strings point into the entry's buffer or are
 * NUL-terminated copies owned by the entry. */
struct cl_entry {
	enum cl_entry_kind kind;
	uint64_t wall_ms;          /* when it was logged */
	char user[STOR_MAX_USER_LEN + 1];
	struct guid guid;          /* the mailbox (not for (UN)SUBSCRIBE) */
	char *name;                /* CREATE, DELETE, (UN)SUBSCRIBE; RENAME: old */
	char *new_name;            /* RENAME */
	uint32_t uidvalidity;      /* CREATE */
	char special_use[16];      /* CREATE, or "" */
};

void cl_entry_free(struct cl_entry *e);
/* Encodes e (without wall_ms, which is set to now) into out. */
void cl_entry_encode(const struct cl_entry *e, struct buf *out);
/* Decodes; -1 for a malformed entry (logged and skipped by callers). */
int cl_entry_decode(const void *data, size_t len, struct cl_entry *e_r);

/* A mailbox's id on the link to one peer, in our direction. */
enum cl_bind_state {
	CL_BIND_NONE,       /* not bound: send MBOX first */
	CL_BIND_PENDING,    /* MBOX sent, no answer yet */
	CL_BIND_BOUND,      /* the peer holds it */
	CL_BIND_FAILED,     /* the peer lacks it or differs: a resync is queued */
};

struct cl_waiter;
struct cl_relay;

struct cl_bind {
	struct guid guid;
	uint32_t id;
	enum cl_bind_state state;
	/* From the MBOX answer. */
	uint32_t peer_uidnext;
	uint64_t peer_modseq;
	/* Streaming: changes above sent_modseq are not sent yet.  Valid
	 * once stream_ready; an answer to a MBOX the forwarder sent is not
	 * fresh enough to start streaming from, so the streamer rebinds. */
	bool stream_ready, stream_wants;
	uint64_t sent_modseq;
	/* Forwarded changes waiting for the binding. */
	struct cl_fwd *waiting;
	/* Commands relayed toward another node waiting for it (repl-relay.c). */
	struct cl_relay *relays;
};

/* A user some of whose changes a peer does not hold durably: it refused
 * one (NO, BAD, a failed binding), or it fell off the log.  The peer holds
 * nothing of the log from first on until a resync of the user with it that
 * started once the log reached need found both sides equal. */
struct cl_unheld {
	char *user;
	uint64_t first;
	uint64_t need;
};

/* A peer as the replicator sees it. */
struct cl_peer {
	struct repl_cluster *cl;
	uint32_t sid;
	struct proto_conn *conn;       /* NULL while the link is down */
	uint64_t link_gen;             /* counts link-ups: answers go to their own link */
	ARRAY(struct cl_bind *) binds;
	uint32_t next_id;
	uint32_t selected_id;          /* last SELECT we sent; 0 none */
	/* Streaming of the log. */
	uint64_t cursor;               /* every entry <= cursor answered */
	/* What counts for waiters (SPEC.md 8.6, repl-peer-holds.c): entries
	 * <= cursor, except those of unheld users from their first on. */
	ARRAY(struct cl_unheld) unheld;   /* sorted by user */
	uint64_t unheld_retry_at;      /* clock_mono_ms(): resync unheld users again */
	unsigned unheld_backoff_s;
	uint64_t sync_start_seq;       /* log_last when our resync client with it started */
	bool store_failed;             /* answered a storage failure on this link */
	uint64_t progress_ms;          /* clock_mono_ms() of the last answered entry */
	uint64_t next_seq;             /* next entry to process */
	bool blocked;                  /* waiting for a MBOX answer */
	bool full_sync;                /* fell off the log: needs a full resync */
	bool removed;                  /* no longer configured (SIGHUP): not in status */
	bool cursor_dirty;             /* cursor changed since last written */
	uint64_t stream_gen;           /* bumped when streaming starts over */
	uint64_t retry_at;             /* clock_mono_ms(): not before, after TRYLATER */
	/* Entries processed but not acknowledged yet, in order. */
	ARRAY(struct cl_inflight) inflight;
	/* Users whose changes were waiting when the link came up: resynced
	 * once the backlog is through (both sides may have written). */
	stor_string_list catchup_users;
	uint64_t catchup_until;
	/* Users written autonomously while this peer could not be asked. */
	stor_string_list dirty_users;
	/* link_gen + 1 once a SAVE with HOLDER got BAD [ARGS] on this link
	 * (a master or relay of an earlier build, SPEC 8.8): sent without. */
	uint64_t holder_refused_gen;
	/* link_gen + 1 once a STORE with REQ got BAD [ARGS] on this link
	 * (a master or relay of an earlier build, SPEC 6.4): sent without. */
	uint64_t req_refused_gen;
};

struct cl_inflight {
	uint64_t seq;
	unsigned outstanding;
};

/* A change answered while fewer than sync_replicas peers held it. */
struct cl_under {
	uint64_t seq;
	char *user;
};

/* A change answered HELD (SPEC 8.8): counted with its holder's promise,
 * which the holder's stream should confirm within CL_ACK_WAIT_MS. */
struct cl_promise {
	uint64_t seq;
	uint64_t since_ms;             /* clock_mono_ms() when answered */
	uint32_t holder;
	char *user;
};

/* A change made at this node that waits for replicas to hold it. */
struct cl_waiter {
	struct cl_waiter *next;
	uint64_t seq;
	bool durable;
	uint64_t since_ms;             /* clock_mono_ms() when it became durable here */
	char user[STOR_MAX_USER_LEN + 1];   /* whose change */
	/* Set before done(): fewer than sync_replicas replicas held it
	 * (degraded_writes = refuse: the client gets NO [UNAVAILABLE]). */
	bool under, unavailable;
	/* A mailbox-list change: it follows accept whatever degraded_writes
	 * says (SPEC 8.6), so it also waits as accept does. */
	bool list_change;
	/* A forwarded SAVE's HOLDER (SPEC 8.8), or 0: counts as one copy of
	 * this change.  held is set before done() when it was counted. */
	uint32_t holder;
	bool held;
	void (*done)(struct cl_waiter *w);
	void *ctx;
};

#define CL_TAKEN_MAX 256u
struct cl_taken {
	struct guid mailbox;
	uint64_t modseq;
};

struct repl_cluster {
	struct repl repl;
	struct repl *local;            /* applies to storage, group commit */
	struct ev_loop *loop;
	const struct config *cfg;
	struct repl_settings set;
	struct repl_peers *peers;
	struct repl_mm *mm;
	struct repl_sync *sync;
	ARRAY(struct cl_peer *) peer_list;
	struct cl_waiter *waiters;
	struct cl_fwd *fwds;           /* every live forward (repl-forward.c) */
	ev_prepare prepare;
	ev_timer timer;
	size_t in_flight;
	uint64_t log_last;             /* highest seq appended */
	/* Changes answered while fewer than sync_replicas replicas held them,
	 * ascending log seqs; past CL_UNDER_MAX only under_more (a count) and
	 * under_more_upto (the highest). */
	ARRAY(struct cl_under) under;
	uint64_t under_more, under_more_upto;
	/* Changes answered HELD whose holder's stream has not confirmed them
	 * yet (SPEC 8.8), in answer order, at most CL_PROMISE_MAX. */
	ARRAY(struct cl_promise) promises;
	uint64_t autonomous_changes;   /* for status */
	uint64_t forwarded_changes;
	uint64_t forwarded_held;       /* of them SAVEs answered HELD (SPEC 8.8) */
	/* Commands this node relays between two peers (SPEC.md 6.3 TO). */
	struct cl_relay *relay_list;
	size_t relay_count;
	uint64_t relayed_commands;
	uint64_t relayed_changes;
	bool own_notify;               /* announcing a change made through us */
	bool wake_held;                /* held forwards to try again (cl_fwd_wake_due) */
	bool destroying;
	/* Users this node is new master of and still catching up
	 * (repl-handover.c). */
	ARRAY(struct cl_catchup) catchups;
	/* SAVEs with REQ this node made as master, the last CL_REQ_MAX
	 * (a ring): a resent request gets the message it made (SPEC 6.4). */
	struct cl_req_made *reqs;
	size_t req_next;
	/* STOREs with REQ this node served as master, the last CL_REQ_MAX
	 * (a ring): a resend gets the first attempt's outcome (SPEC 6.4). */
	struct cl_store_made *store_reqs;
	size_t store_req_next;
	/* The n of the next REQ this node sends (cl_req_n_next()). */
	uint64_t req_n;
	struct cl_barriers *barriers;  /* read barriers (repl-barrier.c) */
	/* Per mailbox, the modseq of the last change this node took from its
	 * master as given (cl_master_modseq_fits), the last CL_TAKEN_MAX
	 * mailboxes (a ring). */
	struct cl_taken taken[CL_TAKEN_MAX];
	size_t taken_next;
};

/* ---- repl-replica-apply.c: the master's modseqs here (SPEC.md 10.3) ---- */

/* True when a change the master made at modseq can be taken here at that
 * modseq: above this copy's HIGHESTMODSEQ, or at it when the last change
 * taken from the master raised it there (the next message of the same
 * change).  Otherwise this copy spent the modseq itself (a sync with
 * another replica, two masters while apart): written at it, the change
 * would stay unseen by an IMAP client that cached this HIGHESTMODSEQ. */
bool cl_master_modseq_fits(const struct repl_cluster *cl, const struct stor_mailbox *mb,
			   uint64_t modseq);
/* A change of mailbox was taken from the master at modseq. */
void cl_master_modseq_taken(struct repl_cluster *cl, const struct guid *mailbox,
			    uint64_t modseq);

/* ---- repl-handover.c: safe handovers (SPEC.md 9.8) ---- */

/* A new master serves no write of the user for at most this long while
 * it catches up (below CL_FORWARD_TIMEOUT_MS: a forwarder answered
 * TRYLATER meanwhile gets served, not sent autonomous). */
#define CL_CATCHUP_MAX_MS 8000u
#define CL_CATCHUP_MAX 4096u

/* Why a request or a change with ORIGIN was refused: status "NO" or
 * "BAD", the response code and a text. */
struct cl_refusal {
	const char *status;
	char code[96];
	char text[128];
};

/* This node became master of a granule of user: the user's writes wait
 * until a resync with every up peer, started now, found them equal. */
void cl_handover_gained(struct repl_cluster *cl, const char *user);
/* True while this node, as new master, still catches up with user;
 * *left_ms (may be NULL) says how long at most. */
bool cl_handover_waiting(struct repl_cluster *cl, const char *user, uint64_t *left_ms);
void cl_handover_sync_event(struct repl_cluster *cl, enum repl_sync_peer_event ev,
			    const char *user, uint32_t sid);
void cl_handover_link_down(struct repl_cluster *cl, uint32_t sid);
size_t cl_handover_count(const struct repl_cluster *cl);
void cl_handover_free(struct repl_cluster *cl);
/* Writes `EPOCH <epoch>` (0: this node's current epoch). */
void cl_handover_wr_epoch(struct repl_cluster *cl, struct proto_wr *w, uint64_t epoch);
/* A request to this node as master (no ORIGIN): its EPOCH, when given,
 * must be ours, and we must not be catching up.  0, or -1 with *r. */
int cl_handover_check_forward(struct repl_cluster *cl, const struct proto_cmd *cmd, size_t npos,
			      const char *user, struct cl_refusal *r);
/* A message change with ORIGIN: it must carry our epoch, and origin must
 * not contradict the master this node knows for the granule. */
int cl_handover_check_origin(struct repl_cluster *cl, const struct proto_cmd *cmd, size_t npos,
			     uint32_t origin, const char *user, const struct guid *mailbox,
			     struct cl_refusal *r);

/* ---- repl-barrier.c: read barriers (SPEC.md 8.7) ---- */

/* How long a read waits in all for the master's answer and for this node
 * to apply that much, before it is answered from this node's state.  A
 * replica that streams normally is one link delay plus a group commit
 * behind its master, far below this even across a WAN; one further
 * behind is catching up a backlog or being resynced, and a client should
 * not hang on SELECT for as long as that takes (CL_ACK_WAIT_MS is when the
 * master itself stops counting on such a peer). */
#define CL_BARRIER_MAX_MS 2000u
/* While waiting, the copy is also re-checked this often (watchers wake
 * the barrier on every change applied here; this is the safety net). */
#define CL_BARRIER_RECHECK_MS 100u
/* HIGHEST sent at most this often per read: the cached master or the
 * root, then the master a NOTMASTER names, then the root. */
#define CL_BARRIER_ASKS 3u
/* Reads waiting at once; more are answered from this node's state. */
#define CL_BARRIER_MAX 4096u

struct cl_barriers;
bool cl_read_barrier(struct repl *r, const char *user, const struct guid *mailbox,
		     repl_done_cb *cb, void *ctx);
void cl_barrier_init(struct repl_cluster *cl);
/* Registers the HIGHEST command on the peer links. */
void cl_barrier_attach(struct repl_cluster *cl, struct repl_peers *peers);
/* Shutdown: every waiting read is answered now. */
void cl_barrier_detach(struct repl_cluster *cl);
void cl_barrier_deinit(struct repl_cluster *cl);
void cl_barrier_status(struct repl_cluster *cl, struct buf *out);

/* ---- repl-log.c, repl-stream.c, repl-peer-holds.c, repl-bind.c,
 * repl-waiters.c ---- */

void cl_stream_init(struct repl_cluster *cl);
void cl_stream_deinit(struct repl_cluster *cl);
/* SIGHUP: replication state for peers new in cl->cfg; a removed peer's
 * stays until the node restarts, marked for a full resync (so the log is
 * not kept for it) and left out of the status. */
void cl_stream_peers_changed(struct repl_cluster *cl);
/* Appends an entry to the log; *seq_r gets its sequence number.  Returns
 * 0 or -1 (logged). */
int cl_log_append(struct repl_cluster *cl, const struct cl_entry *e, uint64_t *seq_r);
/* Runs the streamers of every up peer (called before the loop blocks). */
void cl_stream_pump_all(struct repl_cluster *cl);
void cl_stream_link_up(struct cl_peer *p, struct proto_conn *conn);
void cl_stream_link_down(struct cl_peer *p);
/* Forgets SELECT state and failed bindings after a resync used the link. */
void cl_stream_after_resync(struct cl_peer *p);
struct cl_peer *cl_peer_find(struct repl_cluster *cl, uint32_t sid);
/* Peer sid may lack some of user's changes made here (not resynced since):
 * a streamed change from it that would drop such a change is refused. */
bool cl_peer_may_lack_user(struct repl_cluster *cl, uint32_t sid, const char *user);
/* Waiters: w completes (w->done) once w->durable and enough peers hold
 * w->seq (seq 0: durability alone). */
void cl_waiter_add(struct repl_cluster *cl, struct cl_waiter *w);
void cl_waiters_check(struct repl_cluster *cl);
/* Forgets the under-replicated changes enough peers hold now, and counts
 * there the HELD changes whose holder did not confirm them in time. */
void cl_under_check(struct repl_cluster *cl);
void cl_promises_free(struct repl_cluster *cl);
/* Healthy replicas now (SPEC.md 8.6): linked, not marked for a full
 * resync, no storage failure answered on this link, acknowledgements
 * flowing (nothing unanswered for longer than CL_ACK_WAIT_MS). */
unsigned cl_replicas_healthy(struct repl_cluster *cl);
/* degraded_writes = refuse and too few healthy replicas: a new change must
 * be refused before it is made.  cl_must_refuse_holder(): the same, the
 * request's holder (SPEC 8.8, 0: none) counted healthy. */
bool cl_must_refuse(struct repl_cluster *cl);
bool cl_must_refuse_holder(struct repl_cluster *cl, uint32_t holder);
/* A resync of user with sid started, or found both sides equal. */
void cl_stream_sync_event(struct repl_cluster *cl, enum repl_sync_peer_event ev, const char *user,
			  uint32_t sid);
/* The mailbox's binding on p, created (CL_BIND_NONE) if missing. */
struct cl_bind *cl_bind_get(struct cl_peer *p, const struct guid *mailbox);
/* Sends MBOX for b (b->state becomes PENDING).  user/name/uidvalidity of
 * the local mailbox. */
void cl_bind_send(struct cl_peer *p, struct cl_bind *b, const struct stor_mailbox *mb,
		  bool for_stream);
/* Sends SELECT b->id unless it is the selected id already. */
void cl_select(struct cl_peer *p, const struct cl_bind *b);
/* Remembers a user to resync with peer p when it is next up, and queues
 * it now when it is up. */
void cl_mark_dirty(struct cl_peer *p, const char *user);
void cl_stream_status(struct repl_cluster *cl, struct buf *out);

/* ---- repl-forward.c ---- */

/* Called by repl-stream when a binding a forwarded change waits for is
 * settled (bound or failed). */
void cl_fwd_bind_settled(struct cl_peer *p, struct cl_bind *b);
/* Fails forwarded changes pending on a link that went down (they retry). */
void cl_fwd_link_down(struct cl_peer *p);

/* ---- repl-cluster.c ---- */

/* Announces a change applied straight to storage once it is durable. */
void cl_notify_later(struct repl_cluster *cl, const char *user, const struct guid *mailbox);

/* ---- repl-relay.c ---- */

/* Relayed commands in flight at once; more are answered TRYLATER. */
#define CL_RELAY_MAX 256u
/* SIDs a VIA may hold before a relay refuses with HOPLIMIT (SPEC.md 6.3). */
#define CL_RELAY_MAX_HOPS 8u

/* A message command from peer `from` with `TO` another node: re-issued
 * toward that node and its answer relayed back.  Returns false when the
 * command is for this node (no TO, or TO this node); true when it was
 * handled (relayed, or refused with LOOP, HOPLIMIT or TRYLATER). */
bool cl_relay_command(struct repl_cluster *cl, struct cl_peer *from, const struct proto_cmd *cmd,
		      size_t npos, const struct guid *selected);
/* The binding relays on p wait for is settled. */
void cl_relay_bind_settled(struct cl_peer *p, struct cl_bind *b);
/* p's link went down: relays waiting to go out on it are answered
 * TRYLATER (those already sent get PROTO_REPLY_CLOSED). */
void cl_relay_link_down(struct cl_peer *p);
/* Frees the relays still waiting for a binding (shutdown). */
void cl_relay_deinit(struct repl_cluster *cl);
/* A change with ORIGIN arrived from peer from: it is passed on, unchanged,
 * to the up peers of this node whose parent this node is in the
 * breadth-first tree of the link state rooted at the origin (peers with no
 * link to the origin get no stream from it; SPEC.md 8.6, "Partial
 * meshes").  mb is the selected mailbox of a message change, NULL for a
 * mailbox-list change.  What a peer refuses is left to a resync. */
void cl_relay_origin(struct repl_cluster *cl, struct cl_peer *from, const struct proto_cmd *cmd,
		     size_t npos, uint32_t origin, const char *user, const struct stor_mailbox *mb);

/* A resync with peer from changed this node's copy of user: the peers of
 * this node that have no link to from cannot sync with it directly, so
 * the user is resynced with them now (a node holding changes its master
 * lacks gets them there within seconds of a route existing). */
void cl_relay_sync_changed(struct repl_cluster *cl, const char *user, uint32_t from);

/* ---- repl-replica.c ---- */

/* The live replication commands of a link (repl_sync_live_cb). */
void cl_replica_command(void *ctx, uint32_t sid, struct proto_conn *conn,
			const struct proto_cmd *cmd, const struct guid *selected);

/* Master-side entry points shared by local changes and by forwarded
 * requests (repl-cluster.c). */
/* A request's identity (SPEC 6.3 REQ): the node that took the IMAP
 * command and its number there; sid 0 is none (an older peer). */
struct cl_req_id {
	uint32_t sid;
	uint64_t n;
};
#define CL_REQ_MAX 4096u
/* A STORE with REQ this node served as master (SPEC 6.4): pending until
 * it completed, then what it answered.  A resend of it (its answer was
 * lost with the link, or came after the forwarder's timeout) gets that
 * outcome: run again, UNCHANGEDSINCE would find the modseq the first
 * attempt gave each message it changed and answer MODIFIED for a message
 * the request did change (fault campaign, flag-holds 9957, 9791). */
struct cl_store_made {
	struct guid mailbox;
	struct cl_req_id id;           /* sid 0: a free slot */
	bool done;
	uint64_t modseq;               /* the answer's MODSEQ */
	stor_uid_list failed;          /* the answer's MODIFIED set */
};
/* Whether m's flags are already what the STORE st asks (its keywords
 * compared as IMAP does, without case). */
bool fwd_store_holds(const struct stor_store *st, const struct stor_msg *m);
/* A REQ n this node never used for another request, also before a
 * restart (SPEC 6.3). */
uint64_t cl_req_n_next(struct repl_cluster *cl);
struct cl_req_made {
	struct guid mailbox;
	struct cl_req_id id;
	struct guid guid;              /* the message the request made */
};

struct cl_append_req {
	const char *user;
	struct guid mailbox;
	struct guid guid;           /* the message's */
	uint32_t flags;
	const char *const *keywords;
	size_t keyword_count;
	int64_t internaldate;
	int32_t internaldate_tz;
	const void *text;           /* NULL: the text stored for guid */
	size_t text_len;
	struct cl_req_id req;       /* a copy's request identity, or sid 0 */
	/* HOLDER (SPEC 8.8): the forwarding node that promises to hold the
	 * change, or 0; *held_r (if not NULL) is set when it was counted. */
	uint32_t holder;
	bool *held_r;
};
void cl_master_append(struct repl_cluster *cl, const struct cl_append_req *req, repl_done_cb *cb,
		      void *ctx);
void cl_master_store(struct repl_cluster *cl, const char *user, const struct guid *mailbox,
		     const uint32_t *uids, size_t count, const struct stor_store *req,
		     repl_done_cb *cb, void *ctx);
void cl_master_expunge(struct repl_cluster *cl, const char *user, const struct guid *mailbox,
		       const uint32_t *uids, size_t count, repl_done_cb *cb, void *ctx);
/* Whether this node is master of the mailbox's granule right now. */
bool cl_is_master(struct repl_cluster *cl, const char *user, const struct guid *mailbox);

/* ---- Shared by repl-cluster.c, repl-forward.c, repl-copy.c and
 * repl-mailbox-list.c: the pieces of the seam ---- */

struct owned_result {
	struct repl_result res;
	char *error_msg;
	stor_msg_list changed;
	stor_uid_list failed, expunged, src_uids, dst_uids;
	struct stor_mailbox mailbox;
	bool have_mailbox;
};

enum fwd_kind { FWD_APPEND, FWD_STORE, FWD_EXPUNGE };

/* Where a forward is (REPLICATION.md 6.1 has who moves it, and when).
 * Each state names what moves it on: a timer, a callback of repl-mm, a
 * binding's answer, the master's answer, a durable callback, or a wake-up
 * when a resync or a catch-up ends (the three states woken so keep a timer
 * only as the bound of their wait, or none: a resync is bounded itself). */
enum cl_fwd_state {
	CL_FWD_NEW,        /* made by fwd_new(), not started */
	CL_FWD_HELD,       /* a resync here holds the mailbox: cl_fwd_wake_held() */
	CL_FWD_CATCHUP,    /* this node, new master, catches up: woken or its deadline */
	CL_FWD_ASKING,     /* repl-mm is asked for the master: fwd_master_known() */
	CL_FWD_BIND_WAIT,  /* on the binding's waiting list: cl_fwd_bind_settled() */
	CL_FWD_SENT,       /* a pending command on the link: fwd_reply_cb() */
	CL_FWD_RETRY,      /* fwd_again()'s timer: another attempt */
	CL_FWD_WAIT,       /* fwd_wait()'s timer: the master said TRYLATER */
	CL_FWD_LINK_HELD,  /* a resync here owns the master's link: cl_fwd_wake_held() */
	CL_FWD_AS_MASTER,  /* handed to cl_master_*(): fwd_inner_done() */
	CL_FWD_AUTONOMOUS, /* handed to the local engine, or refused: done callback */
	CL_FWD_APPLYING,   /* the master's answer applied here: fwd_local_durable() */
};
const char *cl_fwd_state_name(enum cl_fwd_state state);

/* A change on its way: asking for the master, forwarded, or waiting for
 * the local application of the master's answer. */
struct cl_fwd {
	struct cl_fwd *next;          /* in a binding's waiting list */
	struct cl_fwd *live_prev, *live_next; /* every forward not yet freed */
	struct repl_cluster *cl;
	enum fwd_kind kind;
	enum cl_fwd_state state;
	bool wake;                    /* cl_fwd_wake_due() is to start it again */
	char *user;
	struct guid mailbox;
	char gkey[MM_GKEY_MAX + 1];
	repl_done_cb *cb;
	void *ctx;
	unsigned attempts;
	uint64_t busy_since;          /* clock_mono_ms() when a resync first held it */
	uint32_t master;
	uint64_t epoch;               /* ours when the master was named (SPEC 6.3 EPOCH) */
	uint32_t to;                  /* the master, when peer only relays (6.3 TO) */
	struct cl_peer *peer;         /* while forwarded */
	/* HOLDER (SPEC 8.8): sent on the SAVE in flight; never again for
	 * this change once it could not hold the master's UID here or the
	 * master did not take the option; held: the master counted us. */
	bool sent_holder, no_holder, held;
	/* REQ (SPEC 6.4) of a STORE UNCHANGEDSINCE: req_n is the identity of
	 * the batch that begins at req_for - 1, the same on every resend of
	 * it; sent_req: the batch in flight carries it; no_req: never again
	 * (the master did not take the option). */
	uint64_t req_n;
	size_t req_for;
	bool sent_req, no_req;
	/* STORE: a batch went out and its answer did not come (the master
	 * may have applied it), or one was done at the master: see
	 * fwd_store_holds(). */
	bool maybe_applied;
	ev_timer retry;
	/* APPEND */
	struct cl_append_req app;
	/* The master's UID could not be stored here, or names another
	 * message here: the result carries no UID (uid 0), since this node,
	 * restarted on what its store kept and master alone, could give the
	 * same UID to another message before a resync tells it otherwise. */
	bool uid_unheld;
	/* STORE / EXPUNGE: the caller's arrays, valid until cb */
	const uint32_t *uids;
	size_t count;
	/* ... and, forwarded, those of them that exist here, ascending, with
	 * the GUID each named when the client asked (GUIDS, SPEC 8.6): after
	 * a partition one UID may name different messages here and at the
	 * master, and neither side may touch a message the client did not
	 * mean. */
	stor_uid_list named_uids;
	ARRAY(struct guid) named_guids;
	/* Run here as the master: where those messages are when the change
	 * runs (it may have waited for the master, a catch-up or a resync). */
	stor_uid_list uids_now;
	/* They go CL_FORWARD_BATCH at a time (GUIDS must fit a line); the
	 * batches before sent_upto are done at the master. */
	size_t sent_upto, batch_end;
	stor_uid_list modified;       /* STORE: refused by UNCHANGEDSINCE */
	uint64_t master_modseq;       /* from the last batch's answer */
	struct stor_store store;
	/* The master's FLAGS lines (STORE). */
	stor_msg_list flags_lines;
	struct owned_result out;
};

/* repl-cluster.c */
struct repl_cluster *to_cl(struct repl *r);
void uids_copy(stor_uid_list *dst, const uint32_t *src, size_t n);
void owned_set(struct owned_result *o, const struct repl_result *res);
const struct repl_result *owned_get(struct owned_result *o);
void owned_free(struct owned_result *o);
void owned_error(struct owned_result *o, enum repl_error error, const char *msg);
void append_from_req(const struct cl_append_req *req, struct repl_append *a);
void cl_append(struct repl *r, const char *user, const struct guid *mailbox,
	       const struct repl_append *req, repl_done_cb *cb, void *ctx);

/* repl-forward.c */
void fwd_free(struct cl_fwd *f);
void fwd_autonomous(struct cl_fwd *f, const char *why);
void fwd_start(struct cl_fwd *f);
/* Done: the callback with the result so far, then freed. */
void fwd_finish(struct cl_fwd *f);
void fwd_fail(struct cl_fwd *f, enum repl_error error, const char *msg);
/* Sends the change (its next batch) on the bound link to f->peer. */
void fwd_send(struct cl_fwd *f);
/* Asks for the master again after a delay. */
void fwd_again(struct cl_fwd *f, const char *why);
int fwd_cmp_u32(const void *a, const void *b);
/* A resync's hold, or a new master's catch-up, may have ended: the held
 * forwards are tried again at the next loop turn (cl_fwd_wake_due()). */
void cl_fwd_wake_held(struct repl_cluster *cl);
void cl_fwd_wake_due(struct repl_cluster *cl);
struct cl_fwd *fwd_new(struct repl_cluster *cl, enum fwd_kind kind, const char *user,
		       const struct guid *mailbox, repl_done_cb *cb, void *ctx);
void notify_later(struct repl_cluster *cl, const char *user, const struct guid *mailbox);

/* repl-forward-apply.c: the master's answer applied here */
void fwd_name_messages(struct cl_fwd *f);
void fwd_local_durable(void *ctx, bool ok);
void fwd_apply_append(struct cl_fwd *f, const struct proto_cmd *line);
/* One batch of a STORE or EXPUNGE done at the master: true when more are
 * to go. */
bool fwd_batch_done(struct cl_fwd *f, const struct proto_cmd *line);
void fwd_apply_store(struct cl_fwd *f);
void fwd_apply_expunge(struct cl_fwd *f);

/* repl-copy.c */
void cl_copy(struct repl *r, const char *user, const struct guid *src,
	     const uint32_t *uids, size_t count, const struct guid *dst, bool move,
	     repl_done_cb *cb, void *ctx);

/* repl-mailbox-list.c */
void cl_mailbox_create(struct repl *r, const char *user, const char *name,
		       const char *special_use, const struct guid *guid,
		       uint32_t uidvalidity, repl_done_cb *cb, void *ctx);
void cl_mailbox_delete(struct repl *r, const char *user, const struct guid *mailbox,
		       repl_done_cb *cb, void *ctx);
void cl_mailbox_rename(struct repl *r, const char *user, const struct guid *mailbox,
		       const char *new_name, repl_done_cb *cb, void *ctx);
void cl_subscribe(struct repl *r, const char *user, const char *name, bool subscribed,
		  repl_done_cb *cb, void *ctx);
void cl_acl_put(struct repl *r, const char *owner, const struct guid *mailbox,
		const char *identifier, const char *rights, int64_t time_ms, repl_done_cb *cb,
		void *ctx);

#endif
