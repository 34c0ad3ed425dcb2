/* Opening and closing the store: LevelDB with its options, the journal,
 * the sentinels of each key kind, and the compaction of LevelDB's deletion
 * markers in a helper thread; and the test hooks that reach into the
 * handle. */
#include "storage/storage-private.h"
#include "storage/storage-acl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/config.h"
#include "lib/file.h"
#include "lib/log.h"
#include "lib/xalloc.h"

/* ---- Open, close ---- */

/* A live one-byte key before each kind's records ("A" to "Z", empty
 * values).  Why: LevelDB's iterator steps over every deletion marker
 * between two live keys, and its C API has no upper bound to stop a scan
 * at the end of its range.  So a scan that ends after its range's last
 * live key went on over the markers that follow, until a compaction
 * dropped them: after the last mailbox name, the 'O' marker each append
 * writes and deletes and the 'Q' entries of every flag change; under a
 * load of appends and expunges that made LIST cost more with every
 * minute.  With a sentinel the step past a range ends at the next kind's
 * sentinel; only markers of the scan's own kind remain in its way.
 * Not journaled (a constant, rewritten by every open that misses one);
 * stor_iter_seek() skips the one a scan of a whole kind lands on, and no
 * record has a one-byte key. */
static int put_sentinels(struct stor_db *db, const char **error_r)
{
	struct stor_batch *wb = stor_batch_new();
	bool missing = false;
	int ret = 0;
	for (char c = 'A'; c <= 'Z' && ret == 0; c++) {
		struct stor_key k;
		stor_key_init(&k, c);
		char *lerr = NULL;
		size_t len;
		char *v = leveldb_get(db->ldb, db->ropts, (const char *)k.b, k.len, &len, &lerr);
		if (lerr != NULL)
			ret = stor_err_leveldb(db, error_r, "read", lerr);
		else if (v == NULL) {
			stor_batch_put(wb, &k, "", 0);
			missing = true;
		}
		leveldb_free(v);
	}
	if (ret == 0 && missing)
		ret = stor_db_write_synced(db, wb, error_r);
	stor_batch_free(wb);
	return ret;
}

/* Deletion markers stay in LevelDB until a compaction reaches the level
 * below them, and every scan passing through them steps over each one:
 * under a steady load of appends and expunges (a mailbox used as a queue)
 * a scan from UID 1 (SELECT) steps over every message ever expunged there,
 * and LevelDB compacts by size, not by how many markers a range holds.  So
 * after enough deletions the whole store is compacted in a helper thread
 * (LevelDB is safe to use from several threads), never on the event loop.
 * Enough: at least COMPACT_MIN_DELETES, and one per 256 bytes of tables, so
 * a big store is not rewritten for every few thousand expunges (about 256
 * bytes written per key deleted, the order of LevelDB's own write
 * amplification). */
#define COMPACT_MIN_DELETES 10000

static void *compactor_main(void *arg)
{
	struct stor_db *db = arg;
	leveldb_compact_range(db->ldb, NULL, 0, NULL, 0);
	atomic_store(&db->compactor_busy, false);
	return NULL;
}

static void compactor_join(struct stor_db *db)
{
	if (db->compactor_started) {
		pthread_join(db->compactor, NULL);
		db->compactor_started = false;
	}
}

void stor_ldb_compact_maybe(struct stor_db *db)
{
	if (db->deletes < COMPACT_MIN_DELETES)
		return;
	if (db->compactor_started) {
		if (atomic_load(&db->compactor_busy))
			return;
		compactor_join(db);
	}
	const char *start = "", *limit = "\xff";
	size_t start_len = 0, limit_len = 1;
	uint64_t size = 0;
	leveldb_approximate_sizes(db->ldb, 1, &start, &start_len, &limit, &limit_len, &size);
	if (db->deletes < size / 256)
		return;
	db->deletes = 0;
	atomic_store(&db->compactor_busy, true);
	if (pthread_create(&db->compactor, NULL, compactor_main, db) != 0) {
		atomic_store(&db->compactor_busy, false);
		log_warnx("%s: cannot start a LevelDB compaction thread", db->dir);
		return;
	}
	db->compactor_started = true;
	db->compactions++;
}

static void db_free(struct stor_db *db)
{
	compactor_join(db);
	stor_stage_free(db);
	stor_jnl_close(db);
	if (db->ldb != NULL)
		leveldb_close(db->ldb);
	if (db->opts != NULL)
		leveldb_options_destroy(db->opts);
	if (db->filter != NULL)
		leveldb_filterpolicy_destroy(db->filter);
	if (db->ropts != NULL)
		leveldb_readoptions_destroy(db->ropts);
	if (db->wopts != NULL)
		leveldb_writeoptions_destroy(db->wopts);
	if (db->wopts_sync != NULL)
		leveldb_writeoptions_destroy(db->wopts_sync);
	ARRAY_FREE(&db->durable);
	for (size_t i = 0; i < db->in_flight.count; i++)
		free(db->in_flight.items[i].cbs);
	ARRAY_FREE(&db->in_flight);
	free(db->error);
	free(db->dir);
	free(db);
}

static bool lock_error(const char *lerr)
{
	return strstr(lerr, "lock") != NULL || strstr(lerr, "LOCK") != NULL;
}

/* leveldb_open, tried again while the store's lock is held elsewhere, up
 * to wait_ms (fault campaign 13180: a node restarted while a `starling
 * bundle export`, finding no node, had the store open). */
