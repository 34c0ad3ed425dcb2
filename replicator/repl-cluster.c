/* The replicating seam: where each change of IMAP and the admin socket goes.
 *
 * A message change (APPEND, STORE, EXPUNGE, and COPY/MOVE built from them)
 * first learns the master of its granule from repl-mm, then:
 *  - as master: logs the change (repl-stream.c streams it to every peer),
 *    applies it through the single-node engine (repl-local.c: storage and
 *    group commit) and completes once durable here and held by
 *    sync_replicas replicas, or degraded as degraded_writes says (cl_waiter,
 *    SPEC.md 8.6); with refuse and too few healthy replicas it is refused
 *    before it is made;
 *  - elsewhere: forwards it to the master on the link (SPEC.md 8), applies
 *    the master's answer here (same UID, modseq, GUID) and completes once
 *    that is durable; the master answered only after its own replicas;
 *  - with no reachable master: applies it here with a local UID
 *    (autonomously, seed goal 3), completes, and queues a resync of the
 *    user with every peer: UIDFIX then settles UIDs both sides assigned
 *    (degraded_writes = refuse: refused instead).
 * Mailbox-list changes are made here and streamed like the rest.
 *
 * This file: results, changes as master, the seam and notifications.
 * Forwards (repl-forward.c), COPY and MOVE (repl-copy.c) and mailbox-list
 * changes (repl-mailbox-list.c) have files of their own. */
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
#include "replicator/repl-sync.h"

struct repl_cluster *to_cl(struct repl *r)
{
	return (struct repl_cluster *)r;
}

/* ---- Results that outlive the callback they came from ---- */

static void msg_copy(struct stor_msg *dst, const struct stor_msg *src)
{
	*dst = *src;
	memset(&dst->keywords, 0, sizeof(dst->keywords));
	for (size_t i = 0; i < src->keywords.count; i++)
		ARRAY_PUSH(&dst->keywords, xstrdup(src->keywords.items[i]));
	memset(&dst->stamps, 0, sizeof(dst->stamps));
	for (size_t i = 0; i < src->stamps.count; i++) {
		struct stor_stamp st = src->stamps.items[i];
		st.name = xstrdup(st.name);
		ARRAY_PUSH(&dst->stamps, st);
	}
}

void uids_copy(stor_uid_list *dst, const uint32_t *src, size_t n)
{
	for (size_t i = 0; i < n; i++)
		ARRAY_PUSH(dst, src[i]);
}

void owned_set(struct owned_result *o, const struct repl_result *res)
{
	o->res = *res;
	if (res->error_msg != NULL)
		o->error_msg = xstrdup(res->error_msg);
	for (size_t i = 0; i < res->changed_count; i++) {
		struct stor_msg m;
		msg_copy(&m, &res->changed[i]);
		ARRAY_PUSH(&o->changed, m);
	}
	uids_copy(&o->failed, res->failed, res->failed_count);
	uids_copy(&o->expunged, res->expunged, res->expunged_count);
	uids_copy(&o->src_uids, res->src_uids, res->uid_count);
	uids_copy(&o->dst_uids, res->dst_uids, res->uid_count);
	if (res->mailbox != NULL) {
		o->mailbox = *res->mailbox;
		o->mailbox.user = xstrdup(res->mailbox->user);
		o->mailbox.name = xstrdup(res->mailbox->name);
		o->have_mailbox = true;
	}
}

/* Points the public result at the owned arrays. */
const struct repl_result *owned_get(struct owned_result *o)
{
	o->res.error_msg = o->error_msg;
	o->res.changed = o->changed.items;
	o->res.changed_count = o->changed.count;
	o->res.failed = o->failed.items;
	o->res.failed_count = o->failed.count;
	o->res.expunged = o->expunged.items;
	o->res.expunged_count = o->expunged.count;
	o->res.src_uids = o->src_uids.items;
	o->res.dst_uids = o->dst_uids.items;
	o->res.uid_count = o->src_uids.count;
	o->res.mailbox = o->have_mailbox ? &o->mailbox : NULL;
	return &o->res;
}

