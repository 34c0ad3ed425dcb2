/* BODY/BODYSTRUCTURE and ENVELOPE output (RFC 3501 7.4.2 and 9), with the
 * RFC 5322 address-list parser the envelope needs.  See imap-mime.h.
 *
 * Output walks the part tree recursively; the depth is bounded by the
 * parser's IMAP_MIME_MAX_DEPTH, so a hostile message cannot grow the stack. */
#include "imap/imap-mime-private.h"

#include <ctype.h>
#include <string.h>

/* Strings longer than this go out as literals. */
#define MIME_MAX_QUOTED 1024
/* Addresses per envelope field. */
#define MIME_MAX_ADDRESSES 5000

void mime_append_string_n(struct buf *out, const unsigned char *p, size_t len)
{
	bool literal = len > MIME_MAX_QUOTED;
	size_t nuls = 0;
	for (size_t i = 0; i < len; i++) {
		if (p[i] == '\r' || p[i] == '\n' || p[i] >= 0x80)
			literal = true;
		else if (p[i] == 0) {
			literal = true;
			nuls++;
		}
	}
	if (literal) {
		/* NUL cannot be sent in a literal: drop it */
		buf_appendf(out, "{%zu}\r\n", len - nuls);
		for (size_t i = 0; i < len; i++) {
			if (p[i] != 0)
				buf_append_byte(out, p[i]);
		}
		return;
	}
	buf_append_quoted(out, p, len);
}

void mime_append_nstring(struct buf *out, const char *s)
{
	if (s == NULL)
		buf_append_str(out, "NIL");
	else
		mime_append_string_n(out, (const unsigned char *)s, strlen(s));
}

static void append_params(struct buf *out, const mime_param_array *params, bool add_charset)
{
	if (params->count == 0 && !add_charset) {
		buf_append_str(out, "NIL");
		return;
	}
	buf_append_byte(out, '(');
	if (add_charset)
		buf_append_str(out, "\"CHARSET\" \"us-ascii\"");
	for (size_t i = 0; i < params->count; i++) {
		if (i > 0 || add_charset)
			buf_append_byte(out, ' ');
		mime_append_nstring(out, params->items[i].name);
		buf_append_byte(out, ' ');
		mime_append_nstring(out, params->items[i].value);
	}
	buf_append_byte(out, ')');
}

static void append_disposition(struct buf *out, const struct mime_part *part)
{
	if (part->disposition == NULL) {
		buf_append_str(out, "NIL");
		return;
	}
	buf_append_byte(out, '(');
	mime_append_nstring(out, part->disposition);
	buf_append_byte(out, ' ');
	append_params(out, &part->disp_params, false);
	buf_append_byte(out, ')');
}

/* Content-Language: "en, fr (French)" -> ("en" "fr"). */
static void append_language(struct buf *out, const struct mime_part *part)
{
	size_t n = 0;
	if (part->language != NULL) {
		const unsigned char *p = (const unsigned char *)part->language;
		const unsigned char *end = p + strlen(part->language);
		while (p < end) {
			mime_skip_cfws(&p, end);
			const unsigned char *s = p;
			while (p < end && (isalnum(*p) || *p == '-' || *p == '*'))
				p++;
			if (p > s) {
				buf_append_str(out, n++ == 0 ? "(" : " ");
				mime_append_string_n(out, s, (size_t)(p - s));
			} else if (p < end) {
				p++;
			}
		}
	}
	buf_append_str(out, n == 0 ? "NIL" : ")");
}

static void append_body_ext(struct buf *out, const struct mime_part *part)
{
	buf_append_byte(out, ' ');
	append_disposition(out, part);
	buf_append_byte(out, ' ');
	append_language(out, part);
	buf_append_byte(out, ' ');
	mime_append_nstring(out, part->location);
}

static size_t count_lines(const unsigned char *p, size_t len)
{
	size_t n = 0;
	const unsigned char *end = p + len, *lf;
	while (p < end && (lf = memchr(p, '\n', (size_t)(end - p))) != NULL) {
		n++;
		p = lf + 1;
	}
	return n + (p < end ? 1 : 0);
}

