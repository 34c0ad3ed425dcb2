/* The `starling` admin tool: shared declarations of its commands. */
#ifndef CLI_CLI_H
#define CLI_CLI_H

#include <stdbool.h>
#include <stddef.h>

#include "lib/buf.h"
#include "lib/config.h"

/* Each command gets the loaded config and its own arguments (argv[0] is the
 * command's first word) and returns the process exit status.  Errors are
 * printed as one line on stderr with cli_error(). */
typedef int cli_cmd_func(const struct config *cfg, int argc, char **argv);

void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

int cli_cmd_user(const struct config *cfg, int argc, char **argv);
int cli_cmd_deliver(const struct config *cfg, int argc, char **argv);
int cli_cmd_dump(const struct config *cfg, int argc, char **argv);
int cli_cmd_status(const struct config *cfg, int argc, char **argv);
int cli_cmd_master(const struct config *cfg, int argc, char **argv);
int cli_cmd_resync(const struct config *cfg, int argc, char **argv);
int cli_cmd_bundle(const struct config *cfg, int argc, char **argv);
int cli_cmd_import(const struct config *cfg, int argc, char **argv);
int cli_cmd_acl(const struct config *cfg, int argc, char **argv);
int cli_cmd_mailbox(const struct config *cfg, int argc, char **argv);

/* ---- The admin socket client (protocol in replicator/repl-admin.c) ---- */

/* Outcome of an admin request. */
enum cli_admin_result {
	CLI_ADMIN_OK,
	CLI_ADMIN_NO,          /* the node refused: *text_r says why */
	CLI_ADMIN_UNREACHABLE, /* no node is running (no socket, or refused) */
	CLI_ADMIN_FAILED,      /* I/O or protocol error: *text_r says what */
};

/* Sends one request (tokens are percent-encoded here) with an optional body
 * to the node's admin socket in cfg->data_dir, collects DATA into data_r
 * (may be NULL to discard) and the final line's text into text_r (the caller
 * frees it).  Waits at most timeout_ms for each reply chunk. */
enum cli_admin_result cli_admin_request(const struct config *cfg, const char *const *tokens,
					size_t token_count, const void *body, size_t body_len,
					struct buf *data_r, char **text_r, int timeout_ms);

/* Runs one request for a command that shows what the node sends: DATA goes
 * to stdout (before a NO too, so a partial report is kept), any failure is
 * one line on stderr starting with what.  Returns the exit status, 0 or 1. */
int cli_admin_print(const struct config *cfg, const char *what, const char *const *tokens,
		    size_t token_count, int timeout_ms);

/* Milliseconds between progress lines of long local work: 5 s, or
 * STARLING_PROGRESS_INTERVAL seconds (as the node's admin socket). */
uint64_t cli_progress_interval_ms(void);

/* Path of the admin socket; the caller frees it. */
char *cli_admin_socket_path(const struct config *cfg);

#endif
