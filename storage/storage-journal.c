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
 * This file: small helpers, writing, batches, reading, status and test
 * hooks.  Live bytes and segments (storage-journal-segments.c), the sync
 * threads (storage-journal-sync.c), compaction (storage-journal-compact.c),
 * and repair, open and replay (storage-journal-open.c) have files of their
 * own. */
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

void internal_key(struct stor_key *k, const char *name)
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

uint32_t get_le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint32_t rec_crc(const unsigned char *hdr_tail, const void *payload, size_t len)
{
	return crc32c(crc32c(0, hdr_tail, 5), payload, len);
}

char *seg_path(const struct stor_journal *j, uint32_t seg)
{
	return xasprintf("%s/%010u.jnl", j->dir, seg);
}

int jnl_err_errno(struct stor_db *db, const char **error_r, const char *what,
		  const char *path)
{
	enum stor_error kind = errno == ENOSPC || errno == EDQUOT ? STOR_ERROR_NOSPACE :
								    STOR_ERROR_INTERNAL;
	return stor_err_kind(db, kind, error_r, "%s: %s failed: %s", path, what, strerror(errno));
}

int pread_all(int fd, void *data, size_t len, uint64_t off)
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
leveldb_writebatch_t *ldb_batch(const unsigned char *p, size_t len)
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

void stor_jnl_set_broken(struct stor_db *db)
{
	if (db->jnl != NULL)
		db->jnl->broken = true;
}

void stor_test_break(struct stor_db *db)
{
	stor_jnl_set_broken(db);
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
	if (ret == 0)
		ret = stor_ldb_write(db, stor_batch_ldb(wb), false, error_r);
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
