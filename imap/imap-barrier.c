/* Suspending a command for a read barrier and running it again. */
#include "imap/imap-barrier.h"

#include "lib/log.h"

static void barrier_done(void *ctx, const struct repl_result *res)
{
	(void)res;
	struct imap_cmd *cmd = ctx;
	if (--cmd->barrier_pending > 0)
		return;
	cmd->waiting = false;
	cmd->barrier_passed = true;
	if (cmd->client->dead) {
		/* Nobody reads the answer; this frees the client. */
		imap_cmd_done(cmd, "NO", "Connection closed");
		return;
	}
	if (cmd->ctx_free != NULL)
		cmd->ctx_free(cmd->ctx);
	cmd->ctx = NULL;
	cmd->ctx_free = NULL;
	imap_cmd_func *again = cmd->barrier_again;
	cmd->barrier_again = NULL;
	again(cmd);
}

bool imap_read_barrier_many(struct imap_cmd *cmd, imap_cmd_func *again,
			    const struct guid *mailboxes, size_t count)
{
	struct imap_client *c = cmd->client;
	if (cmd->barrier_passed || count == 0)
		return true;
	/* Held until every barrier was started: one that completes at once
	 * must not run the command again before the others are asked. */
	cmd->barrier_pending = 1;
	cmd->barrier_again = again;
	for (size_t i = 0; i < count; i++) {
		cmd->barrier_pending++;
		if (repl_read_barrier(c->server->repl, c->user, &mailboxes[i], barrier_done, cmd))
			cmd->barrier_pending--;
	}
	if (--cmd->barrier_pending == 0) {
		cmd->barrier_again = NULL;
		return true;
	}
	cmd->waiting = true;
	log_debug("imap[%016llx]: %s waits for %u read barriers", (unsigned long long)c->id,
		  cmd->name, cmd->barrier_pending);
	return false;
}

bool imap_read_barrier(struct imap_cmd *cmd, imap_cmd_func *again, const struct guid *mailbox)
{
	return imap_read_barrier_many(cmd, again, mailbox, 1);
}

bool imap_read_barrier_modseq(struct imap_cmd *cmd, imap_cmd_func *again,
			      const struct guid *mailbox, uint64_t modseq)
{
	if (cmd->barrier_passed)
		return true;
	struct stor_mailbox mb;
	const char *err;
	if (stor_mailbox_get_by_guid(cmd->client->server->db, mailbox, &mb, &err) <= 0)
		return true;
	bool behind = modseq > mb.highestmodseq;
	stor_mailbox_free(&mb);
	return !behind || imap_read_barrier(cmd, again, mailbox);
}
