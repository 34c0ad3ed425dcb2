/* The store handle: opening LevelDB, errors, group commit (stor_sync), the
 * key and value codecs and write transactions that the other storage files
 * build on.  See storage-private.h for the keyspace. */
#include "storage/storage-private.h"
#include "storage/storage-acl.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "lib/config.h"
#include "lib/file.h"
#include "lib/log.h"
#include "lib/xalloc.h"

/* ---- Keys ---- */

void stor_key_init(struct stor_key *k, char prefix)
{
	k->len = 1;
	k->b[0] = (unsigned char)prefix;
}

void stor_key_bytes(struct stor_key *k, const void *p, size_t n)
{
	/* Callers validate lengths before building keys; overflowing here is
	 * our bug. */
	if (n > sizeof(k->b) - k->len)
		abort();
	memcpy(k->b + k->len, p, n);
	k->len += n;
}

void stor_key_u32(struct stor_key *k, uint32_t v)
{
	unsigned char b[4] = { v >> 24, v >> 16, v >> 8, v };
	stor_key_bytes(k, b, 4);
}

void stor_key_u64(struct stor_key *k, uint64_t v)
{
	stor_key_u32(k, (uint32_t)(v >> 32));
	stor_key_u32(k, (uint32_t)v);
}

void stor_key_guid(struct stor_key *k, const struct guid *g)
{
	stor_key_bytes(k, g->b, GUID_SIZE);
}

uint32_t stor_be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

uint64_t stor_be64(const unsigned char *p)
{
	return (uint64_t)stor_be32(p) << 32 | stor_be32(p + 4);
}

/* ---- Values ---- */

void stor_put_u8(struct buf *b, uint8_t v)
{
	buf_append_byte(b, v);
}

void stor_put_u32(struct buf *b, uint32_t v)
{
	buf_append_be32(b, v);
}

void stor_put_u64(struct buf *b, uint64_t v)
{
	buf_append_be64(b, v);
}

void stor_put_bytes(struct buf *b, const void *p, size_t n)
{
	buf_append(b, p, n);
}

void stor_put_str(struct buf *b, const char *s)
{
	size_t n = strlen(s);
	stor_put_u32(b, (uint32_t)n);
	buf_append(b, s, n);
}

void stor_dec_init(struct stor_dec *d, const void *p, size_t len)
{
	d->p = p;
	d->len = len;
	d->pos = 0;
	d->bad = false;
}

static const unsigned char *dec_take(struct stor_dec *d, size_t n)
{
	if (d->bad || n > d->len - d->pos) {
		d->bad = true;
		return NULL;
	}
	const unsigned char *p = d->p + d->pos;
	d->pos += n;
	return p;
}

uint8_t stor_get_u8(struct stor_dec *d)
{
	const unsigned char *p = dec_take(d, 1);
	return p == NULL ? 0 : p[0];
}

uint32_t stor_get_u32(struct stor_dec *d)
{
	const unsigned char *p = dec_take(d, 4);
	return p == NULL ? 0 : stor_be32(p);
}

uint64_t stor_get_u64(struct stor_dec *d)
{
	const unsigned char *p = dec_take(d, 8);
	return p == NULL ? 0 : stor_be64(p);
}

void stor_get_bytes(struct stor_dec *d, void *out, size_t n)
{
	const unsigned char *p = dec_take(d, n);
	if (p == NULL)
		memset(out, 0, n);
	else
		memcpy(out, p, n);
}

char *stor_get_str(struct stor_dec *d, size_t max)
{
	uint32_t n = stor_get_u32(d);
	if (d->bad || n > max) {
		d->bad = true;
		return NULL;
	}
	const unsigned char *p = dec_take(d, n);
	if (p == NULL || memchr(p, '\0', n) != NULL) {
		d->bad = true;
		return NULL;
	}
	return xstrndup((const char *)p, n);
}

bool stor_dec_end(struct stor_dec *d)
{
	return !d->bad && d->pos == d->len;
}

/* ---- Records ---- */

#define MAILBOX_REC_VERSION 1
/* Version 2 added the flags' stamps; a version 1 record reads as all its
 * flags stamped at its modseq (STOR_STAMP_ALL). */
