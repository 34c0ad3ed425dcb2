/* Tests of the replicating seam that need no peer: the replication log's
 * entry codec (entries come back from disk, so a damaged one must be
 * refused, never trusted), and what a node does alone when no master can
 * be reached: the change is made here and the user is remembered, across
 * a restart, for a resync with each peer. */
#include "tests/replicator/tests.h"

#include <ev.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/config.h"
#include "lib/mail-limits.h"
#include "lib/xalloc.h"
#include "replicator/repl-cluster-private.h"
#include "replicator/repl-stream-private.h"
#include "replicator/repl-cluster.h"
#include "replicator/repl-mm.h"
#include "replicator/repl-peer.h"
#include "replicator/repl-sync.h"
#include "replicator/repl-sync-private.h"
#include "storage/storage-private.h"

/* ---- Entry codec ---- */

static void fill_entry(struct cl_entry *e, enum cl_entry_kind kind)
{
	memset(e, 0, sizeof(*e));
	e->kind = kind;
	snprintf(e->user, sizeof(e->user), "alice@example.com");
	for (int i = 0; i < GUID_SIZE; i++)
		e->guid.b[i] = (unsigned char)(i * 7 + 1);
	e->name = xstrdup("Archive/2026");
	if (kind == CL_ENTRY_RENAME)
		e->new_name = xstrdup("Old \"2026\"");
	e->uidvalidity = 1700000001;
	if (kind == CL_ENTRY_CREATE)
		snprintf(e->special_use, sizeof(e->special_use), "\\Archive");
}

static void test_entry_round_trip_every_kind(void)
{
	static const enum cl_entry_kind kinds[] = {
		CL_ENTRY_MAILBOX, CL_ENTRY_CREATE, CL_ENTRY_DELETE,
		CL_ENTRY_RENAME, CL_ENTRY_SUBSCRIBE, CL_ENTRY_UNSUBSCRIBE,
	};
	for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
		struct cl_entry in, out;
		struct buf b;
		buf_init(&b);
		fill_entry(&in, kinds[k]);
		cl_entry_encode(&in, &b);
		CU_ASSERT_EQUAL_FATAL(cl_entry_decode(b.data, b.len, &out), 0);
		CU_ASSERT_EQUAL(out.kind, in.kind);
		CU_ASSERT_STRING_EQUAL(out.user, in.user);
		CU_ASSERT_EQUAL(memcmp(out.guid.b, in.guid.b, GUID_SIZE), 0);
		CU_ASSERT_STRING_EQUAL(out.name, in.name);
		if (kinds[k] == CL_ENTRY_RENAME)
			CU_ASSERT_STRING_EQUAL(out.new_name, "Old \"2026\"");
		CU_ASSERT_EQUAL(out.uidvalidity, in.uidvalidity);
		CU_ASSERT_STRING_EQUAL(out.special_use, in.special_use);
		/* Stamped with the time it was logged. */
		CU_ASSERT(out.wall_ms > 1600000000000ull);
		cl_entry_free(&in);
		cl_entry_free(&out);
		buf_free(&b);
	}
}

static void test_entry_every_truncation_is_refused(void)
{
	struct cl_entry in, out;
	struct buf b;
	buf_init(&b);
	fill_entry(&in, CL_ENTRY_RENAME);
	cl_entry_encode(&in, &b);
	for (size_t len = 0; len < b.len; len++)
		CU_ASSERT_EQUAL(cl_entry_decode(b.data, len, &out), -1);
	/* One byte too many is damage too. */
	buf_append_byte(&b, 0);
	CU_ASSERT_EQUAL(cl_entry_decode(b.data, b.len, &out), -1);
	cl_entry_free(&in);
	buf_free(&b);
}

static void test_entry_damage_is_refused(void)
{
	struct cl_entry in, out;
	struct buf b;
	buf_init(&b);
	fill_entry(&in, CL_ENTRY_CREATE);
	cl_entry_encode(&in, &b);
	/* An unknown kind. */
	b.data[0] = 'Z';
	CU_ASSERT_EQUAL(cl_entry_decode(b.data, b.len, &out), -1);
	b.data[0] = CL_ENTRY_CREATE;
	CU_ASSERT_EQUAL_FATAL(cl_entry_decode(b.data, b.len, &out), 0);
	cl_entry_free(&out);
	/* The user's length field claims 4 GiB. */
	memset(b.data + 9, 0xff, 4);
	CU_ASSERT_EQUAL(cl_entry_decode(b.data, b.len, &out), -1);
	cl_entry_free(&in);
	buf_free(&b);

	/* A NUL inside a name, and an empty user. */
	buf_init(&b);
	fill_entry(&in, CL_ENTRY_SUBSCRIBE);
	free(in.name);
	in.name = xstrdup("ab");
	cl_entry_encode(&in, &b);
	size_t name_at = 1 + 8 + 4 + strlen(in.user) + GUID_SIZE + 4;
	CU_ASSERT_EQUAL(b.data[name_at], 'a');
	b.data[name_at] = '\0';
	CU_ASSERT_EQUAL(cl_entry_decode(b.data, b.len, &out), -1);
	buf_reset(&b);
	in.user[0] = '\0';
	cl_entry_encode(&in, &b);
	CU_ASSERT_EQUAL(cl_entry_decode(b.data, b.len, &out), -1);
	cl_entry_free(&in);
	buf_free(&b);
}

/* ---- A node alone ---- */

struct node {
	char *dir;
	char *conf;
	struct config *cfg;
	struct ev_loop *loop;
	struct stor_db *db;
	struct repl *repl;
};

