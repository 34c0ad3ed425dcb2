/* Mailboxes: create, look up, rename, delete, list; subscriptions; raising
 * UIDNEXT/HIGHESTMODSEQ; and the consistency check of a mailbox record
 * against its messages. */
#include "storage/storage-private.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/clock.h"
#include "lib/mail-limits.h"
#include "lib/str.h"
#include "lib/xalloc.h"
#include "storage/storage-acl.h"

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

static int validate_name(struct stor_db *db, const char *name, const char **error_r)
{
	size_t n = name == NULL ? 0 : strlen(name);
	if (n == 0 || n > STOR_MAX_MAILBOX_NAME_LEN)
		return stor_err(db, error_r, "mailbox name must be 1..%d bytes",
				STOR_MAX_MAILBOX_NAME_LEN);
	for (size_t i = 0; i < n; i++) {
		/* Control characters would break line-based dumps and
		 * protocols. */
		if ((unsigned char)name[i] < 0x20 || name[i] == 0x7f)
			return stor_err(db, error_r, "invalid character in mailbox name");
	}
	return 0;
}

static void key_user_name(struct stor_key *k, char prefix, const char *user, const char *name)
{
	stor_key_init(k, prefix);
	stor_key_bytes(k, user, strlen(user) + 1);
	if (name != NULL)
		stor_key_bytes(k, name, strlen(name));
}

static void tomb_key(struct stor_key *k, const char *user, const struct guid *guid)
{
	key_user_name(k, STOR_KEY_MAILBOX_TOMB, user, NULL);
	if (guid != NULL)
		stor_key_guid(k, guid);
}

/* The value: deleted_ms64, uidnext32, highestmodseq64 (0 and 0: not known
 * here), name. */
#define TOMB_FIXED 20

