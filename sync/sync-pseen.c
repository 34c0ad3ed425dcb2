/* Private \Seen records in a sync (SPEC.md 7.7 "Syncs", "Merging two
 * records"): the client sends its records changed since M as PSEEN lines
 * after its other changes; the server merges them with its own at SYNC-END
 * (the later time-ms wins, on equal times seen 1) and answers, after its
 * FLAGS lines, a PSEEN line for each record the client lacks or holds
 * older, with the modseq the merge gave it; both sides then drop the
 * records of GUIDs with a GUID tombstone.  Modseqs follow 10.3: a record
 * changed on one side only keeps its modseq when it is above the other
 * side's HIGHESTMODSEQ, every other record the merge writes gets N on both
 * sides, and one change both sides hold alike takes the higher of its two
 * modseqs without spending N. */
#include "sync/sync-client-private.h"
#include "sync/sync-server-private.h"

#include <stdlib.h>
#include <string.h>

#include "lib/xalloc.h"
#include "protocol/protocol.h"
#include "storage/storage-pseen.h"

static int cmp_guid_user(const void *a, const void *b)
{
	const struct stor_pseen *x = a, *y = b;
	int c = guid_cmp(&x->guid, &y->guid);
	return c != 0 ? c : strcmp(x->user, y->user);
}

static void pseen_of_line(const struct proto_pseen *p, struct stor_pseen *r)
{
	r->guid = p->guid;
	r->user = xstrdup(p->user);
	r->seen = p->seen;
	r->modseq = p->modseq;
	r->time_ms = p->time_ms;
}

static void wr_pseen(struct proto_wr *w, const struct stor_pseen *r)
{
	struct proto_pseen p;
	memset(&p, 0, sizeof(p));
	size_t len = strlen(r->user);
	memcpy(p.user, r->user, len < PROTO_MAX_USER_LEN ? len : PROTO_MAX_USER_LEN);
	p.guid = r->guid;
	p.seen = r->seen;
	p.modseq = r->modseq;
	p.time_ms = r->time_ms;
	proto_wr_pseen(w, &p);
}

/* The record that wins a merge: the later time, on equal times seen 1. */
static bool beats(const struct stor_pseen *a, const struct stor_pseen *b)
{
	if (a->time_ms != b->time_ms)
		return a->time_ms > b->time_ms;
	return a->seen && !b->seen;
}

static bool same_change(const struct stor_pseen *a, const struct stor_pseen *b)
{
	return a->seen == b->seen && a->time_ms == b->time_ms;
}

/* Writes one record as the merge decided it (one user, one GUID). */
static int put_one(struct stor_db *db, const struct guid *mailbox, const struct stor_pseen *r,
		   const char **err)
{
	struct stor_pseen_change c = { r->guid, r->seen, r->modseq, r->time_ms };
	return stor_pseen_put(db, mailbox, r->user, STOR_PSEEN_MERGE, &c, 1, NULL, NULL, err);
}

/* Drops the records of GUIDs with a GUID tombstone (7.7: a resync does). */
static int drop_tombstoned(struct stor_db *db, const struct guid *mailbox, const char **err)
{
	stor_guid_tomb_list tombs;
	if (stor_guid_tombs_since(db, mailbox, 0, &tombs, err) < 0)
		return -1;
	int ret = 0;
	if (tombs.count > 0) {
		struct guid *g = xmalloc(tombs.count * sizeof(*g));
		size_t dropped;
		for (size_t i = 0; i < tombs.count; i++)
			g[i] = tombs.items[i].guid;
		ret = stor_pseen_drop(db, mailbox, g, tombs.count, &dropped, err);
		free(g);
	}
	ARRAY_FREE(&tombs);
	return ret;
}

/* ---- Server ---- */