void owned_free(struct owned_result *o)
{
	free(o->error_msg);
	stor_msg_list_free(&o->changed);
	ARRAY_FREE(&o->failed);
	ARRAY_FREE(&o->expunged);
	ARRAY_FREE(&o->src_uids);
	ARRAY_FREE(&o->dst_uids);
	if (o->have_mailbox)
		stor_mailbox_free(&o->mailbox);
	memset(o, 0, sizeof(*o));
}

void owned_error(struct owned_result *o, enum repl_error error, const char *msg)
{
	o->res.error = error;
	free(o->error_msg);
	o->error_msg = xstrdup(msg);
}

/* ---- Changes as master: log, apply, wait for replicas ---- */

struct master_op {
	struct repl_cluster *cl;
	repl_done_cb *cb;
	void *ctx;
	struct cl_waiter waiter;
	struct owned_result out;
	bool *held_r;                  /* cl_append_req.held_r */
	/* An APPEND's message (its GUID as made), looked up again when the
	 * change completes: master_uid_now(). */
	bool append;
	struct guid mailbox, made;
};

/* Where an APPEND's message is when its answer is built.  It was made at
 * res->uid, but the answer waits for durability and the replicas, and a
 * sync's merge may move the message meanwhile (a UID conflict gives it a
 * fresh UID and leaves a tombstone at the old one) or a user may expunge
 * it: told the old UID, a client holds a UID that names nothing, or
 * another message once a merge gives it away (seed 13020).  Moved: the
 * UID and modseq it has now.  Gone, or not readable: UID 0, which no
 * caller tells (SPEC 6.4, OK [MODSEQ m EXPUNGED] to a forwarder). */
static void master_uid_now(const struct master_op *m, struct repl_result *res)
{
	if (!m->append || res->error != REPL_OK || res->uid == 0)
		return;
	struct stor_db *db = m->cl->repl.db;
	const char *err;
	uint32_t at = 0;
	int r = stor_msg_find_guid(db, &m->mailbox, &m->made, &at, &err);
	if (r > 0 && at == res->uid)
		return;
	struct stor_msg msg;
	if (r > 0 && stor_msg_get(db, &m->mailbox, at, &msg, &err) > 0) {
		log_info("replication: %s: the message made at UID %u is at UID %u now (a sync "
			 "moved it): answered there", m->waiter.user, res->uid, at);
		res->uid = at;
		res->modseq = msg.modseq;
		stor_msg_free(&msg);
		return;
	}
	log_info("replication: %s: the message made at UID %u is gone (%s): answered without "
		 "a UID", m->waiter.user, res->uid, r < 0 ? err : "expunged meanwhile");
	res->uid = 0;
}

static void master_op_done(struct cl_waiter *w)
{
	struct master_op *m = w->ctx;
	m->cl->in_flight--;
	master_uid_now(m, &m->out.res);
	if (w->unavailable)
		owned_error(&m->out, REPL_ERR_UNAVAILABLE,
			    "stored here, but fewer than sync_replicas replicas acknowledged it in "
			    "time; it is replicated when they can take it (a retried APPEND may "
			    "store the message twice)");
	if (w->held && m->held_r != NULL)
		*m->held_r = true;
	m->cb(m->ctx, owned_get(&m->out));
	owned_free(&m->out);
	free(m);
}

static void master_local_done(void *ctx, const struct repl_result *res)
{
	struct master_op *m = ctx;
	if (res->error != REPL_OK || m->waiter.seq == 0 || m->cl->destroying) {
		struct repl_result now = *res;
		master_uid_now(m, &now);
		m->cl->in_flight--;
		m->cb(m->ctx, &now);
		free(m);
		return;
	}
	owned_set(&m->out, res);
	m->waiter.durable = true;
	cl_waiter_add(m->cl, &m->waiter);
	cl_waiters_check(m->cl);
}

