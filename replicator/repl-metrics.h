/* metrics_listen: the node's figures in the Prometheus text format at
 * GET /metrics over plain HTTP (README "Metrics").
 *
 * The values come from what `starling status` shows (the node's status
 * callback), translated by repl_metrics_from_status(), plus whatever the
 * callback appends itself (the IMAP command latency histogram). */
#ifndef REPLICATOR_REPL_METRICS_H
#define REPLICATOR_REPL_METRICS_H

#include <ev.h>

#include "lib/buf.h"
#include "lib/config.h"

struct repl_metrics;

/* Appends the whole metrics text to out. */
typedef void repl_metrics_cb(void *ctx, struct buf *out);

/* Listens on addr; with addr->host NULL does nothing (*m_r = NULL).
 * Returns 0, or -1 with a one-line *error_r (caller frees). */
int repl_metrics_create(struct ev_loop *loop, const struct config_addr *addr, repl_metrics_cb *cb,
			void *ctx, struct repl_metrics **m_r, char **error_r);
void repl_metrics_destroy(struct repl_metrics **m);

/* The Prometheus lines (with HELP and TYPE) of the known `key: value`
 * status lines in status; others are left out. */
void repl_metrics_from_status(const char *status, struct buf *out);

#endif
