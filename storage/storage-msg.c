/* Messages: their records (the message, its modseq and GUID index
 * entries, tombstones, the mailbox's counts and digest), what the other
 * storage-msg-*.c files change them with, and lookups: one message, a UID
 * range, a GUID, the changes since a modseq.
 *
 * Each call that changes messages is one transaction: the message records,
 * their modseq and GUID index entries, tombstones, text reference counts and
 * the mailbox record (UIDNEXT, HIGHESTMODSEQ, counts, digest) change in one
 * batch.  Appends and copies are in storage-msg-append.c, flag changes in
 * storage-msg-store.c and their stamps in storage-msg-stamps.c, expunges and
 * renumbering in storage-msg-expunge.c, merging duplicates in
 * storage-msg-dedupe.c. */
#include "storage/storage-msg-private.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/mail-limits.h"
#include "lib/xalloc.h"

static void msg_key(struct stor_key *k, const struct guid *mailbox, uint32_t uid)
{
	stor_key_init(k, STOR_KEY_MSG);
	stor_key_guid(k, mailbox);
	stor_key_u32(k, uid);
}

static void modseq_key(struct stor_key *k, char prefix, const struct guid *mailbox,
		       uint64_t modseq, uint32_t uid)
{
	stor_key_init(k, prefix);
	stor_key_guid(k, mailbox);
	stor_key_u64(k, modseq);
	stor_key_u32(k, uid);
}

static void guid_key(struct stor_key *k, const struct guid *mailbox, const struct guid *guid,
		     uint32_t uid)
{
	stor_key_init(k, STOR_KEY_GUID);
	stor_key_guid(k, mailbox);
	stor_key_guid(k, guid);
	stor_key_u32(k, uid);
}

static void tomb_key(struct stor_key *k, const struct guid *mailbox, uint32_t uid)
{
	stor_key_init(k, STOR_KEY_TOMB);
	stor_key_guid(k, mailbox);
	stor_key_u32(k, uid);
}

static void xor16(unsigned char *dst, const unsigned char *src)
{
	for (int i = 0; i < 16; i++)
		dst[i] ^= src[i];
}

/* Removes (sign < 0) or adds (sign > 0) a message's share of the mailbox's
 * counters and digest. */
void mailbox_account(struct stor_mailbox *mb, const struct stor_msg *msg, int sign)
{
	unsigned char h[16];
	stor_msg_hash(msg, h);
	xor16(mb->digest, h);
	bool unseen = (msg->flags & STOR_FLAG_SEEN) == 0;
	if (sign > 0) {
		mb->messages++;
		if (unseen)
			mb->unseen++;
	} else {
		mb->messages--;
		if (unseen)
			mb->unseen--;
	}
}

/* Writes the message record and its index entries. */
void msg_put(struct stor_txn *txn, const struct guid *mailbox, const struct stor_msg *msg)
{
	struct stor_key k;
	struct buf v = BUF_INIT;
	stor_msg_encode(msg, &v);
	msg_key(&k, mailbox, msg->uid);
	stor_batch_put(txn->wb, &k, v.data, v.len);
	buf_free(&v);
	modseq_key(&k, STOR_KEY_MODSEQ, mailbox, msg->modseq, msg->uid);
	stor_batch_put(txn->wb, &k, "", 0);
	guid_key(&k, mailbox, &msg->guid, msg->uid);
	stor_batch_put(txn->wb, &k, "", 0);
}

/* Deletes the message record and its index entries. */
void msg_del(struct stor_txn *txn, const struct guid *mailbox, const struct stor_msg *msg)
{
	struct stor_key k;
	msg_key(&k, mailbox, msg->uid);
	stor_batch_del(txn->wb, &k);
	modseq_key(&k, STOR_KEY_MODSEQ, mailbox, msg->modseq, msg->uid);
	stor_batch_del(txn->wb, &k);
	guid_key(&k, mailbox, &msg->guid, msg->uid);
	stor_batch_del(txn->wb, &k);
}

