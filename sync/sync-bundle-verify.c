/* Checks 1 to 7 of SPEC.md 11, in the SPEC's order, on the whole file
 * before anything looks at the body: apart so that what a hostile file can
 * reach before its signature is verified is in one short file. */
#include "sync/sync-bundle-private.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <zlib.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/passwd.h"
#include "lib/str.h"
#include "lib/xalloc.h"

/* ------------------------------------------------------------------ */
/* Verification (checks 1 to 7) */

/* Lowercase hex only, so that every bit of the trailer matters. */
static int hex_decode_lower(const char *s, size_t slen, unsigned char *out, size_t n)
{
	for (size_t i = 0; i < slen; i++) {
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return -1;
	}
	return hex_decode(s, slen, out, n);
}

/* Splits "NAME rest" lines of the header; every line CRLF-terminated. */
static int parse_header(const unsigned char *data, size_t len, struct verified *v,
			char **error_r)
{
	size_t limit = len < BUNDLE_MAX_HEADER ? len : BUNDLE_MAX_HEADER;
	size_t pos = 0;
	unsigned seen = 0;
	enum { H_USER = 1, H_SOURCE = 2, H_CREATED = 4, H_SINCE = 8, H_KEY = 16, H_BODY = 32 };
	bool first = true;
	for (;;) {
		const unsigned char *eol = memchr(data + pos, '\n', limit - pos);
		if (eol == NULL) {
			*error_r = xstrdup(limit == BUNDLE_MAX_HEADER ?
						   "bundle refused: header longer than 4096 octets" :
						   "bundle refused: truncated header");
			return -1;
		}
		size_t l = (size_t)(eol - (data + pos));
		if (l == 0 || data[pos + l - 1] != '\r') {
			*error_r = xstrdup("bundle refused: header line not ended by CRLF");
			return -1;
		}
		char line[BUNDLE_MAX_HEADER + 1];
		memcpy(line, data + pos, l - 1);
		line[l - 1] = '\0';
		pos += l + 1;
		if (strlen(line) != l - 1) {
			*error_r = xstrdup("bundle refused: NUL in the header");
			return -1;
		}
		if (first) {
			first = false;
			if (!str_has_prefix(line, BUNDLE_MAGIC) ||
			    !str_has_prefix(line + strlen(BUNDLE_MAGIC), "1.")) {
				*error_r = xstrdup("bundle refused: not a Starling bundle of version 1.x");
				return -1;
			}
			uint64_t minor;
			if (str_to_u64(line + strlen(BUNDLE_MAGIC) + 2, UINT32_MAX, &minor) < 0) {
				*error_r = xstrdup("bundle refused: bad version");
				return -1;
			}
			continue;
		}
		if (strcmp(line, "END") == 0)
			break;
		char *sp = strchr(line, ' ');
		const char *arg = sp != NULL ? sp + 1 : "";
		if (sp != NULL)
			*sp = '\0';
		unsigned bit = 0;
		bool ok = false;
		uint64_t n;
		if (strcmp(line, "USER") == 0) {
			bit = H_USER;
			ok = passwd_user_name_valid(arg) && strlen(arg) <= STOR_MAX_USER_LEN;
			if (ok)
				strcpy(v->user, arg);
		} else if (strcmp(line, "SOURCE") == 0) {
			bit = H_SOURCE;
			ok = str_to_u64(arg, UINT32_MAX, &n) == 0 && n != 0;
			v->source = (uint32_t)n;
		} else if (strcmp(line, "CREATED") == 0) {
			bit = H_CREATED;
			ok = str_to_u64(arg, INT64_MAX, &n) == 0;
			v->created = (int64_t)n;
		} else if (strcmp(line, "SINCE") == 0) {
			bit = H_SINCE;
			const char *sp2 = strchr(arg, ' ');
			if (strcmp(arg, "FULL") == 0) {
				v->since_full = ok = true;
			} else if (sp2 != NULL && str_to_u64_n(arg, (size_t)(sp2 - arg), INT64_MAX,
								&n) == 0 && strlen(sp2 + 1) == 64) {
				unsigned char tmp[32];
				ok = hex_decode_lower(sp2 + 1, 64, tmp, 32) == 0;
				v->since_created = (int64_t)n;
				hex_encode(tmp, 32, v->since_hex);
				v->since_hex[64] = '\0';
			}
		} else if (strcmp(line, "KEY") == 0) {
			bit = H_KEY;
			ok = strcmp(arg, "CLUSTER") == 0 || strcmp(arg, "USER") == 0;
			v->user_key = strcmp(arg, "USER") == 0;
		} else if (strcmp(line, "BODY") == 0) {
			bit = H_BODY;
			uint64_t c, r;
			const char *a = arg, *s1;
			if (str_has_prefix(a, "DEFLATE ") && (s1 = strchr(a + 8, ' ')) != NULL &&
			    str_to_u64_n(a + 8, (size_t)(s1 - a - 8), UINT64_MAX, &c) == 0 &&
			    str_to_u64(s1 + 1, UINT64_MAX, &r) == 0) {
				v->comp_len = c;
				v->raw_len = r;
				ok = true;
			}
		} else {
			*error_r = fmt_error("bundle refused: unknown header line '%.40s'", line);
			return -1;
		}
		if ((seen & bit) != 0) {
			*error_r = fmt_error("bundle refused: header line %s given twice", line);
			return -1;
		}
		if (!ok) {
			*error_r = fmt_error("bundle refused: bad %s header line", line);
			return -1;
		}
		seen |= bit;
	}
	if (seen != (H_USER | H_SOURCE | H_CREATED | H_SINCE | H_KEY | H_BODY)) {
		*error_r = xstrdup("bundle refused: a header line is missing");
		return -1;
	}
	v->header_len = pos;
	return 0;
}

