/* Private \Seen records (SPEC.md 7.7; storage-pseen.h says what they are).
 *
 * Keys (storage-private.h lists the letters):
 *   'C' mbguid msgguid user        the record: seen8, modseq64, time64
 *   'F' mbguid modseq64 msgguid user   modseq index (empty value)
 *   'Z' mbguid user                messages held with the user's seen 1: u32
 *   'Z' mbguid                     records of the mailbox, held or not: u64
 * The record is keyed by GUID, never UID, so that a message a sync moves
 * to another UID keeps its records without a rewrite.  The per-mailbox
 * total lets an append or expunge in a mailbox nobody has records in cost
 * one point read, not a seek. */
#include "storage/storage-private.h"
#include "storage/storage-pseen.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "lib/mail-limits.h"
#include "lib/xalloc.h"

#define REC_LEN 17

void stor_pseen_list_free(stor_pseen_list *list)
{
	for (size_t i = 0; i < list->count; i++)
		free(list->items[i].user);
	ARRAY_FREE(list);
}

static void rec_key(struct stor_key *k, const struct guid *mailbox, const struct guid *guid,
		    const char *user)
{
	stor_key_init(k, STOR_KEY_PSEEN);
	stor_key_guid(k, mailbox);
	if (guid != NULL)
		stor_key_guid(k, guid);
	if (user != NULL)
		stor_key_bytes(k, user, strlen(user));
}

static void idx_key(struct stor_key *k, const struct guid *mailbox, uint64_t modseq,
		    const struct guid *guid, const char *user)
{
	stor_key_init(k, STOR_KEY_PSEEN_MODSEQ);
	stor_key_guid(k, mailbox);
	stor_key_u64(k, modseq);
	stor_key_guid(k, guid);
	stor_key_bytes(k, user, strlen(user));
}

static void count_key(struct stor_key *k, const struct guid *mailbox, const char *user)
{
	stor_key_init(k, STOR_KEY_PSEEN_COUNT);
	stor_key_guid(k, mailbox);
	if (user != NULL)
		stor_key_bytes(k, user, strlen(user));
}

static void put_be(unsigned char *p, uint64_t v, int bytes)
{
	for (int i = 0; i < bytes; i++)
		p[i] = (unsigned char)(v >> (8 * (bytes - 1 - i)));
}

static void rec_encode(bool seen, uint64_t modseq, int64_t time_ms, unsigned char v[REC_LEN])
{
	v[0] = seen ? 1 : 0;
	put_be(v + 1, modseq, 8);
	put_be(v + 9, (uint64_t)time_ms, 8);
}

static bool rec_decode(const void *p, size_t len, struct stor_pseen *r)
{
	const unsigned char *v = p;
	if (len != REC_LEN || v[0] > 1)
		return false;
	r->seen = v[0] == 1;
	r->modseq = stor_be64(v + 1);
	r->time_ms = (int64_t)stor_be64(v + 9);
	return r->modseq != 0 && mail_modseq_valid(r->modseq) && r->time_ms >= 0;
}

static int validate_user(struct stor_db *db, const char *user, const char **error_r)
{
	size_t n = user == NULL ? 0 : strlen(user);
	if (n == 0 || n > STOR_MAX_USER_LEN)
		return stor_err(db, error_r, "user name must be 1..%d bytes", STOR_MAX_USER_LEN);
	for (size_t i = 0; i < n; i++) {
		if ((unsigned char)user[i] < 0x20 || user[i] == 0x7f)
			return stor_err(db, error_r, "invalid character in user name");
	}
	return 0;
}

void stor_pseen_hash(const char *user, const struct guid *guid, unsigned char out[16])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned mdlen = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	if (ctx == NULL || EVP_DigestInit_ex(ctx, stor_sha256(), NULL) != 1)
		abort();
	/* A prefix no message hash starts with the same way, so that a record
	 * never cancels a message's share. */
	EVP_DigestUpdate(ctx, "pseen", 6);
	EVP_DigestUpdate(ctx, guid->b, GUID_SIZE);
	EVP_DigestUpdate(ctx, user, strlen(user));
	if (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1)
		abort();
	EVP_MD_CTX_free(ctx);
	memcpy(out, md, 16);
}

