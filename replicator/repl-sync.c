/* repl-sync: the sync engine (sync/) on the peer links; see repl-sync.h.
 *
 * This file: relaying whole lines, the background queue and repl-sync's
 * life.  The server end (repl-sync-server.c), the client runs
 * (repl-sync-run.c) and the periodic check (repl-sync-check.c) have files
 * of their own. */
#include "replicator/repl-sync.h"
#include "replicator/repl-sync-private.h"

#include <ev.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "lib/str.h"
#include "lib/xalloc.h"
#include "protocol/protocol.h"
#include "replicator/repl-private.h"
#include "storage/storage.h"
#include "sync/sync.h"

static const char *const sync_commands[] = {
	"LIST", "MBOX", "SELECT", "SYNC-BEGIN", "SYNC-END", "SAVE", "STORE", "EXPUNGE",
	"UIDFIX", "GONE", "FETCH", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
	"ACL-PUT", "PSEEN",
};

/* ------------------------------------------------------------------ */
/* Relaying whole lines */

/* The length of the first complete line of d[0..len) (literals and final
 * CRLF included), or 0 when it is not complete yet. */
size_t line_length(const unsigned char *d, size_t len)
{
	size_t pos = 0;
	for (;;) {
		const unsigned char *cr = NULL;
		for (size_t i = pos; i + 1 < len; i++) {
			if (d[i] == '\r' && d[i + 1] == '\n') {
				cr = d + i;
				break;
			}
		}
		if (cr == NULL)
			return 0;
		size_t e = (size_t)(cr - d);
		if (e > pos && d[e - 1] == '}') {
			size_t b = e - 1;
			while (b > pos && d[b - 1] >= '0' && d[b - 1] <= '9')
				b--;
			if (b > pos && d[b - 1] == '{' && b < e - 1) {
				uint64_t n = 0;
				/* Stops once past len: n * 10 never wraps. */
				for (size_t i = b; i < e - 1 && n <= len; i++)
					n = n * 10 + (uint64_t)(d[i] - '0');
				if (n > len) /* not all here yet (or absurd) */
					return 0;
				pos = e + 2 + (size_t)n;
				if (pos > len)
					return 0;
				continue;
			}
		}
		return e + 2;
	}
}

/* Splits an engine line into tag, name and the rest (everything after the
 * name up to the final CRLF).  Returns -1 for a line the engine cannot
 * have written. */
int line_split(const unsigned char *d, size_t len, char *tag, size_t tag_size,
	       char *name, size_t name_size, const unsigned char **rest_r, size_t *rest_len_r)
{
	size_t i = 0;
	while (i < len && d[i] != ' ')
		i++;
	if (i == 0 || i >= tag_size || i >= len)
		return -1;
	memcpy(tag, d, i);
	tag[i] = '\0';
	size_t s = ++i;
	while (i < len && d[i] != ' ' && d[i] != '\r')
		i++;
	if (i == s || i - s >= name_size || !proto_is_atom(d + s, i - s))
		return -1;
	memcpy(name, d + s, i - s);
	name[i - s] = '\0';
	*rest_r = d + i;
	*rest_len_r = len - 2 - i;
	return 0;
}

/* ------------------------------------------------------------------ */

/* ---- Background resyncs ---- */

static void queue_push(struct repl_sync *rs, struct queued *q);

static void queued_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct queued *q = (struct queued *)((char *)w - offsetof(struct queued, retry));
	for (struct queued **qp = &q->rs->retry_list; *qp != NULL; qp = &(*qp)->next) {
		if (*qp == q) {
			*qp = q->next;
			break;
		}
	}
	queue_push(q->rs, q);
}

void queued_done(void *ctx, bool converged, const char *report, size_t report_len,
		 const char *text)
{
	struct queued *q = ctx;
	if (converged)
		log_info("background resync of %s: %s", q->user, text);
	else
		log_warnx("background resync of %s: %s", q->user, text);
	/* Two nodes that resync the same user toward each other refuse each
	 * other (TRYLATER); they try again after different random delays.
	 * Not when shutting down (the run is failed from the destructor). */
	if (!converged && q->attempts + 1 < REPL_SYNC_RETRIES && !q->rs->destroying) {
		q->attempts++;
		double delay = 0.2 * q->attempts + (double)(random() % 1000) / 1000.0;
		ev_timer_init(&q->retry, queued_retry_cb, delay, 0.);
		ev_timer_start(q->rs->loop, &q->retry);
		q->next = q->rs->retry_list;
		q->rs->retry_list = q;
		return;
	}
	free(q->user);
	free(q);
}

