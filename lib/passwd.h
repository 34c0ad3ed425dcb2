/* passwd-file users (`name:{SCHEME}hash` lines, Dovecot-compatible).
 *
 * Schemes verified: SHA512-CRYPT, SHA256-CRYPT, MD5-CRYPT, BLF-CRYPT, CRYPT
 * (all through crypt_r), SHA512, SHA256, SSHA512, SSHA256 (base64), and
 * PLAIN/CLEARTEXT.  A line without {SCHEME} is treated as CRYPT, as Dovecot
 * does.  Extra ':'-separated fields after the hash are ignored. */
#ifndef LIB_PASSWD_H
#define LIB_PASSWD_H

#include <stdbool.h>
#include <stddef.h>

#define PASSWD_MAX_USER_LEN 255
#define PASSWD_MAX_PASSWORD_LEN 1024
#define PASSWD_MAX_HASH_LEN 512

/* Checks user/password against the file.  Returns 1 when they match, 0 when
 * the user is unknown or the password wrong (the same answer, and about the
 * same time, for both), -1 when the file cannot be read or a line is
 * malformed (*error_r, caller frees). */
int passwd_verify(const char *path, const char *user, const char *password, char **error_r);

/* As passwd_verify(), but a user the file (path; NULL: no file) does not
 * name is checked against other_hash (NULL: unknown user).  The file wins:
 * a name it holds is never checked against other_hash. */
int passwd_verify_with(const char *path, const char *user, const char *password,
		       const char *other_hash, char **error_r);

struct passwd_cache;
/* As passwd_verify_with(), and a success is remembered in cache (NULL: no
 * cache) so that the same user, password and stored hash next time skip
 * the slow hash (lib/passwd-cache.h says why that is safe). */
int passwd_verify_cached(struct passwd_cache *cache, const char *path, const char *user,
			 const char *password, const char *other_hash, char **error_r);

/* *found_r: whether the file (NULL: none) has a line for user. */
int passwd_file_has(const char *path, const char *user, bool *found_r, char **error_r);

/* True for "{SCHEME}hash" of a scheme verified here, at most
 * PASSWD_MAX_HASH_LEN printable bytes without ':' or spaces. */
bool passwd_hash_valid(const char *hashed);

/* Hashes password as {SHA512-CRYPT}$6$... with a random salt; the caller
 * frees the result. */
char *passwd_hash_sha512_crypt(const char *password);

/* Adds or replaces user's line in the file, atomically (write a temporary
 * file, fsync, rename).  Returns 0 or -1 with *error_r. */
int passwd_set(const char *path, const char *user, const char *hashed, char **error_r);

/* Valid user names: 1..255 bytes of [A-Za-z0-9._@+-], not starting with '.'. */
bool passwd_user_name_valid(const char *user);

/* Calls cb for each user name in the file, in file order.  Returns 0 or -1. */
int passwd_list(const char *path, void (*cb)(void *ctx, const char *user), void *ctx,
		char **error_r);

#endif
