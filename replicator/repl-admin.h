/* The node's admin socket (DATA_DIR/admin.sock); the protocol is described
 * at the top of repl-admin.c. */
#ifndef REPLICATOR_REPL_ADMIN_H
#define REPLICATOR_REPL_ADMIN_H

#include "lib/buf.h"
#include "lib/config.h"
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
/* Closes the socket and every connection, and removes the socket file. */
void repl_admin_destroy(struct repl_admin **admin);

#endif
