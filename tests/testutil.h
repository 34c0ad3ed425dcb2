/* Shared CUnit runner and fixture helpers for the unit test programs.
 *
 * Each test program defines a NULL-terminated table of suites and calls
 * test_run_suites() from main().  The exit status is non-zero if any
 * assertion failed, so `make check` sees it. */
#ifndef TESTS_TESTUTIL_H
#define TESTS_TESTUTIL_H

#include <CUnit/CUnit.h>

struct test_case {
	const char *name;
	CU_TestFunc func;
};

struct test_suite {
	const char *name;
	const struct test_case *cases; /* terminated by { NULL, NULL } */
	CU_InitializeFunc init;
	CU_CleanupFunc cleanup;
};

/* Registers and runs the suites (terminated by a zeroed entry); returns the
 * process exit status. */
int test_run_suites(const char *program, const struct test_suite *suites);

/* A fresh directory under $TMPDIR; the caller frees the path and removes
 * the tree with test_rmtree(). */
char *test_mkdtemp(void);
void test_rmtree(const char *path);

#endif
