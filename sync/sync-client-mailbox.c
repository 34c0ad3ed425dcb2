/* The per-mailbox half of a sync: which mailboxes need work, our changes
 * sent between SYNC-BEGIN and SYNC-END, the texts we FETCH, the server's
 * answer read, and the second, short sync after it.  Apart from the list
 * merge because it works on one mailbox's messages at a time, in bounded
 * steps.  The answer is applied to our store in
 * sync-client-mailbox-apply.c. */
#include "sync/sync-client-private.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/str.h"
#include "lib/xalloc.h"

/* ---- Per-mailbox sync ---- */

int plan_jobs(struct sync_client *c)
{
	stor_mailbox_array mbs;
	const char *err;
	if (stor_mailbox_list(c->db, c->user, &mbs, &err) < 0)
		return cl_fail(c, "%s", err);
	ARRAY_FREE(&c->jobs);
	for (size_t i = 0; i < mbs.count; i++)
		ARRAY_PUSH(&c->jobs, mbs.items[i].guid);
	stor_mailbox_list_free(&mbs);
	c->job = 0;
	c->job_tries = 0;
	return 0;
}

/* Decides what to do with mailbox c->jobs[c->job]: 1 sync it (MBOX sent),
 * 0 skip it, -1 error. */
int mbox_start(struct sync_client *c)
{
	const char *err;
	struct stor_sync_state st;
	answer_free(c);
	int r = stor_mailbox_get_by_guid(c->db, &c->jobs.items[c->job], &c->cur, &err);
	if (r <= 0)
		return r < 0 ? cl_fail(c, "%s", err) : 0; /* gone meanwhile */
	c->have_cur = true;
	const struct cl_srv_mbox *s = srv_by_guid(c, &c->cur.guid);
	if (s == NULL)
		return cl_fail(c, "mailbox %s is missing on the peer after the list merge",
			       c->cur.name);
	c->report.mailboxes_checked++;
	if (s->uidvalidity != c->cur.uidvalidity)
		return cl_fail(c, "mailbox %s: UIDVALIDITY %u here, %u on the peer (needs a "
			       "full resync, SPEC.md 10.4, not implemented)", c->cur.name,
			       c->cur.uidvalidity, s->uidvalidity);
	r = stor_sync_state_get(c->db, c->peer, &c->cur.guid, &st, &err);
	if (r < 0)
		return cl_fail(c, "%s", err);
	if (r > 0 && st.uidvalidity != c->cur.uidvalidity) {
		r = 0;
		memset(&st, 0, sizeof(st));
	}
	bool digest_eq = memcmp(s->digest, c->cur.digest, sizeof(s->digest)) == 0;
	bool full = c->full;
	if (!full && !digest_eq && c->cur.uidnext == s->uidnext &&
	    c->cur.highestmodseq == s->hms) {
		/* Equal UIDNEXT and HIGHESTMODSEQ, different messages or
		 * flags: nothing the modseqs say can be trusted. */
		log_warnx("sync %s with %u: mailbox %s: digests differ with equal UIDNEXT and "
			  "HIGHESTMODSEQ; comparing every message", c->user, c->peer, c->cur.name);
		full = true;
	}
	if (r > 0 && !full) {
		bool unchanged = c->cur.uidnext == st.uidnext && s->uidnext == st.uidnext &&
			c->cur.highestmodseq == st.highestmodseq && s->hms == st.highestmodseq;
		if (unchanged && digest_eq)
			return 0;
		/* (Unchanged with different digests was caught above.) */
		if (c->cur.uidnext < st.uidnext || s->uidnext < st.uidnext ||
			   c->cur.highestmodseq < st.highestmodseq || s->hms < st.highestmodseq) {
			log_warnx("sync %s with %u: mailbox %s went back in time (restored?); "
				  "comparing every message", c->user, c->peer, c->cur.name);
			full = true;
		}
	} else if (r == 0 && !full && digest_eq && c->cur.uidnext == s->uidnext &&
		   c->cur.highestmodseq == s->hms) {
		/* Never synced, but identical already (both new and empty). */
		st.uidvalidity = c->cur.uidvalidity;
		st.uidnext = c->cur.uidnext;
		st.highestmodseq = c->cur.highestmodseq;
		if (stor_sync_state_set(c->db, c->peer, &c->cur.guid, &st, &err) < 0)
			return cl_fail(c, "%s", err);
		return 0;
	}
	if (r == 0)
		full = true;
	c->cur_full = full;
	c->common_cap = UINT64_MAX;
	c->L = c->cur_full ? 1 : st.uidnext;
	c->M = c->cur_full ? 0 : st.highestmodseq;
	c->cu = c->cur.uidnext;
	c->cm = c->cur.highestmodseq;
	c->report.mailboxes_synced++;
	if (c->cur_full)
		c->report.mailboxes_full++;

	struct proto_wr w;
	/* One mailbox at a time: id 1 is rebound each time (SPEC.md 6.1), so
	 * the server's id table stays one entry whatever the mailbox count. */
	uint32_t id = 1;
	cl_new_group(c);
	cl_cmd_begin(c, &w, "MBOX", K_MBOX, 0);
	proto_wr_u64(&w, id);
	proto_wr_cstr(&w, c->user);
	proto_wr_cstr(&w, c->cur.name);
	proto_wr_u64(&w, c->cur.uidvalidity);
	proto_wr_guid(&w, &c->cur.guid);
	cl_cmd_end(c, &w);
	cl_cmd_begin(c, &w, "SELECT", K_SELECT, 0);
	proto_wr_u64(&w, id);
	cl_cmd_end(c, &w);
	return 1;
}

