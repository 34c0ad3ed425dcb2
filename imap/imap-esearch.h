/* ESEARCH result options (RFC 4731 RETURN (MIN MAX ALL COUNT SAVE), RFC 5267
 * PARTIAL and UPDATE) and the untagged ESEARCH response.  Kept apart from
 * SEARCH itself so that SORT (ESORT) parses and answers the same way.
 * Pure: no session state; the caller keeps what SAVE selects. */
#ifndef IMAP_IMAP_ESEARCH_H
#define IMAP_IMAP_ESEARCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imap/imap-parser.h"

struct buf;

#define IMAP_ESEARCH_MIN (1u << 0)
#define IMAP_ESEARCH_MAX (1u << 1)
#define IMAP_ESEARCH_ALL (1u << 2)
#define IMAP_ESEARCH_COUNT (1u << 3)
#define IMAP_ESEARCH_SAVE (1u << 4)
#define IMAP_ESEARCH_PARTIAL (1u << 5)
#define IMAP_ESEARCH_UPDATE (1u << 6)

struct imap_esearch_return {
	bool given;        /* RETURN (...) was present: answer with ESEARCH */
	unsigned opts;     /* IMAP_ESEARCH_*; RETURN () is ALL (RFC 4731 3.1) */
	/* PARTIAL lo:hi, 1-based positions in the result, lo <= hi */
	uint32_t partial_lo, partial_hi;
	/* Set by the caller for SORT: the result is in sort order, so MIN and
	 * MAX are its first and last message (RFC 5267 3.1), not the lowest
	 * and highest number. */
	bool sorted;
};

/* Parses an optional "RETURN (opts)" at the start of args.  Returns how many
 * arguments it took (0 without RETURN, 2 with it), or -1 with *error_r
 * (static text) for a malformed or unknown option, or PARTIAL twice. */
int imap_esearch_parse_return(const struct imap_arg *args, size_t count,
			      struct imap_esearch_return *ret, const char **error_r);

/* Whether to answer with an ESEARCH response: not without RETURN, and not
 * for SAVE alone (RFC 5182 2.4).  UPDATE alone answers with the tag only. */
bool imap_esearch_wants_reply(const struct imap_esearch_return *ret);

/* Whether an unparsable RETURN list still names SAVE: the command then
 * empties the saved result (RFC 5182 2.1). */
bool imap_esearch_names_save(const struct imap_arg *args, size_t count);

/* Appends "* ESEARCH (TAG "tag") [UID] ..." with CRLF for the result
 * nums[0..count) in result order (ascending for SEARCH, sort order for
 * SORT).  modseqs, when not NULL, holds each result's modseq: MODSEQ is
 * then the highest among the reported messages (RFC 7162 3.1.5: those of
 * MIN/MAX when only they are asked for, else all of them). */
void imap_esearch_format(struct buf *out, const char *tag, bool uid,
			 const struct imap_esearch_return *ret, const uint32_t *nums,
			 const uint64_t *modseqs, size_t count);

/* What SAVE keeps of the result (RFC 5182 2.4, RFC 5267 4.4): with MIN
 * and/or MAX but neither ALL nor COUNT only those, with PARTIAL the
 * partial range, else all.  Sets keep[i] for each chosen index. */
void imap_esearch_save_select(const struct imap_esearch_return *ret, const uint32_t *nums,
			      size_t count, bool *keep);

/* What SAVE keeps as the saved result: the UIDs (uids[i] is the UID of
 * nums[i]) imap_esearch_save_select() chooses, ascending, in a new array
 * (*n_r of them; free it). */
uint32_t *imap_esearch_save_uids(const struct imap_esearch_return *ret, const uint32_t *nums,
				 const uint32_t *uids, size_t count, size_t *n_r);

#endif
