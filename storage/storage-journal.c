/* The journal: the store's write-ahead log and the home of message texts.
 *
 * Why: a synced LevelDB write costs an fsync of LevelDB's log, and mail
 * texts written into LevelDB are copied again and again by its compactions
 * (and checksummed each time).  So texts live here instead, in append-only
 * segment files under <store>/journal, and LevelDB keeps only where they
 * are.  Every LevelDB batch is first written here as a record, then applied
 * to LevelDB without sync; stor_sync() is one fdatasync of the current
 * segment, which makes both the texts and the index changes of a whole
 * group commit durable.  The batches of one group commit reach this file
 * as one record (storage-stage.c gathers them).
 *
 * Records: crc u32 | length u32 | type u8 | payload, the CRC (CRC-32C,
 * lib/crc32c.h) covering length, type and payload.  'T' is a text chunk (message GUID,
 * chunk number, bytes), 'B' a LevelDB batch (ops: u8 put/del, u32 key
 * length, key, and for puts u32 value length, value).
 *
 * Checkpoints: now and then (a new segment, an open that replayed) LevelDB
 * itself is synced and the journal position it then holds is stored in it
 * ('I' "journal").  Opening replays the batches after the checkpoint (they
 * may or may not have reached LevelDB; re-applying whole batches in order
 * ends in the same state), and cuts a torn record off the last segment: it
 * was never acknowledged.
 *
 * Space: the journal counts the live text bytes of each segment in memory,
 * stores them at checkpoints ('V' keys) and, when the last run did not
 * close cleanly, rebuilds them from the texts at open.  A segment wholly
 * before the checkpoint with no live bytes is deleted; one that is mostly
 * dead has its live texts moved to the current segment (stor_jnl_compact).
 *
 * Power failure: LevelDB's unsynced writes may survive where the journal's
 * did not.  A text found beyond the journal's end by that rebuild makes
 * opening expunge the messages whose appends never completed
 * (repair_ahead).
 *
 * Syncing off the event loop: a helper thread runs the fdatasync of a
 * group commit (stor_jnl_sync_start), signalling an eventfd when done.
 *
 * Sections below: live bytes, segments, batches and writing, reading, the
 * sync thread, compaction, repair, open and replay. */
#include "storage/storage-private.h"

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

#define JNL_HDR 9
#define JNL_TEXT_HDR (GUID_SIZE + 4)
#define JNL_REC_TEXT 'T'
#define JNL_REC_BATCH 'B'
#define JNL_OP_PUT 1
#define JNL_OP_DEL 2
/* Records may be big (a batch deleting a mailbox of a million messages),
 * but never bigger than this, and never bigger than what is left of the
 * file they are read from. */
/* Pending records are written when this much has gathered. */
#define JNL_FLUSH_AT (1024 * 1024)
#define JNL_READ_FDS 16

struct jnl_live {
	uint32_t seg;
	uint64_t bytes;
};

typedef ARRAY(struct jnl_live) jnl_live_array;
typedef ARRAY(uint32_t) seg_array;
typedef ARRAY(struct guid) guid_array;

struct jnl_read_fd {
	uint32_t seg;
	int fd;
};

/* Helper threads that run fdatasync() off the event loop, several syncs
 * in flight: a group commit that comes while one runs starts its own at
 * once instead of waiting for it to end (disks serve concurrent
 * fdatasyncs together: on the VM where this was measured, four in flight
 * made 1.7 times the syncs of one at a time).  Each thread syncs through its own
 * descriptor of the segment, opened before anything was written to it:
 * the kernel reports a writeback error once per open file, so one sync
 * cannot swallow an error the other must see.  Syncs are collected in the
 * order they started; a failed one breaks the journal, so no later one
 * counts as durable either.  Fields under mu are shared with the threads. */
struct jnl_syncer;
struct jnl_sync_slot {
	struct jnl_syncer *sy;
	pthread_t thread;
	int fd;                     /* to sync */
	bool requested, done;
	int result;                 /* errno of the finished sync, 0 ok */
};

struct jnl_syncer {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int event_fd;               /* readable when a sync finished */
	bool quit;
	struct jnl_sync_slot slot[STOR_SYNC_THREADS];
	unsigned threads;           /* started */
	/* Main thread only: syncs collected..next-1 are in flight, sync n
	 * in slot n % STOR_SYNC_THREADS. */
	uint64_t next, collected;
};

struct stor_journal {
	char *dir;
	int dir_fd;
	uint32_t seg;               /* the segment being written */
	int fd;
	int sync_fd[STOR_SYNC_THREADS];   /* the same segment, one per sync thread */
	uint64_t end;               /* bytes of it written */
	bool unsynced;              /* written since the last fdatasync */
	bool broken;                /* a failed write left an unknown state */
	struct buf pending;         /* records not yet written */
	uint64_t segment_max;
	uint32_t ckpt_seg;
	uint64_t ckpt_off;
	jnl_live_array live;        /* by segment, only non-zero */
	jnl_live_array live_delta;  /* of the batch being built */
	jnl_live_array live_staged; /* of the staged batches (storage-stage.c) */
	struct jnl_read_fd rfd[JNL_READ_FDS];
	unsigned rfd_next;
	seg_array pins;             /* first segments of texts not yet stored */
	uint32_t compact_seg;       /* being compacted, 0 none */
	uint64_t compact_off, compact_size;
	bool compact_check;         /* look for a segment to compact */
	guid_array lost;            /* texts LevelDB holds that the journal lost */
	struct jnl_syncer *syncer;  /* started by the first stor_jnl_sync_start */
};

