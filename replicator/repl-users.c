/* The cluster's users: see repl-users.h and SPEC.md 7.5.
 *
 * A change is made where it is asked: stamped, stored and synced here,
 * then sent as USER-PUT to every up peer; the admin request is answered
 * once every up peer answered (or REPL_USERS_ACK_TIMEOUT_MS passed).  A
 * node that applies a USER-PUT (it was newer than its record) makes it
 * durable before it answers, and passes it on to its other up peers, so a
 * partial mesh gets it too; one that already had it (or a newer one)
 * passes nothing, which ends the flood.
 *
 * Records merge as a last-writer-wins register per name (stor_cuser_newer),
 * deletes leaving a tombstone: any two nodes holding the same set of
 * changes hold the same table, whatever order the changes came in, and a
 * late USER-PUT of an older password never revives a deleted user.  So
 * catching up needs no log: a node pulls the whole table (USER-LIST) of a
 * peer whose link comes up, and of every up peer every
 * REPL_USERS_CHECK_INTERVAL_MS, and keeps what is newer. */
#include "replicator/repl-users.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "lib/passwd.h"
#include "lib/xalloc.h"
#include "replicator/repl-peer.h"
#include "storage/storage-users.h"

/* A table of 100,000 users is a few MiB: time enough to send it. */
#define USERS_LIST_TIMEOUT_MS 30000u

struct op;
struct durable_wait;

struct repl_users {
	struct ev_loop *loop;
	const struct config *cfg;
	struct stor_db *db;
	struct repl_peers *peers;
	ev_timer check;
	struct op *ops;
	struct durable_wait *waits;
	size_t count; /* records in the table, for the bound */
};

/* An admin change waiting for its peers' answers. */
struct op {
	struct repl_users *u;
	struct op *prev, *next;
	repl_users_done_cb *cb;
	void *ctx;
	unsigned waiting, acked, configured;
	struct buf missing; /* " 3 (down)" ... */
};

struct put_ctx {
	struct op *op; /* NULL: a passed-on change, nobody waits */
	uint32_t sid;
};