#define MSG_REC_VERSION 2
/* Version 1 also held the text's SHA-256 (hashing every append cost more
 * than anything else in it; the dump now hashes what it reads). */
#define TEXT_REC_VERSION 2

void stor_mailbox_encode(const struct stor_mailbox *mb, struct buf *out)
{
	stor_put_u8(out, MAILBOX_REC_VERSION);
	stor_put_bytes(out, mb->guid.b, GUID_SIZE);
	stor_put_str(out, mb->user);
	stor_put_str(out, mb->name);
	stor_put_u32(out, mb->uidvalidity);
	stor_put_u32(out, mb->uidnext);
	stor_put_u64(out, mb->highestmodseq);
	stor_put_u32(out, mb->messages);
	stor_put_u32(out, mb->unseen);
	stor_put_bytes(out, mb->digest, sizeof(mb->digest));
	stor_put_str(out, mb->special_use);
}

int stor_mailbox_decode(const void *p, size_t len, struct stor_mailbox *mb_r)
{
	struct stor_dec d;
	memset(mb_r, 0, sizeof(*mb_r));
	stor_dec_init(&d, p, len);
	if (stor_get_u8(&d) != MAILBOX_REC_VERSION)
		return -1;
	stor_get_bytes(&d, mb_r->guid.b, GUID_SIZE);
	mb_r->user = stor_get_str(&d, STOR_MAX_USER_LEN);
	mb_r->name = stor_get_str(&d, STOR_MAX_MAILBOX_NAME_LEN);
	mb_r->uidvalidity = stor_get_u32(&d);
	mb_r->uidnext = stor_get_u32(&d);
	mb_r->highestmodseq = stor_get_u64(&d);
	mb_r->messages = stor_get_u32(&d);
	mb_r->unseen = stor_get_u32(&d);
	stor_get_bytes(&d, mb_r->digest, sizeof(mb_r->digest));
	char *special = stor_get_str(&d, sizeof(mb_r->special_use) - 1);
	if (special != NULL) {
		strcpy(mb_r->special_use, special);
		free(special);
	}
	if (!stor_dec_end(&d) || mb_r->user == NULL || mb_r->name == NULL ||
	    mb_r->uidnext == 0 || mb_r->unseen > mb_r->messages) {
		stor_mailbox_free(mb_r);
		return -1;
	}
	return 0;
}

void stor_mailbox_free(struct stor_mailbox *mb)
{
	free(mb->user);
	free(mb->name);
	mb->user = mb->name = NULL;
}

void stor_msg_encode(const struct stor_msg *msg, struct buf *out)
{
	stor_put_u8(out, MSG_REC_VERSION);
	stor_put_bytes(out, msg->guid.b, GUID_SIZE);
	stor_put_u64(out, msg->modseq);
	stor_put_u32(out, msg->flags);
	stor_put_u32(out, (uint32_t)msg->keywords.count);
	for (size_t i = 0; i < msg->keywords.count; i++)
		stor_put_str(out, msg->keywords.items[i]);
	stor_put_u64(out, (uint64_t)msg->internaldate);
	stor_put_u32(out, (uint32_t)msg->internaldate_tz);
	stor_put_u64(out, msg->size);
	stor_put_u32(out, (uint32_t)msg->stamps.count);
	for (size_t i = 0; i < msg->stamps.count; i++) {
		/* A flag cannot have changed after its message: a modseq given
		 * lower than before (a hostile peer's UIDFIX) must not make
		 * the record unreadable. */
		uint64_t ms = msg->stamps.items[i].modseq;
		stor_put_str(out, msg->stamps.items[i].name);
		stor_put_u64(out, ms > msg->modseq ? msg->modseq : ms);
		stor_put_u64(out, (uint64_t)msg->stamps.items[i].time_ms);
	}
}

