#ifndef TESTS_REPLICATOR_TESTS_H
#define TESTS_REPLICATOR_TESTS_H
#include "tests/testutil.h"
extern const struct test_case repl_peer_cases[];
int repl_peer_suite_init(void);
int repl_peer_suite_cleanup(void);
extern const struct test_case repl_cluster_cases[];
extern const struct test_case repl_metrics_cases[];
extern const struct test_case repl_users_cases[];
struct stor_db;
/* Opens the store at the path printf formats, or stops the test. */
struct stor_db *repl_test_store_open(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
