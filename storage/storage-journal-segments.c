/* The journal's segment files and the live text bytes counted per
 * segment: opening, reading and writing segments, and the reservation of
 * space.  Apart from records and batches because everything that decides
 * when a segment can go (compaction, the checkpoint) reads these counts. */
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
#include <unistd.h>

#include "lib/crc32c.h"
#include "lib/log.h"
#include "lib/xalloc.h"

/* ---- Live bytes per segment ---- */

struct jnl_live *live_slot(jnl_live_array *a, uint32_t seg, bool create)
{
	for (size_t i = 0; i < a->count; i++) {
		if (a->items[i].seg == seg)
			return &a->items[i];
	}
	if (!create)
		return NULL;
	struct jnl_live l = { seg, 0 };
	ARRAY_PUSH(a, l);
	return &a->items[a->count - 1];
}

uint64_t live_bytes(struct stor_journal *j, uint32_t seg)
{
	struct jnl_live *l = live_slot(&j->live, seg, false);
	return l != NULL ? l->bytes : 0;
}

/* The bytes a text record of len text bytes takes in its segment. */
uint64_t text_record_size(uint32_t len)
{
	return JNL_HDR + JNL_TEXT_HDR + (uint64_t)len;
}

void stor_jnl_live(struct stor_db *db, const struct stor_extent *ext, size_t n, int sign)
{
	struct stor_journal *j = db->jnl;
	for (size_t i = 0; i < n; i++) {
		/* Kept as two's complement: a batch may free more of a segment
		 * than it adds, and the sum is checked when it is applied. */
		struct jnl_live *d = live_slot(&j->live_delta, ext[i].seg, true);
		uint64_t size = text_record_size(ext[i].len);
		d->bytes += sign > 0 ? size : (uint64_t)0 - size;
	}
}

void stor_jnl_live_discard(struct stor_db *db)
{
	db->jnl->live_delta.count = 0;
}

void stor_jnl_live_stage(struct stor_db *db)
{
	struct stor_journal *j = db->jnl;
	for (size_t i = 0; i < j->live_delta.count; i++) {
		const struct jnl_live *d = &j->live_delta.items[i];
		live_slot(&j->live_staged, d->seg, true)->bytes += d->bytes;
	}
	j->live_delta.count = 0;
}

static void live_key(struct stor_key *k, uint32_t seg)
{
	stor_key_init(k, STOR_KEY_LIVE);
	stor_key_u32(k, seg);
}

/* Applies the notes of the staged batches once they are written. */
void live_commit(struct stor_db *db)
{
	struct stor_journal *j = db->jnl;
	for (size_t i = 0; i < j->live_staged.count; i++) {
		const struct jnl_live *d = &j->live_staged.items[i];
		struct jnl_live *l = live_slot(&j->live, d->seg, true);
		uint64_t next = l->bytes + d->bytes;
		/* Wrapped past zero: only a bug or a damaged store explains it;
		 * the segment then looks dead, so say so loudly. */
		if ((int64_t)d->bytes < 0 && next > l->bytes) {
			log_errorx("%s: journal segment %u: live bytes below zero", db->dir, d->seg);
			next = 0;
		}
		l->bytes = next;
	}
	j->live_staged.count = 0;
}

/* Live bytes are stored only at checkpoints (a write per change would cost
 * every append a LevelDB insert): exact after a clean close, rebuilt from
 * the texts after any other stop (live_rebuild). */
int live_load(struct stor_db *db, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	struct stor_key prefix;
	const unsigned char *key;
	size_t klen;
	stor_key_init(&prefix, STOR_KEY_LIVE);
	j->live.count = 0;
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	int ret = 0;
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		size_t vlen;
		const unsigned char *v = (const unsigned char *)leveldb_iter_value(it, &vlen);
		if (klen != 5 || vlen != 8) {
			ret = stor_err_corrupt(db, error_r, "journal live bytes");
			break;
		}
		struct jnl_live l = { stor_be32(key + 1), stor_be64(v) };
		ARRAY_PUSH(&j->live, l);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	return ret;
}

/* Puts every segment's live bytes into a checkpoint's batch, deleting the
 * stored ones of segments that have none now. */
static int live_to_checkpoint(struct stor_db *db, struct stor_batch *wb, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	struct stor_key prefix, k;
	const unsigned char *key;
	size_t klen;
	stor_key_init(&prefix, STOR_KEY_LIVE);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		if (klen == 5 && live_bytes(j, stor_be32(key + 1)) == 0)
			stor_batch_del_raw(wb, key, klen);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, error_r) < 0)
		return -1;
	struct buf v = BUF_INIT;
	for (size_t i = 0; i < j->live.count; i++) {
		if (j->live.items[i].bytes == 0)
			continue;
		buf_reset(&v);
		stor_put_u64(&v, j->live.items[i].bytes);
		live_key(&k, j->live.items[i].seg);
		stor_batch_put(wb, &k, v.data, v.len);
	}
	buf_free(&v);
	return 0;
}