void tomb_put(struct stor_txn *txn, const struct guid *mailbox,
	      const struct stor_tombstone *t)
{
	struct stor_key k;
	unsigned char v[GUID_SIZE + 9];
	memcpy(v, t->guid.b, GUID_SIZE);
	for (int i = 0; i < 8; i++)
		v[GUID_SIZE + i] = (unsigned char)(t->modseq >> (56 - 8 * i));
	v[GUID_SIZE + 8] = t->user ? 1 : 0;
	tomb_key(&k, mailbox, t->uid);
	stor_batch_put(txn->wb, &k, v, sizeof(v));
	modseq_key(&k, STOR_KEY_TOMB_MODSEQ, mailbox, t->modseq, t->uid);
	stor_batch_put(txn->wb, &k, "", 0);
}

static int tomb_decode(uint32_t uid, const char *v, size_t len, struct stor_tombstone *t_r)
{
	/* A record without the provenance byte comes from a store written
	 * before it existed: counted as the engine's, so an old tombstone
	 * never removes a copy under another UID (SPEC.md 10.3). */
	if (len != GUID_SIZE + 8 && len != GUID_SIZE + 9)
		return -1;
	if (len == GUID_SIZE + 9 && (unsigned char)v[GUID_SIZE + 8] > 1)
		return -1;
	t_r->uid = uid;
	memcpy(t_r->guid.b, v, GUID_SIZE);
	t_r->modseq = stor_be64((const unsigned char *)v + GUID_SIZE);
	t_r->user = len == GUID_SIZE + 9 && v[GUID_SIZE + 8] == 1;
	return t_r->modseq == 0 ? -1 : 0;
}

/* The tombstone at uid: 1, 0, -1. */
int tomb_get(struct stor_db *db, const struct guid *mailbox, uint32_t uid,
	     struct stor_tombstone *t_r, const char **error_r)
{
	struct stor_key k;
	char *v;
	size_t len;
	tomb_key(&k, mailbox, uid);
	int ret = stor_db_get(db, &k, &v, &len, error_r);
	if (ret <= 0)
		return ret;
	ret = tomb_decode(uid, v, len, t_r);
	free(v);
	return ret < 0 ? stor_err_corrupt(db, error_r, "tombstone") : 1;
}

int stor_msg_get(struct stor_db *db, const struct guid *mailbox, uint32_t uid,
		 struct stor_msg *msg_r, const char **error_r)
{
	struct stor_key k;
	char *v;
	size_t len;
	if (uid == 0)
		return 0;
	msg_key(&k, mailbox, uid);
	int ret = stor_db_get(db, &k, &v, &len, error_r);
	if (ret <= 0)
		return ret;
	struct stor_msg msg;
	ret = stor_msg_decode(uid, v, len, &msg);
	free(v);
	if (ret < 0)
		return stor_err_corrupt(db, error_r, "message");
	if (msg_r != NULL)
		*msg_r = msg;
	else
		stor_msg_free(&msg);
	return 1;
}

static int uid_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* The UIDs sorted, without duplicates or 0 (a new array). */
uint32_t *uids_unique(const uint32_t *uids, size_t count, size_t *count_r)
{
	uint32_t *u = xmalloc(count * sizeof(uint32_t) + 1);
	size_t n = 0;
	if (count > 0) {
		memcpy(u, uids, count * sizeof(uint32_t));
		qsort(u, count, sizeof(uint32_t), uid_cmp);
	}
	for (size_t i = 0; i < count; i++) {
		if (u[i] != 0 && (n == 0 || u[n - 1] != u[i]))
			u[n++] = u[i];
	}
	*count_r = n;
	return u;
}

int mailbox_missing(struct stor_db *db, const char **error_r)
{
	return stor_err(db, error_r, "mailbox does not exist");
}

