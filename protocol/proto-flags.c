/* Flag lists and UID sets as the replication commands carry them (SPEC.md
 * 8, 10): the grammar of the wire, so that every component reads and
 * writes them alike. */
#include "protocol/protocol.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/arr.h"
#include "lib/xalloc.h"

static const char *const flag_names[] = {
	"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft",
};

const char *proto_flag_name(uint32_t bit)
{
	for (size_t i = 0; i < sizeof(flag_names) / sizeof(flag_names[0]); i++) {
		if (bit == UINT32_C(1) << i)
			return flag_names[i];
	}
	return NULL;
}

int proto_flag_from_name(const char *name, uint32_t *bit_r)
{
	for (size_t i = 0; i < sizeof(flag_names) / sizeof(flag_names[0]); i++) {
		if (strcasecmp(name, flag_names[i]) == 0) {
			*bit_r = UINT32_C(1) << i;
			return 0;
		}
	}
	return -1;
}

void proto_flags_free(struct proto_flags *f)
{
	for (size_t i = 0; i < f->keywords.count; i++)
		free(f->keywords.items[i]);
	ARRAY_FREE(&f->keywords);
	f->flags = 0;
}

void proto_wr_flags(struct proto_wr *w, uint32_t flags, const char *const *keywords,
		    size_t keyword_count)
{
	proto_wr_list_begin(w);
	for (uint32_t bit = 1; bit <= PROTO_FLAG_DRAFT; bit <<= 1) {
		if ((flags & bit) != 0)
			proto_wr_atom(w, proto_flag_name(bit));
	}
	for (size_t i = 0; i < keyword_count; i++)
		proto_wr_atom(w, keywords[i]);
	proto_wr_list_end(w);
}

int proto_arg_flags(const struct proto_arg *a, struct proto_flags *f_r)
{
	memset(f_r, 0, sizeof(*f_r));
	if (a->type != PROTO_ARG_LIST || a->count > PROTO_MAX_KEYWORDS + 5)
		return -1;
	for (size_t i = 0; i < a->count; i++) {
		const struct proto_arg *e = &a->list[i];
		uint32_t bit;
		if (e->type != PROTO_ARG_ATOM)
			goto fail;
		if (e->str[0] == '\\') {
			if (proto_flag_from_name(e->str, &bit) < 0)
				goto fail;
			f_r->flags |= bit;
			continue;
		}
		if (e->len > PROTO_MAX_KEYWORD_LEN || f_r->keywords.count >= PROTO_MAX_KEYWORDS)
			goto fail;
		ARRAY_PUSH(&f_r->keywords, xstrdup(e->str));
	}
	return 0;
fail:
	proto_flags_free(f_r);
	return -1;
}

int proto_arg_uids(const struct proto_arg *a, size_t max, uint32_t **uids_r, size_t *count_r)
{
	struct proto_uid_range *ranges;
	size_t count;
	*uids_r = NULL;
	*count_r = 0;
	if (proto_arg_uidset(a, UINT32_MAX, PROTO_MAX_RANGES, &ranges, &count) < 0)
		return -1;
	size_t total = 0;
	for (size_t i = 0; i < count; i++) {
		total += (size_t)ranges[i].hi - ranges[i].lo + 1;
		if (total > max) {
			free(ranges);
			return -1;
		}
	}
	uint32_t *uids = total == 0 ? NULL : xreallocarray(NULL, total, sizeof(*uids));
	size_t n = 0;
	for (size_t i = 0; i < count; i++) {
		for (uint64_t u = ranges[i].lo; u <= ranges[i].hi; u++)
			uids[n++] = (uint32_t)u;
	}
	free(ranges);
	*uids_r = uids;
	*count_r = n;
	return 0;
}
