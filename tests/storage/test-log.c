/* Unit tests of the storage/ replication log, peer cursors, sync state and
 * metadata. */
#include <stdio.h>
#include <string.h>

#include "storage/storage-private.h"
#include "tests/storage/tests.h"

static void test_log_append_read_trim_keeps_sequence(void)
{
	struct tstore t;
	stor_log_list list;
	uint64_t seq, first, last;
	const char *error = NULL;
	char entry[32];
	tstore_open(&t);
	CU_ASSERT_EQUAL(stor_log_bounds(t.db, &first, &last, &error), 0);
	CU_ASSERT_EQUAL(first, 1);
	CU_ASSERT_EQUAL(last, 0);
	for (int i = 1; i <= 10; i++) {
		int n = snprintf(entry, sizeof(entry), "entry %d", i);
		CU_ASSERT_EQUAL(stor_log_append(t.db, entry, (size_t)n, &seq, &error), 0);
		CU_ASSERT_EQUAL(seq, (uint64_t)i);
	}
	CU_ASSERT_EQUAL_FATAL(stor_log_read(t.db, 3, 4, &list, &error), 0);
	CU_ASSERT_EQUAL_FATAL(list.count, 4);
	CU_ASSERT_EQUAL(list.items[0].seq, 4);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&list.items[0].data), "entry 4");
	CU_ASSERT_EQUAL(list.items[3].seq, 7);
	stor_log_list_free(&list);
	CU_ASSERT_EQUAL_FATAL(stor_log_read(t.db, 8, 100, &list, &error), 0);
	CU_ASSERT_EQUAL(list.count, 2);
	stor_log_list_free(&list);

	CU_ASSERT_EQUAL(stor_log_trim(t.db, 6, &error), 0);
	CU_ASSERT_EQUAL(stor_log_bounds(t.db, &first, &last, &error), 0);
	CU_ASSERT_EQUAL(first, 7);
	CU_ASSERT_EQUAL(last, 10);
	CU_ASSERT_EQUAL_FATAL(stor_log_read(t.db, 0, 100, &list, &error), 0);
	CU_ASSERT_EQUAL_FATAL(list.count, 4);
	CU_ASSERT_EQUAL(list.items[0].seq, 7);
	stor_log_list_free(&list);

	/* Trimming everything never reuses a sequence number, even after a
	 * reopen. */
	CU_ASSERT_EQUAL(stor_log_trim(t.db, 10, &error), 0);
	tstore_reopen(&t);
	CU_ASSERT_EQUAL(stor_log_bounds(t.db, &first, &last, &error), 0);
	CU_ASSERT_EQUAL(first, 11);
	CU_ASSERT_EQUAL(last, 10);
	CU_ASSERT_EQUAL(stor_log_append(t.db, "x", 1, &seq, &error), 0);
	CU_ASSERT_EQUAL(seq, 11);
	/* Empty entries are fine. */
	CU_ASSERT_EQUAL(stor_log_append(t.db, "", 0, &seq, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_log_read(t.db, 11, 10, &list, &error), 0);
	CU_ASSERT_EQUAL_FATAL(list.count, 1);
	CU_ASSERT_EQUAL(list.items[0].data.len, 0);
	stor_log_list_free(&list);
	tstore_close(&t);
}

static void test_log_cursors_per_peer(void)
{
	struct tstore t;
	uint64_t seq = 99;
	const char *error = NULL;
	tstore_open(&t);
	CU_ASSERT_EQUAL(stor_log_cursor_get(t.db, 2, &seq, &error), 0);
	CU_ASSERT_EQUAL(seq, 0);
	CU_ASSERT_EQUAL(stor_log_cursor_set(t.db, 2, 17, &error), 0);
	CU_ASSERT_EQUAL(stor_log_cursor_set(t.db, 3, 5, &error), 0);
	tstore_reopen(&t);
	CU_ASSERT_EQUAL(stor_log_cursor_get(t.db, 2, &seq, &error), 0);
	CU_ASSERT_EQUAL(seq, 17);
	CU_ASSERT_EQUAL(stor_log_cursor_get(t.db, 3, &seq, &error), 0);
	CU_ASSERT_EQUAL(seq, 5);
	tstore_close(&t);
}