/* A call that changes messages refuses a given modseq out of range, and
 * one to assign when the mailbox has used them all, before it changes
 * anything: the store never holds a modseq past MAIL_MODSEQ_MAX. */
int modseq_room(struct stor_db *db, const struct stor_mailbox *mb, uint64_t given,
		const char **error_r)
{
	if (!mail_modseq_valid(given))
		return stor_err(db, error_r, "modseq %llu is out of range", (unsigned long long)given);
	if (given == 0 && mb->highestmodseq >= MAIL_MODSEQ_MAX)
		return stor_err_kind(db, STOR_ERROR_LIMIT, error_r, "mailbox has run out of modseqs");
	return 0;
}

/* Begins the transaction of a call that changes messages of mailbox with
 * modseq (0: one is assigned): *tm_r gets the mailbox.  A mailbox that is
 * missing or out of modseqs is -1 with *error_r; the caller frees txn
 * either way. */
int msg_txn_begin(struct stor_db *db, struct stor_txn *txn, const struct guid *mailbox,
		  uint64_t modseq, struct stor_txn_mailbox **tm_r, const char **error_r)
{
	stor_txn_begin(db, txn);
	int ret = stor_txn_mailbox(txn, mailbox, tm_r, error_r);
	if (ret == 0)
		return mailbox_missing(db, error_r);
	if (ret < 0 || modseq_room(db, &(*tm_r)->mb, modseq, error_r) < 0)
		return -1;
	return 0;
}

/* The next modseq of a call: the given one, or one above the mailbox's
 * highest, assigned once per call (modseq_room() checked it first). */
uint64_t call_modseq(struct stor_mailbox *mb, uint64_t given, uint64_t *assigned)
{
	if (given != 0) {
		if (given > mb->highestmodseq)
			mb->highestmodseq = given;
		return given;
	}
	if (*assigned == 0)
		*assigned = ++mb->highestmodseq;
	return *assigned;
}

