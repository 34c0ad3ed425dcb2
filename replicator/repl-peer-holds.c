/* What each peer holds: its persistent marks (full sync, dirty users), the
 * users it does not hold from some entry on, and the acknowledgements that
 * move its cursor.  Apart from the streamer because the waiters read this
 * too, and it must mean the same to both (SPEC.md 8.6). */
#include "replicator/repl-stream-private.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "replicator/repl-mm.h"
#include "replicator/repl-peer.h"
#include "replicator/repl-sync.h"

/* ---- Peers: persistent marks ---- */

static void meta_name(char *out, size_t size, const char *what, uint32_t sid)
{
	snprintf(out, size, "repl.%s.%u", what, sid);
}

void full_sync_store(struct cl_peer *p)
{
	char name[64];
	const char *err;
	meta_name(name, sizeof(name), "fullsync", p->sid);
	if (stor_meta_set(p->cl->repl.db, name, p->full_sync ? "1" : "0", 1, &err) < 0)
		log_errorx("replication: cannot store the full-sync mark of %u: %s", p->sid, err);
}

void dirty_store(struct cl_peer *p)
{
	char name[64];
	const char *err;
	struct buf v;
	buf_init(&v);
	for (size_t i = 0; i < p->dirty_users.count; i++)
		buf_appendf(&v, "%s\n", p->dirty_users.items[i]);
	meta_name(name, sizeof(name), "dirty", p->sid);
	if (stor_meta_set(p->cl->repl.db, name, v.data != NULL ? (const char *)v.data : "", v.len,
			  &err) < 0)
		log_errorx("replication: cannot store users to resync with %u: %s", p->sid, err);
	buf_free(&v);
}

static bool list_has(const stor_string_list *l, const char *s)
{
	for (size_t i = 0; i < l->count; i++)
		if (strcmp(l->items[i], s) == 0)
			return true;
	return false;
}

void list_add(stor_string_list *l, const char *s)
{
	if (!list_has(l, s))
		ARRAY_PUSH(l, xstrdup(s));
}

void load_peer(struct cl_peer *p)
{
	struct stor_db *db = p->cl->repl.db;
	const char *err;
	char name[64];
	struct buf v;
	if (stor_log_cursor_get(db, p->sid, &p->cursor, &err) < 0) {
		log_errorx("replication: cannot read the log cursor of %u: %s", p->sid, err);
		p->cursor = 0;
	}
	buf_init(&v);
	meta_name(name, sizeof(name), "fullsync", p->sid);
	if (stor_meta_get(db, name, &v, &err) > 0)
		p->full_sync = v.len == 1 && v.data[0] == '1';
	buf_reset(&v);
	meta_name(name, sizeof(name), "dirty", p->sid);
	if (stor_meta_get(db, name, &v, &err) > 0) {
		size_t start = 0;
		for (size_t i = 0; i < v.len; i++) {
			if (v.data[i] != '\n')
				continue;
			if (i > start && i - start <= STOR_MAX_USER_LEN) {
				char *u = xmalloc(i - start + 1);
				memcpy(u, v.data + start, i - start);
				u[i - start] = '\0';
				ARRAY_PUSH(&p->dirty_users, u);
			}
			start = i + 1;
		}
	}
	buf_free(&v);
	p->next_seq = p->cursor + 1;
}

struct cl_peer *cl_peer_find(struct repl_cluster *cl, uint32_t sid)
{
	for (size_t i = 0; i < cl->peer_list.count; i++)
		if (cl->peer_list.items[i]->sid == sid)
			return cl->peer_list.items[i];
	return NULL;
}

void cl_mark_dirty(struct cl_peer *p, const char *user)
{
	if (p->conn != NULL && p->cl->sync != NULL) {
		/* With every up peer, not only p: a resync toward all of them
		 * syncs a peer again when a later one brought changes, so
		 * three nodes that were apart end alike in one run. */
		repl_sync_enqueue(p->cl->sync, user, 0);
		return;
	}
	if (!list_has(&p->dirty_users, user)) {
		list_add(&p->dirty_users, user);
		dirty_store(p);
	}
}

/* ---- What a peer holds ---- */

