/* Mailbox-list changes (CREATE, DELETE, RENAME, (UN)SUBSCRIBE): made here
 * and streamed, with no master to ask, which is why they need none of the
 * forwarding machinery. */
#include "replicator/repl-cluster-private.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "mailbox-master/mm.h"
#include "replicator/repl-mm.h"
#include "replicator/repl-peer.h"

/* ---- Mailbox-list changes: made here, then streamed ---- */

struct list_op {
	struct repl_cluster *cl;
	repl_done_cb *cb;
	void *ctx;
	struct cl_entry entry;
	struct cl_waiter waiter;
	struct owned_result out;
};

static void list_op_done(struct cl_waiter *w)
{
	struct list_op *l = w->ctx;
	l->cl->in_flight--;
	l->cb(l->ctx, owned_get(&l->out));
	owned_free(&l->out);
	cl_entry_free(&l->entry);
	free(l);
}

static void list_local_done(void *ctx, const struct repl_result *res)
{
	struct list_op *l = ctx;
	struct repl_cluster *cl = l->cl;
	if (res->error != REPL_OK || cl->destroying) {
		cl->in_flight--;
		l->cb(l->ctx, res);
		cl_entry_free(&l->entry);
		free(l);
		return;
	}
	owned_set(&l->out, res);
	if (l->entry.kind == CL_ENTRY_CREATE && res->mailbox != NULL) {
		l->entry.guid = res->mailbox->guid;
		l->entry.uidvalidity = res->mailbox->uidvalidity;
		snprintf(l->entry.special_use, sizeof(l->entry.special_use), "%s",
			 res->mailbox->special_use);
	}
	/* Logged once made (the GUID of a CREATE is known only now); a crash
	 * in between leaves it to the periodic check. */
	if (cl_log_append(cl, &l->entry, &l->waiter.seq) < 0)
		l->waiter.seq = 0;
	l->waiter.durable = true;
	cl_waiter_add(cl, &l->waiter);
	cl_waiters_check(cl);
}

static struct list_op *list_op_new(struct repl_cluster *cl, enum cl_entry_kind kind,
				   const char *user, repl_done_cb *cb, void *ctx)
{
	struct list_op *l = xcalloc(1, sizeof(*l));
	l->cl = cl;
	l->cb = cb;
	l->ctx = ctx;
	l->entry.kind = kind;
	snprintf(l->entry.user, sizeof(l->entry.user), "%s", user);
	l->waiter.ctx = l;
	l->waiter.done = list_op_done;
	l->waiter.list_change = true;
	snprintf(l->waiter.user, sizeof(l->waiter.user), "%s", user);
	cl->in_flight++;
	return l;
}

void cl_mailbox_create(struct repl *r, const char *user, const char *name,
		       const char *special_use, const struct guid *guid,
		       uint32_t uidvalidity, repl_done_cb *cb, void *ctx)
{
	struct repl_cluster *cl = to_cl(r);
	struct list_op *l = list_op_new(cl, CL_ENTRY_CREATE, user, cb, ctx);
	l->entry.name = xstrdup(name);
	cl->local->v->mailbox_create(cl->local, user, name, special_use, guid, uidvalidity,
				     list_local_done, l);
}

/* DELETE and RENAME name the mailbox by its current name too. */
static char *mailbox_name(struct repl_cluster *cl, const struct guid *mailbox)
{
	struct stor_mailbox mb;
	const char *err;
	if (stor_mailbox_get_by_guid(cl->repl.db, mailbox, &mb, &err) <= 0)
		return xstrdup("");
	char *name = xstrdup(mb.name);
	stor_mailbox_free(&mb);
	return name;
}

void cl_mailbox_delete(struct repl *r, const char *user, const struct guid *mailbox,
		       repl_done_cb *cb, void *ctx)
{
	struct repl_cluster *cl = to_cl(r);
	struct list_op *l = list_op_new(cl, CL_ENTRY_DELETE, user, cb, ctx);
	l->entry.guid = *mailbox;
	l->entry.name = mailbox_name(cl, mailbox);
	repl_mailbox_delete(cl->local, user, mailbox, list_local_done, l);
}

void cl_mailbox_rename(struct repl *r, const char *user, const struct guid *mailbox,
		       const char *new_name, repl_done_cb *cb, void *ctx)
{
	struct repl_cluster *cl = to_cl(r);
	struct list_op *l = list_op_new(cl, CL_ENTRY_RENAME, user, cb, ctx);
	l->entry.guid = *mailbox;
	l->entry.name = mailbox_name(cl, mailbox);
	l->entry.new_name = xstrdup(new_name);
	repl_mailbox_rename(cl->local, user, mailbox, new_name, list_local_done, l);
}

/* The entry names the record only: the streamer sends the record as it is
 * then (SPEC.md 7.6), so a later change overtaking this one costs nothing. */
void cl_acl_put(struct repl *r, const char *owner, const struct guid *mailbox,
		const char *identifier, const char *rights, int64_t time_ms, repl_done_cb *cb,
		void *ctx)
{
	struct repl_cluster *cl = to_cl(r);
	struct list_op *l = list_op_new(cl, CL_ENTRY_ACL, owner, cb, ctx);
	l->entry.guid = *mailbox;
	l->entry.name = xstrdup(identifier);
	repl_acl_put(cl->local, owner, mailbox, identifier, rights, time_ms, list_local_done, l);
}

void cl_subscribe(struct repl *r, const char *user, const char *name, bool subscribed,
		  repl_done_cb *cb, void *ctx)
{
	struct repl_cluster *cl = to_cl(r);
	struct list_op *l = list_op_new(cl, subscribed ? CL_ENTRY_SUBSCRIBE : CL_ENTRY_UNSUBSCRIBE,
					user, cb, ctx);
	l->entry.name = xstrdup(name);
	repl_subscribe(cl->local, user, name, subscribed, list_local_done, l);
}
