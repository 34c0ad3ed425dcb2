/* The replication log itself: its entries and their encoding, appending
 * with the repl_log_max bound (a peer further behind gets a full resync
 * instead), the stored cursors and the trimming below the lowest, and the
 * cluster's prepare watcher and 1 s timer with the peer list they walk.
 * Apart from the streamer, which reads the entries and moves the cursors;
 * repl-stream.c's opening comment tells how the two work together. */
#include "replicator/repl-stream-private.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/xalloc.h"
#include "replicator/repl-sync.h"

/* ---- Entries ---- */

uint64_t wall_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

void cl_entry_free(struct cl_entry *e)
{
	free(e->name);
	free(e->new_name);
	e->name = e->new_name = NULL;
}

static void put_str(struct buf *out, const char *s)
{
	size_t len = s != NULL ? strlen(s) : 0;
	buf_append_be32(out, (uint32_t)len);
	buf_append(out, s, len);
}

void cl_entry_encode(const struct cl_entry *e, struct buf *out)
{
	buf_append_byte(out, (unsigned char)e->kind);
	buf_append_be64(out, wall_ms());
	put_str(out, e->user);
	buf_append(out, e->guid.b, GUID_SIZE);
	put_str(out, e->name);
	put_str(out, e->new_name);
	buf_append_be32(out, e->uidvalidity);
	put_str(out, e->special_use);
}

struct reader {
	const unsigned char *p;
	size_t left;
	bool bad;
};

static const unsigned char *take(struct reader *r, size_t n)
{
	if (r->bad || r->left < n) {
		r->bad = true;
		return NULL;
	}
	const unsigned char *p = r->p;
	r->p += n;
	r->left -= n;
	return p;
}

