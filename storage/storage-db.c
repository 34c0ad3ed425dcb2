/* The store handle's errors, reads, writes and iterators on LevelDB, the
 * write transactions that the other storage files build on, and the meta
 * values of other components.  Opening and closing the store is in
 * storage-open.c, the group commit (stor_sync) in storage-sync.c, the
 * encodings in storage-codec.c. */
#include "storage/storage-private.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/xalloc.h"

/* ---- Errors ---- */

static int verr(struct stor_db *db, enum stor_error kind, const char **error_r,
		const char *fmt, va_list ap)
{
	char *msg;
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = xstrdup("out of memory formatting an error");
	free(db->error);
	db->error = msg;
	db->error_kind = kind;
	if (error_r != NULL)
		*error_r = db->error;
	return -1;
}

int stor_err(struct stor_db *db, const char **error_r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int ret = verr(db, STOR_ERROR_INTERNAL, error_r, fmt, ap);
	va_end(ap);
	return ret;
}

int stor_err_kind(struct stor_db *db, enum stor_error kind, const char **error_r,
		  const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int ret = verr(db, kind, error_r, fmt, ap);
	va_end(ap);
	return ret;
}

int stor_err_leveldb(struct stor_db *db, const char **error_r, const char *what, char *lerr)
{
	int ret;
	if (strncmp(lerr, "Corruption", 10) == 0)
		ret = stor_err_kind(db, STOR_ERROR_CORRUPT, error_r,
				    "%s: store is corrupted (%s): %s", db->dir, what, lerr);
	else
		ret = stor_err(db, error_r, "%s: %s failed: %s", db->dir, what, lerr);
	leveldb_free(lerr);
	return ret;
}

int stor_err_corrupt(struct stor_db *db, const char **error_r, const char *what)
{
	return stor_err_kind(db, STOR_ERROR_CORRUPT, error_r,
			     "%s: store is corrupted: invalid %s record", db->dir, what);
}

const char *stor_last_error(struct stor_db *db)
{
	return db->error != NULL ? db->error : "no error";
}

enum stor_error stor_last_error_kind(struct stor_db *db)
{
	return db->error_kind;
}

/* ---- Database access ---- */

int stor_db_get(struct stor_db *db, const struct stor_key *k, char **val_r, size_t *len_r,
		const char **error_r)
{
	const void *found;
	size_t len = 0;
	char *v = NULL;
	int ret = stor_stage_get(db, k, &found, &len);
	if (ret < 0) {
		char *lerr = NULL;
		v = leveldb_get(db->ldb, db->ropts, (const char *)k->b, k->len, &len, &lerr);
		if (lerr != NULL)
			return stor_err_leveldb(db, error_r, "read", lerr);
		found = v;
		ret = v != NULL;
	}
	if (ret > 0) {
		/* Copy into our allocator's memory, NUL-terminated for
		 * convenience. */
		char *copy = xmalloc(len + 1);
		memcpy(copy, found, len);
		copy[len] = '\0';
		*val_r = copy;
		if (len_r != NULL)
			*len_r = len;
	}
	if (v != NULL)
		leveldb_free(v);
	return ret;
}

int stor_ldb_write(struct stor_db *db, leveldb_writebatch_t *lwb, bool sync,
		   const char **error_r)
{
	char *lerr = NULL;
	leveldb_write(db->ldb, sync ? db->wopts_sync : db->wopts, lwb, &lerr);
	leveldb_writebatch_destroy(lwb);
	if (lerr == NULL)
		return 0;
	/* LevelDB goes on appending to its log after a write that failed
	 * half-way (only a failed sync stops it), so the next record would
	 * follow a torn one and every later open would find a checksum
	 * mismatch (campaign 14106).  A torn record that stays the log's last
	 * is a write that never completed, which opening drops: so nothing is
	 * written after it until the store is reopened. */
	stor_jnl_set_broken(db);
	enum stor_error kind = strncmp(lerr, "Corruption", 10) == 0 ? STOR_ERROR_CORRUPT :
								      STOR_ERROR_INTERNAL;
	int ret = stor_err_kind(db, kind, error_r, "%s: write failed: %s; restart the node to "
				"recover the store", db->dir, lerr);
	leveldb_free(lerr);
	return ret;
}

int stor_db_write(struct stor_db *db, struct stor_batch *wb, const char **error_r)
{
	/* Whatever happened to a failed batch, a sync is due before anything
	 * is acknowledged. */
	db->dirty = true;
	if (db->fail_countdown > 0 && --db->fail_countdown == 0) {
		stor_jnl_live_discard(db);
		return stor_err(db, error_r, "%s: write failed: IO error: injected failure (test)",
				db->dir);
	}
	if (stor_jnl_usable(db, error_r) < 0) {
		stor_jnl_live_discard(db);
		return -1;
	}
	return stor_stage_add(db, wb, error_r);
}

