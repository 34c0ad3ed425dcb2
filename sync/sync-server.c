/* The answering end of a sync (SPEC.md 7, 8 and 10): LIST, MBOX, SELECT,
 * mailbox CREATE/DELETE/RENAME/(UN)SUBSCRIBE, and SYNC-BEGIN ... SYNC-END
 * with the client's SAVE, STORE and EXPUNGE, then FETCH of texts.
 *
 * Between SYNC-BEGIN and SYNC-END the client's changes are only collected
 * (texts are written to the store at once, unreferenced); SYNC-END merges
 * them with the server's own changes since the last common modseq and
 * answers with the EXPUNGE, SAVE, FLAGS and UIDFIX lines that bring the
 * client to the merged state, in bounded steps (see merge_step()). */
#include "sync/sync-private.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#include "lib/log.h"
#include "lib/xalloc.h"

struct srv_mbox_id {
	uint32_t id;
	struct guid guid;
};

/* A message the client sent with SAVE during a sync. */
struct srv_save {
	uint32_t uid;
	uint64_t modseq;
	struct guid guid;
	struct sync_flags f;
	stor_stamp_list stamps; /* as sent, or legacy (sync_stamps_legacy()) */
	int64_t date;
	int tz;
	/* Filled by the merge. */
	enum { SAVE_APPEND, SAVE_RENUMBER, SAVE_MERGE, SAVE_DROP } action;
	uint32_t new_uid;
	uint32_t drop_into; /* SAVE_DROP of a copy we hold at this UID: flags merge there */
};

typedef ARRAY(struct guid) srv_guid_list;


/* A flag change the client sent with STORE during a sync. */
struct srv_store {
	uint32_t uid;
	uint64_t modseq;
	struct sync_flags f;
	stor_stamp_list stamps;
};

enum merge_stage {
	MS_FIX,      /* the client's UIDFIX lines, then our changes since M */
	MS_CLASSIFY, /* the client's new messages: append, merge, move, drop */
	MS_RENUMBER, /* our messages at conflicting UIDs move */
	MS_SAVES,    /* the client's new messages, applied */
	MS_EXPUNGE,  /* the client's expunges below L */
	MS_STORES,   /* the client's flag changes, applied */
	MS_OWN,      /* our changes the client has not seen */
	MS_WR_SAVE,  /* answer: SAVE lines (EXPUNGE lines were written before) */
	MS_WR_FLAGS, /* answer: FLAGS lines */
	MS_WR_END,   /* answer: UIDFIX lines and the completion */
};

/* A SYNC-END under way (see merge_step()). */
struct srv_merge {
	enum merge_stage stage;
	size_t pos;
	char tag[PROTO_MAX_TAG + 1];
	uint64_t M, cm, sm, base, N;
	uint32_t L, cu, su, next;
	bool touched;
	stor_msg_list smsgs;        /* our changes since M, kept exact or marked dirty */
	stor_tombstone_list stombs;
	bool *handled, *dirty;      /* per smsgs item */
	stor_uid_list sr, exp_client, flags_client, save_client, cexp_low;
	/* The client's copies and our tombstones the client learns as a
	 * user's expunges (EXPUNGE ... GUIDS), and what finds them. */
	sync_uexp_list uexp_client;
	srv_guid_list utombs;     /* GUIDs of our user tombstones since M, sorted */
	srv_guid_list save_guids; /* GUIDs of the client's SAVEs, sorted */
	uint64_t exp_modseq;
	uint32_t final_uidnext;
	uint64_t final_modseq;
};

/* A FETCH under way. */
struct srv_fetch {
	char tag[PROTO_MAX_TAG + 1];
	stor_uid_list uids, missing;
	size_t pos;
	struct buf text;
};

enum srv_job { JOB_NONE, JOB_MERGE, JOB_FETCH };

/* A message of the last SYNC-END answer: the client FETCHes the texts of
 * its SAVE lines next, and this saves a lookup per text. */
struct srv_text_ref {
	uint32_t uid;
	struct guid guid;
	uint64_t size;
};

struct sync_server {
	struct stor_db *db;
	uint32_t peer;
	struct sync_transport t;
	struct proto_parser *parser;
	struct buf out;

	ARRAY(struct srv_mbox_id) ids;
	bool selected;
	struct guid sel;

	bool in_sync;
	uint64_t last_modseq, client_modseq;
	uint32_t last_uidnext, client_uidnext;
	ARRAY(struct srv_save) saves;
	ARRAY(struct srv_store) stores;
	stor_uid_list expunges;
	/* Those of the client's expunges that a user made (GUIDS): by UID, and
	 * their GUIDs, each sorted at SYNC-END. */
	sync_uexp_list uexp;
	srv_guid_list uexp_guids;
	stor_uid_list fix_old, fix_new;

	/* The command being answered in steps, and the commands that came
	 * meanwhile (wire form, parsed again by held_parser). */
	enum srv_job job;
	struct srv_merge merge;
	struct srv_fetch fetch;
	unsigned budget;
	struct buf held;
	struct proto_parser *held_parser;
	ARRAY(struct srv_text_ref) text_refs; /* sorted by UID; of s->sel */

	unsigned examined;
	char *error;
};

static void srv_flush(struct sync_server *s)
{
	if (s->out.len > 0)
		s->t.send(s->t.ctx, s->out.data, s->out.len);
	buf_reset(&s->out);
}

static void srv_reply(struct sync_server *s, const char *tag, const char *status,
		      const char *code, const char *text)
{
	proto_wr_status(&s->out, tag, status, code, text);
	srv_flush(s);
}

