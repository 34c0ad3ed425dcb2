/* Private \Seen records in bundles (SPEC.md 7.7 "Bundles"): a bundle of
 * user B carries B's own records on other users' and public mailboxes,
 * after the last mailbox, as PSEEN-MBOX <owner> <mailbox-guid>
 * <uidvalidity> then PSEEN B <guid> <seen> 0 <time-ms> lines.  Nothing of
 * another user is ever written or read: the export takes only B's records
 * of mailboxes shared with B, and the loader refuses a PSEEN line naming
 * anyone but the header's USER, and a PSEEN-MBOX of a mailbox B owns.
 *
 * The records never enter the scratch copy (which holds only B's own
 * mailboxes): they are kept in the loader and, once the merge is done,
 * each one newer than the importer's becomes a change of its mailbox made
 * as B's STORE with SEEN-OF B would be -- through the node's master when
 * the node gives a callback, else in the store here.  The state file then
 * gets a PSEEN-BASE line per such mailbox, so that the export back carries
 * only the records changed after the import. */
#include "sync/sync-bundle-private.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/str.h"
#include "lib/xalloc.h"
#include "protocol/protocol.h"
#include "storage/storage-acl.h"
#include "storage/storage-pseen.h"

/* ---- Export ---- */

static int share_cmp(const void *a, const void *b)
{
	return guid_cmp(&((const struct stor_share *)a)->mailbox,
			&((const struct stor_share *)b)->mailbox);
}

static uint64_t base_of(const struct bundle_state *st, const struct guid *mailbox)
{
	if (st == NULL)
		return 0;
	for (size_t i = 0; i < st->pseen_bases.count; i++)
		if (guid_cmp(&st->pseen_bases.items[i].mailbox, mailbox) == 0)
			return st->pseen_bases.items[i].modseq;
	return 0;
}

int bundle_pseen_export(struct stor_db *db, const char *user, const struct bundle_state *st,
			void (*line_begin)(void *ctx, const char *name), void (*line_end)(void *ctx),
			struct proto_wr *w, void *ctx, char **error_r)
{
	/* Only mailboxes shared with the user can hold records the user made;
	 * the sharing index finds them without a scan of every user. */
	stor_share_list shares = ARRAY_INIT;
	const char *err;
	static const char *const grantees[] = { NULL, "anyone", "authenticated" };
	for (size_t g = 0; g < sizeof(grantees) / sizeof(grantees[0]); g++) {
		if (stor_acl_shared_with(db, grantees[g] != NULL ? grantees[g] : user, &shares,
					 &err) < 0) {
			*error_r = fmt_error("listing shared mailboxes: %s", err);
			stor_share_list_free(&shares);
			return -1;
		}
	}
	if (shares.count > 1)
		qsort(shares.items, shares.count, sizeof(shares.items[0]), share_cmp);
	int ret = 0;
	for (size_t i = 0; i < shares.count && ret == 0; i++) {
		const struct stor_share *sh = &shares.items[i];
		if ((i > 0 && guid_cmp(&shares.items[i - 1].mailbox, &sh->mailbox) == 0) ||
		    strcmp(sh->owner, user) == 0)
			continue;
		struct stor_mailbox mb;
		int r = stor_mailbox_get_by_guid(db, &sh->mailbox, &mb, &err);
		if (r <= 0) {
			if (r < 0) {
				*error_r = fmt_error("reading a shared mailbox: %s", err);
				ret = -1;
			}
			continue;
		}
		stor_pseen_list recs = ARRAY_INIT;
		if (stor_pseen_since(db, &sh->mailbox, base_of(st, &sh->mailbox), &recs, &err) < 0) {
			*error_r = fmt_error("reading private \\Seen records: %s", err);
			ret = -1;
		}
		bool started = false;
		for (size_t j = 0; j < recs.count && ret == 0; j++) {
			const struct stor_pseen *p = &recs.items[j];
			if (strcmp(p->user, user) != 0)
				continue;
			if (!started) {
				struct proto_pseen_mbox m;
				memset(&m, 0, sizeof(m));
				snprintf(m.owner, sizeof(m.owner), "%s", mb.user);
				m.mailbox = mb.guid;
				m.uidvalidity = mb.uidvalidity;
				line_begin(ctx, "PSEEN-MBOX");
				proto_wr_pseen_mbox(w, &m);
				line_end(ctx);
				started = true;
			}
			struct proto_pseen l;
			memset(&l, 0, sizeof(l));
			snprintf(l.user, sizeof(l.user), "%s", user);
			l.guid = p->guid;
			l.seen = p->seen;
			l.modseq = 0;
			l.time_ms = p->time_ms;
			line_begin(ctx, "PSEEN");
			proto_wr_pseen(w, &l);
			line_end(ctx);
		}
		stor_pseen_list_free(&recs);
		stor_mailbox_free(&mb);
	}
	stor_share_list_free(&shares);
	return ret;
}

