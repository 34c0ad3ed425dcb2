/* COPY, MOVE and their UID forms, answering with COPYUID (UIDPLUS).  MOVE's
 * expunges are reported by the end-of-command sync, like any expunge. */
#include "imap/imap-commands.h"
#include "imap/imap-acl.h"
#include "imap/imap-pseen.h"

#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/xalloc.h"
#include "storage/acl-rights.h"
#include "storage/storage-pseen.h"

/* A STORE of \Seen on the new messages after the copy (SPEC.md 7.7). */
struct seen_step {
	stor_uid_list uids;
	enum stor_flag_op op;
	bool seen_of;              /* the user's own record, not the message's flag */
};

struct copy_ctx {
	struct guid src, dst;
	stor_uid_list uids;
	bool move;
	/* Private \Seen on either side: the copy takes the \Seen the user
	 * sees, set by STOREs through the master once the new UIDs are known,
	 * so the COPY on the wire (and a forwarded one) stays as it is. */
	bool src_pseen, dst_pseen;
	bool clear_own;            /* the copy's own \Seen is another owner's */
	bool set_record;           /* the user may set their record there */
	char *dst_owner;
	stor_uid_list seen_src;    /* source UIDs the user sees \Seen, ascending */
	/* The answer, kept until the STOREs are done. */
	uint32_t uidvalidity;
	stor_uid_list res_src, res_dst;
	/* A copy made at the master under a UID this node's store could not
	 * take (uid 0, repl.h): no COPYUID, none of its UIDs told. */
	bool uids_unknown;
	struct seen_step steps[2];
	size_t step_count, next_step;
	struct stor_store req;
};

static void copy_ctx_free(void *p)
{
	struct copy_ctx *cc = p;
	ARRAY_FREE(&cc->uids);
	ARRAY_FREE(&cc->seen_src);
	ARRAY_FREE(&cc->res_src);
	ARRAY_FREE(&cc->res_dst);
	for (size_t i = 0; i < 2; i++)
		ARRAY_FREE(&cc->steps[i].uids);
	free(cc->dst_owner);
	free(cc);
}

static void copy_ok(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	struct copy_ctx *cc = cmd->ctx;
	cmd->waiting = false;
	/* The source UIDs come back ascending; the new UIDs are in the same
	 * order and ascending too, as COPYUID requires. */
	if (cc->uids_unknown) {
		imap_cmd_done(cmd, "OK", "%s completed", cc->move ? "MOVE" : "COPY");
		return;
	}
	struct buf src = BUF_INIT, dst = BUF_INIT;
	imap_seqset_format(cc->res_src.items, cc->res_src.count, &src);
	imap_seqset_format(cc->res_dst.items, cc->res_dst.count, &dst);
	if (cc->move) {
		imap_client_printf(c, "* OK [COPYUID %u %s %s] Moved\r\n", cc->uidvalidity,
				   buf_cstr(&src), buf_cstr(&dst));
		imap_cmd_done(cmd, "OK", "MOVE completed");
	} else {
		imap_cmd_done(cmd, "OK", "[COPYUID %u %s %s] COPY completed", cc->uidvalidity,
			      buf_cstr(&src), buf_cstr(&dst));
	}
	buf_free(&src);
	buf_free(&dst);
}

static void next_step(struct imap_cmd *cmd);

/* The messages are copied: a \Seen STORE that fails does not undo them
 * (the copy then shows the \Seen it came with, or none), so the COPY is
 * still OK, as APPEND's record STORE. */
static void step_done(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = ctx;
	if (res->error != REPL_OK)
		log_warnx("COPY: \\Seen of the new messages not set: %s",
			  res->error_msg != NULL ? res->error_msg : "failed");
	next_step(cmd);
}

static void next_step(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	struct copy_ctx *cc = cmd->ctx;
	while (cc->next_step < cc->step_count && !c->server->stopping) {
		struct seen_step *st = &cc->steps[cc->next_step++];
		if (st->uids.count == 0)
			continue;
		memset(&cc->req, 0, sizeof(cc->req));
		cc->req.op = st->op;
		cc->req.flags = STOR_FLAG_SEEN;
		cc->req.seen_of = st->seen_of ? c->user : NULL;
		repl_store(c->server->repl, cc->dst_owner, &cc->dst, st->uids.items, st->uids.count,
			   &cc->req, step_done, cmd);
		return;
	}
	copy_ok(cmd);
}