int sync_pseen_srv_cmd(struct sync_server *s, const struct proto_cmd *cmd)
{
	struct proto_pseen p;
	const char *err;
	int cr = proto_read_pseen(cmd, PROTO_PSEEN_GIVEN, &p, &err);
	if (cr == PROTO_CODEC_LIMIT) {
		srv_reply(s, s->cur_id, "NO", "LIMIT", err);
		return 0;
	}
	if (cr != PROTO_CODEC_OK) {
		srv_reply(s, s->cur_id, "BAD", "ARGS", err);
		return 0;
	}
	if (s->pseen_in.count >= PROTO_MAX_PSEEN_PER_SYNC) {
		srv_reply(s, s->cur_id, "NO", "LIMIT", "too many PSEEN lines in one sync");
		return 0;
	}
	struct stor_pseen r;
	pseen_of_line(&p, &r);
	ARRAY_PUSH(&s->pseen_in, r);
	srv_reply(s, s->cur_id, "OK", NULL, "held");
	return 0;
}

void sync_pseen_srv_reset(struct sync_server *s)
{
	stor_pseen_list_free(&s->pseen_in);
	stor_pseen_list_free(&s->pseen_out);
	memset(&s->pseen_in, 0, sizeof(s->pseen_in));
	memset(&s->pseen_out, 0, sizeof(s->pseen_out));
}

/* A record the client must take: queued for the answer. */
static void out_push(struct sync_server *s, const struct stor_pseen *r)
{
	struct stor_pseen o = *r;
	o.user = xstrdup(r->user);
	ARRAY_PUSH(&s->pseen_out, o);
}

bool sync_pseen_srv_over_limit(struct sync_server *s)
{
	stor_pseen_list *in = &s->pseen_in;
	if (in->count > 1)
		qsort(in->items, in->count, sizeof(in->items[0]), cmp_guid_user);
	/* At most PROTO_MAX_PSEEN_PER_MESSAGE users' records per message. */
	for (size_t i = 0, run = 0; i < in->count; i++) {
		run = i > 0 && guid_equal(&in->items[i].guid, &in->items[i - 1].guid) ? run + 1 : 1;
		if (run > PROTO_MAX_PSEEN_PER_MESSAGE)
			return true;
	}
	return false;
}

int sync_pseen_srv_merge(struct sync_server *s, const char **err)
{
	struct srv_merge *m = &s->merge;
	stor_pseen_list *in = &s->pseen_in;
	for (size_t i = 0; i < in->count; i++) {
		struct stor_pseen *c = &in->items[i];
		if (i > 0 && cmp_guid_user(c, &in->items[i - 1]) == 0)
			continue; /* the same record twice: the first counts */
		/* A GUID the user expunged here: the record goes with it. */
		int t = stor_guid_tomb_get(s->db, &s->sel, &c->guid, NULL, err);
		if (t < 0)
			return -1;
		if (t > 0)
			continue;
		struct stor_pseen have;
		int h = stor_pseen_get(s->db, &s->sel, &c->guid, c->user, &have, err);
		if (h < 0)
			return -1;
		struct stor_pseen w = *c;
		bool write_here = false, tell_client = false;
		if (h > 0 && same_change(&have, c)) {
			/* One change both hold: the higher modseq, no N. */
			if (have.modseq < c->modseq)
				write_here = true;
			else if (have.modseq > c->modseq) {
				w.modseq = have.modseq;
				tell_client = true;
			}
		} else if (h == 0 || (have.modseq <= m->M && beats(c, &have))) {
			/* Changed on the client's side only. */
			if (c->modseq <= m->sm) {
				w.modseq = m->N;
				tell_client = true;
			}
			write_here = true;
		} else {
			/* Changed on both sides (or ours is newer than a change
			 * of the client's that ours has not seen): the winner
			 * at N on both. */
			if (!beats(c, &have)) {
				w.seen = have.seen;
				w.time_ms = have.time_ms;
			}
			w.modseq = m->N;
			write_here = true;
			tell_client = true;
		}
		if (write_here) {
			if (put_one(s->db, &s->sel, &w, err) < 0)
				return -1;
			if (w.modseq == m->N)
				m->touched = true;
		}
		if (tell_client)
			out_push(s, &w);
	}
	/* Ours changed since M that the client did not send: it lacks them or
	 * holds them older. */
	stor_pseen_list ours;
	if (stor_pseen_since(s->db, &s->sel, m->M, &ours, err) < 0)
		return -1;
	int ret = 0;
	for (size_t i = 0; i < ours.count && ret == 0; i++) {
		struct stor_pseen *r = &ours.items[i];
		if (in->count > 0 && bsearch(r, in->items, in->count, sizeof(in->items[0]),
					     cmp_guid_user) != NULL)
			continue;
		int t = stor_guid_tomb_get(s->db, &s->sel, &r->guid, NULL, err);
		if (t != 0) {
			ret = t < 0 ? -1 : 0;
			continue;
		}
		if (r->modseq <= m->cm) {
			r->modseq = m->N;
			m->touched = true;
			ret = put_one(s->db, &s->sel, r, err);
		}
		if (ret == 0)
			out_push(s, r);
	}
	stor_pseen_list_free(&ours);
	if (ret == 0)
		ret = drop_tombstoned(s->db, &s->sel, err);
	return ret;
}

