/* Derived data of a message text: what FETCH, SORT, THREAD and header
 * SEARCH would otherwise parse the text for on every request, computed once
 * per text and kept in the store (stor_derived_*, keyed by text GUID, so
 * copies of a message share it).
 *
 * The record is a pure function of the text.  Each node builds it from its
 * own copy of the text on first use and keeps it; it is never replicated or
 * synced (see "Derived data kept per message text" in docs/imap.md).  It starts with a format byte
 * (IMAP_DERIVED_FORMAT) and the size of the text it was made from: a record
 * of another format or size is rebuilt, never served.
 *
 * Bounded for hostile messages: a value over its limit is left out of the
 * record (marked "not kept") and its users parse the text as before, so a
 * limit never changes an answer, only its cost. */
#ifndef IMAP_IMAP_DERIVED_H
#define IMAP_IMAP_DERIVED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imap/imap-sort.h"
#include "lib/buf.h"
#include "storage/storage.h"

/* Bump when the record's layout or any value's computation changes: old
 * records are then rebuilt on their next use. */
#define IMAP_DERIVED_FORMAT 1

/* Limits of the values kept (bytes). */
#define IMAP_DERIVED_MAX_ENVELOPE (48 * 1024)
#define IMAP_DERIVED_MAX_BODYSTRUCTURE (48 * 1024)
#define IMAP_DERIVED_MAX_HEADER (32 * 1024)
#define IMAP_DERIVED_MAX_THREAD (32 * 1024)

enum imap_derived_have {
	IMAP_DERIVED_ENVELOPE = 1 << 0,
	IMAP_DERIVED_BODY = 1 << 1,            /* non-extended BODYSTRUCTURE */
	IMAP_DERIVED_BODYSTRUCTURE = 1 << 2,
	IMAP_DERIVED_HEADER = 1 << 3,          /* BODY[HEADER] bytes */
	IMAP_DERIVED_THREAD = 1 << 4,          /* message_id, refs, thread_subject */
};

struct imap_derived {
	unsigned have;                  /* enum imap_derived_have */
	char *envelope, *body, *bodystructure;  /* NUL-terminated */
	unsigned char *header;
	size_t envelope_len, body_len, bodystructure_len, header_len;
	/* SORT: the Date: header as imap_mime_date() reads it, and the string
	 * keys of imap_sortkey_*() (indexed by enum imap_sort_key; NULL for
	 * ARRIVAL, DATE, SIZE). */
	bool has_sort_date;
	int64_t sort_date;
	char *sortkey[IMAP_SORT_KEY_COUNT];
	/* THREAD: as cmd-thread.c reads them from the header fields. */
	bool has_thread_date;
	int64_t thread_date;
	char *message_id;               /* NULL if none */
	char **refs;
	size_t ref_count;
	char *thread_subject;           /* folded base subject */
	bool reply_or_fwd;
};

/* Computes the record of a text (any bytes) into out. */
void imap_derived_build(const unsigned char *text, size_t len, struct buf *out);
/* Decodes a record made from a text of text_size bytes.  Returns 0, or -1
 * if it is damaged, of another format or of another size (d_r is then
 * empty). */
int imap_derived_decode(const void *p, size_t len, uint64_t text_size, struct imap_derived *d_r);
void imap_derived_free(struct imap_derived *d);

/* The record of the text text_guid (text_size bytes): the stored one, or
 * built from the text (and stored) when missing or unusable.  If it had to
 * read the text and text_r is not NULL, the text is appended to text_r and
 * *text_read_r set (the caller need not read it again).  Returns 0 or -1
 * (*error_r). */
int imap_derived_load(struct stor_db *db, const struct guid *text_guid, uint64_t text_size,
		      struct imap_derived *d_r, struct buf *text_r, bool *text_read_r,
		      const char **error_r);

/* For SEARCH keys that need only the header: appends the text's header
 * block to out (from the record when it holds it, else the whole text,
 * which answers the same).  Returns 0 or -1 (*error_r). */
int imap_derived_load_header(struct stor_db *db, const struct guid *text_guid, uint64_t text_size,
			     struct buf *out, const char **error_r);

/* SORT: sets the keys prog needs as imap_sort_entry_fill() would from the
 * parsed text (e->arrival set by the caller). */
void imap_derived_sort_fill(struct imap_sort_entry *e, const struct imap_sort_program *prog,
			    const struct imap_derived *d);

/* THREAD: sets tm's date, and its IDs (ids) and base subject (subject) as
 * cmd-thread.c would read them from the header.  Returns false (tm
 * untouched) if the record does not hold them. */
struct imap_thread_msg;
bool imap_derived_thread_fill(struct imap_thread_msg *tm, const struct imap_derived *d,
			      bool ids, bool subject, int64_t internaldate);

/* Counters for tests and benchmarks: records built, and served as stored. */
struct imap_derived_stats {
	uint64_t built, hits;
};
extern struct imap_derived_stats imap_derived_stats;

#endif
