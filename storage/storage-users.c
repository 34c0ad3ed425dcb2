/* The cluster's user table: see storage-users.h.  Value: stamp (8 bytes),
 * origin (4), flag (1: live, 0: tombstone), hash (length-prefixed). */
#include "storage/storage-users.h"

#include <stdlib.h>
#include <string.h>

#include "lib/xalloc.h"
#include "storage/storage-private.h"

#define STOR_KEY_CLUSTER_USER 'A'

void stor_cuser_free(struct stor_cuser *u)
{
	free(u->hash);
	u->hash = NULL;
}

void stor_cuser_list_free(stor_cuser_array *list)
{
	for (size_t i = 0; i < list->count; i++)
		stor_cuser_free(&list->items[i]);
	ARRAY_FREE(list);
}

bool stor_cuser_newer(const struct stor_cuser *a, const struct stor_cuser *b)
{
	if (a->stamp != b->stamp)
		return a->stamp > b->stamp;
	if ((a->hash == NULL) != (b->hash == NULL))
		return a->hash == NULL;
	if (a->origin != b->origin)
		return a->origin > b->origin;
	if (a->hash == NULL)
		return false;
	return strcmp(a->hash, b->hash) > 0;
}

static void cuser_key(struct stor_key *k, const char *name)
{
	stor_key_init(k, STOR_KEY_CLUSTER_USER);
	stor_key_bytes(k, name, strlen(name));
}

static int decode(struct stor_db *db, const char *name, size_t nlen, const void *v, size_t vlen,
		  struct stor_cuser *u_r, const char **error_r)
{
	memset(u_r, 0, sizeof(*u_r));
	if (nlen == 0 || nlen > STOR_MAX_USER_LEN)
		return stor_err_corrupt(db, error_r, "cluster user key");
	memcpy(u_r->name, name, nlen);
	u_r->name[nlen] = '\0';
	struct stor_dec d;
	stor_dec_init(&d, v, vlen);
	u_r->stamp = stor_get_u64(&d);
	u_r->origin = stor_get_u32(&d);
	uint8_t live = stor_get_u8(&d);
	char *hash = stor_get_str(&d, STOR_CUSER_MAX_HASH_LEN);
	if (d.bad || d.pos != d.len || live > 1) {
		free(hash);
		return stor_err_corrupt(db, error_r, "cluster user record");
	}
	if (live)
		u_r->hash = hash;
	else
		free(hash);
	return 0;
}

int stor_cuser_get(struct stor_db *db, const char *name, struct stor_cuser *u_r,
		   const char **error_r)
{
	memset(u_r, 0, sizeof(*u_r));
	size_t nlen = strlen(name);
	if (nlen == 0 || nlen > STOR_MAX_USER_LEN)
		return 0;
	struct stor_key k;
	cuser_key(&k, name);
	char *v;
	size_t vlen;
	int r = stor_db_get(db, &k, &v, &vlen, error_r);
	if (r <= 0)
		return r;
	r = decode(db, name, nlen, v, vlen, u_r, error_r);
	free(v);
	return r < 0 ? -1 : 1;
}

int stor_cuser_put(struct stor_db *db, const struct stor_cuser *u, bool *applied_r,
		   const char **error_r)
{
	*applied_r = false;
	size_t nlen = strlen(u->name);
	if (nlen == 0 || nlen > STOR_MAX_USER_LEN ||
	    (u->hash != NULL && strlen(u->hash) > STOR_CUSER_MAX_HASH_LEN))
		return stor_err(db, error_r, "invalid cluster user record");
	struct stor_cuser old;
	int r = stor_cuser_get(db, u->name, &old, error_r);
	if (r < 0)
		return -1;
	if (r > 0) {
		bool newer = stor_cuser_newer(u, &old);
		stor_cuser_free(&old);
		if (!newer)
			return 0;
	}
	struct buf v = BUF_INIT;
	stor_put_u64(&v, u->stamp);
	stor_put_u32(&v, u->origin);
	stor_put_u8(&v, u->hash != NULL ? 1 : 0);
	stor_put_str(&v, u->hash != NULL ? u->hash : "");
	struct stor_key k;
	cuser_key(&k, u->name);
	struct stor_batch *wb = stor_batch_new();
	stor_batch_put(wb, &k, v.data, v.len);
	int ret = stor_db_write(db, wb, error_r);
	stor_batch_free(wb);
	buf_free(&v);
	if (ret == 0)
		*applied_r = true;
	return ret;
}

int stor_cuser_list(struct stor_db *db, stor_cuser_array *list_r, const char **error_r)
{
	stor_cuser_array list = ARRAY_INIT;
	struct stor_key prefix;
	stor_key_init(&prefix, STOR_KEY_CLUSTER_USER);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	const unsigned char *key;
	size_t klen;
	int ret = 0;
	while (stor_iter_in(it, &prefix, &key, &klen)) {
		size_t vlen;
		const char *val = leveldb_iter_value(it, &vlen);
		struct stor_cuser u;
		if (decode(db, (const char *)key + 1, klen - 1, val, vlen, &u, error_r) < 0) {
			ret = -1;
			break;
		}
		ARRAY_PUSH(&list, u);
		leveldb_iter_next(it);
	}
	if (stor_iter_end(db, it, ret < 0 ? NULL : error_r) < 0)
		ret = -1;
	if (ret < 0) {
		stor_cuser_list_free(&list);
		return -1;
	}
	*list_r = list;
	return 0;
}