static uint64_t wall_ms(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

/* A change stored here and waiting for the loop's group commit before
 * anyone hears of it: the admin's request goes on to the peers, a peer's
 * USER-PUT is answered, a pull's newer records are passed on.  The fsync
 * runs off the loop (repl-local.c) like every other writer's. */
enum durable_kind { AFTER_ADMIN, AFTER_PUT, AFTER_PULL };

struct durable_wait {
	struct repl_users *u; /* NULL once the table is destroyed */
	struct durable_wait *prev, *next;
	enum durable_kind kind;
	stor_cuser_array records; /* to send on (one for ADMIN and PUT) */
	/* AFTER_ADMIN */
	repl_users_done_cb *cb;
	void *ctx;
	/* AFTER_PUT and AFTER_PULL: the peer, and for PUT the link the
	 * command came on (the same conn, up since the same moment). */
	uint32_t sid;
	struct proto_conn *conn;
	uint64_t link_since_ms;
	char tag[PROTO_MAX_TAG + 1];
};

static void op_start(struct repl_users *u, const struct stor_cuser *r, repl_users_done_cb *cb,
		     void *ctx);
static void send_put(struct repl_users *u, const struct stor_cuser *r, uint32_t except,
		     struct op *op);

static void durable_cb(void *ctx, bool ok)
{
	struct durable_wait *w = ctx;
	struct repl_users *u = w->u;
	if (u != NULL) {
		if (w->prev != NULL)
			w->prev->next = w->next;
		else
			u->waits = w->next;
		if (w->next != NULL)
			w->next->prev = w->prev;
	}
	if (!ok)
		log_errorx("users: the user table could not be made durable");
	switch (w->kind) {
	case AFTER_ADMIN:
		if (!ok || u == NULL)
			w->cb(w->ctx, false, NULL, 0, "cannot store the user (see the node's log)");
		else
			op_start(u, &w->records.items[0], w->cb, w->ctx);
		break;
	case AFTER_PUT: {
		uint64_t since = 0;
		struct proto_conn *conn = NULL;
		if (u != NULL && u->peers != NULL &&
		    repl_peers_state(u->peers, w->sid, &since) == REPL_PEER_UP)
			conn = repl_peers_conn(u->peers, w->sid);
		if (conn != NULL && conn == w->conn && since == w->link_since_ms) {
			if (ok)
				proto_conn_reply(conn, w->tag, "OK", NULL, "applied");
			else
				proto_conn_reply(conn, w->tag, "NO", "SERVERBUG", "cannot store the user");
		}
		if (ok && u != NULL)
			send_put(u, &w->records.items[0], w->sid, NULL);
		break;
	}
	case AFTER_PULL:
		for (size_t i = 0; ok && u != NULL && i < w->records.count; i++)
			send_put(u, &w->records.items[i], w->sid, NULL);
		break;
	}
	stor_cuser_list_free(&w->records);
	free(w);
}

/* Queues w (its records filled in) behind the next group commit. */
static void after_durable(struct repl_users *u, struct durable_wait *w)
{
	w->u = u;
	w->next = u->waits;
	if (u->waits != NULL)
		u->waits->prev = w;
	u->waits = w;
	stor_on_durable(u->db, durable_cb, w);
}

/* ---- Sending ---- */

static void op_finish(struct op *op)
{
	struct repl_users *u = op->u;
	if (op->prev != NULL)
		op->prev->next = op->next;
	else
		u->ops = op->next;
	if (op->next != NULL)
		op->next->prev = op->prev;
	char *text;
	if (op->acked == op->configured)
		text = xasprintf("replicated to %u of %u peers", op->acked, op->configured);
	else
		text = xasprintf("replicated to %u of %u peers; not yet on:%s (they get it when "
				 "their link is up)", op->acked, op->configured,
				 buf_cstr(&op->missing));
	op->cb(op->ctx, true, NULL, 0, text);
	free(text);
	buf_free(&op->missing);
	free(op);
}

static void put_reply_cb(struct proto_conn *conn, enum proto_reply_kind kind,
			 const struct proto_cmd *line, void *ctx)
{
	struct put_ctx *pc = ctx;
	(void)conn;
	if (kind == PROTO_REPLY_DATA)
		return;
	bool ok = kind == PROTO_REPLY_DONE && proto_cmd_is(line, "OK");
	if (!ok)
		log_warnx("users: peer %u did not take a user change (%s)", pc->sid,
			  kind == PROTO_REPLY_TIMEOUT ? "no answer" :
			  kind == PROTO_REPLY_CLOSED ? "link closed" : line->text);
	struct op *op = pc->op;
	if (op != NULL) {
		if (ok)
			op->acked++;
		else
			buf_appendf(&op->missing, " %u (%s)", pc->sid,
				    kind == PROTO_REPLY_TIMEOUT ? "no answer" :
				    kind == PROTO_REPLY_CLOSED ? "link closed" : "refused");
		if (--op->waiting == 0)
			op_finish(op);
	}
	free(pc);
}

static void wr_record(struct proto_wr *w, const struct stor_cuser *r)
{
	proto_wr_cstr(w, r->name);
	proto_wr_u64(w, r->stamp);
	proto_wr_u64(w, r->origin);
	proto_wr_cstr(w, r->hash != NULL ? r->hash : "-");
}

/* Sends the record to every up peer but `except`; counts them in op. */
static void send_put(struct repl_users *u, const struct stor_cuser *r, uint32_t except,
		     struct op *op)
{
	if (u->peers == NULL)
		return;
	for (size_t i = 0; i < repl_peers_count(u->peers); i++) {
		uint32_t sid = repl_peers_sid(u->peers, i);
		if (sid == except)
			continue;
		struct proto_conn *conn = repl_peers_conn(u->peers, sid);
		if (conn == NULL) {
			if (op != NULL)
				buf_appendf(&op->missing, " %u (down)", sid);
			continue;
		}
		struct put_ctx *pc = xcalloc(1, sizeof(*pc));
		pc->op = op;
		pc->sid = sid;
		if (op != NULL)
			op->waiting++;
		struct proto_wr *w = proto_conn_cmd_begin(conn, "USER-PUT");
		wr_record(w, r);
		/* A dropped command has had its CLOSED callback already. */
		(void)proto_conn_cmd_send(conn, REPL_USERS_ACK_TIMEOUT_MS, put_reply_cb, pc);
	}
}

/* ---- Receiving ---- */

/* Parses USER-PUT / USER-ENTRY arguments into r (r->hash allocated). */
static int parse_record(const struct proto_cmd *cmd, struct stor_cuser *r, const char **why_r)
{
	size_t npos;
	memset(r, 0, sizeof(*r));
	if (proto_cmd_validate(cmd, &npos, why_r) < 0)
		return -1;
	if (npos != 4 || cmd->arg_count != 4) {
		*why_r = "expected NAME STAMP ORIGIN HASH";
		return -1;
	}
	const char *name, *hash;
	size_t nlen, hlen;
	uint64_t origin;
	if (proto_arg_str(&cmd->args[0], &name, &nlen) < 0 || !passwd_user_name_valid(name) ||
	    strlen(name) != nlen) {
		*why_r = "invalid user name";
		return -1;
	}
	if (proto_arg_u64(&cmd->args[1], UINT64_MAX, &r->stamp) < 0 ||
	    proto_arg_u64(&cmd->args[2], UINT32_MAX, &origin) < 0 || origin == 0) {
		*why_r = "invalid stamp or origin";
		return -1;
	}
	if (proto_arg_str(&cmd->args[3], &hash, &hlen) < 0 ||
	    (strcmp(hash, "-") != 0 && (!passwd_hash_valid(hash) || strlen(hash) != hlen))) {
		*why_r = "invalid password hash (a {SCHEME} this node verifies, or -)";
		return -1;
	}
	strcpy(r->name, name);
	r->origin = (uint32_t)origin;
	r->hash = strcmp(hash, "-") != 0 ? xstrdup(hash) : NULL;
	return 0;
}

/* Applies r when newer; 1 applied, 0 not, -1 error (logged).  A pull
 * logs one line for all it applied, not one per user. */
static int apply(struct repl_users *u, const struct stor_cuser *r, bool quiet)
{
	struct stor_cuser old;
	const char *err;
	int had = stor_cuser_get(u->db, r->name, &old, &err);
	if (had < 0) {
		log_errorx("users: %s", err);
		return -1;
	}
	if (had > 0)
		stor_cuser_free(&old);
	else if (u->count >= STOR_CUSER_MAX_COUNT) {
		log_warnx("users: table full (%u records): user %s not taken",
			  STOR_CUSER_MAX_COUNT, r->name);
		return -1;
	}
	bool applied;
	if (stor_cuser_put(u->db, r, &applied, &err) < 0) {
		log_errorx("users: %s", err);
		return -1;
	}
	if (applied && had == 0)
		u->count++;
	if (applied && !quiet)
		log_info("users: %s %s (from node %u)", r->hash != NULL ? "set" : "deleted", r->name,
			 r->origin);
	return applied ? 1 : 0;
}

static void put_cmd(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn,
		    const struct proto_cmd *cmd, void *ctx)
{
	struct repl_users *u = ctx;
	struct stor_cuser r;
	const char *why;
	if (parse_record(cmd, &r, &why) < 0) {
		proto_conn_reply(conn, cmd->tag, "BAD", "ARGS", why);
		return;
	}
	int a = apply(u, &r, false);
	if (a <= 0) {
		if (a < 0)
			proto_conn_reply(conn, cmd->tag, "NO", "SERVERBUG", "cannot store the user");
		else
			proto_conn_reply(conn, cmd->tag, "OK", NULL, "held already");
		stor_cuser_free(&r);
		return;
	}
	/* Answered, and passed on, once durable here. */
	struct durable_wait *w = xcalloc(1, sizeof(*w));
	w->kind = AFTER_PUT;
	w->sid = sid;
	w->conn = conn;
	(void)repl_peers_state(peers, sid, &w->link_since_ms);
	snprintf(w->tag, sizeof(w->tag), "%s", cmd->tag);
	ARRAY_PUSH(&w->records, r);
	after_durable(u, w);
}

static void list_cmd(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn,
		     const struct proto_cmd *cmd, void *ctx)
{
	struct repl_users *u = ctx;
	(void)peers;
	(void)sid;
	size_t npos;
	const char *why;
	if (proto_cmd_validate(cmd, &npos, &why) < 0 || cmd->arg_count != 0) {
		proto_conn_reply(conn, cmd->tag, "BAD", "ARGS", "USER-LIST takes no arguments");
		return;
	}
	stor_cuser_array list;
	const char *err;
	if (stor_cuser_list(u->db, &list, &err) < 0) {
		log_errorx("users: %s", err);
		proto_conn_reply(conn, cmd->tag, "NO", "SERVERBUG", "cannot read the user table");
		return;
	}
	for (size_t i = 0; i < list.count; i++) {
		struct proto_wr *w = proto_conn_line_begin(conn, cmd->tag, "USER-ENTRY");
		wr_record(w, &list.items[i]);
		proto_conn_line_end(conn);
	}
	stor_cuser_list_free(&list);
	proto_conn_reply(conn, cmd->tag, "OK", NULL, "listed");
}

/* ---- Pulling a peer's table ---- */

struct pull {
	struct repl_users *u;
	uint32_t sid;
	stor_cuser_array applied;
	bool bad;
};

static void pull_reply_cb(struct proto_conn *conn, enum proto_reply_kind kind,
			  const struct proto_cmd *line, void *ctx)
{
	struct pull *pl = ctx;
	struct repl_users *u = pl->u;
	(void)conn;
	if (kind == PROTO_REPLY_DATA) {
		struct stor_cuser r;
		const char *why;
		if (!proto_cmd_is(line, "USER-ENTRY") || parse_record(line, &r, &why) < 0) {
			if (!pl->bad)
				log_warnx("users: peer %u sent a bad USER-ENTRY line", pl->sid);
			pl->bad = true;
			return;
		}
		if (apply(u, &r, true) > 0)
			ARRAY_PUSH(&pl->applied, r);
		else
			stor_cuser_free(&r);
		return;
	}
	if (kind != PROTO_REPLY_DONE || !proto_cmd_is(line, "OK"))
		log_info("users: pulling the user table of %u failed", pl->sid);
	/* What was applied is kept either way: every record is whole. */
	if (pl->applied.count > 0)
		log_info("users: %zu newer records from node %u", pl->applied.count, pl->sid);
	if (pl->applied.count > 0) {
		/* Passed on once durable here. */
		struct durable_wait *w = xcalloc(1, sizeof(*w));
		w->kind = AFTER_PULL;
		w->sid = pl->sid;
		w->records = pl->applied;
		after_durable(u, w);
	} else {
		stor_cuser_list_free(&pl->applied);
	}
	free(pl);
}

void repl_users_link_up(struct repl_users *u, uint32_t sid, struct proto_conn *conn)
{
	struct pull *pl = xcalloc(1, sizeof(*pl));
	pl->u = u;
	pl->sid = sid;
	(void)proto_conn_cmd_begin(conn, "USER-LIST");
	(void)proto_conn_cmd_send(conn, USERS_LIST_TIMEOUT_MS, pull_reply_cb, pl);
}

static void check_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct repl_users *u = w->data;
	(void)loop;
	(void)revents;
	if (u->peers == NULL)
		return;
	for (size_t i = 0; i < repl_peers_count(u->peers); i++) {
		uint32_t sid = repl_peers_sid(u->peers, i);
		struct proto_conn *conn = repl_peers_conn(u->peers, sid);
		if (conn != NULL)
			repl_users_link_up(u, sid, conn);
	}
}

