/* SYNC-END: the merge of the client's collected changes with ours and its
 * answer, as a job of bounded steps, so that a mailbox of any size never
 * holds the caller's event loop for long.  Here: the job (start, steps,
 * end), our own changes, the expunge and GONE lists, and the answer's
 * lines.  The decisions on the client's new messages and flag changes are
 * in sync-server-merge-client.c, the small lookups and writes both share
 * in sync-server-merge-util.c. */
#include "sync/sync-server-private.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#include "lib/log.h"
#include "lib/xalloc.h"

/* ---- The merge, in steps ----
 *
 * SYNC-END starts a job that merges the client's held changes with ours and
 * writes the answer; each sync_server_step() does at most s->budget
 * messages of it, so that a mailbox of any size never holds the caller's
 * event loop (or the link's keepalive) for long.
 *
 * L, M: the last common UIDNEXT and modseq; cu, cm and su, sm: the client's
 * and our current ones.  N = max(cm, sm) + 1 is the modseq of everything the
 * merge touches, on both sides, so that an IMAP client of either node that
 * saw HIGHESTMODSEQ cm or sm learns every change (QRESYNC).  UIDs in
 * [L, min(cu, su)) used on both sides for different messages are conflicts:
 * our messages there, then the client's, move to new UIDs from max(cu, su). */

static void merge_free(struct srv_merge *m)
{
	free(m->handled);
	free(m->dirty);
	stor_msg_list_free(&m->smsgs);
	ARRAY_FREE(&m->stombs);
	ARRAY_FREE(&m->sr);
	ARRAY_FREE(&m->exp_client);
	ARRAY_FREE(&m->flags_client);
	ARRAY_FREE(&m->save_client);
	ARRAY_FREE(&m->cexp_low);
	ARRAY_FREE(&m->uexp_client);
	ARRAY_FREE(&m->utombs);
	ARRAY_FREE(&m->save_guids);
	ARRAY_FREE(&m->gone_out);
	memset(m, 0, sizeof(*m));
}

void job_end(struct sync_server *s)
{
	merge_free(&s->merge);
	ARRAY_FREE(&s->fetch.uids);
	ARRAY_FREE(&s->fetch.missing);
	buf_free(&s->fetch.text);
	memset(&s->fetch, 0, sizeof(s->fetch));
	s->job = JOB_NONE;
}

/* Marks our scanned copy of uid as stale: the answer reads it again. */
void merge_mark_dirty(struct srv_merge *m, uint32_t uid)
{
	ssize_t i = find_msg(&m->smsgs, uid);
	if (i >= 0)
		m->dirty[i] = true;
}

/* SYNC-END: the first, cheap part of the merge.  Returns 0 (the job runs,
 * or the answer was NO), -1 on a storage error. */
int merge_start(struct sync_server *s, uint32_t id)
{
	const char *err;
	struct stor_mailbox mb;
	struct srv_merge *m = &s->merge;
	int r = stor_mailbox_get_by_guid(s->db, &s->sel, &mb, &err);
	if (r < 0)
		return srv_fail(s, "SYNC-END: %s", err);
	if (r == 0) {
		srv_sync_reset(s);
		srv_reply(s, id, "NO", "NONEXISTENT", "mailbox is gone");
		return 0;
	}
	memset(m, 0, sizeof(*m));
	m->id = id;
	m->M = s->last_modseq;
	m->cm = s->client_modseq;
	m->sm = mb.highestmodseq;
	m->L = s->last_uidnext;
	m->cu = s->client_uidnext;
	m->su = mb.uidnext;
	m->base = m->cm > m->sm ? m->cm : m->sm;
	m->N = m->base + 1;
	stor_mailbox_free(&mb);
	if (!mail_modseq_valid(m->N) || sync_pseen_srv_over_limit(s)) {
		/* The merge would need a modseq past the bound. */
		srv_sync_reset(s);
		srv_reply(s, id, "NO", "LIMIT", MAIL_LIMITS_TEXT);
		return 0;
	}
	if (s->saves.count > 0)
		qsort(s->saves.items, s->saves.count, sizeof(struct srv_save), cmp_save);
	uids_sort_unique(&s->expunges);
	sync_uexp_sort(&s->uexp);
	guids_sort(&s->uexp_guids);
	for (size_t i = 0; i < s->saves.count; i++)
		ARRAY_PUSH(&m->save_guids, s->saves.items[i].guid);
	guids_sort(&m->save_guids);
	for (size_t i = 0; i < s->expunges.count; i++) {
		if (s->expunges.items[i] < m->L)
			ARRAY_PUSH(&m->cexp_low, s->expunges.items[i]);
	}
	m->stage = MS_FIX;
	s->job = JOB_MERGE;
	return 0;
}

