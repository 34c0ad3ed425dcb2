/* The selected mailbox as one session sees it, and change notification.
 *
 * Each session keeps its own sequence map (ascending UIDs) and the highest
 * modseq it has reported.  To report changes it asks storage for everything
 * above that modseq: tombstones of UIDs in its map are expunges, UIDs above
 * its map are new messages (EXISTS), other changed messages get FETCH FLAGS.
 * Changes the session already reported itself (its own STORE) are skipped.
 * Expunges that may not be sent now (during FETCH, STORE or SEARCH by
 * sequence number, RFC 3501 7.4.1) stay in the map as pending until the
 * next command that allows them.
 *
 * Sessions in IDLE are told at once through the seam's watcher; others
 * learn at the end of their next command. */
#include "imap/imap-private.h"
#include "imap/imap-pseen.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/log.h"
#include "lib/xalloc.h"

/* ---- \Recent: see struct imap_recent_table ---- */

static struct imap_recent_entry *recent_slot(struct imap_recent_table *t, const struct guid *g)
{
	/* GUIDs are random: their first bytes are a good enough hash. */
	size_t h;
	memcpy(&h, g->b, sizeof(h));
	for (size_t i = h & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
		struct imap_recent_entry *e = &t->slots[i];
		if (e->first_unclaimed == 0 || memcmp(e->guid.b, g->b, GUID_SIZE) == 0)
			return e;
	}
}

uint32_t imap_recent_first(struct imap_server *srv, const struct guid *mailbox)
{
	struct imap_recent_table *t = &srv->recent;
	if (t->cap == 0)
		return 1;
	const struct imap_recent_entry *e = recent_slot(t, mailbox);
	return e->first_unclaimed == 0 ? 1 : e->first_unclaimed;
}

/* Everything below uid has been told to a session. */
static void recent_claim(struct imap_server *srv, const struct guid *mailbox, uint32_t uid)
{
	struct imap_recent_table *t = &srv->recent;
	if (t->used + 1 > t->cap / 2) {
		struct imap_recent_table n = { NULL, t->cap == 0 ? 64 : t->cap * 2, 0 };
		n.slots = xcalloc(n.cap, sizeof(*n.slots));
		for (size_t i = 0; i < t->cap; i++) {
			if (t->slots[i].first_unclaimed != 0) {
				*recent_slot(&n, &t->slots[i].guid) = t->slots[i];
				n.used++;
			}
		}
		free(t->slots);
		*t = n;
	}
	struct imap_recent_entry *e = recent_slot(t, mailbox);
	if (e->first_unclaimed == 0) {
		e->guid = *mailbox;
		e->first_unclaimed = 1;
		t->used++;
	}
	if (uid > e->first_unclaimed)
		e->first_unclaimed = uid;
}

void imap_recent_free(struct imap_server *srv)
{
	free(srv->recent.slots);
	memset(&srv->recent, 0, sizeof(srv->recent));
}

bool imap_sel_is_recent(const struct imap_selected *sel, uint32_t uid)
{
	return sel->recent.count > 0 && imap_uid_list_has(&sel->recent, uid);
}

/* New UIDs (ascending) appear in the session: those no session on this
 * node has seen are \Recent here, and a read-write session takes them
 * (EXAMINE must not, RFC 3501 6.3.2).  Returns how many were recent. */
static size_t recent_take(struct imap_client *c, const uint32_t *uids, size_t n)
{
	struct imap_selected *sel = c->sel;
	/* IMAP4rev2 has no \Recent (RFC 9051 E) */
	if (c->rev2)
		return 0;
	uint32_t first = imap_recent_first(c->server, &sel->guid), top = 0;
	size_t taken = 0;
	for (size_t i = 0; i < n; i++) {
		if (uids[i] < first)
			continue;
		if (sel->recent.count == 0 || uids[i] > sel->recent.items[sel->recent.count - 1]) {
			ARRAY_PUSH(&sel->recent, uids[i]);
		} else if (!imap_uid_list_has(&sel->recent, uids[i])) {
			size_t at = 0;
			while (at < sel->recent.count && sel->recent.items[at] < uids[i])
				at++;
			ARRAY_RESERVE(&sel->recent, 1);
			memmove(&sel->recent.items[at + 1], &sel->recent.items[at],
				(sel->recent.count - at) * sizeof(uint32_t));
			sel->recent.items[at] = uids[i];
			sel->recent.count++;
		}
		taken++;
		if (uids[i] > top)
			top = uids[i];
	}
	if (!sel->readonly && top != 0 && top < UINT32_MAX)
		recent_claim(c->server, &sel->guid, top + 1);
	return taken;
}