static int srv_fail(struct sync_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int srv_fail(struct sync_server *s, const char *fmt, ...)
{
	va_list ap;
	char msg[512];
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	free(s->error);
	s->error = xstrdup(msg);
	log_warnx("sync server (peer %u): %s", s->peer, msg);
	return -1;
}

struct sync_server *sync_server_create(struct stor_db *db, uint32_t peer_sid,
				       const struct sync_transport *t)
{
	struct sync_server *s = xcalloc(1, sizeof(*s));
	s->db = db;
	s->peer = peer_sid;
	s->t = *t;
	s->parser = proto_parser_create(NULL);
	s->held_parser = proto_parser_create(NULL);
	s->budget = SYNC_DEFAULT_STEP_BUDGET;
	buf_init(&s->out);
	buf_init(&s->held);
	return s;
}

static void job_end(struct sync_server *s);

static void srv_sync_reset(struct sync_server *s)
{
	for (size_t i = 0; i < s->saves.count; i++) {
		sync_flags_free(&s->saves.items[i].f);
		stor_stamp_list_free(&s->saves.items[i].stamps);
	}
	for (size_t i = 0; i < s->stores.count; i++) {
		sync_flags_free(&s->stores.items[i].f);
		stor_stamp_list_free(&s->stores.items[i].stamps);
	}
	ARRAY_FREE(&s->saves);
	ARRAY_FREE(&s->stores);
	ARRAY_FREE(&s->expunges);
	ARRAY_FREE(&s->uexp);
	ARRAY_FREE(&s->uexp_guids);
	ARRAY_FREE(&s->fix_old);
	ARRAY_FREE(&s->fix_new);
	s->in_sync = false;
}

void sync_server_destroy(struct sync_server **sp)
{
	struct sync_server *s = *sp;
	if (s == NULL)
		return;
	*sp = NULL;
	job_end(s);
	srv_sync_reset(s);
	ARRAY_FREE(&s->ids);
	proto_parser_destroy(&s->parser);
	proto_parser_destroy(&s->held_parser);
	buf_free(&s->held);
	ARRAY_FREE(&s->text_refs);
	buf_free(&s->out);
	free(s->error);
	free(s);
}

unsigned sync_server_messages_examined(const struct sync_server *s)
{
	return s->examined;
}

const char *sync_server_error(const struct sync_server *s)
{
	return s->error;
}

/* ---- Mailbox list ---- */

static int cmd_list(struct sync_server *s, const struct proto_cmd *cmd)
{
	const char *user, *err;
	size_t len;
	stor_mailbox_array mbs;
	stor_string_list subs;
	struct proto_wr w;
	if (cmd->arg_count != 1 || proto_arg_str(&cmd->args[0], &user, &len) < 0) {
		srv_reply(s, cmd->tag, "BAD", "ARGS", "LIST user");
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
		proto_wr_begin(&w, cmd->tag, "MAILBOX");
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
		proto_wr_end(&w);
	}
	for (size_t i = 0; i < subs.count; i++) {
		proto_wr_begin(&w, cmd->tag, "SUBSCRIBED");
		proto_wr_cstr(&w, subs.items[i]);
		proto_wr_end(&w);
	}
	for (size_t i = 0; i < tombs.count; i++) {
		proto_wr_begin(&w, cmd->tag, "DELETED");
		proto_wr_guid(&w, &tombs.items[i].guid);
		proto_wr_u64(&w, tombs.items[i].uidnext);
		proto_wr_u64(&w, tombs.items[i].highestmodseq);
		proto_wr_end(&w);
	}
	for (size_t i = 0; i < unsubs.count; i++) {
		proto_wr_begin(&w, cmd->tag, "UNSUBSCRIBED");
		proto_wr_cstr(&w, unsubs.items[i]);
		proto_wr_end(&w);
	}
	stor_mailbox_list_free(&mbs);
	stor_string_list_free(&subs);
	stor_mailbox_tomb_list_free(&tombs);
	stor_string_list_free(&unsubs);
	srv_reply(s, cmd->tag, "OK", NULL, "listed");
	return 0;
}

/* CREATE and RENAME onto a name that is already held: OK when the same
 * mailbox holds it (a resent command), NO [ALREADYEXISTS guid] otherwise.
 * Returns 1 when it answered, 0 when the name is free, -1 on a store error. */
static int reply_if_name_taken(struct sync_server *s, const char *tag, const char *user,
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
		srv_reply(s, tag, "OK", NULL, ok_text);
	else
		srv_reply(s, tag, "NO", code, no_text);
	stor_mailbox_free(&mb);
	return 1;
}

static int cmd_create(struct sync_server *s, const struct proto_cmd *cmd)
{
	const char *user, *name, *err, *special = NULL;
	size_t len;
	struct guid guid;
	uint32_t uidvalidity;
	if (cmd->arg_count < 4 || proto_arg_str(&cmd->args[0], &user, &len) < 0 ||
	    proto_arg_str(&cmd->args[1], &name, &len) < 0 ||
	    proto_arg_guid(&cmd->args[2], &guid) < 0 ||
	    proto_arg_u32(&cmd->args[3], &uidvalidity) < 0 || uidvalidity == 0) {
		srv_reply(s, cmd->tag, "BAD", "ARGS", "CREATE user mailbox guid uidvalidity");
		return 0;
	}
	if (cmd->arg_count == 6 && cmd->args[4].type == PROTO_ARG_ATOM &&
	    strcasecmp(cmd->args[4].str, "SPECIAL-USE") == 0 &&
	    cmd->args[5].type == PROTO_ARG_LIST && cmd->args[5].count == 1 &&
	    cmd->args[5].list[0].type == PROTO_ARG_ATOM && cmd->args[5].list[0].len < 16)
		special = cmd->args[5].list[0].str;
	else if (cmd->arg_count != 4) {
		srv_reply(s, cmd->tag, "BAD", "ARGS", "bad CREATE option");
		return 0;
	}
	int r = reply_if_name_taken(s, cmd->tag, user, name, &guid, "created",
				    "name has another mailbox");
	if (r != 0)
		return r < 0 ? -1 : 0;
	struct stor_mailbox_create req = {
		.user = user, .name = name, .guid = &guid, .uidvalidity = uidvalidity,
		.special_use = special,
	};
	if (stor_mailbox_create(s->db, &req, NULL, &err) < 0) {
		srv_reply(s, cmd->tag, "NO", NULL, err);
		return 0;
	}
	srv_reply(s, cmd->tag, "OK", NULL, "created");
	return 0;
}

static int cmd_delete(struct sync_server *s, const struct proto_cmd *cmd)
{
	const char *user, *name, *err;
	size_t len;
	struct guid guid;
	struct stor_mailbox mb;
	if (cmd->arg_count != 3 || proto_arg_str(&cmd->args[0], &user, &len) < 0 ||
	    proto_arg_str(&cmd->args[1], &name, &len) < 0 ||
	    proto_arg_guid(&cmd->args[2], &guid) < 0) {
		srv_reply(s, cmd->tag, "BAD", "ARGS", "DELETE user mailbox guid");
		return 0;
	}
	int r = stor_mailbox_get_by_guid(s->db, &guid, &mb, &err);
	if (r < 0)
		return srv_fail(s, "DELETE: %s", err);
	if (r > 0) {
		bool mine = strcmp(mb.user, user) == 0;
		stor_mailbox_free(&mb);
		if (!mine) {
			srv_reply(s, cmd->tag, "NO", "NONEXISTENT", "another user's mailbox");
			return 0;
		}
		if (stor_mailbox_delete(s->db, &guid, &err) < 0)
			return srv_fail(s, "DELETE: %s", err);
	} else if (stor_mailbox_tomb_add(s->db, user, &guid, name, &err) < 0) {
		/* Not here: remembered as deleted all the same, so a CREATE
		 * replayed later by a third node does not bring it back. */
		return srv_fail(s, "DELETE: %s", err);
	}
	srv_reply(s, cmd->tag, "OK", NULL, "deleted");
	return 0;
}

static int cmd_rename(struct sync_server *s, const struct proto_cmd *cmd)
{
	const char *user, *old, *new_name, *err;
	size_t len;
	struct guid guid;
	struct stor_mailbox mb;
	if (cmd->arg_count != 4 || proto_arg_str(&cmd->args[0], &user, &len) < 0 ||
	    proto_arg_str(&cmd->args[1], &old, &len) < 0 ||
	    proto_arg_str(&cmd->args[2], &new_name, &len) < 0 ||
	    proto_arg_guid(&cmd->args[3], &guid) < 0) {
		srv_reply(s, cmd->tag, "BAD", "ARGS", "RENAME user old new guid");
		return 0;
	}
	int r = reply_if_name_taken(s, cmd->tag, user, new_name, &guid, "renamed",
				    "new name has another mailbox");
	if (r != 0)
		return r < 0 ? -1 : 0;
	r = stor_mailbox_get_by_guid(s->db, &guid, &mb, &err);
	if (r < 0)
		return srv_fail(s, "RENAME: %s", err);
	if (r == 0 || strcmp(mb.user, user) != 0) {
		if (r > 0)
			stor_mailbox_free(&mb);
		srv_reply(s, cmd->tag, "NO", "NONEXISTENT", "no such mailbox");
		return 0;
	}
	stor_mailbox_free(&mb);
	if (stor_mailbox_rename(s->db, &guid, new_name, &err) < 0) {
		srv_reply(s, cmd->tag, "NO", NULL, err);
		return 0;
	}
	srv_reply(s, cmd->tag, "OK", NULL, "renamed");
	return 0;
}

static int cmd_subscribe(struct sync_server *s, const struct proto_cmd *cmd, bool subscribe)
{
	const char *user, *name, *err;
	size_t len;
	if (cmd->arg_count != 2 || proto_arg_str(&cmd->args[0], &user, &len) < 0 ||
	    proto_arg_str(&cmd->args[1], &name, &len) < 0) {
		srv_reply(s, cmd->tag, "BAD", "ARGS", "SUBSCRIBE user mailbox");
		return 0;
	}
	if (stor_subscribe(s->db, user, name, subscribe, &err) < 0) {
		srv_reply(s, cmd->tag, "NO", NULL, err);
		return 0;
	}
	srv_reply(s, cmd->tag, "OK", NULL, subscribe ? "subscribed" : "unsubscribed");
	return 0;
}

/* ---- Mailbox binding ---- */

static int cmd_mbox(struct sync_server *s, const struct proto_cmd *cmd)
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
		srv_reply(s, cmd->tag, "BAD", "ARGS", "MBOX id user mailbox uidvalidity guid");
		return 0;
	}
	int r = stor_mailbox_get_by_guid(s->db, &guid, &mb, &err);
	if (r < 0)
		return srv_fail(s, "MBOX: %s", err);
	if (r == 0 || strcmp(mb.user, user) != 0) {
		if (r > 0)
			stor_mailbox_free(&mb);
		srv_reply(s, cmd->tag, "NO", "NONEXISTENT", "no such mailbox");
		return 0;
	}
	char code[256];
	if (mb.uidvalidity != uidvalidity) {
		snprintf(code, sizeof(code), "UIDVALIDITY %u", mb.uidvalidity);
		stor_mailbox_free(&mb);
		srv_reply(s, cmd->tag, "NO", code, "UIDVALIDITY differs");
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
	srv_reply(s, cmd->tag, "OK", code, "bound");
	return 0;
}

