/* Unit tests of storage/ messages: append (master and replica), copy,
 * flag changes with CONDSTORE, expunge tombstones, renumbering, changes
 * since a modseq, digests and the canonical dump. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "lib/mail-limits.h"
#include "lib/xalloc.h"
#include "tests/storage/tests.h"

static int append_full(struct stor_db *db, const struct guid *mb, uint32_t uid, uint64_t modseq,
		       const struct guid *guid, uint32_t flags, const char *const *kw, size_t kwn,
		       const char *text, uint32_t *uid_r, uint64_t *modseq_r, const char **error_r)
{
	struct stor_append req;
	memset(&req, 0, sizeof(req));
	req.uid = uid;
	req.modseq = modseq;
	req.guid = guid;
	req.flags = flags;
	req.keywords = kw;
	req.keyword_count = kwn;
	req.internaldate = 1700000000;
	req.internaldate_tz = 60;
	req.text = text;
	req.text_len = text == NULL ? 0 : strlen(text);
	return stor_msg_append(db, mb, &req, uid_r, modseq_r, error_r);
}

static void test_append_assigns_uids_and_modseqs(void)
{
	struct tstore t;
	struct stor_mailbox mb;
	struct stor_msg msg;
	const char *error = NULL;
	uint32_t uid;
	uint64_t modseq;
	const char *kw[] = { "$Junk", "work" };
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	CU_ASSERT_EQUAL(append_full(t.db, &g, 0, 0, NULL, STOR_FLAG_SEEN, kw, 2, "Subject: a\r\n\r\nhi",
				    &uid, &modseq, &error), 0);
	CU_ASSERT_EQUAL(uid, 1);
	CU_ASSERT_EQUAL(modseq, 1);
	CU_ASSERT_EQUAL(append_full(t.db, &g, 0, 0, NULL, 0, NULL, 0, "second", &uid, &modseq,
				    &error), 0);
	CU_ASSERT_EQUAL(uid, 2);
	CU_ASSERT_EQUAL(modseq, 2);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t.db, &g, &mb, &error), 1);
	CU_ASSERT_EQUAL(mb.uidnext, 3);
	CU_ASSERT_EQUAL(mb.highestmodseq, 2);
	CU_ASSERT_EQUAL(mb.messages, 2);
	CU_ASSERT_EQUAL(mb.unseen, 1);
	stor_mailbox_free(&mb);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 1, &msg, &error), 1);
	CU_ASSERT_EQUAL(msg.uid, 1);
	CU_ASSERT_EQUAL(msg.flags, STOR_FLAG_SEEN);
	CU_ASSERT_EQUAL(msg.size, strlen("Subject: a\r\n\r\nhi"));
	CU_ASSERT_EQUAL(msg.internaldate, 1700000000);
	CU_ASSERT_EQUAL(msg.internaldate_tz, 60);
	CU_ASSERT_EQUAL_FATAL(msg.keywords.count, 2);
	CU_ASSERT_STRING_EQUAL(msg.keywords.items[0], "$Junk");
	CU_ASSERT_STRING_EQUAL(msg.keywords.items[1], "work");
	struct buf text = BUF_INIT;
	CU_ASSERT_EQUAL(stor_text_read(t.db, &msg.guid, 0, 1000, &text, &error), 0);
	CU_ASSERT_EQUAL(text.len, msg.size);
	CU_ASSERT(memcmp(text.data, "Subject: a\r\n\r\nhi", text.len) == 0);
	buf_reset(&text);
	CU_ASSERT_EQUAL(stor_text_read(t.db, &msg.guid, 9, 3, &text, &error), 0);
	CU_ASSERT_EQUAL(text.len, 3);
	CU_ASSERT(memcmp(text.data, "a\r\n", 3) == 0);
	buf_free(&text);
	uint32_t found = 0;
	CU_ASSERT_EQUAL(stor_msg_find_guid(t.db, &g, &msg.guid, &found, &error), 1);
	CU_ASSERT_EQUAL(found, 1);
	stor_msg_free(&msg);
	CU_ASSERT_EQUAL(stor_msg_get(t.db, &g, 3, NULL, &error), 0);
	tcheck(t.db, &g);
	tstore_close(&t);
}

static void test_append_to_missing_mailbox_fails(void)
{
	struct tstore t;
	struct guid g;
	const char *error = NULL;
	tstore_open(&t);
	guid_generate(&g);
	CU_ASSERT_EQUAL(append_full(t.db, &g, 0, 0, NULL, 0, NULL, 0, "x", NULL, NULL, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(error, "does not exist"));
	tstore_close(&t);
}

static void test_replica_append_is_idempotent(void)
{
	struct tstore t;
	struct stor_mailbox mb;
	struct guid mg, other;
	const char *error = NULL;
	uint32_t uid;
	uint64_t modseq;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	guid_generate(&mg);
	guid_generate(&other);
	CU_ASSERT_EQUAL(append_full(t.db, &g, 7, 40, &mg, 0, NULL, 0, "replicated", &uid, &modseq,
				    &error), 0);
	CU_ASSERT_EQUAL(uid, 7);
	CU_ASSERT_EQUAL(modseq, 40);
	/* The same SAVE again changes nothing. */
	CU_ASSERT_EQUAL(append_full(t.db, &g, 7, 41, &mg, 0, NULL, 0, "replicated", &uid, &modseq,
				    &error), 0);
	CU_ASSERT_EQUAL(uid, 7);
	CU_ASSERT_EQUAL(modseq, 40);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t.db, &g, &mb, &error), 1);
	CU_ASSERT_EQUAL(mb.messages, 1);
	CU_ASSERT_EQUAL(mb.uidnext, 8);
	CU_ASSERT_EQUAL(mb.highestmodseq, 40);
	stor_mailbox_free(&mb);
	/* Another message may not take the UID. */
	CU_ASSERT_EQUAL(append_full(t.db, &g, 7, 0, &other, 0, NULL, 0, "other", NULL, NULL,
				    &error), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(error, "UID 7"));
	/* A replica may fill a lower, never-used UID. */
	CU_ASSERT_EQUAL(append_full(t.db, &g, 3, 0, &other, 0, NULL, 0, "other", &uid, &modseq,
				    &error), 0);
	CU_ASSERT_EQUAL(uid, 3);
	CU_ASSERT_EQUAL(modseq, 41);
	/* Texts are shared by GUID: only one reference per message. */
	tcheck(t.db, &g);
	tstore_close(&t);
}

static void test_append_refuses_uid_of_expunged_message(void)
{
	struct tstore t;
	struct guid mg, other;
	const char *error = NULL;
	uint32_t uid = 0;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	guid_generate(&mg);
	guid_generate(&other);
	CU_ASSERT_EQUAL(append_full(t.db, &g, 5, 0, &mg, 0, NULL, 0, "m", NULL, NULL, &error), 0);
	uid = 5;
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &g, &uid, 1, 0, NULL, &error), 0);
	CU_ASSERT_EQUAL(append_full(t.db, &g, 5, 0, &other, 0, NULL, 0, "o", NULL, NULL, &error), -1);
	/* A late replay of the expunged message does not resurrect it. */
	CU_ASSERT_EQUAL(append_full(t.db, &g, 5, 0, &mg, 0, NULL, 0, "m", &uid, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_msg_get(t.db, &g, 5, NULL, &error), 0);
	tcheck(t.db, &g);
	tstore_close(&t);
}

