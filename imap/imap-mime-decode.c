/* Decoding for SEARCH: quoted-printable and base64 bodies, RFC 2047 encoded
 * words, charsets to UTF-8 (iconv(3)), and RFC 5051 case folding
 * (libunistring) for case-insensitive substring search.  See imap-mime.h. */
#include "imap/imap-mime-private.h"

#include <errno.h>
#include <iconv.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unicase.h>
#include <uninorm.h>
#include <unistr.h>

#include "lib/str.h"

/* Charset names longer than this are not charsets (the longest glibc
 * knows is about 30 characters). */
#define CHARSET_NAME_MAX 64
/* Converted text is at most this many times the input plus a little: the
 * worst real case is 3 bytes of U+FFFD per invalid input byte, or a byte
 * that maps to two characters. */
#define CHARSET_MAX_GROWTH 8

static void put_utf8(struct buf *out, ucs4_t c)
{
	uint8_t *d = buf_reserve(out, 6);
	int n = u8_uctomb(d, c, 6);
	buf_commit(out, n > 0 ? (size_t)n : 0);
}

static void put_replacement(struct buf *out)
{
	buf_append(out, "\xef\xbf\xbd", 3); /* U+FFFD */
}

/* Labels found in mail that glibc does not know, and the charset they
 * stand for. */
static const struct {
	const char *label, *name;
} charset_aliases[] = {
	{ "ks_c_5601-1987", "CP949" },  /* Outlook's label for Korean */
	{ "x-sjis", "SHIFT_JIS" },
	{ "x-gbk", "GBK" },
	{ "iso-8859-8-i", "ISO-8859-8" }, /* Hebrew in logical order: same bytes */
	{ "iso-8859-6-i", "ISO-8859-6" },
	{ "unicode-1-1-utf-7", "UTF-7" },
};

enum charset_kind {
	CHARSET_COPY,    /* UTF-8 or US-ASCII: the bytes are already what we compare */
	CHARSET_ICONV,   /* name holds what to give iconv_open() */
	CHARSET_UNKNOWN, /* not a name iconv may be asked about */
};

/* Normalises a charset label (a MIME parameter or an IMAP argument) into
 * name.  Only names made of the characters charset names use reach
 * iconv_open(): glibc gives "" the locale's charset and reads "//" and ","
 * as conversion options. */
static enum charset_kind charset_resolve(const char *s, size_t len, char name[CHARSET_NAME_MAX])
{
	while (len > 0 && (*s == ' ' || *s == '\t'))
		s++, len--;
	while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
		len--;
	if (len == 0 || len >= CHARSET_NAME_MAX)
		return CHARSET_UNKNOWN;
	for (size_t i = 0; i < len; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '_' || c == '.' || c == ':' || c == '+' || c == '(' || c == ')'))
			return CHARSET_UNKNOWN;
	}
	static const char *const copy[] = { "utf-8", "utf8", "us-ascii", "ascii" };
	for (size_t i = 0; i < sizeof(copy) / sizeof(copy[0]); i++)
		if (strlen(copy[i]) == len && strncasecmp(copy[i], s, len) == 0)
			return CHARSET_COPY;
	/* upper case, so that each charset has one entry in the cache */
	for (size_t i = 0; i < len; i++)
		name[i] = s[i] >= 'a' && s[i] <= 'z' ? (char)(s[i] - 32) : s[i];
	name[len] = '\0';
	for (size_t i = 0; i < sizeof(charset_aliases) / sizeof(charset_aliases[0]); i++) {
		if (strcasecmp(charset_aliases[i].label, name) == 0) {
			snprintf(name, CHARSET_NAME_MAX, "%s", charset_aliases[i].name);
			break;
		}
	}
	return CHARSET_ICONV;
}

/* How many bytes to skip past an invalid sequence: one code unit, so that
 * a bad character in UTF-16 or UTF-32 text does not misalign the rest. */
