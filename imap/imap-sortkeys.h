/* Sort and thread keys of a message (RFC 5256, RFC 5957), computed from its
 * header values.  Pure functions, so SORT and THREAD can call them on a
 * parsed message now and a cache of derived data can call them when a
 * message is stored.
 *
 * Comparison keys are UTF-8 in the RFC 5051 (i;unicode-casemap) form:
 * titlecased and decomposed, so that two keys compare with strcmp() and
 * "c", "C" and "=?us-ascii?q?c?=" sort together. */
#ifndef IMAP_IMAP_SORTKEYS_H
#define IMAP_IMAP_SORTKEYS_H

#include <stdbool.h>
#include <stdint.h>

struct imap_mime;

#define IMAP_SORTKEY_MAX 512

/* The base subject (RFC 5256 section 2.1) of a raw Subject: header value
 * (NUL-terminated, folding and RFC 2047 encoded words as received; NULL for
 * a message without a Subject).  The value is decoded to UTF-8, whitespace
 * runs become one space, then "(fwd)" trailers, "re:", "fw:", "fwd:"
 * leaders (with "[blob]"s before them), leading "[blob]"s that do not make
 * up the whole rest, and "[fwd: ...]" wrapping are removed, repeatedly.
 * Returns a malloc'd UTF-8 string (never NULL, "" when nothing is left), in
 * its original case.  *was_reply_or_fwd (may be NULL) is set to whether a
 * "re"/"fw"/"fwd" leader, a "(fwd)" trailer or "[fwd: ]" wrapping was
 * removed, as THREAD ORDEREDSUBJECT and REFERENCES need. */
char *imap_base_subject(const char *header_value, bool *was_reply_or_fwd);

/* Folds UTF-8 text to its comparison key (i;unicode-casemap); malloc'd. */
char *imap_sortkey_fold(const char *utf8);

/* The sent date (RFC 5256 section 2.2) as UTC epoch seconds: the Date:
 * header of the message (m may be NULL), or internaldate when it has none
 * or it cannot be parsed. */
int64_t imap_sent_date(const struct imap_mime *m, int64_t internaldate);
/* The same from a raw Date: header value (NULL when there is none). */
int64_t imap_sent_date_value(const char *date_value, int64_t internaldate);

/* Comparison keys of the top-level message (m may be NULL: every key is
 * then ""); malloc'd, folded as imap_sortkey_fold() does, and cut to
 * IMAP_SORTKEY_MAX bytes so that a SORT over hostile messages holds a
 * bounded amount per message (keys that share that prefix tie).
 *
 * SUBJECT: the base subject of the first Subject: header. */
char *imap_sortkey_subject(const struct imap_mime *m);
/* FROM, TO, CC (display false): the mailbox (local part) of the first entry
 * of the address field, as ENVELOPE lists it (a group's start counts, its
 * name being the mailbox).  DISPLAYFROM, DISPLAYTO (RFC 5957, display
 * true): that entry's display name, RFC 2047 decoded, or when it has none,
 * "mailbox@host" ("mailbox" without a host).  "" when there is no such
 * field or entry. */
char *imap_sortkey_address(const struct imap_mime *m, const char *field, bool display);

#endif
