/* Messages: flag changes (stor_msg_store), with their stamps and the
 * rule that a later local change of a flag wins over a given one. */
#include "storage/storage-msg-private.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/mail-limits.h"
#include "lib/xalloc.h"

static bool keywords_equal(const stor_string_list *a, const stor_string_list *b)
{
	if (a->count != b->count)
		return false;
	for (size_t i = 0; i < a->count; i++) {
		if (strcmp(a->items[i], b->items[i]) != 0)
			return false;
	}
	return true;
}

/* The new keyword list of a message under the operation. */
static int keywords_apply(struct stor_db *db, const stor_string_list *cur, enum stor_flag_op op,
			  const stor_string_list *req, stor_string_list *out, const char **error_r)
{
	ARRAY(const char *) all = ARRAY_INIT;
	switch (op) {
	case STOR_FLAGS_REPLACE:
		for (size_t i = 0; i < req->count; i++)
			ARRAY_PUSH(&all, req->items[i]);
		break;
	case STOR_FLAGS_ADD:
		/* Existing spellings come first, so they win. */
		for (size_t i = 0; i < cur->count; i++)
			ARRAY_PUSH(&all, cur->items[i]);
		for (size_t i = 0; i < req->count; i++)
			ARRAY_PUSH(&all, req->items[i]);
		break;
	case STOR_FLAGS_REMOVE:
		for (size_t i = 0; i < cur->count; i++) {
			if (!stor_keywords_have(req, cur->items[i]))
				ARRAY_PUSH(&all, cur->items[i]);
		}
		break;
	}
	int ret = stor_keywords_normalize(db, all.items, all.count, out, error_r);
	ARRAY_FREE(&all);
	return ret;
}

typedef ARRAY(struct stor_stamp) stamp_refs; /* names borrowed */

static void given_drop(stamp_refs *given, const char *name)
{
	for (size_t i = 0; i < given->count; i++) {
		if (strcasecmp(given->items[i].name, name) == 0) {
			given->items[i] = given->items[given->count - 1];
			given->count--;
			return;
		}
	}
}

static bool local_is_later(const struct stor_msg *msg, const stamp_refs *given, const char *name)
{
	uint64_t lm;
	int64_t lt;
	stor_msg_stamp(msg, name, &lm, &lt);
	const struct stor_stamp *all = NULL;
	int64_t gt = 0;
	bool found = false;
	for (size_t i = 0; i < given->count && !found; i++) {
		if (strcasecmp(given->items[i].name, name) == 0) {
			gt = given->items[i].time_ms;
			found = true;
		} else if (strcmp(given->items[i].name, STOR_STAMP_ALL) == 0) {
			all = &given->items[i];
		}
	}
	if (!found && all != NULL)
		gt = all->time_ms;
	return lt > gt;
}

/* A replica applying a peer's whole flag state (storage.h
 * keep_later_local): a flag whose value here differs and whose change here
 * is later than the peer's keeps its value and stamp. */
static void keep_later_local(const struct stor_msg *msg, uint32_t *nflags, stor_string_list *nkw,
			     stamp_refs *given)
{
	for (uint32_t bit = 1; bit <= STOR_FLAG_DRAFT; bit <<= 1) {
		const char *name = stor_flag_name((enum stor_flag)bit);
		if (((msg->flags ^ *nflags) & bit) != 0 && local_is_later(msg, given, name)) {
			*nflags = (*nflags & ~bit) | (msg->flags & bit);
			given_drop(given, name);
		}
	}
	for (size_t i = 0; i < nkw->count;) {
		if (!stor_msg_has_keyword(msg, nkw->items[i]) &&
		    local_is_later(msg, given, nkw->items[i])) {
			given_drop(given, nkw->items[i]);
			free(nkw->items[i]);
			nkw->items[i] = nkw->items[nkw->count - 1];
			nkw->count--;
			continue;
		}
		i++;
	}
	for (size_t i = 0; i < msg->keywords.count; i++) {
		const char *kw = msg->keywords.items[i];
		if (!stor_keywords_have(nkw, kw) && local_is_later(msg, given, kw) &&
		    nkw->count < STOR_MAX_KEYWORDS) {
			given_drop(given, kw);
			ARRAY_PUSH(nkw, xstrdup(kw));
		}
	}
	if (nkw->count > 1)
		qsort(nkw->items, nkw->count, sizeof(nkw->items[0]), stor_kw_cmp);
}

