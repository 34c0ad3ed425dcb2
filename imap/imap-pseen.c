/* Private \Seen in sessions (SPEC.md 7.7 "What a session sees"): on a
 * mailbox of another user (shared/OWNER/...) or a public one, with
 * private seen in force, a session of user U sees each message's own
 * flags without \Seen plus \Seen from U's record, and the higher of the
 * message's modseq and the record's.  The owner sees the message's own
 * flag.  Every place that shows a message of the selected mailbox, or
 * searches it, passes it through here. */
#include "imap/imap-private.h"
#include "imap/imap-pseen.h"

#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "storage/acl-rights.h"
#include "storage/storage-pseen.h"

bool imap_pseen_for(const struct imap_client *c, const char *owner)
{
	if (!c->server->cfg->shared_seen_private || owner == NULL || c->user == NULL)
		return false;
	return strcmp(owner, ACL_PUBLIC_OWNER) == 0 || strcmp(owner, c->user) != 0;
}

bool imap_pseen_sel(const struct imap_client *c)
{
	return c->sel != NULL && imap_pseen_for(c, c->sel->owner);
}

static void view_failed(const struct imap_client *c, const char *err)
{
	/* A damaged record shows the message unseen: never someone else's
	 * \Seen, and the session goes on. */
	log_errorx("imap[%016llx]: private \\Seen: %s", (unsigned long long)c->id, err);
}

void imap_pseen_view_for(struct imap_client *c, const char *owner, const struct guid *mailbox,
			 struct stor_msg *msgs, size_t count)
{
	if (!imap_pseen_for(c, owner))
		return;
	for (size_t i = 0; i < count; i++) {
		const char *err;
		if (stor_pseen_view(c->server->db, mailbox, c->user, &msgs[i], &err) < 0)
			view_failed(c, err);
	}
}

void imap_pseen_view(struct imap_client *c, const struct guid *mailbox, struct stor_msg *msgs,
		     size_t count)
{
	if (c->sel != NULL)
		imap_pseen_view_for(c, c->sel->owner, mailbox, msgs, count);
}

static int msg_uid_cmp(const void *a, const void *b)
{
	uint32_t x = ((const struct stor_msg *)a)->uid, y = ((const struct stor_msg *)b)->uid;
	return x < y ? -1 : x > y;
}

int imap_pseen_changes(struct imap_client *c, const struct guid *mailbox, uint64_t since,
		       stor_msg_list *msgs, const char **error_r)
{
	if (!imap_pseen_sel(c))
		return 0;
	struct stor_db *db = c->server->db;
	imap_pseen_view(c, mailbox, msgs->items, msgs->count);
	stor_pseen_list recs;
	if (stor_pseen_since(db, mailbox, since, &recs, error_r) < 0)
		return -1;
	size_t before = msgs->count;
	if (before > 1)
		qsort(msgs->items, before, sizeof(*msgs->items), msg_uid_cmp);
	int ret = 0;
	for (size_t i = 0; i < recs.count && ret == 0; i++) {
		if (strcmp(recs.items[i].user, c->user) != 0)
			continue;
		uint32_t uid;
		int r = stor_msg_find_guid(db, mailbox, &recs.items[i].guid, &uid, error_r);
		if (r <= 0) {
			ret = r;
			continue;
		}
		/* stor_changes_since() gave msgs[0..before) in UID order. */
		size_t lo = 0, hi = before;
		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;
			if (msgs->items[mid].uid < uid)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (lo < before && msgs->items[lo].uid == uid)
			continue;
		struct stor_msg m;
		r = stor_msg_get(db, mailbox, uid, &m, error_r);
		if (r < 0)
			ret = -1;
		else if (r > 0) {
			imap_pseen_view(c, mailbox, &m, 1);
			ARRAY_PUSH(msgs, m);
		}
	}
	stor_pseen_list_free(&recs);
	if (msgs->count > before)
		qsort(msgs->items, msgs->count, sizeof(*msgs->items), msg_uid_cmp);
	return ret;
}

uint32_t imap_pseen_unseen(struct imap_client *c, const struct stor_mailbox *mb)
{
	if (!imap_pseen_for(c, mb->user))
		return mb->unseen;
	uint32_t seen = 0;
	const char *err;
	if (stor_pseen_count(c->server->db, &mb->guid, c->user, &seen, &err) < 0)
		view_failed(c, err);
	return seen < mb->messages ? mb->messages - seen : 0;
}
