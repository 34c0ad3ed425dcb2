/* Listening TCP sockets: IMAP, LMTP, the replication links and metrics. */
#ifndef LIB_LISTEN_H
#define LIB_LISTEN_H

#include <sys/socket.h>

#include "lib/config.h"

/* Binds addr (a host name or address, and port: the first of its
 * addresses that binds) and listens on it, non-blocking and close-on-exec,
 * with SO_REUSEADDR so that a restarted node does not wait out TIME_WAIT.
 * Returns the fd, or -1 with *error_r ("host:port: reason"; the caller
 * frees it). */
int listen_tcp(const struct config_addr *addr, char **error_r);

/* What listen_accept() returns instead of a connection. */
#define LISTEN_DRAINED (-1) /* none left for now: wait for readability */
#define LISTEN_PAUSE (-2)   /* EMFILE and friends: errno set */

/* Accepts one connection from the non-blocking listener fd: the new fd
 * (non-blocking, close-on-exec) with the peer's address in *ss, or
 * LISTEN_DRAINED, or LISTEN_PAUSE when accepting failed in a way that
 * leaves the listener readable (out of descriptors): the caller stops
 * accepting for a moment instead of spinning on it. */
int listen_accept(int fd, struct sockaddr_storage *ss);

#endif