leveldb_iterator_t *stor_iter_seek(struct stor_db *db, const struct stor_key *start)
{
	const char *error;
	/* On failure the store refuses every change from now on; this read
	 * goes on with what LevelDB holds. */
	if (stor_stage_flush(db, &error) < 0)
		log_errorx("%s", error);
	leveldb_iterator_t *it = leveldb_create_iterator(db->ldb, db->ropts);
	leveldb_iter_seek(it, (const char *)start->b, start->len);
	/* A scan of a whole kind starts on its sentinel (put_sentinels); one
	 * that found nothing left in its range stops on the next kind's, where
	 * stepping on would cross that kind's markers. */
	size_t klen = 0;
	if (leveldb_iter_valid(it)) {
		const char *key = leveldb_iter_key(it, &klen);
		if (klen == 1 && (unsigned char)key[0] == start->b[0])
			leveldb_iter_next(it);
	}
	return it;
}

bool stor_iter_in(leveldb_iterator_t *it, const struct stor_key *prefix, const unsigned char **key_r,
		  size_t *len_r)
{
	if (!leveldb_iter_valid(it))
		return false;
	size_t klen;
	const char *key = leveldb_iter_key(it, &klen);
	if (klen < prefix->len || memcmp(key, prefix->b, prefix->len) != 0)
		return false;
	*key_r = (const unsigned char *)key;
	*len_r = klen;
	return true;
}

int stor_iter_end(struct stor_db *db, leveldb_iterator_t *it, const char **error_r)
{
	char *lerr = NULL;
	leveldb_iter_get_error(it, &lerr);
	leveldb_iter_destroy(it);
	if (lerr != NULL)
		return stor_err_leveldb(db, error_r, "read", lerr);
	return 0;
}

/* ---- Transactions ---- */

void stor_txn_begin(struct stor_db *db, struct stor_txn *txn)
{
	memset(txn, 0, sizeof(*txn));
	txn->db = db;
	txn->wb = stor_batch_new();
}

void stor_txn_free(struct stor_txn *txn)
{
	for (size_t i = 0; i < txn->mailboxes.count; i++) {
		stor_mailbox_free(&txn->mailboxes.items[i]->mb);
		free(txn->mailboxes.items[i]);
	}
	ARRAY_FREE(&txn->mailboxes);
	for (size_t i = 0; i < txn->texts.count; i++) {
		if (txn->texts.items[i].ext.count > 0)
			stor_jnl_unpin(txn->db, &txn->texts.items[i].ext.items[0]);
		ARRAY_FREE(&txn->texts.items[i].ext);
	}
	ARRAY_FREE(&txn->texts);
	if (txn->wb != NULL)
		stor_batch_free(txn->wb);
	txn->wb = NULL;
}

int stor_txn_mailbox(struct stor_txn *txn, const struct guid *guid, struct stor_txn_mailbox **mb_r,
		     const char **error_r)
{
	for (size_t i = 0; i < txn->mailboxes.count; i++) {
		if (guid_cmp(&txn->mailboxes.items[i]->mb.guid, guid) == 0) {
			*mb_r = txn->mailboxes.items[i];
			return 1;
		}
	}
	struct stor_txn_mailbox *tm = xcalloc(1, sizeof(*tm));
	int ret = stor_mailbox_get_by_guid(txn->db, guid, &tm->mb, error_r);
	if (ret <= 0) {
		free(tm);
		return ret;
	}
	ARRAY_PUSH(&txn->mailboxes, tm);
	*mb_r = tm;
	return 1;
}

static struct stor_txn_text *txn_text(struct stor_txn *txn, const struct guid *guid)
{
	for (size_t i = 0; i < txn->texts.count; i++) {
		if (guid_cmp(&txn->texts.items[i].guid, guid) == 0)
			return &txn->texts.items[i];
	}
	struct stor_txn_text t;
	memset(&t, 0, sizeof(t));
	t.guid = *guid;
	ARRAY_PUSH(&txn->texts, t);
	return &txn->texts.items[txn->texts.count - 1];
}

void stor_txn_text_ref(struct stor_txn *txn, const struct guid *guid, int64_t delta)
{
	txn_text(txn, guid)->delta += delta;
}

void stor_txn_text_created(struct stor_txn *txn, const struct guid *guid,
			   const struct stor_text_rec *rec, stor_extent_list *ext)
{
	struct stor_txn_text *t = txn_text(txn, guid);
	t->created = true;
	t->rec = *rec;
	ARRAY_FREE(&t->ext);
	t->ext = *ext;
	memset(ext, 0, sizeof(*ext));
}