static void test_append_keyword_limits(void)
{
	struct tstore t;
	const char *error = NULL;
	char *kws[STOR_MAX_KEYWORDS + 1];
	char longkw[STOR_MAX_KEYWORD_LEN + 2];
	struct stor_msg msg;
	uint32_t uid;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	for (int i = 0; i <= STOR_MAX_KEYWORDS; i++)
		kws[i] = xasprintf("kw%d", i);
	CU_ASSERT_EQUAL(append_full(t.db, &g, 0, 0, NULL, 0, (const char *const *)kws,
				    STOR_MAX_KEYWORDS + 1, "x", NULL, NULL, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(error, "too many keywords"));
	CU_ASSERT_EQUAL(append_full(t.db, &g, 0, 0, NULL, 0, (const char *const *)kws,
				    STOR_MAX_KEYWORDS, "x", &uid, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, uid, &msg, &error), 1);
	CU_ASSERT_EQUAL(msg.keywords.count, STOR_MAX_KEYWORDS);
	stor_msg_free(&msg);
	for (int i = 0; i <= STOR_MAX_KEYWORDS; i++)
		free(kws[i]);

	memset(longkw, 'k', sizeof(longkw) - 1);
	longkw[sizeof(longkw) - 1] = '\0';
	const char *one[] = { longkw };
	CU_ASSERT_EQUAL(append_full(t.db, &g, 0, 0, NULL, 0, one, 1, "x", NULL, NULL, &error), -1);
	longkw[STOR_MAX_KEYWORD_LEN] = '\0';
	CU_ASSERT_EQUAL(append_full(t.db, &g, 0, 0, NULL, 0, one, 1, "x", NULL, NULL, &error), 0);
	const char *bad[] = { "has space" };
	CU_ASSERT_EQUAL(append_full(t.db, &g, 0, 0, NULL, 0, bad, 1, "x", NULL, NULL, &error), -1);
	const char *sys[] = { "\\Seen" };
	CU_ASSERT_EQUAL(append_full(t.db, &g, 0, 0, NULL, 0, sys, 1, "x", NULL, NULL, &error), -1);
	/* Case-insensitive duplicates collapse to the first spelling. */
	const char *dups[] = { "Work", "WORK", "alpha", "work" };
	CU_ASSERT_EQUAL(append_full(t.db, &g, 0, 0, NULL, 0, dups, 4, "x", &uid, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, uid, &msg, &error), 1);
	CU_ASSERT_EQUAL_FATAL(msg.keywords.count, 2);
	CU_ASSERT_STRING_EQUAL(msg.keywords.items[0], "alpha");
	CU_ASSERT_STRING_EQUAL(msg.keywords.items[1], "Work");
	stor_msg_free(&msg);
	tcheck(t.db, &g);
	tstore_close(&t);
}

static void test_list_range_returns_uid_order_within_bounds(void)
{
	struct tstore t;
	stor_msg_list list;
	const char *error = NULL;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	struct guid g2 = tmailbox(t.db, "alice", "Other");
	for (int i = 0; i < 5; i++)
		tappend(t.db, &g, 0, "m", 0);
	tappend(t.db, &g2, 0, "other box", 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_list_range(t.db, &g, 2, 4, &list, &error), 0);
	CU_ASSERT_EQUAL_FATAL(list.count, 3);
	CU_ASSERT_EQUAL(list.items[0].uid, 2);
	CU_ASSERT_EQUAL(list.items[2].uid, 4);
	stor_msg_list_free(&list);
	CU_ASSERT_EQUAL_FATAL(stor_msg_list_range(t.db, &g, 1, UINT32_MAX, &list, &error), 0);
	CU_ASSERT_EQUAL(list.count, 5);
	stor_msg_list_free(&list);
	CU_ASSERT_EQUAL_FATAL(stor_msg_list_range(t.db, &g, 6, UINT32_MAX, &list, &error), 0);
	CU_ASSERT_EQUAL(list.count, 0);
	stor_msg_list_free(&list);
	CU_ASSERT_EQUAL_FATAL(stor_msg_list_range(t.db, &g, 4, 2, &list, &error), 0);
	CU_ASSERT_EQUAL(list.count, 0);
	stor_msg_list_free(&list);
	tstore_close(&t);
}

static void test_store_changes_flags_and_bumps_modseq(void)
{
	struct tstore t;
	struct stor_store req;
	stor_msg_list changed = ARRAY_INIT;
	struct stor_mailbox mb;
	struct stor_msg msg;
	const char *error = NULL;
	const char *kw[] = { "Work" };
	const char *kwl[] = { "work" };
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	uint32_t uids[] = { 1, 2, 3, 99 };
	tappend(t.db, &g, 0, "a", 0);
	tappend(t.db, &g, 0, "b", STOR_FLAG_SEEN);
	tappend(t.db, &g, 0, "c", 0);

	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_ADD;
	req.flags = STOR_FLAG_SEEN | STOR_FLAG_FLAGGED;
	req.keywords = kw;
	req.keyword_count = 1;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, uids, 2, &req, &changed, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(changed.count, 2);
	CU_ASSERT_EQUAL(changed.items[0].uid, 1);
	CU_ASSERT_EQUAL(changed.items[0].modseq, 4);
	CU_ASSERT_EQUAL(changed.items[1].modseq, 4);
	CU_ASSERT_EQUAL(changed.items[0].flags, STOR_FLAG_SEEN | STOR_FLAG_FLAGGED);
	stor_msg_list_free(&changed);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t.db, &g, &mb, &error), 1);
	CU_ASSERT_EQUAL(mb.unseen, 1);
	CU_ASSERT_EQUAL(mb.highestmodseq, 4);
	stor_mailbox_free(&mb);

	/* Adding what is there (keyword in other case) changes no value but
	 * is a change of the flags it names (SPEC.md 10.2): a new modseq. */
	req.keywords = kwl;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, uids, 1, &req, &changed, NULL, &error), 0);
	CU_ASSERT_EQUAL(changed.count, 1);
	stor_msg_list_free(&changed);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 1, &msg, &error), 1);
	CU_ASSERT_EQUAL(msg.modseq, 5);
	CU_ASSERT_EQUAL(msg.flags, STOR_FLAG_SEEN | STOR_FLAG_FLAGGED);
	CU_ASSERT_EQUAL_FATAL(msg.keywords.count, 1);
	CU_ASSERT_STRING_EQUAL(msg.keywords.items[0], "Work");
	stor_msg_free(&msg);

	/* Remove, case-insensitively; missing UID 99 is skipped (3, which
	 * holds neither, still counts: the STORE named its flags). */
	req.op = STOR_FLAGS_REMOVE;
	req.flags = STOR_FLAG_SEEN;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, uids, 4, &req, &changed, NULL, &error), 0);
	CU_ASSERT_EQUAL(changed.count, 3);
	stor_msg_list_free(&changed);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 1, &msg, &error), 1);
	CU_ASSERT_EQUAL(msg.flags, STOR_FLAG_FLAGGED);
	CU_ASSERT_EQUAL(msg.keywords.count, 0);
	CU_ASSERT_EQUAL(msg.modseq, 6);
	stor_msg_free(&msg);

	/* Replace. */
	req.op = STOR_FLAGS_REPLACE;
	req.flags = STOR_FLAG_DRAFT | 0x100; /* unknown bits are dropped */
	req.keyword_count = 0;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, uids + 2, 1, &req, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 3, &msg, &error), 1);
	CU_ASSERT_EQUAL(msg.flags, STOR_FLAG_DRAFT);
	stor_msg_free(&msg);
	tcheck(t.db, &g);
	tstore_close(&t);
}

