/* repl-sync: the sync engine (sync/) on the peer links; see repl-sync.h. */
#include "replicator/repl-sync.h"

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

#define MAX_RUN_PEERS 64
/* A resync toward several peers syncs each again while another one brought
 * changes, at most this many times per peer. */
#define RUN_MAX_SYNCS_PER_PEER 3
/* Work per loop turn of a sync end (client or server): steps until this
 * much time has passed, so that the loop (keepalive, other links, IMAP)
 * always runs soon again. */
#define TURN_SECONDS 0.010
#define RUN_SYNC_INTERVAL 0.25
#define MAX_STEPS_PER_TURN 4096
/* MBOX ids remembered per link to name the selected mailbox (the client
 * rebinds id 1 for every mailbox, so a few are plenty). */
#define SRV_IDS 8

static const char *const sync_commands[] = {
	"LIST", "MBOX", "SELECT", "SYNC-BEGIN", "SYNC-END", "SAVE", "STORE", "EXPUNGE",
	"UIDFIX", "FETCH", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
};

struct srv_id {
	uint32_t id;
	char user[256];
	struct guid guid;
	bool used;
};

/* A mailbox whose IMAP watchers are told once the changes are durable. */
struct srv_note {
	char user[256];
	struct guid guid;
};

/* The server end of one link.  Its answers wait in tx until the end of the
 * loop iteration (srv_flush_all): one stor_sync makes the changes of every
 * command of the iteration durable, then the answers leave. */
struct srv_link {
	struct srv_link *next;
	uint32_t sid;
	struct sync_server *server;
	struct buf tx;
	ARRAY(struct srv_note) notes;
	bool closing; /* the engine failed: BYE once the answers are out */
	struct srv_id ids[SRV_IDS];
	unsigned ids_next;
	int selected; /* index into ids, or -1 */
};

struct run;

/* A client command waiting for its answers on the link. */
struct pcmd {
	struct pcmd *prev, *next;
	struct run *run; /* NULL once the client it belonged to is gone */
	char tag[32];    /* the engine's tag */
};

struct run {
	struct repl_sync *rs;
	char *user;
	bool full;
	uint32_t peers[MAX_RUN_PEERS];
	size_t npeers, cur;
	bool verifying;
	struct sync_client *client;
	struct buf tx;
	struct pcmd *pcmds;
	char *failure; /* set by the link side, seen by the next step */
	struct buf report;
	struct sync_report first;
	char *not_converged;
	bool due[MAX_RUN_PEERS]; /* peers to sync (again) */
	bool full_done[MAX_RUN_PEERS];
	unsigned syncs;          /* syncs done (verifications not counted) */
	ev_idle idle;
	ev_timer timer;
	ev_timer sync_timer; /* makes what the run stored durable, bit by bit */
	repl_sync_done_cb *cb;
	void *ctx;
};

struct chk;
struct chk_job;

/* An asked resync waiting for a background one to end. */
struct waiting {
	char *user;
	uint32_t peer;
	bool full;
	repl_sync_done_cb *cb;
	void *ctx;
};

/* A background resync waiting for its turn (repl_sync_enqueue). */
struct queued {
	struct queued *next;
	struct repl_sync *rs;
	char *user;
	uint32_t peer;
	unsigned attempts;  /* runs that did not converge so far */
	ev_timer retry;     /* a failed one is queued again after it */
};

struct repl_sync {
	struct ev_loop *loop;
	/* Background resyncs waiting to be tried again (queued.retry). */
	struct queued *retry_list;
	bool destroying;
	struct repl *repl;
	struct repl_peers *peers;
	struct srv_link *links;
	struct run *run;
	repl_sync_live_cb *live_cb;
	void *live_ctx;
	repl_sync_peer_cb *peer_cb;
	void *peer_ctx;
	repl_sync_idle_cb *idle_cb;
	void *idle_ctx;
	struct waiting *waiting;
	struct queued *queue, **queue_tail;
	size_t queue_len;
	ev_timer queue_timer;
	ev_prepare flush_w; /* answers of the sync servers leave here */
	ev_idle srv_idle;   /* steps the sync servers with long answers */

	/* The periodic check (see check_timer_cb()). */
	ev_timer check_timer;
	double check_interval;
	ARRAY(struct chk_job) check_jobs; /* this round's (peer, user) pairs */
	size_t check_pos;
	struct chk *chks;                 /* LISTs waiting for answers */
	unsigned chk_inflight;
	stor_string_list suspects_prev, suspects_cur; /* "sid user" that differed */
	unsigned long check_rounds, check_compared, check_differed;
	uint64_t syncs_run, uids_renumbered; /* since start, for status/metrics */
};

/* ------------------------------------------------------------------ */
/* Relaying whole lines */

/* The length of the first complete line of d[0..len) (literals and final
 * CRLF included), or 0 when it is not complete yet. */