/* SELECT 1 again, in the same write as the SYNC-BEGIN after it: the
 * selection is the link's, and whatever else this node sends the peer
 * between our rounds (a SELECT of a forward or a relay) must not make the
 * server merge another mailbox with ours. */
static void select_again(struct sync_client *c, struct proto_wr *w)
{
	cl_cmd_begin(c, w, "SELECT", K_SELECT, 0);
	proto_wr_u64(w, 1);
	cl_cmd_end(c, w);
}

int send_begin(struct sync_client *c)
{
	const char *err;
	/* Read again with the changes, in one turn of the loop: a write made
	 * here since mbox_start() (the MBOX and SELECT round trip) is among
	 * the changes sent, so the cm the server merges with must count it. */
	struct stor_mailbox mb;
	int r = stor_mailbox_get_by_guid(c->db, &c->cur.guid, &mb, &err);
	if (r <= 0)
		return cl_fail(c, "mailbox vanished: %s", r < 0 ? err : "");
	c->cu = mb.uidnext;
	c->cm = mb.highestmodseq;
	stor_mailbox_free(&mb);
	if (stor_changes_since(c->db, &c->cur.guid, c->M, &c->msgs, &c->tombs, &err) < 0)
		return cl_fail(c, "%s", err);
	c->report.messages_examined += (unsigned)(c->msgs.count + c->tombs.count);
	cl_new_group(c);
	struct proto_wr w;
	select_again(c, &w);
	cl_cmd_begin(c, &w, "SYNC-BEGIN", K_BEGIN, 0);
	proto_wr_u64(&w, c->M);
	proto_wr_u64(&w, c->cm);
	proto_wr_u64(&w, c->L);
	proto_wr_u64(&w, c->cu);
	cl_cmd_end(c, &w);
	c->send_pos = 0;
	return 0;
}

