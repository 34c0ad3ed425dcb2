/* Tests of sync/: two stores in one process, a client and a server joined
 * by the in-memory transport (sync_pipe) that delivers bytes in random
 * splits.  After every sync the canonical dumps of the two stores must be
 * byte-identical. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <time.h>

#include "lib/mail-limits.h"
#include "lib/str.h"
#include "lib/xalloc.h"
#include "protocol/protocol.h"
#include "storage/storage-acl.h"
#include "storage/storage-private.h"
#include "storage/storage.h"
#include "sync/sync-bundle.h"
#include "sync/sync-private.h"
#include "sync/sync.h"
#include "tests/testutil.h"
#include "tests/testutil-stor.h"

#define USER "alice"
#define SID_A 1
#define SID_B 2
#define SID_C 3

struct node {
	char *dir;
	struct stor_db *db;
	uint32_t sid;
};

static void node_open_dir(struct node *n)
{
	struct stor_settings set;
	char *error = NULL;
	memset(&set, 0, sizeof(set));
	set.dir = n->dir;
	n->db = NULL;
	if (stor_open(&set, &n->db, &error) < 0) {
		fprintf(stderr, "stor_open: %s\n", error);
		free(error);
	}
	CU_ASSERT_PTR_NOT_NULL_FATAL(n->db);
}

static void node_open(struct node *n, uint32_t sid)
{
	n->dir = test_mkdtemp();
	n->sid = sid;
	node_open_dir(n);
}

static void node_close(struct node *n)
{
	stor_close(&n->db);
	test_rmtree(n->dir);
	free(n->dir);
	n->dir = NULL;
}

static void three_nodes_close(struct node *a, struct node *b, struct node *c)
{
	node_close(a);
	node_close(b);
	node_close(c);
}

static struct guid mk_mailbox(struct node *n, const char *name)
{
	struct stor_mailbox_create req;
	struct stor_mailbox mb;
	const char *error = NULL;
	memset(&req, 0, sizeof(req));
	req.user = USER;
	req.name = name;
	int r = stor_mailbox_create(n->db, &req, &mb, &error);
	if (r < 0)
		fprintf(stderr, "create %s: %s\n", name, error);
	CU_ASSERT_EQUAL_FATAL(r, 0);
	struct guid g = mb.guid;
	stor_mailbox_free(&mb);
	return g;
}

/* Creates the same mailbox (same GUID and UIDVALIDITY) on both nodes, as a
 * replicated CREATE would. */
static struct guid mk_shared_mailbox(struct node *a, struct node *b, const char *name)
{
	struct guid g = mk_mailbox(a, name);
	struct stor_mailbox mb;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(a->db, &g, &mb, &error), 1);
	struct stor_mailbox_create req = {
		.user = USER, .name = name, .guid = &g, .uidvalidity = mb.uidvalidity,
	};
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(b->db, &req, NULL, &error), 0);
	stor_mailbox_free(&mb);
	return g;
}

static uint32_t append(struct node *n, const struct guid *mb, const char *text, uint32_t flags,
		       struct guid *guid_r)
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
	req.text = text;
	req.text_len = strlen(text);
	int r = stor_msg_append(n->db, mb, &req, &uid, NULL, &error);
	if (r < 0)
		fprintf(stderr, "append: %s\n", error);
	CU_ASSERT_EQUAL_FATAL(r, 0);
	if (guid_r != NULL)
		*guid_r = g;
	return uid;
}

static void set_flags(struct node *n, const struct guid *mb, uint32_t uid, uint32_t flags)
{
	struct stor_store req;
	const char *error;
	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_REPLACE;
	req.flags = flags;
	CU_ASSERT_EQUAL_FATAL(stor_msg_store(n->db, mb, &uid, 1, &req, NULL, NULL, &error), 0);
}

static void store_kw(struct node *n, const struct guid *mb, uint32_t uid, enum stor_flag_op op,
		     uint32_t flags, const char *kw)
{
	struct stor_store req;
	const char *error;
	const char *kws[1] = { kw };
	memset(&req, 0, sizeof(req));
	req.op = op;
	req.flags = flags;
	req.keywords = kws;
	req.keyword_count = kw != NULL ? 1 : 0;
	CU_ASSERT_EQUAL_FATAL(stor_msg_store(n->db, mb, &uid, 1, &req, NULL, NULL, &error), 0);
}

static void expunge(struct node *n, const struct guid *mb, uint32_t uid)
{
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_msg_expunge(n->db, mb, &uid, 1, 0, NULL, &error), 0);
}

static char *dump(struct node *n)
{
	struct buf out = BUF_INIT;
	const char *error;
	int r = stor_dump_user(n->db, USER, &out, &error);
	if (r < 0)
		fprintf(stderr, "dump: %s\n", error);
	CU_ASSERT_EQUAL(r, 0);
	buf_append_byte(&out, '\0');
	return (char *)out.data;
}

static bool dumps_equal(struct node *a, struct node *b)
{
	char *da = dump(a), *db = dump(b);
	bool eq = strcmp(da, db) == 0;
	if (!eq)
		fprintf(stderr, "\n--- dump of %u:\n%s--- dump of %u:\n%s", a->sid, da, b->sid, db);
	free(da);
	free(db);
	return eq;
}

static void check_mailbox(struct node *n, const struct guid *mb)
{
	const char *error = NULL;
	int r = stor_mailbox_check(n->db, mb, &error);
	if (r < 0)
		fprintf(stderr, "check: %s\n", error);
	CU_ASSERT_EQUAL(r, 0);
}

struct sync_run {
	struct sync_report report;
	unsigned server_examined;
	uint64_t to_server, to_client;
};

/* Every byte both ends sent, when tapping. */
static struct buf *tap_to_server, *tap_to_client;

/* at_sync_end, when set, runs once, as the client sends its first
 * SYNC-END: a write made on the client node (an IMAP session, replication)
 * after the sync read the client's state and before the answer comes. */
struct tap {
	struct sync_transport t;
	const struct sync_transport *inner;
	struct buf *copy;
	void (*at_sync_end)(void *arg);
	void *arg;
	bool fired;
};

static void tap_send(void *ctx, const void *data, size_t len)
{
	struct tap *tp = ctx;
	if (tp->copy != NULL)
		buf_append(tp->copy, data, len);
	if (tp->at_sync_end != NULL && !tp->fired && memmem(data, len, " SYNC-END", 9) != NULL) {
		tp->fired = true;
		tp->at_sync_end(tp->arg);
	}
	tp->inner->send(tp->inner->ctx, data, len);
}

/* Syncs client c against server s; asserts it finishes (and that
 * at_sync_end, if any, ran).  old_peer: both ends behave as toward a
 * protocol 1.0 peer (no rename stamps). */
static struct sync_run run_sync_at(struct node *c, struct node *s, bool full, uint32_t seed,
				   bool old_peer, void (*at_sync_end)(void *), void *arg)
{
	struct sync_run out;
	struct sync_settings set = {
		.peer_sid = s->sid, .user = USER, .full = full, .step_budget = 7,
		.no_rename_stamps = old_peer,
	};
	struct sync_pipe *p = sync_pipe_create(seed, seed % 3 == 0 ? 0 : 1 + seed % 97);
	struct tap tc = { .t = { tap_send, &tc }, .inner = sync_pipe_client_transport(p),
			  .copy = tap_to_server, .at_sync_end = at_sync_end, .arg = arg };
	struct tap ts = { .t = { tap_send, &ts }, .inner = sync_pipe_server_transport(p),
			  .copy = tap_to_client };
	struct sync_client *cl = sync_client_create(c->db, &set, &tc.t);
	struct sync_server *sv = sync_server_create(s->db, c->sid, &ts.t);
	sync_server_set_no_rename_stamps(sv, old_peer);
	/* Small steps: every merge stage and FETCH runs across several. */
	sync_server_set_budget(sv, 1 + seed % 5);
	enum sync_step_result r = sync_pipe_run(p, cl, sv, 1000000);
	if (r != SYNC_STEP_DONE)
		fprintf(stderr, "sync failed: %s / %s\n",
			sync_client_error(cl) ? sync_client_error(cl) : "-",
			sync_server_error(sv) ? sync_server_error(sv) : "-");
	CU_ASSERT_EQUAL(r, SYNC_STEP_DONE);
	if (at_sync_end != NULL)
		CU_ASSERT(tc.fired);
	out.report = *sync_client_report(cl);
	out.server_examined = sync_server_messages_examined(sv);
	sync_pipe_bytes(p, &out.to_server, &out.to_client);
	sync_client_destroy(&cl);
	sync_server_destroy(&sv);
	sync_pipe_destroy(&p);
	CU_ASSERT_PTR_NULL(cl);
	return out;
}

static struct sync_run run_sync_as(struct node *c, struct node *s, bool full, uint32_t seed,
				   bool old_peer)
{
	return run_sync_at(c, s, full, seed, old_peer, NULL, NULL);
}

static struct sync_run run_sync(struct node *c, struct node *s, bool full, uint32_t seed)
{
	return run_sync_as(c, s, full, seed, false);
}

/* Number of messages in mailbox name, and asserts no GUID appears twice. */
static size_t count_unique(struct node *n, const char *name)
{
	struct stor_mailbox mb;
	stor_msg_list msgs;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get(n->db, USER, name, &mb, &error), 1);
	CU_ASSERT_EQUAL_FATAL(stor_msg_list_range(n->db, &mb.guid, 1, UINT32_MAX, &msgs, &error), 0);
	for (size_t i = 0; i < msgs.count; i++) {
		for (size_t j = i + 1; j < msgs.count; j++)
			CU_ASSERT(guid_cmp(&msgs.items[i].guid, &msgs.items[j].guid) != 0);
	}
	size_t count = msgs.count;
	stor_msg_list_free(&msgs);
	stor_mailbox_free(&mb);
	return count;
}

static bool has_guid(struct node *n, const struct guid *mb, const struct guid *g,
		     uint32_t *uid_r)
{
	const char *error;
	uint32_t uid = 0;
	int r = stor_msg_find_guid(n->db, mb, g, &uid, &error);
	CU_ASSERT(r >= 0);
	if (uid_r != NULL)
		*uid_r = uid;
	return r > 0;
}

static struct stor_mailbox get_mailbox(struct node *n, const char *name)
{
	struct stor_mailbox mb;
	const char *error;
	memset(&mb, 0, sizeof(mb));
	CU_ASSERT_EQUAL(stor_mailbox_get(n->db, USER, name, &mb, &error), 1);
	return mb;
}

/* Asserts both copies give every message the same modseq, and have the
 * same HIGHESTMODSEQ. */
static void check_modseqs_equal(struct node *a, struct node *b, const struct guid *mb)
{
	stor_msg_list la, lb;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_msg_list_range(a->db, mb, 1, UINT32_MAX, &la, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_list_range(b->db, mb, 1, UINT32_MAX, &lb, &error), 0);
	CU_ASSERT_EQUAL(la.count, lb.count);
	for (size_t i = 0; i < la.count && i < lb.count; i++) {
		CU_ASSERT_EQUAL(la.items[i].uid, lb.items[i].uid);
		CU_ASSERT_EQUAL(la.items[i].modseq, lb.items[i].modseq);
	}
	stor_msg_list_free(&la);
	stor_msg_list_free(&lb);
	struct stor_mailbox xa, xb;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(a->db, mb, &xa, &error), 1);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(b->db, mb, &xb, &error), 1);
	CU_ASSERT_EQUAL(xa.highestmodseq, xb.highestmodseq);
	stor_mailbox_free(&xa);
	stor_mailbox_free(&xb);
}

/* ---- Tests ---- */

static void test_sync_empty_to_full_copies_everything(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid inbox = mk_mailbox(&a, "INBOX");
	struct guid sent = mk_mailbox(&a, "Sent");
	for (int i = 0; i < 20; i++) {
		char text[64];
		snprintf(text, sizeof(text), "Subject: %d\r\n\r\nbody %d\r\n", i, i);
		append(&a, i % 3 == 0 ? &sent : &inbox, text, i % 2 ? STOR_FLAG_SEEN : 0, NULL);
	}
	const char *error;
	CU_ASSERT_EQUAL(stor_subscribe(a.db, USER, "INBOX", true, &error), 0);
	struct sync_run r = run_sync(&a, &b, false, 11);
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(r.report.mailboxes_created, 2);
	CU_ASSERT_EQUAL(r.report.messages_sent, 20);
	CU_ASSERT_EQUAL(r.report.texts_sent, 20);
	CU_ASSERT_EQUAL(count_unique(&b, "INBOX"), 13);
	CU_ASSERT_EQUAL(count_unique(&b, "Sent"), 7);
	check_mailbox(&b, &inbox);
	check_mailbox(&b, &sent);
	/* The other way round, into an empty third store, through FETCH. */
	struct node c;
	node_open(&c, 3);
	r = run_sync(&c, &a, false, 12);
	CU_ASSERT(dumps_equal(&a, &c));
	CU_ASSERT_EQUAL(r.report.messages_received, 20);
	CU_ASSERT_EQUAL(r.report.texts_fetched, 20);
	node_close(&c);
	node_close(&a);
	node_close(&b);
}

static void test_sync_both_append_renumbers_conflicts(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	for (int i = 0; i < 3; i++)
		append(&a, &mb, "common\r\n", 0, NULL);
	run_sync(&a, &b, false, 21);
	CU_ASSERT(dumps_equal(&a, &b));
	struct stor_mailbox before = get_mailbox(&a, "INBOX");
	/* Apart: both append at UIDs 4, 5, ... */
	struct guid ga[3], gb[2];
	for (int i = 0; i < 3; i++)
		append(&a, &mb, "from a\r\n", 0, &ga[i]);
	for (int i = 0; i < 2; i++)
		append(&b, &mb, "from b\r\n", STOR_FLAG_FLAGGED, &gb[i]);
	struct sync_run r = run_sync(&a, &b, false, 22);
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(count_unique(&a, "INBOX"), 8);
	/* UIDs 4 and 5 were used on both sides for different messages: all four
	 * moved; A's 6 keeps its UID. */
	CU_ASSERT_EQUAL(r.report.messages_renumbered, 2);
	uint32_t uid;
	for (int i = 0; i < 2; i++) {
		CU_ASSERT(has_guid(&a, &mb, &gb[i], &uid));
		CU_ASSERT(uid >= 7);
		CU_ASSERT(has_guid(&b, &mb, &ga[i], &uid));
		CU_ASSERT(uid >= 7);
	}
	CU_ASSERT(has_guid(&b, &mb, &ga[2], &uid));
	CU_ASSERT_EQUAL(uid, 6);
	struct stor_mailbox after_a = get_mailbox(&a, "INBOX"), after_b = get_mailbox(&b, "INBOX");
	CU_ASSERT_EQUAL(after_a.uidvalidity, before.uidvalidity);
	CU_ASSERT_EQUAL(after_b.uidvalidity, before.uidvalidity);
	CU_ASSERT_EQUAL(after_a.highestmodseq, after_b.highestmodseq);
	CU_ASSERT_EQUAL(memcmp(after_a.digest, after_b.digest, 16), 0);
	/* The old UIDs vanished with tombstones (QRESYNC sees them go). */
	stor_msg_list msgs;
	stor_tombstone_list tombs;
	const char *error;
	CU_ASSERT_EQUAL(stor_changes_since(b.db, &mb, before.highestmodseq, &msgs, &tombs, &error), 0);
	bool t4 = false;
	for (size_t i = 0; i < tombs.count; i++)
		t4 = t4 || tombs.items[i].uid == 4;
	CU_ASSERT(t4);
	stor_msg_list_free(&msgs);
	ARRAY_FREE(&tombs);
	check_mailbox(&a, &mb);
	check_mailbox(&b, &mb);
	stor_mailbox_free(&before);
	stor_mailbox_free(&after_a);
	stor_mailbox_free(&after_b);
	node_close(&a);
	node_close(&b);
}

/* SPEC.md 10.3's worked example, scaled down: common UIDs 1..3; the
 * server then saved 4 and 5; the client saved 4..8 and expunged 5..7. */
static void test_sync_spec_example_uids(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	for (int i = 0; i < 3; i++)
		append(&a, &mb, "common\r\n", 0, NULL);
	run_sync(&a, &b, false, 23);
	struct guid s4, s5, c4, c8;
	CU_ASSERT_EQUAL(append(&b, &mb, "server 4\r\n", 0, &s4), 4);
	CU_ASSERT_EQUAL(append(&b, &mb, "server 5\r\n", 0, &s5), 5);
	CU_ASSERT_EQUAL(append(&a, &mb, "client 4\r\n", 0, &c4), 4);
	for (uint32_t u = 5; u <= 7; u++)
		CU_ASSERT_EQUAL(append(&a, &mb, "gone\r\n", 0, NULL), u);
	CU_ASSERT_EQUAL(append(&a, &mb, "client 8\r\n", STOR_FLAG_SEEN, &c8), 8);
	for (uint32_t u = 5; u <= 7; u++)
		expunge(&a, &mb, u);
	run_sync(&a, &b, false, 24);
	CU_ASSERT(dumps_equal(&a, &b));
	uint32_t uid;
	/* 4 was used on both sides: the server's moves to 9, the client's to
	 * 10 (UIDFIX).  The server's 5 meets the client's tombstone of another
	 * message: the client places it at 11 and tells the server (UIDFIX in
	 * a second sync).  The client's 8 keeps its UID. */
	CU_ASSERT(has_guid(&a, &mb, &s4, &uid));
	CU_ASSERT_EQUAL(uid, 9);
	CU_ASSERT(has_guid(&b, &mb, &c4, &uid));
	CU_ASSERT_EQUAL(uid, 10);
	CU_ASSERT(has_guid(&a, &mb, &s5, &uid));
	CU_ASSERT_EQUAL(uid, 11);
	CU_ASSERT(has_guid(&b, &mb, &s5, &uid));
	CU_ASSERT_EQUAL(uid, 11);
	CU_ASSERT(has_guid(&b, &mb, &c8, &uid));
	CU_ASSERT_EQUAL(uid, 8);
	struct stor_mailbox x = get_mailbox(&b, "INBOX");
	CU_ASSERT_EQUAL(x.uidnext, 12);
	stor_mailbox_free(&x);
	node_close(&a);
	node_close(&b);
}

/* No common history (first sync, a full compare): UID 1 was used and
 * expunged on the client, and names another message on the server. */
static void test_sync_first_sync_moves_message_at_client_tombstone(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	struct guid y;
	append(&a, &mb, "x\r\n", 0, NULL);
	expunge(&a, &mb, 1);
	append(&b, &mb, "y\r\n", 0, &y);
	struct sync_run r = run_sync(&a, &b, false, 25);
	CU_ASSERT(dumps_equal(&a, &b));
	uint32_t ua, ub;
	CU_ASSERT(has_guid(&a, &mb, &y, &ua));
	CU_ASSERT(has_guid(&b, &mb, &y, &ub));
	CU_ASSERT_EQUAL(ua, ub);
	CU_ASSERT(ua > 1);
	CU_ASSERT_EQUAL(r.report.messages_renumbered, 1);
	check_mailbox(&a, &mb);
	check_mailbox(&b, &mb);
	node_close(&a);
	node_close(&b);
}

static void test_sync_flag_changes_merge_per_flag(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	uint32_t u1 = append(&a, &mb, "one\r\n", 0, NULL);
	uint32_t u2 = append(&a, &mb, "two\r\n", 0, NULL);
	run_sync(&a, &b, false, 31);
	/* Message 1: A sets \Seen, B \Flagged then \Answered: different
	 * flags, all kept.  Message 2: A sets \Seen, then \Draft, then only
	 * \Deleted (A changed \Seen and \Draft back), B sets \Answered. */
	/* +FLAGS and -FLAGS: a replacing STORE would name (and so change,
	 * SPEC.md 10.2) every system flag. */
	store_kw(&a, &mb, u1, STOR_FLAGS_ADD, STOR_FLAG_SEEN, NULL);
	store_kw(&b, &mb, u1, STOR_FLAGS_ADD, STOR_FLAG_FLAGGED, NULL);
	store_kw(&b, &mb, u1, STOR_FLAGS_ADD, STOR_FLAG_ANSWERED, NULL);
	store_kw(&a, &mb, u2, STOR_FLAGS_ADD, STOR_FLAG_SEEN, NULL);
	store_kw(&a, &mb, u2, STOR_FLAGS_REMOVE, STOR_FLAG_SEEN, NULL);
	store_kw(&a, &mb, u2, STOR_FLAGS_ADD, STOR_FLAG_DRAFT, NULL);
	store_kw(&a, &mb, u2, STOR_FLAGS_REMOVE, STOR_FLAG_DRAFT, NULL);
	store_kw(&a, &mb, u2, STOR_FLAGS_ADD, STOR_FLAG_DELETED, NULL);
	store_kw(&b, &mb, u2, STOR_FLAGS_ADD, STOR_FLAG_ANSWERED, NULL);
	run_sync(&a, &b, false, 32);
	CU_ASSERT(dumps_equal(&a, &b));
	struct stor_msg m;
	const char *error;
	CU_ASSERT_EQUAL(stor_msg_get(a.db, &mb, u1, &m, &error), 1);
	CU_ASSERT_EQUAL(m.flags, STOR_FLAG_SEEN | STOR_FLAG_FLAGGED | STOR_FLAG_ANSWERED);
	uint64_t ma = m.modseq;
	stor_msg_free(&m);
	CU_ASSERT_EQUAL(stor_msg_get(b.db, &mb, u1, &m, &error), 1);
	CU_ASSERT_EQUAL(m.modseq, ma);
	stor_msg_free(&m);
	CU_ASSERT_EQUAL(stor_msg_get(b.db, &mb, u2, &m, &error), 1);
	CU_ASSERT_EQUAL(m.flags, STOR_FLAG_DELETED | STOR_FLAG_ANSWERED);
	stor_msg_free(&m);
	check_modseqs_equal(&a, &b, &mb);
	struct stor_mailbox xa = get_mailbox(&a, "INBOX"), xb = get_mailbox(&b, "INBOX");
	CU_ASSERT_EQUAL(xa.highestmodseq, xb.highestmodseq);
	stor_mailbox_free(&xa);
	stor_mailbox_free(&xb);
	node_close(&a);
	node_close(&b);
}

static void test_sync_expunge_beats_flag_change(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	uint32_t u1 = append(&a, &mb, "one\r\n", 0, NULL);
	uint32_t u2 = append(&a, &mb, "two\r\n", 0, NULL);
	append(&a, &mb, "three\r\n", 0, NULL);
	run_sync(&a, &b, false, 41);
	expunge(&a, &mb, u1);
	set_flags(&b, &mb, u1, STOR_FLAG_SEEN);
	expunge(&b, &mb, u2);
	set_flags(&a, &mb, u2, STOR_FLAG_FLAGGED);
	run_sync(&a, &b, false, 42);
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(count_unique(&a, "INBOX"), 1);
	CU_ASSERT_EQUAL(count_unique(&b, "INBOX"), 1);
	check_mailbox(&a, &mb);
	check_mailbox(&b, &mb);
	node_close(&a);
	node_close(&b);
}

static void test_sync_same_name_different_guids_keeps_both(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid ga = mk_mailbox(&a, "Projects");
	struct guid gb = mk_mailbox(&b, "Projects");
	append(&a, &ga, "a\r\n", 0, NULL);
	append(&b, &gb, "b\r\n", 0, NULL);
	struct sync_run r = run_sync(&a, &b, false, 51);
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(r.report.mailboxes_renamed, 1);
	/* The lower GUID keeps the name. */
	const struct guid *low = guid_cmp(&ga, &gb) < 0 ? &ga : &gb;
	struct stor_mailbox m = get_mailbox(&a, "Projects");
	CU_ASSERT_EQUAL(guid_cmp(&m.guid, low), 0);
	stor_mailbox_free(&m);
	stor_mailbox_array list;
	const char *error;
	CU_ASSERT_EQUAL(stor_mailbox_list(b.db, USER, &list, &error), 0);
	CU_ASSERT_EQUAL(list.count, 2);
	stor_mailbox_list_free(&list);
	node_close(&a);
	node_close(&b);
}

