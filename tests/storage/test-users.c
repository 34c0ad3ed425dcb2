/* Unit tests of the cluster's user table (storage/storage-users.c): the
 * merge order every node must agree on, tombstones, persistence. */
#include <stdlib.h>
#include <string.h>

#include "lib/xalloc.h"
#include "storage/storage-users.h"
#include "tests/storage/tests.h"

static struct stor_cuser rec(const char *name, uint64_t stamp, uint32_t origin, const char *hash)
{
	struct stor_cuser u;
	memset(&u, 0, sizeof(u));
	strcpy(u.name, name);
	u.stamp = stamp;
	u.origin = origin;
	u.hash = hash != NULL ? xstrdup(hash) : NULL;
	return u;
}

/* Puts r and frees it; returns whether it was applied. */
static bool put(struct stor_db *db, struct stor_cuser r)
{
	bool applied = false;
	const char *err;
	CU_ASSERT_EQUAL(stor_cuser_put(db, &r, &applied, &err), 0);
	stor_cuser_free(&r);
	return applied;
}

/* The hash held for name ("-" for a tombstone, "" for none). */
static char *held(struct stor_db *db, const char *name)
{
	struct stor_cuser u;
	const char *err;
	int r = stor_cuser_get(db, name, &u, &err);
	CU_ASSERT(r >= 0);
	if (r <= 0)
		return xstrdup("");
	char *s = xstrdup(u.hash != NULL ? u.hash : "-");
	stor_cuser_free(&u);
	return s;
}

static void check_held(struct stor_db *db, const char *name, const char *want)
{
	char *s = held(db, name);
	CU_ASSERT_STRING_EQUAL(s, want);
	free(s);
}

static void test_later_change_wins_and_tombstones_are_not_revived(void)
{
	struct tstore t;
	tstore_open(&t);
	CU_ASSERT_TRUE(put(t.db, rec("carol", 100, 1, "{PLAIN}a")));
	check_held(t.db, "carol", "{PLAIN}a");
	CU_ASSERT_TRUE(put(t.db, rec("carol", 200, 2, "{PLAIN}b")));
	/* An older change arriving late changes nothing. */
	CU_ASSERT_FALSE(put(t.db, rec("carol", 150, 3, "{PLAIN}c")));
	check_held(t.db, "carol", "{PLAIN}b");
	/* The same change twice: idempotent. */
	CU_ASSERT_FALSE(put(t.db, rec("carol", 200, 2, "{PLAIN}b")));
	CU_ASSERT_TRUE(put(t.db, rec("carol", 300, 1, NULL)));
	check_held(t.db, "carol", "-");
	CU_ASSERT_FALSE(put(t.db, rec("carol", 250, 2, "{PLAIN}d")));
	/* A tie: the delete wins, whichever came first. */
	CU_ASSERT_FALSE(put(t.db, rec("carol", 300, 9, "{PLAIN}e")));
	check_held(t.db, "carol", "-");
	CU_ASSERT_TRUE(put(t.db, rec("dave", 10, 1, "{PLAIN}x")));
	CU_ASSERT_TRUE(put(t.db, rec("dave", 10, 1, NULL)));
	check_held(t.db, "dave", "-");
	/* Added again later: back. */
	CU_ASSERT_TRUE(put(t.db, rec("carol", 400, 2, "{PLAIN}f")));
	/* Equal stamps of two live records: the higher origin, then the
	 * greater hash, on every node alike. */
	CU_ASSERT_TRUE(put(t.db, rec("erin", 5, 1, "{PLAIN}z")));
	CU_ASSERT_TRUE(put(t.db, rec("erin", 5, 2, "{PLAIN}a")));
	CU_ASSERT_FALSE(put(t.db, rec("erin", 5, 1, "{PLAIN}zz")));
	CU_ASSERT_TRUE(put(t.db, rec("erin", 5, 2, "{PLAIN}b")));
	check_held(t.db, "erin", "{PLAIN}b");
	check_held(t.db, "nobody", "");

	tstore_reopen(&t);
	check_held(t.db, "carol", "{PLAIN}f");
	stor_cuser_array list;
	const char *err;
	CU_ASSERT_EQUAL_FATAL(stor_cuser_list(t.db, &list, &err), 0);
	CU_ASSERT_EQUAL_FATAL(list.count, 3);
	CU_ASSERT_STRING_EQUAL(list.items[0].name, "carol");
	CU_ASSERT_STRING_EQUAL(list.items[1].name, "dave");
	CU_ASSERT_PTR_NULL(list.items[1].hash);
	CU_ASSERT_EQUAL(list.items[1].stamp, 10);
	CU_ASSERT_STRING_EQUAL(list.items[2].name, "erin");
	CU_ASSERT_EQUAL(list.items[2].origin, 2);
	stor_cuser_list_free(&list);
	/* Not users with mail. */
	stor_string_list users = ARRAY_INIT;
	CU_ASSERT_EQUAL(stor_user_list(t.db, &users, &err), 0);
	CU_ASSERT_EQUAL(users.count, 0);
	stor_string_list_free(&users);
	tstore_close(&t);
}

static void test_merge_order_does_not_matter(void)
{
	/* Every permutation of four changes to one name ends the same. */
	static const int perms[][4] = {
		{ 0, 1, 2, 3 }, { 3, 2, 1, 0 }, { 1, 3, 0, 2 }, { 2, 0, 3, 1 }, { 3, 0, 2, 1 },
	};
	for (size_t p = 0; p < sizeof(perms) / sizeof(perms[0]); p++) {
		struct tstore t;
		tstore_open(&t);
		for (int i = 0; i < 4; i++) {
			switch (perms[p][i]) {
			case 0: put(t.db, rec("u", 100, 1, "{PLAIN}one")); break;
			case 1: put(t.db, rec("u", 300, 2, NULL)); break;
			case 2: put(t.db, rec("u", 300, 3, "{PLAIN}three")); break;
			case 3: put(t.db, rec("u", 200, 3, "{PLAIN}two")); break;
			}
		}
		check_held(t.db, "u", "-");
		tstore_close(&t);
	}
}

static void test_invalid_records_are_refused(void)
{
	struct tstore t;
	tstore_open(&t);
	struct stor_cuser u = rec("x", 1, 1, NULL);
	u.hash = xmalloc(STOR_CUSER_MAX_HASH_LEN + 2);
	memset(u.hash, 'a', STOR_CUSER_MAX_HASH_LEN + 1);
	u.hash[STOR_CUSER_MAX_HASH_LEN + 1] = '\0';
	bool applied = true;
	const char *err;
	CU_ASSERT_EQUAL(stor_cuser_put(t.db, &u, &applied, &err), -1);
	CU_ASSERT_FALSE(applied);
	stor_cuser_free(&u);
	struct stor_cuser empty = rec("", 1, 1, "{PLAIN}a");
	CU_ASSERT_EQUAL(stor_cuser_put(t.db, &empty, &applied, &err), -1);
	stor_cuser_free(&empty);
	check_held(t.db, "x", "");
	tstore_close(&t);
}

const struct test_case storage_users_cases[] = {
	{ "later change wins; tombstones are not revived", test_later_change_wins_and_tombstones_are_not_revived },
	{ "merge order does not matter", test_merge_order_does_not_matter },
	{ "invalid records are refused", test_invalid_records_are_refused },
	{ NULL, NULL },
};
