/* The LMTP server (RFC 2033) on lmtp_listen: a mail transfer agent such as
 * Postfix hands it messages, and each recipient's copy goes through the
 * replication seam like an IMAP APPEND (repl.h).  A recipient gets 250
 * only once its copy is as durable as sync_replicas and degraded_writes
 * ask; a refusal or a failure to get there is a 4xx, so the MTA keeps
 * the message queued and retries.
 *
 * Offered: PIPELINING, ENHANCEDSTATUSCODES, 8BITMIME, SIZE (max_message_size).
 * Limits: LMTP_MAX_LINE per command line, LMTP_MAX_RCPTS recipients per
 * transaction, max_message_size per message, LMTP_MAX_CONNS connections,
 * LMTP_IDLE_TIMEOUT seconds without input. */
#ifndef LMTP_LMTP_SERVER_H
#define LMTP_LMTP_SERVER_H

struct ev_loop;
struct config;
struct repl;
struct lmtp_server;

#define LMTP_MAX_RCPTS 100
#define LMTP_MAX_CONNS 256
#define LMTP_IDLE_TIMEOUT 300.0

/* Starts listening when cfg sets lmtp_listen; otherwise *srv_r is NULL
 * and nothing happens.  Returns 0, or -1 with *error_r (caller frees). */
int lmtp_server_create(struct ev_loop *loop, const struct config *cfg, struct repl *repl,
		       struct lmtp_server **srv_r, char **error_r);
/* Seconds without input before a connection is closed (default
 * LMTP_IDLE_TIMEOUT); for tests.  Applies to connections accepted later. */
void lmtp_server_set_idle_timeout(struct lmtp_server *srv, double seconds);
/* Closes the listener and every connection.  A delivery still in flight
 * finishes (or fails) in the seam, which must outlive this call and is
 * expected to have been flushed first, as for the IMAP server. */
void lmtp_server_destroy(struct lmtp_server **srv);

#endif
