/* The sync server's mailbox-list commands and mailbox binding (SPEC.md 7,
 * 10.5).  Apart from the message sync because they change the user's list of
 * mailboxes and subscriptions, never a mailbox's messages, and need none of
 * the merge's state. */
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
#include "storage/acl-rights.h"
#include "storage/storage-acl.h"

/* ---- Mailbox list ---- */

int cmd_list(struct sync_server *s, const struct proto_cmd *cmd)
{
	const char *user, *err;
	size_t len;
	stor_mailbox_array mbs;
	stor_string_list subs;
	struct proto_wr w;
	if (cmd->arg_count != 1 || proto_arg_str(&cmd->args[0], &user, &len) < 0) {
		srv_reply(s, s->cur_id, "BAD", "ARGS", "LIST user");
		return 0;
	}
	if (stor_mailbox_list(s->db, user, &mbs, &err) < 0)
		return srv_fail(s, "LIST: %s", err);
	if (stor_subscriptions(s->db, user, &subs, &err) < 0) {
		stor_mailbox_list_free(&mbs);
		return srv_fail(s, "LIST: %s", err);
	}
	stor_mailbox_tomb_list tombs;
	stor_string_list unsubs;
	if (stor_mailbox_tombs(s->db, user, &tombs, &err) < 0) {
		stor_mailbox_list_free(&mbs);
		stor_string_list_free(&subs);
		return srv_fail(s, "LIST: %s", err);
	}
	if (stor_unsubscribed(s->db, user, &unsubs, &err) < 0) {
		stor_mailbox_list_free(&mbs);
		stor_string_list_free(&subs);
		stor_mailbox_tomb_list_free(&tombs);
		return srv_fail(s, "LIST: %s", err);
	}
	proto_wr_init(&w, &s->out);
	for (size_t i = 0; i < mbs.count; i++) {
		const struct stor_mailbox *mb = &mbs.items[i];
		struct guid digest;
		memcpy(digest.b, mb->digest, sizeof(digest.b));
		srv_line_begin(s, &w, s->cur_id, "MAILBOX");
		proto_wr_cstr(&w, mb->name);
		proto_wr_guid(&w, &mb->guid);
		proto_wr_u64(&w, mb->uidvalidity);
		proto_wr_u64(&w, mb->uidnext);
		proto_wr_u64(&w, mb->highestmodseq);
		proto_wr_guid(&w, &digest);
		if (mb->special_use[0] != '\0')
			proto_wr_atom(&w, mb->special_use);
		else
			proto_wr_atom(&w, "NIL");
		if (!s->no_rename_stamps) {
			uint64_t rs;
			if (stor_mailbox_rename_stamp(s->db, &mb->guid, &rs, &err) < 0) {
				proto_wr_end(&w);
				stor_mailbox_list_free(&mbs);
				stor_string_list_free(&subs);
				stor_mailbox_tomb_list_free(&tombs);
				stor_string_list_free(&unsubs);
				return srv_fail(s, "LIST: %s", err);
			}
			proto_wr_atom(&w, "RSTAMP");
			proto_wr_u64(&w, rs);
		}
		proto_wr_end(&w);
	}
	for (size_t i = 0; i < mbs.count; i++) {
		stor_acl_list acl;
		if (stor_acl_get(s->db, &mbs.items[i].guid, &acl, &err) < 0) {
			stor_mailbox_list_free(&mbs);
			stor_string_list_free(&subs);
			stor_mailbox_tomb_list_free(&tombs);
			stor_string_list_free(&unsubs);
			return srv_fail(s, "LIST: %s", err);
		}
		for (size_t j = 0; j < acl.count; j++) {
			srv_line_begin(s, &w, s->cur_id, "ACL");
			proto_wr_guid(&w, &mbs.items[i].guid);
			proto_wr_cstr(&w, acl.items[j].identifier);
			proto_wr_cstr(&w, acl.items[j].rights);
			proto_wr_u64(&w, (uint64_t)acl.items[j].time_ms);
			proto_wr_end(&w);
		}
		stor_acl_list_free(&acl);
	}
	for (size_t i = 0; i < subs.count; i++) {
		srv_line_begin(s, &w, s->cur_id, "SUBSCRIBED");
		proto_wr_cstr(&w, subs.items[i]);
		proto_wr_end(&w);
	}
	for (size_t i = 0; i < tombs.count; i++) {
		srv_line_begin(s, &w, s->cur_id, "DELETED");
		proto_wr_guid(&w, &tombs.items[i].guid);
		proto_wr_u64(&w, tombs.items[i].uidnext);
		proto_wr_u64(&w, tombs.items[i].highestmodseq);
		proto_wr_end(&w);
	}
	for (size_t i = 0; i < unsubs.count; i++) {
		srv_line_begin(s, &w, s->cur_id, "UNSUBSCRIBED");
		proto_wr_cstr(&w, unsubs.items[i]);
		proto_wr_end(&w);
	}
	stor_mailbox_list_free(&mbs);
	stor_string_list_free(&subs);
	stor_mailbox_tomb_list_free(&tombs);
	stor_string_list_free(&unsubs);
	srv_reply(s, s->cur_id, "OK", NULL, "listed");
	return 0;
}

