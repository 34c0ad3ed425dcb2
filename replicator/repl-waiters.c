/* Waiting for replicas: when a durable change may complete (held by
 * sync_replicas healthy peers, or degraded as degraded_writes says), the
 * under-replicated count, and the status lines that show both.  Apart
 * from streaming because it only reads what peers hold. */
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

/* ---- Waiting for replicas ---- */

bool peer_healthy(const struct repl_cluster *cl, const struct cl_peer *p, uint64_t now)
{
	if (p->conn == NULL || p->full_sync || p->store_failed)
		return false;
	/* Acknowledgements flowing: nothing waits for it longer than
	 * CL_ACK_WAIT_MS (a resync of another user with it pauses streaming
	 * and counts here once it takes that long). */
	return p->cursor >= cl->log_last || now - p->progress_ms <= CL_ACK_WAIT_MS;
}

unsigned cl_replicas_healthy(struct repl_cluster *cl)
{
	uint64_t now = clock_mono_ms();
	unsigned n = 0;
	for (size_t i = 0; i < cl->peer_list.count; i++)
		if (peer_healthy(cl, cl->peer_list.items[i], now))
			n++;
	return n;
}

bool cl_must_refuse(struct repl_cluster *cl)
{
	return cl_must_refuse_holder(cl, 0);
}

bool cl_must_refuse_holder(struct repl_cluster *cl, uint32_t holder)
{
	if (cl->cfg->degraded_writes != CONFIG_DEGRADED_REFUSE || cl->cfg->sync_replicas == 0)
		return false;
	unsigned healthy = cl_replicas_healthy(cl);
	/* The holder's request just arrived: it counts as healthy (SPEC 8.8)
	 * even when its link to us is not direct or its acks lag. */
	const struct cl_peer *h = holder != 0 ? cl_peer_find(cl, holder) : NULL;
	if (h != NULL && !peer_healthy(cl, h, clock_mono_ms()))
		healthy++;
	return healthy < cl->cfg->sync_replicas;
}

void cl_waiter_add(struct repl_cluster *cl, struct cl_waiter *w)
{
	struct cl_waiter **wp = &cl->waiters;
	while (*wp != NULL)
		wp = &(*wp)->next;
	w->next = NULL;
	w->since_ms = clock_mono_ms();
	*wp = w;
}

/* Peers that hold entry seq of user. */
static unsigned holders(const struct repl_cluster *cl, const char *user, uint64_t seq)
{
	unsigned have = 0;
	for (size_t i = 0; i < cl->peer_list.count; i++)
		if (peer_holds(cl->peer_list.items[i], user, seq))
			have++;
	return have;
}

/* Whether the peer holds everything up to seq, of every user. */
bool peer_holds_all(const struct cl_peer *p, uint64_t seq)
{
	return seq <= p->cursor && p->unheld.count == 0;
}

uint64_t under_count(const struct repl_cluster *cl)
{
	return cl->under.count + cl->under_more;
}

static void under_add(struct repl_cluster *cl, const char *user, uint64_t seq)
{
	if (under_count(cl) == 0)
		log_warnx("replication: a change is held by fewer than sync_replicas (%u) replicas: "
			  "counted in under_replicated until they hold it (degraded_writes = %s)",
			  cl->cfg->sync_replicas, config_degraded_writes_name(cl->cfg->degraded_writes));
	if (cl->under.count >= CL_UNDER_MAX || cl->under_more > 0) {
		/* Too many to remember one by one: counted, and settled
		 * together once enough peers hold everything up to the
		 * highest. */
		cl->under_more++;
		if (seq > cl->under_more_upto)
			cl->under_more_upto = seq;
		return;
	}
	struct cl_under u = { seq, xstrdup(user) };
	ARRAY_PUSH(&cl->under, u);
}

/* A promise is kept once its holder's stream acknowledged the entry, or
 * once enough other peers hold it; one not kept CL_ACK_WAIT_MS after the
 * answer counts as answered degraded (the holder may have died first). */
static void promises_check(struct repl_cluster *cl)
{
	uint64_t now = clock_mono_ms();
	size_t kept = 0;
	for (size_t i = 0; i < cl->promises.count; i++) {
		struct cl_promise *pr = &cl->promises.items[i];
		const struct cl_peer *h = cl_peer_find(cl, pr->holder);
		bool kept_by_holder = h != NULL && peer_holds(h, pr->user, pr->seq);
		if (kept_by_holder || holders(cl, pr->user, pr->seq) >= cl->cfg->sync_replicas) {
			free(pr->user);
		} else if (now - pr->since_ms > CL_ACK_WAIT_MS) {
			log_info("replication: %s: holder %u has not confirmed entry %" PRIu64
				 " in time: under-replicated", pr->user, pr->holder, pr->seq);
			under_add(cl, pr->user, pr->seq);
			free(pr->user);
		} else {
			cl->promises.items[kept++] = *pr;
		}
	}
	cl->promises.count = kept;
}

