/* Decoding for SEARCH: quoted-printable and base64 bodies, RFC 2047 encoded
 * words, a few single-byte charsets to UTF-8, and case folding for
 * case-insensitive substring search.  See imap-mime.h. */
#include "imap/imap-mime-private.h"

#include <string.h>
#include <strings.h>

#include "lib/str.h"

static void put_utf8(struct buf *out, uint32_t cp)
{
	if (cp < 0x80) {
		buf_append_byte(out, (unsigned char)cp);
	} else if (cp < 0x800) {
		buf_append_byte(out, (unsigned char)(0xc0 | (cp >> 6)));
		buf_append_byte(out, (unsigned char)(0x80 | (cp & 0x3f)));
	} else if (cp < 0x10000) {
		buf_append_byte(out, (unsigned char)(0xe0 | (cp >> 12)));
		buf_append_byte(out, (unsigned char)(0x80 | ((cp >> 6) & 0x3f)));
		buf_append_byte(out, (unsigned char)(0x80 | (cp & 0x3f)));
	} else {
		buf_append_byte(out, (unsigned char)(0xf0 | (cp >> 18)));
		buf_append_byte(out, (unsigned char)(0x80 | ((cp >> 12) & 0x3f)));
		buf_append_byte(out, (unsigned char)(0x80 | ((cp >> 6) & 0x3f)));
		buf_append_byte(out, (unsigned char)(0x80 | (cp & 0x3f)));
	}
}

enum mime_charset mime_charset_lookup(const char *name, size_t len)
{
	static const struct {
		const char *name;
		enum mime_charset cs;
	} names[] = {
		{ "utf-8", MIME_CHARSET_UTF8 }, { "utf8", MIME_CHARSET_UTF8 },
		{ "us-ascii", MIME_CHARSET_UTF8 }, { "ascii", MIME_CHARSET_UTF8 },
		{ "iso-8859-1", MIME_CHARSET_LATIN1 }, { "iso8859-1", MIME_CHARSET_LATIN1 },
		{ "iso_8859-1", MIME_CHARSET_LATIN1 }, { "latin1", MIME_CHARSET_LATIN1 },
		{ "l1", MIME_CHARSET_LATIN1 }, { "iso-8859-15", MIME_CHARSET_LATIN9 },
		{ "iso8859-15", MIME_CHARSET_LATIN9 }, { "latin9", MIME_CHARSET_LATIN9 },
		{ "windows-1252", MIME_CHARSET_CP1252 }, { "cp1252", MIME_CHARSET_CP1252 },
	};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strlen(names[i].name) == len && strncasecmp(names[i].name, name, len) == 0)
			return names[i].cs;
	}
	return MIME_CHARSET_UNKNOWN;
}

static const uint16_t cp1252_high[32] = {
	0x20ac, 0x0081, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021,
	0x02c6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008d, 0x017d, 0x008f,
	0x0090, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014,
	0x02dc, 0x2122, 0x0161, 0x203a, 0x0153, 0x009d, 0x017e, 0x0178,
};

static uint32_t latin9_cp(unsigned char c)
{
	switch (c) {
	case 0xa4: return 0x20ac;
	case 0xa6: return 0x0160;
	case 0xa8: return 0x0161;
	case 0xb4: return 0x017d;
	case 0xb8: return 0x017e;
	case 0xbc: return 0x0152;
	case 0xbd: return 0x0153;
	case 0xbe: return 0x0178;
	default: return c;
	}
}

void mime_charset_to_utf8(enum mime_charset cs, const unsigned char *p, size_t len,
			  struct buf *out)
{
	if (cs == MIME_CHARSET_UTF8 || cs == MIME_CHARSET_UNKNOWN) {
		buf_append(out, p, len);
		return;
	}
	for (size_t i = 0; i < len; i++) {
		uint32_t cp = p[i];
		if (cs == MIME_CHARSET_CP1252 && cp >= 0x80 && cp < 0xa0)
			cp = cp1252_high[cp - 0x80];
		else if (cs == MIME_CHARSET_LATIN9)
			cp = latin9_cp(p[i]);
		put_utf8(out, cp);
	}
}

void mime_decode_qp(const unsigned char *p, size_t len, bool header, struct buf *out)
{
	for (size_t i = 0; i < len; i++) {
		if (header && p[i] == '_') {
			buf_append_byte(out, ' ');
			continue;
		}
		if (p[i] != '=') {
			buf_append_byte(out, p[i]);
			continue;
		}
		if (i + 2 < len && hex_digit_value(p[i + 1]) >= 0 && hex_digit_value(p[i + 2]) >= 0) {
			buf_append_byte(out, (unsigned char)(hex_digit_value(p[i + 1]) * 16 + hex_digit_value(p[i + 2])));
			i += 2;
			continue;
		}
		/* soft line break: "=" [trailing whitespace] EOL */
		size_t j = i + 1;
		while (j < len && (p[j] == ' ' || p[j] == '\t'))
			j++;
		if (j < len && p[j] == '\r' && j + 1 < len && p[j + 1] == '\n') {
			i = j + 1;
			continue;
		}
		if (j < len && p[j] == '\n') {
			i = j;
			continue;
		}
		if (j == len) {
			i = j;
			continue;
		}
		buf_append_byte(out, '=');
	}
}

