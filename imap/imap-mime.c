/* MIME parsing into a part tree, header field iteration, Content-* value
 * lexing (RFC 2045, RFC 2231 parameter sections) and BODY[section]
 * extraction.  See imap-mime.h for the contracts.
 *
 * The tree is built top-down without recursion: every part is appended to
 * one array with the byte range it covers, and a loop over that array parses
 * each part's header and, for containers, appends its children.  A
 * multipart's children are found by scanning only that multipart's own
 * range for its delimiter lines. */
#include "imap/imap-mime-private.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/xalloc.h"

/* Longest boundary we look for (RFC 2046 allows 70; be lenient). */
#define MIME_MAX_BOUNDARY 200
/* Raw parameters kept per header before RFC 2231 merging. */
#define MIME_MAX_RAW_PARAMS 256

static bool is_wsp(unsigned char c)
{
	return c == ' ' || c == '\t';
}

static bool is_tspecial(unsigned char c)
{
	return c != '\0' && strchr("()<>@,;:\\\"/[]?=", c) != NULL;
}

static bool is_token_char(unsigned char c)
{
	return c > ' ' && c != 0x7f && !is_tspecial(c);
}

static char *xstrdup_upper(const char *s, size_t n)
{
	char *r = xstrndup(s, n);
	for (char *c = r; *c != '\0'; c++)
		*c = (char)toupper((unsigned char)*c);
	return r;
}

/* ---- header fields ---- */

/* Returns the offset just past the LF ending the line at pos, or end. */
static size_t line_next(const unsigned char *text, size_t pos, size_t end)
{
	const unsigned char *lf = memchr(text + pos, '\n', end - pos);
	return lf == NULL ? end : (size_t)(lf - text) + 1;
}

static bool line_is_blank(const unsigned char *text, size_t pos, size_t end)
{
	return text[pos] == '\n' || (text[pos] == '\r' && pos + 1 < end && text[pos + 1] == '\n');
}

/* The header of a part starting at start ends after the first blank line;
 * without one, everything is header. */
static size_t find_body_start(const unsigned char *text, size_t start, size_t end)
{
	size_t pos = start;
	while (pos < end) {
		if (line_is_blank(text, pos, end))
			return line_next(text, pos, end);
		pos = line_next(text, pos, end);
	}
	return end;
}

void mime_hdr_iter_init(struct mime_hdr_iter *it, const struct imap_mime *m,
			const struct mime_part *part)
{
	it->text = m->text;
	it->pos = part->hdr_start;
	it->end = part->body_start;
}

bool mime_hdr_next(struct mime_hdr_iter *it, struct mime_field *f)
{
	const unsigned char *t = it->text;
	while (it->pos < it->end) {
		size_t ls = it->pos;
		if (line_is_blank(t, ls, it->end)) {
			it->pos = it->end;
			return false;
		}
		size_t first_end = line_next(t, ls, it->end);
		size_t le = first_end;
		while (le < it->end && is_wsp(t[le]))
			le = line_next(t, le, it->end);
		it->pos = le;
		if (is_wsp(t[ls]))
			continue; /* continuation without a field: junk */
		const unsigned char *colon = memchr(t + ls, ':', first_end - ls);
		if (colon == NULL)
			continue;
		size_t name_len = (size_t)(colon - (t + ls));
		while (name_len > 0 && is_wsp(t[ls + name_len - 1]))
			name_len--;
		if (name_len == 0)
			continue;
		size_t vs = (size_t)(colon - t) + 1, ve = le;
		if (ve > vs && t[ve - 1] == '\n')
			ve--;
		if (ve > vs && t[ve - 1] == '\r')
			ve--;
		f->name = t + ls;
		f->name_len = name_len;
		f->value = t + vs;
		f->value_len = ve - vs;
		f->line_start = ls;
		f->line_end = le;
		return true;
	}
	return false;
}

