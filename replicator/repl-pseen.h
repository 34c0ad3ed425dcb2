/* Private \Seen changes at the change seam (SPEC.md 7.7 "Changing a
 * record"): a STORE whose stor_store names seen_of. */
#ifndef REPLICATOR_REPL_PSEEN_H
#define REPLICATOR_REPL_PSEEN_H

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

#endif
