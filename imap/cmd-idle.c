/* IDLE (RFC 2177): after "+ idling" the session reports changes as soon as
 * the seam's watcher says they are durable (imap_sync_notify), until the
 * client sends DONE (read as a raw line by imap-client.c). */
#include "imap/imap-commands.h"

#include "lib/xalloc.h"

bool imap_cmd_idle(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	if (cmd->count != 0)
		return imap_cmd_done(cmd, "BAD", "IDLE takes no arguments");
	c->idle_tag = xstrdup(cmd->tag);
	imap_client_printf(c, "+ idling\r\n");
	imap_cmd_detach(cmd);
	/* Changes that happened before IDLE are reported right away. */
	imap_sync(c, true);
	return false;
}