static int cmd_select(struct sync_server *s, const struct proto_cmd *cmd)
{
	uint32_t id;
	if (cmd->arg_count != 1 || proto_arg_u32(&cmd->args[0], &id) < 0) {
		srv_reply(s, cmd->tag, "BAD", "ARGS", "SELECT id");
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
		srv_reply(s, cmd->tag, "OK", NULL, "selected");
	else
		srv_reply(s, cmd->tag, "NO", "NOMBOX", "unknown mailbox id");
	return 0;
}

/* ---- The client's changes ---- */

static int cmd_sync_begin(struct sync_server *s, const struct proto_cmd *cmd)
{
	uint64_t lm, cm;
	uint32_t lu, cu;
	if (cmd->arg_count < 4 || cmd->arg_count > 5 ||
	    proto_arg_u64(&cmd->args[0], INT64_MAX, &lm) < 0 ||
	    proto_arg_u64(&cmd->args[1], INT64_MAX, &cm) < 0 ||
	    proto_arg_u32(&cmd->args[2], &lu) < 0 || lu == 0 ||
	    proto_arg_u32(&cmd->args[3], &cu) < 0 || cu == 0) {
		srv_reply(s, cmd->tag, "BAD", "ARGS", "SYNC-BEGIN lm cm lu cu");
		return 0;
	}
	if (!mail_modseq_valid(lm) || !mail_modseq_valid(cm) || !mail_uidnext_valid(lu) ||
	    !mail_uidnext_valid(cu)) {
		srv_reply(s, cmd->tag, "NO", "LIMIT", MAIL_LIMITS_TEXT);
		return 0;
	}
	srv_sync_reset(s);
	s->text_refs.count = 0;
	s->in_sync = true;
	s->last_modseq = lm;
	s->client_modseq = cm;
	s->last_uidnext = lu;
	s->client_uidnext = cu;
	srv_reply(s, cmd->tag, "OK", NULL, "begin");
	return 0;
}

static int cmd_save(struct sync_server *s, const struct proto_cmd *cmd)
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
		srv_reply(s, cmd->tag, "BAD", "ARGS", "SAVE date uid modseq guid flags text [STAMPS]");
		return 0;
	}
	if (cr == PROTO_CODEC_LIMIT) {
		stor_stamp_list_free(&sv.stamps);
		srv_reply(s, cmd->tag, "NO", "LIMIT", MAIL_LIMITS_TEXT);
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
			srv_reply(s, cmd->tag, "NO", "NONEXISTENT", "text unknown, send it");
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
			srv_reply(s, cmd->tag, "NO", "TOOBIG", err);
			return 0;
		}
		if (stor_text_finish(&tw, &err) < 0) {
			sync_flags_free(&sv.f);
			stor_stamp_list_free(&sv.stamps);
			srv_reply(s, cmd->tag, "NO", NULL, err);
			return 0;
		}
	}
	ARRAY_PUSH(&s->saves, sv);
	srv_reply(s, cmd->tag, "OK", present ? "PRESENT" : NULL, "held");
	return 0;
}

