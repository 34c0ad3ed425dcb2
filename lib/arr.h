/* Growable arrays of any element type.
 *
 *   ARRAY(uint32_t) uids = ARRAY_INIT;
 *   ARRAY_PUSH(&uids, 42);
 *   for (size_t i = 0; i < uids.count; i++) use(uids.items[i]);
 *   ARRAY_FREE(&uids);
 *
 * Elements move when the array grows: don't keep pointers to them across a
 * push. */
#ifndef LIB_ARR_H
#define LIB_ARR_H

#include <stddef.h>
#include <stdlib.h>

#include "lib/xalloc.h"

#define ARRAY(type) struct { type *items; size_t count, cap; }
#define ARRAY_INIT { NULL, 0, 0 }

#define ARRAY_RESERVE(a, n) do { \
	if ((a)->count + (n) > (a)->cap) { \
		size_t arr_cap_ = (a)->cap ? (a)->cap : 8; \
		while (arr_cap_ < (a)->count + (n)) arr_cap_ *= 2; \
		(a)->items = xreallocarray((a)->items, arr_cap_, sizeof(*(a)->items)); \
		(a)->cap = arr_cap_; \
	} \
} while (0)

#define ARRAY_PUSH(a, value) do { \
	ARRAY_RESERVE(a, 1); \
	(a)->items[(a)->count++] = (value); \
} while (0)

#define ARRAY_FREE(a) do { \
	free((a)->items); \
	(a)->items = NULL; \
	(a)->count = (a)->cap = 0; \
} while (0)

#endif
