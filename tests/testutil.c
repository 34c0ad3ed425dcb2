/* Shared CUnit runner: see testutil.h. */
#include "tests/testutil.h"

#include <CUnit/Basic.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/xalloc.h"

int test_run_suites(const char *program, const struct test_suite *suites)
{
	if (CU_initialize_registry() != CUE_SUCCESS) {
		fprintf(stderr, "%s: cannot initialise CUnit\n", program);
		return 1;
	}
	for (const struct test_suite *s = suites; s->name != NULL; s++) {
		CU_pSuite suite = CU_add_suite(s->name, s->init, s->cleanup);
		if (suite == NULL) {
			fprintf(stderr, "%s: cannot add suite %s\n", program, s->name);
			CU_cleanup_registry();
			return 1;
		}
		for (const struct test_case *c = s->cases; c->name != NULL; c++) {
			if (CU_add_test(suite, c->name, c->func) == NULL) {
				fprintf(stderr, "%s: cannot add test %s\n", program, c->name);
				CU_cleanup_registry();
				return 1;
			}
		}
	}
	CU_basic_set_mode(CU_BRM_VERBOSE);
	CU_basic_run_tests();
	unsigned failed = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
	unsigned ran = CU_get_number_of_tests_run();
	CU_cleanup_registry();
	if (ran == 0) {
		fprintf(stderr, "%s: no test ran\n", program);
		return 1;
	}
	return failed == 0 ? 0 : 1;
}

char *test_mkdtemp(void)
{
	const char *tmp = getenv("TMPDIR");
	char *path = xasprintf("%s/starling-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (mkdtemp(path) == NULL) {
		perror("mkdtemp");
		abort();
	}
	return path;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st; (void)flag; (void)ftw;
	return remove(path);
}

void test_rmtree(const char *path)
{
	nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}
