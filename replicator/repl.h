/* The seam between the IMAP server (and the admin socket) and replication.
 *
 * Every change to mail goes through these calls: APPEND, STORE, COPY, MOVE,
 * EXPUNGE, CREATE, DELETE, RENAME, SUBSCRIBE.  Each takes a completion
 * callback and returns at once; the callback fires later, from the event
 * loop (never from inside the call), once the change is durable wherever
 * the implementation's policy requires (today: fsynced on this node; with
 * replication: on the mailbox master and sync_replicas other nodes).  The
 * caller answers its client only then.  Reads (FETCH, SEARCH, STATUS, LIST)
 * go straight to storage.
 *
 * Change notification: whoever wants to learn that a mailbox changed (IMAP
 * sessions with it selected) registers a watcher.  Watchers are called after
 * the change is durable, whether it came from a local session, the admin
 * socket, or (later) replication.  They get only the mailbox GUID and user;
 * the session itself computes what changed with stor_changes_since().
 *
 * Implementations: repl_local_create() (single node, repl-local.c).  The
 * replicator will provide another one with the same calls. */
#ifndef REPLICATOR_REPL_H
#define REPLICATOR_REPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/guid.h"
#include "storage/storage.h"

struct ev_loop;
struct repl;

enum repl_error {
	REPL_OK = 0,
	REPL_ERR_NOTFOUND,  /* mailbox or message does not exist */
	REPL_ERR_EXISTS,    /* mailbox name already taken */
	REPL_ERR_TOOBIG,    /* message over max_message_size */
	REPL_ERR_INVALID,   /* the request itself is not acceptable */
	REPL_ERR_INTERNAL,  /* storage or durability failure */
	REPL_ERR_LIMIT,     /* the mailbox has used every UID or modseq (lib/mail-limits.h) */
	/* Fewer than sync_replicas healthy replicas (degraded_writes =
	 * refuse): refused before it was made, or made here but not
	 * acknowledged by enough replicas in time (it stays and replicates
	 * later). */
	REPL_ERR_UNAVAILABLE,
};

/* What a completed change reports.  Every pointer is borrowed and valid only
 * during the callback. */
struct repl_result {
	enum repl_error error;
	const char *error_msg;        /* for humans, when error != REPL_OK */
	uint32_t uidvalidity;         /* APPEND, COPY, MOVE: of the target */
	/* APPEND: the new message's UID; 0 when the master made it under a
	 * UID this node could not store (its store failed): not to be told
	 * to a client, this node could give it again after a restart. */
	uint32_t uid;
	/* APPEND: its modseq; STORE, EXPUNGE, COPY, MOVE: the mailbox's
	 * HIGHESTMODSEQ right after the change (of the target for COPY). */
	uint64_t modseq;
	/* COPY/MOVE: source UIDs that were copied and their new UIDs (same
	 * order); MOVE: source UIDs also expunged. */
	const uint32_t *src_uids, *dst_uids;
	size_t uid_count;
	/* STORE: messages that changed, with their new flags and modseq, and
	 * UIDs refused by UNCHANGEDSINCE. */
	const struct stor_msg *changed;
	size_t changed_count;
	const uint32_t *failed;
	size_t failed_count;
	/* EXPUNGE: UIDs actually expunged. */
	const uint32_t *expunged;
	size_t expunged_count;
	/* CREATE: the new mailbox. */
	const struct stor_mailbox *mailbox;
};

typedef void repl_done_cb(void *ctx, const struct repl_result *res);

/* Watchers: called after a durable change to a mailbox. */
typedef void repl_watch_cb(void *ctx, const char *user, const struct guid *mailbox);

struct repl_settings {
	uint32_t node_id;
	uint64_t max_message_size;
};

/* Single-node implementation: applies changes to db and completes them
 * after the next group commit (one stor_sync() per event-loop turn for all
 * changes of that turn).  db stays owned by the caller and must outlive the
 * repl.  Installs watchers on loop. */
struct repl *repl_local_create(struct ev_loop *loop, struct stor_db *db,
			       const struct repl_settings *set);
/* Completes nothing more: callbacks of changes still in flight fire with
 * REPL_ERR_INTERNAL ("shutting down") before this returns. */
void repl_destroy(struct repl **r);

/* Forces any pending group commit now (used at shutdown). */
void repl_flush(struct repl *r);

/* The store reads go to. */
struct stor_db *repl_db(struct repl *r);