int stor_msg_decode(uint32_t uid, const void *p, size_t len, struct stor_msg *msg_r)
{
	struct stor_dec d;
	memset(msg_r, 0, sizeof(*msg_r));
	msg_r->uid = uid;
	stor_dec_init(&d, p, len);
	uint8_t version = stor_get_u8(&d);
	if (version != 1 && version != MSG_REC_VERSION)
		return -1;
	stor_get_bytes(&d, msg_r->guid.b, GUID_SIZE);
	msg_r->modseq = stor_get_u64(&d);
	msg_r->flags = stor_get_u32(&d);
	uint32_t kwcount = stor_get_u32(&d);
	if (kwcount > STOR_MAX_KEYWORDS)
		d.bad = true;
	for (uint32_t i = 0; i < kwcount && !d.bad; i++) {
		char *kw = stor_get_str(&d, STOR_MAX_KEYWORD_LEN);
		if (kw != NULL)
			ARRAY_PUSH(&msg_r->keywords, kw);
	}
	msg_r->internaldate = (int64_t)stor_get_u64(&d);
	msg_r->internaldate_tz = (int32_t)stor_get_u32(&d);
	msg_r->size = stor_get_u64(&d);
	if (version == 1) {
		struct stor_stamp st = { xstrdup(STOR_STAMP_ALL), msg_r->modseq, 0 };
		ARRAY_PUSH(&msg_r->stamps, st);
	} else {
		uint32_t n = stor_get_u32(&d);
		if (n > STOR_MAX_STAMPS)
			d.bad = true;
		for (uint32_t i = 0; i < n && !d.bad; i++) {
			struct stor_stamp st;
			st.name = stor_get_str(&d, STOR_MAX_KEYWORD_LEN);
			st.modseq = stor_get_u64(&d);
			st.time_ms = (int64_t)stor_get_u64(&d);
			if (st.name == NULL)
				break;
			ARRAY_PUSH(&msg_r->stamps, st);
			if (st.modseq > msg_r->modseq || st.time_ms < 0)
				d.bad = true;
		}
	}
	if (!stor_dec_end(&d) || (msg_r->flags & ~STOR_FLAGS_ALL) != 0 || uid == 0 ||
	    msg_r->modseq == 0) {
		stor_msg_free(msg_r);
		return -1;
	}
	return 0;
}

void stor_string_list_free(stor_string_list *list)
{
	for (size_t i = 0; i < list->count; i++)
		free(list->items[i]);
	ARRAY_FREE(list);
}

void stor_stamp_list_free(stor_stamp_list *list)
{
	for (size_t i = 0; i < list->count; i++)
		free(list->items[i].name);
	ARRAY_FREE(list);
}

void stor_msg_free(struct stor_msg *msg)
{
	stor_string_list_free(&msg->keywords);
	stor_stamp_list_free(&msg->stamps);
}

void stor_msg_stamp(const struct stor_msg *msg, const char *name, uint64_t *modseq_r,
		    int64_t *time_r)
{
	stor_stamps_lookup(&msg->stamps, name, modseq_r, time_r);
}

void stor_stamps_lookup(const stor_stamp_list *list, const char *name, uint64_t *modseq_r,
			int64_t *time_r)
{
	const struct stor_stamp *all = NULL;
	*modseq_r = 0;
	*time_r = 0;
	for (size_t i = 0; i < list->count; i++) {
		const struct stor_stamp *st = &list->items[i];
		if (strcasecmp(st->name, name) == 0) {
			*modseq_r = st->modseq;
			*time_r = st->time_ms;
			return;
		}
		if (strcmp(st->name, STOR_STAMP_ALL) == 0)
			all = st;
	}
	if (all != NULL) {
		*modseq_r = all->modseq;
		*time_r = all->time_ms;
	}
}

int64_t stor_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void stor_msg_list_free(stor_msg_list *list)
{
	for (size_t i = 0; i < list->count; i++)
		stor_msg_free(&list->items[i]);
	ARRAY_FREE(list);
}

void stor_mailbox_list_free(stor_mailbox_array *list)
{
	for (size_t i = 0; i < list->count; i++)
		stor_mailbox_free(&list->items[i]);
	ARRAY_FREE(list);
}

void stor_text_rec_encode(const struct stor_text_rec *t, const struct stor_extent *ext, size_t n,
			  struct buf *out)
{
	stor_put_u8(out, TEXT_REC_VERSION);
	stor_put_u32(out, t->refcount);
	stor_put_u64(out, t->size);
	stor_put_u32(out, (uint32_t)n);
	for (size_t i = 0; i < n; i++) {
		stor_put_u32(out, ext[i].seg);
		stor_put_u64(out, ext[i].off);
		stor_put_u32(out, ext[i].len);
	}
}

