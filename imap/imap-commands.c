/* The command table and dispatcher, and the capability list.
 *
 * The dispatcher resolves "UID x", checks the state the command needs, and
 * hands a struct imap_cmd to the handler.  Handlers finish with
 * imap_cmd_done(), at once or later from a seam completion. */
#include "imap/imap-commands.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "imap/imap-acl.h"

enum cmd_state {
	CMD_ANY,
	CMD_NOAUTH,
	CMD_AUTH,     /* authenticated or selected */
	CMD_SELECTED,
};

#define CMD_F_UID (1 << 0)        /* may follow "UID" */
#define CMD_F_SEQ_BLOCKS_EXPUNGE (1 << 1) /* non-UID form may not report expunges */

static const struct {
	const char *name;
	imap_cmd_func *func;
	enum cmd_state state;
	unsigned flags;
} commands[] = {
	{ "CAPABILITY", imap_cmd_capability, CMD_ANY, 0 },
	{ "NOOP", imap_cmd_noop, CMD_ANY, 0 },
	{ "LOGOUT", imap_cmd_logout, CMD_ANY, 0 },
	{ "ID", imap_cmd_id, CMD_ANY, 0 },
	{ "STARTTLS", imap_cmd_starttls, CMD_NOAUTH, 0 },
	{ "LOGIN", imap_cmd_login, CMD_NOAUTH, 0 },
	{ "AUTHENTICATE", imap_cmd_authenticate, CMD_NOAUTH, 0 },
	{ "ENABLE", imap_cmd_enable, CMD_AUTH, 0 },
	{ "SELECT", imap_cmd_select, CMD_AUTH, 0 },
	{ "EXAMINE", imap_cmd_examine, CMD_AUTH, 0 },
	{ "CREATE", imap_cmd_create, CMD_AUTH, 0 },
	{ "DELETE", imap_cmd_delete, CMD_AUTH, 0 },
	{ "RENAME", imap_cmd_rename, CMD_AUTH, 0 },
	{ "SUBSCRIBE", imap_cmd_subscribe, CMD_AUTH, 0 },
	{ "UNSUBSCRIBE", imap_cmd_unsubscribe, CMD_AUTH, 0 },
	{ "LIST", imap_cmd_list, CMD_AUTH, 0 },
	{ "LSUB", imap_cmd_lsub, CMD_AUTH, 0 },
	{ "NAMESPACE", imap_cmd_namespace, CMD_AUTH, 0 },
	{ "STATUS", imap_cmd_status, CMD_AUTH, 0 },
	{ "APPEND", imap_cmd_append, CMD_AUTH, 0 },
	{ "IDLE", imap_cmd_idle, CMD_AUTH, 0 },
	{ "CHECK", imap_cmd_check, CMD_SELECTED, 0 },
	{ "CLOSE", imap_cmd_close, CMD_SELECTED, 0 },
	{ "UNSELECT", imap_cmd_unselect, CMD_SELECTED, 0 },
	{ "EXPUNGE", imap_cmd_expunge, CMD_SELECTED, CMD_F_UID },
	{ "SEARCH", imap_cmd_search, CMD_SELECTED, CMD_F_UID | CMD_F_SEQ_BLOCKS_EXPUNGE },
	{ "CANCELUPDATE", imap_cmd_cancelupdate, CMD_SELECTED, 0 },
	{ "FETCH", imap_cmd_fetch, CMD_SELECTED, CMD_F_UID | CMD_F_SEQ_BLOCKS_EXPUNGE },
	{ "STORE", imap_cmd_store, CMD_SELECTED, CMD_F_UID | CMD_F_SEQ_BLOCKS_EXPUNGE },
	{ "COPY", imap_cmd_copy, CMD_SELECTED, CMD_F_UID },
	{ "MOVE", imap_cmd_move, CMD_SELECTED, CMD_F_UID },
	{ "THREAD", imap_cmd_thread, CMD_SELECTED, CMD_F_UID | CMD_F_SEQ_BLOCKS_EXPUNGE },
	{ "SORT", imap_cmd_sort, CMD_SELECTED, CMD_F_UID | CMD_F_SEQ_BLOCKS_EXPUNGE },
	{ "MYRIGHTS", imap_cmd_myrights, CMD_AUTH, 0 },
	{ "GETACL", imap_cmd_getacl, CMD_AUTH, 0 },
	{ "SETACL", imap_cmd_setacl, CMD_AUTH, 0 },
	{ "DELETEACL", imap_cmd_deleteacl, CMD_AUTH, 0 },
	{ "LISTRIGHTS", imap_cmd_listrights, CMD_AUTH, 0 },
};

