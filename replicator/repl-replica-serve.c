/* Requests to this node as master (SAVE with UID 0, STORE, EXPUNGE from a
 * node whose client asked; see repl-replica.c): checked against the
 * messages the request names and served like a local change. */
#include "replicator/repl-replica-private.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/log.h"
#include "lib/mail-limits.h"
#include "lib/xalloc.h"
#include "replicator/repl-mm.h"
#include "replicator/repl-sync.h"
#include "storage/acl-rights.h"
#include "storage/storage-acl.h"
#include "storage/storage-pseen.h"
#include "sync/sync.h"

/* ---- Requests to this node as master ---- */

/* GUIDS (g ...) of a forwarded STORE or EXPUNGE names the message the
 * asking node's client meant under each UID.  Where this node holds
 * another message under one of them (the two copies were written apart
 * and are not resynced yet), nothing is changed: answers the request and
 * returns -1.  A UID this node does not hold is left to the change, which
 * skips it. */
static int check_named(struct repl_cluster *cl, struct answer *a, const struct stor_mailbox *mb,
		       const struct proto_arg *guids)
{
	if (guids == NULL)
		return 0;
	if (guids->type != PROTO_ARG_LIST || guids->count != a->uids.count) {
		answer_later(a, "BAD", "ARGS", "GUIDS does not match the UIDs");
		return -1;
	}
	const char *err;
	for (size_t i = 0; i < a->uids.count; i++) {
		struct guid g;
		struct stor_msg m;
		if (proto_arg_guid(&guids->list[i], &g) < 0) {
			answer_later(a, "BAD", "ARGS", "GUIDS does not match the UIDs");
			return -1;
		}
		int r = stor_msg_get(cl->repl.db, &mb->guid, a->uids.items[i], &m, &err);
		if (r < 0) {
			answer_later(a, "NO", "SERVERBUG", err);
			return -1;
		}
		if (r == 0)
			continue;
		bool same = guid_equal(&m.guid, &g);
		stor_msg_free(&m);
		if (!same) {
			char text[96];
			snprintf(text, sizeof(text), "UID %u holds another message on the master",
				 a->uids.items[i]);
			answer_later(a, "NO", "GUIDMISMATCH", text);
			return -1;
		}
	}
	return 0;
}

/* The slot of the STORE with REQ id in mailbox, or NULL. */
static struct cl_store_made *store_made_find(struct repl_cluster *cl, const struct guid *mailbox,
					     const struct cl_req_id *id)
{
	if (cl->store_reqs == NULL)
		return NULL;
	for (size_t i = 0; i < CL_REQ_MAX; i++) {
		struct cl_store_made *r = &cl->store_reqs[i];
		if (r->id.sid == id->sid && r->id.n == id->n && guid_equal(&r->mailbox, mailbox))
			return r;
	}
	return NULL;
}

/* The STORE of a has finished: its outcome is kept for a resend (also
 * when a's link is gone: that is when the resend comes), or forgotten
 * when it failed, so that a resend runs it again. */
static void store_made_record(struct answer *a, const struct repl_result *res)
{
	struct cl_store_made *r = &a->cl->store_reqs[a->store_req_slot];
	/* Taken over meanwhile by a newer request (the ring came round). */
	if (r->id.sid != a->store_req.sid || r->id.n != a->store_req.n ||
	    !guid_equal(&r->mailbox, &a->mailbox) || r->done)
		return;
	if (res->error != REPL_OK) {
		r->id.sid = 0;
		return;
	}
	r->done = true;
	r->modseq = res->modseq;
	uids_copy(&r->failed, res->failed, res->failed_count);
}

