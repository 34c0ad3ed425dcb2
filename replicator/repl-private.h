/* Shared by the implementations of the seam (repl.h): the dispatch table and
 * the watcher list.  Nothing outside replicator/ includes this. */
#ifndef REPLICATOR_REPL_PRIVATE_H
#define REPLICATOR_REPL_PRIVATE_H

#include "lib/arr.h"
#include "replicator/repl.h"

struct repl_vfuncs {
	void (*append)(struct repl *r, const char *user, const struct guid *mailbox,
		       const struct repl_append *req, repl_done_cb *cb, void *ctx);
	void (*store)(struct repl *r, const char *user, const struct guid *mailbox,
		      const uint32_t *uids, size_t count, const struct stor_store *req,
		      repl_done_cb *cb, void *ctx);
	void (*copy)(struct repl *r, const char *user, const struct guid *src,
		     const uint32_t *uids, size_t count, const struct guid *dst, bool move,
		     repl_done_cb *cb, void *ctx);
	void (*expunge)(struct repl *r, const char *user, const struct guid *mailbox,
			const uint32_t *uids, size_t count, repl_done_cb *cb, void *ctx);
	void (*mailbox_create)(struct repl *r, const char *user, const char *name,
			       const char *special_use, const struct guid *guid,
			       uint32_t uidvalidity, repl_done_cb *cb, void *ctx);
	void (*mailbox_delete)(struct repl *r, const char *user, const struct guid *mailbox,
			       repl_done_cb *cb, void *ctx);
	void (*mailbox_rename)(struct repl *r, const char *user, const struct guid *mailbox,
			       const char *new_name, repl_done_cb *cb, void *ctx);
	void (*subscribe)(struct repl *r, const char *user, const char *name, bool subscribed,
			  repl_done_cb *cb, void *ctx);
	/* repl_read_barrier(); NULL: nothing to wait for, ever. */
	bool (*read_barrier)(struct repl *r, const char *user, const struct guid *mailbox,
			     repl_done_cb *cb, void *ctx);
	void (*acl_put)(struct repl *r, const char *owner, const struct guid *mailbox,
			const char *identifier, const char *rights, int64_t time_ms,
			repl_done_cb *cb, void *ctx);
	/* Calls cb with REPL_OK from the loop, after changes submitted so far. */
	void (*complete_later)(struct repl *r, repl_done_cb *cb, void *ctx);
	void (*flush)(struct repl *r);
	size_t (*in_flight)(struct repl *r);
	void (*destroy)(struct repl *r);
};

struct repl_watcher {
	repl_watch_cb *cb;
	void *ctx;
};

struct repl {
	const struct repl_vfuncs *v;
	struct stor_db *db;
	ARRAY(struct repl_watcher) watchers;
};

/* Tells every watcher that mailbox changed durably. */
void repl_notify(struct repl *r, const char *user, const struct guid *mailbox);

#endif
