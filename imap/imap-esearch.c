/* ESEARCH result options and responses: see imap-esearch.h. */
#include "imap/imap-esearch.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap/imap-private.h"
#include "imap/imap-seqset.h"
#include "lib/buf.h"
#include "lib/str.h"
#include "lib/xalloc.h"

static int parse_partial(const struct imap_arg *a, struct imap_esearch_return *ret)
{
	/* partial-range = number ":" number; both ends nonzero, no '*'. */
	if (a->type != IMAP_ARG_ATOM)
		return -1;
	const char *colon = memchr(a->str, ':', a->len);
	if (colon == NULL)
		return -1;
	uint64_t lo, hi;
	size_t n1 = (size_t)(colon - a->str), n2 = a->len - n1 - 1;
	if (str_to_u64_n(a->str, n1, UINT32_MAX, &lo) < 0 ||
	    str_to_u64_n(colon + 1, n2, UINT32_MAX, &hi) < 0 || lo == 0 || hi == 0)
		return -1;
	if (lo > hi) {
		uint64_t t = lo;
		lo = hi;
		hi = t;
	}
	ret->partial_lo = (uint32_t)lo;
	ret->partial_hi = (uint32_t)hi;
	return 0;
}

int imap_esearch_parse_return(const struct imap_arg *args, size_t count,
			      struct imap_esearch_return *ret, const char **error_r)
{
	static const struct {
		const char *name;
		unsigned bit;
	} names[] = {
		{ "MIN", IMAP_ESEARCH_MIN },     { "MAX", IMAP_ESEARCH_MAX },
		{ "ALL", IMAP_ESEARCH_ALL },     { "COUNT", IMAP_ESEARCH_COUNT },
		{ "SAVE", IMAP_ESEARCH_SAVE },   { "PARTIAL", IMAP_ESEARCH_PARTIAL },
		{ "UPDATE", IMAP_ESEARCH_UPDATE },
	};
	memset(ret, 0, sizeof(*ret));
	if (count == 0 || !imap_arg_atom_eq(&args[0], "RETURN"))
		return 0;
	if (count < 2 || args[1].type != IMAP_ARG_LIST) {
		*error_r = "RETURN needs a list of options";
		return -1;
	}
	ret->given = true;
	const struct imap_arg *opt = args[1].list;
	size_t n = args[1].count;
	for (size_t i = 0; i < n; i++) {
		size_t k;
		for (k = 0; k < sizeof(names) / sizeof(names[0]); k++)
			if (imap_arg_atom_eq(&opt[i], names[k].name))
				break;
		if (k == sizeof(names) / sizeof(names[0])) {
			*error_r = "Unknown RETURN option";
			return -1;
		}
		/* A repeated option adds nothing (and Dovecot accepts it);
		 * a second PARTIAL range would be ambiguous. */
		if ((ret->opts & names[k].bit) && names[k].bit == IMAP_ESEARCH_PARTIAL) {
			*error_r = "PARTIAL given twice";
			return -1;
		}
		ret->opts |= names[k].bit;
		if (names[k].bit == IMAP_ESEARCH_PARTIAL) {
			if (i + 1 >= n || parse_partial(&opt[i + 1], ret) < 0) {
				*error_r = "PARTIAL needs a range n:m";
				return -1;
			}
			i++;
		}
	}
	/* PARTIAL returns part of ALL: both at once is contradictory
	 * (RFC 5267 4.4). */
	if ((ret->opts & IMAP_ESEARCH_PARTIAL) && (ret->opts & IMAP_ESEARCH_ALL)) {
		*error_r = "PARTIAL and ALL are exclusive";
		return -1;
	}
	if (ret->opts == 0)
		ret->opts = IMAP_ESEARCH_ALL;
	return 2;
}

bool imap_esearch_wants_reply(const struct imap_esearch_return *ret)
{
	return ret->given && ret->opts != IMAP_ESEARCH_SAVE;
}

bool imap_esearch_names_save(const struct imap_arg *args, size_t count)
{
	if (count < 2 || !imap_arg_atom_eq(&args[0], "RETURN") || args[1].type != IMAP_ARG_LIST)
		return false;
	for (size_t i = 0; i < args[1].count; i++)
		if (imap_arg_atom_eq(&args[1].list[i], "SAVE"))
			return true;
	return false;
}

/* Indexes of the MIN and MAX message of a non-empty result. */
static void min_max(const struct imap_esearch_return *ret, const uint32_t *nums, size_t count,
		    size_t *imin_r, size_t *imax_r)
{
	size_t imin = 0, imax = 0;
	if (ret->sorted) {
		imax = count - 1;
	} else {
		for (size_t i = 1; i < count; i++) {
			if (nums[i] < nums[imin])
				imin = i;
			if (nums[i] > nums[imax])
				imax = i;
		}
	}
	*imin_r = imin;
	*imax_r = imax;
}