static void tomb_put(struct stor_batch *wb, const char *user, const struct guid *guid,
		     const char *name, uint32_t uidnext, uint64_t highestmodseq)
{
	struct stor_key k;
	struct buf v = BUF_INIT;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	buf_append_be64(&v, (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000);
	buf_append_be32(&v, uidnext);
	buf_append_be64(&v, highestmodseq);
	buf_append_str(&v, name);
	tomb_key(&k, user, guid);
	stor_batch_put(wb, &k, v.data, v.len);
	buf_free(&v);
}

static void mailbox_key(struct stor_key *k, const struct guid *guid)
{
	stor_key_init(k, STOR_KEY_MAILBOX);
	stor_key_guid(k, guid);
}

int stor_mailbox_get_by_guid(struct stor_db *db, const struct guid *guid,
			     struct stor_mailbox *mb_r, const char **error_r)
{
	struct stor_key k;
	char *v;
	size_t len;
	mailbox_key(&k, guid);
	int ret = stor_db_get(db, &k, &v, &len, error_r);
	if (ret <= 0)
		return ret;
	struct stor_mailbox mb;
	if (stor_mailbox_decode(v, len, &mb) < 0 || guid_cmp(&mb.guid, guid) != 0) {
		if (mb.user != NULL)
			stor_mailbox_free(&mb);
		free(v);
		return stor_err_corrupt(db, error_r, "mailbox");
	}
	free(v);
	if (mb_r != NULL)
		*mb_r = mb;
	else
		stor_mailbox_free(&mb);
	return 1;
}

/* The GUID named by (user, name): 1, 0, -1. */
static int name_lookup(struct stor_db *db, const char *user, const char *name, struct guid *guid_r,
		       const char **error_r)
{
	struct stor_key k;
	char *v;
	size_t len;
	key_user_name(&k, STOR_KEY_NAME, user, name);
	int ret = stor_db_get(db, &k, &v, &len, error_r);
	if (ret <= 0)
		return ret;
	if (len != GUID_SIZE) {
		free(v);
		return stor_err_corrupt(db, error_r, "mailbox name");
	}
	memcpy(guid_r->b, v, GUID_SIZE);
	free(v);
	return 1;
}

int stor_mailbox_get(struct stor_db *db, const char *user, const char *name,
		     struct stor_mailbox *mb_r, const char **error_r)
{
	struct guid guid;
	if (validate_user(db, user, error_r) < 0 || validate_name(db, name, error_r) < 0)
		return -1;
	int ret = name_lookup(db, user, name, &guid, error_r);
	if (ret <= 0)
		return ret;
	struct stor_mailbox mb;
	ret = stor_mailbox_get_by_guid(db, &guid, &mb, error_r);
	if (ret == 0)
		return stor_err_corrupt(db, error_r, "mailbox name (no mailbox)");
	if (ret < 0)
		return -1;
	if (strcmp(mb.user, user) != 0 || strcmp(mb.name, name) != 0) {
		stor_mailbox_free(&mb);
		return stor_err_corrupt(db, error_r, "mailbox name (mismatch)");
	}
	if (mb_r != NULL)
		*mb_r = mb;
	else
		stor_mailbox_free(&mb);
	return 1;
}

/* UIDVALIDITY: the current time, but strictly above any chosen before in
 * this store, so two mailboxes created in the same second differ. */
static int next_uidvalidity(struct stor_db *db, uint32_t given, uint32_t *uv_r,
			    struct stor_batch *wb, const char **error_r)
{
	struct stor_key k;
	char *v;
	size_t len;
	uint32_t last = 0;
	stor_key_init(&k, STOR_KEY_INTERNAL);
	stor_key_bytes(&k, "uidvalidity", 11);
	int ret = stor_db_get(db, &k, &v, &len, error_r);
	if (ret < 0)
		return -1;
	if (ret > 0) {
		if (len != 4) {
			free(v);
			return stor_err_corrupt(db, error_r, "uidvalidity counter");
		}
		last = stor_be32((unsigned char *)v);
		free(v);
	}
	uint32_t uv = given;
	if (uv == 0) {
		int64_t now = clock_wall_s();
		uv = now > 0 && now < UINT32_MAX ? (uint32_t)now : 1;
		if (uv <= last)
			uv = last + 1;
		if (uv == 0)
			return stor_err(db, error_r, "UIDVALIDITY space exhausted");
	}
	if (uv > last) {
		unsigned char b[4] = { uv >> 24, uv >> 16, uv >> 8, uv };
		stor_batch_put(wb, &k, b, 4);
	}
	*uv_r = uv;
	return 0;
}

int stor_mailbox_create(struct stor_db *db, const struct stor_mailbox_create *req,
			struct stor_mailbox *mb_r, const char **error_r)
{
	struct stor_mailbox mb;
	struct guid existing;
	struct stor_key k;

	if (validate_user(db, req->user, error_r) < 0 ||
	    validate_name(db, req->name, error_r) < 0)
		return -1;
	if (req->special_use != NULL && strlen(req->special_use) >= sizeof(mb.special_use))
		return stor_err(db, error_r, "special-use attribute too long");
	int ret = name_lookup(db, req->user, req->name, &existing, error_r);
	if (ret < 0)
		return -1;
	if (ret > 0)
		return stor_err(db, error_r, "mailbox already exists");

	memset(&mb, 0, sizeof(mb));
	if (req->guid != NULL) {
		if (guid_is_zero(req->guid))
			return stor_err(db, error_r, "mailbox GUID is zero");
		mb.guid = *req->guid;
		ret = stor_mailbox_get_by_guid(db, &mb.guid, NULL, error_r);
		if (ret < 0)
			return -1;
		if (ret > 0)
			return stor_err(db, error_r, "mailbox GUID belongs to another mailbox");
	} else {
		guid_generate(&mb.guid);
	}
	struct stor_batch *wb = stor_batch_new();
	if (next_uidvalidity(db, req->uidvalidity, &mb.uidvalidity, wb, error_r) < 0) {
		stor_batch_free(wb);
		return -1;
	}
	mb.user = xstrdup(req->user);
	mb.name = xstrdup(req->name);
	mb.uidnext = 1;
	if (req->special_use != NULL)
		strcpy(mb.special_use, req->special_use);

	struct buf v = BUF_INIT;
	stor_mailbox_encode(&mb, &v);
	mailbox_key(&k, &mb.guid);
	stor_batch_put(wb, &k, v.data, v.len);
	buf_free(&v);
	key_user_name(&k, STOR_KEY_NAME, mb.user, mb.name);
	stor_batch_put(wb, &k, mb.guid.b, GUID_SIZE);
	tomb_key(&k, mb.user, &mb.guid);
	stor_batch_del(wb, &k);
	ret = stor_db_write(db, wb, error_r);
	stor_batch_free(wb);
	if (ret == 0 && mb_r != NULL)
		*mb_r = mb;
	else
		stor_mailbox_free(&mb);
	return ret;
}

/* Adds deletes of every key under prefix to the batch; calls fn (if not
 * NULL) for each. */
static int delete_prefix(struct stor_db *db, struct stor_batch *wb, const struct stor_key *prefix,
			 int (*fn)(void *ctx, const unsigned char *key, size_t klen,
				   const char *val, size_t vlen),
			 void *ctx, const char **error_r)
{
	leveldb_iterator_t *it = stor_iter_seek(db, prefix);
	const unsigned char *key;
	size_t klen;
	int ret = 0;
	while (ret == 0 && stor_iter_in(it, prefix, &key, &klen)) {
		if (fn != NULL) {
			size_t vlen;
			const char *val = leveldb_iter_value(it, &vlen);
			ret = fn(ctx, key, klen, val, vlen);
		}
		stor_batch_del_raw(wb, key, klen);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, error_r) < 0)
		return -1;
	return ret;
}