static void master_answer_cb(void *ctx, const struct repl_result *res)
{
	struct answer *a = ctx;
	if (a->status[0] == 'S' && a->store_req.sid != 0)
		store_made_record(a, res);
	struct proto_conn *conn = answer_conn(a);
	if (conn == NULL) {
		answer_drop(a);
		return;
	}
	if (res->error != REPL_OK) {
		const char *code = res->error == REPL_ERR_TOOBIG ? "TOOBIG" :
				   res->error == REPL_ERR_LIMIT ? "LIMIT" :
				   res->error == REPL_ERR_NOTFOUND ? "NONEXISTENT" :
				   res->error == REPL_ERR_UNAVAILABLE ? "UNAVAILABLE" : "SERVERBUG";
		proto_conn_reply(conn, a->tag, "NO", code,
				 res->error_msg != NULL ? res->error_msg : "failed");
		answer_drop(a);
		return;
	}
	char code[160];
	const char *err;
	if (a->status[0] == 'A' && res->uid == 0) {
		/* Made, then expunged here before this answer (master_uid_now):
		 * no UID names it any more, and the asker tells none (SPEC 6.4).
		 * No HELD: there is nothing left to hold. */
		snprintf(code, sizeof(code), "MODSEQ %" PRIu64 " EXPUNGED", res->modseq);
	} else if (a->status[0] == 'A') { /* APPEND */
		snprintf(code, sizeof(code), "UID %u MODSEQ %" PRIu64, res->uid, res->modseq);
		struct stor_msg m;
		if (a->save_req && stor_msg_get(a->cl->repl.db, &a->mailbox, res->uid, &m, &err) > 0) {
			if (!guid_equal(&m.guid, &a->save_guid)) {
				char hex[GUID_HEX_SIZE];
				guid_to_hex(&m.guid, hex);
				size_t len = strlen(code);
				snprintf(code + len, sizeof(code) - len, " GUID %s", hex);
			}
			stor_msg_free(&m);
		}
		if (a->held) {
			size_t len = strlen(code);
			snprintf(code + len, sizeof(code) - len, " HELD");
		}
	} else if (a->status[0] == 'S') { /* STORE */
		for (size_t i = 0; i < res->changed_count; i++) {
			const struct stor_msg *m = &res->changed[i];
			struct proto_flags_line fl = {
				m->uid, m->modseq,
				{ m->flags,
				  { m->keywords.items, m->keywords.count, m->keywords.cap } },
			};
			struct proto_wr *w = proto_conn_line_begin(conn, a->tag, "FLAGS");
			proto_wr_flags_line(w, &fl);
			proto_conn_line_end(conn);
		}
		for (size_t i = 0; i < res->failed_count; i++) {
			struct stor_msg m;
			if (stor_msg_get(a->cl->repl.db, &a->mailbox, res->failed[i], &m, &err) <= 0)
				continue;
			if (a->seen_of != NULL &&
			    stor_pseen_view(a->cl->repl.db, &a->mailbox, a->seen_of, &m, &err) < 0) {
				stor_msg_free(&m);
				continue;
			}
			struct proto_flags_line fl = {
				m.uid, m.modseq,
				{ m.flags, { m.keywords.items, m.keywords.count, m.keywords.cap } },
			};
			struct proto_wr *w = proto_conn_line_begin(conn, a->tag, "FLAGS");
			proto_wr_flags_line(w, &fl);
			proto_conn_line_end(conn);
			stor_msg_free(&m);
		}
		int n = snprintf(code, sizeof(code), "MODSEQ %" PRIu64, res->modseq);
		if (res->failed_count > 0 && n > 0) {
			/* The set can be long: written as its own line code. */
			struct buf b;
			struct proto_wr w;
			buf_init(&b);
			proto_wr_init(&w, &b);
			proto_wr_uidset(&w, res->failed, res->failed_count);
			char *full = xasprintf("%s MODIFIED %.*s", code, (int)b.len, (const char *)b.data);
			proto_conn_reply(conn, a->tag, "OK", full, "stored");
			free(full);
			buf_free(&b);
			answer_drop(a);
			return;
		}
	} else { /* EXPUNGE */
		snprintf(code, sizeof(code), "MODSEQ %" PRIu64, res->modseq);
	}
	proto_conn_reply(conn, a->tag, "OK", code, "done");
	answer_drop(a);
}