/* ---- Segments ---- */

static void rfd_forget(struct stor_journal *j, uint32_t seg)
{
	stor_jnl_maps_forget(j, seg);
	for (unsigned i = 0; i < JNL_READ_FDS; i++) {
		if (j->rfd[i].fd >= 0 && j->rfd[i].seg == seg) {
			close(j->rfd[i].fd);
			j->rfd[i].fd = -1;
		}
	}
}

int seg_read_fd(struct stor_db *db, uint32_t seg, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	if (seg == j->seg)
		return j->fd;
	for (unsigned i = 0; i < JNL_READ_FDS; i++) {
		if (j->rfd[i].fd >= 0 && j->rfd[i].seg == seg)
			return j->rfd[i].fd;
	}
	char *path = seg_path(j, seg);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		stor_err(db, error_r, "%s: store is corrupted: cannot open journal segment: %s",
			 path, strerror(errno));
		free(path);
		return -1;
	}
	free(path);
	struct jnl_read_fd *slot = &j->rfd[j->rfd_next++ % JNL_READ_FDS];
	if (slot->fd >= 0)
		close(slot->fd);
	slot->seg = seg;
	slot->fd = fd;
	return fd;
}

/* The segment numbers present, sorted. */
int list_segments(struct stor_db *db, seg_array *segs, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	DIR *d = opendir(j->dir);
	if (d == NULL)
		return jnl_err_errno(db, error_r, "opendir", j->dir);
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		char *end;
		if (strlen(de->d_name) != 14 || strcmp(de->d_name + 10, ".jnl") != 0)
			continue;
		unsigned long n = strtoul(de->d_name, &end, 10);
		if (end != de->d_name + 10 || n == 0 || n > UINT32_MAX)
			continue;
		ARRAY_PUSH(segs, (uint32_t)n);
	}
	closedir(d);
	/* Few files: insertion sort. */
	for (size_t i = 1; i < segs->count; i++) {
		uint32_t v = segs->items[i];
		size_t k = i;
		for (; k > 0 && segs->items[k - 1] > v; k--)
			segs->items[k] = segs->items[k - 1];
		segs->items[k] = v;
	}
	return 0;
}

int open_write_segment(struct stor_db *db, uint32_t seg, bool create,
		       const char **error_r)
{
	struct stor_journal *j = db->jnl;
	char *path = seg_path(j, seg);
	int fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0), 0600);
	if (fd < 0) {
		jnl_err_errno(db, error_r, "open", path);
		free(path);
		return -1;
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		jnl_err_errno(db, error_r, "fstat", path);
		close(fd);
		free(path);
		return -1;
	}
	int sync_fd[STOR_SYNC_THREADS];
	for (unsigned i = 0; i < STOR_SYNC_THREADS; i++) {
		sync_fd[i] = open(path, O_RDONLY | O_CLOEXEC);
		if (sync_fd[i] < 0) {
			jnl_err_errno(db, error_r, "open", path);
			while (i > 0)
				close(sync_fd[--i]);
			close(fd);
			free(path);
			return -1;
		}
	}
	free(path);
	if (create && fsync(j->dir_fd) < 0) {
		close(fd);
		for (unsigned i = 0; i < STOR_SYNC_THREADS; i++)
			close(sync_fd[i]);
		return jnl_err_errno(db, error_r, "fsync", j->dir);
	}
	if (j->fd >= 0)
		close(j->fd);
	for (unsigned i = 0; i < STOR_SYNC_THREADS; i++) {
		if (j->sync_fd[i] >= 0)
			close(j->sync_fd[i]);
		j->sync_fd[i] = sync_fd[i];
	}
	rfd_forget(j, seg);
	j->fd = fd;
	j->seg = seg;
	j->end = (uint64_t)st.st_size;
	j->unsynced = false;
	return 0;
}

int flush_pending(struct stor_db *db, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	if (j->pending.len == 0)
		return 0;
	const unsigned char *p = j->pending.data;
	size_t left = j->pending.len;
	uint64_t off = j->end;
	while (left > 0) {
		ssize_t n = pwrite(j->fd, p, left, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int err = n < 0 ? errno : ENOSPC;
			/* Cut the partial record off, or later records would sit
			 * behind a torn one and be dropped at the next open. */
			if (ftruncate(j->fd, (off_t)j->end) < 0)
				j->broken = true;
			buf_reset(&j->pending);
			errno = err;
			char *path = seg_path(j, j->seg);
			jnl_err_errno(db, error_r, "write", path);
			free(path);
			return -1;
		}
		p += n;
		left -= (size_t)n;
		off += (uint64_t)n;
	}
	j->end = off;
	j->unsynced = true;
	buf_reset(&j->pending);
	return 0;
}

