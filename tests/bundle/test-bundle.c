/* Tests of change bundles (sync/sync-bundle.h, SPEC.md 11): two stores in
 * one process that never sync directly, only through bundle files.  After a
 * bundle each way their canonical dumps must be byte-identical; a bundle
 * that is truncated, altered, signed with another key or made for another
 * user must be refused and leave every user's dump unchanged. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <zlib.h>

#include "lib/xalloc.h"
#include "storage/storage-acl.h"
#include "storage/storage-private.h"
#include "storage/storage-pseen.h"
#include "storage/storage.h"
#include "sync/sync-bundle.h"
#include "tests/testutil.h"
#include "tests/testutil-stor.h"

#define USER "alice"
#define OTHER "bob"
#define SID_A 1
#define SID_B 2

static const unsigned char secret[] = "0123456789abcdef0123456789abcdef-cluster";
static const unsigned char other_secret[] = "fedcba9876543210fedcba9876543210-another";

struct node {
	char *dir;
	struct stor_db *db;
	uint32_t sid;
	struct buf state; /* the state file of its last import */
};

static void node_open(struct node *n, uint32_t sid)
{
	struct stor_settings set;
	char *error = NULL;
	memset(n, 0, sizeof(*n));
	n->dir = test_mkdtemp();
	n->sid = sid;
	memset(&set, 0, sizeof(set));
	set.dir = n->dir;
	if (stor_open(&set, &n->db, &error) < 0) {
		fprintf(stderr, "stor_open: %s\n", error);
		free(error);
	}
	CU_ASSERT_PTR_NOT_NULL_FATAL(n->db);
	buf_init(&n->state);
}

static void node_close(struct node *n)
{
	stor_close(&n->db);
	test_rmtree(n->dir);
	free(n->dir);
	buf_free(&n->state);
}

static struct guid mk_mailbox(struct node *n, const char *user, const char *name,
			      const char *special)
{
	struct stor_mailbox_create req;
	struct stor_mailbox mb;
	const char *error = NULL;
	memset(&req, 0, sizeof(req));
	req.user = user;
	req.name = name;
	req.special_use = special;
	int r = stor_mailbox_create(n->db, &req, &mb, &error);
	if (r < 0)
		fprintf(stderr, "create %s: %s\n", name, error);
	CU_ASSERT_EQUAL_FATAL(r, 0);
	struct guid g = mb.guid;
	stor_mailbox_free(&mb);
	return g;
}

static uint32_t append(struct node *n, const struct guid *mb, const char *text, uint32_t flags)
{
	struct stor_append req;
	struct guid g;
	uint32_t uid = 0;
	const char *error = NULL;
	guid_generate(&g);
	memset(&req, 0, sizeof(req));
	req.guid = &g;
	req.flags = flags;
	req.internaldate = 1700000000;
	req.internaldate_tz = 60;
	req.text = text;
	req.text_len = strlen(text);
	int r = stor_msg_append(n->db, mb, &req, &uid, NULL, &error);
	if (r < 0)
		fprintf(stderr, "append: %s\n", error);
	CU_ASSERT_EQUAL_FATAL(r, 0);
	return uid;
}

static void set_flags(struct node *n, const struct guid *mb, uint32_t uid, uint32_t flags,
		      const char *keyword)
{
	struct stor_store req;
	const char *error;
	const char *kw[1] = { keyword };
	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_REPLACE;
	req.flags = flags;
	req.keywords = kw;
	req.keyword_count = keyword != NULL ? 1 : 0;
	CU_ASSERT_EQUAL_FATAL(stor_msg_store(n->db, mb, &uid, 1, &req, NULL, NULL, &error), 0);
}

/* +FLAGS / -FLAGS: names only the flags given (a replacing STORE names,
 * and so changes, every system flag: SPEC.md 10.2). */
static void store_op(struct node *n, const struct guid *mb, uint32_t uid, enum stor_flag_op op,
		     uint32_t flags, const char *keyword)
{
	struct stor_store req;
	const char *error;
	const char *kw[1] = { keyword };
	memset(&req, 0, sizeof(req));
	req.op = op;
	req.flags = flags;
	req.keywords = kw;
	req.keyword_count = keyword != NULL ? 1 : 0;
	CU_ASSERT_EQUAL_FATAL(stor_msg_store(n->db, mb, &uid, 1, &req, NULL, NULL, &error), 0);
}

static void expunge(struct node *n, const struct guid *mb, uint32_t uid)
{
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_msg_expunge(n->db, mb, &uid, 1, 0, NULL, &error), 0);
}

static char *dump(struct node *n, const char *user)
{
	struct buf out = BUF_INIT;
	const char *error;
	int r = stor_dump_user(n->db, user, &out, &error);
	if (r < 0)
		fprintf(stderr, "dump: %s\n", error);
	CU_ASSERT_EQUAL(r, 0);
	buf_append_byte(&out, '\0');
	return (char *)out.data;
}

static bool dumps_equal(struct node *a, struct node *b)
{
	char *da = dump(a, USER), *db = dump(b, USER);
	bool eq = strcmp(da, db) == 0;
	if (!eq)
		fprintf(stderr, "\n--- dump of %u:\n%s--- dump of %u:\n%s", a->sid, da, b->sid, db);
	free(da);
	free(db);
	return eq;
}

static struct sync_bundle_key cluster_key(void)
{
	struct sync_bundle_key k = { secret, sizeof(secret) - 1, false };
	return k;
}

/* Every export gets its own CREATED (from now on, one second apart), so
 * that two exports of the same content are two bundles, not a replay. */
static int64_t next_created;

/* Exports USER from n (with its last import's state when since is true). */
static void export_from(struct node *n, bool since, struct buf *out,
			struct sync_bundle_export_report *rep_r)
{
	if (next_created == 0)
		next_created = (int64_t)time(NULL);
	struct sync_bundle_export_settings set = {
		.user = USER, .source_sid = n->sid, .key = cluster_key(),
		.created = next_created++,
		.state = since ? (const void *)n->state.data : NULL,
		.state_len = since ? n->state.len : 0,
	};
	struct sync_bundle_export_report rep;
	char *error = NULL;
	buf_reset(out);
	int r = sync_bundle_export(n->db, &set, out, &rep, &error);
	if (r < 0)
		fprintf(stderr, "export: %s\n", error);
	free(error);
	CU_ASSERT_EQUAL_FATAL(r, 0);
	if (rep_r != NULL)
		*rep_r = rep;
}

static char *scratch_parent;

/* Imports into n; returns 0, or -1 with the error (freed by the caller). */
static int import_into(struct node *n, const void *data, size_t len,
		       struct sync_bundle_import_result *res_r, char **error_r)
{
	struct sync_bundle_import_settings set = {
		.own_sid = n->sid, .key = cluster_key(), .scratch_parent = scratch_parent,
	};
	struct sync_bundle_import_result res;
	int r = sync_bundle_import(n->db, &set, data, len, &res, error_r);
	if (r == 0) {
		buf_reset(&n->state);
		buf_append(&n->state, res.state.data, res.state.len);
	}
	if (res_r != NULL)
		*res_r = res;
	else
		sync_bundle_import_result_free(&res);
	return r;
}

static void import_ok(struct node *n, const struct buf *bundle,
		      struct sync_bundle_import_result *res_r)
{
	char *error = NULL;
	int r = import_into(n, bundle->data, bundle->len, res_r, &error);
	if (r < 0)
		fprintf(stderr, "import: %s\n", error);
	free(error);
	CU_ASSERT_EQUAL_FATAL(r, 0);
}

/* A bundle of from since the last one, imported by to. */
static void pass_bundle(struct node *from, struct node *to, struct buf *bundle)
{
	export_from(from, true, bundle, NULL);
	import_ok(to, bundle, NULL);
}

/* Asserts the import is refused and changes neither user's dump; the error
 * must contain want. */
static void import_refused(struct node *n, const void *data, size_t len, const char *want)
{
	char *before = dump(n, USER), *before_o = dump(n, OTHER);
	char *error = NULL;
	int r = import_into(n, data, len, NULL, &error);
	CU_ASSERT_EQUAL(r, -1);
	CU_ASSERT_PTR_NOT_NULL(error);
	if (error != NULL && want != NULL && strstr(error, want) == NULL) {
		fprintf(stderr, "error '%s' lacks '%s'\n", error, want);
		CU_FAIL("unexpected error text");
	}
	char *after = dump(n, USER), *after_o = dump(n, OTHER);
	CU_ASSERT_STRING_EQUAL(before, after);
	CU_ASSERT_STRING_EQUAL(before_o, after_o);
	free(error);
	free(before);
	free(after);
	free(before_o);
	free(after_o);
}

/* A varied user: INBOX with flags, a keyword, an expunge; Sent with
 * SPECIAL-USE; subscriptions. */
static void fill_user(struct node *n, struct guid *inbox_r)
{
	const char *error;
	struct guid inbox = mk_mailbox(n, USER, "INBOX", NULL);
	struct guid sent = mk_mailbox(n, USER, "Sent", "\\Sent");
	uint32_t u1 = append(n, &inbox, "Subject: one\r\n\r\nfirst\r\n", STOR_FLAG_SEEN);
	uint32_t u2 = append(n, &inbox, "Subject: two\r\n\r\nsecond\r\n", 0);
	append(n, &inbox, "Subject: three\r\n\r\nthird\r\n", STOR_FLAG_FLAGGED);
	append(n, &sent, "Subject: sent\r\n\r\nout\r\n", STOR_FLAG_SEEN);
	set_flags(n, &inbox, u1, STOR_FLAG_SEEN | STOR_FLAG_ANSWERED, "$Work");
	expunge(n, &inbox, u2);
	CU_ASSERT_EQUAL_FATAL(stor_subscribe(n->db, USER, "INBOX", true, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_subscribe(n->db, USER, "Sent", true, &error), 0);
	if (inbox_r != NULL)
		*inbox_r = inbox;
}

static unsigned count_messages(struct node *n, const struct guid *mb)
{
	struct stor_mailbox m;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(n->db, mb, &m, &error), 1);
	unsigned c = m.messages;
	stor_mailbox_free(&m);
	return c;
}

/* ---- Round trips ---- */