static void node_open(struct node *n)
{
	char *err = NULL;
	n->db = repl_test_store_open("%s/store", n->dir);
	n->cfg = config_load(n->conf, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(n->cfg);
	n->loop = ev_loop_new(EVFLAG_AUTO);
	struct repl_settings rs = { 1, 0 };
	n->repl = repl_cluster_create(n->loop, n->db, &rs, n->cfg);
}

static void node_close(struct node *n)
{
	const char *err;
	repl_cluster_detach(n->repl);
	repl_destroy(&n->repl);
	CU_ASSERT_EQUAL(stor_sync(n->db, &err), 0);
	stor_close(&n->db);
	ev_loop_destroy(n->loop);
	config_free(&n->cfg);
}

struct done {
	int calls;
	enum repl_error error;
	uint32_t uid;
};

static void done_cb(void *ctx, const struct repl_result *res)
{
	struct done *d = ctx;
	d->calls++;
	d->error = res->error;
	d->uid = res->uid;
}

/* Bounded: 5 s (the fsync runs in storage's helper thread). */
static void run_until(struct node *n, const int *calls, int want)
{
	for (int i = 0; i < 5000 && *calls < want; i++) {
		ev_run(n->loop, EVRUN_ONCE | EVRUN_NOWAIT);
		if (*calls < want)
			usleep(1000);
	}
}

static void status_value(struct repl *r, const char *key, char *out, size_t size)
{
	struct buf b;
	buf_init(&b);
	repl_cluster_status(r, &b);
	buf_append_byte(&b, '\0');
	out[0] = '\0';
	const char *p = strstr((const char *)b.data, key);
	if (p != NULL)
		sscanf(p + strlen(key), ": %63s", out);
	buf_free(&b);
}

static void test_alone_changes_are_made_here_and_resync_remembered(void)
{
	struct node n;
	memset(&n, 0, sizeof(n));
	n.dir = test_mkdtemp();
	n.conf = xasprintf("%s/node.conf", n.dir);
	char *secret = xasprintf("%s/secret", n.dir);
	FILE *f = fopen(secret, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs("0123456789abcdef0123456789abcdef0123456789\n", f);
	fclose(f);
	f = fopen(n.conf, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fprintf(f, "node_id = 1\ndata_dir = %s\nrepl_listen = 127.0.0.1:1\n"
		   "peer = 2 127.0.0.1:2\npeer = 3 127.0.0.1:3\ncluster_secret_file = %s\n",
		n.dir, secret);
	fclose(f);

	node_open(&n);
	/* No mailbox masters attached: nobody can be asked. */
	struct done d = { 0, REPL_OK, 0 };
	repl_mailbox_create(n.repl, "bob", "INBOX", NULL, done_cb, &d);
	CU_ASSERT_EQUAL(d.calls, 0); /* never from inside the call */
	run_until(&n, &d.calls, 1);
	CU_ASSERT_EQUAL_FATAL(d.calls, 1);
	CU_ASSERT_EQUAL(d.error, REPL_OK);
	struct stor_mailbox mb;
	const char *err;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get(n.db, "bob", "INBOX", &mb, &err), 1);

	struct repl_append a;
	memset(&a, 0, sizeof(a));
	a.text = "Subject: alone\r\n\r\nhi\r\n";
	a.text_len = strlen(a.text);
	d.calls = 0;
	repl_append(n.repl, "bob", &mb.guid, &a, done_cb, &d);
	run_until(&n, &d.calls, 1);
	CU_ASSERT_EQUAL_FATAL(d.calls, 1);
	CU_ASSERT_EQUAL(d.error, REPL_OK);
	CU_ASSERT_EQUAL(d.uid, 1);
	char v[64];
	status_value(n.repl, "autonomous_changes", v, sizeof(v));
	CU_ASSERT_STRING_EQUAL(v, "1");
	status_value(n.repl, "peer.2.resync_pending_users", v, sizeof(v));
	CU_ASSERT_STRING_EQUAL(v, "1");
	/* The CREATE waits in the log for both peers. */
	status_value(n.repl, "peer.3.backlog", v, sizeof(v));
	CU_ASSERT_STRING_EQUAL(v, "1");
	stor_mailbox_free(&mb);
	node_close(&n);

	/* After a restart the node still knows what to resync and send. */
	node_open(&n);
	status_value(n.repl, "peer.3.resync_pending_users", v, sizeof(v));
	CU_ASSERT_STRING_EQUAL(v, "1");
	status_value(n.repl, "peer.2.backlog", v, sizeof(v));
	CU_ASSERT_STRING_EQUAL(v, "1");
	node_close(&n);

	test_rmtree(n.dir);
	free(n.dir);
	free(n.conf);
	free(secret);
}

/* A node whose replicas are all away (SPEC.md 8.6): with degraded_writes =
 * refuse a message change is refused before it is made, as master and
 * instead of going autonomous; with accept it is made, answered OK and
 * counted as under-replicated.  Mailbox-list changes follow accept. */
static void write_conf(struct node *n, const char *mode)
{
	char *secret = xasprintf("%s/secret", n->dir);
	FILE *f = fopen(secret, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs("0123456789abcdef0123456789abcdef0123456789\n", f);
	fclose(f);
	f = fopen(n->conf, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fprintf(f, "node_id = 1\ndata_dir = %s\nrepl_listen = 127.0.0.1:1\n"
		   "peer = 2 127.0.0.1:2\npeer = 3 127.0.0.1:3\ncluster_secret_file = %s\n"
		   "sync_replicas = 1\ndegraded_writes = %s\n", n->dir, secret, mode);
	fclose(f);
	free(secret);
}

static uint32_t message_count(struct node *n, const struct guid *mailbox)
{
	stor_msg_list msgs = ARRAY_INIT;
	const char *err;
	CU_ASSERT_EQUAL(stor_msg_list_range(n->db, mailbox, 1, UINT32_MAX, &msgs, &err), 0);
	uint32_t count = (uint32_t)msgs.count;
	stor_msg_list_free(&msgs);
	return count;
}

static void degraded_case(const char *mode)
{
	bool refuse = strcmp(mode, "refuse") == 0;
	struct node n;
	memset(&n, 0, sizeof(n));
	n.dir = test_mkdtemp();
	n.conf = xasprintf("%s/node.conf", n.dir);
	write_conf(&n, mode);
	node_open(&n);
	char v[64];
	status_value(n.repl, "degraded_writes", v, sizeof(v));
	CU_ASSERT_STRING_EQUAL(v, mode);
	status_value(n.repl, "replicas_available", v, sizeof(v));
	CU_ASSERT_STRING_EQUAL(v, "0");

	struct done d = { 0, REPL_OK, 0 };
	repl_mailbox_create(n.repl, "bob", "INBOX", NULL, done_cb, &d);
	run_until(&n, &d.calls, 1);
	CU_ASSERT_EQUAL_FATAL(d.calls, 1);
	CU_ASSERT_EQUAL(d.error, REPL_OK);
	/* Held by no replica: counted, for the total and for each peer. */
	status_value(n.repl, "under_replicated", v, sizeof(v));
	CU_ASSERT_STRING_EQUAL(v, "1");
	status_value(n.repl, "peer.2.under_replicated", v, sizeof(v));
	CU_ASSERT_STRING_EQUAL(v, "1");
	struct stor_mailbox mb;
	const char *err;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get(n.db, "bob", "INBOX", &mb, &err), 1);

	/* As master. */
	struct cl_append_req req;
	memset(&req, 0, sizeof(req));
	req.user = "bob";
	req.mailbox = mb.guid;
	guid_generate(&req.guid);
	req.text = "Subject: degraded\r\n\r\nhi\r\n";
	req.text_len = strlen(req.text);
	d.calls = 0;
	cl_master_append((struct repl_cluster *)n.repl, &req, done_cb, &d);
	CU_ASSERT_EQUAL(d.calls, 0); /* never from inside the call */
	run_until(&n, &d.calls, 1);
	CU_ASSERT_EQUAL_FATAL(d.calls, 1);
	CU_ASSERT_EQUAL(d.error, refuse ? REPL_ERR_UNAVAILABLE : REPL_OK);
	CU_ASSERT_EQUAL(message_count(&n, &mb.guid), refuse ? 0 : 1);

	/* No master to ask: refuse does not go on alone. */
	struct repl_append a;
	memset(&a, 0, sizeof(a));
	a.text = "Subject: alone\r\n\r\nhi\r\n";
	a.text_len = strlen(a.text);
	d.calls = 0;
	repl_append(n.repl, "bob", &mb.guid, &a, done_cb, &d);
	CU_ASSERT_EQUAL(d.calls, 0);
	run_until(&n, &d.calls, 1);
	CU_ASSERT_EQUAL_FATAL(d.calls, 1);
	CU_ASSERT_EQUAL(d.error, refuse ? REPL_ERR_UNAVAILABLE : REPL_OK);
	CU_ASSERT_EQUAL(message_count(&n, &mb.guid), refuse ? 0 : 2);
	status_value(n.repl, "autonomous_changes", v, sizeof(v));
	CU_ASSERT_STRING_EQUAL(v, refuse ? "0" : "1");
	status_value(n.repl, "under_replicated", v, sizeof(v));
	/* The autonomous change has no log entry: the resync queued for it
	 * settles it (resync_pending_users), not this count. */
	CU_ASSERT_STRING_EQUAL(v, refuse ? "1" : "2");
	stor_mailbox_free(&mb);
	node_close(&n);
	test_rmtree(n.dir);
	free(n.dir);
	free(n.conf);
}

static void test_degraded_refuse(void)
{
	degraded_case("refuse");
}

static void test_degraded_accept(void)
{
	degraded_case("accept");
}

/* ---- A peer sending values past the bounds ---- */

/* Node 2 is wired as starlingd wires it (masters, sync, peers, cluster);
 * "peer 1" is a bare peer manager that sends what a test tells it. */
struct bnode {
	struct ev_loop *loop;
	struct stor_db *db;
	struct config *cfg;
	struct repl *repl;
	struct repl_mm *mm;
	struct repl_sync *sync;
	struct repl_peers *peers;
};

static void b_link_up(struct repl_peers *peers, uint32_t sid, struct proto_conn *conn, void *ctx)
{
	struct bnode *n = ctx;
	repl_sync_link_up(n->sync, sid);
	repl_mm_peer_callbacks()->link_up(peers, sid, conn, n->mm);
	repl_cluster_link_up(n->repl, sid, conn);
}

static void b_link_down(struct repl_peers *peers, uint32_t sid, const char *reason, void *ctx)
{
	struct bnode *n = ctx;
	repl_cluster_link_down(n->repl, sid);
	repl_sync_link_down(n->sync, sid);
	repl_mm_peer_callbacks()->link_down(peers, sid, reason, n->mm);
}

static const struct repl_peers_callbacks b_callbacks = { .link_up = b_link_up,
							 .link_down = b_link_down };

static uint16_t free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CU_ASSERT_FATAL(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0);
	CU_ASSERT_FATAL(getsockname(fd, (struct sockaddr *)&sin, &len) == 0);
	close(fd);
	return ntohs(sin.sin_port);
}

struct answer_rec {
	bool done;
	char line[256];
};

static void rec_cb(struct proto_conn *conn, enum proto_reply_kind kind, const struct proto_cmd *line,
		   void *ctx)
{
	struct answer_rec *r = ctx;
	if (kind == PROTO_REPLY_DATA)
		return;
	r->done = true;
	if (kind != PROTO_REPLY_DONE || line == NULL) {
		snprintf(r->line, sizeof(r->line), "(no answer)");
		return;
	}
	size_t off = (size_t)snprintf(r->line, sizeof(r->line), "%s [", line->name);
	for (size_t i = 0; line->has_code && i < line->arg_count && off < sizeof(r->line); i++)
		off += (size_t)snprintf(r->line + off, sizeof(r->line) - off, "%s%s", i > 0 ? " " : "",
					line->args[i].str);
	if (off < sizeof(r->line))
		snprintf(r->line + off, sizeof(r->line) - off, "] %s", line->text ? line->text : "");
}

static void tick(struct ev_loop *loop, ev_timer *w, int revents)
{
}

/* Runs the loop until *flag or 10 s. */
static bool loop_until(struct ev_loop *loop, const bool *flag)
{
	ev_timer t;
	ev_timer_init(&t, tick, 0.01, 0.01);
	ev_timer_start(loop, &t);
	ev_now_update(loop);
	ev_tstamp end = ev_now(loop) + 10.0;
	while (!*flag && ev_now(loop) < end)
		ev_run(loop, EVRUN_ONCE);
	ev_timer_stop(loop, &t);
	return *flag;
}

struct cmd_arg {
	char kind; /* a atom, u number, g guid, l literal, f flag list (atoms, space separated) */
	const char *s;
	uint64_t u;
	const struct guid *g;
};

/* Sends name with args from peer 1 and returns the completion, e.g.
 * "NO [LIMIT] ...". */
static const char *peer_send(struct ev_loop *loop, struct repl_peers *p1, const char *name,
			     const struct cmd_arg *args, size_t n, struct answer_rec *rec)
{
	struct proto_conn *conn = repl_peers_conn(p1, 2);
	CU_ASSERT_PTR_NOT_NULL_FATAL(conn);
	struct proto_wr *w = proto_conn_cmd_begin(conn, name);
	for (size_t i = 0; i < n; i++) {
		switch (args[i].kind) {
		case 'a': proto_wr_atom(w, args[i].s); break;
		case 'u': proto_wr_u64(w, args[i].u); break;
		case 'g': proto_wr_guid(w, args[i].g); break;
		case 'l': proto_wr_literal(w, args[i].s, strlen(args[i].s)); break;
		case 'f':
			proto_wr_list_begin(w);
			if (args[i].s[0] != '\0')
				proto_wr_atom(w, args[i].s);
			proto_wr_list_end(w);
			break;
		}
	}
	memset(rec, 0, sizeof(*rec));
	CU_ASSERT_PTR_NOT_NULL(proto_conn_cmd_send(conn, 5000, rec_cb, rec));
	CU_ASSERT_TRUE(loop_until(loop, &rec->done));
	return rec->line;
}

static bool p1_up(void *arg)
{
	return repl_peers_conn(arg, 2) != NULL;
}

static char *user_dump(struct stor_db *db)
{
	struct buf b = BUF_INIT;
	const char *err;
	CU_ASSERT_EQUAL(stor_dump_user(db, "bob", &b, &err), 0);
	buf_append_byte(&b, '\0');
	return (char *)b.data;
}

/* Node 2 with bob's INBOX holding message g1 at UID 1, linked to peer 1
 * played by the test (p1), which has bound and selected INBOX as id 1. */
struct lone {
	char *dir, *secret, *t1, *t2, *store;
	struct config *c1;
	struct bnode n;
	struct repl_peers *p1;
	struct stor_mailbox mb;
	struct guid g1;
	uint64_t ep; /* the epoch changes with ORIGIN carry (SPEC 9.8) */
};

static void lone_start(struct lone *l)
{
	memset(l, 0, sizeof(*l));
	l->dir = test_mkdtemp();
	l->secret = xasprintf("%s/secret", l->dir);
	FILE *f = fopen(l->secret, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs("0123456789abcdef0123456789abcdef0123456789\n", f);
	fclose(f);
	CU_ASSERT_EQUAL_FATAL(chmod(l->secret, 0600), 0);
	uint16_t p1port = free_port(), p2port = free_port();
	char *err = NULL;
	l->t1 = xasprintf("node_id = 1\ndata_dir = %s/d1\nrepl_listen = 127.0.0.1:%u\n"
			  "peer = 2 127.0.0.1:%u\ncluster_secret_file = %s\n",
			  l->dir, p1port, p2port, l->secret);
	l->t2 = xasprintf("node_id = 2\ndata_dir = %s\nrepl_listen = 127.0.0.1:%u\n"
			  "peer = 1 127.0.0.1:%u\ncluster_secret_file = %s\n",
			  l->dir, p2port, p1port, l->secret);
	l->c1 = config_parse("1.conf", l->t1, &err);
	struct bnode *n = &l->n;
	n->cfg = config_parse("2.conf", l->t2, &err);
	CU_ASSERT_PTR_NOT_NULL_FATAL(l->c1);
	CU_ASSERT_PTR_NOT_NULL_FATAL(n->cfg);

	l->store = xasprintf("%s/store", l->dir);
	struct stor_settings set;
	memset(&set, 0, sizeof(set));
	set.dir = l->store;
	CU_ASSERT_EQUAL_FATAL(stor_open(&set, &n->db, &err), 0);
	const char *serr;
	struct stor_mailbox_create req = { .user = "bob", .name = "INBOX" };
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(n->db, &req, &l->mb, &serr), 0);
	guid_generate(&l->g1);
	struct stor_append app = { .guid = &l->g1, .text = "Subject: 1\r\n\r\none\r\n" };
	app.text_len = strlen(app.text);
	uint32_t uid1;
	CU_ASSERT_EQUAL_FATAL(stor_msg_append(n->db, &l->mb.guid, &app, &uid1, NULL, &serr), 0);
	CU_ASSERT_EQUAL(uid1, 1);

	n->loop = ev_loop_new(EVFLAG_AUTO);
	struct repl_settings rs = { 2, 0 };
	n->repl = repl_cluster_create(n->loop, n->db, &rs, n->cfg);
	n->mm = repl_mm_create(n->loop, n->cfg);
	n->sync = repl_sync_create(n->loop, n->repl);
	CU_ASSERT_EQUAL_FATAL(repl_peers_create(n->loop, n->cfg, &b_callbacks, n, &n->peers, &err),
			      0);
	repl_mm_attach(n->mm, n->peers);
	repl_sync_attach(n->sync, n->peers);
	repl_cluster_attach(n->repl, n->peers, n->mm, n->sync);
	CU_ASSERT_EQUAL_FATAL(repl_peers_create(n->loop, l->c1, NULL, NULL, &l->p1, &err), 0);
	ev_timer t;
	ev_timer_init(&t, tick, 0.01, 0.01);
	ev_timer_start(n->loop, &t);
	for (int i = 0; i < 1000 && !p1_up(l->p1); i++)
		ev_run(n->loop, EVRUN_ONCE);
	ev_timer_stop(n->loop, &t);
	CU_ASSERT_TRUE_FATAL(p1_up(l->p1));

	struct answer_rec rec;
	const char *a;
	struct cmd_arg mbox[] = { { 'u', NULL, 1, NULL }, { 'a', "bob", 0, NULL },
				  { 'a', "INBOX", 0, NULL }, { 'u', NULL, l->mb.uidvalidity, NULL },
				  { 'g', NULL, 0, &l->mb.guid } };
	a = peer_send(n->loop, l->p1, "MBOX", mbox, 5, &rec);
	CU_ASSERT_PTR_NOT_NULL(strstr(a, "OK [UIDNEXT 2 HIGHESTMODSEQ"));
	struct cmd_arg sel[] = { { 'u', NULL, 1, NULL } };
	a = peer_send(n->loop, l->p1, "SELECT", sel, 1, &rec);
	CU_ASSERT_PTR_NOT_NULL(strstr(a, "OK"));
	l->ep = repl_mm_epoch(n->mm, NULL);
}

static void lone_stop(struct lone *l)
{
	const char *serr;
	struct bnode *n = &l->n;
	repl_peers_destroy(&l->p1);
	repl_cluster_detach(n->repl);
	repl_sync_destroy(&n->sync);
	repl_mm_destroy(&n->mm);
	repl_peers_destroy(&n->peers);
	repl_destroy(&n->repl);
	CU_ASSERT_EQUAL(stor_sync(n->db, &serr), 0);
	stor_close(&n->db);
	ev_loop_destroy(n->loop);
	config_free(&n->cfg);
	config_free(&l->c1);
	stor_mailbox_free(&l->mb);
	free(l->t1);
	free(l->t2);
	free(l->store);
	free(l->secret);
	test_rmtree(l->dir);
	free(l->dir);
}

/* A peer's SAVE, STORE and EXPUNGE (as changes of their origin) carrying a
 * UID or modseq past SPEC 5.2's bounds are refused NO [LIMIT], the mailbox
 * is left as it was, and it takes the peer's next honest change and new
 * mail. */
static void test_peer_values_past_the_bounds_are_refused(void)
{
	struct lone l;
	lone_start(&l);
	struct bnode n = l.n;
	struct repl_peers *p1 = l.p1;
	struct stor_mailbox mb = l.mb;
	struct answer_rec rec;
	const char *a;
	const char *serr;
	char *before = user_dump(n.db);
	uint64_t ep = l.ep;

	struct guid g2;
	guid_generate(&g2);
	static const struct {
		uint64_t uid, modseq;
	} saves[] = {
		{ 4294967295u, 5 },
		{ (uint64_t)MAIL_UID_MAX + 1, 5 },
		{ 2, 9223372036854775806ull },
		{ 2, MAIL_MODSEQ_MAX + 1 },
	};
	for (size_t i = 0; i < sizeof(saves) / sizeof(saves[0]); i++) {
		struct cmd_arg save[] = {
			{ 'a', "1700000000+0000", 0, NULL }, { 'u', NULL, saves[i].uid, NULL },
			{ 'u', NULL, saves[i].modseq, NULL }, { 'g', NULL, 0, &g2 },
			{ 'f', "", 0, NULL }, { 'l', "Subject: 2\r\n\r\ntwo\r\n", 0, NULL },
			{ 'a', "ORIGIN", 0, NULL }, { 'u', NULL, 1, NULL },
			{ 'a', "EPOCH", 0, NULL }, { 'u', NULL, ep, NULL },
		};
		a = peer_send(n.loop, p1, "SAVE", save, 10, &rec);
		if (strncmp(a, "NO [LIMIT]", 10) != 0)
			fprintf(stderr, "SAVE %zu: %s\n", i, a);
		CU_ASSERT_EQUAL(strncmp(a, "NO [LIMIT]", 10), 0);
	}
	static const struct {
		const char *uids;
		uint64_t modseq;
	} changes[] = {
		{ "1,4294967295", 9 },
		{ "2147483648", 9 },
		{ "1", 9223372036854775806ull },
		{ "1", MAIL_MODSEQ_MAX + 1 },
	};
	for (size_t i = 0; i < sizeof(changes) / sizeof(changes[0]); i++) {
		struct cmd_arg st[] = {
			{ 'a', changes[i].uids, 0, NULL }, { 'u', NULL, changes[i].modseq, NULL },
			{ 'f', "\\Seen", 0, NULL }, { 'f', "\\*", 0, NULL },
			{ 'a', "ORIGIN", 0, NULL }, { 'u', NULL, 1, NULL },
			{ 'a', "EPOCH", 0, NULL }, { 'u', NULL, ep, NULL },
		};
		a = peer_send(n.loop, p1, "STORE", st, 8, &rec);
		if (strncmp(a, "NO [LIMIT]", 10) != 0)
			fprintf(stderr, "STORE %zu: %s\n", i, a);
		CU_ASSERT_EQUAL(strncmp(a, "NO [LIMIT]", 10), 0);
		struct cmd_arg exp[] = {
			{ 'a', changes[i].uids, 0, NULL }, { 'u', NULL, changes[i].modseq, NULL },
			{ 'a', "ORIGIN", 0, NULL }, { 'u', NULL, 1, NULL },
			{ 'a', "EPOCH", 0, NULL }, { 'u', NULL, ep, NULL },
		};
		a = peer_send(n.loop, p1, "EXPUNGE", exp, 6, &rec);
		if (strncmp(a, "NO [LIMIT]", 10) != 0)
			fprintf(stderr, "EXPUNGE %zu: %s\n", i, a);
		CU_ASSERT_EQUAL(strncmp(a, "NO [LIMIT]", 10), 0);
	}
	char *after = user_dump(n.db);
	CU_ASSERT_STRING_EQUAL(before, after);
	free(before);
	free(after);

	/* The peer's next honest change is taken, and so is new mail. */
	struct cmd_arg save[] = {
		{ 'a', "1700000000+0000", 0, NULL }, { 'u', NULL, 2, NULL },
		{ 'u', NULL, 5, NULL }, { 'g', NULL, 0, &g2 },
		{ 'f', "", 0, NULL }, { 'l', "Subject: 2\r\n\r\ntwo\r\n", 0, NULL },
		{ 'a', "ORIGIN", 0, NULL }, { 'u', NULL, 1, NULL },
		{ 'a', "EPOCH", 0, NULL }, { 'u', NULL, ep, NULL },
	};
	a = peer_send(n.loop, p1, "SAVE", save, 10, &rec);
	CU_ASSERT_PTR_NOT_NULL(strstr(a, "OK [UID 2 MODSEQ 5"));
	struct guid g3;
	guid_generate(&g3);
	struct stor_append app = { .guid = &g3, .text = "Subject: 3\r\n\r\nthree\r\n" };
	app.text_len = strlen(app.text);
	uint32_t uid3 = 0;
	CU_ASSERT_EQUAL(stor_msg_append(n.db, &mb.guid, &app, &uid3, NULL, &serr), 0);
	CU_ASSERT_EQUAL(uid3, 3);
	CU_ASSERT_EQUAL(stor_mailbox_check(n.db, &mb.guid, &serr), 0);

	lone_stop(&l);
}

/* Ends a streamed change of peer 1 the way repl-stream writes it (ORIGIN,
 * EPOCH, and GUIDS when g is given), sends it and waits for the answer
 * line. */
static const char *lone_send(struct lone *l, struct proto_conn *conn, struct proto_wr *w,
			     const struct guid *g, struct answer_rec *rec)
{
	proto_wr_atom(w, "ORIGIN");
	proto_wr_u64(w, 1);
	proto_wr_atom(w, "EPOCH");
	proto_wr_u64(w, l->ep);
	if (g != NULL) {
		proto_wr_atom(w, "GUIDS");
		proto_wr_list_begin(w);
		proto_wr_guid(w, g);
		proto_wr_list_end(w);
	}
	memset(rec, 0, sizeof(*rec));
	CU_ASSERT_PTR_NOT_NULL(proto_conn_cmd_send(conn, 5000, rec_cb, rec));
	CU_ASSERT_TRUE(loop_until(l->n.loop, &rec->done));
	return rec->line;
}

/* A sync on the sender (the master) moved message X from UID 1 (a UID
 * conflict with a third node), so it streams the engine's EXPUNGE 1; this
 * node wrote apart from it meanwhile (a flag change of X at UID 1 the
 * sender never got: peer 1 refused this user's change, no resync since).
 * Applied, the expunge dropped that change on both sides (the fault
 * campaign's flag-holds, all classes 13039): it is refused NO [UNSYNCED]
 * and X stays for the resync to merge.  A user's expunge still applies,
 * and so does the engine's once nothing of the user's is unsynced.  And a
 * streamed STORE of a message this node moved is not answered OK. */
static void test_engine_expunge_keeps_a_change_the_sender_lacks(void)
{
	struct lone l;
	lone_start(&l);
	struct answer_rec rec;
	const char *a;
	const char *err;
	struct repl_cluster *cl = to_cl(l.n.repl);
	struct cl_peer *pp = cl_peer_find(cl, 1);
	CU_ASSERT_PTR_NOT_NULL_FATAL(pp);
	unheld_add(pp, "bob", cl->log_last + 1, cl->log_last + 1);
	struct stor_mailbox now;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get(l.n.db, "bob", "INBOX", &now, &err), 1);
	uint64_t ms = now.highestmodseq + 5;
	stor_mailbox_free(&now);
	/* The sender's engine expunge of X at 1, as repl-stream sends it. */
	struct proto_conn *conn = repl_peers_conn(l.p1, 2);
	CU_ASSERT_PTR_NOT_NULL_FATAL(conn);
	struct proto_wr *w = proto_conn_cmd_begin(conn, "EXPUNGE");
	struct proto_expunge ex = { (uint32_t[]){ 1 }, 1, ms };
	proto_wr_expunge(w, &ex);
	a = lone_send(&l, conn, w, &l.g1, &rec);
	if (strncmp(a, "NO [UNSYNCED]", 13) != 0)
		fprintf(stderr, "\nengine EXPUNGE with a change unsynced: %s\n", a);
	CU_ASSERT_EQUAL(strncmp(a, "NO [UNSYNCED]", 13), 0);
	CU_ASSERT_EQUAL(stor_msg_get(l.n.db, &l.mb.guid, 1, NULL, &err), 1);

	/* The message moved here (to UID 7): a STORE at 1 is not OK. */
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(l.n.db, &l.mb.guid, 1, 7, 0, &err), 0);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get(l.n.db, "bob", "INBOX", &now, &err), 1);
	ms = now.highestmodseq + 5;
	stor_mailbox_free(&now);
	w = proto_conn_cmd_begin(conn, "STORE");
	uint32_t one = 1;
	struct proto_store st = { .uids = &one, .uid_count = 1, .modseq = ms,
				  .add = { STOR_FLAG_FLAGGED, { NULL, 0, 0 } }, .replace = true };
	proto_wr_store(w, &st);
	a = lone_send(&l, conn, w, &l.g1, &rec);
	if (strncmp(a, "NO [UNSYNCED]", 13) != 0)
		fprintf(stderr, "\nSTORE of a message moved here: %s\n", a);
	CU_ASSERT_EQUAL(strncmp(a, "NO [UNSYNCED]", 13), 0);

	/* Nothing unsynced: the engine's expunge of X at 7 applies. */
	unheld_clear(pp);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get(l.n.db, "bob", "INBOX", &now, &err), 1);
	ms = now.highestmodseq + 5;
	stor_mailbox_free(&now);
	w = proto_conn_cmd_begin(conn, "EXPUNGE");
	struct proto_expunge ex7 = { (uint32_t[]){ 7 }, 1, ms };
	proto_wr_expunge(w, &ex7);
	CU_ASSERT_EQUAL(strncmp(lone_send(&l, conn, w, NULL, &rec), "OK", 2), 0);
	CU_ASSERT_EQUAL(stor_msg_get(l.n.db, &l.mb.guid, 7, NULL, &err), 0);
	lone_stop(&l);
}