/* ---- Loading ---- */

static int rec_cmp(const void *a, const void *b)
{
	return guid_cmp(&((const struct ld_pseen_rec *)a)->guid,
			&((const struct ld_pseen_rec *)b)->guid);
}

/* PSEEN-MBOX and PSEEN: 0, or -1 with *error_r (static text or from the
 * codec). */
int bundle_pseen_load(struct loader *l, const struct proto_cmd *cmd, const char **error_r)
{
	const char *err;
	if (proto_cmd_is(cmd, "PSEEN-MBOX")) {
		struct proto_pseen_mbox m;
		if (proto_read_pseen_mbox(cmd, &m, &err) != PROTO_CODEC_OK) {
			*error_r = err;
			return -1;
		}
		if (strcmp(m.owner, l->v->user) == 0) {
			*error_r = "PSEEN-MBOX of the bundle's own mailbox";
			return -1;
		}
		/* Each needs a record of its own, so the lines' bound holds
		 * them too; a mailbox named twice is found at the end, by a
		 * sort (a scan here would be quadratic). */
		if (l->pseen.count >= SYNC_MAX_MAILBOXES || l->pseen_lines >= BUNDLE_MAX_PSEEN_LINES) {
			*error_r = "too many PSEEN-MBOX";
			return -1;
		}
		struct ld_pseen_mbox e;
		memset(&e, 0, sizeof(e));
		e.owner = xstrdup(m.owner);
		e.mailbox = m.mailbox;
		e.uidvalidity = m.uidvalidity;
		ARRAY_PUSH(&l->pseen, e);
		return 0;
	}
	struct proto_pseen p;
	if (proto_read_pseen(cmd, PROTO_PSEEN_ASSIGN, &p, &err) != PROTO_CODEC_OK) {
		*error_r = err;
		return -1;
	}
	if (l->pseen.count == 0) {
		*error_r = "PSEEN before any PSEEN-MBOX";
		return -1;
	}
	if (strcmp(p.user, l->v->user) != 0) {
		*error_r = "PSEEN of another user than the bundle's";
		return -1;
	}
	if (++l->pseen_lines > BUNDLE_MAX_PSEEN_LINES) {
		*error_r = "too many PSEEN lines";
		return -1;
	}
	struct ld_pseen_mbox *mb = &l->pseen.items[l->pseen.count - 1];
	struct ld_pseen_rec r = { p.guid, p.seen, p.time_ms };
	ARRAY_PUSH(&mb->recs, r);
	return 0;
}

static int pmbox_cmp(const void *a, const void *b)
{
	return guid_cmp(&((const struct ld_pseen_mbox *)a)->mailbox,
			&((const struct ld_pseen_mbox *)b)->mailbox);
}

/* At the end of the body: each mailbox once, one record per message. */
int bundle_pseen_load_end(struct loader *l, const char **error_r)
{
	if (l->pseen.count > 1)
		qsort(l->pseen.items, l->pseen.count, sizeof(l->pseen.items[0]), pmbox_cmp);
	for (size_t i = 1; i < l->pseen.count; i++) {
		if (guid_cmp(&l->pseen.items[i - 1].mailbox, &l->pseen.items[i].mailbox) == 0) {
			*error_r = "PSEEN-MBOX of one mailbox twice";
			return -1;
		}
	}
	for (size_t i = 0; i < l->pseen.count; i++) {
		struct ld_pseen_mbox *mb = &l->pseen.items[i];
		if (mb->recs.count == 0) {
			*error_r = "PSEEN-MBOX without records";
			return -1;
		}
		qsort(mb->recs.items, mb->recs.count, sizeof(mb->recs.items[0]), rec_cmp);
		for (size_t j = 1; j < mb->recs.count; j++) {
			if (guid_cmp(&mb->recs.items[j - 1].guid, &mb->recs.items[j].guid) == 0) {
				*error_r = "two PSEEN lines of one message";
				return -1;
			}
		}
	}
	return 0;
}