static bool field_is(const struct mime_field *f, const char *name)
{
	size_t n = strlen(name);
	return f->name_len == n && strncasecmp((const char *)f->name, name, n) == 0;
}

bool mime_hdr_find(const struct imap_mime *m, const struct mime_part *part, const char *name,
		   struct mime_field *f_r)
{
	struct mime_hdr_iter it;
	mime_hdr_iter_init(&it, m, part);
	while (mime_hdr_next(&it, f_r)) {
		if (field_is(f_r, name))
			return true;
	}
	return false;
}

void mime_unfold(const unsigned char *v, size_t len, struct buf *out)
{
	size_t i = 0, end = len;
	while (i < end && (is_wsp(v[i]) || v[i] == '\r' || v[i] == '\n'))
		i++;
	while (end > i && (is_wsp(v[end - 1]) || v[end - 1] == '\r' || v[end - 1] == '\n'))
		end--;
	while (i < end) {
		const unsigned char *cr = memchr(v + i, '\r', end - i);
		const unsigned char *lf = memchr(v + i, '\n', end - i);
		size_t stop = end;
		if (cr != NULL)
			stop = (size_t)(cr - v);
		if (lf != NULL && (size_t)(lf - v) < stop)
			stop = (size_t)(lf - v);
		buf_append(out, v + i, stop - i);
		i = stop < end ? stop + 1 : end;
	}
	if (out->data == NULL)
		buf_append_str(out, "");
}

/* ---- RFC 2045 lexing ---- */

void mime_skip_cfws(const unsigned char **pp, const unsigned char *end)
{
	const unsigned char *p = *pp;
	while (p < end) {
		if (is_wsp(*p) || *p == '\r' || *p == '\n') {
			p++;
		} else if (*p == '(') {
			unsigned depth = 0;
			while (p < end) {
				if (*p == '\\' && p + 1 < end) {
					p += 2;
					continue;
				}
				if (*p == '(')
					depth++;
				else if (*p == ')' && --depth == 0) {
					p++;
					break;
				}
				p++;
			}
		} else {
			break;
		}
	}
	*pp = p;
}

void mime_read_quoted(const unsigned char **pp, const unsigned char *end, struct buf *out)
{
	const unsigned char *p = *pp + 1;
	while (p < end && *p != '"') {
		if (*p == '\\' && p + 1 < end)
			p++;
		if (*p != '\r' && *p != '\n')
			buf_append_byte(out, *p);
		p++;
	}
	if (p < end)
		p++;
	*pp = p;
}

static size_t read_token(const unsigned char **pp, const unsigned char *end)
{
	const unsigned char *p = *pp;
	while (p < end && is_token_char(*p))
		p++;
	size_t n = (size_t)(p - *pp);
	*pp = p;
	return n;
}

struct raw_param {
	char *attr; /* without the RFC 2231 "*N*" suffix, uppercased */
	char *value;
	bool ext;    /* value is charset'lang'pct-encoded or a pct-encoded section */
	int section; /* -1 without a section number */
	bool used;
};

static bool is_attr_char(unsigned char c)
{
	return is_token_char(c) && c != '*' && c != '\'' && c != '%' && c < 0x80;
}

static void pct_encode(const char *s, struct buf *out)
{
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
		if (is_attr_char(*p))
			buf_append_byte(out, *p);
		else
			buf_appendf(out, "%%%02X", *p);
	}
}

static void param_push(mime_param_array *params, char *name, char *value)
{
	if (params->count >= MIME_MAX_PARAMS) {
		free(name);
		free(value);
		return;
	}
	struct mime_param mp = { name, value };
	ARRAY_PUSH(params, mp);
}

