/* What peers send this node outside a sync (SPEC.md 7.3 and 8):
 *  - changes their origin already made (option ORIGIN): the master's
 *    SAVE, STORE and EXPUNGE with UIDs and modseqs, and mailbox-list
 *    changes.  Applied as given, idempotently; a change that does not fit
 *    (a UID holding another message, or below UIDNEXT where a client may
 *    have seen the gap) is refused with UIDCONFLICT and the origin queues a
 *    resync.  Answered once durable here.
 *  - requests to this node as master (SAVE with UID 0, STORE, EXPUNGE from
 *    a node whose client asked): served like a local change when this node
 *    is the master of the granule at its epoch, else refused NOTMASTER so
 *    the sender asks the root again. */
#include "replicator/repl-cluster-private.h"

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
#include "storage/storage-pseen.h"
#include "sync/sync.h"

/* An answer to send once the change is durable (or replicated). */
struct answer {
	struct repl_cluster *cl;
	uint32_t sid;
	uint64_t gen;
	char tag[PROTO_MAX_TAG + 1];
	char status[4];
	char code[128];
	char *text;
	/* STORE as master */
	stor_uid_list uids;
	stor_string_list keywords;
	struct stor_store store;
	struct guid mailbox;
	char *user;
	char *seen_of; /* STORE SEEN-OF: the user whose private \Seen it changes */
	/* SAVE with REQ: the GUID asked for; the answer names the one made
	 * when the master gave the copy another (SPEC 6.4). */
	struct guid save_guid;
	bool save_req;
};

static struct answer *answer_new(struct repl_cluster *cl, struct cl_peer *p,
				 const struct proto_cmd *cmd)
{
	struct answer *a = xcalloc(1, sizeof(*a));
	a->cl = cl;
	a->sid = p->sid;
	a->gen = p->link_gen;
	snprintf(a->tag, sizeof(a->tag), "%s", cmd->tag);
	return a;
}

static void answer_free(struct answer *a)
{
	ARRAY_FREE(&a->uids);
	stor_string_list_free(&a->keywords);
	free(a->text);
	free(a->user);
	free(a->seen_of);
	free(a);
}

/* The link the command came on, if it is still the same one. */
static struct proto_conn *answer_conn(const struct answer *a)
{
	struct cl_peer *p = cl_peer_find(a->cl, a->sid);
	if (p == NULL || p->conn == NULL || p->link_gen != a->gen)
		return NULL;
	return p->conn;
}

static void answer_send(struct answer *a)
{
	struct proto_conn *conn = answer_conn(a);
	if (conn != NULL)
		proto_conn_reply(conn, a->tag, a->status, a->code[0] != '\0' ? a->code : NULL,
				 a->text != NULL ? a->text : "done");
	answer_free(a);
}

static void answer_durable(void *ctx, bool ok)
{
	struct answer *a = ctx;
	if (!ok) {
		snprintf(a->status, sizeof(a->status), "NO");
		snprintf(a->code, sizeof(a->code), "SERVERBUG");
		free(a->text);
		a->text = xstrdup("could not make the change durable");
	}
	answer_send(a);
}

/* Answers after the next group commit: whatever this command wrote is
 * durable then. */
static void answer_later(struct answer *a, const char *status, const char *code,
			 const char *text)
{
	snprintf(a->status, sizeof(a->status), "%s", status);
	snprintf(a->code, sizeof(a->code), "%s", code != NULL ? code : "");
	a->text = xstrdup(text);
	stor_on_durable(a->cl->repl.db, answer_durable, a);
}

/* ---- Changes from their origin ---- */

/* GUIDS (g ...) of a replicated STORE or EXPUNGE names the message of each
 * UID (in the uidset's order); UIDs that hold another message here are
 * dropped from uids: the copies differ there and a resync decides.
 * Returns 0, or -1 when the list does not match the UIDs. */
static int keep_same_messages(struct stor_db *db, const struct guid *mailbox,
			      const struct proto_arg *guids, stor_uid_list *uids, bool *differ_r)
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
		}
		uids->items[kept++] = uids->items[i];
	}
	uids->count = kept;
	return 0;
}


/* The text argument of a SAVE: a literal (*text_r set), or NIL for a text
 * this node holds under guid (*text_r NULL).  Otherwise answers a and
 * returns -1. */
static int save_text(struct stor_db *db, struct answer *a, const struct proto_save *sv,
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

static void apply_save(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
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
		cl_notify_later(cl, mb->user, &mb->guid);
		answer_later(a, "OK", code, "stored");
	}
	stor_stamp_list_free(&stamps);
	proto_flags_free(&fl);
}