static void test_store_unchangedsince_refuses_newer_messages(void)
{
	struct tstore t;
	struct stor_store req;
	stor_msg_list changed = ARRAY_INIT;
	stor_uid_list failed = ARRAY_INIT;
	const char *error = NULL;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	uint32_t uids[] = { 1, 2 };
	tappend(t.db, &g, 0, "a", 0);   /* modseq 1 */
	tappend(t.db, &g, 0, "b", 0);   /* modseq 2 */
	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_ADD;
	req.flags = STOR_FLAG_DELETED;
	req.unchangedsince = 1;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, uids, 2, &req, &changed, &failed, &error), 0);
	CU_ASSERT_EQUAL_FATAL(changed.count, 1);
	CU_ASSERT_EQUAL(changed.items[0].uid, 1);
	CU_ASSERT_EQUAL_FATAL(failed.count, 1);
	CU_ASSERT_EQUAL(failed.items[0], 2);
	stor_msg_list_free(&changed);
	ARRAY_FREE(&failed);
	tcheck(t.db, &g);
	tstore_close(&t);
}

static void test_store_with_older_replica_modseq_is_ignored(void)
{
	struct tstore t;
	struct stor_store req;
	struct stor_msg msg;
	const char *error = NULL;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	uint32_t uid = 1;
	tappend(t.db, &g, 0, "a", 0);
	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_ADD;
	req.flags = STOR_FLAG_SEEN;
	req.modseq = 10;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &uid, 1, &req, NULL, NULL, &error), 0);
	req.op = STOR_FLAGS_REMOVE;
	req.modseq = 9;   /* older: loses */
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &uid, 1, &req, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 1, &msg, &error), 1);
	CU_ASSERT_EQUAL(msg.flags, STOR_FLAG_SEEN);
	CU_ASSERT_EQUAL(msg.modseq, 10);
	stor_msg_free(&msg);
	/* A newer master modseq that changes no flag is still adopted, so
	 * modseqs converge; a master-side STORE that names no flag keeps the
	 * modseq. */
	stor_msg_list changed = ARRAY_INIT;
	req.op = STOR_FLAGS_ADD;
	req.modseq = 12;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &uid, 1, &req, &changed, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(changed.count, 1);
	CU_ASSERT_EQUAL(changed.items[0].modseq, 12);
	stor_msg_list_free(&changed);
	req.modseq = 0;
	req.flags = 0;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &uid, 1, &req, &changed, NULL, &error), 0);
	CU_ASSERT_EQUAL(changed.count, 0);
	stor_msg_list_free(&changed);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 1, &msg, &error), 1);
	CU_ASSERT_EQUAL(msg.modseq, 12);
	stor_msg_free(&msg);
	tcheck(t.db, &g);
	tstore_close(&t);
}

static void test_expunge_many_uids_in_one_call(void)
{
	struct tstore t;
	struct stor_mailbox mb;
	stor_uid_list expunged = ARRAY_INIT;
	const char *error = NULL;
	enum { N = 300 };
	uint32_t uids[2 * N];
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	for (int i = 0; i < N; i++)
		tappend(t.db, &g, 0, "m", 0);
	/* Every UID twice, in reverse order, plus ones that don't exist. */
	for (int i = 0; i < N; i++) {
		uids[i] = (uint32_t)(N - i);
		uids[N + i] = (uint32_t)(i + 1 + (i % 2 ? N : 0));
	}
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &g, uids, 2 * N, 0, &expunged, &error), 0);
	CU_ASSERT_EQUAL_FATAL(expunged.count, N);
	CU_ASSERT_EQUAL(expunged.items[0], 1);
	CU_ASSERT_EQUAL(expunged.items[N - 1], N);
	ARRAY_FREE(&expunged);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t.db, &g, &mb, &error), 1);
	CU_ASSERT_EQUAL(mb.messages, 0);
	CU_ASSERT_EQUAL(mb.unseen, 0);
	CU_ASSERT_EQUAL(mb.highestmodseq, N + 1);
	unsigned char zero[16] = { 0 };
	CU_ASSERT(memcmp(mb.digest, zero, 16) == 0);
	stor_mailbox_free(&mb);
	tcheck(t.db, &g);
	tstore_close(&t);
}

static void test_expunge_leaves_tombstones_seen_by_changes_since(void)
{
	struct tstore t;
	stor_uid_list expunged = ARRAY_INIT;
	stor_msg_list msgs;
	stor_tombstone_list tombs;
	struct stor_mailbox mb;
	struct stor_msg m2;
	const char *error = NULL;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	for (int i = 0; i < 4; i++)
		tappend(t.db, &g, 0, "m", 0);  /* modseqs 1..4 */
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 2, &m2, &error), 1);
	uint32_t uids[] = { 2, 3, 3, 50 };
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &g, uids, 4, 0, &expunged, &error), 0);
	CU_ASSERT_EQUAL_FATAL(expunged.count, 2);
	CU_ASSERT_EQUAL(expunged.items[0], 2);
	CU_ASSERT_EQUAL(expunged.items[1], 3);
	ARRAY_FREE(&expunged);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t.db, &g, &mb, &error), 1);
	CU_ASSERT_EQUAL(mb.messages, 2);
	CU_ASSERT_EQUAL(mb.unseen, 2);
	CU_ASSERT_EQUAL(mb.highestmodseq, 5);
	CU_ASSERT_EQUAL(mb.uidnext, 5);
	stor_mailbox_free(&mb);

	CU_ASSERT_EQUAL_FATAL(stor_changes_since(t.db, &g, 3, &msgs, &tombs, &error), 0);
	CU_ASSERT_EQUAL_FATAL(msgs.count, 1);
	CU_ASSERT_EQUAL(msgs.items[0].uid, 4);
	CU_ASSERT_EQUAL_FATAL(tombs.count, 2);
	CU_ASSERT_EQUAL(tombs.items[0].uid, 2);
	CU_ASSERT_EQUAL(tombs.items[0].modseq, 5);
	CU_ASSERT(guid_cmp(&tombs.items[0].guid, &m2.guid) == 0);
	CU_ASSERT_EQUAL(tombs.items[1].uid, 3);
	stor_msg_list_free(&msgs);
	ARRAY_FREE(&tombs);
	CU_ASSERT_EQUAL_FATAL(stor_changes_since(t.db, &g, 5, &msgs, &tombs, &error), 0);
	CU_ASSERT_EQUAL(msgs.count, 0);
	CU_ASSERT_EQUAL(tombs.count, 0);
	stor_msg_list_free(&msgs);
	ARRAY_FREE(&tombs);
	CU_ASSERT_EQUAL_FATAL(stor_changes_since(t.db, &g, 0, &msgs, &tombs, &error), 0);
	CU_ASSERT_EQUAL(msgs.count, 2);
	CU_ASSERT_EQUAL(tombs.count, 2);
	stor_msg_list_free(&msgs);
	ARRAY_FREE(&tombs);
	/* The text of an expunged message is freed. */
	CU_ASSERT_EQUAL(stor_text_exists(t.db, &m2.guid, NULL, &error), 0);
	stor_msg_free(&m2);
	tcheck(t.db, &g);
	tstore_close(&t);
}

static void test_changes_since_reports_store_once_in_uid_order(void)
{
	struct tstore t;
	struct stor_store req;
	stor_msg_list msgs;
	stor_tombstone_list tombs;
	const char *error = NULL;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	for (int i = 0; i < 3; i++)
		tappend(t.db, &g, 0, "m", 0);
	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_ADD;
	uint32_t u3 = 3, u1 = 1;
	req.flags = STOR_FLAG_SEEN;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &u3, 1, &req, NULL, NULL, &error), 0);
	req.flags = STOR_FLAG_FLAGGED;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &u1, 1, &req, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &u3, 1, &req, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_changes_since(t.db, &g, 2, &msgs, &tombs, &error), 0);
	CU_ASSERT_EQUAL_FATAL(msgs.count, 2);
	CU_ASSERT_EQUAL(msgs.items[0].uid, 1);
	CU_ASSERT_EQUAL(msgs.items[1].uid, 3);
	CU_ASSERT_EQUAL(msgs.items[1].modseq, 6);
	CU_ASSERT_EQUAL(msgs.items[1].flags, STOR_FLAG_SEEN | STOR_FLAG_FLAGGED);
	stor_msg_list_free(&msgs);
	ARRAY_FREE(&tombs);
	tcheck(t.db, &g);
	tstore_close(&t);
}

