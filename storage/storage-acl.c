/* Mailbox ACL records and the sharing index: see storage-acl.h.
 *
 *   'E' mbguid identifier            owner, rights, time_ms64
 *   'J' grantee \0 owner \0 mbguid   (empty) sharing index
 *
 * The index was first kept under 'K', the GUID tombstones' letter: a
 * grantee's prefix scan then met the tombstones of a mailbox whose GUID
 * began with the grantee's name and a NUL, and failed as corrupt.
 * stor_acl_index_upgrade() moves such a store's entries. */
#include "storage/storage-acl.h"

#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/xalloc.h"
#include "storage/acl-rights.h"
#include "storage/storage-private.h"

#define STOR_KEY_ACL 'E'
#define STOR_KEY_SHARE 'J'
#define STOR_KEY_SHARE_OLD 'K'
#define ACL_INDEX_META "acl.share_index"

void stor_acl_list_free(stor_acl_list *list)
{
	for (size_t i = 0; i < list->count; i++) {
		free(list->items[i].identifier);
		free(list->items[i].rights);
	}
	ARRAY_FREE(list);
}

void stor_share_list_free(stor_share_list *list)
{
	for (size_t i = 0; i < list->count; i++)
		free(list->items[i].owner);
	ARRAY_FREE(list);
}

static void acl_key(struct stor_key *k, const struct guid *mailbox, const char *identifier)
{
	stor_key_init(k, STOR_KEY_ACL);
	stor_key_guid(k, mailbox);
	if (identifier != NULL)
		stor_key_bytes(k, identifier, strlen(identifier));
}

static void share_key_in(struct stor_key *k, char letter, const char *grantee,
			 const char *owner, const struct guid *mailbox)
{
	stor_key_init(k, letter);
	stor_key_bytes(k, grantee, strlen(grantee));
	stor_key_bytes(k, "", 1);
	if (owner != NULL) {
		stor_key_bytes(k, owner, strlen(owner));
		stor_key_bytes(k, "", 1);
		stor_key_guid(k, mailbox);
	}
}

static void share_key(struct stor_key *k, const char *grantee, const char *owner,
		      const struct guid *mailbox)
{
	share_key_in(k, STOR_KEY_SHARE, grantee, owner, mailbox);
}

struct acl_rec {
	char *owner;
	char *rights;
	int64_t time_ms;
};

static int acl_rec_decode(const void *p, size_t len, struct acl_rec *r)
{
	struct stor_dec d;
	stor_dec_init(&d, p, len);
	r->owner = stor_get_str(&d, STOR_MAX_USER_LEN);
	r->rights = stor_get_str(&d, sizeof(ACL_LETTERS) - 1);
	r->time_ms = (int64_t)stor_get_u64(&d);
	if (!stor_dec_end(&d)) {
		free(r->owner);
		free(r->rights);
		return -1;
	}
	return 0;
}

/* 1 held (r filled), 0 none, -1 error. */
static int acl_rec_get(struct stor_db *db, const struct guid *mailbox, const char *identifier,
		       struct acl_rec *r, const char **error_r)
{
	struct stor_key k;
	acl_key(&k, mailbox, identifier);
	char *v;
	size_t len;
	int ret = stor_db_get(db, &k, &v, &len, error_r);
	if (ret <= 0)
		return ret;
	ret = acl_rec_decode(v, len, r);
	free(v);
	if (ret < 0)
		return stor_err_corrupt(db, error_r, "ACL record");
	return 1;
}

/* The index names grantees, never negative identifiers: those grant
 * nothing. */
static bool indexes(const char *identifier, const char *rights)
{
	return identifier[0] != '-' && rights[0] != '\0';
}

