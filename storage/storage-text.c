/* Message texts: stored once per node under the message GUID.  The bytes
 * are in the journal (storage-journal.c), in chunk records of at most
 * STOR_TEXT_CHUNK bytes; LevelDB holds a record ('S') with the reference
 * count (how many messages share it), the size, and where the chunks are.
 *
 * A streamed text (stor_text_begin) gets its records with refcount 0 and an
 * 'O' (orphan) marker, which the batch of the first message referencing it
 * deletes; a crash in between leaves the marker, and the next open frees the
 * text.  So the open-time collection only visits texts that were being
 * written, never the whole store.  Chunks that never got their records (a
 * crash mid-stream) are simply dead journal bytes. */
#include "storage/storage-private.h"

#include <stdlib.h>
#include <string.h>

#include "lib/xalloc.h"

struct stor_text_writer {
	struct stor_db *db;
	struct guid guid;
	struct buf chunk;
	stor_extent_list ext;   /* chunks written so far */
	uint64_t size;
	bool skip;      /* the store already holds this text */
	bool failed;
};

static void text_key(struct stor_key *k, char prefix, const struct guid *guid)
{
	stor_key_init(k, prefix);
	stor_key_guid(k, guid);
}

int stor_text_get(struct stor_db *db, const struct guid *guid, struct stor_text_rec *rec_r,
		  stor_extent_list *ext_r, const char **error_r)
{
	struct stor_key k;
	char *v;
	size_t len;
	text_key(&k, STOR_KEY_TEXT, guid);
	int ret = stor_db_get(db, &k, &v, &len, error_r);
	if (ret <= 0)
		return ret;
	ret = stor_text_rec_decode(v, len, rec_r, ext_r);
	free(v);
	if (ret < 0) {
		if (ext_r != NULL)
			ext_r->count = 0;
		return stor_err_corrupt(db, error_r, "text");
	}
	return 1;
}

int stor_text_rec_get(struct stor_db *db, const struct guid *guid, struct stor_text_rec *rec_r,
		      const char **error_r)
{
	return stor_text_get(db, guid, rec_r, NULL, error_r);
}

void stor_text_delete_batch(struct stor_db *db, struct stor_batch *wb, const struct guid *guid,
			    const stor_extent_list *ext)
{
	struct stor_key k;
	stor_jnl_live(db, ext->items, ext->count, -1);
	text_key(&k, STOR_KEY_TEXT, guid);
	stor_batch_del(wb, &k);
	text_key(&k, STOR_KEY_ORPHAN, guid);
	stor_batch_del(wb, &k);
	stor_derived_delete_batch(wb, guid);
}

int stor_text_put(struct stor_db *db, struct stor_txn *txn, const struct guid *guid,
		  const void *text, size_t len, const char **error_r)
{
	struct stor_text_rec rec;
	stor_extent_list ext = ARRAY_INIT;
	const unsigned char *p = text;
	for (size_t off = 0; off < len; off += STOR_TEXT_CHUNK) {
		size_t n = len - off < STOR_TEXT_CHUNK ? len - off : STOR_TEXT_CHUNK;
		struct stor_extent e;
		if (stor_jnl_add_text(db, guid, (uint32_t)ext.count, p + off, n, &e, error_r) < 0) {
			if (ext.count > 0)
				stor_jnl_unpin(db, &ext.items[0]);
			ARRAY_FREE(&ext);
			return -1;
		}
		ARRAY_PUSH(&ext, e);
	}
	rec.refcount = 0;
	rec.size = len;
	stor_txn_text_created(txn, guid, &rec, &ext);
	return 0;
}

struct stor_text_writer *stor_text_begin(struct stor_db *db, const struct guid *guid)
{
	struct stor_text_writer *w = xcalloc(1, sizeof(*w));
	w->db = db;
	w->guid = *guid;
	struct stor_text_rec rec;
	const char *error;
	int ret = stor_text_rec_get(db, guid, &rec, &error);
	if (ret > 0)
		w->skip = true;
	else if (ret < 0)
		w->failed = true; /* reported by write/finish via db->error */
	return w;
}

static int writer_flush_chunk(struct stor_text_writer *w, const char **error_r)
{
	struct stor_extent e;
	if (stor_jnl_add_text(w->db, &w->guid, (uint32_t)w->ext.count, w->chunk.data,
			      w->chunk.len, &e, error_r) < 0)
		return -1;
	ARRAY_PUSH(&w->ext, e);
	buf_reset(&w->chunk);
	return 0;
}

static int writer_error(struct stor_text_writer *w, const char **error_r)
{
	if (error_r != NULL)
		*error_r = stor_last_error(w->db);
	return -1;
}