/* STORE, EXPUNGE and renumbering refuse a missing mailbox, and a mailbox
 * that used every modseq when they would assign one (NO [LIMIT] upstream),
 * and change nothing then. */
static void test_changes_refuse_a_missing_mailbox_and_the_last_modseq(void)
{
	struct tstore t;
	struct stor_store req;
	const char *error = NULL;
	uint32_t u1 = 1;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX"), none;
	guid_generate(&none);
	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_ADD;
	req.flags = STOR_FLAG_SEEN;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &none, &u1, 1, &req, NULL, NULL, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(error, "does not exist"));
	error = NULL;
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &none, &u1, 1, 0, NULL, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(error != NULL ? strstr(error, "does not exist") : NULL);
	error = NULL;
	CU_ASSERT_EQUAL(stor_msg_renumber(t.db, &none, 1, 2, 0, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(error != NULL ? strstr(error, "does not exist") : NULL);
	/* A replica's message at the last modseq: nothing is left to assign. */
	CU_ASSERT_EQUAL_FATAL(append_full(t.db, &g, 1, MAIL_MODSEQ_MAX, NULL, 0, NULL, 0, "x", NULL,
					  NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &u1, 1, &req, NULL, NULL, &error), -1);
	CU_ASSERT_EQUAL(stor_last_error_kind(t.db), STOR_ERROR_LIMIT);
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &g, &u1, 1, 0, NULL, &error), -1);
	CU_ASSERT_EQUAL(stor_last_error_kind(t.db), STOR_ERROR_LIMIT);
	CU_ASSERT_EQUAL(stor_msg_renumber(t.db, &g, 1, 5, 0, &error), -1);
	CU_ASSERT_EQUAL(stor_last_error_kind(t.db), STOR_ERROR_LIMIT);
	/* A given modseq past the bound is refused too. */
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &g, &u1, 1, MAIL_MODSEQ_MAX + 1, NULL, &error), -1);
	struct stor_msg msg;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 1, &msg, &error), 1);
	CU_ASSERT_EQUAL(msg.flags, 0);
	CU_ASSERT_EQUAL(msg.modseq, MAIL_MODSEQ_MAX);
	stor_msg_free(&msg);
	tcheck(t.db, &g);
	tstore_close(&t);
}

static void test_renumber_moves_message_and_leaves_tombstone(void)
{
	struct tstore t;
	struct stor_msg msg;
	struct stor_mailbox mb;
	stor_msg_list msgs;
	stor_tombstone_list tombs;
	const char *error = NULL;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	tappend(t.db, &g, 0, "one", STOR_FLAG_SEEN);
	tappend(t.db, &g, 0, "two", 0);
	CU_ASSERT_EQUAL(stor_msg_renumber(t.db, &g, 2, 1, 0, &error), -1);  /* used */
	CU_ASSERT_EQUAL(stor_msg_renumber(t.db, &g, 9, 20, 0, &error), -1); /* missing */
	CU_ASSERT_EQUAL(stor_msg_renumber(t.db, &g, 2, 10, 0, &error), 0);
	CU_ASSERT_EQUAL(stor_msg_get(t.db, &g, 2, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 10, &msg, &error), 1);
	CU_ASSERT_EQUAL(msg.modseq, 3);
	struct buf text = BUF_INIT;
	CU_ASSERT_EQUAL(stor_text_read(t.db, &msg.guid, 0, 100, &text, &error), 0);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&text), "two");
	buf_free(&text);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t.db, &g, &mb, &error), 1);
	CU_ASSERT_EQUAL(mb.uidnext, 11);
	CU_ASSERT_EQUAL(mb.messages, 2);
	stor_mailbox_free(&mb);
	CU_ASSERT_EQUAL_FATAL(stor_changes_since(t.db, &g, 2, &msgs, &tombs, &error), 0);
	CU_ASSERT_EQUAL_FATAL(msgs.count, 1);
	CU_ASSERT_EQUAL(msgs.items[0].uid, 10);
	CU_ASSERT_EQUAL_FATAL(tombs.count, 1);
	CU_ASSERT_EQUAL(tombs.items[0].uid, 2);
	CU_ASSERT(guid_cmp(&tombs.items[0].guid, &msg.guid) == 0);
	stor_msg_list_free(&msgs);
	ARRAY_FREE(&tombs);
	/* The tombstone's UID cannot be reused by another message. */
	CU_ASSERT_EQUAL(stor_msg_renumber(t.db, &g, 1, 2, 0, &error), -1);
	uint32_t found;
	CU_ASSERT_EQUAL(stor_msg_find_guid(t.db, &g, &msg.guid, &found, &error), 1);
	CU_ASSERT_EQUAL(found, 10);
	stor_msg_free(&msg);
	tcheck(t.db, &g);
	tstore_close(&t);
}

static void test_copy_shares_text_until_last_reference_goes(void)
{
	struct tstore t;
	struct stor_msg src, dst;
	const char *error = NULL;
	uint32_t uid;
	uint64_t size;
	const char *kw[] = { "k1" };
	tstore_open(&t);
	struct guid a = tmailbox(t.db, "alice", "A");
	struct guid b = tmailbox(t.db, "alice", "B");
	CU_ASSERT_EQUAL(append_full(t.db, &a, 0, 0, NULL, STOR_FLAG_FLAGGED, kw, 1, "shared text",
				    NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_msg_copy(t.db, &a, 1, &b, 0, 0, &uid, NULL, &error), 0);
	CU_ASSERT_EQUAL(uid, 1);
	CU_ASSERT_EQUAL(stor_msg_copy(t.db, &a, 1, &a, 0, 0, &uid, NULL, &error), 0);
	CU_ASSERT_EQUAL(uid, 2);
	CU_ASSERT_EQUAL(stor_msg_copy(t.db, &a, 77, &b, 0, 0, &uid, NULL, &error), -1);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &a, 1, &src, &error), 1);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &b, 1, &dst, &error), 1);
	CU_ASSERT(guid_cmp(&src.guid, &dst.guid) == 0);
	CU_ASSERT_EQUAL(dst.flags, STOR_FLAG_FLAGGED);
	CU_ASSERT_EQUAL_FATAL(dst.keywords.count, 1);
	CU_ASSERT_STRING_EQUAL(dst.keywords.items[0], "k1");
	CU_ASSERT_EQUAL(dst.size, strlen("shared text"));
	CU_ASSERT_EQUAL(stor_text_exists(t.db, &src.guid, &size, &error), 1);
	CU_ASSERT_EQUAL(size, strlen("shared text"));
	tcheck(t.db, &a);
	tcheck(t.db, &b);

	uint32_t one = 1, two = 2;
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &a, &one, 1, 0, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_text_exists(t.db, &src.guid, NULL, &error), 1);
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &a, &two, 1, 0, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_text_exists(t.db, &src.guid, NULL, &error), 1);
	struct buf text = BUF_INIT;
	CU_ASSERT_EQUAL(stor_text_read(t.db, &dst.guid, 0, 100, &text, &error), 0);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&text), "shared text");
	buf_free(&text);
	/* Deleting the mailbox drops the last reference. */
	CU_ASSERT_EQUAL(stor_mailbox_delete(t.db, &b, &error), 0);
	CU_ASSERT_EQUAL(stor_text_exists(t.db, &src.guid, NULL, &error), 0);
	stor_msg_free(&src);
	stor_msg_free(&dst);
	tcheck(t.db, &a);
	tstore_close(&t);
}

