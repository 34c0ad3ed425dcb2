/* Shared fixtures of the storage unit tests. */
#ifndef TESTS_STORAGE_TESTS_H
#define TESTS_STORAGE_TESTS_H

#include "storage/storage.h"
#include "tests/testutil.h"

extern const struct test_case storage_mailbox_cases[];
extern const struct test_case storage_msg_cases[];
extern const struct test_case storage_text_cases[];
extern const struct test_case storage_log_cases[];
extern const struct test_case storage_robust_cases[];
extern const struct test_case storage_journal_cases[];
extern const struct test_case storage_users_cases[];
extern const struct test_case storage_acl_cases[];
extern const struct test_case storage_pseen_cases[];

/* A fresh store in a new temporary directory. */
struct tstore {
	char *dir;
	struct stor_db *db;
};
void tstore_open(struct tstore *t);
/* Closes and reopens the same directory. */
void tstore_reopen(struct tstore *t);
/* Closes the store and removes the directory. */
void tstore_close(struct tstore *t);

/* Creates user's mailbox name and returns its GUID. */
struct guid tmailbox(struct stor_db *db, const char *user, const char *name);
/* Appends a message with the given UID (0: assign), text and flags;
 * returns its UID. */
uint32_t tappend(struct stor_db *db, const struct guid *mb, uint32_t uid, const char *text,
		 uint32_t flags);
/* Asserts the mailbox passes stor_mailbox_check(). */
void tcheck(struct stor_db *db, const struct guid *mb);

#endif