static leveldb_t *open_waiting(struct stor_db *db, unsigned wait_ms, char **lerr_r)
{
	uint64_t deadline = clock_mono_ms() + wait_ms;
	for (bool said = false;; said = true) {
		*lerr_r = NULL;
		leveldb_t *ldb = leveldb_open(db->opts, db->dir, lerr_r);
		if (*lerr_r == NULL || !lock_error(*lerr_r) || clock_mono_ms() >= deadline)
			return ldb;
		if (!said)
			log_warnx("%s: the store is in use by another process (%s); waiting up "
				  "to %u s for it", db->dir, *lerr_r, (wait_ms + 999) / 1000);
		leveldb_free(*lerr_r);
		struct timespec ts = { 0, 50 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}

int stor_open(const struct stor_settings *set, struct stor_db **db_r, char **error_r)
{
	if (set->dir == NULL || set->dir[0] == '\0') {
		*error_r = xstrdup("store directory not set");
		return -1;
	}
	if (file_mkdir_p(set->dir, 0700) < 0) {
		*error_r = xasprintf("%s: cannot create directory: %s", set->dir, strerror(errno));
		return -1;
	}
	struct stor_db *db = xcalloc(1, sizeof(*db));
	db->dir = xstrdup(set->dir);
	db->max_message_size = set->max_message_size != 0 ? set->max_message_size :
		CONFIG_DEFAULT_MAX_MESSAGE_SIZE;

	db->opts = leveldb_options_create();
	leveldb_options_set_create_if_missing(db->opts, 1);
	leveldb_options_set_paranoid_checks(db->opts, 1);
	db->filter = leveldb_filterpolicy_create_bloom(10);
	leveldb_options_set_filter_policy(db->opts, db->filter);
	leveldb_options_set_compression(db->opts, leveldb_no_compression);
	/* Texts live in the journal: LevelDB holds small records only.  A
	 * memtable of 16 MiB (LevelDB's default is 4) keeps level-0 files few
	 * under bursts (a resync stores tens of thousands of messages), so
	 * LevelDB never slows writes down to let compaction catch up; tables
	 * of 8 MiB keep the file count modest. */
	leveldb_options_set_write_buffer_size(db->opts, 16 * 1024 * 1024);
	leveldb_options_set_max_file_size(db->opts, 8 * 1024 * 1024);
	db->ropts = leveldb_readoptions_create();
	leveldb_readoptions_set_verify_checksums(db->ropts, 1);
	db->wopts = leveldb_writeoptions_create();
	leveldb_writeoptions_set_sync(db->wopts, 0);
	db->wopts_sync = leveldb_writeoptions_create();
	leveldb_writeoptions_set_sync(db->wopts_sync, 1);

	char *lerr = NULL;
	db->ldb = open_waiting(db, set->lock_wait_ms, &lerr);
	if (lerr != NULL) {
		if (lock_error(lerr)) {
			/* LevelDB's own words too: a lock that cannot be
			 * taken is not the only error that names the LOCK
			 * file (fault campaign 13180: a restart refused 9 ms
			 * after the old process had stopped). */
			*error_r = xasprintf("%s: store is in use by another process "
					     "(a running starlingd, or a starling command): %s", db->dir, lerr);
		} else if (strncmp(lerr, "Corruption", 10) == 0) {
			*error_r = xasprintf("%s: store is corrupted: %s", db->dir, lerr);
		} else {
			*error_r = xasprintf("%s: cannot open store: %s", db->dir, lerr);
		}
		leveldb_free(lerr);
		db->ldb = NULL;
		db_free(db);
		return -1;
	}
	const char *error;
	if (stor_jnl_open(db, set->journal_segment_size, &error) < 0 ||
	    put_sentinels(db, &error) < 0 ||
	    stor_jnl_repair_ahead(db, &error) < 0 || stor_text_gc(db, &error) < 0 ||
	    stor_acl_index_upgrade(db, &error) < 0 || stor_sync(db, &error) < 0) {
		*error_r = xstrdup(error);
		db_free(db);
		return -1;
	}
	/* Counted from here: opening's own writes are not the caller's. */
	db->fail_countdown = set->fail_nth_write;
	*db_r = db;
	return 0;
}

void stor_close(struct stor_db **_db)
{
	struct stor_db *db = *_db;
	if (db == NULL)
		return;
	*_db = NULL;
	const char *error;
	if (stor_sync_pending(db))
		(void)stor_sync(db, &error);
	/* A clean close leaves nothing to replay. */
	if (stor_jnl_checkpoint(db, true, &error) < 0)
		log_warnx("%s", error);
	db_free(db);
}

/* LevelDB syncs only its current log file.  When it switched to a new log
 * (the memtable filled up), the old one may still hold writes made without
 * sync, and the new file's directory entry is not synced.  A checkpoint
 * claims all of LevelDB's state durable, so it syncs those too. */

/* ---- Test hooks ---- */

int stor_test_raw_put(struct stor_db *db, const void *key, size_t klen, const void *val,
		      size_t vlen, const char **error_r)
{
	struct stor_batch *wb = stor_batch_new();
	stor_batch_put_raw(wb, key, klen, val, vlen);
	int ret = stor_db_write(db, wb, error_r);
	stor_batch_free(wb);
	return ret;
}

void stor_test_fail_nth_write(struct stor_db *db, unsigned n)
{
	db->fail_countdown = n;
}

void stor_test_fail_next_sync(struct stor_db *db)
{
	db->fail_next_async = true;
}

unsigned stor_test_blocking_syncs(struct stor_db *db)
{
	return db->blocking_syncs;
}

unsigned stor_test_compactions(struct stor_db *db)
{
	compactor_join(db);
	return db->compactions;
}

void stor_test_abandon(struct stor_db **_db)
{
	struct stor_db *db = *_db;
	*_db = NULL;
	db_free(db);
}