static size_t line_length(const unsigned char *d, size_t len)
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
				for (size_t i = b; i < e - 1; i++)
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
static int line_split(const unsigned char *d, size_t len, char *tag, size_t tag_size,
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
/* Server end */

static struct srv_link *srv_find(struct repl_sync *rs, uint32_t sid)
{
	for (struct srv_link *l = rs->links; l != NULL; l = l->next)
		if (l->sid == sid)
			return l;
	return NULL;
}

static void srv_send(void *ctx, const void *data, size_t len)
{
	struct srv_link *l = ctx;
	buf_append(&l->tx, data, len);
}

static struct srv_link *srv_get(struct repl_sync *rs, uint32_t sid)
{
	struct srv_link *l = srv_find(rs, sid);
	if (l != NULL)
		return l;
	l = xcalloc(1, sizeof(*l));
	l->sid = sid;
	l->selected = -1;
	struct sync_transport t = { srv_send, l };
	l->server = sync_server_create(repl_db(rs->repl), sid, &t);
	l->next = rs->links;
	rs->links = l;
	return l;
}

static void srv_free(struct repl_sync *rs, uint32_t sid)
{
	for (struct srv_link **lp = &rs->links; *lp != NULL; lp = &(*lp)->next) {
		if ((*lp)->sid != sid)
			continue;
		struct srv_link *l = *lp;
		*lp = l->next;
		sync_server_destroy(&l->server);
		buf_free(&l->tx);
		ARRAY_FREE(&l->notes);
		free(l);
		return;
	}
}

/* Remembers MBOX bindings and the SELECT, so that the mailbox a message
 * command changed can be named to the watchers. */
static void srv_track(struct srv_link *l, const struct proto_cmd *cmd)
{
	uint32_t id;
	if (proto_cmd_is(cmd, "MBOX") && cmd->arg_count >= 5 &&
	    proto_arg_u32(&cmd->args[0], &id) == 0) {
		const char *user;
		size_t ulen;
		struct guid g;
		if (proto_arg_str(&cmd->args[1], &user, &ulen) < 0 || ulen >= sizeof(l->ids[0].user) ||
		    proto_arg_guid(&cmd->args[4], &g) < 0)
			return;
		int slot = -1;
		for (int i = 0; i < SRV_IDS; i++)
			if (l->ids[i].used && l->ids[i].id == id)
				slot = i;
		if (slot < 0) {
			slot = (int)(l->ids_next++ % SRV_IDS);
			if (l->selected == slot)
				l->selected = -1;
		}
		l->ids[slot].used = true;
		l->ids[slot].id = id;
		memcpy(l->ids[slot].user, user, ulen + 1);
		l->ids[slot].guid = g;
	} else if (proto_cmd_is(cmd, "SELECT") && cmd->arg_count >= 1) {
		l->selected = -1;
		if (proto_arg_u32(&cmd->args[0], &id) < 0)
			return;
		for (int i = 0; i < SRV_IDS; i++)
			if (l->ids[i].used && l->ids[i].id == id)
				l->selected = i;
	}
}

/* The mailbox a command changed, for the watchers: the selected one for
 * message commands, the named GUID for CREATE, DELETE and RENAME. */
static bool srv_changed(const struct srv_link *l, const struct proto_cmd *cmd, char *user,
			size_t user_size, struct guid *g_r)
{
	size_t gpos = 0;
	if (proto_cmd_is(cmd, "CREATE") || proto_cmd_is(cmd, "DELETE"))
		gpos = 2;
	else if (proto_cmd_is(cmd, "RENAME"))
		gpos = 3;
	if (gpos != 0) {
		const char *u;
		size_t ulen;
		if (cmd->arg_count <= gpos || proto_arg_str(&cmd->args[0], &u, &ulen) < 0 ||
		    ulen >= user_size || proto_arg_guid(&cmd->args[gpos], g_r) < 0)
			return false;
		memcpy(user, u, ulen + 1);
		return true;
	}
	if (l->selected < 0)
		return false;
	snprintf(user, user_size, "%s", l->ids[l->selected].user);
	*g_r = l->ids[l->selected].guid;
	return true;
}

/* The mailbox selected on the link (what a SYNC-END or FETCH step works
 * on). */
static bool srv_changed_selected(const struct srv_link *l, char *user, size_t user_size,
				 struct guid *g_r)
{
	if (l->selected < 0)
		return false;
	snprintf(user, user_size, "%s", l->ids[l->selected].user);
	*g_r = l->ids[l->selected].guid;
	return true;
}

/* Live replication rather than a sync: a change its origin already made
 * (option ORIGIN), or a message command outside SYNC-BEGIN ... SYNC-END
 * (a request to this node as master). */
static bool is_live(const struct srv_link *l, const struct proto_cmd *cmd)
{
	for (size_t i = 0; i + 1 < cmd->arg_count; i++) {
		if (cmd->args[i].type == PROTO_ARG_ATOM && strcasecmp(cmd->args[i].str, "ORIGIN") == 0)
			return true;
	}
	if (sync_server_in_sync(l->server))
		return false;
	return proto_cmd_is(cmd, "SAVE") || proto_cmd_is(cmd, "STORE") ||
	       proto_cmd_is(cmd, "EXPUNGE") || proto_cmd_is(cmd, "COPY");
}

static void srv_note_add(struct srv_link *l, const char *user, const struct guid *g)
{
	for (size_t i = 0; i < l->notes.count; i++) {
		if (guid_cmp(&l->notes.items[i].guid, g) == 0 &&
		    strcmp(l->notes.items[i].user, user) == 0)
			return;
	}
	struct srv_note n;
	snprintf(n.user, sizeof(n.user), "%s", user);
	n.guid = *g;
	ARRAY_PUSH(&l->notes, n);
}

/* Relays the engine's lines in l->tx as lines of the link. */
static void srv_relay(struct srv_link *l, struct proto_conn *conn)
{
	while (buf_avail(&l->tx) > 0) {
		const unsigned char *d = buf_rptr(&l->tx);
		size_t n = line_length(d, buf_avail(&l->tx));
		char tag[PROTO_MAX_TAG + 1], name[PROTO_MAX_NAME + 1];
		const unsigned char *rest;
		size_t rest_len;
		if (n == 0 || line_split(d, n, tag, sizeof(tag), name, sizeof(name), &rest, &rest_len) < 0) {
			log_errorx("sync with %u: the engine wrote a broken line", l->sid);
			break;
		}
		struct proto_wr *w = proto_conn_line_begin(conn, tag, name);
		buf_append(w->out, rest, rest_len);
		proto_conn_line_end(conn);
		buf_consume(&l->tx, n);
	}
	buf_reset(&l->tx);
}

static bool srv_has_output(const struct srv_link *l)
{
	return buf_avail(&l->tx) > 0 || l->notes.count > 0 || l->closing;
}

/* The end of a loop iteration: one stor_sync for every change the sync
 * servers made in it, then their answers leave and the IMAP watchers of
 * the changed mailboxes are told. */
static void srv_flush_all(struct repl_sync *rs)
{
	struct stor_db *db = repl_db(rs->repl);
	const char *err;
	bool failed = false;
	ev_prepare_stop(rs->loop, &rs->flush_w);
	if (stor_sync_pending(db) && stor_sync(db, &err) < 0) {
		log_errorx("sync: storing failed: %s", err);
		failed = true;
	}
	for (struct srv_link *l = rs->links; l != NULL; l = l->next) {
		if (!srv_has_output(l))
			continue;
		struct proto_conn *conn = rs->peers != NULL ? repl_peers_conn(rs->peers, l->sid) : NULL;
		if (conn == NULL || failed) {
			buf_reset(&l->tx);
			if (conn != NULL)
				proto_conn_bye(conn, "SERVERBUG", "storage failed");
		} else {
			srv_relay(l, conn);
			if (l->closing) {
				const char *why = sync_server_error(l->server);
				log_warnx("sync with %u: closing the link: %s", l->sid,
					  why != NULL ? why : "error");
				proto_conn_bye(conn, "PROTOCOL", "sync failed");
			}
		}
		l->closing = false;
		if (!failed) {
			for (size_t i = 0; i < l->notes.count; i++) {
				repl_notify(rs->repl, l->notes.items[i].user, &l->notes.items[i].guid);
				if (rs->peer_cb != NULL &&
				    (i == 0 || strcmp(l->notes.items[i - 1].user,
						      l->notes.items[i].user) != 0))
					rs->peer_cb(rs->peer_ctx, REPL_SYNC_PEER_CHANGED,
						    l->notes.items[i].user, l->sid);
			}
		}
		l->notes.count = 0;
	}
}

static void flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	struct repl_sync *rs = (struct repl_sync *)((char *)w - offsetof(struct repl_sync, flush_w));
	(void)loop;
	(void)revents;
	srv_flush_all(rs);
}

