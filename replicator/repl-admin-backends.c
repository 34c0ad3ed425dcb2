/* The admin commands answered by a backend that starlingd sets at start-up
 * (see repl-admin.h; repl-admin.c for their protocol): MASTER (the mailbox
 * masters), RESYNC (repl-sync) and USER-* (the user table, repl-users). */
#include "replicator/repl-admin-private.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/passwd.h"
#include "lib/str.h"
#include "replicator/repl-users.h"

#define MASTER_TIMEOUT_MS 10000u

static void master_answered(void *ctx, const struct repl_mm_answer *ans)
{
	struct admin_conn *c = ctx;
	if (!admin_conn_waited(c))
		return;
	if (!ans->ok) {
		admin_conn_reply(c, NULL, 0, "NO", ans->error);
		return;
	}
	char epoch[32];
	repl_mm_epoch_str(ans->epoch, epoch, sizeof(epoch));
	struct buf out = BUF_INIT;
	buf_appendf(&out, "master: %u\nepoch: %s\nroot: %u\ngranule: %s\nis_master: %s\n",
		    ans->master, epoch, ans->root, ans->gkey, ans->am_master ? "yes" : "no");
	admin_conn_reply(c, out.data, out.len, "OK", "");
	buf_free(&out);
}

void admin_master_request(struct admin_conn *c, const char *user, const char *mbname)
{
	struct repl_admin *a = c->admin;
	if (a->master_ops == NULL) {
		admin_conn_reply(c, NULL, 0, "NO", "mailbox masters are not running");
		return;
	}
	if (!passwd_user_name_valid(user)) {
		admin_conn_reply(c, NULL, 0, "NO", "bad request: user name");
		return;
	}
	if (strcasecmp(mbname, "INBOX") == 0)
		mbname = "INBOX";
	struct stor_mailbox mb;
	const char *err;
	int r = stor_mailbox_get(repl_db(a->repl), user, mbname, &mb, &err);
	if (r <= 0) {
		admin_conn_reply(c, NULL, 0, "NO", r < 0 ? err : "mailbox does not exist");
		return;
	}
	char gkey[MM_GKEY_MAX + 1];
	r = a->master_ops->granule_key(a->master_ctx, user, &mb.guid, gkey, sizeof(gkey));
	stor_mailbox_free(&mb);
	if (r < 0) {
		admin_conn_reply(c, NULL, 0, "NO", "bad request: no granule key for this user");
		return;
	}
	c->state = CONN_WAITING;
	admin_conn_update_io(c);
	if (a->master_ops->request(a->master_ctx, gkey, MASTER_TIMEOUT_MS, master_answered, c) < 0) {
		c->state = CONN_REQUEST;
		admin_conn_reply(c, NULL, 0, "NO", "bad request: invalid granule key");
	}
}

static void users_done(void *ctx, bool ok, const void *data, size_t len, const char *text)
{
	struct admin_conn *c = ctx;
	if (!admin_conn_waited(c))
		return;
	admin_conn_reply(c, data, len, ok ? "OK" : "NO", text);
}

void admin_users_request(struct admin_conn *c, char **tok, int n)
{
	struct repl_admin *a = c->admin;
	if (a->users == NULL) {
		admin_conn_reply(c, NULL, 0, "NO", "the user table is not available");
		return;
	}
	c->state = CONN_WAITING;
	admin_conn_update_io(c);
	repl_users_admin(a->users, tok, n, users_done, c);
}

void repl_admin_set_users(struct repl_admin *admin, struct repl_users *users)
{
	admin->users = users;
}

static void resync_done(void *ctx, bool converged, const char *report, size_t report_len,
			const char *text)
{
	struct admin_conn *c = ctx;
	if (!admin_conn_waited(c))
		return;
	admin_conn_reply(c, report, report_len, converged ? "OK" : "NO", text);
}

void admin_resync_request(struct admin_conn *c, char **tok, int n)
{
	struct repl_admin *a = c->admin;
	uint32_t peer = 0;
	bool full = false;
	int i = 2;
	if (a->resync_ops == NULL) {
		admin_conn_reply(c, NULL, 0, "NO", "resync is not available");
		return;
	}
	if (!passwd_user_name_valid(tok[1])) {
		admin_conn_reply(c, NULL, 0, "NO", "bad request: user name");
		return;
	}
	if (i < n && strcmp(tok[i], "FULL") != 0) {
		uint64_t v;
		if (str_to_u64(tok[i], UINT32_MAX, &v) < 0) {
			admin_conn_reply(c, NULL, 0, "NO", "bad request: peer");
			return;
		}
		peer = (uint32_t)v;
		i++;
	}
	if (i < n && strcmp(tok[i], "FULL") == 0) {
		full = true;
		i++;
	}
	if (i != n) {
		admin_conn_reply(c, NULL, 0, "NO", "bad request: RESYNC user [peer] [FULL]");
		return;
	}
	const char *err;
	c->state = CONN_WAITING;
	admin_conn_update_io(c);
	if (a->resync_ops->start(a->resync_ctx, tok[1], peer, full, resync_done, c, &err) < 0) {
		c->state = CONN_REQUEST;
		admin_conn_reply(c, NULL, 0, "NO", err);
		return;
	}
	admin_progress_start(c);
}

void repl_admin_set_resync(struct repl_admin *admin, const struct repl_admin_resync_ops *ops,
			   void *ctx)
{
	admin->resync_ops = ops;
	admin->resync_ctx = ctx;
}

void repl_admin_set_master(struct repl_admin *a, const struct repl_admin_master_ops *ops,
			   void *ctx)
{
	a->master_ops = ops;
	a->master_ctx = ctx;
}
