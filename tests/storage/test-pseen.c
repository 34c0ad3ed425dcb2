/* Unit tests of private \Seen records (storage/storage-pseen.c, SPEC.md
 * 7.7): the record and its modseq, the per-(mailbox, user) count and the
 * digest share written in the change's batch, a user's expunge taking the
 * records, the engine's moves and drops keeping them, deleting the
 * mailbox, replica and merge rules, and bad input. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/xalloc.h"
#include "storage/storage-private.h"
#include "storage/storage-pseen.h"
#include "tests/storage/tests.h"

static struct guid msg_guid(struct stor_db *db, const struct guid *mb, uint32_t uid)
{
	struct stor_msg m;
	const char *err;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(db, mb, uid, &m, &err), 1);
	struct guid g = m.guid;
	stor_msg_free(&m);
	return g;
}

static int put1(struct stor_db *db, const struct guid *mb, const char *user,
		enum stor_pseen_mode mode, const struct guid *g, bool seen, uint64_t modseq,
		int64_t time_ms)
{
	const char *err = NULL;
	struct stor_pseen_change c = { *g, seen, modseq, time_ms };
	return stor_pseen_put(db, mb, user, mode, &c, 1, NULL, NULL, &err);
}

static uint32_t count_of(struct stor_db *db, const struct guid *mb, const char *user)
{
	uint32_t n = 12345;
	const char *err;
	CU_ASSERT_EQUAL(stor_pseen_count(db, mb, user, &n, &err), 0);
	return n;
}

static bool seen_of(struct stor_db *db, const struct guid *mb, const struct guid *g,
		    const char *user)
{
	bool s = false;
	const char *err;
	CU_ASSERT_EQUAL(stor_pseen_seen(db, mb, g, user, &s, &err), 0);
	return s;
}

static void mailbox_of(struct stor_db *db, const struct guid *g, struct stor_mailbox *mb)
{
	const char *err;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(db, g, mb, &err), 1);
}

static void test_local_change_modseq_count_digest(void)
{
	struct tstore t;
	struct stor_mailbox before, after, cleared;
	const char *err = NULL;
	tstore_open(&t);
	struct guid mb = tmailbox(t.db, "alice", "Shared");
	tappend(t.db, &mb, 0, "one", 0);
	tappend(t.db, &mb, 0, "two", STOR_FLAG_SEEN);
	struct guid g1 = msg_guid(t.db, &mb, 1), g2 = msg_guid(t.db, &mb, 2);
	mailbox_of(t.db, &mb, &before);
	CU_ASSERT_EQUAL(before.highestmodseq, 2);

	struct stor_pseen_change c[2] = { { g1, true, 0, 0 }, { g2, true, 0, 0 } };
	uint64_t ms = 0;
	stor_pseen_list changed = ARRAY_INIT;
	CU_ASSERT_EQUAL(stor_pseen_put(t.db, &mb, "bob", STOR_PSEEN_LOCAL, c, 2, &ms, &changed,
				       &err), 0);
	/* One modseq for the call, from the mailbox's sequence. */
	CU_ASSERT_EQUAL(ms, 3);
	CU_ASSERT_EQUAL(changed.count, 2);
	for (size_t i = 0; i < changed.count; i++) {
		CU_ASSERT_EQUAL(changed.items[i].modseq, 3);
		CU_ASSERT_STRING_EQUAL(changed.items[i].user, "bob");
	}
	stor_pseen_list_free(&changed);
	mailbox_of(t.db, &mb, &after);
	CU_ASSERT_EQUAL(after.highestmodseq, 3);
	/* The messages themselves did not change: flags, modseq, unseen. */
	CU_ASSERT_EQUAL(after.unseen, 1);
	struct stor_msg m;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &mb, 1, &m, &err), 1);
	CU_ASSERT_EQUAL(m.modseq, 1);
	CU_ASSERT_EQUAL(m.flags, 0);
	stor_msg_free(&m);
	/* bob's view, and nobody else's. */
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "bob"), 2);
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "carol"), 0);
	CU_ASSERT_TRUE(seen_of(t.db, &mb, &g1, "bob"));
	CU_ASSERT_FALSE(seen_of(t.db, &mb, &g1, "carol"));
	CU_ASSERT_FALSE(seen_of(t.db, &mb, &g1, "alice"));
	CU_ASSERT_NOT_EQUAL(memcmp(before.digest, after.digest, 16), 0);
	tcheck(t.db, &mb);

	/* A clear is kept as a record at 0, at a new modseq, and takes its
	 * share back out: the digest is the one without records. */
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_LOCAL, &g1, false, 0, 0), 0);
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_LOCAL, &g2, false, 0, 0), 0);
	mailbox_of(t.db, &mb, &cleared);
	CU_ASSERT_EQUAL(cleared.highestmodseq, 5);
	CU_ASSERT_EQUAL(memcmp(before.digest, cleared.digest, 16), 0);
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "bob"), 0);
	struct stor_pseen r;
	CU_ASSERT_EQUAL(stor_pseen_get(t.db, &mb, &g1, "bob", &r, &err), 1);
	CU_ASSERT_FALSE(r.seen);
	CU_ASSERT_EQUAL(r.modseq, 4);
	tcheck(t.db, &mb);
	/* What changed above a modseq, in modseq order. */
	stor_pseen_list since;
	CU_ASSERT_EQUAL_FATAL(stor_pseen_since(t.db, &mb, 3, &since, &err), 0);
	CU_ASSERT_EQUAL_FATAL(since.count, 2);
	CU_ASSERT_EQUAL(since.items[0].modseq, 4);
	CU_ASSERT_EQUAL(guid_cmp(&since.items[0].guid, &g1), 0);
	CU_ASSERT_EQUAL(since.items[1].modseq, 5);
	CU_ASSERT_FALSE(since.items[1].seen);
	stor_pseen_list_free(&since);
	CU_ASSERT_EQUAL_FATAL(stor_pseen_since(t.db, &mb, 5, &since, &err), 0);
	CU_ASSERT_EQUAL(since.count, 0);
	stor_pseen_list_free(&since);
	/* Survives a reopen (journaled like the rest). */
	tstore_reopen(&t);
	CU_ASSERT_EQUAL(stor_pseen_get(t.db, &mb, &g1, "bob", &r, &err), 1);
	CU_ASSERT_EQUAL(r.modseq, 4);
	tcheck(t.db, &mb);
	stor_mailbox_free(&before);
	stor_mailbox_free(&after);
	stor_mailbox_free(&cleared);
	tstore_close(&t);
}

