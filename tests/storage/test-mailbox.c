/* Unit tests of storage/ mailboxes: create, lookup, rename, delete, list,
 * subscriptions, UIDVALIDITY choice and limits. */
#include <string.h>

#include "lib/xalloc.h"
#include "tests/storage/tests.h"

static void test_mailbox_create_then_get_by_name_and_guid(void)
{
	struct tstore t;
	struct stor_mailbox_create req;
	struct stor_mailbox mb, got;
	struct guid g;
	const char *error = NULL;
	tstore_open(&t);
	guid_generate(&g);
	memset(&req, 0, sizeof(req));
	req.user = "alice";
	req.name = "INBOX";
	req.guid = &g;
	req.uidvalidity = 1234;
	req.special_use = "\\Sent";
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_create(t.db, &req, &mb, &error), 0);
	CU_ASSERT(guid_cmp(&mb.guid, &g) == 0);
	CU_ASSERT_EQUAL(mb.uidvalidity, 1234);
	CU_ASSERT_EQUAL(mb.uidnext, 1);
	CU_ASSERT_EQUAL(mb.highestmodseq, 0);
	CU_ASSERT_EQUAL(mb.messages, 0);
	stor_mailbox_free(&mb);

	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get(t.db, "alice", "INBOX", &got, &error), 1);
	CU_ASSERT_STRING_EQUAL(got.user, "alice");
	CU_ASSERT_STRING_EQUAL(got.name, "INBOX");
	CU_ASSERT_STRING_EQUAL(got.special_use, "\\Sent");
	CU_ASSERT(guid_cmp(&got.guid, &g) == 0);
	stor_mailbox_free(&got);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t.db, &g, &got, &error), 1);
	CU_ASSERT_STRING_EQUAL(got.name, "INBOX");
	stor_mailbox_free(&got);
	CU_ASSERT_EQUAL(stor_mailbox_get(t.db, "alice", "Other", NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_get(t.db, "bob", "INBOX", NULL, &error), 0);

	/* Survives a reopen. */
	tstore_reopen(&t);
	CU_ASSERT_EQUAL(stor_mailbox_get(t.db, "alice", "INBOX", NULL, &error), 1);
	tstore_close(&t);
}

static void test_mailbox_create_refuses_existing_name_and_guid(void)
{
	struct tstore t;
	struct stor_mailbox_create req;
	const char *error = NULL;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "INBOX");
	memset(&req, 0, sizeof(req));
	req.user = "alice";
	req.name = "INBOX";
	CU_ASSERT_EQUAL(stor_mailbox_create(t.db, &req, NULL, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(error, "exists"));
	req.name = "Other";
	req.guid = &g;
	CU_ASSERT_EQUAL(stor_mailbox_create(t.db, &req, NULL, &error), -1);
	CU_ASSERT_PTR_NOT_NULL(strstr(error, "GUID"));
	CU_ASSERT_EQUAL(stor_mailbox_get(t.db, "alice", "Other", NULL, &error), 0);
	tstore_close(&t);
}

static void test_mailbox_uidvalidity_strictly_increases(void)
{
	struct tstore t;
	struct stor_mailbox a, b;
	const char *error = NULL;
	tstore_open(&t);
	tmailbox(t.db, "u", "A");
	tmailbox(t.db, "u", "B");
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get(t.db, "u", "A", &a, &error), 1);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get(t.db, "u", "B", &b, &error), 1);
	CU_ASSERT(a.uidvalidity > 1600000000u);
	CU_ASSERT(b.uidvalidity > a.uidvalidity);
	stor_mailbox_free(&a);
	stor_mailbox_free(&b);
	tstore_close(&t);
}

