/* IMAP sequence sets ("1:4,7,9:*") for message sequence numbers and UIDs.
 *
 * A set is parsed once into ranges in which '*' is kept symbolic; it is
 * resolved against the current highest number when used, so that "*" means
 * the last message (or the highest UID) at the time of use, and "5:*" with
 * fewer than 5 messages still matches the last one (RFC 3501 section 9,
 * seq-range: the order of the two ends does not matter). */
#ifndef IMAP_IMAP_SEQSET_H
#define IMAP_IMAP_SEQSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/arr.h"

/* '*' inside a parsed range: outside the 32-bit numbers, since 4294967295
 * is itself a valid UID in a set (RFC 3501 nz-number, uniqueid). */
#define IMAP_SEQ_STAR UINT64_MAX

struct imap_seq_range {
	/* lo <= hi <= UINT32_MAX after resolving; either may be IMAP_SEQ_STAR before */
	uint64_t lo, hi;
};

typedef ARRAY(struct imap_seq_range) imap_seqset;

/* Most ranges accepted in one set, to bound work per command. */
#define IMAP_SEQSET_MAX_RANGES 100000

/* Parses s (NUL-terminated) into *set_r (which must be empty: ARRAY_INIT).
 * Returns 0, or -1 on syntax errors, zero numbers or too many ranges; the
 * caller frees *set_r with ARRAY_FREE in both cases. */
int imap_seqset_parse(const char *s, imap_seqset *set_r);

/* Replaces '*' by star, orders each range's ends, then sorts and merges
 * overlapping and adjacent ranges.  With star == 0 (an empty mailbox), '*'
 * ranges resolve to nothing and are dropped. */
void imap_seqset_resolve(imap_seqset *set, uint32_t star);

/* Whether n is in a resolved set (binary search). */
bool imap_seqset_contains(const imap_seqset *set, uint32_t n);

/* Appends numbers in the given order as a sequence-set, each ascending run
 * written "a:b" ("1:3,7"; ESORT's "5,3:4,2,1" keeps the sort order). */
struct buf;
void imap_seqset_format(const uint32_t *nums, size_t count, struct buf *out);

#endif
