/* Messages: append (master or replica) and copy, each one transaction. */
#include "storage/storage-msg-private.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/mail-limits.h"
#include "lib/xalloc.h"

struct append_args {
	uint32_t uid;
	uint64_t modseq;
	struct guid guid;
	bool guid_generated;        /* just made up: no text can exist yet */
	uint32_t flags;
	stor_string_list keywords;  /* normalised, owned by the caller */
	int64_t internaldate;
	int32_t internaldate_tz;
	const void *text;
	size_t text_len;
	bool stamps_given;
	const struct stor_stamp *stamps;
	size_t stamp_count;
};

/* Adds a message to txn.  Returns 1 when added, 0 when it was already
 * there (idempotent replay; uid_r and modseq_r get the existing values), -1
 * on error. */
static int append_txn(struct stor_txn *txn, const struct guid *mailbox, const struct append_args *a,
		      uint32_t *uid_r, uint64_t *modseq_r, const char **error_r)
{
	struct stor_db *db = txn->db;
	struct stor_txn_mailbox *tm;
	struct stor_msg existing;
	struct stor_tombstone tomb;

	int ret = stor_txn_mailbox(txn, mailbox, &tm, error_r);
	if (ret <= 0)
		return ret < 0 ? -1 : mailbox_missing(db, error_r);
	struct stor_mailbox *mb = &tm->mb;

	uint32_t uid = a->uid;
	if (uid == 0) {
		if (mb->uidnext > MAIL_UID_ASSIGN_MAX)
			return stor_err_kind(db, STOR_ERROR_LIMIT, error_r,
					     "mailbox has run out of UIDs");
		uid = mb->uidnext;
	} else if (!mail_uid_valid(uid)) {
		return stor_err(db, error_r, "UID %u is out of range", uid);
	} else {
		ret = stor_msg_get(db, mailbox, uid, &existing, error_r);
		if (ret < 0)
			return -1;
		if (ret > 0) {
			bool same = guid_cmp(&existing.guid, &a->guid) == 0;
			uint64_t modseq = existing.modseq;
			stor_msg_free(&existing);
			if (!same)
				return stor_err(db, error_r, "UID %u is already used by another message",
						uid);
			if (uid_r != NULL)
				*uid_r = uid;
			if (modseq_r != NULL)
				*modseq_r = modseq;
			return 0;
		}
		ret = tomb_get(db, mailbox, uid, &tomb, error_r);
		if (ret < 0)
			return -1;
		if (ret > 0) {
			if (guid_cmp(&tomb.guid, &a->guid) != 0)
				return stor_err(db, error_r,
						"UID %u was used by an expunged message", uid);
			/* A late replay of an append that was expunged since:
			 * don't resurrect it. */
			if (uid_r != NULL)
				*uid_r = uid;
			if (modseq_r != NULL)
				*modseq_r = tomb.modseq;
			return 0;
		}
		/* A user expunged this GUID from the mailbox (under any
		 * UID, maybe on another node) and no copy of it is left
		 * here: a copy that reaches a replica now is one the
		 * expunge missed, and stays out (SPEC.md 10.3 "GUID
		 * tombstones").  A master storing a GUID (uid 0) is a new
		 * message and clears it below. */
		uint64_t gone_at;
		uint32_t held_at;
		ret = a->guid_generated ? 0 : stor_guid_tomb_get(db, mailbox, &a->guid, &gone_at,
								error_r);
		if (ret > 0) {
			ret = stor_msg_find_guid(db, mailbox, &a->guid, &held_at, error_r);
			ret = ret < 0 ? -1 : ret == 0;
		}
		if (ret < 0)
			return -1;
		if (ret > 0) {
			if (uid_r != NULL)
				*uid_r = uid;
			if (modseq_r != NULL)
				*modseq_r = gone_at;
			return 0;
		}
	}

	if (modseq_room(db, mb, a->modseq, error_r) < 0 ||
	    (!a->guid_generated && stor_pseen_enter_txn(txn, tm, mailbox, &a->guid, error_r) < 0))
		return -1;
	struct stor_text_rec rec;
	ret = a->guid_generated ? 0 : stor_text_rec_get(db, &a->guid, &rec, error_r);
	if (ret < 0)
		return -1;
	uint64_t size;
	if (ret > 0) {
		/* The node already holds this text (a copy, or streamed in
		 * by stor_text_*): share it. */
		size = rec.size;
	} else if (a->text != NULL) {
		if (a->text_len > db->max_message_size)
			return stor_err_kind(db, STOR_ERROR_TOOBIG, error_r,
					     "message too large (%zu bytes, limit %llu)", a->text_len,
					     (unsigned long long)db->max_message_size);
		if (stor_text_put(db, txn, &a->guid, a->text, a->text_len, error_r) < 0)
			return -1;
		size = a->text_len;
	} else {
		char hex[GUID_HEX_SIZE];
		guid_to_hex(&a->guid, hex);
		return stor_err(db, error_r, "text of message %s is not in the store", hex);
	}
	stor_txn_text_ref(txn, &a->guid, 1);

	uint64_t assigned = 0;
	struct stor_msg msg;
	memset(&msg, 0, sizeof(msg));
	msg.uid = uid;
	msg.guid = a->guid;
	msg.modseq = call_modseq(mb, a->modseq, &assigned);
	msg.flags = a->flags & STOR_FLAGS_ALL;
	msg.keywords = a->keywords;
	msg.internaldate = a->internaldate;
	msg.internaldate_tz = a->internaldate_tz;
	msg.size = size;
	if (a->stamps_given) {
		/* The sender's view of when each flag changed; here they all
		 * changed with this message. */
		for (size_t i = 0; i < a->stamp_count; i++)
			stamp_set(&msg.stamps, a->stamps[i].name, msg.modseq, a->stamps[i].time_ms);
		stamps_bound(&msg);
	} else {
		stor_string_list none = ARRAY_INIT;
		stamps_update(&msg, 0, &none, 0, stor_now_ms(), NULL, 0);
	}
	msg_put(txn, mailbox, &msg);
	stor_guid_tomb_clear_txn(txn, mailbox, &msg.guid);
	mailbox_account(mb, &msg, 1);
	stor_stamp_list_free(&msg.stamps);
	if (uid >= mb->uidnext)
		mb->uidnext = uid + 1;
	tm->dirty = true;
	if (uid_r != NULL)
		*uid_r = uid;
	if (modseq_r != NULL)
		*modseq_r = msg.modseq;
	return 1;
}

