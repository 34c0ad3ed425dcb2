/* `starling bundle export -u USER [--since STATEFILE] -o FILE` and
 * `starling bundle import FILE [--state STATEFILE]`: change bundles for
 * offline sync (SPEC.md 11, sync/sync-bundle.h).
 *
 * Export writes the user's copy on this node as a signed bundle to FILE
 * (through a temporary file and a rename, so FILE is whole or absent);
 * with --since, the state file an import here wrote, the texts the other
 * node holds are left out.  Import verifies FILE completely, merges it,
 * and writes the state for the next export back to STATEFILE (default
 * FILE.state).  Both go through the running node's admin socket; when no
 * node runs they open DATA_DIR/store themselves.  Exit 0 on success, else
 * one line on stderr (a refused bundle changed nothing). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "lib/buf.h"
#include "lib/clock.h"
#include "lib/file.h"
#include "lib/passwd.h"
#include "lib/xalloc.h"
#include "storage/storage.h"
#include "sync/sync-bundle.h"

static const char bundle_usage[] =
	"usage: starling -c FILE bundle export -u USER [--since STATEFILE] -o FILE\n"
	"       starling -c FILE bundle import FILE [--state STATEFILE]";

/* An import of a large bundle may take a while. */
#define BUNDLE_WAIT_MS (30 * 60 * 1000)

static int open_store(const struct config *cfg, struct stor_db **db_r)
{
	char *dir = xasprintf("%s/store", cfg->data_dir);
	struct stor_settings set = { .dir = dir, .max_message_size = cfg->max_message_size };
	char *err = NULL;
	int r = stor_open(&set, db_r, &err);
	free(dir);
	if (r < 0) {
		cli_error("%s", err);
		free(err);
	}
	return r;
}

static int load_secret(const struct config *cfg, unsigned char **secret_r, size_t *len_r)
{
	char *err = NULL;
	if (cfg->cluster_secret_file == NULL) {
		cli_error("bundles are signed with the cluster secret: cluster_secret_file is "
			  "not configured");
		return -1;
	}
	if (file_read_secret("cluster_secret_file", cfg->cluster_secret_file, CONFIG_SECRET_MIN,
			     CONFIG_SECRET_MAX, secret_r, len_r, &err) < 0) {
		cli_error("%s", err);
		free(err);
		return -1;
	}
	return 0;
}

static int export_local(const struct config *cfg, const char *user, const struct buf *state,
			struct buf *out, char **summary_r)
{
	unsigned char *secret;
	size_t secret_len;
	struct stor_db *db;
	if (load_secret(cfg, &secret, &secret_len) < 0)
		return -1;
	if (open_store(cfg, &db) < 0) {
		free(secret);
		return -1;
	}
	struct sync_bundle_export_settings set = {
		.user = user, .source_sid = cfg->node_id, .key = { secret, secret_len, false },
		.state = state->len > 0 ? (const void *)state->data : NULL, .state_len = state->len,
	};
	struct sync_bundle_export_report rep;
	char *err = NULL;
	int r = sync_bundle_export(db, &set, out, &rep, &err);
	if (r < 0)
		cli_error("export failed: %s", err);
	else
		*summary_r = xasprintf("mailboxes %u messages %u tombstones %u texts %u left_out %u",
				       rep.mailboxes, rep.messages, rep.tombstones, rep.texts,
				       rep.texts_left_out);
	free(err);
	stor_close(&db);
	free(secret);
	return r;
}

static int cmd_export(const struct config *cfg, int argc, char **argv)
{
	const char *user = NULL, *since = NULL, *file = NULL;
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "-u") == 0 && i + 1 < argc)
			user = argv[++i];
		else if (strcmp(argv[i], "--since") == 0 && i + 1 < argc)
			since = argv[++i];
		else if (strcmp(argv[i], "-o") == 0 && i + 1 < argc)
			file = argv[++i];
		else
			user = file = NULL, i = argc;
	}
	if (user == NULL || file == NULL) {
		cli_error("%s", bundle_usage);
		return 2;
	}
	if (!passwd_user_name_valid(user)) {
		cli_error("invalid user name '%s'", user);
		return 1;
	}
	struct buf state = BUF_INIT, out = BUF_INIT;
	char *rerr = NULL;
	if (since != NULL && file_read(since, SYNC_BUNDLE_MAX_STATE_SIZE, &state, &rerr) < 0) {
		cli_error("%s", rerr);
		free(rerr);
		buf_free(&state);
		return 1;
	}
	char size[32];
	snprintf(size, sizeof(size), "%zu", state.len);
	const char *tokens[] = { "BUNDLE-EXPORT", user, size };
	char *text = NULL;
	int ret = 1;
	switch (cli_admin_request(cfg, tokens, 3, state.data, state.len, &out, &text,
				  BUNDLE_WAIT_MS)) {
	case CLI_ADMIN_OK:
		ret = 0;
		break;
	case CLI_ADMIN_UNREACHABLE:
		free(text);
		text = NULL;
		buf_reset(&out);
		ret = export_local(cfg, user, &state, &out, &text) < 0 ? 1 : 0;
		break;
	case CLI_ADMIN_NO:
		cli_error("export failed: %s", text);
		break;
	case CLI_ADMIN_FAILED:
		cli_error("%s", text);
		break;
	}
	char *werr = NULL;
	if (ret == 0 && file_write_atomic(file, out.data != NULL ? (const void *)out.data : "",
					  out.len, 0600, &werr) < 0) {
		cli_error("%s", werr);
		free(werr);
		ret = 1;
	}
	if (ret == 0)
		printf("exported %s to %s: %zu bytes, %s\n", user, file, out.len, text);
	free(text);
	buf_free(&state);
	buf_free(&out);
	return ret;
}

