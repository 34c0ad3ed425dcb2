/* GUID tombstones: the GUIDs a user expunged from a mailbox, by GUID and
 * with no UID, so that the expunge survives the message moving to another
 * UID and travels to nodes that never held the message, and a stale copy
 * that a third node brings later is expunged instead of coming back
 * (SPEC.md 10.3 "A user's expunge").  Only a user's expunge leaves one
 * (never the engine's moves and drops).  Bounded per mailbox: past the
 * bound those of the lowest modseqs are forgotten, which can only let an
 * expunged message come back, never lose one. */
#include "storage/storage-private.h"

#include <stdlib.h>
#include <string.h>

#include "lib/mail-limits.h"

static void gtomb_key(struct stor_key *k, const struct guid *mailbox, const struct guid *guid)
{
	stor_key_init(k, STOR_KEY_GUID_TOMB);
	stor_key_guid(k, mailbox);
	if (guid != NULL)
		stor_key_guid(k, guid);
}

static int gtomb_scan(struct stor_db *db, const struct guid *mailbox,
		      stor_guid_tomb_list *list_r, const char **error_r)
{
	struct stor_key prefix;
	const unsigned char *key;
	size_t klen;
	gtomb_key(&prefix, mailbox, NULL);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	int ret = 0;
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		size_t vlen;
		const char *v = leveldb_iter_value(it, &vlen);
		if (klen == prefix.len && vlen == 8) {
			leveldb_iter_next(it); /* the count */
			continue;
		}
		if (klen != prefix.len + GUID_SIZE || vlen != 8) {
			ret = stor_err_corrupt(db, error_r, "GUID tombstone");
			break;
		}
		struct stor_guid_tomb t;
		memcpy(t.guid.b, key + prefix.len, GUID_SIZE);
		t.modseq = stor_be64((const unsigned char *)v);
		ARRAY_PUSH(list_r, t);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	return ret;
}

int stor_guid_tombs_since(struct stor_db *db, const struct guid *mailbox, uint64_t since,
			  stor_guid_tomb_list *list_r, const char **error_r)
{
	stor_guid_tomb_list all = ARRAY_INIT;
	memset(list_r, 0, sizeof(*list_r));
	if (gtomb_scan(db, mailbox, &all, error_r) < 0) {
		ARRAY_FREE(&all);
		return -1;
	}
	for (size_t i = 0; i < all.count; i++) {
		if (all.items[i].modseq > since)
			ARRAY_PUSH(list_r, all.items[i]);
	}
	ARRAY_FREE(&all);
	return 0;
}

int stor_guid_tomb_get(struct stor_db *db, const struct guid *mailbox, const struct guid *guid,
		       uint64_t *modseq_r, const char **error_r)
{
	struct stor_key k;
	char *v;
	size_t len;
	gtomb_key(&k, mailbox, guid);
	int r = stor_db_get(db, &k, &v, &len, error_r);
	if (r <= 0)
		return r;
	bool ok = len == 8;
	if (ok && modseq_r != NULL)
		*modseq_r = stor_be64((const unsigned char *)v);
	free(v);
	return ok ? 1 : stor_err_corrupt(db, error_r, "GUID tombstone");
}

/* The lowest modseq first: those are forgotten first past the bound. */
static int cmp_gtomb_modseq(const void *a, const void *b)
{
	const struct stor_guid_tomb *x = a, *y = b;
	if (x->modseq != y->modseq)
		return x->modseq < y->modseq ? -1 : 1;
	return guid_cmp(&x->guid, &y->guid);
}

static void put_u64(unsigned char v[8], uint64_t n)
{
	for (int i = 0; i < 8; i++)
		v[i] = (unsigned char)(n >> (56 - 8 * i));
}

/* The count of a mailbox's GUID tombstones, kept beside them ('K' mbguid
 * alone) so that a user's expunge needs no scan (a scan writes out the
 * staged changes of the loop turn).  It may count a GUID twice (written
 * again) or one a new message removed: it only says when to trim, and a
 * trim sets it exact. */
static uint64_t gtomb_count(struct stor_db *db, const struct guid *mailbox)
{
	struct stor_key k;
	char *v;
	size_t len;
	uint64_t n = 0;
	gtomb_key(&k, mailbox, NULL);
	if (stor_db_get(db, &k, &v, &len, NULL) > 0) {
		if (len == 8)
			n = stor_be64((const unsigned char *)v);
		free(v);
	}
	return n;
}