struct delete_ctx {
	struct stor_txn *txn;
	const struct guid *mailbox;
	bool bad;
};

static int delete_msg_cb(void *ctx, const unsigned char *key, size_t klen, const char *val,
			 size_t vlen)
{
	struct delete_ctx *dc = ctx;
	struct stor_msg msg;
	struct stor_key k;
	if (klen != 1 + GUID_SIZE + 4 ||
	    stor_msg_decode(stor_be32(key + 1 + GUID_SIZE), val, vlen, &msg) < 0) {
		dc->bad = true;
		return -1;
	}
	stor_txn_text_ref(dc->txn, &msg.guid, -1);
	stor_key_init(&k, STOR_KEY_GUID);
	stor_key_guid(&k, dc->mailbox);
	stor_key_guid(&k, &msg.guid);
	stor_key_u32(&k, msg.uid);
	stor_batch_del(dc->txn->wb, &k);
	stor_msg_free(&msg);
	return 0;
}

int stor_mailbox_delete(struct stor_db *db, const struct guid *guid, const char **error_r)
{
	struct stor_txn txn;
	struct stor_txn_mailbox *tm;
	struct stor_key k;
	stor_txn_begin(db, &txn);
	int ret = stor_txn_mailbox(&txn, guid, &tm, error_r);
	if (ret <= 0) {
		stor_txn_free(&txn);
		return ret < 0 ? -1 : stor_err(db, error_r, "mailbox does not exist");
	}
	struct delete_ctx dc = { &txn, guid, false };
	stor_key_init(&k, STOR_KEY_MSG);
	stor_key_guid(&k, guid);
	ret = delete_prefix(db, txn.wb, &k, delete_msg_cb, &dc, error_r);
	if (ret < 0 && dc.bad)
		ret = stor_err_corrupt(db, error_r, "message");
	static const char others[] = {
		STOR_KEY_MODSEQ, STOR_KEY_GUID, STOR_KEY_TOMB, STOR_KEY_TOMB_MODSEQ,
		STOR_KEY_SYNCSTATE, STOR_KEY_GUID_TOMB,
		STOR_KEY_PSEEN, STOR_KEY_PSEEN_MODSEQ, STOR_KEY_PSEEN_COUNT,
	};
	for (size_t i = 0; i < sizeof(others) && ret == 0; i++) {
		stor_key_init(&k, others[i]);
		stor_key_guid(&k, guid);
		ret = delete_prefix(db, txn.wb, &k, NULL, NULL, error_r);
	}
	if (ret == 0)
		ret = stor_acl_delete_mailbox(db, txn.wb, tm->mb.user, guid, error_r);
	if (ret < 0) {
		stor_txn_free(&txn);
		return -1;
	}
	key_user_name(&k, STOR_KEY_NAME, tm->mb.user, tm->mb.name);
	stor_batch_del(txn.wb, &k);
	mailbox_key(&k, guid);
	stor_batch_del(txn.wb, &k);
	tomb_put(txn.wb, tm->mb.user, guid, tm->mb.name, tm->mb.uidnext, tm->mb.highestmodseq);
	/* The record is gone: don't let commit write it back. */
	tm->dirty = false;
	return stor_txn_commit(&txn, error_r);
}

