/* SYNC-END, the merge's decisions on the client's changes: its new
 * messages classified (kept, dropped for our copy, renumbered) and applied
 * in the MS_SAVES step, and its flag changes merged flag by flag in the
 * MS_STORES step.  The job that runs these steps, our own changes and the
 * answer are in sync-server-merge.c; the lookups and writes both share in
 * sync-server-merge-util.c.  L, M, N, cu, cm, su, sm are as explained
 * there. */
#include "sync/sync-server-private.h"

#include <sys/types.h>

#include "lib/log.h"

/* ---- The client's changes ---- */

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
int merge_classify(struct sync_server *s, struct srv_save *cs, const char **err)
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
	struct srv_merge *m = &s->merge;
	uint32_t at = 0;
	int r = merge_flags_guid(s, &cs->guid, &cs->f, &cs->stamps, &at, err);
	if (r != 0 || at == 0)
		return r < 0 ? -1 : 0;
	/* The client moves its copy to our UID at our copy's modseq.  At or
	 * below cm (the third node's sync spent it, or our master did) the
	 * move would stay unseen by its IMAP clients that cached cm: the old
	 * UID never VANISHED, the new one never came.  A renumbered message
	 * gets N (SPEC.md 10.3 "Modseqs"). */
	struct stor_msg cur;
	r = stor_msg_get(s->db, &s->sel, at, &cur, err);
	if (r <= 0)
		return r < 0 ? -1 : 0;
	if (cur.modseq <= m->cm) {
		uint64_t ms;
		r = merge_write_modseq(s, cur.modseq, true, &ms, err);
		if (r == 0)
			r = set_flags(s, at, cur.flags, &cur.keywords, NULL, ms, err);
		merge_mark_dirty(m, at);
		m->touched = true;
	}
	stor_msg_free(&cur);
	return r < 0 ? -1 : 0;
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
int merge_apply_save(struct sync_server *s, struct srv_save *cs, const char **err)
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
int merge_apply_store(struct sync_server *s, const struct srv_store *st, const char **err)
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
