/* Typed access to parsed arguments: numbers, GUIDs, UID sets.
 *
 * These are the receiving half of the writer's helpers; each checks the
 * exact syntax of SPEC.md so a malformed argument becomes a BAD reply in
 * the caller instead of a surprise further down. */
#include "protocol/protocol.h"

#include <stdlib.h>
#include <string.h>

#include "lib/arr.h"
#include "lib/str.h"
#include "lib/xalloc.h"

int proto_arg_str(const struct proto_arg *a, const char **s_r, size_t *len_r)
{
	if (a->type == PROTO_ARG_LIST)
		return -1;
	*s_r = a->str;
	if (len_r != NULL)
		*len_r = a->len;
	return 0;
}

static int parse_num(const char *s, size_t len, uint64_t max, uint64_t *v_r)
{
	if (len == 0 || len > 20 || (len > 1 && s[0] == '0'))
		return -1;
	return str_to_u64_n(s, len, max, v_r);
}

int proto_arg_u64(const struct proto_arg *a, uint64_t max, uint64_t *v_r)
{
	if (a->type != PROTO_ARG_ATOM)
		return -1;
	return parse_num(a->str, a->len, max, v_r);
}

int proto_arg_u32(const struct proto_arg *a, uint32_t *v_r)
{
	uint64_t v;
	if (proto_arg_u64(a, UINT32_MAX, &v) < 0)
		return -1;
	*v_r = (uint32_t)v;
	return 0;
}

int proto_arg_req(const struct proto_arg *a, uint32_t *sid_r, uint64_t *n_r)
{
	if (a->type != PROTO_ARG_ATOM || a->len > PROTO_MAX_REQ_LEN)
		return -1;
	const char *dot = memchr(a->str, '.', a->len);
	uint64_t sid;
	if (dot == NULL || parse_num(a->str, (size_t)(dot - a->str), UINT32_MAX, &sid) < 0 ||
	    sid == 0 ||
	    parse_num(dot + 1, a->len - (size_t)(dot + 1 - a->str), UINT64_MAX, n_r) < 0)
		return -1;
	*sid_r = (uint32_t)sid;
	return 0;
}

int proto_arg_guid(const struct proto_arg *a, struct guid *g_r)
{
	if (a->type != PROTO_ARG_ATOM || a->len != GUID_SIZE * 2)
		return -1;
	return hex_decode(a->str, a->len, g_r->b, GUID_SIZE);
}

int proto_arg_date(const struct proto_arg *a, int64_t *secs_r, int *tz_minutes_r)
{
	uint64_t secs;
	if (a->type != PROTO_ARG_ATOM || a->len < 6)
		return -1;
	const char *zone = a->str + a->len - 5;
	if ((zone[0] != '+' && zone[0] != '-') ||
	    parse_num(a->str, (size_t)(zone - a->str), INT64_MAX, &secs) < 0)
		return -1;
	for (int i = 1; i < 5; i++) {
		if (zone[i] < '0' || zone[i] > '9')
			return -1;
	}
	int hh = (zone[1] - '0') * 10 + (zone[2] - '0');
	int mm = (zone[3] - '0') * 10 + (zone[4] - '0');
	if (hh > 23 || mm > 59)
		return -1;
	*secs_r = (int64_t)secs;
	*tz_minutes_r = (zone[0] == '-' ? -1 : 1) * (hh * 60 + mm);
	return 0;
}

static int parse_uid(const char *s, size_t len, uint32_t star, uint32_t *v_r)
{
	uint64_t v;
	if (len == 1 && s[0] == '*') {
		*v_r = star;
		return star == 0 ? -1 : 0;
	}
	if (parse_num(s, len, UINT32_MAX, &v) < 0 || v == 0)
		return -1;
	*v_r = (uint32_t)v;
	return 0;
}

int proto_arg_uidset(const struct proto_arg *a, uint32_t star_value, size_t max_ranges,
		     struct proto_uid_range **ranges_r, size_t *count_r)
{
	ARRAY(struct proto_uid_range) r = ARRAY_INIT;
	if (a->type != PROTO_ARG_ATOM)
		return -1;
	const char *s = a->str, *end = a->str + a->len;
	while (s < end) {
		const char *comma = memchr(s, ',', (size_t)(end - s));
		const char *item_end = comma != NULL ? comma : end;
		const char *colon = memchr(s, ':', (size_t)(item_end - s));
		struct proto_uid_range rg;
		if (r.count >= max_ranges)
			goto fail;
		if (colon == NULL) {
			if (parse_uid(s, (size_t)(item_end - s), star_value, &rg.lo) < 0)
				goto fail;
			rg.hi = rg.lo;
		} else {
			uint32_t x, y;
			if (parse_uid(s, (size_t)(colon - s), star_value, &x) < 0 ||
			    parse_uid(colon + 1, (size_t)(item_end - colon - 1), star_value, &y) < 0)
				goto fail;
			rg.lo = x < y ? x : y;
			rg.hi = x < y ? y : x;
		}
		ARRAY_PUSH(&r, rg);
		if (comma == NULL)
			break;
		s = comma + 1;
		if (s == end)
			goto fail; /* trailing comma */
	}
	if (r.count == 0)
		goto fail;
	*ranges_r = r.items;
	*count_r = r.count;
	return 0;
fail:
	ARRAY_FREE(&r);
	return -1;
}

static bool is_code_key(const struct proto_arg *a)
{
	if (a->type != PROTO_ARG_ATOM || a->str[0] < 'A' || a->str[0] > 'Z')
		return false;
	for (size_t i = 1; i < a->len; i++) {
		if ((a->str[i] < 'A' || a->str[i] > 'Z') && a->str[i] != '-')
			return false;
	}
	return true;
}

static const struct proto_arg *code_find(const struct proto_cmd *line, const char *key)
{
	if (!line->has_code)
		return NULL;
	for (size_t i = 0; i < line->arg_count; i++) {
		if (is_code_key(&line->args[i]) && strcmp(line->args[i].str, key) == 0)
			return &line->args[i];
	}
	return NULL;
}

bool proto_code_has(const struct proto_cmd *line, const char *key)
{
	return code_find(line, key) != NULL;
}

const struct proto_arg *proto_code_value(const struct proto_cmd *line, const char *key)
{
	const struct proto_arg *k = code_find(line, key);
	if (k == NULL || k + 1 >= line->args + line->arg_count || is_code_key(k + 1))
		return NULL;
	return k + 1;
}
