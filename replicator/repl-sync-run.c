/* The client end: one run (a user toward one peer or every up peer in
 * turn) driving the sync client over the link.  Apart from the queue that
 * starts runs (repl-sync.c) because a run's life is its own state
 * machine. */
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

/* ------------------------------------------------------------------ */
/* Client end */

void run_kick(struct run *run)
{
	ev_idle_start(run->rs->loop, &run->idle);
}

void run_set_failure(struct run *run, const char *why)
{
	if (run->failure == NULL)
		run->failure = xstrdup(why);
	run_kick(run);
}

static void pcmd_unlink(struct pcmd *p)
{
	if (p->run == NULL)
		return;
	if (p->prev != NULL)
		p->prev->next = p->next;
	else
		p->run->pcmds = p->next;
	if (p->next != NULL)
		p->next->prev = p->prev;
	p->run = NULL;
}

static void pcmd_cb(struct proto_conn *conn, enum proto_reply_kind kind,
		    const struct proto_cmd *line, void *ctx)
{
	struct pcmd *p = ctx;
	(void)conn;
	struct run *run = p->run;
	if (run != NULL && kind == PROTO_REPLY_DONE && line != NULL &&
	    strcmp(line->name, "NO") == 0 && proto_code_has(line, "TRYLATER") &&
	    run->cur < run->npeers)
		run->refused_by = run->peers[run->cur];
	if (run != NULL && run->client != NULL && line != NULL) {
		(void)sync_client_answer(run->client, p->id, line);
		run_kick(run);
	}
	if (kind == PROTO_REPLY_DATA)
		return;
	if (run != NULL && (kind == PROTO_REPLY_TIMEOUT || kind == PROTO_REPLY_CLOSED))
		run_set_failure(run, "the link went down");
	pcmd_unlink(p);
	free(p);
}

/* The link owns the wire tags (the engine writes none): each command of
 * the engine goes out under a tag of proto_conn's, and its answer's lines
 * come back (pcmd_cb) with the engine's number of the command. */
static void client_send_cmd(void *ctx, uint32_t id, const char *name, const void *args,
			    size_t args_len)
{
	struct run *run = ctx;
	struct proto_conn *conn = repl_peers_conn(run->rs->peers, run->peers[run->cur]);
	if (conn == NULL) {
		run_set_failure(run, "the link went down");
		return;
	}
	struct pcmd *p = xcalloc(1, sizeof(*p));
	p->id = id;
	p->run = run;
	p->next = run->pcmds;
	if (p->next != NULL)
		p->next->prev = p;
	run->pcmds = p;
	struct proto_wr *w = proto_conn_cmd_begin(conn, name);
	buf_append(w->out, args, args_len);
	/* A dropped command calls pcmd_cb (CLOSED) before returning. */
	(void)proto_conn_cmd_send(conn, 0, pcmd_cb, p);
}

static void run_client_free(struct run *run)
{
	while (run->pcmds != NULL)
		pcmd_unlink(run->pcmds);
	if (run->client != NULL)
		sync_client_destroy(&run->client);
	free(run->failure);
	run->failure = NULL;
}

static void run_client_start(struct run *run)
{
	struct sync_settings set;
	memset(&set, 0, sizeof(set));
	set.peer_sid = run->peers[run->cur];
	set.user = run->user;
	/* --full compares every message once per peer; later syncs of the
	 * run (verifications, repeats) trust the state the full one left. */
	set.full = run->full && !run->verifying && !run->full_done[run->cur];
	run->full_done[run->cur] = run->full_done[run->cur] || set.full;
	struct proto_conn *conn = repl_peers_conn(run->rs->peers, set.peer_sid);
	set.no_rename_stamps = conn == NULL || proto_conn_minor(conn) < PROTO_MIN_MINOR_RSTAMP;
	struct sync_client_link l = { client_send_cmd, run };
	if (run->rs->peer_cb != NULL)
		run->rs->peer_cb(run->rs->peer_ctx, REPL_SYNC_PEER_START, run->user, set.peer_sid);
	run->client = sync_client_create_linked(repl_db(run->rs->repl), &set, &l);
	run_kick(run);
}