static void test_local_time_later_than_replaced(void)
{
	struct tstore t;
	struct stor_pseen r;
	const char *err;
	tstore_open(&t);
	struct guid mb = tmailbox(t.db, "alice", "Shared");
	tappend(t.db, &mb, 0, "one", 0);
	struct guid g = msg_guid(t.db, &mb, 1);
	/* A record from a node whose clock is far ahead. */
	int64_t ahead = stor_now_ms() + 3600 * 1000;
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_MERGE, &g, true, 7, ahead), 0);
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_LOCAL, &g, false, 0, 0), 0);
	CU_ASSERT_EQUAL(stor_pseen_get(t.db, &mb, &g, "bob", &r, &err), 1);
	CU_ASSERT_FALSE(r.seen);
	CU_ASSERT_EQUAL(r.time_ms, ahead + 1);
	CU_ASSERT_EQUAL(r.modseq, 8);
	/* A GUID named twice in one call: the first naming is the one. */
	struct stor_pseen_change twice[3] = { { g, true, 0, 0 }, { g, false, 0, 0 }, { g, false, 0, 0 } };
	stor_pseen_list ch = ARRAY_INIT;
	CU_ASSERT_EQUAL(stor_pseen_put(t.db, &mb, "carol", STOR_PSEEN_LOCAL, twice, 3, NULL, &ch,
				       &err), 0);
	CU_ASSERT_EQUAL(ch.count, 1);
	stor_pseen_list_free(&ch);
	CU_ASSERT_EQUAL(stor_pseen_get(t.db, &mb, &g, "carol", &r, &err), 1);
	CU_ASSERT_TRUE(r.seen);
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "carol"), 1);
	/* Naming an unchanged value is still a change of it (a new modseq). */
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_LOCAL, &g, false, 0, 0), 0);
	CU_ASSERT_EQUAL(stor_pseen_get(t.db, &mb, &g, "bob", &r, &err), 1);
	CU_ASSERT_EQUAL(r.modseq, 10);
	CU_ASSERT_EQUAL(r.time_ms, ahead + 2);
	tcheck(t.db, &mb);
	tstore_close(&t);
}

