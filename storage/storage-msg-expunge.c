/* Messages: expunge with tombstones, and UID renumbering. */
#include "storage/storage-msg-private.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/mail-limits.h"
#include "lib/xalloc.h"

int stor_msg_expunge(struct stor_db *db, const struct guid *mailbox, const uint32_t *uids,
		     size_t uid_count, uint64_t modseq, stor_uid_list *expunged_r,
		     const char **error_r)
{
	return stor_msg_expunge_kind(db, mailbox, uids, uid_count, modseq, true, expunged_r,
				     error_r);
}

int stor_msg_expunge_kind(struct stor_db *db, const struct guid *mailbox, const uint32_t *uids,
			  size_t uid_count, uint64_t modseq, bool user,
			  stor_uid_list *expunged_r, const char **error_r)
{
	struct stor_txn txn;
	struct stor_txn_mailbox *tm;
	stor_uid_list done = ARRAY_INIT;
	ARRAY(struct guid) gone = ARRAY_INIT;
	stor_msg_list left = ARRAY_INIT; /* uid and guid only, for storage-pseen.c */
	uint64_t gone_modseq = 0;
	if (msg_txn_begin(db, &txn, mailbox, modseq, &tm, error_r) < 0) {
		stor_txn_free(&txn);
		return -1;
	}
	int ret = 0;
	uint64_t assigned = 0;
	size_t nuids;
	uint32_t *sorted = uids_unique(uids, uid_count, &nuids);
	for (size_t i = 0; i < nuids; i++) {
		struct stor_msg msg;
		int r = stor_msg_get(db, mailbox, sorted[i], &msg, error_r);
		if (r < 0) {
			ret = -1;
			break;
		}
		if (r == 0)
			continue;
		msg_del(&txn, mailbox, &msg);
		mailbox_account(&tm->mb, &msg, -1);
		stor_txn_text_ref(&txn, &msg.guid, -1);
		struct stor_tombstone t = {
			.uid = msg.uid, .guid = msg.guid,
			.modseq = call_modseq(&tm->mb, modseq, &assigned), .user = user,
		};
		tomb_put(&txn, mailbox, &t);
		if (user)
			ARRAY_PUSH(&gone, msg.guid);
		gone_modseq = t.modseq;
		tm->dirty = true;
		ARRAY_PUSH(&done, msg.uid);
		struct stor_msg l = { .uid = msg.uid, .guid = msg.guid };
		ARRAY_PUSH(&left, l);
		stor_msg_free(&msg);
	}
	free(sorted);
	if (ret == 0 && stor_pseen_leave_txn(&txn, tm, mailbox, left.items, left.count, user,
					     error_r) < 0)
		ret = -1;
	ARRAY_FREE(&left);
	/* A user's expunge is remembered by GUID too: the message may live
	 * on under another UID on a node that a sync renumbered it on, or
	 * reach a node that never held it from a third one (SPEC.md 10.3). */
	if (ret == 0 && gone.count > 0 &&
	    stor_guid_tombs_put_txn(&txn, mailbox, gone.items, gone.count, gone_modseq,
				    error_r) < 0)
		ret = -1;
	ARRAY_FREE(&gone);
	if (ret == 0 && tm->dirty)
		ret = stor_txn_commit(&txn, error_r);
	else
		stor_txn_free(&txn);
	if (ret == 0 && expunged_r != NULL) {
		for (size_t i = 0; i < done.count; i++)
			ARRAY_PUSH(expunged_r, done.items[i]);
	}
	ARRAY_FREE(&done);
	return ret;
}

int stor_msg_renumber(struct stor_db *db, const struct guid *mailbox, uint32_t old_uid,
		      uint32_t new_uid, uint64_t modseq, const char **error_r)
{
	struct stor_txn txn;
	struct stor_txn_mailbox *tm;
	struct stor_msg msg;
	struct stor_tombstone tomb;
	if (new_uid == 0 || new_uid == old_uid)
		return stor_err(db, error_r, "invalid new UID");
	if (!mail_uid_valid(new_uid))
		return stor_err(db, error_r, "UID %u is out of range", new_uid);
	if (msg_txn_begin(db, &txn, mailbox, modseq, &tm, error_r) < 0) {
		stor_txn_free(&txn);
		return -1;
	}
	int ret = stor_msg_get(db, mailbox, old_uid, &msg, error_r);
	if (ret <= 0) {
		stor_txn_free(&txn);
		return ret < 0 ? -1 : stor_err(db, error_r, "message does not exist");
	}
	int r1 = stor_msg_get(db, mailbox, new_uid, NULL, error_r);
	int r2 = r1 < 0 ? -1 : tomb_get(db, mailbox, new_uid, &tomb, error_r);
	if (r1 != 0 || r2 != 0) {
		stor_msg_free(&msg);
		stor_txn_free(&txn);
		return r1 < 0 || r2 < 0 ? -1 : stor_err(db, error_r, "UID %u is already used", new_uid);
	}
	uint64_t assigned = 0;
	struct stor_mailbox *mb = &tm->mb;
	msg_del(&txn, mailbox, &msg);
	mailbox_account(mb, &msg, -1);
	uint64_t ms = call_modseq(mb, modseq, &assigned);
	struct stor_tombstone t = { .uid = old_uid, .guid = msg.guid, .modseq = ms };
	tomb_put(&txn, mailbox, &t);
	msg.uid = new_uid;
	msg.modseq = ms;
	msg_put(&txn, mailbox, &msg);
	mailbox_account(mb, &msg, 1);
	if (new_uid >= mb->uidnext)
		mb->uidnext = new_uid + 1;
	tm->dirty = true;
	stor_msg_free(&msg);
	return stor_txn_commit(&txn, error_r);
}