/* Joins RFC 2231 sections of raw[i]'s attribute into one parameter. */
static void merge_sections(struct raw_param *raw, size_t count, size_t i, mime_param_array *params)
{
	int idx[MIME_MAX_SECTIONS];
	for (size_t s = 0; s < MIME_MAX_SECTIONS; s++)
		idx[s] = -1;
	bool any_ext = false;
	for (size_t j = i; j < count; j++) {
		if (raw[j].used || raw[j].section < 0 || strcmp(raw[j].attr, raw[i].attr) != 0)
			continue;
		raw[j].used = true;
		if (idx[raw[j].section] < 0)
			idx[raw[j].section] = (int)j;
		if (raw[j].ext)
			any_ext = true;
	}
	struct buf v = BUF_INIT;
	for (size_t s = 0; s < MIME_MAX_SECTIONS && idx[s] >= 0; s++) {
		const struct raw_param *rp = &raw[idx[s]];
		if (!any_ext)
			buf_append_str(&v, rp->value);
		else if (rp->ext)
			buf_append_str(&v, rp->value);
		else {
			if (s == 0)
				buf_append_str(&v, "''");
			pct_encode(rp->value, &v);
		}
	}
	if (idx[0] < 0) {
		buf_free(&v);
		return; /* sections without a 0th: nothing sensible to join */
	}
	char *name = any_ext ? xasprintf("%s*", raw[i].attr) : xstrdup(raw[i].attr);
	param_push(params, name, xstrdup(buf_cstr(&v)));
	buf_free(&v);
}

static void merge_params(struct raw_param *raw, size_t count, mime_param_array *params)
{
	for (size_t i = 0; i < count; i++) {
		if (raw[i].used)
			continue;
		if (raw[i].section >= 0) {
			merge_sections(raw, count, i, params);
			continue;
		}
		raw[i].used = true;
		/* the first of duplicate parameters wins */
		bool dup = false;
		for (size_t j = 0; j < i; j++) {
			if (raw[j].section < 0 && raw[j].ext == raw[i].ext &&
			    strcmp(raw[j].attr, raw[i].attr) == 0)
				dup = true;
		}
		if (dup)
			continue;
		char *name = raw[i].ext ? xasprintf("%s*", raw[i].attr) : xstrdup(raw[i].attr);
		param_push(params, name, xstrdup(raw[i].value));
	}
}

/* Splits "NAME*12*" into NAME, section 12, extended. */
static void raw_param_init(struct raw_param *rp, const unsigned char *a, size_t alen,
			   char *value)
{
	rp->ext = false;
	rp->section = -1;
	rp->used = false;
	rp->value = value;
	if (alen > 0 && a[alen - 1] == '*') {
		rp->ext = true;
		alen--;
	}
	size_t star = alen;
	while (star > 0 && a[star - 1] != '*')
		star--;
	if (star > 0 && star < alen && alen - star <= 3) {
		bool digits = true;
		int n = 0;
		for (size_t k = star; k < alen; k++) {
			if (!isdigit(a[k]))
				digits = false;
			else
				n = n * 10 + (a[k] - '0');
		}
		/* RFC 2231: no leading zeros */
		if (digits && n < MIME_MAX_SECTIONS && (a[star] != '0' || alen - star == 1)) {
			rp->section = n;
			alen = star - 1;
		}
	}
	rp->attr = xstrdup_upper((const char *)a, alen);
}

void mime_parse_params(const unsigned char *p, const unsigned char *end, mime_param_array *params)
{
	struct raw_param raw[MIME_MAX_RAW_PARAMS];
	size_t count = 0;
	struct buf v = BUF_INIT;

	while (count < MIME_MAX_RAW_PARAMS) {
		mime_skip_cfws(&p, end);
		if (p >= end)
			break;
		if (*p != ';') {
			/* junk between parameters: resume at the next ';' */
			while (p < end && *p != ';') {
				if (*p == '"')
					mime_read_quoted(&p, end, &v);
				else
					p++;
			}
			buf_reset(&v);
			continue;
		}
		p++;
		mime_skip_cfws(&p, end);
		const unsigned char *a = p;
		size_t alen = read_token(&p, end);
		mime_skip_cfws(&p, end);
		if (alen == 0 || p >= end || *p != '=')
			continue;
		p++;
		mime_skip_cfws(&p, end);
		buf_reset(&v);
		if (p < end && *p == '"') {
			mime_read_quoted(&p, end, &v);
		} else {
			/* lenient: real mail has unquoted values with '/', '=' etc. */
			while (p < end && *p != ';' && *p > ' ' && *p != 0x7f && *p != '"' && *p != '(')
				buf_append_byte(&v, *p++);
		}
		raw_param_init(&raw[count++], a, alen, xstrdup(buf_cstr(&v)));
	}
	merge_params(raw, count, params);
	for (size_t i = 0; i < count; i++) {
		free(raw[i].attr);
		free(raw[i].value);
	}
	buf_free(&v);
}