static void test_replica_rules_and_unheld_guids(void)
{
	struct tstore t;
	struct stor_pseen r;
	struct stor_mailbox m;
	const char *err;
	tstore_open(&t);
	struct guid mb = tmailbox(t.db, "alice", "Shared");
	tappend(t.db, &mb, 0, "one", 0);
	struct guid g = msg_guid(t.db, &mb, 1);
	struct guid later;
	memset(&later, 0x5a, sizeof(later));

	/* A master (LOCAL) skips a GUID it does not hold. */
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_LOCAL, &later, true, 0, 0), 0);
	CU_ASSERT_EQUAL(stor_pseen_get(t.db, &mb, &later, "bob", NULL, &err), 0);
	/* A replica keeps it, without counting it: the SAVE is on its way. */
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_REPLICA, &later, true, 10, 1000), 0);
	CU_ASSERT_EQUAL(stor_pseen_get(t.db, &mb, &later, "bob", NULL, &err), 1);
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "bob"), 0);
	mailbox_of(t.db, &mb, &m);
	CU_ASSERT_EQUAL(m.highestmodseq, 10);
	stor_mailbox_free(&m);
	tcheck(t.db, &mb);
	/* The message arrives: its record counts now. */
	struct stor_append app;
	memset(&app, 0, sizeof(app));
	app.uid = 5;
	app.modseq = 9;
	app.guid = &later;
	app.text = "later";
	app.text_len = 5;
	CU_ASSERT_EQUAL_FATAL(stor_msg_append(t.db, &mb, &app, NULL, NULL, &err), 0);
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "bob"), 1);
	CU_ASSERT_TRUE(seen_of(t.db, &mb, &later, "bob"));
	tcheck(t.db, &mb);

	/* Replica: applied when newer, an older or equal modseq changes
	 * nothing, and a later time here wins (changed here while apart). */
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_REPLICA, &g, true, 11, 2000), 0);
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_REPLICA, &g, false, 11, 3000), 0);
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_REPLICA, &g, false, 8, 3000), 0);
	CU_ASSERT_TRUE(seen_of(t.db, &mb, &g, "bob"));
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_REPLICA, &g, false, 12, 1500), 0);
	CU_ASSERT_TRUE(seen_of(t.db, &mb, &g, "bob"));
	CU_ASSERT_EQUAL(stor_pseen_get(t.db, &mb, &g, "bob", &r, &err), 1);
	CU_ASSERT_EQUAL(r.modseq, 11);
	mailbox_of(t.db, &mb, &m);
	CU_ASSERT_EQUAL(m.highestmodseq, 12);
	stor_mailbox_free(&m);
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_REPLICA, &g, false, 13, 2500), 0);
	CU_ASSERT_FALSE(seen_of(t.db, &mb, &g, "bob"));
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "bob"), 1);
	tcheck(t.db, &mb);
	tstore_close(&t);
}