int stor_text_rec_decode(const void *p, size_t len, struct stor_text_rec *t_r,
			 stor_extent_list *ext_r)
{
	struct stor_dec d;
	stor_dec_init(&d, p, len);
	uint8_t version = stor_get_u8(&d);
	if (version != 1 && version != TEXT_REC_VERSION)
		return -1;
	t_r->refcount = stor_get_u32(&d);
	t_r->size = stor_get_u64(&d);
	if (version == 1) {
		unsigned char sha256[32];
		stor_get_bytes(&d, sha256, sizeof(sha256));
	}
	uint32_t n = stor_get_u32(&d);
	/* Each chunk takes 16 bytes: a count that doesn't fit is damage. */
	if (d.bad || n > (len - d.pos) / 16)
		return -1;
	uint64_t total = 0;
	for (uint32_t i = 0; i < n; i++) {
		struct stor_extent e;
		e.seg = stor_get_u32(&d);
		e.off = stor_get_u64(&d);
		e.len = stor_get_u32(&d);
		if (e.len == 0 || e.len > STOR_TEXT_CHUNK)
			return -1;
		total += e.len;
		if (ext_r != NULL)
			ARRAY_PUSH(ext_r, e);
	}
	return stor_dec_end(&d) && total == t_r->size ? 0 : -1;
}

const EVP_MD *stor_sha256(void)
{
	/* EVP_sha256() makes every EVP_DigestInit_ex() look the algorithm up
	 * again (OpenSSL 3); every change to a message hashes it.  Fetched once,
	 * kept for the life of the process. */
	static EVP_MD *md;
	if (md == NULL && (md = EVP_MD_fetch(NULL, "SHA256", NULL)) == NULL)
		abort();
	return md;
}

void stor_msg_hash(const struct stor_msg *msg, unsigned char out[16])
{
	unsigned char head[4 + GUID_SIZE + 4], md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	head[0] = msg->uid >> 24; head[1] = msg->uid >> 16;
	head[2] = msg->uid >> 8; head[3] = msg->uid;
	memcpy(head + 4, msg->guid.b, GUID_SIZE);
	uint32_t f = msg->flags;
	head[20] = f >> 24; head[21] = f >> 16; head[22] = f >> 8; head[23] = f;

	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	if (ctx == NULL || EVP_DigestInit_ex(ctx, stor_sha256(), NULL) != 1)
		abort();
	EVP_DigestUpdate(ctx, head, sizeof(head));
	for (size_t i = 0; i < msg->keywords.count; i++) {
		if (i > 0)
			EVP_DigestUpdate(ctx, "", 1);
		EVP_DigestUpdate(ctx, msg->keywords.items[i], strlen(msg->keywords.items[i]));
	}
	if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1)
		abort();
	EVP_MD_CTX_free(ctx);
	memcpy(out, md, 16);
}

/* ---- Keywords ---- */

static bool keyword_char_ok(unsigned char c)
{
	/* IMAP atom characters, less the backslash of system flags. */
	return c > 0x20 && c < 0x7f && strchr("(){%*\"\\]", c) == NULL;
}

int stor_kw_cmp(const void *a, const void *b)
{
	return strcasecmp(*(char *const *)a, *(char *const *)b);
}

int stor_keywords_normalize(struct stor_db *db, const char *const *kw, size_t count,
			    stor_string_list *out, const char **error_r)
{
	stor_string_list list = ARRAY_INIT;
	for (size_t i = 0; i < count; i++) {
		size_t n = strlen(kw[i]);
		if (n == 0 || n > STOR_MAX_KEYWORD_LEN) {
			stor_string_list_free(&list);
			return stor_err(db, error_r, "keyword length must be 1..%d bytes",
					STOR_MAX_KEYWORD_LEN);
		}
		for (size_t j = 0; j < n; j++) {
			if (!keyword_char_ok((unsigned char)kw[i][j])) {
				stor_string_list_free(&list);
				return stor_err(db, error_r, "invalid character in keyword");
			}
		}
		bool dup = false;
		for (size_t j = 0; j < list.count && !dup; j++)
			dup = strcasecmp(list.items[j], kw[i]) == 0;
		if (dup)
			continue;
		if (list.count == STOR_MAX_KEYWORDS) {
			stor_string_list_free(&list);
			return stor_err(db, error_r, "too many keywords (at most %d per message)",
					STOR_MAX_KEYWORDS);
		}
		ARRAY_PUSH(&list, xstrdup(kw[i]));
	}
	if (list.count > 1)
		qsort(list.items, list.count, sizeof(list.items[0]), stor_kw_cmp);
	*out = list;
	return 0;
}