/* ---- COPY whose source is expunged while it is forwarded ---- */

static void bnode_start(struct bnode *n, struct ev_loop *loop, const char *dir, uint32_t sid,
			uint16_t port, uint32_t peer, uint16_t peer_port, const char *secret)
{
	char *err = NULL;
	memset(n, 0, sizeof(*n));
	n->loop = loop;
	char *text = xasprintf("node_id = %u\ndata_dir = %s/n%u\nrepl_listen = 127.0.0.1:%u\n"
			       "peer = %u 127.0.0.1:%u\ncluster_secret_file = %s\n",
			       sid, dir, sid, port, peer, peer_port, secret);
	n->cfg = config_parse("n.conf", text, &err);
	free(text);
	CU_ASSERT_PTR_NOT_NULL_FATAL(n->cfg);
	n->db = repl_test_store_open("%s/store%u", dir, sid);
	struct repl_settings rs = { sid, 0 };
	n->repl = repl_cluster_create(loop, n->db, &rs, n->cfg);
	n->mm = repl_mm_create(loop, n->cfg);
	n->sync = repl_sync_create(loop, n->repl);
	CU_ASSERT_EQUAL_FATAL(repl_peers_create(loop, n->cfg, &b_callbacks, n, &n->peers, &err), 0);
	repl_mm_attach(n->mm, n->peers);
	repl_sync_attach(n->sync, n->peers);
	repl_cluster_attach(n->repl, n->peers, n->mm, n->sync);
}

static void bnode_stop_synced(struct bnode *n, bool sync_ok)
{
	const char *serr;
	repl_cluster_detach(n->repl);
	repl_sync_destroy(&n->sync);
	repl_mm_destroy(&n->mm);
	repl_peers_destroy(&n->peers);
	repl_destroy(&n->repl);
	CU_ASSERT_EQUAL(stor_sync(n->db, &serr), sync_ok ? 0 : -1);
	stor_close(&n->db);
	config_free(&n->cfg);
}

static void bnode_stop(struct bnode *n)
{
	bnode_stop_synced(n, true);
}

struct copy_done {
	bool done;
	enum repl_error error;
	size_t copied;
	uint32_t uid;
};

static void copy_done_cb(void *ctx, const struct repl_result *res)
{
	struct copy_done *d = ctx;
	d->done = true;
	d->error = res->error;
	d->copied = res->uid_count;
	d->uid = res->uid;
}

static struct stor_mailbox mailbox_on(struct stor_db *db, const char *name)
{
	struct stor_mailbox mb;
	const char *err;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get(db, "bob", name, &mb, &err), 1);
	return mb;
}

/* Two nodes of one loop (node 1 and node 2, each the other's only peer),
 * linked, their stores and secret under one temp dir.  t ticks the loop
 * (EVRUN_ONCE returns at least every 10 ms); it runs when pair_start()
 * returns, and a test stops it where it wants the loop to block. */
struct pair {
	char *dir;
	char *secret;
	struct ev_loop *loop;
	struct bnode n1, n2;
	ev_timer t;
};

static void pair_start(struct pair *p)
{
	p->dir = test_mkdtemp();
	p->secret = xasprintf("%s/secret", p->dir);
	FILE *f = fopen(p->secret, "w");
	CU_ASSERT_PTR_NOT_NULL_FATAL(f);
	fputs("0123456789abcdef0123456789abcdef0123456789\n", f);
	fclose(f);
	CU_ASSERT_EQUAL_FATAL(chmod(p->secret, 0600), 0);
	p->loop = ev_loop_new(EVFLAG_AUTO);
	uint16_t port1 = free_port(), port2 = free_port();
	bnode_start(&p->n2, p->loop, p->dir, 2, port2, 1, port1, p->secret);
	bnode_start(&p->n1, p->loop, p->dir, 1, port1, 2, port2, p->secret);
	ev_timer_init(&p->t, tick, 0.01, 0.01);
	ev_timer_start(p->loop, &p->t);
	for (int i = 0;
	     i < 1000 && !(repl_peers_conn(p->n1.peers, 2) && repl_peers_conn(p->n2.peers, 1)); i++)
		ev_run(p->loop, EVRUN_ONCE);
	CU_ASSERT_TRUE_FATAL(repl_peers_conn(p->n1.peers, 2) != NULL);
}

