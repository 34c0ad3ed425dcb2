/* Single-node implementation of the seam (repl.h).
 *
 * A change is applied to storage at once (one atomic batch, visible to
 * reads) and completed only after it is durable.  Group commit: an
 * ev_prepare watcher, which libev runs once per loop turn just before it
 * would block, starts a sync (stor_sync_start) while anything is pending;
 * all changes of that turn share its fsync, which runs in storage's helper
 * thread while the loop serves other clients.  When it is done, an io
 * watcher on stor_sync_fd() runs their durable callbacks, which answer the
 * clients and notify watchers; changes made meanwhile wait for the next
 * sync.  Refused changes (nothing written) complete from the prepare
 * watcher, so no callback ever runs inside the call that submitted it. */
#include "replicator/repl-private.h"
#include "replicator/repl-pseen.h"

#include <ev.h>
#include <string.h>
#include <time.h>

#include "lib/log.h"
#include "lib/xalloc.h"
#include "storage/storage-acl.h"

struct local_op;

struct repl_local {
	struct repl repl;
	struct ev_loop *loop;
	struct repl_settings set;
	ev_prepare prepare;
	ev_idle idle;
	ev_io sync_io;              /* storage's sync thread is done */
	/* Refused or no-op changes to complete at the next prepare. */
	struct local_op *immediate_head, **immediate_tail;
	size_t in_flight;
	bool destroying;
};

struct local_op {
	struct repl_local *rl;
	struct local_op *next;
	repl_done_cb *cb;
	void *ctx;
	struct repl_result res;
	char *user;
	char *error_msg;
	/* Mailboxes to notify after durability. */
	struct guid notify[2];
	unsigned notify_count;
	/* Owned result data. */
	stor_msg_list changed;
	stor_uid_list failed, expunged, src_uids, dst_uids;
	struct stor_mailbox mailbox;
	bool have_mailbox;
};

static struct local_op *op_new(struct repl_local *rl, const char *user, repl_done_cb *cb, void *ctx)
{
	struct local_op *op = xcalloc(1, sizeof(*op));
	op->rl = rl;
	op->cb = cb;
	op->ctx = ctx;
	op->user = xstrdup(user);
	rl->in_flight++;
	return op;
}

static void op_free(struct local_op *op)
{
	op->rl->in_flight--;
	stor_msg_list_free(&op->changed);
	ARRAY_FREE(&op->failed);
	ARRAY_FREE(&op->expunged);
	ARRAY_FREE(&op->src_uids);
	ARRAY_FREE(&op->dst_uids);
	if (op->have_mailbox)
		stor_mailbox_free(&op->mailbox);
	free(op->error_msg);
	free(op->user);
	free(op);
}

static void op_complete(struct local_op *op)
{
	struct repl_local *rl = op->rl;
	op->res.changed = op->changed.items;
	op->res.changed_count = op->changed.count;
	op->res.failed = op->failed.items;
	op->res.failed_count = op->failed.count;
	op->res.expunged = op->expunged.items;
	op->res.expunged_count = op->expunged.count;
	op->res.src_uids = op->src_uids.items;
	op->res.dst_uids = op->dst_uids.items;
	op->res.uid_count = op->src_uids.count;
	if (op->have_mailbox)
		op->res.mailbox = &op->mailbox;
	op->res.error_msg = op->error_msg;
	op->cb(op->ctx, &op->res);
	if (op->res.error == REPL_OK) {
		for (unsigned i = 0; i < op->notify_count; i++)
			repl_notify(&rl->repl, op->user, &op->notify[i]);
	}
	op_free(op);
}

static void op_durable(void *ctx, bool ok)
{
	struct local_op *op = ctx;
	if (!ok) {
		op->res.error = REPL_ERR_INTERNAL;
		free(op->error_msg);
		op->error_msg = xstrdup("could not make the change durable");
	}
	op_complete(op);
}

static void arm(struct repl_local *rl)
{
	/* The prepare watcher runs before the loop blocks; an idle watcher
	 * keeps it from blocking while work is pending. */
	if (!ev_is_active(&rl->idle))
		ev_idle_start(rl->loop, &rl->idle);
}

