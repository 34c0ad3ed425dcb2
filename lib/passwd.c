/* passwd-file users: see passwd.h.
 *
 * The file is read afresh on each verification so that `starling user add`
 * takes effect without a restart; it is small and logins are rare compared
 * to everything else a node does. */
#include "lib/passwd.h"

#include <crypt.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/base64.h"
#include "lib/buf.h"
#include "lib/file.h"
#include "lib/passwd-cache.h"
#include "lib/str.h"
#include "lib/xalloc.h"

#define PASSWD_MAX_FILE_SIZE (16 * 1024 * 1024)
#define PASSWD_MAX_LINE 4096

/* A throwaway hash verified for unknown users, so they cost the same time
 * as known ones and timing doesn't tell which user names exist. */
static const char dummy_hash[] =
	"$6$Qx3bT9kLrA2mZp0c$7u8vJx3iQm5cQZt0ZQ9rF7W1F1oHcK0pS6xD4b8wJj3Qv8nU2yT5g1sR0eL9kP3aM7cZ6qW4xN1bV8yH2dE5f0";

bool passwd_user_name_valid(const char *user)
{
	size_t n = strlen(user);
	if (n == 0 || n > PASSWD_MAX_USER_LEN || user[0] == '.')
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)user[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '@' || c == '+' || c == '-'))
			return false;
	}
	return true;
}

/* Calls cb(ctx, lineno, user, hash) for each non-comment line.  user and
 * hash are NUL-terminated copies in a scratch buffer; hash excludes any
 * extra fields.  cb returns nonzero to stop. */
typedef int line_cb(void *ctx, const char *user, const char *hash);

static int parse_lines(const char *path, const char *text, line_cb *cb, void *ctx, char **error_r)
{
	unsigned lineno = 0;
	const char *p = text;
	while (*p != '\0') {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		lineno++;
		if (len >= PASSWD_MAX_LINE) {
			*error_r = xasprintf("%s:%u: line too long", path, lineno);
			return -1;
		}
		char line[PASSWD_MAX_LINE];
		memcpy(line, p, len);
		line[len] = '\0';
		p += len + (nl ? 1 : 0);
		char *s = str_trim(line);
		if (*s == '\0' || *s == '#')
			continue;
		char *colon = strchr(s, ':');
		if (colon == NULL || colon == s) {
			*error_r = xasprintf("%s:%u: expected 'name:{SCHEME}hash'", path, lineno);
			return -1;
		}
		*colon = '\0';
		char *hash = colon + 1;
		char *end = strchr(hash, ':');
		if (end != NULL)
			*end = '\0';
		if (cb(ctx, s, hash) != 0)
			break;
	}
	return 0;
}

struct find_ctx {
	const char *user;
	char *hash;
};

static int find_cb(void *ctx, const char *user, const char *hash)
{
	struct find_ctx *f = ctx;
	if (strcmp(user, f->user) != 0)
		return 0;
	f->hash = xstrdup(hash);
	return 1;
}

static bool verify_crypt(const char *password, const char *hash)
{
	struct crypt_data *data = xcalloc(1, sizeof(*data));
	const char *out = crypt_r(password, hash, data);
	bool ok = out != NULL && out[0] != '*' && strlen(out) == strlen(hash) &&
		  mem_equal_ct(out, hash, strlen(hash));
	free(data);
	return ok;
}

/* {SHA512}base64(digest) and {SSHA512}base64(digest || salt). */
static bool verify_digest(const char *password, const char *b64, const EVP_MD *md, bool salted)
{
	size_t b64len = strlen(b64);
	if (b64len == 0 || b64len % 4 != 0 || b64len > 1024)
		return false;
	unsigned char raw[1024];
	long rawlen = base64_decode(b64, b64len, raw);
	if (rawlen < 0)
		return false;
	int mdlen = EVP_MD_size(md);
	if (rawlen < mdlen || (!salted && rawlen != mdlen))
		return false;
	unsigned char digest[EVP_MAX_MD_SIZE];
	unsigned dlen = 0;
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	bool ok = c != NULL && EVP_DigestInit_ex(c, md, NULL) == 1 &&
		  EVP_DigestUpdate(c, password, strlen(password)) == 1 &&
		  (!salted || EVP_DigestUpdate(c, raw + mdlen, (size_t)(rawlen - mdlen)) == 1) &&
		  EVP_DigestFinal_ex(c, digest, &dlen) == 1;
	EVP_MD_CTX_free(c);
	return ok && dlen == (unsigned)mdlen && mem_equal_ct(digest, raw, dlen);
}

