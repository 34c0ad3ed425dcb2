#ifndef TESTS_REPLICATOR_TESTS_H
#define TESTS_REPLICATOR_TESTS_H
#include "tests/testutil.h"
extern const struct test_case repl_peer_cases[];
int repl_peer_suite_init(void);
int repl_peer_suite_cleanup(void);
extern const struct test_case repl_cluster_cases[];
extern const struct test_case repl_metrics_cases[];
extern const struct test_case repl_users_cases[];
#endif
