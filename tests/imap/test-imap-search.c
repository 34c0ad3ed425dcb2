/* SEARCH evaluation on in-memory messages: every key family, NOT/OR/lists,
 * '*' resolution, charsets and syntax errors. */
#include <string.h>
#include <time.h>

#include "imap/imap-parser.h"
#include "imap/imap-search.h"
#include "lib/arr.h"
#include "tests/imap/tests-imap.h"

static const struct imap_parser_limits limits = {
	.max_line = 65536, .max_literal = 65536, .max_total = 1 << 20,
	.max_args = 1000, .max_depth = 16,
};

struct tmsg {
	uint32_t uid;
	uint32_t flags;
	const char *keyword;
	int64_t internaldate;
	uint64_t modseq;
	const char *text;
};

/* 2026-01-10 12:00 UTC, 2026-02-20 08:00 UTC, 2026-03-05 23:30 UTC */
#define D1 1768046400
#define D2 1771574400
#define D3 1772753400

static const struct tmsg msgs[] = {
	{ 3, STOR_FLAG_SEEN, "$Work", D1, 10,
	  "From: Alice Example <alice@example.org>\r\nTo: bob@example.net\r\n"
	  "Subject: Quarterly report\r\nDate: Sat, 10 Jan 2026 12:00:00 +0000\r\n\r\n"
	  "Numbers are up this quarter.\r\n" },
	{ 7, STOR_FLAG_FLAGGED | STOR_FLAG_DELETED, NULL, D2, 20,
	  "From: bob@example.net\r\nTo: alice@example.org\r\nCc: carol@example.com\r\n"
	  "Subject: =?utf-8?q?Caf=C3=A9_plans?=\r\nDate: Fri, 20 Feb 2026 09:00:00 +0100\r\n\r\n"
	  "Lunch at noon?\r\n" },
	{ 9, STOR_FLAG_ANSWERED | STOR_FLAG_SEEN | STOR_FLAG_DRAFT, "$Later", D3, 30,
	  "From: carol@example.com\r\nTo: alice@example.org\r\nSubject: Re: Quarterly report\r\n"
	  "Date: Thu, 5 Mar 2026 23:30:00 +0000\r\n\r\n"
	  "A much longer body so that this message is clearly the largest of the three "
	  "when sizes are compared by LARGER and SMALLER.\r\n" },
};
#define NMSGS (sizeof(msgs) / sizeof(msgs[0]))

static int load_text(void *ctx, const char **text_r, size_t *len_r)
{
	const struct tmsg *m = ctx;
	*text_r = m->text;
	*len_r = strlen(m->text);
	return 0;
}

/* Runs "SEARCH <keys>" over msgs and returns a bit mask of matching
 * sequence numbers (bit 0 = seq 1), or -1 for a parse error (kind in
 * *kind_r when not NULL). */
static int run(const char *keys, enum imap_search_error *kind_r)
{
	char line[1024];
	snprintf(line, sizeof(line), "t SEARCH %s\r\n", keys);
	struct imap_parser *p = imap_parser_create(&limits);
	size_t used;
	enum imap_parse_result pr = imap_parser_feed(p, (const unsigned char *)line, strlen(line),
						     &used);
	while (pr == IMAP_PARSE_CONTINUE)
		pr = imap_parser_feed(p, (const unsigned char *)line + used, strlen(line) - used, &used);
	CU_ASSERT_EQUAL_FATAL(pr, IMAP_PARSE_DONE);
	const struct imap_command *c = imap_parser_command(p);
	struct imap_search *s = NULL;
	enum imap_search_error kind;
	const char *err;
	int result = 0;
	if (imap_search_parse(c->args, c->count, &s, &kind, &err) < 0) {
		if (kind_r != NULL)
			*kind_r = kind;
		imap_parser_destroy(&p);
		return -1;
	}
	imap_search_resolve(s, NMSGS, msgs[NMSGS - 1].uid);
	for (size_t i = 0; i < NMSGS; i++) {
		stor_string_list kw = ARRAY_INIT;
		char *k = (char *)msgs[i].keyword;
		if (k != NULL) {
			kw.items = &k;
			kw.count = 1;
		}
		struct imap_search_msg m;
		memset(&m, 0, sizeof(m));
		m.seq = (uint32_t)i + 1;
		m.uid = msgs[i].uid;
		m.flags = msgs[i].flags;
		m.keywords = &kw;
		m.internaldate = msgs[i].internaldate;
		m.size = strlen(msgs[i].text);
		m.modseq = msgs[i].modseq;
		m.load_text = load_text;
		m.load_ctx = (void *)&msgs[i];
		if (imap_search_match(s, &m))
			result |= 1 << i;
		imap_search_msg_done(&m);
	}
	imap_search_free(&s);
	CU_ASSERT_PTR_NULL(s);
	imap_parser_destroy(&p);
	return result;
}

