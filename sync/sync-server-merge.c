/* SYNC-END: the merge of the client's collected changes with ours and its
 * answer, as a job of bounded steps, so that a mailbox of any size never
 * holds the caller's event loop for long. */
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
static void merge_mark_dirty(struct srv_merge *m, uint32_t uid)
{
	ssize_t i = find_msg(&m->smsgs, uid);
	if (i >= 0)
		m->dirty[i] = true;
}

/* SYNC-END: the first, cheap part of the merge.  Returns 0 (the job runs,
 * or the answer was NO), -1 on a storage error. */
int merge_start(struct sync_server *s, const char *tag)
{
	const char *err;
	struct stor_mailbox mb;
	struct srv_merge *m = &s->merge;
	int r = stor_mailbox_get_by_guid(s->db, &s->sel, &mb, &err);
	if (r < 0)
		return srv_fail(s, "SYNC-END: %s", err);
	if (r == 0) {
		srv_sync_reset(s);
		srv_reply(s, tag, "NO", "NONEXISTENT", "mailbox is gone");
		return 0;
	}
	memset(m, 0, sizeof(*m));
	snprintf(m->tag, sizeof(m->tag), "%s", tag);
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
		srv_reply(s, tag, "NO", "LIMIT", MAIL_LIMITS_TEXT);
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

/* The client drops its copy of cs and takes ours at `at` (the same GUID). */
static void take_ours(struct sync_server *s, struct srv_save *cs, uint32_t at)
{
	struct srv_merge *m = &s->merge;
	merge_log_drop(s, cs->uid, &cs->guid, "the client's, ours is at UID %u", at);
	cs->action = SAVE_DROP;
	cs->drop_into = at;
	ARRAY_PUSH(&m->exp_client, cs->uid);
	ARRAY_PUSH(&m->save_client, at);
	ssize_t oi = find_msg(&m->smsgs, at);
	if (oi >= 0)
		m->handled[oi] = true;
}

/* Classifies one of the client's new messages. */
static int merge_classify(struct sync_server *s, struct srv_save *cs, const char **err)
{
	struct srv_merge *m = &s->merge;
	ssize_t si = find_msg(&m->smsgs, cs->uid);
	struct stor_msg other;
	bool have_other = false;
	int r;
	/* Also at or above L: a message we hold there may be below M (a
	 * replica keeps its master's modseq, and syncs between replicas
	 * spend modseqs above the master's), so smsgs lacks it.  Taken for
	 * absent, the same message at the same UID looked like ours "at
	 * another UID", and the client was told to drop its only copy. */
	if (si < 0) {
		r = stor_msg_get(s->db, &s->sel, cs->uid, &other, err);
		if (r < 0)
			return -1;
		have_other = r > 0;
	}
	const struct stor_msg *sme = si >= 0 ? &m->smsgs.items[si] : have_other ? &other : NULL;
	ssize_t ti = find_tomb(&m->stombs, cs->uid);
	cs->action = SAVE_APPEND;
	/* Where the UID holds something else here, the client's message may
	 * still be here under another UID: a third node's sync renumbered it
	 * already.  Then the client takes our copy instead of a second one. */
	uint32_t elsewhere = 0;
	if ((sme != NULL && guid_cmp(&sme->guid, &cs->guid) != 0) ||
	    (sme == NULL && ti >= 0 && guid_cmp(&m->stombs.items[ti].guid, &cs->guid) != 0)) {
		if (held_elsewhere(s, cs, &elsewhere, err) < 0) {
			if (have_other)
				stor_msg_free(&other);
			return -1;
		}
	}
	/* A user here expunged this GUID since the last sync, under any UID,
	 * and no copy of it is left here: the client's copy is one that the
	 * expunge missed (a sync with a third node renumbered it), and goes
	 * as a user's expunge (SPEC 10.3, "A user's expunge"). */
	bool same_here = (sme != NULL && guid_cmp(&sme->guid, &cs->guid) == 0) ||
			 (sme == NULL && ti >= 0 && guid_cmp(&m->stombs.items[ti].guid, &cs->guid) == 0);
	/* The same for a user's expunge of this GUID that we know by GUID
	 * only, whenever it was made: ours, or one a sync brought from a
	 * node that held the message while we never did.  The client's
	 * copy came from a node the expunge had not reached. */
	int gone = 0;
	if (!same_here && !guid_in(&m->utombs, &cs->guid)) {
		gone = stor_guid_tomb_get(s->db, &s->sel, &cs->guid, NULL, err);
		if (gone < 0) {
			if (have_other)
				stor_msg_free(&other);
			return -1;
		}
	}
	if (!same_here && (gone > 0 || guid_in(&m->utombs, &cs->guid))) {
		uint32_t at;
		r = stor_msg_find_guid(s->db, &s->sel, &cs->guid, &at, err);
		if (r < 0) {
			if (have_other)
				stor_msg_free(&other);
			return -1;
		}
		if (r == 0) {
			merge_log_drop(s, cs->uid, &cs->guid,
				       "the client's, a user expunged it here at another UID");
			cs->action = SAVE_DROP;
			uexp_push(m, cs->uid, &cs->guid);
			if (sme != NULL) {
				/* Ours at this UID still moves, as below. */
				ARRAY_PUSH(&m->sr, cs->uid);
				if (si >= 0)
					m->handled[si] = true;
			}
			if (have_other)
				stor_msg_free(&other);
			return 0;
		}
	}
	if (sme != NULL) {
		if (guid_cmp(&sme->guid, &cs->guid) == 0) {
			cs->action = SAVE_MERGE;
		} else if (elsewhere != 0) {
			/* Ours at this UID still moves (the client saw the UID
			 * name its own message); the client's copy goes. */
			ARRAY_PUSH(&m->sr, cs->uid);
			take_ours(s, cs, elsewhere);
		} else {
			ARRAY_PUSH(&m->sr, cs->uid);
			cs->action = SAVE_RENUMBER;
		}
		if (si >= 0)
			m->handled[si] = true;
	} else if (ti >= 0) {
		const struct stor_tombstone *t = &m->stombs.items[ti];
		bool same = guid_cmp(&t->guid, &cs->guid) == 0;
		uint32_t moved_to = 0;
		int user_gone = 0;
		if (same && !t->user) {
			/* Our engine's tombstone of this very message: we
			 * moved it (a UID conflict with a third node) when it
			 * lives on at another UID here. */
			if (held_elsewhere(s, cs, &moved_to, err) < 0) {
				if (have_other)
					stor_msg_free(&other);
				return -1;
			}
			/* None found also when our only copy is at a UID the
			 * client's engine moved it away from (each side holds
			 * it where the other left it): that copy goes as the
			 * client's move (acked-append-present 11161, 11177).
			 * Else only a user's expunge of it (the client's in
			 * this sync, ours under the UID it moved to, or one
			 * known by GUID) says it is gone. */
			if (moved_to == 0 && (guid_in(&s->uexp_guids, &cs->guid) ||
					      guid_in(&m->utombs, &cs->guid)))
				user_gone = 1;
			else if (moved_to == 0)
				user_gone = stor_guid_tomb_get(s->db, &s->sel, &cs->guid, NULL, err);
			if (user_gone < 0) {
				if (have_other)
					stor_msg_free(&other);
				return -1;
			}
		}
		if (moved_to != 0) {
			take_ours(s, cs, moved_to);
		} else if (same && (t->user || user_gone > 0)) {
			/* A user expunged it: the expunge wins. */
			merge_log_drop(s, cs->uid, &cs->guid, "the client's, a user expunged it here");
			cs->action = SAVE_DROP;
			uexp_push(m, cs->uid, &cs->guid);
		} else if (same) {
			/* The engine's tombstone and no copy here: it moved a
			 * copy on or dropped one for another's, never removed
			 * the message, and the copy it kept is gone too (that
			 * copy's own merge took the client's here for it, or
			 * the client moved it away from there in this sync).
			 * The client's copy may be the last one anywhere: it
			 * stays, at a fresh UID, since our IMAP clients saw
			 * this UID vanish.  Dropped ("we expunged it"), the
			 * message was lost on every node (fault campaign,
			 * acked-append-present all classes 9737). */
			char mbh[GUID_HEX_SIZE], gh[GUID_HEX_SIZE];
			guid_to_hex(&s->sel, mbh);
			guid_to_hex(&cs->guid, gh);
			log_info("sync server (peer %u): mailbox %s: UID %u GUID %s: the client's copy "
				 "is kept at a new UID (our tombstone there is the engine's, no copy "
				 "here)", s->peer, mbh, cs->uid, gh);
			cs->action = SAVE_RENUMBER;
		} else if (elsewhere != 0) {
			take_ours(s, cs, elsewhere);
		} else {
			cs->action = SAVE_RENUMBER;
		}
	} else {
		uint32_t at;
		r = stor_msg_find_guid(s->db, &s->sel, &cs->guid, &at, err);
		if (r < 0) {
			if (have_other)
				stor_msg_free(&other);
			return -1;
		}
		if (r > 0 && !client_moved_from(s, at, &cs->guid)) {
			/* The same message under another UID here: the client
			 * drops its copy and takes ours.  (Not when the client
			 * expunged ours: it moved the message.) */
			take_ours(s, cs, at);
		}
	}
	if (have_other)
		stor_msg_free(&other);
	return 0;
}

/* The modseq at which the merge writes its decision on a message whose
 * modseq is cur: N, unless a writer (an IMAP change here, replication)
 * gave the message N or more since the merge began, in one of the gaps
 * between its steps.  Written at N, the decision was then skipped as older
 * than the message's change (stor_msg_store), and the client's change was
 * lost on both sides.  Then one above our HIGHESTMODSEQ: the decision
 * merged that writer's change (it read the message in this step).
 * same_ok: N on a message this merge itself gave N (it moved it). */
static int merge_write_modseq(struct sync_server *s, uint64_t cur, bool same_ok,
			      uint64_t *modseq_r, const char **err)
{
	struct srv_merge *m = &s->merge;
	*modseq_r = m->N;
	if (cur < m->N || (same_ok && cur == m->N))
		return 0;
	struct stor_mailbox mb;
	int r = stor_mailbox_get_by_guid(s->db, &s->sel, &mb, err);
	if (r <= 0) {
		if (r == 0)
			*err = "the mailbox vanished";
		return -1;
	}
	*modseq_r = mb.highestmodseq + 1;
	stor_mailbox_free(&mb);
	if (!mail_modseq_valid(*modseq_r)) {
		*err = "no modseq left for the merge";
		return -1;
	}
	return 0;
}

/* The client's flags (f, stamps) of message g merge flag by flag into our
 * copy wherever it is now; *at_r (may be NULL) gets its UID, 0 when we
 * hold none.  1 when our copy changed, 0 when not, -1 on error. */
static int merge_flags_guid(struct sync_server *s, const struct guid *g,
			    const struct sync_flags *f, const stor_stamp_list *stamps,
			    uint32_t *at_r, const char **err)
{
	struct srv_merge *m = &s->merge;
	struct stor_msg cur;
	uint32_t at = 0;
	if (at_r != NULL)
		*at_r = 0;
	/* Where the message is now: this merge may have moved ours on (a UID
	 * conflict with one of the client's). */
	int r = stor_msg_find_guid(s->db, &s->sel, g, &at, err);
	if (r > 0)
		r = stor_msg_get(s->db, &s->sel, at, &cur, err);
	if (r <= 0)
		return r;
	if (at_r != NULL)
		*at_r = at;
	bool changed = false;
	struct flag_merge fm;
	flag_merge_run(&cur, f->flags, &f->keywords, stamps, m->M, &fm);
	uint64_t ms;
	if (!sync_flags_equal(cur.flags, &cur.keywords, fm.flags, &fm.keywords) &&
	    (r = merge_write_modseq(s, cur.modseq, true, &ms, err)) == 0) {
		/* A message this merge moved already has N: the flags still
		 * change at N (not above it), so the answer stays exact. */
		struct stor_store req = {
			.op = STOR_FLAGS_REPLACE, .flags = fm.flags,
			.keywords = (const char *const *)fm.keywords.items,
			.keyword_count = fm.keywords.count, .modseq = ms,
			.stamps = fm.times.items, .stamp_count = fm.times.count,
			.same_modseq = true,
		};
		r = stor_msg_store(s->db, &s->sel, &at, 1, &req, NULL, NULL, err);
		merge_mark_dirty(m, at);
		m->touched = true;
		changed = true;
	}
	flag_merge_free(&fm);
	stor_msg_free(&cur);
	return r < 0 ? -1 : changed ? 1 : 0;
}

/* The client drops its copy cs of a message we hold at another UID (a
 * sync with a third node moved ours there) and takes ours: the flag
 * changes on its copy are still the user's, so they merge flag by flag
 * into ours first (SPEC.md 10.3 "Flags").  Taking ours as it was lost
 * every change made on the client's side since the move. */
static int merge_flags_into(struct sync_server *s, const struct srv_save *cs, const char **err)
{
	return merge_flags_guid(s, &cs->guid, &cs->f, &cs->stamps, NULL, err) < 0 ? -1 : 0;
}

/* A message that both copies hold with the same flags, at different
 * modseqs or the same: one change that reached both sides (replication,
 * or a sync with a third node), not a conflict.  No IMAP client of either
 * side has anything to learn, so the merge's N is not spent on it: both
 * copies take the higher modseq with its stamps.  Spending N here made
 * every pair of three nodes differ from the third again, and resyncs after
 * a heal went round until their bound. */
static int take_higher_modseq(struct sync_server *s, const struct stor_msg *cur, uint32_t cflags,
			      const stor_string_list *ckws, const stor_stamp_list *cstamps,
			      uint64_t cmodseq, const char **err)
{
	struct srv_merge *m = &s->merge;
	if (cmodseq > cur->modseq) {
		if (set_flags(s, cur->uid, cflags, ckws, cstamps, cmodseq, err) < 0)
			return -1;
		merge_mark_dirty(m, cur->uid);
	} else if (cmodseq < cur->modseq) {
		ARRAY_PUSH(&m->flags_client, cur->uid);
	}
	return 0;
}

/* Applies one of the client's new messages as classified.  -2: no UID
 * is left to renumber it to. */
static int merge_apply_save(struct sync_server *s, struct srv_save *cs, const char **err)
{
	struct srv_merge *m = &s->merge;
	int r;
	if (cs->action == SAVE_DROP)
		return cs->drop_into == 0 ? 0 : merge_flags_into(s, cs, err);
	if (cs->action == SAVE_MERGE) {
		struct stor_msg cur;
		r = stor_msg_get(s->db, &s->sel, cs->uid, &cur, err);
		if (r <= 0)
			return r;
		if (sync_flags_equal(cur.flags, &cur.keywords, cs->f.flags, &cs->f.keywords)) {
			r = take_higher_modseq(s, &cur, cs->f.flags, &cs->f.keywords, &cs->stamps,
					       cs->modseq, err);
		} else {
			/* One message on both sides, new since M on one of them
			 * at least: its flags merge flag by flag. */
			struct flag_merge fm;
			uint64_t ms;
			flag_merge_run(&cur, cs->f.flags, &cs->f.keywords, &cs->stamps, m->M, &fm);
			r = merge_write_modseq(s, cur.modseq, false, &ms, err);
			if (r == 0)
				r = set_flags(s, cs->uid, fm.flags, &fm.keywords, &fm.times, ms, err);
			flag_merge_free(&fm);
			ARRAY_PUSH(&m->flags_client, cs->uid);
			merge_mark_dirty(m, cs->uid);
			m->touched = true;
		}
		stor_msg_free(&cur);
		return r < 0 ? -1 : 0;
	}
	/* The merge runs in steps: replication or another sync may have
	 * brought this message, or another one to its UID, since it was
	 * classified.  Judged again here, in the step that appends, so the
	 * GUID never lands twice and a UID never names two messages. */
	uint32_t at;
	r = stor_msg_find_guid(s->db, &s->sel, &cs->guid, &at, err);
	if (r < 0)
		return -1;
	if (r > 0 && at == cs->uid && cs->action == SAVE_APPEND) {
		/* It came to the client's own UID: one message on both
		 * sides.  Taking ours "there" would make the client expunge
		 * its only copy at that UID. */
		cs->action = SAVE_MERGE;
		return merge_apply_save(s, cs, err);
	}
	if (r > 0 && !client_moved_from(s, at, &cs->guid)) {
		take_ours(s, cs, at);
		merge_mark_dirty(m, at);
		return merge_flags_into(s, cs, err);
	}
	/* The client moved the message from `at` (a sync with a third node
	 * renumbered it): its copy lands here and ours at `at` goes with the
	 * client's expunges.  Ours may hold flag changes the client never saw
	 * (made here since the move): they merge flag by flag into the copy
	 * that stays, which the client then takes. */
	struct flag_merge fm;
	bool merged = false;
	if (r > 0) {
		struct stor_msg ours;
		r = stor_msg_get(s->db, &s->sel, at, &ours, err);
		if (r < 0)
			return -1;
		if (r > 0) {
			flag_merge_run(&ours, cs->f.flags, &cs->f.keywords, &cs->stamps, m->M, &fm);
			merged = !sync_flags_equal(fm.flags, &fm.keywords, cs->f.flags,
						   &cs->f.keywords);
			if (!merged)
				flag_merge_free(&fm);
			stor_msg_free(&ours);
		}
	}
	if (cs->action == SAVE_APPEND) {
		struct stor_msg other;
		r = stor_msg_get(s->db, &s->sel, cs->uid, &other, err);
		if (r < 0)
			return -1;
		if (r > 0) {
			stor_msg_free(&other);
			if (!mail_uid_valid(m->next))
				return -2;
			cs->action = SAVE_RENUMBER;
			cs->new_uid = m->next++;
		}
	}
	/* A client message new here keeps its modseq when that is above
	 * everything we had; else it gets N and the client is told. */
	bool keep = cs->action == SAVE_APPEND && cs->modseq > m->sm && !merged;
	struct stor_append req = {
		.uid = cs->action == SAVE_RENUMBER ? cs->new_uid : cs->uid,
		.modseq = keep ? cs->modseq : m->N, .guid = &cs->guid, .flags = cs->f.flags,
		.keywords = (const char *const *)cs->f.keywords.items,
		.keyword_count = cs->f.keywords.count,
		.internaldate = cs->date, .internaldate_tz = cs->tz,
		.stamps_given = true, .stamps = cs->stamps.items, .stamp_count = cs->stamps.count,
	};
	if (merged) {
		req.flags = fm.flags;
		req.keywords = (const char *const *)fm.keywords.items;
		req.keyword_count = fm.keywords.count;
		req.stamps = fm.times.items;
		req.stamp_count = fm.times.count;
	}
	r = stor_msg_append(s->db, &s->sel, &req, NULL, NULL, err);
	if (merged)
		flag_merge_free(&fm);
	if (r < 0)
		return -1;
	if (cs->action == SAVE_APPEND && !keep)
		ARRAY_PUSH(&m->flags_client, cs->uid);
	if (!keep)
		m->touched = true;
	return 0;
}

/* Our copy at uid, as it is, at the merge's N: a change the client takes. */
static int set_flags_here(struct sync_server *s, uint32_t uid, const char **err)
{
	struct stor_msg cur;
	int r = stor_msg_get(s->db, &s->sel, uid, &cur, err);
	if (r <= 0)
		return r;
	r = set_flags(s, uid, cur.flags, &cur.keywords, NULL, s->merge.N, err);
	stor_msg_free(&cur);
	s->merge.touched = true;
	return r < 0 ? -1 : 0;
}

/* A flag change of the client at a UID below L where we hold no message
 * now.  Both sides held one message there at the last sync, so when our
 * tombstone there is the sync engine's (a sync with a third node moved
 * the message to another UID, a UID conflict) and the message lives on
 * here, the change is the user's change of that message: it merges flag by
 * flag into our copy, which the client takes (our tombstone's EXPUNGE line
 * drops its copy at the old UID).  Dropped as "expunged here", the change
 * was lost on both sides (the fault campaign's flag-holds, all classes
 * 9206).  A user's expunge wins, as ever. */
static int merge_store_follows_move(struct sync_server *s, const struct srv_store *st,
				    const char **err)
{
	struct srv_merge *m = &s->merge;
	ssize_t ti = find_tomb(&m->stombs, st->uid);
	if (ti < 0 || m->stombs.items[ti].user)
		return 0;
	struct guid g = m->stombs.items[ti].guid;
	uint32_t at;
	int r = merge_flags_guid(s, &g, &st->f, &st->stamps, &at, err);
	if (r < 0)
		return -1;
	if (at == 0 || find_msg(&m->smsgs, at) >= 0)
		return 0; /* gone, or ours since M: merge_own() sends it */
	/* Ours from before M (not expected: the move left a tombstone above
	 * M) still goes to the client at its UID. */
	if (r == 0 && set_flags_here(s, at, err) < 0)
		return -1;
	ARRAY_PUSH(at >= m->L ? &m->save_client : &m->flags_client, at);
	return 0;
}

/* Applies one of the client's flag changes. */
static int merge_apply_store(struct sync_server *s, const struct srv_store *st, const char **err)
{
	struct srv_merge *m = &s->merge;
	struct stor_msg cur;
	if (uid_in(&m->cexp_low, st->uid))
		return 0;
	int r = stor_msg_get(s->db, &s->sel, st->uid, &cur, err);
	if (r == 0)
		return merge_store_follows_move(s, st, err);
	if (r < 0)
		return r; /* (expunged here: the EXPUNGE line tells the client) */
	bool both = cur.modseq > m->M;
	if (both && sync_flags_equal(cur.flags, &cur.keywords, st->f.flags, &st->f.keywords)) {
		r = take_higher_modseq(s, &cur, st->f.flags, &st->f.keywords, &st->stamps,
				       st->modseq, err);
		stor_msg_free(&cur);
		ssize_t hi = find_msg(&m->smsgs, st->uid);
		if (hi >= 0) {
			m->handled[hi] = true;
			m->dirty[hi] = true;
		}
		return r;
	}
	/* Changed on the client only: its modseq, when above all of ours, is
	 * kept and the client needs no line. */
	bool keep = !both && st->modseq > m->sm;
	uint64_t ms = st->modseq;
	if (!keep && merge_write_modseq(s, cur.modseq, false, &ms, err) < 0) {
		stor_msg_free(&cur);
		return -1;
	}
	if (both) {
		struct flag_merge fm;
		flag_merge_run(&cur, st->f.flags, &st->f.keywords, &st->stamps, m->M, &fm);
		r = set_flags(s, st->uid, fm.flags, &fm.keywords, &fm.times, ms, err);
		flag_merge_free(&fm);
	} else {
		r = set_flags(s, st->uid, st->f.flags, &st->f.keywords, &st->stamps, ms, err);
	}
	stor_msg_free(&cur);
	if (r < 0)
		return -1;
	ssize_t si = find_msg(&m->smsgs, st->uid);
	if (si >= 0) {
		m->handled[si] = true;
		m->dirty[si] = true;
	}
	if (!keep) {
		ARRAY_PUSH(&m->flags_client, st->uid);
		m->touched = true;
	}
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
	wr_uid_lines(s, m->tag, "EXPUNGE", &m->exp_client, m->exp_modseq);
	wr_uexp_lines(s, m->tag, m->uexp_client.items, m->uexp_client.count, m->exp_modseq);
	struct proto_wr w;
	proto_wr_init(&w, &s->out);
	for (size_t i = 0; i < m->gone_out.count; i += SYNC_MAX_GONE_PER_LINE) {
		size_t n = m->gone_out.count - i;
		if (n > SYNC_MAX_GONE_PER_LINE)
			n = SYNC_MAX_GONE_PER_LINE;
		proto_wr_begin(&w, m->tag, "GONE");
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
		proto_wr_begin(&w, s->merge.tag, "SAVE");
		proto_wr_save(&w, &sv);
	} else {
		struct proto_flags_line fl = {
			msg->uid, msg->modseq,
			{ msg->flags,
			  { msg->keywords.items, msg->keywords.count, msg->keywords.cap } },
		};
		proto_wr_begin(&w, s->merge.tag, "FLAGS");
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
	sync_pseen_srv_write(s, m->tag);
	proto_wr_init(&w, &s->out);
	for (size_t i = 0; i < fix_old.count; i += SYNC_MAX_UIDS_PER_LINE) {
		size_t n = fix_old.count - i;
		if (n > SYNC_MAX_UIDS_PER_LINE)
			n = SYNC_MAX_UIDS_PER_LINE;
		proto_wr_begin(&w, m->tag, "UIDFIX");
		proto_wr_uidset(&w, fix_old.items + i, n);
		proto_wr_uidset(&w, fix_new.items + i, n);
		proto_wr_end(&w);
	}
	ARRAY_FREE(&fix_old);
	ARRAY_FREE(&fix_new);
	char code[128];
	snprintf(code, sizeof(code), "UIDNEXT %u HIGHESTMODSEQ %" PRIu64, m->final_uidnext,
		 m->final_modseq);
	proto_wr_status(&s->out, m->tag, "OK", code, "synced");
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
	char tag[PROTO_MAX_TAG + 1];
	snprintf(tag, sizeof(tag), "%s", m->tag);
	job_end(s);
	srv_sync_reset(s);
	srv_reply(s, tag, "NO", "LIMIT", "no UIDs left to renumber conflicting messages to");
	return 0;
}
storage_error:
	srv_flush(s);
	job_end(s);
	srv_sync_reset(s);
	return srv_fail(s, "SYNC-END: %s", err);
}
