/* Incremental IMAP command parser: see imap-parser.h.
 *
 * Framing and tokenizing are separate.  Framing copies a command into
 * p->cmd as it arrives: each line without its CRLF, a '\n' after a line that
 * announced a literal, the literal bytes, and a '\0' after each literal.
 * Because a quoted string cannot span lines, a literal announcement is a
 * "{N}" or "{N+}" at the very end of a line outside quotes, which framing can
 * recognise without understanding the rest.  Tokenizing then walks p->cmd
 * once, allocating from a per-command arena released by imap_parser_reset(). */
#include "imap/imap-parser.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/arr.h"
#include "lib/buf.h"
#include "lib/str.h"
#include "lib/xalloc.h"

#define IMAP_MAX_TAG_LEN 64

enum parser_state {
	STATE_LINE,
	STATE_LITERAL,
	STATE_SKIP_LINE,
};

struct arena_chunk {
	struct arena_chunk *next;
	size_t size, used;
	unsigned char data[];
};

struct imap_parser {
	struct imap_parser_limits limits, next_limits;
	enum parser_state state;
	struct buf cmd;
	size_t line_start;
	uint64_t literal_left;
	size_t nargs;

	struct arena_chunk *arena;
	struct imap_command command;
	char tag[IMAP_MAX_TAG_LEN + 1];
	char error[128];
	/* Tokenizer position. */
	size_t pos;
	bool tok_failed;
};

static void *arena_alloc(struct imap_parser *p, size_t n)
{
	n = (n + 7) & ~(size_t)7;
	if (p->arena == NULL || p->arena->size - p->arena->used < n) {
		size_t size = n > 4096 ? n : 4096;
		struct arena_chunk *c = xmalloc(sizeof(*c) + size);
		c->size = size;
		c->used = 0;
		c->next = p->arena;
		p->arena = c;
	}
	void *r = p->arena->data + p->arena->used;
	p->arena->used += n;
	return r;
}

static void arena_clear(struct imap_parser *p)
{
	while (p->arena != NULL) {
		struct arena_chunk *next = p->arena->next;
		free(p->arena);
		p->arena = next;
	}
}

struct imap_parser *imap_parser_create(const struct imap_parser_limits *limits)
{
	struct imap_parser *p = xcalloc(1, sizeof(*p));
	p->limits = p->next_limits = *limits;
	buf_init(&p->cmd);
	strcpy(p->tag, "*");
	return p;
}

void imap_parser_destroy(struct imap_parser **pp)
{
	struct imap_parser *p = *pp;
	if (p == NULL)
		return;
	arena_clear(p);
	buf_free(&p->cmd);
	free(p);
	*pp = NULL;
}

void imap_parser_set_limits(struct imap_parser *p, const struct imap_parser_limits *limits)
{
	p->next_limits = *limits;
	if (p->cmd.len == 0 && p->state == STATE_LINE)
		p->limits = *limits;
}

void imap_parser_reset(struct imap_parser *p)
{
	arena_clear(p);
	buf_reset(&p->cmd);
	/* Keep big allocations (an APPEND literal) from lingering. */
	if (p->cmd.cap > 65536) {
		buf_free(&p->cmd);
		buf_init(&p->cmd);
	}
	p->state = STATE_LINE;
	p->line_start = 0;
	p->literal_left = 0;
	p->nargs = 0;
	memset(&p->command, 0, sizeof(p->command));
	p->limits = p->next_limits;
}

bool imap_parser_busy(const struct imap_parser *p)
{
	return p->cmd.len > 0 || p->state != STATE_LINE;
}

const struct imap_command *imap_parser_command(const struct imap_parser *p)
{
	return &p->command;
}

const char *imap_parser_error(const struct imap_parser *p)
{
	return p->error;
}

const char *imap_parser_tag(const struct imap_parser *p)
{
	return p->tag;
}

static bool is_tag_char(unsigned char c)
{
	if (c <= 0x20 || c >= 0x7f)
		return false;
	return strchr("(){%*\"\\+]", c) == NULL;
}