/* n2_sync_ok: whether node 2's last sync is expected to succeed. */
static void pair_stop_synced(struct pair *p, bool n2_sync_ok)
{
	ev_timer_stop(p->loop, &p->t);
	bnode_stop(&p->n1);
	bnode_stop_synced(&p->n2, n2_sync_ok);
	ev_loop_destroy(p->loop);
	free(p->secret);
	test_rmtree(p->dir);
	free(p->dir);
}

static void pair_stop(struct pair *p)
{
	pair_stop_synced(p, true);
}

/* Creates mailbox name of bob's through node 2 (which so masters it). */
static void pair_create(struct pair *p, const char *name)
{
	struct copy_done d;
	memset(&d, 0, sizeof(d));
	repl_mailbox_create(p->n2.repl, "bob", name, NULL, copy_done_cb, &d);
	CU_ASSERT_TRUE_FATAL(loop_until(p->loop, &d.done));
	CU_ASSERT_EQUAL_FATAL(d.error, REPL_OK);
}

/* Appends text to mailbox through node n's replicator. */
static void pair_append(struct pair *p, struct bnode *n, const struct guid *mailbox,
			const char *text)
{
	struct repl_append a;
	memset(&a, 0, sizeof(a));
	a.text = text;
	a.text_len = strlen(a.text);
	struct copy_done d;
	memset(&d, 0, sizeof(d));
	repl_append(n->repl, "bob", mailbox, &a, copy_done_cb, &d);
	CU_ASSERT_TRUE_FATAL(loop_until(p->loop, &d.done));
	CU_ASSERT_EQUAL_FATAL(d.error, REPL_OK);
}

/* A pair with mailbox D on both nodes, mastered by node 2, which holds one
 * message; *dmb is D as node 2 has it. */
static void pair_start_d(struct pair *p, struct stor_mailbox *dmb)
{
	pair_start(p);
	pair_create(p, "D");
	*dmb = mailbox_on(p->n2.db, "D");
	const char *err;
	for (int i = 0; i < 500; i++) {
		struct stor_mailbox x;
		if (stor_mailbox_get(p->n1.db, "bob", "D", &x, &err) > 0) {
			stor_mailbox_free(&x);
			break;
		}
		ev_run(p->loop, EVRUN_ONCE);
	}
	pair_append(p, &p->n2, &dmb->guid, "Subject: on 2\r\n\r\nfrom node 2\r\n");
}

/* Node 1 writes to D once: it learns the master and binds D on its link. */
static void pair_bind_d(struct pair *p, const struct stor_mailbox *dmb)
{
	pair_append(p, &p->n1, &dmb->guid, "Subject: bind\r\n\r\nfirst from node 1\r\n");
	for (int i = 0; i < 50; i++)
		ev_run(p->loop, EVRUN_ONCE);
}

static const char rogue_text[] = "Subject: rogue\r\n\r\nonly here\r\n";

/* Node 1, bound, holds a message the master never saw (*rogue_r) under
 * the master's next UID of D, as after a partition before the resync.
 * Returns that UID. */
static uint32_t pair_take_masters_next_uid(struct pair *p, const struct stor_mailbox *dmb,
					   struct guid *rogue_r)
{
	const char *err;
	pair_bind_d(p, dmb);
	struct stor_mailbox on2 = mailbox_on(p->n2.db, "D");
	uint32_t next = on2.uidnext;
	stor_mailbox_free(&on2);
	guid_generate(rogue_r);
	struct stor_append sa = { .uid = next, .guid = rogue_r, .text = rogue_text };
	sa.text_len = strlen(sa.text);
	CU_ASSERT_EQUAL_FATAL(stor_msg_append(p->n1.db, &dmb->guid, &sa, NULL, NULL, &err), 0);
	return next;
}

/* Node 1's replicator appends text to mailbox as the message guid; *d
 * gets the answer, which must be OK. */
static void pair_append_as(struct pair *p, const struct guid *mailbox, const struct guid *guid,
			   const char *text, struct copy_done *d)
{
	struct repl_append a;
	memset(&a, 0, sizeof(a));
	a.guid = guid;
	a.text = text;
	a.text_len = strlen(a.text);
	memset(d, 0, sizeof(*d));
	repl_append(p->n1.repl, "bob", mailbox, &a, copy_done_cb, d);
	CU_ASSERT_TRUE_FATAL(loop_until(p->loop, &d->done));
	CU_ASSERT_EQUAL(d->error, REPL_OK);
}

/* Node 1 copies a message to a mailbox whose master, node 2, lacks its
 * text; before node 2 has answered the forwarded SAVE, the source is expunged
 * here and its text goes.  The copy of that message is skipped (as a COPY
 * of an expunged UID), and no message with an empty text appears on the
 * master or here. */
static void test_copy_of_a_source_expunged_meanwhile_sends_no_empty_text(void)
{
	/* D on both nodes, mastered by node 2 (the first to write to it). */
	struct pair p;
	struct stor_mailbox dmb;
	pair_start_d(&p, &dmb);
	const char *err;
	/* Node 1 writes to D once: it learns the master and binds D there. */
	pair_append(&p, &p.n1, &dmb.guid, "Subject: on 1\r\n\r\nfrom node 1\r\n");
	struct stor_mailbox on2 = mailbox_on(p.n2.db, "D");
	CU_ASSERT_EQUAL(on2.messages, 2);
	stor_mailbox_free(&on2);

	/* S only on node 1, so node 2 has never seen its message's text. */
	struct stor_mailbox_create req = { .user = "bob", .name = "S" };
	struct stor_mailbox smb;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(p.n1.db, &req, &smb, &err), 0);
	struct guid g;
	guid_generate(&g);
	struct stor_append sa = { .guid = &g, .text = "Subject: s\r\n\r\nthe source\r\n" };
	sa.text_len = strlen(sa.text);
	uint32_t suid;
	CU_ASSERT_EQUAL_FATAL(stor_msg_append(p.n1.db, &smb.guid, &sa, &suid, NULL, &err), 0);

	struct copy_done d;
	memset(&d, 0, sizeof(d));
	repl_copy(p.n1.repl, "bob", &smb.guid, &suid, 1, &dmb.guid, false, copy_done_cb, &d);
	/* The source goes (an expunge from elsewhere), and its text with it,
	 * before node 2 has answered the forwarded SAVE. */
	CU_ASSERT_FALSE(d.done);
	CU_ASSERT_EQUAL_FATAL(stor_msg_expunge(p.n1.db, &smb.guid, &suid, 1, 0, NULL, &err), 0);
	CU_ASSERT_EQUAL(stor_text_exists(p.n1.db, &g, NULL, &err), 0);
	CU_ASSERT_TRUE_FATAL(loop_until(p.loop, &d.done));
	CU_ASSERT_EQUAL(d.error, REPL_OK);
	CU_ASSERT_EQUAL(d.copied, 0);
	/* Let anything still in flight land. */
	for (int i = 0; i < 50; i++)
		ev_run(p.loop, EVRUN_ONCE);

	struct stor_db *dbs[] = { p.n1.db, p.n2.db };
	for (size_t k = 0; k < 2; k++) {
		stor_msg_list msgs;
		CU_ASSERT_EQUAL_FATAL(stor_msg_list_range(dbs[k], &dmb.guid, 1, UINT32_MAX, &msgs, &err),
				      0);
		CU_ASSERT_EQUAL(msgs.count, 2);
		for (size_t i = 0; i < msgs.count; i++) {
			CU_ASSERT(msgs.items[i].size > 0);
			CU_ASSERT_FALSE(guid_equal(&msgs.items[i].guid, &g));
		}
		stor_msg_list_free(&msgs);
		CU_ASSERT_EQUAL(stor_text_exists(dbs[k], &g, NULL, &err), 0);
	}
	stor_mailbox_free(&dmb);
	stor_mailbox_free(&smb);
	pair_stop(&p);
}

/* ---- Resyncs of one user that refuse each other ---- */

/* Runs the loop until neither node runs a resync nor has one queued or
 * waiting to be retried, or 10 s. */
static bool loop_until_idle(struct ev_loop *loop, struct bnode *a, struct bnode *b)
{
	ev_timer t;
	ev_timer_init(&t, tick, 0.01, 0.01);
	ev_timer_start(loop, &t);
	ev_now_update(loop);
	ev_tstamp end = ev_now(loop) + 10.0;
	bool idle = false;
	while (!idle && ev_now(loop) < end) {
		ev_run(loop, EVRUN_ONCE);
		idle = a->sync->run == NULL && a->sync->queue == NULL && a->sync->retry_list == NULL &&
		       b->sync->run == NULL && b->sync->queue == NULL && b->sync->retry_list == NULL;
	}
	ev_timer_stop(loop, &t);
	return idle;
}

/* Nodes 1 and 2 start a background resync of one user toward each other in
 * the same loop turn: each runs its own and refuses the other's (TRYLATER).
 * The higher id yields (REPL_SYNC_YIELD_S): node 1's resync runs next, to
 * its end, before node 2 tries again, and node 2's own then runs too.  With
 * random delays on both sides the pair met again, or the higher id went
 * first, at random; three rounds in a row must go the same way. */
static void test_crossing_resyncs_resolve_lower_id_first(void)
{
	struct pair p;
	pair_start(&p);
	ev_timer_stop(p.loop, &p.t);
	pair_create(&p, "D");
	CU_ASSERT_TRUE_FATAL(loop_until_idle(p.loop, &p.n1, &p.n2));

	for (int round = 0; round < 3; round++) {
		uint64_t s1 = p.n1.sync->syncs_run, s2 = p.n2.sync->syncs_run;
		repl_sync_enqueue(p.n1.sync, "bob", 2);
		repl_sync_enqueue(p.n2.sync, "bob", 1);
		/* Both queue timers are due now: both runs start in the
		 * same turn, before either sees the other's LIST. */
		ev_run(p.loop, EVRUN_NOWAIT);
		CU_ASSERT_PTR_NOT_NULL(p.n1.sync->run);
		CU_ASSERT_PTR_NOT_NULL(p.n2.sync->run);
		/* Until node 1's resync is through, node 2 has run no sync
		 * of its own (the first ones were refused). */
		ev_timer_init(&p.t, tick, 0.01, 0.01);
		ev_timer_start(p.loop, &p.t);
		ev_now_update(p.loop);
		ev_tstamp end = ev_now(p.loop) + 10.0;
		bool n1_done = false, n2_first = false, both_refused = false;
		while (!n1_done && ev_now(p.loop) < end) {
			ev_run(p.loop, EVRUN_ONCE);
			if (p.n2.sync->syncs_run != s2 && p.n1.sync->syncs_run == s1)
				n2_first = true;
			/* Each failed once: they did cross. */
			if (p.n1.sync->backoffs.count > 0 && p.n2.sync->backoffs.count > 0)
				both_refused = true;
			n1_done = p.n1.sync->syncs_run != s1 && p.n1.sync->run == NULL;
		}
		ev_timer_stop(p.loop, &p.t);
		CU_ASSERT_TRUE(both_refused);
		CU_ASSERT_TRUE(n1_done);
		CU_ASSERT_FALSE(n2_first);
		/* Node 2's own resync, refused at first, runs after. */
		CU_ASSERT_TRUE(loop_until_idle(p.loop, &p.n1, &p.n2));
		CU_ASSERT_NOT_EQUAL(p.n2.sync->syncs_run, s2);
		/* Both converged: nobody is left backing off. */
		CU_ASSERT_EQUAL(p.n1.sync->backoffs.count, 0);
		CU_ASSERT_EQUAL(p.n2.sync->backoffs.count, 0);
	}
	pair_stop(&p);
}

/* ---- A resync waits for durability off the loop ---- */

struct tick_count {
	ev_timer t;
	int n;
};

static void count_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct tick_count *tc = (struct tick_count *)w;
	(void)loop;
	(void)revents;
	tc->n++;
}

struct run_done {
	bool done, converged;
	char text[300];
};

static void run_done_cb(void *ctx, bool converged, const char *report, size_t report_len,
			const char *text)
{
	struct run_done *d = ctx;
	(void)report;
	(void)report_len;
	d->done = true;
	d->converged = converged;
	snprintf(d->text, sizeof(d->text), "%s", text != NULL ? text : "");
}

/* Node 1 holds twenty messages of D that node 2 lacks (stored here behind
 * replication's back, as after a partition); an asked resync of bob from
 * node 1 toward node 2 sends them.  Node 2's sync server answers SYNC-END
 * OK only once they are durable, node 1's run reports only once what it
 * stored is: both wait on storage's helper-thread sync, never in a
 * blocking stor_sync() that holds the loop (and every IMAP client of the
 * node) for the fsync.  Node 2's syncs are held back meanwhile (a slow
 * disk): the loop goes on, the resync waits.  With fail_sync, node 2's
 * sync fails: its answers are not sent (the link is closed with BYE) and
 * the resync is not reported converged. */
