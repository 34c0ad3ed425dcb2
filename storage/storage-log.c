/* The replication log (opaque entries by increasing sequence number, never
 * reused even after a trim), per-peer log cursors, and per-peer,
 * per-mailbox sync state. */
#include "storage/storage-private.h"

#include <stdlib.h>
#include <string.h>

#include "lib/xalloc.h"

#define STOR_LOG_ENTRY_MAX (64u * 1024 * 1024 + 65536)

static void log_key(struct stor_key *k, uint64_t seq)
{
	stor_key_init(k, STOR_KEY_LOG);
	stor_key_u64(k, seq);
}

static void last_seq_key(struct stor_key *k)
{
	stor_key_init(k, STOR_KEY_INTERNAL);
	stor_key_bytes(k, "logseq", 6);
}

static int get_u64_value(struct stor_db *db, const struct stor_key *k, const char *what,
			 uint64_t *v_r, const char **error_r)
{
	char *v;
	size_t len;
	*v_r = 0;
	int ret = stor_db_get(db, k, &v, &len, error_r);
	if (ret <= 0)
		return ret;
	if (len != 8) {
		free(v);
		return stor_err_corrupt(db, error_r, what);
	}
	*v_r = stor_be64((unsigned char *)v);
	free(v);
	return 1;
}

static void put_u64_value(struct stor_batch *wb, const struct stor_key *k, uint64_t v)
{
	unsigned char b[8];
	for (int i = 0; i < 8; i++)
		b[i] = (unsigned char)(v >> (56 - 8 * i));
	stor_batch_put(wb, k, b, 8);
}

int stor_log_append(struct stor_db *db, const void *entry, size_t len, uint64_t *seq_r,
		    const char **error_r)
{
	struct stor_key k;
	uint64_t last;
	if (len > STOR_LOG_ENTRY_MAX)
		return stor_err(db, error_r, "replication log entry too large");
	last_seq_key(&k);
	if (get_u64_value(db, &k, "log sequence", &last, error_r) < 0)
		return -1;
	struct stor_batch *wb = stor_batch_new();
	put_u64_value(wb, &k, last + 1);
	log_key(&k, last + 1);
	stor_batch_put(wb, &k, entry, len);
	int ret = stor_db_write(db, wb, error_r);
	stor_batch_free(wb);
	if (ret == 0 && seq_r != NULL)
		*seq_r = last + 1;
	return ret;
}

void stor_log_list_free(stor_log_list *list)
{
	for (size_t i = 0; i < list->count; i++)
		buf_free(&list->items[i].data);
	ARRAY_FREE(list);
}