/* degraded_writes = refuse with too few healthy replicas: the change is
 * refused before anything is made, answered from the loop. */
struct refusal {
	struct repl_cluster *cl;
	repl_done_cb *cb;
	void *ctx;
};

static void refusal_done(void *ctx, const struct repl_result *unused)
{
	struct refusal *r = ctx;
	struct repl_result res;
	(void)unused;
	memset(&res, 0, sizeof(res));
	res.error = REPL_ERR_UNAVAILABLE;
	res.error_msg = "fewer than sync_replicas replicas can take changes now "
			"(degraded_writes = refuse); nothing was changed";
	r->cl->in_flight--;
	r->cb(r->ctx, &res);
	free(r);
}

static bool refused_now(struct repl_cluster *cl, uint32_t holder, repl_done_cb *cb, void *ctx)
{
	if (!cl_must_refuse_holder(cl, holder))
		return false;
	struct refusal *r = xcalloc(1, sizeof(*r));
	r->cl = cl;
	r->cb = cb;
	r->ctx = ctx;
	cl->in_flight++;
	cl->local->v->complete_later(cl->local, refusal_done, r);
	return true;
}

/* Logs a change of mailbox's messages; the returned master_op completes
 * the caller once the change is on the replicas. */
static struct master_op *master_begin(struct repl_cluster *cl, const char *user,
				      const struct guid *mailbox, repl_done_cb *cb, void *ctx)
{
	struct master_op *m = xcalloc(1, sizeof(*m));
	m->cl = cl;
	m->cb = cb;
	m->ctx = ctx;
	m->waiter.ctx = m;
	m->waiter.done = master_op_done;
	snprintf(m->waiter.user, sizeof(m->waiter.user), "%s", user);
	cl->in_flight++;
	struct cl_entry e;
	memset(&e, 0, sizeof(e));
	e.kind = CL_ENTRY_MAILBOX;
	snprintf(e.user, sizeof(e.user), "%s", user);
	e.guid = *mailbox;
	/* Without an entry nothing would stream it: the change then only
	 * waits for durability here, and the periodic check finds it. */
	if (cl_log_append(cl, &e, &m->waiter.seq) < 0)
		m->waiter.seq = 0;
	return m;
}

/* The local engine's form of an APPEND request (pointers borrowed). */
void append_from_req(const struct cl_append_req *req, struct repl_append *a)
{
	memset(a, 0, sizeof(*a));
	a->guid = &req->guid;
	a->flags = req->flags;
	a->keywords = req->keywords;
	a->keyword_count = req->keyword_count;
	a->internaldate = req->internaldate;
	a->internaldate_tz = req->internaldate_tz;
	a->text = req->text;
	a->text_len = req->text_len;
}

/* A message the mailbox already holds (a SAVE forwarded again after the
 * old master died having streamed it here): its existing UID is the answer. */
static void master_existing_done(void *ctx, const struct repl_result *res)
{
	struct master_op *m = ctx;
	struct repl_result out = *res;
	out.uid = m->out.res.uid;
	out.modseq = m->out.res.modseq;
	out.uidvalidity = m->out.res.uidvalidity;
	master_local_done(m, &out);
}

/* A copy whose text is gone here: NONEXISTENT makes the sender send it. */
static void master_no_text_done(void *ctx, const struct repl_result *res)
{
	struct repl_result out = *res;
	out.error = REPL_ERR_NOTFOUND;
	out.error_msg = "the copied message's text is not here";
	master_local_done(ctx, &out);
}

static const struct cl_req_made *req_made_find(const struct repl_cluster *cl,
						const struct guid *mailbox,
						const struct cl_req_id *id)
{
	if (cl->reqs == NULL)
		return NULL;
	for (size_t i = 0; i < CL_REQ_MAX; i++) {
		const struct cl_req_made *r = &cl->reqs[i];
		if (r->id.sid == id->sid && r->id.n == id->n && guid_equal(&r->mailbox, mailbox))
			return r;
	}
	return NULL;
}