static void srv_want_flush(struct repl_sync *rs)
{
	if (!ev_is_active(&rs->flush_w))
		ev_prepare_start(rs->loop, &rs->flush_w);
}

/* Notes what the engine did for a command or a step: the mailbox it
 * changed, and a failure that closes the link after the answers. */
static void srv_after(struct repl_sync *rs, struct srv_link *l, const struct proto_cmd *cmd, int r)
{
	char user[256];
	struct guid g;
	if (stor_sync_pending(repl_db(rs->repl))) {
		if (cmd != NULL ? srv_changed(l, cmd, user, sizeof(user), &g) :
				  srv_changed_selected(l, user, sizeof(user), &g))
			srv_note_add(l, user, &g);
	}
	if (r < 0)
		l->closing = true;
	if (srv_has_output(l) || stor_sync_pending(repl_db(rs->repl)))
		srv_want_flush(rs);
	if (r >= 0 && sync_server_busy(l->server) && !ev_is_active(&rs->srv_idle))
		ev_idle_start(rs->loop, &rs->srv_idle);
}

/* Steps the sync servers that answer SYNC-END or FETCH in parts, each for
 * a bounded time, while their links take output. */
static void srv_idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	struct repl_sync *rs = (struct repl_sync *)((char *)w - offsetof(struct repl_sync, srv_idle));
	(void)revents;
	bool more = false;
	for (struct srv_link *l = rs->links; l != NULL; l = l->next) {
		if (!sync_server_busy(l->server) || l->closing)
			continue;
		struct proto_conn *conn = rs->peers != NULL ? repl_peers_conn(rs->peers, l->sid) : NULL;
		if (conn == NULL)
			continue;
		ev_tstamp start = ev_time();
		int r = 1;
		for (int i = 0; i < MAX_STEPS_PER_TURN && r > 0; i++) {
			r = sync_server_step(l->server);
			/* The answers go to the link (durable first) once they
			 * are worth a write, so that its high water, which
			 * stops the steps, sees them. */
			if (r < 0 || buf_avail(&l->tx) > REPL_SYNC_SERVER_OUT_MAX) {
				srv_after(rs, l, NULL, r);
				srv_flush_all(rs);
			}
			if (r < 0 || proto_conn_is_congested(conn) ||
			    ev_time() - start > TURN_SECONDS)
				break;
		}
		srv_after(rs, l, NULL, r);
		/* The rest of the answers leave at the end of the iteration
		 * (flush_w); a congested link calls repl_sync_link_drained. */
		if (r > 0 && !proto_conn_is_congested(conn))
			more = true;
	}
	if (!more)
		ev_idle_stop(loop, w);
}

