/* SORT programs: see imap-sort.h. */
#include "imap/imap-sort.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imap/imap-mime.h"
#include "imap/imap-sortkeys.h"
#include "lib/xalloc.h"

static const struct {
	const char *name;
	enum imap_sort_key key;
} key_names[] = {
	{ "ARRIVAL", IMAP_SORT_ARRIVAL },
	{ "CC", IMAP_SORT_CC },
	{ "DATE", IMAP_SORT_DATE },
	{ "FROM", IMAP_SORT_FROM },
	{ "SIZE", IMAP_SORT_SIZE },
	{ "SUBJECT", IMAP_SORT_SUBJECT },
	{ "TO", IMAP_SORT_TO },
	{ "DISPLAYFROM", IMAP_SORT_DISPLAYFROM },
	{ "DISPLAYTO", IMAP_SORT_DISPLAYTO },
};

int imap_sort_program_parse(const struct imap_arg *list, struct imap_sort_program *prog,
			    const char **error_r)
{
	memset(prog, 0, sizeof(*prog));
	if (list->type != IMAP_ARG_LIST || list->count == 0) {
		*error_r = "Missing sort criteria";
		return -1;
	}
	bool reverse = false;
	for (size_t i = 0; i < list->count; i++) {
		const struct imap_arg *a = &list->list[i];
		if (a->type != IMAP_ARG_ATOM) {
			*error_r = "Invalid sort criterion";
			return -1;
		}
		if (strcasecmp(a->str, "REVERSE") == 0) {
			if (reverse) {
				*error_r = "REVERSE twice";
				return -1;
			}
			reverse = true;
			continue;
		}
		size_t k;
		for (k = 0; k < sizeof(key_names) / sizeof(key_names[0]); k++)
			if (strcasecmp(a->str, key_names[k].name) == 0)
				break;
		if (k == sizeof(key_names) / sizeof(key_names[0])) {
			*error_r = "Unknown sort criterion";
			return -1;
		}
		if (prog->count == IMAP_SORT_MAX_CRITERIA) {
			*error_r = "Too many sort criteria";
			return -1;
		}
		prog->crit[prog->count].key = key_names[k].key;
		prog->crit[prog->count].reverse = reverse;
		prog->count++;
		reverse = false;
	}
	if (reverse) {
		*error_r = "REVERSE without a sort criterion";
		return -1;
	}
	return 0;
}

bool imap_sort_program_needs_text(const struct imap_sort_program *prog)
{
	for (size_t i = 0; i < prog->count; i++)
		if (prog->crit[i].key != IMAP_SORT_ARRIVAL && prog->crit[i].key != IMAP_SORT_SIZE)
			return true;
	return false;
}

char *imap_sort_string_key(enum imap_sort_key key, const struct imap_mime *m)
{
	switch (key) {
	case IMAP_SORT_SUBJECT:
		return imap_sortkey_subject(m);
	case IMAP_SORT_FROM:
		return imap_sortkey_address(m, "from", false);
	case IMAP_SORT_TO:
		return imap_sortkey_address(m, "to", false);
	case IMAP_SORT_CC:
		return imap_sortkey_address(m, "cc", false);
	case IMAP_SORT_DISPLAYFROM:
		return imap_sortkey_address(m, "from", true);
	case IMAP_SORT_DISPLAYTO:
		return imap_sortkey_address(m, "to", true);
	default:
		return NULL;
	}
}

void imap_sort_entry_fill(struct imap_sort_entry *e, const struct imap_sort_program *prog,
			  const struct imap_mime *m)
{
	e->date = e->arrival;
	for (size_t i = 0; i < prog->count; i++) {
		enum imap_sort_key key = prog->crit[i].key;
		if (key == IMAP_SORT_DATE)
			e->date = imap_sent_date(m, e->arrival);
		else if (e->str[key] == NULL)
			e->str[key] = imap_sort_string_key(key, m);
	}
}

void imap_sort_entry_free(struct imap_sort_entry *e)
{
	for (size_t i = 0; i < IMAP_SORT_KEY_COUNT; i++) {
		free(e->str[i]);
		e->str[i] = NULL;
	}
}

static int cmp_i64(int64_t a, int64_t b)
{
	return a < b ? -1 : a > b ? 1 : 0;
}

int imap_sort_compare(const struct imap_sort_program *prog, const struct imap_sort_entry *a,
		      const struct imap_sort_entry *b)
{
	for (size_t i = 0; i < prog->count; i++) {
		enum imap_sort_key key = prog->crit[i].key;
		int r;
		switch (key) {
		case IMAP_SORT_ARRIVAL:
			r = cmp_i64(a->arrival, b->arrival);
			break;
		case IMAP_SORT_DATE:
			r = cmp_i64(a->date, b->date);
			break;
		case IMAP_SORT_SIZE:
			r = a->size < b->size ? -1 : a->size > b->size ? 1 : 0;
			break;
		default:
			r = strcmp(a->str[key] != NULL ? a->str[key] : "",
				   b->str[key] != NULL ? b->str[key] : "");
			break;
		}
		if (r != 0)
			return prog->crit[i].reverse ? -r : r;
	}
	return a->seq < b->seq ? -1 : a->seq > b->seq ? 1 : 0;
}

void imap_sort_entries(const struct imap_sort_program *prog, struct imap_sort_entry *entries,
		       size_t count)
{
	if (count < 2)
		return;
	/* bottom-up merge sort between entries and tmp */
	struct imap_sort_entry *tmp = xreallocarray(NULL, count, sizeof(*tmp));
	struct imap_sort_entry *src = entries, *dst = tmp;
	for (size_t width = 1; width < count; width *= 2) {
		for (size_t lo = 0; lo < count; lo += 2 * width) {
			size_t mid = lo + width < count ? lo + width : count;
			size_t hi = lo + 2 * width < count ? lo + 2 * width : count;
			size_t i = lo, j = mid, k = lo;
			while (i < mid && j < hi)
				dst[k++] = imap_sort_compare(prog, &src[j], &src[i]) < 0 ? src[j++]
											: src[i++];
			while (i < mid)
				dst[k++] = src[i++];
			while (j < hi)
				dst[k++] = src[j++];
		}
		struct imap_sort_entry *t = src;
		src = dst;
		dst = t;
	}
	if (src != entries)
		memcpy(entries, src, count * sizeof(*entries));
	free(tmp);
}
