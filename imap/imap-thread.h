/* THREAD (RFC 5256): the threading algorithms as a pure module.  The caller
 * extracts each message's keys (Message-ID, References/In-Reply-To, base
 * subject, sent date) and gets back the THREAD response's thread lists, so
 * the algorithms are tested on in-memory messages.
 *
 * Algorithms:
 *  - ORDEREDSUBJECT (RFC 5256 3.1): messages grouped by base subject; each
 *    group is one thread whose first message (by sent date) is the parent of
 *    all others; threads ordered by their first message's sent date.
 *  - REFERENCES (RFC 5256 3.2, steps 1 to 6): parent/child links from
 *    Message-ID and References (or the first message ID of In-Reply-To),
 *    dummy pruning, then grouping of the top-level threads by base subject.
 *  - REFS (draft-ietf-morg-inthread, as Dovecot implements it): the same
 *    tree as REFERENCES without the subject grouping of step 5, and the
 *    threads ordered by the sent date of the newest message in each thread,
 *    so the thread that got the latest reply comes last; on equal dates,
 *    threads under a missing message come first (Dovecot's order).
 *
 * Ties in sent date are broken by the order of the input (ascending
 * sequence numbers).  The work is O(n log n) apart from the loop checks of
 * step 1, which walk at most IMAP_THREAD_MAX_DEPTH ancestors; nothing
 * recurses, so a hostile chain of references cannot exhaust the stack. */
#ifndef IMAP_IMAP_THREAD_H
#define IMAP_IMAP_THREAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

/* References kept per message: a longer References field keeps its first
 * ID (the thread's root) and the last ones (the nearest ancestors). */
#define IMAP_THREAD_MAX_REFS 500
/* Ancestors step 1 walks to rule out a loop before it refuses a link of a
 * message that already has replies (see would_loop() in imap-thread.c). */
#define IMAP_THREAD_MAX_DEPTH 1000
/* Longest message ID kept; longer ones are treated as absent. */
#define IMAP_THREAD_MAX_ID_LEN 998

enum imap_thread_alg {
	IMAP_THREAD_ORDEREDSUBJECT,
	IMAP_THREAD_REFERENCES,
	IMAP_THREAD_REFS,
};

/* Parses an algorithm name (case-insensitive); false if unknown. */
bool imap_thread_alg_parse(const char *name, size_t len, enum imap_thread_alg *alg_r);

struct imap_thread_msg {
	uint32_t id;            /* printed in the reply: sequence number or UID */
	int64_t date;           /* sent date (RFC 5256 2.2), UTC seconds */
	char *message_id;       /* without <>, NULL if none */
	char **refs;            /* parent chain, oldest first */
	size_t ref_count;
	char *base_subject;     /* RFC 5256 2.1; NULL reads as "" */
	bool reply_or_fwd;      /* the subject had Re:/Fwd: etc. removed */
};

/* Sets message_id from a Message-ID field value and refs from References,
 * or when that holds no message ID, from the first message ID of
 * In-Reply-To (RFC 5256 3.2 step 1).  Values are raw field values (folding
 * allowed) or NULL when the field is absent. */
void imap_thread_msg_set_ids(struct imap_thread_msg *m, const char *message_id, size_t mid_len,
			     const char *references, size_t ref_len, const char *in_reply_to,
			     size_t irt_len);
/* Drops all references but the last (the parent), for callers that bound
 * the memory a THREAD holds. */
void imap_thread_msg_keep_parent(struct imap_thread_msg *m);
/* Bytes the message's IDs take (message_id and refs, NULs included). */
size_t imap_thread_msg_id_bytes(const struct imap_thread_msg *m);
/* Frees what the message owns (message_id, refs, base_subject). */
void imap_thread_msg_free(struct imap_thread_msg *m);

/* Appends the thread lists of msgs[0..count) (in ascending sequence order)
 * to out, e.g. "(1 2)(3 (4)(5))"; nothing for no messages. */
void imap_thread_build(enum imap_thread_alg alg, const struct imap_thread_msg *msgs, size_t count,
		       struct buf *out);

/* Finds the first field called name (case-insensitive) in the header of a
 * message text (which may go on past the header or stop inside it) and
 * appends its value, unfolded (CR and LF removed), to out.  Returns whether
 * the field was found. */
bool imap_thread_header_get(const char *text, size_t len, const char *name, struct buf *out);

#endif
