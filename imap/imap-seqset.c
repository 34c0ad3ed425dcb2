/* Sequence sets: see imap-seqset.h. */
#include "imap/imap-seqset.h"

#include <ctype.h>
#include <stdlib.h>

#include "lib/buf.h"

static int parse_number(const char **sp, uint64_t *n_r)
{
	const char *s = *sp;
	if (*s == '*') {
		*n_r = IMAP_SEQ_STAR;
		*sp = s + 1;
		return 0;
	}
	if (!isdigit((unsigned char)*s) || *s == '0')
		return -1;
	uint64_t v = 0;
	while (isdigit((unsigned char)*s)) {
		v = v * 10 + (uint64_t)(*s - '0');
		if (v > UINT32_MAX)
			return -1;
		s++;
	}
	*n_r = v;
	*sp = s;
	return 0;
}

int imap_seqset_parse(const char *s, imap_seqset *set_r)
{
	if (*s == '\0')
		return -1;
	for (;;) {
		struct imap_seq_range r;
		if (parse_number(&s, &r.lo) < 0)
			return -1;
		r.hi = r.lo;
		if (*s == ':') {
			s++;
			if (parse_number(&s, &r.hi) < 0)
				return -1;
		}
		if (set_r->count >= IMAP_SEQSET_MAX_RANGES)
			return -1;
		ARRAY_PUSH(set_r, r);
		if (*s == '\0')
			return 0;
		if (*s != ',')
			return -1;
		s++;
	}
}

static int range_cmp(const void *a, const void *b)
{
	const struct imap_seq_range *x = a, *y = b;
	if (x->lo != y->lo)
		return x->lo < y->lo ? -1 : 1;
	return x->hi < y->hi ? -1 : x->hi > y->hi;
}

void imap_seqset_resolve(imap_seqset *set, uint32_t star)
{
	size_t w = 0;
	for (size_t i = 0; i < set->count; i++) {
		struct imap_seq_range r = set->items[i];
		if (star == 0 && (r.lo == IMAP_SEQ_STAR || r.hi == IMAP_SEQ_STAR))
			continue;
		if (r.lo == IMAP_SEQ_STAR)
			r.lo = star;
		if (r.hi == IMAP_SEQ_STAR)
			r.hi = star;
		if (r.lo > r.hi) {
			uint64_t t = r.lo;
			r.lo = r.hi;
			r.hi = t;
		}
		if (r.hi == 0)
			continue;
		if (r.lo == 0)
			r.lo = 1;
		set->items[w++] = r;
	}
	set->count = w;
	if (w == 0)
		return;
	qsort(set->items, w, sizeof(set->items[0]), range_cmp);
	size_t m = 0;
	for (size_t i = 1; i < w; i++) {
		struct imap_seq_range *last = &set->items[m];
		if (set->items[i].lo <= last->hi || set->items[i].lo - 1 == last->hi) {
			if (set->items[i].hi > last->hi)
				last->hi = set->items[i].hi;
		} else {
			set->items[++m] = set->items[i];
		}
	}
	set->count = m + 1;
}

bool imap_seqset_contains(const imap_seqset *set, uint32_t n)
{
	size_t lo = 0, hi = set->count;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (n < set->items[mid].lo)
			hi = mid;
		else if (n > set->items[mid].hi)
			lo = mid + 1;
		else
			return true;
	}
	return false;
}

void imap_seqset_format(const uint32_t *nums, size_t count, struct buf *out)
{
	for (size_t i = 0; i < count;) {
		size_t j = i;
		while (j + 1 < count && nums[j + 1] == nums[j] + 1)
			j++;
		if (i > 0)
			buf_append_byte(out, ',');
		if (j == i)
			buf_appendf(out, "%u", nums[i]);
		else
			buf_appendf(out, "%u:%u", nums[i], nums[j]);
		i = j + 1;
	}
}