void run_finish(struct run *run, bool converged, const char *text)
{
	struct repl_sync *rs = run->rs;
	ev_idle_stop(rs->loop, &run->idle);
	ev_timer_stop(rs->loop, &run->timer);
	ev_timer_stop(rs->loop, &run->sync_timer);
	ev_timer_stop(rs->loop, &run->refused_timer);
	run_client_free(run);
	rs->run = NULL;
	rs->finished_refused_by = converged ? 0 : run->refused_by;
	run->cb(run->ctx, converged, (const char *)run->report.data, run->report.len, text);
	rs->finished_refused_by = 0;
	buf_free(&run->report);
	free(run->not_converged);
	free(run->user);
	free(run);
	/* The next queued resync starts from the loop, not from inside a
	 * callback chain that may be tearing things down. */
	if ((rs->queue != NULL || rs->waiting != NULL) && !ev_is_active(&rs->queue_timer)) {
		ev_timer_set(&rs->queue_timer, 0., 0.);
		ev_timer_start(rs->loop, &rs->queue_timer);
	}
	sync_released(rs);
	if (rs->idle_cb != NULL)
		rs->idle_cb(rs->idle_ctx);
}

static void report_append(struct buf *out, uint32_t peer, const struct sync_report *r)
{
	buf_appendf(out, "peer: %u\n", peer);
	buf_appendf(out, "mailboxes_checked: %u\n", r->mailboxes_checked);
	buf_appendf(out, "mailboxes_synced: %u\n", r->mailboxes_synced);
	buf_appendf(out, "mailboxes_full: %u\n", r->mailboxes_full);
	buf_appendf(out, "mailboxes_created: %u\n", r->mailboxes_created);
	buf_appendf(out, "mailboxes_renamed: %u\n", r->mailboxes_renamed);
	buf_appendf(out, "mailboxes_deleted: %u\n", r->mailboxes_deleted);
	buf_appendf(out, "subscriptions_changed: %u\n", r->subscriptions_changed);
	buf_appendf(out, "acls_changed: %u\n", r->acls_changed);
	buf_appendf(out, "messages_examined: %u\n", r->messages_examined);
	buf_appendf(out, "messages_sent: %u\n", r->messages_sent);
	buf_appendf(out, "messages_present: %u\n", r->messages_present);
	buf_appendf(out, "texts_sent: %u\n", r->texts_sent);
	buf_appendf(out, "messages_received: %u\n", r->messages_received);
	buf_appendf(out, "texts_fetched: %u\n", r->texts_fetched);
	buf_appendf(out, "renumbered: %u\n", r->messages_renumbered);
	buf_appendf(out, "expunged: %u\n", r->messages_expunged);
	buf_appendf(out, "flags_changed: %u\n", r->flags_changed);
}

static void run_notified(void *ctx, bool ok)
{
	struct run_note *n = ctx;
	struct repl_sync *rs = n->rs;
	if (rs != NULL) {
		struct run_note **np = &rs->run_notes;
		while (*np != n)
			np = &(*np)->next;
		*np = n->next;
	}
	stor_mailbox_array list = ARRAY_INIT;
	const char *err;
	if (n->run_id != 0) {
		/* Unless the run ended otherwise meanwhile (timed out, shut
		 * down): then its report is given already. */
		struct run *run = rs != NULL ? rs->run : NULL;
		if (run != NULL && run->id == n->run_id && !ok)
			run_finish(run, false, "storing failed");
		else if (run != NULL && run->id == n->run_id)
			run_finish(run, run->not_converged == NULL,
				   run->not_converged != NULL ? run->not_converged : "converged");
	} else if (rs == NULL) {
		/* shutting down: no watchers any more */
	} else if (!ok) {
		log_errorx("resync of %s: storing failed", n->user);
	} else if (stor_mailbox_list(repl_db(rs->repl), n->user, &list, &err) < 0) {
		log_errorx("resync of %s: listing mailboxes: %s", n->user, err);
	} else {
		for (size_t i = 0; i < list.count; i++)
			repl_notify(rs->repl, n->user, &list.items[i].guid);
	}
	stor_mailbox_list_free(&list);
	free(n->user);
	free(n);
}

/* Tells the watchers about every mailbox of the user (the engine does not
 * say which ones it changed; a watcher told of an unchanged mailbox finds
 * nothing new), once what the sync stored is durable: the group commit
 * syncs it in storage's helper thread, the run goes on meanwhile. */
static void run_notify_all(struct run *run)
{
	struct run_note *n = xcalloc(1, sizeof(*n));
	n->rs = run->rs;
	n->user = xstrdup(run->user);
	n->next = run->rs->run_notes;
	run->rs->run_notes = n;
	stor_on_durable(repl_db(run->rs->repl), run_notified, n);
}

/* The run has synced with every peer: it reports once what it stored is
 * durable, so that "converged" is not said of changes a crash could still
 * take.  Meanwhile it holds the user as before (the links are free). */