static size_t charset_unit(const char *name)
{
	if (strncasecmp(name, "UTF-16", 6) == 0 || strncasecmp(name, "UTF16", 5) == 0 ||
	    strncasecmp(name, "UCS-2", 5) == 0 || strncasecmp(name, "UCS2", 4) == 0 ||
	    strcasecmp(name, "UNICODE") == 0)
		return 2;
	if (strncasecmp(name, "UTF-32", 6) == 0 || strncasecmp(name, "UTF32", 5) == 0 ||
	    strncasecmp(name, "UCS-4", 5) == 0 || strncasecmp(name, "UCS4", 4) == 0)
		return 4;
	return 1;
}

/* Descriptors stay open, a few per thread: glibc unloads a converter's
 * module soon after its last descriptor is closed, and a SEARCH over mail
 * in alternating charsets then spent most of its time loading modules. */
#define ICONV_CACHE_SIZE 8

struct iconv_slot {
	char name[CHARSET_NAME_MAX]; /* "" for a free slot */
	iconv_t cd;
	uint64_t used;
};

static _Thread_local struct iconv_slot iconv_cache[ICONV_CACHE_SIZE];
static _Thread_local uint64_t iconv_clock;

/* A descriptor converting from name to UTF-8, in its initial state, or
 * (iconv_t)-1 if iconv does not know name.  The least recently used one
 * makes room. */
static iconv_t iconv_get(const char *name)
{
	struct iconv_slot *victim = &iconv_cache[0];
	for (size_t i = 0; i < ICONV_CACHE_SIZE; i++) {
		struct iconv_slot *slot = &iconv_cache[i];
		if (slot->name[0] != '\0' && strcmp(slot->name, name) == 0) {
			slot->used = ++iconv_clock;
			(void)iconv(slot->cd, NULL, NULL, NULL, NULL);
			return slot->cd;
		}
		if (slot->used < victim->used)
			victim = slot;
	}
	iconv_t cd = iconv_open("UTF-8", name);
	if (cd == (iconv_t)-1)
		return cd;
	if (victim->name[0] != '\0')
		iconv_close(victim->cd);
	snprintf(victim->name, sizeof(victim->name), "%s", name);
	victim->cd = cd;
	victim->used = ++iconv_clock;
	return cd;
}

/* An invalid sequence becomes U+FFFD and the conversion goes on after it;
 * an incomplete one at the end becomes U+FFFD.  Every turn of the loop
 * consumes input or stops, and the output is bounded. */
static void iconv_to_utf8(iconv_t cd, size_t unit, const unsigned char *p, size_t len,
			  struct buf *out)
{
	char *in = (char *)(uintptr_t)p; /* iconv() does not write through it */
	size_t inleft = len;
	/* with a U+FFFD after the last turn (3) and the final flush (32), this
	 * stays within the 64 bytes imap_mime_charset_to_utf8() allows beyond
	 * 8 times the input */
	size_t limit = out->len + len * CHARSET_MAX_GROWTH + 16;
	while (inleft > 0) {
		size_t left = out->len < limit ? limit - out->len : 0;
		size_t room = inleft * 2 + 64;
		if (room > left)
			room = left;
		if (room < 16)
			break; /* the output bound: the rest is not converted */
		char *o = (char *)buf_reserve(out, room);
		size_t oleft = room;
		const char *in_before = in;
		size_t r = iconv(cd, &in, &inleft, &o, &oleft);
		int err = errno;
		buf_commit(out, room - oleft);
		if (r != (size_t)-1)
			break;
		if (err == E2BIG) {
			if (in == in_before && oleft == room)
				break; /* no progress with 16+ bytes of room: give up */
			continue;
		}
		put_replacement(out);
		if (err != EILSEQ)
			break; /* EINVAL: the input ends inside a character */
		size_t skip = unit < inleft ? unit : inleft;
		in += skip;
		inleft -= skip;
	}
	/* a stateful decoder may still hold a character */
	char *o = (char *)buf_reserve(out, 32);
	size_t oleft = 32;
	if (iconv(cd, NULL, NULL, &o, &oleft) == (size_t)-1)
		oleft = 32;
	buf_commit(out, 32 - oleft);
}