static void test_digest_equal_for_same_state_reached_in_different_orders(void)
{
	struct tstore t1, t2;
	struct stor_mailbox m1, m2;
	struct stor_store req;
	struct guid mbg, g[4];
	struct stor_mailbox_create c;
	const char *error = NULL;
	const char *kw[] = { "Beta", "alpha" };
	const char *kw_rev[] = { "alpha", "Beta" };
	tstore_open(&t1);
	tstore_open(&t2);
	guid_generate(&mbg);
	for (int i = 0; i < 4; i++)
		guid_generate(&g[i]);
	memset(&c, 0, sizeof(c));
	c.user = "u";
	c.name = "INBOX";
	c.guid = &mbg;
	c.uidvalidity = 77;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(t1.db, &c, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(t2.db, &c, NULL, &error), 0);

	/* Store 1: append 1..4 in order, flag 2, expunge 3. */
	for (int i = 0; i < 4; i++)
		CU_ASSERT_EQUAL(append_full(t1.db, &mbg, (uint32_t)i + 1, 0, &g[i], 0, NULL, 0, "x",
					    NULL, NULL, &error), 0);
	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_ADD;
	req.flags = STOR_FLAG_SEEN;
	req.keywords = kw;
	req.keyword_count = 2;
	uint32_t two = 2, three = 3;
	CU_ASSERT_EQUAL(stor_msg_store(t1.db, &mbg, &two, 1, &req, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_msg_expunge(t1.db, &mbg, &three, 1, 0, NULL, &error), 0);

	/* Store 2: append 4, 2 (already flagged), 1; never sees 3. */
	CU_ASSERT_EQUAL(append_full(t2.db, &mbg, 4, 0, &g[3], 0, NULL, 0, "x", NULL, NULL,
				    &error), 0);
	CU_ASSERT_EQUAL(append_full(t2.db, &mbg, 2, 0, &g[1], STOR_FLAG_SEEN, kw_rev, 2, "x",
				    NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL(append_full(t2.db, &mbg, 1, 0, &g[0], 0, NULL, 0, "x", NULL, NULL,
				    &error), 0);

	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t1.db, &mbg, &m1, &error), 1);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t2.db, &mbg, &m2, &error), 1);
	CU_ASSERT(memcmp(m1.digest, m2.digest, 16) == 0);
	unsigned char zero[16] = { 0 };
	CU_ASSERT(memcmp(m1.digest, zero, 16) != 0);
	stor_mailbox_free(&m1);
	stor_mailbox_free(&m2);
	struct buf d1 = BUF_INIT, d2 = BUF_INIT;
	CU_ASSERT_EQUAL(stor_dump_user(t1.db, "u", &d1, &error), 0);
	CU_ASSERT_EQUAL(stor_dump_user(t2.db, "u", &d2, &error), 0);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&d1), buf_cstr(&d2));
	buf_free(&d1);
	buf_free(&d2);

	/* A flag difference shows in the digest. */
	req.keyword_count = 0;
	req.flags = STOR_FLAG_ANSWERED;
	uint32_t one = 1;
	CU_ASSERT_EQUAL(stor_msg_store(t2.db, &mbg, &one, 1, &req, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t1.db, &mbg, &m1, &error), 1);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t2.db, &mbg, &m2, &error), 1);
	CU_ASSERT(memcmp(m1.digest, m2.digest, 16) != 0);
	stor_mailbox_free(&m1);
	stor_mailbox_free(&m2);
	tcheck(t1.db, &mbg);
	tcheck(t2.db, &mbg);
	tstore_close(&t1);
	tstore_close(&t2);
}

static void test_dump_is_canonical_text(void)
{
	struct tstore t;
	struct stor_mailbox_create c;
	struct guid mbg, mg;
	struct buf out = BUF_INIT;
	const char *error = NULL;
	const char *kw[] = { "b", "A" };
	tstore_open(&t);
	memset(&mbg, 0x11, sizeof(mbg));
	memset(&mg, 0x22, sizeof(mg));
	memset(&c, 0, sizeof(c));
	c.user = "alice";
	c.name = "INBOX";
	c.guid = &mbg;
	c.uidvalidity = 42;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(t.db, &c, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_subscribe(t.db, "alice", "INBOX", true, &error), 0);
	CU_ASSERT_EQUAL(append_full(t.db, &mbg, 3, 0, &mg, STOR_FLAG_FLAGGED | STOR_FLAG_SEEN, kw, 2,
				    "abc", NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_dump_user(t.db, "alice", &out, &error), 0);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&out),
		"mailbox INBOX guid=11111111111111111111111111111111 uidvalidity=42 uidnext=4 special=\n"
		"subscribed INBOX\n"
		"msg INBOX uid=3 guid=22222222222222222222222222222222 flags=\\Seen,\\Flagged "
		"keywords=A,b internaldate=1700000000 size=3 "
		"sha256=ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n");
	buf_free(&out);
	tstore_close(&t);
}