const char *stor_flag_name(enum stor_flag flag)
{
	switch (flag) {
	case STOR_FLAG_SEEN: return "\\Seen";
	case STOR_FLAG_ANSWERED: return "\\Answered";
	case STOR_FLAG_FLAGGED: return "\\Flagged";
	case STOR_FLAG_DELETED: return "\\Deleted";
	case STOR_FLAG_DRAFT: return "\\Draft";
	}
	return NULL;
}

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

/* ---- Open, close, sync ---- */

/* A live one-byte key before each kind's records ("A" to "Z", empty
 * values).  Why: LevelDB's iterator steps over every deletion marker
 * between two live keys, and its C API has no upper bound to stop a scan
 * at the end of its range.  So a scan that ends after its range's last
 * live key went on over the markers that follow, until a compaction
 * dropped them: after the last mailbox name, the 'O' marker each append
 * writes and deletes and the 'Q' entries of every flag change; under a
 * load of appends and expunges that made LIST cost more with every
 * minute.  With a sentinel the step past a range ends at the next kind's
 * sentinel; only markers of the scan's own kind remain in its way.
 * Not journaled (a constant, rewritten by every open that misses one);
 * stor_iter_seek() skips the one a scan of a whole kind lands on, and no
 * record has a one-byte key. */
static int put_sentinels(struct stor_db *db, const char **error_r)
{
	struct stor_batch *wb = stor_batch_new();
	bool missing = false;
	int ret = 0;
	for (char c = 'A'; c <= 'Z' && ret == 0; c++) {
		struct stor_key k;
		stor_key_init(&k, c);
		char *lerr = NULL;
		size_t len;
		char *v = leveldb_get(db->ldb, db->ropts, (const char *)k.b, k.len, &len, &lerr);
		if (lerr != NULL)
			ret = stor_err_leveldb(db, error_r, "read", lerr);
		else if (v == NULL) {
			stor_batch_put(wb, &k, "", 0);
			missing = true;
		}
		leveldb_free(v);
	}
	if (ret == 0 && missing)
		ret = stor_db_write_synced(db, wb, error_r);
	stor_batch_free(wb);
	return ret;
}

/* Deletion markers stay in LevelDB until a compaction reaches the level
 * below them, and every scan passing through them steps over each one:
 * under a steady load of appends and expunges (a mailbox used as a queue)
 * a scan from UID 1 (SELECT) steps over every message ever expunged there,
 * and LevelDB compacts by size, not by how many markers a range holds.  So
 * after enough deletions the whole store is compacted in a helper thread
 * (LevelDB is safe to use from several threads), never on the event loop.
 * Enough: at least COMPACT_MIN_DELETES, and one per 256 bytes of tables, so
 * a big store is not rewritten for every few thousand expunges (about 256
 * bytes written per key deleted, the order of LevelDB's own write
 * amplification). */
#define COMPACT_MIN_DELETES 10000

static void *compactor_main(void *arg)
{
	struct stor_db *db = arg;
	leveldb_compact_range(db->ldb, NULL, 0, NULL, 0);
	atomic_store(&db->compactor_busy, false);
	return NULL;
}

static void compactor_join(struct stor_db *db)
{
	if (db->compactor_started) {
		pthread_join(db->compactor, NULL);
		db->compactor_started = false;
	}
}

static void compact_maybe(struct stor_db *db)
{
	if (db->deletes < COMPACT_MIN_DELETES)
		return;
	if (db->compactor_started) {
		if (atomic_load(&db->compactor_busy))
			return;
		compactor_join(db);
	}
	const char *start = "", *limit = "\xff";
	size_t start_len = 0, limit_len = 1;
	uint64_t size = 0;
	leveldb_approximate_sizes(db->ldb, 1, &start, &start_len, &limit, &limit_len, &size);
	if (db->deletes < size / 256)
		return;
	db->deletes = 0;
	atomic_store(&db->compactor_busy, true);
	if (pthread_create(&db->compactor, NULL, compactor_main, db) != 0) {
		atomic_store(&db->compactor_busy, false);
		log_warnx("%s: cannot start a LevelDB compaction thread", db->dir);
		return;
	}
	db->compactor_started = true;
	db->compactions++;
}

