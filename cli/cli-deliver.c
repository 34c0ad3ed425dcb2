/* `starling deliver`: a local delivery agent.  The message goes through the
 * running node (never straight into the store), so it is replicated like
 * any IMAP APPEND; exit status 0 means the node has it durably. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "lib/file.h"
#include "lib/passwd.h"

/* Exit statuses an MTA understands (sysexits.h): temporary failures make it
 * retry instead of bouncing. */
#define EX_DATAERR_ 65
#define EX_NOUSER_ 67
#define EX_TEMPFAIL_ 75

int cli_cmd_deliver(const struct config *cfg, int argc, char **argv)
{
	const char *user = NULL, *mailbox = "INBOX";
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-u") == 0 && i + 1 < argc)
			user = argv[++i];
		else if (strcmp(argv[i], "-m") == 0 && i + 1 < argc)
			mailbox = argv[++i];
		else {
			cli_error("usage: starling -c FILE deliver -u USER [-m MAILBOX] < MESSAGE");
			return 2;
		}
	}
	if (user == NULL) {
		cli_error("usage: starling -c FILE deliver -u USER [-m MAILBOX] < MESSAGE");
		return 2;
	}
	if (!passwd_user_name_valid(user)) {
		cli_error("invalid user name '%s'", user);
		return EX_NOUSER_;
	}
	struct buf msg = BUF_INIT;
	char *err = NULL;
	if (file_read_fd(STDIN_FILENO, "the message", cfg->max_message_size, &msg, &err) < 0) {
		/* An MTA retries a failed read but bounces what is too large. */
		bool large = errno == EFBIG;
		if (large)
			cli_error("message too large (limit %llu bytes)",
				  (unsigned long long)cfg->max_message_size);
		else
			cli_error("reading %s", err);
		free(err);
		buf_free(&msg);
		return large ? EX_DATAERR_ : EX_TEMPFAIL_;
	}
	if (msg.len == 0) {
		cli_error("empty message on stdin");
		buf_free(&msg);
		return EX_DATAERR_;
	}
	char size[32];
	snprintf(size, sizeof(size), "%zu", msg.len);
	const char *tokens[] = { "DELIVER", user, mailbox, size };
	char *text = NULL;
	enum cli_admin_result r = cli_admin_request(cfg, tokens, 4, msg.data, msg.len, NULL, &text,
						     120000);
	buf_free(&msg);
	int ret = 0;
	switch (r) {
	case CLI_ADMIN_OK:
		break;
	case CLI_ADMIN_NO:
		cli_error("delivery refused: %s", text);
		/* Too few replicas could take it: the MTA should try again. */
		ret = strstr(text, "[UNAVAILABLE]") != NULL ? EX_TEMPFAIL_ :
		      strstr(text, "unknown user") != NULL ? EX_NOUSER_ : EX_DATAERR_;
		break;
	case CLI_ADMIN_UNREACHABLE:
		cli_error("node not running (%s)", text);
		ret = EX_TEMPFAIL_;
		break;
	case CLI_ADMIN_FAILED:
		cli_error("%s", text);
		ret = EX_TEMPFAIL_;
		break;
	}
	free(text);
	return ret;
}
