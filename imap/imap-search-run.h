/* One pass of a search program over the selected mailbox, as SEARCH, SORT
 * and THREAD run it: the criteria parsed (with SORT's and THREAD's bare
 * charset turned into SEARCH's CHARSET), resolved against the session's
 * view, and evaluated in bounded steps per loop turn, loading a message's
 * text only when a key needs it.  What a command does with each match and
 * with the result stays in its cmd-*.c. */
#ifndef IMAP_IMAP_SEARCH_RUN_H
#define IMAP_IMAP_SEARCH_RUN_H

#include "imap/imap-esearch.h"
#include "imap/imap-private.h"
#include "imap/imap-search.h"

struct imap_search_run {
	struct imap_search *search;
	struct imap_arg *args; /* the CHARSET-prefixed copy, when one is made */
	stor_msg_list msgs;    /* all of the mailbox, UID order */
	size_t next;
	struct guid mailbox;
	struct stor_db *db;
	/* the current message's text, as its keys loaded it */
	struct buf text;
	struct guid text_guid;
	uint64_t text_size;
};

void imap_search_run_free(struct imap_search_run *r);

/* Ends the command with status and text.  RFC 5182 2.1: a command with
 * SAVE that fails leaves "$" empty, so later commands using it cannot act
 * on a stale result. */
bool imap_search_run_fail(struct imap_cmd *cmd, bool save, const char *status,
			  const char *text);

/* Parses the criteria args[0..count).  With bare_charset, args[0] is a
 * charset that the command requires (SORT, THREAD), else the criteria are
 * SEARCH's (an optional leading "CHARSET x").  Returns 0, or -1 with
 * *status_r ("NO" for an unknown charset, with BADCHARSET, else "BAD") and
 * the reply's text in text[size]. */
int imap_search_run_parse(struct imap_search_run *r, const struct imap_arg *args, size_t count,
			  bool bare_charset, const char **status_r, char *text, size_t size);

/* Resolves sequence numbers and "*" against the selected mailbox and lists
 * its messages.  Returns 0, or -1 with the reply's text (a NO) in
 * text[size]. */
int imap_search_run_start(struct imap_search_run *r, struct imap_client *c, char *text,
			  size_t size);

/* Called for each matching message while it is current (r->text holds
 * what its keys loaded; sm says whether they did). */
typedef void imap_search_run_match_fn(struct imap_cmd *cmd, const struct stor_msg *m,
				      uint32_t seq, const struct imap_search_msg *sm);

/* Evaluates up to budget more messages of the run, calling match for
 * each match.  When messages remain, continues the command with cont on
 * the next loop turn (returns false); when all are seen, returns
 * finish(cmd).  A mailbox closed meanwhile ends the command with NO. */
bool imap_search_run_step(struct imap_cmd *cmd, struct imap_search_run *r, size_t budget,
			  imap_search_run_match_fn *match, bool (*cont)(struct imap_cmd *cmd),
			  bool (*finish)(struct imap_cmd *cmd));

/* Writes SEARCH's or SORT's reply for the matches in answer order: nums
 * (sequence numbers or UIDs, as answered), their uids and modseqs.  With
 * RETURN it is ESEARCH's (SAVE keeping the result for "$", UPDATE asking
 * update(cmd), which returns <0 when no context could be added: then
 * NOUPDATE), else "* <name> n..." with (MODSEQ m) when the search used
 * MODSEQ. */
void imap_search_run_reply(struct imap_cmd *cmd, const char *name,
			   const struct imap_esearch_return *ret, bool with_modseq,
			   const uint32_t *nums, const uint32_t *uids, const uint64_t *modseqs,
			   size_t n, int (*update)(struct imap_cmd *cmd));

#endif