static void test_user_expunge_takes_records_engine_keeps(void)
{
	struct tstore t;
	struct stor_mailbox m0, m1;
	const char *err;
	tstore_open(&t);
	struct guid mb = tmailbox(t.db, "alice", "Shared");
	tappend(t.db, &mb, 0, "one", 0);
	tappend(t.db, &mb, 0, "two", 0);
	tappend(t.db, &mb, 0, "three", 0);
	struct guid g1 = msg_guid(t.db, &mb, 1), g2 = msg_guid(t.db, &mb, 2),
		    g3 = msg_guid(t.db, &mb, 3);
	mailbox_of(t.db, &mb, &m0);
	const char *users[] = { "bob", "carol" };
	for (int u = 0; u < 2; u++) {
		CU_ASSERT_EQUAL(put1(t.db, &mb, users[u], STOR_PSEEN_LOCAL, &g1, true, 0, 0), 0);
		CU_ASSERT_EQUAL(put1(t.db, &mb, users[u], STOR_PSEEN_LOCAL, &g2, true, 0, 0), 0);
		CU_ASSERT_EQUAL(put1(t.db, &mb, users[u], STOR_PSEEN_LOCAL, &g3, true, 0, 0), 0);
	}
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "bob"), 3);
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "carol"), 3);

	/* A user's expunge: every user's records of the GUID go with it. */
	uint32_t uid = 1;
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &mb, &uid, 1, 0, NULL, &err), 0);
	CU_ASSERT_EQUAL(stor_pseen_get(t.db, &mb, &g1, "bob", NULL, &err), 0);
	CU_ASSERT_EQUAL(stor_pseen_get(t.db, &mb, &g1, "carol", NULL, &err), 0);
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "bob"), 2);
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "carol"), 2);
	tcheck(t.db, &mb);

	/* The engine's move (UIDFIX) keeps records and count. */
	CU_ASSERT_EQUAL(stor_msg_renumber(t.db, &mb, 2, 20, 0, &err), 0);
	CU_ASSERT_TRUE(seen_of(t.db, &mb, &g2, "bob"));
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "bob"), 2);
	tcheck(t.db, &mb);

	/* A duplicate copy dropped (the GUID stays held): nothing changes. */
	CU_ASSERT_EQUAL(stor_msg_copy(t.db, &mb, 20, &mb, 30, 0, NULL, NULL, &err), 0);
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "bob"), 2);
	tcheck(t.db, &mb);
	stor_uid_list dropped = ARRAY_INIT;
	CU_ASSERT_EQUAL(stor_msg_dedupe(t.db, &mb, &dropped, &err), 0);
	CU_ASSERT_EQUAL(dropped.count, 1);
	ARRAY_FREE(&dropped);
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "bob"), 2);
	tcheck(t.db, &mb);

	/* The engine dropping the last copy: records kept, no longer
	 * counted; the message coming back counts them again. */
	uid = 3;
	CU_ASSERT_EQUAL(stor_msg_expunge_kind(t.db, &mb, &uid, 1, 0, false, NULL, &err), 0);
	CU_ASSERT_EQUAL(stor_pseen_get(t.db, &mb, &g3, "bob", NULL, &err), 1);
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "bob"), 1);
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "carol"), 1);
	tcheck(t.db, &mb);
	struct stor_append app;
	memset(&app, 0, sizeof(app));
	app.uid = 40;
	app.guid = &g3;
	app.text = "three";
	app.text_len = 5;
	CU_ASSERT_EQUAL_FATAL(stor_msg_append(t.db, &mb, &app, NULL, NULL, &err), 0);
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "carol"), 2);
	tcheck(t.db, &mb);
	/* Records of a GUID no longer held are dropped by a resync; held
	 * ones are not. */
	uid = 40;
	CU_ASSERT_EQUAL(stor_msg_expunge_kind(t.db, &mb, &uid, 1, 0, false, NULL, &err), 0);
	size_t n = 99;
	struct guid both[2] = { g3, g2 };
	CU_ASSERT_EQUAL(stor_pseen_drop(t.db, &mb, both, 2, &n, &err), 0);
	CU_ASSERT_EQUAL(n, 2);
	CU_ASSERT_EQUAL(stor_pseen_get(t.db, &mb, &g3, "bob", NULL, &err), 0);
	CU_ASSERT_TRUE(seen_of(t.db, &mb, &g2, "bob"));
	tcheck(t.db, &mb);

	/* Expunging the rest leaves no record, no count, and the digest of
	 * an empty mailbox without records. */
	uid = 20;
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &mb, &uid, 1, 0, NULL, &err), 0);
	uid = 30;
	stor_msg_expunge(t.db, &mb, &uid, 1, 0, NULL, &err);
	mailbox_of(t.db, &mb, &m1);
	CU_ASSERT_EQUAL(m1.messages, 0);
	unsigned char zero[16] = { 0 };
	CU_ASSERT_EQUAL(memcmp(m1.digest, zero, 16), 0);
	stor_pseen_list all;
	CU_ASSERT_EQUAL(stor_pseen_all(t.db, &mb, &all, &err), 0);
	CU_ASSERT_EQUAL(all.count, 0);
	stor_pseen_list_free(&all);
	tcheck(t.db, &mb);
	stor_mailbox_free(&m0);
	stor_mailbox_free(&m1);
	tstore_close(&t);
}

