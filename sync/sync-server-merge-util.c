/* Small pieces the merge's steps share: lookups in the sorted lists a merge
 * builds, the one flag write it makes, and its EXPUNGE answer lines.  Kept
 * out of sync-server-merge.c and sync-server-merge-client.c so that the
 * steps there read as decisions. */
#include "sync/sync-server-private.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#include "lib/log.h"
#include "lib/xalloc.h"

/* ---- The merge ---- */

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

int cmp_save(const void *a, const void *b)
{
	return cmp_u32(&((const struct srv_save *)a)->uid, &((const struct srv_save *)b)->uid);
}

ssize_t find_msg(const stor_msg_list *l, uint32_t uid)
{
	size_t lo = 0, hi = l->count;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (l->items[mid].uid == uid)
			return (ssize_t)mid;
		if (l->items[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

ssize_t find_tomb(const stor_tombstone_list *l, uint32_t uid)
{
	size_t lo = 0, hi = l->count;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (l->items[mid].uid == uid)
			return (ssize_t)mid;
		if (l->items[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

bool uid_in(const stor_uid_list *l, uint32_t uid)
{
	/* l is sorted. */
	return l->count > 0 && bsearch(&uid, l->items, l->count, sizeof(uint32_t), cmp_u32) != NULL;
}


static int cmp_guid_v(const void *a, const void *b)
{
	return guid_cmp(a, b);
}

bool guid_in(const srv_guid_list *l, const struct guid *g)
{
	/* l is sorted. */
	return l->count > 0 && bsearch(g, l->items, l->count, sizeof(*g), cmp_guid_v) != NULL;
}

void guids_sort(srv_guid_list *l)
{
	if (l->count > 1)
		qsort(l->items, l->count, sizeof(l->items[0]), cmp_guid_v);
}

void uexp_push(struct srv_merge *m, uint32_t uid, const struct guid *g)
{
	struct sync_uexp u = { uid, *g };
	ARRAY_PUSH(&m->uexp_client, u);
}

/* Whether the client expunged uid, which holds here a message the client
 * has under another UID: the client moved it (a sync with a third node
 * renumbered it), whatever L says (a first sync has L = 1).  Then its new
 * UID stands, and our copy at uid goes with the client's other expunges. */
bool client_moved_from(struct sync_server *s, uint32_t uid, const struct guid *g)
{
	struct srv_merge *m = &s->merge;
	if (!uid_in(&s->expunges, uid))
		return false;
	if (!uid_in(&m->cexp_low, uid)) {
		ARRAY_PUSH(&m->cexp_low, uid);
		uids_sort_unique(&m->cexp_low);
		merge_log_drop(s, uid, g, "ours, the client moved it (it expunged this UID)");
	}
	return true;
}

/* The UID other than cs's at which this node holds cs's message, unless
 * the client moved it from there: *uid_r, or 0 when there is none.
 * Returns 0, or -1 with *err. */
int held_elsewhere(struct sync_server *s, const struct srv_save *cs, uint32_t *uid_r,
		   const char **err)
{
	int r = stor_msg_find_guid(s->db, &s->sel, &cs->guid, uid_r, err);
	if (r < 0)
		return -1;
	if (r == 0 || *uid_r == cs->uid || client_moved_from(s, *uid_r, &cs->guid))
		*uid_r = 0;
	return 0;
}

void uids_sort_unique(stor_uid_list *l)
{
	if (l->count == 0)
		return;
	qsort(l->items, l->count, sizeof(uint32_t), cmp_u32);
	size_t n = 1;
	for (size_t i = 1; i < l->count; i++) {
		if (l->items[i] != l->items[n - 1])
			l->items[n++] = l->items[i];
	}
	l->count = n;
}

/* Sets a message's whole flag state; flags named in stamps (may be NULL)
 * take those stamps' times (the user's change they come from). */
int set_flags(struct sync_server *s, uint32_t uid, uint32_t flags,
	      const stor_string_list *kws, const stor_stamp_list *stamps, uint64_t modseq,
	      const char **error_r)
{
	struct stor_store req = {
		.op = STOR_FLAGS_REPLACE, .flags = flags,
		.keywords = (const char *const *)kws->items, .keyword_count = kws->count,
		.modseq = modseq,
		.stamps = stamps != NULL ? stamps->items : NULL,
		.stamp_count = stamps != NULL ? stamps->count : 0,
	};
	return stor_msg_store(s->db, &s->sel, &uid, 1, &req, NULL, NULL, error_r);
}

void wr_uid_lines(struct sync_server *s, uint32_t id, const char *name,
		  const stor_uid_list *uids, uint64_t modseq)
{
	struct proto_wr w;
	proto_wr_init(&w, &s->out);
	for (size_t i = 0; i < uids->count; i += SYNC_MAX_UIDS_PER_LINE) {
		size_t n = uids->count - i;
		if (n > SYNC_MAX_UIDS_PER_LINE)
			n = SYNC_MAX_UIDS_PER_LINE;
		srv_line_begin(s, &w, id, name);
		proto_wr_uidset(&w, uids->items + i, n);
		proto_wr_u64(&w, modseq);
		proto_wr_end(&w);
	}
}

/* EXPUNGE lines of a user's expunges: UIDs ascending, one GUID each. */
void wr_uexp_lines(struct sync_server *s, uint32_t id, const struct sync_uexp *u,
		   size_t count, uint64_t modseq)
{
	struct proto_wr w;
	proto_wr_init(&w, &s->out);
	for (size_t i = 0; i < count; i += SYNC_MAX_USER_UIDS_PER_LINE) {
		size_t n = count - i;
		if (n > SYNC_MAX_USER_UIDS_PER_LINE)
			n = SYNC_MAX_USER_UIDS_PER_LINE;
		uint32_t uids[SYNC_MAX_USER_UIDS_PER_LINE];
		struct guid guids[SYNC_MAX_USER_UIDS_PER_LINE];
		for (size_t j = 0; j < n; j++) {
			uids[j] = u[i + j].uid;
			guids[j] = u[i + j].guid;
		}
		struct proto_expunge e = { uids, n, modseq };
		srv_line_begin(s, &w, id, "EXPUNGE");
		proto_wr_expunge(&w, &e);
		sync_wr_user_guids(&w, guids, n);
		proto_wr_end(&w);
	}
}

/* At most this many drops of one merge are logged one by one: a merge may
 * drop thousands of copies (a restored node), and the log stays readable. */
#define MERGE_LOG_DROPS_MAX 32

/* Logs, at info level, a copy of message g at uid that this merge drops
 * (the client's or ours) and why, so that a fault campaign's replay names
 * the sync that removed a message.  fmt: the reason. */
void merge_log_drop(struct sync_server *s, uint32_t uid, const struct guid *g,
		    const char *fmt, ...)
{
	struct srv_merge *m = &s->merge;
	m->drops++;
	if (m->drops_logged >= MERGE_LOG_DROPS_MAX)
		return;
	m->drops_logged++;
	char mbh[GUID_HEX_SIZE], gh[GUID_HEX_SIZE], why[160];
	guid_to_hex(&s->sel, mbh);
	guid_to_hex(g, gh);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	log_info("sync server (peer %u): mailbox %s: UID %u GUID %s dropped: %s", s->peer, mbh,
		 uid, gh, why);
}

/* The count of the drops merge_log_drop() did not log one by one. */
void merge_log_drops_end(struct sync_server *s)
{
	struct srv_merge *m = &s->merge;
	if (m->drops > m->drops_logged) {
		char mbh[GUID_HEX_SIZE];
		guid_to_hex(&s->sel, mbh);
		log_info("sync server (peer %u): mailbox %s: %u more copies dropped (not logged)",
			 s->peer, mbh, m->drops - m->drops_logged);
	}
}
