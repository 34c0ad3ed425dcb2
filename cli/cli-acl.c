/* `starling acl get|set|delete -u OWNER -m MAILBOX [IDENTIFIER [RIGHTS]]`
 * and `starling acl debug -u USER -m MAILBOX`: a mailbox's IMAP ACL
 * (RFC 4314, SPEC.md 7.6) through the running node, which makes and
 * replicates a change as it does an IMAP SETACL. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "lib/passwd.h"

static const char acl_usage[] =
	"usage: starling -c FILE acl get|set|delete -u OWNER -m MAILBOX [IDENTIFIER [RIGHTS]]\n"
	"       starling -c FILE acl get|set|delete -m Public/NAME [IDENTIFIER [RIGHTS]]\n"
	"       starling -c FILE acl debug -u USER -m MAILBOX";

int cli_cmd_acl(const struct config *cfg, int argc, char **argv)
{
	const char *user = NULL, *mailbox = NULL, *pos[2] = { NULL, NULL };
	int npos = 0;
	if (argc < 2) {
		cli_error("%s", acl_usage);
		return 2;
	}
	const char *sub = argv[1];
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "-u") == 0 && i + 1 < argc)
			user = argv[++i];
		else if (strcmp(argv[i], "-m") == 0 && i + 1 < argc)
			mailbox = argv[++i];
		else if (npos < 2)
			pos[npos++] = argv[i]; /* may start with '-': "-bob", "-w" */
		else {
			cli_error("%s", acl_usage);
			return 2;
		}
	}
	const char *req;
	int want;
	if (strcmp(sub, "get") == 0) {
		req = "ACL-GET";
		want = 0;
	} else if (strcmp(sub, "set") == 0) {
		req = "ACL-SET";
		want = 2;
	} else if (strcmp(sub, "delete") == 0) {
		req = "ACL-DELETE";
		want = 1;
	} else if (strcmp(sub, "debug") == 0) {
		req = "ACL-DEBUG";
		want = 0;
	} else {
		cli_error("%s", acl_usage);
		return 2;
	}
	/* A public mailbox has no owner to name: the node knows it by its
	 * owner ".public" and the name without the prefix. */
	bool public = strcmp(req, "ACL-DEBUG") != 0 && user == NULL && mailbox != NULL &&
		      strncmp(mailbox, "Public/", 7) == 0;
	if (public) {
		user = ".public";
		mailbox += 7;
	}
	if (user == NULL || mailbox == NULL || npos != want) {
		cli_error("%s", acl_usage);
		return 2;
	}
	if (!public && !passwd_user_name_valid(user)) {
		cli_error("invalid user name '%s'", user);
		return 1;
	}
	if (*mailbox == '\0') {
		cli_error("empty mailbox name");
		return 1;
	}
	const char *tokens[5] = { req, user, mailbox, pos[0], pos[1] };
	size_t ntok = 3 + (size_t)want;
	if (want == 0)
		return cli_admin_print(cfg, sub[1] == 'e' ? "acl debug" : "acl get", tokens, ntok,
				       30000);
	struct buf out = BUF_INIT;
	char *text = NULL;
	enum cli_admin_result r = cli_admin_request(cfg, tokens, ntok, NULL, 0, &out, &text, 30000);
	if (r == CLI_ADMIN_OK)
		printf("%s\n", text != NULL ? text : "");
	else if (r == CLI_ADMIN_UNREACHABLE)
		cli_error("node not running (%s)", text);
	else if (r == CLI_ADMIN_NO)
		cli_error("acl %s: %s", sub, text);
	else
		cli_error("%s", text);
	free(text);
	buf_free(&out);
	return r == CLI_ADMIN_OK ? 0 : 1;
}
