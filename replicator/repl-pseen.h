/* Private \Seen changes at the change seam (SPEC.md 7.7 "Changing a
 * record"): a STORE whose stor_store names seen_of. */
#ifndef REPLICATOR_REPL_PSEEN_H
#define REPLICATOR_REPL_PSEEN_H

#include "protocol/protocol.h"
#include "storage/storage.h"

/* Applies a STORE of user req->seen_of where the mailbox is mastered:
 * \Seen in it changes that user's records of the messages (one modseq),
 * every other flag the messages (the next modseq; REPLACE keeps the
 * message's own \Seen).  UNCHANGEDSINCE compares with the user's view of
 * each message's modseq; refused UIDs go to *failed_r.  *changed_r gets
 * every message whose record or flags changed, in the user's view, in UID
 * order.  0 or -1 (error_r); changes made before an error stay. */
int repl_pseen_store_apply(struct stor_db *db, const struct guid *mailbox, const uint32_t *uids,
			   size_t count, const struct stor_store *req, stor_msg_list *changed_r,
			   stor_uid_list *failed_r, const char **error_r);

/* What to answer a peer's PSEEN: status "OK", "NO" or "BAD", a response
 * code (NULL for none) and a text, all static. */
struct repl_pseen_reply {
	const char *status, *code, *text;
	bool changed; /* the record here changed: sessions are told */
	/* Refused ("NO", no code): the record would change here at a
	 * modseq this copy may have spent itself; the caller answers
	 * NO [HIGHESTMODSEQ h] (SPEC.md 10.3 "A change from the master"). */
	bool spent;
	uint64_t modseq; /* the line's */
};

/* Whether a change from the master at modseq may be written at it here. */
typedef bool repl_pseen_fits_fn(void *ctx, uint64_t modseq);

/* A record streamed by the mailbox's master (PSEEN ... ORIGIN, SPEC.md
 * 7.7 "Streaming"), applied as a replica applies it: when the record here
 * is older, unless the one here has a later time; a GUID this mailbox does
 * not hold is kept.  A record that would change here at a modseq fits
 * refuses is not written (reply_r->spent).  Malformed lines are BAD
 * [ARGS], nothing changed. */
void repl_pseen_apply_streamed(struct stor_db *db, const struct guid *mailbox,
			       const struct proto_cmd *cmd, repl_pseen_fits_fn *fits, void *ctx,
			       struct repl_pseen_reply *reply_r);

/* A forwarded STORE with SEEN-OF was done at the master: its FLAGS lines
 * (the user's view of each message) move from *lines to *changed_r, but
 * those of the UIDs the master refused (UNCHANGEDSINCE); *lines is left
 * empty. */
void repl_pseen_forwarded_view(stor_msg_list *lines, const stor_uid_list *refused,
			       stor_msg_list *changed_r);

#endif