int imap_mime_charset_to_utf8(const char *charset, size_t charset_len, const unsigned char *p,
			      size_t len, struct buf *out)
{
	char name[CHARSET_NAME_MAX];
	iconv_t cd = (iconv_t)-1;
	switch (charset_resolve(charset, charset_len, name)) {
	case CHARSET_COPY:
		buf_append(out, p, len);
		return 0;
	case CHARSET_ICONV:
		cd = iconv_get(name);
		break;
	case CHARSET_UNKNOWN:
		break;
	}
	if (cd == (iconv_t)-1) {
		buf_append(out, p, len);
		return -1;
	}
	iconv_to_utf8(cd, charset_unit(name), p, len, out);
	return 0;
}

bool imap_mime_charset_known(const char *charset, size_t charset_len)
{
	char name[CHARSET_NAME_MAX];
	switch (charset_resolve(charset, charset_len, name)) {
	case CHARSET_COPY:
		return true;
	case CHARSET_ICONV:
		return iconv_get(name) != (iconv_t)-1;
	case CHARSET_UNKNOWN:
		break;
	}
	return false;
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

/* Decompositions nest at most four deep in Unicode 14; a bound all the same. */
#define FOLD_MAX_DEPTH 8

/* RFC 5051 (i;unicode-casemap), step 2 for one character: its titlecase
 * mapping, and if that has a decomposition (canonical or compatibility),
 * each character of it treated the same way.  So "e" + U+0301 and U+00E9
 * both give "E" + U+0301, U+0131 (dotless i) gives "I", U+FB01 gives "FI". */
static void fold_char(struct buf *out, ucs4_t c, unsigned depth)
{
	ucs4_t d[UC_DECOMPOSITION_MAX_LENGTH];
	int tag;
	c = uc_totitle(c);
	int n = depth < FOLD_MAX_DEPTH ? uc_decomposition(c, &tag, d) : -1;
	if (n <= 0) {
		put_utf8(out, c);
		return;
	}
	for (int i = 0; i < n; i++)
		fold_char(out, d[i], depth + 1);
}

void mime_fold_utf8(const unsigned char *p, size_t len, struct buf *out)
{
	size_t i = 0;
	while (i < len) {
		/* ASCII runs, the common case, are titlecased without decoding */
		size_t run = 0;
		while (i + run < len && p[i + run] < 0x80)
			run++;
		if (run > 0) {
			unsigned char *d = buf_reserve(out, run);
			for (size_t k = 0; k < run; k++) {
				unsigned char c = p[i + k];
				d[k] = c >= 'a' && c <= 'z' ? (unsigned char)(c - 32) : c;
			}
			buf_commit(out, run);
			i += run;
			continue;
		}
		ucs4_t c;
		int n = u8_mbtoucr(&c, p + i, len - i);
		if (n <= 0) {
			/* not UTF-8: RFC 5051 compares such bytes as they are */
			buf_append_byte(out, p[i++]);
			continue;
		}
		fold_char(out, c, 0);
		i += (size_t)n;
	}
}

/* ---- RFC 2047 ---- */

struct encoded_word {
	const char *charset; /* without an RFC 2231 "*lang" suffix */
	size_t charset_len;
	bool base64;
	const unsigned char *text;
	size_t text_len;
};

/* Parses "=?charset?enc?text?=" at s (no whitespace inside).  Returns its
 * length, or 0 if s does not start a valid one. */
static size_t parse_encoded_word(const unsigned char *s, size_t n, struct encoded_word *ew)
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
	ew->charset = (const char *)s + cs_start;
	ew->charset_len = cs_len;
	ew->base64 = enc == 'B' || enc == 'b';
	ew->text = s + t_start;
	ew->text_len = t - t_start;
	return t + 2;
}

/* Bytes of adjacent encoded words in one charset, converted together:
 * mailers split multibyte characters across words. */