int verify(struct stor_db *db, const struct sync_bundle_import_settings *set,
	   const unsigned char *data, size_t len, struct verified *v, char **error_r)
{
	uint64_t max = set->max_size != 0 ? set->max_size : SYNC_BUNDLE_MAX_SIZE;
	memset(v, 0, sizeof(*v));
	/* 1. */
	if (len > max) {
		*error_r = fmt_error("bundle refused: %zu octets, above the limit of %" PRIu64,
				     len, max);
		return -1;
	}
	/* 2, 3. */
	if (parse_header(data, len, v, error_r) < 0)
		return -1;
	/* A body may not announce more than four times the file limit: a
	 * signed bundle still cannot make the scratch copy fill the disk. */
	if (v->raw_len / 4 > max) {
		*error_r = fmt_error("bundle refused: the body announces %" PRIu64 " uncompressed "
				     "octets, more than 4 times the limit", v->raw_len);
		return -1;
	}
	/* 4. */
	if (v->comp_len > len || v->header_len + v->comp_len + BUNDLE_TRAILER_LEN != len) {
		*error_r = xstrdup(v->header_len + v->comp_len + BUNDLE_TRAILER_LEN > len ?
					   "bundle refused: truncated (shorter than its header says)" :
					   "bundle refused: longer than its header says");
		return -1;
	}
	/* 5. */
	const char *tr = (const char *)data + v->header_len + v->comp_len;
	unsigned char want[32], got[32], sig[32];
	if (memcmp(tr, "DIGEST SHA-256 ", 15) != 0 || memcmp(tr + 79, "\r\n", 2) != 0 ||
	    memcmp(tr + 81, "SIGNATURE HMAC-SHA256 ", 22) != 0 ||
	    memcmp(tr + 167, "\r\n", 2) != 0 || hex_decode_lower(tr + 15, 64, want, 32) < 0 ||
	    hex_decode_lower(tr + 103, 64, sig, 32) < 0) {
		*error_r = xstrdup("bundle refused: malformed trailer");
		return -1;
	}
	SHA256(data, v->header_len + v->comp_len, got);
	if (!mem_equal_ct(want, got, 32)) {
		*error_r = xstrdup("bundle refused: digest mismatch (damaged or tampered with)");
		return -1;
	}
	hex_encode(got, 32, v->digest_hex);
	v->digest_hex[64] = '\0';
	/* 6. */
	unsigned char kbuf[32], mac[32];
	const unsigned char *k;
	size_t klen;
	signing_key(&set->key, v->user_key, v->user, kbuf, &klen, &k);
	bundle_signature(k, klen, got, mac);
	if (!mem_equal_ct(mac, sig, 32)) {
		*error_r = xstrdup("bundle refused: bad signature (signed with another key)");
		return -1;
	}
	/* 7. */
	if (v->source == set->own_sid) {
		*error_r = xstrdup("bundle refused: it was made by this node");
		return -1;
	}
	if (v->source >= SYNC_BUNDLE_PEER_BASE) {
		*error_r = xstrdup("bundle refused: SOURCE out of range");
		return -1;
	}
	int64_t now = set->now != 0 ? set->now : clock_wall_s();
	if (v->created > now + BUNDLE_FUTURE_SLACK) {
		*error_r = xstrdup("bundle refused: CREATED is more than a day in the future");
		return -1;
	}
	struct last_import li;
	int r = last_import_get(db, v->source, v->user, &li, error_r);
	if (r > 0 && last_import_has(&li, v->digest_hex)) {
		*error_r = xstrdup("bundle refused: already imported (a replay)");
		r = -1;
	} else if (r > 0 && v->created < li.created) {
		*error_r = fmt_error("bundle refused: older than the last bundle imported from "
				     "node %u for %s (a replay, or that node's clock went back)",
				     v->source, v->user);
		r = -1;
	}
	buf_free(&li.raw);
	return r < 0 ? -1 : 0;
}
