/* The helper threads that run a group commit's fdatasync off the event
 * loop.  Apart because it is the journal's only code that runs on other
 * threads, and what it shares with them is under one mutex here. */
#include "storage/storage-journal-private.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "lib/crc32c.h"
#include "lib/log.h"
#include "lib/xalloc.h"

/* ---- Syncing off the event loop ---- */

/* A test's slow disk (stor_test_hold_syncs()), bounded so that a loop
 * that waits for the sync itself still ends; mu is held. */
static void hold_slot(struct jnl_sync_slot *slot)
{
	struct jnl_syncer *sy = slot->sy;
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 30;
	slot->held = true;
	while (slot->hold && !sy->quit &&
	       pthread_cond_timedwait(&sy->cv, &sy->mu, &until) != ETIMEDOUT)
		;
	slot->held = false;
	slot->hold = false;
}

static void *syncer_main(void *arg)
{
	struct jnl_sync_slot *slot = arg;
	struct jnl_syncer *sy = slot->sy;
	pthread_mutex_lock(&sy->mu);
	for (;;) {
		while (!slot->requested && !sy->quit)
			pthread_cond_wait(&sy->cv, &sy->mu);
		if (sy->quit)
			break;
		int fd = slot->fd;
		bool fail = slot->fail;
		if (slot->hold)
			hold_slot(slot);
		pthread_mutex_unlock(&sy->mu);
		int err = 0;
		if (fail)
			err = EIO;
		else if (fdatasync(fd) < 0)
			err = errno;
		pthread_mutex_lock(&sy->mu);
		slot->requested = false;
		slot->done = true;
		slot->result = err;
		pthread_cond_broadcast(&sy->cv);
		uint64_t one = 1;
		/* Only fails when the counter would overflow: it is read after
		 * every sync, so never. */
		(void)!write(sy->event_fd, &one, sizeof(one));
	}
	pthread_mutex_unlock(&sy->mu);
	return NULL;
}

static void syncer_free(struct jnl_syncer *sy)
{
	pthread_mutex_lock(&sy->mu);
	sy->quit = true;
	pthread_cond_broadcast(&sy->cv);
	pthread_mutex_unlock(&sy->mu);
	for (unsigned i = 0; i < sy->threads; i++)
		pthread_join(sy->slot[i].thread, NULL);
	close(sy->event_fd);
	pthread_mutex_destroy(&sy->mu);
	pthread_cond_destroy(&sy->cv);
	free(sy);
}

static int syncer_start(struct stor_db *db, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	if (j->syncer != NULL)
		return 0;
	struct jnl_syncer *sy = xcalloc(1, sizeof(*sy));
	sy->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (sy->event_fd < 0) {
		free(sy);
		return stor_err(db, error_r, "eventfd failed: %s", strerror(errno));
	}
	pthread_mutex_init(&sy->mu, NULL);
	pthread_cond_init(&sy->cv, NULL);
	for (unsigned i = 0; i < STOR_SYNC_THREADS; i++) {
		sy->slot[i].sy = sy;
		int e = pthread_create(&sy->slot[i].thread, NULL, syncer_main, &sy->slot[i]);
		if (e != 0) {
			syncer_free(sy);
			return stor_err(db, error_r, "cannot start a sync thread: %s", strerror(e));
		}
		sy->threads++;
	}
	j->syncer = sy;
	return 0;
}

void syncer_stop(struct stor_journal *j)
{
	if (j->syncer != NULL)
		syncer_free(j->syncer);
	j->syncer = NULL;
}

static bool syncer_busy(const struct jnl_syncer *sy)
{
	return sy != NULL && sy->collected != sy->next;
}

/* Collects the oldest sync in flight, waiting for it if wait is set (the
 * caller holds mu): 1 collected, 0 not done yet, -1 it failed. */
static int collect_oldest(struct stor_db *db, bool wait, const char **error_r)
{
	struct jnl_syncer *sy = db->jnl->syncer;
	struct jnl_sync_slot *slot = &sy->slot[sy->collected % STOR_SYNC_THREADS];
	while (wait && !slot->done)
		pthread_cond_wait(&sy->cv, &sy->mu);
	if (!slot->done)
		return 0;
	slot->done = false;
	sy->collected++;
	return slot->result == 0 ? 1 : sync_failed(db, slot->result, error_r);
}

/* Collects syncs in order up to and including sync seq: 1 done (and every
 * sync so far succeeded), 0 still running, -1 failed. */