struct ew_run {
	struct buf raw;
	const char *charset;
	size_t charset_len;
};

static void ew_run_flush(struct ew_run *run, struct buf *out)
{
	if (run->charset == NULL)
		return;
	(void)imap_mime_charset_to_utf8(run->charset, run->charset_len, run->raw.data, run->raw.len,
					out);
	buf_reset(&run->raw);
	run->charset = NULL;
}

static void ew_run_add(struct ew_run *run, const struct encoded_word *ew, struct buf *out)
{
	if (run->charset != NULL &&
	    (run->charset_len != ew->charset_len ||
	     strncasecmp(run->charset, ew->charset, ew->charset_len) != 0))
		ew_run_flush(run, out);
	run->charset = ew->charset;
	run->charset_len = ew->charset_len;
	if (ew->base64)
		mime_decode_base64(ew->text, ew->text_len, &run->raw);
	else
		mime_decode_qp(ew->text, ew->text_len, true, &run->raw);
}

void imap_mime_decode_header(const unsigned char *value, size_t len, struct buf *out)
{
	struct buf u = BUF_INIT;
	struct ew_run run = { BUF_INIT, NULL, 0 };
	struct encoded_word ew;
	mime_unfold(value, len, &u);
	const unsigned char *s = u.data;
	size_t n = u.len, i = 0;
	while (i < n) {
		size_t ew_len = parse_encoded_word(s + i, n - i, &ew);
		if (ew_len > 0) {
			ew_run_add(&run, &ew, out);
			i += ew_len;
			continue;
		}
		if (run.charset != NULL && (s[i] == ' ' || s[i] == '\t')) {
			/* whitespace between two encoded words is dropped */
			size_t j = i;
			while (j < n && (s[j] == ' ' || s[j] == '\t'))
				j++;
			if (j < n && parse_encoded_word(s + j, n - j, &ew) > 0) {
				i = j;
				continue;
			}
		}
		ew_run_flush(&run, out);
		buf_append_byte(out, s[i++]);
	}
	ew_run_flush(&run, out);
	if (out->data == NULL)
		buf_append_str(out, "");
	buf_free(&run.raw);
	buf_free(&u);
}

/* ---- search ---- */

static bool folded_contains(const struct buf *hay, const struct buf *needle)
{
	if (needle->len == 0)
		return true;
	return hay->len >= needle->len && memmem(hay->data, hay->len, needle->data, needle->len) != NULL;
}

static bool is_address_field(const char *field)
{
	static const char *const names[] = { "from", "to", "cc", "bcc", "sender", "reply-to" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcasecmp(field, names[i]) == 0)
			return true;
	}
	return false;
}

bool imap_mime_header_contains(const struct imap_mime *m, const char *field, const char *needle)
{
	struct buf fneedle = BUF_INIT, dec = BUF_INIT, folded = BUF_INIT, plain = BUF_INIT;
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
		if (!found && field != NULL && is_address_field(field)) {
			/* The address as parsed too: "<user (c)@ (c) example.org>"
			 * holds user@example.org, which no substring of the text
			 * does (RFC 3501 6.4.4 matches the field's contents). */
			buf_reset(&plain);
			buf_reset(&dec);
			buf_reset(&folded);
			mime_address_text(f.value, f.value_len, &plain);
			imap_mime_decode_header(plain.data, plain.len, &dec);
			mime_fold_utf8(dec.data, dec.len, &folded);
			found = folded_contains(&folded, &fneedle);
		}
	}
	buf_free(&fneedle);
	buf_free(&dec);
	buf_free(&folded);
	buf_free(&plain);
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
		if (cs == NULL)
			cs = "us-ascii";
		(void)imap_mime_charset_to_utf8(cs, strlen(cs), dec.data, dec.len, &utf8);
		mime_fold_utf8(utf8.data, utf8.len, &folded);
		found = folded_contains(&folded, &fneedle);
	}
	buf_free(&fneedle);
	buf_free(&dec);
	buf_free(&utf8);
	buf_free(&folded);
	return found;
}
