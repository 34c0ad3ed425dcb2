/* Changes their origin already made (option ORIGIN, SPEC.md 7.3 and 8):
 * the master's SAVE, STORE and EXPUNGE with UIDs and modseqs, ACL-PUT and
 * mailbox-list changes, applied as given and idempotently (see
 * repl-replica.c). */
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
#include "replicator/repl-pseen.h"
#include "replicator/repl-sync.h"
#include "storage/acl-rights.h"
#include "storage/storage-acl.h"
#include "sync/sync.h"

/* ---- The master's modseqs here (SPEC.md 10.3 "A change from the master") ---- */

bool cl_master_modseq_fits(const struct repl_cluster *cl, const struct stor_mailbox *mb,
			   uint64_t modseq)
{
	if (modseq > mb->highestmodseq)
		return true;
	if (modseq != mb->highestmodseq)
		return false;
	for (size_t i = 0; i < CL_TAKEN_MAX; i++)
		if (cl->taken[i].modseq == modseq && guid_equal(&cl->taken[i].mailbox, &mb->guid))
			return true;
	return false;
}

void cl_master_modseq_taken(struct repl_cluster *cl, const struct guid *mailbox,
			    uint64_t modseq)
{
	for (size_t i = 0; i < CL_TAKEN_MAX; i++) {
		if (cl->taken[i].modseq != 0 && guid_equal(&cl->taken[i].mailbox, mailbox)) {
			cl->taken[i].modseq = modseq;
			return;
		}
	}
	cl->taken[cl->taken_next].mailbox = *mailbox;
	cl->taken[cl->taken_next].modseq = modseq;
	cl->taken_next = (cl->taken_next + 1) % CL_TAKEN_MAX;
}

/* A change from the master at a modseq this copy spent itself is refused
 * when it would change something here: the resync the refusal starts
 * gives it a modseq above both copies' (SPEC.md 10.3). */
static void answer_spent_here(struct answer *a, const struct stor_mailbox *mb)
{
	char code[64];
	snprintf(code, sizeof(code), "HIGHESTMODSEQ %" PRIu64, mb->highestmodseq);
	answer_later(a, "NO", code, "this copy spent the modseq itself: the mailboxes need a sync");
}

/* A streamed STORE of a message that a sync here moved to another UID
 * (the sender still had it at the old one): skipped at the UID, the
 * change was lost here, and the sender, told OK, took it for held.  A
 * resync merges it into the moved copy (SPEC.md 10.3). */
static void answer_moved_here(struct answer *a)
{
	answer_later(a, "NO", "UNSYNCED",
		     "the message moved to another UID here: the mailboxes need a sync");
}

static bool flags_same(const struct stor_msg *m, const struct proto_flags *fl)
{
	if (m->flags != fl->flags || m->keywords.count != fl->keywords.count)
		return false;
	for (size_t i = 0; i < fl->keywords.count; i++)
		if (!stor_msg_has_keyword(m, fl->keywords.items[i]))
			return false;
	return true;
}

/* ---- Changes from their origin ---- */

/* GUIDS (g ...) of a replicated STORE or EXPUNGE names the message of each
 * UID (in the uidset's order); UIDs that hold another message here are
 * dropped from uids: the copies differ there and a resync decides.
 * Returns 0, or -1 when the list does not match the UIDs. */
static int keep_same_messages(struct stor_db *db, const struct guid *mailbox,
			      const struct proto_arg *guids, stor_uid_list *uids, bool *differ_r,
			      bool *moved_r)
{
	if (guids == NULL)
		return 0;
	if (guids->type != PROTO_ARG_LIST || guids->count != uids->count)
		return -1;
	size_t kept = 0;
	const char *err;
	for (size_t i = 0; i < uids->count; i++) {
		struct guid g;
		struct stor_msg m;
		if (proto_arg_guid(&guids->list[i], &g) < 0)
			return -1;
		int r = stor_msg_get(db, mailbox, uids->items[i], &m, &err);
		if (r > 0) {
			bool same = guid_equal(&m.guid, &g);
			stor_msg_free(&m);
			if (!same) {
				*differ_r = true;
				continue;
			}
		} else if (r == 0 && moved_r != NULL) {
			/* Not at this UID, yet held here: a sync here moved it
			 * (a UID conflict with a third node). */
			uint32_t at;
			int f = stor_msg_find_guid(db, mailbox, &g, &at, &err);
			if (f != 0)
				*moved_r = true;
		}
		uids->items[kept++] = uids->items[i];
	}
	uids->count = kept;
	return 0;
}