static void body_struct(const struct imap_mime *m, const struct mime_part *part, bool extended,
			struct buf *out)
{
	buf_append_byte(out, '(');
	if (part->multipart) {
		for (int c = part->first_child; c >= 0; c = m->parts.items[c].next)
			body_struct(m, &m->parts.items[c], extended, out);
		buf_append_byte(out, ' ');
		mime_append_nstring(out, part->subtype);
		if (extended) {
			buf_append_byte(out, ' ');
			append_params(out, &part->params, false);
			append_body_ext(out, part);
		}
		buf_append_byte(out, ')');
		return;
	}
	bool text = strcmp(part->type, "TEXT") == 0;
	size_t size = part->end - part->body_start;
	mime_append_nstring(out, part->type);
	buf_append_byte(out, ' ');
	mime_append_nstring(out, part->subtype);
	buf_append_byte(out, ' ');
	append_params(out, &part->params,
		      text && mime_param_get(&part->params, "CHARSET") == NULL);
	buf_append_byte(out, ' ');
	mime_append_nstring(out, part->id);
	buf_append_byte(out, ' ');
	mime_append_nstring(out, part->description);
	buf_append_byte(out, ' ');
	mime_append_nstring(out, part->encoding != NULL ? part->encoding : "7BIT");
	buf_appendf(out, " %zu", size);
	if (part->rfc822) {
		const struct mime_part *msg = &m->parts.items[part->first_child];
		buf_append_byte(out, ' ');
		mime_envelope_part(m, msg, out);
		buf_append_byte(out, ' ');
		body_struct(m, msg, extended, out);
	}
	if (text || part->rfc822)
		buf_appendf(out, " %zu", count_lines(m->text + part->body_start, size));
	if (extended) {
		buf_append_byte(out, ' ');
		mime_append_nstring(out, part->md5);
		append_body_ext(out, part);
	}
	buf_append_byte(out, ')');
}

void imap_mime_bodystructure(const struct imap_mime *m, bool extended, struct buf *out)
{
	body_struct(m, &m->parts.items[0], extended, out);
}

/* ---- RFC 5322 address lists ---- */

enum addr_tok {
	ATOK_END,
	ATOK_ATOM,    /* raw text in tok */
	ATOK_QUOTED,  /* unescaped content in tok */
	ATOK_DOMLIT,  /* "[...]" raw */
	ATOK_COMMENT, /* content in tok */
	ATOK_SPECIAL, /* one of < > @ , ; : . */
};

struct addr_lexer {
	const unsigned char *p, *end;
	struct buf tok;
	unsigned char special;
	bool space_before; /* whitespace preceded the last token */
};

static bool is_addr_special(unsigned char c)
{
	return c != '\0' && strchr("()<>@,;:\\\".[]", c) != NULL;
}

static enum addr_tok addr_next(struct addr_lexer *lx)
{
	const unsigned char *p = lx->p, *end = lx->end;
	buf_reset(&lx->tok);
	lx->space_before = false;
	/* control characters are skipped like whitespace */
	while (p < end && (*p <= ' ' || *p == 0x7f)) {
		p++;
		lx->space_before = true;
	}
	if (p >= end) {
		lx->p = p;
		return ATOK_END;
	}
	enum addr_tok t;
	if (*p == '"') {
		mime_read_quoted(&p, end, &lx->tok);
		t = ATOK_QUOTED;
	} else if (*p == '(') {
		unsigned depth = 0;
		for (; p < end; p++) {
			if (*p == '\\' && p + 1 < end) {
				buf_append_byte(&lx->tok, p[1]);
				p++;
				continue;
			}
			if (*p == '(' && depth++ == 0)
				continue;
			if (*p == ')' && --depth == 0) {
				p++;
				break;
			}
			if (*p != '\r' && *p != '\n')
				buf_append_byte(&lx->tok, *p);
		}
		t = ATOK_COMMENT;
	} else if (*p == '[') {
		const unsigned char *s = p;
		while (p < end && *p != ']')
			p++;
		if (p < end)
			p++;
		for (; s < p; s++) {
			if (*s != '\r' && *s != '\n')
				buf_append_byte(&lx->tok, *s);
		}
		t = ATOK_DOMLIT;
	} else if (is_addr_special(*p)) {
		lx->special = *p++;
		t = ATOK_SPECIAL;
		if (lx->special == '\\' || lx->special == ')' || lx->special == ']') {
			/* stray: read as an atom character */
			buf_append_byte(&lx->tok, lx->special);
			t = ATOK_ATOM;
		}
	} else {
		while (p < end && *p > ' ' && *p != 0x7f && !is_addr_special(*p))
			buf_append_byte(&lx->tok, *p++);
		t = ATOK_ATOM;
	}
	lx->p = p;
	return t;
}