static void test_dedupe_keeps_the_highest_uid_of_a_guid(void)
{
	struct tstore t;
	const char *error = NULL;
	struct stor_msg msg;
	struct guid twice, once;
	stor_uid_list gone = ARRAY_INIT;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	guid_generate(&twice);
	guid_generate(&once);
	/* As two syncs between different nodes can leave it: one message at
	 * UIDs 5 and 9, another one alone at 7. */
	CU_ASSERT_EQUAL(append_full(t.db, &g, 5, 10, &twice, 0, NULL, 0, "x", NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL(append_full(t.db, &g, 7, 11, &once, 0, NULL, 0, "y", NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL(append_full(t.db, &g, 9, 12, &twice, 0, NULL, 0, NULL, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_dedupe(t.db, &g, &gone, &error), 0);
	CU_ASSERT_EQUAL_FATAL(gone.count, 1);
	CU_ASSERT_EQUAL(gone.items[0], 5);
	CU_ASSERT_EQUAL(stor_msg_get(t.db, &g, 5, &msg, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 9, &msg, &error), 1);
	CU_ASSERT(guid_cmp(&msg.guid, &twice) == 0);
	stor_msg_free(&msg);
	CU_ASSERT_EQUAL(stor_msg_get(t.db, &g, 7, &msg, &error), 1);
	stor_msg_free(&msg);
	/* The text is still there for the one kept. */
	struct buf text;
	buf_init(&text);
	CU_ASSERT_EQUAL(stor_text_read(t.db, &twice, 0, 10, &text, &error), 0);
	CU_ASSERT_EQUAL(text.len, 1);
	buf_free(&text);
	CU_ASSERT_EQUAL(stor_mailbox_check(t.db, &g, &error), 0);
	/* Nothing more to do the second time. */
	ARRAY_FREE(&gone);
	CU_ASSERT_EQUAL(stor_msg_dedupe(t.db, &g, &gone, &error), 0);
	CU_ASSERT_EQUAL(gone.count, 0);
	ARRAY_FREE(&gone);
	tstore_close(&t);
}

/* A user changed flags of the message at the lower UID after the two
 * syncs that left it twice: dedupe keeps the highest UID, and the kept copy
 * takes each flag's latest change among the copies, so the change is not
 * expunged with the copy (found by the fault campaign, flag-holds). */
static void test_dedupe_keeps_flag_changes_of_the_copies(void)
{
	struct tstore t;
	const char *error = NULL;
	struct stor_msg msg;
	struct guid twice;
	stor_uid_list gone = ARRAY_INIT;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	guid_generate(&twice);
	CU_ASSERT_EQUAL(append_full(t.db, &g, 5, 10, &twice, STOR_FLAG_FLAGGED, NULL, 0, "x", NULL,
				    NULL, &error), 0);
	CU_ASSERT_EQUAL(append_full(t.db, &g, 9, 12, &twice, STOR_FLAG_FLAGGED, NULL, 0, NULL, NULL,
				    NULL, &error), 0);
	/* At UID 5: \Seen set and \Flagged cleared; at UID 9, later still:
	 * $urgent set.  Every change holds on the copy kept. */
	uint32_t u5 = 5, u9 = 9;
	const char *seen_kw[] = { "$urgent" };
	struct stor_store add = { .op = STOR_FLAGS_ADD, .flags = STOR_FLAG_SEEN };
	struct stor_store rm = { .op = STOR_FLAGS_REMOVE, .flags = STOR_FLAG_FLAGGED };
	struct stor_store kw = { .op = STOR_FLAGS_ADD, .keywords = seen_kw, .keyword_count = 1 };
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &u5, 1, &add, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &u5, 1, &rm, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &u9, 1, &kw, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_dedupe(t.db, &g, &gone, &error), 0);
	CU_ASSERT_EQUAL_FATAL(gone.count, 1);
	CU_ASSERT_EQUAL(gone.items[0], 5);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, 9, &msg, &error), 1);
	CU_ASSERT_EQUAL(msg.flags, STOR_FLAG_SEEN);
	CU_ASSERT_EQUAL_FATAL(msg.keywords.count, 1);
	CU_ASSERT_STRING_EQUAL(msg.keywords.items[0], "$urgent");
	stor_msg_free(&msg);
	CU_ASSERT_EQUAL(stor_mailbox_check(t.db, &g, &error), 0);
	ARRAY_FREE(&gone);
	tstore_close(&t);
}

static void test_flag_names(void)
{
	CU_ASSERT_STRING_EQUAL(stor_flag_name(STOR_FLAG_SEEN), "\\Seen");
	CU_ASSERT_STRING_EQUAL(stor_flag_name(STOR_FLAG_ANSWERED), "\\Answered");
	CU_ASSERT_STRING_EQUAL(stor_flag_name(STOR_FLAG_FLAGGED), "\\Flagged");
	CU_ASSERT_STRING_EQUAL(stor_flag_name(STOR_FLAG_DELETED), "\\Deleted");
	CU_ASSERT_STRING_EQUAL(stor_flag_name(STOR_FLAG_DRAFT), "\\Draft");
	CU_ASSERT_PTR_NULL(stor_flag_name((enum stor_flag)0x40));
}


/* ---- Flag stamps (storage.h struct stor_stamp) ---- */

static void stamp_of(struct stor_db *db, const struct guid *mb, uint32_t uid, const char *name,
		     uint64_t *modseq_r, int64_t *time_r)
{
	struct stor_msg msg;
	const char *error;
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(db, mb, uid, &msg, &error), 1);
	stor_msg_stamp(&msg, name, modseq_r, time_r);
	stor_msg_free(&msg);
}

static void store_one(struct stor_db *db, const struct guid *mb, uint32_t uid, enum stor_flag_op op,
		      uint32_t flags, const char *kw, uint64_t modseq, int64_t time_ms)
{
	struct stor_store req;
	const char *error;
	const char *kws[1] = { kw };
	memset(&req, 0, sizeof(req));
	req.op = op;
	req.flags = flags;
	req.keywords = kws;
	req.keyword_count = kw != NULL ? 1 : 0;
	req.modseq = modseq;
	req.time_ms = time_ms;
	CU_ASSERT_EQUAL_FATAL(stor_msg_store(db, mb, &uid, 1, &req, NULL, NULL, &error), 0);
}

/* Each flag whose value changes gets (the change's modseq, its time);
 * flags that stay keep theirs; a removed keyword keeps a stamp; stamps
 * survive a reopen, a renumbering and a replica's whole-state STORE. */
static void test_store_stamps_the_flags_it_changes(void)
{
	struct tstore t;
	uint64_t ms;
	int64_t tm;
	const char *error;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	uint32_t u = tappend(t.db, &g, 0, "stamps", STOR_FLAG_SEEN);
	stamp_of(t.db, &g, u, "\\Seen", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 1);
	CU_ASSERT(tm > 0);
	stamp_of(t.db, &g, u, "\\Flagged", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 0); /* never changed */
	store_one(t.db, &g, u, STOR_FLAGS_ADD, STOR_FLAG_FLAGGED, "$Work", 0, 1000);
	store_one(t.db, &g, u, STOR_FLAGS_REMOVE, 0, "$work", 0, 2000);
	stamp_of(t.db, &g, u, "\\Flagged", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 2);
	CU_ASSERT_EQUAL(tm, 1000);
	stamp_of(t.db, &g, u, "$WORK", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 3);
	CU_ASSERT_EQUAL(tm, 2000);
	stamp_of(t.db, &g, u, "\\Seen", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 1);
	/* A replica's whole state (modseq given): only \Seen changes. */
	store_one(t.db, &g, u, STOR_FLAGS_REPLACE, STOR_FLAG_FLAGGED, NULL, 10, 3000);
	stamp_of(t.db, &g, u, "\\Seen", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 10);
	CU_ASSERT_EQUAL(tm, 3000);
	stamp_of(t.db, &g, u, "\\Flagged", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 2);
	CU_ASSERT_EQUAL(stor_msg_renumber(t.db, &g, u, 7, 0, &error), 0);
	tstore_reopen(&t);
	stamp_of(t.db, &g, 7, "\\Flagged", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 2);
	CU_ASSERT_EQUAL(tm, 1000);
	stamp_of(t.db, &g, 7, "$work", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 3);
	/* A copy is a new message: its flags changed with it. */
	struct guid g2 = tmailbox(t.db, "alice", "Archive");
	uint32_t cu;
	uint64_t cms;
	CU_ASSERT_EQUAL(stor_msg_copy(t.db, &g, 7, &g2, 0, 0, &cu, &cms, &error), 0);
	stamp_of(t.db, &g2, cu, "\\Flagged", &ms, &tm);
	CU_ASSERT_EQUAL(ms, cms);
	stamp_of(t.db, &g2, cu, "$work", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 0);
	tcheck(t.db, &g);
	tcheck(t.db, &g2);
	tstore_close(&t);
}

/* Keywords set and removed again and again: the stamps stay bounded, the
 * oldest removed keywords' stamps go first, set flags keep theirs. */
static void test_stamps_are_bounded(void)
{
	struct tstore t;
	uint64_t ms;
	int64_t tm;
	struct stor_msg msg;
	const char *error;
	char kw[32];
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	uint32_t u = tappend(t.db, &g, 0, "bounded", 0);
	store_one(t.db, &g, u, STOR_FLAGS_ADD, STOR_FLAG_DRAFT, "$keep", 0, 0);
	for (int i = 0; i < 3 * STOR_MAX_STAMPS; i++) {
		snprintf(kw, sizeof(kw), "k%d", i);
		store_one(t.db, &g, u, STOR_FLAGS_ADD, 0, kw, 0, 0);
		store_one(t.db, &g, u, STOR_FLAGS_REMOVE, 0, kw, 0, 0);
	}
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, u, &msg, &error), 1);
	CU_ASSERT(msg.stamps.count <= STOR_MAX_STAMPS);
	stor_msg_stamp(&msg, "$keep", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 2);
	stor_msg_stamp(&msg, "\\Draft", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 2);
	snprintf(kw, sizeof(kw), "k%d", 3 * STOR_MAX_STAMPS - 1);
	stor_msg_stamp(&msg, kw, &ms, &tm);
	CU_ASSERT_EQUAL(ms, msg.modseq);
	stor_msg_stamp(&msg, "k0", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 0);
	stor_msg_free(&msg);
	tcheck(t.db, &g);
	tstore_close(&t);
}

