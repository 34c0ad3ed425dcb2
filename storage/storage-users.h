/* The cluster's user table (SPEC.md 7.5): one record per user name, a
 * password hash or a tombstone, replicated as a last-writer-wins register.
 *
 * Records live under their own key prefix, apart from everything a user's
 * mail uses, so stor_user_list() (users with mailboxes) does not see them. */
#ifndef STORAGE_STORAGE_USERS_H
#define STORAGE_STORAGE_USERS_H

#include <stdbool.h>
#include <stdint.h>

#include "lib/arr.h"
#include "storage/storage.h"

/* At most this many records (live and tombstones) in the table: the
 * whole table travels in one USER-LIST answer. */
#define STOR_CUSER_MAX_COUNT 100000
/* A hash is "{SCHEME}..." of a scheme lib/passwd.c verifies. */
#define STOR_CUSER_MAX_HASH_LEN 512

struct stor_cuser {
	char name[STOR_MAX_USER_LEN + 1];
	uint64_t stamp;  /* wall-clock ms of the change, made later than the one it replaced */
	uint32_t origin; /* SID of the node that made it */
	char *hash;      /* NULL: a tombstone (the user was deleted) */
};
typedef ARRAY(struct stor_cuser) stor_cuser_array;

void stor_cuser_free(struct stor_cuser *u);
void stor_cuser_list_free(stor_cuser_array *list);

/* True if a replaces b: a later stamp; on equal stamps a tombstone, then
 * the higher origin, then the greater hash.  A total order, so every node
 * keeps the same record whatever order changes arrive in. */
bool stor_cuser_newer(const struct stor_cuser *a, const struct stor_cuser *b);

/* 1 found (live or tombstone; free with stor_cuser_free), 0 none, -1 error. */
int stor_cuser_get(struct stor_db *db, const char *name, struct stor_cuser *u_r,
		   const char **error_r);
/* Stores u when the table has no record of its name or u is newer than it
 * (*applied_r tells which).  Durable only after the next stor_sync(). */
int stor_cuser_put(struct stor_db *db, const struct stor_cuser *u, bool *applied_r,
		   const char **error_r);
/* Every record, sorted by name. */
int stor_cuser_list(struct stor_db *db, stor_cuser_array *list_r, const char **error_r);

#endif
