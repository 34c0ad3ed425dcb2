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
#include <stdint.h>
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

/* ---- Background resyncs ---- */

static void queue_push(struct repl_sync *rs, struct queued *q);

/* ---- Back-off of failing users (REPL_SYNC_BACKOFF_MIN_S) ---- */

static struct backoff *backoff_find(struct repl_sync *rs, const char *user)
{
	for (size_t i = 0; i < rs->backoffs.count; i++)
		if (strcmp(rs->backoffs.items[i].user, user) == 0)
			return &rs->backoffs.items[i];
	return NULL;
}

static void backoff_forget(struct repl_sync *rs, const char *user)
{
	struct backoff *b = backoff_find(rs, user);
	if (b == NULL)
		return;
	free(b->user);
	*b = rs->backoffs.items[--rs->backoffs.count];
}

/* A background resync of user failed (refused_by: the peer whose TRYLATER
 * ended it, or 0): the wait before the next one, in seconds. */
static double backoff_fail(struct repl_sync *rs, const char *user, uint32_t refused_by)
{
	ev_tstamp now = ev_now(rs->loop);
	struct backoff *b = backoff_find(rs, user);
	if (b == NULL) {
		/* Bounded: entries whose wait is long over go first. */
		for (size_t i = 0; i < rs->backoffs.count && rs->backoffs.count >= REPL_SYNC_QUEUE_MAX;) {
			if (rs->backoffs.items[i].next_at + REPL_SYNC_BACKOFF_MAX_S < now) {
				free(rs->backoffs.items[i].user);
				rs->backoffs.items[i] = rs->backoffs.items[--rs->backoffs.count];
			} else {
				i++;
			}
		}
		if (rs->backoffs.count >= REPL_SYNC_QUEUE_MAX)
			return REPL_SYNC_BACKOFF_MAX_S; /* not remembered: no worse than before */
		struct backoff nb = { xstrdup(user), 0, 0, 0 };
		ARRAY_PUSH(&rs->backoffs, nb);
		b = &rs->backoffs.items[rs->backoffs.count - 1];
	}
	b->delay = b->delay <= 0 ? REPL_SYNC_BACKOFF_MIN_S : b->delay * 2;
	if (b->delay > REPL_SYNC_BACKOFF_MAX_S)
		b->delay = REPL_SYNC_BACKOFF_MAX_S;
	double wait = b->delay;
	/* Refused by a lower node id running its own resync of the user:
	 * ours yields, so that the lower one's retry (after its shorter
	 * back-off) finds this node idle. */
	if (refused_by != 0 && rs->peers != NULL && refused_by < repl_peers_my_sid(rs->peers) &&
	    wait < REPL_SYNC_YIELD_S)
		wait = REPL_SYNC_YIELD_S;
	b->failures++;
	b->next_at = now + wait;
	return wait;
}

/* Seconds until a background resync of user may start (0: now). */
static double backoff_left(struct repl_sync *rs, const char *user)
{
	const struct backoff *b = backoff_find(rs, user);
	if (b == NULL)
		return 0;
	double left = b->next_at - ev_now(rs->loop);
	return left > 0 ? left : 0;
}

static bool retry_has(const struct repl_sync *rs, const char *user, uint32_t peer)
{
	for (const struct queued *q = rs->retry_list; q != NULL; q = q->next)
		if (q->peer == peer && strcmp(q->user, user) == 0)
			return true;
	return false;
}

static void queued_retry_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* Waits delay seconds before q goes back to the queue; q is dropped when
 * the same resync waits already. */
static void retry_later(struct repl_sync *rs, struct queued *q, double delay)
{
	if (retry_has(rs, q->user, q->peer)) {
		free(q->user);
		free(q);
		return;
	}
	ev_timer_init(&q->retry, queued_retry_cb, delay, 0.);
	ev_timer_start(rs->loop, &q->retry);
	q->next = rs->retry_list;
	rs->retry_list = q;
}

static void queued_retry_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct queued *q = (struct queued *)((char *)w - offsetof(struct queued, retry));
	(void)loop;
	(void)revents;
	for (struct queued **qp = &q->rs->retry_list; *qp != NULL; qp = &(*qp)->next) {
		if (*qp == q) {
			*qp = q->next;
			break;
		}
	}
	queue_push(q->rs, q);
}

