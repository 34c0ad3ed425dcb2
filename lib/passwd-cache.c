/* Cache of successful password verifications: see passwd-cache.h. */
#include "lib/passwd-cache.h"

#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/str.h"
#include "lib/xalloc.h"

struct passwd_cache *passwd_cache_create(uint32_t capacity)
{
	if (capacity == 0)
		capacity = 1;
	struct passwd_cache *c = xcalloc(1, sizeof(*c));
	if (RAND_bytes(c->key, (int)sizeof(c->key)) != 1) {
		fprintf(stderr, "fatal: cannot get random bytes for the password cache\n");
		exit(1);
	}
	c->capacity = capacity;
	c->nbuckets = 1;
	/* About one entry per bucket when full. */
	while (c->nbuckets < capacity && c->nbuckets < (UINT32_C(1) << 30))
		c->nbuckets <<= 1;
	c->entries = xcalloc(capacity, sizeof(*c->entries));
	c->buckets = xmalloc((size_t)c->nbuckets * sizeof(*c->buckets));
	for (uint32_t i = 0; i < c->nbuckets; i++)
		c->buckets[i] = PASSWD_CACHE_NONE;
	c->lru_head = c->lru_tail = PASSWD_CACHE_NONE;
	return c;
}

void passwd_cache_free(struct passwd_cache **cp)
{
	struct passwd_cache *c = *cp;
	if (c == NULL)
		return;
	*cp = NULL;
	explicit_bzero(c->entries, (size_t)c->capacity * sizeof(*c->entries));
	explicit_bzero(c->key, sizeof(c->key));
	free(c->entries);
	free(c->buckets);
	free(c);
}

void passwd_cache_digest(const struct passwd_cache *c, const char *user, const char *stored_hash,
			 const char *password, unsigned char digest[PASSWD_CACHE_DIGEST_LEN])
{
	/* None of the three holds a NUL, so NUL separators keep the message
	 * unambiguous ("ab"+"c" differs from "a"+"bc"). */
	size_t ul = strlen(user), hl = strlen(stored_hash), pl = strlen(password);
	size_t len = ul + 1 + hl + 1 + pl;
	unsigned char *msg = xmalloc(len);
	memcpy(msg, user, ul + 1);
	memcpy(msg + ul + 1, stored_hash, hl + 1);
	memcpy(msg + ul + 1 + hl + 1, password, pl);
	unsigned dlen = 0;
	if (HMAC(EVP_sha256(), c->key, (int)sizeof(c->key), msg, len, digest, &dlen) == NULL ||
	    dlen != PASSWD_CACHE_DIGEST_LEN) {
		fprintf(stderr, "fatal: HMAC-SHA256 failed\n");
		exit(1);
	}
	explicit_bzero(msg, len);
	free(msg);
}

static uint32_t bucket_of(const struct passwd_cache *c, const unsigned char *digest)
{
	uint32_t h;
	memcpy(&h, digest, sizeof(h)); /* the digest is uniform already */
	return h & (c->nbuckets - 1);
}

static void lru_unlink(struct passwd_cache *c, uint32_t i)
{
	struct passwd_cache_entry *e = &c->entries[i];
	if (e->lru_prev != PASSWD_CACHE_NONE)
		c->entries[e->lru_prev].lru_next = e->lru_next;
	else
		c->lru_head = e->lru_next;
	if (e->lru_next != PASSWD_CACHE_NONE)
		c->entries[e->lru_next].lru_prev = e->lru_prev;
	else
		c->lru_tail = e->lru_prev;
}

static void lru_push_front(struct passwd_cache *c, uint32_t i)
{
	struct passwd_cache_entry *e = &c->entries[i];
	e->lru_prev = PASSWD_CACHE_NONE;
	e->lru_next = c->lru_head;
	if (c->lru_head != PASSWD_CACHE_NONE)
		c->entries[c->lru_head].lru_prev = i;
	c->lru_head = i;
	if (c->lru_tail == PASSWD_CACHE_NONE)
		c->lru_tail = i;
}

static uint32_t find(const struct passwd_cache *c, const unsigned char *digest)
{
	for (uint32_t i = c->buckets[bucket_of(c, digest)]; i != PASSWD_CACHE_NONE;
	     i = c->entries[i].chain) {
		if (mem_equal_ct(c->entries[i].digest, digest, PASSWD_CACHE_DIGEST_LEN))
			return i;
	}
	return PASSWD_CACHE_NONE;
}

bool passwd_cache_lookup(struct passwd_cache *c, const unsigned char digest[PASSWD_CACHE_DIGEST_LEN])
{
	uint32_t i = find(c, digest);
	if (i == PASSWD_CACHE_NONE) {
		c->misses++;
		return false;
	}
	c->hits++;
	if (c->lru_head != i) {
		lru_unlink(c, i);
		lru_push_front(c, i);
	}
	return true;
}

static void bucket_remove(struct passwd_cache *c, uint32_t i)
{
	uint32_t *p = &c->buckets[bucket_of(c, c->entries[i].digest)];
	while (*p != i)
		p = &c->entries[*p].chain;
	*p = c->entries[i].chain;
}

void passwd_cache_add(struct passwd_cache *c, const unsigned char digest[PASSWD_CACHE_DIGEST_LEN])
{
	uint32_t i = find(c, digest);
	if (i != PASSWD_CACHE_NONE) {
		if (c->lru_head != i) {
			lru_unlink(c, i);
			lru_push_front(c, i);
		}
		return;
	}
	if (c->count < c->capacity) {
		i = c->count++;
	} else {
		i = c->lru_tail;
		lru_unlink(c, i);
		bucket_remove(c, i);
		c->evictions++;
	}
	struct passwd_cache_entry *e = &c->entries[i];
	memcpy(e->digest, digest, PASSWD_CACHE_DIGEST_LEN);
	uint32_t b = bucket_of(c, digest);
	e->chain = c->buckets[b];
	c->buckets[b] = i;
	lru_push_front(c, i);
}
