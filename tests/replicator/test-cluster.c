/* Tests of the replicating seam that need no peer: the replication log's
 * entry codec (entries come back from disk, so a damaged one must be
 * refused, never trusted), and what a node does alone when no master can
 * be reached: the change is made here and the user is remembered, across
 * a restart, for a resync with each peer. */
#include "tests/replicator/tests.h"

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/config.h"
#include "lib/xalloc.h"
#include "replicator/repl-cluster-private.h"
#include "replicator/repl-cluster.h"

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
	char *store = xasprintf("%s/store", n->dir);
	struct stor_settings set;
	memset(&set, 0, sizeof(set));
	set.dir = store;
	CU_ASSERT_EQUAL_FATAL(stor_open(&set, &n->db, &err), 0);
	free(store);
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

const struct test_case repl_cluster_cases[] = {
	{ "log entries round trip, every kind", test_entry_round_trip_every_kind },
	{ "degraded_writes = refuse: refused before made, as master and alone",
	  test_degraded_refuse },
	{ "degraded_writes = accept: OK, counted as under-replicated", test_degraded_accept },
	{ "a truncated log entry is refused at every length", test_entry_every_truncation_is_refused },
	{ "a damaged log entry is refused", test_entry_damage_is_refused },
	{ "alone: changes are made here and the resync is remembered across a restart",
	  test_alone_changes_are_made_here_and_resync_remembered },
	{ NULL, NULL },
};