uint64_t cl_req_n_next(struct repl_cluster *cl)
{
	/* From the wall clock in microseconds at the first: a master may
	 * still remember the requests this node made before a restart, and
	 * a new one must not be taken for one of those.  Unique while this
	 * node sends fewer than a million a second on average. */
	if (cl->req_n == 0)
		cl->req_n = (uint64_t)clock_wall_s() * 1000000u + clock_mono_us() % 1000000u;
	return ++cl->req_n;
}

/* Kept in memory only: a request resent to a new master after a
 * failover or a restart is not recognised (SPEC 6.4 says what then). */
static void req_made_add(struct repl_cluster *cl, const struct guid *mailbox,
			 const struct cl_req_id *id, const struct guid *guid)
{
	if (cl->reqs == NULL)
		cl->reqs = xcalloc(CL_REQ_MAX, sizeof(*cl->reqs));
	struct cl_req_made *r = &cl->reqs[cl->req_next];
	r->mailbox = *mailbox;
	r->id = *id;
	r->guid = *guid;
	cl->req_next = (cl->req_next + 1) % CL_REQ_MAX;
}

void cl_master_append(struct repl_cluster *cl, const struct cl_append_req *req, repl_done_cb *cb,
		      void *ctx)
{
	if (refused_now(cl, req->holder, cb, ctx))
		return;
	struct master_op *m = master_begin(cl, req->user, &req->mailbox, cb, ctx);
	m->waiter.holder = req->holder;
	m->held_r = req->held_r;
	uint32_t have;
	const char *err;
	struct stor_msg msg;
	struct stor_mailbox mb;
	struct cl_append_req fresh;
	struct buf text;
	buf_init(&text);
	if (req->req.sid != 0) {
		/* Two COPYs of one message into one mailbox are two messages,
		 * but one COPY resent is one (SPEC 6.4): a GUID the mailbox
		 * holds is this request's only if this request made it. */
		const struct cl_req_made *made = req_made_find(cl, &req->mailbox, &req->req);
		if (made != NULL && !guid_equal(&made->guid, &req->guid)) {
			fresh = *req;
			fresh.guid = made->guid;
			req = &fresh;
		} else if (made == NULL &&
			   (stor_msg_find_guid(cl->repl.db, &req->mailbox, &req->guid, &have, &err) > 0 ||
			    stor_guid_tomb_get(cl->repl.db, &req->mailbox, &req->guid, NULL, &err) > 0)) {
			/* A GUID a user expunged from the mailbox: under it the
			 * copy would be taken for a stale one (SPEC 10.3 "GUID
			 * tombstones"), so it is a new message too. */
			fresh = *req;
			guid_generate(&fresh.guid);
			if (fresh.text == NULL) {
				/* The new GUID has no text yet: the copy gets its
				 * own, as a COPY into its own mailbox does. */
				uint64_t size;
				if (stor_text_exists(cl->repl.db, &req->guid, &size, &err) <= 0 ||
				    stor_text_read(cl->repl.db, &req->guid, 0, size, &text, &err) < 0) {
					buf_free(&text);
					cl->local->v->complete_later(cl->local, master_no_text_done, m);
					return;
				}
				fresh.text = text.data != NULL ? (const void *)text.data : "";
				fresh.text_len = text.len;
			}
			req = &fresh;
			req_made_add(cl, &req->mailbox, &req->req, &fresh.guid);
		} else if (made == NULL) {
			req_made_add(cl, &req->mailbox, &req->req, &req->guid);
		}
	}
	m->append = true;
	m->mailbox = req->mailbox;
	m->made = req->guid;
	if (stor_msg_find_guid(cl->repl.db, &req->mailbox, &req->guid, &have, &err) > 0 &&
	    stor_msg_get(cl->repl.db, &req->mailbox, have, &msg, &err) > 0) {
		/* A GUID is in a mailbox once (SPEC 6.4).  The logged entry
		 * streams it to whoever lacks it; the answer waits for that. */
		m->out.res.uid = have;
		m->out.res.modseq = msg.modseq;
		stor_msg_free(&msg);
		if (stor_mailbox_get_by_guid(cl->repl.db, &req->mailbox, &mb, &err) > 0) {
			m->out.res.uidvalidity = mb.uidvalidity;
			stor_mailbox_free(&mb);
		}
		cl->local->v->complete_later(cl->local, master_existing_done, m);
		return;
	}
	struct repl_append a;
	append_from_req(req, &a);
	/* The request is the caller's and lives until cb; the local engine
	 * reads it (and the text read here) only during this call. */
	repl_append(cl->local, req->user, &req->mailbox, &a, master_local_done, m);
	buf_free(&text);
}

