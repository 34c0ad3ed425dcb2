/* `starling user add|del|passwd|list`.
 *
 * With the node running, the change goes to the cluster's user table
 * through the admin socket (SPEC.md 7.5): the node stores it and answers
 * once every up peer holds it.  The password is hashed here; only the
 * SHA512-CRYPT hash leaves this process.  With no node running, `user add`
 * writes users_file as before (such a user is then read-only for the
 * cluster commands, see README "Users") and `user list` reads it; `del` and
 * `passwd` need the node. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "lib/passwd.h"
#include "lib/str.h"
#include "lib/xalloc.h"

/* A change waits up to 5 s for each peer; the node answers after that. */
#define USER_ADMIN_TIMEOUT_MS 30000

/* Reads one password line from stdin and returns its SHA512-CRYPT hash, or
 * NULL after printing why. */
static char *read_hash(const char *name)
{
	char line[PASSWD_MAX_PASSWORD_LEN + 2];
	if (isatty(STDIN_FILENO))
		fprintf(stderr, "password for %s: ", name);
	if (fgets(line, sizeof(line), stdin) == NULL) {
		cli_error("no password on stdin");
		return NULL;
	}
	size_t len = strlen(line);
	if (len > 0 && line[len - 1] == '\n')
		line[--len] = '\0';
	else if (len == sizeof(line) - 1) {
		explicit_bzero(line, sizeof(line));
		cli_error("password too long (at most %d bytes)", PASSWD_MAX_PASSWORD_LEN);
		return NULL;
	}
	if (len > 0 && line[len - 1] == '\r')
		line[--len] = '\0';
	if (len == 0) {
		cli_error("empty password");
		return NULL;
	}
	char *hash = passwd_hash_sha512_crypt(line);
	explicit_bzero(line, sizeof(line));
	return hash;
}

static int file_add(const struct config *cfg, const char *name, const char *hash)
{
	if (cfg->users_file == NULL) {
		cli_error("node not running, and 'users_file' is not set");
		return 1;
	}
	char *err = NULL;
	if (passwd_set(cfg->users_file, name, hash, &err) < 0) {
		cli_error("%s", err);
		free(err);
		return 1;
	}
	fprintf(stderr, "node not running: %s added to %s\n", name, cfg->users_file);
	return 0;
}

/* USER-ADD / USER-PASSWD / USER-DEL; hash NULL for USER-DEL. */
static int change(const struct config *cfg, const char *cmd, const char *name, const char *hash)
{
	const char *tokens[3] = { cmd, name, hash };
	char *text = NULL;
	enum cli_admin_result r = cli_admin_request(cfg, tokens, hash != NULL ? 3 : 2, NULL, 0,
						    NULL, &text, USER_ADMIN_TIMEOUT_MS);
	int ret = 1;
	if (r == CLI_ADMIN_UNREACHABLE && strcmp(cmd, "USER-ADD") == 0) {
		ret = file_add(cfg, name, hash);
	} else if (r == CLI_ADMIN_UNREACHABLE) {
		cli_error("node not running (%s): user changes need it", text);
	} else if (r == CLI_ADMIN_OK) {
		/* Made and durable here; peers that were away get it later. */
		if (strstr(text, "not yet on") != NULL)
			fprintf(stderr, "warning: %s\n", text);
		ret = 0;
	} else {
		cli_error("%s", text);
	}
	free(text);
	return ret;
}

static void print_user(void *ctx, const char *user)
{
	(void)ctx;
	printf("%s\n", user);
}

static int user_list(const struct config *cfg)
{
	const char *tokens[1] = { "USER-LIST" };
	struct buf out = BUF_INIT;
	char *text = NULL;
	enum cli_admin_result r = cli_admin_request(cfg, tokens, 1, NULL, 0, &out, &text,
						    USER_ADMIN_TIMEOUT_MS);
	int ret = 1;
	if (r == CLI_ADMIN_OK) {
		fwrite(out.data != NULL ? (const void *)out.data : "", 1, out.len, stdout);
		ret = 0;
	} else if (r == CLI_ADMIN_UNREACHABLE && cfg->users_file != NULL) {
		char *err = NULL;
		if (passwd_list(cfg->users_file, print_user, NULL, &err) < 0) {
			cli_error("%s", err);
			free(err);
		} else {
			ret = 0;
		}
	} else {
		cli_error("%s", text);
	}
	free(text);
	buf_free(&out);
	return ret;
}

int cli_cmd_user(const struct config *cfg, int argc, char **argv)
{
	if (argc == 2 && strcmp(argv[1], "list") == 0)
		return user_list(cfg);
	if (argc == 3 && (strcmp(argv[1], "add") == 0 || strcmp(argv[1], "passwd") == 0 ||
			  strcmp(argv[1], "del") == 0)) {
		const char *name = argv[2];
		if (!passwd_user_name_valid(name)) {
			cli_error("invalid user name '%s' (letters, digits and . _ @ + - only)", name);
			return 1;
		}
		if (strcmp(argv[1], "del") == 0)
			return change(cfg, "USER-DEL", name, NULL);
		char *hash = read_hash(name);
		if (hash == NULL)
			return 1;
		int ret = change(cfg, strcmp(argv[1], "add") == 0 ? "USER-ADD" : "USER-PASSWD",
				 name, hash);
		free(hash);
		return ret;
	}
	cli_error("usage: starling -c FILE user add NAME | user passwd NAME | user del NAME | "
		  "user list");
	return 2;
}