/* The text argument of a SAVE: a literal (*text_r set), or NIL for a text
 * this node holds under guid (*text_r NULL).  Otherwise answers a and
 * returns -1. */
int save_text(struct stor_db *db, struct answer *a, const struct proto_save *sv,
	      const void **text_r, size_t *len_r)
{
	const char *err;
	*text_r = sv->text;
	*len_r = sv->text_len;
	if (sv->text != NULL || stor_text_exists(db, &sv->guid, NULL, &err) > 0)
		return 0;
	answer_later(a, "NO", "NONEXISTENT", "text unknown here, send it");
	return -1;
}

void apply_save(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
		const struct stor_mailbox *mb)
{
	struct stor_db *db = cl->repl.db;
	struct proto_save sv;
	const char *err;
	char code[96];
	/* A value past lib/mail-limits.h would leave the mailbox unable to
	 * take mail or to sync: refused before anything changes. */
	int cr = proto_read_save(cmd, PROTO_SAVE_GIVEN, &sv, &err);
	if (cr == PROTO_CODEC_LIMIT) {
		answer_later(a, "NO", "LIMIT", MAIL_LIMITS_TEXT);
		return;
	}
	if (cr < 0) {
		answer_later(a, "BAD", "ARGS", "SAVE date uid modseq guid flags text");
		return;
	}
	uint32_t uid = sv.uid;
	uint64_t modseq = sv.modseq;
	struct guid guid = sv.guid;
	struct proto_flags fl = sv.f;
	snprintf(code, sizeof(code), "UID %u MODSEQ %" PRIu64, uid, modseq);
	struct stor_msg have;
	int r = stor_msg_get(db, &mb->guid, uid, &have, &err);
	if (r > 0) {
		bool same = guid_equal(&have.guid, &guid);
		stor_msg_free(&have);
		proto_flags_free(&fl);
		if (same) {
			answer_later(a, "OK", code, "already stored");
		} else {
			snprintf(code, sizeof(code), "UIDCONFLICT %u", uid);
			answer_later(a, "NO", code, "the UID holds another message");
		}
		return;
	}
	if (r < 0 || uid < mb->uidnext) {
		proto_flags_free(&fl);
		snprintf(code, sizeof(code), "UIDCONFLICT %u", uid);
		answer_later(a, r < 0 ? "NO" : "NO", r < 0 ? "SERVERBUG" : code,
			     r < 0 ? err : "below UIDNEXT here: the mailboxes need a sync");
		return;
	}
	if (!cl_master_modseq_fits(cl, mb, modseq)) {
		proto_flags_free(&fl);
		answer_spent_here(a, mb);
		return;
	}
	struct stor_append sa;
	memset(&sa, 0, sizeof(sa));
	if (save_text(db, a, &sv, &sa.text, &sa.text_len) < 0) {
		proto_flags_free(&fl);
		return;
	}
	sa.uid = uid;
	sa.modseq = modseq;
	sa.guid = &guid;
	sa.flags = fl.flags;
	sa.keywords = (const char *const *)fl.keywords.items;
	sa.keyword_count = fl.keywords.count;
	sa.internaldate = sv.date;
	sa.internaldate_tz = sv.tz;
	/* The master's flag stamps (SPEC 10.2): its times, not ours. */
	stor_stamp_list stamps = ARRAY_INIT;
	const struct proto_arg *sta = proto_cmd_option(cmd, 6, "STAMPS");
	if (sta != NULL && sync_arg_stamps(sta, &stamps) < 0) {
		proto_flags_free(&fl);
		answer_later(a, "BAD", "ARGS", "malformed STAMPS");
		return;
	}
	sa.stamps_given = sta != NULL;
	sa.stamps = stamps.items;
	sa.stamp_count = stamps.count;
	uint32_t elsewhere;
	int dup = stor_msg_find_guid(db, &mb->guid, &guid, &elsewhere, &err);
	if (stor_msg_append(db, &mb->guid, &sa, NULL, NULL, &err) < 0) {
		bool big = stor_last_error_kind(db) == STOR_ERROR_TOOBIG;
		answer_later(a, "NO", big ? "TOOBIG" : "SERVERBUG", err);
	} else {
		/* The message was here under another UID (a resync moved it
		 * on one side): one of the two goes, the higher UID stays,
		 * as every node decides (stor_msg_dedupe). */
		if (dup > 0 && elsewhere != uid &&
		    stor_msg_dedupe(db, &mb->guid, NULL, &err) < 0)
			log_errorx("replication: removing a doubled message: %s", err);
		cl_master_modseq_taken(cl, &mb->guid, modseq);
		cl_notify_later(cl, mb->user, &mb->guid);
		answer_later(a, "OK", code, "stored");
	}
	stor_stamp_list_free(&stamps);
	proto_flags_free(&fl);
}