/* Returns whether kw was new. */
static bool keyword_add(struct imap_selected *sel, const char *kw)
{
	if (stor_keywords_have(&sel->keywords, kw))
		return false;
	ARRAY_PUSH(&sel->keywords, xstrdup(kw));
	return true;
}

void imap_sel_send_flags(struct imap_client *c)
{
	struct imap_selected *sel = c->sel;
	struct buf line = BUF_INIT;
	buf_append_str(&line, "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft");
	for (size_t i = 0; i < sel->keywords.count; i++) {
		buf_append_byte(&line, ' ');
		buf_append_str(&line, sel->keywords.items[i]);
	}
	buf_append_str(&line, ")\r\n");
	if (sel->readonly) {
		buf_append_str(&line, "* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n");
	} else {
		buf_append_str(&line, "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen "
				      "\\Draft");
		for (size_t i = 0; i < sel->keywords.count; i++) {
			buf_append_byte(&line, ' ');
			buf_append_str(&line, sel->keywords.items[i]);
		}
		buf_append_str(&line, " \\*)] Flags permitted\r\n");
	}
	imap_client_write(c, line.data, line.len);
	buf_free(&line);
}

void imap_sel_announce_keywords(struct imap_client *c, const stor_string_list *keywords)
{
	struct imap_selected *sel = c->sel;
	if (sel == NULL || keywords == NULL)
		return;
	bool added = false;
	for (size_t i = 0; i < keywords->count; i++)
		added |= keyword_add(sel, keywords->items[i]);
	if (added)
		imap_sel_send_flags(c);
}

uint32_t imap_sel_seq(const struct imap_selected *sel, uint32_t uid)
{
	size_t i = imap_uid_lower_bound(&sel->uids, uid);
	return i < sel->uids.count && sel->uids.items[i] == uid ? (uint32_t)i + 1 : 0;
}

int imap_sel_open(struct imap_client *c, const struct stor_mailbox *mb, bool readonly,
		  uint32_t *first_unseen_r, const char **error_r)
{
	stor_msg_list list = ARRAY_INIT;
	if (stor_msg_list_range(c->server->db, &mb->guid, 1, UINT32_MAX, &list, error_r) < 0)
		return -1;
	imap_pseen_view_for(c, mb->user, &mb->guid, list.items, list.count);
	imap_sel_close(c);
	struct imap_selected *sel = xcalloc(1, sizeof(*sel));
	sel->guid = mb->guid;
	sel->name = xstrdup(mb->name);
	sel->owner = xstrdup(mb->user);
	sel->readonly = readonly;
	sel->uidvalidity = mb->uidvalidity;
	sel->modseq = mb->highestmodseq;
	*first_unseen_r = 0;
	ARRAY_RESERVE(&sel->uids, list.count);
	for (size_t i = 0; i < list.count; i++) {
		ARRAY_PUSH(&sel->uids, list.items[i].uid);
		if (*first_unseen_r == 0 && (list.items[i].flags & STOR_FLAG_SEEN) == 0)
			*first_unseen_r = (uint32_t)i + 1;
		for (size_t k = 0; k < list.items[i].keywords.count; k++)
			(void)keyword_add(sel, list.items[i].keywords.items[k]);
	}
	stor_msg_list_free(&list);
	c->sel = sel;
	c->state = IMAP_STATE_SELECTED;
	(void)recent_take(c, sel->uids.items, sel->uids.count);
	if (!readonly && mb->uidnext > 1)
		recent_claim(c->server, &sel->guid, mb->uidnext);
	return 0;
}