/* The names a mailbox had here before, newest last, at most
 * STOR_OLD_NAMES_MAX of them, one a line, in the meta value
 * "mbname.<guid hex>".  The list merge reads them: a mailbox that reached
 * a peer by another way (a third node, a bundle) is in no common list, and
 * a peer's name that this node renamed away from is older than ours. */
#define STOR_OLD_NAMES_MAX 8

static char *old_names_key(const struct guid *guid)
{
	char hex[GUID_HEX_SIZE];
	guid_to_hex(guid, hex);
	return xasprintf("mbname.%.*s", (int)sizeof(hex), hex);
}

static int old_names_add(struct stor_db *db, struct stor_txn *txn, const struct guid *guid,
			 const char *old_name, const char **error_r)
{
	struct buf v = BUF_INIT;
	char *name = old_names_key(guid);
	if (stor_meta_get(db, name, &v, error_r) < 0) {
		buf_free(&v);
		free(name);
		return -1;
	}
	buf_append(&v, old_name, strlen(old_name));
	buf_append_byte(&v, '\n');
	/* Keep the newest few: older ones only matter for a peer that missed
	 * that many renames, where the common list decides as before. */
	size_t lines = 0, start = 0;
	for (size_t i = v.len; i > 0; i--) {
		if (v.data[i - 1] == '\n' && ++lines > STOR_OLD_NAMES_MAX) {
			start = i;
			break;
		}
	}
	struct stor_key k;
	stor_key_init(&k, STOR_KEY_META);
	stor_key_bytes(&k, name, strlen(name));
	stor_batch_put(txn->wb, &k, v.data + start, v.len - start);
	buf_free(&v);
	free(name);
	return 0;
}

int stor_mailbox_old_name(struct stor_db *db, const struct guid *guid, const char *name,
			  const char **error_r)
{
	struct buf v = BUF_INIT;
	char *key = old_names_key(guid);
	int r = stor_meta_get(db, key, &v, error_r);
	free(key);
	int found = 0;
	if (r > 0) {
		size_t n = strlen(name);
		const char *p = (const char *)v.data, *end = p + v.len;
		while (p < end && found == 0) {
			const char *nl = memchr(p, '\n', (size_t)(end - p));
			if (nl == NULL)
				nl = end;
			if ((size_t)(nl - p) == n && memcmp(p, name, n) == 0)
				found = 1;
			p = nl + 1;
		}
	}
	buf_free(&v);
	return r < 0 ? -1 : found;
}

/* The rename stamp of a mailbox, in the meta value "mbrstamp.<guid hex>"
 * (decimal), apart from the mailbox record so that the record's encoding
 * and `starling dump` stay as they are. */
static char *rename_stamp_key(const struct guid *guid)
{
	char hex[GUID_HEX_SIZE];
	guid_to_hex(guid, hex);
	return xasprintf("mbrstamp.%.*s", (int)sizeof(hex), hex);
}

int stor_mailbox_rename_stamp(struct stor_db *db, const struct guid *guid, uint64_t *stamp_r,
			      const char **error_r)
{
	struct buf v = BUF_INIT;
	char *key = rename_stamp_key(guid);
	int r = stor_meta_get(db, key, &v, error_r);
	free(key);
	*stamp_r = 0;
	if (r > 0) {
		char tmp[24];
		uint64_t n;
		if (v.len == 0 || v.len >= sizeof(tmp)) {
			buf_free(&v);
			return stor_err_corrupt(db, error_r, "mailbox rename stamp");
		}
		memcpy(tmp, v.data, v.len);
		tmp[v.len] = '\0';
		if (str_to_u64(tmp, INT64_MAX, &n) < 0) {
			buf_free(&v);
			return stor_err_corrupt(db, error_r, "mailbox rename stamp");
		}
		*stamp_r = n;
	}
	buf_free(&v);
	return r < 0 ? -1 : 0;
}