static void test_bundle_full_export_fills_an_empty_node(void)
{
	struct node a, b;
	struct buf bundle = BUF_INIT;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid inbox;
	fill_user(&a, &inbox);
	struct sync_bundle_export_report rep;
	export_from(&a, false, &bundle, &rep);
	CU_ASSERT_EQUAL(rep.mailboxes, 2);
	CU_ASSERT_EQUAL(rep.messages, 3);
	CU_ASSERT_EQUAL(rep.tombstones, 1);
	CU_ASSERT_EQUAL(rep.texts, 3);
	struct sync_bundle_import_result res;
	import_ok(&b, &bundle, &res);
	CU_ASSERT_STRING_EQUAL(res.user, USER);
	CU_ASSERT_EQUAL(res.source, SID_A);
	CU_ASSERT_EQUAL(res.report.mailboxes_created, 2);
	CU_ASSERT_TRUE(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(count_messages(&b, &inbox), 2);
	/* The state names the import and the texts A holds. */
	CU_ASSERT_PTR_NOT_NULL(strstr(buf_cstr(&res.state), "PEER 1\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(buf_cstr(&res.state), "TEXT "));
	sync_bundle_import_result_free(&res);
	/* The same bundle again is a replay. */
	import_refused(&b, bundle.data, bundle.len, "replay");
	buf_free(&bundle);
	node_close(&a);
	node_close(&b);
}

/* ---- An import on a node's loop waits for its group commit ---- */

static void import_woken(void *ctx)
{
	*(bool *)ctx = true;
}

/* The node's loop, played here: its group commit starts a sync in
 * storage's helper thread while anything is pending and finishes the
 * syncs that are done, never waiting for the disk itself. */
static void loop_turn(struct stor_db *db)
{
	if (stor_sync_pending(db) && !stor_sync_busy(db))
		(void)stor_sync_start(db);
	stor_sync_finish(db);
}

/* A bundle import in steps (as starlingd runs it) answers WAIT once the
 * merge is stored and reports its result only after the node's group
 * commit made it durable: not while the disk holds the sync back, and
 * never by a blocking stor_sync() of its own (the node's loop would stop
 * for the fsync).  When that sync fails the import fails ("storing the
 * merge"), no state file is given. */
static void import_on_loop(bool fail_sync)
{
	struct node a, b;
	struct buf bundle = BUF_INIT;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid inbox;
	fill_user(&a, &inbox);
	export_from(&a, false, &bundle, NULL);
	struct sync_bundle_import_settings set = {
		.own_sid = b.sid, .key = cluster_key(), .scratch_parent = scratch_parent,
	};
	char *error = NULL;
	struct sync_bundle_import *imp =
		sync_bundle_import_begin(b.db, &set, bundle.data, bundle.len, &error);
	CU_ASSERT_PTR_NOT_NULL_FATAL(imp);
	bool woken = false;
	sync_bundle_import_set_wake(imp, import_woken, &woken);
	unsigned blocking = stor_test_blocking_syncs(b.db);
	stor_test_hold_syncs(b.db, true);
	int r = 1;
	for (int i = 0; i < 100000 && r == 1; i++) {
		r = sync_bundle_import_step(imp, &error);
		if (r == 1)
			loop_turn(b.db);
	}
	CU_ASSERT_EQUAL_FATAL(r, SYNC_BUNDLE_IMPORT_WAIT);
	/* The sync that covers the import's record. */
	if (fail_sync)
		stor_test_fail_next_sync(b.db);
	/* The disk holds the sync back: the import waits, asked or not. */
	for (int i = 0; i < 5000 && stor_test_held_syncs(b.db) == 0; i++) {
		loop_turn(b.db);
		usleep(1000);
	}
	CU_ASSERT_TRUE(stor_test_held_syncs(b.db) > 0);
	for (int i = 0; i < 10; i++) {
		loop_turn(b.db);
		CU_ASSERT_EQUAL(sync_bundle_import_step(imp, &error), SYNC_BUNDLE_IMPORT_WAIT);
	}
	CU_ASSERT_FALSE(woken);
	stor_test_hold_syncs(b.db, false);
	for (int i = 0; i < 5000 && !woken; i++) {
		loop_turn(b.db);
		if (!woken)
			usleep(1000);
	}
	CU_ASSERT_TRUE_FATAL(woken);
	r = sync_bundle_import_step(imp, &error);
	struct sync_bundle_import_result res;
	memset(&res, 0, sizeof(res));
	if (!fail_sync) {
		CU_ASSERT_EQUAL(r, 0);
		sync_bundle_import_take_result(imp, &res);
		CU_ASSERT_TRUE(res.state.len > 0);
		CU_ASSERT_TRUE(dumps_equal(&a, &b));
	} else {
		CU_ASSERT_EQUAL(r, -1);
		CU_ASSERT_PTR_NOT_NULL(error != NULL ? strstr(error, "storing the merge") : NULL);
	}
	sync_bundle_import_result_free(&res);
	sync_bundle_import_destroy(&imp);
	CU_ASSERT_EQUAL(stor_test_blocking_syncs(b.db), blocking);
	free(error);
	buf_free(&bundle);
	node_close(&a);
	node_close(&b);
}

static void test_bundle_import_waits_for_the_loops_sync(void)
{
	import_on_loop(false);
}

static void test_bundle_import_failed_sync_fails_it(void)
{
	import_on_loop(true);
}

/* starlingd's export (durable_by_caller) leaves its export record to the
 * node's group commit, whose fsync runs off the loop; the admin command
 * answers after it.  The offline tool's export syncs the store itself. */
static void test_bundle_export_on_loop_leaves_the_sync(void)
{
	struct node a;
	node_open(&a, SID_A);
	struct guid inbox;
	fill_user(&a, &inbox);
	const char *err;
	CU_ASSERT_EQUAL_FATAL(stor_sync(a.db, &err), 0);
	unsigned blocking = stor_test_blocking_syncs(a.db);
	struct sync_bundle_export_settings set = {
		.user = USER, .source_sid = a.sid, .key = cluster_key(),
		.durable_by_caller = true,
	};
	struct buf out = BUF_INIT;
	char *error = NULL;
	CU_ASSERT_EQUAL_FATAL(sync_bundle_export(a.db, &set, &out, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_test_blocking_syncs(a.db), blocking);
	/* The export record waits for the caller's sync. */
	CU_ASSERT_TRUE(stor_sync_pending(a.db));
	set.durable_by_caller = false;
	buf_reset(&out);
	CU_ASSERT_EQUAL_FATAL(sync_bundle_export(a.db, &set, &out, NULL, &error), 0);
	CU_ASSERT_FALSE(stor_sync_pending(a.db));
	free(error);
	buf_free(&out);
	node_close(&a);
}

static char *acl_of(struct node *n, const struct guid *mb, const char *id)
{
	stor_acl_list acl;
	const char *error;
	char *r = NULL;
	CU_ASSERT_EQUAL_FATAL(stor_acl_get(n->db, mb, &acl, &error), 0);
	for (size_t i = 0; i < acl.count; i++)
		if (strcmp(acl.items[i].identifier, id) == 0)
			r = xstrdup(acl.items[i].rights);
	stor_acl_list_free(&acl);
	return r;
}

/* A bundle carries the user's ACL records (SPEC.md 7.6) and the importer
 * keeps the newer of each pair; records of another user's mailboxes stay
 * out, even one naming the bundle's user. */
static void test_bundle_carries_acl_records(void)
{
	struct node a, b;
	struct buf bundle = BUF_INIT;
	const char *error;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid inbox;
	fill_user(&a, &inbox);
	struct guid theirs = mk_mailbox(&a, "zed", "Shared", NULL);
	CU_ASSERT_EQUAL_FATAL(stor_acl_put(a.db, "zed", &theirs, USER, "lr", 100, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_acl_put(a.db, USER, &inbox, "bob", "lrs", 100, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_acl_put(a.db, USER, &inbox, "carol", "lr", 100, NULL, &error), 0);
	export_from(&a, false, &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	char *r = acl_of(&b, &inbox, "bob");
	CU_ASSERT(r != NULL && strcmp(r, "lrs") == 0);
	free(r);
	stor_share_list sh = ARRAY_INIT;
	CU_ASSERT_EQUAL(stor_acl_shared_with(b.db, "bob", &sh, &error), 0);
	CU_ASSERT_EQUAL(sh.count, 1);
	stor_share_list_free(&sh);
	r = acl_of(&b, &theirs, USER);
	CU_ASSERT_PTR_NULL(r);
	free(r);
	/* Apart: A revokes bob later than B changes him; B revokes carol. */
	CU_ASSERT_EQUAL(stor_acl_put(a.db, USER, &inbox, "bob", "", 300, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_acl_put(b.db, USER, &inbox, "bob", "lrswi", 200, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_acl_put(b.db, USER, &inbox, "carol", "", 250, NULL, &error), 0);
	export_from(&b, true, &bundle, NULL);
	import_ok(&a, &bundle, NULL);
	export_from(&a, true, &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	for (int i = 0; i < 2; i++) {
		struct node *n = i == 0 ? &a : &b;
		r = acl_of(n, &inbox, "bob");
		CU_ASSERT(r != NULL && r[0] == '\0');
		free(r);
		r = acl_of(n, &inbox, "carol");
		CU_ASSERT(r != NULL && r[0] == '\0');
		free(r);
	}
	buf_free(&bundle);
	node_close(&a);
	node_close(&b);
}

/* Both nodes change the same mailbox while apart (the same UIDs for
 * different messages, flags, expunges, a new mailbox on each side); a
 * bundle each way makes them equal, with every message present once. */
static void test_bundle_both_directions_converge(void)
{
	struct node a, b;
	struct buf bundle = BUF_INIT;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid inbox;
	fill_user(&a, &inbox);
	export_from(&a, false, &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	CU_ASSERT_TRUE_FATAL(dumps_equal(&a, &b));
	/* A knows nothing of B's import yet: bring it back first. */
	export_from(&b, true, &bundle, NULL);
	import_ok(&a, &bundle, NULL);
	CU_ASSERT_TRUE_FATAL(dumps_equal(&a, &b));

	/* Apart. */
	uint32_t a4 = append(&a, &inbox, "Subject: a4\r\n\r\nfrom a\r\n", 0);
	append(&a, &inbox, "Subject: a5\r\n\r\nfrom a\r\n", 0);
	set_flags(&a, &inbox, 1, STOR_FLAG_SEEN | STOR_FLAG_DELETED, NULL);
	uint32_t b4 = append(&b, &inbox, "Subject: b4\r\n\r\nfrom b\r\n", STOR_FLAG_DRAFT);
	CU_ASSERT_EQUAL(a4, b4); /* a UID conflict */
	set_flags(&b, &inbox, 3, 0, "$Later");
	expunge(&b, &inbox, 1); /* the expunge beats A's flag change */
	mk_mailbox(&a, USER, "FromA", NULL);
	struct guid fb = mk_mailbox(&b, USER, "FromB", NULL);
	append(&b, &fb, "Subject: fb\r\n\r\nin FromB\r\n", 0);

	struct sync_bundle_export_report rep;
	export_from(&a, true, &bundle, &rep);
	CU_ASSERT_TRUE(rep.texts_left_out >= 1); /* B holds message 3 */
	struct sync_bundle_import_result res;
	import_ok(&b, &bundle, &res);
	CU_ASSERT_TRUE(res.base_known);
	CU_ASSERT_TRUE(res.report.messages_renumbered + res.report.messages_received > 0);
	sync_bundle_import_result_free(&res);
	export_from(&b, true, &bundle, &rep);
	CU_ASSERT_TRUE(rep.texts_left_out >= 2);
	import_ok(&a, &bundle, NULL);
	CU_ASSERT_TRUE(dumps_equal(&a, &b));
	/* 3 (flags by B), a4, a5, b4 renumbered; 1 expunged. */
	CU_ASSERT_EQUAL(count_messages(&a, &inbox), 4);
	CU_ASSERT_EQUAL(count_messages(&b, &inbox), 4);
	struct stor_msg m;
	const char *error;
	CU_ASSERT_EQUAL(stor_msg_get(a.db, &inbox, 1, &m, &error), 0);

	/* A deletes a mailbox: the next bundle carries the delete. */
	struct stor_mailbox mb;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get(a.db, USER, "FromB", &mb, &error), 1);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_delete(a.db, &mb.guid, &error), 0);
	stor_mailbox_free(&mb);
	export_from(&a, true, &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	CU_ASSERT_EQUAL(stor_mailbox_get(b.db, USER, "FromB", &mb, &error), 0);
	export_from(&b, true, &bundle, NULL);
	import_ok(&a, &bundle, NULL);
	CU_ASSERT_TRUE(dumps_equal(&a, &b));
	buf_free(&bundle);
	node_close(&a);
	node_close(&b);
}

/* An import stamps new modseqs on what it merged, here only: the other node
 * never sees those.  A flag change the other node makes afterwards (with a
 * modseq that may be below the stamps) must still win on the next round,
 * in both directions. */
static void test_bundle_later_flag_changes_win(void)
{
	struct node a, b;
	struct buf bundle = BUF_INIT;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid inbox = mk_mailbox(&a, USER, "INBOX", NULL);
	for (int i = 0; i < 4; i++)
		append(&a, &inbox, "Subject: a\r\n\r\nfrom a\r\n", 0);
	export_from(&a, false, &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	export_from(&b, true, &bundle, NULL);
	import_ok(&a, &bundle, NULL);
	/* Both append at the same UIDs while apart: conflicts, so both
	 * imports renumber and stamp new modseqs. */
	for (int i = 0; i < 3; i++) {
		append(&a, &inbox, "Subject: a2\r\n\r\nfrom a\r\n", 0);
		append(&b, &inbox, "Subject: b2\r\n\r\nfrom b\r\n", 0);
	}
	export_from(&a, true, &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	export_from(&b, true, &bundle, NULL);
	import_ok(&a, &bundle, NULL);
	CU_ASSERT_TRUE_FATAL(dumps_equal(&a, &b));
	struct stor_mailbox mbx;
	const char *merr;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(b.db, &inbox, &mbx, &merr), 1);
	uint32_t top = mbx.uidnext - 1;
	stor_mailbox_free(&mbx);
	for (int round = 0; round < 3; round++) {
		/* B changes a message after its export, A does nothing. */
		uint32_t uid = top - (uint32_t)round;
		char name[16];
		const char *error;
		set_flags(&b, &inbox, uid, STOR_FLAG_ANSWERED, "$Round");
		snprintf(name, sizeof(name), "a%d", round);
		CU_ASSERT_EQUAL_FATAL(stor_subscribe(a.db, USER, name, true, &error), 0);
		export_from(&a, true, &bundle, NULL);
		import_ok(&b, &bundle, NULL);
		struct stor_msg m;
		CU_ASSERT_EQUAL_FATAL(stor_msg_get(b.db, &inbox, uid, &m, &error), 1);
		CU_ASSERT_EQUAL(m.flags, STOR_FLAG_ANSWERED);
		stor_msg_free(&m);
		export_from(&b, true, &bundle, NULL);
		import_ok(&a, &bundle, NULL);
		CU_ASSERT_TRUE(dumps_equal(&a, &b));
		/* And the other way: A changes after its import (B's next
		 * bundle must differ from its last one, or it is a replay). */
		set_flags(&a, &inbox, uid, STOR_FLAG_SEEN, NULL);
		snprintf(name, sizeof(name), "b%d", round);
		CU_ASSERT_EQUAL_FATAL(stor_subscribe(b.db, USER, name, true, &error), 0);
		export_from(&b, true, &bundle, NULL);
		import_ok(&a, &bundle, NULL);
		CU_ASSERT_EQUAL_FATAL(stor_msg_get(a.db, &inbox, uid, &m, &error), 1);
		CU_ASSERT_EQUAL(m.flags, STOR_FLAG_SEEN);
		stor_msg_free(&m);
		export_from(&a, true, &bundle, NULL);
		import_ok(&b, &bundle, NULL);
		CU_ASSERT_TRUE(dumps_equal(&a, &b));
	}
	buf_free(&bundle);
	node_close(&a);
	node_close(&b);
}

/* Random changes on both nodes between exchanges (appends, flag changes,
 * expunges, mailboxes created, renamed and deleted): after a bundle each way
 * the dumps are equal and no GUID is held twice in a mailbox.  (80 seeds
 * passed while this was written; 8 run here, to keep the suite fast.) */
static uint32_t rnd_state;

static uint32_t rnd(void)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 17;
	rnd_state ^= rnd_state << 5;
	return rnd_state;
}

static void random_changes(struct node *n, const struct guid *mbs, size_t nmbs)
{
	const char *error;
	unsigned count = 1 + rnd() % 6;
	for (unsigned i = 0; i < count; i++) {
		const struct guid *mb = &mbs[rnd() % nmbs];
		struct stor_mailbox m;
		CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(n->db, mb, &m, &error), 1);
		uint32_t uidnext = m.uidnext;
		stor_mailbox_free(&m);
		uint32_t uid = uidnext > 1 ? 1 + rnd() % (uidnext - 1) : 0;
		switch (rnd() % 5) {
		case 4: {
			/* Mailbox list changes beside INBOX and Work: create,
			 * rename or delete an X mailbox. */
			stor_mailbox_array list;
			CU_ASSERT_EQUAL_FATAL(stor_mailbox_list(n->db, USER, &list, &error), 0);
			const struct stor_mailbox *x = NULL;
			for (size_t j = 0; j < list.count && x == NULL; j++) {
				if (list.items[j].name[0] == 'X')
					x = &list.items[j];
			}
			char name[32];
			snprintf(name, sizeof(name), "X%u", rnd() % 1000);
			if (x == NULL || rnd() % 3 == 0) {
				struct stor_mailbox_create req = { .user = USER, .name = name };
				(void)stor_mailbox_create(n->db, &req, NULL, &error);
			} else if (rnd() % 2 == 0) {
				(void)stor_mailbox_rename(n->db, &x->guid, name, &error);
			} else {
				CU_ASSERT_EQUAL(stor_mailbox_delete(n->db, &x->guid, &error), 0);
			}
			stor_mailbox_list_free(&list);
			break;
		}
		case 0:
		case 1: {
			char text[64];
			snprintf(text, sizeof(text), "Subject: %u\r\n\r\n%u\r\n", rnd(), n->sid);
			append(n, mb, text, rnd() % 2 != 0 ? STOR_FLAG_SEEN : 0);
			break;
		}
		case 2:
			if (uid != 0) {
				struct stor_store req;
				memset(&req, 0, sizeof(req));
				req.op = STOR_FLAGS_REPLACE;
				req.flags = rnd() & STOR_FLAGS_ALL;
				CU_ASSERT_EQUAL(stor_msg_store(n->db, mb, &uid, 1, &req, NULL, NULL,
							       &error), 0);
			}
			break;
		default:
			if (uid != 0)
				CU_ASSERT_EQUAL(stor_msg_expunge(n->db, mb, &uid, 1, 0, NULL, &error),
						0);
			break;
		}
	}
}

static void check_no_duplicates(struct node *n, const struct guid *mbs, size_t nmbs)
{
	for (size_t i = 0; i < nmbs; i++) {
		stor_msg_list list;
		const char *error;
		CU_ASSERT_EQUAL_FATAL(stor_msg_list_range(n->db, &mbs[i], 1, UINT32_MAX, &list,
							  &error), 0);
		for (size_t j = 0; j < list.count; j++) {
			for (size_t k = j + 1; k < list.count; k++)
				CU_ASSERT_NOT_EQUAL(guid_cmp(&list.items[j].guid,
							     &list.items[k].guid), 0);
		}
		CU_ASSERT_EQUAL(stor_mailbox_check(n->db, &mbs[i], &error), 0);
		stor_msg_list_free(&list);
	}
}

static bool holds_guid(struct node *n, const struct guid *mb, const struct guid *g)
{
	const char *error;
	uint32_t uid;
	int r = stor_msg_find_guid(n->db, mb, g, &uid, &error);
	CU_ASSERT(r >= 0);
	return r > 0;
}

/* A and B dump alike and mb checks out on both; then both close and the
 * bundle buffer goes. */
static void two_nodes_end_alike(struct node *a, struct node *b, const struct guid *mb,
				struct buf *bundle)
{
	const char *error;
	CU_ASSERT(dumps_equal(a, b));
	CU_ASSERT_EQUAL(stor_mailbox_check(a->db, mb, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_check(b->db, mb, &error), 0);
	buf_free(bundle);
	node_close(a);
	node_close(b);
}

/* A user's expunge travels by bundle as one (EXPUNGE ... GUIDS): A's user
 * expunges X while B holds X under another UID (a sync with a third node
 * renumbered it).  Whichever node imports first, X stays expunged on both,
 * and importing again changes nothing. */
static void bundle_acked_expunge_after_renumber(bool a_first)
{
	struct node a, b;
	struct buf bundle = BUF_INIT;
	const char *error;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_mailbox(&a, USER, "INBOX", NULL);
	for (int i = 0; i < 3; i++)
		append(&a, &mb, "Subject: common\r\n\r\nx\r\n", 0);
	uint32_t xu = append(&a, &mb, "Subject: x\r\n\r\nx\r\n", STOR_FLAG_FLAGGED);
	struct stor_msg xm;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(a.db, &mb, xu, &xm, &error), 1);
	struct guid x = xm.guid;
	stor_msg_free(&xm);
	export_from(&a, false, &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	export_from(&b, true, &bundle, NULL);
	import_ok(&a, &bundle, NULL);
	CU_ASSERT_FATAL(holds_guid(&b, &mb, &x));
	expunge(&a, &mb, xu);
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(b.db, &mb, xu, xu + 5, 0, &error), 0);
	struct node *first = a_first ? &b : &a, *second = a_first ? &a : &b;
	/* first imports second's bundle, then the other way, twice. */
	for (int round = 0; round < 2; round++) {
		pass_bundle(second, first, &bundle);
		CU_ASSERT(!holds_guid(first, &mb, &x));
		pass_bundle(first, second, &bundle);
		CU_ASSERT(!holds_guid(&a, &mb, &x));
		CU_ASSERT(!holds_guid(&b, &mb, &x));
	}
	two_nodes_end_alike(&a, &b, &mb, &bundle);
}

/* Appends text with GUID g (a forwarded APPEND: one GUID on every node). */
static uint32_t append_as(struct node *n, const struct guid *mb, const struct guid *g,
			  const char *text)
{
	struct stor_append req;
	uint32_t uid = 0;
	const char *error = NULL;
	memset(&req, 0, sizeof(req));
	req.guid = g;
	req.internaldate = 1700000000;
	req.text = text;
	req.text_len = strlen(text);
	int r = stor_msg_append(n->db, mb, &req, &uid, NULL, &error);
	if (r < 0)
		fprintf(stderr, "append: %s\n", error);
	CU_ASSERT_EQUAL_FATAL(r, 0);
	return uid;
}

/* acked-append-present, all classes 9706: B (the new master) holds its own
 * APPEND X at UID 4 and A's forwarded APPEND Y at 5; C (the old master,
 * paused meanwhile) stored Y at 4.  C's bundle meets two GUIDs at UID 4,
 * one of them (Y) also at a second UID here.  Neither is a user's expunge:
 * after the imports every node holds X and Y, once each. */
static void bundle_two_guids_at_one_uid(bool since)
{
	struct node a, b, c;
	struct buf bundle = BUF_INIT;
	const char *error;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	node_open(&c, SID_B + 1);
	struct guid mb = mk_mailbox(&a, USER, "Shared", NULL);
	for (int i = 0; i < 3; i++)
		append(&a, &mb, "Subject: common\r\n\r\nx\r\n", 0);
	export_from(&a, false, &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	import_ok(&c, &bundle, NULL);
	export_from(&b, true, &bundle, NULL);
	import_ok(&a, &bundle, NULL);
	export_from(&c, true, &bundle, NULL);
	import_ok(&a, &bundle, NULL);
	struct guid x, y;
	guid_generate(&x);
	guid_generate(&y);
	CU_ASSERT_EQUAL(append_as(&b, &mb, &x, "Subject: x\r\n\r\nfrom s4\r\n"), 4);
	CU_ASSERT_EQUAL(append_as(&b, &mb, &y, "Subject: y\r\n\r\nfrom s1\r\n"), 5);
	CU_ASSERT_EQUAL(append_as(&a, &mb, &x, "Subject: x\r\n\r\nfrom s4\r\n"), 4);
	CU_ASSERT_EQUAL(append_as(&a, &mb, &y, "Subject: y\r\n\r\nfrom s1\r\n"), 5);
	CU_ASSERT_EQUAL(append_as(&c, &mb, &y, "Subject: y\r\n\r\nfrom s1\r\n"), 4);
	export_from(&c, since, &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	CU_ASSERT(holds_guid(&b, &mb, &x));
	CU_ASSERT(holds_guid(&b, &mb, &y));
	import_ok(&a, &bundle, NULL);
	CU_ASSERT(holds_guid(&a, &mb, &x));
	CU_ASSERT(holds_guid(&a, &mb, &y));
	/* And back: C learns X, and nobody loses anything on the way. */
	export_from(&b, true, &bundle, NULL);
	import_ok(&c, &bundle, NULL);
	export_from(&c, true, &bundle, NULL);
	import_ok(&a, &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	struct node *all[3] = { &a, &b, &c };
	for (int i = 0; i < 3; i++) {
		CU_ASSERT(holds_guid(all[i], &mb, &x));
		CU_ASSERT(holds_guid(all[i], &mb, &y));
		CU_ASSERT_EQUAL(count_messages(all[i], &mb), 5);
		CU_ASSERT_EQUAL(stor_mailbox_check(all[i]->db, &mb, &error), 0);
	}
	buf_free(&bundle);
	node_close(&a);
	node_close(&b);
	node_close(&c);
}

/* A and B holding mailbox name with three common messages appended on A,
 * which reached B by a bundle (and B's state back to A by another). */
static struct guid two_nodes_bundled(struct node *a, struct node *b, const char *name,
				     struct buf *bundle)
{
	node_open(a, SID_A);
	node_open(b, SID_B);
	struct guid mb = mk_mailbox(a, USER, name, NULL);
	for (int i = 0; i < 3; i++)
		append(a, &mb, "Subject: common\r\n\r\nx\r\n", 0);
	export_from(a, false, bundle, NULL);
	import_ok(b, bundle, NULL);
	export_from(b, true, bundle, NULL);
	import_ok(a, bundle, NULL);
	return mb;
}

/* The imports above, on two nodes, can give X and Y crosswise UIDs: A
 * holds X at 4 and Y at 5, B holds Y at 4 and X at 5.  Their merge meets
 * two GUIDs at each UID, each also at the other UID: no message is lost. */
static void bundle_crosswise(bool b_exports)
{
	struct node a, b;
	struct buf bundle = BUF_INIT;
	const char *error;
	struct guid mb = two_nodes_bundled(&a, &b, "Shared", &bundle);
	struct guid x, y;
	guid_generate(&x);
	guid_generate(&y);
	CU_ASSERT_EQUAL(append_as(&a, &mb, &x, "Subject: x\r\n\r\nfrom s4\r\n"), 4);
	CU_ASSERT_EQUAL(append_as(&a, &mb, &y, "Subject: y\r\n\r\nfrom s1\r\n"), 5);
	CU_ASSERT_EQUAL(append_as(&b, &mb, &y, "Subject: y\r\n\r\nfrom s1\r\n"), 4);
	CU_ASSERT_EQUAL(append_as(&b, &mb, &x, "Subject: x\r\n\r\nfrom s4\r\n"), 5);
	struct node *from = b_exports ? &b : &a, *to = b_exports ? &a : &b;
	for (int round = 0; round < 2; round++) {
		pass_bundle(from, to, &bundle);
		CU_ASSERT(holds_guid(to, &mb, &x));
		CU_ASSERT(holds_guid(to, &mb, &y));
		pass_bundle(to, from, &bundle);
		CU_ASSERT(holds_guid(from, &mb, &x));
		CU_ASSERT(holds_guid(from, &mb, &y));
	}
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(count_messages(&a, &mb), 5);
	CU_ASSERT_EQUAL(stor_mailbox_check(a.db, &mb, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_check(b.db, &mb, &error), 0);
	buf_free(&bundle);
	node_close(&a);
	node_close(&b);
}

/* X at a chosen UID with GUID g (a copy a sync or a replica placed). */
static void save_at(struct node *n, const struct guid *mb, uint32_t uid, const struct guid *g,
		    const char *text)
{
	test_save_at(n->db, mb, uid, g, text);
}

/* acked-append-present all classes 9737 by bundle: A holds X only at 4,
 * under B's engine tombstone of X there; B holds X only at 5, under A's
 * (each side moved its copy; no user expunged X).  Bit 0: B exports first
 * (else A); bit 1: the importer holds no copy (its copy was dropped by the
 * engine too), only the tombstone.  An import is a full compare the first
 * time: X must stay on both, once each. */
static void bundle_engine_tombstones(unsigned mode)
{
	struct node a, b;
	struct buf bundle = BUF_INIT;
	const char *error;
	struct guid mb = two_nodes_bundled(&a, &b, "INBOX", &bundle);
	struct guid x;
	guid_generate(&x);
	save_at(&a, &mb, 5, &x, "Subject: x\r\n\r\nx\r\n");
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(a.db, &mb, 5, 4, 0, &error), 0);
	save_at(&b, &mb, 4, &x, "Subject: x\r\n\r\nx\r\n");
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(b.db, &mb, 4, 5, 0, &error), 0);
	struct node *from = mode & 1 ? &b : &a, *to = mode & 1 ? &a : &b;
	if (mode & 2) {
		/* The importer's copy went too, by the engine (dropped for a
		 * copy it no longer holds). */
		uint32_t at = to == &a ? 4 : 5;
		CU_ASSERT_EQUAL_FATAL(stor_msg_expunge_kind(to->db, &mb, &at, 1, 0, false, NULL,
							    &error), 0);
	}
	for (int round = 0; round < 2; round++) {
		pass_bundle(from, to, &bundle);
		CU_ASSERT(holds_guid(to, &mb, &x));
		pass_bundle(to, from, &bundle);
		CU_ASSERT(holds_guid(from, &mb, &x));
	}
	CU_ASSERT(holds_guid(&a, &mb, &x));
	CU_ASSERT(holds_guid(&b, &mb, &x));
	CU_ASSERT_EQUAL(count_messages(&a, &mb), 4);
	CU_ASSERT_EQUAL(count_messages(&b, &mb), 4);
	two_nodes_end_alike(&a, &b, &mb, &bundle);
}

static void test_bundle_engine_tombstones_keep_the_message(void)
{
	for (unsigned mode = 0; mode < 4; mode++)
		bundle_engine_tombstones(mode);
}

static void test_bundle_crosswise_a(void)
{
	bundle_crosswise(false);
}

static void test_bundle_crosswise_b(void)
{
	bundle_crosswise(true);
}

static void test_bundle_two_guids_at_one_uid(void)
{
	bundle_two_guids_at_one_uid(true);
}

static void test_bundle_two_guids_at_one_uid_full(void)
{
	bundle_two_guids_at_one_uid(false);
}

static void test_bundle_acked_expunge_after_renumber_expunger_exports(void)
{
	bundle_acked_expunge_after_renumber(true);
}

static void test_bundle_acked_expunge_after_renumber_holder_exports(void)
{
	bundle_acked_expunge_after_renumber(false);
}

/* GUID tombstones travel by bundle (GONE): A's user expunges X, which C
 * holds; B, which never held X, learns the expunge from A's bundle.  C's
 * bundle then brings X to B, which keeps it out, and B's bundle takes X
 * away from C although B never held X (SPEC 10.3 "GUID tombstones"). */
static void test_bundle_guid_tombstones_travel(void)
{
	struct node a, b, c;
	struct buf bundle = BUF_INIT;
	const char *error;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	node_open(&c, SID_B + 1);
	struct guid mb = mk_mailbox(&a, USER, "INBOX", NULL);
	for (int i = 0; i < 3; i++)
		append(&a, &mb, "Subject: common\r\n\r\nx\r\n", 0);
	export_from(&a, false, &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	import_ok(&c, &bundle, NULL);
	uint32_t xu = append(&a, &mb, "Subject: x\r\n\r\nx\r\n", 0);
	struct stor_msg xm;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(a.db, &mb, xu, &xm, &error), 1);
	struct guid x = xm.guid;
	stor_msg_free(&xm);
	export_from(&a, false, &bundle, NULL);
	import_ok(&c, &bundle, NULL);
	CU_ASSERT_FATAL(holds_guid(&c, &mb, &x));
	expunge(&a, &mb, xu);
	export_from(&a, false, &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	CU_ASSERT(!holds_guid(&b, &mb, &x));
	CU_ASSERT_EQUAL(stor_guid_tomb_get(b.db, &mb, &x, NULL, &error), 1);
	/* C's bundle brings X to B. */
	export_from(&c, false, &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	CU_ASSERT(!holds_guid(&b, &mb, &x));
	/* B's bundle takes it away from C. */
	export_from(&b, false, &bundle, NULL);
	import_ok(&c, &bundle, NULL);
	CU_ASSERT(!holds_guid(&c, &mb, &x));
	export_from(&c, false, &bundle, NULL);
	import_ok(&a, &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	CU_ASSERT(!holds_guid(&a, &mb, &x));
	CU_ASSERT(!holds_guid(&b, &mb, &x));
	CU_ASSERT_EQUAL(count_messages(&a, &mb), 3);
	CU_ASSERT_EQUAL(count_messages(&b, &mb), 3);
	CU_ASSERT_EQUAL(count_messages(&c, &mb), 3);
	CU_ASSERT_EQUAL(stor_mailbox_check(b.db, &mb, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_check(c.db, &mb, &error), 0);
	buf_free(&bundle);
	node_close(&a);
	node_close(&b);
	node_close(&c);
}

static void test_bundle_random_changes_converge(void)
{
	for (uint32_t seed = 1; seed <= 8; seed++) {
		struct node a, b;
		struct buf bundle = BUF_INIT;
		node_open(&a, SID_A);
		node_open(&b, SID_B);
		rnd_state = seed * 2654435761u;
		struct guid mbs[2];
		mbs[0] = mk_mailbox(&a, USER, "INBOX", NULL);
		mbs[1] = mk_mailbox(&a, USER, "Work", NULL);
		append(&a, &mbs[0], "Subject: first\r\n\r\nx\r\n", 0);
		export_from(&a, false, &bundle, NULL);
		import_ok(&b, &bundle, NULL);
		export_from(&b, true, &bundle, NULL);
		import_ok(&a, &bundle, NULL);
		for (int round = 0; round < 6; round++) {
			random_changes(&a, mbs, 2);
			random_changes(&b, mbs, 2);
			/* Who starts alternates. */
			struct node *x = round % 2 == 0 ? &a : &b, *y = round % 2 == 0 ? &b : &a;
			export_from(x, true, &bundle, NULL);
			import_ok(y, &bundle, NULL);
			/* Sometimes the first side changes again before the
			 * bundle back arrives. */
			if (rnd() % 2 == 0)
				random_changes(x, mbs, 2);
			export_from(y, true, &bundle, NULL);
			import_ok(x, &bundle, NULL);
			if (!dumps_equal(&a, &b)) {
				/* The changes made meanwhile need one more
				 * bundle; then it must be equal. */
				export_from(x, true, &bundle, NULL);
				import_ok(y, &bundle, NULL);
			}
			bool eq = dumps_equal(&a, &b);
			if (!eq)
				fprintf(stderr, "seed %u round %d: not converged\n", seed, round);
			CU_ASSERT_TRUE(eq);
			check_no_duplicates(&a, mbs, 2);
			check_no_duplicates(&b, mbs, 2);
		}
		buf_free(&bundle);
		node_close(&a);
		node_close(&b);
	}
}

/* An import the other node has not seen yet is no base for a delete: a
 * bundle made without it cannot remove what the importer has. */
/* A user's RENAME on n at now_ms, with its stamp, as repl-local makes it. */
static void user_rename(struct node *n, const struct guid *g, const char *name, uint64_t now_ms)
{
	const char *error;
	uint64_t st = 0;
	CU_ASSERT_EQUAL(stor_mailbox_rename_stamp(n->db, g, &st, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_rename_stamped(n->db, g, name,
						    stor_rename_stamp_next(st, now_ms, n->sid),
						    &error), 0);
}

static bool has_name(struct node *n, const char *name, const struct guid *g)
{
	struct stor_mailbox m;
	const char *error;
	if (stor_mailbox_get(n->db, USER, name, &m, &error) != 1)
		return false;
	bool same = guid_cmp(&m.guid, g) == 0;
	stor_mailbox_free(&m);
	return same;
}

/* A bundle carries each name's rename stamp (SPEC.md 10.5, 11): B got S4
 * by way of C, never holding S3; A's older bundle, made at S3, must not
 * bring S3 back (the bundle's and B's names both differ from their common
 * list's S2, and S3 is not among B's old names). */
static void test_bundle_older_rename_loses_to_a_later_one(void)
{
	struct node a, b, c;
	struct buf bundle0 = BUF_INIT, bundle1 = BUF_INIT, bundle = BUF_INIT;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	node_open(&c, 3);
	struct guid g = mk_mailbox(&a, USER, "S2", NULL);
	append(&a, &g, "Subject: x\r\n\r\nx\r\n", 0);
	export_from(&a, false, &bundle0, NULL);
	import_ok(&b, &bundle0, NULL);
	user_rename(&a, &g, "S3", 1800000000000ull);
	export_from(&a, false, &bundle1, NULL);
	CU_ASSERT(bundle1.len > 20 && memcmp(bundle1.data, "STARLING-BUNDLE 1.1\r\n", 21) == 0);
	user_rename(&a, &g, "S4", 1800000000001ull);
	export_from(&a, false, &bundle, NULL);
	import_ok(&c, &bundle, NULL);
	CU_ASSERT(has_name(&c, "S4", &g));
	export_from(&c, false, &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	CU_ASSERT(has_name(&b, "S4", &g));
	import_ok(&b, &bundle1, NULL);
	CU_ASSERT(has_name(&b, "S4", &g));
	CU_ASSERT(dumps_equal(&b, &c));
	/* A bundle of a user whose mailboxes were never renamed stays 1.0. */
	CU_ASSERT(bundle0.len > 20 && memcmp(bundle0.data, "STARLING-BUNDLE 1.0\r\n", 21) == 0);
	buf_free(&bundle0);
	buf_free(&bundle1);
	buf_free(&bundle);
	node_close(&a);
	node_close(&b);
	node_close(&c);
}

static void test_bundle_stale_base_deletes_nothing(void)
{
	struct node a, b;
	struct buf bundle = BUF_INIT, stale = BUF_INIT;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	fill_user(&a, NULL);
	export_from(&a, false, &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	mk_mailbox(&b, USER, "OnlyB", NULL);
	export_from(&b, true, &bundle, NULL);
	import_ok(&a, &bundle, NULL);
	/* B creates a mailbox, then imports a bundle A made on top of B's
	 * last one: the base is known, and the new mailbox stays. */
	export_from(&a, true, &stale, NULL);
	mk_mailbox(&b, USER, "Later", NULL);
	struct sync_bundle_import_result res;
	import_ok(&b, &stale, &res);
	CU_ASSERT_TRUE(res.base_known);
	sync_bundle_import_result_free(&res);
	struct stor_mailbox mb;
	const char *error;
	CU_ASSERT_EQUAL(stor_mailbox_get(b.db, USER, "Later", &mb, &error), 1);
	stor_mailbox_free(&mb);
	/* A, which never saw "Later", makes another bundle on the same old
	 * base.  B's last common list holds "Later", but that list came from
	 * an import A's bundle is not based on: "Later" must not be taken for
	 * deleted by A. */
	struct guid ai;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get(a.db, USER, "INBOX", &mb, &error), 1);
	ai = mb.guid;
	stor_mailbox_free(&mb);
	append(&a, &ai, "Subject: more\r\n\r\nmore\r\n", 0);
	export_from(&a, true, &bundle, NULL);
	import_ok(&b, &bundle, &res);
	CU_ASSERT_FALSE(res.base_known);
	sync_bundle_import_result_free(&res);
	CU_ASSERT_EQUAL(stor_mailbox_get(b.db, USER, "Later", &mb, &error), 1);
	stor_mailbox_free(&mb);
	CU_ASSERT_EQUAL(stor_mailbox_get(b.db, USER, "OnlyB", &mb, &error), 1);
	stor_mailbox_free(&mb);
	/* The older bundle, imported after the newer one, is a replay. */
	import_refused(&b, stale.data, stale.len, "bundle refused");
	/* And a bundle each way still converges. */
	export_from(&b, true, &bundle, NULL);
	import_ok(&a, &bundle, NULL);
	CU_ASSERT_TRUE(dumps_equal(&a, &b));
	buf_free(&bundle);
	buf_free(&stale);
	node_close(&a);
	node_close(&b);
}

/* ---- Refusals ---- */

struct refusal_fixture {
	struct node a, b;
	struct buf bundle;
};

static void fixture_open(struct refusal_fixture *f)
{
	node_open(&f->a, SID_A);
	node_open(&f->b, SID_B);
	buf_init(&f->bundle);
	fill_user(&f->a, NULL);
	/* B has mail of its own, for both users, that must stay as it is. */
	struct guid bi = mk_mailbox(&f->b, USER, "INBOX", NULL);
	append(&f->b, &bi, "Subject: b\r\n\r\nb's own\r\n", 0);
	struct guid oi = mk_mailbox(&f->b, OTHER, "INBOX", NULL);
	append(&f->b, &oi, "Subject: bob\r\n\r\nbob's\r\n", 0);
	export_from(&f->a, false, &f->bundle, NULL);
}

static void fixture_close(struct refusal_fixture *f)
{
	buf_free(&f->bundle);
	node_close(&f->a);
	node_close(&f->b);
}

static void test_bundle_truncated_is_refused(void)
{
	struct refusal_fixture f;
	fixture_open(&f);
	size_t cuts[] = { 0, 1, 10, 60, f.bundle.len / 2, f.bundle.len - 170, f.bundle.len - 169,
			  f.bundle.len - 90, f.bundle.len - 1 };
	for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++)
		import_refused(&f.b, f.bundle.data, cuts[i], "bundle refused");
	/* A body that announces more than 4 times the file limit. */
	struct sync_bundle_import_settings small = {
		.own_sid = SID_B, .key = cluster_key(), .scratch_parent = scratch_parent,
		.max_size = 4096,
	};
	struct buf big = BUF_INIT;
	struct sync_bundle_header hdr = { .user = USER, .source = SID_A, .created = 1700000000 };
	struct sync_bundle_key k = cluster_key();
	char *stream = xcalloc(1, 20000);
	memset(stream, ' ', 19999);
	sync_bundle_seal(&hdr, &k, stream, 19999, &big, NULL);
	free(stream);
	CU_ASSERT_TRUE(big.len < 4096);
	struct sync_bundle_import_result res;
	char *error = NULL;
	CU_ASSERT_EQUAL(sync_bundle_import(f.b.db, &small, big.data, big.len, &res, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(error != NULL ? strstr(error, "4 times") : NULL);
	sync_bundle_import_result_free(&res);
	free(error);
	buf_free(&big);
	/* Longer than announced is refused too. */
	buf_append(&f.bundle, "x", 1);
	import_refused(&f.b, f.bundle.data, f.bundle.len, "longer");
	fixture_close(&f);
}

static void test_bundle_any_bit_flip_is_refused(void)
{
	struct refusal_fixture f;
	fixture_open(&f);
	char *before = dump(&f.b, USER);
	unsigned char *copy = xmemdup(f.bundle.data, f.bundle.len);
	for (size_t pos = 0; pos < f.bundle.len; pos++) {
		copy[pos] ^= (unsigned char)(1u << (pos % 8));
		char *error = NULL;
		struct sync_bundle_import_settings set = {
			.own_sid = SID_B, .key = cluster_key(), .scratch_parent = scratch_parent,
		};
		struct sync_bundle_import_result res;
		int r = sync_bundle_import(f.b.db, &set, copy, f.bundle.len, &res, &error);
		sync_bundle_import_result_free(&res);
		if (r == 0)
			fprintf(stderr, "flip at %zu accepted\n", pos);
		CU_ASSERT_EQUAL(r, -1);
		free(error);
		copy[pos] ^= (unsigned char)(1u << (pos % 8));
	}
	char *after = dump(&f.b, USER);
	CU_ASSERT_STRING_EQUAL(before, after);
	free(before);
	free(after);
	free(copy);
	/* The untouched bundle still imports. */
	import_ok(&f.b, &f.bundle, NULL);
	fixture_close(&f);
}

static void test_bundle_signed_with_another_key_is_refused(void)
{
	struct refusal_fixture f;
	fixture_open(&f);
	struct sync_bundle_export_settings set = {
		.user = USER, .source_sid = SID_A,
		.key = { other_secret, sizeof(other_secret) - 1, false },
	};
	char *error = NULL;
	buf_reset(&f.bundle);
	CU_ASSERT_EQUAL_FATAL(sync_bundle_export(f.a.db, &set, &f.bundle, NULL, &error), 0);
	import_refused(&f.b, f.bundle.data, f.bundle.len, "another key");
	/* A user key of another user does not sign for this one. */
	unsigned char bob_key[32];
	struct sync_bundle_key uk = { secret, sizeof(secret) - 1, true };
	(void)bob_key;
	struct sync_bundle_header hdr = { .user = OTHER, .source = SID_A, .created = 1700000000 };
	struct buf bob_bundle = BUF_INIT;
	sync_bundle_seal(&hdr, &uk, "", 0, &bob_bundle, NULL);
	/* Swap the header's user: the signature no longer matches. */
	struct buf forged = BUF_INIT;
	const char *p = strstr(buf_cstr(&bob_bundle), "USER bob");
	CU_ASSERT_PTR_NOT_NULL_FATAL(p);
	size_t off = (size_t)(p - (const char *)bob_bundle.data);
	buf_append(&forged, bob_bundle.data, off);
	buf_append_str(&forged, "USER alice");
	buf_append(&forged, bob_bundle.data + off + 8, bob_bundle.len - off - 8);
	import_refused(&f.b, forged.data, forged.len, "bundle refused");
	buf_free(&forged);
	buf_free(&bob_bundle);
	fixture_close(&f);
}

/* A bundle for alice whose commands name bob: refused before anything is
 * applied, for either user. */
static void test_bundle_for_another_user_is_refused(void)
{
	struct refusal_fixture f;
	fixture_open(&f);
	struct sync_bundle_key k = cluster_key();
	struct sync_bundle_header hdr = { .user = USER, .source = SID_A, .created = 1700000000 };
	const char *streams[] = {
		"B1 CREATE bob INBOX 0123456789abcdef0123456789abcdef 7\r\n",
		"B1 CREATE alice Work 0123456789abcdef0123456789abcdef 7\r\n"
		"B2 SUBSCRIBE bob Work\r\n",
		"B1 CREATE alice Work 0123456789abcdef0123456789abcdef 7\r\n"
		"B2 MBOX 1 bob Work 7 0123456789abcdef0123456789abcdef\r\n",
	};
	for (size_t i = 0; i < sizeof(streams) / sizeof(streams[0]); i++) {
		buf_reset(&f.bundle);
		hdr.created++;
		sync_bundle_seal(&hdr, &k, streams[i], strlen(streams[i]), &f.bundle, NULL);
		import_refused(&f.b, f.bundle.data, f.bundle.len, "another user");
	}
	/* A KEY USER bundle signed with alice's key is accepted for alice. */
	struct sync_bundle_key uk = { secret, sizeof(secret) - 1, true };
	const char *ok = "B1 CREATE alice Work 0123456789abcdef0123456789abcdef 7\r\n";
	buf_reset(&f.bundle);
	hdr.created++;
	sync_bundle_seal(&hdr, &uk, ok, strlen(ok), &f.bundle, NULL);
	import_ok(&f.b, &f.bundle, NULL);
	struct stor_mailbox mb;
	const char *error;
	CU_ASSERT_EQUAL(stor_mailbox_get(f.b.db, USER, "Work", &mb, &error), 1);
	stor_mailbox_free(&mb);
	fixture_close(&f);
}

/* A bundle dated before the last one imported from its node is refused,
 * and the message names both reasons it can have. */
static void test_bundle_older_than_the_last_one_is_refused(void)
{
	struct refusal_fixture f;
	fixture_open(&f);
	struct sync_bundle_key k = cluster_key();
	struct sync_bundle_header hdr = { .user = USER, .source = SID_A, .created = 1700000100 };
	const char *newer = "B1 CREATE alice Newer 0123456789abcdef0123456789abcdef 7\r\n";
	const char *older = "B1 CREATE alice Older 0123456789abcdef0123456789abcde0 7\r\n";
	buf_reset(&f.bundle);
	sync_bundle_seal(&hdr, &k, newer, strlen(newer), &f.bundle, NULL);
	import_ok(&f.b, &f.bundle, NULL);
	hdr.created = 1700000050;
	buf_reset(&f.bundle);
	sync_bundle_seal(&hdr, &k, older, strlen(older), &f.bundle, NULL);
	import_refused(&f.b, f.bundle.data, f.bundle.len,
		       "older than the last bundle imported from node 1 for " USER
		       " (a replay, or that node's clock went back)");
	fixture_close(&f);
}

static void test_bundle_bad_command_streams_are_refused(void)
{
	struct refusal_fixture f;
	fixture_open(&f);
	struct sync_bundle_key k = cluster_key();
	struct sync_bundle_header hdr = { .user = USER, .source = SID_A, .created = 1700000000 };
	const char *g = "0123456789abcdef0123456789abcdef";
	struct {
		const char *stream, *want;
	} cases[] = {
		{ "B1 LIST alice\r\n", "no place" },
		{ "B2 SUBSCRIBE alice x\r\n", "tag" },
		{ "B1 SYNC-END\r\n", "outside" },
		{ "B1 CREATE alice W %s 7\r\nB2 MBOX 1 alice W 7 %s\r\nB3 SELECT 1\r\n"
		  "B4 SYNC-BEGIN 0 5 1 3\r\n", "middle" },
		{ "B1 CREATE alice W %s 7\r\nB2 MBOX 1 alice W 7 %s\r\nB3 SELECT 1\r\n"
		  "B4 SYNC-BEGIN 0 5 1 3\r\nB5 SAVE 1700000000+0000 9 1 %s () {1}\r\nx\r\n"
		  "B6 SYNC-END\r\n", "UIDNEXT" },
		{ "B1 CREATE alice W %s 7\r\nB2 MBOX 1 alice W 7 %s\r\nB3 SELECT 1\r\n"
		  "B4 SYNC-BEGIN 0 5 1 3\r\nB5 SAVE 1700000000+0000 1 1 %s () NIL\r\n"
		  "B6 SYNC-END\r\n", "does not hold" },
		{ "B1 CREATE alice W %s 7\r\nB2 MBOX 1 alice W 7 %s\r\nB3 SELECT 1\r\n"
		  "B4 SYNC-BEGIN 7 5 1 3\r\n", "whole mailboxes" },
		/* A message must have a GUID (SPEC 8.1). */
		{ "B1 CREATE alice W %s 7\r\nB2 MBOX 1 alice W 7 %s\r\nB3 SELECT 1\r\n"
		  "B4 SYNC-BEGIN 0 5 1 3\r\n"
		  "B5 SAVE 1700000000+0000 1 1 00000000000000000000000000000000 () {1}\r\nx\r\n"
		  "B6 SYNC-END\r\n", "GUID" },
		{ "B1 CREATE alice W %s 7 ORIGIN 3\r\n", "option" },
		{ "B1 CREATE alice W %s 7\r\nB2 CREATE alice W %s 7\r\n", "CREATE" },
		{ "B1 CREATE alice W %s 7\r\nB2 MBOX 2 alice W 7 %s\r\n", "out of order" },
		{ "B1 CREATE alice W %s 7\r\nB2 MBOX 1 alice W 7 %s\r\nB3 SELECT 2\r\n",
		  "unknown id" },
		{ "B1 SUBSCRIBE alice {5}\r\n", "command stream" },
		{ "garbage", "command stream" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char stream[1024];
		snprintf(stream, sizeof(stream), cases[i].stream, g, g, g);
		buf_reset(&f.bundle);
		hdr.created++;
		sync_bundle_seal(&hdr, &k, stream, strlen(stream), &f.bundle, NULL);
		import_refused(&f.b, f.bundle.data, f.bundle.len, cases[i].want);
	}
	fixture_close(&f);
}

/* A bundle whose mailbox announces a UIDNEXT or HIGHESTMODSEQ past the
 * bounds of SPEC 5.2 (and so carries such a UID or modseq) is refused, one
 * line saying why, the importer's dump unchanged; a good bundle still
 * imports afterwards and the mailbox takes mail. */
static void test_bundle_uids_and_modseqs_past_the_bounds_are_refused(void)
{
	struct refusal_fixture f;
	fixture_open(&f);
	struct sync_bundle_key k = cluster_key();
	struct sync_bundle_header hdr = { .user = USER, .source = SID_A, .created = 1700000000 };
	const char *g = "0123456789abcdef0123456789abcdef";
	const char *m = "00112233445566778899aabbccddeeff";
	static const char *const streams[] = {
		/* UID 4294967294, the last below the announced UIDNEXT. */
		"B1 CREATE alice W %s 7\r\nB2 MBOX 1 alice W 7 %s\r\nB3 SELECT 1\r\n"
		"B4 SYNC-BEGIN 0 5 1 4294967295\r\nB5 SAVE 1700000000+0000 4294967294 1 %s () {1}\r\nx\r\n"
		"B6 SYNC-END\r\n",
		/* A UIDNEXT of 2^32-1 alone leaves no UID for new mail. */
		"B1 CREATE alice W %s 7\r\nB2 MBOX 1 alice W 7 %s\r\nB3 SELECT 1\r\n"
		"B4 SYNC-BEGIN 0 5 1 4294967295\r\nB5 SAVE 1700000000+0000 1 1 %s () {1}\r\nx\r\n"
		"B6 SYNC-END\r\n",
		/* One past the last UID. */
		"B1 CREATE alice W %s 7\r\nB2 MBOX 1 alice W 7 %s\r\nB3 SELECT 1\r\n"
		"B4 SYNC-BEGIN 0 5 1 2147483649\r\nB5 SAVE 1700000000+0000 2147483648 1 %s () {1}\r\nx\r\n"
		"B6 SYNC-END\r\n",
		/* A modseq near INT64_MAX. */
		"B1 CREATE alice W %s 7\r\nB2 MBOX 1 alice W 7 %s\r\nB3 SELECT 1\r\n"
		"B4 SYNC-BEGIN 0 9223372036854775806 1 3\r\n"
		"B5 SAVE 1700000000+0000 1 9223372036854775806 %s () {1}\r\nx\r\nB6 SYNC-END\r\n",
		/* One past the last modseq. */
		"B1 CREATE alice W %s 7\r\nB2 MBOX 1 alice W 7 %s\r\nB3 SELECT 1\r\n"
		"B4 SYNC-BEGIN 0 4611686018427387904 1 3\r\n"
		"B5 SAVE 1700000000+0000 1 4611686018427387904 %s () {1}\r\nx\r\nB6 SYNC-END\r\n",
	};
	for (size_t i = 0; i < sizeof(streams) / sizeof(streams[0]); i++) {
		char stream[1024];
		snprintf(stream, sizeof(stream), streams[i], g, g, m);
		buf_reset(&f.bundle);
		hdr.created++;
		sync_bundle_seal(&hdr, &k, stream, strlen(stream), &f.bundle, NULL);
		import_refused(&f.b, f.bundle.data, f.bundle.len, "limits of SPEC 5.2");
	}
	/* The same mailbox within the bounds imports, and takes mail. */
	char stream[1024];
	snprintf(stream, sizeof(stream),
		 "B1 CREATE alice W %s 7\r\nB2 MBOX 1 alice W 7 %s\r\nB3 SELECT 1\r\n"
		 "B4 SYNC-BEGIN 0 5 1 3\r\nB5 SAVE 1700000000+0000 2 5 %s () {1}\r\nx\r\n"
		 "B6 SYNC-END\r\n", g, g, m);
	buf_reset(&f.bundle);
	hdr.created++;
	sync_bundle_seal(&hdr, &k, stream, strlen(stream), &f.bundle, NULL);
	import_ok(&f.b, &f.bundle, NULL);
	struct stor_mailbox mb;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get(f.b.db, USER, "W", &mb, &error), 1);
	CU_ASSERT_EQUAL(append(&f.b, &mb.guid, "Subject: w\r\n\r\nw\r\n", 0), 3);
	stor_mailbox_free(&mb);
	fixture_close(&f);
}

static void test_bundle_own_and_future_bundles_are_refused(void)
{
	struct refusal_fixture f;
	fixture_open(&f);
	import_refused(&f.a, f.bundle.data, f.bundle.len, "this node");
	struct sync_bundle_key k = cluster_key();
	struct sync_bundle_header hdr = { .user = USER, .source = SID_A,
					  .created = 4000000000LL };
	buf_reset(&f.bundle);
	sync_bundle_seal(&hdr, &k, "", 0, &f.bundle, NULL);
	import_refused(&f.b, f.bundle.data, f.bundle.len, "future");
	fixture_close(&f);
}

static void test_bundle_state_of_another_user_is_refused(void)
{
	struct node a;
	node_open(&a, SID_A);
	fill_user(&a, NULL);
	const char *state = "STARLING-BUNDLE-STATE 1\nUSER bob\nPEER 2\nBASE 1 "
			    "0000000000000000000000000000000000000000000000000000000000000000\nEND\n";
	struct sync_bundle_export_settings set = {
		.user = USER, .source_sid = SID_A, .key = cluster_key(),
		.state = state, .state_len = strlen(state),
	};
	struct buf out = BUF_INIT;
	char *error = NULL;
	CU_ASSERT_EQUAL(sync_bundle_export(a.db, &set, &out, NULL, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(error != NULL ? strstr(error, "another user") : NULL);
	CU_ASSERT_EQUAL(out.len, 0);
	free(error);
	buf_free(&out);
	node_close(&a);
}

/* A short line where TEXT lines go: refused, and nothing is read past the
 * line (the parser once looked 5 bytes in before checking the prefix). */
static void test_bundle_state_short_text_line_is_refused(void)
{
	struct node a;
	node_open(&a, SID_A);
	fill_user(&a, NULL);
	static const char head[] = "STARLING-BUNDLE-STATE 1\nUSER " USER "\nPEER 2\nBASE 1 "
		"0000000000000000000000000000000000000000000000000000000000000000\nT\n";
	/* An exactly sized copy, so a read past it is one past the allocation. */
	size_t len = strlen(head);
	char *state = malloc(len);
	memcpy(state, head, len);
	struct sync_bundle_export_settings set = {
		.user = USER, .source_sid = SID_A, .key = cluster_key(),
		.state = state, .state_len = len,
	};
	struct buf out = BUF_INIT;
	char *error = NULL;
	CU_ASSERT_EQUAL(sync_bundle_export(a.db, &set, &out, NULL, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(error != NULL ? strstr(error, "bad TEXT line") : NULL);
	free(error);
	free(state);
	buf_free(&out);
	node_close(&a);
}

/* Both nodes change flags of the same messages between two exchanges:
 * different flags are all kept, one flag changed both ways takes the later
 * change, whichever node imports first (the bundle carries each flag's
 * stamp). */
static void test_bundle_flag_changes_on_both_sides_merge(void)
{
	for (int variant = 0; variant < 2; variant++) {
		struct node a, b;
		struct buf bundle = BUF_INIT;
		const char *error;
		node_open(&a, SID_A);
		node_open(&b, SID_B);
		struct guid inbox = mk_mailbox(&a, USER, "INBOX", NULL);
		uint32_t u1 = append(&a, &inbox, "Subject: f1\r\n\r\none\r\n", 0);
		uint32_t u2 = append(&a, &inbox, "Subject: f2\r\n\r\ntwo\r\n", 0);
		export_from(&a, false, &bundle, NULL);
		import_ok(&b, &bundle, NULL);
		export_from(&b, true, &bundle, NULL);
		import_ok(&a, &bundle, NULL);
		CU_ASSERT_TRUE_FATAL(dumps_equal(&a, &b));
		/* u1: \Seen on A, \Flagged and $B on B.  u2: A sets \Seen,
		 * then B sets it and clears it later; A changes u2 again (a
		 * keyword) so that its modseq is the higher. */
		store_op(&a, &inbox, u1, STOR_FLAGS_ADD, STOR_FLAG_SEEN, NULL);
		store_op(&b, &inbox, u1, STOR_FLAGS_ADD, STOR_FLAG_FLAGGED, "$B");
		store_op(&a, &inbox, u2, STOR_FLAGS_ADD, STOR_FLAG_SEEN, NULL);
		struct timespec ts = { 0, 3 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		store_op(&b, &inbox, u2, STOR_FLAGS_ADD, STOR_FLAG_SEEN, NULL);
		store_op(&b, &inbox, u2, STOR_FLAGS_REMOVE, STOR_FLAG_SEEN, NULL);
		for (int i = 0; i < 3; i++)
			store_op(&a, &inbox, u2, i % 2 == 0 ? STOR_FLAGS_ADD : STOR_FLAGS_REMOVE, 0,
				 "$k");
		/* A's last state of u2: \Seen $k; its \Seen change is older
		 * than B's clear. */
		struct node *first = variant == 0 ? &a : &b, *second = variant == 0 ? &b : &a;
		pass_bundle(first, second, &bundle);
		pass_bundle(second, first, &bundle);
		CU_ASSERT_TRUE(dumps_equal(&a, &b));
		struct stor_msg m;
		CU_ASSERT_EQUAL_FATAL(stor_msg_get(a.db, &inbox, u1, &m, &error), 1);
		CU_ASSERT_EQUAL(m.flags, STOR_FLAG_SEEN | STOR_FLAG_FLAGGED);
		CU_ASSERT_EQUAL(m.keywords.count, 1);
		stor_msg_free(&m);
		CU_ASSERT_EQUAL_FATAL(stor_msg_get(b.db, &inbox, u2, &m, &error), 1);
		CU_ASSERT_EQUAL(m.flags, 0);
		CU_ASSERT_EQUAL(m.keywords.count, 1);
		stor_msg_free(&m);
		buf_free(&bundle);
		node_close(&a);
		node_close(&b);
	}
}

/* A STORE that changes no value is still the user's change of the flags
 * it names (SPEC.md 10.2), through bundles too: A sets $k2, later B, where
 * $k2 was never set, clears it; after the exchange it is clear on both,
 * whichever node imports first. */
static void test_bundle_noop_clear_later_wins(void)
{
	for (int variant = 0; variant < 2; variant++) {
		struct node a, b;
		struct buf bundle = BUF_INIT;
		const char *error;
		node_open(&a, SID_A);
		node_open(&b, SID_B);
		struct guid inbox = mk_mailbox(&a, USER, "INBOX", NULL);
		uint32_t u = append(&a, &inbox, "Subject: k2\r\n\r\nk2\r\n", 0);
		export_from(&a, false, &bundle, NULL);
		import_ok(&b, &bundle, NULL);
		export_from(&b, true, &bundle, NULL);
		import_ok(&a, &bundle, NULL);
		CU_ASSERT_TRUE_FATAL(dumps_equal(&a, &b));
		store_op(&a, &inbox, u, STOR_FLAGS_ADD, 0, "$k2");
		struct timespec ts = { 0, 3 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		store_op(&b, &inbox, u, STOR_FLAGS_REMOVE, 0, "$k2");
		struct node *first = variant == 0 ? &a : &b, *second = variant == 0 ? &b : &a;
		pass_bundle(first, second, &bundle);
		pass_bundle(second, first, &bundle);
		CU_ASSERT_TRUE(dumps_equal(&a, &b));
		struct stor_msg m;
		CU_ASSERT_EQUAL_FATAL(stor_msg_get(a.db, &inbox, u, &m, &error), 1);
		CU_ASSERT_EQUAL(m.keywords.count, 0);
		stor_msg_free(&m);
		CU_ASSERT_EQUAL_FATAL(stor_msg_get(b.db, &inbox, u, &m, &error), 1);
		CU_ASSERT_EQUAL(m.keywords.count, 0);
		stor_msg_free(&m);
		buf_free(&bundle);
		node_close(&a);
		node_close(&b);
	}
}


/* ---- Private \Seen records (SPEC.md 7.7 "Bundles") ---- */

/* Exports user from n, with the state st when not NULL. */
static void export_user(struct node *n, const char *user, const struct buf *st, struct buf *out)
{
	if (next_created == 0)
		next_created = (int64_t)time(NULL);
	struct sync_bundle_export_settings set = {
		.user = user, .source_sid = n->sid, .key = cluster_key(),
		.created = next_created++,
		.state = st != NULL ? (const void *)st->data : NULL,
		.state_len = st != NULL ? st->len : 0,
	};
	char *error = NULL;
	buf_reset(out);
	int r = sync_bundle_export(n->db, &set, out, NULL, &error);
	if (r < 0)
		fprintf(stderr, "export %s: %s\n", user, error);
	free(error);
	CU_ASSERT_EQUAL_FATAL(r, 0);
}

/* The inflated command stream of a bundle, NUL-terminated. */
static char *stream_of(const struct buf *bundle)
{
	const char *s = (const char *)bundle->data;
	const char *body = strstr(s, "BODY DEFLATE ");
	const char *end = strstr(s, "\r\nEND\r\n");
	CU_ASSERT_FATAL(body != NULL && end != NULL);
	unsigned long comp = 0, raw = 0;
	CU_ASSERT_FATAL(sscanf(body, "BODY DEFLATE %lu %lu", &comp, &raw) == 2);
	uLongf out_len = raw;
	unsigned char *out = xmalloc(raw + 1);
	CU_ASSERT_FATAL(uncompress(out, &out_len, (const Bytef *)end + 7, comp) == Z_OK);
	out[out_len] = '\0';
	return (char *)out;
}

static int seen_of(struct node *n, const struct guid *mb, const struct guid *g, const char *user)
{
	struct stor_pseen r;
	const char *error;
	memset(&r, 0, sizeof(r));
	int have = stor_pseen_get(n->db, mb, g, user, &r, &error);
	CU_ASSERT(have >= 0);
	free(r.user);
	return have <= 0 ? -1 : r.seen;
}

static void pseen_set(struct node *n, const struct guid *mb, const struct guid *g,
		      const char *user, bool seen)
{
	struct stor_pseen_change c = { *g, seen, 0, 0 };
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_pseen_put(n->db, mb, user, STOR_PSEEN_LOCAL, &c, 1, NULL, NULL,
					     &error), 0);
}

static struct guid guid_at(struct node *n, const struct guid *mb, uint32_t uid)
{
	struct stor_msg m;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(n->db, mb, uid, &m, &error), 1);
	struct guid g = m.guid;
	stor_msg_free(&m);
	return g;
}

/* zed shares "Shared" with alice and bob on A; both read messages there.
 * zed's bundle carries nobody's records, alice's only alice's, bob's only
 * bob's; each import on B (which has zed's mailbox from zed's bundle)
 * makes exactly that user's records appear. */
static void test_bundle_pseen_carries_only_the_users_records(void)
{
	struct node a, b;
	struct buf bundle = BUF_INIT, st_alice = BUF_INIT;
	const char *error;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	fill_user(&a, NULL);
	mk_mailbox(&a, OTHER, "INBOX", NULL);
	struct guid sh = mk_mailbox(&a, "zed", "Shared", NULL);
	CU_ASSERT_EQUAL_FATAL(stor_acl_put(a.db, "zed", &sh, USER, "lrs", 100, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_acl_put(a.db, "zed", &sh, OTHER, "lrs", 100, NULL, &error), 0);
	uint32_t u1 = append(&a, &sh, "Subject: s1\r\n\r\none\r\n", 0);
	uint32_t u2 = append(&a, &sh, "Subject: s2\r\n\r\ntwo\r\n", 0);
	struct guid g1 = guid_at(&a, &sh, u1), g2 = guid_at(&a, &sh, u2);
	pseen_set(&a, &sh, &g1, USER, true);
	pseen_set(&a, &sh, &g1, OTHER, true);
	pseen_set(&a, &sh, &g2, OTHER, true);

	export_user(&a, "zed", NULL, &bundle);
	char *text = stream_of(&bundle);
	CU_ASSERT_PTR_NULL(strstr(text, "PSEEN"));
	free(text);
	import_ok(&b, &bundle, NULL);
	CU_ASSERT_EQUAL(seen_of(&b, &sh, &g1, USER), -1);
	CU_ASSERT_EQUAL(seen_of(&b, &sh, &g1, OTHER), -1);

	export_user(&a, USER, NULL, &bundle);
	text = stream_of(&bundle);
	CU_ASSERT_PTR_NOT_NULL(strstr(text, " PSEEN-MBOX zed "));
	CU_ASSERT_PTR_NOT_NULL(strstr(text, " PSEEN alice "));
	CU_ASSERT_PTR_NULL(strstr(text, " PSEEN bob "));
	free(text);
	struct sync_bundle_import_result res;
	import_ok(&b, &bundle, &res);
	CU_ASSERT_EQUAL(res.pseen.records_applied, 1);
	CU_ASSERT_EQUAL(res.pseen.mailboxes_skipped, 0);
	CU_ASSERT_PTR_NOT_NULL(strstr((const char *)res.state.data, "PSEEN-BASE "));
	buf_append(&st_alice, res.state.data, res.state.len);
	sync_bundle_import_result_free(&res);
	CU_ASSERT_EQUAL(seen_of(&b, &sh, &g1, USER), 1);
	CU_ASSERT_EQUAL(seen_of(&b, &sh, &g2, USER), -1);
	CU_ASSERT_EQUAL(seen_of(&b, &sh, &g1, OTHER), -1);

	export_user(&a, OTHER, NULL, &bundle);
	text = stream_of(&bundle);
	CU_ASSERT_PTR_NOT_NULL(strstr(text, " PSEEN bob "));
	CU_ASSERT_PTR_NULL(strstr(text, " PSEEN alice "));
	free(text);
	import_ok(&b, &bundle, &res);
	CU_ASSERT_EQUAL(res.pseen.records_applied, 2);
	sync_bundle_import_result_free(&res);
	CU_ASSERT_EQUAL(seen_of(&b, &sh, &g1, OTHER), 1);
	CU_ASSERT_EQUAL(seen_of(&b, &sh, &g2, OTHER), 1);
	CU_ASSERT_EQUAL(seen_of(&b, &sh, &g2, USER), -1);

	/* The bundle back with the state carries none of what came over;
	 * alice's later change on B travels and wins on A. */
	export_user(&b, USER, &st_alice, &bundle);
	text = stream_of(&bundle);
	CU_ASSERT_PTR_NULL(strstr(text, "PSEEN"));
	free(text);
	pseen_set(&b, &sh, &g1, USER, false);
	pseen_set(&b, &sh, &g2, USER, true);
	export_user(&b, USER, &st_alice, &bundle);
	text = stream_of(&bundle);
	CU_ASSERT_PTR_NOT_NULL(strstr(text, " PSEEN alice "));
	free(text);
	import_ok(&a, &bundle, &res);
	CU_ASSERT_EQUAL(res.pseen.records_applied, 2);
	sync_bundle_import_result_free(&res);
	CU_ASSERT_EQUAL(seen_of(&a, &sh, &g1, USER), 0);
	CU_ASSERT_EQUAL(seen_of(&a, &sh, &g2, USER), 1);
	CU_ASSERT_EQUAL(seen_of(&a, &sh, &g1, OTHER), 1);
	buf_free(&st_alice);
	buf_free(&bundle);
	node_close(&a);
	node_close(&b);
}

/* A mailbox the importer does not hold, or holds with another
 * UIDVALIDITY, is skipped and counted; nothing is written for it. */
static void test_bundle_pseen_unknown_mailbox_is_skipped(void)
{
	struct node a, b;
	struct buf bundle = BUF_INIT;
	const char *error;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	fill_user(&a, NULL);
	struct guid sh = mk_mailbox(&a, "zed", "Shared", NULL);
	CU_ASSERT_EQUAL_FATAL(stor_acl_put(a.db, "zed", &sh, USER, "lrs", 100, NULL, &error), 0);
	uint32_t u1 = append(&a, &sh, "Subject: s1\r\n\r\none\r\n", 0);
	struct guid g1 = guid_at(&a, &sh, u1);
	pseen_set(&a, &sh, &g1, USER, true);
	export_user(&a, USER, NULL, &bundle);
	struct sync_bundle_import_result res;
	import_ok(&b, &bundle, &res);
	CU_ASSERT_EQUAL(res.pseen.records_applied, 0);
	CU_ASSERT_EQUAL(res.pseen.mailboxes_skipped, 1);
	CU_ASSERT_PTR_NULL(strstr((const char *)res.state.data, "PSEEN-BASE"));
	sync_bundle_import_result_free(&res);
	CU_ASSERT_EQUAL(seen_of(&b, &sh, &g1, USER), -1);
	buf_free(&bundle);
	node_close(&a);
	node_close(&b);
}

/* Hostile PSEEN lines: each refused with one line saying why, and the
 * good record before it is not applied. */
static void test_bundle_pseen_hostile_lines_are_refused(void)
{
	struct node b;
	struct buf bundle = BUF_INIT;
	node_open(&b, SID_B);
	struct guid sh = mk_mailbox(&b, "zed", "Shared", NULL);
	uint32_t u1 = append(&b, &sh, "Subject: s1\r\n\r\none\r\n", 0);
	struct guid g1 = guid_at(&b, &sh, u1);
	struct stor_mailbox mb;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(b.db, &sh, &mb, &error), 1);
	char mbx[33], msg[33], head[512];
	guid_to_hex(&sh, mbx);
	guid_to_hex(&g1, msg);
	const char *g = "0123456789abcdef0123456789abcdef";
	snprintf(head, sizeof(head),
		 "B1 CREATE alice INBOX %s 7\r\nB2 MBOX 1 alice INBOX 7 %s\r\nB3 SELECT 1\r\n"
		 "B4 SYNC-BEGIN 0 0 1 1\r\nB5 SYNC-END\r\nB6 PSEEN-MBOX zed %s %u\r\n"
		 "B7 PSEEN alice %s 1 0 1700000000000\r\n", g, g, mbx, mb.uidvalidity, msg);
	stor_mailbox_free(&mb);
	struct {
		const char *tail, *want;
	} cases[] = {
		{ "B8 PSEEN bob %s 1 0 5\r\n", "another user" },
		{ "B8 PSEEN .x %s 1 0 5\r\n", "bad user name" },
		{ "B8 PSEEN alice %s 2 0 5\r\n", "seen is 0 or 1" },
		{ "B8 PSEEN alice %s 1 4 5\r\n", "modseq 0" },
		{ "B8 PSEEN alice %s 1 0 5\r\n", "two PSEEN lines of one message" },
		{ "B8 PSEEN alice 00000000000000000000000000000000 1 0 5\r\n", "GUID" },
		{ "B8 PSEEN alice %s 1 0 5 ORIGIN 3\r\n", "options" },
		{ "B8 PSEEN-MBOX alice %s 7\r\n", "own mailbox" },
		{ "B8 PSEEN-MBOX zed %s 7\r\n", "twice" },
		{ "B8 PSEEN-MBOX zed 00000000000000000000000000000000 7\r\n", "mailbox GUID" },
		{ "B8 PSEEN-MBOX yves %s 0\r\n", "" },
		{ "B8 PSEEN-MBOX yves 11111111111111111111111111111111 7\r\n", "without records" },
		{ "B8 SUBSCRIBE alice INBOX\r\n", "after PSEEN-MBOX" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char tail[256], stream[1024];
		const char *arg = strstr(cases[i].tail, "PSEEN-MBOX") != NULL ? mbx : msg;
		snprintf(tail, sizeof(tail), cases[i].tail, arg);
		snprintf(stream, sizeof(stream), "%s%s", head, tail);
		buf_reset(&bundle);
		struct sync_bundle_key k = cluster_key();
		struct sync_bundle_header hdr = { .user = USER, .source = SID_A,
						  .created = 1700000000 + (int64_t)i };
		sync_bundle_seal(&hdr, &k, stream, strlen(stream), &bundle, NULL);
		char *err = NULL;
		int r = import_into(&b, bundle.data, bundle.len, NULL, &err);
		CU_ASSERT_EQUAL(r, -1);
		if (r == 0 || err == NULL || strstr(err, cases[i].want) == NULL ||
		    strchr(err, '\n') != NULL) {
			fprintf(stderr, "case %zu: '%s' lacks '%s'\n", i, err ? err : "(none)",
				cases[i].want);
			CU_FAIL("unexpected error");
		}
		free(err);
		CU_ASSERT_EQUAL(seen_of(&b, &sh, &g1, USER), -1);
	}
	/* The same head alone imports and applies the record. */
	buf_reset(&bundle);
	struct sync_bundle_key k = cluster_key();
	struct sync_bundle_header hdr = { .user = USER, .source = SID_A, .created = 1700000100 };
	sync_bundle_seal(&hdr, &k, head, strlen(head), &bundle, NULL);
	import_ok(&b, &bundle, NULL);
	CU_ASSERT_EQUAL(seen_of(&b, &sh, &g1, USER), 1);
	buf_free(&bundle);
	node_close(&b);
}

/* The same mailbox and message on a node: a public mailbox made there as
 * replication would (given GUIDs and UIDVALIDITY). */
static void put_public(struct node *n, const struct guid *mb, const struct guid *msg)
{
	struct stor_mailbox_create req = { .user = ".public", .name = "News", .guid = mb,
					   .uidvalidity = 1700000077 };
	const char *error = NULL;
	int r = stor_mailbox_create(n->db, &req, NULL, &error);
	if (r < 0)
		fprintf(stderr, "create .public News: %s\n", error);
	CU_ASSERT_EQUAL_FATAL(r, 0);
	CU_ASSERT_EQUAL_FATAL(stor_acl_put(n->db, ".public", mb, "anyone", "lrs", 100, NULL,
					   &error), 0);
	struct stor_append a;
	memset(&a, 0, sizeof(a));
	a.guid = msg;
	a.internaldate = 1700000000;
	a.text = "Subject: news\r\n\r\nnews\r\n";
	a.text_len = strlen(a.text);
	uint32_t uid;
	CU_ASSERT_EQUAL_FATAL(stor_msg_append(n->db, mb, &a, &uid, NULL, &error), 0);
}

/* A public mailbox (owner .public, shared through anyone): alice's bundle
 * carries her record there, and the import applies it. */
static void test_bundle_pseen_public_mailbox(void)
{
	struct node a, b;
	struct buf bundle = BUF_INIT;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	fill_user(&a, NULL);
	struct guid mb, msg;
	guid_generate(&mb);
	guid_generate(&msg);
	put_public(&a, &mb, &msg);
	put_public(&b, &mb, &msg);
	pseen_set(&a, &mb, &msg, USER, true);
	pseen_set(&a, &mb, &msg, OTHER, true);
	export_user(&a, USER, NULL, &bundle);
	char *text = stream_of(&bundle);
	CU_ASSERT_PTR_NOT_NULL(strstr(text, " PSEEN-MBOX .public "));
	CU_ASSERT_PTR_NULL(strstr(text, " PSEEN bob "));
	free(text);
	struct sync_bundle_import_result res;
	import_ok(&b, &bundle, &res);
	CU_ASSERT_EQUAL(res.pseen.records_applied, 1);
	sync_bundle_import_result_free(&res);
	CU_ASSERT_EQUAL(seen_of(&b, &mb, &msg, USER), 1);
	CU_ASSERT_EQUAL(seen_of(&b, &mb, &msg, OTHER), -1);
	buf_free(&bundle);
	node_close(&a);
	node_close(&b);
}

/* 100,000 PSEEN-MBOX of mailboxes B does not hold, one record each (the
 * bound), load and are skipped in bounded time; one PSEEN line more is
 * refused. */
static void test_bundle_pseen_at_the_bounds(void)
{
	struct node b;
	struct buf bundle = BUF_INIT, stream = BUF_INIT;
	node_open(&b, SID_B);
	const char *g = "0123456789abcdef0123456789abcdef";
	for (int round = 0; round < 2; round++) {
		buf_reset(&stream);
		buf_appendf(&stream, "B1 CREATE alice INBOX %s 7\r\nB2 MBOX 1 alice INBOX 7 %s\r\n"
			    "B3 SELECT 1\r\nB4 SYNC-BEGIN 0 0 1 1\r\nB5 SYNC-END\r\n", g, g);
		unsigned tag = 6;
		for (unsigned i = 0; i < 100000; i++) {
			buf_appendf(&stream, "B%u PSEEN-MBOX zed %08x%024x 7\r\n", tag++, i + 1, 0);
			buf_appendf(&stream, "B%u PSEEN alice %s 1 0 5\r\n", tag++, g);
		}
		if (round == 1)
			buf_appendf(&stream, "B%u PSEEN alice %032x 1 0 5\r\n", tag++, 7);
		buf_reset(&bundle);
		struct sync_bundle_key k = cluster_key();
		struct sync_bundle_header hdr = { .user = USER, .source = SID_A,
						  .created = 1700000000 + round };
		sync_bundle_seal(&hdr, &k, stream.data, stream.len, &bundle, NULL);
		time_t t0 = time(NULL);
		struct sync_bundle_import_result res;
		char *err = NULL;
		int r = import_into(&b, bundle.data, bundle.len, round == 0 ? &res : NULL, &err);
		time_t took = time(NULL) - t0;
		CU_ASSERT(took < 30);
		if (round == 0) {
			if (r < 0)
				fprintf(stderr, "import: %s\n", err);
			CU_ASSERT_EQUAL(r, 0);
			if (r == 0) {
				CU_ASSERT_EQUAL(res.pseen.mailboxes_skipped, 100000);
				sync_bundle_import_result_free(&res);
			}
		} else {
			CU_ASSERT_EQUAL(r, -1);
			CU_ASSERT(err != NULL && strstr(err, "too many PSEEN") != NULL);
		}
		free(err);
	}
	buf_free(&stream);
	buf_free(&bundle);
	node_close(&b);
}

static const struct test_case bundle_cases[] = {
	{ "full export fills an empty node", test_bundle_full_export_fills_an_empty_node },
	{ "an import on a loop waits for its group commit, off the loop",
	  test_bundle_import_waits_for_the_loops_sync },
	{ "an import whose group commit fails fails", test_bundle_import_failed_sync_fails_it },
	{ "starlingd's export leaves its record's fsync to the node's loop",
	  test_bundle_export_on_loop_leaves_the_sync },
	{ "ACL records travel, newest wins", test_bundle_carries_acl_records },
	{ "both directions converge", test_bundle_both_directions_converge },
	{ "stale base deletes nothing", test_bundle_stale_base_deletes_nothing },
	{ "an older rename loses to a later one", test_bundle_older_rename_loses_to_a_later_one },
	{ "later flag changes win", test_bundle_later_flag_changes_win },
	{ "flag changes on both sides merge", test_bundle_flag_changes_on_both_sides_merge },
	{ "a later STORE that changes no value wins (flag-holds)", test_bundle_noop_clear_later_wins },
	{ "random changes converge", test_bundle_random_changes_converge },
	{ "an acknowledged expunge holds against a renumbered copy (expunger exports)",
	  test_bundle_acked_expunge_after_renumber_expunger_exports },
	{ "an acknowledged expunge holds against a renumbered copy (holder exports)",
	  test_bundle_acked_expunge_after_renumber_holder_exports },
	{ "GUID tombstones travel by bundle", test_bundle_guid_tombstones_travel },
	{ "two GUIDs at one UID, one also at a second: neither is lost (acked-append 9706)",
	  test_bundle_two_guids_at_one_uid },
	{ "the same from a full bundle", test_bundle_two_guids_at_one_uid_full },
	{ "two GUIDs at two UIDs crosswise: neither is lost (A exports)", test_bundle_crosswise_a },
	{ "two GUIDs at two UIDs crosswise: neither is lost (B exports)", test_bundle_crosswise_b },
	{ "engine tombstones of a message held elsewhere keep it (acked-append 9737)",
	  test_bundle_engine_tombstones_keep_the_message },
	{ "truncated is refused", test_bundle_truncated_is_refused },
	{ "any bit flip is refused", test_bundle_any_bit_flip_is_refused },
	{ "signed with another key is refused", test_bundle_signed_with_another_key_is_refused },
	{ "for another user is refused", test_bundle_for_another_user_is_refused },
	{ "older than the last one from its node is refused",
	  test_bundle_older_than_the_last_one_is_refused },
	{ "bad command streams are refused", test_bundle_bad_command_streams_are_refused },
	{ "UIDs and modseqs past the bounds are refused",
	  test_bundle_uids_and_modseqs_past_the_bounds_are_refused },
	{ "own and future bundles are refused", test_bundle_own_and_future_bundles_are_refused },
	{ "state of another user is refused", test_bundle_state_of_another_user_is_refused },
	{ "state with a short TEXT line is refused", test_bundle_state_short_text_line_is_refused },
	{ "private \\Seen: a bundle carries only its user's records",
	  test_bundle_pseen_carries_only_the_users_records },
	{ "private \\Seen: a mailbox not held is skipped", test_bundle_pseen_unknown_mailbox_is_skipped },
	{ "private \\Seen: hostile PSEEN lines are refused", test_bundle_pseen_hostile_lines_are_refused },
	{ "private \\Seen: PSEEN at the bounds", test_bundle_pseen_at_the_bounds },
	{ "private \\Seen: a public mailbox's records", test_bundle_pseen_public_mailbox },
	{ NULL, NULL },
};

static int suite_init(void)
{
	scratch_parent = test_mkdtemp();
	return 0;
}

static int suite_cleanup(void)
{
	test_rmtree(scratch_parent);
	free(scratch_parent);
	return 0;
}

static const struct test_suite suites[] = {
	{ "bundle", bundle_cases, suite_init, suite_cleanup },
	{ NULL, NULL, NULL, NULL },
};

int main(void)
{
	return test_run_suites("test-bundle", suites);
}