static void run_finish_durable(struct run *run)
{
	struct stor_db *db = repl_db(run->rs->repl);
	if (!stor_sync_pending(db)) {
		run_finish(run, run->not_converged == NULL,
			   run->not_converged != NULL ? run->not_converged : "converged");
		return;
	}
	ev_idle_stop(run->rs->loop, &run->idle);
	struct run_note *n = xcalloc(1, sizeof(*n));
	n->rs = run->rs;
	n->user = xstrdup(run->user);
	n->run_id = run->id;
	n->next = run->rs->run_notes;
	run->rs->run_notes = n;
	stor_on_durable(db, run_notified, n);
}

void run_orphan_notes(struct repl_sync *rs)
{
	for (struct run_note *n = rs->run_notes; n != NULL; n = n->next)
		n->rs = NULL;
	rs->run_notes = NULL;
}

static void run_next_peer(struct run *run);

/* Whether a sync found anything to do: a mailbox to sync or a change of
 * the mailbox lists.  A sync that found nothing compared every mailbox
 * (UIDNEXT, HIGHESTMODSEQ, digest) and the lists, and found them equal. */
static bool report_changed(const struct sync_report *r)
{
	return r->mailboxes_synced != 0 || r->mailboxes_created != 0 ||
	       r->mailboxes_renamed != 0 || r->mailboxes_deleted != 0 ||
	       r->subscriptions_changed != 0 || r->acls_changed != 0;
}

/* The client of the current peer finished. */
static void run_client_done(struct run *run)
{
	uint32_t peer = run->peers[run->cur];
	const struct sync_report *r = sync_client_report(run->client);
	bool changed = report_changed(r);
	run->rs->syncs_run++;
	run->rs->uids_renumbered += r->messages_renumbered;
	if (changed)
		run_notify_all(run);
	if (changed && r->messages_received + r->messages_expunged + r->flags_changed +
			       r->mailboxes_created + r->mailboxes_renamed + r->mailboxes_deleted +
			       r->subscriptions_changed + r->acls_changed > 0 &&
	    run->rs->peer_cb != NULL)
		run->rs->peer_cb(run->rs->peer_ctx, REPL_SYNC_PEER_CHANGED, run->user, peer);
	if (!run->verifying) {
		run->first = *r;
		report_append(&run->report, peer, r);
		log_info("resync of %s with %u: %u mailboxes synced, %u messages sent, %u received",
			 run->user, peer, r->mailboxes_synced, r->messages_sent, r->messages_received);
		if (changed) {
			run_client_free(run);
			/* Convergence check: a second, ordinary sync must find
			 * every mailbox equal and nothing to merge in the
			 * mailbox lists.  A first sync that found nothing to do
			 * is that check already. */
			run->verifying = true;
			run_client_start(run);
			return;
		}
	}
	bool equal = !changed;
	buf_appendf(&run->report, "converged: %s\n", equal ? "yes" : "no");
	if (equal && run->rs->peer_cb != NULL)
		run->rs->peer_cb(run->rs->peer_ctx, REPL_SYNC_PEER_EQUAL, run->user, peer);
	if (!equal && run->not_converged == NULL) {
		char msg[160];
		snprintf(msg, sizeof(msg),
			 "not converged: peer %u: a second sync still changed %u mailboxes", peer,
			 r->mailboxes_synced + r->mailboxes_created + r->mailboxes_renamed +
				 r->mailboxes_deleted);
		run->not_converged = xstrdup(msg);
	}
	run_client_free(run);
	run->verifying = false;
	run->syncs++;
	/* What this sync brought here may be new to the peers synced before:
	 * they are due again (SPEC.md 10.6), so one resync toward every peer
	 * leaves all of them equal, not only each pair. */
	run->due[run->cur] = false;
	if (report_changed(&run->first)) {
		for (size_t i = 0; i < run->npeers; i++)
			if (i != run->cur)
				run->due[i] = true;
	}
	run_next_peer(run);
}

/* Starts the sync with the next peer that is due, in turn after the
 * current one, or finishes the run. */
static void run_next_peer(struct run *run)
{
	for (size_t k = 1; k <= run->npeers; k++) {
		size_t i = (run->cur + k) % run->npeers;
		if (!run->due[i])
			continue;
		if (run->syncs >= RUN_MAX_SYNCS_PER_PEER * run->npeers) {
			if (run->not_converged == NULL)
				run->not_converged = xstrdup("not converged: the peers kept changing");
			break;
		}
		run->cur = i;
		if (repl_peers_conn(run->rs->peers, run->peers[i]) == NULL) {
			run->due[i] = false;
			buf_appendf(&run->report, "peer: %u\nconverged: no\n", run->peers[i]);
			if (run->not_converged == NULL) {
				char msg[96];
				snprintf(msg, sizeof(msg), "peer %u is not connected", run->peers[i]);
				run->not_converged = xstrdup(msg);
			}
			continue;
		}
		run_client_start(run);
		return;
	}
	run->cur = run->npeers; /* busy with nobody */
	run_finish_durable(run);
}

