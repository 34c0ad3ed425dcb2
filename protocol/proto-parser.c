/* Incremental parser of protocol lines (SPEC.md "Syntax").
 *
 * Input arrives in arbitrary pieces.  Bytes outside literals collect in a
 * segment buffer until LF; a complete segment is tokenised at once.  A
 * segment that ends with "{N}" announces a literal: its N bytes are copied
 * straight from the input into one buffer of exactly N bytes (one copy, no
 * growth), and the line continues with the next segment.  Tokens of all
 * segments accumulate as a flat list of nodes with parent links; when the
 * line is complete the nodes are laid out as proto_arg arrays, each list's
 * elements contiguous.
 *
 * Every limit is checked before memory is committed to it: the segment
 * length before copying, the literal size before allocating, the argument
 * count and depth before adding a node.  Any error is final. */
#include "protocol/protocol.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/arr.h"
#include "lib/xalloc.h"

enum parser_state {
	ST_LINE,
	ST_LITERAL,
	ST_ERROR,
};

/* What the tokeniser accepts next. */
enum expect {
	EXPECT_SEP,         /* after an argument: SP, ')' or end */
	EXPECT_ARG,         /* after SP: an argument */
	EXPECT_ARG_OR_CLOSE /* after '(': an argument or ')' */
};

struct raw_node {
	enum proto_arg_type type;
	int parent;     /* raw index of the enclosing list, -1 at top level */
	size_t off;     /* atom/quoted: offset in strs; literal: index in lits */
	size_t len;     /* bytes, or for a list its element count */
	size_t slot;    /* position in the output array (layout pass) */
	size_t block;   /* list: first slot of its elements (layout pass) */
};

struct proto_parser {
	struct proto_parser_settings set, next_set;
	enum parser_state state;

	struct buf seg;        /* current segment, up to and including LF */
	size_t line_total;     /* line bytes outside literals so far */
	bool head_done;        /* tag and name parsed */
	bool in_line;          /* some byte of the current line was seen */
	bool cmd_returned;     /* the last call returned a line: reset first */

	struct buf strs;       /* NUL-terminated tag, name, strings, text */
	size_t tag_off, name_off, text_off;
	bool is_status, has_code;

	ARRAY(struct raw_node) raw;
	ARRAY(int) stack;      /* open lists */
	enum expect expect;

	unsigned char *lit;    /* literal being filled */
	size_t lit_len, lit_have, lit_total;
	ARRAY(unsigned char *) lits;

	ARRAY(struct proto_arg) out;
	struct proto_cmd cmd;

	enum proto_parse_error err;
	char errtext[128];
};

/* ATOM-CHAR: printable ASCII except SP ( ) { } " [ ] (SPEC.md). */
static bool atom_tab[256];
static bool atom_tab_ready;

static void atom_tab_init(void)
{
	if (atom_tab_ready)
		return;
	for (int c = 0x21; c <= 0x7e; c++)
		atom_tab[c] = strchr("(){}\"[]", c) == NULL;
	atom_tab_ready = true;
}

static inline bool is_atom_char(unsigned char c)
{
	return atom_tab[c];
}

bool proto_is_atom(const void *s, size_t len)
{
	const unsigned char *p = s;
	atom_tab_init();
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (!is_atom_char(p[i]))
			return false;
	}
	return true;
}

void proto_parser_settings_default(struct proto_parser_settings *set_r)
{
	set_r->max_line = PROTO_DEFAULT_MAX_LINE;
	set_r->max_literal = PROTO_DEFAULT_MAX_LITERAL;
	set_r->max_args = PROTO_DEFAULT_MAX_ARGS;
	set_r->max_depth = PROTO_DEFAULT_MAX_DEPTH;
}

void proto_parser_settings_preauth(struct proto_parser_settings *set_r)
{
	set_r->max_line = PROTO_PREAUTH_MAX_LINE;
	set_r->max_literal = 0;
	set_r->max_args = PROTO_PREAUTH_MAX_ARGS;
	set_r->max_depth = PROTO_PREAUTH_MAX_DEPTH;
}

struct proto_parser *proto_parser_create(const struct proto_parser_settings *set)
{
	atom_tab_init();
	struct proto_parser *p = xcalloc(1, sizeof(*p));
	if (set != NULL)
		p->set = *set;
	else
		proto_parser_settings_default(&p->set);
	/* Headers need a few bytes at least; a zero limit would refuse all. */
	if (p->set.max_line < 16)
		p->set.max_line = 16;
	p->next_set = p->set;
	p->state = ST_LINE;
	return p;
}