void cl_master_store(struct repl_cluster *cl, const char *user, const struct guid *mailbox,
		     const uint32_t *uids, size_t count, const struct stor_store *req,
		     repl_done_cb *cb, void *ctx)
{
	if (refused_now(cl, 0, cb, ctx))
		return;
	struct master_op *m = master_begin(cl, user, mailbox, cb, ctx);
	repl_store(cl->local, user, mailbox, uids, count, req, master_local_done, m);
}

void cl_master_expunge(struct repl_cluster *cl, const char *user, const struct guid *mailbox,
		       const uint32_t *uids, size_t count, repl_done_cb *cb, void *ctx)
{
	if (refused_now(cl, 0, cb, ctx))
		return;
	struct master_op *m = master_begin(cl, user, mailbox, cb, ctx);
	repl_expunge(cl->local, user, mailbox, uids, count, master_local_done, m);
}

bool cl_is_master(struct repl_cluster *cl, const char *user, const struct guid *mailbox)
{
	char gkey[MM_GKEY_MAX + 1];
	if (cl->mm == NULL || repl_mm_granule_key(cl->mm, user, mailbox, gkey, sizeof(gkey)) < 0)
		return false;
	return repl_mm_is_master(cl->mm, gkey);
}

/* ---- The seam ---- */

void cl_append(struct repl *r, const char *user, const struct guid *mailbox,
	       const struct repl_append *req, repl_done_cb *cb, void *ctx)
{
	struct repl_cluster *cl = to_cl(r);
	if (req->text_len > cl->set.max_message_size) {
		/* Refused the same way everywhere: let the local engine say it. */
		repl_append(cl->local, user, mailbox, req, cb, ctx);
		return;
	}
	struct cl_fwd *f = fwd_new(cl, FWD_APPEND, user, mailbox, cb, ctx);
	f->app.user = f->user;
	f->app.mailbox = *mailbox;
	/* A copy (cl_copy()) comes with a GUID of its own and its text: that
	 * GUID is its identity, so it is sent without REQ (SPEC 6.3, 6.4). */
	if (req->guid != NULL)
		f->app.guid = *req->guid;
	else
		guid_generate(&f->app.guid);
	f->app.flags = req->flags;
	f->app.keywords = req->keywords;
	f->app.keyword_count = req->keyword_count;
	f->app.internaldate = req->internaldate;
	f->app.internaldate_tz = req->internaldate_tz;
	f->app.text = req->text;
	f->app.text_len = req->text_len;
	fwd_start(f);
}

static void cl_store(struct repl *r, const char *user, const struct guid *mailbox,
		     const uint32_t *uids, size_t count, const struct stor_store *req,
		     repl_done_cb *cb, void *ctx)
{
	struct cl_fwd *f = fwd_new(to_cl(r), FWD_STORE, user, mailbox, cb, ctx);
	f->uids = uids;
	f->count = count;
	f->store = *req;
	fwd_name_messages(f);
	fwd_start(f);
}

static void cl_expunge(struct repl *r, const char *user, const struct guid *mailbox,
		       const uint32_t *uids, size_t count, repl_done_cb *cb, void *ctx)
{
	struct cl_fwd *f = fwd_new(to_cl(r), FWD_EXPUNGE, user, mailbox, cb, ctx);
	f->uids = uids;
	f->count = count;
	fwd_name_messages(f);
	fwd_start(f);
}