static int uid_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static bool seen_by_user(const struct copy_ctx *cc, uint32_t src_uid)
{
	return cc->seen_src.count > 0 &&
	       bsearch(&src_uid, cc->seen_src.items, cc->seen_src.count, sizeof(uint32_t),
		       uid_cmp) != NULL;
}

/* What this node holds of a new message: whether it has its own \Seen
 * flag, and whether the user's record of it says seen.  Unknown (the copy
 * not here, a read failed) counts as differing, so that its STORE is sent
 * as before. */
enum copy_seen { SEEN_NO, SEEN_YES, SEEN_UNKNOWN };

struct copy_here {
	enum copy_seen own, record;
};

static struct copy_here copy_here(struct imap_client *c, const struct copy_ctx *cc,
				  uint32_t dst_uid, bool want_record)
{
	struct copy_here h = { SEEN_UNKNOWN, SEEN_UNKNOWN };
	struct stor_msg msg;
	const char *err;
	int r = stor_msg_get(c->server->db, &cc->dst, dst_uid, &msg, &err);
	if (r < 0)
		log_errorx("COPY: \\Seen of the copy at UID %u not read: %s", dst_uid, err);
	if (r <= 0)
		return h;
	h.own = (msg.flags & STOR_FLAG_SEEN) != 0 ? SEEN_YES : SEEN_NO;
	bool seen;
	if (want_record) {
		if (stor_pseen_seen(c->server->db, &cc->dst, &msg.guid, c->user, &seen, &err) < 0)
			log_errorx("COPY: \\Seen record of the copy at UID %u not read: %s",
				   dst_uid, err);
		else
			h.record = seen ? SEEN_YES : SEEN_NO;
	}
	stor_msg_free(&msg);
	return h;
}

/* The \Seen STOREs the new messages need (SPEC.md 7.7): into the user's
 * own mailbox the copy's own \Seen is the user's view of the source; into
 * one where \Seen is private for the user, the copy's own \Seen is off
 * when it came from another owner's (or the user's own) mailbox, and the
 * user's record is their view.  Each STORE names only the copies whose
 * \Seen is not so already: a STORE of a flag spends a modseq on every
 * message it names, also where the value stays (SPEC.md 10.2), and the
 * copy came with the source's own \Seen, which is often the view. */
static void plan_steps(struct imap_client *c, struct copy_ctx *cc)
{
	struct seen_step *clear = &cc->steps[0], *set = &cc->steps[1];
	if (cc->src_pseen && !cc->dst_pseen) {
		set->op = STOR_FLAGS_ADD;
		clear->op = STOR_FLAGS_REMOVE;
		for (size_t i = 0; i < cc->res_src.count; i++) {
			bool want = seen_by_user(cc, cc->res_src.items[i]);
			struct copy_here h = copy_here(c, cc, cc->res_dst.items[i], false);
			struct seen_step *st = want ? set : clear;
			if (h.own != (want ? SEEN_YES : SEEN_NO))
				ARRAY_PUSH(&st->uids, cc->res_dst.items[i]);
		}
		cc->step_count = 2;
		return;
	}
	if (!cc->dst_pseen)
		return;
	/* The owner's flag goes first, so the user's record is the last
	 * word the user's own sessions hear. */
	clear->op = STOR_FLAGS_REMOVE;
	set->op = STOR_FLAGS_ADD;
	set->seen_of = true;
	for (size_t i = 0; i < cc->res_src.count; i++) {
		bool want_record = cc->set_record && seen_by_user(cc, cc->res_src.items[i]);
		if (!cc->clear_own && !want_record)
			continue;
		struct copy_here h = copy_here(c, cc, cc->res_dst.items[i], want_record);
		if (cc->clear_own && h.own != SEEN_NO)
			ARRAY_PUSH(&clear->uids, cc->res_dst.items[i]);
		if (want_record && h.record != SEEN_YES)
			ARRAY_PUSH(&set->uids, cc->res_dst.items[i]);
	}
	cc->step_count = 2;
}

static void copy_done(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = ctx;
	struct copy_ctx *cc = cmd->ctx;
	if (res->error != REPL_OK) {
		cmd->waiting = false;
		imap_cmd_done(cmd, "NO", "%s%s", imap_repl_error_code(res->error), res->error_msg);
		return;
	}
	if (res->uid_count == 0) {
		cmd->waiting = false;
		imap_cmd_done(cmd, "OK", "No messages %s", cc->move ? "moved" : "copied");
		return;
	}
	cc->uidvalidity = res->uidvalidity;
	for (size_t i = 0; i < res->uid_count; i++) {
		if (res->dst_uids[i] == 0) {
			cc->uids_unknown = true;
			continue;
		}
		ARRAY_PUSH(&cc->res_src, res->src_uids[i]);
		ARRAY_PUSH(&cc->res_dst, res->dst_uids[i]);
	}
	plan_steps(cmd->client, cc);
	next_step(cmd);
}