/* Sends up to budget of our changes; 1 when all are sent. */
int send_some(struct sync_client *c)
{
	struct proto_wr w;
	unsigned n = 0;
	while (c->send_pos < c->msgs.count && n < c->budget) {
		const struct stor_msg *m = &c->msgs.items[c->send_pos];
		if (m->uid >= c->L) {
			struct proto_save sv;
			sync_save_of_msg(&sv, m);
			cl_cmd_begin(c, &w, "SAVE", K_SAVE, c->send_pos);
			proto_wr_save(&w, &sv);
			sync_wr_stamps(&w, &m->stamps);
		} else {
			uint32_t uid = m->uid;
			struct proto_store st = {
				.uids = &uid, .uid_count = 1, .modseq = m->modseq,
				.add = { m->flags, { m->keywords.items, m->keywords.count,
						     m->keywords.cap } },
				.replace = true,
			};
			cl_cmd_begin(c, &w, "STORE", K_OTHER, 0);
			proto_wr_store(&w, &st);
			sync_wr_stamps(&w, &m->stamps);
			c->report.flags_changed++;
		}
		cl_cmd_end(c, &w);
		c->send_pos++;
		n++;
	}
	if (c->send_pos < c->msgs.count)
		return 0;
	if (c->tombs.count > 0) {
		/* A user's expunges go with their GUIDs: the server drops its
		 * copies of those GUIDs under other UIDs too (SPEC 10.3). */
		stor_uid_list uids = ARRAY_INIT, uuids = ARRAY_INIT;
		ARRAY(struct guid) ug = ARRAY_INIT;
		for (size_t i = 0; i < c->tombs.count; i++) {
			const struct stor_tombstone *t = &c->tombs.items[i];
			if (t->user) {
				ARRAY_PUSH(&uuids, t->uid);
				ARRAY_PUSH(&ug, t->guid);
			} else {
				ARRAY_PUSH(&uids, t->uid);
			}
		}
		cl_wr_expunges(c, &uids, &uuids, ug.items);
		ARRAY_FREE(&uids);
		ARRAY_FREE(&uuids);
		ARRAY_FREE(&ug);
	}
	/* A user's expunges we know by GUID only (and the server may not),
	 * of messages we do not hold: the server drops its copies and
	 * remembers them (SPEC 10.2). */
	sync_guid_list gone = ARRAY_INIT;
	const char *err;
	if (sync_gone_since(c->db, &c->cur.guid, c->M, &gone, &err) < 0) {
		ARRAY_FREE(&gone);
		return cl_fail(c, "%s", err);
	}
	for (size_t i = 0; i < gone.count; i += SYNC_MAX_GONE_PER_LINE) {
		size_t k = gone.count - i;
		if (k > SYNC_MAX_GONE_PER_LINE)
			k = SYNC_MAX_GONE_PER_LINE;
		cl_cmd_begin(c, &w, "GONE", K_OTHER, 0);
		sync_wr_user_guids(&w, gone.items + i, k);
		cl_cmd_end(c, &w);
	}
	ARRAY_FREE(&gone);
	if (sync_pseen_cl_send(c) < 0)
		return -1;
	return 1;
}

int resend_some(struct sync_client *c)
{
	struct proto_wr w;
	struct buf text = BUF_INIT;
	const char *err;
	size_t bytes = 0;
	unsigned n = 0;
	while (c->resend_pos < c->resend.count && n < c->budget && bytes < 8 * 1024 * 1024) {
		const struct stor_msg *m = &c->msgs.items[c->resend.items[c->resend_pos]];
		buf_reset(&text);
		if (stor_text_read(c->db, &m->guid, 0, m->size, &text, &err) < 0) {
			buf_free(&text);
			return cl_fail(c, "reading the text of UID %u: %s", m->uid, err);
		}
		struct proto_save sv;
		sync_save_of_msg(&sv, m);
		sv.text = text.data != NULL ? (const void *)text.data : "";
		sv.text_len = text.len;
		cl_cmd_begin(c, &w, "SAVE", K_SAVE, c->resend.items[c->resend_pos]);
		proto_wr_save(&w, &sv);
		sync_wr_stamps(&w, &m->stamps);
		cl_cmd_end(c, &w);
		c->report.texts_sent++;
		bytes += text.len;
		c->resend_pos++;
		n++;
	}
	buf_free(&text);
	return c->resend_pos == c->resend.count ? 1 : 0;
}

void send_end(struct sync_client *c)
{
	struct proto_wr w;
	cl_new_group(c);
	cl_cmd_begin(c, &w, "SYNC-END", K_END, 0);
	cl_cmd_end(c, &w);
}

/* Looks for the texts of up to budget SAVE lines; once all are looked at,
 * FETCHes the ones we don't hold.  0 = call again, 1 = FETCH sent (or
 * nothing to fetch), -1 error. */