/* Remembers the tag at the start of the command, if it is a valid one, so
 * that an error reply can carry it. */
static void capture_tag(struct imap_parser *p)
{
	size_t n = 0;
	while (n < p->cmd.len && n < IMAP_MAX_TAG_LEN && is_tag_char(p->cmd.data[n]))
		n++;
	if (n == 0 || (n < p->cmd.len && p->cmd.data[n] != ' ')) {
		strcpy(p->tag, "*");
		return;
	}
	memcpy(p->tag, p->cmd.data, n);
	p->tag[n] = '\0';
}

static void set_error(struct imap_parser *p, const char *msg)
{
	snprintf(p->error, sizeof(p->error), "%s", msg);
}

/* Examines the just-finished line [line_start, cmd.len) for a trailing
 * literal announcement.  Returns 1 with *size_r and *sync_r, 0 if none, -1
 * for a malformed or oversized one (error set). */
static int line_literal(struct imap_parser *p, uint64_t *size_r, bool *sync_r)
{
	const unsigned char *s = p->cmd.data + p->line_start;
	size_t n = p->cmd.len - p->line_start;
	if (n < 3 || s[n - 1] != '}')
		return 0;
	bool in_quote = false;
	for (size_t i = 0; i < n; i++) {
		if (in_quote) {
			if (s[i] == '\\')
				i++;
			else if (s[i] == '"')
				in_quote = false;
		} else if (s[i] == '"') {
			in_quote = true;
		}
	}
	if (in_quote)
		return 0;
	size_t open = n - 1;
	while (open > 0 && s[open] != '{')
		open--;
	if (s[open] != '{')
		return 0;
	size_t dstart = open + 1, dend = n - 1;
	bool sync = true;
	if (dend > dstart && s[dend - 1] == '+') {
		sync = false;
		dend--;
	}
	if (dend == dstart)
		return 0;
	for (size_t i = dstart; i < dend; i++)
		if (!isdigit(s[i]))
			return 0;
	uint64_t size;
	if (dend - dstart > 19 || str_to_u64_n((const char *)s + dstart, dend - dstart, UINT64_MAX,
					       &size) < 0 || size > p->limits.max_literal) {
		set_error(p, "Literal too big");
		*sync_r = sync;
		return -1;
	}
	if (p->cmd.len + 1 + size + 1 > p->limits.max_total) {
		set_error(p, "Command too big");
		*sync_r = sync;
		return -1;
	}
	*size_r = size;
	*sync_r = sync;
	return 1;
}

static int tokenize(struct imap_parser *p);