int stor_log_read(struct stor_db *db, uint64_t after, size_t max, stor_log_list *list_r,
		  const char **error_r)
{
	struct stor_key prefix, start;
	const unsigned char *key;
	size_t klen;
	stor_log_list list = ARRAY_INIT;
	stor_key_init(&prefix, STOR_KEY_LOG);
	if (after == UINT64_MAX || max == 0) {
		*list_r = list;
		return 0;
	}
	log_key(&start, after + 1);
	leveldb_iterator_t *it = stor_iter_seek(db, &start);
	int ret = 0;
	while (list.count < max && stor_iter_in(it, &prefix, &key, &klen)) {
		if (klen != 9) {
			ret = stor_err_corrupt(db, error_r, "log key");
			break;
		}
		struct stor_log_entry e;
		size_t vlen;
		const char *val = leveldb_iter_value(it, &vlen);
		e.seq = stor_be64(key + 1);
		buf_init(&e.data);
		buf_append(&e.data, val, vlen);
		ARRAY_PUSH(&list, e);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	if (ret < 0) {
		stor_log_list_free(&list);
		return -1;
	}
	*list_r = list;
	return 0;
}

int stor_log_bounds(struct stor_db *db, uint64_t *first_r, uint64_t *last_r, const char **error_r)
{
	struct stor_key prefix, k;
	const unsigned char *key;
	size_t klen;
	uint64_t last;
	last_seq_key(&k);
	if (get_u64_value(db, &k, "log sequence", &last, error_r) < 0)
		return -1;
	stor_key_init(&prefix, STOR_KEY_LOG);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	/* With nothing kept, the first entry that will exist is last + 1. */
	uint64_t first = last + 1;
	int ret = 0;
	if (stor_iter_in(it, &prefix, &key, &klen)) {
		if (klen != 9)
			ret = stor_err_corrupt(db, error_r, "log key");
		else
			first = stor_be64(key + 1);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	if (ret == 0 && first > last + 1)
		ret = stor_err_corrupt(db, error_r, "log sequence");
	if (ret < 0)
		return -1;
	if (first_r != NULL)
		*first_r = first;
	if (last_r != NULL)
		*last_r = last;
	return 0;
}

int stor_log_trim(struct stor_db *db, uint64_t upto, const char **error_r)
{
	struct stor_key prefix;
	const unsigned char *key;
	size_t klen;
	stor_key_init(&prefix, STOR_KEY_LOG);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	struct stor_batch *wb = stor_batch_new();
	bool any = false;
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		if (klen == 9 && stor_be64(key + 1) > upto)
			break;
		stor_batch_del_raw(wb, key, klen);
		any = true;
		leveldb_iter_next(it);
	}
	int ret = stor_iter_end(db, it, error_r);
	if (ret == 0 && any)
		ret = stor_db_write(db, wb, error_r);
	stor_batch_free(wb);
	return ret;
}

static void cursor_key(struct stor_key *k, uint32_t peer)
{
	stor_key_init(k, STOR_KEY_CURSOR);
	stor_key_u32(k, peer);
}

int stor_log_cursor_get(struct stor_db *db, uint32_t peer, uint64_t *seq_r, const char **error_r)
{
	struct stor_key k;
	cursor_key(&k, peer);
	return get_u64_value(db, &k, "log cursor", seq_r, error_r) < 0 ? -1 : 0;
}

int stor_log_cursor_set(struct stor_db *db, uint32_t peer, uint64_t seq, const char **error_r)
{
	struct stor_key k;
	cursor_key(&k, peer);
	struct stor_batch *wb = stor_batch_new();
	put_u64_value(wb, &k, seq);
	int ret = stor_db_write(db, wb, error_r);
	stor_batch_free(wb);
	return ret;
}

static void sync_state_key(struct stor_key *k, uint32_t peer, const struct guid *mailbox)
{
	stor_key_init(k, STOR_KEY_SYNCSTATE);
	stor_key_guid(k, mailbox);
	stor_key_u32(k, peer);
}

int stor_sync_state_get(struct stor_db *db, uint32_t peer, const struct guid *mailbox,
			struct stor_sync_state *st_r, const char **error_r)
{
	struct stor_key k;
	char *v;
	size_t len;
	memset(st_r, 0, sizeof(*st_r));
	sync_state_key(&k, peer, mailbox);
	int ret = stor_db_get(db, &k, &v, &len, error_r);
	if (ret <= 0)
		return ret;
	struct stor_dec d;
	stor_dec_init(&d, v, len);
	st_r->uidvalidity = stor_get_u32(&d);
	st_r->uidnext = stor_get_u32(&d);
	st_r->highestmodseq = stor_get_u64(&d);
	free(v);
	if (!stor_dec_end(&d)) {
		memset(st_r, 0, sizeof(*st_r));
		return stor_err_corrupt(db, error_r, "sync state");
	}
	return 1;
}

int stor_sync_state_set(struct stor_db *db, uint32_t peer, const struct guid *mailbox,
			const struct stor_sync_state *st, const char **error_r)
{
	struct stor_key k;
	struct buf v = BUF_INIT;
	sync_state_key(&k, peer, mailbox);
	stor_put_u32(&v, st->uidvalidity);
	stor_put_u32(&v, st->uidnext);
	stor_put_u64(&v, st->highestmodseq);
	struct stor_batch *wb = stor_batch_new();
	stor_batch_put(wb, &k, v.data, v.len);
	buf_free(&v);
	int ret = stor_db_write(db, wb, error_r);
	stor_batch_free(wb);
	return ret;
}
