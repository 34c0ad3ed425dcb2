/* Read barriers for IMAP commands (replicator/repl.h repl_read_barrier()):
 * a command that shows a mailbox's state (SELECT, EXAMINE, STATUS,
 * LIST-STATUS), or names a modseq above this node's (CHANGEDSINCE,
 * UNCHANGEDSINCE), first lets the replicator make this node's copy at
 * least as new as the master's.  The session does not block the loop: the
 * command is suspended (cmd->waiting) and its handler runs again from the
 * start once the barrier completes, with cmd->barrier_passed set, so the
 * second run reads storage at once.  Whatever the handler allocated in
 * cmd->ctx on the first run is freed before the second. */
#ifndef IMAP_IMAP_BARRIER_H
#define IMAP_IMAP_BARRIER_H

#include "imap/imap-private.h"

/* True: read now.  False: suspended; the handler returns false and again
 * is called later (or the command is ended, if the client went away). */
bool imap_read_barrier(struct imap_cmd *cmd, imap_cmd_func *again, const struct guid *mailbox);
/* The same for several mailboxes at once (LIST-STATUS): one wait for all. */
bool imap_read_barrier_many(struct imap_cmd *cmd, imap_cmd_func *again,
			    const struct guid *mailboxes, size_t count);
/* Only when modseq is above this node's HIGHESTMODSEQ of the mailbox: a
 * client that saw a newer state elsewhere (CHANGEDSINCE, UNCHANGEDSINCE). */
bool imap_read_barrier_modseq(struct imap_cmd *cmd, imap_cmd_func *again,
			      const struct guid *mailbox, uint64_t modseq);

#endif
