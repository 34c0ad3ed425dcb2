/* Parsed lines kept past their parser's next call (see protocol.h,
 * proto_cmd_keep()).
 *
 * A kept line is one allocation: a header, the arguments (each list's
 * elements contiguous, as the parser lays them out) and the bytes of every
 * string but the literals.  Each literal is a block of its own, taken from
 * the parser whole where it can be, so that holding a SAVE does not copy
 * its text; the header lists them to free them. */
#include "protocol/protocol.h"

#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

#include "lib/xalloc.h"

struct kept {
	struct proto_cmd cmd; /* first: a kept line is freed through it */
	unsigned char **taken; /* literals taken from the parser */
	size_t taken_count;
	size_t size;
};

struct keep_sizes {
	size_t args, bytes, literals;
};

static size_t round_up(size_t n, size_t a)
{
	return (n + a - 1) / a * a;
}

static void measure(const struct proto_arg *a, size_t n, struct keep_sizes *z)
{
	z->args += n;
	for (size_t i = 0; i < n; i++) {
		if (a[i].type == PROTO_ARG_LIST)
			measure(a[i].list, a[i].count, z);
		else if (a[i].type == PROTO_ARG_LITERAL)
			z->literals++;
		else
			z->bytes += a[i].len + 1;
	}
}

struct keep_ctx {
	struct kept *k;
	struct proto_parser *p;
	struct proto_arg *args; /* next free argument slot */
	char *bytes;            /* next free byte */
};

static const char *keep_bytes(struct keep_ctx *c, const char *s, size_t len)
{
	char *d = c->bytes;
	memcpy(d, s, len);
	d[len] = '\0';
	c->bytes += len + 1;
	return d;
}

/* Copies n arguments into dst (slots the caller reserved). */
static void keep_args(struct keep_ctx *c, struct proto_arg *dst, const struct proto_arg *a,
		      size_t n)
{
	for (size_t i = 0; i < n; i++) {
		dst[i] = a[i];
		if (a[i].type == PROTO_ARG_LIST) {
			struct proto_arg *elems = c->args;
			c->args += a[i].count;
			keep_args(c, elems, a[i].list, a[i].count);
			dst[i].list = a[i].count > 0 ? elems : NULL;
			continue;
		}
		dst[i].list = NULL;
		if (a[i].type != PROTO_ARG_LITERAL) {
			dst[i].str = keep_bytes(c, a[i].str, a[i].len);
			continue;
		}
		unsigned char *lit = c->p != NULL ? proto_parser_steal_literal(c->p, &a[i]) : NULL;
		if (lit == NULL) {
			/* Not this parser's, or taken already: a copy. */
			lit = xmalloc(a[i].len + 1);
			memcpy(lit, a[i].str, a[i].len);
			lit[a[i].len] = '\0';
		}
		c->k->taken[c->k->taken_count++] = lit;
		c->k->size += a[i].len;
		dst[i].str = (const char *)lit;
	}
}

struct proto_cmd *proto_cmd_keep(const struct proto_cmd *cmd, struct proto_parser *p)
{
	struct keep_sizes z = { 0, 0, 0 };
	measure(cmd->args, cmd->arg_count, &z);
	size_t tag_len = strlen(cmd->tag), name_len = strlen(cmd->name);
	size_t text_len = strlen(cmd->text);
	size_t off_taken = round_up(sizeof(struct kept), alignof(unsigned char *));
	size_t off_args = round_up(off_taken + z.literals * sizeof(unsigned char *),
				   alignof(struct proto_arg));
	size_t off_bytes = off_args + z.args * sizeof(struct proto_arg);
	size_t size = off_bytes + z.bytes + tag_len + name_len + text_len + 3;
	char *block = xmalloc(size);
	struct kept *k = (struct kept *)(void *)block;
	memset(k, 0, sizeof(*k));
	k->taken = (unsigned char **)(void *)(block + off_taken);
	k->size = size; /* and the literals, as they are kept */
	struct keep_ctx c = { k, p, (struct proto_arg *)(void *)(block + off_args),
			      block + off_bytes };
	struct proto_arg *top = c.args;
	c.args += cmd->arg_count;
	keep_args(&c, top, cmd->args, cmd->arg_count);
	k->cmd.tag = keep_bytes(&c, cmd->tag, tag_len);
	k->cmd.name = keep_bytes(&c, cmd->name, name_len);
	k->cmd.text = keep_bytes(&c, cmd->text, text_len);
	k->cmd.args = cmd->arg_count > 0 ? top : NULL;
	k->cmd.arg_count = cmd->arg_count;
	k->cmd.has_code = cmd->has_code;
	return &k->cmd;
}

size_t proto_cmd_kept_size(const struct proto_cmd *kept)
{
	const struct kept *k = (const struct kept *)(const void *)kept;
	return k->size;
}

void proto_cmd_kept_free(struct proto_cmd **cmdp)
{
	if (*cmdp == NULL)
		return;
	struct kept *k = (struct kept *)(void *)*cmdp;
	*cmdp = NULL;
	for (size_t i = 0; i < k->taken_count; i++)
		free(k->taken[i]);
	free(k);
}
