/* The local IMAP server: listeners on imap_listen (and imaps_listen with
 * implicit TLS), one client connection per session, all on one libev loop.
 * Every change goes through the seam (replicator/repl.h); reads go to the
 * store the seam was created with.
 *
 * The server keeps a pointer to cfg and repl, which must outlive it. */
#ifndef IMAP_IMAP_SERVER_H
#define IMAP_IMAP_SERVER_H

#include <stdbool.h>
#include <stdint.h>

struct ev_loop;
struct config;
struct repl;
struct imap_server;

/* Binds the listeners and loads the TLS certificate when configured.
 * Returns 0, or -1 with *error_r (caller frees). */
int imap_server_create(struct ev_loop *loop, const struct config *cfg, struct repl *repl,
		       struct imap_server **srv_r, char **error_r);
/* Sends BYE to every session and closes everything. */
void imap_server_destroy(struct imap_server **srv);
/* SIGHUP: new TLS sessions use the certificate and key now named by the
 * config (sessions already up keep theirs).  With TLS off, nothing to do.
 * Returns 0, or -1 with a one-line *error_r (caller frees) and the old
 * certificate still in use. */
int imap_server_reload_tls(struct imap_server *srv, char **error_r);
/* Open sessions. */
unsigned imap_server_session_count(const struct imap_server *srv);

/* Command latency, from dispatch to the tagged reply (IDLE not counted):
 * counts per upper bound of imap_latency_bounds_us (cumulative, as
 * Prometheus wants them), and over all. */
#define IMAP_LATENCY_BUCKETS 10
extern const uint64_t imap_latency_bounds_us[IMAP_LATENCY_BUCKETS];
struct imap_latency {
	uint64_t le[IMAP_LATENCY_BUCKETS]; /* commands that took <= bound */
	uint64_t count, sum_us;
};
void imap_latency_add(struct imap_latency *l, uint64_t us);
const struct imap_latency *imap_server_latency(const struct imap_server *srv);

#endif