int stor_guid_tombs_put_txn(struct stor_txn *txn, const struct guid *mailbox,
			    const struct guid *guids, size_t count, uint64_t modseq,
			    const char **error_r)
{
	struct stor_key k;
	unsigned char v[8];
	if (count == 0)
		return 0;
	/* One call past the bound (a bulk expunge) keeps its first ones. */
	if (count > STOR_GUID_TOMBS_MAX)
		count = STOR_GUID_TOMBS_MAX;
	uint64_t have = gtomb_count(txn->db, mailbox);
	if (have + count > STOR_GUID_TOMBS_MAX) {
		/* Past the bound: the oldest go, down to three quarters of
		 * it, so that the next few hundred expunges need no scan. */
		stor_guid_tomb_list all = ARRAY_INIT;
		if (gtomb_scan(txn->db, mailbox, &all, error_r) < 0) {
			ARRAY_FREE(&all);
			return -1;
		}
		size_t target = STOR_GUID_TOMBS_MAX * 3 / 4;
		size_t keep_old = count >= target ? 0 : target - count;
		qsort(all.items, all.count, sizeof(*all.items), cmp_gtomb_modseq);
		size_t drop = all.count > keep_old ? all.count - keep_old : 0;
		for (size_t i = 0; i < drop; i++) {
			gtomb_key(&k, mailbox, &all.items[i].guid);
			stor_batch_del(txn->wb, &k);
		}
		have = all.count - drop;
		ARRAY_FREE(&all);
	}
	put_u64(v, modseq);
	for (size_t i = 0; i < count; i++) {
		gtomb_key(&k, mailbox, &guids[i]);
		stor_batch_put(txn->wb, &k, v, sizeof(v));
	}
	put_u64(v, have + count);
	gtomb_key(&k, mailbox, NULL);
	stor_batch_put(txn->wb, &k, v, sizeof(v));
	return 0;
}

int stor_guid_tombs_add(struct stor_db *db, const struct guid *mailbox, const struct guid *guids,
			size_t count, uint64_t modseq, size_t *added_r, const char **error_r)
{
	struct stor_txn txn;
	struct stor_txn_mailbox *tm;
	*added_r = 0;
	if (modseq == 0 || !mail_modseq_valid(modseq))
		return stor_err(db, error_r, "modseq %llu is out of range",
				(unsigned long long)modseq);
	/* Only GUIDs the mailbox neither holds nor has a tombstone of. */
	ARRAY(struct guid) fresh = ARRAY_INIT;
	int r = 0;
	for (size_t i = 0; i < count && r >= 0; i++) {
		uint32_t at;
		bool dup = false;
		for (size_t j = 0; j < fresh.count && !dup; j++)
			dup = guid_cmp(&fresh.items[j], &guids[i]) == 0;
		if (dup || guid_is_zero(&guids[i]))
			continue;
		r = stor_guid_tomb_get(db, mailbox, &guids[i], NULL, error_r);
		if (r == 0)
			r = stor_msg_find_guid(db, mailbox, &guids[i], &at, error_r);
		if (r == 0)
			ARRAY_PUSH(&fresh, guids[i]);
	}
	if (r < 0 || fresh.count == 0) {
		ARRAY_FREE(&fresh);
		return r < 0 ? -1 : 0;
	}
	stor_txn_begin(db, &txn);
	r = stor_txn_mailbox(&txn, mailbox, &tm, error_r);
	if (r <= 0) {
		ARRAY_FREE(&fresh);
		stor_txn_free(&txn);
		return r < 0 ? -1 : stor_err(db, error_r, "mailbox does not exist");
	}
	if (stor_guid_tombs_put_txn(&txn, mailbox, fresh.items, fresh.count, modseq, error_r) < 0) {
		ARRAY_FREE(&fresh);
		stor_txn_free(&txn);
		return -1;
	}
	/* Its modseq is a change of the mailbox: a peer whose last sync is
	 * older compares the mailbox again and learns it. */
	if (modseq > tm->mb.highestmodseq) {
		tm->mb.highestmodseq = modseq;
		tm->dirty = true;
	}
	r = stor_txn_commit(&txn, error_r);
	if (r >= 0)
		*added_r = fresh.count;
	ARRAY_FREE(&fresh);
	return r < 0 ? -1 : 0;
}

void stor_guid_tomb_clear_txn(struct stor_txn *txn, const struct guid *mailbox,
			      const struct guid *guid)
{
	struct stor_key k;
	gtomb_key(&k, mailbox, guid);
	/* A read first: most appends meet no GUID tombstone, and a deletion
	 * of a key that is not there still costs LevelDB a marker. */
	if (stor_guid_tomb_get(txn->db, mailbox, guid, NULL, NULL) > 0)
		stor_batch_del(txn->wb, &k);
}