static void run_refused_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct run *run = (struct run *)((char *)w - offsetof(struct run, refused_timer));
	(void)loop;
	(void)revents;
	if (repl_peers_conn(run->rs->peers, run->peers[run->cur]) == NULL) {
		char msg[96];
		snprintf(msg, sizeof(msg), "resync with %u failed: the link went down",
			 run->peers[run->cur]);
		run_finish(run, false, msg);
		return;
	}
	run_client_start(run);
}

/* An asked run refused by the current peer's own run of the user waits
 * for it (REPL_SYNC_REFUSED_MIN_S): whether it was refused, the sync of
 * that peer starts over; nothing was merged yet (the refusal answers the
 * sync's first command of the user or mailbox). */
static bool run_retry_refused(struct run *run)
{
	if (run->cb == queued_done || run->refused_by == 0 ||
	    run->refused_by != run->peers[run->cur] || run->refusals >= REPL_SYNC_REFUSED_MAX)
		return false;
	double wait = REPL_SYNC_REFUSED_MIN_S;
	for (unsigned i = 0; i < run->refusals && wait < REPL_SYNC_BACKOFF_MAX_S; i++)
		wait *= 2;
	if (wait > REPL_SYNC_BACKOFF_MAX_S)
		wait = REPL_SYNC_BACKOFF_MAX_S;
	run->refusals++;
	log_info("resync of %s: node %u runs its own resync of the user; trying again in %.1f s",
		 run->user, run->refused_by, wait);
	run->refused_by = 0;
	ev_idle_stop(run->rs->loop, &run->idle);
	run_client_free(run);
	ev_timer_set(&run->refused_timer, wait, 0.);
	ev_timer_start(run->rs->loop, &run->refused_timer);
	return true;
}

static void run_idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	struct run *run = (struct run *)((char *)w - offsetof(struct run, idle));
	(void)revents;
	if (run->client == NULL) {
		/* Done with every peer, waiting for durability
		 * (run_finish_durable()): a failure to store is reported by
		 * that wait. */
		ev_idle_stop(loop, w);
		return;
	}
	if (run->failure != NULL) {
		char msg[300];
		snprintf(msg, sizeof(msg), "resync with %u failed: %s", run->peers[run->cur],
			 run->failure);
		run_notify_all(run);
		run_finish(run, false, msg);
		return;
	}
	ev_tstamp start = ev_time();
	for (int i = 0; i < MAX_STEPS_PER_TURN && ev_time() - start < TURN_SECONDS; i++) {
		/* Bounded memory: a full sync queues texts faster than a link
		 * carries them; wait for the link's drained event. */
		struct proto_conn *conn = repl_peers_conn(run->rs->peers, run->peers[run->cur]);
		if (conn != NULL && proto_conn_is_congested(conn)) {
			log_debug("resync of %s: link to %u congested, waiting", run->user,
				  run->peers[run->cur]);
			ev_idle_stop(loop, w);
			return;
		}
		switch (sync_client_step(run->client)) {
		case SYNC_STEP_AGAIN:
			if (run->failure != NULL)
				return; /* next turn reports it */
			continue;
		case SYNC_STEP_WAIT:
			ev_idle_stop(loop, w);
			return;
		case SYNC_STEP_DONE:
			run_client_done(run);
			return;
		case SYNC_STEP_ERROR: {
			if (run_retry_refused(run))
				return;
			const char *e = sync_client_error(run->client);
			char msg[300];
			snprintf(msg, sizeof(msg), "resync with %u failed: %s", run->peers[run->cur],
				 e != NULL ? e : "unknown error");
			log_warnx("resync of %s: %s", run->user, msg);
			run_notify_all(run);
			run_finish(run, false, msg);
			return;
		}
		}
	}
}

/* A full sync stores hundreds of MB: made durable every
 * RUN_SYNC_INTERVAL, each fsync has little to write, where one at the end
 * could hold the loop (and the link's keepalive) for seconds.  The fsync
 * runs in storage's helper thread (repl-local's watcher completes it); the
 * end of the run waits for durability (run_finish_durable()). */