uint64_t stor_rename_stamp_next(uint64_t current, uint64_t now_ms, uint32_t sid)
{
	uint64_t ms = current >> STOR_RENAME_STAMP_SID_BITS;
	ms = now_ms > ms ? now_ms : ms + 1;
	/* Bounded like every wire number (SPEC.md 1): 2^47 ms is year 6429. */
	if (ms >= ((uint64_t)1 << (63 - STOR_RENAME_STAMP_SID_BITS)))
		ms = ((uint64_t)1 << (63 - STOR_RENAME_STAMP_SID_BITS)) - 1;
	return (ms << STOR_RENAME_STAMP_SID_BITS) |
	       (sid & (((uint32_t)1 << STOR_RENAME_STAMP_SID_BITS) - 1));
}

static int mailbox_rename(struct stor_db *db, const struct guid *guid, const char *new_name,
			  bool set_stamp, uint64_t stamp, const char **error_r)
{
	struct stor_txn txn;
	struct stor_txn_mailbox *tm;
	struct stor_key k;
	struct guid other;
	if (validate_name(db, new_name, error_r) < 0)
		return -1;
	if (set_stamp && stamp > INT64_MAX)
		return stor_err(db, error_r, "rename stamp out of range");
	stor_txn_begin(db, &txn);
	int ret = stor_txn_mailbox(&txn, guid, &tm, error_r);
	if (ret <= 0) {
		stor_txn_free(&txn);
		return ret < 0 ? -1 : stor_err(db, error_r, "mailbox does not exist");
	}
	if (set_stamp) {
		char *name = rename_stamp_key(guid);
		char num[24];
		int n = snprintf(num, sizeof(num), "%llu", (unsigned long long)stamp);
		stor_key_init(&k, STOR_KEY_META);
		stor_key_bytes(&k, name, strlen(name));
		stor_batch_put(txn.wb, &k, num, (size_t)n);
		free(name);
	}
	if (strcmp(tm->mb.name, new_name) == 0) {
		if (!set_stamp) {
			stor_txn_free(&txn);
			return 0;
		}
		return stor_txn_commit(&txn, error_r);
	}
	ret = name_lookup(db, tm->mb.user, new_name, &other, error_r);
	if (ret != 0) {
		stor_txn_free(&txn);
		return ret < 0 ? -1 : stor_err(db, error_r, "mailbox already exists");
	}
	if (old_names_add(db, &txn, guid, tm->mb.name, error_r) < 0) {
		stor_txn_free(&txn);
		return -1;
	}
	key_user_name(&k, STOR_KEY_NAME, tm->mb.user, tm->mb.name);
	stor_batch_del(txn.wb, &k);
	key_user_name(&k, STOR_KEY_NAME, tm->mb.user, new_name);
	stor_batch_put(txn.wb, &k, guid->b, GUID_SIZE);
	free(tm->mb.name);
	tm->mb.name = xstrdup(new_name);
	tm->dirty = true;
	return stor_txn_commit(&txn, error_r);
}

int stor_mailbox_rename(struct stor_db *db, const struct guid *guid, const char *new_name,
			const char **error_r)
{
	return mailbox_rename(db, guid, new_name, false, 0, error_r);
}

int stor_mailbox_rename_stamped(struct stor_db *db, const struct guid *guid, const char *new_name,
				uint64_t stamp, const char **error_r)
{
	return mailbox_rename(db, guid, new_name, true, stamp, error_r);
}