int send_fetch(struct sync_client *c)
{
	const char *err;
	unsigned n = 0;
	if (c->fetch_pos == 0)
		c->need.count = 0;
	for (; c->fetch_pos < c->saves.count && n < c->budget; c->fetch_pos++, n++) {
		const struct cl_save *sv = &c->saves.items[c->fetch_pos];
		int r = stor_text_exists(c->db, &sv->guid, NULL, &err);
		if (r < 0)
			return cl_fail(c, "%s", err);
		if (r == 0)
			ARRAY_PUSH(&c->need, sv->uid);
	}
	if (c->fetch_pos < c->saves.count)
		return 0;
	c->fetch_pos = 0;
	cl_new_group(c);
	stor_uid_list need = c->need;
	for (size_t i = 0; i < need.count; i += SYNC_MAX_UIDS_PER_LINE) {
		struct proto_wr w;
		size_t k = need.count - i;
		if (k > SYNC_MAX_UIDS_PER_LINE)
			k = SYNC_MAX_UIDS_PER_LINE;
		/* need is in UID order: the messages below this chunk's first
		 * UID can be stored once the chunks before it completed. */
		struct cl_chunk ch = { need.items[i], false };
		cl_cmd_begin(c, &w, "FETCH", K_FETCH, c->chunks.count);
		ARRAY_PUSH(&c->chunks, ch);
		proto_wr_fetch(&w, need.items + i, k);
		cl_cmd_end(c, &w);
	}
	c->need.count = 0;
	return 1;
}

/* The UID below which every message of the answer has its text here: the
 * first UID of the first FETCH chunk not completed yet. */
uint32_t fetched_below(const struct sync_client *c)
{
	for (size_t i = 0; i < c->chunks.count; i++) {
		if (!c->chunks.items[i].done)
			return c->chunks.items[i].lo;
	}
	return UINT32_MAX;
}

int cmp_cl_save(const void *a, const void *b)
{
	uint32_t x = ((const struct cl_save *)a)->uid, y = ((const struct cl_save *)b)->uid;
	return x < y ? -1 : x > y;
}

/* c->saves is sorted by UID once the SYNC-END answer is complete. */
static const struct cl_save *save_by_uid(const struct sync_client *c, uint32_t uid)
{
	struct cl_save key;
	key.uid = uid;
	if (c->saves.count == 0)
		return NULL;
	return bsearch(&key, c->saves.items, c->saves.count, sizeof(key), cmp_cl_save);
}

int on_text_line(struct sync_client *c, const struct proto_cmd *line)
{
	uint32_t uid;
	struct guid g;
	const char *err;
	if (!proto_cmd_is(line, "TEXT") || line->arg_count != 3 ||
	    proto_arg_u32(&line->args[0], &uid) < 0 || proto_arg_guid(&line->args[1], &g) < 0 ||
	    line->args[2].type != PROTO_ARG_LITERAL)
		return cl_fail(c, "FETCH: bad data line %s", line->name);
	const struct cl_save *sv = save_by_uid(c, uid);
	if (sv == NULL || guid_cmp(&sv->guid, &g) != 0)
		return cl_fail(c, "FETCH: TEXT for UID %u that was not asked for", uid);
	struct stor_text_writer *tw = stor_text_begin(c->db, &g);
	if (stor_text_write(tw, line->args[2].str, line->args[2].len, &err) < 0) {
		stor_text_abort(&tw);
		return cl_fail(c, "storing the text of UID %u: %s", uid, err);
	}
	if (stor_text_finish(&tw, &err) < 0)
		return cl_fail(c, "storing the text of UID %u: %s", uid, err);
	c->report.texts_fetched++;
	return 0;
}

