/* EXPUNGE and UID EXPUNGE (UIDPLUS): remove the \Deleted messages (of the
 * set).  The EXPUNGE/VANISHED replies come from the end-of-command sync. */
#include "imap/imap-commands.h"
#include "imap/imap-acl.h"

#include <string.h>

#include "lib/xalloc.h"

struct expunge_ctx {
	struct guid mailbox;
	stor_uid_list uids;
};

static void expunge_ctx_free(void *p)
{
	struct expunge_ctx *ec = p;
	ARRAY_FREE(&ec->uids);
	free(ec);
}

bool imap_cmd_expunge(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	if (cmd->count != (cmd->uid ? 1u : 0u) ||
	    (cmd->uid && cmd->args[0].type != IMAP_ARG_ATOM))
		return imap_cmd_done(cmd, "BAD", "Invalid EXPUNGE arguments");
	if (c->sel->readonly)
		return imap_cmd_done(cmd, "NO", "[READ-ONLY] Mailbox is read-only");
	uint32_t rights = imap_acl_sel_rights(c);
	if ((rights & ACL_EXPUNGE) == 0)
		return imap_acl_refuse(cmd, rights, ACL_EXPUNGE, "[NONEXISTENT] Mailbox does not exist");
	struct expunge_ctx *ec = xcalloc(1, sizeof(*ec));
	cmd->ctx = ec;
	cmd->ctx_free = expunge_ctx_free;
	ec->mailbox = c->sel->guid;
	imap_seqset set = ARRAY_INIT;
	if (cmd->uid) {
		if (strcmp(cmd->args[0].str, "$") == 0) {
			/* The saved search result (RFC 5182). */
			for (size_t i = 0; i < c->sel->saved.count; i++) {
				struct imap_seq_range r = { c->sel->saved.items[i],
							    c->sel->saved.items[i] };
				ARRAY_PUSH(&set, r);
			}
		} else if (imap_seqset_parse(cmd->args[0].str, &set) < 0) {
			ARRAY_FREE(&set);
			return imap_cmd_done(cmd, "BAD", "Invalid UID set");
		}
		uint32_t n = (uint32_t)c->sel->uids.count;
		imap_seqset_resolve(&set, n > 0 ? c->sel->uids.items[n - 1] : 0);
	}
	/* Only messages in the session's map can go, so read just their UID
	 * range: the keys of messages expunged before it are LevelDB deletion
	 * markers until a compaction drops them, and a seek from UID 1 steps
	 * over every one of them (in imaptest's stress mode, tens of
	 * thousands after a minute: most of the server's time went there). */
	stor_msg_list msgs = ARRAY_INIT;
	const char *err;
	size_t n = c->sel->uids.count;
	if (n == 0) {
		ARRAY_FREE(&set);
		return imap_cmd_done(cmd, "OK", "EXPUNGE completed");
	}
	if (stor_msg_list_range(c->server->db, &ec->mailbox, c->sel->uids.items[0],
				c->sel->uids.items[n - 1], &msgs, &err) < 0) {
		ARRAY_FREE(&set);
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	}
	for (size_t i = 0; i < msgs.count; i++) {
		const struct stor_msg *m = &msgs.items[i];
		if ((m->flags & STOR_FLAG_DELETED) == 0 || imap_sel_seq(c->sel, m->uid) == 0)
			continue;
		if (cmd->uid && !imap_seqset_contains(&set, m->uid))
			continue;
		ARRAY_PUSH(&ec->uids, m->uid);
	}
	stor_msg_list_free(&msgs);
	ARRAY_FREE(&set);
	if (ec->uids.count == 0)
		return imap_cmd_done(cmd, "OK", "EXPUNGE completed");
	cmd->waiting = true;
	repl_expunge(c->server->repl, c->sel->owner, &ec->mailbox, ec->uids.items, ec->uids.count,
		     imap_cmd_repl_done, cmd);
	return false;
}
