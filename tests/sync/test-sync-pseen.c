/* Tests of private \Seen records in a sync (sync/sync-pseen.c, SPEC.md
 * 7.7): two stores joined by the in-memory transport.  After a sync both
 * hold the same records (seen, time and modseq), the same digest and the
 * same dump, whoever was client; the later change wins per record; a
 * resync drops records of a GUID with a GUID tombstone; hostile PSEEN lines
 * in a sync are refused and change nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/mail-limits.h"
#include "storage/storage-pseen.h"
#include "storage/storage.h"
#include "sync/sync.h"
#include "tests/testutil.h"

#define OWNER "alice"

struct node {
	char *dir;
	struct stor_db *db;
	uint32_t sid;
};

static void node_open(struct node *n, uint32_t sid)
{
	struct stor_settings set;
	char *error = NULL;
	n->dir = test_mkdtemp();
	n->sid = sid;
	memset(&set, 0, sizeof(set));
	set.dir = n->dir;
	n->db = NULL;
	if (stor_open(&set, &n->db, &error) < 0) {
		fprintf(stderr, "stor_open: %s\n", error);
		free(error);
	}
	CU_ASSERT_PTR_NOT_NULL_FATAL(n->db);
}

static void node_close(struct node *n)
{
	stor_close(&n->db);
	test_rmtree(n->dir);
	free(n->dir);
	n->dir = NULL;
}

/* The same mailbox (GUID, UIDVALIDITY) on both nodes. */
static struct guid mk_shared_mailbox(struct node *a, struct node *b)
{
	struct stor_mailbox_create req;
	struct stor_mailbox mb;
	const char *error = NULL;
	memset(&req, 0, sizeof(req));
	req.user = OWNER;
	req.name = "Team";
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(a->db, &req, &mb, &error), 0);
	struct guid g = mb.guid;
	struct stor_mailbox_create req2 = {
		.user = OWNER, .name = "Team", .guid = &g, .uidvalidity = mb.uidvalidity,
	};
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(b->db, &req2, NULL, &error), 0);
	stor_mailbox_free(&mb);
	return g;
}

static struct guid append(struct node *n, const struct guid *mb, const char *text)
{
	struct stor_append req;
	struct guid g;
	const char *error = NULL;
	guid_generate(&g);
	memset(&req, 0, sizeof(req));
	req.guid = &g;
	req.internaldate = 1700000000;
	req.text = text;
	req.text_len = strlen(text);
	CU_ASSERT_EQUAL_FATAL(stor_msg_append(n->db, mb, &req, NULL, NULL, &error), 0);
	return g;
}

static uint64_t hms(struct node *n, const struct guid *mb)
{
	struct stor_mailbox m;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(n->db, mb, &m, &error), 1);
	uint64_t v = m.highestmodseq;
	stor_mailbox_free(&m);
	return v;
}

/* A record as a change made on this node at a chosen time (a replica's
 * write with the next modseq: the times are the test's). */
static void put(struct node *n, const struct guid *mb, const char *user, const struct guid *g,
		bool seen, int64_t time_ms)
{
	struct stor_pseen_change c = { *g, seen, hms(n, mb) + 1, time_ms };
	const char *error = NULL;
	int r = stor_pseen_put(n->db, mb, user, STOR_PSEEN_REPLICA, &c, 1, NULL, NULL, &error);
	if (r < 0)
		fprintf(stderr, "pseen put: %s\n", error);
	CU_ASSERT_EQUAL_FATAL(r, 0);
}

/* 1 with *r (user not filled), 0 none. */
static int get(struct node *n, const struct guid *mb, const char *user, const struct guid *g,
	       struct stor_pseen *r)
{
	const char *error;
	int ret = stor_pseen_get(n->db, mb, g, user, r, &error);
	CU_ASSERT(ret >= 0);
	return ret;
}

static char *dump(struct node *n)
{
	struct buf out = BUF_INIT;
	const char *error;
	CU_ASSERT_EQUAL(stor_dump_user(n->db, OWNER, &out, &error), 0);
	buf_append_byte(&out, '\0');
	return (char *)out.data;
}

