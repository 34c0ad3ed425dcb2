/* COPY and MOVE built from the seam's own APPEND and EXPUNGE, so that each
 * half goes to its own mailbox's master and nothing here decides mastership
 * or replication again. */
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

/* ---- COPY and MOVE: one APPEND per message (keeping its GUID), then an
 * EXPUNGE of the sources for MOVE, each to its own master. ---- */

struct copy_op {
	struct repl_cluster *cl;
	/* The owners of the two mailboxes: another user's mailbox shared
	 * with the session (SPEC.md 7.6) is written as its owner's. */
	char *user, *dst_user;
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
	free(c->dst_user);
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

void cl_copy(struct repl *r, const char *user, const struct guid *src,
	     const uint32_t *uids, size_t count, const struct guid *dst, bool move,
	     repl_done_cb *cb, void *ctx)
{
	struct repl_cluster *cl = to_cl(r);
	struct stor_db *db = r->db;
	const char *err;
	struct stor_mailbox mb;
	char *src_user = NULL;
	int found = stor_mailbox_get_by_guid(db, src, &mb, &err);
	if (found > 0) {
		src_user = xstrdup(mb.user);
		stor_mailbox_free(&mb);
		found = stor_mailbox_get_by_guid(db, dst, &mb, &err);
	}
	if (found <= 0) {
		free(src_user);
		/* The local engine gives the same refusal, from the loop. */
		repl_copy(cl->local, user, src, uids, count, dst, move, cb, ctx);
		return;
	}
	struct copy_op *c = xcalloc(1, sizeof(*c));
	c->cl = cl;
	c->user = src_user;
	c->dst_user = xstrdup(mb.user);
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
		cl_append(r, c->dst_user, dst, &a, copy_item_done, s);
	}
}