static void resync_durability(bool fail_sync)
{
	struct pair p;
	pair_start(&p);
	ev_timer_stop(p.loop, &p.t);
	pair_create(&p, "D");
	CU_ASSERT_TRUE_FATAL(loop_until_idle(p.loop, &p.n1, &p.n2));

	const char *err;
	struct stor_mailbox dmb;
	int have = 0;
	for (int i = 0; i < 500 && (have = stor_mailbox_get(p.n1.db, "bob", "D", &dmb, &err)) <= 0;
	     i++)
		ev_run(p.loop, EVRUN_ONCE);
	CU_ASSERT_EQUAL_FATAL(have, 1);
	for (int i = 0; i < 20; i++) {
		char *text = xasprintf("Subject: %d\r\n\r\nonly on node 1\r\n", i);
		struct stor_append sa = { .text = text, .text_len = strlen(text) };
		uint32_t uid;
		CU_ASSERT_EQUAL_FATAL(stor_msg_append(p.n1.db, &dmb.guid, &sa, &uid, NULL, &err),
				      0);
		free(text);
	}
	CU_ASSERT_EQUAL_FATAL(stor_sync(p.n1.db, &err), 0);

	unsigned blocking1 = stor_test_blocking_syncs(p.n1.db);
	unsigned blocking2 = stor_test_blocking_syncs(p.n2.db);
	if (fail_sync)
		stor_test_fail_next_sync(p.n2.db);
	else
		stor_test_hold_syncs(p.n2.db, true);
	struct run_done rd;
	memset(&rd, 0, sizeof(rd));
	CU_ASSERT_EQUAL_FATAL(repl_sync_start(p.n1.sync, "bob", 2, false, run_done_cb, &rd, &err),
			      0);
	if (!fail_sync) {
		/* Node 2's disk is slow: its first sync of what node 1 sent
		 * waits.  Meanwhile the loop goes on turning (a loop stuck in
		 * an fsync would stop for the hold's 30 s), and node 1 hears
		 * nothing that would let it call the resync done. */
		struct tick_count tc = { 0 };
		ev_timer_init(&tc.t, count_tick, 0.01, 0.01);
		ev_timer_start(p.loop, &tc.t);
		ev_now_update(p.loop);
		ev_tstamp end = ev_now(p.loop) + 5.0;
		while (stor_test_held_syncs(p.n2.db) == 0 && !rd.done && ev_now(p.loop) < end)
			ev_run(p.loop, EVRUN_ONCE);
		CU_ASSERT_TRUE(stor_test_held_syncs(p.n2.db) > 0);
		tc.n = 0;
		end = ev_now(p.loop) + 5.0;
		while (tc.n < 100 && ev_now(p.loop) < end)
			ev_run(p.loop, EVRUN_ONCE);
		ev_timer_stop(p.loop, &tc.t);
		CU_ASSERT_EQUAL(tc.n, 100);
		CU_ASSERT_FALSE(rd.done);
		CU_ASSERT_TRUE(stor_test_held_syncs(p.n2.db) > 0);
		stor_test_hold_syncs(p.n2.db, false);
	}
	CU_ASSERT_TRUE_FATAL(loop_until(p.loop, &rd.done));
	/* Every fsync of the run, on both sides, ran in a helper thread. */
	CU_ASSERT_EQUAL(stor_test_blocking_syncs(p.n1.db), blocking1);
	CU_ASSERT_EQUAL(stor_test_blocking_syncs(p.n2.db), blocking2);
	struct stor_mailbox on2 = mailbox_on(p.n2.db, "D");
	if (!fail_sync) {
		CU_ASSERT_TRUE(rd.converged);
		CU_ASSERT_EQUAL(on2.messages, 20);
	} else {
		/* The failed sync is told, not acknowledged. */
		CU_ASSERT_FALSE(rd.converged);
		CU_ASSERT_PTR_NOT_NULL(strstr(rd.text, "failed"));
	}
	stor_mailbox_free(&on2);
	stor_mailbox_free(&dmb);
	/* Node 2's store refuses every write after its failed sync, until
	 * a restart: its last sync fails too. */
	pair_stop_synced(&p, !fail_sync);
}

static void test_resync_waits_for_durability_off_the_loop(void)
{
	resync_durability(false);
}

static void test_resync_failed_sync_is_not_acknowledged(void)
{
	resync_durability(true);
}

/* An administrator's resync (starling resync) crossing a peer's
 * background resync of the same user: each refuses the other (TRYLATER).
 * The background one backs off; the asked one waits the refusal out and
 * succeeds, where it used to fail with "a resync of this user runs here".
 * Both ways round: the peer's id lower and higher than the asker's. */
static void test_asked_resync_waits_out_a_crossing_one(void)
{
	struct pair p;
	pair_start(&p);
	ev_timer_stop(p.loop, &p.t);
	pair_create(&p, "D");
	CU_ASSERT_TRUE_FATAL(loop_until_idle(p.loop, &p.n1, &p.n2));

	struct bnode *askers[] = { &p.n2, &p.n1 }, *others[] = { &p.n1, &p.n2 };
	for (int round = 0; round < 2; round++) {
		struct bnode *asker = askers[round], *other = others[round];
		uint32_t other_id = round == 0 ? 1 : 2, asker_id = round == 0 ? 2 : 1;
		repl_sync_enqueue(other->sync, "bob", asker_id);
		ev_run(p.loop, EVRUN_NOWAIT);
		CU_ASSERT_PTR_NOT_NULL(other->sync->run);
		struct run_done ad;
		memset(&ad, 0, sizeof(ad));
		const char *err = NULL;
		CU_ASSERT_EQUAL_FATAL(repl_sync_start(asker->sync, "bob", other_id, false,
						      run_done_cb, &ad, &err),
				      0);
		ev_timer_init(&p.t, tick, 0.01, 0.01);
		ev_timer_start(p.loop, &p.t);
		bool both_refused = false;
		for (int i = 0; i < 3000 && !ad.done; i++) {
			ev_run(p.loop, EVRUN_ONCE);
			/* They did cross: the background run failed once. */
			if (other->sync->backoffs.count > 0)
				both_refused = true;
		}
		ev_timer_stop(p.loop, &p.t);
		CU_ASSERT_TRUE(both_refused);
		CU_ASSERT_TRUE(ad.done);
		CU_ASSERT_TRUE(ad.converged);
		if (!ad.converged)
			fprintf(stderr, "asked resync (round %d): %s\n", round, ad.text);
		CU_ASSERT_TRUE(loop_until_idle(p.loop, &p.n1, &p.n2));
	}
	pair_stop(&p);
}

/* A master of an earlier build (SPEC 8.8): node 2 here plays one, answering
 * a SAVE that carries HOLDER with BAD [ARGS] (an unknown option) and every
 * other command as usual.  Node 1's forwarded APPEND is sent with HOLDER,
 * resent without it on the same link, and completes once, stored at the
 * master's UID; the next APPEND on that link is sent without HOLDER at once. */
struct old_master {
	struct repl_cluster *cl;
	bool refuse_holder;            /* else only count */
	unsigned with_holder, without_holder;
};

static void old_master_live(void *ctx, uint32_t sid, struct proto_conn *conn,
			    const struct proto_cmd *cmd, const struct guid *selected)
{
	struct old_master *om = ctx;
	size_t npos;
	const char *err;
	if (proto_cmd_is(cmd, "SAVE") && proto_cmd_validate(cmd, &npos, &err) == 0 &&
	    proto_cmd_option(cmd, npos, "ORIGIN") == NULL) {
		if (proto_cmd_option(cmd, npos, "HOLDER") != NULL) {
			om->with_holder++;
			if (om->refuse_holder) {
				proto_conn_reply(conn, cmd->tag, "BAD", "ARGS",
						 "SAVE: unknown option 7");
				return;
			}
		} else {
			om->without_holder++;
		}
	}
	cl_replica_command(om->cl, sid, conn, cmd, selected);
}

/* SPEC 8.8, the forwarder's fallback: node 1 holds another message under
 * the UID the master assigns (as after a partition, before the resync), so
 * it cannot keep its HOLDER promise: it sends the same SAVE again without
 * HOLDER and answers OK only on that answer; the message reaches both. */
static void test_holder_that_cannot_hold_resends_without(void)
{
	struct pair p;
	struct stor_mailbox dmb;
	pair_start_d(&p, &dmb);
	const char *err;
	struct guid rogue;
	uint32_t next = pair_take_masters_next_uid(&p, &dmb, &rogue);

	struct old_master om = { to_cl(p.n2.repl), false, 0, 0 };
	repl_sync_set_live(p.n2.sync, old_master_live, &om);
	struct guid mine;
	guid_generate(&mine);
	struct copy_done d;
	pair_append_as(&p, &dmb.guid, &mine, "Subject: held\r\n\r\nsecond from node 1\r\n", &d);
	/* Sent with HOLDER once, then without it (more than once when the
	 * resync the conflict started made the master answer TRYLATER). */
	CU_ASSERT_EQUAL(om.with_holder, 1);
	CU_ASSERT(om.without_holder >= 1);
	if (om.without_holder == 0)
		fprintf(stderr, "\nno resend without HOLDER (answered UID %u, wanted %u)", d.uid,
			next);
	uint32_t at;
	/* On the master (a resync may have given one of the two another UID
	 * since). */
	CU_ASSERT_EQUAL(stor_msg_find_guid(p.n2.db, &dmb.guid, &mine, &at, &err), 1);
	repl_sync_set_live(p.n2.sync, cl_replica_command, to_cl(p.n2.repl));
	/* The resync the conflict asked for brings it here too. */
	bool here = false;
	for (int i = 0; i < 3000 && !here; i++) {
		ev_run(p.loop, EVRUN_ONCE);
		here = stor_msg_find_guid(p.n1.db, &dmb.guid, &mine, &at, &err) == 1;
	}
	CU_ASSERT_TRUE(here);
	stor_mailbox_free(&dmb);
	pair_stop(&p);
}

/* Node 1 as a holder that cannot hold the master's UID (above), but a
 * resync renumbers both messages here before the master answers the
 * resent SAVE (campaign seed 13020: node 3 had given the UID to a message
 * made alone while the master was out of reach; the master, not knowing,
 * gave it to the session's next APPEND).  The master answers the UID it
 * gave, looked up before the resync ran; here that UID now names nothing,
 * and the message is at another.  Told to the client, the UID had named
 * the session's earlier message.  The master's stale answer is sent by
 * the hook, since its timing around a resync is not in a test's hands. */
struct renumber_at_resend {
	struct repl_cluster *cl;
	struct stor_db *db1, *db2;    /* node 1's store, the master's */
	struct guid mailbox, rogue, mine;
	uint32_t next;
	const char *mine_text;
	bool done;
	int failed;
};

static void renumber_at_resend_live(void *ctx, uint32_t sid, struct proto_conn *conn,
				    const struct proto_cmd *cmd, const struct guid *selected)
{
	struct renumber_at_resend *r = ctx;
	size_t npos;
	const char *err;
	if (!r->done && proto_cmd_is(cmd, "SAVE") && proto_cmd_validate(cmd, &npos, &err) == 0 &&
	    proto_cmd_option(cmd, npos, "ORIGIN") == NULL &&
	    proto_cmd_option(cmd, npos, "HOLDER") == NULL) {
		/* What the resync does here, as a sync that keeps both: the
		 * conflicting UID emptied, both messages above UIDNEXT. */
		r->done = true;
		if (stor_msg_expunge_kind(r->db1, &r->mailbox, &r->next, 1, 0, false, NULL,
					  &err) < 0)
			r->failed++;
		struct stor_append sa = { .uid = r->next + 1, .guid = &r->rogue,
					  .text = rogue_text };
		sa.text_len = strlen(sa.text);
		if (stor_msg_append(r->db1, &r->mailbox, &sa, NULL, NULL, &err) < 0)
			r->failed++;
		struct stor_append sm = { .uid = r->next + 2, .guid = &r->mine,
					  .text = r->mine_text };
		sm.text_len = strlen(sm.text);
		if (stor_msg_append(r->db1, &r->mailbox, &sm, NULL, NULL, &err) < 0)
			r->failed++;
		/* The master's answer as computed before that resync (its
		 * copy at the UID it gave): it looked the GUID up then. */
		struct stor_msg m;
		if (stor_msg_get(r->db2, &r->mailbox, r->next, &m, &err) != 1) {
			r->failed++;
		} else {
			char code[64];
			snprintf(code, sizeof(code), "UID %u MODSEQ %" PRIu64, r->next, m.modseq);
			stor_msg_free(&m);
			proto_conn_reply(conn, cmd->tag, "OK", code, "done");
			return;
		}
	}
	cl_replica_command(r->cl, sid, conn, cmd, selected);
}

static void test_resent_save_answered_after_a_renumber_tells_no_stale_uid(void)
{
	struct pair p;
	struct stor_mailbox dmb;
	pair_start_d(&p, &dmb);
	const char *err;
	struct renumber_at_resend r;
	memset(&r, 0, sizeof(r));
	r.cl = to_cl(p.n2.repl);
	r.db1 = p.n1.db;
	r.db2 = p.n2.db;
	r.mailbox = dmb.guid;
	r.next = pair_take_masters_next_uid(&p, &dmb, &r.rogue);
	guid_generate(&r.mine);
	r.mine_text = "Subject: held\r\n\r\nsecond from node 1\r\n";

	repl_sync_set_live(p.n2.sync, renumber_at_resend_live, &r);
	struct copy_done d;
	pair_append_as(&p, &dmb.guid, &r.mine, r.mine_text, &d);
	CU_ASSERT_TRUE(r.done);
	CU_ASSERT_EQUAL(r.failed, 0);
	/* Told a UID only where node 1 holds this message under it. */
	struct stor_msg m;
	int here = d.uid != 0 ? stor_msg_get(p.n1.db, &dmb.guid, d.uid, &m, &err) : 0;
	bool named = here == 1 && guid_equal(&m.guid, &r.mine);
	if (here == 1)
		stor_msg_free(&m);
	CU_ASSERT(d.uid == 0 || named);
	if (d.uid != 0 && !named)
		fprintf(stderr, "\ntold UID %u, which does not name the message here", d.uid);
	repl_sync_set_live(p.n2.sync, cl_replica_command, to_cl(p.n2.repl));
	stor_mailbox_free(&dmb);
	pair_stop(&p);
}