/* Finishes op: after the next group commit when it wrote something (or
 * succeeded), or at the next prepare when it was refused. */
static void op_submit(struct local_op *op, bool wrote)
{
	struct repl_local *rl = op->rl;
	if (wrote) {
		stor_on_durable(rl->repl.db, op_durable, op);
	} else {
		op->next = NULL;
		*rl->immediate_tail = op;
		rl->immediate_tail = &op->next;
	}
	arm(rl);
}

static void op_fail(struct local_op *op, enum repl_error error, const char *msg)
{
	op->res.error = error;
	op->error_msg = xstrdup(msg);
	op_submit(op, false);
}

static void run_immediates(struct repl_local *rl)
{
	struct local_op *list = rl->immediate_head;
	rl->immediate_head = NULL;
	rl->immediate_tail = &rl->immediate_head;
	while (list != NULL) {
		struct local_op *next = list->next;
		op_complete(list);
		list = next;
	}
}

/* With wait set (shutdown, flush), syncs in this call; otherwise starts
 * the sync and lets sync_io_cb finish it. */
static void group_commit(struct repl_local *rl, bool wait)
{
	struct stor_db *db = rl->repl.db;
	/* Callbacks may submit more changes (pipelined commands); a few rounds
	 * per turn, then the idle watcher brings us back. */
	for (int round = 0; round < 4; round++) {
		run_immediates(rl);
		if (!stor_sync_pending(db))
			break;
		if (wait || !ev_is_active(&rl->sync_io)) {
			const char *err;
			if (stor_sync(db, &err) < 0)
				log_errorx("group commit failed: %s", err);
			continue;
		}
		/* Another sync may start while one runs (storage runs a few at
		 * once); with all busy, the end of one wakes us. */
		if (stor_sync_start(db) > 0 || stor_sync_busy(db))
			break;
		/* Nothing needed syncing: the callbacks ran, maybe adding more. */
	}
	/* While a sync is in flight the loop may block: its end wakes us. */
	if (rl->immediate_head == NULL && (!stor_sync_pending(db) || stor_sync_busy(db)))
		ev_idle_stop(rl->loop, &rl->idle);
	else
		arm(rl);
}

static void prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	struct repl_local *rl = (struct repl_local *)((char *)w - offsetof(struct repl_local, prepare));
	group_commit(rl, false);
}

static void sync_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct repl_local *rl = (struct repl_local *)((char *)w - offsetof(struct repl_local, sync_io));
	/* The callbacks' own changes are started by the prepare watcher,
	 * which runs before the loop blocks again. */
	stor_sync_finish(rl->repl.db);
}

static void idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	/* Nothing: its only job is to make the loop turn without blocking. */
}

static enum repl_error classify(struct stor_db *db, const char *err)
{
	if (err != NULL && stor_last_error_kind(db) == STOR_ERROR_TOOBIG)
		return REPL_ERR_TOOBIG;
	if (err != NULL && stor_last_error_kind(db) == STOR_ERROR_LIMIT)
		return REPL_ERR_LIMIT;
	return REPL_ERR_INTERNAL;
}

/* 1 with *mb_r filled, or fails op and returns 0. */
static int get_mailbox(struct local_op *op, const struct guid *g, struct stor_mailbox *mb_r)
{
	const char *err;
	int r = stor_mailbox_get_by_guid(op->rl->repl.db, g, mb_r, &err);
	if (r > 0)
		return 1;
	if (r == 0)
		op_fail(op, REPL_ERR_NOTFOUND, "mailbox does not exist");
	else
		op_fail(op, REPL_ERR_INTERNAL, err);
	return 0;
}

/* The mailbox's HIGHESTMODSEQ right after a change: the modseq a replica
 * must reach to hold it. */