static void test_sync_rename_on_either_side_follows(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid g1 = mk_mailbox(&a, "Old");
	struct guid g2 = mk_mailbox(&a, "Other");
	append(&a, &g1, "x\r\n", 0, NULL);
	run_sync(&a, &b, false, 61);
	const char *error;
	CU_ASSERT_EQUAL(stor_mailbox_rename(a.db, &g1, "New", &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_rename(b.db, &g2, "Other2", &error), 0);
	struct sync_run r = run_sync(&a, &b, false, 62);
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(r.report.mailboxes_renamed, 2);
	CU_ASSERT_EQUAL(r.report.messages_sent + r.report.messages_received, 0);
	struct stor_mailbox m = get_mailbox(&b, "New");
	CU_ASSERT_EQUAL(guid_cmp(&m.guid, &g1), 0);
	stor_mailbox_free(&m);
	m = get_mailbox(&a, "Other2");
	CU_ASSERT_EQUAL(guid_cmp(&m.guid, &g2), 0);
	stor_mailbox_free(&m);
	node_close(&a);
	node_close(&b);
}

/* A mailbox that reached the server by another way (another peer, a
 * bundle) is not in this pair's last common list; when the client renamed
 * it since, the server's name is the one the client left and must not win
 * (the fault campaign's acknowledged RENAME undone, seed 7701). */
static void test_sync_rename_after_a_copy_went_elsewhere_is_kept(void)
{
	struct node a, b, c;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	node_open(&c, SID_C);
	struct guid g = mk_mailbox(&a, "S2");
	append(&a, &g, "x\r\n", 0, NULL);
	run_sync(&b, &a, false, 66);
	const char *error;
	CU_ASSERT_EQUAL(stor_mailbox_rename(a.db, &g, "S3", &error), 0);
	run_sync(&c, &b, false, 67);
	run_sync(&a, &c, false, 68);
	struct stor_mailbox m = get_mailbox(&a, "S3");
	CU_ASSERT_EQUAL(guid_cmp(&m.guid, &g), 0);
	stor_mailbox_free(&m);
	m = get_mailbox(&c, "S3");
	CU_ASSERT_EQUAL(guid_cmp(&m.guid, &g), 0);
	stor_mailbox_free(&m);
	CU_ASSERT(dumps_equal(&a, &c));
	three_nodes_close(&a, &b, &c);
}

/* A rename that reached the server by live replication leaves this pair's
 * last common list older than both names; renames made here after it, the
 * server not told (paused, cut, its store failed), must win the next sync
 * either way round: the server's name is one this side renamed the mailbox
 * away from (the fault campaign's acknowledged RENAMEs undone, seed 9403:
 * scratch-s2-4 back to scratch-s2-2 on every node). */
static void test_sync_rename_after_a_replicated_rename_is_kept(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid g = mk_mailbox(&a, "S1");
	append(&a, &g, "x\r\n", 0, NULL);
	run_sync(&a, &b, false, 165);
	run_sync(&b, &a, false, 166);
	const char *error;
	/* S1 -> S2 everywhere by live replication (no sync), then S2 -> S3
	 * -> S4 here only. */
	CU_ASSERT_EQUAL(stor_mailbox_rename(a.db, &g, "S2", &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_rename(b.db, &g, "S2", &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_rename(a.db, &g, "S3", &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_rename(a.db, &g, "S4", &error), 0);
	struct sync_run r = run_sync(&a, &b, false, 167);
	CU_ASSERT_EQUAL(r.report.mailboxes_renamed, 1);
	struct stor_mailbox m = get_mailbox(&b, "S4");
	CU_ASSERT_EQUAL(guid_cmp(&m.guid, &g), 0);
	stor_mailbox_free(&m);
	m = get_mailbox(&a, "S4");
	CU_ASSERT_EQUAL(guid_cmp(&m.guid, &g), 0);
	stor_mailbox_free(&m);
	CU_ASSERT(dumps_equal(&a, &b));

	/* The other way round: the side that lags is the client. */
	CU_ASSERT_EQUAL(stor_mailbox_rename(a.db, &g, "S5", &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_rename(b.db, &g, "S5", &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_rename(a.db, &g, "S6", &error), 0);
	run_sync(&b, &a, false, 168);
	m = get_mailbox(&b, "S6");
	CU_ASSERT_EQUAL(guid_cmp(&m.guid, &g), 0);
	stor_mailbox_free(&m);
	m = get_mailbox(&a, "S6");
	CU_ASSERT_EQUAL(guid_cmp(&m.guid, &g), 0);
	stor_mailbox_free(&m);
	CU_ASSERT(dumps_equal(&a, &b));
	node_close(&a);
	node_close(&b);
}

/* A user's RENAME on node n at now_ms, as repl-local makes it: a new
 * stamp above the mailbox's. */
static uint64_t user_rename(struct node *n, const struct guid *g, const char *name,
			    uint64_t now_ms)
{
	const char *error;
	uint64_t st = 0;
	CU_ASSERT_EQUAL(stor_mailbox_rename_stamp(n->db, g, &st, &error), 0);
	st = stor_rename_stamp_next(st, now_ms, n->sid);
	CU_ASSERT_EQUAL(stor_mailbox_rename_stamped(n->db, g, name, st, &error), 0);
	return st;
}

static void assert_name(struct node *n, const char *name, const struct guid *g)
{
	struct stor_mailbox m;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get(n->db, USER, name, &m, &error), 1);
	CU_ASSERT_EQUAL(guid_cmp(&m.guid, g), 0);
	stor_mailbox_free(&m);
}

/* A user's RENAME (or DELETE) made here while a sync ran, after its list
 * merge (the fault campaign's `mailbox-ops`, seed 9721: node 1 renamed
 * scratch-s1-2 to -3 0.13 s after a heal, during the resync the heal
 * started, and scratch-s1-2 came back).  The server never got it (its live
 * RENAME lost with the link, or refused): the pair's last common list must
 * not record the new name as one both hold, or the next merge takes the
 * server's old name for a later rename of the server's and undoes the
 * user's.  Then the next sync carries the change, whichever side is its
 * client. */
static void change_during_a_sync_is_kept(bool delete, bool next_client_a, uint32_t seed)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid g = mk_mailbox(&a, "S1");
	struct guid in = mk_mailbox(&a, "INBOX");
	append(&a, &in, "Subject: m\r\n\r\nm\r\n", 0, NULL);
	run_sync(&a, &b, false, seed);
	run_sync(&b, &a, false, seed + 1);
	/* Something for the per-mailbox syncs to do after the merge. */
	append(&b, &in, "Subject: n\r\n\r\nn\r\n", 0, NULL);

	struct buf to_server = BUF_INIT;
	struct sync_settings set = { .peer_sid = b.sid, .user = USER, .step_budget = 7 };
	struct sync_pipe *p = sync_pipe_create(seed + 2, 0);
	struct tap tc = { .t = { tap_send, &tc }, .inner = sync_pipe_client_transport(p),
			  .copy = &to_server };
	struct sync_client *cl = sync_client_create(a.db, &set, &tc.t);
	struct sync_server *sv = sync_server_create(b.db, a.sid, sync_pipe_server_transport(p));
	enum sync_step_result r = SYNC_STEP_AGAIN;
	bool changed = false;
	const char *error;
	for (int i = 0; i < 100000 && r != SYNC_STEP_DONE && r != SYNC_STEP_ERROR; i++) {
		r = sync_pipe_run(p, cl, sv, 1);
		/* The per-mailbox syncs have begun: the merge is done. */
		if (!changed && to_server.len > 0 &&
		    memmem(to_server.data, to_server.len, " MBOX ", 6) != NULL) {
			if (delete) {
				CU_ASSERT_EQUAL(stor_mailbox_delete(a.db, &g, &error), 0);
			} else {
				user_rename(&a, &g, "S2", 1700000000000ull);
			}
			changed = true;
		}
	}
	CU_ASSERT_EQUAL(r, SYNC_STEP_DONE);
	CU_ASSERT(changed);
	sync_client_destroy(&cl);
	sync_server_destroy(&sv);
	sync_pipe_destroy(&p);
	buf_free(&to_server);
	assert_name(&b, "S1", &g);

	if (next_client_a)
		run_sync(&a, &b, false, seed + 3);
	else
		run_sync(&b, &a, false, seed + 3);
	struct stor_mailbox got;
	for (int k = 0; k < 2; k++) {
		struct node *n = k == 0 ? &a : &b;
		CU_ASSERT_EQUAL(stor_mailbox_get(n->db, USER, "S1", &got, &error), 0);
		if (!delete)
			assert_name(n, "S2", &g);
	}
	CU_ASSERT(dumps_equal(&a, &b));
	node_close(&a);
	node_close(&b);
}

static void test_sync_rename_during_a_sync_is_kept(void)
{
	change_during_a_sync_is_kept(false, true, 181);
	change_during_a_sync_is_kept(false, false, 185);
}

static void test_sync_delete_during_a_sync_is_kept(void)
{
	change_during_a_sync_is_kept(true, true, 189);
	change_during_a_sync_is_kept(true, false, 193);
}

/* Two renames neither side of a merge made (the fault campaign's
 * `mailbox-ops`, seed 9403, scratch-s2-3 back): C took S2 -> S3 from B by
 * live replication, then B renamed S3 -> S4, which C never got; A jumped
 * from S2 to S4 by a sync with B and never held S3.  When A and C merge,
 * their common list's S2 is older than both names and neither is among the
 * other side's old names: names alone cannot order them, the rename stamps
 * do (SPEC.md 10.5), and B's later S4 wins either way round. */
static void test_sync_third_node_renames_ordered_by_stamp(void)
{
	for (int client_lags = 0; client_lags < 2; client_lags++) {
		struct node a, b, c;
		node_open(&a, SID_A);
		node_open(&b, SID_B);
		node_open(&c, SID_C);
		struct guid g = mk_mailbox(&b, "S2");
		append(&b, &g, "x\r\n", 0, NULL);
		run_sync(&a, &b, false, 171);
		run_sync(&c, &b, false, 172);
		run_sync(&a, &c, false, 173);
		run_sync(&c, &a, false, 174);
		const char *error;
		uint64_t t3 = user_rename(&b, &g, "S3", 1800000000000ull);
		/* The live RENAME carries B's stamp (RSTAMP), copied on C. */
		CU_ASSERT_EQUAL(stor_mailbox_rename_stamped(c.db, &g, "S3", t3, &error), 0);
		/* Made later on B, by the clock or not (a stamp is above the
		 * one it replaces whatever the clock says). */
		uint64_t t4 = user_rename(&b, &g, "S4", 1700000000000ull);
		CU_ASSERT(t4 > t3);
		run_sync(&a, &b, false, 175);
		assert_name(&a, "S4", &g);
		uint64_t st = 0;
		CU_ASSERT_EQUAL(stor_mailbox_rename_stamp(a.db, &g, &st, &error), 0);
		CU_ASSERT_EQUAL(st, t4); /* copied, not renewed */
		if (client_lags)
			run_sync(&c, &a, false, 176);
		else
			run_sync(&a, &c, false, 177);
		assert_name(&a, "S4", &g);
		assert_name(&c, "S4", &g);
		CU_ASSERT(dumps_equal(&a, &c));
		run_sync(&b, &a, false, 178);
		assert_name(&b, "S4", &g);
		CU_ASSERT(dumps_equal(&a, &b));
		node_close(&a);
		node_close(&b);
		node_close(&c);
	}
}

/* Toward a protocol 1.0 peer no stamp travels (an older build would refuse
 * RSTAMP): the merge judges names alone, as before (SPEC.md 10.5). */
static void test_sync_rename_stamps_not_sent_to_a_1_0_peer(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid g = mk_mailbox(&a, "S1");
	run_sync(&a, &b, false, 181);
	user_rename(&a, &g, "S2", 1800000000000ull);
	run_sync_as(&a, &b, false, 182, true);
	assert_name(&b, "S2", &g);
	const char *error;
	uint64_t st = 1;
	/* The server's stamp stayed: the RENAME carried none. */
	CU_ASSERT_EQUAL(stor_mailbox_rename_stamp(b.db, &g, &st, &error), 0);
	CU_ASSERT_EQUAL(st, 0);
	user_rename(&a, &g, "S3", 1800000000001ull);
	run_sync(&a, &b, false, 183);
	CU_ASSERT_EQUAL(stor_mailbox_rename_stamp(b.db, &g, &st, &error), 0);
	CU_ASSERT(st != 0);
	node_close(&a);
	node_close(&b);
}

static void test_sync_rename_onto_a_name_created_on_the_other_side(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid x = mk_mailbox(&a, "X");
	struct guid z = mk_mailbox(&a, "Z");
	run_sync(&a, &b, false, 63);
	const char *error;
	/* A renames X to Y while B creates a new Y; B renames Z to W while A
	 * creates a new W.  Nothing is lost, both sides agree. */
	CU_ASSERT_EQUAL(stor_mailbox_rename(a.db, &x, "Y", &error), 0);
	struct guid y = mk_mailbox(&b, "Y");
	append(&b, &y, "in the new Y\r\n", 0, NULL);
	CU_ASSERT_EQUAL(stor_mailbox_rename(b.db, &z, "W", &error), 0);
	struct guid w = mk_mailbox(&a, "W");
	append(&a, &w, "in the new W\r\n", 0, NULL);
	run_sync(&a, &b, false, 64);
	CU_ASSERT(dumps_equal(&a, &b));
	stor_mailbox_array list;
	CU_ASSERT_EQUAL(stor_mailbox_list(a.db, USER, &list, &error), 0);
	CU_ASSERT_EQUAL(list.count, 4);
	stor_mailbox_list_free(&list);
	struct sync_run r = run_sync(&a, &b, false, 65);
	CU_ASSERT_EQUAL(r.report.mailboxes_renamed + r.report.mailboxes_created, 0);
	node_close(&a);
	node_close(&b);
}

static void test_sync_delete_on_either_side_follows(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid g1 = mk_mailbox(&a, "Trash");
	struct guid g2 = mk_mailbox(&a, "Junk");
	mk_mailbox(&a, "INBOX");
	append(&a, &g1, "x\r\n", 0, NULL);
	append(&a, &g2, "y\r\n", 0, NULL);
	run_sync(&a, &b, false, 71);
	const char *error;
	CU_ASSERT_EQUAL(stor_mailbox_delete(a.db, &g1, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_delete(b.db, &g2, &error), 0);
	struct sync_run r = run_sync(&a, &b, false, 72);
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(r.report.mailboxes_deleted, 2);
	stor_mailbox_array list;
	CU_ASSERT_EQUAL(stor_mailbox_list(b.db, USER, &list, &error), 0);
	CU_ASSERT_EQUAL(list.count, 1);
	stor_mailbox_list_free(&list);
	node_close(&a);
	node_close(&b);
}

static void test_sync_delete_loses_to_changes_on_the_other_side(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid g1 = mk_mailbox(&a, "Box");
	append(&a, &g1, "x\r\n", 0, NULL);
	run_sync(&a, &b, false, 73);
	const char *error;
	CU_ASSERT_EQUAL(stor_mailbox_delete(a.db, &g1, &error), 0);
	append(&b, &g1, "new mail\r\n", 0, NULL);
	run_sync(&a, &b, false, 74);
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(count_unique(&a, "Box"), 2);
	node_close(&a);
	node_close(&b);
}

static void test_sync_subscriptions_merge_three_way(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	const char *error;
	stor_subscribe(a.db, USER, "One", true, &error);
	stor_subscribe(a.db, USER, "Two", true, &error);
	run_sync(&a, &b, false, 81);
	CU_ASSERT(dumps_equal(&a, &b));
	/* A drops One, B drops Two and adds Three. */
	CU_ASSERT_EQUAL(stor_subscribe(a.db, USER, "One", false, &error), 0);
	CU_ASSERT_EQUAL(stor_subscribe(b.db, USER, "Two", false, &error), 0);
	CU_ASSERT_EQUAL(stor_subscribe(b.db, USER, "Three", true, &error), 0);
	struct sync_run r = run_sync(&a, &b, false, 82);
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(r.report.subscriptions_changed, 3);
	stor_string_list subs;
	CU_ASSERT_EQUAL(stor_subscriptions(a.db, USER, &subs, &error), 0);
	CU_ASSERT_EQUAL(subs.count, 1);
	if (subs.count == 1)
		CU_ASSERT_STRING_EQUAL(subs.items[0], "Three");
	stor_string_list_free(&subs);
	node_close(&a);
	node_close(&b);
}

/* Whether db holds (mailbox, identifier) with exactly rights and time. */
static bool acl_is(struct stor_db *db, const struct guid *mb, const char *id, const char *rights,
		   int64_t t)
{
	stor_acl_list acl;
	const char *error;
	bool found = false;
	if (stor_acl_get(db, mb, &acl, &error) < 0)
		return false;
	for (size_t i = 0; i < acl.count; i++)
		if (strcmp(acl.items[i].identifier, id) == 0)
			found = strcmp(acl.items[i].rights, rights) == 0 && acl.items[i].time_ms == t;
	stor_acl_list_free(&acl);
	return found;
}

static size_t shared_with(struct stor_db *db, const char *grantee)
{
	stor_share_list l = ARRAY_INIT;
	const char *error;
	CU_ASSERT_EQUAL(stor_acl_shared_with(db, grantee, &l, &error), 0);
	size_t n = l.count;
	stor_share_list_free(&l);
	return n;
}

/* ACL records (SPEC.md 7.6) travel both ways in a resync and the newer of
 * each pair wins on both sides, tombstones (DELETEACL) included, with the
 * sharing index in step. */
static void test_sync_acl_records_merge_newest_wins(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	const char *error;
	struct guid box = mk_mailbox(&a, "Team");
	struct guid other = mk_mailbox(&a, "Other");
	CU_ASSERT_EQUAL(stor_acl_put(a.db, USER, &box, "bob", "lr", 1000, NULL, &error), 0);
	struct sync_run r = run_sync(&a, &b, false, 91);
	CU_ASSERT(r.report.acls_changed > 0);
	CU_ASSERT(acl_is(b.db, &box, "bob", "lr", 1000));
	CU_ASSERT_EQUAL(shared_with(b.db, "bob"), 1);
	/* A revokes bob later than B widens his rights; B grants carol and
	 * A grants dave on another mailbox. */
	CU_ASSERT_EQUAL(stor_acl_put(a.db, USER, &box, "bob", "", 3000, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_acl_put(b.db, USER, &box, "bob", "lrsw", 2000, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_acl_put(b.db, USER, &box, "carol", "lrs", 2500, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_acl_put(a.db, USER, &other, "-dave", "r", 2600, NULL, &error), 0);
	r = run_sync(&b, &a, false, 92);
	CU_ASSERT(r.report.acls_changed >= 2);
	for (int i = 0; i < 2; i++) {
		struct stor_db *db = i == 0 ? a.db : b.db;
		CU_ASSERT(acl_is(db, &box, "bob", "", 3000));
		CU_ASSERT(acl_is(db, &box, "carol", "lrs", 2500));
		CU_ASSERT(acl_is(db, &other, "-dave", "r", 2600));
		CU_ASSERT_EQUAL(shared_with(db, "bob"), 0);
		CU_ASSERT_EQUAL(shared_with(db, "carol"), 1);
		/* A negative identifier grants nothing: not in the index. */
		CU_ASSERT_EQUAL(shared_with(db, "dave"), 0);
		CU_ASSERT_EQUAL(shared_with(db, "-dave"), 0);
	}
	/* Equal on both sides: nothing to do. */
	r = run_sync(&a, &b, false, 93);
	CU_ASSERT_EQUAL(r.report.acls_changed, 0);
	node_close(&a);
	node_close(&b);
}

static void test_sync_no_change_resync_examines_no_message(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	for (int m = 0; m < 10; m++) {
		char name[16];
		snprintf(name, sizeof(name), "box%d", m);
		struct guid g = mk_mailbox(&a, name);
		for (int i = 0; i < 10; i++)
			append(&a, &g, "text\r\n", 0, NULL);
	}
	run_sync(&a, &b, false, 91);
	struct sync_run r = run_sync(&a, &b, false, 92);
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(r.report.mailboxes_checked, 10);
	CU_ASSERT_EQUAL(r.report.mailboxes_synced, 0);
	CU_ASSERT_EQUAL(r.report.messages_examined, 0);
	CU_ASSERT_EQUAL(r.server_examined, 0);
	/* Only the LIST exchange: one line per mailbox. */
	CU_ASSERT(r.to_server < 100);
	CU_ASSERT(r.to_client < 10 * 200);
	node_close(&a);
	node_close(&b);
}

static void copy_dir(const char *from, const char *to)
{
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' && cp -a '%s' '%s'", to, from, to);
	CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
}

static void test_sync_restored_backup_is_repaired(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	for (int i = 0; i < 5; i++)
		append(&a, &mb, "early\r\n", 0, NULL);
	run_sync(&a, &b, false, 101);
	/* Back up B, let more happen, then restore B from the backup. */
	char *backup = xasprintf("%s.bak", b.dir);
	stor_close(&b.db);
	copy_dir(b.dir, backup);
	node_open_dir(&b);
	for (int i = 0; i < 5; i++)
		append(&a, &mb, "late\r\n", STOR_FLAG_SEEN, NULL);
	expunge(&a, &mb, 1);
	run_sync(&a, &b, false, 102);
	CU_ASSERT(dumps_equal(&a, &b));
	stor_close(&b.db);
	copy_dir(backup, b.dir);
	test_rmtree(backup);
	free(backup);
	node_open_dir(&b);
	CU_ASSERT_EQUAL(count_unique(&b, "INBOX"), 5);
	/* B went back in time: the engine notices and compares every message. */
	struct sync_run r = run_sync(&a, &b, false, 103);
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(r.report.mailboxes_full, 1);
	/* The restored copy still had message 1, which A expunged since: the
	 * expunge wins, the message does not come back. */
	CU_ASSERT_EQUAL(count_unique(&b, "INBOX"), 9);
	CU_ASSERT_EQUAL(count_unique(&a, "INBOX"), 9);
	check_mailbox(&b, &mb);
	node_close(&a);
	node_close(&b);
}

/* A server whose store was wiped (or restored from before a mailbox
 * existed) lacks mailboxes the last common list names, but never deleted
 * them: the client must give them back, not delete its own copies. */
static void test_sync_wiped_server_gets_everything_back(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid g1 = mk_mailbox(&a, "INBOX");
	struct guid g2 = mk_mailbox(&a, "Projects");
	for (int i = 0; i < 3; i++) {
		append(&a, &g1, "inbox mail\r\n", 0, NULL);
		append(&a, &g2, "project mail\r\n", STOR_FLAG_SEEN, NULL);
	}
	const char *error;
	CU_ASSERT_EQUAL(stor_subscribe(a.db, USER, "Projects", true, &error), 0);
	run_sync(&a, &b, false, 111);
	CU_ASSERT(dumps_equal(&a, &b));
	char *before = dump(&a);
	/* B's store is lost and B starts afresh. */
	stor_close(&b.db);
	test_rmtree(b.dir);
	node_open_dir(&b);
	struct sync_run r = run_sync(&a, &b, false, 112);
	CU_ASSERT_EQUAL(r.report.mailboxes_deleted, 0);
	char *after = dump(&a);
	CU_ASSERT_STRING_EQUAL(after, before);
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(count_unique(&b, "Projects"), 3);
	free(before);
	free(after);
	/* A mailbox deleted since on B (a tombstone there) still goes, and so
	 * does a subscription B dropped. */
	CU_ASSERT_EQUAL(stor_subscribe(b.db, USER, "Projects", false, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_delete(b.db, &g2, &error), 0);
	r = run_sync(&a, &b, false, 113);
	CU_ASSERT_EQUAL(r.report.mailboxes_deleted, 1);
	CU_ASSERT_EQUAL(r.report.subscriptions_changed, 1);
	char *d = dump(&a);
	CU_ASSERT_PTR_NULL(strstr(d, "subscribed Projects"));
	free(d);
	CU_ASSERT(dumps_equal(&a, &b));
	struct stor_mailbox mb;
	CU_ASSERT_EQUAL(stor_mailbox_get_by_guid(a.db, &g2, &mb, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_tomb_get(a.db, USER, &g2, NULL, NULL, &error), 1);
	/* Created again with its GUID (a change beat the delete elsewhere):
	 * the tombstone goes. */
	struct stor_mailbox_create req = { .user = USER, .name = "Projects", .guid = &g2 };
	CU_ASSERT_EQUAL(stor_mailbox_create(a.db, &req, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_tomb_get(a.db, USER, &g2, NULL, NULL, &error), 0);
	node_close(&a);
	node_close(&b);
}

/* A mailbox both nodes got by live replication (so it is in no last common
 * list) and one of them then deleted: the sync deletes the other copy
 * (the tombstone says it held nothing newer), unless that copy changed
 * after the delete, which then brings it back on both. */
static void delete_of_a_replicated_mailbox(bool changed_after)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	mk_mailbox(&a, "INBOX");
	run_sync(&a, &b, false, 131);
	struct guid g = mk_shared_mailbox(&a, &b, "Scratch");
	const char *error;
	CU_ASSERT_EQUAL(stor_mailbox_delete(b.db, &g, &error), 0);
	if (changed_after)
		append(&a, &g, "written after the delete\r\n", 0, NULL);
	struct sync_run r = run_sync(&a, &b, false, 132);
	CU_ASSERT(dumps_equal(&a, &b));
	int held = stor_mailbox_get_by_guid(a.db, &g, NULL, &error);
	CU_ASSERT_EQUAL(held, changed_after ? 1 : 0);
	CU_ASSERT_EQUAL(r.report.mailboxes_deleted, changed_after ? 0 : 1);
	node_close(&a);
	node_close(&b);
}

static void test_sync_delete_of_a_replicated_mailbox_wins(void)
{
	delete_of_a_replicated_mailbox(false);
}

static void test_sync_change_after_the_delete_of_a_replicated_mailbox_wins(void)
{
	delete_of_a_replicated_mailbox(true);
}

/* The server restored from a backup taken before a mailbox existed: the
 * mailbox comes back to it, and the client keeps its copy. */
static void test_sync_server_restored_from_backup_gets_newer_mailboxes(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid g1 = mk_mailbox(&a, "INBOX");
	append(&a, &g1, "inbox mail\r\n", 0, NULL);
	run_sync(&a, &b, false, 114);
	char *backup = xasprintf("%s.bak", b.dir);
	stor_close(&b.db);
	copy_dir(b.dir, backup);
	node_open_dir(&b);
	struct guid g2 = mk_mailbox(&a, "Later");
	append(&a, &g2, "later mail\r\n", 0, NULL);
	run_sync(&a, &b, false, 115);
	CU_ASSERT(dumps_equal(&a, &b));
	stor_close(&b.db);
	copy_dir(backup, b.dir);
	test_rmtree(backup);
	free(backup);
	node_open_dir(&b);
	const char *error;
	CU_ASSERT_EQUAL(stor_mailbox_get(b.db, USER, "Later", NULL, &error), 0);
	struct sync_run r = run_sync(&a, &b, false, 116);
	CU_ASSERT_EQUAL(r.report.mailboxes_deleted, 0);
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(count_unique(&a, "Later"), 1);
	CU_ASSERT_EQUAL(count_unique(&b, "Later"), 1);
	node_close(&a);
	node_close(&b);
}

static void test_sync_full_option_compares_every_message(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	for (int i = 0; i < 6; i++)
		append(&a, &mb, "m\r\n", 0, NULL);
	run_sync(&a, &b, false, 111);
	/* Forget the per-peer state behind the engine's back and lie about
	 * it: an incremental sync would trust it; --full does not. */
	const char *error;
	expunge(&b, &mb, 2);
	struct stor_mailbox xb = get_mailbox(&b, "INBOX");
	struct stor_sync_state st = { .uidvalidity = xb.uidvalidity, .uidnext = xb.uidnext,
				       .highestmodseq = xb.highestmodseq };
	stor_mailbox_free(&xb);
	CU_ASSERT_EQUAL(stor_sync_state_set(a.db, SID_B, &mb, &st, &error), 0);
	struct sync_run r = run_sync(&a, &b, true, 112);
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(r.report.mailboxes_full, 1);
	CU_ASSERT(r.report.messages_examined >= 6);
	/* The five the peer held at the same UIDs are counted as present, not
	 * as sent. */
	CU_ASSERT_EQUAL(r.report.messages_present, 5);
	/* --full on equal copies: every message compared, nothing moves. */
	r = run_sync(&a, &b, true, 113);
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(r.report.mailboxes_full, 1);
	CU_ASSERT_EQUAL(r.report.messages_present, 5);
	CU_ASSERT_EQUAL(r.report.messages_sent, 0);
	CU_ASSERT_EQUAL(r.report.texts_sent, 0);
	CU_ASSERT_EQUAL(r.report.messages_received, 0);
	CU_ASSERT_EQUAL(r.report.texts_fetched, 0);
	node_close(&a);
	node_close(&b);
}

/* ---- Randomized ---- */

static uint32_t rnd_state;
static uint32_t rnd(void)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 17;
	rnd_state ^= rnd_state << 5;
	return rnd_state;
}

struct expect {
	ARRAY(struct guid) alive;
};

static void expect_remove(struct expect *e, const struct guid *g)
{
	for (size_t i = 0; i < e->alive.count; i++) {
		if (guid_cmp(&e->alive.items[i], g) == 0) {
			e->alive.items[i] = e->alive.items[--e->alive.count];
			return;
		}
	}
}

static void random_ops(struct node *n, const struct guid *mb, struct expect *e, unsigned ops)
{
	const char *error;
	for (unsigned i = 0; i < ops; i++) {
		stor_msg_list msgs;
		CU_ASSERT_EQUAL_FATAL(stor_msg_list_range(n->db, mb, 1, UINT32_MAX, &msgs, &error), 0);
		unsigned op = rnd() % 10;
		if (op < 5 || msgs.count == 0) {
			char text[64];
			struct guid g;
			snprintf(text, sizeof(text), "Subject: r%u\r\n\r\n%u\r\n", rnd(), i);
			append(n, mb, text, rnd() % 2 ? STOR_FLAG_SEEN : 0, &g);
			ARRAY_PUSH(&e->alive, g);
		} else if (op < 8) {
			const struct stor_msg *m = &msgs.items[rnd() % msgs.count];
			set_flags(n, mb, m->uid, rnd() & STOR_FLAGS_ALL);
		} else {
			const struct stor_msg *m = &msgs.items[rnd() % msgs.count];
			expect_remove(e, &m->guid);
			expunge(n, mb, m->uid);
		}
		stor_msg_list_free(&msgs);
	}
}

static void test_sync_random_operations_converge(void)
{
	for (uint32_t seed = 1; seed <= 24; seed++) {
		struct node a, b;
		struct expect e;
		memset(&e, 0, sizeof(e));
		rnd_state = seed * 2654435761u;
		node_open(&a, SID_A);
		node_open(&b, SID_B);
		struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
		for (unsigned round = 0; round < 8; round++) {
			random_ops(&a, &mb, &e, rnd() % 12);
			random_ops(&b, &mb, &e, rnd() % 12);
			/* Either node may drive. */
			bool a_drives = round % 2 == 0 || seed % 2 == 0;
			run_sync(a_drives ? &a : &b, a_drives ? &b : &a, round == 5 && seed % 5 == 0,
				 seed * 100 + round);
			CU_ASSERT(dumps_equal(&a, &b));
			CU_ASSERT_EQUAL(count_unique(&a, "INBOX"), e.alive.count);
			for (size_t i = 0; i < e.alive.count; i++)
				CU_ASSERT(has_guid(&a, &mb, &e.alive.items[i], NULL));
			check_mailbox(&a, &mb);
			check_mailbox(&b, &mb);
			check_modseqs_equal(&a, &b, &mb);
		}
		ARRAY_FREE(&e.alive);
		node_close(&a);
		node_close(&b);
	}
}

/* Random mailbox list changes on both sides between syncs: creates (some
 * with the same name on both sides), renames, deletes, subscriptions, and
 * messages in the mailboxes. */
static void random_list_ops(struct node *n, unsigned ops)
{
	const char *error;
	for (unsigned i = 0; i < ops; i++) {
		stor_mailbox_array mbs;
		CU_ASSERT_EQUAL_FATAL(stor_mailbox_list(n->db, USER, &mbs, &error), 0);
		unsigned op = rnd() % 10;
		char name[64];
		snprintf(name, sizeof(name), "box%u", rnd() % 12);
		if (op < 3 || mbs.count == 0) {
			struct stor_mailbox tmp;
			if (stor_mailbox_get(n->db, USER, name, &tmp, &error) == 1)
				stor_mailbox_free(&tmp);
			else
				mk_mailbox(n, name);
		} else if (op < 5) {
			const struct stor_mailbox *m = &mbs.items[rnd() % mbs.count];
			snprintf(name, sizeof(name), "box%u", rnd() % 12);
			(void)stor_mailbox_rename(n->db, &m->guid, name, &error);
		} else if (op < 6) {
			const struct stor_mailbox *m = &mbs.items[rnd() % mbs.count];
			CU_ASSERT_EQUAL(stor_mailbox_delete(n->db, &m->guid, &error), 0);
		} else if (op < 8) {
			CU_ASSERT_EQUAL(stor_subscribe(n->db, USER, name, rnd() % 2 == 0, &error), 0);
		} else {
			const struct stor_mailbox *m = &mbs.items[rnd() % mbs.count];
			append(n, &m->guid, "list test\r\n", 0, NULL);
		}
		stor_mailbox_list_free(&mbs);
	}
}

static void test_sync_random_mailbox_list_changes_converge(void)
{
	for (uint32_t seed = 1; seed <= 16; seed++) {
		struct node a, b;
		rnd_state = seed * 40503u + 7;
		node_open(&a, SID_A);
		node_open(&b, SID_B);
		for (unsigned round = 0; round < 6; round++) {
			random_list_ops(&a, rnd() % 6);
			random_list_ops(&b, rnd() % 6);
			run_sync(&a, &b, false, seed * 1000 + round);
			CU_ASSERT(dumps_equal(&a, &b));
		}
		/* And nothing left to do. */
		struct sync_run r = run_sync(&a, &b, false, seed);
		CU_ASSERT_EQUAL(r.report.mailboxes_synced, 0);
		CU_ASSERT_EQUAL(r.report.mailboxes_created + r.report.mailboxes_deleted +
				r.report.mailboxes_renamed + r.report.subscriptions_changed, 0);
		node_close(&a);
		node_close(&b);
	}
}

/* Parses a byte stream as protocol lines and validates each command or
 * data line against protocol/'s command table; returns the line count. */
static size_t validate_stream(const struct buf *b, const char *const *extra_names)
{
	struct proto_parser *pp = proto_parser_create(NULL);
	const unsigned char *p = b->data;
	size_t len = b->len, lines = 0;
	while (len > 0) {
		size_t used;
		const struct proto_cmd *cmd;
		int r = proto_parser_parse(pp, p, len, &used, &cmd);
		CU_ASSERT_FATAL(r >= 0);
		p += used;
		len -= used;
		if (r != 1)
			continue;
		lines++;
		if (proto_cmd_is_status(cmd))
			continue;
		bool extra = false;
		for (size_t i = 0; extra_names[i] != NULL; i++)
			extra = extra || proto_cmd_is(cmd, extra_names[i]);
		if (extra)
			continue;
		size_t npos;
		const char *error = NULL;
		int v = proto_cmd_validate(cmd, &npos, &error);
		if (v < 0)
			fprintf(stderr, "\n%s %s: %s\n", cmd->tag, cmd->name, error);
		CU_ASSERT_EQUAL(v, 0);
	}
	CU_ASSERT(proto_parser_is_idle(pp));
	proto_parser_destroy(&pp);
	return lines;
}

static void test_sync_wire_lines_follow_the_command_table(void)
{
	struct node a, b;
	struct buf to_s = BUF_INIT, to_c = BUF_INIT;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	mk_mailbox(&a, "Only A");
	const char *error;
	stor_subscribe(b.db, USER, "INBOX", true, &error);
	for (int i = 0; i < 3; i++)
		append(&a, &mb, "a\r\n", 0, NULL);
	run_sync(&a, &b, false, 131);
	uint32_t u = append(&a, &mb, "a2\r\n", STOR_FLAG_SEEN, NULL);
	append(&b, &mb, "b2\r\n", 0, NULL);
	set_flags(&a, &mb, 1, STOR_FLAG_FLAGGED);
	expunge(&b, &mb, 2);
	expunge(&a, &mb, u);
	/* An ACL line from the server and an ACL-PUT from the client. */
	CU_ASSERT_EQUAL(stor_acl_put(b.db, USER, &mb, "bob", "lr", 5, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_acl_put(a.db, USER, &mb, "carol", "lr", 7, NULL, &error), 0);
	tap_to_server = &to_s;
	tap_to_client = &to_c;
	run_sync(&a, &b, false, 132);
	tap_to_server = tap_to_client = NULL;
	CU_ASSERT(dumps_equal(&a, &b));
	/* Every line, LIST and its data lines included, is in the table. */
	static const char *const extra[] = { NULL };
	CU_ASSERT(validate_stream(&to_s, extra) > 5);
	CU_ASSERT(validate_stream(&to_c, extra) > 5);
	buf_free(&to_s);
	buf_free(&to_c);
	node_close(&a);
	node_close(&b);
}

static void capture_send(void *ctx, const void *data, size_t len)
{
	buf_append(ctx, data, len);
}

static void test_sync_server_answers_bad_input_and_survives(void)
{
	struct node b;
	struct buf out = BUF_INIT;
	node_open(&b, SID_B);
	struct guid mb = mk_mailbox(&b, "INBOX");
	append(&b, &mb, "x\r\n", 0, NULL);
	struct sync_transport t = { capture_send, &out };
	struct sync_server *sv = sync_server_create(b.db, SID_A, &t);
	char hex[GUID_HEX_SIZE], line[512];
	guid_to_hex(&mb, hex);
	static const char *const bad[] = {
		"C1 SAVE 1700000000+0000 1 1 00 () NIL\r\n",     /* no mailbox selected */
		"C2 LIST\r\n",
		"C3 MBOX 0 alice INBOX 1 zz\r\n",
		"C4 SELECT 99\r\n",
		"C5 FROB 1\r\n",
		"C6 CREATE alice\r\n",
		"C7 RENAME alice a b nothex\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		CU_ASSERT_EQUAL(sync_server_feed(sv, bad[i], strlen(bad[i])), 0);
	buf_append_byte(&out, '\0');
	CU_ASSERT_PTR_NOT_NULL(strstr((char *)out.data, "C1 BAD [NOSELECT]"));
	CU_ASSERT_PTR_NOT_NULL(strstr((char *)out.data, "C2 BAD [ARGS]"));
	CU_ASSERT_PTR_NOT_NULL(strstr((char *)out.data, "C3 BAD [ARGS]"));
	CU_ASSERT_PTR_NOT_NULL(strstr((char *)out.data, "C4 NO [NOMBOX]"));
	CU_ASSERT_PTR_NOT_NULL(strstr((char *)out.data, "C5 BAD [UNKNOWN-COMMAND]"));
	CU_ASSERT_PTR_NOT_NULL(strstr((char *)out.data, "C6 BAD [ARGS]"));
	CU_ASSERT_PTR_NOT_NULL(strstr((char *)out.data, "C7 BAD [ARGS]"));
	buf_reset(&out);
	/* Commands of a sync outside one, and malformed ones inside. */
	snprintf(line, sizeof(line), "C8 MBOX 1 %s INBOX %u %s\r\nC9 SELECT 1\r\n"
		 "C10 SAVE 1700000000+0000 1 1 %s () NIL\r\nC11 SYNC-BEGIN 0 0 1 1\r\n"
		 "C12 STORE 1 5 (\\Seen) ()\r\nC13 UIDFIX 1:2 5\r\nC14 EXPUNGE 0 0\r\n"
		 "C15 SAVE 1700000000+0000 1 1 %s (\\Bogus) NIL\r\n",
		 USER, 0u, hex, hex, hex);
	CU_ASSERT_EQUAL(sync_server_feed(sv, line, strlen(line)), 0);
	buf_append_byte(&out, '\0');
	CU_ASSERT_PTR_NOT_NULL(strstr((char *)out.data, "C8 NO [UIDVALIDITY"));
	CU_ASSERT_PTR_NOT_NULL(strstr((char *)out.data, "C9 NO [NOMBOX]"));
	buf_reset(&out);
	struct stor_mailbox x = get_mailbox(&b, "INBOX");
	snprintf(line, sizeof(line), "C16 MBOX 1 %s INBOX %u %s\r\nC17 SELECT 1\r\n"
		 "C18 SAVE 1700000000+0000 1 1 %s () NIL\r\nC19 SYNC-BEGIN 0 0 1 1\r\n"
		 "C20 STORE 1 5 (\\Seen) ()\r\nC21 UIDFIX 1:2 5\r\nC22 EXPUNGE 0 0\r\n"
		 "C23 SAVE 1700000000+0000 1 1 %s (\\Bogus) NIL\r\n"
		 "C25 SAVE 1700000000+0000 2 0 %s () {1}\r\nx\r\n"
		 "C26 STORE 1 0 (\\Seen) (\\*)\r\n"
		 "C27 FETCH 0\r\nC28 FETCH 1 2\r\nC29 FETCH 1:%u\r\n",
		 USER, x.uidvalidity, hex, hex, hex, hex, SYNC_MAX_UIDS_PER_LINE * 4 + 1);
	stor_mailbox_free(&x);
	CU_ASSERT_EQUAL(sync_server_feed(sv, line, strlen(line)), 0);
	buf_append_byte(&out, '\0');
	const char *o = (const char *)out.data;
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C16 OK [UIDNEXT 2 HIGHESTMODSEQ"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C17 OK"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C18 BAD [PROTOCOL]"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C19 OK"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C20 BAD [ARGS]"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C21 BAD [ARGS]"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C22 BAD [ARGS]"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C23 BAD [ARGS]"));
	/* Modseq 0 means "assign one", which only a master does for a request
	 * (SPEC 8.1): a sync's SAVE gives both. */
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C25 BAD [ARGS]"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C26 BAD [ARGS]"));
	/* FETCH (SPEC 8.5): one UID set of at most the server's bound. */
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C27 BAD [ARGS]"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C28 BAD [ARGS]"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C29 BAD [ARGS]"));
	/* A parse error is fatal for the link, not for the process. */
	CU_ASSERT_EQUAL(sync_server_feed(sv, "C24 SAVE (((\r\n", 15), -1);
	CU_ASSERT_PTR_NOT_NULL(sync_server_error(sv));
	sync_server_destroy(&sv);
	buf_free(&out);
	node_close(&b);
}


static size_t count_lines(const char *s, const char *needle)
{
	size_t n = 0;
	for (const char *p = strstr(s, needle); p != NULL; p = strstr(p + 1, needle))
		n++;
	return n;
}

/* SYNC-END of a large mailbox is answered in bounded steps: the input call
 * and each step send at most about the budget's SAVE lines, and commands
 * that arrive meanwhile are answered after the SYNC-END, in order. */
static void test_sync_server_answers_sync_end_in_bounded_steps(void)
{
	struct node b;
	struct buf out = BUF_INIT;
	node_open(&b, SID_B);
	struct guid mb = mk_mailbox(&b, "INBOX");
	for (int i = 0; i < 300; i++)
		append(&b, &mb, "Subject: s\r\n\r\nx\r\n", 0, NULL);
	struct sync_transport t = { capture_send, &out };
	struct sync_server *sv = sync_server_create(b.db, SID_A, &t);
	sync_server_set_budget(sv, 16);
	char hex[GUID_HEX_SIZE], line[512];
	guid_to_hex(&mb, hex);
	struct stor_mailbox x = get_mailbox(&b, "INBOX");
	snprintf(line, sizeof(line), "C1 MBOX 1 %s INBOX %u %s\r\nC2 SELECT 1\r\n"
		 "C3 SYNC-BEGIN 0 0 1 1\r\nC4 SYNC-END\r\n", USER, x.uidvalidity, hex);
	stor_mailbox_free(&x);
	CU_ASSERT_EQUAL(sync_server_feed(sv, line, strlen(line)), 0);
	CU_ASSERT(sync_server_busy(sv));
	buf_append_byte(&out, '\0');
	CU_ASSERT_PTR_NULL(strstr((const char *)out.data, "C4 OK"));
	CU_ASSERT(count_lines((const char *)out.data, "C4 SAVE ") <= 16);
	/* Commands while busy wait, and keep their order. */
	snprintf(line, sizeof(line), "C5 LIST %s\r\nC6 FETCH 1:3\r\n", USER);
	CU_ASSERT_EQUAL(sync_server_feed(sv, line, strlen(line)), 0);
	buf_reset(&out);
	unsigned steps = 0;
	size_t max_saves = 0;
	while (sync_server_busy(sv) && steps < 10000) {
		size_t before = out.len;
		CU_ASSERT(sync_server_step(sv) >= 0);
		buf_append_byte(&out, '\0');
		size_t saves = count_lines((const char *)out.data + before, "C4 SAVE ");
		out.len--;
		if (saves > max_saves)
			max_saves = saves;
		steps++;
	}
	CU_ASSERT_FALSE(sync_server_busy(sv));
	CU_ASSERT(steps >= 300 / 16);
	CU_ASSERT(max_saves <= 16);
	buf_append_byte(&out, '\0');
	const char *o = (const char *)out.data;
	const char *end = strstr(o, "C4 OK [UIDNEXT 301 ");
	const char *list = strstr(o, "C5 OK");
	const char *fetch = strstr(o, "C6 OK");
	CU_ASSERT_PTR_NOT_NULL(end);
	CU_ASSERT_PTR_NOT_NULL(list);
	CU_ASSERT_PTR_NOT_NULL(fetch);
	CU_ASSERT(end != NULL && list != NULL && fetch != NULL && end < list && list < fetch);
	CU_ASSERT_EQUAL(count_lines(o, "C6 TEXT "), 3);
	sync_server_destroy(&sv);
	buf_free(&out);
	node_close(&b);
}

/* A whole sync held while the server answers another one in steps: the
 * held SAVE keeps its text (taken from the parser as it came, in small
 * pieces) and is applied as if it had come when the server was idle. */
static void test_sync_server_applies_a_held_save_with_its_text(void)
{
	struct node b;
	struct buf out = BUF_INIT;
	node_open(&b, SID_B);
	struct guid mb = mk_mailbox(&b, "INBOX");
	for (int i = 0; i < 100; i++)
		append(&b, &mb, "Subject: s\r\n\r\nx\r\n", 0, NULL);
	struct sync_transport t = { capture_send, &out };
	struct sync_server *sv = sync_server_create(b.db, SID_A, &t);
	sync_server_set_budget(sv, 4);
	char hex[GUID_HEX_SIZE + 1], ghex[GUID_HEX_SIZE + 1], line[1024];
	guid_to_hex(&mb, hex);
	hex[GUID_HEX_SIZE] = '\0';
	struct guid g;
	guid_generate(&g);
	guid_to_hex(&g, ghex);
	ghex[GUID_HEX_SIZE] = '\0';
	struct stor_mailbox x = get_mailbox(&b, "INBOX");
	unsigned long long hms = (unsigned long long)x.highestmodseq;
	snprintf(line, sizeof(line), "C1 MBOX 1 %s INBOX %u %s\r\nC2 SELECT 1\r\n"
		 "C3 SYNC-BEGIN 0 0 1 1\r\nC4 SYNC-END\r\n", USER, x.uidvalidity, hex);
	stor_mailbox_free(&x);
	CU_ASSERT_EQUAL(sync_server_feed(sv, line, strlen(line)), 0);
	CU_ASSERT_FATAL(sync_server_busy(sv));
	snprintf(line, sizeof(line), "C5 SYNC-BEGIN %llu %llu 101 102\r\n"
		 "C6 SAVE 1700000000+0000 101 %llu %s (\\Seen) {11}\r\nhello there\r\n"
		 "C7 SYNC-END\r\n", hms, hms + 1, hms + 1, ghex);
	for (size_t i = 0; i < strlen(line); i += 7) {
		size_t n = strlen(line) - i < 7 ? strlen(line) - i : 7;
		CU_ASSERT_EQUAL(sync_server_feed(sv, line + i, n), 0);
	}
	CU_ASSERT(sync_server_busy(sv));
	for (int i = 0; i < 10000 && sync_server_busy(sv); i++)
		CU_ASSERT(sync_server_step(sv) >= 0);
	CU_ASSERT_FALSE(sync_server_busy(sv));
	buf_append_byte(&out, '\0');
	const char *o = (const char *)out.data;
	const char *end = strstr(o, "C4 OK"), *save = strstr(o, "C6 OK");
	CU_ASSERT(end != NULL && save != NULL && end < save);
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C7 OK [UIDNEXT 102 "));
	uint32_t at = 0;
	CU_ASSERT(has_guid(&b, &mb, &g, &at));
	CU_ASSERT_EQUAL(at, 101);
	struct buf text = BUF_INIT;
	const char *error;
	CU_ASSERT_EQUAL(stor_text_read(b.db, &g, 0, 11, &text, &error), 0);
	CU_ASSERT(text.len == 11 && memcmp(text.data, "hello there", 11) == 0);
	buf_free(&text);
	sync_server_destroy(&sv);
	buf_free(&out);
	node_close(&b);
}

/* Copies with equal UIDNEXT and HIGHESTMODSEQ but different digests are
 * compared message by message, whatever the remembered state says. */
static void test_sync_equal_modseqs_different_digests_compare_every_message(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	for (int i = 0; i < 4; i++)
		append(&a, &mb, "m\r\n", 0, NULL);
	run_sync(&a, &b, false, 121);
	/* The same number of changes on each side, different ones. */
	set_flags(&a, &mb, 1, STOR_FLAG_FLAGGED);
	set_flags(&b, &mb, 2, STOR_FLAG_SEEN);
	struct stor_mailbox xa = get_mailbox(&a, "INBOX"), xb = get_mailbox(&b, "INBOX");
	CU_ASSERT_EQUAL(xa.uidnext, xb.uidnext);
	CU_ASSERT_EQUAL(xa.highestmodseq, xb.highestmodseq);
	CU_ASSERT(memcmp(xa.digest, xb.digest, sizeof(xa.digest)) != 0);
	stor_mailbox_free(&xa);
	stor_mailbox_free(&xb);
	struct sync_run r = run_sync(&a, &b, false, 122);
	CU_ASSERT_EQUAL(r.report.mailboxes_full, 1);
	CU_ASSERT(dumps_equal(&a, &b));
	check_modseqs_equal(&a, &b, &mb);
	node_close(&a);
	node_close(&b);
}

/* Many mailboxes on each side, some with the same names: the list merge
 * (indexed lookups) keeps every one, and a second sync finds nothing. */
static void test_sync_many_mailboxes_merge_and_converge(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	char name[64];
	for (int i = 0; i < 600; i++) {
		snprintf(name, sizeof(name), "a%04d", i);
		mk_mailbox(&a, name);
		snprintf(name, sizeof(name), "b%04d", i);
		mk_mailbox(&b, name);
	}
	for (int i = 0; i < 50; i++) {
		snprintf(name, sizeof(name), "same%02d", i);
		mk_mailbox(&a, name);
		mk_mailbox(&b, name);
	}
	struct sync_run r = run_sync(&a, &b, false, 131);
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT(r.report.mailboxes_created >= 1200);
	CU_ASSERT_EQUAL(r.report.mailboxes_renamed, 50);
	stor_mailbox_array l;
	const char *error;
	CU_ASSERT_EQUAL(stor_mailbox_list(a.db, USER, &l, &error), 0);
	CU_ASSERT_EQUAL(l.count, 1300);
	stor_mailbox_list_free(&l);
	r = run_sync(&a, &b, false, 132);
	CU_ASSERT_EQUAL(r.report.mailboxes_synced, 0);
	CU_ASSERT_EQUAL(r.report.mailboxes_created, 0);
	CU_ASSERT_EQUAL(r.report.mailboxes_renamed, 0);
	CU_ASSERT_EQUAL(r.server_examined, 0);
	node_close(&a);
	node_close(&b);
}


/* The merge runs in steps: a GUID that replication brings between the
 * step that classified the client's copy and the one that would append it
 * is not stored twice; the client is told to drop its copy and take ours. */
static void test_sync_message_arriving_during_a_stepwise_merge_is_not_doubled(void)
{
	struct node b;
	struct buf out = BUF_INIT;
	node_open(&b, SID_B);
	struct guid mb = mk_mailbox(&b, "INBOX");
	append(&b, &mb, "Subject: old\r\n\r\nx\r\n", 0, NULL);
	struct sync_transport t = { capture_send, &out };
	struct sync_server *sv = sync_server_create(b.db, SID_A, &t);
	sync_server_set_budget(sv, 1);
	struct guid g;
	guid_generate(&g);
	char hex[GUID_HEX_SIZE], ghex[GUID_HEX_SIZE], line[1024];
	guid_to_hex(&mb, hex);
	guid_to_hex(&g, ghex);
	struct stor_mailbox x = get_mailbox(&b, "INBOX");
	uint64_t hms = x.highestmodseq;
	snprintf(line, sizeof(line), "C1 MBOX 1 %s INBOX %u %s\r\nC2 SELECT 1\r\n"
		 "C3 SYNC-BEGIN %llu %llu 2 6\r\n"
		 "C4 SAVE 1700000000+0000 5 %llu %s () {5}\r\nhello\r\nC5 SYNC-END\r\n",
		 USER, x.uidvalidity, hex, (unsigned long long)hms, (unsigned long long)hms + 1,
		 (unsigned long long)hms + 1, ghex);
	stor_mailbox_free(&x);
	CU_ASSERT_EQUAL(sync_server_feed(sv, line, strlen(line)), 0);
	CU_ASSERT(sync_server_busy(sv));
	/* Replication brings the same message, at another UID. */
	struct stor_append req;
	const char *error;
	uint32_t uid = 0;
	memset(&req, 0, sizeof(req));
	req.guid = &g;
	req.uid = 7;
	req.internaldate = 1700000000;
	CU_ASSERT_EQUAL(stor_msg_append(b.db, &mb, &req, &uid, NULL, &error), 0);
	CU_ASSERT_EQUAL(uid, 7);
	for (int i = 0; i < 1000 && sync_server_busy(sv); i++)
		CU_ASSERT(sync_server_step(sv) >= 0);
	CU_ASSERT_FALSE(sync_server_busy(sv));
	CU_ASSERT_EQUAL(count_unique(&b, "INBOX"), 2);
	uint32_t at = 0;
	CU_ASSERT(has_guid(&b, &mb, &g, &at));
	CU_ASSERT_EQUAL(at, 7);
	buf_append_byte(&out, '\0');
	const char *o = (const char *)out.data;
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C5 EXPUNGE 5 "));
	char want[128];
	snprintf(want, sizeof(want), " 7 ");
	const char *save = strstr(o, "C5 SAVE ");
	CU_ASSERT(save != NULL && strstr(save, ghex) != NULL && strstr(save, want) != NULL);
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C5 OK [UIDNEXT 8 "));
	sync_server_destroy(&sv);
	buf_free(&out);
	node_close(&b);
}

/* The same, with the message brought to the client's own UID: one
 * message at one UID on both sides, so the client keeps its copy.  Told to
 * drop it and take ours at that UID, the client expunged its only copy
 * (the fault campaign's acked-append-present, latency,logmax seed 2). */
static void test_sync_message_arriving_at_the_same_uid_during_a_merge_stays(void)
{
	struct node b;
	struct buf out = BUF_INIT;
	node_open(&b, SID_B);
	struct guid mb = mk_mailbox(&b, "INBOX");
	append(&b, &mb, "Subject: old\r\n\r\nx\r\n", 0, NULL);
	struct sync_transport t = { capture_send, &out };
	struct sync_server *sv = sync_server_create(b.db, SID_A, &t);
	sync_server_set_budget(sv, 1);
	struct guid g;
	guid_generate(&g);
	char hex[GUID_HEX_SIZE], ghex[GUID_HEX_SIZE], line[1024];
	guid_to_hex(&mb, hex);
	guid_to_hex(&g, ghex);
	struct stor_mailbox x = get_mailbox(&b, "INBOX");
	uint64_t hms = x.highestmodseq;
	snprintf(line, sizeof(line), "C1 MBOX 1 %s INBOX %u %s\r\nC2 SELECT 1\r\n"
		 "C3 SYNC-BEGIN %llu %llu 2 6\r\n"
		 "C4 SAVE 1700000000+0000 5 %llu %s () {5}\r\nhello\r\nC5 SYNC-END\r\n",
		 USER, x.uidvalidity, hex, (unsigned long long)hms, (unsigned long long)hms + 1,
		 (unsigned long long)hms + 1, ghex);
	stor_mailbox_free(&x);
	CU_ASSERT_EQUAL(sync_server_feed(sv, line, strlen(line)), 0);
	CU_ASSERT(sync_server_busy(sv));
	struct stor_append req;
	const char *error;
	uint32_t uid = 0;
	memset(&req, 0, sizeof(req));
	req.guid = &g;
	req.uid = 5;
	req.internaldate = 1700000000;
	req.text = "hello";
	req.text_len = 5;
	CU_ASSERT_EQUAL(stor_msg_append(b.db, &mb, &req, &uid, NULL, &error), 0);
	CU_ASSERT_EQUAL(uid, 5);
	for (int i = 0; i < 1000 && sync_server_busy(sv); i++)
		CU_ASSERT(sync_server_step(sv) >= 0);
	CU_ASSERT_FALSE(sync_server_busy(sv));
	CU_ASSERT_EQUAL(count_unique(&b, "INBOX"), 2);
	uint32_t at = 0;
	CU_ASSERT(has_guid(&b, &mb, &g, &at));
	CU_ASSERT_EQUAL(at, 5);
	buf_append_byte(&out, '\0');
	const char *o = (const char *)out.data;
	CU_ASSERT_PTR_NULL(strstr(o, "C5 EXPUNGE 5 "));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C5 OK [UIDNEXT 6 "));
	sync_server_destroy(&sv);
	buf_free(&out);
	node_close(&b);
}

/* A client fed a hostile answer fails with an error, changes nothing it
 * cannot justify, and never crashes. */
static void test_sync_client_refuses_a_broken_answer(void)
{
	struct node a;
	struct buf out = BUF_INIT;
	node_open(&a, SID_A);
	mk_mailbox(&a, "INBOX");
	static const char *const answers[] = {
		"C1 MAILBOX INBOX nothex 1 1 0 00000000000000000000000000000000 NIL\r\n",
		"C1 OK [UIDNEXT 5] done\r\nC1 OK again\r\n",
		"X1 OK foreign\r\n",
		"C1 TEXT 1 00000000000000000000000000000000 {3}\r\nabc\r\n",
		"C1 OK {5}\r\n",
	};
	for (size_t i = 0; i < sizeof(answers) / sizeof(answers[0]); i++) {
		struct sync_transport t = { capture_send, &out };
		struct sync_settings set = { .peer_sid = SID_B, .user = USER };
		struct sync_client *cl = sync_client_create(a.db, &set, &t);
		CU_ASSERT_EQUAL(sync_client_step(cl), SYNC_STEP_WAIT);
		int r = sync_client_feed(cl, answers[i], strlen(answers[i]));
		enum sync_step_result res = SYNC_STEP_AGAIN;
		for (int k = 0; k < 100 && res == SYNC_STEP_AGAIN; k++)
			res = sync_client_step(cl);
		CU_ASSERT(r < 0 || res == SYNC_STEP_ERROR || res == SYNC_STEP_WAIT);
		if (i != 1 && i != 4)
			CU_ASSERT(r < 0 && sync_client_error(cl) != NULL);
		sync_client_destroy(&cl);
		buf_reset(&out);
	}
	buf_free(&out);
	node_close(&a);
}

/* Creates on c the mailbox name of a with its GUID and UIDVALIDITY, as a
 * replicated CREATE would. */
static void mk_third_copy(struct node *a, struct node *c, const char *name)
{
	struct stor_mailbox m = get_mailbox(a, name);
	struct stor_mailbox_create req = {
		.user = USER, .name = name, .guid = &m.guid, .uidvalidity = m.uidvalidity,
	};
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(c->db, &req, NULL, &error), 0);
	stor_mailbox_free(&m);
}

/* Nodes A, B and a third one (SID 3) sharing INBOX, made on A. */
static struct guid three_nodes_open(struct node *a, struct node *b, struct node *c)
{
	node_open(a, SID_A);
	node_open(b, SID_B);
	node_open(c, 3);
	struct guid mb = mk_shared_mailbox(a, b, "INBOX");
	mk_third_copy(a, c, "INBOX");
	return mb;
}

/* Each node holds want distinct messages in INBOX, and all three dump
 * alike. */
static void three_nodes_end_alike(struct node *a, struct node *b, struct node *c, size_t want)
{
	CU_ASSERT_EQUAL(count_unique(a, "INBOX"), want);
	CU_ASSERT_EQUAL(count_unique(b, "INBOX"), want);
	CU_ASSERT_EQUAL(count_unique(c, "INBOX"), want);
	CU_ASSERT(dumps_equal(a, b));
	CU_ASSERT(dumps_equal(a, c));
}

/* three_nodes_open, then n common messages appended on A reach B and C
 * (syncs B-A with seed, C-A with seed + 1, A the server). */
static struct guid three_nodes_with_common(struct node *a, struct node *b, struct node *c,
					   int n, uint32_t seed)
{
	struct guid mb = three_nodes_open(a, b, c);
	for (int i = 0; i < n; i++)
		append(a, &mb, "common\r\n", 0, NULL);
	run_sync(b, a, false, seed);
	run_sync(c, a, false, seed + 1);
	return mb;
}

/* Three nodes: A apart from B and C (C a replica of B); both sides append
 * to one mailbox.  A then syncs with B, C and B again, as a resync toward
 * every peer does after a partition.  The second sync renumbers B's
 * messages again on A and C (C never saw B's renumbering), so A's third
 * sync expunges B's copies at their first new UIDs: those messages must
 * not be lost, nor kept twice, and the three nodes end alike. */
/* A STORE that names a flag without changing its value (A clears $k1,
 * which A's copy never had) is a change of that flag, later than B's +$k1
 * made apart.  A third node that syncs with A first holds the same flags as
 * A, and must still take A's stamp: otherwise its sync with B takes B's $k1
 * as the only change, and A, already past that modseq with C, then takes
 * $k1 back from C.  The later change (A's clear) must win on every node,
 * whatever the order and kind of the syncs.  (One suspected path of the
 * open flag-holds 16142, docs/testing.md; it passes: not that path.) */
static void test_sync_unchanged_value_stamp_travels_through_a_third_node(void)
{
	for (int v = 0; v < 8; v++) {
		/* Bit 0: who is the client; bit 1: C's sync with A a full
		 * compare, bit 2: its sync with B (a peer past repl_log_max). */
		int order = v & 1;
		bool full_a = (v & 2) != 0, full_b = (v & 4) != 0;
		struct node a, b, c;
		struct guid mb = three_nodes_with_common(&a, &b, &c, 2, 2900 + (uint32_t)v * 10);
		store_kw(&b, &mb, 1, STOR_FLAGS_ADD, 0, "$k1");
		struct timespec ts = { 0, 5 * 1000 * 1000 };
		nanosleep(&ts, NULL);
		store_kw(&a, &mb, 1, STOR_FLAGS_REMOVE, 0, "$k1");
		if (order == 0) {
			run_sync(&c, &a, full_a, 2901);
			run_sync(&c, &b, full_b, 2902);
		} else {
			run_sync(&a, &c, full_a, 2901);
			run_sync(&b, &c, full_b, 2902);
		}
		run_sync(&c, &a, false, 2903);
		run_sync(&a, &b, false, 2904);
		run_sync(&b, &c, false, 2905);
		three_nodes_end_alike(&a, &b, &c, 2);
		struct node *n[3] = { &a, &b, &c };
		for (int i = 0; i < 3; i++) {
			struct stor_msg m;
			const char *error;
			CU_ASSERT_EQUAL_FATAL(stor_msg_get(n[i]->db, &mb, 1, &m, &error), 1);
			CU_ASSERT(!stor_msg_has_keyword(&m, "$k1"));
			stor_msg_free(&m);
		}
		three_nodes_close(&a, &b, &c);
	}
}

static void test_sync_three_nodes_after_a_partition_lose_nothing(void)
{
	struct node a, b, c;
	struct guid mb = three_nodes_with_common(&a, &b, &c, 10, 31);
	for (int i = 0; i < 5; i++)
		append(&a, &mb, "side a\r\n", 0, NULL);
	for (int i = 0; i < 10; i++)
		append(&b, &mb, "side b\r\n", STOR_FLAG_SEEN, NULL);
	run_sync(&c, &b, false, 33);
	CU_ASSERT(dumps_equal(&b, &c));
	run_sync(&a, &b, false, 34);
	run_sync(&a, &c, false, 35);
	run_sync(&a, &b, false, 36);
	three_nodes_end_alike(&a, &b, &c, 25);
	check_mailbox(&a, &mb);
	check_mailbox(&b, &mb);
	check_mailbox(&c, &mb);
	three_nodes_close(&a, &b, &c);
}

/* Applies A's current state of uid to n as a replica applies the master's
 * streamed STORE: the same flags, modseq and stamps. */
static void replicate_flags(struct node *a, struct node *n, const struct guid *mb, uint32_t uid)
{
	struct stor_msg m;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(a->db, mb, uid, &m, &error), 1);
	struct stor_store req = {
		.op = STOR_FLAGS_REPLACE, .flags = m.flags,
		.keywords = (const char *const *)m.keywords.items, .keyword_count = m.keywords.count,
		.modseq = m.modseq, .stamps = m.stamps.items, .stamp_count = m.stamps.count,
	};
	CU_ASSERT_EQUAL_FATAL(stor_msg_store(n->db, mb, &uid, 1, &req, NULL, NULL, &error), 0);
	stor_msg_free(&m);
}

/* A flag change that reached every node by replication (same flags, same
 * modseq everywhere) is not a conflict: syncs that meet it because
 * something else in the mailbox differs leave its modseq alone.  Giving it
 * the merge's fresh modseq N made each pair of three nodes differ from the
 * third again, so resyncs after a heal went round for as long as they were
 * allowed to, and IMAP sessions saw the message change every time. */
static void test_sync_replicated_flag_change_is_not_merged_again(void)
{
	struct node a, b, c;
	struct guid mb = three_nodes_open(&a, &b, &c);
	uint32_t u1 = append(&a, &mb, "one\r\n", 0, NULL);
	append(&a, &mb, "two\r\n", 0, NULL);
	run_sync(&b, &a, false, 51);
	run_sync(&c, &a, false, 52);
	run_sync(&b, &c, false, 53);
	set_flags(&a, &mb, u1, STOR_FLAG_SEEN);
	replicate_flags(&a, &b, &mb, u1);
	replicate_flags(&a, &c, &mb, u1);
	/* Something else differs, so every pair syncs the mailbox. */
	append(&a, &mb, "three\r\n", 0, NULL);
	struct node *pairs[][2] = { { &b, &a }, { &c, &b }, { &a, &c } };
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < 3; i++) {
			struct sync_run r = run_sync(pairs[i][0], pairs[i][1], false,
						     (uint32_t)(60 + 3 * round + i));
			/* The first round carries "three"; after it nothing
			 * is left to do. */
			if (round > 0)
				CU_ASSERT_EQUAL(r.report.mailboxes_synced, 0);
		}
	}
	three_nodes_end_alike(&a, &b, &c, 3);
	check_modseqs_equal(&a, &b, &mb);
	check_modseqs_equal(&a, &c, &mb);
	three_nodes_close(&a, &b, &c);
}

/* n takes A's message at uid as a replica takes the master's SAVE: same
 * UID, GUID, flags and modseq, no sync. */
static void replicate_append(struct node *a, struct node *n, const struct guid *mb, uint32_t uid,
			     const char *text)
{
	struct stor_msg m;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(a->db, mb, uid, &m, &error), 1);
	struct stor_append req = {
		.uid = uid, .modseq = m.modseq, .guid = &m.guid, .flags = m.flags,
		.internaldate = m.internaldate, .text = text, .text_len = strlen(text),
	};
	CU_ASSERT_EQUAL_FATAL(stor_msg_append(n->db, mb, &req, NULL, NULL, &error), 0);
	stor_msg_free(&m);
}

static uint32_t flags_of_guid(struct node *n, const struct guid *mb, const struct guid *g)
{
	uint32_t uid = 0, flags = 0;
	struct stor_msg m;
	const char *error;
	CU_ASSERT_FATAL(has_guid(n, mb, g, &uid));
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(n->db, mb, uid, &m, &error), 1);
	flags = m.flags;
	stor_msg_free(&m);
	return flags;
}

/* A flag change made on one node (A) to a message X that a sync between
 * two other nodes meanwhile moved to another UID (B's X and C's own
 * message collided at one UID).  When C then syncs with A, C's copy of X
 * stands at its new UID and A's copy at the old UID goes with C's expunge
 * of that UID: A's change must merge into the copy that stays.  It was
 * lost (found by the fault campaign: partition seed 2, flag-holds). */
static void moved_message_keeps_flag_change(bool known_to_both)
{
	struct node a, b, c;
	struct guid mb = three_nodes_open(&a, &b, &c);
	uint32_t u1 = append(&a, &mb, "one\r\n", 0, NULL);
	run_sync(&b, &a, false, 71);
	/* C had every message by replication, never by a sync with A. */
	replicate_append(&a, &c, &mb, u1, "one\r\n");
	struct guid gx;
	uint32_t ux = append(&a, &mb, "x\r\n", STOR_FLAG_SEEN, &gx);
	if (known_to_both)
		run_sync(&b, &a, false, 73);
	else
		replicate_append(&a, &b, &mb, ux, "x\r\n");
	/* C, apart, used the same UID for another message. */
	uint32_t uz = append(&c, &mb, "z\r\n", 0, NULL);
	CU_ASSERT_EQUAL(uz, ux);
	/* A flags X; B and C meet, and X moves on B. */
	set_flags(&a, &mb, ux, STOR_FLAG_SEEN | STOR_FLAG_ANSWERED);
	run_sync(&c, &b, false, 74);
	uint32_t moved = 0;
	CU_ASSERT(has_guid(&b, &mb, &gx, &moved));
	CU_ASSERT_NOT_EQUAL(moved, ux);
	/* A syncs with B, then with C. */
	run_sync(&c, &a, false, 75);
	run_sync(&a, &b, false, 76);
	run_sync(&c, &a, false, 77);
	CU_ASSERT_EQUAL(flags_of_guid(&a, &mb, &gx), STOR_FLAG_SEEN | STOR_FLAG_ANSWERED);
	CU_ASSERT_EQUAL(flags_of_guid(&b, &mb, &gx), STOR_FLAG_SEEN | STOR_FLAG_ANSWERED);
	CU_ASSERT_EQUAL(flags_of_guid(&c, &mb, &gx), STOR_FLAG_SEEN | STOR_FLAG_ANSWERED);
	three_nodes_end_alike(&a, &b, &c, 3);
	three_nodes_close(&a, &b, &c);
}

static void test_sync_moved_message_keeps_flag_change_new(void)
{
	moved_message_keeps_flag_change(false);
}

static void test_sync_moved_message_keeps_flag_change_known(void)
{
	moved_message_keeps_flag_change(true);
}

/* The other way round: B's message X at UID u reached C by replication and
 * C flagged it; A, apart, used u for its own message Y.  A and B sync (X
 * and Y move on both), then C, still holding X at u with its change,
 * syncs with one of them as the client: the server holds Y (or its
 * tombstone) at u and X elsewhere, so C drops its copy and takes the
 * server's; C's flag change must merge into it, not be dropped with the
 * copy (found by the fault campaign: seed 7200, flag-holds). */
static void flagged_copy_taken_from_server(bool b_saw_the_change, bool c_syncs_with_a)
{
	struct node a, b, c;
	struct guid mb = three_nodes_open(&a, &b, &c);
	uint32_t u1 = append(&b, &mb, "one\r\n", 0, NULL);
	run_sync(&a, &b, false, 81);
	replicate_append(&b, &c, &mb, u1, "one\r\n");
	struct guid gx;
	uint32_t ux = append(&b, &mb, "x\r\n", STOR_FLAG_ANSWERED, &gx);
	replicate_append(&b, &c, &mb, ux, "x\r\n");
	set_flags(&c, &mb, ux, STOR_FLAG_ANSWERED | STOR_FLAG_DRAFT);
	if (b_saw_the_change)
		replicate_flags(&c, &b, &mb, ux);
	uint32_t uy = append(&a, &mb, "y\r\n", 0, NULL);
	CU_ASSERT_EQUAL(uy, ux);
	run_sync(&a, &b, false, 82);
	uint32_t moved = 0;
	CU_ASSERT(has_guid(&b, &mb, &gx, &moved));
	CU_ASSERT_NOT_EQUAL(moved, ux);
	run_sync(&c, c_syncs_with_a ? &a : &b, false, 83);
	run_sync(&c, c_syncs_with_a ? &b : &a, false, 84);
	run_sync(&a, &b, false, 85);
	uint32_t want = STOR_FLAG_ANSWERED | STOR_FLAG_DRAFT;
	CU_ASSERT_EQUAL(flags_of_guid(&a, &mb, &gx), want);
	CU_ASSERT_EQUAL(flags_of_guid(&b, &mb, &gx), want);
	CU_ASSERT_EQUAL(flags_of_guid(&c, &mb, &gx), want);
	three_nodes_end_alike(&a, &b, &c, 3);
	three_nodes_close(&a, &b, &c);
}

/* C takes the server's copy of X at the UID a sync of A and B moved it to,
 * with C's HIGHESTMODSEQ above the modseq that sync gave X (C changed
 * other messages meanwhile).  C's IMAP clients that cached its
 * HIGHESTMODSEQ must see the move: the old UID's tombstone and the new
 * UID above it.  The server's copy kept its modseq, so the move was
 * written below C's HIGHESTMODSEQ (found by the fault campaign: seed
 * 11021, qresync-cache). */
static void test_sync_taken_copy_moves_above_client_hms(void)
{
	struct node a, b, c;
	struct guid mb = three_nodes_open(&a, &b, &c);
	uint32_t u1 = append(&b, &mb, "one\r\n", 0, NULL);
	run_sync(&a, &b, false, 91);
	replicate_append(&b, &c, &mb, u1, "one\r\n");
	struct guid gx;
	uint32_t ux = append(&b, &mb, "x\r\n", STOR_FLAG_ANSWERED, &gx);
	replicate_append(&b, &c, &mb, ux, "x\r\n");
	uint32_t uy = append(&a, &mb, "y\r\n", 0, NULL);
	CU_ASSERT_EQUAL(uy, ux);
	run_sync(&a, &b, false, 92);
	uint32_t moved = 0;
	CU_ASSERT(has_guid(&b, &mb, &gx, &moved));
	CU_ASSERT_NOT_EQUAL(moved, ux);
	/* C spends modseqs of its own, above the one X got on B. */
	uint32_t fl[] = { STOR_FLAG_SEEN, STOR_FLAG_FLAGGED, STOR_FLAG_DRAFT, STOR_FLAG_SEEN,
			  STOR_FLAG_FLAGGED, STOR_FLAG_DRAFT, STOR_FLAG_SEEN, STOR_FLAG_FLAGGED };
	for (size_t i = 0; i < sizeof(fl) / sizeof(fl[0]); i++)
		set_flags(&c, &mb, u1, fl[i]);
	struct stor_mailbox before = get_mailbox(&c, "INBOX");
	struct stor_msg xb;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(b.db, &mb, moved, &xb, &error), 1);
	CU_ASSERT(xb.modseq <= before.highestmodseq); /* the case: X's modseq is below C's */
	stor_msg_free(&xb);
	run_sync(&c, &b, false, 93);
	uint32_t at = 0;
	CU_ASSERT(has_guid(&c, &mb, &gx, &at));
	CU_ASSERT_EQUAL(at, moved);
	stor_msg_list msgs;
	stor_tombstone_list tombs;
	CU_ASSERT_EQUAL_FATAL(stor_changes_since(c.db, &mb, before.highestmodseq, &msgs, &tombs,
						 &error), 0);
	bool new_seen = false, old_gone = false;
	for (size_t i = 0; i < msgs.count; i++)
		new_seen = new_seen || msgs.items[i].uid == moved;
	for (size_t i = 0; i < tombs.count; i++)
		old_gone = old_gone || tombs.items[i].uid == ux;
	CU_ASSERT(new_seen);
	CU_ASSERT(old_gone);
	stor_msg_list_free(&msgs);
	ARRAY_FREE(&tombs);
	stor_mailbox_free(&before);
	run_sync(&c, &a, false, 94);
	run_sync(&a, &b, false, 95);
	three_nodes_end_alike(&a, &b, &c, 3);
	three_nodes_close(&a, &b, &c);
}

static void test_sync_flagged_copy_taken_from_server_1(void)
{
	flagged_copy_taken_from_server(false, false);
}

static void test_sync_flagged_copy_taken_from_server_2(void)
{
	flagged_copy_taken_from_server(false, true);
}

static void test_sync_flagged_copy_taken_from_server_3(void)
{
	flagged_copy_taken_from_server(true, false);
}

/* A message both sides hold at the same UID, where the server's copy is
 * below the last common state's HIGHESTMODSEQ (a replica takes the
 * master's modseq, and syncs between replicas spend modseqs above the
 * master's) but at or above its UIDNEXT, and the client's copy changed
 * since.  The server took it for the client's copy of a message it holds
 * "at another UID" (its own UID) and told the client to drop it and take
 * its own at that UID: the client expunged the one copy it had.  Found by
 * the fault campaign (latency,logmax seed 2, acked-append-present). */
static void test_sync_copy_at_the_same_uid_below_the_common_modseq_stays(void)
{
	struct node a, b, c;
	struct guid mb = three_nodes_open(&a, &b, &c);
	uint32_t u1 = append(&a, &mb, "one\r\n", 0, NULL);
	replicate_append(&a, &b, &mb, u1, "one\r\n");
	replicate_append(&a, &c, &mb, u1, "one\r\n");
	/* B and C change flags apart; their sync spends a modseq above A's. */
	set_flags(&b, &mb, u1, STOR_FLAG_SEEN);
	set_flags(&b, &mb, u1, STOR_FLAG_SEEN | STOR_FLAG_FLAGGED);
	set_flags(&c, &mb, u1, STOR_FLAG_ANSWERED);
	run_sync(&c, &b, false, 71);
	/* A, the master, appends X below that modseq; both replicas take it. */
	struct guid x;
	uint32_t ux = append(&a, &mb, "x\r\n", 0, &x);
	replicate_append(&a, &b, &mb, ux, "x\r\n");
	replicate_append(&a, &c, &mb, ux, "x\r\n");
	/* C's copy changes after the common state. */
	set_flags(&c, &mb, ux, STOR_FLAG_SEEN);
	run_sync(&c, &b, false, 72);
	uint32_t at = 0;
	CU_ASSERT(has_guid(&b, &mb, &x, &at));
	CU_ASSERT_EQUAL(at, ux);
	at = 0;
	CU_ASSERT(has_guid(&c, &mb, &x, &at));
	CU_ASSERT_EQUAL(at, ux);
	CU_ASSERT_EQUAL(flags_of_guid(&b, &mb, &x), STOR_FLAG_SEEN);
	three_nodes_close(&a, &b, &c);
}

static void test_sync_flagged_copy_taken_from_server_4(void)
{
	flagged_copy_taken_from_server(true, true);
}

/* The same after a partition with flags and expunges on both sides, where
 * the node that was cut off syncs first and the other side's nodes have no
 * common sync state yet (their copies came by replication): a first sync
 * (L = 1) must still see that the client moved a message away from the UID
 * the server holds it at, not drop the moved copy and then expunge the old
 * one (that lost every renumbered message). */
static void test_sync_first_sync_after_a_third_node_renumbered_loses_nothing(void)
{
	struct node a, b, c;
	struct guid mb = three_nodes_with_common(&a, &b, &c, 5, 41);
	/* Apart: A (B its replica) and C each flag everything, expunge one
	 * message and append; A also gets later mail. */
	for (uint32_t uid = 1; uid <= 5; uid++) {
		set_flags(&a, &mb, uid, STOR_FLAG_ANSWERED);
		set_flags(&c, &mb, uid, STOR_FLAG_DRAFT);
	}
	expunge(&a, &mb, 2);
	expunge(&c, &mb, 3);
	for (int i = 0; i < 8; i++) {
		append(&a, &mb, "side a\r\n", STOR_FLAG_FLAGGED, NULL);
		append(&c, &mb, "side c\r\n", STOR_FLAG_SEEN, NULL);
	}
	for (int i = 0; i < 10; i++)
		append(&a, &mb, "later\r\n", 0, NULL);
	run_sync(&b, &a, false, 43);
	/* The heal: C with A, then A with B for the first time as client. */
	run_sync(&c, &a, false, 44);
	run_sync(&a, &b, false, 45);
	run_sync(&a, &c, false, 46);
	three_nodes_end_alike(&a, &b, &c, 3 + 16 + 10);
	three_nodes_close(&a, &b, &c);
}


/* A replicated SAVE (8.6): the message at the master's UID, same GUID. */
static void replicate_save(struct node *n, const struct guid *mb, uint32_t uid,
			   const struct guid *g, const char *text)
{
	test_save_at(n->db, mb, uid, g, text);
}

/* The client's copy of X is dropped for the server's copy at another UID,
 * which the same merge moves on (it collides there with a message of the
 * client's): the client's flag change must follow X to where it ends, not
 * be lost because the UID it was to merge into is empty by then (found by
 * the fault campaign: partition seed 201, flag-holds). */
static void test_sync_flag_change_follows_a_copy_the_merge_moves_on(void)
{
	struct node b, c;
	node_open(&b, SID_B);
	node_open(&c, 3);
	struct guid mb = mk_shared_mailbox(&b, &c, "INBOX");
	for (int i = 0; i < 5; i++)
		append(&b, &mb, "common\r\n", 0, NULL);
	run_sync(&c, &b, false, 91);
	/* Apart: C has X at 6 and Z at 13; B has Y at 6 and X at 13 (a sync
	 * with a third node moved it there). */
	struct guid gx, gy, gz;
	uint32_t ux = append(&c, &mb, "x\r\n", 0, &gx);
	CU_ASSERT_EQUAL_FATAL(ux, 6);
	guid_generate(&gy);
	guid_generate(&gz);
	replicate_save(&b, &mb, 6, &gy, "y\r\n");
	replicate_save(&b, &mb, 13, &gx, "x\r\n");
	replicate_save(&c, &mb, 13, &gz, "z\r\n");
	/* C's user flags X, later than anything B did to it. */
	set_flags(&c, &mb, ux, STOR_FLAG_DRAFT | STOR_FLAG_FLAGGED);
	run_sync(&c, &b, false, 92);
	run_sync(&c, &b, false, 93);
	uint32_t want = STOR_FLAG_DRAFT | STOR_FLAG_FLAGGED;
	CU_ASSERT_EQUAL(flags_of_guid(&b, &mb, &gx), want);
	CU_ASSERT_EQUAL(flags_of_guid(&c, &mb, &gx), want);
	CU_ASSERT(dumps_equal(&b, &c));
	node_close(&b);
	node_close(&c);
}

/* Whether n's copy of g holds keyword kw. */
static bool guid_has_keyword(struct node *n, const struct guid *mb, const struct guid *g,
			     const char *kw)
{
	uint32_t uid = 0;
	struct stor_msg m;
	const char *error;
	bool found = false;
	if (!has_guid(n, mb, g, &uid))
		return false;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(n->db, mb, uid, &m, &error), 1);
	for (size_t i = 0; i < m.keywords.count; i++) {
		if (strcmp(m.keywords.items[i], kw) == 0)
			found = true;
	}
	stor_msg_free(&m);
	return found;
}

/* The fault campaign's flag-holds, all classes seed 9206: X and Y reach A
 * and B; C, apart, uses their UIDs for its own messages, and a sync of C
 * with A moves X and Y on A.  B, apart from both, sets keywords on X and Y
 * at their old UIDs (acknowledged).  B's next sync with A: its keyword
 * changes must reach A's copies at the new UIDs, on both sides.  In the
 * campaign X was below the UIDNEXT of B's last sync with A, so B sent its
 * change as a STORE at X's old UID, where A holds only the tombstone of
 * the move: A dropped the change ("expunged here") and B then took A's
 * copy without it.  B's own new messages collide with A's (both appended
 * apart), as in the campaign. */
/* A user's change on B's copy of X made while B's sync with A runs (after
 * B sent its changes), as local_change_send() does. */
struct local_change {
	struct sync_transport t;
	const struct sync_transport *inner;
	struct node *n;
	const struct guid *mb;
	uint32_t uid;
	bool done;
};

static void local_change_send(void *ctx, const void *data, size_t len)
{
	struct local_change *lc = ctx;
	if (!lc->done && memmem(data, len, " SYNC-END", 9) != NULL) {
		lc->done = true;
		store_kw(lc->n, lc->mb, lc->uid, STOR_FLAGS_ADD, 0, "$k2");
	}
	lc->inner->send(lc->inner->ctx, data, len);
}

/* A's merge of a bundle of C (the campaign's 9702: node 1 imported a
 * bundle of node 3 while node 2 was apart), which moves A's messages as a
 * sync with C does. */
static void import_bundle_of(struct node *from, struct node *into)
{
	static const unsigned char secret[] = "0123456789abcdef0123456789abcdef-cluster";
	const struct sync_bundle_key key = { secret, sizeof(secret) - 1, false };
	struct sync_bundle_export_settings ex = { .user = USER, .source_sid = from->sid, .key = key };
	struct buf bundle = BUF_INIT;
	char *error = NULL;
	int r = sync_bundle_export(from->db, &ex, &bundle, NULL, &error);
	if (r < 0)
		fprintf(stderr, "export: %s\n", error);
	CU_ASSERT_EQUAL_FATAL(r, 0);
	char *scratch = test_mkdtemp();
	struct sync_bundle_import_settings im = {
		.own_sid = into->sid, .key = key, .scratch_parent = scratch,
	};
	struct sync_bundle_import_result res;
	r = sync_bundle_import(into->db, &im, bundle.data, bundle.len, &res, &error);
	if (r < 0)
		fprintf(stderr, "import: %s\n", error);
	sync_bundle_import_result_free(&res);
	free(error);
	buf_free(&bundle);
	test_rmtree(scratch);
	free(scratch);
	CU_ASSERT_EQUAL_FATAL(r, 0);
}

static void keywords_follow_a_moved_message(bool b_has_own, bool c_is_client, bool x_synced,
					    bool during, bool by_bundle, uint32_t seed)
{
	struct node a, b, c;
	struct guid mb = three_nodes_open(&a, &b, &c);
	for (int i = 0; i < 3; i++) {
		uint32_t u = append(&a, &mb, "common\r\n", 0, NULL);
		replicate_append(&a, &b, &mb, u, "common\r\n");
		replicate_append(&a, &c, &mb, u, "common\r\n");
	}
	struct guid gx, gy;
	uint32_t ux = append(&a, &mb, "x\r\n", 0, &gx);
	/* In the campaign B's last sync with A came after X and before Y:
	 * X is below the last common UIDNEXT there (B sends its change as a
	 * STORE at X's old UID), Y above it (a SAVE). */
	if (x_synced)
		run_sync(&b, &a, false, seed + 5);
	else
		replicate_append(&a, &b, &mb, ux, "x\r\n");
	uint32_t uy = append(&a, &mb, "y\r\n", STOR_FLAG_SEEN, &gy);
	replicate_append(&a, &b, &mb, uy, "y\r\n");
	/* C, apart, used both UIDs. */
	CU_ASSERT_EQUAL(append(&c, &mb, "z1\r\n", 0, NULL), ux);
	CU_ASSERT_EQUAL(append(&c, &mb, "z2\r\n", STOR_FLAG_FLAGGED, NULL), uy);
	/* A, also apart from B, gets more mail, then meets C. */
	append(&a, &mb, "a1\r\n", 0, NULL);
	if (by_bundle)
		import_bundle_of(&c, &a);
	else if (c_is_client)
		run_sync(&c, &a, false, seed);
	else
		run_sync(&a, &c, false, seed);
	uint32_t moved = 0;
	CU_ASSERT_FATAL(has_guid(&a, &mb, &gx, &moved));
	CU_ASSERT_NOT_EQUAL(moved, ux);
	/* B, apart: keywords on X and Y, acknowledged; and mail of its own. */
	store_kw(&b, &mb, ux, STOR_FLAGS_ADD, 0, "$k1");
	store_kw(&b, &mb, ux, STOR_FLAGS_ADD, 0, "$k3");
	store_kw(&b, &mb, uy, STOR_FLAGS_ADD, 0, "$k3");
	if (b_has_own) {
		append(&b, &mb, "b1\r\n", STOR_FLAG_ANSWERED, NULL);
		append(&b, &mb, "b2\r\n", 0, NULL);
	}
	if (during) {
		/* B's user sets $k2 on X after B sent its changes: the
		 * answer's state of X lacks it. */
		struct sync_settings set = { .peer_sid = a.sid, .user = USER, .step_budget = 7 };
		struct sync_pipe *p = sync_pipe_create(seed, 1 + seed % 97);
		struct local_change lc = { { local_change_send, &lc }, sync_pipe_client_transport(p),
					   &b, &mb, ux, false };
		struct sync_client *cl = sync_client_create(b.db, &set, &lc.t);
		struct sync_server *sv = sync_server_create(a.db, b.sid, sync_pipe_server_transport(p));
		sync_server_set_budget(sv, 1 + seed % 5);
		CU_ASSERT_EQUAL(sync_pipe_run(p, cl, sv, 1000000), SYNC_STEP_DONE);
		CU_ASSERT(lc.done);
		sync_client_destroy(&cl);
		sync_server_destroy(&sv);
		sync_pipe_destroy(&p);
		CU_ASSERT(guid_has_keyword(&a, &mb, &gx, "$k2"));
		CU_ASSERT(guid_has_keyword(&b, &mb, &gx, "$k2"));
	} else {
		struct sync_run r = run_sync(&b, &a, false, seed + 1);
		/* B takes A's copies where A moved them, in the same round:
		 * no second round that compares every message (only the
		 * first, when B had no common state with A). */
		CU_ASSERT_EQUAL(r.report.mailboxes_full, x_synced ? 0 : 1);
	}
	CU_ASSERT(guid_has_keyword(&a, &mb, &gx, "$k1"));
	CU_ASSERT(guid_has_keyword(&a, &mb, &gx, "$k3"));
	CU_ASSERT(guid_has_keyword(&b, &mb, &gx, "$k1"));
	CU_ASSERT(guid_has_keyword(&b, &mb, &gx, "$k3"));
	CU_ASSERT(guid_has_keyword(&a, &mb, &gy, "$k3"));
	CU_ASSERT(guid_has_keyword(&b, &mb, &gy, "$k3"));
	CU_ASSERT(dumps_equal(&a, &b));
	run_sync(&c, &a, false, seed + 2);
	run_sync(&c, &b, false, seed + 3);
	CU_ASSERT(guid_has_keyword(&c, &mb, &gx, "$k1"));
	CU_ASSERT(guid_has_keyword(&c, &mb, &gx, "$k3"));
	three_nodes_end_alike(&a, &b, &c, 3 + 2 + 2 + 1 + (b_has_own ? 2 : 0));
	three_nodes_close(&a, &b, &c);
}

static void test_sync_keywords_follow_a_moved_message(void)
{
	for (uint32_t seed = 0; seed < 6; seed++) {
		for (unsigned v = 0; v < 16; v++)
			keywords_follow_a_moved_message(v & 1, v & 2, v & 4, v & 8, false,
							200 + 20 * seed + v);
	}
}

/* flag-holds all classes 9702 and 9824 (traced on their kept data): the
 * path above, with A's copy of X moved by the import of a bundle of C
 * (9702) rather than by a sync with C. */
static void test_sync_keywords_follow_a_message_a_bundle_moved(void)
{
	for (uint32_t seed = 0; seed < 3; seed++) {
		for (unsigned v = 0; v < 8; v++)
			keywords_follow_a_moved_message(v & 1, false, true, v & 2, true,
							600 + 20 * seed + v);
	}
}

/* flag-holds 9747: node B, woken from a pause, took a STORE of \Draft on
 * X by itself (acknowledged); its next sync with A compared every message
 * ("went back in time").  However the mailboxes moved meanwhile (A
 * renumbered X in a sync with C, set another flag on X, took new mail),
 * and whichever of the two is the client, the acknowledged flag holds. */
static void full_compare_keeps_a_flag_set_apart(bool b_is_client, bool moved, bool a_changed,
						 bool full, uint32_t seed)
{
	struct node a, b, c;
	struct guid mb = three_nodes_open(&a, &b, &c);
	for (int i = 0; i < 3; i++) {
		uint32_t u = append(&a, &mb, "common\r\n", 0, NULL);
		replicate_append(&a, &b, &mb, u, "common\r\n");
		replicate_append(&a, &c, &mb, u, "common\r\n");
	}
	struct guid gx;
	uint32_t ux = append(&a, &mb, "x\r\n", STOR_FLAG_SEEN, &gx);
	replicate_append(&a, &b, &mb, ux, "x\r\n");
	run_sync(&b, &a, false, seed + 1);
	if (moved) {
		CU_ASSERT_EQUAL(append(&c, &mb, "z1\r\n", 0, NULL), ux);
		run_sync(&a, &c, false, seed + 2);
		uint32_t at = 0;
		CU_ASSERT_FATAL(has_guid(&a, &mb, &gx, &at));
		CU_ASSERT_NOT_EQUAL(at, ux);
	}
	append(&a, &mb, "a1\r\n", 0, NULL);
	if (a_changed) {
		uint32_t at = 0;
		CU_ASSERT_FATAL(has_guid(&a, &mb, &gx, &at));
		store_kw(&a, &mb, at, STOR_FLAGS_ADD, STOR_FLAG_FLAGGED, NULL);
	}
	/* B's user, later than all of A's changes. */
	store_kw(&b, &mb, ux, STOR_FLAGS_ADD, STOR_FLAG_DRAFT, NULL);
	if (b_is_client)
		run_sync(&b, &a, full, seed + 3);
	else
		run_sync(&a, &b, full, seed + 3);
	uint32_t want = STOR_FLAG_SEEN | STOR_FLAG_DRAFT | (a_changed ? STOR_FLAG_FLAGGED : 0);
	CU_ASSERT_EQUAL(flags_of_guid(&a, &mb, &gx), want);
	CU_ASSERT_EQUAL(flags_of_guid(&b, &mb, &gx), want);
	if (flags_of_guid(&a, &mb, &gx) != want || flags_of_guid(&b, &mb, &gx) != want)
		fprintf(stderr, "\nb_is_client %d moved %d a_changed %d full %d: A %#x B %#x\n",
			b_is_client, moved, a_changed, full, flags_of_guid(&a, &mb, &gx),
			flags_of_guid(&b, &mb, &gx));
	CU_ASSERT(dumps_equal(&a, &b));
	three_nodes_close(&a, &b, &c);
}

static void test_sync_full_compare_keeps_a_flag_set_apart(void)
{
	for (unsigned v = 0; v < 16; v++)
		full_compare_keeps_a_flag_set_apart(v & 1, v & 2, v & 4, v & 8, 900 + 10 * v);
}

/* The merge plans new UIDs for conflicts from max(cu, su), but a client's
 * SAVE may name a UID at or above the cu it sent (a message that reached
 * the client between its SYNC-BEGIN and the scan of its changes).  Our
 * conflicting message S was planned to move to that very UID u while the
 * client's message there was to be stored at u: every message must end
 * here exactly once, and the answer must tell the client where each one
 * is, at UIDs it can take. */
static void test_sync_client_message_at_a_planned_renumber_uid(void)
{
	struct node b;
	struct buf out = BUF_INIT;
	node_open(&b, SID_B);
	struct guid mb = mk_mailbox(&b, "INBOX");
	append(&b, &mb, "Subject: common\r\n\r\nc\r\n", 0, NULL);
	struct stor_mailbox x = get_mailbox(&b, "INBOX");
	uint64_t M = x.highestmodseq;
	uint32_t uv = x.uidvalidity;
	stor_mailbox_free(&x);
	/* Ours since the last sync, at UID 2. */
	struct guid gs;
	CU_ASSERT_EQUAL(append(&b, &mb, "Subject: ours\r\n\r\ns\r\n", STOR_FLAG_FLAGGED, &gs), 2);
	struct sync_transport t = { capture_send, &out };
	struct sync_server *sv = sync_server_create(b.db, SID_A, &t);
	sync_server_set_budget(sv, 1);
	struct guid g2, g3;
	guid_generate(&g2);
	guid_generate(&g3);
	char hex[GUID_HEX_SIZE], h2[GUID_HEX_SIZE], h3[GUID_HEX_SIZE], line[2048];
	guid_to_hex(&mb, hex);
	guid_to_hex(&g2, h2);
	guid_to_hex(&g3, h3);
	/* The client: L = 2, cu = 3, yet it sends its messages at 2 and 3. */
	snprintf(line, sizeof(line), "C1 MBOX 1 %s INBOX %u %s\r\nC2 SELECT 1\r\n"
		 "C3 SYNC-BEGIN %llu %llu 2 3\r\n"
		 "C4 SAVE 1700000000+0000 2 %llu %s (\\Seen) {3}\r\ntwo\r\n"
		 "C5 SAVE 1700000000+0000 3 %llu %s (\\Draft) {5}\r\nthree\r\n"
		 "C6 SYNC-END\r\n",
		 USER, uv, hex, (unsigned long long)M, (unsigned long long)M + 2,
		 (unsigned long long)M + 1, h2, (unsigned long long)M + 2, h3);
	CU_ASSERT_EQUAL(sync_server_feed(sv, line, strlen(line)), 0);
	for (int i = 0; i < 1000 && sync_server_busy(sv); i++)
		CU_ASSERT(sync_server_step(sv) >= 0);
	CU_ASSERT_FALSE(sync_server_busy(sv));
	/* Every message here once: the common one, ours, and the client's two. */
	CU_ASSERT_EQUAL(count_unique(&b, "INBOX"), 4);
	uint32_t us = 0, u2 = 0, u3 = 0;
	CU_ASSERT(has_guid(&b, &mb, &gs, &us));
	CU_ASSERT(has_guid(&b, &mb, &g2, &u2));
	CU_ASSERT(has_guid(&b, &mb, &g3, &u3));
	CU_ASSERT(flags_of_guid(&b, &mb, &gs) == STOR_FLAG_FLAGGED);
	CU_ASSERT(flags_of_guid(&b, &mb, &g2) == STOR_FLAG_SEEN);
	CU_ASSERT(flags_of_guid(&b, &mb, &g3) == STOR_FLAG_DRAFT);
	buf_append_byte(&out, '\0');
	const char *o = (const char *)out.data;
	/* The client keeps its message at 3 (no UID it holds is a target of
	 * ours), and ours goes to a UID above everything the client named. */
	CU_ASSERT(u3 == 3);
	CU_ASSERT(us > 3 && u2 > 3 && us != u2);
	char want[64];
	snprintf(want, sizeof(want), "C6 UIDFIX 2 %u\r\n", u2);
	CU_ASSERT_PTR_NOT_NULL(strstr(o, want));
	if (strstr(o, want) == NULL)
		fprintf(stderr, "\nanswer:\n%s", o);
	sync_server_destroy(&sv);
	buf_free(&out);
	node_close(&b);
}

/* The same through a real client: a message reaches the client (as by
 * replication) after it read its UIDNEXT for the mailbox and before it
 * scans its changes, so its SAVE names a UID at its own cu, where the
 * server would have moved its conflicting message.  The client could not
 * store ours there and the sync failed; no message may be dropped, and
 * both sides end alike. */
struct inject {
	struct sync_transport t;
	const struct sync_transport *inner;
	struct node *n;
	const struct guid *mb;
	bool done;
	struct guid g;
};

static void inject_send(void *ctx, const void *data, size_t len)
{
	struct inject *in = ctx;
	if (!in->done && len >= 5 && memmem(data, len, " MBOX ", 6) != NULL) {
		in->done = true;
		append(in->n, in->mb, "Subject: late\r\n\r\nlate\r\n", STOR_FLAG_DRAFT, &in->g);
	}
	in->inner->send(in->inner->ctx, data, len);
}

static void test_sync_late_client_message_at_a_planned_renumber_uid(void)
{
	for (uint32_t seed = 0; seed < 8; seed++) {
		struct node a, b;
		node_open(&a, SID_A);
		node_open(&b, SID_B);
		struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
		append(&a, &mb, "common\r\n", 0, NULL);
		run_sync(&a, &b, false, 400 + seed);
		struct guid gs, g2;
		append(&b, &mb, "ours\r\n", STOR_FLAG_FLAGGED, &gs);
		append(&a, &mb, "theirs\r\n", STOR_FLAG_SEEN, &g2);
		struct sync_settings set = { .peer_sid = b.sid, .user = USER, .step_budget = 7 };
		struct sync_pipe *p = sync_pipe_create(seed, seed % 3 == 0 ? 0 : 1 + seed % 97);
		struct inject in = { { inject_send, &in }, sync_pipe_client_transport(p), &a, &mb,
				     false, { { 0 } } };
		struct sync_client *cl = sync_client_create(a.db, &set, &in.t);
		struct sync_server *sv = sync_server_create(b.db, a.sid, sync_pipe_server_transport(p));
		sync_server_set_budget(sv, 1 + seed % 5);
		enum sync_step_result r = sync_pipe_run(p, cl, sv, 1000000);
		if (r != SYNC_STEP_DONE)
			fprintf(stderr, "sync failed: %s / %s\n",
				sync_client_error(cl) ? sync_client_error(cl) : "-",
				sync_server_error(sv) ? sync_server_error(sv) : "-");
		CU_ASSERT_EQUAL(r, SYNC_STEP_DONE);
		CU_ASSERT(in.done);
		sync_client_destroy(&cl);
		sync_server_destroy(&sv);
		sync_pipe_destroy(&p);
		run_sync(&a, &b, false, 500 + seed);
		CU_ASSERT_EQUAL(count_unique(&a, "INBOX"), 4);
		CU_ASSERT_EQUAL(count_unique(&b, "INBOX"), 4);
		CU_ASSERT(has_guid(&a, &mb, &in.g, NULL) && has_guid(&b, &mb, &in.g, NULL));
		CU_ASSERT(has_guid(&a, &mb, &gs, NULL) && has_guid(&b, &mb, &gs, NULL));
		CU_ASSERT(has_guid(&a, &mb, &g2, NULL) && has_guid(&b, &mb, &g2, NULL));
		CU_ASSERT(flags_of_guid(&b, &mb, &in.g) == STOR_FLAG_DRAFT);
		CU_ASSERT(flags_of_guid(&a, &mb, &gs) == STOR_FLAG_FLAGGED);
		CU_ASSERT(dumps_equal(&a, &b));
		check_mailbox(&a, &mb);
		check_mailbox(&b, &mb);
		node_close(&a);
		node_close(&b);
	}
}

/* Whether the flag list that starts at p (after its "(") names flag. */
static bool flag_list_has(const char *p, const char *flag)
{
	const char *end = strchr(p, ')');
	size_t n = strlen(flag);
	for (const char *q = p; end != NULL && q + n <= end; q++) {
		if (strncmp(q, flag, n) == 0 && (q[n] == ' ' || q[n] == ')') &&
		    (q == p || q[-1] == ' '))
			return true;
	}
	return false;
}

/* A writer between the merge's steps (an IMAP STORE on this node, or a
 * replicated change) gives the message a modseq at or above the merge's
 * N before the step that applies the client's change to it: the merge's
 * decision, written at N, was silently skipped as older than the
 * message's modseq, and the client's change was lost on both sides. */
static void test_sync_flag_change_survives_a_writer_between_merge_steps(void)
{
	struct node b;
	struct buf out = BUF_INIT;
	node_open(&b, SID_B);
	struct guid mb = mk_mailbox(&b, "INBOX");
	for (int i = 0; i < 3; i++)
		append(&b, &mb, "Subject: m\r\n\r\nm\r\n", 0, NULL);
	struct stor_mailbox x = get_mailbox(&b, "INBOX");
	uint64_t M = x.highestmodseq;
	uint32_t uv = x.uidvalidity;
	stor_mailbox_free(&x);
	/* Ours since the last sync: our HIGHESTMODSEQ is the client's. */
	set_flags(&b, &mb, 2, STOR_FLAG_ANSWERED);
	struct sync_transport t = { capture_send, &out };
	struct sync_server *sv = sync_server_create(b.db, SID_A, &t);
	sync_server_set_budget(sv, 1);
	char hex[GUID_HEX_SIZE], line[2048];
	guid_to_hex(&mb, hex);
	snprintf(line, sizeof(line), "C1 MBOX 1 %s INBOX %u %s\r\nC2 SELECT 1\r\n"
		 "C3 SYNC-BEGIN %llu %llu 4 4\r\n"
		 "C4 STORE 1 %llu (\\Seen) (\\*)\r\n"
		 "C5 STORE 2 %llu (\\Seen) (\\*)\r\n"
		 "C6 STORE 3 %llu (\\Seen) (\\*) STAMPS (\\Seen %llu 1700000000000)\r\n"
		 "C7 SYNC-END\r\n",
		 USER, uv, hex, (unsigned long long)M, (unsigned long long)M + 1,
		 (unsigned long long)M + 1, (unsigned long long)M + 1, (unsigned long long)M + 1,
		 (unsigned long long)M + 1);
	CU_ASSERT_EQUAL(sync_server_feed(sv, line, strlen(line)), 0);
	CU_ASSERT(sync_server_busy(sv));
	/* A user here flags the last message before the merge reaches it
	 * (the first step applied the first of the client's changes). */
	store_kw(&b, &mb, 3, STOR_FLAGS_ADD, STOR_FLAG_FLAGGED, NULL);
	for (int i = 0; i < 1000 && sync_server_busy(sv); i++)
		CU_ASSERT(sync_server_step(sv) >= 0);
	CU_ASSERT_FALSE(sync_server_busy(sv));
	struct stor_msg m1;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(b.db, &mb, 3, &m1, &error), 1);
	CU_ASSERT_EQUAL(m1.flags, STOR_FLAG_SEEN | STOR_FLAG_FLAGGED);
	/* The client learns the merged state. */
	buf_append_byte(&out, '\0');
	char want[64];
	snprintf(want, sizeof(want), "C7 FLAGS 3 %llu (", (unsigned long long)m1.modseq);
	const char *fl = strstr((const char *)out.data, want);
	CU_ASSERT(fl != NULL && flag_list_has(fl + strlen(want), "\\Seen") &&
		  flag_list_has(fl + strlen(want), "\\Flagged"));
	if (fl == NULL)
		fprintf(stderr, "\nanswer:\n%s", (const char *)out.data);
	stor_msg_free(&m1);
	sync_server_destroy(&sv);
	buf_free(&out);
	node_close(&b);
}

/* The same for our own change the client has not seen: the merge scanned
 * it, and wrote it back from that scan at N after a user here had changed
 * the message again (with a modseq below N: the client's HIGHESTMODSEQ is
 * above ours): the user's later change was undone. */
static void test_sync_own_change_survives_a_writer_between_merge_steps(void)
{
	struct node b;
	struct buf out = BUF_INIT;
	node_open(&b, SID_B);
	struct guid mb = mk_mailbox(&b, "INBOX");
	for (int i = 0; i < 3; i++)
		append(&b, &mb, "Subject: m\r\n\r\nm\r\n", 0, NULL);
	struct stor_mailbox x = get_mailbox(&b, "INBOX");
	uint64_t M = x.highestmodseq;
	uint32_t uv = x.uidvalidity;
	stor_mailbox_free(&x);
	set_flags(&b, &mb, 2, STOR_FLAG_ANSWERED);
	struct sync_transport t = { capture_send, &out };
	struct sync_server *sv = sync_server_create(b.db, SID_A, &t);
	sync_server_set_budget(sv, 1);
	char hex[GUID_HEX_SIZE], line[2048];
	guid_to_hex(&mb, hex);
	/* The client changed UID 1 several times: its HIGHESTMODSEQ is above
	 * ours. */
	snprintf(line, sizeof(line), "C1 MBOX 1 %s INBOX %u %s\r\nC2 SELECT 1\r\n"
		 "C3 SYNC-BEGIN %llu %llu 4 4\r\n"
		 "C4 STORE 1 %llu (\\Seen) (\\*)\r\n"
		 "C5 SYNC-END\r\n",
		 USER, uv, hex, (unsigned long long)M, (unsigned long long)M + 5,
		 (unsigned long long)M + 5);
	CU_ASSERT_EQUAL(sync_server_feed(sv, line, strlen(line)), 0);
	CU_ASSERT(sync_server_busy(sv));
	/* A user here flags UID 2 after the merge scanned it (SYNC-END ran
	 * the merge's first step: the scan, and the client's change). */
	store_kw(&b, &mb, 2, STOR_FLAGS_ADD, STOR_FLAG_FLAGGED, NULL);
	for (int i = 0; i < 1000 && sync_server_busy(sv); i++)
		CU_ASSERT(sync_server_step(sv) >= 0);
	CU_ASSERT_FALSE(sync_server_busy(sv));
	struct stor_msg m2;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(b.db, &mb, 2, &m2, &error), 1);
	CU_ASSERT_EQUAL(m2.flags, STOR_FLAG_ANSWERED | STOR_FLAG_FLAGGED);
	buf_append_byte(&out, '\0');
	char want[64];
	snprintf(want, sizeof(want), "C5 FLAGS 2 %llu (", (unsigned long long)m2.modseq);
	const char *fl = strstr((const char *)out.data, want);
	CU_ASSERT(fl != NULL && flag_list_has(fl + strlen(want), "\\Answered") &&
		  flag_list_has(fl + strlen(want), "\\Flagged"));
	if (fl == NULL)
		fprintf(stderr, "\nanswer:\n%s", (const char *)out.data);
	stor_msg_free(&m2);
	sync_server_destroy(&sv);
	buf_free(&out);
	node_close(&b);
}

/* ---- A write on the client while its sync runs (SPEC.md 10.3 "A write
 * during the sync") ---- */

struct local_write {
	struct node *n;
	const struct guid *mb;
	uint32_t uid;
	uint32_t flag;
	int count;
	uint64_t hms_after; /* the client's HIGHESTMODSEQ right after them */
};

static uint64_t hms_of(struct node *n, const struct guid *mb)
{
	struct stor_mailbox x;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(n->db, mb, &x, &error), 1);
	uint64_t h = x.highestmodseq;
	stor_mailbox_free(&x);
	return h;
}