int stor_acl_put(struct stor_db *db, const char *owner, const struct guid *mailbox,
		 const char *identifier, const char *rights, int64_t time_ms, bool *applied_r,
		 const char **error_r)
{
	const char *why;
	uint32_t bits;
	if (applied_r != NULL)
		*applied_r = false;
	if (owner == NULL || owner[0] == '\0' || strlen(owner) > STOR_MAX_USER_LEN ||
	    !acl_owner_valid(owner))
		return stor_err(db, error_r, "invalid ACL owner");
	if (!acl_identifier_valid(identifier, strlen(identifier), &why))
		return stor_err(db, error_r, "%s", why);
	if (acl_rights_parse(rights, strlen(rights), &bits, &why) < 0)
		return stor_err(db, error_r, "%s", why);
	char canon[sizeof(ACL_LETTERS)];
	acl_rights_format(bits, canon);
	if (time_ms < 0)
		return stor_err(db, error_r, "invalid ACL time");
	/* A record that arrives after its mailbox was deleted here names
	 * nothing any more (SPEC.md 7.6). */
	struct stor_mailbox mb;
	int held = stor_mailbox_get_by_guid(db, mailbox, &mb, error_r);
	if (held < 0)
		return -1;
	if (held > 0) {
		/* A record under another owner would give rights on the
		 * mailbox that its owner never gave. */
		bool other = strcmp(mb.user, owner) != 0;
		stor_mailbox_free(&mb);
		if (other)
			return stor_err(db, error_r, "the mailbox has another owner");
	}
	if (held == 0) {
		int tomb = stor_mailbox_tomb_get(db, owner, mailbox, NULL, NULL, error_r);
		if (tomb != 0)
			return tomb < 0 ? -1 : 0;
	}
	struct acl_rec old;
	int have = acl_rec_get(db, mailbox, identifier, &old, error_r);
	if (have < 0)
		return -1;
	if (have > 0) {
		bool newer = time_ms > old.time_ms ||
			     (time_ms == old.time_ms && strcmp(canon, old.rights) > 0);
		bool same_owner = strcmp(old.owner, owner) == 0;
		if (!newer || !same_owner) {
			free(old.owner);
			free(old.rights);
			return same_owner ? 0 : stor_err(db, error_r, "the mailbox has another owner");
		}
	}
	struct stor_batch *wb = stor_batch_new();
	struct stor_key k;
	if (have > 0 && indexes(identifier, old.rights) && !indexes(identifier, canon)) {
		share_key(&k, identifier, owner, mailbox);
		stor_batch_del(wb, &k);
	}
	if (indexes(identifier, canon)) {
		share_key(&k, identifier, owner, mailbox);
		stor_batch_put(wb, &k, "", 0);
	}
	if (have > 0) {
		free(old.owner);
		free(old.rights);
	}
	struct buf v = BUF_INIT;
	stor_put_str(&v, owner);
	stor_put_str(&v, canon);
	stor_put_u64(&v, (uint64_t)time_ms);
	acl_key(&k, mailbox, identifier);
	stor_batch_put(wb, &k, v.data, v.len);
	buf_free(&v);
	int ret = stor_db_write(db, wb, error_r);
	stor_batch_free(wb);
	if (ret == 0 && applied_r != NULL)
		*applied_r = true;
	return ret;
}

int stor_acl_get(struct stor_db *db, const struct guid *mailbox, stor_acl_list *list_r,
		 const char **error_r)
{
	struct stor_key prefix;
	acl_key(&prefix, mailbox, NULL);
	stor_acl_list list = ARRAY_INIT;
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	const unsigned char *key;
	size_t klen;
	int ret = 0;
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		size_t vlen;
		const char *val = leveldb_iter_value(it, &vlen);
		struct acl_rec r;
		if (klen == prefix.len || acl_rec_decode(val, vlen, &r) < 0) {
			ret = stor_err_corrupt(db, error_r, "ACL record");
			break;
		}
		struct stor_acl a = {
			xstrndup((const char *)key + prefix.len, klen - prefix.len), r.rights,
			r.time_ms,
		};
		free(r.owner);
		ARRAY_PUSH(&list, a);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	if (ret < 0) {
		stor_acl_list_free(&list);
		return -1;
	}
	*list_r = list;
	return 0;
}

int stor_acl_next_time(struct stor_db *db, const struct guid *mailbox, const char *identifier,
		       int64_t *time_r, const char **error_r)
{
	struct acl_rec old;
	int have = acl_rec_get(db, mailbox, identifier, &old, error_r);
	if (have < 0)
		return -1;
	int64_t now = stor_now_ms();
	if (have > 0) {
		if (old.time_ms >= now)
			now = old.time_ms + 1;
		free(old.owner);
		free(old.rights);
	}
	*time_r = now;
	return 0;
}

