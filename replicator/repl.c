/* The seam's dispatch, watchers, and the default-mailbox helper built on top
 * of the seam itself (so it works unchanged with any implementation). */
#include "replicator/repl-private.h"

#include <openssl/sha.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/xalloc.h"

struct stor_db *repl_db(struct repl *r)
{
	return r->db;
}

void repl_destroy(struct repl **rp)
{
	struct repl *r = *rp;
	if (r == NULL)
		return;
	*rp = NULL;
	r->v->destroy(r);
}

void repl_flush(struct repl *r)
{
	r->v->flush(r);
}

size_t repl_in_flight(struct repl *r)
{
	return r->v->in_flight(r);
}

void repl_watch_add(struct repl *r, repl_watch_cb *cb, void *ctx)
{
	struct repl_watcher w = { cb, ctx };
	ARRAY_PUSH(&r->watchers, w);
}

void repl_watch_remove(struct repl *r, repl_watch_cb *cb, void *ctx)
{
	for (size_t i = 0; i < r->watchers.count; i++) {
		if (r->watchers.items[i].cb == cb && r->watchers.items[i].ctx == ctx) {
			memmove(&r->watchers.items[i], &r->watchers.items[i + 1],
				(r->watchers.count - i - 1) * sizeof(r->watchers.items[0]));
			r->watchers.count--;
			return;
		}
	}
}

void repl_notify(struct repl *r, const char *user, const struct guid *mailbox)
{
	/* Index-based on the live array: a watcher removed meanwhile may make
	 * us skip one, never touch freed memory. */
	for (size_t i = 0; i < r->watchers.count; i++) {
		struct repl_watcher w = r->watchers.items[i];
		w.cb(w.ctx, user, mailbox);
	}
}

bool repl_read_barrier(struct repl *r, const char *user, const struct guid *mailbox,
		       repl_done_cb *cb, void *ctx)
{
	if (r->v->read_barrier == NULL)
		return true;
	return r->v->read_barrier(r, user, mailbox, cb, ctx);
}

void repl_append(struct repl *r, const char *user, const struct guid *mailbox,
		 const struct repl_append *req, repl_done_cb *cb, void *ctx)
{
	r->v->append(r, user, mailbox, req, cb, ctx);
}

void repl_store(struct repl *r, const char *user, const struct guid *mailbox,
		const uint32_t *uids, size_t count, const struct stor_store *req,
		repl_done_cb *cb, void *ctx)
{
	r->v->store(r, user, mailbox, uids, count, req, cb, ctx);
}

void repl_copy(struct repl *r, const char *user, const struct guid *src,
	       const uint32_t *uids, size_t count, const struct guid *dst, bool move,
	       repl_done_cb *cb, void *ctx)
{
	r->v->copy(r, user, src, uids, count, dst, move, cb, ctx);
}

void repl_expunge(struct repl *r, const char *user, const struct guid *mailbox,
		  const uint32_t *uids, size_t count, repl_done_cb *cb, void *ctx)
{
	r->v->expunge(r, user, mailbox, uids, count, cb, ctx);
}

void repl_mailbox_create(struct repl *r, const char *user, const char *name,
			 const char *special_use, repl_done_cb *cb, void *ctx)
{
	r->v->mailbox_create(r, user, name, special_use, NULL, 0, cb, ctx);
}

void repl_mailbox_create_as(struct repl *r, const char *user, const char *name,
			    const char *special_use, const struct guid *guid, uint32_t uidvalidity,
			    repl_done_cb *cb, void *ctx)
{
	r->v->mailbox_create(r, user, name, special_use, guid, uidvalidity, cb, ctx);
}

void repl_mailbox_delete(struct repl *r, const char *user, const struct guid *mailbox,
			 repl_done_cb *cb, void *ctx)
{
	r->v->mailbox_delete(r, user, mailbox, cb, ctx);
}

void repl_mailbox_rename(struct repl *r, const char *user, const struct guid *mailbox,
			 const char *new_name, repl_done_cb *cb, void *ctx)
{
	r->v->mailbox_rename(r, user, mailbox, new_name, cb, ctx);
}

