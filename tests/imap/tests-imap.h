#ifndef TESTS_IMAP_TESTS_IMAP_H
#define TESTS_IMAP_TESTS_IMAP_H
#include "tests/testutil.h"
extern const struct test_case imap_parser_cases[];
extern const struct test_case imap_seqset_cases[];
extern const struct test_case imap_search_cases[];
extern const struct test_case imap_esearch_cases[];
extern const struct test_case imap_util_cases[];
extern const struct test_case imap_seam_cases[];
extern const struct test_case imap_thread_cases[];
extern const struct test_case imap_sortkeys_cases[];
extern const struct test_case imap_sort_cases[];
extern const struct test_case imap_derived_cases[];
#endif