/* ---- Notifications ---- */

/* Changes this file applies directly to storage (answers from the master)
 * are announced once durable, like the local engine's. */
struct notify_ctx {
	struct repl_cluster *cl;
	char *user;
	struct guid mailbox;
};

static void notify_durable(void *ctx, bool ok)
{
	struct notify_ctx *n = ctx;
	if (ok) {
		n->cl->own_notify = true;
		repl_notify(&n->cl->repl, n->user, &n->mailbox);
		n->cl->own_notify = false;
	}
	free(n->user);
	free(n);
}

void notify_later(struct repl_cluster *cl, const char *user, const struct guid *mailbox)
{
	struct notify_ctx *n = xcalloc(1, sizeof(*n));
	n->cl = cl;
	n->user = xstrdup(user);
	n->mailbox = *mailbox;
	stor_on_durable(cl->repl.db, notify_durable, n);
}

void cl_notify_later(struct repl_cluster *cl, const char *user, const struct guid *mailbox)
{
	notify_later(cl, user, mailbox);
}

/* The local engine's notifications are ours. */
static void inner_watch(void *ctx, const char *user, const struct guid *mailbox)
{
	struct repl_cluster *cl = ctx;
	cl->own_notify = true;
	repl_notify(&cl->repl, user, mailbox);
	cl->own_notify = false;
}

/* Changes that reach the store another way (a resync, a bundle) are
 * announced by their own code.  Two syncs between different pairs of nodes
 * may have put one message at two UIDs: every node keeps the highest
 * (stor_msg_dedupe), so all end alike.  And if this node is the mailbox's
 * master, the other nodes must get the changes too: they are logged like
 * our own. */
static void foreign_watch(void *ctx, const char *user, const struct guid *mailbox)
{
	struct repl_cluster *cl = ctx;
	if (cl->own_notify || cl->destroying)
		return;
	struct stor_mailbox mb;
	const char *err;
	if (stor_mailbox_get_by_guid(cl->repl.db, mailbox, &mb, &err) <= 0)
		return;
	stor_mailbox_free(&mb);
	stor_uid_list gone = ARRAY_INIT;
	if (stor_msg_dedupe(cl->repl.db, mailbox, &gone, &err) < 0)
		log_errorx("replication: %s: removing doubled messages: %s", user, err);
	else if (gone.count > 0) {
		log_info("replication: %s: %zu messages were at two UIDs; the higher ones kept",
			 user, gone.count);
		notify_later(cl, user, mailbox);
	}
	ARRAY_FREE(&gone);
	if (!cl_is_master(cl, user, mailbox))
		return;
	struct cl_entry e;
	uint64_t seq;
	memset(&e, 0, sizeof(e));
	e.kind = CL_ENTRY_MAILBOX;
	snprintf(e.user, sizeof(e.user), "%s", user);
	e.guid = *mailbox;
	(void)cl_log_append(cl, &e, &seq);
}

/* ---- The rest of the seam ---- */

static void cl_complete_later(struct repl *r, repl_done_cb *cb, void *ctx)
{
	to_cl(r)->local->v->complete_later(to_cl(r)->local, cb, ctx);
}

static void cl_flush(struct repl *r)
{
	repl_flush(to_cl(r)->local);
}

static size_t cl_in_flight(struct repl *r)
{
	return to_cl(r)->in_flight;
}

