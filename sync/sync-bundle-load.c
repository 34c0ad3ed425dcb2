/* The body of a verified bundle: inflated (check 8) and parsed (check 9)
 * into the scratch store, in bounded steps.  Apart from the import's merge
 * because loading only trusts the body's grammar, never the store's. */
#include "sync/sync-bundle-private.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <zlib.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/passwd.h"
#include "lib/str.h"
#include "lib/xalloc.h"
#include "storage/acl-rights.h"
#include "storage/storage-acl.h"

/* ------------------------------------------------------------------ */
/* The body: inflated (check 8) and parsed (check 9) into the scratch store */

static int ld_fail(struct loader *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int ld_fail(struct loader *l, const char *fmt, ...)
{
	if (l->error != NULL)
		return -1;
	va_list ap;
	struct buf b = BUF_INIT;
	buf_append_str(&b, "bundle refused: ");
	va_start(ap, fmt);
	buf_vappendf(&b, fmt, ap);
	va_end(ap);
	l->error = (char *)buf_steal(&b, NULL);
	return -1;
}

static int ld_user(struct loader *l, const struct proto_arg *a)
{
	const char *s;
	size_t len;
	if (proto_arg_str(a, &s, &len) < 0 || strlen(s) != len || strcmp(s, l->v->user) != 0)
		return ld_fail(l, "the command stream names another user than %s", l->v->user);
	return 0;
}

static int ld_create(struct loader *l, const struct proto_cmd *cmd, size_t npos)
{
	const char *name, *err, *special = NULL;
	size_t len;
	struct guid g;
	uint32_t uidvalidity;
	uint64_t rstamp = 0;
	if (ld_user(l, &cmd->args[0]) < 0)
		return -1;
	if (proto_arg_str(&cmd->args[1], &name, &len) < 0 || strlen(name) != len ||
	    proto_arg_guid(&cmd->args[2], &g) < 0 || proto_arg_u32(&cmd->args[3], &uidvalidity) < 0)
		return ld_fail(l, "bad CREATE");
	/* SPECIAL-USE, RSTAMP (format 1.1), both or neither; the validator
	 * let through no other and none twice. */
	const struct proto_arg *su = proto_cmd_option(cmd, npos, "SPECIAL-USE");
	const struct proto_arg *rs = proto_cmd_option(cmd, npos, "RSTAMP");
	if (cmd->arg_count != npos + (su != NULL ? 2 : 0) + (rs != NULL ? 2 : 0))
		return ld_fail(l, "bad CREATE option");
	if (su != NULL) {
		if (su->type != PROTO_ARG_LIST || su->count != 1 ||
		    su->list[0].type != PROTO_ARG_ATOM || su->list[0].len >= 16)
			return ld_fail(l, "bad CREATE option");
		special = su->list[0].str;
	}
	if (rs != NULL && proto_arg_u64(rs, INT64_MAX, &rstamp) < 0)
		return ld_fail(l, "bad CREATE option");
	struct stor_mailbox_create req = {
		.user = l->v->user, .name = name, .guid = &g, .uidvalidity = uidvalidity,
		.special_use = special,
	};
	if (stor_mailbox_create(l->scratch, &req, NULL, &err) < 0)
		return ld_fail(l, "CREATE %.100s: %s", name, err);
	if (rs != NULL && stor_mailbox_rename_stamped(l->scratch, &g, name, rstamp, &err) < 0)
		return ld_fail(l, "CREATE %.100s: %s", name, err);
	return 0;
}

static int ld_mbox(struct loader *l, const struct proto_cmd *cmd)
{
	uint32_t id, uidvalidity;
	const char *name, *err;
	size_t len;
	struct guid g;
	struct stor_mailbox mb;
	if (proto_arg_u32(&cmd->args[0], &id) < 0 || ld_user(l, &cmd->args[1]) < 0 ||
	    proto_arg_str(&cmd->args[2], &name, &len) < 0 ||
	    proto_arg_u32(&cmd->args[3], &uidvalidity) < 0 || proto_arg_guid(&cmd->args[4], &g) < 0)
		return ld_fail(l, "bad MBOX");
	int r = stor_mailbox_get_by_guid(l->scratch, &g, &mb, &err);
	if (r < 0)
		return ld_fail(l, "MBOX: %s", err);
	bool ok = r > 0 && mb.uidvalidity == uidvalidity && strcmp(mb.name, name) == 0;
	if (r > 0)
		stor_mailbox_free(&mb);
	if (!ok)
		return ld_fail(l, "MBOX of a mailbox the bundle did not create");
	/* Ids are 1, 2, ... in order, so SELECT finds one by index. */
	if (id != l->ids.count + 1)
		return ld_fail(l, "MBOX id %u out of order", id);
	if (l->ids.count >= SYNC_MAX_MAILBOXES)
		return ld_fail(l, "too many mailboxes");
	struct srv_id e = { id, g };
	ARRAY_PUSH(&l->ids, e);
	return 0;
}

static int ld_select(struct loader *l, const struct proto_cmd *cmd)
{
	uint32_t id;
	if (proto_arg_u32(&cmd->args[0], &id) < 0)
		return ld_fail(l, "bad SELECT");
	if (id == 0 || id > l->ids.count)
		return ld_fail(l, "SELECT of an unknown id");
	l->selected = true;
	l->sel = l->ids.items[id - 1].guid;
	return 0;
}

static int ld_sync_begin(struct loader *l, const struct proto_cmd *cmd, size_t npos)
{
	uint64_t last_modseq, hms, last_uidnext, uidnext;
	if (npos != 4 || cmd->arg_count != 4 ||
	    proto_arg_u64(&cmd->args[0], INT64_MAX, &last_modseq) < 0 ||
	    proto_arg_u64(&cmd->args[1], INT64_MAX, &hms) < 0 ||
	    proto_arg_u64(&cmd->args[2], UINT32_MAX, &last_uidnext) < 0 ||
	    proto_arg_u64(&cmd->args[3], UINT32_MAX, &uidnext) < 0 || last_modseq != 0 ||
	    last_uidnext != 1 || uidnext == 0)
		return ld_fail(l, "bad SYNC-BEGIN (a bundle carries whole mailboxes)");
	/* Every SAVE and EXPUNGE that follows stays below these two, so this
	 * bounds all of the mailbox's UIDs and modseqs. */
	if (!mail_uidnext_valid(uidnext) || !mail_modseq_valid(hms))
		return ld_fail(l, "SYNC-BEGIN with %s", MAIL_LIMITS_TEXT);
	l->in_sync = true;
	l->gone = 0;
	l->hms = hms;
	l->uidnext = (uint32_t)uidnext;
	ARRAY_FREE(&l->placeholders);
	return 0;
}

/* Appends to the scratch store.  With text NULL (NIL in the bundle) the
 * text comes from the scratch store or this node, else it is a
 * placeholder that must not stay live (only a tombstone may lack it). */
static int ld_append(struct loader *l, const struct ld_msg *m, const struct proto_arg *text_arg)
{
	const char *err;
	struct buf text = BUF_INIT;
	struct stor_append req = {
		.uid = m->uid, .modseq = m->modseq, .guid = &m->guid, .flags = m->f.flags,
		.keywords = (const char *const *)m->f.keywords.items,
		.keyword_count = m->f.keywords.count,
		.internaldate = m->date, .internaldate_tz = m->tz,
		.stamps_given = true, .stamps = m->stamps.items, .stamp_count = m->stamps.count,
	};
	int ret = 0;
	if (text_arg != NULL) {
		req.text = text_arg->str;
		req.text_len = text_arg->len;
	} else {
		uint64_t size;
		int r = stor_text_exists(l->scratch, &m->guid, &size, &err);
		if (r == 0) {
			r = stor_text_exists(l->db, &m->guid, &size, &err);
			if (r > 0 && size > l->max_message_size)
				r = 0;
			if (r > 0 && stor_text_read(l->db, &m->guid, 0, size, &text, &err) < 0)
				r = -1;
			if (r > 0) {
				req.text = text.data != NULL ? (const void *)text.data : "";
				req.text_len = text.len;
			} else if (r == 0) {
				req.text = "";
				req.text_len = 0;
				ARRAY_PUSH(&l->placeholders, m->uid);
			}
		}
		if (r < 0)
			ret = ld_fail(l, "reading a text: %s", err);
	}
	if (ret == 0 && stor_msg_append(l->scratch, &l->sel, &req, NULL, NULL, &err) < 0)
		ret = ld_fail(l, "SAVE of UID %u: %s", m->uid, err);
	buf_free(&text);
	return ret;
}

/* Whether a tombstone (uid, g) of the bundle would hide a move from the
 * merge: this node holds another message h at uid, which the bundle holds
 * live at another UID (the other node moved it there, a UID conflict
 * fixed).  Without the tombstone the merge sees h held elsewhere, drops
 * ours and takes theirs; with it, it would renumber ours and keep h
 * twice.  1 yes, 0 no, -1 error. */
static int ld_tomb_hides_move(struct loader *l, uint32_t uid, const struct guid *g)
{
	struct stor_msg here;
	const char *err;
	uint32_t at;
	int r = stor_msg_get(l->db, &l->sel, uid, &here, &err);
	if (r <= 0)
		return r < 0 ? ld_fail(l, "%s", err) : 0;
	bool other = guid_cmp(&here.guid, g) != 0;
	if (other)
		r = stor_msg_find_guid(l->scratch, &l->sel, &here.guid, &at, &err);
	stor_msg_free(&here);
	if (!other)
		return 0;
	if (r < 0)
		return ld_fail(l, "%s", err);
	return r > 0 && at != uid;
}

void ld_pending_clear(struct loader *l)
{
	if (l->pending_active) {
		sync_flags_free(&l->pending.f);
		stor_stamp_list_free(&l->pending.stamps);
	}
	l->pending_active = false;
}

/* A held SAVE turned out to be a live message: append it now. */
static int ld_pending_flush(struct loader *l)
{
	if (!l->pending_active)
		return 0;
	int r = ld_append(l, &l->pending, NULL);
	ld_pending_clear(l);
	return r;
}

static int ld_save(struct loader *l, const struct proto_cmd *cmd)
{
	struct ld_msg m;
	struct proto_save ps;
	const char *err;
	memset(&m, 0, sizeof(m));
	int cr = proto_read_save(cmd, PROTO_SAVE_GIVEN, &ps, &err);
	if (cr == PROTO_CODEC_BAD)
		return ld_fail(l, "bad SAVE: %s", err);
	if (cr == PROTO_CODEC_LIMIT || ps.uid >= l->uidnext || ps.modseq > l->hms) {
		if (cr == PROTO_CODEC_OK)
			proto_save_free(&ps);
		return ld_fail(l, "SAVE outside the mailbox's UIDNEXT or HIGHESTMODSEQ");
	}
	m.uid = ps.uid;
	m.modseq = ps.modseq;
	m.guid = ps.guid;
	m.date = ps.date;
	m.tz = ps.tz;
	bool stamped;
	if (sync_cmd_stamps(cmd, 6, &stamped, &m.stamps) < 0) {
		proto_save_free(&ps);
		return ld_fail(l, "bad SAVE stamps");
	}
	if (!stamped)
		sync_stamps_legacy(m.modseq, &m.stamps);
	sync_flags_take(&m.f, &ps.f);
	const struct proto_arg *t = ps.text_arg;
	if (t == NULL) {
		/* Maybe the first half of a tombstone: decided by the next
		 * command. */
		int r = ld_tomb_hides_move(l, m.uid, &m.guid);
		if (r != 0) {
			if (r < 0) {
				sync_flags_free(&m.f);
				stor_stamp_list_free(&m.stamps);
				return -1;
			}
			/* Held with its flags: it may turn out to be live. */
			l->pending = m;
			l->pending_active = true;
			return 0;
		}
	}
	int ret = ld_append(l, &m, t);
	sync_flags_free(&m.f);
	stor_stamp_list_free(&m.stamps);
	return ret;
}

static int ld_expunge(struct loader *l, const struct proto_cmd *cmd)
{
	struct proto_expunge e;
	const char *err;
	bool user;
	struct guid *guids;
	if (proto_read_expunge(cmd, PROTO_EXPUNGE_SYNC, BUNDLE_MAX_EXPUNGE_UIDS, &e, &err) < 0)
		return ld_fail(l, "bad EXPUNGE: %s", err);
	stor_uid_list uids = { e.uids, e.uid_count, e.uid_count };
	uint64_t modseq = e.modseq;
	if (sync_cmd_user_guids(cmd, 2, &uids, &user, &guids) < 0) {
		proto_expunge_free(&e);
		return ld_fail(l, "bad EXPUNGE");
	}
	int ret = 0;
	if (modseq == 0 || modseq > l->hms)
		ret = ld_fail(l, "EXPUNGE outside the mailbox's HIGHESTMODSEQ");
	for (size_t i = 0; i < uids.count && ret == 0; i++) {
		if (uids.items[i] >= l->uidnext)
			ret = ld_fail(l, "EXPUNGE outside the mailbox's UIDNEXT");
	}
	/* GUIDS: a user's expunge (SPEC 11.2), of the message GUIDS names. */
	for (size_t i = 0; user && i < uids.count && ret == 0; i++) {
		struct stor_msg m;
		int r = stor_msg_get(l->scratch, &l->sel, uids.items[i], &m, &err);
		if (r < 0)
			ret = ld_fail(l, "%s", err);
		else if (r > 0 && guid_cmp(&m.guid, &guids[i]) != 0)
			ret = ld_fail(l, "EXPUNGE GUIDS names another message than UID %u holds",
				      uids.items[i]);
		if (r > 0)
			stor_msg_free(&m);
	}
	if (ret == 0 && stor_msg_expunge_kind(l->scratch, &l->sel, uids.items, uids.count, modseq,
					      user, NULL, &err) < 0)
		ret = ld_fail(l, "EXPUNGE: %s", err);
	free(guids);
	proto_expunge_free(&e);
	return ret;
}

/* GONE GUIDS (...): a user's expunges the exporter knows by GUID only
 * (SPEC 11.2).  Recorded in the scratch store at the mailbox's
 * HIGHESTMODSEQ, so the import's merge passes them on. */
static int ld_gone(struct loader *l, const struct proto_cmd *cmd)
{
	struct guid *guids;
	size_t n, added;
	const char *err;
	if (sync_cmd_gone(cmd, &guids, &n) < 0)
		return ld_fail(l, "bad GONE");
	int ret = 0;
	l->gone += n;
	if (l->gone > SYNC_MAX_GONE_PER_SYNC)
		ret = ld_fail(l, "too many GONE GUIDs in one mailbox");
	else if (l->hms == 0)
		ret = ld_fail(l, "GONE in a mailbox with HIGHESTMODSEQ 0");
	else if (stor_guid_tombs_add(l->scratch, &l->sel, guids, n, l->hms, &added, &err) < 0)
		ret = ld_fail(l, "GONE: %s", err);
	free(guids);
	return ret;
}

/* Whether this node expunged the message (GUID g at uid) of the mailbox:
 * then the expunge wins the merge and its text is never needed here. */
static int ld_expunged_here(struct loader *l, uint32_t uid, const struct guid *g,
			    stor_tombstone_list *tombs, bool *loaded)
{
	const char *err;
	if (!*loaded) {
		stor_msg_list msgs;
		struct stor_mailbox mb;
		int r = stor_mailbox_get_by_guid(l->db, &l->sel, &mb, &err);
		if (r < 0)
			return ld_fail(l, "%s", err);
		*loaded = true;
		if (r == 0)
			return 0;
		stor_mailbox_free(&mb);
		if (stor_changes_since(l->db, &l->sel, 0, &msgs, tombs, &err) < 0)
			return ld_fail(l, "%s", err);
		stor_msg_list_free(&msgs);
	}
	/* Tombstones come in UID order. */
	size_t lo = 0, hi = tombs->count;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (tombs->items[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < tombs->count && tombs->items[lo].uid == uid &&
	       guid_cmp(&tombs->items[lo].guid, g) == 0;
}

static int ld_sync_end(struct loader *l)
{
	const char *err;
	struct stor_msg m;
	stor_tombstone_list tombs = ARRAY_INIT;
	bool loaded = false;
	int ret = 0;
	for (size_t i = 0; i < l->placeholders.count && ret == 0; i++) {
		int r = stor_msg_get(l->scratch, &l->sel, l->placeholders.items[i], &m, &err);
		if (r < 0)
			ret = ld_fail(l, "%s", err);
		if (r <= 0)
			continue;
		r = ld_expunged_here(l, m.uid, &m.guid, &tombs, &loaded);
		if (r == 0) {
			char gh[GUID_HEX_SIZE];
			guid_to_hex(&m.guid, gh);
			ret = ld_fail(l, "it leaves out the text of message %s, which this node "
					 "does not hold (export it again without --since)", gh);
		} else if (r < 0) {
			ret = -1;
		}
		stor_msg_free(&m);
	}
	ARRAY_FREE(&tombs);
	if (ret < 0)
		return -1;
	ARRAY_FREE(&l->placeholders);
	if (stor_mailbox_raise(l->scratch, &l->sel, l->uidnext, l->hms, &err) < 0)
		return ld_fail(l, "%s", err);
	stor_msg_list msgs;
	if (stor_msg_list_range(l->scratch, &l->sel, 1, UINT32_MAX, &msgs, &err) < 0)
		return ld_fail(l, "%s", err);
	struct ld_snap snap = { l->sel, msgs };
	ARRAY_PUSH(&l->snaps, snap);
	l->in_sync = false;
	return 0;
}

static int ld_command(struct loader *l, const struct proto_cmd *cmd)
{
	size_t npos;
	const char *err;
	char tag[16];
	snprintf(tag, sizeof(tag), "B%u", ++l->next_tag);
	if (strcmp(cmd->tag, tag) != 0)
		return ld_fail(l, "command tag %.32s where %s was due", cmd->tag, tag);
	if (proto_cmd_is_status(cmd) || proto_cmd_validate(cmd, &npos, &err) < 0)
		return ld_fail(l, "command %s: %s", tag, proto_cmd_is_status(cmd) ? "a status line" : err);
	const char *n = cmd->name;
	if (l->pending_active) {
		/* "SAVE uid ... NIL" then "EXPUNGE uid": a tombstone left out. */
		stor_uid_list uids;
		bool tomb = false;
		if (proto_cmd_is(cmd, "EXPUNGE") && (cmd->arg_count == 2 || cmd->arg_count == 4) &&
		    sync_arg_uids(&cmd->args[0], 1, &uids) == 0) {
			tomb = uids.count == 1 && uids.items[0] == l->pending.uid;
			ARRAY_FREE(&uids);
		}
		if (tomb) {
			ld_pending_clear(l);
			return 0;
		}
		if (ld_pending_flush(l) < 0)
			return -1;
	}
	bool sync_cmd = proto_cmd_is(cmd, "SAVE") || proto_cmd_is(cmd, "EXPUNGE") ||
			proto_cmd_is(cmd, "GONE") ||
			proto_cmd_is(cmd, "SYNC-END");
	if (sync_cmd != l->in_sync)
		return ld_fail(l, "%s %s outside SYNC-BEGIN ... SYNC-END", tag, n);
	bool stamps_opt = proto_cmd_is(cmd, "SAVE") && cmd->arg_count == npos + 2 &&
			  proto_cmd_option(cmd, npos, "STAMPS") != NULL;
	bool guids_opt = (proto_cmd_is(cmd, "EXPUNGE") || proto_cmd_is(cmd, "GONE")) &&
			 cmd->arg_count == npos + 2 && proto_cmd_option(cmd, npos, "GUIDS") != NULL;
	if (!proto_cmd_is(cmd, "CREATE") && cmd->arg_count != npos && !stamps_opt && !guids_opt)
		return ld_fail(l, "%s %s with options", tag, n);
	/* Private \Seen records come after the last mailbox (SPEC.md 7.7). */
	bool pseen_cmd = proto_cmd_is(cmd, "PSEEN") || proto_cmd_is(cmd, "PSEEN-MBOX");
	if (l->pseen.count > 0 && !pseen_cmd)
		return ld_fail(l, "%s %s after PSEEN-MBOX", tag, n);
	if (pseen_cmd) {
		if (bundle_pseen_load(l, cmd, &err) < 0)
			return ld_fail(l, "%s %s: %s", tag, n, err);
		return 0;
	}
	if (proto_cmd_is(cmd, "CREATE"))
		return ld_create(l, cmd, npos);
	if (proto_cmd_is(cmd, "SUBSCRIBE") || proto_cmd_is(cmd, "UNSUBSCRIBE")) {
		const char *name;
		size_t len;
		bool on = proto_cmd_is(cmd, "SUBSCRIBE");
		if (ld_user(l, &cmd->args[0]) < 0 || proto_arg_str(&cmd->args[1], &name, &len) < 0 ||
		    strlen(name) != len || len > STOR_MAX_MAILBOX_NAME_LEN)
			return ld_fail(l, "bad %s", on ? "SUBSCRIBE" : "UNSUBSCRIBE");
		if (stor_subscribe(l->scratch, l->v->user, name, on, &err) < 0)
			return ld_fail(l, "%s: %s", on ? "SUBSCRIBE" : "UNSUBSCRIBE", err);
		return 0;
	}
	if (proto_cmd_is(cmd, "ACL-PUT")) {
		const char *id, *rights;
		size_t idlen, rlen;
		struct guid g;
		uint64_t t;
		uint32_t bits;
		if (ld_user(l, &cmd->args[0]) < 0 || proto_arg_guid(&cmd->args[1], &g) < 0 ||
		    proto_arg_str(&cmd->args[2], &id, &idlen) < 0 || strlen(id) != idlen ||
		    !acl_identifier_valid(id, idlen, &err) ||
		    proto_arg_str(&cmd->args[3], &rights, &rlen) < 0 || strlen(rights) != rlen ||
		    acl_rights_parse(rights, rlen, &bits, &err) < 0 ||
		    proto_arg_u64(&cmd->args[4], INT64_MAX, &t) < 0)
			return ld_fail(l, "bad ACL-PUT");
		if (stor_acl_put(l->scratch, l->v->user, &g, id, rights, (int64_t)t, NULL, &err) < 0)
			return ld_fail(l, "ACL-PUT: %s", err);
		return 0;
	}
	if (proto_cmd_is(cmd, "DELETE")) {
		const char *name;
		size_t len;
		struct guid g;
		if (ld_user(l, &cmd->args[0]) < 0 || proto_arg_str(&cmd->args[1], &name, &len) < 0 ||
		    strlen(name) != len || len > STOR_MAX_MAILBOX_NAME_LEN ||
		    proto_arg_guid(&cmd->args[2], &g) < 0)
			return ld_fail(l, "bad DELETE");
		/* A mailbox the bundle also creates is refused here. */
		if (stor_mailbox_tomb_add(l->scratch, l->v->user, &g, name, &err) < 0)
			return ld_fail(l, "DELETE: %s", err);
		return 0;
	}
	if (proto_cmd_is(cmd, "MBOX"))
		return ld_mbox(l, cmd);
	if (proto_cmd_is(cmd, "SELECT"))
		return ld_select(l, cmd);
	if (proto_cmd_is(cmd, "SYNC-BEGIN")) {
		if (!l->selected)
			return ld_fail(l, "SYNC-BEGIN without SELECT");
		return ld_sync_begin(l, cmd, npos);
	}
	if (proto_cmd_is(cmd, "SAVE"))
		return ld_save(l, cmd);
	if (proto_cmd_is(cmd, "EXPUNGE"))
		return ld_expunge(l, cmd);
	if (proto_cmd_is(cmd, "GONE"))
		return ld_gone(l, cmd);
	if (proto_cmd_is(cmd, "SYNC-END"))
		return ld_sync_end(l);
	return ld_fail(l, "%s: %s has no place in a bundle", tag, n);
}

static int ld_feed(struct loader *l, const unsigned char *data, size_t len)
{
	while (len > 0) {
		size_t used;
		const struct proto_cmd *cmd;
		int r = proto_parser_parse(l->parser, data, len, &used, &cmd);
		if (r < 0) {
			const char *code, *text;
			proto_parser_get_error(l->parser, &code, &text);
			return ld_fail(l, "command stream: %s", text);
		}
		data += used;
		len -= used;
		if (r > 0 && ld_command(l, cmd) < 0)
			return -1;
	}
	return 0;
}

/* Inflates about budget octets into the loader, never past the announced
 * size: 1 more to do, 0 the body is done, -1 refused (l->error). */
int ld_inflate_step(struct loader *l, struct inflater *f, size_t budget)
{
	int zr = Z_OK;
	size_t done = 0;
	if (!f->started) {
		if (inflateInit(&f->z) != Z_OK)
			return ld_fail(l, "cannot start zlib");
		f->started = true;
		f->out = xmalloc(65536);
	}
	while (done < budget) {
		if (f->z.avail_in == 0 && f->in_left > 0) {
			size_t n = f->in_left > (1u << 30) ? (1u << 30) : (size_t)f->in_left;
			f->z.next_in = (Bytef *)(uintptr_t)f->in;
			f->z.avail_in = (uInt)n;
			f->in += n;
			f->in_left -= n;
		}
		uint64_t room = f->raw_len - f->produced;
		/* One octet more than announced is allowed out, to see an
		 * overlong body. */
		size_t cap = room >= 65535 ? 65536 : (size_t)room + 1;
		f->z.next_out = f->out;
		f->z.avail_out = (uInt)cap;
		zr = inflate(&f->z, Z_NO_FLUSH);
		size_t got = cap - f->z.avail_out;
		if (zr != Z_OK && zr != Z_STREAM_END && !(zr == Z_BUF_ERROR && got > 0))
			return ld_fail(l, "the body is not a valid zlib stream");
		if (got > room)
			return ld_fail(l, "the body inflates to more than %" PRIu64 " octets",
				       f->raw_len);
		f->produced += got;
		done += got + 1;
		if (got > 0 && ld_feed(l, f->out, got) < 0)
			return -1;
		if (zr == Z_STREAM_END)
			break;
		if (got == 0 && f->z.avail_in == 0 && f->in_left == 0)
			return ld_fail(l, "the body's zlib stream is truncated");
	}
	if (zr != Z_STREAM_END)
		return 1;
	if (f->produced != f->raw_len || f->z.avail_in != 0 || f->in_left != 0)
		return ld_fail(l, "the body does not match its announced sizes");
	if (ld_pending_flush(l) < 0)
		return -1;
	if (l->in_sync || !proto_parser_is_idle(l->parser))
		return ld_fail(l, "the command stream ends in the middle of a mailbox");
	const char *err;
	if (bundle_pseen_load_end(l, &err) < 0)
		return ld_fail(l, "%s", err);
	return 0;
}

void inflater_free(struct inflater *f)
{
	if (f->started)
		inflateEnd(&f->z);
	f->started = false;
	free(f->out);
	f->out = NULL;
}