struct addr_out {
	struct buf *out;
	size_t count;
	bool plain; /* "name <local@domain>, " for SEARCH, not ENVELOPE form */
	struct mime_first_addr *first; /* or: keep only the first entry, for SORT */
};

/* Keeps the first entry of the list as ENVELOPE would show it: a group
 * start is (NIL NIL "group" NIL), so its name becomes the mailbox. */
static bool capture_first(struct addr_out *ao, const struct buf *name, const struct buf *local,
			  const struct buf *domain)
{
	if (ao->first == NULL)
		return false;
	if (!ao->first->found) {
		ao->first->found = true;
		if (name != NULL)
			buf_append(&ao->first->name, name->data, name->len);
		if (local != NULL)
			buf_append(&ao->first->mailbox, local->data, local->len);
		if (domain != NULL)
			buf_append(&ao->first->host, domain->data, domain->len);
	}
	ao->count++;
	return true;
}

static void emit_field(struct buf *out, const struct buf *b, bool nil_if_empty)
{
	if (b == NULL || (nil_if_empty && b->len == 0))
		buf_append_str(out, "NIL");
	else
		mime_append_string_n(out, b->data, b->len);
}

static void emit_address(struct addr_out *ao, const struct buf *name, const struct buf *route,
			 const struct buf *local, const struct buf *domain)
{
	if (ao->count >= MIME_MAX_ADDRESSES || capture_first(ao, name, local, domain))
		return;
	ao->count++;
	struct buf *out = ao->out;
	if (ao->plain) {
		if (name != NULL && name->len > 0) {
			buf_append(out, name->data, name->len);
			buf_append_byte(out, ' ');
		}
		buf_append_byte(out, '<');
		buf_append(out, local->data, local->len);
		if (domain->len > 0) {
			buf_append_byte(out, '@');
			buf_append(out, domain->data, domain->len);
		}
		buf_append_str(out, ">, ");
		return;
	}
	static const struct buf missing_mailbox = { (unsigned char *)"MISSING_MAILBOX", 15, 0, 0 };
	static const struct buf missing_domain = { (unsigned char *)"MISSING_DOMAIN", 14, 0, 0 };
	buf_append_byte(out, '(');
	emit_field(out, name, true);
	buf_append_byte(out, ' ');
	emit_field(out, route, true);
	buf_append_byte(out, ' ');
	emit_field(out, local->len > 0 ? local : &missing_mailbox, false);
	buf_append_byte(out, ' ');
	emit_field(out, domain->len > 0 ? domain : &missing_domain, false);
	buf_append_byte(out, ')');
}

static void emit_group(struct addr_out *ao, const struct buf *name)
{
	if (ao->count >= MIME_MAX_ADDRESSES)
		return;
	if (ao->first != NULL) {
		/* a group end marker is not an entry clients sort by */
		if (name != NULL)
			(void)capture_first(ao, NULL, name, NULL);
		return;
	}
	ao->count++;
	if (ao->plain) {
		if (name != NULL) {
			buf_append(ao->out, name->data, name->len);
			buf_append_str(ao->out, ": ");
		} else {
			buf_append_str(ao->out, "; ");
		}
		return;
	}
	buf_append_str(ao->out, "(NIL NIL ");
	if (name != NULL)
		mime_append_string_n(ao->out, name->data, name->len);
	else
		buf_append_str(ao->out, "NIL");
	buf_append_str(ao->out, " NIL)");
}

/* Appends the words of a phrase: single spaces between words, none around
 * dots ("John Q. Public"). */
static void phrase_add(struct buf *phrase, const struct buf *word, bool space_before,
		       bool *after_dot)
{
	if (phrase->len > 0 && (!*after_dot || space_before))
		buf_append_byte(phrase, ' ');
	buf_append(phrase, word->data, word->len);
	*after_dot = false;
}

/* Appends a local-part or domain token as it would be written. */
static void raw_add(struct buf *b, enum addr_tok t, const struct buf *tok)
{
	if (t == ATOK_QUOTED) {
		buf_append_quoted(b, tok->data, tok->len);
	} else {
		buf_append(b, tok->data, tok->len);
	}
}

/* Reads a domain (atoms, dots, literals) up to a delimiter; comments go to
 * comment.  Returns the delimiting token and leaves it in lx->special. */
