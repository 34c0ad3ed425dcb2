/* APPEND: flags, date-time and the message literal; APPENDUID (UIDPLUS).
 * The literal stays in the parser's buffer until the seam completes. */
#include "imap/imap-commands.h"

#include <string.h>
#include <time.h>

#include "lib/clock.h"
#include "lib/xalloc.h"

struct append_ctx {
	struct guid mailbox;
	struct repl_append req;
	imap_str_array keywords;
};

static void append_ctx_free(void *p)
{
	struct append_ctx *ac = p;
	ARRAY_FREE(&ac->keywords);
	free(ac);
}

static void append_done(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = ctx;
	cmd->waiting = false;
	if (res->error != REPL_OK)
		imap_cmd_done(cmd, "NO", "%s%s", imap_repl_error_code(res->error), res->error_msg);
	else
		imap_cmd_done(cmd, "OK", "[APPENDUID %u %u] APPEND completed", res->uidvalidity,
			      res->uid);
}

bool imap_cmd_append(struct imap_cmd *cmd)
{
	struct imap_client *c = cmd->client;
	const struct imap_arg *args = cmd->args;
	size_t n = cmd->count;
	if (n < 2 || n > 4 || !imap_arg_is_string(&args[0]))
		return imap_cmd_done(cmd, "BAD", "APPEND takes a mailbox, flags, a date and a message");
	struct append_ctx *ac = xcalloc(1, sizeof(*ac));
	cmd->ctx = ac;
	cmd->ctx_free = append_ctx_free;
	size_t i = 1;
	const char *err;
	if (i < n - 1 && args[i].type == IMAP_ARG_LIST) {
		if (imap_parse_flags(&args[i], &ac->req.flags, &ac->keywords, true, &err) < 0)
			return imap_cmd_done(cmd, "BAD", "%s", err);
		i++;
	}
	ac->req.internaldate = clock_wall_s();
	ac->req.internaldate_tz = 0;
	if (i < n - 1) {
		const char *d = imap_arg_cstr(&args[i]);
		if (d == NULL || args[i].type == IMAP_ARG_LIST ||
		    imap_parse_datetime(d, &ac->req.internaldate, &ac->req.internaldate_tz) < 0)
			return imap_cmd_done(cmd, "BAD", "Invalid date-time");
		i++;
	}
	if (i != n - 1 || args[i].type == IMAP_ARG_LIST)
		return imap_cmd_done(cmd, "BAD", "APPEND takes a mailbox, flags, a date and a message");
	if (args[i].type != IMAP_ARG_LITERAL && args[i].type != IMAP_ARG_STRING)
		return imap_cmd_done(cmd, "BAD", "The message must be a literal");
	ac->req.text = args[i].str;
	ac->req.text_len = args[i].len;
	ac->req.keywords = ac->keywords.items;
	ac->req.keyword_count = ac->keywords.count;
	char *name = imap_mailbox_name(args[0].str, args[0].len, &err);
	if (name == NULL)
		return imap_cmd_done(cmd, "NO", "%s", err);
	struct stor_mailbox mb;
	int r = stor_mailbox_get(c->server->db, c->user, name, &mb, &err);
	free(name);
	if (r < 0)
		return imap_cmd_done(cmd, "NO", "[SERVERBUG] %s", err);
	if (r == 0)
		return imap_cmd_done(cmd, "NO", "[TRYCREATE] Mailbox does not exist");
	ac->mailbox = mb.guid;
	stor_mailbox_free(&mb);
	cmd->waiting = true;
	repl_append(c->server->repl, c->user, &ac->mailbox, &ac->req, append_done, cmd);
	return false;
}