void queue_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct repl_sync *rs = (struct repl_sync *)((char *)w - offsetof(struct repl_sync, queue_timer));
	if (rs->run == NULL && rs->waiting != NULL) {
		struct waiting *wt = rs->waiting;
		const char *err;
		rs->waiting = NULL;
		if (repl_sync_start(rs, wt->user, wt->peer, wt->full, wt->cb, wt->ctx, &err) < 0)
			wt->cb(wt->ctx, false, "", 0, err);
		free(wt->user);
		free(wt);
	}
	while (rs->run == NULL && rs->queue != NULL) {
		struct queued *q = rs->queue;
		if (other_server_busy(rs, NULL, q->user, NULL)) {
			/* A peer's resync of this user is being merged here:
			 * ours would work on a moving snapshot.  Later. */
			break;
		}
		rs->queue = q->next;
		if (rs->queue == NULL)
			rs->queue_tail = &rs->queue;
		rs->queue_len--;
		const char *err;
		q->next = NULL;
		if (repl_sync_start(rs, q->user, q->peer, false, queued_done, q, &err) < 0) {
			log_warnx("background resync of %s with %u not started: %s", q->user, q->peer,
				  err);
			free(q->user);
			free(q);
		}
	}
	/* What stops the queue ends with a wake-up, not a poll: a run of
	 * this node (run_finish() arms the timer), a peer's resync of the
	 * user merged here (its end calls sync_released()). */
}

void repl_sync_enqueue(struct repl_sync *rs, const char *user, uint32_t peer)
{
	for (struct queued *q = rs->queue; q != NULL; q = q->next) {
		if (q->peer == peer && strcmp(q->user, user) == 0)
			return;
	}
	if (rs->queue_len >= REPL_SYNC_QUEUE_MAX) {
		log_warnx("background resync queue full: %s with %u dropped (run starling resync)",
			  user, peer);
		return;
	}
	struct queued *q = xcalloc(1, sizeof(*q));
	q->rs = rs;
	q->user = xstrdup(user);
	q->peer = peer;
	queue_push(rs, q);
}

static void queue_push(struct repl_sync *rs, struct queued *q)
{
	q->next = NULL;
	*rs->queue_tail = q;
	rs->queue_tail = &q->next;
	rs->queue_len++;
	if (rs->run == NULL && !ev_is_active(&rs->queue_timer)) {
		ev_timer_set(&rs->queue_timer, 0., 0.);
		ev_timer_start(rs->loop, &rs->queue_timer);
	}
}

size_t repl_sync_queued(const struct repl_sync *rs)
{
	return rs->queue_len;
}

void repl_sync_status(const struct repl_sync *rs, struct buf *out)
{
	buf_appendf(out, "syncs_run: %" PRIu64 "\n", rs->syncs_run);
	buf_appendf(out, "uids_renumbered: %" PRIu64 "\n", rs->uids_renumbered);
}

bool repl_sync_busy_with(const struct repl_sync *rs, uint32_t sid)
{
	const struct run *run = rs->run;
	return run != NULL && run->cur < run->npeers && run->peers[run->cur] == sid;
}

bool repl_sync_holds(const struct repl_sync *rs, const char *user, const struct guid *mailbox)
{
	if (rs->run != NULL && strcmp(rs->run->user, user) == 0)
		return true;
	if (mailbox == NULL)
		return false;
	for (const struct srv_link *l = rs->links; l != NULL; l = l->next) {
		struct guid g;
		if ((sync_server_in_sync(l->server) || sync_server_busy(l->server)) &&
		    sync_server_selected(l->server, &g) && guid_equal(&g, mailbox))
			return true;
	}
	return false;
}

void repl_sync_set_live(struct repl_sync *rs, repl_sync_live_cb *cb, void *ctx)
{
	rs->live_cb = cb;
	rs->live_ctx = ctx;
}

void repl_sync_set_peer_watch(struct repl_sync *rs, repl_sync_peer_cb *cb, void *ctx)
{
	rs->peer_cb = cb;
	rs->peer_ctx = ctx;
}

void repl_sync_set_idle(struct repl_sync *rs, repl_sync_idle_cb *cb, void *ctx)
{
	rs->idle_cb = cb;
	rs->idle_ctx = ctx;
}