void mime_params_free(mime_param_array *params)
{
	for (size_t i = 0; i < params->count; i++) {
		free(params->items[i].name);
		free(params->items[i].value);
	}
	ARRAY_FREE(params);
}

const char *mime_param_get(const mime_param_array *params, const char *name)
{
	for (size_t i = 0; i < params->count; i++) {
		if (strcmp(params->items[i].name, name) == 0)
			return params->items[i].value;
	}
	return NULL;
}

/* ---- the part tree ---- */

static int part_add(struct imap_mime *m, int parent, size_t start, size_t end, bool is_message)
{
	struct mime_part np;
	memset(&np, 0, sizeof(np));
	np.hdr_start = start;
	np.body_start = start;
	np.end = end;
	np.parent = parent;
	np.first_child = np.last_child = np.next = -1;
	np.is_message = is_message;
	np.depth = parent < 0 ? 0 : m->parts.items[parent].depth + 1;
	ARRAY_PUSH(&m->parts, np);
	int idx = (int)m->parts.count - 1;
	if (parent >= 0) {
		struct mime_part *pp = &m->parts.items[parent];
		if (pp->last_child >= 0)
			m->parts.items[pp->last_child].next = idx;
		else
			pp->first_child = idx;
		pp->last_child = idx;
		pp->child_count++;
	}
	return idx;
}

struct mime_part *mime_part_child(const struct imap_mime *m, const struct mime_part *part,
				  unsigned n)
{
	int c = part->first_child;
	for (unsigned i = 1; c >= 0 && i < n; i++)
		c = m->parts.items[c].next;
	return c < 0 || n == 0 ? NULL : &m->parts.items[c];
}

static char *unfolded_dup(const struct mime_field *f)
{
	struct buf b = BUF_INIT;
	mime_unfold(f->value, f->value_len, &b);
	char *r = xstrdup(buf_cstr(&b));
	buf_free(&b);
	return r;
}

static void parse_content_type(struct mime_part *part, const struct mime_field *f)
{
	const unsigned char *p = f->value, *end = f->value + f->value_len;
	mime_skip_cfws(&p, end);
	const unsigned char *t = p;
	size_t tlen = read_token(&p, end);
	mime_skip_cfws(&p, end);
	if (tlen == 0 || p >= end || *p != '/')
		return;
	p++;
	mime_skip_cfws(&p, end);
	const unsigned char *s = p;
	size_t slen = read_token(&p, end);
	if (slen == 0)
		return;
	part->type = xstrdup_upper((const char *)t, tlen);
	part->subtype = xstrdup_upper((const char *)s, slen);
	mime_parse_params(p, end, &part->params);
}

static void parse_disposition(struct mime_part *part, const struct mime_field *f)
{
	const unsigned char *p = f->value, *end = f->value + f->value_len;
	mime_skip_cfws(&p, end);
	const unsigned char *t = p;
	size_t tlen = read_token(&p, end);
	if (tlen == 0)
		return;
	part->disposition = xstrdup_upper((const char *)t, tlen);
	mime_parse_params(p, end, &part->disp_params);
}