static const char ckpt_name[] = "journal";
static const char format_name[] = "format";
static const char running_name[] = "running";
#define STORE_FORMAT 2

static void internal_key(struct stor_key *k, const char *name)
{
	stor_key_init(k, STOR_KEY_INTERNAL);
	stor_key_bytes(k, name, strlen(name));
}

/* ---- Small helpers ---- */

static void put_le32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v;
	p[1] = (unsigned char)(v >> 8);
	p[2] = (unsigned char)(v >> 16);
	p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint32_t rec_crc(const unsigned char *hdr_tail, const void *payload, size_t len)
{
	return crc32c(crc32c(0, hdr_tail, 5), payload, len);
}

static char *seg_path(const struct stor_journal *j, uint32_t seg)
{
	return xasprintf("%s/%010u.jnl", j->dir, seg);
}

static int jnl_err_errno(struct stor_db *db, const char **error_r, const char *what,
			 const char *path)
{
	enum stor_error kind = errno == ENOSPC || errno == EDQUOT ? STOR_ERROR_NOSPACE :
								    STOR_ERROR_INTERNAL;
	return stor_err_kind(db, kind, error_r, "%s: %s failed: %s", path, what, strerror(errno));
}

static int pread_all(int fd, void *data, size_t len, uint64_t off)
{
	unsigned char *p = data;
	while (len > 0) {
		ssize_t n = pread(fd, p, len, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0) {
			errno = 0;
			return -1;
		}
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

/* Appends a record whose payload is payload then payload2 (len2 may be
 * 0) to the pending writes. */
static void pending_record(struct stor_journal *j, char type, const void *payload, size_t len,
			   const void *payload2, size_t len2)
{
	unsigned char hdr[JNL_HDR];
	put_le32(hdr + 4, (uint32_t)(len + len2));
	hdr[8] = (unsigned char)type;
	uint32_t c = crc32c(crc32c(0, hdr + 4, 5), payload, len);
	if (len2 > 0)
		c = crc32c(c, payload2, len2);
	put_le32(hdr, c);
	buf_append(&j->pending, hdr, sizeof(hdr));
	buf_append(&j->pending, payload, len);
	if (len2 > 0)
		buf_append(&j->pending, payload2, len2);
}

/* ---- Live bytes per segment ---- */

static struct jnl_live *live_slot(jnl_live_array *a, uint32_t seg, bool create)
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

static uint64_t live_bytes(struct stor_journal *j, uint32_t seg)
{
	struct jnl_live *l = live_slot(&j->live, seg, false);
	return l != NULL ? l->bytes : 0;
}

/* The bytes a text record of len text bytes takes in its segment. */
static uint64_t text_record_size(uint32_t len)
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
static void live_commit(struct stor_db *db)
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
static int live_load(struct stor_db *db, const char **error_r)
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
	for (unsigned i = 0; i < JNL_READ_FDS; i++) {
		if (j->rfd[i].fd >= 0 && j->rfd[i].seg == seg) {
			close(j->rfd[i].fd);
			j->rfd[i].fd = -1;
		}
	}
}

static int seg_read_fd(struct stor_db *db, uint32_t seg, const char **error_r)
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
static int list_segments(struct stor_db *db, seg_array *segs, const char **error_r)
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

static int open_write_segment(struct stor_db *db, uint32_t seg, bool create,
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

static int flush_pending(struct stor_db *db, const char **error_r)
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
static int sync_failed(struct stor_db *db, int err, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	j->broken = true;
	char *path = seg_path(j, j->seg);
	errno = err;
	jnl_err_errno(db, error_r, "fdatasync", path);
	free(path);
	return -1;
}

static int async_wait(struct stor_db *db, const char **error_r);

static int sync_segment(struct stor_db *db, const char **error_r)
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

static int check_usable(struct stor_db *db, const char **error_r)
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
static int reserve(struct stor_db *db, size_t len, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	uint64_t used = j->end + j->pending.len;
	if (used == 0 || used + JNL_HDR + len <= j->segment_max)
		return 0;
	return rotate(db, error_r);
}

/* ---- Writing ---- */

int stor_jnl_add_text(struct stor_db *db, const struct guid *guid, uint32_t idx,
		      const void *data, size_t len, struct stor_extent *ext_r,
		      const char **error_r)
{
	struct stor_journal *j = db->jnl;
	if (check_usable(db, error_r) < 0)
		return -1;
	if (len > STOR_TEXT_CHUNK)
		return stor_err(db, error_r, "text chunk too big");
	if (reserve(db, JNL_TEXT_HDR + len, error_r) < 0)
		return -1;
	unsigned char th[JNL_TEXT_HDR];
	memcpy(th, guid->b, GUID_SIZE);
	put_le32(th + GUID_SIZE, idx);
	ext_r->seg = j->seg;
	ext_r->off = j->end + j->pending.len;
	ext_r->len = (uint32_t)len;
	if (idx == 0)
		ARRAY_PUSH(&j->pins, j->seg);
	pending_record(j, JNL_REC_TEXT, th, sizeof(th), data, len);
	if (j->pending.len >= JNL_FLUSH_AT)
		return flush_pending(db, error_r);
	return 0;
}

void stor_jnl_unpin(struct stor_db *db, const struct stor_extent *first)
{
	struct stor_journal *j = db->jnl;
	for (size_t i = 0; i < j->pins.count; i++) {
		if (j->pins.items[i] == first->seg) {
			j->pins.items[i] = j->pins.items[--j->pins.count];
			return;
		}
	}
}

/* ---- Batches ---- */

struct stor_batch *stor_batch_new(void)
{
	struct stor_batch *b = xcalloc(1, sizeof(*b));
	/* Most batches (a message's keys) fit without growing. */
	buf_reserve(&b->ser, 1024);
	return b;
}

void stor_batch_free(struct stor_batch *b)
{
	if (b == NULL)
		return;
	buf_free(&b->ser);
	free(b);
}

void stor_batch_put_raw(struct stor_batch *b, const void *k, size_t klen, const void *v,
			size_t vlen)
{
	unsigned char *p = buf_reserve(&b->ser, 9 + klen + vlen);
	p[0] = JNL_OP_PUT;
	put_le32(p + 1, (uint32_t)klen);
	memcpy(p + 5, k, klen);
	put_le32(p + 5 + klen, (uint32_t)vlen);
	if (vlen > 0)
		memcpy(p + 9 + klen, v, vlen);
	buf_commit(&b->ser, 9 + klen + vlen);
}

void (*stor_test_deleted)(const void *key, size_t klen);

void stor_batch_del_raw(struct stor_batch *b, const void *k, size_t klen)
{
	if (stor_test_deleted != NULL)
		stor_test_deleted(k, klen);
	unsigned char *p = buf_reserve(&b->ser, 5 + klen);
	p[0] = JNL_OP_DEL;
	put_le32(p + 1, (uint32_t)klen);
	memcpy(p + 5, k, klen);
	buf_commit(&b->ser, 5 + klen);
}

void stor_batch_put(struct stor_batch *b, const struct stor_key *k, const void *v, size_t vlen)
{
	stor_batch_put_raw(b, k->b, k->len, v, vlen);
}

void stor_batch_del(struct stor_batch *b, const struct stor_key *k)
{
	stor_batch_del_raw(b, k->b, k->len);
}

/* The operations of our own batches, which are well formed. */
uint32_t stor_batch_op_klen(const unsigned char *op)
{
	return get_le32(op + 1);
}

size_t stor_batch_op_size(const unsigned char *op)
{
	size_t klen = get_le32(op + 1);
	return op[0] == JNL_OP_DEL ? 5 + klen : 9 + klen + get_le32(op + 5 + klen);
}

bool stor_batch_op_value(const unsigned char *op, const void **val_r, size_t *len_r)
{
	if (op[0] == JNL_OP_DEL)
		return false;
	size_t klen = get_le32(op + 1);
	*len_r = get_le32(op + 5 + klen);
	*val_r = op + 9 + klen;
	return true;
}

/* LevelDB's batch of serialized operations (from a batch, or a journal
 * record); NULL when they do not decode. */
static leveldb_writebatch_t *ldb_batch(const unsigned char *p, size_t len)
{
	leveldb_writebatch_t *wb = leveldb_writebatch_create();
	size_t pos = 0;
	while (pos < len) {
		if (len - pos < 5 || (p[pos] != JNL_OP_PUT && p[pos] != JNL_OP_DEL))
			break;
		uint8_t op = p[pos];
		uint32_t klen = get_le32(p + pos + 1);
		pos += 5;
		if (klen > len - pos)
			break;
		const char *key = (const char *)p + pos;
		pos += klen;
		if (op == JNL_OP_DEL) {
			leveldb_writebatch_delete(wb, key, klen);
			continue;
		}
		if (len - pos < 4)
			break;
		uint32_t vlen = get_le32(p + pos);
		pos += 4;
		if (vlen > len - pos)
			break;
		leveldb_writebatch_put(wb, key, klen, (const char *)p + pos, vlen);
		pos += vlen;
	}
	if (pos != len) {
		leveldb_writebatch_destroy(wb);
		return NULL;
	}
	return wb;
}

leveldb_writebatch_t *stor_batch_ldb(const struct stor_batch *b)
{
	leveldb_writebatch_t *wb = ldb_batch((const unsigned char *)b->ser.data, b->ser.len);
	if (wb == NULL)
		abort(); /* built by stor_batch_put/del: only a bug gets here */
	return wb;
}

int stor_jnl_usable(struct stor_db *db, const char **error_r)
{
	return check_usable(db, error_r);
}

int stor_jnl_write_staged(struct stor_db *db, struct stor_batch *wb, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	if (check_usable(db, error_r) < 0)
		return -1;
	const struct buf *ser = &wb->ser;
	int ret = reserve(db, ser->len, error_r);
	if (ret == 0) {
		pending_record(j, JNL_REC_BATCH, ser->data, ser->len, NULL, 0);
		ret = flush_pending(db, error_r);
	}
	if (ret == 0) {
		char *lerr = NULL;
		leveldb_writebatch_t *lwb = stor_batch_ldb(wb);
		leveldb_write(db->ldb, db->wopts, lwb, &lerr);
		leveldb_writebatch_destroy(lwb);
		if (lerr != NULL)
			ret = stor_err_leveldb(db, error_r, "write", lerr);
	}
	if (ret < 0) {
		/* Changes reads have seen are lost, or the journal holds a
		 * change LevelDB refused: only reopening (and replaying) makes
		 * the store and its readers agree again. */
		j->broken = true;
		j->live_staged.count = 0;
		return -1;
	}
	live_commit(db);
	return 0;
}

int stor_jnl_sync(struct stor_db *db, const char **error_r)
{
	if (check_usable(db, error_r) < 0 || stor_stage_flush(db, error_r) < 0)
		return -1;
	return sync_segment(db, error_r);
}

/* ---- Reading ---- */

/* pread_all for a vector: the record's header and its text land in
 * different buffers. */
static int preadv_all(int fd, struct iovec *iov, int cnt, uint64_t off)
{
	while (cnt > 0) {
		ssize_t n = preadv(fd, iov, cnt, (off_t)off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0) {
			errno = 0;
			return -1;
		}
		off += (uint64_t)n;
		while (cnt > 0 && (size_t)n >= iov->iov_len) {
			n -= (ssize_t)iov->iov_len;
			iov++;
			cnt--;
		}
		if (cnt > 0) {
			iov->iov_base = (unsigned char *)iov->iov_base + n;
			iov->iov_len -= (size_t)n;
		}
	}
	return 0;
}

int stor_jnl_read(struct stor_db *db, const struct guid *guid, uint32_t idx,
		  const struct stor_extent *ext, uint64_t from, uint64_t len, struct buf *out,
		  const char **error_r)
{
	struct stor_journal *j = db->jnl;
	char hex[GUID_HEX_SIZE];
	if (ext->seg == j->seg && ext->off + text_record_size(ext->len) > j->end &&
	    flush_pending(db, error_r) < 0)
		return -1;
	int fd = seg_read_fd(db, ext->seg, error_r);
	if (fd < 0)
		return -1;
	/* The chunk's bytes go straight to the end of out (a FETCH reads into
	 * the connection's output buffer): no copy of the text in between.
	 * The whole chunk is read, as its CRC covers it all; a partial read
	 * then keeps only its range.  Nothing is committed to out unless the
	 * record checks out. */
	unsigned char hdr[JNL_HDR + JNL_TEXT_HDR];
	unsigned char *dst = buf_reserve(out, ext->len);
	struct iovec iov[2] = {
		{ .iov_base = hdr, .iov_len = sizeof(hdr) },
		{ .iov_base = dst, .iov_len = ext->len },
	};
	int ret = 0;
	if (preadv_all(fd, iov, ext->len > 0 ? 2 : 1, ext->off) < 0) {
		ret = -1;
	} else {
		uint32_t crc = get_le32(hdr);
		uint32_t plen = get_le32(hdr + 4);
		if (plen != JNL_TEXT_HDR + ext->len || hdr[8] != JNL_REC_TEXT ||
		    crc32c(crc32c(crc32c(0, hdr + 4, 5), hdr + JNL_HDR, JNL_TEXT_HDR), dst,
			   ext->len) != crc ||
		    memcmp(hdr + JNL_HDR, guid->b, GUID_SIZE) != 0 ||
		    get_le32(hdr + JNL_HDR + GUID_SIZE) != idx)
			ret = -1;
	}
	if (ret < 0) {
		guid_to_hex(guid, hex);
		stor_err(db, error_r, "%s: store is corrupted: text %s chunk %u in journal "
			 "segment %u at %llu is damaged or missing", db->dir, hex, idx, ext->seg,
			 (unsigned long long)ext->off);
	} else if (from < ext->len) {
		uint64_t n = ext->len - from < len ? ext->len - from : len;
		if (from > 0)
			memmove(dst, dst + from, (size_t)n);
		buf_commit(out, (size_t)n);
	}
	return ret;
}

/* ---- Syncing off the event loop ---- */

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
		pthread_mutex_unlock(&sy->mu);
		int r = fdatasync(fd);
		int err = r < 0 ? errno : 0;
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

static void syncer_stop(struct stor_journal *j)
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
	/* Collected now or earlier (a segment switch waits for every sync):
	 * a failure of this one or of any before it broke the journal. */
	return check_usable(db, ret < 0 ? NULL : error_r) < 0 ? -1 : 1;
}

/* Waits for every sync in flight: 0, or -1 when one failed. */
static int async_wait(struct stor_db *db, const char **error_r)
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

/* ---- Status ---- */

void stor_status(struct stor_db *db, struct buf *out)
{
	struct stor_journal *j = db->jnl;
	seg_array segs = ARRAY_INIT;
	const char *error;
	uint64_t bytes = 0, live = 0;
	if (list_segments(db, &segs, &error) < 0)
		ARRAY_FREE(&segs);
	for (size_t i = 0; i < segs.count; i++) {
		char *path = seg_path(j, segs.items[i]);
		struct stat st;
		if (stat(path, &st) == 0)
			bytes += (uint64_t)st.st_size;
		free(path);
	}
	for (size_t i = 0; i < j->live.count; i++)
		live += j->live.items[i].bytes;
	buf_appendf(out, "store.journal_segments: %zu\n", segs.count);
	buf_appendf(out, "store.journal_bytes: %llu\n", (unsigned long long)bytes);
	buf_appendf(out, "store.text_bytes_live: %llu\n", (unsigned long long)live);
	buf_appendf(out, "store.compacting: %s\n", j->compact_seg != 0 ? "yes" : "no");
	ARRAY_FREE(&segs);
}

/* ---- Compaction ---- */

static bool extent_eq(const struct stor_extent *a, uint32_t seg, uint64_t off)
{
	return a->seg == seg && a->off == off;
}

/* Rewrites one text into the current segment and points its record there. */
static int move_text(struct stor_db *db, const struct guid *guid, const struct stor_text_rec *rec,
		     const stor_extent_list *old, const char **error_r)
{
	struct buf text = BUF_INIT;
	stor_extent_list moved = ARRAY_INIT;
	int ret = 0;
	for (size_t i = 0; i < old->count && ret == 0; i++) {
		buf_reset(&text);
		ret = stor_jnl_read(db, guid, (uint32_t)i, &old->items[i], 0, old->items[i].len,
				    &text, error_r);
		struct stor_extent e;
		if (ret == 0)
			ret = stor_jnl_add_text(db, guid, (uint32_t)i, text.data, text.len, &e,
						error_r);
		if (ret == 0)
			ARRAY_PUSH(&moved, e);
	}
	buf_free(&text);
	if (ret == 0) {
		struct stor_batch *wb = stor_batch_new();
		struct stor_key k;
		struct buf v = BUF_INIT;
		stor_text_rec_encode(rec, moved.items, moved.count, &v);
		stor_key_init(&k, STOR_KEY_TEXT);
		stor_key_guid(&k, guid);
		stor_batch_put(wb, &k, v.data, v.len);
		buf_free(&v);
		stor_jnl_live(db, old->items, old->count, -1);
		stor_jnl_live(db, moved.items, moved.count, 1);
		ret = stor_db_write(db, wb, error_r);
		stor_batch_free(wb);
	}
	if (moved.count > 0)
		stor_jnl_unpin(db, &moved.items[0]);
	ARRAY_FREE(&moved);
	return ret;
}

/* Picks a segment worth compacting: not the current one, more than half
 * of it dead. */
static void compact_pick(struct stor_db *db)
{
	struct stor_journal *j = db->jnl;
	seg_array segs = ARRAY_INIT;
	const char *error;
	j->compact_check = false;
	if (list_segments(db, &segs, &error) < 0) {
		log_warnx("%s", error);
		return;
	}
	for (size_t i = 0; i < segs.count && j->compact_seg == 0; i++) {
		uint32_t s = segs.items[i];
		uint64_t live = live_bytes(j, s);
		if (s >= j->seg || live == 0)
			continue;
		char *path = seg_path(j, s);
		struct stat st;
		if (stat(path, &st) == 0 && live < (uint64_t)st.st_size / 2) {
			j->compact_seg = s;
			j->compact_off = 0;
			j->compact_size = (uint64_t)st.st_size;
		}
		free(path);
	}
	ARRAY_FREE(&segs);
}

bool stor_jnl_compact_due(struct stor_db *db)
{
	return db->jnl->compact_seg != 0 || db->jnl->compact_check;
}

int stor_jnl_compact(struct stor_db *db, uint64_t budget, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	if (j->compact_seg == 0 && j->compact_check)
		compact_pick(db);
	if (j->compact_seg == 0)
		return 0;
	uint32_t s = j->compact_seg;
	int fd = seg_read_fd(db, s, error_r);
	if (fd < 0) {
		j->compact_seg = 0;
		return -1;
	}
	uint64_t done = 0;
	int ret = 0;
	while (ret == 0 && done < budget && j->compact_off + JNL_HDR <= j->compact_size) {
		unsigned char h[JNL_HDR + JNL_TEXT_HDR];
		uint64_t off = j->compact_off;
		size_t want = j->compact_size - off < sizeof(h) ? (size_t)(j->compact_size - off) :
			sizeof(h);
		uint32_t plen = 0;
		if (pread_all(fd, h, want, off) < 0 ||
		    (plen = get_le32(h + 4)) > j->compact_size - off - JNL_HDR) {
			/* A segment never ends in a torn record: give this one up
			 * rather than try it again at every sync. */
			log_warnx("journal segment %u: unreadable record at %llu; not compacting it",
				  s, (unsigned long long)off);
			j->compact_seg = 0;
			return 0;
		}
		j->compact_off = off + JNL_HDR + plen;
		if (h[8] != JNL_REC_TEXT || plen < JNL_TEXT_HDR || want < sizeof(h))
			continue;
		struct guid guid;
		memcpy(guid.b, h + JNL_HDR, GUID_SIZE);
		uint32_t idx = get_le32(h + JNL_HDR + GUID_SIZE);
		stor_extent_list ext = ARRAY_INIT;
		struct stor_text_rec rec;
		int r = stor_text_get(db, &guid, &rec, &ext, error_r);
		if (r < 0)
			ret = -1;
		else if (r > 0 && idx < ext.count && extent_eq(&ext.items[idx], s, off)) {
			for (size_t i = 0; i < ext.count; i++)
				done += ext.items[i].len;
			ret = move_text(db, &guid, &rec, &ext, error_r);
		}
		ARRAY_FREE(&ext);
	}
	if (ret == 0 && j->compact_off + JNL_HDR > j->compact_size) {
		/* Its texts now live elsewhere: the next checkpoint deletes it. */
		j->compact_seg = 0;
		j->compact_check = true;
	}
	return ret;
}

/* ---- Repair after a power failure ---- */

/* Whether a chunk's record lies beyond what the journal holds. */
static bool extent_lost(const struct stor_journal *j, const struct stor_extent *e)
{
	return e->seg > j->seg || (e->seg == j->seg && e->off + text_record_size(e->len) > j->end);
}

static bool guid_in(const guid_array *a, const struct guid *g)
{
	for (size_t i = 0; i < a->count; i++) {
		if (guid_cmp(&a->items[i], g) == 0)
			return true;
	}
	return false;
}

/* One pass over the texts: adds up their records per segment into sums
 * (unless NULL) and collects into lost the texts with a chunk beyond the
 * journal's end. */
static int scan_texts(struct stor_db *db, jnl_live_array *sums, guid_array *lost,
		      const char **error_r)
{
	struct stor_key prefix;
	const unsigned char *key;
	size_t klen;
	stor_key_init(&prefix, STOR_KEY_TEXT);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	int ret = 0;
	while (ret == 0 && stor_iter_in(it, &prefix, &key, &klen)) {
		struct stor_text_rec rec;
		stor_extent_list ext = ARRAY_INIT;
		size_t vlen;
		const char *v = leveldb_iter_value(it, &vlen);
		if (klen != 1 + GUID_SIZE || stor_text_rec_decode(v, vlen, &rec, &ext) < 0)
			ret = stor_err_corrupt(db, error_r, "text");
		bool is_lost = false;
		for (size_t i = 0; ret == 0 && i < ext.count; i++) {
			if (sums != NULL)
				live_slot(sums, ext.items[i].seg, true)->bytes +=
					text_record_size(ext.items[i].len);
			is_lost = is_lost || extent_lost(db->jnl, &ext.items[i]);
		}
		if (is_lost) {
			struct guid g;
			memcpy(g.b, key + 1, GUID_SIZE);
			ARRAY_PUSH(lost, g);
		}
		ARRAY_FREE(&ext);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	return ret;
}

struct lost_msg {
	struct guid mailbox;
	uint32_t uid;
};
typedef ARRAY(struct lost_msg) lost_msg_array;

static int find_lost_messages(struct stor_db *db, const guid_array *lost,
			      lost_msg_array *msgs, const char **error_r)
{
	struct stor_key prefix;
	const unsigned char *key;
	size_t klen;
	stor_key_init(&prefix, STOR_KEY_GUID);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	int ret = 0;
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		struct guid g;
		if (klen != 1 + 2 * GUID_SIZE + 4) {
			ret = stor_err_corrupt(db, error_r, "GUID index");
			break;
		}
		memcpy(g.b, key + 1 + GUID_SIZE, GUID_SIZE);
		if (guid_in(lost, &g)) {
			struct lost_msg m;
			memcpy(m.mailbox.b, key + 1, GUID_SIZE);
			m.uid = stor_be32(key + 1 + 2 * GUID_SIZE);
			ARRAY_PUSH(msgs, m);
		}
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	return ret;
}

int stor_jnl_repair_ahead(struct stor_db *db, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	if (j->lost.count == 0)
		return 0;
	lost_msg_array msgs = ARRAY_INIT;
	int ret = find_lost_messages(db, &j->lost, &msgs, error_r);
	/* Their appends never completed (a completed one was synced, and the
	 * journal keeps what was synced): they go as expunged, so that every
	 * node and client sees them leave. */
	for (size_t i = 0; ret == 0 && i < msgs.count; i++)
		ret = stor_msg_expunge_kind(db, &msgs.items[i].mailbox, &msgs.items[i].uid, 1, 0,
					    false, NULL, error_r);
	/* Texts nothing referenced (streamed, never appended). */
	for (size_t i = 0; ret == 0 && i < j->lost.count; i++) {
		struct stor_text_rec rec;
		stor_extent_list ext = ARRAY_INIT;
		int r = stor_text_get(db, &j->lost.items[i], &rec, &ext, error_r);
		if (r < 0) {
			ret = -1;
		} else if (r > 0) {
			struct stor_batch *wb = stor_batch_new();
			stor_text_delete_batch(db, wb, &j->lost.items[i], &ext);
			ret = stor_db_write(db, wb, error_r);
			stor_batch_free(wb);
		}
		ARRAY_FREE(&ext);
	}
	if (ret == 0) {
		log_warnx("%s: the journal lost writes that LevelDB kept (a power failure?): "
			  "%zu messages whose append never completed were removed, %zu texts freed",
			  db->dir, msgs.count, j->lost.count);
		ARRAY_FREE(&j->lost);
	}
	ARRAY_FREE(&msgs);
	return ret;
}

/* Recomputes every segment's live bytes from the texts, and notes the
 * texts that lie beyond the journal's end (repair_ahead). */
static int live_rebuild(struct stor_db *db, const char **error_r)
{
	db->jnl->live.count = 0;
	db->jnl->lost.count = 0;
	return scan_texts(db, &db->jnl->live, &db->jnl->lost, error_r);
}

/* ---- Open and replay ---- */

static int apply_batch(struct stor_db *db, const unsigned char *p, size_t len,
		       const char **error_r)
{
	leveldb_writebatch_t *wb = ldb_batch(p, len);
	if (wb == NULL)
		return stor_err(db, error_r, "%s: store is corrupted: a journal record does not decode",
				db->dir);
	char *lerr = NULL;
	leveldb_write(db->ldb, db->wopts, wb, &lerr);
	leveldb_writebatch_destroy(wb);
	if (lerr != NULL)
		return stor_err_leveldb(db, error_r, "write", lerr);
	return 0;
}

/* Cuts the segment at off.  Without a record of how far the last sync got,
 * a torn write and damage in the unsynced tail look alike, so the bytes cut
 * are kept beside the segment for the administrator. */
static int cut_tail(struct stor_db *db, int fd, const char *path, uint64_t off, uint64_t size,
		    const char **error_r)
{
	char *cut = xasprintf("%s.cut-%llu", path, (unsigned long long)off);
	int out = open(cut, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int ret = 0;
	if (out < 0) {
		ret = jnl_err_errno(db, error_r, "open", cut);
	} else {
		unsigned char tmp[65536];
		for (uint64_t pos = off; pos < size && ret == 0;) {
			size_t n = size - pos < sizeof(tmp) ? (size_t)(size - pos) : sizeof(tmp);
			if (pread_all(fd, tmp, n, pos) < 0 || pwrite(out, tmp, n, (off_t)(pos - off)) != (ssize_t)n)
				ret = jnl_err_errno(db, error_r, "copy", cut);
			pos += n;
		}
		if (ret == 0 && fsync(out) < 0)
			ret = jnl_err_errno(db, error_r, "fsync", cut);
		close(out);
	}
	if (ret == 0) {
		log_warnx("%s: cut off %llu bytes of a write that never completed (kept in %s)",
			  path, (unsigned long long)(size - off), cut);
		if (ftruncate(fd, (off_t)off) < 0 || fdatasync(fd) < 0)
			ret = jnl_err_errno(db, error_r, "truncate", path);
	}
	free(cut);
	return ret;
}

/* Replays the batches of one segment from start.  A record that is cut
 * short or fails its CRC ends the last segment (the write it belonged to
 * was never acknowledged: cut it off); anywhere else it is corruption. */
static int replay_segment(struct stor_db *db, uint32_t seg, uint64_t start, bool last,
			  unsigned *applied, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	char *path = seg_path(j, seg);
	int ret = 0;
	int fd = open(path, (last ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		ret = stor_err(db, error_r, "%s: cannot open journal segment: %s", path,
			       strerror(errno));
		if (fd >= 0)
			close(fd);
		free(path);
		return ret;
	}
	uint64_t size = (uint64_t)st.st_size, off = start;
	struct buf payload = BUF_INIT;
	bool torn = false;
	if (off > size) {
		/* What the checkpoint saw synced is gone. */
		close(fd);
		ret = stor_err(db, error_r, "%s: store is corrupted: journal segment is shorter "
			       "(%llu bytes) than its checkpoint (%llu)", path,
			       (unsigned long long)size, (unsigned long long)start);
		free(path);
		return ret;
	}
	while (!torn && ret == 0 && off < size) {
		unsigned char h[JNL_HDR];
		if (size - off < JNL_HDR || pread_all(fd, h, JNL_HDR, off) < 0) {
			torn = true;
			break;
		}
		uint32_t plen = get_le32(h + 4);
		if (plen > STOR_BATCH_MAX || plen > size - off - JNL_HDR) {
			torn = true;
			break;
		}
		buf_reset(&payload);
		unsigned char *p = buf_reserve(&payload, plen + 1);
		if (pread_all(fd, p, plen, off + JNL_HDR) < 0 ||
		    rec_crc(h + 4, p, plen) != get_le32(h)) {
			torn = true;
			break;
		}
		if (h[8] == JNL_REC_BATCH) {
			ret = apply_batch(db, p, plen, error_r);
			(*applied)++;
		} else if (h[8] != JNL_REC_TEXT || plen < JNL_TEXT_HDR) {
			ret = stor_err(db, error_r, "%s: store is corrupted: unknown journal record "
				       "at %llu", path, (unsigned long long)off);
		}
		off += JNL_HDR + plen;
	}
	buf_free(&payload);
	if (ret == 0 && torn) {
		if (!last) {
			ret = stor_err(db, error_r, "%s: store is corrupted: damaged journal record "
				       "at %llu", path, (unsigned long long)off);
		} else {
			ret = cut_tail(db, fd, path, off, size, error_r);
		}
	}
	close(fd);
	free(path);
	return ret;
}

static int internal_get(struct stor_db *db, const char *name, char **v_r, size_t *len_r,
			const char **error_r)
{
	struct stor_key k;
	internal_key(&k, name);
	return stor_db_get(db, &k, v_r, len_r, error_r);
}

/* A new store gets the format mark; a store without one was made before
 * the journal existed and cannot be read. */
static int check_format(struct stor_db *db, const char **error_r)
{
	char *v;
	size_t len;
	int ret = internal_get(db, format_name, &v, &len, error_r);
	if (ret < 0)
		return -1;
	if (ret > 0) {
		bool ok = len == 1 && (unsigned char)v[0] == STORE_FORMAT;
		unsigned fmt = len == 1 ? (unsigned char)v[0] : 0;
		free(v);
		if (!ok)
			return stor_err(db, error_r, "%s: store format %u is not supported "
					"(this Starling reads format %d)", db->dir, fmt,
					STORE_FORMAT);
		return 0;
	}
	leveldb_iterator_t *it = leveldb_create_iterator(db->ldb, db->ropts);
	leveldb_iter_seek_to_first(it);
	bool empty = !leveldb_iter_valid(it);
	if (stor_iter_end(db, it, error_r) < 0)
		return -1;
	if (!empty)
		return stor_err(db, error_r, "%s: store was made by an older Starling without a "
				"journal; move it away and let the node resync", db->dir);
	struct stor_key k;
	unsigned char f = STORE_FORMAT;
	internal_key(&k, format_name);
	struct stor_batch *wb = stor_batch_new();
	stor_batch_put(wb, &k, &f, 1);
	ret = stor_db_write_synced(db, wb, error_r);
	stor_batch_free(wb);
	return ret;
}

int stor_jnl_open(struct stor_db *db, uint64_t segment_max, const char **error_r)
{
	struct stor_journal *j = xcalloc(1, sizeof(*j));
	db->jnl = j;
	j->fd = -1;
	for (unsigned i = 0; i < STOR_SYNC_THREADS; i++)
		j->sync_fd[i] = -1;
	j->dir_fd = -1;
	for (unsigned i = 0; i < JNL_READ_FDS; i++)
		j->rfd[i].fd = -1;
	j->segment_max = segment_max != 0 ? segment_max : STOR_SEGMENT_DEFAULT;
	j->dir = xasprintf("%s/journal", db->dir);
	if (check_format(db, error_r) < 0)
		return -1;
	if (mkdir(j->dir, 0700) < 0 && errno != EEXIST)
		return jnl_err_errno(db, error_r, "mkdir", j->dir);
	j->dir_fd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (j->dir_fd < 0)
		return jnl_err_errno(db, error_r, "open", j->dir);

	char *v;
	size_t len;
	int ret = internal_get(db, ckpt_name, &v, &len, error_r);
	if (ret < 0)
		return -1;
	if (ret > 0) {
		if (len != 12) {
			free(v);
			return stor_err_corrupt(db, error_r, "journal checkpoint");
		}
		j->ckpt_seg = stor_be32((unsigned char *)v);
		j->ckpt_off = stor_be64((unsigned char *)v + 4);
		free(v);
	}
	seg_array segs = ARRAY_INIT;
	if (list_segments(db, &segs, error_r) < 0)
		return -1;
	uint32_t first = j->ckpt_seg != 0 ? j->ckpt_seg : 1;
	unsigned applied = 0;
	uint32_t expect = first;
	for (size_t i = 0; i < segs.count && ret >= 0; i++) {
		uint32_t s = segs.items[i];
		if (s < first)
			continue;
		if (s != expect) {
			ret = stor_err(db, error_r, "%s: store is corrupted: journal segment %u is "
				       "missing", j->dir, expect);
			break;
		}
		expect++;
		ret = replay_segment(db, s, s == j->ckpt_seg ? j->ckpt_off : 0,
				     i + 1 == segs.count, &applied, error_r);
	}
	ARRAY_FREE(&segs);
	if (ret < 0)
		return -1;
	if (expect == first && j->ckpt_seg != 0 && j->ckpt_off != 0)
		return stor_err(db, error_r, "%s: store is corrupted: journal segment %u is missing",
				j->dir, first);
	/* expect is one past the last segment replayed (or first when none). */
	if (expect == first) {
		if (open_write_segment(db, first, true, error_r) < 0)
			return -1;
	} else if (open_write_segment(db, expect - 1, false, error_r) < 0) {
		return -1;
	}
	ret = internal_get(db, running_name, &v, &len, error_r);
	if (ret < 0)
		return -1;
	if (ret > 0)
		free(v);
	if (ret > 0 || applied > 0) {
		/* The last run did not close: rebuild what is stored only at
		 * checkpoints, and look for texts the journal lost. */
		if (live_rebuild(db, error_r) < 0)
			return -1;
	} else if (live_load(db, error_r) < 0) {
		return -1;
	}
	if (applied > 0)
		log_info("%s: replayed %u changes from the journal", db->dir, applied);
	j->compact_check = true;
	return stor_jnl_checkpoint(db, false, error_r);
}

void stor_jnl_close(struct stor_db *db)
{
	struct stor_journal *j = db->jnl;
	if (j == NULL)
		return;
	syncer_stop(j);
	db->jnl = NULL;
	for (unsigned i = 0; i < JNL_READ_FDS; i++) {
		if (j->rfd[i].fd >= 0)
			close(j->rfd[i].fd);
	}
	if (j->fd >= 0)
		close(j->fd);
	for (unsigned i = 0; i < STOR_SYNC_THREADS; i++) {
		if (j->sync_fd[i] >= 0)
			close(j->sync_fd[i]);
	}
	if (j->dir_fd >= 0)
		close(j->dir_fd);
	buf_free(&j->pending);
	ARRAY_FREE(&j->live);
	ARRAY_FREE(&j->live_delta);
	ARRAY_FREE(&j->live_staged);
	ARRAY_FREE(&j->pins);
	ARRAY_FREE(&j->lost);
	free(j->dir);
	free(j);
}

/* ---- Test hooks ---- */

int stor_test_check_journal(struct stor_db *db, const char **error_r)
{
	struct stor_journal *j = db->jnl;
	jnl_live_array want = ARRAY_INIT;
	guid_array lost = ARRAY_INIT;
	int ret = scan_texts(db, &want, &lost, error_r);
	if (ret == 0 && lost.count > 0)
		ret = stor_err(db, error_r, "text chunk beyond the journal's end");
	ARRAY_FREE(&lost);
	/* Every segment's live bytes are what its texts add up to (after a
	 * clean open they were loaded from the last checkpoint). */
	for (size_t i = 0; ret == 0 && i < want.count; i++) {
		if (live_bytes(j, want.items[i].seg) != want.items[i].bytes)
			ret = stor_err(db, error_r, "segment %u: live bytes %llu, texts %llu",
				       want.items[i].seg,
				       (unsigned long long)live_bytes(j, want.items[i].seg),
				       (unsigned long long)want.items[i].bytes);
	}
	for (size_t i = 0; ret == 0 && i < j->live.count; i++) {
		if (j->live.items[i].bytes != 0 && live_slot(&want, j->live.items[i].seg, false) == NULL)
			ret = stor_err(db, error_r, "segment %u: live bytes without texts",
				       j->live.items[i].seg);
	}
	ARRAY_FREE(&want);
	return ret;
}