static void check_alike(struct node *a, struct node *b, const struct guid *mb)
{
	char *da = dump(a), *db = dump(b);
	CU_ASSERT_STRING_EQUAL(da, db);
	if (strcmp(da, db) != 0)
		fprintf(stderr, "\n--- %u:\n%s--- %u:\n%s", a->sid, da, b->sid, db);
	free(da);
	free(db);
	const char *error = NULL;
	CU_ASSERT_EQUAL(stor_mailbox_check(a->db, mb, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_check(b->db, mb, &error), 0);
	struct stor_mailbox x, y;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(a->db, mb, &x, &error), 1);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(b->db, mb, &y, &error), 1);
	CU_ASSERT(memcmp(x.digest, y.digest, sizeof(x.digest)) == 0);
	CU_ASSERT_EQUAL(x.highestmodseq, y.highestmodseq);
	stor_mailbox_free(&x);
	stor_mailbox_free(&y);
	/* Every record with the same modseq on both sides. */
	stor_pseen_list la, lb;
	CU_ASSERT_EQUAL_FATAL(stor_pseen_all(a->db, mb, &la, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_pseen_all(b->db, mb, &lb, &error), 0);
	CU_ASSERT_EQUAL(la.count, lb.count);
	for (size_t i = 0; i < la.count && i < lb.count; i++) {
		CU_ASSERT(guid_equal(&la.items[i].guid, &lb.items[i].guid));
		CU_ASSERT_STRING_EQUAL(la.items[i].user, lb.items[i].user);
		CU_ASSERT_EQUAL(la.items[i].seen, lb.items[i].seen);
		CU_ASSERT_EQUAL(la.items[i].time_ms, lb.items[i].time_ms);
		CU_ASSERT_EQUAL(la.items[i].modseq, lb.items[i].modseq);
	}
	stor_pseen_list_free(&la);
	stor_pseen_list_free(&lb);
}

static struct sync_report run_sync(struct node *c, struct node *s, bool full, uint32_t seed)
{
	struct sync_settings set = {
		.peer_sid = s->sid, .user = OWNER, .full = full, .step_budget = 3,
	};
	struct sync_pipe *p = sync_pipe_create(seed, 1 + seed % 31);
	struct sync_client *cl = sync_client_create(c->db, &set, sync_pipe_client_transport(p));
	struct sync_server *sv = sync_server_create(s->db, c->sid, sync_pipe_server_transport(p));
	sync_server_set_budget(sv, 1 + seed % 4);
	enum sync_step_result r = sync_pipe_run(p, cl, sv, 1000000);
	if (r != SYNC_STEP_DONE)
		fprintf(stderr, "sync failed: %s / %s\n",
			sync_client_error(cl) ? sync_client_error(cl) : "-",
			sync_server_error(sv) ? sync_server_error(sv) : "-");
	CU_ASSERT_EQUAL(r, SYNC_STEP_DONE);
	struct sync_report rep = *sync_client_report(cl);
	sync_client_destroy(&cl);
	sync_server_destroy(&sv);
	sync_pipe_destroy(&p);
	return rep;
}

/* Both nodes hold messages g[0..2], synced; then records written on each
 * side while apart. */