static struct stor_msg get_msg(struct node *n, const struct guid *mb, uint32_t uid)
{
	struct stor_msg m;
	const char *error;
	memset(&m, 0, sizeof(m));
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(n->db, mb, uid, &m, &error), 1);
	return m;
}

static uint32_t flags_of(struct node *n, const struct guid *mb, uint32_t uid)
{
	struct stor_msg m = get_msg(n, mb, uid);
	uint32_t f = m.flags;
	stor_msg_free(&m);
	return f;
}

static uint64_t modseq_of(struct node *n, const struct guid *mb, uint32_t uid)
{
	struct stor_msg m = get_msg(n, mb, uid);
	uint64_t ms = m.modseq;
	stor_msg_free(&m);
	return ms;
}

static void local_write_fn(void *arg)
{
	struct local_write *w = arg;
	for (int i = 0; i < w->count; i++)
		store_kw(w->n, w->mb, w->uid, i % 2 == 0 ? STOR_FLAGS_ADD : STOR_FLAGS_REMOVE,
			 i % 2 == 0 ? w->flag : STOR_FLAG_DRAFT, NULL);
	w->hms_after = hms_of(w->n, w->mb);
}

/* A sync client applies the server's answer at the modseqs the merge gave
 * (N, or the server's own), but a user on the client node changed the
 * mailbox after the sync began: its HIGHESTMODSEQ passed them already.
 * Written at them, the answer's changes sat at or below the HIGHESTMODSEQ
 * an IMAP client of that node cached after its own change: one modseq
 * stood for two states, and CONDSTORE/QRESYNC never told it (the
 * campaign's qresync-cache).  Variants: 0, the answer keeps the server's
 * modseq, which the local write took too; 1, both sides changed (N), two
 * local writes go past N; 2, the local write is to the very message the
 * server changed, at a modseq below the answer's (the answer's state lacks
 * it: it must not overwrite it).  Every change the answer brings must land
 * above the client's HIGHESTMODSEQ of that moment, no user's change is
 * lost, and the sync ends with both copies equal, modseqs included. */
