/* The change seam's single-node implementation (replicator/repl-local.c),
 * driven by a private libev loop over a store in a temporary directory:
 * completions never run inside the submitting call, changes of one loop
 * turn share one group commit, results carry what IMAP replies need, and
 * watchers hear about every durable change. */
#include <ev.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/mail-limits.h"
#include "lib/xalloc.h"
#include "replicator/repl.h"
#include "storage/storage-pseen.h"
#include "tests/imap/tests-imap.h"

struct fixture {
	char *dir;
	struct stor_db *db;
	struct ev_loop *loop;
	struct repl *repl;
	unsigned notified;
};

struct done {
	bool called;
	enum repl_error error;
	uint32_t uid;
	struct guid mailbox;
	size_t changed, expunged, copied, failed;
	uint32_t dst_uids[8];
	uint64_t modseq;
	uint32_t changed_flags[8];
	uint64_t changed_modseq[8];
};

static void on_done(void *ctx, const struct repl_result *res)
{
	struct done *d = ctx;
	d->called = true;
	d->error = res->error;
	d->uid = res->uid;
	if (res->mailbox != NULL)
		d->mailbox = res->mailbox->guid;
	d->changed = res->changed_count;
	d->expunged = res->expunged_count;
	d->copied = res->uid_count;
	for (size_t i = 0; i < res->uid_count && i < 8; i++)
		d->dst_uids[i] = res->dst_uids[i];
	d->modseq = res->modseq;
	d->failed = res->failed_count;
	for (size_t i = 0; i < res->changed_count && i < 8; i++) {
		d->changed_flags[i] = res->changed[i].flags;
		d->changed_modseq[i] = res->changed[i].modseq;
	}
}

static void on_change(void *ctx, const char *user, const struct guid *mailbox)
{
	struct fixture *f = ctx;
	f->notified++;
}

static void setup(struct fixture *f)
{
	memset(f, 0, sizeof(*f));
	f->dir = test_mkdtemp();
	struct stor_settings set = { .dir = f->dir };
	char *err = NULL;
	CU_ASSERT_EQUAL_FATAL(stor_open(&set, &f->db, &err), 0);
	f->loop = ev_loop_new(EVFLAG_AUTO);
	struct repl_settings rs = { 1, 1024 * 1024 };
	f->repl = repl_local_create(f->loop, f->db, &rs);
	repl_watch_add(f->repl, on_change, f);
}

static void teardown(struct fixture *f)
{
	repl_watch_remove(f->repl, on_change, f);
	repl_destroy(&f->repl);
	CU_ASSERT_PTR_NULL(f->repl);
	stor_close(&f->db);
	ev_loop_destroy(f->loop);
	test_rmtree(f->dir);
	free(f->dir);
}

static size_t count_called(const struct done *d, size_t n)
{
	size_t c = 0;
	for (size_t i = 0; i < n; i++)
		c += d[i].called ? 1 : 0;
	return c;
}

/* Turns the loop until every d[i] was called (bounded: 5 s).  The fsync
 * runs in storage's helper thread, so a completion may take a while. */
static void run_until(struct fixture *f, struct done *d, size_t n)
{
	for (int turn = 0; turn < 5000; turn++) {
		if (count_called(d, n) == n)
			return;
		ev_run(f->loop, EVRUN_NOWAIT);
		if (count_called(d, n) < n)
			usleep(1000);
	}
	CU_FAIL("completion did not arrive");
}

static struct guid make_mailbox(struct fixture *f, const char *name)
{
	struct done d;
	memset(&d, 0, sizeof(d));
	repl_mailbox_create(f->repl, "alice", name, NULL, on_done, &d);
	CU_ASSERT_FALSE(d.called);
	run_until(f, &d, 1);
	CU_ASSERT_EQUAL(d.error, REPL_OK);
	return d.mailbox;
}

static void test_seam_appends_of_one_turn_complete_together_after_sync(void)
{
	struct fixture f;
	setup(&f);
	struct guid mb = make_mailbox(&f, "INBOX");
	unsigned before = f.notified;
	struct done d[3];
	memset(d, 0, sizeof(d));
	struct repl_append req = { .text = "Subject: x\r\n\r\nbody\r\n", .text_len = 20,
				   .internaldate = 1700000000 };
	for (int i = 0; i < 3; i++)
		repl_append(f.repl, "alice", &mb, &req, on_done, &d[i]);
	/* Nothing completes inside the call, and all three wait for a sync. */
	CU_ASSERT_FALSE(d[0].called || d[1].called || d[2].called);
	CU_ASSERT_TRUE(stor_sync_pending(f.db));
	CU_ASSERT_EQUAL(repl_in_flight(f.repl), 3);
	/* They complete together: never one or two of them alone. */
	for (int turn = 0; turn < 5000 && count_called(d, 3) < 3; turn++) {
		ev_run(f.loop, EVRUN_NOWAIT);
		CU_ASSERT(count_called(d, 3) == 0 || count_called(d, 3) == 3);
		if (count_called(d, 3) < 3)
			usleep(1000);
	}
	CU_ASSERT_TRUE(d[0].called && d[1].called && d[2].called);
	CU_ASSERT_EQUAL(d[0].uid, 1);
	CU_ASSERT_EQUAL(d[1].uid, 2);
	CU_ASSERT_EQUAL(d[2].uid, 3);
	CU_ASSERT_FALSE(stor_sync_pending(f.db));
	CU_ASSERT_EQUAL(repl_in_flight(f.repl), 0);
	CU_ASSERT_EQUAL(f.notified - before, 3);
	teardown(&f);
}