void sync_pseen_srv_write(struct sync_server *s, uint32_t id)
{
	struct proto_wr w;
	proto_wr_init(&w, &s->out);
	for (size_t i = 0; i < s->pseen_out.count; i++) {
		srv_line_begin(s, &w, id, "PSEEN");
		wr_pseen(&w, &s->pseen_out.items[i]);
		proto_wr_end(&w);
	}
}

/* ---- Client ---- */

int sync_pseen_cl_send(struct sync_client *c)
{
	stor_pseen_list recs;
	const char *err;
	if (stor_pseen_since(c->db, &c->cur.guid, c->M, &recs, &err) < 0)
		return cl_fail(c, "%s", err);
	if (recs.count > PROTO_MAX_PSEEN_PER_SYNC) {
		stor_pseen_list_free(&recs);
		return cl_fail(c, "mailbox %s: more than %u private \\Seen records changed since "
			       "the last sync", c->cur.name, (unsigned)PROTO_MAX_PSEEN_PER_SYNC);
	}
	for (size_t i = 0; i < recs.count; i++) {
		struct proto_wr w;
		cl_cmd_begin(c, &w, "PSEEN", K_OTHER, 0);
		wr_pseen(&w, &recs.items[i]);
		cl_cmd_end(c, &w);
	}
	stor_pseen_list_free(&recs);
	return 0;
}

int sync_pseen_cl_line(struct sync_client *c, const struct proto_cmd *line)
{
	struct proto_pseen p;
	const char *err;
	if (proto_read_pseen(line, PROTO_PSEEN_GIVEN, &p, &err) != PROTO_CODEC_OK)
		return cl_fail(c, "SYNC-END: bad PSEEN line: %s", err);
	if (c->pseen_ans.count >= PROTO_MAX_PSEEN_PER_SYNC)
		return cl_fail(c, "SYNC-END: too many PSEEN lines");
	struct stor_pseen r;
	pseen_of_line(&p, &r);
	ARRAY_PUSH(&c->pseen_ans, r);
	return 0;
}

int sync_pseen_cl_apply(struct sync_client *c, const char **err)
{
	int ret = 0;
	for (size_t i = 0; i < c->pseen_ans.count && ret == 0; i++)
		ret = put_one(c->db, &c->cur.guid, &c->pseen_ans.items[i], err);
	stor_pseen_list_free(&c->pseen_ans);
	memset(&c->pseen_ans, 0, sizeof(c->pseen_ans));
	if (ret == 0)
		ret = drop_tombstoned(c->db, &c->cur.guid, err);
	return ret;
}

void sync_pseen_cl_reset(struct sync_client *c)
{
	stor_pseen_list_free(&c->pseen_ans);
	memset(&c->pseen_ans, 0, sizeof(c->pseen_ans));
}
