/* ESEARCH result options (imap-esearch.c): RETURN parsing, the ESEARCH
 * response for each option (with MODSEQ and PARTIAL), what SAVE keeps, and
 * "$" in a search program (imap_search_resolve_saved). */
#include <string.h>

#include "imap/imap-esearch.h"
#include "imap/imap-parser.h"
#include "imap/imap-search.h"
#include "lib/buf.h"
#include "tests/imap/tests-imap.h"

static const struct imap_parser_limits limits = {
	.max_line = 65536, .max_literal = 65536, .max_total = 1 << 20,
	.max_args = 1000, .max_depth = 16,
};

/* Parses "t SEARCH <rest>"; the caller destroys *p_r. */
static const struct imap_command *parse_line(const char *rest, struct imap_parser **p_r)
{
	char line[512];
	snprintf(line, sizeof(line), "t SEARCH %s\r\n", rest);
	struct imap_parser *p = imap_parser_create(&limits);
	size_t used;
	enum imap_parse_result pr = imap_parser_feed(p, (const unsigned char *)line, strlen(line),
						     &used);
	CU_ASSERT_EQUAL_FATAL(pr, IMAP_PARSE_DONE);
	*p_r = p;
	return imap_parser_command(p);
}

/* Returns what imap_esearch_parse_return returned; *ret filled. */
static int parse_return(const char *rest, struct imap_esearch_return *ret)
{
	struct imap_parser *p;
	const struct imap_command *c = parse_line(rest, &p);
	const char *err = NULL;
	int r = imap_esearch_parse_return(c->args, c->count, ret, &err);
	if (r < 0)
		CU_ASSERT_PTR_NOT_NULL(err);
	imap_parser_destroy(&p);
	return r;
}

static void test_return_options(void)
{
	struct imap_esearch_return ret;
	CU_ASSERT_EQUAL(parse_return("ALL", &ret), 0);
	CU_ASSERT_FALSE(ret.given);
	CU_ASSERT_EQUAL(parse_return("RETURN () ALL", &ret), 2);
	CU_ASSERT_TRUE(ret.given);
	/* RETURN () is RETURN (ALL) (RFC 4731 3.1). */
	CU_ASSERT_EQUAL(ret.opts, IMAP_ESEARCH_ALL);
	CU_ASSERT_EQUAL(parse_return("return (min MAX Count) 1:*", &ret), 2);
	CU_ASSERT_EQUAL(ret.opts, IMAP_ESEARCH_MIN | IMAP_ESEARCH_MAX | IMAP_ESEARCH_COUNT);
	CU_ASSERT_EQUAL(parse_return("RETURN (MIN MIN) ALL", &ret), 2);
	CU_ASSERT_EQUAL(ret.opts, IMAP_ESEARCH_MIN);
	CU_ASSERT_EQUAL(parse_return("RETURN (SAVE) ALL", &ret), 2);
	CU_ASSERT_EQUAL(ret.opts, IMAP_ESEARCH_SAVE);
	CU_ASSERT_FALSE(imap_esearch_wants_reply(&ret));
	CU_ASSERT_EQUAL(parse_return("RETURN (UPDATE) ALL", &ret), 2);
	CU_ASSERT_EQUAL(ret.opts, IMAP_ESEARCH_UPDATE);
	CU_ASSERT_TRUE(imap_esearch_wants_reply(&ret));
	CU_ASSERT_EQUAL(parse_return("RETURN (PARTIAL 4:2) ALL", &ret), 2);
	CU_ASSERT_EQUAL(ret.opts, IMAP_ESEARCH_PARTIAL);
	CU_ASSERT_EQUAL(ret.partial_lo, 2);
	CU_ASSERT_EQUAL(ret.partial_hi, 4);
}