static int txn_apply_text(struct stor_txn *txn, struct stor_txn_text *t, const char **error_r)
{
	struct stor_db *db = txn->db;
	struct stor_text_rec rec;
	struct stor_key k;
	char hex[GUID_HEX_SIZE];

	if (t->delta == 0 && !t->created)
		return 0;
	stor_extent_list old = ARRAY_INIT;
	if (t->created) {
		rec = t->rec;
	} else {
		int ret = stor_text_get(db, &t->guid, &rec, &old, error_r);
		if (ret < 0)
			return -1;
		if (ret == 0) {
			guid_to_hex(&t->guid, hex);
			return stor_err(db, error_r, "%s: store is corrupted: text of message %s is missing",
					db->dir, hex);
		}
	}
	int64_t rc = (int64_t)rec.refcount + t->delta;
	if (rc < 0 || rc > UINT32_MAX) {
		ARRAY_FREE(&old);
		guid_to_hex(&t->guid, hex);
		return stor_err(db, error_r, "%s: store is corrupted: bad reference count of text %s",
				db->dir, hex);
	}
	if (rc == 0 && !t->created) {
		stor_text_delete_batch(db, txn->wb, &t->guid, &old);
		ARRAY_FREE(&old);
		return 0;
	}
	stor_key_init(&k, STOR_KEY_ORPHAN);
	stor_key_guid(&k, &t->guid);
	/* A text made here has no marker yet; a streamed one loses its marker
	 * with its first reference. */
	if (rc > 0 && !t->created)
		stor_batch_del(txn->wb, &k);
	else if (rc == 0)
		stor_batch_put(txn->wb, &k, "", 0); /* created unreferenced: collected on open */
	if (t->created)
		stor_jnl_live(db, t->ext.items, t->ext.count, 1);
	const stor_extent_list *ext = t->created ? &t->ext : &old;
	rec.refcount = (uint32_t)rc;
	struct buf v = BUF_INIT;
	stor_text_rec_encode(&rec, ext->items, ext->count, &v);
	stor_key_init(&k, STOR_KEY_TEXT);
	stor_key_guid(&k, &t->guid);
	stor_batch_put(txn->wb, &k, v.data, v.len);
	buf_free(&v);
	ARRAY_FREE(&old);
	return 0;
}

int stor_txn_commit(struct stor_txn *txn, const char **error_r)
{
	struct stor_db *db = txn->db;
	int ret = 0;
	for (size_t i = 0; i < txn->texts.count && ret == 0; i++)
		ret = txn_apply_text(txn, &txn->texts.items[i], error_r);
	struct buf v = BUF_INIT;
	for (size_t i = 0; i < txn->mailboxes.count && ret == 0; i++) {
		struct stor_txn_mailbox *tm = txn->mailboxes.items[i];
		if (!tm->dirty)
			continue;
		struct stor_key k;
		buf_reset(&v);
		stor_mailbox_encode(&tm->mb, &v);
		stor_key_init(&k, STOR_KEY_MAILBOX);
		stor_key_guid(&k, &tm->mb.guid);
		stor_batch_put(txn->wb, &k, v.data, v.len);
	}
	buf_free(&v);
	if (ret == 0)
		ret = stor_db_write(db, txn->wb, error_r);
	else
		stor_jnl_live_discard(db);
	stor_txn_free(txn);
	return ret;
}

/* ---- Meta ---- */

int stor_meta_get(struct stor_db *db, const char *name, struct buf *value_r, const char **error_r)
{
	struct stor_key k;
	size_t n = strlen(name);
	if (n == 0 || n > 255)
		return stor_err(db, error_r, "invalid meta name");
	stor_key_init(&k, STOR_KEY_META);
	stor_key_bytes(&k, name, n);
	char *v;
	size_t len;
	int ret = stor_db_get(db, &k, &v, &len, error_r);
	if (ret <= 0)
		return ret;
	buf_append(value_r, v, len);
	free(v);
	return 1;
}

int stor_meta_set(struct stor_db *db, const char *name, const void *value, size_t len,
		  const char **error_r)
{
	struct stor_key k;
	size_t n = strlen(name);
	if (n == 0 || n > 255)
		return stor_err(db, error_r, "invalid meta name");
	if (len > 1024 * 1024)
		return stor_err(db, error_r, "meta value too large");
	stor_key_init(&k, STOR_KEY_META);
	stor_key_bytes(&k, name, n);
	struct stor_batch *wb = stor_batch_new();
	stor_batch_put(wb, &k, value, len);
	int ret = stor_db_write(db, wb, error_r);
	stor_batch_free(wb);
	return ret;
}