static void parse_encoding(struct mime_part *part, const struct mime_field *f)
{
	const unsigned char *p = f->value, *end = f->value + f->value_len;
	mime_skip_cfws(&p, end);
	const unsigned char *t = p;
	size_t tlen = read_token(&p, end);
	if (tlen > 0)
		part->encoding = xstrdup_upper((const char *)t, tlen);
}

static void parse_part_header(struct imap_mime *m, struct mime_part *part)
{
	struct mime_hdr_iter it;
	struct mime_field f;
	mime_hdr_iter_init(&it, m, part);
	while (mime_hdr_next(&it, &f)) {
		if (f.name_len < 8 || strncasecmp((const char *)f.name, "content-", 8) != 0)
			continue;
		if (field_is(&f, "content-type") && part->type == NULL)
			parse_content_type(part, &f);
		else if (field_is(&f, "content-transfer-encoding") && part->encoding == NULL)
			parse_encoding(part, &f);
		else if (field_is(&f, "content-disposition") && part->disposition == NULL)
			parse_disposition(part, &f);
		else if (field_is(&f, "content-id") && part->id == NULL)
			part->id = unfolded_dup(&f);
		else if (field_is(&f, "content-description") && part->description == NULL)
			part->description = unfolded_dup(&f);
		else if (field_is(&f, "content-md5") && part->md5 == NULL)
			part->md5 = unfolded_dup(&f);
		else if (field_is(&f, "content-location") && part->location == NULL)
			part->location = unfolded_dup(&f);
		else if (field_is(&f, "content-language") && part->language == NULL)
			part->language = unfolded_dup(&f);
	}
}

static void set_type(struct mime_part *part, const char *type, const char *subtype)
{
	free(part->type);
	free(part->subtype);
	part->type = xstrdup(type);
	part->subtype = xstrdup(subtype);
}

/* Malformed or over-limit containers become plain text. */
static void degrade_to_text(struct mime_part *part)
{
	set_type(part, "TEXT", "PLAIN");
	mime_params_free(&part->params);
}

/* Is the line at ls a delimiter "--boundary..."?  RFC 2046 5.1.1: the
 * boundary only has to start the line, so "--boundary junk" counts too.
 * Sets *close_r for "--boundary--" and *exact_r when only whitespace
 * follows. */
static bool is_delimiter(const unsigned char *text, size_t ls, size_t le, const char *boundary,
			 size_t blen, bool *close_r, bool *exact_r)
{
	if (le - ls < 2 + blen || text[ls] != '-' || text[ls + 1] != '-' ||
	    memcmp(text + ls + 2, boundary, blen) != 0)
		return false;
	size_t q = ls + 2 + blen;
	*close_r = false;
	if (q + 2 <= le && text[q] == '-' && text[q + 1] == '-') {
		*close_r = true;
		q += 2;
	}
	*exact_r = true;
	for (; q < le; q++) {
		if (!is_wsp(text[q]) && text[q] != '\r' && text[q] != '\n')
			*exact_r = false;
	}
	return true;
}

/* Inner boundaries that extend the outer one, remembered per multipart. */
#define MIME_MAX_INNER_BOUNDARIES 16

struct inner_boundaries {
	size_t count;
	size_t start[MIME_MAX_INNER_BOUNDARIES], len[MIME_MAX_INNER_BOUNDARIES];
};

/* If the line declares boundary=X where X is longer than and starts with
 * the outer boundary (b vs b-2), remembers X: a line "--X" is then the
 * nested multipart's delimiter, not a prefix match of the outer one.
 * Dovecot gets the same effect from its stack of open boundaries. */
