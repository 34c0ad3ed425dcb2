/* A bounded cache of successful password verifications.
 *
 * Verifying a SHA512-CRYPT (or BLF-CRYPT) hash is slow on purpose, and a
 * client that logs in and out all the time pays it on every LOGIN.  After
 * a verification succeeded, the cache remembers an HMAC-SHA256, under a
 * random key made when the cache is created, of (user, stored hash,
 * password); a later check of the same three finds the digest and skips the
 * slow hash.
 *
 * Why it is safe:
 *  - the plain password is never kept: an entry is the 32-byte digest and
 *    list links, nothing else;
 *  - the stored hash is part of the digest, and the caller reads the
 *    current stored hash before each lookup, so a new password, an edited
 *    users_file line, a deleted user or a changed cluster record misses at
 *    once (no expiry needed for correctness);
 *  - only successes are added: a wrong password never hits, and so always
 *    costs a full verification (no fast "no" to guess against);
 *  - it is bounded (least recently used entry evicted).
 * Not thread-safe: one thread owns a cache. */
#ifndef LIB_PASSWD_CACHE_H
#define LIB_PASSWD_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PASSWD_CACHE_DIGEST_LEN 32

/* Exposed so that tests can check what an entry holds. */
struct passwd_cache_entry {
	unsigned char digest[PASSWD_CACHE_DIGEST_LEN];
	uint32_t lru_prev, lru_next; /* indexes; PASSWD_CACHE_NONE at the ends */
	uint32_t chain;		     /* next entry in the same bucket */
};

#define PASSWD_CACHE_NONE UINT32_MAX

struct passwd_cache {
	unsigned char key[32];
	struct passwd_cache_entry *entries; /* capacity of them, count in use */
	uint32_t *buckets;		    /* nbuckets heads, PASSWD_CACHE_NONE when empty */
	uint32_t capacity, count, nbuckets;
	uint32_t lru_head, lru_tail; /* most, least recently used */
	unsigned long hits, misses, evictions;
};

/* capacity: maximum entries, at least 1. */
struct passwd_cache *passwd_cache_create(uint32_t capacity);
void passwd_cache_free(struct passwd_cache **cache);

/* The digest of (user, stored_hash, password) under the cache's key. */
void passwd_cache_digest(const struct passwd_cache *cache, const char *user,
			 const char *stored_hash, const char *password,
			 unsigned char digest[PASSWD_CACHE_DIGEST_LEN]);

/* True when digest is cached (and makes it the most recently used). */
bool passwd_cache_lookup(struct passwd_cache *cache,
			 const unsigned char digest[PASSWD_CACHE_DIGEST_LEN]);

/* Adds digest, evicting the least recently used entry when full.  Call only
 * after the password verified against the stored hash. */
void passwd_cache_add(struct passwd_cache *cache,
		      const unsigned char digest[PASSWD_CACHE_DIGEST_LEN]);

#endif
