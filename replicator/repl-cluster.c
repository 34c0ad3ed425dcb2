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
 * Mailbox-list changes are made here and streamed like the rest. */
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

static struct repl_cluster *to_cl(struct repl *r)
{
	return (struct repl_cluster *)r;
}

/* ---- Results that outlive the callback they came from ---- */

struct owned_result {
	struct repl_result res;
	char *error_msg;
	stor_msg_list changed;
	stor_uid_list failed, expunged, src_uids, dst_uids;
	struct stor_mailbox mailbox;
	bool have_mailbox;
};

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

static void uids_copy(stor_uid_list *dst, const uint32_t *src, size_t n)
{
	for (size_t i = 0; i < n; i++)
		ARRAY_PUSH(dst, src[i]);
}

static void owned_set(struct owned_result *o, const struct repl_result *res)
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
static const struct repl_result *owned_get(struct owned_result *o)
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

static void owned_free(struct owned_result *o)
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

static void owned_error(struct owned_result *o, enum repl_error error, const char *msg)
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
};

static void master_op_done(struct cl_waiter *w)
{
	struct master_op *m = w->ctx;
	m->cl->in_flight--;
	if (w->unavailable)
		owned_error(&m->out, REPL_ERR_UNAVAILABLE,
			    "stored here, but fewer than sync_replicas replicas acknowledged it in "
			    "time; it is replicated when they can take it (a retried APPEND may "
			    "store the message twice)");
	m->cb(m->ctx, owned_get(&m->out));
	owned_free(&m->out);
	free(m);
}