static void client_write_during_sync(int variant, uint32_t seed)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	for (int i = 0; i < 3; i++)
		append(&a, &mb, "Subject: m\r\n\r\nm\r\n", 0, NULL);
	run_sync(&a, &b, false, seed);
	CU_ASSERT_FATAL(dumps_equal(&a, &b));
	/* The server's change of UID 1 (three of them in variant 2: its
	 * modseq is above the client's local write). */
	store_kw(&b, &mb, 1, STOR_FLAGS_ADD, STOR_FLAG_FLAGGED, NULL);
	if (variant == 2) {
		store_kw(&b, &mb, 1, STOR_FLAGS_ADD, 0, "$x");
		store_kw(&b, &mb, 1, STOR_FLAGS_REMOVE, 0, "$x");
	}
	if (variant == 1)
		store_kw(&a, &mb, 3, STOR_FLAGS_ADD, STOR_FLAG_ANSWERED, NULL);
	struct local_write w = {
		&a, &mb, variant == 2 ? 1 : 2, STOR_FLAG_SEEN, variant == 1 ? 3 : 1, 0,
	};
	run_sync_at(&a, &b, false, seed + 1, false, local_write_fn, &w);
	/* The answer's change of UID 1 lands above what an IMAP client of A
	 * saw after the local write. */
	CU_ASSERT(modseq_of(&a, &mb, 1) > w.hms_after);
	if (modseq_of(&a, &mb, 1) <= w.hms_after)
		fprintf(stderr, "\nvariant %d seed %u: UID 1 at %llu, HIGHESTMODSEQ after the local "
			"write %llu\n", variant, seed, (unsigned long long)modseq_of(&a, &mb, 1),
			(unsigned long long)w.hms_after);
	/* Nothing lost: the server's \Flagged and the local \Seen. */
	CU_ASSERT(flags_of(&a, &mb, 1) & STOR_FLAG_FLAGGED);
	CU_ASSERT(flags_of(&a, &mb, w.uid) & STOR_FLAG_SEEN);
	CU_ASSERT(flags_of(&b, &mb, w.uid) & STOR_FLAG_SEEN);
	CU_ASSERT(flags_of(&b, &mb, 1) & STOR_FLAG_FLAGGED);
	/* The sync itself ends with both copies equal, modseqs included. */
	CU_ASSERT(dumps_equal(&a, &b));
	check_modseqs_equal(&a, &b, &mb);
	/* And a following sync with nothing new changes nothing. */
	uint64_t ha = hms_of(&a, &mb);
	run_sync(&a, &b, false, seed + 2);
	CU_ASSERT(dumps_equal(&a, &b));
	check_modseqs_equal(&a, &b, &mb);
	CU_ASSERT_EQUAL(hms_of(&a, &mb), ha);
	check_mailbox(&a, &mb);
	check_mailbox(&b, &mb);
	node_close(&a);
	node_close(&b);
}