static void note_modseq(struct local_op *op, const struct guid *mailbox)
{
	struct stor_mailbox mb;
	const char *err;
	if (stor_mailbox_get_by_guid(op->rl->repl.db, mailbox, &mb, &err) > 0) {
		op->res.modseq = mb.highestmodseq;
		stor_mailbox_free(&mb);
	}
}

static void local_append(struct repl *r, const char *user, const struct guid *mailbox,
			 const struct repl_append *req, repl_done_cb *cb, void *ctx)
{
	struct repl_local *rl = (struct repl_local *)r;
	struct local_op *op = op_new(rl, user, cb, ctx);
	if (req->text_len > rl->set.max_message_size) {
		op_fail(op, REPL_ERR_TOOBIG, "message too large");
		return;
	}
	struct stor_mailbox mb;
	if (!get_mailbox(op, mailbox, &mb))
		return;
	op->res.uidvalidity = mb.uidvalidity;
	stor_mailbox_free(&mb);
	struct stor_append sa;
	memset(&sa, 0, sizeof(sa));
	sa.guid = req->guid;
	sa.flags = req->flags;
	sa.keywords = req->keywords;
	sa.keyword_count = req->keyword_count;
	sa.internaldate = req->internaldate;
	sa.internaldate_tz = req->internaldate_tz;
	sa.text = req->text != NULL || req->guid != NULL ? req->text : "";
	sa.text_len = req->text_len;
	const char *err;
	if (stor_msg_append(r->db, mailbox, &sa, &op->res.uid, &op->res.modseq, &err) < 0) {
		op_fail(op, classify(r->db, err), err);
		return;
	}
	op->notify[op->notify_count++] = *mailbox;
	op_submit(op, true);
}

static void local_store(struct repl *r, const char *user, const struct guid *mailbox,
			const uint32_t *uids, size_t count, const struct stor_store *req,
			repl_done_cb *cb, void *ctx)
{
	struct repl_local *rl = (struct repl_local *)r;
	struct local_op *op = op_new(rl, user, cb, ctx);
	const char *err;
	int ret = req->seen_of != NULL ?
		repl_pseen_store_apply(r->db, mailbox, uids, count, req, &op->changed, &op->failed,
				       &err) :
		stor_msg_store(r->db, mailbox, uids, count, req, &op->changed, &op->failed, &err);
	if (ret < 0) {
		op_fail(op, classify(r->db, err), err);
		return;
	}
	if (op->changed.count > 0)
		op->notify[op->notify_count++] = *mailbox;
	note_modseq(op, mailbox);
	op_submit(op, true);
}

static void local_copy(struct repl *r, const char *user, const struct guid *src,
		       const uint32_t *uids, size_t count, const struct guid *dst, bool move,
		       repl_done_cb *cb, void *ctx)
{
	struct repl_local *rl = (struct repl_local *)r;
	struct local_op *op = op_new(rl, user, cb, ctx);
	struct stor_mailbox mb;
	if (!get_mailbox(op, src, &mb))
		return;
	stor_mailbox_free(&mb);
	if (!get_mailbox(op, dst, &mb))
		return;
	op->res.uidvalidity = mb.uidvalidity;
	stor_mailbox_free(&mb);
	const char *err;
	for (size_t i = 0; i < count; i++) {
		struct stor_msg msg;
		int found = stor_msg_get(r->db, src, uids[i], &msg, &err);
		if (found < 0)
			goto fail;
		if (found == 0)
			continue;
		stor_msg_free(&msg);
		uint32_t new_uid;
		if (stor_msg_copy(r->db, src, uids[i], dst, 0, 0, &new_uid, NULL, &err) < 0)
			goto fail;
		ARRAY_PUSH(&op->src_uids, uids[i]);
		ARRAY_PUSH(&op->dst_uids, new_uid);
	}
	if (op->src_uids.count > 0)
		op->notify[op->notify_count++] = *dst;
	if (move && op->src_uids.count > 0) {
		if (stor_msg_expunge(r->db, src, op->src_uids.items, op->src_uids.count, 0,
				     &op->expunged, &err) < 0)
			goto fail;
		op->notify[op->notify_count++] = *src;
	}
	note_modseq(op, dst);
	op_submit(op, true);
	return;
fail:
	/* Copies made so far stay (they are whole messages); report the
	 * failure so the client retries. */
	op_fail(op, classify(rl->repl.db, err), err);
}

