/* The client's SAVE, STORE, EXPUNGE and UIDFIX between SYNC-BEGIN and
 * SYNC-END.  They are only collected here (texts stored unreferenced), so
 * that the merge at SYNC-END sees both sides' changes whole. */
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

/* ---- The client's changes ---- */

int cmd_sync_begin(struct sync_server *s, const struct proto_cmd *cmd)
{
	uint64_t lm, cm;
	uint32_t lu, cu;
	if (cmd->arg_count < 4 || cmd->arg_count > 5 ||
	    proto_arg_u64(&cmd->args[0], INT64_MAX, &lm) < 0 ||
	    proto_arg_u64(&cmd->args[1], INT64_MAX, &cm) < 0 ||
	    proto_arg_u32(&cmd->args[2], &lu) < 0 || lu == 0 ||
	    proto_arg_u32(&cmd->args[3], &cu) < 0 || cu == 0) {
		srv_reply(s, s->cur_id, "BAD", "ARGS", "SYNC-BEGIN lm cm lu cu");
		return 0;
	}
	if (!mail_modseq_valid(lm) || !mail_modseq_valid(cm) || !mail_uidnext_valid(lu) ||
	    !mail_uidnext_valid(cu)) {
		srv_reply(s, s->cur_id, "NO", "LIMIT", MAIL_LIMITS_TEXT);
		return 0;
	}
	srv_sync_reset(s);
	s->text_refs.count = 0;
	s->in_sync = true;
	s->last_modseq = lm;
	s->client_modseq = cm;
	s->last_uidnext = lu;
	s->client_uidnext = cu;
	srv_reply(s, s->cur_id, "OK", NULL, "begin");
	return 0;
}

int cmd_save(struct sync_server *s, const struct proto_cmd *cmd)
{
	struct srv_save sv;
	struct proto_save ps;
	const char *err;
	bool present = false;
	bool stamped = false;
	memset(&sv, 0, sizeof(sv));
	int cr = proto_read_save(cmd, PROTO_SAVE_GIVEN, &ps, &err);
	if (cr == PROTO_CODEC_BAD || sync_cmd_stamps(cmd, 6, &stamped, &sv.stamps) < 0) {
		if (cr == PROTO_CODEC_OK)
			proto_save_free(&ps);
		srv_reply(s, s->cur_id, "BAD", "ARGS", "SAVE date uid modseq guid flags text [STAMPS]");
		return 0;
	}
	if (cr == PROTO_CODEC_LIMIT) {
		stor_stamp_list_free(&sv.stamps);
		srv_reply(s, s->cur_id, "NO", "LIMIT", MAIL_LIMITS_TEXT);
		return 0;
	}
	sv.uid = ps.uid;
	sv.modseq = ps.modseq;
	sv.guid = ps.guid;
	sync_flags_take(&sv.f, &ps.f);
	if (!stamped)
		sync_stamps_legacy(sv.modseq, &sv.stamps);
	sv.date = ps.date;
	sv.tz = ps.tz;
	if (ps.text == NULL) {
		int r = stor_text_exists(s->db, &sv.guid, NULL, &err);
		if (r < 0) {
			sync_flags_free(&sv.f);
			stor_stamp_list_free(&sv.stamps);
			return srv_fail(s, "SAVE: %s", err);
		}
		if (r == 0) {
			sync_flags_free(&sv.f);
			stor_stamp_list_free(&sv.stamps);
			srv_reply(s, s->cur_id, "NO", "NONEXISTENT", "text unknown, send it");
			return 0;
		}
		/* This very message at this UID already (a full compare of
		 * equal copies): OK [PRESENT], so the client counts honestly
		 * what moved. */
		struct stor_msg have;
		r = stor_msg_get(s->db, &s->sel, sv.uid, &have, &err);
		if (r < 0) {
			sync_flags_free(&sv.f);
			stor_stamp_list_free(&sv.stamps);
			return srv_fail(s, "SAVE: %s", err);
		}
		if (r > 0) {
			present = guid_cmp(&have.guid, &sv.guid) == 0;
			stor_msg_free(&have);
		}
	} else {
		struct stor_text_writer *tw = stor_text_begin(s->db, &sv.guid);
		if (stor_text_write(tw, ps.text, ps.text_len, &err) < 0) {
			stor_text_abort(&tw);
			sync_flags_free(&sv.f);
			stor_stamp_list_free(&sv.stamps);
			srv_reply(s, s->cur_id, "NO", "TOOBIG", err);
			return 0;
		}
		if (stor_text_finish(&tw, &err) < 0) {
			sync_flags_free(&sv.f);
			stor_stamp_list_free(&sv.stamps);
			srv_reply(s, s->cur_id, "NO", NULL, err);
			return 0;
		}
	}
	ARRAY_PUSH(&s->saves, sv);
	srv_reply(s, s->cur_id, "OK", present ? "PRESENT" : NULL, "held");
	return 0;
}

/* In a sync the client sends each changed message's whole state:
 * STORE <uid> <modseq> <flags> (\*). */