static bool any_key(struct stor_db *db, char letter, const struct guid *mb)
{
	struct stor_key prefix;
	const unsigned char *key;
	size_t klen;
	const char *err;
	stor_key_init(&prefix, letter);
	stor_key_guid(&prefix, mb);
	leveldb_iterator_t *it = stor_iter_seek(db, &prefix);
	bool any = stor_iter_in(it, &prefix, &key, &klen);
	stor_iter_end(db, it, &err);
	return any;
}

static void test_mailbox_delete_and_rename(void)
{
	struct tstore t;
	const char *err;
	tstore_open(&t);
	struct guid mb = tmailbox(t.db, "alice", "Shared");
	tappend(t.db, &mb, 0, "one", 0);
	struct guid g = msg_guid(t.db, &mb, 1);
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_LOCAL, &g, true, 0, 0), 0);
	/* RENAME keeps the GUID, so the records. */
	CU_ASSERT_EQUAL(stor_mailbox_rename(t.db, &mb, "Renamed", &err), 0);
	CU_ASSERT_TRUE(seen_of(t.db, &mb, &g, "bob"));
	tcheck(t.db, &mb);
	CU_ASSERT_TRUE(any_key(t.db, 'C', &mb));
	CU_ASSERT_TRUE(any_key(t.db, 'F', &mb));
	CU_ASSERT_TRUE(any_key(t.db, 'Z', &mb));
	CU_ASSERT_EQUAL(stor_mailbox_delete(t.db, &mb, &err), 0);
	CU_ASSERT_FALSE(any_key(t.db, 'C', &mb));
	CU_ASSERT_FALSE(any_key(t.db, 'F', &mb));
	CU_ASSERT_FALSE(any_key(t.db, 'Z', &mb));
	/* A mailbox made again with that GUID starts with none. */
	struct stor_mailbox_create req;
	memset(&req, 0, sizeof(req));
	req.user = "alice";
	req.name = "Shared";
	req.guid = &mb;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(t.db, &req, NULL, &err), 0);
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "bob"), 0);
	tcheck(t.db, &mb);
	tstore_close(&t);
}