/* Data lines of the SYNC-END answer. */
int on_end_line(struct sync_client *c, const struct proto_cmd *line)
{
	if (c->exp_uids.count + c->saves.count + c->flags.count + c->fix_old.count >
	    SYNC_MAX_ANSWER_ITEMS)
		return cl_fail(c, "SYNC-END: answer too large");
	if (proto_cmd_is(line, "PSEEN"))
		return sync_pseen_cl_line(c, line);
	if (proto_cmd_is(line, "GONE")) {
		struct guid *guids;
		size_t n;
		if (sync_cmd_gone(line, &guids, &n) < 0)
			return cl_fail(c, "SYNC-END: bad GONE line");
		if (c->gone.count + n > SYNC_MAX_GONE_PER_SYNC) {
			free(guids);
			return cl_fail(c, "SYNC-END: too many GONE GUIDs");
		}
		for (size_t i = 0; i < n; i++)
			ARRAY_PUSH(&c->gone, guids[i]);
		free(guids);
		return 0;
	}
	if (proto_cmd_is(line, "EXPUNGE")) {
		struct proto_expunge e;
		const char *err;
		bool user;
		struct guid *guids;
		/* Values past the bounds fail the sync before anything of
		 * the answer is applied. */
		int cr = proto_read_expunge(line, PROTO_EXPUNGE_SYNC, SYNC_MAX_UIDS_PER_LINE * 4, &e,
					    &err);
		if (cr == PROTO_CODEC_LIMIT)
			return cl_fail(c, "SYNC-END: EXPUNGE line with %s", MAIL_LIMITS_TEXT);
		if (cr != PROTO_CODEC_OK)
			return cl_fail(c, "SYNC-END: bad EXPUNGE line");
		stor_uid_list uids = { e.uids, e.uid_count, e.uid_count };
		if (sync_cmd_user_guids(line, 2, &uids, &user, &guids) < 0) {
			proto_expunge_free(&e);
			return cl_fail(c, "SYNC-END: bad EXPUNGE line");
		}
		for (size_t i = 0; i < e.uid_count; i++) {
			ARRAY_PUSH(&c->exp_uids, e.uids[i]);
			if (user) {
				struct sync_uexp x = { e.uids[i], guids[i] };
				ARRAY_PUSH(&c->exp_user, x);
			}
		}
		free(guids);
		c->exp_modseq = e.modseq;
		proto_expunge_free(&e);
		return 0;
	}
	if (proto_cmd_is(line, "SAVE")) {
		struct cl_save sv;
		struct proto_save ps;
		const char *err;
		memset(&sv, 0, sizeof(sv));
		int cr = proto_read_save(line, PROTO_SAVE_GIVEN, &ps, &err);
		if (cr == PROTO_CODEC_BAD || sync_cmd_stamps(line, 6, &sv.stamped, &sv.stamps) < 0) {
			if (cr == PROTO_CODEC_OK)
				proto_save_free(&ps);
			return cl_fail(c, "SYNC-END: bad SAVE line");
		}
		if (cr == PROTO_CODEC_LIMIT) {
			stor_stamp_list_free(&sv.stamps);
			return cl_fail(c, "SYNC-END: SAVE line with %s", MAIL_LIMITS_TEXT);
		}
		sv.uid = ps.uid;
		sv.modseq = ps.modseq;
		sv.guid = ps.guid;
		sync_flags_take(&sv.f, &ps.f);
		sv.date = ps.date;
		sv.tz = ps.tz;
		if (ps.text != NULL) {
			struct stor_text_writer *tw = stor_text_begin(c->db, &sv.guid);
			if (stor_text_write(tw, ps.text, ps.text_len, &err) < 0) {
				stor_text_abort(&tw);
				sync_flags_free(&sv.f);
				stor_stamp_list_free(&sv.stamps);
				return cl_fail(c, "%s", err);
			}
			if (stor_text_finish(&tw, &err) < 0) {
				sync_flags_free(&sv.f);
				stor_stamp_list_free(&sv.stamps);
				return cl_fail(c, "%s", err);
			}
		}
		ARRAY_PUSH(&c->saves, sv);
		return 0;
	}
	if (proto_cmd_is(line, "FLAGS")) {
		struct cl_flags fl;
		struct proto_flags_line pl;
		const char *err;
		memset(&fl, 0, sizeof(fl));
		bool stamped;
		int cr = proto_read_flags_line(line, &pl, &err);
		if (cr == PROTO_CODEC_BAD || sync_cmd_stamps(line, 3, &stamped, &fl.stamps) < 0) {
			if (cr == PROTO_CODEC_OK)
				proto_flags_free(&pl.f);
			return cl_fail(c, "SYNC-END: bad FLAGS line");
		}
		if (cr == PROTO_CODEC_LIMIT) {
			stor_stamp_list_free(&fl.stamps);
			return cl_fail(c, "SYNC-END: FLAGS line with %s", MAIL_LIMITS_TEXT);
		}
		fl.uid = pl.uid;
		fl.modseq = pl.modseq;
		sync_flags_take(&fl.f, &pl.f);
		ARRAY_PUSH(&c->flags, fl);
		return 0;
	}
	if (proto_cmd_is(line, "UIDFIX")) {
		struct proto_uidfix f;
		const char *err;
		int cr = proto_read_uidfix(line, SYNC_MAX_UIDS_PER_LINE * 4, &f, &err);
		if (cr == PROTO_CODEC_LIMIT)
			return cl_fail(c, "SYNC-END: UIDFIX line with %s", MAIL_LIMITS_TEXT);
		if (cr != PROTO_CODEC_OK)
			return cl_fail(c, "SYNC-END: bad UIDFIX line");
		for (size_t i = 0; i < f.count; i++) {
			ARRAY_PUSH(&c->fix_old, f.old_uids[i]);
			ARRAY_PUSH(&c->fix_new, f.new_uids[i]);
		}
		proto_uidfix_free(&f);
		return 0;
	}
	return cl_fail(c, "SYNC-END: unexpected data line %s", line->name);
}

