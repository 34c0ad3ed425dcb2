/* SEARCH programs: parsed once from the command's arguments, then evaluated
 * against one message at a time.  Pure: evaluation sees only what is in
 * struct imap_search_msg (the text is fetched lazily through a callback), so
 * it can be tested on in-memory messages.
 *
 * Keys: ALL, sequence sets, UID sets, ANSWERED DELETED DRAFT FLAGGED SEEN
 * and their UN* forms, NEW OLD RECENT (the session's \Recent), KEYWORD
 * UNKEYWORD, "$" (the saved result, RFC 5182), FROM TO CC BCC SUBJECT HEADER BODY TEXT, BEFORE ON SINCE,
 * SENTBEFORE SENTON SENTSINCE, LARGER SMALLER, NOT, OR, parenthesised lists,
 * MODSEQ (with the optional entry name and type), and a leading CHARSET
 * (any charset imap_mime_charset_known() accepts: the string arguments are
 * converted from it to UTF-8 when parsed).  String matching is a
 * case-insensitive substring match of the decoded message text (RFC 5051
 * i;unicode-casemap, see imap_mime_header_contains()). */
#ifndef IMAP_IMAP_SEARCH_H
#define IMAP_IMAP_SEARCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imap/imap-parser.h"
#include "storage/storage.h"

struct imap_search;
struct imap_mime;

/* A message as evaluation sees it. */
struct imap_search_msg {
	uint32_t seq, uid;
	uint32_t flags;
	const stor_string_list *keywords;
	int64_t internaldate;
	int32_t internaldate_tz;
	uint64_t size;
	uint64_t modseq;
	bool recent; /* \Recent in the searching session */
	/* Loads the text on first need: returns 0 with *text_r and *len_r valid
	 * until the message is done, or -1 (the key then does not match). */
	int (*load_text)(void *ctx, const char **text_r, size_t *len_r);
	void *load_ctx;
	/* Evaluation state: filled lazily, released by imap_search_msg_done(). */
	const char *text;
	size_t text_len;
	bool text_loaded, text_failed;
	struct imap_mime *mime;
};

/* Fills *sm for the stored message m at sequence number seq (zeroing the
 * evaluation state); the text loads through load_text(load_ctx). */
void imap_search_msg_init(struct imap_search_msg *sm, const struct stor_msg *m, uint32_t seq,
			  bool recent, int (*load)(void *ctx, const char **text_r, size_t *len_r),
			  void *load_ctx);

enum imap_search_error {
	IMAP_SEARCH_BAD,         /* syntax: reply BAD */
	IMAP_SEARCH_BADCHARSET,  /* reply NO [BADCHARSET (UTF-8 US-ASCII)] */
};

/* Parses args[0..count).  Returns 0 with *search_r, or -1 with *error_r
 * (static text) and *kind_r. */
int imap_search_parse(const struct imap_arg *args, size_t count, struct imap_search **search_r,
		      enum imap_search_error *kind_r, const char **error_r);
void imap_search_free(struct imap_search **search);

/* Resolves '*' in sequence and UID sets (call before matching). */
void imap_search_resolve(struct imap_search *search, uint32_t max_seq, uint32_t max_uid);
/* Turns "$" keys into the saved result uids[0..n) (ascending UIDs; RFC
 * 5182).  "$" matches nothing if this is not called. */
void imap_search_resolve_saved(struct imap_search *search, const uint32_t *uids, size_t n);
/* Whether "$" was used. */
bool imap_search_uses_saved(const struct imap_search *search);
/* Whether any key needs the message text (header, body, sent date). */
bool imap_search_needs_text(const struct imap_search *search);
/* Whether a key needs more of the text than its header (BODY, TEXT): if
 * not, load_text may give the header alone. */
bool imap_search_needs_body(const struct imap_search *search);
/* Whether a MODSEQ key was used (the reply then carries (MODSEQ n)). */
bool imap_search_uses_modseq(const struct imap_search *search);

bool imap_search_match(const struct imap_search *search, struct imap_search_msg *msg);
/* Releases what evaluation cached in msg (the parsed MIME tree). */
void imap_search_msg_done(struct imap_search_msg *msg);

/* Case-insensitive (ASCII) substring search; an empty needle matches. */
bool imap_search_contains(const char *hay, size_t hay_len, const char *needle, size_t needle_len);

#endif