static void master_local_done(void *ctx, const struct repl_result *res)
{
	struct master_op *m = ctx;
	if (res->error != REPL_OK || m->waiter.seq == 0 || m->cl->destroying) {
		m->cl->in_flight--;
		m->cb(m->ctx, res);
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

static bool refused_now(struct repl_cluster *cl, repl_done_cb *cb, void *ctx)
{
	if (!cl_must_refuse(cl))
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
	if (cl->mm != NULL) {
		char gkey[MM_GKEY_MAX + 1];
		if (repl_mm_granule_key(cl->mm, user, mailbox, gkey, sizeof(gkey)) == 0)
			repl_mm_note_write(cl->mm, gkey);
	}
	return m;
}

/* The local engine's form of an APPEND request (pointers borrowed). */
static void append_from_req(const struct cl_append_req *req, struct repl_append *a)
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
	if (refused_now(cl, cb, ctx))
		return;
	struct master_op *m = master_begin(cl, req->user, &req->mailbox, cb, ctx);
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
			   stor_msg_find_guid(cl->repl.db, &req->mailbox, &req->guid, &have, &err) > 0) {
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
	if (refused_now(cl, cb, ctx))
		return;
	struct master_op *m = master_begin(cl, user, mailbox, cb, ctx);
	repl_store(cl->local, user, mailbox, uids, count, req, master_local_done, m);
}

void cl_master_expunge(struct repl_cluster *cl, const char *user, const struct guid *mailbox,
		       const uint32_t *uids, size_t count, repl_done_cb *cb, void *ctx)
{
	if (refused_now(cl, cb, ctx))
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

/* ---- A message change from this node's clients ---- */

enum fwd_kind { FWD_APPEND, FWD_STORE, FWD_EXPUNGE };

/* A change on its way: asking for the master, forwarded, or waiting for
 * the local application of the master's answer. */
struct cl_fwd {
	struct cl_fwd *next;          /* in a binding's waiting list */
	struct cl_fwd *live_prev, *live_next; /* every forward not yet freed */
	struct repl_cluster *cl;
	enum fwd_kind kind;
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
	bool sent_nil;                /* APPEND sent its text as NIL */
	bool send_text;               /* ... and the master asked for it */
	struct buf text;              /* the stored text, then */
	ev_timer retry;
	/* APPEND */
	struct cl_append_req app;
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

static void fwd_start(struct cl_fwd *f);
static int fwd_load_text(struct cl_fwd *f, struct buf *text);

static void fwd_free(struct cl_fwd *f)
{
	if (f->live_prev != NULL)
		f->live_prev->live_next = f->live_next;
	else
		f->cl->fwds = f->live_next;
	if (f->live_next != NULL)
		f->live_next->live_prev = f->live_prev;
	ev_timer_stop(f->cl->loop, &f->retry);
	stor_msg_list_free(&f->flags_lines);
	ARRAY_FREE(&f->named_uids);
	ARRAY_FREE(&f->named_guids);
	ARRAY_FREE(&f->modified);
	owned_free(&f->out);
	buf_free(&f->text);
	free(f->user);
	free(f);
}

static void fwd_finish(struct cl_fwd *f)
{
	f->cl->in_flight--;
	f->cb(f->ctx, owned_get(&f->out));
	fwd_free(f);
}

static void fwd_fail(struct cl_fwd *f, enum repl_error error, const char *msg)
{
	owned_error(&f->out, error, msg);
	fwd_finish(f);
}

/* A finished inner change: its result is the caller's. */
static void fwd_inner_done(void *ctx, const struct repl_result *res)
{
	struct cl_fwd *f = ctx;
	f->cl->in_flight--;
	f->cb(f->ctx, res);
	fwd_free(f);
}

static void fwd_as_master(struct cl_fwd *f)
{
	struct repl_cluster *cl = f->cl;
	switch (f->kind) {
	case FWD_APPEND:
		cl_master_append(cl, &f->app, fwd_inner_done, f);
		break;
	case FWD_STORE:
		cl_master_store(cl, f->user, &f->mailbox, f->uids, f->count, &f->store,
				fwd_inner_done, f);
		break;
	case FWD_EXPUNGE:
		cl_master_expunge(cl, f->user, &f->mailbox, f->uids, f->count, fwd_inner_done, f);
		break;
	}
}

static void fwd_refused_cb(void *ctx, const struct repl_result *unused)
{
	(void)unused;
	fwd_fail(ctx, REPL_ERR_UNAVAILABLE,
		 "the mailbox's master cannot be reached (degraded_writes = refuse); nothing "
		 "was changed");
}

/* Seed goal 3: the master is out of reach, so this node goes on alone and
 * the user is resynced with everyone later -- unless degraded_writes =
 * refuse, which answers NO [UNAVAILABLE] instead. */
static void fwd_autonomous(struct cl_fwd *f, const char *why)
{
	struct repl_cluster *cl = f->cl;
	if (cl->cfg->degraded_writes == CONFIG_DEGRADED_REFUSE && cl->cfg->sync_replicas > 0 &&
	    !cl->destroying) {
		/* A change made here alone would be on no replica until a
		 * resync. */
		log_info("replication: %s: master %u unreachable (%s): change refused", f->user,
			 f->master, why);
		cl->local->v->complete_later(cl->local, fwd_refused_cb, f);
		return;
	}
	log_info("replication: %s: master %u unreachable (%s): change made here, resync queued",
		 f->user, f->master, why);
	cl->autonomous_changes++;
	for (size_t i = 0; i < cl->peer_list.count; i++)
		cl_mark_dirty(cl->peer_list.items[i], f->user);
	struct repl_append a;
	switch (f->kind) {
	case FWD_APPEND:
		if (f->app.req.sid != 0) {
			/* A copy made here alone: the other side of a partition
			 * may copy the same message into this mailbox too, and
			 * the resync merges a GUID into one message, so this one
			 * gets its own.  If the master did make the copy sent to
			 * it (its answer lost), that is a message more, never an
			 * acknowledged copy fewer. */
			if (f->app.text == NULL) {
				buf_reset(&f->text);
				if (fwd_load_text(f, &f->text) < 0) {
					fwd_fail(f, REPL_ERR_NOTFOUND,
						 "the copied message was expunged meanwhile");
					return;
				}
				f->app.text = f->text.data != NULL ? (const void *)f->text.data : "";
				f->app.text_len = f->text.len;
			}
			guid_generate(&f->app.guid);
		}
		append_from_req(&f->app, &a);
		repl_append(cl->local, f->user, &f->mailbox, &a, fwd_inner_done, f);
		break;
	case FWD_STORE:
		repl_store(cl->local, f->user, &f->mailbox, f->uids, f->count, &f->store,
			   fwd_inner_done, f);
		break;
	case FWD_EXPUNGE:
		repl_expunge(cl->local, f->user, &f->mailbox, f->uids, f->count, fwd_inner_done, f);
		break;
	}
}

/* The master is there but cannot take it now (a resync, a move): ask
 * again shortly, within the forwarding timeout, without using up an
 * attempt. */
static void fwd_wait(struct cl_fwd *f, const char *why)
{
	uint64_t now = clock_mono_ms();
	f->peer = NULL;
	if (f->busy_since == 0)
		f->busy_since = now;
	if (now - f->busy_since > CL_FORWARD_TIMEOUT_MS || f->cl->destroying) {
		fwd_autonomous(f, why);
		return;
	}
	ev_timer_set(&f->retry, 0.1, 0.);
	ev_timer_start(f->cl->loop, &f->retry);
}

static void fwd_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct cl_fwd *f = (struct cl_fwd *)((char *)w - offsetof(struct cl_fwd, retry));
	fwd_start(f);
}

/* The master could not take it this time: ask again (it may have moved or
 * failed over), a few times, then go on alone. */
static void fwd_again(struct cl_fwd *f, const char *why)
{
	f->peer = NULL;
	if (f->cl->mm != NULL && f->master != 0)
		repl_mm_forget_master(f->cl->mm, f->gkey, f->master);
	if (++f->attempts >= CL_FORWARD_ATTEMPTS || f->cl->destroying) {
		fwd_autonomous(f, why);
		return;
	}
	log_debug("replication: %s: forwarding to %u failed (%s), asking again", f->user, f->master,
		  why);
	ev_timer_set(&f->retry, 0.2 * f->attempts, 0.);
	ev_timer_start(f->cl->loop, &f->retry);
}

/* ---- Applying the master's answer here ---- */

static void fwd_local_durable(void *ctx, bool ok)
{
	struct cl_fwd *f = ctx;
	/* The master and its replicas hold the change; a failure to make our
	 * copy durable is for a resync to repair, not for the client. */
	if (!ok)
		log_errorx("replication: a change from the master is not durable here");
	fwd_finish(f);
}

static void notify_later(struct repl_cluster *cl, const char *user, const struct guid *mailbox);

/* The MODSEQ of a completion's response code, or 0. */
static uint64_t code_modseq(const struct proto_cmd *line)
{
	uint64_t modseq = 0;
	const struct proto_arg *a = proto_code_value(line, "MODSEQ");
	if (a != NULL)
		(void)proto_arg_u64(a, INT64_MAX, &modseq);
	return modseq;
}

static void fwd_apply_append(struct cl_fwd *f, const struct proto_cmd *line)
{
	struct repl_cluster *cl = f->cl;
	struct stor_db *db = cl->repl.db;
	const struct proto_arg *a;
	uint32_t uid = 0;
	uint64_t modseq = code_modseq(line);
	const char *err;
	if ((a = proto_code_value(line, "UID")) != NULL)
		(void)proto_arg_u32(a, &uid);
	struct stor_mailbox mb;
	if (uid == 0 || modseq == 0 || stor_mailbox_get_by_guid(db, &f->mailbox, &mb, &err) <= 0) {
		fwd_fail(f, REPL_ERR_INTERNAL, "the master's answer was incomplete");
		return;
	}
	f->out.res.uid = uid;
	f->out.res.modseq = modseq;
	f->out.res.uidvalidity = mb.uidvalidity;
	uint32_t uidnext = mb.uidnext;
	stor_mailbox_free(&mb);
	struct guid made;
	if ((a = proto_code_value(line, "GUID")) != NULL && proto_arg_guid(a, &made) == 0 &&
	    !guid_equal(&made, &f->app.guid)) {
		/* The master made another copy of the message (SPEC 6.4, REQ):
		 * a new GUID, whose text here is the copied one's. */
		if (f->app.text == NULL) {
			buf_reset(&f->text);
			if (fwd_load_text(f, &f->text) < 0) {
				log_warnx("replication: %s: the copied text is gone here: resync",
					  f->user);
				cl_mark_dirty(f->peer, f->user);
				stor_on_durable(db, fwd_local_durable, f);
				return;
			}
			f->app.text = f->text.data != NULL ? (const void *)f->text.data : "";
			f->app.text_len = f->text.len;
		}
		f->app.guid = made;
	}
	struct stor_msg msg;
	int have = stor_msg_get(db, &f->mailbox, uid, &msg, &err);
	if (have > 0) {
		if (!guid_equal(&msg.guid, &f->app.guid)) {
			log_warnx("replication: %s: UID %u holds another message here: resync", f->user,
				  uid);
			cl_mark_dirty(f->peer, f->user);
		}
		stor_msg_free(&msg);
	} else if (have == 0 && uid >= uidnext && !proto_code_has(line, "EXPUNGED")) {
		struct stor_append sa;
		memset(&sa, 0, sizeof(sa));
		sa.uid = uid;
		sa.modseq = modseq;
		sa.guid = &f->app.guid;
		sa.flags = f->app.flags;
		sa.keywords = f->app.keywords;
		sa.keyword_count = f->app.keyword_count;
		sa.internaldate = f->app.internaldate;
		sa.internaldate_tz = f->app.internaldate_tz;
		sa.text = f->app.text;
		sa.text_len = f->app.text_len;
		if (stor_msg_append(db, &f->mailbox, &sa, NULL, NULL, &err) < 0) {
			log_warnx("replication: %s: cannot store the master's UID %u here (%s): resync",
				  f->user, uid, err);
			cl_mark_dirty(f->peer, f->user);
		} else {
			notify_later(cl, f->user, &f->mailbox);
		}
	}
	/* else: the stream already brought it, or it was expunged since. */
	stor_on_durable(db, fwd_local_durable, f);
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* Fills named_uids and named_guids from this node's copy. */
static void fwd_name_messages(struct cl_fwd *f)
{
	stor_uid_list sorted = ARRAY_INIT;
	uids_copy(&sorted, f->uids, f->count);
	if (sorted.count > 1)
		qsort(sorted.items, sorted.count, sizeof(sorted.items[0]), cmp_u32);
	for (size_t i = 0; i < sorted.count; i++) {
		struct stor_msg m;
		const char *err;
		if ((i > 0 && sorted.items[i] == sorted.items[i - 1]) ||
		    stor_msg_get(f->cl->repl.db, &f->mailbox, sorted.items[i], &m, &err) <= 0)
			continue;
		ARRAY_PUSH(&f->named_uids, m.uid);
		ARRAY_PUSH(&f->named_guids, m.guid);
		stor_msg_free(&m);
	}
	ARRAY_FREE(&sorted);
}

/* Whether uid names here the message the change named. */
static bool fwd_still_named(struct cl_fwd *f, uint32_t uid)
{
	const uint32_t *hit = bsearch(&uid, f->named_uids.items, f->named_uids.count,
				      sizeof(uid), cmp_u32);
	struct stor_msg m;
	const char *err;
	if (hit == NULL || stor_msg_get(f->cl->repl.db, &f->mailbox, uid, &m, &err) <= 0)
		return false;
	bool same = guid_equal(&m.guid, &f->named_guids.items[hit - f->named_uids.items]);
	stor_msg_free(&m);
	if (!same) {
		log_warnx("replication: %s: UID %u here is no longer the message the change named: "
			  "resync", f->user, uid);
		if (f->peer != NULL)
			cl_mark_dirty(f->peer, f->user);
	}
	return same;
}

/* One batch of a STORE or EXPUNGE was done at the master: keep what its
 * answer says; 1 when more batches are to go. */
static bool fwd_batch_done(struct cl_fwd *f, const struct proto_cmd *line)
{
	const struct proto_arg *a;
	f->master_modseq = code_modseq(line);
	if (f->kind == FWD_STORE && (a = proto_code_value(line, "MODIFIED")) != NULL) {
		/* A malformed set adds nothing. */
		uint32_t *set;
		size_t n;
		if (proto_arg_uids(a, CL_FORWARD_BATCH, &set, &n) == 0) {
			uids_copy(&f->modified, set, n);
			free(set);
		}
	}
	f->sent_upto = f->batch_end;
	return f->sent_upto < f->named_uids.count;
}

static void fwd_apply_store(struct cl_fwd *f)
{
	struct repl_cluster *cl = f->cl;
	struct stor_db *db = cl->repl.db;
	const char *err;
	f->out.res.modseq = f->master_modseq;
	stor_uid_list modified = f->modified;
	bool changed_any = false;
	for (size_t i = 0; i < f->flags_lines.count; i++) {
		const struct stor_msg *m = &f->flags_lines.items[i];
		if (!fwd_still_named(f, m->uid))
			continue;
		struct stor_store st;
		memset(&st, 0, sizeof(st));
		st.op = STOR_FLAGS_REPLACE;
		st.flags = m->flags;
		st.keywords = (const char *const *)m->keywords.items;
		st.keyword_count = m->keywords.count;
		st.modseq = m->modseq;
		stor_msg_list changed = ARRAY_INIT;
		if (stor_msg_store(db, &f->mailbox, &m->uid, 1, &st, &changed, NULL, &err) < 0)
			log_warnx("replication: %s: applying the master's flags: %s", f->user, err);
		if (changed.count > 0)
			changed_any = true;
		stor_msg_list_free(&changed);
		bool refused = false;
		for (size_t j = 0; j < modified.count; j++)
			refused = refused || modified.items[j] == m->uid;
		if (refused)
			continue;
		struct stor_msg now;
		if (stor_msg_get(db, &f->mailbox, m->uid, &now, &err) > 0)
			ARRAY_PUSH(&f->out.changed, now);
	}
	for (size_t j = 0; j < modified.count; j++)
		ARRAY_PUSH(&f->out.failed, modified.items[j]);
	if (changed_any)
		notify_later(cl, f->user, &f->mailbox);
	stor_on_durable(db, fwd_local_durable, f);
}

static void fwd_apply_expunge(struct cl_fwd *f)
{
	struct repl_cluster *cl = f->cl;
	struct stor_db *db = cl->repl.db;
	const char *err;
	uint64_t modseq = f->master_modseq;
	f->out.res.modseq = modseq;
	stor_uid_list still = ARRAY_INIT;
	for (size_t i = 0; i < f->named_uids.count; i++)
		if (fwd_still_named(f, f->named_uids.items[i]))
			ARRAY_PUSH(&still, f->named_uids.items[i]);
	if (modseq != 0 && still.count > 0 &&
	    stor_msg_expunge(db, &f->mailbox, still.items, still.count, modseq, &f->out.expunged,
			     &err) < 0)
		log_warnx("replication: %s: applying the master's expunge: %s", f->user, err);
	ARRAY_FREE(&still);
	if (f->out.expunged.count > 0)
		notify_later(cl, f->user, &f->mailbox);
	stor_on_durable(db, fwd_local_durable, f);
}

static void fwd_send(struct cl_fwd *f);

static void fwd_reply_cb(struct proto_conn *conn, enum proto_reply_kind kind,
			 const struct proto_cmd *line, void *ctx)
{
	struct cl_fwd *f = ctx;
	if (kind == PROTO_REPLY_DATA) {
		/* STORE: FLAGS <uid> <modseq> <flags> */
		struct stor_msg m;
		struct proto_flags_line fl;
		const char *err;
		memset(&m, 0, sizeof(m));
		if (f->kind == FWD_STORE && proto_cmd_is(line, "FLAGS") && line->arg_count == 3 &&
		    f->flags_lines.count < f->named_uids.count + 16 &&
		    proto_read_flags_line(line, &fl, &err) == PROTO_CODEC_OK) {
			m.uid = fl.uid;
			m.modseq = fl.modseq;
			m.flags = fl.f.flags;
			m.keywords.items = fl.f.keywords.items;
			m.keywords.count = fl.f.keywords.count;
			m.keywords.cap = fl.f.keywords.cap;
			ARRAY_PUSH(&f->flags_lines, m);
		}
		return;
	}
	if (kind != PROTO_REPLY_DONE) {
		fwd_again(f, kind == PROTO_REPLY_TIMEOUT ? "no answer in time" : "the link closed");
		return;
	}
	if (strcmp(line->name, "OK") == 0) {
		if (f->kind != FWD_APPEND && fwd_batch_done(f, line)) {
			fwd_send(f);
			return;
		}
		f->cl->forwarded_changes++;
		if (f->kind == FWD_APPEND)
			fwd_apply_append(f, line);
		else if (f->kind == FWD_STORE)
			fwd_apply_store(f);
		else
			fwd_apply_expunge(f);
		return;
	}
	const char *text = line->text != NULL ? line->text : "refused";
	if (proto_code_has(line, "NONEXISTENT") && f->kind == FWD_APPEND && f->sent_nil &&
	    !f->send_text && f->peer != NULL && f->peer->conn != NULL) {
		/* The master lacks the text of this GUID: send it whole. */
		f->send_text = true;
		fwd_send(f);
		return;
	}
	if (proto_code_has(line, "TRYLATER")) {
		fwd_wait(f, text);
		return;
	}
	if (proto_code_has(line, "STALE")) {
		/* The master has moved on to a newer epoch: ask again once
		 * this node adopted it (the root's STALE-EPOCH brings it). */
		if (f->cl->mm != NULL && f->master != 0)
			repl_mm_forget_master(f->cl->mm, f->gkey, f->master);
		fwd_wait(f, text);
		return;
	}
	if (proto_code_has(line, "NOTMASTER") ||
	    proto_code_has(line, "NONEXISTENT") || proto_code_has(line, "UIDVALIDITY")) {
		fwd_again(f, text);
		return;
	}
	if (proto_code_has(line, "TOOBIG")) {
		fwd_fail(f, REPL_ERR_TOOBIG, text);
		return;
	}
	if (proto_code_has(line, "LIMIT")) {
		fwd_fail(f, REPL_ERR_LIMIT, text);
		return;
	}
	if (proto_code_has(line, "GUIDMISMATCH")) {
		/* The master holds other messages under some of these UIDs:
		 * nothing was changed there, and a resync renumbers them. */
		log_warnx("replication: %s: the master holds other messages under these UIDs: "
			  "resync", f->user);
		if (f->peer != NULL)
			cl_mark_dirty(f->peer, f->user);
		fwd_fail(f, REPL_ERR_INVALID, "the message differs on the mailbox's master; "
					      "try again once the nodes have resynced");
		return;
	}
	if (proto_code_has(line, "UNAVAILABLE")) {
		/* The master has too few replicas (degraded_writes = refuse). */
		fwd_fail(f, REPL_ERR_UNAVAILABLE, text);
		return;
	}
	fwd_fail(f, REPL_ERR_INVALID, text);
}

/* The UIDs of the next batch of a STORE or EXPUNGE. */
/* The next batch of UIDs: named_uids[sent_upto .. batch_end). */
static void fwd_batch(struct cl_fwd *f)
{
	size_t n = f->named_uids.count - f->sent_upto;
	f->batch_end = f->sent_upto + (n < CL_FORWARD_BATCH ? n : CL_FORWARD_BATCH);
}

static void fwd_wr_batch_guids(struct cl_fwd *f, struct proto_wr *w)
{
	proto_wr_atom(w, "GUIDS");
	proto_wr_list_begin(w);
	for (size_t i = f->sent_upto; i < f->batch_end; i++)
		proto_wr_guid(w, &f->named_guids.items[i]);
	proto_wr_list_end(w);
}

static void fwd_send(struct cl_fwd *f)
{
	struct cl_peer *p = f->peer;
	struct proto_wr *w = NULL;
	const struct cl_bind *b = cl_bind_get(p, &f->mailbox);
	if (f->kind == FWD_APPEND && f->app.text == NULL && f->send_text) {
		/* A copy whose text the master lacks.  The source may have been
		 * expunged since the COPY began, taking the text with it: then
		 * the copy of this message is refused, as a COPY of an expunged
		 * UID is (copy_item_done skips it), never sent with an empty or
		 * made-up text. */
		buf_reset(&f->text);
		if (fwd_load_text(f, &f->text) < 0) {
			fwd_fail(f, REPL_ERR_NOTFOUND, "the copied message was expunged meanwhile");
			return;
		}
	}
	cl_select(p, b);
	switch (f->kind) {
	case FWD_APPEND: {
		/* uid and modseq 0: the master assigns them. */
		struct proto_save sv = {
			.date = f->app.internaldate, .tz = f->app.internaldate_tz,
			.guid = f->app.guid,
			.f = { f->app.flags, { (char **)f->app.keywords, f->app.keyword_count,
					       f->app.keyword_count } },
		};
		if (f->app.text != NULL) {
			sv.text = f->app.text;
			sv.text_len = f->app.text_len;
		} else if (!f->send_text) {
			/* A copy: the master most likely holds the text. */
			f->sent_nil = true;
		} else {
			sv.text = f->text.data != NULL ? (const char *)f->text.data : "";
			sv.text_len = f->text.len;
		}
		w = proto_conn_cmd_begin(p->conn, "SAVE");
		proto_wr_save(w, &sv);
		break;
	}
	case FWD_STORE: {
		struct stor_mailbox mb;
		const char *err;
		uint64_t known = 0;
		if (stor_mailbox_get_by_guid(f->cl->repl.db, &f->mailbox, &mb, &err) > 0) {
			known = mb.highestmodseq;
			stor_mailbox_free(&mb);
		}
		struct proto_flags fl = { f->store.flags, { (char **)f->store.keywords,
							    f->store.keyword_count,
							    f->store.keyword_count } };
		struct proto_store st = { .modseq = known,
					  .replace = f->store.op == STOR_FLAGS_REPLACE };
		if (f->store.op == STOR_FLAGS_REMOVE)
			st.rm = fl;
		else
			st.add = fl;
		fwd_batch(f);
		st.uids = f->named_uids.items + f->sent_upto;
		st.uid_count = f->batch_end - f->sent_upto;
		w = proto_conn_cmd_begin(p->conn, "STORE");
		proto_wr_store(w, &st);
		if (f->store.unchangedsince != 0) {
			proto_wr_atom(w, "UNCHANGEDSINCE");
			proto_wr_u64(w, f->store.unchangedsince);
		}
		fwd_wr_batch_guids(f, w);
		break;
	}
	case FWD_EXPUNGE: {
		/* modseq 0: the master assigns one. */
		struct proto_expunge ex = { .modseq = 0 };
		fwd_batch(f);
		ex.uids = f->named_uids.items + f->sent_upto;
		ex.uid_count = f->batch_end - f->sent_upto;
		w = proto_conn_cmd_begin(p->conn, "EXPUNGE");
		proto_wr_expunge(w, &ex);
		fwd_wr_batch_guids(f, w);
		break;
	}
	}
	if (f->kind == FWD_APPEND && f->app.req.sid != 0) {
		char id[PROTO_MAX_REQ_LEN + 1];
		snprintf(id, sizeof(id), "%" PRIu32 ".%" PRIu64, f->app.req.sid, f->app.req.n);
		proto_wr_atom(w, "REQ");
		proto_wr_atom(w, id);
	}
	if (f->to != 0) {
		proto_wr_atom(w, "TO");
		proto_wr_u64(w, f->to);
	}
	cl_handover_wr_epoch(f->cl, w, f->epoch);
	proto_conn_cmd_send(p->conn, CL_FORWARD_TIMEOUT_MS, fwd_reply_cb, f);
}

/* The copy's text, when the master turned out not to hold it. */
static int fwd_load_text(struct cl_fwd *f, struct buf *text)
{
	uint64_t size;
	const char *err;
	if (stor_text_exists(f->cl->repl.db, &f->app.guid, &size, &err) <= 0 ||
	    stor_text_read(f->cl->repl.db, &f->app.guid, 0, size, text, &err) < 0)
		return -1;
	return 0;
}

void cl_fwd_bind_settled(struct cl_peer *p, struct cl_bind *b)
{
	cl_relay_bind_settled(p, b);
	struct cl_fwd *list = b->waiting;
	b->waiting = NULL;
	while (list != NULL) {
		struct cl_fwd *f = list;
		list = f->next;
		f->next = NULL;
		if (b->state == CL_BIND_BOUND && p->conn != NULL)
			fwd_send(f);
		else
			fwd_again(f, "the master does not hold the mailbox");
	}
}

void cl_fwd_link_down(struct cl_peer *p)
{
	cl_relay_link_down(p);
	for (size_t i = 0; i < p->binds.count; i++) {
		struct cl_bind *b = p->binds.items[i];
		struct cl_fwd *list = b->waiting;
		b->waiting = NULL;
		while (list != NULL) {
			struct cl_fwd *f = list;
			list = f->next;
			f->next = NULL;
			fwd_again(f, "the link went down");
		}
	}
}

static void fwd_to_peer(struct cl_fwd *f, struct cl_peer *p)
{
	struct stor_mailbox mb;
	const char *err;
	if (stor_mailbox_get_by_guid(f->cl->repl.db, &f->mailbox, &mb, &err) <= 0) {
		fwd_fail(f, REPL_ERR_NOTFOUND, "mailbox does not exist");
		return;
	}
	f->peer = p;
	if (repl_mm_granule_key(f->cl->mm, f->user, &f->mailbox, f->gkey, sizeof(f->gkey)) == 0)
		repl_mm_note_write(f->cl->mm, f->gkey);
	struct cl_bind *b = cl_bind_get(p, &f->mailbox);
	switch (b->state) {
	case CL_BIND_BOUND:
		fwd_send(f);
		break;
	case CL_BIND_NONE:
	case CL_BIND_FAILED:
		cl_bind_send(p, b, &mb, false);
		/* fall through */
	case CL_BIND_PENDING:
		f->next = b->waiting;
		b->waiting = f;
		break;
	}
	stor_mailbox_free(&mb);
}

static void fwd_nothing(struct cl_fwd *f)
{
	struct stor_mailbox mb;
	const char *err;
	if (stor_mailbox_get_by_guid(f->cl->repl.db, &f->mailbox, &mb, &err) <= 0) {
		fwd_fail(f, REPL_ERR_NOTFOUND, "mailbox does not exist");
		return;
	}
	f->out.res.modseq = mb.highestmodseq;
	stor_mailbox_free(&mb);
	stor_on_durable(f->cl->repl.db, fwd_local_durable, f);
}

static void fwd_master_known(void *ctx, const struct repl_mm_answer *ans)
{
	struct cl_fwd *f = ctx;
	if (!ans->ok) {
		f->master = 0;
		fwd_autonomous(f, ans->error != NULL ? ans->error : "no master");
		return;
	}
	f->master = ans->master;
	f->epoch = ans->epoch;
	if (ans->am_master) {
		if (cl_handover_waiting(f->cl, f->user)) {
			/* New master here, still catching up (bounded). */
			ev_timer_set(&f->retry, CL_HELD_RETRY_S, 0.);
			ev_timer_start(f->cl->loop, &f->retry);
			return;
		}
		fwd_as_master(f);
		return;
	}
	if (f->kind != FWD_APPEND && f->named_uids.count == 0) {
		/* None of the UIDs exists here: nothing the client can have
		 * meant is at the master either. */
		fwd_nothing(f);
		return;
	}
	struct cl_peer *p = cl_peer_find(f->cl, ans->master);
	f->to = 0;
	if (p == NULL || p->conn == NULL) {
		/* No direct link: through the peer on the breadth-first path
		 * of the link state, with TO naming the master (SPEC.md 6.3).
		 * Alone only when no route exists. */
		uint32_t hop = f->cl->mm != NULL ? repl_mm_next_hop(f->cl->mm, ans->master) : 0;
		struct cl_peer *h = hop != 0 && hop != ans->master ? cl_peer_find(f->cl, hop) : NULL;
		if (h == NULL || h->conn == NULL) {
			fwd_again(f, p == NULL && h == NULL ? "no route" : "no link");
			return;
		}
		p = h;
		f->to = ans->master;
	}
	if (f->cl->sync != NULL && repl_sync_busy_with(f->cl->sync, p->sid)) {
		/* A resync owns our direction of that link (its MBOX and
		 * SELECT): wait for it. */
		fwd_wait(f, "a resync with the master takes too long");
		return;
	}
	fwd_to_peer(f, p);
}

static void fwd_start(struct cl_fwd *f)
{
	struct repl_cluster *cl = f->cl;
	if (cl->sync != NULL && !cl->destroying && repl_sync_holds(cl->sync, f->user, &f->mailbox)) {
		/* A resync here compares snapshots of this mailbox: the
		 * change waits for it (the resync is bounded in time). */
		ev_timer_set(&f->retry, CL_HELD_RETRY_S, 0.);
		ev_timer_start(cl->loop, &f->retry);
		return;
	}
	if (cl->mm == NULL ||
	    repl_mm_granule_key(cl->mm, f->user, &f->mailbox, f->gkey, sizeof(f->gkey)) < 0 ||
	    repl_mm_request_master(cl->mm, f->gkey, CL_MASTER_TIMEOUT_MS, fwd_master_known, f) < 0)
		fwd_autonomous(f, "no master for this mailbox");
}

static struct cl_fwd *fwd_new(struct repl_cluster *cl, enum fwd_kind kind, const char *user,
			      const struct guid *mailbox, repl_done_cb *cb, void *ctx)
{
	struct cl_fwd *f = xcalloc(1, sizeof(*f));
	f->cl = cl;
	f->kind = kind;
	f->user = xstrdup(user);
	f->mailbox = *mailbox;
	f->cb = cb;
	f->ctx = ctx;
	ev_timer_init(&f->retry, fwd_retry_cb, 0., 0.);
	f->live_next = cl->fwds;
	if (cl->fwds != NULL)
		cl->fwds->live_prev = f;
	cl->fwds = f;
	cl->in_flight++;
	return f;
}

/* ---- The seam ---- */

static void cl_append(struct repl *r, const char *user, const struct guid *mailbox,
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
	if (req->guid != NULL) {
		f->app.guid = *req->guid;
		/* A copy: its identity, kept by every retry of it (SPEC 6.4).
		 * Numbered from the wall clock in microseconds, so a restarted
		 * node does not reuse its earlier numbers. */
		if (cl->req_counter == 0)
			cl->req_counter = (uint64_t)clock_wall_s() * 1000000u + clock_mono_us() % 1000000u;
		f->app.req.sid = cl->cfg->node_id;
		f->app.req.n = cl->req_counter++;
	} else {
		guid_generate(&f->app.guid);
	}
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

/* ---- COPY and MOVE: one APPEND per message (keeping its GUID), then an
 * EXPUNGE of the sources for MOVE, each to its own master. ---- */

struct copy_op {
	struct repl_cluster *cl;
	char *user;
	struct guid src, dst;
	bool move;
	repl_done_cb *cb;
	void *ctx;
	size_t left;
	struct copy_item {
		uint32_t src_uid;
		uint32_t dst_uid;
		struct guid guid;
		uint32_t flags;
		stor_string_list keywords;
		int64_t date;
		int32_t tz;
		struct buf text;     /* only for a copy that needs a new GUID */
		bool ok;
	} *items;
	size_t count;
	stor_uid_list moved;
	struct owned_result out;
};

static void copy_free(struct copy_op *c)
{
	for (size_t i = 0; i < c->count; i++) {
		stor_string_list_free(&c->items[i].keywords);
		buf_free(&c->items[i].text);
	}
	free(c->items);
	ARRAY_FREE(&c->moved);
	owned_free(&c->out);
	free(c->user);
	free(c);
}

static void copy_finish(struct copy_op *c)
{
	c->cl->in_flight--;
	c->cb(c->ctx, owned_get(&c->out));
	copy_free(c);
}

static void copy_expunged(void *ctx, const struct repl_result *res)
{
	struct copy_op *c = ctx;
	if (res->error != REPL_OK)
		owned_error(&c->out, res->error, res->error_msg != NULL ? res->error_msg : "error");
	uids_copy(&c->out.expunged, res->expunged, res->expunged_count);
	copy_finish(c);
}

static void copy_item_done(void *ctx, const struct repl_result *res);

struct copy_sub {
	struct copy_op *c;
	size_t i;
};

static void copy_all_saved(struct copy_op *c)
{
	for (size_t i = 0; i < c->count; i++) {
		if (!c->items[i].ok)
			continue;
		ARRAY_PUSH(&c->out.src_uids, c->items[i].src_uid);
		ARRAY_PUSH(&c->out.dst_uids, c->items[i].dst_uid);
		if (c->move)
			ARRAY_PUSH(&c->moved, c->items[i].src_uid);
	}
	if (c->move && c->moved.count > 0 && c->out.res.error == REPL_OK) {
		repl_expunge(&c->cl->repl, c->user, &c->src, c->moved.items, c->moved.count,
			     copy_expunged, c);
		return;
	}
	copy_finish(c);
}

static void copy_item_done(void *ctx, const struct repl_result *res)
{
	struct copy_sub *s = ctx;
	struct copy_op *c = s->c;
	const char *err;
	if (res->error == REPL_OK) {
		c->items[s->i].ok = true;
		c->items[s->i].dst_uid = res->uid;
		c->out.res.uidvalidity = res->uidvalidity;
		if (res->modseq > c->out.res.modseq)
			c->out.res.modseq = res->modseq;
	} else if (res->error == REPL_ERR_NOTFOUND &&
		   stor_msg_get(c->cl->repl.db, &c->src, c->items[s->i].src_uid, NULL, &err) == 0) {
		/* Its source was expunged meanwhile: skipped, as a UID that
		 * was gone before the COPY began. */
	} else if (c->out.res.error == REPL_OK) {
		owned_error(&c->out, res->error, res->error_msg != NULL ? res->error_msg : "error");
	}
	free(s);
	if (--c->left == 0)
		copy_all_saved(c);
}

static void copy_nothing_done(void *ctx, const struct repl_result *res)
{
	copy_all_saved(ctx);
}

static void cl_copy(struct repl *r, const char *user, const struct guid *src,
		    const uint32_t *uids, size_t count, const struct guid *dst, bool move,
		    repl_done_cb *cb, void *ctx)
{
	struct repl_cluster *cl = to_cl(r);
	struct stor_db *db = r->db;
	const char *err;
	struct stor_mailbox mb;
	int found = stor_mailbox_get_by_guid(db, src, &mb, &err);
	if (found > 0) {
		stor_mailbox_free(&mb);
		found = stor_mailbox_get_by_guid(db, dst, &mb, &err);
	}
	if (found <= 0) {
		/* The local engine gives the same refusal, from the loop. */
		repl_copy(cl->local, user, src, uids, count, dst, move, cb, ctx);
		return;
	}
	struct copy_op *c = xcalloc(1, sizeof(*c));
	c->cl = cl;
	c->user = xstrdup(user);
	c->src = *src;
	c->dst = *dst;
	c->move = move;
	c->cb = cb;
	c->ctx = ctx;
	c->out.res.uidvalidity = mb.uidvalidity;
	stor_mailbox_free(&mb);
	cl->in_flight++;
	c->items = xcalloc(count > 0 ? count : 1, sizeof(*c->items));
	bool same = guid_equal(src, dst);
	for (size_t i = 0; i < count; i++) {
		struct stor_msg m;
		if (stor_msg_get(db, src, uids[i], &m, &err) <= 0)
			continue;
		struct copy_item *it = &c->items[c->count];
		it->src_uid = uids[i];
		it->guid = m.guid;
		it->flags = m.flags;
		it->keywords = m.keywords;
		memset(&m.keywords, 0, sizeof(m.keywords));
		it->date = m.internaldate;
		it->tz = m.internaldate_tz;
		buf_init(&it->text);
		uint32_t other;
		/* A GUID appears at most once in a mailbox (SPEC 6.4): a
		 * second copy there is a new message with a new GUID. */
		if (same || stor_msg_find_guid(db, dst, &m.guid, &other, &err) != 0) {
			guid_generate(&it->guid);
			if (stor_text_read(db, &m.guid, 0, m.size, &it->text, &err) < 0) {
				stor_msg_free(&m);
				continue;
			}
			if (it->text.data == NULL)
				buf_append(&it->text, "", 0);
		}
		stor_msg_free(&m);
		c->count++;
	}
	if (c->count == 0) {
		/* Nothing to copy: still answer from the loop. */
		cl->local->v->complete_later(cl->local, copy_nothing_done, c);
		return;
	}
	c->left = c->count;
	for (size_t i = 0; i < c->count; i++) {
		struct copy_item *it = &c->items[i];
		struct copy_sub *s = xcalloc(1, sizeof(*s));
		s->c = c;
		s->i = i;
		struct repl_append a;
		memset(&a, 0, sizeof(a));
		a.guid = &it->guid;
		a.flags = it->flags;
		a.keywords = (const char *const *)it->keywords.items;
		a.keyword_count = it->keywords.count;
		a.internaldate = it->date;
		a.internaldate_tz = it->tz;
		if (it->text.data != NULL) {
			a.text = it->text.data;
			a.text_len = it->text.len;
		}
		cl_append(r, user, dst, &a, copy_item_done, s);
	}
}

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

static void cl_mailbox_create(struct repl *r, const char *user, const char *name,
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

static void cl_mailbox_delete(struct repl *r, const char *user, const struct guid *mailbox,
			      repl_done_cb *cb, void *ctx)
{
	struct repl_cluster *cl = to_cl(r);
	struct list_op *l = list_op_new(cl, CL_ENTRY_DELETE, user, cb, ctx);
	l->entry.guid = *mailbox;
	l->entry.name = mailbox_name(cl, mailbox);
	repl_mailbox_delete(cl->local, user, mailbox, list_local_done, l);
}

static void cl_mailbox_rename(struct repl *r, const char *user, const struct guid *mailbox,
			      const char *new_name, repl_done_cb *cb, void *ctx)
{
	struct repl_cluster *cl = to_cl(r);
	struct list_op *l = list_op_new(cl, CL_ENTRY_RENAME, user, cb, ctx);
	l->entry.guid = *mailbox;
	l->entry.name = mailbox_name(cl, mailbox);
	l->entry.new_name = xstrdup(new_name);
	repl_mailbox_rename(cl->local, user, mailbox, new_name, list_local_done, l);
}

static void cl_subscribe(struct repl *r, const char *user, const char *name, bool subscribed,
			 repl_done_cb *cb, void *ctx)
{
	struct repl_cluster *cl = to_cl(r);
	struct list_op *l = list_op_new(cl, subscribed ? CL_ENTRY_SUBSCRIBE : CL_ENTRY_UNSUBSCRIBE,
					user, cb, ctx);
	l->entry.name = xstrdup(name);
	repl_subscribe(cl->local, user, name, subscribed, list_local_done, l);
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

static void notify_later(struct repl_cluster *cl, const char *user, const struct guid *mailbox)
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
	cl_stream_deinit(cl);
	for (size_t i = 0; i < cl->under.count; i++)
		free(cl->under.items[i].user);
	ARRAY_FREE(&cl->under);
	cl_handover_free(cl);
	free(cl->reqs);
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
	cl_stream_init(cl);
	return &cl->repl;
}

static void sync_peer_event(void *ctx, enum repl_sync_peer_event ev, const char *user,
			    uint32_t sid)
{
	cl_stream_sync_event(ctx, ev, user, sid);
	cl_handover_sync_event(ctx, ev, user, sid);
}

static void sync_idle(void *ctx)
{
	struct repl_cluster *cl = ctx;
	for (size_t i = 0; i < cl->peer_list.count; i++)
		cl_stream_after_resync(cl->peer_list.items[i]);
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
	repl_sync_set_peer_watch(sync, sync_peer_event, cl);
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
	/* Changes waiting for replicas are durable here: they complete. */
	for (struct cl_waiter *w = cl->waiters; w != NULL; w = w->next)
		w->seq = 0;
	cl_waiters_check(cl);
	/* Forwards that wait for a timer (held by a resync, waiting out a
	 * TRYLATER, or before another attempt) will not see it fire: they go
	 * on alone now, as with no master.  The others end when the peer
	 * links and the master machine close; starlingd flushes after that,
	 * so every client is answered before the IMAP server goes. */
	for (struct cl_fwd *f = cl->fwds, *next; f != NULL; f = next) {
		next = f->live_next;
		if (ev_is_active(&f->retry)) {
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
}