static void test_seam_refusals_complete_from_the_loop(void)
{
	struct fixture f;
	setup(&f);
	struct guid missing;
	memset(&missing, 7, sizeof(missing));
	struct done d[3];
	memset(d, 0, sizeof(d));
	struct repl_append req = { .text = "x", .text_len = 1 };
	repl_append(f.repl, "alice", &missing, &req, on_done, &d[0]);
	struct repl_append big = { .text = NULL, .text_len = 2 * 1024 * 1024 };
	repl_append(f.repl, "alice", &missing, &big, on_done, &d[1]);
	CU_ASSERT_FALSE(d[0].called || d[1].called);
	run_until(&f, d, 2);
	CU_ASSERT_EQUAL(d[0].error, REPL_ERR_NOTFOUND);
	CU_ASSERT_EQUAL(d[1].error, REPL_ERR_TOOBIG);
	make_mailbox(&f, "Dup");
	repl_mailbox_create(f.repl, "alice", "Dup", NULL, on_done, &d[2]);
	run_until(&f, &d[2], 1);
	CU_ASSERT_EQUAL(d[2].error, REPL_ERR_EXISTS);
	teardown(&f);
}

static void test_seam_store_copy_move_expunge_report_results(void)
{
	struct fixture f;
	setup(&f);
	struct guid a = make_mailbox(&f, "A"), b = make_mailbox(&f, "B");
	struct done d[8];
	memset(d, 0, sizeof(d));
	struct repl_append req = { .text = "Subject: y\r\n\r\n", .text_len = 14 };
	for (int i = 0; i < 3; i++)
		repl_append(f.repl, "alice", &a, &req, on_done, &d[i]);
	run_until(&f, d, 3);
	uint32_t uids[] = { 1, 2, 3, 99 };
	struct stor_store st = { .op = STOR_FLAGS_ADD, .flags = STOR_FLAG_DELETED };
	repl_store(f.repl, "alice", &a, uids, 2, &st, on_done, &d[3]);
	run_until(&f, &d[3], 1);
	CU_ASSERT_EQUAL(d[3].error, REPL_OK);
	CU_ASSERT_EQUAL(d[3].changed, 2);
	/* COPY skips the UID that does not exist. */
	repl_copy(f.repl, "alice", &a, uids, 4, &b, false, on_done, &d[4]);
	run_until(&f, &d[4], 1);
	CU_ASSERT_EQUAL(d[4].copied, 3);
	CU_ASSERT_EQUAL(d[4].dst_uids[0], 1);
	CU_ASSERT_EQUAL(d[4].dst_uids[2], 3);
	repl_copy(f.repl, "alice", &a, &uids[2], 1, &b, true, on_done, &d[5]);
	run_until(&f, &d[5], 1);
	CU_ASSERT_EQUAL(d[5].copied, 1);
	CU_ASSERT_EQUAL(d[5].dst_uids[0], 4);
	CU_ASSERT_EQUAL(d[5].expunged, 1);
	repl_expunge(f.repl, "alice", &a, uids, 2, on_done, &d[6]);
	run_until(&f, &d[6], 1);
	CU_ASSERT_EQUAL(d[6].expunged, 2);
	struct stor_mailbox mb;
	const char *err;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(f.db, &a, &mb, &err), 1);
	CU_ASSERT_EQUAL(mb.messages, 0);
	stor_mailbox_free(&mb);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(f.db, &b, &mb, &err), 1);
	CU_ASSERT_EQUAL(mb.messages, 4);
	stor_mailbox_free(&mb);
	teardown(&f);
}

