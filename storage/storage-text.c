/* Message texts: stored once per node under the message GUID, in chunks of
 * STOR_TEXT_CHUNK bytes, with a record holding the reference count (how
 * many messages share it), the size and the SHA-256.
 *
 * A text too big for one batch is written chunk by chunk in batches of its
 * own, before the batch of the message that references it.  The first of
 * those batches also writes an 'O' (orphan) marker, which the referencing
 * batch deletes; a crash in between leaves the marker, and the next open
 * frees the text.  So the open-time collection only visits texts that were
 * being written, never the whole store. */
#include "storage/storage-private.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "lib/xalloc.h"

struct stor_text_writer {
	struct stor_db *db;
	struct guid guid;
	EVP_MD_CTX *sha;
	struct buf chunk;
	uint32_t chunks_written;
	uint64_t size;
	bool skip;      /* the store already holds this text */
	bool failed;
};

static void chunk_key(struct stor_key *k, const struct guid *guid, uint32_t n)
{
	stor_key_init(k, STOR_KEY_CHUNK);
	stor_key_guid(k, guid);
	stor_key_u32(k, n);
}

static void text_key(struct stor_key *k, char prefix, const struct guid *guid)
{
	stor_key_init(k, prefix);
	stor_key_guid(k, guid);
}

int stor_text_rec_get(struct stor_db *db, const struct guid *guid, struct stor_text_rec *rec_r,
		      const char **error_r)
{
	struct stor_key k;
	char *v;
	size_t len;
	text_key(&k, STOR_KEY_TEXT, guid);
	int ret = stor_db_get(db, &k, &v, &len, error_r);
	if (ret <= 0)
		return ret;
	ret = stor_text_rec_decode(v, len, rec_r);
	free(v);
	return ret < 0 ? stor_err_corrupt(db, error_r, "text") : 1;
}

static uint32_t chunk_count(uint64_t size)
{
	return (uint32_t)((size + STOR_TEXT_CHUNK - 1) / STOR_TEXT_CHUNK);
}

void stor_text_delete_batch(leveldb_writebatch_t *wb, const struct guid *guid, uint64_t size)
{
	struct stor_key k;
	uint32_t n = chunk_count(size);
	for (uint32_t i = 0; i < n; i++) {
		chunk_key(&k, guid, i);
		stor_batch_del(wb, &k);
	}
	text_key(&k, STOR_KEY_TEXT, guid);
	stor_batch_del(wb, &k);
}

static EVP_MD_CTX *sha_new(void)
{
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
		abort();
	return ctx;
}

static void sha_finish(EVP_MD_CTX *ctx, unsigned char out[32])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned len = 0;
	if (EVP_DigestFinal_ex(ctx, md, &len) != 1 || len != 32)
		abort();
	memcpy(out, md, 32);
	EVP_MD_CTX_free(ctx);
}

int stor_text_put(struct stor_db *db, struct stor_txn *txn, const struct guid *guid,
		  const void *text, size_t len, const char **error_r)
{
	struct stor_text_rec rec;
	struct stor_key k;
	const unsigned char *p = text;
	uint32_t n = chunk_count(len);
	/* Big texts: every chunk but the last in batches of their own, so no
	 * single batch (and LevelDB log record) holds more than one chunk of
	 * text. */
	for (uint32_t i = 0; i + 1 < n; i++) {
		leveldb_writebatch_t *wb = leveldb_writebatch_create();
		if (i == 0) {
			text_key(&k, STOR_KEY_ORPHAN, guid);
			stor_batch_put(wb, &k, "", 0);
		}
		chunk_key(&k, guid, i);
		stor_batch_put(wb, &k, p + (size_t)i * STOR_TEXT_CHUNK, STOR_TEXT_CHUNK);
		int ret = stor_db_write(db, wb, error_r);
		leveldb_writebatch_destroy(wb);
		if (ret < 0)
			return -1;
	}
	if (n > 0) {
		size_t off = (size_t)(n - 1) * STOR_TEXT_CHUNK;
		chunk_key(&k, guid, n - 1);
		stor_batch_put(txn->wb, &k, p + off, len - off);
	}
	EVP_MD_CTX *sha = sha_new();
	EVP_DigestUpdate(sha, text, len);
	sha_finish(sha, rec.sha256);
	rec.refcount = 0;
	rec.size = len;
	stor_txn_text_created(txn, guid, &rec);
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
	else
		w->sha = sha_new();
	return w;
}

static int writer_flush_chunk(struct stor_text_writer *w, const char **error_r)
{
	struct stor_key k;
	leveldb_writebatch_t *wb = leveldb_writebatch_create();
	if (w->chunks_written == 0) {
		text_key(&k, STOR_KEY_ORPHAN, &w->guid);
		stor_batch_put(wb, &k, "", 0);
	}
	chunk_key(&k, &w->guid, w->chunks_written);
	stor_batch_put(wb, &k, w->chunk.data, w->chunk.len);
	int ret = stor_db_write(w->db, wb, error_r);
	leveldb_writebatch_destroy(wb);
	if (ret < 0)
		return -1;
	w->chunks_written++;
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
		return stor_err(w->db, error_r, "message too large (limit %llu bytes)",
				(unsigned long long)w->db->max_message_size);
	}
	const unsigned char *p = data;
	EVP_DigestUpdate(w->sha, data, len);
	w->size += len;
	while (len > 0) {
		size_t room = STOR_TEXT_CHUNK - w->chunk.len;
		size_t n = len < room ? len : room;
		buf_append(&w->chunk, p, n);
		p += n;
		len -= n;
		/* Keep a full chunk until more data proves it isn't the last,
		 * so the last chunk always goes with the text record. */
		if (w->chunk.len == STOR_TEXT_CHUNK && len > 0) {
			if (writer_flush_chunk(w, error_r) < 0) {
				w->failed = true;
				return -1;
			}
		}
	}
	return 0;
}