/* An append with a peer's stamps keeps their times at its own modseq; bad
 * ones are refused before anything is written. */
static void test_append_with_given_stamps(void)
{
	struct tstore t;
	uint64_t ms, got;
	int64_t tm;
	const char *error;
	uint32_t uid;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	struct stor_stamp st[2] = { { "\\Seen", 99, 1234 }, { STOR_STAMP_ALL, 50, 0 } };
	struct stor_append req;
	memset(&req, 0, sizeof(req));
	req.flags = STOR_FLAG_SEEN;
	req.text = "given";
	req.text_len = 5;
	req.stamps_given = true;
	req.stamps = st;
	req.stamp_count = 2;
	CU_ASSERT_EQUAL_FATAL(stor_msg_append(t.db, &g, &req, &uid, &got, &error), 0);
	stamp_of(t.db, &g, uid, "\\seen", &ms, &tm);
	CU_ASSERT_EQUAL(ms, got);
	CU_ASSERT_EQUAL(tm, 1234);
	stamp_of(t.db, &g, uid, "$other", &ms, &tm);
	CU_ASSERT_EQUAL(ms, got);
	CU_ASSERT_EQUAL(tm, 0);
	st[0].time_ms = -1;
	req.text = "bad";
	req.text_len = 3;
	CU_ASSERT_EQUAL(stor_msg_append(t.db, &g, &req, &uid, NULL, &error), -1);
	st[0].time_ms = 1;
	req.stamp_count = STOR_MAX_STAMPS + 1;
	CU_ASSERT_EQUAL(stor_msg_append(t.db, &g, &req, &uid, NULL, &error), -1);
	struct stor_mailbox mbx;
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t.db, &g, &mbx, &error), 1);
	CU_ASSERT_EQUAL(mbx.messages, 1);
	stor_mailbox_free(&mbx);
	tcheck(t.db, &g);
	tstore_close(&t);
}


/* A replica applying a whole state with the master's stamps: flags it
 * changed later itself keep their value (and stamp), the others take the
 * master's value and time; without keep_later_local the state is taken
 * whole.  A change made here is stamped after the flag's previous change,
 * even one from a clock far ahead. */
static void test_replica_store_keeps_later_local_changes(void)
{
	struct tstore t;
	uint64_t ms;
	int64_t tm;
	struct stor_msg msg;
	const char *error;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	uint32_t u = tappend(t.db, &g, 0, "replica", 0);
	/* Here, while apart: \Seen at 5000, $Mine at 5000. */
	store_one(t.db, &g, u, STOR_FLAGS_ADD, STOR_FLAG_SEEN, "$Mine", 0, 5000);
	/* The master's state: \Flagged (4000) and $Theirs (6000), neither
	 * \Seen (stamped 3000) nor $Mine (never). */
	struct stor_stamp st[] = {
		{ "\\Flagged", 9, 4000 }, { "$Theirs", 9, 6000 }, { "\\Seen", 3, 3000 },
	};
	const char *kws[] = { "$Theirs" };
	struct stor_store req;
	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_REPLACE;
	req.flags = STOR_FLAG_FLAGGED;
	req.keywords = kws;
	req.keyword_count = 1;
	req.modseq = 20;
	req.stamps = st;
	req.stamp_count = 3;
	req.keep_later_local = true;
	CU_ASSERT_EQUAL_FATAL(stor_msg_store(t.db, &g, &u, 1, &req, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, u, &msg, &error), 1);
	CU_ASSERT_EQUAL(msg.flags, STOR_FLAG_SEEN | STOR_FLAG_FLAGGED);
	CU_ASSERT_EQUAL(msg.modseq, 20);
	CU_ASSERT_EQUAL_FATAL(msg.keywords.count, 2);
	CU_ASSERT_STRING_EQUAL(msg.keywords.items[0], "$Mine");
	CU_ASSERT_STRING_EQUAL(msg.keywords.items[1], "$Theirs");
	stor_msg_stamp(&msg, "\\Seen", &ms, &tm);
	CU_ASSERT_EQUAL(tm, 5000);
	CU_ASSERT_EQUAL(ms, 2);
	stor_msg_stamp(&msg, "\\Flagged", &ms, &tm);
	CU_ASSERT_EQUAL(tm, 4000);
	CU_ASSERT_EQUAL(ms, 20);
	stor_msg_stamp(&msg, "$theirs", &ms, &tm);
	CU_ASSERT_EQUAL(tm, 6000);
	stor_msg_free(&msg);
	/* A later master change of \Seen (time 7000) is taken. */
	st[2].time_ms = 7000;
	req.modseq = 21;
	CU_ASSERT_EQUAL_FATAL(stor_msg_store(t.db, &g, &u, 1, &req, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, u, &msg, &error), 1);
	CU_ASSERT_EQUAL(msg.flags, STOR_FLAG_FLAGGED);
	stor_msg_free(&msg);
	/* Without keep_later_local: the whole state, $Mine goes too. */
	req.keep_later_local = false;
	req.modseq = 22;
	CU_ASSERT_EQUAL_FATAL(stor_msg_store(t.db, &g, &u, 1, &req, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, u, &msg, &error), 1);
	CU_ASSERT_EQUAL_FATAL(msg.keywords.count, 1);
	CU_ASSERT_STRING_EQUAL(msg.keywords.items[0], "$Theirs");
	stor_msg_free(&msg);
	/* A clock far ahead stamped \Flagged; a change here comes after it. */
	int64_t ahead = stor_now_ms() + 3600 * 1000;
	store_one(t.db, &g, u, STOR_FLAGS_ADD, STOR_FLAG_DRAFT, NULL, 0, ahead);
	store_one(t.db, &g, u, STOR_FLAGS_REMOVE, STOR_FLAG_DRAFT, NULL, 0, 0);
	stamp_of(t.db, &g, u, "\\Draft", &ms, &tm);
	CU_ASSERT_EQUAL(tm, ahead + 1);
	/* A peer's time at the very end of the range: no overflow. */
	store_one(t.db, &g, u, STOR_FLAGS_ADD, STOR_FLAG_DRAFT, NULL, 0, INT64_MAX);
	store_one(t.db, &g, u, STOR_FLAGS_REMOVE, STOR_FLAG_DRAFT, NULL, 0, 0);
	stamp_of(t.db, &g, u, "\\Draft", &ms, &tm);
	CU_ASSERT_EQUAL(tm, INT64_MAX);
	/* A renumbering to a lower modseq (a peer's UIDFIX) leaves the
	 * record readable. */
	const char *err2;
	CU_ASSERT_EQUAL(stor_msg_renumber(t.db, &g, u, u + 10, 1, &err2), 0);
	stamp_of(t.db, &g, u + 10, "\\Draft", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 1);
	tcheck(t.db, &g);
	tstore_close(&t);
}

/* A user's STORE acts on every flag it names, also on those whose value
 * stays (SPEC.md 10.2): each gets this change's stamp (its modseq, now),
 * and the message a new modseq, so that replication and syncs carry it: a
 * later "-FLAGS ($k)" on a copy where $k is already clear must still beat
 * an earlier "+FLAGS ($k)" made elsewhere (the fault campaign's
 * flag-holds, partition seed 1).  A replica applying a peer's later time
 * for a flag whose value stays takes it with its own modseq. */