static void records_apart(bool a_is_client)
{
	struct node a, b;
	node_open(&a, 1);
	node_open(&b, 2);
	struct guid mb = mk_shared_mailbox(&a, &b);
	struct guid g[3];
	for (int i = 0; i < 3; i++)
		g[i] = append(&a, &mb, i == 0 ? "a\r\n" : i == 1 ? "b\r\n" : "c\r\n");
	run_sync(&a, &b, false, 11);
	check_alike(&a, &b, &mb);
	/* One change that reached both (replication): no merge needed. */
	put(&a, &mb, "erin", &g[0], true, 500);
	put(&b, &mb, "erin", &g[0], true, 500);
	/* bob set g0 on a, cleared it later on b: b's clear wins. */
	put(&a, &mb, "bob", &g[0], true, 1000);
	put(&b, &mb, "bob", &g[0], false, 2000);
	/* carol: the same time on both, set on a, clear on b: set wins. */
	put(&a, &mb, "carol", &g[1], true, 3000);
	put(&b, &mb, "carol", &g[1], false, 3000);
	/* dave only on b, frank only on a. */
	put(&b, &mb, "dave", &g[2], true, 4000);
	put(&a, &mb, "frank", &g[2], true, 4500);
	/* bob's g1 later on a than on b. */
	put(&b, &mb, "bob", &g[1], true, 5000);
	put(&a, &mb, "bob", &g[1], false, 6000);
	if (a_is_client)
		run_sync(&a, &b, false, 23);
	else
		run_sync(&b, &a, false, 29);
	check_alike(&a, &b, &mb);
	struct stor_pseen r;
	struct node *both[2] = { &a, &b };
	for (int k = 0; k < 2; k++) {
		struct node *n = both[k];
		CU_ASSERT(get(n, &mb, "bob", &g[0], &r) == 1 && !r.seen && r.time_ms == 2000);
		CU_ASSERT(get(n, &mb, "carol", &g[1], &r) == 1 && r.seen && r.time_ms == 3000);
		CU_ASSERT(get(n, &mb, "dave", &g[2], &r) == 1 && r.seen);
		CU_ASSERT(get(n, &mb, "frank", &g[2], &r) == 1 && r.seen);
		CU_ASSERT(get(n, &mb, "bob", &g[1], &r) == 1 && !r.seen && r.time_ms == 6000);
		CU_ASSERT(get(n, &mb, "erin", &g[0], &r) == 1 && r.seen && r.time_ms == 500);
		uint32_t count;
		const char *error;
		CU_ASSERT(stor_pseen_count(n->db, &mb, "carol", &count, &error) == 0 && count == 1);
		CU_ASSERT(stor_pseen_count(n->db, &mb, "bob", &count, &error) == 0 && count == 0);
	}
	/* Settled: another sync, either way, changes nothing. */
	uint64_t before = hms(&a, &mb);
	run_sync(&b, &a, false, 31);
	run_sync(&a, &b, true, 37);
	check_alike(&a, &b, &mb);
	CU_ASSERT_EQUAL(hms(&a, &mb), before);
	node_close(&a);
	node_close(&b);
}

static void test_records_merge_later_wins_client_a(void)
{
	records_apart(true);
}

static void test_records_merge_later_wins_client_b(void)
{
	records_apart(false);
}

static void test_full_sync_copies_records_to_an_empty_copy(void)
{
	struct node a, b;
	node_open(&a, 1);
	node_open(&b, 2);
	struct guid mb = mk_shared_mailbox(&a, &b);
	struct guid g = append(&a, &mb, "a\r\n");
	put(&a, &mb, "bob", &g, true, 1000);
	run_sync(&b, &a, true, 5);
	check_alike(&a, &b, &mb);
	struct stor_pseen r;
	CU_ASSERT(get(&b, &mb, "bob", &g, &r) == 1 && r.seen && r.time_ms == 1000);
	node_close(&a);
	node_close(&b);
}

/* A user's expunge on one side leaves a GUID tombstone: the other side's
 * records of that GUID go with the sync (SPEC 7.7). */
static void test_resync_drops_records_of_a_tombstoned_guid(void)
{
	struct node a, b;
	node_open(&a, 1);
	node_open(&b, 2);
	struct guid mb = mk_shared_mailbox(&a, &b);
	struct guid g = append(&a, &mb, "a\r\n");
	struct guid keep = append(&a, &mb, "b\r\n");
	run_sync(&a, &b, false, 3);
	put(&b, &mb, "bob", &g, true, 1000);
	put(&b, &mb, "bob", &keep, true, 1000);
	uint32_t uid = 1;
	stor_uid_list gone = ARRAY_INIT;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_msg_expunge_kind(a.db, &mb, &uid, 1, 0, true, &gone, &error),
			      0);
	ARRAY_FREE(&gone);
	run_sync(&a, &b, false, 7);
	struct stor_pseen r;
	CU_ASSERT_EQUAL(get(&b, &mb, "bob", &g, &r), 0);
	CU_ASSERT_EQUAL(get(&a, &mb, "bob", &g, &r), 0);
	CU_ASSERT(get(&a, &mb, "bob", &keep, &r) == 1 && r.seen);
	check_alike(&a, &b, &mb);
	node_close(&a);
	node_close(&b);
}

static void capture_send(void *ctx, const void *data, size_t len)
{
	buf_append(ctx, data, len);
}