static void test_search_flag_keys(void)
{
	CU_ASSERT_EQUAL(run("ALL", NULL), 7);
	CU_ASSERT_EQUAL(run("SEEN", NULL), 5);
	CU_ASSERT_EQUAL(run("UNSEEN", NULL), 2);
	CU_ASSERT_EQUAL(run("DELETED", NULL), 2);
	CU_ASSERT_EQUAL(run("UNDELETED", NULL), 5);
	CU_ASSERT_EQUAL(run("FLAGGED", NULL), 2);
	CU_ASSERT_EQUAL(run("ANSWERED DRAFT", NULL), 4);
	CU_ASSERT_EQUAL(run("UNANSWERED", NULL), 3);
	CU_ASSERT_EQUAL(run("UNDRAFT UNFLAGGED", NULL), 1);
	CU_ASSERT_EQUAL(run("NEW", NULL), 0);
	CU_ASSERT_EQUAL(run("RECENT", NULL), 0);
	CU_ASSERT_EQUAL(run("OLD", NULL), 7);
}

static void test_search_keywords(void)
{
	CU_ASSERT_EQUAL(run("KEYWORD $work", NULL), 1);
	CU_ASSERT_EQUAL(run("UNKEYWORD $Work", NULL), 6);
	CU_ASSERT_EQUAL(run("KEYWORD $Nothing", NULL), 0);
}

static void test_search_sets_and_star(void)
{
	CU_ASSERT_EQUAL(run("2:*", NULL), 6);
	CU_ASSERT_EQUAL(run("*", NULL), 4);
	CU_ASSERT_EQUAL(run("1,3", NULL), 5);
	CU_ASSERT_EQUAL(run("UID 7:*", NULL), 6);
	CU_ASSERT_EQUAL(run("UID 4:6", NULL), 0);
	CU_ASSERT_EQUAL(run("UID *", NULL), 4);
}

static void test_search_not_or_and_lists(void)
{
	CU_ASSERT_EQUAL(run("NOT SEEN", NULL), 2);
	CU_ASSERT_EQUAL(run("OR FLAGGED DRAFT", NULL), 6);
	CU_ASSERT_EQUAL(run("OR (SEEN ANSWERED) DELETED", NULL), 6);
	CU_ASSERT_EQUAL(run("NOT (SEEN ANSWERED)", NULL), 3);
	CU_ASSERT_EQUAL(run("OR 1 OR 2 3 NOT 2", NULL), 5);
	CU_ASSERT_EQUAL(run("NOT NOT NOT SEEN", NULL), 2);
}

static void test_search_header_keys(void)
{
	CU_ASSERT_EQUAL(run("FROM alice", NULL), 1);
	CU_ASSERT_EQUAL(run("FROM \"EXAMPLE.NET\"", NULL), 2);
	CU_ASSERT_EQUAL(run("TO alice@example.org", NULL), 6);
	CU_ASSERT_EQUAL(run("CC carol", NULL), 2);
	CU_ASSERT_EQUAL(run("BCC carol", NULL), 0);
	CU_ASSERT_EQUAL(run("SUBJECT quarterly", NULL), 5);
	/* Encoded words are decoded before matching. */
	CU_ASSERT_EQUAL(run("SUBJECT {5}\r\nCaf\xc3\xa9", NULL), 2);
	CU_ASSERT_EQUAL(run("HEADER Cc \"\"", NULL), 2);
	CU_ASSERT_EQUAL(run("HEADER X-Missing \"\"", NULL), 0);
}

static void test_search_body_and_text(void)
{
	CU_ASSERT_EQUAL(run("BODY quarter", NULL), 1);
	CU_ASSERT_EQUAL(run("BODY lunch", NULL), 2);
	CU_ASSERT_EQUAL(run("TEXT lunch", NULL), 2);
	/* TEXT also covers the header. */
	CU_ASSERT_EQUAL(run("TEXT carol", NULL), 6);
	CU_ASSERT_EQUAL(run("BODY carol", NULL), 0);
}

static void test_search_internal_and_sent_dates(void)
{
	CU_ASSERT_EQUAL(run("BEFORE 20-Feb-2026", NULL), 1);
	CU_ASSERT_EQUAL(run("ON 20-Feb-2026", NULL), 2);
	CU_ASSERT_EQUAL(run("SINCE 20-Feb-2026", NULL), 6);
	CU_ASSERT_EQUAL(run("SINCE 6-Mar-2026", NULL), 0);
	CU_ASSERT_EQUAL(run("SENTON 20-Feb-2026", NULL), 2);
	CU_ASSERT_EQUAL(run("SENTBEFORE 5-Mar-2026", NULL), 3);
	CU_ASSERT_EQUAL(run("SENTSINCE 5-Mar-2026", NULL), 4);
}