static void free_literals(struct proto_parser *p)
{
	for (size_t i = 0; i < p->lits.count; i++)
		free(p->lits.items[i]);
	p->lits.count = 0;
	p->lit = NULL;
}

void proto_parser_destroy(struct proto_parser **pp)
{
	struct proto_parser *p = *pp;
	if (p == NULL)
		return;
	*pp = NULL;
	free_literals(p);
	ARRAY_FREE(&p->lits);
	ARRAY_FREE(&p->raw);
	ARRAY_FREE(&p->stack);
	ARRAY_FREE(&p->out);
	buf_free(&p->seg);
	buf_free(&p->strs);
	free(p);
}

static void reset_line(struct proto_parser *p)
{
	buf_reset(&p->seg);
	buf_reset(&p->strs);
	p->line_total = 0;
	p->head_done = false;
	p->in_line = false;
	p->is_status = p->has_code = false;
	p->raw.count = 0;
	p->stack.count = 0;
	p->expect = EXPECT_SEP;
	free_literals(p);
	p->lit_len = p->lit_have = p->lit_total = 0;
	p->out.count = 0;
	p->set = p->next_set;
}

void proto_parser_set_limits(struct proto_parser *p, const struct proto_parser_settings *set)
{
	p->next_set = *set;
	if (p->next_set.max_line < 16)
		p->next_set.max_line = 16;
	if (!p->in_line)
		p->set = p->next_set;
}

bool proto_parser_is_idle(const struct proto_parser *p)
{
	return p->state != ST_ERROR && (!p->in_line || p->cmd_returned);
}

static const char *const error_codes[] = {
	[PROTO_PARSE_OK] = "OK",
	[PROTO_PARSE_ERR_SYNTAX] = "PARSE",
	[PROTO_PARSE_ERR_LINE_TOO_LONG] = "LINE-TOO-LONG",
	[PROTO_PARSE_ERR_LITERAL_TOO_BIG] = "TOOBIG",
	[PROTO_PARSE_ERR_TOO_MANY_ARGS] = "TOO-MANY-ARGS",
	[PROTO_PARSE_ERR_TOO_DEEP] = "TOO-DEEP",
};

enum proto_parse_error proto_parser_get_error(const struct proto_parser *p,
					      const char **code_r, const char **text_r)
{
	if (code_r != NULL)
		*code_r = error_codes[p->err];
	if (text_r != NULL)
		*text_r = p->err == PROTO_PARSE_OK ? "" : p->errtext;
	return p->err;
}

static int fail(struct proto_parser *p, enum proto_parse_error err, const char *text)
{
	p->err = err;
	snprintf(p->errtext, sizeof(p->errtext), "%s", text);
	p->state = ST_ERROR;
	free_literals(p);
	return -1;
}

static size_t strs_add(struct proto_parser *p, const void *s, size_t len)
{
	size_t off = p->strs.len;
	buf_append(&p->strs, s, len);
	buf_append_byte(&p->strs, '\0');
	return off;
}

static int add_node(struct proto_parser *p, enum proto_arg_type type, size_t off, size_t len)
{
	if (p->raw.count >= p->set.max_args)
		return fail(p, PROTO_PARSE_ERR_TOO_MANY_ARGS, "Too many arguments");
	int parent = p->stack.count > 0 ? p->stack.items[p->stack.count - 1] : -1;
	struct raw_node n = { type, parent, off, len, 0, 0 };
	ARRAY_PUSH(&p->raw, n);
	if (parent >= 0)
		p->raw.items[parent].len++;
	return 0;
}

/* Scans a quoted string starting after the opening quote; *pos ends after
 * the closing quote.  Only \" and \\ are escapes. */
