/* The master's answer to a forwarded change, applied here: the message
 * SAVE made at the master's UID, the flags of its FLAGS lines, its
 * expunge, each only on the messages the change named (by GUID, SPEC
 * 8.6), then completed once durable here.  Apart from repl-forward.c,
 * which sends the change and reads the answer. */
#include "replicator/repl-cluster-private.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/log.h"
#include "lib/mail-limits.h"
#include "lib/xalloc.h"
#include "replicator/repl-pseen.h"

/* The master counted this node as one copy of the SAVE (HELD, SPEC 8.8)
 * but the message is not held here at the master's UID: this node is no
 * holder after all.  The same request goes again without HOLDER; the
 * master answers the message it made once sync_replicas other peers hold
 * it, so the client's OK still means sync_replicas copies beside it. */
static void fwd_resend_unheld(struct cl_fwd *f, const char *why)
{
	log_info("replication: %s: cannot hold the master's UID %u here (%s): asking again "
		 "without HOLDER", f->user, f->out.res.uid, why);
	if (f->peer != NULL)
		cl_mark_dirty(f->peer, f->user);
	f->no_holder = true;
	f->held = false;
	f->cl->forwarded_changes--; /* counted again at its answer */
	if (f->peer != NULL && f->peer->conn != NULL &&
	    cl_bind_get(f->peer, &f->mailbox)->state == CL_BIND_BOUND) {
		fwd_send(f);
		return;
	}
	fwd_again(f, why);
}

void fwd_local_durable(void *ctx, bool ok)
{
	struct cl_fwd *f = ctx;
	if (!ok && f->held) {
		/* Our copy was counted: without it the client must wait. */
		fwd_resend_unheld(f, "not durable here");
		return;
	}
	/* The master and its replicas hold the change; a failure to make our
	 * copy durable is for a resync to repair, not for the client.  But
	 * a UID that is not durable here is not told (uid_unheld). */
	if (!ok) {
		log_errorx("replication: a change from the master is not durable here");
		if (f->kind == FWD_APPEND)
			f->uid_unheld = true;
	}
	if (f->uid_unheld)
		f->out.res.uid = 0;
	fwd_finish(f);
}


/* The MODSEQ of a completion's response code, or 0. */
static uint64_t code_modseq(const struct proto_cmd *line)
{
	uint64_t modseq = 0;
	const struct proto_arg *a = proto_code_value(line, "MODSEQ");
	if (a != NULL)
		(void)proto_arg_u64(a, INT64_MAX, &modseq);
	return modseq;
}

/* The master's modseq, or 0 (a fresh one here) when this copy spent it
 * itself (cl_master_modseq_fits): the session's change must show here, and
 * its IMAP clients that cached this HIGHESTMODSEQ must see it.  The copies
 * then differ in modseq only; a resync with the master raises the
 * master's copy to ours (SPEC.md 10.3). */
static uint64_t fwd_modseq_here(struct cl_fwd *f, uint64_t modseq)
{
	struct stor_mailbox mb;
	const char *err;
	if (stor_mailbox_get_by_guid(f->cl->repl.db, &f->mailbox, &mb, &err) <= 0)
		return modseq;
	bool fits = cl_master_modseq_fits(f->cl, &mb, modseq);
	stor_mailbox_free(&mb);
	if (fits)
		return modseq;
	if (f->peer != NULL)
		cl_mark_dirty(f->peer, f->user);
	return 0;
}

/* Notes a change taken at the master's modseq (not at a fresh one). */
static void fwd_taken(struct cl_fwd *f, uint64_t master, uint64_t here)
{
	if (here != 0 && here == master)
		cl_master_modseq_taken(f->cl, &f->mailbox, master);
}

/* The master's UID holds nothing here, below UIDNEXT: the message was
 * expunged here since, or a resync that ran between the master's making
 * it and this answer renumbered it (a UID conflict, as after a partition;
 * campaign seed 13020), or never stored here.  The master's answer can
 * name the UID it gave before that resync; told to the client, the UID
 * would name another message once a second APPEND got it.  Only a message
 * a user expunged here since keeps the UID told, and one the master says
 * was expunged (EXPUNGED) at a UID at or above UIDNEXT here. */
