/* A message change from this node's clients that goes to a master
 * elsewhere: forwarded on the link (or through the mesh), retried, or made
 * autonomously, and the master's answer read (repl-forward-apply.c applies
 * it here).  Apart from the master's own path (repl-cluster.c) because a
 * forward's state lives only in struct cl_fwd and the lists that hold it. */
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

/* ---- A message change from this node's clients ---- */

void fwd_free(struct cl_fwd *f)
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
	ARRAY_FREE(&f->uids_now);
	ARRAY_FREE(&f->modified);
	owned_free(&f->out);
	free(f->user);
	free(f);
}

void fwd_finish(struct cl_fwd *f)
{
	f->cl->in_flight--;
	f->cb(f->ctx, owned_get(&f->out));
	fwd_free(f);
}

void fwd_fail(struct cl_fwd *f, enum repl_error error, const char *msg)
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

int fwd_cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* The messages a STORE or EXPUNGE named, where they are now.  The change
 * may have waited (for the master's answer, a new master's catch-up, a
 * resync's hold) while a sync moved one to another UID (a UID conflict):
 * run by the UIDs it was given, it missed the message the client meant
 * and could hit whatever came to its old UID (the fault campaign's
 * acked-expunge-holds, partition seed 200: a MOVE held by a catch-up left
 * its source in place).  A message expunged meanwhile is left out. */
static void fwd_where_now(struct cl_fwd *f)
{
	struct stor_db *db = f->cl->repl.db;
	const char *err;
	f->uids_now.count = 0;
	for (size_t i = 0; i < f->named_uids.count; i++) {
		uint32_t at = f->named_uids.items[i];
		struct stor_msg m;
		int r = stor_msg_get(db, &f->mailbox, at, &m, &err);
		if (r > 0) {
			bool same = guid_equal(&m.guid, &f->named_guids.items[i]);
			stor_msg_free(&m);
			if (same) {
				ARRAY_PUSH(&f->uids_now, at);
				continue;
			}
		}
		if (stor_msg_find_guid(db, &f->mailbox, &f->named_guids.items[i], &at, &err) > 0)
			ARRAY_PUSH(&f->uids_now, at);
	}
	if (f->uids_now.count < 2)
		return;
	qsort(f->uids_now.items, f->uids_now.count, sizeof(f->uids_now.items[0]), fwd_cmp_u32);
	size_t n = 1;
	for (size_t i = 1; i < f->uids_now.count; i++) {
		if (f->uids_now.items[i] != f->uids_now.items[n - 1])
			f->uids_now.items[n++] = f->uids_now.items[i];
	}
	f->uids_now.count = n;
}

/* Never a null array, also when none of the messages is left. */
static const uint32_t *uids_or_none(const struct cl_fwd *f)
{
	static const uint32_t none = 0;
	return f->uids_now.count > 0 ? f->uids_now.items : &none;
}

/* A STORE run here (as the new master, or alone) after it went to a
 * master: that master may have applied it (its answer lost, or earlier
 * batches done) and this node holds the result from its stream now, so
 * UNCHANGEDSINCE refuses the messages the request itself changed.  Those
 * whose flags are what it asks count as changed, not MODIFIED (RFC 7162
 * 3.1.3; SPEC 6.4). */
static void fwd_rerun_store_done(void *ctx, const struct repl_result *res)
{
	struct cl_fwd *f = ctx;
	if (res->error != REPL_OK || res->failed_count == 0 ||
	    !(f->maybe_applied || f->sent_upto > 0) || f->store.seen_of != NULL) {
		fwd_inner_done(f, res);
		return;
	}
	stor_msg_list changed = ARRAY_INIT, mine = ARRAY_INIT;
	stor_uid_list failed = ARRAY_INIT;
	for (size_t i = 0; i < res->changed_count; i++)
		ARRAY_PUSH(&changed, res->changed[i]);
	for (size_t i = 0; i < res->failed_count; i++) {
		struct stor_msg m;
		const char *err;
		if (stor_msg_get(f->cl->repl.db, &f->mailbox, res->failed[i], &m, &err) > 0 &&
		    fwd_store_holds(&f->store, &m)) {
			ARRAY_PUSH(&mine, m);
			continue;
		}
		ARRAY_PUSH(&failed, res->failed[i]);
	}
	for (size_t i = 0; i < mine.count; i++)
		ARRAY_PUSH(&changed, mine.items[i]);
	struct repl_result out = *res;
	out.changed = changed.items;
	out.changed_count = changed.count;
	out.failed = failed.items;
	out.failed_count = failed.count;
	/* The struct copies in changed point into res and mine: only the
	 * arrays are ours. */
	fwd_inner_done(f, &out);
	ARRAY_FREE(&changed);
	ARRAY_FREE(&failed);
	stor_msg_list_free(&mine);
}

static void fwd_as_master(struct cl_fwd *f)
{
	struct repl_cluster *cl = f->cl;
	f->state = CL_FWD_AS_MASTER;
	if (f->kind != FWD_APPEND)
		fwd_where_now(f);
	/* Counted here, for this node's own clients, and not in
	 * master_begin(): a master that counted the writes it serves for a
	 * peer would always write at least as much as the peer asking for a
	 * soft move, and refuse it (issue 19: the mastership never followed
	 * a writer on another node). */
	if (cl->mm != NULL &&
	    repl_mm_granule_key(cl->mm, f->user, &f->mailbox, f->gkey, sizeof(f->gkey)) == 0)
		repl_mm_note_write(cl->mm, f->gkey);
	switch (f->kind) {
	case FWD_APPEND:
		cl_master_append(cl, &f->app, fwd_inner_done, f);
		break;
	case FWD_STORE:
		cl_master_store(cl, f->user, &f->mailbox, uids_or_none(f), f->uids_now.count,
				&f->store, fwd_rerun_store_done, f);
		break;
	case FWD_EXPUNGE:
		cl_master_expunge(cl, f->user, &f->mailbox, uids_or_none(f), f->uids_now.count,
				  fwd_inner_done, f);
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
void fwd_autonomous(struct cl_fwd *f, const char *why)
{
	struct repl_cluster *cl = f->cl;
	f->state = CL_FWD_AUTONOMOUS;
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
		append_from_req(&f->app, &a);
		repl_append(cl->local, f->user, &f->mailbox, &a, fwd_inner_done, f);
		break;
	case FWD_STORE:
		repl_store(cl->local, f->user, &f->mailbox, f->uids, f->count, &f->store,
			   fwd_rerun_store_done, f);
		break;
	case FWD_EXPUNGE:
		repl_expunge(cl->local, f->user, &f->mailbox, f->uids, f->count, fwd_inner_done, f);
		break;
	}
}

/* The master is there but cannot take it now (a resync, a move): ask
 * again shortly, within the forwarding timeout, without using up an
 * attempt. */
static void fwd_wait(struct cl_fwd *f, enum cl_fwd_state state, const char *why)
{
	uint64_t now = clock_mono_ms();
	f->peer = NULL;
	if (f->busy_since == 0)
		f->busy_since = now;
	if (now - f->busy_since > CL_FORWARD_TIMEOUT_MS || f->cl->destroying) {
		fwd_autonomous(f, why);
		return;
	}
	f->state = state;
	if (state == CL_FWD_LINK_HELD) {
		/* This node's resync owns the link: its next peer or its end
		 * wakes the forward (cl_fwd_wake_held()); the timer only
		 * bounds the wait. */
		uint64_t left = f->busy_since + CL_FORWARD_TIMEOUT_MS - now;
		ev_timer_set(&f->retry, (double)(left + 1) / 1000.0, 0.);
	} else {
		/* The master said TRYLATER: nothing here tells when it can. */
		ev_timer_set(&f->retry, 0.1, 0.);
	}
	ev_timer_start(f->cl->loop, &f->retry);
}

static void fwd_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct cl_fwd *f = (struct cl_fwd *)((char *)w - offsetof(struct cl_fwd, retry));
	fwd_start(f);
}

/* The master could not take it this time: ask again (it may have moved or
 * failed over), a few times, then go on alone. */
void fwd_again(struct cl_fwd *f, const char *why)
{
	f->peer = NULL;
	if (f->cl->mm != NULL && f->master != 0)
		repl_mm_forget_master(f->cl->mm, f->gkey, f->master);
	if (++f->attempts >= CL_FORWARD_ATTEMPTS || f->cl->destroying) {
		fwd_autonomous(f, why);
		return;
	}
	log_debug("replication: %s: forwarding to %u failed (%s, %s), asking again", f->user,
		  f->master, cl_fwd_state_name(f->state), why);
	f->state = CL_FWD_RETRY;
	ev_timer_set(&f->retry, 0.2 * f->attempts, 0.);
	ev_timer_start(f->cl->loop, &f->retry);
}

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
		if (f->kind == FWD_STORE)
			f->maybe_applied = true;
		fwd_again(f, kind == PROTO_REPLY_TIMEOUT ? "no answer in time" : "the link closed");
		return;
	}
	if (f->kind == FWD_APPEND && f->sent_holder && strcmp(line->name, "BAD") == 0 &&
	    proto_code_has(line, "ARGS") && f->peer != NULL && f->peer->conn != NULL) {
		/* A master (or relay) of an earlier build: no HOLDER on this
		 * link from now on, and this SAVE again without it. */
		log_info("replication: %s: %u does not take HOLDER: sending without it", f->user,
			 f->peer->sid);
		f->peer->holder_refused_gen = f->peer->link_gen + 1;
		f->no_holder = true;
		fwd_send(f);
		return;
	}
	if (f->kind == FWD_STORE && f->sent_req && strcmp(line->name, "BAD") == 0 &&
	    proto_code_has(line, "ARGS") && f->peer != NULL && f->peer->conn != NULL) {
		/* A master (or relay) of an earlier build: no REQ on this link
		 * from now on, and this STORE again without it. */
		log_info("replication: %s: %u does not take REQ on STORE: sending without it",
			 f->user, f->peer->sid);
		f->peer->req_refused_gen = f->peer->link_gen + 1;
		f->no_req = true;
		fwd_send(f);
		return;
	}
	if (strcmp(line->name, "OK") == 0) {
		if (f->kind != FWD_APPEND && fwd_batch_done(f, line)) {
			fwd_send(f);
			return;
		}
		f->cl->forwarded_changes++;
		f->held = f->kind == FWD_APPEND && f->sent_holder && proto_code_has(line, "HELD");
		if (f->held)
			f->cl->forwarded_held++;
		f->state = CL_FWD_APPLYING;
		if (f->kind == FWD_APPEND)
			fwd_apply_append(f, line);
		else if (f->kind == FWD_STORE)
			fwd_apply_store(f);
		else
			fwd_apply_expunge(f);
		return;
	}
	const char *text = line->text != NULL ? line->text : "refused";
	if (proto_code_has(line, "TRYLATER")) {
		fwd_wait(f, CL_FWD_WAIT, text);
		return;
	}
	if (proto_code_has(line, "STALE")) {
		/* The master has moved on to a newer epoch: ask again once
		 * this node adopted it (the root's STALE-EPOCH brings it). */
		if (f->cl->mm != NULL && f->master != 0)
			repl_mm_forget_master(f->cl->mm, f->gkey, f->master);
		fwd_wait(f, CL_FWD_WAIT, text);
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

void fwd_send(struct cl_fwd *f)
{
	struct cl_peer *p = f->peer;
	struct proto_wr *w = NULL;
	if (f->cl->sync != NULL && repl_sync_busy_with(f->cl->sync, p->sid)) {
		/* A resync started toward the master since this forward chose
		 * it (a binding's answer, a batch's, come any time): the
		 * run's SELECT would make our command act on its mailbox. */
		fwd_wait(f, CL_FWD_LINK_HELD, "a resync with the master takes too long");
		return;
	}
	const struct cl_bind *b = cl_bind_get(p, &f->mailbox);
	cl_select(p, b);
	switch (f->kind) {
	case FWD_APPEND: {
		/* uid and modseq 0: the master assigns them. */
		struct proto_save sv = {
			.date = f->app.internaldate, .tz = f->app.internaldate_tz,
			.guid = f->app.guid, .text = f->app.text, .text_len = f->app.text_len,
			.f = { f->app.flags, { (char **)f->app.keywords, f->app.keyword_count,
					       f->app.keyword_count } },
		};
		w = proto_conn_cmd_begin(p->conn, "SAVE");
		proto_wr_save(w, &sv);
		/* This node stores the master's answer durably before its
		 * client hears OK anyway: promised, it counts as one of the
		 * sync_replicas copies, one round trip less (SPEC 8.8). */
		f->sent_holder = !f->no_holder && p->holder_refused_gen != p->link_gen + 1;
		if (f->sent_holder)
			proto_wr_holder(w, f->cl->cfg->node_id);
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
		f->sent_req = false;
		if (f->store.unchangedsince != 0) {
			proto_wr_atom(w, "UNCHANGEDSINCE");
			proto_wr_u64(w, f->store.unchangedsince);
			/* Not idempotent: a resend of a batch the master did apply
			 * (its answer lost) would find the modseqs it gave and
			 * answer MODIFIED for messages it changed.  REQ lets the
			 * master answer the first outcome instead (SPEC 6.4). */
			if (f->req_for != f->sent_upto + 1) {
				f->req_n = cl_req_n_next(f->cl);
				f->req_for = f->sent_upto + 1;
			}
			f->sent_req = !f->no_req && p->req_refused_gen != p->link_gen + 1;
			if (f->sent_req) {
				char req[PROTO_MAX_REQ_LEN + 1];
				snprintf(req, sizeof(req), "%u.%" PRIu64, f->cl->cfg->node_id,
					 f->req_n);
				proto_wr_atom(w, "REQ");
				proto_wr_atom(w, req);
			}
		}
		if (f->store.seen_of != NULL) {
			proto_wr_atom(w, "SEEN-OF");
			proto_wr_cstr(w, f->store.seen_of);
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
	if (f->to != 0) {
		proto_wr_atom(w, "TO");
		proto_wr_u64(w, f->to);
	}
	cl_handover_wr_epoch(f->cl, w, f->epoch);
	f->state = CL_FWD_SENT;
	proto_conn_cmd_send(p->conn, CL_FORWARD_TIMEOUT_MS, fwd_reply_cb, f);
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
		f->state = CL_FWD_BIND_WAIT;
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
	f->state = CL_FWD_APPLYING;
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
		uint64_t left_ms;
		if (cl_handover_waiting(f->cl, f->user, &left_ms)) {
			/* New master here, still catching up: woken when that
			 * ends (catchup_remove), at the latest at its deadline,
			 * when cl_handover_waiting() gives up. */
			f->state = CL_FWD_CATCHUP;
			ev_timer_set(&f->retry, (double)(left_ms + 1) / 1000.0, 0.);
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
		fwd_wait(f, CL_FWD_LINK_HELD, "a resync with the master takes too long");
		return;
	}
	fwd_to_peer(f, p);
}

void fwd_start(struct cl_fwd *f)
{
	struct repl_cluster *cl = f->cl;
	if (cl->sync != NULL && !cl->destroying && repl_sync_holds(cl->sync, f->user, &f->mailbox)) {
		/* A resync here compares snapshots of this mailbox: the
		 * change waits for it (the resync is bounded in time).  No
		 * timer: the end of every hold wakes the held forwards
		 * (cl_fwd_wake_held(), from repl-sync's released hook). */
		f->state = CL_FWD_HELD;
		return;
	}
	/* Before the request: repl-mm may answer at once, from its cache. */
	f->state = CL_FWD_ASKING;
	if (cl->mm == NULL ||
	    repl_mm_granule_key(cl->mm, f->user, &f->mailbox, f->gkey, sizeof(f->gkey)) < 0 ||
	    repl_mm_request_master(cl->mm, f->gkey, CL_MASTER_TIMEOUT_MS, fwd_master_known, f) < 0)
		fwd_autonomous(f, "no master for this mailbox");
}

struct cl_fwd *fwd_new(struct repl_cluster *cl, enum fwd_kind kind, const char *user,
		       const struct guid *mailbox, repl_done_cb *cb, void *ctx)
{
	struct cl_fwd *f = xcalloc(1, sizeof(*f));
	f->cl = cl;
	f->kind = kind;
	f->state = CL_FWD_NEW;
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

void cl_fwd_wake_held(struct repl_cluster *cl)
{
	/* Not from here: the caller may be inside a link's command or a
	 * resync's callbacks; the cluster's prepare watcher runs at the end
	 * of this loop turn. */
	cl->wake_held = true;
}

void cl_fwd_wake_due(struct repl_cluster *cl)
{
	if (!cl->wake_held)
		return;
	cl->wake_held = false;
	size_t n = 0;
	for (struct cl_fwd *f = cl->fwds; f != NULL; f = f->live_next) {
		f->wake = f->state == CL_FWD_HELD || f->state == CL_FWD_CATCHUP ||
			  f->state == CL_FWD_LINK_HELD;
		n += f->wake;
	}
	/* From the head again after each: starting one may complete others
	 * (a failed send fails the link's pending commands), which frees
	 * them. */
	while (n-- > 0) {
		struct cl_fwd *f = cl->fwds;
		while (f != NULL && !f->wake)
			f = f->live_next;
		if (f == NULL)
			break;
		f->wake = false;
		ev_timer_stop(cl->loop, &f->retry);
		fwd_start(f);
	}
}

const char *cl_fwd_state_name(enum cl_fwd_state state)
{
	static const char *const names[] = {
		[CL_FWD_NEW] = "new",		[CL_FWD_HELD] = "held",
		[CL_FWD_CATCHUP] = "catchup",	[CL_FWD_ASKING] = "asking",
		[CL_FWD_BIND_WAIT] = "bind wait", [CL_FWD_SENT] = "sent",
		[CL_FWD_RETRY] = "retry",	[CL_FWD_WAIT] = "wait",
		[CL_FWD_LINK_HELD] = "link held",
		[CL_FWD_AS_MASTER] = "as master", [CL_FWD_AUTONOMOUS] = "autonomous",
		[CL_FWD_APPLYING] = "applying",
	};
	return (size_t)state < sizeof(names) / sizeof(names[0]) ? names[state] : "?";
}