static void test_seam_default_mailboxes_once(void)
{
	struct fixture f;
	setup(&f);
	struct done d[2];
	memset(d, 0, sizeof(d));
	repl_user_ensure_defaults(f.repl, "bob", on_done, &d[0]);
	CU_ASSERT_FALSE(d[0].called);
	run_until(&f, d, 1);
	CU_ASSERT_EQUAL(d[0].error, REPL_OK);
	stor_mailbox_array list = ARRAY_INIT;
	const char *err;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_list(f.db, "bob", &list, &err), 0);
	CU_ASSERT_EQUAL(list.count, 6);
	bool sent = false;
	for (size_t i = 0; i < list.count; i++)
		if (strcmp(list.items[i].name, "Sent") == 0)
			sent = strcmp(list.items[i].special_use, "\\Sent") == 0;
	CU_ASSERT_TRUE(sent);
	stor_mailbox_list_free(&list);
	/* A second call changes nothing and still completes from the loop. */
	repl_user_ensure_defaults(f.repl, "bob", on_done, &d[1]);
	CU_ASSERT_FALSE(d[1].called);
	run_until(&f, &d[1], 1);
	CU_ASSERT_EQUAL(d[1].error, REPL_OK);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_list(f.db, "bob", &list, &err), 0);
	CU_ASSERT_EQUAL(list.count, 6);
	stor_mailbox_list_free(&list);
	teardown(&f);
}

/* A mailbox whose UIDs for new mail ran out (SPEC 5.2) refuses APPEND and
 * COPY with [LIMIT], changing nothing: UIDNEXT never wraps or sticks. */
static void test_seam_append_at_the_top_of_the_uids_is_refused(void)
{
	struct fixture f;
	setup(&f);
	const char *err;
	struct guid mb = make_mailbox(&f, "INBOX");
	struct guid full = make_mailbox(&f, "Full");
	struct done d[4];
	memset(d, 0, sizeof(d));
	struct repl_append req = { .text = "Subject: x\r\n\r\nbody\r\n", .text_len = 20 };
	repl_append(f.repl, "alice", &mb, &req, on_done, &d[0]);
	run_until(&f, &d[0], 1);
	CU_ASSERT_EQUAL(d[0].error, REPL_OK);
	/* The last UID a new message may get is taken... */
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_raise(f.db, &full, MAIL_UID_ASSIGN_MAX, 0, &err), 0);
	repl_append(f.repl, "alice", &full, &req, on_done, &d[1]);
	run_until(&f, &d[1], 1);
	CU_ASSERT_EQUAL(d[1].error, REPL_OK);
	CU_ASSERT_EQUAL(d[1].uid, MAIL_UID_ASSIGN_MAX);
	/* ...so the next APPEND and COPY are refused. */
	repl_append(f.repl, "alice", &full, &req, on_done, &d[2]);
	uint32_t one = 1;
	repl_copy(f.repl, "alice", &mb, &one, 1, &full, false, on_done, &d[3]);
	run_until(&f, &d[2], 2);
	CU_ASSERT_EQUAL(d[2].error, REPL_ERR_LIMIT);
	CU_ASSERT_EQUAL(d[3].error, REPL_ERR_LIMIT);
	/* The engine tells it by the store's error kind, not its text. */
	struct stor_append sa;
	memset(&sa, 0, sizeof(sa));
	struct guid g;
	guid_generate(&g);
	sa.guid = &g;
	sa.text = req.text;
	sa.text_len = req.text_len;
	CU_ASSERT_EQUAL(stor_msg_append(f.db, &full, &sa, NULL, NULL, &err), -1);
	CU_ASSERT_EQUAL(stor_last_error_kind(f.db), STOR_ERROR_LIMIT);
	struct stor_mailbox m;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(f.db, &full, &m, &err), 1);
	CU_ASSERT_EQUAL(m.uidnext, MAIL_UID_ASSIGN_MAX + 1);
	CU_ASSERT_EQUAL(m.messages, 1);
	stor_mailbox_free(&m);
	CU_ASSERT_EQUAL(stor_mailbox_check(f.db, &full, &err), 0);
	teardown(&f);
}

/* A STORE with seen_of (SPEC.md 7.7): \Seen goes to the user's records at
 * one modseq, the other flags to the messages at the next; REPLACE keeps
 * the message's own \Seen; the result and UNCHANGEDSINCE are in the
 * user's view. */