static void note_inner_boundary(const unsigned char *t, size_t ls, size_t le,
				const char *boundary, size_t blen, struct inner_boundaries *ib)
{
	static const char key[] = "boundary";
	const size_t klen = sizeof(key) - 1;
	for (size_t i = ls; i + klen < le && ib->count < MIME_MAX_INNER_BOUNDARIES; i++) {
		if ((t[i] | 0x20) != 'b' || strncasecmp((const char *)t + i, key, klen) != 0)
			continue;
		size_t q = i + klen;
		while (q < le && is_wsp(t[q]))
			q++;
		if (q >= le || t[q] != '=')
			continue;
		q++;
		while (q < le && is_wsp(t[q]))
			q++;
		bool quoted = q < le && t[q] == '"';
		if (quoted)
			q++;
		size_t vs = q;
		while (q < le && (quoted ? t[q] != '"' : (t[q] > ' ' && t[q] != ';')) &&
		       t[q] != '\r' && t[q] != '\n')
			q++;
		if (q - vs > blen && memcmp(t + vs, boundary, blen) == 0) {
			ib->start[ib->count] = vs;
			ib->len[ib->count] = q - vs;
			ib->count++;
		}
		i = q;
	}
}

static bool is_inner_delimiter(const unsigned char *t, size_t ls, size_t le,
			       const struct inner_boundaries *ib)
{
	for (size_t k = 0; k < ib->count; k++) {
		if (le - ls >= 2 + ib->len[k] && memcmp(t + ls + 2, t + ib->start[k], ib->len[k]) == 0)
			return true;
	}
	return false;
}

/* Appends the children of the multipart at idx.  Returns their count. */
static unsigned split_multipart(struct imap_mime *m, int idx, const char *boundary)
{
	const unsigned char *t = m->text;
	size_t blen = strlen(boundary);
	size_t pos = m->parts.items[idx].body_start, end = m->parts.items[idx].end;
	size_t child_start = 0;
	bool in_part = false, in_header = false;
	struct inner_boundaries ib = { 0, { 0 }, { 0 } };
	unsigned n = 0;

	while (pos < end) {
		size_t ls = pos, le = line_next(t, pos, end);
		pos = le;
		bool close, exact;
		if (t[ls] != '-' || !is_delimiter(t, ls, le, boundary, blen, &close, &exact)) {
			/* look for declarations only in what may be a header: after
			 * a delimiter of ours or a "--" line, up to a blank line */
			if (line_is_blank(t, ls, le))
				in_header = false;
			else if (le - ls > 1 && t[ls] == '-' && t[ls + 1] == '-')
				in_header = true;
			else if (in_part && in_header && le - ls > 8)
				note_inner_boundary(t, ls, le, boundary, blen, &ib);
			continue;
		}
		if (!exact && is_inner_delimiter(t, ls, le, &ib)) {
			in_header = true; /* the nested part's header follows */
			continue;
		}
		if (in_part) {
			/* the line end before a delimiter belongs to the delimiter */
			size_t ce = ls;
			if (ce > child_start && t[ce - 1] == '\n')
				ce--;
			if (ce > child_start && t[ce - 1] == '\r')
				ce--;
			if (m->parts.count >= IMAP_MIME_MAX_PARTS)
				return n;
			part_add(m, idx, child_start, ce, false);
			n++;
		}
		if (close)
			return n;
		in_part = true;
		in_header = true;
		child_start = le;
	}
	if (in_part && child_start < end && m->parts.count < IMAP_MIME_MAX_PARTS) {
		part_add(m, idx, child_start, end, false);
		n++;
	}
	return n;
}

static void process_part(struct imap_mime *m, int idx)
{
	struct mime_part *part = &m->parts.items[idx];
	part->body_start = find_body_start(m->text, part->hdr_start, part->end);
	parse_part_header(m, part);
	if (part->type == NULL) {
		const struct mime_part *parent = part->parent < 0 ? NULL : &m->parts.items[part->parent];
		if (parent != NULL && parent->multipart && strcmp(parent->subtype, "DIGEST") == 0)
			set_type(part, "MESSAGE", "RFC822");
		else
			set_type(part, "TEXT", "PLAIN");
	}
	bool room = part->depth < IMAP_MIME_MAX_DEPTH && m->parts.count < IMAP_MIME_MAX_PARTS;
	if (strcmp(part->type, "MULTIPART") == 0) {
		const char *boundary = mime_param_get(&part->params, "BOUNDARY");
		if (room && boundary != NULL && boundary[0] != '\0' &&
		    strlen(boundary) <= MIME_MAX_BOUNDARY) {
			/* set before splitting: children look at it for the digest default */
			part->multipart = true;
			char *b = xstrdup(boundary);
			unsigned n = split_multipart(m, idx, b);
			free(b);
			part = &m->parts.items[idx];
			if (n == 0)
				part->multipart = false;
		}
		if (!part->multipart)
			degrade_to_text(part);
	} else if (strcmp(part->type, "MESSAGE") == 0 && strcmp(part->subtype, "RFC822") == 0) {
		if (room) {
			part->rfc822 = true;
			part_add(m, idx, part->body_start, part->end, true);
		} else {
			degrade_to_text(part);
		}
	}
}