/* ---- Admin requests ---- */

struct names {
	stor_string_list list;
};

static void file_name_cb(void *ctx, const char *user)
{
	struct names *n = ctx;
	ARRAY_PUSH(&n->list, xstrdup(user));
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void admin_list(struct repl_users *u, repl_users_done_cb *cb, void *ctx)
{
	struct names n = { ARRAY_INIT };
	char *perr = NULL;
	if (u->cfg->users_file != NULL &&
	    passwd_list(u->cfg->users_file, file_name_cb, &n, &perr) < 0) {
		cb(ctx, false, NULL, 0, perr);
		free(perr);
		stor_string_list_free(&n.list);
		return;
	}
	stor_cuser_array list;
	const char *err;
	if (stor_cuser_list(u->db, &list, &err) < 0) {
		cb(ctx, false, NULL, 0, err);
		stor_string_list_free(&n.list);
		return;
	}
	for (size_t i = 0; i < list.count; i++) {
		if (list.items[i].hash != NULL)
			ARRAY_PUSH(&n.list, xstrdup(list.items[i].name));
	}
	stor_cuser_list_free(&list);
	if (n.list.count > 1)
		qsort(n.list.items, n.list.count, sizeof(n.list.items[0]), cmp_str);
	struct buf out = BUF_INIT;
	for (size_t i = 0; i < n.list.count; i++) {
		if (i == 0 || strcmp(n.list.items[i], n.list.items[i - 1]) != 0)
			buf_appendf(&out, "%s\n", n.list.items[i]);
	}
	stor_string_list_free(&n.list);
	cb(ctx, true, out.data, out.len, "");
	buf_free(&out);
}

void repl_users_admin(struct repl_users *u, char **tok, int n, repl_users_done_cb *cb, void *ctx)
{
	if (strcmp(tok[0], "USER-LIST") == 0 && n == 1) {
		admin_list(u, cb, ctx);
		return;
	}
	bool add = strcmp(tok[0], "USER-ADD") == 0 && n == 3;
	bool passwd = strcmp(tok[0], "USER-PASSWD") == 0 && n == 3;
	bool del = strcmp(tok[0], "USER-DEL") == 0 && n == 2;
	if (!add && !passwd && !del) {
		cb(ctx, false, NULL, 0, "bad request: unknown command or wrong argument count");
		return;
	}
	const char *name = tok[1];
	if (!passwd_user_name_valid(name)) {
		cb(ctx, false, NULL, 0,
		   "invalid user name (1-255 of letters, digits and . _ @ + -, not starting with .)");
		return;
	}
	if (!del && !passwd_hash_valid(tok[2])) {
		cb(ctx, false, NULL, 0, "bad request: invalid password hash");
		return;
	}
	bool in_file = false;
	char *perr = NULL;
	if (passwd_file_has(u->cfg->users_file, name, &in_file, &perr) < 0) {
		cb(ctx, false, NULL, 0, perr);
		free(perr);
		return;
	}
	if (in_file) {
		char *text = xasprintf("user %s is in users_file %s, which is read-only here: "
				       "change it there", name, u->cfg->users_file);
		cb(ctx, false, NULL, 0, text);
		free(text);
		return;
	}
	struct stor_cuser old;
	const char *err;
	int had = stor_cuser_get(u->db, name, &old, &err);
	if (had < 0) {
		cb(ctx, false, NULL, 0, err);
		return;
	}
	bool live = had > 0 && old.hash != NULL;
	uint64_t old_stamp = had > 0 ? old.stamp : 0;
	if (had > 0)
		stor_cuser_free(&old);
	if (add && live) {
		cb(ctx, false, NULL, 0, "user exists (use user passwd to change its password)");
		return;
	}
	if (!add && !live) {
		cb(ctx, false, NULL, 0, "no such user");
		return;
	}
	if (had == 0 && u->count >= STOR_CUSER_MAX_COUNT) {
		cb(ctx, false, NULL, 0, "too many users");
		return;
	}
	/* Later than the record it replaces even if this clock is behind the
	 * one that made it: a change made after another one seen here wins. */
	struct stor_cuser r = { .stamp = wall_ms(), .origin = u->cfg->node_id };
	if (r.stamp <= old_stamp)
		r.stamp = old_stamp + 1;
	strcpy(r.name, name);
	r.hash = del ? NULL : xstrdup(tok[2]);
	if (apply(u, &r, false) <= 0) {
		cb(ctx, false, NULL, 0, "cannot store the user (see the node's log)");
		stor_cuser_free(&r);
		return;
	}
	struct durable_wait *w = xcalloc(1, sizeof(*w));
	w->kind = AFTER_ADMIN;
	w->cb = cb;
	w->ctx = ctx;
	ARRAY_PUSH(&w->records, r);
	after_durable(u, w);
}

/* The admin's change is durable here: it goes to every up peer, and the
 * request is answered when they all answered. */
static void op_start(struct repl_users *u, const struct stor_cuser *r, repl_users_done_cb *cb,
		     void *ctx)
{
	struct op *op = xcalloc(1, sizeof(*op));
	op->u = u;
	op->cb = cb;
	op->ctx = ctx;
	op->configured = u->peers != NULL ? (unsigned)repl_peers_count(u->peers) : 0;
	op->next = u->ops;
	if (u->ops != NULL)
		u->ops->prev = op;
	u->ops = op;
	/* Holds the op until every send was made: an answer cannot end it early. */
	op->waiting++;
	send_put(u, r, 0, op);
	if (--op->waiting == 0)
		op_finish(op);
}

/* ---- Life cycle ---- */

struct repl_users *repl_users_create(struct ev_loop *loop, const struct config *cfg,
				     struct stor_db *db)
{
	struct repl_users *u = xcalloc(1, sizeof(*u));
	u->loop = loop;
	u->cfg = cfg;
	u->db = db;
	stor_cuser_array list;
	const char *err;
	if (stor_cuser_list(db, &list, &err) < 0)
		fatalx("users: %s", err);
	u->count = list.count;
	stor_cuser_list_free(&list);
	ev_timer_init(&u->check, check_cb, REPL_USERS_CHECK_INTERVAL_MS / 1000.0,
		      REPL_USERS_CHECK_INTERVAL_MS / 1000.0);
	u->check.data = u;
	return u;
}

void repl_users_attach(struct repl_users *u, struct repl_peers *peers)
{
	u->peers = peers;
	if (peers == NULL)
		return;
	repl_peers_register(peers, "USER-PUT", put_cmd, u);
	repl_peers_register(peers, "USER-LIST", list_cmd, u);
	ev_timer_start(u->loop, &u->check);
	/* The timer alone must not keep the loop running. */
	ev_unref(u->loop);
}

void repl_users_destroy(struct repl_users **up)
{
	struct repl_users *u = *up;
	if (u == NULL)
		return;
	*up = NULL;
	if (ev_is_active(&u->check)) {
		ev_ref(u->loop);
		ev_timer_stop(u->loop, &u->check);
	}
	/* The final group commit still runs their callbacks: they must not
	 * reach the table then. */
	for (struct durable_wait *w = u->waits; w != NULL; w = w->next)
		w->u = NULL;
	/* The links are gone: their answers will not come. */
	while (u->ops != NULL) {
		u->ops->waiting = 0;
		op_finish(u->ops);
	}
	free(u);
}