static void cl_destroy(struct repl *r)
{
	struct repl_cluster *cl = to_cl(r);
	cl->destroying = true;
	/* Changes waiting for replicas are durable here: they complete now. */
	for (struct cl_waiter *w = cl->waiters; w != NULL; w = w->next)
		w->seq = 0;
	cl_waiters_check(cl);
	repl_flush(cl->local);
	cl_relay_deinit(cl);
	cl_barrier_deinit(cl);
	cl_stream_deinit(cl);
	for (size_t i = 0; i < cl->under.count; i++)
		free(cl->under.items[i].user);
	ARRAY_FREE(&cl->under);
	cl_promises_free(cl);
	cl_handover_free(cl);
	free(cl->reqs);
	if (cl->store_reqs != NULL) {
		for (size_t i = 0; i < CL_REQ_MAX; i++)
			ARRAY_FREE(&cl->store_reqs[i].failed);
		free(cl->store_reqs);
	}
	repl_watch_remove(cl->local, inner_watch, cl);
	repl_destroy(&cl->local);
	/* Whoever asked is gone by now (starlingd flushed before it closed the
	 * IMAP server): no callback, only memory. */
	while (cl->fwds != NULL) {
		log_warnx("replication: %s: a change was still being forwarded at shutdown",
			  cl->fwds->user);
		fwd_free(cl->fwds);
	}
	if (cl->in_flight > 0)
		log_warnx("replication: %zu changes still in flight at shutdown", cl->in_flight);
	ARRAY_FREE(&r->watchers);
	free(cl);
}

static const struct repl_vfuncs cluster_vfuncs = {
	.append = cl_append,
	.store = cl_store,
	.copy = cl_copy,
	.expunge = cl_expunge,
	.mailbox_create = cl_mailbox_create,
	.mailbox_delete = cl_mailbox_delete,
	.mailbox_rename = cl_mailbox_rename,
	.subscribe = cl_subscribe,
	.read_barrier = cl_read_barrier,
	.acl_put = cl_acl_put,
	.complete_later = cl_complete_later,
	.flush = cl_flush,
	.in_flight = cl_in_flight,
	.destroy = cl_destroy,
};

struct repl *repl_cluster_create(struct ev_loop *loop, struct stor_db *db,
				 const struct repl_settings *set, const struct config *cfg)
{
	struct repl_cluster *cl = xcalloc(1, sizeof(*cl));
	cl->repl.v = &cluster_vfuncs;
	cl->repl.db = db;
	cl->loop = loop;
	cl->cfg = cfg;
	cl->set = *set;
	if (cl->set.max_message_size == 0)
		cl->set.max_message_size = 64ull * 1024 * 1024;
	cl->local = repl_local_create(loop, db, set);
	repl_watch_add(cl->local, inner_watch, cl);
	repl_watch_add(&cl->repl, foreign_watch, cl);
	cl_barrier_init(cl);
	cl_stream_init(cl);
	return &cl->repl;
}

static void sync_peer_event(void *ctx, enum repl_sync_peer_event ev, const char *user,
			    uint32_t sid)
{
	cl_stream_sync_event(ctx, ev, user, sid);
	cl_handover_sync_event(ctx, ev, user, sid);
	if (ev != REPL_SYNC_PEER_START)
		return;
	/* The run's SELECT owns the link to sid from now on, and the peer
	 * keeps that selection when the run moves on to its next peer: what
	 * we selected there before is stale from here (campaign 18173:
	 * INBOX's stream applied in Shared), not only at the run's end
	 * (sync_idle()). */
	struct cl_peer *p = cl_peer_find(ctx, sid);
	if (p != NULL)
		cl_stream_after_resync(p);
	/* A run that moves on to its next peer frees the link of the one
	 * before (repl_sync_busy_with()). */
	cl_fwd_wake_held(ctx);
}

static void sync_idle(void *ctx)
{
	struct repl_cluster *cl = ctx;
	for (size_t i = 0; i < cl->peer_list.count; i++)
		cl_stream_after_resync(cl->peer_list.items[i]);
}

static void sync_released(void *ctx)
{
	cl_fwd_wake_held(ctx);
}

/* A new master cannot know what the old one streamed to whom before it
 * died or let go: replicas may each lack a different change whose modseq
 * is below what they report, which streaming (it resumes above a peer's
 * HIGHESTMODSEQ) would never send, or hold one this node lacks.  A resync
 * of the granule's user with every peer settles it, and the user's writes
 * wait for it (repl-handover.c); when nothing differs it costs one LIST
 * per peer.  Domain and global granules name no user: the periodic check
 * covers them. */
