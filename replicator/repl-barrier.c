/* Read barriers (SPEC.md 8.7, README "read_consistency"): a client that
 * moves between nodes never sees a mailbox go back in time.
 *
 * Before SELECT, EXAMINE, STATUS or LIST-STATUS of a mailbox whose master
 * is another node, this node asks the master for its UIDNEXT and
 * HIGHESTMODSEQ (HIGHEST) and holds the command until it has applied that
 * much itself.  The master is the one cached here, else the one the root
 * recorded; a node that knows neither asks the root, which answers as
 * master or names the master (NOTMASTER MASTER sid).  The mm machine's
 * request for a master is not used: it would make this node master of a
 * granule nobody holds, and a read must not move mastership.  The master streams its changes in modseq order (SPEC.md
 * 8.6), so a copy whose HIGHESTMODSEQ reached the master's answer holds
 * every change the master had made when it answered, which includes every
 * change it had acknowledged to any client when the command arrived here.
 *
 * Autonomy first: a master that is not linked, does not answer, or is not
 * master any more after one more try, and a wait past CL_BARRIER_MAX_MS,
 * all end in an answer from this node's own state, logged at debug level.
 * A master answers its own clients at once. */
#include "replicator/repl-cluster-private.h"

#include <stdlib.h>
#include <string.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "lib/mail-limits.h"
#include "lib/xalloc.h"
#include "replicator/repl-mm.h"
#include "replicator/repl-peer.h"

struct cl_barrier {
	struct cl_barrier *prev, *next;
	struct repl_cluster *cl;
	char *user;
	struct guid mailbox;
	char gkey[MM_GKEY_MAX + 1];
	/* The master's answer: what this node must reach. */
	uint32_t uidvalidity, uidnext;
	uint64_t modseq;
	bool applying;                 /* the master answered: waiting for its stream */
	bool done;                     /* cb was called */
	unsigned asks;                 /* HIGHEST commands sent */
	/* HIGHEST commands not answered yet: their callbacks hold a pointer
	 * to us, so we outlive them. */
	unsigned pending;
	uint64_t start_ms, deadline_ms;
	ev_timer timer;                /* the deadline, a re-check, or "complete now" */
	repl_done_cb *cb;
	void *ctx;
};

struct cl_barriers {
	struct cl_barrier *list;
	size_t live;                   /* not done */
	uint64_t asked;                /* HIGHEST round trips made */
	uint64_t waited;               /* ... after which this node had to catch up */
	uint64_t local;                /* answered from this node's state: no answer, or too late */
};

static void barrier_free(struct cl_barrier *b)
{
	struct cl_barriers *bs = b->cl->barriers;
	if (b->prev != NULL)
		b->prev->next = b->next;
	else
		bs->list = b->next;
	if (b->next != NULL)
		b->next->prev = b->prev;
	ev_timer_stop(b->cl->loop, &b->timer);
	free(b->user);
	free(b);
}

static void maybe_free(struct cl_barrier *b)
{
	if (b->done && b->pending == 0)
		barrier_free(b);
}

/* Calls the caller back: what this node holds now is what it shows. */
static void complete(struct cl_barrier *b)
{
	struct cl_barriers *bs = b->cl->barriers;
	if (b->done)
		return;
	b->done = true;
	bs->live--;
	ev_timer_stop(b->cl->loop, &b->timer);
	struct repl_result res;
	memset(&res, 0, sizeof(res));
	res.error = REPL_OK;
	res.modseq = b->modseq;
	b->cb(b->ctx, &res);
	maybe_free(b);
}

/* Completion always comes from the loop, never from inside the call that
 * started the barrier nor from a watcher of another change. */
static void complete_soon(struct cl_barrier *b)
{
	ev_timer_stop(b->cl->loop, &b->timer);
	ev_timer_set(&b->timer, 0., 0.);
	b->deadline_ms = 0;            /* the timer now means "complete" */
	ev_timer_start(b->cl->loop, &b->timer);
}

static void give_up(struct cl_barrier *b, const char *why)
{
	if (b->done)
		return;
	b->cl->barriers->local++;
	log_debug("replication: read barrier for %s mailbox %s: %s; answering from this node's state",
		  b->user, b->gkey, why);
	complete_soon(b);
}

/* True once this node's copy holds what the master answered (or can never
 * hold it: the mailbox went, or it is another incarnation here). */