static bool verify_hash(const char *password, const char *stored)
{
	const char *scheme = "CRYPT", *hash = stored;
	char scheme_buf[32];
	if (stored[0] == '{') {
		const char *close = strchr(stored, '}');
		if (close == NULL || (size_t)(close - stored - 1) >= sizeof(scheme_buf))
			return false;
		memcpy(scheme_buf, stored + 1, (size_t)(close - stored - 1));
		scheme_buf[close - stored - 1] = '\0';
		scheme = scheme_buf;
		hash = close + 1;
	}
	if (strcasecmp(scheme, "SHA512-CRYPT") == 0 || strcasecmp(scheme, "SHA256-CRYPT") == 0 ||
	    strcasecmp(scheme, "MD5-CRYPT") == 0 || strcasecmp(scheme, "BLF-CRYPT") == 0 ||
	    strcasecmp(scheme, "CRYPT") == 0 || strcasecmp(scheme, "DES-CRYPT") == 0)
		return verify_crypt(password, hash);
	if (strcasecmp(scheme, "SHA512") == 0)
		return verify_digest(password, hash, EVP_sha512(), false);
	if (strcasecmp(scheme, "SHA256") == 0)
		return verify_digest(password, hash, EVP_sha256(), false);
	if (strcasecmp(scheme, "SSHA512") == 0)
		return verify_digest(password, hash, EVP_sha512(), true);
	if (strcasecmp(scheme, "SSHA256") == 0)
		return verify_digest(password, hash, EVP_sha256(), true);
	if (strcasecmp(scheme, "PLAIN") == 0 || strcasecmp(scheme, "CLEARTEXT") == 0)
		return strlen(hash) == strlen(password) && mem_equal_ct(hash, password, strlen(hash));
	return false;
}

int passwd_verify(const char *path, const char *user, const char *password, char **error_r)
{
	return passwd_verify_with(path, user, password, NULL, error_r);
}

/* The user's hash in the file (caller frees), or NULL: 0, or -1 when the
 * file cannot be read or parsed.  No file configured is an empty file. */
static int file_find(const char *path, const char *user, char **hash_r, char **error_r)
{
	*hash_r = NULL;
	if (path == NULL)
		return 0;
	struct buf text = BUF_INIT;
	if (file_read(path, PASSWD_MAX_FILE_SIZE, &text, error_r) < 0) {
		buf_free(&text);
		return -1;
	}
	struct find_ctx f = { user, NULL };
	int ret = parse_lines(path, buf_cstr(&text), find_cb, &f, error_r);
	buf_free(&text);
	if (ret < 0)
		return -1;
	*hash_r = f.hash;
	return 0;
}

int passwd_file_has(const char *path, const char *user, bool *found_r, char **error_r)
{
	char *hash;
	*found_r = false;
	if (file_find(path, user, &hash, error_r) < 0)
		return -1;
	*found_r = hash != NULL;
	free(hash);
	return 0;
}

bool passwd_hash_valid(const char *hashed)
{
	static const char *const schemes[] = {
		"SHA512-CRYPT", "SHA256-CRYPT", "MD5-CRYPT", "BLF-CRYPT", "CRYPT", "DES-CRYPT",
		"SHA512", "SHA256", "SSHA512", "SSHA256", "PLAIN", "CLEARTEXT",
	};
	size_t len = strlen(hashed);
	if (len < 3 || len > PASSWD_MAX_HASH_LEN || hashed[0] != '{')
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)hashed[i];
		if (c <= 0x20 || c >= 0x7f || c == ':')
			return false;
	}
	const char *close = strchr(hashed, '}');
	if (close == NULL || close[1] == '\0')
		return false;
	size_t slen = (size_t)(close - hashed - 1);
	for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
		if (strlen(schemes[i]) == slen && strncasecmp(hashed + 1, schemes[i], slen) == 0)
			return true;
	}
	return false;
}

int passwd_verify_with(const char *path, const char *user, const char *password,
		       const char *other_hash, char **error_r)
{
	return passwd_verify_cached(NULL, path, user, password, other_hash, error_r);
}