void imap_sel_close(struct imap_client *c)
{
	struct imap_selected *sel = c->sel;
	if (sel == NULL)
		return;
	ARRAY_FREE(&sel->uids);
	ARRAY_FREE(&sel->pending_expunges);
	ARRAY_FREE(&sel->own);
	ARRAY_FREE(&sel->recent);
	ARRAY_FREE(&sel->saved);
	imap_search_updates_free(sel);
	stor_string_list_free(&sel->keywords);
	free(sel->name);
	free(sel->owner);
	free(sel);
	c->sel = NULL;
	if (c->state == IMAP_STATE_SELECTED)
		c->state = IMAP_STATE_AUTH;
}

void imap_sel_own_change(struct imap_selected *sel, uint32_t uid, uint64_t modseq)
{
	struct imap_own_change oc = { uid, modseq };
	ARRAY_PUSH(&sel->own, oc);
}

static bool is_own(const struct imap_selected *sel, uint32_t uid, uint64_t modseq)
{
	for (size_t i = 0; i < sel->own.count; i++)
		if (sel->own.items[i].uid == uid && sel->own.items[i].modseq == modseq)
			return true;
	return false;
}

static bool uid_in(const stor_uid_list *l, uint32_t uid)
{
	for (size_t i = 0; i < l->count; i++)
		if (l->items[i] == uid)
			return true;
	return false;
}

static int uid_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static void map_remove(struct imap_selected *sel, uint32_t uid)
{
	uint32_t seq = imap_sel_seq(sel, uid);
	if (seq == 0)
		return;
	memmove(&sel->uids.items[seq - 1], &sel->uids.items[seq],
		(sel->uids.count - seq) * sizeof(uint32_t));
	sel->uids.count--;
	for (size_t i = 0; i < sel->recent.count; i++) {
		if (sel->recent.items[i] == uid) {
			memmove(&sel->recent.items[i], &sel->recent.items[i + 1],
				(sel->recent.count - i - 1) * sizeof(uint32_t));
			sel->recent.count--;
			break;
		}
	}
}

static void send_expunges(struct imap_client *c)
{
	struct imap_selected *sel = c->sel;
	if (sel->pending_expunges.count == 0)
		return;
	qsort(sel->pending_expunges.items, sel->pending_expunges.count, sizeof(uint32_t), uid_cmp);
	imap_search_updates_expunge(c, &sel->pending_expunges);
	if (c->qresync) {
		struct buf line = BUF_INIT;
		buf_append_str(&line, "* VANISHED ");
		imap_seqset_format(sel->pending_expunges.items, sel->pending_expunges.count, &line);
		buf_append_str(&line, "\r\n");
		imap_client_write(c, line.data, line.len);
		buf_free(&line);
		for (size_t i = 0; i < sel->pending_expunges.count; i++)
			map_remove(sel, sel->pending_expunges.items[i]);
	} else {
		/* Highest first, so each number is valid when it is sent. */
		for (size_t i = sel->pending_expunges.count; i-- > 0;) {
			uint32_t seq = imap_sel_seq(sel, sel->pending_expunges.items[i]);
			if (seq == 0)
				continue;
			imap_client_printf(c, "* %u EXPUNGE\r\n", seq);
			map_remove(sel, sel->pending_expunges.items[i]);
		}
	}
	sel->pending_expunges.count = 0;
}

/* A client counts recent messages by the last RECENT response alone
 * (RFC 3501 7.3.2 gives no other way), so once expunges take recent
 * messages out of the session, the new count must be sent too: else the
 * client goes on counting them, and the sum over the sessions of a
 * mailbox exceeds its size (imaptest's checkpoint says "Total RECENT
 * count larger than current message count"). */