static void run_sync_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct run *run = (struct run *)((char *)w - offsetof(struct run, sync_timer));
	struct stor_db *db = repl_db(run->rs->repl);
	const char *err;
	(void)revents;
	if (!stor_sync_pending(db) || stor_sync_busy(db))
		return;
	if (stor_sync_fd(db) >= 0) {
		if (stor_sync_start(db) < 0) {
			log_errorx("resync of %s: storing failed", run->user);
			run_set_failure(run, "storing failed");
		}
		return;
	}
	ev_tstamp t0 = ev_time();
	if (stor_sync(db, &err) < 0) {
		log_errorx("resync of %s: storing failed: %s", run->user, err);
		run_set_failure(run, "storing failed");
	}
	ev_tstamp dt = ev_time() - t0;
	/* A long fsync holds the whole loop (links' keepalive included). */
	if (dt > 1.0)
		log_warnx("resync of %s: making changes durable took %.1f s", run->user, dt);
	ev_now_update(loop);
}

static void run_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct run *run = (struct run *)((char *)w - offsetof(struct run, timer));
	(void)loop;
	(void)revents;
	run_finish(run, false, "resync timed out");
}

int repl_sync_start(struct repl_sync *rs, const char *user, uint32_t peer, bool full,
		    repl_sync_done_cb *cb, void *ctx, const char **error_r)
{
	static char errbuf[96];
	if (rs->peers == NULL) {
		*error_r = "no peer links";
		return -1;
	}
	if (rs->run != NULL) {
		/* A background resync (the periodic check's, or one queued by
		 * replication) is waited for; another asked one is refused. */
		if (rs->run->cb != queued_done || rs->waiting != NULL) {
			*error_r = "a resync is already running on this node";
			return -1;
		}
		if (peer != 0 && repl_peers_conn(rs->peers, peer) == NULL) {
			snprintf(errbuf, sizeof(errbuf), "peer %u is not connected", peer);
			*error_r = errbuf;
			return -1;
		}
		struct waiting *wt = xcalloc(1, sizeof(*wt));
		wt->user = xstrdup(user);
		wt->peer = peer;
		wt->full = full;
		wt->cb = cb;
		wt->ctx = ctx;
		rs->waiting = wt;
		return 0;
	}
	struct run *run = xcalloc(1, sizeof(*run));
	run->id = ++rs->run_ids;
	if (peer != 0) {
		if (repl_peers_conn(rs->peers, peer) == NULL) {
			free(run);
			snprintf(errbuf, sizeof(errbuf), "peer %u is not connected", peer);
			*error_r = errbuf;
			return -1;
		}
		run->peers[run->npeers++] = peer;
	} else {
		size_t n = repl_peers_count(rs->peers);
		for (size_t i = 0; i < n && run->npeers < MAX_RUN_PEERS; i++) {
			uint32_t sid = repl_peers_sid(rs->peers, i);
			if (repl_peers_conn(rs->peers, sid) != NULL)
				run->peers[run->npeers++] = sid;
		}
		if (run->npeers == 0) {
			free(run);
			*error_r = "no peer is connected";
			return -1;
		}
	}
	for (size_t i = 0; i < run->npeers; i++)
		run->due[i] = true;
	run->rs = rs;
	run->user = xstrdup(user);
	run->full = full;
	run->cb = cb;
	run->ctx = ctx;
	ev_idle_init(&run->idle, run_idle_cb);
	ev_timer_init(&run->timer, run_timer_cb, REPL_SYNC_TIMEOUT_MS / 1000.0, 0.);
	ev_timer_start(rs->loop, &run->timer);
	ev_timer_init(&run->sync_timer, run_sync_timer_cb, RUN_SYNC_INTERVAL, RUN_SYNC_INTERVAL);
	ev_timer_start(rs->loop, &run->sync_timer);
	ev_init(&run->refused_timer, run_refused_timer_cb);
	rs->run = run;
	run_client_start(run);
	return 0;
}

bool repl_sync_progress(const struct repl_sync *rs, const void *ctx, char *out, size_t size)
{
	if (rs->waiting != NULL && rs->waiting->ctx == ctx) {
		snprintf(out, size, "waiting for a background resync of another user to end");
		return true;
	}
	const struct run *run = rs->run;
	if (run == NULL || run->ctx != ctx)
		return false;
	if (run->client == NULL || run->cur >= run->npeers) {
		snprintf(out, size, "finishing");
		return true;
	}
	const struct sync_report *r = sync_client_report(run->client);
	size_t done = 0;
	for (size_t i = 0; i < run->npeers; i++)
		done += !run->due[i];
	snprintf(out, size,
		 "peer %u%s (%zu of %zu peers done): %u mailboxes checked, %u messages sent, "
		 "%u received",
		 run->peers[run->cur], run->verifying ? " verifying" : "", done, run->npeers,
		 r->mailboxes_checked, r->messages_sent, r->messages_received);
	return true;
}
