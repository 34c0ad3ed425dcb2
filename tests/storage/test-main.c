/* Runner of the storage unit tests, and their shared fixtures. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/xalloc.h"
#include "tests/storage/tests.h"

void tstore_open(struct tstore *t)
{
	struct stor_settings set;
	char *error = NULL;
	memset(&set, 0, sizeof(set));
	t->dir = test_mkdtemp();
	set.dir = t->dir;
	t->db = NULL;
	if (stor_open(&set, &t->db, &error) < 0) {
		fprintf(stderr, "stor_open: %s\n", error);
		free(error);
	}
	CU_ASSERT_PTR_NOT_NULL_FATAL(t->db);
}

void tstore_reopen(struct tstore *t)
{
	struct stor_settings set;
	char *error = NULL;
	stor_close(&t->db);
	memset(&set, 0, sizeof(set));
	set.dir = t->dir;
	if (stor_open(&set, &t->db, &error) < 0) {
		fprintf(stderr, "stor_open: %s\n", error);
		free(error);
	}
	CU_ASSERT_PTR_NOT_NULL_FATAL(t->db);
}

void tstore_close(struct tstore *t)
{
	stor_close(&t->db);
	CU_ASSERT_PTR_NULL(t->db);
	test_rmtree(t->dir);
	free(t->dir);
	t->dir = NULL;
}

struct guid tmailbox(struct stor_db *db, const char *user, const char *name)
{
	struct stor_mailbox_create req;
	struct stor_mailbox mb;
	const char *error = NULL;
	memset(&req, 0, sizeof(req));
	req.user = user;
	req.name = name;
	int ret = stor_mailbox_create(db, &req, &mb, &error);
	if (ret < 0)
		fprintf(stderr, "stor_mailbox_create: %s\n", error);
	CU_ASSERT_EQUAL_FATAL(ret, 0);
	struct guid g = mb.guid;
	stor_mailbox_free(&mb);
	return g;
}

uint32_t tappend(struct stor_db *db, const struct guid *mb, uint32_t uid, const char *text,
		 uint32_t flags)
{
	struct stor_append req;
	const char *error = NULL;
	uint32_t uid_r = 0;
	memset(&req, 0, sizeof(req));
	req.uid = uid;
	req.flags = flags;
	req.internaldate = 1700000000;
	req.text = text;
	req.text_len = strlen(text);
	int ret = stor_msg_append(db, mb, &req, &uid_r, NULL, &error);
	if (ret < 0)
		fprintf(stderr, "stor_msg_append: %s\n", error);
	CU_ASSERT_EQUAL_FATAL(ret, 0);
	return uid_r;
}

void tcheck(struct stor_db *db, const struct guid *mb)
{
	const char *error = NULL;
	int ret = stor_mailbox_check(db, mb, &error);
	if (ret < 0)
		fprintf(stderr, "stor_mailbox_check: %s\n", error);
	CU_ASSERT_EQUAL(ret, 0);
}

int main(void)
{
	static const struct test_suite suites[] = {
		{ "storage-mailbox", storage_mailbox_cases, NULL, NULL },
		{ "storage-msg", storage_msg_cases, NULL, NULL },
		{ "storage-text", storage_text_cases, NULL, NULL },
		{ "storage-log", storage_log_cases, NULL, NULL },
		{ "storage-users", storage_users_cases, NULL, NULL },
		{ "storage-acl", storage_acl_cases, NULL, NULL },
		{ "storage-pseen", storage_pseen_cases, NULL, NULL },
		{ "storage-robust", storage_robust_cases, NULL, NULL },
		{ "storage-journal", storage_journal_cases, NULL, NULL },
		{ NULL, NULL, NULL, NULL },
	};
	return test_run_suites("test-storage", suites);
}