int stor_mailbox_list(struct stor_db *db, const char *user, stor_mailbox_array *list_r,
		      const char **error_r)
{
	struct stor_key prefix;
	const unsigned char *key;
	size_t klen;
	stor_mailbox_array list = ARRAY_INIT;
	if (validate_user(db, user, error_r) < 0)
		return -1;
	key_user_name(&prefix, STOR_KEY_NAME, user, NULL);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	int ret = 0;
	while (ret == 0 && stor_iter_in(it, &prefix, &key, &klen)) {
		size_t vlen;
		const char *val = leveldb_iter_value(it, &vlen);
		struct guid guid;
		struct stor_mailbox mb;
		if (vlen != GUID_SIZE) {
			ret = stor_err_corrupt(db, error_r, "mailbox name");
			break;
		}
		memcpy(guid.b, val, GUID_SIZE);
		ret = stor_mailbox_get_by_guid(db, &guid, &mb, error_r);
		if (ret == 0)
			ret = stor_err_corrupt(db, error_r, "mailbox name (no mailbox)");
		if (ret < 0)
			break;
		ret = 0;
		ARRAY_PUSH(&list, mb);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	if (ret < 0) {
		stor_mailbox_list_free(&list);
		return -1;
	}
	*list_r = list;
	return 0;
}

int stor_user_list(struct stor_db *db, stor_string_list *users_r, const char **error_r)
{
	struct stor_key prefix, k;
	const unsigned char *key;
	size_t klen;
	stor_string_list users = ARRAY_INIT;
	stor_key_init(&prefix, STOR_KEY_NAME);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	int ret = 0;
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		const unsigned char *nul = memchr(key + 1, '\0', klen - 1);
		if (nul == NULL || nul == key + 1) {
			ret = stor_err_corrupt(db, error_r, "mailbox name key");
			break;
		}
		ARRAY_PUSH(&users, xstrndup((const char *)key + 1, (size_t)(nul - key - 1)));
		/* Skip the rest of this user's mailboxes: seek past user\0. */
		stor_key_init(&k, STOR_KEY_NAME);
		stor_key_bytes(&k, key + 1, (size_t)(nul - key - 1));
		stor_key_bytes(&k, "\001", 1);
		leveldb_iter_seek(it, (const char *)k.b, k.len);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	if (ret < 0) {
		stor_string_list_free(&users);
		return -1;
	}
	*users_r = users;
	return 0;
}

int stor_subscribe(struct stor_db *db, const char *user, const char *name, bool subscribed,
		   const char **error_r)
{
	struct stor_key k;
	if (validate_user(db, user, error_r) < 0 || validate_name(db, name, error_r) < 0)
		return -1;
	struct stor_key gone;
	key_user_name(&k, STOR_KEY_SUBSCRIPTION, user, name);
	key_user_name(&gone, STOR_KEY_UNSUBSCRIBED, user, name);
	struct stor_batch *wb = stor_batch_new();
	if (subscribed) {
		stor_batch_put(wb, &k, "", 0);
		stor_batch_del(wb, &gone);
	} else {
		stor_batch_del(wb, &k);
		stor_batch_put(wb, &gone, "", 0);
	}
	int ret = stor_db_write(db, wb, error_r);
	stor_batch_free(wb);
	return ret;
}

static int list_names(struct stor_db *db, char kind, const char *user, stor_string_list *names_r,
		      const char **error_r)
{
	struct stor_key prefix;
	const unsigned char *key;
	size_t klen;
	stor_string_list names = ARRAY_INIT;
	if (validate_user(db, user, error_r) < 0)
		return -1;
	key_user_name(&prefix, kind, user, NULL);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		ARRAY_PUSH(&names, xstrndup((const char *)key + prefix.len, klen - prefix.len));
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, error_r) < 0) {
		stor_string_list_free(&names);
		return -1;
	}
	*names_r = names;
	return 0;
}

int stor_subscriptions(struct stor_db *db, const char *user, stor_string_list *names_r,
		       const char **error_r)
{
	return list_names(db, STOR_KEY_SUBSCRIPTION, user, names_r, error_r);
}

int stor_unsubscribed(struct stor_db *db, const char *user, stor_string_list *names_r,
		      const char **error_r)
{
	return list_names(db, STOR_KEY_UNSUBSCRIBED, user, names_r, error_r);
}

int stor_mailbox_tomb_add(struct stor_db *db, const char *user, const struct guid *guid,
			  const char *name, const char **error_r)
{
	if (validate_user(db, user, error_r) < 0 || validate_name(db, name, error_r) < 0)
		return -1;
	int ret = stor_mailbox_get_by_guid(db, guid, NULL, error_r);
	if (ret != 0)
		return ret < 0 ? -1 : stor_err(db, error_r, "the mailbox exists");
	struct stor_batch *wb = stor_batch_new();
	tomb_put(wb, user, guid, name, 0, 0);
	ret = stor_db_write(db, wb, error_r);
	stor_batch_free(wb);
	return ret;
}

