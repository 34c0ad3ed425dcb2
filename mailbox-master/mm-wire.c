/* Text form of mailbox-master messages (PROTOCOL.md "Wire form"): one line
 * of SP-separated arguments in SPEC.md's syntax, so the replicator can send
 * it as a tagged command and parse it back.  The parser treats its input
 * as hostile: every field is bounded and checked, and the result passes
 * mm_msg_validate(). */
#include <string.h>

#include "lib/buf.h"
#include "lib/str.h"
#include "mailbox-master/mm-private.h"


static const char *const reason_names[] = { NULL, "REFUSED", "LOOP", "HOPS" };

static bool atom_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && strchr("(){}\"[]", c) == NULL;
}

static bool is_atom(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (!atom_char((unsigned char)s[i]))
			return false;
	}
	return true;
}

/* The arguments are built as NUL-separated strings in out: their offsets
 * until out stops growing, then pointers. */
struct arg_builder {
	struct buf *out;
	size_t off[MM_MSG_MAX_ARGS];
	size_t n;
};

static void arg_begin(struct arg_builder *b)
{
	b->off[b->n++] = b->out->len;
}

static void arg_end(struct arg_builder *b)
{
	buf_append_byte(b->out, '\0');
}

static void arg_fmt_u64(struct arg_builder *b, uint64_t v)
{
	arg_begin(b);
	buf_appendf(b->out, "%llu", (unsigned long long)v);
	arg_end(b);
}

static void arg_str(struct arg_builder *b, const char *s)
{
	arg_begin(b);
	buf_append_str(b->out, s);
	arg_end(b);
}

static void arg_sids(struct arg_builder *b, const uint32_t *sids, uint32_t n)
{
	arg_begin(b);
	if (n == 0)
		buf_append_byte(b->out, '-');
	for (uint32_t i = 0; i < n; i++)
		buf_appendf(b->out, "%s%u", i == 0 ? "" : ",", sids[i]);
	arg_end(b);
}

size_t mm_msg_args(const struct mm_msg *msg, struct buf *out, struct mm_arg args[MM_MSG_MAX_ARGS])
{
	struct arg_builder b = { out, { 0 }, 0 };
	arg_str(&b, mm_msg_type_name(msg->type));
	if (msg->type == MM_MSG_LINKS) {
		arg_fmt_u64(&b, msg->src);
		arg_fmt_u64(&b, msg->version);
		arg_fmt_u64(&b, msg->epoch);
		arg_sids(&b, msg->nbrs, msg->n_nbrs);
	} else {
		arg_fmt_u64(&b, msg->src);
		arg_fmt_u64(&b, msg->dst);
		arg_fmt_u64(&b, msg->ttl);
		arg_fmt_u64(&b, msg->epoch);
		if (msg->type >= MM_MSG_WHO && msg->type <= MM_MSG_MOVE_FAIL)
			arg_str(&b, msg->gkey);
	}
	switch (msg->type) {
	case MM_MSG_IS:
		arg_fmt_u64(&b, msg->master);
		arg_fmt_u64(&b, msg->gen);
		break;
	case MM_MSG_MOVE:
		arg_fmt_u64(&b, msg->requester);
		arg_sids(&b, msg->path, msg->n_path);
		arg_str(&b, msg->soft ? "SOFT" : "FORCE");
		arg_fmt_u64(&b, msg->rate);
		break;
	case MM_MSG_RELEASE:
		arg_fmt_u64(&b, msg->requester);
		arg_fmt_u64(&b, msg->gen);
		arg_sids(&b, msg->path, msg->n_path);
		break;
	case MM_MSG_MOVE_FAIL:
		arg_fmt_u64(&b, msg->requester);
		arg_fmt_u64(&b, msg->master);
		arg_str(&b, msg->reason >= MM_FAIL_REFUSED && msg->reason <= MM_FAIL_HOPS ?
				    reason_names[msg->reason] : "?");
		break;
	default:
		break;
	}
	for (size_t i = 0; i < b.n; i++) {
		args[i].str = (const char *)out->data + b.off[i];
		args[i].len = strlen(args[i].str);
		args[i].quoted = false;
	}
	return b.n;
}