static void writer_free(struct stor_text_writer **_w)
{
	struct stor_text_writer *w = *_w;
	*_w = NULL;
	if (w->sha != NULL)
		EVP_MD_CTX_free(w->sha);
	buf_free(&w->chunk);
	free(w);
}

/* Deletes the chunks this writer wrote (best effort: on failure the orphan
 * marker makes the next open collect them). */
static void writer_discard(struct stor_text_writer *w)
{
	struct stor_key k;
	if (w->skip || w->chunks_written == 0)
		return;
	leveldb_writebatch_t *wb = leveldb_writebatch_create();
	for (uint32_t i = 0; i < w->chunks_written; i++) {
		chunk_key(&k, &w->guid, i);
		stor_batch_del(wb, &k);
	}
	text_key(&k, STOR_KEY_ORPHAN, &w->guid);
	stor_batch_del(wb, &k);
	char *saved = w->db->error != NULL ? xstrdup(w->db->error) : NULL;
	(void)stor_db_write(w->db, wb, NULL);
	leveldb_writebatch_destroy(wb);
	/* Keep the error that made us discard. */
	free(w->db->error);
	w->db->error = saved;
}

int stor_text_finish(struct stor_text_writer **_w, const char **error_r)
{
	struct stor_text_writer *w = *_w;
	struct stor_key k;
	int ret = 0;
	if (w->failed) {
		writer_discard(w);
		ret = writer_error(w, error_r);
	} else if (!w->skip) {
		struct stor_text_rec rec;
		leveldb_writebatch_t *wb = leveldb_writebatch_create();
		text_key(&k, STOR_KEY_ORPHAN, &w->guid);
		stor_batch_put(wb, &k, "", 0);
		if (w->chunk.len > 0) {
			chunk_key(&k, &w->guid, w->chunks_written);
			stor_batch_put(wb, &k, w->chunk.data, w->chunk.len);
		}
		rec.refcount = 0;
		rec.size = w->size;
		sha_finish(w->sha, rec.sha256);
		w->sha = NULL;
		struct buf v = BUF_INIT;
		stor_text_rec_encode(&rec, &v);
		text_key(&k, STOR_KEY_TEXT, &w->guid);
		stor_batch_put(wb, &k, v.data, v.len);
		buf_free(&v);
		ret = stor_db_write(w->db, wb, error_r);
		leveldb_writebatch_destroy(wb);
		if (ret < 0)
			writer_discard(w);
	}
	writer_free(_w);
	return ret;
}

void stor_text_abort(struct stor_text_writer **_w)
{
	if (*_w == NULL)
		return;
	writer_discard(*_w);
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
	struct stor_key k;
	int ret = stor_text_rec_get(db, guid, &rec, error_r);
	if (ret <= 0)
		return ret < 0 ? -1 : stor_err(db, error_r, "message text is not in the store");
	if (offset >= rec.size || len == 0)
		return 0;
	if (len > rec.size - offset)
		len = rec.size - offset;
	uint64_t end = offset + len;
	for (uint32_t i = (uint32_t)(offset / STOR_TEXT_CHUNK); (uint64_t)i * STOR_TEXT_CHUNK < end;
	     i++) {
		uint64_t cstart = (uint64_t)i * STOR_TEXT_CHUNK;
		uint64_t expect = rec.size - cstart < STOR_TEXT_CHUNK ? rec.size - cstart :
			STOR_TEXT_CHUNK;
		char *v;
		size_t vlen;
		chunk_key(&k, guid, i);
		ret = stor_db_get(db, &k, &v, &vlen, error_r);
		if (ret < 0)
			return -1;
		if (ret == 0 || vlen != expect) {
			if (ret > 0)
				free(v);
			return stor_err_corrupt(db, error_r, "text chunk");
		}
		uint64_t from = offset > cstart ? offset - cstart : 0;
		uint64_t to = end - cstart < vlen ? end - cstart : vlen;
		buf_append(out, v + from, (size_t)(to - from));
		free(v);
	}
	return 0;
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
		if (klen != 1 + GUID_SIZE) {
			ret = stor_err_corrupt(db, error_r, "orphan text marker");
			break;
		}
		memcpy(guid.b, key + 1, GUID_SIZE);
		int r = stor_text_rec_get(db, &guid, &rec, error_r);
		if (r < 0) {
			ret = -1;
			break;
		}
		leveldb_writebatch_t *wb = leveldb_writebatch_create();
		if (r == 0 || rec.refcount == 0) {
			/* Never referenced: delete every chunk there is. */
			struct stor_key cp;
			text_key(&cp, STOR_KEY_CHUNK, &guid);
			leveldb_iterator_t *cit = stor_iter_seek(db, &cp);
			const unsigned char *ck;
			size_t cklen;
			while (stor_iter_in(cit, &cp, &ck, &cklen)) {
				leveldb_writebatch_delete(wb, (const char *)ck, cklen);
				leveldb_iter_next(cit);
			}
			ret = stor_iter_end(db, cit, error_r);
			text_key(&k, STOR_KEY_TEXT, &guid);
			stor_batch_del(wb, &k);
		}
		text_key(&k, STOR_KEY_ORPHAN, &guid);
		stor_batch_del(wb, &k);
		if (ret == 0)
			ret = stor_db_write(db, wb, error_r);
		leveldb_writebatch_destroy(wb);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	return ret;
}
