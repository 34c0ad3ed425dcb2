/* Runner of the replicator/ unit tests. */
#include "tests/replicator/tests.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/storage.h"

struct stor_db *repl_test_store_open(const char *fmt, ...)
{
	va_list ap;
	char *path = NULL;
	va_start(ap, fmt);
	int len = vasprintf(&path, fmt, ap);
	va_end(ap);
	/* Out of memory, as xasprintf takes it (not an assert of the test). */
	if (len < 0)
		abort();
	struct stor_settings set;
	memset(&set, 0, sizeof(set));
	set.dir = path;
	struct stor_db *db = NULL;
	char *err = NULL;
	CU_ASSERT_EQUAL_FATAL(stor_open(&set, &db, &err), 0);
	free(path);
	return db;
}

int main(void)
{
	static const struct test_suite suites[] = {
		{ "peer links", repl_peer_cases, repl_peer_suite_init, repl_peer_suite_cleanup },
		{ "replication without peers", repl_cluster_cases, NULL, NULL },
		{ "metrics text", repl_metrics_cases, NULL, NULL },
		{ "user table", repl_users_cases, NULL, NULL },
		{ NULL, NULL, NULL, NULL },
	};
	return test_run_suites("test-replicator", suites);
}