/* One line per failure: with the back-off that is one per step, not one
 * per attempt of a node that cannot succeed (its store failed). */
static void log_failure(struct repl_sync *rs, const char *user, const char *what, double wait)
{
	const struct backoff *b = backoff_find(rs, user);
	unsigned n = b != NULL ? b->failures : 1;
	if (n > 1)
		log_warnx("background resync of %s: %s (failed %u times in a row; next try in %.1f s)",
			  user, what, n, wait);
	else
		log_warnx("background resync of %s: %s (next try in %.1f s)", user, what, wait);
}

void queued_done(void *ctx, bool converged, const char *report, size_t report_len,
		 const char *text)
{
	struct queued *q = ctx;
	struct repl_sync *rs = q->rs;
	(void)report;
	(void)report_len;
	if (converged) {
		backoff_forget(rs, q->user);
		log_info("background resync of %s: %s", q->user, text);
		free(q->user);
		free(q);
		return;
	}
	if (rs->destroying) {
		/* The run is failed from the destructor. */
		log_warnx("background resync of %s: %s", q->user, text);
		free(q->user);
		free(q);
		return;
	}
	double wait = backoff_fail(rs, q->user, rs->finished_refused_by);
	log_failure(rs, q->user, text, wait);
	if (q->attempts + 1 < REPL_SYNC_RETRIES) {
		q->attempts++;
		retry_later(rs, q, wait);
		return;
	}
	free(q->user);
	free(q);
}

void queue_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct repl_sync *rs = (struct repl_sync *)((char *)w - offsetof(struct repl_sync, queue_timer));
	(void)loop;
	(void)revents;
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
		q->next = NULL;
		double left = backoff_left(rs, q->user);
		if (left > 0) {
			/* Asked for while the user's last one failed lately:
			 * it waits for the back-off like a retry. */
			retry_later(rs, q, left);
			continue;
		}
		const char *err;
		if (repl_sync_start(rs, q->user, q->peer, false, queued_done, q, &err) < 0) {
			double wait = backoff_fail(rs, q->user, 0);
			char what[160];
			snprintf(what, sizeof(what), "with %u not started: %s", q->peer, err);
			log_failure(rs, q->user, what, wait);
			free(q->user);
			free(q);
		}
	}
	/* What stops the queue ends with a wake-up, not a poll: a run of
	 * this node (run_finish() arms the timer), a peer's resync of the
	 * user merged here (its end calls sync_released()), a retry's
	 * timer. */
}

void repl_sync_enqueue(struct repl_sync *rs, const char *user, uint32_t peer)
{
	for (struct queued *q = rs->queue; q != NULL; q = q->next) {
		if (q->peer == peer && strcmp(q->user, user) == 0)
			return;
	}
	/* Waiting to be tried again: it runs then. */
	if (retry_has(rs, user, peer))
		return;
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
	/* It may be what the failed runs lacked (no peer was connected, the
	 * link went down): what backs off is tried now, not up to
	 * REPL_SYNC_BACKOFF_MAX_S after the heal.  A link that flaps is
	 * paced by the peer layer's own reconnect back-off. */
	for (size_t i = 0; i < rs->backoffs.count; i++)
		free(rs->backoffs.items[i].user);
	rs->backoffs.count = 0;
	while (rs->retry_list != NULL && !rs->destroying) {
		struct queued *q = rs->retry_list;
		rs->retry_list = q->next;
		ev_timer_stop(rs->loop, &q->retry);
		bool queued = false;
		for (struct queued *o = rs->queue; o != NULL && !queued; o = o->next)
			queued = o->peer == q->peer && strcmp(o->user, q->user) == 0;
		if (queued) {
			free(q->user);
			free(q);
		} else {
			queue_push(rs, q);
		}
	}
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
	for (size_t i = 0; i < rs->backoffs.count; i++)
		free(rs->backoffs.items[i].user);
	ARRAY_FREE(&rs->backoffs);
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
