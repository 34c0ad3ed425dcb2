/* Durability: the group commit (stor_sync, or stor_sync_start and
 * stor_sync_finish with the sync in a helper thread), the callbacks that
 * wait for it (stor_on_durable), and the syncs LevelDB leaves out. */
#include "storage/storage-private.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/file.h"
#include "lib/log.h"
#include "lib/xalloc.h"

/* ---- Group commit ---- */
static int sync_older_logs(struct stor_db *db, const char **error_r)
{
	DIR *d = opendir(db->dir);
	if (d == NULL)
		return stor_err(db, error_r, "%s: opendir failed: %s", db->dir, strerror(errno));
	uint64_t newest = 0;
	ARRAY(uint64_t) logs = ARRAY_INIT;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		char *end;
		unsigned long long n = strtoull(de->d_name, &end, 10);
		if (end == de->d_name || strcmp(end, ".log") != 0)
			continue;
		ARRAY_PUSH(&logs, n);
		if (n > newest)
			newest = n;
	}
	closedir(d);
	int ret = 0;
	for (size_t i = 0; i < logs.count && ret == 0; i++) {
		if (logs.items[i] == newest)
			continue;
		char path[4096];
		snprintf(path, sizeof(path), "%s/%06llu.log", db->dir,
			 (unsigned long long)logs.items[i]);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue; /* compacted meanwhile: its data is in synced tables */
		if (fdatasync(fd) < 0)
			ret = stor_err(db, error_r, "%s: fdatasync failed: %s", path, strerror(errno));
		close(fd);
	}
	ARRAY_FREE(&logs);
	if (ret == 0) {
		int dfd = open(db->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0 || fsync(dfd) < 0)
			ret = stor_err(db, error_r, "%s: fsync failed: %s", db->dir, strerror(errno));
		if (dfd >= 0)
			close(dfd);
	}
	return ret;
}

int stor_db_write_synced(struct stor_db *db, struct stor_batch *wb, const char **error_r)
{
	if (stor_ldb_write(db, stor_batch_ldb(wb), true, error_r) < 0)
		return -1;
	return sync_older_logs(db, error_r);
}

/* Moving texts out of mostly dead journal segments happens after syncs, a
 * little at a time, so no single call stalls the node for long. */
#define COMPACT_STEP (1024 * 1024)

/* Runs the callbacks of one sync (taken out of the list first: they may
 * queue new ones), then a step of journal compaction. */
static void run_durable(struct stor_db *db, struct stor_durable *cbs, size_t count, bool ok)
{
	for (size_t i = 0; i < count; i++)
		cbs[i].cb(cbs[i].ctx, ok);
	free(cbs);
	if (ok && stor_jnl_compact_due(db)) {
		const char *error;
		if (stor_jnl_compact(db, COMPACT_STEP, &error) < 0)
			log_warnx("journal compaction: %s", error);
	}
	if (ok)
		stor_ldb_compact_maybe(db);
}

static void take_durable(struct stor_db *db, struct stor_durable **cbs_r, size_t *count_r)
{
	*cbs_r = db->durable.items;
	*count_r = db->durable.count;
	db->durable.items = NULL;
	db->durable.count = db->durable.cap = 0;
}

/* Completes the syncs in flight that are done, oldest first, waiting for
 * them if wait is set.  Returns true when none is in flight any more. */
static bool finish_in_flight(struct stor_db *db, bool wait)
{
	while (db->in_flight.count > 0) {
		struct stor_in_flight f = db->in_flight.items[0];
		const char *error;
		int r = wait ? (stor_jnl_sync_wait(db, f.seq, &error) < 0 ? -1 : 1) :
			stor_jnl_sync_poll(db, f.seq, &error);
		if (r == 0)
			return false;
		if (r < 0) {
			log_errorx("%s", error);
			db->dirty = true;
		}
		db->in_flight.count--;
		memmove(db->in_flight.items, db->in_flight.items + 1,
			db->in_flight.count * sizeof(f));
		run_durable(db, f.cbs, f.count, r > 0);
	}
	return true;
}

int stor_sync(struct stor_db *db, const char **error_r)
{
	if (db->dirty || db->in_flight.count > 0)
		db->blocking_syncs++;
	(void)finish_in_flight(db, true);
	int ret = 0;
	if (db->dirty) {
		if (db->fail_countdown > 0 && --db->fail_countdown == 0)
			ret = stor_err(db, error_r, "%s: sync failed: IO error: injected failure "
				       "(test)", db->dir);
		else
			ret = stor_jnl_sync(db, error_r);
		if (ret == 0)
			db->dirty = false;
	}
	struct stor_durable *cbs;
	size_t count;
	take_durable(db, &cbs, &count);
	run_durable(db, cbs, count, ret == 0);
	return ret;
}

int stor_sync_start(struct stor_db *db)
{
	const char *error;
	(void)finish_in_flight(db, false);
	int r = 0;
	uint64_t seq = 0;
	if (db->dirty) {
		r = stor_jnl_sync_start(db, &seq, &error);
		if (r == 2)
			return 0; /* every thread busy: a later turn starts it */
		if (r < 0)
			log_errorx("group commit failed: %s", error);
		/* Also after a failure: the journal refuses everything now, and
		 * retrying at every loop turn would only spin. */
		db->dirty = false;
	}
	struct stor_in_flight f = { seq, NULL, 0 };
	take_durable(db, &f.cbs, &f.count);
	if (r > 0) {
		/* They complete when the thread is done. */
		ARRAY_PUSH(&db->in_flight, f);
		return 1;
	}
	/* Nothing was left to sync (or it failed): complete now, unless an
	 * earlier sync still has to end first. */
	if (r == 0 && db->in_flight.count > 0) {
		struct stor_in_flight *last = &db->in_flight.items[db->in_flight.count - 1];
		if (f.count > 0) {
			last->cbs = xreallocarray(last->cbs, last->count + f.count,
						  sizeof(*f.cbs));
			memcpy(last->cbs + last->count, f.cbs, f.count * sizeof(*f.cbs));
			last->count += f.count;
		}
		free(f.cbs);
		return 0;
	}
	run_durable(db, f.cbs, f.count, r == 0);
	return r < 0 ? -1 : 0;
}

void stor_sync_finish(struct stor_db *db)
{
	stor_jnl_sync_drain(db);
	(void)finish_in_flight(db, false);
}

bool stor_sync_busy(struct stor_db *db)
{
	return stor_jnl_sync_busy(db);
}

int stor_sync_fd(struct stor_db *db)
{
	return stor_jnl_sync_fd(db);
}

void stor_on_durable(struct stor_db *db, stor_durable_cb *cb, void *ctx)
{
	struct stor_durable d = { cb, ctx };
	ARRAY_PUSH(&db->durable, d);
}

bool stor_sync_pending(struct stor_db *db)
{
	return db->dirty || db->durable.count > 0 || db->in_flight.count > 0 ||
		stor_jnl_sync_busy(db);
}