/* The second, short sync after an answer that named UIDs we hold
 * tombstones for: EXPUNGE of our expunged copies, UIDFIX of the server's
 * messages that we had to place at fresh UIDs. */
int send_late(struct sync_client *c)
{
	struct stor_mailbox mb;
	const char *err;
	struct proto_wr w;
	int r = stor_mailbox_get_by_guid(c->db, &c->cur.guid, &mb, &err);
	if (r <= 0)
		return cl_fail(c, "mailbox vanished: %s", r < 0 ? err : "");
	c->M = c->final_modseq;
	c->L = c->final_uidnext;
	c->cu = mb.uidnext;
	c->cm = mb.highestmodseq;
	stor_mailbox_free(&mb);
	stor_uid_list exp = c->late_exp, fo = c->late_old, fn = c->late_new;
	stor_uid_list uexp = c->late_uexp;
	struct guid *uexp_g = c->late_uexp_g.items;
	memset(&c->late_exp, 0, sizeof(c->late_exp));
	memset(&c->late_uexp, 0, sizeof(c->late_uexp));
	memset(&c->late_uexp_g, 0, sizeof(c->late_uexp_g));
	memset(&c->late_old, 0, sizeof(c->late_old));
	memset(&c->late_new, 0, sizeof(c->late_new));
	for (size_t i = 0; i < c->saves.count; i++) {
		sync_flags_free(&c->saves.items[i].f);
		stor_stamp_list_free(&c->saves.items[i].stamps);
	}
	for (size_t i = 0; i < c->flags.count; i++) {
		sync_flags_free(&c->flags.items[i].f);
		stor_stamp_list_free(&c->flags.items[i].stamps);
	}
	c->saves.count = c->flags.count = 0;
	c->exp_uids.count = c->fix_old.count = c->fix_new.count = 0;
	c->exp_user.count = 0;
	c->gone.count = 0;
	c->exp_after.count = 0;
	c->tombs.count = 0;
	c->utomb_guids.count = 0;
	c->utomb_built = false;
	c->resend.count = 0;
	stor_msg_list_free(&c->msgs);
	memset(&c->msgs, 0, sizeof(c->msgs));
	cl_new_group(c);
	select_again(c, &w);
	cl_cmd_begin(c, &w, "SYNC-BEGIN", K_BEGIN, 0);
	proto_wr_u64(&w, c->M);
	proto_wr_u64(&w, c->cm);
	proto_wr_u64(&w, c->L);
	proto_wr_u64(&w, c->cu);
	cl_cmd_end(c, &w);
	cl_wr_expunges(c, &exp, &uexp, uexp_g);
	for (size_t i = 0, k; i < fo.count; i += k) {
		k = proto_uidfix_run(fo.items + i, fn.items + i, fo.count - i, SYNC_MAX_UIDS_PER_LINE);
		cl_cmd_begin(c, &w, "UIDFIX", K_OTHER, 0);
		proto_wr_uidfix(&w, fo.items + i, fn.items + i, k);
		cl_cmd_end(c, &w);
	}
	ARRAY_FREE(&exp);
	ARRAY_FREE(&uexp);
	free(uexp_g);
	ARRAY_FREE(&fo);
	ARRAY_FREE(&fn);
	return 0;
}