/* CREATE and RENAME onto a name that is already held: OK when the same
 * mailbox holds it (a resent command), NO [ALREADYEXISTS guid] otherwise.
 * Returns 1 when it answered, 0 when the name is free, -1 on a store error. */
static int reply_if_name_taken(struct sync_server *s, uint32_t id, const char *user,
			       const char *name, const struct guid *guid, const char *ok_text,
			       const char *no_text)
{
	struct stor_mailbox mb;
	const char *err;
	int r = stor_mailbox_get(s->db, user, name, &mb, &err);
	if (r < 0)
		return srv_fail(s, "mailbox lookup: %s", err);
	if (r == 0)
		return 0;
	char code[64], hex[GUID_HEX_SIZE];
	guid_to_hex(&mb.guid, hex);
	snprintf(code, sizeof(code), "ALREADYEXISTS %s", hex);
	if (guid_cmp(&mb.guid, guid) == 0)
		srv_reply(s, id, "OK", NULL, ok_text);
	else
		srv_reply(s, id, "NO", code, no_text);
	stor_mailbox_free(&mb);
	return 1;
}

int cmd_create(struct sync_server *s, const struct proto_cmd *cmd)
{
	const char *user, *name, *err, *special = NULL;
	size_t len;
	struct guid guid;
	uint32_t uidvalidity;
	if (cmd->arg_count < 4 || proto_arg_str(&cmd->args[0], &user, &len) < 0 ||
	    proto_arg_str(&cmd->args[1], &name, &len) < 0 ||
	    proto_arg_guid(&cmd->args[2], &guid) < 0 ||
	    proto_arg_u32(&cmd->args[3], &uidvalidity) < 0 || uidvalidity == 0) {
		srv_reply(s, s->cur_id, "BAD", "ARGS", "CREATE user mailbox guid uidvalidity");
		return 0;
	}
	/* Options SPECIAL-USE and RSTAMP (the name's rename stamp, SPEC.md
	 * 10.5), each at most once, in any order. */
	bool have_rstamp = false;
	uint64_t rstamp = 0;
	for (size_t i = 4; i < cmd->arg_count; i += 2) {
		const struct proto_arg *k = &cmd->args[i];
		const struct proto_arg *v = i + 1 < cmd->arg_count ? &cmd->args[i + 1] : NULL;
		bool ok = v != NULL && k->type == PROTO_ARG_ATOM;
		if (ok && strcasecmp(k->str, "SPECIAL-USE") == 0 && special == NULL &&
		    v->type == PROTO_ARG_LIST && v->count == 1 &&
		    v->list[0].type == PROTO_ARG_ATOM && v->list[0].len < 16)
			special = v->list[0].str;
		else if (ok && strcasecmp(k->str, "RSTAMP") == 0 && !have_rstamp &&
			 proto_arg_u64(v, INT64_MAX, &rstamp) == 0)
			have_rstamp = true;
		else {
			srv_reply(s, s->cur_id, "BAD", "ARGS", "bad CREATE option");
			return 0;
		}
	}
	int r = reply_if_name_taken(s, s->cur_id, user, name, &guid, "created",
				    "name has another mailbox");
	if (r != 0)
		return r < 0 ? -1 : 0;
	struct stor_mailbox_create req = {
		.user = user, .name = name, .guid = &guid, .uidvalidity = uidvalidity,
		.special_use = special,
	};
	if (stor_mailbox_create(s->db, &req, NULL, &err) < 0 ||
	    (have_rstamp && stor_mailbox_rename_stamped(s->db, &guid, name, rstamp, &err) < 0)) {
		srv_reply(s, s->cur_id, "NO", NULL, err);
		return 0;
	}
	srv_reply(s, s->cur_id, "OK", NULL, "created");
	return 0;
}

