/* Private \Seen changes at the change seam (repl-pseen.h). */
#include "replicator/repl-pseen.h"

#include <stdlib.h>
#include <string.h>

#include "lib/xalloc.h"
#include "storage/storage-pseen.h"

static int uid_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

int repl_pseen_store_apply(struct stor_db *db, const struct guid *mailbox, const uint32_t *uids,
			   size_t count, const struct stor_store *req, stor_msg_list *changed_r,
			   stor_uid_list *failed_r, const char **error_r)
{
	const char *user = req->seen_of;
	stor_uid_list ok = ARRAY_INIT, touched = ARRAY_INIT;
	ARRAY(struct stor_pseen_change) changes = ARRAY_INIT;
	bool names_seen = req->op == STOR_FLAGS_REPLACE || (req->flags & STOR_FLAG_SEEN) != 0;
	bool seen = req->op == STOR_FLAGS_REMOVE ? false : (req->flags & STOR_FLAG_SEEN) != 0;
	int ret = 0;
	uint32_t *sorted = xcalloc(count + 1, sizeof(*sorted));
	memcpy(sorted, uids, count * sizeof(*sorted));
	qsort(sorted, count, sizeof(*sorted), uid_cmp);
	for (size_t i = 0; i < count && ret == 0; i++) {
		if (i > 0 && sorted[i] == sorted[i - 1])
			continue;
		struct stor_msg m;
		int r = stor_msg_get(db, mailbox, sorted[i], &m, error_r);
		if (r <= 0) {
			ret = r;
			continue;
		}
		if (req->unchangedsince != 0) {
			ret = stor_pseen_view(db, mailbox, user, &m, error_r);
			if (ret == 0 && m.modseq > req->unchangedsince) {
				if (failed_r != NULL)
					ARRAY_PUSH(failed_r, m.uid);
				stor_msg_free(&m);
				continue;
			}
		}
		ARRAY_PUSH(&ok, m.uid);
		struct stor_pseen_change c = { m.guid, seen, 0, 0 };
		ARRAY_PUSH(&changes, c);
		stor_msg_free(&m);
	}
	free(sorted);
	/* The records first (modseq m1), then the messages (m2 = m1 + 1):
	 * each modseq is one change (SPEC.md 7.7). */
	if (ret == 0 && names_seen && changes.count > 0) {
		stor_pseen_list written = ARRAY_INIT;
		ret = stor_pseen_put(db, mailbox, user, STOR_PSEEN_LOCAL, changes.items,
				     changes.count, NULL, &written, error_r);
		for (size_t i = 0; i < written.count && ret == 0; i++) {
			uint32_t uid;
			if (stor_msg_find_guid(db, mailbox, &written.items[i].guid, &uid, error_r) > 0)
				ARRAY_PUSH(&touched, uid);
		}
		stor_pseen_list_free(&written);
	}
	struct stor_store mreq = *req;
	mreq.seen_of = NULL;
	mreq.unchangedsince = 0;
	mreq.flags &= ~(uint32_t)STOR_FLAG_SEEN;
	if (mreq.op == STOR_FLAGS_REPLACE)
		mreq.keep_flags |= STOR_FLAG_SEEN;
	bool names_other = mreq.op == STOR_FLAGS_REPLACE || (mreq.flags & STOR_FLAGS_ALL) != 0 ||
			   mreq.keyword_count > 0;
	if (ret == 0 && names_other && ok.count > 0) {
		stor_msg_list mchanged = ARRAY_INIT;
		ret = stor_msg_store(db, mailbox, ok.items, ok.count, &mreq, &mchanged, NULL, error_r);
		for (size_t i = 0; i < mchanged.count; i++)
			ARRAY_PUSH(&touched, mchanged.items[i].uid);
		stor_msg_list_free(&mchanged);
	}
	if (touched.count > 1)
		qsort(touched.items, touched.count, sizeof(uint32_t), uid_cmp);
	for (size_t i = 0; i < touched.count && ret == 0; i++) {
		if (i > 0 && touched.items[i] == touched.items[i - 1])
			continue;
		struct stor_msg m;
		int r = stor_msg_get(db, mailbox, touched.items[i], &m, error_r);
		if (r < 0)
			ret = -1;
		else if (r > 0 && stor_pseen_view(db, mailbox, user, &m, error_r) < 0) {
			stor_msg_free(&m);
			ret = -1;
		} else if (r > 0) {
			ARRAY_PUSH(changed_r, m);
		}
	}
	ARRAY_FREE(&ok);
	ARRAY_FREE(&touched);
	ARRAY_FREE(&changes);
	return ret;
}
