/* Unit tests of the status-to-Prometheus translation (repl-metrics.c):
 * names, labels, scaling, yes/no, and status text that is not what it
 * should be. */
#include <stdlib.h>
#include <string.h>

#include "lib/xalloc.h"
#include "replicator/repl-metrics.h"
#include "tests/replicator/tests.h"

static char *translate(const char *status)
{
	struct buf out = BUF_INIT;
	repl_metrics_from_status(status, &out);
	char *s = xstrdup(buf_cstr(&out));
	buf_free(&out);
	return s;
}

static void test_metrics_known_keys_become_samples(void)
{
	char *s = translate("node_id: 1\n"
			    "sessions: 3\n"
			    "peer.2: up\n"
			    "peer.2.backlog: 7\n"
			    "peer.2.lag_ms: 1500\n"
			    "peer.2.healthy: yes\n"
			    "peer.3: connecting\n"
			    "peer.3.healthy: no\n"
			    "under_replicated: 4\n"
			    "syncs_run: 12\n");
	CU_ASSERT_PTR_NOT_NULL(strstr(s, "# TYPE starling_imap_sessions gauge\nstarling_imap_sessions 3\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(s, "starling_peer_up{peer=\"2\"} 1\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(s, "starling_peer_up{peer=\"3\"} 0\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(s, "starling_peer_backlog{peer=\"2\"} 7\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(s, "starling_peer_lag_seconds{peer=\"2\"} 1.5\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(s, "starling_peer_healthy{peer=\"2\"} 1\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(s, "starling_peer_healthy{peer=\"3\"} 0\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(s, "starling_under_replicated_changes 4\n"));
	CU_ASSERT_PTR_NOT_NULL(strstr(s, "# TYPE starling_syncs_total counter\nstarling_syncs_total 12\n"));
	/* Keys without a metric are left out. */
	CU_ASSERT_PTR_NULL(strstr(s, "node_id"));
	/* One TYPE line per metric, even with two peers. */
	const char *t = strstr(s, "# TYPE starling_peer_up");
	CU_ASSERT_PTR_NOT_NULL_FATAL(t);
	CU_ASSERT_PTR_NULL(strstr(t + 1, "# TYPE starling_peer_up"));
	free(s);
}

static void test_metrics_odd_status_lines_are_left_out(void)
{
	char big[1200];
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	memcpy(big, "sessions: ", 10);
	char *text = xasprintf("sessions 5\n"        /* no colon */
			       "sessions: many\n"    /* not a number */
			       "peer.0.backlog: 1\n" /* SID 0 */
			       "peer.x.backlog: 1\n"
			       "peer.99999999999.backlog: 1\n"
			       "peer.4backlog: 1\n"
			       "uptime_s: 1e999\n"   /* out of range */
			       "%s\n"
			       "peers_up: 2", big);
	char *s = translate(text);
	CU_ASSERT_PTR_NULL(strstr(s, "starling_imap_sessions"));
	CU_ASSERT_PTR_NULL(strstr(s, "starling_peer_backlog"));
	CU_ASSERT_PTR_NULL(strstr(s, "starling_uptime_seconds"));
	/* The last line has no newline and still counts. */
	CU_ASSERT_STRING_EQUAL(s, "# HELP starling_peers_up peers whose link is up\n"
			       "# TYPE starling_peers_up gauge\nstarling_peers_up 2\n");
	free(s);
	free(text);
	s = translate("");
	CU_ASSERT_STRING_EQUAL(s, "");
	free(s);
}

const struct test_case repl_metrics_cases[] = {
	{ "known status keys become samples", test_metrics_known_keys_become_samples },
	{ "odd status lines are left out", test_metrics_odd_status_lines_are_left_out },
	{ NULL, NULL },
};