void repl_sync_set_released(struct repl_sync *rs, repl_sync_released_cb *cb, void *ctx)
{
	rs->released_cb = cb;
	rs->released_ctx = ctx;
}

void sync_released(struct repl_sync *rs)
{
	/* The background queue may have stopped at this hold (queue_timer_cb). */
	if (rs->run == NULL && rs->queue != NULL && !rs->destroying &&
	    !ev_is_active(&rs->queue_timer)) {
		ev_timer_set(&rs->queue_timer, 0., 0.);
		ev_timer_start(rs->loop, &rs->queue_timer);
	}
	if (rs->released_cb != NULL)
		rs->released_cb(rs->released_ctx);
}

struct repl_sync *repl_sync_create(struct ev_loop *loop, struct repl *repl)
{
	struct repl_sync *rs = xcalloc(1, sizeof(*rs));
	rs->loop = loop;
	rs->repl = repl;
	rs->queue_tail = &rs->queue;
	ev_timer_init(&rs->queue_timer, queue_timer_cb, 0., 0.);
	ev_prepare_init(&rs->flush_w, flush_cb);
	/* Before repl-local's group commit, which then syncs the changes the
	 * answers wait for in the same loop turn. */
	ev_set_priority(&rs->flush_w, EV_MAXPRI);
	ev_idle_init(&rs->srv_idle, srv_idle_cb);
	rs->check_interval = check_interval_default();
	ev_timer_init(&rs->check_timer, check_timer_cb, rs->check_interval, rs->check_interval);
	if (rs->check_interval > 0)
		ev_timer_start(loop, &rs->check_timer);
	return rs;
}

void repl_sync_attach(struct repl_sync *rs, struct repl_peers *peers)
{
	rs->peers = peers;
	for (size_t i = 0; i < sizeof(sync_commands) / sizeof(sync_commands[0]); i++)
		repl_peers_register(peers, sync_commands[i], srv_command, rs);
}

void repl_sync_link_up(struct repl_sync *rs, uint32_t sid)
{
	/* A new link is a new conversation: forget the old one's selection. */
	srv_free(rs, sid);
}

void repl_sync_link_drained(struct repl_sync *rs, uint32_t sid)
{
	struct srv_link *l = srv_find(rs, sid);
	if (l != NULL && sync_server_busy(l->server) && !ev_is_active(&rs->srv_idle))
		ev_idle_start(rs->loop, &rs->srv_idle);
	if (rs->run != NULL && rs->run->client != NULL && rs->run->cur < rs->run->npeers &&
	    rs->run->peers[rs->run->cur] == sid)
		run_kick(rs->run);
}

void repl_sync_link_down(struct repl_sync *rs, uint32_t sid)
{
	srv_free(rs, sid);
	if (rs->run != NULL && rs->run->cur < rs->run->npeers && rs->run->peers[rs->run->cur] == sid)
		run_set_failure(rs->run, "the link went down");
}

void repl_sync_destroy(struct repl_sync **rsp)
{
	struct repl_sync *rs = *rsp;
	if (rs == NULL)
		return;
	*rsp = NULL;
	rs->destroying = true;
	rs->idle_cb = NULL;
	rs->released_cb = NULL;
	ev_timer_stop(rs->loop, &rs->queue_timer);
	while (rs->retry_list != NULL) {
		struct queued *q = rs->retry_list;
		rs->retry_list = q->next;
		ev_timer_stop(rs->loop, &q->retry);
		free(q->user);
		free(q);
	}
	while (rs->queue != NULL) {
		struct queued *q = rs->queue;
		rs->queue = q->next;
		free(q->user);
		free(q);
	}
	if (rs->waiting != NULL) {
		struct waiting *wt = rs->waiting;
		rs->waiting = NULL;
		wt->cb(wt->ctx, false, "", 0, "shutting down");
		free(wt->user);
		free(wt);
	}
	if (rs->run != NULL)
		run_finish(rs->run, false, "shutting down");
	ev_timer_stop(rs->loop, &rs->queue_timer);
	ev_prepare_stop(rs->loop, &rs->flush_w);
	ev_idle_stop(rs->loop, &rs->srv_idle);
	check_stop(rs);
	while (rs->links != NULL)
		srv_free(rs, rs->links->sid);
	srv_orphan_batches(rs);
	run_orphan_notes(rs);
	free(rs);
}