/* Two resyncs of one user crossing between two nodes (each the client of
 * the other) would merge the same mailboxes twice at once.  A node whose
 * own run works on the user refuses the peer's (TRYLATER); the refused
 * run fails and a background one is tried again after a random delay. */
/* Whether a server link other than l is merging a mailbox of user (or
 * mailbox itself, when given). */
static bool other_server_busy(const struct repl_sync *rs, const struct srv_link *l,
			      const char *user, const struct guid *mailbox)
{
	for (const struct srv_link *o = rs->links; o != NULL; o = o->next) {
		struct guid g;
		if (o == l || o->selected < 0 ||
		    !(sync_server_in_sync(o->server) || sync_server_busy(o->server)) ||
		    !sync_server_selected(o->server, &g))
			continue;
		if (mailbox != NULL ? guid_equal(&g, mailbox) :
				      strcmp(o->ids[o->selected].user, user) == 0)
			return true;
	}
	return false;
}

static bool refuse_crossing(struct repl_sync *rs, struct srv_link *l, struct proto_conn *conn,
			    const struct proto_cmd *cmd)
{
	/* Two peers merging one mailbox here at once would each work on a
	 * snapshot the other changes. */
	struct guid sel;
	if (proto_cmd_is(cmd, "SYNC-BEGIN") && sync_server_selected(l->server, &sel) &&
	    other_server_busy(rs, l, NULL, &sel)) {
		proto_conn_reply(conn, cmd->tag, "NO", "TRYLATER",
				 "another node resyncs this mailbox here");
		return true;
	}
	if (rs->run == NULL)
		return false;
	const char *user = NULL;
	size_t ulen = 0;
	if (proto_cmd_is(cmd, "LIST") && cmd->arg_count >= 1) {
		if (proto_arg_str(&cmd->args[0], &user, &ulen) < 0)
			return false;
	} else if (proto_cmd_is(cmd, "SYNC-BEGIN") && l->selected >= 0) {
		user = l->ids[l->selected].user;
		ulen = strlen(user);
	} else {
		return false;
	}
	if (strlen(rs->run->user) != ulen || memcmp(rs->run->user, user, ulen) != 0)
		return false;
	proto_conn_reply(conn, cmd->tag, "NO", "TRYLATER", "a resync of this user runs here");
	return true;
}

static void srv_command(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn,
			const struct proto_cmd *cmd, void *ctx)
{
	struct repl_sync *rs = ctx;
	(void)peers;
	(void)conn;
	struct srv_link *l = srv_get(rs, sid);
	srv_track(l, cmd);
	if (rs->live_cb != NULL && is_live(l, cmd)) {
		struct guid g;
		bool sel = sync_server_selected(l->server, &g);
		rs->live_cb(rs->live_ctx, sid, conn, cmd, sel ? &g : NULL);
		return;
	}
	if (refuse_crossing(rs, l, conn, cmd))
		return;
	int r = sync_server_input(l->server, cmd);
	srv_after(rs, l, cmd, r);
}

/* ------------------------------------------------------------------ */
/* Client end */

static void run_kick(struct run *run)
{
	ev_idle_start(run->rs->loop, &run->idle);
}

static void run_set_failure(struct run *run, const char *why)
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
	if (run != NULL && run->client != NULL && line != NULL) {
		struct proto_cmd copy = *line;
		copy.tag = p->tag;
		(void)sync_client_input(run->client, &copy);
		run_kick(run);
	}
	if (kind == PROTO_REPLY_DATA)
		return;
	if (run != NULL && (kind == PROTO_REPLY_TIMEOUT || kind == PROTO_REPLY_CLOSED))
		run_set_failure(run, "the link went down");
	pcmd_unlink(p);
	free(p);
}