static bool reached(struct cl_barrier *b)
{
	struct stor_mailbox mb;
	const char *err;
	int r = stor_mailbox_get_by_guid(b->cl->repl.db, &b->mailbox, &mb, &err);
	if (r <= 0)
		return true;
	bool ok = mb.uidvalidity != b->uidvalidity ||
		  (mb.highestmodseq >= b->modseq && mb.uidnext >= b->uidnext);
	stor_mailbox_free(&mb);
	return ok;
}

static void arm(struct cl_barrier *b)
{
	uint64_t now = clock_mono_ms();
	uint64_t left = b->deadline_ms > now ? b->deadline_ms - now : 0;
	/* Watchers wake us on every applied change; the re-check only covers
	 * a change that reached the store by a way that announces nothing. */
	if (b->applying && left > CL_BARRIER_RECHECK_MS)
		left = CL_BARRIER_RECHECK_MS;
	ev_timer_stop(b->cl->loop, &b->timer);
	ev_timer_set(&b->timer, (double)left / 1000., 0.);
	ev_timer_start(b->cl->loop, &b->timer);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct cl_barrier *b = w->data;
	if (b->done)
		return;
	if (b->deadline_ms == 0 || (b->applying && reached(b))) {
		complete(b);
		return;
	}
	if (clock_mono_ms() >= b->deadline_ms) {
		give_up(b, b->applying ? "not caught up with the master in time" :
			"the master did not answer in time");
		return;
	}
	arm(b);
}

static void send_highest(struct cl_barrier *b, uint32_t to);

/* Whom to ask without asking the mm machine for the master: that request
 * makes the asking node master of a granule that has none, and a read
 * must never move mastership (nor start the catch-up of a new master). */
static void ask_master(struct cl_barrier *b)
{
	struct repl_cluster *cl = b->cl;
	uint32_t self = cl->set.node_id, to = 0, rec;
	if (cl->mm == NULL) {
		give_up(b, "no master can be asked for");
		return;
	}
	to = repl_mm_cached_master(cl->mm, b->gkey);
	if (to == 0 && repl_mm_root_record(cl->mm, b->gkey, &rec) == 1) {
		if (rec == 0) {
			/* Nobody was master at this epoch: no change acknowledged
			 * since it began that this node could lack. */
			give_up(b, "no master at this epoch");
			return;
		}
		to = rec;
	}
	if (to == 0)
		to = repl_mm_root(cl->mm);   /* knows, or is, the master */
	if (to == self) {
		complete_soon(b);
		return;
	}
	if (to == 0) {
		give_up(b, "no master known");
		return;
	}
	send_highest(b, to);
}

static void highest_reply_cb(struct proto_conn *conn, enum proto_reply_kind kind,
			     const struct proto_cmd *line, void *ctx)
{
	struct cl_barrier *b = ctx;
	if (kind == PROTO_REPLY_DATA)
		return;
	b->pending--;
	if (b->done) {
		maybe_free(b);
		return;
	}
	if (kind != PROTO_REPLY_DONE) {
		give_up(b, kind == PROTO_REPLY_TIMEOUT ? "the master did not answer in time" :
			"the link to the master closed");
		return;
	}
	if (strcmp(line->name, "OK") != 0) {
		if (!proto_code_has(line, "NOTMASTER") || b->cl->mm == NULL) {
			give_up(b, "the master refused HIGHEST");
			return;
		}
		uint32_t asked = proto_conn_peer_sid(conn), self = b->cl->set.node_id;
		repl_mm_forget_master(b->cl->mm, b->gkey, asked);
		/* The peer names the master it knows (its cache, or its record
		 * if it is the root); else the root may know. */
		const struct proto_arg *a = proto_code_value(line, "MASTER");
		uint64_t m = 0;
		if (a == NULL || proto_arg_u64(a, UINT32_MAX, &m) < 0 || m == asked)
			m = 0;
		if (m == 0 && asked != repl_mm_root(b->cl->mm))
			m = repl_mm_root(b->cl->mm);
		if (m == self) {
			complete_soon(b);
			return;
		}
		if (m == 0 || m == asked || b->asks >= CL_BARRIER_ASKS) {
			give_up(b, "no master found to ask");
			return;
		}
		send_highest(b, (uint32_t)m);
		return;
	}
	const struct proto_arg *a;
	uint64_t v, n, m;
	if ((a = proto_code_value(line, "UIDVALIDITY")) == NULL || proto_arg_u64(a, UINT32_MAX, &v) < 0 ||
	    v == 0 || (a = proto_code_value(line, "UIDNEXT")) == NULL ||
	    proto_arg_u64(a, MAIL_UIDNEXT_MAX, &n) < 0 || n == 0 ||
	    (a = proto_code_value(line, "HIGHESTMODSEQ")) == NULL ||
	    proto_arg_u64(a, MAIL_MODSEQ_MAX, &m) < 0) {
		give_up(b, "a malformed answer to HIGHEST");
		return;
	}
	b->uidvalidity = (uint32_t)v;
	b->uidnext = (uint32_t)n;
	b->modseq = m;
	b->applying = true;
	if (reached(b)) {
		complete_soon(b);
		return;
	}
	b->cl->barriers->waited++;
	arm(b);
}