void mime_decode_base64(const unsigned char *p, size_t len, struct buf *out)
{
	uint32_t acc = 0;
	unsigned bits = 0;
	/* at most 3 bytes per 4 input characters */
	unsigned char *d = buf_reserve(out, len / 4 * 3 + 3);
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = p[i];
		int v;
		if (c >= 'A' && c <= 'Z')
			v = c - 'A';
		else if (c >= 'a' && c <= 'z')
			v = c - 'a' + 26;
		else if (c >= '0' && c <= '9')
			v = c - '0' + 52;
		else if (c == '+')
			v = 62;
		else if (c == '/')
			v = 63;
		else
			continue;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			d[n++] = (unsigned char)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	buf_commit(out, n);
}

/* ---- case folding ---- */

static uint32_t fold_cp(uint32_t c)
{
	if (c >= 'A' && c <= 'Z')
		return c + 32;
	if (c < 0xc0)
		return c;
	if (c <= 0xde && c != 0xd7)
		return c + 32;
	if (c >= 0x100 && c <= 0x137)
		return c | 1;
	if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17e))
		return (c & 1) ? c + 1 : c;
	if (c >= 0x14a && c <= 0x177)
		return c | 1;
	if (c == 0x178)
		return 0xff;
	if (c >= 0x391 && c <= 0x3a9 && c != 0x3a2)
		return c + 32;
	if (c >= 0x410 && c <= 0x42f)
		return c + 32;
	if (c >= 0x400 && c <= 0x40f)
		return c + 80;
	return c;
}

