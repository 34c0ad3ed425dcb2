/* The node's admin socket (DATA_DIR/admin.sock); the protocol is described
 * at the top of repl-admin.c. */
#ifndef REPLICATOR_REPL_ADMIN_H
#define REPLICATOR_REPL_ADMIN_H

#include "lib/buf.h"
#include "lib/config.h"
#include "replicator/repl-mm.h"
#include "replicator/repl-sync.h"
#include "replicator/repl.h"

struct ev_loop;
struct repl_admin;

/* Fills out with the STATUS text ("key: value" lines). */
typedef void repl_admin_status_cb(void *ctx, struct buf *out);

/* Binds DATA_DIR/admin.sock (replacing a stale one) and serves it on loop.
 * cfg and repl must outlive the admin.  Returns 0, or -1 with *error_r
 * (caller frees). */
int repl_admin_create(struct ev_loop *loop, const struct config *cfg, struct repl *repl,
		      repl_admin_status_cb *status_cb, void *status_ctx,
		      struct repl_admin **admin_r, char **error_r);
/* The backend of MASTER requests (a function table, so that the admin
 * socket does not link the mailbox-master code into every user of it). */
struct repl_admin_master_ops {
	/* As repl_mm_granule_key() and repl_mm_request_master(). */
	int (*granule_key)(void *ctx, const char *user, const struct guid *mailbox, char *out,
			   size_t size);
	int (*request)(void *ctx, const char *gkey, unsigned timeout_ms, repl_mm_answer_cb *cb,
		       void *cb_ctx);
};
/* Enables MASTER requests; without it they are answered NO.  ops and ctx
 * must outlive the admin, or be destroyed (failing their requests) first. */
void repl_admin_set_master(struct repl_admin *admin, const struct repl_admin_master_ops *ops,
			   void *ctx);
/* The backend of RESYNC requests: as repl_sync_start(). */
struct repl_admin_resync_ops {
	int (*start)(void *ctx, const char *user, uint32_t peer, bool full, repl_sync_done_cb *cb,
		     void *cb_ctx, const char **error_r);
	/* As repl_sync_progress(); may be NULL (no progress lines). */
	bool (*progress)(void *ctx, const void *cb_ctx, char *out, size_t size);
};
/* Enables RESYNC requests; without it they are answered NO.  The backend
 * must answer every started request before the admin is destroyed. */
void repl_admin_set_resync(struct repl_admin *admin, const struct repl_admin_resync_ops *ops,
			   void *ctx);
/* Closes the socket and every connection, and removes the socket file. */
/* The backend of USER-* requests; users must outlive the admin, or fail
 * its requests (repl_users_destroy()) first. */
struct repl_users;
void repl_admin_set_users(struct repl_admin *admin, struct repl_users *users);
void repl_admin_destroy(struct repl_admin **admin);

#endif
