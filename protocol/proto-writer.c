/* Writer of protocol lines (SPEC.md "Syntax").
 *
 * The writer only appends to a buffer; it keeps just enough state to put
 * single spaces between arguments and none after '(' or before ')'.  It
 * chooses the lightest form a string can take: atom, quoted string, or
 * literal, so the receiver's parser accepts exactly what is written here. */
#include "protocol/protocol.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/xalloc.h"

void proto_wr_init(struct proto_wr *w, struct buf *out)
{
	w->out = out;
	w->need_sp = false;
	w->depth = 0;
}

static void sep(struct proto_wr *w)
{
	if (w->need_sp)
		buf_append_byte(w->out, ' ');
	w->need_sp = true;
}

void proto_wr_begin(struct proto_wr *w, const char *tag, const char *name)
{
	assert(strcmp(tag, "*") == 0 || proto_is_atom(tag, strlen(tag)));
	assert(proto_is_atom(name, strlen(name)));
	buf_append_str(w->out, tag);
	buf_append_byte(w->out, ' ');
	buf_append_str(w->out, name);
	w->need_sp = true;
	w->depth = 0;
}

void proto_wr_atom(struct proto_wr *w, const char *atom)
{
	assert(proto_is_atom(atom, strlen(atom)));
	sep(w);
	buf_append_str(w->out, atom);
}

void proto_wr_u64(struct proto_wr *w, uint64_t v)
{
	sep(w);
	buf_appendf(w->out, "%" PRIu64, v);
}

static bool quotable(const unsigned char *p, size_t len)
{
	if (len > PROTO_MAX_QUOTED)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (p[i] == '\0' || p[i] == '\r' || p[i] == '\n')
			return false;
	}
	return true;
}

void proto_wr_str(struct proto_wr *w, const void *s, size_t len)
{
	const unsigned char *p = s;
	if (proto_is_atom(p, len)) {
		sep(w);
		buf_append(w->out, p, len);
	} else if (quotable(p, len)) {
		sep(w);
		buf_append_quoted(w->out, p, len);
	} else {
		proto_wr_literal(w, p, len);
	}
}

void proto_wr_cstr(struct proto_wr *w, const char *s)
{
	proto_wr_str(w, s, strlen(s));
}

void proto_wr_literal(struct proto_wr *w, const void *s, size_t len)
{
	sep(w);
	buf_appendf(w->out, "{%zu}\r\n", len);
	buf_append(w->out, s, len);
}

void proto_wr_guid(struct proto_wr *w, const struct guid *g)
{
	char hex[GUID_HEX_SIZE];
	guid_to_hex(g, hex);
	sep(w);
	buf_append(w->out, hex, GUID_HEX_SIZE - 1);
}

void proto_wr_date(struct proto_wr *w, int64_t secs, int tz_minutes)
{
	int tz = tz_minutes < 0 ? -tz_minutes : tz_minutes;
	assert(secs >= 0 && tz < 24 * 60);
	sep(w);
	buf_appendf(w->out, "%" PRId64 "%c%02d%02d", secs, tz_minutes < 0 ? '-' : '+', tz / 60,
		    tz % 60);
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

void proto_wr_uidset(struct proto_wr *w, const uint32_t *uids, size_t n)
{
	assert(n > 0);
	uint32_t *v = xmemdup(uids, n * sizeof(*uids));
	qsort(v, n, sizeof(*v), cmp_u32);
	sep(w);
	size_t i = 0;
	bool first = true;
	while (i < n) {
		uint32_t lo = v[i], hi = v[i];
		while (i + 1 < n && (v[i + 1] == hi || v[i + 1] == hi + 1))
			hi = v[++i];
		i++;
		if (!first)
			buf_append_byte(w->out, ',');
		first = false;
		if (lo == hi)
			buf_appendf(w->out, "%" PRIu32, lo);
		else
			buf_appendf(w->out, "%" PRIu32 ":%" PRIu32, lo, hi);
	}
	free(v);
}

void proto_wr_list_begin(struct proto_wr *w)
{
	sep(w);
	buf_append_byte(w->out, '(');
	w->need_sp = false;
	w->depth++;
}

void proto_wr_list_end(struct proto_wr *w)
{
	assert(w->depth > 0);
	buf_append_byte(w->out, ')');
	w->need_sp = true;
	w->depth--;
}

void proto_wr_end(struct proto_wr *w)
{
	assert(w->depth == 0);
	buf_append(w->out, "\r\n", 2);
	w->need_sp = false;
}

void proto_wr_status(struct buf *out, const char *tag, const char *status,
		     const char *code, const char *text)
{
	struct proto_wr w;
	proto_wr_init(&w, out);
	proto_wr_begin(&w, tag, status);
	proto_wr_status_rest(out, code, text);
	buf_append(out, "\r\n", 2);
}

void proto_wr_status_rest(struct buf *out, const char *code, const char *text)
{
	if (code != NULL && *code != '\0') {
		assert(strpbrk(code, "\r\n]{") == NULL);
		buf_append(out, " [", 2);
		buf_append_str(out, code);
		buf_append_byte(out, ']');
	}
	if (text != NULL && *text != '\0') {
		buf_append_byte(out, ' ');
		/* Text is for humans: line breaks and NULs would end the line early. */
		for (const char *t = text; *t != '\0'; t++)
			buf_append_byte(out, *t == '\r' || *t == '\n' ? ' ' : (unsigned char)*t);
	}
}

void proto_wr_arg(struct proto_wr *w, const struct proto_arg *a)
{
	switch (a->type) {
	case PROTO_ARG_ATOM:
		proto_wr_atom(w, a->str);
		break;
	case PROTO_ARG_QUOTED:
		proto_wr_str(w, a->str, a->len);
		break;
	case PROTO_ARG_LITERAL:
		proto_wr_literal(w, a->str, a->len);
		break;
	case PROTO_ARG_LIST:
		proto_wr_list_begin(w);
		for (size_t i = 0; i < a->count; i++)
			proto_wr_arg(w, &a->list[i]);
		proto_wr_list_end(w);
		break;
	}
}