void apply_store(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
		 size_t npos, const struct stor_mailbox *mb)
{
	bool differ = false;
	struct stor_db *db = cl->repl.db;
	struct proto_store ps;
	const char *err;
	int cr = proto_read_store(cmd, PROTO_STORE_GIVEN, PROTO_MAX_CHANGE_UIDS, &ps, &err);
	if (cr == PROTO_CODEC_LIMIT) {
		answer_later(a, "NO", "LIMIT", MAIL_LIMITS_TEXT);
		return;
	}
	if (cr < 0)
		goto bad;
	stor_uid_list uids = { ps.uids, ps.uid_count, ps.uid_count };
	uint64_t modseq = ps.modseq;
	struct proto_flags fl = ps.add;
	bool moved = false;
	if (keep_same_messages(db, &mb->guid, proto_cmd_option(cmd, npos, "GUIDS"), &uids,
			       &differ, &moved) < 0) {
		proto_flags_free(&fl);
		ARRAY_FREE(&uids);
		goto bad;
	}
	if (!cl_master_modseq_fits(cl, mb, modseq)) {
		/* Copies that already agree (the change came here before, by
		 * a sync or a forward) keep their higher modseq. */
		bool changes = false;
		for (size_t i = 0; i < uids.count && !changes; i++) {
			struct stor_msg m;
			int r = stor_msg_get(db, &mb->guid, uids.items[i], &m, &err);
			changes = r < 0 || (r > 0 && !flags_same(&m, &fl));
			if (r > 0)
				stor_msg_free(&m);
		}
		char code[64];
		snprintf(code, sizeof(code), "MODSEQ %" PRIu64, modseq);
		if (changes)
			answer_spent_here(a, mb);
		else if (moved)
			answer_moved_here(a);
		else if (differ)
			answer_later(a, "NO", "GUIDMISMATCH", "a UID holds another message here");
		else
			answer_later(a, "OK", code, "already stored");
		proto_flags_free(&fl);
		ARRAY_FREE(&uids);
		return;
	}
	struct stor_store st;
	memset(&st, 0, sizeof(st));
	st.op = STOR_FLAGS_REPLACE;
	st.flags = fl.flags;
	st.keywords = (const char *const *)fl.keywords.items;
	st.keyword_count = fl.keywords.count;
	st.modseq = modseq;
	/* With the master's stamps, a flag changed here later than the
	 * master's change (both sides wrote while apart) keeps its value: the
	 * resync that follows a catch-up decides it alike on both (SPEC 8.6). */
	stor_stamp_list stamps = ARRAY_INIT;
	const struct proto_arg *sta = proto_cmd_option(cmd, npos, "STAMPS");
	if (sta != NULL && sync_arg_stamps(sta, &stamps) < 0) {
		proto_flags_free(&fl);
		ARRAY_FREE(&uids);
		goto bad;
	}
	st.stamps = stamps.items;
	st.stamp_count = stamps.count;
	st.keep_later_local = sta != NULL;
	stor_msg_list changed = ARRAY_INIT;
	char code[64];
	snprintf(code, sizeof(code), "MODSEQ %" PRIu64, modseq);
	if (stor_msg_store(db, &mb->guid, uids.items, uids.count, &st, &changed, NULL, &err) < 0 ||
	    stor_mailbox_raise(db, &mb->guid, 0, modseq, &err) < 0) {
		answer_later(a, "NO", "SERVERBUG", err);
	} else if (differ) {
		cl_master_modseq_taken(cl, &mb->guid, modseq);
		answer_later(a, "NO", "GUIDMISMATCH", "a UID holds another message here");
	} else if (moved) {
		cl_master_modseq_taken(cl, &mb->guid, modseq);
		if (changed.count > 0)
			cl_notify_later(cl, mb->user, &mb->guid);
		answer_moved_here(a);
	} else {
		cl_master_modseq_taken(cl, &mb->guid, modseq);
		if (changed.count > 0)
			cl_notify_later(cl, mb->user, &mb->guid);
		answer_later(a, "OK", code, "stored");
	}
	stor_msg_list_free(&changed);
	stor_stamp_list_free(&stamps);
	proto_flags_free(&fl);
	ARRAY_FREE(&uids);
	return;
bad:
	answer_later(a, "BAD", "ARGS", "from the master: STORE uidset modseq flags (\\*)");
}