void mm_msg_write(const struct mm_msg *msg, struct buf *out)
{
	struct buf tmp = BUF_INIT;
	struct mm_arg args[MM_MSG_MAX_ARGS];
	size_t n = mm_msg_args(msg, &tmp, args);
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			buf_append_byte(out, ' ');
		/* Only a key can need quotes (an empty one is written as
		 * nothing, and refused by mm_msg_validate() anyway). */
		if (is_atom(args[i].str, args[i].len))
			buf_append(out, args[i].str, args[i].len);
		else
			buf_append_quoted(out, args[i].str, args[i].len);
	}
	buf_free(&tmp);
}

/* ---- parsing ---- */

/* Splits line into at most max arguments: atoms, or quoted strings with
 * \" and \\ escapes, whose bytes go unescaped to scratch (len bytes at
 * least).  Exactly one SP between arguments. */
static int split(const char *line, size_t len, char *scratch, struct mm_arg *args, size_t max,
		 size_t *n_r, const char **error_r)
{
	size_t i = 0, n = 0;

	while (i < len) {
		if (n == max) {
			*error_r = "too many arguments";
			return -1;
		}
		struct mm_arg *a = &args[n++];
		if (line[i] == '"') {
			char *dst = scratch;
			i++;
			while (i < len && line[i] != '"') {
				if (line[i] == '\\') {
					if (i + 1 >= len || (line[i + 1] != '"' && line[i + 1] != '\\')) {
						*error_r = "bad escape in quoted string";
						return -1;
					}
					i++;
				} else if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f) {
					*error_r = "control character in quoted string";
					return -1;
				}
				*scratch++ = line[i];
				i++;
			}
			if (i >= len) {
				*error_r = "unterminated quoted string";
				return -1;
			}
			a->str = dst;
			a->len = (size_t)(scratch - dst);
			a->quoted = true;
			i++;
		} else {
			size_t start = i;
			while (i < len && atom_char((unsigned char)line[i]))
				i++;
			if (i == start) {
				*error_r = "bad character";
				return -1;
			}
			a->str = line + start;
			a->len = i - start;
			a->quoted = false;
		}
		if (i < len) {
			if (line[i] != ' ' || i + 1 >= len) {
				*error_r = "arguments must be separated by one space";
				return -1;
			}
			i++;
		}
	}
	*n_r = n;
	return 0;
}

static int arg_u64(const struct mm_arg *a, uint64_t max, uint64_t *v_r)
{
	if (a->quoted || (a->len > 1 && a->str[0] == '0'))
		return -1;
	return str_to_u64_n(a->str, a->len, max, v_r);
}

static int arg_u32(const struct mm_arg *a, uint32_t *v_r)
{
	uint64_t v;
	if (arg_u64(a, UINT32_MAX, &v) < 0)
		return -1;
	*v_r = (uint32_t)v;
	return 0;
}

static int arg_sid_list(const struct mm_arg *a, uint32_t *sids, uint32_t max, uint32_t *n_r)
{
	*n_r = 0;
	if (a->quoted)
		return -1;
	if (a->len == 1 && a->str[0] == '-')
		return 0;
	size_t i = 0;
	while (i <= a->len) {
		size_t start = i;
		while (i < a->len && a->str[i] != ',')
			i++;
		struct mm_arg one = { a->str + start, i - start, false };
		if (*n_r >= max || one.len == 0 || arg_u32(&one, &sids[*n_r]) < 0)
			return -1;
		(*n_r)++;
		i++;
	}
	return 0;
}

static int arg_key(const struct mm_arg *a, char *out)
{
	if (a->len > MM_GKEY_MAX || memchr(a->str, '\0', a->len) != NULL)
		return -1;
	memcpy(out, a->str, a->len);
	out[a->len] = '\0';
	return 0;
}

static bool arg_is(const struct mm_arg *a, const char *s)
{
	return !a->quoted && a->len == strlen(s) && memcmp(a->str, s, a->len) == 0;
}

