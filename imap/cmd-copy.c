/* COPY, MOVE and their UID forms, answering with COPYUID (UIDPLUS).  MOVE's
 * expunges are reported by the end-of-command sync, like any expunge. */
#include "imap/imap-commands.h"
#include "imap/imap-acl.h"

#include <string.h>

#include "lib/xalloc.h"

struct copy_ctx {
	struct guid src, dst;
	stor_uid_list uids;
	bool move;
};

static void copy_ctx_free(void *p)
{
	struct copy_ctx *cc = p;
	ARRAY_FREE(&cc->uids);
	free(cc);
}

static void copy_done(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = ctx;
	struct imap_client *c = cmd->client;
	struct copy_ctx *cc = cmd->ctx;
	cmd->waiting = false;
	if (res->error != REPL_OK) {
		imap_cmd_done(cmd, "NO", "%s%s", imap_repl_error_code(res->error), res->error_msg);
		return;
	}
	if (res->uid_count == 0) {
		imap_cmd_done(cmd, "OK", "No messages %s", cc->move ? "moved" : "copied");
		return;
	}
	/* The source UIDs come back ascending; the new UIDs are in the same
	 * order and ascending too, as COPYUID requires. */
	struct buf src = BUF_INIT, dst = BUF_INIT;
	imap_seqset_format(res->src_uids, res->uid_count, &src);
	imap_seqset_format(res->dst_uids, res->uid_count, &dst);
	if (cc->move) {
		imap_client_printf(c, "* OK [COPYUID %u %s %s] Moved\r\n", res->uidvalidity,
				   buf_cstr(&src), buf_cstr(&dst));
		imap_cmd_done(cmd, "OK", "MOVE completed");
	} else {
		imap_cmd_done(cmd, "OK", "[COPYUID %u %s %s] COPY completed", res->uidvalidity,
			      buf_cstr(&src), buf_cstr(&dst));
	}
	buf_free(&src);
	buf_free(&dst);
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