int stor_msg_list_range(struct stor_db *db, const struct guid *mailbox, uint32_t first,
			uint32_t last, stor_msg_list *list_r, const char **error_r)
{
	struct stor_key prefix, start;
	const unsigned char *key;
	size_t klen;
	stor_msg_list list = ARRAY_INIT;
	stor_key_init(&prefix, STOR_KEY_MSG);
	stor_key_guid(&prefix, mailbox);
	msg_key(&start, mailbox, first);
	leveldb_iterator_t *it = stor_iter_seek(db, &start);
	int ret = 0;
	while (first <= last && stor_iter_in(it, &prefix, &key, &klen)) {
		if (klen != prefix.len + 4) {
			ret = stor_err_corrupt(db, error_r, "message key");
			break;
		}
		uint32_t uid = stor_be32(key + prefix.len);
		if (uid > last)
			break;
		size_t vlen;
		const char *val = leveldb_iter_value(it, &vlen);
		struct stor_msg msg;
		if (stor_msg_decode(uid, val, vlen, &msg) < 0) {
			ret = stor_err_corrupt(db, error_r, "message");
			break;
		}
		ARRAY_PUSH(&list, msg);
		/* Stepping on would pass the markers of expunged UIDs above. */
		if (uid == last)
			break;
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	if (ret < 0) {
		stor_msg_list_free(&list);
		return -1;
	}
	*list_r = list;
	return 0;
}

int stor_msg_find_guid(struct stor_db *db, const struct guid *mailbox, const struct guid *guid,
		       uint32_t *uid_r, const char **error_r)
{
	struct stor_key prefix;
	const unsigned char *key;
	size_t klen;
	stor_key_init(&prefix, STOR_KEY_GUID);
	stor_key_guid(&prefix, mailbox);
	stor_key_guid(&prefix, guid);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	int ret = 0;
	if (stor_iter_in(it, &prefix, &key, &klen)) {
		if (klen != prefix.len + 4) {
			ret = stor_err_corrupt(db, error_r, "GUID index");
		} else {
			if (uid_r != NULL)
				*uid_r = stor_be32(key + prefix.len);
			ret = 1;
		}
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		return -1;
	return ret;
}

static int tomb_cmp(const void *a, const void *b)
{
	return uid_cmp(&((const struct stor_tombstone *)a)->uid,
		       &((const struct stor_tombstone *)b)->uid);
}

/* UIDs of index entries (prefix mailbox) with modseq > since. */
static int modseq_scan(struct stor_db *db, char kind, const struct guid *mailbox, uint64_t since,
		       stor_uid_list *uids, const char **error_r)
{
	struct stor_key prefix, start;
	const unsigned char *key;
	size_t klen;
	stor_key_init(&prefix, kind);
	stor_key_guid(&prefix, mailbox);
	if (since == UINT64_MAX)
		return 0;
	modseq_key(&start, kind, mailbox, since + 1, 0);
	leveldb_iterator_t *it = stor_iter_seek(db, &start);
	int ret = 0;
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		if (klen != prefix.len + 12) {
			ret = stor_err_corrupt(db, error_r, "modseq index");
			break;
		}
		ARRAY_PUSH(uids, stor_be32(key + prefix.len + 8));
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	return ret;
}

int stor_changes_since(struct stor_db *db, const struct guid *mailbox, uint64_t since,
		       stor_msg_list *msgs_r, stor_tombstone_list *tombs_r, const char **error_r)
{
	stor_uid_list uids = ARRAY_INIT;
	stor_msg_list msgs = ARRAY_INIT;
	stor_tombstone_list tombs = ARRAY_INIT;
	int ret = stor_mailbox_get_by_guid(db, mailbox, NULL, error_r);
	if (ret <= 0)
		return ret < 0 ? -1 : mailbox_missing(db, error_r);
	if (since == 0) {
		/* Every message has a modseq above 0.  One scan of the message
		 * records beats a point lookup per message, which reads a whole
		 * table block each once the texts crowd out the cache: a full
		 * sync of a large mailbox spent nearly all its time there. */
		ARRAY_FREE(&msgs);
		ret = stor_msg_list_range(db, mailbox, 1, UINT32_MAX, &msgs, error_r);
	} else {
		ret = modseq_scan(db, STOR_KEY_MODSEQ, mailbox, since, &uids, error_r);
	}
	if (ret == 0 && uids.count > 1)
		qsort(uids.items, uids.count, sizeof(uint32_t), uid_cmp);
	for (size_t i = 0; i < uids.count && ret == 0; i++) {
		struct stor_msg msg;
		int r = stor_msg_get(db, mailbox, uids.items[i], &msg, error_r);
		if (r == 0)
			ret = stor_err_corrupt(db, error_r, "modseq index (no message)");
		else if (r < 0)
			ret = -1;
		else
			ARRAY_PUSH(&msgs, msg);
	}
	uids.count = 0;
	if (ret == 0)
		ret = modseq_scan(db, STOR_KEY_TOMB_MODSEQ, mailbox, since, &uids, error_r);
	for (size_t i = 0; i < uids.count && ret == 0; i++) {
		struct stor_tombstone t;
		int r = tomb_get(db, mailbox, uids.items[i], &t, error_r);
		if (r == 0)
			ret = stor_err_corrupt(db, error_r, "modseq index (no tombstone)");
		else if (r < 0)
			ret = -1;
		else
			ARRAY_PUSH(&tombs, t);
	}
	if (ret == 0 && tombs.count > 1)
		qsort(tombs.items, tombs.count, sizeof(tombs.items[0]), tomb_cmp);
	ARRAY_FREE(&uids);
	if (ret < 0) {
		stor_msg_list_free(&msgs);
		ARRAY_FREE(&tombs);
		return -1;
	}
	*msgs_r = msgs;
	*tombs_r = tombs;
	return 0;
}