static int import_local(const struct config *cfg, const struct buf *bundle, struct buf *state,
			char **summary_r)
{
	unsigned char *secret;
	size_t secret_len;
	struct stor_db *db;
	if (load_secret(cfg, &secret, &secret_len) < 0)
		return -1;
	if (open_store(cfg, &db) < 0) {
		free(secret);
		return -1;
	}
	struct sync_bundle_import_settings set = {
		.own_sid = cfg->node_id, .key = { secret, secret_len, false },
		.scratch_parent = cfg->data_dir, .max_message_size = cfg->max_message_size,
	};
	struct sync_bundle_import_result res;
	memset(&res, 0, sizeof(res));
	buf_init(&res.state);
	char *err = NULL;
	int r = -1;
	struct sync_bundle_import *imp =
		sync_bundle_import_begin(db, &set, bundle->data != NULL ? (const void *)bundle->data : "",
					 bundle->len, &err);
	if (imp != NULL) {
		/* The same progress lines as a running node sends (repl-admin.c). */
		uint64_t every = cli_progress_interval_ms(), next = clock_mono_ms() + every;
		while ((r = sync_bundle_import_step(imp, &err)) > 0) {
			/* No loop syncs the store here: make the merge durable
			 * (a failure reaches the next step). */
			if (r == SYNC_BUNDLE_IMPORT_WAIT) {
				const char *serr;
				(void)stor_sync(db, &serr);
			}
			if (clock_mono_ms() >= next) {
				char line[256];
				sync_bundle_import_progress(imp, line, sizeof(line));
				fprintf(stderr, "progress: %s\n", line);
				fflush(stderr);
				next = clock_mono_ms() + every;
			}
		}
		if (r == 0)
			sync_bundle_import_take_result(imp, &res);
		sync_bundle_import_destroy(&imp);
	}
	if (r < 0) {
		cli_error("%s", err);
	} else {
		const struct sync_report *rep = &res.report;
		buf_append(state, res.state.data, res.state.len);
		*summary_r = xasprintf("user %s source %u base %s created %u received %u "
				       "renumbered %u expunged %u flags %u pseen %u skipped %u/%u",
				       res.user, res.source,
				       res.base_known ? "known" : "unknown", rep->mailboxes_created,
				       rep->messages_received, rep->messages_renumbered,
				       rep->messages_expunged, rep->flags_changed,
				       res.pseen.records_applied, res.pseen.records_skipped,
				       res.pseen.mailboxes_skipped);
	}
	sync_bundle_import_result_free(&res);
	free(err);
	stor_close(&db);
	free(secret);
	return r;
}

static int cmd_import(const struct config *cfg, int argc, char **argv)
{
	const char *file = NULL, *state_path = NULL;
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--state") == 0 && i + 1 < argc)
			state_path = argv[++i];
		else if (argv[i][0] != '-' && file == NULL)
			file = argv[i];
		else
			file = NULL, i = argc;
	}
	if (file == NULL) {
		cli_error("%s", bundle_usage);
		return 2;
	}
	struct buf bundle = BUF_INIT, state = BUF_INIT;
	char *rerr = NULL;
	if (file_read(file, SYNC_BUNDLE_MAX_SIZE, &bundle, &rerr) < 0) {
		cli_error("%s", rerr);
		free(rerr);
		buf_free(&bundle);
		return 1;
	}
	char size[32];
	snprintf(size, sizeof(size), "%zu", bundle.len);
	const char *tokens[] = { "BUNDLE-IMPORT", size };
	char *text = NULL;
	int ret = 1;
	switch (cli_admin_request(cfg, tokens, 2, bundle.data, bundle.len, &state, &text,
				  BUNDLE_WAIT_MS)) {
	case CLI_ADMIN_OK:
		ret = 0;
		break;
	case CLI_ADMIN_UNREACHABLE:
		free(text);
		text = NULL;
		buf_reset(&state);
		ret = import_local(cfg, &bundle, &state, &text) < 0 ? 1 : 0;
		break;
	case CLI_ADMIN_NO:
		cli_error("%s", text);
		break;
	case CLI_ADMIN_FAILED:
		cli_error("%s", text);
		break;
	}
	char *default_state = xasprintf("%s.state", file);
	if (state_path == NULL)
		state_path = default_state;
	char *werr = NULL;
	if (ret == 0 && file_write_atomic(state_path, state.data != NULL ? (const void *)state.data : "",
					  state.len, 0600, &werr) < 0) {
		cli_error("the bundle was imported, but its state file was not written (%s): "
			  "export the next bundle back without --since", werr);
		free(werr);
		ret = 1;
	}
	if (ret == 0)
		printf("imported %s: %s; state for the next export back: %s\n", file, text,
		       state_path);
	free(default_state);
	free(text);
	buf_free(&bundle);
	buf_free(&state);
	return ret;
}

int cli_cmd_bundle(const struct config *cfg, int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "export") == 0)
		return cmd_export(cfg, argc, argv);
	if (argc >= 2 && strcmp(argv[1], "import") == 0)
		return cmd_import(cfg, argc, argv);
	cli_error("%s", bundle_usage);
	return 2;
}