void apply_expunge(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
		   size_t npos, const struct stor_mailbox *mb)
{
	bool differ = false;
	struct stor_db *db = cl->repl.db;
	stor_uid_list gone = ARRAY_INIT;
	struct proto_expunge pe;
	const char *err;
	int cr = proto_read_expunge(cmd, PROTO_EXPUNGE_GIVEN, PROTO_MAX_CHANGE_UIDS, &pe, &err);
	if (cr == PROTO_CODEC_LIMIT) {
		answer_later(a, "NO", "LIMIT", MAIL_LIMITS_TEXT);
		return;
	}
	if (cr < 0) {
		answer_later(a, "BAD", "ARGS", "EXPUNGE uidset modseq");
		return;
	}
	stor_uid_list uids = { pe.uids, pe.uid_count, pe.uid_count };
	uint64_t modseq = pe.modseq;
	uint32_t top = 0;
	for (size_t i = 0; i < uids.count; i++)
		if (uids.items[i] > top)
			top = uids.items[i];
	if (keep_same_messages(db, &mb->guid, proto_cmd_option(cmd, npos, "GUIDS"), &uids,
			       &differ, NULL) < 0) {
		ARRAY_FREE(&uids);
		answer_later(a, "BAD", "ARGS", "GUIDS does not match the UIDs");
		return;
	}
	for (size_t i = 0; i < uids.count; i++)
		if (uids.items[i] > top)
			top = uids.items[i];
	char code[64];
	snprintf(code, sizeof(code), "MODSEQ %" PRIu64, modseq);
	if (!cl_master_modseq_fits(cl, mb, modseq)) {
		bool held = false;
		for (size_t i = 0; i < uids.count && !held; i++)
			held = stor_msg_get(db, &mb->guid, uids.items[i], NULL, &err) != 0;
		if (held)
			answer_spent_here(a, mb);
		else if (differ)
			answer_later(a, "NO", "GUIDMISMATCH", "a UID holds another message here");
		else
			answer_later(a, "OK", code, "expunged");
		ARRAY_FREE(&uids);
		return;
	}
	/* UIDs we never held are above our UIDNEXT no longer: the master's
	 * UIDNEXT is past them too.  A user's expunge says BY USER; without it
	 * (a sync on the master dropped a copy, or a master that does not say)
	 * the engine's, so such a copy is never taken here for one a user
	 * expunged (SPEC.md 10.3, "A user's expunge"). */
	bool by_user = proto_cmd_option(cmd, npos, "BY") != NULL;
	/* The engine's expunge: a sync there moved the message on (or kept
	 * another copy of it).  Our copy may hold a change made here that
	 * the sender never got (this node wrote apart from it and has not
	 * resynced since): dropped here, and the copy the sender keeps
	 * without it, that change was lost on both (the fault campaign's
	 * flag-holds, all classes 13039).  Refused, the resync merges our
	 * copy's flags into the one the sender kept (SPEC.md 10.3). */
	if (!by_user && cl_peer_may_lack_user(cl, a->sid, mb->user)) {
		bool held = false;
		for (size_t i = 0; i < uids.count && !held; i++)
			held = stor_msg_get(db, &mb->guid, uids.items[i], NULL, &err) != 0;
		if (held) {
			answer_later(a, "NO", "UNSYNCED",
				     "a copy here may hold changes the sender lacks: the mailboxes "
				     "need a sync");
			ARRAY_FREE(&uids);
			return;
		}
	}
	if (stor_msg_expunge_kind(db, &mb->guid, uids.items, uids.count, modseq, by_user, &gone,
				  &err) < 0 ||
	    stor_mailbox_raise(db, &mb->guid, top + 1, modseq, &err) < 0) {
		answer_later(a, "NO", "SERVERBUG", err);
	} else {
		cl_master_modseq_taken(cl, &mb->guid, modseq);
		if (gone.count > 0)
			cl_notify_later(cl, mb->user, &mb->guid);
		if (differ)
			answer_later(a, "NO", "GUIDMISMATCH", "a UID holds another message here");
		else
			answer_later(a, "OK", code, "expunged");
	}
	ARRAY_FREE(&gone);
	ARRAY_FREE(&uids);
}