static void fwd_check_vacant(struct cl_fwd *f, uint32_t uid, uint32_t uidnext)
{
	struct stor_db *db = f->cl->repl.db;
	const char *err;
	uint32_t at = 0;
	int found = stor_msg_find_guid(db, &f->mailbox, &f->app.guid, &at, &err);
	if (found > 0 && at == uid)
		return;
	if (found == 0 && uid >= uidnext && uid <= MAIL_UID_MAX) {
		/* Saved and expunged on the master (EXPUNGED) at a UID this
		 * node never had.  Told, the UID must name that message alone
		 * here too: UIDNEXT goes past it now, durable with the rest
		 * before the OK.  The master's stream would raise it, but
		 * late or never (a cut link), and meanwhile this node (master
		 * after a failover, or alone) could give the UID to another
		 * message. */
		if (stor_mailbox_raise(db, &f->mailbox, uid + 1, 0, &err) == 0) {
			notify_later(f->cl, f->user, &f->mailbox);
			return;
		}
		log_warnx("replication: %s: cannot raise UIDNEXT past the master's UID %u here "
			  "(%s): the client is not told it", f->user, uid, err);
	} else if (found == 0 && stor_guid_tomb_get(db, &f->mailbox, &f->app.guid, NULL, &err) > 0)
		return;
	if (found > 0)
		log_info("replication: %s: the master answered UID %u, held here at UID %u "
			 "(renumbered by a resync): the client is not told a UID", f->user, uid, at);
	else
		log_info("replication: %s: the master answered UID %u, not held here: the client "
			 "is not told a UID", f->user, uid);
	if (f->peer != NULL)
		cl_mark_dirty(f->peer, f->user);
	f->uid_unheld = true;
}

void fwd_apply_append(struct cl_fwd *f, const struct proto_cmd *line)
{
	struct repl_cluster *cl = f->cl;
	struct stor_db *db = cl->repl.db;
	const struct proto_arg *a;
	uint32_t uid = 0;
	uint64_t modseq = code_modseq(line);
	const char *err;
	if ((a = proto_code_value(line, "UID")) != NULL)
		(void)proto_arg_u32(a, &uid);
	bool expunged = proto_code_has(line, "EXPUNGED");
	struct stor_mailbox mb;
	if ((uid == 0 && !expunged) || modseq == 0 ||
	    stor_mailbox_get_by_guid(db, &f->mailbox, &mb, &err) <= 0) {
		fwd_fail(f, REPL_ERR_INTERNAL, "the master's answer was incomplete");
		return;
	}
	f->out.res.uid = uid;
	f->out.res.modseq = modseq;
	f->out.res.uidvalidity = mb.uidvalidity;
	uint32_t uidnext = mb.uidnext;
	stor_mailbox_free(&mb);
	if (expunged) {
		/* The master made it and it was expunged since (SPEC 6.4):
		 * nothing to store or hold here, and never sent again, which
		 * would make the expunged message anew.  Without a UID (gone
		 * before the master answered) the client is told none. */
		f->held = false;
		if (uid == 0) {
			f->uid_unheld = true;
			stor_on_durable(db, fwd_local_durable, f);
			return;
		}
	}
	struct guid made;
	if ((a = proto_code_value(line, "GUID")) != NULL && proto_arg_guid(a, &made) == 0 &&
	    !guid_equal(&made, &f->app.guid)) {
		/* The master made another copy of the message (SPEC 6.4,
		 * REQ, sent by nodes of an earlier build): a new GUID for the
		 * same text. */
		f->app.guid = made;
	}
	struct stor_msg msg;
	int have = stor_msg_get(db, &f->mailbox, uid, &msg, &err);
	if (f->held && have > 0 && !guid_equal(&msg.guid, &f->app.guid)) {
		stor_msg_free(&msg);
		fwd_resend_unheld(f, "the UID holds another message");
		return;
	}
	if (f->held && have < 0) {
		fwd_resend_unheld(f, err);
		return;
	}
	if (f->held && have == 0 && uid < uidnext &&
	    stor_guid_tomb_get(db, &f->mailbox, &f->app.guid, NULL, &err) <= 0) {
		/* Below UIDNEXT and not expunged here by a user since the
		 * stream brought it: never stored here. */
		fwd_resend_unheld(f, "the UID is below UIDNEXT here");
		return;
	}
	if (have > 0) {
		if (!guid_equal(&msg.guid, &f->app.guid)) {
			log_warnx("replication: %s: UID %u holds another message here: resync", f->user,
				  uid);
			cl_mark_dirty(f->peer, f->user);
			f->uid_unheld = true;
		}
		stor_msg_free(&msg);
	} else if (have == 0 && uid >= uidnext && !expunged) {
		struct stor_append sa;
		memset(&sa, 0, sizeof(sa));
		sa.uid = uid;
		sa.modseq = fwd_modseq_here(f, modseq);
		sa.guid = &f->app.guid;
		sa.flags = f->app.flags;
		sa.keywords = f->app.keywords;
		sa.keyword_count = f->app.keyword_count;
		sa.internaldate = f->app.internaldate;
		sa.internaldate_tz = f->app.internaldate_tz;
		sa.text = f->app.text;
		sa.text_len = f->app.text_len;
		if (stor_msg_append(db, &f->mailbox, &sa, NULL, NULL, &err) < 0) {
			if (f->held) {
				fwd_resend_unheld(f, err);
				return;
			}
			log_warnx("replication: %s: cannot store the master's UID %u here (%s): "
				  "resync; the client is not told the UID", f->user, uid, err);
			cl_mark_dirty(f->peer, f->user);
			f->uid_unheld = true;
		} else {
			fwd_taken(f, modseq, sa.modseq);
			notify_later(cl, f->user, &f->mailbox);
		}
	} else if (have == 0) {
		fwd_check_vacant(f, uid, uidnext);
	}
	/* else: this node could not read its copy; a resync repairs it. */
	stor_on_durable(db, fwd_local_durable, f);
}