enum imap_parse_result imap_parser_feed(struct imap_parser *p, const unsigned char *data,
					size_t len, size_t *used_r)
{
	size_t i = 0;
	p->error[0] = '\0';
	while (i < len) {
		if (p->state == STATE_LITERAL) {
			size_t n = len - i;
			if (n > p->literal_left)
				n = (size_t)p->literal_left;
			buf_append(&p->cmd, data + i, n);
			i += n;
			p->literal_left -= n;
			if (p->literal_left == 0) {
				buf_append_byte(&p->cmd, '\0');
				p->state = STATE_LINE;
				p->line_start = p->cmd.len;
			}
			continue;
		}
		const unsigned char *lf = memchr(data + i, '\n', len - i);
		size_t chunk = (lf != NULL ? (size_t)(lf - data) : len) - i;
		if (p->state == STATE_SKIP_LINE) {
			i += chunk;
			if (lf == NULL)
				break;
			i++;
			*used_r = i;
			imap_parser_reset(p);
			return IMAP_PARSE_BAD;
		}
		size_t line_len = p->cmd.len - p->line_start;
		/* Allow one byte for a CR that is stripped below. */
		if (line_len + chunk > p->limits.max_line + 1 ||
		    p->cmd.len + chunk > p->limits.max_total) {
			size_t keep = IMAP_MAX_TAG_LEN + 1;
			if (p->cmd.len < keep)
				buf_append(&p->cmd, data + i, chunk < keep - p->cmd.len ? chunk : keep - p->cmd.len);
			capture_tag(p);
			set_error(p, "Line too long");
			char err[sizeof(p->error)], tag[sizeof(p->tag)];
			strcpy(err, p->error);
			strcpy(tag, p->tag);
			imap_parser_reset(p);
			strcpy(p->error, err);
			strcpy(p->tag, tag);
			p->state = STATE_SKIP_LINE;
			continue;
		}
		buf_append(&p->cmd, data + i, chunk);
		i += chunk;
		if (lf == NULL)
			break;
		i++;
		if (p->cmd.len > p->line_start && p->cmd.data[p->cmd.len - 1] == '\r') {
			p->cmd.len--;
			p->cmd.data[p->cmd.len] = '\0';
		}
		if (p->cmd.len - p->line_start > p->limits.max_line) {
			capture_tag(p);
			set_error(p, "Line too long");
			goto bad;
		}
		if (memchr(p->cmd.data + p->line_start, '\0', p->cmd.len - p->line_start) != NULL) {
			capture_tag(p);
			set_error(p, "NUL byte in command");
			goto bad;
		}
		if (p->cmd.len == 0) {
			/* An empty line between commands: ignore it. */
			continue;
		}
		uint64_t lit;
		bool sync;
		int r = line_literal(p, &lit, &sync);
		if (r < 0) {
			capture_tag(p);
			*used_r = i;
			if (!sync) {
				imap_parser_reset(p);
				return IMAP_PARSE_FATAL;
			}
			char err[sizeof(p->error)], tag[sizeof(p->tag)];
			strcpy(err, p->error);
			strcpy(tag, p->tag);
			imap_parser_reset(p);
			strcpy(p->error, err);
			strcpy(p->tag, tag);
			return IMAP_PARSE_BAD;
		}
		if (r > 0) {
			buf_append_byte(&p->cmd, '\n');
			p->literal_left = lit;
			p->state = STATE_LITERAL;
			if (lit == 0) {
				buf_append_byte(&p->cmd, '\0');
				p->state = STATE_LINE;
				p->line_start = p->cmd.len;
			}
			if (sync) {
				*used_r = i;
				return IMAP_PARSE_CONTINUE;
			}
			continue;
		}
		*used_r = i;
		capture_tag(p);
		if (tokenize(p) < 0) {
			char err[sizeof(p->error)], tag[sizeof(p->tag)];
			strcpy(err, p->error);
			strcpy(tag, p->tag);
			imap_parser_reset(p);
			strcpy(p->error, err);
			strcpy(p->tag, tag);
			return IMAP_PARSE_BAD;
		}
		return IMAP_PARSE_DONE;
	}
	*used_r = i;
	return IMAP_PARSE_MORE;

bad:
	*used_r = i;
	{
		char err[sizeof(p->error)], tag[sizeof(p->tag)];
		strcpy(err, p->error);
		strcpy(tag, p->tag);
		imap_parser_reset(p);
		strcpy(p->error, err);
		strcpy(p->tag, tag);
	}
	return IMAP_PARSE_BAD;
}

/* ---- Tokenizer ---- */

static char *arena_strndup(struct imap_parser *p, const void *s, size_t n)
{
	char *r = arena_alloc(p, n + 1);
	memcpy(r, s, n);
	r[n] = '\0';
	return r;
}

static int tok_fail(struct imap_parser *p, const char *msg)
{
	if (!p->tok_failed)
		set_error(p, msg);
	p->tok_failed = true;
	return -1;
}

static bool is_atom_end(unsigned char c)
{
	return c == ' ' || c == '(' || c == ')' || c == '"' || c == '{' || c < 0x20 || c == 0x7f;
}

static int parse_list(struct imap_parser *p, unsigned depth, bool closing,
		      const struct imap_arg **list_r, size_t *count_r);

