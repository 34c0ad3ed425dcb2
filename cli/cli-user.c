/* `starling user add|list`: edits and reads users_file directly, so it
 * works whether or not the node runs; the node rereads the file at login. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "lib/passwd.h"
#include "lib/xalloc.h"

static int user_add(const struct config *cfg, const char *name)
{
	if (!passwd_user_name_valid(name)) {
		cli_error("invalid user name '%s' (letters, digits and . _ @ + - only)", name);
		return 1;
	}
	char line[PASSWD_MAX_PASSWORD_LEN + 2];
	if (isatty(STDIN_FILENO))
		fprintf(stderr, "password for %s: ", name);
	if (fgets(line, sizeof(line), stdin) == NULL) {
		cli_error("no password on stdin");
		return 1;
	}
	size_t len = strlen(line);
	if (len > 0 && line[len - 1] == '\n')
		line[--len] = '\0';
	else if (len == sizeof(line) - 1) {
		cli_error("password too long (at most %d bytes)", PASSWD_MAX_PASSWORD_LEN);
		return 1;
	}
	if (len > 0 && line[len - 1] == '\r')
		line[--len] = '\0';
	if (len == 0) {
		cli_error("empty password");
		return 1;
	}
	char *hash = passwd_hash_sha512_crypt(line);
	explicit_bzero(line, sizeof(line));
	char *err = NULL;
	int ret = passwd_set(cfg->users_file, name, hash, &err);
	free(hash);
	if (ret < 0) {
		cli_error("%s", err);
		free(err);
		return 1;
	}
	return 0;
}

static void print_user(void *ctx, const char *user)
{
	(void)ctx;
	printf("%s\n", user);
}

int cli_cmd_user(const struct config *cfg, int argc, char **argv)
{
	if (cfg->users_file == NULL) {
		cli_error("%s: 'users_file' is not set", cfg->path);
		return 1;
	}
	if (argc == 3 && strcmp(argv[1], "add") == 0)
		return user_add(cfg, argv[2]);
	if (argc == 2 && strcmp(argv[1], "list") == 0) {
		char *err = NULL;
		if (passwd_list(cfg->users_file, print_user, NULL, &err) < 0) {
			cli_error("%s", err);
			free(err);
			return 1;
		}
		return 0;
	}
	cli_error("usage: starling -c FILE user add NAME | user list");
	return 2;
}