int mm_msg_parse(const char *line, size_t len, struct mm_msg *msg_r, const char **error_r)
{
	struct mm_arg a[MM_MSG_MAX_ARGS];
	char scratch[MM_WIRE_MAX_LINE];
	size_t n;

	memset(msg_r, 0, sizeof(*msg_r));
	if (len > MM_WIRE_MAX_LINE) {
		*error_r = "line too long";
		return -1;
	}
	if (split(line, len, scratch, a, MM_MSG_MAX_ARGS, &n, error_r) < 0)
		return -1;
	return mm_msg_from_args(a, n, msg_r, error_r);
}

int mm_msg_from_args(const struct mm_arg *a, size_t n, struct mm_msg *msg_r, const char **error_r)
{
	uint64_t v;
	int type = 0;

	memset(msg_r, 0, sizeof(*msg_r));
	if (n == 0) {
		*error_r = "empty line";
		return -1;
	}
	for (int t = MM_MSG_LINKS; t <= MM_MSG_MOVE_FAIL; t++) {
		if (arg_is(&a[0], mm_msg_type_name((enum mm_msg_type)t)))
			type = t;
	}
	if (type == 0) {
		*error_r = "unknown message";
		return -1;
	}
	msg_r->type = (enum mm_msg_type)type;
	*error_r = "bad arguments";
	if (type == MM_MSG_LINKS) {
		if (n != 5 || arg_u32(&a[1], &msg_r->src) < 0 ||
		    arg_u64(&a[2], UINT64_MAX, &msg_r->version) < 0 ||
		    arg_u64(&a[3], UINT64_MAX, &msg_r->epoch) < 0 ||
		    arg_sid_list(&a[4], msg_r->nbrs, MM_MAX_NODES, &msg_r->n_nbrs) < 0)
			return -1;
		return mm_msg_validate(msg_r, error_r);
	}
	static const size_t argc[] = {
		[MM_MSG_ANNOUNCE] = 5, [MM_MSG_DROPPED] = 5, [MM_MSG_STALE] = 5,
		[MM_MSG_WHO] = 6, [MM_MSG_IS] = 8, [MM_MSG_MOVE] = 10,
		[MM_MSG_RELEASE] = 9, [MM_MSG_MOVE_FAIL] = 9,
	};
	if (n != argc[type] || arg_u32(&a[1], &msg_r->src) < 0 ||
	    arg_u32(&a[2], &msg_r->dst) < 0 || arg_u32(&a[3], &msg_r->ttl) < 0 ||
	    arg_u64(&a[4], UINT64_MAX, &msg_r->epoch) < 0)
		return -1;
	if (n > 5 && arg_key(&a[5], msg_r->gkey) < 0)
		return -1;
	switch (type) {
	case MM_MSG_IS:
		if (arg_u32(&a[6], &msg_r->master) < 0 ||
		    arg_u64(&a[7], UINT64_MAX, &msg_r->gen) < 0)
			return -1;
		break;
	case MM_MSG_MOVE:
		if (arg_u32(&a[6], &msg_r->requester) < 0 ||
		    arg_sid_list(&a[7], msg_r->path, MM_MOVE_MAX_HOPS, &msg_r->n_path) < 0 ||
		    !(arg_is(&a[8], "SOFT") || arg_is(&a[8], "FORCE")) ||
		    arg_u64(&a[9], UINT32_MAX, &v) < 0)
			return -1;
		msg_r->soft = arg_is(&a[8], "SOFT");
		msg_r->rate = (uint32_t)v;
		break;
	case MM_MSG_RELEASE:
		if (arg_u32(&a[6], &msg_r->requester) < 0 ||
		    arg_u64(&a[7], UINT64_MAX, &msg_r->gen) < 0 ||
		    arg_sid_list(&a[8], msg_r->path, MM_MOVE_MAX_HOPS, &msg_r->n_path) < 0)
			return -1;
		break;
	case MM_MSG_MOVE_FAIL:
		if (arg_u32(&a[6], &msg_r->requester) < 0 || arg_u32(&a[7], &msg_r->master) < 0)
			return -1;
		for (int r = MM_FAIL_REFUSED; r <= MM_FAIL_HOPS; r++) {
			if (arg_is(&a[8], reason_names[r]))
				msg_r->reason = (enum mm_move_fail_reason)r;
		}
		if (msg_r->reason == 0)
			return -1;
		break;
	default:
		break;
	}
	return mm_msg_validate(msg_r, error_r);
}
