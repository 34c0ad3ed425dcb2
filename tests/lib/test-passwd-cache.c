/* Unit tests of the verification cache (lib/passwd-cache.c) and of
 * passwd_verify_cached() (lib/passwd.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/passwd-cache.h"
#include "lib/passwd.h"
#include "lib/xalloc.h"
#include "tests/lib/tests.h"

static void write_users(const char *path, const char *content)
{
	FILE *f = fopen(path, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs(content, f);
	fclose(f);
}

static bool contains(const void *hay, size_t n, const char *needle)
{
	size_t k = strlen(needle);
	for (size_t i = 0; k <= n && i + k <= n; i++) {
		if (memcmp((const char *)hay + i, needle, k) == 0)
			return true;
	}
	return false;
}

/* A SHA512-CRYPT user: a hit is seen in the counters (the slow hash was
 * skipped), another password and a changed hash miss. */
static void test_cache_hit_and_misses(void)
{
	char *dir = test_mkdtemp();
	char *path = xasprintf("%s/users", dir);
	char *err = NULL;
	char *h1 = passwd_hash_sha512_crypt("first-pw");
	char *line = xasprintf("alice:%s\n", h1);
	write_users(path, line);
	struct passwd_cache *c = passwd_cache_create(16);

	CU_ASSERT_EQUAL(passwd_verify_cached(c, path, "alice", "first-pw", NULL, &err), 1);
	CU_ASSERT_EQUAL(c->hits, 0);
	CU_ASSERT_EQUAL(c->count, 1);
	CU_ASSERT_EQUAL(passwd_verify_cached(c, path, "alice", "first-pw", NULL, &err), 1);
	CU_ASSERT_EQUAL(c->hits, 1);

	/* Another password: a miss, and a failure is not cached. */
	CU_ASSERT_EQUAL(passwd_verify_cached(c, path, "alice", "wrong-pw", NULL, &err), 0);
	CU_ASSERT_EQUAL(passwd_verify_cached(c, path, "alice", "wrong-pw", NULL, &err), 0);
	CU_ASSERT_EQUAL(c->hits, 1);
	CU_ASSERT_EQUAL(c->count, 1);
	/* Another user with the same password does not hit alice's entry. */
	CU_ASSERT_EQUAL(passwd_verify_cached(c, path, "bob", "first-pw", NULL, &err), 0);
	CU_ASSERT_EQUAL(c->hits, 1);

	/* The line changes (new password): the old one fails at once. */
	char *h2 = passwd_hash_sha512_crypt("second-pw");
	CU_ASSERT_EQUAL(passwd_set(path, "alice", h2, &err), 0);
	CU_ASSERT_EQUAL(passwd_verify_cached(c, path, "alice", "first-pw", NULL, &err), 0);
	CU_ASSERT_EQUAL(passwd_verify_cached(c, path, "alice", "second-pw", NULL, &err), 1);
	CU_ASSERT_EQUAL(c->hits, 1);
	/* The same password rehashed with a new salt: the stored string
	 * differs, so it must be verified again (a miss), and it succeeds. */
	char *h3 = passwd_hash_sha512_crypt("second-pw");
	CU_ASSERT_EQUAL(passwd_set(path, "alice", h3, &err), 0);
	unsigned long misses = c->misses;
	CU_ASSERT_EQUAL(passwd_verify_cached(c, path, "alice", "second-pw", NULL, &err), 1);
	CU_ASSERT_EQUAL(c->misses, misses + 1);

	/* The user deleted from the file: refused even with a cached password. */
	write_users(path, "# nobody\n");
	CU_ASSERT_EQUAL(passwd_verify_cached(c, path, "alice", "second-pw", NULL, &err), 0);

	/* A cluster record (other_hash): cached, and a changed record misses. */
	CU_ASSERT_EQUAL(passwd_verify_cached(c, path, "carol", "first-pw", h1, &err), 1);
	CU_ASSERT_EQUAL(passwd_verify_cached(c, path, "carol", "first-pw", h1, &err), 1);
	CU_ASSERT_EQUAL(c->hits, 2);
	CU_ASSERT_EQUAL(passwd_verify_cached(c, path, "carol", "first-pw", h2, &err), 0);
	CU_ASSERT_EQUAL(passwd_verify_cached(c, path, "carol", "first-pw", NULL, &err), 0);
	CU_ASSERT_PTR_NULL(err);

	passwd_cache_free(&c);
	CU_ASSERT_PTR_NULL(c);
	free(h1);
	free(h2);
	free(h3);
	free(line);
	free(path);
	test_rmtree(dir);
	free(dir);
}

static void digest_of(struct passwd_cache *c, int n, unsigned char *d)
{
	char user[32];
	snprintf(user, sizeof(user), "user%d", n);
	passwd_cache_digest(c, user, "{PLAIN}pw", "pw", d);
}