static int parse_quoted(struct proto_parser *p, const unsigned char *s, size_t *pos, size_t end)
{
	size_t i = *pos;
	size_t off = p->strs.len;
	while (i < end) {
		unsigned char c = s[i];
		if (c == '"') {
			size_t len = p->strs.len - off;
			buf_append_byte(&p->strs, '\0');
			*pos = i + 1;
			return add_node(p, PROTO_ARG_QUOTED, off, len);
		}
		if (c == '\\') {
			if (i + 1 >= end || (s[i + 1] != '"' && s[i + 1] != '\\'))
				return fail(p, PROTO_PARSE_ERR_SYNTAX, "Bad escape in quoted string");
			buf_append_byte(&p->strs, s[i + 1]);
			i += 2;
			continue;
		}
		if (c == '\0' || c == '\r')
			return fail(p, PROTO_PARSE_ERR_SYNTAX, "Control character in quoted string");
		/* Runs without escapes are copied in one go. */
		size_t j = i + 1;
		while (j < end && s[j] != '"' && s[j] != '\\' && s[j] != '\0' && s[j] != '\r')
			j++;
		buf_append(&p->strs, s + i, j - i);
		i = j;
	}
	return fail(p, PROTO_PARSE_ERR_SYNTAX, "Unterminated quoted string");
}

/* "{N}" at s[*pos] ('{' already seen) which must end the segment. */
static int parse_literal_head(struct proto_parser *p, const unsigned char *s, size_t pos,
			      size_t end)
{
	size_t i = pos + 1;
	uint64_t n = 0;
	size_t digits = 0;
	while (i < end && s[i] >= '0' && s[i] <= '9') {
		if (n > (UINT64_MAX - 9) / 10)
			return fail(p, PROTO_PARSE_ERR_LITERAL_TOO_BIG, "Literal too big");
		n = n * 10 + (uint64_t)(s[i] - '0');
		i++;
		digits++;
	}
	if (digits == 0 || i >= end || s[i] != '}' || i + 1 != end)
		return fail(p, PROTO_PARSE_ERR_SYNTAX, "Bad literal announcement");
	if (n > p->set.max_literal || p->lit_total > p->set.max_literal - n)
		return fail(p, PROTO_PARSE_ERR_LITERAL_TOO_BIG, "Literal too big");
	if (add_node(p, PROTO_ARG_LITERAL, p->lits.count, (size_t)n) < 0)
		return -1;
	p->lit = xmalloc((size_t)n + 1);
	p->lit[n] = '\0';
	ARRAY_PUSH(&p->lits, p->lit);
	p->lit_len = (size_t)n;
	p->lit_have = 0;
	p->lit_total += (size_t)n;
	p->expect = EXPECT_SEP;
	return 0;
}

/* Tokenises s[pos, end).  Returns -1 on error, 0 when a literal was
 * announced (it ends the segment), 1 at the end of the segment, 2 when a
 * response code's ']' was found (in_code; *pos_r is after it). */
static int tokenize(struct proto_parser *p, const unsigned char *s, size_t pos, size_t end,
		    bool in_code, size_t *pos_r)
{
	while (pos < end) {
		unsigned char c = s[pos];
		if (c == ')') {
			if (p->expect == EXPECT_ARG || p->stack.count == 0)
				return fail(p, PROTO_PARSE_ERR_SYNTAX, "Unexpected ')'");
			p->stack.count--;
			p->expect = EXPECT_SEP;
			pos++;
			continue;
		}
		if (c == ']' && in_code) {
			if (p->expect == EXPECT_ARG || p->stack.count != 0)
				return fail(p, PROTO_PARSE_ERR_SYNTAX, "Unexpected ']'");
			*pos_r = pos + 1;
			return 2;
		}
		if (c == ' ') {
			if (p->expect != EXPECT_SEP)
				return fail(p, PROTO_PARSE_ERR_SYNTAX, "Unexpected space");
			p->expect = EXPECT_ARG;
			pos++;
			continue;
		}
		if (p->expect == EXPECT_SEP)
			return fail(p, PROTO_PARSE_ERR_SYNTAX, "Missing space between arguments");
		if (c == '(') {
			if (p->stack.count >= p->set.max_depth)
				return fail(p, PROTO_PARSE_ERR_TOO_DEEP, "Lists nested too deep");
			if (add_node(p, PROTO_ARG_LIST, 0, 0) < 0)
				return -1;
			ARRAY_PUSH(&p->stack, (int)(p->raw.count - 1));
			p->expect = EXPECT_ARG_OR_CLOSE;
			pos++;
		} else if (c == '"') {
			pos++;
			if (parse_quoted(p, s, &pos, end) < 0)
				return -1;
			p->expect = EXPECT_SEP;
		} else if (c == '{') {
			if (in_code)
				return fail(p, PROTO_PARSE_ERR_SYNTAX, "Literal in response code");
			if (parse_literal_head(p, s, pos, end) < 0)
				return -1;
			return 0;
		} else if (is_atom_char(c)) {
			size_t start = pos;
			while (pos < end && is_atom_char(s[pos]))
				pos++;
			if (add_node(p, PROTO_ARG_ATOM, strs_add(p, s + start, pos - start),
				     pos - start) < 0)
				return -1;
			p->expect = EXPECT_SEP;
		} else {
			return fail(p, PROTO_PARSE_ERR_SYNTAX, "Invalid character");
		}
	}
	if (p->expect == EXPECT_ARG)
		return fail(p, PROTO_PARSE_ERR_SYNTAX, "Trailing space");
	*pos_r = pos;
	return 1;
}