int stor_text_write(struct stor_text_writer *w, const void *data, size_t len,
		    const char **error_r)
{
	if (w->failed)
		return writer_error(w, error_r);
	if (w->skip)
		return 0;
	if (len > w->db->max_message_size || w->size + len > w->db->max_message_size) {
		w->failed = true;
		return stor_err_kind(w->db, STOR_ERROR_TOOBIG, error_r,
				     "message too large (limit %llu bytes)",
				     (unsigned long long)w->db->max_message_size);
	}
	const unsigned char *p = data;
	w->size += len;
	while (len > 0) {
		size_t room = STOR_TEXT_CHUNK - w->chunk.len;
		size_t n = len < room ? len : room;
		buf_append(&w->chunk, p, n);
		p += n;
		len -= n;
		if (w->chunk.len == STOR_TEXT_CHUNK && writer_flush_chunk(w, error_r) < 0) {
			w->failed = true;
			return -1;
		}
	}
	return 0;
}

static void writer_free(struct stor_text_writer **_w)
{
	struct stor_text_writer *w = *_w;
	*_w = NULL;
	buf_free(&w->chunk);
	if (w->ext.count > 0)
		stor_jnl_unpin(w->db, &w->ext.items[0]);
	ARRAY_FREE(&w->ext);
	free(w);
}

int stor_text_finish(struct stor_text_writer **_w, const char **error_r)
{
	struct stor_text_writer *w = *_w;
	struct stor_key k;
	int ret = 0;
	if (w->failed) {
		ret = writer_error(w, error_r);
	} else if (!w->skip) {
		if (w->chunk.len > 0)
			ret = writer_flush_chunk(w, error_r);
		if (ret == 0) {
			struct stor_text_rec rec;
			struct stor_batch *wb = stor_batch_new();
			text_key(&k, STOR_KEY_ORPHAN, &w->guid);
			stor_batch_put(wb, &k, "", 0);
			rec.refcount = 0;
			rec.size = w->size;
			struct buf v = BUF_INIT;
			stor_text_rec_encode(&rec, w->ext.items, w->ext.count, &v);
			text_key(&k, STOR_KEY_TEXT, &w->guid);
			stor_batch_put(wb, &k, v.data, v.len);
			buf_free(&v);
			stor_jnl_live(w->db, w->ext.items, w->ext.count, 1);
			ret = stor_db_write(w->db, wb, error_r);
			stor_batch_free(wb);
		}
	}
	writer_free(_w);
	return ret;
}

void stor_text_abort(struct stor_text_writer **_w)
{
	/* Chunks already in the journal were never referenced: dead bytes. */
	if (*_w != NULL)
		writer_free(_w);
}

int stor_text_exists(struct stor_db *db, const struct guid *guid, uint64_t *size_r,
		     const char **error_r)
{
	struct stor_text_rec rec;
	int ret = stor_text_rec_get(db, guid, &rec, error_r);
	if (ret > 0 && size_r != NULL)
		*size_r = rec.size;
	return ret;
}

int stor_text_read(struct stor_db *db, const struct guid *guid, uint64_t offset, uint64_t len,
		   struct buf *out, const char **error_r)
{
	struct stor_text_rec rec;
	stor_extent_list ext = ARRAY_INIT;
	int ret = stor_text_get(db, guid, &rec, &ext, error_r);
	if (ret <= 0)
		return ret < 0 ? -1 : stor_err(db, error_r, "message text is not in the store");
	ret = 0;
	if (offset < rec.size && len > rec.size - offset)
		len = rec.size - offset;
	/* The decoder checked that the chunks add up to the size. */
	uint64_t end = offset + len, pos = 0;
	for (size_t i = 0; i < ext.count && ret == 0 && pos < end && offset < rec.size; i++) {
		uint64_t clen = ext.items[i].len;
		if (pos + clen > offset) {
			uint64_t from = offset > pos ? offset - pos : 0;
			uint64_t to = end - pos < clen ? end - pos : clen;
			ret = stor_jnl_read(db, guid, (uint32_t)i, &ext.items[i], from, to - from,
					    out, error_r);
		}
		pos += clen;
	}
	ARRAY_FREE(&ext);
	return ret;
}

int stor_text_gc(struct stor_db *db, const char **error_r)
{
	struct stor_key prefix, k;
	const unsigned char *key;
	size_t klen;
	stor_key_init(&prefix, STOR_KEY_ORPHAN);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	int ret = 0;
	while (ret == 0 && stor_iter_in(it, &prefix, &key, &klen)) {
		struct guid guid;
		struct stor_text_rec rec;
		stor_extent_list ext = ARRAY_INIT;
		if (klen != 1 + GUID_SIZE) {
			ret = stor_err_corrupt(db, error_r, "orphan text marker");
			break;
		}
		memcpy(guid.b, key + 1, GUID_SIZE);
		int r = stor_text_get(db, &guid, &rec, &ext, error_r);
		if (r < 0) {
			ret = -1;
			break;
		}
		struct stor_batch *wb = stor_batch_new();
		if (r > 0 && rec.refcount == 0) {
			stor_text_delete_batch(db, wb, &guid, &ext);
		} else {
			text_key(&k, STOR_KEY_ORPHAN, &guid);
			stor_batch_del(wb, &k);
		}
		ARRAY_FREE(&ext);
		ret = stor_db_write(db, wb, error_r);
		stor_batch_free(wb);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	return ret;
}
