/* The per-mailbox half of a sync, the server's answer applied: its
 * EXPUNGE, SAVE, FLAGS, UIDFIX and GONE lines written to our store in
 * bounded steps (apply_some()), with the decisions on SAVE lines that meet
 * our own tombstones.  The mailboxes planned, our changes sent, the texts
 * fetched, the answer's lines read and the second, short sync that
 * follows are in sync-client-mailbox.c. */
#include "sync/sync-client-private.h"

#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/xalloc.h"

/* ---- The answer applied ---- */

static const struct stor_tombstone *tomb_by_uid(const stor_tombstone_list *l, uint32_t uid)
{
	size_t lo = 0, hi = l->count;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (l->items[mid].uid == uid)
			return &l->items[mid];
		if (l->items[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* Whether a user here expunged g, by one of our tombstones since M (under
 * any UID) or by a GUID tombstone: 1, 0, or -1 with *err. */
static int user_expunged(struct sync_client *c, const struct guid *g, const char **err)
{
	if (!c->utomb_built) {
		c->utomb_guids.count = 0;
		for (size_t i = 0; i < c->tombs.count; i++) {
			if (c->tombs.items[i].user)
				ARRAY_PUSH(&c->utomb_guids, c->tombs.items[i].guid);
		}
		if (c->utomb_guids.count > 1)
			qsort(c->utomb_guids.items, c->utomb_guids.count, sizeof(struct guid),
			      cmp_guid_v);
		c->utomb_built = true;
	}
	if (c->utomb_guids.count > 0 &&
	    bsearch(g, c->utomb_guids.items, c->utomb_guids.count, sizeof(*g), cmp_guid_v) != NULL)
		return 1;
	int r = stor_guid_tomb_get(c->db, &c->cur.guid, g, NULL, err);
	return r < 0 ? -1 : r > 0;
}

/* Logs, at info level, the decision on a SAVE line at uid under our
 * tombstone of its GUID (what: "kept at a new UID", "dropped ..."), so
 * that a fault campaign's replay names the sync; at most 32 an answer. */
static void log_keep_drop(struct sync_client *c, uint32_t uid, const struct guid *g,
			  const char *what)
{
	if (c->keep_drop_logged >= 32)
		return;
	c->keep_drop_logged++;
	char gh[GUID_HEX_SIZE];
	guid_to_hex(g, gh);
	log_info("sync %s with %u: mailbox %s: UID %u GUID %s: the peer's copy is %s", c->user,
		 c->peer, c->cur.name, uid, gh, what);
}

/* The answer's GONE lines: GUIDs we do not hold get tombstones at the
 * new common modseq (above our last sync with any other peer, so they
 * travel on); a copy we hold is one the expunge missed and goes as a
 * user's expunge (the mailbox then differs from the answer's state and is
 * synced again, which tells the server). */
static int apply_gone(struct sync_client *c, const char **err)
{
	const struct guid *mbg = &c->cur.guid;
	stor_uid_list held = ARRAY_INIT;
	int r = 0;
	for (size_t i = 0; i < c->gone.count && r >= 0; i++) {
		uint32_t at;
		r = stor_msg_find_guid(c->db, mbg, &c->gone.items[i], &at, err);
		if (r > 0)
			ARRAY_PUSH(&held, at);
	}
	size_t added;
	if (r >= 0 && held.count > 0)
		r = stor_msg_expunge_kind(c->db, mbg, held.items, held.count, 0, true, NULL, err);
	if (r >= 0 && c->final_modseq > 0)
		r = stor_guid_tombs_add(c->db, mbg, c->gone.items, c->gone.count, c->final_modseq,
					&added, err);
	c->report.messages_expunged += (unsigned)held.count;
	ARRAY_FREE(&held);
	c->gone.count = 0;
	return r < 0 ? -1 : 0;
}

/* Whether the answer drops our copy at uid after storing its SAVE lines
 * (an EXPUNGE line of the engine's, not a user's expunge). */
static bool drops_after(const struct sync_client *c, uint32_t uid)
{
	for (size_t i = 0; i < c->exp_after.count; i++) {
		if (c->exp_after.items[i] == uid)
			return sync_uexp_find(&c->exp_user, uid) == NULL;
	}
	return false;
}

/* 1 when our message at uid changed after this sync's SYNC-BEGIN (its
 * modseq is above the cm we sent), 0 when not or gone, -1 on error. */
static int changed_since_begin(struct sync_client *c, uint32_t uid, const char **err)
{
	struct stor_msg m;
	int r = stor_msg_get(c->db, &c->cur.guid, uid, &m, err);
	if (r <= 0)
		return r;
	r = m.modseq > c->cm;
	stor_msg_free(&m);
	return r;
}

static void uid_list_remove(stor_uid_list *l, uint32_t uid)
{
	size_t keep = 0;
	for (size_t i = 0; i < l->count; i++) {
		if (l->items[i] != uid)
			l->items[keep++] = l->items[i];
	}
	l->count = keep;
}

/* ---- Writes made here while the answer is applied ----
 *
 * The answer's changes carry the merge's modseqs (N, or the server's own
 * above cm), all above the cm we sent.  A user here (or replication) may
 * have written the mailbox since: its HIGHESTMODSEQ is past cm, maybe past
 * those modseqs, and an IMAP client that cached it after that write would
 * never learn a change written at or below it (one modseq, two states).
 * So once another writer took modseqs up to foreign_hms, a change of the
 * answer at or below that goes to a fresh modseq above our HIGHESTMODSEQ;
 * a message that writer changed keeps its state (the answer's lacks the
 * change); and the copies are only known equal up to the modseq below its
 * first write: remembered so, the next round sends what it wrote and
 * both sides take the higher modseqs of what they already share (SPEC.md
 * 10.3 "A write during the sync"). */

static int hms_now(struct sync_client *c, uint64_t *h_r, const char **err)
{
	struct stor_mailbox mb;
	int r = stor_mailbox_get_by_guid(c->db, &c->cur.guid, &mb, err);
	if (r <= 0) {
		if (r == 0)
			*err = "the mailbox vanished";
		return -1;
	}
	*h_r = mb.highestmodseq;
	stor_mailbox_free(&mb);
	return 0;
}

/* Notices another writer's modseqs since our last look. */
static int ans_look(struct sync_client *c, uint64_t *h_r, const char **err)
{
	if (hms_now(c, h_r, err) < 0)
		return -1;
	if (*h_r > c->own_hms) {
		if (c->foreign_low == 0)
			c->foreign_low = c->own_hms + 1;
		c->foreign_hms = *h_r;
		c->own_hms = *h_r;
	}
	return 0;
}

/* The modseq at which a change the answer gives at ms is written here.
 * Another writer runs between calls of apply_some() only (one loop), which
 * looks once at its start; within a call own_hms is our HIGHESTMODSEQ. */
static int ans_modseq(struct sync_client *c, uint64_t ms, uint64_t *out, const char **err)
{
	uint64_t h = c->own_hms;
	if (ms > c->foreign_hms) {
		*out = ms;
		return 0;
	}
	if (c->fresh <= c->foreign_hms) {
		if (!mail_modseq_valid(h + 1)) {
			*err = "no modseq left above a write made during the sync";
			return -1;
		}
		c->fresh = h + 1;
	}
	*out = c->fresh;
	return 0;
}

/* After one of the answer's writes: our HIGHESTMODSEQ is its own. */
static int ans_wrote(struct sync_client *c, const char **err)
{
	uint64_t h;
	if (hms_now(c, &h, err) < 0)
		return -1;
	if (h > c->own_hms)
		c->own_hms = h;
	return 0;
}

/* Whether another writer changed m since SYNC-BEGIN. */
static bool foreign_changed(const struct sync_client *c, const struct stor_msg *m)
{
	return c->foreign_low != 0 && m->modseq > c->cm && m->modseq >= c->foreign_low;
}

/* A line's whole state for our message at uid, given at modseq given and
 * written at ms: skipped when another writer changed the message since
 * SYNC-BEGIN (the next round merges both, flag by flag) or, as ever, when
 * the message is newer than the line. */
static int ans_store(struct sync_client *c, uint32_t uid, uint64_t given, uint64_t ms,
		     const struct sync_flags *f, const stor_stamp_list *stamps, bool same_modseq,
		     const char **err)
{
	struct stor_msg m;
	int r = stor_msg_get(c->db, &c->cur.guid, uid, &m, err);
	if (r <= 0)
		return r;
	bool skip = foreign_changed(c, &m) ||
		    given < m.modseq || (given == m.modseq && !same_modseq);
	if (foreign_changed(c, &m))
		c->apply_diverged = true;
	stor_msg_free(&m);
	if (skip)
		return 0;
	struct stor_store req = {
		.op = STOR_FLAGS_REPLACE, .flags = f->flags,
		.keywords = (const char *const *)f->keywords.items,
		.keyword_count = f->keywords.count, .modseq = ms,
		.stamps = stamps->items, .stamp_count = stamps->count,
		.same_modseq = same_modseq || ms != given,
	};
	if (stor_msg_store(c->db, &c->cur.guid, &uid, 1, &req, NULL, NULL, err) < 0)
		return -1;
	return ans_wrote(c, err) < 0 ? -1 : 1;
}

/* Applies the server's answer, up to budget operations per call; 1 when
 * done. */
int apply_some(struct sync_client *c)
{
	const char *err;
	unsigned n = 0;
	const struct guid *mbg = &c->cur.guid;
	if (c->apply_stage == 0) {
		c->own_hms = c->foreign_hms = c->cm;
		c->foreign_low = c->fresh = 0;
	}
	uint64_t now_hms;
	if (ans_look(c, &now_hms, &err) < 0)
		return cl_fail(c, "%s", err);
	if (c->apply_stage == 0) {
		if (c->exp_uids.count > 0) {
			stor_uid_list now = ARRAY_INIT, done = ARRAY_INIT;
			struct guid *saved = NULL;
			c->exp_after.count = 0;
			if (c->saves.count > 0) {
				saved = xmalloc(c->saves.count * sizeof(*saved));
				for (size_t j = 0; j < c->saves.count; j++)
					saved[j] = c->saves.items[j].guid;
				qsort(saved, c->saves.count, sizeof(*saved), cmp_guid_v);
			}
			for (size_t i = 0; i < c->exp_uids.count; i++) {
				struct stor_msg m;
				bool again = false;
				if (saved != NULL &&
				    stor_msg_get(c->db, mbg, c->exp_uids.items[i], &m, &err) > 0) {
					again = bsearch(&m.guid, saved, c->saves.count, sizeof(*saved),
							cmp_guid_v) != NULL;
					stor_msg_free(&m);
				}
				if (again)
					ARRAY_PUSH(&c->exp_after, c->exp_uids.items[i]);
				else
					ARRAY_PUSH(&now, c->exp_uids.items[i]);
			}
			sync_uexp_sort(&c->exp_user);
			uint64_t ms;
			if (now.count > 0 && (ans_modseq(c, c->exp_modseq, &ms, &err) < 0 ||
					      cl_expunge(c, &now, ms, &done, &err) < 0 ||
					      ans_wrote(c, &err) < 0)) {
				ARRAY_FREE(&now);
				free(saved);
				return cl_fail(c, "%s", err);
			}
			c->report.messages_expunged += (unsigned)done.count;
			ARRAY_FREE(&done);
			ARRAY_FREE(&now);
			free(saved);
		}
		c->apply_stage = 1;
		c->apply_pos = 0;
	}
	if (c->apply_stage == 1) {
		for (; c->apply_pos < c->fix_old.count && n < c->budget; c->apply_pos++, n++) {
			uint64_t ms;
			if (ans_modseq(c, c->final_modseq, &ms, &err) < 0 ||
			    stor_msg_renumber(c->db, mbg, c->fix_old.items[c->apply_pos],
					      c->fix_new.items[c->apply_pos], ms, &err) < 0 ||
			    ans_wrote(c, &err) < 0)
				return cl_fail(c, "UIDFIX %u -> %u: %s", c->fix_old.items[c->apply_pos],
					       c->fix_new.items[c->apply_pos], err);
			c->report.messages_renumbered++;
		}
		if (c->apply_pos < c->fix_old.count)
			return 0;
		c->apply_stage = 2;
		c->apply_pos = 0;
	}
	if (c->apply_stage == 2) {
		if (c->apply_pos == 0)
			c->late_next = c->final_uidnext;
		for (; c->apply_pos < c->saves.count && n < c->budget; c->apply_pos++, n++) {
			const struct cl_save *sv = &c->saves.items[c->apply_pos];
			uint32_t uid = sv->uid;
			if (uid >= c->apply_below)
				return 0; /* its text is still on its way */
			const struct stor_tombstone *t = tomb_by_uid(&c->tombs, uid);
			/* A user expunged this GUID here (or on a node we
			 * learned it from) and it is not here: the server's
			 * copy is one the expunge missed.  It stays out, and
			 * the second sync expunges it there as a user's. */
			int gone = stor_guid_tomb_get(c->db, mbg, &sv->guid, NULL, &err);
			if (gone < 0)
				return cl_fail(c, "%s", err);
			if (gone > 0 && (t == NULL || guid_cmp(&t->guid, &sv->guid) != 0)) {
				uint32_t at;
				int fr = stor_msg_find_guid(c->db, mbg, &sv->guid, &at, &err);
				if (fr < 0)
					return cl_fail(c, "%s", err);
				if (fr == 0) {
					ARRAY_PUSH(&c->late_uexp, uid);
					ARRAY_PUSH(&c->late_uexp_g, sv->guid);
					continue;
				}
			}
			bool keep_engine = false, user_gone = false;
			const char *why = "dropped (a user expunged it here)";
			if (t != NULL && guid_cmp(&t->guid, &sv->guid) == 0 && !t->user) {
				/* The engine's tombstone of this very message: it
				 * moved our copy on or dropped it for another one,
				 * never removed the message.  Unless a user
				 * expunged it, or we hold it elsewhere, the
				 * server's copy may be the last one anywhere
				 * (SPEC 10.3): it stays, at a fresh UID, as one
				 * of another GUID would.  Expunged in the second
				 * sync, it was lost on both sides. */
				uint32_t at;
				int fr = stor_msg_find_guid(c->db, mbg, &sv->guid, &at, &err);
				int ue = fr == 0 ? user_expunged(c, &sv->guid, &err) : 0;
				if (fr < 0 || ue < 0)
					return cl_fail(c, "%s", err);
				keep_engine = fr == 0 && ue == 0;
				user_gone = fr == 0 && ue > 0;
				if (fr > 0)
					why = "dropped (held here at another UID)";
				if (keep_engine)
					log_keep_drop(c, uid, &sv->guid,
						      "kept at a new UID (our tombstone there is the "
						      "engine's, no copy here)");
			}
			if (t != NULL && guid_cmp(&t->guid, &sv->guid) == 0 && !keep_engine) {
				/* We expunged this very message: the expunge wins. */
				log_keep_drop(c, uid, &sv->guid, why);
				if (t->user || user_gone) {
					/* A user's expunge, also under the
					 * engine's tombstone when a user
					 * expunged the GUID (at another UID,
					 * or known by GUID): told as the
					 * engine's, the server dropped its copy
					 * as a move, with no trace of the
					 * user's expunge, and a copy the
					 * expunge missed came back there from
					 * a third node. */
					ARRAY_PUSH(&c->late_uexp, uid);
					ARRAY_PUSH(&c->late_uexp_g, t->guid);
				} else {
					ARRAY_PUSH(&c->late_exp, uid);
				}
				continue;
			}
			if (t != NULL) {
				/* The UID named another message here: it moves. */
				if (!mail_uid_valid(c->late_next))
					return cl_fail(c, "no UIDs left to renumber UID %u to", uid);
				uid = c->late_next++;
				ARRAY_PUSH(&c->late_old, sv->uid);
				ARRAY_PUSH(&c->late_new, uid);
				c->report.messages_renumbered++;
			}
			struct stor_msg have;
			int hr = stor_msg_get(c->db, mbg, uid, &have, &err);
			if (hr < 0)
				return cl_fail(c, "%s", err);
			if (hr == 0) {
				/* Replication may have brought this very message to
				 * another UID since the answer: not twice.  The
				 * state differs from the answer's then, and the
				 * mailbox is synced again (apply_some returns 2). */
				uint32_t at;
				int fr = stor_msg_find_guid(c->db, mbg, &sv->guid, &at, &err);
				if (fr < 0)
					return cl_fail(c, "%s", err);
				int kept = fr > 0 && drops_after(c, at) ? changed_since_begin(c, at, &err)
									    : 0;
				if (kept < 0)
					return cl_fail(c, "%s", err);
				if (kept > 0) {
					/* A user changed our copy after we sent
					 * our changes: the line's state lacks it.
					 * The copy stays where it is, and the
					 * next round (the state differs) sends
					 * its change, which follows the message
					 * to its new UID on the server. */
					uid_list_remove(&c->exp_after, at);
					c->apply_diverged = true;
					continue;
				}
				if (fr > 0 && drops_after(c, at)) {
					/* The answer drops our copy at `at` and
					 * gives this message at uid: the server
					 * moved it (a UID conflict with a third
					 * node) and merged our changes into the
					 * line's state.  Our copy moves there and
					 * takes that state.  Dropped and taken
					 * again in one more round, it was missing
					 * here meanwhile, and that round compared
					 * every message. */
					uint64_t ms;
					if (ans_modseq(c, sv->modseq, &ms, &err) < 0)
						return cl_fail(c, "%s", err);
					if (stor_msg_renumber(c->db, mbg, at, uid, ms, &err) < 0) {
						/* (uid held an expunged message
						 * here: one more round sorts it
						 * out, as before.) */
						log_debug("sync %s with %u: UID %u -> %u: %s", c->user,
							  c->peer, at, uid, err);
						c->apply_diverged = true;
						continue;
					}
					struct stor_store mreq = {
						.op = STOR_FLAGS_REPLACE, .flags = sv->f.flags,
						.keywords = (const char *const *)sv->f.keywords.items,
						.keyword_count = sv->f.keywords.count,
						.modseq = ms, .stamps = sv->stamps.items,
						.stamp_count = sv->stamps.count, .same_modseq = true,
					};
					if (stor_msg_store(c->db, mbg, &uid, 1, &mreq, NULL, NULL, &err) < 0 ||
					    ans_wrote(c, &err) < 0)
						return cl_fail(c, "FLAGS %u: %s", uid, err);
					c->report.messages_renumbered++;
					continue;
				}
				if (fr > 0) {
					c->apply_diverged = true;
					continue;
				}
			}
			if (hr > 0) {
				bool same = guid_cmp(&have.guid, &sv->guid) == 0;
				stor_msg_free(&have);
				if (!same)
					return cl_fail(c, "SAVE line for UID %u, which holds another "
						       "message here", uid);
				/* Already here: take the line's state and modseq. */
				uint64_t ms;
				if (ans_modseq(c, sv->modseq, &ms, &err) < 0 ||
				    ans_store(c, uid, sv->modseq, ms, &sv->f, &sv->stamps, false,
					      &err) < 0)
					return cl_fail(c, "FLAGS %u: %s", uid, err);
				continue;
			}
			uint64_t ams;
			if (ans_modseq(c, sv->modseq, &ams, &err) < 0)
				return cl_fail(c, "storing UID %u: %s", uid, err);
			struct stor_append req = {
				.uid = uid, .modseq = ams, .guid = &sv->guid,
				.flags = sv->f.flags,
				.keywords = (const char *const *)sv->f.keywords.items,
				.keyword_count = sv->f.keywords.count,
				.internaldate = sv->date, .internaldate_tz = sv->tz,
				.stamps_given = sv->stamped, .stamps = sv->stamps.items,
				.stamp_count = sv->stamps.count,
			};
			if (stor_msg_append(c->db, mbg, &req, NULL, NULL, &err) < 0 ||
			    ans_wrote(c, &err) < 0)
				return cl_fail(c, "storing UID %u: %s", uid, err);
			c->report.messages_received++;
		}
		if (c->apply_pos < c->saves.count || c->apply_below != UINT32_MAX)
			return 0;
		if (c->exp_after.count > 0) {
			stor_uid_list done = ARRAY_INIT;
			uint64_t ms;
			if (ans_modseq(c, c->exp_modseq, &ms, &err) < 0 ||
			    cl_expunge(c, &c->exp_after, ms, &done, &err) < 0 ||
			    ans_wrote(c, &err) < 0) {
				ARRAY_FREE(&done);
				return cl_fail(c, "%s", err);
			}
			c->report.messages_expunged += (unsigned)done.count;
			ARRAY_FREE(&done);
			c->exp_after.count = 0;
		}
		c->apply_stage = 3;
		c->apply_pos = 0;
	}
	if (c->apply_stage == 3) {
		for (; c->apply_pos < c->flags.count && n < c->budget; c->apply_pos++, n++) {
			const struct cl_flags *fl = &c->flags.items[c->apply_pos];
			uint64_t ms;
			if (ans_modseq(c, fl->modseq, &ms, &err) < 0 ||
			    ans_store(c, fl->uid, fl->modseq, ms, &fl->f, &fl->stamps, false,
				      &err) < 0)
				return cl_fail(c, "FLAGS %u: %s", fl->uid, err);
			c->report.flags_changed++;
		}
		if (c->apply_pos < c->flags.count)
			return 0;
		c->apply_stage = 4;
	}
	uint64_t h;
	if (ans_look(c, &h, &err) < 0)
		return cl_fail(c, "%s", err);
	if (c->foreign_low != 0 && c->foreign_low - 1 < c->common_cap)
		c->common_cap = c->foreign_low - 1;
	if (stor_mailbox_raise(c->db, mbg, c->final_uidnext, c->final_modseq, &err) < 0)
		return cl_fail(c, "%s", err);
	if (c->gone.count > 0 && apply_gone(c, &err) < 0)
		return cl_fail(c, "%s", err);
	if (sync_pseen_cl_apply(c, &err) < 0)
		return cl_fail(c, "%s", err);
	if (c->late_exp.count > 0 || c->late_uexp.count > 0 || c->late_old.count > 0)
		return 3;
	struct stor_mailbox mb;
	int r = stor_mailbox_get_by_guid(c->db, mbg, &mb, &err);
	if (r <= 0)
		return cl_fail(c, "mailbox vanished: %s", r < 0 ? err : "");
	/* Another writer here took modseqs at or below the answer's: the
	 * copies are known equal below its first write only, and one more
	 * round sends what it wrote. */
	bool written_below = c->common_cap < c->final_modseq;
	bool converged = mb.uidnext == c->final_uidnext && mb.highestmodseq == c->final_modseq &&
			 !c->apply_diverged && !written_below;
	c->apply_diverged = false;
	struct stor_sync_state st = {
		.uidvalidity = mb.uidvalidity, .uidnext = c->final_uidnext,
		.highestmodseq = written_below ? c->common_cap : c->final_modseq,
	};
	stor_mailbox_free(&mb);
	if (stor_sync_state_set(c->db, c->peer, mbg, &st, &err) < 0)
		return cl_fail(c, "%s", err);
	if (!converged)
		return 2;
	return 1;
}
