/* Opening a store: replay after the checkpoint, the torn-record cut, the
 * rebuild of live bytes, and the repair after a power failure.  Apart
 * because it runs once, before any write, and holds every rule about what
 * a crash may have left. */
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
int scan_texts(struct stor_db *db, jnl_live_array *sums, guid_array *lost,
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
	return stor_ldb_write(db, wb, false, error_r);
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
	stor_jnl_maps_forget(j, 0);
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
