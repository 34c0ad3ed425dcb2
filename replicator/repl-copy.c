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

/* ---- COPY and MOVE: one APPEND per message, then an EXPUNGE of the
 * sources for MOVE, each to its own master.  Every copy is a new message
 * with a GUID of its own, drawn here and kept by the forward's retries
 * (SPEC 6.4): the resync after a partition merges one GUID into one
 * message, so two copies made on the two sides under the source's GUID
 * would become one.  Its text is the source's, stored again. ---- */

/* Copies in flight at once, and their texts' bytes: each holds its text
 * in memory until the master answered.  One copy always goes, whatever
 * its size (max_message_size bounds it). */
#define COPY_WINDOW 16
#define COPY_WINDOW_BYTES (16u * 1024 * 1024)

struct copy_op {
	struct repl_cluster *cl;
	/* The owners of the two mailboxes: another user's mailbox shared
	 * with the session (SPEC.md 7.6) is written as its owner's. */
	char *user, *dst_user;
	struct guid src, dst;
	bool move;
	repl_done_cb *cb;
	void *ctx;
	size_t left;         /* items not answered yet */
	size_t next;         /* the next item to start */
	size_t running;      /* items started, not answered */
	uint64_t running_bytes; /* their texts' sizes */
	bool launching;      /* in copy_launch() */
	struct copy_item {
		uint32_t src_uid;
		uint32_t dst_uid;
		struct guid src_guid; /* whose text the copy takes, and what a MOVE expunges */
		uint64_t size;
		struct guid guid;
		uint32_t flags;
		stor_string_list keywords;
		int64_t date;
		int32_t tz;
		struct buf text;     /* while its APPEND is in flight */
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
static void copy_launch(struct copy_op *c);

struct copy_sub {
	struct copy_op *c;
	size_t i;
};

/* Where a MOVE's source message is now: a sync may have moved it to
 * another UID (a UID conflict) while its copy was made.  Its UID then
 * holds a tombstone, and expunging that UID would leave the message in
 * place although the client was told it moved.  0: gone. */
static uint32_t move_source_now(struct copy_op *c, const struct copy_item *it)
{
	struct stor_db *db = c->cl->repl.db;
	struct stor_msg cur;
	const char *err;
	uint32_t at = it->src_uid;
	int r = stor_msg_get(db, &c->src, at, &cur, &err);
	if (r > 0) {
		bool same = guid_equal(&cur.guid, &it->src_guid);
		stor_msg_free(&cur);
		if (same)
			return at;
	}
	return stor_msg_find_guid(db, &c->src, &it->src_guid, &at, &err) > 0 ? at : 0;
}

static void copy_all_saved(struct copy_op *c)
{
	for (size_t i = 0; i < c->count; i++) {
		if (!c->items[i].ok)
			continue;
		ARRAY_PUSH(&c->out.src_uids, c->items[i].src_uid);
		ARRAY_PUSH(&c->out.dst_uids, c->items[i].dst_uid);
		uint32_t at = c->move ? move_source_now(c, &c->items[i]) : 0;
		if (at != 0)
			ARRAY_PUSH(&c->moved, at);
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
	buf_free(&c->items[s->i].text);
	c->running_bytes -= c->items[s->i].size;
	free(s);
	c->running--;
	c->left--;
	copy_launch(c);
}

/* Starts copies up to the window; once every one was answered, goes on
 * with the result.  Reentrant: an APPEND may answer before it returns. */
static void copy_launch(struct copy_op *c)
{
	struct stor_db *db = c->cl->repl.db;
	const char *err;
	if (c->launching)
		return;
	c->launching = true;
	while (c->next < c->count &&
	       (c->running == 0 ||
		(c->running < COPY_WINDOW &&
		 c->running_bytes + c->items[c->next].size <= COPY_WINDOW_BYTES))) {
		size_t i = c->next++;
		struct copy_item *it = &c->items[i];
		if (stor_text_read(db, &it->src_guid, 0, it->size, &it->text, &err) < 0) {
			buf_free(&it->text);
			c->left--;
			if (stor_msg_get(db, &c->src, it->src_uid, NULL, &err) == 0)
				continue; /* expunged meanwhile, its text with it:
					     skipped, as copy_item_done skips it */
			if (c->out.res.error == REPL_OK)
				owned_error(&c->out, REPL_ERR_INTERNAL,
					    "the copied message's text cannot be read");
			continue;
		}
		if (it->text.data == NULL)
			buf_append(&it->text, "", 0);
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
		a.text = it->text.data;
		a.text_len = it->text.len;
		c->running++;
		c->running_bytes += it->size;
		cl_append(&c->cl->repl, c->dst_user, &c->dst, &a, copy_item_done, s);
	}
	c->launching = false;
	if (c->left == 0)
		copy_all_saved(c);
}

static void copy_begin(void *ctx, const struct repl_result *unused)
{
	(void)unused;
	copy_launch(ctx);
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
	for (size_t i = 0; i < count; i++) {
		struct stor_msg m;
		if (stor_msg_get(db, src, uids[i], &m, &err) <= 0)
			continue;
		struct copy_item *it = &c->items[c->count];
		it->src_uid = uids[i];
		it->src_guid = m.guid;
		it->size = m.size;
		guid_generate(&it->guid);
		it->flags = m.flags;
		it->keywords = m.keywords;
		memset(&m.keywords, 0, sizeof(m.keywords));
		it->date = m.internaldate;
		it->tz = m.internaldate_tz;
		buf_init(&it->text);
		stor_msg_free(&m);
		c->count++;
	}
	c->left = c->count;
	/* From the loop: the answer must not come before this returns, also
	 * when there is nothing to copy or every text is gone. */
	cl->local->v->complete_later(cl->local, copy_begin, c);
}