static void report_recent(struct imap_client *c, bool always)
{
	struct imap_selected *sel = c->sel;
	if (c->rev2 || (!always && sel->recent.count == sel->recent_reported))
		return;
	imap_client_printf(c, "* %zu RECENT\r\n", sel->recent.count);
	sel->recent_reported = sel->recent.count;
}

void imap_sync(struct imap_client *c, bool allow_expunge)
{
	struct imap_selected *sel = c->sel;
	if (sel == NULL || c->dead)
		return;
	struct stor_db *db = c->server->db;
	const char *err;
	struct stor_mailbox mb;
	int r = stor_mailbox_get_by_guid(db, &sel->guid, &mb, &err);
	if (r < 0) {
		log_errorx("imap[%016llx]: sync: %s", (unsigned long long)c->id, err);
		return;
	}
	if (r == 0 || mb.uidvalidity != sel->uidvalidity) {
		if (r > 0)
			stor_mailbox_free(&mb);
		imap_client_printf(c, "* BYE Selected mailbox was deleted\r\n");
		imap_sel_close(c);
		imap_client_close_after_output(c);
		return;
	}
	uint64_t highest = mb.highestmodseq;
	stor_mailbox_free(&mb);
	if (highest > sel->modseq) {
		stor_msg_list msgs = ARRAY_INIT;
		stor_tombstone_list tombs = ARRAY_INIT;
		if (stor_changes_since(db, &sel->guid, sel->modseq, &msgs, &tombs, &err) < 0 ||
		    imap_pseen_changes(c, &sel->guid, sel->modseq, &msgs, &err) < 0) {
			stor_msg_list_free(&msgs);
			ARRAY_FREE(&tombs);
			log_errorx("imap[%016llx]: sync: %s", (unsigned long long)c->id, err);
			return;
		}
		for (size_t i = 0; i < tombs.count; i++) {
			uint32_t uid = tombs.items[i].uid;
			if (imap_sel_seq(sel, uid) != 0 && !uid_in(&sel->pending_expunges, uid))
				ARRAY_PUSH(&sel->pending_expunges, uid);
		}
		if (allow_expunge)
			send_expunges(c);
		/* Changed messages first (their numbers are known), then new ones. */
		size_t old_count = sel->uids.count;
		stor_uid_list fresh = ARRAY_INIT;
		struct buf line = BUF_INIT;
		for (size_t i = 0; i < msgs.count; i++) {
			const struct stor_msg *m = &msgs.items[i];
			uint32_t seq = imap_sel_seq(sel, m->uid);
			if (seq == 0) {
				ARRAY_PUSH(&fresh, m->uid);
				continue;
			}
			if (is_own(sel, m->uid, m->modseq) || uid_in(&sel->pending_expunges, m->uid))
				continue;
			imap_sel_announce_keywords(c, &m->keywords);
			buf_reset(&line);
			buf_appendf(&line, "* %u FETCH (UID %u FLAGS ", seq, m->uid);
			imap_append_flags(&line, m->flags, &m->keywords, imap_sel_is_recent(sel, m->uid));
			if (c->condstore)
				buf_appendf(&line, " MODSEQ (%llu)", (unsigned long long)m->modseq);
			buf_append_str(&line, ")\r\n");
			imap_client_write(c, line.data, line.len);
		}
		buf_free(&line);
		for (size_t i = 0; i < fresh.count; i++) {
			uint32_t uid = fresh.items[i];
			if (sel->uids.count == 0 || uid > sel->uids.items[sel->uids.count - 1]) {
				ARRAY_PUSH(&sel->uids, uid);
			} else {
				size_t at = imap_uid_lower_bound(&sel->uids, uid);
				ARRAY_RESERVE(&sel->uids, 1);
				memmove(&sel->uids.items[at + 1], &sel->uids.items[at],
					(sel->uids.count - at) * sizeof(uint32_t));
				sel->uids.items[at] = uid;
				sel->uids.count++;
			}
		}
		if (fresh.count > 0) {
			qsort(fresh.items, fresh.count, sizeof(uint32_t), uid_cmp);
			(void)recent_take(c, fresh.items, fresh.count);
		}
		if (sel->uids.count != old_count || fresh.count > 0)
			imap_client_printf(c, "* %zu EXISTS\r\n", sel->uids.count);
		/* RFC 3501 7.3.2: the RECENT count goes with the new EXISTS. */
		if (fresh.count > 0)
			report_recent(c, true);
		else if (allow_expunge)
			report_recent(c, false);
		imap_search_updates_changed(c, &msgs);
		ARRAY_FREE(&fresh);
		stor_msg_list_free(&msgs);
		ARRAY_FREE(&tombs);
		sel->modseq = highest;
	} else if (allow_expunge) {
		send_expunges(c);
		report_recent(c, false);
	}
	sel->own.count = 0;
}

