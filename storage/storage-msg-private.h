/* Shared by the files of messages (storage-msg*.c): the record helpers of
 * storage-msg.c and the flag stamps of storage-msg-stamps.c.  Only those
 * files include it. */
#ifndef STORAGE_STORAGE_MSG_PRIVATE_H
#define STORAGE_STORAGE_MSG_PRIVATE_H

#include <stdbool.h>
#include <stdint.h>

#include "storage/storage-private.h"

/* storage-msg.c */
/* Removes (sign < 0) or adds (sign > 0) a message's share of the mailbox's
 * counters and digest. */
void mailbox_account(struct stor_mailbox *mb, const struct stor_msg *msg, int sign);
/* Writes the message record and its index entries. */
void msg_put(struct stor_txn *txn, const struct guid *mailbox, const struct stor_msg *msg);
/* Deletes the message record and its index entries. */
void msg_del(struct stor_txn *txn, const struct guid *mailbox, const struct stor_msg *msg);
void tomb_put(struct stor_txn *txn, const struct guid *mailbox,
	      const struct stor_tombstone *t);
/* The tombstone at uid: 1, 0, -1. */
int tomb_get(struct stor_db *db, const struct guid *mailbox, uint32_t uid,
	     struct stor_tombstone *t_r, const char **error_r);
/* The UIDs sorted, without duplicates or 0 (a new array). */
uint32_t *uids_unique(const uint32_t *uids, size_t count, size_t *count_r);
int mailbox_missing(struct stor_db *db, const char **error_r);
/* A call that changes messages refuses a given modseq out of range, and
 * one to assign when the mailbox has used them all, before it changes
 * anything: the store never holds a modseq past MAIL_MODSEQ_MAX. */
int modseq_room(struct stor_db *db, const struct stor_mailbox *mb, uint64_t given,
		const char **error_r);
/* Begins the transaction of a call that changes messages of mailbox with
 * modseq (0: one is assigned): *tm_r gets the mailbox.  A mailbox that is
 * missing or out of modseqs is -1 with *error_r; the caller frees txn
 * either way. */
int msg_txn_begin(struct stor_db *db, struct stor_txn *txn, const struct guid *mailbox,
		  uint64_t modseq, struct stor_txn_mailbox **tm_r, const char **error_r);
/* The next modseq of a call: the given one, or one above the mailbox's
 * highest, assigned once per call (modseq_room() checked it first). */
uint64_t call_modseq(struct stor_mailbox *mb, uint64_t given, uint64_t *assigned);

/* storage-msg-stamps.c */
void stamp_set(stor_stamp_list *l, const char *name, uint64_t modseq, int64_t time_ms);
/* Keeps the list within STOR_MAX_STAMPS: the oldest stamps of keywords the
 * message no longer holds go first (set flags always keep theirs). */
void stamps_bound(struct stor_msg *msg);
/* Stamps every flag whose value differs between (oflags, okw) and msg's
 * with (msg->modseq, time_ms or now); then gives the flags named in given
 * their time (a merge's decision, or the change a peer sends), keeping the
 * modseq of those that did not change.  given's own modseqs are the
 * sender's and are not kept. */
void stamps_update(struct stor_msg *msg, uint32_t oflags, const stor_string_list *okw,
		   int64_t time_ms, int64_t now_ms, const struct stor_stamp *given,
		   size_t given_count);
/* A user's STORE acts on every flag it names, also on those whose value
 * stays (SPEC.md 10.2): +FLAGS/-FLAGS the listed ones, FLAGS every system
 * flag and every keyword of the old or the new set.  Each gets this
 * change's stamp unless the value change just gave it one. */
bool store_names_flags(const struct stor_store *req, const stor_string_list *req_kw);
void stamp_named(struct stor_msg *msg, const struct stor_store *req,
		 const stor_string_list *req_kw, const stor_string_list *okw,
		 int64_t now_ms);

#endif