void repl_subscribe(struct repl *r, const char *user, const char *name, bool subscribed,
		    repl_done_cb *cb, void *ctx)
{
	r->v->subscribe(r, user, name, subscribed, cb, ctx);
}

void repl_acl_put(struct repl *r, const char *owner, const struct guid *mailbox,
		  const char *identifier, const char *rights, int64_t time_ms, repl_done_cb *cb,
		  void *ctx)
{
	r->v->acl_put(r, owner, mailbox, identifier, rights, time_ms, cb, ctx);
}

/* ---- Default mailboxes ---- */

static const struct {
	const char *name, *special_use;
} default_mailboxes[] = {
	{ "INBOX", NULL },
	{ "Drafts", "\\Drafts" },
	{ "Sent", "\\Sent" },
	{ "Trash", "\\Trash" },
	{ "Junk", "\\Junk" },
	{ "Archive", "\\Archive" },
};
#define DEFAULT_MAILBOX_COUNT (sizeof(default_mailboxes) / sizeof(default_mailboxes[0]))

/* Default mailboxes get the same GUID and UIDVALIDITY on every node,
 * derived from the user and the name: a user who logs in on two nodes
 * before either heard of the other's defaults ends with one INBOX, not two
 * that a resync must tell apart. */
static void default_identity(const char *user, const char *name, struct guid *g_r,
			     uint32_t *uidvalidity_r)
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	struct buf in;
	buf_init(&in);
	buf_append(&in, "starling default mailbox", 25);
	buf_append(&in, user, strlen(user) + 1);
	buf_append(&in, name, strlen(name) + 1);
	SHA256(in.data, in.len, md);
	buf_free(&in);
	memcpy(g_r->b, md, GUID_SIZE);
	uint32_t v = (uint32_t)md[16] << 24 | (uint32_t)md[17] << 16 | (uint32_t)md[18] << 8 | md[19];
	*uidvalidity_r = (v & 0x7fffffffu) | 1u;
}

struct ensure_ctx {
	repl_done_cb *cb;
	void *ctx;
	unsigned left;
	enum repl_error error;
	char *error_msg;
};

static void ensure_one_done(void *ctx, const struct repl_result *res)
{
	struct ensure_ctx *e = ctx;
	/* Another session creating the same mailbox at the same time is fine. */
	if (res->error != REPL_OK && res->error != REPL_ERR_EXISTS && e->error == REPL_OK) {
		e->error = res->error;
		e->error_msg = xstrdup(res->error_msg != NULL ? res->error_msg : "error");
	}
	if (--e->left > 0)
		return;
	struct repl_result out;
	memset(&out, 0, sizeof(out));
	out.error = e->error;
	out.error_msg = e->error_msg;
	e->cb(e->ctx, &out);
	free(e->error_msg);
	free(e);
}

static void ensure_nothing_done(void *ctx, const struct repl_result *res)
{
	struct ensure_ctx *e = ctx;
	e->cb(e->ctx, res);
	free(e);
}

void repl_user_ensure_defaults(struct repl *r, const char *user, repl_done_cb *cb, void *ctx)
{
	struct ensure_ctx *e = xcalloc(1, sizeof(*e));
	e->cb = cb;
	e->ctx = ctx;
	stor_mailbox_array list = ARRAY_INIT;
	const char *err;
	bool empty = false;
	if (stor_mailbox_list(r->db, user, &list, &err) == 0) {
		empty = list.count == 0;
		stor_mailbox_list_free(&list);
	}
	if (!empty) {
		/* Complete from the loop, like every other call. */
		r->v->complete_later(r, ensure_nothing_done, e);
		return;
	}
	e->left = DEFAULT_MAILBOX_COUNT * 2;
	for (size_t i = 0; i < DEFAULT_MAILBOX_COUNT; i++) {
		struct guid g;
		uint32_t uidvalidity;
		default_identity(user, default_mailboxes[i].name, &g, &uidvalidity);
		repl_mailbox_create_as(r, user, default_mailboxes[i].name,
				       default_mailboxes[i].special_use, &g, uidvalidity,
				       ensure_one_done, e);
		repl_subscribe(r, user, default_mailboxes[i].name, true, ensure_one_done, e);
	}
}