int stor_acl_shared_with(struct stor_db *db, const char *grantee, stor_share_list *list_r,
			 const char **error_r)
{
	struct stor_key prefix;
	share_key(&prefix, grantee, NULL, NULL);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	const unsigned char *key;
	size_t klen;
	int ret = 0;
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		const unsigned char *owner = key + prefix.len;
		size_t rest = klen - prefix.len;
		const unsigned char *nul = memchr(owner, '\0', rest);
		if (nul == NULL || nul == owner || (size_t)(key + klen - (nul + 1)) != GUID_SIZE) {
			ret = stor_err_corrupt(db, error_r, "sharing index key");
			break;
		}
		struct stor_share s;
		s.owner = xstrndup((const char *)owner, (size_t)(nul - owner));
		memcpy(s.mailbox.b, nul + 1, GUID_SIZE);
		ARRAY_PUSH(list_r, s);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	return ret;
}

int stor_acl_delete_mailbox(struct stor_db *db, struct stor_batch *wb, const char *owner,
			    const struct guid *mailbox, const char **error_r)
{
	stor_acl_list list;
	if (stor_acl_get(db, mailbox, &list, error_r) < 0)
		return -1;
	struct stor_key k;
	for (size_t i = 0; i < list.count; i++) {
		acl_key(&k, mailbox, list.items[i].identifier);
		stor_batch_del(wb, &k);
		if (indexes(list.items[i].identifier, list.items[i].rights)) {
			share_key(&k, list.items[i].identifier, owner, mailbox);
			stor_batch_del(wb, &k);
		}
	}
	stor_acl_list_free(&list);
	return 0;
}

int stor_acl_index_upgrade(struct stor_db *db, const char **error_r)
{
	struct buf v = BUF_INIT;
	int have = stor_meta_get(db, ACL_INDEX_META, &v, error_r);
	bool done = have > 0 && v.len == 1 && v.data[0] == STOR_KEY_SHARE;
	buf_free(&v);
	if (have < 0)
		return -1;
	if (done)
		return 0;
	/* The old entries are exactly those the records imply, so each is
	 * deleted by its key, never by a scan of 'K' (which holds GUID
	 * tombstones).  An old entry has an empty value, a tombstone 8
	 * bytes: only an empty one goes. */
	struct stor_key prefix, k;
	stor_key_init(&prefix, STOR_KEY_ACL);
	struct stor_batch *wb = stor_batch_new();
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	const unsigned char *key;
	size_t klen;
	int ret = 0;
	while (ret == 0 && stor_iter_in(it, &prefix, &key, &klen)) {
		size_t vlen;
		const char *val = leveldb_iter_value(it, &vlen);
		struct acl_rec r;
		if (klen <= prefix.len + GUID_SIZE || acl_rec_decode(val, vlen, &r) < 0) {
			/* Reading that mailbox's ACL reports it; the store
			 * still opens. */
			log_warnx("%s: upgrading the sharing index: skipped an invalid ACL record",
				  db->dir);
			leveldb_iter_next(it);
			continue;
		}
		struct guid mb;
		memcpy(mb.b, key + prefix.len, GUID_SIZE);
		char *identifier = xstrndup((const char *)key + prefix.len + GUID_SIZE,
					    klen - prefix.len - GUID_SIZE);
		if (indexes(identifier, r.rights)) {
			share_key_in(&k, STOR_KEY_SHARE_OLD, identifier, r.owner, &mb);
			char *old;
			size_t olen;
			int got = stor_db_get(db, &k, &old, &olen, error_r);
			if (got < 0)
				ret = -1;
			if (got > 0) {
				if (olen == 0)
					stor_batch_del(wb, &k);
				free(old);
			}
			share_key(&k, identifier, r.owner, &mb);
			stor_batch_put(wb, &k, "", 0);
		}
		free(identifier);
		free(r.owner);
		free(r.rights);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	if (ret == 0) {
		char letter = STOR_KEY_SHARE;
		stor_key_init(&k, STOR_KEY_META);
		stor_key_bytes(&k, ACL_INDEX_META, strlen(ACL_INDEX_META));
		stor_batch_put(wb, &k, &letter, 1);
		ret = stor_db_write(db, wb, error_r);
	}
	stor_batch_free(wb);
	return ret;
}