static uint32_t take_be32(struct reader *r)
{
	const unsigned char *p = take(r, 4);
	return p == NULL ? 0 : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t take_be64(struct reader *r)
{
	uint64_t hi = take_be32(r);
	return hi << 32 | take_be32(r);
}

/* A string of at most max bytes, as a new NUL-terminated copy. */
static char *take_str(struct reader *r, size_t max)
{
	uint32_t len = take_be32(r);
	if (len > max) {
		r->bad = true;
		return NULL;
	}
	const unsigned char *p = take(r, len);
	if (p == NULL || memchr(p, '\0', len) != NULL) {
		r->bad = true;
		return NULL;
	}
	char *s = xmalloc(len + 1);
	memcpy(s, p, len);
	s[len] = '\0';
	return s;
}

int cl_entry_decode(const void *data, size_t len, struct cl_entry *e_r)
{
	struct reader r = { data, len, false };
	memset(e_r, 0, sizeof(*e_r));
	const unsigned char *k = take(&r, 1);
	e_r->kind = k != NULL ? (enum cl_entry_kind)k[0] : 0;
	e_r->wall_ms = take_be64(&r);
	char *user = take_str(&r, STOR_MAX_USER_LEN);
	if (user != NULL)
		strcpy(e_r->user, user);
	free(user);
	const unsigned char *g = take(&r, GUID_SIZE);
	if (g != NULL)
		memcpy(e_r->guid.b, g, GUID_SIZE);
	e_r->name = take_str(&r, STOR_MAX_MAILBOX_NAME_LEN);
	e_r->new_name = take_str(&r, STOR_MAX_MAILBOX_NAME_LEN);
	e_r->uidvalidity = take_be32(&r);
	char *su = take_str(&r, sizeof(e_r->special_use) - 1);
	if (su != NULL)
		strcpy(e_r->special_use, su);
	free(su);
	switch (e_r->kind) {
	case CL_ENTRY_MAILBOX: case CL_ENTRY_CREATE: case CL_ENTRY_DELETE:
	case CL_ENTRY_RENAME: case CL_ENTRY_SUBSCRIBE: case CL_ENTRY_UNSUBSCRIBE:
	case CL_ENTRY_ACL:
		break;
	default:
		r.bad = true;
	}
	if (r.bad || r.left != 0 || e_r->user[0] == '\0') {
		cl_entry_free(e_r);
		return -1;
	}
	return 0;
}

/* ---- The log ---- */

/* Every user gets a resync with a linked peer: it fell off the log. */
static void resync_all_now(struct cl_peer *p)
{
	struct repl_cluster *cl = p->cl;
	stor_string_list users = ARRAY_INIT;
	const char *err;
	if (stor_user_list(cl->repl.db, &users, &err) < 0) {
		log_errorx("replication: listing users: %s", err);
		return;
	}
	log_info("replication: full resync of %zu users with %u", users.count, p->sid);
	for (size_t i = 0; i < users.count; i++)
		repl_sync_enqueue(cl->sync, users.items[i], p->sid);
	stor_string_list_free(&users);
}

/* A peer further behind than repl_log_max no longer holds the log back: a
 * resync of every user replaces the entries it lacks.  Those entries stay
 * unheld for the waiters until each user's resync is done.  A linked peer
 * is only slow: it is resynced at once and streaming goes on with the new
 * entries (marking it full_sync would stop streaming to it until its link
 * went down and up).  One that is away is marked, and resynced when it is
 * back. */
static void check_bound(struct repl_cluster *cl)
{
	uint64_t max = cl->cfg->repl_log_max;
	if (max == 0)
		return;
	for (size_t i = 0; i < cl->peer_list.count; i++) {
		struct cl_peer *p = cl->peer_list.items[i];
		if (p->full_sync || cl->log_last - p->cursor <= max)
			continue;
		bool linked = p->conn != NULL && cl->sync != NULL;
		log_warnx("replication: peer %u is %" PRIu64 " changes behind (repl_log_max %" PRIu64
			  "): it %s a full resync", p->sid, cl->log_last - p->cursor, max,
			  linked ? "gets" : "will get");
		unheld_all(p);
		if (linked) {
			resync_all_now(p);
			/* Answers to what was sent belong to the old generation. */
			p->stream_gen++;
			p->blocked = false;
			binds_clear(p, true);
			for (size_t j = 0; j < p->binds.count; j++)
				p->binds.items[j]->stream_ready = false;
			p->selected_id = 0;
			p->progress_ms = clock_mono_ms();
		} else {
			p->full_sync = true;
			full_sync_store(p);
		}
		p->inflight.count = 0;
		p->cursor = cl->log_last;
		p->next_seq = cl->log_last + 1;
		p->cursor_dirty = true;
		stor_string_list_free(&p->catchup_users);
		p->catchup_until = 0;
	}
}

int cl_log_append(struct repl_cluster *cl, const struct cl_entry *e, uint64_t *seq_r)
{
	struct buf b;
	const char *err;
	buf_init(&b);
	cl_entry_encode(e, &b);
	int ret = stor_log_append(cl->repl.db, b.data, b.len, seq_r, &err);
	buf_free(&b);
	if (ret < 0) {
		log_errorx("replication: cannot append to the log: %s", err);
		return -1;
	}
	/* A peer that had nothing to acknowledge starts its wait now. */
	uint64_t now = clock_mono_ms();
	for (size_t i = 0; i < cl->peer_list.count; i++) {
		struct cl_peer *p = cl->peer_list.items[i];
		if (p->cursor >= cl->log_last)
			p->progress_ms = now;
	}
	cl->log_last = *seq_r;
	check_bound(cl);
	return 0;
}

/* Writes changed cursors and trims what every peer has. */
static void persist_and_trim(struct repl_cluster *cl)
{
	const char *err;
	uint64_t low = cl->log_last;
	for (size_t i = 0; i < cl->peer_list.count; i++) {
		struct cl_peer *p = cl->peer_list.items[i];
		if (p->cursor_dirty) {
			if (stor_log_cursor_set(cl->repl.db, p->sid, p->cursor, &err) < 0)
				log_errorx("replication: storing the cursor of %u: %s", p->sid, err);
			p->cursor_dirty = false;
		}
		if (!p->full_sync && p->cursor < low)
			low = p->cursor;
	}
	uint64_t first, last;
	if (stor_log_bounds(cl->repl.db, &first, &last, &err) == 0 && low >= first &&
	    stor_log_trim(cl->repl.db, low, &err) < 0)
		log_errorx("replication: trimming the log: %s", err);
}

static void prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	struct repl_cluster *cl = (struct repl_cluster *)((char *)w -
							   offsetof(struct repl_cluster, prepare));
	cl_fwd_wake_due(cl);
	cl_stream_pump_all(cl);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct repl_cluster *cl = (struct repl_cluster *)((char *)w -
							   offsetof(struct repl_cluster, timer));
	persist_and_trim(cl);
	cl_stream_pump_all(cl);
	unheld_retry(cl);
	cl_under_check(cl);
	cl_waiters_check(cl);
}