/* Never more than capacity entries; the least recently used goes first. */
static void test_cache_bound_lru(void)
{
	struct passwd_cache *c = passwd_cache_create(4);
	unsigned char d[8][PASSWD_CACHE_DIGEST_LEN];
	for (int i = 0; i < 8; i++)
		digest_of(c, i, d[i]);
	for (int i = 0; i < 4; i++)
		passwd_cache_add(c, d[i]);
	CU_ASSERT_EQUAL(c->count, 4);
	/* 0 used again: 1 is now the least recently used. */
	CU_ASSERT_TRUE(passwd_cache_lookup(c, d[0]));
	passwd_cache_add(c, d[4]);
	CU_ASSERT_EQUAL(c->count, 4);
	CU_ASSERT_EQUAL(c->evictions, 1);
	CU_ASSERT_FALSE(passwd_cache_lookup(c, d[1]));
	CU_ASSERT_TRUE(passwd_cache_lookup(c, d[0]));
	CU_ASSERT_TRUE(passwd_cache_lookup(c, d[2]));
	CU_ASSERT_TRUE(passwd_cache_lookup(c, d[3]));
	CU_ASSERT_TRUE(passwd_cache_lookup(c, d[4]));
	/* Adding one already there changes nothing but its place. */
	passwd_cache_add(c, d[4]);
	CU_ASSERT_EQUAL(c->count, 4);
	CU_ASSERT_EQUAL(c->evictions, 1);
	/* Many more: still 4, the last 4 added are there. */
	for (int round = 0; round < 50; round++) {
		for (int i = 0; i < 8; i++)
			passwd_cache_add(c, d[i]);
	}
	CU_ASSERT_EQUAL(c->count, 4);
	for (int i = 0; i < 8; i++)
		CU_ASSERT_EQUAL(passwd_cache_lookup(c, d[i]), i >= 4);

	/* Capacity 1 works too. */
	struct passwd_cache *one = passwd_cache_create(1);
	passwd_cache_add(one, d[0]);
	passwd_cache_add(one, d[1]);
	CU_ASSERT_FALSE(passwd_cache_lookup(one, d[0]));
	CU_ASSERT_TRUE(passwd_cache_lookup(one, d[1]));
	CU_ASSERT_EQUAL(one->count, 1);
	passwd_cache_free(&one);
	passwd_cache_free(&c);
}

/* Digests depend on every part and on the per-cache key; an entry holds
 * no password, user name or hash text. */
static void test_cache_no_plaintext(void)
{
	struct passwd_cache *a = passwd_cache_create(8), *b = passwd_cache_create(8);
	unsigned char x[PASSWD_CACHE_DIGEST_LEN], y[PASSWD_CACHE_DIGEST_LEN];
	passwd_cache_digest(a, "ab", "{PLAIN}c", "d", x);
	passwd_cache_digest(a, "a", "b{PLAIN}c", "d", y);
	CU_ASSERT(memcmp(x, y, sizeof(x)) != 0);
	passwd_cache_digest(a, "ab", "{PLAIN}c", "e", y);
	CU_ASSERT(memcmp(x, y, sizeof(x)) != 0);
	passwd_cache_digest(b, "ab", "{PLAIN}c", "d", y);
	CU_ASSERT(memcmp(x, y, sizeof(x)) != 0); /* another key */
	passwd_cache_digest(a, "ab", "{PLAIN}c", "d", y);
	CU_ASSERT(memcmp(x, y, sizeof(x)) == 0);

	CU_ASSERT_EQUAL(sizeof(struct passwd_cache_entry), PASSWD_CACHE_DIGEST_LEN + 3 * sizeof(uint32_t));
	char *dir = test_mkdtemp();
	char *path = xasprintf("%s/users", dir);
	char *err = NULL;
	const char *pw = "Very-Secret-Password-1234";
	write_users(path, "someuser:{PLAIN}Very-Secret-Password-1234\n");
	CU_ASSERT_EQUAL(passwd_verify_cached(a, path, "someuser", pw, NULL, &err), 1);
	CU_ASSERT_EQUAL(a->count, 1);
	size_t n = (size_t)a->capacity * sizeof(*a->entries);
	CU_ASSERT_FALSE(contains(a->entries, n, pw));
	CU_ASSERT_FALSE(contains(a->entries, n, "Very-Secret"));
	CU_ASSERT_FALSE(contains(a->entries, n, "someuser"));
	CU_ASSERT_FALSE(contains(a, sizeof(*a), "Very-Secret"));
	free(path);
	test_rmtree(dir);
	free(dir);
	passwd_cache_free(&a);
	passwd_cache_free(&b);
}

const struct test_case lib_passwd_cache_cases[] = {
	{ "hit, miss on another password or a changed hash", test_cache_hit_and_misses },
	{ "bounded, least recently used evicted", test_cache_bound_lru },
	{ "no plaintext kept", test_cache_no_plaintext },
	{ NULL, NULL },
};