int passwd_verify_cached(struct passwd_cache *cache, const char *path, const char *user,
			 const char *password, const char *other_hash, char **error_r)
{
	if (strlen(password) > PASSWD_MAX_PASSWORD_LEN || !passwd_user_name_valid(user)) {
		verify_crypt(password, dummy_hash);
		return 0;
	}
	struct find_ctx f = { user, NULL };
	if (file_find(path, user, &f.hash, error_r) < 0)
		return -1;
	if (f.hash == NULL && other_hash != NULL)
		f.hash = xstrdup(other_hash);
	if (f.hash == NULL) {
		verify_crypt(password, dummy_hash);
		return 0;
	}
	/* The lookup comes after the current stored hash was read, and the
	 * digest covers it: a changed or removed hash can never hit. */
	unsigned char digest[PASSWD_CACHE_DIGEST_LEN] = { 0 };
	if (cache != NULL) {
		passwd_cache_digest(cache, user, f.hash, password, digest);
		if (passwd_cache_lookup(cache, digest)) {
			explicit_bzero(digest, sizeof(digest));
			free(f.hash);
			return 1;
		}
	}
	bool ok = verify_hash(password, f.hash);
	/* Successes only: a wrong password must always pay the full hash. */
	if (ok && cache != NULL)
		passwd_cache_add(cache, digest);
	if (cache != NULL)
		explicit_bzero(digest, sizeof(digest));
	free(f.hash);
	return ok ? 1 : 0;
}

char *passwd_hash_sha512_crypt(const char *password)
{
	char salt[CRYPT_GENSALT_OUTPUT_SIZE];
	if (crypt_gensalt_rn("$6$", 0, NULL, 0, salt, sizeof(salt)) == NULL) {
		fprintf(stderr, "fatal: cannot generate a password salt\n");
		exit(1);
	}
	struct crypt_data *data = xcalloc(1, sizeof(*data));
	const char *out = crypt_r(password, salt, data);
	if (out == NULL || out[0] == '*') {
		fprintf(stderr, "fatal: SHA512-CRYPT is not available\n");
		exit(1);
	}
	char *res = xasprintf("{SHA512-CRYPT}%s", out);
	free(data);
	return res;
}

struct list_ctx {
	void (*cb)(void *ctx, const char *user);
	void *ctx;
};

static int list_cb(void *ctx, const char *user, const char *hash)
{
	(void)hash;
	struct list_ctx *l = ctx;
	l->cb(l->ctx, user);
	return 0;
}

int passwd_list(const char *path, void (*cb)(void *ctx, const char *user), void *ctx,
		char **error_r)
{
	struct buf text = BUF_INIT;
	if (file_read(path, PASSWD_MAX_FILE_SIZE, &text, error_r) < 0) {
		buf_free(&text);
		return -1;
	}
	struct list_ctx l = { cb, ctx };
	int ret = parse_lines(path, buf_cstr(&text), list_cb, &l, error_r);
	buf_free(&text);
	return ret;
}

int passwd_set(const char *path, const char *user, const char *hashed, char **error_r)
{
	if (!passwd_user_name_valid(user)) {
		*error_r = xasprintf("invalid user name '%s'", user);
		return -1;
	}
	if (strchr(hashed, ':') != NULL || strchr(hashed, '\n') != NULL) {
		*error_r = xstrdup("invalid password hash");
		return -1;
	}
	struct buf old = BUF_INIT, out = BUF_INIT;
	mode_t mode = 0600;
	struct stat st;
	if (stat(path, &st) == 0) {
		mode = st.st_mode & 0777;
		if (file_read(path, PASSWD_MAX_FILE_SIZE, &old, error_r) < 0) {
			buf_free(&old);
			return -1;
		}
	} else if (errno != ENOENT) {
		*error_r = xasprintf("%s: %s", path, strerror(errno));
		return -1;
	}
	bool replaced = false;
	const char *p = buf_cstr(&old);
	size_t ulen = strlen(user);
	while (*p != '\0') {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		if (len > ulen && strncmp(p, user, ulen) == 0 && p[ulen] == ':') {
			if (!replaced)
				buf_appendf(&out, "%s:%s\n", user, hashed);
			replaced = true;
		} else {
			buf_append(&out, p, len);
			buf_append_byte(&out, '\n');
		}
		p += len + (nl ? 1 : 0);
	}
	if (!replaced)
		buf_appendf(&out, "%s:%s\n", user, hashed);
	int ret = file_write_atomic(path, out.data != NULL ? (const void *)out.data : "", out.len, mode,
				    error_r);
	buf_free(&old);
	buf_free(&out);
	return ret;
}