int cmd_store(struct sync_server *s, const struct proto_cmd *cmd)
{
	struct srv_store st;
	bool stamped = false;
	struct proto_store ps;
	const char *err;
	memset(&st, 0, sizeof(st));
	/* One message per STORE in a sync. */
	int cr = proto_read_store(cmd, PROTO_STORE_GIVEN, 1, &ps, &err);
	if (cr == PROTO_CODEC_BAD || sync_cmd_stamps(cmd, 4, &stamped, &st.stamps) < 0) {
		if (cr == PROTO_CODEC_OK)
			proto_store_free(&ps);
		srv_reply(s, s->cur_id, "BAD", "ARGS", "in a sync: STORE uid modseq flags (\\*) [STAMPS]");
		return 0;
	}
	if (cr == PROTO_CODEC_LIMIT) {
		stor_stamp_list_free(&st.stamps);
		srv_reply(s, s->cur_id, "NO", "LIMIT", MAIL_LIMITS_TEXT);
		return 0;
	}
	st.uid = ps.uids[0];
	st.modseq = ps.modseq;
	sync_flags_take(&st.f, &ps.add);
	proto_store_free(&ps);
	if (!stamped)
		sync_stamps_legacy(st.modseq, &st.stamps);
	ARRAY_PUSH(&s->stores, st);
	srv_reply(s, s->cur_id, "OK", NULL, "held");
	return 0;
}

int cmd_expunge(struct sync_server *s, const struct proto_cmd *cmd)
{
	struct proto_expunge e;
	const char *err;
	bool user;
	struct guid *guids;
	int cr = proto_read_expunge(cmd, PROTO_EXPUNGE_SYNC, SYNC_MAX_UIDS_PER_LINE * 4, &e, &err);
	if (cr == PROTO_CODEC_LIMIT) {
		srv_reply(s, s->cur_id, "NO", "LIMIT", MAIL_LIMITS_TEXT);
		return 0;
	}
	if (cr != PROTO_CODEC_OK)
		goto bad;
	stor_uid_list uids = { e.uids, e.uid_count, e.uid_count };
	if (sync_cmd_user_guids(cmd, 2, &uids, &user, &guids) < 0) {
		proto_expunge_free(&e);
		goto bad;
	}
	for (size_t i = 0; i < e.uid_count; i++) {
		ARRAY_PUSH(&s->expunges, e.uids[i]);
		if (user) {
			struct sync_uexp x = { e.uids[i], guids[i] };
			ARRAY_PUSH(&s->uexp, x);
			ARRAY_PUSH(&s->uexp_guids, guids[i]);
		}
	}
	proto_expunge_free(&e);
	free(guids);
	srv_reply(s, s->cur_id, "OK", NULL, "held");
	return 0;
bad:
	srv_reply(s, s->cur_id, "BAD", "ARGS", "EXPUNGE uidset modseq [GUIDS (guid ...)]");
	return 0;
}

/* In a sync: UIDFIX <old-uidset> <new-uidset>, held until SYNC-END. */
int cmd_uidfix(struct sync_server *s, const struct proto_cmd *cmd)
{
	struct proto_uidfix f;
	const char *err;
	int cr = proto_read_uidfix(cmd, SYNC_MAX_UIDS_PER_LINE * 4, &f, &err);
	if (cr == PROTO_CODEC_LIMIT) {
		srv_reply(s, s->cur_id, "NO", "LIMIT", MAIL_LIMITS_TEXT);
		return 0;
	}
	if (cr != PROTO_CODEC_OK) {
		srv_reply(s, s->cur_id, "BAD", "ARGS", "UIDFIX old-uidset new-uidset");
		return 0;
	}
	for (size_t i = 0; i < f.count; i++) {
		ARRAY_PUSH(&s->fix_old, f.old_uids[i]);
		ARRAY_PUSH(&s->fix_new, f.new_uids[i]);
	}
	proto_uidfix_free(&f);
	srv_reply(s, s->cur_id, "OK", NULL, "held");
	return 0;
}

/* In a sync: GONE GUIDS (<guid> ...), GUIDs a user expunged on the
 * client's side that it does not hold (SPEC.md 10.2).  They count as the
 * client's user expunges by GUID: our copies changed since M go, and the
 * GUIDs we do not hold get tombstones here (merge_final). */
int cmd_expunged(struct sync_server *s, const struct proto_cmd *cmd)
{
	struct guid *guids;
	size_t n;
	if (sync_cmd_gone(cmd, &guids, &n) < 0) {
		srv_reply(s, s->cur_id, "BAD", "ARGS", "GONE GUIDS (guid ...)");
		return 0;
	}
	if (s->gone_in.count + n > SYNC_MAX_GONE_PER_SYNC) {
		free(guids);
		srv_reply(s, s->cur_id, "NO", "LIMIT", "too many GONE GUIDs in one sync");
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		ARRAY_PUSH(&s->uexp_guids, guids[i]);
		ARRAY_PUSH(&s->gone_in, guids[i]);
	}
	free(guids);
	srv_reply(s, s->cur_id, "OK", NULL, "held");
	return 0;
}