static void send_highest(struct cl_barrier *b, uint32_t master)
{
	struct repl_cluster *cl = b->cl;
	struct cl_peer *p = cl_peer_find(cl, master);
	if (p == NULL || p->conn == NULL) {
		/* HIGHEST goes one hop only (SPEC.md 8.7). */
		give_up(b, "the master is not linked to this node");
		return;
	}
	uint64_t now = clock_mono_ms();
	unsigned left = b->deadline_ms > now ? (unsigned)(b->deadline_ms - now) : 1;
	struct proto_wr *w = proto_conn_cmd_begin(p->conn, "HIGHEST");
	proto_wr_cstr(w, b->user);
	proto_wr_guid(w, &b->mailbox);
	b->asks++;
	b->pending++;
	cl->barriers->asked++;
	/* A dropped command calls back with CLOSED before this returns. */
	(void)proto_conn_cmd_send(p->conn, left, highest_reply_cb, b);
}

bool cl_read_barrier(struct repl *r, const char *user, const struct guid *mailbox,
			    repl_done_cb *cb, void *ctx)
{
	struct repl_cluster *cl = to_cl(r);
	struct cl_barriers *bs = cl->barriers;
	char gkey[MM_GKEY_MAX + 1];
	if (cl->cfg->read_consistency == CONFIG_READ_LOCAL || cl->mm == NULL || cl->destroying ||
	    repl_mm_granule_key(cl->mm, user, mailbox, gkey, sizeof(gkey)) < 0 ||
	    repl_mm_is_master(cl->mm, gkey))
		return true;
	if (bs->live >= CL_BARRIER_MAX) {
		bs->local++;
		log_debug("replication: read barrier for %s: %zu already waiting; answering from "
			  "this node's state", user, bs->live);
		return true;
	}
	struct cl_barrier *b = xcalloc(1, sizeof(*b));
	b->cl = cl;
	b->user = xstrdup(user);
	b->mailbox = *mailbox;
	memcpy(b->gkey, gkey, sizeof(gkey));
	b->cb = cb;
	b->ctx = ctx;
	b->start_ms = clock_mono_ms();
	b->deadline_ms = b->start_ms + CL_BARRIER_MAX_MS;
	ev_timer_init(&b->timer, timer_cb, 0., 0.);
	b->timer.data = b;
	b->next = bs->list;
	if (bs->list != NULL)
		bs->list->prev = b;
	bs->list = b;
	bs->live++;
	arm(b);
	ask_master(b);
	return false;
}

/* A change was applied here: barriers waiting for it may be through. */
static void barrier_watch(void *ctx, const char *user, const struct guid *mailbox)
{
	(void)user;
	struct repl_cluster *cl = ctx;
	for (struct cl_barrier *b = cl->barriers->list; b != NULL; b = b->next)
		if (!b->done && b->applying && b->deadline_ms != 0 &&
		    guid_equal(&b->mailbox, mailbox) && reached(b))
			complete_soon(b);
}

/* HIGHEST <user> <mailbox-guid> (SPEC.md 8.7): answered at once, from
 * this node's store, by the mailbox's master only. */