int stor_pseen_get(struct stor_db *db, const struct guid *mailbox, const struct guid *guid,
		   const char *user, struct stor_pseen *r, const char **error_r)
{
	struct stor_key k;
	char *v;
	size_t len;
	if (strlen(user) > STOR_MAX_USER_LEN)
		return 0;
	rec_key(&k, mailbox, guid, user);
	int ret = stor_db_get(db, &k, &v, &len, error_r);
	if (ret <= 0)
		return ret;
	struct stor_pseen rec;
	memset(&rec, 0, sizeof(rec));
	bool ok = rec_decode(v, len, &rec);
	free(v);
	if (!ok)
		return stor_err_corrupt(db, error_r, "private seen record");
	rec.guid = *guid;
	if (r != NULL)
		*r = rec;
	return 1;
}

int stor_pseen_seen(struct stor_db *db, const struct guid *mailbox, const struct guid *guid,
		    const char *user, bool *seen_r, const char **error_r)
{
	struct stor_pseen r;
	int ret = stor_pseen_get(db, mailbox, guid, user, &r, error_r);
	if (ret < 0)
		return -1;
	*seen_r = ret > 0 && r.seen;
	return 0;
}

static int read_count(struct stor_db *db, const struct stor_key *k, size_t width, uint64_t *n_r,
		      const char **error_r)
{
	char *v;
	size_t len;
	*n_r = 0;
	int ret = stor_db_get(db, k, &v, &len, error_r);
	if (ret <= 0)
		return ret;
	bool ok = len == width;
	if (ok)
		*n_r = width == 4 ? stor_be32((unsigned char *)v) : stor_be64((unsigned char *)v);
	free(v);
	return ok ? 1 : stor_err_corrupt(db, error_r, "private seen count");
}

int stor_pseen_count(struct stor_db *db, const struct guid *mailbox, const char *user,
		     uint32_t *count_r, const char **error_r)
{
	struct stor_key k;
	uint64_t n;
	*count_r = 0;
	if (strlen(user) > STOR_MAX_USER_LEN)
		return 0;
	count_key(&k, mailbox, user);
	if (read_count(db, &k, 4, &n, error_r) < 0)
		return -1;
	*count_r = (uint32_t)n;
	return 0;
}

/* Records of one GUID (every user), appended to *list. */
static int scan_guid(struct stor_db *db, const struct guid *mailbox, const struct guid *guid,
		     stor_pseen_list *list, const char **error_r)
{
	struct stor_key prefix;
	const unsigned char *key;
	size_t klen;
	rec_key(&prefix, mailbox, guid, NULL);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	int ret = 0;
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		size_t vlen;
		const char *v = leveldb_iter_value(it, &vlen);
		struct stor_pseen r;
		memset(&r, 0, sizeof(r));
		size_t ulen = klen - prefix.len;
		if (ulen == 0 || ulen > STOR_MAX_USER_LEN || memchr(key + prefix.len, 0, ulen) != NULL ||
		    !rec_decode(v, vlen, &r)) {
			ret = stor_err_corrupt(db, error_r, "private seen record");
			break;
		}
		r.guid = *guid;
		r.user = xmalloc(ulen + 1);
		memcpy(r.user, key + prefix.len, ulen);
		r.user[ulen] = '\0';
		ARRAY_PUSH(list, r);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	return ret;
}