int stor_msg_append(struct stor_db *db, const struct guid *mailbox,
		    const struct stor_append *req, uint32_t *uid_r, uint64_t *modseq_r,
		    const char **error_r)
{
	struct append_args a;
	struct stor_txn txn;
	memset(&a, 0, sizeof(a));
	if (req->text != NULL && req->text_len > db->max_message_size)
		return stor_err_kind(db, STOR_ERROR_TOOBIG, error_r,
				     "message too large (%zu bytes, limit %llu)", req->text_len,
				     (unsigned long long)db->max_message_size);
	if (req->guid != NULL && guid_is_zero(req->guid))
		return stor_err(db, error_r, "message GUID is zero");
	if (stor_keywords_normalize(db, req->keywords, req->keyword_count, &a.keywords,
				    error_r) < 0)
		return -1;
	a.uid = req->uid;
	a.modseq = req->modseq;
	if (req->guid != NULL)
		a.guid = *req->guid;
	else {
		guid_generate(&a.guid);
		a.guid_generated = true;
	}
	a.flags = req->flags;
	a.internaldate = req->internaldate;
	a.internaldate_tz = req->internaldate_tz;
	a.text = req->text;
	a.text_len = req->text_len;
	if (req->stamps_given) {
		if (req->stamp_count > STOR_MAX_STAMPS) {
			stor_string_list_free(&a.keywords);
			return stor_err(db, error_r, "too many flag stamps");
		}
		for (size_t i = 0; i < req->stamp_count; i++) {
			size_t n = strlen(req->stamps[i].name);
			if (n == 0 || n > STOR_MAX_KEYWORD_LEN || req->stamps[i].time_ms < 0) {
				stor_string_list_free(&a.keywords);
				return stor_err(db, error_r, "invalid flag stamp");
			}
		}
		a.stamps_given = true;
		a.stamps = req->stamps;
		a.stamp_count = req->stamp_count;
	}

	stor_txn_begin(db, &txn);
	int ret = append_txn(&txn, mailbox, &a, uid_r, modseq_r, error_r);
	if (ret > 0)
		ret = stor_txn_commit(&txn, error_r);
	else
		stor_txn_free(&txn);
	stor_string_list_free(&a.keywords);
	return ret < 0 ? -1 : 0;
}

int stor_msg_copy(struct stor_db *db, const struct guid *src_mailbox, uint32_t src_uid,
		  const struct guid *dst_mailbox, uint32_t dst_uid, uint64_t dst_modseq,
		  uint32_t *uid_r, uint64_t *modseq_r, const char **error_r)
{
	struct stor_msg src;
	struct stor_txn txn;
	int ret = stor_msg_get(db, src_mailbox, src_uid, &src, error_r);
	if (ret <= 0)
		return ret < 0 ? -1 : stor_err(db, error_r, "source message does not exist");
	struct append_args a;
	memset(&a, 0, sizeof(a));
	a.uid = dst_uid;
	a.modseq = dst_modseq;
	a.guid = src.guid;
	a.flags = src.flags;
	a.keywords = src.keywords;
	a.internaldate = src.internaldate;
	a.internaldate_tz = src.internaldate_tz;
	stor_txn_begin(db, &txn);
	ret = append_txn(&txn, dst_mailbox, &a, uid_r, modseq_r, error_r);
	if (ret > 0)
		ret = stor_txn_commit(&txn, error_r);
	else
		stor_txn_free(&txn);
	stor_msg_free(&src);
	return ret < 0 ? -1 : 0;
}