/* ---- The master's answer to a forwarded SAVE, told where it is now ---- */

/* Node 2, master of D, makes node 1's forwarded SAVE; before it answers
 * (it waits for durability and its replicas), something moves the
 * message on node 2: a sync's UID conflict renumbers it, or a user on
 * node 2 expunges it.  Node 1 refuses node 2's stream of D meanwhile
 * (TRYLATER), so the master's answer is all it knows: the UID it tells
 * its client is the one the answer names. */
enum meanwhile { MEANWHILE_RENUMBERED, MEANWHILE_EXPUNGED };

struct answer_moved {
	struct repl_cluster *cl1, *cl2;
	struct stor_db *db2;
	struct guid mailbox, mine;
	enum meanwhile what;
	bool hold_stream;             /* node 1 refuses node 2's stream */
	bool done;                    /* the SAVE was served and moved */
	uint32_t made_at, moved_to;
	int failed;
};

static void answer_moved_live2(void *ctx, uint32_t sid, struct proto_conn *conn,
			       const struct proto_cmd *cmd, const struct guid *selected)
{
	struct answer_moved *r = ctx;
	size_t npos;
	const char *err;
	bool fwd_save = !r->done && proto_cmd_is(cmd, "SAVE") &&
			proto_cmd_validate(cmd, &npos, &err) == 0 &&
			proto_cmd_option(cmd, npos, "ORIGIN") == NULL;
	cl_replica_command(r->cl2, sid, conn, cmd, selected);
	if (!fwd_save)
		return;
	/* The local engine made it within the call; its answer waits for
	 * the group commit, a later loop turn. */
	r->done = true;
	if (stor_msg_find_guid(r->db2, &r->mailbox, &r->mine, &r->made_at, &err) != 1) {
		r->failed++;
		return;
	}
	if (r->what == MEANWHILE_RENUMBERED) {
		struct stor_mailbox mb;
		if (stor_mailbox_get_by_guid(r->db2, &r->mailbox, &mb, &err) != 1) {
			r->failed++;
			return;
		}
		r->moved_to = mb.uidnext + 2;
		stor_mailbox_free(&mb);
		if (stor_msg_renumber(r->db2, &r->mailbox, r->made_at, r->moved_to, 0, &err) < 0)
			r->failed++;
	} else if (stor_msg_expunge(r->db2, &r->mailbox, &r->made_at, 1, 0, NULL, &err) < 0) {
		r->failed++;
	}
}

static void answer_moved_live1(void *ctx, uint32_t sid, struct proto_conn *conn,
			       const struct proto_cmd *cmd, const struct guid *selected)
{
	struct answer_moved *r = ctx;
	size_t npos;
	const char *err;
	if (r->hold_stream && proto_cmd_validate(cmd, &npos, &err) == 0 &&
	    proto_cmd_option(cmd, npos, "ORIGIN") != NULL &&
	    (proto_cmd_is(cmd, "SAVE") || proto_cmd_is(cmd, "STORE") ||
	     proto_cmd_is(cmd, "EXPUNGE"))) {
		proto_conn_reply(conn, cmd->tag, "NO", "TRYLATER", "held by the test");
		return;
	}
	cl_replica_command(r->cl1, sid, conn, cmd, selected);
}

static void answer_moved_case(enum meanwhile what)
{
	struct pair p;
	struct stor_mailbox dmb;
	pair_start_d(&p, &dmb);
	const char *err;
	pair_bind_d(&p, &dmb);
	struct answer_moved r;
	memset(&r, 0, sizeof(r));
	r.cl1 = to_cl(p.n1.repl);
	r.cl2 = to_cl(p.n2.repl);
	r.db2 = p.n2.db;
	r.mailbox = dmb.guid;
	r.what = what;
	r.hold_stream = true;
	guid_generate(&r.mine);
	repl_sync_set_live(p.n2.sync, answer_moved_live2, &r);
	repl_sync_set_live(p.n1.sync, answer_moved_live1, &r);

	struct copy_done d;
	pair_append_as(&p, &dmb.guid, &r.mine, "Subject: moved\r\n\r\nsecond from node 1\r\n", &d);
	CU_ASSERT_TRUE(r.done);
	CU_ASSERT_EQUAL(r.failed, 0);
	uint32_t at2 = 0;
	int on2 = stor_msg_find_guid(p.n2.db, &dmb.guid, &r.mine, &at2, &err);
	if (what == MEANWHILE_RENUMBERED) {
		/* Told the UID the master holds it at now, and held here there. */
		CU_ASSERT_EQUAL(on2, 1);
		CU_ASSERT_EQUAL(at2, r.moved_to);
		CU_ASSERT_EQUAL(d.uid, r.moved_to);
		if (d.uid != r.moved_to)
			fprintf(stderr, "\ntold UID %u; made at %u, at %u when answered", d.uid,
				r.made_at, r.moved_to);
		struct stor_msg m;
		int here = stor_msg_get(p.n1.db, &dmb.guid, d.uid, &m, &err);
		CU_ASSERT_EQUAL(here, 1);
		if (here == 1) {
			CU_ASSERT_TRUE(guid_equal(&m.guid, &r.mine));
			stor_msg_free(&m);
		}
	} else {
		/* Gone before the answer: no UID names it, nothing is made
		 * here, and the master made it only once. */
		CU_ASSERT_EQUAL(on2, 0);
		CU_ASSERT_EQUAL(d.uid, 0);
		if (d.uid != 0)
			fprintf(stderr, "\ntold UID %u of a message expunged before the answer",
				d.uid);
		uint32_t at1;
		CU_ASSERT_EQUAL(stor_msg_find_guid(p.n1.db, &dmb.guid, &r.mine, &at1, &err), 0);
	}
	/* The stream let through: the two nodes end alike. */
	r.hold_stream = false;
	bool alike = false;
	for (int i = 0; i < 3000 && !alike; i++) {
		ev_run(p.loop, EVRUN_ONCE);
		uint32_t at1 = 0;
		int on1 = stor_msg_find_guid(p.n1.db, &dmb.guid, &r.mine, &at1, &err);
		on2 = stor_msg_find_guid(p.n2.db, &dmb.guid, &r.mine, &at2, &err);
		alike = on1 == on2 && at1 == at2;
	}
	CU_ASSERT_TRUE(alike);
	if (what == MEANWHILE_EXPUNGED)
		CU_ASSERT_EQUAL(on2, 0);
	repl_sync_set_live(p.n1.sync, cl_replica_command, to_cl(p.n1.repl));
	repl_sync_set_live(p.n2.sync, cl_replica_command, to_cl(p.n2.repl));
	stor_mailbox_free(&dmb);
	pair_stop(&p);
}

static void test_forwarded_save_answered_where_it_is_now(void)
{
	answer_moved_case(MEANWHILE_RENUMBERED);
}

static void test_forwarded_save_expunged_before_its_answer_tells_no_uid(void)
{
	answer_moved_case(MEANWHILE_EXPUNGED);
}

/* A master answers a forwarded SAVE OK [UID u MODSEQ m EXPUNGED] (SPEC
 * 6.4: the GUID was saved there and expunged since) with u at or above
 * node 1's UIDNEXT: node 1 never had u, and told u, its client must never
 * see u name another message, so node 1's UIDNEXT goes past u before the
 * OK.  With HELD too: nothing is to be held, and the SAVE is not sent
 * again (without HOLDER, a master would make the expunged message anew).
 * Node 2 plays the master that answers so. */
struct expunged_answer {
	struct repl_cluster *cl;
	uint32_t uid;
	uint64_t modseq;
	bool held;
	unsigned saves;
};

static void expunged_answer_live(void *ctx, uint32_t sid, struct proto_conn *conn,
				 const struct proto_cmd *cmd, const struct guid *selected)
{
	struct expunged_answer *e = ctx;
	size_t npos;
	const char *err;
	if (proto_cmd_is(cmd, "SAVE") && proto_cmd_validate(cmd, &npos, &err) == 0 &&
	    proto_cmd_option(cmd, npos, "ORIGIN") == NULL) {
		e->saves++;
		char code[96];
		snprintf(code, sizeof(code), "UID %u MODSEQ %" PRIu64 " EXPUNGED%s", e->uid,
			 e->modseq, e->held ? " HELD" : "");
		proto_conn_reply(conn, cmd->tag, "OK", code, "saved and expunged");
		return;
	}
	cl_replica_command(e->cl, sid, conn, cmd, selected);
}

static void test_expunged_answer_above_uidnext_raises_it(void)
{
	struct pair p;
	struct stor_mailbox dmb;
	pair_start_d(&p, &dmb);
	const char *err;
	pair_bind_d(&p, &dmb);
	struct expunged_answer e;
	memset(&e, 0, sizeof(e));
	e.cl = to_cl(p.n2.repl);
	repl_sync_set_live(p.n2.sync, expunged_answer_live, &e);
	for (int k = 0; k < 2; k++) {
		struct stor_mailbox on1 = mailbox_on(p.n1.db, "D");
		e.uid = on1.uidnext + 3;
		e.modseq = on1.highestmodseq + 3;
		stor_mailbox_free(&on1);
		e.held = k == 1;
		e.saves = 0;
		struct guid mine;
		guid_generate(&mine);
		struct copy_done d;
		pair_append_as(&p, &dmb.guid, &mine,
			       "Subject: gone\r\n\r\nexpunged on the master\r\n", &d);
		CU_ASSERT_EQUAL(e.saves, 1);
		on1 = mailbox_on(p.n1.db, "D");
		/* Told or not, node 1 gives e.uid to no other message. */
		CU_ASSERT(on1.uidnext > e.uid);
		if (on1.uidnext <= e.uid)
			fprintf(stderr, "\nround %d: told UID %u, UIDNEXT here still %u", k, d.uid,
				on1.uidnext);
		CU_ASSERT(d.uid == 0 || d.uid == e.uid);
		stor_mailbox_free(&on1);
		uint32_t at;
		CU_ASSERT_EQUAL(stor_msg_find_guid(p.n1.db, &dmb.guid, &mine, &at, &err), 0);
		CU_ASSERT_EQUAL(stor_mailbox_check(p.n1.db, &dmb.guid, &err), 0);
	}
	repl_sync_set_live(p.n2.sync, cl_replica_command, to_cl(p.n2.repl));
	stor_mailbox_free(&dmb);
	pair_stop(&p);
}

/* Node 1's store failed (its disk full, campaign seed 12218): the master
 * still makes a forwarded APPEND, but node 1 cannot store the master's
 * UID.  The APPEND is OK (the master holds it), yet it must not carry that
 * UID: node 1, restarted on what its store kept and master alone (a
 * partition), gave the same UID to the next APPEND of the same session. */
static void test_forwarded_append_not_stored_here_tells_no_uid(void)
{
	struct pair p;
	struct stor_mailbox dmb;
	pair_start_d(&p, &dmb);
	const char *err;
	pair_bind_d(&p, &dmb);
	stor_test_break(p.n1.db);
	struct guid mine;
	guid_generate(&mine);
	struct copy_done d;
	pair_append_as(&p, &dmb.guid, &mine, "Subject: unheld\r\n\r\nsecond from node 1\r\n", &d);
	uint32_t at = 0;
	CU_ASSERT_EQUAL(stor_msg_find_guid(p.n2.db, &dmb.guid, &mine, &at, &err), 1);
	/* Told a UID only where node 1 holds the message under it. */
	struct stor_msg m;
	int here = d.uid != 0 ? stor_msg_get(p.n1.db, &dmb.guid, d.uid, &m, &err) : 0;
	if (here == 1)
		stor_msg_free(&m);
	CU_ASSERT(d.uid == 0 || here == 1);
	if (d.uid != 0 && here != 1)
		fprintf(stderr, "\ntold UID %u (the master's %u), not held here", d.uid, at);
	stor_mailbox_free(&dmb);
	/* Node 1's store refuses every write until reopened. */
	ev_timer_stop(p.loop, &p.t);
	bnode_stop(&p.n2);
	repl_cluster_detach(p.n1.repl);
	repl_sync_destroy(&p.n1.sync);
	repl_mm_destroy(&p.n1.mm);
	repl_peers_destroy(&p.n1.peers);
	repl_destroy(&p.n1.repl);
	stor_close(&p.n1.db);
	config_free(&p.n1.cfg);
	ev_loop_destroy(p.loop);
	free(p.secret);
	test_rmtree(p.dir);
	free(p.dir);
}