static void mastership_gained(void *ctx, const char *gkey)
{
	struct repl_cluster *cl = ctx;
	char user[STOR_MAX_USER_LEN + 1];
	const char *start, *end;
	if (cl->sync == NULL || cl->destroying)
		return;
	if (strncmp(gkey, "m:", 2) == 0) {
		start = gkey + 2;
		end = strrchr(start, '/');
	} else if (strncmp(gkey, "u:", 2) == 0) {
		start = gkey + 2;
		end = start + strlen(start);
	} else {
		return;
	}
	if (end == NULL || end == start || (size_t)(end - start) >= sizeof(user))
		return;
	memcpy(user, start, (size_t)(end - start));
	user[end - start] = '\0';
	/* Even a user with no mail here: a replica may hold messages of a
	 * mailbox this node has empty, whose UIDs it must not hand out again. */
	cl_handover_gained(cl, user);
}

void repl_cluster_attach(struct repl *r, struct repl_peers *peers, struct repl_mm *mm,
			 struct repl_sync *sync)
{
	struct repl_cluster *cl = to_cl(r);
	cl->peers = peers;
	cl->mm = mm;
	cl->sync = sync;
	repl_mm_set_gained(mm, mastership_gained, cl);
	repl_sync_set_live(sync, cl_replica_command, cl);
	repl_sync_set_idle(sync, sync_idle, cl);
	repl_sync_set_released(sync, sync_released, cl);
	repl_sync_set_peer_watch(sync, sync_peer_event, cl);
	cl_barrier_attach(cl, peers);
}

void repl_cluster_detach(struct repl *r)
{
	struct repl_cluster *cl = to_cl(r);
	cl->destroying = true;
	for (size_t i = 0; i < cl->peer_list.count; i++) {
		struct cl_peer *p = cl->peer_list.items[i];
		if (p->conn != NULL)
			cl_stream_link_down(p);
	}
	cl->mm = NULL;
	cl->sync = NULL;
	cl->peers = NULL;
	cl_barrier_detach(cl);
	/* Changes waiting for replicas are durable here: they complete. */
	for (struct cl_waiter *w = cl->waiters; w != NULL; w = w->next)
		w->seq = 0;
	cl_waiters_check(cl);
	/* Forwards that wait for a timer or a wake-up (held by a resync or a
	 * catch-up, waiting out a TRYLATER, or before another attempt) will
	 * not see it come: they go on alone now, as with no master.  The
	 * others end when the peer links and the master machine close;
	 * starlingd flushes after that, so every client is answered before
	 * the IMAP server goes. */
	for (struct cl_fwd *f = cl->fwds, *next; f != NULL; f = next) {
		next = f->live_next;
		if (f->state == CL_FWD_HELD || f->state == CL_FWD_CATCHUP ||
		    f->state == CL_FWD_RETRY || f->state == CL_FWD_WAIT ||
		    f->state == CL_FWD_LINK_HELD) {
			ev_timer_stop(cl->loop, &f->retry);
			fwd_autonomous(f, "shutting down");
		}
	}
}

void repl_cluster_link_up(struct repl *r, uint32_t sid, struct proto_conn *conn)
{
	struct cl_peer *p = cl_peer_find(to_cl(r), sid);
	if (p != NULL)
		cl_stream_link_up(p, conn);
}

void repl_cluster_link_down(struct repl *r, uint32_t sid)
{
	struct cl_peer *p = cl_peer_find(to_cl(r), sid);
	if (p == NULL)
		return;
	cl_stream_link_down(p);
	cl_handover_link_down(to_cl(r), sid);
}

void repl_cluster_peers_changed(struct repl *r)
{
	cl_stream_peers_changed(to_cl(r));
}

void repl_cluster_status(struct repl *r, struct buf *out)
{
	cl_stream_status(to_cl(r), out);
	buf_appendf(out, "masters_catching_up: %zu\n", cl_handover_count(to_cl(r)));
	cl_barrier_status(to_cl(r), out);
}