void imap_esearch_format(struct buf *out, const char *tag, bool uid,
			 const struct imap_esearch_return *ret, const uint32_t *nums,
			 const uint64_t *modseqs, size_t count)
{
	buf_append_str(out, "* ESEARCH (TAG ");
	imap_append_nstring(out, tag, strlen(tag));
	buf_append_byte(out, ')');
	if (uid)
		buf_append_str(out, " UID");
	size_t imin = 0, imax = 0;
	if (count > 0)
		min_max(ret, nums, count, &imin, &imax);
	uint64_t modseq = 0;
	if (count > 0 && (ret->opts & IMAP_ESEARCH_MIN)) {
		buf_appendf(out, " MIN %u", nums[imin]);
		if (modseqs != NULL && modseqs[imin] > modseq)
			modseq = modseqs[imin];
	}
	if (count > 0 && (ret->opts & IMAP_ESEARCH_MAX)) {
		buf_appendf(out, " MAX %u", nums[imax]);
		if (modseqs != NULL && modseqs[imax] > modseq)
			modseq = modseqs[imax];
	}
	if (ret->opts & IMAP_ESEARCH_COUNT)
		buf_appendf(out, " COUNT %zu", count);
	if (count > 0 && (ret->opts & IMAP_ESEARCH_ALL)) {
		buf_append_str(out, " ALL ");
		imap_seqset_format(nums, count, out);
	}
	if (ret->opts & IMAP_ESEARCH_PARTIAL) {
		buf_appendf(out, " PARTIAL (%u:%u ", ret->partial_lo, ret->partial_hi);
		if (ret->partial_lo > count) {
			buf_append_str(out, "NIL");
		} else {
			size_t end = ret->partial_hi < count ? ret->partial_hi : count;
			imap_seqset_format(nums + ret->partial_lo - 1, end - (ret->partial_lo - 1),
					   out);
		}
		buf_append_byte(out, ')');
	}
	/* MODSEQ covers every matching message unless only MIN/MAX were
	 * returned. */
	bool only_minmax = (ret->opts & (IMAP_ESEARCH_ALL | IMAP_ESEARCH_COUNT |
					 IMAP_ESEARCH_PARTIAL)) == 0;
	bool any = (ret->opts & (IMAP_ESEARCH_MIN | IMAP_ESEARCH_MAX | IMAP_ESEARCH_ALL |
				 IMAP_ESEARCH_COUNT | IMAP_ESEARCH_PARTIAL)) != 0;
	if (modseqs != NULL && count > 0 && any) {
		if (!only_minmax)
			for (size_t i = 0; i < count; i++)
				if (modseqs[i] > modseq)
					modseq = modseqs[i];
		buf_appendf(out, " MODSEQ %llu", (unsigned long long)modseq);
	}
	buf_append_str(out, "\r\n");
}

void imap_esearch_save_select(const struct imap_esearch_return *ret, const uint32_t *nums,
			      size_t count, bool *keep)
{
	unsigned o = ret->opts;
	bool minmax_only = (o & (IMAP_ESEARCH_MIN | IMAP_ESEARCH_MAX)) != 0 &&
			   (o & (IMAP_ESEARCH_ALL | IMAP_ESEARCH_COUNT)) == 0;
	for (size_t i = 0; i < count; i++)
		keep[i] = !minmax_only;
	if ((o & IMAP_ESEARCH_PARTIAL) && !minmax_only) {
		for (size_t i = 0; i < count; i++)
			keep[i] = i + 1 >= ret->partial_lo && i + 1 <= ret->partial_hi;
		return;
	}
	if (!minmax_only || count == 0)
		return;
	size_t imin, imax;
	min_max(ret, nums, count, &imin, &imax);
	if (o & IMAP_ESEARCH_MIN)
		keep[imin] = true;
	if (o & IMAP_ESEARCH_MAX)
		keep[imax] = true;
}

static int uid_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

uint32_t *imap_esearch_save_uids(const struct imap_esearch_return *ret, const uint32_t *nums,
				 const uint32_t *uids, size_t count, size_t *n_r)
{
	bool *keep = xcalloc(count > 0 ? count : 1, sizeof(bool));
	uint32_t *out = xreallocarray(NULL, count > 0 ? count : 1, sizeof(*out));
	imap_esearch_save_select(ret, nums, count, keep);
	size_t n = 0;
	for (size_t i = 0; i < count; i++)
		if (keep[i])
			out[n++] = uids[i];
	free(keep);
	/* a SORT result is in sort order; the saved result is a set */
	if (ret->sorted)
		qsort(out, n, sizeof(*out), uid_cmp);
	*n_r = n;
	return out;
}