static void test_same_records_same_digest_any_order(void)
{
	struct tstore a, b;
	struct stor_mailbox ma, mb_;
	const char *err;
	tstore_open(&a);
	tstore_open(&b);
	struct guid mb;
	memset(&mb, 0x42, sizeof(mb));
	struct stor_mailbox_create req;
	memset(&req, 0, sizeof(req));
	req.user = "alice";
	req.name = "Shared";
	req.guid = &mb;
	req.uidvalidity = 77;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(a.db, &req, NULL, &err), 0);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(b.db, &req, NULL, &err), 0);
	struct guid g[2];
	memset(&g[0], 0x11, sizeof(g[0]));
	memset(&g[1], 0x22, sizeof(g[1]));
	for (int i = 0; i < 2; i++) {
		struct stor_append app;
		memset(&app, 0, sizeof(app));
		app.uid = (uint32_t)i + 1;
		app.modseq = (uint64_t)i + 1;
		app.guid = &g[i];
		app.text = "x";
		app.text_len = 1;
		CU_ASSERT_EQUAL_FATAL(stor_msg_append(a.db, &mb, &app, NULL, NULL, &err), 0);
		CU_ASSERT_EQUAL_FATAL(stor_msg_append(b.db, &mb, &app, NULL, NULL, &err), 0);
	}
	/* a: records before, b: after a record-less state in between. */
	CU_ASSERT_EQUAL(put1(a.db, &mb, "bob", STOR_PSEEN_MERGE, &g[0], true, 5, 100), 0);
	CU_ASSERT_EQUAL(put1(a.db, &mb, "carol", STOR_PSEEN_MERGE, &g[1], true, 6, 100), 0);
	CU_ASSERT_EQUAL(put1(b.db, &mb, "carol", STOR_PSEEN_MERGE, &g[1], true, 9, 100), 0);
	CU_ASSERT_EQUAL(put1(b.db, &mb, "bob", STOR_PSEEN_MERGE, &g[0], false, 7, 50), 0);
	mailbox_of(a.db, &mb, &ma);
	mailbox_of(b.db, &mb, &mb_);
	CU_ASSERT_NOT_EQUAL(memcmp(ma.digest, mb_.digest, 16), 0);
	stor_mailbox_free(&mb_);
	CU_ASSERT_EQUAL(put1(b.db, &mb, "bob", STOR_PSEEN_MERGE, &g[0], true, 8, 100), 0);
	mailbox_of(b.db, &mb, &mb_);
	/* Same records (modseqs differ): same digest. */
	CU_ASSERT_EQUAL(memcmp(ma.digest, mb_.digest, 16), 0);
	/* The dump shows them, without modseqs: byte identical. */
	struct buf da = BUF_INIT, db_ = BUF_INIT;
	CU_ASSERT_EQUAL(stor_dump_user(a.db, "alice", &da, &err), 0);
	CU_ASSERT_EQUAL(stor_dump_user(b.db, "alice", &db_, &err), 0);
	CU_ASSERT_EQUAL(da.len, db_.len);
	CU_ASSERT_EQUAL(memcmp(da.data, db_.data, da.len), 0);
	buf_append_byte(&da, '\0');
	CU_ASSERT_PTR_NOT_NULL(strstr((const char *)da.data, "user=bob seen=1"));
	buf_free(&da);
	buf_free(&db_);
	tcheck(a.db, &mb);
	tcheck(b.db, &mb);
	stor_mailbox_free(&ma);
	stor_mailbox_free(&mb_);
	tstore_close(&a);
	tstore_close(&b);
}

static void test_bad_input_changes_nothing(void)
{
	struct tstore t;
	struct stor_mailbox m0, m1;
	const char *err;
	tstore_open(&t);
	struct guid mb = tmailbox(t.db, "alice", "Shared");
	tappend(t.db, &mb, 0, "one", 0);
	struct guid g = msg_guid(t.db, &mb, 1), zero, nobox;
	memset(&zero, 0, sizeof(zero));
	memset(&nobox, 0x77, sizeof(nobox));
	mailbox_of(t.db, &mb, &m0);
	CU_ASSERT_EQUAL(put1(t.db, &mb, "", STOR_PSEEN_LOCAL, &g, true, 0, 0), -1);
	CU_ASSERT_EQUAL(put1(t.db, &mb, "b\tob", STOR_PSEEN_LOCAL, &g, true, 0, 0), -1);
	char *longname = xmalloc(STOR_MAX_USER_LEN + 2);
	memset(longname, 'x', STOR_MAX_USER_LEN + 1);
	longname[STOR_MAX_USER_LEN + 1] = '\0';
	CU_ASSERT_EQUAL(put1(t.db, &mb, longname, STOR_PSEEN_LOCAL, &g, true, 0, 0), -1);
	free(longname);
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_LOCAL, &zero, true, 0, 0), -1);
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_REPLICA, &g, true, 0, 10), -1);
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_REPLICA, &g, true, UINT64_MAX, 10), -1);
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_MERGE, &g, true, 5, -1), -1);
	CU_ASSERT_EQUAL(put1(t.db, &nobox, "bob", STOR_PSEEN_LOCAL, &g, true, 0, 0), -1);
	/* A batch with one bad change writes none of it. */
	struct stor_pseen_change two[2] = { { g, true, 5, 10 }, { zero, true, 6, 10 } };
	CU_ASSERT_EQUAL(stor_pseen_put(t.db, &mb, "bob", STOR_PSEEN_MERGE, two, 2, NULL, NULL,
				       &err), -1);
	mailbox_of(t.db, &mb, &m1);
	CU_ASSERT_EQUAL(m1.highestmodseq, m0.highestmodseq);
	CU_ASSERT_EQUAL(memcmp(m0.digest, m1.digest, 16), 0);
	CU_ASSERT_EQUAL(stor_pseen_get(t.db, &mb, &g, "bob", NULL, &err), 0);
	stor_mailbox_free(&m1);
	/* A write that fails leaves neither record nor count nor digest. */
	stor_test_fail_nth_write(t.db, 1);
	CU_ASSERT_EQUAL(put1(t.db, &mb, "bob", STOR_PSEEN_MERGE, &g, true, 5, 10), -1);
	tstore_reopen(&t);
	CU_ASSERT_EQUAL(stor_pseen_get(t.db, &mb, &g, "bob", NULL, &err), 0);
	CU_ASSERT_EQUAL(count_of(t.db, &mb, "bob"), 0);
	mailbox_of(t.db, &mb, &m1);
	CU_ASSERT_EQUAL(memcmp(m0.digest, m1.digest, 16), 0);
	stor_mailbox_free(&m1);
	/* A damaged record is reported, never half-read. */
	struct stor_key k;
	stor_key_init(&k, 'C');
	stor_key_guid(&k, &mb);
	stor_key_guid(&k, &g);
	stor_key_bytes(&k, "bob", 3);
	CU_ASSERT_EQUAL(stor_test_raw_put(t.db, k.b, k.len, "\x02xyz", 4, &err), 0);
	CU_ASSERT_EQUAL(stor_pseen_get(t.db, &mb, &g, "bob", NULL, &err), -1);
	CU_ASSERT_EQUAL(stor_last_error_kind(t.db), STOR_ERROR_CORRUPT);
	stor_mailbox_free(&m0);
	tstore_close(&t);
}