/* Our own change the client has not seen, smsgs[i]. */
static int merge_own(struct sync_server *s, size_t i, const char **err)
{
	struct srv_merge *m = &s->merge;
	struct stor_msg *msg = &m->smsgs.items[i];
	if (m->handled[i] || uid_in(&m->cexp_low, msg->uid))
		return 0;
	/* A user on the client expunged this GUID since the last sync (under
	 * any UID) and the client holds no copy it changed since: ours is one
	 * the expunge missed, and goes here too. */
	if (guid_in(&s->uexp_guids, &msg->guid) && !guid_in(&m->save_guids, &msg->guid)) {
		stor_uid_list done = ARRAY_INIT;
		uint32_t uid = msg->uid;
		struct guid g = msg->guid;
		merge_log_drop(s, uid, &g, "ours, a user on the client expunged it");
		if (stor_msg_expunge_kind(s->db, &s->sel, &uid, 1, m->N, true, &done, err) < 0)
			return -1;
		ARRAY_FREE(&done);
		m->dirty[i] = true;
		m->touched = true;
		uexp_push(m, uid, &g);
		return 0;
	}
	/* As it is now: a user here (or replication) may have changed it in a
	 * gap between the merge's steps since the scan.  Written back from
	 * the scan, the later change was undone here or, skipped as older,
	 * the client took the scan's state at a modseq that never changes
	 * again (lost there). */
	struct stor_msg cur;
	int r = stor_msg_get(s->db, &s->sel, msg->uid, &cur, err);
	if (r < 0)
		return -1;
	if (r == 0 || cur.modseq != msg->modseq)
		m->dirty[i] = true;
	if (r == 0)
		return 0; /* expunged meanwhile: the client learns it next time */
	/* Above everything the client had: its IMAP clients will see it as it
	 * is, so the modseq stays (a catch-up sync rewrites nothing here).
	 * Else it is raised to N. */
	if (cur.modseq <= m->cm) {
		r = set_flags(s, msg->uid, cur.flags, &cur.keywords, NULL, m->N, err);
		if (r == 0 && !m->dirty[i])
			msg->modseq = m->N; /* our copy stays exact: same flags */
		m->touched = true;
	}
	stor_msg_free(&cur);
	if (r < 0)
		return -1;
	if (msg->uid < m->L)
		ARRAY_PUSH(&m->flags_client, msg->uid);
	else
		ARRAY_PUSH(&m->save_client, msg->uid);
	return 0;
}

/* Expunges for the client (one modseq for all: the highest of our
 * tombstones if all are above cm, else N), then the new common state. */
