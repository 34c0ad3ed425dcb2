/* The admin command DELIVER (see repl-admin.c for its protocol): checks
 * that the user exists, creates the user's default mailboxes if it has
 * none, and appends the body through the seam like an IMAP APPEND,
 * answering once the message is durable. */
#include "replicator/repl-admin-private.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/passwd.h"
#include "lib/str.h"
#include "lib/xalloc.h"
#include "storage/storage-users.h"

struct user_find {
	const char *user;
	bool found;
};

static void user_find_cb(void *ctx, const char *user)
{
	struct user_find *f = ctx;
	if (strcmp(f->user, user) == 0)
		f->found = true;
}

static void deliver_appended(void *ctx, const struct repl_result *res)
{
	struct admin_conn *c = ctx;
	if (!admin_conn_waited(c))
		return;
	if (res->error != REPL_OK) {
		log_warnx("admin: deliver to %s/%s failed: %s", c->user, c->mailbox, res->error_msg);
		if (res->error == REPL_ERR_UNAVAILABLE) {
			/* starling deliver maps it to a temporary failure. */
			char *text = xasprintf("[UNAVAILABLE] %s", res->error_msg);
			admin_conn_reply(c, NULL, 0, "NO", text);
			free(text);
			return;
		}
		admin_conn_reply(c, NULL, 0, "NO", res->error == REPL_ERR_TOOBIG ? "message too large" :
					     res->error_msg);
		return;
	}
	/* uid 0: made at the master under a UID this node's store could not
	 * take (repl.h). */
	log_info("admin: delivered %llu bytes to %s/%s uid %u",
		 (unsigned long long)c->body.len, c->user, c->mailbox, res->uid);
	char text[32];
	snprintf(text, sizeof(text), "%u", res->uid);
	admin_conn_reply(c, NULL, 0, "OK", text);
}

static void deliver_append(struct admin_conn *c)
{
	struct stor_db *db = repl_db(c->admin->repl);
	struct stor_mailbox mb;
	const char *err;
	int r = stor_mailbox_get(db, c->user, c->mailbox, &mb, &err);
	if (r <= 0) {
		admin_conn_reply(c, NULL, 0, "NO", r < 0 ? err : "mailbox does not exist");
		return;
	}
	c->mailbox_guid = mb.guid;
	stor_mailbox_free(&mb);
	memset(&c->req, 0, sizeof(c->req));
	c->req.internaldate = clock_wall_s();
	c->req.text = c->body.data != NULL ? (const void *)c->body.data : "";
	c->req.text_len = c->body.len;
	c->state = CONN_WAITING;
	repl_append(c->admin->repl, c->user, &c->mailbox_guid, &c->req, deliver_appended, c);
}

static void deliver_defaults_done(void *ctx, const struct repl_result *res)
{
	struct admin_conn *c = ctx;
	if (!admin_conn_waited(c))
		return;
	if (res->error != REPL_OK) {
		admin_conn_reply(c, NULL, 0, "NO", res->error_msg);
		return;
	}
	deliver_append(c);
}

void admin_deliver_run(struct admin_conn *c)
{
	c->state = CONN_WAITING;
	admin_conn_update_io(c);
	repl_user_ensure_defaults(c->admin->repl, c->user, deliver_defaults_done, c);
}

void admin_deliver_request(struct admin_conn *c, char **tok)
{
	struct repl_admin *a = c->admin;
	struct stor_db *db = repl_db(a->repl);
	const char *err;
	uint64_t size;
	if (str_to_u64(tok[3], UINT64_MAX, &size) < 0) {
		admin_conn_reply(c, NULL, 0, "NO", "bad request: size");
		return;
	}
	if (size > a->cfg->max_message_size) {
		admin_conn_reply(c, NULL, 0, "NO", "message too large");
		return;
	}
	if (!passwd_user_name_valid(tok[1])) {
		admin_conn_reply(c, NULL, 0, "NO", "unknown user");
		return;
	}
	struct user_find f = { tok[1], false };
	char *perr = NULL;
	if (passwd_list(a->cfg->users_file, user_find_cb, &f, &perr) < 0) {
		admin_conn_reply(c, NULL, 0, "NO", perr);
		free(perr);
		return;
	}
	struct stor_cuser cu;
	int cr = f.found ? 0 : stor_cuser_get(db, tok[1], &cu, &err);
	if (cr < 0) {
		admin_conn_reply(c, NULL, 0, "NO", err);
		return;
	}
	if (cr > 0) {
		f.found = cu.hash != NULL;
		stor_cuser_free(&cu);
	}
	if (!f.found) {
		admin_conn_reply(c, NULL, 0, "NO", "unknown user");
		return;
	}
	const char *mbname = tok[2];
	if (strcasecmp(mbname, "INBOX") == 0)
		mbname = "INBOX";
	c->user = xstrdup(tok[1]);
	c->mailbox = xstrdup(mbname);
	admin_body_begin(c, BODY_DELIVER, size);
}