void cl_stream_init(struct repl_cluster *cl)
{
	const char *err;
	uint64_t first;
	if (stor_log_bounds(cl->repl.db, &first, &cl->log_last, &err) < 0)
		log_errorx("replication: reading the log bounds: %s", err);
	for (size_t i = 0; i < cl->cfg->peers.count; i++) {
		struct cl_peer *p = xcalloc(1, sizeof(*p));
		p->cl = cl;
		p->sid = cl->cfg->peers.items[i].sid;
		load_peer(p);
		ARRAY_PUSH(&cl->peer_list, p);
	}
	ev_prepare_init(&cl->prepare, prepare_cb);
	/* Before the group commit's prepare: the replicas' fsyncs then run
	 * while ours does. */
	ev_set_priority(&cl->prepare, EV_MAXPRI);
	ev_prepare_start(cl->loop, &cl->prepare);
	ev_timer_init(&cl->timer, timer_cb, 1., 1.);
	ev_timer_start(cl->loop, &cl->timer);
}

void cl_stream_peers_changed(struct repl_cluster *cl)
{
	for (size_t i = 0; i < cl->peer_list.count; i++) {
		struct cl_peer *p = cl->peer_list.items[i];
		bool configured = false;
		for (size_t j = 0; j < cl->cfg->peers.count && !configured; j++)
			configured = cl->cfg->peers.items[j].sid == p->sid;
		if (!configured && !p->removed) {
			p->removed = true;
			p->full_sync = true;
			full_sync_store(p);
		}
		/* Back again: full_sync is still set, the resync follows. */
		p->removed = !configured;
	}
	for (size_t i = 0; i < cl->cfg->peers.count; i++) {
		uint32_t sid = cl->cfg->peers.items[i].sid;
		if (cl_peer_find(cl, sid) != NULL)
			continue;
		struct cl_peer *p = xcalloc(1, sizeof(*p));
		p->cl = cl;
		p->sid = sid;
		load_peer(p);
		/* This node knows nothing of what the new peer holds (its log
		 * cursor, if any, is from before it was removed): every user
		 * is resynced with it when its link comes up. */
		p->full_sync = true;
		full_sync_store(p);
		ARRAY_PUSH(&cl->peer_list, p);
	}
}

void cl_stream_deinit(struct repl_cluster *cl)
{
	persist_and_trim(cl);
	ev_prepare_stop(cl->loop, &cl->prepare);
	ev_timer_stop(cl->loop, &cl->timer);
	for (size_t i = 0; i < cl->peer_list.count; i++) {
		struct cl_peer *p = cl->peer_list.items[i];
		binds_clear(p, false);
		ARRAY_FREE(&p->binds);
		ARRAY_FREE(&p->inflight);
		stor_string_list_free(&p->catchup_users);
		stor_string_list_free(&p->dirty_users);
		unheld_clear(p);
		free(p);
	}
	ARRAY_FREE(&cl->peer_list);
}