static void db_free(struct stor_db *db)
{
	compactor_join(db);
	stor_stage_free(db);
	stor_jnl_close(db);
	if (db->ldb != NULL)
		leveldb_close(db->ldb);
	if (db->opts != NULL)
		leveldb_options_destroy(db->opts);
	if (db->filter != NULL)
		leveldb_filterpolicy_destroy(db->filter);
	if (db->ropts != NULL)
		leveldb_readoptions_destroy(db->ropts);
	if (db->wopts != NULL)
		leveldb_writeoptions_destroy(db->wopts);
	if (db->wopts_sync != NULL)
		leveldb_writeoptions_destroy(db->wopts_sync);
	ARRAY_FREE(&db->durable);
	for (size_t i = 0; i < db->in_flight.count; i++)
		free(db->in_flight.items[i].cbs);
	ARRAY_FREE(&db->in_flight);
	free(db->error);
	free(db->dir);
	free(db);
}

int stor_open(const struct stor_settings *set, struct stor_db **db_r, char **error_r)
{
	if (set->dir == NULL || set->dir[0] == '\0') {
		*error_r = xstrdup("store directory not set");
		return -1;
	}
	if (file_mkdir_p(set->dir, 0700) < 0) {
		*error_r = xasprintf("%s: cannot create directory: %s", set->dir, strerror(errno));
		return -1;
	}
	struct stor_db *db = xcalloc(1, sizeof(*db));
	db->dir = xstrdup(set->dir);
	db->max_message_size = set->max_message_size != 0 ? set->max_message_size :
		CONFIG_DEFAULT_MAX_MESSAGE_SIZE;

	db->opts = leveldb_options_create();
	leveldb_options_set_create_if_missing(db->opts, 1);
	leveldb_options_set_paranoid_checks(db->opts, 1);
	db->filter = leveldb_filterpolicy_create_bloom(10);
	leveldb_options_set_filter_policy(db->opts, db->filter);
	leveldb_options_set_compression(db->opts, leveldb_no_compression);
	/* Texts live in the journal: LevelDB holds small records only.  A
	 * memtable of 16 MiB (LevelDB's default is 4) keeps level-0 files few
	 * under bursts (a resync stores tens of thousands of messages), so
	 * LevelDB never slows writes down to let compaction catch up; tables
	 * of 8 MiB keep the file count modest. */
	leveldb_options_set_write_buffer_size(db->opts, 16 * 1024 * 1024);
	leveldb_options_set_max_file_size(db->opts, 8 * 1024 * 1024);
	db->ropts = leveldb_readoptions_create();
	leveldb_readoptions_set_verify_checksums(db->ropts, 1);
	db->wopts = leveldb_writeoptions_create();
	leveldb_writeoptions_set_sync(db->wopts, 0);
	db->wopts_sync = leveldb_writeoptions_create();
	leveldb_writeoptions_set_sync(db->wopts_sync, 1);

	char *lerr = NULL;
	db->ldb = leveldb_open(db->opts, db->dir, &lerr);
	if (lerr != NULL) {
		if (strstr(lerr, "lock") != NULL || strstr(lerr, "LOCK") != NULL) {
			*error_r = xasprintf("%s: store is in use by another process "
					     "(is starlingd running?)", db->dir);
		} else if (strncmp(lerr, "Corruption", 10) == 0) {
			*error_r = xasprintf("%s: store is corrupted: %s", db->dir, lerr);
		} else {
			*error_r = xasprintf("%s: cannot open store: %s", db->dir, lerr);
		}
		leveldb_free(lerr);
		db->ldb = NULL;
		db_free(db);
		return -1;
	}
	const char *error;
	if (stor_jnl_open(db, set->journal_segment_size, &error) < 0 ||
	    put_sentinels(db, &error) < 0 ||
	    stor_jnl_repair_ahead(db, &error) < 0 || stor_text_gc(db, &error) < 0 ||
	    stor_acl_index_upgrade(db, &error) < 0 || stor_sync(db, &error) < 0) {
		*error_r = xstrdup(error);
		db_free(db);
		return -1;
	}
	/* Counted from here: opening's own writes are not the caller's. */
	db->fail_countdown = set->fail_nth_write;
	*db_r = db;
	return 0;
}