int stor_mailbox_tomb_get(struct stor_db *db, const char *user, const struct guid *guid,
			  uint32_t *uidnext_r, uint64_t *highestmodseq_r, const char **error_r)
{
	struct stor_key k;
	char *v = NULL;
	size_t len;
	if (validate_user(db, user, error_r) < 0)
		return -1;
	tomb_key(&k, user, guid);
	int ret = stor_db_get(db, &k, &v, &len, error_r);
	if (ret > 0 && len < TOMB_FIXED)
		ret = stor_err_corrupt(db, error_r, "mailbox tombstone");
	if (ret > 0 && uidnext_r != NULL)
		*uidnext_r = stor_be32((const unsigned char *)v + 8);
	if (ret > 0 && highestmodseq_r != NULL)
		*highestmodseq_r = stor_be64((const unsigned char *)v + 12);
	free(v);
	return ret;
}

int stor_mailbox_tombs(struct stor_db *db, const char *user, stor_mailbox_tomb_list *list_r,
		       const char **error_r)
{
	struct stor_key prefix;
	const unsigned char *key, *val;
	size_t klen, vlen;
	stor_mailbox_tomb_list list = ARRAY_INIT;
	if (validate_user(db, user, error_r) < 0)
		return -1;
	tomb_key(&prefix, user, NULL);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	int ret = 0;
	while (ret == 0 && stor_iter_in(it, &prefix, &key, &klen)) {
		val = (const unsigned char *)leveldb_iter_value(it, &vlen);
		if (klen != prefix.len + GUID_SIZE || vlen < TOMB_FIXED ||
		    vlen - TOMB_FIXED > STOR_MAX_MAILBOX_NAME_LEN) {
			ret = stor_err_corrupt(db, error_r, "mailbox tombstone");
			break;
		}
		struct stor_mailbox_tomb t;
		memcpy(t.guid.b, key + prefix.len, GUID_SIZE);
		t.deleted_ms = (int64_t)stor_be64(val);
		t.uidnext = stor_be32(val + 8);
		t.highestmodseq = stor_be64(val + 12);
		t.name = xstrndup((const char *)val + TOMB_FIXED, vlen - TOMB_FIXED);
		ARRAY_PUSH(&list, t);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0 || ret < 0) {
		stor_mailbox_tomb_list_free(&list);
		return -1;
	}
	*list_r = list;
	return 0;
}

void stor_mailbox_tomb_list_free(stor_mailbox_tomb_list *list)
{
	for (size_t i = 0; i < list->count; i++)
		free(list->items[i].name);
	ARRAY_FREE(list);
}

int stor_mailbox_raise(struct stor_db *db, const struct guid *mailbox, uint32_t uidnext,
		       uint64_t highestmodseq, const char **error_r)
{
	struct stor_txn txn;
	struct stor_txn_mailbox *tm;
	if (uidnext > MAIL_UIDNEXT_MAX || !mail_modseq_valid(highestmodseq))
		return stor_err(db, error_r, "UIDNEXT %u or HIGHESTMODSEQ %llu is out of range",
				uidnext, (unsigned long long)highestmodseq);
	stor_txn_begin(db, &txn);
	int ret = stor_txn_mailbox(&txn, mailbox, &tm, error_r);
	if (ret <= 0) {
		stor_txn_free(&txn);
		return ret < 0 ? -1 : stor_err(db, error_r, "mailbox does not exist");
	}
	if (uidnext > tm->mb.uidnext) {
		tm->mb.uidnext = uidnext;
		tm->dirty = true;
	}
	if (highestmodseq > tm->mb.highestmodseq) {
		tm->mb.highestmodseq = highestmodseq;
		tm->dirty = true;
	}
	if (!tm->dirty) {
		stor_txn_free(&txn);
		return 0;
	}
	return stor_txn_commit(&txn, error_r);
}
