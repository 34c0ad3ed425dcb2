/* Private \Seen records (SPEC.md 7.7): per (mailbox, message GUID, user),
 * whether that user has seen the message, with the modseq of the record's
 * last change (from the mailbox's modseq sequence) and the wall-clock time
 * of the user's change.  They belong to the owner's mailbox: they are
 * deleted with it, and a user's expunge of a message takes every user's
 * records of its GUID along in the same batch.  The engine's moves and
 * drops (a renumbered message, a duplicate copy dropped) keep them.
 *
 * Beside them the store keeps, per (mailbox, user), how many messages the
 * mailbox holds with that user's record at seen 1 (STATUS UNSEEN without a
 * scan), and it XORs a hash of (user, GUID) of each such record into the
 * mailbox's digest, so that two nodes compare equal exactly when they also
 * hold the same records.  A mailbox without records keeps the digest it
 * had before records existed.
 *
 * Nothing here decides who sees what: that is the caller's (shared_seen,
 * the owner, public mailboxes). */
#ifndef STORAGE_STORAGE_PSEEN_H
#define STORAGE_STORAGE_PSEEN_H

#include "storage/storage.h"

/* A user's records per message are bounded by the wire (SPEC.md 7.7), not
 * here; a user name is 1..STOR_MAX_USER_LEN bytes without NUL or '\0'. */
struct stor_pseen {
	struct guid guid;  /* the message */
	char *user;        /* owned */
	bool seen;
	uint64_t modseq;
	int64_t time_ms;
};
typedef ARRAY(struct stor_pseen) stor_pseen_list;
void stor_pseen_list_free(stor_pseen_list *list);

enum stor_pseen_mode {
	/* A change made here, on the mailbox's master or a node that makes
	 * changes autonomously: one new modseq (HIGHESTMODSEQ+1) for the whole
	 * call and the time now, made later than the record it replaces;
	 * every record named is written, also one whose value stays (a user's
	 * change of a flag, as STORE stamps flags it names).  GUIDs the
	 * mailbox does not hold are skipped (a master refuses them). */
	STOR_PSEEN_LOCAL,
	/* A master's change applied by a replica: each change with its own
	 * modseq (required) and time.  Applied when the record here is older
	 * (a lower modseq), unless the record here has a later time (changed
	 * here while the two were apart: the later change wins).  GUIDs the
	 * mailbox does not hold are kept (the SAVE may be on its way).
	 * HIGHESTMODSEQ rises to each modseq. */
	STOR_PSEEN_REPLICA,
	/* A merge's decision (sync, bundle): written with the given modseq
	 * and time when it differs from the record here. */
	STOR_PSEEN_MERGE,
};

struct stor_pseen_change {
	struct guid guid;
	bool seen;
	uint64_t modseq;   /* LOCAL: ignored */
	int64_t time_ms;   /* LOCAL: ignored */
};

/* Writes a user's records of the mailbox in one batch.  *modseq_r (may be
 * NULL) gets the modseq a LOCAL call assigned (0 when it wrote nothing).
 * The records written are appended to *changed_r (may be NULL).  Fails
 * (nothing written) on a bad user name, a zero GUID, a modseq out of range
 * or a mailbox that does not exist. */
int stor_pseen_put(struct stor_db *db, const struct guid *mailbox, const char *user,
		   enum stor_pseen_mode mode, const struct stor_pseen_change *changes,
		   size_t count, uint64_t *modseq_r, stor_pseen_list *changed_r,
		   const char **error_r);

/* One record: 1 (r->user is NULL: the caller knows it), 0 none, -1. */
int stor_pseen_get(struct stor_db *db, const struct guid *mailbox, const struct guid *guid,
		   const char *user, struct stor_pseen *r, const char **error_r);
/* The user's seen (0 or 1) of a message: 1 only with a record at seen 1. */
int stor_pseen_seen(struct stor_db *db, const struct guid *mailbox, const struct guid *guid,
		    const char *user, bool *seen_r, const char **error_r);
/* How many messages the mailbox holds with the user's record at seen 1. */
int stor_pseen_count(struct stor_db *db, const struct guid *mailbox, const char *user,
		     uint32_t *count_r, const char **error_r);
/* Records whose modseq is above since, in modseq order (then GUID, user).
 * *list_r is set to a new array. */
int stor_pseen_since(struct stor_db *db, const struct guid *mailbox, uint64_t since,
		     stor_pseen_list *list_r, const char **error_r);
/* Every record of the mailbox, by (GUID, user). */
int stor_pseen_all(struct stor_db *db, const struct guid *mailbox, stor_pseen_list *list_r,
		   const char **error_r);
/* Drops every user's records of these GUIDs that the mailbox does not hold
 * (a resync: those whose GUID has a GUID tombstone).  *dropped_r: how
 * many. */
int stor_pseen_drop(struct stor_db *db, const struct guid *mailbox, const struct guid *guids,
		    size_t count, size_t *dropped_r, const char **error_r);

/* The user's view of a message (SPEC.md 7.7 "What a session sees"): its
 * own flags without \Seen, plus \Seen when the user's record says 1, and
 * the higher of its modseq and the record's.  0 or -1. */
int stor_pseen_view(struct stor_db *db, const struct guid *mailbox, const char *user,
		    struct stor_msg *msg, const char **error_r);

/* The digest share of one record at seen 1. */
void stor_pseen_hash(const char *user, const struct guid *guid, unsigned char out[16]);

#endif