static void test_hostile_pseen_lines_in_a_sync(void)
{
	struct node b;
	node_open(&b, 2);
	struct node a;
	node_open(&a, 1);
	struct guid mb = mk_shared_mailbox(&a, &b);
	struct guid g = append(&b, &mb, "x\r\n");
	struct stor_mailbox x;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(b.db, &mb, &x, &error), 1);
	struct buf out = BUF_INIT;
	struct sync_transport t = { capture_send, &out };
	struct sync_server *sv = sync_server_create(b.db, 1, &t);
	char hex[GUID_HEX_SIZE], ghex[GUID_HEX_SIZE];
	guid_to_hex(&mb, hex);
	guid_to_hex(&g, ghex);
	struct buf in = BUF_INIT;
	buf_appendf(&in, "C1 PSEEN bob %s 1 5 5\r\n", ghex); /* no mailbox selected */
	buf_appendf(&in, "C2 MBOX 1 %s Team %u %s\r\nC3 SELECT 1\r\n", OWNER, x.uidvalidity, hex);
	buf_appendf(&in, "C4 PSEEN bob %s 1 5 5\r\n", ghex); /* not in a sync */
	buf_appendf(&in, "C5 SYNC-BEGIN 0 0 1 1\r\n");
	buf_appendf(&in, "C6 PSEEN .public %s 1 5 5\r\n", ghex);
	buf_appendf(&in, "C7 PSEEN bob %s 2 5 5\r\n", ghex);
	buf_appendf(&in, "C8 PSEEN bob %s 1 0 5\r\n", ghex);
	buf_appendf(&in, "C9 PSEEN bob 00000000000000000000000000000000 1 5 5\r\n");
	buf_appendf(&in, "C10 PSEEN bob %s 1 4611686018427387904 5\r\n", ghex);
	buf_appendf(&in, "C11 PSEEN \"b b\" %s 1 5 5\r\n", ghex);
	stor_mailbox_free(&x);
	CU_ASSERT_EQUAL(sync_server_feed(sv, in.data, in.len), 0);
	buf_append_byte(&out, '\0');
	const char *o = (const char *)out.data;
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C1 BAD [NOSELECT]"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C4 BAD [PROTOCOL]"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C5 OK"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C6 BAD [ARGS]"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C7 BAD [ARGS]"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C8 BAD [ARGS]"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C9 BAD [ARGS]"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C10 NO [LIMIT]"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C11 BAD [ARGS]"));
	/* More users' records of one message than a sync may carry. */
	buf_reset(&in);
	for (unsigned i = 0; i <= 4000; i++)
		buf_appendf(&in, "P%u PSEEN u%u %s 1 7 9\r\n", i, i, ghex);
	buf_appendf(&in, "C12 SYNC-END\r\n");
	buf_reset(&out);
	CU_ASSERT_EQUAL(sync_server_feed(sv, in.data, in.len), 0);
	for (int i = 0; i < 1000 && sync_server_busy(sv); i++)
		sync_server_step(sv);
	buf_append_byte(&out, '\0');
	CU_ASSERT_PTR_NOT_NULL(strstr((const char *)out.data, "C12 NO [LIMIT]"));
	/* Nothing was written. */
	stor_pseen_list all;
	CU_ASSERT_EQUAL(stor_pseen_all(b.db, &mb, &all, &error), 0);
	CU_ASSERT_EQUAL(all.count, 0);
	stor_pseen_list_free(&all);
	sync_server_destroy(&sv);
	buf_free(&in);
	buf_free(&out);
	node_close(&a);
	node_close(&b);
}

static const struct test_case cases[] = {
	{ "records changed apart merge, the later wins (a is client)",
	  test_records_merge_later_wins_client_a },
	{ "records changed apart merge, the later wins (b is client)",
	  test_records_merge_later_wins_client_b },
	{ "a full sync copies records to an empty copy",
	  test_full_sync_copies_records_to_an_empty_copy },
	{ "a resync drops records of a GUID with a GUID tombstone",
	  test_resync_drops_records_of_a_tombstoned_guid },
	{ "hostile PSEEN lines in a sync are refused, nothing written",
	  test_hostile_pseen_lines_in_a_sync },
	{ NULL, NULL },
};

static const struct test_suite suites[] = {
	{ "sync: private \\Seen records", cases, NULL, NULL },
	{ NULL, NULL, NULL, NULL },
};

int main(void)
{
	return test_run_suites("test-sync-pseen", suites);
}