int stor_pseen_all(struct stor_db *db, const struct guid *mailbox, stor_pseen_list *list_r,
		   const char **error_r)
{
	struct stor_key prefix;
	const unsigned char *key;
	size_t klen;
	stor_pseen_list list = ARRAY_INIT;
	rec_key(&prefix, mailbox, NULL, NULL);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	int ret = 0;
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		size_t vlen;
		const char *v = leveldb_iter_value(it, &vlen);
		struct stor_pseen r;
		memset(&r, 0, sizeof(r));
		if (klen <= prefix.len + GUID_SIZE ||
		    klen - prefix.len - GUID_SIZE > STOR_MAX_USER_LEN || !rec_decode(v, vlen, &r)) {
			ret = stor_err_corrupt(db, error_r, "private seen record");
			break;
		}
		size_t ulen = klen - prefix.len - GUID_SIZE;
		memcpy(r.guid.b, key + prefix.len, GUID_SIZE);
		r.user = xmalloc(ulen + 1);
		memcpy(r.user, key + prefix.len + GUID_SIZE, ulen);
		r.user[ulen] = '\0';
		ARRAY_PUSH(&list, r);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	if (ret < 0) {
		stor_pseen_list_free(&list);
		return -1;
	}
	*list_r = list;
	return 0;
}

int stor_pseen_since(struct stor_db *db, const struct guid *mailbox, uint64_t since,
		     stor_pseen_list *list_r, const char **error_r)
{
	struct stor_key prefix, start;
	const unsigned char *key;
	size_t klen;
	stor_pseen_list list = ARRAY_INIT;
	memset(list_r, 0, sizeof(*list_r));
	if (since >= MAIL_MODSEQ_MAX)
		return 0;
	stor_key_init(&prefix, STOR_KEY_PSEEN_MODSEQ);
	stor_key_guid(&prefix, mailbox);
	start = prefix;
	stor_key_u64(&start, since + 1);
	leveldb_iterator_t *it = stor_iter_seek(db, &start);
	int ret = 0;
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		size_t head = prefix.len + 8 + GUID_SIZE;
		if (klen <= head || klen - head > STOR_MAX_USER_LEN) {
			ret = stor_err_corrupt(db, error_r, "private seen index");
			break;
		}
		struct stor_pseen r;
		memset(&r, 0, sizeof(r));
		r.modseq = stor_be64(key + prefix.len);
		memcpy(r.guid.b, key + prefix.len + 8, GUID_SIZE);
		r.user = xmalloc(klen - head + 1);
		memcpy(r.user, key + head, klen - head);
		r.user[klen - head] = '\0';
		ARRAY_PUSH(&list, r);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	for (size_t i = 0; i < list.count && ret == 0; i++) {
		struct stor_pseen *r = &list.items[i];
		struct stor_pseen rec;
		int g = stor_pseen_get(db, mailbox, &r->guid, r->user, &rec, error_r);
		if (g < 0)
			ret = -1;
		else if (g == 0 || rec.modseq != r->modseq)
			ret = stor_err_corrupt(db, error_r, "private seen index (no record)");
		else {
			r->seen = rec.seen;
			r->time_ms = rec.time_ms;
		}
	}
	if (ret < 0) {
		stor_pseen_list_free(&list);
		return -1;
	}
	*list_r = list;
	return 0;
}

/* ---- Counts and digest share, within a transaction ---- */

struct acc_user {
	char *user;
	int64_t delta;
};

struct pseen_acc {
	struct stor_txn *txn;
	const struct guid *mailbox;
	struct stor_txn_mailbox *tm;
	ARRAY(struct acc_user) users;
	int64_t total;
};

static void acc_init(struct pseen_acc *a, struct stor_txn *txn, const struct guid *mailbox,
		     struct stor_txn_mailbox *tm)
{
	memset(a, 0, sizeof(*a));
	a->txn = txn;
	a->mailbox = mailbox;
	a->tm = tm;
}

/* A record at seen 1 of a held message enters (sign 1) or leaves (-1) the
 * mailbox's counters and digest. */
static void acc_share(struct pseen_acc *a, const char *user, const struct guid *guid, int sign)
{
	unsigned char h[16];
	stor_pseen_hash(user, guid, h);
	for (int i = 0; i < 16; i++)
		a->tm->mb.digest[i] ^= h[i];
	a->tm->dirty = true;
	for (size_t i = 0; i < a->users.count; i++) {
		if (strcmp(a->users.items[i].user, user) == 0) {
			a->users.items[i].delta += sign;
			return;
		}
	}
	struct acc_user u = { xstrdup(user), sign };
	ARRAY_PUSH(&a->users, u);
}

