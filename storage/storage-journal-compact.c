/* Compaction: moving a mostly dead segment's live texts to the current
 * one so that it can go.  Apart because it only runs between group
 * commits and touches nothing the write path relies on. */
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