static void local_expunge(struct repl *r, const char *user, const struct guid *mailbox,
			  const uint32_t *uids, size_t count, repl_done_cb *cb, void *ctx)
{
	struct repl_local *rl = (struct repl_local *)r;
	struct local_op *op = op_new(rl, user, cb, ctx);
	const char *err;
	if (count > 0 && stor_msg_expunge(r->db, mailbox, uids, count, 0, &op->expunged, &err) < 0) {
		op_fail(op, classify(r->db, err), err);
		return;
	}
	if (op->expunged.count > 0)
		op->notify[op->notify_count++] = *mailbox;
	note_modseq(op, mailbox);
	op_submit(op, true);
}

static void local_mailbox_create(struct repl *r, const char *user, const char *name,
				 const char *special_use, const struct guid *guid,
				 uint32_t uidvalidity, repl_done_cb *cb, void *ctx)
{
	struct repl_local *rl = (struct repl_local *)r;
	struct local_op *op = op_new(rl, user, cb, ctx);
	const char *err;
	struct stor_mailbox mb;
	int found = stor_mailbox_get(r->db, user, name, &mb, &err);
	if (found < 0) {
		op_fail(op, REPL_ERR_INTERNAL, err);
		return;
	}
	if (found > 0) {
		stor_mailbox_free(&mb);
		op_fail(op, REPL_ERR_EXISTS, "mailbox already exists");
		return;
	}
	struct stor_mailbox_create req;
	memset(&req, 0, sizeof(req));
	req.user = user;
	req.name = name;
	req.special_use = special_use;
	req.guid = guid;
	req.uidvalidity = uidvalidity;
	if (stor_mailbox_create(r->db, &req, &op->mailbox, &err) < 0) {
		op_fail(op, REPL_ERR_INTERNAL, err);
		return;
	}
	op->have_mailbox = true;
	op->notify[op->notify_count++] = op->mailbox.guid;
	op_submit(op, true);
}

static void local_mailbox_delete(struct repl *r, const char *user, const struct guid *mailbox,
				 repl_done_cb *cb, void *ctx)
{
	struct repl_local *rl = (struct repl_local *)r;
	struct local_op *op = op_new(rl, user, cb, ctx);
	struct stor_mailbox mb;
	if (!get_mailbox(op, mailbox, &mb))
		return;
	stor_mailbox_free(&mb);
	const char *err;
	if (stor_mailbox_delete(r->db, mailbox, &err) < 0) {
		op_fail(op, REPL_ERR_INTERNAL, err);
		return;
	}
	op->notify[op->notify_count++] = *mailbox;
	op_submit(op, true);
}

static uint64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void local_mailbox_rename(struct repl *r, const char *user, const struct guid *mailbox,
				 const char *new_name, repl_done_cb *cb, void *ctx)
{
	struct repl_local *rl = (struct repl_local *)r;
	struct local_op *op = op_new(rl, user, cb, ctx);
	struct stor_mailbox mb;
	if (!get_mailbox(op, mailbox, &mb))
		return;
	stor_mailbox_free(&mb);
	const char *err;
	int found = stor_mailbox_get(r->db, user, new_name, &mb, &err);
	if (found != 0) {
		if (found > 0)
			stor_mailbox_free(&mb);
		op_fail(op, found > 0 ? REPL_ERR_EXISTS : REPL_ERR_INTERNAL,
			found > 0 ? "mailbox already exists" : err);
		return;
	}
	/* A user's rename: a new stamp, above the one the mailbox has, so
	 * that a list merge that meets this name and an older one elsewhere
	 * keeps this one (SPEC.md 10.5). */
	uint64_t stamp;
	if (stor_mailbox_rename_stamp(r->db, mailbox, &stamp, &err) < 0 ||
	    stor_mailbox_rename_stamped(r->db, mailbox, new_name,
					stor_rename_stamp_next(stamp, wall_ms(),
							       rl->set.node_id),
					&err) < 0) {
		op_fail(op, REPL_ERR_INTERNAL, err);
		return;
	}
	op->notify[op->notify_count++] = *mailbox;
	op_submit(op, true);
}