static int parse_quoted(struct imap_parser *p, struct imap_arg *arg)
{
	const unsigned char *d = p->cmd.data;
	size_t end = p->cmd.len, j = p->pos + 1, n = 0;
	for (;; j++) {
		if (j >= end || d[j] == '\n' || d[j] == '\0')
			return tok_fail(p, "Unterminated quoted string");
		if (d[j] == '"')
			break;
		if (d[j] == '\\') {
			j++;
			if (j >= end || (d[j] != '"' && d[j] != '\\'))
				return tok_fail(p, "Invalid escape in quoted string");
		}
		n++;
	}
	char *s = arena_alloc(p, n + 1);
	size_t k = 0;
	for (size_t q = p->pos + 1; q < j; q++) {
		if (d[q] == '\\')
			q++;
		s[k++] = (char)d[q];
	}
	s[k] = '\0';
	arg->type = IMAP_ARG_STRING;
	arg->str = s;
	arg->len = n;
	p->pos = j + 1;
	return 0;
}

static int parse_literal(struct imap_parser *p, struct imap_arg *arg)
{
	const unsigned char *d = p->cmd.data;
	size_t end = p->cmd.len, j = p->pos + 1;
	uint64_t n = 0;
	while (j < end && isdigit(d[j])) {
		n = n * 10 + (uint64_t)(d[j] - '0');
		j++;
	}
	if (j < end && d[j] == '+')
		j++;
	/* Framing only inserted '\n' after a valid announcement at line end. */
	if (j + 1 >= end || d[j] != '}' || d[j + 1] != '\n')
		return tok_fail(p, "Invalid literal");
	j += 2;
	if (n > end - j || j + n >= end || d[j + n] != '\0')
		return tok_fail(p, "Invalid literal");
	arg->type = IMAP_ARG_LITERAL;
	arg->str = (const char *)d + j;
	arg->len = (size_t)n;
	p->pos = j + (size_t)n + 1;
	return 0;
}

static int parse_atom(struct imap_parser *p, struct imap_arg *arg)
{
	const unsigned char *d = p->cmd.data;
	size_t end = p->cmd.len, start = p->pos, j = p->pos;
	bool bracket = false, no_close = false;
	while (j < end) {
		unsigned char c = d[j];
		if (bracket) {
			if (c == '\n' || c == '\0')
				return tok_fail(p, "Missing ']'");
			if (c == ']')
				bracket = false;
			j++;
			continue;
		}
		if (c == '[' && !no_close) {
			/* A section ("BODY[HEADER.FIELDS (A B)]") may hold spaces
			 * and parentheses up to its ']'.  Without a ']' on the
			 * line, '[' is an ordinary ATOM-CHAR (RFC 3501 9: only
			 * atom-specials end an atom), as in a mailbox name. */
			size_t k = j + 1;
			while (k < end && d[k] != ']' && d[k] != '\n' && d[k] != '\0')
				k++;
			if (k < end && d[k] == ']') {
				bracket = true;
				j++;
				continue;
			}
			no_close = true;
		}
		if (is_atom_end(c))
			break;
		j++;
	}
	if (bracket)
		return tok_fail(p, "Missing ']'");
	if (j == start)
		return tok_fail(p, "Invalid character in command");
	arg->type = IMAP_ARG_ATOM;
	arg->str = arena_strndup(p, d + start, j - start);
	arg->len = j - start;
	p->pos = j;
	return 0;
}

