/* `starling mailbox create --public NAME`: a public mailbox, Public/NAME in
 * IMAP (SPEC.md 7.6), made and replicated through the running node.  Nobody
 * has rights on it until `starling acl set -m Public/NAME ...` gives some. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static const char mailbox_usage[] = "usage: starling -c FILE mailbox create --public NAME";

int cli_cmd_mailbox(const struct config *cfg, int argc, char **argv)
{
	if (argc != 4 || strcmp(argv[1], "create") != 0 || strcmp(argv[2], "--public") != 0) {
		cli_error("%s", mailbox_usage);
		return 2;
	}
	const char *name = argv[3];
	if (strncmp(name, "Public/", 7) == 0)
		name += 7;
	if (*name == '\0') {
		cli_error("empty mailbox name");
		return 1;
	}
	const char *tokens[] = { "PUBLIC-CREATE", name };
	char *text = NULL;
	enum cli_admin_result r = cli_admin_request(cfg, tokens, 2, NULL, 0, NULL, &text, 30000);
	if (r == CLI_ADMIN_OK)
		printf("created Public/%s\n", name);
	else if (r == CLI_ADMIN_UNREACHABLE)
		cli_error("node not running (%s)", text);
	else if (r == CLI_ADMIN_NO)
		cli_error("mailbox create: %s", text);
	else
		cli_error("%s", text);
	free(text);
	return r == CLI_ADMIN_OK ? 0 : 1;
}