/* In a sync the client sends each changed message's whole state:
 * STORE <uid> <modseq> <flags> (\*). */
static int cmd_store(struct sync_server *s, const struct proto_cmd *cmd)
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
		srv_reply(s, cmd->tag, "BAD", "ARGS", "in a sync: STORE uid modseq flags (\\*) [STAMPS]");
		return 0;
	}
	if (cr == PROTO_CODEC_LIMIT) {
		stor_stamp_list_free(&st.stamps);
		srv_reply(s, cmd->tag, "NO", "LIMIT", MAIL_LIMITS_TEXT);
		return 0;
	}
	st.uid = ps.uids[0];
	st.modseq = ps.modseq;
	sync_flags_take(&st.f, &ps.add);
	proto_store_free(&ps);
	if (!stamped)
		sync_stamps_legacy(st.modseq, &st.stamps);
	ARRAY_PUSH(&s->stores, st);
	srv_reply(s, cmd->tag, "OK", NULL, "held");
	return 0;
}

static int cmd_expunge(struct sync_server *s, const struct proto_cmd *cmd)
{
	stor_uid_list uids;
	uint64_t modseq;
	bool user;
	struct guid *guids;
	if (cmd->arg_count < 2 || sync_arg_uids(&cmd->args[0], SYNC_MAX_UIDS_PER_LINE * 4, &uids) < 0)
		goto bad;
	if (proto_arg_u64(&cmd->args[1], INT64_MAX, &modseq) < 0 ||
	    sync_cmd_user_guids(cmd, 2, &uids, &user, &guids) < 0) {
		ARRAY_FREE(&uids);
		goto bad;
	}
	if (!mail_modseq_valid(modseq) || !mail_uids_valid(uids.items, uids.count)) {
		ARRAY_FREE(&uids);
		free(guids);
		srv_reply(s, cmd->tag, "NO", "LIMIT", MAIL_LIMITS_TEXT);
		return 0;
	}
	for (size_t i = 0; i < uids.count; i++) {
		ARRAY_PUSH(&s->expunges, uids.items[i]);
		if (user) {
			struct sync_uexp x = { uids.items[i], guids[i] };
			ARRAY_PUSH(&s->uexp, x);
			ARRAY_PUSH(&s->uexp_guids, guids[i]);
		}
	}
	ARRAY_FREE(&uids);
	free(guids);
	srv_reply(s, cmd->tag, "OK", NULL, "held");
	return 0;
bad:
	srv_reply(s, cmd->tag, "BAD", "ARGS", "EXPUNGE uidset modseq [GUIDS (guid ...)]");
	return 0;
}

/* In a sync: UIDFIX <old-uidset> <new-uidset>, held until SYNC-END. */
static int cmd_uidfix(struct sync_server *s, const struct proto_cmd *cmd)
{
	stor_uid_list o, n;
	if (cmd->arg_count != 2 || sync_arg_uids(&cmd->args[0], SYNC_MAX_UIDS_PER_LINE * 4, &o) < 0)
		goto bad;
	if (sync_arg_uids(&cmd->args[1], SYNC_MAX_UIDS_PER_LINE * 4, &n) < 0 || n.count != o.count) {
		ARRAY_FREE(&o);
		ARRAY_FREE(&n);
		goto bad;
	}
	if (!mail_uids_valid(o.items, o.count) || !mail_uids_valid(n.items, n.count)) {
		ARRAY_FREE(&o);
		ARRAY_FREE(&n);
		srv_reply(s, cmd->tag, "NO", "LIMIT", MAIL_LIMITS_TEXT);
		return 0;
	}
	for (size_t i = 0; i < o.count; i++) {
		ARRAY_PUSH(&s->fix_old, o.items[i]);
		ARRAY_PUSH(&s->fix_new, n.items[i]);
	}
	ARRAY_FREE(&o);
	ARRAY_FREE(&n);
	srv_reply(s, cmd->tag, "OK", NULL, "held");
	return 0;
bad:
	srv_reply(s, cmd->tag, "BAD", "ARGS", "UIDFIX old-uidset new-uidset");
	return 0;
}

/* ---- The merge ---- */

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static int cmp_save(const void *a, const void *b)
{
	return cmp_u32(&((const struct srv_save *)a)->uid, &((const struct srv_save *)b)->uid);
}