static void test_store_stamps_the_flags_it_names(void)
{
	struct tstore t;
	uint64_t ms;
	int64_t tm;
	struct stor_msg msg;
	stor_msg_list changed = ARRAY_INIT;
	const char *error;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	uint32_t u = tappend(t.db, &g, 0, "named", STOR_FLAG_SEEN); /* modseq 1 */
	/* -FLAGS ($k2 \Answered): neither is set. */
	const char *k2[] = { "$k2" };
	struct stor_store req;
	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_REMOVE;
	req.flags = STOR_FLAG_ANSWERED;
	req.keywords = k2;
	req.keyword_count = 1;
	req.time_ms = 5000;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &u, 1, &req, &changed, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(changed.count, 1);
	CU_ASSERT_EQUAL(changed.items[0].modseq, 2);
	stor_msg_list_free(&changed);
	stamp_of(t.db, &g, u, "$K2", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 2);
	CU_ASSERT_EQUAL(tm, 5000);
	stamp_of(t.db, &g, u, "\\Answered", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 2);
	CU_ASSERT_EQUAL(tm, 5000);
	stamp_of(t.db, &g, u, "\\Seen", &ms, &tm); /* not named */
	CU_ASSERT_EQUAL(ms, 1);
	/* +FLAGS (\Seen): already set, named. */
	store_one(t.db, &g, u, STOR_FLAGS_ADD, STOR_FLAG_SEEN, NULL, 0, 6000);
	stamp_of(t.db, &g, u, "\\Seen", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 3);
	CU_ASSERT_EQUAL(tm, 6000);
	/* FLAGS ($New): every system flag, the old and the new keywords. */
	const char *knew[] = { "$New" };
	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_REPLACE;
	req.keywords = knew;
	req.keyword_count = 1;
	req.time_ms = 7000;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &u, 1, &req, NULL, NULL, &error), 0);
	const char *all[] = { "\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "$New" };
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
		stamp_of(t.db, &g, u, all[i], &ms, &tm);
		CU_ASSERT_EQUAL(ms, 4);
		CU_ASSERT_EQUAL(tm, 7000);
	}
	/* $k2, no longer named, keeps its stamp. */
	stamp_of(t.db, &g, u, "$k2", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 2);
	/* A STORE that names no flag changes nothing and keeps the modseq. */
	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_ADD;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &u, 1, &req, &changed, NULL, &error), 0);
	CU_ASSERT_EQUAL(changed.count, 0);
	stor_msg_list_free(&changed);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, u, &msg, &error), 1);
	CU_ASSERT_EQUAL(msg.modseq, 4);
	stor_msg_free(&msg);
	/* A replica applying the master's whole state: $k2 stays clear, but
	 * the master's later time for it counts as a change at the replica's
	 * new modseq; an earlier time changes no modseq. */
	struct stor_stamp st[] = { { "$k2", 40, 9000 }, { "$New", 40, 100 } };
	memset(&req, 0, sizeof(req));
	req.op = STOR_FLAGS_REPLACE;
	req.keywords = knew;
	req.keyword_count = 1;
	req.modseq = 10;
	req.stamps = st;
	req.stamp_count = 2;
	req.keep_later_local = true;
	CU_ASSERT_EQUAL(stor_msg_store(t.db, &g, &u, 1, &req, NULL, NULL, &error), 0);
	stamp_of(t.db, &g, u, "$k2", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 10);
	CU_ASSERT_EQUAL(tm, 9000);
	stamp_of(t.db, &g, u, "$New", &ms, &tm);
	CU_ASSERT_EQUAL(ms, 4);
	tcheck(t.db, &g);
	tstore_close(&t);
}

/* Flag names are case-insensitive (RFC 3501 2.3.2): a message holds a
 * keyword under any spelling, and nothing more: no prefix, no system flag. */
static void test_msg_has_keyword_in_any_case(void)
{
	struct tstore t;
	struct stor_msg msg;
	const char *error = NULL;
	uint32_t uid;
	const char *kw[] = { "Work", "$Junk" };
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	CU_ASSERT_EQUAL_FATAL(append_full(t.db, &g, 0, 0, NULL, STOR_FLAG_SEEN, kw, 2, "x", &uid,
					  NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, uid, &msg, &error), 1);
	CU_ASSERT(stor_msg_has_keyword(&msg, "Work"));
	CU_ASSERT(stor_msg_has_keyword(&msg, "work"));
	CU_ASSERT(stor_msg_has_keyword(&msg, "WORK"));
	CU_ASSERT(stor_msg_has_keyword(&msg, "$junk"));
	CU_ASSERT_FALSE(stor_msg_has_keyword(&msg, "Wor"));
	CU_ASSERT_FALSE(stor_msg_has_keyword(&msg, "Workx"));
	CU_ASSERT_FALSE(stor_msg_has_keyword(&msg, "\\Seen"));
	CU_ASSERT_FALSE(stor_msg_has_keyword(&msg, ""));
	CU_ASSERT(stor_keywords_have(&msg.keywords, "$JUNK"));
	CU_ASSERT_FALSE(stor_keywords_have(&msg.keywords, "junk"));
	stor_msg_free(&msg);
	CU_ASSERT_EQUAL(append_full(t.db, &g, 0, 0, NULL, 0, NULL, 0, "y", &uid, NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_msg_get(t.db, &g, uid, &msg, &error), 1);
	CU_ASSERT_FALSE(stor_msg_has_keyword(&msg, "Work"));
	stor_msg_free(&msg);
	tstore_close(&t);
}

const struct test_case storage_msg_cases[] = {
	{ "dedupe keeps the highest UID of a GUID", test_dedupe_keeps_the_highest_uid_of_a_guid },
	{ "dedupe keeps flag changes made on the copies it expunges",
	  test_dedupe_keeps_flag_changes_of_the_copies },
	{ "append assigns UIDs and modseqs", test_append_assigns_uids_and_modseqs },
	{ "append to a missing mailbox fails", test_append_to_missing_mailbox_fails },
	{ "changes refuse a missing mailbox and the last modseq",
	  test_changes_refuse_a_missing_mailbox_and_the_last_modseq },
	{ "replica append is idempotent", test_replica_append_is_idempotent },
	{ "append refuses the UID of an expunged message", test_append_refuses_uid_of_expunged_message },
	{ "keyword limits just under and over", test_append_keyword_limits },
	{ "a message holds a keyword in any case", test_msg_has_keyword_in_any_case },
	{ "list range returns UID order within bounds", test_list_range_returns_uid_order_within_bounds },
	{ "store changes flags and bumps modseq", test_store_changes_flags_and_bumps_modseq },
	{ "UNCHANGEDSINCE refuses newer messages", test_store_unchangedsince_refuses_newer_messages },
	{ "store with an older replica modseq is ignored", test_store_with_older_replica_modseq_is_ignored },
	{ "expunge of many UIDs in one call", test_expunge_many_uids_in_one_call },
	{ "expunge leaves tombstones seen by changes_since", test_expunge_leaves_tombstones_seen_by_changes_since },
	{ "changes_since reports each message once in UID order", test_changes_since_reports_store_once_in_uid_order },
	{ "renumber moves the message and leaves a tombstone", test_renumber_moves_message_and_leaves_tombstone },
	{ "copy shares the text until the last reference goes", test_copy_shares_text_until_last_reference_goes },
	{ "digest equal for the same state reached in different orders", test_digest_equal_for_same_state_reached_in_different_orders },
	{ "dump is canonical text", test_dump_is_canonical_text },
	{ "flag names", test_flag_names },
	{ "store stamps the flags it changes", test_store_stamps_the_flags_it_changes },
	{ "store stamps the flags it names, also unchanged ones", test_store_stamps_the_flags_it_names },
	{ "flag stamps are bounded", test_stamps_are_bounded },
	{ "append with a peer's stamps", test_append_with_given_stamps },
	{ "a replica keeps the flags it changed later", test_replica_store_keeps_later_local_changes },
	{ NULL, NULL },
};
