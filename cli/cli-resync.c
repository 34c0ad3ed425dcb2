/* `starling resync -u USER [--peer SID] [--full]`: has the running node sync
 * the user with one peer (or each up peer in turn) over the peer links
 * (SPEC.md 10) and prints the report: per peer "peer: SID", the counts of
 * what was checked, sent, received and fixed, and "converged: yes|no".
 * Exits 0 only when every peer ended with the same state as this node;
 * otherwise prints one line on stderr and exits 1 (2 for usage errors).
 * --full compares every message instead of trusting modseqs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "lib/passwd.h"
#include "lib/str.h"

static const char resync_usage[] = "usage: starling -c FILE resync -u USER [--peer SID] [--full]";

/* The node gives up on a resync after 10 minutes; wait a little longer. */
#define RESYNC_WAIT_MS (11 * 60 * 1000)

static void user_find_cb(void *ctx, const char *name)
{
	const char **want = ctx;
	if (*want != NULL && strcmp(name, *want) == 0)
		*want = NULL;
}

int cli_cmd_resync(const struct config *cfg, int argc, char **argv)
{
	const char *user = NULL, *peer = "0";
	bool full = false;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--full") == 0) {
			full = true;
		} else if (strcmp(argv[i], "-u") == 0 && i + 1 < argc) {
			user = argv[++i];
		} else if (strcmp(argv[i], "--peer") == 0 && i + 1 < argc) {
			peer = argv[++i];
		} else {
			cli_error("%s", resync_usage);
			return 2;
		}
	}
	if (user == NULL) {
		cli_error("%s", resync_usage);
		return 2;
	}
	if (!passwd_user_name_valid(user)) {
		cli_error("invalid user name '%s'", user);
		return 1;
	}
	uint64_t sid;
	if (str_to_u64(peer, UINT32_MAX, &sid) < 0) {
		cli_error("invalid peer '%s': a node id is a number", peer);
		return 2;
	}
	/* A user nobody knows has nothing to compare: "converged: yes" would
	 * hide a typo.  So would "not connected" for a peer that is not in
	 * the file at all. */
	const char *want = user;
	char *err = NULL;
	if (cfg->users_file != NULL && passwd_list(cfg->users_file, user_find_cb, &want, &err) < 0) {
		cli_error("%s", err);
		free(err);
		return 1;
	}
	if (want != NULL) {
		/* Or one of the cluster's users: the node knows them. */
		const char *tokens[] = { "USER-LIST" };
		struct buf names = BUF_INIT;
		char *text = NULL;
		if (cli_admin_request(cfg, tokens, 1, NULL, 0, &names, &text, 30000) ==
		    CLI_ADMIN_OK) {
			buf_append_byte(&names, '\0');
			for (char *line = (char *)names.data, *nl; line != NULL && want != NULL;
			     line = nl != NULL ? nl + 1 : NULL) {
				nl = strchr(line, '\n');
				if (nl != NULL)
					*nl = '\0';
				if (strcmp(line, user) == 0)
					want = NULL;
			}
		}
		free(text);
		buf_free(&names);
	}
	if (want != NULL) {
		cli_error("unknown user '%s' (not in users_file nor the cluster's users)", user);
		return 1;
	}
	bool configured = sid == 0;
	for (size_t i = 0; i < cfg->peers.count && !configured; i++)
		configured = cfg->peers.items[i].sid == sid;
	if (!configured) {
		cli_error("peer %s is not configured (no 'peer = %s ...' line in %s)", peer, peer,
			  cfg->path);
		return 1;
	}
	const char *tokens[] = { "RESYNC", user, peer, "FULL" };
	return cli_admin_print(cfg, "resync", tokens, full ? 4 : 3, RESYNC_WAIT_MS);
}