static void test_sync_answer_lands_above_a_client_write_during_the_sync(void)
{
	for (int v = 0; v < 3; v++) {
		for (uint32_t seed = 0; seed < 6; seed++)
			client_write_during_sync(v, 700 + 10 * (uint32_t)v + seed);
	}
}

/* A SAVE line of the server's at a UID where the client holds its sync
 * engine's tombstone of the same GUID, while a user expunged that GUID
 * (here a GUID tombstone the last sync did not carry): the client keeps
 * it expunged and tells the server in its second sync.  Told as the
 * engine's expunge (no GUIDS), the server dropped its copy as a move and
 * kept no trace of the user's expunge: a third node that still held a
 * copy (one the expunge missed) brought it back there, kept at a fresh UID
 * as possibly the last copy anywhere. */
static void user_expunged_guid_under_engine_tombstone(bool c_is_client, uint32_t seed)
{
	struct node a, b, c;
	struct guid mb = three_nodes_with_common(&a, &b, &c, 1, seed);
	run_sync(&a, &b, false, seed + 2);
	const char *error;
	struct stor_sync_state st;
	CU_ASSERT_EQUAL_FATAL(stor_sync_state_get(a.db, SID_B, &mb, &st, &error), 1);
	/* G reaches every node at UID 2 (live replication). */
	struct guid g;
	CU_ASSERT_EQUAL_FATAL(append(&b, &mb, "message g\r\n", 0, &g), 2);
	replicate_save(&a, &mb, 2, &g, "message g\r\n");
	replicate_save(&c, &mb, 2, &g, "message g\r\n");
	/* On A the engine dropped its copy at 2, and A knows a user expunged
	 * G (a GUID tombstone not above the last sync with B: not sent as a
	 * GONE line). */
	uint32_t u = 2;
	CU_ASSERT_EQUAL_FATAL(stor_msg_expunge_kind(a.db, &mb, &u, 1, 0, false, NULL, &error), 0);
	size_t added = 0;
	CU_ASSERT_EQUAL_FATAL(stor_guid_tombs_add(a.db, &mb, &g, 1, st.highestmodseq, &added,
						  &error), 0);
	CU_ASSERT_EQUAL_FATAL(added, 1);
	run_sync(&a, &b, false, seed + 3);
	CU_ASSERT(!has_guid(&a, &mb, &g, NULL));
	CU_ASSERT(!has_guid(&b, &mb, &g, NULL));
	/* B knows it as a user's expunge now. */
	CU_ASSERT_EQUAL(stor_guid_tomb_get(b.db, &mb, &g, NULL, &error), 1);
	/* C's copy, which the expunge missed, does not come back to B. */
	if (c_is_client)
		run_sync(&c, &b, false, seed + 4);
	else
		run_sync(&b, &c, false, seed + 4);
	CU_ASSERT(!has_guid(&b, &mb, &g, NULL));
	CU_ASSERT(!has_guid(&c, &mb, &g, NULL));
	run_sync(&a, &b, false, seed + 5);
	run_sync(&c, &a, false, seed + 6);
	run_sync(&a, &b, false, seed + 7);
	CU_ASSERT(!has_guid(&a, &mb, &g, NULL));
	CU_ASSERT(!has_guid(&b, &mb, &g, NULL));
	CU_ASSERT(!has_guid(&c, &mb, &g, NULL));
	three_nodes_end_alike(&a, &b, &c, 1);
	check_mailbox(&a, &mb);
	check_mailbox(&b, &mb);
	check_mailbox(&c, &mb);
	three_nodes_close(&a, &b, &c);
}