static int merge_final(struct sync_server *s, const char **err)
{
	struct srv_merge *m = &s->merge;
	struct stor_mailbox mb;
	/* drops of client copies */
	bool exp_needs_n = m->exp_client.count > 0 || m->uexp_client.count > 0;
	for (size_t i = 0; i < m->stombs.count; i++) {
		const struct stor_tombstone *t = &m->stombs.items[i];
		if (t->uid < m->L && !uid_in(&m->cexp_low, t->uid)) {
			if (t->user)
				uexp_push(m, t->uid, &t->guid);
			else
				ARRAY_PUSH(&m->exp_client, t->uid);
			if (t->modseq <= m->cm)
				exp_needs_n = true;
			if (t->modseq > m->exp_modseq)
				m->exp_modseq = t->modseq;
		}
	}
	uids_sort_unique(&m->exp_client);
	sync_uexp_sort(&m->uexp_client);
	/* A UID named both ways is a user's expunge. */
	size_t keep = 0;
	for (size_t i = 0; i < m->exp_client.count; i++) {
		if (sync_uexp_find(&m->uexp_client, m->exp_client.items[i]) == NULL)
			m->exp_client.items[keep++] = m->exp_client.items[i];
	}
	m->exp_client.count = keep;
	uids_sort_unique(&m->save_client);
	uids_sort_unique(&m->flags_client);
	if (exp_needs_n) {
		m->exp_modseq = m->N;
		m->touched = true;
	}
	/* The client's GUID tombstones (GONE lines; its own users' expunges
	 * are among them) of GUIDs we do not hold now: remembered here, at N,
	 * so that they travel on to our other peers and a copy that reaches
	 * us later stays out (SPEC.md 10.3 "GUID tombstones").  Those lines
	 * are bounded, where the GUIDs of EXPUNGE lines are not. */
	if (s->gone_in.count > 0) {
		size_t added;
		if (stor_guid_tombs_add(s->db, &s->sel, s->gone_in.items, s->gone_in.count, m->N,
					&added, err) < 0)
			return -1;
		if (added > 0)
			m->touched = true;
	}
	/* Ours the client may lack go as GONE lines, which the client
	 * records at the new common modseq: N, so that they are above the
	 * last sync of the client with its other peers. */
	size_t gone_keep = 0;
	for (size_t i = 0; i < m->gone_out.count; i++) {
		uint32_t at;
		int r = stor_msg_find_guid(s->db, &s->sel, &m->gone_out.items[i], &at, err);
		if (r < 0)
			return -1;
		if (r == 0)
			m->gone_out.items[gone_keep++] = m->gone_out.items[i];
	}
	m->gone_out.count = gone_keep;
	if (m->gone_out.count > 0)
		m->touched = true;
	merge_log_drops_end(s);
	if (sync_pseen_srv_merge(s, err) < 0)
		return -1;
	uint64_t final_modseq = m->touched ? m->N : m->base;
	if (stor_mailbox_raise(s->db, &s->sel, m->next, final_modseq, err) < 0)
		return -1;
	int r = stor_mailbox_get_by_guid(s->db, &s->sel, &mb, err);
	if (r <= 0) {
		if (r == 0)
			*err = "the mailbox vanished";
		return -1;
	}
	m->final_uidnext = mb.uidnext;
	m->final_modseq = mb.highestmodseq;
	stor_mailbox_free(&mb);
	wr_uid_lines(s, m->id, "EXPUNGE", &m->exp_client, m->exp_modseq);
	wr_uexp_lines(s, m->id, m->uexp_client.items, m->uexp_client.count, m->exp_modseq);
	struct proto_wr w;
	proto_wr_init(&w, &s->out);
	for (size_t i = 0; i < m->gone_out.count; i += SYNC_MAX_GONE_PER_LINE) {
		size_t n = m->gone_out.count - i;
		if (n > SYNC_MAX_GONE_PER_LINE)
			n = SYNC_MAX_GONE_PER_LINE;
		srv_line_begin(s, &w, m->id, "GONE");
		sync_wr_user_guids(&w, m->gone_out.items + i, n);
		proto_wr_end(&w);
	}
	return 0;
}

/* The message of an answer line: our scanned copy when it is still exact,
 * else read again.  1 found (*msg_r points to *tmp or into smsgs; free
 * *tmp when *free_r), 0 gone, -1 error. */