static void test_no_records_keeps_old_digest(void)
{
	/* A mailbox nobody has records in: the digest is exactly the messages'
	 * (what nodes before private \Seen compute), and the total counter is
	 * absent, so appends do no seek. */
	struct tstore t;
	struct stor_mailbox m;
	stor_msg_list msgs;
	const char *err;
	tstore_open(&t);
	struct guid mb = tmailbox(t.db, "alice", "INBOX");
	tappend(t.db, &mb, 0, "one", STOR_FLAG_SEEN);
	tappend(t.db, &mb, 0, "two", 0);
	mailbox_of(t.db, &mb, &m);
	CU_ASSERT_EQUAL_FATAL(stor_msg_list_range(t.db, &mb, 1, UINT32_MAX, &msgs, &err), 0);
	unsigned char d[16] = { 0 }, h[16];
	for (size_t i = 0; i < msgs.count; i++) {
		stor_msg_hash(&msgs.items[i], h);
		for (int j = 0; j < 16; j++)
			d[j] ^= h[j];
	}
	CU_ASSERT_EQUAL(memcmp(d, m.digest, 16), 0);
	CU_ASSERT_FALSE(any_key(t.db, 'Z', &mb));
	stor_msg_list_free(&msgs);
	stor_mailbox_free(&m);
	tstore_close(&t);
}

const struct test_case storage_pseen_cases[] = {
	{ "local change: one modseq, count, digest, clear kept", test_local_change_modseq_count_digest },
	{ "local change: time later than the record replaced", test_local_time_later_than_replaced },
	{ "replica: newer modseq applies, later local time wins, unheld GUIDs kept",
	  test_replica_rules_and_unheld_guids },
	{ "user's expunge takes records, the engine's moves and drops keep them",
	  test_user_expunge_takes_records_engine_keeps },
	{ "mailbox delete takes them, rename keeps them", test_mailbox_delete_and_rename },
	{ "same records in any order: same digest and dump", test_same_records_same_digest_any_order },
	{ "bad input and failed writes change nothing", test_bad_input_changes_nothing },
	{ "a mailbox without records keeps today's digest", test_no_records_keeps_old_digest },
	{ NULL, NULL },
};
