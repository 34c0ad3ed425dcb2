/* The admin commands BUNDLE-EXPORT and BUNDLE-IMPORT (SPEC.md 11; see
 * repl-admin.c for their protocol): a bundle signed with the cluster
 * secret is written from, or verified and merged into, the store.  An
 * import runs in steps from an idle watcher, one at a time, so that the
 * node goes on serving meanwhile. */
#include "replicator/repl-admin-private.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/clock.h"
#include "lib/file.h"
#include "lib/log.h"
#include "lib/passwd.h"
#include "lib/str.h"
#include "lib/xalloc.h"

static int bundle_secret(struct admin_conn *c, unsigned char **secret_r, size_t *len_r)
{
	const struct config *cfg = c->admin->cfg;
	char *err = NULL;
	if (cfg->cluster_secret_file == NULL) {
		admin_conn_reply(c, NULL, 0, "NO", "bundles are signed with the cluster secret: "
					     "cluster_secret_file is not configured");
		return -1;
	}
	if (file_read_secret("cluster_secret_file", cfg->cluster_secret_file, CONFIG_SECRET_MIN,
			     CONFIG_SECRET_MAX, secret_r, len_r, &err) < 0) {
		admin_conn_reply(c, NULL, 0, "NO", err);
		free(err);
		return -1;
	}
	return 0;
}

/* A bundle written and its export record stored, waiting for the loop's
 * group commit (the fsync runs off the loop) before it is handed out. */
struct export_wait {
	struct admin_conn *c;
	struct buf out;
	char text[160];
};

static void export_durable(void *ctx, bool ok)
{
	struct export_wait *w = ctx;
	struct admin_conn *c = w->c;
	if (admin_conn_waited(c)) {
		if (ok) {
			log_info("admin: bundle of %s exported (%zu bytes, %s)", c->user, w->out.len,
				 w->text);
			admin_conn_reply(c, w->out.data, w->out.len, "OK", w->text);
		} else {
			admin_conn_reply(c, NULL, 0, "NO", "storing the export record failed");
		}
	}
	buf_free(&w->out);
	free(w);
}

void admin_bundle_export_run(struct admin_conn *c)
{
	const struct config *cfg = c->admin->cfg;
	unsigned char *secret;
	size_t secret_len;
	if (bundle_secret(c, &secret, &secret_len) < 0)
		return;
	struct sync_bundle_export_settings set = {
		.user = c->user,
		.source_sid = cfg->node_id,
		.key = { secret, secret_len, false },
		.state = c->body_size > 0 ? (const void *)c->body.data : NULL,
		.state_len = c->body.len,
		.durable_by_caller = true,
	};
	struct sync_bundle_export_report rep;
	struct export_wait *w = xcalloc(1, sizeof(*w));
	w->c = c;
	buf_init(&w->out);
	char *err = NULL;
	struct stor_db *db = repl_db(c->admin->repl);
	if (sync_bundle_export(db, &set, &w->out, &rep, &err) < 0) {
		admin_conn_reply(c, NULL, 0, "NO", err);
		buf_free(&w->out);
		free(w);
	} else {
		snprintf(w->text, sizeof(w->text), "mailboxes %u messages %u tombstones %u texts %u "
			 "left_out %u", rep.mailboxes, rep.messages, rep.tombstones, rep.texts,
			 rep.texts_left_out);
		c->state = CONN_WAITING;
		admin_conn_update_io(c);
		stor_on_durable(db, export_durable, w);
	}
	free(err);
	free(secret);
}

/* A private \Seen change of a bundle (SPEC.md 7.7 "Bundles"): the user's
 * STORE with SEEN-OF, made through the mailbox's master like a session's.
 * The import does not wait for it: the records reach this node's store
 * like any session's change, and a failure (the master unreachable) is
 * logged; the bundle back then still carries the records. */
struct bundle_pseen_store {
	char *user;
	uint32_t *uids;
	struct stor_store req;
	struct guid mailbox;
};

static void bundle_pseen_done(void *ctx, const struct repl_result *res)
{
	struct bundle_pseen_store *ps = ctx;
	if (res->error != REPL_OK)
		log_warnx("admin: bundle import: private \\Seen of %s not changed: %s", ps->user,
			  res->error_msg != NULL ? res->error_msg : "failed");
	free(ps->user);
	free(ps->uids);
	free(ps);
}

static void bundle_pseen_apply(void *ctx, const char *owner, const struct guid *mailbox,
			       const char *user, const uint32_t *uids, size_t count, bool seen)
{
	struct repl_admin *a = ctx;
	struct bundle_pseen_store *ps = xcalloc(1, sizeof(*ps));
	ps->user = xstrdup(user);
	ps->uids = xmalloc(count * sizeof(*uids));
	memcpy(ps->uids, uids, count * sizeof(*uids));
	ps->mailbox = *mailbox;
	ps->req.op = seen ? STOR_FLAGS_ADD : STOR_FLAGS_REMOVE;
	ps->req.flags = STOR_FLAG_SEEN;
	ps->req.seen_of = ps->user;
	repl_store(a->repl, owner, &ps->mailbox, ps->uids, count, &ps->req, bundle_pseen_done, ps);
}

