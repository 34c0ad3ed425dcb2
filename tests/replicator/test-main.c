/* Runner of the replicator/ unit tests. */
#include "tests/replicator/tests.h"

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