static void highest_cmd(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn,
			const struct proto_cmd *cmd, void *ctx)
{
	(void)peers;
	(void)sid;
	struct repl_cluster *cl = ctx;
	size_t npos;
	const char *err, *user;
	size_t user_len;
	struct guid guid;
	if (proto_cmd_validate(cmd, &npos, &err) < 0 || npos != 2 ||
	    proto_arg_str(&cmd->args[0], &user, &user_len) < 0 || user_len == 0 ||
	    user_len > STOR_MAX_USER_LEN || memchr(user, '\0', user_len) != NULL ||
	    proto_arg_guid(&cmd->args[1], &guid) < 0) {
		proto_conn_reply(conn, cmd->tag, "BAD", "ARGS", "HIGHEST user mailbox-guid");
		return;
	}
	char u[STOR_MAX_USER_LEN + 1];
	memcpy(u, user, user_len);
	u[user_len] = '\0';
	struct stor_mailbox mb;
	int r = stor_mailbox_get_by_guid(cl->repl.db, &guid, &mb, &err);
	if (r < 0) {
		proto_conn_reply(conn, cmd->tag, "NO", "SERVERBUG", err);
		return;
	}
	if (r == 0 || strcmp(mb.user, u) != 0) {
		if (r > 0)
			stor_mailbox_free(&mb);
		proto_conn_reply(conn, cmd->tag, "NO", "NONEXISTENT", "no such mailbox");
		return;
	}
	char gkey[MM_GKEY_MAX + 1];
	char code[96];
	bool have_key = cl->mm != NULL &&
			repl_mm_granule_key(cl->mm, u, &guid, gkey, sizeof(gkey)) == 0;
	if (!have_key || !repl_mm_is_master(cl->mm, gkey)) {
		uint32_t m = have_key ? repl_mm_cached_master(cl->mm, gkey) : 0;
		if (m == 0 && have_key && repl_mm_root_record(cl->mm, gkey, &m) != 1)
			m = 0;
		if (m != 0 && m != cl->set.node_id)
			snprintf(code, sizeof(code), "NOTMASTER MASTER %u EPOCH %llu", m,
				 (unsigned long long)repl_mm_epoch(cl->mm, NULL));
		else
			snprintf(code, sizeof(code), "NOTMASTER");
		proto_conn_reply(conn, cmd->tag, "NO", code, "not the master of this mailbox");
	} else if (cl_handover_waiting(cl, u, NULL)) {
		/* A new master still catching up may lack what its predecessor
		 * acknowledged: its answer would promise too little. */
		proto_conn_reply(conn, cmd->tag, "NO", "TRYLATER", "catching up as new master");
	} else {
		snprintf(code, sizeof(code), "UIDVALIDITY %u UIDNEXT %u HIGHESTMODSEQ %llu",
			 mb.uidvalidity, mb.uidnext, (unsigned long long)mb.highestmodseq);
		proto_conn_reply(conn, cmd->tag, "OK", code, "highest");
	}
	stor_mailbox_free(&mb);
}

void cl_barrier_init(struct repl_cluster *cl)
{
	cl->barriers = xcalloc(1, sizeof(*cl->barriers));
	repl_watch_add(&cl->repl, barrier_watch, cl);
}

void cl_barrier_attach(struct repl_cluster *cl, struct repl_peers *peers)
{
	repl_peers_register(peers, "HIGHEST", highest_cmd, cl);
}

void cl_barrier_detach(struct repl_cluster *cl)
{
	/* Whoever waits gets its answer from this node's state before the
	 * IMAP server goes; the callbacks of requests still out (mm, links)
	 * come when those close, and free what is left. */
	for (struct cl_barrier *b = cl->barriers->list, *next; b != NULL; b = next) {
		next = b->next;
		if (!b->done) {
			cl->barriers->local++;
			complete(b);
		}
	}
}

void cl_barrier_deinit(struct repl_cluster *cl)
{
	if (cl->barriers == NULL)
		return;
	cl_barrier_detach(cl);
	while (cl->barriers->list != NULL)
		barrier_free(cl->barriers->list);
	repl_watch_remove(&cl->repl, barrier_watch, cl);
	free(cl->barriers);
	cl->barriers = NULL;
}

void cl_barrier_status(struct repl_cluster *cl, struct buf *out)
{
	struct cl_barriers *bs = cl->barriers;
	buf_appendf(out, "read_consistency: %s\n",
		    config_read_consistency_name(cl->cfg->read_consistency));
	buf_appendf(out, "read_barriers_waiting: %zu\n", bs->live);
	buf_appendf(out, "read_barriers_asked: %llu\n", (unsigned long long)bs->asked);
	buf_appendf(out, "read_barriers_waited: %llu\n", (unsigned long long)bs->waited);
	buf_appendf(out, "read_barriers_local: %llu\n", (unsigned long long)bs->local);
}
