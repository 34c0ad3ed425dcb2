/* Mailbox ACLs in the store (SPEC.md 7.6): one record per (mailbox GUID,
 * identifier) with the owner, the rights letters ("" for a deleted
 * record, a tombstone) and the time of the change; and the sharing index,
 * derived from the records in the same batch: (grantee, owner, mailbox
 * GUID) for every positive identifier with rights, so that "what is
 * shared with me" is a prefix scan, not a scan of every user. */
#ifndef STORAGE_STORAGE_ACL_H
#define STORAGE_STORAGE_ACL_H

#include "storage/storage.h"

struct stor_acl {
	char *identifier;
	char *rights;      /* letters of ACL_LETTERS; "" for a tombstone */
	int64_t time_ms;
};
typedef ARRAY(struct stor_acl) stor_acl_list;
void stor_acl_list_free(stor_acl_list *list);

/* Stores a record when it is newer than the one held (a later time; on
 * equal times the greater rights string), keeping the sharing index in
 * step.  *applied_r (may be NULL) tells whether it was.  Identifier and
 * rights are checked (acl-rights.h): -1 with a reason when not valid. */
int stor_acl_put(struct stor_db *db, const char *owner, const struct guid *mailbox,
		 const char *identifier, const char *rights, int64_t time_ms, bool *applied_r,
		 const char **error_r);
/* The mailbox's records, tombstones included, sorted by identifier. */
int stor_acl_get(struct stor_db *db, const struct guid *mailbox, stor_acl_list *list_r,
		 const char **error_r);
/* The time a new change to (mailbox, identifier) gets: now, or just after
 * the record held when the clock is behind it. */
int stor_acl_next_time(struct stor_db *db, const struct guid *mailbox, const char *identifier,
		       int64_t *time_r, const char **error_r);

struct stor_share {
	char *owner;
	struct guid mailbox;
};
typedef ARRAY(struct stor_share) stor_share_list;
void stor_share_list_free(stor_share_list *list);
/* Mailboxes whose ACL grants grantee (a user name, "anyone" or
 * "authenticated") some positive right; appended to list_r. */
int stor_acl_shared_with(struct stor_db *db, const char *grantee, stor_share_list *list_r,
			 const char **error_r);

/* Run by stor_open(): moves a sharing index written by an older version
 * out of the GUID tombstones' key space, once per store. */
int stor_acl_index_upgrade(struct stor_db *db, const char **error_r);

/* For stor_mailbox_delete(): adds the deletes of the mailbox's records and
 * index entries to its batch. */
struct stor_batch;
int stor_acl_delete_mailbox(struct stor_db *db, struct stor_batch *wb, const char *owner,
			    const struct guid *mailbox, const char **error_r);

#endif