void serve_save(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
		size_t npos, const struct stor_mailbox *mb)
{
	struct stor_db *db = cl->repl.db;
	struct proto_save sv;
	struct cl_append_req req;
	const char *err;
	memset(&req, 0, sizeof(req));
	if (proto_read_save(cmd, PROTO_SAVE_ASSIGN, &sv, &err) < 0) {
		answer_later(a, "BAD", "ARGS", "SAVE date 0 0 guid flags text");
		return;
	}
	struct proto_flags fl = sv.f;
	req.guid = sv.guid;
	const struct proto_arg *rq = proto_cmd_option(cmd, npos, "REQ");
	if (rq != NULL && proto_arg_req(rq, &req.req.sid, &req.req.n) < 0) {
		/* The parser checked it already. */
		proto_flags_free(&fl);
		answer_later(a, "BAD", "ARGS", "REQ <sid>.<n>");
		return;
	}
	/* The originator may promise to hold the change (SPEC 8.8): only it,
	 * a configured peer, can name itself; anything else is malformed. */
	uint32_t holder;
	const struct proto_arg *via = proto_cmd_option(cmd, npos, "VIA");
	uint32_t originator = a->sid;
	if (via != NULL && via->type == PROTO_ARG_LIST && via->count > 0)
		(void)proto_arg_u32(&via->list[0], &originator);
	if (proto_save_holder(cmd, npos, &holder) < 0 ||
	    (holder != 0 && (holder != originator || holder == cl->cfg->node_id ||
			     cl_peer_find(cl, holder) == NULL))) {
		proto_flags_free(&fl);
		answer_later(a, "BAD", "ARGS", "HOLDER names the originator, a peer");
		return;
	}
	req.holder = holder;
	req.held_r = &a->held;
	/* A resent SAVE (the link dropped before our answer, or a holder
	 * that could not keep its promise, SPEC 8.8) is recognised by its
	 * GUID in cl_master_append() (SPEC 6.4), which answers the message
	 * made once sync_replicas copies hold it: answered at once, the
	 * client could hear OK of a message the master alone holds. */
	if (save_text(db, a, &sv, &req.text, &req.text_len) < 0) {
		proto_flags_free(&fl);
		return;
	}
	req.user = mb->user;
	req.mailbox = mb->guid;
	req.flags = fl.flags;
	req.keywords = (const char *const *)fl.keywords.items;
	req.keyword_count = fl.keywords.count;
	req.internaldate = sv.date;
	req.internaldate_tz = sv.tz;
	snprintf(a->status, sizeof(a->status), "A");
	a->mailbox = mb->guid;
	a->save_guid = req.guid;
	a->save_req = req.req.sid != 0;
	/* The local engine copies what it needs during the call. */
	cl_master_append(cl, &req, master_answer_cb, a);
	proto_flags_free(&fl);
}

/* A resent STORE with REQ (SPEC 6.4) whose first attempt this node
 * served: answered with that attempt's outcome, each message's flags as
 * they are now, and nothing changed again; still under way: TRYLATER.
 * Otherwise its slot is taken and it runs as usual; returns false. */
static bool store_resent(struct repl_cluster *cl, struct answer *a, const struct stor_mailbox *mb)
{
	struct cl_store_made *r = store_made_find(cl, &mb->guid, &a->store_req);
	if (r == NULL) {
		if (cl->store_reqs == NULL)
			cl->store_reqs = xcalloc(CL_REQ_MAX, sizeof(*cl->store_reqs));
		a->store_req_slot = cl->store_req_next;
		cl->store_req_next = (cl->store_req_next + 1) % CL_REQ_MAX;
		r = &cl->store_reqs[a->store_req_slot];
		r->mailbox = mb->guid;
		r->id = a->store_req;
		r->done = false;
		r->modseq = 0;
		r->failed.count = 0;
		return false;
	}
	if (!r->done) {
		/* Answered once it is held by sync_replicas copies, as the first
		 * attempt is: the forwarder asks again shortly. */
		a->store_req.sid = 0;
		answer_later(a, "NO", "TRYLATER", "this request is still under way");
		return true;
	}
	log_debug("replication: %s: STORE REQ %u.%" PRIu64 " resent: answering its first outcome",
		  mb->user, r->id.sid, r->id.n);
	stor_msg_list now = ARRAY_INIT;
	const char *err;
	for (size_t i = 0; i < a->uids.count; i++) {
		bool refused = false;
		for (size_t j = 0; j < r->failed.count && !refused; j++)
			refused = r->failed.items[j] == a->uids.items[i];
		struct stor_msg m;
		if (refused || stor_msg_get(cl->repl.db, &mb->guid, a->uids.items[i], &m, &err) <= 0)
			continue;
		if (a->seen_of != NULL &&
		    stor_pseen_view(cl->repl.db, &mb->guid, a->seen_of, &m, &err) < 0) {
			stor_msg_free(&m);
			continue;
		}
		ARRAY_PUSH(&now, m);
	}
	struct repl_result res;
	memset(&res, 0, sizeof(res));
	res.modseq = r->modseq;
	res.changed = now.items;
	res.changed_count = now.count;
	res.failed = r->failed.items;
	res.failed_count = r->failed.count;
	a->store_req.sid = 0;
	a->mailbox = mb->guid;
	snprintf(a->status, sizeof(a->status), "S");
	master_answer_cb(a, &res);
	stor_msg_list_free(&now);
	return true;
}

