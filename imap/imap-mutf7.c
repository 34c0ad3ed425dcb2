/* Modified UTF-7 <-> UTF-8: see imap-mutf7.h. */
#include "imap/imap-mutf7.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "lib/buf.h"

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static int b64_value(unsigned char c)
{
	const char *p = c != '\0' ? strchr(b64, c) : NULL;
	return p != NULL ? (int)(p - b64) : -1;
}

static void put_utf8(struct buf *out, uint32_t cp)
{
	unsigned char u[4];
	size_t n;
	if (cp < 0x80) {
		u[0] = (unsigned char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (unsigned char)(0xc0 | (cp >> 6));
		u[1] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (unsigned char)(0xe0 | (cp >> 12));
		u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		u[2] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		u[0] = (unsigned char)(0xf0 | (cp >> 18));
		u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
		u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		u[3] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	buf_append(out, u, n);
}

/* Decodes the base64 run s[0..len) (between '&' and '-') into out. */
static bool decode_run(const char *s, size_t len, struct buf *out)
{
	uint32_t bits = 0, hi = 0;
	unsigned nbits = 0;
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		int v = b64_value((unsigned char)s[i]);
		if (v < 0)
			return false;
		bits = (bits << 6) | (uint32_t)v;
		nbits += 6;
		if (nbits < 16)
			continue;
		nbits -= 16;
		uint32_t unit = (bits >> nbits) & 0xffff;
		bits &= (1u << nbits) - 1;
		if (hi != 0) {
			if (unit < 0xdc00 || unit > 0xdfff)
				return false;
			put_utf8(out, 0x10000 + ((hi - 0xd800) << 10) + (unit - 0xdc00));
			hi = 0;
		} else if (unit >= 0xd800 && unit <= 0xdbff) {
			hi = unit;
		} else if (unit >= 0xdc00 && unit <= 0xdfff) {
			return false;
		} else if (unit >= 0x20 && unit < 0x7f) {
			/* printable US-ASCII must stand for itself */
			return false;
		} else {
			put_utf8(out, unit);
		}
	}
	/* leftover bits: fewer than 6, and zero */
	return hi == 0 && nbits < 6 && bits == 0;
}

char *imap_mutf7_to_utf8(const char *s, size_t len)
{
	struct buf out = BUF_INIT;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c >= 0x7f)
			goto bad;
		if (c != '&') {
			buf_append_byte(&out, c);
			continue;
		}
		const char *dash = memchr(s + i + 1, '-', len - i - 1);
		if (dash == NULL)
			goto bad;
		size_t run = (size_t)(dash - (s + i + 1));
		if (run == 0)
			buf_append_byte(&out, '&');
		else if (!decode_run(s + i + 1, run, &out))
			goto bad;
		i += run + 1;
	}
	buf_append_byte(&out, '\0');
	return (char *)out.data;
bad:
	buf_free(&out);
	return NULL;
}

/* One code point from s[*i..len), or -1 for invalid UTF-8 (overlong,
 * surrogates, above U+10FFFF, truncated). */
static int32_t next_cp(const unsigned char *s, size_t len, size_t *i)
{
	unsigned char c = s[*i];
	uint32_t cp, min;
	size_t n;
	if (c < 0x80) {
		(*i)++;
		return c;
	} else if ((c & 0xe0) == 0xc0) {
		cp = c & 0x1f, n = 1, min = 0x80;
	} else if ((c & 0xf0) == 0xe0) {
		cp = c & 0x0f, n = 2, min = 0x800;
	} else if ((c & 0xf8) == 0xf0) {
		cp = c & 0x07, n = 3, min = 0x10000;
	} else {
		return -1;
	}
	for (size_t k = 1; k <= n; k++) {
		if (*i + k >= len || (s[*i + k] & 0xc0) != 0x80)
			return -1;
		cp = (cp << 6) | (s[*i + k] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return -1;
	*i += n + 1;
	return (int32_t)cp;
}

char *imap_utf8_to_mutf7(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;
	struct buf out = BUF_INIT;
	for (size_t i = 0; i < len;) {
		if (s[i] >= 0x20 && s[i] < 0x7f) {
			if (s[i] == '&')
				buf_append_str(&out, "&-");
			else
				buf_append_byte(&out, s[i]);
			i++;
			continue;
		}
		/* a run of non-ASCII code points, as base64 UTF-16BE */
		uint32_t bits = 0;
		unsigned nbits = 0;
		buf_append_byte(&out, '&');
		while (i < len && !(s[i] >= 0x20 && s[i] < 0x7f)) {
			int32_t cp = next_cp(s, len, &i);
			if (cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp < 0xa0))
				goto bad;
			uint32_t units[2];
			size_t nu = 0;
			if (cp >= 0x10000) {
				units[nu++] = 0xd800 + (((uint32_t)cp - 0x10000) >> 10);
				units[nu++] = 0xdc00 + (((uint32_t)cp - 0x10000) & 0x3ff);
			} else {
				units[nu++] = (uint32_t)cp;
			}
			for (size_t k = 0; k < nu; k++) {
				bits = (bits << 16) | units[k];
				nbits += 16;
				while (nbits >= 6) {
					nbits -= 6;
					buf_append_byte(&out, (unsigned char)b64[(bits >> nbits) & 0x3f]);
				}
				bits &= (1u << nbits) - 1;
			}
		}
		if (nbits > 0)
			buf_append_byte(&out, (unsigned char)b64[(bits << (6 - nbits)) & 0x3f]);
		buf_append_byte(&out, '-');
	}
	buf_append_byte(&out, '\0');
	return (char *)out.data;
bad:
	buf_free(&out);
	return NULL;
}