void imap_enable_condstore(struct imap_client *c)
{
	if (c->condstore)
		return;
	c->condstore = true;
	/* What the session was told up to: later changes still arrive. */
	if (c->sel != NULL)
		imap_client_printf(c, "* OK [HIGHESTMODSEQ %llu] Highest\r\n",
				   (unsigned long long)c->sel->modseq);
}

void imap_sel_save_result(struct imap_selected *sel, const uint32_t *uids, size_t n)
{
	sel->saved.count = 0;
	ARRAY_RESERVE(&sel->saved, n);
	for (size_t i = 0; i < n; i++)
		ARRAY_PUSH(&sel->saved, uids[i]);
}

int imap_sel_resolve(struct imap_selected *sel, const char *set, bool uid, stor_uid_list *uids_r)
{
	if (strcmp(set, "$") == 0) {
		/* Saved UIDs still in the map; an empty result is not an
		 * error (RFC 5182 2.1). */
		for (size_t i = 0; i < sel->saved.count; i++)
			if (imap_sel_seq(sel, sel->saved.items[i]) != 0)
				ARRAY_PUSH(uids_r, sel->saved.items[i]);
		return 0;
	}
	imap_seqset ranges = ARRAY_INIT;
	if (imap_seqset_parse(set, &ranges) < 0) {
		ARRAY_FREE(&ranges);
		return -1;
	}
	size_t n = sel->uids.count;
	if (uid) {
		imap_seqset_resolve(&ranges, n > 0 ? sel->uids.items[n - 1] : 0);
		for (size_t i = 0; i < ranges.count; i++) {
			for (size_t k = imap_uid_lower_bound(&sel->uids, ranges.items[i].lo);
			     k < n && sel->uids.items[k] <= ranges.items[i].hi; k++)
				ARRAY_PUSH(uids_r, sel->uids.items[k]);
		}
	} else {
		/* A sequence number above EXISTS, or '*' in an empty mailbox,
		 * is an error (RFC 3501 6.4.8 / RFC 9051 6.4.9: the server
		 * responds BAD), not an empty match as for UIDs. */
		for (size_t i = 0; i < ranges.count; i++) {
			uint64_t lo = ranges.items[i].lo, hi = ranges.items[i].hi;
			if ((lo != IMAP_SEQ_STAR && lo > n) || (hi != IMAP_SEQ_STAR && hi > n) ||
			    n == 0) {
				ARRAY_FREE(&ranges);
				return -1;
			}
		}
		imap_seqset_resolve(&ranges, (uint32_t)n);
		for (size_t i = 0; i < ranges.count; i++) {
			for (uint64_t s = ranges.items[i].lo; s <= ranges.items[i].hi && s <= n; s++)
				ARRAY_PUSH(uids_r, sel->uids.items[s - 1]);
		}
	}
	ARRAY_FREE(&ranges);
	return 0;
}

void imap_sync_notify(void *ctx, const char *user, const struct guid *mailbox)
{
	struct imap_server *srv = ctx;
	for (struct imap_client *c = srv->clients; c != NULL; c = c->next) {
		if (c->dead || c->sel == NULL || c->idle_tag == NULL)
			continue;
		if (guid_cmp(&c->sel->guid, mailbox) != 0)
			continue;
		imap_sync(c, true);
	}
}