static void test_return_rejects(void)
{
	struct imap_esearch_return ret;
	CU_ASSERT_EQUAL(parse_return("RETURN ALL", &ret), -1);
	CU_ASSERT_EQUAL(parse_return("RETURN (BOGUS) ALL", &ret), -1);
	CU_ASSERT_EQUAL(parse_return("RETURN (PARTIAL 1:2 PARTIAL 3:4) ALL", &ret), -1);
	CU_ASSERT_EQUAL(parse_return("RETURN (PARTIAL 1) ALL", &ret), -1);
	CU_ASSERT_EQUAL(parse_return("RETURN (PARTIAL 1:*) ALL", &ret), -1);
	CU_ASSERT_EQUAL(parse_return("RETURN (PARTIAL *:1) ALL", &ret), -1);
	CU_ASSERT_EQUAL(parse_return("RETURN (PARTIAL 0:3) ALL", &ret), -1);
	CU_ASSERT_EQUAL(parse_return("RETURN (PARTIAL 1:4294967296) ALL", &ret), -1);
	CU_ASSERT_EQUAL(parse_return("RETURN (PARTIAL) ALL", &ret), -1);
	CU_ASSERT_EQUAL(parse_return("RETURN (PARTIAL 1:2 ALL) ALL", &ret), -1);
	CU_ASSERT_EQUAL(parse_return("RETURN", &ret), -1);
}

static void check_format(const char *opts, bool uid, const uint32_t *nums,
			 const uint64_t *modseqs, size_t n, const char *want)
{
	struct imap_esearch_return ret;
	CU_ASSERT_EQUAL_FATAL(parse_return(opts, &ret), 2);
	struct buf b = BUF_INIT;
	imap_esearch_format(&b, "A1", uid, &ret, nums, modseqs, n);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&b), want);
	buf_free(&b);
}

static void test_format(void)
{
	static const uint32_t nums[] = { 2, 3, 4, 7, 9 };
	static const uint64_t ms[] = { 50, 10, 90, 20, 30 };
	check_format("RETURN () ALL", false, nums, NULL, 5, "* ESEARCH (TAG \"A1\") ALL 2:4,7,9\r\n");
	check_format("RETURN (MIN MAX COUNT) ALL", true, nums, NULL, 5,
		     "* ESEARCH (TAG \"A1\") UID MIN 2 MAX 9 COUNT 5\r\n");
	/* No match: only COUNT says anything. */
	check_format("RETURN (MIN MAX ALL COUNT) ALL", false, nums, NULL, 0,
		     "* ESEARCH (TAG \"A1\") COUNT 0\r\n");
	check_format("RETURN (MIN) ALL", true, nums, NULL, 0, "* ESEARCH (TAG \"A1\") UID\r\n");
	/* MODSEQ: of MIN/MAX alone when only they are returned, else the
	 * highest of all matches (RFC 7162 3.1.5). */
	check_format("RETURN (MIN) ALL", false, nums, ms, 5,
		     "* ESEARCH (TAG \"A1\") MIN 2 MODSEQ 50\r\n");
	check_format("RETURN (MAX) ALL", false, nums, ms, 5,
		     "* ESEARCH (TAG \"A1\") MAX 9 MODSEQ 30\r\n");
	check_format("RETURN (MIN MAX) ALL", false, nums, ms, 5,
		     "* ESEARCH (TAG \"A1\") MIN 2 MAX 9 MODSEQ 50\r\n");
	check_format("RETURN (COUNT) ALL", false, nums, ms, 5,
		     "* ESEARCH (TAG \"A1\") COUNT 5 MODSEQ 90\r\n");
	check_format("RETURN (ALL) ALL", false, nums, ms, 0, "* ESEARCH (TAG \"A1\")\r\n");
	check_format("RETURN (PARTIAL 2:4) ALL", false, nums, NULL, 5,
		     "* ESEARCH (TAG \"A1\") PARTIAL (2:4 3:4,7)\r\n");
	check_format("RETURN (PARTIAL 4:10) ALL", false, nums, NULL, 5,
		     "* ESEARCH (TAG \"A1\") PARTIAL (4:10 7,9)\r\n");
	check_format("RETURN (PARTIAL 6:6) ALL", false, nums, NULL, 5,
		     "* ESEARCH (TAG \"A1\") PARTIAL (6:6 NIL)\r\n");
	/* SORT order (ESORT): MIN/MAX by value, ALL in the given order. */
	static const uint32_t sorted[] = { 9, 2, 3, 7 };
	check_format("RETURN (MIN MAX ALL) ALL", false, sorted, NULL, 4,
		     "* ESEARCH (TAG \"A1\") MIN 2 MAX 9 ALL 9,2:3,7\r\n");
}

/* A SORT result (ret.sorted): MIN and MAX are its first and last message
 * (RFC 5267 3.1), and so is what SAVE keeps of them. */