/* Fills named_uids and named_guids from this node's copy. */
void fwd_name_messages(struct cl_fwd *f)
{
	stor_uid_list sorted = ARRAY_INIT;
	uids_copy(&sorted, f->uids, f->count);
	if (sorted.count > 1)
		qsort(sorted.items, sorted.count, sizeof(sorted.items[0]), fwd_cmp_u32);
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
				      sizeof(uid), fwd_cmp_u32);
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

/* Whether the request names kw (a message's keyword). */
static bool store_names(const struct stor_store *st, const char *kw)
{
	for (size_t j = 0; j < st->keyword_count; j++)
		if (strcasecmp(kw, st->keywords[j]) == 0)
			return true;
	return false;
}

bool fwd_store_holds(const struct stor_store *st, const struct stor_msg *m)
{
	switch (st->op) {
	case STOR_FLAGS_ADD:
		if ((m->flags & st->flags) != st->flags)
			return false;
		for (size_t i = 0; i < st->keyword_count; i++)
			if (!stor_msg_has_keyword(m, st->keywords[i]))
				return false;
		return true;
	case STOR_FLAGS_REMOVE:
		if ((m->flags & st->flags) != 0)
			return false;
		for (size_t i = 0; i < st->keyword_count; i++)
			if (stor_msg_has_keyword(m, st->keywords[i]))
				return false;
		return true;
	case STOR_FLAGS_REPLACE:
		if (m->flags != st->flags)
			return false;
		/* The same set both ways: a request may name a keyword twice. */
		for (size_t i = 0; i < st->keyword_count; i++)
			if (!stor_msg_has_keyword(m, st->keywords[i]))
				return false;
		for (size_t i = 0; i < m->keywords.count; i++)
			if (!store_names(st, m->keywords.items[i]))
				return false;
		return true;
	}
	return false;
}

/* The last FLAGS line the master sent for uid, or NULL. */
static const struct stor_msg *flags_line_of(const struct cl_fwd *f, uint32_t uid)
{
	for (size_t i = f->flags_lines.count; i > 0; i--)
		if (f->flags_lines.items[i - 1].uid == uid)
			return &f->flags_lines.items[i - 1];
	return NULL;
}