static int merge_msg(struct sync_server *s, uint32_t uid, const struct stor_msg **msg_r,
		     struct stor_msg *tmp, bool *free_r, const char **err)
{
	struct srv_merge *m = &s->merge;
	ssize_t i = find_msg(&m->smsgs, uid);
	*free_r = false;
	if (i >= 0 && !m->dirty[i]) {
		*msg_r = &m->smsgs.items[i];
		return 1;
	}
	int r = stor_msg_get(s->db, &s->sel, uid, tmp, err);
	if (r > 0) {
		*msg_r = tmp;
		*free_r = true;
	}
	return r;
}

static int merge_write_line(struct sync_server *s, uint32_t uid, bool save, const char **err)
{
	const struct stor_msg *msg;
	struct stor_msg tmp;
	bool need_free;
	struct proto_wr w;
	int r = merge_msg(s, uid, &msg, &tmp, &need_free, err);
	if (r <= 0)
		return r;
	proto_wr_init(&w, &s->out);
	if (save) {
		struct proto_save sv;
		sync_save_of_msg(&sv, msg);
		srv_line_begin(s, &w, s->merge.id, "SAVE");
		proto_wr_save(&w, &sv);
	} else {
		struct proto_flags_line fl = {
			msg->uid, msg->modseq,
			{ msg->flags,
			  { msg->keywords.items, msg->keywords.count, msg->keywords.cap } },
		};
		srv_line_begin(s, &w, s->merge.id, "FLAGS");
		proto_wr_flags_line(&w, &fl);
	}
	sync_wr_stamps(&w, &msg->stamps);
	proto_wr_end(&w);
	if (need_free)
		stor_msg_free(&tmp);
	return 0;
}

static void merge_write_end(struct sync_server *s)
{
	struct srv_merge *m = &s->merge;
	struct proto_wr w;
	stor_uid_list fix_old = ARRAY_INIT, fix_new = ARRAY_INIT;
	for (size_t i = 0; i < s->saves.count; i++) {
		if (s->saves.items[i].action == SAVE_RENUMBER) {
			ARRAY_PUSH(&fix_old, s->saves.items[i].uid);
			ARRAY_PUSH(&fix_new, s->saves.items[i].new_uid);
		}
	}
	sync_pseen_srv_write(s, m->id);
	proto_wr_init(&w, &s->out);
	for (size_t i = 0; i < fix_old.count; i += SYNC_MAX_UIDS_PER_LINE) {
		size_t n = fix_old.count - i;
		if (n > SYNC_MAX_UIDS_PER_LINE)
			n = SYNC_MAX_UIDS_PER_LINE;
		srv_line_begin(s, &w, m->id, "UIDFIX");
		proto_wr_uidset(&w, fix_old.items + i, n);
		proto_wr_uidset(&w, fix_new.items + i, n);
		proto_wr_end(&w);
	}
	ARRAY_FREE(&fix_old);
	ARRAY_FREE(&fix_new);
	char code[128];
	snprintf(code, sizeof(code), "UIDNEXT %u HIGHESTMODSEQ %" PRIu64, m->final_uidnext,
		 m->final_modseq);
	srv_status(s, m->id, "OK", code, "synced");
}

/* One step of the merge: at most s->budget messages.  Returns 0 (the job
 * may have ended), or -1 on a storage error (the job is dropped). */