static enum addr_tok read_domain(struct addr_lexer *lx, struct buf *domain, struct buf *comment,
				 const char *stops)
{
	enum addr_tok t;
	while ((t = addr_next(lx)) != ATOK_END) {
		if (t == ATOK_SPECIAL && strchr(stops, lx->special) != NULL)
			return t;
		if (t == ATOK_COMMENT) {
			if (comment != NULL && comment->len == 0)
				buf_append(comment, lx->tok.data, lx->tok.len);
		} else if (t == ATOK_SPECIAL) {
			if (lx->special == '.')
				buf_append_byte(domain, '.');
		} else {
			raw_add(domain, t, &lx->tok);
		}
	}
	return t;
}

/* Parses an address list, appending 1*address to out.  Returns the number
 * of addresses and group markers appended. */
static size_t parse_address_list(const unsigned char *v, size_t len, struct buf *out, bool plain,
				 struct mime_first_addr *first)
{
	struct addr_lexer lx = { v, v + len, BUF_INIT, 0, false };
	struct buf phrase = BUF_INIT, local = BUF_INIT, domain = BUF_INIT, route = BUF_INIT;
	struct buf comment = BUF_INIT;
	struct addr_out ao = { out, 0, plain, first };
	bool in_group = false, after_dot = false, pending = false;
	enum addr_tok t;

	for (;;) {
		t = addr_next(&lx);
		if (t == ATOK_ATOM || t == ATOK_QUOTED) {
			phrase_add(&phrase, &lx.tok, lx.space_before, &after_dot);
			raw_add(&local, t, &lx.tok);
			pending = true;
			continue;
		}
		if (t == ATOK_COMMENT) {
			if (comment.len == 0)
				buf_append(&comment, lx.tok.data, lx.tok.len);
			continue;
		}
		if (t == ATOK_DOMLIT)
			continue;
		unsigned char c = t == ATOK_END ? '\0' : lx.special;
		if (c == '.') {
			buf_append_byte(&phrase, '.');
			buf_append_byte(&local, '.');
			after_dot = true;
			continue;
		}
		if (c == '<') {
			/* angle-addr: [route ":"] local "@" domain ">" */
			buf_reset(&local);
			enum addr_tok at;
			const unsigned char *save = lx.p;
			at = addr_next(&lx);
			if (at == ATOK_SPECIAL && lx.special == '@') {
				/* obsolete route "@a,@b:" kept as written */
				do {
					if (at == ATOK_SPECIAL)
						buf_append_byte(&route, lx.special);
					else if (at != ATOK_COMMENT)
						raw_add(&route, at, &lx.tok);
					at = addr_next(&lx);
				} while (at != ATOK_END &&
					 !(at == ATOK_SPECIAL && (lx.special == ':' || lx.special == '>')));
				if (at == ATOK_SPECIAL && lx.special == '>') {
					/* "<@host>": no route after all */
					buf_reset(&route);
					lx.p = save;
				}
			} else {
				lx.p = save;
			}
			while ((at = addr_next(&lx)) != ATOK_END) {
				if (at == ATOK_SPECIAL && (lx.special == '@' || lx.special == '>'))
					break;
				if (at == ATOK_SPECIAL && lx.special == '.')
					buf_append_byte(&local, '.');
				else if (at == ATOK_ATOM || at == ATOK_QUOTED)
					raw_add(&local, at, &lx.tok);
			}
			if (at == ATOK_SPECIAL && lx.special == '@')
				read_domain(&lx, &domain, NULL, ">,;");
			const struct buf *name = phrase.len > 0 ? &phrase : &comment;
			emit_address(&ao, name, &route, &local, &domain);
			pending = false;
			/* skip to the next separator */
			if (!(at == ATOK_SPECIAL && (lx.special == ',' || lx.special == ';'))) {
				while ((at = addr_next(&lx)) != ATOK_END &&
				       !(at == ATOK_SPECIAL && (lx.special == ',' || lx.special == ';')))
					;
			}
			if (at == ATOK_SPECIAL && lx.special == ';' && in_group) {
				emit_group(&ao, NULL);
				in_group = false;
			}
			buf_reset(&phrase);
			buf_reset(&local);
			buf_reset(&domain);
			buf_reset(&route);
			buf_reset(&comment);
			after_dot = false;
			if (at == ATOK_END)
				break;
			continue;
		}
		if (c == '@') {
			enum addr_tok at = read_domain(&lx, &domain, &comment, ",;");
			emit_address(&ao, &comment, NULL, &local, &domain);
			pending = false;
			if (at == ATOK_SPECIAL && lx.special == ';' && in_group) {
				emit_group(&ao, NULL);
				in_group = false;
			}
			buf_reset(&phrase);
			buf_reset(&local);
			buf_reset(&domain);
			buf_reset(&comment);
			after_dot = false;
			if (at == ATOK_END)
				break;
			continue;
		}
		if (c == ':' && !in_group && phrase.len > 0) {
			emit_group(&ao, &phrase);
			in_group = true;
		} else if (c == ',' || c == ';' || c == '\0') {
			if (pending)
				emit_address(&ao, &comment, NULL, &local, &domain);
			if ((c == ';' || c == '\0') && in_group) {
				emit_group(&ao, NULL);
				in_group = false;
			}
		} else {
			continue; /* stray '>', ':' in a group or ':' without a group name */
		}
		pending = false;
		buf_reset(&phrase);
		buf_reset(&local);
		buf_reset(&comment);
		after_dot = false;
		if (c == '\0')
			break;
	}
	buf_free(&lx.tok);
	buf_free(&phrase);
	buf_free(&local);
	buf_free(&domain);
	buf_free(&route);
	buf_free(&comment);
	return ao.count;
}