static int collect_until(struct stor_db *db, uint64_t seq, bool wait, const char **error_r)
{
	struct jnl_syncer *sy = db->jnl->syncer;
	int ret = 1;
	if (sy != NULL && seq >= sy->collected && seq < sy->next) {
		pthread_mutex_lock(&sy->mu);
		while (ret > 0 && sy->collected <= seq)
			ret = collect_oldest(db, wait, error_r);
		pthread_mutex_unlock(&sy->mu);
	}
	if (ret == 0)
		return 0;
	/* This sync failed: sync_failed() broke the journal and *error_r is
	 * its message, db->error, which another error would free. */
	if (ret < 0)
		return -1;
	/* Collected now or earlier (a segment switch waits for every sync):
	 * a failure of any before it broke the journal. */
	return check_usable(db, error_r) < 0 ? -1 : 1;
}

/* Waits for every sync in flight: 0, or -1 when one failed. */
int async_wait(struct stor_db *db, const char **error_r)
{
	struct jnl_syncer *sy = db->jnl->syncer;
	if (!syncer_busy(sy))
		return 0;
	return collect_until(db, sy->next - 1, true, error_r) < 0 ? -1 : 0;
}

int stor_jnl_sync_wait(struct stor_db *db, uint64_t seq, const char **error_r)
{
	return collect_until(db, seq, true, error_r) < 0 ? -1 : 0;
}

int stor_jnl_sync_poll(struct stor_db *db, uint64_t seq, const char **error_r)
{
	stor_jnl_sync_drain(db);
	return collect_until(db, seq, false, error_r);
}

int stor_jnl_sync_start(struct stor_db *db, uint64_t *seq_r, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	if (check_usable(db, error_r) < 0 || syncer_start(db, error_r) < 0)
		return -1;
	/* Written out at once even when no thread is free: the sync that
	 * comes next then waits only for the disk. */
	if (stor_stage_flush(db, error_r) < 0 || flush_pending(db, error_r) < 0)
		return -1;
	struct jnl_syncer *sy = j->syncer;
	if (!j->unsynced)
		return 0;
	if (sy->next - sy->collected == STOR_SYNC_THREADS)
		return 2;
	/* Writes from now on are not covered by this sync. */
	j->unsynced = false;
	unsigned i = (unsigned)(sy->next % STOR_SYNC_THREADS);
	pthread_mutex_lock(&sy->mu);
	sy->slot[i].fd = j->sync_fd[i];
	sy->slot[i].fail = db->fail_next_async;
	db->fail_next_async = false;
	sy->slot[i].hold = db->hold_syncs;
	sy->slot[i].requested = true;
	pthread_cond_broadcast(&sy->cv);
	pthread_mutex_unlock(&sy->mu);
	*seq_r = sy->next++;
	return 1;
}

bool stor_jnl_sync_busy(struct stor_db *db)
{
	return syncer_busy(db->jnl->syncer);
}

int stor_jnl_sync_fd(struct stor_db *db)
{
	const char *error;
	if (syncer_start(db, &error) < 0)
		return -1;
	return db->jnl->syncer->event_fd;
}

void stor_jnl_sync_drain(struct stor_db *db)
{
	struct jnl_syncer *sy = db->jnl->syncer;
	uint64_t n;
	/* A sync collected by a waiting caller left its signal behind: an
	 * event loop would see the fd readable forever. */
	if (sy != NULL)
		(void)!read(sy->event_fd, &n, sizeof(n));
}

void stor_test_hold_syncs(struct stor_db *db, bool hold)
{
	struct jnl_syncer *sy = db->jnl->syncer;
	db->hold_syncs = hold;
	if (hold || sy == NULL)
		return;
	pthread_mutex_lock(&sy->mu);
	for (unsigned i = 0; i < STOR_SYNC_THREADS; i++)
		sy->slot[i].hold = false;
	pthread_cond_broadcast(&sy->cv);
	pthread_mutex_unlock(&sy->mu);
}

unsigned stor_test_held_syncs(struct stor_db *db)
{
	struct jnl_syncer *sy = db->jnl->syncer;
	unsigned n = 0;
	if (sy == NULL)
		return 0;
	pthread_mutex_lock(&sy->mu);
	for (unsigned i = 0; i < STOR_SYNC_THREADS; i++)
		n += sy->slot[i].held;
	pthread_mutex_unlock(&sy->mu);
	return n;
}