static int arg_cstr(const struct proto_arg *arg, const char **s_r, size_t max)
{
	size_t len;
	if (proto_arg_str(arg, s_r, &len) < 0 || len == 0 || len > max ||
	    memchr(*s_r, '\0', len) != NULL)
		return -1;
	return 0;
}

/* A streamed PSEEN (SPEC.md 7.7) is refused, as the other changes are,
 * at a modseq this copy may have spent itself (10.3). */
struct pseen_fit {
	const struct repl_cluster *cl;
	const struct stor_mailbox *mb;
};

static bool pseen_fits(void *ctx, uint64_t modseq)
{
	const struct pseen_fit *f = ctx;
	return cl_master_modseq_fits(f->cl, f->mb, modseq);
}

void apply_pseen(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
		 const struct stor_mailbox *mb)
{
	struct repl_pseen_reply rep;
	struct pseen_fit fit = { cl, mb };
	repl_pseen_apply_streamed(cl->repl.db, &mb->guid, cmd, pseen_fits, &fit, &rep);
	if (rep.spent) {
		answer_spent_here(a, mb);
		return;
	}
	if (rep.changed) {
		/* The next record of the same change comes at the same modseq. */
		cl_master_modseq_taken(cl, &mb->guid, rep.modseq);
		cl_notify_later(cl, mb->user, &mb->guid);
	}
	answer_later(a, rep.status, rep.code, rep.text);
}

/* ACL-PUT (SPEC.md 7.6): the newer record is kept, an older one is not an
 * error (idempotent). */
void apply_acl_put(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd)
{
	const char *owner, *identifier, *rights, *err;
	size_t rlen;
	struct guid guid;
	uint64_t time_ms;
	if (arg_cstr(&cmd->args[0], &owner, STOR_MAX_USER_LEN) < 0 ||
	    proto_arg_guid(&cmd->args[1], &guid) < 0 ||
	    arg_cstr(&cmd->args[2], &identifier, STOR_MAX_USER_LEN + 1) < 0 ||
	    proto_arg_str(&cmd->args[3], &rights, &rlen) < 0 || memchr(rights, '\0', rlen) != NULL ||
	    proto_arg_u64(&cmd->args[4], INT64_MAX, &time_ms) < 0) {
		answer_later(a, "BAD", "ARGS", "bad ACL-PUT record");
		return;
	}
	uint32_t bits;
	if (!acl_identifier_valid(identifier, strlen(identifier), &err) ||
	    !acl_owner_valid(owner) ||
	    acl_rights_parse(rights, rlen, &bits, &err) < 0) {
		answer_later(a, "BAD", "ARGS", "bad ACL-PUT record");
		return;
	}
	struct stor_mailbox mb;
	int held = stor_mailbox_get_by_guid(cl->repl.db, &guid, &mb, &err);
	if (held > 0) {
		bool other = strcmp(mb.user, owner) != 0;
		stor_mailbox_free(&mb);
		if (other) {
			answer_later(a, "BAD", "ARGS", "the mailbox has another owner");
			return;
		}
	}
	bool applied = false;
	if (stor_acl_put(cl->repl.db, owner, &guid, identifier, rights, (int64_t)time_ms, &applied,
			 &err) < 0) {
		answer_later(a, "NO", "SERVERBUG", err);
		return;
	}
	answer_later(a, "OK", NULL, applied ? "applied" : "already newer");
}