static void append_header_nstring(const struct imap_mime *m, const struct mime_part *msg,
				  const char *name, struct buf *out)
{
	struct mime_field f;
	if (!mime_hdr_find(m, msg, name, &f)) {
		buf_append_str(out, "NIL");
		return;
	}
	struct buf v = BUF_INIT;
	mime_unfold(f.value, f.value_len, &v);
	mime_append_string_n(out, v.data, v.len);
	buf_free(&v);
}

/* Appends an address field as "(" 1*address ")", or when it is absent or
 * empty, fallback's (RFC 3501: sender and reply-to default to from), or NIL. */
static void append_addr_header(const struct imap_mime *m, const struct mime_part *msg,
			       const char *name, const char *fallback, struct buf *out)
{
	struct mime_field f;
	struct buf list = BUF_INIT;
	size_t count = 0;
	if (mime_hdr_find(m, msg, name, &f))
		count = parse_address_list(f.value, f.value_len, &list, false, NULL);
	if (count > 0) {
		buf_append_byte(out, '(');
		buf_append(out, list.data, list.len);
		buf_append_byte(out, ')');
	} else if (fallback != NULL) {
		append_addr_header(m, msg, fallback, NULL, out);
	} else {
		buf_append_str(out, "NIL");
	}
	buf_free(&list);
}

void mime_address_text(const unsigned char *value, size_t len, struct buf *out)
{
	(void)parse_address_list(value, len, out, true, NULL);
}

bool mime_first_address(const unsigned char *value, size_t len, struct mime_first_addr *first)
{
	first->found = false;
	(void)parse_address_list(value, len, NULL, false, first);
	return first->found;
}

void mime_envelope_part(const struct imap_mime *m, const struct mime_part *msg, struct buf *out)
{
	buf_append_byte(out, '(');
	append_header_nstring(m, msg, "date", out);
	buf_append_byte(out, ' ');
	append_header_nstring(m, msg, "subject", out);
	buf_append_byte(out, ' ');
	append_addr_header(m, msg, "from", NULL, out);
	buf_append_byte(out, ' ');
	append_addr_header(m, msg, "sender", "from", out);
	buf_append_byte(out, ' ');
	append_addr_header(m, msg, "reply-to", "from", out);
	buf_append_byte(out, ' ');
	append_addr_header(m, msg, "to", NULL, out);
	buf_append_byte(out, ' ');
	append_addr_header(m, msg, "cc", NULL, out);
	buf_append_byte(out, ' ');
	append_addr_header(m, msg, "bcc", NULL, out);
	buf_append_byte(out, ' ');
	append_header_nstring(m, msg, "in-reply-to", out);
	buf_append_byte(out, ' ');
	append_header_nstring(m, msg, "message-id", out);
	buf_append_byte(out, ')');
}

void imap_mime_envelope(const struct imap_mime *m, struct buf *out)
{
	mime_envelope_part(m, &m->parts.items[0], out);
}