static void test_sync_user_expunged_guid_under_engine_tombstone_goes_as_a_users(void)
{
	for (uint32_t seed = 0; seed < 4; seed++) {
		user_expunged_guid_under_engine_tombstone(true, 760 + 10 * seed);
		user_expunged_guid_under_engine_tombstone(false, 765 + 10 * seed);
	}
}

/* The fault campaign's acked-expunge-holds (partition seeds 200, 201, 1,
 * 2): X reaches A and B by live replication; apart, a user expunges X on
 * A, while a sync of B with C (which used X's UID for another message)
 * renumbers X on B and C.  After the heal X must stay expunged everywhere,
 * whichever side of each sync is the client: the tombstone B keeps at X's
 * old UID is the engine's (the renumbering), A's is the user's, and A's
 * names a UID that no longer holds X on B. */
static void acked_expunge_after_renumber(bool a_is_client)
{
	struct node a, b, c;
	struct guid mb = three_nodes_with_common(&a, &b, &c, 3, 51);
	struct guid x, y;
	uint32_t xu = append(&a, &mb, "message x\r\n", STOR_FLAG_FLAGGED, &x);
	replicate_save(&b, &mb, xu, &x, "message x\r\n");
	uint32_t yu = append(&c, &mb, "message y\r\n", 0, &y);
	CU_ASSERT_EQUAL_FATAL(xu, yu);
	/* Apart: the user expunges X on A (the client was told OK). */
	expunge(&a, &mb, xu);
	run_sync(&c, &b, false, 53);
	uint32_t moved = 0;
	CU_ASSERT_FATAL(has_guid(&b, &mb, &x, &moved));
	CU_ASSERT_NOT_EQUAL(moved, xu); /* the scenario: X lives elsewhere on B */
	/* The heal. */
	if (a_is_client)
		run_sync(&a, &b, false, 54);
	else
		run_sync(&b, &a, false, 54);
	CU_ASSERT(!has_guid(&a, &mb, &x, NULL));
	CU_ASSERT(!has_guid(&b, &mb, &x, NULL));
	run_sync(&c, &a, false, 55);
	run_sync(&b, &c, false, 56);
	run_sync(&a, &b, false, 57);
	CU_ASSERT(!has_guid(&a, &mb, &x, NULL));
	CU_ASSERT(!has_guid(&b, &mb, &x, NULL));
	CU_ASSERT(!has_guid(&c, &mb, &x, NULL));
	CU_ASSERT(has_guid(&a, &mb, &y, NULL));
	three_nodes_end_alike(&a, &b, &c, 3 + 1);
	check_mailbox(&a, &mb);
	check_mailbox(&b, &mb);
	check_mailbox(&c, &mb);
	three_nodes_close(&a, &b, &c);
}

static void test_sync_acked_expunge_after_renumber_client_expunged(void)
{
	acked_expunge_after_renumber(true);
}

static void test_sync_acked_expunge_after_renumber_server_expunged(void)
{
	acked_expunge_after_renumber(false);
}

/* The open half of acked-expunge-holds: X reaches A and C; a user
 * expunges X on A while B (apart, never holding X) used X's UID for Y.  A
 * then syncs with B first: Y moves, and B, which never held X, must learn
 * the expunge by GUID.  When C (apart meanwhile, still holding X) later
 * syncs with B, X must not land on B, and C must lose it; after the heal X
 * is nowhere and Y everywhere.  Each sync in each direction (bit 0: A-B
 * with A the client, bit 1: B-C with B the client). */
static void acked_expunge_reaches_a_third_node(unsigned dirs)
{
	struct node a, b, c;
	struct guid mb = three_nodes_with_common(&a, &b, &c, 3, 81);
	run_sync(&c, &b, false, 83);
	struct guid x, y;
	uint32_t xu = append(&a, &mb, "message x\r\n", 0, &x);
	replicate_save(&c, &mb, xu, &x, "message x\r\n");
	uint32_t yu = append(&b, &mb, "message y\r\n", 0, &y);
	CU_ASSERT_EQUAL_FATAL(xu, yu);
	expunge(&a, &mb, xu);
	if (dirs & 1)
		run_sync(&a, &b, false, 84);
	else
		run_sync(&b, &a, false, 84);
	CU_ASSERT(!has_guid(&b, &mb, &x, NULL));
	CU_ASSERT(has_guid(&b, &mb, &y, NULL));
	/* C, which still holds X, meets B. */
	if (dirs & 2)
		run_sync(&b, &c, false, 85);
	else
		run_sync(&c, &b, false, 85);
	CU_ASSERT(!has_guid(&b, &mb, &x, NULL));
	CU_ASSERT(!has_guid(&c, &mb, &x, NULL));
	/* The heal, A meeting C's side through B first. */
	run_sync(&a, &b, false, 86);
	run_sync(&c, &a, false, 87);
	run_sync(&b, &c, false, 88);
	run_sync(&a, &b, false, 89);
	CU_ASSERT(!has_guid(&a, &mb, &x, NULL));
	CU_ASSERT(!has_guid(&b, &mb, &x, NULL));
	CU_ASSERT(!has_guid(&c, &mb, &x, NULL));
	CU_ASSERT(has_guid(&a, &mb, &y, NULL));
	CU_ASSERT(has_guid(&c, &mb, &y, NULL));
	three_nodes_end_alike(&a, &b, &c, 3 + 1);
	check_mailbox(&a, &mb);
	check_mailbox(&b, &mb);
	check_mailbox(&c, &mb);
	three_nodes_close(&a, &b, &c);
}

static void test_sync_acked_expunge_reaches_a_third_node_0(void)
{
	acked_expunge_reaches_a_third_node(0);
}

static void test_sync_acked_expunge_reaches_a_third_node_1(void)
{
	acked_expunge_reaches_a_third_node(1);
}

static void test_sync_acked_expunge_reaches_a_third_node_2(void)
{
	acked_expunge_reaches_a_third_node(2);
}

static void test_sync_acked_expunge_reaches_a_third_node_3(void)
{
	acked_expunge_reaches_a_third_node(3);
}

/* A user's expunge leaves a GUID tombstone, the engine's does not; a
 * replica's copy of that GUID (a stale one) stays out, a master's append
 * of it (a new message) clears it; GONE lines are bounded and checked
 * like any peer input. */
static void test_sync_guid_tombstones(void)
{
	struct node a;
	node_open(&a, SID_A);
	struct guid mb = mk_mailbox(&a, "INBOX");
	const char *error;
	struct guid x, y;
	uint32_t xu = append(&a, &mb, "x\r\n", 0, &x);
	uint32_t yu = append(&a, &mb, "y\r\n", 0, &y);
	expunge(&a, &mb, xu);
	CU_ASSERT_EQUAL(stor_guid_tomb_get(a.db, &mb, &x, NULL, &error), 1);
	CU_ASSERT_EQUAL_FATAL(stor_msg_expunge_kind(a.db, &mb, &yu, 1, 0, false, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_guid_tomb_get(a.db, &mb, &y, NULL, &error), 0);
	/* A replica's append of X at a fresh UID: a stale copy, refused
	 * without an error (a late replay), the mailbox unchanged. */
	struct stor_append req;
	memset(&req, 0, sizeof(req));
	req.uid = yu + 5;
	req.guid = &x;
	req.text = "x\r\n";
	req.text_len = 3;
	CU_ASSERT_EQUAL(stor_msg_append(a.db, &mb, &req, NULL, NULL, &error), 0);
	CU_ASSERT(!has_guid(&a, &mb, &x, NULL));
	/* A master storing the GUID: a new message, the tombstone goes. */
	req.uid = 0;
	CU_ASSERT_EQUAL(stor_msg_append(a.db, &mb, &req, NULL, NULL, &error), 0);
	CU_ASSERT(has_guid(&a, &mb, &x, NULL));
	CU_ASSERT_EQUAL(stor_guid_tomb_get(a.db, &mb, &x, NULL, &error), 0);
	/* A user expunges one of two copies of a GUID (two syncs put it at
	 * two UIDs): the GUID lives on, so a replica's copy of it is not
	 * refused (the duplicates are merged as SPEC 10.3 says). */
	struct guid z;
	uint32_t zu = append(&a, &mb, "z\r\n", 0, &z);
	replicate_save(&a, &mb, zu + 10, &z, "z\r\n");
	expunge(&a, &mb, zu);
	CU_ASSERT_EQUAL(stor_guid_tomb_get(a.db, &mb, &z, NULL, &error), 1);
	replicate_save(&a, &mb, zu + 11, &z, "z\r\n");
	struct stor_msg zm;
	int zr = stor_msg_get(a.db, &mb, zu + 11, &zm, &error);
	CU_ASSERT_EQUAL(zr, 1);
	if (zr == 1)
		stor_msg_free(&zm);
	/* Added from a peer: held GUIDs and zero GUIDs are skipped. */
	struct guid g[3];
	g[0] = x;
	guid_generate(&g[1]);
	memset(&g[2], 0, sizeof(g[2]));
	size_t added = 9;
	struct stor_mailbox m0 = get_mailbox(&a, "INBOX");
	CU_ASSERT_EQUAL(stor_guid_tombs_add(a.db, &mb, g, 3, m0.highestmodseq + 3, &added, &error),
			0);
	CU_ASSERT_EQUAL(added, 1);
	struct stor_mailbox m1 = get_mailbox(&a, "INBOX");
	CU_ASSERT_EQUAL(m1.highestmodseq, m0.highestmodseq + 3);
	stor_mailbox_free(&m0);
	stor_mailbox_free(&m1);
	CU_ASSERT_EQUAL(stor_guid_tombs_add(a.db, &mb, g, 1, 0, &added, &error), -1);
	/* The bound: past it the oldest are forgotten, down to three
	 * quarters of it; the newest always stay. */
	stor_guid_tomb_list l;
	struct guid last;
	size_t most = 0;
	for (unsigned i = 0; i < 2 * STOR_GUID_TOMBS_MAX; i++) {
		guid_generate(&last);
		CU_ASSERT_EQUAL_FATAL(stor_guid_tombs_add(a.db, &mb, &last, 1, 1000 + i, &added,
							  &error), 0);
		CU_ASSERT_EQUAL(added, 1);
		if (i % 97 == 0 || i + 1 == 2 * STOR_GUID_TOMBS_MAX) {
			CU_ASSERT_EQUAL_FATAL(stor_guid_tombs_since(a.db, &mb, 0, &l, &error), 0);
			if (l.count > most)
				most = l.count;
			ARRAY_FREE(&l);
		}
	}
	CU_ASSERT(most <= STOR_GUID_TOMBS_MAX);
	CU_ASSERT_EQUAL_FATAL(stor_guid_tombs_since(a.db, &mb, 0, &l, &error), 0);
	CU_ASSERT(l.count >= STOR_GUID_TOMBS_MAX * 3 / 4 && l.count <= STOR_GUID_TOMBS_MAX);
	ARRAY_FREE(&l);
	CU_ASSERT_EQUAL(stor_guid_tomb_get(a.db, &mb, &last, NULL, &error), 1);
	CU_ASSERT_EQUAL(stor_guid_tomb_get(a.db, &mb, &g[1], NULL, &error), 0);
	/* One bulk expunge past the bound keeps at most the bound. */
	uint32_t bulk[STOR_GUID_TOMBS_MAX + 50];
	for (unsigned i = 0; i < STOR_GUID_TOMBS_MAX + 50; i++)
		bulk[i] = append(&a, &mb, "b\r\n", 0, NULL);
	CU_ASSERT_EQUAL_FATAL(stor_msg_expunge(a.db, &mb, bulk, STOR_GUID_TOMBS_MAX + 50, 0, NULL,
					       &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_guid_tombs_since(a.db, &mb, 0, &l, &error), 0);
	CU_ASSERT(l.count <= STOR_GUID_TOMBS_MAX);
	ARRAY_FREE(&l);
	/* The wire form. */
	static const char *const bad[] = {
		"t1 GONE\r\n",
		"t1 GONE GUIDS ()\r\n",
		"t1 GONE GUIDS (00000000000000000000000000000000)\r\n",
		"t1 GONE GUIDS (0123)\r\n",
		"t1 GONE GUIDS 0123456789abcdef0123456789abcdef\r\n",
		"t1 GONE UIDS (0123456789abcdef0123456789abcdef)\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct proto_parser *pp = proto_parser_create(NULL);
		const struct proto_cmd *cmd = NULL;
		size_t used = 0;
		int pr = proto_parser_parse(pp, (const unsigned char *)bad[i], strlen(bad[i]),
					    &used, &cmd);
		CU_ASSERT_EQUAL(pr, 1);
		if (pr == 1) {
			struct guid *gs;
			size_t n;
			CU_ASSERT_EQUAL(sync_cmd_gone(cmd, &gs, &n), -1);
			CU_ASSERT_PTR_NULL(gs);
		}
		proto_parser_destroy(&pp);
	}
	/* A good line, and one GUID past the bound. */
	struct buf line = BUF_INIT;
	buf_appendf(&line, "t1 GONE GUIDS (");
	for (unsigned i = 0; i <= SYNC_MAX_GONE_PER_LINE; i++)
		buf_appendf(&line, "%s0123456789abcdef0123456789abcd%02x", i ? " " : "", i % 256);
	buf_appendf(&line, ")\r\n");
	for (int k = 0; k < 2; k++) {
		struct proto_parser *pp = proto_parser_create(NULL);
		const struct proto_cmd *cmd = NULL;
		size_t used = 0;
		const char *text = k == 0 ? "t2 GONE GUIDS (0123456789abcdef0123456789abcdef)\r\n"
					  : (const char *)line.data;
		int pr = proto_parser_parse(pp, (const unsigned char *)text, strlen(text), &used, &cmd);
		CU_ASSERT_EQUAL(pr, 1);
		if (pr == 1) {
			struct guid *gs;
			size_t n;
			CU_ASSERT_EQUAL(sync_cmd_gone(cmd, &gs, &n), k == 0 ? 0 : -1);
			CU_ASSERT_EQUAL(n, k == 0 ? 1 : 0);
			free(gs);
		}
		proto_parser_destroy(&pp);
	}
	buf_free(&line);
	node_close(&a);
}

/* Only a user's tombstone removes copies under other UIDs: the engine's
 * tombstone of a renumbered message (the UID it left) never takes the
 * message at its new UID away, in either direction. */
static void test_sync_renumber_tombstone_removes_nothing(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	struct guid x;
	uint32_t xu = append(&a, &mb, "message x\r\n", 0, &x);
	replicate_save(&b, &mb, xu, &x, "message x\r\n");
	const char *error;
	/* A moves X (as a sync with a third node would): an engine
	 * tombstone at its old UID; B still holds X there. */
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(a.db, &mb, xu, xu + 5, 0, &error), 0);
	run_sync(&b, &a, false, 61);
	CU_ASSERT(has_guid(&a, &mb, &x, NULL));
	CU_ASSERT(has_guid(&b, &mb, &x, NULL));
	CU_ASSERT(dumps_equal(&a, &b));
	check_mailbox(&a, &mb);
	check_mailbox(&b, &mb);
	node_close(&a);
	node_close(&b);
}

/* Tombstones say who expunged: an IMAP expunge the user's, a renumbering
 * the engine's, and a sync carries the user's on to the other side. */
static void test_sync_tombstone_provenance_travels(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	for (int i = 0; i < 4; i++)
		append(&a, &mb, "m\r\n", 0, NULL);
	run_sync(&b, &a, false, 71);
	const char *error;
	expunge(&a, &mb, 1);
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(a.db, &mb, 2, 9, 0, &error), 0);
	run_sync(&b, &a, false, 72);
	stor_msg_list msgs;
	stor_tombstone_list tombs;
	CU_ASSERT_EQUAL_FATAL(stor_changes_since(b.db, &mb, 0, &msgs, &tombs, &error), 0);
	bool user1 = false, engine2 = false;
	for (size_t i = 0; i < tombs.count; i++) {
		if (tombs.items[i].uid == 1)
			user1 = tombs.items[i].user;
		if (tombs.items[i].uid == 2)
			engine2 = !tombs.items[i].user;
	}
	CU_ASSERT(user1);
	CU_ASSERT(engine2);
	stor_msg_list_free(&msgs);
	ARRAY_FREE(&tombs);
	node_close(&a);
	node_close(&b);
}


/* The tombstone at uid on n: 1 a user's, 0 the engine's, -1 none. */
static int tomb_kind(struct node *n, const struct guid *mb, uint32_t uid, struct guid *guid_r)
{
	stor_msg_list msgs;
	stor_tombstone_list tombs;
	const char *error;
	int kind = -1;
	CU_ASSERT_EQUAL_FATAL(stor_changes_since(n->db, mb, 0, &msgs, &tombs, &error), 0);
	for (size_t i = 0; i < tombs.count; i++) {
		if (tombs.items[i].uid == uid) {
			kind = tombs.items[i].user ? 1 : 0;
			if (guid_r != NULL)
				*guid_r = tombs.items[i].guid;
		}
	}
	stor_msg_list_free(&msgs);
	ARRAY_FREE(&tombs);
	return kind;
}

/* acked-append-present 11161: two nodes each hold X where the other holds
 * the engine's tombstone of X (each moved it in a sync with a third node,
 * one of them from the other's UID to the one the other left), and no
 * user expunged it.  Each side's tombstone alone says "the copy lives
 * at the other UID": the merge must keep one copy, not drop both (the
 * client's as "we expunged it" and ours as the client's move). */
static void crossed_engine_tombstones(bool full, bool swap, uint32_t seed)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	struct guid x, y;
	uint32_t xu = append(&a, &mb, "message x\r\n", 0, &x);
	replicate_save(&b, &mb, xu, &x, "message x\r\n");
	uint32_t yu = append(&a, &mb, "message y\r\n", 0, &y);
	replicate_save(&b, &mb, yu, &y, "message y\r\n");
	run_sync(&b, &a, false, seed);
	CU_ASSERT_FATAL(dumps_equal(&a, &b));
	const char *error;
	uint32_t p = yu + 3, q = yu + 5;
	/* A: xu -> q -> p (X at p, engine tombstones at xu and q);
	 * B: xu -> p -> q (X at q, engine tombstones at xu and p). */
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(a.db, &mb, xu, q, 0, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(a.db, &mb, q, p, 0, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(b.db, &mb, xu, p, 0, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(b.db, &mb, p, q, 0, &error), 0);
	CU_ASSERT_EQUAL(tomb_kind(&a, &mb, q, NULL), 0);
	CU_ASSERT_EQUAL(tomb_kind(&b, &mb, p, NULL), 0);
	struct node *c = swap ? &b : &a, *s = swap ? &a : &b;
	run_sync(c, s, full, seed + 1);
	/* Until both hold the same (a second sync is what the engine runs
	 * when the first still changed something). */
	for (int i = 0; i < 3 && !dumps_equal(&a, &b); i++)
		run_sync(c, s, false, seed + 2 + (uint32_t)i);
	CU_ASSERT(has_guid(&a, &mb, &x, NULL));
	CU_ASSERT(has_guid(&b, &mb, &x, NULL));
	CU_ASSERT(has_guid(&a, &mb, &y, NULL));
	CU_ASSERT(has_guid(&b, &mb, &y, NULL));
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(count_unique(&a, "INBOX"), 2);
	CU_ASSERT_EQUAL(count_unique(&b, "INBOX"), 2);
	check_mailbox(&a, &mb);
	check_mailbox(&b, &mb);
	node_close(&a);
	node_close(&b);
}

static void test_sync_crossed_engine_tombstones_keep_a_copy(void)
{
	crossed_engine_tombstones(false, false, 111);
	crossed_engine_tombstones(false, true, 112);
	crossed_engine_tombstones(true, false, 113);
	crossed_engine_tombstones(true, true, 114);
}

/* A user's tombstone names its message: where the UID holds another
 * message on the other side (the client moved that one away, SPEC 10.3),
 * the expunge there is the engine's, or the other message would be taken
 * for one the user expunged and lose its copies everywhere. */
static void test_sync_user_tombstone_of_another_message_stays_engine(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	struct guid g1, g2;
	uint32_t u1 = append(&a, &mb, "message one\r\n", 0, &g1);
	expunge(&a, &mb, u1);
	guid_generate(&g2);
	replicate_save(&a, &mb, u1 + 1, &g2, "message two\r\n");
	replicate_save(&b, &mb, u1, &g2, "message two\r\n");
	run_sync(&a, &b, false, 81);
	uint32_t at = 0;
	CU_ASSERT(has_guid(&a, &mb, &g2, &at));
	CU_ASSERT_EQUAL(at, u1 + 1);
	CU_ASSERT(has_guid(&b, &mb, &g2, &at));
	CU_ASSERT_EQUAL(at, u1 + 1);
	struct guid tg;
	CU_ASSERT_EQUAL(tomb_kind(&a, &mb, u1, &tg), 1);
	CU_ASSERT_EQUAL(guid_cmp(&tg, &g1), 0);
	CU_ASSERT_EQUAL(tomb_kind(&b, &mb, u1, &tg), 0);
	CU_ASSERT_EQUAL(guid_cmp(&tg, &g2), 0);
	CU_ASSERT(dumps_equal(&a, &b));
	node_close(&a);
	node_close(&b);
}

/* A and B sharing INBOX, where three common messages appended on A
 * reached B (a sync, B the client). */
static struct guid two_nodes_with_common(struct node *a, struct node *b, uint32_t seed)
{
	node_open(a, SID_A);
	node_open(b, SID_B);
	struct guid mb = mk_shared_mailbox(a, b, "INBOX");
	for (int i = 0; i < 3; i++)
		append(a, &mb, "common\r\n", 0, NULL);
	run_sync(b, a, false, seed);
	return mb;
}

/* Each of two nodes holds message X only at a UID where the other holds
 * the sync engine's tombstone of X: A at u (X moved there from w), B at w
 * (X moved there from u), as drops of one copy for another in syncs with
 * third nodes leave it.  No user expunged X.  A sync (bit 0: A is the
 * client; bit 1: a full compare, M = 0, as after "went back in time"),
 * or a user's expunge of X at w on B first (bit 2): unless a user expunged
 * it, X must stay, once, on both.  The engine's tombstone at the client's
 * UID read as "we expunged it" dropped the client's copy, and the client's
 * expunge of w (it moved X from there) dropped ours: X was lost on both
 * (fault campaign, acked-append-present all classes 9737). */
static void engine_tombstones_cross(unsigned mode)
{
	struct node a, b;
	struct guid mb = two_nodes_with_common(&a, &b, 91);
	const char *error;
	struct guid x;
	guid_generate(&x);
	uint32_t u = 4, w = 5;
	replicate_save(&a, &mb, w, &x, "message x\r\n");
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(a.db, &mb, w, u, 0, &error), 0);
	replicate_save(&b, &mb, u, &x, "message x\r\n");
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(b.db, &mb, u, w, 0, &error), 0);
	/* The scenario: X only at u on A, only at w on B, each under the
	 * other's engine tombstone. */
	CU_ASSERT_EQUAL_FATAL(tomb_kind(&a, &mb, w, NULL), 0);
	CU_ASSERT_EQUAL_FATAL(tomb_kind(&b, &mb, u, NULL), 0);
	bool user = (mode & 4) != 0;
	if (user)
		expunge(&b, &mb, w);
	/* Not a full compare: the two HIGHESTMODSEQs differ, so the sync
	 * compares changes since the last one (M > 0). */
	if ((mode & 2) == 0)
		set_flags(&a, &mb, 1, STOR_FLAG_SEEN);
	if (mode & 1)
		run_sync(&a, &b, (mode & 2) != 0, 92 + mode);
	else
		run_sync(&b, &a, (mode & 2) != 0, 92 + mode);
	CU_ASSERT_EQUAL(has_guid(&a, &mb, &x, NULL), !user);
	CU_ASSERT_EQUAL(has_guid(&b, &mb, &x, NULL), !user);
	CU_ASSERT_EQUAL(count_unique(&a, "INBOX"), 3 + (user ? 0 : 1));
	CU_ASSERT_EQUAL(count_unique(&b, "INBOX"), 3 + (user ? 0 : 1));
	/* Settled: one more sync each way changes nothing. */
	run_sync(&a, &b, false, 100 + mode);
	run_sync(&b, &a, true, 110 + mode);
	CU_ASSERT_EQUAL(has_guid(&a, &mb, &x, NULL), !user);
	CU_ASSERT_EQUAL(has_guid(&b, &mb, &x, NULL), !user);
	CU_ASSERT(dumps_equal(&a, &b));
	check_mailbox(&a, &mb);
	check_mailbox(&b, &mb);
	node_close(&a);
	node_close(&b);
}

static void test_sync_engine_tombstones_cross_keep_the_message(void)
{
	for (unsigned mode = 0; mode < 4; mode++)
		engine_tombstones_cross(mode);
}

static void test_sync_engine_tombstones_cross_user_expunge_wins(void)
{
	for (unsigned mode = 4; mode < 8; mode++)
		engine_tombstones_cross(mode);
}

/* The mirror of the above at the client: A holds no copy of X, only the
 * sync engine's tombstone of X at u (it dropped its copy for another one,
 * itself gone since); B holds X at u and no tombstone.  In a full compare
 * (M = 0) B sends X as a SAVE line at u, where A holds its tombstone; A
 * must keep that copy (no user expunged X), or its second sync's EXPUNGE
 * takes B's, the last one, away.  A user's tombstone of X elsewhere on A
 * (bit 1) still wins.  Bit 0: A is the client (else B). */
static void engine_tombstone_only(unsigned mode)
{
	struct node a, b;
	struct guid mb = two_nodes_with_common(&a, &b, 121);
	const char *error;
	struct guid x;
	guid_generate(&x);
	uint32_t u = 4, w = 6;
	bool user = (mode & 2) != 0;
	replicate_save(&a, &mb, u, &x, "message x\r\n");
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(a.db, &mb, u, w, 0, &error), 0);
	if (user)
		expunge(&a, &mb, w);
	else
		CU_ASSERT_EQUAL_FATAL(stor_msg_expunge_kind(a.db, &mb, &w, 1, 0, false, NULL,
							    &error), 0);
	replicate_save(&b, &mb, u, &x, "message x\r\n");
	CU_ASSERT_EQUAL_FATAL(tomb_kind(&a, &mb, u, NULL), 0);
	if (mode & 1)
		run_sync(&a, &b, true, 122 + mode);
	else
		run_sync(&b, &a, true, 122 + mode);
	CU_ASSERT_EQUAL(has_guid(&a, &mb, &x, NULL), !user);
	CU_ASSERT_EQUAL(has_guid(&b, &mb, &x, NULL), !user);
	run_sync(&a, &b, false, 130 + mode);
	run_sync(&b, &a, true, 140 + mode);
	CU_ASSERT_EQUAL(has_guid(&a, &mb, &x, NULL), !user);
	CU_ASSERT_EQUAL(has_guid(&b, &mb, &x, NULL), !user);
	CU_ASSERT_EQUAL(count_unique(&a, "INBOX"), 3 + (user ? 0 : 1));
	CU_ASSERT(dumps_equal(&a, &b));
	check_mailbox(&a, &mb);
	check_mailbox(&b, &mb);
	node_close(&a);
	node_close(&b);
}

static void test_sync_engine_tombstone_only_keeps_the_other_copy(void)
{
	for (unsigned mode = 0; mode < 4; mode++)
		engine_tombstone_only(mode);
}

/* acked-append-present all classes 9706, defect 2: two nodes that each
 * moved X and Y off UIDs 4 and 5 (a bundle's merge on each, with different
 * UIDNEXTs) meet: UID 7 holds Y on A and X on B, and B holds Y at 6 too,
 * where A holds Z (bit 2; else nothing).  Their merge meets two GUIDs at
 * one UID, one of them also at a second UID: X, Y (and Z) must end on both,
 * once each.  Bit 0: A is the client; bit 1: a full compare.  (Passes
 * without the rules for the engine's tombstones above too: 9706's loss is
 * not this shape, or needs more than these two nodes' state.) */