static void test_mailbox_name_and_user_limits(void)
{
	struct tstore t;
	struct stor_mailbox_create req;
	const char *error = NULL;
	char *name = xmalloc(STOR_MAX_MAILBOX_NAME_LEN + 2);
	char *user = xmalloc(STOR_MAX_USER_LEN + 2);
	tstore_open(&t);
	memset(name, 'n', STOR_MAX_MAILBOX_NAME_LEN + 1);
	name[STOR_MAX_MAILBOX_NAME_LEN + 1] = '\0';
	memset(user, 'u', STOR_MAX_USER_LEN + 1);
	user[STOR_MAX_USER_LEN + 1] = '\0';
	memset(&req, 0, sizeof(req));

	req.user = "alice";
	req.name = name;    /* one over */
	CU_ASSERT_EQUAL(stor_mailbox_create(t.db, &req, NULL, &error), -1);
	name[STOR_MAX_MAILBOX_NAME_LEN] = '\0';  /* just at the limit */
	CU_ASSERT_EQUAL(stor_mailbox_create(t.db, &req, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_get(t.db, "alice", name, NULL, &error), 1);

	req.user = user;    /* one over */
	req.name = "INBOX";
	CU_ASSERT_EQUAL(stor_mailbox_create(t.db, &req, NULL, &error), -1);
	user[STOR_MAX_USER_LEN] = '\0';
	CU_ASSERT_EQUAL(stor_mailbox_create(t.db, &req, NULL, &error), 0);

	req.user = "alice";
	req.name = "";
	CU_ASSERT_EQUAL(stor_mailbox_create(t.db, &req, NULL, &error), -1);
	req.name = "bad\nname";
	CU_ASSERT_EQUAL(stor_mailbox_create(t.db, &req, NULL, &error), -1);
	req.name = "Sent";
	req.special_use = "\\ThisIsFarTooLongForTheField";
	CU_ASSERT_EQUAL(stor_mailbox_create(t.db, &req, NULL, &error), -1);
	free(name);
	free(user);
	tstore_close(&t);
}

static void test_mailbox_list_sorted_by_name_per_user(void)
{
	struct tstore t;
	stor_mailbox_array list;
	stor_string_list users;
	const char *error = NULL;
	tstore_open(&t);
	tmailbox(t.db, "bob", "INBOX");
	tmailbox(t.db, "alice", "Trash");
	tmailbox(t.db, "alice", "INBOX");
	tmailbox(t.db, "alice", "Archive/2024");
	tmailbox(t.db, "alice2", "INBOX");
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_list(t.db, "alice", &list, &error), 0);
	CU_ASSERT_EQUAL_FATAL(list.count, 3);
	CU_ASSERT_STRING_EQUAL(list.items[0].name, "Archive/2024");
	CU_ASSERT_STRING_EQUAL(list.items[1].name, "INBOX");
	CU_ASSERT_STRING_EQUAL(list.items[2].name, "Trash");
	stor_mailbox_list_free(&list);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_list(t.db, "nobody", &list, &error), 0);
	CU_ASSERT_EQUAL(list.count, 0);
	stor_mailbox_list_free(&list);

	CU_ASSERT_EQUAL_FATAL(stor_user_list(t.db, &users, &error), 0);
	CU_ASSERT_EQUAL_FATAL(users.count, 3);
	CU_ASSERT_STRING_EQUAL(users.items[0], "alice");
	CU_ASSERT_STRING_EQUAL(users.items[1], "alice2");
	CU_ASSERT_STRING_EQUAL(users.items[2], "bob");
	stor_string_list_free(&users);
	tstore_close(&t);
}