static bool name_is_status(const char *name)
{
	return strcasecmp(name, "OK") == 0 || strcasecmp(name, "NO") == 0 ||
	       strcasecmp(name, "BAD") == 0 || strcasecmp(name, "BYE") == 0;
}

/* "TAG SP NAME" and, for a status line, "[code] text": the whole rest. */
static int parse_head(struct proto_parser *p, const unsigned char *s, size_t end, size_t *pos_r)
{
	size_t i = 0;
	if (end >= 1 && s[0] == '*') {
		i = 1;
	} else {
		while (i < end && is_atom_char(s[i]) && i <= PROTO_MAX_TAG)
			i++;
		if (i == 0 || i > PROTO_MAX_TAG)
			return fail(p, PROTO_PARSE_ERR_SYNTAX, "Bad tag");
	}
	p->tag_off = strs_add(p, s, i);
	if (i >= end || s[i] != ' ')
		return fail(p, PROTO_PARSE_ERR_SYNTAX, "Missing name after tag");
	size_t start = ++i;
	while (i < end && i - start <= PROTO_MAX_NAME &&
	       ((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
		(s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
		i++;
	if (i == start || i - start > PROTO_MAX_NAME)
		return fail(p, PROTO_PARSE_ERR_SYNTAX, "Bad command name");
	p->name_off = strs_add(p, s + start, i - start);
	p->is_status = name_is_status((const char *)p->strs.data + p->name_off);
	p->head_done = true;
	p->text_off = strs_add(p, "", 0);
	if (i == end) {
		*pos_r = i;
		return 1;
	}
	if (s[i] != ' ')
		return fail(p, PROTO_PARSE_ERR_SYNTAX, "Bad command name");
	i++;
	if (!p->is_status) {
		p->expect = EXPECT_ARG;
		*pos_r = i;
		return 0;
	}
	if (i < end && s[i] == '[') {
		p->has_code = true;
		p->expect = EXPECT_ARG;
		int r = tokenize(p, s, i + 1, end, true, &i);
		if (r < 0)
			return -1;
		if (r != 2)
			return fail(p, PROTO_PARSE_ERR_SYNTAX, "Unterminated response code");
		if (i < end) {
			if (s[i] != ' ')
				return fail(p, PROTO_PARSE_ERR_SYNTAX, "Missing space after response code");
			i++;
		}
	}
	for (size_t j = i; j < end; j++) {
		if (s[j] == '\0' || s[j] == '\r')
			return fail(p, PROTO_PARSE_ERR_SYNTAX, "Control character in text");
	}
	p->text_off = strs_add(p, s + i, end - i);
	*pos_r = end;
	return 1;
}

/* Lays the nodes out as nested arrays: top-level arguments first, then
 * each list's elements in one block, allocated in the order lists appear. */
static void build_cmd(struct proto_parser *p)
{
	size_t n = p->raw.count;
	ARRAY_RESERVE(&p->out, n);
	p->out.count = n;
	size_t top = 0;
	for (size_t i = 0; i < n; i++) {
		if (p->raw.items[i].parent < 0)
			top++;
	}
	size_t next_free = top, top_fill = 0;
	for (size_t i = 0; i < n; i++) {
		struct raw_node *r = &p->raw.items[i];
		if (r->parent < 0) {
			r->slot = top_fill++;
		} else {
			struct raw_node *par = &p->raw.items[r->parent];
			/* par->off counts elements placed so far. */
			r->slot = par->block + par->off++;
		}
		if (r->type == PROTO_ARG_LIST) {
			r->block = next_free;
			r->off = 0;
			next_free += r->len;
		}
	}
	const char *base = (const char *)p->strs.data;
	for (size_t i = 0; i < n; i++) {
		const struct raw_node *r = &p->raw.items[i];
		struct proto_arg *a = &p->out.items[r->slot];
		a->type = r->type;
		a->list = NULL;
		a->count = 0;
		switch (r->type) {
		case PROTO_ARG_ATOM:
		case PROTO_ARG_QUOTED:
			a->str = base + r->off;
			a->len = r->len;
			break;
		case PROTO_ARG_LITERAL:
			a->str = (const char *)p->lits.items[r->off];
			a->len = r->len;
			break;
		case PROTO_ARG_LIST:
			a->str = "";
			a->len = 0;
			a->list = p->out.items + r->block;
			a->count = r->len;
			break;
		}
	}
	p->cmd.tag = base + p->tag_off;
	p->cmd.name = base + p->name_off;
	p->cmd.args = p->out.items;
	p->cmd.arg_count = top;
	p->cmd.has_code = p->has_code;
	p->cmd.text = base + p->text_off;
}

/* A complete segment is in p->seg.  Returns -1, 0 (literal follows) or 1. */
static int process_segment(struct proto_parser *p)
{
	const unsigned char *s = p->seg.data;
	size_t end = p->seg.len - 1; /* drop LF */
	if (end > 0 && s[end - 1] == '\r')
		end--;
	size_t pos = 0;
	if (!p->head_done) {
		int r = parse_head(p, s, end, &pos);
		if (r != 0)
			return r;
	}
	int r = tokenize(p, s, pos, end, false, &pos);
	if (r <= 0)
		return r;
	if (p->stack.count != 0)
		return fail(p, PROTO_PARSE_ERR_SYNTAX, "Unclosed list");
	return 1;
}

int proto_parser_parse(struct proto_parser *p, const unsigned char *data, size_t len,
		       size_t *consumed_r, const struct proto_cmd **cmd_r)
{
	*consumed_r = 0;
	*cmd_r = NULL;
	if (p->state == ST_ERROR)
		return -1;
	if (p->cmd_returned) {
		p->cmd_returned = false;
		reset_line(p);
	}
	size_t pos = 0;
	while (pos < len || (p->state == ST_LITERAL && p->lit_have == p->lit_len)) {
		if (p->state == ST_LITERAL) {
			size_t n = len - pos;
			if (n > p->lit_len - p->lit_have)
				n = p->lit_len - p->lit_have;
			if (n > 0)
				memcpy(p->lit + p->lit_have, data + pos, n);
			p->lit_have += n;
			pos += n;
			if (p->lit_have < p->lit_len)
				break;
			p->state = ST_LINE;
			continue;
		}
		p->in_line = true;
		size_t room = p->set.max_line - p->line_total;
		size_t scan = len - pos < room ? len - pos : room;
		const unsigned char *lf = memchr(data + pos, '\n', scan);
		if (lf == NULL && scan < len - pos) {
			*consumed_r = pos + scan;
			return fail(p, PROTO_PARSE_ERR_LINE_TOO_LONG, "Line too long");
		}
		size_t n = lf != NULL ? (size_t)(lf - (data + pos)) + 1 : scan;
		buf_append(&p->seg, data + pos, n);
		p->line_total += n;
		pos += n;
		if (lf == NULL)
			break;
		int r = process_segment(p);
		buf_reset(&p->seg);
		if (r < 0) {
			*consumed_r = pos;
			return -1;
		}
		if (r == 1) {
			build_cmd(p);
			p->cmd_returned = true;
			*consumed_r = pos;
			*cmd_r = &p->cmd;
			return 1;
		}
		p->state = ST_LITERAL;
	}
	*consumed_r = pos;
	return 0;
}

unsigned char *proto_parser_steal_literal(struct proto_parser *p, const struct proto_arg *arg)
{
	if (!p->cmd_returned || arg->type != PROTO_ARG_LITERAL)
		return NULL;
	for (size_t i = 0; i < p->lits.count; i++) {
		if (p->lits.items[i] != NULL && (const char *)p->lits.items[i] == arg->str) {
			unsigned char *lit = p->lits.items[i];
			p->lits.items[i] = NULL;
			return lit;
		}
	}
	return NULL;
}

bool proto_cmd_is(const struct proto_cmd *cmd, const char *name)
{
	return strcasecmp(cmd->name, name) == 0;
}

bool proto_cmd_is_status(const struct proto_cmd *cmd)
{
	return name_is_status(cmd->name);
}
