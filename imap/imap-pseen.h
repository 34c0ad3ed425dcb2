/* Private \Seen in sessions (imap-pseen.c). */
#ifndef IMAP_IMAP_PSEEN_H
#define IMAP_IMAP_PSEEN_H

#include <stdbool.h>

#include "storage/storage.h"

struct imap_client;

/* Whether \Seen is private for this session on a mailbox of owner. */
bool imap_pseen_for(const struct imap_client *c, const char *owner);
/* The same for the selected mailbox (false when none). */
bool imap_pseen_sel(const struct imap_client *c);
/* Turns messages of owner's mailbox (or the selected one's) into the
 * session's view, in place; nothing when \Seen is not private there. */
void imap_pseen_view_for(struct imap_client *c, const char *owner, const struct guid *mailbox,
			 struct stor_msg *msgs, size_t count);
void imap_pseen_view(struct imap_client *c, const struct guid *mailbox, struct stor_msg *msgs,
		     size_t count);
/* msgs came from stor_changes_since(since) of the selected mailbox:
 * views them and adds, in UID order, the messages whose record of the
 * session's user changed above since.  0 or -1. */
int imap_pseen_changes(struct imap_client *c, const struct guid *mailbox, uint64_t since,
		       stor_msg_list *msgs, const char **error_r);
/* STATUS UNSEEN of mb for the session. */
uint32_t imap_pseen_unseen(struct imap_client *c, const struct stor_mailbox *mb);

#endif
