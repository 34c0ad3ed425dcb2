/* Runner of the imap/ unit suites (the MIME suites have their own). */
#include "tests/imap/tests-imap.h"

int main(void)
{
	static const struct test_suite suites[] = {
		{ "imap-parser", imap_parser_cases, NULL, NULL },
		{ "imap-seqset", imap_seqset_cases, NULL, NULL },
		{ "imap-search", imap_search_cases, NULL, NULL },
		{ "imap-esearch", imap_esearch_cases, NULL, NULL },
		{ "imap-util", imap_util_cases, NULL, NULL },
		{ "repl-local seam", imap_seam_cases, NULL, NULL },
		{ "imap-thread", imap_thread_cases, NULL, NULL },
		{ "imap-sortkeys", imap_sortkeys_cases, NULL, NULL },
		{ "imap-sort", imap_sort_cases, NULL, NULL },
		{ "imap-derived", imap_derived_cases, NULL, NULL },
		{ NULL, NULL, NULL, NULL },
	};
	return test_run_suites("test-imap", suites);
}