/* After a failed fdatasync the kernel may have dropped the dirty pages:
 * nothing written since the last good one can be trusted to be on disk. */
int sync_failed(struct stor_db *db, int err, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	j->broken = true;
	char *path = seg_path(j, j->seg);
	errno = err;
	jnl_err_errno(db, error_r, "fdatasync", path);
	free(path);
	return -1;
}

int sync_segment(struct stor_db *db, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	/* The syncs in flight end first (they complete in order), and a
	 * segment never switches under a thread. */
	if (async_wait(db, error_r) < 0 || flush_pending(db, error_r) < 0)
		return -1;
	if (!j->unsynced)
		return 0;
	if (fdatasync(j->fd) < 0)
		return sync_failed(db, errno, error_r);
	j->unsynced = false;
	return 0;
}

int check_usable(struct stor_db *db, const char **error_r)
{
	if (!db->jnl->broken)
		return 0;
	return stor_err_kind(db, STOR_ERROR_BROKEN, error_r,
			     "%s: a write to the store failed earlier; "
			     "restart the node to recover the store", db->dir);
}

/* Deletes segments before the checkpoint that hold no live text. */
static void delete_dead_segments(struct stor_db *db)
{
	struct stor_journal *j = db->jnl;
	seg_array segs = ARRAY_INIT;
	const char *error;
	if (list_segments(db, &segs, &error) < 0) {
		log_warnx("%s", error);
		return;
	}
	/* A text being written is not live yet, but its chunks are needed. */
	uint32_t below = j->ckpt_seg;
	for (size_t i = 0; i < j->pins.count; i++) {
		if (j->pins.items[i] < below)
			below = j->pins.items[i];
	}
	bool deleted = false;
	for (size_t i = 0; i < segs.count; i++) {
		uint32_t s = segs.items[i];
		/* Staged batches may still make a text there live. */
		if (s >= below || live_bytes(j, s) != 0 || live_slot(&j->live_staged, s, false) != NULL)
			continue;
		rfd_forget(j, s);
		if (s == j->compact_seg)
			j->compact_seg = 0;
		char *path = seg_path(j, s);
		if (unlink(path) < 0)
			log_warnx("%s: cannot delete journal segment: %s", path, strerror(errno));
		else
			deleted = true;
		free(path);
	}
	ARRAY_FREE(&segs);
	if (deleted)
		(void)fsync(j->dir_fd);
}

/* Makes LevelDB's state durable as of the journal's current end, so that
 * opening replays only what comes after. */
int stor_jnl_checkpoint(struct stor_db *db, bool closing, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	if (check_usable(db, error_r) < 0 || stor_stage_flush(db, error_r) < 0 ||
	    sync_segment(db, error_r) < 0)
		return -1;
	struct buf v = BUF_INIT;
	stor_put_u32(&v, j->seg);
	stor_put_u64(&v, j->end);
	struct stor_key k;
	struct stor_batch *wb = stor_batch_new();
	int ret = live_to_checkpoint(db, wb, error_r);
	internal_key(&k, ckpt_name);
	stor_batch_put(wb, &k, v.data, v.len);
	buf_free(&v);
	/* Cleared only by a clean close: its absence tells the next open that
	 * the live bytes stored here are exact. */
	internal_key(&k, running_name);
	if (closing)
		stor_batch_del(wb, &k);
	else
		stor_batch_put(wb, &k, "", 0);
	if (ret == 0)
		ret = stor_db_write_synced(db, wb, error_r);
	stor_batch_free(wb);
	if (ret < 0)
		return -1;
	j->ckpt_seg = j->seg;
	j->ckpt_off = j->end;
	delete_dead_segments(db);
	j->compact_check = true;
	return 0;
}

static int rotate(struct stor_db *db, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	if (sync_segment(db, error_r) < 0)
		return -1;
	if (j->seg == UINT32_MAX)
		return stor_err(db, error_r, "%s: journal segment numbers exhausted", j->dir);
	if (open_write_segment(db, j->seg + 1, true, error_r) < 0)
		return -1;
	return stor_jnl_checkpoint(db, false, error_r);
}

/* Starts a new segment first when a record of len bytes would overflow
 * this one (a record bigger than a segment gets a segment of its own). */
int reserve(struct stor_db *db, size_t len, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	uint64_t used = j->end + j->pending.len;
	if (used == 0 || used + JNL_HDR + len <= j->segment_max)
		return 0;
	return rotate(db, error_r);
}
