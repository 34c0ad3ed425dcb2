/* The local IMAP server: listeners on imap_listen (and imaps_listen with
 * implicit TLS), one client connection per session, all on one libev loop.
 * Every change goes through the seam (replicator/repl.h); reads go to the
 * store the seam was created with.
 *
 * The server keeps a pointer to cfg and repl, which must outlive it. */
#ifndef IMAP_IMAP_SERVER_H
#define IMAP_IMAP_SERVER_H

#include <stdbool.h>

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

#endif