static size_t unheld_find(const struct cl_peer *p, const char *user, bool *found_r)
{
	size_t lo = 0, hi = p->unheld.count;
	*found_r = false;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(p->unheld.items[mid].user, user);
		if (c == 0) {
			*found_r = true;
			return mid;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* The peer may lack the user's entries from first on; a resync started
 * once the log reached need settles it. */
void unheld_add(struct cl_peer *p, const char *user, uint64_t first, uint64_t need)
{
	bool found;
	size_t i = unheld_find(p, user, &found);
	if (found) {
		struct cl_unheld *u = &p->unheld.items[i];
		if (first < u->first)
			u->first = first;
		if (need > u->need)
			u->need = need;
	} else {
		struct cl_unheld u = { xstrdup(user), first, need };
		ARRAY_PUSH(&p->unheld, u);
		memmove(p->unheld.items + i + 1, p->unheld.items + i,
			(p->unheld.count - 1 - i) * sizeof(u));
		p->unheld.items[i] = u;
		if (p->unheld.count == 1) {
			p->unheld_backoff_s = CL_UNHELD_RETRY_S;
			p->unheld_retry_at = clock_mono_ms() + CL_UNHELD_RETRY_S * 1000u;
		}
	}
}

/* Whether the peer holds entry seq of user durably.  Once true it stays
 * true: the cursor only grows, and a user becomes unheld only from an
 * entry above the cursor of the time. */
bool peer_holds(const struct cl_peer *p, const char *user, uint64_t seq)
{
	if (seq > p->cursor)
		return false;
	if (p->unheld.count == 0)
		return true;
	bool found;
	size_t i = unheld_find(p, user, &found);
	return !found || p->unheld.items[i].first > seq;
}

/* Whether peer sid may lack changes of user made here: written here while
 * it could not be asked, in the backlog it has not answered yet, or
 * refused by it and not resynced since. */
bool cl_peer_may_lack_user(struct repl_cluster *cl, uint32_t sid, const char *user)
{
	struct cl_peer *p = cl_peer_find(cl, sid);
	if (p == NULL)
		return false;
	if (list_has(&p->dirty_users, user))
		return true;
	if (p->catchup_until != 0 && list_has(&p->catchup_users, user))
		return true;
	bool found;
	unheld_find(p, user, &found);
	return found;
}

void unheld_clear(struct cl_peer *p)
{
	for (size_t i = 0; i < p->unheld.count; i++)
		free(p->unheld.items[i].user);
	ARRAY_FREE(&p->unheld);
}

/* Every user's entries past the cursor: the peer fell off the log. */
void unheld_all(struct cl_peer *p)
{
	struct repl_cluster *cl = p->cl;
	stor_string_list users = ARRAY_INIT;
	const char *err;
	if (stor_user_list(cl->repl.db, &users, &err) < 0) {
		log_errorx("replication: listing users: %s", err);
		return;
	}
	for (size_t i = 0; i < users.count; i++)
		unheld_add(p, users.items[i], p->cursor + 1, cl->log_last);
	stor_string_list_free(&users);
}

void cl_stream_sync_event(struct repl_cluster *cl, enum repl_sync_peer_event ev, const char *user,
			  uint32_t sid)
{
	struct cl_peer *p = cl_peer_find(cl, sid);
	if (p == NULL)
		return;
	if (ev == REPL_SYNC_PEER_START) {
		p->sync_start_seq = cl->log_last;
		return;
	}
	if (ev == REPL_SYNC_PEER_CHANGED) {
		cl_relay_sync_changed(cl, user, sid);
		return;
	}
	bool found;
	size_t i = unheld_find(p, user, &found);
	if (!found || p->unheld.items[i].need > p->sync_start_seq)
		return;
	free(p->unheld.items[i].user);
	p->unheld.count--;
	memmove(p->unheld.items + i, p->unheld.items + i + 1,
		(p->unheld.count - i) * sizeof(p->unheld.items[0]));
	/* The resync wrote what the peer had refused: its store takes
	 * changes again. */
	p->store_failed = false;
	cl_under_check(cl);
	cl_waiters_check(cl);
}

/* ---- Acknowledgements ---- */

void advance(struct cl_peer *p)
{
	size_t n = 0;
	while (n < p->inflight.count && p->inflight.items[n].outstanding == 0) {
		p->cursor = p->inflight.items[n].seq;
		n++;
	}
	if (n == 0)
		return;
	if (p->inflight.count > n)
		memmove(p->inflight.items, p->inflight.items + n,
			(p->inflight.count - n) * sizeof(p->inflight.items[0]));
	p->inflight.count -= n;
	p->cursor_dirty = true;
	p->progress_ms = clock_mono_ms();
	if (p->catchup_until != 0 && p->cursor >= p->catchup_until) {
		/* The backlog is through: resync the users it touched, in
		 * case the peer wrote the same mailboxes meanwhile. */
		for (size_t i = 0; i < p->catchup_users.count; i++)
			cl_mark_dirty(p, p->catchup_users.items[i]);
		stor_string_list_free(&p->catchup_users);
		p->catchup_until = 0;
	}
	cl_waiters_check(p->cl);
}

static struct cl_inflight *inflight_find(struct cl_peer *p, uint64_t seq)
{
	for (size_t i = 0; i < p->inflight.count; i++)
		if (p->inflight.items[i].seq == seq)
			return &p->inflight.items[i];
	return NULL;
}

struct cmd_ctx {
	struct cl_peer *p;
	uint64_t seq;
	uint64_t gen;
	char user[STOR_MAX_USER_LEN + 1];
};

/* The peer could not take a change now (a resync holds the mailbox there):
 * start again from the first unacknowledged entry a little later, with
 * fresh bindings, so nothing is skipped and the order is kept.  Answers to
 * what was sent before belong to the old generation and are ignored. */
static void stream_rewind(struct cl_peer *p)
{
	p->stream_gen++;
	p->inflight.count = 0;
	p->next_seq = p->cursor + 1;
	p->blocked = false;
	binds_clear(p, true);
	p->retry_at = clock_mono_ms() + CL_STREAM_RETRY_MS;
}

static void stream_cmd_cb(struct proto_conn *conn, enum proto_reply_kind kind,
			  const struct proto_cmd *line, void *ctx)
{
	struct cmd_ctx *cc = ctx;
	if (kind == PROTO_REPLY_DATA)
		return;
	struct cl_peer *p = cc->p;
	if (cc->gen != p->stream_gen || p->conn == NULL) {
		free(cc);
		return;
	}
	if (kind == PROTO_REPLY_DONE && proto_code_has(line, "TRYLATER")) {
		stream_rewind(p);
		free(cc);
		return;
	}
	if (kind == PROTO_REPLY_DONE) {
		if (strcmp(line->name, "OK") != 0) {
			/* A conflict (UIDCONFLICT, ALREADYEXISTS, ...) or a
			 * store that could not take it: the two copies differ;
			 * a resync settles it.  Until then the peer does not
			 * hold the user's changes from this entry on. */
			bool store = proto_code_has(line, "SERVERBUG");
			if (store && !p->store_failed)
				log_warnx("replication: %u could not store a change of %s (%s): it "
					  "no longer counts as a replica until its link comes back "
					  "or a resync succeeds", p->sid, cc->user,
					  line->text != NULL ? line->text : "");
			else
				log_info("replication: %u refused a change of %s: %s %s: resync",
					 p->sid, cc->user, line->name,
					 line->text != NULL ? line->text : "");
			if (store)
				p->store_failed = true;
			unheld_add(p, cc->user, cc->seq, cc->seq);
			cl_mark_dirty(p, cc->user);
		}
		struct cl_inflight *f = inflight_find(p, cc->seq);
		if (f != NULL && f->outstanding > 0)
			f->outstanding--;
		advance(p);
	}
	free(cc);
}

void send_stream_cmd(struct cl_peer *p, uint64_t seq, const char *user)
{
	struct cmd_ctx *cc = xcalloc(1, sizeof(*cc));
	cc->p = p;
	cc->seq = seq;
	cc->gen = p->stream_gen;
	snprintf(cc->user, sizeof(cc->user), "%s", user);
	struct cl_inflight *f = inflight_find(p, seq);
	if (f != NULL)
		f->outstanding++;
	proto_conn_cmd_send(p->conn, CL_STREAM_TIMEOUT_MS, stream_cmd_cb, cc);
}

void wr_origin(struct cl_peer *p, struct proto_wr *w)
{
	proto_wr_atom(w, "ORIGIN");
	proto_wr_u64(w, p->cl->cfg->node_id);
	/* Replicas take it only at the epoch they are in (SPEC.md 9.8). */
	cl_handover_wr_epoch(p->cl, w, 0);
}
