/* The user table's admin changes (repl-users.c) on a node without peers:
 * a change is answered once the node's group commit made it durable, and
 * that commit's fsync runs in storage's helper thread while the loop goes
 * on, never in a blocking stor_sync() that would hold every IMAP client of
 * the node for the fsync. */
#include "tests/replicator/tests.h"

#include <stdlib.h>
#include <string.h>

#include "lib/xalloc.h"
#include "replicator/repl-users.h"
#include "replicator/repl.h"
#include "storage/storage-private.h"
#include "storage/storage-users.h"

struct unode {
	char *dir;
	struct ev_loop *loop;
	struct config *cfg;
	struct stor_db *db;
	struct repl *repl;
	struct repl_users *users;
};

static void unode_start(struct unode *n)
{
	char *err = NULL;
	memset(n, 0, sizeof(*n));
	n->dir = test_mkdtemp();
	n->loop = ev_loop_new(EVFLAG_AUTO);
	char *text = xasprintf("node_id = 1\ndata_dir = %s\n", n->dir);
	n->cfg = config_parse("u.conf", text, &err);
	free(text);
	CU_ASSERT_PTR_NOT_NULL_FATAL(n->cfg);
	n->db = repl_test_store_open("%s/store", n->dir);
	struct repl_settings rs = { 1, 0 };
	n->repl = repl_local_create(n->loop, n->db, &rs);
	n->users = repl_users_create(n->loop, n->cfg, n->db);
	repl_users_attach(n->users, NULL);
}

/* sync_ok: the last sync must succeed.  After a failed sync its result
 * is not checked: it depends on whether a loop turn already retried (and
 * gave up on) the failed journal before the node stopped. */
static void unode_stop(struct unode *n, bool sync_ok)
{
	repl_flush(n->repl);
	repl_users_destroy(&n->users);
	repl_destroy(&n->repl);
	const char *err;
	int r = stor_sync(n->db, &err);
	if (sync_ok)
		CU_ASSERT_EQUAL(r, 0);
	stor_close(&n->db);
	config_free(&n->cfg);
	ev_loop_destroy(n->loop);
	test_rmtree(n->dir);
	free(n->dir);
}

struct answer {
	bool done, ok;
	char text[200];
};

static void answer_cb(void *ctx, bool ok, const void *data, size_t len, const char *text)
{
	struct answer *a = ctx;
	(void)data;
	(void)len;
	a->done = true;
	a->ok = ok;
	snprintf(a->text, sizeof(a->text), "%s", text != NULL ? text : "");
}

struct ticks {
	ev_timer t;
	unsigned n;
};

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	((struct ticks *)w)->n++;
}

/* Runs the loop until a is answered, or (a NULL) for count 10 ms ticks;
 * 5 s at most.  Returns the ticks that passed. */
static unsigned run_loop(struct unode *n, const struct answer *a, unsigned count)
{
	struct ticks tc = { .n = 0 };
	ev_timer_init(&tc.t, tick_cb, 0.01, 0.01);
	ev_timer_start(n->loop, &tc.t);
	ev_now_update(n->loop);
	ev_tstamp end = ev_now(n->loop) + 5.0;
	while ((a != NULL ? !a->done : tc.n < count) && ev_now(n->loop) < end)
		ev_run(n->loop, EVRUN_ONCE);
	ev_timer_stop(n->loop, &tc.t);
	return tc.n;
}

static void user_add(struct unode *n, const char *name, struct answer *a)
{
	char *tok[] = { "USER-ADD", (char *)name, "{PLAIN}secret" };
	memset(a, 0, sizeof(*a));
	repl_users_admin(n->users, tok, 3, answer_cb, a);
}

/* A slow disk: the change waits for its fsync, the loop goes on. */
static void test_admin_change_waits_off_the_loop(void)
{
	struct unode n;
	unode_start(&n);
	unsigned blocking = stor_test_blocking_syncs(n.db);
	stor_test_hold_syncs(n.db, true);
	struct answer a;
	user_add(&n, "alice", &a);
	/* Not answered while its fsync is held, and the loop turns. */
	CU_ASSERT_FALSE(a.done);
	CU_ASSERT_EQUAL(run_loop(&n, NULL, 50), 50);
	CU_ASSERT_FALSE(a.done);
	CU_ASSERT_TRUE(stor_test_held_syncs(n.db) > 0);
	stor_test_hold_syncs(n.db, false);
	run_loop(&n, &a, 0);
	CU_ASSERT_TRUE(a.done);
	CU_ASSERT_TRUE(a.ok);
	CU_ASSERT_PTR_NOT_NULL(strstr(a.text, "replicated to 0 of 0 peers"));
	CU_ASSERT_EQUAL(stor_test_blocking_syncs(n.db), blocking);
	struct stor_cuser u;
	const char *err;
	CU_ASSERT_EQUAL_FATAL(stor_cuser_get(n.db, "alice", &u, &err), 1);
	CU_ASSERT_PTR_NOT_NULL(u.hash);
	stor_cuser_free(&u);
	unode_stop(&n, true);
}

/* A failing disk: the change is refused, never acknowledged. */
static void test_admin_change_failed_sync(void)
{
	struct unode n;
	unode_start(&n);
	stor_test_fail_next_sync(n.db);
	struct answer a;
	user_add(&n, "bob", &a);
	run_loop(&n, &a, 0);
	CU_ASSERT_TRUE(a.done);
	CU_ASSERT_FALSE(a.ok);
	CU_ASSERT_PTR_NOT_NULL(strstr(a.text, "cannot store the user"));
	/* The store refuses every write after a failed sync, until a
	 * restart: the next change is refused at once. */
	user_add(&n, "carol", &a);
	run_loop(&n, &a, 0);
	CU_ASSERT_TRUE(a.done);
	CU_ASSERT_FALSE(a.ok);
	unode_stop(&n, false);
}

const struct test_case repl_users_cases[] = {
	{ "an admin user change: answered after its fsync, which runs off the loop",
	  test_admin_change_waits_off_the_loop },
	{ "an admin user change whose fsync fails is refused", test_admin_change_failed_sync },
	{ NULL, NULL },
};