static void test_format_sorted(void)
{
	static const uint32_t sorted[] = { 9, 2, 3, 7 };
	static const uint64_t ms[] = { 10, 90, 20, 30 };
	struct imap_esearch_return ret;
	CU_ASSERT_EQUAL_FATAL(parse_return("RETURN (MIN MAX ALL SAVE) ALL", &ret), 2);
	ret.sorted = true;
	struct buf b = BUF_INIT;
	imap_esearch_format(&b, "S1", true, &ret, sorted, NULL, 4);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&b), "* ESEARCH (TAG \"S1\") UID MIN 9 MAX 7 ALL 9,2:3,7\r\n");
	buf_reset(&b);
	CU_ASSERT_EQUAL_FATAL(parse_return("RETURN (MIN) ALL", &ret), 2);
	ret.sorted = true;
	imap_esearch_format(&b, "S2", false, &ret, sorted, ms, 4);
	CU_ASSERT_STRING_EQUAL(buf_cstr(&b), "* ESEARCH (TAG \"S2\") MIN 9 MODSEQ 10\r\n");
	buf_free(&b);
	bool keep[4];
	CU_ASSERT_EQUAL_FATAL(parse_return("RETURN (SAVE MAX) ALL", &ret), 2);
	ret.sorted = true;
	imap_esearch_save_select(&ret, sorted, 4, keep);
	CU_ASSERT(!keep[0] && !keep[1] && !keep[2] && keep[3]);
}

static void check_save(const char *opts, const char *want)
{
	static const uint32_t nums[] = { 2, 3, 4, 7, 9 };
	struct imap_esearch_return ret;
	CU_ASSERT_EQUAL_FATAL(parse_return(opts, &ret), 2);
	bool keep[5];
	imap_esearch_save_select(&ret, nums, 5, keep);
	char got[6] = { 0 };
	for (size_t i = 0; i < 5; i++)
		got[i] = keep[i] ? '1' : '0';
	CU_ASSERT_STRING_EQUAL(got, want);
}

static void test_save_select(void)
{
	check_save("RETURN (SAVE) ALL", "11111");
	check_save("RETURN (SAVE MIN) ALL", "10000");
	check_save("RETURN (SAVE MAX) ALL", "00001");
	check_save("RETURN (SAVE MIN MAX) ALL", "10001");
	/* With ALL or COUNT the whole result is saved (RFC 5182 2.4). */
	check_save("RETURN (SAVE MIN COUNT) ALL", "11111");
	check_save("RETURN (SAVE ALL MAX) ALL", "11111");
	check_save("RETURN (SAVE PARTIAL 2:3) ALL", "01100");
}

/* "$" in a program matches the saved UIDs, in both key forms. */
static void test_saved_key(void)
{
	static const char *const progs[] = { "$", "UID $", "NOT $", "OR $ 1" };
	static const int want[] = { 0x0a, 0x0a, 0x15, 0x0b };
	static const uint32_t saved[] = { 20, 40 };
	for (size_t t = 0; t < 4; t++) {
		struct imap_parser *p;
		const struct imap_command *c = parse_line(progs[t], &p);
		struct imap_search *s = NULL;
		enum imap_search_error kind;
		const char *err;
		CU_ASSERT_EQUAL_FATAL(imap_search_parse(c->args, c->count, &s, &kind, &err), 0);
		CU_ASSERT_TRUE(imap_search_uses_saved(s));
		imap_search_resolve(s, 5, 50);
		imap_search_resolve_saved(s, saved, 2);
		int got = 0;
		for (uint32_t i = 0; i < 5; i++) {
			stor_string_list kw = ARRAY_INIT;
			struct imap_search_msg m;
			memset(&m, 0, sizeof(m));
			m.seq = i + 1;
			m.uid = (i + 1) * 10;
			m.keywords = &kw;
			if (imap_search_match(s, &m))
				got |= 1 << i;
			imap_search_msg_done(&m);
		}
		CU_ASSERT_EQUAL(got, want[t]);
		imap_search_free(&s);
		imap_parser_destroy(&p);
	}
}

const struct test_case imap_esearch_cases[] = {
	{ "RETURN options", test_return_options },
	{ "malformed RETURN options are rejected", test_return_rejects },
	{ "ESEARCH response per option", test_format },
	{ "ESEARCH response for a SORT result", test_format_sorted },
	{ "what SAVE keeps", test_save_select },
	{ "$ matches the saved result", test_saved_key },
	{ NULL, NULL },
};
