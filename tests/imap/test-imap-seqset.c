/* Sequence sets: parsing, '*', merging, membership, formatting. */
#include "imap/imap-seqset.h"
#include "lib/buf.h"
#include "tests/imap/tests-imap.h"

static void test_seqset_parse_and_resolve_star(void)
{
	imap_seqset s = ARRAY_INIT;
	CU_ASSERT_EQUAL_FATAL(imap_seqset_parse("1:3,5,7:*", &s), 0);
	CU_ASSERT_EQUAL(s.count, 3);
	imap_seqset_resolve(&s, 10);
	CU_ASSERT_EQUAL_FATAL(s.count, 3);
	CU_ASSERT_EQUAL(s.items[2].lo, 7);
	CU_ASSERT_EQUAL(s.items[2].hi, 10);
	CU_ASSERT_TRUE(imap_seqset_contains(&s, 1));
	CU_ASSERT_TRUE(imap_seqset_contains(&s, 3));
	CU_ASSERT_FALSE(imap_seqset_contains(&s, 4));
	CU_ASSERT_TRUE(imap_seqset_contains(&s, 5));
	CU_ASSERT_FALSE(imap_seqset_contains(&s, 6));
	CU_ASSERT_TRUE(imap_seqset_contains(&s, 10));
	CU_ASSERT_FALSE(imap_seqset_contains(&s, 11));
	ARRAY_FREE(&s);
}

static void test_seqset_reversed_range_and_star_below(void)
{
	imap_seqset s = ARRAY_INIT;
	CU_ASSERT_EQUAL_FATAL(imap_seqset_parse("5:*", &s), 0);
	/* Only 3 messages: "5:*" is 3:5, so it still names the last one. */
	imap_seqset_resolve(&s, 3);
	CU_ASSERT_TRUE(imap_seqset_contains(&s, 3));
	CU_ASSERT_FALSE(imap_seqset_contains(&s, 2));
	ARRAY_FREE(&s);
	CU_ASSERT_EQUAL_FATAL(imap_seqset_parse("9:2", &s), 0);
	imap_seqset_resolve(&s, 100);
	CU_ASSERT_EQUAL(s.items[0].lo, 2);
	CU_ASSERT_EQUAL(s.items[0].hi, 9);
	ARRAY_FREE(&s);
}

static void test_seqset_star_in_empty_mailbox_matches_nothing(void)
{
	imap_seqset s = ARRAY_INIT;
	CU_ASSERT_EQUAL_FATAL(imap_seqset_parse("1:*", &s), 0);
	imap_seqset_resolve(&s, 0);
	CU_ASSERT_EQUAL(s.count, 0);
	CU_ASSERT_FALSE(imap_seqset_contains(&s, 1));
	ARRAY_FREE(&s);
}

static void test_seqset_overlapping_ranges_merge(void)
{
	imap_seqset s = ARRAY_INIT;
	CU_ASSERT_EQUAL_FATAL(imap_seqset_parse("5,1:3,4,2,8:9,10", &s), 0);
	imap_seqset_resolve(&s, 100);
	CU_ASSERT_EQUAL_FATAL(s.count, 2);
	CU_ASSERT_EQUAL(s.items[0].lo, 1);
	CU_ASSERT_EQUAL(s.items[0].hi, 5);
	CU_ASSERT_EQUAL(s.items[1].lo, 8);
	CU_ASSERT_EQUAL(s.items[1].hi, 10);
	ARRAY_FREE(&s);
}

static void test_seqset_rejects_malformed(void)
{
	static const char *const bad[] = {
		"", "0", "1:", ":1", ",1", "1,", "1,,2", "a", "1:0", "01", "1:2:3", "4294967296",
		"99999999999", "1 2", "*:",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		imap_seqset s = ARRAY_INIT;
		CU_ASSERT_EQUAL(imap_seqset_parse(bad[i], &s), -1);
		ARRAY_FREE(&s);
	}
	imap_seqset s = ARRAY_INIT;
	CU_ASSERT_EQUAL(imap_seqset_parse("4294967294", &s), 0);
	ARRAY_FREE(&s);
}

/* 4294967295 is a valid number in a set (RFC 3501 nz-number, imaptest's
 * "UID SEARCH UID 1:4294967295"), and is not '*'. */
static void test_seqset_highest_uid_is_not_star(void)
{
	imap_seqset s = ARRAY_INIT;
	CU_ASSERT_EQUAL_FATAL(imap_seqset_parse("1:4294967295", &s), 0);
	imap_seqset_resolve(&s, 10);
	CU_ASSERT_EQUAL_FATAL(s.count, 1);
	CU_ASSERT_EQUAL(s.items[0].lo, 1);
	CU_ASSERT_EQUAL(s.items[0].hi, 4294967295u);
	CU_ASSERT_TRUE(imap_seqset_contains(&s, 11));
	CU_ASSERT_TRUE(imap_seqset_contains(&s, 4294967295u));
	ARRAY_FREE(&s);
	CU_ASSERT_EQUAL_FATAL(imap_seqset_parse("4294967295:*", &s), 0);
	imap_seqset_resolve(&s, 3);
	CU_ASSERT_EQUAL_FATAL(s.count, 1);
	CU_ASSERT_EQUAL(s.items[0].lo, 3);
	CU_ASSERT_EQUAL(s.items[0].hi, 4294967295u);
	ARRAY_FREE(&s);
}

static void test_seqset_format_compacts_runs(void)
{
	static const uint32_t nums[] = { 1, 2, 3, 5, 7, 8 };
	struct buf b = BUF_INIT;
	imap_seqset_format(nums, 6, &b);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&b), "1:3,5,7:8");
	buf_free(&b);
}

const struct test_case imap_seqset_cases[] = {
	{ "parse and resolve star", test_seqset_parse_and_resolve_star },
	{ "reversed range and star below the start", test_seqset_reversed_range_and_star_below },
	{ "star in an empty mailbox matches nothing", test_seqset_star_in_empty_mailbox_matches_nothing },
	{ "overlapping ranges merge", test_seqset_overlapping_ranges_merge },
	{ "malformed sets are rejected", test_seqset_rejects_malformed },
	{ "4294967295 is a number, not star", test_seqset_highest_uid_is_not_star },
	{ "format compacts runs", test_seqset_format_compacts_runs },
	{ NULL, NULL },
};