static void test_search_sizes_and_modseq(void)
{
	size_t s1 = strlen(msgs[0].text);
	char q[64];
	snprintf(q, sizeof(q), "LARGER %zu", s1);
	int larger = run(q, NULL);
	CU_ASSERT_EQUAL(larger & 1, 0);
	CU_ASSERT_EQUAL(larger & 4, 4);
	snprintf(q, sizeof(q), "SMALLER %zu", s1 + 1);
	CU_ASSERT_EQUAL(run(q, NULL) & 1, 1);
	CU_ASSERT_EQUAL(run("MODSEQ 20", NULL), 6);
	CU_ASSERT_EQUAL(run("MODSEQ \"/flags/\\\\Seen\" all 30", NULL), 4);
}

static void test_search_charsets(void)
{
	enum imap_search_error kind;
	CU_ASSERT_EQUAL(run("CHARSET UTF-8 FROM alice", NULL), 1);
	CU_ASSERT_EQUAL(run("CHARSET us-ascii ALL", NULL), 7);
	CU_ASSERT_EQUAL(run("CHARSET KOI8-R ALL", NULL), 7);
	/* the strings are converted to UTF-8: "café" in Latin-1 and in
	 * windows-1252 finds the UTF-8 encoded word of message 2 */
	CU_ASSERT_EQUAL(run("CHARSET ISO-8859-1 SUBJECT {4+}\r\nCAF\xc9", NULL), 2);
	CU_ASSERT_EQUAL(run("CHARSET \"windows-1252\" HEADER Subject \"caf\xe9 plans\"", NULL), 2);
	CU_ASSERT_EQUAL(run("CHARSET ISO-8859-1 SUBJECT caf\xe9s", NULL), 0);
	/* TEXT also looks at decoded header values, not only at raw bytes */
	CU_ASSERT_EQUAL(run("CHARSET windows-1252 TEXT {10+}\r\nCAF\xc9 PLANS", NULL), 2);
	CU_ASSERT_EQUAL(run("TEXT \"CAF\xc3\x89 PLANS\"", NULL), 2);
	kind = IMAP_SEARCH_BAD;
	CU_ASSERT_EQUAL(run("CHARSET x-unknown ALL", &kind), -1);
	CU_ASSERT_EQUAL(kind, IMAP_SEARCH_BADCHARSET);
	kind = IMAP_SEARCH_BAD;
	CU_ASSERT_EQUAL(run("CHARSET \"\" ALL", &kind), -1);
	CU_ASSERT_EQUAL(kind, IMAP_SEARCH_BADCHARSET);
	kind = IMAP_SEARCH_BAD;
	CU_ASSERT_EQUAL(run("CHARSET (UTF-8) ALL", &kind), -1);
	CU_ASSERT_EQUAL(kind, IMAP_SEARCH_BADCHARSET);
}

static void test_search_syntax_errors_are_bad(void)
{
	static const char *const bad[] = {
		"BOGUS", "FROM", "OR SEEN", "NOT", "BEFORE yesterday", "LARGER x", "UID x",
		"()", "HEADER", "SINCE 32-Jan-2026", "1:0",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		enum imap_search_error kind = IMAP_SEARCH_BADCHARSET;
		CU_ASSERT_EQUAL(run(bad[i], &kind), -1);
		CU_ASSERT_EQUAL(kind, IMAP_SEARCH_BAD);
	}
}

static void test_search_contains_is_case_insensitive(void)
{
	CU_ASSERT_TRUE(imap_search_contains("Hello World", 11, "WORLD", 5));
	CU_ASSERT_TRUE(imap_search_contains("abc", 3, "", 0));
	CU_ASSERT_FALSE(imap_search_contains("ab", 2, "abc", 3));
	CU_ASSERT_FALSE(imap_search_contains("aab", 3, "abb", 3));
}

const struct test_case imap_search_cases[] = {
	{ "flag keys", test_search_flag_keys },
	{ "keywords", test_search_keywords },
	{ "sequence and UID sets with star", test_search_sets_and_star },
	{ "NOT, OR and lists", test_search_not_or_and_lists },
	{ "header keys", test_search_header_keys },
	{ "BODY and TEXT", test_search_body_and_text },
	{ "internal and sent dates", test_search_internal_and_sent_dates },
	{ "sizes and MODSEQ", test_search_sizes_and_modseq },
	{ "charsets", test_search_charsets },
	{ "syntax errors are BAD", test_search_syntax_errors_are_bad },
	{ "contains is case-insensitive", test_search_contains_is_case_insensitive },
	{ NULL, NULL },
};