void cl_promises_free(struct repl_cluster *cl)
{
	for (size_t i = 0; i < cl->promises.count; i++)
		free(cl->promises.items[i].user);
	ARRAY_FREE(&cl->promises);
}

void cl_under_check(struct repl_cluster *cl)
{
	promises_check(cl);
	uint64_t before = under_count(cl);
	if (before == 0)
		return;
	unsigned required = cl->cfg->sync_replicas;
	size_t kept = 0;
	for (size_t i = 0; i < cl->under.count; i++) {
		struct cl_under *u = &cl->under.items[i];
		if (holders(cl, u->user, u->seq) >= required)
			free(u->user);
		else
			cl->under.items[kept++] = *u;
	}
	cl->under.count = kept;
	if (cl->under_more > 0) {
		unsigned have = 0;
		for (size_t i = 0; i < cl->peer_list.count; i++)
			if (peer_holds_all(cl->peer_list.items[i], cl->under_more_upto))
				have++;
		if (have >= required) {
			cl->under_more = 0;
			cl->under_more_upto = 0;
		}
	}
	if (under_count(cl) == 0)
		log_warnx("replication: every change is on sync_replicas (%u) replicas again "
			  "(%" PRIu64 " were under-replicated)", required, before);
}

static void promise_add(struct repl_cluster *cl, const struct cl_waiter *w, uint64_t now)
{
	struct cl_promise pr = { w->seq, now, w->holder, xstrdup(w->user) };
	ARRAY_PUSH(&cl->promises, pr);
}

/* The waiter's fate now: 1 complete, 0 wait.  Sets w->under and
 * w->unavailable when it completes without enough replicas. */
static int waiter_settle(struct repl_cluster *cl, struct cl_waiter *w, uint64_t now)
{
	unsigned required = cl->cfg->sync_replicas;
	if (w->seq == 0 || required == 0)
		return 1;
	unsigned have = holders(cl, w->user, w->seq), could = 0;
	if (have >= required)
		return 1;
	/* The holder of a forwarded SAVE (SPEC 8.8) is one copy already: it
	 * stores the change before its client hears OK.  Counted only while
	 * its promise can be followed up (CL_PROMISE_MAX). */
	const struct cl_peer *h = w->holder != 0 ? cl_peer_find(cl, w->holder) : NULL;
	bool count_holder = h != NULL && !peer_holds(h, w->user, w->seq) &&
			    cl->promises.count < CL_PROMISE_MAX;
	if (count_holder && ++have >= required) {
		w->held = true;
		return 1;
	}
	for (size_t i = 0; i < cl->peer_list.count; i++) {
		const struct cl_peer *p = cl->peer_list.items[i];
		if (p != h && !peer_holds(p, w->user, w->seq) && peer_healthy(cl, p, now))
			could++;
	}
	bool refuse = cl->cfg->degraded_writes == CONFIG_DEGRADED_REFUSE && !w->list_change;
	/* accept waits for every healthy replica that may still answer, even
	 * when they cannot make up sync_replicas; refuse gives up as soon as
	 * they cannot.  Both wait at most CL_ACK_WAIT_MS. */
	bool hopeless = refuse ? have + could < required : could == 0;
	if (!hopeless && now - w->since_ms <= CL_ACK_WAIT_MS)
		return 0;
	w->under = true;
	w->unavailable = refuse;
	w->held = count_holder;
	return 1;
}

void cl_waiters_check(struct repl_cluster *cl)
{
	if (cl->waiters == NULL)
		return;
	uint64_t now = clock_mono_ms();
	/* Done ones are taken out first: their callbacks may add waiters. */
	struct cl_waiter *done = NULL, **done_tail = &done;
	for (struct cl_waiter **wp = &cl->waiters; *wp != NULL;) {
		struct cl_waiter *w = *wp;
		if (w->durable && waiter_settle(cl, w, now)) {
			*wp = w->next;
			w->next = NULL;
			*done_tail = w;
			done_tail = &w->next;
			if (w->under)
				under_add(cl, w->user, w->seq);
			else if (w->held)
				promise_add(cl, w, now);
		} else {
			wp = &w->next;
		}
	}
	while (done != NULL) {
		struct cl_waiter *w = done;
		done = w->next;
		w->done(w);
	}
}

/* Users a peer lacks are resynced with it again now and then (a resync
 * may have failed, or found nothing while the peer's answer was lost). */