void stor_close(struct stor_db **_db)
{
	struct stor_db *db = *_db;
	if (db == NULL)
		return;
	*_db = NULL;
	const char *error;
	if (stor_sync_pending(db))
		(void)stor_sync(db, &error);
	/* A clean close leaves nothing to replay. */
	if (stor_jnl_checkpoint(db, true, &error) < 0)
		log_warnx("%s", error);
	db_free(db);
}

/* LevelDB syncs only its current log file.  When it switched to a new log
 * (the memtable filled up), the old one may still hold writes made without
 * sync, and the new file's directory entry is not synced.  A checkpoint
 * claims all of LevelDB's state durable, so it syncs those too. */
static int sync_older_logs(struct stor_db *db, const char **error_r)
{
	DIR *d = opendir(db->dir);
	if (d == NULL)
		return stor_err(db, error_r, "%s: opendir failed: %s", db->dir, strerror(errno));
	uint64_t newest = 0;
	ARRAY(uint64_t) logs = ARRAY_INIT;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		char *end;
		unsigned long long n = strtoull(de->d_name, &end, 10);
		if (end == de->d_name || strcmp(end, ".log") != 0)
			continue;
		ARRAY_PUSH(&logs, n);
		if (n > newest)
			newest = n;
	}
	closedir(d);
	int ret = 0;
	for (size_t i = 0; i < logs.count && ret == 0; i++) {
		if (logs.items[i] == newest)
			continue;
		char path[4096];
		snprintf(path, sizeof(path), "%s/%06llu.log", db->dir,
			 (unsigned long long)logs.items[i]);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue; /* compacted meanwhile: its data is in synced tables */
		if (fdatasync(fd) < 0)
			ret = stor_err(db, error_r, "%s: fdatasync failed: %s", path, strerror(errno));
		close(fd);
	}
	ARRAY_FREE(&logs);
	if (ret == 0) {
		int dfd = open(db->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0 || fsync(dfd) < 0)
			ret = stor_err(db, error_r, "%s: fsync failed: %s", db->dir, strerror(errno));
		if (dfd >= 0)
			close(dfd);
	}
	return ret;
}

int stor_db_write_synced(struct stor_db *db, struct stor_batch *wb, const char **error_r)
{
	char *lerr = NULL;
	leveldb_writebatch_t *lwb = stor_batch_ldb(wb);
	leveldb_write(db->ldb, db->wopts_sync, lwb, &lerr);
	leveldb_writebatch_destroy(lwb);
	if (lerr != NULL)
		return stor_err_leveldb(db, error_r, "write", lerr);
	return sync_older_logs(db, error_r);
}

/* Moving texts out of mostly dead journal segments happens after syncs, a
 * little at a time, so no single call stalls the node for long. */
#define COMPACT_STEP (1024 * 1024)

/* Runs the callbacks of one sync (taken out of the list first: they may
 * queue new ones), then a step of journal compaction. */
static void run_durable(struct stor_db *db, struct stor_durable *cbs, size_t count, bool ok)
{
	for (size_t i = 0; i < count; i++)
		cbs[i].cb(cbs[i].ctx, ok);
	free(cbs);
	if (ok && stor_jnl_compact_due(db)) {
		const char *error;
		if (stor_jnl_compact(db, COMPACT_STEP, &error) < 0)
			log_warnx("journal compaction: %s", error);
	}
	if (ok)
		compact_maybe(db);
}

static void take_durable(struct stor_db *db, struct stor_durable **cbs_r, size_t *count_r)
{
	*cbs_r = db->durable.items;
	*count_r = db->durable.count;
	db->durable.items = NULL;
	db->durable.count = db->durable.cap = 0;
}

/* Completes the syncs in flight that are done, oldest first, waiting for
 * them if wait is set.  Returns true when none is in flight any more. */