void serve_store(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
		 size_t npos, const struct stor_mailbox *mb)
{
	struct proto_store ps;
	const char *err;
	if (proto_read_store(cmd, PROTO_STORE_REQUEST, PROTO_MAX_CHANGE_UIDS, &ps, &err) < 0) {
		answer_later(a, "BAD", "ARGS", err);
		return;
	}
	a->uids.items = ps.uids;
	a->uids.count = a->uids.cap = ps.uid_count;
	bool replace = ps.replace;
	struct proto_flags add = ps.add, rm = ps.rm;
	bool has_rm = rm.flags != 0 || rm.keywords.count > 0;
	struct proto_flags *use = has_rm ? &rm : &add;
	a->store.op = replace ? STOR_FLAGS_REPLACE : has_rm ? STOR_FLAGS_REMOVE : STOR_FLAGS_ADD;
	a->store.flags = use->flags;
	a->keywords.items = use->keywords.items;
	a->keywords.count = use->keywords.count;
	a->keywords.cap = use->keywords.cap;
	memset(&use->keywords, 0, sizeof(use->keywords));
	a->store.keywords = (const char *const *)a->keywords.items;
	a->store.keyword_count = a->keywords.count;
	const struct proto_arg *us = proto_cmd_option(cmd, npos, "UNCHANGEDSINCE");
	if (us != NULL)
		(void)proto_arg_u64(us, INT64_MAX, &a->store.unchangedsince);
	proto_flags_free(&add);
	proto_flags_free(&rm);
	const char *seen_of;
	if (proto_read_seen_of(cmd, npos, &seen_of, &err) != PROTO_CODEC_OK) {
		answer_later(a, "BAD", "ARGS", err);
		return;
	}
	/* The owner's own \Seen, or private \Seen not in force here: the
	 * plain STORE (SPEC.md 7.7). */
	if (seen_of != NULL && cl->cfg->shared_seen_private && strcmp(seen_of, mb->user) != 0) {
		a->seen_of = xstrdup(seen_of);
		a->store.seen_of = a->seen_of;
	}
	if (check_named(cl, a, mb, proto_cmd_option(cmd, npos, "GUIDS")) < 0)
		return;
	const struct proto_arg *rq = proto_cmd_option(cmd, npos, "REQ");
	if (rq != NULL && (proto_arg_req(rq, &a->store_req.sid, &a->store_req.n) < 0 ||
			   a->store_req.sid == 0)) {
		/* The parser checked it already. */
		a->store_req.sid = 0;
		answer_later(a, "BAD", "ARGS", "REQ <sid>.<n>");
		return;
	}
	if (a->store_req.sid != 0 && store_resent(cl, a, mb))
		return;
	a->mailbox = mb->guid;
	a->user = xstrdup(mb->user);
	snprintf(a->status, sizeof(a->status), "S");
	cl_master_store(cl, a->user, &a->mailbox, a->uids.items, a->uids.count, &a->store,
			master_answer_cb, a);
}

void serve_expunge(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
		   size_t npos, const struct stor_mailbox *mb)
{
	struct proto_expunge pe;
	const char *err;
	if (proto_read_expunge(cmd, PROTO_EXPUNGE_REQUEST, PROTO_MAX_CHANGE_UIDS, &pe, &err) < 0) {
		answer_later(a, "BAD", "ARGS", "EXPUNGE uidset 0");
		return;
	}
	a->uids.items = pe.uids;
	a->uids.count = a->uids.cap = pe.uid_count;
	if (check_named(cl, a, mb, proto_cmd_option(cmd, npos, "GUIDS")) < 0)
		return;
	a->mailbox = mb->guid;
	a->user = xstrdup(mb->user);
	snprintf(a->status, sizeof(a->status), "E");
	cl_master_expunge(cl, a->user, &a->mailbox, a->uids.items, a->uids.count, master_answer_cb,
			  a);
}