int cmd_delete(struct sync_server *s, const struct proto_cmd *cmd)
{
	const char *user, *name, *err;
	size_t len;
	struct guid guid;
	struct stor_mailbox mb;
	if (cmd->arg_count != 3 || proto_arg_str(&cmd->args[0], &user, &len) < 0 ||
	    proto_arg_str(&cmd->args[1], &name, &len) < 0 ||
	    proto_arg_guid(&cmd->args[2], &guid) < 0) {
		srv_reply(s, s->cur_id, "BAD", "ARGS", "DELETE user mailbox guid");
		return 0;
	}
	int r = stor_mailbox_get_by_guid(s->db, &guid, &mb, &err);
	if (r < 0)
		return srv_fail(s, "DELETE: %s", err);
	if (r > 0) {
		bool mine = strcmp(mb.user, user) == 0;
		stor_mailbox_free(&mb);
		if (!mine) {
			srv_reply(s, s->cur_id, "NO", "NONEXISTENT", "another user's mailbox");
			return 0;
		}
		if (stor_mailbox_delete(s->db, &guid, &err) < 0)
			return srv_fail(s, "DELETE: %s", err);
	} else if (stor_mailbox_tomb_add(s->db, user, &guid, name, &err) < 0) {
		/* Not here: remembered as deleted all the same, so a CREATE
		 * replayed later by a third node does not bring it back. */
		return srv_fail(s, "DELETE: %s", err);
	}
	srv_reply(s, s->cur_id, "OK", NULL, "deleted");
	return 0;
}

int cmd_rename(struct sync_server *s, const struct proto_cmd *cmd)
{
	const char *user, *old, *new_name, *err;
	size_t len;
	struct guid guid;
	struct stor_mailbox mb;
	uint64_t rstamp = 0;
	/* RSTAMP: the client's stamp of the name it gives (SPEC.md 7.3, 10.5). */
	if ((cmd->arg_count != 4 && cmd->arg_count != 6) ||
	    proto_arg_str(&cmd->args[0], &user, &len) < 0 ||
	    proto_arg_str(&cmd->args[1], &old, &len) < 0 ||
	    proto_arg_str(&cmd->args[2], &new_name, &len) < 0 ||
	    proto_arg_guid(&cmd->args[3], &guid) < 0 ||
	    (cmd->arg_count == 6 &&
	     (cmd->args[4].type != PROTO_ARG_ATOM || strcasecmp(cmd->args[4].str, "RSTAMP") != 0 ||
	      proto_arg_u64(&cmd->args[5], INT64_MAX, &rstamp) < 0))) {
		srv_reply(s, s->cur_id, "BAD", "ARGS", "RENAME user old new guid [RSTAMP n]");
		return 0;
	}
	int r = reply_if_name_taken(s, s->cur_id, user, new_name, &guid, "renamed",
				    "new name has another mailbox");
	if (r != 0)
		return r < 0 ? -1 : 0;
	r = stor_mailbox_get_by_guid(s->db, &guid, &mb, &err);
	if (r < 0)
		return srv_fail(s, "RENAME: %s", err);
	if (r == 0 || strcmp(mb.user, user) != 0) {
		if (r > 0)
			stor_mailbox_free(&mb);
		srv_reply(s, s->cur_id, "NO", "NONEXISTENT", "no such mailbox");
		return 0;
	}
	stor_mailbox_free(&mb);
	if ((cmd->arg_count == 6 ? stor_mailbox_rename_stamped(s->db, &guid, new_name, rstamp, &err)
				 : stor_mailbox_rename(s->db, &guid, new_name, &err)) < 0) {
		srv_reply(s, s->cur_id, "NO", NULL, err);
		return 0;
	}
	srv_reply(s, s->cur_id, "OK", NULL, "renamed");
	return 0;
}

int cmd_subscribe(struct sync_server *s, const struct proto_cmd *cmd, bool subscribe)
{
	const char *user, *name, *err;
	size_t len;
	if (cmd->arg_count != 2 || proto_arg_str(&cmd->args[0], &user, &len) < 0 ||
	    proto_arg_str(&cmd->args[1], &name, &len) < 0) {
		srv_reply(s, s->cur_id, "BAD", "ARGS", "SUBSCRIBE user mailbox");
		return 0;
	}
	if (stor_subscribe(s->db, user, name, subscribe, &err) < 0) {
		srv_reply(s, s->cur_id, "NO", NULL, err);
		return 0;
	}
	srv_reply(s, s->cur_id, "OK", NULL, subscribe ? "subscribed" : "unsubscribed");
	return 0;
}