void imap_capabilities(struct imap_client *c, struct buf *out)
{
	buf_append_str(out, "IMAP4rev1 IMAP4rev2 LITERAL+ LITERAL- SASL-IR ID ENABLE IDLE NAMESPACE UIDPLUS "
			    "UNSELECT CHILDREN MOVE CONDSTORE QRESYNC SPECIAL-USE");
	buf_append_str(out, " ESEARCH SEARCHRES CONTEXT=SEARCH");
	buf_append_str(out, " LIST-EXTENDED LIST-STATUS");
	buf_append_str(out, " MULTIAPPEND CATENATE");
	buf_append_str(out, " BINARY");
	buf_append_str(out, " STATUS=SIZE");
	buf_append_str(out, " THREAD=REFS THREAD=REFERENCES THREAD=ORDEREDSUBJECT");
	buf_append_str(out, " SORT SORT=DISPLAY ESORT CONTEXT=SORT");
	buf_append_str(out, " ACL RIGHTS=texk");
	if (c->state == IMAP_STATE_NOAUTH) {
		if (c->server->ssl_ctx != NULL && c->ssl == NULL)
			buf_append_str(out, " STARTTLS");
		if (imap_client_plaintext_ok(c))
			buf_append_str(out, " AUTH=PLAIN");
		else
			buf_append_str(out, " LOGINDISABLED");
	}
}

void imap_commands_dispatch(struct imap_client *c, const struct imap_command *pc)
{
	const char *name = pc->name;
	const struct imap_arg *args = pc->args;
	size_t count = pc->count;
	bool uid = false;
	char uname[33];
	if (strcmp(name, "UID") == 0) {
		if (count == 0 || args[0].type != IMAP_ARG_ATOM || args[0].len >= sizeof(uname)) {
			imap_client_printf(c, "%s BAD Missing command after UID\r\n", pc->tag);
			imap_parser_reset(c->parser);
			return;
		}
		for (size_t i = 0; i <= args[0].len; i++)
			uname[i] = (char)toupper((unsigned char)args[0].str[i]);
		name = uname;
		uid = true;
		args++;
		count--;
	}
	size_t i;
	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (strcmp(commands[i].name, name) == 0)
			break;
	struct imap_cmd *cmd = xcalloc(1, sizeof(*cmd));
	cmd->client = c;
	cmd->tag = pc->tag;
	cmd->name = name == uname ? "UID" : name;
	cmd->uid = uid;
	cmd->args = args;
	cmd->count = count;
	/* IDLE lasts as long as the client wants: not a latency. */
	cmd->started_us = strcmp(cmd->name, "IDLE") != 0 ? clock_mono_us() : 0;
	c->cmd = cmd;
	if (i == sizeof(commands) / sizeof(commands[0])) {
		imap_cmd_done(cmd, "BAD", "Unknown command");
		return;
	}
	cmd->name = commands[i].name;
	if (uid && (commands[i].flags & CMD_F_UID) == 0) {
		imap_cmd_done(cmd, "BAD", "UID not allowed with %s", commands[i].name);
		return;
	}
	cmd->no_expunge = !uid && (commands[i].flags & CMD_F_SEQ_BLOCKS_EXPUNGE) != 0;
	switch (commands[i].state) {
	case CMD_ANY:
		break;
	case CMD_NOAUTH:
		if (c->state != IMAP_STATE_NOAUTH) {
			imap_cmd_done(cmd, "BAD", "Already authenticated");
			return;
		}
		break;
	case CMD_AUTH:
		if (c->state == IMAP_STATE_NOAUTH) {
			imap_cmd_done(cmd, "BAD", "Not authenticated");
			return;
		}
		break;
	case CMD_SELECTED:
		if (c->state != IMAP_STATE_SELECTED) {
			imap_cmd_done(cmd, "BAD", "No mailbox selected");
			return;
		}
		break;
	}
	log_debug("imap[%016llx]: %s%s", (unsigned long long)c->id, uid ? "UID " : "",
		  commands[i].name);
	if (commands[i].state == CMD_SELECTED && !imap_acl_selected_ok(cmd))
		return;
	commands[i].func(cmd);
}

const char *imap_repl_error_code(enum repl_error e)
{
	switch (e) {
	case REPL_OK:
		return "";
	case REPL_ERR_NOTFOUND:
		return "[NONEXISTENT] ";
	case REPL_ERR_EXISTS:
		return "[ALREADYEXISTS] ";
	case REPL_ERR_TOOBIG:
		return "[TOOBIG] ";
	case REPL_ERR_INVALID:
		return "[CANNOT] ";
	case REPL_ERR_INTERNAL:
		return "[SERVERBUG] ";
	case REPL_ERR_LIMIT:
		return "[LIMIT] ";
	case REPL_ERR_UNAVAILABLE:
		return "[UNAVAILABLE] ";
	}
	return "";
}

void imap_cmd_repl_done(void *ctx, const struct repl_result *res)
{
	struct imap_cmd *cmd = ctx;
	cmd->waiting = false;
	if (res->error != REPL_OK)
		imap_cmd_done(cmd, "NO", "%s%s", imap_repl_error_code(res->error),
			      res->error_msg != NULL ? res->error_msg : "failed");
	else
		imap_cmd_done(cmd, "OK", "%s completed", cmd->name);
}