/* 1 when a streamed DELETE's UIDNEXT (what the mailbox held where it was
 * deleted) is below a message held here: that message reached this copy
 * and never the deleting node's, so the delete was made without it.  0
 * without UIDNEXT (an earlier build: deleted as before), -1 error. */
static int held_beyond(struct stor_db *db, const struct proto_cmd *cmd, size_t npos,
		       const struct guid *mailbox, const char **error_r)
{
	const struct proto_arg *opt = proto_cmd_option(cmd, npos, "UIDNEXT");
	uint32_t uidnext;
	if (opt == NULL || proto_arg_u32(opt, &uidnext) < 0)
		return 0;
	stor_msg_list msgs = ARRAY_INIT;
	if (stor_msg_list_range(db, mailbox, uidnext, UINT32_MAX, &msgs, error_r) < 0)
		return -1;
	int r = msgs.count > 0;
	stor_msg_list_free(&msgs);
	return r;
}

void apply_list_change(struct repl_cluster *cl, struct answer *a,
		       const struct proto_cmd *cmd, size_t npos)
{
	struct stor_db *db = cl->repl.db;
	const char *user, *name, *new_name, *err;
	struct guid guid;
	struct stor_mailbox mb;
	char code[96];
	if (arg_cstr(&cmd->args[0], &user, STOR_MAX_USER_LEN) < 0 ||
	    arg_cstr(&cmd->args[1], &name, STOR_MAX_MAILBOX_NAME_LEN) < 0) {
		answer_later(a, "BAD", "ARGS", "bad user or mailbox name");
		return;
	}
	if (proto_cmd_is(cmd, "SUBSCRIBE") || proto_cmd_is(cmd, "UNSUBSCRIBE")) {
		bool on = proto_cmd_is(cmd, "SUBSCRIBE");
		if (stor_subscribe(db, user, name, on, &err) < 0)
			answer_later(a, "NO", "SERVERBUG", err);
		else
			answer_later(a, "OK", NULL, on ? "subscribed" : "unsubscribed");
		return;
	}
	size_t gpos = proto_cmd_is(cmd, "RENAME") ? 3 : 2;
	if (npos <= gpos || proto_arg_guid(&cmd->args[gpos], &guid) < 0) {
		answer_later(a, "BAD", "ARGS", "bad mailbox GUID");
		return;
	}
	int have = stor_mailbox_get_by_guid(db, &guid, &mb, &err);
	if (have < 0) {
		answer_later(a, "NO", "SERVERBUG", err);
		return;
	}
	if (have > 0 && strcmp(mb.user, user) != 0) {
		stor_mailbox_free(&mb);
		answer_later(a, "NO", "ALREADYEXISTS", "the GUID belongs to another user");
		return;
	}
	if (proto_cmd_is(cmd, "DELETE")) {
		int beyond = have > 0 ? held_beyond(db, cmd, npos, &guid, &err) : 0;
		if (beyond != 0) {
			stor_mailbox_free(&mb);
			if (beyond < 0) {
				answer_later(a, "NO", "SERVERBUG", err);
				return;
			}
			/* A change beats a delete (SPEC.md 10.5): the resync the
			 * sender queues on NO brings the mailbox back there. */
			log_info("replication: %s: DELETE of %s refused: it holds messages the "
				 "deleting node never saw", user, name);
			answer_later(a, "NO", "UNSYNCED",
				     "the mailbox holds messages the deleting node never saw");
			return;
		}
		if (have > 0) {
			stor_mailbox_free(&mb);
			if (stor_mailbox_delete(db, &guid, &err) < 0) {
				answer_later(a, "NO", "SERVERBUG", err);
				return;
			}
			cl_notify_later(cl, user, &guid);
		} else if (stor_mailbox_tomb_add(db, user, &guid, name, &err) < 0) {
			/* Not here (yet): its tombstone keeps a CREATE another
			 * node replays later from bringing it back. */
			answer_later(a, "NO", "SERVERBUG", err);
			return;
		}
		answer_later(a, "OK", NULL, "deleted");
		return;
	}
	if (proto_cmd_is(cmd, "CREATE") && have == 0) {
		int gone = stor_mailbox_tomb_get(db, user, &guid, NULL, NULL, &err);
		if (gone != 0) {
			/* Deleted here after it was created: a CREATE that comes
			 * now was overtaken (replayed from an older log); the
			 * resync the origin queues on NO settles it. */
			answer_later(a, "NO", gone < 0 ? "SERVERBUG" : "NONEXISTENT",
				     gone < 0 ? err : "the mailbox was deleted here");
			return;
		}
	}
	const char *target = name;
	if (proto_cmd_is(cmd, "RENAME")) {
		if (arg_cstr(&cmd->args[2], &new_name, STOR_MAX_MAILBOX_NAME_LEN) < 0) {
			if (have > 0)
				stor_mailbox_free(&mb);
			answer_later(a, "BAD", "ARGS", "bad new name");
			return;
		}
		target = new_name;
		if (have == 0) {
			answer_later(a, "NO", "NONEXISTENT", "no mailbox with that GUID");
			return;
		}
		if (strcmp(mb.name, target) != 0 && strcmp(mb.name, name) != 0) {
			/* Renamed here too since the origin renamed it: applied
			 * as given, the two renames would cross and leave the
			 * mailbox under each other's name.  Refused; the origin
			 * resyncs and the list merge keeps one name (SPEC 10.5). */
			stor_mailbox_free(&mb);
			answer_later(a, "NO", "NONEXISTENT",
				     "the mailbox has another name here (renamed meanwhile)");
			return;
		}
	}
	if (have > 0 && strcmp(mb.name, target) == 0) {
		stor_mailbox_free(&mb);
		answer_later(a, "OK", NULL, "already so");
		return;
	}
	struct stor_mailbox other;
	int taken = stor_mailbox_get(db, user, target, &other, &err);
	if (taken != 0) {
		if (have > 0)
			stor_mailbox_free(&mb);
		if (taken < 0) {
			answer_later(a, "NO", "SERVERBUG", err);
			return;
		}
		char hex[GUID_HEX_SIZE];
		guid_to_hex(&other.guid, hex);
		stor_mailbox_free(&other);
		snprintf(code, sizeof(code), "ALREADYEXISTS %s", hex);
		answer_later(a, "NO", code, "the name has another mailbox");
		return;
	}
	int r;
	if (proto_cmd_is(cmd, "RENAME")) {
		/* RSTAMP: the origin's stamp of the new name, copied (SPEC.md
		 * 7.3); without it (a 1.0 peer) the stamp here stays. */
		const struct proto_arg *rsa = proto_cmd_option(cmd, npos, "RSTAMP");
		uint64_t rs;
		if (rsa != NULL && proto_arg_u64(rsa, INT64_MAX, &rs) < 0) {
			stor_mailbox_free(&mb);
			answer_later(a, "BAD", "ARGS", "bad RSTAMP");
			return;
		}
		r = rsa != NULL ? stor_mailbox_rename_stamped(db, &guid, target, rs, &err)
				: stor_mailbox_rename(db, &guid, target, &err);
		stor_mailbox_free(&mb);
	} else if (have > 0) {
		/* CREATE of a mailbox we hold under another name: renamed
		 * meanwhile; a resync settles which name wins. */
		stor_mailbox_free(&mb);
		answer_later(a, "NO", "ALREADYEXISTS", "the GUID has another name here");
		return;
	} else {
		uint32_t uidvalidity;
		const struct proto_arg *su = proto_cmd_option(cmd, npos, "SPECIAL-USE");
		struct stor_mailbox_create req;
		memset(&req, 0, sizeof(req));
		if (proto_arg_u32(&cmd->args[3], &uidvalidity) < 0 || uidvalidity == 0) {
			answer_later(a, "BAD", "ARGS", "bad UIDVALIDITY");
			return;
		}
		req.user = user;
		req.name = name;
		req.guid = &guid;
		req.uidvalidity = uidvalidity;
		if (su != NULL && su->type == PROTO_ARG_LIST && su->count == 1 &&
		    su->list[0].type == PROTO_ARG_ATOM && su->list[0].len < 16)
			req.special_use = su->list[0].str;
		r = stor_mailbox_create(db, &req, NULL, &err);
	}
	if (r < 0) {
		answer_later(a, "NO", "SERVERBUG", err);
		return;
	}
	cl_notify_later(cl, user, &guid);
	answer_later(a, "OK", NULL, "done");
}
