/* SORT programs (RFC 5256, RFC 5957): the sort criteria of a SORT command,
 * the keys each message needs for them, and the comparison.  Pure, so it can
 * be tested on in-memory messages; cmd-sort.c runs it over a mailbox. */
#ifndef IMAP_IMAP_SORT_H
#define IMAP_IMAP_SORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imap/imap-parser.h"
#include "lib/buf.h"

struct imap_mime;

enum imap_sort_key {
	IMAP_SORT_ARRIVAL,
	IMAP_SORT_CC,
	IMAP_SORT_DATE,
	IMAP_SORT_FROM,
	IMAP_SORT_SIZE,
	IMAP_SORT_SUBJECT,
	IMAP_SORT_TO,
	IMAP_SORT_DISPLAYFROM,
	IMAP_SORT_DISPLAYTO,
	IMAP_SORT_KEY_COUNT
};

/* More criteria than keys exist is only repetition; a bound all the same. */
#define IMAP_SORT_MAX_CRITERIA 32

struct imap_sort_program {
	size_t count;
	struct {
		enum imap_sort_key key;
		bool reverse;
	} crit[IMAP_SORT_MAX_CRITERIA];
};

/* Parses the criteria list "(" ["REVERSE"] key *(SP ["REVERSE"] key) ")".
 * Returns 0, or -1 with *error_r (static text; the reply is BAD). */
int imap_sort_program_parse(const struct imap_arg *list, struct imap_sort_program *prog,
			    const char **error_r);
/* Whether a criterion needs the message text (everything but ARRIVAL and
 * SIZE). */
bool imap_sort_program_needs_text(const struct imap_sort_program *prog);

/* One message's sort keys.  The caller sets seq, uid, size and arrival
 * (the internal date); imap_sort_entry_fill() computes the rest. */
struct imap_sort_entry {
	uint32_t seq, uid;
	uint64_t size;
	int64_t arrival;
	uint64_t modseq;                     /* for ESORT's MODSEQ */
	int64_t date;                        /* sent date, UTC */
	char *str[IMAP_SORT_KEY_COUNT];      /* string keys the program uses */
};

/* A string key's value for m (newly allocated; NULL m reads as an empty
 * message), or NULL for a key that is not a string (ARRIVAL, DATE, SIZE).
 * The one computation both SORT and the derived record use, so that a key
 * read from the record sorts like one computed from the text. */
char *imap_sort_string_key(enum imap_sort_key key, const struct imap_mime *m);
/* Computes the keys prog needs from the parsed message (NULL when the text
 * could not be read: strings are then "" and the date is the arrival). */
void imap_sort_entry_fill(struct imap_sort_entry *e, const struct imap_sort_program *prog,
			  const struct imap_mime *m);
void imap_sort_entry_free(struct imap_sort_entry *e);

/* <0, 0 or >0 as a sorts before, with or after b: by each criterion in
 * turn, then by sequence number (RFC 5256: REVERSE does not apply to it). */
int imap_sort_compare(const struct imap_sort_program *prog, const struct imap_sort_entry *a,
		      const struct imap_sort_entry *b);
/* Sorts entries in place (a merge sort: O(n log n) for any input). */
void imap_sort_entries(const struct imap_sort_program *prog, struct imap_sort_entry *entries,
		       size_t count);

#endif