static int parse_list(struct imap_parser *p, unsigned depth, bool closing,
		      const struct imap_arg **list_r, size_t *count_r)
{
	ARRAY(struct imap_arg) items = ARRAY_INIT;
	const unsigned char *d = p->cmd.data;
	size_t end = p->cmd.len;
	bool need_sep = false;
	int ret = -1;
	for (;;) {
		bool had_space = false;
		while (p->pos < end && d[p->pos] == ' ') {
			p->pos++;
			had_space = true;
		}
		if (p->pos >= end) {
			if (closing) {
				tok_fail(p, "Missing ')'");
				goto out;
			}
			break;
		}
		unsigned char c = d[p->pos];
		if (c == ')') {
			if (!closing) {
				tok_fail(p, "Unexpected ')'");
				goto out;
			}
			p->pos++;
			break;
		}
		if (need_sep && !had_space) {
			tok_fail(p, "Missing space between arguments");
			goto out;
		}
		if (++p->nargs > p->limits.max_args) {
			tok_fail(p, "Too many arguments");
			goto out;
		}
		struct imap_arg arg;
		memset(&arg, 0, sizeof(arg));
		if (c == '(') {
			if (depth + 1 > p->limits.max_depth) {
				tok_fail(p, "Lists nested too deeply");
				goto out;
			}
			p->pos++;
			arg.type = IMAP_ARG_LIST;
			if (parse_list(p, depth + 1, true, &arg.list, &arg.count) < 0)
				goto out;
		} else if (c == '"') {
			if (parse_quoted(p, &arg) < 0)
				goto out;
		} else if (c == '{') {
			if (parse_literal(p, &arg) < 0)
				goto out;
		} else if (c == '~' && p->pos + 1 < end && d[p->pos + 1] == '{') {
			/* Framing found the {N} at the line's end already. */
			p->pos++;
			if (parse_literal(p, &arg) < 0)
				goto out;
			arg.literal8 = true;
		} else {
			if (parse_atom(p, &arg) < 0)
				goto out;
		}
		ARRAY_PUSH(&items, arg);
		need_sep = true;
	}
	struct imap_arg *list = arena_alloc(p, (items.count ? items.count : 1) * sizeof(*list));
	if (items.count > 0)
		memcpy(list, items.items, items.count * sizeof(*list));
	*list_r = list;
	*count_r = items.count;
	ret = 0;
out:
	ARRAY_FREE(&items);
	return ret;
}

static int tokenize(struct imap_parser *p)
{
	const unsigned char *d = p->cmd.data;
	size_t end = p->cmd.len;
	p->pos = 0;
	p->tok_failed = false;
	p->nargs = 0;
	while (p->pos < end && is_tag_char(d[p->pos]))
		p->pos++;
	if (p->pos == 0 || p->pos > IMAP_MAX_TAG_LEN) {
		set_error(p, p->pos == 0 ? "Invalid tag" : "Tag too long");
		strcpy(p->tag, "*");
		return -1;
	}
	p->command.tag = arena_strndup(p, d, p->pos);
	if (p->pos >= end || d[p->pos] != ' ') {
		set_error(p, p->pos >= end ? "Missing command" : "Invalid tag");
		if (p->pos < end)
			strcpy(p->tag, "*");
		return -1;
	}
	p->pos++;
	size_t start = p->pos;
	while (p->pos < end && (isalnum(d[p->pos]) || d[p->pos] == '-' || d[p->pos] == '_' ||
				d[p->pos] == '.'))
		p->pos++;
	if (p->pos == start || p->pos - start > 32 || (p->pos < end && d[p->pos] != ' ')) {
		set_error(p, "Invalid command name");
		return -1;
	}
	char *name = arena_strndup(p, d + start, p->pos - start);
	for (char *c = name; *c != '\0'; c++)
		*c = (char)toupper((unsigned char)*c);
	p->command.name = name;
	if (p->pos < end)
		p->pos++;
	if (p->pos < end && d[p->pos] == ' ') {
		set_error(p, "Extra space");
		return -1;
	}
	if (parse_list(p, 0, false, &p->command.args, &p->command.count) < 0)
		return -1;
	return 0;
}

bool imap_arg_is_string(const struct imap_arg *arg)
{
	return arg->type != IMAP_ARG_LIST;
}

bool imap_arg_atom_eq(const struct imap_arg *arg, const char *word)
{
	return arg->type == IMAP_ARG_ATOM && strcasecmp(arg->str, word) == 0;
}