static void two_guids_at_one_uid(unsigned mode)
{
	struct node a, b;
	struct guid mb = two_nodes_with_common(&a, &b, 151);
	const char *error;
	struct guid x, y, z;
	guid_generate(&x);
	guid_generate(&y);
	guid_generate(&z);
	bool with_z = (mode & 4) != 0;
	struct node *both[2] = { &a, &b };
	for (int i = 0; i < 2; i++) {
		replicate_save(both[i], &mb, 4, &x, "message x\r\n");
		replicate_save(both[i], &mb, 5, &y, "message y\r\n");
	}
	if (with_z)
		replicate_save(&a, &mb, 6, &z, "message z\r\n");
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(a.db, &mb, 5, 7, 0, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(a.db, &mb, 4, 8, 0, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(b.db, &mb, 5, 6, 0, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_renumber(b.db, &mb, 4, 7, 0, &error), 0);
	if (mode & 1)
		run_sync(&a, &b, (mode & 2) != 0, 152 + mode);
	else
		run_sync(&b, &a, (mode & 2) != 0, 152 + mode);
	for (int i = 0; i < 2; i++) {
		CU_ASSERT(has_guid(both[i], &mb, &x, NULL));
		CU_ASSERT(has_guid(both[i], &mb, &y, NULL));
		CU_ASSERT_EQUAL(has_guid(both[i], &mb, &z, NULL), with_z);
	}
	run_sync(&a, &b, false, 160 + mode);
	run_sync(&b, &a, true, 170 + mode);
	for (int i = 0; i < 2; i++) {
		CU_ASSERT(has_guid(both[i], &mb, &x, NULL));
		CU_ASSERT(has_guid(both[i], &mb, &y, NULL));
		CU_ASSERT_EQUAL(count_unique(both[i], "INBOX"), 5 + (with_z ? 1 : 0));
		check_mailbox(both[i], &mb);
	}
	CU_ASSERT(dumps_equal(&a, &b));
	node_close(&a);
	node_close(&b);
}

static void test_sync_two_guids_at_one_uid_lose_nothing(void)
{
	for (unsigned mode = 0; mode < 8; mode++)
		two_guids_at_one_uid(mode);
}


/* ---- The three-way flag merge (SPEC.md 10.3 "Flags") ---- */

/* The fault campaign's acked-append-present, all classes 11177: an APPEND
 * acknowledged by A while apart was lost on every node.  C imported a bundle
 * of A (X moved to a fresh UID there, C's own message Y away from X's UID);
 * B took X from C, then imported a bundle of A too, where its copy gave way
 * to the bundle's at A's UID (B: X at A's UID, the engine's tombstone at
 * C's).  C's full compare with B then met its copy at a UID where B's
 * tombstone of X is the engine's, and B's copy at the UID where C's
 * tombstone (of Y) is: B took that for "the client moved X from there",
 * expunged its copy and dropped C's ("we expunged it"), and A's sync with
 * B dropped A's under B's new tombstone.  variant: how A meets B last
 * (0 A client, 1 B client), and whether C's compare is a full one. */
static void acked_append_survives_two_bundles(int variant)
{
	struct node a, b, c;
	struct guid mb = three_nodes_with_common(&a, &b, &c, 3, 1101);
	/* Apart: C appends Y, A appends X, each at UID 4. */
	struct guid x, y;
	uint32_t xu = append(&a, &mb, "message x, acknowledged\r\n", 0, &x);
	uint32_t yu = append(&c, &mb, "message y of c\r\n", 0, &y);
	CU_ASSERT_EQUAL(xu, yu);
	/* C imports A's bundle: X and Y both move on at C. */
	import_bundle_of(&a, &c);
	uint32_t xc = 0;
	CU_ASSERT_FATAL(has_guid(&c, &mb, &x, &xc));
	CU_ASSERT(xc != xu);
	CU_ASSERT_EQUAL(tomb_kind(&c, &mb, xu, NULL), 0);
	/* B takes X from C (without C's tombstone at xu), then A's bundle. */
	run_sync(&b, &c, false, 1103);
	import_bundle_of(&a, &b);
	uint32_t xb = 0;
	struct guid tg;
	CU_ASSERT(has_guid(&b, &mb, &x, &xb));
	CU_ASSERT_EQUAL(xb, xu);
	CU_ASSERT_EQUAL(tomb_kind(&b, &mb, xc, &tg), 0);
	CU_ASSERT(guid_cmp(&tg, &x) == 0);
	/* The heal. */
	run_sync(&c, &b, (variant & 2) != 0, 1104);
	CU_ASSERT(has_guid(&b, &mb, &x, NULL) || has_guid(&c, &mb, &x, NULL));
	if ((variant & 1) == 0)
		run_sync(&a, &b, false, 1105);
	else
		run_sync(&b, &a, false, 1105);
	CU_ASSERT(has_guid(&a, &mb, &x, NULL));
	CU_ASSERT(has_guid(&b, &mb, &x, NULL));
	for (int round = 0; round < 2; round++) {
		run_sync(&c, &b, false, 1106 + round);
		run_sync(&a, &c, false, 1108 + round);
		run_sync(&b, &a, false, 1110 + round);
	}
	CU_ASSERT(has_guid(&a, &mb, &x, NULL));
	CU_ASSERT(has_guid(&c, &mb, &x, NULL));
	CU_ASSERT(has_guid(&b, &mb, &x, NULL));
	CU_ASSERT(has_guid(&a, &mb, &y, NULL));
	three_nodes_end_alike(&a, &b, &c, 3 + 2);
	three_nodes_close(&a, &b, &c);
}

static void test_sync_acked_append_survives_two_bundles(void)
{
	for (int variant = 0; variant < 4; variant++)
		acked_append_survives_two_bundles(variant);
}

/* "kw1 kw2" of a message's keywords, sorted as stored. */
static char *keywords_of(struct node *n, const struct guid *mb, uint32_t uid)
{
	struct stor_msg m = get_msg(n, mb, uid);
	struct buf b = BUF_INIT;
	for (size_t i = 0; i < m.keywords.count; i++) {
		if (i > 0)
			buf_append_byte(&b, ' ');
		buf_append(&b, m.keywords.items[i], strlen(m.keywords.items[i]));
	}
	buf_append_byte(&b, '\0');
	stor_msg_free(&m);
	return (char *)b.data;
}

/* Waits until the wall clock has moved on by a few ms, so that two changes
 * made on either side of it have different times. */
static void clock_step(void)
{
	struct timespec ts = { 0, 3 * 1000 * 1000 };
	nanosleep(&ts, NULL);
}

/* The issue's partition: six messages, \Seen set on one side, \Flagged on
 * the other; both kept whichever side drives the sync and whichever side
 * has the higher modseqs. */
static void test_sync_flag_merge_disjoint_flags_kept(void)
{
	for (int variant = 0; variant < 4; variant++) {
		struct node a, b;
		node_open(&a, SID_A);
		node_open(&b, SID_B);
		struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
		uint32_t uids[6];
		for (int i = 0; i < 6; i++)
			uids[i] = append(&a, &mb, i % 2 ? "odd\r\n" : "even\r\n", 0, NULL);
		/* variant bit 0: B drives the syncs (each direction keeps its
		 * own last common state). */
		struct node *cl = (variant & 1) != 0 ? &b : &a, *sv = (variant & 1) != 0 ? &a : &b;
		run_sync(cl, sv, false, 60 + (uint32_t)variant);
		/* variant bit 1: B's modseqs end higher (it changes twice). */
		for (int i = 0; i < 6; i++) {
			store_kw(&a, &mb, uids[i], STOR_FLAGS_ADD, STOR_FLAG_SEEN, NULL);
			store_kw(&b, &mb, uids[i], STOR_FLAGS_ADD, STOR_FLAG_FLAGGED, NULL);
			if ((variant & 2) != 0)
				store_kw(&b, &mb, uids[i], STOR_FLAGS_ADD, STOR_FLAG_FLAGGED, NULL);
			if ((variant & 2) != 0)
				store_kw(&b, &mb, uids[i], STOR_FLAGS_ADD, 0, "$x");
			if ((variant & 2) != 0)
				store_kw(&b, &mb, uids[i], STOR_FLAGS_REMOVE, 0, "$x");
		}
		run_sync(cl, sv, false, 70 + (uint32_t)variant);
		for (int i = 0; i < 6; i++) {
			CU_ASSERT_EQUAL(flags_of(&a, &mb, uids[i]), STOR_FLAG_SEEN | STOR_FLAG_FLAGGED);
			CU_ASSERT_EQUAL(flags_of(&b, &mb, uids[i]), STOR_FLAG_SEEN | STOR_FLAG_FLAGGED);
		}
		CU_ASSERT(dumps_equal(&a, &b));
		check_modseqs_equal(&a, &b, &mb);
		check_mailbox(&a, &mb);
		check_mailbox(&b, &mb);
		/* Nothing left to do. */
		struct sync_run r = run_sync(cl, sv, false, 80 + (uint32_t)variant);
		if (r.report.mailboxes_synced != 0)
			fprintf(stderr, "variant %d: synced %u full %u flags %u recv %u\n", variant,
				r.report.mailboxes_synced, r.report.mailboxes_full, r.report.flags_changed,
				r.report.messages_received);
		CU_ASSERT_EQUAL(r.report.mailboxes_synced, 0);
		node_close(&a);
		node_close(&b);
	}
}

/* One side sets \Seen, the other clears it (after setting it): the later
 * change wins, whichever it is, whichever side has the higher modseq and
 * whichever drives the sync.  The early side always ends with the higher
 * modseq, so the old rule (higher modseq wins) decides every case for it. */
static void test_sync_flag_merge_later_change_wins(void)
{
	for (int variant = 0; variant < 4; variant++) {
		bool later_sets = (variant & 1) != 0;
		bool early_is_client = (variant & 2) != 0;
		struct node a, b;
		node_open(&a, SID_A);
		node_open(&b, SID_B);
		struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
		uint32_t u = append(&a, &mb, "msg\r\n", 0, NULL);
		uint32_t other = append(&a, &mb, "other\r\n", 0, NULL);
		run_sync(&a, &b, false, 90 + (uint32_t)variant);
		struct node *early = &a, *later = &b;
		/* The early side's modseq ends higher: extra changes first. */
		for (int i = 0; i < 4; i++)
			set_flags(early, &mb, other, i % 2 ? STOR_FLAG_DRAFT : 0);
		if (later_sets) {
			set_flags(early, &mb, u, STOR_FLAG_SEEN);
			set_flags(early, &mb, u, 0);
			clock_step();
			set_flags(later, &mb, u, STOR_FLAG_SEEN);
		} else {
			set_flags(early, &mb, u, STOR_FLAG_SEEN);
			clock_step();
			set_flags(later, &mb, u, STOR_FLAG_SEEN);
			set_flags(later, &mb, u, 0);
		}
		struct stor_msg me = get_msg(early, &mb, u), ml = get_msg(later, &mb, u);
		CU_ASSERT(me.modseq > ml.modseq);
		stor_msg_free(&me);
		stor_msg_free(&ml);
		if (early_is_client)
			run_sync(early, later, false, 100 + (uint32_t)variant);
		else
			run_sync(later, early, false, 100 + (uint32_t)variant);
		uint32_t want = later_sets ? STOR_FLAG_SEEN : 0;
		CU_ASSERT_EQUAL(flags_of(&a, &mb, u), want);
		CU_ASSERT_EQUAL(flags_of(&b, &mb, u), want);
		CU_ASSERT(dumps_equal(&a, &b));
		check_modseqs_equal(&a, &b, &mb);
		node_close(&a);
		node_close(&b);
	}
}

/* Keywords: A removes $A and adds $C, B removes $B and adds $D. */
static void test_sync_flag_merge_keywords(void)
{
	for (int variant = 0; variant < 2; variant++) {
		struct node a, b;
		node_open(&a, SID_A);
		node_open(&b, SID_B);
		struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
		uint32_t u = append(&a, &mb, "kw\r\n", 0, NULL);
		store_kw(&a, &mb, u, STOR_FLAGS_ADD, 0, "$A");
		store_kw(&a, &mb, u, STOR_FLAGS_ADD, 0, "$B");
		run_sync(&a, &b, false, 110 + (uint32_t)variant);
		char *k = keywords_of(&b, &mb, u);
		CU_ASSERT_STRING_EQUAL(k, "$A $B");
		free(k);
		store_kw(&a, &mb, u, STOR_FLAGS_REMOVE, 0, "$A");
		store_kw(&a, &mb, u, STOR_FLAGS_ADD, STOR_FLAG_SEEN, "$C");
		store_kw(&b, &mb, u, STOR_FLAGS_REMOVE, 0, "$B");
		store_kw(&b, &mb, u, STOR_FLAGS_ADD, 0, "$D");
		if (variant == 0)
			run_sync(&a, &b, false, 120);
		else
			run_sync(&b, &a, false, 121);
		k = keywords_of(&a, &mb, u);
		CU_ASSERT_STRING_EQUAL(k, "$C $D");
		free(k);
		k = keywords_of(&b, &mb, u);
		CU_ASSERT_STRING_EQUAL(k, "$C $D");
		free(k);
		CU_ASSERT_EQUAL(flags_of(&b, &mb, u), STOR_FLAG_SEEN);
		CU_ASSERT(dumps_equal(&a, &b));
		check_modseqs_equal(&a, &b, &mb);
		node_close(&a);
		node_close(&b);
	}
}

/* A STORE that changes no value is still the user's action on the flags
 * it names (SPEC.md 10.2): A sets $k2; later, B, where $k2 was never set,
 * does -FLAGS ($k2).  After a sync $k2 is clear on both (it stayed set:
 * the fault campaign's flag-holds, partition seed 1).  In the other order
 * (B's no-op clear first, A's set later) it is set on both.  Either side
 * drives the sync; the side that set $k2 has the higher modseq. */
static void test_sync_flag_merge_noop_store_counts(void)
{
	for (int variant = 0; variant < 4; variant++) {
		bool clear_later = (variant & 1) == 0;
		bool a_is_client = (variant & 2) == 0;
		struct node a, b;
		node_open(&a, SID_A);
		node_open(&b, SID_B);
		struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
		uint32_t u = append(&a, &mb, "noop\r\n", 0, NULL);
		uint32_t other = append(&a, &mb, "other\r\n", 0, NULL);
		run_sync(&a, &b, false, 130 + (uint32_t)variant);
		for (int i = 0; i < 3; i++)
			set_flags(&a, &mb, other, i % 2 ? STOR_FLAG_DRAFT : 0);
		if (clear_later) {
			store_kw(&a, &mb, u, STOR_FLAGS_ADD, 0, "$k2");
			clock_step();
			store_kw(&b, &mb, u, STOR_FLAGS_REMOVE, STOR_FLAG_ANSWERED, "$k2");
		} else {
			store_kw(&b, &mb, u, STOR_FLAGS_REMOVE, STOR_FLAG_ANSWERED, "$k2");
			clock_step();
			store_kw(&a, &mb, u, STOR_FLAGS_ADD, 0, "$k2");
		}
		if (a_is_client)
			run_sync(&a, &b, false, 140 + (uint32_t)variant);
		else
			run_sync(&b, &a, false, 140 + (uint32_t)variant);
		const char *want = clear_later ? "" : "$k2";
		char *k = keywords_of(&a, &mb, u);
		CU_ASSERT_STRING_EQUAL(k, want);
		free(k);
		k = keywords_of(&b, &mb, u);
		CU_ASSERT_STRING_EQUAL(k, want);
		free(k);
		CU_ASSERT_EQUAL(flags_of(&a, &mb, u), 0);
		CU_ASSERT(dumps_equal(&a, &b));
		check_modseqs_equal(&a, &b, &mb);
		node_close(&a);
		node_close(&b);
	}
}

/* Only one side changed flags: the other takes them as they are (and a
 * catch-up keeps the changing side's modseqs). */
static void test_sync_flag_merge_one_side_only(void)
{
	for (int variant = 0; variant < 2; variant++) {
		struct node a, b;
		node_open(&a, SID_A);
		node_open(&b, SID_B);
		struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
		uint32_t u = append(&a, &mb, "one\r\n", STOR_FLAG_SEEN, NULL);
		store_kw(&a, &mb, u, STOR_FLAGS_ADD, 0, "$Old");
		run_sync(&a, &b, false, 130 + (uint32_t)variant);
		if (variant == 1)
			run_sync(&b, &a, false, 135); /* B's own last common state */
		store_kw(&a, &mb, u, STOR_FLAGS_REPLACE, STOR_FLAG_FLAGGED, "$New");
		struct stor_msg before = get_msg(&a, &mb, u);
		if (variant == 0)
			run_sync(&a, &b, false, 140);
		else
			run_sync(&b, &a, false, 141);
		CU_ASSERT_EQUAL(flags_of(&b, &mb, u), STOR_FLAG_FLAGGED);
		char *k = keywords_of(&b, &mb, u);
		CU_ASSERT_STRING_EQUAL(k, "$New");
		free(k);
		struct stor_msg after = get_msg(&a, &mb, u);
		if (after.modseq != before.modseq)
			fprintf(stderr, "variant %d: modseq %llu -> %llu\n", variant,
				(unsigned long long)before.modseq, (unsigned long long)after.modseq);
		CU_ASSERT_EQUAL(after.modseq, before.modseq);
		stor_msg_free(&before);
		stor_msg_free(&after);
		CU_ASSERT(dumps_equal(&a, &b));
		check_modseqs_equal(&a, &b, &mb);
		node_close(&a);
		node_close(&b);
	}
}

/* Writes a message's record as a node before stamps wrote it (version 1). */
static void rewrite_as_v1(struct node *n, const struct guid *mb, uint32_t uid)
{
	struct stor_msg m = get_msg(n, mb, uid);
	struct buf v = BUF_INIT;
	struct stor_key k;
	const char *error;
	stor_put_u8(&v, 1);
	stor_put_bytes(&v, m.guid.b, GUID_SIZE);
	stor_put_u64(&v, m.modseq);
	stor_put_u32(&v, m.flags);
	stor_put_u32(&v, (uint32_t)m.keywords.count);
	for (size_t i = 0; i < m.keywords.count; i++)
		stor_put_str(&v, m.keywords.items[i]);
	stor_put_u64(&v, (uint64_t)m.internaldate);
	stor_put_u32(&v, (uint32_t)m.internaldate_tz);
	stor_put_u64(&v, m.size);
	stor_key_init(&k, STOR_KEY_MSG);
	stor_key_guid(&k, mb);
	stor_key_u32(&k, uid);
	struct stor_batch *wb = stor_batch_new();
	stor_batch_put(wb, &k, v.data, v.len);
	CU_ASSERT_EQUAL(stor_db_write(n->db, wb, &error), 0);
	stor_batch_free(wb);
	buf_free(&v);
	stor_msg_free(&m);
	/* It reads back as every flag changed at its modseq, at time 0. */
	struct stor_msg r = get_msg(n, mb, uid);
	uint64_t ms;
	int64_t t;
	stor_msg_stamp(&r, "\\Seen", &ms, &t);
	CU_ASSERT_EQUAL(ms, r.modseq);
	CU_ASSERT_EQUAL(t, 0);
	stor_msg_stamp(&r, "$anything", &ms, &t);
	CU_ASSERT_EQUAL(ms, r.modseq);
	stor_msg_free(&r);
}

/* Records written before stamps: both sides changed the message, the one
 * with the higher modseq wins as a whole, as before. */
static void test_sync_flag_merge_old_records(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	uint32_t u1 = append(&a, &mb, "one\r\n", 0, NULL);
	uint32_t u2 = append(&a, &mb, "two\r\n", 0, NULL);
	run_sync(&a, &b, false, 150);
	set_flags(&a, &mb, u1, STOR_FLAG_SEEN);
	set_flags(&b, &mb, u1, STOR_FLAG_FLAGGED);
	set_flags(&b, &mb, u1, STOR_FLAG_FLAGGED | STOR_FLAG_ANSWERED);
	store_kw(&a, &mb, u2, STOR_FLAGS_ADD, STOR_FLAG_DRAFT, "$a");
	store_kw(&a, &mb, u2, STOR_FLAGS_ADD, 0, "$b");
	store_kw(&a, &mb, u2, STOR_FLAGS_ADD, 0, "$c");
	store_kw(&b, &mb, u2, STOR_FLAGS_ADD, STOR_FLAG_SEEN, NULL);
	rewrite_as_v1(&a, &mb, u1);
	rewrite_as_v1(&b, &mb, u1);
	rewrite_as_v1(&a, &mb, u2);
	rewrite_as_v1(&b, &mb, u2);
	check_mailbox(&a, &mb);
	run_sync(&a, &b, false, 151);
	CU_ASSERT_EQUAL(flags_of(&a, &mb, u1), STOR_FLAG_FLAGGED | STOR_FLAG_ANSWERED);
	CU_ASSERT_EQUAL(flags_of(&b, &mb, u2), STOR_FLAG_DRAFT);
	char *k = keywords_of(&b, &mb, u2);
	CU_ASSERT_STRING_EQUAL(k, "$a $b $c");
	free(k);
	CU_ASSERT(dumps_equal(&a, &b));
	check_modseqs_equal(&a, &b, &mb);
	/* The records were written again in the current format, and a later
	 * change merges per flag. */
	set_flags(&a, &mb, u1, STOR_FLAG_FLAGGED | STOR_FLAG_ANSWERED | STOR_FLAG_SEEN);
	set_flags(&b, &mb, u1, STOR_FLAG_FLAGGED | STOR_FLAG_ANSWERED | STOR_FLAG_DELETED);
	run_sync(&b, &a, false, 152);
	CU_ASSERT_EQUAL(flags_of(&a, &mb, u1), STOR_FLAG_FLAGGED | STOR_FLAG_ANSWERED |
		       STOR_FLAG_SEEN | STOR_FLAG_DELETED);
	CU_ASSERT(dumps_equal(&a, &b));
	node_close(&a);
	node_close(&b);
}

/* A change carried by one sync keeps its time: node C cleared \Seen after
 * A set it, A's change reaches B by a sync, and C's later clear still wins
 * against B (applying the sync's answer does not make A's change look
 * new). */
static void test_sync_flag_merge_three_nodes(void)
{
	struct node a, b, c;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	node_open(&c, 3);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	uint32_t u = append(&a, &mb, "three\r\n", 0, NULL);
	run_sync(&a, &b, false, 160);
	run_sync(&c, &a, false, 161);
	CU_ASSERT(dumps_equal(&a, &c));
	set_flags(&a, &mb, u, STOR_FLAG_SEEN);
	clock_step();
	set_flags(&c, &mb, u, STOR_FLAG_SEEN);
	set_flags(&c, &mb, u, 0);
	clock_step();
	/* B drives: A's change reaches B as a FLAGS line of the answer. */
	run_sync(&b, &a, false, 162);
	CU_ASSERT_EQUAL(flags_of(&b, &mb, u), STOR_FLAG_SEEN);
	run_sync(&c, &b, false, 163);
	CU_ASSERT_EQUAL(flags_of(&b, &mb, u), 0);
	CU_ASSERT_EQUAL(flags_of(&c, &mb, u), 0);
	run_sync(&a, &b, false, 164);
	CU_ASSERT_EQUAL(flags_of(&a, &mb, u), 0);
	CU_ASSERT(dumps_equal(&a, &b));
	CU_ASSERT(dumps_equal(&b, &c));
	three_nodes_close(&a, &b, &c);
}

/* STAMPS come from a peer: malformed ones get BAD, nothing is held. */
static void test_sync_flag_merge_bad_stamps(void)
{
	struct node b;
	struct buf out = BUF_INIT;
	node_open(&b, SID_B);
	struct guid mb = mk_mailbox(&b, "INBOX");
	uint32_t u = append(&b, &mb, "x\r\n", 0, NULL);
	struct stor_mailbox m = get_mailbox(&b, "INBOX");
	struct sync_transport t = { capture_send, &out };
	struct sync_server *sv = sync_server_create(b.db, SID_A, &t);
	char hex[GUID_HEX_SIZE + 1], line[2048];
	guid_to_hex(&mb, hex);
	hex[GUID_HEX_SIZE] = '\0';
	snprintf(line, sizeof(line), "C1 MBOX 1 %s INBOX %u %s\r\nC2 SELECT 1\r\n"
		 "C3 SYNC-BEGIN %llu %llu %u %u\r\n"
		 "C4 STORE %u 99 (\\Seen) (\\*) STAMPS (\\Seen 5)\r\n"
		 "C5 STORE %u 99 (\\Seen) (\\*) STAMPS (\\Bogus 5 5)\r\n"
		 "C6 STORE %u 99 (\\Seen) (\\*) STAMPS (\\Seen 5 5 \\seen 6 6)\r\n"
		 "C7 STORE %u 99 (\\Seen) (\\*) STAMPS (\\Seen 5 -1)\r\n"
		 "C8 STORE %u 99 (\\Seen) (\\*) STAMPS (\\Seen 5 5) EXTRA\r\n"
		 "C9 STORE %u 99 (\\Seen) (\\*) NOTSTAMPS (\\Seen 5 5)\r\n"
		 "C10 STORE %u 99 (\\Seen) (\\*) STAMPS (\\Seen 5 9223372036854775808)\r\n",
		 USER, m.uidvalidity, hex, (unsigned long long)m.highestmodseq,
		 (unsigned long long)m.highestmodseq, m.uidnext, m.uidnext, u, u, u, u, u, u, u);
	CU_ASSERT_EQUAL(sync_server_feed(sv, line, strlen(line)), 0);
	/* Too many triplets. */
	struct buf big = BUF_INIT;
	char head[64];
	snprintf(head, sizeof(head), "C11 STORE %u 99 (\\Seen) (\\*) STAMPS (", u);
	buf_append(&big, head, strlen(head));
	for (int i = 0; i < STOR_MAX_STAMPS + 1; i++) {
		char e[32];
		snprintf(e, sizeof(e), "%sk%d 1 1", i > 0 ? " " : "", i);
		buf_append(&big, e, strlen(e));
	}
	buf_append(&big, ")\r\nC12 SYNC-END\r\n", 17);
	CU_ASSERT_EQUAL(sync_server_feed(sv, big.data, big.len), 0);
	for (int i = 0; i < 100 && sync_server_busy(sv); i++)
		CU_ASSERT(sync_server_step(sv) >= 0);
	buf_free(&big);
	buf_append_byte(&out, '\0');
	const char *o = (const char *)out.data;
	for (int i = 4; i <= 11; i++) {
		char want[32];
		snprintf(want, sizeof(want), "C%d BAD [ARGS]", i);
		if (strstr(o, want) == NULL)
			fprintf(stderr, "missing %s in:\n%s\n", want, o);
		CU_ASSERT_PTR_NOT_NULL(strstr(o, want));
	}
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C12 OK"));
	/* Nothing of the refused STOREs was applied. */
	CU_ASSERT_EQUAL(flags_of(&b, &mb, u), 0);
	sync_server_destroy(&sv);
	stor_mailbox_free(&m);
	buf_free(&out);
	node_close(&b);
}

/* ---- Bounds of UIDs and modseqs (SPEC 5.2) ---- */

/* A client sending UIDs, UIDNEXTs or modseqs past the bounds gets NO
 * [LIMIT] for each, the server's mailbox is left as it was, and it still
 * takes mail and syncs with an honest client afterwards. */
static void test_sync_server_refuses_values_past_the_bounds(void)
{
	struct node a, b;
	struct buf out = BUF_INIT;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	append(&b, &mb, "Subject: b\r\n\r\nb\r\n", 0, NULL);
	char *before = dump(&b);
	struct sync_transport t = { capture_send, &out };
	struct sync_server *sv = sync_server_create(b.db, SID_A, &t);
	struct stor_mailbox x = get_mailbox(&b, "INBOX");
	char hex[GUID_HEX_SIZE], g2[GUID_HEX_SIZE], line[2048];
	guid_to_hex(&mb, hex);
	struct guid other;
	guid_generate(&other);
	guid_to_hex(&other, g2);
	snprintf(line, sizeof(line),
		 "C1 MBOX 1 %s INBOX %u %s\r\nC2 SELECT 1\r\n"
		 "C3 SYNC-BEGIN 0 1 1 4294967295\r\n"
		 "C4 SYNC-BEGIN 0 9223372036854775806 1 2\r\n"
		 "C5 SYNC-BEGIN 4611686018427387904 1 1 2\r\n"
		 "C6 SYNC-BEGIN 0 1 2147483649 2\r\n"
		 "C7 SYNC-BEGIN 0 1 1 2\r\n"
		 "C8 SAVE 1700000000+0000 4294967295 1 %s () {3}\r\nabc\r\n"
		 "C9 SAVE 1700000000+0000 2147483648 1 %s () {3}\r\nabc\r\n"
		 "C10 SAVE 1700000000+0000 2 9223372036854775806 %s () {3}\r\nabc\r\n"
		 "C11 STORE 4294967295 5 (\\Seen) (\\*)\r\n"
		 "C12 STORE 1 9223372036854775806 (\\Seen) (\\*)\r\n"
		 "C13 EXPUNGE 1,4294967295 5\r\n"
		 "C14 EXPUNGE 1 4611686018427387904\r\n"
		 "C15 UIDFIX 1 4294967295\r\n"
		 "C16 SYNC-END\r\n",
		 USER, x.uidvalidity, hex, g2, g2, g2);
	stor_mailbox_free(&x);
	CU_ASSERT_EQUAL(sync_server_feed(sv, line, strlen(line)), 0);
	for (int i = 0; i < 100 && sync_server_busy(sv); i++)
		sync_server_step(sv);
	buf_append_byte(&out, '\0');
	const char *o = (const char *)out.data;
	static const char *const refused[] = {
		"C3 NO [LIMIT]", "C4 NO [LIMIT]", "C5 NO [LIMIT]", "C6 NO [LIMIT]",
		"C8 NO [LIMIT]", "C9 NO [LIMIT]", "C10 NO [LIMIT]", "C11 NO [LIMIT]",
		"C12 NO [LIMIT]", "C13 NO [LIMIT]", "C14 NO [LIMIT]", "C15 NO [LIMIT]",
	};
	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		if (strstr(o, refused[i]) == NULL) {
			fprintf(stderr, "missing '%s' in:\n%s", refused[i], o);
			CU_FAIL("a value past the bounds was not refused");
		}
	}
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C7 OK"));
	CU_ASSERT_PTR_NOT_NULL(strstr(o, "C16 OK [UIDNEXT 2 HIGHESTMODSEQ"));
	CU_ASSERT_PTR_NULL(sync_server_error(sv));
	sync_server_destroy(&sv);
	char *after = dump(&b);
	CU_ASSERT_STRING_EQUAL(before, after);
	free(before);
	free(after);
	check_mailbox(&b, &mb);
	/* Still takes mail, and syncs both ways with an honest peer. */
	CU_ASSERT_EQUAL(append(&b, &mb, "Subject: b2\r\n\r\nb2\r\n", 0, NULL), 2);
	append(&a, &mb, "Subject: a\r\n\r\na\r\n", 0, NULL);
	run_sync(&a, &b, false, 11);
	CU_ASSERT_TRUE(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(count_unique(&b, "INBOX"), 3);
	buf_free(&out);
	node_close(&a);
	node_close(&b);
}

/* The server's answer rewritten on its way: every key's number replaced. */
struct rewrite {
	struct sync_transport t;
	const struct sync_transport *inner;
	const char *key;    /* e.g. "UIDNEXT " */
	const char *value;  /* the digits put in place of the key's number */
	unsigned done;
};

static void rewrite_send(void *ctx, const void *data, size_t len)
{
	struct rewrite *rw = ctx;
	struct buf b = BUF_INIT;
	const char *p = data, *end = p + len;
	size_t klen = strlen(rw->key);
	while (p < end) {
		const char *k = NULL;
		for (const char *q = p; q + klen <= end; q++) {
			if (memcmp(q, rw->key, klen) == 0) {
				k = q;
				break;
			}
		}
		if (k == NULL) {
			buf_append(&b, p, (size_t)(end - p));
			break;
		}
		buf_append(&b, p, (size_t)(k - p) + klen);
		p = k + klen;
		if (p < end && *p >= '0' && *p <= '9') {
			while (p < end && *p >= '0' && *p <= '9')
				p++;
			buf_append(&b, rw->value, strlen(rw->value));
			rw->done++;
		}
	}
	rw->inner->send(rw->inner->ctx, b.data, b.len);
	buf_free(&b);
}

/* Syncs c against s with the server's answers rewritten; returns the
 * result (the sync is expected to fail). */
static enum sync_step_result run_sync_rewritten(struct node *c, struct node *s, const char *key,
						const char *value, unsigned *rewritten_r)
{
	struct sync_settings set = { .peer_sid = s->sid, .user = USER, .step_budget = 7 };
	struct sync_pipe *p = sync_pipe_create(5, 1 + 5 % 97);
	struct rewrite rw = { { rewrite_send, &rw }, sync_pipe_server_transport(p), key, value, 0 };
	struct sync_client *cl = sync_client_create(c->db, &set, sync_pipe_client_transport(p));
	struct sync_server *sv = sync_server_create(s->db, c->sid, &rw.t);
	enum sync_step_result r = sync_pipe_run(p, cl, sv, 1000000);
	if (r == SYNC_STEP_ERROR)
		CU_ASSERT_PTR_NOT_NULL(strstr(sync_client_error(cl), "limits of SPEC 5.2"));
	sync_client_destroy(&cl);
	sync_server_destroy(&sv);
	sync_pipe_destroy(&p);
	*rewritten_r = rw.done;
	return r;
}

/* A server answering with a UIDNEXT, HIGHESTMODSEQ, UID or modseq past the
 * bounds: the client fails the sync and applies nothing of it; its mailbox
 * still takes mail and syncs afterwards. */
static void test_sync_client_refuses_values_past_the_bounds(void)
{
	static const struct {
		const char *key, *value;
	} cases[] = {
		{ "UIDNEXT ", "4294967295" },
		{ "HIGHESTMODSEQ ", "9223372036854775806" },
		{ "SAVE 1700000000+0000 ", "4294967295" },
		{ "FLAGS ", "4294967295" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct node a, b;
		node_open(&a, SID_A);
		node_open(&b, SID_B);
		struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
		uint32_t u = append(&a, &mb, "Subject: a\r\n\r\na\r\n", 0, NULL);
		run_sync(&a, &b, false, 3);
		/* Something for each kind of answer line: a new message and a
		 * flag change on the server. */
		append(&b, &mb, "Subject: b\r\n\r\nb\r\n", 0, NULL);
		set_flags(&b, &mb, u, STOR_FLAG_SEEN);
		char *before = dump(&a);
		unsigned rewritten = 0;
		enum sync_step_result r =
			run_sync_rewritten(&a, &b, cases[i].key, cases[i].value, &rewritten);
		CU_ASSERT(rewritten > 0);
		CU_ASSERT_EQUAL(r, SYNC_STEP_ERROR);
		char *after = dump(&a);
		if (strcmp(before, after) != 0)
			fprintf(stderr, "case %zu: the client changed:\n%s---\n%s", i, before, after);
		CU_ASSERT_STRING_EQUAL(before, after);
		free(before);
		free(after);
		check_mailbox(&a, &mb);
		CU_ASSERT_EQUAL(append(&a, &mb, "Subject: a2\r\n\r\na2\r\n", 0, NULL), 2);
		run_sync(&a, &b, false, 7);
		CU_ASSERT_TRUE(dumps_equal(&a, &b));
		CU_ASSERT_EQUAL(count_unique(&a, "INBOX"), 3);
		node_close(&a);
		node_close(&b);
	}
}

/* Conflicts at the last UIDs new messages get are renumbered into the room
 * above them, and the mailbox then refuses new mail; a conflict at the very
 * last UID cannot be renumbered and the sync is refused, changing nothing
 * (no UID wraps around). */
static void test_sync_renumbering_at_the_top_stays_in_bounds(void)
{
	struct node a, b;
	const char *err;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid mb = mk_shared_mailbox(&a, &b, "INBOX");
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_raise(a.db, &mb, MAIL_UID_ASSIGN_MAX, 0, &err), 0);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_raise(b.db, &mb, MAIL_UID_ASSIGN_MAX, 0, &err), 0);
	CU_ASSERT_EQUAL(append(&a, &mb, "Subject: a\r\n\r\na\r\n", 0, NULL), MAIL_UID_ASSIGN_MAX);
	CU_ASSERT_EQUAL(append(&b, &mb, "Subject: b\r\n\r\nb\r\n", 0, NULL), MAIL_UID_ASSIGN_MAX);
	run_sync(&a, &b, false, 4);
	CU_ASSERT_TRUE(dumps_equal(&a, &b));
	CU_ASSERT_EQUAL(count_unique(&a, "INBOX"), 2);
	struct stor_mailbox x = get_mailbox(&a, "INBOX");
	CU_ASSERT_EQUAL(x.uidnext, MAIL_UID_ASSIGN_MAX + 3);
	stor_mailbox_free(&x);
	/* No UID left for new mail. */
	struct guid g;
	guid_generate(&g);
	struct stor_append req = { .guid = &g, .text = "x\r\n", .text_len = 3 };
	CU_ASSERT_EQUAL(stor_msg_append(a.db, &mb, &req, NULL, NULL, &err), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(err, "run out of UIDs"));

	/* Two messages at the very last UID: nowhere to move one to. */
	struct guid mb2 = mk_shared_mailbox(&a, &b, "Top");
	struct guid ga, gb;
	guid_generate(&ga);
	guid_generate(&gb);
	struct stor_append top = { .uid = MAIL_UID_MAX, .guid = &ga, .text = "a\r\n", .text_len = 3 };
	CU_ASSERT_EQUAL(stor_msg_append(a.db, &mb2, &top, NULL, NULL, &err), 0);
	top.guid = &gb;
	top.text = "b\r\n";
	CU_ASSERT_EQUAL(stor_msg_append(b.db, &mb2, &top, NULL, NULL, &err), 0);
	/* And past it, storage refuses. */
	top.uid = MAIL_UID_MAX + 1;
	CU_ASSERT_EQUAL(stor_msg_append(b.db, &mb2, &top, NULL, NULL, &err), -1);
	char *da = dump(&a), *db = dump(&b);
	struct sync_settings set = { .peer_sid = SID_B, .user = USER, .step_budget = 7 };
	struct sync_pipe *p = sync_pipe_create(9, 13);
	struct sync_client *cl = sync_client_create(a.db, &set, sync_pipe_client_transport(p));
	struct sync_server *sv = sync_server_create(b.db, SID_A, sync_pipe_server_transport(p));
	CU_ASSERT_EQUAL(sync_pipe_run(p, cl, sv, 1000000), SYNC_STEP_ERROR);
	CU_ASSERT_PTR_NOT_NULL(strstr(sync_client_error(cl), "no UIDs left"));
	CU_ASSERT_PTR_NULL(sync_server_error(sv));
	sync_client_destroy(&cl);
	sync_server_destroy(&sv);
	sync_pipe_destroy(&p);
	char *da2 = dump(&a), *db2 = dump(&b);
	CU_ASSERT_STRING_EQUAL(da, da2);
	CU_ASSERT_STRING_EQUAL(db, db2);
	free(da);
	free(db);
	free(da2);
	free(db2);
	check_mailbox(&a, &mb2);
	check_mailbox(&b, &mb2);
	node_close(&a);
	node_close(&b);
}

/* A link that owns the tags (as a peer link does): its own tags "L<k>",
 * mapped back to the engine's numbers of the commands; the server's
 * answers to command k (its number 1000 + k there) go out tagged
 * "T<1000 + k>". */
struct own_tags_link {
	struct sync_client_link l;
	struct sync_server_link sl;
	struct buf to_server, to_client;
	ARRAY(uint32_t) ids; /* tag L<k> is command ids.items[k - 500] */
	unsigned bad;        /* commands or answers not as the links' contract says */
};

static void own_tags_send_line(void *ctx, uint32_t id, const char *name, const void *rest,
			       size_t rest_len)
{
	struct own_tags_link *ol = ctx;
	char tag[32];
	if (id < 1000 || id - 1000 >= ol->ids.count || name[0] == '\0' ||
	    strchr(name, ' ') != NULL || (rest_len > 0 && ((const char *)rest)[0] != ' '))
		ol->bad++;
	snprintf(tag, sizeof(tag), "T%" PRIu32, id);
	buf_append_str(&ol->to_client, tag);
	buf_append_byte(&ol->to_client, ' ');
	buf_append_str(&ol->to_client, name);
	buf_append(&ol->to_client, rest, rest_len);
	buf_append(&ol->to_client, "\r\n", 2);
}

static void own_tags_send_cmd(void *ctx, uint32_t id, const char *name, const void *args,
			      size_t args_len)
{
	struct own_tags_link *ol = ctx;
	char tag[32];
	/* Numbered 1, 2, ... in order; the name an atom; the arguments each
	 * after a space, no tag or name of their own. */
	if (id != ol->ids.count + 1 || name[0] == '\0' || strchr(name, ' ') != NULL ||
	    (args_len > 0 && ((const char *)args)[0] != ' '))
		ol->bad++;
	snprintf(tag, sizeof(tag), "L%zu", ol->ids.count + 500);
	ARRAY_PUSH(&ol->ids, id);
	buf_append_str(&ol->to_server, tag);
	buf_append_byte(&ol->to_server, ' ');
	buf_append_str(&ol->to_server, name);
	buf_append(&ol->to_server, args, args_len);
	buf_append(&ol->to_server, "\r\n", 2);
}

/* The engines write no tag: a client and a server made with links that
 * tag the lines themselves sync as on a byte transport, every answer found
 * by the number the link gives back. */
static void test_sync_linked_ends_use_the_links_tags(void)
{
	struct node a, b;
	node_open(&a, SID_A);
	node_open(&b, SID_B);
	struct guid inbox = mk_mailbox(&a, "INBOX");
	for (int i = 0; i < 12; i++) {
		char text[64];
		snprintf(text, sizeof(text), "Subject: %d\r\n\r\nbody %d\r\n", i, i);
		append(&a, &inbox, text, i % 2 ? STOR_FLAG_SEEN : 0, NULL);
	}
	/* Messages only the server holds come back through FETCH. */
	struct guid binbox = mk_mailbox(&b, "Other");
	for (int i = 0; i < 5; i++)
		append(&b, &binbox, "Subject: b\r\n\r\nb\r\n", 0, NULL);
	struct own_tags_link ol;
	memset(&ol, 0, sizeof(ol));
	buf_init(&ol.to_server);
	buf_init(&ol.to_client);
	ol.l.send_cmd = own_tags_send_cmd;
	ol.l.ctx = &ol;
	ol.sl.send_line = own_tags_send_line;
	ol.sl.ctx = &ol;
	struct buf to_client = BUF_INIT;
	struct sync_settings set = { .peer_sid = SID_B, .user = USER, .step_budget = 3 };
	struct sync_client *cl = sync_client_create_linked(a.db, &set, &ol.l);
	struct sync_server *sv = sync_server_create_linked(b.db, SID_A, &ol.sl);
	sync_server_set_budget(sv, 2);
	struct proto_parser *pp = proto_parser_create(NULL);
	struct proto_parser *sp = proto_parser_create(NULL);
	enum sync_step_result r = SYNC_STEP_AGAIN;
	unsigned foreign = 0, answers = 0;
	for (unsigned round = 0; round < 100000 && r != SYNC_STEP_DONE && r != SYNC_STEP_ERROR;
	     round++) {
		r = sync_client_step(cl);
		bool moved = buf_avail(&ol.to_server) > 0 || sync_server_busy(sv);
		const unsigned char *d = buf_rptr(&ol.to_server);
		size_t left = buf_avail(&ol.to_server);
		while (left > 0) {
			size_t used;
			const struct proto_cmd *cmd;
			int pr = proto_parser_parse(sp, d, left, &used, &cmd);
			CU_ASSERT_FATAL(pr >= 0);
			d += used;
			left -= used;
			uint64_t k;
			if (pr == 1) {
				CU_ASSERT_FATAL(cmd->tag[0] == 'L' &&
						str_to_u64(cmd->tag + 1, UINT32_MAX, &k) == 0 && k >= 500);
				CU_ASSERT_EQUAL_FATAL(
					sync_server_command(sv, (uint32_t)(k - 500 + 1000), cmd, sp), 0);
			}
		}
		buf_reset(&ol.to_server);
		if (sync_server_busy(sv))
			CU_ASSERT_FATAL(sync_server_step(sv) >= 0);
		buf_append(&to_client, buf_rptr(&ol.to_client), buf_avail(&ol.to_client));
		buf_reset(&ol.to_client);
		d = buf_rptr(&to_client);
		left = buf_avail(&to_client);
		while (left > 0) {
			size_t used;
			const struct proto_cmd *line;
			int pr = proto_parser_parse(pp, d, left, &used, &line);
			CU_ASSERT_FATAL(pr >= 0);
			d += used;
			left -= used;
			if (pr == 0)
				continue;
			uint64_t k;
			if (line->tag[0] != 'T' || str_to_u64(line->tag + 1, UINT32_MAX, &k) < 0 ||
			    k < 1000 || k - 1000 >= ol.ids.count) {
				foreign++;
				continue;
			}
			answers++;
			CU_ASSERT_EQUAL(sync_client_answer(cl, ol.ids.items[k - 1000], line), 0);
		}
		moved = moved || buf_avail(&to_client) > 0;
		buf_reset(&to_client);
		if (r == SYNC_STEP_WAIT && !moved)
			break; /* stuck: nothing in flight */
	}
	if (r != SYNC_STEP_DONE)
		fprintf(stderr, "linked sync failed: %s\n",
			sync_client_error(cl) ? sync_client_error(cl) : "-");
	CU_ASSERT_EQUAL(r, SYNC_STEP_DONE);
	CU_ASSERT_EQUAL(ol.bad, 0);
	CU_ASSERT_EQUAL(foreign, 0);
	CU_ASSERT(ol.ids.count > 4);
	CU_ASSERT(answers >= ol.ids.count);
	CU_ASSERT_EQUAL(sync_client_report(cl)->texts_fetched, 5);
	CU_ASSERT(dumps_equal(&a, &b));
	proto_parser_destroy(&pp);
	proto_parser_destroy(&sp);
	buf_free(&ol.to_client);
	sync_client_destroy(&cl);
	sync_server_destroy(&sv);
	ARRAY_FREE(&ol.ids);
	buf_free(&ol.to_server);
	buf_free(&to_client);
	node_close(&a);
	node_close(&b);
}

static const struct test_case sync_cases[] = {
	{ "empty to full copies everything", test_sync_empty_to_full_copies_everything },
	{ "linked ends: the links' tags, the engines' numbers",
	  test_sync_linked_ends_use_the_links_tags },
	{ "both append: UID conflicts renumbered", test_sync_both_append_renumbers_conflicts },
	{ "three nodes after a partition: nothing lost, nothing twice",
	  test_sync_three_nodes_after_a_partition_lose_nothing },
	{ "a flag named without a value change travels through a third node",
	  test_sync_unchanged_value_stamp_travels_through_a_third_node },
	{ "a replicated flag change is not merged again (three nodes converge)",
	  test_sync_replicated_flag_change_is_not_merged_again },
	{ "a flag change follows a message another sync moved (X replicated)",
	  test_sync_moved_message_keeps_flag_change_new },
	{ "a flag change follows a message another sync moved (X synced)",
	  test_sync_moved_message_keeps_flag_change_known },
	{ "a flagged copy the client drops merges into the server's (B unaware, C-B)",
	  test_sync_flagged_copy_taken_from_server_1 },
	{ "a flagged copy the client drops merges into the server's (B unaware, C-A)",
	  test_sync_flagged_copy_taken_from_server_2 },
	{ "a flagged copy the client drops merges into the server's (B aware, C-B)",
	  test_sync_flagged_copy_taken_from_server_3 },
	{ "a flagged copy the client drops merges into the server's (B aware, C-A)",
	  test_sync_flagged_copy_taken_from_server_4 },
	{ "a copy the client takes at the UID another sync moved it to comes above its HIGHESTMODSEQ",
	  test_sync_taken_copy_moves_above_client_hms },
	{ "a copy at the same UID below the common modseq stays",
	  test_sync_copy_at_the_same_uid_below_the_common_modseq_stays },
	{ "a flag change follows a copy the merge moves on",
	  test_sync_flag_change_follows_a_copy_the_merge_moves_on },
	{ "keywords set apart follow a message a sync moved (flag-holds 9206)",
	  test_sync_keywords_follow_a_moved_message },
	{ "keywords set apart follow a message a bundle import moved (flag-holds 9702)",
	  test_sync_keywords_follow_a_message_a_bundle_moved },
	{ "a full compare keeps a flag set apart (flag-holds 9747)",
	  test_sync_full_compare_keeps_a_flag_set_apart },
	{ "a first sync after a third node renumbered: nothing lost",
	  test_sync_first_sync_after_a_third_node_renumbered_loses_nothing },
	{ "an acknowledged expunge holds against a renumbered copy (client expunged)",
	  test_sync_acked_expunge_after_renumber_client_expunged },
	{ "an acknowledged expunge holds against a renumbered copy (server expunged)",
	  test_sync_acked_expunge_after_renumber_server_expunged },
	{ "an acknowledged expunge reaches a node that never held the message (0)",
	  test_sync_acked_expunge_reaches_a_third_node_0 },
	{ "an acknowledged expunge reaches a node that never held the message (1)",
	  test_sync_acked_expunge_reaches_a_third_node_1 },
	{ "an acknowledged expunge reaches a node that never held the message (2)",
	  test_sync_acked_expunge_reaches_a_third_node_2 },
	{ "an acknowledged expunge reaches a node that never held the message (3)",
	  test_sync_acked_expunge_reaches_a_third_node_3 },
	{ "GUID tombstones: who leaves them, stale and new copies, bound, wire",
	  test_sync_guid_tombstones },
	{ "an acknowledged APPEND survives two bundles and a full compare (11177)",
	  test_sync_acked_append_survives_two_bundles },
	{ "a renumbering's tombstone removes no copy", test_sync_renumber_tombstone_removes_nothing },
	{ "crossed engine tombstones keep one copy (acked-append-present 11161)",
	  test_sync_crossed_engine_tombstones_keep_a_copy },
	{ "tombstones say who expunged, and a sync carries it",
	  test_sync_tombstone_provenance_travels },
	{ "a user's tombstone of another message is the engine's here",
	  test_sync_user_tombstone_of_another_message_stays_engine },
	{ "engine tombstones crossing keep the message",
	  test_sync_engine_tombstones_cross_keep_the_message },
	{ "engine tombstones crossing: a user's expunge wins",
	  test_sync_engine_tombstones_cross_user_expunge_wins },
	{ "an engine tombstone alone keeps the other side's copy",
	  test_sync_engine_tombstone_only_keeps_the_other_copy },
	{ "two GUIDs at one UID, one also at a second: none lost (9706)",
	  test_sync_two_guids_at_one_uid_lose_nothing },
	{ "SPEC 10.3 example: conflicting UIDs move as specified", test_sync_spec_example_uids },
	{ "first sync: message at a client tombstone moves",
	  test_sync_first_sync_moves_message_at_client_tombstone },
	{ "flag changes on both sides merge flag by flag", test_sync_flag_changes_merge_per_flag },
	{ "partition: \\Seen on one side, \\Flagged on the other, both kept",
	  test_sync_flag_merge_disjoint_flags_kept },
	{ "same flag changed both ways: the later change wins", test_sync_flag_merge_later_change_wins },
	{ "keywords added and removed on both sides merge", test_sync_flag_merge_keywords },
	{ "a side that changed no flag takes the other's", test_sync_flag_merge_one_side_only },
	{ "a later STORE that changes no value still wins (flag-holds)",
	  test_sync_flag_merge_noop_store_counts },
	{ "records without stamps merge as before (higher modseq)",
	  test_sync_flag_merge_old_records },
	{ "stamps survive a second sync and a third node", test_sync_flag_merge_three_nodes },
	{ "malformed STAMPS are refused", test_sync_flag_merge_bad_stamps },
	{ "expunge beats a flag change", test_sync_expunge_beats_flag_change },
	{ "same name, different GUIDs: both kept",
	  test_sync_same_name_different_guids_keeps_both },
	{ "rename on either side follows", test_sync_rename_on_either_side_follows },
	{ "rename after a copy went elsewhere is kept",
	  test_sync_rename_after_a_copy_went_elsewhere_is_kept },
	{ "rename after a replicated rename is kept",
	  test_sync_rename_after_a_replicated_rename_is_kept },
	{ "a rename made during a sync, after its merge, is kept",
	  test_sync_rename_during_a_sync_is_kept },
	{ "a delete made during a sync, after its merge, is kept",
	  test_sync_delete_during_a_sync_is_kept },
	{ "renames from a third node are ordered by their stamps",
	  test_sync_third_node_renames_ordered_by_stamp },
	{ "rename stamps are not sent to a 1.0 peer", test_sync_rename_stamps_not_sent_to_a_1_0_peer },
	{ "rename onto a name created on the other side",
	  test_sync_rename_onto_a_name_created_on_the_other_side },
	{ "delete on either side follows", test_sync_delete_on_either_side_follows },
	{ "delete loses to changes on the other side",
	  test_sync_delete_loses_to_changes_on_the_other_side },
	{ "subscriptions merge three-way", test_sync_subscriptions_merge_three_way },
	{ "ACL records merge, newest wins", test_sync_acl_records_merge_newest_wins },
	{ "no-change resync examines no message", test_sync_no_change_resync_examines_no_message },
	{ "restored backup is repaired", test_sync_restored_backup_is_repaired },
	{ "the delete of a mailbox both got by replication goes through a sync",
	  test_sync_delete_of_a_replicated_mailbox_wins },
	{ "... unless the other copy changed after it",
	  test_sync_change_after_the_delete_of_a_replicated_mailbox_wins },
	{ "a wiped server gets every mailbox back, nothing deleted",
	  test_sync_wiped_server_gets_everything_back },
	{ "a server restored from an old backup gets newer mailboxes back",
	  test_sync_server_restored_from_backup_gets_newer_mailboxes },
	{ "full option compares every message", test_sync_full_option_compares_every_message },
	{ "random operations converge", test_sync_random_operations_converge },
	{ "random mailbox list changes converge",
	  test_sync_random_mailbox_list_changes_converge },
	{ "server answers bad input and survives",
	  test_sync_server_answers_bad_input_and_survives },
	{ "client refuses a broken answer", test_sync_client_refuses_a_broken_answer },
	{ "server answers SYNC-END in bounded steps, holding later commands in order",
	  test_sync_server_answers_sync_end_in_bounded_steps },
	{ "server applies a held SAVE with its text", test_sync_server_applies_a_held_save_with_its_text },
	{ "equal modseqs, different digests: every message compared",
	  test_sync_equal_modseqs_different_digests_compare_every_message },
	{ "many mailboxes merge and converge", test_sync_many_mailboxes_merge_and_converge },
	{ "a message arriving during a stepwise merge is not doubled",
	  test_sync_message_arriving_during_a_stepwise_merge_is_not_doubled },
	{ "a message arriving at the client's UID during a merge stays",
	  test_sync_message_arriving_at_the_same_uid_during_a_merge_stays },
	{ "a client message at a UID the merge planned for a conflict: none dropped",
	  test_sync_client_message_at_a_planned_renumber_uid },
	{ "... and through a client that got the message after its UIDNEXT was read",
	  test_sync_late_client_message_at_a_planned_renumber_uid },
	{ "a flag change survives a writer between the merge's steps",
	  test_sync_flag_change_survives_a_writer_between_merge_steps },
	{ "our own change survives a writer between the merge's steps",
	  test_sync_own_change_survives_a_writer_between_merge_steps },
	{ "the answer lands above a write on the client during the sync, nothing lost",
	  test_sync_answer_lands_above_a_client_write_during_the_sync },
	{ "a user-expunged GUID under the client's engine tombstone goes as a user's expunge",
	  test_sync_user_expunged_guid_under_engine_tombstone_goes_as_a_users },
	{ "wire lines follow the command table", test_sync_wire_lines_follow_the_command_table },
	{ "server refuses UIDs and modseqs past the bounds, the mailbox unchanged",
	  test_sync_server_refuses_values_past_the_bounds },
	{ "client refuses UIDs and modseqs past the bounds, the mailbox unchanged",
	  test_sync_client_refuses_values_past_the_bounds },
	{ "renumbering at the top of the UIDs stays in bounds",
	  test_sync_renumbering_at_the_top_stays_in_bounds },
	{ NULL, NULL },
};

static const struct test_suite suites[] = {
	{ "sync", sync_cases, NULL, NULL },
	{ NULL, NULL, NULL, NULL },
};

int main(void)
{
	return test_run_suites("test-sync", suites);
}