static ssize_t find_msg(const stor_msg_list *l, uint32_t uid)
{
	size_t lo = 0, hi = l->count;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (l->items[mid].uid == uid)
			return (ssize_t)mid;
		if (l->items[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

static ssize_t find_tomb(const stor_tombstone_list *l, uint32_t uid)
{
	size_t lo = 0, hi = l->count;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (l->items[mid].uid == uid)
			return (ssize_t)mid;
		if (l->items[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

static bool uid_in(const stor_uid_list *l, uint32_t uid)
{
	/* l is sorted. */
	return l->count > 0 && bsearch(&uid, l->items, l->count, sizeof(uint32_t), cmp_u32) != NULL;
}

static void uids_sort_unique(stor_uid_list *l);

static int cmp_guid_v(const void *a, const void *b)
{
	return guid_cmp(a, b);
}

static bool guid_in(const srv_guid_list *l, const struct guid *g)
{
	/* l is sorted. */
	return l->count > 0 && bsearch(g, l->items, l->count, sizeof(*g), cmp_guid_v) != NULL;
}

static void guids_sort(srv_guid_list *l)
{
	if (l->count > 1)
		qsort(l->items, l->count, sizeof(l->items[0]), cmp_guid_v);
}

static void uexp_push(struct srv_merge *m, uint32_t uid, const struct guid *g)
{
	struct sync_uexp u = { uid, *g };
	ARRAY_PUSH(&m->uexp_client, u);
}

/* Whether the client expunged uid, which holds here a message the client
 * has under another UID: the client moved it (a sync with a third node
 * renumbered it), whatever L says (a first sync has L = 1).  Then its new
 * UID stands, and our copy at uid goes with the client's other expunges. */
static bool client_moved_from(struct sync_server *s, uint32_t uid)
{
	struct srv_merge *m = &s->merge;
	if (!uid_in(&s->expunges, uid))
		return false;
	if (!uid_in(&m->cexp_low, uid)) {
		ARRAY_PUSH(&m->cexp_low, uid);
		uids_sort_unique(&m->cexp_low);
	}
	return true;
}

/* The UID other than cs's at which this node holds cs's message, unless
 * the client moved it from there: *uid_r, or 0 when there is none.
 * Returns 0, or -1 with *err. */
static int held_elsewhere(struct sync_server *s, const struct srv_save *cs, uint32_t *uid_r,
			  const char **err)
{
	int r = stor_msg_find_guid(s->db, &s->sel, &cs->guid, uid_r, err);
	if (r < 0)
		return -1;
	if (r == 0 || *uid_r == cs->uid || client_moved_from(s, *uid_r))
		*uid_r = 0;
	return 0;
}

static void uids_sort_unique(stor_uid_list *l)
{
	if (l->count == 0)
		return;
	qsort(l->items, l->count, sizeof(uint32_t), cmp_u32);
	size_t n = 1;
	for (size_t i = 1; i < l->count; i++) {
		if (l->items[i] != l->items[n - 1])
			l->items[n++] = l->items[i];
	}
	l->count = n;
}

/* Sets a message's whole flag state; flags named in stamps (may be NULL)
 * take those stamps' times (the user's change they come from). */
static int set_flags(struct sync_server *s, uint32_t uid, uint32_t flags,
		     const stor_string_list *kws, const stor_stamp_list *stamps, uint64_t modseq,
		     const char **error_r)
{
	struct stor_store req = {
		.op = STOR_FLAGS_REPLACE, .flags = flags,
		.keywords = (const char *const *)kws->items, .keyword_count = kws->count,
		.modseq = modseq,
		.stamps = stamps != NULL ? stamps->items : NULL,
		.stamp_count = stamps != NULL ? stamps->count : 0,
	};
	return stor_msg_store(s->db, &s->sel, &uid, 1, &req, NULL, NULL, error_r);
}

/* ---- The three-way flag merge (SPEC.md 10.3 "Flags") ----
 *
 * A message changed on both sides since M: per flag (each system flag and
 * every keyword either side holds or has a stamp for), a side changed it
 * when its stamp is above M.  Changed on one side: that side's value.
 * Changed on both (or, for copies that disagree, on neither) to different
 * values: the later change wins by its time, then by its modseq, and on a
 * full tie the flag is set.  Nothing depends on which side is the client,
 * so every pair of nodes decides alike. */
struct flag_merge {
	uint32_t flags;
	stor_string_list keywords;
	stor_stamp_list times;  /* the decided flags with the time of the change kept */
};

static void flag_merge_free(struct flag_merge *fm)
{
	stor_string_list_free(&fm->keywords);
	stor_stamp_list_free(&fm->times);
}

static bool kw_in(const stor_string_list *l, const char *name)
{
	for (size_t i = 0; i < l->count; i++) {
		if (strcasecmp(l->items[i], name) == 0)
			return true;
	}
	return false;
}

typedef ARRAY(const char *) name_list;

static void name_add(name_list *names, const char *name)
{
	if (strcmp(name, STOR_STAMP_ALL) == 0)
		return;
	for (size_t i = 0; i < names->count; i++) {
		if (strcasecmp(names->items[i], name) == 0)
			return;
	}
	ARRAY_PUSH(names, name);
}

static void flag_merge_run(const struct stor_msg *cur, uint32_t cflags, const stor_string_list *ckws,
			   const stor_stamp_list *cstamps, uint64_t M, struct flag_merge *fm_r)
{
	name_list names = ARRAY_INIT;
	memset(fm_r, 0, sizeof(*fm_r));
	for (uint32_t bit = 1; bit <= STOR_FLAG_DRAFT; bit <<= 1)
		name_add(&names, stor_flag_name((enum stor_flag)bit));
	for (size_t i = 0; i < cur->keywords.count; i++)
		name_add(&names, cur->keywords.items[i]);
	for (size_t i = 0; i < ckws->count; i++)
		name_add(&names, ckws->items[i]);
	for (size_t i = 0; i < cur->stamps.count; i++)
		name_add(&names, cur->stamps.items[i].name);
	for (size_t i = 0; i < cstamps->count; i++)
		name_add(&names, cstamps->items[i].name);
	for (size_t i = 0; i < names.count; i++) {
		const char *name = names.items[i];
		uint32_t bit = 0;
		for (uint32_t b = 1; b <= STOR_FLAG_DRAFT && bit == 0; b <<= 1) {
			if (strcasecmp(name, stor_flag_name((enum stor_flag)b)) == 0)
				bit = b;
		}
		bool sv = bit != 0 ? (cur->flags & bit) != 0 : kw_in(&cur->keywords, name);
		bool cv = bit != 0 ? (cflags & bit) != 0 : kw_in(ckws, name);
		uint64_t sm, cm;
		int64_t st, ct;
		stor_msg_stamp(cur, name, &sm, &st);
		stor_stamps_lookup(cstamps, name, &cm, &ct);
		bool sch = sm > M, cch = cm > M;
		bool val;
		int64_t t;
		if (sv == cv) {
			val = sv;
			if (!sch && !cch)
				goto decided;
			t = !cch ? st : !sch ? ct : st > ct ? st : ct;
		} else if (sch != cch) {
			val = sch ? sv : cv;
			t = sch ? st : ct;
		} else {
			bool client_later = ct != st ? ct > st : cm != sm ? cm > sm : cv;
			val = client_later ? cv : sv;
			t = client_later ? ct : st;
		}
		struct stor_stamp ts = { xstrdup(name), 0, t };
		ARRAY_PUSH(&fm_r->times, ts);
	decided:
		if (!val)
			continue;
		if (bit != 0)
			fm_r->flags |= bit;
		else
			ARRAY_PUSH(&fm_r->keywords, xstrdup(name));
	}
	ARRAY_FREE(&names);
}

static void wr_uid_lines(struct sync_server *s, const char *tag, const char *name,
			 const stor_uid_list *uids, uint64_t modseq)
{
	struct proto_wr w;
	proto_wr_init(&w, &s->out);
	for (size_t i = 0; i < uids->count; i += SYNC_MAX_UIDS_PER_LINE) {
		size_t n = uids->count - i;
		if (n > SYNC_MAX_UIDS_PER_LINE)
			n = SYNC_MAX_UIDS_PER_LINE;
		proto_wr_begin(&w, tag, name);
		proto_wr_uidset(&w, uids->items + i, n);
		proto_wr_u64(&w, modseq);
		proto_wr_end(&w);
	}
}

/* EXPUNGE lines of a user's expunges: UIDs ascending, one GUID each. */
static void wr_uexp_lines(struct sync_server *s, const char *tag, const struct sync_uexp *u,
			  size_t count, uint64_t modseq)
{
	struct proto_wr w;
	proto_wr_init(&w, &s->out);
	for (size_t i = 0; i < count; i += SYNC_MAX_USER_UIDS_PER_LINE) {
		size_t n = count - i;
		if (n > SYNC_MAX_USER_UIDS_PER_LINE)
			n = SYNC_MAX_USER_UIDS_PER_LINE;
		uint32_t uids[SYNC_MAX_USER_UIDS_PER_LINE];
		struct guid guids[SYNC_MAX_USER_UIDS_PER_LINE];
		for (size_t j = 0; j < n; j++) {
			uids[j] = u[i + j].uid;
			guids[j] = u[i + j].guid;
		}
		proto_wr_begin(&w, tag, "EXPUNGE");
		proto_wr_uidset(&w, uids, n);
		proto_wr_u64(&w, modseq);
		sync_wr_user_guids(&w, guids, n);
		proto_wr_end(&w);
	}
}

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
	memset(m, 0, sizeof(*m));
}

static void job_end(struct sync_server *s)
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
static int merge_start(struct sync_server *s, const char *tag)
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
	if (!mail_modseq_valid(m->N)) {
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
static void take_ours(struct srv_merge *m, struct srv_save *cs, uint32_t at)
{
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
	if (si < 0 && cs->uid < m->L) {
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
	if (!same_here && guid_in(&m->utombs, &cs->guid)) {
		uint32_t at;
		r = stor_msg_find_guid(s->db, &s->sel, &cs->guid, &at, err);
		if (r < 0) {
			if (have_other)
				stor_msg_free(&other);
			return -1;
		}
		if (r == 0) {
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
			take_ours(m, cs, elsewhere);
		} else {
			ARRAY_PUSH(&m->sr, cs->uid);
			cs->action = SAVE_RENUMBER;
		}
		if (si >= 0)
			m->handled[si] = true;
	} else if (ti >= 0) {
		uint32_t moved_to = 0;
		if (guid_cmp(&m->stombs.items[ti].guid, &cs->guid) == 0 &&
		    !m->stombs.items[ti].user) {
			/* Our engine's tombstone of this very message: we
			 * moved it (a UID conflict with a third node) when it
			 * lives on at another UID here. */
			if (held_elsewhere(s, cs, &moved_to, err) < 0) {
				if (have_other)
					stor_msg_free(&other);
				return -1;
			}
		}
		if (moved_to != 0) {
			take_ours(m, cs, moved_to);
		} else if (guid_cmp(&m->stombs.items[ti].guid, &cs->guid) == 0) {
			/* We expunged it: the expunge wins. */
			cs->action = SAVE_DROP;
			if (m->stombs.items[ti].user)
				uexp_push(m, cs->uid, &cs->guid);
			else
				ARRAY_PUSH(&m->exp_client, cs->uid);
		} else if (elsewhere != 0) {
			take_ours(m, cs, elsewhere);
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
		if (r > 0 && !client_moved_from(s, at)) {
			/* The same message under another UID here: the client
			 * drops its copy and takes ours.  (Not when the client
			 * expunged ours: it moved the message.) */
			take_ours(m, cs, at);
		}
	}
	if (have_other)
		stor_msg_free(&other);
	return 0;
}

/* The client drops its copy of a message we hold at another UID `at` (a
 * sync with a third node moved ours there) and takes ours: the flag
 * changes on its copy are still the user's, so they merge flag by flag
 * into ours first (SPEC.md 10.3 "Flags").  Taking ours as it was lost
 * every change made on the client's side since the move. */
static int merge_flags_into(struct sync_server *s, uint32_t at, const struct srv_save *cs,
			    const char **err)
{
	struct srv_merge *m = &s->merge;
	struct stor_msg cur;
	int r = stor_msg_get(s->db, &s->sel, at, &cur, err);
	if (r <= 0)
		return r;
	struct flag_merge fm;
	flag_merge_run(&cur, cs->f.flags, &cs->f.keywords, &cs->stamps, m->M, &fm);
	if (!sync_flags_equal(cur.flags, &cur.keywords, fm.flags, &fm.keywords)) {
		r = set_flags(s, at, fm.flags, &fm.keywords, &fm.times, m->N, err);
		merge_mark_dirty(m, at);
		m->touched = true;
	}
	flag_merge_free(&fm);
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
static int merge_apply_save(struct sync_server *s, struct srv_save *cs, const char **err)
{
	struct srv_merge *m = &s->merge;
	int r;
	if (cs->action == SAVE_DROP)
		return cs->drop_into == 0 ? 0 : merge_flags_into(s, cs->drop_into, cs, err);
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
			flag_merge_run(&cur, cs->f.flags, &cs->f.keywords, &cs->stamps, m->M, &fm);
			r = set_flags(s, cs->uid, fm.flags, &fm.keywords, &fm.times, m->N, err);
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
	if (r > 0 && !client_moved_from(s, at)) {
		take_ours(m, cs, at);
		merge_mark_dirty(m, at);
		return merge_flags_into(s, at, cs, err);
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

/* Applies one of the client's flag changes. */
static int merge_apply_store(struct sync_server *s, const struct srv_store *st, const char **err)
{
	struct srv_merge *m = &s->merge;
	struct stor_msg cur;
	if (uid_in(&m->cexp_low, st->uid))
		return 0;
	int r = stor_msg_get(s->db, &s->sel, st->uid, &cur, err);
	if (r <= 0)
		return r; /* expunged here: the EXPUNGE line tells the client */
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
	uint64_t ms = keep ? st->modseq : m->N;
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
		if (stor_msg_expunge_kind(s->db, &s->sel, &uid, 1, m->N, true, &done, err) < 0)
			return -1;
		ARRAY_FREE(&done);
		m->dirty[i] = true;
		m->touched = true;
		uexp_push(m, uid, &g);
		return 0;
	}
	/* Above everything the client had: its IMAP clients will see it as it
	 * is, so the modseq stays (a catch-up sync rewrites nothing here).
	 * Else it is raised to N. */
	if (msg->modseq <= m->cm) {
		if (set_flags(s, msg->uid, msg->flags, &msg->keywords, NULL, m->N, err) < 0)
			return -1;
		msg->modseq = m->N; /* our copy stays exact: same flags */
		m->touched = true;
	}
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
static int merge_step(struct sync_server *s)
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
			uint64_t next = m->cu > m->su ? m->cu : m->su;
			next += m->sr.count;
			for (size_t i = 0; i < s->saves.count; i++) {
				if (s->saves.items[i].action == SAVE_RENUMBER)
					next++;
			}
			/* Refused before this merge renumbers anything: the
			 * UIDs that conflicts move to must all be in bounds. */
			if (!mail_uidnext_valid(next))
				goto out_of_uids;
			m->next = m->cu > m->su ? m->cu : m->su;
			m->next += (uint32_t)m->sr.count;
			for (size_t i = 0; i < s->saves.count; i++) {
				if (s->saves.items[i].action == SAVE_RENUMBER)
					s->saves.items[i].new_uid = m->next++;
			}
			m->stage = MS_RENUMBER;
			m->pos = 0;
			break;
		case MS_RENUMBER:
			if (m->pos < m->sr.count) {
				uint32_t first = m->cu > m->su ? m->cu : m->su;
				uint32_t nu = first + (uint32_t)m->pos;
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

/* ---- FETCH, in steps ---- */

static int cmd_fetch(struct sync_server *s, const struct proto_cmd *cmd)
{
	stor_uid_list uids;
	if (cmd->arg_count != 1 || sync_arg_uids(&cmd->args[0], SYNC_MAX_UIDS_PER_LINE * 4, &uids) < 0) {
		srv_reply(s, cmd->tag, "BAD", "ARGS", "FETCH uidset");
		return 0;
	}
	memset(&s->fetch, 0, sizeof(s->fetch));
	snprintf(s->fetch.tag, sizeof(s->fetch.tag), "%s", cmd->tag);
	s->fetch.uids = uids;
	s->job = JOB_FETCH;
	return 0;
}

static struct srv_text_ref *text_ref_find(struct sync_server *s, uint32_t uid)
{
	size_t lo = 0, hi = s->text_refs.count;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (s->text_refs.items[mid].uid == uid)
			return &s->text_refs.items[mid];
		if (s->text_refs.items[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* Sends the texts of up to s->budget UIDs (and about
 * SYNC_FETCH_STEP_BYTES), then the completion once all are sent. */
static int fetch_step(struct sync_server *s)
{
	struct srv_fetch *f = &s->fetch;
	const char *err;
	struct proto_wr w;
	size_t bytes = 0;
	unsigned n = 0;
	proto_wr_init(&w, &s->out);
	while (f->pos < f->uids.count && n < s->budget && bytes < SYNC_FETCH_STEP_BYTES) {
		uint32_t uid = f->uids.items[f->pos++];
		struct stor_msg m;
		n++;
		const struct srv_text_ref *ref = text_ref_find(s, uid);
		if (ref != NULL) {
			buf_reset(&f->text);
			if (stor_text_read(s->db, &ref->guid, 0, ref->size, &f->text, &err) == 0) {
				proto_wr_begin(&w, f->tag, "TEXT");
				proto_wr_u64(&w, uid);
				proto_wr_guid(&w, &ref->guid);
				proto_wr_literal(&w, f->text.data, f->text.len);
				proto_wr_end(&w);
				bytes += f->text.len;
			} else {
				ARRAY_PUSH(&f->missing, uid);
			}
			continue;
		}
		int r = stor_msg_get(s->db, &s->sel, uid, &m, &err);
		if (r < 0) {
			srv_flush(s);
			job_end(s);
			return srv_fail(s, "FETCH: %s", err);
		}
		if (r == 0) {
			ARRAY_PUSH(&f->missing, uid);
			continue;
		}
		buf_reset(&f->text);
		if (stor_text_read(s->db, &m.guid, 0, m.size, &f->text, &err) == 0) {
			proto_wr_begin(&w, f->tag, "TEXT");
			proto_wr_u64(&w, m.uid);
			proto_wr_guid(&w, &m.guid);
			proto_wr_literal(&w, f->text.data, f->text.len);
			proto_wr_end(&w);
			bytes += f->text.len;
		} else {
			/* A text lost here: reported missing, not fatal. */
			ARRAY_PUSH(&f->missing, uid);
		}
		stor_msg_free(&m);
	}
	if (f->pos == f->uids.count) {
		if (f->missing.count > 0) {
			struct buf code = BUF_INIT;
			struct proto_wr cw;
			proto_wr_init(&cw, &code);
			buf_append_str(&code, "MISSING ");
			proto_wr_uidset(&cw, f->missing.items, f->missing.count);
			buf_append_byte(&code, '\0');
			proto_wr_status(&s->out, f->tag, "OK", (const char *)code.data, "fetched");
			buf_free(&code);
		} else {
			proto_wr_status(&s->out, f->tag, "OK", NULL, "fetched");
		}
		job_end(s);
	}
	srv_flush(s);
	return 0;
}

bool sync_server_in_sync(const struct sync_server *s)
{
	return s->in_sync;
}

bool sync_server_selected(const struct sync_server *s, struct guid *guid_r)
{
	if (s->selected)
		*guid_r = s->sel;
	return s->selected;
}

/* Runs one command now (the server is idle). */
static int srv_dispatch(struct sync_server *s, const struct proto_cmd *cmd)
{
	if (proto_cmd_is(cmd, "LIST"))
		return cmd_list(s, cmd);
	if (proto_cmd_is(cmd, "CREATE"))
		return cmd_create(s, cmd);
	if (proto_cmd_is(cmd, "DELETE"))
		return cmd_delete(s, cmd);
	if (proto_cmd_is(cmd, "RENAME"))
		return cmd_rename(s, cmd);
	if (proto_cmd_is(cmd, "SUBSCRIBE"))
		return cmd_subscribe(s, cmd, true);
	if (proto_cmd_is(cmd, "UNSUBSCRIBE"))
		return cmd_subscribe(s, cmd, false);
	if (proto_cmd_is(cmd, "MBOX"))
		return cmd_mbox(s, cmd);
	if (proto_cmd_is(cmd, "SELECT"))
		return cmd_select(s, cmd);
	static const char *const selected_cmds[] = {
		"SYNC-BEGIN", "FETCH", "SAVE", "STORE", "EXPUNGE", "UIDFIX", "SYNC-END", NULL
	};
	bool known = false;
	for (size_t i = 0; selected_cmds[i] != NULL && !known; i++)
		known = proto_cmd_is(cmd, selected_cmds[i]);
	if (!known) {
		srv_reply(s, cmd->tag, "BAD", "UNKNOWN-COMMAND", "not a sync command");
		return 0;
	}
	if (!s->selected) {
		srv_reply(s, cmd->tag, "BAD", "NOSELECT", "no mailbox selected");
		return 0;
	}
	if (proto_cmd_is(cmd, "SYNC-BEGIN"))
		return cmd_sync_begin(s, cmd);
	if (proto_cmd_is(cmd, "FETCH"))
		return cmd_fetch(s, cmd);
	if (!s->in_sync) {
		srv_reply(s, cmd->tag, "BAD", "PROTOCOL", "not in a sync");
		return 0;
	}
	if (proto_cmd_is(cmd, "SAVE"))
		return cmd_save(s, cmd);
	if (proto_cmd_is(cmd, "STORE"))
		return cmd_store(s, cmd);
	if (proto_cmd_is(cmd, "EXPUNGE"))
		return cmd_expunge(s, cmd);
	if (proto_cmd_is(cmd, "UIDFIX"))
		return cmd_uidfix(s, cmd);
	if (proto_cmd_is(cmd, "SYNC-END"))
		return merge_start(s, cmd->tag);
	srv_reply(s, cmd->tag, "BAD", "UNKNOWN-COMMAND", "not a sync command");
	return 0;
}

bool sync_server_busy(const struct sync_server *s)
{
	return s->job != JOB_NONE || buf_avail(&s->held) > 0;
}

void sync_server_set_budget(struct sync_server *s, unsigned budget)
{
	s->budget = budget != 0 ? budget : SYNC_DEFAULT_STEP_BUDGET;
}

int sync_server_step(struct sync_server *s)
{
	if (s->job == JOB_MERGE && merge_step(s) < 0)
		return -1;
	if (s->job == JOB_FETCH && fetch_step(s) < 0)
		return -1;
	/* Held commands, in order, until one starts a job again. */
	while (s->job == JOB_NONE && buf_avail(&s->held) > 0) {
		size_t used;
		const struct proto_cmd *cmd;
		int r = proto_parser_parse(s->held_parser, buf_rptr(&s->held), buf_avail(&s->held),
					   &used, &cmd);
		buf_consume(&s->held, used);
		if (r < 0)
			return srv_fail(s, "a held command does not parse again");
		if (r == 0)
			break; /* cannot happen: only whole lines are held */
		if (srv_dispatch(s, cmd) < 0)
			return -1;
		if (s->job != JOB_NONE)
			return 1;
	}
	if (buf_avail(&s->held) == 0)
		buf_reset(&s->held);
	return sync_server_busy(s) ? 1 : 0;
}

int sync_server_input(struct sync_server *s, const struct proto_cmd *cmd)
{
	if (proto_cmd_is_status(cmd) || strcmp(cmd->tag, "*") == 0)
		return 0; /* nothing of ours is pending */
	if (sync_server_busy(s)) {
		/* Answers keep the order of the commands: this one waits. */
		if (buf_avail(&s->held) > SYNC_MAX_HELD_INPUT)
			return srv_fail(s, "the peer sends commands without waiting for answers");
		sync_wr_cmd(&s->held, cmd);
		return 0;
	}
	if (srv_dispatch(s, cmd) < 0)
		return -1;
	/* Small jobs end at once, as if answered in one call. */
	if (s->job != JOB_NONE && sync_server_step(s) < 0)
		return -1;
	return 0;
}

int sync_server_feed(struct sync_server *s, const void *data, size_t len)
{
	const unsigned char *p = data;
	while (len > 0) {
		size_t used;
		const struct proto_cmd *cmd;
		int r = proto_parser_parse(s->parser, p, len, &used, &cmd);
		if (r < 0) {
			const char *code, *text;
			proto_parser_get_error(s->parser, &code, &text);
			return srv_fail(s, "parse error: %s", text);
		}
		p += used;
		len -= used;
		if (r == 1 && sync_server_input(s, cmd) < 0)
			return -1;
	}
	return 0;
}
