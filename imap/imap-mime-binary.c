/* BINARY (RFC 3516): a part's content with its transfer encoding undone,
 * and the reverse for APPEND of binary content: see imap-mime.h. */
#include <string.h>
#include <strings.h>

#include "imap/imap-mime-private.h"

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* RFC 2045 6.7 for a body: whitespace at the end of a line is dropped
 * (rule 3), "=" then optional whitespace then the line end is a soft line
 * break, "=XX" an octet; anything else is kept as it is, as robust
 * decoders do.  Line ends come out as they were. */
static void decode_qp_body(const unsigned char *p, size_t len, struct buf *out)
{
	size_t i = 0;
	while (i < len) {
		const unsigned char *lf = memchr(p + i, '\n', len - i);
		size_t eol = lf != NULL ? (size_t)(lf - p) : len;
		size_t end = eol;
		if (end > i && p[end - 1] == '\r')
			end--;
		/* end: the line's last octet + 1, before CR LF */
		size_t trim = end;
		while (trim > i && (p[trim - 1] == ' ' || p[trim - 1] == '\t'))
			trim--;
		bool soft = trim > i && p[trim - 1] == '=';
		size_t stop = soft ? trim - 1 : trim;
		for (size_t k = i; k < stop; k++) {
			int h, l;
			if (p[k] == '=' && k + 2 < stop && (h = hexval(p[k + 1])) >= 0 &&
			    (l = hexval(p[k + 2])) >= 0) {
				buf_append_byte(out, (unsigned char)(h * 16 + l));
				k += 2;
			} else {
				buf_append_byte(out, p[k]);
			}
		}
		if (!soft && eol < len)
			buf_append(out, p + end, eol + 1 - end);
		i = eol < len ? eol + 1 : len;
	}
}

int imap_mime_binary(const struct imap_mime *m, const char *part, struct buf *out)
{
	if (part == NULL || part[0] == '\0') {
		buf_append(out, m->text, m->len);
		return 0;
	}
	const struct mime_part *p = mime_resolve_part(m, part);
	if (p == NULL)
		return -1;
	if (p->multipart || p->rfc822 || p->encoding == NULL ||
	    strcasecmp(p->encoding, "7BIT") == 0 || strcasecmp(p->encoding, "8BIT") == 0 ||
	    strcasecmp(p->encoding, "BINARY") == 0)
		return imap_mime_section(m, part, IMAP_SECTION_ALL, NULL, 0, out);
	const unsigned char *body = m->text + p->body_start;
	size_t len = p->end - p->body_start;
	if (strcasecmp(p->encoding, "BASE64") == 0)
		mime_decode_base64(body, len, out);
	else if (strcasecmp(p->encoding, "QUOTED-PRINTABLE") == 0)
		decode_qp_body(body, len, out);
	else
		return -2;
	return 0;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void encode_base64(const unsigned char *p, size_t len, struct buf *out)
{
	size_t col = 0;
	for (size_t i = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;
		if (i + 1 < len)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < len)
			v |= p[i + 2];
		char q[4] = { b64[(v >> 18) & 63], b64[(v >> 12) & 63],
			      i + 1 < len ? b64[(v >> 6) & 63] : '=',
			      i + 2 < len ? b64[v & 63] : '=' };
		buf_append(out, q, 4);
		col += 4;
		if (col == 76) {
			buf_append(out, "\r\n", 2);
			col = 0;
		}
	}
	if (col > 0)
		buf_append(out, "\r\n", 2);
}

size_t imap_mime_binary_to_base64(const unsigned char *text, size_t len, struct buf *out)
{
	struct imap_mime *m = imap_mime_parse(text, len);
	size_t done = 0, cursor = 0;
	for (size_t i = 0; i < m->parts.count; i++) {
		const struct mime_part *p = &m->parts.items[i];
		if (p->multipart || p->rfc822 || p->hdr_start < cursor ||
		    p->body_start == p->end ||
		    memchr(text + p->body_start, '\0', p->end - p->body_start) == NULL)
			continue;
		/* The blank line that ends the header. */
		size_t blank = p->body_start;
		if (blank >= p->hdr_start + 2 && text[blank - 1] == '\n' && text[blank - 2] == '\r')
			blank -= 2;
		else if (blank > p->hdr_start && text[blank - 1] == '\n')
			blank -= 1;
		else
			continue;  /* no header end: nothing we can rewrite safely */
		buf_append(out, text + cursor, p->hdr_start - cursor);
		struct mime_hdr_iter it;
		struct mime_field f;
		size_t hc = p->hdr_start;
		mime_hdr_iter_init(&it, m, p);
		while (mime_hdr_next(&it, &f)) {
			if (f.name_len == 25 &&
			    strncasecmp((const char *)f.name, "Content-Transfer-Encoding", 25) == 0) {
				buf_append(out, text + hc, f.line_start - hc);
				hc = f.line_end;
			}
		}
		if (hc < blank)
			buf_append(out, text + hc, blank - hc);
		buf_append_str(out, "Content-Transfer-Encoding: base64\r\n\r\n");
		encode_base64(text + p->body_start, p->end - p->body_start, out);
		cursor = p->end;
		done++;
	}
	buf_append(out, text + cursor, len - cursor);
	imap_mime_free(&m);
	return done;
}