struct imap_mime *imap_mime_parse(const unsigned char *text, size_t len)
{
	struct imap_mime *m = xcalloc(1, sizeof(*m));
	/* offsets are added to text, which must not be NULL even when empty */
	m->text = text != NULL ? text : (const unsigned char *)"";
	m->len = len;
	part_add(m, -1, 0, len, true);
	/* children are appended behind their parent, so one pass visits all */
	for (size_t i = 0; i < m->parts.count; i++)
		process_part(m, (int)i);
	return m;
}

void imap_mime_free(struct imap_mime **mp)
{
	struct imap_mime *m = *mp;
	if (m == NULL)
		return;
	for (size_t i = 0; i < m->parts.count; i++) {
		struct mime_part *p = &m->parts.items[i];
		free(p->type);
		free(p->subtype);
		mime_params_free(&p->params);
		free(p->id);
		free(p->description);
		free(p->encoding);
		free(p->md5);
		free(p->location);
		free(p->language);
		free(p->disposition);
		mime_params_free(&p->disp_params);
	}
	ARRAY_FREE(&m->parts);
	free(m);
	*mp = NULL;
}

size_t imap_mime_part_count(const struct imap_mime *m)
{
	return m->parts.count;
}

/* ---- BODY[section] ---- */

/* Resolves a dotted part number (RFC 3501 6.4.5).  Returns NULL if there is
 * no such part. */
static const struct mime_part *resolve_part(const struct imap_mime *m, const char *spec)
{
	const struct mime_part *cur = &m->parts.items[0];
	bool at_message = true;
	const char *s = spec;
	while (*s != '\0') {
		unsigned long n = 0;
		if (*s < '1' || *s > '9')
			return NULL;
		while (*s >= '0' && *s <= '9') {
			n = n * 10 + (unsigned long)(*s - '0');
			if (n > IMAP_MIME_MAX_PARTS)
				return NULL;
			s++;
		}
		if (*s == '.') {
			s++;
			if (*s == '\0')
				return NULL;
		} else if (*s != '\0') {
			return NULL;
		}
		if (!at_message) {
			if (cur->rfc822) {
				cur = &m->parts.items[cur->first_child];
			} else if (cur->multipart) {
				cur = mime_part_child(m, cur, (unsigned)n);
				if (cur == NULL)
					return NULL;
				continue;
			} else {
				return NULL;
			}
		}
		/* cur is a message: its parts, or itself as part 1 */
		if (cur->multipart)
			cur = mime_part_child(m, cur, (unsigned)n);
		else if (n != 1)
			cur = NULL;
		if (cur == NULL)
			return NULL;
		at_message = false;
	}
	return cur;
}

const struct mime_part *mime_resolve_part(const struct imap_mime *m, const char *spec)
{
	return resolve_part(m, spec);
}

static const char *header_eol(const struct imap_mime *m, const struct mime_part *part)
{
	const unsigned char *lf = memchr(m->text + part->hdr_start, '\n',
					 part->body_start - part->hdr_start);
	if (lf != NULL && (lf == m->text + part->hdr_start || lf[-1] != '\r'))
		return "\n";
	return "\r\n";
}

