/* `starling dump -u USER`: the canonical dump used to compare nodes.  Asks
 * the running node; when none runs, opens the store directly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "lib/passwd.h"
#include "lib/xalloc.h"
#include "storage/storage.h"

static int dump_from_store(const struct config *cfg, const char *user, struct buf *out)
{
	/* starlingd keeps the store in DATA_DIR/store. */
	char *dir = xasprintf("%s/store", cfg->data_dir);
	struct stor_settings set = { .dir = dir, .max_message_size = cfg->max_message_size };
	struct stor_db *db = NULL;
	char *err = NULL;
	int opened = stor_open(&set, &db, &err);
	free(dir);
	if (opened < 0) {
		cli_error("%s", err);
		free(err);
		return 1;
	}
	const char *error;
	int ret = 0;
	if (stor_dump_user(db, user, out, &error) < 0) {
		cli_error("dump failed: %s", error);
		ret = 1;
	}
	stor_close(&db);
	return ret;
}

int cli_cmd_dump(const struct config *cfg, int argc, char **argv)
{
	if (argc != 3 || strcmp(argv[1], "-u") != 0) {
		cli_error("usage: starling -c FILE dump -u USER");
		return 2;
	}
	const char *user = argv[2];
	/* ".public" owns the public mailboxes (README, "Sharing mailboxes"). */
	if (!passwd_user_name_valid(user) && strcmp(user, ".public") != 0) {
		cli_error("invalid user name '%s'", user);
		return 1;
	}
	struct buf out = BUF_INIT;
	char *text = NULL;
	const char *tokens[] = { "DUMP", user };
	int ret = 0;
	switch (cli_admin_request(cfg, tokens, 2, NULL, 0, &out, &text, 600000)) {
	case CLI_ADMIN_OK:
		break;
	case CLI_ADMIN_UNREACHABLE:
		buf_reset(&out);
		ret = dump_from_store(cfg, user, &out);
		break;
	case CLI_ADMIN_NO:
		cli_error("dump refused: %s", text);
		ret = 1;
		break;
	case CLI_ADMIN_FAILED:
		cli_error("%s", text);
		ret = 1;
		break;
	}
	free(text);
	if (ret == 0 && fwrite(out.data ? (const void *)out.data : "", 1, out.len, stdout) != out.len) {
		cli_error("writing the dump failed");
		ret = 1;
	}
	buf_free(&out);
	return ret;
}