void bundle_pseen_free(struct loader *l)
{
	for (size_t i = 0; i < l->pseen.count; i++) {
		free(l->pseen.items[i].owner);
		ARRAY_FREE(&l->pseen.items[i].recs);
	}
	ARRAY_FREE(&l->pseen);
	l->pseen_lines = 0;
}

/* ---- Import ---- */

/* A bundle's record is newer than the one held: a later time, on equal
 * times seen 1 over 0.  One that only restates the value held is left out
 * (it would change nothing anyone sees, and the change it makes would
 * travel back in the next bundle). */
static bool newer(const struct ld_pseen_rec *b, int have, const struct stor_pseen *h)
{
	if (have == 0)
		return true;
	if (b->seen == h->seen)
		return false;
	if (b->time_ms != h->time_ms)
		return b->time_ms > h->time_ms;
	return b->seen;
}

static int uid_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

int bundle_pseen_apply(struct stor_db *db, struct loader *l, sync_bundle_pseen_cb *cb, void *ctx,
		       struct sync_bundle_pseen_report *rep, char **error_r)
{
	const char *err;
	const char *user = l->v->user;
	for (size_t i = 0; i < l->pseen.count; i++) {
		struct ld_pseen_mbox *pm = &l->pseen.items[i];
		struct stor_mailbox mb;
		int r = stor_mailbox_get_by_guid(db, &pm->mailbox, &mb, &err);
		if (r < 0) {
			*error_r = fmt_error("private \\Seen: %s", err);
			return -1;
		}
		bool ok = r > 0 && mb.uidvalidity == pm->uidvalidity && strcmp(mb.user, pm->owner) == 0;
		if (r > 0)
			stor_mailbox_free(&mb);
		if (!ok) {
			rep->mailboxes_skipped++;
			continue;
		}
		pm->held = true;
		stor_uid_list set = ARRAY_INIT, clear = ARRAY_INIT;
		ARRAY(struct stor_pseen_change) changes = ARRAY_INIT;
		int ret = 0;
		for (size_t j = 0; j < pm->recs.count && ret == 0; j++) {
			const struct ld_pseen_rec *b = &pm->recs.items[j];
			uint32_t uid;
			r = stor_msg_find_guid(db, &pm->mailbox, &b->guid, &uid, &err);
			if (r <= 0) {
				if (r < 0)
					ret = -1;
				else
					rep->records_skipped++;
				continue;
			}
			struct stor_pseen h;
			memset(&h, 0, sizeof(h));
			int have = stor_pseen_get(db, &pm->mailbox, &b->guid, user, &h, &err);
			if (have < 0) {
				ret = -1;
				continue;
			}
			free(h.user);
			if (!newer(b, have, &h))
				continue;
			ARRAY_PUSH(b->seen ? &set : &clear, uid);
			struct stor_pseen_change c = { b->guid, b->seen, 0, 0 };
			ARRAY_PUSH(&changes, c);
		}
		if (ret == 0 && changes.count > 0) {
			rep->records_applied += (unsigned)changes.count;
			if (cb != NULL) {
				if (set.count > 1)
					qsort(set.items, set.count, sizeof(uint32_t), uid_cmp);
				if (clear.count > 1)
					qsort(clear.items, clear.count, sizeof(uint32_t), uid_cmp);
				if (set.count > 0)
					cb(ctx, pm->owner, &pm->mailbox, user, set.items, set.count, true);
				if (clear.count > 0)
					cb(ctx, pm->owner, &pm->mailbox, user, clear.items, clear.count,
					   false);
			} else {
				ret = stor_pseen_put(db, &pm->mailbox, user, STOR_PSEEN_LOCAL,
						     changes.items, changes.count, NULL, NULL, &err);
			}
		}
		ARRAY_FREE(&set);
		ARRAY_FREE(&clear);
		ARRAY_FREE(&changes);
		if (ret < 0) {
			*error_r = fmt_error("private \\Seen: %s", err);
			return -1;
		}
	}
	return 0;
}

void bundle_pseen_write_bases(struct stor_db *db, const struct loader *l, struct buf *out)
{
	for (size_t i = 0; i < l->pseen.count; i++) {
		const struct ld_pseen_mbox *pm = &l->pseen.items[i];
		struct stor_mailbox mb;
		const char *err;
		if (!pm->held || stor_mailbox_get_by_guid(db, &pm->mailbox, &mb, &err) <= 0)
			continue;
		char hex[33];
		guid_to_hex(&pm->mailbox, hex);
		buf_appendf(out, "PSEEN-BASE %s %" PRIu64 "\n", hex, mb.highestmodseq);
		stor_mailbox_free(&mb);
	}
}