static void test_master_of_an_earlier_build_gets_no_holder(void)
{
	/* D on both nodes, mastered by node 2 (the first to write to it). */
	struct pair p;
	struct stor_mailbox dmb;
	pair_start_d(&p, &dmb);
	const char *err;
	struct copy_done d;
	struct repl_append a;
	memset(&a, 0, sizeof(a));

	struct old_master om = { to_cl(p.n2.repl), true, 0, 0 };
	repl_sync_set_live(p.n2.sync, old_master_live, &om);
	for (unsigned k = 0; k < 2; k++) {
		a.text = k == 0 ? "Subject: on 1\r\n\r\nfirst from node 1\r\n" :
				  "Subject: on 1\r\n\r\nsecond from node 1\r\n";
		a.text_len = strlen(a.text);
		memset(&d, 0, sizeof(d));
		repl_append(p.n1.repl, "bob", &dmb.guid, &a, copy_done_cb, &d);
		CU_ASSERT_TRUE_FATAL(loop_until(p.loop, &d.done));
		CU_ASSERT_EQUAL(d.error, REPL_OK);
		/* Sent with HOLDER once, refused, resent without; then
		 * never with it again on this link. */
		CU_ASSERT_EQUAL(om.with_holder, 1);
		CU_ASSERT_EQUAL(om.without_holder, k + 1);
		/* Stored here at the master's UID before the OK. */
		struct stor_msg m;
		int r1 = stor_msg_get(p.n1.db, &dmb.guid, d.uid, &m, &err);
		CU_ASSERT_EQUAL(r1, 1);
		if (r1 == 1)
			stor_msg_free(&m);
		int r2 = stor_msg_get(p.n2.db, &dmb.guid, d.uid, &m, &err);
		CU_ASSERT_EQUAL(r2, 1);
		if (r2 == 1)
			stor_msg_free(&m);
	}
	for (int i = 0; i < 50; i++)
		ev_run(p.loop, EVRUN_ONCE);
	struct stor_db *dbs[] = { p.n1.db, p.n2.db };
	for (size_t k = 0; k < 2; k++) {
		struct stor_mailbox x = mailbox_on(dbs[k], "D");
		CU_ASSERT_EQUAL(x.messages, 3);
		stor_mailbox_free(&x);
	}
	repl_sync_set_live(p.n2.sync, cl_replica_command, to_cl(p.n2.repl));
	stor_mailbox_free(&dmb);
	pair_stop(&p);
}

/* The tombstone at uid on db: 1 a user's, 0 the engine's, -1 none. */
static int tomb_kind(struct stor_db *db, const struct guid *mb, uint32_t uid)
{
	stor_msg_list msgs;
	stor_tombstone_list tombs;
	const char *err;
	int kind = -1;
	CU_ASSERT_EQUAL_FATAL(stor_changes_since(db, mb, 0, &msgs, &tombs, &err), 0);
	for (size_t i = 0; i < tombs.count; i++) {
		if (tombs.items[i].uid == uid)
			kind = tombs.items[i].user ? 1 : 0;
	}
	stor_msg_list_free(&msgs);
	ARRAY_FREE(&tombs);
	return kind;
}

/* The master streams a user's expunge with BY USER and a sync's (here a
 * renumbering's tombstone) without: the replica keeps each kind, so a copy
 * the master's engine dropped is never taken there for one a user
 * expunged, and a user's expunge still removes renumbered copies in the
 * replica's later syncs (SPEC.md 8.6, 10.3). */
static void test_replica_keeps_who_expunged(void)
{
	struct pair p;
	pair_start(&p);

	pair_create(&p, "D");
	struct stor_mailbox dmb = mailbox_on(p.n2.db, "D");
	const char *err;
	const char *texts[] = { "Subject: 1\r\n\r\none\r\n", "Subject: 2\r\n\r\ntwo\r\n",
				"Subject: 3\r\n\r\nthree\r\n" };
	for (int k = 0; k < 3; k++)
		pair_append(&p, &p.n2, &dmb.guid, texts[k]);
	/* A sync on the master moved message 2 (the engine's tombstone at
	 * 2); then a user expunges message 1, which streams both. */
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(p.n2.db, &dmb.guid, 2, 10, 0, &err), 0);
	uint32_t one = 1;
	struct copy_done d;
	memset(&d, 0, sizeof(d));
	repl_expunge(p.n2.repl, "bob", &dmb.guid, &one, 1, copy_done_cb, &d);
	CU_ASSERT_TRUE_FATAL(loop_until(p.loop, &d.done));
	CU_ASSERT_EQUAL_FATAL(d.error, REPL_OK);
	for (int i = 0; i < 1000 && (tomb_kind(p.n1.db, &dmb.guid, 1) < 0 ||
				     tomb_kind(p.n1.db, &dmb.guid, 2) < 0);
	     i++)
		ev_run(p.loop, EVRUN_ONCE);
	CU_ASSERT_EQUAL(tomb_kind(p.n2.db, &dmb.guid, 1), 1);
	CU_ASSERT_EQUAL(tomb_kind(p.n2.db, &dmb.guid, 2), 0);
	CU_ASSERT_EQUAL(tomb_kind(p.n1.db, &dmb.guid, 1), 1);
	CU_ASSERT_EQUAL(tomb_kind(p.n1.db, &dmb.guid, 2), 0);
	stor_mailbox_free(&dmb);
	pair_stop(&p);
}

/* A MOVE whose source a sync moves to another UID (a UID conflict fixed
 * on both nodes) while the copy is on its way to the master: the message
 * must leave the source at its new UID, not stay there while the client is
 * told it moved (the fault campaign's acked-expunge-holds, seed 7707). */
static void test_move_of_a_source_renumbered_meanwhile(void)
{
	struct pair p;
	pair_start(&p);
	/* S and D mastered by node 2 (the first to write to them). */
	const char *names[] = { "S", "D" };
	struct stor_mailbox mbs[2];
	const char *err;
	const char *texts[] = { "Subject: x\r\n\r\nthe one that moves\r\n",
				"Subject: d\r\n\r\nd\r\n" };
	for (int k = 0; k < 2; k++) {
		pair_create(&p, names[k]);
		mbs[k] = mailbox_on(p.n2.db, names[k]);
		pair_append(&p, &p.n2, &mbs[k].guid, texts[k]);
	}
	uint32_t xu = 1;
	struct stor_msg xm;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(p.n2.db, &mbs[0].guid, xu, &xm, &err), 1);
	struct guid x = xm.guid;
	stor_msg_free(&xm);
	for (int i = 0; i < 1000; i++) {
		uint32_t at;
		if (stor_msg_find_guid(p.n1.db, &mbs[0].guid, &x, &at, &err) > 0)
			break;
		ev_run(p.loop, EVRUN_ONCE);
	}
	uint32_t at;
	CU_ASSERT_EQUAL_FATAL(stor_msg_find_guid(p.n1.db, &mbs[0].guid, &x, &at, &err), 1);
	CU_ASSERT_EQUAL_FATAL(at, xu);
	/* Node 1 moves X; before the master answers the copy, a sync moves
	 * X to another UID on both nodes. */
	struct copy_done d;
	memset(&d, 0, sizeof(d));
	repl_copy(p.n1.repl, "bob", &mbs[0].guid, &xu, 1, &mbs[1].guid, true, copy_done_cb, &d);
	CU_ASSERT_FALSE(d.done);
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(p.n1.db, &mbs[0].guid, xu, xu + 5, 0, &err), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(p.n2.db, &mbs[0].guid, xu, xu + 5, 0, &err), 0);
	CU_ASSERT_TRUE_FATAL(loop_until(p.loop, &d.done));
	CU_ASSERT_EQUAL(d.error, REPL_OK);
	CU_ASSERT_EQUAL(d.copied, 1);
	for (int i = 0; i < 1000; i++) {
		if (stor_msg_find_guid(p.n1.db, &mbs[0].guid, &x, &at, &err) == 0 &&
		    stor_msg_find_guid(p.n2.db, &mbs[0].guid, &x, &at, &err) == 0)
			break;
		ev_run(p.loop, EVRUN_ONCE);
	}
	struct stor_db *dbs[] = { p.n1.db, p.n2.db };
	for (size_t k = 0; k < 2; k++) {
		CU_ASSERT_EQUAL(stor_msg_find_guid(dbs[k], &mbs[0].guid, &x, &at, &err), 0);
		stor_msg_list msgs;
		CU_ASSERT_EQUAL_FATAL(stor_msg_list_range(dbs[k], &mbs[1].guid, 1, UINT32_MAX, &msgs,
							  &err), 0);
		CU_ASSERT_EQUAL(msgs.count, 2);
		stor_msg_list_free(&msgs);
	}
	stor_mailbox_free(&mbs[0]);
	stor_mailbox_free(&mbs[1]);
	pair_stop(&p);
}

/* A change a node makes as the master waits before it runs (the master
 * is asked, or catches up with its peers, or a resync holds the mailbox),
 * and a sync moves its message to another UID meanwhile: the change must
 * reach the message where it is now and nothing at its old UID.  Run by
 * the UIDs it was given, a MOVE's expunge (the fault campaign's
 * acked-expunge-holds, partition seed 200: a MOVE held while a new master
 * caught up) left the message in place, and a STORE missed it. */
static void master_change_of_a_message_renumbered_meanwhile(bool expunge)
{
	struct pair p;
	pair_start(&p);
	const char *err;
	pair_create(&p, "S");
	struct stor_mailbox mb = mailbox_on(p.n2.db, "S");
	const char *texts[] = { "Subject: x\r\n\r\nthe one that moves\r\n",
				"Subject: y\r\n\r\nthe other one\r\n" };
	for (int k = 0; k < 2; k++)
		pair_append(&p, &p.n2, &mb.guid, texts[k]);
	uint32_t xu = 1, at = 0;
	struct stor_msg xm;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(p.n2.db, &mb.guid, xu, &xm, &err), 1);
	struct guid x = xm.guid;
	stor_msg_free(&xm);
	for (int i = 0; i < 1000 && stor_msg_find_guid(p.n1.db, &mb.guid, &x, &at, &err) <= 0; i++)
		ev_run(p.loop, EVRUN_ONCE);
	CU_ASSERT_EQUAL_FATAL(stor_msg_find_guid(p.n1.db, &mb.guid, &x, &at, &err), 1);
	/* Node 2, the master, takes the change for X at xu; before it runs, a
	 * sync moves X to another UID on both nodes. */
	struct copy_done d;
	memset(&d, 0, sizeof(d));
	if (expunge) {
		repl_expunge(p.n2.repl, "bob", &mb.guid, &xu, 1, copy_done_cb, &d);
	} else {
		struct stor_store st;
		memset(&st, 0, sizeof(st));
		st.op = STOR_FLAGS_ADD;
		st.flags = STOR_FLAG_FLAGGED;
		repl_store(p.n2.repl, "bob", &mb.guid, &xu, 1, &st, copy_done_cb, &d);
	}
	bool ran_at_once = d.done;
	/* As one sync does it: the same modseq on both sides, N. */
	struct stor_mailbox m1 = mailbox_on(p.n1.db, "S"), m2 = mailbox_on(p.n2.db, "S");
	uint64_t n = (m1.highestmodseq > m2.highestmodseq ? m1.highestmodseq : m2.highestmodseq) + 1;
	stor_mailbox_free(&m1);
	stor_mailbox_free(&m2);
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(p.n1.db, &mb.guid, xu, xu + 5, n, &err), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(p.n2.db, &mb.guid, xu, xu + 5, n, &err), 0);
	CU_ASSERT_TRUE_FATAL(loop_until(p.loop, &d.done));
	CU_ASSERT_EQUAL(d.error, REPL_OK);
	if (!ran_at_once) {
		/* Until the replica has the expunge too (bounded). */
		for (int i = 0; i < 1000 && (!expunge ||
					     stor_msg_find_guid(p.n1.db, &mb.guid, &x, &at, &err) != 0);
		     i++)
			ev_run(p.loop, EVRUN_ONCE);
		struct stor_db *dbs[] = { p.n2.db, p.n1.db };
		for (size_t k = 0; k < 2; k++) {
			int found = stor_msg_find_guid(dbs[k], &mb.guid, &x, &at, &err);
			if (!expunge && k == 1)
				continue;
			if (expunge) {
				CU_ASSERT_EQUAL(found, 0);
			} else {
				CU_ASSERT_EQUAL_FATAL(found, 1);
				CU_ASSERT_EQUAL_FATAL(stor_msg_get(dbs[k], &mb.guid, at, &xm, &err), 1);
				/* On the master.  (The replica, whose copy this
				 * test moved behind its replicator's back, is
				 * not judged here.) */
				if (k == 0)
					CU_ASSERT_TRUE(xm.flags & STOR_FLAG_FLAGGED);
				stor_msg_free(&xm);
			}
			/* The other message is untouched. */
			CU_ASSERT_EQUAL(stor_msg_get(dbs[k], &mb.guid, 2, &xm, &err), 1);
			stor_msg_free(&xm);
		}
	}
	CU_ASSERT_FALSE(ran_at_once); /* the window this test is about exists */
	stor_mailbox_free(&mb);
	pair_stop(&p);
}

static void test_master_expunge_of_a_message_renumbered_meanwhile(void)
{
	master_change_of_a_message_renumbered_meanwhile(true);
}

static void test_master_store_of_a_message_renumbered_meanwhile(void)
{
	master_change_of_a_message_renumbered_meanwhile(false);
}

/* Issue 13, fault campaign flag-holds 9957/9791/9990: a forwarded STORE
 * UNCHANGEDSINCE whose answer is lost (the link paused past the forwarding
 * timeout, or cut) is sent again; the master had applied it, and run again
 * UNCHANGEDSINCE found the modseq the first attempt gave the message and
 * answered MODIFIED, so the client heard "failed" of a change that was
 * made.  Node 2 (the master) here serves the first forwarded STORE under
 * another tag, so its answer never reaches node 1; node 1 times out and
 * sends it again.  With refuse_req it plays a master of an earlier build
 * instead, answering a STORE with REQ BAD [ARGS]. */