/* Number of changes submitted and not yet completed. */
size_t repl_in_flight(struct repl *r);

void repl_watch_add(struct repl *r, repl_watch_cb *cb, void *ctx);
void repl_watch_remove(struct repl *r, repl_watch_cb *cb, void *ctx);

/* ---- Reads ---- */

/* A read barrier, before SELECT, EXAMINE, STATUS (and LIST-STATUS) of a
 * mailbox, or before a command naming a modseq above this node's
 * HIGHESTMODSEQ (QRESYNC, CHANGEDSINCE, UNCHANGEDSINCE): makes what this
 * node shows of the mailbox at least as new as what its master held when
 * the call was made (read_consistency = master).  Returns true when the
 * caller may read storage at once (one node, this node is the master,
 * read_consistency = local, nothing to wait for);
 * false when cb will be called exactly once, later, from the loop.  The
 * wait is bounded: cb gets REPL_OK also when the master could not be asked
 * or the node did not catch up in time (the caller then reads what this
 * node has: autonomy first), and res->error_msg is NULL then too.  user
 * and mailbox are copied. */
bool repl_read_barrier(struct repl *r, const char *user, const struct guid *mailbox,
		       repl_done_cb *cb, void *ctx);

/* ---- Changes.  The request and everything it points to must stay valid
 * until the callback fires; cb may not be NULL. ---- */

struct repl_append {
	/* NULL: a new GUID.  Given (a COPY keeping its global UID, or a
	 * forwarded SAVE), text may be NULL to use the text stored for it,
	 * on the local engine only: the cluster sends the text with every
	 * forwarded SAVE (repl-forward.c has no NIL path). */
	const struct guid *guid;
	uint32_t flags;                /* enum stor_flag bits */
	const char *const *keywords;
	size_t keyword_count;
	int64_t internaldate;
	int32_t internaldate_tz;
	const void *text;
	size_t text_len;
};

void repl_append(struct repl *r, const char *user, const struct guid *mailbox,
		 const struct repl_append *req, repl_done_cb *cb, void *ctx);

/* STORE: req->modseq must be 0 (the master assigns). */
void repl_store(struct repl *r, const char *user, const struct guid *mailbox,
		const uint32_t *uids, size_t count, const struct stor_store *req,
		repl_done_cb *cb, void *ctx);

/* COPY, or MOVE (copy then expunge the sources) when move is true.  UIDs
 * that no longer exist are skipped. */
void repl_copy(struct repl *r, const char *user, const struct guid *src,
	       const uint32_t *uids, size_t count, const struct guid *dst, bool move,
	       repl_done_cb *cb, void *ctx);

void repl_expunge(struct repl *r, const char *user, const struct guid *mailbox,
		  const uint32_t *uids, size_t count, repl_done_cb *cb, void *ctx);

/* special_use may be NULL. */
void repl_mailbox_create(struct repl *r, const char *user, const char *name,
			 const char *special_use, repl_done_cb *cb, void *ctx);
/* The same with a given GUID and UIDVALIDITY (NULL and 0: new ones). */
void repl_mailbox_create_as(struct repl *r, const char *user, const char *name,
			    const char *special_use, const struct guid *guid, uint32_t uidvalidity,
			    repl_done_cb *cb, void *ctx);
void repl_mailbox_delete(struct repl *r, const char *user, const struct guid *mailbox,
			 repl_done_cb *cb, void *ctx);
void repl_mailbox_rename(struct repl *r, const char *user, const struct guid *mailbox,
			 const char *new_name, repl_done_cb *cb, void *ctx);
void repl_subscribe(struct repl *r, const char *user, const char *name, bool subscribed,
		    repl_done_cb *cb, void *ctx);
/* Sets one ACL record of owner's mailbox (SPEC.md 7.6): rights "" deletes
 * it.  The caller checked identifier and rights; time_ms comes from
 * stor_acl_next_time().  Replicated like the mailbox list. */
void repl_acl_put(struct repl *r, const char *owner, const struct guid *mailbox,
		  const char *identifier, const char *rights, int64_t time_ms, repl_done_cb *cb,
		  void *ctx);

/* Creates the default mailboxes (INBOX, Drafts, Sent, Trash, Junk, Archive
 * with their SPECIAL-USE attributes) that the user lacks, if the user has
 * no mailbox at all.  Completes with REPL_OK when they exist. */
void repl_user_ensure_defaults(struct repl *r, const char *user, repl_done_cb *cb, void *ctx);

#endif