static void client_send(void *ctx, const void *data, size_t len)
{
	struct run *run = ctx;
	buf_append(&run->tx, data, len);
	struct proto_conn *conn = repl_peers_conn(run->rs->peers, run->peers[run->cur]);
	while (buf_avail(&run->tx) > 0) {
		const unsigned char *d = buf_rptr(&run->tx);
		size_t n = line_length(d, buf_avail(&run->tx));
		if (n == 0)
			return; /* the rest comes with the next send */
		char tag[32], name[PROTO_MAX_NAME + 1];
		const unsigned char *rest;
		size_t rest_len;
		if (line_split(d, n, tag, sizeof(tag), name, sizeof(name), &rest, &rest_len) < 0) {
			buf_reset(&run->tx);
			run_set_failure(run, "the engine wrote a broken line");
			return;
		}
		if (conn == NULL) {
			buf_reset(&run->tx);
			run_set_failure(run, "the link went down");
			return;
		}
		struct pcmd *p = xcalloc(1, sizeof(*p));
		snprintf(p->tag, sizeof(p->tag), "%s", tag);
		p->run = run;
		p->next = run->pcmds;
		if (p->next != NULL)
			p->next->prev = p;
		run->pcmds = p;
		struct proto_wr *w = proto_conn_cmd_begin(conn, name);
		buf_append(w->out, rest, rest_len);
		buf_consume(&run->tx, n);
		/* A dropped command calls pcmd_cb (CLOSED) before returning. */
		(void)proto_conn_cmd_send(conn, 0, pcmd_cb, p);
	}
	buf_reset(&run->tx);
}

static void run_client_free(struct run *run)
{
	while (run->pcmds != NULL)
		pcmd_unlink(run->pcmds);
	if (run->client != NULL)
		sync_client_destroy(&run->client);
	buf_reset(&run->tx);
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
	struct sync_transport t = { client_send, run };
	if (run->rs->peer_cb != NULL)
		run->rs->peer_cb(run->rs->peer_ctx, REPL_SYNC_PEER_START, run->user, set.peer_sid);
	run->client = sync_client_create(repl_db(run->rs->repl), &set, &t);
	run_kick(run);
}