int stor_msg_store(struct stor_db *db, const struct guid *mailbox, const uint32_t *uids,
		   size_t uid_count, const struct stor_store *req, stor_msg_list *changed_r,
		   stor_uid_list *failed_r, const char **error_r)
{
	struct stor_txn txn;
	struct stor_txn_mailbox *tm;
	stor_string_list req_kw;
	stor_msg_list changed = ARRAY_INIT;
	stor_uid_list failed = ARRAY_INIT;

	if (req->op != STOR_FLAGS_REPLACE && req->op != STOR_FLAGS_ADD &&
	    req->op != STOR_FLAGS_REMOVE)
		return stor_err(db, error_r, "invalid flag operation");
	if (stor_keywords_normalize(db, req->keywords, req->keyword_count, &req_kw, error_r) < 0)
		return -1;
	size_t nuids;
	uint32_t *sorted = uids_unique(uids, uid_count, &nuids);
	int ret = msg_txn_begin(db, &txn, mailbox, req->modseq, &tm, error_r);
	if (ret < 0)
		goto cleanup;
	uint64_t assigned = 0;
	uint32_t rflags = req->flags & STOR_FLAGS_ALL;
	bool names_flags = store_names_flags(req, &req_kw);
	int64_t now_ms = stor_now_ms();
	for (size_t i = 0; i < nuids; i++) {
		struct stor_msg msg;
		int r = stor_msg_get(db, mailbox, sorted[i], &msg, error_r);
		if (r < 0) {
			ret = -1;
			goto cleanup;
		}
		if (r == 0)
			continue;
		if (req->unchangedsince != 0 && msg.modseq > req->unchangedsince) {
			ARRAY_PUSH(&failed, msg.uid);
			stor_msg_free(&msg);
			continue;
		}
		if (req->modseq != 0 && (req->modseq < msg.modseq ||
					 (req->modseq == msg.modseq && !req->same_modseq))) {
			/* An older change never overwrites a newer one. */
			stor_msg_free(&msg);
			continue;
		}
		uint32_t nflags = msg.flags;
		switch (req->op) {
		case STOR_FLAGS_REPLACE:
			nflags = (rflags & ~req->keep_flags) | (msg.flags & req->keep_flags);
			break;
		case STOR_FLAGS_ADD: nflags |= rflags; break;
		case STOR_FLAGS_REMOVE: nflags &= ~rflags; break;
		}
		stor_string_list nkw;
		if (keywords_apply(db, &msg.keywords, req->op, &req_kw, &nkw, error_r) < 0) {
			stor_msg_free(&msg);
			ret = -1;
			goto cleanup;
		}
		/* The given stamps, less those of flags kept as they are here. */
		stamp_refs given = ARRAY_INIT;
		for (size_t g = 0; g < req->stamp_count; g++)
			ARRAY_PUSH(&given, req->stamps[g]);
		if (req->keep_later_local)
			keep_later_local(&msg, &nflags, &nkw, &given);
		/* A change made here (modseq 0) that names no flag changes
		 * nothing and keeps the modseq; one that names a flag is a
		 * change of that flag even when its value stays (SPEC.md
		 * 10.2): it needs a modseq so that replication and syncs see
		 * it.  A replica adopts the master's newer modseq anyway, so
		 * that modseqs converge. */
		if (nflags == msg.flags && keywords_equal(&nkw, &msg.keywords) &&
		    req->modseq == 0 && !names_flags) {
			ARRAY_FREE(&given);
			stor_string_list_free(&nkw);
			stor_msg_free(&msg);
			continue;
		}
		msg_del(&txn, mailbox, &msg);
		mailbox_account(&tm->mb, &msg, -1);
		uint32_t oflags = msg.flags;
		stor_string_list okw = msg.keywords;
		msg.keywords = nkw;
		msg.flags = nflags;
		msg.modseq = call_modseq(&tm->mb, req->modseq, &assigned);
		stamps_update(&msg, oflags, &okw, req->time_ms, now_ms, given.items, given.count);
		if (req->modseq == 0 && names_flags)
			stamp_named(&msg, req, &req_kw, &okw, now_ms);
		ARRAY_FREE(&given);
		stor_string_list_free(&okw);
		msg_put(&txn, mailbox, &msg);
		mailbox_account(&tm->mb, &msg, 1);
		tm->dirty = true;
		ARRAY_PUSH(&changed, msg);
	}
	if (tm->dirty)
		ret = stor_txn_commit(&txn, error_r);
cleanup:
	stor_txn_free(&txn);
	stor_string_list_free(&req_kw);
	free(sorted);
	if (ret == 0 && changed_r != NULL) {
		for (size_t i = 0; i < changed.count; i++)
			ARRAY_PUSH(changed_r, changed.items[i]);
		ARRAY_FREE(&changed);
	} else {
		stor_msg_list_free(&changed);
	}
	if (ret == 0 && failed_r != NULL) {
		for (size_t i = 0; i < failed.count; i++)
			ARRAY_PUSH(failed_r, failed.items[i]);
	}
	ARRAY_FREE(&failed);
	return ret;
}
