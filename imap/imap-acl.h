/* IMAP ACLs (RFC 4314) for the session: the rights of the logged-in user
 * on a mailbox, names in the other users' namespace "shared/OWNER/NAME",
 * the listing of what is shared with the user (from the sharing index,
 * SPEC.md 7.6), and the commands MYRIGHTS, GETACL, SETACL, DELETEACL and
 * LISTRIGHTS (cmd-acl.c). */
#ifndef IMAP_IMAP_ACL_H
#define IMAP_IMAP_ACL_H

#include "imap/imap-private.h"
#include "storage/acl-rights.h"

/* The other users' namespace (RFC 2342): "shared/OWNER/NAME". */
#define IMAP_SHARED_PREFIX "shared/"
#define IMAP_SHARED_PREFIX_LEN (sizeof(IMAP_SHARED_PREFIX) - 1)
/* The shared (public) namespace: "Public/NAME", mailboxes of
 * ACL_PUBLIC_OWNER that an admin creates. */
#define IMAP_PUBLIC_PREFIX "Public/"
#define IMAP_PUBLIC_PREFIX_LEN (sizeof(IMAP_PUBLIC_PREFIX) - 1)

/* Whether a stored-form name lies in the other users' or the public
 * namespace (or is the root "shared" or "Public"). */
bool imap_acl_is_shared_name(const char *name);

/* The rights of the session's user on owner's mailbox g.  -1 on a store
 * error. */
int imap_acl_rights(struct imap_client *c, const char *owner, const struct guid *g,
		    uint32_t *rights_r, const char **error_r);

/* Looks a stored-form mailbox name up as the session sees it: one of the
 * user's own mailboxes, "shared/OWNER/NAME" or "Public/NAME".  1: found and the user has
 * some right on it (*mb_r with user = the owner and name = the session's
 * name for it; *rights_r); 0: no such mailbox, or one the user has no
 * right on (the two look the same); -1 store error. */
int imap_acl_mailbox_get(struct imap_client *c, const char *name, struct stor_mailbox *mb_r,
			 uint32_t *rights_r, const char **error_r);

/* Finishes cmd with the refusal for a command that needs right (one
 * ACL_* bit) the user lacks: NO [NOPERM] when the user may see the
 * mailbox ("l"), else notfound (e.g. "[NONEXISTENT] Mailbox does not
 * exist"), so that nobody learns of a mailbox they may not see. */
bool imap_acl_refuse(struct imap_cmd *cmd, uint32_t rights, uint32_t right, const char *notfound);

/* The session user's rights on their own mailbox g, 0 on a store error
 * (logged). */
uint32_t imap_acl_own_rights(struct imap_client *c, const struct guid *g);
/* The session user's rights on the nearest existing superior of their own
 * mailbox name (CREATE, RENAME: "k" there), or, when it has none, on the
 * root of their personal namespace: the owner's default, acl_owner_rights. */
uint32_t imap_acl_own_parent_rights(struct imap_client *c, const char *name);

/* The user's current rights on the selected mailbox: read again at every
 * command, so that a change made on another node applies as soon as it
 * arrived.  0 on a store error (logged). */
uint32_t imap_acl_sel_rights(struct imap_client *c);

/* Before a command of the selected state: false after refusing it when
 * the user no longer has "r" on the selected mailbox (taken away since
 * SELECT, maybe on another node); CLOSE, UNSELECT, CHECK and CANCELUPDATE
 * always run. */
bool imap_acl_selected_ok(struct imap_cmd *cmd);

/* Appends to mbs the mailboxes other users shared with the session's user
 * that the user may see ("l"), named "shared/OWNER/NAME" (or "Public/NAME"
 * for public ones), from the
 * sharing index: the entries of the user, "anyone" and "authenticated",
 * never a scan of every user. */
int imap_acl_list_shared(struct imap_client *c, stor_mailbox_array *mbs, const char **error_r);

/* cmd-acl.c */
bool imap_cmd_myrights(struct imap_cmd *cmd);
bool imap_cmd_getacl(struct imap_cmd *cmd);
bool imap_cmd_setacl(struct imap_cmd *cmd);
bool imap_cmd_deleteacl(struct imap_cmd *cmd);
bool imap_cmd_listrights(struct imap_cmd *cmd);
/* CREATE and DELETE of a name in shared/OWNER/ or Public/ (name is
 * taken): CREATE needs "k" on the parent, which must exist (nothing at
 * the top of those namespaces), and gives the new mailbox its parent's
 * ACL; DELETE needs "x". */
bool imap_acl_create_shared(struct imap_cmd *cmd, char *name);
bool imap_acl_delete_shared(struct imap_cmd *cmd, char *name);

#endif