static void run_finish(struct run *run, bool converged, const char *text)
{
	struct repl_sync *rs = run->rs;
	ev_idle_stop(rs->loop, &run->idle);
	ev_timer_stop(rs->loop, &run->timer);
	ev_timer_stop(rs->loop, &run->sync_timer);
	run_client_free(run);
	rs->run = NULL;
	run->cb(run->ctx, converged, (const char *)run->report.data, run->report.len, text);
	buf_free(&run->report);
	buf_free(&run->tx);
	free(run->not_converged);
	free(run->user);
	free(run);
	/* The next queued resync starts from the loop, not from inside a
	 * callback chain that may be tearing things down. */
	if ((rs->queue != NULL || rs->waiting != NULL) && !ev_is_active(&rs->queue_timer)) {
		ev_timer_set(&rs->queue_timer, 0., 0.);
		ev_timer_start(rs->loop, &rs->queue_timer);
	}
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

/* Tells the watchers about every mailbox of the user (the engine does not
 * say which ones it changed; a watcher told of an unchanged mailbox finds
 * nothing new). */
static void run_notify_all(struct run *run)
{
	struct stor_db *db = repl_db(run->rs->repl);
	const char *err;
	if (stor_sync_pending(db) && stor_sync(db, &err) < 0) {
		log_errorx("resync of %s: storing failed: %s", run->user, err);
		return;
	}
	stor_mailbox_array list = ARRAY_INIT;
	if (stor_mailbox_list(db, run->user, &list, &err) < 0) {
		log_errorx("resync of %s: listing mailboxes: %s", run->user, err);
		return;
	}
	for (size_t i = 0; i < list.count; i++)
		repl_notify(run->rs->repl, run->user, &list.items[i].guid);
	stor_mailbox_list_free(&list);
}

static void run_next_peer(struct run *run);

/* Whether a sync found anything to do: a mailbox to sync or a change of
 * the mailbox lists.  A sync that found nothing compared every mailbox
 * (UIDNEXT, HIGHESTMODSEQ, digest) and the lists, and found them equal. */
static bool report_changed(const struct sync_report *r)
{
	return r->mailboxes_synced != 0 || r->mailboxes_created != 0 ||
	       r->mailboxes_renamed != 0 || r->mailboxes_deleted != 0 ||
	       r->subscriptions_changed != 0;
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
			       r->subscriptions_changed > 0 &&
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
	run_finish(run, run->not_converged == NULL,
		   run->not_converged != NULL ? run->not_converged : "converged");
}

static void run_idle_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
	struct run *run = (struct run *)((char *)w - offsetof(struct run, idle));
	(void)revents;
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
 * end of the run waits for durability with stor_sync(). */
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

static void queued_done(void *ctx, bool converged, const char *report, size_t report_len,
			const char *text);

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
	rs->run = run;
	run_client_start(run);
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

static void queued_done(void *ctx, bool converged, const char *report, size_t report_len,
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

static void queue_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
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
	/* A manual resync holds the node, or a peer's resync of the user
	 * is being merged here: try again shortly. */
	if (rs->queue != NULL && rs->run == NULL) {
		ev_timer_set(&rs->queue_timer, 0.2, 0.);
		ev_timer_start(loop, &rs->queue_timer);
	}
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

/* ------------------------------------------------------------------ */
/* The periodic check (issue 7: "a sync starts by itself ... on a cheap
 * periodic check").  Every check interval, for each up peer and each user
 * with mail here, LIST (SPEC.md 7.4) asks the peer for its mailboxes'
 * names, UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and digest, which are compared with
 * ours: the cost grows with the number of mailboxes, never of messages.  A
 * user that differs is resynced (repl_sync_enqueue) when it differed at the
 * previous round too (a change on its way by live replication differs for
 * a moment only), at once when the peer lacks the user entirely or when a
 * digest differs with equal UIDNEXT and HIGHESTMODSEQ (a divergence that
 * modseqs cannot explain: logged, and the sync compares that mailbox
 * message by message, SPEC.md 10.1).  Of the two ends of a link, the one
 * that initiated it (the lower SID) acts on differences; the other only on
 * a user the peer lacks, which the first cannot list. */

/* Mailboxes and subscriptions in one LIST answer (as the sync client). */
#define CHECK_MAX_MAILBOXES 100000

struct chk_mbox {
	struct guid guid;
	char *name;
	uint32_t uidvalidity, uidnext;
	uint64_t hms;
	unsigned char digest[16];
};

/* One LIST of a round. */
struct chk {
	struct chk *prev, *next;
	struct repl_sync *rs; /* NULL once repl-sync is gone */
	uint32_t sid;
	char *user;
	bool initiator;       /* we initiated the link (we have the lower SID) */
	bool bad;             /* the answer was malformed or too large */
	ARRAY(struct chk_mbox) mbs;
	stor_string_list subs;
};

struct chk_job {
	uint32_t sid;
	char *user;
};

static double check_interval_default(void)
{
	const char *e = getenv("STARLING_SYNC_CHECK_INTERVAL");
	if (e == NULL || *e == '\0')
		return REPL_SYNC_CHECK_INTERVAL;
	char *end;
	double v = strtod(e, &end);
	if (*end != '\0' || !(v >= 0) || v > 86400) {
		log_warnx("STARLING_SYNC_CHECK_INTERVAL=%s is not a number of seconds in "
			  "[0, 86400]; using %u", e, REPL_SYNC_CHECK_INTERVAL);
		return REPL_SYNC_CHECK_INTERVAL;
	}
	if (v > 0 && v < 0.05)
		v = 0.05;
	return v;
}

static void chk_free(struct chk *k)
{
	free(k->user);
	for (size_t i = 0; i < k->mbs.count; i++)
		free(k->mbs.items[i].name);
	ARRAY_FREE(&k->mbs);
	stor_string_list_free(&k->subs);
	free(k);
}

static void chk_unlink(struct chk *k)
{
	struct repl_sync *rs = k->rs;
	if (rs == NULL)
		return;
	if (k->prev != NULL)
		k->prev->next = k->next;
	else
		rs->chks = k->next;
	if (k->next != NULL)
		k->next->prev = k->prev;
	rs->chk_inflight--;
	k->rs = NULL;
}

static int cmp_chk_mbox(const void *a, const void *b)
{
	return guid_cmp(&((const struct chk_mbox *)a)->guid, &((const struct chk_mbox *)b)->guid);
}

static int cmp_stor_mbox(const void *a, const void *b)
{
	return guid_cmp(&((const struct stor_mailbox *)a)->guid,
			&((const struct stor_mailbox *)b)->guid);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *suspect_key(uint32_t sid, const char *user)
{
	return xasprintf("%u %s", sid, user);
}

static bool strlist_has(const stor_string_list *l, const char *s)
{
	for (size_t i = 0; i < l->count; i++)
		if (strcmp(l->items[i], s) == 0)
			return true;
	return false;
}

/* Compares the peer's answer with our copy of the user; queues a resync
 * when they differ (see above).  Returns whether they differ. */
static bool chk_compare(struct repl_sync *rs, struct chk *k)
{
	struct stor_db *db = repl_db(rs->repl);
	stor_mailbox_array mine = ARRAY_INIT;
	stor_string_list subs = ARRAY_INIT;
	const char *err;
	if (stor_mailbox_list(db, k->user, &mine, &err) < 0 ||
	    stor_subscriptions(db, k->user, &subs, &err) < 0) {
		log_errorx("sync check of %s: %s", k->user, err);
		stor_mailbox_list_free(&mine);
		return false;
	}
	if (mine.count > 1)
		qsort(mine.items, mine.count, sizeof(mine.items[0]), cmp_stor_mbox);
	if (k->mbs.count > 1)
		qsort(k->mbs.items, k->mbs.count, sizeof(k->mbs.items[0]), cmp_chk_mbox);
	bool differ = mine.count != k->mbs.count, unexplained = false;
	for (size_t i = 0; i < mine.count && i < k->mbs.count; i++) {
		const struct stor_mailbox *a = &mine.items[i];
		const struct chk_mbox *b = &k->mbs.items[i];
		if (guid_cmp(&a->guid, &b->guid) != 0) {
			differ = true;
			break;
		}
		bool same_state = a->uidvalidity == b->uidvalidity && a->uidnext == b->uidnext &&
				  a->highestmodseq == b->hms;
		/* Names too: two renames that crossed leave equal mailboxes
		 * under different names, which only a resync settles. */
		bool same_name = strcmp(a->name, b->name) == 0;
		bool same_digest = memcmp(a->digest, b->digest, sizeof(b->digest)) == 0;
		if (same_state && !same_digest) {
			log_warnx("sync check: mailbox %s of %s differs from peer %u with equal "
				  "UIDNEXT %u and HIGHESTMODSEQ %llu (digests differ, which modseqs "
				  "cannot explain); its sync compares every message",
				  a->name, k->user, k->sid, a->uidnext,
				  (unsigned long long)a->highestmodseq);
			unexplained = true;
		}
		if (!same_state || !same_digest || !same_name)
			differ = true;
	}
	if (!differ) {
		if (subs.count > 1)
			qsort(subs.items, subs.count, sizeof(char *), cmp_str);
		if (k->subs.count > 1)
			qsort(k->subs.items, k->subs.count, sizeof(char *), cmp_str);
		differ = subs.count != k->subs.count;
		for (size_t i = 0; !differ && i < subs.count; i++)
			differ = strcmp(subs.items[i], k->subs.items[i]) != 0;
	}
	bool peer_lacks = k->mbs.count == 0 && mine.count > 0;
	stor_mailbox_list_free(&mine);
	stor_string_list_free(&subs);
	rs->check_compared++;
	if (!differ)
		return false;
	rs->check_differed++;
	if (!k->initiator && !peer_lacks)
		return true; /* the other end checks this pair */
	char *key = suspect_key(k->sid, k->user);
	if (unexplained || peer_lacks || strlist_has(&rs->suspects_prev, key)) {
		log_info("sync check: %s differs on peer %u: resync queued", k->user, k->sid);
		repl_sync_enqueue(rs, k->user, k->sid);
		free(key);
	} else {
		ARRAY_PUSH(&rs->suspects_cur, key);
	}
	return true;
}

static void chk_pump(struct repl_sync *rs);

static void chk_cb(struct proto_conn *conn, enum proto_reply_kind kind,
		   const struct proto_cmd *line, void *ctx)
{
	struct chk *k = ctx;
	(void)conn;
	if (kind == PROTO_REPLY_DATA) {
		if (k->rs == NULL || k->bad)
			return;
		const char *s;
		size_t len;
		if (k->mbs.count + k->subs.count >= CHECK_MAX_MAILBOXES) {
			k->bad = true;
			return;
		}
		if (proto_cmd_is(line, "SUBSCRIBED") && line->arg_count == 1 &&
		    proto_arg_str(&line->args[0], &s, &len) == 0) {
			ARRAY_PUSH(&k->subs, xstrdup(s));
			return;
		}
		/* Tombstones say what a sync may delete, not what the user
		 * sees: two copies can differ there and still be equal. */
		if ((proto_cmd_is(line, "DELETED") && (line->arg_count == 1 || line->arg_count == 3)) ||
		    (proto_cmd_is(line, "UNSUBSCRIBED") && line->arg_count == 1))
			return;
		struct chk_mbox m;
		struct guid digest;
		uint64_t v;
		if (!proto_cmd_is(line, "MAILBOX") || line->arg_count != 7 ||
		    proto_arg_str(&line->args[0], &s, &len) < 0 ||
		    proto_arg_guid(&line->args[1], &m.guid) < 0 ||
		    proto_arg_u32(&line->args[2], &m.uidvalidity) < 0 ||
		    proto_arg_u32(&line->args[3], &m.uidnext) < 0 ||
		    proto_arg_u64(&line->args[4], INT64_MAX, &v) < 0 ||
		    proto_arg_guid(&line->args[5], &digest) < 0) {
			k->bad = true;
			return;
		}
		m.hms = v;
		memcpy(m.digest, digest.b, sizeof(m.digest));
		m.name = xstrdup(s);
		ARRAY_PUSH(&k->mbs, m);
		return;
	}
	struct repl_sync *rs = k->rs;
	if (rs != NULL && kind == PROTO_REPLY_DONE && proto_cmd_is(line, "OK") && !k->bad)
		chk_compare(rs, k);
	chk_unlink(k);
	chk_free(k);
	if (rs != NULL)
		chk_pump(rs);
}

static void chk_round_end(struct repl_sync *rs)
{
	for (size_t i = 0; i < rs->check_jobs.count; i++)
		free(rs->check_jobs.items[i].user);
	rs->check_jobs.count = 0;
	rs->check_pos = 0;
	stor_string_list_free(&rs->suspects_prev);
	rs->suspects_prev = rs->suspects_cur;
	memset(&rs->suspects_cur, 0, sizeof(rs->suspects_cur));
	rs->check_rounds++;
	if (rs->suspects_prev.count > 0 && rs->check_interval > REPL_SYNC_CHECK_CONFIRM_S) {
		/* A difference live replication does not explain a moment later
		 * is acted on within seconds, not a whole interval later. */
		ev_timer_stop(rs->loop, &rs->check_timer);
		ev_timer_set(&rs->check_timer, REPL_SYNC_CHECK_CONFIRM_S, rs->check_interval);
		ev_timer_start(rs->loop, &rs->check_timer);
	}
}

/* Sends the round's LISTs, a bounded number at a time. */
static void chk_pump(struct repl_sync *rs)
{
	while (rs->chk_inflight < REPL_SYNC_CHECK_INFLIGHT && rs->check_pos < rs->check_jobs.count) {
		struct chk_job *j = &rs->check_jobs.items[rs->check_pos++];
		struct proto_conn *conn = rs->peers != NULL ? repl_peers_conn(rs->peers, j->sid) : NULL;
		if (conn == NULL || !proto_conn_is_ready(conn))
			continue;
		struct chk *k = xcalloc(1, sizeof(*k));
		k->rs = rs;
		k->sid = j->sid;
		k->user = xstrdup(j->user);
		k->next = rs->chks;
		if (k->next != NULL)
			k->next->prev = k;
		rs->chks = k;
		rs->chk_inflight++;
		struct proto_wr *w = proto_conn_cmd_begin(conn, "LIST");
		proto_wr_cstr(w, j->user);
		/* A dropped command calls chk_cb (CLOSED) before returning. */
		const char *tag = proto_conn_cmd_send(conn, REPL_SYNC_CHECK_TIMEOUT_MS, chk_cb, k);
		if (tag != NULL)
			k->initiator = tag[0] == 'C';
	}
	if (rs->check_pos >= rs->check_jobs.count && rs->chk_inflight == 0 &&
	    rs->check_jobs.count > 0)
		chk_round_end(rs);
}

static void check_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct repl_sync *rs = (struct repl_sync *)((char *)w - offsetof(struct repl_sync, check_timer));
	(void)loop;
	(void)revents;
	/* A round still running, or a resync running (it compares anyway). */
	if (rs->check_jobs.count > 0 || rs->run != NULL || rs->peers == NULL)
		return;
	stor_string_list users = ARRAY_INIT;
	const char *err;
	if (stor_user_list(repl_db(rs->repl), &users, &err) < 0) {
		log_errorx("sync check: listing users: %s", err);
		return;
	}
	size_t n = repl_peers_count(rs->peers);
	for (size_t p = 0; p < n; p++) {
		uint32_t sid = repl_peers_sid(rs->peers, p);
		if (repl_peers_conn(rs->peers, sid) == NULL)
			continue;
		for (size_t i = 0; i < users.count; i++) {
			struct chk_job j = { sid, xstrdup(users.items[i]) };
			ARRAY_PUSH(&rs->check_jobs, j);
		}
	}
	stor_string_list_free(&users);
	if (rs->check_jobs.count == 0) {
		/* Nothing to compare: what was suspect is not any more. */
		stor_string_list_free(&rs->suspects_prev);
		memset(&rs->suspects_prev, 0, sizeof(rs->suspects_prev));
		return;
	}
	chk_pump(rs);
}

static void check_stop(struct repl_sync *rs)
{
	ev_timer_stop(rs->loop, &rs->check_timer);
	while (rs->chks != NULL) {
		struct chk *k = rs->chks;
		chk_unlink(k); /* its callback comes later and frees it */
	}
	for (size_t i = 0; i < rs->check_jobs.count; i++)
		free(rs->check_jobs.items[i].user);
	ARRAY_FREE(&rs->check_jobs);
	stor_string_list_free(&rs->suspects_prev);
	stor_string_list_free(&rs->suspects_cur);
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

struct repl_sync *repl_sync_create(struct ev_loop *loop, struct repl *repl)
{
	struct repl_sync *rs = xcalloc(1, sizeof(*rs));
	rs->loop = loop;
	rs->repl = repl;
	rs->queue_tail = &rs->queue;
	ev_timer_init(&rs->queue_timer, queue_timer_cb, 0., 0.);
	ev_prepare_init(&rs->flush_w, flush_cb);
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
	free(rs);
}
