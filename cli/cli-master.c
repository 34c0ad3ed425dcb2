/* `starling master show -u USER [-m MAILBOX]`: which node is the master of
 * the granule of a user's mailbox (default INBOX), as the running node sees
 * it: "master: SID", "epoch: COUNTER.ROOT", "root: SID", "granule: KEY",
 * "is_master: yes|no".  Asking may make the cluster assign a master (the
 * root gives an unassigned granule to the node that asks, SPEC.md 9). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "lib/passwd.h"

static const char master_usage[] = "usage: starling -c FILE master show -u USER [-m MAILBOX]";

int cli_cmd_master(const struct config *cfg, int argc, char **argv)
{
	const char *user = NULL, *mailbox = "INBOX";
	if (argc < 2 || strcmp(argv[1], "show") != 0) {
		cli_error("%s", master_usage);
		return 2;
	}
	for (int i = 2; i < argc; i += 2) {
		if (i + 1 >= argc) {
			cli_error("%s", master_usage);
			return 2;
		}
		if (strcmp(argv[i], "-u") == 0)
			user = argv[i + 1];
		else if (strcmp(argv[i], "-m") == 0)
			mailbox = argv[i + 1];
		else {
			cli_error("%s", master_usage);
			return 2;
		}
	}
	if (user == NULL) {
		cli_error("%s", master_usage);
		return 2;
	}
	if (!passwd_user_name_valid(user)) {
		cli_error("invalid user name '%s'", user);
		return 1;
	}
	if (*mailbox == '\0') {
		cli_error("empty mailbox name");
		return 1;
	}
	const char *tokens[] = { "MASTER", user, mailbox };
	/* The node answers within its own 10 s request timeout. */
	return cli_admin_print(cfg, "master show", tokens, 3, 30000);
}