static void test_mailbox_rename_keeps_guid_and_messages(void)
{
	struct tstore t;
	struct stor_mailbox mb;
	const char *error = NULL;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "Old");
	tmailbox(t.db, "alice", "Taken");
	tappend(t.db, &g, 0, "hello", 0);
	CU_ASSERT_EQUAL(stor_mailbox_rename(t.db, &g, "Taken", &error), -1);
	CU_ASSERT_EQUAL(stor_mailbox_rename(t.db, &g, "New", &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_get(t.db, "alice", "Old", NULL, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get(t.db, "alice", "New", &mb, &error), 1);
	CU_ASSERT(guid_cmp(&mb.guid, &g) == 0);
	CU_ASSERT_EQUAL(mb.messages, 1);
	CU_ASSERT_EQUAL(mb.uidnext, 2);
	stor_mailbox_free(&mb);
	/* The old name is free again. */
	tmailbox(t.db, "alice", "Old");
	tcheck(t.db, &g);
	tstore_close(&t);
}

static void test_mailbox_delete_removes_messages_and_state(void)
{
	struct tstore t;
	struct stor_sync_state st = { 5, 6, 7 };
	stor_msg_list msgs;
	stor_tombstone_list tombs;
	const char *error = NULL;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "Box");
	uint32_t uid = tappend(t.db, &g, 0, "text one", 0);
	tappend(t.db, &g, 0, "text two", 0);
	CU_ASSERT_EQUAL(stor_msg_expunge(t.db, &g, &uid, 1, 0, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_sync_state_set(t.db, 2, &g, &st, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_delete(t.db, &g, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_get(t.db, "alice", "Box", NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_get_by_guid(t.db, &g, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_msg_get(t.db, &g, 2, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_msg_list_range(t.db, &g, 1, UINT32_MAX, &msgs, &error), 0);
	CU_ASSERT_EQUAL(msgs.count, 0);
	stor_msg_list_free(&msgs);
	CU_ASSERT_EQUAL(stor_changes_since(t.db, &g, 0, &msgs, &tombs, &error), -1);
	CU_ASSERT_EQUAL(stor_sync_state_get(t.db, 2, &g, &st, &error), 0);
	CU_ASSERT_EQUAL(st.uidnext, 0);
	CU_ASSERT_EQUAL(stor_mailbox_delete(t.db, &g, &error), -1);
	/* Re-creating with the same GUID works once it is gone. */
	struct stor_mailbox_create req;
	memset(&req, 0, sizeof(req));
	req.user = "alice";
	req.name = "Box";
	req.guid = &g;
	CU_ASSERT_EQUAL(stor_mailbox_create(t.db, &req, NULL, &error), 0);
	tcheck(t.db, &g);
	tstore_close(&t);
}

static void test_mailbox_tombstones(void)
{
	struct tstore t;
	const char *error = NULL;
	stor_mailbox_tomb_list tl;
	tstore_open(&t);
	struct guid g1 = tmailbox(t.db, "alice", "Box");
	struct guid g2, g3;
	guid_generate(&g2);
	guid_generate(&g3);
	CU_ASSERT_EQUAL(stor_mailbox_tomb_get(t.db, "alice", &g1, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_delete(t.db, &g1, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_tomb_get(t.db, "alice", &g1, NULL, NULL, &error), 1);
	CU_ASSERT_EQUAL(stor_mailbox_tomb_get(t.db, "bob", &g1, NULL, NULL, &error), 0);
	/* A delete of a mailbox never held here is remembered too. */
	CU_ASSERT_EQUAL(stor_mailbox_tomb_add(t.db, "alice", &g2, "Gone", &error), 0);
	/* ... but a held one is not touched that way. */
	struct guid held = tmailbox(t.db, "alice", "Held");
	CU_ASSERT_EQUAL(stor_mailbox_tomb_add(t.db, "alice", &held, "Held", &error), -1);
	CU_ASSERT_EQUAL(stor_mailbox_tomb_get(t.db, "alice", &held, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_tomb_add(t.db, "bob", &g3, "Other", &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_tombs(t.db, "alice", &tl, &error), 0);
	CU_ASSERT_EQUAL_FATAL(tl.count, 2);
	bool first = guid_cmp(&g1, &g2) < 0;
	CU_ASSERT(guid_equal(&tl.items[0].guid, first ? &g1 : &g2));
	CU_ASSERT_STRING_EQUAL(tl.items[first ? 0 : 1].name, "Box");
	CU_ASSERT_STRING_EQUAL(tl.items[first ? 1 : 0].name, "Gone");
	CU_ASSERT(tl.items[0].deleted_ms > 1600000000000LL);
	stor_mailbox_tomb_list_free(&tl);
	/* Created again: the tombstone goes, the other user's stays. */
	struct stor_mailbox_create req;
	memset(&req, 0, sizeof(req));
	req.user = "alice";
	req.name = "Box";
	req.guid = &g1;
	CU_ASSERT_EQUAL(stor_mailbox_create(t.db, &req, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_tomb_get(t.db, "alice", &g1, NULL, NULL, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_tomb_get(t.db, "bob", &g3, NULL, NULL, &error), 1);
	tstore_close(&t);
}

static void test_subscriptions_sorted_and_independent_of_mailboxes(void)
{
	struct tstore t;
	stor_string_list names;
	const char *error = NULL;
	tstore_open(&t);
	CU_ASSERT_EQUAL(stor_subscribe(t.db, "alice", "Zeta", true, &error), 0);
	CU_ASSERT_EQUAL(stor_subscribe(t.db, "alice", "Alpha", true, &error), 0);
	CU_ASSERT_EQUAL(stor_subscribe(t.db, "alice", "Alpha", true, &error), 0);
	CU_ASSERT_EQUAL(stor_subscribe(t.db, "alice", "Gone", true, &error), 0);
	CU_ASSERT_EQUAL(stor_subscribe(t.db, "bob", "Bobs", true, &error), 0);
	CU_ASSERT_EQUAL(stor_subscribe(t.db, "alice", "Gone", false, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_subscriptions(t.db, "alice", &names, &error), 0);
	CU_ASSERT_EQUAL_FATAL(names.count, 2);
	CU_ASSERT_STRING_EQUAL(names.items[0], "Alpha");
	CU_ASSERT_STRING_EQUAL(names.items[1], "Zeta");
	stor_string_list_free(&names);
	CU_ASSERT_EQUAL(stor_subscribe(t.db, "alice", "", true, &error), -1);
	tstore_close(&t);
}

static void test_mailbox_raise_only_raises(void)
{
	struct tstore t;
	struct stor_mailbox mb;
	const char *error = NULL;
	tstore_open(&t);
	struct guid g = tmailbox(t.db, "alice", "Box");
	CU_ASSERT_EQUAL(stor_mailbox_raise(t.db, &g, 50, 70, &error), 0);
	CU_ASSERT_EQUAL(stor_mailbox_raise(t.db, &g, 10, 0, &error), 0);
	CU_ASSERT_EQUAL_FATAL(stor_mailbox_get_by_guid(t.db, &g, &mb, &error), 1);
	CU_ASSERT_EQUAL(mb.uidnext, 50);
	CU_ASSERT_EQUAL(mb.highestmodseq, 70);
	stor_mailbox_free(&mb);
	CU_ASSERT_EQUAL(tappend(t.db, &g, 0, "x", 0), 50);
	struct guid other;
	guid_generate(&other);
	CU_ASSERT_EQUAL(stor_mailbox_raise(t.db, &other, 1, 1, &error), -1);
	tstore_close(&t);
}

const struct test_case storage_mailbox_cases[] = {
	{ "create then get by name and GUID", test_mailbox_create_then_get_by_name_and_guid },
	{ "create refuses an existing name or GUID", test_mailbox_create_refuses_existing_name_and_guid },
	{ "UIDVALIDITY strictly increases", test_mailbox_uidvalidity_strictly_increases },
	{ "name and user length limits", test_mailbox_name_and_user_limits },
	{ "list is sorted by name per user", test_mailbox_list_sorted_by_name_per_user },
	{ "rename keeps GUID and messages", test_mailbox_rename_keeps_guid_and_messages },
	{ "delete removes messages and sync state", test_mailbox_delete_removes_messages_and_state },
	{ "deletes leave mailbox tombstones; a create takes its own away", test_mailbox_tombstones },
	{ "subscriptions sorted, independent of mailboxes", test_subscriptions_sorted_and_independent_of_mailboxes },
	{ "raise only raises UIDNEXT and HIGHESTMODSEQ", test_mailbox_raise_only_raises },
	{ NULL, NULL },
};