/* Writes the counts (read from the store, which the batch has not touched
 * yet: each transaction flushes one accumulator once). */
static int acc_flush(struct pseen_acc *a, const char **error_r)
{
	struct stor_key k;
	unsigned char v[8];
	uint64_t n;
	int ret = 0;
	for (size_t i = 0; i < a->users.count && ret == 0; i++) {
		struct acc_user *u = &a->users.items[i];
		if (u->delta == 0)
			continue;
		count_key(&k, a->mailbox, u->user);
		if (read_count(a->txn->db, &k, 4, &n, error_r) < 0) {
			ret = -1;
			break;
		}
		int64_t now = (int64_t)n + u->delta;
		if (now < 0 || now > UINT32_MAX) {
			ret = stor_err_corrupt(a->txn->db, error_r, "private seen count");
			break;
		}
		if (now == 0) {
			stor_batch_del(a->txn->wb, &k);
		} else {
			put_be(v, (uint64_t)now, 4);
			stor_batch_put(a->txn->wb, &k, v, 4);
		}
	}
	if (ret == 0 && a->total != 0) {
		count_key(&k, a->mailbox, NULL);
		if (read_count(a->txn->db, &k, 8, &n, error_r) < 0)
			ret = -1;
		else if ((int64_t)n + a->total < 0)
			ret = stor_err_corrupt(a->txn->db, error_r, "private seen total");
		else if ((int64_t)n + a->total == 0)
			stor_batch_del(a->txn->wb, &k);
		else {
			put_be(v, (uint64_t)((int64_t)n + a->total), 8);
			stor_batch_put(a->txn->wb, &k, v, 8);
		}
	}
	for (size_t i = 0; i < a->users.count; i++)
		free(a->users.items[i].user);
	ARRAY_FREE(&a->users);
	return ret;
}

static void acc_free(struct pseen_acc *a)
{
	for (size_t i = 0; i < a->users.count; i++)
		free(a->users.items[i].user);
	ARRAY_FREE(&a->users);
}

/* 1 when the mailbox has records at all (one point read), 0, -1. */
static int has_records(struct stor_db *db, const struct guid *mailbox, const char **error_r)
{
	struct stor_key k;
	uint64_t n;
	count_key(&k, mailbox, NULL);
	if (read_count(db, &k, 8, &n, error_r) < 0)
		return -1;
	return n > 0;
}

static int held(struct stor_db *db, const struct guid *mailbox, const struct guid *guid,
		const char **error_r)
{
	uint32_t uid;
	return stor_msg_find_guid(db, mailbox, guid, &uid, error_r);
}

int stor_pseen_enter_txn(struct stor_txn *txn, struct stor_txn_mailbox *tm,
			 const struct guid *mailbox, const struct guid *guid, const char **error_r)
{
	int r = has_records(txn->db, mailbox, error_r);
	if (r <= 0)
		return r;
	/* The records first: most messages have none, and then that one
	 * failed seek is all. */
	stor_pseen_list recs = ARRAY_INIT;
	struct pseen_acc a;
	acc_init(&a, txn, mailbox, tm);
	int ret = scan_guid(txn->db, mailbox, guid, &recs, error_r);
	/* Already held under another UID: its records count already. */
	if (ret == 0 && recs.count > 0) {
		r = held(txn->db, mailbox, guid, error_r);
		if (r != 0) {
			stor_pseen_list_free(&recs);
			acc_free(&a);
			return r < 0 ? -1 : 0;
		}
	}
	for (size_t i = 0; i < recs.count && ret == 0; i++) {
		if (recs.items[i].seen)
			acc_share(&a, recs.items[i].user, guid, 1);
	}
	stor_pseen_list_free(&recs);
	if (ret == 0)
		ret = acc_flush(&a, error_r);
	acc_free(&a);
	return ret;
}