void unheld_retry(struct repl_cluster *cl)
{
	if (cl->sync == NULL || repl_sync_queued(cl->sync) > 0)
		return;
	uint64_t now = clock_mono_ms();
	for (size_t i = 0; i < cl->peer_list.count; i++) {
		struct cl_peer *p = cl->peer_list.items[i];
		if (p->conn == NULL || p->full_sync || p->unheld.count == 0 ||
		    now < p->unheld_retry_at || repl_sync_busy_with(cl->sync, p->sid))
			continue;
		for (size_t j = 0; j < p->unheld.count; j++)
			repl_sync_enqueue(cl->sync, p->unheld.items[j].user, p->sid);
		p->unheld_retry_at = now + p->unheld_backoff_s * 1000u;
		if (p->unheld_backoff_s < CL_UNHELD_RETRY_MAX_S)
			p->unheld_backoff_s *= 2;
	}
}

/* ---- Status ---- */

void cl_stream_status(struct repl_cluster *cl, struct buf *out)
{
	const char *err;
	uint64_t first = 0, last = 0;
	(void)stor_log_bounds(cl->repl.db, &first, &last, &err);
	buf_appendf(out, "sync_replicas: %u\n", cl->cfg->sync_replicas);
	buf_appendf(out, "degraded_writes: %s\n",
		    config_degraded_writes_name(cl->cfg->degraded_writes));
	buf_appendf(out, "replicas_available: %u\n", cl_replicas_healthy(cl));
	buf_appendf(out, "under_replicated: %" PRIu64 "\n", under_count(cl));
	buf_appendf(out, "repl_log_first: %" PRIu64 "\n", first);
	buf_appendf(out, "repl_log_last: %" PRIu64 "\n", last);
	buf_appendf(out, "forwarded_changes: %" PRIu64 "\n", cl->forwarded_changes);
	buf_appendf(out, "forwarded_held: %" PRIu64 "\n", cl->forwarded_held);
	buf_appendf(out, "relayed_commands: %" PRIu64 "\n", cl->relayed_commands);
	buf_appendf(out, "relayed_changes: %" PRIu64 "\n", cl->relayed_changes);
	buf_appendf(out, "autonomous_changes: %" PRIu64 "\n", cl->autonomous_changes);
	if (cl->sync != NULL)
		buf_appendf(out, "resyncs_queued: %zu\n", repl_sync_queued(cl->sync));
	uint64_t now = wall_ms(), mono = clock_mono_ms();
	for (size_t i = 0; i < cl->peer_list.count; i++) {
		struct cl_peer *p = cl->peer_list.items[i];
		if (p->removed)
			continue;
		uint64_t backlog = p->full_sync || cl->log_last < p->cursor ? 0 :
								   cl->log_last - p->cursor;
		uint64_t lag = 0;
		if (backlog > 0) {
			stor_log_list list = ARRAY_INIT;
			struct cl_entry e;
			if (stor_log_read(cl->repl.db, p->cursor, 1, &list, &err) == 0 &&
			    list.count > 0 &&
			    cl_entry_decode(list.items[0].data.data, list.items[0].data.len, &e) == 0) {
				lag = now > e.wall_ms ? now - e.wall_ms : 0;
				cl_entry_free(&e);
			}
			stor_log_list_free(&list);
		}
		buf_appendf(out, "peer.%u.backlog: %" PRIu64 "\n", p->sid, backlog);
		buf_appendf(out, "peer.%u.lag_ms: %" PRIu64 "\n", p->sid, lag);
		buf_appendf(out, "peer.%u.full_sync: %s\n", p->sid, p->full_sync ? "yes" : "no");
		buf_appendf(out, "peer.%u.resync_pending_users: %zu\n", p->sid,
			    p->dirty_users.count);
		/* Of the under-replicated changes, those this peer lacks. */
		uint64_t lacks = peer_holds_all(p, cl->under_more_upto) ? 0 : cl->under_more;
		for (size_t j = 0; j < cl->under.count; j++)
			if (!peer_holds(p, cl->under.items[j].user, cl->under.items[j].seq))
				lacks++;
		buf_appendf(out, "peer.%u.under_replicated: %" PRIu64 "\n", p->sid, lacks);
		buf_appendf(out, "peer.%u.healthy: %s\n", p->sid,
			    peer_healthy(cl, p, mono) ? "yes" : "no");
		buf_appendf(out, "peer.%u.resyncing: %s\n", p->sid,
			    cl->sync != NULL && repl_sync_busy_with(cl->sync, p->sid) ? "yes" : "no");
		buf_appendf(out, "peer.%u.store_failed: %s\n", p->sid, p->store_failed ? "yes" : "no");
		buf_appendf(out, "peer.%u.unheld_users: %zu\n", p->sid, p->unheld.count);
	}
}