/* One batch of a STORE or EXPUNGE was done at the master: keep what its
 * answer says; 1 when more batches are to go. */
bool fwd_batch_done(struct cl_fwd *f, const struct proto_cmd *line)
{
	const struct proto_arg *a;
	f->master_modseq = code_modseq(line);
	if (f->kind == FWD_STORE && (a = proto_code_value(line, "MODIFIED")) != NULL) {
		/* A malformed set adds nothing. */
		uint32_t *set;
		size_t n;
		if (proto_arg_uids(a, CL_FORWARD_BATCH, &set, &n) == 0) {
			for (size_t i = 0; i < n; i++) {
				/* Sent again after an answer that did not come, to
				 * a master that does not know its REQ (another one
				 * since, or of an earlier build): a message whose
				 * flags are what the STORE asks may be one the first
				 * attempt changed, and must not be told MODIFIED
				 * (RFC 7162 3.1.3; SPEC 6.4). */
				const struct stor_msg *now = f->maybe_applied && f->store.seen_of == NULL ?
					flags_line_of(f, set[i]) : NULL;
				if (now != NULL && fwd_store_holds(&f->store, now))
					continue;
				ARRAY_PUSH(&f->modified, set[i]);
			}
			free(set);
		}
	}
	if (f->kind == FWD_STORE)
		f->maybe_applied = false;
	f->sent_upto = f->batch_end;
	return f->sent_upto < f->named_uids.count;
}

void fwd_apply_store(struct cl_fwd *f)
{
	struct repl_cluster *cl = f->cl;
	struct stor_db *db = cl->repl.db;
	const char *err;
	f->out.res.modseq = f->master_modseq;
	stor_uid_list modified = f->modified;
	bool changed_any = false;
	if (f->store.seen_of != NULL) {
		/* The lines carry the user's view (SPEC.md 7.7), not the
		 * message's flags: the session is told them, this node's copy
		 * gets the records and flags from the master's stream. */
		repl_pseen_forwarded_view(&f->flags_lines, &modified, &f->out.changed);
		for (size_t j = 0; j < modified.count; j++)
			ARRAY_PUSH(&f->out.failed, modified.items[j]);
		stor_on_durable(db, fwd_local_durable, f);
		return;
	}
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
		st.modseq = fwd_modseq_here(f, m->modseq);
		stor_msg_list changed = ARRAY_INIT;
		struct stor_msg had;
		bool same = false;
		if (st.modseq == 0 && stor_msg_get(db, &f->mailbox, m->uid, &had, &err) > 0) {
			/* Already so here (the stream or a sync brought it), or
			 * changed here after the master's change: an older change
			 * never overwrites a newer one (as stor_msg_store at the
			 * master's modseq would skip it). */
			same = had.flags == m->flags && had.keywords.count == m->keywords.count;
			for (size_t k = 0; same && k < m->keywords.count; k++)
				same = stor_msg_has_keyword(&had, m->keywords.items[k]);
			same = same || had.modseq > m->modseq;
			stor_msg_free(&had);
		}
		if (!same &&
		    stor_msg_store(db, &f->mailbox, &m->uid, 1, &st, &changed, NULL, &err) < 0)
			log_warnx("replication: %s: applying the master's flags: %s", f->user, err);
		else if (!same)
			fwd_taken(f, m->modseq, st.modseq);
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

void fwd_apply_expunge(struct cl_fwd *f)
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
	uint64_t here = modseq != 0 && still.count > 0 ? fwd_modseq_here(f, modseq) : modseq;
	if (modseq != 0 && still.count > 0 &&
	    stor_msg_expunge(db, &f->mailbox, still.items, still.count, here, &f->out.expunged,
			     &err) < 0)
		log_warnx("replication: %s: applying the master's expunge: %s", f->user, err);
	else if (modseq != 0 && still.count > 0)
		fwd_taken(f, modseq, here);
	ARRAY_FREE(&still);
	if (f->out.expunged.count > 0)
		notify_later(cl, f->user, &f->mailbox);
	stor_on_durable(db, fwd_local_durable, f);
}
