/* `starling`: the admin tool.  Reads the same config file as starlingd and
 * talks to the running node through its admin socket, or edits local files
 * (the users file) directly. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "config.h"
#include "storage/acl-rights.h"

static const char usage_text[] =
	"usage: starling -c FILE COMMAND [ARGS]\n"
	"       starling --help | --version\n"
	"commands:\n"
	"  user add NAME                 add a user on every node (password on stdin)\n"
	"  user passwd NAME              change a user's password (stdin) on every node\n"
	"  user del NAME                 delete a user on every node\n"
	"  user list                     list the users (users_file and the cluster's)\n"
	"  deliver -u USER [-m MAILBOX]  deliver a message from stdin through the node\n"
	"  dump -u USER                  print the canonical dump of a user's mail\n"
	"  status [--json]               show the running node's state\n"
	"  master show -u USER [-m MAILBOX]\n"
	"                                show the master of a mailbox's granule\n"
	"  resync -u USER [--peer SID] [--full]\n"
	"                                sync a user with a peer (default: every up peer)\n"
	"  bundle export -u USER [--since STATEFILE] -o FILE\n"
	"                                write a user's change bundle for offline sync\n"
	"  bundle import FILE [--state STATEFILE]\n"
	"                                verify and merge a bundle; write the state for\n"
	"                                the next export back (default FILE.state)\n"
	"  import maildir -u USER [--batch N] PATH\n"
	"                                import a Dovecot Maildir keeping UIDVALIDITY,\n"
	"                                UIDs, flags and keywords (resumable)\n"
	"  import imap -u USER --host H [--port P] --user LOGIN [--batch N]\n"
	"                                import from an IMAP server (password on stdin;\n"
	"                                plain TCP), keeping UIDs of new mailboxes\n"
	"  acl get|set|delete -u OWNER -m MAILBOX [IDENTIFIER [RIGHTS]]\n"
	"                                show or change a mailbox's IMAP ACL (public\n"
	"                                mailboxes: -m Public/NAME without -u)\n"
	"  acl debug -u USER -m MAILBOX  explain USER's rights on MAILBOX (own name or\n"
	"                                shared/OWNER/NAME)\n"
	"  mailbox create --public NAME  create the public mailbox Public/NAME\n";

static const struct {
	const char *name;
	cli_cmd_func *func;
} commands[] = {
	{ "user", cli_cmd_user },
	{ "deliver", cli_cmd_deliver },
	{ "dump", cli_cmd_dump },
	{ "status", cli_cmd_status },
	{ "master", cli_cmd_master },
	{ "resync", cli_cmd_resync },
	{ "bundle", cli_cmd_bundle },
	{ "import", cli_cmd_import },
	{ "acl", cli_cmd_acl },
	{ "mailbox", cli_cmd_mailbox },
};

void cli_error(const char *fmt, ...)
{
	va_list ap;
	fputs("starling: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

int main(int argc, char **argv)
{
	const char *config_path = NULL;
	int i = 1;
	/* A node that closes the admin socket early must give an error
	 * message, not kill the tool. */
	signal(SIGPIPE, SIG_IGN);
	while (i < argc && argv[i][0] == '-') {
		if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
			config_path = argv[i + 1];
			i += 2;
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			fputs(usage_text, stdout);
			return 0;
		} else if (strcmp(argv[i], "--version") == 0) {
			printf("starling %s\n", PACKAGE_VERSION);
			return 0;
		} else {
			cli_error("unknown option '%s' (try --help)", argv[i]);
			return 2;
		}
	}
	if (i >= argc) {
		fputs(usage_text, stderr);
		return 2;
	}
	if (config_path == NULL) {
		cli_error("no config file: use -c FILE");
		return 2;
	}
	size_t c;
	for (c = 0; c < sizeof(commands) / sizeof(commands[0]); c++) {
		if (strcmp(commands[c].name, argv[i]) == 0)
			break;
	}
	if (c == sizeof(commands) / sizeof(commands[0])) {
		cli_error("unknown command '%s' (try --help)", argv[i]);
		return 2;
	}
	char *err = NULL;
	struct config *cfg = config_load(config_path, &err);
	uint32_t owner_rights;
	if (cfg != NULL && acl_owner_rights_config(cfg, &owner_rights, &err) < 0)
		config_free(&cfg);
	if (cfg == NULL) {
		cli_error("%s", err);
		free(err);
		return 1;
	}
	int ret = commands[c].func(cfg, argc - i, argv + i);
	config_free(&cfg);
	return ret;
}