static void test_seam_store_seen_of(void)
{
	struct fixture f;
	setup(&f);
	struct guid a = make_mailbox(&f, "Team");
	struct done d[8];
	memset(d, 0, sizeof(d));
	struct repl_append own_seen = { .text = "Subject: 1\r\n\r\n", .text_len = 14,
					.flags = STOR_FLAG_SEEN };
	struct repl_append plain = { .text = "Subject: 2\r\n\r\n", .text_len = 14 };
	repl_append(f.repl, "alice", &a, &own_seen, on_done, &d[0]);
	repl_append(f.repl, "alice", &a, &plain, on_done, &d[1]);
	run_until(&f, d, 2);
	const char *err;
	struct stor_mailbox mb;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(f.db, &a, &mb, &err), 1);
	uint64_t h = mb.highestmodseq;
	stor_mailbox_free(&mb);
	uint32_t uids[] = { 1, 2 };
	struct stor_store st = { .op = STOR_FLAGS_ADD, .flags = STOR_FLAG_SEEN | STOR_FLAG_FLAGGED,
				 .seen_of = "bob" };
	repl_store(f.repl, "alice", &a, uids, 2, &st, on_done, &d[2]);
	run_until(&f, &d[2], 1);
	CU_ASSERT_EQUAL(d[2].error, REPL_OK);
	CU_ASSERT_EQUAL(d[2].changed, 2);
	CU_ASSERT_EQUAL(d[2].modseq, h + 2);
	for (int i = 0; i < 2; i++) {
		CU_ASSERT_EQUAL(d[2].changed_flags[i], STOR_FLAG_SEEN | STOR_FLAG_FLAGGED);
		CU_ASSERT_EQUAL(d[2].changed_modseq[i], h + 2);
	}
	struct stor_msg m;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(f.db, &a, 2, &m, &err), 1);
	/* The message's own flags: \Flagged, not bob's \Seen. */
	CU_ASSERT_EQUAL(m.flags, STOR_FLAG_FLAGGED);
	CU_ASSERT_EQUAL(m.modseq, h + 2);
	struct stor_pseen r;
	CU_ASSERT_EQUAL(stor_pseen_get(f.db, &a, &m.guid, "bob", &r, &err), 1);
	CU_ASSERT_TRUE(r.seen);
	CU_ASSERT_EQUAL(r.modseq, h + 1);
	CU_ASSERT_EQUAL(stor_pseen_get(f.db, &a, &m.guid, "alice", &r, &err), 0);
	stor_msg_free(&m);

	/* REPLACE: bob's \Seen off, the message's own \Seen (m1) stays. */
	struct stor_store rep = { .op = STOR_FLAGS_REPLACE, .flags = STOR_FLAG_DRAFT,
				  .seen_of = "bob" };
	repl_store(f.repl, "alice", &a, uids, 2, &rep, on_done, &d[3]);
	run_until(&f, &d[3], 1);
	CU_ASSERT_EQUAL(d[3].changed, 2);
	CU_ASSERT_EQUAL(d[3].changed_flags[0], STOR_FLAG_DRAFT);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(f.db, &a, 1, &m, &err), 1);
	CU_ASSERT_EQUAL(m.flags, STOR_FLAG_SEEN | STOR_FLAG_DRAFT);
	CU_ASSERT_EQUAL(stor_pseen_get(f.db, &a, &m.guid, "bob", &r, &err), 1);
	CU_ASSERT_FALSE(r.seen);
	stor_msg_free(&m);

	/* Only \Seen named: the messages keep their modseq. */
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(f.db, &a, &mb, &err), 1);
	h = mb.highestmodseq;
	stor_mailbox_free(&mb);
	struct stor_store only = { .op = STOR_FLAGS_ADD, .flags = STOR_FLAG_SEEN, .seen_of = "carol" };
	repl_store(f.repl, "alice", &a, uids, 1, &only, on_done, &d[4]);
	run_until(&f, &d[4], 1);
	CU_ASSERT_EQUAL(d[4].modseq, h + 1);
	CU_ASSERT_EQUAL(d[4].changed, 1);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(f.db, &a, 1, &m, &err), 1);
	CU_ASSERT_EQUAL(m.modseq, h);
	stor_msg_free(&m);

	/* UNCHANGEDSINCE against the user's view: carol's m1 is at h+1. */
	struct stor_store cond = { .op = STOR_FLAGS_REMOVE, .flags = STOR_FLAG_SEEN,
				   .unchangedsince = h, .seen_of = "carol" };
	repl_store(f.repl, "alice", &a, uids, 2, &cond, on_done, &d[5]);
	run_until(&f, &d[5], 1);
	CU_ASSERT_EQUAL(d[5].failed, 1);
	CU_ASSERT_EQUAL(d[5].changed, 1);
	CU_ASSERT_EQUAL(stor_mailbox_check(f.db, &a, &err), 0);
	teardown(&f);
}

const struct test_case imap_seam_cases[] = {
	{ "STORE with seen_of: the user's records, then the messages", test_seam_store_seen_of },
	{ "appends of one turn complete together after one sync",
	  test_seam_appends_of_one_turn_complete_together_after_sync },
	{ "refusals complete from the loop", test_seam_refusals_complete_from_the_loop },
	{ "store, copy, move and expunge report results",
	  test_seam_store_copy_move_expunge_report_results },
	{ "default mailboxes are created once", test_seam_default_mailboxes_once },
	{ "APPEND and COPY at the top of the UIDs are refused",
	  test_seam_append_at_the_top_of_the_uids_is_refused },
	{ NULL, NULL },
};