enum lost_mode {
	LOST_ANSWER,                   /* node 1 never hears the answer, times out */
	LOST_LINK,                     /* the answer cuts the link */
	LOST_REFUSE_REQ,               /* a master of an earlier build */
};

struct lost_answer {
	struct repl_cluster *cl;
	enum lost_mode mode;
	unsigned stores, with_req;
};

static void lose_first_store_answer(void *ctx, uint32_t sid, struct proto_conn *conn,
				    const struct proto_cmd *cmd, const struct guid *selected)
{
	struct lost_answer *la = ctx;
	size_t npos;
	const char *err;
	if (proto_cmd_is(cmd, "STORE") && proto_cmd_validate(cmd, &npos, &err) == 0 &&
	    proto_cmd_option(cmd, npos, "ORIGIN") == NULL) {
		la->stores++;
		bool req = proto_cmd_option(cmd, npos, "REQ") != NULL;
		la->with_req += req;
		if (la->mode == LOST_REFUSE_REQ && req) {
			proto_conn_reply(conn, cmd->tag, "BAD", "ARGS", "STORE: unknown option 5");
			return;
		}
		if (la->mode != LOST_REFUSE_REQ && la->stores == 1) {
			/* Applied, answered under a tag of node 1's side that
			 * it never sent (ignored as a late answer: node 1 hears
			 * nothing and times out), or of node 2's side (a
			 * protocol error: node 1 cuts the link). */
			char tag[16];
			snprintf(tag, sizeof(tag), "%c999999999",
				 la->mode == LOST_ANSWER ? cmd->tag[0] : 'Z');
			struct proto_cmd lost = *cmd;
			lost.tag = tag;
			cl_replica_command(la->cl, sid, conn, &lost, selected);
			return;
		}
	}
	cl_replica_command(la->cl, sid, conn, cmd, selected);
}

struct store_done {
	bool done;
	enum repl_error error;
	size_t changed, failed;
};

static void store_done_cb(void *ctx, const struct repl_result *res)
{
	struct store_done *d = ctx;
	d->done = true;
	d->error = res->error;
	d->changed = res->changed_count;
	d->failed = res->failed_count;
}

static bool has_draft(struct stor_db *db, const struct guid *mailbox, uint32_t uid)
{
	struct stor_msg m;
	const char *err;
	if (stor_msg_get(db, mailbox, uid, &m, &err) <= 0)
		return false;
	bool draft = (m.flags & STOR_FLAG_DRAFT) != 0;
	stor_msg_free(&m);
	return draft;
}

static void conditional_store_forwarded(enum lost_mode mode)
{
	struct pair p;
	struct stor_mailbox dmb;
	pair_start_d(&p, &dmb);
	const char *err;
	struct stor_mailbox on2 = mailbox_on(p.n2.db, "D");
	uint32_t uid = on2.uidnext - 1;
	stor_mailbox_free(&on2);
	/* The message, as the master made it, here too. */
	struct stor_msg m;
	uint64_t modseq = 0;
	for (int i = 0; i < 1000 && modseq == 0; i++) {
		if (stor_msg_get(p.n1.db, &dmb.guid, uid, &m, &err) > 0) {
			modseq = m.modseq;
			stor_msg_free(&m);
		} else {
			ev_run(p.loop, EVRUN_ONCE);
		}
	}
	CU_ASSERT_FATAL(modseq != 0);

	struct lost_answer la = { to_cl(p.n2.repl), mode, 0, 0 };
	repl_sync_set_live(p.n2.sync, lose_first_store_answer, &la);
	struct stor_store st;
	memset(&st, 0, sizeof(st));
	st.op = STOR_FLAGS_ADD;
	st.flags = STOR_FLAG_DRAFT;
	st.unchangedsince = modseq;
	struct store_done d;
	memset(&d, 0, sizeof(d));
	repl_store(p.n1.repl, "bob", &dmb.guid, &uid, 1, &st, store_done_cb, &d);
	/* Past the forwarding timeout, which the lost answer takes. */
	ev_now_update(p.loop);
	ev_tstamp end = ev_now(p.loop) + CL_FORWARD_TIMEOUT_MS / 1000.0 + 10.0;
	while (!d.done && ev_now(p.loop) < end)
		ev_run(p.loop, EVRUN_ONCE);
	CU_ASSERT_TRUE_FATAL(d.done);
	CU_ASSERT_EQUAL(d.error, REPL_OK);
	if (d.failed != 0)
		fprintf(stderr, "\n%u STOREs at the master (%u with REQ), %zu MODIFIED\n", la.stores,
			la.with_req, d.failed);
	/* Changed, and so not MODIFIED. */
	CU_ASSERT_EQUAL(d.failed, 0);
	CU_ASSERT_EQUAL(d.changed, 1);
	if (mode != LOST_LINK) {
		/* Through the master both times, never alone.  (With the
		 * link cut, node 1 may run it again as the new master.) */
		CU_ASSERT_EQUAL(la.stores, 2);
		CU_ASSERT_EQUAL(la.with_req, mode == LOST_REFUSE_REQ ? 1 : 2);
		CU_ASSERT_EQUAL(to_cl(p.n1.repl)->autonomous_changes, 0);
	}
	CU_ASSERT_TRUE(has_draft(p.n1.db, &dmb.guid, uid));
	for (int i = 0; i < 1000 && !has_draft(p.n2.db, &dmb.guid, uid); i++)
		ev_run(p.loop, EVRUN_ONCE);
	CU_ASSERT_TRUE(has_draft(p.n2.db, &dmb.guid, uid));
	if (mode == LOST_ANSWER) {
		/* A later request is not taken for the first: the message has
		 * changed since, so it is MODIFIED. */
		st.op = STOR_FLAGS_REMOVE;
		memset(&d, 0, sizeof(d));
		repl_store(p.n1.repl, "bob", &dmb.guid, &uid, 1, &st, store_done_cb, &d);
		CU_ASSERT_TRUE_FATAL(loop_until(p.loop, &d.done));
		CU_ASSERT_EQUAL(d.error, REPL_OK);
		CU_ASSERT_EQUAL(d.failed, 1);
		CU_ASSERT_EQUAL(la.stores, 3);
		CU_ASSERT_TRUE(has_draft(p.n2.db, &dmb.guid, uid));
	}
	repl_sync_set_live(p.n2.sync, cl_replica_command, to_cl(p.n2.repl));
	stor_mailbox_free(&dmb);
	pair_stop(&p);
}

static void test_conditional_store_resent_after_a_lost_answer(void)
{
	conditional_store_forwarded(LOST_ANSWER);
}

static void test_conditional_store_after_a_cut_is_not_modified(void)
{
	conditional_store_forwarded(LOST_LINK);
}

static void test_master_of_an_earlier_build_gets_no_store_req(void)
{
	conditional_store_forwarded(LOST_REFUSE_REQ);
}

/* ---- the stall detector (repl-mm.c) ---- */

struct stall_ask {
	struct repl_mm *mm;
	unsigned block_ms;  /* the callback blocks the loop this long first */
	bool asked, stalled;
};

static void stall_ask_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct stall_ask *a = w->data;
	usleep(a->block_ms * 1000u);
	a->stalled = repl_mm_stalled(a->mm);
	a->asked = true;
}

/* repl_mm_stalled(), asked by a timer callback after_s from now that
 * first blocks the loop block_ms, as a request handled then would. */
static bool stalled_at(struct ev_loop *loop, struct repl_mm *mm, double after_s,
		       unsigned block_ms)
{
	struct stall_ask a = { mm, block_ms, false, false };
	ev_timer t;
	ev_timer_init(&t, stall_ask_cb, after_s, 0.);
	t.data = &a;
	ev_now_update(loop);
	ev_timer_start(loop, &t);
	for (int i = 0; i < 10000 && !a.asked; i++)
		ev_run(loop, EVRUN_ONCE);
	ev_timer_stop(loop, &t);
	CU_ASSERT_TRUE(a.asked);
	return a.stalled;
}

static void test_stall_seen_in_its_turn_and_held_one_dead_timeout(void)
{
	char *dir = test_mkdtemp();
	/* A peer it never links to (a node alone has no master to doubt): no
	 * socket is made, the secret file is never read. */
	char *text = xasprintf("node_id = 1\ndata_dir = %s\npeer = 2 127.0.0.1:9\n"
			       "repl_listen = 127.0.0.1:9\ncluster_secret_file = %s/secret\n",
			       dir, dir);
	char *err = NULL;
	struct config *cfg = config_parse("s.conf", text, &err);
	free(text);
	CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	struct repl_mm *mm = repl_mm_create(loop, cfg);
	CU_ASSERT_FALSE(stalled_at(loop, mm, 0.01, 0));
	/* A slow turn, well under the dead timeout, is no stall. */
	CU_ASSERT_FALSE(stalled_at(loop, mm, 0.01, REPL_MM_STALL_MS / 2));
	/* A turn blocked past it (a hung disk): a request handled later in
	 * that same turn already sees it. */
	CU_ASSERT_TRUE(stalled_at(loop, mm, 0.01, REPL_MM_STALL_MS + 200));
	/* Held for one dead timeout from there, the loop running meanwhile. */
	CU_ASSERT_TRUE(stalled_at(loop, mm, REPL_MM_STALL_MS / 3000.0, 0));
	CU_ASSERT_FALSE(stalled_at(loop, mm, REPL_MM_STALL_MS * 0.8 / 1000.0, 0));
	repl_mm_destroy(&mm);
	ev_loop_destroy(loop);
	config_free(&cfg);
	test_rmtree(dir);
	free(dir);
}

const struct test_case repl_cluster_cases[] = {
	{ "log entries round trip, every kind", test_entry_round_trip_every_kind },
	{ "degraded_writes = refuse: refused before made, as master and alone",
	  test_degraded_refuse },
	{ "degraded_writes = accept: OK, counted as under-replicated", test_degraded_accept },
	{ "a truncated log entry is refused at every length", test_entry_every_truncation_is_refused },
	{ "a damaged log entry is refused", test_entry_damage_is_refused },
	{ "alone: changes are made here and the resync is remembered across a restart",
	  test_alone_changes_are_made_here_and_resync_remembered },
	{ "a peer's UIDs and modseqs past the bounds are refused, the mailbox unchanged",
	  test_peer_values_past_the_bounds_are_refused },
	{ "a COPY whose source is expunged meanwhile sends no empty text",
	  test_copy_of_a_source_expunged_meanwhile_sends_no_empty_text },
	{ "a replica keeps who expunged (BY USER)", test_replica_keeps_who_expunged },
	{ "an engine EXPUNGE of a copy holding a change the sender lacks is refused (13039)",
	  test_engine_expunge_keeps_a_change_the_sender_lacks },
	{ "an asked resync waits out a crossing background one of the user",
	  test_asked_resync_waits_out_a_crossing_one },
	{ "a master of an earlier build: BAD [ARGS] to HOLDER, resent without it",
	  test_master_of_an_earlier_build_gets_no_holder },
	{ "a holder that cannot hold the master's UID resends without HOLDER",
	  test_holder_that_cannot_hold_resends_without },
	{ "a forwarded APPEND this node cannot store tells no UID (12218)",
	  test_forwarded_append_not_stored_here_tells_no_uid },
	{ "a resent SAVE answered after a resync renumbered it tells no stale UID (13020)",
	  test_resent_save_answered_after_a_renumber_tells_no_stale_uid },
	{ "a forwarded SAVE renumbered on the master before its answer: told where it is",
	  test_forwarded_save_answered_where_it_is_now },
	{ "a forwarded SAVE expunged on the master before its answer tells no UID",
	  test_forwarded_save_expunged_before_its_answer_tells_no_uid },
	{ "an EXPUNGED answer at or above UIDNEXT raises UIDNEXT here, no resend",
	  test_expunged_answer_above_uidnext_raises_it },
	{ "a conditional STORE resent after its answer was lost is not MODIFIED",
	  test_conditional_store_resent_after_a_lost_answer },
	{ "a conditional STORE applied, then the link cut, is not MODIFIED",
	  test_conditional_store_after_a_cut_is_not_modified },
	{ "a master of an earlier build: BAD [ARGS] to REQ on STORE, resent without it",
	  test_master_of_an_earlier_build_gets_no_store_req },
	{ "a resync's fsyncs run off the loop, its end waits for them",
	  test_resync_waits_for_durability_off_the_loop },
	{ "a resync whose peer's sync fails is not acknowledged",
	  test_resync_failed_sync_is_not_acknowledged },
	{ "resyncs of one user that refuse each other: the lower node id runs first",
	  test_crossing_resyncs_resolve_lower_id_first },
	{ "a MOVE whose source a sync renumbered meanwhile still removes it",
	  test_move_of_a_source_renumbered_meanwhile },
	{ "an EXPUNGE on the master reaches its message renumbered meanwhile",
	  test_master_expunge_of_a_message_renumbered_meanwhile },
	{ "a STORE on the master reaches its message renumbered meanwhile",
	  test_master_store_of_a_message_renumbered_meanwhile },
	{ "a stall is seen in the turn that blocked and held one dead timeout",
	  test_stall_seen_in_its_turn_and_held_one_dead_timeout },
	{ NULL, NULL },
};