/* Ends the import of c (done or failed) and answers, unless c is dead. */
static void bundle_import_end(struct admin_conn *c, int r, char *err)
{
	struct repl_admin *a = c->admin;
	ev_idle_stop(a->loop, &c->idle);
	a->importing = false;
	struct sync_bundle_import_result res;
	memset(&res, 0, sizeof(res));
	if (r == 0)
		sync_bundle_import_take_result(c->imp, &res);
	sync_bundle_import_destroy(&c->imp);
	if (c->dead) {
		sync_bundle_import_result_free(&res);
		free(err);
		admin_conn_free(c);
		return;
	}
	c->state = CONN_REPLYING;
	if (r < 0) {
		log_warnx("admin: bundle import: %s", err);
		admin_conn_reply(c, NULL, 0, "NO", err);
	} else {
		/* The merge does not say which mailboxes it changed: tell the
		 * watchers of every mailbox of the user. */
		struct stor_db *db = repl_db(a->repl);
		stor_mailbox_array list = ARRAY_INIT;
		const char *serr;
		if (stor_mailbox_list(db, res.user, &list, &serr) == 0) {
			for (size_t i = 0; i < list.count; i++)
				repl_notify(a->repl, res.user, &list.items[i].guid);
			stor_mailbox_list_free(&list);
		}
		const struct sync_report *rp = &res.report;
		char text[256];
		snprintf(text, sizeof(text), "user %s source %u base %s created %u received %u "
			 "renumbered %u expunged %u flags %u pseen %u skipped %u/%u", res.user,
			 res.source, res.base_known ? "known" : "unknown", rp->mailboxes_created,
			 rp->messages_received, rp->messages_renumbered, rp->messages_expunged,
			 rp->flags_changed, res.pseen.records_applied, res.pseen.records_skipped,
			 res.pseen.mailboxes_skipped);
		log_info("admin: bundle imported: %s", text);
		admin_conn_reply(c, res.state.data, res.state.len, "OK", text);
	}
	sync_bundle_import_result_free(&res);
	free(err);
}

/* Steps the import for at most about 10 ms per loop iteration. */
static void bundle_idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	struct admin_conn *c = (struct admin_conn *)((char *)w - offsetof(struct admin_conn, idle));
	(void)loop;
	(void)revents;
	if (c->dead) {
		bundle_import_end(c, -1, NULL);
		return;
	}
	uint64_t start = clock_mono_ms();
	char *err = NULL;
	int r;
	do {
		r = sync_bundle_import_step(c->imp, &err);
	} while (r == 1 && clock_mono_ms() - start < 10);
	if (r == SYNC_BUNDLE_IMPORT_WAIT) {
		/* The merge waits for the group commit: bundle_durable() */
		ev_idle_stop(c->admin->loop, &c->idle);
		return;
	}
	if (r > 0)
		return;
	bundle_import_end(c, r, err);
}

static void bundle_durable(void *ctx)
{
	struct admin_conn *c = ctx;
	if (c->admin != NULL)
		ev_idle_start(c->admin->loop, &c->idle);
}

void admin_bundle_import_run(struct admin_conn *c)
{
	struct repl_admin *a = c->admin;
	const struct config *cfg = a->cfg;
	unsigned char *secret;
	size_t secret_len;
	if (a->importing) {
		admin_conn_reply(c, NULL, 0, "NO", "another bundle import is running");
		return;
	}
	if (bundle_secret(c, &secret, &secret_len) < 0)
		return;
	struct sync_bundle_import_settings set = {
		.own_sid = cfg->node_id,
		.key = { secret, secret_len, false },
		.scratch_parent = cfg->data_dir,
		.max_message_size = cfg->max_message_size,
		/* With shared_seen = shared a master takes SEEN-OF for the
		 * message's own \Seen: the records are then changed here and
		 * a later sync carries them, as the merge's changes. */
		.pseen_apply = cfg->shared_seen_private ? bundle_pseen_apply : NULL,
		.pseen_ctx = a,
	};
	char *err = NULL;
	c->imp = sync_bundle_import_begin(repl_db(a->repl), &set,
					  c->body.data != NULL ? (const void *)c->body.data : "",
					  c->body.len, &err);
	free(secret);
	if (c->imp == NULL) {
		log_warnx("admin: bundle import: %s", err);
		admin_conn_reply(c, NULL, 0, "NO", err);
		free(err);
		return;
	}
	a->importing = true;
	c->state = CONN_WAITING;
	admin_conn_update_io(c);
	sync_bundle_import_set_wake(c->imp, bundle_durable, c);
	ev_idle_init(&c->idle, bundle_idle_cb);
	ev_idle_start(a->loop, &c->idle);
	admin_progress_start(c);
}

void admin_bundle_export_request(struct admin_conn *c, char **tok)
{
	uint64_t size;
	if (!passwd_user_name_valid(tok[1])) {
		admin_conn_reply(c, NULL, 0, "NO", "bad request: user name");
		return;
	}
	if (str_to_u64(tok[2], SYNC_BUNDLE_MAX_STATE_SIZE, &size) < 0) {
		admin_conn_reply(c, NULL, 0, "NO", "bad request: state size (at most 64 MiB)");
		return;
	}
	c->user = xstrdup(tok[1]);
	admin_body_begin(c, BODY_BUNDLE_EXPORT, size);
}

void admin_bundle_import_request(struct admin_conn *c, char **tok)
{
	uint64_t size;
	if (str_to_u64(tok[1], SYNC_BUNDLE_MAX_SIZE, &size) < 0) {
		admin_conn_reply(c, NULL, 0, "NO", "bundle refused: larger than 1 GiB");
		return;
	}
	admin_body_begin(c, BODY_BUNDLE_IMPORT, size);
}
