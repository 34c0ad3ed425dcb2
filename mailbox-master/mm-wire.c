/* Text form of mailbox-master messages (PROTOCOL.md "Wire form"): one line
 * of SP-separated arguments in SPEC.md's syntax, so the replicator can send
 * it as a tagged command and parse it back.  The parser treats its input
 * as hostile: every field is bounded and checked, and the result passes
 * mm_msg_validate(). */
#include <string.h>

#include "lib/buf.h"
#include "lib/str.h"
#include "mailbox-master/mm-private.h"

/* Longest line mm_msg_write() produces: LINKS with MM_MAX_NODES SIDs or a
 * quoted key with every byte escaped, well below SPEC.md's line limit. */
#define MM_WIRE_MAX_ARGS 16

static const char *const reason_names[] = { NULL, "REFUSED", "LOOP", "HOPS" };

static bool atom_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && strchr("(){}\"[]", c) == NULL;
}

static void write_key(struct buf *out, const char *key)
{
	bool atom = true;
	for (const char *p = key; *p != '\0'; p++)
		atom = atom && atom_char((unsigned char)*p);
	if (atom) {
		buf_append_str(out, key);
		return;
	}
	buf_append_quoted(out, key, strlen(key));
}

static void write_sids(struct buf *out, const uint32_t *sids, uint32_t n)
{
	if (n == 0) {
		buf_append_byte(out, '-');
		return;
	}
	for (uint32_t i = 0; i < n; i++)
		buf_appendf(out, "%s%u", i == 0 ? "" : ",", sids[i]);
}

void mm_msg_write(const struct mm_msg *msg, struct buf *out)
{
	buf_append_str(out, mm_msg_type_name(msg->type));
	if (msg->type == MM_MSG_LINKS) {
		buf_appendf(out, " %u %llu %llu ", msg->src,
			    (unsigned long long)msg->version, (unsigned long long)msg->epoch);
		write_sids(out, msg->nbrs, msg->n_nbrs);
		return;
	}
	buf_appendf(out, " %u %u %u %llu", msg->src, msg->dst, msg->ttl,
		    (unsigned long long)msg->epoch);
	switch (msg->type) {
	case MM_MSG_WHO:
		buf_append_byte(out, ' ');
		write_key(out, msg->gkey);
		break;
	case MM_MSG_IS:
		buf_append_byte(out, ' ');
		write_key(out, msg->gkey);
		buf_appendf(out, " %u %llu", msg->master, (unsigned long long)msg->gen);
		break;
	case MM_MSG_MOVE:
		buf_append_byte(out, ' ');
		write_key(out, msg->gkey);
		buf_appendf(out, " %u ", msg->requester);
		write_sids(out, msg->path, msg->n_path);
		buf_appendf(out, " %s %u", msg->soft ? "SOFT" : "FORCE", msg->rate);
		break;
	case MM_MSG_RELEASE:
		buf_append_byte(out, ' ');
		write_key(out, msg->gkey);
		buf_appendf(out, " %u %llu ", msg->requester, (unsigned long long)msg->gen);
		write_sids(out, msg->path, msg->n_path);
		break;
	case MM_MSG_MOVE_FAIL:
		buf_append_byte(out, ' ');
		write_key(out, msg->gkey);
		buf_appendf(out, " %u %u %s", msg->requester, msg->master,
			    msg->reason >= MM_FAIL_REFUSED && msg->reason <= MM_FAIL_HOPS ?
			    reason_names[msg->reason] : "?");
		break;
	default:
		break;
	}
}

/* ---- parsing ---- */

struct arg {
	const char *p;
	size_t len;
	bool quoted;
};

/* Splits line into at most max arguments: atoms, or quoted strings with
 * \" and \\ escapes.  Exactly one SP between arguments. */
static int split(const char *line, size_t len, struct arg *args, size_t max,
		 size_t *n_r, const char **error_r)
{
	size_t i = 0, n = 0;

	while (i < len) {
		if (n == max) {
			*error_r = "too many arguments";
			return -1;
		}
		struct arg *a = &args[n++];
		if (line[i] == '"') {
			size_t start = ++i;
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
				i++;
			}
			if (i >= len) {
				*error_r = "unterminated quoted string";
				return -1;
			}
			a->p = line + start;
			a->len = i - start;
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
			a->p = line + start;
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

static int arg_u64(const struct arg *a, uint64_t max, uint64_t *v_r)
{
	if (a->quoted || (a->len > 1 && a->p[0] == '0'))
		return -1;
	return str_to_u64_n(a->p, a->len, max, v_r);
}

static int arg_u32(const struct arg *a, uint32_t *v_r)
{
	uint64_t v;
	if (arg_u64(a, UINT32_MAX, &v) < 0)
		return -1;
	*v_r = (uint32_t)v;
	return 0;
}

static int arg_sids(const struct arg *a, uint32_t *sids, uint32_t max, uint32_t *n_r)
{
	*n_r = 0;
	if (a->quoted)
		return -1;
	if (a->len == 1 && a->p[0] == '-')
		return 0;
	size_t i = 0;
	while (i <= a->len) {
		size_t start = i;
		while (i < a->len && a->p[i] != ',')
			i++;
		struct arg one = { a->p + start, i - start, false };
		if (*n_r >= max || one.len == 0 || arg_u32(&one, &sids[*n_r]) < 0)
			return -1;
		(*n_r)++;
		i++;
	}
	return 0;
}

static int arg_key(const struct arg *a, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < a->len; i++) {
		if (a->quoted && a->p[i] == '\\')
			i++;
		if (o >= MM_GKEY_MAX)
			return -1;
		out[o++] = a->p[i];
	}
	out[o] = '\0';
	return 0;
}

static bool arg_is(const struct arg *a, const char *s)
{
	return !a->quoted && a->len == strlen(s) && memcmp(a->p, s, a->len) == 0;
}

int mm_msg_parse(const char *line, size_t len, struct mm_msg *msg_r, const char **error_r)
{
	struct arg a[MM_WIRE_MAX_ARGS];
	size_t n;
	uint64_t v;
	int type = 0;

	memset(msg_r, 0, sizeof(*msg_r));
	if (len > MM_WIRE_MAX_LINE) {
		*error_r = "line too long";
		return -1;
	}
	if (split(line, len, a, MM_WIRE_MAX_ARGS, &n, error_r) < 0)
		return -1;
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
		    arg_sids(&a[4], msg_r->nbrs, MM_MAX_NODES, &msg_r->n_nbrs) < 0)
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
		    arg_sids(&a[7], msg_r->path, MM_MOVE_MAX_HOPS, &msg_r->n_path) < 0 ||
		    !(arg_is(&a[8], "SOFT") || arg_is(&a[8], "FORCE")) ||
		    arg_u64(&a[9], UINT32_MAX, &v) < 0)
			return -1;
		msg_r->soft = arg_is(&a[8], "SOFT");
		msg_r->rate = (uint32_t)v;
		break;
	case MM_MSG_RELEASE:
		if (arg_u32(&a[6], &msg_r->requester) < 0 ||
		    arg_u64(&a[7], UINT64_MAX, &msg_r->gen) < 0 ||
		    arg_sids(&a[8], msg_r->path, MM_MOVE_MAX_HOPS, &msg_r->n_path) < 0)
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