/* uids ascending. */
static bool uid_in(const uint32_t *uids, size_t n, uint32_t uid)
{
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (uids[mid] < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && uids[lo] == uid;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

struct guid_at {
	const struct guid *g;
	size_t i;
};

static int cmp_guid_at(const void *a, const void *b)
{
	const struct guid_at *x = a, *y = b;
	int c = guid_cmp(x->g, y->g);
	if (c != 0)
		return c;
	return x->i < y->i ? -1 : x->i > y->i;
}

/* Which of n GUIDs (at base + i * stride) repeat an earlier one: a new
 * array of n flags, by sorting (a bulk change names thousands). */
static bool *repeats(const void *base, size_t n, size_t stride)
{
	bool *rep = xcalloc(n + 1, sizeof(*rep));
	struct guid_at *s = xcalloc(n + 1, sizeof(*s));
	for (size_t i = 0; i < n; i++) {
		s[i].g = (const struct guid *)((const char *)base + i * stride);
		s[i].i = i;
	}
	qsort(s, n, sizeof(*s), cmp_guid_at);
	for (size_t i = 1; i < n; i++) {
		if (guid_cmp(s[i].g, s[i - 1].g) == 0)
			rep[s[i].i] = true;
	}
	free(s);
	return rep;
}

/* Whether the GUID is held at a UID outside gone[] (a GUID index scan). */
static int held_besides(struct stor_db *db, const struct guid *mailbox, const struct guid *guid,
			const uint32_t *gone, size_t ngone, const char **error_r)
{
	struct stor_key prefix;
	const unsigned char *key;
	size_t klen;
	stor_key_init(&prefix, STOR_KEY_GUID);
	stor_key_guid(&prefix, mailbox);
	stor_key_guid(&prefix, guid);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	int ret = 0;
	while (ret == 0 && stor_iter_in(it, &prefix, &key, &klen)) {
		if (klen != prefix.len + 4)
			ret = stor_err_corrupt(db, error_r, "GUID index");
		else if (!uid_in(gone, ngone, stor_be32(key + prefix.len)))
			ret = 1;
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	return ret;
}

int stor_pseen_leave_txn(struct stor_txn *txn, struct stor_txn_mailbox *tm,
			 const struct guid *mailbox, const struct stor_msg *msgs, size_t n,
			 bool user, const char **error_r)
{
	if (n == 0)
		return 0;
	int r = has_records(txn->db, mailbox, error_r);
	if (r <= 0)
		return r;
	uint32_t *gone = xcalloc(n, sizeof(*gone));
	for (size_t i = 0; i < n; i++)
		gone[i] = msgs[i].uid;
	qsort(gone, n, sizeof(*gone), cmp_u32);
	bool *rep = repeats(&msgs[0].guid, n, sizeof(*msgs));
	struct pseen_acc a;
	acc_init(&a, txn, mailbox, tm);
	int ret = 0;
	for (size_t i = 0; i < n && ret == 0; i++) {
		const struct guid *g = &msgs[i].guid;
		if (rep[i])
			continue;
		stor_pseen_list recs = ARRAY_INIT;
		ret = scan_guid(txn->db, mailbox, g, &recs, error_r);
		int still = 0;
		if (ret == 0 && recs.count > 0 && !user) {
			still = held_besides(txn->db, mailbox, g, gone, n, error_r);
			if (still < 0)
				ret = -1;
		}
		for (size_t j = 0; j < recs.count && ret == 0; j++) {
			struct stor_pseen *p = &recs.items[j];
			if (p->seen && still == 0)
				acc_share(&a, p->user, g, -1);
			if (user) {
				/* A user's expunge takes every user's records
				 * of the GUID: they were about this message. */
				struct stor_key k;
				rec_key(&k, mailbox, g, p->user);
				stor_batch_del(txn->wb, &k);
				idx_key(&k, mailbox, p->modseq, g, p->user);
				stor_batch_del(txn->wb, &k);
				a.total--;
			}
		}
		stor_pseen_list_free(&recs);
	}
	free(gone);
	free(rep);
	if (ret == 0)
		ret = acc_flush(&a, error_r);
	acc_free(&a);
	return ret;
}

/* ---- Changes ---- */

int stor_pseen_put(struct stor_db *db, const struct guid *mailbox, const char *user,
		   enum stor_pseen_mode mode, const struct stor_pseen_change *changes,
		   size_t count, uint64_t *modseq_r, stor_pseen_list *changed_r,
		   const char **error_r)
{
	struct stor_txn txn;
	struct stor_txn_mailbox *tm;
	if (modseq_r != NULL)
		*modseq_r = 0;
	if (validate_user(db, user, error_r) < 0)
		return -1;
	for (size_t i = 0; i < count; i++) {
		if (guid_is_zero(&changes[i].guid))
			return stor_err(db, error_r, "message GUID is zero");
		if (mode != STOR_PSEEN_LOCAL &&
		    (changes[i].modseq == 0 || !mail_modseq_valid(changes[i].modseq)))
			return stor_err_kind(db, STOR_ERROR_LIMIT, error_r,
					     "modseq %llu is out of range",
					     (unsigned long long)changes[i].modseq);
		if (mode != STOR_PSEEN_LOCAL && changes[i].time_ms < 0)
			return stor_err(db, error_r, "time %lld is out of range",
					(long long)changes[i].time_ms);
	}
	stor_txn_begin(db, &txn);
	int ret = stor_txn_mailbox(&txn, mailbox, &tm, error_r);
	if (ret <= 0) {
		stor_txn_free(&txn);
		return ret < 0 ? -1 : stor_err(db, error_r, "mailbox does not exist");
	}
	uint64_t assigned = 0;
	if (mode == STOR_PSEEN_LOCAL) {
		assigned = tm->mb.highestmodseq + 1;
		if (!mail_modseq_valid(assigned)) {
			stor_txn_free(&txn);
			return stor_err_kind(db, STOR_ERROR_LIMIT, error_r,
					     "mailbox has run out of modseqs");
		}
	}
	struct pseen_acc a;
	acc_init(&a, &txn, mailbox, tm);
	stor_pseen_list written = ARRAY_INIT;
	int64_t now = stor_now_ms();
	bool *rep = repeats(count > 0 ? &changes[0].guid : NULL, count, sizeof(*changes));
	ret = 0;
	for (size_t i = 0; i < count && ret == 0; i++) {
		const struct stor_pseen_change *c = &changes[i];
		if (rep[i])
			continue;  /* the first naming of a GUID is the one */
		struct stor_pseen old;
		int have = stor_pseen_get(db, mailbox, &c->guid, user, &old, error_r);
		int is_held = have < 0 ? -1 : held(db, mailbox, &c->guid, error_r);
		if (have < 0 || is_held < 0) {
			ret = -1;
			break;
		}
		struct stor_pseen rec = { c->guid, NULL, c->seen, c->modseq, c->time_ms };
		if (mode == STOR_PSEEN_LOCAL) {
			if (!is_held)
				continue;
			rec.modseq = assigned;
			rec.time_ms = now;
			if (have && old.time_ms >= rec.time_ms)
				rec.time_ms = old.time_ms + 1;
		} else {
			if (rec.modseq > tm->mb.highestmodseq) {
				tm->mb.highestmodseq = rec.modseq;
				tm->dirty = true;
			}
			if (mode == STOR_PSEEN_REPLICA && have &&
			    (old.modseq >= rec.modseq || old.time_ms > rec.time_ms))
				continue;
			if (mode == STOR_PSEEN_MERGE && have && old.seen == rec.seen &&
			    old.modseq == rec.modseq && old.time_ms == rec.time_ms)
				continue;
		}
		struct stor_key k;
		unsigned char v[REC_LEN];
		if (have) {
			idx_key(&k, mailbox, old.modseq, &c->guid, user);
			stor_batch_del(txn.wb, &k);
			if (old.seen && is_held)
				acc_share(&a, user, &c->guid, -1);
		} else {
			a.total++;
		}
		rec_encode(rec.seen, rec.modseq, rec.time_ms, v);
		rec_key(&k, mailbox, &c->guid, user);
		stor_batch_put(txn.wb, &k, v, sizeof(v));
		idx_key(&k, mailbox, rec.modseq, &c->guid, user);
		stor_batch_put(txn.wb, &k, "", 0);
		if (rec.seen && is_held)
			acc_share(&a, user, &c->guid, 1);
		if (rec.modseq > tm->mb.highestmodseq)
			tm->mb.highestmodseq = rec.modseq;
		tm->dirty = true;
		rec.user = xstrdup(user);
		ARRAY_PUSH(&written, rec);
	}
	free(rep);
	if (ret == 0)
		ret = acc_flush(&a, error_r);
	acc_free(&a);
	if (ret == 0 && tm->dirty)
		ret = stor_txn_commit(&txn, error_r);
	else
		stor_txn_free(&txn);
	if (ret == 0) {
		if (modseq_r != NULL && written.count > 0)
			*modseq_r = assigned;
		for (size_t i = 0; changed_r != NULL && i < written.count; i++)
			ARRAY_PUSH(changed_r, written.items[i]);
		if (changed_r != NULL)
			ARRAY_FREE(&written);
	}
	stor_pseen_list_free(&written);
	return ret;
}

int stor_pseen_drop(struct stor_db *db, const struct guid *mailbox, const struct guid *guids,
		    size_t count, size_t *dropped_r, const char **error_r)
{
	struct stor_txn txn;
	struct stor_txn_mailbox *tm;
	*dropped_r = 0;
	int r = has_records(db, mailbox, error_r);
	if (r <= 0)
		return r;
	stor_txn_begin(db, &txn);
	int ret = stor_txn_mailbox(&txn, mailbox, &tm, error_r);
	if (ret <= 0) {
		stor_txn_free(&txn);
		return ret < 0 ? -1 : stor_err(db, error_r, "mailbox does not exist");
	}
	struct pseen_acc a;
	acc_init(&a, &txn, mailbox, tm);
	size_t dropped = 0;
	bool *rep = repeats(guids, count, sizeof(*guids));
	ret = 0;
	for (size_t i = 0; i < count && ret == 0; i++) {
		if (rep[i])
			continue;
		int h = held(db, mailbox, &guids[i], error_r);
		if (h != 0) {
			ret = h < 0 ? -1 : 0;
			continue;
		}
		stor_pseen_list recs = ARRAY_INIT;
		ret = scan_guid(db, mailbox, &guids[i], &recs, error_r);
		for (size_t j = 0; j < recs.count && ret == 0; j++) {
			struct stor_key k;
			rec_key(&k, mailbox, &guids[i], recs.items[j].user);
			stor_batch_del(txn.wb, &k);
			idx_key(&k, mailbox, recs.items[j].modseq, &guids[i], recs.items[j].user);
			stor_batch_del(txn.wb, &k);
			a.total--;
			dropped++;
		}
		stor_pseen_list_free(&recs);
	}
	free(rep);
	if (ret == 0)
		ret = acc_flush(&a, error_r);
	acc_free(&a);
	if (ret == 0 && dropped > 0)
		ret = stor_txn_commit(&txn, error_r);
	else
		stor_txn_free(&txn);
	if (ret == 0)
		*dropped_r = dropped;
	return ret;
}

/* ---- Consistency check (stor_mailbox_check) ---- */

int stor_pseen_check(struct stor_db *db, const struct stor_mailbox *mb, unsigned char digest[16],
		     const char **error_r)
{
	stor_pseen_list all;
	if (stor_pseen_all(db, &mb->guid, &all, error_r) < 0)
		return -1;
	struct acc_user_count {
		char *user;
		uint32_t n;
	};
	ARRAY(struct acc_user_count) counts = ARRAY_INIT;
	const char *what = NULL;
	int ret = 0;
	for (size_t i = 0; i < all.count && ret == 0 && what == NULL; i++) {
		struct stor_pseen *p = &all.items[i];
		struct stor_key k;
		char *v;
		idx_key(&k, &mb->guid, p->modseq, &p->guid, p->user);
		int r = stor_db_get(db, &k, &v, NULL, error_r);
		if (r < 0) {
			ret = -1;
			break;
		}
		if (r == 0) {
			what = "private seen index entry missing";
			break;
		}
		free(v);
		if (p->modseq > mb->highestmodseq) {
			what = "a private seen modseq is above HIGHESTMODSEQ";
			break;
		}
		if (!p->seen)
			continue;
		r = held(db, &mb->guid, &p->guid, error_r);
		if (r < 0) {
			ret = -1;
			break;
		}
		if (r == 0)
			continue;
		unsigned char h[16];
		stor_pseen_hash(p->user, &p->guid, h);
		for (int j = 0; j < 16; j++)
			digest[j] ^= h[j];
		size_t j;
		for (j = 0; j < counts.count; j++) {
			if (strcmp(counts.items[j].user, p->user) == 0)
				break;
		}
		if (j == counts.count) {
			struct acc_user_count c = { p->user, 0 };
			ARRAY_PUSH(&counts, c);
		}
		counts.items[j].n++;
	}
	for (size_t j = 0; j < counts.count && ret == 0 && what == NULL; j++) {
		uint32_t n;
		if (stor_pseen_count(db, &mb->guid, counts.items[j].user, &n, error_r) < 0)
			ret = -1;
		else if (n != counts.items[j].n)
			what = "a private seen count differs";
	}
	/* Counts of users with nothing seen, and the index, hold nothing
	 * extra. */
	size_t nidx = 0, ncount = 0;
	uint64_t total = 0;
	struct stor_key prefix;
	const unsigned char *key;
	size_t klen;
	for (int pass = 0; pass < 2 && ret == 0 && what == NULL; pass++) {
		stor_key_init(&prefix, pass == 0 ? STOR_KEY_PSEEN_MODSEQ : STOR_KEY_PSEEN_COUNT);
		stor_key_guid(&prefix, &mb->guid);
		leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
		while (stor_iter_in(it, &prefix, &key, &klen)) {
			if (pass == 0)
				nidx++;
			else if (klen == prefix.len) {
				size_t vlen;
				const char *v = leveldb_iter_value(it, &vlen);
				if (vlen == 8)
					total = stor_be64((const unsigned char *)v);
			} else
				ncount++;
			leveldb_iter_next(it);
		}
		if (stor_iter_end(db, it, error_r) < 0)
			ret = -1;
	}
	if (ret == 0 && what == NULL) {
		if (nidx != all.count)
			what = "stray private seen index entries";
		else if (ncount != counts.count)
			what = "stray private seen counts";
		else if (total != all.count)
			what = "private seen total differs";
	}
	ARRAY_FREE(&counts);
	stor_pseen_list_free(&all);
	if (ret == 0 && what != NULL)
		ret = stor_err(db, error_r, "%s: mailbox %s of %s is inconsistent: %s", db->dir,
			       mb->name, mb->user, what);
	return ret;
}

int stor_pseen_dump(struct stor_db *db, const struct stor_mailbox *mb, struct buf *out,
		    const char **error_r)
{
	stor_pseen_list all;
	char hex[GUID_HEX_SIZE];
	if (stor_pseen_all(db, &mb->guid, &all, error_r) < 0)
		return -1;
	/* Not the modseq: each node gives a merged record its own. */
	for (size_t i = 0; i < all.count; i++) {
		guid_to_hex(&all.items[i].guid, hex);
		buf_appendf(out, "pseen %s guid=%s user=%s seen=%d time=%lld\n", mb->name, hex,
			    all.items[i].user, all.items[i].seen ? 1 : 0,
			    (long long)all.items[i].time_ms);
	}
	stor_pseen_list_free(&all);
	return 0;
}

int stor_pseen_view(struct stor_db *db, const struct guid *mailbox, const char *user,
		    struct stor_msg *msg, const char **error_r)
{
	struct stor_pseen r;
	int ret = stor_pseen_get(db, mailbox, &msg->guid, user, &r, error_r);
	if (ret < 0)
		return -1;
	msg->flags &= ~(uint32_t)STOR_FLAG_SEEN;
	if (ret > 0) {
		if (r.seen)
			msg->flags |= STOR_FLAG_SEEN;
		if (r.modseq > msg->modseq)
			msg->modseq = r.modseq;
	}
	return 0;
}