static void apply_store(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
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
	if (keep_same_messages(db, &mb->guid, proto_cmd_option(cmd, npos, "GUIDS"), &uids,
			       &differ) < 0) {
		proto_flags_free(&fl);
		ARRAY_FREE(&uids);
		goto bad;
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
		answer_later(a, "NO", "GUIDMISMATCH", "a UID holds another message here");
	} else {
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

static void apply_expunge(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
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
			       &differ) < 0) {
		ARRAY_FREE(&uids);
		answer_later(a, "BAD", "ARGS", "GUIDS does not match the UIDs");
		return;
	}
	for (size_t i = 0; i < uids.count; i++)
		if (uids.items[i] > top)
			top = uids.items[i];
	char code[64];
	snprintf(code, sizeof(code), "MODSEQ %" PRIu64, modseq);
	/* UIDs we never held are above our UIDNEXT no longer: the master's
	 * UIDNEXT is past them too.  A user's expunge says BY USER; without it
	 * (a sync on the master dropped a copy, or a master that does not say)
	 * the engine's, so such a copy is never taken here for one a user
	 * expunged (SPEC.md 10.3, "A user's expunge"). */
	bool by_user = proto_cmd_option(cmd, npos, "BY") != NULL;
	if (stor_msg_expunge_kind(db, &mb->guid, uids.items, uids.count, modseq, by_user, &gone,
				  &err) < 0 ||
	    stor_mailbox_raise(db, &mb->guid, top + 1, modseq, &err) < 0) {
		answer_later(a, "NO", "SERVERBUG", err);
	} else {
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

static void apply_pseen(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
			const struct stor_mailbox *mb)
{
	struct repl_pseen_reply rep;
	repl_pseen_apply_streamed(cl->repl.db, &mb->guid, cmd, &rep);
	if (rep.changed)
		cl_notify_later(cl, mb->user, &mb->guid);
	answer_later(a, rep.status, rep.code, rep.text);
}

static int arg_cstr(const struct proto_arg *arg, const char **s_r, size_t max)
{
	size_t len;
	if (proto_arg_str(arg, s_r, &len) < 0 || len == 0 || len > max ||
	    memchr(*s_r, '\0', len) != NULL)
		return -1;
	return 0;
}

/* ACL-PUT (SPEC.md 7.6): the newer record is kept, an older one is not an
 * error (idempotent). */
static void apply_acl_put(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd)
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

static void apply_list_change(struct repl_cluster *cl, struct answer *a,
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
		r = stor_mailbox_rename(db, &guid, target, &err);
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

static void master_answer_cb(void *ctx, const struct repl_result *res)
{
	struct answer *a = ctx;
	struct proto_conn *conn = answer_conn(a);
	if (conn == NULL) {
		answer_free(a);
		return;
	}
	if (res->error != REPL_OK) {
		const char *code = res->error == REPL_ERR_TOOBIG ? "TOOBIG" :
				   res->error == REPL_ERR_LIMIT ? "LIMIT" :
				   res->error == REPL_ERR_NOTFOUND ? "NONEXISTENT" :
				   res->error == REPL_ERR_UNAVAILABLE ? "UNAVAILABLE" : "SERVERBUG";
		proto_conn_reply(conn, a->tag, "NO", code,
				 res->error_msg != NULL ? res->error_msg : "failed");
		answer_free(a);
		return;
	}
	char code[160];
	const char *err;
	if (a->status[0] == 'A') { /* APPEND */
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
			answer_free(a);
			return;
		}
	} else { /* EXPUNGE */
		snprintf(code, sizeof(code), "MODSEQ %" PRIu64, res->modseq);
	}
	proto_conn_reply(conn, a->tag, "OK", code, "done");
	answer_free(a);
}

static void serve_save(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
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
	/* A resent SAVE (the link dropped before our answer) is recognised
	 * by its GUID (SPEC 6.4); with REQ, cl_master_append() tells a
	 * resent copy from another copy. */
	uint32_t have_uid;
	if (rq == NULL && stor_msg_find_guid(db, &mb->guid, &req.guid, &have_uid, &err) > 0) {
		struct stor_msg m;
		char code[96];
		proto_flags_free(&fl);
		if (stor_msg_get(db, &mb->guid, have_uid, &m, &err) > 0) {
			snprintf(code, sizeof(code), "UID %u MODSEQ %" PRIu64, have_uid, m.modseq);
			stor_msg_free(&m);
			answer_later(a, "OK", code, "already saved");
			return;
		}
		answer_later(a, "NO", "SERVERBUG", err);
		return;
	}
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

static void serve_store(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
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
	a->mailbox = mb->guid;
	a->user = xstrdup(mb->user);
	snprintf(a->status, sizeof(a->status), "S");
	cl_master_store(cl, a->user, &a->mailbox, a->uids.items, a->uids.count, &a->store,
			master_answer_cb, a);
}

static void serve_expunge(struct repl_cluster *cl, struct answer *a, const struct proto_cmd *cmd,
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

/* ---- Dispatch ---- */

void cl_replica_command(void *ctx, uint32_t sid, struct proto_conn *conn,
			const struct proto_cmd *cmd, const struct guid *selected)
{
	struct repl_cluster *cl = ctx;
	struct cl_peer *p = cl_peer_find(cl, sid);
	size_t npos;
	const char *verr;
	if (p == NULL || p->conn != conn) {
		proto_conn_reply(conn, cmd->tag, "NO", "TRYLATER", "link not ready");
		return;
	}
	bool message_cmd = proto_cmd_is(cmd, "SAVE") || proto_cmd_is(cmd, "STORE") ||
			   proto_cmd_is(cmd, "EXPUNGE") || proto_cmd_is(cmd, "COPY") ||
			   proto_cmd_is(cmd, "PSEEN");
	if (message_cmd && selected == NULL) {
		proto_conn_reply(conn, cmd->tag, "BAD", "NOSELECT", "no mailbox selected");
		return;
	}
	if (proto_cmd_validate(cmd, &npos, &verr) < 0) {
		proto_conn_reply(conn, cmd->tag, "BAD", "ARGS", verr);
		return;
	}
	if (cl_relay_command(cl, p, cmd, npos, selected))
		return;
	struct answer *a = answer_new(cl, p, cmd);
	const struct proto_arg *origin_arg = proto_cmd_option(cmd, npos, "ORIGIN");
	bool origin = origin_arg != NULL;
	uint32_t origin_sid = 0;
	if (origin)
		(void)proto_arg_u32(origin_arg, &origin_sid);
	if (proto_cmd_is(cmd, "CREATE") || proto_cmd_is(cmd, "DELETE") ||
	    proto_cmd_is(cmd, "RENAME") || proto_cmd_is(cmd, "SUBSCRIBE") ||
	    proto_cmd_is(cmd, "UNSUBSCRIBE") || proto_cmd_is(cmd, "ACL-PUT")) {
		const char *user;
		size_t ulen;
		if (cl->sync != NULL && proto_arg_str(&cmd->args[0], &user, &ulen) == 0 &&
		    repl_sync_holds(cl->sync, user, NULL)) {
			answer_later(a, "NO", "TRYLATER", "a resync of this user is running");
			return;
		}
		if (origin && proto_arg_str(&cmd->args[0], &user, &ulen) == 0)
			cl_relay_origin(cl, p, cmd, npos, origin_sid, user, NULL);
		if (proto_cmd_is(cmd, "ACL-PUT"))
			apply_acl_put(cl, a, cmd);
		else
			apply_list_change(cl, a, cmd, npos);
		return;
	}
	if (proto_cmd_is(cmd, "COPY")) {
		answer_later(a, "NO", "UNKNOWN-COMMAND", "send SAVE with the GUID instead");
		return;
	}
	if (selected == NULL) {
		answer_later(a, "BAD", "NOSELECT", "no mailbox selected");
		return;
	}
	struct stor_mailbox mb;
	struct cl_refusal refusal;
	const char *err;
	int r = stor_mailbox_get_by_guid(cl->repl.db, selected, &mb, &err);
	if (r <= 0) {
		answer_later(a, "NO", r < 0 ? "SERVERBUG" : "NONEXISTENT",
			     r < 0 ? err : "the selected mailbox is gone");
		return;
	}
	if (cl->sync != NULL && repl_sync_holds(cl->sync, mb.user, &mb.guid)) {
		/* The resync compares snapshots of this mailbox: the
		 * change comes again once it is done. */
		answer_later(a, "NO", "TRYLATER", "a resync of this mailbox is running");
	} else if (origin && cl_handover_check_origin(cl, cmd, npos, origin_sid, mb.user, &mb.guid,
						      &refusal) < 0) {
		/* Not its master's at our epoch: a resync settles it (any NO
		 * makes the sender queue one), nothing is passed on. */
		log_info("replication: %s: change from %u refused: %s %s", mb.user, origin_sid,
			 refusal.code, refusal.text);
		answer_later(a, refusal.status, refusal.code, refusal.text);
	} else if (origin) {
		cl_relay_origin(cl, p, cmd, npos, origin_sid, mb.user, &mb);
		if (proto_cmd_is(cmd, "SAVE"))
			apply_save(cl, a, cmd, &mb);
		else if (proto_cmd_is(cmd, "STORE"))
			apply_store(cl, a, cmd, npos, &mb);
		else if (proto_cmd_is(cmd, "PSEEN"))
			apply_pseen(cl, a, cmd, &mb);
		else
			apply_expunge(cl, a, cmd, npos, &mb);
	} else if (proto_cmd_is(cmd, "PSEEN")) {
		/* Outside a sync a record only travels as a change made. */
		answer_later(a, "BAD", "ARGS", "PSEEN outside a sync needs ORIGIN");
	} else if (!cl_is_master(cl, mb.user, &mb.guid)) {
		answer_later(a, "NO", "NOTMASTER", "not the master of this mailbox");
	} else if (cl_handover_check_forward(cl, cmd, npos, mb.user, &refusal) < 0) {
		answer_later(a, refusal.status, refusal.code, refusal.text);
	} else if (proto_cmd_is(cmd, "SAVE")) {
		serve_save(cl, a, cmd, npos, &mb);
	} else if (proto_cmd_is(cmd, "STORE")) {
		serve_store(cl, a, cmd, npos, &mb);
	} else {
		serve_expunge(cl, a, cmd, npos, &mb);
	}
	stor_mailbox_free(&mb);
}