static bool finish_in_flight(struct stor_db *db, bool wait)
{
	while (db->in_flight.count > 0) {
		struct stor_in_flight f = db->in_flight.items[0];
		const char *error;
		int r = wait ? (stor_jnl_sync_wait(db, f.seq, &error) < 0 ? -1 : 1) :
			stor_jnl_sync_poll(db, f.seq, &error);
		if (r == 0)
			return false;
		if (r < 0) {
			log_errorx("%s", error);
			db->dirty = true;
		}
		db->in_flight.count--;
		memmove(db->in_flight.items, db->in_flight.items + 1,
			db->in_flight.count * sizeof(f));
		run_durable(db, f.cbs, f.count, r > 0);
	}
	return true;
}

int stor_sync(struct stor_db *db, const char **error_r)
{
	(void)finish_in_flight(db, true);
	int ret = 0;
	if (db->dirty) {
		if (db->fail_countdown > 0 && --db->fail_countdown == 0)
			ret = stor_err(db, error_r, "%s: sync failed: IO error: injected failure "
				       "(test)", db->dir);
		else
			ret = stor_jnl_sync(db, error_r);
		if (ret == 0)
			db->dirty = false;
	}
	struct stor_durable *cbs;
	size_t count;
	take_durable(db, &cbs, &count);
	run_durable(db, cbs, count, ret == 0);
	return ret;
}

int stor_sync_start(struct stor_db *db)
{
	const char *error;
	(void)finish_in_flight(db, false);
	int r = 0;
	uint64_t seq = 0;
	if (db->dirty) {
		r = stor_jnl_sync_start(db, &seq, &error);
		if (r == 2)
			return 0; /* every thread busy: a later turn starts it */
		if (r < 0)
			log_errorx("group commit failed: %s", error);
		/* Also after a failure: the journal refuses everything now, and
		 * retrying at every loop turn would only spin. */
		db->dirty = false;
	}
	struct stor_in_flight f = { seq, NULL, 0 };
	take_durable(db, &f.cbs, &f.count);
	if (r > 0) {
		/* They complete when the thread is done. */
		ARRAY_PUSH(&db->in_flight, f);
		return 1;
	}
	/* Nothing was left to sync (or it failed): complete now, unless an
	 * earlier sync still has to end first. */
	if (r == 0 && db->in_flight.count > 0) {
		struct stor_in_flight *last = &db->in_flight.items[db->in_flight.count - 1];
		if (f.count > 0) {
			last->cbs = xreallocarray(last->cbs, last->count + f.count,
						  sizeof(*f.cbs));
			memcpy(last->cbs + last->count, f.cbs, f.count * sizeof(*f.cbs));
			last->count += f.count;
		}
		free(f.cbs);
		return 0;
	}
	run_durable(db, f.cbs, f.count, r == 0);
	return r < 0 ? -1 : 0;
}

void stor_sync_finish(struct stor_db *db)
{
	stor_jnl_sync_drain(db);
	(void)finish_in_flight(db, false);
}

bool stor_sync_busy(struct stor_db *db)
{
	return stor_jnl_sync_busy(db);
}

int stor_sync_fd(struct stor_db *db)
{
	return stor_jnl_sync_fd(db);
}

void stor_on_durable(struct stor_db *db, stor_durable_cb *cb, void *ctx)
{
	struct stor_durable d = { cb, ctx };
	ARRAY_PUSH(&db->durable, d);
}

bool stor_sync_pending(struct stor_db *db)
{
	return db->dirty || db->durable.count > 0 || db->in_flight.count > 0 ||
		stor_jnl_sync_busy(db);
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

/* ---- Test hooks ---- */

int stor_test_raw_put(struct stor_db *db, const void *key, size_t klen, const void *val,
		      size_t vlen, const char **error_r)
{
	struct stor_batch *wb = stor_batch_new();
	stor_batch_put_raw(wb, key, klen, val, vlen);
	int ret = stor_db_write(db, wb, error_r);
	stor_batch_free(wb);
	return ret;
}

void stor_test_fail_nth_write(struct stor_db *db, unsigned n)
{
	db->fail_countdown = n;
}

unsigned stor_test_compactions(struct stor_db *db)
{
	compactor_join(db);
	return db->compactions;
}

void stor_test_abandon(struct stor_db **_db)
{
	struct stor_db *db = *_db;
	*_db = NULL;
	db_free(db);
}