/* The source UIDs whose \Seen the user sees, from this node's store: the
 * view this session shows. */
static void read_seen(struct imap_client *c, struct copy_ctx *cc)
{
	for (size_t i = 0; i < cc->uids.count; i++) {
		struct stor_msg msg;
		const char *err;
		int r = stor_msg_get(c->server->db, &cc->src, cc->uids.items[i], &msg, &err);
		if (r < 0)
			log_errorx("COPY: \\Seen of UID %u not read: %s", cc->uids.items[i], err);
		if (r <= 0)
			continue;
		imap_pseen_view(c, &cc->src, &msg, 1);
		if ((msg.flags & STOR_FLAG_SEEN) != 0)
			ARRAY_PUSH(&cc->seen_src, msg.uid);
		stor_msg_free(&msg);
	}
}

static bool do_copy(struct imap_cmd *cmd, bool move)
{
	struct imap_client *c = cmd->client;
	if (cmd->count != 2 || cmd->args[0].type != IMAP_ARG_ATOM ||
	    !imap_arg_is_string(&cmd->args[1]))
		return imap_cmd_done(cmd, "BAD", "%s takes a set and a mailbox", cmd->name);
	if (move && c->sel->readonly)
		return imap_cmd_done(cmd, "NO", "[READ-ONLY] Mailbox is read-only");
	struct copy_ctx *cc = xcalloc(1, sizeof(*cc));
	cmd->ctx = cc;
	cmd->ctx_free = copy_ctx_free;
	cc->move = move;
	if (imap_sel_resolve(c->sel, cmd->args[0].str, cmd->uid, &cc->uids) < 0)
		return imap_cmd_done(cmd, "BAD", "Invalid sequence set");
	const char *err;
	char *name = imap_client_mailbox_name(cmd->client, cmd->args[1].str, cmd->args[1].len, &err);
	if (name == NULL)
		return imap_cmd_done(cmd, "NO", "%s", err);
	struct stor_mailbox mb;
	uint32_t rights;
	int r = imap_acl_mailbox_get(c, name, &mb, &rights, &err);
	free(name);
	if (r < 0)
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	if (r == 0)
		return imap_cmd_done(cmd, "NO", "[TRYCREATE] Mailbox does not exist");
	cc->dst = mb.guid;
	cc->dst_owner = xstrdup(mb.user);
	stor_mailbox_free(&mb);
	if ((rights & ACL_INSERT) == 0)
		return imap_acl_refuse(cmd, rights, ACL_INSERT, "[TRYCREATE] Mailbox does not exist");
	uint32_t src_rights = imap_acl_sel_rights(c);
	if ((src_rights & ACL_READ) == 0)
		return imap_acl_refuse(cmd, src_rights, ACL_READ,
				       "[NONEXISTENT] Mailbox does not exist");
	if (move && (src_rights & (ACL_DELETE_MSG | ACL_EXPUNGE)) != (ACL_DELETE_MSG | ACL_EXPUNGE))
		return imap_acl_refuse(cmd, src_rights,
				       (ACL_DELETE_MSG | ACL_EXPUNGE) & ~src_rights,
				       "[NONEXISTENT] Mailbox does not exist");
	cc->src = c->sel->guid;
	if (cc->uids.count == 0)
		return imap_cmd_done(cmd, "OK", "No messages %s", move ? "moved" : "copied");
	cc->src_pseen = imap_pseen_sel(c);
	cc->dst_pseen = imap_pseen_for(c, cc->dst_owner);
	cc->clear_own = cc->dst_pseen && strcmp(c->sel->owner, cc->dst_owner) != 0;
	cc->set_record = cc->dst_pseen && (rights & ACL_SEEN) != 0;
	if ((cc->src_pseen && !cc->dst_pseen) || cc->set_record)
		read_seen(c, cc);
	cmd->waiting = true;
	repl_copy(c->server->repl, c->sel->owner, &cc->src, cc->uids.items, cc->uids.count, &cc->dst, move,
		  copy_done, cmd);
	return false;
}

bool imap_cmd_copy(struct imap_cmd *cmd)
{
	return do_copy(cmd, false);
}

bool imap_cmd_move(struct imap_cmd *cmd)
{
	return do_copy(cmd, true);
}