static void local_subscribe(struct repl *r, const char *user, const char *name, bool subscribed,
			    repl_done_cb *cb, void *ctx)
{
	struct repl_local *rl = (struct repl_local *)r;
	struct local_op *op = op_new(rl, user, cb, ctx);
	const char *err;
	if (stor_subscribe(r->db, user, name, subscribed, &err) < 0) {
		op_fail(op, REPL_ERR_INTERNAL, err);
		return;
	}
	op_submit(op, true);
}

static void local_acl_put(struct repl *r, const char *owner, const struct guid *mailbox,
			  const char *identifier, const char *rights, int64_t time_ms,
			  repl_done_cb *cb, void *ctx)
{
	struct repl_local *rl = (struct repl_local *)r;
	struct local_op *op = op_new(rl, owner, cb, ctx);
	const char *err;
	if (stor_acl_put(r->db, owner, mailbox, identifier, rights, time_ms, NULL, &err) < 0) {
		op_fail(op, REPL_ERR_INTERNAL, err);
		return;
	}
	op_submit(op, true);
}

static void local_complete_later(struct repl *r, repl_done_cb *cb, void *ctx)
{
	struct local_op *op = op_new((struct repl_local *)r, "", cb, ctx);
	op_submit(op, false);
}

static void local_flush(struct repl *r)
{
	group_commit((struct repl_local *)r, true);
}

static size_t local_in_flight(struct repl *r)
{
	return ((struct repl_local *)r)->in_flight;
}

static void local_destroy(struct repl *r)
{
	struct repl_local *rl = (struct repl_local *)r;
	rl->destroying = true;
	for (int i = 0; i < 8 && rl->in_flight > 0; i++)
		group_commit(rl, true);
	if (rl->in_flight > 0)
		log_warnx("repl: %zu changes still in flight at shutdown", rl->in_flight);
	ev_prepare_stop(rl->loop, &rl->prepare);
	ev_idle_stop(rl->loop, &rl->idle);
	ev_io_stop(rl->loop, &rl->sync_io);
	ARRAY_FREE(&r->watchers);
	free(rl);
}

static const struct repl_vfuncs local_vfuncs = {
	.append = local_append,
	.store = local_store,
	.copy = local_copy,
	.expunge = local_expunge,
	.mailbox_create = local_mailbox_create,
	.mailbox_delete = local_mailbox_delete,
	.mailbox_rename = local_mailbox_rename,
	.subscribe = local_subscribe,
	.acl_put = local_acl_put,
	.complete_later = local_complete_later,
	.flush = local_flush,
	.in_flight = local_in_flight,
	.destroy = local_destroy,
};

struct repl *repl_local_create(struct ev_loop *loop, struct stor_db *db,
			       const struct repl_settings *set)
{
	struct repl_local *rl = xcalloc(1, sizeof(*rl));
	rl->repl.v = &local_vfuncs;
	rl->repl.db = db;
	rl->loop = loop;
	rl->set = *set;
	if (rl->set.max_message_size == 0)
		rl->set.max_message_size = 64ull * 1024 * 1024;
	rl->immediate_tail = &rl->immediate_head;
	ev_prepare_init(&rl->prepare, prepare_cb);
	ev_prepare_start(loop, &rl->prepare);
	ev_idle_init(&rl->idle, idle_cb);
	/* Without the helper thread, syncs block the loop as before. */
	int fd = stor_sync_fd(db);
	ev_io_init(&rl->sync_io, sync_io_cb, fd >= 0 ? fd : 0, EV_READ);
	if (fd >= 0)
		ev_io_start(loop, &rl->sync_io);
	else
		log_warnx("repl: fsyncs will block the event loop (no sync thread)");
	return &rl->repl;
}