/* Decodes one UTF-8 sequence at p; returns its length, or 0 if invalid. */
static size_t utf8_decode(const unsigned char *p, size_t len, uint32_t *cp_r)
{
	unsigned char c = p[0];
	size_t n;
	uint32_t cp;
	if (c < 0x80) {
		*cp_r = c;
		return 1;
	} else if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (len < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
		return 0;
	*cp_r = cp;
	return n;
}

void mime_fold_utf8(const unsigned char *p, size_t len, struct buf *out)
{
	size_t i = 0;
	while (i < len) {
		/* ASCII runs, the common case, are folded without decoding */
		size_t run = 0;
		while (i + run < len && p[i + run] < 0x80)
			run++;
		if (run > 0) {
			unsigned char *d = buf_reserve(out, run);
			for (size_t k = 0; k < run; k++) {
				unsigned char c = p[i + k];
				d[k] = c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
			}
			buf_commit(out, run);
			i += run;
			continue;
		}
		uint32_t cp;
		size_t n = utf8_decode(p + i, len - i, &cp);
		if (n == 0) {
			buf_append_byte(out, p[i++]); /* invalid byte: compare as is */
			continue;
		}
		if (n == 1 || fold_cp(cp) != cp)
			put_utf8(out, fold_cp(cp));
		else
			buf_append(out, p + i, n);
		i += n;
	}
}

/* ---- RFC 2047 ---- */

/* Decodes "=?charset?enc?text?=" at s (no whitespace inside), converting
 * to UTF-8.  Returns its length, or 0 if s does not start a valid one. */
static size_t decode_encoded_word(const unsigned char *s, size_t n, struct buf *out)
{
	if (n < 8 || s[0] != '=' || s[1] != '?')
		return 0;
	size_t cs_start = 2, i = 2;
	while (i < n && s[i] != '?' && s[i] > ' ')
		i++;
	if (i >= n || s[i] != '?' || i == cs_start)
		return 0;
	size_t cs_end = i;
	/* RFC 2231 language suffix: charset*lang */
	const unsigned char *star = memchr(s + cs_start, '*', cs_end - cs_start);
	size_t cs_len = (star != NULL ? (size_t)(star - s) : cs_end) - cs_start;
	if (i + 3 >= n || s[i + 2] != '?')
		return 0;
	unsigned char enc = s[i + 1];
	if (enc != 'B' && enc != 'b' && enc != 'Q' && enc != 'q')
		return 0;
	size_t t_start = i + 3, t = t_start;
	while (t + 1 < n && !(s[t] == '?' && s[t + 1] == '=')) {
		if (s[t] <= ' ')
			return 0;
		t++;
	}
	if (t + 1 >= n)
		return 0;
	struct buf raw = BUF_INIT;
	if (enc == 'B' || enc == 'b')
		mime_decode_base64(s + t_start, t - t_start, &raw);
	else
		mime_decode_qp(s + t_start, t - t_start, true, &raw);
	mime_charset_to_utf8(mime_charset_lookup((const char *)s + cs_start, cs_len), raw.data,
			     raw.len, out);
	buf_free(&raw);
	return t + 2;
}

void imap_mime_decode_header(const unsigned char *value, size_t len, struct buf *out)
{
	struct buf u = BUF_INIT;
	mime_unfold(value, len, &u);
	const unsigned char *s = u.data;
	size_t n = u.len, i = 0;
	bool prev_ew = false;
	while (i < n) {
		size_t ew = decode_encoded_word(s + i, n - i, out);
		if (ew > 0) {
			i += ew;
			prev_ew = true;
			continue;
		}
		if (prev_ew && (s[i] == ' ' || s[i] == '\t')) {
			/* whitespace between two encoded words is dropped */
			size_t j = i;
			while (j < n && (s[j] == ' ' || s[j] == '\t'))
				j++;
			struct buf probe = BUF_INIT;
			bool next_ew = j < n && decode_encoded_word(s + j, n - j, &probe) > 0;
			buf_free(&probe);
			if (!next_ew)
				buf_append(out, s + i, j - i);
			i = j;
			prev_ew = next_ew;
			continue;
		}
		buf_append_byte(out, s[i++]);
		prev_ew = false;
	}
	if (out->data == NULL)
		buf_append_str(out, "");
	buf_free(&u);
}

/* ---- search ---- */

static bool folded_contains(const struct buf *hay, const struct buf *needle)
{
	if (needle->len == 0)
		return true;
	return hay->len >= needle->len && memmem(hay->data, hay->len, needle->data, needle->len) != NULL;
}

bool imap_mime_header_contains(const struct imap_mime *m, const char *field, const char *needle)
{
	struct buf fneedle = BUF_INIT, dec = BUF_INIT, folded = BUF_INIT;
	struct mime_hdr_iter it;
	struct mime_field f;
	bool found = false;

	mime_fold_utf8((const unsigned char *)needle, strlen(needle), &fneedle);
	mime_hdr_iter_init(&it, m, &m->parts.items[0]);
	while (!found && mime_hdr_next(&it, &f)) {
		if (field != NULL &&
		    (f.name_len != strlen(field) || strncasecmp((const char *)f.name, field, f.name_len) != 0))
			continue;
		if (fneedle.len == 0) {
			found = true;
			break;
		}
		buf_reset(&dec);
		buf_reset(&folded);
		imap_mime_decode_header(f.value, f.value_len, &dec);
		mime_fold_utf8(dec.data, dec.len, &folded);
		found = folded_contains(&folded, &fneedle);
	}
	buf_free(&fneedle);
	buf_free(&dec);
	buf_free(&folded);
	return found;
}

bool imap_mime_body_contains(const struct imap_mime *m, const char *needle)
{
	struct buf fneedle = BUF_INIT, dec = BUF_INIT, utf8 = BUF_INIT, folded = BUF_INIT;
	bool found = false;

	if (needle[0] == '\0')
		return true;
	mime_fold_utf8((const unsigned char *)needle, strlen(needle), &fneedle);
	for (size_t i = 0; i < m->parts.count && !found; i++) {
		const struct mime_part *p = &m->parts.items[i];
		if (p->multipart || p->rfc822 || strcmp(p->type, "TEXT") != 0)
			continue;
		const unsigned char *body = m->text + p->body_start;
		size_t len = p->end - p->body_start;
		buf_reset(&dec);
		buf_reset(&utf8);
		buf_reset(&folded);
		if (p->encoding != NULL && strcmp(p->encoding, "QUOTED-PRINTABLE") == 0) {
			mime_decode_qp(body, len, false, &dec);
		} else if (p->encoding != NULL && strcmp(p->encoding, "BASE64") == 0) {
			mime_decode_base64(body, len, &dec);
		} else {
			buf_append(&dec, body, len);
		}
		const char *cs = mime_param_get(&p->params, "CHARSET");
		enum mime_charset c = cs == NULL ? MIME_CHARSET_UTF8 : mime_charset_lookup(cs, strlen(cs));
		mime_charset_to_utf8(c, dec.data, dec.len, &utf8);
		mime_fold_utf8(utf8.data, utf8.len, &folded);
		found = folded_contains(&folded, &fneedle);
	}
	buf_free(&fneedle);
	buf_free(&dec);
	buf_free(&utf8);
	buf_free(&folded);
	return found;
}