int merge_step(struct sync_server *s)
{
	struct srv_merge *m = &s->merge;
	const char *err = NULL;
	unsigned n = 0;
	while (n < s->budget && s->job == JOB_MERGE) {
		switch (m->stage) {
		case MS_FIX:
			if (m->pos < s->fix_old.count) {
				if (stor_msg_renumber(s->db, &s->sel, s->fix_old.items[m->pos],
						      s->fix_new.items[m->pos], m->N, &err) < 0) {
					char what[64];
					snprintf(what, sizeof(what), "UIDFIX %u -> %u",
						 s->fix_old.items[m->pos], s->fix_new.items[m->pos]);
					job_end(s);
					srv_sync_reset(s);
					return srv_fail(s, "%s: %s", what, err);
				}
				m->touched = true;
				m->pos++;
				n++;
				break;
			}
			if (stor_changes_since(s->db, &s->sel, m->M, &m->smsgs, &m->stombs, &err) < 0)
				goto storage_error;
			s->examined += (unsigned)(m->smsgs.count + m->stombs.count);
			for (size_t i = 0; i < m->stombs.count; i++) {
				if (m->stombs.items[i].user)
					ARRAY_PUSH(&m->utombs, m->stombs.items[i].guid);
			}
			guids_sort(&m->utombs);
			/* Before this merge adds the client's: those go back
			 * to the client only as EXPUNGE lines. */
			if (sync_gone_since(s->db, &s->sel, m->M, &m->gone_out, &err) < 0)
				goto storage_error;
			m->handled = xcalloc(m->smsgs.count + 1, sizeof(bool));
			m->dirty = xcalloc(m->smsgs.count + 1, sizeof(bool));
			/* The scan costs about as much as a step's messages. */
			n += s->budget / 2;
			m->stage = MS_CLASSIFY;
			m->pos = 0;
			break;
		case MS_CLASSIFY:
			if (m->pos < s->saves.count) {
				if (merge_classify(s, &s->saves.items[m->pos], &err) < 0)
					goto storage_error;
				m->pos++;
				n++;
				break;
			}
			/* A client tombstone where we hold a message is not
			 * judged here: the tombstone's GUID is not sent, and it
			 * often names our very message (replicated after the
			 * last sync, expunged since).  Our message goes to the
			 * client as a SAVE line; the client answers in a second
			 * sync with EXPUNGE (same GUID: its expunge wins) or
			 * UIDFIX (another message, moved to a fresh UID on both
			 * sides).  New UIDs: ours first, then the client's. */
			uids_sort_unique(&m->sr);
			/* From max(cu, su), and above every UID the client
			 * named: a message that reached the client between
			 * its SYNC-BEGIN and the scan of its changes comes at
			 * or above cu.  A conflict moved to such a UID met the
			 * client's message there: the client was told to move
			 * its copy away and then to store ours at the UID it
			 * had just left, which it cannot. */
			uint64_t first = m->cu > m->su ? m->cu : m->su;
			if (s->saves.count > 0 && s->saves.items[s->saves.count - 1].uid >= first)
				first = (uint64_t)s->saves.items[s->saves.count - 1].uid + 1;
			uint64_t next = first + m->sr.count;
			for (size_t i = 0; i < s->saves.count; i++) {
				if (s->saves.items[i].action == SAVE_RENUMBER)
					next++;
			}
			/* Refused before this merge renumbers anything: the
			 * UIDs that conflicts move to must all be in bounds. */
			if (!mail_uidnext_valid(next))
				goto out_of_uids;
			m->first = (uint32_t)first;
			m->next = m->first + (uint32_t)m->sr.count;
			for (size_t i = 0; i < s->saves.count; i++) {
				if (s->saves.items[i].action == SAVE_RENUMBER)
					s->saves.items[i].new_uid = m->next++;
			}
			m->stage = MS_RENUMBER;
			m->pos = 0;
			break;
		case MS_RENUMBER:
			if (m->pos < m->sr.count) {
				uint32_t nu = m->first + (uint32_t)m->pos;
				if (stor_msg_renumber(s->db, &s->sel, m->sr.items[m->pos], nu, m->N,
						      &err) < 0)
					goto storage_error;
				merge_mark_dirty(m, m->sr.items[m->pos]);
				ARRAY_PUSH(&m->save_client, nu);
				m->touched = true;
				m->pos++;
				n++;
				break;
			}
			/* The client's new messages before its expunges: a message
			 * it moved to a new UID keeps the text its old UID holds
			 * here (SAVE ... NIL). */
			m->stage = MS_SAVES;
			m->pos = 0;
			break;
		case MS_EXPUNGE:
			if (m->pos < m->cexp_low.count) {
				size_t k = m->cexp_low.count - m->pos;
				if (k > SYNC_MAX_UIDS_PER_LINE)
					k = SYNC_MAX_UIDS_PER_LINE;
				stor_uid_list done = ARRAY_INIT;
				if (sync_expunge(s->db, &s->sel, m->cexp_low.items + m->pos, k, &s->uexp,
						 m->N, &done, &err) < 0) {
					ARRAY_FREE(&done);
					goto storage_error;
				}
				if (done.count > 0)
					m->touched = true;
				ARRAY_FREE(&done);
				for (size_t i = 0; i < k; i++)
					merge_mark_dirty(m, m->cexp_low.items[m->pos + i]);
				m->pos += k;
				n += (unsigned)(k / 8 + 1);
				break;
			}
			m->stage = MS_STORES;
			m->pos = 0;
			break;
		case MS_SAVES:
			if (m->pos < s->saves.count) {
				int r = merge_apply_save(s, &s->saves.items[m->pos], &err);
				if (r == -2)
					goto out_of_uids;
				if (r < 0)
					goto storage_error;
				m->pos++;
				n++;
				break;
			}
			m->stage = MS_EXPUNGE;
			m->pos = 0;
			break;
		case MS_STORES:
			if (m->pos < s->stores.count) {
				if (merge_apply_store(s, &s->stores.items[m->pos], &err) < 0)
					goto storage_error;
				m->pos++;
				n++;
				break;
			}
			m->stage = MS_OWN;
			m->pos = 0;
			break;
		case MS_OWN:
			if (m->pos < m->smsgs.count) {
				if (merge_own(s, m->pos, &err) < 0)
					goto storage_error;
				m->pos++;
				n++;
				break;
			}
			if (merge_final(s, &err) < 0)
				goto storage_error;
			m->stage = MS_WR_SAVE;
			m->pos = 0;
			n++;
			break;
		case MS_WR_SAVE:
		case MS_WR_FLAGS: {
			bool save = m->stage == MS_WR_SAVE;
			const stor_uid_list *l = save ? &m->save_client : &m->flags_client;
			if (m->pos < l->count) {
				if (merge_write_line(s, l->items[m->pos], save, &err) < 0)
					goto storage_error;
				m->pos++;
				n++;
				break;
			}
			m->stage = save ? MS_WR_FLAGS : MS_WR_END;
			m->pos = 0;
			break;
		}
		case MS_WR_END:
			merge_write_end(s);
			s->text_refs.count = 0;
			for (size_t i = 0; i < m->smsgs.count; i++) {
				if (m->dirty[i])
					continue; /* moved or expunged since the scan */
				struct srv_text_ref ref = { m->smsgs.items[i].uid, m->smsgs.items[i].guid,
							    m->smsgs.items[i].size };
				ARRAY_PUSH(&s->text_refs, ref);
			}
			job_end(s);
			srv_sync_reset(s);
			break;
		}
	}
	srv_flush(s);
	return 0;
out_of_uids: {
	/* Conflicts need fresh UIDs past the bound: refused, as any value
	 * past it.  The client's UIDFIXes applied so far stay, as after any
	 * failed sync (SPEC 10.6). */
	uint32_t id = m->id;
	job_end(s);
	srv_sync_reset(s);
	srv_reply(s, id, "NO", "LIMIT", "no UIDs left to renumber conflicting messages to");
	return 0;
}
storage_error:
	srv_flush(s);
	job_end(s);
	srv_sync_reset(s);
	return srv_fail(s, "SYNC-END: %s", err);
}