/* ACL-PUT from a resync (SPEC.md 7.6, 10.5): kept when newer. */
int cmd_acl_put(struct sync_server *s, const struct proto_cmd *cmd)
{
	const char *user, *id, *rights, *err;
	size_t ulen, idlen, rlen;
	struct guid guid;
	uint64_t t;
	uint32_t bits;
	if (cmd->arg_count != 5 || proto_arg_str(&cmd->args[0], &user, &ulen) < 0 ||
	    memchr(user, '\0', ulen) != NULL || proto_arg_guid(&cmd->args[1], &guid) < 0 ||
	    proto_arg_str(&cmd->args[2], &id, &idlen) < 0 || memchr(id, '\0', idlen) != NULL ||
	    !acl_identifier_valid(id, idlen, &err) ||
	    proto_arg_str(&cmd->args[3], &rights, &rlen) < 0 || memchr(rights, '\0', rlen) != NULL ||
	    acl_rights_parse(rights, rlen, &bits, &err) < 0 ||
	    proto_arg_u64(&cmd->args[4], INT64_MAX, &t) < 0) {
		srv_reply(s, s->cur_id, "BAD", "ARGS", "ACL-PUT user mailbox-guid identifier rights time-ms");
		return 0;
	}
	bool applied = false;
	if (stor_acl_put(s->db, user, &guid, id, rights, (int64_t)t, &applied, &err) < 0) {
		srv_reply(s, s->cur_id, "NO", NULL, err);
		return 0;
	}
	srv_reply(s, s->cur_id, "OK", NULL, applied ? "applied" : "already newer");
	return 0;
}

/* ---- Mailbox binding ---- */

int cmd_mbox(struct sync_server *s, const struct proto_cmd *cmd)
{
	const char *user, *name, *err;
	size_t len;
	uint32_t id, uidvalidity;
	struct guid guid;
	struct stor_mailbox mb;
	if (cmd->arg_count != 5 || proto_arg_u32(&cmd->args[0], &id) < 0 || id == 0 ||
	    proto_arg_str(&cmd->args[1], &user, &len) < 0 ||
	    proto_arg_str(&cmd->args[2], &name, &len) < 0 ||
	    proto_arg_u32(&cmd->args[3], &uidvalidity) < 0 ||
	    proto_arg_guid(&cmd->args[4], &guid) < 0) {
		srv_reply(s, s->cur_id, "BAD", "ARGS", "MBOX id user mailbox uidvalidity guid");
		return 0;
	}
	int r = stor_mailbox_get_by_guid(s->db, &guid, &mb, &err);
	if (r < 0)
		return srv_fail(s, "MBOX: %s", err);
	if (r == 0 || strcmp(mb.user, user) != 0) {
		if (r > 0)
			stor_mailbox_free(&mb);
		srv_reply(s, s->cur_id, "NO", "NONEXISTENT", "no such mailbox");
		return 0;
	}
	char code[256];
	if (mb.uidvalidity != uidvalidity) {
		snprintf(code, sizeof(code), "UIDVALIDITY %u", mb.uidvalidity);
		stor_mailbox_free(&mb);
		srv_reply(s, s->cur_id, "NO", code, "UIDVALIDITY differs");
		return 0;
	}
	size_t i;
	for (i = 0; i < s->ids.count && s->ids.items[i].id != id; i++)
		;
	if (i == s->ids.count) {
		struct srv_mbox_id e = { .id = id, .guid = guid };
		ARRAY_PUSH(&s->ids, e);
	} else {
		s->ids.items[i].guid = guid;
	}
	snprintf(code, sizeof(code), "UIDNEXT %u HIGHESTMODSEQ %" PRIu64, mb.uidnext,
		 mb.highestmodseq);
	stor_mailbox_free(&mb);
	srv_reply(s, s->cur_id, "OK", code, "bound");
	return 0;
}

int cmd_select(struct sync_server *s, const struct proto_cmd *cmd)
{
	uint32_t id;
	if (cmd->arg_count != 1 || proto_arg_u32(&cmd->args[0], &id) < 0) {
		srv_reply(s, s->cur_id, "BAD", "ARGS", "SELECT id");
		return 0;
	}
	srv_sync_reset(s);
	s->text_refs.count = 0;
	s->selected = false;
	for (size_t i = 0; i < s->ids.count; i++) {
		if (s->ids.items[i].id == id) {
			s->selected = true;
			s->sel = s->ids.items[i].guid;
		}
	}
	if (s->selected)
		srv_reply(s, s->cur_id, "OK", NULL, "selected");
	else
		srv_reply(s, s->cur_id, "NO", "NOMBOX", "unknown mailbox id");
	return 0;
}