static void header_fields(const struct imap_mime *m, const struct mime_part *msg, bool negate,
			  const char *const *fields, size_t field_count, struct buf *out)
{
	struct mime_hdr_iter it;
	struct mime_field f;
	const char *eol = header_eol(m, msg);
	mime_hdr_iter_init(&it, m, msg);
	while (mime_hdr_next(&it, &f)) {
		bool match = false;
		for (size_t i = 0; i < field_count && !match; i++)
			match = field_is(&f, fields[i]);
		if (match == negate)
			continue;
		buf_append(out, m->text + f.line_start, f.line_end - f.line_start);
		if (m->text[f.line_end - 1] != '\n')
			buf_append_str(out, eol);
	}
	buf_append_str(out, eol);
}

/* Finds the message whose header/text a section names, and for ALL and
 * MIME of a numbered part, the byte range directly.  Returns -1 if the
 * section does not exist, 0 with *range_r set when the answer is the range
 * [*start_r, *start_r + *len_r) of the text, 0 with *msg_r set otherwise. */
static int section_locate(const struct imap_mime *m, const char *part, enum imap_section_kind kind,
			  const struct mime_part **msg_r, bool *range_r, size_t *start_r,
			  size_t *len_r)
{
	const struct mime_part *p = &m->parts.items[0];
	const struct mime_part *msg = p;

	*range_r = true;
	if (part != NULL && part[0] != '\0') {
		p = resolve_part(m, part);
		if (p == NULL)
			return -1;
		if (kind == IMAP_SECTION_ALL) {
			*start_r = p->body_start;
			*len_r = p->end - p->body_start;
			return 0;
		}
		if (kind == IMAP_SECTION_MIME) {
			*start_r = p->hdr_start;
			*len_r = p->body_start - p->hdr_start;
			return 0;
		}
		if (!p->rfc822)
			return -1;
		msg = &m->parts.items[p->first_child];
	}
	switch (kind) {
	case IMAP_SECTION_ALL:
		*start_r = 0;
		*len_r = m->len;
		return 0;
	case IMAP_SECTION_HEADER:
		*start_r = msg->hdr_start;
		*len_r = msg->body_start - msg->hdr_start;
		return 0;
	case IMAP_SECTION_TEXT:
		*start_r = msg->body_start;
		*len_r = msg->end - msg->body_start;
		return 0;
	case IMAP_SECTION_HEADER_FIELDS:
	case IMAP_SECTION_HEADER_FIELDS_NOT:
		*range_r = false;
		*msg_r = msg;
		return 0;
	case IMAP_SECTION_MIME:
		return -1;
	}
	return -1;
}

int imap_mime_section(const struct imap_mime *m, const char *part, enum imap_section_kind kind,
		      const char *const *fields, size_t field_count, struct buf *out)
{
	return imap_mime_section_partial(m, part, kind, fields, field_count, 0, UINT64_MAX, out,
					 NULL);
}

int imap_mime_section_partial(const struct imap_mime *m, const char *part,
			      enum imap_section_kind kind, const char *const *fields,
			      size_t field_count, uint64_t offset, uint64_t count,
			      struct buf *out, uint64_t *full_size_r)
{
	const struct mime_part *msg = NULL;
	bool range;
	size_t start = 0, len = 0;
	struct buf tmp = BUF_INIT;

	if (section_locate(m, part, kind, &msg, &range, &start, &len) < 0)
		return -1;
	const unsigned char *data = m->text + start;
	if (!range) {
		header_fields(m, msg, kind == IMAP_SECTION_HEADER_FIELDS_NOT, fields, field_count,
			      &tmp);
		data = tmp.data;
		len = tmp.len;
	}
	if (full_size_r != NULL)
		*full_size_r = len;
	if (offset < len) {
		uint64_t n = len - offset;
		if (count < n)
			n = count;
		buf_append(out, data + offset, (size_t)n);
	}
	buf_free(&tmp);
	return 0;
}