static void test_sync_state_per_peer_and_mailbox(void)
{
	struct tstore t;
	struct stor_sync_state st = { 100, 20, 300 }, got;
	struct guid a, b;
	const char *error = NULL;
	tstore_open(&t);
	guid_generate(&a);
	guid_generate(&b);
	CU_ASSERT_EQUAL(stor_sync_state_get(t.db, 2, &a, &got, &error), 0);
	CU_ASSERT_EQUAL(got.uidvalidity, 0);
	CU_ASSERT_EQUAL(stor_sync_state_set(t.db, 2, &a, &st, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_sync_state_get(t.db, 2, &a, &got, &error), 1);
	CU_ASSERT_EQUAL(got.uidvalidity, 100);
	CU_ASSERT_EQUAL(got.uidnext, 20);
	CU_ASSERT_EQUAL(got.highestmodseq, 300);
	CU_ASSERT_EQUAL(stor_sync_state_get(t.db, 3, &a, &got, &error), 0);
	CU_ASSERT_EQUAL(stor_sync_state_get(t.db, 2, &b, &got, &error), 0);
	tstore_close(&t);
}

static void test_meta_set_get(void)
{
	struct tstore t;
	struct buf v = BUF_INIT;
	const char *error = NULL;
	tstore_open(&t);
	CU_ASSERT_EQUAL(stor_meta_get(t.db, "mm.epoch", &v, &error), 0);
	CU_ASSERT_EQUAL(stor_meta_set(t.db, "mm.epoch", "7\0x", 3, &error), 0);
	tstore_reopen(&t);
	CU_ASSERT_EQUAL(stor_meta_get(t.db, "mm.epoch", &v, &error), 1);
	CU_ASSERT_EQUAL_FATAL(v.len, 3);
	CU_ASSERT(memcmp(v.data, "7\0x", 3) == 0);
	CU_ASSERT_EQUAL(stor_meta_set(t.db, "", "x", 1, &error), -1);
	buf_free(&v);
	tstore_close(&t);
}

struct cb_log {
	int calls[4];
	bool ok[4];
	int n;
	struct stor_db *db;
};

static void durable_cb(void *ctx, bool ok)
{
	struct cb_log *l = ctx;
	if (l->n < 4) {
		l->calls[l->n] = l->n;
		l->ok[l->n] = ok;
	}
	l->n++;
}

static void requeue_cb(void *ctx, bool ok)
{
	struct cb_log *l = ctx;
	durable_cb(ctx, ok);
	stor_on_durable(l->db, durable_cb, l);
}

static void test_sync_runs_durable_callbacks_in_order(void)
{
	struct tstore t;
	struct cb_log l;
	const char *error = NULL;
	tstore_open(&t);
	memset(&l, 0, sizeof(l));
	l.db = t.db;
	CU_ASSERT_FALSE(stor_sync_pending(t.db));
	CU_ASSERT_EQUAL(stor_meta_set(t.db, "a", "1", 1, &error), 0);
	CU_ASSERT_TRUE(stor_sync_pending(t.db));
	stor_on_durable(t.db, durable_cb, &l);
	stor_on_durable(t.db, requeue_cb, &l);
	CU_ASSERT_EQUAL(l.n, 0);
	CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
	CU_ASSERT_EQUAL(l.n, 2);
	CU_ASSERT_TRUE(l.ok[0]);
	CU_ASSERT_TRUE(l.ok[1]);
	/* The callback queued by a callback waits for the next sync. */
	CU_ASSERT_TRUE(stor_sync_pending(t.db));
	CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
	CU_ASSERT_EQUAL(l.n, 3);
	CU_ASSERT_FALSE(stor_sync_pending(t.db));

	/* A failing sync reports ok=false. */
	stor_on_durable(t.db, durable_cb, &l);
	CU_ASSERT_EQUAL(stor_meta_set(t.db, "a", "2", 1, &error), 0);
	stor_test_fail_nth_write(t.db, 1);
	CU_ASSERT_EQUAL(stor_sync(t.db, &error), -1);
	CU_ASSERT_EQUAL(l.n, 4);
	CU_ASSERT_FALSE(l.ok[3]);
	/* Still pending: the next sync retries. */
	CU_ASSERT_TRUE(stor_sync_pending(t.db));
	CU_ASSERT_EQUAL(stor_sync(t.db, &error), 0);
	CU_ASSERT_FALSE(stor_sync_pending(t.db));
	tstore_close(&t);
}

const struct test_case storage_log_cases[] = {
	{ "log append/read/trim keeps the sequence", test_log_append_read_trim_keeps_sequence },
	{ "log cursors per peer", test_log_cursors_per_peer },
	{ "sync state per peer and mailbox", test_sync_state_per_peer_and_mailbox },
	{ "meta set then get", test_meta_set_get },
	{ "sync runs durable callbacks in order", test_sync_runs_durable_callbacks_in_order },
	{ NULL, NULL },
};
